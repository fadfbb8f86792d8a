"""OAuth 2.0 token introspection end to end (docs/jwt.md, section `oauth2_introspection`, and the
keys it shares with the `jwt` policy): the built-in policy `oauth2_introspection` run by
./passerelle against spec/support/introspect_stub.py, an RFC 7662 endpoint over HTTP and HTTPS
(the test CA of tlsfix, trusted through `policies.http_ca`) that checks the gateway's client
credentials, records every call and answers from a token table the tests set.

- An active token reaches the upstream with the consumer header (from `sub`, or the
  `consumer_claim`), `claims_to_headers` (strings, numbers, arrays, other JSON), client-sent
  copies of those headers removed; `pgw.ctx()` holds consumer, plan, groups, scopes and
  `oauth2.claims`; claim values cannot inject headers.
- Inactive or unknown token: 401 `Bearer realm="passerelle", error="invalid_token"`; no token:
  401 `Bearer realm="passerelle"`; `anonymous`, `realm`, `query`, `cookie`,
  `hide_credentials`; a caller identified by an earlier key_auth passes without a token.
- Caching: an active token is introspected once, until its `exp` and at most `ttl`; an inactive
  one is cached `negative_ttl`; one route's answer does not serve another route asking with
  other client credentials; the failures of the authorization server (500, a body that is not
  JSON, JSON that is not an object, no answer or a stalled body past `timeout`, a closed or
  refused connection, a 401 for the gateway's credentials) answer 503 and are not cached; a
  pending call does not hold up other requests.
- The call: POST, form-urlencoded `token` (form-special characters encoded) and
  `token_type_hint`, HTTP Basic credentials (form-urlencoded before base64, RFC 6749 2.3.1) or
  `auth_method: post`.
- `required_scopes` (403 insufficient_scope), `require_consumer` (the store's consumers).
- `passerelle check` refuses a missing url / client_id / client_secret, an http:// url without
  `allow_http`, a URL pgw.http cannot use, a bad auth_method; it never prints the secret.
- HTTPS: the test CA works; an untrusted certificate or another name answers 503.
- Last: neither the client secret nor any token appears in the error log (level debug), the
  access log or stderr.

One gateway for the module (one worker, so one cache); every test uses tokens of its own.
"""
import base64
import json
import re
import secrets
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote_plus

import pytest

import tlsfix
from gw import BINARY, REPO, Client, Gateway, config, listener, to_yaml, wait_for
from harness import ModuleEnv, stop_checked
from introspect_stub import INACTIVE, HTTPSIntrospectStub, IntrospectStub, active
from policyfix import LUA_COPY, no_worker_crash, route, track, write_policies  # noqa: F401
from stubs import RefusingPort, Upstream

RUN = secrets.token_hex(4)
CLIENT_ID = "gateway"
SECRET = "s3cr3t-basic-%s" % RUN
POST_ID = "gw-post"
POST_SECRET = "s3cr3t-post-%s" % RUN
SPECIAL_ID = "gw id:1"
SPECIAL_SECRET = "s3cr/t+x%%y z-%s" % RUN
CLIENTS = {CLIENT_ID: SECRET, POST_ID: POST_SECRET, SPECIAL_ID: SPECIAL_SECRET}
APIKEY = "apikey-alice-%s" % RUN

CHALLENGE = 'Bearer realm="passerelle"'
INVALID = 'Bearer realm="passerelle", error="invalid_token"'
FORM = "application/x-www-form-urlencoded"

# every token sent in an Authorization header during the module (the last test greps the logs)
TOKENS = []

SHOWCTX = """
local pgw = require "pgw"
""" + LUA_COPY + """return {
    access = function(conf, req)
        local c = pgw.ctx()
        pgw.req.set_header("X-Ctx", pgw.json.encode({
            consumer = c.consumer or false,
            plan = c["consumer.plan"] or false,
            groups = copy(c["consumer.groups"]) or false,
            scopes = copy(c["auth.scopes"]) or false,
            claims = copy(c["oauth2.claims"]) or false,
        }))
    end,
}
"""


def tok(label, secret=True):
    """A fresh token (unique to this run); remembered for the log check unless <secret> is
    False (tokens sent in a query string, which the log check leaves out)."""
    t = "tok-%s-%s" % (label, secrets.token_urlsafe(12))
    if secret:
        TOKENS.append(t)
    return t


def future(seconds=3600):
    return int(time.time()) + seconds


def make_certs(d):
    """The few certificates these tests need (tlsfix's CA, a trusted localhost, a localhost
    signed by another CA, another name), made with tlsfix's recipes."""
    store = tlsfix.CertStore(d)
    d.mkdir(parents=True, exist_ok=True)
    (d / "base.cnf").write_text(tlsfix._BASE_CNF)
    levels = [("ca", "other_ca"), ("localhost", "rogue_localhost", "other_name")]
    for i, name in enumerate(n for level in levels for n in level):
        store.serials[name] = 0x7100 + i
    with ThreadPoolExecutor(max_workers=4) as pool:
        for level in levels:
            list(pool.map(store._make, level))
    return store


def o2(path, url, extra_policies=(), **settings):
    """A route <path> whose first policy is oauth2_introspection against <url> with the basic
    client credentials, allow_http for http:// URLs; <settings> override (None: left out)."""
    conf = {"url": url, "client_id": CLIENT_ID, "client_secret": SECRET}
    if url.startswith("http://"):
        conf["allow_http"] = True
    conf.update(settings)
    conf = {k: v for k, v in conf.items() if v is not None}
    return route(path, [{"oauth2_introspection": conf}] + list(extra_policies))


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    base = tmp_path_factory.mktemp("oauth2")
    certs = make_certs(base / "certs")
    pdir = base / "policies"
    write_policies(pdir, {"showctx": SHOWCTX})
    s = {
        "a": Upstream("a"),
        "as_": IntrospectStub("as", clients=CLIENTS),
        "as_tls": HTTPSIntrospectStub("as-tls", certs.cert("localhost"), certs.key("localhost"),
                                      clients=CLIENTS),
        "as_rogue": HTTPSIntrospectStub("as-rogue", certs.cert("rogue_localhost"),
                                        certs.key("rogue_localhost"), clients=CLIENTS),
        "as_other": HTTPSIntrospectStub("as-other", certs.cert("other_name"),
                                        certs.key("other_name"), clients=CLIENTS),
        "refused": RefusingPort(),
    }
    url = "http://%s/introspect" % s["as_"].address
    claims = {"sub": "X-User", "username": "X-Username", "scope": "X-Scope", "num": "X-Num",
              "roles": "X-Roles", "obj": "X-Obj", "flag": "X-Flag", "missing": "X-Missing"}
    routes = [
        o2("/main/", url, ["showctx"], claims_to_headers=claims),
        o2("/cid/", url, consumer_claim="client_id", hide_credentials=True,
           query="access_token", cookie="at", realm="orders"),
        o2("/fmt/", url, claims_to_headers={"v": "X-V"}),
        route("/both/", [{"key_auth": {}}, {"oauth2_introspection": {
            "url": url, "allow_http": True, "client_id": CLIENT_ID, "client_secret": SECRET}}]),
        o2("/anon/", url, consumer_claim="username", anonymous="guest"),
        o2("/scoped/", url, required_scopes=["orders:read"]),
        o2("/known/", url, ["showctx"], require_consumer=True),
        o2("/short/", url, ttl="1s", negative_ttl="1s"),
        o2("/slow/", url, timeout="300ms"),
        o2("/post/", url, auth_method="post", client_id=POST_ID, client_secret=POST_SECRET,
           token_type_hint=""),
        o2("/special/", url, client_id=SPECIAL_ID, client_secret=SPECIAL_SECRET),
        o2("/badcreds/", url, client_secret=SECRET + "-wrong"),
        o2("/refused/", "http://%s/introspect" % s["refused"].address),
        o2("/tls/", "https://localhost:%d/introspect" % s["as_tls"].port),
        o2("/rogue/", "https://localhost:%d/introspect" % s["as_rogue"].port),
        o2("/othername/", "https://localhost:%d/introspect" % s["as_other"].port),
    ]
    cfg = config(listeners=[listener("public")],
                 upstreams={"a": {"targets": [s["a"].address], "retries": 0}},
                 routes=routes,
                 policies={"dir": str(pdir), "http_ca": certs.cert("ca")},
                 store={"dir": str(base / "store"), "durable_map": "1m", "fast_map": "2m"},
                 plans={"gold": {"rate": {"limit": 1000, "per": "1s"}}},
                 error_log={"path": str(base / "error.log"), "level": "debug"})
    g = Gateway(cfg, base, start=False)
    extra = []   # stubs started by tests (stopped here too)

    def fin():
        problems = stop_checked(g) if g.proc is not None else []
        for stub in list(s.values()) + extra:
            stub.stop()
        if problems:
            raise AssertionError("\n".join(problems))

    request.addfinalizer(fin)
    g.start()
    cp = g.cli("consumers", "add", "alice", "--plan", "gold", "--groups", "staff,beta")
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    cp = g.cli("keys", "add", "--consumer", "alice", "--key", APIKEY)
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    e = ModuleEnv(g, s)
    e.extra = extra
    e.url = url
    return e


@pytest.fixture(autouse=True)
def _track_gateway(env, no_worker_crash):  # noqa: F811
    track(env.gw)


# ---- helpers ----

def ask(env, target, token=None, headers=(), scheme="Bearer"):
    hdrs = list(headers)
    if token is not None:
        hdrs.append(("Authorization", "%s %s" % (scheme, token)))
    with Client(env.port) as c:
        c.request("GET", target, headers=hdrs)
        return c.read_response()


def upstream_sees(env, target, token=None, headers=(), scheme="Bearer"):
    """(response, [requests the upstream received for it])."""
    snap = env.a.snapshot()
    r = ask(env, target, token, headers, scheme)
    return r, env.a.since(snap)[0]


def passed(env, target, token, headers=()):
    """Asserts the request reached the upstream with a 200; returns the upstream's request."""
    r, got = upstream_sees(env, target, token, headers)
    assert r.status == 200 and r.body == b"hello from a\n", (target, token, r)
    assert len(got) == 1, got
    return got[0]


def refused(env, target, token, status, challenge=None, headers=()):
    r, got = upstream_sees(env, target, token, headers)
    assert r.status == status, (target, token, r)
    assert got == [], "a refused request reached the upstream: %r" % got
    if challenge is not None:
        assert r.headers_all("www-authenticate") == [challenge], r
    return r


def ctx_of(upreq):
    v = upreq.header("x-ctx")
    assert v is not None, "the showctx policy set no X-Ctx: %r" % upreq.headers
    return json.loads(v)


def basic_of(cid, secret):
    return base64.b64encode(("%s:%s" % (quote_plus(cid), quote_plus(secret))).encode()).decode()


# ---- active tokens ----

def test_active_token_reaches_upstream_with_identity_and_claims(env):
    t = tok("active")
    exp = future()
    env.as_.tokens[t] = active(sub="alice", scope="orders:read orders:write", exp=exp,
                               client_id="app-1", username="alice.smith", num=42,
                               roles=["admin", "ops"], obj={"tier": "gold", "n": 1}, flag=True,
                               custom="custom-value")
    forged = [("X-User", "mallory"), ("x-user", "mallory2"), ("X-Consumer", "mallory"),
              ("X-Missing", "forged"), ("X-Num", "7"), ("X-Scope", "admin")]
    up = passed(env, "/main/x?a=1", t, forged)
    assert up.target == "/main/x?a=1", up.target
    assert up.headers_all("x-consumer") == ["alice"], up.headers
    assert up.headers_all("x-user") == ["alice"], up.headers
    assert up.headers_all("x-username") == ["alice.smith"], up.headers
    assert up.headers_all("x-scope") == ["orders:read orders:write"], up.headers
    assert up.headers_all("x-num") == ["42"], up.headers
    assert up.headers_all("x-roles") == ["admin, ops"], up.headers
    assert len(up.headers_all("x-obj")) == 1 and json.loads(up.header("x-obj")) == {
        "tier": "gold", "n": 1}, up.headers
    assert up.headers_all("x-flag") == ["true"], up.headers
    assert up.headers_all("x-missing") == [], "a client-sent header of claims_to_headers " \
        "whose claim is absent reached the upstream: %r" % up.headers
    # hide_credentials defaults to false: the token goes on
    assert up.headers_all("authorization") == ["Bearer " + t], up.headers
    # what later policies see
    ctx = ctx_of(up)
    assert ctx["consumer"] == "alice", ctx
    assert sorted(ctx["scopes"]) == ["orders:read", "orders:write"], ctx
    claims = ctx["claims"]
    assert claims and claims.get("active") is True and claims.get("sub") == "alice" and \
        claims.get("custom") == "custom-value" and claims.get("exp") == exp, ctx
    # the introspection call
    calls = env.as_.calls_for(t)
    assert len(calls) == 1, calls
    c = calls[0]
    assert c.error is None, c.error
    assert c.method == "POST" and c.target == "/introspect", c
    assert c.content_type.split(";")[0].strip().lower() == FORM, c.content_type
    assert c.form_ok, "the body is not form-urlencoded: %r" % c.raw_body
    assert c.token == t and c.token_type_hint == "access_token", c.form
    assert sorted(n for n, _ in c.form) == ["token", "token_type_hint"], c.form
    assert c.basic == (CLIENT_ID, SECRET), c
    assert c.basic_raw == basic_of(CLIENT_ID, SECRET), c.basic_raw
    assert c.post_creds is None and c.client == CLIENT_ID, c


def test_bearer_scheme_is_matched_without_case(env):
    t = tok("case")
    env.as_.tokens[t] = active(sub="carol", exp=future())
    for scheme in ("bearer", "BEARER"):
        r, got = upstream_sees(env, "/main/x", t, scheme=scheme)
        assert r.status == 200 and len(got) == 1, (scheme, r)
        assert got[0].header("x-consumer") == "carol", got[0].headers


def test_consumer_claim_client_id_query_hide_credentials_realm(env):
    t = tok("cid")
    env.as_.tokens[t] = active(sub="alice", client_id="app-1", exp=future())
    up = passed(env, "/cid/x", t, [("X-Consumer", "mallory")])
    assert up.headers_all("x-consumer") == ["app-1"], up.headers
    assert up.headers_all("authorization") == [], \
        "hide_credentials: true forwarded the token: %r" % up.headers
    # the token in the query argument, removed before the upstream
    q = tok("query", secret=False)
    env.as_.tokens[q] = active(sub="bob", client_id="app-2", exp=future())
    up = passed(env, "/cid/x?a=1&access_token=%s&b=2" % q, None)
    assert up.headers_all("x-consumer") == ["app-2"], up.headers
    assert "access_token" not in up.target and q not in up.target, up.target
    assert up.path == "/cid/x" and up.query == {"a": "1", "b": "2"}, up.target
    assert env.as_.count(q) == 1
    # the token in a cookie (read when the header and the query carry none)
    k = tok("cookie")
    env.as_.tokens[k] = active(sub="bob", client_id="app-3", exp=future())
    up = passed(env, "/cid/x", None, [("Cookie", "a=1; at=%s; b=2" % k)])
    assert up.headers_all("x-consumer") == ["app-3"], up.headers
    # the header wins over the query argument
    up = passed(env, "/cid/x?access_token=%s" % q, t)
    assert up.headers_all("x-consumer") == ["app-1"], up.headers
    # realm
    refused(env, "/cid/x", None, 401, 'Bearer realm="orders"')
    bad = tok("cid-bad")
    refused(env, "/cid/x", bad, 401, 'Bearer realm="orders", error="invalid_token"')


@pytest.mark.parametrize("value,accepted", [
    ("some text", ["some text"]),
    (42, ["42"]),
    (0.5, ["0.5"]),
    (1234567890123456, ["1234567890123456"]),     # exact in a double: "sent as is"
    (["a", "b"], ["a, b"]),
    ([1, 2], ["[1,2]", "[1, 2]"]),                # not an array of strings: JSON
    (["a", 1], ['["a",1]', '["a", 1]']),
    ([], [None, "", "[]"]),                        # not "{}": it is no object
    ({"k": "v"}, ['{"k":"v"}', '{"k": "v"}']),
    (True, ["true"]),
], ids=["string", "int", "float", "big_int", "strings", "ints", "mixed", "empty_array",
        "object", "bool"])
def test_claims_to_headers_values(env, value, accepted):
    """docs/jwt.md, claims_to_headers: "A string or number claim is sent as is, an array of
    strings joined with `, `, other values as JSON"."""
    t = tok("fmt")
    env.as_.tokens[t] = active(sub="alice", exp=future(), v=value)
    up = passed(env, "/fmt/x", t, [("X-V", "forged")])
    got = up.headers_all("x-v")
    assert len(got) <= 1 and (got[0] if got else None) in accepted, \
        "claim %s sent as %r, want one of %r" % (json.dumps(value), got, accepted)


def test_an_earlier_auth_policy_identified_the_caller(env):
    """key_auth before oauth2_introspection: a request with a key and no token passes."""
    mark = env.as_.mark()
    up = passed(env, "/both/x", None, [("apikey", APIKEY), ("X-Consumer", "mallory")])
    assert up.headers_all("x-consumer") == ["alice"], up.headers
    assert env.as_.calls_since(mark) == [], "no token, yet the AS was called"


def test_anonymous_and_consumer_claim_username(env):
    mark = env.as_.mark()
    up = passed(env, "/anon/x", None, [("X-Consumer", "mallory")])
    assert up.headers_all("x-consumer") == ["guest"], up.headers
    assert env.as_.calls_since(mark) == [], "no token, yet the AS was called"
    t = tok("uname")
    env.as_.tokens[t] = active(sub="s-123", username="alice.smith", exp=future())
    up = passed(env, "/anon/x", t)
    assert up.headers_all("x-consumer") == ["alice.smith"], up.headers
    # an invalid token is refused even with anonymous
    refused(env, "/anon/x", tok("anon-bad"), 401, INVALID)


# ---- refusals ----

def test_inactive_and_unknown_tokens_answer_401_invalid_token(env):
    t = tok("inactive")
    env.as_.tokens[t] = INACTIVE
    u = tok("unknown")
    answers = []
    for token in (t, u):
        answers.append(refused(env, "/main/x", token, 401, INVALID))
        assert env.as_.count(token) == 1, env.as_.calls_for(token)
    # an answer that says active false with claims is still inactive
    v = tok("inactive-claims")
    env.as_.tokens[v] = {"active": False, "sub": "alice", "exp": future()}
    refused(env, "/main/x", v, 401, INVALID)
    # the body, as for a bad JWT ("like a bad JWT")
    for r in answers:
        assert r.header("content-type") == "application/json", r
        assert json.loads(r.body) == {"message": "invalid token"}, r.body


def test_no_token_answers_401_challenge_without_error(env):
    mark = env.as_.mark()
    refused(env, "/main/x", None, 401, CHALLENGE)
    refused(env, "/main/x", None, 401, CHALLENGE, headers=[("X-Consumer", "alice")])
    assert env.as_.calls_since(mark) == [], "no token, yet the AS was called"


def test_required_scopes(env):
    ok = tok("scope-ok")
    env.as_.tokens[ok] = active(sub="alice", scope="orders:write orders:read", exp=future())
    passed(env, "/scoped/x", ok)
    want = 'Bearer realm="passerelle", error="insufficient_scope", scope="orders:read"'
    lacking = tok("scope-lacking")
    env.as_.tokens[lacking] = active(sub="alice", scope="orders:write orders:readonly "
                                     "xorders:read", exp=future())
    refused(env, "/scoped/x", lacking, 403, want)
    none = tok("scope-none")
    env.as_.tokens[none] = active(sub="alice", exp=future())
    refused(env, "/scoped/x", none, 403, want)
    # an inactive token is a 401, not a 403
    refused(env, "/scoped/x", tok("scope-inactive"), 401, INVALID)


def test_require_consumer(env):
    known = tok("known")
    env.as_.tokens[known] = active(sub="alice", exp=future())
    up = passed(env, "/known/x", known)
    assert up.headers_all("x-consumer") == ["alice"], up.headers
    ctx = ctx_of(up)
    assert ctx["plan"] == "gold" and ctx["groups"] == ["staff", "beta"], ctx
    stranger = tok("stranger")
    env.as_.tokens[stranger] = active(sub="nobody", exp=future())
    r = refused(env, "/known/x", stranger, 401)
    ch = r.headers_all("www-authenticate")
    assert len(ch) == 1 and ch[0].startswith(CHALLENGE), r
    # without require_consumer an unknown consumer passes, a known one gets its plan and groups
    up = passed(env, "/main/x", stranger)
    assert up.header("x-consumer") == "nobody" and ctx_of(up)["plan"] is False, up.headers
    up = passed(env, "/main/x", known)
    ctx = ctx_of(up)
    assert ctx["plan"] == "gold" and ctx["groups"] == ["staff", "beta"], ctx


def test_claim_values_cannot_inject_headers(env):
    t = tok("inject")
    env.as_.tokens[t] = active(sub="alice\r\nX-Injected: 1", username="u\nX-Injected2: 2",
                               exp=future())
    r, got = upstream_sees(env, "/main/x", t)
    for q in got:
        names = [n.lower() for n, _ in q.headers]
        assert "x-injected" not in names and "x-injected2" not in names, q.headers
        for n, v in q.headers:
            assert "\r" not in v and "\n" not in v, (n, v)
    assert r.status != 200 or len(got) == 1, r


# ---- the call ----

def test_token_with_form_special_characters_is_encoded(env):
    t = "Zm9v+YmFy/%s+%s==" % (RUN, secrets.token_hex(6))
    TOKENS.append(t)
    env.as_.tokens[t] = active(sub="dave", exp=future())
    up = passed(env, "/main/x", t)
    assert up.header("x-consumer") == "dave", up.headers
    calls = env.as_.calls_for(t)
    assert len(calls) == 1 and calls[0].form_ok, env.as_.calls[-1:]


def test_auth_method_post_and_empty_token_type_hint(env):
    t = tok("post")
    env.as_.tokens[t] = active(sub="erin", exp=future())
    passed(env, "/post/x", t)
    calls = env.as_.calls_for(t)
    assert len(calls) == 1, env.as_.calls[-1:]
    c = calls[0]
    assert c.headers_all("authorization") == [], "auth_method: post also sent Basic: %r" % c
    assert c.field("client_id") == [POST_ID] and c.field("client_secret") == [POST_SECRET], c
    assert c.field("token_type_hint") == [], "token_type_hint: '' was sent: %r" % c.form
    assert c.client == POST_ID and c.error is None, c


def test_basic_credentials_are_form_urlencoded_first(env):
    """RFC 6749 2.3.1: the id and the secret are application/x-www-form-urlencoded, then joined
    by a colon and base64-encoded; an id with a colon or a space needs it."""
    t = tok("special")
    env.as_.tokens[t] = active(sub="frank", exp=future())
    r, got = upstream_sees(env, "/special/x", t)
    calls = env.as_.calls_for(t)
    assert len(calls) == 1, calls
    raw = base64.b64decode(calls[0].basic_raw or "").decode("utf-8", "replace")
    # the stub splits at the first colon, then form-decodes each half (+ or %20 for a space)
    assert calls[0].basic == (SPECIAL_ID, SPECIAL_SECRET), \
        "Basic credentials %r are not the form-urlencoded id:secret" % raw.replace(
            SPECIAL_SECRET, "<secret>")
    assert r.status == 200 and len(got) == 1, r


def test_wrong_client_credentials_answer_503_not_cached(env):
    t = tok("badcreds")
    env.as_.tokens[t] = active(sub="alice", exp=future())
    refused(env, "/badcreds/x", t, 503)
    refused(env, "/badcreds/x", t, 503)
    calls = env.as_.calls_for(t)
    assert len(calls) == 2 and all(c.answered == "invalid_client" for c in calls), calls


# ---- caching ----

def test_active_token_is_introspected_once(env):
    t = tok("cached")
    env.as_.tokens[t] = active(sub="gina", exp=future())
    for _ in range(3):
        up = passed(env, "/main/x", t)
        assert up.header("x-consumer") == "gina", up.headers
        claims = ctx_of(up)["claims"]   # pgw.ctx()["oauth2.claims"], on cache hits too
        assert claims and claims.get("sub") == "gina", ctx_of(up)
    assert env.as_.count(t) == 1, env.as_.calls_for(t)
    # the cached answer is the one used: the AS now says inactive, the gateway does not ask
    env.as_.tokens[t] = INACTIVE
    passed(env, "/main/x", t)
    other = tok("cached-other")
    env.as_.tokens[other] = active(sub="hank", exp=future())
    assert passed(env, "/main/x", other).header("x-consumer") == "hank"
    assert env.as_.count(t) == 1 and env.as_.count(other) == 1


def test_cached_answers_are_not_shared_between_clients(env):
    """Two routes asking the same endpoint with different client credentials: RFC 7662 2.2 lets
    the server answer according to the protected resource that asks (a token meant for one API
    is inactive for another), so one route's cached answer must not serve the other."""
    t = tok("per-client")
    env.as_.per_client[(CLIENT_ID, t)] = active(sub="vera", exp=future())
    env.as_.per_client[(POST_ID, t)] = INACTIVE
    passed(env, "/main/x", t)
    r, got = upstream_sees(env, "/post/x", t)
    assert [c.client for c in env.as_.calls_for(t)] == [CLIENT_ID, POST_ID], \
        "the answer given to %s was reused for %s (status %d)" % (CLIENT_ID, POST_ID, r.status)
    assert r.status == 401 and got == [], r
    # and the other way round, for an inactive answer
    u = tok("per-client-neg")
    env.as_.per_client[(POST_ID, u)] = active(sub="vera", exp=future())
    refused(env, "/main/x", u, 401, INVALID)
    passed(env, "/post/x", u)
    assert [c.client for c in env.as_.calls_for(u)] == [CLIENT_ID, POST_ID]


def test_ttl_bounds_the_cache(env):
    far = tok("ttl-far")
    noexp = tok("ttl-noexp")
    env.as_.tokens[far] = active(sub="ivy", exp=future())
    env.as_.tokens[noexp] = active(sub="jack")
    t0 = time.monotonic()
    for t in (far, noexp, far, noexp):
        passed(env, "/short/x", t)
    assert time.monotonic() - t0 < 0.9, "too slow to test a 1 s ttl"
    assert (env.as_.count(far), env.as_.count(noexp)) == (1, 1)
    time.sleep(max(0.0, t0 + 1.25 - time.monotonic()))
    for t in (far, noexp):
        passed(env, "/short/x", t)
    assert (env.as_.count(far), env.as_.count(noexp)) == (2, 2), \
        "an active token was still cached after ttl: 1s"


def test_exp_ends_the_cache_before_ttl(env):
    t = tok("exp")
    exp = future(2)
    env.as_.tokens[t] = active(sub="kim", exp=exp)
    passed(env, "/main/x", t)
    passed(env, "/main/x", t)
    assert env.as_.count(t) == 1
    env.as_.tokens[t] = INACTIVE
    time.sleep(max(0.0, exp + 0.15 - time.time()))
    refused(env, "/main/x", t, 401, INVALID)
    assert env.as_.count(t) == 2, "the token was served from the cache after its exp"


def test_inactive_token_is_cached_for_negative_ttl(env):
    t = tok("neg")
    refused(env, "/short/x", t, 401, INVALID)
    t0 = time.monotonic()
    env.as_.tokens[t] = active(sub="lee", exp=future())
    refused(env, "/short/x", t, 401, INVALID)
    assert env.as_.count(t) == 1, "an inactive token was not cached"
    time.sleep(max(0.0, t0 + 1.25 - time.monotonic()))
    passed(env, "/short/x", t)
    assert env.as_.count(t) == 2
    # the default negative_ttl (10 s) holds too
    d = tok("neg-default")
    refused(env, "/main/x", d, 401, INVALID)
    refused(env, "/main/x", d, 401, INVALID)
    assert env.as_.count(d) == 1


# ---- failures of the authorization server ----

@pytest.mark.parametrize("fault", ["status500", "not_json", "array", "string", "close"])
def test_as_fault_answers_503_and_is_not_cached(env, fault):
    t = tok(fault)
    env.as_.tokens[t] = fault
    refused(env, "/main/x", t, 503)
    refused(env, "/main/x", t, 503)
    assert env.as_.count(t) == 2, "a failed introspection was cached: %r" % env.as_.calls_for(t)
    env.as_.tokens[t] = active(sub="mia", exp=future())
    assert passed(env, "/main/x", t).header("x-consumer") == "mia"
    assert env.as_.count(t) == 3


@pytest.mark.parametrize("fault", ["slow", "stall_body"])
def test_timeout_answers_503_and_is_not_cached(env, fault):
    """timeout: "the whole call": no answer at all, or a body that stops coming."""
    t = tok(fault)
    env.as_.tokens[t] = fault
    t0 = time.monotonic()
    refused(env, "/slow/x", t, 503)
    took = time.monotonic() - t0
    assert 0.25 <= took < 2.0, "timeout: 300ms, answered after %.2f s" % took
    env.as_.tokens[t] = active(sub="ned", exp=future())
    assert passed(env, "/slow/x", t).header("x-consumer") == "ned"
    assert env.as_.count(t) == 2


def test_refused_connection_answers_503_and_is_not_cached(env):
    t = tok("refused")
    refused(env, "/refused/x", t, 503)
    refused(env, "/refused/x", t, 503)
    # the server comes back on the same port
    port = env.refused.port
    env.refused.stop()
    back = IntrospectStub("as-back", clients=CLIENTS, port=port)
    env.extra.append(back)
    back.tokens[t] = active(sub="olga", exp=future())
    assert passed(env, "/refused/x", t).header("x-consumer") == "olga"
    assert back.count(t) == 1


def test_a_pending_introspection_does_not_hold_up_other_requests(env):
    fast = tok("fast")
    env.as_.tokens[fast] = active(sub="uma", exp=future())
    passed(env, "/main/x", fast)          # now cached
    slow = tok("pending")
    release = threading.Event()
    env.as_.tokens[slow] = ("hold", release, active(sub="vic", exp=future()))
    snap = env.a.snapshot()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(ask, env, "/main/x", slow)
        try:
            wait_for(lambda: env.as_.count(slow) == 1, 2.0, "the held introspection call")
            t0 = time.monotonic()
            r = ask(env, "/main/x", fast)
            took = time.monotonic() - t0
        finally:
            release.set()
        r2 = pending.result(5)
    assert r.status == 200 and r2.status == 200, (r, r2)
    assert took < 1.0, "a cached token took %.3f s while another call was pending" % took
    consumers = [q.header("x-consumer") for q in env.a.since(snap)[0]]
    assert consumers == ["uma", "vic"], consumers


# ---- HTTPS ----

def test_https_with_the_test_ca(env):
    t = tok("tls")
    env.as_tls.tokens[t] = active(sub="pat", exp=future())
    assert passed(env, "/tls/x", t).header("x-consumer") == "pat"
    calls = env.as_tls.calls_for(t)
    assert len(calls) == 1 and calls[0].basic == (CLIENT_ID, SECRET), calls
    assert env.as_tls.snis and env.as_tls.snis[-1] == "localhost", env.as_tls.snis


@pytest.mark.parametrize("path,stub", [("/rogue/x", "as_rogue"), ("/othername/x", "as_other")])
def test_https_untrusted_certificate_answers_503(env, path, stub):
    s = getattr(env, stub)
    t = tok("untrusted")
    s.tokens[t] = active(sub="quinn", exp=future())
    before = s.wait_handshakes(0)[0] + len(s.handshake_errors)
    refused(env, path, t, 503)
    s.wait_handshakes(before + 1, timeout=2.0)
    assert s.calls == [], "the gateway sent the token to a server it should not trust"
    assert s.handshakes == 0, "a handshake with an untrusted certificate completed"


# ---- configuration ----

def check(tmp_path, conf):
    cfg = config(listeners=[listener("public")],
                 upstreams={"a": {"targets": ["127.0.0.1:9"]}},
                 routes=[route("/", [{"oauth2_introspection": conf}], name="r")],
                 policies={"dir": str(tmp_path / "nopolicies")})
    path = tmp_path / "check.yaml"
    path.write_text(to_yaml(cfg) + "\n")
    return subprocess.run([str(BINARY), "check", "-c", str(path)], cwd=str(REPO),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)


GOOD = {"url": "https://auth.example.com/oauth2/introspect", "client_id": "gateway",
        "client_secret": SECRET}


CHECK_CASES = [
    ("https", {}, True, None),
    ("http_allowed", {"url": "http://127.0.0.1:9/introspect", "allow_http": True}, True, None),
    ("post", {"auth_method": "post", "token_type_hint": ""}, True, None),
    ("no_url", {"url": None}, False, "url"),
    ("no_client_id", {"client_id": None}, False, "client_id"),
    ("no_client_secret", {"client_secret": None}, False, "client_secret"),
    ("http_without_allow_http", {"url": "http://127.0.0.1:9/introspect"}, False, "url|http"),
    ("http_allow_http_false", {"url": "http://127.0.0.1:9/introspect", "allow_http": False},
     False, "url|http"),
    ("not_http", {"url": "ftp://auth.example.com/introspect"}, False, "url"),
    ("bad_auth_method", {"auth_method": "jwt"}, False, "auth_method"),
    # URLs that pgw.http.request can never use (it raises "invalid url" at every request)
    ("url_bad_port", {"url": "https://auth.example.com:99999/introspect"}, False, "url"),
    ("url_space_in_host", {"url": "https://auth example.com/introspect"}, False, "url"),
    ("url_no_host", {"url": "https://:443/introspect"}, False, "url"),
]


@pytest.mark.parametrize("name,change,accepted,mentions", CHECK_CASES,
                         ids=[c[0] for c in CHECK_CASES])
def test_check(tmp_path, name, change, accepted, mentions):
    conf = dict(GOOD)
    conf.update(change)
    conf = {k: v for k, v in conf.items() if v is not None}
    cp = check(tmp_path, conf)
    out = cp.stdout + cp.stderr
    if accepted:
        assert cp.returncode == 0, "%s: refused: %s" % (name, out)
    else:
        assert cp.returncode != 0, "%s: accepted: %s" % (name, out)
        assert "oauth2_introspection" in out and re.search(mentions, out), (name, out)
    assert SECRET not in out, "%s: passerelle check printed the client secret: %s" % (name, out)


# ---- last: nothing secret in the logs ----

def test_secret_and_tokens_never_logged(env):
    """Runs the cases again with fresh tokens (so this test stands alone), then looks for every
    token sent in a header during the module, the secrets and the Basic credentials in the error
    log (level debug), the access log and stderr."""
    g = env.gw
    t = tok("log-active")
    env.as_.tokens[t] = active(sub="rita", scope="a b", exp=future())
    passed(env, "/main/x", t)
    refused(env, "/main/x", tok("log-inactive"), 401)
    refused(env, "/scoped/x", t, 403)
    for fault in ("status500", "not_json", "array", "close"):
        f = tok("log-" + fault)
        env.as_.tokens[f] = fault
        refused(env, "/main/x", f, 503)
    refused(env, "/badcreds/x", tok("log-badcreds"), 503)
    p = tok("log-post")
    env.as_.tokens[p] = active(sub="sam", exp=future())
    passed(env, "/post/x", p)
    refused(env, "/rogue/x", tok("log-rogue"), 503)
    s = tok("log-slow")
    env.as_.tokens[s] = "slow"
    refused(env, "/slow/x", s, 503)
    # the access log is flushed at least once a second: wait for this last request
    rid = "oauth2-last-%s" % RUN
    r, _ = upstream_sees(env, "/main/x", None, [("X-Request-Id", rid)])
    assert r.status == 401, r
    g.access_for(rid)
    texts = {"error log": g.error_text(), "stderr": g.stderr_text(),
             "access log": g.access_path.read_text(errors="replace")}
    assert texts["error log"], "the error log is empty"
    needles = {"API key": APIKEY, "client secret": SECRET, "post secret": POST_SECRET,
               "special secret": SPECIAL_SECRET,
               "Basic credentials": basic_of(CLIENT_ID, SECRET),
               "Basic credentials (special)": basic_of(SPECIAL_ID, SPECIAL_SECRET),
               "wrong secret": SECRET + "-wrong"}
    # the Authorization values the gateway actually sent (however it encoded them)
    for stub in (env.as_, env.as_tls, env.as_rogue, env.as_other):
        for c in stub.calls_since(0):
            if c.basic_raw:
                needles["Basic credentials sent " + c.basic_raw[:6]] = c.basic_raw
    needles.update(("token %s" % x, x) for x in TOKENS)
    leaks = ["%s in the %s: %s" % (what, where, next(l for l in text.split("\n") if value in l))
             for where, text in texts.items() for what, value in needles.items()
             if value in text]
    assert not leaks, "\n".join(leaks[:20])
