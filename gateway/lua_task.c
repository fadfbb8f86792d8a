/* lua_task.c: the bridge's run bookkeeping, the worker's Lua state, waits and wakes, and the
 * stage runner: one coroutine per request, reused across its stages, started and resumed only
 * with lua_resume (never lua_pcall at stage entry, STYLE §5). See lua_task.h and lua_bridge.h. */
#include "lua_task.h"
#include "json.h"
#include "log.h"
#include "server.h"
#include "ws.h"
#include "wsproxy.h"

#include <stdio.h>
#include <stdlib.h>

static struct pgw_bridge_run current;
static struct pgw_lua *worker_lua;

/* Coroutines of finished requests, kept for the next ones (a new thread costs a few hundred
 * bytes of GC work per request). Only clean ones: returned normally, empty stack. */
#define SPARE_COS 64
static struct {
    lua_State *co;
    int ref;
} spare[SPARE_COS];
static size_t num_spare;

/* ---- The current run ---- */

const struct pgw_bridge_run *pgw_bridge_current(void) { return &current; }

struct pgw_bridge_run pgw_bridge_enter(const struct pgw_bridge_run *run)
{
    struct pgw_bridge_run saved = current;
    current = *run;
    return saved;
}

void pgw_bridge_leave(const struct pgw_bridge_run *saved) { current = *saved; }

const char *pgw_bridge_stage_name(unsigned stage)
{
    switch (stage) {
    case PGW_STAGE_INIT_WORKER: return "init_worker";
    case PGW_STAGE_TIMER: return "timer";
    case PGW_STAGE_LOAD: return "load";
    case PGW_STAGE_WS_CONNECT: return "ws_connect";
    case PGW_STAGE_WS_MESSAGE: return "ws_message";
    case PGW_STAGE_WS_CLOSE: return "ws_close";
    case 0: return "none";
    default: return pgw_stage_name((enum pgw_stage)stage);
    }
}

unsigned pgw_bridge_check(lua_State *L, const char *fname, unsigned stages)
{
    if (!(current.stage & stages))
        luaL_error(L, "%s: not allowed in stage %s", fname, pgw_bridge_stage_name(current.stage));
    return current.stage;
}

struct event_base *pgw_bridge_base(void) { return pgw_worker.base; }
struct evdns_base *pgw_bridge_dns(void) { return pgw_worker.dns; }

/* ---- States ---- */

static int open_core(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded"); /* package loaded */
    lua_newtable(L);               /* package loaded core */
    pgw_lua_open_req(L);
    pgw_lua_open_util(L);
    pgw_lua_open_cache(L);
    pgw_lua_open_timer(L);
    pgw_lua_open_http(L);
    pgw_lua_open_store(L);
    pgw_lua_open_ip(L);
    pgw_lua_open_jwt(L);
    pgw_lua_open_ws(L);
    lua_setfield(L, -2, "pgw.core");
    return 0;
}

struct pgw_lua *pgw_bridge_lua_new(const struct pgw_config *config, char *err, size_t errlen)
{
    struct pgw_lua *lua = pgw_lua_new((size_t)config->lua.memory, err, errlen);
    if (lua == NULL)
        return NULL;
    lua_State *L = pgw_lua_state(lua);
    if (lua_cpcall(L, open_core, NULL) != 0) {
        snprintf(err, errlen, "lua: registering the SDK: %s", lua_tostring(L, -1));
        pgw_lua_free(lua);
        return NULL;
    }
    return lua;
}

struct pgw_lua *pgw_bridge_lua(void) { return worker_lua; }

int pgw_bridge_worker_init(const struct pgw_config *config, char *err, size_t errlen)
{
    if (worker_lua != NULL) {
        pgw_lua_set_limit(worker_lua, (size_t)config->lua.memory);
        return PGW_OK;
    }
    worker_lua = pgw_bridge_lua_new(config, err, errlen);
    return worker_lua ? PGW_OK : PGW_ERR;
}

void pgw_bridge_worker_free(void)
{
    num_spare = 0; /* the state goes, with the threads */
    pgw_lua_free(worker_lua);
    worker_lua = NULL;
}

/* ---- Waits ---- */

int pgw_bridge_wait(lua_State *L, struct pgw_wait *w)
{
    struct pgw_task *t = current.task;
    pgw_assert(t != NULL && t->wait == NULL);
    w->task = t;
    t->wait = w;
    return pgw_lua_yield(L);
}

lua_State *pgw_bridge_wait_thread(struct pgw_wait *w) { return w->task->co; }

void pgw_bridge_check_wait(lua_State *L, const char *fname)
{
    if (current.task == NULL || current.task->wait != NULL || !lua_isyieldable(L))
        luaL_error(L, "%s: cannot wait here (inside a C function such as a table.sort "
                      "comparator, or outside a request or timer)", fname);
}

int pgw_bridge_wait_reserve(struct pgw_wait *w, int n)
{
    return lua_checkstack(w->task->co, n);
}

struct push_string {
    const char *s;
    size_t len;
    int ref;
};

static int push_string_protected(lua_State *L)
{
    struct push_string *ps = lua_touserdata(L, 1);
    lua_pushlstring(L, ps->s, ps->len);
    ps->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

int pgw_bridge_push_string(struct pgw_wait *w, const char *s, size_t len)
{
    struct pgw_task *t = w->task;
    lua_State *L = pgw_lua_state(t->lua);
    struct push_string ps = {s, len, LUA_NOREF};
    if (!lua_checkstack(t->co, 1) || lua_cpcall(L, push_string_protected, &ps) != 0) {
        lua_settop(L, 0);
        lua_gc(L, LUA_GCCOLLECT, 0);
        return PGW_ERR;
    }
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, ps.ref);
    luaL_unref(L, LUA_REGISTRYINDEX, ps.ref);
    return PGW_OK;
}

static int task_step(struct pgw_task *t, int nres);

void pgw_bridge_wake(struct pgw_wait *w, int nres)
{
    struct pgw_task *t = w->task;
    pgw_assert(t->wait == w && !t->resuming);
    t->wait = NULL;
    int rc = task_step(t, nres);
    if (rc != PGW_AGAIN && t->done != NULL)
        t->done(t, rc); /* may free the task */
}

/* ---- Tasks ---- */

static const unsigned stage_bits[PGW_PS_COUNT] = {
    PGW_STAGE_REWRITE,    PGW_STAGE_ACCESS,     PGW_STAGE_HEADER_FILTER, PGW_STAGE_BODY_FILTER,
    PGW_STAGE_LOG,        PGW_STAGE_WS_CONNECT, PGW_STAGE_WS_MESSAGE,    PGW_STAGE_WS_CLOSE};

static int stage_index(unsigned stage)
{
    for (int i = 0; i < PGW_PS_COUNT; i++)
        if (stage_bits[i] == stage)
            return i;
    return -1;
}

static void task_drop_co(struct pgw_task *t)
{
    pgw_lua_unref(t->lua, t->co_ref);
    t->co = NULL;
    t->co_ref = LUA_NOREF;
}

/* Gives t's coroutine back for reuse when it is clean, else releases it. */
static void task_release_co(struct pgw_task *t)
{
    if (t->co != NULL && t->lua == worker_lua && num_spare < SPARE_COS &&
        lua_status(t->co) == 0 && lua_gettop(t->co) == 0) {
        spare[num_spare].co = t->co;
        spare[num_spare++].ref = t->co_ref;
        t->co = NULL;
        t->co_ref = LUA_NOREF;
        return;
    }
    task_drop_co(t);
}

/* Gives <t> a coroutine: a spare one of a finished request, else a new one. */
static void task_ensure_co(struct pgw_task *t)
{
    if (t->co == NULL && t->lua == worker_lua && num_spare > 0) {
        num_spare--;
        t->co = spare[num_spare].co;
        t->co_ref = spare[num_spare].ref;
    }
    if (t->co == NULL) {
        int saved = pgw_lua_reserve_open(t->lua);
        t->co = pgw_lua_thread_new(t->lua, &t->co_ref);
        pgw_lua_reserve_restore(t->lua, saved);
    }
}

/* The error of a failed run, on one line (tracebacks are multi-line). */
static void log_task_error(struct pgw_task *t, const char *err)
{
    char flat[4096];
    size_t j = 0;
    for (size_t i = 0; err[i] != '\0' && j + 4 < sizeof(flat); i++) {
        if (err[i] == '\n') {
            flat[j++] = ' ';
            flat[j++] = '|';
            flat[j++] = ' ';
        } else if (err[i] != '\t') {
            flat[j++] = err[i];
        }
    }
    flat[j] = '\0';
    if (t->req != NULL)
        pgw_log_error("policy %s: stage %s: request %s: %s", t->run.policy,
                      pgw_bridge_stage_name(t->run.stage), t->req->id, flat);
    else if (t->ws != NULL)
        pgw_log_error("policy %s: stage %s: websocket %s: %s", t->run.policy,
                      pgw_bridge_stage_name(t->run.stage), pgw_ws_tunnel_id(t->ws), flat);
    else
        pgw_log_error("policy %s: stage %s: %s", t->run.policy,
                      pgw_bridge_stage_name(t->run.stage), flat);
}

/* One slice of Lua code on t->co with <nargs> values on it. */
static int task_resume(struct pgw_task *t, int nargs)
{
    char err[4096];
    struct pgw_bridge_run saved = pgw_bridge_enter(&t->run);
    t->resuming = 1;
    unsigned budget = t->run.set != NULL ? t->run.set->budget : 100;
    int rc = pgw_lua_resume(t->lua, t->co, nargs, budget, err, sizeof(err));
    t->resuming = 0;
    pgw_bridge_leave(&saved);
    if (rc == PGW_ERR) {
        log_task_error(t, err);
        task_drop_co(t);
    }
    return rc;
}

int pgw_task_start(struct pgw_task *t, int nargs) { return task_resume(t, nargs); }

/* Pushes the next stage function with its arguments on t->co. Returns the number of arguments,
 * or -1 when the stage has no more functions. */
static int push_next(struct pgw_task *t)
{
    while (t->ci < t->num_chains) {
        const struct pgw_policy_chain *ch = t->chains[t->ci];
        if (t->ei >= ch->n) {
            t->ci++;
            t->ei = 0;
            continue;
        }
        const struct pgw_policy_entry *en = &ch->v[t->ei++];
        int fn = en->fn[t->stage_idx];
        if (fn == LUA_NOREF)
            continue;
        if (t->co != NULL && lua_status(t->co) != 0)
            task_drop_co(t); /* suspended by a wait the request ended during: never resumed */
        task_ensure_co(t);
        lua_State *co = t->co;
        int saved = pgw_lua_reserve_open(t->lua);
        lua_settop(co, 0);
        lua_rawgeti(co, LUA_REGISTRYINDEX, fn);
        lua_rawgeti(co, LUA_REGISTRYINDEX, en->conf);
        int nargs = 2;
        if (t->stage_idx >= PGW_PS_WS_CONNECT) { /* (conf), (conf, msg), (conf, info) */
            nargs = 1;
            if (t->stage_idx != PGW_PS_WS_CONNECT) {
                lua_rawgeti(co, LUA_REGISTRYINDEX, t->chunk_ref);
                nargs = 2;
            }
        } else {
            pgw_task_push_handle(t, co);
        }
        if (t->stage_idx == PGW_PS_BODY_FILTER) {
            lua_rawgeti(co, LUA_REGISTRYINDEX, t->chunk_ref);
            lua_pushboolean(co, t->run.stage_eof);
            nargs = 4;
        }
        pgw_lua_reserve_restore(t->lua, saved);
        t->run.policy = en->name;
        return nargs;
    }
    return -1;
}

/* After a stage function returned: body_filter's result replaces the chunk. */
static void take_results(struct pgw_task *t)
{
    if (t->stage_idx == PGW_PS_BODY_FILTER && lua_gettop(t->co) >= 1 &&
        lua_type(t->co, 1) == LUA_TSTRING) {
        lua_pushvalue(t->co, 1);
        lua_rawseti(t->co, LUA_REGISTRYINDEX, t->chunk_ref);
        t->chunk_changed = 1;
    }
    lua_settop(t->co, 0);
}

/* Runs stage functions from the current position. <nres> > 0 or 0: resume a waiting function
 * with that many results first (-1: start with the next function). */
static int task_step(struct pgw_task *t, int nres)
{
    for (;;) {
        int nargs = nres;
        if (nres < 0) {
            if (t->exit.status != 0 && (t->stage_idx == PGW_PS_REWRITE ||
                                        t->stage_idx == PGW_PS_ACCESS))
                return PGW_DONE;
            nargs = push_next(t);
            if (nargs < 0)
                return t->exit.status != 0 && t->stage_idx <= PGW_PS_ACCESS ? PGW_DONE : PGW_OK;
        }
        nres = -1;
        int rc = task_resume(t, nargs);
        if (rc == PGW_ERR && (t->stage_idx == PGW_PS_LOG || t->stage_idx == PGW_PS_WS_CLOSE))
            continue; /* logged; the other policies still log */
        if (rc != PGW_OK)
            return rc;
        take_results(t);
        if (t->ws_stop)
            return PGW_DONE; /* pgw.ws.drop / pgw.ws.close: the chain stops here */
    }
}

/* ---- Request tasks ---- */

struct handle {
    struct pgw_task *task; /* NULL once the request finished */
};

static void req_task_cleanup(void *arg)
{
    struct pgw_task *t = arg;
    if (t->wait != NULL) {
        struct pgw_wait *w = t->wait;
        t->wait = NULL;
        w->cancel(w);
    }
    lua_State *L = pgw_lua_state(t->lua);
    if (t->handle_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->handle_ref);
        struct handle *h = lua_touserdata(L, -1);
        if (h != NULL)
            h->task = NULL;
        lua_pop(L, 1);
    }
    pgw_lua_unref(t->lua, t->handle_ref);
    pgw_lua_unref(t->lua, t->ctx_ref);
    pgw_lua_unref(t->lua, t->chunk_ref);
    task_release_co(t);
    t->req->lua = NULL;
}

static void req_task_done(struct pgw_task *t, int rc)
{
    pgw_req_stage_done(t->req, rc);
}

static struct pgw_task *req_task(struct pgw_req *req)
{
    if (req->lua != NULL)
        return req->lua;
    struct pgw_task *t = pgw_pool_calloc(req->pool, sizeof(*t));
    t->lua = req->gen->policies->lua;
    t->co_ref = t->ctx_ref = t->handle_ref = t->chunk_ref = LUA_NOREF;
    t->req = req;
    t->done = req_task_done;
    t->run.req = req;
    t->run.task = t;
    t->run.gen = req->gen;
    t->run.set = req->gen->policies;
    req->lua = t;
    pgw_pool_defer(req->pool, req_task_cleanup, t);
    return t;
}

size_t pgw_task_chains(struct pgw_req *req, unsigned stage, const struct pgw_policy_chain **out)
{
    const struct pgw_policy_set *set = req->gen->policies;
    size_t n = 0;
    if (set == NULL)
        return 0;
    const struct pgw_policy_chain *lc = &set->listeners[req->conn->listener_index];
    if (lc->stages & stage)
        out[n++] = lc;
    if (req->route != NULL) {
        const struct pgw_policy_chain *rc =
            &set->routes[req->route - req->gen->config->routes];
        if (rc->stages & stage)
            out[n++] = rc;
    }
    return n;
}

int pgw_task_run_request_stage(struct pgw_req *req, unsigned stage, int only_listener,
                               int only_route)
{
    const struct pgw_policy_chain *chains[2];
    size_t n = pgw_task_chains(req, stage, chains);
    if (n == 0)
        return PGW_OK;
    const struct pgw_policy_set *set = req->gen->policies;
    if (only_listener && chains[0] != &set->listeners[req->conn->listener_index])
        return PGW_OK;
    if (only_listener)
        n = 1;
    if (only_route) {
        if (req->route == NULL)
            return PGW_OK;
        if (chains[0] == &set->listeners[req->conn->listener_index]) {
            if (n < 2)
                return PGW_OK;
            chains[0] = chains[1];
        }
        n = 1;
    }
    struct pgw_task *t = req_task(req);
    if (t->wait != NULL) { /* the request ended while a policy waited (log stage) */
        struct pgw_wait *w = t->wait;
        t->wait = NULL;
        w->cancel(w);
    }
    memcpy(t->chains, chains, sizeof(chains));
    t->num_chains = n;
    t->ci = t->ei = 0;
    t->stage_idx = stage_index(stage);
    t->run.stage = stage;
    return task_step(t, -1);
}

int pgw_task_body_filter(struct pgw_req *req, const char *chunk, size_t len, int eof,
                         const char **out, size_t *out_len)
{
    const struct pgw_policy_chain *chains[2];
    size_t n = pgw_task_chains(req, PGW_STAGE_BODY_FILTER, chains);
    *out = chunk;
    *out_len = len;
    if (n == 0)
        return PGW_OK;
    struct pgw_task *t = req_task(req);
    lua_State *L = pgw_lua_state(t->lua);
    /* A chunk can be larger than the reserve: allocated under protection, as a new ref. */
    struct push_string ps = {chunk, len, LUA_NOREF};
    if (lua_cpcall(L, push_string_protected, &ps) != 0) {
        lua_settop(L, 0);
        pgw_log_error("request %s: body_filter: a %zu-byte chunk does not fit in the Lua "
                      "memory cap", req->id, len);
        return PGW_ERR;
    }
    pgw_lua_unref(t->lua, t->chunk_ref);
    t->chunk_ref = ps.ref;
    memcpy(t->chains, chains, sizeof(chains));
    t->num_chains = n;
    t->ci = t->ei = 0;
    t->stage_idx = PGW_PS_BODY_FILTER;
    t->run.stage = PGW_STAGE_BODY_FILTER;
    t->run.stage_eof = eof;
    t->chunk_changed = 0;
    int rc = task_step(t, -1);
    if (rc == PGW_AGAIN) { /* cannot happen: waiting functions refuse filters */
        rc = PGW_ERR;
    }
    if (rc != PGW_OK)
        return PGW_ERR;
    if (t->chunk_changed) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->chunk_ref);
        size_t l = 0;
        const char *s = lua_tolstring(L, -1, &l);
        char *copy = pgw_pool_alloc(req->pool, l + 1);
        memcpy(copy, s, l);
        lua_pop(L, 1);
        *out = copy;
        *out_len = l;
    }
    return PGW_OK;
}

/* ---- The pgw.req handle ---- */

static const char handle_mt[] = "pgw.req";

void pgw_task_push_handle(struct pgw_task *t, lua_State *L)
{
    if (t->handle_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->handle_ref);
        return;
    }
    struct handle *h = lua_newuserdata(L, sizeof(*h));
    h->task = t;
    luaL_getmetatable(L, handle_mt);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    t->handle_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

struct pgw_task *pgw_task_from_handle(lua_State *L, int idx)
{
    struct handle *h = luaL_testudata(L, idx, handle_mt);
    if (h == NULL)
        return NULL;
    if (h->task == NULL)
        luaL_error(L, "request already finished");
    return h->task;
}

/* ---- Timer tasks ---- */

struct pgw_task *pgw_task_new_timer(struct pgw_lua *lua, struct pgw_policy_set *set,
                                    const char *policy)
{
    struct pgw_task *t = pgw_calloc(1, sizeof(*t));
    t->lua = lua;
    t->co_ref = t->ctx_ref = t->handle_ref = t->chunk_ref = LUA_NOREF;
    t->run.stage = PGW_STAGE_TIMER;
    t->run.policy = policy;
    t->run.task = t;
    t->run.set = set;
    t->run.gen = set->gen;
    task_ensure_co(t);
    return t;
}

void pgw_task_free(struct pgw_task *t)
{
    if (t == NULL)
        return;
    if (t->wait != NULL) {
        struct pgw_wait *w = t->wait;
        t->wait = NULL;
        w->cancel(w);
    }
    task_drop_co(t);
    free(t);
}

/* ---- WebSocket tasks ---- */

static void ws_task_done(struct pgw_task *t, int rc)
{
    task_release_co(t);
    pgw_ws_task_done(t->ws, rc);
}

struct pgw_task *pgw_task_ws_new(struct pgw_req *req, struct pgw_ws_tunnel *tunnel)
{
    const struct pgw_policy_chain *chains[2];
    size_t n = pgw_task_chains(req, PGW_STAGES_WS, chains);
    size_t ri = (size_t)(req->route - req->gen->config->routes);
    const struct pgw_policy_chain *actions =
        req->gen->policies != NULL ? req->gen->policies->ws_actions[ri] : NULL;
    if (n == 0 && actions == NULL)
        return NULL;
    struct pgw_task *t = pgw_calloc(1, sizeof(*t));
    t->ws_actions = actions;
    t->ws_conf = actions != NULL ? req->route->websocket : NULL;
    t->lua = req->gen->policies->lua;
    t->co_ref = t->ctx_ref = t->handle_ref = t->chunk_ref = LUA_NOREF;
    t->ws = tunnel;
    t->done = ws_task_done;
    memcpy(t->ws_chains, chains, sizeof(chains));
    t->ws_num_chains = n;
    t->run.task = t;
    t->run.gen = req->gen;
    t->run.set = req->gen->policies;
    if (req->lua != NULL && req->lua->ctx_ref != LUA_NOREF) {
        /* pgw.ctx() of the handshake becomes the connection's: a reference of its own, since
         * the handshake's log stage still reads it through the request's */
        lua_State *L = pgw_lua_state(t->lua);
        int saved = pgw_lua_reserve_open(t->lua);
        lua_rawgeti(L, LUA_REGISTRYINDEX, req->lua->ctx_ref);
        t->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        pgw_lua_reserve_restore(t->lua, saved);
    }
    return t;
}

/* Whether the connection's listener or route chain has a function of <stage>. */
static int ws_runs(const struct pgw_task *t, unsigned stage)
{
    for (size_t i = 0; i < t->ws_num_chains; i++)
        if (t->ws_chains[i]->stages & stage)
            return 1;
    return 0;
}

int pgw_task_ws_has(const struct pgw_task *t, unsigned stage)
{
    return (t->ws_actions != NULL && (stage & PGW_STAGE_WS_MESSAGE)) || ws_runs(t, stage);
}

int pgw_task_ws_has_message(const struct pgw_task *t, int inbound)
{
    return inbound ? pgw_task_ws_has(t, PGW_STAGE_WS_MESSAGE) : ws_runs(t, PGW_STAGE_WS_MESSAGE);
}

/* Runs the chains' functions of <stage> (the argument table, if any, in t->chunk_ref), then
 * <selected> (an action chain, or NULL). */
static int ws_run(struct pgw_task *t, unsigned stage, const struct pgw_policy_chain *selected)
{
    t->num_chains = 0;
    for (size_t i = 0; i < t->ws_num_chains; i++)
        if (t->ws_chains[i]->stages & stage)
            t->chains[t->num_chains++] = t->ws_chains[i];
    if (selected != NULL && selected->n > 0)
        t->chains[t->num_chains++] = selected;
    if (t->num_chains == 0)
        return PGW_OK;
    t->ci = t->ei = 0;
    t->stage_idx = stage_index(stage);
    t->run.stage = stage;
    t->ws_stop = 0;
    int rc = task_step(t, -1);
    if (rc != PGW_AGAIN)
        task_release_co(t); /* an idle connection holds no coroutine */
    return rc;
}

int pgw_task_ws_connect(struct pgw_task *t) { return ws_run(t, PGW_STAGE_WS_CONNECT, NULL); }

struct ws_msg_args {
    int inbound;
    unsigned opcode;
    const char *data;
    size_t len;
    const char *action; /* msg.action, or NULL */
    int ref;
};

#define SELECT_DEPTH 64   /* nesting accepted in a message that selects an action */

/* The index of the action that message <data,len> names in ws->actions, or ws->num_actions (the
 * default) when it is not a JSON document, lacks the field, or names no action. */
static size_t ws_select(const struct pgw_config_websocket *ws, const char *data, size_t len)
{
    struct pgw_json v;
    const char *why;
    char name[PGW_WS_ACTION_NAME_MAX];
    size_t n;
    if (pgw_json_parse_path(data, len, SELECT_DEPTH, (const char *const *)ws->selection,
                            ws->selection_depth, &v, &why) != PGW_OK ||
        pgw_json_str(&v, name, sizeof(name), &n) != PGW_OK)
        return ws->num_actions;
    for (size_t i = 0; i < ws->num_actions; i++)
        if (ws->actions[i].name_len == n && memcmp(ws->actions[i].name, name, n) == 0)
            return i;
    return ws->num_actions;
}

static int ws_msg_table(lua_State *L)
{
    struct ws_msg_args *a = lua_touserdata(L, 1);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, a->inbound ? "inbound" : "outbound");
    lua_setfield(L, -2, "direction");
    lua_pushstring(L, a->opcode == PGW_WS_OP_BINARY ? "binary" : "text");
    lua_setfield(L, -2, "opcode");
    lua_pushlstring(L, a->data, a->len);
    lua_setfield(L, -2, "data");
    if (a->action != NULL) {
        lua_pushstring(L, a->action);
        lua_setfield(L, -2, "action");
    }
    a->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

int pgw_task_ws_message(struct pgw_task *t, int inbound, unsigned opcode, const char *data,
                        size_t len)
{
    lua_State *L = pgw_lua_state(t->lua);
    const struct pgw_policy_chain *selected = NULL;
    const char *action = NULL;
    if (inbound && t->ws_actions != NULL) {
        size_t i = ws_select(t->ws_conf, data, len);
        selected = &t->ws_actions[i];
        action = i < t->ws_conf->num_actions ? t->ws_conf->actions[i].name : NULL;
    }
    if ((selected == NULL || selected->n == 0) && !ws_runs(t, PGW_STAGE_WS_MESSAGE))
        return PGW_DECLINED; /* no function for it: no table to build */
    struct ws_msg_args a = {inbound, opcode, data, len, action, LUA_NOREF};
    if (lua_cpcall(L, ws_msg_table, &a) != 0) {
        lua_settop(L, 0);
        pgw_log_error("websocket %s: ws_message: a %zu-byte message does not fit in the Lua "
                      "memory cap", pgw_ws_tunnel_id(t->ws), len);
        return PGW_ERR;
    }
    pgw_lua_unref(t->lua, t->chunk_ref);
    t->chunk_ref = a.ref;
    t->ws_inbound = inbound ? 1 : 0;
    return ws_run(t, PGW_STAGE_WS_MESSAGE, selected);
}

int pgw_task_ws_result(struct pgw_task *t, unsigned *opcode, const char **data, size_t *len)
{
    lua_State *L = pgw_lua_state(t->lua);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->chunk_ref);
    lua_getfield(L, -1, "opcode");
    const char *op = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    int binary = strcmp(op, "binary") == 0;
    int ok = binary || strcmp(op, "text") == 0;
    lua_pop(L, 1);
    lua_getfield(L, -1, "data");
    ok = ok && lua_type(L, -1) == LUA_TSTRING;
    *data = ok ? lua_tolstring(L, -1, len) : NULL; /* kept alive by the table's ref */
    lua_pop(L, 2);
    if (!ok) {
        pgw_log_error("websocket %s: ws_message: msg.opcode must be \"text\" or \"binary\" "
                      "and msg.data a string", pgw_ws_tunnel_id(t->ws));
        return PGW_ERR;
    }
    *opcode = binary ? PGW_WS_OP_BINARY : PGW_WS_OP_TEXT;
    struct pgw_utf8 u;
    pgw_utf8_init(&u);
    if (!binary && (pgw_utf8_feed(&u, (const uint8_t *)*data, *len) != PGW_OK ||
                    !pgw_utf8_complete(&u))) {
        pgw_log_error("websocket %s: ws_message: a text message set by a policy is not UTF-8",
                      pgw_ws_tunnel_id(t->ws));
        return PGW_ERR;
    }
    return PGW_OK;
}

static int ws_info_table(lua_State *L)
{
    const struct pgw_ws_close_info *in = lua_touserdata(L, 1);
    lua_createtable(L, 0, 9);
    lua_pushinteger(L, in->code);
    lua_setfield(L, -2, "code");
    lua_pushlstring(L, in->reason, in->reason_len);
    lua_setfield(L, -2, "reason");
    lua_pushstring(L, in->by);
    lua_setfield(L, -2, "by");
    lua_pushnumber(L, in->duration);
    lua_setfield(L, -2, "duration");
    lua_pushnumber(L, (lua_Number)in->messages_in);
    lua_setfield(L, -2, "messages_in");
    lua_pushnumber(L, (lua_Number)in->messages_out);
    lua_setfield(L, -2, "messages_out");
    lua_pushnumber(L, (lua_Number)in->bytes_in);
    lua_setfield(L, -2, "bytes_in");
    lua_pushnumber(L, (lua_Number)in->bytes_out);
    lua_setfield(L, -2, "bytes_out");
    lua_pushinteger(L, luaL_ref(L, LUA_REGISTRYINDEX));
    return 1;
}

void pgw_task_ws_close(struct pgw_task *t, const struct pgw_ws_close_info *info)
{
    if (t->wait != NULL) { /* a run that waited will never be resumed */
        struct pgw_wait *w = t->wait;
        t->wait = NULL;
        w->cancel(w);
    }
    if (!pgw_task_ws_has(t, PGW_STAGE_WS_CLOSE))
        return;
    lua_State *L = pgw_lua_state(t->lua);
    lua_pushcfunction(L, ws_info_table);
    lua_pushlightuserdata(L, (void *)info);
    if (lua_pcall(L, 1, 1, 0) != 0) {
        lua_settop(L, 0);
        pgw_log_error("websocket: ws_close: out of Lua memory");
        return;
    }
    int ref = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    pgw_lua_unref(t->lua, t->chunk_ref);
    t->chunk_ref = ref;
    if (ws_run(t, PGW_STAGE_WS_CLOSE, NULL) == PGW_AGAIN) /* cannot happen: nothing waits there */
        pgw_log_error("websocket: ws_close: a policy waited");
}

void pgw_task_ws_free(struct pgw_task *t)
{
    if (t == NULL)
        return;
    if (t->wait != NULL) {
        struct pgw_wait *w = t->wait;
        t->wait = NULL;
        w->cancel(w);
    }
    pgw_lua_unref(t->lua, t->ctx_ref);
    pgw_lua_unref(t->lua, t->chunk_ref);
    task_release_co(t);
    task_drop_co(t);
    free(t);
}
