#!/usr/bin/env bash
# bench/runaway-loop.sh: the cost of a runaway policy for everybody else. One route runs a policy
# whose access stage is `while true do end`; another route has no policy. wrk measures the
# latency of the healthy route twice, without and then with a client that keeps calling the
# looping route (one request at a time). Prints wrk's latency distribution for both runs and the
# looping client's count of 500 answers. Loopback only; every process is stopped by PID on exit.
#   bench/runaway-loop.sh [DURATION_S=10] [WORKERS=1] [BUDGET=100ms]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
WORKERS=${2:-1}
BUDGET=${3:-100ms}
. bench/lib.sh
UP=$(free_port)
GW=$(free_port)
start_upstream "$UP"
mkdir -p "$dir/policies"
cat > "$dir/policies/spin.lua" <<'EOF'
return { access = function() while true do end end }
EOF
cat > "$dir/gw.yaml" <<EOF
listeners: [ { name: public, address: "127.0.0.1:$GW" } ]
workers: $WORKERS
control: { socket: "$dir/ctl.sock" }
policies: { dir: "$dir/policies", budget: $BUDGET }
upstreams: { up: { targets: ["127.0.0.1:$UP"], keepalive: 64 } }
routes:
  - { name: loop, listeners: [public], match: { path: /loop }, upstream: up, policies: [spin] }
  - { name: ok, listeners: [public], match: { path: / }, upstream: up }
access_log: off
error_log: { path: "$dir/error.log", level: warn }
EOF
start_gateway "$dir/gw.yaml" "http://127.0.0.1:$GW/"
echo "== healthy route alone (wrk -t1 -c20 -d${DURATION}s)"
wrk -t1 -c20 -d"${DURATION}s" --latency "http://127.0.0.1:$GW/" | sed -n '/Latency Distribution/,/Requests\/sec/p'
( end=$((SECONDS + DURATION + 1)); n=0; e=0
  while [ $SECONDS -lt $end ]; do
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$GW/loop" || true)
      n=$((n + 1)); [ "$code" = 500 ] && e=$((e + 1))
  done
  echo "looping route: $n requests, $e answered 500" > "$dir/loop.txt" ) &
pids+=($!)
sleep 0.5
echo "== healthy route while /loop spins (budget $BUDGET, $WORKERS worker(s))"
wrk -t1 -c20 -d"${DURATION}s" --latency "http://127.0.0.1:$GW/" | sed -n '/Latency Distribution/,/Requests\/sec/p'
wait "${pids[-1]}" || true
cat "$dir/loop.txt"
echo "budget errors logged: $(grep -c 'exceeded its CPU budget' "$dir/error.log" || true)"
