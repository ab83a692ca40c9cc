#!/usr/bin/env bash
# A/B comparison of adsproc binaries on the backfill bench's workload, runs alternating.
#
#   scripts/ab-backfill.sh PAIRS BIN_A BIN_B [BIN_C ...]
#
# Over the archive of scripts/bench-backfill.sh (generated once, with BIN_A), PAIRS rounds,
# each running every binary once (`backfill --complete`, as the bench), in reverse order every
# other round. One line per run:
#
#   [name] <wall s> <user s> <system s> <peak RSS MB> <hash of the output files>
#
# The hash covers every output file's bytes, in path order: two binaries that write the same
# files print the same hash. On this shared VM one binary's wall time moves by a third between
# runs, so compare binaries only within one invocation, pair by pair (faster in how many pairs,
# medians). Copy each binary out of target/ first (cp target/release/adsproc /tmp/a).
#
# Environment: EVENTS (default 10000000). PERF=1 records every run with perf (999 Hz) into
# $PERF_DIR (default /tmp/ab-backfill), adds the run's user-space and kernel samples to its
# line, and ends with the user-space samples of the top symbols, summed over the rounds, per
# binary. Kernel samples vary with the machine's memory state far more than with the code;
# docs/backfill.md ("Performance") says how much the user-space ones vary.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n 2,21p "$0" >&2; exit 2; }
PAIRS=$1; shift
for b in "$@"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }; done
# Runs are reported, and their perf data named, by the binary's file name.
dups=$(for b in "$@"; do basename "$b"; done | sort | uniq -d)
[ -z "$dups" ] || { echo "two binaries named $dups: copy them to different names" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (GNU time)" >&2; exit 2; }
PERF=${PERF:-0}
PERF_DIR=${PERF_DIR:-/tmp/ab-backfill}
if [ "$PERF" = 1 ]; then
  command -v perf >/dev/null || { echo "PERF=1 needs perf" >&2; exit 2; }
  mkdir -p "$PERF_DIR"
  for b in "$@"; do rm -f "$PERF_DIR/$(basename "$b")".*.data "$PERF_DIR/$(basename "$b")".*.data.txt; done
fi
ARCHIVE=$(scripts/bench-archive.sh "${EVENTS:-10000000}" "$1")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for pair in $(seq 1 "$PAIRS"); do
  # Every other round in reverse order, so that no binary always runs right after another.
  order=("$@")
  [ $((pair % 2)) = 0 ] && mapfile -t order < <(printf '%s\n' "$@" | tac)
  for bin in "${order[@]}"; do
    name=$(basename "$bin")
    pre=()
    data="$PERF_DIR/$name.$pair.data"
    [ "$PERF" = 1 ] && pre=(perf record -q -F 999 -o "$data" --)
    rm -rf "$WORK/out"
    /usr/bin/time -f "%e %U %S %M" -o "$WORK/time" "${pre[@]}" "$bin" backfill --job aggregation --quiet --complete \
      --source "$ARCHIVE" --sink "$WORK/out" --from 2026-01-01T00:00:00Z --to 2026-01-02T00:00:00Z > /dev/null 2> "$WORK/err" \
      || { echo "[$name] failed:" >&2; tail -5 "$WORK/err" >&2; exit 1; }
    hash=$(cd "$WORK/out" && find . -type f | sort | xargs sha256sum | sha256sum | cut -c1-16)
    samples=""
    if [ "$PERF" = 1 ]; then
      perf report -i "$data" --no-children --sort dso,symbol -F sample,dso,sym 2>/dev/null > "$data.txt"
      samples=$(awk '/^ +[0-9]/ { if ($2 ~ /kernel/) k += $1; else u += $1 } END { printf " samples user %d kernel %d", u, k }' "$data.txt")
    fi
    echo "[$name] $(awk '{printf "%s %s %s %d", $1, $2, $3, $4 / 1024}' "$WORK/time") $hash$samples"
  done
done
if [ "$PERF" = 1 ]; then
  python3 - "$PERF_DIR" "$@" <<'PY'
import collections, os, re, sys
perf_dir, names = sys.argv[1], [os.path.basename(b) for b in sys.argv[2:]]
sums = {n: collections.Counter() for n in names}
for n in names:
    for f in os.listdir(perf_dir):
        if f.startswith(n + ".") and f.endswith(".data.txt"):
            for line in open(os.path.join(perf_dir, f)):
                m = re.match(r"\s+(\d+)\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$", line)
                if m and "kernel" not in m.group(2):
                    sums[n][m.group(4)[:80]] += int(m.group(1))
total = collections.Counter()
for c in sums.values():
    total.update(c)
print("user-space samples summed over the rounds: " + "  ".join(f"{n} {sum(sums[n].values())}" for n in names))
print("  ".join(f"{n[:10]:>10}" for n in names) + "  symbol")
for sym, _ in total.most_common(30):
    print("  ".join(f"{sums[n][sym]:>10}" for n in names) + "  " + sym)
PY
fi
