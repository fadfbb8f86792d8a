/* lua_snippets.h: what the C unit tests of the SDK's C modules share (include after test.h and
 * the module under test): a capped state whose global `pgw` table holds the functions <open>
 * registers, a Lua prelude of assertion helpers, and LUA(lua, src), which runs a snippet as
 * trusted code and fails the current test with the snippet's error. */
#ifndef PGW_LUA_SNIPPETS_H
#define PGW_LUA_SNIPPETS_H

static char snippets_err[4096];

/* Lua helpers every snippet may use: eq(got, want[, what]), raises(substring, f, ...). A test
 * appends its own: static const char prelude[] = SNIPPETS_PRELUDE "function ...". */
#define SNIPPETS_PRELUDE                                                                           \
    "function eq(got, want, what)\n"                                                               \
    "  if got ~= want then\n"                                                                      \
    "    error(string.format('%s: got %q, expected %q', what or 'eq', tostring(got),\n"            \
    "      tostring(want)), 2)\n"                                                                  \
    "  end\n"                                                                                      \
    "end\n"                                                                                        \
    "function raises(sub, f, ...)\n"                                                               \
    "  local ok, e = pcall(f, ...)\n"                                                              \
    "  if ok then error('did not raise: ' .. sub, 2) end\n"                                        \
    "  if not string.find(tostring(e), sub, 1, true) then\n"                                       \
    "    error(string.format('raised %q, expected %q', tostring(e), sub), 2)\n"                    \
    "  end\n"                                                                                      \
    "end\n"

/* A state capped at <cap> with pgw = {} filled by <open>, then <prelude> run; NULL (reported)
 * on failure. */
static struct pgw_lua *snippets_state(size_t cap, void (*open)(lua_State *L), const char *prelude)
{
    struct pgw_lua *lua = pgw_lua_new(cap, snippets_err, sizeof(snippets_err));
    if (lua == NULL) {
        fprintf(stderr, "pgw_lua_new: %s\n", snippets_err);
        return NULL;
    }
    lua_State *L = pgw_lua_state(lua);
    lua_newtable(L);
    open(L);
    lua_setglobal(L, "pgw");
    if (luaL_dostring(L, prelude) != 0) {
        fprintf(stderr, "prelude: %s\n", lua_tostring(L, -1));
        pgw_lua_free(lua);
        return NULL;
    }
    return lua;
}

/* Runs <src> as trusted code; a Lua error fails the current test with its message. */
static void run_at(struct pgw_lua *lua, const char *src, int line)
{
    lua_State *L = pgw_lua_state(lua);
    if (luaL_loadbuffer(L, src, strlen(src), "=snippet") != 0 || lua_pcall(L, 0, 0, 0) != 0) {
        fprintf(stderr, "FAIL %s: %s:%d: %s\n", test_current, __FILE__, line, lua_tostring(L, -1));
        test_current_failed = 1;
    }
    lua_settop(L, 0);
}

#define LUA(lua, src) run_at((lua), (src), __LINE__)

#endif
