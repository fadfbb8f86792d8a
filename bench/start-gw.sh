#!/usr/bin/env bash
# bench/start-gw.sh: GATEWAY_START for ../shared/bench (see its README, "Gateway contract").
# Starts ./passerelle in the foreground with a bare proxy listener on $PGW_PORT_PROXY forwarding
# everything to $PGW_UPSTREAM, keep-alive on both sides, access log off, and the rig's policy chain
# on $PGW_PORT_POLICY: the built-in key_auth over the keys of $PGW_KEYS_FILE imported into the
# store (each key its own consumer: the rig expects X-Consumer to carry the key), then the built-in
# rate_limit (fixed window per consumer, exact across workers, counted in LMDB) with its headers.
# PGW_BENCH_CHAIN=lua runs bench/policies/bench_keyauth.lua instead (keys in the config, counters
# in the per-worker pgw.cache): the same work as the nginx-lua anchor's script. $PGW_PORT_TLS is the
# bare proxy behind TLS with the rig's certificate ($PGW_CERT, $PGW_KEY), as nginx-tls.
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
  - name: tls
    address: "127.0.0.1:$PGW_PORT_TLS"
    tls: { certificates: [ { cert: "$PGW_CERT", key: "$PGW_KEY" } ] }
workers: $PGW_WORKERS
control: { socket: "$PGW_WORKDIR/control.sock" }
limits: { max_connections: 100000 }
upstreams:
  origin: { targets: ["$PGW_UPSTREAM"], keepalive: 256, retries: 0 }
policies: { dir: bench/policies, budget: $budget }
store: { dir: "$PGW_WORKDIR/store" }
routes:
  - { name: all, listeners: [proxy, tls], match: { path: / }, upstream: origin }
  - name: keyed
    listeners: [policy]
    match: { path: / }
    upstream: origin
    policies:
$(if [ "${PGW_BENCH_CHAIN:-builtin}" = lua ]; then cat <<CHAIN
      - bench_keyauth:
          limit: ${PGW_RATE_LIMIT:-1000000000}
          window: ${PGW_RATE_WINDOW:-60}
          keys: $keys
CHAIN
else cat <<CHAIN
      - key_auth: { header: apikey, headers: { consumer: X-Consumer } }
      - rate_limit: { by: consumer, limit: ${PGW_RATE_LIMIT:-1000000000}, window: ${PGW_RATE_WINDOW:-60} }
CHAIN
fi)
access_log: off
error_log: { path: "$PGW_WORKDIR/error.log", level: warn }
YAML
if [ "${PGW_BENCH_BARE:-0}" = 1 ]; then
    sed -i -e '/^policies:/d' -e '/^store:/d' -e '/^  - name: keyed/,/^access_log/{/^access_log/!d}' "$conf"
else
    awk '{ print $1, $1 }' "${PGW_KEYS_FILE:-/dev/null}" > "$PGW_WORKDIR/keys.txt"
    ./passerelle keys import "$PGW_WORKDIR/keys.txt" --create-consumers -c "$conf" >/dev/null
fi
exec ./passerelle -c "$conf"
