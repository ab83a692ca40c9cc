#!/usr/bin/env bash
# Starts or stops a throwaway PostgreSQL server on a free 127.0.0.1 port: the upsert store the
# load tests and the two-region demo write to (the seed system's Pinot).
#
#   scripts/postgres.sh start DIR   initdb into DIR/data (once), start; prints the server's URL,
#                                   postgres://adsproc@127.0.0.1:PORT/postgres (trust auth,
#                                   loopback only, no Unix socket).
#   scripts/postgres.sh stop DIR    stops it fast (if running).
#   scripts/postgres.sh kill DIR    SIGKILLs the postmaster (a crash; start recovers the data).
#   scripts/postgres.sh destroy DIR stops it and deletes its data.
#
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user that
# Debian's package creates; when that user cannot reach DIR (a parent directory private to
# root), the data directory is made under /tmp instead and DIR/datadir names it. Installs the
# package first if needed (scripts/ensure-postgres.sh).
set -euo pipefail
cmd="${1:?usage: postgres.sh start|stop|kill|destroy DIR}"
dir="${2:?usage: postgres.sh start|stop|kill|destroy DIR}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
bin="$("$(cd "$(dirname "$0")" && pwd)/ensure-postgres.sh")"

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

data_dir() {
  if [ -f "$dir/datadir" ]; then cat "$dir/datadir"; else echo "$dir/data"; fi
}

start() {
  if [ ! -f "$(data_dir)/PG_VERSION" ]; then
    if [ "$(id -u)" = 0 ]; then
      chmod 755 "$dir"
      if runuser -u postgres -- test -x "$dir"; then
        mkdir -p "$dir/data" && chown postgres "$dir/data"
      else
        runuser -u postgres -- mktemp -d /tmp/adsproc-pg.XXXXXX >"$dir/datadir"
      fi
    else
      mkdir -p "$dir/data"
    fi
    data="$(data_dir)"
    chmod 700 "$data"
    as_owner "$bin/initdb" -D "$data" -U adsproc --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { echo "initdb failed; see $dir/initdb.log" >&2; tail -20 "$dir/initdb.log" >&2; exit 1; }
    port="$(free_port)"
    cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = ''
fsync = on
CONF
    echo "$port" >"$dir/port"
  fi
  port="$(cat "$dir/port")"
  data="$(data_dir)"
  as_owner "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start >/dev/null \
    || { echo "PostgreSQL did not start; see $data/server.log" >&2; tail -20 "$data/server.log" >&2; exit 1; }
  echo "postgres://adsproc@127.0.0.1:$port/postgres"
}

stop() {
  [ -f "$(data_dir)/postmaster.pid" ] || return 0
  as_owner "$bin/pg_ctl" -D "$(data_dir)" -m fast -w stop >/dev/null 2>&1 || true
}

crash() {
  [ -f "$(data_dir)/postmaster.pid" ] || return 0
  kill -9 "$(head -1 "$(data_dir)/postmaster.pid")" 2>/dev/null || true
  sleep 0.5
}

destroy() {
  stop
  rm -rf "$(data_dir)" "$dir/datadir"
}

case "$cmd" in
  start) stop; start ;;
  stop) stop ;;
  kill) crash ;;
  destroy) destroy ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
