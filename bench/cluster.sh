#!/usr/bin/env bash
# Cluster benchmark on this machine: a nats-server (JetStream on, store in a
# temporary directory) and N gochat nodes started by this script on free
# loopback ports, all clients in one room spread over the nodes, as many
# bench processes (shards) as the open-file limit needs, their results
# merged; everything is stopped afterwards. Loopback only; it refuses a port
# that something else already answers on, so the figures are never someone
# else's server's.
#
#   bash bench/cluster.sh                                   # 3 nodes × 2,000 clients, 20 s
#   bash bench/cluster.sh -nodes 6 -conns 100000 -senders 2 -rate 1 -duration 30s
#   bash bench/cluster.sh -chaos                            # 3 nodes under traffic: NATS killed (-9)
#                                                           # and restarted twice, one node killed and restarted
#   bash bench/cluster.sh -w ...                            # also write bench/results/cluster-*.json
#
# Options (defaults in brackets):
#   -nodes N [3]  -conns N [6000]  -senders N [6]  -rate R msg/s per sender [2]
#   -duration D [20s; chaos 60s]  -size B [100]  -drain D [10s]
#   -per-process N [16000]: clients per bench process (the fd limit is 20,000)
#   -sender-nodes N [0 = all; chaos 2]: senders on the first N nodes only
#   -track: per-message accounting (always on with -chaos, and so is -rejoin:
#   the killed node's clients dial again, counted apart from the receivers)
#   -gochat "FLAGS": extra gochat flags (default: -presence=false -rate 100 -burst 100)
# Without -w the JSON goes to bench/out/<UTC timestamp>/ (or CLUSTER_OUT=dir).
set -euo pipefail
cd "$(dirname "$0")/.."

write=0 chaos=0 track=0
nodes=3 conns=6000 senders=6 rate=2 duration= size=100 drain=10s per_process=16000 sender_nodes=
gochat_flags="-presence=false -rate 100 -burst 100"
while [[ $# -gt 0 ]]; do
  case $1 in
    -w) write=1 ;;
    -chaos) chaos=1 ;;
    -track) track=1 ;;
    -nodes) nodes=$2; shift ;;
    -conns) conns=$2; shift ;;
    -senders) senders=$2; shift ;;
    -rate) rate=$2; shift ;;
    -duration) duration=$2; shift ;;
    -size) size=$2; shift ;;
    -drain) drain=$2; shift ;;
    -per-process) per_process=$2; shift ;;
    -sender-nodes) sender_nodes=$2; shift ;;
    -gochat) gochat_flags=$2; shift ;;
    *) sed -n '2,24p' "$0" >&2; exit 2 ;;
  esac
  shift
done
if [[ $chaos == 1 ]]; then
  nodes=3 track=1
  duration=${duration:-60s}
  sender_nodes=${sender_nodes:-2} # node 2 is the one killed: its clients only receive
fi
duration=${duration:-20s}
sender_nodes=${sender_nodes:-0}
if (( nodes < 1 || conns < nodes || per_process < 1 || per_process > 19000 )); then
  echo "cluster.sh: want -nodes >= 1, -conns >= -nodes, 1 <= -per-process <= 19000" >&2
  exit 2
fi
per_node=$(( (conns + nodes - 1) / nodes ))
if (( per_node > 19000 )); then
  echo "cluster.sh: $per_node clients per node is past the 20,000 open files a process may have: use more -nodes" >&2
  exit 2
fi
max_conns=$(( per_node + 500 ))
shards=$(( (conns + per_process - 1) / per_process ))

name=cluster-${nodes}x${conns}-${senders}x${rate}
[[ $chaos == 1 ]] && name=cluster-chaos-${nodes}x${conns}
if [[ $write == 1 ]]; then
  out=bench/results
else
  out=${CLUSTER_OUT:-bench/out/$(date -u +%Y%m%dT%H%M%SZ)}
fi
mkdir -p "$out"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gochat-cluster.XXXXXX")
nats_pid=
node_pid=()
bench_pids=()
stop_pid() { # stop_pid PID: TERM, wait; nothing if it is gone already
  [[ -n $1 ]] || return 0
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  for p in "${bench_pids[@]}"; do stop_pid "$p"; done
  for p in "${node_pid[@]}"; do stop_pid "$p"; done
  stop_pid "$nats_pid"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "cluster.sh: building" >&2
go build -o "$tmp/gochat" .
go build -o "$tmp/bench" ./bench
nats=$(command -v nats-server || true)
if [[ -z $nats ]]; then
  nats=$(go env GOPATH)/bin/nats-server
  [[ -x $nats ]] || go install github.com/nats-io/nats-server/v2@v2.15.3
fi

freeport() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
claim() { # claim: print a free port nothing answers on
  local p
  p=$(freeport)
  if answers "$p"; then
    echo "cluster.sh: something already answers on 127.0.0.1:$p; refusing to benchmark it" >&2
    exit 1
  fi
  echo "$p"
}

nats_port=$(claim)
start_nats() {
  "$nats" -a 127.0.0.1 -p "$nats_port" -js -sd "$tmp/nats" >>"$tmp/nats.log" 2>&1 &
  nats_pid=$!
  for _ in $(seq 200); do
    answers "$nats_port" && return
    kill -0 "$nats_pid" 2>/dev/null || { echo "cluster.sh: nats-server exited at start:" >&2; tail -5 "$tmp/nats.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "cluster.sh: nats-server did not listen on 127.0.0.1:$nats_port" >&2
  exit 1
}
port=()
for ((i = 0; i < nodes; i++)); do port[i]=$(claim); done
start_node() { # start_node I
  local i=$1
  # shellcheck disable=SC2086 # gochat_flags is a list of flags
  "$tmp/gochat" -addr "127.0.0.1:${port[i]}" -nats "nats://127.0.0.1:$nats_port" -max-conns "$max_conns" \
    -log-level warn $gochat_flags >>"$tmp/node$i.log" 2>&1 &
  node_pid[i]=$!
}
wait_ready() { # wait_ready I: /readyz answers 200
  local i=$1
  for _ in $(seq 400); do
    curl -fs "http://127.0.0.1:${port[i]}/readyz" >/dev/null && return
    kill -0 "${node_pid[i]}" 2>/dev/null || { echo "cluster.sh: node $i exited at start:" >&2; tail -5 "$tmp/node$i.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "cluster.sh: node $i not ready on 127.0.0.1:${port[i]}" >&2
  exit 1
}

start_nats
for ((i = 0; i < nodes; i++)); do start_node "$i"; done
for ((i = 0; i < nodes; i++)); do wait_ready "$i"; done
urls=
for ((i = 0; i < nodes; i++)); do urls+="${urls:+,}ws://127.0.0.1:${port[i]}/ws"; done
echo "cluster.sh: nats 127.0.0.1:$nats_port (pid $nats_pid), nodes $urls; $conns clients in $shards bench process(es)" >&2

args=(broadcast -url "$urls" -conns "$conns" -senders "$senders" -rate "$rate" -duration "$duration"
  -size "$size" -drain "$drain" -sender-nodes "$sender_nodes" -sync "$tmp/sync" -json)
[[ $track == 1 ]] && args+=(-track)
[[ $chaos == 1 ]] && args+=(-rejoin)
if (( shards > 1 )); then
  for ((s = 0; s < shards; s++)); do
    "$tmp/bench" "${args[@]}" -shard "$s/$shards" >"$tmp/shard-$s.json" 2>"$tmp/shard-$s.log" &
    bench_pids[s]=$!
  done
else
  "$tmp/bench" "${args[@]}" >"$tmp/shard-0.json" 2>"$tmp/shard-0.log" &
  bench_pids[0]=$!
fi

# chaos: once every shard is sending, at fixed fractions of -duration:
# NATS killed and restarted, node 2 killed and restarted, NATS again.
events=$tmp/events.txt
: >"$events"
if [[ $chaos == 1 ]]; then
  for _ in $(seq 6000); do
    n=$( (ls "$tmp/sync" 2>/dev/null || true) | grep -c '^ready-' || true)
    (( n >= shards )) && break
    sleep 0.1
  done
  secs=$(python3 -c "import re,sys; d=sys.argv[1]; m=re.fullmatch(r'(\d+(?:\.\d+)?)(ms|s|m)', d); print(float(m[1])*{'ms':.001,'s':1,'m':60}[m[2]])" "$duration")
  t0=$(date +%s.%N)
  at() { # at FRACTION: sleep until that fraction of the send phase
    local wait
    wait=$(python3 -c "import sys,time; print(max(0, float(sys.argv[1]) + float(sys.argv[2])*float(sys.argv[3]) - time.time()))" "$t0" "$1" "$secs")
    sleep "$wait"
  }
  log() { echo "$(python3 -c "import sys,time; print('%.1f' % (time.time()-float(sys.argv[1])))" "$t0")s $*" | tee -a "$events" >&2; }
  at 0.15; log "kill -9 nats-server"; kill -9 "$nats_pid"; wait "$nats_pid" 2>/dev/null || true
  sleep 2; start_nats; log "nats-server restarted"
  at 0.35; log "kill -9 node 2"; kill -9 "${node_pid[2]}"; wait "${node_pid[2]}" 2>/dev/null || true
  sleep 2; start_node 2; wait_ready 2; log "node 2 restarted"
  at 0.6; log "kill -9 nats-server"; kill -9 "$nats_pid"; wait "$nats_pid" 2>/dev/null || true
  sleep 2; start_nats; log "nats-server restarted"
fi

status=0
for p in "${bench_pids[@]}"; do wait "$p" || status=1; done
bench_pids=()
for f in "$tmp"/shard-*.log; do
  if [[ $status != 0 ]] || grep -q '^bench:' "$f"; then
    echo "--- $f" >&2
    tail -5 "$f" >&2
  fi
done
if (( shards > 1 )); then
  "$tmp/bench" merge -json "$tmp"/shard-*.json >"$tmp/result.json" || status=1
  "$tmp/bench" merge "$tmp"/shard-*.json || true
else
  cp "$tmp/shard-0.json" "$tmp/result.json"
  "$tmp/bench" merge "$tmp/result.json" || true
fi
# One report: the bench's figures, the run's settings and the chaos events.
python3 - "$tmp/result.json" "$out/$name.json" "$events" "$nodes" "$conns" "$shards" "$chaos" "$gochat_flags" <<'PY'
import json, sys
src, dst, events, nodes, conns, shards, chaos, flags = sys.argv[1:]
d = json.load(open(src))
d["cluster"] = {"nodes": int(nodes), "conns": int(conns), "bench_processes": int(shards),
                "nats": "nats-server -js (kill -9 and restart: see events)" if chaos == "1" else "nats-server -js",
                "gochat_flags": flags, "events": [l.strip() for l in open(events) if l.strip()]}
json.dump(d, open(dst, "w"), indent=2)
l = d.get("latency_ms") or {}
t = d.get("tracking") or {}
print(f"{dst}: connected={d.get('connected')}/{d.get('conns')} sent={d.get('sent')} deliveries={d.get('deliveries')} "
      f"lost={d.get('lost')} disconnected={d.get('disconnected')} p50={l.get('p50')} p99={l.get('p99')} "
      + (f"missed_by_node={t.get('messages_missed_by_a_node')} counted={t.get('server_counted')} silent={t.get('silent')}" if t else ""))
for i, n in enumerate(d.get("nodes", [])):
    nl = n.get("latency_ms") or {}
    s = n.get("server", {})
    print(f"  node {i}: clients={n['clients']} receivers={n['receivers']} deliveries={n['deliveries']} lost={n['lost']} "
          f"disconnected={n['disconnected']} p99={nl.get('p99')} rss={s.get('rss_bytes', 0)/2**20:.0f}MiB cpu={s.get('cpu_seconds', 0):.2f}s "
          f"restarts={n.get('server_restarts', 0)} rejoined={n.get('rejoined', 0)} counters={n.get('cluster_counters')}")
PY
exit $status
