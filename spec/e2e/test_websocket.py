"""WebSocket proxying end to end (issue 9, docs/websocket.md), run by ./passerelle between a raw
client of our own (spec/support/wsfix.py: hand-built frames, strict parsing of what the gateway
sends) and two kinds of upstream (spec/support/ws_upstream.py): a python3-websockets echo server
and a raw TCP upstream driven by each test, which records every byte it receives. Run with
/usr/bin/python3.

One gateway serves most of the module: /ws/, /small/ (max_message 1k), /origin/, /idle/ (1 s),
/key/ (key_auth), /rl/ (rate_limit 2/h) to the echo server; /raw/ and /rawp/ to raw upstreams;
/plain/, /http/, /keyp/ without WebSocket; /p/ with the ws policy `wsp`; /t/ on a second listener
whose policy chain is L (listener), R1, R2. The lifecycle tests (reload, stops,
max_connections), the client that does not read and the buffer budget start their own.

- Handshake: 101 with Upgrade, Connection, the Accept for the client's key, X-Request-Id and the
  upstream's end-to-end fields; an access-log line with status 101 and termination `upgraded`;
  what the upstream receives (Key, Version, Origin, no Sec-WebSocket-Extensions even when the
  client offered permessage-deflate); subprotocols relayed both ways; field variants (case,
  `Connection: keep-alive, Upgrade`); a 101 with a wrong or missing Accept, an extension, a
  subprotocol not offered (or two), no Upgrade or Connection: 502 and the upstream connection
  closed; frames behind the upstream's 101 in the same write reach the client; a frame the
  client pipelined behind its upgrade is not forwarded before the 101; a plain request on a
  WebSocket route is proxied as usual.
- Refused without contacting the upstream: missing / empty / 15-byte / 17-byte / non-base64 key,
  POST, a body, HTTP/1.0, no Connection: upgrade, Upgrade: foo or none, version missing or
  malformed, two Origin fields (400), versions 8 and 14 (426 with Sec-WebSocket-Version: 13), an
  Origin not allowed (403); an allowed Origin in any case, and no Origin, pass.
- A route without `websocket`: the upgrade is proxied as a plain request without Upgrade; a 101
  from that upstream is a 502.
- A refused upgrade (403, 200) with bytes pipelined behind it: a frame is a 400, a second request
  is routed and authenticated on its own; nothing pipelined ever reaches the upstream.
- key_auth and rate_limit on the handshake (401 / 101, 429 for the third).
- Frames, Autobahn|Testsuite groups 1-7 and 9 rebuilt by hand: lengths 0-65536 (also sent in
  chops), pings/pongs (payload relayed, 126 bytes and fragmented ones refused, relayed to the
  upstream rather than answered), RSV bits, reserved opcodes, fragmentation (interleaved
  controls, bad continuations), UTF-8 (valid texts whole and cut into 1-byte fragments, invalid
  ones -> 1007, fail-fast on the fragment holding the bad byte, also inside a frame sent in two
  writes), the close handshake (codes valid and invalid, 1-byte, 123-byte-reason and 126-byte
  payloads, bad reasons, a message then close in order, data after close), large messages (1
  and 4 MiB, in 64 KiB fragments, 1000 small ones), unmasked frames, 64-bit lengths with the top
  bit, max_message (at the header, fragmented, exactly at the limit, the 1m default). The side at
  fault gets the code; the echo upstream then sees close 1001.
- Towards the upstream: fresh masking keys, and streaming (a frame's first bytes arrive before
  the client sent the rest) when no ws_message policy is set.
- Upstream violations (masked frames, RSV, reserved opcode, bad continuation, 126-byte ping, bad
  close frames, bad UTF-8, oversize): the upstream gets the code, the client 1011. Drops without
  close on either side (FIN and RST, also right after the 101), a client gone before the upstream
  answered its upgrade, a close started by the upstream, a close not answered within
  close_timeout, 50 WebSockets at once: every TCP connection ends and the worker's sockets return
  to their count before the test (no half-open sockets).
- Idle timeout (close 1001 on both sides after ~1 s; pings keep it open).
- ws_connect / ws_message / ws_close policies: pass, replace in each direction, opcode change,
  direction and opcode seen, drop (inbound and outbound), reply (text, binary, to the upstream),
  close (with a code and reason, with the defaults), errors (in either direction, invalid UTF-8
  set as text, an invalid close code, a text reply that is not UTF-8: 1011 on both sides and a
  log line), ctx from the handshake, ws_connect that counts / replies / waits / closes, the chain
  order (listener first) and a drop ending it, order kept while a policy waits (also for a close
  behind the message), a client that drops while a policy waits, ws_close's info (client,
  upstream, dropped).
- Lifecycle: reload (an open WebSocket keeps its policy and limits, a new one gets the new; also
  when the route and its policy file are removed), graceful stop (works until the drain
  deadline, then close 1001, exit 0), fast stop, max_connections (WebSockets count, the next
  connection gets 503).
- Memory: a client that reads nothing does not grow the gateway (backpressure; RSS not checked
  on the -asan build); limits.websocket_buffer: stalled partial messages pause the reading of
  others until they end.
"""
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

import stubs
import wsfix
from gw import (BINARY, REPO, Client, build_request, config, connect_on_worker, listener, to_yaml,
                wait_for)
from harness import module_env
from httpio import pattern_body
from policyfix import no_worker_crash, route, track, write_policies  # noqa: F401
from ws_upstream import EchoServer, RawUpstream
from wsfix import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, close_payload,
                   frame, tokens)

ALLOWED_ORIGIN = "https://app.example.com"
SMALL_MAX = 1024            # max_message of /small/
RAW_MAX = 65536             # max_message of /raw/


# ---- policies ----

# The module's ws policy: what it does with an inbound message depends on its text.
WSP = r"""
local pgw = require "pgw"
return {
    access = function(conf, req)
        local ctx = pgw.ctx()
        ctx.user = pgw.req.get_header("X-User")
        ctx.refuse = pgw.req.get_header("X-Refuse")
        if pgw.req.get_header("X-Misuse") then
            pgw.ws.reply("pgw.ws outside the ws stages")
        end
    end,

    ws_connect = function(conf)
        local ctx = pgw.ctx()
        ctx.n = 0
        if ctx.refuse then
            return pgw.ws.close(tonumber(ctx.refuse), "refused by ws_connect")
        end
        if ctx.user == "greet" then
            pgw.ws.reply("welcome")
        elseif ctx.user == "slow" then
            pgw.sleep(0.2)
            pgw.ws.reply("welcome after a wait")
        end
    end,

    ws_message = function(conf, msg)
        local ctx = pgw.ctx()
        local d = msg.data
        if msg.direction == "outbound" then
            if d:sub(1, 5) == "down:" then
                msg.data = "DOWN(" .. d:sub(6) .. ")"
            elseif d == "out-drop" then
                return pgw.ws.drop()
            elseif d == "ask-upstream" then
                pgw.ws.reply("answer for the upstream")
                return pgw.ws.drop()
            elseif d == "outerror" and ctx.outerror then
                error("wsp outbound failure on purpose")
            end
            return
        end
        ctx.n = ctx.n + 1
        if d:sub(1, 3) == "up:" then
            msg.data = "UP(" .. d:sub(4) .. ")"
        elseif d:sub(1, 4) == "bin:" then
            msg.opcode = "binary"
            msg.data = d:sub(5)
        elseif d == "drop" then
            return pgw.ws.drop()
        elseif d:sub(1, 6) == "reply:" then
            pgw.ws.reply(d:sub(7))
            return pgw.ws.drop()
        elseif d:sub(1, 6) == "close:" then
            local code, reason = d:match("^close:(%d+):(.*)$")
            return pgw.ws.close(tonumber(code), reason)
        elseif d == "error" then
            error("wsp failure on purpose")
        elseif d == "count" then
            pgw.ws.reply("count=" .. ctx.n)
            return pgw.ws.drop()
        elseif d == "id" then
            pgw.ws.reply("id=" .. pgw.ws.id())
            return pgw.ws.drop()
        elseif d == "user" then
            pgw.ws.reply("user=" .. tostring(ctx.user))
            return pgw.ws.drop()
        elseif d == "info" then
            pgw.ws.reply(msg.direction .. "," .. msg.opcode .. "," .. #msg.data)
            return pgw.ws.drop()
        elseif d:sub(1, 6) == "sleep:" then
            if tonumber(d:sub(7)) % 2 == 0 then pgw.sleep(0.05) end
        elseif d == "badutf" then
            msg.data = "ok\xff\xfe"
        elseif d == "badcode" then
            return pgw.ws.close(999, "no such code")
        elseif d:sub(1, 9) == "replybin:" then
            pgw.ws.reply(d:sub(10), "binary")
            return pgw.ws.drop()
        elseif d == "outerror" then
            ctx.outerror = true
        elseif d == "close-default" then
            return pgw.ws.close()
        elseif d == "badreply" then
            pgw.ws.reply("bad \xff text")
        end
    end,

    ws_close = function(conf, info)
        pgw.log.info("wsclose user=", tostring(pgw.ctx().user), " code=", info.code,
                     " by=", info.by, " in=", info.messages_in, " out=", info.messages_out,
                     " bytes_in=", info.bytes_in, " bytes_out=", info.bytes_out)
    end,
}
"""

# A chain element: records its runs and appends its tag to inbound messages.
TAG = r"""
local pgw = require "pgw"
return {
    schema = { tag = { type = "string", required = true } },
    ws_connect = function(conf)
        local ctx = pgw.ctx()
        ctx.order = (ctx.order or "") .. "connect:" .. conf.tag .. ","
    end,
    ws_message = function(conf, msg)
        if msg.direction ~= "inbound" then return end
        local ctx = pgw.ctx()
        ctx.seen = (ctx.seen or "") .. conf.tag
        if msg.data == "order" then
            pgw.ws.reply(ctx.order .. "|" .. ctx.seen)
            return pgw.ws.drop()
        end
        if msg.data == "drop-at-" .. conf.tag then return pgw.ws.drop() end
        if msg.data:sub(1, 8) ~= "drop-at-" then
            msg.data = msg.data .. "[" .. conf.tag .. "]"
        end
    end,
}
"""

WSPASS = """
return { ws_message = function(conf, msg) end }
"""


def life_policy(tag):
    return """
    return {
        ws_message = function(conf, msg)
            if msg.direction == "inbound" then msg.data = "%s:" .. msg.data end
        end,
    }
    """ % tag


WSPUSH = """
local pgw = require "pgw"
return {
    access = function(conf)
        local q = pgw.req.get_query_arg
        local ok, err = pgw.ws.send(q("id") or "", q("msg") or "", q("op"))
        return pgw.exit(200, ok and "sent" or ("error: " .. err),
                        { ["Content-Type"] = "text/plain" })
    end,
}
"""

WSID = """
local pgw = require "pgw"
return { ws_connect = function(conf) pgw.ws.reply("id=" .. pgw.ws.id()) end }
"""

VALIDATE_SCHEMA = {
    "type": "object", "required": ["action"], "additionalProperties": False,
    "properties": {
        "action": {"type": "string", "enum": ["join", "leave", "send"]},
        "text": {"type": "string", "maxLength": 10},
        "n": {"type": "integer", "minimum": 1, "maximum": 9},
        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "minLength": 1}},
        "to": {"type": ["string", "null"]},
    },
}


# ---- the module's gateway ----

def build_config(files, ups):
    pdir = files / "policies"
    write_policies(pdir, {"wsp": WSP, "tag": TAG, "wspush": WSPUSH, "wsid": WSID})

    def ws(**kw):
        d = {"close_timeout": "1s"}
        d.update(kw)
        return d

    routes = [
        route("/ws/", upstream="echo", websocket=ws(max_message="8m", idle_timeout="30s")),
        route("/small/", upstream="echo", websocket=ws(max_message=SMALL_MAX)),
        route("/origin/", upstream="echo", websocket=ws(allowed_origins=[ALLOWED_ORIGIN])),
        route("/idle/", upstream="echo", websocket=ws(idle_timeout="1s")),
        route("/key/", [{"key_auth": {}}], upstream="echo", websocket=True),
        route("/rl/", [{"rate_limit": {"by": "route", "limit": 2, "window": "1h"}}],
              upstream="echo", websocket=True),
        route("/raw/", upstream="raw", websocket=ws(max_message="64k")),
        route("/plain/", upstream="raw"),
        route("/rawp/", upstream="rawp", websocket=ws()),
        route("/http/", upstream="plain"),
        route("/keyp/", [{"key_auth": {}}], upstream="plain"),
        route("/p/", ["wsp"], upstream="echo", websocket=ws(max_message="64k")),
        route("/wrl-close/", [{"ws_rate_limit": {"messages": 3, "window": "1h"}}],
              upstream="echo", websocket=ws()),
        route("/wrl-drop/", [{"ws_rate_limit": {"messages": 2, "window": "1h",
                                                "action": "drop"}}],
              upstream="echo", websocket=ws()),
        route("/wrl-bytes/", [{"ws_rate_limit": {"bytes": 10, "window": "1h", "action": "reply",
                                                 "reply": "slow down"}}],
              upstream="echo", websocket=ws()),
        route("/wrl-consumer/", [{"key_auth": {}},
                                 {"ws_rate_limit": {"by": "consumer", "messages": 3,
                                                    "window": "1h", "scope": "route"}}],
              upstream="echo", websocket=ws()),
        route("/wrl-out/", [{"ws_rate_limit": {"direction": "outbound", "messages": 1,
                                               "window": "1h", "action": "drop"}}],
              upstream="echo", websocket=ws()),
        route("/push/", ["wspush"], upstream="plain"),
        route("/admin/ws/", [{"key_auth": {}}, {"ws_push": {"max_message": "1k"}}],
              upstream="plain"),
        route("/wsid/", ["wsid"], upstream="echo", websocket=ws()),
        route("/wv/", [{"ws_validate": {"schema": VALIDATE_SCHEMA}}], upstream="echo",
              websocket=ws()),
        route("/wv-close/", [{"ws_validate": {"schema": {"type": "object"}, "action": "close"}}],
              upstream="echo", websocket=ws()),
        route("/t/", [{"tag": {"tag": "R1"}}, {"tag": {"tag": "R2"}}], upstream="echo",
              listeners=["side"], websocket=ws()),
    ]
    upstreams = {name: {"targets": [ups[name].address], "retries": 0}
                 for name in ("echo", "raw", "rawp", "plain")}
    side = dict(listener("side"), policies=[{"tag": {"tag": "L"}}])
    return config(listeners=[listener("public"), side], upstreams=upstreams, routes=routes,
                  policies={"dir": str(pdir)},
                  store={"dir": str(files / "store"), "durable_map": "1m", "fast_map": "2m"})


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    files = tmp_path_factory.mktemp("ws-files")

    def build():
        ups = {"echo": EchoServer(), "raw": RawUpstream("raw"), "rawp": RawUpstream("rawp"),
               "plain": stubs.Upstream("plain")}
        return build_config(files, ups), ups

    e = module_env(request, tmp_path_factory, build)
    e.apikey = e.add_consumer_key("alice")
    return e


@pytest.fixture
def e(env):
    """The module's gateway, watched for worker crashes during the test."""
    track(env.gw)
    env.gw.assert_alive()
    env.raw.drain()
    env.rawp.drain()
    return env


@pytest.fixture
def echo():
    """An echo upstream of the test's own (for the tests that start their own gateway)."""
    s = EchoServer()
    yield s
    s.stop()


# ---- helpers ----

def ws_open(e, prefix="/ws/", name="echo", protocol=None, **kw):
    """A WebSocket through the gateway to the echo upstream; .cid names its upstream
    connection (e.echo.conn(c.cid))."""
    cid = wsfix.unique_id()
    c = wsfix.connect(e.port, "%s%s?c=%s" % (prefix, name, cid), protocol=protocol, **kw)
    c.cid = cid
    e.echo.conn(cid)    # registered upstream (the handler starts after its 101 was sent)
    return c


def upstream_of(e, c, timeout=3.0):
    """The echo upstream's record of <c>'s connection, once it ended."""
    return e.echo.conn(c.cid).wait_done(timeout)


def close_clean(c, code=1000, reason="done"):
    """A clean close started by the client; the close comes back and the TCP connection ends."""
    c.send_close(code, reason)
    c.expect_close(code, reason, skip_data=False)
    c.close()


def client_fault(e, c, code, timeout=3.0):
    """The client gets close <code> and the TCP close; the echo upstream gets close 1001."""
    c.expect_close(code, timeout=timeout)
    c.close()
    up = upstream_of(e, c)
    assert up.close_code == 1001, (
        "the upstream got close %r (%r) after the client's violation; expected 1001"
        % (up.close_code, up.close_reason))
    return up


def echo_ok(c, data=b"still alive", opcode=OP_TEXT):
    c.send_frame(opcode, data)
    got = c.recv_message()
    assert got == (opcode, data), "echo of %r: %r" % (data[:50], (got[0], got[1][:50]))


def raw_tunnel(e, path="/raw/t", upstream=None, **kw):
    """A WebSocket through the gateway to the raw upstream: (client, upstream conn, request)."""
    up = upstream or e.raw
    c = wsfix.WSClient(e.port)
    c.send_handshake(path, **kw)
    conn = up.next_conn()
    req = conn.read_request()
    conn.accept(req)
    c.read_handshake()
    c.check_101()
    return c, conn, req


def sockets_of(g):
    """The worker's open sockets (listening, control, client and upstream connections): like
    Gateway.num_fds() but blind to files the worker opens lazily (the store's)."""
    pid = g.serving_pid()
    out = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:"):
            out.append(link)
    return out


def fds_back(g, base, timeout=3.0):
    """Waits until the worker holds no more sockets than <base> (a len(sockets_of(g)) taken
    before the test): no half-open connection is left behind."""
    deadline = time.monotonic() + timeout
    while True:
        n = len(sockets_of(g))
        if n <= base:
            return
        if time.monotonic() > deadline:
            raise AssertionError("the worker holds %d sockets %.1f s later, %d before the test "
                                 "(half-open connections?)" % (n, timeout, base))
        time.sleep(0.02)


def wait_log(g, pattern, mark=0, timeout=3.0):
    rx = re.compile(pattern)
    return wait_for(lambda: [l for l in g.error_lines()[mark:] if rx.search(l)], timeout,
                    "error-log line matching %r (last lines: %r)" % (pattern, g.error_lines()[-5:])
                    )[0]


def handshake_refused(e, path, status, upstream_count, closes=True, **kw):
    """An upgrade request answered <status> by the gateway itself: <upstream_count>() does not
    change, and (<closes>: the handshake checks, docs/websocket.md) the connection is then
    closed. Returns the response."""
    before = upstream_count()
    with wsfix.WSClient(e.port) as c:
        got, headers, _ = c.handshake(path, **kw)
        r = c.response
        assert got == status, "handshake %r answered %s, expected %s: %r" % (kw, got, status, r)
        if closes:
            assert c.http.wait_closed(2.0), "connection still open after the %s" % status
    time.sleep(0.05)
    assert upstream_count() == before, "the upstream was contacted for a refused handshake %r" % kw
    return r


# ---- 1. handshake ----

def check_refuses(tmp_path, policy, conf, error):
    """`passerelle check` on a WebSocket route with <policy>: <conf> fails with <error> and
    names the file."""
    cfg = config(listeners=[listener("public")], upstreams={"a": {"targets": ["127.0.0.1:9"]}},
                 routes=[route("/", [{policy: conf}], upstream="a", websocket=True)])
    path = tmp_path / "gw.yaml"
    path.write_text(to_yaml(cfg) + "\n")
    cp = subprocess.run([str(BINARY), "check", "-c", str(path)], cwd=str(REPO),
                        capture_output=True, text=True, timeout=60)
    out = cp.stdout + cp.stderr
    assert cp.returncode != 0 and error in out and str(path) in out, out


# ---- ws_rate_limit (the built-in message limits) ----

def test_ws_rate_limit_close(e):
    """messages: 3 per hour, action close: the fourth message gets close 1008 on both sides and
    never reaches the upstream."""
    c = ws_open(e, prefix="/wrl-close/")
    for i in range(3):
        echo_ok(c, b"m%d" % i)
    c.send_text(b"m3")
    f = c.expect_close(1008, "rate limit exceeded")
    assert f is not None
    c.close()
    up = upstream_of(e, c)
    assert up.messages == ["m0", "m1", "m2"] and up.close_code == 1008, up


def test_ws_rate_limit_drop_counts_per_connection(e):
    """action drop, by connection: the third message of a connection is dropped silently, the
    connection stays open; another connection has its own count."""
    c1 = ws_open(e, prefix="/wrl-drop/")
    c2 = ws_open(e, prefix="/wrl-drop/")
    echo_ok(c1, b"a1")
    echo_ok(c1, b"a2")
    c1.send_text(b"a3")           # dropped
    echo_ok(c2, b"b1")            # c2 counts apart
    c1.send_ping(b"p")
    f = c1.recv_frame(3.0)   # nothing came back for a3
    assert (f.opcode, f.payload) == (OP_PONG, b"p"), f
    close_clean(c1)
    close_clean(c2)
    assert upstream_of(e, c1).messages == ["a1", "a2"]


def test_ws_rate_limit_bytes_reply(e):
    """bytes: 10 per hour, action reply: a message that would pass the byte budget is dropped
    and the client gets the reply text; smaller ones within the budget still pass."""
    c = ws_open(e, prefix="/wrl-bytes/")
    echo_ok(c, b"123456")         # 6 bytes
    c.send_text(b"12345")         # 11 > 10: refused, counts nothing
    assert c.recv_message() == (OP_TEXT, b"slow down")
    echo_ok(c, b"1234")           # 10: within the budget
    c.send_text(b"x")
    assert c.recv_message() == (OP_TEXT, b"slow down")
    close_clean(c)
    assert upstream_of(e, c).messages == ["123456", "1234"]


def test_ws_rate_limit_by_consumer_across_connections(e):
    """by consumer: two connections with the same key share one count (3 per hour), kept in
    the store like HTTP rate limits."""
    hdrs = [("apikey", e.apikey)]
    c1 = ws_open(e, prefix="/wrl-consumer/", headers=hdrs)
    c2 = ws_open(e, prefix="/wrl-consumer/", headers=hdrs)
    echo_ok(c1, b"1")
    echo_ok(c2, b"2")
    echo_ok(c1, b"3")
    c2.send_text(b"4")
    c2.expect_close(1008)
    c2.close()
    close_clean(c1)


def test_ws_rate_limit_outbound(e):
    """direction outbound: the upstream's second message is dropped; the client's messages
    are not limited."""
    c = ws_open(e, prefix="/wrl-out/")
    echo_ok(c, b"first")
    c.send_text(b"second")        # reaches the upstream; its echo is dropped
    c.send_ping(b"q")
    f = c.recv_frame(3.0)
    assert (f.opcode, f.payload) == (OP_PONG, b"q"), f
    close_clean(c)
    assert upstream_of(e, c).messages == ["first", "second"]


@pytest.mark.parametrize("conf, error", [
    ({}, "ws_rate_limit: set messages, bytes or both"),
    ({"messages": 1, "close_code": 1005}, "1005 is not a close code a frame may carry"),
    ({"bytes": "1x"}, "ws_rate_limit.bytes"),
    ({"messages": 1, "action": "kick"}, "ws_rate_limit.action"),
    ({"messages": 1, "close_reason": "r" * 124}, "ws_rate_limit.close_reason"),
])
def test_ws_rate_limit_bad_config(tmp_path, conf, error):
    """`passerelle check` refuses a ws_rate_limit without limits, with a close code a frame may
    not carry, a bad size, an unknown action or a reason over 123 bytes, with the file:line."""
    check_refuses(tmp_path, "ws_rate_limit", conf, error)


# ---- ws_validate (JSON messages against a JSON Schema subset) ----

@pytest.mark.parametrize("payload, detail", [
    (b'{"action":"join"}', None),
    (b'{"action":"send","text":"hi","n":3,"tags":["a","b"],"to":null}', None),
    (b'{"action":"send","tags":[]}', None),
    (b'{"text":"hi"}', "$: missing action"),
    (b'{"action":"dance"}', "$.action: not one of the allowed values"),
    (b'{"action":"send","text":"0123456789x"}', "$.text: too long"),
    (b'{"action":"send","n":1.5}', "$.n: expected integer"),
    (b'{"action":"send","n":10}', "$.n: above the maximum"),
    (b'{"action":"send","tags":["a","b","c"]}', "$.tags: too many items"),
    (b'{"action":"send","tags":[""]}', "$.tags[0]: too short"),
    (b'{"action":"send","to":5}', "$.to: expected one of the types"),
    (b'{"action":"join","extra":1}', "$: unexpected member extra"),
    (b'["action"]', "$: expected object"),
    (b'{"action":', "not JSON"),
])
def test_ws_validate_reply(e, payload, detail):
    """Valid messages reach the upstream; an invalid one is dropped and its sender gets
    {"error":"invalid message","detail":...} naming where it failed (action: reply)."""
    c = ws_open(e, prefix="/wv/")
    c.send_text(payload)
    got = c.recv_message()
    if detail is None:
        assert got == (OP_TEXT, payload), got
    else:
        assert got[0] == OP_TEXT, got
        answer = json.loads(got[1])
        assert answer["error"] == "invalid message" and detail in answer["detail"], answer
    close_clean(c)
    assert upstream_of(e, c).messages == ([payload.decode()] if detail is None else [])


def test_ws_validate_close(e):
    """action: close: a message that is not a JSON object closes both sides with 1007."""
    c = ws_open(e, prefix="/wv-close/")
    echo_ok(c, b'{"ok":true}')
    c.send_text(b"[1,2]")
    c.expect_close(1007, "invalid message")
    c.close()
    up = upstream_of(e, c)
    assert up.messages == ['{"ok":true}'] and up.close_code == 1007, up


@pytest.mark.parametrize("conf, error", [
    ({}, "ws_validate.schema"),
    ({"schema": {"type": "object", "pattern": "^a"}}, "unsupported keyword pattern"),
    ({"schema": {"type": "thing"}}, "unknown type thing"),
    ({"schema": {"properties": {"a": {"maxLength": "x"}}}}, "maxLength: a number is needed"),
    ({"schema": {"additionalProperties": {"type": "string"}}}, "true or false"),
    ({"schema": {}, "close_code": 1006}, "1006 is not a close code"),
])
def test_ws_validate_bad_config(tmp_path, conf, error):
    """`passerelle check` refuses schemas with keywords outside the subset, unknown types,
    wrongly typed keywords, and close codes a frame may not carry."""
    check_refuses(tmp_path, "ws_validate", conf, error)


# ---- pgw.ws.send: push to a connection by id ----

def push(e, wid, msg, op=None):
    """Asks the /push/ route's policy to pgw.ws.send <msg> to <wid>; returns its answer."""
    q = "/push/x?id=%s&msg=%s" % (wid, msg) + ("&op=" + op if op else "")
    with Client(e.port) as h:
        h.request(target=q)
        r = h.read_response()
    assert r.status == 200, r
    return r.body.decode()


def ws_id(c):
    op, answer = c.recv_message()
    assert op == OP_TEXT and answer.startswith(b"id="), answer
    return answer.decode()[3:]


def test_push_by_id_without_message_policies(e):
    """A request's policy pushes text and binary messages to a WebSocket by its id; they reach
    the client as messages, between the upstream's; a closed or unknown id is an error."""
    c = ws_open(e, prefix="/wsid/")
    wid = ws_id(c)
    assert push(e, wid, "hello-from-http") == "sent"
    assert c.recv_message() == (OP_TEXT, b"hello-from-http")
    assert push(e, wid, "bin", op="binary") == "sent"
    assert c.recv_message() == (OP_BINARY, b"bin")
    echo_ok(c, b"still relaying")
    close_clean(c)
    wait_for(lambda: push(e, wid, "late") == "error: unknown connection",
             what="a closed connection's id refused")
    assert push(e, "0" * 32, "x") == "error: unknown connection"
    assert push(e, "not-an-id", "x") == "error: unknown connection"


def test_push_goes_through_outbound_policies(e):
    """A pushed message goes through the connection's outbound ws_message policies (the /p/
    policy rewrites outbound "down:x" as "DOWN(x)" and drops "out-drop")."""
    c = ws_open(e, prefix="/p/")
    c.send_text(b"id")
    wid = ws_id(c)
    assert push(e, wid, "down:pushed") == "sent"
    assert c.recv_message() == (OP_TEXT, b"DOWN(pushed)")
    assert push(e, wid, "out-drop") == "sent"
    echo_ok(c, b"after the dropped push")
    close_clean(c)


def test_ws_push_admin_endpoint(e):
    """The built-in ws_push behind key_auth: an authenticated POST of a message to
    /admin/ws/<id> reaches that connection's client (text, or binary with
    application/octet-stream); 401 without a key, 404 unknown id, 400 no id or bad UTF-8,
    405 not POST, 413 over max_message; the upstream is never contacted."""
    c = ws_open(e, prefix="/wsid/")
    wid = ws_id(c)
    key = [("apikey", e.apikey)]

    def post(path, body, headers=()):
        with Client(e.port) as h:
            h.request("POST", path, headers=list(headers), body=body)
            return h.read_response()
    assert post("/admin/ws/" + wid, b"hi").status == 401
    r = post("/admin/ws/" + wid, b"from the admin API", key)
    assert r.status == 202 and r.json() == {"sent": True}, r
    assert c.recv_message() == (OP_TEXT, b"from the admin API")
    r = post("/admin/ws/" + wid, b"\x00\x01", key + [("Content-Type", "application/octet-stream")])
    assert r.status == 202, r
    assert c.recv_message() == (OP_BINARY, b"\x00\x01")
    assert post("/admin/ws/" + "e" * 32, b"x", key).status == 404
    assert post("/admin/ws/", b"x", key).status == 400
    assert post("/admin/ws/" + wid, b"\xff", key).status == 400
    assert post("/admin/ws/" + wid, b"x" * 1025, key).status == 413
    with Client(e.port) as h:
        h.request("GET", "/admin/ws/" + wid, headers=key)
        assert h.read_response().status == 405
    echo_ok(c, b"nothing else arrived")
    close_clean(c)
    assert not [q for q in e.plain.requests if q.target.startswith("/admin/")]


def test_push_across_workers(make_gateway, echo, tmp_path):
    """With 2 workers, a push asked on one worker reaches a connection held by the other
    (through the master), in both directions; an unknown id is refused after every worker was
    asked. Which worker holds which socket is read from /proc, so the test knows it crossed.
    `passerelle ws-send` reaches either worker's connection (text, binary from stdin) and
    refuses unknown and malformed ids."""
    pdir = tmp_path / "policies"
    write_policies(pdir, {"wspush": WSPUSH, "wsid": WSID})
    cfg = config(listeners=[listener("public")], workers=2,
                 upstreams={"echo": {"targets": [echo.address]}},
                 routes=[route("/wsid/", ["wsid"], upstream="echo", websocket=True),
                         route("/push/", ["wspush"], upstream="echo")],
                 policies={"dir": str(pdir)})
    g = track(make_gateway(cfg))
    pids = g.wait_workers(2)

    # a WebSocket on each worker, and from an HTTP connection on each worker a push to the
    # WebSocket the other worker holds (connect_on_worker stops the other worker meanwhile)
    held = {}
    for pid in pids:
        c = connect_on_worker(g.port, pid, pids, lambda: wsfix.connect(g.port, "/wsid/echo"))
        held[pid] = (c, ws_id(c))
    for hp in pids:
        target = [p for p in pids if p != hp][0]
        c, wid = held[target]
        h = connect_on_worker(g.port, hp, pids, lambda: Client(g.port))
        h.request(target="/push/x?id=%s&msg=cross-%d" % (wid, hp))
        r = h.read_response()
        h.close()
        assert r.status == 200 and r.body == b"sent", r
        assert c.recv_message() == (OP_TEXT, ("cross-%d" % hp).encode())
    with Client(g.port) as h:
        h.request(target="/push/x?id=%s&msg=x" % ("f" * 32))
        assert h.read_response().body == b"error: unknown connection"
    # from the CLI: every worker is asked
    for pid, (c, wid) in held.items():
        cp = g.cli("ws-send", wid, "from the CLI \u2603")
        assert cp.returncode == 0 and cp.stdout == "sent\n", (cp.stdout, cp.stderr)
        assert c.recv_message() == (OP_TEXT, "from the CLI \u2603".encode())
        cp = g.cli("ws-send", wid, "--binary", "-")
        assert cp.returncode == 0, cp.stderr          # an empty binary message from stdin
        assert c.recv_message() == (OP_BINARY, b"")
    cp = g.cli("ws-send", "f" * 32, "x")
    assert cp.returncode == 1 and "unknown connection" in cp.stderr, (cp.stdout, cp.stderr)
    cp = g.cli("ws-send", "nope", "x")
    assert cp.returncode == 1 and "usage" in cp.stderr, (cp.stdout, cp.stderr)
    cp = subprocess.run([str(BINARY), "ws-send", held[pids[0]][1], "-", "--binary", "-c",
                         str(g.config_path)], input=b"\x00\xff" * 100, capture_output=True,
                        cwd=str(REPO), timeout=10)
    assert cp.returncode == 0, cp.stderr
    assert held[pids[0]][0].recv_message() == (OP_BINARY, b"\x00\xff" * 100)
    for c, _ in held.values():
        c.close()


def test_connection_id_status_and_close_line(e):
    """pgw.ws.id() is 32 random hex digits, never the X-Request-Id the client chose (a client
    must not pick another connection's id); `passerelle status` counts the open WebSockets of
    each route; the end of the connection writes an access-log line with the handshake's
    request id, the connection's id, its duration, messages and payload bytes each way, close
    code, reason and who closed."""
    c = ws_open(e, prefix="/p/", headers=[("X-Request-Id", "chosen-by-client")])
    rid = c.response.header("x-request-id")
    assert rid == "chosen-by-client"
    c.send_text(b"id")
    op, answer = c.recv_message()
    wid = answer.decode()[3:]
    assert op == OP_TEXT and re.fullmatch(r"[0-9a-f]{32}", wid), answer
    other = ws_open(e, prefix="/p/", headers=[("X-Request-Id", "chosen-by-client")])
    other.send_text(b"id")
    assert other.recv_message()[1].decode()[3:] != wid
    close_clean(other)
    echo_ok(c, b"hello", OP_TEXT)
    workers = e.gw.status()["workers"]
    assert sum(w["websockets"].get("p", 0) for w in workers) == 1, workers  # other is closed
    close_clean(c)
    entry = e.gw.wait_access(lambda x: x.get("websocket_id") == wid)[0]
    assert entry["event"] == "websocket_close" and entry["request_id"] == rid, entry
    want = {"websocket_id": wid, "route": "p", "listener": "public", "closed_by": "client",
            "close_code": 1000,
            "close_reason": "done", "messages_in": 2, "messages_out": 1, "bytes_in": 7,
            "bytes_out": 5, "upstream": e.echo.address}
    assert {k: entry.get(k) for k in want} == want, entry
    assert entry["duration_ms"] > 0 and entry["client"] == "127.0.0.1", entry
    wait_for(lambda: all(w["websockets"] == {} for w in e.gw.status()["workers"]),
             what="no open WebSocket in the status")


def test_handshake_through_the_gateway(e):
    """101 with Upgrade / Connection / the Accept of our key / X-Request-Id; text and binary
    echo; the access log's line says 101 and upgraded."""
    c = ws_open(e)
    r = c.response
    rid = r.header("x-request-id")
    assert rid, "no X-Request-Id on the 101: %r" % r.headers
    echo_ok(c, b"hello", OP_TEXT)
    echo_ok(c, b"\x00\x01\xfe\xff", OP_BINARY)
    echo_ok(c, "h\u00e9llo \u2603".encode(), OP_TEXT)
    entry = e.gw.wait_access(lambda x: x.get("request_id") == rid)[0]
    assert entry.get("status") == 101, entry
    assert entry.get("termination") == "upgraded", entry
    assert entry.get("route") == "ws", entry
    close_clean(c)
    up = upstream_of(e, c)
    assert up.messages == ["hello", b"\x00\x01\xfe\xff", "h\u00e9llo \u2603"], up.messages
    assert up.close_code == 1000 and up.close_reason == "done", up


def test_upstream_request_fields_and_no_extensions(e):
    """The upstream gets Upgrade, Connection: upgrade, the client's Key, Version 13 and Origin,
    and no Sec-WebSocket-Extensions although the client offered permessage-deflate (which the
    echo server would accept); the client's 101 has no extension either."""
    origin = "https://client.example.org"
    c = ws_open(e, name="headers", origin=origin,
                extensions="permessage-deflate; client_max_window_bits, x-webkit-deflate-frame",
                headers=[("X-Custom", "kept")])
    fields = json.loads(c.recv_text())
    lower = [(n.lower(), v) for n, v in fields]

    def all_of(name):
        return [v for n, v in lower if n == name]
    assert [v.lower() for v in all_of("upgrade")] == ["websocket"], fields
    assert "upgrade" in [t for v in all_of("connection") for t in tokens(v)], fields
    assert all_of("sec-websocket-key") == [c.key], fields
    assert all_of("sec-websocket-version") == ["13"], fields
    assert all_of("origin") == [origin], fields
    assert all_of("x-custom") == ["kept"], fields
    assert all_of("sec-websocket-extensions") == [], (
        "the permessage-deflate offer reached the upstream: %r" % fields)
    # the tunnel works uncompressed (an extension negotiated behind our back would set RSV1)
    echo_ok(c, b"x" * 1000)
    close_clean(c)


def test_subprotocols_relayed(e):
    """The offered list reaches the upstream; its choice (the first) comes back; an upstream
    that picks none gives a 101 without the field."""
    c = ws_open(e, name="subproto", protocols=["chat.v2", "chat.v1"], protocol="chat.v2")
    up = e.echo.conn(c.cid)
    offered = [t for v in up.headers_all("sec-websocket-protocol") for t in tokens(v)]
    assert offered == ["chat.v2", "chat.v1"], up.headers
    assert up.subprotocol == "chat.v2"
    echo_ok(c)
    close_clean(c)
    c = ws_open(e, protocols=["chat.v1"], protocol=None)   # /ws/echo selects nothing
    echo_ok(c)
    close_clean(c)


BAD_101 = {
    "wrong_accept": (dict(accept=wsfix.accept_for(wsfix.new_key())), {}),
    "no_accept": (dict(omit=("accept",)), {}),
    "permessage_deflate": (dict(extensions="permessage-deflate"), {}),
    "protocol_not_offered": (dict(protocol="evil"), dict(protocols=["chat"])),
    "protocol_none_offered": (dict(protocol="chat"), {}),
    "two_protocols": (dict(protocol="a, b"), dict(protocols=["a", "b"])),
    "no_upgrade": (dict(omit=("upgrade",)), {}),
    "upgrade_h2c": (dict(omit=("upgrade",), extra=[("Upgrade", "h2c")]), {}),
    "no_connection": (dict(omit=("connection",)), {}),
}


@pytest.mark.parametrize("case", sorted(BAD_101))
def test_bad_101_from_upstream_is_502(e, case):
    """A 101 that does not complete the handshake correctly: the client gets 502 and the
    upstream connection is closed by the gateway."""
    answer, client_kw = BAD_101[case]
    base = len(sockets_of(e.gw))
    c = wsfix.WSClient(e.port)
    c.send_handshake("/raw/bad101", **client_kw)
    conn = e.raw.next_conn()
    req = conn.read_request()
    conn.accept(req, **answer)
    status, _, _ = c.read_handshake()
    assert status == 502, "a bad 101 (%s) relayed as %s: %r" % (case, status, c.response)
    assert conn.wait_eof(3.0), "the upstream connection of a bad 101 was not closed"
    c.close()
    conn.close()
    fds_back(e.gw, base)


# ---- 2. invalid handshakes, answered without the upstream ----

INVALID_HANDSHAKES = {
    "no_key": (400, dict(omit=("key",))),
    "key_15_bytes": (400, dict(key="MDEyMzQ1Njc4OWFiY2Rl")),          # base64 of 15 bytes
    "key_17_bytes": (400, dict(key="MDEyMzQ1Njc4OWFiY2RlZmc=")),      # base64 of 17 bytes
    "key_not_base64": (400, dict(key="!!!!!!!!!!!!!!!!!!!!!!==")),
    "key_empty": (400, dict(key="")),
    "post": (400, dict(method="POST")),
    "get_with_body": (400, dict(body=b"hello")),
    "get_with_chunked_body": (400, dict(headers=[("Transfer-Encoding", "chunked")],
                                        body=b"5\r\nhello\r\n0\r\n\r\n")),
    "version_field_only": (400, dict(omit=("upgrade", "connection", "key"))),
    "http_1_0": (400, dict(http="HTTP/1.0")),
    "connection_keep_alive": (400, dict(connection="keep-alive")),
    "no_connection": (400, dict(omit=("connection",))),
    "upgrade_foo": (400, dict(upgrade="foo")),
    "no_upgrade": (400, dict(omit=("upgrade",))),
    "version_missing": (400, dict(omit=("version",))),
    "version_malformed": (400, dict(version="13abc")),
    "two_origins": (400, dict(headers=[("Origin", "https://a.example"),
                                       ("Origin", "https://b.example")])),
    "version_8": (426, dict(version="8")),
    "version_14": (426, dict(version="14")),
}


@pytest.mark.parametrize("case", sorted(INVALID_HANDSHAKES))
def test_invalid_handshake_refused_without_upstream(e, case):
    status, kw = INVALID_HANDSHAKES[case]
    r = handshake_refused(e, "/raw/invalid", status, lambda: e.raw.connections, **kw)
    if status == 426:
        assert r.headers_all("sec-websocket-version") == ["13"], r.headers
    assert not r.headers_all("sec-websocket-accept"), r.headers


def test_key_lengths_are_what_we_think():
    import base64
    assert len(base64.b64decode(INVALID_HANDSHAKES["key_15_bytes"][1]["key"])) == 15
    assert len(base64.b64decode(INVALID_HANDSHAKES["key_17_bytes"][1]["key"])) == 17


@pytest.mark.parametrize("origin", ["https://evil.example.com", "null",
                                    "https://app.example.com.evil.com",
                                    "http://app.example.com", "https://app.example.com:8443"])
def test_origin_not_allowed_is_403(e, origin):
    handshake_refused(e, "/origin/x", 403, e.echo.count, origin=origin)


def test_two_origin_fields_are_400_even_when_both_allowed(e):
    handshake_refused(e, "/origin/x", 400, e.echo.count,
                      headers=[("Origin", ALLOWED_ORIGIN), ("Origin", ALLOWED_ORIGIN)])


@pytest.mark.parametrize("origin", [ALLOWED_ORIGIN, "HTTPS://APP.Example.COM", None])
def test_origin_allowed_or_absent(e, origin):
    c = ws_open(e, prefix="/origin/", origin=origin)
    echo_ok(c)
    close_clean(c)


# ---- 3. a route without websocket ----

def test_upgrade_on_a_plain_route_is_a_plain_request(e):
    """The upstream gets the request without Upgrade and without Connection: upgrade; its 200
    is relayed; a 101 from it is a 502."""
    for answer in ("200", "101"):
        c = wsfix.WSClient(e.port)
        c.send_handshake("/plain/x")
        conn = e.raw.next_conn()
        req = conn.read_request()
        assert req.headers_all("upgrade") == [], "Upgrade forwarded on a plain route: %r" % req
        conn_tokens = [t for v in req.headers_all("connection") for t in tokens(v)]
        assert "upgrade" not in conn_tokens, req
        if answer == "200":
            conn.respond(200, [("Connection", "close")], b"plain answer")
            status, _, _ = c.read_handshake()
            assert status == 200 and c.response.body == b"plain answer", c.response
        else:
            conn.accept(req)
            status, _, _ = c.read_handshake()
            assert status == 502, "a 101 on a plain route relayed as %r" % c.response
            assert conn.wait_eof(3.0), "the upstream connection that answered 101 stayed open"
        c.close()
        conn.close()


# ---- 4. refused upgrade and pipelining ----

def _refused_upgrade(e, status, extra):
    """Sends an upgrade to /rawp/ with <extra> bytes behind it in the same write; the raw
    upstream answers <status> (Connection: close). Returns (client, upstream conn, request)."""
    c = wsfix.WSClient(e.port)
    c.send_handshake("/rawp/x", extra=extra)
    conn = e.rawp.next_conn()
    req = conn.read_request()
    conn.respond(status, [("Connection", "close"), ("X-Refused", "yes")], b"refused upgrade")
    got, _, _ = c.read_handshake()
    assert got == status and c.response.body == b"refused upgrade", c.response
    return c, conn, req


def _only_the_upgrade_reached(e, conn, req):
    assert conn.wait_eof(3.0), "the gateway kept the refused upgrade's upstream connection"
    assert conn.received == req.raw, (
        "bytes after the refused upgrade request reached the upstream: %r" %
        conn.received[len(req.raw):][:200])
    assert e.rawp.no_new_conn(0.2), "a second connection reached the upstream"


@pytest.mark.parametrize("status", [403, 200])
def test_refused_upgrade_then_pipelined_frame_is_a_bad_request(e, status):
    data = frame(OP_TEXT, b"tunnel data that must not pass")
    c, conn, req = _refused_upgrade(e, status, data)
    r = c.http.read_response()
    assert r.status == 400, "the pipelined frame bytes were answered %r" % r
    assert c.http.wait_closed(2.0)
    c.close()
    _only_the_upgrade_reached(e, conn, req)


@pytest.mark.parametrize("status", [403, 200])
def test_refused_upgrade_then_pipelined_request_is_authenticated(e, status):
    """The second request goes to /keyp/ (key_auth) without a key: 401 from the gateway."""
    snap = e.plain.snapshot()
    c, conn, req = _refused_upgrade(e, status, build_request("GET", "/keyp/next"))
    r = c.http.read_response()
    assert r.status == 401, "the pipelined request was answered %r" % r
    c.close()
    _only_the_upgrade_reached(e, conn, req)
    assert e.plain.since(snap)[0] == [], "the refused pipelined request reached an upstream"


def test_refused_upgrade_then_pipelined_request_is_routed(e):
    """The second request goes to /http/: routed to its own upstream, without Upgrade."""
    snap = e.plain.snapshot()
    c, conn, req = _refused_upgrade(e, 403, build_request("GET", "/http/next"))
    r = c.http.read_response()
    assert r.status == 200 and r.header("x-stub") == "plain", r
    got = e.plain.since(snap)[0]
    assert [g.target for g in got] == ["/http/next"], got
    assert got[0].headers_all("upgrade") == [], got[0].headers
    c.close()
    _only_the_upgrade_reached(e, conn, req)


def test_refused_upgrade_then_frame_and_request(e):
    """Frame and request both behind the upgrade: the frame is a 400 (connection closed), the
    request never runs and nothing reaches any upstream."""
    snap = e.plain.snapshot()
    data = frame(OP_BINARY, b"\x00" * 10) + build_request("GET", "/http/after")
    c, conn, req = _refused_upgrade(e, 403, data)
    r = c.http.read_response()
    assert r.status == 400, r
    assert c.http.wait_closed(2.0)
    c.close()
    _only_the_upgrade_reached(e, conn, req)
    assert e.plain.since(snap)[0] == [], "a request behind garbage was served"


# ---- 5. policies on the handshake ----

def test_key_auth_on_the_handshake(e):
    handshake_refused(e, "/key/x", 401, e.echo.count, closes=False)
    handshake_refused(e, "/key/x", 401, e.echo.count, closes=False,
                      headers=[("apikey", "pgw_" + "x" * 32)])
    c = ws_open(e, prefix="/key/", headers=[("apikey", e.apikey)])
    echo_ok(c)
    close_clean(c)


def test_rate_limit_on_handshakes(e):
    opened = []
    try:
        for _ in range(2):
            opened.append(ws_open(e, prefix="/rl/"))
        r = handshake_refused(e, "/rl/x", 429, e.echo.count, closes=False)
        assert r.header("retry-after"), r.headers
        for c in opened:   # the open ones are not affected
            echo_ok(c)
    finally:
        for c in opened:
            c.close()


# ---- 6. frames: Autobahn|Testsuite groups 1-7 and 9 ----

# 1.x framing

@pytest.mark.parametrize("n", [0, 125, 126, 127, 128, 65535, 65536])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_1_echo_lengths(e, opcode, n):
    c = ws_open(e)
    data = b"*" * n if opcode == OP_TEXT else pattern_body(n)
    echo_ok(c, data, opcode)
    close_clean(c)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_1_frame_sent_in_chops(e, opcode):
    """A 65536-byte frame written 997 bytes at a time."""
    c = ws_open(e)
    data = b"*" * 65536 if opcode == OP_TEXT else pattern_body(65536)
    raw = frame(opcode, data)
    for i in range(0, len(raw), 997):
        c.send_raw(raw[i:i + 997])
        if i % (997 * 8) == 0:
            time.sleep(0.001)
    assert c.recv_message() == (opcode, data)
    close_clean(c)


# 2.x pings and pongs

@pytest.mark.parametrize("payload", [b"", b"Hello, world!", bytes(range(125)), b"\xff" * 125],
                         ids=["empty", "text", "binary125", "ff125"])
def test_2_ping_gets_pong_with_its_payload(e, payload):
    c = ws_open(e)
    c.send_ping(payload)
    f = c.recv_frame()
    assert f.opcode == OP_PONG and f.payload == payload, f
    echo_ok(c)
    close_clean(c)


def test_2_ten_pings_ten_pongs_in_order(e):
    c = ws_open(e)
    c.send_raw(b"".join(frame(OP_PING, b"ping %d" % i) for i in range(10)))
    got = [c.recv_frame() for _ in range(10)]
    assert [(f.opcode, f.payload) for f in got] == [(OP_PONG, b"ping %d" % i) for i in range(10)]
    close_clean(c)


@pytest.mark.parametrize("payload", [b"", b"unsolicited"], ids=["empty", "payload"])
def test_2_unsolicited_pong_is_harmless(e, payload):
    c = ws_open(e)
    c.send_pong(payload)
    echo_ok(c, b"after the pong")   # nothing else came before the echo
    c.send_pong(payload)
    c.expect_silence(0.2)
    echo_ok(c)
    close_clean(c)


@pytest.mark.parametrize("case", ["ping_126", "ping_fragmented", "pong_126", "pong_fragmented"])
def test_2_bad_control_frames(e, case):
    c = ws_open(e)
    op = OP_PING if case.startswith("ping") else OP_PONG
    if case.endswith("126"):
        c.send_frame(op, b"x" * 126)
    else:
        c.send_raw(frame(op, b"frag", fin=False) + frame(OP_CONT, b"ment"))
    client_fault(e, c, 1002)


# 3.x reserved bits

@pytest.mark.parametrize("rsv", range(1, 8))
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE],
                         ids=["text", "binary", "ping", "close"])
def test_3_rsv_bits(e, opcode, rsv):
    c = ws_open(e)
    payload = close_payload(1000) if opcode == OP_CLOSE else b"reserved bits"
    c.send_raw(frame(opcode, payload, rsv=rsv))
    client_fault(e, c, 1002)


def test_3_rsv_after_a_valid_message(e):
    c = ws_open(e)
    echo_ok(c, b"valid first")
    c.send_raw(frame(OP_TEXT, b"bad", rsv=2))
    client_fault(e, c, 1002)


# 4.x opcodes

@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
@pytest.mark.parametrize("payload", [b"", b"reserved opcode"], ids=["empty", "payload"])
def test_4_reserved_opcodes(e, opcode, payload):
    c = ws_open(e)
    c.send_raw(frame(opcode, payload))
    client_fault(e, c, 1002)


# 5.x fragmentation

@pytest.mark.parametrize("pieces", [
    [b"fragment1", b"fragment2"],
    [b"a"] * 100,
    [b"", b"not empty", b"", b""],
    [b""],
    [b"x" * 70000, b"y" * 300, b"z" * 65536],
], ids=["two", "hundred", "empties", "one_empty_final", "large"])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_5_fragmented_message_echoes_whole(e, opcode, pieces):
    c = ws_open(e)
    c.send_fragments(opcode, pieces)
    assert c.recv_message() == (opcode, b"".join(pieces))
    close_clean(c)


def test_5_fragments_in_separate_writes(e):
    c = ws_open(e)
    pieces = [b"one ", b"two ", b"three ", b"four"]
    for i, p in enumerate(pieces):
        c.send_frame(OP_TEXT if i == 0 else OP_CONT, p, fin=i == len(pieces) - 1)
        time.sleep(0.02)
    assert c.recv_message() == (OP_TEXT, b"one two three four")
    close_clean(c)


@pytest.mark.parametrize("control", [OP_PING, OP_PONG], ids=["ping", "pong"])
def test_5_control_frame_inside_a_fragmented_message(e, control):
    c = ws_open(e)
    c.send_frame(OP_TEXT, b"fragment1", fin=False)
    c.send_frame(control, b"in between")
    time.sleep(0.05)
    c.send_frame(OP_CONT, b"fragment2", fin=True)
    c.controls = []
    got = c.recv_message(allow_control=True)
    assert got == (OP_TEXT, b"fragment1fragment2")
    if control == OP_PING:
        if not c.controls:
            c.controls.append(c.recv_frame())
        assert [(f.opcode, f.payload) for f in c.controls] == [(OP_PONG, b"in between")]
    else:
        assert c.controls == [], "an unsolicited pong was answered: %r" % c.controls
    close_clean(c)


@pytest.mark.parametrize("case", ["cont_alone", "cont_not_final_alone", "cont_after_message",
                                  "text_inside_text", "binary_inside_text",
                                  "text_inside_binary"])
def test_5_bad_fragmentation(e, case):
    c = ws_open(e)
    if case == "cont_alone":
        c.send_frame(OP_CONT, b"nothing to continue")
    elif case == "cont_not_final_alone":
        c.send_frame(OP_CONT, b"nothing to continue", fin=False)
    elif case == "cont_after_message":
        echo_ok(c, b"complete")
        c.send_frame(OP_CONT, b"late continuation")
    else:
        first, second = {"text_inside_text": (OP_TEXT, OP_TEXT),
                         "binary_inside_text": (OP_TEXT, OP_BINARY),
                         "text_inside_binary": (OP_BINARY, OP_TEXT)}[case]
        c.send_frame(first, b"fragment1", fin=False)
        c.send_frame(second, b"fragment2", fin=True)
    client_fault(e, c, 1002)


# 6.x UTF-8

VALID_UTF8 = [
    "",
    "Hello-\u00b5@\u00df\u00f6\u00e4\u00fc\u00e0\u00e1-UTF-8!!",
    "\u03ba\u1f79\u03c3\u03bc\u03b5",
    "\U0001d11e clef",
    "\u007f\u0080\u07ff\u0800\uffff\U00010000\U0010ffff",
    "\ue000\ufffd\ufeff",
]

INVALID_UTF8 = {
    "surrogate": b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
    "over_10ffff": b"\xf4\x90\x80\x80",
    "overlong_slash": b"\xc0\xaf",
    "overlong_3": b"\xe0\x80\xaf",
    "overlong_4": b"\xf0\x80\x80\xaf",
    "c1": b"\xc1\xbf",
    "f5": b"\xf5\x80\x80\x80",
    "ff": b"ok\xff",
    "fe": b"\xfe",
    "stray_continuation": b"ab\x80cd",
    "five_bytes": b"\xf8\x88\x80\x80\x80",
    "truncated_end": b"\xce\xba\xe1",
    "truncated_middle": b"\xe1\xbdx",
    "lone_high_surrogate_pair": b"\xed\xa0\x80\xed\xb0\x80",
}


@pytest.mark.parametrize("i", range(len(VALID_UTF8)))
def test_6_valid_utf8_echoes(e, i):
    c = ws_open(e)
    data = VALID_UTF8[i].encode("utf-8")
    echo_ok(c, data, OP_TEXT)
    if len(data) > 1:   # the same split into one-byte fragments (characters cut everywhere)
        c.send_fragments(OP_TEXT, [data[j:j + 1] for j in range(len(data))])
        assert c.recv_message() == (OP_TEXT, data)
    close_clean(c)


@pytest.mark.parametrize("case", sorted(INVALID_UTF8))
def test_6_invalid_utf8_is_1007(e, case):
    c = ws_open(e)
    c.send_text(INVALID_UTF8[case])
    client_fault(e, c, 1007)


@pytest.mark.parametrize("case", ["truncated_end", "surrogate", "ff"])
def test_6_invalid_utf8_fragmented_is_1007(e, case):
    data = INVALID_UTF8[case]
    c = ws_open(e)
    c.send_fragments(OP_TEXT, [data[j:j + 1] for j in range(len(data))])
    client_fault(e, c, 1007)


def test_6_fail_fast_on_the_fragment_with_the_bad_byte(e):
    """The first fragment holds an invalid sequence, the rest never comes: 1007 at once."""
    c = ws_open(e)
    c.send_frame(OP_TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80",
                 fin=False)
    t0 = time.monotonic()
    client_fault(e, c, 1007, timeout=1.5)
    assert time.monotonic() - t0 < 1.5


def test_6_fail_fast_inside_a_frame_sent_in_two_writes(e):
    """One text frame whose first write ends just after the bad byte (and the rest is never
    sent): 1007 without waiting for the end of the frame."""
    c = ws_open(e)
    good = "\u03ba\u1f79\u03c3\u03bc\u03b5".encode()
    payload = good + b"\xf4\x90\x80\x80" + good * 10
    raw = frame(OP_TEXT, payload)
    head = len(raw) - len(payload)
    c.send_raw(raw[:head + len(good)])          # valid so far: nothing happens
    c.expect_silence(0.2)
    c.send_raw(raw[head + len(good):head + len(good) + 2])   # \xf4\x90: already invalid
    client_fault(e, c, 1007, timeout=1.5)


# 7.x close handshake

def test_7_clean_close(e):
    base = len(sockets_of(e.gw))
    c = ws_open(e)
    echo_ok(c)
    c.send_close(1000, "bye")
    f = c.expect_close(1000, "bye", skip_data=False)
    assert f.code == 1000
    c.close()
    up = upstream_of(e, c)
    assert (up.close_code, up.close_reason) == (1000, "bye"), up
    fds_back(e.gw, base)


def test_7_close_with_empty_payload(e):
    c = ws_open(e)
    c.send_frame(OP_CLOSE, b"")
    c.expect_close(None, skip_data=False)
    c.close()
    assert upstream_of(e, c).close_code == 1005


def test_7_message_then_close(e):
    """A message and a close in one write reach the other side in that order, both ways (the
    raw upstream: python-websockets answers a close before echoing what preceded it)."""
    c, conn, _ = raw_tunnel(e)
    c.send_raw(frame(OP_TEXT, b"last words") + frame(OP_CLOSE, close_payload(1000, "end")))
    c.close_sent = True
    assert conn.recv_message() == (OP_TEXT, b"last words")
    conn.send_raw(frame(OP_TEXT, b"answer", mask=False) +
                  frame(OP_CLOSE, close_payload(1000, "end"), mask=False))
    conn.close_sent = True
    conn.expect_close(1000, "end", skip_data=False, eof=False)
    assert c.recv_message() == (OP_TEXT, b"answer")
    c.expect_close(1000, "end", skip_data=False)
    c.close()
    conn.close()


def test_7_data_after_close_is_ignored(e):
    c = ws_open(e)
    c.send_raw(frame(OP_CLOSE, close_payload(1000, "bye")) + frame(OP_TEXT, b"after close") +
               frame(OP_PING, b"after close"))
    c.expect_close(1000, "bye", skip_data=False)
    c.close()
    up = upstream_of(e, c)
    assert up.messages == [], "data after the close reached the upstream: %r" % up.messages


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                                  1013, 1014, 3000, 3999, 4000, 4999])
def test_7_valid_close_codes_relayed(e, code):
    c = ws_open(e)
    c.send_close(code, "code %d" % code)
    c.expect_close(code, "code %d" % code, skip_data=False)
    c.close()
    up = upstream_of(e, c)
    assert (up.close_code, up.close_reason) == (code, "code %d" % code), up


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000,
                                  65535])
def test_7_invalid_close_codes(e, code):
    c = ws_open(e)
    c.send_frame(OP_CLOSE, close_payload(code, "bad code"))
    client_fault(e, c, 1002)


def test_7_one_byte_close_payload(e):
    c = ws_open(e)
    c.send_frame(OP_CLOSE, b"\x03")
    client_fault(e, c, 1002)


def test_7_close_reason_not_utf8(e):
    c = ws_open(e)
    c.send_frame(OP_CLOSE, close_payload(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xed\xa0\x80"))
    client_fault(e, c, 1007)


def test_7_close_of_126_bytes(e):
    c = ws_open(e)
    c.send_frame(OP_CLOSE, close_payload(1000, b"r" * 124))
    client_fault(e, c, 1002)


def test_7_close_reason_of_123_bytes(e):
    c = ws_open(e)
    reason = "r" * 123
    c.send_close(1000, reason)
    c.expect_close(1000, reason, skip_data=False)


# 9.x limits and large messages

@pytest.mark.parametrize("size,opcode,fragment", [
    (1 << 20, OP_TEXT, None), (1 << 20, OP_BINARY, None), (4 << 20, OP_BINARY, None),
    (1 << 20, OP_BINARY, 65536), (4 << 20, OP_BINARY, 65536), (4 << 20, OP_TEXT, 65536),
], ids=["text_1m", "binary_1m", "binary_4m", "binary_1m_frag64k", "binary_4m_frag64k",
        "text_4m_frag64k"])
def test_9_large_messages(e, size, opcode, fragment):
    c = ws_open(e, timeout=15.0)
    data = b"*" * size if opcode == OP_TEXT else pattern_body(size)
    if fragment:
        c.send_fragments(opcode, [data[i:i + fragment] for i in range(0, size, fragment)])
    else:
        c.send_frame(opcode, data)
    got = c.recv_message(timeout=15.0)
    assert got[0] == opcode and len(got[1]) == size and got[1] == data, (
        "large message damaged: %d bytes back of %d" % (len(got[1]), size))
    close_clean(c)


def test_9_many_small_messages_in_order(e):
    c = ws_open(e)
    c.send_raw(b"".join(frame(OP_TEXT, b"message %04d" % i) for i in range(1000)))
    for i in range(1000):
        assert c.recv_message() == (OP_TEXT, b"message %04d" % i)
    close_clean(c)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE],
                         ids=["text", "binary", "ping", "close"])
def test_9_unmasked_client_frame(e, opcode):
    c = ws_open(e)
    payload = close_payload(1000) if opcode == OP_CLOSE else b"not masked"
    c.send_frame(opcode, payload, mask=False)
    client_fault(e, c, 1002)


def test_9_64bit_length_with_the_top_bit(e):
    c = ws_open(e)
    c.send_raw(frame(OP_BINARY, b"", length_override=(1 << 63) | 5))
    client_fault(e, c, 1002)


def test_9_huge_length_is_1009_at_the_header(e):
    """A 1 TiB frame announced on /ws/ (max 8m): 1009 at once, no payload needed."""
    c = ws_open(e)
    c.send_raw(frame(OP_BINARY, b"", length_override=1 << 40))
    client_fault(e, c, 1009, timeout=1.5)


@pytest.mark.parametrize("case", ["frame", "header_only", "fragments", "text"])
def test_9_over_max_message_is_1009(e, case):
    c = ws_open(e, prefix="/small/")
    over = SMALL_MAX + 1
    if case == "frame":
        c.send_binary(b"b" * over)
    elif case == "header_only":
        c.send_raw(frame(OP_BINARY, b"", length_override=over))
    elif case == "fragments":
        half = SMALL_MAX // 2
        c.send_frame(OP_BINARY, b"a" * half, fin=False)
        c.send_frame(OP_CONT, b"b" * half, fin=False)
        c.send_raw(frame(OP_CONT, b"", fin=True, length_override=1))   # one byte too many
    else:
        c.send_text(b"t" * over)
    client_fault(e, c, 1009, timeout=1.5)


@pytest.mark.parametrize("fragmented", [False, True], ids=["frame", "fragments"])
def test_9_exactly_max_message_passes(e, fragmented):
    c = ws_open(e, prefix="/small/")
    data = pattern_body(SMALL_MAX)
    if fragmented:
        c.send_fragments(OP_BINARY, [data[:300], data[300:1000], data[1000:]])
    else:
        c.send_binary(data)
    assert c.recv_message() == (OP_BINARY, data)
    # the limit is per message: a second one of the same size passes too
    echo_ok(c, data, OP_BINARY)
    close_clean(c)


# ---- 7. upstream violations and drops (raw upstream) ----

UPSTREAM_FAULTS = {
    "masked_frame": (1002, lambda u: u.send_text(b"masked", mask=True)),
    "rsv_bits": (1002, lambda u: u.send_raw(frame(OP_TEXT, b"rsv", mask=False, rsv=4))),
    "reserved_opcode": (1002, lambda u: u.send_raw(frame(5, b"", mask=False))),
    "cont_alone": (1002, lambda u: u.send_raw(frame(OP_CONT, b"x", mask=False))),
    "ping_126": (1002, lambda u: u.send_raw(frame(OP_PING, b"p" * 126, mask=False))),
    "close_one_byte": (1002, lambda u: u.send_raw(frame(OP_CLOSE, b"\x03", mask=False))),
    "close_bad_code": (1002, lambda u: u.send_raw(frame(OP_CLOSE, close_payload(1005),
                                                         mask=False))),
    "invalid_utf8": (1007, lambda u: u.send_text(b"bad \xff utf-8")),
    "close_bad_reason": (1007, lambda u: u.send_raw(frame(OP_CLOSE, close_payload(1000, b"\xff"),
                                                           mask=False))),
    "unfinished_utf8_fragment": (1007, lambda u: u.send_raw(frame(OP_TEXT, b"ok\xc0", fin=False,
                                                                   mask=False))),
    "oversize": (1009, lambda u: u.send_binary(b"o" * (RAW_MAX + 1))),
}


@pytest.mark.parametrize("case", sorted(UPSTREAM_FAULTS))
def test_upstream_violation(e, case):
    """The upstream gets the code, the client 1011; both TCP connections end."""
    code, act = UPSTREAM_FAULTS[case]
    base = len(sockets_of(e.gw))
    c, conn, _ = raw_tunnel(e)
    c.send_text(b"hello")
    assert conn.recv_message() == (OP_TEXT, b"hello")
    try:
        act(conn)
    except OSError:
        pass    # the gateway may close before all of an oversize frame is written
    c.expect_close(1011)
    conn.expect_close(code)
    c.close()
    conn.close()
    fds_back(e.gw, base)


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("dropper", ["upstream", "client"])
def test_side_drops_without_close(e, dropper, how):
    """A side that drops its TCP connection (FIN or RST) after a message: the other side gets
    close 1001 and its TCP connection is closed; no socket stays open."""
    base = len(sockets_of(e.gw))
    c, conn, _ = raw_tunnel(e)
    sender, dropping = (c, conn) if dropper == "upstream" else (conn, c)
    sender.send_text(b"hello")
    assert dropping.recv_message() == (OP_TEXT, b"hello")
    dropping.close() if how == "fin" else dropping.abort()
    sender.expect_close(1001)
    sender.close()
    fds_back(e.gw, base)


def test_upstream_resets_right_after_its_101(e):
    base = len(sockets_of(e.gw))
    c = wsfix.WSClient(e.port)
    c.send_handshake("/raw/t")
    conn = e.raw.next_conn()
    req = conn.read_request()
    conn.accept(req)
    conn.abort()
    c.read_handshake()
    c.check_101()
    c.expect_close(1001)
    c.close()
    fds_back(e.gw, base)


def test_client_gone_before_the_upstream_answers_its_upgrade(e):
    """The client closes while the upstream has not answered yet; the upstream's late 101 must
    not leave a tunnel (or a socket) behind."""
    base = len(sockets_of(e.gw))
    c = wsfix.WSClient(e.port)
    c.send_handshake("/raw/t")
    conn = e.raw.next_conn()
    req = conn.read_request()
    c.abort()
    time.sleep(0.1)
    try:
        conn.accept(req)
        conn.send_text(b"anyone there?")
    except OSError:
        pass
    frames = conn.frames_until_eof(3.0)
    assert all(f.opcode == OP_CLOSE for f in frames), frames
    conn.close()
    fds_back(e.gw, base)


def test_many_websockets_at_once(e):
    """50 WebSockets open at the same time, each echoing its own messages; afterwards the
    worker is back to its descriptors."""
    base = len(sockets_of(e.gw))
    conns = [ws_open(e) for _ in range(50)]
    for i, c in enumerate(conns):
        c.send_text(b"from %d" % i)
    for i, c in enumerate(conns):
        assert c.recv_message() == (OP_TEXT, b"from %d" % i)
    for c in conns:
        c.send_close(1000)
    for c in conns:
        c.expect_close(1000)
        c.close()
    fds_back(e.gw, base)


def test_upstream_closes_first(e):
    """The upstream's close reaches the client, the client's answer reaches the upstream, then
    the gateway closes both TCP connections (the upstream here does not close its side)."""
    base = len(sockets_of(e.gw))
    c, conn, _ = raw_tunnel(e)
    conn.send_close(1000, "server says bye")
    c.expect_close(1000, "server says bye", eof=False)     # answers 1000
    f = conn.expect_close(1000, eof=False)
    assert f.code == 1000
    assert conn.wait_eof(3.0), "the gateway left the upstream connection open after the close"
    c.expect_eof(3.0)
    c.close()
    conn.close()
    fds_back(e.gw, base)


def test_simultaneous_close(e):
    """Both sides send a close at the same time: each gets the other's, both TCP connections
    end."""
    base = len(sockets_of(e.gw))
    c, conn, _ = raw_tunnel(e)
    conn.send_close(1001, "upstream leaves")
    c.send_close(1000, "client leaves")
    fc = c.expect_close(1001, "upstream leaves", eof=False)
    fu = conn.expect_close(1000, "client leaves", eof=False)
    assert fc and fu
    conn.close()
    c.expect_eof()
    c.close()
    fds_back(e.gw, base)


def test_upstream_data_after_its_close_is_ignored(e):
    c, conn, _ = raw_tunnel(e)
    conn.send_raw(frame(OP_CLOSE, close_payload(1000, "bye"), mask=False) +
                  frame(OP_TEXT, b"after close", mask=False))
    conn.close_sent = True
    c.expect_close(1000, "bye", skip_data=False, eof=False)
    conn.expect_close(1000, eof=False)
    conn.close()
    c.expect_eof()
    c.close()


def test_upstream_close_first_with_the_echo_server(e):
    c = ws_open(e, name="close-first")
    c.expect_close(1000, "bye")
    c.close()
    assert upstream_of(e, c).close_code == 1000


def test_upstream_messages_relayed_in_pieces(e):
    """Frames from the upstream (fragmented, interleaved ping, chops) reach the client whole;
    the upstream's ping is answered by the client side only (relayed, not answered by the
    gateway)."""
    c, conn, _ = raw_tunnel(e)
    conn.send_frame(OP_TEXT, b"part1 ", fin=False)
    conn.send_frame(OP_PING, b"from upstream")
    conn.send_frame(OP_CONT, b"part2", fin=True)
    c.controls = []
    assert c.recv_message(allow_control=True) == (OP_TEXT, b"part1 part2")
    if not c.controls:
        c.controls.append(c.recv_frame())
    assert [(f.opcode, f.payload) for f in c.controls] == [(OP_PING, b"from upstream")]
    c.send_pong(b"from upstream")
    f = conn.recv_frame()
    assert (f.opcode, f.payload) == (OP_PONG, b"from upstream"), f
    raw = frame(OP_BINARY, pattern_body(5000), mask=False)
    for i in range(0, len(raw), 333):
        conn.send_raw(raw[i:i + 333])
    assert c.recv_message() == (OP_BINARY, pattern_body(5000))
    c.send_close(1000)
    conn.expect_close(1000, eof=False)
    c.expect_close(1000, eof=False)
    conn.close()
    c.expect_eof()
    c.close()


def raw_close(c, conn):
    """A clean close started by the client through the raw upstream."""
    c.send_close(1000)
    conn.expect_close(1000, eof=False)
    c.expect_close(1000, eof=False)
    conn.close()
    c.expect_eof()
    c.close()


def test_101_carries_the_upstreams_fields_and_the_request_id(e):
    c = wsfix.WSClient(e.port)
    c.send_handshake("/raw/t", headers=[("X-Request-Id", "ws-rid-1")])
    conn = e.raw.next_conn()
    req = conn.read_request()
    assert req.header("x-request-id") == "ws-rid-1", req
    conn.accept(req, extra=[("Set-Cookie", "session=abc"), ("X-Upstream", "raw")])
    c.read_handshake()
    r = c.check_101()
    assert r.headers_all("set-cookie") == ["session=abc"], r.headers
    assert r.headers_all("x-upstream") == ["raw"], r.headers
    assert r.headers_all("x-request-id") == ["ws-rid-1"], r.headers
    raw_close(c, conn)


def test_upstream_frame_in_the_same_write_as_its_101(e):
    """Frames the upstream sends right behind its 101 (one write) reach the client after it."""
    c = wsfix.WSClient(e.port)
    c.send_handshake("/raw/t")
    conn = e.raw.next_conn()
    req = conn.read_request()
    head = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: %s\r\n\r\n" % wsfix.accept_for(req.header("sec-websocket-key")))
    conn.send_raw(head.encode() + frame(OP_TEXT, b"hello at once", mask=False) +
                  frame(OP_PING, b"ping at once", mask=False))
    c.read_handshake()
    c.check_101()
    assert c.recv_message() == (OP_TEXT, b"hello at once")
    f = c.recv_frame()
    assert (f.opcode, f.payload) == (OP_PING, b"ping at once"), f
    raw_close(c, conn)


def test_early_frame_is_not_sent_before_the_101(e):
    """A frame the client pipelined behind its upgrade request does not reach the upstream
    before the upstream accepted the upgrade."""
    c = wsfix.WSClient(e.port)
    c.send_handshake("/raw/t", extra=frame(OP_TEXT, b"too early"))
    conn = e.raw.next_conn()
    req = conn.read_request()
    time.sleep(0.2)
    assert conn.unread() == b"", "bytes behind the upgrade request were forwarded before the " \
        "101: %r" % conn.unread()[:100]
    conn.accept(req)
    c.read_handshake()
    c.check_101()
    c.close()
    conn.close()


def test_plain_request_on_a_websocket_route(e):
    """A request without handshake fields on a websocket route is proxied as usual."""
    with Client(e.port) as h:
        h.request("GET", "/raw/page")
        conn = e.raw.next_conn()
        req = conn.read_request()
        assert req.target == "/raw/page" and req.headers_all("upgrade") == [], req
        conn.respond(200, [("Connection", "close")], b"a page")
        r = h.read_response()
        assert r.status == 200 and r.body == b"a page", r
    conn.close()


@pytest.mark.parametrize("variant", ["keep_alive_upgrade", "mixed_case", "lower_names"])
def test_handshake_field_variants(e, variant):
    cid = wsfix.unique_id()
    c = wsfix.WSClient(e.port)
    if variant == "keep_alive_upgrade":
        kw = dict(connection="keep-alive, Upgrade")
    elif variant == "mixed_case":
        kw = dict(connection="UPGRADE", upgrade="WebSocket")
    else:
        kw = dict(omit=("upgrade", "connection", "key", "version"))
        c.key = key = wsfix.new_key()
        kw["headers"] = [("upgrade", "websocket"), ("connection", "upgrade"),
                         ("sec-websocket-key", key), ("sec-websocket-version", "13")]
        kw["key"] = key
    c.handshake("/ws/echo?c=%s" % cid, **kw)
    c.check_101()
    echo_ok(c)
    close_clean(c)


def test_default_max_message_is_1m(e):
    """`websocket: true` takes max_message 1m (route /key/)."""
    c = ws_open(e, prefix="/key/", headers=[("apikey", e.apikey)])
    data = pattern_body(1 << 20)
    echo_ok(c, data, OP_BINARY)
    c.send_raw(frame(OP_BINARY, b"", length_override=(1 << 20) + 1))
    client_fault(e, c, 1009)


def test_pings_and_pongs_are_relayed_not_answered(e):
    """The client's ping reaches the upstream, whose pong comes back (the gateway does not
    answer it itself); the client's pong reaches the upstream too."""
    c, conn, _ = raw_tunnel(e)
    c.send_ping(b"are you there")
    f = conn.recv_frame()
    assert (f.opcode, f.payload) == (OP_PING, b"are you there"), f
    c.expect_silence(0.2)
    conn.send_pong(b"are you there")
    f = c.recv_frame()
    assert (f.opcode, f.payload) == (OP_PONG, b"are you there"), f
    c.send_pong(b"unsolicited")
    f = conn.recv_frame()
    assert (f.opcode, f.payload) == (OP_PONG, b"unsolicited"), f
    raw_close(c, conn)


def test_frames_to_the_upstream_are_masked_with_fresh_keys(e):
    """The client masks with an all-zero key each time; the upstream must see other keys, not
    all the same."""
    c, conn, _ = raw_tunnel(e)
    for i in range(6):
        c.send_text(b"message %d" % i, mask_key=b"\0\0\0\0")
    keys = []
    for i in range(6):
        f = conn.recv_frame()
        assert (f.opcode, f.payload, f.fin) == (OP_TEXT, b"message %d" % i, 1), f
        keys.append(f.key)
    assert len(set(keys)) > 1, "every frame to the upstream masked with %r" % keys[0]
    raw_close(c, conn)


def test_messages_stream_through_without_a_policy(e):
    """Without a ws_message policy, the first part of a frame reaches the upstream before the
    client sent the rest (nothing is held back until the end of the frame)."""
    c, conn, _ = raw_tunnel(e)
    data = pattern_body(20000)
    raw = frame(OP_BINARY, data)
    head = len(raw) - len(data)
    before = len(conn.received)
    c.send_raw(raw[:head + 8000])
    wait_for(lambda: len(conn.received) - before >= 8000, 2.0,
             "8000 payload bytes at the upstream before the rest of the frame is sent")
    c.send_raw(raw[head + 8000:])
    assert conn.recv_message() == (OP_BINARY, data)
    raw_close(c, conn)


@pytest.mark.parametrize("silent", ["upstream", "client"])
def test_close_not_answered_within_close_timeout(e, silent):
    """A side that never answers a close is disconnected after close_timeout (1s), and so is
    the other one."""
    base = len(sockets_of(e.gw))
    c, conn, _ = raw_tunnel(e)
    t0 = time.monotonic()
    if silent == "upstream":
        c.send_close(1000, "bye")
        f = conn.recv_frame()
        assert f.opcode == OP_CLOSE and f.code == 1000, f
        c.frames_until_eof(4.0)
        assert conn.wait_eof(3.0), "the silent upstream's connection stayed open"
    else:
        conn.send_close(1000, "bye")
        f = c.recv_frame()
        assert f.opcode == OP_CLOSE and f.code == 1000, f
        conn.frames_until_eof(4.0)
        c.frames_until_eof(3.0)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.8, "disconnected %.2f s after the close (close_timeout 1s)" % elapsed
    c.close()
    conn.close()
    fds_back(e.gw, base)


# ---- 8. idle timeout ----

def test_idle_timeout_closes_both_sides(e):
    c = ws_open(e, prefix="/idle/")
    t0 = time.monotonic()
    c.expect_close(1001, timeout=4.0)
    elapsed = time.monotonic() - t0
    assert 0.7 <= elapsed <= 3.0, "idle close after %.2f s (idle_timeout 1s)" % elapsed
    c.close()
    up = upstream_of(e, c)
    assert up.close_code == 1001, up


def test_pings_keep_the_tunnel_open(e):
    c = ws_open(e, prefix="/idle/")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.8:
        time.sleep(0.3)
        c.send_ping(b"keep")
        f = c.recv_frame(1.0)
        assert (f.opcode, f.payload) == (OP_PONG, b"keep"), f
    echo_ok(c, b"still open after %.1f s" % (time.monotonic() - t0))
    close_clean(c)


# ---- 9. ws_message policies ----

def p_open(e, headers=(), **kw):
    return ws_open(e, prefix="/p/", headers=list(headers), **kw)


def sentinel(c, e):
    """Sends a last message and waits for its echo: what came before was handled."""
    echo_ok(c, b"sentinel")


def test_policy_pass(e):
    c = p_open(e)
    echo_ok(c, b"hello", OP_TEXT)
    echo_ok(c, b"\x00\x01\x02", OP_BINARY)
    c.send_fragments(OP_TEXT, [b"frag", b"mented"])
    assert c.recv_message() == (OP_TEXT, b"fragmented")
    close_clean(c)
    assert upstream_of(e, c).messages == ["hello", b"\x00\x01\x02", "fragmented"]


def test_policy_replace_each_direction(e):
    c = p_open(e)
    c.send_text(b"up:abc")
    assert c.recv_message() == (OP_TEXT, b"UP(abc)")
    c.send_text(b"down:xyz")
    assert c.recv_message() == (OP_TEXT, b"DOWN(xyz)")
    c.send_text(b"bin:\x01\x02")
    assert c.recv_message() == (OP_BINARY, b"\x01\x02")
    close_clean(c)
    assert upstream_of(e, c).messages == ["UP(abc)", "down:xyz", b"\x01\x02"]


def test_policy_sees_direction_and_opcode(e):
    c = p_open(e)
    c.send_text(b"info")
    assert c.recv_message() == (OP_TEXT, b"inbound,text,4")
    c.send_binary(b"info")
    assert c.recv_message() == (OP_TEXT, b"inbound,binary,4")
    close_clean(c)


def test_policy_drop(e):
    c = p_open(e)
    c.send_text(b"drop")
    c.send_text(b"out-drop")      # reaches the upstream, its echo is dropped
    sentinel(c, e)
    close_clean(c)
    assert upstream_of(e, c).messages == ["out-drop", "sentinel"]


def test_policy_reply(e):
    c = p_open(e)
    c.send_text(b"reply:hello you")
    assert c.recv_message() == (OP_TEXT, b"hello you")
    sentinel(c, e)
    close_clean(c)
    assert upstream_of(e, c).messages == ["sentinel"]


def test_policy_close(e):
    c = p_open(e)
    echo_ok(c)
    c.send_text(b"close:4001:policy says bye")
    c.expect_close(4001, "policy says bye")
    c.close()
    up = upstream_of(e, c)
    assert (up.close_code, up.close_reason) == (4001, "policy says bye"), up
    assert "close:4001:policy says bye" not in up.messages


@pytest.mark.parametrize("what", ["error", "badutf", "badcode", "badreply"])
def test_policy_errors_close_with_1011(e, what):
    """An error, invalid UTF-8 set as text, pgw.ws.close(999), a text reply that is not UTF-8:
    both sides get 1011; an error log line names the policy."""
    mark = e.gw.error_mark()
    c = p_open(e)
    echo_ok(c)
    c.send_text(what.encode())
    c.expect_close(1011)
    c.close()
    up = upstream_of(e, c)
    assert up.close_code == 1011, up
    assert not [m for m in up.messages if m not in ("still alive",)], up.messages
    if what == "badutf":
        # checked after the chain: the line names the stage and the reason
        wait_log(e.gw, r"\[error\] .*ws_message.*UTF-8", mark)
    else:
        line = wait_log(e.gw, r"\[error\] .*policy wsp: stage ws_message", mark)
        if what == "error":
            assert "wsp failure on purpose" in line, line


def test_policy_ws_connect_runs_first(e):
    c = p_open(e)
    echo_ok(c, b"a")
    echo_ok(c, b"b")
    c.send_text(b"count")
    assert c.recv_message() == (OP_TEXT, b"count=3")
    close_clean(c)
    c = p_open(e, headers=[("X-User", "greet")])
    assert c.recv_message() == (OP_TEXT, b"welcome"), "ws_connect's reply"
    close_clean(c)


def test_policy_ws_connect_that_waits_holds_messages(e):
    """ws_connect sleeps then replies: a message the client sent meanwhile is relayed after."""
    c = p_open(e, headers=[("X-User", "slow")])
    c.send_text(b"early message")
    assert c.recv_message() == (OP_TEXT, b"welcome after a wait")
    assert c.recv_message() == (OP_TEXT, b"early message")
    close_clean(c)


def test_policy_reply_binary(e):
    c = p_open(e)
    c.send_text(b"replybin:\x00\x01")
    assert c.recv_message() == (OP_BINARY, b"\x00\x01")
    close_clean(c)


def test_policy_ws_connect_closes(e):
    c = p_open(e, headers=[("X-Refuse", "4003")])
    c.expect_close(4003, "refused by ws_connect", skip_data=False)
    c.close()
    up = upstream_of(e, c)
    assert up.messages == [], up
    assert up.close_code == 4003, up


def test_policy_ctx_from_the_handshake(e):
    c = p_open(e, headers=[("X-User", "alice-%s" % wsfix.unique_id())])
    c.send_text(b"user")
    got = c.recv_message()
    assert got[0] == OP_TEXT and re.match(rb"^user=alice-[0-9a-f]{12}$", got[1]), got
    close_clean(c)


def test_policy_ws_close_info(e):
    user = "closer-%s" % wsfix.unique_id()
    c = p_open(e, headers=[("X-User", user)])
    msgs = [b"one", b"two!", b"three"]
    for m in msgs:
        echo_ok(c, m)
    close_clean(c, 1000, "")
    line = wait_log(e.gw, r"wsclose user=%s code=" % user)
    m = re.search(r"code=(\d+) by=(\w+) in=(\d+) out=(\d+) bytes_in=(\d+) bytes_out=(\d+)", line)
    assert m, line
    code, by, nin, nout, bin_, bout = m.groups()
    assert (code, by, nin, nout) == ("1000", "client", "3", "3"), line
    total = sum(len(x) for x in msgs)
    assert int(bin_) in (total, total + 2) and int(bout) in (total, total + 2), line
    # a close started by the upstream
    user2 = "closer-%s" % wsfix.unique_id()
    c = p_open(e, headers=[("X-User", user2)], name="close-first")
    c.expect_close(1000, "bye")
    c.close()
    line = wait_log(e.gw, r"wsclose user=%s code=" % user2)
    assert re.search(r"code=1000 by=upstream in=0 out=0 ", line), line
    # a client that drops: code 1006
    user3 = "closer-%s" % wsfix.unique_id()
    c = p_open(e, headers=[("X-User", user3)])
    c.abort()
    line = wait_log(e.gw, r"wsclose user=%s code=" % user3)
    assert re.search(r"code=1006 by=client ", line), line


def test_policy_that_waits_keeps_the_order(e):
    c = p_open(e)
    c.send_raw(b"".join(frame(OP_TEXT, b"sleep:%d" % i) for i in range(20)))
    got = [c.recv_message(timeout=5.0) for _ in range(20)]
    assert got == [(OP_TEXT, b"sleep:%d" % i) for i in range(20)], got
    close_clean(c)
    assert upstream_of(e, c).messages == ["sleep:%d" % i for i in range(20)]


def test_policy_close_waits_behind_a_waiting_message(e):
    """A close sent right behind a message the policy waits on reaches the upstream after that
    message (order is kept for close frames too)."""
    c = p_open(e)
    c.send_raw(frame(OP_TEXT, b"sleep:0") + frame(OP_CLOSE, close_payload(1000, "after")))
    c.close_sent = True
    c.expect_close(1000, "after")
    c.close()
    up = upstream_of(e, c)
    assert up.messages[:1] == ["sleep:0"], (
        "the message the policy waited on was lost behind the close: %r" % up.messages)
    assert up.close_code == 1000, up


def test_policy_ping_inside_an_assembled_message(e):
    c = p_open(e)
    c.send_frame(OP_TEXT, b"up:frag", fin=False)
    c.send_ping(b"mid")
    c.send_frame(OP_CONT, b"ment", fin=True)
    c.controls = []
    assert c.recv_message(allow_control=True) == (OP_TEXT, b"UP(fragment)")
    if not c.controls:
        c.controls.append(c.recv_frame())
    assert [(f.opcode, f.payload) for f in c.controls] == [(OP_PONG, b"mid")]
    close_clean(c)


def test_policy_route_invalid_utf8_is_still_1007(e):
    c = p_open(e)
    c.send_fragments(OP_TEXT, [b"up:ok", b"\xff"])
    client_fault(e, c, 1007)


@pytest.mark.parametrize("when", ["ws_message_sleeping", "ws_connect_sleeping"])
def test_client_drops_while_a_policy_waits(e, when):
    """The client resets its connection while ws_message (or ws_connect) sleeps: the upstream
    gets close 1001, the worker survives and keeps no descriptor."""
    base = len(sockets_of(e.gw))
    if when == "ws_message_sleeping":
        c = p_open(e)
        c.send_text(b"sleep:0")
    else:
        c = p_open(e, headers=[("X-User", "slow")])
    c.abort()
    up = upstream_of(e, c)
    assert up.close_code == 1001, up
    fds_back(e.gw, base)
    e.gw.assert_alive()
    c = p_open(e)
    echo_ok(c)
    close_clean(c)


def test_policy_chain_listener_first_and_drop_stops_it(e):
    """Listener policies run before the route's, in list order (ws_connect and ws_message); a
    drop ends the chain."""
    cid = wsfix.unique_id()
    c = wsfix.connect(e.gw.ports["side"], "/t/echo?c=%s" % cid)
    c.cid = cid
    c.send_text(b"x")
    assert c.recv_message() == (OP_TEXT, b"x[L][R1][R2]")
    c.send_text(b"drop-at-R1")
    c.send_text(b"order")
    assert c.recv_message() == (OP_TEXT, b"connect:L,connect:R1,connect:R2,|LR1R2LR1L")
    close_clean(c)
    up = upstream_of(e, c)
    assert up.messages == ["x[L][R1][R2]"], up.messages


def test_policy_reply_to_the_upstream(e):
    """An outbound message answered by the policy: the reply goes to the upstream (its sender),
    whose echo of it comes back to the client."""
    c = p_open(e)
    c.send_text(b"ask-upstream")
    assert c.recv_message() == (OP_TEXT, b"answer for the upstream")
    close_clean(c)
    assert upstream_of(e, c).messages == ["ask-upstream", "answer for the upstream"]


def test_policy_error_on_an_outbound_message(e):
    mark = e.gw.error_mark()
    c = p_open(e)
    c.send_text(b"outerror")
    c.expect_close(1011)
    c.close()
    assert upstream_of(e, c).close_code == 1011
    wait_log(e.gw, r"\[error\] .*policy wsp: stage ws_message: .*outbound failure", mark)


def test_policy_pgw_ws_outside_the_ws_stages(e):
    """pgw.ws.reply in access is a policy error: 500, the upstream is not contacted."""
    mark = e.gw.error_mark()
    r = handshake_refused(e, "/p/x", 500, e.echo.count, closes=False,
                          headers=[("X-Misuse", "1")])
    assert r.status == 500
    wait_log(e.gw, r"\[error\] .*policy wsp: stage access", mark)


def test_policy_close_with_defaults(e):
    c = p_open(e)
    c.send_text(b"close-default")
    c.expect_close(1000, "")
    c.close()
    assert upstream_of(e, c).close_code == 1000


def test_policy_route_max_message_still_applies(e):
    c = p_open(e)
    c.send_binary(b"m" * (64 * 1024 + 1))
    client_fault(e, c, 1009)


# ---- 10. lifecycle ----

def life_config(tmp_path, echo, max_message, **extra):
    return config(listeners=[listener("public")],
                  upstreams={"echo": {"targets": [echo.address], "retries": 0}},
                  routes=[route("/l/", ["life"], upstream="echo",
                                websocket={"max_message": max_message, "close_timeout": "1s"}),
                          route("/ws/", upstream="echo", websocket={"close_timeout": "1s"})],
                  policies={"dir": str(tmp_path / "policies")}, **extra)


def life_gateway(make_gateway, echo, tmp_path, max_message, **extra):
    """A gateway of its own for the lifecycle tests, with the "life" policy in version v1."""
    write_policies(tmp_path / "policies", {"life": life_policy("v1")})
    return track(make_gateway(life_config(tmp_path, echo, max_message, **extra)))


def open_v1(g):
    """A WebSocket on /l/, checked to run the v1 policy."""
    c = wsfix.connect(g.port, "/l/echo")
    c.send_text(b"x")
    assert c.recv_message() == (OP_TEXT, b"v1:x")
    return c


def test_reload_keeps_open_websockets_on_their_generation(make_gateway, echo, tmp_path):
    g = life_gateway(make_gateway, echo, tmp_path, 1024)
    old = open_v1(g)

    write_policies(tmp_path / "policies", {"life": life_policy("v2")})
    cp = g.reload(life_config(tmp_path, echo, 2048))
    assert cp.returncode == 0, (cp.stdout, cp.stderr)

    def new_generation():
        with wsfix.connect(g.port, "/l/echo") as c:
            c.send_text(b"x")
            got = c.recv_message()
            c.send_close(1000)
            c.expect_close(1000)
            return got == (OP_TEXT, b"v2:x")
    wait_for(new_generation, 5.0, "a new WebSocket on the new policy")

    new = wsfix.connect(g.port, "/l/echo")
    new.send_text(b"y")
    assert new.recv_message() == (OP_TEXT, b"v2:y")
    old.send_text(b"y")
    assert old.recv_message() == (OP_TEXT, b"v1:y"), "the open WebSocket changed generation"
    # the route's limit: 1k for the old one, 2k for the new one
    new.send_binary(b"n" * 1500)
    assert new.recv_message() == (OP_BINARY, b"v2:" + b"n" * 1500)
    old.send_binary(b"o" * 1500)
    old.expect_close(1009)
    old.close()
    new.send_close(1000)
    new.expect_close(1000)
    new.close()


def test_reload_removing_the_route_keeps_the_open_websocket(make_gateway, echo, tmp_path):
    g = life_gateway(make_gateway, echo, tmp_path, 1024)
    old = open_v1(g)
    cfg2 = life_config(tmp_path, echo, 1024)
    cfg2["routes"] = [r for r in cfg2["routes"] if r["name"] != "l"]
    (tmp_path / "policies" / "life.lua").unlink()
    cp = g.reload(cfg2)
    assert cp.returncode == 0, (cp.stdout, cp.stderr)

    def gone():
        with Client(g.port) as h:
            h.request("GET", "/l/echo")
            return h.read_response().status == 404
    wait_for(gone, 5.0, "the route /l/ gone after the reload")
    old.send_text(b"y")
    assert old.recv_message() == (OP_TEXT, b"v1:y"), "the open WebSocket lost its policy"
    old.send_close(1000)
    old.expect_close(1000)
    old.close()


def test_fast_stop_closes_websockets_at_once(make_gateway, echo, tmp_path):
    g = life_gateway(make_gateway, echo, tmp_path, "1m", timeouts={"drain": "10s"})
    c = wsfix.connect(g.port, "/ws/echo")
    echo_ok(c)
    g.signal(signal.SIGTERM)
    g.exited_expected = True
    c.frames_until_eof(3.0)
    c.close()
    assert g.wait_exit(3.0) is not None, "still running 3 s after TERM with a WebSocket open"


def test_client_that_does_not_read_is_not_buffered_without_bound(make_gateway, echo, tmp_path):
    """A client sends 48 MiB of messages to the echo upstream and reads nothing: the gateway
    stops reading (backpressure) instead of holding the echoes in memory."""
    g = life_gateway(make_gateway, echo, tmp_path, "1m")
    c = wsfix.WSClient(g.port, timeout=10.0, rcvbuf=65536)
    c.handshake("/ws/echo")
    c.check_101()
    rss0 = g.rss_kb()
    msg = frame(OP_BINARY, pattern_body(1 << 20))
    sent = [0]

    def push():
        try:
            for _ in range(48):
                c.send_raw(msg)
                sent[0] += 1
        except OSError:
            pass
    t = threading.Thread(target=push, daemon=True)
    t.start()
    t.join(4.0)
    time.sleep(0.5)
    grown = (g.rss_kb() - rss0) // 1024
    c.abort()
    t.join(3.0)
    if str(BINARY).endswith("-asan"):   # ASan's quarantine keeps freed memory resident
        return
    assert grown < 24, ("the gateway's RSS grew by %d MiB while a client that reads nothing "
                        "sent %d MiB" % (grown, sent[0]))


def test_graceful_stop_closes_websockets_at_the_drain_deadline(make_gateway, echo, tmp_path):
    g = life_gateway(make_gateway, echo, tmp_path, "1m", timeouts={"drain": "1s"})
    cid = wsfix.unique_id()
    c = wsfix.connect(g.port, "/ws/echo?c=%s" % cid)
    echo_ok(c, b"before")
    t0 = time.monotonic()
    g.signal(signal.SIGQUIT)
    g.exited_expected = True
    time.sleep(0.3)
    echo_ok(c, b"during the drain")
    c.expect_close(1001, timeout=5.0)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.8, "close 1001 %.2f s after QUIT, before the 1 s drain" % elapsed
    assert elapsed <= 3.5, "close 1001 %.2f s after QUIT (drain 1 s)" % elapsed
    c.close()
    up = echo.conn(cid).wait_done()
    assert up.close_code == 1001, up
    status = g.wait_exit(5.0)
    assert status == 0, "exit status %r after QUIT" % status


def test_max_connections_counts_websockets(make_gateway, echo, tmp_path):
    g = life_gateway(make_gateway, echo, tmp_path, "1m", limits={"max_connections": 3})
    open_ = [wsfix.connect(g.port, "/ws/echo") for _ in range(3)]
    try:
        for c in open_:
            echo_ok(c)
        with wsfix.WSClient(g.port) as extra:
            status, _, _ = extra.handshake("/ws/echo")
            assert status == 503, "a 4th connection over max_connections 3: %r" % extra.response
        first = open_.pop(0)
        first.send_close(1000)
        first.expect_close(1000)
        first.close()

        def fourth():
            with wsfix.WSClient(g.port) as c:
                st, _, _ = c.handshake("/ws/echo")
                if st == 101:
                    c.send_close(1000)
                    c.expect_close(1000)
                return st == 101
        wait_for(fourth, 3.0, "a handshake once one WebSocket closed")
        for c in open_:
            echo_ok(c)
    finally:
        for c in open_:
            c.close()


# ---- 11. the per-worker buffer budget ----

def test_websocket_buffer_pauses_reading(make_gateway, echo, tmp_path):
    """Budget 256k, messages assembled for a ws_message policy: two clients each stall 120k
    into a 200k message; a third one's 200k message does not complete while they stall, and
    does once they are gone."""
    write_policies(tmp_path / "policies", {"wspass": WSPASS})
    g = track(make_gateway(config(
        listeners=[listener("public")],
        upstreams={"echo": {"targets": [echo.address], "retries": 0}},
        routes=[route("/m/", ["wspass"], upstream="echo",
                      websocket={"max_message": "1m", "idle_timeout": "30s",
                                 "close_timeout": "1s"})],
        policies={"dir": str(tmp_path / "policies")},
        limits={"websocket_buffer": "256k"})))
    size = 200 * 1024
    data = pattern_body(size)
    # alone, a 200k message passes
    with wsfix.connect(g.port, "/m/echo", timeout=10.0) as c0:
        echo_ok(c0, data, OP_BINARY)
    stalled = []
    for _ in range(2):
        s = wsfix.connect(g.port, "/m/echo", timeout=10.0)
        raw = frame(OP_BINARY, data)
        s.send_raw(raw[:len(raw) - len(data) + 120 * 1024])
        stalled.append(s)
    time.sleep(0.3)
    c = wsfix.connect(g.port, "/m/echo", timeout=10.0)
    sender = threading.Thread(target=c.send_binary, args=(data,), daemon=True)
    sender.start()
    try:
        c.expect_silence(1.0)
        assert g.alive()
    finally:
        for s in stalled:
            s.close()
    got = c.recv_message(timeout=10.0)
    assert got == (OP_BINARY, data), "the paused message came back damaged (%d bytes)" % len(
        got[1])
    sender.join(5)
    c.send_close(1000)
    c.expect_close(1000)
    c.close()
