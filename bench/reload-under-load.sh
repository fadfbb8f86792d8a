#!/usr/bin/env bash
# bench/reload-under-load.sh: three in-place reloads while wrk keeps 50 keep-alive connections
# busy; prints wrk's totals. Every answer must be a 200: wrk's "Non-2xx" and "Socket errors"
# lines must be absent. Loopback only; every process started here is stopped by PID on exit.
#   bench/reload-under-load.sh [DURATION_S=10] [WORKERS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
WORKERS=${2:-2}
command -v wrk >/dev/null && command -v nginx >/dev/null || {
    echo "needs wrk and nginx (apt-get install wrk nginx)" >&2
    exit 2
}
[ -x ./passerelle ] || make passerelle >/dev/null
dir=$(mktemp -d /tmp/pgw-reload.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port)
GW=$(free_port)
cat > "$dir/nginx.conf" <<EOF
daemon off; worker_processes 1; error_log $dir/nginx.err; pid $dir/nginx.pid;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } } }
EOF
nginx -c "$dir/nginx.conf" -p "$dir" &
pids+=($!)
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
./passerelle -c "$dir/gw.yaml" &
pids+=($!)
for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$GW/" >/dev/null 2>&1 && break
    sleep 0.1
done
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
