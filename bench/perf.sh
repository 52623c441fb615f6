#!/usr/bin/env bash
# Reproduces the README's Performance figures on this machine: each
# scenario gets a freshly started server (so RSS baselines are clean) and
# writes the harness's JSON to bench/results/. Loopback only.
#   bash bench/perf.sh            # everything (~4 minutes)
#   bash bench/perf.sh idle       # one group: idle | broadcast | storm
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results
mkdir -p "$out"
go build -o /tmp/gochat-perf .
go build -o /tmp/gochat-bench ./bench
port=18600

# serve FLAGS... starts a fresh server and waits for /healthz.
serve() {
  /tmp/gochat-perf -addr 127.0.0.1:$port -log-level warn "$@" &
  server=$!
  for _ in $(seq 100); do curl -fs http://127.0.0.1:$port/healthz >/dev/null && return; sleep 0.05; done
  echo "server did not start" >&2; exit 1
}
stop() { kill -TERM "$server"; wait "$server" || true; }
bench() { /tmp/gochat-bench "$@" -url ws://127.0.0.1:$port/ws -json; }

group=${1:-all}
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
fi
if [[ $group == all || $group == storm ]]; then
  serve
  bench storm -conns 2000 >"$out/storm-2000.json"
  stop
fi
python3 - "$out" <<'PY'
import json, glob, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    d = json.load(open(f)); s = d.get("server", {}); l = d.get("latency_ms", {})
    print(f"{os.path.basename(f):28} connected={d.get('connected')} lost={d.get('lost')} "
          f"disconnected={d.get('disconnected')} dps={d.get('deliveries_per_sec', 0):.0f} "
          f"p50={l.get('p50')} p99={l.get('p99')} rss/conn={d.get('rss_per_conn_bytes')} "
          f"cpu/delivery={d.get('cpu_us_per_delivery')} drain={d.get('drain_seconds')} "
          f"fds={s.get('fds')} goroutines={s.get('goroutines')}")
PY
