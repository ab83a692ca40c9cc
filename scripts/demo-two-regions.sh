#!/usr/bin/env bash
# Active-active serving and a Kappa+ restatement on one machine, to watch (issue 34):
#
#   scripts/demo-two-regions.sh [EVENTS]   (default 50000 ad events per region)
#
# Starts two brokers (region-a, region-b) and a PostgreSQL server with one database per region;
# produces each region's own traffic; runs each region's aggregation job (region b's with a
# faulty job file that dead-letters events more than two minutes late as "too old"), a union
# job per region (both regions' outputs into ad-metrics-all on its cluster) and a load per
# region; prints what each region's table holds. Then region b restates its aggregation with
# the fixed job file (`backfill --complete --sink kafka://…`, throttled), the unions and loads
# catch up, and it prints the tables again: both regions show region b's corrected counts.
# Everything it starts is stopped at the end; set KEEP=1 to keep the servers and print their
# addresses instead.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-50000}
cargo build --release --quiet --bin adsproc
X=$PWD/target/release/adsproc
W=$(mktemp -d)
cleanup() {
  [ "${KEEP:-0}" = 1 ] && { echo "kept: brokers $A $B, database $PG, work dir $W"; return; }
  scripts/broker.sh stop "$W/a" >/dev/null 2>&1 || true
  scripts/broker.sh stop "$W/b" >/dev/null 2>&1 || true
  scripts/postgres.sh destroy "$W/pg" >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
A=$(scripts/broker.sh start "$W/a"); B=$(scripts/broker.sh start "$W/b"); PG=$(scripts/postgres.sh start "$W/pg")
for db in region_a region_b; do psql -q "$PG" -c "CREATE DATABASE $db"; done
db() { echo "${PG%/postgres}/$1"; }
sed 's/max_past = "7d"/max_past = "2m"/' jobs/aggregation.toml > "$W/faulty.toml"
step() { echo; echo "== $*"; }

step "each region's own traffic and its aggregation job (region b's with the faulty rule)"
for r in a b; do
  broker=$A; first=0; jobfile=(); [ $r = b ] && { broker=$B; first=1; jobfile=(--job-file "$W/faulty.toml"); }
  "$X" produce --brokers "$broker" --start 2026-01-01T00:00:00Z --partitions 4 --regions 1 --first-region $first --events "$EVENTS" \
    --hours 1 --ads 100 --late-fraction 0.05 --seed $((first + 1)) --watermark-tick >/dev/null
  "$X" stream --job aggregation --brokers "$broker" --checkpoint "$W/ckpt-agg-$r" "${jobfile[@]}" --stop-when-caught-up --log warn 2>&1 \
    | grep -E "events read|event_time_too_old" | sed "s/^/  region $r: /"
done

serve() {
  for r in a b; do
    broker=$A; [ $r = b ] && broker=$B
    "$X" stream --job union --brokers "$broker" --input "region-a=$A" --input "region-b=$B" --checkpoint "$W/ckpt-union-$r" \
      --stop-when-caught-up --log warn 2>&1 | grep "records read" | sed "s/^/  union on region $r: /"
    "$X" load --brokers "$broker" --topic ad-metrics-all --into "$(db region_$r)" --stop-when-caught-up --log warn | sed "s/^/  load on region $r: /"
  done
  for r in a b; do
    echo "  region $r's table:"
    psql -q "$(db region_$r)" -c "SELECT region, count(*) AS windows, sum(impressions) AS impressions, sum(clicks) AS clicks FROM ad_metrics_all GROUP BY region ORDER BY region"
  done
}
step "union and load in each region: both tables hold both regions' rows"
serve

step "region b restates the hour with the fixed job file, into its live topic, throttled"
"$X" archive --topic ad-events --brokers "$B" --sink "$W/archive-b" --until-caught-up >/dev/null 2>&1
"$X" backfill --job aggregation --complete --source "$W/archive-b" --sink "kafka://$B" --from 2025-12-31T23:00:00Z \
  --to 2026-01-01T01:00:00Z --max-rate 20000 --quiet 2>/dev/null | grep -E "wrote"
step "the unions and loads catch up: region b's corrected counts in both regions"
serve
