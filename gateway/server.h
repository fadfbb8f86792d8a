/* server.h: the worker's event loop, its listeners, client connections and requests.
 *
 * Ownership: the worker owns the listeners and the current generation; a connection holds a
 * reference to the generation of its current request (the one it was accepted under, then the
 * newest one at each request boundary), so a reload never changes the routes or limits of a
 * request in flight. A connection owns its pgw_io
 * (socket, events, buffers), its request pool and at most one request at a time (pipelined
 * requests wait in the input buffer and are answered in order). A request's memory, its parsed
 * head and everything registered with pgw_pool_defer() (the upstream lease included) die with the
 * request.
 *
 * The request pipeline (server.c): head parsed -> rewrite -> path normalised, route matched ->
 * access -> handler (status answer, or proxy.c: balance, upstream exchange) -> log -> next request.
 */
#ifndef PGW_SERVER_H
#define PGW_SERVER_H

#include "pgw.h"
#include "addr.h"
#include "config.h"
#include "http.h"
#include "io.h"
#include "pool.h"
#include "route.h"
#include "stage.h"

#include <event2/event.h>

struct pgw_upstream;
struct pgw_policy_set;
struct pgw_task;
struct pgw_tls_gen;
struct pgw_jwt_gen;
struct pgw_ws_tunnel;

/* "host:port" of an upstream target: a 253-byte name, brackets, ":65535" and the NUL. */
#define PGW_UPSTREAM_LABEL_MAX 264
struct pgw_proxy;

/* A generation: a validated configuration with what the worker built from it. Refcounted:
 * the worker holds one reference, every connection one. */
struct pgw_gen {
    int refs;
    uint64_t number;
    struct pgw_config *config;
    struct pgw_route_table **tables;   /* one per config listener */
    struct pgw_upstream **upstreams;   /* runtime state, one per config upstream */
    struct pgw_http_limits req_limits; /* derived from config->limits */
    struct pgw_policy_set *policies;   /* NULL when the config runs no policy */
    struct pgw_tls_gen *tls;           /* TLS contexts (tls.h); NULL only while being built */
    struct pgw_jwt_gen *jwt;           /* JWT providers (jwt_provider.h); NULL while being built */
};

struct pgw_listener {
    evutil_socket_t fd; /* a duplicate of the master's socket, registered in worker.acc_ep */
};

struct pgw_chan;

struct pgw_store;

struct pgw_worker {
    struct event_base *base;
    struct evdns_base *dns;
    struct pgw_store *store;    /* opened after fork when the config has a store (NULL: none) */
    char *store_dir;            /* the directory it was opened from */
    unsigned char store_secret[32]; /* keys.h: the server secret of that store */
    struct event *store_timer;  /* sync, sweep and reader check */
    struct pgw_gen *gen;        /* the newest generation; connections hold their own refs */
    struct pgw_listener *listeners; /* one per listener of gen->config, same order */
    size_t num_listeners;
    int acc_ep;                 /* epoll set of the listeners, EPOLLEXCLUSIVE (see worker.c) */
    struct event *acc_ev;       /* acc_ep readable */
    struct pgw_chan *chan;      /* to the master */
    char *hosts;                /* /etc/hosts as read at the last generation (NULL: none) */
    size_t hosts_len;
    size_t num_conns;
    struct pgw_conn *conns;     /* every open connection */
    uint64_t next_conn_id;
    uint64_t requests;          /* requests started, for status */
    struct event *flush_timer;  /* access log */
    struct event *accept_timer; /* resumes accepting after EMFILE */
    int accept_paused;
    uint64_t id_seed;    /* request ids: seed ^ counter, mixed */
    uint64_t id_counter;
    int stopping;        /* 1: draining (SIGQUIT, master gone), 2: fast stop */
};

extern struct pgw_worker pgw_worker;

enum pgw_conn_state {
    PGW_CONN_PROXY_PROTOCOL = 0, /* waiting for the PROXY header */
    PGW_CONN_TLS_DETECT,         /* TLS listener: waiting for the first byte (TLS or plain?) */
    PGW_CONN_TLS_HANDSHAKE,      /* TLS listener: handshake in progress */
    PGW_CONN_IDLE,               /* keep-alive, between requests */
    PGW_CONN_HEAD,               /* a request head is arriving */
    PGW_CONN_ACTIVE,             /* a request is being handled */
    PGW_CONN_CLOSING,            /* flushing a last response, then close */
    PGW_CONN_WS                  /* a WebSocket tunnel (c->ws, wsproxy.c) */
};

struct pgw_conn {
    struct pgw_io io;
    uint64_t id;
    struct pgw_gen *gen; /* referenced */
    int listener_index;
    enum pgw_conn_state state;
    struct sockaddr_storage peer;
    char peer_str[PGW_ADDR_STRLEN]; /* peer, formatted once (X-Forwarded-For) */
    struct sockaddr_storage client; /* the real client: peer, or from real_ip */
    char client_str[PGW_ADDR_STRLEN];
    struct pgw_pool *pool; /* the current request's; reused across keep-alive requests */
    struct pgw_req *req;   /* in flight, or NULL */
    struct pgw_ws_tunnel *ws; /* state WS: the tunnel, owned (wsproxy.h) */
    unsigned requests;
    unsigned in_handler;       /* callback nesting: defer the free */
    unsigned peer_trusted : 1; /* peer is in real_ip.trusted */
    unsigned client_eof : 1;   /* the client half-closed */
    unsigned dead : 1;         /* pgw_conn_close() ran: no more I/O */
    unsigned close_asap : 1;   /* free when the stack unwinds */
    unsigned processing : 1;   /* inside pgw_conn_process() */
    unsigned linger : 1;       /* CLOSING: read and drop input after the last response */
    unsigned cert_invalid : 1; /* verify_client optional: a certificate that did not verify */
    const char *cert_error;    /* why (static OpenSSL string) */
    struct pgw_conn *prev, *next; /* the worker's list of connections */
};

/* One request. Lives in its connection's pool. */
struct pgw_req {
    struct pgw_conn *conn;
    struct pgw_pool *pool;
    struct pgw_gen *gen; /* == conn->gen: the generation this request runs on */
    struct pgw_http_request h;
    char *path; /* normalised path, NUL-terminated, in the pool */
    size_t path_len;
    struct pgw_route_match match;
    const struct pgw_config_route *route;
    struct sockaddr_storage client; /* the real client: the connection's, or from X-Forwarded-For */
    char client_str[PGW_ADDR_STRLEN];
    char id[33];
    size_t id_len;
    unsigned id_from_client : 1;
    unsigned ws_handshake : 1;        /* a valid WebSocket handshake on a WebSocket route */
    /* client body */
    uint64_t body_left;               /* Content-Length bytes still to read */
    struct pgw_http_chunked chunked;  /* chunked request body decoder */
    unsigned body_done : 1;           /* the whole request body was read */
    unsigned body_started : 1;        /* some body bytes left the client buffer */
    unsigned continue_sent : 1;       /* "100 Continue" written */
    /* response */
    unsigned resp_started : 1;        /* a response head was queued to the client */
    unsigned resp_done : 1;           /* the whole response was queued */
    unsigned resp_chunked : 1;        /* we chunk-encode the body towards the client */
    unsigned keep_alive : 1;          /* the client connection persists after this response */
    unsigned finished : 1;
    int status;
    int upstream_status;
    uint64_t start_us;
    uint64_t upstream_us; /* time to the upstream's response head, 0 if none */
    uint64_t bytes_in, bytes_out;
    unsigned retries;
    const char *termination; /* "ok" or why it ended otherwise */
    char upstream_addr[PGW_UPSTREAM_LABEL_MAX];
    struct pgw_proxy *px; /* upstream exchange, proxy.c */
    /* policies (lua_*.c): what they changed of the request and the response */
    struct pgw_task *lua;      /* the request's policy task, NULL until a policy runs */
    int phase;                 /* request.c: the pipeline phase in progress */
    size_t headers_cap;        /* h.headers is a pool copy of this capacity (0: as parsed) */
    const char *up_path;       /* pgw.req.set_path: the path sent upstream (NULL: normal) */
    size_t up_path_len;
    const char *up_host;       /* pgw.req.set_host */
    size_t up_host_len;
    int upstream_index;        /* pgw.req.set_upstream, else the route's (-1 before routing) */
    const char *body_data;     /* read_body / set_body: the whole body sent upstream */
    size_t body_data_len;
    unsigned body_buffered : 1; /* body_data replaces the client's body */
    unsigned body_decode : 1;   /* the body pump decodes chunked bodies (read_body) */
    unsigned body_discarded : 1; /* set_body before the client's body was read */
    unsigned body_reading : 1;  /* pgw.req.read_body waits for the client */
    unsigned body_lost : 1;     /* read_body gave up (too large): the body cannot be forwarded */
    unsigned resp_unframed : 1; /* header_filter removed Content-Length */
    unsigned resp_filtered : 1; /* body_filter policies see the response body */
    unsigned resp_no_body : 1;  /* HEAD, 204, 304: what body filters return is dropped */
    struct pgw_http_header *resp_headers; /* the response head as policies see it (pool) */
    size_t resp_num_headers, resp_headers_cap;
    uint64_t resp_declared;    /* Content-Length sent to the client (body filters check it) */
    uint64_t resp_sent;        /* body bytes sent after filters */
};

/* ---- used by proxy.c ---- */

/* Answers <req> with a gateway-generated error <status> and a small JSON body. <termination>
 * goes to the access log. Closes the connection after the answer when <close> is set (parse
 * errors, timeouts, requests whose body was not read). The request finishes. */
void pgw_req_respond_error(struct pgw_req *req, int status, const char *termination, int close);
/* Same, closing, with <extra> ("Name: value\r\n" lines) in the head. */
void pgw_req_respond_error_extra(struct pgw_req *req, int status, const char *termination,
                                 const char *extra, size_t extra_len);
/* wsproxy.c: the 101 was queued and c->ws is set: the handshake request finishes (log stage,
 * access log) and the connection becomes a tunnel. */
void pgw_req_finish_upgraded(struct pgw_req *req);

/* Queues the response head for <resp> (from the upstream) to the client, after removing
 * hop-by-hop fields, running the header_filter policies and adding the gateway's fields. <body>
 * is the framing the body will use. Returns PGW_OK, or PGW_ERR when a policy failed and the
 * request was answered 500 (it finished: do not touch req). */
int pgw_req_send_head(struct pgw_req *req, const struct pgw_http_response *resp,
                      enum pgw_http_body body);
/* Moves <len> bytes of response body from <src> to the client through the body_filter policies
 * (chunk-encoding if needed). PGW_ERR when a filter failed: the request was aborted. */
int pgw_req_send_body(struct pgw_req *req, struct evbuffer *src, size_t len);
/* The response ended normally. */
void pgw_req_send_end(struct pgw_req *req);
/* Writes what is queued. Returns PGW_OK when the output is empty, PGW_AGAIN when the client
 * is slow (pgw_proxy_on_client_drain() runs when it has drained), PGW_ERR when the client is gone
 * (the request was aborted: do not touch req). */
int pgw_req_flush(struct pgw_req *req);
/* Bytes waiting for the client. */
size_t pgw_req_output_pending(const struct pgw_req *req);

/* Moves request body bytes available in the client buffer to <dst> (Content-Length bytes as
 * they are, chunked bodies re-encoded), at most <max> input bytes. Returns PGW_OK (moved what
 * was there), PGW_DONE (the body is complete), PGW_ERR (bad chunked framing: the request was
 * answered 400 and finished). */
int pgw_req_body_pump(struct pgw_req *req, struct evbuffer *dst, size_t max);

/* lua_task.c: a stage that waited ended: PGW_OK continues the pipeline after it, PGW_DONE
 * answers what pgw.exit() decided, PGW_ERR answers 500. */
void pgw_req_stage_done(struct pgw_req *req, int rc);

/* Aborts <req> without an answer (the response already started, or the client is gone):
 * the connection closes after what is queued was written. */
void pgw_req_abort(struct pgw_req *req, const char *termination);

/* Starts or stops reading the client for <req> (backpressure of the request body). */
void pgw_req_client_read(struct pgw_req *req, int on);

/* ---- between server.c and request.c ---- */

/* Guards a connection across a callback: a close requested inside is carried out by the
 * matching leave, once the stack has unwound. */
void pgw_conn_enter(struct pgw_conn *c);
void pgw_conn_leave(struct pgw_conn *c);
/* Closes <c> now, or when the outermost handler leaves. Aborts its request if any. */
void pgw_conn_close(struct pgw_conn *c, const char *termination);
/* Ends the connection after its last response: flushes, then closes, after a lingering read of
 * what the client still sends (up to PGW_LINGER_MS) when <linger> is set. */
void pgw_conn_end(struct pgw_conn *c, int linger);
/* Parses and runs what the client sent while the connection is between requests. */
void pgw_conn_process(struct pgw_conn *c);
/* The client read limit for the current state (0: stop reading). */
size_t pgw_conn_read_budget(const struct pgw_conn *c);

/* request.c: starts the request whose head is the first <head_len> bytes of c->io.in, parsed
 * into <h> (its slices point into <head>, the pulled-up input). */
void pgw_req_start(struct pgw_conn *c, const char *head, size_t head_len,
                   const struct pgw_http_request *h);
/* request.c: the client sent more bytes (or EOF) while <req> runs. */
void pgw_req_on_client_data(struct pgw_req *req);
/* request.c: the client's output drained below the low-water mark. */
void pgw_req_on_client_drain(struct pgw_req *req);
/* request.c: a client deadline expired while <req> runs. */
void pgw_req_on_client_timeout(struct pgw_req *req, int expired);
/* request.c: answers a request that could not be parsed (status from the parser). */
void pgw_req_reject(struct pgw_conn *c, int status, const char *why);
/* Same with the access log's termination. */
void pgw_req_reject_as(struct pgw_conn *c, int status, const char *why, const char *termination);

#define PGW_CLIENT_BUFFER_MAX (64 * 1024) /* client input kept while a request runs */
#define PGW_OUTPUT_HIGH (256 * 1024)      /* pause the upstream above this much unsent output */
#define PGW_OUTPUT_LOW (64 * 1024)        /* resume below */
#define PGW_LINGER_MS 2000

/* ---- the worker ---- */

/* Builds a generation from <config> (takes a reference). Returns NULL with *err on failure. */
struct pgw_gen *pgw_gen_new(struct pgw_config *config, uint64_t number, const char **err);
void pgw_gen_unref(struct pgw_gen *g);

/* server.c: a connection accepted on listener <listener_index> of the current generation. */
void pgw_conn_new(int listener_index, evutil_socket_t fd, const struct sockaddr_storage *peer);
/* server.c: closes the connections that hold no request (idle keep-alive, never spoke). */
void pgw_conns_close_idle(void);
/* server.c: after a generation swap: idle keep-alive connections move to the new generation at
 * once (the others do between requests), and those whose listener is gone are closed. */
void pgw_conns_follow_gen(void);
/* server.c: the open WebSockets by route as a JSON object ({"chat":3}) into <buf> (cut to what
 * fits in <len>, always valid JSON); returns its length. */
size_t pgw_conns_ws_by_route(char *buf, size_t len);
/* server.c: graceful stop at its deadline: open WebSockets get close 1001. Returns how many. */
size_t pgw_conns_ws_shutdown(void);
/* server.c: closes every connection, aborting requests in flight. */
void pgw_conns_close_all(const char *termination);

/* worker.c: a worker process, started by the master with the channel on <chan_fd>. Waits for its
 * first generation, serves until told to stop, returns the exit status. */
int pgw_worker_main(int chan_fd);

/* worker.c: opens, binds and listens on the socket of <cl> (the master calls it; workers
 * receive duplicates). Returns PGW_OK with *fd, or PGW_ERR with a message in <err>. */
int pgw_listener_open(const struct pgw_config_listener *cl, int *fd, char *err, size_t errlen);

#endif
