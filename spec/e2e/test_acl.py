"""Access control end to end (issue 6): the built-in policies ip_restriction and acl
(lua/pgw/policies/), run by ./passerelle against a recording stub upstream.

- ip_restriction over IPv4 and IPv6: the gateway listens on 127.0.0.1 and [::1] (same port);
  `real_ip` trusts 127.0.0.1, so X-Forwarded-For sent from 127.0.0.1 names other clients, while
  the same header from [::1] (not trusted) is ignored. Allow and deny lists, deny winning, IPv4
  and IPv6 ranges, IPv4-mapped clients; a refusal is 403 with a JSON message, an [info] log line
  naming the address, and nothing sent upstream. A 2,000-entry deny list. A broken list fails
  closed (500, nothing upstream).
- acl against the normalised path: /admin, //admin, /./admin, /x/../admin, /%61dmin,
  /%2e/admin and friends are all /admin; /ADMIN and /administrator are other paths. Rules with
  methods and with groups, the consumer's groups set in pgw.ctx()["consumer.groups"] by a tiny
  policy of the test's own policies directory listed before acl.

Every request is sent twice to the same gateway (state leaking between requests).
"""
import json
import random
import re
import socket

from policyfix import no_worker_crash, route, track, write_policies  # noqa: F401
import subprocess

from gw import BINARY, Client, config, free_port, to_yaml, wait_for
from httpio import Reader


# ---- helpers ----

def start(make_gateway, make_stub, tmp_path, routes, files=None, v6=True, real_ip=True):
    """A gateway listening on 127.0.0.1:P (listener "v4") and, with <v6>, [::1]:P ("v6"), one
    upstream stub "a", `real_ip` trusting 127.0.0.1, policies from <files> in its own dir."""
    pdir = tmp_path / "policies"
    write_policies(pdir, files or {})
    stub = make_stub("a")
    port = free_port()
    listeners = [{"name": "v4", "address": "127.0.0.1:%d" % port}]
    if v6:
        listeners.append({"name": "v6", "address": "[::1]:%d" % port})
    extra = {}
    if real_ip:
        extra["real_ip"] = {"from": "x-forwarded-for", "trusted": ["127.0.0.1"]}
    cfg = config(listeners=listeners,
                 upstreams={"a": {"targets": [stub.address], "retries": 0}},
                 routes=routes, policies={"dir": str(pdir)}, **extra)
    g = make_gateway(cfg)
    track(g)
    return g, stub


def client(port, host="127.0.0.1"):
    """A Client connected to <host>:<port>, IPv6 when <host> has a colon."""
    if ":" not in host:
        return Client(port, host=host)
    c = Client(port, host=host, connect=False)
    c.sock.close()
    c.sock = socket.create_connection((host, port), timeout=5.0)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sock.settimeout(5.0)
    c.reader = Reader(c.sock, 5.0)
    return c


def ask(g, target="/", host="127.0.0.1", xff=None, method="GET", headers=None):
    hdrs = list(headers or [])
    if xff is not None:
        hdrs.append(("X-Forwarded-For", xff))
    with client(g.port, host) as c:
        c.request(method, target, headers=hdrs)
        return c.read_response(method)


def routes_for(policies, listeners=("v4", "v6")):
    return [route("/", policies, name="all", listeners=listeners)]


def wait_log(g, pattern, mark=0, timeout=2.0):
    rx = re.compile(pattern)
    return wait_for(lambda: [l for l in g.error_lines()[mark:] if rx.search(l)], timeout,
                    "error-log line matching %r (last lines: %r)" % (pattern,
                                                                      g.error_lines()[-5:]))[0]


def wait_init_error(g, pattern, timeout=2.0):
    """Waits for an init_worker error matching <pattern> in the error log or on stderr: a new
    worker opens the configured error log only after init_worker ran (worker.c gen_install), so
    for now its lines land on stderr."""
    rx = re.compile(pattern)
    return wait_for(lambda: rx.search(g.error_text()) or rx.search(g.stderr_text()), timeout,
                    "init_worker error matching %r" % pattern)


def check_refused(r, status=403, message="Your IP address is not allowed"):
    assert r.status == status, r
    assert r.header("content-type") == "application/json", r
    assert json.loads(r.body) == {"message": message}, r.body


def run_cases(g, stub, cases, refused_message="Your IP address is not allowed"):
    """<cases>: (target, host, xff, method, headers, expected status, upstream path or None).
    Each is sent twice; a refusal must not reach the upstream, an allowed request must reach it
    with the normalised path."""
    for target, host, xff, method, headers, want, up_path in cases:
        for attempt in (1, 2):
            snap = stub.snapshot()
            r = ask(g, target, host=host, xff=xff, method=method, headers=headers)
            what = "%s %s from %s xff=%s (attempt %d)" % (method, target, host, xff, attempt)
            assert r.status == want, (what, r.status, r.body)
            got = stub.since(snap)[0]
            if want == 200:
                assert len(got) == 1, what
                assert got[0].path == up_path, (what, got[0].path)
            else:
                assert got == [], what
                assert r.header("content-type") == "application/json", what
                if method != "HEAD":
                    assert json.loads(r.body) == {"message": refused_message}, (what, r.body)
    g.assert_no_error()


# ---- ip_restriction ----

ALLOW_DENY = {"ip_restriction": {"allow": ["10.0.0.0/8", "2001:db8::/32", "::1"],
                                 "deny": ["10.9.0.0/16", "2001:db8:bad::/48"]}}


def test_ip_restriction_allow_and_deny_over_ipv4_and_ipv6(make_gateway, make_stub, tmp_path):
    g, stub = start(make_gateway, make_stub, tmp_path, routes_for([ALLOW_DENY]))
    V4, V6 = "127.0.0.1", "::1"
    cases = [
        # (target, peer, X-Forwarded-For, method, headers, status, upstream path)
        ("/r", V4, None, "GET", None, 403, None),              # 127.0.0.1 itself: not allowed
        ("/r", V4, "10.1.2.3", "GET", None, 200, "/r"),
        ("/r", V4, "10.255.255.255", "GET", None, 200, "/r"),
        ("/r", V4, "10.9.1.1", "GET", None, 403, None),        # deny wins over allow
        ("/r", V4, "11.0.0.1", "GET", None, 403, None),
        ("/r", V4, "192.0.2.1", "POST", None, 403, None),
        ("/r", V4, "2001:db8::7", "GET", None, 200, "/r"),
        ("/r", V4, "2001:DB8:ffff::1", "GET", None, 200, "/r"),
        ("/r", V4, "2001:db8:bad::7", "GET", None, 403, None),
        ("/r", V4, "2001:db9::1", "GET", None, 403, None),
        ("/r", V4, "::ffff:10.1.2.3", "GET", None, 200, "/r"),   # IPv4-mapped: the IPv4 client
        ("/r", V4, "::ffff:10.9.0.1", "GET", None, 403, None),
        ("/r", V4, "192.0.2.1, 10.1.2.3", "GET", None, 200, "/r"),  # rightmost untrusted
        ("/r", V4, "10.1.2.3, 192.0.2.1", "GET", None, 403, None),
        ("/r", V6, None, "GET", None, 200, "/r"),              # ::1 is allowed
        ("/r", V6, "192.0.2.1", "GET", None, 200, "/r"),       # [::1] is not trusted: XFF ignored
        ("/r", V6, "10.1.2.3", "HEAD", None, 200, "/r"),
    ]
    run_cases(g, stub, cases)


def test_ip_restriction_logs_the_refused_address(make_gateway, make_stub, tmp_path):
    g, stub = start(make_gateway, make_stub, tmp_path, routes_for([ALLOW_DENY]))
    mark = g.error_mark()
    r = ask(g, "/x", xff="10.9.8.7")
    check_refused(r)
    rid = r.header("x-request-id")
    line = wait_log(g, r"policy ip_restriction: stage access: request %s: " % rid, mark)
    assert "[info]" in line and line.endswith("refused client 10.9.8.7: in the deny list"), line
    r = ask(g, "/x", xff="2001:db8:1::2")
    assert r.status == 200
    r = ask(g, "/x", xff="2001:db9::2")
    check_refused(r)
    line = wait_log(g, r"request %s: refused client 2001:db9::2: not in the allow list"
                    % r.header("x-request-id"), mark)
    assert "[info]" in line, line
    # the access log shows the answer with termination ok
    e = g.access_for(r.header("x-request-id"))
    assert e["status"] == 403, e
    g.assert_no_error()


def test_ip_restriction_deny_only_with_status_and_message(make_gateway, make_stub, tmp_path):
    conf = {"ip_restriction": {"deny": ["::1", "203.0.113.0/24"], "status": 401,
                               "message": "go away"}}
    g, stub = start(make_gateway, make_stub, tmp_path, routes_for([conf]))
    cases = [
        ("/d", "::1", None, "GET", None, 401, None),
        ("/d", "127.0.0.1", None, "GET", None, 200, "/d"),
        ("/d", "127.0.0.1", "203.0.113.99", "GET", None, 401, None),
        ("/d", "127.0.0.1", "203.0.114.1", "GET", None, 200, "/d"),
        ("/d", "127.0.0.1", "::ffff:203.0.113.1", "GET", None, 401, None),
        ("/d", "127.0.0.1", "::2", "GET", None, 200, "/d"),
    ]
    run_cases(g, stub, cases, refused_message="go away")


def test_ip_restriction_on_a_listener_without_real_ip(make_gateway, make_stub, tmp_path):
    """Without real_ip the client is the TCP peer, whatever X-Forwarded-For says; a listener's
    policy covers every route of that listener."""
    pdir = tmp_path / "policies"
    write_policies(pdir, {})
    stub = make_stub("a")
    port = free_port()
    cfg = config(listeners=[{"name": "v4", "address": "127.0.0.1:%d" % port,
                             "policies": [{"ip_restriction": {"allow": ["::1"]}}]},
                            {"name": "v6", "address": "[::1]:%d" % port,
                             "policies": [{"ip_restriction": {"allow": ["::1"]}}]}],
                 upstreams={"a": {"targets": [stub.address], "retries": 0}},
                 routes=[route("/a/", listeners=("v4", "v6")),
                         route("/b", listeners=("v4", "v6"))],
                 policies={"dir": str(pdir)})
    g = track(make_gateway(cfg))
    cases = [
        ("/a/1", "127.0.0.1", None, "GET", None, 403, None),
        ("/b", "127.0.0.1", "::1", "GET", None, 403, None),   # XFF is not trusted
        ("/a/1", "::1", None, "GET", None, 200, "/a/1"),
        ("/b", "::1", "10.0.0.1", "GET", None, 200, "/b"),
    ]
    run_cases(g, stub, cases)


def test_ip_restriction_with_a_2000_entry_deny_list(make_gateway, make_stub, tmp_path):
    rng = random.Random(6)
    v4 = ["198.%d.%d.0/24" % (18 + i // 256, i % 256) for i in range(0, 512, 2)]  # every other
    v4 += ["100.64.%d.%d" % (i // 256, i % 256) for i in range(0, 1488, 2)]        # single hosts
    v6 = ["2001:db8:%x::/48" % i for i in range(0, 1000, 1)]
    deny = v4[:1000] + v6
    assert len(deny) == 2000
    rng.shuffle(deny)
    g, stub = start(make_gateway, make_stub, tmp_path,
                    routes_for([{"ip_restriction": {"deny": deny}}]))
    cases = []
    for i in rng.sample(range(0, 512, 2), 10):           # listed /24s: refused
        cases.append(("/l", "127.0.0.1", "198.%d.%d.%d" % (18 + i // 256, i % 256,
                                                            rng.randrange(256)),
                      "GET", None, 403, None))
    for i in rng.sample(range(1, 512, 2), 10):           # the /24s between them: allowed
        cases.append(("/l", "127.0.0.1", "198.%d.%d.7" % (18 + i // 256, i % 256),
                      "GET", None, 200, "/l"))
    hosts = [e for e in deny if e.startswith("100.64.")]
    for h in rng.sample(hosts, 5):
        a, b, c, d = map(int, h.split("."))
        cases.append(("/l", "127.0.0.1", h, "GET", None, 403, None))
        cases.append(("/l", "127.0.0.1", "%d.%d.%d.%d" % (a, b, c, d + 1), "GET", None, 200, "/l"))
    for i in rng.sample(range(1000), 10):
        cases.append(("/l", "127.0.0.1", "2001:db8:%x::%x" % (i, rng.randrange(1 << 16)),
                      "GET", None, 403, None))
    for i in (1000, 1001, 0xffff):
        cases.append(("/l", "127.0.0.1", "2001:db8:%x::1" % i, "GET", None, 200, "/l"))
    cases.append(("/l", "::1", None, "GET", None, 200, "/l"))
    cases.append(("/l", "127.0.0.1", None, "GET", None, 200, "/l"))
    cases.append(("/l", "127.0.0.1", "::ffff:198.18.0.1", "GET", None, 403, None))
    run_cases(g, stub, cases)


def check_refuses(tmp_path, routes, files=None):
    """`passerelle check` on a config with <routes>: returns its stderr, which must name the
    config file and line (the policy's check_conf runs when the configuration is loaded)."""
    pdir = tmp_path / "policies"
    write_policies(pdir, files or {})
    cfg = config(listeners=[{"name": "v4", "address": "127.0.0.1:%d" % free_port()}],
                 upstreams={"a": {"targets": ["127.0.0.1:9"], "retries": 0}},
                 routes=routes, policies={"dir": str(pdir)})
    path = tmp_path / "check.yaml"
    path.write_text(to_yaml(cfg))
    r = subprocess.run([str(BINARY), "check", "-c", str(path)], capture_output=True, text=True)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert re.search(r"%s:\d+: " % re.escape(str(path)), r.stderr), r.stderr
    return r.stderr


def test_ip_restriction_with_an_invalid_list_is_a_config_error(tmp_path):
    """The schema cannot check CIDRs; the policy's check_conf does, when the config loads: the
    gateway never starts (or reloads) with a list that would let traffic through."""
    err = check_refuses(tmp_path, routes_for([{"ip_restriction": {"deny": ["10.0.0.0/8",
                                                                           "10.0.0.0/33"]}}],
                                             listeners=("v4",)))
    assert re.search(r"ip_restriction\.deny: invalid CIDR \"10\.0\.0\.0/33\" \(item 2\)",
                     err), err


# ---- acl ----

GROUPS = """
-- sets the consumer's groups from X-Groups (comma-separated), as an auth policy would
local pgw = require "pgw"
return {
    access = function(conf, req)
        local h = pgw.req.get_header("X-Groups")
        if h ~= nil then
            local groups = {}
            for name in h:gmatch("[^,%s]+") do
                groups[#groups + 1] = name
            end
            pgw.ctx()["consumer.groups"] = groups
        end
    end,
}
"""

ACL = {"acl": {"rules": [
    {"path": "/admin/", "methods": ["GET", "HEAD"], "groups": ["auditors"], "action": "allow"},
    {"path": "/admin/", "groups": ["admins"], "action": "allow"},
    {"path": "/admin/", "action": "deny"},
    {"path": "/secret", "action": "deny"},
]}}

# Spellings of /admin (and /admin/) that the gateway normalises to it (docs/http.md,
# gateway/route.h), with the path the upstream receives.
ADMIN_VARIANTS = [("/admin", "/admin"), ("//admin", "/admin"), ("/./admin", "/admin"),
                  ("/x/../admin", "/admin"), ("/%61dmin", "/admin"), ("/adm%69n", "/admin"),
                  ("/%2e/admin", "/admin"), ("/x/%2E%2E/admin", "/admin"),
                  ("/../admin", "/admin"), ("///admin/", "/admin/"), ("/admin/.", "/admin/"),
                  ("/admin/x/..", "/admin/")]
ADMIN_BELOW = [("/admin/users", "/admin/users"), ("//admin//users", "/admin/users"),
               ("/%61dmin/users/./", "/admin/users/"), ("/admin/a/../users", "/admin/users")]


def acl_gateway(make_gateway, make_stub, tmp_path, acl=ACL):
    return start(make_gateway, make_stub, tmp_path, routes_for(["groups", acl], listeners=("v4",)),
                 files={"groups": GROUPS}, v6=False, real_ip=False)


def test_acl_every_spelling_of_admin_is_the_same_path(make_gateway, make_stub, tmp_path):
    g, stub = acl_gateway(make_gateway, make_stub, tmp_path)
    L = "127.0.0.1"
    admins, auditors = [("X-Groups", "admins")], [("X-Groups", "users, auditors")]
    cases = []
    for t, up in ADMIN_VARIANTS:
        cases += [
            (t, L, None, "GET", None, 403, None),               # no groups: rule 3
            (t, L, None, "GET", [("X-Groups", "users")], 403, None),
            (t, L, None, "DELETE", admins, 200, up),          # rule 2
            (t, L, None, "GET", auditors, 200, up),           # rule 1
            (t, L, None, "HEAD", auditors, 200, up),
            (t, L, None, "POST", auditors, 403, None),        # rule 1 skipped: rule 3
        ]
    for t, up in ADMIN_BELOW:
        cases += [
            (t, L, None, "GET", None, 403, None),
            (t, L, None, "PUT", admins, 200, up),
            (t, L, None, "PUT", auditors, 403, None),
        ]
    run_cases(g, stub, cases, refused_message="Forbidden")


def test_acl_other_paths_are_not_admin(make_gateway, make_stub, tmp_path):
    g, stub = acl_gateway(make_gateway, make_stub, tmp_path)
    L = "127.0.0.1"
    cases = [
        ("/ADMIN", L, None, "GET", None, 200, "/ADMIN"),       # paths are case-sensitive
        ("/Admin/users", L, None, "POST", None, 200, "/Admin/users"),
        ("/administrator", L, None, "GET", None, 200, "/administrator"),
        ("/admin-x", L, None, "GET", None, 200, "/admin-x"),
        ("/x/admin", L, None, "GET", None, 200, "/x/admin"),
        ("/", L, None, "GET", None, 200, "/"),
        ("/secret", L, None, "GET", None, 403, None),          # exact rule
        ("/./secret", L, None, "GET", None, 403, None),
        ("/%73ecret", L, None, "GET", None, 403, None),
        ("/secret/", L, None, "GET", None, 200, "/secret/"),   # exact: not a prefix
        ("/secrets", L, None, "GET", None, 200, "/secrets"),
        ("/secret/x", L, None, "GET", None, 200, "/secret/x"),
    ]
    run_cases(g, stub, cases, refused_message="Forbidden")


def test_acl_logs_the_refusal(make_gateway, make_stub, tmp_path):
    g, stub = acl_gateway(make_gateway, make_stub, tmp_path)
    mark = g.error_mark()
    r = ask(g, "/x/../admin/users", method="POST", headers=[("X-Groups", "auditors")])
    assert r.status == 403, r
    line = wait_log(g, r"policy acl: stage access: request %s: denied POST /admin/users \(rule 3\)$"
                    % r.header("x-request-id"), mark)
    assert "[info]" in line, line
    g.assert_no_error()


def test_acl_default_deny_with_status_and_message(make_gateway, make_stub, tmp_path):
    acl = {"acl": {"rules": [{"path": "/public/", "action": "allow"},
                             {"path": "/", "methods": ["GET"], "groups": ["staff"],
                              "action": "allow"}],
                   "default": "deny", "status": 404, "message": "Not Found"}}
    g, stub = acl_gateway(make_gateway, make_stub, tmp_path, acl=acl)
    L, staff = "127.0.0.1", [("X-Groups", "staff")]
    cases = [
        ("/public", L, None, "POST", None, 200, "/public"),
        ("/public/a/../b", L, None, "DELETE", None, 200, "/public/b"),
        ("/%70ublic/x", L, None, "GET", None, 200, "/public/x"),
        ("/publicity", L, None, "GET", None, 404, None),
        ("/private", L, None, "GET", None, 404, None),
        ("/private", L, None, "GET", staff, 200, "/private"),
        ("/private", L, None, "POST", staff, 404, None),
        ("/public/../private", L, None, "GET", None, 404, None),
    ]
    run_cases(g, stub, cases, refused_message="Not Found")


def test_acl_rule_path_not_normalised_is_a_config_error(tmp_path):
    acl = {"acl": {"rules": [{"path": "//admin/", "action": "deny"}]}}
    err = check_refuses(tmp_path, routes_for([acl], listeners=("v4",)))
    assert re.search(r"acl\.rules\[1\]\.path: must not contain \"//\"", err), err
