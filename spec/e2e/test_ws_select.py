"""Route selection per message (issue 10, docs/websocket.md): a route's `websocket.selection`
names a field of inbound JSON messages, `websocket.actions` maps its string values to chains, and
`websocket.default` takes the rest; the built-in `ws_forward` hands a message to an HTTP upstream
and answers the client with the response. Run with /usr/bin/python3.

One gateway serves most of the module, with the echo upstream (spec/support/ws_upstream.py)
behind every route but /raw/ (the raw upstream, which records every byte). Its user policies:
`trail` (route and listener chains: notes its tag in ctx.trail, drops messages containing
"block", closes 4000 on "rclose", upper-cases "up:..."), `mark` (action chains: rewrites any
message it sees to "<tag>(<direction>,<msg.action>,<ctx.trail>):<data>"), `handler` (answers
the sender "handled:<action>:<direction>:<pgw.ws.id()>" and drops), `tally`, `nap`, `boom`,
`noisy`. Routes:
  /sel/    selection `action`; join, say -> mark; who -> handler; tally; nap (two policies
           around a wait); boom (raises); noisy (a policy with access/ws_connect/ws_close);
           default -> mark "dflt"; route chain trail R.
  /nodef/  join -> mark, no default; route chain trail R.
  /dot/    selection `meta.type`;  /aws/ `$request.body.action`; no route chain, no default.
  /side/   on the listener "side" whose chain is trail L; route chain trail R; join -> mark.
  /raw/    the raw upstream; ask -> handler.
  /fwd/    ws_forward actions to the HTTP upstream `api` (answers by path, see Api) and to a
           refusing port; /fwdd/ ws_forward as the default chain; /fwdk/ behind key_auth.
Config errors go through `passerelle check`; the reload and odd action names start their own
gateway.
"""
import json
import re
import subprocess
import time

import pytest

import stubs
import wsfix
from gw import BINARY, REPO, config, listener, to_yaml, wait_for
from harness import module_env
from policyfix import no_worker_crash, route, track, write_policies  # noqa: F401
from ws_upstream import EchoServer, RawUpstream
from wsfix import OP_BINARY, OP_TEXT

# ---- policies ----

TRAIL = r"""
local pgw = require "pgw"
return {
    schema = { tag = { type = "string", required = true },
               reset = { type = "boolean", default = false } },
    ws_message = function(conf, msg)
        if msg.direction ~= "inbound" then return end
        local ctx = pgw.ctx()
        ctx.trail = (conf.reset and "" or (ctx.trail or "")) .. conf.tag
        local d = msg.data
        if d:find("block", 1, true) then return pgw.ws.drop() end
        if d:find("rclose", 1, true) then return pgw.ws.close(4000, "closed by " .. conf.tag) end
        if d:sub(1, 3) == "up:" then msg.data = d:upper() end
    end,
}
"""

MARK = r"""
local pgw = require "pgw"
return {
    schema = { tag = { type = "string", required = true } },
    ws_message = function(conf, msg)
        msg.data = conf.tag .. "(" .. msg.direction .. "," .. tostring(msg.action) .. ","
                   .. (pgw.ctx().trail or "-") .. "):" .. msg.data
    end,
}
"""

HANDLER = r"""
local pgw = require "pgw"
return {
    ws_message = function(conf, msg)
        pgw.ws.reply("handled:" .. tostring(msg.action) .. ":" .. msg.direction .. ":"
                     .. pgw.ws.id())
        return pgw.ws.drop()
    end,
}
"""

# Notes each message it sees; a message with "report" in it is answered with the notes.
TALLY = r"""
local pgw = require "pgw"
return {
    ws_message = function(conf, msg)
        local ctx = pgw.ctx()
        ctx.tally = (ctx.tally or "") .. msg.direction .. ":" .. tostring(msg.action) .. ";"
        if msg.data:find("report", 1, true) then
            pgw.ws.reply(ctx.tally)
            return pgw.ws.drop()
        end
    end,
}
"""

NAP = r"""
local pgw = require "pgw"
return {
    ws_message = function(conf, msg)
        pgw.sleep(0.05)
        msg.data = "napped:" .. msg.data
    end,
}
"""

BOOM = r"""
return { ws_message = function(conf, msg) error("boom on purpose") end }
"""

# Its other stages must not run from an action chain.
NOISY = r"""
local pgw = require "pgw"
return {
    access = function(conf) return pgw.exit(403, "noisy access ran") end,
    ws_connect = function(conf) pgw.ws.reply("noisy connect ran") end,
    ws_message = function(conf, msg) msg.data = "noisy:" .. msg.data end,
    ws_close = function(conf, info) pgw.log.info("noisy ws_close ran") end,
}
"""

POLICIES = {"trail": TRAIL, "mark": MARK, "handler": HANDLER, "tally": TALLY, "nap": NAP,
            "boom": BOOM, "noisy": NOISY}


def mark(tag):
    return {"mark": {"tag": tag}}


def trail(tag, reset=False):
    return {"trail": {"tag": tag, "reset": reset}}


def fwd(**conf):
    conf.setdefault("upstream", "api")
    return {"ws_forward": conf}


def ws_conf(actions, default=None, selection="action"):
    """A route's websocket map: <actions> {name: [policy entries]}, <default> [entries]."""
    d = {"close_timeout": "1s", "selection": selection,
         "actions": {name: {"policies": p} for name, p in actions.items()}}
    if default is not None:
        d["default"] = {"policies": default}
    return d


# ---- the HTTP integration's upstream ----

class Api(stubs.Upstream):
    """Records every request (stubs.Upstream) and answers by path, then closes:
    /fail 500 "nope"; /empty 200 with no body; /bin 200 application/octet-stream "\\0bin"+body;
    /utf 200 text/plain, not UTF-8; /slow 200 after 1 s; anything else 200 text/plain
    "fwd <path> <body>"."""

    def answer(self, ctx, req):
        p = req.path
        status, ctype, body = 200, "text/plain", b"fwd " + p.encode() + b" " + req.body
        if p == "/fail":
            status, body = 500, b"nope"
        elif p == "/empty":
            body = b""
        elif p == "/bin":
            ctype, body = "application/octet-stream", b"\x00bin" + req.body
        elif p == "/utf":
            body = b"\xff\xfe bad"
        elif p == "/slow":
            time.sleep(1.0)
        ctx.send(stubs.response_bytes(status, [("Content-Type", ctype),
                                               ("Content-Length", str(len(body))),
                                               ("Connection", "close")], body))
        ctx.close()
        return False


# ---- the module's gateway ----

def build_config(files, ups):
    pdir = files / "policies"
    write_policies(pdir, POLICIES)
    sel = ws_conf({"join": [mark("join")], "say": [mark("say")], "who": ["handler"],
                   "tally": ["tally"], "nap": ["nap", mark("nap")], "boom": ["boom"],
                   "noisy": ["noisy"]}, default=[mark("dflt")])
    routes = [
        route("/sel/", [trail("R", True)], upstream="echo", websocket=sel),
        route("/nodef/", [trail("R", True)], upstream="echo",
              websocket=ws_conf({"join": [mark("join")], "say": [mark("say")]})),
        route("/dot/", upstream="echo", websocket=ws_conf({"join": [mark("join")]},
                                                          selection="meta.type")),
        route("/aws/", upstream="echo", websocket=ws_conf({"join": [mark("join")]},
                                                          selection="$request.body.action")),
        route("/side/", [trail("R")], upstream="echo", listeners=["side"],
              websocket=ws_conf({"join": [mark("join")]})),
        route("/raw/", upstream="raw", websocket=ws_conf({"ask": ["handler"]})),
        route("/lim/", upstream="echo", websocket=ws_conf({
            "post": [{"ws_rate_limit": {"by": "ip", "messages": 2, "window": "1h",
                                        "scope": "route", "action": "reply"}}],
            "check": [{"ws_validate": {"schema": {"type": "object", "required": ["text"]}}}]})),
        route("/fwd/", upstream="echo", websocket=ws_conf({
            "ok": [fwd(path="/ok")], "root": [fwd()], "chain": [mark("pre"), fwd(path="/ok")],
            "fail": [fwd(path="/fail")], "faildrop": [fwd(path="/fail", on_error="drop")],
            "failclose": [fwd(path="/fail", on_error="close")], "down": [fwd(upstream="down")],
            "slow": [fwd(path="/slow", timeout=0.5)], "empty": [fwd(path="/empty")],
            "bin": [fwd(path="/bin")], "quiet": [fwd(path="/ok", reply=False)],
            "utf": [fwd(path="/utf")],
            "who": ["handler"]})),
        route("/fwdd/", upstream="echo",
              websocket=ws_conf({"x": [mark("x")]}, default=[fwd(path="/d")])),
        route("/fwdk/", [{"key_auth": {}}], upstream="echo",
              websocket=ws_conf({"ok": [fwd(path="/ok")]})),
    ]
    upstreams = {name: {"targets": [ups[name].address], "retries": 0}
                 for name in ("echo", "raw", "api", "down")}
    side = dict(listener("side"), policies=[trail("L", True)])
    return config(listeners=[listener("public"), side], upstreams=upstreams, routes=routes,
                  policies={"dir": str(pdir)},
                  real_ip={"from": "x-forwarded-for", "trusted": ["127.0.0.1"]},
                  store={"dir": str(files / "store"), "durable_map": "1m", "fast_map": "2m"})


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    files = tmp_path_factory.mktemp("ws-select-files")

    def build():
        ups = {"echo": EchoServer(), "raw": RawUpstream("raw"), "api": Api("api"),
               "down": stubs.RefusingPort()}
        return build_config(files, ups), ups

    e = module_env(request, tmp_path_factory, build)
    e.apikey = e.add_consumer_key("alice")
    return e


@pytest.fixture
def e(env):
    """The module's gateway, watched for worker crashes; .mark is its error log's length."""
    track(env.gw)
    env.gw.assert_alive()
    env.raw.drain()
    env.mark = env.gw.error_mark()
    return env


@pytest.fixture
def echo():
    s = EchoServer()
    yield s
    s.stop()


# ---- helpers ----

def ws_open(e, prefix, listener_name="public", **kw):
    """A WebSocket to the echo upstream through <prefix>; .cid names its upstream connection."""
    cid = wsfix.unique_id()
    c = wsfix.connect(e.gw.ports[listener_name], "%secho?c=%s" % (prefix, cid), **kw)
    c.cid = cid
    e.echo.conn(cid)
    return c


def upstream_got(e, c):
    """What the echo upstream received on <c>'s connection so far."""
    return list(e.echo.conn(c.cid).messages)


def close_clean(c):
    c.send_close(1000, "done")
    c.expect_close(1000, "done", skip_data=False)
    c.close()


def send(c, data, opcode=OP_TEXT):
    c.send_frame(opcode, data.encode() if isinstance(data, str) else data)


def roundtrip(c, data, opcode=OP_TEXT):
    """Sends <data>; returns what comes back (opcode, bytes)."""
    send(c, data, opcode)
    return c.recv_message()


def expect(c, data, opcode=OP_TEXT):
    got = c.recv_message()
    want = (opcode, data.encode() if isinstance(data, str) else data)
    assert got == want, "got %r, expected %r" % (got, want)


def conn_id(c):
    """The connection's id, asked from the `handler` action `who`."""
    op, got = roundtrip(c, '{"action":"who"}')
    m = re.match(r"^handled:who:inbound:([0-9a-f]{32})$", got.decode())
    assert op == OP_TEXT and m, got
    return m.group(1)


# ---- selection: which chain runs ----

J, S, D, NONE = "join", "say", "dflt", None
SEL_CASES = [
    # (payload, opcode, chain expected on /sel/: mark's tag, or D for the default chain)
    ('{"action":"join"}', OP_TEXT, J),
    ('{"action":"say","text":"hi"}', OP_TEXT, S),
    ('{"text":"x","n":[1,{"action":"say"}],"action":"join"}', OP_TEXT, J),
    (' \n{ "action" :\t"join" }\r\n', OP_TEXT, J),
    ('{"action":"j\\u006fin"}', OP_TEXT, J),
    ('{"\\u0061ction":"say"}', OP_TEXT, S),
    ('{"action":"join"}', OP_BINARY, J),
    # a repeated member: the last one counts, as in pgw.json.decode (and pgw_json_get)
    ('{"action":"say","action":"join"}', OP_TEXT, J),
    ('{"action":"join","action":7}', OP_TEXT, D),
    ('{"action":"Join"}', OP_TEXT, D),
    ('{"action":"nope"}', OP_TEXT, D),
    ('{"action":""}', OP_TEXT, D),
    ('{"action":"join\\u0000"}', OP_TEXT, D),
    ('{"action":"join "}', OP_TEXT, D),
    ('{"other":"join"}', OP_TEXT, D),
    ('{}', OP_TEXT, D),
    ('{"meta":{"action":"join"}}', OP_TEXT, D),
    ('{"action":1}', OP_TEXT, D),
    ('{"action":null}', OP_TEXT, D),
    ('{"action":true}', OP_TEXT, D),
    ('{"action":{"join":"join"}}', OP_TEXT, D),
    ('{"action":["join"]}', OP_TEXT, D),
    ('"join"', OP_TEXT, D),
    ('["join"]', OP_TEXT, D),
    ('join', OP_TEXT, D),
    ('', OP_TEXT, D),
    ('{"action":"join"', OP_TEXT, D),
    ('{"action":"join"} x', OP_TEXT, D),
    ('{"action":"join"}{}', OP_TEXT, D),
    ('{"action":"join",}', OP_TEXT, D),
    ("{'action':'join'}", OP_TEXT, D),
    ('{action:"join"}', OP_TEXT, D),
    (b'\x00\x01\x02', OP_BINARY, D),
]


@pytest.mark.parametrize("payload, opcode, chain", SEL_CASES,
                         ids=["%d-%s" % (i, c[2]) for i, c in enumerate(SEL_CASES)])
def test_selection_picks_the_chain(e, payload, opcode, chain):
    """Route chain first (trail R), then the action named by the field's string value (compared
    after JSON unescaping), else the default chain; msg.action is the action, nil in the default
    chain. Binary JSON selects like text. The echo shows that no chain ran twice nor outbound."""
    c = ws_open(e, "/sel/")
    data = payload.encode() if isinstance(payload, str) else payload
    action = "nil" if chain == D else chain
    expected = ("%s(inbound,%s,R):" % (chain, action)).encode() + data
    assert roundtrip(c, data, opcode) == (opcode, expected)
    close_clean(c)
    assert upstream_got(e, c) == [expected.decode() if opcode == OP_TEXT else expected]
    e.gw.assert_no_error(e.mark)


@pytest.mark.parametrize("payload, chain", [
    ('{"action":"join"}', J), ('{"action":"say"}', S), ('{"action":"nope"}', NONE),
    ('{"action":7}', NONE), ('up:{"action":"join"', NONE), ('up:plain text', NONE),
])
def test_without_default_unmatched_messages_pass_unchanged(e, payload, chain):
    """No default chain: a message that selects nothing goes on as the route chain left it
    (trail upper-cases "up:...")."""
    c = ws_open(e, "/nodef/")
    if chain is NONE:
        expected = payload.upper() if payload.startswith("up:") else payload
    else:
        expected = "%s(inbound,%s,R):%s" % (chain, chain, payload)
    assert roundtrip(c, payload) == (OP_TEXT, expected.encode())
    close_clean(c)
    assert upstream_got(e, c) == [expected]


@pytest.mark.parametrize("prefix, payload, selected", [
    ("/dot/", '{"meta":{"type":"join"}}', True),
    ("/dot/", '{"type":"x","meta":{"id":3,"type":"join"},"action":"say"}', True),
    ("/dot/", '{"meta":{"type":"jo\\u0069n"}}', True),
    ("/dot/", '{"type":"join"}', False),
    ("/dot/", '{"meta.type":"join"}', False),
    ("/dot/", '{"meta":"join"}', False),
    ("/dot/", '{"meta":{"kind":"join"}}', False),
    ("/dot/", '{"meta":{"type":{"join":1}}}', False),
    ("/dot/", '{"meta":[{"type":"join"}]}', False),
    ("/dot/", '{"meta":{"type":"join"}', False),
    ("/dot/", '{"meta":{"type":"say"},"meta":{"type":"join"}}', True),
    ("/dot/", '{"meta":{"type":"join","type":"x"}}', False),
    ("/aws/", '{"action":"join"}', True),
    ("/aws/", '{"request":{"body":{"action":"join"}}}', False),
    ("/aws/", '{"$request":{"body":{"action":"join"}}}', False),
])
def test_dotted_and_aws_selection_paths(e, prefix, payload, selected):
    """`meta.type` walks nested objects (the last of repeated members); `$request.body.action`
    is the field `action`."""
    c = ws_open(e, prefix)
    expected = ("join(inbound,join,-):" if selected else "") + payload
    assert roundtrip(c, payload) == (OP_TEXT, expected.encode())
    close_clean(c)


def test_fragmented_message_is_assembled_before_selection(e):
    """/aws/ has no route ws_message policy: its actions alone make the gateway assemble
    messages, so a selector split over frames (text and binary) still selects."""
    c = ws_open(e, "/aws/")
    c.send_fragments(OP_TEXT, [b'{"act', b'ion":"jo', b'in"}'])
    expect(c, 'join(inbound,join,-):{"action":"join"}')
    c.send_fragments(OP_BINARY, [b'{"action"', b':"join"', b', "n":1}'])
    expect(c, b'join(inbound,join,-):{"action":"join", "n":1}', OP_BINARY)
    c.send_fragments(OP_TEXT, [b'{"action":', b'"x"}'])
    expect(c, '{"action":"x"}')
    close_clean(c)


def test_odd_action_names(make_gateway, echo, tmp_path):
    """Action names are compared byte for byte: spaces, dots, UTF-8 (raw or \\u-escaped in the
    message), and an action called "default" that is not the default chain."""
    write_policies(tmp_path / "policies", {"mark": MARK})
    ws = ws_conf({"chat message": [mark("sp")], "a.b": [mark("dot")], "café": [mark("cafe")],
                  "default": [mark("named")]}, default=[mark("dflt")])
    g = track(make_gateway(config(
        upstreams={"echo": {"targets": [echo.address], "retries": 0}},
        routes=[route("/o/", upstream="echo", websocket=ws)],
        policies={"dir": str(tmp_path / "policies")})))
    c = wsfix.connect(g.port, "/o/echo")
    for payload, tag, action in [
            ('{"action":"chat message"}', "sp", "chat message"),
            ('{"action":"a.b"}', "dot", "a.b"),
            ('{"action":"café"}', "cafe", "café"),
            ('{"action":"caf\\u00e9"}', "cafe", "café"),
            ('{"action":"cafe\\u0301"}', "dflt", "nil"),
            ('{"action":"default"}', "named", "default"),
            ('{"action":"chat"}', "dflt", "nil")]:
        assert roundtrip(c, payload) == (
            OP_TEXT, ("%s(inbound,%s,-):%s" % (tag, action, payload)).encode()), payload
    close_clean(c)
    g.assert_no_error()


# ---- chains: order, drops, outbound, waits, errors ----

def test_listener_and_route_chains_run_first(e):
    """listener chain, route chain, then the action (its mark shows the trail "LR"); a drop or
    a close in an earlier chain keeps the action chain from running."""
    c = ws_open(e, "/side/", "side")
    assert roundtrip(c, '{"action":"join"}') == (
        OP_TEXT, b'join(inbound,join,LR):{"action":"join"}')
    send(c, '{"action":"join","x":"block"}')          # dropped by L
    assert roundtrip(c, 'plain') == (OP_TEXT, b'plain')
    close_clean(c)
    assert upstream_got(e, c) == ['join(inbound,join,LR):{"action":"join"}', 'plain']


def test_route_chain_drop_and_close_stop_the_action_chain(e):
    c = ws_open(e, "/sel/")
    send(c, '{"action":"who","x":"block"}')   # the route drops it: no "handled" reply
    send(c, 'block')                          # nor does the default chain run
    send(c, '{"action":"join","x":"block"}')
    assert roundtrip(c, '{"action":"who"}')[1].startswith(b"handled:who:inbound:")
    assert upstream_got(e, c) == []
    send(c, '{"action":"join","x":"rclose"}')
    f = c.expect_close(4000, "closed by R", skip_data=False)
    assert f is not None
    c.close()
    up = e.echo.conn(c.cid).wait_done()
    assert up.messages == [], up


def test_outbound_messages_never_run_action_chains(e):
    """An inbound message that selects `tally` reaches the echo upstream unchanged; its echo
    comes back as JSON selecting `tally` again, and a push carries one too: neither runs the
    action chain (tally notes only inbound messages)."""
    c = ws_open(e, "/sel/")
    wid = conn_id(c)
    assert roundtrip(c, '{"action":"tally"}') == (OP_TEXT, b'{"action":"tally"}')
    cp = e.gw.cli("ws-send", wid, '{"action":"tally","pushed":1}')
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    expect(c, '{"action":"tally","pushed":1}')
    cp = e.gw.cli("ws-send", wid, '{"action":"who"}')
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    expect(c, '{"action":"who"}')                      # not answered by the handler
    assert roundtrip(c, '{"action":"tally","report":1}') == (
        OP_TEXT, b"inbound:tally;inbound:tally;")
    close_clean(c)
    assert upstream_got(e, c) == ['{"action":"tally"}']


def test_action_chain_that_waits_keeps_order(e):
    """`nap` sleeps then rewrites, and the next policy of the action chain runs after the
    wait; messages behind it wait their turn."""
    c = ws_open(e, "/sel/")
    send(c, '{"action":"nap","i":1}')
    send(c, '{"action":"join","i":2}')
    send(c, '{"action":"nap","i":3}')
    send(c, 'four')
    expect(c, 'nap(inbound,nap,R):napped:{"action":"nap","i":1}')
    expect(c, 'join(inbound,join,R):{"action":"join","i":2}')
    expect(c, 'nap(inbound,nap,R):napped:{"action":"nap","i":3}')
    expect(c, 'dflt(inbound,nil,R):four')
    close_clean(c)


def test_action_chain_error_closes_1011(e):
    c = ws_open(e, "/sel/")
    assert roundtrip(c, '{"action":"join"}')[0] == OP_TEXT
    send(c, '{"action":"boom"}')
    c.expect_close(1011)
    c.close()
    up = e.echo.conn(c.cid).wait_done()
    assert up.messages == ['join(inbound,join,R):{"action":"join"}'] and up.close_code == 1011, up
    assert [l for l in e.gw.errors_since(e.mark) if "boom on purpose" in l], e.gw.error_lines()[-5:]


def test_only_ws_message_runs_in_action_chains(e):
    """`noisy` (in the action noisy only) has access (403), ws_connect (a reply) and ws_close
    (a log line): the handshake succeeds, nothing is sent first, only ws_message runs."""
    c = ws_open(e, "/sel/")
    assert roundtrip(c, '{"action":"noisy"}') == (OP_TEXT, b'noisy:{"action":"noisy"}')
    close_clean(c)
    e.echo.conn(c.cid).wait_done()
    time.sleep(0.1)
    assert not [l for l in e.gw.error_lines()[e.mark:] if "noisy ws_close ran" in l]


def test_handler_answers_itself_and_upstream_gets_nothing(e):
    """/raw/: the action `ask` answers the client and drops; the raw upstream receives only the
    other messages. Upstream messages selecting `ask` are relayed, not handled."""
    c, conn = raw_open(e)
    op, got = roundtrip(c, '{"action":"ask"}')
    assert op == OP_TEXT and re.match(rb"^handled:ask:inbound:[0-9a-f]{32}$", got), got
    op, got = roundtrip(c, '{"action":"ask"}', OP_BINARY)
    assert op == OP_TEXT and got.startswith(b"handled:ask:inbound:"), got
    send(c, '{"action":"other"}')
    send(c, b'\xffraw', OP_BINARY)
    assert conn.recv_message() == (OP_TEXT, b'{"action":"other"}')
    assert conn.recv_message() == (OP_BINARY, b'\xffraw')
    conn.send_text('{"action":"ask"}')
    expect(c, '{"action":"ask"}')
    conn.expect_silence(0.2)
    c.send_close(1000)
    conn.expect_close(1000, eof=False)
    c.expect_close(1000)
    c.close()
    conn.close()


def raw_open(e):
    """A WebSocket through /raw/ and the raw upstream's side of it, both past the handshake."""
    c = wsfix.WSClient(e.port)
    c.send_handshake("/raw/t")
    conn = e.raw.next_conn()
    conn.accept(conn.read_request())
    c.read_handshake()
    c.check_101()
    return c, conn


def test_upstream_messages_stream_and_replies_wait_for_their_end(e):
    """/raw/ has actions only (no route or listener ws_message function), so no function ever
    sees an upstream message: those are not assembled but stream to the client a fragment at a
    time (the first arrives before the upstream sent the last). A reply of an action that comes
    while such a message is half relayed waits for its end (a data frame must not cut into a
    fragmented message); the client is not read meanwhile, so its next message reaches the
    upstream after that; then everything flows again, replies at once."""
    c, conn = raw_open(e)
    conn.send_frame(OP_TEXT, b"part1-", fin=False)
    f = c.recv_frame()
    assert (f.opcode, f.fin, f.payload) == (OP_TEXT, False, b"part1-"), f
    send(c, '{"action":"ask"}')
    send(c, '{"action":"other"}')
    c.expect_silence(0.3)      # the reply waits for the end of the upstream's message
    conn.expect_silence(0.1)   # and the client's next message waits behind it
    conn.send_frame(wsfix.OP_CONT, b"part2", fin=False)
    f = c.recv_frame()
    assert (f.opcode, f.fin, f.payload) == (wsfix.OP_CONT, False, b"part2"), f
    conn.send_frame(wsfix.OP_CONT, b"", fin=True)
    f = c.recv_frame()
    assert (f.opcode, f.fin, f.payload) == (wsfix.OP_CONT, True, b""), f
    op, got = c.recv_message()
    assert op == OP_TEXT and re.match(rb"^handled:ask:inbound:[0-9a-f]{32}$", got), got
    assert conn.recv_message() == (OP_TEXT, b'{"action":"other"}')
    # between upstream messages a reply goes at once; a ping may cut into a streaming message
    op, got = roundtrip(c, '{"action":"ask"}')
    assert op == OP_TEXT and got.startswith(b"handled:ask:inbound:"), got
    conn.send_frame(OP_BINARY, b"\x01", fin=False)
    conn.send_frame(wsfix.OP_PING, b"p")
    conn.send_frame(wsfix.OP_CONT, b"\x02", fin=True)
    assert [(f.opcode, f.fin, f.payload) for f in (c.recv_frame(), c.recv_frame(),
                                                    c.recv_frame())] == [
        (OP_BINARY, False, b"\x01"), (wsfix.OP_PING, True, b"p"), (wsfix.OP_CONT, True, b"\x02")]
    c.send_close(1000)
    conn.expect_close(1000, eof=False)
    c.expect_close(1000)
    c.close()
    conn.close()


def test_client_closing_while_a_reply_waits(e):
    """The client closes while its action's reply waits for an upstream message to end: the
    close goes through once the message ended and the reply was sent, nothing is lost or
    crashes, and the connection's close line is written."""
    c, conn = raw_open(e)
    conn.send_frame(OP_TEXT, b"half", fin=False)
    assert c.recv_frame().payload == b"half"
    send(c, '{"action":"ask"}')
    c.send_close(1000, "bye")
    conn.expect_silence(0.2)
    conn.send_frame(wsfix.OP_CONT, b"-end", fin=True)
    assert c.recv_frame().payload == b"-end"
    assert c.recv_message()[1].startswith(b"handled:ask:inbound:")
    conn.expect_close(1000, eof=False)
    conn.send_close(1000)
    c.expect_close(1000)
    c.close()
    conn.close()


def test_limits_and_validation_per_action(e):
    """ws_rate_limit and ws_validate in action chains: `post` is limited to 2 messages per hour
    per client address (counted across two connections of the same address: the address comes
    from pgw.ws.client_addr(), there is no access stage in an action), other actions are not
    counted, and another address has its own count; `check` validates only its own messages."""
    a, b = ws_open(e, "/lim/"), ws_open(e, "/lim/")
    expect_echo = [(a, '{"action":"post","n":1}'), (b, '{"action":"post","n":2}'),
                   (a, '{"action":"other"}'), (a, 'not json'), (b, '{"action":"check","text":1}')]
    for c, m in expect_echo:
        assert roundtrip(c, m) == (OP_TEXT, m.encode()), m
    assert roundtrip(b, '{"action":"post","n":3}') == (OP_TEXT, b'{"error":"rate limit exceeded"}')
    assert roundtrip(a, '{"action":"post","n":4}') == (OP_TEXT, b'{"error":"rate limit exceeded"}')
    # another client address (X-Forwarded-For from a trusted peer) has its own count
    c = ws_open(e, "/lim/", headers=[("X-Forwarded-For", "10.9.9.9")])
    assert roundtrip(c, '{"action":"post","n":6}') == (OP_TEXT, b'{"action":"post","n":6}')
    close_clean(c)
    op, got = roundtrip(a, '{"action":"check"}')
    assert op == OP_TEXT and b"text" in got and b"error" in got, got
    assert roundtrip(a, '{"action":"other","n":5}') == (OP_TEXT, b'{"action":"other","n":5}')
    for c in (a, b):
        close_clean(c)
    assert upstream_got(e, a) == ['{"action":"post","n":1}', '{"action":"other"}', 'not json',
                                  '{"action":"other","n":5}']


# ---- ws_forward ----

def test_forward_posts_the_message_and_replies(e):
    c = ws_open(e, "/fwd/")
    wid = conn_id(c)
    snap = e.api.snapshot()
    assert roundtrip(c, '{"action":"ok","n":1}') == (OP_TEXT, b'fwd /ok {"action":"ok","n":1}')
    assert roundtrip(c, '{"action":"ok","b":1}', OP_BINARY) == (
        OP_TEXT, b'fwd /ok {"action":"ok","b":1}')
    assert roundtrip(c, '{"action":"root"}') == (OP_TEXT, b'fwd / {"action":"root"}')
    assert roundtrip(c, '{"action":"chain"}') == (
        OP_TEXT, b'fwd /ok pre(inbound,chain,-):{"action":"chain"}')
    assert roundtrip(c, 'not json') == (OP_TEXT, b'not json')
    reqs = e.api.since(snap)[0]
    assert [(r.method, r.path, r.body, r.header("x-websocket-action")) for r in reqs] == [
        ("POST", "/ok", b'{"action":"ok","n":1}', "ok"),
        ("POST", "/ok", b'{"action":"ok","b":1}', "ok"),
        ("POST", "/", b'{"action":"root"}', "root"),
        ("POST", "/ok", b'pre(inbound,chain,-):{"action":"chain"}', "chain")]
    types = [(r.header("content-type") or "").split(";")[0].strip() for r in reqs]
    assert types == ["application/json", "application/octet-stream", "application/json",
                     "application/json"], types
    assert {r.header("x-websocket-id") for r in reqs} == {wid}
    assert all(len(r.headers_all("x-websocket-id")) == 1 and not r.headers_all("x-consumer")
               for r in reqs)
    close_clean(c)
    assert upstream_got(e, c) == ["not json"], "a forwarded message reached the WebSocket upstream"
    e.gw.assert_no_error(e.mark)


def test_forward_as_default_chain(e):
    """ws_forward in `default`: no X-WebSocket-Action; binary non-JSON is posted as
    application/octet-stream."""
    c = ws_open(e, "/fwdd/")
    snap = e.api.snapshot()
    assert roundtrip(c, '{"action":"y"}') == (OP_TEXT, b'fwd /d {"action":"y"}')
    assert roundtrip(c, b'\x01\x02bin', OP_BINARY) == (OP_TEXT, b'fwd /d \x01\x02bin')
    assert roundtrip(c, '{"action":"x"}') == (OP_TEXT, b'x(inbound,x,-):{"action":"x"}')
    reqs = e.api.since(snap)[0]
    assert [(r.path, r.body, r.headers_all("x-websocket-action")) for r in reqs] == [
        ("/d", b'{"action":"y"}', []), ("/d", b'\x01\x02bin', [])]
    assert (reqs[1].header("content-type") or "").startswith("application/octet-stream")
    assert re.match(r"^[0-9a-f]{32}$", reqs[0].header("x-websocket-id") or ""), reqs[0].headers
    close_clean(c)
    assert upstream_got(e, c) == ['x(inbound,x,-):{"action":"x"}']


@pytest.mark.parametrize("action, answer, reaches_api", [
    ("fail", {"status": 500}, True),
    ("down", {"status": 502, "error": "connect failed"}, False),
    ("slow", {"status": 502, "error": "timeout"}, True),
    ("faildrop", None, True),
    ("empty", None, True),
    ("quiet", None, True),
    ("bin", (OP_BINARY, b'\x00bin{"action":"bin"}'), True),
    ("utf", {}, True),
])
def test_forward_outcomes(e, action, answer, reaches_api):
    """Non-2xx / failed requests answer {"error":...,"status":N} by default, nothing with
    on_error: drop; an empty 2xx body and reply: false answer nothing; an
    application/octet-stream body comes back binary; a text body that is not UTF-8 is an error.
    The connection goes on in every case, and the message never reaches the WebSocket
    upstream."""
    c = ws_open(e, "/fwd/")
    snap = e.api.snapshot()
    msg = '{"action":"%s"}' % action
    send(c, msg)
    send(c, "next")
    if isinstance(answer, dict):
        op, got = c.recv_message()
        assert op == OP_TEXT, got
        err = json.loads(got)
        assert set(err) == {"error", "status"} and isinstance(err["error"], str) and err["error"]
        assert all(err[k] == v for k, v in answer.items()), err
    elif answer is not None:
        assert c.recv_message() == answer
    expect(c, "next")
    reqs = e.api.since(snap)[0]
    assert [r.body for r in reqs] == ([msg.encode()] if reaches_api else [])
    close_clean(c)
    assert upstream_got(e, c) == ["next"]


def test_forward_names_the_consumer(e):
    """key_auth in the route chain identified the handshake: the request carries X-Consumer."""
    c = ws_open(e, "/fwdk/", headers=[("apikey", e.apikey)])
    snap = e.api.snapshot()
    assert roundtrip(c, '{"action":"ok"}') == (OP_TEXT, b'fwd /ok {"action":"ok"}')
    (r,) = e.api.since(snap)[0]
    assert r.headers_all("x-consumer") == ["alice"], r.headers
    close_clean(c)


def test_client_gone_while_forward_waits(e):
    """The client drops (RST) while ws_forward waits for the HTTP upstream: the connection is
    cleaned up when the answer comes (or times out) and the worker carries on."""
    c = ws_open(e, "/fwd/")
    snap = e.api.snapshot()
    send(c, '{"action":"slow"}')
    e.api.wait_requests(1, snap=snap)
    c.abort()
    e.echo.conn(c.cid).wait_done()
    c2 = ws_open(e, "/fwd/")
    assert roundtrip(c2, '{"action":"ok"}') == (OP_TEXT, b'fwd /ok {"action":"ok"}')
    close_clean(c2)
    e.gw.assert_no_error(e.mark)


def test_forward_on_error_close(e):
    c = ws_open(e, "/fwd/")
    send(c, '{"action":"failclose"}')
    c.expect_close(1011, skip_data=False)
    c.close()
    up = e.echo.conn(c.cid).wait_done()
    assert up.messages == [], up


# ---- config errors ----

GOOD_CHAIN = [{"ws_validate": {"schema": {"type": "object"}}}]


def check(tmp_path, ws, extra_upstreams=None):
    """`passerelle check` of a config whose route "chat" has websocket <ws>: (rc, output)."""
    ups = {"a": {"targets": ["127.0.0.1:9"]}}
    ups.update(extra_upstreams or {})
    cfg = config(listeners=[listener("public")], upstreams=ups,
                 routes=[route("/ws", name="chat", upstream="a", websocket=ws)])
    path = tmp_path / "gw.yaml"
    path.write_text(to_yaml(cfg) + "\n")
    cp = subprocess.run([str(BINARY), "check", "-c", str(path)], cwd=str(REPO),
                        capture_output=True, text=True, timeout=60)
    return cp.returncode, cp.stdout + cp.stderr


def sel(selection="action", actions=None, **kw):
    d = {"selection": selection, "actions": {"join": {"policies": GOOD_CHAIN}}
         if actions is None else actions}
    d.update(kw)
    return d


@pytest.mark.parametrize("ws", [
    sel(),
    sel("meta.type"),
    sel("a.b.c.d.e.f.g.h"),
    sel("$request.body.meta.type"),
    sel(default={"policies": GOOD_CHAIN}),
    sel(actions={"j" * 256: {"policies": GOOD_CHAIN}}),
    sel(actions={"join": {"policies": [fwd(upstream="a", path="/j", timeout=2, reply=False,
                                           on_error="close")]}}),
], ids=["plain", "dotted", "8-segments", "aws", "default", "256-byte-name", "ws_forward"])
def test_check_accepts(tmp_path, ws):
    rc, out = check(tmp_path, ws)
    assert rc == 0, out


@pytest.mark.parametrize("ws, words", [
    ({"actions": {"join": {"policies": GOOD_CHAIN}}}, ["selection"]),
    ({"selection": "action"}, ["actions"]),
    (sel(actions={}), ["actions"]),
    ({"default": {"policies": GOOD_CHAIN}}, ["default"]),
    (sel(actions={"join": {"policies": []}}), ["join", "policies"]),
    (sel(actions={"j" * 257: {"policies": GOOD_CHAIN}}), ["actions"]),
    (sel(""), ["selection"]),
    (sel("a..b"), ["selection"]),
    (sel(".a"), ["selection"]),
    (sel("a.b.c.d.e.f.g.h.i"), ["selection"]),
    (sel("a b"), ["selection"]),
    (sel("$request.body."), ["selection"]),
    (sel(["action"]), ["selection"]),
    (sel(actions={"join": GOOD_CHAIN}), ["join"]),
    (sel(actions={"join": {}}), ["join", "policies"]),
    (sel(actions={"join": {"policies": GOOD_CHAIN, "timeout": 1}}), ["join", "timeout"]),
    (sel(actions={"join": {"policies": [{"key_auth": {}}]}}),
     ["chat", "join", "key_auth", "ws_message"]),
    (sel(default={"policies": [{"key_auth": {}}]}), ["chat", "default", "key_auth"]),
    (sel(default=GOOD_CHAIN), ["default"]),
    (sel(actions={"join": {"policies": [{"ws_validate": {}}]}}), ["ws_validate"]),
    (sel(actions={"join": {"policies": [{"ws_forward": {}}]}}), ["upstream"]),
    (sel(actions={"join": {"policies": [fwd(upstream="nosuch")]}}), ["nosuch"]),
    (sel(actions={"join": {"policies": [fwd(upstream="a", path="j")]}}), ["path"]),
    (sel(actions={"join": {"policies": [fwd(upstream="a", on_error="explode")]}}),
     ["on_error"]),
], ids=["actions-without-selection", "selection-without-actions", "empty-actions",
        "default-alone", "empty-policies", "257-byte-name",
        "empty-selection", "empty-segment", "leading-dot", "9-segments", "space",
        "aws-prefix-only",
        "selection-list", "action-not-a-map", "action-without-policies", "action-unknown-key",
        "action-without-ws_message", "default-without-ws_message", "default-not-a-map",
        "bad-policy-conf", "forward-no-upstream", "forward-unknown-upstream", "forward-bad-path",
        "forward-bad-on_error"])
def test_check_refuses(tmp_path, ws, words):
    rc, out = check(tmp_path, ws)
    assert rc != 0, "passerelle check accepted %r: %s" % (ws, out)
    missing = [w for w in words if w not in out]
    assert not missing, "the error does not mention %r: %s" % (missing, out)


# ---- reload ----

def test_reload_keeps_the_action_chains_of_open_websockets(make_gateway, echo, tmp_path):
    """An open WebSocket keeps its generation's actions after a reload that removes `join` and
    adds `leave` (a new one gets the new actions), and after one that removes its route."""
    write_policies(tmp_path / "policies", {"mark": MARK})

    def cfg(actions):
        return config(upstreams={"echo": {"targets": [echo.address], "retries": 0}},
                      routes=[route("/l/", upstream="echo", websocket=ws_conf(actions))],
                      policies={"dir": str(tmp_path / "policies")})
    g = track(make_gateway(cfg({"join": [mark("v1")]})))
    old = wsfix.connect(g.port, "/l/echo")
    join, leave = '{"action":"join"}', '{"action":"leave"}'
    assert roundtrip(old, join) == (OP_TEXT, b"v1(inbound,join,-):" + join.encode())

    cp = g.reload(cfg({"leave": [mark("v2")]}))
    assert cp.returncode == 0, (cp.stdout, cp.stderr)

    def new_generation():
        c = wsfix.connect(g.port, "/l/echo")
        got = roundtrip(c, leave)
        close_clean(c)
        return got == (OP_TEXT, b"v2(inbound,leave,-):" + leave.encode())
    wait_for(new_generation, 5.0, "a new WebSocket on the new actions")

    new = wsfix.connect(g.port, "/l/echo")
    assert roundtrip(new, join) == (OP_TEXT, join.encode())
    assert roundtrip(old, join) == (OP_TEXT, b"v1(inbound,join,-):" + join.encode()), (
        "the open WebSocket lost its action")
    assert roundtrip(old, leave) == (OP_TEXT, leave.encode())
    close_clean(new)

    # a second reload removes the route: the open WebSocket still has its generation's action
    gone = cfg({"leave": [mark("v3")]})
    gone["routes"][0]["match"] = {"path": "/other/"}
    cp = g.reload(gone)
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    wait_for(lambda: wsfix.handshake(g.port, "/l/echo")[0] == 404, 5.0, "/l/ gone")
    assert roundtrip(old, join) == (OP_TEXT, b"v1(inbound,join,-):" + join.encode())
    close_clean(old)
    g.assert_no_error()
