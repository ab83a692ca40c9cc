#!/usr/bin/env bash
# Benchmarks of the Kafka → PostgreSQL path (issue 34).
#
#   scripts/bench-load.sh [EVENTS] [RATE] [RUNS]   (defaults: 4000000 events over 4 hours,
#                                                  --max-rate 100000, 3 runs)
#
# An archive of EVENTS ad events (`adsproc gen`, cached under target/) is backfilled into a local
# broker's ad-metrics topic (`backfill --sink kafka://`, one record per window). Then, RUNS
# times, into a fresh table each:
#   load: `adsproc load --topic ad-metrics --stop-when-caught-up` (consume read_committed,
#         parse, binary COPY into staging, INSERT … ON CONFLICT, offsets, commit): records/s
#         from its wall time, process start to exit;
#   copy: the same rows (exported from the loaded table as CSV) by `psql \copy` into an empty
#         table of the same definition (primary key included): rows/s from its wall time.
# Target: load at 50 % of copy or more. Both against the same PostgreSQL server
# (scripts/postgres.sh, default settings but fsync on) on this machine.
# Last, RUNS times, the backfill into Kafka without and with --max-rate RATE: the sink reports
# the rate at which records were sent and committed, which must hold RATE within 5 %.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-4000000}
RATE=${2:-100000}
RUNS=${3:-3}
cargo build --release --quiet --bin adsproc
BIN=$PWD/target/release/adsproc
ARCHIVE=target/bench-load-$EVENTS
if [ ! -f "$ARCHIVE/.complete" ]; then
  rm -rf "$ARCHIVE"
  "$BIN" gen --out "$ARCHIVE" --events "$EVENTS" --hours 4 --ads 20000 --start 2026-01-01T00:00:00Z >/dev/null
  touch "$ARCHIVE/.complete"
fi
WORK=$(mktemp -d)
trap 'scripts/broker.sh stop "$WORK/broker" >/dev/null 2>&1 || true; scripts/postgres.sh destroy "$WORK/pg" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
BROKER=$(scripts/broker.sh start "$WORK/broker")
PG=$(scripts/postgres.sh start "$WORK/pg")
range=(--from 2026-01-01T00:00:00Z --to 2026-01-01T04:00:00Z)

echo "== the topic: one backfill of $EVENTS events into ad-metrics (one record per window)"
"$BIN" backfill --job aggregation --source "$ARCHIVE" --sink "kafka://$BROKER" "${range[@]}" --quiet 2>/dev/null | tail -2
echo "== load vs plain COPY of the same rows"
for r in $(seq 1 "$RUNS"); do
  t0=$(date +%s.%N)
  line=$("$BIN" load --brokers "$BROKER" --topic ad-metrics --into "$PG" --table "load_$r" --stop-when-caught-up --log warn)
  t1=$(date +%s.%N)
  n=$(grep -o '^loaded [0-9]*' <<<"$line" | grep -o '[0-9]*')
  rows=$(psql "$PG" -Atc "select count(*) from load_$r")
  psql "$PG" -qc "\\copy (select * from load_$r) to '$WORK/rows.csv' csv"
  psql "$PG" -qc "create table copy_$r (like load_$r including all)"
  t2=$(date +%s.%N)
  psql "$PG" -qc "\\copy copy_$r from '$WORK/rows.csv' csv"
  t3=$(date +%s.%N)
  python3 - "$n" "$rows" "$t0" "$t1" "$t2" "$t3" <<'PY'
import sys
n, rows = int(sys.argv[1]), int(sys.argv[2])
t0, t1, t2, t3 = map(float, sys.argv[3:])
load, copy = n / (t1 - t0), rows / (t3 - t2)
print(f"load {n} records ({rows} rows) in {t1-t0:.2f} s: {load:,.0f} records/s, {rows/(t1-t0):,.0f} rows/s | "
      f"COPY {rows} rows in {t3-t2:.2f} s: {copy:,.0f} rows/s | load/COPY rows/s {rows/(t1-t0)/copy:.0%}")
PY
done

echo "== backfill into Kafka ($EVENTS events)"
for r in $(seq 1 "$RUNS"); do
  for rate in none "$RATE"; do
    extra=(); [ "$rate" = none ] || extra=(--max-rate "$rate")
    out=$("$BIN" backfill 2>/dev/null --job aggregation --source "$ARCHIVE" --sink "kafka://$BROKER" "${range[@]}" --quiet "${extra[@]}" -X topic.metadata.refresh.interval.ms=60000)
    sent=$(grep -o '([0-9]* records sent and committed in [0-9.]* s: [0-9]* records/s)' <<<"$out")
    echo "run $r, --max-rate $rate: $sent"
  done
done
