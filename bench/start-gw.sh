#!/usr/bin/env bash
# bench/start-gw.sh: GATEWAY_START for ../shared/bench (see its README, "Gateway contract").
# Starts ./passerelle in the foreground with a bare proxy listener on $PGW_PORT_PROXY forwarding
# everything to $PGW_UPSTREAM, keep-alive on both sides, access log off, and the rig's policy chain
# (bench/policies/bench_keyauth.lua: key auth over $PGW_KEYS_FILE, a fixed-window rate limit,
# X-Consumer and X-RateLimit-* headers) on $PGW_PORT_POLICY. Until TLS lands, $PGW_PORT_TLS is a
# plain bare-proxy listener (checked only for the gw-tls cases, which are not run yet).
set -euo pipefail
cd "$(dirname "$0")/.."
# PGW_BENCH_BARE=1: no policy anywhere (no Lua state at all), to measure what merely having
# policies on another route costs the bare proxy route (issue 5: at most 5 % instructions).
conf="$PGW_WORKDIR/bench.yaml"
budget=100ms
[ "${PGW_UNDER_VALGRIND:-0}" = 1 ] && budget=10s
keys=$(awk '{ printf "%s            \"%s\": \"%s\"\n", (NR==1 ? "\n" : ""), $1, $1 }' \
       "${PGW_KEYS_FILE:-/dev/null}")
cat > "$conf" <<YAML
listeners:
  - { name: proxy, address: "127.0.0.1:$PGW_PORT_PROXY" }
  - { name: policy, address: "127.0.0.1:$PGW_PORT_POLICY" }
  - { name: tls, address: "127.0.0.1:$PGW_PORT_TLS" }
workers: $PGW_WORKERS
control: { socket: "$PGW_WORKDIR/control.sock" }
limits: { max_connections: 100000 }
upstreams:
  origin: { targets: ["$PGW_UPSTREAM"], keepalive: 256, retries: 0 }
policies: { dir: bench/policies, budget: $budget }
routes:
  - { name: all, listeners: [proxy, tls], match: { path: / }, upstream: origin }
  - name: keyed
    listeners: [policy]
    match: { path: / }
    upstream: origin
    policies:
      - bench_keyauth:
          limit: ${PGW_RATE_LIMIT:-1000000000}
          window: ${PGW_RATE_WINDOW:-60}
          keys: $keys
access_log: off
error_log: { path: "$PGW_WORKDIR/error.log", level: warn }
YAML
if [ "${PGW_BENCH_BARE:-0}" = 1 ]; then
    sed -i -e '/^policies:/d' -e '/^  - name: keyed/,/^access_log/{/^access_log/!d}' "$conf"
fi
exec ./passerelle -c "$conf"
