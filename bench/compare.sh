#!/usr/bin/env bash
# Measures gochat against the same chat protocol served by the original
# goroutine-per-connection gorilla/websocket hub, lxzan/gws and lesismal/nbio
# (bench/peers, a nested Go module), with this repository's bench harness,
# one server at a time, each freshly started on a free loopback port.
#
#   bash bench/compare.sh                  # full run (~11 minutes) -> bench/out/compare-<UTC time>/
#   bash bench/compare.sh -quick           # smoke run: fewer points, shorter (~4 minutes)
#   bash bench/compare.sh -results         # write bench/results/compare.{json,md} and compare-*.svg instead
#   bash bench/compare.sh -servers "gochat nbio"   # a subset
#
# COMPARE_RESULTS=1 is the same as -results; COMPARE_NOTE="..." adds a note
# to the table and compare.json. Scenarios (every run on a fresh server):
#   idle       1k/5k/10k/19k joined clients, notices off, held 10 s: RSS per connection
#   broadcast  2,000 clients, 20 senders at 1/5/10/20 msg/s = 40k/200k/400k/800k
#              deliveries/s offered (senders x rate x clients), 8 s, notices off
#   storm      2,000 clients joining at once with notices on
#   slow       2,000 clients, 20 of them never read, 20 senders x 2 msg/s of 1000 B
# gochat runs with -rate 1000 -burst 1000 so its per-client rate limit never
# shapes the load; the peers have no rate limit.
#
# A run fails loudly (exit 1, FAILED in the table) when the bench exits
# non-zero, connects fewer clients than requested, sees protocol errors, or
# the server dies. The script refuses to benchmark a server it did not
# start: the port must be free before the start, and afterwards every
# listener on it must belong to the pid it started.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
quick=0
results=${COMPARE_RESULTS:-0}
only="gochat gorilla gws nbio"
while [[ $# -gt 0 ]]; do
  case $1 in
    -quick | --quick) quick=1 ;;
    -results | --results) results=1 ;;
    -servers | --servers) only=$2; shift ;;
    -h | -help | --help) usage; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for s in $only; do
  case $s in gochat | gorilla | gws | nbio) ;; *) echo "compare.sh: unknown server $s" >&2; exit 2 ;; esac
done

if ((quick)); then
  idle_conns="1000 10000"; hold=3s
  rates="1 10 20"; duration=3s
  slow_duration=3s; settle=2
else
  idle_conns="1000 5000 10000 19000"; hold=10s
  rates="1 5 10 20"; duration=8s
  slow_duration=8s; settle=3
fi
clients=2000 senders=20

if ((results)); then
  out=bench/results
else
  out=bench/out/compare-$(date -u +%Y%m%dT%H%M%SZ)
fi

tmp=$(mktemp -d -t gochat-compare.XXXXXX)
server_pid=
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== building into $tmp"
go build -o "$tmp/gochat" .
go build -o "$tmp/bench" ./bench
(
  cd bench/peers
  for p in gorilla gws nbio; do go build -o "$tmp/peer-$p" "./cmd/$p"; done
  go build -o "$tmp/plot" ./cmd/plot
)
mkdir -p "$tmp/raw"
runs=$tmp/runs.tsv
: >"$runs"
failures=0

# listeners PORT prints the socket inodes listening on 127.0.0.1/any:PORT.
listeners() {
  local hex
  hex=$(printf '%04X' "$1")
  awk -v h=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == h { print $10 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# port_free PORT: nothing listens there and nothing answers.
port_free() {
  [[ -z $(listeners "$1") ]] || return 1
  local rc=0
  curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" || rc=$?
  [[ $rc == 7 ]] # 7: could not connect
}

pick_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 10000)) # below the ephemeral range (32768+) the bench's clients use
    if port_free "$p"; then echo "$p"; return; fi
  done
  echo "compare.sh: no free port found" >&2
  exit 1
}

# owns PID PORT: every listener on PORT is a socket of PID.
owns() {
  local ino found=0
  for ino in $(listeners "$2"); do
    if ls -l "/proc/$1/fd" 2>/dev/null | grep -q "socket:\[$ino\]"; then
      found=1
    else
      return 1
    fi
  done
  ((found))
}

# start_server NAME PRESENCE: starts a fresh server on a free port and
# checks that the port is answered by it.
start_server() {
  local name=$1 presence=$2
  port=$(pick_port)
  local cmd
  case $name in
    gochat) cmd=("$tmp/gochat" -addr "127.0.0.1:$port" -log-level warn -presence="$presence" -rate 1000 -burst 1000) ;;
    *) cmd=("$tmp/peer-$name" -addr "127.0.0.1:$port" -presence="$presence") ;;
  esac
  "${cmd[@]}" >>"$tmp/server-$name.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 200); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "compare.sh: $name exited at start:" >&2
      tail -5 "$tmp/server-$name.log" >&2
      exit 1
    fi
    if curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz"; then
      if ! owns "$server_pid" "$port"; then
        echo "compare.sh: port $port is not (only) served by the $name we started (pid $server_pid): refusing to benchmark it" >&2
        exit 1
      fi
      return
    fi
    sleep 0.05
  done
  echo "compare.sh: $name did not answer /healthz on port $port" >&2
  exit 1
}

stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
  # Let the kernel finish closing the last run's sockets before the next
  # server starts (a run right after 10k closes measured seconds of p99).
  sleep "$settle"
}

field() { grep -m1 "^  \"$1\":" "$2" | tr -dc 0-9; }

# measure NAME SCENARIO X PRESENCE BENCH-FLAGS...
measure() {
  local name=$1 scenario=$2 x=$3 presence=$4
  shift 4
  start_server "$name" "$presence"
  local f=$tmp/raw/$name-$scenario-$x.json metrics=()
  [[ $name == gochat ]] || metrics=(-metrics none)
  local rc=0
  timeout 600 "$tmp/bench" "$scenario" -url "ws://127.0.0.1:$port/ws" -pid "$server_pid" -json "${metrics[@]}" "$@" \
    >"$f" 2>"$f.log" || rc=$?
  local why=()
  kill -0 "$server_pid" 2>/dev/null || why+=("server died during the run")
  stop_server
  local conns connected
  conns=$(field conns "$f" || true)
  connected=$(field connected "$f" || true)
  ((rc == 0)) || why+=("bench exited $rc: $(tail -1 "$f.log" | tr '\t\r' '  ' | cut -c1-200)")
  [[ -n $conns && $conns == "$connected" ]] || why+=("connected ${connected:-?} of ${conns:-?} clients")
  local note=-
  if ((${#why[@]})); then
    note=$(IFS=';'; echo "${why[*]}")
    failures=$((failures + 1))
    echo "FAILED: $name $scenario $x: $note" >&2
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$scenario" "$x" "$f" "$rc" "$note" >>"$runs"
  printf '  %-8s %-9s %-7s rc=%s connected=%s/%s\n' "$name" "$scenario" "$x" "$rc" "${connected:-?}" "${conns:-?}"
}

start=$(date +%s)
for name in $only; do
  echo "== $name"
  for n in $idle_conns; do
    measure "$name" idle "$n" false -conns "$n" -hold "$hold"
  done
  for r in $rates; do
    measure "$name" broadcast $((senders * r * clients)) false \
      -conns $clients -senders $senders -rate "$r" -duration "$duration"
  done
  measure "$name" storm $clients true -conns $clients
  measure "$name" slow $clients false -conns $clients -senders $senders -rate 2 -slow 20 -duration "$slow_duration"
done
echo "== $(($(date +%s) - start)) s of runs; writing $out"

qflag=()
((quick)) && qflag=(-quick)
prc=0
"$tmp/plot" -runs "$runs" -out "$out" "${qflag[@]}" -note "${COMPARE_NOTE:-}" || prc=$?
echo "wrote $out/compare.json, $out/compare.md, $out/compare-{latency,cpu,rss}.svg"
if ((failures > 0 || prc != 0)); then
  echo "compare.sh: $failures run(s) did not measure what they claim (see FAILED above)" >&2
  exit 1
fi
