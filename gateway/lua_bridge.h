/* lua_bridge.h: what the bridge's lua_*.c files share: the run in progress (stage, policy,
 * request, task), stage checks for SDK functions, and the one way a bridge function waits for an
 * event (STYLE §5). lua.c below it knows nothing of the event loop; lua_task.c implements this
 * header; lua_req.c, lua_util.c, lua_cache.c, lua_timer.c and lua_http.c register the SDK
 * functions (docs/sdk.md) into the `pgw.core` table that lua/pgw/init.lua spreads over `pgw`.
 *
 * Threads: the worker's thread only. Exactly one run of Lua code is in progress at a time
 * (pgw_bridge_current()); the event loop never runs inside Lua.
 */
#ifndef PGW_LUA_BRIDGE_H
#define PGW_LUA_BRIDGE_H

#include "lua.h"
#include "stage.h"

#include <event2/event.h>

/* Stage bits for code that runs outside a request (the request stages are in stage.h). */
#define PGW_STAGE_INIT_WORKER (1 << 6)
#define PGW_STAGE_TIMER (1 << 7)
#define PGW_STAGE_LOAD (1 << 8)
/* WebSocket connections (docs/websocket.md): after the 101, per message, at the end. */
#define PGW_STAGE_WS_CONNECT (1 << 9)
#define PGW_STAGE_WS_MESSAGE (1 << 10)
#define PGW_STAGE_WS_CLOSE (1 << 11)
#define PGW_STAGES_WS (PGW_STAGE_WS_CONNECT | PGW_STAGE_WS_MESSAGE | PGW_STAGE_WS_CLOSE)

#define PGW_STAGES_REQUEST                                                                         \
    (PGW_STAGE_REWRITE | PGW_STAGE_ACCESS | PGW_STAGE_HEADER_FILTER | PGW_STAGE_BODY_FILTER |     \
     PGW_STAGE_LOG)
#define PGW_STAGES_ANY                                                                             \
    (PGW_STAGES_REQUEST | PGW_STAGE_INIT_WORKER | PGW_STAGE_TIMER | PGW_STAGE_LOAD |              \
     PGW_STAGES_WS)
/* Where a bridge function may wait (yield). */
#define PGW_STAGES_WAIT                                                                            \
    (PGW_STAGE_REWRITE | PGW_STAGE_ACCESS | PGW_STAGE_TIMER | PGW_STAGE_WS_CONNECT |              \
     PGW_STAGE_WS_MESSAGE)

struct pgw_req;
struct pgw_task;
struct pgw_gen;
struct pgw_policy_set;
struct pgw_config;

/* The run of Lua code in progress. Set by lua_task.c (and policy.c for load/init_worker) before
 * it enters Lua; stage == 0 between runs. */
struct pgw_bridge_run {
    unsigned stage;          /* one PGW_STAGE_* bit */
    const char *policy;      /* name of the policy whose function runs ("" at load of the SDK) */
    struct pgw_req *req;     /* request stages: the current request; NULL otherwise */
    struct pgw_task *task;   /* the coroutine that runs (requests, timers); NULL at load/init */
    struct pgw_gen *gen;     /* the generation whose policies run (upstream names); may be NULL */
    struct pgw_policy_set *set; /* the policy set whose code runs (timers belong to it) */
    int stage_eof;           /* body_filter: the last call */
};

const struct pgw_bridge_run *pgw_bridge_current(void);
/* Makes <run> the current run; returns the previous one for pgw_bridge_leave(). */
struct pgw_bridge_run pgw_bridge_enter(const struct pgw_bridge_run *run);
void pgw_bridge_leave(const struct pgw_bridge_run *saved);

/* A Lua state for policies: pgw_lua_new() with <config>'s memory cap and the SDK's C functions
 * registered as `pgw.core`. NULL with a message in <err>. */
struct pgw_lua *pgw_bridge_lua_new(const struct pgw_config *config, char *err, size_t errlen);

/* For the first line of an SDK function: raises "<fname>: not allowed in stage <stage>" unless
 * the current stage is in <stages>, "<fname>: no request in stage <stage>" is for callers that
 * need pgw_bridge_current()->req. Returns the current stage bit. */
unsigned pgw_bridge_check(lua_State *L, const char *fname, unsigned stages);

/* The stage's name, including the non-request ones ("timer", "load", "init_worker"). */
const char *pgw_bridge_stage_name(unsigned stage);

/* The worker's event base and DNS resolver (NULL outside a worker, e.g. in unit tests). */
struct event_base *pgw_bridge_base(void);
struct evdns_base *pgw_bridge_dns(void);

/* ---- Waiting (STYLE §5) ----
 *
 * A bridge function that waits for an event:
 *   1. checks its arguments and raises on misuse (pgw_bridge_check(L, name, PGW_STAGES_WAIT)
 *      first), before acquiring anything;
 *   2. allocates its operation (malloc: the operation owns itself) with a struct pgw_wait in it,
 *      sets w->cancel, starts the I/O or timer;
 *   3. returns pgw_bridge_wait(L, &op->wait).
 * When the event completes (an event callback, never inside Lua), the operation pushes its
 * results on pgw_bridge_wait_thread(w) and calls pgw_bridge_wake(w, nres), after which <w> is
 * no longer known to the bridge (free the operation before or after, not during). If the task is
 * abandoned first (client gone, request aborted, worker stopping), the bridge calls w->cancel(w)
 * instead, exactly once, and never wakes it: cancel releases everything and frees the operation
 * without touching Lua. Results follow the SDK convention: values, or nil and a reason. */
struct pgw_wait {
    void (*cancel)(struct pgw_wait *w);
    struct pgw_task *task; /* set by pgw_bridge_wait() */
};

int pgw_bridge_wait(lua_State *L, struct pgw_wait *w);
/* Raises "<fname>: cannot wait here (...)" when the running code cannot yield (called through a
 * C function such as a table.sort comparator): call it with the argument checks, before
 * acquiring anything. */
void pgw_bridge_check_wait(lua_State *L, const char *fname);
lua_State *pgw_bridge_wait_thread(struct pgw_wait *w);
/* Checks the Lua stack of <w>'s thread for <n> more slots (results). Returns 0 if it cannot grow
 * (wake with fewer results then: nil, "out of memory"). */
int pgw_bridge_wait_reserve(struct pgw_wait *w, int n);
void pgw_bridge_wake(struct pgw_wait *w, int nres);
/* Pushes a copy of <s,len> on <w>'s thread as a result, allocating under protection: PGW_ERR
 * (nothing pushed) when the state's memory cap refuses it. For results that can be large; an
 * unprotected allocation failure outside Lua code would abort the worker. */
int pgw_bridge_push_string(struct pgw_wait *w, const char *s, size_t len);

/* ---- Registration into pgw.core (the table on top of the stack) ---- */

void pgw_lua_open_req(lua_State *L);   /* lua_req.c: req, resp, exit, ctx, log */
void pgw_lua_open_util(lua_State *L);  /* lua_util.c: json, time, base64, crypto, const_eq */
void pgw_lua_open_cache(lua_State *L); /* lua_cache.c: cache */
void pgw_lua_open_timer(lua_State *L); /* lua_timer.c: sleep, timer */
void pgw_lua_open_http(lua_State *L);  /* lua_http.c: http */
void pgw_lua_open_store(lua_State *L); /* lua_store.c: store */
void pgw_lua_open_ip(lua_State *L);    /* lua_ip.c: ip */
void pgw_lua_open_jwt(lua_State *L);   /* lua_jwt.c: jwt */
void pgw_lua_open_ws(lua_State *L);    /* lua_ws.c: ws */

/* Pushes the value of the JSON text <s,len> as pgw.json.decode would (PGW_OK), or pushes nothing
 * (PGW_ERR) when it is not valid JSON. May raise (memory, the CPU guard). */
int pgw_lua_json_push(lua_State *L, const char *s, size_t len);

/* lua_store.c: the wall clock in ms, the event loop's cached time when there is one. */
uint64_t pgw_lua_store_now_ms(void);

/* lua_cache.c: per-worker limits, set before the first policy runs (defaults 10000 entries,
 * 16 MiB). Entries are Lua-independent C copies, so the cache survives policy reloads. */
void pgw_lua_cache_configure(size_t max_entries, size_t max_bytes);
/* Drops every entry (tests; a worker's exit). */
void pgw_lua_cache_reset(void);

#endif
