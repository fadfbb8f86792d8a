#!/usr/bin/env bash
# examples/run-quickstart.sh: what `make run` does. Starts the demo upstream, then the gateway on
# examples/quickstart.yaml in the foreground; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
./passerelle check -c examples/quickstart.yaml
/usr/bin/python3 examples/demo-upstream.py 9001 &
demo=$!
trap 'kill $demo 2>/dev/null' EXIT INT TERM
cat <<'TXT'

passerelle is starting on 127.0.0.1:8080 (public) and 127.0.0.1:9080 (internal). Try:

  curl -i http://127.0.0.1:8080/api/users/42          # proxied to the demo upstream
  curl -i http://127.0.0.1:8080/api/v1/orders?x=1     # the upstream sees /orders?x=1
  curl -i http://127.0.0.1:8080//api/./x/../users/7   # same route: the path is normalised
  curl -i -X POST http://127.0.0.1:8080/api/users/42  # 405: the route allows GET only
  curl -i http://127.0.0.1:8080/nope                  # 404: no route
  curl -i http://127.0.0.1:8080/api/v1/a%2Fb          # 400: encoded slash
  curl -i http://127.0.0.1:8080/api/private/x         # 401: the demo_key policy wants a key
  curl -i -H 'X-Api-Key: nope' http://127.0.0.1:8080/api/private/x        # 403: unknown key
  curl -i -H 'X-Api-Key: demo-key-1' http://127.0.0.1:8080/api/private/x  # 200, X-Consumer: alice
  curl -i http://127.0.0.1:9080/healthz               # liveness, internal listener only
  tail -f logs/access.log                             # one JSON line per request
  ./passerelle status -c examples/quickstart.yaml     # generation, workers, connections
  ./passerelle reload -c examples/quickstart.yaml     # after an edit: applied in place
  (saving a file in examples/policies/ reloads the policies by itself)

TXT
./passerelle -c examples/quickstart.yaml
