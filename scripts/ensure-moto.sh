#!/usr/bin/env bash
# Makes sure a local S3-protocol server (moto_server, PyPI moto[server]) is installed for the
# S3 tests. Idempotent: does nothing when it is already there.
set -euo pipefail
if command -v moto_server >/dev/null 2>&1 && python3 -c "import moto.server, flask, flask_cors" >/dev/null 2>&1; then
  exit 0
fi
echo "installing moto[server] for the S3 tests" >&2
python3 -m pip install --quiet 'moto[server]>=5,<6'
command -v moto_server >/dev/null 2>&1 || { hash -r; command -v moto_server >/dev/null 2>&1; } || {
  echo "moto_server is not on PATH after installing moto[server]" >&2
  exit 1
}
