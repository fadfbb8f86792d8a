"""Slow and abusive clients: a total header deadline (408, then close), a body deadline (408),
idle keep-alive connections closed at the keep-alive timeout, slow readers cut by the send timeout
without the gateway buffering the response, max_connections (503 or refused for new connections,
existing ones unaffected), and the limits: request line 414, header section 431, field count
431, body 413 before reading it (with Expect: 100-continue: 413 and no 100 Continue). Behind any
of these answers the connection closes and no pipelined byte is processed.

Module config: timeouts header/body/keepalive/send 1 s; limits request_line 1k,
header_section 4k, header_fields 20, body 64k.
"""
import re
import threading
import time

import pytest

from cases import Case, NO_REQUEST, SMUGGLED, run_case
from gw import BINARY, Client, config, listener
from harness import module_env
from httpio import Closed, Timeout, chunk_encode, pattern_body
from stubs import Upstream

TIMEOUT = 1.0        # every client timeout of the module gateway, in seconds
SLACK = 2.2          # the longest we accept for a 1 s deadline (noisy machines)
BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    def build():
        up = Upstream("echo")
        cfg = config(
            listeners=[listener("public")],
            limits={"request_line": "1k", "header_section": "4k", "header_fields": 20,
                    "body": "64k", "max_connections": 1000},
            timeouts={"header": "1s", "body": "1s", "keepalive": "1s", "send": "1s"},
            upstreams={"echo": {"targets": [up.address], "connect_timeout": "300ms",
                                "read_timeout": "5s", "retries": 0}},
            routes=[{"name": "all", "listeners": ["public"], "match": {"path": "/"},
                     "upstream": "echo"}])
        return cfg, {"echo": up}
    return module_env(request, tmp_path_factory, build)


# ---- limits, as cases (each runs twice; SMUGGLED behind must never be processed) ----

def _head(target="/x", fields=b"", method=b"GET"):
    return method + b" " + target.encode() + b" HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"


def _one_request(reqs):
    assert len(reqs) == 1, "upstream got %r" % reqs


def _upstream_body(n):
    def check(reqs):
        assert len(reqs) == 1 and len(reqs[0].body) == n, reqs
        assert reqs[0].body == pattern_body(n)
    return check


LIMIT_CASES = [
    Case("request_line_too_long", _head("/" + "a" * 1100) + SMUGGLED, 414),
    Case("request_line_much_too_long", _head("/" + "a" * 20000) + SMUGGLED, 414),
    Case("header_section_too_large",
         _head(fields=b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 800) for i in range(6)))
         + SMUGGLED, 431),
    Case("header_section_much_too_large",
         _head(fields=b"X-Huge: " + b"v" * 100000 + b"\r\n") + SMUGGLED, 431),
    Case("too_many_fields",
         _head(fields=b"".join(b"X-F-%02d: v\r\n" % i for i in range(25))) + SMUGGLED, 431),
    Case("body_over_limit_by_one",
         _head("/p", b"Content-Length: %d\r\n" % (BODY_LIMIT + 1), b"POST") + SMUGGLED, 413),
    Case("body_far_over_limit",
         _head("/p", b"Content-Length: 10485760\r\n", b"POST") + SMUGGLED, 413),
    Case("chunked_body_over_limit",
         _head("/p", b"Transfer-Encoding: chunked\r\n", b"POST")
         + chunk_encode(pattern_body(BODY_LIMIT + 4000), 8000) + SMUGGLED, 413,
         upstream=NO_REQUEST),
    # at the limits: accepted
    Case("request_line_under_limit", _head("/" + "a" * 990), 200, close=False,
         upstream=_one_request),
    Case("twenty_fields", _head(fields=b"".join(b"X-F-%02d: v\r\n" % i for i in range(19))),
         200, close=False, upstream=_one_request),
    Case("body_at_limit",
         _head("/p", b"Content-Length: %d\r\n" % BODY_LIMIT, b"POST") + pattern_body(BODY_LIMIT),
         200, close=False, upstream=_upstream_body(BODY_LIMIT)),
]


@pytest.mark.parametrize("case", LIMIT_CASES, ids=str)
def test_limits(env, case):
    run_case(env.gw, env.echo, case)


def test_expect_continue_with_body_over_limit(env):
    # 413 at once, no "100 Continue" first; the body the client then sends is never read as
    # requests, and the upstream sees nothing.
    for _ in range(2):
        snap = env.echo.snapshot()
        with Client(env.port) as c:
            c.send(_head("/p", b"Content-Length: 1000000\r\nExpect: 100-continue\r\n", b"POST"))
            r = c.read_response(skip_interim=False, timeout=3.0)
            assert r.status == 413, "first answer %r, want 413 without 100 Continue" % r
            assert r.has_close(), r
            try:
                c.send(SMUGGLED * 10)
            except OSError:
                pass
            assert c.wait_closed(3.0)
        time.sleep(0.05)
        assert env.echo.since(snap)[2] == b""


def test_expect_continue_within_limit_still_works(env):
    with Client(env.port) as c:
        c.send(_head("/p?echo=1", b"Content-Length: 5\r\nExpect: 100-continue\r\n", b"POST"))
        interim = c.read_response(skip_interim=False, timeout=3.0)
        assert interim.status == 100, interim
        c.send(b"hello")
        r = c.read_response()
        assert r.status == 200 and r.body == b"hello", r


# ---- deadlines ----

class Trickler(threading.Thread):
    """Sends <data> one byte every <delay> s until told to stop or the server closes."""

    def __init__(self, client, data, delay=0.2):
        super().__init__(daemon=True)
        self.client, self.data, self.delay = client, data, delay
        self.stop = threading.Event()
        self.sent = 0

    def run(self):
        for i in range(len(self.data)):
            if self.stop.is_set():
                return
            try:
                self.client.sock.sendall(self.data[i : i + 1])
            except OSError:
                return
            self.sent += 1
            self.stop.wait(self.delay)


def _trickle_until_answer(c, data):
    t = Trickler(c, data)
    t0 = time.monotonic()
    t.start()
    try:
        r = c.read_response(timeout=5.0)
        elapsed = time.monotonic() - t0
    finally:
        t.stop.set()
        t.join(2)
    return r, elapsed, t.sent


def test_header_deadline_is_total(env):
    # One byte every 200 ms: every read makes progress, but the head as a whole is late.
    head = _head("/trickle", b"X-Pad: " + b"p" * 200 + b"\r\n")
    for _ in range(2):
        snap = env.echo.snapshot()
        with Client(env.port) as c:
            r, elapsed, sent = _trickle_until_answer(c, head)
            assert r.status == 408, r
            assert r.has_close(), r
            assert 0.8 <= elapsed <= SLACK, "408 after %.2f s (%d bytes sent), header 1s" % (
                elapsed, sent)
            assert c.wait_closed(3.0)
        assert env.echo.since(snap)[2] == b""


def test_header_deadline_on_keepalive_connection(env):
    # The second request's head gets its own deadline, from its first byte.
    with Client(env.port) as c:
        c.request("GET", "/first")
        assert c.read_response().status == 200
        time.sleep(0.3)
        r, elapsed, _ = _trickle_until_answer(c, _head("/second", b"X-Pad: " + b"p" * 100 +
                                                       b"\r\n"))
        assert r.status == 408 and r.has_close(), r
        assert 0.8 <= elapsed <= SLACK, "408 after %.2f s" % elapsed
        assert c.wait_closed(3.0)


def test_body_deadline(env):
    for _ in range(2):
        snap = env.echo.snapshot()
        with Client(env.port) as c:
            c.send(_head("/slowbody", b"Content-Length: 100\r\n", b"POST") + b"0123456789")
            t0 = time.monotonic()
            r = c.read_response(timeout=5.0)
            elapsed = time.monotonic() - t0
            assert r.status == 408 and r.has_close(), r
            assert 0.8 <= elapsed <= SLACK, "408 after %.2f s, body timeout 1s" % elapsed
            assert c.wait_closed(3.0)
        time.sleep(0.05)
        assert env.echo.since(snap)[0] == [], "an incomplete request reached the upstream"


def test_idle_keepalive_closed_at_keepalive_timeout(env):
    with Client(env.port) as c:
        c.request("GET", "/idle")
        r = c.read_response()
        assert r.status == 200 and not r.has_close(), r
        t0 = time.monotonic()
        closed = c.closed_at(timeout=4.0)
        assert closed is not None, "idle keep-alive connection still open after 4 s"
        assert 0.8 <= closed - t0 <= SLACK, "closed after %.2f s, keepalive 1s" % (closed - t0)


def test_silent_connection_closed(env):
    # A connection that never sends a byte is closed at the header deadline (with a 408 or not).
    with Client(env.port) as c:
        t0 = time.monotonic()
        try:
            data = c.reader.read_to_eof(time.monotonic() + 4.0)
        except Timeout:
            pytest.fail("silent connection still open after 4 s")
        elapsed = time.monotonic() - t0
        assert c.reader.eof, "silent connection still open after %.2f s" % elapsed
        assert elapsed <= SLACK, "closed after %.2f s, header 1s" % elapsed
        assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data[:100]


def test_slow_reader_cut_by_send_timeout(env):
    size = 200 * 1024 * 1024
    slow = Client(env.port, rcvbuf=4096)
    try:
        slow.request("GET", "/huge?size=%d" % size)
        t0 = time.monotonic()
        peak = 0
        # The client reads nothing. The gateway must keep serving others, with bounded memory.
        while time.monotonic() - t0 < 1.5:
            peak = max(peak, env.gw.rss_kb())
            t1 = time.monotonic()
            with Client(env.port) as other:
                other.request("GET", "/other")
                o = other.read_response(timeout=3.0)
            assert o.status == 200, o
            assert time.monotonic() - t1 < 1.5, "gateway unresponsive while a client is slow"
            time.sleep(0.1)
        peak = max(peak, env.gw.rss_kb())
        assert peak < 64 * 1024, "gateway RSS reached %d KB for a slow 200 MB response" % peak
        time.sleep(1.5)  # the send timeout (1 s) has passed with no progress
        # Now read: what was in flight arrives, then the close, long before 200 MB.
        got = 0
        first = b""
        deadline = time.monotonic() + 10.0
        while True:
            try:
                slow.reader._fill(deadline)
            except Closed:
                break
            except Timeout:
                pytest.fail("slow reader's connection still open (%d bytes read)" % got)
            if len(first) < 4096:
                first += bytes(slow.reader.buf[: 4096 - len(first)])
            got += len(slow.reader.buf)
            slow.reader.buf.clear()
            assert got < 64 * 1024 * 1024, "the gateway kept sending to a stalled client"
        assert got < size
    finally:
        slow.close()
    env.gw.assert_alive()
    assert first.startswith(b"HTTP/1.1 200 "), first[:100]
    rid = re.search(rb"\r\nX-Request-Id: ([^\r]+)\r\n", first, re.I).group(1).decode()
    e = env.gw.access_for(rid)
    assert e["termination"] == "send_timeout", e


def test_max_connections(make_gateway, make_stub):
    up = make_stub("echo")
    g = make_gateway(config(
        listeners=[listener("public")],
        limits={"max_connections": 4},
        timeouts={"header": "5s", "body": "5s", "keepalive": "5s", "send": "5s"},
        upstreams={"echo": {"targets": [up.address], "connect_timeout": "300ms",
                            "read_timeout": "3s", "retries": 0}},
        routes=[{"name": "all", "listeners": ["public"], "match": {"path": "/"},
                 "upstream": "echo"}]))
    time.sleep(0.2)  # the start-up probe connection is gone (it counted while open)
    held = []
    try:
        for i in range(4):
            c = Client(g.port)
            held.append(c)
            c.request("GET", "/held%d" % i)
            assert c.read_response().status == 200
        # A fifth connection is answered 503 or closed (refused); never served.
        snap = up.snapshot()
        for _ in range(2):
            with Client(g.port, timeout=3.0) as extra:
                try:
                    r = extra.read_response(timeout=3.0)
                    assert r.status == 503, r
                    assert extra.wait_closed(2.0)
                except Closed:
                    pass  # refused: closed (or reset) without an answer
                except Timeout:
                    pytest.fail("connection over max_connections neither answered nor closed")
        assert up.since(snap)[2] == b""
        # The connections already open keep working.
        for i, c in enumerate(held):
            c.request("GET", "/again%d" % i)
            r = c.read_response()
            assert r.status == 200 and not r.has_close(), r
        # Once one closes, a new connection is served again.
        held.pop().close()
        deadline = time.monotonic() + 3.0
        while True:
            try:
                with Client(g.port) as c:
                    c.request("GET", "/after")
                    r = c.read_response(timeout=2.0)
                if r.status == 200:
                    break
            except (Closed, OSError):
                pass
            assert time.monotonic() < deadline, "no new connection served after one closed"
            time.sleep(0.1)
    finally:
        for c in held:
            c.close()


def _cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks


def test_out_of_descriptors_pauses_accept(make_gateway, make_stub):
    """EMFILE: accepting pauses (no busy loop), a rate-limited line is logged, the connections
    already open keep working, and accepting resumes once descriptors are free again."""
    up = make_stub("echo")
    cfg = config(
        listeners=[listener("public")],
        timeouts={"header": "5s", "body": "5s", "keepalive": "10s", "send": "5s"},
        upstreams={"echo": {"targets": [up.address], "connect_timeout": "300ms",
                            "read_timeout": "3s", "retries": 0, "keepalive": 0}},
        routes=[{"name": "all", "listeners": ["public"], "match": {"path": "/"},
                 "upstream": "echo"}])
    g = make_gateway(cfg, args=lambda conf_path: [
        "prlimit", "--nofile=24:24", str(BINARY), "-c", str(conf_path)])
    held = []
    try:
        time.sleep(0.2)
        base = g.num_fds()
        # Fill the table: every connection beyond the limit waits in the accept queue.
        for i in range(24 - base + 8):
            held.append(Client(g.port, timeout=5.0))
        time.sleep(0.5)
        assert g.num_fds() <= 24
        t0 = _cpu_ticks(g.serving_pid())
        time.sleep(1.0)
        burned = _cpu_ticks(g.serving_pid()) - t0
        assert burned < 30, "the gateway spun at EMFILE: %d ticks of CPU in 1 s" % burned
        assert "accepting paused" in g.error_text()
        # Free the table: the connection accepted before keeps working (the queued ones are
        # accepted meanwhile and may take what a single freed descriptor would give back, so the
        # upstream connection needs more than one free), and new connections are served.
        for c in held[1:]:
            c.close()
        held = held[:1]
        time.sleep(0.5)
        c = held[0]
        c.request("GET", "/works")
        assert c.read_response().status == 200
        deadline = time.monotonic() + 5
        while True:
            try:
                with Client(g.port, timeout=2.0) as n:
                    n.request("GET", "/after")
                    if n.read_response().status == 200:
                        break
            except (Closed, Timeout, OSError):
                pass
            assert time.monotonic() < deadline, "accepting never resumed"
            time.sleep(0.1)
        g.assert_alive()
    finally:
        for c in held:
            c.close()


def test_slow_upstream_reader_is_not_a_client_body_timeout(make_gateway):
    """While the upstream is slow to take the body, the gateway stops reading the client; the
    client's body deadline must not run meanwhile (the upstream's send_timeout governs)."""
    import socket as so
    lsock = so.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    size = 24 * 1024 * 1024  # more than every buffer on the way (kernel and gateway)
    got = {}

    def upstream():
        c, _ = lsock.accept()
        time.sleep(2.5)  # longer than the client body timeout: the body backs up meanwhile
        data = b""
        while b"\r\n\r\n" not in data:
            data += c.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        n = len(body)
        while n < size:
            chunk = c.recv(1 << 20)
            if not chunk:
                break
            n += len(chunk)
        got["n"] = n
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        c.close()

    t = threading.Thread(target=upstream, daemon=True)
    t.start()
    g = make_gateway(config(
        listeners=[listener("public")],
        timeouts={"header": "2s", "body": "1s", "keepalive": "5s", "send": "5s"},
        limits={"body": "64m"},
        upstreams={"slow": {"targets": ["127.0.0.1:%d" % lsock.getsockname()[1]],
                            "read_timeout": "10s", "send_timeout": "10s", "retries": 0}},
        routes=[{"name": "all", "listeners": ["public"], "match": {"path": "/"},
                 "upstream": "slow"}]))
    try:
        with Client(g.port, timeout=20.0) as c:
            c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
            chunk = b"x" * (1 << 20)
            for _ in range(size // len(chunk)):
                c.send(chunk)
            r = c.read_response()
        assert r.status == 200 and r.body == b"ok", r
        t.join(5)
        assert got.get("n") == size, got
    finally:
        lsock.close()
