#!/usr/bin/env bash
# The attribution job's benchmarks.
#
#   scripts/bench-attribution.sh [EVENTS] [ORDERS] [RUNS] [STREAM_EVENTS] [WRITER]
#       (defaults: 10000000 ad events over a week, 200000 orders over its last day, 3 runs,
#       1000000 ad events for the stream part, WRITER adsproc)
#
# WRITER pyarrow: the archive's files as pyarrow's default writer writes them
# (scripts/rewrite-pyarrow.py; `pip install pyarrow` if needed) instead of adsproc's own.
# STREAM_EVENTS 0 skips the stream part.
#
# 1. Backfill: an archive of EVENTS ad events over 168 hours with ORDERS order messages over
#    the last 24 (generated once, cached under target/), and a backfill of that day
#    (`backfill --job attribution`, Parquet in, Parquet out): wall time, ad events and orders
#    per second, CPU time and peak memory of each of RUNS runs. Next to it, in the same
#    invocation, the same rules as one DuckDB SQL query over the same archive
#    (scripts/attribution.sql; `pip install duckdb` if needed), writing its result to Parquet
#    too, RUNS times; and the two outputs compared row for row (they must be equal). The
#    summary gives both medians and their ratio. Target (issue 33): adsproc in at most half
#    DuckDB's wall time.
# 2. Stream: STREAM_EVENTS ad events over 8 hours and STREAM_EVENTS / 50 orders over the last
#    4 produced to a local broker; a plain read_committed consumer of both topics (one per
#    topic, side by side) against `adsproc stream --job attribution` from the start until
#    caught up, RUNS times after a warm-up run: sustained messages/s of each, the job's and the
#    broker's CPU. Target: the job at 70 % of the plain consumer or more.
#
# On this shared VM a single run's time moves by a fifth or more: read the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-10000000}
ORDERS=${2:-200000}
RUNS=${3:-3}
STREAM_EVENTS=${4:-1000000}
WRITER=${5:-adsproc}
cargo build --release --quiet --bin adsproc --example kafka_probe
BIN=target/release/adsproc
PROBE=target/release/examples/kafka_probe
python3 -c "import duckdb" 2>/dev/null || pip install --quiet duckdb >&2
ARCHIVE=target/bench-attribution-$EVENTS-$ORDERS
if [ ! -f "$ARCHIVE/.complete-v1" ]; then
  rm -rf "$ARCHIVE"
  "$BIN" gen --out "$ARCHIVE" --events "$EVENTS" --hours 168 --orders "$ORDERS" --order-hours 24 --ads 50000 \
    --partitions 16 --files-per-hour 4 --seed 1 >&2
  touch "$ARCHIVE/.complete-v1"
fi
case "$WRITER" in
  adsproc) ;;
  pyarrow)
    python3 -c "import pyarrow" 2>/dev/null || pip install --quiet pyarrow >&2
    if [ ! -f "$ARCHIVE-pyarrow/.complete-v1" ]; then
      rm -rf "$ARCHIVE-pyarrow"
      scripts/rewrite-pyarrow.py "$ARCHIVE" "$ARCHIVE-pyarrow"
      touch "$ARCHIVE-pyarrow/.complete-v1"
    fi
    ARCHIVE=$ARCHIVE-pyarrow ;;
  *) echo "WRITER is adsproc or pyarrow, not $WRITER" >&2; exit 2 ;;
esac
FROM=2026-01-07T00:00:00Z
TO=2026-01-08T00:00:00Z
WORK=$(mktemp -d)
trap 'scripts/broker.sh stop "$WORK/broker" >/dev/null 2>&1 || true; pkill -P $$ 2>/dev/null || true; rm -rf "$WORK"' EXIT
echo "archive $ARCHIVE ($WRITER's writer): $(du -shL "$ARCHIVE/ad-events" | cut -f1) of ad events, $(du -shL "$ARCHIVE/orders" | cut -f1) of orders; $(nproc) cores"

median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
ours=()
for i in $(seq 1 "$RUNS"); do
  rm -rf "$WORK/out"
  /usr/bin/time -f "%e %U %S %M" -o "$WORK/time" "$BIN" backfill --job attribution --quiet --source "$ARCHIVE" --sink "$WORK/out" \
    --from "$FROM" --to "$TO" --report-json "$WORK/report.json" > "$WORK/stdout" 2> "$WORK/stderr"
  read -r wall user sys rss < "$WORK/time"
  python3 - "$WORK/report.json" "$wall" "$user" "$sys" "$rss" "$i" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); wall, user, sys_, rss, i = float(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
a = r["audit"]
ads = next(x for x in r["inputs"] if x["topic"] == "ad-events")["rows_in_files"]
print(f"adsproc run {i}: {wall:.2f} s wall, {user} s user + {sys_} s system, peak RSS {rss // 1024} MB; "
      f"orders {a['orders_read']} ({a['orders_read'] / wall:,.0f}/s), ad events of the read window {ads} "
      f"({ads / wall:,.0f}/s; {a['ad_events_read']} decoded past the filter); "
      f"{r['records_written']['attributed-orders']} attributed")
PY
  ours+=("$wall")
done
cp -r "$WORK/out" "$WORK/adsproc-out"

theirs=()
for i in $(seq 1 "$RUNS"); do
  took=$(python3 - "$ARCHIVE" "$WORK/duck.parquet" "$FROM" "$TO" <<'PY'
import datetime, sys, time, duckdb
archive, out, frm, to = sys.argv[1:5]
ms = lambda s: int(datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000)
sql = open("scripts/attribution.sql").read()
sql = sql.replace("{archive}", archive).replace("{out}", out).replace("{from_ms}", str(ms(frm))).replace("{to_ms}", str(ms(to)))
con = duckdb.connect()
t = time.perf_counter()
con.execute(sql)
print(f"{time.perf_counter() - t:.2f}")
PY
)
  echo "duckdb  run $i: $took s wall ($(python3 -c "import duckdb; print(duckdb.__version__)"), $(nproc) threads)"
  theirs+=("$took")
done

python3 - "$WORK/adsproc-out" "$WORK/duck.parquet" <<'PY'
import sys, duckdb
ours, theirs = sys.argv[1], sys.argv[2]
cols = ("order_id, user_id, store_id, region, epoch_ms(order_time::TIMESTAMP) AS ot, status, amount_cents, currency, ad_id, "
        "campaign_id, advertiser_id, attributed_event_id, attribution_type, epoch_ms(ad_event_time::TIMESTAMP) AS et")
a = f"SELECT {cols} FROM read_parquet('{ours}/attributed-orders/*/*/*.parquet')"
b = f"SELECT {cols} FROM read_parquet('{theirs}')"
con = duckdb.connect()
n = [con.execute(f"SELECT count(*) FROM ({q})").fetchone()[0] for q in (a, b)]
d = [con.execute(f"SELECT count(*) FROM ({x} EXCEPT ALL {y})").fetchone()[0] for x, y in ((a, b), (b, a))]
print(f"outputs: adsproc {n[0]} rows, duckdb {n[1]} rows; only in adsproc {d[0]}, only in duckdb {d[1]}"
      + ("  [equal]" if d == [0, 0] and n[0] == n[1] else "  [DIFFERENT]"))
sys.exit(0 if d == [0, 0] and n[0] == n[1] else 1)
PY
m_ours=$(printf '%s\n' "${ours[@]}" | median)
m_theirs=$(printf '%s\n' "${theirs[@]}" | median)
echo "backfill of a day: adsproc median $m_ours s, duckdb median $m_theirs s: adsproc $(python3 -c "print('%.1f' % ($m_theirs / $m_ours))")x as fast (target 2x)"

# 2. Stream.
[ "$STREAM_EVENTS" -gt 0 ] || exit 0
BROKER=$(scripts/broker.sh start "$WORK/broker" memory)
BROKER_PID=$(cat "$WORK/broker/pid")
broker_cpu() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$BROKER_PID/stat"; }
"$BIN" produce --brokers "$BROKER" --events "$STREAM_EVENTS" --hours 8 --orders $((STREAM_EVENTS / 50)) --order-hours 4 --ads 10000 \
  --partitions 8 --order-partitions 4 --seed 3 --watermark-tick >/dev/null
pcts=()
for run in warm-up $(seq 1 "$RUNS"); do
  read -r plain_n plain_s plain_rate < <("$PROBE" read-rate "$BROKER" ad-events,orders 2>/dev/null)
  echo "stream run $run: plain consumers: $plain_n messages in $plain_s s = $plain_rate messages/s"
  cpu0=$(broker_cpu)
  /usr/bin/time -f "%U %S" -o "$WORK/time" "$BIN" stream --job attribution --brokers "$BROKER" --checkpoint "$WORK/ckpt-$run" \
    --group "bench-$run" --stop-when-caught-up --log warn > "$WORK/stream.out" 2>&1
  cpu1=$(broker_cpu)
  read -r busy_s busy_rate < <(sed -n 's/^polled [0-9]* messages in \([0-9.]*\) s .*(\([0-9]*\) messages\/s)$/\1 \2/p' "$WORK/stream.out")
  pct=$(python3 -c "print(round(100 * $busy_rate / $plain_rate))")
  echo "stream run $run: adsproc stream --job attribution, sustained: $busy_s s from its first message to its last commit = $busy_rate messages/s ($pct% of the plain consumers); CPU: job $(awk '{printf "%.2f s user + %.2f s system", $1, $2}' "$WORK/time"), broker $(python3 -c "print('%.2f' % ($cpu1 - $cpu0))") s"
  grep -E "orders read|ad events read" "$WORK/stream.out" | sed 's/^/    /'
  [ "$run" = warm-up ] || pcts+=("$pct")
done
echo "stream: median $(printf '%s\n' "${pcts[@]}" | median)% of the plain consumers over $RUNS runs (target 70%)"
