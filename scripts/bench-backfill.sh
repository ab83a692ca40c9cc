#!/usr/bin/env bash
# Backfill throughput, end to end: Parquet archive in, Parquet out, --complete.
#
#   scripts/bench-backfill.sh [EVENTS] [RUNS]      (defaults: 10000000 events, 3 runs)
#
# Generates a synthetic archive once (scripts/bench-archive.sh: cached under
# target/bench-archive-<EVENTS>), then times `adsproc backfill --complete` over all of it RUNS
# times and reports events/s of each run, the best and the median. The figure includes
# listing, reading and decoding Parquet, validation, dedupe, windowing and writing the output
# Parquet files; it excludes generation. To compare two builds, see scripts/ab-backfill.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-10000000}
RUNS=${2:-3}
cargo build --release --quiet
BIN=target/release/adsproc
ARCHIVE=$(scripts/bench-archive.sh "$EVENTS" "$BIN")
# The trailing slash: the archive may be a symbolic link (a copy kept outside target/).
echo "archive: $(du -sh "$ARCHIVE/" | cut -f1) in $(find "$ARCHIVE/" -name '*.parquet' | wc -l) files; $(nproc) cores"
# CPU time and peak RSS too: on a shared 2-core VM the wall time of one binary varies by a
# third from run to run, its CPU time less so, and peak memory hardly at all.
best=0
rates=()
for i in $(seq 1 "$RUNS"); do
  OUT=$(mktemp -d)
  TIME=()
  [ -x /usr/bin/time ] && TIME=(/usr/bin/time -f "%U %S %M" -o "$OUT/time")
  "${TIME[@]}" "$BIN" backfill --job aggregation --quiet --complete --source "$ARCHIVE" --sink "$OUT" \
    --from 2026-01-01T00:00:00Z --to 2026-01-02T00:00:00Z --report-json "$OUT/report.json" > "$OUT/stdout" 2>/dev/null
  rate=$(python3 -c "import json;r=json.load(open('$OUT/report.json'));print(int(r['messages_per_s']))")
  secs=$(python3 -c "import json;r=json.load(open('$OUT/report.json'));print('%.2f' % r['elapsed_s'])")
  read_=$(python3 -c "import json;r=json.load(open('$OUT/report.json'));print(r['audit']['read'])")
  extra=""
  if [ -f "$OUT/time" ]; then
    extra=$(awk '{printf " (CPU %.2f s user + %.2f s system, peak RSS %d MB)", $1, $2, $3 / 1024}' "$OUT/time")
  fi
  echo "run $i: $read_ events in $secs s = $rate events/s$extra"
  rates+=("$rate")
  [ "$rate" -gt "$best" ] && best=$rate
  rm -rf "$OUT"
done
median=$(printf '%s\n' "${rates[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}')
echo "best: $best events/s, median: $median events/s (target 5000000)"
