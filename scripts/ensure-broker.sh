#!/usr/bin/env bash
# Makes sure the Kafka-protocol broker the integration tests talk to is installed: Nisshi 0.7.0
# (formerly Tansu), built from crates.io into a cache outside the clone, because building it
# takes 15 to 55 minutes on 2 cores (it compiles ~570 crates, aws-lc and SQLite among them)
# and a fresh clone must not pay that twice.
#
# Idempotent: prints the binary path and exits when it is already there.
# Override the cache with ADSPROC_CACHE (default ~/.cache/adsproc).
set -euo pipefail
cache="${ADSPROC_CACHE:-$HOME/.cache/adsproc}"
root="$cache/nisshi-0.7.0"
bin="$root/bin/nisshi"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$root"
echo "installing nisshi 0.7.0 into $root (one-off, 15-55 min on 2 cores)" >&2
# Its own target dir, so a failed build resumes instead of starting over.
CARGO_TARGET_DIR="$cache/nisshi-build" cargo install nisshi --version 0.7.0 --locked \
  --ignore-rust-version --features dynostore,libsql --root "$root" >&2
rm -rf "$cache/nisshi-build"
echo "$bin"
