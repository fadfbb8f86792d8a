/* lua_ws.c: pgw.ws, what a ws_connect or ws_message policy may do to its WebSocket connection
 * (docs/websocket.md): its id, drop the message, reply to its sender, close the connection. The
 * functions act on the tunnel of the running task (wsproxy.h); they never wait. */
#include "lua_task.h"
#include "control.h"
#include "server.h"
#include "ws.h"
#include "wsproxy.h"

#include <stdlib.h>

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

/* ---- pgw.ws.send to a connection of another worker: asked through the master ---- */

#define PUSH_WAIT_MS 3000

struct push_op {
    struct pgw_wait w;      /* first: the bridge hands it back */
    uint64_t qid;
    struct event *timer;
    struct push_op *prev, *next;
};

static struct push_op *push_ops;
static uint64_t push_seq;

static void push_unlink(struct push_op *op)
{
    if (op->prev)
        op->prev->next = op->next;
    else
        push_ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    event_free(op->timer);
}

static void push_cancel(struct pgw_wait *w)
{
    struct push_op *op = (struct push_op *)w;
    push_unlink(op);
    free(op);
}

/* Wakes the waiting pgw.ws.send with its answer (status -1: no answer in time). */
static void push_finish(struct push_op *op, int status)
{
    push_unlink(op);
    struct pgw_wait *w = &op->w;
    lua_State *co = pgw_bridge_wait_thread(w);
    int n = 1;
    if (status == PGW_WS_PUSH_SENT) {
        lua_pushboolean(co, 1);
    } else {
        lua_pushnil(co);
        lua_pushstring(co, pgw_ws_push_reason(status));
        n = 2;
    }
    struct pgw_req *req = w->task->req;
    struct pgw_conn *c = req != NULL ? req->conn : NULL;
    if (c != NULL)
        pgw_conn_enter(c);
    pgw_bridge_wake(w, n);
    free(op);
    if (c != NULL)
        pgw_conn_leave(c);
}

static void on_push_timeout(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    push_finish(arg, -1);
}

void pgw_lua_ws_push_reply(uint64_t qid, int status)
{
    for (struct push_op *op = push_ops; op != NULL; op = op->next)
        if (op->qid == qid) {
            push_finish(op, status);
            return;
        }
}

/* Asks the other workers through the master; the caller waits for the answer. */
static int push_elsewhere(lua_State *L, const char *id, unsigned opcode, const char *data,
                          size_t len)
{
    struct push_op *op = pgw_calloc(1, sizeof(*op));
    op->w.cancel = push_cancel;
    op->qid = ++push_seq;
    op->timer = evtimer_new(pgw_bridge_base(), on_push_timeout, op);
    struct timeval tv = {PUSH_WAIT_MS / 1000, (PUSH_WAIT_MS % 1000) * 1000};
    evtimer_add(op->timer, &tv);
    op->next = push_ops;
    if (push_ops)
        push_ops->prev = op;
    push_ops = op;
    char *payload = pgw_malloc(33 + len);
    memcpy(payload, id, 32);
    payload[32] = (char)opcode;
    memcpy(payload + 33, data, len);
    pgw_chan_send(pgw_worker.chan, PGW_MSG_WS_PUSH, op->qid, payload, 33 + len, NULL, 0);
    free(payload);
    return pgw_bridge_wait(L, &op->w);
}

/* pgw.ws.send(id, data [, opcode]): a message to the client of a connection by id, through that
 * connection's outbound ws_message policies. true, or nil and why. A connection of another worker
 * is reached through the master: the call then waits (in the stages that may). */
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
    unsigned opcode = binary ? PGW_WS_OP_BINARY : PGW_WS_OP_TEXT;
    int r = pgw_ws_push(id, id_len, opcode, data, len);
    if (r == PGW_WS_PUSH_SENT) {
        lua_pushboolean(L, 1);
        return 1;
    }
    unsigned stage = pgw_bridge_current()->stage;
    if (r == PGW_WS_PUSH_UNKNOWN && pgw_ws_id_valid(id, id_len) && (stage & PGW_STAGES_WAIT) &&
        pgw_worker.chan != NULL && len <= 1024 * 1024) {
        pgw_bridge_check_wait(L, fname);
        return push_elsewhere(L, id, opcode, data, len);
    }
    lua_pushnil(L);
    lua_pushstring(L, pgw_ws_push_reason(r));
    return 2;
}

/* A string of the running task's connection, for the getters below (all ws stages). */
static int ws_string(lua_State *L, const char *fname,
                     const char *(*get)(const struct pgw_ws_tunnel *t))
{
    struct pgw_task *t = cur_ws(L, fname, PGW_STAGES_WS);
    lua_pushstring(L, get(t->ws));
    return 1;
}

/* pgw.ws.id(): the connection's id (32 random hex digits). pgw.ws.route(): its route's name.
 * pgw.ws.client_addr(): the client address of its handshake. */
static int l_ws_id(lua_State *L) { return ws_string(L, "pgw.ws.id", pgw_ws_tunnel_id); }
static int l_ws_route(lua_State *L) { return ws_string(L, "pgw.ws.route", pgw_ws_tunnel_route); }
static int l_ws_client_addr(lua_State *L)
{
    return ws_string(L, "pgw.ws.client_addr", pgw_ws_tunnel_client);
}

/* pgw.ws.is_close_code(code): whether a close frame may carry <code> (any stage: check_conf);
 * false comes with the sentence a config error needs. */
static int l_ws_is_close_code(lua_State *L)
{
    lua_Number n = luaL_checknumber(L, 1);
    if (n >= 0 && n <= 65535 && n == (lua_Number)(int)n && pgw_ws_close_code_valid((int)n)) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_pushfstring(L, "%s is not a close code a frame may carry (1000-1003, 1007-1014, "
                       "3000-4999)", lua_tostring(L, 1));
    return 2;
}

void pgw_lua_open_ws(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"id", l_ws_id},
        {"send", l_ws_send},
        {"drop", l_ws_drop},
        {"reply", l_ws_reply},
        {"close", l_ws_close},
        {"route", l_ws_route},
        {"client_addr", l_ws_client_addr},
        {"is_close_code", l_ws_is_close_code},
        {NULL, NULL},
    };
    lua_createtable(L, 0, 8);
    for (const luaL_Reg *f = funcs; f->name != NULL; f++) {
        lua_pushcfunction(L, f->func);
        lua_setfield(L, -2, f->name);
    }
    lua_setfield(L, -2, "ws");
}
