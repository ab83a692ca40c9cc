#!/usr/bin/env bash
# Starts or stops a throwaway PostgreSQL server on a free 127.0.0.1 port: the upsert store the
# load tests and the two-region demo write to (the seed system's Pinot).
#
#   scripts/postgres.sh start DIR   initdb into DIR/data (once), start; prints the server's URL,
#                                   postgres://adsproc@127.0.0.1:PORT/postgres (trust auth,
#                                   loopback only, no Unix socket).
#   scripts/postgres.sh stop DIR    stops it fast (if running).
#   scripts/postgres.sh kill DIR    SIGKILLs the postmaster (a crash; start recovers the data).
#
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user that
# Debian's package creates. Installs the package first if needed (scripts/ensure-postgres.sh).
set -euo pipefail
cmd="${1:?usage: postgres.sh start|stop|kill DIR}"
dir="${2:?usage: postgres.sh start|stop|kill DIR}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
bin="$("$(cd "$(dirname "$0")" && pwd)/ensure-postgres.sh")"

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start() {
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    mkdir -p "$dir/data"
    if [ "$(id -u)" = 0 ]; then chmod 755 "$dir"; chown postgres "$dir/data"; fi
    chmod 700 "$dir/data"
    as_owner "$bin/initdb" -D "$dir/data" -U adsproc --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { echo "initdb failed; see $dir/initdb.log" >&2; tail -20 "$dir/initdb.log" >&2; exit 1; }
    port="$(free_port)"
    cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = ''
fsync = on
CONF
    echo "$port" >"$dir/port"
  fi
  port="$(cat "$dir/port")"
  touch "$dir/server.log"
  [ "$(id -u)" = 0 ] && chown postgres "$dir/server.log"
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null \
    || { echo "PostgreSQL did not start; see $dir/server.log" >&2; tail -20 "$dir/server.log" >&2; exit 1; }
  echo "postgres://adsproc@127.0.0.1:$port/postgres"
}

stop() {
  [ -f "$dir/data/postmaster.pid" ] || return 0
  as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

crash() {
  [ -f "$dir/data/postmaster.pid" ] || return 0
  kill -9 "$(head -1 "$dir/data/postmaster.pid")" 2>/dev/null || true
  sleep 0.5
}

case "$cmd" in
  start) stop; start ;;
  stop) stop ;;
  kill) crash ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
