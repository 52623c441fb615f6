#!/usr/bin/env bash
# Reproduces the README's Performance figures on this machine: each
# scenario gets a freshly built server of its own (so RSS baselines are
# clean) on a free loopback port, stopped afterwards. Loopback only.
#   bash bench/perf.sh             # everything (~6 minutes)
#   bash bench/perf.sh idle        # one group: idle | broadcast | storm | rooms | smoke
#   bash bench/perf.sh -w idle     # and overwrite the tracked bench/results/*.json
# The harness's JSON goes to a new bench/out/<UTC timestamp>/ (gitignored),
# or PERF_OUT=dir; only -w or PERF_WRITE_RESULTS=1 writes bench/results/,
# the figures the README quotes. PERF_PORT=n serves on port n instead of a
# free one; the script refuses to run if anything already answers there.
# "smoke" is a seconds-long check of this script itself (bench/perf_test.go).
set -euo pipefail
cd "$(dirname "$0")/.."

write=${PERF_WRITE_RESULTS:-0}
if [[ ${1:-} == -w ]]; then
  write=1
  shift
fi
group=${1:-all}
case $group in
  all | idle | broadcast | storm | rooms | smoke) ;;
  *) echo "usage: bash bench/perf.sh [-w] [all|idle|broadcast|storm|rooms|smoke]" >&2; exit 2 ;;
esac
if [[ $write == 1 ]]; then
  out=bench/results
else
  out=${PERF_OUT:-bench/out/$(date -u +%Y%m%dT%H%M%SZ)}
fi
mkdir -p "$out"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gochat-perf.XXXXXX")
server=
cleanup() {
  if [[ -n $server ]]; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

go build -o "$tmp/gochat" .
go build -o "$tmp/bench" ./bench

# freeport prints a loopback port nobody listens on right now.
freeport() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# answers reports whether anything accepts TCP connections on port $1.
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# serve FLAGS... starts a fresh server on a free port and waits for its
# /healthz; it refuses a port that something else already answers on, so
# the figures are never someone else's server's.
serve() {
  port=${PERF_PORT:-$(freeport)}
  if answers "$port"; then
    echo "perf.sh: something already answers on 127.0.0.1:$port; refusing to benchmark it (unset PERF_PORT or pick a free one)" >&2
    exit 1
  fi
  "$tmp/gochat" -addr "127.0.0.1:$port" -log-level warn "$@" &
  server=$!
  for _ in $(seq 200); do
    if ! kill -0 "$server" 2>/dev/null; then
      server=
      echo "perf.sh: the server exited at start" >&2
      exit 1
    fi
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && return
    sleep 0.05
  done
  echo "perf.sh: the server did not become healthy on 127.0.0.1:$port" >&2
  exit 1
}
stop() {
  kill -TERM "$server"
  wait "$server" || true
  server=
}
bench() { "$tmp/bench" "$@" -url "ws://127.0.0.1:$port/ws" -pid "$server" -json; }

if [[ $group == all || $group == idle ]]; then
  for n in 1000 5000 10000 19000; do
    serve -presence=false
    bench idle -conns $n -hold 10s >"$out/idle-$n.json"
    stop
  done
fi
if [[ $group == all || $group == broadcast ]]; then
  # 2,000 clients, 20 senders: 5/10/20 msg/s each = 200k/400k/800k deliveries/s offered.
  for r in 5 10 20; do
    serve -presence=false -rate 100 -burst 100
    bench broadcast -conns 2000 -senders 20 -rate $r -duration 8s >"$out/broadcast-2000x20x$r.json"
    stop
  done
  # Issue #11's large room: 9,000 clients, 10 senders at 5 msg/s = 450k deliveries/s offered.
  serve -presence=false -rate 1000 -burst 1000
  bench broadcast -conns 9000 -senders 10 -rate 5 -duration 8s >"$out/broadcast-9000x10x5.json"
  stop
fi
if [[ $group == all || $group == storm ]]; then
  serve
  bench storm -conns 2000 >"$out/storm-2000.json"
  stop
fi
if [[ $group == all || $group == rooms ]]; then
  # Issue #12: 10,000 clients in 1,000 rooms of 10, one sender each, 1,000 msg/s in all;
  # the mix: one room of 5,000 (2 senders, 20 msg/s in all) beside 500 rooms of 10 (500 msg/s);
  # idle 10,000 in one room vs in 1,000 rooms, back to back, for RSS per connection.
  serve -rate 100 -burst 100
  bench rooms -conns 10000 -rooms 1000 -rate 1000 -duration 10s >"$out/rooms-10000x1000.json"
  stop
  serve -rate 100 -burst 100
  bench rooms -conns 10000 -rooms 500 -rate 500 -big 5000 -big-senders 2 -big-rate 20 -duration 10s >"$out/rooms-mix-5000+500x10.json"
  stop
  serve -presence=false
  bench idle -conns 10000 -hold 10s >"$out/rooms-idle-10000x1.json"
  stop
  serve -presence=false
  bench idle -conns 10000 -rooms 1000 -hold 10s >"$out/rooms-idle-10000x1000.json"
  stop
fi
if [[ $group == smoke ]]; then
  serve -presence=false
  bench idle -conns 50 -hold 200ms >"$out/smoke-idle-50.json"
  stop
fi
echo "results in $out/" >&2
python3 - "$out" <<'PY'
import json, glob, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    d = json.load(open(f)); s = d.get("server", {}); l = d.get("latency_ms", {})
    print(f"{os.path.basename(f):32} connected={d.get('connected')} lost={d.get('lost')} "
          f"disconnected={d.get('disconnected')} dps={d.get('deliveries_per_sec', 0):.0f} "
          f"p50={l.get('p50')} p99={l.get('p99')} rss/conn={d.get('rss_per_conn_bytes')} "
          f"cpu/delivery={d.get('cpu_us_per_delivery')} drain={d.get('drain_seconds')} "
          f"fds={s.get('fds')} goroutines={s.get('goroutines')}"
          + (f" leaked={r.get('leaked')} dups={r.get('duplicates')}" if (r := d.get("rooms")) and "leaked" in r else ""))
PY
