# bench/lib.sh: what the loopback benchmark scripts share (sourced, not run). After sourcing:
# $dir is a fresh temporary directory, removed on exit with every process whose pid is in
# $pids; free_port prints a free port; start_upstream PORT runs nginx answering "ok" there;
# start_gateway CONF runs ./passerelle on CONF and waits until URL answers.
command -v wrk >/dev/null && command -v nginx >/dev/null || {
    echo "needs wrk and nginx (apt-get install wrk nginx)" >&2
    exit 2
}
[ -x ./passerelle ] || make passerelle >/dev/null
dir=$(mktemp -d /tmp/pgw-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_upstream() {
    cat > "$dir/nginx.conf" <<NGINX
daemon off; worker_processes 1; error_log $dir/nginx.err; pid $dir/nginx.pid;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$1; location / { return 200 "ok\n"; } } }
NGINX
    nginx -c "$dir/nginx.conf" -p "$dir" &
    pids+=($!)
}
start_gateway() { # $1: config file, $2: a URL that answers once it is up
    ./passerelle -c "$1" &
    pids+=($!)
    for _ in $(seq 50); do
        curl -sf "$2" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
}
