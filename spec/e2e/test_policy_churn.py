"""Policy churn (issue 5): the master watches the policies directory and reloads by itself.

- 200 rewrites of a policy file in 20 s, while a client keeps calling the route: every answer
  is a 200 from some version of the policy, the last version ends up active without any
  `passerelle reload`, and the worker's Lua memory and RSS stay flat (old policy sets are freed
  once their requests end).
"""
import time

from gw import BINARY, config, free_port, get_ok, listener, wait_for
from load import Load


POLICY = """local pgw = require "pgw"
local big = {{}}
for i = 1, 2000 do big[i] = "v{v}-" .. i end   -- some memory per version
return {{
    header_filter = function(conf, req)
        pgw.resp.set_header("X-Version", "{v}")
    end,
}}
"""


def write_policy(path, v):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(POLICY.format(v=v))
    tmp.rename(path)   # what deploy tools do: readers never see a half-written file


def version(port):
    r = get_ok(port, "/v")
    assert r.status == 200, r.status
    return r.header("x-version")


def test_200_rewrites_in_20s_end_on_the_last_version_with_flat_memory(make_gateway, make_stub,
                                                                       tmp_path):
    up = make_stub("a")
    pdir = tmp_path / "policies"
    pdir.mkdir()
    pfile = pdir / "ver.lua"
    write_policy(pfile, 0)
    port = free_port()
    cfg = config(listeners=[listener("public", port)],
                 upstreams={"a": {"targets": [up.address], "retries": 0}},
                 routes=[{"name": "v", "listeners": ["public"], "match": {"path": "/v"},
                          "upstream": "a", "policies": ["ver"]}],
                 policies={"dir": str(pdir)})
    g = make_gateway(cfg)
    assert version(port) == "0"
    # warm up: a few versions, then measure
    for v in range(1, 6):
        write_policy(pfile, v)
        time.sleep(0.1)
    wait_for(lambda: version(port) == "5", 5, "version 5 active")
    time.sleep(0.5)
    st0 = g.status()
    mem0 = st0["workers"][0]["lua_memory"]
    rss0 = g.rss_kb()
    gen0 = st0["generation"]
    load = Load(port, threads=2, keepalive=[True, False], target="/v")
    with load:
        start = time.time()
        for v in range(6, 206):
            write_policy(pfile, v)
            time.sleep(max(0, start + (v - 5) * 0.1 - time.time()))
    assert not load.failures, load.summary()
    wait_for(lambda: version(port) == "205", 5, "the last version (205) active")
    st = g.status()
    assert st["generation"] - gen0 >= 10, (
        "the watch reloaded only %d times in 20 s" % (st["generation"] - gen0))
    assert st["last_reload_error"] in (None, ""), st
    time.sleep(0.5)
    mem1 = g.status()["workers"][0]["lua_memory"]
    rss1 = g.rss_kb()
    print("lua memory %d -> %d bytes, rss %d -> %d KiB, %d reloads" % (
        mem0, mem1, rss0, rss1, st["generation"] - gen0))
    assert mem1 < mem0 * 1.5 + 512 * 1024, "Lua memory grew from %d to %d" % (mem0, mem1)
    if not str(BINARY).endswith("-asan"):  # ASan's quarantine keeps freed memory resident
        assert rss1 < rss0 + 16 * 1024, "worker RSS grew from %d KiB to %d KiB" % (rss0, rss1)
