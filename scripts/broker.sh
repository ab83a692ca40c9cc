#!/usr/bin/env bash
# Starts or stops a Kafka-protocol broker (Nisshi 0.7.0) on a free 127.0.0.1 port.
#
#   scripts/broker.sh start DIR [STORAGE]   starts it; prints host:port. DIR holds its pid,
#                                           port and log. STORAGE: memory (default) or
#                                           sqlite (DIR/broker.db, survives a restart).
#   scripts/broker.sh stop DIR              stops it (if running).
#   scripts/broker.sh restart DIR           stops it and starts it again on the same port
#                                           and storage.
#   scripts/broker.sh crash DIR             SIGKILLs it (no time to flush: a crash), then starts
#                                           it again on the same port and storage.
#
# The broker runs without transparent huge pages (MIMALLOC_ALLOW_THP=0; set it to 1 to
# compare). Its allocator, mimalloc, asks for them on its arenas, and on these VMs the kernel
# zeroing a whole huge page at its first touch was 43 % of the broker's CPU samples while it
# stored a stream job's output: the same cost `adsproc` avoids in its own process
# (src/main.rs, docs/backfill.md). The broker shares the test machine's two cores with the
# job it serves, so its waste is the job's loss. Figures in docs/stream.md.
#
# Installs the broker first if needed (scripts/ensure-broker.sh).
set -euo pipefail
cmd="${1:?usage: broker.sh start|stop|restart|crash DIR [memory|sqlite]}"
dir="${2:?usage: broker.sh start|stop|restart|crash DIR [memory|sqlite]}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

stop() {
  if [ -f "$dir/pid" ]; then
    pid="$(cat "$dir/pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/pid"
  fi
}

start() {
  local port="$1" storage="$2"
  bin="$("$(cd "$(dirname "$0")" && pwd)/ensure-broker.sh")"
  case "$storage" in
    memory) engine="memory://nisshi/" ;;
    # Nisshi resolves the file against its working directory, which is $dir.
    sqlite) engine="sqlite://broker.db" ;;
    *) echo "storage must be memory or sqlite, not $storage" >&2; exit 2 ;;
  esac
  echo "$port" > "$dir/port"
  echo "$storage" > "$dir/storage"
  # A short initial rebalance delay: tests start and stop group members often.
  (cd "$dir" && MIMALLOC_ALLOW_THP="${MIMALLOC_ALLOW_THP:-0}" exec "$bin" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "$engine" --group-initial-rebalance-delay 200ms >>"$dir/broker.log" 2>&1) &
  echo $! > "$dir/pid"
  for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1',$port)))" 2>/dev/null; then
      echo "127.0.0.1:$port"
      return 0
    fi
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || { echo "broker exited; see $dir/broker.log" >&2; tail -20 "$dir/broker.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "broker did not listen on 127.0.0.1:$port within 10 s; see $dir/broker.log" >&2
  exit 1
}

case "$cmd" in
  start) stop; start "$(free_port)" "${3:-memory}" ;;
  stop) stop ;;
  restart) stop; start "$(cat "$dir/port")" "$(cat "$dir/storage")" ;;
  crash)
    if [ -f "$dir/pid" ]; then
      pid="$(cat "$dir/pid")"
      kill -9 "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$dir/pid"
    fi
    start "$(cat "$dir/port")" "$(cat "$dir/storage")" ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
