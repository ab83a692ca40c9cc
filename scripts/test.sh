#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs every test
# (unit, property, replay fixtures, acceptance over generated archives, bad input, S3 on a
# local moto server).
#
# In CI (CI=true) builds go to a cache outside the fresh clone, so a later run on the same
# machine reuses compiled dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CI:-}" = "true" ] && [ -z "${CARGO_TARGET_DIR:-}" ]; then
  export CARGO_TARGET_DIR="$HOME/.cache/adsproc/target"
fi
scripts/ensure-moto.sh
cargo test --locked
