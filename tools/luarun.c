/* luarun: runs a Lua file under the LuaJIT the gateway links, for the Lua specs (spec/lua). The
 * `luajit` command-line package must not be installed here (it conflicts with the LuaJIT dev
 * package nginx's Lua module needs, see the Makefile), so the specs run through this instead.
 *
 *   build/luarun spec/support/runner.lua spec/lua/cors_spec.lua
 *
 * Opens the standard libraries, sets package.path to "lua/?.lua;lua/?/init.lua;spec/support/?.lua"
 * (relative to the working directory: run it from the repository root), keeps the default
 * package.cpath (so Debian's lua-cjson is found), puts the arguments after the file in the global
 * table `arg` (arg[0] = the file, arg[1..n] = the rest) and as the chunk's varargs, and runs the
 * file. Exits 0 when it returns, 1 with the message and a traceback when it raises; os.exit from
 * the script decides the status itself.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <stdio.h>

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s file.lua [args...]\n", argv[0]);
        return 2;
    }
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        fprintf(stderr, "luarun: cannot create a Lua state\n");
        return 1;
    }
    luaL_openlibs(L);

    lua_getglobal(L, "package");
    lua_pushliteral(L, "lua/?.lua;lua/?/init.lua;spec/support/?.lua");
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);

    lua_createtable(L, argc - 2, 1);
    for (int i = 1; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - 1);
    }
    lua_setglobal(L, "arg");

    lua_pushcfunction(L, traceback);
    if (luaL_loadfile(L, argv[1]) != 0) {
        fprintf(stderr, "luarun: %s\n", lua_tostring(L, -1));
        lua_close(L);
        return 1;
    }
    for (int i = 2; i < argc; i++)
        lua_pushstring(L, argv[i]);
    int rc = lua_pcall(L, argc - 2, 0, 1);
    if (rc != 0) {
        fprintf(stderr, "luarun: %s\n", lua_tostring(L, -1));
        lua_close(L);
        return 1;
    }
    lua_close(L);
    return 0;
}
