#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs every test
# (unit, property, replay fixtures, acceptance over generated archives, bad input, S3 on a
# local moto server, restatements read back with pyarrow, the diff report in headless Chromium,
# the stream job against a local Kafka-protocol broker, the load into a local PostgreSQL server).
#
# The broker (Nisshi) is built once into ~/.cache/adsproc, beside the tests' own build. From
# scratch on a slow 2-core VM the whole script took 59 minutes (the broker's build 56 of them);
# the tests start and stop their own broker processes on free 127.0.0.1 ports.
#
# In CI (CI=true) builds go to a cache outside the fresh clone, so a later run on the same
# machine reuses compiled dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CI:-}" = "true" ] && [ -z "${CARGO_TARGET_DIR:-}" ]; then
  export CARGO_TARGET_DIR="$HOME/.cache/adsproc/target"
fi
scripts/ensure-moto.sh
scripts/ensure-pyarrow.sh
# Debian's chromium: the diff report's test renders its HTML page headless.
scripts/ensure-chromium.sh >/dev/null
# Debian's postgresql package (the tests run their own servers, scripts/postgres.sh): installed
# once here rather than by tests racing each other to apt-get.
scripts/ensure-postgres.sh >/dev/null
# The broker's release build and the tests' debug build run side by side: each has long
# stretches on one core (C builds of aws-lc and libsql, linking), which the other fills.
# In its own process group (setsid), so that a failed test build stops cargo install and its
# compilers too, not only the script that started them.
broker_log="$(mktemp)"
setsid scripts/ensure-broker.sh >/dev/null 2>"$broker_log" &
broker_build=$!
trap 'kill -- -"$broker_build" 2>/dev/null || true; rm -f "$broker_log"' EXIT
cargo test --locked --no-run
if ! wait "$broker_build"; then
  echo "building the broker failed:" >&2
  tail -40 "$broker_log" >&2
  exit 1
fi
trap - EXIT
rm -f "$broker_log"
cargo test --locked
