/* lua_timer.c: pgw.sleep and pgw.timer (docs/sdk.md). A timer belongs to the policy set whose
 * code created it: when a newer set replaces that one, every pending timer runs once more with
 * premature = true and stops; when the set is freed its timers go with it (a waiting callback is
 * cancelled). Each run of a callback is a task (lua_task.c) in stage "timer", so it may wait.
 *
 * Ownership: a pgw_timer is malloc'd, linked in its set's list, and owns its libevent timer, the
 * registry refs of its callback and arguments, and the task of a run in progress. The Lua handle
 * (userdata) only points at it and is cleared when the timer is freed.
 */
#include "log.h"
#include "lua_task.h"
#include "server.h"

#include <math.h>
#include <stdlib.h>

struct pgw_timer {
    struct pgw_timer *next, **pprev; /* the set's list */
    struct pgw_policy_set *set;
    struct event *ev;
    int fn_ref, args_ref, handle_ref;
    int nargs;
    double interval; /* > 0: every */
    const char *policy;
    struct pgw_task *task; /* a run in progress */
    unsigned cancelled : 1, premature : 1;
};

static size_t num_timers;

/* ---- pgw.sleep ---- */

struct sleep_op {
    struct pgw_wait w;
    struct event *ev;
};

static void sleep_cancel(struct pgw_wait *w)
{
    struct sleep_op *op = (struct sleep_op *)w;
    event_free(op->ev);
    free(op);
}

static void on_sleep(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    struct sleep_op *op = arg;
    lua_pushboolean(pgw_bridge_wait_thread(&op->w), 1);
    event_free(op->ev);
    struct pgw_wait *w = &op->w;
    struct pgw_task *t = w->task;
    struct pgw_req *req = t->req;
    if (req != NULL)
        pgw_conn_enter(req->conn);
    struct pgw_conn *c = req ? req->conn : NULL;
    pgw_bridge_wake(w, 1);
    free(op);
    if (c != NULL)
        pgw_conn_leave(c);
}

static struct timeval to_tv(double s)
{
    struct timeval tv;
    tv.tv_sec = (time_t)s;
    tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
    return tv;
}

static double check_delay(lua_State *L, int idx, const char *fname)
{
    if (lua_type(L, idx) != LUA_TNUMBER)
        luaL_error(L, "%s: bad argument #%d (number expected, got %s)", fname, idx,
                   luaL_typename(L, idx));
    double s = lua_tonumber(L, idx);
    if (!(s >= 0) || s > 365.0 * 86400)
        luaL_error(L, "%s: bad argument #%d (a number of seconds from 0 to 1 year expected)",
                   fname, idx);
    return s;
}

static int l_sleep(lua_State *L)
{
    pgw_bridge_check(L, "pgw.sleep", PGW_STAGES_WAIT);
    double s = check_delay(L, 1, "pgw.sleep");
    pgw_bridge_check_wait(L, "pgw.sleep");
    struct sleep_op *op = pgw_calloc(1, sizeof(*op));
    op->w.cancel = sleep_cancel;
    op->ev = evtimer_new(pgw_bridge_base(), on_sleep, op);
    struct timeval tv = to_tv(s);
    evtimer_add(op->ev, &tv);
    return pgw_bridge_wait(L, &op->w);
}

/* ---- pgw.timer ---- */

static const char timer_mt[] = "pgw.timer";

static void timer_unlink(struct pgw_timer *tm)
{
    if (tm->pprev != NULL) {
        *tm->pprev = tm->next;
        if (tm->next != NULL)
            tm->next->pprev = tm->pprev;
        tm->pprev = NULL;
    }
}

static void timer_free(struct pgw_timer *tm)
{
    struct pgw_lua *lua = tm->set->lua;
    lua_State *L = pgw_lua_state(lua);
    timer_unlink(tm);
    if (tm->ev != NULL)
        event_free(tm->ev);
    pgw_task_free(tm->task);
    if (tm->handle_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, tm->handle_ref);
        struct pgw_timer **h = lua_touserdata(L, -1);
        if (h != NULL)
            *h = NULL;
        lua_pop(L, 1);
    }
    pgw_lua_unref(lua, tm->handle_ref);
    pgw_lua_unref(lua, tm->fn_ref);
    pgw_lua_unref(lua, tm->args_ref);
    num_timers--;
    free(tm);
}

static void timer_run(struct pgw_timer *tm);

/* A run ended (synchronously or after waiting). */
static void timer_after_run(struct pgw_timer *tm)
{
    pgw_task_free(tm->task);
    tm->task = NULL;
    if (tm->interval > 0 && !tm->cancelled && !tm->premature && !tm->set->retired) {
        struct timeval tv = to_tv(tm->interval);
        evtimer_add(tm->ev, &tv);
        return;
    }
    timer_free(tm);
}

static void timer_task_done(struct pgw_task *t, int rc)
{
    PGW_UNUSED(rc);
    struct pgw_timer *tm = t->timer;
    timer_after_run(tm);
}

static void timer_run(struct pgw_timer *tm)
{
    struct pgw_lua *lua = tm->set->lua;
    struct pgw_task *t = pgw_task_new_timer(lua, tm->set, tm->policy);
    t->timer = tm;
    t->done = timer_task_done;
    tm->task = t;
    lua_State *co = t->co;
    int saved = pgw_lua_reserve_open(lua);
    lua_rawgeti(co, LUA_REGISTRYINDEX, tm->fn_ref);
    lua_pushboolean(co, tm->premature);
    lua_rawgeti(co, LUA_REGISTRYINDEX, tm->args_ref);
    int n = tm->nargs;
    for (int i = 1; i <= n; i++)
        lua_rawgeti(co, 3, i);
    lua_remove(co, 3);
    pgw_lua_reserve_restore(lua, saved);
    int rc = pgw_task_start(t, 1 + n);
    if (rc != PGW_AGAIN)
        timer_after_run(tm);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    struct pgw_timer *tm = arg;
    if (tm->task != NULL)
        return; /* still running from the previous expiry */
    timer_run(tm);
}

static struct pgw_timer *check_timer(lua_State *L)
{
    struct pgw_timer **h = luaL_checkudata(L, 1, timer_mt);
    return *h;
}

/* handle:cancel(): true if the timer was pending, false if it already ran or was cancelled. */
static int l_timer_cancel(lua_State *L)
{
    struct pgw_timer *tm = check_timer(L);
    if (tm == NULL || tm->cancelled) {
        lua_pushboolean(L, 0);
        return 1;
    }
    tm->cancelled = 1;
    if (tm->task == NULL) /* not running: free it now (we are in Lua: no callback runs) */
        timer_free(tm);
    lua_pushboolean(L, 1);
    return 1;
}

static int timer_new_lua(lua_State *L, const char *fname, int every)
{
    pgw_bridge_check(L, fname, PGW_STAGES_ANY & ~PGW_STAGE_LOAD);
    const struct pgw_bridge_run *run = pgw_bridge_current();
    double delay = check_delay(L, 1, fname);
    if (every && delay < 0.001)
        return luaL_error(L, "%s: bad argument #1 (an interval of at least 1 ms expected)", fname);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (run->set == NULL)
        return luaL_error(L, "%s: no policy set", fname);
    size_t max = run->set->timers_max;
    if (num_timers >= max) {
        lua_pushnil(L);
        lua_pushliteral(L, "too many timers");
        return 2;
    }
    int nargs = lua_gettop(L) - 2;
    struct pgw_timer **h = lua_newuserdata(L, sizeof(*h)); /* may raise: before the malloc */
    *h = NULL;
    luaL_getmetatable(L, timer_mt);
    lua_setmetatable(L, -2);
    lua_createtable(L, nargs, 0);
    for (int i = 1; i <= nargs; i++) {
        lua_pushvalue(L, 2 + i);
        lua_rawseti(L, -2, i);
    }
    /* ... handle args: nothing below raises (the reserve is not needed for refs) */
    struct pgw_timer *tm = pgw_calloc(1, sizeof(*tm));
    tm->set = run->set;
    tm->policy = run->policy;
    tm->nargs = nargs;
    tm->interval = every ? delay : 0;
    tm->args_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    tm->handle_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, 2);
    tm->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    *h = tm;
    tm->ev = evtimer_new(pgw_bridge_base(), on_timer, tm);
    struct timeval tv = to_tv(delay);
    evtimer_add(tm->ev, &tv);
    tm->next = run->set->timers;
    if (tm->next != NULL)
        tm->next->pprev = &tm->next;
    tm->pprev = &run->set->timers;
    run->set->timers = tm;
    num_timers++;
    return 1;
}

static int l_timer_at(lua_State *L) { return timer_new_lua(L, "pgw.timer.at", 0); }
static int l_timer_every(lua_State *L) { return timer_new_lua(L, "pgw.timer.every", 1); }

void pgw_policy_set_retire(struct pgw_policy_set *set)
{
    if (set->retired)
        return;
    set->retired = 1;
    /* Every pending timer runs once more with premature = true (outside Lua: the caller is the
     * worker's control handler or its stop path). */
    struct pgw_timer *tm = set->timers;
    while (tm != NULL) {
        struct pgw_timer *next = tm->next;
        if (tm->task == NULL && !tm->cancelled && pgw_bridge_base() != NULL) {
            tm->premature = 1;
            event_del(tm->ev);
            timer_run(tm); /* may free tm */
        }
        tm = next;
    }
}

void pgw_lua_timers_free(struct pgw_policy_set *set)
{
    while (set->timers != NULL)
        timer_free(set->timers);
}

void pgw_lua_open_timer(lua_State *L)
{
    lua_pushcfunction(L, l_sleep);
    lua_setfield(L, -2, "sleep");
    lua_newtable(L);
    lua_pushcfunction(L, l_timer_at);
    lua_setfield(L, -2, "at");
    lua_pushcfunction(L, l_timer_every);
    lua_setfield(L, -2, "every");
    lua_setfield(L, -2, "timer");
    luaL_newmetatable(L, timer_mt);
    lua_newtable(L);
    lua_pushcfunction(L, l_timer_cancel);
    lua_setfield(L, -2, "cancel");
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "pgw.timer");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}
