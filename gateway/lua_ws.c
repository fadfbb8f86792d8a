/* lua_ws.c: pgw.ws, what a ws_connect or ws_message policy may do to its WebSocket connection
 * (docs/websocket.md): its id, drop the message, reply to its sender, close the connection. The
 * functions act on the tunnel of the running task (wsproxy.h); they never wait. */
#include "lua_task.h"
#include "ws.h"
#include "wsproxy.h"

#define WS_ACT (PGW_STAGE_WS_CONNECT | PGW_STAGE_WS_MESSAGE)

static struct pgw_task *cur_ws(lua_State *L, const char *fname, unsigned stages)
{
    pgw_bridge_check(L, fname, stages);
    struct pgw_task *t = pgw_bridge_current()->task;
    if (t == NULL || t->ws == NULL)
        luaL_error(L, "%s: no WebSocket connection here", fname);
    return t;
}

static int is_utf8(const char *s, size_t len)
{
    struct pgw_utf8 u;
    pgw_utf8_init(&u);
    return pgw_utf8_feed(&u, (const uint8_t *)s, len) == PGW_OK && pgw_utf8_complete(&u);
}

/* pgw.ws.drop(): the current message is not forwarded; later policies do not run. */
static int l_ws_drop(lua_State *L)
{
    struct pgw_task *t = cur_ws(L, "pgw.ws.drop", PGW_STAGE_WS_MESSAGE);
    t->ws_stop = 1;
    return 0;
}

/* pgw.ws.reply(data [, opcode]): a message to the sender of the current message (the client in
 * ws_connect). */
static int l_ws_reply(lua_State *L)
{
    static const char fname[] = "pgw.ws.reply";
    struct pgw_task *t = cur_ws(L, fname, WS_ACT);
    size_t len;
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "%s: bad argument #1 (string expected, got %s)", fname,
                          luaL_typename(L, 1));
    const char *data = lua_tolstring(L, 1, &len);
    const char *op = luaL_optstring(L, 2, "text");
    int binary = strcmp(op, "binary") == 0;
    if (!binary && strcmp(op, "text") != 0)
        return luaL_error(L, "%s: opcode must be \"text\" or \"binary\", got \"%s\"", fname, op);
    if (!binary && !is_utf8(data, len))
        return luaL_error(L, "%s: a text message must be UTF-8", fname);
    int to_client = pgw_bridge_current()->stage == PGW_STAGE_WS_CONNECT || t->ws_inbound;
    pgw_ws_tunnel_send(t->ws, to_client, binary ? PGW_WS_OP_BINARY : PGW_WS_OP_TEXT, data, len);
    return 0;
}

/* pgw.ws.close([code [, reason]]): both sides get a close; the chain stops. */
static int l_ws_close(lua_State *L)
{
    static const char fname[] = "pgw.ws.close";
    struct pgw_task *t = cur_ws(L, fname, WS_ACT);
    lua_Integer code = PGW_WS_CLOSE_NORMAL;
    if (!lua_isnoneornil(L, 1)) {
        if (lua_type(L, 1) != LUA_TNUMBER || lua_tonumber(L, 1) != (lua_Number)lua_tointeger(L, 1))
            return luaL_error(L, "%s: bad argument #1 (integer close code expected)", fname);
        code = lua_tointeger(L, 1);
    }
    if (!pgw_ws_close_code_valid((int)code))
        return luaL_error(L, "%s: %d is not a close code a frame may carry", fname, (int)code);
    size_t len = 0;
    const char *reason = "";
    if (!lua_isnoneornil(L, 2)) {
        if (lua_type(L, 2) != LUA_TSTRING)
            return luaL_error(L, "%s: bad argument #2 (string expected, got %s)", fname,
                              luaL_typename(L, 2));
        reason = lua_tolstring(L, 2, &len);
    }
    if (len > 123 || !is_utf8(reason, len))
        return luaL_error(L, "%s: the reason must be UTF-8 of at most 123 bytes", fname);
    pgw_ws_tunnel_close_by_policy(t->ws, (int)code, reason, len);
    t->ws_stop = 1;
    return 0;
}

/* pgw.ws.send(id, data [, opcode]): a message to the client of another (or this) connection of
 * this worker, through that connection's outbound ws_message policies. true, or nil and why. */
static int l_ws_send(lua_State *L)
{
    static const char fname[] = "pgw.ws.send";
    pgw_bridge_check(L, fname, PGW_STAGES_REQUEST | PGW_STAGE_TIMER | PGW_STAGES_WS);
    size_t id_len, len;
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "%s: bad argument #1 (connection id expected, got %s)", fname,
                          luaL_typename(L, 1));
    const char *id = lua_tolstring(L, 1, &id_len);
    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_error(L, "%s: bad argument #2 (string expected, got %s)", fname,
                          luaL_typename(L, 2));
    const char *data = lua_tolstring(L, 2, &len);
    const char *op = luaL_optstring(L, 3, "text");
    int binary = strcmp(op, "binary") == 0;
    if (!binary && strcmp(op, "text") != 0)
        return luaL_error(L, "%s: opcode must be \"text\" or \"binary\", got \"%s\"", fname, op);
    if (!binary && !is_utf8(data, len))
        return luaL_error(L, "%s: a text message must be UTF-8", fname);
    const char *err = NULL;
    if (pgw_ws_push(id, id_len, binary ? PGW_WS_OP_BINARY : PGW_WS_OP_TEXT, data, len, &err) !=
        PGW_OK) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* pgw.ws.id(): the connection's id (32 random hex digits). */
static int l_ws_id(lua_State *L)
{
    struct pgw_task *t = cur_ws(L, "pgw.ws.id", PGW_STAGES_WS);
    lua_pushstring(L, pgw_ws_tunnel_id(t->ws));
    return 1;
}

void pgw_lua_open_ws(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"id", l_ws_id},
        {"send", l_ws_send},
        {"drop", l_ws_drop},
        {"reply", l_ws_reply},
        {"close", l_ws_close},
        {NULL, NULL},
    };
    lua_createtable(L, 0, 5);
    for (const luaL_Reg *f = funcs; f->name != NULL; f++) {
        lua_pushcfunction(L, f->func);
        lua_setfield(L, -2, f->name);
    }
    lua_setfield(L, -2, "ws");
}
