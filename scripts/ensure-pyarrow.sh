#!/usr/bin/env bash
# Makes sure pyarrow is installed: the restatement tests read the backfill's output with it
# (tests/support/read_partitions.py), a reader that shares no code with adsproc's. Idempotent.
set -euo pipefail
if python3 -c "import pyarrow.parquet, pyarrow.fs" >/dev/null 2>&1; then
  exit 0
fi
echo "installing pyarrow for the restatement tests" >&2
python3 -m pip install --quiet 'pyarrow>=14'
