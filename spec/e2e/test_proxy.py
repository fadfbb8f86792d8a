"""Proxying: what the upstream receives and what the client gets back, for ordinary traffic:
keep-alive on both sides, pipelining, chunked and large bodies in both directions, the headers the
gateway adds and removes, path normalisation, HEAD/204/304, Expect: 100-continue."""
import hashlib
import re
import threading
import time

import pytest

from cases import Case, run_case
from gw import Client, build_request, config, listener
from harness import module_env
from httpio import chunk_encode, pattern_body
from stubs import Upstream

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    def build():
        echo = Upstream("echo")
        hop = Upstream("hop", headers=[
            ("Keep-Alive", "timeout=5"), ("Connection", "X-Up-Private"), ("X-Up-Private", "1"),
            ("Proxy-Connection", "keep-alive"), ("Upgrade", "foo"), ("Trailer", "X-T"),
            ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Up-Public", "yes")])
        ups = {"echo": {"targets": [echo.address], "connect_timeout": "300ms",
                        "read_timeout": "3s", "retries": 0},
               "hop": {"targets": [hop.address], "connect_timeout": "300ms",
                       "read_timeout": "3s", "retries": 0}}
        cfg = config(
            listeners=[listener("public")],
            timeouts={"header": "2s", "body": "2s", "keepalive": "5s", "send": "5s"},
            upstreams=ups,
            routes=[
                {"name": "keephost", "listeners": ["public"], "match": {"path": "/keephost/"},
                 "upstream": "echo", "preserve_host": True},
                {"name": "hop", "listeners": ["public"], "match": {"path": "/hop/"},
                 "upstream": "hop"},
                {"name": "all", "listeners": ["public"], "match": {"path": "/"},
                 "upstream": "echo"},
            ])
        return cfg, {"echo": echo, "hop": hop}
    return module_env(request, tmp_path_factory, build)


def one(reqs):
    assert len(reqs) == 1, "upstream got %d requests: %r" % (len(reqs), reqs)
    return reqs[0]


def exchange(env, data, method="GET", n=1, stub=None, timeout=10.0):
    """Sends <data> on a fresh connection; returns (responses, requests the stub got)."""
    stub = stub or env.echo
    snap = stub.snapshot()
    with Client(env.port, timeout=timeout) as c:
        c.send(data)
        resps = [c.read_response(method) for _ in range(n)]
    reqs = stub.wait_requests(n, 2.0, snap)
    return resps, reqs


# ---- basic exchanges, as cases (each runs twice) ----

def _got(method, target, body=b"", host=None, check=None):
    def f(reqs):
        r = one(reqs)
        assert r.method == method and r.target == target, r
        assert r.version == "HTTP/1.1", r.version
        assert r.raw.startswith(("%s %s HTTP/1.1\r\n" % (method, target)).encode()), r.raw[:100]
        assert r.body == body, (r.body[:100], body[:100])
        if host is not None:
            assert r.header("host") == host, r.headers
        if check:
            check(r)
    return f


def _body(expected):
    def f(resps):
        assert resps[-1].body == expected, resps[-1]
    return f


def test_get(env):
    run_case(env.gw, env.echo, Case(
        "get", build_request("GET", "/hello"), 200, close=False,
        upstream=_got("GET", "/hello", host=env.echo.address),
        check=_body(b"hello from echo\n")))


def test_post_content_length_forwarded_as_is(env):
    body = b"a=1&b=\r\n\r\nGET /x HTTP/1.1\r\n\r\n" + bytes(range(256))
    run_case(env.gw, env.echo, Case(
        "post", build_request("POST", "/form?echo=1", body=body), 200, close=False,
        upstream=_got("POST", "/form?echo=1", body,
                      check=lambda r: r.header("content-length") == str(len(body))),
        check=_body(body)))


def test_post_empty_body(env):
    run_case(env.gw, env.echo, Case(
        "post_empty", build_request("POST", "/empty", body=b""), 200, close=False,
        upstream=_got("POST", "/empty", b"")))


def test_put_and_delete_and_patch(env):
    for m in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        run_case(env.gw, env.echo, Case(
            m.lower(), build_request(m, "/m", body=b"xyz"), 200, close=False,
            upstream=_got(m, "/m", b"xyz")))


def test_head_has_no_body_and_connection_stays_usable(env):
    # HEAD then GET pipelined: the HEAD answer carries Content-Length but no body.
    data = build_request("HEAD", "/h") + build_request("GET", "/g")
    with Client(env.port) as c:
        c.send(data)
        h = c.read_response("HEAD")
        g = c.read_response()
    assert h.status == 200 and h.body == b"", h
    assert h.header("content-length") == str(len(b"hello from echo\n")), h
    assert g.status == 200 and g.body == b"hello from echo\n", g
    assert g.header("x-path") == "/g"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(env, status):
    run_case(env.gw, env.echo, Case(
        "status_%d" % status, build_request("GET", "/s?status=%d" % status), status,
        close=False, upstream=None, check=_body(b"")))


def test_connection_close_from_client(env):
    run_case(env.gw, env.echo, Case(
        "client_close", build_request("GET", "/c", headers=[("Connection", "close")]), 200,
        close=True, upstream=_got("GET", "/c",
                                  check=lambda r: r.header("connection") in (None, "close"))))


def test_http10_client_gets_answer_and_upstream_sees_http11(env):
    # HTTP/1.0 without keep-alive: answered, then closed (no Connection: close needed in 1.0).
    for _ in range(2):
        snap = env.echo.snapshot()
        with Client(env.port) as c:
            c.send(b"GET /old HTTP/1.0\r\nHost: a\r\n\r\n")
            r = c.read_response()
            assert r.status == 200 and r.body == b"hello from echo\n", r
            assert c.wait_closed(2.0), "HTTP/1.0 connection left open"
        r = one(env.echo.since(snap)[0])
        assert r.raw.startswith(b"GET /old HTTP/1.1\r\n"), r.raw[:60]


# ---- keep-alive and pipelining ----

def test_keepalive_client_side(env):
    with Client(env.port) as c:
        for i in range(10):
            c.request("GET", "/k%d" % i)
            r = c.read_response()
            assert r.status == 200 and not r.has_close(), r
            assert r.header("x-path") == "/k%d" % i
        assert not c.wait_closed(0.2)


def test_keepalive_upstream_side(env):
    # Sequential requests from separate client connections reuse one upstream connection.
    snap = env.echo.snapshot()
    for i in range(4):
        with Client(env.port) as c:
            c.request("GET", "/reuse%d" % i)
            assert c.read_response().status == 200
    reqs = env.echo.since(snap)[0]
    assert len(reqs) == 4
    conns = {r.conn for r in reqs}
    assert len(conns) == 1, "upstream connections not reused: %r" % [(r.conn, r.seq) for r in reqs]


def test_pipelining_answered_in_order(env):
    data = b"".join(build_request("GET", "/p%d" % i) for i in range(8))
    data += build_request("POST", "/p8?echo=1", body=b"body-8")
    data += build_request("GET", "/p9")
    with Client(env.port) as c:
        c.send(data)
        resps = [c.read_response() for _ in range(10)]
    assert [r.header("x-path").split("?")[0] for r in resps] == ["/p%d" % i for i in range(10)]
    assert resps[8].body == b"body-8"
    assert all(r.status == 200 for r in resps)


def test_pipelining_slow_first_answer(env):
    data = (build_request("GET", "/slow?slow=30&size=3000") + build_request("GET", "/fast")
            + build_request("HEAD", "/head") + build_request("GET", "/last"))
    with Client(env.port) as c:
        c.send(data)
        a = c.read_response()
        b = c.read_response()
        h = c.read_response("HEAD")
        d = c.read_response()
    assert a.body == pattern_body(3000)
    assert b.header("x-path") == "/fast" and h.header("x-path") == "/head"
    assert d.header("x-path") == "/last"


def test_many_requests_one_connection(env):
    with Client(env.port) as c:
        for i in range(100):
            c.request("POST", "/n?echo=1", body=b"%d" % i)
            r = c.read_response()
            assert r.status == 200 and r.body == b"%d" % i, (i, r)


def test_concurrent_clients(env):
    errors = []

    def worker(k):
        try:
            with Client(env.port) as c:
                for i in range(10):
                    c.request("POST", "/cc?echo=1", body=b"%d-%d" % (k, i))
                    r = c.read_response()
                    if r.status != 200 or r.body != b"%d-%d" % (k, i):
                        errors.append(r)
        except Exception as e:  # noqa
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not errors, errors[:3]


def test_trickled_request(env):
    snap = env.echo.snapshot()
    with Client(env.port) as c:
        c.trickle(build_request("POST", "/trickle?echo=1", body=b"slowly"), delay=0.003)
        r = c.read_response()
    assert r.status == 200 and r.body == b"slowly"
    assert one(env.echo.since(snap)[0]).body == b"slowly"


def test_trickled_response(env):
    resps, _ = exchange(env, build_request("GET", "/t?fault=trickle"))
    assert resps[0].status == 200 and resps[0].body == b"trickled response body\n"


def test_slow_upstream_body(env):
    resps, _ = exchange(env, build_request("GET", "/s?slow=40&size=20000"))
    assert resps[0].body == pattern_body(20000)


def test_upstream_close_after_response_keeps_client_connection(env):
    with Client(env.port) as c:
        for i in range(3):
            c.request("GET", "/uc%d?close=1" % i)
            r = c.read_response()
            assert r.status == 200 and not r.has_close(), r
        assert not c.wait_closed(0.2)


def test_upstream_body_until_eof(env):
    with Client(env.port) as c:
        c.request("GET", "/eof?eof=1&size=5000")
        r = c.read_response()
        assert r.status == 200 and r.body == pattern_body(5000), r
        # Either re-framed (chunked) and kept alive, or delimited by closing: both are correct.
        if r.header("content-length") is None and not r.chunked:
            assert c.wait_closed(2.0)


def test_upstream_interim_100_then_final(env):
    resps, _ = exchange(env, build_request("GET", "/i?fault=interim"))
    assert resps[0].status == 200 and resps[0].body == b"hello from echo\n"


def test_upstream_silent_close_between_requests(env):
    # The upstream closes its idle keep-alive connection: the next request must still work.
    for i in range(3):
        resps, _ = exchange(env, build_request("GET", "/sc%d?fault=silentclose" % i))
        assert resps[0].status == 200
        time.sleep(0.1)


# ---- chunked and large bodies ----

def _rechunked(r):
    assert r.chunked, "not chunked to the upstream: %r" % r.headers
    assert r.header("content-length") is None, r.headers


def test_chunked_request_is_rechunked(env):
    body = b"".join(b"part-%d;" % i for i in range(50))
    wire = chunk_encode(body, 7)
    run_case(env.gw, env.echo, Case(
        "chunked_req", build_request("POST", "/ch?echo=1",
                                     headers=[("Transfer-Encoding", "chunked")], body=wire),
        200, close=False, upstream=_got("POST", "/ch?echo=1", body, check=_rechunked),
        check=_body(body)))


def test_chunked_response(env):
    resps, _ = exchange(env, build_request("GET", "/cr?chunked=1&size=100000"))
    assert resps[0].status == 200 and resps[0].body == pattern_body(100000)


def test_content_length_response_not_rechunked(env):
    resps, _ = exchange(env, build_request("GET", "/cl?size=70000"))
    r = resps[0]
    assert r.header("content-length") == "70000" and not r.chunked, r.headers
    assert r.body == pattern_body(70000)


BIG = 5 * 1024 * 1024


def test_large_request_body_content_length(env):
    body = pattern_body(BIG, 11)
    resps, reqs = exchange(env, build_request("POST", "/big-up", body=body))
    assert resps[0].status == 200
    r = one(reqs)
    assert len(r.body) == BIG and hashlib.sha256(r.body).digest() == hashlib.sha256(body).digest()


def test_large_request_body_chunked(env):
    body = pattern_body(BIG, 13)
    wire = chunk_encode(body, 100000)
    resps, reqs = exchange(env, build_request(
        "POST", "/big-up-chunked", headers=[("Transfer-Encoding", "chunked")], body=wire))
    assert resps[0].status == 200
    r = one(reqs)
    assert len(r.body) == BIG and r.body == body


def test_large_response_body(env):
    resps, _ = exchange(env, build_request("GET", "/big-down?size=%d" % BIG))
    assert len(resps[0].body) == BIG and resps[0].body == pattern_body(BIG)


def test_large_response_body_chunked(env):
    resps, _ = exchange(env, build_request("GET", "/big-down?chunked=1&size=%d" % BIG))
    assert len(resps[0].body) == BIG and resps[0].body == pattern_body(BIG)


def test_large_body_both_directions(env):
    body = pattern_body(BIG, 17)
    resps, reqs = exchange(env, build_request("POST", "/big-echo?echo=1", body=body))
    assert resps[0].status == 200 and resps[0].body == body
    assert one(reqs).body == body


# ---- headers added and removed ----

def test_forwarding_headers_added(env):
    resps, reqs = exchange(env, build_request("GET", "/fw", host="front.example:8080"))
    r = one(reqs)
    assert r.headers_all("x-forwarded-for") == ["127.0.0.1"], r.headers
    assert r.header("x-forwarded-proto") == "http", r.headers
    assert r.header("x-forwarded-host") == "front.example:8080", r.headers
    assert r.header("host") == env.echo.address, r.headers


def test_x_forwarded_for_appended(env):
    _, reqs = exchange(env, build_request("GET", "/xff", headers=[
        ("X-Forwarded-For", "203.0.113.1, 198.51.100.2")]))
    got = ", ".join(one(reqs).headers_all("x-forwarded-for"))
    assert got == "203.0.113.1, 198.51.100.2, 127.0.0.1", got


def test_request_id_generated_and_returned(env):
    ids = set()
    for _ in range(2):
        resps, reqs = exchange(env, build_request("GET", "/rid"))
        sent = one(reqs).headers_all("x-request-id")
        assert len(sent) == 1 and HEX32.match(sent[0]), sent
        assert resps[0].header("x-request-id") == sent[0], resps[0].headers
        ids.add(sent[0])
    assert len(ids) == 2, "request ids repeat"


def test_request_id_from_client_kept(env):
    resps, reqs = exchange(env, build_request("GET", "/rid2",
                                              headers=[("X-Request-Id", "client-id-42")]))
    assert one(reqs).headers_all("x-request-id") == ["client-id-42"]
    assert resps[0].header("x-request-id") == "client-id-42"


def test_hop_by_hop_request_fields_removed(env):
    hdrs = [("Connection", "keep-alive, X-Secret"), ("Keep-Alive", "timeout=300"),
            ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("Trailer", "X-T"),
            ("Upgrade", "foo/1"), ("X-Secret", "s3cr3t"), ("X-Kept", "kept"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg==")]
    _, reqs = exchange(env, build_request("GET", "/hop-req", headers=hdrs))
    r = one(reqs)
    for name in ("keep-alive", "proxy-connection", "te", "trailer", "upgrade", "x-secret"):
        assert r.header(name) is None, "%s forwarded: %r" % (name, r.headers)
    assert r.header("connection") in (None, "keep-alive"), r.headers
    assert r.header("x-kept") == "kept"
    assert r.header("proxy-authorization") == "Basic Zm9vOmJhcg=="


def test_hop_by_hop_response_fields_removed(env):
    resps, _ = exchange(env, build_request("GET", "/hop/x"), stub=env.hop)
    r = resps[0]
    assert r.status == 200
    for name in ("keep-alive", "x-up-private", "proxy-connection", "upgrade", "trailer"):
        assert r.header(name) is None, "%s relayed: %r" % (name, r.headers)
    assert r.header("x-up-public") == "yes"
    assert r.headers_all("set-cookie") == ["a=1", "b=2"], r.headers


def test_duplicate_request_fields_kept_in_order(env):
    _, reqs = exchange(env, build_request("GET", "/dup", headers=[
        ("X-Multi", "one"), ("X-Other", "x"), ("X-Multi", "two")]))
    assert one(reqs).headers_all("x-multi") == ["one", "two"]


def test_preserve_host(env):
    _, reqs = exchange(env, build_request("GET", "/keephost/a", host="Orig.Example:8080"))
    assert one(reqs).header("host") == "Orig.Example:8080"


def test_upstream_head_is_crlf_only(env):
    _, reqs = exchange(env, b"GET /crlf HTTP/1.1\nHost: a\nX-A: 1\n\n")
    r = one(reqs)
    assert b"\n" not in r.head.replace(b"\r\n", b""), r.head


# ---- path normalisation: what the upstream receives ----

NORMALISED = [
    ("/x/../admin", "/admin"),
    ("/%61dmin", "/admin"),
    ("//admin", "/admin"),
    ("/./admin", "/admin"),
    ("/a/b/../../admin", "/admin"),
    ("/../admin", "/admin"),
    ("/a/%2e%2e/admin", "/admin"),
    ("/a/%2E/admin", "/a/admin"),
    ("/a//b///c", "/a/b/c"),
    ("/a/./b/", "/a/b/"),
    ("/a%7eb", "/a~b"),
    ("/a%3ab", "/a%3Ab"),
    ("/caf%C3%A9", "/caf%C3%A9"),
    ("/adm%69n?x=%2F&y=/../z", "/admin?x=%2F&y=/../z"),
    ("/q?a=1&&b=%zz", "/q?a=1&&b=%zz"),
]


@pytest.mark.parametrize("sent,expected", NORMALISED, ids=[s for s, _ in NORMALISED])
def test_upstream_receives_normalised_path(env, sent, expected):
    run_case(env.gw, env.echo, Case(
        "norm " + sent, build_request("GET", sent), 200, close=False,
        upstream=_got("GET", expected)))


# ---- Expect: 100-continue ----

def test_expect_100_continue(env):
    for _ in range(2):
        snap = env.echo.snapshot()
        with Client(env.port) as c:
            head = build_request("POST", "/exp?echo=1", headers=[
                ("Expect", "100-continue"), ("Content-Length", "11")])
            c.send(head)
            interim = c.read_response(timeout=2.0, skip_interim=False)
            assert interim.status == 100, "no 100 Continue before the body: %r" % interim
            c.send(b"hello world")
            r = c.read_response()
            assert r.status == 200 and r.body == b"hello world", r
        assert one(env.echo.since(snap)[0]).body == b"hello world"


def test_clean_error_log(env):
    # Everything above is ordinary traffic: nothing for the error log at level error.
    env.gw.assert_no_error(0)
