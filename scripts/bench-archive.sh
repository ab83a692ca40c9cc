#!/usr/bin/env bash
# The benchmarks' synthetic archive of EVENTS ad events: generated once with BIN into
# target/bench-archive-<EVENTS> (24 hours, 50 000 Zipf-skewed ads, 16 partitions, 4 files an
# hour, seed 1); its path is printed. The marker .complete-v3 names the archive writer's
# settings, so a change to them regenerates it.
#
#   scripts/bench-archive.sh EVENTS BIN
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# = 2 ] || { sed -n 2,7p "$0" >&2; exit 2; }
EVENTS=$1
BIN=$2
ARCHIVE=target/bench-archive-$EVENTS
if [ ! -f "$ARCHIVE/.complete-v3" ]; then
  rm -rf "$ARCHIVE"
  "$BIN" gen --out "$ARCHIVE" --events "$EVENTS" --hours 24 --ads 50000 --partitions 16 --files-per-hour 4 --seed 1 >&2
  touch "$ARCHIVE/.complete-v3"
fi
echo "$ARCHIVE"
