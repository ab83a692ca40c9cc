#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed: the diff report's test renders the HTML page in it
# (headless). Idempotent. Prints the browser's path.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium for the report test" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >&2
fi
command -v chromium
