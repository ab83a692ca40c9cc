#!/usr/bin/env bash
# Makes sure PostgreSQL's server programs (Debian's `postgresql` package) are installed for the
# load tests; prints the directory that holds initdb, pg_ctl and postgres. Idempotent: does
# nothing but print when they are already there.
set -euo pipefail
find_bin() {
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  return 1
}
if bin="$(find_bin)"; then echo "$bin"; exit 0; fi
echo "installing Debian's postgresql package for the load tests" >&2
sudo_=""
[ "$(id -u)" = 0 ] || sudo_="sudo"
export DEBIAN_FRONTEND=noninteractive
# The package's post-install creates and starts a cluster on port 5432; tests never use it.
$sudo_ apt-get install -y -q postgresql >/dev/null 2>&1 || { $sudo_ apt-get update -q >/dev/null && $sudo_ apt-get install -y -q postgresql >/dev/null; }
bin="$(find_bin)" || { echo "initdb not found after installing postgresql" >&2; exit 1; }
echo "$bin"
