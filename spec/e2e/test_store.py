"""The store's API keys and consumers end to end (issue 6, docs/store.md): the `passerelle keys` /
`passerelle consumers` CLI and the built-in key_auth policy, run by ./passerelle against a
recording stub upstream.

- CLI: `keys add` prints the clear key once (list/show only ever show its id); `keys import`
  (with and without --create-consumers); suspend / revoke / activate by id; a key for an unknown
  consumer is refused; the clear key is nowhere in the store's files; the CLI works while the
  gateway runs and a key added is honoured by the next request, without reload.
- key_auth: a valid key reaches the upstream as X-Consumer / X-Key-Id (never the key itself,
  never a client-sent X-Consumer); no key: 401 with WWW-Authenticate; unknown, suspended, revoked
  and expired keys: the same answer, and an info log line naming the reason; `status: 403`; a key
  in a query argument (removed before forwarding); the `anonymous` consumer; a plan listing
  routes and methods refuses the others with 403.

Every test starts its own gateway with its own store directory.
"""
import os
import re
import subprocess
import time


from policyfix import no_worker_crash, route, track, write_policies  # noqa: F401
from gw import BINARY, REPO, Client, config, listener, to_yaml, wait_for

KEY_RE = re.compile(r"^pgw_[A-Za-z0-9_-]{32}$")
INFO_RE = re.compile(r"^([0-9a-f]{12}) consumer=(\S+) status=(\S+) expires=(\S+) created=(\S+)$")


# ---- helpers ----

def store_section(tmp_path):
    return {"dir": str(tmp_path / "store"), "durable_map": "1m", "fast_map": "2m"}


def start(make_gateway, make_stub, tmp_path, routes, **extra):
    """A gateway with a store in <tmp_path>/store, an empty policies dir and one stub "a"."""
    pdir = tmp_path / "policies"
    write_policies(pdir, {})
    a = make_stub("a")
    extra.setdefault("store", store_section(tmp_path))
    cfg = config(listeners=[listener("public")],
                 upstreams={"a": {"targets": [a.address], "retries": 0}},
                 routes=routes, policies={"dir": str(pdir)}, **extra)
    g = make_gateway(cfg)
    track(g)
    return g, a


def cli_config(tmp_path, **extra):
    """A config file for CLI-only tests (no gateway running)."""
    cfg = config(listeners=[listener("public")], store=store_section(tmp_path), **extra)
    path = tmp_path / "cli.yaml"
    path.write_text(to_yaml(cfg) + "\n")
    return path


def run(cfg_path, *args):
    """`passerelle <args> -c <cfg_path>` from the repository root (CompletedProcess, text)."""
    return subprocess.run([str(BINARY)] + list(args) + ["-c", str(cfg_path)], cwd=str(REPO),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)


def ok(cp):
    assert cp.returncode == 0, "%r exited %d; stdout %r stderr %r" % (
        cp.args[1:], cp.returncode, cp.stdout, cp.stderr)
    return cp.stdout


def info_lines(out):
    """{id: (consumer, status, expires)} from CLI key lines."""
    res = {}
    for line in out.strip().split("\n"):
        m = INFO_RE.match(line)
        if m:
            res[m.group(1)] = (m.group(2), m.group(3), m.group(4))
    return res


def add_consumer(cfg_path, name, *opts):
    return ok(run(cfg_path, "consumers", "add", name, *opts))


def add_key(cfg_path, consumer, *opts):
    """`keys add --consumer <consumer>`; returns (clear key, id)."""
    out = ok(run(cfg_path, "keys", "add", "--consumer", consumer, *opts))
    lines = out.strip().split("\n")
    assert len(lines) == 2, "keys add should print the key then its record, got %r" % out
    assert KEY_RE.match(lines[0]), "first line is not a generated key: %r" % lines[0]
    m = INFO_RE.match(lines[1])
    assert m and m.group(2) == consumer and m.group(3) == "active", lines[1]
    return lines[0], m.group(1)


def add_given_key(cfg_path, consumer, key, *opts):
    """`keys add --key <key>`: returns the id (the key itself is not printed back)."""
    out = ok(run(cfg_path, "keys", "add", "--consumer", consumer, "--key", key, *opts))
    assert key not in out, "a key given on the command line is printed back: %r" % out
    ids = info_lines(out)
    assert len(ids) == 1, out
    return next(iter(ids))


def get(port, target="/", headers=None, method="GET"):
    with Client(port) as c:
        c.request(method, target, headers=headers)
        return c.read_response(method)


def store_bytes(tmp_path):
    """Every byte of every file in the store directory, by file name."""
    d = tmp_path / "store"
    out = {}
    for name in sorted(os.listdir(d)):
        with open(d / name, "rb") as f:
            out[name] = f.read()
    return out


def assert_not_in_store(tmp_path, *keys):
    files = store_bytes(tmp_path)
    assert "durable.mdb" in files, "no durable.mdb in the store directory: %r" % list(files)
    for k in keys:
        for name, data in files.items():
            assert k.encode() not in data, "the clear key %r is in %s" % (k, name)


def wait_log(g, pattern, mark=0, timeout=2.0):
    rx = re.compile(pattern)
    return wait_for(lambda: [l for l in g.error_lines()[mark:] if rx.search(l)], timeout,
                    "error-log line matching %r (last lines: %r)" % (pattern, g.error_lines()[-5:]))


def hits(stub, snap):
    return stub.since(snap)[0]


KA = {"key_auth": {}}


# ---- the CLI ----

def test_keys_add_prints_the_key_once_and_list_show_only_the_id(tmp_path):
    cfg = cli_config(tmp_path)
    assert add_consumer(cfg, "alice").startswith("alice plan=- groups=-")
    key, kid = add_key(cfg, "alice")
    assert re.match(r"^[0-9a-f]{12}$", kid), kid
    # list and show give the id, never the key
    out = ok(run(cfg, "keys", "list"))
    assert key not in out
    assert info_lines(out) == {kid: ("alice", "active", "never")}, out
    out = ok(run(cfg, "keys", "show", kid))
    assert key not in out
    assert info_lines(out) == {kid: ("alice", "active", "never")}, out
    # a second add makes another key and another id
    key2, kid2 = add_key(cfg, "alice", "--expires", "1h")
    assert key2 != key and kid2 != kid
    out = ok(run(cfg, "keys", "list", "--consumer", "alice"))
    got = info_lines(out)
    assert set(got) == {kid, kid2} and got[kid2][2] != "never", out
    assert key not in out and key2 not in out
    # the same explicit key twice is refused
    add_given_key(cfg, "alice", "my-own-key-0001")
    cp = run(cfg, "keys", "add", "--consumer", "alice", "--key", "my-own-key-0001")
    assert cp.returncode != 0 and "exists" in cp.stderr, cp
    # nothing in the store files is a clear key
    assert_not_in_store(tmp_path, key, key2, "my-own-key-0001")
    st = os.stat(tmp_path / "store" / "secret")
    assert st.st_size == 32 and st.st_mode & 0o077 == 0, "secret: size %d mode %o" % (
        st.st_size, st.st_mode)


def test_key_for_an_unknown_consumer_is_refused(tmp_path):
    cfg = cli_config(tmp_path)
    cp = run(cfg, "keys", "add", "--consumer", "nobody")
    assert cp.returncode != 0, cp
    assert "nobody" in cp.stderr and "consumer" in cp.stderr, cp.stderr
    assert not KEY_RE.match(cp.stdout.strip().split("\n")[0] if cp.stdout else ""), (
        "a key was printed for a refused add: %r" % cp.stdout)
    assert ok(run(cfg, "keys", "list")).strip() == ""
    # consumers: add twice refused, set/show of an unknown one refused, delete
    add_consumer(cfg, "bob", "--plan", "gold", "--groups", "a,b")
    cp = run(cfg, "consumers", "add", "bob")
    assert cp.returncode != 0 and "exists" in cp.stderr, cp
    assert ok(run(cfg, "consumers", "show", "bob")).strip() == "bob plan=gold groups=a,b"
    for verb in ("show", "set"):
        cp = run(cfg, "consumers", verb, "carol")
        assert cp.returncode != 0 and "carol" in cp.stderr, cp
    cp = run(cfg, "consumers", "add", "bad name!")
    assert cp.returncode != 0, cp
    ok(run(cfg, "consumers", "delete", "bob"))
    assert ok(run(cfg, "consumers", "list")).strip() == ""
    cp = run(cfg, "keys", "add", "--consumer", "bob")
    assert cp.returncode != 0, "a key was added for a deleted consumer: %r" % cp.stdout


def test_keys_import(tmp_path):
    cfg = cli_config(tmp_path)
    add_consumer(cfg, "alice")
    f = tmp_path / "keys.txt"
    f.write_text("# migrated keys\n"
                 "import-key-alice-1 alice\n"
                 "\n"
                 "import-key-carol-1 carol\n"
                 "import-key-alice-2 alice 1h\n")
    cp = run(cfg, "keys", "import", str(f))
    assert cp.returncode != 0, "a refused line must make import fail: %r" % cp
    assert re.search(r"keys\.txt:4: not imported", cp.stderr), cp.stderr
    assert "imported 2 key(s), 1 line(s) refused" in cp.stdout, cp.stdout
    listed = info_lines(ok(run(cfg, "keys", "list")))
    assert sorted(v[0] for v in listed.values()) == ["alice", "alice"], listed
    assert sorted(v[2] == "never" for v in listed.values()) == [False, True], listed
    cp = run(cfg, "consumers", "show", "carol")
    assert cp.returncode != 0, "carol was created without --create-consumers: %r" % cp.stdout

    g = tmp_path / "more.txt"
    g.write_text("import-key-carol-1 carol\nimport-key-dave-01 dave\n")
    out = ok(run(cfg, "keys", "import", str(g), "--create-consumers"))
    assert "imported 2 key(s), 0 line(s) refused" in out, out
    assert ok(run(cfg, "consumers", "show", "carol")).startswith("carol plan=-")
    assert ok(run(cfg, "consumers", "show", "dave")).startswith("dave plan=-")
    listed = info_lines(ok(run(cfg, "keys", "list")))
    assert sorted(v[0] for v in listed.values()) == ["alice", "alice", "carol", "dave"], listed


def test_keys_import_does_not_count_existing_keys_as_imported(tmp_path):
    cfg = cli_config(tmp_path)
    add_consumer(cfg, "alice")
    add_consumer(cfg, "bob")
    f = tmp_path / "keys.txt"
    f.write_text("dup-key-alice-001 alice\n")
    assert "imported 1 key(s), 0 line(s) refused" in ok(run(cfg, "keys", "import", str(f)))
    # the same key again, now for bob: nothing is written (the key stays alice's), so the
    # report must not say it was imported
    f.write_text("dup-key-alice-001 bob\n")
    cp = run(cfg, "keys", "import", str(f))
    assert "imported 0 key(s)" in cp.stdout, (
        "a key that exists already was reported as imported: rc %d stdout %r stderr %r"
        % (cp.returncode, cp.stdout, cp.stderr))
    listed = info_lines(ok(run(cfg, "keys", "list")))
    assert [v[0] for v in listed.values()] == ["alice"], listed


def test_suspend_revoke_activate_by_id(tmp_path):
    cfg = cli_config(tmp_path)
    add_consumer(cfg, "alice")
    key, kid = add_key(cfg, "alice")
    for verb, status in (("suspend", "suspended"), ("activate", "active"),
                         ("revoke", "revoked"), ("activate", "active")):
        out = ok(run(cfg, "keys", verb, kid))
        assert info_lines(out) == {kid: ("alice", status, "never")}, (verb, out)
        assert info_lines(ok(run(cfg, "keys", "show", kid)))[kid][1] == status
    for verb in ("suspend", "revoke", "activate", "show"):
        cp = run(cfg, "keys", verb, "000000000000")
        assert cp.returncode != 0 and "no key with id 000000000000" in cp.stderr, (verb, cp)
        # the clear key is not an id
        cp = run(cfg, "keys", verb, key)
        assert cp.returncode != 0, (verb, cp)
    # delete: the key is gone from list and show, and deleting again is an error
    assert ok(run(cfg, "keys", "delete", kid)).strip() == "%s deleted" % kid
    assert kid not in ok(run(cfg, "keys", "list"))
    cp = run(cfg, "keys", "show", kid)
    assert cp.returncode != 0, cp
    cp = run(cfg, "keys", "delete", kid)
    assert cp.returncode != 0 and "no key with that id" in cp.stderr, cp


def test_cli_while_running_key_works_on_next_request(make_gateway, make_stub, tmp_path):
    g, a = start(make_gateway, make_stub, tmp_path, [route("/k/", [KA])])
    pids = g.wait_workers(1)
    ok(g.cli("consumers", "add", "alice"))
    key = "live-key-000001"
    with Client(g.port) as c:
        c.request(target="/k/1", headers=[("apikey", key)])
        assert c.read_response().status == 401
        out = ok(g.cli("keys", "add", "--consumer", "alice", "--key", key))
        kid = next(iter(info_lines(out)))
        # same keep-alive connection, next request: accepted
        c.request(target="/k/2", headers=[("apikey", key)])
        r = c.read_response()
        assert r.status == 200, r
        assert a.last().header("x-key-id") == kid
        ok(g.cli("keys", "suspend", kid))
        c.request(target="/k/3", headers=[("apikey", key)])
        assert c.read_response().status == 401
        ok(g.cli("keys", "activate", kid))
        c.request(target="/k/4", headers=[("apikey", key)])
        assert c.read_response().status == 200
    # a generated key, on a new connection
    out = ok(g.cli("keys", "add", "--consumer", "alice"))
    key2 = out.split("\n")[0]
    r = get(g.port, "/k/5", [("apikey", key2)])
    assert r.status == 200, r
    assert g.worker_pids() == pids, "the worker changed: keys must not need a reload"
    assert not [l for l in g.error_lines() if "reload" in l.lower()], g.error_lines()
    assert_not_in_store(tmp_path, key, key2)


# ---- key_auth ----

def test_valid_key_sets_identity_and_strips_credentials(make_gateway, make_stub, tmp_path):
    g, a = start(make_gateway, make_stub, tmp_path,
                 [route("/k/", [{"key_auth": {"headers": {"consumer": "X-Consumer",
                                                          "key_id": "X-Key-Id",
                                                          "plan": "X-Plan",
                                                          "groups": "X-Groups"}}}])],
                 plans={"gold": {"rate": {"limit": 100}}})
    ok(g.cli("consumers", "add", "alice", "--plan", "gold", "--groups", "ops,dev"))
    key, kid = add_key(g.config_path, "alice")
    snap = a.snapshot()
    r = get(g.port, "/k/x?a=1", [("apikey", key), ("X-Consumer", "mallory"),
                                 ("x-consumer", "mallory2"), ("X-Key-Id", "forged"),
                                 ("X-Plan", "platinum"), ("X-Groups", "admin")])
    assert r.status == 200, r
    (req,) = hits(a, snap)
    assert req.headers_all("x-consumer") == ["alice"], req.headers
    assert req.headers_all("x-key-id") == [kid], req.headers
    assert req.headers_all("x-plan") == ["gold"], req.headers
    assert req.headers_all("x-groups") == ["ops,dev"], req.headers
    assert req.headers_all("apikey") == [], req.headers
    assert key.encode() not in req.raw, req.raw
    assert req.target == "/k/x?a=1"


def test_forged_identity_without_a_key_is_not_forwarded(make_gateway, make_stub, tmp_path):
    g, a = start(make_gateway, make_stub, tmp_path,
                 [route("/k/", [KA]), route("/anon/", [{"key_auth": {"anonymous": "guest"}}])])
    ok(g.cli("consumers", "add", "guest"))
    snap = a.snapshot()
    r = get(g.port, "/k/x", [("X-Consumer", "alice"), ("X-Key-Id", "000000000000")])
    assert r.status == 401, r
    r = get(g.port, "/anon/x", [("X-Consumer", "alice"), ("X-Key-Id", "000000000000")])
    assert r.status == 200, r
    (req,) = hits(a, snap)
    assert req.headers_all("x-consumer") == ["guest"], req.headers
    assert req.headers_all("x-key-id") == [], req.headers


def test_missing_key_is_401_with_a_challenge(make_gateway, make_stub, tmp_path):
    g, a = start(make_gateway, make_stub, tmp_path,
                 [route("/k/", [KA]),
                  route("/r/", [{"key_auth": {"header": "X-Api-Key", "realm": "shop"}}])])
    snap = a.snapshot()
    r = get(g.port, "/k/x")
    assert r.status == 401, r
    www = r.header("www-authenticate")
    assert www and www.startswith("ApiKey ") and 'realm="passerelle"' in www, r.headers
    assert r.header("content-type") == "application/json"
    assert r.json()["message"]
    r = get(g.port, "/r/x", [("apikey", "whatever-key-1")])  # not the configured header
    assert r.status == 401 and 'realm="shop"' in (r.header("www-authenticate") or ""), r
    # an empty header value is no key either
    r = get(g.port, "/k/x", [("apikey", "")])
    assert r.status == 401, r
    assert hits(a, snap) == [], "the upstream was contacted without a key"


def bad_key_setup(make_gateway, make_stub, tmp_path, conf=None):
    g, a = start(make_gateway, make_stub, tmp_path, [route("/k/", [{"key_auth": conf or {}}])])
    ok(g.cli("consumers", "add", "alice"))
    keys = {}
    for name in ("good", "suspended", "revoked", "expired"):
        opts = ("--expires", "1s") if name == "expired" else ()
        keys[name] = add_key(g.config_path, "alice", *opts)
    ok(g.cli("keys", "suspend", keys["suspended"][1]))
    ok(g.cli("keys", "revoke", keys["revoked"][1]))
    keys["unknown"] = ("pgw_" + "A" * 32, None)
    time.sleep(1.1)  # --expires 1s: the CLI counts from the current whole second
    return g, a, keys


def comparable(r):
    skip = {"date", "x-request-id", "content-length"}
    return (r.status, r.body, sorted((n.lower(), v) for n, v in r.headers
                                     if n.lower() not in skip))


def test_bad_keys_get_one_answer_and_a_reason_in_the_log(make_gateway, make_stub, tmp_path):
    g, a, keys = bad_key_setup(make_gateway, make_stub, tmp_path)
    r = get(g.port, "/k/x", [("apikey", keys["good"][0])])
    assert r.status == 200, r
    mark = g.error_mark()
    snap = a.snapshot()
    answers = {}
    for name in ("unknown", "suspended", "revoked", "expired"):
        r = get(g.port, "/k/x", [("apikey", keys[name][0])])
        answers[name] = comparable(r)
        assert r.status == 401, (name, r)
        assert r.json() == {"message": "invalid API key"}, (name, r.body)
    first = answers["unknown"]
    for name, ans in answers.items():
        assert ans == first, "%s key answered %r, unknown key %r" % (name, ans, first)
    assert hits(a, snap) == [], "a bad key reached the upstream"
    wait_log(g, r"\[info\] .*refused 127\.0\.0\.1: unknown key", mark)
    wait_log(g, r"\[info\] .*refused 127\.0\.0\.1: suspended key %s" % keys["suspended"][1], mark)
    wait_log(g, r"\[info\] .*refused 127\.0\.0\.1: revoked key %s" % keys["revoked"][1], mark)
    wait_log(g, r"\[info\] .*refused 127\.0\.0\.1: expired key %s" % keys["expired"][1], mark)
    text = g.error_text() + g.access_path.read_text(errors="replace")
    for name in keys:
        assert keys[name][0] not in text, "the clear %s key is in the logs" % name


def test_every_401_carries_a_challenge(make_gateway, make_stub, tmp_path):
    """RFC 9110 15.5.2: a server generating a 401 MUST send WWW-Authenticate."""
    g, a, keys = bad_key_setup(make_gateway, make_stub, tmp_path)
    for name in ("unknown", "suspended", "revoked", "expired"):
        r = get(g.port, "/k/x", [("apikey", keys[name][0])])
        assert r.status == 401, (name, r)
        assert r.header("www-authenticate"), (
            "%s key: 401 without WWW-Authenticate: %r" % (name, r.headers))


def test_status_403_for_bad_keys(make_gateway, make_stub, tmp_path):
    g, a, keys = bad_key_setup(make_gateway, make_stub, tmp_path, {"status": 403})
    bodies = set()
    for name in ("unknown", "suspended", "revoked", "expired"):
        r = get(g.port, "/k/x", [("apikey", keys[name][0])])
        assert r.status == 403, (name, r)
        bodies.add(r.body)
    assert len(bodies) == 1, bodies
    r = get(g.port, "/k/x")
    assert r.status == 401 and r.header("www-authenticate"), r  # missing stays 401
    assert get(g.port, "/k/x", [("apikey", keys["good"][0])]).status == 200


def test_key_in_a_query_argument_is_removed(make_gateway, make_stub, tmp_path):
    g, a = start(make_gateway, make_stub, tmp_path,
                 [route("/q/", [{"key_auth": {"header": "", "query": "api_key"}}]),
                  route("/both/", [{"key_auth": {"query": "api_key"}}]),
                  route("/keep/", [{"key_auth": {"query": "api_key",
                                                 "hide_credentials": False}}])])
    ok(g.cli("consumers", "add", "alice"))
    key, kid = add_key(g.config_path, "alice")
    snap = a.snapshot()
    r = get(g.port, "/q/x?a=1&api_key=%s&b=2" % key)
    assert r.status == 200, r
    r = get(g.port, "/both/x?api_key=%s&api_key=%s" % (key, key))
    assert r.status == 200, r
    r = get(g.port, "/both/x?c=3", [("apikey", key)])
    assert r.status == 200, r
    r = get(g.port, "/keep/x?api_key=%s" % key)
    assert r.status == 200, r
    reqs = hits(a, snap)
    assert len(reqs) == 4, reqs
    q, both, hdr, keep = reqs
    assert q.path == "/q/x" and q.query == {"a": "1", "b": "2"}, q.target
    assert key not in q.target and key.encode() not in q.raw, q.raw
    assert q.header("x-consumer") == "alice" and q.header("x-key-id") == kid
    assert "api_key" not in both.target, both.target
    assert hdr.target == "/both/x?c=3" and hdr.header("apikey") is None
    assert keep.query.get("api_key") == key, keep.target
    # header "" means the header is not read
    r = get(g.port, "/q/x", [("apikey", key)])
    assert r.status == 401 and 'query="api_key"' in (r.header("www-authenticate") or ""), r
    r = get(g.port, "/q/x?api_key=nope-nope-nope")
    assert r.status == 401 and r.json() == {"message": "invalid API key"}, r


def test_anonymous_consumer(make_gateway, make_stub, tmp_path):
    g, a = start(make_gateway, make_stub, tmp_path,
                 [route("/anon/", [{"key_auth": {"anonymous": "guest",
                                                 "headers": {"consumer": "X-Consumer",
                                                             "plan": "X-Plan"}}}])],
                 plans={"free": {"rate": {"limit": 10}}})
    ok(g.cli("consumers", "add", "guest", "--plan", "free"))
    ok(g.cli("consumers", "add", "alice"))
    key, kid = add_key(g.config_path, "alice")
    snap = a.snapshot()
    r = get(g.port, "/anon/x")
    assert r.status == 200, r
    r = get(g.port, "/anon/x", [("apikey", key)])
    assert r.status == 200, r
    guest, alice = hits(a, snap)
    assert guest.headers_all("x-consumer") == ["guest"] and guest.header("x-plan") == "free", \
        guest.headers
    assert alice.headers_all("x-consumer") == ["alice"] and alice.header("x-plan") is None, \
        alice.headers
    # anonymous is for a missing key only: a bad key is still refused
    r = get(g.port, "/anon/x", [("apikey", "not-a-real-key-1")])
    assert r.status == 401, r
    assert len(hits(a, snap)) == 2


def test_plan_routes_and_methods(make_gateway, make_stub, tmp_path):
    g, a = start(make_gateway, make_stub, tmp_path,
                 [route("/ro/", [KA], name="ro"), route("/rw/", [KA], name="rw")],
                 plans={"reader": {"routes": ["ro"], "methods": ["GET", "HEAD"]},
                        "writer": {"routes": ["ro", "rw"]}})
    ok(g.cli("consumers", "add", "alice", "--plan", "reader"))
    ok(g.cli("consumers", "add", "bob"))
    ka, _ = add_key(g.config_path, "alice")
    kb, _ = add_key(g.config_path, "bob")
    snap = a.snapshot()
    assert get(g.port, "/ro/x", [("apikey", ka)]).status == 200
    assert get(g.port, "/ro/x", [("apikey", ka)], method="HEAD").status == 200
    for target, method in (("/ro/x", "POST"), ("/ro/x", "DELETE"), ("/rw/x", "GET")):
        r = get(g.port, target, [("apikey", ka)], method=method)
        assert r.status == 403, (target, method, r)
        assert r.json() == {"message": "not allowed by your plan"}, r.body
    assert len(hits(a, snap)) == 2, "a request refused by the plan reached the upstream"
    # no plan: everything allowed
    for target, method in (("/ro/x", "POST"), ("/rw/x", "GET")):
        assert get(g.port, target, [("apikey", kb)], method=method).status == 200
    # the plan changes at run time, without reload
    ok(g.cli("consumers", "set", "alice", "--plan", "writer"))
    assert get(g.port, "/rw/x", [("apikey", ka)], method="POST").status == 200
    ok(g.cli("consumers", "set", "alice", "--plan", ""))
    assert get(g.port, "/rw/x", [("apikey", ka)], method="PUT").status == 200


def test_deleted_consumer_refuses_its_keys(make_gateway, make_stub, tmp_path):
    g, a = start(make_gateway, make_stub, tmp_path, [route("/k/", [KA])])
    ok(g.cli("consumers", "add", "alice"))
    key, kid = add_key(g.config_path, "alice")
    assert get(g.port, "/k/x", [("apikey", key)]).status == 200
    ok(g.cli("consumers", "delete", "alice"))
    mark = g.error_mark()
    r = get(g.port, "/k/x", [("apikey", key)])
    assert r.status == 401 and r.json() == {"message": "invalid API key"}, r
    wait_log(g, r"refused 127\.0\.0\.1: \w+ key %s" % kid, mark)
