#!/usr/bin/env bash
# examples/run-quickstart.sh: what `make run` does. Starts the demo upstream (HTTP on 9001, a
# WebSocket echo on 9002: python3-websockets), then the gateway on examples/quickstart.yaml in the
# foreground; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
./passerelle check -c examples/quickstart.yaml
# the demo consumer and its key (kept in data/; both commands are harmless when they exist)
./passerelle consumers add demo -c examples/quickstart.yaml >/dev/null 2>&1 || true
echo "demo-key-0000000001 demo" | ./passerelle keys import - -c examples/quickstart.yaml \
    >/dev/null 2>&1 || true
/usr/bin/python3 examples/demo-upstream.py 9001 9002 &
demo=$!
trap 'kill $demo 2>/dev/null' EXIT INT TERM
cat <<'TXT'

passerelle is starting on 127.0.0.1:8080 (public), 127.0.0.1:8443 (public over TLS, with the demo
certificate of examples/tls/) and 127.0.0.1:9080 (internal). Try:

  curl -i http://127.0.0.1:8080/api/users/42          # proxied to the demo upstream
  curl -i http://127.0.0.1:8080/api/v1/orders?x=1     # the upstream sees /orders?x=1
  curl -i http://127.0.0.1:8080//api/./x/../users/7   # same route: the path is normalised
  curl -i -X POST http://127.0.0.1:8080/api/users/42  # 405: the route allows GET only
  curl -i http://127.0.0.1:8080/nope                  # 404: no route
  curl -i http://127.0.0.1:8080/api/v1/a%2Fb          # 400: encoded slash
  curl -i --cacert examples/tls/localhost.pem https://localhost:8443/api/users/42  # over TLS
  curl -i http://127.0.0.1:8080/api/private/x         # 308 to https: the route is https_only
  export TLS="--cacert examples/tls/localhost.pem https://localhost:8443"
  curl -i $TLS/api/private/x                          # 401: the demo_key policy wants a key
  curl -i -H 'X-Api-Key: nope' $TLS/api/private/x     # 403: unknown key
  curl -i -H 'X-Api-Key: demo-key-1' $TLS/api/private/x   # 200, X-Consumer: alice
  curl -i http://127.0.0.1:8080/api/orders/1          # 401: key_auth wants an apikey header
  curl -i -H 'apikey: demo-key-0000000001' http://127.0.0.1:8080/api/orders/1  # 200 (5 per 10 s)
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code} ' \
      -H 'apikey: demo-key-0000000001' http://127.0.0.1:8080/api/orders/1; done   # ... 429
  curl -i http://127.0.0.1:8080/api/reports/q1        # 401: the jwt policy wants a bearer token
  curl -i -H "Authorization: Bearer $(cat examples/jwt/reader.token)" \
      http://127.0.0.1:8080/api/reports/q1            # 200: verified RS256 token, X-Consumer: demo
  curl -i -H "Authorization: Bearer $(cat examples/jwt/noscope.token)" \
      http://127.0.0.1:8080/api/reports/q1            # 403: the token lacks the reports:read scope
  curl -i -H "Authorization: Bearer $(cat examples/jwt/expired.token)" \
      http://127.0.0.1:8080/api/reports/q1            # 401 invalid_token (the log says: expired)
  export WS="-H Connection:Upgrade -H Upgrade:websocket -H Sec-WebSocket-Version:13 -H Sec-WebSocket-Key:dGhlIHNhbXBsZSBub25jZQ=="
  curl -i $WS http://127.0.0.1:8080/chat              # 401: key_auth runs on the WebSocket handshake
  curl -i $WS -H 'apikey: demo-key-0000000001' -H 'Origin: https://evil.example' \
      http://127.0.0.1:8080/chat                      # 403: an Origin not in allowed_origins
  ./passerelle keys add --consumer demo -c examples/quickstart.yaml   # a new key, shown once
  curl -i http://127.0.0.1:9080/healthz               # liveness, internal listener only
  tail -f logs/access.log                             # one JSON line per request
  ./passerelle status -c examples/quickstart.yaml     # generation, workers, connections
  ./passerelle reload -c examples/quickstart.yaml     # after an edit: applied in place
  (saving a file in examples/policies/ reloads the policies by itself)

WebSocket messages on /chat, with the demo key (examples/policies/chat_filter.lua masks "darn" and
answers "ping" itself; `python3 -m websockets URL` cannot send the apikey header):

/usr/bin/python3 -c 'import asyncio, websockets
async def chat():
    ws = await websockets.connect("ws://127.0.0.1:8080/chat", extra_headers={"apikey": "demo-key-0000000001"})
    for m in ("hello", "darn it", "ping"): await ws.send(m); print(await ws.recv())
    await ws.close()
asyncio.run(chat())'     # hello, **** it, pong

TXT
./passerelle -c examples/quickstart.yaml
