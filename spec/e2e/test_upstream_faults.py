"""Upstream faults, mapped as nginx and HAProxy map them: refused -> 502 at once (or the next
target), connect timeout -> 504, no answer within read_timeout -> 504, reset / empty / garbage /
conflicting framing / oversized head -> 502, 5xx relayed unchanged, a body cut short -> the client
gets exactly the bytes received and then the close (never padded, never a fake last chunk).
Retries: only what was not sent, or idempotent requests no response byte of which reached the
client, bounded by `retries`; a pooled connection that the upstream closed as it was reused is
retried transparently for GET. Passive health: max_fails failures skip a target for fail_timeout.

One gateway for the module; each behaviour has its own upstream group (and route prefix) so that
round-robin and health state never leak from one test into another.
"""
import time

import pytest

from cases import Case
from gw import Client, build_request, config, listener
from harness import module_env
from httpio import pattern_body
from stubs import Blackhole, RefusingPort, Upstream


def group(*targets, **kw):
    g = {"targets": [t.address for t in targets], "connect_timeout": "300ms",
         "read_timeout": "500ms", "retries": 0, "keepalive": 8}
    g.update(kw)
    return g


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    def build():
        s = {
            "faulty": Upstream("faulty"),
            "good": Upstream("good"),
            "refuse1": RefusingPort(),
            "refuse2": RefusingPort(),
            "blackhole": Blackhole(),
            "hp_bad": RefusingPort(),
            "hp_good": Upstream("hpgood"),
            "resetter": Upstream("resetter", mode="reset"),
            "good_r": Upstream("goodr"),
            "r1": Upstream("r1", mode="reset"),
            "r2": Upstream("r2", mode="reset"),
            "r3": Upstream("r3", mode="reset"),
            "r4": Upstream("r4", mode="reset"),
            "hang": Upstream("hang", mode="hang"),
            "good_h": Upstream("goodh"),
            "tr1": Upstream("tr1", mode="truncate"),
            "tr2": Upstream("tr2", mode="truncate"),
            "s5a": Upstream("s5a", headers=[("Retry-After", "7")]),
            "s5b": Upstream("s5b", headers=[("Retry-After", "7")]),
            "ka": Upstream("ka", mode="dropsecond"),
        }
        many = dict(max_fails=50)
        ups = {
            "faulty": group(s["faulty"]),
            "refused": group(s["refuse1"], connect_timeout="3s", retries=1),
            "refused_then_good": group(s["refuse2"], s["good"], retries=1, **many),
            "blackhole": group(s["blackhole"]),
            "health": group(s["hp_bad"], s["hp_good"], retries=1, max_fails=2,
                            fail_timeout="1500ms", connect_timeout="1s"),
            "reset_then_good": group(s["resetter"], s["good_r"], retries=1, **many),
            "resets": group(s["r1"], s["r2"], s["r3"], s["r4"], retries=2, **many),
            "resets0": group(s["r1"], s["r2"], retries=0, **many),
            "hang_then_good": group(s["hang"], s["good_h"], retries=1, read_timeout="400ms",
                                    **many),
            "truncs": group(s["tr1"], s["tr2"], retries=1, **many),
            "fivexx": group(s["s5a"], s["s5b"], retries=2, **many),
            "ka": group(s["ka"]),
            "ka2": group(s["ka"]),
        }
        prefixes = {"faulty": "/faulty/", "refused": "/refused/", "refused_then_good": "/rg/",
                    "blackhole": "/bh/", "health": "/health/", "reset_then_good": "/resetgood/",
                    "resets": "/resets/", "resets0": "/resets0/", "hang_then_good": "/hanggood/",
                    "truncs": "/truncs/", "fivexx": "/5xx/", "ka": "/ka/", "ka2": "/ka2/"}
        routes = [{"name": name, "listeners": ["public"], "match": {"path": prefix},
                   "upstream": name} for name, prefix in prefixes.items()]
        routes.append({"name": "ok", "listeners": ["public"], "match": {"path": "/ok"},
                       "upstream": "faulty"})
        cfg = config(
            listeners=[listener("public")],
            timeouts={"header": "2s", "body": "2s", "keepalive": "5s", "send": "2s"},
            upstreams=ups, routes=routes)
        return cfg, s
    return module_env(request, tmp_path_factory, build)


def exchange(env, data, method="GET", timeout=3.0, allow_incomplete=False):
    """Sends <data> on a fresh connection; returns (response, client, elapsed s). The client is
    left open for the caller to check the close. <timeout> stays below the keep-alive timeout
    (5 s), so that a connection left open after a cut body is not mistaken for a close."""
    c = Client(env.port, timeout=timeout)
    t0 = time.monotonic()
    c.send(data)
    r = c.read_response(method, allow_incomplete=allow_incomplete)
    return r, c, time.monotonic() - t0


def total_since(stubs, snaps):
    reqs = []
    for st, sn in zip(stubs, snaps):
        reqs += st.since(sn)[0]
    return reqs


def assert_consistent_close(c, r, where):
    """A gateway-made error may keep the connection or close it, but must say which: with
    Connection: close the connection closes; without it, the next request works."""
    if r.has_close():
        assert c.wait_closed(2.0), "%s: Connection: close but the connection stayed open" % where
    else:
        c.send(build_request("GET", "/ok"))
        f = c.read_response()
        assert f.status == 200, "%s: follow-up on the same connection got %r" % (where, f)


def dechunk_lenient(raw_body):
    """Decodes what arrived of a chunked body. Returns (data, saw_last_chunk, rest)."""
    data = bytearray()
    pos = 0
    while True:
        eol = raw_body.find(b"\r\n", pos)
        if eol < 0:
            return bytes(data), False, raw_body[pos:]
        size = int(raw_body[pos:eol].split(b";")[0], 16)
        if size == 0:
            return bytes(data), True, raw_body[eol + 2 :]
        chunk = raw_body[eol + 2 : eol + 2 + size]
        data += chunk
        if len(chunk) < size:
            return bytes(data), False, b""
        pos = eol + 2 + size
        if raw_body[pos : pos + 2] != b"\r\n":
            return bytes(data), False, raw_body[pos:]
        pos += 2


def body_of(r):
    return r.raw.split(b"\r\n\r\n", 1)[1]


# ---- faults that become a gateway answer (502 / 504) ----

def _sent_once_or_replayed(path):
    """The upstream got the request once; or twice when the first went over a pooled connection
    that failed (the transparent retry on a fresh one), never more, always the same request."""
    def check(reqs):
        reqs = [r for r in reqs if r.path != "/ok"]  # the follow-up request, if any
        assert 1 <= len(reqs) <= 2, "upstream got %d requests: %r" % (len(reqs), reqs)
        assert all(r.path == path and r.method == "GET" for r in reqs), reqs
        if len(reqs) == 2:
            assert reqs[0].seq > 1 and reqs[1].seq == 1, (
                "a second attempt on one target that is not the pooled-connection retry: %r"
                % reqs)
            assert reqs[0].header("x-request-id") == reqs[1].header("x-request-id")
    return check


def fault(mode, status):
    path = "/faulty/" + mode
    return Case(mode, build_request("GET", path + "?fault=" + mode), status, close=None,
                upstream=_sent_once_or_replayed(path), clean=False)


FAULT_CASES = [
    fault("reset", 502),          # RST before any response byte
    fault("empty", 502),          # closed without a byte
    fault("garbage", 502),        # "lol"
    fault("binary", 502),         # 2 KB of binary
    fault("badstatus", 502),      # "HTTP/1.1 2x0 OK"
    fault("badversion", 502),     # "HTTP/2.0 200 OK"
    fault("clte", 502),           # Content-Length and Transfer-Encoding
    fault("twocl", 502),          # two different Content-Length fields
    fault("cllist", 502),         # Content-Length: 5, 6
    fault("badcl", 502),          # Content-Length: abc
    fault("obsfold", 502),        # obs-fold in the response head
    fault("spacecolon", 502),     # "Content-Length : 2"
    fault("nulvalue", 502),       # NUL in a field value
    fault("bighead", 502),        # a 290 KB response head
    fault("hang", 504),           # accepted, read, never answered: read_timeout 500ms
]


def run_fault(env, case, repeat=2):
    for attempt in range(1, repeat + 1):
        where = "%s (run %d)" % (case.id, attempt)
        snap = env.faulty.snapshot()
        r, c, elapsed = exchange(env, case.send)
        with c:
            assert r.status == case.status, "%s: status %s, want %s: %r" % (
                where, r.status, case.status, r)
            assert r.header("x-stub") is None, "%s: the upstream's answer leaked: %r" % (where, r)
            if case.status == 504:
                assert 0.35 <= elapsed < 2.5, "%s: 504 after %.2f s (read_timeout 500ms)" % (
                    where, elapsed)
            else:
                assert elapsed < 2.0, "%s: 502 took %.2f s" % (where, elapsed)
            assert_consistent_close(c, r, where)
        time.sleep(0.05)
        case.upstream(env.faulty.since(snap)[0])
        env.gw.assert_alive()


@pytest.mark.parametrize("case", FAULT_CASES, ids=str)
def test_upstream_fault_answered(env, case):
    run_fault(env, case)


def test_refused_single_target_502_at_once(env):
    for attempt in range(2):
        r, c, elapsed = exchange(env, build_request("GET", "/refused/x"))
        with c:
            assert r.status == 502, r
            # connect_timeout is 3 s: a refusal must not wait for it
            assert elapsed < 1.5, "502 for a refused connection took %.2f s" % elapsed
            assert_consistent_close(c, r, "refused run %d" % attempt)


def test_refused_then_next_target(env):
    for i in range(4):
        snap = env.good.snapshot()
        r, c, _ = exchange(env, build_request("GET", "/rg/%d" % i))
        c.close()
        assert r.status == 200 and r.header("x-stub") == "good", r
        reqs = env.good.since(snap)[0]
        assert [q.path for q in reqs] == ["/rg/%d" % i], reqs


def test_connect_timeout_504(env):
    for _ in range(2):
        r, c, elapsed = exchange(env, build_request("GET", "/bh/x"))
        with c:
            assert r.status == 504, r
            assert 0.2 <= elapsed < 1.5, "504 after %.2f s (connect_timeout 300ms)" % elapsed
            assert_consistent_close(c, r, "blackhole")


# ---- 5xx from the upstream: relayed as they are, never retried ----

@pytest.mark.parametrize("status,reason", [(500, "Internal Server Error"),
                                           (503, "Service Unavailable"),
                                           (502, "Bad Gateway")])
def test_upstream_5xx_relayed_unchanged(env, status, reason):
    stubs = [env.s5a, env.s5b]
    for i in range(2):
        snaps = [s.snapshot() for s in stubs]
        r, c, _ = exchange(env, build_request("GET", "/5xx/e%d?status=%d" % (i, status)))
        with c:
            assert r.status == status and r.reason == reason, r
            assert r.header("x-stub") in ("s5a", "s5b"), r
            assert r.body == ("hello from %s\n" % r.header("x-stub")).encode(), r
            assert r.header("retry-after") == "7", r.headers
            assert not r.has_close(), "an upstream 5xx closed the client connection: %r" % r
            c.send(build_request("GET", "/ok"))
            assert c.read_response().status == 200
        reqs = total_since(stubs, snaps)
        assert len(reqs) == 1, "a %d was retried: %r" % (status, reqs)


# ---- a body cut short ----

def test_truncated_content_length_body(env):
    for _ in range(2):
        r, c, _ = exchange(env, build_request("GET", "/faulty/t?fault=truncate"),
                           allow_incomplete=True)
        with c:
            assert r.status == 200 and r.header("content-length") == "100", r
            assert not r.complete and r.body == b"0123456789", r
            assert c.wait_closed(2.0), "connection still open after a cut body"


def test_truncated_large_content_length_body(env):
    size, cut = 1000000, 300001
    r, c, _ = exchange(env, build_request("GET", "/faulty/big?size=%d&cut=%d" % (size, cut)),
                       allow_incomplete=True, timeout=3.0)
    with c:
        assert r.status == 200 and r.header("content-length") == str(size), r
        assert len(r.body) == cut and r.body == pattern_body(cut), (
            "client got %d bytes, the upstream sent %d" % (len(r.body), cut))
        assert c.wait_closed(2.0)


@pytest.mark.parametrize("target,expected,exact", [
    ("/faulty/c?fault=cutchunk", b"helloabc", True),   # 5 hello, then 0x10 with 3 bytes
    ("/faulty/c?chunked=1&size=200000&cut=100003", pattern_body(100003), True),
    # 5 hello, then "zz": the valid data before the bad size line is relayed, then the close
    ("/faulty/c?fault=badchunk", b"hello", True),
], ids=["cutchunk", "large", "badchunk"])
def test_truncated_chunked_body(env, target, expected, exact):
    for _ in range(2):
        r, c, _ = exchange(env, build_request("GET", target), allow_incomplete=True,
                           timeout=3.0)
        with c:
            assert r.status == 200, r
            assert r.header("content-length") is None, r.headers
            assert r.chunked or r.header("transfer-encoding") == "chunked", r.headers
            assert not r.complete, "the client saw a complete body: %r" % r
            data, last, rest = dechunk_lenient(body_of(r))
            assert not last, "a fake last chunk was sent after a cut body: %r" % body_of(r)[-60:]
            if exact:
                assert data == expected, "client got %d bytes %r..., want %d" % (
                    len(data), data[:40], len(expected))
            else:
                assert expected.startswith(data), "client got %r, want a prefix of %r" % (
                    data[:40], expected)
            assert rest == b"", "bytes after the data: %r" % rest[:60]
            assert c.wait_closed(2.0)


def test_timeout_inside_response_body(env):
    # 10 of 100 bytes, then silence: after read_timeout the client gets the 10 bytes and a close.
    r, c, elapsed = exchange(env, build_request("GET", "/faulty/h?fault=hangbody"),
                             allow_incomplete=True)
    with c:
        assert r.status == 200 and r.header("content-length") == "100", r
        assert not r.complete and r.body == b"x" * 10, r
        assert c.wait_closed(3.0)


# ---- retries ----

def test_get_retried_on_next_target_after_reset(env):
    stubs = [env.resetter, env.good_r]
    snaps = [s.snapshot() for s in stubs]
    for i in range(4):
        gsnap = env.good_r.snapshot()
        r, c, _ = exchange(env, build_request("GET", "/resetgood/%d" % i))
        c.close()
        assert r.status == 200 and r.header("x-stub") == "goodr", r
        got = env.good_r.since(gsnap)[0]
        assert [q.path for q in got] == ["/resetgood/%d" % i], got
    reset_got = env.resetter.since(snaps[0])[0]
    assert 1 <= len(reset_got) <= 4, "round robin never tried the resetting target: %r" % (
        reset_got,)


def test_post_not_retried_once_sent(env):
    stubs = [env.r1, env.r2, env.r3, env.r4]
    for i in range(2):
        snaps = [s.snapshot() for s in stubs]
        body = b"payment=%d" % i
        r, c, _ = exchange(env, build_request("POST", "/resets/pay", body=body))
        c.close()
        assert r.status == 502, r
        time.sleep(0.1)
        reqs = total_since(stubs, snaps)
        assert len(reqs) == 1, "a POST that reached an upstream was sent again: %r" % reqs
        assert reqs[0].method == "POST" and reqs[0].body == body, reqs


def test_post_retried_when_not_sent(env):
    # A refused connection carried nothing: even a POST goes to the next target.
    for i in range(2):
        snap = env.good.snapshot()
        body = b"order=%d" % i
        r, c, _ = exchange(env, build_request("POST", "/rg/order?echo=1", body=body))
        c.close()
        assert r.status == 200 and r.body == body, r
        reqs = env.good.since(snap)[0]
        assert len(reqs) == 1 and reqs[0].body == body, reqs


@pytest.mark.parametrize("prefix,attempts", [("/resets/", 3), ("/resets0/", 1)],
                         ids=["retries2", "retries0"])
def test_retries_bounded(env, prefix, attempts):
    stubs = [env.r1, env.r2, env.r3, env.r4]
    for i in range(2):
        snaps = [s.snapshot() for s in stubs]
        r, c, _ = exchange(env, build_request("GET", prefix + "b%d" % i))
        c.close()
        assert r.status == 502, r
        time.sleep(0.1)
        reqs = total_since(stubs, snaps)
        assert len(reqs) == attempts, "%d attempts, want %d (1 + retries): %r" % (
            len(reqs), attempts, reqs)
        names = [s.name for s, sn in zip(stubs, snaps) if s.since(sn)[0]]
        assert len(names) == attempts, "a retry went to a target already tried: %r" % names


def test_get_retried_after_read_timeout(env):
    stubs = [env.hang, env.good_h]
    snaps = [s.snapshot() for s in stubs]
    for i in range(2):
        gsnap = env.good_h.snapshot()
        r, c, _ = exchange(env, build_request("GET", "/hanggood/%d" % i))
        c.close()
        assert r.status == 200 and r.header("x-stub") == "goodh", r
        assert len(env.good_h.since(gsnap)[0]) == 1
    assert len(env.hang.since(snaps[0])[0]) >= 1, "the hanging target was never tried"


def test_no_retry_once_response_bytes_reached_client(env):
    stubs = [env.tr1, env.tr2]
    for _ in range(2):
        snaps = [s.snapshot() for s in stubs]
        r, c, _ = exchange(env, build_request("GET", "/truncs/x"), allow_incomplete=True)
        with c:
            assert r.status == 200 and r.body == b"0123456789" and not r.complete, r
            assert c.wait_closed(2.0)
        time.sleep(0.1)
        reqs = total_since(stubs, snaps)
        assert len(reqs) == 1, "retried after the response had started: %r" % reqs


def test_failed_pooled_connection_retried_transparently(env):
    # The stub answers the first request of each connection and closes the connection when the
    # second one arrives: every request after the first meets a pooled connection that dies as
    # it is reused. retries is 0 for this group: the replay on a new connection is not a retry.
    r, c, _ = exchange(env, build_request("GET", "/ka/warm"))
    c.close()
    assert r.status == 200, r
    for i in range(3):
        snap = env.ka.snapshot()
        r, c, _ = exchange(env, build_request("GET", "/ka/%d" % i))
        c.close()
        assert r.status == 200 and r.header("x-stub") == "ka", r
        reqs = env.ka.since(snap)[0]
        assert [q.path for q in reqs] == ["/ka/%d" % i] * 2, reqs
        assert reqs[0].seq == 2 and reqs[1].seq == 1 and reqs[1].conn > reqs[0].conn, reqs
        assert r.header("x-conn") == str(reqs[1].conn), r.headers


def test_post_on_failed_pooled_connection_not_replayed(env):
    r, c, _ = exchange(env, build_request("GET", "/ka2/warm"))
    c.close()
    assert r.status == 200, r
    snap = env.ka.snapshot()
    r, c, _ = exchange(env, build_request("POST", "/ka2/p", body=b"once"))
    c.close()
    # Sent over the pooled connection (it dies: 502) or over a fresh one (200): never twice.
    assert r.status in (200, 502), r
    time.sleep(0.1)
    reqs = env.ka.since(snap)[0]
    assert len(reqs) == 1 and reqs[0].method == "POST" and reqs[0].body == b"once", reqs


# ---- passive health ----

def test_passive_health_skips_and_retries_failed_target(env):
    # health: [refusing, good], retries 1, max_fails 2, fail_timeout 1.5 s
    good = env.hp_good
    t_start = time.monotonic()
    ids = []
    for i in range(6):
        r, c, _ = exchange(env, build_request("GET", "/health/a%d" % i))
        c.close()
        assert r.status == 200 and r.header("x-stub") == "hpgood", r
        ids.append(r.header("x-request-id"))
    t_marked = time.monotonic()  # the target went down before this (at its 2nd failure)

    # The target comes back at once, but stays skipped until fail_timeout has passed.
    port = env.hp_bad.port
    env.hp_bad.stop()
    back = Upstream("hpback", port=port)
    try:
        snap = good.snapshot()
        for i in range(4):
            r, c, _ = exchange(env, build_request("GET", "/health/b%d" % i))
            c.close()
            assert r.status == 200, r
        within = time.monotonic() - t_start < 1.4  # false only on a very slow machine
        if within:
            assert back.snapshot()[0] == 0, (
                "a target marked down got traffic within fail_timeout")
            assert len(good.since(snap)[0]) == 4

        entries = [env.gw.access_for(i) for i in ids]
        retried = [e["retries"] for e in entries]
        assert sum(1 for n in retried if n > 0) <= 2, (
            "the refused target was tried more than max_fails (2) times: retries %r" % retried)
        assert retried[-3:] == [0, 0, 0], "the failed target was not skipped: retries %r" % (
            retried,)

        time.sleep(max(0.0, t_marked + 1.5 + 0.3 - time.monotonic()))
        for i in range(4):
            r, c, _ = exchange(env, build_request("GET", "/health/c%d" % i))
            c.close()
            assert r.status == 200, r
        assert back.snapshot()[0] >= 1, "the target was not tried again after fail_timeout"
    finally:
        back.stop()


def test_gateway_survived(env):
    env.gw.assert_alive()
    with Client(env.port) as c:
        c.request("GET", "/ok")
        assert c.read_response().status == 200


def test_retry_on_another_target_names_it_in_host(make_gateway, make_stub):
    """With preserve_host false, the upstream Host is the target's host:port, also when a retry
    moved the request to another target than the first attempt's."""
    refusing = make_stub(kind="refuse")
    good = make_stub("good")
    g = make_gateway(config(
        listeners=[listener("public")],
        upstreams={"u": {"targets": ["127.0.0.1:%d" % refusing.port, "localhost:%d" % good.port],
                         "retries": 1, "max_fails": 100, "connect_timeout": "300ms"}},
        routes=[{"name": "all", "listeners": ["public"], "match": {"path": "/"},
                 "upstream": "u"}]))
    for i in range(4):  # round robin: some requests try the refusing target first
        with Client(g.port) as c:
            c.request(target="/h%d" % i)
            r = c.read_response()
        assert r.status == 200, r
    hosts = {q.header("host") for q in good.requests}
    assert hosts == {"localhost:%d" % good.port}, hosts
