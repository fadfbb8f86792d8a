/* lua_test.c: the Lua bridge core: embedded SDK, memory cap and reserve, CPU guard (pcall and
 * resume paths, caught errors, lazy timer), the sandbox (every escape the policy-engine issue
 * lists), policy loading errors, policy coroutines with bridge yields, and the guarded pattern
 * matcher (lua_pattern.c: conformance with the builtin, budget, depth). Timings are asserted
 * only loosely (budget * 10): the point is that the run stops, not how fast. */
#include "../../gateway/lua.c"
#include "../support/test.h"

#define CAP (8u * 1024 * 1024)

static char err[4096];

static struct pgw_lua *new_state(void)
{
    struct pgw_lua *lua = pgw_lua_new(CAP, err, sizeof(err));
    if (lua == NULL)
        fprintf(stderr, "pgw_lua_new: %s\n", err);
    return lua;
}

static int load(struct pgw_lua *lua, const char *name, const char *src, int *ref)
{
    char path[128];
    snprintf(path, sizeof(path), "policies/%s.lua", name);
    err[0] = '\0';
    return pgw_lua_load_policy(lua, name, path, src, strlen(src), 0, 1000, ref, err, sizeof(err));
}

/* Calls field <fn> of the policy table <ref> with pcall, under <budget_ms>. Leaves nothing on
 * the stack; *<out> gets the first result when it is a number. */
static int call(struct pgw_lua *lua, int ref, const char *fn, unsigned budget_ms, double *out)
{
    lua_State *L = pgw_lua_state(lua);
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_getfield(L, -1, fn);
    lua_remove(L, -2);
    err[0] = '\0';
    int rc = pgw_lua_call_guarded(lua, 0, 1, budget_ms, err, sizeof(err));
    if (rc == PGW_OK && out != NULL)
        *out = lua_tonumber(L, -1);
    lua_settop(L, top);
    return rc;
}

struct dump {
    char buf[65536];
    size_t len;
};

static int on_dump(lua_State *L, const void *p, size_t n, void *ud)
{
    struct dump *d = ud;
    PGW_UNUSED(L);
    if (d->len + n > sizeof(d->buf))
        return 1;
    memcpy(d->buf + d->len, p, n);
    d->len += n;
    return 0;
}

static int has(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

static double now_ms(void) { return (double)mono_ns() / 1e6; }

#define CHECK_HAS(s, sub)                                                                          \
    do {                                                                                           \
        if (!has((s), (sub))) {                                                                    \
            fprintf(stderr, "FAIL %s: %s:%d: \"%s\" does not contain \"%s\"\n", test_current,     \
                    __FILE__, __LINE__, (s), (sub));                                               \
            test_current_failed = 1;                                                               \
        }                                                                                          \
    } while (0)

/* ---- State and SDK ---- */

static void test_new_and_sdk(void)
{
    CHECK(pgw_lua_new(PGW_LUA_MEM_MIN - 1, err, sizeof(err)) == NULL);
    CHECK_HAS(err, "below the minimum");

    struct pgw_lua *lua = new_state();
    CHECK(lua != NULL);
    if (lua == NULL)
        return;
    lua_State *L = pgw_lua_state(lua);
    CHECK(pgw_lua_from_state(L) == lua);
    CHECK(pgw_lua_mem_used(lua) > 0 && pgw_lua_mem_used(lua) < CAP);
    CHECK_INT(lua_gettop(L), 0);

    int ref;
    CHECK_INT(load(lua, "sdk",
                   "local pgw = require 'pgw'\n"
                   "local policy = require 'pgw.policy'\n"
                   "assert(pgw.policy == policy, 'one view per SDK table')\n"
                   "assert(policy.check({ access = function() end }))\n"
                   "assert(not policy.check({ access = 1 }))\n"
                   "assert(pgw.version == '0.2.0')\n"
                   "local n, k = 0, 0\n"
                   "for i, s in ipairs(pgw.policy.STAGES) do n = n + i end\n"
                   "for _ in pairs(pgw.policy) do k = k + 1 end\n"
                   "assert(k == 2 and #pgw.policy.STAGES == 0, 'views hide # but not pairs')\n"
                   "return { v = function() return n end }\n",
                   &ref),
              PGW_OK);
    CHECK_HAS(err, "");
    double v = 0;
    CHECK_INT(call(lua, ref, "v", 1000, &v), PGW_OK);
    CHECK(v == 45); /* 1 + ... + 9: the six request stages and ws_connect, ws_message, ws_close */
    CHECK_INT(lua_gettop(L), 0);

    /* Trusted code resolves SDK modules from the binary only: no path, no C loader. */
    CHECK_INT(luaL_dostring(L, "return package.path .. package.cpath .. #package.loaders"), 0);
    CHECK(strcmp(lua_tostring(L, -1), "2") == 0);
    lua_settop(L, 0);
    CHECK(luaL_dostring(L, "require 'socket'") != 0);
    CHECK_HAS(lua_tostring(L, -1), "no module 'socket' in the embedded SDK");
    lua_settop(L, 0);

    pgw_lua_unref(lua, ref);
    pgw_lua_unref(lua, LUA_NOREF);
    pgw_lua_free(lua);
}

/* ---- Memory cap ---- */

static void test_memory_cap(void)
{
    struct pgw_lua *lua = new_state();
    if (lua == NULL)
        return;
    int ref;
    CHECK_INT(load(lua, "hog",
                   "return {\n"
                   "  table = function() local t, i = {}, 0\n"
                   "    while true do i = i + 1; t[i] = string.rep('x', 64) .. i end end,\n"
                   "  string = function() local s = 'x'\n"
                   "    while true do s = s .. s end end,\n"
                   "  rep = function() return #string.rep('x', 2^30) end,\n"
                   "  small = function() local t = {} for i = 1, 1000 do t[i] = i end\n"
                   "    return #t end,\n"
                   "}\n",
                   &ref),
              PGW_OK);
    const char *hogs[] = {"table", "string", "rep"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(hogs); i++) {
        CHECK_INT(call(lua, ref, hogs[i], 5000, NULL), PGW_ERR);
        CHECK_HAS(err, "not enough memory");
        CHECK(pgw_lua_mem_peak(lua) <= CAP);
        double n = 0;
        CHECK_INT(call(lua, ref, "small", 1000, &n), PGW_OK); /* the state is still usable */
        CHECK(n == 1000);
    }
    CHECK(pgw_lua_mem_used(lua) < CAP / 2); /* the garbage was collected after the runs */
    pgw_lua_free(lua);
}

/* A policy holding all it may use still gets its error with a traceback: the bridge builds it
 * in the reserve. (The message must exist already: the policy itself can allocate nothing.) */
static void test_memory_reserve(void)
{
    struct pgw_lua *lua = new_state();
    if (lua == NULL)
        return;
    int ref;
    CHECK_INT(load(lua, "hold",
                   "local held\n"
                   "local MSG = 'policy is full'\n"
                   "return {\n"
                   "  fill = function() held = {}\n"
                   "    pcall(function() while true do held[#held + 1] = {} end end)\n"
                   "    error(MSG, 0)\n"
                   "  end,\n"
                   "  release = function() held = nil; collectgarbage('count') end,\n"
                   "  ok = function() return 7 end,\n"
                   "}\n",
                   &ref),
              PGW_OK);
    CHECK_INT(call(lua, ref, "fill", 5000, NULL), PGW_ERR);
    CHECK_HAS(err, "policy is full\nstack traceback:");
    CHECK_HAS(err, "policies/hold.lua:6: in function");
    CHECK(pgw_lua_mem_used(lua) > CAP - PGW_LUA_RESERVE - 64 * 1024);
    /* The bridge still works (the reserve) while policy allocations fail. */
    lua_State *L = pgw_lua_state(lua);
    int tref;
    lua_State *co = pgw_lua_thread_new(lua, &tref);
    CHECK(co != NULL);
    pgw_lua_unref(lua, tref);
    CHECK_INT(call(lua, ref, "release", 1000, NULL), PGW_OK);
    lua_gc(L, LUA_GCCOLLECT, 0);
    double v = 0;
    CHECK_INT(call(lua, ref, "ok", 1000, &v), PGW_OK);
    CHECK(v == 7);
    CHECK(pgw_lua_mem_used(lua) < CAP / 2);
    pgw_lua_free(lua);
}

/* ---- CPU guard ---- */

static const char *const spin_src =
    "local function busy(ms) local t = os.clock() + ms / 1000\n"
    "  while os.clock() < t do end end\n"
    "return {\n"
    "  forever = function() while true do end end,\n"                                // 4
    "  count = function() local n = 0 for i = 1, 1e12 do n = n + 1 end return n end,\n" // 5
    "  repeat_ = function() repeat until false end,\n"
    "  recurse = function() local function f() return f() end return f() end,\n"
    "  normal = function() local s = 0 for i = 1, 1e5 do s = s + i end return s end,\n"
    "  busy60 = function() busy(60) return 1 end,\n"
    "  swallow = function()\n"
    "    while true do pcall(function() while true do end end) end end,\n"
    "  swallow_x = function()\n"
    "    while true do xpcall(function() while true do end end,\n"
    "                         function() while true do end end) end end,\n"
    "  swallow_co = function() while true do\n"
    "    coroutine.resume(coroutine.create(function() while true do end end)) end end,\n"
    "  swallow_wrap = function() while true do\n"
    "    pcall(coroutine.wrap(function() while true do end end)) end end,\n"
    "  swallow_err = function() while true do\n"
    "    local ok, e = pcall(function() while true do end end)\n"
    "    if not ok then return 'caught: ' .. e end end end,\n"
    "}\n";

static void check_interrupted(struct pgw_lua *lua, int ref, const char *fn, unsigned budget)
{
    double t0 = now_ms();
    int rc = call(lua, ref, fn, budget, NULL);
    double took = now_ms() - t0;
    if (rc != PGW_ERR || !has(err, "policy exceeded its CPU budget of") || took > budget * 10.0) {
        fprintf(stderr, "FAIL %s: %s: rc %d after %.1f ms: %s\n", test_current, fn, rc, took, err);
        test_current_failed = 1;
    }
    CHECK(lua_gethook(pgw_lua_state(lua)) == NULL);
}

static void test_guard_loops(void)
{
    struct pgw_lua *lua = new_state();
    if (lua == NULL)
        return;
    int ref;
    CHECK_INT(load(lua, "spin", spin_src, &ref), PGW_OK);

    check_interrupted(lua, ref, "forever", 50);
    CHECK_HAS(err, "policies/spin.lua:4: policy exceeded its CPU budget of 50 ms");
    CHECK_HAS(err, "stack traceback:");
    check_interrupted(lua, ref, "count", 50);
    CHECK_HAS(err, "policies/spin.lua:5:");
    check_interrupted(lua, ref, "repeat_", 20);
    CHECK_HAS(err, "budget of 20 ms");
    check_interrupted(lua, ref, "recurse", 20);

    double v = 0;
    CHECK_INT(call(lua, ref, "normal", 1000, &v), PGW_OK); /* the state is usable afterwards */
    CHECK(v == 5000050000.0);
    pgw_lua_free(lua);
}

static void test_guard_cannot_be_swallowed(void)
{
    struct pgw_lua *lua = new_state();
    if (lua == NULL)
        return;
    int ref;
    CHECK_INT(load(lua, "spin", spin_src, &ref), PGW_OK);
    check_interrupted(lua, ref, "swallow", 30);
    check_interrupted(lua, ref, "swallow_x", 30);
    check_interrupted(lua, ref, "swallow_co", 30);
    check_interrupted(lua, ref, "swallow_wrap", 30);
    check_interrupted(lua, ref, "swallow_err", 30);
    CHECK(!has(err, "caught:"));
    double v = 0;
    CHECK_INT(call(lua, ref, "normal", 1000, &v), PGW_OK);
    pgw_lua_free(lua);
}

/* The timer is re-armed lazily: an expiry left from an earlier run must neither fire on a later
 * one nor be lost for it. */
static void test_guard_lazy_timer(void)
{
    struct pgw_lua *lua = new_state();
    if (lua == NULL)
        return;
    int ref;
    CHECK_INT(load(lua, "spin", spin_src, &ref), PGW_OK);
    /* Budgets are wall time: a short one could expire here on a loaded machine. */
    for (int i = 0; i < 100000; i++) {
        pgw_lua_guard_arm(lua, 1000);
        CHECK_INT(pgw_lua_guard_disarm(lua), 0);
    }
    /* A 20 ms expiry is pending; the next run has 2 s and busies 60 ms: no error. */
    pgw_lua_guard_arm(lua, 20);
    pgw_lua_guard_disarm(lua);
    double v = 0;
    CHECK_INT(call(lua, ref, "busy60", 2000, &v), PGW_OK);
    CHECK(v == 1);
    /* Let the pending expiry lapse while idle, then overrun: still caught. */
    struct timespec ts = {0, 80 * 1000000};
    nanosleep(&ts, NULL);
    check_interrupted(lua, ref, "forever", 30);
    /* A long pending expiry (2 s) must be pulled in for a short budget. */
    pgw_lua_guard_arm(lua, 2000);
    pgw_lua_guard_disarm(lua);
    check_interrupted(lua, ref, "forever", 30);
    pgw_lua_free(lua);
}

static int l_test_wait(lua_State *L) { return pgw_lua_yield(L); }

/* Starts field <fn> of policy <ref> in a new thread with the wait function as argument. */
static int start(struct pgw_lua *lua, int ref, const char *fn, lua_State **co, int *co_ref,
                 unsigned budget)
{
    lua_State *L = pgw_lua_state(lua);
    *co = pgw_lua_thread_new(lua, co_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_getfield(L, -1, fn);
    lua_xmove(L, *co, 1);
    lua_pop(L, 1);
    lua_pushcfunction(*co, l_test_wait);
    err[0] = '\0';
    return pgw_lua_resume(lua, *co, 1, budget, err, sizeof(err));
}

static void test_guard_resume(void)
{
    struct pgw_lua *lua = new_state();
    if (lua == NULL)
        return;
    int ref, co_ref;
    lua_State *co;
    CHECK_INT(load(lua, "spin", spin_src, &ref), PGW_OK);
    double t0 = now_ms();
    CHECK_INT(start(lua, ref, "forever", &co, &co_ref, 40), PGW_ERR);
    CHECK(now_ms() - t0 < 400);
    CHECK_HAS(err, "policies/spin.lua:4: policy exceeded its CPU budget of 40 ms");
    CHECK_HAS(err, "stack traceback:");
    pgw_lua_unref(lua, co_ref);
    CHECK_INT(start(lua, ref, "swallow_co", &co, &co_ref, 40), PGW_ERR);
    CHECK_HAS(err, "budget of 40 ms");
    pgw_lua_unref(lua, co_ref);
    CHECK_INT(start(lua, ref, "normal", &co, &co_ref, 1000), PGW_OK);
    CHECK(lua_tonumber(co, -1) == 5000050000.0);
    pgw_lua_unref(lua, co_ref);
    CHECK_INT(lua_gettop(pgw_lua_state(lua)), 0);
    pgw_lua_free(lua);
}

/* ---- Sandbox ---- */

struct escape {
    const char *code;
    const char *expect; /* in the error message */
};

static const struct escape escapes[] = {
    {"os.execute('true')", "field 'execute'"},
    {"os.exit(1)", "field 'exit'"},
    {"os.getenv('HOME')", "field 'getenv'"},
    {"io.open('/etc/passwd')", "global 'io'"},
    {"require 'ffi'", "module 'ffi' not found"},
    {"require 'jit'", "module 'jit' not found"},
    {"require 'jit.util'", "module 'jit.util' not found"},
    {"require 'debug'", "module 'debug' not found"},
    {"require 'io'", "module 'io' not found"},
    {"require 'string.buffer'", "module 'string.buffer' not found"},
    {"require 'pgw.internal.sandbox'", "module 'pgw.internal.sandbox' not found"},
    {"require 'pgw.policies.cors'", "module 'pgw.policies.cors' not found"},
    {"require 'nosuchpolicy'", "module 'nosuchpolicy' not found"},
    {"local x = ffi.C", "global 'ffi'"},
    {"jit.off()", "global 'jit'"},
    {"debug.getinfo(1)", "global 'debug'"},
    {"debug.sethook()", "global 'debug'"},
    {"string.dump(function() end)", "field 'dump'"},
    {"local d = ('').dump; d(function() end)", "local 'd'"},
    {"load('\\27LJ\\2')", "global 'load'"},
    {"loadstring('return 1')", "global 'loadstring'"},
    {"dofile('/etc/passwd')", "global 'dofile'"},
    {"loadfile('/etc/passwd')", "global 'loadfile'"},
    {"getfenv(0)", "global 'getfenv'"},
    {"setfenv(0, {})", "global 'setfenv'"},
    {"newproxy(true)", "global 'newproxy'"},
    {"module('x')", "global 'module'"},
    {"print('x')", "global 'print'"},
    {"gcinfo()", "global 'gcinfo'"},
    {"package.loadlib('libc.so.6', 'system')", "global 'package'"},
    {"setmetatable(getmetatable(''), {})", "cannot change a protected metatable"},
    {"getmetatable('').__index = {}", "read-only table (field '__index')"},
    {"getmetatable('').__index.upper = nil", "read-only table (field 'upper')"},
    {"rawset(getmetatable(''), '__index', {})", "rawset: table is read-only"},
    {"collectgarbage('stop')", "only \"count\""},
    {"collectgarbage()", "only \"count\""},
    {"collectgarbage('collect')", "only \"count\""},
    {"local pgw = require 'pgw'; pgw.version = 'x'", "read-only table (field 'version')"},
    {"local pgw = require 'pgw'; pgw.policy.check = nil", "read-only table (field 'check')"},
    {"local pgw = require 'pgw'; rawset(pgw, 'version', 'x')", "rawset: table is read-only"},
    {"local pgw = require 'pgw'; rawset(pgw.policy, 'check', 1)", "rawset: table is read-only"},
    {"local pgw = require 'pgw'; table.insert(pgw, 1)", "table.insert: table is read-only"},
    {"local pgw = require 'pgw'; table.insert(pgw.policy.STAGES, 'x')", "table.insert: table is"},
    {"local pgw = require 'pgw'; table.remove(pgw.policy.STAGES)", "table.remove: table is"},
    {"local pgw = require 'pgw'; table.sort(pgw.policy.STAGES)", "table.sort: table is read-only"},
    {"local pgw = require 'pgw'; setmetatable(pgw, nil)", "cannot change a protected metatable"},
    {"local pgw = require 'pgw'; getmetatable(pgw).__index = {}", "a boolean value"},
    {"table.move({1}, 1, 1, 2)", "field 'move'"},
    {"math.randomseed(1)", "field 'randomseed'"},
    {"coroutine.yield()", "not inside a coroutine created by the policy"},
    {"coroutine.resume(coroutine.running())", "bad argument #1 to 'resume'"},
};

static void test_sandbox_escapes(void)
{
    struct pgw_lua *lua = new_state();
    if (lua == NULL)
        return;
    char src[512];
    for (size_t i = 0; i < PGW_ARRAY_LEN(escapes); i++) {
        /* At load time (the chunk itself) and at run time (a stage function). */
        int ref;
        snprintf(src, sizeof(src), "%s\nreturn {}\n", escapes[i].code);
        if (load(lua, "escape", src, &ref) != PGW_ERR || !has(err, escapes[i].expect)) {
            fprintf(stderr, "FAIL %s: load `%s`: \"%s\"\n", test_current, escapes[i].code, err);
            test_current_failed = 1;
        }
        CHECK(ref == LUA_NOREF);
        snprintf(src, sizeof(src), "return { run = function()\n%s\nend }\n", escapes[i].code);
        CHECK_INT(load(lua, "escape", src, &ref), PGW_OK);
        if (call(lua, ref, "run", 1000, NULL) != PGW_ERR || !has(err, escapes[i].expect) ||
            !has(err, "policies/escape.lua:2:")) {
            fprintf(stderr, "FAIL %s: run `%s`: \"%s\"\n", test_current, escapes[i].code, err);
            test_current_failed = 1;
        }
        pgw_lua_unref(lua, ref);
    }
    CHECK_INT(lua_gettop(pgw_lua_state(lua)), 0);
    pgw_lua_free(lua);
}

/* What a policy may use works, and what one policy changes is its own. */
static void test_sandbox_isolation(void)
{
    struct pgw_lua *lua = new_state();
    if (lua == NULL)
        return;
    int a, b, c;
    CHECK_INT(load(lua, "a",
                   "string.upper = nil; table.concat = nil; math.floor = nil\n"
                   "leaked = 'a global of a'\n"
                   "local up = ('x'):upper()  -- methods use the real string table\n"
                   "assert(getmetatable('').__index.upper('y') == 'Y')\n"
                   "assert(_G.leaked and _G == _G._G)\n"
                   "local t = {}; rawset(t, 1, 2); table.insert(t, 3); table.sort(t)\n"
                   "setmetatable(t, { __index = function() return 'mt' end })\n"
                   "assert(t.z == 'mt' and t[2] == 3)\n"
                   "return { up = up, state = { n = 1 }, get = function() return 5 end }\n",
                   &a),
              PGW_OK);
    CHECK_HAS(err, "");
    CHECK_INT(load(lua, "b",
                   "assert(string.upper('a') == 'A', 'string.upper survived a')\n"
                   "assert(table.concat({1, 2}) == '12' and math.floor(1.5) == 1)\n"
                   "assert(leaked == nil, 'globals are per policy')\n"
                   "local a = require 'a'\n"
                   "assert(a.up == 'X' and a.get() == 5 and a.state.n == 1)\n"
                   "assert(require 'a' == a)\n"
                   "local ok, e = pcall(function() a.state.n = 2 end)\n"
                   "assert(not ok and e:find('read%-only'), e)\n"
                   "ok, e = pcall(function() a.get = nil end)\n"
                   "assert(not ok)\n"
                   "assert(collectgarbage('count') > 0)\n"
                   "assert(os.time() > 0 and os.clock() >= 0 and os.date('!%Y') >= '2024')\n"
                   "assert(bit.band(6, 3) == 2 and math.max(1, 2) == 2)\n"
                   "assert(select('#', unpack({1, 2, 3})) == 3 and tonumber('7') == 7)\n"
                   "assert(_VERSION and type(next) == 'function' and _POLICY == 'b')\n"
                   "return { ok = function() return 1 end }\n",
                   &b),
              PGW_OK);
    CHECK_HAS(err, "");
    /* A changed in its own table stays invisible to c too. */
    CHECK_INT(load(lua, "c",
                   "assert(string.upper and table.concat and math.floor)\n"
                   "return {}\n",
                   &c),
              PGW_OK);
    CHECK_HAS(err, "");
    /* Reloading "a" replaces what `require "a"` returns for policies loaded afterwards. */
    int a2;
    CHECK_INT(load(lua, "a", "return { version = 2 }\n", &a2), PGW_OK);
    int d;
    CHECK_INT(load(lua, "d", "assert(require('a').version == 2) return {}\n", &d), PGW_OK);
    CHECK_HAS(err, "");
    /* A failed load keeps the previous registration. */
    CHECK_INT(load(lua, "a", "error('broken')\n", &d), PGW_ERR);
    CHECK_INT(load(lua, "d", "assert(require('a').version == 2) return {}\n", &d), PGW_OK);
    CHECK_HAS(err, "");
    /* A policy removed from the set cannot be required any more. */
    CHECK_INT(pgw_lua_forget_policy(lua, "a"), PGW_OK);
    CHECK_INT(load(lua, "d", "require 'a'\nreturn {}\n", &d), PGW_ERR);
    CHECK_HAS(err, "policies/d.lua:1: module 'a' not found");
    CHECK_INT(lua_gettop(pgw_lua_state(lua)), 0);
    pgw_lua_free(lua);
}

/* ---- Loading errors ---- */

static void test_load_errors(void)
{
    struct pgw_lua *lua = new_state();
    if (lua == NULL)
        return;
    int ref;
    /* Bytecode, however it arrives. */
    static const char bc[] = "\x1bLJ\x02\x00\x00";
    CHECK_INT(pgw_lua_load_policy(lua, "bc", "policies/bc.lua", bc, sizeof(bc) - 1, 0, 1000, &ref,
                                  err, sizeof(err)),
              PGW_ERR);
    CHECK_HAS(err, "policies/bc.lua: bytecode is not accepted");
    /* Bytecode made by this very LuaJIT from a real chunk. */
    lua_State *L = pgw_lua_state(lua);
    CHECK_INT(luaL_loadstring(L, "return {}"), 0);
    struct dump d = {0};
    CHECK_INT(lua_dump(L, on_dump, &d), 0);
    lua_settop(L, 0);
    CHECK(d.len > 4);
    CHECK_INT(pgw_lua_load_policy(lua, "bc", "policies/bc.lua", d.buf, d.len, 0, 1000, &ref, err,
                                  sizeof(err)),
              PGW_ERR);
    CHECK_HAS(err, "bytecode is not accepted");
    CHECK(ref == LUA_NOREF);

    CHECK_INT(load(lua, "syntax", "return {\n  x = = 1,\n}\n", &ref), PGW_ERR);
    CHECK_HAS(err, "policies/syntax.lua:2:");
    CHECK_INT(load(lua, "rt", "local t = nil\nreturn t.x\n", &ref), PGW_ERR);
    CHECK_HAS(err, "policies/rt.lua:2: attempt to index local 't' (a nil value)");
    CHECK_HAS(err, "stack traceback:");
    CHECK_INT(load(lua, "deep", "local function f() return 1 + f() end\nf()\nreturn {}\n", &ref),
              PGW_ERR);
    CHECK_HAS(err, "stack overflow");
    CHECK_INT(load(lua, "num", "return 42\n", &ref), PGW_ERR);
    CHECK_HAS(err, "policies/num.lua: a policy must return a table, got number");
    CHECK_INT(load(lua, "errobj", "error({})\n", &ref), PGW_ERR);
    CHECK_HAS(err, "(error object is a table value)");
    CHECK_INT(load(lua, "loop", "while true do end\n", &ref), PGW_ERR);
    CHECK_HAS(err, "policies/loop.lua:1: policy exceeded its CPU budget of 1000 ms");
    CHECK_INT(lua_gettop(L), 0);
    CHECK_INT(load(lua, "fine", "return {}\n", &ref), PGW_OK);
    pgw_lua_free(lua);
}

/* ---- Coroutines and bridge yields ---- */

static const char *const co_src =
    "return {\n"
    "  gen = function()\n"
    "    local g = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)\n"
    "    return g() + g() + g()\n"
    "  end,\n"
    "  direct = function(wait) return wait() + 1 end,\n"
    "  nested = function(wait)\n"
    "    local co = coroutine.create(function(a)\n"
    "      local inner = coroutine.wrap(function() return wait() end)\n"
    "      local r = inner()\n"
    "      assert(coroutine.isyieldable())\n"
    "      local b = coroutine.yield(a + r)\n"
    "      return b * 2\n"
    "    end)\n"
    "    local ok, v = coroutine.resume(co, 1)\n"
    "    assert(ok, v)\n"
    "    assert(coroutine.status(co) == 'suspended' and not coroutine.isyieldable())\n"
    "    local ok2, w = coroutine.resume(co, 10)\n"
    "    assert(ok2 and coroutine.status(co) == 'dead')\n"
    "    return v * 1000 + w\n"
    "  end,\n"
    "  in_pcall = function(wait) local ok, v = pcall(wait) return ok and v end,\n"
    "  hijack = function() return coroutine.resume(coroutine.running()) end,\n"
    "  top_yield = function() coroutine.yield(1) end,\n"
    "}\n";

static void test_coroutines(void)
{
    struct pgw_lua *lua = new_state();
    if (lua == NULL)
        return;
    int ref, co_ref;
    lua_State *co;
    CHECK_INT(load(lua, "co", co_src, &ref), PGW_OK);
    double v = 0;
    CHECK_INT(call(lua, ref, "gen", 1000, &v), PGW_OK);
    CHECK(v == 6);

    /* A bridge wait in the request's thread: AGAIN, then the resume values are its results. */
    CHECK_INT(start(lua, ref, "direct", &co, &co_ref, 1000), PGW_AGAIN);
    CHECK_INT(lua_gettop(co), 0);
    lua_pushnumber(co, 41);
    CHECK_INT(pgw_lua_resume(lua, co, 1, 1000, err, sizeof(err)), PGW_OK);
    CHECK(lua_tonumber(co, -1) == 42);
    pgw_lua_unref(lua, co_ref);

    /* Inside two levels of policy coroutines: the wait reaches C, the results come back down,
     * and the policy's own yields still go to its resumer. */
    CHECK_INT(start(lua, ref, "nested", &co, &co_ref, 1000), PGW_AGAIN);
    lua_pushnumber(co, 5);
    CHECK_INT(pgw_lua_resume(lua, co, 1, 1000, err, sizeof(err)), PGW_OK);
    CHECK_HAS(err, "");
    CHECK(lua_tonumber(co, -1) == 6 * 1000 + 20);
    pgw_lua_unref(lua, co_ref);

    /* Lua-level pcall around a wait. */
    CHECK_INT(start(lua, ref, "in_pcall", &co, &co_ref, 1000), PGW_AGAIN);
    lua_pushnumber(co, 9);
    CHECK_INT(pgw_lua_resume(lua, co, 1, 1000, err, sizeof(err)), PGW_OK);
    CHECK(lua_tonumber(co, -1) == 9);
    pgw_lua_unref(lua, co_ref);

    /* The request's thread is not the policy's to resume or yield. */
    CHECK_INT(start(lua, ref, "hijack", &co, &co_ref, 1000), PGW_ERR);
    CHECK_HAS(err, "not a coroutine created by this policy");
    pgw_lua_unref(lua, co_ref);
    CHECK_INT(start(lua, ref, "top_yield", &co, &co_ref, 1000), PGW_ERR);
    CHECK_HAS(err, "not inside a coroutine created by the policy");
    pgw_lua_unref(lua, co_ref);

    /* A wait at load time (inside lua_pcall) cannot suspend anything. */
    int bad;
    CHECK_INT(load(lua, "loadwait",
                   "local co = coroutine.wrap(function() coroutine.yield() end)\n"
                   "co()\n"
                   "return {}\n",
                   &bad),
              PGW_OK);
    CHECK_INT(lua_gettop(pgw_lua_state(lua)), 0);
    pgw_lua_free(lua);
}

/* ---- Pattern matching (lua_pattern.c) ---- */

/* Runs every (function, subject, pattern[, init/plain/repl/max]) combination through the builtin
 * string library and through ours (argument P), in the same call site so that error locations
 * and function names agree; returns the number of cases and the mismatches. */
static const char *const conformance_src =
    "local P = ...\n"
    "local function ser(ok, ...)\n"
    "    local t = { ok and \"ok\" or \"err\" }\n"
    "    for i = 1, select(\"#\", ...) do\n"
    "        local v = select(i, ...)\n"
    "        t[#t + 1] = type(v) .. \":\" .. tostring(v)\n"
    "    end\n"
    "    return table.concat(t, \"|\")\n"
    "end\n"
    "local function run(f, ...) return f(...) end\n"
    "local function gm(f, s, p)\n"
    "    local out, n = {}, 0\n"
    "    for a, b, c in run(f, s, p) do\n"
    "        n = n + 1\n"
    "        out[#out + 1] = tostring(a) .. \",\" .. tostring(b) .. \",\" .. tostring(c)\n"
    "        if n > 200 then break end\n"
    "    end\n"
    "    return table.concat(out, \";\")\n"
    "end\n"
    "local function rec(...)\n"
    "    local t = {}\n"
    "    for i = 1, select(\"#\", ...) do t[i] = type((select(i, ...))) .. \":\" .. tostring((select(i, ...))) end\n"
    "    return \"<\" .. table.concat(t, \",\") .. \">\"\n"
    "end\n"
    "local subjects = { \"\", \"a\", \"abc\", \"aaa\", \"hello world\", \"  trim me  \", \"key=value; k2=v2\",\n"
    "    \"THE (quick) [brown] {fox}\", \"f(a(b)c)d\", \"x = 10, y = 20\", \"\\0a\\0b\", \"caf\\195\\169 123 0x1F\",\n"
    "    \"Content-Type: text/html; charset=utf-8\", \"a.b.c\", \"%d%%\", \"THE UP lower Mixed\",\n"
    "    \"line1\\nline2\\r\\nline3\", \"aXbXXc\", \"((()))\", \"$^\", \"ab]cd\", \"a-b-c\", \"\\t\\v\\f tab\" }\n"
    "local patterns = { \"\", \"a\", \"a*\", \"a+\", \"a-\", \"a?\", \".\", \".-\", \".*\", \"^a\", \"a$\", \"^$\", \"^(.-)$\",\n"
    "    \"%a+\", \"%A+\", \"%d+\", \"%D\", \"%l+\", \"%u+\", \"%s+\", \"%S+\", \"%w+\", \"%W\", \"%x+\", \"%p+\", \"%c\", \"%z\",\n"
    "    \"%Z+\", \"%g+\", \"[abc]\", \"[^abc]+\", \"[a-z]+\", \"[%a%d]+\", \"[%]]\", \"[]]\", \"[^]]+\", \"[a-]\", \"[-a]\",\n"
    "    \"[%-]\", \"(%w+)=(%w+)\", \"()a()\", \"()\", \"(a*(.)%w(%s*))\", \"%b()\", \"%b[]\", \"%b{}\", \"%bxy\",\n"
    "    \"%f[%w]%w+\", \"%f[%W]\", \"%f[%a]\", \"%f[^%z]\", \"%f[%z]\", \"(.)%1\", \"(a)(b)?\", \"[%w_]+:%s*(.-)%s*$\",\n"
    "    \"^%s*(.-)%s*$\", \"(%d+)%.(%d+)\", \"0x(%x+)\", \"%$\", \"$a\", \"a$b\", \"^^\", \"%^\", \"[^%s]+\", \"%.\",\n"
    "    \"(h)(e)(l)(l)(o)\", \"k(%d?)=\", \"[%a-]+\", \"X*\", \"X-c\", \"(X+)\", \"%S-$\", \"\\195.\", \"[\\128-\\255]+\",\n"
    "    \"a.-b\", \"(()a)\", \".-(%d)\", \"[a-c-e]\", \"[%d-z]+\", \"%%\" }\n"
    "local errs = { \"%\", \"a%\", \"[a\", \"[^\", \"[a%\", \"[%\", \"%b\", \"%ba\", \"%f\", \"%fa\", \"(\", \"(()\", \")\",\n"
    "    \"a)\", \"%1\", \"(a)%2\", \"(a%1)\", \"[]\", \"[^]\", \"((((((((((((((((((((((((((((((((((a))))))))))))))))))))))))))))))))))\",\n"
    "    (\"a?\"):rep(250), (\"(a\"):rep(40), \"%g\", \"[%\", \"%f[\", \"%f[a\" }\n"
    "local repls = { \"\", \"x\", \"%0\", \"%1\", \"<%0>\", \"%%\", \"%2\", \"%a\", \"%\", \"[%1|%0]\", 7,\n"
    "    { a = \"A\", hello = 1, world = false, abc = true }, rec, function() return nil end,\n"
    "    function() return {} end, function(a) return a .. a end }\n"
    "local cases, bad, n = {}, {}, 0\n"
    "local function check(desc, a, b)\n"
    "    n = n + 1\n"
    "    if a ~= b then bad[#bad + 1] = desc .. \"\\n   builtin: \" .. a .. \"\\n   ours:    \" .. b end\n"
    "end\n"
    "local function q(x) return string.format(\"%q\", tostring(x)) end\n"
    "local all = {}\n"
    "for _, p in ipairs(patterns) do all[#all + 1] = p end\n"
    "for _, p in ipairs(errs) do all[#all + 1] = p end\n"
    "for _, p in ipairs(all) do\n"
    "    for _, s in ipairs(subjects) do\n"
    "        local d = q(s) .. \" \" .. q(p)\n"
    "        check(\"find \" .. d, ser(pcall(run, string.find, s, p)), ser(pcall(run, P.find, s, p)))\n"
    "        check(\"match \" .. d, ser(pcall(run, string.match, s, p)), ser(pcall(run, P.match, s, p)))\n"
    "        check(\"gmatch \" .. d, ser(pcall(gm, string.gmatch, s, p)), ser(pcall(gm, P.gmatch, s, p)))\n"
    "        for _, init in ipairs({ 2, -3, 0, 100, -100 }) do\n"
    "            check(\"find init \" .. init .. \" \" .. d, ser(pcall(run, string.find, s, p, init)),\n"
    "                ser(pcall(run, P.find, s, p, init)))\n"
    "            check(\"find plain \" .. init .. \" \" .. d, ser(pcall(run, string.find, s, p, init, true)),\n"
    "                ser(pcall(run, P.find, s, p, init, true)))\n"
    "            check(\"match init \" .. init .. \" \" .. d, ser(pcall(run, string.match, s, p, init)),\n"
    "                ser(pcall(run, P.match, s, p, init)))\n"
    "        end\n"
    "        for ri, r in ipairs(repls) do\n"
    "            check(\"gsub r\" .. ri .. \" \" .. d, ser(pcall(run, string.gsub, s, p, r)),\n"
    "                ser(pcall(run, P.gsub, s, p, r)))\n"
    "        end\n"
    "        for _, m in ipairs({ 0, 1, 2, -1, 1.5 }) do\n"
    "            check(\"gsub max \" .. m .. \" \" .. d, ser(pcall(run, string.gsub, s, p, \"<%0>\", m)),\n"
    "                ser(pcall(run, P.gsub, s, p, \"<%0>\", m)))\n"
    "        end\n"
    "    end\n"
    "end\n"
    "-- argument errors and odd types\n"
    "local odd = {\n"
    "    { \"find\", 123, 2 }, { \"find\", \"a1b2\", 2 }, { \"find\", nil, \"a\" }, { \"find\", \"a\", nil },\n"
    "    { \"find\", \"abc\", \"b\", \"x\" }, { \"find\", \"abc\", \"b\", \"2\" }, { \"match\", {}, \"a\" },\n"
    "    { \"gsub\", \"abc\", \"b\" }, { \"gsub\", \"abc\", \"b\", true }, { \"gsub\", \"abc\", \"b\", \"x\", \"y\" },\n"
    "    { \"gsub\", 12345, 3, 9 }, { \"gmatch\", \"abc\", nil }, { \"find\", \"a\\0b\", \"\\0\" },\n"
    "    { \"find\", \"a\\0b\", \"\\0\", 1, true }, { \"find\", \"a\\0b.\", \"b\\0.\" }, { \"find\", \"ab.\", \"b.\\0\" },\n"
    "    { \"match\", \"a\\0b\", \"%z\" }, { \"gsub\", \"a\\0b\", \"%z\", \"0\" }, { \"find\", \"aaa\", \"a\", 1.9 },\n"
    "    { \"find\", (\"a\"):rep(300), (\"a-\"):rep(250) }, { \"match\", (\"a\"):rep(300), (\"a?\"):rep(250) },\n"
    "    { \"find\", (\"a\"):rep(300), (\"a-\"):rep(199) .. \"$\" }, { \"gsub\", (\"ab\"):rep(50), \"(a)(b)\", \"%2%1\" },\n"
    "    { \"match\", (\"x\"):rep(40), (\"(x)\"):rep(32) }, { \"match\", (\"x\"):rep(40), (\"(x)\"):rep(33) },\n"
    "}\n"
    "for i, c in ipairs(odd) do\n"
    "    local f = c[1]\n"
    "    check(\"odd \" .. i .. \" \" .. f, ser(pcall(run, string[f], c[2], c[3], c[4], c[5])),\n"
    "        ser(pcall(run, P[f], c[2], c[3], c[4], c[5])))\n"
    "end\n"
    "return n, table.concat(bad, \"\\n\")\n";

static void test_pattern_conformance(void)
{
    struct pgw_lua *lua = new_state();
    if (lua == NULL)
        return;
    lua_State *L = pgw_lua_state(lua);
    CHECK_INT(luaL_loadbuffer(L, conformance_src, strlen(conformance_src), "=conformance"), 0);
    pgw_lua_pattern_push(L);
    int rc = pgw_lua_call_guarded(lua, 1, 2, 120000, err, sizeof(err));
    CHECK_INT(rc, PGW_OK);
    if (rc != PGW_OK) {
        fprintf(stderr, "  %s\n", err);
    } else {
        CHECK(lua_tonumber(L, -2) > 90000);
        const char *bad = lua_tostring(L, -1);
        if (bad == NULL || bad[0] != '\0') {
            fprintf(stderr, "FAIL %s: mismatches:\n%.4000s\n", test_current, bad ? bad : "?");
            test_current_failed = 1;
        }
    }
    lua_settop(L, 0);
    pgw_lua_free(lua);
}

static const char *const pattern_src =
    "local s, p = ('a'):rep(600), ('a*'):rep(3) .. 'b'\n"
    "return {\n"
    "  find = function() local i = string.find(s, p) return i end,\n"
    "  method = function() local m = s:match(p) return m end,\n"
    "  gsub = function() return (string.gsub(s, p, 'x')) end,\n"
    "  gmatch = function() for m in s:gmatch(p) do end end,\n"
    "  swallow = function() while true do pcall(string.find, s, p) end end,\n"
    "  balance = function() return string.find(('('):rep(3e5), '%b()%b()') end,\n"
    "  plain = function() local h = ('a'):rep(5e5) return string.find(h:rep(2), h .. 'b', 1, true) end,\n"
    "  tail = function() return string.find(s, p) end,\n"
    "  deep = function() return string.find(('a'):rep(300), ('a-'):rep(250)) end,\n"
    "  normal = function()\n"
    "    local k, v = string.match('Content-Type: text/html', '^([%w-]+):%s*(.-)%s*$')\n"
    "    return k == 'Content-Type' and v == 'text/html' and 1 or 0 end,\n"
    "  same = function()\n"
    "    return ('').find == string.find and ('').gsub == string.gsub and 1 or 0 end,\n"
    "  fns = function() return string.find end,\n"
    "}\n";

static void test_pattern_guard(void)
{
    struct pgw_lua *lua = new_state();
    if (lua == NULL)
        return;
    lua_State *L = pgw_lua_state(lua);
    int ref;
    CHECK_INT(load(lua, "pat", pattern_src, &ref), PGW_OK);

    /* 28.9 s with the builtin find; stopped within budget * 10 now. */
    check_interrupted(lua, ref, "find", 30);
    CHECK_HAS(err, "policies/pat.lua:3: policy exceeded its CPU budget of 30 ms");
    check_interrupted(lua, ref, "method", 30);
    CHECK_HAS(err, "policies/pat.lua:4: policy exceeded its CPU budget of 30 ms");
    check_interrupted(lua, ref, "gsub", 30);
    CHECK_HAS(err, "policies/pat.lua:5:");
    check_interrupted(lua, ref, "gmatch", 30);
    CHECK_HAS(err, "policies/pat.lua:6:");
    check_interrupted(lua, ref, "swallow", 30);
    check_interrupted(lua, ref, "balance", 30);
    check_interrupted(lua, ref, "plain", 30);
    check_interrupted(lua, ref, "tail", 30); /* no Lua frame left to name */

    CHECK_INT(call(lua, ref, "deep", 1000, NULL), PGW_ERR);
    CHECK_HAS(err, "pattern too complex");

    double v = 0;
    CHECK_INT(call(lua, ref, "normal", 1000, &v), PGW_OK); /* usable afterwards */
    CHECK(v == 1);
    CHECK_INT(call(lua, ref, "same", 1000, &v), PGW_OK); /* methods are the guarded ones too */
    CHECK(v == 1);

    /* The policy's string.find is ours; trusted code keeps the builtin. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_getfield(L, -1, "fns");
    lua_call(L, 0, 1);
    lua_getglobal(L, "string");
    lua_getfield(L, -1, "find");
    CHECK(lua_iscfunction(L, -3) && !lua_rawequal(L, -1, -3));
    lua_settop(L, 0);
    pgw_lua_free(lua);
}

int main(void)
{
    RUN(test_new_and_sdk);
    RUN(test_memory_cap);
    RUN(test_memory_reserve);
    RUN(test_guard_loops);
    RUN(test_guard_cannot_be_swallowed);
    RUN(test_guard_lazy_timer);
    RUN(test_guard_resume);
    RUN(test_sandbox_escapes);
    RUN(test_sandbox_isolation);
    RUN(test_load_errors);
    RUN(test_coroutines);
    RUN(test_pattern_conformance);
    RUN(test_pattern_guard);
    return TEST_REPORT("lua");
}
