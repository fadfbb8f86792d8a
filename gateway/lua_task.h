/* lua_task.h: tasks, the coroutines that run policy code (one per request, reused across its
 * stages; one per timer run), and the stage runner the request pipeline calls. Internal to the
 * bridge (lua_task.c, lua_req.c, lua_timer.c) and request.c.
 *
 * Ownership: a request's task lives in the request's pool; its pool cleanup cancels a pending
 * wait, releases the coroutine, the ctx table and the pgw.req handle (which then raises "request
 * already finished"). A timer's task is owned by its timer (lua_timer.c).
 */
#ifndef PGW_LUA_TASK_H
#define PGW_LUA_TASK_H

#include "lua_bridge.h"
#include "policy.h"

struct pgw_http_header;
struct pgw_ws_tunnel;

/* What pgw.exit() decided. */
struct pgw_exit {
    int status;                      /* 0: no exit */
    const char *body;                /* in the request pool, or NULL */
    size_t body_len;
    struct pgw_http_header *headers; /* in the request pool */
    size_t num_headers, cap_headers;
};

struct pgw_task {
    struct pgw_lua *lua;
    lua_State *co;        /* NULL until needed, and after an error killed it */
    int co_ref;
    struct pgw_wait *wait;        /* the operation the task waits for */
    struct pgw_bridge_run run;    /* the run this task makes (stage, policy, req, gen, set) */
    void (*done)(struct pgw_task *t, int rc); /* an asynchronous step ended (PGW_OK/DONE/ERR) */
    /* the stage in progress: its chains and position */
    const struct pgw_policy_chain *chains[3];
    size_t num_chains, ci, ei;
    int stage_idx;                /* enum pgw_policy_stage_idx */
    int resuming;                 /* inside a resume: wake() from there is refused */
    /* requests */
    struct pgw_req *req;
    int ctx_ref, handle_ref;
    struct pgw_exit exit;
    /* body_filter: the chunk being filtered (a registry ref to a Lua string) */
    int chunk_ref;
    int chunk_changed;
    /* timers */
    struct pgw_timer *timer;
    /* WebSocket connections: the tunnel, the chains of its connection, the current message */
    struct pgw_ws_tunnel *ws;
    const struct pgw_policy_chain *ws_chains[2];
    size_t ws_num_chains;
    /* route selection (websocket.selection): the route's settings and its action chains (the
     * default last), both owned by the connection's generation; NULL when not configured */
    const struct pgw_config_websocket *ws_conf;
    const struct pgw_policy_chain *ws_actions;
    unsigned ws_stop : 1;         /* pgw.ws.drop or pgw.ws.close: the chain stops */
    unsigned ws_inbound : 1;      /* the message being run comes from the client */
};

/* The Lua state of this worker (NULL before the first generation with policies). */
struct pgw_lua *pgw_bridge_lua(void);
/* Creates (or resizes) the worker's state for <config>. PGW_ERR with a message in <err>. */
int pgw_bridge_worker_init(const struct pgw_config *config, char *err, size_t errlen);
void pgw_bridge_worker_free(void);

/* The chains that run <stage> for <req> (listener's, then route's), 0 when none defines it. */
size_t pgw_task_chains(struct pgw_req *req, unsigned stage, const struct pgw_policy_chain **out);

/* Runs <stage> of <req>'s policies (the pipeline's entry, stage.c). Returns PGW_OK (go on),
 * PGW_DONE (pgw.exit decided the response: req->lua->exit), PGW_AGAIN (waits; the request's
 * pipeline continues from pgw_req_stage_done()), PGW_ERR (a policy failed; logged). */
int pgw_task_run_request_stage(struct pgw_req *req, unsigned stage, int only_listener,
                               int only_route);

/* body_filter over <chunk,len> (eof for the last call): returns PGW_OK with the result in
 * *out and *out_len (pool memory or <chunk> itself), or PGW_ERR (logged). */
int pgw_task_body_filter(struct pgw_req *req, const char *chunk, size_t len, int eof,
                         const char **out, size_t *out_len);

/* The task of the pgw.req handle at <idx>, NULL if that value is no handle; raises "request
 * already finished" for a handle that outlived its request. */
struct pgw_task *pgw_task_from_handle(lua_State *L, int idx);

/* The pgw.req handle of <t> (pushes it on L, creating it at first use). */
void pgw_task_push_handle(struct pgw_task *t, lua_State *L);

/* lua_timer.c: frees the timers of <set> without running them (the set is being freed). */
void pgw_lua_timers_free(struct pgw_policy_set *set);

/* lua_req.c: the client sent more while pgw.req.read_body waits. */
void pgw_lua_body_on_data(struct pgw_req *req);

/* lua_timer.c: runs a timer callback as a task. */
struct pgw_task *pgw_task_new_timer(struct pgw_lua *lua, struct pgw_policy_set *set,
                                    const char *policy);
void pgw_task_free(struct pgw_task *t);
/* Resumes <t> with the function and <nargs> arguments already on t->co. Returns like
 * pgw_lua_resume; an error is logged with the task's policy and stage. */
int pgw_task_start(struct pgw_task *t, int nargs);

/* ---- WebSocket connections (wsproxy.c) ----
 * A connection's task is heap-allocated at the upgrade and owned by its tunnel: it takes over
 * the handshake request's pgw.ctx table and runs ws_connect, ws_message and ws_close of the
 * listener's and the route's chains. Runs return like request stages: PGW_OK, PGW_DONE (the
 * chain stopped: pgw.ws.drop or pgw.ws.close), PGW_AGAIN (it waits: pgw_ws_task_done() follows),
 * PGW_ERR (a policy failed; logged). */

struct pgw_ws_close_info {
    int code;                /* 1005: no code given; 1006: a side dropped */
    const char *by;          /* "client", "upstream" or "gateway" */
    const char *reason;
    size_t reason_len;
    double duration;         /* seconds */
    uint64_t messages_in, messages_out, bytes_in, bytes_out;
};

/* NULL when no chain of the connection has a ws_* stage (nothing to run). */
struct pgw_task *pgw_task_ws_new(struct pgw_req *req, struct pgw_ws_tunnel *tunnel);
int pgw_task_ws_has(const struct pgw_task *t, unsigned stage);
/* Whether a ws_message function may run for messages of that direction (<inbound>: from the
 * client); action chains only ever see inbound ones. */
int pgw_task_ws_has_message(const struct pgw_task *t, int inbound);
int pgw_task_ws_connect(struct pgw_task *t);
/* <opcode>: PGW_WS_OP_TEXT or BINARY; <data> is copied. PGW_DECLINED when no function runs
 * for this message (say, an outbound one on a route whose only ws_message functions are in
 * action chains): nothing was built, the caller sends it as it is. */
int pgw_task_ws_message(struct pgw_task *t, int inbound, unsigned opcode, const char *data,
                        size_t len);
/* The message after the chain (msg.opcode, msg.data); <data> lives until the next run. PGW_ERR
 * (logged) when the policies left something that cannot be sent. */
int pgw_task_ws_result(struct pgw_task *t, unsigned *opcode, const char **data, size_t *len);
/* ws_close: errors are logged only; it cannot wait. */
void pgw_task_ws_close(struct pgw_task *t, const struct pgw_ws_close_info *info);
void pgw_task_ws_free(struct pgw_task *t);

/* lua_ws.c: the master's answer to a pgw.ws.send asked of the other workers (PGW_WS_PUSH_*). */
void pgw_lua_ws_push_reply(uint64_t qid, int status);

#endif
