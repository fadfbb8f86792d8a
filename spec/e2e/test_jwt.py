"""JWT bearer tokens end to end (docs/jwt.md): the `jwt:` providers (static PEM keys, HMAC secrets,
a JWKS URL over verified HTTPS), the built-in `jwt` policy and `pgw.jwt`, run by ./passerelle
against a recording stub upstream, HTTPS JWKS stubs and attacker listeners. Tokens are minted by
PyJWT (python3-jwt) or assembled by hand (spec/support/jwtfix.py); run with /usr/bin/python3.

One gateway serves the whole module (providers st, cl, stc, strc, sm, jw, jr, jf, jbad, rk; one
route per case family); the reload tests come last and put the configuration back.

- Accepted: RS256, PS256, RS384, ES256, ES384, EdDSA, HS256, HS512 from PEM files, a
  certificate, secrets and secret files; the same from a JWKS (with and without `alg`).
- Refused (401, the same challenge and body whatever the check, a log line naming the reason):
  algorithm pinning and the HS256-with-the-RSA-PEM key confusion, `alg: none` in any spelling,
  tampered tokens, 1/2/4/5 parts, standard base64 and padding, oversize tokens, deep nesting,
  duplicate members, `crit`, bad `typ`, time claims (exp/nbf/iat, leeway, non-numbers), iss,
  aud, required claims, JWKS keys that must be skipped (oct, use: enc, alg outside the list).
- Keys only ever come from the configuration: `kid` traversal strings, `jku`, `x5u`, `jwk` and
  `x5c` headers: nothing fetched but the configured JWKS, attacker listeners never contacted.
- JWKS: rotation on an unknown kid without restart, the old kid refused (cached or not), a flood
  of random kids bounded by min_refresh, an untrusted certificate answering 503.
- Identity: X-Consumer from sub / consumer_claim, claims_to_headers, forged headers removed,
  require_consumer with the store's consumers, anonymous, key_auth before jwt, rate_limit by
  consumer, required_scopes (403 insufficient_scope), hide_credentials, query, cookie, header.
- pgw.jwt.verify / provider / jwks_done from a policy file.
- `passerelle check` refusing bad providers; reload changing and removing keys (and the verified
  token cache not outliving them).
"""
import base64
import copy
import json
import os
import re
import secrets
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import jwtfix
import stubs
import tlsfix
from cryptography.hazmat.primitives import serialization
from gw import BINARY, ERROR_LINE_RE, REPO, Client, config, listener, to_yaml, wait_for
from harness import module_env
from jwtfix import b64u, claims, encode_part, mint, raw_token, sign
from policyfix import LUA_COPY, no_worker_crash, route, track, write_policies  # noqa: F401

INVALID = 'Bearer realm="passerelle", error="invalid_token"'
NO_TOKEN = 'Bearer realm="passerelle"'
INVALID_BODY = {"message": "invalid token"}
REFUSED_RE = re.compile(r"\[info\] .*jwt: refused 127\.0\.0\.1: provider (\w+): (.+)$")

HS_SECRET = "st-hs256-secret-0123456789abcdef-XYZ"            # 36 bytes
HS512_SECRET = "5f" * 32                                      # 64 bytes (file: + "\n")
CL_SECRET = "cl-hs256-secret-0123456789abcdef-XYZ"
STC_SECRET = "stc-hs256-secret-0123456789abcdef-XY"
STRC_SECRET = "strc-hs256-secret-0123456789abcdef-X"
SM_SECRET = "sm-hs256-secret-0123456789abcdef-XYZ"
LW_SECRET = "lw-hs256-secret-0123456789abcdef-XYZ"
J_OCT_SECRET = b"j-oct-secret-0123456789abcdef-XYZ!"
ISSUER = "https://idp.test/"
AUDIENCES = ["orders-api", "billing"]
JW_MIN_REFRESH = 5
JR_MIN_REFRESH = 1
JF_MIN_REFRESH = 2


# ---- policies used by the suite ----


CTXECHO = """
local pgw = require "pgw"
""" + LUA_COPY + """
return {
    access = function(conf, req)
        local c = pgw.ctx()
        pgw.req.set_header("X-Ctx", pgw.json.encode({
            consumer = c.consumer, plan = c["consumer.plan"], groups = copy(c["consumer.groups"]),
            provider = c["jwt.provider"], claims = copy(c["jwt.claims"]),
            scopes = copy(c["auth.scopes"]),
        }))
    end,
}
"""

JWTLUA = """
local pgw = require "pgw"
""" + LUA_COPY + """
return {
    access = function(conf, req)
        local h = pgw.req.get_header
        local name = h("X-Provider")
        local out = {}
        local token = h("X-Token")
        if token then
            local ok, claims, reason, code = pcall(pgw.jwt.verify, name, token)
            if not ok then
                out.error = tostring(claims)
            elseif claims then
                out.ok = true
                out.sub = claims.sub
                claims.sub = "changed"
                out.sub_after = claims.sub
            else
                out.ok = false
                out.reason = reason
                out.code = code
            end
        end
        local jwks = h("X-Set-Jwks")
        if jwks then
            local ok, n, err = pcall(pgw.jwt.jwks_done, name, jwks)
            if ok then
                out.set_n = n
                out.set_err = err
            else
                out.set_error = tostring(n)
            end
        end
        local p = pgw.jwt.provider(name)
        if p == nil then
            out.provider = "nil"
        else
            out.provider = {
                issuer = p.issuer, audiences = copy(p.audiences),
                consumer_claim = p.consumer_claim, require_consumer = p.require_consumer,
                keys = p.keys, jwks_keys = p.jwks_keys, jwks = copy(p.jwks),
            }
        end
        return pgw.exit(200, pgw.json.encode(out), { ["Content-Type"] = "application/json" })
    end,
}
"""


# ---- fixtures ----

@pytest.fixture(scope="session")
def material(tmp_path_factory):
    """(keys, pki), made at the same time (the PKI by openssl processes)."""
    kdir, pdir = tmp_path_factory.mktemp("jwt-keys"), tmp_path_factory.mktemp("jwt-pki")
    with ThreadPoolExecutor(max_workers=1) as pool:
        pki = pool.submit(jwtfix.make_pki, pdir)
        keys = jwtfix.Keys.create(kdir)
        return keys, pki.result()


@pytest.fixture(scope="session")
def keys(material):
    return material[0]


@pytest.fixture(scope="session")
def pki(material):
    return material[1]


def jw_set(keys):
    """The JWKS of provider jw: 4 usable keys, 3 that must be skipped."""
    return {"keys": [
        keys.jwk("j_rsa", kid="j-rsa", alg="RS256"),
        keys.jwk("j_rsa", kid="j-rsa-any"),                      # no alg: RS256 and PS256 here
        keys.jwk("j_ec", kid="j-ec", alg="ES256"),
        keys.jwk("j_ed", kid="j-ed", alg="EdDSA"),
        keys.jwk("j_ec384", kid="j-ec384", alg="ES384"),         # not in jw's algorithms
        {"kty": "oct", "kid": "j-oct", "alg": "HS256", "use": "sig", "k": b64u(J_OCT_SECRET)},
        keys.jwk("j_enc", kid="j-enc", alg="ES256", use="enc"),  # not for signatures
    ]}


def attacker_set(keys):
    return {"keys": [keys.jwk("attacker", kid="attacker", alg="RS256")]}


def jwt_policy(provider, **kw):
    return {"jwt": dict({"provider": provider}, **kw)}


def build_config(files, keys, pki, servers, upstream):
    """The module's configuration (a dict)."""
    files = Path(files)
    (files / "hs512.secret").write_text(HS512_SECRET + "\n")
    for name in ("rk1", "rk2", "rk3"):
        (files / ("%s.pem" % name)).write_bytes(keys.pem_bytes(name))

    def url(s):
        return "https://localhost:%d/jwks.json" % s.port

    providers = {
        "st": {"keys": [
            {"kid": "rsa", "alg": "RS256", "file": keys.pem("rsa")},
            {"kid": "rsa-ps", "alg": "PS256", "file": keys.pem("rsa")},
            {"kid": "rsa-384", "alg": "RS384", "file": keys.pem("rsa")},
            {"kid": "ec", "alg": "ES256", "file": keys.pem("ec")},
            {"kid": "ec384", "alg": "ES384", "file": keys.pem("ec384")},
            {"kid": "ed", "alg": "EdDSA", "file": keys.pem("ed")},
            {"kid": "hs", "alg": "HS256", "secret": HS_SECRET},
            {"kid": "hs512", "alg": "HS512", "secret_file": str(files / "hs512.secret")},
            {"kid": "cert", "alg": "RS256", "file": pki.cert("localhost")},
            {"alg": "ES256", "file": keys.pem("ec2")},
        ]},
        "cl": {"issuer": ISSUER, "audiences": AUDIENCES, "reject_future_iat": True,
               "required_claims": ["exp", "jti"],
               "keys": [{"kid": "hs", "alg": "HS256", "secret": CL_SECRET}]},
        "stc": {"consumer_claim": "client_id", "required_claims": [],
                "keys": [{"kid": "hs", "alg": "HS256", "secret": STC_SECRET}]},
        "strc": {"require_consumer": True,
                 "keys": [{"kid": "hs", "alg": "HS256", "secret": STRC_SECRET}]},
        "sm": {"max_token_size": "1k", "keys": [{"kid": "hs", "alg": "HS256", "secret": SM_SECRET}]},
        "lw": {"leeway": "0s", "keys": [{"kid": "hs", "alg": "HS256", "secret": LW_SECRET}]},
        "jw": {"jwks": {"url": url(servers["jw"]), "min_refresh": "%ds" % JW_MIN_REFRESH,
                        "timeout": "3s", "algorithms": ["RS256", "PS256", "ES256", "EdDSA"]}},
        "jr": {"jwks": {"url": url(servers["jr"]), "min_refresh": "%ds" % JR_MIN_REFRESH,
                        "timeout": "3s"}},
        "jf": {"jwks": {"url": url(servers["jf"]), "min_refresh": "%ds" % JF_MIN_REFRESH,
                        "timeout": "3s"}},
        "jbad": {"jwks": {"url": url(servers["jbad"]), "min_refresh": "1s", "timeout": "2s"}},
        "rk": {"keys": [
            {"kid": "rk1", "alg": "ES256", "file": str(files / "rk1.pem")},
            {"kid": "rk2", "alg": "ES256", "file": str(files / "rk2.pem")},
        ]},
    }
    claims_map = {"email": "X-User-Email", "level": "X-Level", "ratio": "X-Ratio",
                  "roles": "X-Roles", "org": "X-Org", "admin": "X-Admin", "nums": "X-Nums"}
    routes = [
        route("/s/", [jwt_policy("st")]),
        route("/j/", [jwt_policy("jw")]),
        route("/jr/", [jwt_policy("jr")]),
        route("/jf/", [jwt_policy("jf")]),
        route("/jbad/", [jwt_policy("jbad")]),
        route("/c/", [jwt_policy("cl")]),
        route("/cc/", [jwt_policy("stc")]),
        route("/sm/", [jwt_policy("sm")]),
        route("/lw/", [jwt_policy("lw")]),
        route("/rk/", [jwt_policy("rk")]),
        route("/id/", [jwt_policy("st", claims_to_headers=claims_map), "ctxecho"]),
        route("/who/", [jwt_policy("st", consumer_header="X-Who")]),
        route("/rc/", [jwt_policy("strc"), "ctxecho"]),
        route("/rl/", [jwt_policy("st"),
                       {"rate_limit": {"by": "consumer", "limit": 2, "window": "1h"}}]),
        route("/sc/", [jwt_policy("st", required_scopes=["orders:read", "orders:write"]),
                       "ctxecho"]),
        route("/sc1/", [jwt_policy("st", required_scopes=["orders:read"])]),
        route("/hide/", [jwt_policy("st", hide_credentials=True, query="access_token")]),
        route("/q/", [jwt_policy("st", query="access_token", cookie="at")]),
        route("/hdr/", [jwt_policy("st", header="X-Auth")]),
        route("/anon/", [jwt_policy("st", anonymous="guest")]),
        route("/ka/", [{"key_auth": {}}, jwt_policy("st")]),
        route("/realm/", [jwt_policy("st", realm="shop")]),
        route("/lua/", ["jwtlua"]),
    ]
    pdir = files / "policies"
    write_policies(pdir, {"ctxecho": CTXECHO, "jwtlua": JWTLUA})
    return config(listeners=[listener("public")],
                  upstreams={"a": {"targets": [upstream.address], "retries": 0}},
                  routes=routes,
                  policies={"dir": str(pdir), "http_ca": pki.cert("ca")},
                  store={"dir": str(files / "store"), "durable_map": "1m", "fast_map": "2m"},
                  plans={"gold": {"description": "gold plan"}},
                  jwt={"providers": providers})


@pytest.fixture(scope="module")
def env(request, tmp_path_factory, keys, pki):
    files = tmp_path_factory.mktemp("jwt-files")
    holder = {}

    def build():
        loc = (pki.cert("localhost"), pki.key("localhost"))
        servers = {
            "a": stubs.Upstream("a"),
            "jw": jwtfix.JWKSServer("jw", *loc, jwks=jw_set(keys)),
            "jr": jwtfix.JWKSServer("jr", *loc, jwks={"keys": [
                keys.jwk("rot1", kid="r1", alg="ES256")]}),
            "jf": jwtfix.JWKSServer("jf", *loc, jwks={"keys": [
                keys.jwk("flood", kid="f1", alg="ES256", use=None)]}),  # no use,
            "jbad": jwtfix.JWKSServer("jbad", pki.cert("rogue_localhost"),
                                      pki.key("rogue_localhost"), jwks=jw_set(keys)),
            # the attacker's listeners, serving the attacker's key set
            "jku": jwtfix.PlainJWKSServer("jku", jwks=attacker_set(keys)),
            "jkus": jwtfix.JWKSServer("jkus", *loc, jwks=attacker_set(keys)),
        }
        cfg = build_config(files, keys, pki, servers, servers["a"])
        holder["cfg"] = cfg
        return cfg, servers

    e = module_env(request, tmp_path_factory, build)
    e.cfg = holder["cfg"]
    e.files = files
    e.keys = keys
    e.pki = pki
    return e


@pytest.fixture
def e(env):
    """The module's gateway, watched for worker crashes during the test."""
    track(env.gw)
    env.gw.assert_alive()
    return env


# ---- helpers ----

def call(port, path, token=None, headers=(), scheme="Bearer", method="GET"):
    """One request on a fresh connection, the token in Authorization (unless None)."""
    hdrs = []
    if token is not None:
        hdrs.append(("Authorization", "%s %s" % (scheme, token)))
    hdrs += list(headers)
    with Client(port) as c:
        c.request(method, path, headers=hdrs)
        return c.read_response(method)


def hits(stub, snap):
    return stub.since(snap)[0]


def body_json(r):
    try:
        return json.loads(r.body)
    except ValueError:
        return None


def invalid_problem(r, challenge=INVALID):
    """None when <r> is the documented refusal, else what differs."""
    got = r.headers_all("www-authenticate")
    if r.status != 401:
        return "status %d (want 401), WWW-Authenticate %r, body %r" % (r.status, got, r.body[:200])
    if got != [challenge]:
        return "WWW-Authenticate %r (want exactly [%r])" % (got, challenge)
    if body_json(r) != INVALID_BODY:
        return "body %r (want %s)" % (r.body[:200], json.dumps(INVALID_BODY))
    return None


def refusal_lines(g, mark, provider, n, timeout=2.0):
    """The 'jwt: refused' info lines for <provider> after <mark>, once there are <n> (or what
    there is after <timeout>): [reason]."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for line in g.error_lines()[mark:]:
            m = REFUSED_RE.search(line)
            if m and m.group(1) == provider:
                found.append(m.group(2))
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def last_refusal(g, mark):
    lines = [l for l in g.error_lines()[mark:] if "jwt:" in l]
    return lines[-1] if lines else None


def expect_refused(e, path, provider, cases, challenge=INVALID):
    """Sends each (name, token) of <cases> to <path>; every one must be answered with the
    documented 401, the upstream never reached, and one 'jwt: refused 127.0.0.1: provider
    <provider>: <reason>' info line logged per refusal. Returns (problems, {name: reason})."""
    g = e.gw
    mark = g.error_mark()
    snap = e.a.snapshot()
    problems, refused = [], []
    for name, tok in cases:
        r = call(e.port, path, tok)
        p = invalid_problem(r, challenge)
        if p:
            problems.append("%s: %s" % (name, p))
        else:
            refused.append(name)
    reached = hits(e.a, snap)
    if reached:
        problems.append("the upstream was reached by %d request(s) that had to be refused: %r"
                        % (len(reached), [(q.target, q.header("x-consumer")) for q in reached]))
    reasons = refusal_lines(g, mark, provider, len(refused))
    if len(reasons) != len(refused):
        problems.append("%d tokens refused on %s but %d 'jwt: refused 127.0.0.1: provider %s: "
                        "<reason>' info lines (last log lines: %r)" % (
                            len(refused), path, len(reasons), provider, g.error_lines()[-3:]))
        return problems, {}
    reasons = dict(zip(refused, reasons))
    if os.environ.get("JWT_SHOW_REASONS"):   # to check each case fails for its own reason
        for name, reason in reasons.items():
            print("[%s] %s -> %s" % (provider, name[:90], reason[:150]))
    return problems, reasons


def expect_accepted(e, path, cases):
    """Each (name, token, sub) must be answered 200 after one upstream request carrying
    X-Consumer: <sub>. Returns the problems."""
    problems = []
    for name, tok, sub in cases:
        mark = e.gw.error_mark()
        snap = e.a.snapshot()
        r = call(e.port, path, tok)
        if r.status != 200:
            problems.append("%s: status %d, WWW-Authenticate %r, body %r; log: %r" % (
                name, r.status, r.header("www-authenticate"), r.body[:120],
                last_refusal(e.gw, mark)))
            continue
        reqs = hits(e.a, snap)
        if len(reqs) != 1 or reqs[0].headers_all("x-consumer") != [sub]:
            problems.append("%s: upstream saw %r (want one request with X-Consumer: %s)" % (
                name, [q.headers_all("x-consumer") for q in reqs], sub))
    return problems


def report(problems):
    assert not problems, "%d problem(s):\n  " % len(problems) + "\n  ".join(problems)


def std_b64(s):
    return s.replace("-", "+").replace("_", "/")


def hs_token_from_parts(h, p, secret=HS_SECRET):
    """<h>.<p>.<HMAC-SHA256 over exactly those characters>: for encodings a strict decoder must
    refuse but a lenient one would verify."""
    si = "%s.%s" % (h, p)
    return "%s.%s" % (si, b64u(sign("HS256", secret, si.encode())))


def hs(payload=None, kid="hs", secret=HS_SECRET, **header):
    """An HS256 token of provider st (by default) assembled by hand."""
    h = dict({"alg": "HS256", "typ": "JWT"}, **header)
    if kid is not None:
        h["kid"] = kid
    return raw_token(h, payload if payload is not None else claims(), "HS256", secret)


def nested(depth, leaf=1):
    v = leaf
    for _ in range(depth):
        v = [v]
    return v


def nested_json(depth, open_="[", close="]"):
    return open_ * depth + "1" + close * depth


# ---- accepted tokens ----

def test_static_keys_accept_every_algorithm(e, keys, pki):
    """Tokens minted by PyJWT with each static key of provider st (PEM files, a certificate, a
    secret, a secret file whose final newline is not part of the secret), with and without
    kid, are accepted; the consumer is the sub."""
    k = keys.priv
    cert_key = jwtfix.load_private_pem(pki.key("localhost"))
    cases = []
    for name, alg, key, kid in (
            ("RS256", "RS256", k("rsa"), "rsa"), ("PS256", "PS256", k("rsa"), "rsa-ps"),
            ("RS384", "RS384", k("rsa"), "rsa-384"), ("ES256", "ES256", k("ec"), "ec"),
            ("ES384", "ES384", k("ec384"), "ec384"), ("EdDSA", "EdDSA", k("ed"), "ed"),
            ("HS256 secret", "HS256", HS_SECRET, "hs"),
            ("HS512 secret_file", "HS512", HS512_SECRET, "hs512"),
            ("RS256 certificate file", "RS256", cert_key, "cert"),
            ("RS256 no kid", "RS256", k("rsa"), None), ("PS256 no kid", "PS256", k("rsa"), None),
            ("ES256 no kid (key without kid)", "ES256", k("ec2"), None),
            ("ES384 no kid", "ES384", k("ec384"), None), ("EdDSA no kid", "EdDSA", k("ed"), None),
            ("HS256 no kid", "HS256", HS_SECRET, None)):
        sub = "s-" + re.sub(r"\W+", "-", name.lower())
        cases.append((name, mint(alg, key, claims(sub=sub), kid=kid), sub))
    report(expect_accepted(e, "/s/x", cases))


def test_jwks_keys_accept_and_skipped_jwks_keys_refuse(e, keys):
    """Keys of the JWKS (over HTTPS, CA from policies.http_ca): RS256, a JWK without alg for
    RS256 and PS256, ES256, EdDSA accepted. Refused: the RS256 JWK used with PS256, the JWK
    without alg with RS384 (not in `algorithms`), an ES384 JWK (alg not listed), an `oct` JWK
    (never taken from a URL), a `use: enc` JWK."""
    k = keys.priv
    ok = []
    for name, alg, key, kid in (("RS256", "RS256", k("j_rsa"), "j-rsa"),
                                ("RS256 no-alg JWK", "RS256", k("j_rsa"), "j-rsa-any"),
                                ("PS256 no-alg JWK", "PS256", k("j_rsa"), "j-rsa-any"),
                                ("ES256", "ES256", k("j_ec"), "j-ec"),
                                ("EdDSA", "EdDSA", k("j_ed"), "j-ed"),
                                ("ES256 no kid", "ES256", k("j_ec"), None)):
        sub = "j-" + re.sub(r"\W+", "-", name.lower())
        ok.append((name, mint(alg, key, claims(sub=sub), kid=kid), sub))
    problems = expect_accepted(e, "/j/x", ok)
    bad = [
        ("RS256 JWK used with PS256", mint("PS256", k("j_rsa"), kid="j-rsa")),
        ("no-alg RSA JWK with RS384 (not in algorithms)",
         mint("RS384", k("j_rsa"), kid="j-rsa-any")),
        ("ES384 JWK (alg not in algorithms)", mint("ES384", k("j_ec384"), kid="j-ec384")),
        ("oct JWK from the URL", mint("HS256", J_OCT_SECRET, kid="j-oct")),
        ("oct JWK from the URL, no kid", mint("HS256", J_OCT_SECRET)),
        ("use: enc JWK", mint("ES256", k("j_enc"), kid="j-enc")),
    ]
    p, _ = expect_refused(e, "/j/x", "jw", bad)
    report(problems + p)


# ---- refused tokens ----

def test_algorithm_pinning_and_key_confusion(e, keys, pki):
    """The header's alg must be the selected key's: valid signatures under another algorithm
    of the same key are refused, and so is the classic confusion token, HS256 with the RSA
    public key's PEM text (or another key's encoding) as the HMAC secret."""
    k = keys.priv
    rsa_pem = keys.pem_bytes("rsa")
    cert_pem = Path(pki.cert("localhost")).read_bytes()
    rsa_der = keys.pub("rsa").public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)

    def confused(secret, kid, payload=None):
        h = {"alg": "HS256", "typ": "JWT"}
        if kid is not None:
            h["kid"] = kid
        return raw_token(h, payload or claims(sub="admin"), "HS256", secret)

    st = [
        ("kid rsa (RS256) signed PS256", raw_token({"alg": "PS256", "kid": "rsa"}, claims(),
                                                   "PS256", k("rsa"))),
        ("kid rsa-ps (PS256) signed RS256", raw_token({"alg": "RS256", "kid": "rsa-ps"},
                                                      claims(), "RS256", k("rsa"))),
        ("kid rsa (RS256) signed RS512", raw_token({"alg": "RS512", "kid": "rsa"}, claims(),
                                                   "RS512", k("rsa"))),
        ("kid ec (ES256) signed ES384 with the P-256 key",
         raw_token({"alg": "ES384", "kid": "ec"}, claims(), "ES384", k("ec"))),
        ("kid hs (HS256) signed HS512", raw_token({"alg": "HS512", "kid": "hs"}, claims(),
                                                  "HS512", HS_SECRET)),
        ("kid hs512 (HS512) signed HS256", raw_token({"alg": "HS256", "kid": "hs512"}, claims(),
                                                     "HS256", HS512_SECRET)),
        ("confusion: HS256, RSA PEM as secret, kid rsa", confused(rsa_pem, "rsa")),
        ("confusion: HS256, RSA PEM as secret, no kid", confused(rsa_pem, None)),
        ("confusion: HS256, RSA PEM without final newline, kid rsa",
         confused(rsa_pem.rstrip(b"\n"), "rsa")),
        ("confusion: HS256, RSA DER as secret, kid rsa", confused(rsa_der, "rsa")),
        ("confusion: HS256, certificate PEM as secret, kid cert", confused(cert_pem, "cert")),
        ("confusion: HS256, EC PEM as secret, kid ec", confused(keys.pem_bytes("ec"), "ec")),
        ("confusion: HS256, Ed25519 PEM as secret, kid ed", confused(keys.pem_bytes("ed"), "ed")),
        ("confusion: HS256, RSA PEM as secret, kid rsa-ps", confused(rsa_pem, "rsa-ps")),
    ]
    problems, _ = expect_refused(e, "/s/x", "st", st)
    jrsa_pem = keys.pem_bytes("j_rsa")
    jw = [
        ("confusion: HS256, JWKS RSA key PEM as secret, kid j-rsa", confused(jrsa_pem, "j-rsa")),
        ("confusion: HS256, JWKS RSA key PEM as secret, kid j-rsa-any",
         confused(keys.pem_bytes("j_rsa"), "j-rsa-any")),
        ("confusion: HS256, JWKS RSA key PEM as secret, no kid", confused(jrsa_pem, None)),
        ("confusion: HS256, the JWK's JSON as secret, kid j-rsa",
         confused(json.dumps(keys.jwk("j_rsa", kid="j-rsa", alg="RS256")).encode(), "j-rsa")),
    ]
    p, _ = expect_refused(e, "/j/x", "jw", jw)
    report(problems + p)


def test_alg_none_in_any_spelling(e, keys):
    """alg none / None / NONE / nOnE, with an empty signature, a random one, or an HMAC made
    with a real secret, with and without a kid: refused. So are a missing, empty, null or
    numeric alg."""
    cases = []
    for spelling in ("none", "None", "NONE", "nOnE"):
        for hname, header in (("no kid", {"alg": spelling, "typ": "JWT"}),
                              ("kid rsa", {"alg": spelling, "kid": "rsa"}),
                              ("kid hs", {"alg": spelling, "kid": "hs"})):
            pay = claims(sub="none-" + spelling)
            si = "%s.%s" % (encode_part(header), encode_part(pay))
            cases += [
                ("alg %s, %s, empty signature" % (spelling, hname), si + "."),
                ("alg %s, %s, random signature" % (spelling, hname),
                 si + "." + b64u(secrets.token_bytes(32))),
                ("alg %s, %s, HS256 signature" % (spelling, hname),
                 si + "." + b64u(sign("HS256", HS_SECRET, si.encode()))),
            ]
    for name, header in (("alg missing", {"kid": "hs", "typ": "JWT"}),
                         ("alg empty", {"alg": "", "kid": "hs"}),
                         ("alg null", {"alg": None, "kid": "hs"}),
                         ("alg 256", {"alg": 256, "kid": "hs"}),
                         ("alg [HS256]", {"alg": ["HS256"], "kid": "hs"}),
                         ("alg hs256 (lower case)", {"alg": "hs256", "kid": "hs"})):
        cases.append((name + ", HS256 signature", raw_token(header, claims(), "HS256",
                                                            HS_SECRET)))
    problems, _ = expect_refused(e, "/s/x", "st", cases)
    pay = claims()
    jw = [("alg none on the JWKS provider, kid j-rsa",
           "%s.%s." % (encode_part({"alg": "none", "kid": "j-rsa"}), encode_part(pay))),
          ("alg None on the JWKS provider, no kid",
           "%s.%s." % (encode_part({"alg": "None"}), encode_part(pay)))]
    p, _ = expect_refused(e, "/j/x", "jw", jw)
    report(problems + p)


def flip(s, i):
    """<s> with the base64url character at <i> replaced by another one."""
    c = s[i]
    return s[:i] + ("A" if c != "A" else "B") + s[i + 1:]


def test_tampered_tokens(e, keys):
    """A changed signature, payload or header, a truncated or borrowed signature, an ECDSA
    signature in DER instead of r||s, a signature one byte too long: refused (the untampered
    tokens are accepted)."""
    k = keys.priv
    good_rs = mint("RS256", k("rsa"), claims(sub="tamper-rs"), kid="rsa")
    good_es = mint("ES256", k("ec"), claims(sub="tamper-es"), kid="ec")
    good_ed = mint("EdDSA", k("ed"), claims(sub="tamper-ed"), kid="ed")
    good_hs = mint("HS256", HS_SECRET, claims(sub="tamper-hs"), kid="hs")
    problems = expect_accepted(e, "/s/x", [("untampered RS256", good_rs, "tamper-rs"),
                                           ("untampered ES256", good_es, "tamper-es"),
                                           ("untampered EdDSA", good_ed, "tamper-ed"),
                                           ("untampered HS256", good_hs, "tamper-hs")])
    cases = []
    for name, tok in (("RS256", good_rs), ("ES256", good_es), ("EdDSA", good_ed),
                      ("HS256", good_hs)):
        h, p, s = tok.split(".")
        pay = json.loads(jwtfix.b64u_decode(p))
        hdr = json.loads(jwtfix.b64u_decode(h))
        forged_pay = dict(pay, sub="admin")
        forged_hdr = dict(hdr, x=1)
        cases += [
            ("%s signature changed" % name, "%s.%s.%s" % (h, p, flip(s, len(s) // 2))),
            ("%s signature first character changed" % name, "%s.%s.%s" % (h, p, flip(s, 0))),
            ("%s payload re-encoded with sub admin" % name,
             "%s.%s.%s" % (h, encode_part(forged_pay), s)),
            ("%s payload with exp pushed back" % name,
             "%s.%s.%s" % (h, encode_part(dict(pay, exp=pay["exp"] + 3600)), s)),
            ("%s header re-encoded with a member added" % name,
             "%s.%s.%s" % (encode_part(forged_hdr), p, s)),
            ("%s signature truncated" % name, "%s.%s.%s" % (h, p, s[:-4])),
            ("%s empty signature" % name, "%s.%s." % (h, p)),
        ]
    # a signature borrowed from another token of the same key
    other = mint("RS256", k("rsa"), claims(sub="someone-else"), kid="rsa")
    h, p, _ = good_rs.split(".")
    cases.append(("RS256 signature of another token", "%s.%s.%s" % (h, p, other.split(".")[2])))
    # RS256 signature with a zero byte in front (longer than the modulus)
    s = jwtfix.b64u_decode(good_rs.split(".")[2])
    cases.append(("RS256 signature with a leading zero byte",
                  "%s.%s.%s" % (h, p, b64u(b"\x00" + s))))
    # ECDSA: DER instead of the raw r || s of RFC 7518; r || s with a byte appended
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec as ecmod
    hdr, pay = {"alg": "ES256", "kid": "ec", "typ": "JWT"}, claims(sub="der")
    si = "%s.%s" % (encode_part(hdr), encode_part(pay))
    der = k("ec").sign(si.encode(), ecmod.ECDSA(hashes.SHA256()))
    cases.append(("ES256 signature in DER", "%s.%s" % (si, b64u(der))))
    raw = sign("ES256", k("ec"), si.encode())
    cases.append(("ES256 r||s with a byte appended", "%s.%s" % (si, b64u(raw + b"\x00"))))
    cases.append(("ES256 r||s with a zero byte in front", "%s.%s" % (si, b64u(b"\x00" + raw))))
    p2, _ = expect_refused(e, "/s/x", "st", cases)
    report(problems + p2)


def with_dash(make, part):
    """A token from make() whose part <part> (0 header, 1 payload, 2 signature) contains '-' or
    '_' (tries fresh tokens)."""
    for _ in range(200):
        t = make()
        if re.search(r"[-_]", t.split(".")[part]):
            return t
    raise AssertionError("no token with - or _ in part %d" % part)


def header_part_with_dash():
    for i in range(1000):
        h = encode_part({"alg": "HS256", "kid": "hs", "typ": "JWT", "x": "v%d?>~" % i})
        if re.search(r"[-_]", h):
            return h
    raise AssertionError("no header with - or _")


def payload_with_len_mod(mod, **kw):
    for n in range(12):
        p = encode_part(claims(pad="x" * n, **kw))
        if len(p) % 4 == mod:
            return p
    raise AssertionError("no payload of length %% 4 == %d" % mod)


def test_malformed_tokens(e):
    """Shape: not three parts (1, 2, 4, 5 parts, empty parts), the standard base64 alphabet
    (+ /) instead of base64url, padding '=', a character outside the alphabet, a space; a
    header or payload that is not a JSON object or has trailing bytes. Each one validly signed
    over its exact characters, so a lenient decoder would accept it."""
    good = hs(claims(sub="shape"))
    h, p, s = good.split(".")
    cases = [
        ("1 part", h),
        ("2 parts", "%s.%s" % (h, p)),
        ("4 parts", good + ".e30"),
        ("4 parts, last empty", good + "."),
        ("5 parts (JWE-like)", good + ".AAAA.BBBB"),
        ("5 parts, a real JWE header",
         "%s.%s.%s.%s.%s" % (encode_part({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": "rsa"}),
                             b64u(secrets.token_bytes(256)), b64u(secrets.token_bytes(12)),
                             b64u(secrets.token_bytes(40)), b64u(secrets.token_bytes(16)))),
        ("empty parts", ".."),
        ("empty header", ".%s.%s" % (p, s)),
        ("empty payload", hs_token_from_parts(h, "")),
    ]
    # the standard alphabet, signed over the characters sent
    t = with_dash(lambda: hs(claims(sub="std-b64-sig")), 2)
    th, tp, ts = t.split(".")
    cases.append(("signature in the standard base64 alphabet", "%s.%s.%s" % (th, tp, std_b64(ts))))
    hd = header_part_with_dash()
    cases.append(("header in the standard base64 alphabet",
                  hs_token_from_parts(std_b64(hd), encode_part(claims(sub="std-b64-h")))))
    pd = with_dash(lambda: hs(claims(sub="std-b64-p", pad=secrets.token_hex(8) + "?>~")), 1)
    cases.append(("payload in the standard base64 alphabet",
                  hs_token_from_parts(pd.split(".")[0], std_b64(pd.split(".")[1]))))
    # padding
    p2 = payload_with_len_mod(2, sub="pad2")
    p3 = payload_with_len_mod(3, sub="pad3")
    cases.append(("payload with == padding", hs_token_from_parts(h, p2 + "==")))
    cases.append(("payload with = padding", hs_token_from_parts(h, p3 + "=")))
    hh = encode_part({"alg": "HS256", "kid": "hs"})
    hpad = hh + "=" * (-len(hh) % 4)
    if hpad != hh:
        cases.append(("header with padding", hs_token_from_parts(hpad, encode_part(claims()))))
    sig_pad = hs(claims(sub="sigpad"))
    cases.append(("signature with = padding", sig_pad + "=" * (-len(sig_pad.split(".")[2]) % 4)))
    # characters outside the alphabet
    pp = encode_part(claims(sub="star"))
    cases.append(("a '*' in the payload", hs_token_from_parts(h, pp[:10] + "*" + pp[10:])))
    cases.append(("a '.' doubled", "%s..%s.%s" % (h, p, s)))
    cases.append(("a '%' escape in the payload", hs_token_from_parts(h, pp[:10] + "%41" + pp[10:])))
    # JSON that is not an object, or not only an object
    hdr_obj = {"alg": "HS256", "kid": "hs"}
    cases += [
        ("header is a JSON array", hs_token_from_parts(encode_part(b'["HS256"]'), p)),
        ("header is a JSON string", hs_token_from_parts(encode_part(b'"HS256"'), p)),
        ("header is not JSON", hs_token_from_parts(encode_part(b"alg=HS256"), p)),
        ("header with trailing bytes",
         hs_token_from_parts(encode_part(json.dumps(hdr_obj) + "x"), p)),
        ("header with a trailing comma",
         hs_token_from_parts(encode_part(b'{"alg":"HS256","kid":"hs",}'), p)),
        ("header with a single-quoted string",
         hs_token_from_parts(encode_part(b"{'alg':'HS256','kid':'hs'}"), p)),
        ("payload is a JSON array", hs_token_from_parts(h, encode_part(b'[{"sub":"x"}]'))),
        ("payload is a number", hs_token_from_parts(h, encode_part(b"4"))),
        ("payload is not JSON", hs_token_from_parts(h, encode_part(b"sub=admin"))),
        ("payload with trailing bytes",
         hs_token_from_parts(h, encode_part(json.dumps(claims()) + "}"))),
        ("payload with two objects",
         hs_token_from_parts(h, encode_part(json.dumps(claims()) + json.dumps(claims())))),
    ]
    problems, _ = expect_refused(e, "/s/x", "st", cases)
    # a space splits the credentials: the doc does not say whether that is no token or an
    # invalid one, so either Bearer challenge will do, but it must be a 401
    snap = e.a.snapshot()
    r = call(e.port, "/s/x", hs_token_from_parts(h, pp[:10] + " " + pp[10:]))
    if r.status != 401 or r.headers_all("www-authenticate") not in ([NO_TOKEN], [INVALID]):
        problems.append("a space inside the token: %d %r" % (r.status,
                                                             r.headers_all("www-authenticate")))
    if hits(e.a, snap):
        problems.append("a token with a space reached the upstream")
    report(problems)


def sized(target, secret, kid="hs", over=False):
    """The longest HS256 token of at most <target> bytes (over: the shortest longer one); the
    length grows with a padding claim, by 0 to 2 characters a step."""
    base = claims(sub="size")

    def tok(n):
        return raw_token({"alg": "HS256", "kid": kid, "typ": "JWT"}, dict(base, pad="p" * n),
                         "HS256", secret)

    lo, hi = 0, target   # len(tok(lo)) <= target < len(tok(hi))
    assert len(tok(lo)) <= target < len(tok(hi))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(tok(mid)) <= target:
            lo = mid
        else:
            hi = mid
    return tok(hi) if over else tok(lo)


def test_token_size_limit(e):
    """max_token_size: a token of at most 8k bytes is accepted, one byte-range above it is
    refused (default 8k on st, 1k configured on sm); a 20,000-byte token too."""
    at8k, over8k = sized(8192, HS_SECRET), sized(8192, HS_SECRET, over=True)
    at1k, over1k = sized(1024, SM_SECRET), sized(1024, SM_SECRET, over=True)
    assert len(at8k) <= 8192 < len(over8k) and len(over8k) - len(at8k) <= 4
    problems = expect_accepted(e, "/s/x", [("%d-byte token (max_token_size 8k)" % len(at8k),
                                            at8k, "size")])
    problems += expect_accepted(e, "/sm/x", [("%d-byte token (max_token_size 1k)" % len(at1k),
                                              at1k, "size")])
    p, _ = expect_refused(e, "/s/x", "st", [
        ("%d-byte token (max_token_size 8k)" % len(over8k), over8k),
        ("20000-byte token", sized(20000, HS_SECRET, over=True))])
    problems += p
    p, _ = expect_refused(e, "/sm/x", "sm", [
        ("%d-byte token (max_token_size 1k)" % len(over1k), over1k)])
    report(problems + p)


def test_nesting_duplicates_crit_and_typ(e):
    """JSON nested deeper than 16 levels (100 levels in a claim, 20 in a claim, 100 in the
    header), repeated member names in the header or the payload, a `crit` header, a `typ` other
    than JWT / at+jwt: refused though validly signed. 5 levels of nesting and the allowed typ
    spellings are accepted."""
    now = int(time.time())
    ok = [("claim nested 5 levels", hs(claims(sub="nest5", n=nested(5))), "nest5")]
    for typ in ("JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt", "application/jwt",
                "Application/JWT"):
        sub = "typ-" + re.sub(r"\W+", "-", typ.lower())
        ok.append(("typ %s" % typ, hs(claims(sub=sub), typ=typ), sub))
    problems = expect_accepted(e, "/s/x", ok)

    def hs_raw(header_json, payload_json):
        return raw_token(header_json, payload_json, "HS256", HS_SECRET)

    pay = json.dumps(claims())
    cases = [
        ("claim nested 100 levels (arrays)", hs(claims(n=nested(100)))),
        ("claim nested 100 levels (objects)",
         hs_raw('{"alg":"HS256","kid":"hs"}',
                '{"sub":"deep","exp":%d,"n":%s}' % (now + 300, nested_json(100, '{"a":', "}")))),
        ("claim nested 20 levels", hs(claims(n=nested(20)))),
        ("header nested 100 levels", hs(claims(), x=nested(100))),
        ("header: alg twice", hs_raw('{"alg":"HS256","alg":"HS256","kid":"hs"}', pay)),
        ("header: kid twice (last wins would pick hs)",
         hs_raw('{"alg":"HS256","kid":"nope","kid":"hs"}', pay)),
        ("header: kid twice (first wins would pick hs)",
         hs_raw('{"alg":"HS256","kid":"hs","kid":"nope"}', pay)),
        ("header: typ twice", hs_raw('{"alg":"HS256","kid":"hs","typ":"JWT","typ":"JWT"}', pay)),
        ("payload: sub twice",
         hs_raw('{"alg":"HS256","kid":"hs"}',
                '{"sub":"user","sub":"admin","exp":%d}' % (now + 300))),
        ("payload: exp twice (first expired)",
         hs_raw('{"alg":"HS256","kid":"hs"}', '{"sub":"dup","exp":1,"exp":%d}' % (now + 300))),
        ("payload: exp twice (same value)",
         hs_raw('{"alg":"HS256","kid":"hs"}',
                '{"sub":"dup","exp":%d,"exp":%d}' % (now + 300, now + 300))),
        ("payload: the same name, one escaped (\\u0073ub)",
         hs_raw('{"alg":"HS256","kid":"hs"}',
                '{"sub":"user","\\u0073ub":"admin","exp":%d}' % (now + 300))),
        ("crit [exp]", hs(claims(), crit=["exp"])),
        ("crit []", hs(claims(), crit=[])),
        ("crit [b64] with b64 false", hs(claims(), crit=["b64"], b64=False)),
        ("typ JWE", hs(claims(), typ="JWE")),
        ("typ JOSE", hs(claims(), typ="JOSE")),
        ("typ application/json", hs(claims(), typ="application/json")),
        ("typ empty", hs(claims(), typ="")),
        ("typ 1", hs(claims(), typ=1)),
    ]
    p, _ = expect_refused(e, "/s/x", "st", cases)
    report(problems + p)


def test_time_claims_and_leeway(e):
    """exp/nbf with the default 30 s leeway (exp 10 s ago and nbf 10 s ahead accepted, 60 s
    refused), iat in the future accepted unless reject_future_iat (provider cl), exp required
    by default, time claims that are not numbers refused; the log names the reason of an
    expired token."""
    now = int(time.time())
    cl = dict(iss=ISSUER, aud="orders-api")
    ok = [("exp 10 s ago (leeway 30s)", hs(claims(sub="t-exp10", exp=now - 10)), "t-exp10"),
          ("nbf 10 s ahead (leeway 30s)", hs(claims(sub="t-nbf10", nbf=now + 10)), "t-nbf10"),
          ("nbf 100 s ago", hs(claims(sub="t-nbfpast", nbf=now - 100)), "t-nbfpast"),
          ("iat an hour ahead, reject_future_iat false",
           hs(claims(sub="t-iatfut", iat=now + 3600)), "t-iatfut"),
          ("exp a fraction", hs(claims(sub="t-expfrac", exp=now + 60.5)), "t-expfrac"),
          ("exp 25 s ago (leeway 30s)",
           hs(claims(sub="t-exp25", exp=now - 25)), "t-exp25")]
    problems = expect_accepted(e, "/s/x", ok)
    problems += expect_accepted(e, "/c/x", [
        ("iat 10 s ahead with reject_future_iat (leeway 30s)",
         hs(claims(sub="t-cliat10", iat=now + 10, **cl), secret=CL_SECRET), "t-cliat10")])
    cases = [
        ("exp 60 s ago", hs(claims(sub="t-exp60", exp=now - 60))),
        ("exp a day ago", hs(claims(exp=now - 86400))),
        ("exp 0", hs(claims(exp=0))),
        ("nbf 60 s ahead", hs(claims(nbf=now + 60))),
        ("nbf a day ahead", hs(claims(nbf=now + 86400))),
        ("no exp (required_claims default [exp])", hs(claims(exp=None))),
        ("exp a string of digits", hs(claims(exp=str(now + 300)))),
        ("exp an array", hs(claims(exp=[now + 300]))),
        ("exp null", hs(dict(claims(), exp=None))),
        ("exp true", hs(claims(exp=True))),
        ("exp an object", hs(claims(exp={"t": now + 300}))),
        ("nbf a string", hs(claims(nbf="0"))),
        ("iat a string", hs(claims(iat="now"))),
    ]
    p, reasons = expect_refused(e, "/s/x", "st", cases)
    problems += p
    if reasons and "expired" not in reasons.get("exp 60 s ago", ""):
        problems.append("the log reason for an expired token is %r, want it to say expired "
                        "(docs: 'provider corp: token expired')" % reasons.get("exp 60 s ago"))
    p, _ = expect_refused(e, "/c/x", "cl", [
        ("iat 60 s ahead with reject_future_iat",
         hs(claims(iat=now + 60, **cl), secret=CL_SECRET)),
        ("iat an hour ahead with reject_future_iat",
         hs(claims(iat=now + 3600, **cl), secret=CL_SECRET))])
    report(problems + p)


def test_cached_token_does_not_outlive_its_exp(e):
    """Provider lw (leeway 0s): a token accepted twice (the second time from the cache) is
    refused once its exp has passed."""
    t = time.time()
    exp = int(t) + (1 if int(t) + 1 - t > 0.4 else 2)
    tok = hs(claims(sub="short-lived", exp=exp), secret=LW_SECRET)
    report(expect_accepted(e, "/lw/x", [("exp in %.1f s" % (exp - t), tok, "short-lived"),
                                        ("the same token again (cache)", tok, "short-lived")]))
    time.sleep(max(0.0, exp + 0.3 - time.time()))
    p, reasons = expect_refused(e, "/lw/x", "lw", [("the same token after its exp", tok)])
    report(p)


def test_issuer_audiences_and_required_claims(e):
    """Provider cl: iss must equal the issuer exactly; aud (a string or an array) must contain
    one of the audiences, and a token without aud is refused; required_claims [exp, jti]."""
    def cl(**kw):
        base = dict(iss=ISSUER, aud="orders-api")
        base.update(kw)
        return hs(claims(**base), secret=CL_SECRET)

    ok = [("aud orders-api", cl(sub="a1"), "a1"),
          ("aud billing", cl(sub="a2", aud="billing"), "a2"),
          ("aud [x, billing]", cl(sub="a3", aud=["x", "billing"]), "a3"),
          ("aud [orders-api]", cl(sub="a4", aud=["orders-api"]), "a4")]
    problems = expect_accepted(e, "/c/x", ok)
    cases = [
        ("iss without the final slash", cl(iss="https://idp.test")),
        ("iss of another issuer", cl(iss="https://evil.test/")),
        ("iss in another case", cl(iss="HTTPS://IDP.TEST/")),
        ("iss missing", cl(iss=None)),
        ("iss an array", cl(iss=[ISSUER])),
        ("aud other", cl(aud="other")),
        ("aud [x, y]", cl(aud=["x", "y"])),
        ("aud []", cl(aud=[])),
        ("aud missing", cl(aud=None)),
        ("aud in another case", cl(aud="Orders-Api")),
        ("aud both names in one string", cl(aud="orders-api billing")),
        ("aud a prefix", cl(aud="orders")),
        ("jti missing (required_claims [exp, jti])", cl(jti=None)),
        ("exp missing (required_claims [exp, jti])", cl(exp=None)),
        ("signed with another provider's secret", hs(claims(iss=ISSUER, aud="orders-api"))),
    ]
    p, _ = expect_refused(e, "/c/x", "cl", cases)
    report(problems + p)


def test_no_token_and_challenges(e):
    """No token: 401 `Bearer realm="passerelle"` without an error code; the realm setting
    changes both challenges; another scheme is no token; the upstream is never reached."""
    snap = e.a.snapshot()
    problems = []
    for name, headers in (("no Authorization", []),
                          ("Authorization: Basic", [("Authorization", "Basic dXNlcjpwYXNz")])):
        r = call(e.port, "/s/x", headers=headers)
        if r.status != 401 or r.headers_all("www-authenticate") != [NO_TOKEN]:
            problems.append("%s: %d %r (want 401 with exactly [%r])" % (
                name, r.status, r.headers_all("www-authenticate"), NO_TOKEN))
    r = call(e.port, "/realm/x")
    if r.status != 401 or r.headers_all("www-authenticate") != ['Bearer realm="shop"']:
        problems.append("realm shop, no token: %d %r" % (r.status,
                                                         r.headers_all("www-authenticate")))
    p, _ = expect_refused(e, "/realm/x", "st", [("realm shop, bad token", hs(claims(exp=1)))],
                          challenge='Bearer realm="shop", error="invalid_token"')
    problems += p
    if hits(e.a, snap):
        problems.append("the upstream was reached without a valid token: %r" % hits(e.a, snap))
    report(problems)


# ---- keys only ever come from the configuration ----

def new_fetches(server, n0):
    return server.fetches()[n0:]


def allowed_fetches(elapsed, min_refresh):
    """At most 2 per min_refresh window (one per window by the doc; a run straddles two)."""
    return 2 * (1 + int(elapsed // min_refresh))


def test_kid_is_only_a_lookup_key(e, keys):
    """kid values that look like paths, URLs, queries or log lines, on a static provider and on
    the JWKS provider, signed with the real keys: 401; the JWKS server sees only its own path
    (and at most the min_refresh-bounded refreshes), the attacker listeners see nothing, and no
    forged log line appears."""
    jw, jku, jkus = e.jw, e.jku, e.jkus
    jku_url = "http://127.0.0.1:%d/jwks.json" % jku.port
    jkus_url = "https://localhost:%d/jwks.json" % jkus.port
    jw_url = "https://localhost:%d/jwks.json" % jw.port
    forged = "2026-01-01T00:00:00.000Z [error] forged by a kid"
    kids = ["../../etc/passwd", "/etc/passwd", "%2e%2e/", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "?x=1", "../jwks.json?x=1", "jwks.json", "#frag", jw_url, jw_url + "?kid=1",
            jku_url, jkus_url, "file:///etc/passwd", "x\n" + forged, "x\r\n" + forged,
            "k" * 5000]
    st_cases = [("st kid %r" % kid[:60], mint("RS256", keys.priv("rsa"), kid=kid))
                for kid in kids]
    st_cases.append(("st kid 'rsa' + NUL (compared as bytes)",
                     raw_token({"alg": "RS256", "kid": "rsa\u0000x"}, claims(), "RS256",
                               keys.priv("rsa"))))
    st_cases.append(("st kid 'rsa ' (trailing space)",
                     mint("RS256", keys.priv("rsa"), kid="rsa ")))
    st_cases.append(("st kid 'RSA' (other case)", mint("RS256", keys.priv("rsa"), kid="RSA")))
    jw_cases = [("jw kid %r" % kid[:60], mint("RS256", keys.priv("j_rsa"), kid=kid))
                for kid in kids]
    jw_cases.append(("jw kid 'j-rsa' + NUL",
                     raw_token({"alg": "RS256", "kid": "j-rsa\u0000"}, claims(), "RS256",
                               keys.priv("j_rsa"))))
    mark = e.gw.error_mark()
    n0, t0 = len(jw.fetches()), time.monotonic()
    problems, _ = expect_refused(e, "/s/x", "st", st_cases)
    p, _ = expect_refused(e, "/j/x", "jw", jw_cases)
    problems += p
    elapsed = time.monotonic() - t0
    time.sleep(0.3)   # a fetch the gateway might start after answering
    fetched = new_fetches(jw, n0)
    wrong = [q.target for q in jw.fetches() if q.target != "/jwks.json"]
    if wrong:
        problems.append("the JWKS server was asked for other paths: %r" % wrong[:10])
    if len(fetched) > allowed_fetches(elapsed, JW_MIN_REFRESH):
        problems.append("%d JWKS fetches in %.1f s for %d unknown kids (min_refresh %ds)" % (
            len(fetched), elapsed, len(jw_cases), JW_MIN_REFRESH))
    for s in (jku, jkus):
        if s.connections:
            problems.append("the attacker listener %s got %d connection(s): %r" % (
                s.name, s.connections, [q.target for q in s.fetches()]))
    lines = e.gw.error_lines()[mark:]
    injected = [l for l in lines if l.startswith("2026-01-01T00:00:00.000Z")
                or not ERROR_LINE_RE.match(l)]
    if injected:
        problems.append("a kid forged error-log lines: %r" % injected[:3])
    report(problems)


def test_jku_x5u_jwk_x5c_headers_are_ignored(e, keys, pki):
    """Tokens signed with the attacker's key, telling where to find it (jku / x5u at a local
    listener that serves the attacker's JWKS, over http and https; an embedded jwk; an x5c
    certificate, including one issued by the CA the gateway trusts for http_ca): 401 on the
    static and the JWKS provider, and the listeners never see a connection."""
    jku, jkus = e.jku, e.jkus
    att = keys.priv("attacker")
    att_jwk = keys.jwk("attacker", kid="attacker", alg="RS256")
    urls = ["http://127.0.0.1:%d/jwks.json" % jku.port, "http://127.0.0.1:%d/" % jku.port,
            "https://localhost:%d/jwks.json" % jkus.port, "https://127.0.0.1:%d/" % jkus.port]
    cert_key = jwtfix.load_private_pem(pki.key("localhost"))
    chain = [base64.b64encode(d).decode()
             for d in tlsfix.pem_to_der_list(Path(pki.cert("localhost")).read_text())
             + tlsfix.pem_to_der_list(Path(pki.cert("ca")).read_text())]
    att_cert = base64.b64encode(jwtfix.self_signed_der(att)).decode()

    def att_token(**header):
        h = dict({"alg": "RS256", "typ": "JWT"}, **header)
        return raw_token(h, claims(sub="attacker"), "RS256", att)

    common = []
    for u in urls:
        common += [("jku %s, kid attacker" % u, att_token(jku=u, kid="attacker")),
                   ("jku %s, no kid" % u, att_token(jku=u)),
                   ("x5u %s, kid attacker" % u, att_token(x5u=u, kid="attacker")),
                   ("x5u %s, no kid" % u, att_token(x5u=u))]
    common += [
        ("embedded jwk, no kid", att_token(jwk=att_jwk)),
        ("embedded jwk, kid attacker", att_token(jwk=att_jwk, kid="attacker")),
        ("embedded jwk and jku, kid attacker",
         att_token(jwk=att_jwk, jku=urls[0], kid="attacker")),
        ("x5c self-signed, no kid", att_token(x5c=[att_cert])),
        ("x5c self-signed, kid attacker", att_token(x5c=[att_cert], kid="attacker")),
    ]
    st = common + [
        ("embedded jwk, kid rsa", att_token(jwk=att_jwk, kid="rsa")),
        ("x5c chained to the http_ca CA, kid x5c",
         raw_token({"alg": "RS256", "kid": "x5c", "x5c": chain}, claims(), "RS256", cert_key)),
    ]
    jw = common + [
        ("embedded jwk, kid j-rsa", att_token(jwk=att_jwk, kid="j-rsa")),
        ("jku, kid j-rsa", att_token(jku=urls[0], kid="j-rsa")),
        ("x5c chained to the http_ca CA, no kid",
         raw_token({"alg": "RS256", "x5c": chain}, claims(), "RS256", cert_key)),
    ]
    problems, _ = expect_refused(e, "/s/x", "st", st)
    p, _ = expect_refused(e, "/j/x", "jw", jw)
    problems += p
    time.sleep(0.3)
    for s in (jku, jkus):
        if s.connections or s.fetches():
            problems.append("the attacker listener %s got %d connection(s), requests %r" % (
                s.name, s.connections, [q.target for q in s.fetches()]))
    if jkus.handshakes or jkus.handshake_errors:
        problems.append("TLS handshakes at the attacker's https listener: %d ok, errors %r" % (
            jkus.handshakes, jkus.handshake_errors))
    report(problems)


# ---- JWKS ----

def test_jwks_rotation_without_restart(e, keys):
    """The JWKS server switches to a new key set: a token with the new kid is accepted at once
    (the unknown kid fetches the set again, min_refresh 1s), with no new worker; the old kid is
    refused from then on, both for a token accepted (and cached) before and for a new one. Then
    the server answers 500: the failed refresh keeps the keys of the last good set."""
    jr = e.jr
    pids = e.gw.worker_pids()
    old1 = mint("ES256", keys.priv("rot1"), claims(sub="rot-old"), kid="r1")
    problems = expect_accepted(e, "/jr/x", [("kid r1 (first set)", old1, "rot-old"),
                                            ("kid r1 again (cache)", old1, "rot-old")])
    report(problems)
    assert jr.fetches(), "a token of the JWKS was accepted but the JWKS server saw no request"
    jr.set_jwks({"keys": [keys.jwk("rot2", kid="r2", alg="EdDSA")]})
    # let min_refresh pass since the last fetch, then one request must do
    wait = jr.fetches()[-1].time + JR_MIN_REFRESH + 0.2 - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    n0 = len(jr.fetches())
    new = mint("EdDSA", keys.priv("rot2"), claims(sub="rot-new"), kid="r2")
    problems = expect_accepted(e, "/jr/x", [("kid r2 (new set), first request", new, "rot-new")])
    if len(jr.fetches()) <= n0:
        problems.append("no JWKS fetch for the unknown kid r2")
    old2 = mint("ES256", keys.priv("rot1"), claims(sub="rot-old2"), kid="r1")
    p, _ = expect_refused(e, "/jr/x", "jr", [
        ("kid r1 accepted before (cached), after the set dropped it", old1),
        ("a new token of kid r1, after the set dropped it", old2)])
    problems += p
    # the server now fails: an unknown kid makes a failed refresh, the keys it had stay
    with jr.cond:
        jr.status_code = 500
    wait = jr.fetches()[-1].time + JR_MIN_REFRESH + 0.2 - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    n0 = len(jr.fetches())
    call(e.port, "/jr/x", mint("EdDSA", keys.priv("rot2"), kid="r-unknown"))
    if len(jr.fetches()) <= n0:
        problems.append("no JWKS fetch for the unknown kid r-unknown")
    problems += expect_accepted(e, "/jr/x", [
        ("kid r2 after a failed refresh (the keys stay)",
         mint("EdDSA", keys.priv("rot2"), claims(sub="rot-kept"), kid="r2"), "rot-kept")])
    if e.gw.worker_pids() != pids:
        problems.append("workers changed: %r -> %r" % (pids, e.gw.worker_pids()))
    report(problems)


def test_unknown_kid_flood_is_bounded(e, keys):
    """Once min_refresh (2s) has passed since the last fetch, 200 tokens with random kids (4
    clients at once) make the worker fetch the set again, but at most 2 times per min_refresh
    window; every one is refused; the known kid still works."""
    jf = e.jf
    good = mint("ES256", keys.priv("flood"), claims(sub="flood-ok"), kid="f1")
    report(expect_accepted(e, "/jf/x", [("kid f1 before the flood", good, "flood-ok")]))
    assert jf.fetches(), "a token of the JWKS was accepted but the JWKS server saw no request"
    wait = jf.fetches()[-1].time + JF_MIN_REFRESH + 0.2 - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    tokens = [mint("ES256", keys.priv("flood"), claims(sub="flood"), kid="rnd-" +
                   secrets.token_hex(8)) for _ in range(200)]
    mark = e.gw.error_mark()
    snap = e.a.snapshot()
    n0, t0 = len(jf.fetches()), time.monotonic()
    results = [None] * len(tokens)

    def client(k):
        for i in range(k, len(tokens), 4):
            try:
                results[i] = invalid_problem(call(e.port, "/jf/x", tokens[i]))
            except Exception as ex:  # noqa: BLE001
                results[i] = "%s: %s" % (type(ex).__name__, ex)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0
    fetched = len(jf.fetches()) - n0
    if os.environ.get("JWT_SHOW_REASONS"):
        print("[jf] %d JWKS fetches for 200 random kids in %.2f s" % (fetched, elapsed))
    problems = ["random kid #%d: %s" % (i, p) for i, p in enumerate(results) if p][:10]
    if fetched < 1:
        problems.append("no JWKS fetch for 200 unknown kids, min_refresh after the last one "
                        "(docs: an unknown kid makes the worker fetch the set at once)")
    if fetched > allowed_fetches(elapsed, JF_MIN_REFRESH):
        problems.append("%d JWKS fetches for 200 unknown kids in %.1f s (min_refresh %ds: at "
                        "most %d)" % (fetched, elapsed, JF_MIN_REFRESH,
                                      allowed_fetches(elapsed, JF_MIN_REFRESH)))
    if hits(e.a, snap):
        problems.append("%d flood requests reached the upstream" % len(hits(e.a, snap)))
    n = len(refusal_lines(e.gw, mark, "jf", 200))
    if n != 200:
        problems.append("%d 'jwt: refused ... provider jf' log lines for 200 refusals" % n)
    problems += expect_accepted(e, "/jf/x", [("kid f1 after the flood", good, "flood-ok")])
    report(problems)


def test_untrusted_jwks_certificate_gives_503(e, keys):
    """A JWKS server whose certificate is not from the trusted CA: no key is ever fetched, so a
    token for that provider is answered 503 {"message":"token keys unavailable"}, the error log
    says the TLS verification failed, and the server never receives a request."""
    jbad = e.jbad
    mark = e.gw.error_mark()
    snap = e.a.snapshot()
    problems = []
    for name, tok in (("kid j-rsa", mint("RS256", keys.priv("j_rsa"), kid="j-rsa")),
                      ("no kid", mint("ES256", keys.priv("j_ec"))),
                      ("kid j-rsa, again", mint("RS256", keys.priv("j_rsa"), kid="j-rsa"))):
        r = call(e.port, "/jbad/x", tok)
        if r.status != 503 or body_json(r) != {"message": "token keys unavailable"}:
            problems.append("%s: %d %r (want 503 {\"message\":\"token keys unavailable\"})" % (
                name, r.status, r.body[:200]))
    if hits(e.a, snap):
        problems.append("the upstream was reached")
    if jbad.fetches():
        problems.append("the untrusted JWKS server answered %d request(s)" % len(jbad.fetches()))
    rx = re.compile(r"(?i)(tls|certificate)")
    lines = [l for l in e.gw.error_lines() if ("jbad" in l or "jwks" in l.lower())
             and rx.search(l)]
    if not lines:
        problems.append("no error-log line about the JWKS of jbad naming TLS / the certificate;"
                        " lines since the requests: %r" % e.gw.error_lines()[mark:][-5:])
    report(problems)


# ---- identity ----

def test_consumer_and_claims_to_headers(e):
    """X-Consumer is the sub; claims_to_headers sends a string as is, a number as written, an
    array of strings joined with ', ', other values (an object, a boolean, an array of numbers)
    as JSON; client-sent copies of these headers
    are removed, also when the claim is absent; a token without sub forwards no X-Consumer;
    consumer_header renames the header; pgw.ctx() has jwt.claims and jwt.provider."""
    forged = [("X-Consumer", "mallory"), ("x-consumer", "mallory2"),
              ("X-User-Email", "forged@example.com"), ("X-Level", "99"), ("X-Roles", "root"),
              ("X-Org", "{}"), ("X-Ratio", "0"), ("X-Admin", "false"), ("X-Nums", "0")]
    tok = hs(claims(sub="alice", email="alice@example.com", level=42, ratio=1.5,
                    roles=["admin", "ops"], org={"id": 7, "name": "acme"}, admin=True,
                    nums=[1, 2]))
    problems = []
    snap = e.a.snapshot()
    r = call(e.port, "/id/x", tok, headers=forged)
    reqs = hits(e.a, snap)
    if r.status != 200 or len(reqs) != 1:
        report(["full token: %d %r, upstream requests %r" % (r.status, r.body[:200], reqs)])
    q = reqs[0]
    want = {"x-consumer": ["alice"], "x-user-email": ["alice@example.com"], "x-level": ["42"],
            "x-ratio": ["1.5"], "x-roles": ["admin, ops"]}
    for h, v in want.items():
        if q.headers_all(h) != v:
            problems.append("full token: upstream %s = %r, want %r" % (h, q.headers_all(h), v))
    for h, v in (("x-org", {"id": 7, "name": "acme"}), ("x-admin", True), ("x-nums", [1, 2])):
        got = q.headers_all(h)
        try:
            ok = len(got) == 1 and json.loads(got[0]) == v
        except ValueError:
            ok = False
        if not ok:
            problems.append("full token: upstream %s = %r, want %s as JSON" % (h, got,
                                                                             json.dumps(v)))
    try:
        ctx = json.loads(q.header("x-ctx") or "null")
    except ValueError:
        ctx = None
    if not ctx or ctx.get("provider") != "st" or (ctx.get("claims") or {}).get("email") != \
            "alice@example.com" or ctx.get("consumer") != "alice":
        problems.append("pgw.ctx() after jwt: %r (want consumer alice, jwt.provider st, "
                        "jwt.claims with the payload)" % ctx)
    # mapped claims absent: the client's copies are removed all the same
    snap = e.a.snapshot()
    r = call(e.port, "/id/x", hs(claims(sub="carol")), headers=forged)
    reqs = hits(e.a, snap)
    if r.status != 200 or len(reqs) != 1:
        problems.append("token without the mapped claims: %d %r" % (r.status, r.body[:200]))
    else:
        q = reqs[0]
        if q.headers_all("x-consumer") != ["carol"]:
            problems.append("token without the mapped claims: X-Consumer %r" % (
                q.headers_all("x-consumer"),))
        for h, _ in forged[2:]:
            if q.headers_all(h):
                problems.append("token without the claim for %s: the client's %s reached the "
                                "upstream: %r" % (h, h, q.headers_all(h)))
    # no sub: required_claims is [exp] and require_consumer false, so the token is good; there
    # is no consumer, and the client's X-Consumer must not pass
    mark = e.gw.error_mark()
    snap = e.a.snapshot()
    r = call(e.port, "/id/x", hs(claims(sub=None, email="nosub@example.com")), headers=forged)
    reqs = hits(e.a, snap)
    if r.status != 200 or len(reqs) != 1:
        problems.append("token without sub (required_claims [exp], require_consumer false): "
                        "%d %r; log: %r" % (r.status, r.body[:100], last_refusal(e.gw, mark)))
    elif reqs[0].headers_all("x-consumer"):
        problems.append("token without sub: X-Consumer %r reached the upstream" % (
            reqs[0].headers_all("x-consumer"),))
    # consumer_header: X-Who
    snap = e.a.snapshot()
    r = call(e.port, "/who/x", hs(claims(sub="bob")), headers=[("X-Who", "mallory")])
    reqs = hits(e.a, snap)
    if r.status != 200 or len(reqs) != 1 or reqs[0].headers_all("x-who") != ["bob"]:
        problems.append("consumer_header X-Who: %d, upstream %r" % (
            r.status, [x.headers_all("x-who") for x in reqs]))
    report(problems)


def test_consumer_claim(e):
    """consumer_claim client_id names the consumer; required_claims [] accepts a token without
    exp."""
    tok = hs(claims(sub="someone", client_id="svc-1", exp=None), secret=STC_SECRET)
    report(expect_accepted(e, "/cc/x", [("client_id svc-1, no exp", tok, "svc-1")]))


def test_require_consumer(e):
    """require_consumer: true: a sub that is a consumer of the store (made by `passerelle
    consumers add` while the gateway runs) is accepted, with its plan and groups in pgw.ctx();
    an unknown sub, and a token without sub, are refused with invalid_token."""
    cp = e.gw.cli("consumers", "add", "known1", "--plan", "gold", "--groups", "ops,dev")
    assert cp.returncode == 0, cp
    snap = e.a.snapshot()
    problems = expect_accepted(e, "/rc/x", [
        ("known consumer", hs(claims(sub="known1"), secret=STRC_SECRET), "known1")])
    reqs = hits(e.a, snap)
    if reqs:
        try:
            ctx = json.loads(reqs[-1].header("x-ctx") or "null")
        except ValueError:
            ctx = None
        if not ctx or ctx.get("plan") != "gold" or sorted(ctx.get("groups") or []) != \
                ["dev", "ops"] or ctx.get("provider") != "strc":
            problems.append("pgw.ctx() for a known consumer: %r (want plan gold, groups "
                            "[ops, dev], jwt.provider strc)" % ctx)
    p, _ = expect_refused(e, "/rc/x", "strc", [
        ("unknown consumer", hs(claims(sub="unknown1"), secret=STRC_SECRET)),
        ("no sub", hs(claims(sub=None), secret=STRC_SECRET))])
    report(problems + p)


def test_anonymous_and_an_earlier_auth_policy(e):
    """anonymous: no token runs as the anonymous consumer, a bad token is still refused, a good
    one is its sub. key_auth before jwt: a request with an API key and no token passes."""
    assert e.gw.cli("consumers", "add", "guest").returncode == 0
    assert e.gw.cli("consumers", "add", "kauser").returncode == 0
    cp = e.gw.cli("keys", "add", "--consumer", "kauser", "--key", "jwt-suite-key-00001")
    assert cp.returncode == 0, cp
    problems = []
    snap = e.a.snapshot()
    r = call(e.port, "/anon/x", headers=[("X-Consumer", "mallory")])
    reqs = hits(e.a, snap)
    if r.status != 200 or len(reqs) != 1 or reqs[0].headers_all("x-consumer") != ["guest"]:
        problems.append("anonymous, no token: %d, upstream X-Consumer %r" % (
            r.status, [q.headers_all("x-consumer") for q in reqs]))
    problems += expect_accepted(e, "/anon/x", [("anonymous route, good token",
                                                hs(claims(sub="anon-user")), "anon-user")])
    p, _ = expect_refused(e, "/anon/x", "st", [("anonymous route, expired token",
                                                hs(claims(exp=int(time.time()) - 3600)))])
    problems += p
    snap = e.a.snapshot()
    r = call(e.port, "/ka/x", headers=[("apikey", "jwt-suite-key-00001")])
    reqs = hits(e.a, snap)
    if r.status != 200 or len(reqs) != 1 or reqs[0].headers_all("x-consumer") != ["kauser"]:
        problems.append("key_auth then jwt, API key and no token: %d %r, upstream %r" % (
            r.status, r.body[:200], [q.headers_all("x-consumer") for q in reqs]))
    report(problems)


def test_rate_limit_by_consumer_after_jwt(e):
    """rate_limit by consumer after jwt: limit 2 per window, the third request of a consumer is
    429, another consumer (same client address) still passes."""
    left = 3600 - time.time() % 3600
    if left < 3:   # do not straddle a window boundary
        time.sleep(left + 0.1)
    tag = secrets.token_hex(3)
    a, b = "rl-a-" + tag, "rl-b-" + tag
    got = [call(e.port, "/rl/x", hs(claims(sub=a))).status for _ in range(3)]
    got.append(call(e.port, "/rl/x", hs(claims(sub=b))).status)
    assert got == [200, 200, 429, 200], "consumer %s x3 then %s: %r" % (a, b, got)


def test_required_scopes(e):
    """required_scopes: every one must be in `scope` (space-separated) or `scp` (an array or a
    string); otherwise 403 with error="insufficient_scope" and the scopes in the challenge;
    auth.scopes in pgw.ctx(); an invalid token is still 401."""
    ok = [("scope with both", hs(claims(sub="sc1", scope="orders:read orders:write")), "sc1"),
          ("scope with both and more, other order",
           hs(claims(sub="sc2", scope="orders:write extra orders:read")), "sc2"),
          ("scp array", hs(claims(sub="sc3", scp=["orders:write", "orders:read"])), "sc3")]
    problems = expect_accepted(e, "/sc/x", ok)
    problems += expect_accepted(e, "/sc1/x", [
        ("scp string", hs(claims(sub="sc4", scp="orders:read")), "sc4")])
    snap = e.a.snapshot()
    call(e.port, "/sc/x", hs(claims(sub="sc5", scope="orders:read orders:write")))
    reqs = hits(e.a, snap)
    try:
        ctx = json.loads(reqs[-1].header("x-ctx")) if reqs else None
    except ValueError:
        ctx = None
    if not ctx or sorted(ctx.get("scopes") or []) != ["orders:read", "orders:write"]:
        problems.append("pgw.ctx()['auth.scopes']: %r" % (ctx and ctx.get("scopes")))
    want = ('Bearer realm="passerelle", error="insufficient_scope", '
            'scope="orders:read orders:write"')
    snap = e.a.snapshot()
    for name, tok in (("one of two scopes", hs(claims(scope="orders:read"))),
                      ("a longer scope name", hs(claims(scope="orders:readx orders:write"))),
                      ("a scope prefix", hs(claims(scope="orders:rea orders:write"))),
                      ("no scope claim", hs(claims())),
                      ("empty scope", hs(claims(scope=""))),
                      ("scp array missing one", hs(claims(scp=["orders:read"])))):
        r = call(e.port, "/sc/x", tok)
        if r.status != 403 or r.headers_all("www-authenticate") != [want]:
            problems.append("%s: %d %r (want 403 with exactly [%r])" % (
                name, r.status, r.headers_all("www-authenticate"), want))
    if hits(e.a, snap):
        problems.append("a request without the scopes reached the upstream")
    p, _ = expect_refused(e, "/sc/x", "st", [
        ("expired token with the scopes",
         hs(claims(scope="orders:read orders:write", exp=int(time.time()) - 3600)))])
    report(problems + p)


def test_token_locations_and_hide_credentials(e):
    """header (Bearer in any case), query and cookie; the header is read first, then the query,
    then the cookie; hide_credentials removes the Authorization header and the query argument;
    by default the Authorization header goes upstream as sent; `header: X-Auth`."""
    problems = []

    def one(path, token=None, headers=(), scheme="Bearer"):
        snap = e.a.snapshot()
        r = call(e.port, path, token, headers=headers, scheme=scheme)
        reqs = hits(e.a, snap)
        return r, (reqs[0] if len(reqs) == 1 else None)

    t = hs(claims(sub="loc"))
    for scheme in ("bearer", "BEARER", "BeArEr"):
        r, q = one("/s/x", t, scheme=scheme)
        if r.status != 200:
            problems.append("scheme %r: %d" % (scheme, r.status))
    r, q = one("/hide/x?a=1", t)
    if r.status != 200 or q is None or q.headers_all("authorization") or t.encode() in q.raw:
        problems.append("hide_credentials, header: %d; upstream %r" % (
            r.status, q and q.headers_all("authorization")))
    r, q = one("/hide/x?a=1&access_token=%s&b=2" % t)
    if r.status != 200 or q is None or q.query != {"a": "1", "b": "2"} or t.encode() in q.raw:
        problems.append("hide_credentials, query: %d; upstream target %r" % (
            r.status, q and q.target))
    r, q = one("/q/x", t)
    if r.status != 200 or q is None or q.headers_all("authorization") != ["Bearer " + t]:
        problems.append("default hide_credentials false: %d; upstream Authorization %r" % (
            r.status, q and q.headers_all("authorization")))
    r, q = one("/q/x?access_token=%s" % t)
    if r.status != 200 or q is None or q.query.get("access_token") != t:
        problems.append("query access_token: %d; upstream target %r" % (r.status,
                                                                        q and q.target))
    r, q = one("/q/x", headers=[("Cookie", "a=1; at=%s; b=2" % t)])
    if r.status != 200 or q is None or q.headers_all("x-consumer") != ["loc"]:
        problems.append("cookie at: %d %r" % (r.status, r.body[:100]))
    r, q = one("/hdr/x", headers=[("X-Auth", "Bearer " + t)])
    if r.status != 200 or q is None:
        problems.append("header X-Auth: %d" % r.status)
    r, q = one("/hdr/x", t)
    if r.status != 401 or r.headers_all("www-authenticate") != [NO_TOKEN]:
        problems.append("header X-Auth, token in Authorization only: %d %r (want 401 no token)"
                        % (r.status, r.headers_all("www-authenticate")))
    bad = hs(claims(exp=1))
    for name, path, token, headers in (
            ("bad header, good query", "/q/x?access_token=" + t, bad, ()),
            ("bad query, good cookie", "/q/x?access_token=" + bad, None,
             [("Cookie", "at=" + t)])):
        r, q = one(path, token, headers=headers)
        if invalid_problem(r):
            problems.append("%s: %s" % (name, invalid_problem(r)))
    report(problems)


def test_pgw_jwt_from_a_policy(e, keys):
    """pgw.jwt.verify returns a new claims table, or nil, reason, code ("invalid",
    "unknown_kid", "no_keys"); pgw.jwt.provider gives the settings as a new table (nil for an
    unknown name); jwks_done refuses bad JSON and keeps the previous keys."""
    # make sure jw has fetched its set
    report(expect_accepted(e, "/j/x", [("jw ready", mint("RS256", keys.priv("j_rsa"),
                                                          claims(sub="lua-ready"),
                                                          kid="j-rsa"), "lua-ready")]))

    def lua(provider, token=None, set_jwks=None):
        h = [("X-Provider", provider)]
        if token:
            h.append(("X-Token", token))
        if set_jwks is not None:
            h.append(("X-Set-Jwks", set_jwks))
        r = call(e.port, "/lua/x", headers=h)
        assert r.status == 200, r
        return r.json()

    problems = []
    out = lua("st", hs(claims(sub="lua-sub")))
    if (out.get("ok"), out.get("sub"), out.get("sub_after")) != (True, "lua-sub", "changed"):
        problems.append("verify(st, good token): %r" % out)
    out = lua("st", hs(claims(exp=1)))
    if out.get("ok") is not False or out.get("code") != "invalid" or not out.get("reason"):
        problems.append("verify(st, expired): %r (want nil, reason, \"invalid\")" % out)
    out = lua("jw", mint("RS256", keys.priv("j_rsa"), kid="never-seen-kid"))
    if out.get("ok") is not False or out.get("code") != "unknown_kid" or \
            out.get("reason") != "unknown kid":
        problems.append("verify(jw, unknown kid): %r (want nil, \"unknown kid\", "
                        "\"unknown_kid\")" % out)
    out = lua("jbad", mint("RS256", keys.priv("j_rsa"), kid="j-rsa"))
    if out.get("ok") is not False or out.get("code") != "no_keys":
        problems.append("verify(jbad, never fetched): %r (want code no_keys)" % out)
    p = lua("cl")["provider"]
    want = {"issuer": ISSUER, "audiences": AUDIENCES, "consumer_claim": "sub",
            "require_consumer": False, "keys": 1, "jwks_keys": 0}
    got = {k: p.get(k) for k in want} if isinstance(p, dict) else p
    if got != want:
        problems.append("provider(cl): %r, want %r" % (p, want))
    out = lua("jw")
    p = out["provider"]
    jw_url = "https://localhost:%d/jwks.json" % e.jw.port
    if not isinstance(p, dict) or (p.get("jwks") or {}).get("url") != jw_url or \
            (p.get("jwks") or {}).get("min_refresh") != JW_MIN_REFRESH or \
            p.get("jwks_keys") != 4 or p.get("keys") != 0:
        problems.append("provider(jw): %r (want jwks.url %s, jwks.min_refresh %d, 4 JWKS keys "
                        "taken of 7, 0 static keys)" % (p, jw_url, JW_MIN_REFRESH))
    if lua("nope")["provider"] != "nil":
        problems.append("provider(nope) is not nil")
    out = lua("jw", set_jwks="not json")
    if out.get("set_n") is not None or not out.get("set_err"):
        problems.append("jwks_done(jw, 'not json'): %r (want nil, reason)" % out)
    problems += expect_accepted(e, "/j/x", [
        ("jw keys kept after a refused jwks_done",
         mint("ES256", keys.priv("j_ec"), claims(sub="lua-kept"), kid="j-ec"), "lua-kept")])
    report(problems)


# ---- passerelle check ----

def check_config(path, jwt_section, policy_conf):
    cfg = config(listeners=[listener("public")],
                 upstreams={"a": {"targets": ["127.0.0.1:9"]}},
                 routes=[route("/", [{"jwt": policy_conf}])], jwt=jwt_section)
    path.write_text(to_yaml(cfg) + "\n")
    cp = subprocess.run([str(BINARY), "check", "-c", str(path)], cwd=str(REPO),
                        capture_output=True, text=True, timeout=60)
    return cp.returncode, cp.stdout + cp.stderr


def test_check_refuses_bad_providers(tmp_path, keys):
    """`passerelle check` accepts a valid jwt section (secrets of exactly the minimum length
    included) and refuses, naming the provider and the key: a missing key file, short secrets
    (HS256 < 32 bytes, HS384 < 48, a short secret_file), a key type that does not fit its alg
    (RSA with ES256, P-384 with ES256, RSA 1024 with RS256, a file for HS256), an unknown alg,
    alg none, an http:// JWKS URL, a provider with no key, a bad provider name, max_token_size
    over 64k, an unknown setting, and a jwt policy naming an unknown provider."""
    (tmp_path / "short.secret").write_text("s" * 40 + "\n")
    (tmp_path / "ok512.secret").write_text("s" * 64 + "\n")

    def prov(**kw):
        return kw

    good = {"providers": {"ok": prov(
        issuer=ISSUER, audiences=AUDIENCES,
        keys=[{"kid": "a", "alg": "RS256", "file": keys.pem("rsa")},
              {"kid": "b", "alg": "ES384", "file": keys.pem("ec384")},
              {"kid": "c", "alg": "EdDSA", "file": keys.pem("ed")},
              {"kid": "d", "alg": "HS256", "secret": "k" * 32},
              {"kid": "e", "alg": "HS384", "secret": "k" * 48},
              {"kid": "f", "alg": "HS512", "secret_file": str(tmp_path / "ok512.secret")}],
        jwks={"url": "https://idp.example.com/jwks.json", "refresh": "1h",
              "min_refresh": "30s", "timeout": "5s"},
        leeway="30s", max_token_size="64k")}}
    rc, out = check_config(tmp_path / "good.yaml", good, {"provider": "ok"})
    assert rc == 0, "a valid jwt section is refused:\n" + out

    def one_key(**key):
        return {"providers": {"bad": {"keys": [key]}}}

    # (case, jwt section, policy settings (None: provider bad), names that must all appear,
    #  names of which one must appear)
    cases = [
        ("missing key file", one_key(kid="a", alg="RS256", file=str(tmp_path / "nope.pem")),
         None, ["bad"], ["file"]),
        ("HS256 secret of 31 bytes", one_key(alg="HS256", secret="k" * 31), None, ["bad"],
         ["secret", "keys[0]"]),
        ("HS384 secret of 47 bytes", one_key(alg="HS384", secret="k" * 47), None, ["bad"],
         ["secret", "keys[0]"]),
        ("HS512 secret_file of 40 bytes",
         one_key(alg="HS512", secret_file=str(tmp_path / "short.secret")), None, ["bad"],
         ["secret_file", "keys[0]"]),
        ("missing secret_file", one_key(alg="HS256", secret_file=str(tmp_path / "nope")),
         None, ["bad"], ["secret_file"]),
        ("RSA PEM with ES256", one_key(alg="ES256", file=keys.pem("rsa")), None, ["bad"],
         ["alg", "file", "keys[0]"]),
        ("P-384 PEM with ES256", one_key(alg="ES256", file=keys.pem("ec384")), None, ["bad"],
         ["alg", "file", "keys[0]"]),
        ("Ed25519 PEM with RS256", one_key(alg="RS256", file=keys.pem("ed")), None, ["bad"],
         ["alg", "file", "keys[0]"]),
        ("RSA 1024 with RS256", one_key(alg="RS256", file=keys.pem("rsa1024")), None, ["bad"],
         ["alg", "file", "keys[0]"]),
        ("a PEM file for HS256", one_key(alg="HS256", file=keys.pem("rsa")), None, ["bad"],
         ["secret", "file"]),
        ("unknown alg RS999", one_key(alg="RS999", file=keys.pem("rsa")), None, ["bad"],
         ["alg"]),
        ("alg none", one_key(alg="none", file=keys.pem("rsa")), None, ["bad"], ["alg"]),
        ("alg None with a secret", one_key(alg="None", secret="k" * 64), None, ["bad"],
         ["alg"]),
        ("no alg", one_key(kid="x", file=keys.pem("rsa")), None, ["bad"], ["alg"]),
        ("jwks over http://",
         {"providers": {"bad": {"jwks": {"url": "http://idp.example.com/jwks.json"}}}}, None,
         ["bad"], ["url"]),
        ("no keys and no jwks", {"providers": {"bad": {"issuer": ISSUER}}}, None, ["bad"],
         ["keys", "jwks"]),
        ("max_token_size 128k",
         {"providers": {"bad": {"max_token_size": "128k",
                                "keys": [{"alg": "HS256", "secret": "k" * 32}]}}}, None,
         ["bad"], ["max_token_size"]),
        ("unknown setting issuerr",
         {"providers": {"bad": {"issuerr": ISSUER,
                                "keys": [{"alg": "HS256", "secret": "k" * 32}]}}}, None,
         [], ["issuerr"]),
        ("provider name Bad-Name",
         {"providers": {"Bad-Name": {"keys": [{"alg": "HS256", "secret": "k" * 32}]}}},
         {"provider": "Bad-Name"}, ["Bad-Name"], ["Bad-Name"]),
        ("policy naming an unknown provider", good, {"provider": "ghost"}, ["ghost"],
         ["provider"]),
    ]

    def run(i_case):
        i, (name, section, policy, all_of, one_of) = i_case
        rc, out = check_config(tmp_path / ("c%d.yaml" % i), section,
                               policy or {"provider": "bad"})
        return name, all_of, one_of, rc, out

    problems = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for name, all_of, one_of, rc, out in pool.map(run, enumerate(cases)):
            if rc == 0:
                problems.append("%s: accepted by passerelle check" % name)
                continue
            missing = [n for n in all_of if n not in out]
            if missing or not any(n in out for n in one_of):
                problems.append("%s: the message should name %s and one of %s: %r" % (
                    name, all_of, one_of, out[-500:]))
    report(problems)


def test_check_reports_jwt_errors_as_file_line(tmp_path, keys):
    """docs/config.md: every error of the file is reported, at once, as `FILE:LINE: message`:
    jwt errors too (two bad providers and a policy naming an unknown provider: three lines)."""
    section = {"providers": {
        "bad1": {"keys": [{"kid": "a", "alg": "RS256", "file": str(tmp_path / "nope.pem")}]},
        "bad2": {"keys": [{"alg": "HS256", "secret": "k" * 31}]}}}
    rc, out = check_config(tmp_path / "multi.yaml", section, {"provider": "ghost"})
    assert rc != 0, out
    problems = []
    for what in ("bad1", "bad2", "ghost"):
        if not re.search(r"(?m)^\S*multi\.yaml:\d+: .*%s" % what, out):
            problems.append("no `multi.yaml:LINE: ...%s...` line" % what)
    report(["%s; output: %r" % (p, out[-800:]) for p in problems])


# ---- reload (last: they change the module's configuration and put it back) ----

def reload_ok(g, cfg=None):
    cp = g.reload(cfg)
    assert cp.returncode == 0, "reload refused (%d): %s %s" % (cp.returncode, cp.stdout,
                                                              cp.stderr)


def accepted_soon(e, path, token, timeout=3.0):
    def ok():
        return call(e.port, path, token).status == 200
    return wait_for(ok, timeout, "a token of the new key accepted after the reload")


def test_reload_changes_a_static_key(e, keys):
    """rk1.pem rewritten with another P-256 key and the configuration reloaded: tokens of the new
    key are accepted, tokens of the old one refused (also one accepted, and cached, before),
    with the same worker."""
    path = e.files / "rk1.pem"
    old = mint("ES256", keys.priv("rk1"), claims(sub="rk-old"), kid="rk1")
    report(expect_accepted(e, "/rk/x", [("old key", old, "rk-old"),
                                        ("old key again (cache)", old, "rk-old")]))
    pids = e.gw.worker_pids()
    path.write_bytes(keys.pem_bytes("rk1_new"))
    try:
        reload_ok(e.gw)
        new = mint("ES256", keys.priv("rk1_new"), claims(sub="rk-new"), kid="rk1")
        accepted_soon(e, "/rk/x", new)
        problems = expect_accepted(e, "/rk/x", [("new key", new, "rk-new")])
        p, _ = expect_refused(e, "/rk/x", "rk", [
            ("old key, token accepted (cached) before the reload", old),
            ("old key, a new token", mint("ES256", keys.priv("rk1"), kid="rk1"))])
        problems += p
        if e.gw.worker_pids() != pids:
            problems.append("workers changed: %r -> %r" % (pids, e.gw.worker_pids()))
        report(problems)
    finally:
        path.write_bytes(keys.pem_bytes("rk1"))
        reload_ok(e.gw)


def test_reload_removing_a_key_drops_cached_tokens(e, keys):
    """A reload that removes key rk2 (and adds rk3): a token of rk2 accepted twice before (so
    in the verified-token cache) is refused; rk1 still works, rk3 works."""
    tok2 = mint("ES256", keys.priv("rk2"), claims(sub="rk2-user"), kid="rk2")
    tok1 = mint("ES256", keys.priv("rk1"), claims(sub="rk1-user"), kid="rk1")
    report(expect_accepted(e, "/rk/x", [("rk2", tok2, "rk2-user"),
                                        ("rk2 again (cache)", tok2, "rk2-user"),
                                        ("rk1", tok1, "rk1-user")]))
    cfg = copy.deepcopy(e.cfg)
    cfg["jwt"]["providers"]["rk"]["keys"] = [
        {"kid": "rk1", "alg": "ES256", "file": str(e.files / "rk1.pem")},
        {"kid": "rk3", "alg": "EdDSA", "file": str(e.files / "rk3.pem")}]
    try:
        reload_ok(e.gw, cfg)
        tok3 = mint("EdDSA", keys.priv("rk3"), claims(sub="rk3-user"), kid="rk3")
        accepted_soon(e, "/rk/x", tok3)
        p, _ = expect_refused(e, "/rk/x", "rk", [
            ("rk2 token accepted (cached) before its key was removed", tok2),
            ("a new rk2 token", mint("ES256", keys.priv("rk2"), kid="rk2")),
            ("rk2 token without kid", mint("ES256", keys.priv("rk2")))])
        problems = p + expect_accepted(e, "/rk/x", [("rk1 (kept)", tok1, "rk1-user"),
                                                    ("rk3 (added)", tok3, "rk3-user")])
        report(problems)
    finally:
        reload_ok(e.gw, e.cfg)
