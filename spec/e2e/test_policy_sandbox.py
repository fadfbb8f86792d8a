"""The policy sandbox end to end (docs/lua.md "Policies and the sandbox", "The CPU guard"): what a
policy must not reach, tried from a real policy file in a running gateway.

- Each escape (os.execute, io, ffi, jit, debug, package.loadlib, string.dump, load/loadstring/
  dofile, the string metatable, the SDK tables, another policy's table, collectgarbage, require
  of os/io/ffi/pgw internals, ...) fails: the request answers 500 and the error log names the
  policy, the stage and the reason; had the escape worked, the policy would answer 200
  "escaped". The same escapes at load time make `passerelle check` fail with file:line.
- A policy's globals and library changes do not leak into another policy.
- The memory cap: a policy allocating without bound gets 500, the next requests (other routes,
  other policies, the same policy) are served.
- The CPU budget: `while true do end` fails its request within budget + 1 s and names the policy
  file and line; other requests are served during and after; pcall, xpcall and coroutines cannot
  swallow the budget error.
"""
import re
import subprocess
import textwrap
import threading
import time

import pytest

from policyfix import no_worker_crash, route, track, write_policies  # noqa: F401
from gw import BINARY, REPO, Client, config, listener, to_yaml, wait_for
from harness import module_env
from stubs import Upstream


def get(port, target, timeout=5.0):
    with Client(port, timeout=timeout) as c:
        c.request(target=target)
        return c.read_response()


def wait_log(g, pattern, mark=0, timeout=2.0):
    rx = re.compile(pattern)
    return wait_for(lambda: [l for l in g.error_lines()[mark:] if rx.search(l)], timeout,
                    "error-log line matching %r (last lines: %r)" % (
                        pattern, g.error_lines()[-3:]))[0]


# ---- escapes, at run time ----

# case -> (Lua statements run in access, regex the error must match)
ESCAPES = {
    "os_execute": ('os.execute("touch " .. conf.marker)',
                   r"attempt to call field 'execute' \(a nil value\)"),
    "os_getenv": ('return pgw.exit(200, "escaped " .. tostring(os.getenv("PATH")))',
                  r"attempt to call field 'getenv' \(a nil value\)"),
    "os_remove": ("os.remove(conf.marker)", r"attempt to call field 'remove' \(a nil value\)"),
    "io_open": ('local f = io.open(conf.marker, "w"); f:write("x"); f:close()',
                r"attempt to index global 'io' \(a nil value\)"),
    "io_popen": ('io.popen("touch " .. conf.marker)',
                 r"attempt to index global 'io' \(a nil value\)"),
    "ffi_global": ('ffi.cdef("int system(const char *);"); ffi.C.system("touch " .. conf.marker)',
                   r"attempt to index global 'ffi' \(a nil value\)"),
    "ffi_require": ('local ffi = require("ffi"); ffi.cdef("int system(const char *);")',
                    r"module 'ffi' not found"),
    "jit": ("jit.on(); jit.flush()", r"attempt to index global 'jit' \(a nil value\)"),
    "jit_require": ('require("jit").on()', r"module 'jit' not found"),
    "jit_util": ('require("jit.util")', r"module 'jit\.util' not found"),
    "debug": ("debug.sethook()", r"attempt to index global 'debug' \(a nil value\)"),
    "debug_require": ('require("debug").getregistry()', r"module 'debug' not found"),
    "package_loadlib": ('package.loadlib("libc.so.6", "system")',
                        r"attempt to index global 'package' \(a nil value\)"),
    "package_require": ('require("package").loadlib("libc.so.6", "system")',
                        r"module 'package' not found"),
    "string_dump": ("local b = string.dump(function() end)",
                    r"attempt to call field 'dump' \(a nil value\)"),
    "string_method_dump": ('local b = ("").dump(function() end)',
                           r"attempt to call field 'dump' \(a nil value\)"),
    "load": ('load(function() return nil end)', r"attempt to call global 'load' \(a nil value\)"),
    "loadstring": ('loadstring("\\27LJ\\2")',   # bytecode, had it existed
                   r"attempt to call global 'loadstring' \(a nil value\)"),
    "dofile": ('dofile("/etc/passwd")', r"attempt to call global 'dofile' \(a nil value\)"),
    "loadfile": ('loadfile("/etc/passwd")', r"attempt to call global 'loadfile' \(a nil value\)"),
    "getfenv": ("getfenv(0).pwned = true", r"attempt to call global 'getfenv' \(a nil value\)"),
    "setfenv": ("setfenv(1, {})", r"attempt to call global 'setfenv' \(a nil value\)"),
    "newproxy": ("newproxy(true)", r"attempt to call global 'newproxy' \(a nil value\)"),
    "string_mt_index": ('getmetatable("").__index = { upper = function() return "pwned" end }',
                        r"attempt to modify a read-only table"),
    "string_mt_set": ('setmetatable(getmetatable(""), { __index = { upper = tostring } })',
                      r"cannot change a protected metatable"),
    "string_mt_rawset": ('rawset(getmetatable(""), "__index", {})', r"rawset: table is read-only"),
    "string_mt_inner": ('getmetatable("").__index.upper = function() return "pwned" end',
                        r"attempt to modify a read-only table"),
    "sdk_field": ("pgw.req.get_header = nil",
                  r"attempt to modify a read-only table \(field 'get_header'\)"),
    "sdk_top": ('pgw.exit = function() end',
                r"attempt to modify a read-only table \(field 'exit'\)"),
    "sdk_rawset": ('rawset(pgw.req, "get_header", function() return "pwned" end)',
                   r"rawset: table is read-only"),
    "sdk_require": ('require("pgw.schema").check = nil',
                    r"attempt to modify a read-only table \(field 'check'\)"),
    "sdk_setmetatable": ("setmetatable(pgw.req, {})", r"cannot change a protected metatable"),
    "sdk_table_insert": ("table.insert(pgw.policy.STAGES, 'pwned')",
                         r"table\.insert: table is read-only"),
    "other_policy": ('require("victim").access = function() return pgw.exit(200, "pwned") end',
                     r"attempt to modify a read-only table \(field 'access'\)"),
    "other_policy_rawset": ('rawset(require("victim"), "access", function() end)',
                            r"rawset: table is read-only"),
    "other_policy_schema": ('require("victim").schema.word.default = "pwned"',
                            r"attempt to modify a read-only table"),
    "collect": ('collectgarbage("collect")', r'collectgarbage: only "count" is allowed'),
    "collect_default": ("collectgarbage()", r'collectgarbage: only "count" is allowed'),
    "collect_stop": ('collectgarbage("stop")', r'collectgarbage: only "count" is allowed'),
    "require_os": ('require("os").execute("touch " .. conf.marker)', r"module 'os' not found"),
    "require_io": ('require("io").open(conf.marker, "w")', r"module 'io' not found"),
    "require_string": ('require("string").dump(print)', r"module 'string' not found"),
    "require_sandbox": ('require("pgw.internal.sandbox")',
                        r"module 'pgw\.internal\.sandbox' not found"),
    "require_engine": ('require("pgw.internal.engine")',
                       r"module 'pgw\.internal\.engine' not found"),
    "require_core": ('require("pgw.core").set_handle_methods({})', r"module 'pgw\.core' not found"),
    "require_builtin_module": ('require("pgw.policies.cors")',
                               r"module 'pgw\.policies\.cors' not found"),
    "handle_metatable": ("getmetatable(req).__index = {}", r"attempt to index a string value"),
    "hijack_request_thread": ("coroutine.resume(coroutine.running())",
                              r"not a coroutine created by this policy"),
    "top_level_yield": ("coroutine.yield()", r"not inside a coroutine created by the policy"),
}

ESCAPE_SRC = """
local pgw = require "pgw"
local cases = {}
%s
return {
    schema = { marker = { type = "string", required = true } },
    access = function(conf, req)
        local f = cases[pgw.req.get_query_arg("case")]
        if not f then return pgw.exit(404, "no such case") end
        local r = f(conf, req)
        if r ~= nil then return end
        return pgw.exit(200, "escaped")
    end,
}
"""

VICTIM = """
local pgw = require "pgw"
return {
    schema = { word = { type = "string", default = "victim" } },
    access = function(conf)
        return pgw.exit(200, conf.word .. " " .. ("ok"):upper() .. " " ..
                        tostring(pgw.req.get_header("X-Probe")))
    end,
}
"""

LEAKY = """
local pgw = require "pgw"
secret = "leaked at load"
return {
    access = function()
        secret = "leaked at run"
        _G.other_secret = "leaked through _G"
        string.upper = function() return "pwned" end
        table.concat = function() return "pwned" end
        math.floor = nil
        pgw.ctx().leaky = true
    end,
}
"""

READER = """
local pgw = require "pgw"
return {
    access = function()
        return pgw.exit(200, pgw.json.encode({
            secret = tostring(secret),
            raw = tostring(rawget(_G, "secret")),
            other = tostring(other_secret),
            upper = string.upper("y"),
            method_upper = ("x"):upper(),
            concat = table.concat({ "a", "b" }),
            floor = math.floor(1.5),
            leaky_ran = pgw.ctx().leaky == true,
        }))
    end,
}
"""


def escape_source():
    return ESCAPE_SRC % "\n".join(
        'cases["%s"] = function(conf, req)\n    %s\nend' % (name, code)
        for name, (code, _) in sorted(ESCAPES.items()))


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    base = tmp_path_factory.mktemp("sandbox")
    pdir = base / "policies"
    marker = base / "pwned"
    write_policies(pdir, {"escape": escape_source(), "victim": VICTIM, "leaky": LEAKY,
                          "reader": READER})

    def build():
        stubs = {"a": Upstream("a")}
        cfg = config(listeners=[listener("public")],
                     upstreams={"a": {"targets": [stubs["a"].address], "retries": 0}},
                     routes=[route("/esc", [{"escape": {"marker": str(marker)}}]),
                             route("/victim", ["victim"]),
                             route("/leak", ["leaky", "reader"]),
                             route("/plain", name="plain")],
                     policies={"dir": str(pdir)})
        return cfg, stubs
    e = module_env(request, tmp_path_factory, build)
    e.marker = marker
    return e


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escape_fails_at_run_time(env, case):
    g = env.gw
    track(g)
    snap = env.a.snapshot()
    mark = g.error_mark()
    r = get(g.port, "/esc?case=%s" % case)
    assert r.status == 500, "escape %s: %r" % (case, r)
    rid = r.header("x-request-id")
    line = wait_log(g, r"\[error\] policy escape: stage access: request %s: " % rid, mark)
    assert re.search(ESCAPES[case][1], line), "escape %s: %s" % (case, line)
    assert re.search(r"escape\.lua:\d+:", line), line
    assert not env.marker.exists(), "escape %s created %s" % (case, env.marker)
    assert env.a.since(snap)[0] == [], "the upstream was contacted"
    # nothing changed for the others: SDK, string methods, the victim policy
    r = get(g.port, "/victim")
    assert (r.status, r.body) == (200, b"victim OK nil"), (case, r)
    g.assert_alive()


def test_other_policies_globals_and_libraries_do_not_leak(env):
    track(env.gw)
    r = get(env.gw.port, "/leak")
    assert r.status == 200, r
    assert r.json() == {"secret": "nil", "raw": "nil", "other": "nil", "upper": "Y",
                        "method_upper": "X", "concat": "ab", "floor": 1,
                        "leaky_ran": True}, r.json()


# ---- escapes, at load time ----

LOAD_ESCAPES = {
    "os_execute": ('os.execute("true")\nreturn {}\n', 1, r"attempt to call field 'execute'"),
    "io_open": ('local x = 1\nlocal f = io.open("/etc/passwd")\nreturn {}\n', 2,
                r"attempt to index global 'io'"),
    "ffi": ('local pgw = require "pgw"\nlocal ffi = require "ffi"\nreturn {}\n', 2,
            r"module 'ffi' not found"),
    "debug": ('debug.getregistry()\nreturn {}\n', 1, r"attempt to index global 'debug'"),
    "loadstring": ('local f = loadstring("return 1")\nreturn {}\n', 1,
                   r"attempt to call global 'loadstring'"),
    "string_mt": ('getmetatable("").__index = {}\nreturn {}\n', 1,
                  r"attempt to modify a read-only table"),
    "sdk": ('local pgw = require "pgw"\npgw.log = nil\nreturn {}\n', 2,
            r"attempt to modify a read-only table \(field 'log'\)"),
    "sleep": ('local pgw = require "pgw"\npgw.sleep(1)\nreturn {}\n', 2,
              r"pgw\.sleep: not allowed in stage load"),
    "timer": ('local pgw = require "pgw"\npgw.timer.at(0, function() end)\nreturn {}\n', 2,
              r"pgw\.timer\.at: not allowed in stage load"),
    "collect": ('collectgarbage("collect")\nreturn {}\n', 1, r'only "count" is allowed'),
}


@pytest.mark.parametrize("case", sorted(LOAD_ESCAPES))
def test_escape_at_load_is_reported_by_check(tmp_path, case):
    src, line, pattern = LOAD_ESCAPES[case]
    pdir = tmp_path / "policies"
    pdir.mkdir()
    (pdir / "p.lua").write_text(src)
    cfg = config(listeners=[listener("public")], upstreams={"a": {"targets": ["127.0.0.1:9"]}},
                 routes=[route("/r", ["p"], name="r")], policies={"dir": str(pdir)})
    path = tmp_path / "gw.yaml"
    path.write_text(to_yaml(cfg) + "\n")
    cp = subprocess.run([str(BINARY), "check", "-c", str(path)], cwd=str(REPO),
                        capture_output=True, text=True, timeout=20)
    assert cp.returncode == 1, "check accepted %s: %r %r" % (case, cp.stdout, cp.stderr)
    assert re.search(r"/p\.lua:%d: .*%s" % (line, pattern), cp.stderr), cp.stderr


# ---- memory cap ----

HOG = """
local pgw = require "pgw"
return {
    access = function()
        if pgw.req.get_query_arg("hog") then
            local t = {}
            while true do t[#t + 1] = string.rep("x", 1e6) .. #t end  -- HOG-LINE
        end
        local t = {}
        for i = 1, 1000 do t[i] = string.rep("y", 1000) .. i end   -- 1 MB is fine
        return pgw.exit(200, "small " .. #t .. " " .. math.floor(collectgarbage("count") / 1024))
    end,
}
"""


def test_memory_cap_fails_the_hog_only(make_gateway, make_stub, tmp_path):
    pdir = tmp_path / "policies"
    write_policies(pdir, {"hog": HOG, "victim": VICTIM})
    a = make_stub("a")
    g = make_gateway(config(listeners=[listener("public")],
                            upstreams={"a": {"targets": [a.address], "retries": 0}},
                            routes=[route("/hog", ["hog"]), route("/victim", ["victim"]),
                                    route("/plain", name="plain")],
                            policies={"dir": str(pdir), "memory": "32m", "budget": "2s"}))
    track(g)
    for attempt in range(2):
        mark = g.error_mark()
        t0 = time.monotonic()
        r = get(g.port, "/hog?hog=1")
        assert r.status == 500, r
        assert time.monotonic() - t0 < 3.0
        wait_log(g, r"\[error\] policy hog: stage access: request %s: .*not enough memory"
                 % r.header("x-request-id"), mark)
        assert get(g.port, "/plain").status == 200
        r = get(g.port, "/victim")
        assert (r.status, r.body) == (200, b"victim OK nil"), r
        r = get(g.port, "/hog")   # the same policy, within its means
        assert r.status == 200 and r.body.startswith(b"small 1000 "), r
        used_mb = int(r.body.split()[-1])
        assert used_mb < 24, "%d MB still in use after the hog's request ended" % used_mb
    g.assert_alive()


# ---- CPU budget ----

SPIN = """
local pgw = require "pgw"
local modes = {
    plain = function()
        while true do end  -- SPIN-LINE
    end,
    pcall = function()
        local ok, err = pcall(function() while true do end end)
        return pgw.exit(200, "swallowed by pcall: " .. tostring(err))
    end,
    pcall_loop = function()
        local n = 0
        while true do
            pcall(function() while true do end end)
            n = n + 1
            if n > 3 then return pgw.exit(200, "swallowed by a pcall loop") end
        end
    end,
    xpcall = function()
        local ok, err = xpcall(function() while true do end end,
                               function(e) return "handled: " .. tostring(e) end)
        return pgw.exit(200, "swallowed by xpcall: " .. tostring(err))
    end,
    xpcall_handler = function()
        xpcall(function() error("first") end, function(e) while true do end end)
        return pgw.exit(200, "looping handler returned")
    end,
    coroutine = function()
        local ok, err = coroutine.resume(coroutine.create(function() while true do end end))
        return pgw.exit(200, "swallowed by coroutine.resume: " .. tostring(err))
    end,
    wrap = function()
        local ok, err = pcall(coroutine.wrap(function() while true do end end))
        return pgw.exit(200, "swallowed by pcall(wrap): " .. tostring(err))
    end,
    recursion = function()
        local function f(n) return f(n + 1) end
        return f(1)
    end,
    pattern = function()
        local ok = pcall(string.find, string.rep("a", 600), string.rep("a*", 3) .. "b")
        return pgw.exit(200, "pattern returned")
    end,
}
return {
    access = function()
        local m = pgw.req.get_query_arg("mode")
        if m then return modes[m]() end
    end,
}
"""


@pytest.fixture
def spin_gw(make_gateway, make_stub, tmp_path):
    pdir = tmp_path / "policies"
    write_policies(pdir, {"spin": SPIN})
    a = make_stub("a")
    g = make_gateway(config(listeners=[listener("public")],
                            upstreams={"a": {"targets": [a.address], "retries": 0}},
                            routes=[route("/spin", ["spin"]), route("/plain", name="plain")],
                            policies={"dir": str(pdir), "budget": "200ms"}))
    track(g)
    return g


def test_runaway_loop_fails_within_budget_and_others_are_served(spin_gw):
    g = spin_gw
    stop = threading.Event()
    served = []   # (status, seconds) of /plain requests sent while the policy spins
    errors = []

    def plain_loop():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                served.append((get(g.port, "/plain", timeout=5.0).status,
                               time.monotonic() - t0))
            except Exception as e:  # noqa: BLE001 - any failure is recorded
                errors.append(repr(e))
            time.sleep(0.01)
    th = threading.Thread(target=plain_loop)
    th.start()
    try:
        time.sleep(0.1)
        mark = g.error_mark()
        t0 = time.monotonic()
        r = get(g.port, "/spin?mode=plain", timeout=5.0)
        took = time.monotonic() - t0
        time.sleep(0.2)
    finally:
        stop.set()
        th.join(10)
    assert r.status == 500, r
    assert 0.15 < took < 1.2, "the runaway request ended after %.2f s (budget 200 ms)" % took
    n = [i + 1 for i, l in enumerate(textwrap.dedent(SPIN).lstrip("\n").split("\n"))
         if "SPIN-LINE" in l][0]
    line = wait_log(g, r"\[error\] policy spin: stage access: request %s: " %
                    r.header("x-request-id"), mark)
    assert re.search(r"spin\.lua:%d: policy exceeded its CPU budget of 200 ms" % n, line), line
    assert not errors, errors
    assert served and all(s == 200 for s, _ in served), served
    assert max(t for _, t in served) < 1.0, "a request waited %.2f s" % max(t for _, t in served)
    # and after
    for _ in range(3):
        assert get(g.port, "/plain").status == 200
    assert get(g.port, "/spin").status == 200   # the same policy, not looping
    g.assert_alive()


@pytest.mark.parametrize("mode", ["pcall", "pcall_loop", "xpcall", "xpcall_handler", "coroutine",
                                  "wrap", "recursion", "pattern"])
def test_budget_error_cannot_be_swallowed(spin_gw, mode):
    g = spin_gw
    mark = g.error_mark()
    t0 = time.monotonic()
    r = get(g.port, "/spin?mode=%s" % mode, timeout=5.0)
    took = time.monotonic() - t0
    assert r.status == 500, "mode %s: %r" % (mode, r)
    assert took < 1.2, "mode %s took %.2f s" % (mode, took)
    line = wait_log(g, r"\[error\] policy spin: stage access: request %s: " %
                    r.header("x-request-id"), mark)
    if mode == "recursion":   # the stack or the budget, whichever comes first
        assert re.search(r"policy exceeded its CPU budget|stack overflow", line), line
    else:
        assert re.search(r"policy exceeded its CPU budget of 200 ms", line), line
    assert get(g.port, "/plain").status == 200
