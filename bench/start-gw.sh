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
# PGW_BENCH_JWT=1 adds four listeners, from $PGW_PORT_JWT (default $PGW_PORT_POLICY + 10), each the
# policy chain with the built-in jwt policy in place of key_auth (same rate_limit and headers; the
# token's `sub`, key-0042, is the consumer and goes upstream as X-Consumer): +0 RS256 (RSA 2048),
# +1 ES256 (P-256), both with the provider's verified-token cache (default size), +2 RS256 and
# +3 ES256 with `cache: 0` (every request verified). Keys and tokens (11 claims, exp ten years
# ahead) are minted at each start with /usr/bin/python3 (python3-jwt), or copied from
# $PGW_BENCH_JWT_KEYS (see --mint-jwt below); the tokens are left in
# $PGW_WORKDIR/jwt-rs.token and jwt-es.token for the load client (`Authorization: Bearer <token>`).
# The shared rig has no case for these ports: `bench/jwt-verify.sh rig` runs it with them.
set -euo pipefail
cd "$(dirname "$0")/.."
# mint_jwt DIR: an RSA 2048 and a P-256 key pair, DIR/jwt-{rs,es}.pub.pem and a token signed by each,
# DIR/jwt-{rs,es}.token (RS256, ES256; kid bench-rs / bench-es; sub key-0042; exp ten years ahead).
mint_jwt() {
    /usr/bin/python3 - "$1" <<'PY'
import sys, time, jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
d, now = sys.argv[1], int(time.time())
claims = {"iss": "https://idp.example.com/", "sub": "key-0042", "aud": "orders-api",
          "exp": now + 10 * 365 * 86400, "nbf": now - 60, "iat": now - 60,
          "jti": "5f0c8a0e-6c1f-4b7e-9a55-3f1d2b9c7e41", "scope": "orders:read orders:write profile email",
          "client_id": "mobile-app-ios", "email": "jane.doe@example.com", "name": "Jane Doe"}
for name, alg, key in (("rs", "RS256", rsa.generate_private_key(65537, 2048)),
                       ("es", "ES256", ec.generate_private_key(ec.SECP256R1()))):
    with open(f"{d}/jwt-{name}.pub.pem", "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    tok = jwt.encode(claims, key, algorithm=alg, headers={"kid": f"bench-{name}", "typ": "JWT"})
    with open(f"{d}/jwt-{name}.token", "w") as f:
        f.write(tok)
PY
    chmod a+r "$1"/jwt-*.token "$1"/jwt-*.pub.pem
}
# `bench/start-gw.sh --mint-jwt DIR` mints once (for PGW_BENCH_JWT_KEYS=DIR: the gateway then copies
# these files instead of minting at each start, e.g. under icount.sh, whose start-up counts must not
# vary with a random RSA key search).
if [ "${1:-}" = --mint-jwt ]; then
    mint_jwt "${2:?usage: start-gw.sh --mint-jwt DIR}"
    exit 0
fi
# PGW_BENCH_BARE=1: no policy anywhere (no Lua state at all), to measure what merely having
# policies on another route costs the bare proxy route (issue 5: at most 5 % instructions).
conf="$PGW_WORKDIR/bench.yaml"
budget=100ms
[ "${PGW_UNDER_VALGRIND:-0}" = 1 ] && budget=10s
jwt_listeners="" jwt_section="" jwt_routes=""
if [ "${PGW_BENCH_JWT:-0}" = 1 ]; then
    [ "${PGW_BENCH_BARE:-0}" = 1 ] && { echo "start-gw.sh: PGW_BENCH_JWT and PGW_BENCH_BARE exclude each other" >&2; exit 2; }
    jport=${PGW_PORT_JWT:-$((PGW_PORT_POLICY + 10))}
    if [ -n "${PGW_BENCH_JWT_KEYS:-}" ]; then
        cp "$PGW_BENCH_JWT_KEYS"/jwt-rs.pub.pem "$PGW_BENCH_JWT_KEYS"/jwt-rs.token \
           "$PGW_BENCH_JWT_KEYS"/jwt-es.pub.pem "$PGW_BENCH_JWT_KEYS"/jwt-es.token "$PGW_WORKDIR/"
    else
        mint_jwt "$PGW_WORKDIR"
    fi
    i=0
    for v in rs es rs_nocache es_nocache; do
        alg=RS256 cache=""
        case $v in es*) alg=ES256 ;; esac
        case $v in *_nocache) cache="      cache: 0
" ;; esac
        jwt_listeners="$jwt_listeners
  - { name: jwt_$v, address: \"127.0.0.1:$((jport + i))\" }"
        # routes and providers: whole lines, put in front of access_log (nothing when unset)
        jwt_routes="$jwt_routes  - name: jwt_$v
    listeners: [jwt_$v]
    match: { path: / }
    upstream: origin
    policies:
      - jwt: { provider: bench_$v }
      - rate_limit: { by: consumer, limit: ${PGW_RATE_LIMIT:-1000000000}, window: ${PGW_RATE_WINDOW:-60} }
"
        jwt_section="$jwt_section    bench_$v:
      issuer: \"https://idp.example.com/\"
      audiences: [orders-api]
      keys: [ { kid: bench-${v%%_*}, alg: $alg, file: \"$PGW_WORKDIR/jwt-${v%%_*}.pub.pem\" } ]
$cache"
        i=$((i + 1))
    done
    jwt_section="jwt:
  providers:
$jwt_section"
fi
keys=$(awk '{ printf "%s            \"%s\": \"%s\"\n", (NR==1 ? "\n" : ""), $1, $1 }' \
       "${PGW_KEYS_FILE:-/dev/null}")
cat > "$conf" <<YAML
listeners:
  - { name: proxy, address: "127.0.0.1:$PGW_PORT_PROXY" }
  - { name: policy, address: "127.0.0.1:$PGW_PORT_POLICY" }
  - name: tls
    address: "127.0.0.1:$PGW_PORT_TLS"
    tls: { certificates: [ { cert: "$PGW_CERT", key: "$PGW_KEY" } ] }$jwt_listeners
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

$jwt_routes${jwt_section}access_log: off
error_log: { path: "$PGW_WORKDIR/error.log", level: warn }
YAML
if [ "${PGW_BENCH_BARE:-0}" = 1 ]; then
    sed -i -e '/^policies:/d' -e '/^store:/d' -e '/^  - name: keyed/,/^access_log/{/^access_log/!d}' "$conf"
else
    awk '{ print $1, $1 }' "${PGW_KEYS_FILE:-/dev/null}" > "$PGW_WORKDIR/keys.txt"
    ./passerelle keys import "$PGW_WORKDIR/keys.txt" --create-consumers -c "$conf" >/dev/null
fi
exec ./passerelle -c "$conf"
