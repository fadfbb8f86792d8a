"""Hot reload of the policies directory (issue 5; docs/operations.md "Reload: generations"): the
master reads `policies.dir` with the config on every reload, validates the policy set in a
scratch state and ships it with the generation.

- A rewritten policy file is active after `passerelle reload`.
- A syntax error in the new file, or deleting a policy a route still lists, refuses the reload:
  exit 1 with file:line on stderr, the old policy set keeps serving, the error is in the error
  log and in `passerelle status` (last_reload_error).
- A request in flight (sleeping in the old policy's access) finishes on the old policy set;
  new requests get the new one.
- Ten policy rewrites and reloads under load fail zero requests.
- The master watches the directory (inotify): writing a file alone activates it.
"""
import os
import re
import textwrap
import threading
import time

import pytest

from policyfix import no_worker_crash, track  # noqa: F401
from gw import Client, config, free_port, listener, wait_for
from load import Load

def ver_src(v):
    return textwrap.dedent("""
        local pgw = require "pgw"
        return {
            access = function(conf, req)
                local s = pgw.req.get_query_arg("sleep")
                if s then pgw.sleep(tonumber(s)) end
                pgw.req.set_header("X-Ver-Up", "%s")
            end,
            header_filter = function() pgw.resp.set_header("X-Ver", "%s") end,
        }
        """ % (v, v)).lstrip("\n")


BROKEN = textwrap.dedent("""
    local pgw = require "pgw"
    return {
        header_filter = function() pgw.resp.set_header("X-Ver", "broken") end
        access = function() end,
    }
    """).lstrip("\n")   # line 4: missing comma before it


def put(pdir, name, text):
    """Replaces <pdir>/<name>.lua atomically (written aside, then renamed), as a deploy does."""
    tmp = pdir / (".%s.lua.tmp" % name)
    tmp.write_text(text)
    os.rename(tmp, pdir / ("%s.lua" % name))


def start_gateway(make_gateway, make_stub, tmp_path, workers=1, extra_files=None):
    a = make_stub("a")
    pdir = tmp_path / "policies"
    pdir.mkdir()
    put(pdir, "ver", ver_src("1"))
    for n, src in (extra_files or {}).items():
        put(pdir, n, src)
    port = free_port()
    cfg = config(listeners=[listener("public", port)],
                 upstreams={"a": {"targets": [a.address], "retries": 0}},
                 routes=[{"name": "r", "listeners": ["public"], "match": {"path": "/r"},
                          "upstream": "a", "policies": ["ver"]},
                         {"name": "load", "listeners": ["public"], "match": {"path": "/load"},
                          "upstream": "a", "policies": ["ver"]},
                         {"name": "plain", "listeners": ["public"], "match": {"path": "/plain"},
                          "upstream": "a"}],
                 policies={"dir": str(pdir)}, workers=workers)
    g = make_gateway(cfg)
    track(g)
    g.wait_workers(workers)
    return g, a, pdir


def version(g, target="/r"):
    with Client(g.port) as c:
        c.request(target=target)
        r = c.read_response()
    assert r.status == 200, r
    return r.header("x-ver")


def reloaded_gen(g, cp):
    assert cp.returncode == 0, "reload exited %d; stderr %r; error log tail %r" % (
        cp.returncode, cp.stderr[-2000:], g.error_lines()[-5:])
    m = re.search(r"^reloaded: generation (\d+)$", cp.stdout, re.M)
    assert m, cp.stdout
    return int(m.group(1))


def route_line(g, name="r"):
    """1-based line of route <name>'s `policies` list in gw.yaml."""
    lines = g.config_path.read_text().split("\n")
    i = next(i for i, l in enumerate(lines) if l.strip() == "- name: %s" % name)
    j = next(j for j in range(i, len(lines)) if lines[j].strip().startswith("policies:"))
    return j + 1


def settled_generation(g, quiet=0.5):
    """The master's generation once it has not changed for <quiet> s (a reload triggered by the
    directory watch lands about 300 ms after the change that caused it)."""
    gen, since = g.status()["generation"], time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.1)
        now = g.status()["generation"]
        if now != gen:
            gen, since = now, time.monotonic()
    return gen


def test_rewritten_policy_is_active_after_reload(make_gateway, make_stub, tmp_path):
    g, a, pdir = start_gateway(make_gateway, make_stub, tmp_path, workers=2)
    for _ in range(4):
        assert version(g) == "1"
    put(pdir, "ver", ver_src("2"))
    gen = reloaded_gen(g, g.reload())
    for _ in range(6):   # new connections, whichever worker takes them
        assert version(g) == "2"
    assert a.last().header("x-ver-up") == "2"
    st = g.status()
    assert st["generation"] >= gen and st["last_reload_error"] is None, st


def test_syntax_error_keeps_the_old_policy_serving(make_gateway, make_stub, tmp_path):
    g, a, pdir = start_gateway(make_gateway, make_stub, tmp_path, workers=2)
    gen0 = g.status()["generation"]
    mark = g.error_mark()
    put(pdir, "ver", BROKEN)
    cp = g.reload()
    assert cp.returncode == 1, "reload with a syntax error exited %d: %r %r" % (
        cp.returncode, cp.stdout, cp.stderr)
    where = re.compile(r"ver\.lua:4: '}' expected \(to close '{' at line 2\) near 'access'")
    assert where.search(cp.stderr), cp.stderr
    assert "reloaded" not in cp.stdout, cp.stdout
    for _ in range(4):
        assert version(g) == "1", "the old policy stopped serving"
    st = g.status()
    assert st["generation"] == gen0, st
    assert st["last_reload_error"] and where.search(st["last_reload_error"]), st
    wait_log = wait_for(lambda: [l for l in g.error_lines()[mark:]
                                 if "[error]" in l and where.search(l)], 2.0,
                        "the refused reload in the error log")
    assert "reload refused" in wait_log[0], wait_log
    # fixed: the next reload goes through
    put(pdir, "ver", ver_src("3"))
    reloaded_gen(g, g.reload())
    assert version(g) == "3"
    wait_for(lambda: g.status()["last_reload_error"] is None, 2.0,
             "last_reload_error cleared by a successful reload")


def test_deleting_a_policy_a_route_needs_is_refused(make_gateway, make_stub, tmp_path):
    g, a, pdir = start_gateway(make_gateway, make_stub, tmp_path,
                       extra_files={"spare": "return { access = function() end }\n"})
    gen0 = g.status()["generation"]
    # a policy no route lists may go
    os.unlink(pdir / "spare.lua")
    reloaded_gen(g, g.reload())
    assert version(g) == "1"
    gen1 = settled_generation(g)   # the directory watch may add a reload of its own
    assert gen1 > gen0

    os.unlink(pdir / "ver.lua")
    cp = g.reload()
    assert cp.returncode == 1, "reload without ver.lua exited %d: %r %r" % (
        cp.returncode, cp.stdout, cp.stderr)
    where = re.compile(r'gw\.yaml:%d: route "r": policies: no policy named ver' % route_line(g))
    assert where.search(cp.stderr), cp.stderr
    for _ in range(3):
        assert version(g) == "1", "the deleted policy stopped serving"
        assert version(g, "/load") == "1"
    st = g.status()
    assert st["generation"] == gen1, st
    assert st["last_reload_error"] and where.search(st["last_reload_error"]), st
    wait_for(lambda: [l for l in g.error_lines() if "reload refused" in l and where.search(l)],
             2.0, "the refused reload in the error log")


def test_request_in_flight_finishes_on_the_old_policy_set(make_gateway, make_stub, tmp_path):
    g, a, pdir = start_gateway(make_gateway, make_stub, tmp_path)
    out = {}

    def slow():
        with Client(g.port, timeout=10) as c:
            c.request(target="/r?sleep=0.8")
            out["r"] = c.read_response()
    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.2)   # the request sleeps in the old policy's access
    put(pdir, "ver", ver_src("2"))
    reloaded_gen(g, g.reload())
    assert version(g) == "2"
    # the reload did not wait for the request in flight, nor cut it short
    assert "r" not in out, "the sleeping request ended before the reload: %r" % out.get("r")
    th.join(5)
    r = out["r"]
    assert r.status == 200, r
    assert r.header("x-ver") == "1", "header_filter of the request in flight: %r" % r
    ups = [q for q in a.requests if q.target == "/r?sleep=0.8"]
    assert len(ups) == 1 and ups[0].header("x-ver-up") == "1", ups
    assert version(g) == "2"
    g.assert_no_error()


def test_ten_policy_reloads_under_load_fail_nothing(make_gateway, make_stub, tmp_path):
    g, a, pdir = start_gateway(make_gateway, make_stub, tmp_path, workers=2)
    pids = g.worker_pids()
    mark = g.error_mark()
    load = Load(g.port, threads=4, keepalive=[True, True, False, False], target="/load")
    with load:
        load.wait_ok(50)
        for v in range(2, 12):
            put(pdir, "ver", ver_src(str(v)))
            reloaded_gen(g, g.reload())
            load.wait_ok(20)
        time.sleep(0.2)
    assert not load.failures, "requests failed across the policy reloads: %s" % load.summary()
    assert load.total_ok >= 250, load.summary()
    for _ in range(4):
        assert version(g, "/load") == "11"
    assert g.worker_pids() == pids, "workers re-forked by a policy reload"
    g.assert_no_error(mark)


def test_writing_a_policy_file_alone_activates_it(make_gateway, make_stub, tmp_path):
    """The master watches policies.dir (inotify): a file written in place (as an editor saves
    it) is picked up without `passerelle reload`; a broken one is refused the same way."""
    g, a, pdir = start_gateway(make_gateway, make_stub, tmp_path)
    assert version(g) == "1"
    (pdir / "ver.lua").write_text(ver_src("2"))
    wait_for(lambda: version(g) == "2", 2.0, "the written policy active without a reload")

    (pdir / "ver.lua").write_text(BROKEN)
    st = wait_for(lambda: (lambda s: s if s["last_reload_error"] else None)(g.status()), 2.0,
                  "last_reload_error set after a broken policy was written")
    assert re.search(r"ver\.lua:4:", st["last_reload_error"]), st
    for _ in range(3):
        assert version(g) == "2"
