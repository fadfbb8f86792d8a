#!/usr/bin/env bash
# bench/start-gw.sh: GATEWAY_START for ../shared/bench (see its README, "Gateway contract").
# Starts ./passerelle in the foreground with a bare proxy listener on $PGW_PORT_PROXY forwarding
# everything to $PGW_UPSTREAM, keep-alive on both sides, access log off. The rig waits for all three
# ports; until the policy engine and TLS land, $PGW_PORT_POLICY and $PGW_PORT_TLS are plain bare-proxy
# listeners (placeholders the rig only checks for the gw-lua / gw-tls cases, which are not run yet:
# CASES="nginx haproxy gw gw-close").
set -euo pipefail
cd "$(dirname "$0")/.."
conf="$PGW_WORKDIR/bench.yaml"
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
routes:
  - { name: all, listeners: [proxy, policy, tls], match: { path: / }, upstream: origin }
access_log: off
error_log: { path: "$PGW_WORKDIR/error.log", level: warn }
YAML
exec ./passerelle -c "$conf"
