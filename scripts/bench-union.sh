#!/usr/bin/env bash
# The union job's benchmark (issue 34): its sustained rate next to plain consumers of the same
# topics.
#
#   scripts/bench-union.sh [EVENTS] [RUNS]   (defaults: 2000000 events per region, 3 runs)
#
# Two local brokers are two regions. Each region's ad-metrics topic is filled by a backfill of
# its own archive of EVENTS ad events (`adsproc gen --first-region`, cached under target/) into
# Kafka (one record per window, as a live job's final values). Then, RUNS times after a warm-up:
#   plain: one read_committed consumer per cluster (examples/kafka_probe read-rate), side by
#          side, copying each payload: messages of both / the slower one's time from its first
#          message to its last partition's end;
#   union: `adsproc stream --job union` on region a's cluster reading both regions (a fresh
#          group each run) until caught up: messages / its time from the first message to the
#          last commit (what the job prints), and its CPU.
# Target: the union at 70 % of the plain consumers or more.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-2000000}
RUNS=${2:-3}
cargo build --release --quiet --bin adsproc --example kafka_probe
BIN=$PWD/target/release/adsproc
PROBE=$PWD/target/release/examples/kafka_probe
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
WORK=$(mktemp -d)
trap 'scripts/broker.sh stop "$WORK/a" >/dev/null 2>&1 || true; scripts/broker.sh stop "$WORK/b" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
A=$(scripts/broker.sh start "$WORK/a")
B=$(scripts/broker.sh start "$WORK/b")
for r in 0 1; do
  archive=target/bench-union-$EVENTS-$r
  if [ ! -f "$archive/.complete" ]; then
    rm -rf "$archive"
    "$BIN" gen --out "$archive" --events "$EVENTS" --hours 4 --ads 20000 --regions 1 --first-region $r --seed $((r + 7)) \
      --start 2026-01-01T00:00:00Z >/dev/null
    touch "$archive/.complete"
  fi
  broker=$A; [ $r = 1 ] && broker=$B
  "$BIN" backfill --job aggregation --source "$archive" --sink "kafka://$broker" --from 2026-01-01T00:00:00Z \
    --to 2026-01-01T04:00:00Z --quiet 2>/dev/null | grep wrote
done
pcts=()
for run in warm-up $(seq 1 "$RUNS"); do
  "$PROBE" read-rate "$A" ad-metrics 2>/dev/null > "$WORK/pa" &
  "$PROBE" read-rate "$B" ad-metrics 2>/dev/null > "$WORK/pb" &
  wait
  read -r na sa _ < "$WORK/pa"; read -r nb sb _ < "$WORK/pb"
  plain=$(python3 -c "print(round(($na + $nb) / max($sa, $sb)))")
  echo "run $run: plain consumers: $na + $nb messages in $sa / $sb s = $plain messages/s"
  /usr/bin/time -f "%U %S %M" -o "$WORK/time" "$BIN" stream --job union --brokers "$A" --input "region-a=$A" --input "region-b=$B" \
    --checkpoint "$WORK/ckpt-$run" --group "bench-$run" --stop-when-caught-up --log warn > "$WORK/union.out" 2>&1
  read -r busy_s busy_rate < <(sed -n 's/^polled [0-9]* messages in \([0-9.]*\) s .*(\([0-9]*\) messages\/s)$/\1 \2/p' "$WORK/union.out")
  pct=$(python3 -c "print(round(100 * $busy_rate / $plain))")
  echo "run $run: union: $busy_s s from its first message to its last commit = $busy_rate messages/s ($pct% of the plain consumers); CPU $(awk '{printf "%.2f s user + %.2f s system, peak RSS %d MB", $1, $2, $3/1024}' "$WORK/time")"
  grep "records read" "$WORK/union.out" | sed 's/^/    /'
  [ "$run" = warm-up ] || pcts+=("$pct")
done
echo "union: median $(printf '%s\n' "${pcts[@]}" | median)% of the plain consumers over $RUNS runs (target 70%)"
