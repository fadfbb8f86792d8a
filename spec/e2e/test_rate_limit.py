"""The built-in rate_limit policy end to end (issue 6, docs/store.md), counted in the store's
fast LMDB environment, run by ./passerelle against a recording stub upstream.

- Exactness: many concurrent clients (keep-alive and new connections) spread over two workers
  against a limit of L per fixed window see exactly L successes and the rest 429; the counts
  survive a restart of the gateway on the same store (the same window still refuses).
- Headers: RateLimit-Limit / -Remaining / -Reset and X-RateLimit-Limit / -Remaining on every
  answer, Retry-After and a JSON body naming the reset on a 429.
- Identities: by ip, header and route; scope global (shared between routes) and route.
- GCRA with burst: burst + 1 at once, then refused, one more after the period.
- Quotas per UTC day and month: refused with 429 and the next period's start as reset.
- Plans: `plan: true` takes the consumer's plan, and `passerelle consumers set --plan` changes
  the limit at once, without restart or reload.
- on_store_error: a full fast map answers 503 (deny) or lets the request through (allow); the
  map-full error is logged once per interval, not per request.
"""
import calendar
import re
import subprocess
import threading
import time

from policyfix import no_worker_crash, route, track, write_policies  # noqa: F401
from gw import BINARY, REPO, Client, config, connect_on_worker, listener, to_yaml



def ok(cp):
    assert cp.returncode == 0, "%r exited %d; stdout %r stderr %r" % (
        cp.args[1:], cp.returncode, cp.stdout, cp.stderr)
    return cp.stdout


def add_key(cfg_path, consumer):
    """`passerelle keys add --consumer <consumer>`: returns (clear key, id)."""
    out = ok(subprocess.run([str(BINARY), "keys", "add", "--consumer", consumer, "-c",
                             str(cfg_path)], cwd=str(REPO), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=10))
    key, info = out.strip().split("\n")
    return key, info.split(" ", 1)[0]


# ---- helpers ----

def start(make_gateway, make_stub, tmp_path, routes, files=None, store=None, **extra):
    pdir = tmp_path / "policies"
    write_policies(pdir, files or {})
    a = make_stub("a")
    st = {"dir": str(tmp_path / "store"), "durable_map": "1m", "fast_map": "4m"}
    st.update(store or {})
    cfg = config(listeners=[listener("public")],
                 upstreams={"a": {"targets": [a.address], "retries": 0}},
                 routes=routes, policies={"dir": str(pdir)}, store=st, **extra)
    g = make_gateway(cfg)
    track(g)
    return g, a


def get(port, target="/", headers=None, method="GET", source=None):
    c = Client(port, connect=source is None)
    try:
        if source is not None:
            c.sock.bind((source, 0))
            c.sock.connect(("127.0.0.1", port))
        c.request(method, target, headers=headers)
        return c.read_response(method)
    finally:
        c.close()


def rl(**conf):
    return {"rate_limit": conf}


def window_bounds(window, t=None):
    t = time.time() if t is None else t
    start = t - t % window
    return int(start), int(start + window)


def avoid_boundary(window, need):
    """Sleeps into the next window when fewer than <need> seconds are left in this one (windows
    are aligned to multiples of their length on the wall clock). Returns the window's end."""
    t = time.time()
    left = window - t % window
    if left < need:
        time.sleep(left + 0.05)
    return window_bounds(window)[1]


def next_midnight(t):
    return int(t - t % 86400 + 86400)


def next_month(t):
    tm = time.gmtime(t)
    y, m = (tm.tm_year + 1, 1) if tm.tm_mon == 12 else (tm.tm_year, tm.tm_mon + 1)
    return calendar.timegm((y, m, 1, 0, 0, 0))


def hits(stub, snap):
    return stub.since(snap)[0]


def int_header(r, name):
    v = r.header(name)
    assert v is not None and re.match(r"^\d+$", v), "%s: %r in %r" % (name, v, r.headers)
    return int(v)


# ---- exactness ----

def test_exactly_the_limit_across_two_workers_and_a_restart(make_gateway, make_stub, tmp_path):
    L, WINDOW = 50, 10
    g, a = start(make_gateway, make_stub, tmp_path,
                 [route("/rl/", [rl(by="route", limit=L, window="%ds" % WINDOW)]),
                  route("/free/")],
                 workers=2)
    pids = g.wait_workers(2)

    # keep-alive connections held by each worker (each opened while the other is stopped)
    by_worker = {p: [] for p in pids}
    for p in pids:
        for _ in range(6):
            c = connect_on_worker(g.port, p, pids, lambda: Client(g.port))
            c.request(target="/free/x")
            assert c.read_response().status == 200
            by_worker[p].append(c)
    keep = [(p, c) for p, cs in by_worker.items() for c in cs]

    NEW_THREADS, PER_KEEP, PER_NEW = 8, 12, 6
    total = len(keep) * PER_KEEP + NEW_THREADS * PER_NEW
    statuses = []
    served = {p: 0 for p in pids}
    errors = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(keep) + NEW_THREADS)

    def keepalive_thread(pid, c):
        try:
            barrier.wait(10)
            for i in range(PER_KEEP):
                c.request(target="/rl/k?i=%d" % i)
                r = c.read_response()
                with lock:
                    statuses.append(r.status)
                    served[pid] += 1
                if r.has_close():
                    with lock:
                        errors.append("a %d closed the keep-alive connection" % r.status)
                    return
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append("keep-alive: %s: %s" % (type(e).__name__, e))

    def new_conn_thread():
        try:
            barrier.wait(10)
            for i in range(PER_NEW):
                r = get(g.port, "/rl/n?i=%d" % i, [("Connection", "close")])
                with lock:
                    statuses.append(r.status)
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append("new connection: %s: %s" % (type(e).__name__, e))

    end = avoid_boundary(WINDOW, WINDOW - 3.5)  # at least 6.5 s of this window left
    snap = a.snapshot()
    threads = [threading.Thread(target=keepalive_thread, args=pc) for pc in keep]
    threads += [threading.Thread(target=new_conn_thread) for _ in range(NEW_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for _, c in keep:
        c.close()
    t_done = time.time()
    assert not errors, errors[:5]
    assert t_done < end, "the run left its window (%.2f s late): too slow to judge" % (t_done - end)
    assert len(statuses) == total
    n200, n429 = statuses.count(200), statuses.count(429)
    assert (n200, n429) == (L, total - L), (
        "%d requests against a limit of %d in one window: %d x 200, %d x 429, others %r"
        % (total, L, n200, n429, sorted(s for s in statuses if s not in (200, 429))))
    assert len(hits(a, snap)) == L, "the upstream saw %d requests" % len(hits(a, snap))
    assert all(served.values()), "a worker served no limited request: %r" % served

    # restart on the same store: the same window still refuses
    g.stop()
    g.start()
    g.wait_workers(2)
    for i in range(6):
        r = get(g.port, "/rl/after?i=%d" % i)
        assert r.status == 429, ("after a restart, in the same window, request %d got %r"
                                 % (i, r))
        assert r.header("ratelimit-remaining") == "0", r.headers
    assert time.time() < end, "the window ended during the restart: too slow to judge"
    assert len(hits(a, snap)) == L
    # and the next window admits again
    time.sleep(max(0, end - time.time()) + 0.05)
    assert get(g.port, "/rl/next").status == 200


# ---- headers ----

def test_headers_and_the_429(make_gateway, make_stub, tmp_path):
    g, a = start(make_gateway, make_stub, tmp_path,
                 [route("/h/", [rl(by="ip", limit=3, window="1h")]),
                  route("/quiet/", [rl(by="ip", limit=1, window="1h", headers=False)])])
    end = avoid_boundary(3600, 10)
    for i in range(3):
        r = get(g.port, "/h/x")
        assert r.status == 200, r
        assert r.header("ratelimit-limit") == "3", r.headers
        assert r.header("ratelimit-remaining") == str(2 - i), r.headers
        assert r.header("x-ratelimit-limit") == "3", r.headers
        assert r.header("x-ratelimit-remaining") == str(2 - i), r.headers
        reset = int_header(r, "ratelimit-reset")
        assert abs(reset - (end - time.time())) <= 2, (reset, end - time.time())
    snap = a.snapshot()
    r = get(g.port, "/h/x")
    assert r.status == 429, r
    assert hits(a, snap) == [], "a refused request reached the upstream"
    assert r.header("content-type") == "application/json"
    body = r.json()
    assert body == {"message": "rate limit exceeded", "reset": end}, body
    retry = int_header(r, "retry-after")
    assert abs(retry - (end - time.time())) <= 2, (retry, end - time.time())
    assert r.header("ratelimit-limit") == "3" and r.header("ratelimit-remaining") == "0"
    assert r.header("x-ratelimit-limit") == "3" and r.header("x-ratelimit-remaining") == "0"
    assert abs(int_header(r, "ratelimit-reset") - (end - time.time())) <= 2
    # headers: false still limits, silently
    r = get(g.port, "/quiet/x")
    assert r.status == 200 and not [n for n, _ in r.headers if "ratelimit" in n.lower()], r
    r = get(g.port, "/quiet/x")
    assert r.status == 429 and r.header("retry-after"), r
    quiet = {"ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "x-ratelimit-limit",
             "x-ratelimit-remaining"}
    assert not [n for n, _ in r.headers if n.lower() in quiet], r


# ---- identities ----

def test_by_ip_header_and_route(make_gateway, make_stub, tmp_path):
    two = dict(limit=2, window="1h")
    g, a = start(make_gateway, make_stub, tmp_path,
                 [route("/ip/", [rl(by="ip", **two)]),
                  route("/hdr/", [rl(by="header", header_name="X-Tenant", **two)]),
                  route("/r1/", [rl(by="route", **two)]),
                  route("/r2/", [rl(by="route", **two)]),
                  route("/g1/", [rl(by="header", header_name="X-Who", limit=3, window="1h")]),
                  route("/g2/", [rl(by="header", header_name="X-Who", limit=3, window="1h")]),
                  route("/s1/", [rl(by="header", header_name="X-Who", limit=3, window="1h",
                                    scope="route")]),
                  route("/s2/", [rl(by="header", header_name="X-Who", limit=3, window="1h",
                                    scope="route")])])
    avoid_boundary(3600, 10)

    def statuses(target, n, headers=None, source=None):
        return [get(g.port, target, headers, source=source).status for _ in range(n)]

    assert statuses("/ip/x", 3) == [200, 200, 429]
    assert statuses("/ip/x", 3, source="127.0.0.2") == [200, 200, 429], "by ip: another address"
    assert statuses("/hdr/x", 3, [("X-Tenant", "a")]) == [200, 200, 429]
    assert statuses("/hdr/x", 2, [("X-Tenant", "b")]) == [200, 200], "by header: another value"
    assert statuses("/r1/x", 3) == [200, 200, 429]
    assert statuses("/r1/x", 1, source="127.0.0.2") == [429], "by route: every client shares it"
    assert statuses("/r2/x", 2) == [200, 200], "by route: another route has its own count"
    # scope global: two routes with the same numbers share one count per identity
    w = [("X-Who", "w")]
    assert statuses("/g1/x", 2, w) + statuses("/g2/x", 2, w) == [200, 200, 200, 429]
    # scope route: each route counts on its own
    assert statuses("/s1/x", 3, w) + statuses("/s2/x", 4, w) == [200] * 3 + [200] * 3 + [429]


# ---- GCRA ----

def test_gcra_burst(make_gateway, make_stub, tmp_path):
    g, a = start(make_gateway, make_stub, tmp_path,
                 [route("/g/", [rl(by="ip", algorithm="gcra", limit=1, window="1s", burst=2)])])
    got = [get(g.port, "/g/x") for _ in range(4)]
    assert [r.status for r in got] == [200, 200, 200, 429], [r.status for r in got]
    r = got[3]
    assert int_header(r, "retry-after") == 1, r.headers
    assert r.header("ratelimit-remaining") == "0"
    assert got[0].header("ratelimit-limit") == "1", got[0].headers
    rem = [int_header(x, "ratelimit-remaining") for x in got[:3]]
    assert rem == sorted(rem, reverse=True) and rem[-1] == 0, rem
    time.sleep(1.05)
    r = get(g.port, "/g/x")
    assert r.status == 200, "one more after the period: %r" % r
    r = get(g.port, "/g/x")
    assert r.status == 429, "only one more after one period: %r" % r


# ---- quotas ----

def test_quota_per_day_and_month(make_gateway, make_stub, tmp_path):
    g, a = start(make_gateway, make_stub, tmp_path,
                 [route("/d/", [rl(by="ip", limit=1000, window="1m",
                                   quota={"limit": 3, "per": "day"})]),
                  route("/m/", [rl(by="ip", limit=1000, window="1m",
                                   quota={"limit": 1, "per": "month"})])])
    avoid_boundary(86400, 10)
    for i in range(3):
        r = get(g.port, "/d/x")
        assert r.status == 200, (i, r)
    snap = a.snapshot()
    r = get(g.port, "/d/x")
    t = time.time()
    assert r.status == 429, r
    assert hits(a, snap) == []
    assert r.json() == {"message": "quota exceeded", "reset": next_midnight(t)}, r.body
    assert abs(int_header(r, "retry-after") - (next_midnight(t) - t)) <= 2, r.headers
    assert r.header("ratelimit-limit") == "3" and r.header("ratelimit-remaining") == "0", \
        r.headers
    assert abs(int_header(r, "ratelimit-reset") - (next_midnight(t) - t)) <= 2, r.headers
    assert get(g.port, "/d/x", source="127.0.0.2").status == 200, "the quota is per client"

    assert get(g.port, "/m/x").status == 200
    r = get(g.port, "/m/x")
    t = time.time()
    assert r.status == 429, r
    assert r.json() == {"message": "quota exceeded", "reset": next_month(t)}, r.body


def test_quota_headers_report_the_tightest_limit(make_gateway, make_stub, tmp_path):
    """With a rate of 1000/min and a quota of 2/day, the answer that uses the last of the quota
    must not announce 998 requests left (RateLimit headers: the policy closest to its limit)."""
    g, a = start(make_gateway, make_stub, tmp_path,
                 [route("/d/", [rl(by="ip", limit=1000, window="1m",
                                   quota={"limit": 2, "per": "day"})])])
    avoid_boundary(86400, 10)
    get(g.port, "/d/x")
    r = get(g.port, "/d/x")
    assert r.status == 200, r
    assert (r.header("ratelimit-limit"), r.header("ratelimit-remaining")) == ("2", "0"), (
        "the request that used the last of a 2/day quota announced limit %s remaining %s"
        % (r.header("ratelimit-limit"), r.header("ratelimit-remaining")))


# ---- plans ----

def test_plans_switched_at_run_time(make_gateway, make_stub, tmp_path):
    g, a = start(make_gateway, make_stub, tmp_path,
                 [route("/p/", [{"key_auth": {}},
                                rl(by="consumer", plan=True, limit=100, window="1h")])],
                 plans={"basic": {"rate": {"limit": 2, "per": "1h"}},
                        "premium": {"rate": {"limit": 4, "per": "1h"}},
                        "daily": {"quota": {"limit": 1, "per": "day"}}})
    pids = g.wait_workers(1)
    avoid_boundary(3600, 10)
    ok(g.cli("consumers", "add", "alice", "--plan", "basic"))
    ok(g.cli("consumers", "add", "bob"))
    ka, _ = add_key(g.config_path, "alice")
    kb, _ = add_key(g.config_path, "bob")
    h = [("apikey", ka)]
    got = [get(g.port, "/p/x", h) for _ in range(3)]
    assert [r.status for r in got] == [200, 200, 429], [r.status for r in got]
    assert got[0].header("ratelimit-limit") == "2", got[0].headers
    r = get(g.port, "/p/x", [("apikey", kb)])
    assert r.status == 200 and r.header("ratelimit-limit") == "100", ("no plan: the route's", r)

    ok(g.cli("consumers", "set", "alice", "--plan", "premium"))
    r = get(g.port, "/p/x", h)
    assert r.status == 200, "after consumers set --plan premium: %r" % r
    assert r.header("ratelimit-limit") == "4", r.headers
    ok(g.cli("consumers", "set", "alice", "--plan", "basic"))
    assert get(g.port, "/p/x", h).status == 429, "back on basic: its window is used up"

    # a plan with only a quota keeps the route's rate and adds the quota; the headers show the
    # tightest of the two (the quota, now used up)
    ok(g.cli("consumers", "set", "alice", "--plan", "daily"))
    r = get(g.port, "/p/x", h)
    assert r.status == 200 and r.header("ratelimit-limit") == "1", r
    assert r.header("ratelimit-remaining") == "0", r
    r = get(g.port, "/p/x", h)
    assert r.status == 429 and r.json()["message"] == "quota exceeded", r
    assert g.worker_pids() == pids, "the worker changed: a plan change must not need a restart"
    assert not [l for l in g.error_lines() if "reload" in l.lower()]


# ---- store errors ----

FILLER = """
local pgw = require "pgw"
return {
    access = function(conf)
        local size, n, last = 60000, 0, nil
        while size >= 8 do
            n = n + 1
            local ok, err = pgw.store.set("fill" .. n, string.rep("x", size))
            if not ok then
                last = err
                size = math.floor(size / 2)
            end
        end
        return pgw.exit(200, '{"entries":' .. n .. ',"error":"' .. tostring(last) .. '"}\\n',
                        { ["Content-Type"] = "application/json" })
    end,
}
"""


def test_full_store_deny_or_allow_and_one_log_line(make_gateway, make_stub, tmp_path):
    g, a = start(make_gateway, make_stub, tmp_path,
                 [route("/fill/", [{"filler": {}}]),
                  route("/deny/", [rl(by="header", header_name="X-Id", limit=100, window="1h",
                                      on_store_error="deny")]),
                  route("/allow/", [rl(by="header", header_name="X-Id", limit=100, window="1h",
                                       on_store_error="allow")])],
                 files={"filler": FILLER}, store={"fast_map": "1m"})
    assert get(g.port, "/deny/x", [("X-Id", "before")]).status == 200, "the store works at first"
    mark = g.error_mark()
    r = get(g.port, "/fill/")
    assert r.status == 200, r
    filled = r.json()
    assert filled["error"] == "store full", filled
    snap = a.snapshot()
    for i in range(25):
        r = get(g.port, "/deny/x", [("X-Id", "d%d" % i)])
        assert r.status == 503, ("deny, request %d" % i, r)
        assert r.json() == {"message": "rate limiting unavailable"}, r.body
        r = get(g.port, "/allow/x", [("X-Id", "a%d" % i)])
        assert r.status == 200, ("allow, request %d" % i, r)
    assert len(hits(a, snap)) == 25, "allow must reach the upstream, deny must not"
    full = [l for l in g.error_lines()[mark:] if "map full" in l]
    assert 1 <= len(full) <= 3, "map-full lines in the error log: %d\n%s" % (
        len(full), "\n".join(full[:10]))
    assert "fast.mdb" in full[0] and "[error]" in full[0], full[0]


def test_by_header_without_header_name_is_a_config_error(tmp_path):
    """rate_limit's check_conf: the gateway refuses the config with its file and line instead of
    answering 500 to every request."""
    cfg = config(listeners=[listener("public")],
                 upstreams={"a": {"targets": ["127.0.0.1:9"], "retries": 0}},
                 routes=[route("/p/", [{"rate_limit": {"by": "header"}}])],
                 store={"dir": str(tmp_path / "data")})
    path = tmp_path / "check.yaml"
    path.write_text(to_yaml(cfg))
    r = subprocess.run([str(BINARY), "check", "-c", str(path)], capture_output=True, text=True)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert re.search(re.escape(str(path)) + r":\d+: .*rate_limit\.header_name: required with by: "
                     r"header", r.stderr), r.stderr
