"""The quick start stays true: examples/quickstart.yaml with examples/demo-upstream.py answers what
the README and `make run` promise (ports moved to free ones), including the WebSocket route /chat
(key_auth on the handshake, allowed origins, the chat_filter policy over the demo echo server),
and every example config passes `passerelle check`."""
import json
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

import wsfix
from gw import BINARY, REPO, Client, free_port

EXAMPLES = REPO / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(path):
    r = subprocess.run([str(BINARY), "check", "-c", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "is valid" in r.stdout


@pytest.fixture
def quickstart(tmp_path, make_gateway):
    public, internal, demo_port, tls_port = free_port(), free_port(), free_port(), free_port()
    ws_port = free_port()
    text = (EXAMPLES / "quickstart.yaml").read_text()
    for old, new in (("127.0.0.1:8080", "127.0.0.1:%d" % public),
                     ("127.0.0.1:9080", "127.0.0.1:%d" % internal),
                     ("127.0.0.1:8443", "127.0.0.1:%d" % tls_port),
                     ("127.0.0.1:9001", "127.0.0.1:%d" % demo_port),
                     ("127.0.0.1:9002", "127.0.0.1:%d" % ws_port),
                     ("logs/access.log", str(tmp_path / "access.log")),
                     ("store: { dir: data }", "store: { dir: %s }" % (tmp_path / "data")),
                     ('path: "-"', 'path: "%s"' % (tmp_path / "error.log"))):
        assert old in text, old
        text = text.replace(old, new)
    demo = subprocess.Popen(["/usr/bin/python3", str(EXAMPLES / "demo-upstream.py"),
                             str(demo_port), str(ws_port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                Client(demo_port, timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "demo upstream did not start"
                time.sleep(0.05)
        g = make_gateway(text)
        cfg = str(g.config_path)
        for args, stdin in ((["consumers", "add", "demo"], None),
                            (["keys", "import", "-"], "demo-key-0000000001 demo\n")):
            r = subprocess.run([str(BINARY)] + args + ["-c", cfg], input=stdin,
                               capture_output=True, text=True)
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        yield g, public, internal, tmp_path, tls_port
    finally:
        demo.terminate()
        demo.wait(5)


def get(port, target, method="GET", headers=""):
    with Client(port) as c:
        c.send(("%s %s HTTP/1.1\r\nHost: localhost\r\n%sConnection: close\r\n\r\n"
                % (method, target, headers)).encode())
        return c.read_response(method)


def get_tls(port, target, headers=""):
    """GET over TLS, verifying the demo certificate (examples/tls/) for localhost."""
    ctx = ssl.create_default_context(cafile=str(EXAMPLES / "tls" / "localhost.pem"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\n%sConnection: close\r\n\r\n"
                       % (target, headers)).encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:]}
    return int(lines[0].split()[1]), fields, body


def test_quickstart_promises(quickstart):
    g, public, internal, tmp, tls_port = quickstart
    r = get(public, "/api/users/42")
    assert r.status == 200, r
    first_id = r.header("x-request-id")
    seen = json.loads(r.body)
    assert seen["path"] == "/api/users/42"
    assert seen["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert seen["headers"]["X-Request-Id"] == r.header("x-request-id")
    assert "Connection" not in seen["headers"]

    r = get(public, "/api/v1/orders?x=1")
    assert r.status == 200 and json.loads(r.body)["path"] == "/orders", r
    assert json.loads(r.body)["query"] == "x=1"

    r = get(public, "//api/./x/../users/7")
    assert r.status == 200 and json.loads(r.body)["path"] == "/api/users/7", r

    assert get(public, "/api/users/42", "POST").status == 405
    assert get(public, "/api/users/42", "HEAD").status == 200
    assert get(public, "/nope").status == 404
    assert get(public, "/api/v1/a%2Fb").status == 400
    r = get(internal, "/healthz")
    assert r.status == 200 and json.loads(r.body) == {"status": "ok"}
    assert get(public, "/healthz").status == 404  # internal routes never leak to public

    # TLS: the same routes on the TLS listener; /api/private/ is https_only
    status, fields, body = get_tls(tls_port, "/api/users/42")
    assert status == 200 and json.loads(body)["headers"]["X-Forwarded-Proto"] == "https"
    r = get(public, "/api/private/x?a=1")
    assert r.status == 308, r
    assert r.header("location") == "https://localhost:%d/api/private/x?a=1" % tls_port, r

    # the demo_key policy (examples/policies/demo_key.lua) and a built-in one, over TLS
    status, fields, body = get_tls(tls_port, "/api/private/x")
    assert status == 401 and "ApiKey" in fields.get("www-authenticate", ""), (status, fields)
    assert get_tls(tls_port, "/api/private/x", "X-Api-Key: wrong\r\n")[0] == 403
    status, fields, body = get_tls(tls_port, "/api/private/x", "X-Api-Key: demo-key-1\r\n")
    assert status == 200, (status, body)
    seen = json.loads(body)["headers"]
    assert seen["X-Consumer"] == "alice" and "X-Api-Key" not in seen, seen
    assert fields["x-consumer"] == "alice" and fields["x-powered-by"] == "passerelle", fields

    # the built-in key_auth and an exact rate limit (5 per 10 s) on /api/orders/
    assert get(public, "/api/orders/1").status == 401
    key = "apikey: demo-key-0000000001\r\n"
    if time.time() % 10 > 8.5:  # stay inside one 10 s window
        time.sleep(10 - time.time() % 10 + 0.05)
    codes = [get(public, "/api/orders/1", headers=key).status for _ in range(7)]
    assert codes == [200] * 5 + [429] * 2, codes

    deadline = time.monotonic() + 5
    lines = []
    while len(lines) < 22 and time.monotonic() < deadline:
        time.sleep(0.2)
        p = Path(tmp / "access.log")
        lines = p.read_text().splitlines() if p.exists() else []
    assert len(lines) == 22, lines
    # several workers flush their lines independently: find the first request's line by its id
    entries = [json.loads(l) for l in lines]
    first = [e for e in entries if e["request_id"] == first_id]
    assert len(first) == 1, entries
    assert first[0]["route"] == "user" and first[0]["status"] == 200, first
    assert first[0]["listener"] == "public" and first[0]["path"] == "/api/users/42", first

    # the built-in jwt policy on /api/reports/ with the demo tokens of examples/jwt/
    def bearer(name):
        return "Authorization: Bearer %s\r\n" % (EXAMPLES / "jwt" / name).read_text().strip()
    r = get(public, "/api/reports/q1")
    assert r.status == 401 and r.header("www-authenticate") == 'Bearer realm="passerelle"', r
    r = get(public, "/api/reports/q1", headers=bearer("reader.token") + "X-Consumer: forged\r\n")
    assert r.status == 200, r
    seen = json.loads(r.body)["headers"]
    assert seen["X-Consumer"] == "demo" and seen["X-Scopes"] == "reports:read", seen
    r = get(public, "/api/reports/q1", headers=bearer("noscope.token"))
    assert r.status == 403 and 'error="insufficient_scope"' in r.header("www-authenticate"), r
    r = get(public, "/api/reports/q1", headers=bearer("expired.token"))
    assert r.status == 401 and 'error="invalid_token"' in r.header("www-authenticate"), r


def test_quickstart_websocket(quickstart):
    g, public, internal, tmp, tls_port = quickstart
    key = [("apikey", "demo-key-0000000001")]
    # key_auth runs on the handshake like on any request
    status, fields, _ = wsfix.handshake(public, "/chat")
    assert status == 401, (status, fields)
    assert dict((n.lower(), v) for n, v in fields)["www-authenticate"].startswith("ApiKey"), fields
    # an Origin not in allowed_origins: 403 before any policy; listed ones (any case) pass
    status, fields, _ = wsfix.handshake(public, "/chat", headers=key, origin="http://evil.example")
    assert status == 403, (status, fields)
    with wsfix.connect(public, "/chat", headers=key, origin="http://LOCALHOST:8080") as ws:
        ws.send_close(1000)
        ws.expect_close(1000)

    with wsfix.connect(public, "/chat", headers=key) as ws:  # no Origin: not a browser
        ws.send_text("hello")
        assert ws.recv_text() == "hello"             # echoed by the demo upstream
        ws.send_binary(b"\x00\xff")
        assert ws.recv_binary() == b"\x00\xff"
        ws.send_text("darn it, darning is hard")       # chat_filter masks whole words
        assert ws.recv_text() == "**** it, darning is hard"
        ws.send_text("ping")                           # answered by the gateway...
        assert ws.recv_text() == "pong"
        ws.send_text("after")                          # ...and never echoed
        assert ws.recv_text() == "after"
        ws.send_text('{"action":"whoami","n":1}')      # route selection: ws_forward to HTTP
        seen = json.loads(ws.recv_text())
        headers = {k.lower(): v for k, v in seen["headers"].items()}
        assert (seen["method"], seen["path"], seen["body_bytes"]) == ("POST", "/whoami", 25), seen
        assert headers["x-websocket-action"] == "whoami" and headers["x-consumer"] == "demo", seen
        assert re.fullmatch(r"[0-9a-f]{32}", headers["x-websocket-id"]), seen
        ws.send_text('{"action":"other"}')             # no such action: echoed as usual
        assert ws.recv_text() == '{"action":"other"}'
        ws.send_close(1000, "bye")
        ws.expect_close(1000)
