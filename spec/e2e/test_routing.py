"""Routing: routes belong to the listeners they name; exact > template > prefix, longest first;
host matching (exact, wildcard, port ignored, absolute-form targets route by their authority);
methods (405 when only the method differs); 404 when nothing matches; the path is normalised
before matching and the upstream receives the normalised path; %2F %5C %00 are 400; strip_prefix;
preserve_host; a `type: status` route answers without an upstream; the client address from a
trusted proxy (X-Forwarded-For, PROXY protocol v1/v2) and not from an untrusted one.

Every route of the module gateway has its own stub upstream named after it, so the X-Stub field of
the answer tells which route was chosen, and that stub's last request what the upstream received.
"""
import json
import socket
import struct
import time

import pytest

from cases import Case, SMUGGLED, run_case
from gw import Client, build_request, config, listener
from harness import module_env
from httpio import Closed, Timeout
from stubs import Upstream

# route name -> (listeners, match, extra route keys)
ROUTES = {
    "internal_api": (["internal"], {"path": "/internal/"}, {}),
    "both": (["public", "internal"], {"path": "/both/"}, {}),
    "users_me": (["public"], {"path": "/users/me"}, {}),
    "user": (["public"], {"path": "/users/{id}"}, {}),
    "users": (["public"], {"path": "/users/"}, {}),
    "static": (["public"], {"path": "/static/"}, {}),
    "static_img": (["public"], {"path": "/static/img/"}, {}),
    "host_exact": (["public"], {"host": "api.example.com", "path": "/h/"}, {}),
    "host_wild": (["public"], {"host": "*.example.org", "path": "/h/"}, {}),
    "host_any": (["public"], {"path": "/h/"}, {}),
    "ro": (["public"], {"path": "/ro/", "methods": ["GET", "HEAD"]}, {}),
    "m_get": (["public"], {"path": "/m/", "methods": ["GET"]}, {}),
    "m_post": (["public"], {"path": "/m/", "methods": ["POST"]}, {}),
    "admin": (["public"], {"path": "/admin"}, {}),
    "api": (["public"], {"path": "/api/"}, {"strip_prefix": True}),
    "keep": (["public"], {"path": "/keep/"}, {"preserve_host": True}),
}


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    def build():
        stubs = {name: Upstream(name) for name in ROUTES}
        ups = {name: {"targets": [s.address], "connect_timeout": "300ms", "read_timeout": "3s",
                      "retries": 0} for name, s in stubs.items()}
        routes = []
        for name, (lst, match, extra) in ROUTES.items():
            r = {"name": name, "listeners": lst, "match": match, "upstream": name}
            r.update(extra)
            routes.append(r)
        routes.append({"name": "health", "type": "status", "listeners": ["internal"],
                       "match": {"path": "/healthz"}})
        cfg = config(listeners=[listener("public"), listener("internal")],
                     timeouts={"header": "2s", "body": "2s", "keepalive": "3s", "send": "2s"},
                     upstreams=ups, routes=routes)
        return cfg, stubs
    return module_env(request, tmp_path_factory, build)


def snap_all(env):
    return {n: s.snapshot() for n, s in env.stubs.items()}


def received_since(env, snaps):
    """{stub name: [requests]} for every stub that got something after <snaps>."""
    out = {}
    for n, s in env.stubs.items():
        reqs, partial, raw = s.since(snaps[n])
        if raw:
            out[n] = reqs + partial
    return out


def send(env, data, listener_name="public", method="GET"):
    """Sends raw <data> on a fresh connection to <listener_name>; returns (response, {stub:
    [requests it received]})."""
    snaps = snap_all(env)
    with Client(env.gw.ports[listener_name]) as c:
        c.send(data)
        r = c.read_response(method)
    time.sleep(0.02)
    return r, received_since(env, snaps)


def routed(env, target, expected_route, host="test", method="GET", listener_name="public",
           headers=None):
    """Asserts that <target> reaches the stub of <expected_route> alone, exactly once; returns
    (response, the request the stub received)."""
    r, got = send(env, build_request(method, target, headers=headers, host=host),
                  listener_name, method)
    assert r.status == 200, "%s %s (Host %s) on %s: %r" % (method, target, host,
                                                          listener_name, r)
    assert r.header("x-stub") == expected_route, "%s %s (Host %s) went to %s, want %s" % (
        method, target, host, r.header("x-stub"), expected_route)
    assert list(got) == [expected_route] and len(got[expected_route]) == 1, got
    return r, got[expected_route][0]


def refused(env, target, status, host="test", method="GET", listener_name="public"):
    r, got = send(env, build_request(method, target, host=host), listener_name, method)
    assert r.status == status, "%s %s (Host %s) on %s: %r, want %d" % (
        method, target, host, listener_name, r, status)
    assert got == {}, "an upstream received something: %r" % got
    return r


# ---- listeners ----

def test_internal_route_not_on_public(env):
    routed(env, "/internal/x", "internal_api", listener_name="internal")
    refused(env, "/internal/x", 404, listener_name="public")


def test_route_on_both_listeners(env):
    routed(env, "/both/x", "both", listener_name="public")
    routed(env, "/both/x", "both", listener_name="internal")


def test_public_route_not_on_internal(env):
    routed(env, "/admin", "admin", listener_name="public")
    refused(env, "/admin", 404, listener_name="internal")


def test_status_route(env):
    snaps = snap_all(env)
    with Client(env.gw.ports["internal"]) as c:
        for _ in range(2):
            c.request("GET", "/healthz")
            r = c.read_response()
            assert r.status == 200, r
            assert (r.header("content-type") or "").startswith("application/json"), r.headers
            json.loads(r.body)
            assert not r.has_close(), r
        c.request("HEAD", "/healthz")
        h = c.read_response("HEAD")
        assert h.status == 200 and h.body == b"", h
    assert received_since(env, snaps) == {}, "a status route used an upstream"
    refused(env, "/healthz", 404, listener_name="public")


# ---- precedence ----

PRECEDENCE = [
    ("/users/me", "users_me"),          # exact beats template and prefix
    ("/users/42", "user"),              # template beats prefix
    ("/users/mee", "user"),
    ("/users/me/x", "users"),           # two segments: only the prefix matches
    ("/users/42/posts", "users"),
    ("/users/", "users"),               # {id} needs a non-empty segment
    ("/static/img/a.png", "static_img"),  # the longer prefix first
    ("/static/img/", "static_img"),
    ("/static/css/a.css", "static"),
    ("/static/imgx", "static"),         # prefixes end at a segment boundary
]


@pytest.mark.parametrize("target,route", PRECEDENCE, ids=[t for t, _ in PRECEDENCE])
def test_precedence(env, target, route):
    for _ in range(2):
        _, req = routed(env, target, route)
        assert req.target == target, req


# ---- hosts ----

HOSTS = [
    ("api.example.com", "host_exact"),
    ("API.Example.COM", "host_exact"),       # case-insensitive
    ("api.example.com:8080", "host_exact"),  # the port does not count
    ("foo.example.org", "host_wild"),
    ("FOO.example.org:81", "host_wild"),
    ("example.org", "host_any"),             # *.example.org needs a label before it
    ("xapi.example.com", "host_any"),
    ("api.example.com.evil.test", "host_any"),
    ("other.test", "host_any"),
]


@pytest.mark.parametrize("host,route", HOSTS, ids=[h for h, _ in HOSTS])
def test_host_matching(env, host, route):
    routed(env, "/h/x", route, host=host)


@pytest.mark.parametrize("target,route", [
    ("http://api.example.com/h/abs?q=1", "host_exact"),
    ("http://api.example.com:8080/h/abs?q=1", "host_exact"),
    ("http://foo.example.org/h/abs?q=1", "host_wild"),
], ids=["exact", "exact_port", "wildcard"])
def test_absolute_form_routes_by_authority(env, target, route):
    # The Host field says something else: the authority of the target wins.
    r, got = send(env, b"GET " + target.encode() + b" HTTP/1.1\r\nHost: other.test\r\n\r\n")
    assert r.status == 200 and r.header("x-stub") == route, r
    req = got[route][0]
    assert req.raw.startswith(b"GET /h/abs?q=1 HTTP/1.1\r\n"), req.raw[:80]
    assert req.header("host") == env.stubs[route].address, req.headers


# ---- methods ----

def test_methods(env):
    routed(env, "/ro/x", "ro")
    routed(env, "/ro/x", "ro", method="HEAD")
    refused(env, "/ro/x", 405, method="POST")
    refused(env, "/ro/x", 405, method="DELETE")
    routed(env, "/m/x", "m_get")
    routed(env, "/m/x", "m_post", method="POST")
    refused(env, "/m/x", 405, method="PUT")


@pytest.mark.parametrize("target", ["/nothing", "/", "/userss", "/stat", "/ADMIN", "/admin/x",
                                    "/internal/x"])
def test_no_match_404(env, target):
    refused(env, target, 404)


@pytest.mark.parametrize("target,method,status", [("/nothing", "GET", 404),
                                                   ("/ro/x", "POST", 405)])
def test_routing_miss_closes_and_ignores_pipelined_bytes(env, target, method, status):
    """Every 4xx the gateway makes ends the connection: nothing pipelined behind it is read."""
    snaps = snap_all(env)
    with Client(env.gw.ports["public"]) as c:
        c.send(build_request(method, target, host="test") + b"GET /both/x HTTP/1.1\r\nHost: t\r\n\r\n")
        r = c.read_response(method)
        assert r.status == status, r
        assert r.has_close(), r
        assert c.wait_closed(2.0), "connection still open after %d" % status
    time.sleep(0.05)
    assert received_since(env, snaps) == {}


# ---- normalisation ----

NORMALISED = ["/admin", "//admin", "/./admin", "/x/../admin", "/%61dmin", "/%61%64%6d%69%6e",
              "/x/y/../../admin", "/../admin", "/.//./admin"]


@pytest.mark.parametrize("target", NORMALISED)
def test_normalised_paths_reach_the_same_route(env, target):
    for _ in range(2):
        _, req = routed(env, target, "admin")
        assert req.target == "/admin", "the upstream received %r" % req.target
        assert req.raw.startswith(b"GET /admin HTTP/1.1\r\n"), req.raw[:60]


BAD_PATHS = ["/admin%2Fx", "/%2Fadmin", "/x%2f..%2fadmin", "/ad%5Cmin", "/admin%5c", "/admin%00",
             "/%00/admin"]


@pytest.mark.parametrize("target", BAD_PATHS)
def test_encoded_slash_backslash_nul_rejected(env, target):
    snaps = snap_all(env)
    run_case(env.gw, env.stubs["admin"], Case(
        target, build_request("GET", target) + SMUGGLED, 400, close=True))
    assert received_since(env, snaps) == {}, "an upstream received something"


# ---- what the upstream receives ----

@pytest.mark.parametrize("target,forwarded", [
    ("/api/users/1?x=1", "/users/1?x=1"),
    ("/api/", "/"),
    ("/api/v1//a/../b", "/v1/b"),
    ("/api/%61bc", "/abc"),
])
def test_strip_prefix(env, target, forwarded):
    _, req = routed(env, target, "api")
    assert req.target == forwarded, "upstream received %r, want %r" % (req.target, forwarded)


def test_preserve_host_false_sends_target_address(env):
    _, req = routed(env, "/api/x", "api", host="Front.Example:8443")
    assert req.headers_all("host") == [env.stubs["api"].address], req.headers


def test_preserve_host_true_keeps_client_host(env):
    _, req = routed(env, "/keep/x", "keep", host="Front.Example:8443")
    assert req.headers_all("host") == ["Front.Example:8443"], req.headers


# ---- the client address: real_ip ----

def _real_ip_gateway(make_gateway, make_stub, real_ip):
    up = make_stub("echo")
    g = make_gateway(config(
        listeners=[listener("public")], real_ip=real_ip,
        timeouts={"header": "2s", "body": "2s", "keepalive": "3s", "send": "2s"},
        upstreams={"echo": {"targets": [up.address], "connect_timeout": "300ms",
                            "read_timeout": "3s", "retries": 0}},
        routes=[{"name": "all", "listeners": ["public"], "match": {"path": "/"},
                 "upstream": "echo"}]))
    return g, up


def _xff(req):
    return [a.strip() for v in req.headers_all("x-forwarded-for") for a in v.split(",")]


def _exchange(g, up, data, n=1):
    snap = up.snapshot()
    with Client(g.port) as c:
        c.send(data)
        resps = [c.read_response() for _ in range(n)]
    reqs = up.wait_requests(n, 2.0, snap)
    return resps, reqs


def test_xff_from_trusted_peer(make_gateway, make_stub):
    g, up = _real_ip_gateway(make_gateway, make_stub,
                             {"trusted": ["127.0.0.0/8"], "from": "x-forwarded-for"})
    (r1,), (q1,) = _exchange(g, up, build_request("GET", "/a", headers=[
        ("X-Forwarded-For", "203.0.113.7")]))
    (r2,), (q2,) = _exchange(g, up, build_request("GET", "/b", headers=[
        ("X-Forwarded-For", "198.51.100.9, 203.0.113.7")]))
    (r3,), (q3,) = _exchange(g, up, build_request("GET", "/c"))
    assert r1.status == r2.status == r3.status == 200
    # the chain is kept and the peer appended, as by any proxy
    assert _xff(q1) == ["203.0.113.7", "127.0.0.1"], q1.headers
    assert _xff(q2) == ["198.51.100.9", "203.0.113.7", "127.0.0.1"], q2.headers
    assert _xff(q3) == ["127.0.0.1"], q3.headers
    # the client is the rightmost address not in trusted (never the spoofable leftmost one)
    assert g.access_for(r1.header("x-request-id"))["client"] == "203.0.113.7"
    assert g.access_for(r2.header("x-request-id"))["client"] == "203.0.113.7"
    assert g.access_for(r3.header("x-request-id"))["client"] == "127.0.0.1"


def test_xff_from_untrusted_peer_not_believed(make_gateway, make_stub):
    g, up = _real_ip_gateway(make_gateway, make_stub,
                             {"trusted": ["10.0.0.0/8"], "from": "x-forwarded-for"})
    (r,), (q,) = _exchange(g, up, build_request("GET", "/a", headers=[
        ("X-Forwarded-For", "203.0.113.7")]))
    assert r.status == 200, r
    assert _xff(q) == ["203.0.113.7", "127.0.0.1"], q.headers
    assert g.access_for(r.header("x-request-id"))["client"] == "127.0.0.1"


def proxy_v2(src, dst, sport, dport):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return sig + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs


@pytest.mark.parametrize("header,client", [
    (b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 80\r\n", "203.0.113.9"),
    (proxy_v2("203.0.113.10", "192.0.2.1", 40000, 80), "203.0.113.10"),
    (b"PROXY UNKNOWN\r\n", "127.0.0.1"),
], ids=["v1", "v2", "v1_unknown"])
def test_proxy_protocol_from_trusted_peer(make_gateway, make_stub, header, client):
    g, up = _real_ip_gateway(make_gateway, make_stub,
                             {"trusted": ["127.0.0.0/8"], "from": "proxy_protocol"})
    # one header, then two keep-alive requests on the connection
    resps, reqs = _exchange(g, up, header + build_request("GET", "/p1") +
                            build_request("GET", "/p2"), n=2)
    assert [r.status for r in resps] == [200, 200], resps
    assert [q.target for q in reqs] == ["/p1", "/p2"], reqs
    for q in reqs:
        assert _xff(q)[-1] == client, q.headers
        assert b"PROXY" not in q.raw and b"QUIT" not in q.raw, q.raw[:100]
    for r in resps:
        assert g.access_for(r.header("x-request-id"))["client"] == client


def test_proxy_protocol_required_from_trusted_peer(make_gateway, make_stub):
    g, up = _real_ip_gateway(make_gateway, make_stub,
                             {"trusted": ["127.0.0.0/8"], "from": "proxy_protocol"})
    snap = up.snapshot()
    with Client(g.port) as c:
        c.send(build_request("GET", "/no-header"))
        try:
            r = c.read_response(timeout=3.0)
            assert r.status == 400, "request without the PROXY header answered %r" % r
        except Closed:
            pass  # closed without an answer: fine
        except Timeout:
            pytest.fail("a connection without the PROXY header is still open")
    time.sleep(0.05)
    assert up.since(snap)[2] == b""


def test_proxy_protocol_from_untrusted_peer_not_believed(make_gateway, make_stub):
    g, up = _real_ip_gateway(make_gateway, make_stub,
                             {"trusted": ["10.0.0.0/8"], "from": "proxy_protocol"})
    snap = up.snapshot()
    with Client(g.port) as c:
        c.send(b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 80\r\n" + build_request("GET", "/x"))
        r = c.read_response(timeout=3.0)
        assert r.status in (400, 505) and r.has_close(), r
        assert c.wait_closed(2.0)
    assert up.since(snap)[2] == b""
    (r,), (q,) = _exchange(g, up, build_request("GET", "/plain"))
    assert r.status == 200 and _xff(q) == ["127.0.0.1"], q.headers
    assert g.access_for(r.header("x-request-id"))["client"] == "127.0.0.1"
