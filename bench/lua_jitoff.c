/* lua_jitoff.c: what the CPU guard costs (`make lua-bench`; numbers in docs/lua.md).
 *
 * 1. The same policy functions loaded twice in one state: as a user policy (JIT off, so the
 *    guard's count hook can stop them) and as a trusted built-in (PGW_LUA_POLICY_JIT); the ratio
 *    of their run times is the price of keeping policy code interpreted.
 * 2. The fixed cost per run: pgw_lua_guard_arm + disarm, and a whole guarded call of an empty
 *    function.
 * Each figure is the best of 5 runs, in ns per loop iteration or per call.
 */
#include "../gateway/lua.c"

#include <stdio.h>

#define BUDGET_MS 600000u

static const char *const src =
    "local N = 2e7\n"
    "return {\n"
    "  sum = function() local s = 0 for i = 1, N do s = s + i end return N end,\n"
    "  arith = function() local s = 0 for i = 1, N do s = s + i % 7 end return N end,\n"
    "  float = function() local x = 0.5\n"
    "    for i = 1, N do x = x * 1.0000001 + 1e-9 end return N end,\n"
    "  calls = function() local function f(a) return a + 1 end\n"
    "    local s = 0 for i = 1, N do s = f(s) end return N end,\n"
    "  strings = function() local c, n = 0, N / 20\n"
    "    for i = 1, n do local h = ('X-Header-' .. (i % 64)):lower()\n"
    "      if h:find('header', 1, true) then c = c + 1 end end return n end,\n"
    "  tables = function() local n = N / 10 local t = {}\n"
    "    for i = 1, n do t['k' .. (i % 100)] = i end return n end,\n"
    "  headers = function() local n = N / 20\n"
    "    local hs = { host = 'a', ['user-agent'] = 'b', accept = '*/*', apikey = 'k' }\n"
    "    local c = 0\n"
    "    for i = 1, n do local key = hs.apikey\n"
    "      if key and #key > 0 and key:sub(1, 1) == 'k' then c = c + 1 end\n"
    "      for k, v in pairs(hs) do if k:byte(1) == 97 then c = c + #v end end end\n"
    "    return n end,\n"
    "  empty = function() end,\n"
    "}\n";

static char err[4096];

static double run(struct pgw_lua *lua, int ref, const char *fn, double *iters)
{
    lua_State *L = pgw_lua_state(lua);
    double best = 1e300;
    for (int r = 0; r < 5; r++) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
        lua_getfield(L, -1, fn);
        lua_remove(L, -2);
        uint64_t t0 = mono_ns();
        if (pgw_lua_call_guarded(lua, 0, 1, BUDGET_MS, err, sizeof(err)) != PGW_OK) {
            fprintf(stderr, "%s: %s\n", fn, err);
            exit(1);
        }
        double ns = (double)(mono_ns() - t0);
        *iters = lua_tonumber(L, -1);
        lua_settop(L, 0);
        if (ns < best)
            best = ns;
    }
    return best / *iters;
}

int main(void)
{
    struct pgw_lua *lua = pgw_lua_new(256u * 1024 * 1024, err, sizeof(err));
    if (lua == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    int off, on;
    if (pgw_lua_load_policy(lua, "off", "bench/off.lua", src, strlen(src), 0, 1000, &off, err,
                            sizeof(err)) != PGW_OK ||
        pgw_lua_load_policy(lua, "on", "bench/on.lua", src, strlen(src), PGW_LUA_POLICY_JIT, 1000,
                            &on, err, sizeof(err)) != PGW_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const char *fns[] = {"sum", "arith", "float", "calls", "strings", "tables", "headers"};
    printf("%-8s %12s %12s %8s\n", "loop", "JIT off ns", "JIT on ns", "ratio");
    for (size_t i = 0; i < PGW_ARRAY_LEN(fns); i++) {
        double n, t_off = run(lua, off, fns[i], &n), t_on = run(lua, on, fns[i], &n);
        printf("%-8s %12.2f %12.2f %7.1fx\n", fns[i], t_off, t_on, t_off / t_on);
    }

    enum { CALLS = 1000000 };
    double best = 1e300;
    for (int r = 0; r < 5; r++) {
        uint64_t t0 = mono_ns();
        for (int i = 0; i < CALLS; i++) {
            pgw_lua_guard_arm(lua, 50);
            pgw_lua_guard_disarm(lua);
        }
        double ns = (double)(mono_ns() - t0) / CALLS;
        best = ns < best ? ns : best;
    }
    printf("guard arm+disarm: %.1f ns\n", best);

    lua_State *L = pgw_lua_state(lua);
    best = 1e300;
    for (int r = 0; r < 5; r++) {
        uint64_t t0 = mono_ns();
        for (int i = 0; i < CALLS; i++) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, off);
            lua_getfield(L, -1, "empty");
            lua_remove(L, -2);
            pgw_lua_call_guarded(lua, 0, 0, 50, err, sizeof(err));
        }
        double ns = (double)(mono_ns() - t0) / CALLS;
        best = ns < best ? ns : best;
    }
    printf("guarded call of an empty policy function: %.1f ns\n", best);

    best = 1e300;
    for (int r = 0; r < 5; r++) {
        uint64_t t0 = mono_ns();
        for (int i = 0; i < CALLS; i++) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, off);
            lua_getfield(L, -1, "empty");
            lua_remove(L, -2);
            lua_pcall(L, 0, 0, 0);
        }
        double ns = (double)(mono_ns() - t0) / CALLS;
        best = ns < best ? ns : best;
    }
    printf("plain lua_pcall of the same function: %.1f ns\n", best);
    pgw_lua_free(lua);
    return 0;
}
