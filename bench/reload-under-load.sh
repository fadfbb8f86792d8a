#!/usr/bin/env bash
# bench/reload-under-load.sh: three in-place reloads while wrk keeps 50 keep-alive connections
# busy; prints wrk's totals. Every answer must be a 200: wrk's "Non-2xx" and "Socket errors"
# lines must be absent. Loopback only; every process started here is stopped by PID on exit.
#   bench/reload-under-load.sh [DURATION_S=10] [WORKERS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
WORKERS=${2:-2}
. bench/lib.sh
UP=$(free_port)
GW=$(free_port)
start_upstream "$UP"
write_conf() { # $1: route name, so that each generation differs
    cat > "$dir/gw.yaml" <<EOF
listeners: [ { name: public, address: "127.0.0.1:$GW" } ]
workers: $WORKERS
control: { socket: "$dir/ctl.sock" }
upstreams: { up: { targets: ["127.0.0.1:$UP"], keepalive: 64 } }
routes: [ { name: $1, listeners: [public], match: { path: / }, upstream: up } ]
access_log: off
error_log: { path: "$dir/error.log", level: notice }
EOF
}
write_conf gen1
start_gateway "$dir/gw.yaml" "http://127.0.0.1:$GW/"
wrk -t2 -c50 -d"${DURATION}s" "http://127.0.0.1:$GW/" > "$dir/wrk.out" &
wrk_pid=$!
pids+=($wrk_pid)
step=$((DURATION / 4))
for i in 2 3 4; do
    sleep "$step"
    write_conf "gen$i"
    ./passerelle reload -c "$dir/gw.yaml"
done
wait "$wrk_pid"
cat "$dir/wrk.out"
./passerelle status -c "$dir/gw.yaml"
grep -E "\[(warn|error)\]" "$dir/error.log" || echo "error log: no warning or error"
if grep -qE "Non-2xx|Socket errors" "$dir/wrk.out"; then
    echo "FAILED: some requests were not answered 200"
    exit 1
fi
echo "every request answered 200 across 3 reloads"
