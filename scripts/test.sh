#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs every test
# (unit, property, replay fixtures, acceptance over generated archives, bad input, S3 on a
# local moto server, the stream job against a local Kafka-protocol broker).
#
# The broker (Nisshi) is built once into ~/.cache/adsproc (about 15 minutes on 2 cores); the
# tests start and stop their own broker processes on free 127.0.0.1 ports.
#
# In CI (CI=true) builds go to a cache outside the fresh clone, so a later run on the same
# machine reuses compiled dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CI:-}" = "true" ] && [ -z "${CARGO_TARGET_DIR:-}" ]; then
  export CARGO_TARGET_DIR="$HOME/.cache/adsproc/target"
fi
scripts/ensure-moto.sh
scripts/ensure-broker.sh >/dev/null
cargo test --locked
