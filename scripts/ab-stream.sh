#!/usr/bin/env bash
# A/B comparison of adsproc binaries on the stream bench's workload, runs alternating.
#
#   scripts/ab-stream.sh PAIRS BIN_A BIN_B [BIN_C ...]
#
# One broker and one produced topic (1M messages, 8 partitions, as scripts/bench-stream.sh);
# then one warm-up run (not reported) and PAIRS rounds, each running every binary once, in
# reverse order every other round, with a fresh group and checkpoint directory,
# `--stop-when-caught-up`. One line per run:
#
#   [name] <busy s> <sustained messages/s> <user s> <system s> <peak RSS kB> faults <minor faults> broker <its CPU s>
#
# On this shared VM one binary's rate moves by a fifth between runs and by more between
# sessions, so compare binaries only within one invocation, pair by pair (faster in how many
# pairs, medians). Copy each binary out of target/ first (cp target/release/adsproc /tmp/a).
# Environment: EVENTS (default 1000000), JOB (aggregation, the default, or attribution: then
# the topics also hold EVENTS/50 orders on 4 partitions, as scripts/bench-attribution.sh's
# stream part, and the plain consumer reads both topics), PERF=1 records the first round of
# each binary with perf into /tmp/perf.<name>.data.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n 2,17p "$0" >&2; exit 2; }
PAIRS=$1; shift
for b in "$@"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }; done
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (GNU time)" >&2; exit 2; }
cargo build --release --quiet --example kafka_probe
WORK=$(mktemp -d)
trap 'scripts/broker.sh stop "$WORK/broker"; rm -rf "$WORK"' EXIT
BROKER=$(scripts/broker.sh start "$WORK/broker" memory)
JOB=${JOB:-aggregation}
EVENTS=${EVENTS:-1000000}
case "$JOB" in
  aggregation)
    "$1" produce --brokers "$BROKER" --events "$EVENTS" --hours 4 --ads 10000 --partitions 8 --seed 3 --watermark-tick >/dev/null
    TOPICS=ad-events ;;
  attribution)
    "$1" produce --brokers "$BROKER" --events "$EVENTS" --hours 8 --orders $((EVENTS / 50)) --order-hours 4 --ads 10000 \
      --partitions 8 --order-partitions 4 --seed 3 --watermark-tick >/dev/null
    TOPICS=ad-events,orders ;;
  *) echo "JOB is aggregation or attribution, not $JOB" >&2; exit 2 ;;
esac
broker_cpu() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$(cat "$WORK/broker/pid")/stat"; }
read -r n s rate < <(target/release/examples/kafka_probe read-rate "$BROKER" "$TOPICS" 2>/dev/null)
echo "plain consumer: $n messages in $s s = $rate messages/s"
# The first job run after the topic is produced was the slowest of nearly every invocation
# (the broker's CPU time up to twice the others'), whichever binary it was: one warm-up run,
# not reported, absorbs that. And the order alternates (A B, then B A), so that neither binary
# always runs right after the other.
"$1" stream --job "$JOB" --brokers "$BROKER" --checkpoint "$WORK/ckpt-warm-up" --group ab-warm-up \
  --stop-when-caught-up --log warn > /dev/null 2>&1
run=0
for pair in $(seq 1 "$PAIRS"); do
  order=("$@")
  if [ $((pair % 2)) = 0 ]; then
    order=()
    for ((i = $#; i >= 1; i--)); do order+=("${!i}"); done
  fi
  for bin in "${order[@]}"; do
    run=$((run + 1))
    name=$(basename "$bin")
    pre=()
    if [ "${PERF:-0}" = 1 ] && [ "$pair" = 1 ]; then pre=(perf record -F 799 --call-graph dwarf,16384 -o "/tmp/perf.$name.data" --); fi
    c0=$(broker_cpu)
    /usr/bin/time -f "%U %S %M faults %R" -o "$WORK/time" "${pre[@]}" "$bin" stream --job "$JOB" --brokers "$BROKER" \
      --checkpoint "$WORK/ckpt-$run" --group "ab-$run" --stop-when-caught-up --log warn > "$WORK/out" 2>&1
    c1=$(broker_cpu)
    busy=$(sed -n 's/^polled [0-9]* messages in \([0-9.]*\) s .*(\([0-9]*\) messages\/s)$/\1 \2/p' "$WORK/out")
    echo "[$name] $busy $(cat "$WORK/time") broker $(python3 -c "print('%.2f' % ($c1 - $c0))")"
  done
done
