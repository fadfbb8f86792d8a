/* wsproxy.c: WebSocket handshakes and tunnels (see wsproxy.h and docs/websocket.md).
 *
 * A tunnel has two sides, the client and the upstream, each with its socket (pgw_io), its frame
 * parser (ws.c) and its half of the close handshake. Bytes read from a side are parsed at once;
 * without a ws_message policy each piece of payload goes out to the other side as a fragment of
 * the same message (RFC 6455 5.4), so nothing larger than a read is ever held. With one, the
 * message is assembled (bounded by max_message and by the worker's websocket_buffer budget) and
 * handed to the policies, whose verdict decides what is sent. This is decided per side: action
 * chains only see the client's messages, so the upstream's may still stream (side.assemble).
 *
 * Closing: a side is done when it is gone (TCP ended) or when both its close frame and ours
 * crossed. The tunnel ends when both sides are done, or at close_timeout after the first close
 * frame it sent; ending closes both sockets after a last flush.
 *
 * Re-entrancy: every entry point (socket events, a policy run that waited, shutdown) brackets its
 * work with tun_enter/tun_leave; tun_end only marks the tunnel, and the outermost leave destroys
 * it, so nothing below an entry point ever sees a freed tunnel.
 */
#include "wsproxy.h"
#include "control.h"
#include "log.h"
#include "lua_task.h"
#include "out.h"
#include "server.h"
#include "ws.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

#define WS_READ_MAX (64 * 1024)
#define PUSH_QUEUE_MAX (1024 * 1024) /* bytes of pushes waiting for one connection */
#define PUSH_REPLY 0x80              /* in a queued message's kind: a pgw.ws.reply */

struct side {
    struct pgw_io *io;
    struct pgw_ws_parser parser;
    const char *name;          /* "client" or "upstream" */
    unsigned is_client : 1;
    unsigned close_rcvd : 1;   /* its close frame arrived (or it cannot send one any more) */
    unsigned close_sent : 1;   /* we queued a close frame to it */
    unsigned gone : 1;         /* its TCP connection ended */
    unsigned eof : 1;          /* it closed its half: gone once what it sent before is parsed */
    unsigned budget_wait : 1;  /* paused: the worker's message budget is spent */
    unsigned assemble : 1;     /* a ws_message function may run for its messages: each is
                                  assembled first; otherwise its frames stream through */
    struct evbuffer *msg;      /* when assembling: the message being assembled */
    unsigned msg_opcode;
    uint64_t messages, bytes;  /* data messages and payload bytes received from it */
};

struct pgw_ws_tunnel {
    struct pgw_conn *c;
    struct pgw_upstream_conn *uc;
    struct side cl, up;
    const struct pgw_config_websocket *conf;
    const struct pgw_config_route *route; /* lives with the connection's generation */
    struct pgw_task *lua;          /* NULL when no ws_* policy applies */
    unsigned lua_busy : 1;         /* a policy run waits; nothing is parsed meanwhile */
    unsigned connecting : 1;       /* that run is ws_connect's */
    unsigned busy_client : 1;      /* whose message that run holds */
    unsigned ending : 1;           /* a close frame was sent: waiting for the other half */
    unsigned finished : 1;         /* tun_end ran: destroyed by the outermost tun_leave */
    unsigned closed_run : 1;       /* ws_close ran */
    unsigned linger : 1;           /* the client may still send: read and drop before closing */
    unsigned depth;
    uint64_t start_us;
    uint64_t in_flight_len;        /* the busy message's original length (stats) */
    int close_code;                /* the first close: its code (1006: a side dropped) */
    const char *close_by;          /* "client", "upstream" or "gateway" */
    char close_reason[124];
    size_t close_reason_len;
    int policy_close;              /* pgw.ws.close: the code to close with after the run */
    char policy_reason[124];
    size_t policy_reason_len;
    char id[33];                   /* the connection's id: random, never the client's choice */
    struct pgw_ws_tunnel *id_next; /* the worker's index of ids */
    struct evbuffer *pushes;       /* pgw.ws.send: messages waiting to go to the client, and
                                      pgw.ws.reply's while an upstream message streams to it */
    unsigned replies_waiting;      /* of those, replies: the client is not read meanwhile */
    struct pgw_ws_tunnel *push_prev, *push_next; /* the worker's list of tunnels to push to */
    unsigned push_listed : 1;
    char request_id[33];           /* the handshake request's id (X-Request-Id) */
    char client_str[PGW_ADDR_STRLEN]; /* the handshake's client address (after real_ip) */
    struct pgw_ws_tunnel *wait_prev, *wait_next; /* budget waiters */
};

/* Clients decide how often these lines happen: one per second per kind at most. */
static struct pgw_log_ratelimit hs_log, fail_log, drop_log, timeout_log;
static uint64_t budget_used;                /* bytes of messages being assembled, this worker */
static struct pgw_ws_tunnel *budget_waiters;
static struct event *budget_ev;
static uint64_t mask_state;                 /* xorshift64* state for masking keys */

static void side_process(struct pgw_ws_tunnel *t, struct side *s);
static int deliver_pushes(struct pgw_ws_tunnel *t);
static void queue_to_client(struct pgw_ws_tunnel *t, unsigned kind, const char *data, size_t len);
static void side_pump(struct pgw_ws_tunnel *t, struct side *s);
static void tun_pump_both(struct pgw_ws_tunnel *t);
static void tun_update_reading(struct pgw_ws_tunnel *t);
static void tun_settle(struct pgw_ws_tunnel *t);

/* ---- Handshake: the client's request ---- */

static const struct pgw_http_header *find_one(const struct pgw_req *req, const char *name,
                                              size_t len, int *count)
{
    const struct pgw_http_header *found = NULL;
    *count = 0;
    for (size_t i = 0; i < req->h.num_headers; i++) {
        const struct pgw_http_header *f = &req->h.headers[i];
        if (pgw_str_ieq(f->name, f->name_len, name, len)) {
            if (found == NULL)
                found = f;
            (*count)++;
        }
    }
    return found;
}

/* Whether some field <name> lists <tok> (case-insensitive). */
static int fields_list(const struct pgw_http_header *hs, size_t n, const char *name, size_t nlen,
                       const char *tok, size_t tlen)
{
    for (size_t i = 0; i < n; i++)
        if (pgw_str_ieq(hs[i].name, hs[i].name_len, name, nlen) &&
            pgw_ws_list_has(hs[i].value, hs[i].value_len, tok, tlen, 1))
            return 1;
    return 0;
}

static int is_handshake(const struct pgw_req *req)
{
    int n;
    const struct pgw_http_header *hs = req->h.headers;
    return fields_list(hs, req->h.num_headers, "upgrade", 7, "websocket", 9) ||
           find_one(req, "sec-websocket-key", 17, &n) != NULL ||
           find_one(req, "sec-websocket-version", 21, &n) != NULL;
}

static int origin_allowed(const struct pgw_config_websocket *ws, const struct pgw_http_header *o)
{
    for (size_t i = 0; i < ws->num_allowed_origins; i++)
        if (pgw_str_ieq(o->value, o->value_len, ws->allowed_origins[i],
                        strlen(ws->allowed_origins[i])))
            return 1;
    return 0;
}

/* Why the handshake is refused with 400 (NULL: it is well-formed). */
static const char *handshake_malformed(const struct pgw_req *req)
{
    const struct pgw_http_header *hs = req->h.headers;
    size_t n = req->h.num_headers;
    int count;
    if (!PGW_IEQ_LIT(req->h.method, req->h.method_len, "GET"))
        return "the method is not GET";
    if (req->h.minor_version != 1)
        return "HTTP/1.0";
    if (!fields_list(hs, n, "upgrade", 7, "websocket", 9))
        return "no Upgrade: websocket";
    if (!fields_list(hs, n, "connection", 10, "upgrade", 7))
        return "no Connection: upgrade";
    if (req->h.body != PGW_HTTP_BODY_NONE)
        return "a request body";
    const struct pgw_http_header *key = find_one(req, "sec-websocket-key", 17, &count);
    if (key == NULL || count != 1 || !pgw_ws_key_valid(key->value, key->value_len))
        return "Sec-WebSocket-Key missing or not 16 bytes of base64";
    const struct pgw_http_header *ver = find_one(req, "sec-websocket-version", 21, &count);
    int digits = ver != NULL && count == 1 && ver->value_len > 0 && ver->value_len <= 3;
    for (size_t i = 0; digits && i < ver->value_len; i++)
        digits = ver->value[i] >= '0' && ver->value[i] <= '9';
    if (!digits)
        return "Sec-WebSocket-Version missing or malformed";
    find_one(req, "origin", 6, &count);
    if (count > 1)
        return "more than one Origin";
    return NULL;
}

int pgw_ws_handshake_check(struct pgw_req *req)
{
    const struct pgw_config_websocket *ws = req->route->websocket;
    if (ws == NULL || !is_handshake(req))
        return 1;
    const char *why = handshake_malformed(req);
    if (why != NULL) {
        pgw_log_limited(&hs_log, 1000, PGW_LOG_INFO,
                        "request %s from %s: WebSocket handshake refused: %s", req->id,
                        req->client_str, why);
        pgw_req_respond_error(req, 400, "bad_request", 1);
        return 0;
    }
    int count;
    const struct pgw_http_header *ver = find_one(req, "sec-websocket-version", 21, &count);
    if (!PGW_IEQ_LIT(ver->value, ver->value_len, "13")) {
        static const char extra[] = "Sec-WebSocket-Version: 13\r\n";
        pgw_log_limited(&hs_log, 1000, PGW_LOG_INFO,
                        "request %s from %s: WebSocket handshake refused: version %.*s", req->id,
                        req->client_str, (int)ver->value_len, ver->value);
        pgw_req_respond_error_extra(req, 426, "bad_request", extra, sizeof(extra) - 1);
        return 0;
    }
    const struct pgw_http_header *origin = find_one(req, "origin", 6, &count);
    if (ws->num_allowed_origins > 0 && origin != NULL && !origin_allowed(ws, origin)) {
        pgw_log_limited(&hs_log, 1000, PGW_LOG_INFO,
                        "request %s from %s: WebSocket handshake refused: origin %.*s not allowed",
                        req->id, req->client_str, (int)PGW_MIN(origin->value_len, 256),
                        origin->value);
        pgw_req_respond_error(req, 403, "origin_refused", 1);
        return 0;
    }
    req->ws_handshake = 1;
    return 1;
}

void pgw_ws_handshake_fields(struct pgw_out *w)
{
    PGW_OUT_LIT(w, "Connection: Upgrade\r\nUpgrade: websocket\r\n");
}

int pgw_ws_drop_request_field(const char *name, size_t len)
{
    return PGW_IEQ_LIT(name, len, "sec-websocket-extensions");
}

/* ---- Handshake: the upstream's 101 ---- */

static int resp_count(const struct pgw_http_response *resp, const char *name, size_t len,
                      const struct pgw_http_header **first)
{
    int n = 0;
    *first = NULL;
    for (size_t i = 0; i < resp->num_headers; i++)
        if (pgw_str_ieq(resp->headers[i].name, resp->headers[i].name_len, name, len)) {
            if (*first == NULL)
                *first = &resp->headers[i];
            n++;
        }
    return n;
}

/* Whether the client offered <p> in one of its Sec-WebSocket-Protocol fields. */
static int protocol_offered(const struct pgw_req *req, const struct pgw_http_header *p)
{
    for (size_t i = 0; i < req->h.num_headers; i++) {
        const struct pgw_http_header *f = &req->h.headers[i];
        if (PGW_IEQ_LIT(f->name, f->name_len, "sec-websocket-protocol") &&
            pgw_ws_list_has(f->value, f->value_len, p->value, p->value_len, 0))
            return 1;
    }
    return 0;
}

const char *pgw_ws_upgrade_check(const struct pgw_req *req, const struct pgw_http_response *resp)
{
    const struct pgw_http_header *f;
    if (!req->ws_handshake)
        return "101 Switching Protocols on a plain request";
    int upgrade = 0, conn = 0;
    for (size_t i = 0; i < resp->num_headers; i++) {
        const struct pgw_http_header *h = &resp->headers[i];
        if (PGW_IEQ_LIT(h->name, h->name_len, "upgrade"))
            upgrade |= pgw_ws_list_has(h->value, h->value_len, "websocket", 9, 1);
        if (PGW_IEQ_LIT(h->name, h->name_len, "connection"))
            conn |= pgw_ws_list_has(h->value, h->value_len, "upgrade", 7, 1);
    }
    if (!upgrade || !conn)
        return "101 without Upgrade: websocket and Connection: upgrade";
    if (resp_count(resp, "sec-websocket-extensions", 24, &f) > 0)
        return "101 with an extension that was not offered";
    int count;
    const struct pgw_http_header *key = find_one(req, "sec-websocket-key", 17, &count);
    char accept[29];
    pgw_ws_accept(key->value, key->value_len, accept);
    if (resp_count(resp, "sec-websocket-accept", 20, &f) != 1 ||
        !pgw_str_ieq(f->value, f->value_len, accept, 28) || memcmp(f->value, accept, 28) != 0)
        return "101 with a wrong Sec-WebSocket-Accept";
    int np = resp_count(resp, "sec-websocket-protocol", 22, &f);
    if (np > 1 || (np == 1 && (memchr(f->value, ',', f->value_len) != NULL ||
                               f->value_len == 0 || !protocol_offered(req, f))))
        return "101 with a subprotocol the client did not offer";
    return NULL;
}

/* The end-to-end fields of the 101 that reach the client (ours are written apart). */
static int keep_101_field(const struct pgw_http_header *f, const struct pgw_http_conn_names *cn)
{
    const char *n = f->name;
    size_t l = f->name_len;
    if (pgw_http_is_hop_by_hop(n, l) || pgw_http_conn_names_has(cn, n, l))
        return 0;
    return !(PGW_IEQ_LIT(n, l, "sec-websocket-accept") ||
             PGW_IEQ_LIT(n, l, "sec-websocket-extensions") || PGW_IEQ_LIT(n, l, "x-request-id") ||
             PGW_IEQ_LIT(n, l, "content-length"));
}

static void write_101(struct pgw_req *req, const struct pgw_http_response *resp)
{
    int count;
    const struct pgw_http_header *key = find_one(req, "sec-websocket-key", 17, &count);
    char accept[29];
    pgw_ws_accept(key->value, key->value_len, accept);
    size_t max = 160 + req->id_len;
    for (size_t i = 0; i < resp->num_headers; i++)
        max += resp->headers[i].name_len + resp->headers[i].value_len + 4;
    char *buf = pgw_pool_alloc(req->pool, max);
    struct pgw_out w = {buf, buf + max};
    PGW_OUT_LIT(&w, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Accept: ");
    pgw_out_mem(&w, accept, 28);
    PGW_OUT_LIT(&w, "\r\n");
    struct pgw_http_conn_names cn;
    pgw_http_conn_names_init(&cn, resp->headers, resp->num_headers);
    for (size_t i = 0; i < resp->num_headers; i++) {
        const struct pgw_http_header *f = &resp->headers[i];
        if (keep_101_field(f, &cn))
            pgw_out_field(&w, f->name, f->name_len, f->value, f->value_len);
    }
    pgw_out_field(&w, "X-Request-Id", 12, req->id, req->id_len);
    PGW_OUT_LIT(&w, "\r\n");
    size_t len = (size_t)(w.p - buf);
    evbuffer_add(req->conn->io.out, buf, len);
    req->bytes_out += len;
}

/* ---- Frames out ---- */

static uint64_t mask_next(void)
{
    if (mask_state == 0) {
        if (getrandom(&mask_state, sizeof(mask_state), 0) != (ssize_t)sizeof(mask_state))
            mask_state = (uint64_t)pgw_now_us() * 0x9E3779B97F4A7C15ull;
        mask_state |= 1;
    }
    mask_state ^= mask_state >> 12;
    mask_state ^= mask_state << 25;
    mask_state ^= mask_state >> 27;
    return mask_state * 0x2545F4914F6CDD1Dull;
}

static struct side *peer_of(struct pgw_ws_tunnel *t, struct side *s)
{
    return s == &t->cl ? &t->up : &t->cl;
}

/* Queues one frame to <to> (masked with a fresh key towards the upstream). Dropped when <to> is
 * gone or was sent a close: nothing may follow a close frame. */
static void send_frame(struct side *to, unsigned opcode, int fin, const uint8_t *data, size_t len)
{
    if (to->gone || to->close_sent)
        return;
    uint8_t hdr[PGW_WS_HEADER_MAX];
    struct evbuffer *out = to->io->out;
    if (to->is_client) {
        evbuffer_add(out, hdr, pgw_ws_frame_header(hdr, opcode, fin, len, NULL));
        if (len > 0)
            evbuffer_add(out, data, len);
        return;
    }
    uint64_t r = mask_next();
    uint8_t key[4];
    memcpy(key, &r, 4);
    size_t hl = pgw_ws_frame_header(hdr, opcode, fin, len, key);
    struct evbuffer_iovec v;
    int n = evbuffer_reserve_space(out, (ev_ssize_t)(hl + len), &v, 1);
    pgw_assert(n == 1 && v.iov_len >= hl + len);
    uint8_t *p = v.iov_base;
    memcpy(p, hdr, hl);
    pgw_ws_mask_copy(p + hl, data, len, key, 0);
    v.iov_len = hl + len;
    evbuffer_commit_space(out, &v, 1);
}

static void send_close(struct pgw_ws_tunnel *t, struct side *to, int code, const char *reason,
                       size_t reason_len)
{
    if (to->gone || to->close_sent)
        return;
    uint8_t payload[PGW_WS_CONTROL_MAX];
    size_t n = 0;
    if (code != PGW_WS_CLOSE_NO_STATUS && code != PGW_WS_CLOSE_ABNORMAL)
        n = pgw_ws_close_payload(payload, code, reason ? reason : "", reason ? reason_len : 0);
    send_frame(to, PGW_WS_OP_CLOSE, 1, payload, n);
    to->close_sent = 1;
    if (!t->ending) {
        t->ending = 1;
        pgw_io_read_timeout(&t->c->io, t->conf->close_timeout);
    }
}

/* Records the first close of the connection, for ws_close and the log. */
static void note_close(struct pgw_ws_tunnel *t, int code, const char *by, const char *reason,
                       size_t len)
{
    if (t->close_by != NULL)
        return;
    t->close_code = code;
    t->close_by = by;
    t->close_reason_len = reason != NULL ? PGW_MIN(len, sizeof(t->close_reason)) : 0;
    if (t->close_reason_len > 0)
        memcpy(t->close_reason, reason, t->close_reason_len);
}

static void flush_side(struct pgw_ws_tunnel *t, struct side *s);

/* ---- The end ---- */

static int side_done(const struct side *s)
{
    return s->gone || (s->close_sent && s->close_rcvd);
}

static void tun_end(struct pgw_ws_tunnel *t)
{
    t->finished = 1;
}

static void check_end(struct pgw_ws_tunnel *t)
{
    if (!t->finished && side_done(&t->cl) && side_done(&t->up))
        tun_end(t);
}

/* Closes both sides with <code> (gateway-initiated: idle, shutdown, policy). */
static void close_both(struct pgw_ws_tunnel *t, int code, const char *reason)
{
    note_close(t, code, "gateway", reason, strlen(reason));
    send_close(t, &t->cl, code, reason, strlen(reason));
    send_close(t, &t->up, code, reason, strlen(reason));
    t->cl.close_rcvd |= t->cl.gone;
    t->up.close_rcvd |= t->up.gone;
    check_end(t);
}

/* <s> broke the protocol: it gets <code>, the other side 1001 (client at fault) or 1011. */
static void side_fail(struct pgw_ws_tunnel *t, struct side *s, int code, const char *why)
{
    struct side *o = peer_of(t, s);
    pgw_log_limited(&fail_log, 1000, PGW_LOG_INFO,
                    "websocket %s from %s: %s sent %s: close %d", t->id, t->c->client_str, s->name,
                    why, code);
    note_close(t, code, "gateway", why, strlen(why));
    send_close(t, s, code, why, strlen(why));
    s->close_rcvd = 1; /* its answer is not awaited */
    if (s->is_client)
        t->linger = 1;
    if (s->is_client)
        send_close(t, o, PGW_WS_CLOSE_GOING_AWAY, "client error", 12);
    else
        send_close(t, o, PGW_WS_CLOSE_INTERNAL, "upstream error", 14);
    check_end(t);
}

/* <s>'s TCP connection ended (EOF or error). */
static void side_gone(struct pgw_ws_tunnel *t, struct side *s, const char *why)
{
    if (s->gone)
        return;
    struct side *o = peer_of(t, s);
    int abrupt = !s->close_rcvd;
    s->gone = 1;
    s->close_rcvd = 1;
    pgw_io_want_read(s->io, 0);
    pgw_io_want_write(s->io, 0);
    if (abrupt) {
        pgw_log_limited(&drop_log, 1000, PGW_LOG_INFO,
                        "websocket %s from %s: %s %s without a close frame", t->id,
                        t->c->client_str, s->name, why);
        note_close(t, PGW_WS_CLOSE_ABNORMAL, s->name, "", 0);
        if (s->is_client)
            send_close(t, o, PGW_WS_CLOSE_GOING_AWAY, "client closed", 13);
        else
            send_close(t, o, PGW_WS_CLOSE_GOING_AWAY, "upstream closed", 15);
    }
    check_end(t);
}

/* ---- Budget of messages being assembled ---- */

static void budget_unwait(struct pgw_ws_tunnel *t)
{
    if (!t->cl.budget_wait && !t->up.budget_wait)
        return;
    t->cl.budget_wait = t->up.budget_wait = 0;
    if (t->wait_prev)
        t->wait_prev->wait_next = t->wait_next;
    else
        budget_waiters = t->wait_next;
    if (t->wait_next)
        t->wait_next->wait_prev = t->wait_prev;
    t->wait_prev = t->wait_next = NULL;
}

static void tun_enter(struct pgw_ws_tunnel *t);
static void tun_leave(struct pgw_ws_tunnel *t);

static void on_budget(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    while (budget_waiters != NULL) {
        struct pgw_ws_tunnel *t = budget_waiters;
        if (budget_used >= t->c->gen->config->limits.websocket_buffer)
            return; /* still spent: wait for the next release */
        budget_unwait(t);
        tun_enter(t);
        tun_pump_both(t);
        tun_update_reading(t);
        tun_leave(t);
    }
}

static void budget_release(uint64_t n)
{
    pgw_assert(budget_used >= n);
    budget_used -= n;
    if (budget_waiters != NULL && n > 0) {
        if (budget_ev == NULL)
            budget_ev = evtimer_new(pgw_worker.base, on_budget, NULL);
        struct timeval tv = {0, 0};
        evtimer_add(budget_ev, &tv);
    }
}

/* Whether <s> must wait for budget before more of a message is assembled. */
static int budget_spent(struct pgw_ws_tunnel *t, struct side *s)
{
    if (!s->assemble || budget_used < t->c->gen->config->limits.websocket_buffer)
        return 0;
    if (!t->cl.budget_wait && !t->up.budget_wait) {
        t->wait_prev = NULL;
        t->wait_next = budget_waiters;
        if (budget_waiters)
            budget_waiters->wait_prev = t;
        budget_waiters = t;
    }
    s->budget_wait = 1;
    return 1;
}

/* ---- Messages through the policies ---- */

static void message_done(struct pgw_ws_tunnel *t, int rc);
static void message_relayed(struct pgw_ws_tunnel *t, unsigned opcode, const char *data,
                            size_t len);

/* The message assembled from <s> is complete: run ws_message over it. */
static void run_message(struct pgw_ws_tunnel *t, struct side *s)
{
    size_t len = s->msg ? evbuffer_get_length(s->msg) : 0;
    const char *data = len ? (const char *)evbuffer_pullup(s->msg, -1) : "";
    t->lua_busy = 1;
    t->busy_client = s->is_client;
    t->in_flight_len = len;
    int rc = pgw_task_ws_message(t->lua, s->is_client, s->msg_opcode, data, len);
    if (rc == PGW_DECLINED) /* no function for this one (an outbound message, say) */
        message_relayed(t, s->msg_opcode, data, len);
    if (len > 0) { /* Lua holds its own copy now, or it was sent */
        evbuffer_drain(s->msg, len);
        budget_release(len);
    }
    if (rc != PGW_AGAIN && rc != PGW_DECLINED)
        message_done(t, rc);
}

/* The message in flight (busy_client, in_flight_len) is through: counted against the side it
 * came from, which is returned. */
static struct side *message_end(struct pgw_ws_tunnel *t)
{
    struct side *s = t->busy_client ? &t->cl : &t->up;
    t->lua_busy = 0;
    s->messages++;
    s->bytes += t->in_flight_len;
    return s;
}

/* A message no policy function runs for: sent on as assembled. */
static void message_relayed(struct pgw_ws_tunnel *t, unsigned opcode, const char *data,
                            size_t len)
{
    send_frame(peer_of(t, message_end(t)), opcode, 1, (const uint8_t *)data, len);
}

static void message_done(struct pgw_ws_tunnel *t, int rc)
{
    struct side *o = peer_of(t, message_end(t));
    if (rc == PGW_ERR) {
        close_both(t, PGW_WS_CLOSE_INTERNAL, "policy error");
        return;
    }
    if (t->policy_close != 0) {
        close_both(t, t->policy_close, t->policy_reason);
        return;
    }
    if (rc == PGW_DONE) /* pgw.ws.drop() */
        return;
    unsigned opcode;
    const char *data;
    size_t len;
    if (pgw_task_ws_result(t->lua, &opcode, &data, &len) != PGW_OK) {
        close_both(t, PGW_WS_CLOSE_INTERNAL, "policy error");
        return;
    }
    send_frame(o, opcode, 1, (const uint8_t *)data, len);
}

static void connect_done(struct pgw_ws_tunnel *t, int rc)
{
    t->lua_busy = 0;
    t->connecting = 0;
    if (rc == PGW_ERR)
        close_both(t, PGW_WS_CLOSE_INTERNAL, "policy error");
    else if (t->policy_close != 0)
        close_both(t, t->policy_close, t->policy_reason);
}

void pgw_ws_task_done(struct pgw_ws_tunnel *t, int rc)
{
    tun_enter(t);
    if (!t->connecting)
        message_done(t, rc);
    else
        connect_done(t, rc);
    if (!t->finished)
        tun_pump_both(t);
    tun_settle(t);
    tun_leave(t);
}

void pgw_ws_tunnel_send(struct pgw_ws_tunnel *t, int to_client, unsigned opcode,
                        const char *data, size_t len)
{
    struct side *to = to_client ? &t->cl : &t->up;
    /* An upstream message streaming to the client (no outbound function, so not assembled) must
     * keep its fragments together: the reply waits for its end, and the client is not read
     * meanwhile, which bounds the wait to one message's replies. The other way cannot happen:
     * a client's messages stream only when no ws_message function exists at all. */
    if (to_client && !t->up.assemble && t->up.parser.msg_opcode != 0 && !to->gone &&
        !to->close_sent) {
        t->replies_waiting++;
        queue_to_client(t, opcode | PUSH_REPLY, data, len);
        return;
    }
    send_frame(to, opcode, 1, (const uint8_t *)data, len);
    if (!to->gone)
        pgw_io_want_write(to->io, 1); /* flushed from the write event, outside Lua */
}

void pgw_ws_tunnel_close_by_policy(struct pgw_ws_tunnel *t, int code, const char *reason,
                                   size_t reason_len)
{
    t->policy_close = code;
    t->policy_reason_len = PGW_MIN(reason_len, sizeof(t->policy_reason) - 1);
    memcpy(t->policy_reason, reason, t->policy_reason_len);
    t->policy_reason[t->policy_reason_len] = '\0';
}

/* ---- Frames in ---- */

static void on_data(struct pgw_ws_tunnel *t, struct side *s, const struct pgw_ws_chunk *ch)
{
    struct side *o = peer_of(t, s);
    if (ch->first)
        s->msg_opcode = ch->opcode;
    if (!s->assemble) {
        send_frame(o, ch->first ? ch->opcode : PGW_WS_OP_CONT, ch->fin, ch->data, ch->len);
        s->bytes += ch->len;
        s->messages += ch->fin;
        return;
    }
    if (ch->len > 0) {
        if (s->msg == NULL)
            s->msg = evbuffer_new();
        evbuffer_add(s->msg, ch->data, ch->len);
        budget_used += ch->len;
    }
    if (ch->fin)
        run_message(t, s);
}

static void on_close_frame(struct pgw_ws_tunnel *t, struct side *s, const struct pgw_ws_chunk *ch)
{
    struct side *o = peer_of(t, s);
    s->close_rcvd = 1;
    note_close(t, ch->close_code, s->name, (const char *)ch->reason, ch->reason_len);
    if (o->gone && !s->close_sent) /* nobody to forward to: answer it ourselves */
        send_close(t, s, ch->close_code == PGW_WS_CLOSE_NO_STATUS ? PGW_WS_CLOSE_NORMAL
                                                                  : ch->close_code,
                   "", 0);
    else
        send_close(t, o, ch->close_code, (const char *)ch->reason, ch->reason_len);
    check_end(t);
}

static void on_chunk(struct pgw_ws_tunnel *t, struct side *s, const struct pgw_ws_chunk *ch)
{
    switch (ch->opcode) {
    case PGW_WS_OP_TEXT:
    case PGW_WS_OP_BINARY:
        on_data(t, s, ch);
        break;
    case PGW_WS_OP_PING:
    case PGW_WS_OP_PONG:
        send_frame(peer_of(t, s), ch->opcode, 1, ch->data, ch->len);
        break;
    case PGW_WS_OP_CLOSE:
        on_close_frame(t, s, ch);
        break;
    }
}

/* Whether <s> may be parsed now. */
static int side_can_run(struct pgw_ws_tunnel *t, struct side *s)
{
    if (t->finished || t->lua_busy || s->close_rcvd || s->budget_wait ||
        (s->is_client && t->replies_waiting > 0))
        return 0;
    struct side *o = peer_of(t, s);
    return o->gone || evbuffer_get_length(o->io->out) < PGW_OUTPUT_HIGH;
}

/* Parses what <s> sent, as far as the tunnel's state allows. */
static void side_process(struct pgw_ws_tunnel *t, struct side *s)
{
    struct evbuffer *in = s->io->in;
    while (side_can_run(t, s)) {
        size_t len = evbuffer_get_length(in);
        if (len == 0)
            return;
        if (budget_spent(t, s))
            return;
        uint8_t *buf = evbuffer_pullup(in, -1);
        size_t used = 0;
        struct pgw_ws_chunk ch;
        int rc = pgw_ws_parse(&s->parser, buf, len, &used, &ch);
        if (rc == PGW_ERR) {
            evbuffer_drain(in, len);
            side_fail(t, s, s->parser.close_code, s->parser.err);
            return;
        }
        if (rc == PGW_AGAIN) {
            evbuffer_drain(in, len);
            return;
        }
        if (!t->ending)
            pgw_io_read_timeout(&t->c->io, t->conf->idle_timeout); /* a frame: activity */
        on_chunk(t, s, &ch);
        evbuffer_drain(in, used);
    }
    if (s->close_rcvd && !s->gone) /* nothing it sends after its close counts */
        evbuffer_drain(in, evbuffer_get_length(in));
}

static void tun_pump_both(struct pgw_ws_tunnel *t)
{
    side_pump(t, &t->cl);
    if (!t->finished)
        side_pump(t, &t->up);
}

/* Parses what <s> sent, then takes its EOF into account once nothing it sent before is left. */
static void side_pump(struct pgw_ws_tunnel *t, struct side *s)
{
    side_process(t, s);
    if (!t->finished && s->eof && !s->gone &&
        (s->close_rcvd || evbuffer_get_length(s->io->in) == 0))
        side_gone(t, s, "closed the connection");
}

/* ---- I/O ---- */

static void flush_side(struct pgw_ws_tunnel *t, struct side *s)
{
    if (s->gone)
        return;
    if (pgw_io_flush(s->io, t->c->gen->config->timeouts.send) == PGW_ERR)
        side_gone(t, s, strerror(s->io->err_no));
}

static void tun_update_reading(struct pgw_ws_tunnel *t)
{
    if (t->finished)
        return;
    for (int i = 0; i < 2; i++) {
        struct side *s = i ? &t->up : &t->cl;
        if (s->gone || s->eof)
            continue;
        int on = s->close_rcvd || side_can_run(t, s);
        if (on && evbuffer_get_length(s->io->in) >= WS_READ_MAX)
            on = 0;
        pgw_io_want_read(s->io, on);
    }
}

/* Writes what is queued to both sides and sets which sides are read. */
static void tun_settle(struct pgw_ws_tunnel *t)
{
    if (t->finished)
        return;
    if (t->pushes != NULL && evbuffer_get_length(t->pushes) > 0 && deliver_pushes(t))
        side_pump(t, &t->cl); /* the replies it waited for are out: what it sent meanwhile */
    if (t->finished)
        return;
    flush_side(t, &t->cl);
    flush_side(t, &t->up);
    tun_update_reading(t);
}

static void side_read(struct pgw_ws_tunnel *t, struct side *s)
{
    size_t have = evbuffer_get_length(s->io->in);
    if (have < WS_READ_MAX && !s->eof) {
        ssize_t n = pgw_io_read(s->io, WS_READ_MAX - have);
        if (n == PGW_ERR)
            side_gone(t, s, strerror(s->io->err_no)); /* the other side is told below */
        if (n == 0) {
            s->eof = 1;
            pgw_io_want_read(s->io, 0);
        }
    }
    side_pump(t, s);
    tun_settle(t);
}

/* <s>'s output drained: the other side may go on. */
static void side_write(struct pgw_ws_tunnel *t, struct side *s)
{
    flush_side(t, s);
    if (t->finished || s->gone)
        return;
    if (evbuffer_get_length(s->io->out) < PGW_OUTPUT_LOW) {
        struct side *o = peer_of(t, s);
        side_pump(t, o);
        flush_side(t, s);
    }
    tun_update_reading(t);
}

static void on_up_read(evutil_socket_t fd, short what, void *arg)
{
    struct pgw_ws_tunnel *t = arg;
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    tun_enter(t);
    side_read(t, &t->up);
    tun_leave(t);
}

static void on_up_write(evutil_socket_t fd, short what, void *arg)
{
    struct pgw_ws_tunnel *t = arg;
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    tun_enter(t);
    side_write(t, &t->up);
    tun_leave(t);
}

static void on_up_timer(evutil_socket_t fd, short what, void *arg)
{
    struct pgw_ws_tunnel *t = arg;
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    int expired = pgw_io_timer_fired(t->up.io);
    if (expired == 0)
        return;
    tun_enter(t);
    if (expired & PGW_IO_WRITE_EXPIRED)
        side_gone(t, &t->up, "did not read for timeouts.send");
    tun_leave(t);
}

void pgw_ws_on_client_read(struct pgw_ws_tunnel *t)
{
    tun_enter(t);
    side_read(t, &t->cl);
    tun_leave(t);
}

void pgw_ws_on_client_write(struct pgw_ws_tunnel *t)
{
    tun_enter(t);
    side_write(t, &t->cl);
    tun_leave(t);
}

void pgw_ws_on_client_timer(struct pgw_ws_tunnel *t)
{
    int expired = pgw_io_timer_fired(&t->c->io);
    if (expired == 0)
        return;
    tun_enter(t);
    if (expired & PGW_IO_WRITE_EXPIRED) {
        side_gone(t, &t->cl, "did not read for timeouts.send");
    } else if (t->ending) {
        pgw_log_limited(&timeout_log, 1000, PGW_LOG_INFO,
                        "websocket %s from %s: close handshake not finished in time", t->id,
                        t->c->client_str);
        tun_end(t);
    } else {
        close_both(t, PGW_WS_CLOSE_GOING_AWAY, "idle timeout");
    }
    tun_settle(t);
    tun_leave(t);
}

void pgw_ws_tunnel_shutdown(struct pgw_ws_tunnel *t)
{
    tun_enter(t);
    if (!t->finished)
        close_both(t, PGW_WS_CLOSE_GOING_AWAY, "gateway shutting down");
    tun_settle(t);
    tun_leave(t);
}

/* ---- Life ---- */

static void run_close_stage(struct pgw_ws_tunnel *t)
{
    if (t->closed_run || t->lua == NULL)
        return;
    t->closed_run = 1;
    struct pgw_ws_close_info info = {
        .code = t->close_by ? t->close_code : PGW_WS_CLOSE_ABNORMAL,
        .by = t->close_by ? t->close_by : "gateway",
        .reason = t->close_reason,
        .reason_len = t->close_reason_len,
        .duration = (double)(pgw_now_us() - t->start_us) / 1e6,
        .messages_in = t->cl.messages,
        .messages_out = t->up.messages,
        .bytes_in = t->cl.bytes,
        .bytes_out = t->up.bytes,
    };
    pgw_task_ws_close(t->lua, &info);
}

/* The access-log line of the connection's end (the handshake had its own, status 101). */
static void access_log_close(const struct pgw_ws_tunnel *t)
{
    if (!pgw_access_log_enabled())
        return;
    const struct pgw_conn *c = t->c;
    char ts[32];
    pgw_log_time(ts);
    char *line = pgw_access_log_reserve(2048);
    char *p = line;
    p += sprintf(p, "{\"time\":\"%s\",\"request_id\":\"%s\",\"websocket_id\":\"%s\","
                    "\"event\":\"websocket_close\","
                    "\"listener\":\"%s\",\"route\":\"%s\",\"client\":\"%s\",\"upstream\":\"%s\","
                    "\"duration_ms\":%.3f,\"messages_in\":%" PRIu64 ",\"messages_out\":%" PRIu64
                    ",\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64 ",\"close_code\":%d,"
                    "\"closed_by\":\"%s\",\"close_reason\":\"",
                 ts, t->request_id, t->id, c->gen->config->listeners[c->listener_index].name,
                 t->route->name,
                 t->client_str, pgw_proxy_upstream_label(t->uc),
                 (double)(pgw_now_us() - t->start_us) / 1000.0, t->cl.messages, t->up.messages,
                 t->cl.bytes, t->up.bytes, t->close_by ? t->close_code : PGW_WS_CLOSE_ABNORMAL,
                 t->close_by ? t->close_by : "gateway");
    p += pgw_json_escape(p, t->close_reason, t->close_reason_len);
    p += sprintf(p, "\"}\n");
    pgw_access_log_commit((size_t)(p - line));
}

/* Frees what the tunnel owns; the client connection is left to the caller. */
static void ids_remove(struct pgw_ws_tunnel *t);
static void push_unlist(struct pgw_ws_tunnel *t);

static void tun_release(struct pgw_ws_tunnel *t)
{
    run_close_stage(t);
    access_log_close(t);
    budget_unwait(t);
    ids_remove(t);
    push_unlist(t);
    if (t->pushes != NULL)
        evbuffer_free(t->pushes);
    for (int i = 0; i < 2; i++) {
        struct side *s = i ? &t->up : &t->cl;
        if (s->msg != NULL) {
            budget_release(evbuffer_get_length(s->msg));
            evbuffer_free(s->msg);
        }
    }
    if (t->uc != NULL) {
        if (!t->up.gone)
            pgw_io_flush(t->up.io, 0); /* the close frame, as far as the socket takes it */
        pgw_proxy_upstream_free(t->uc);
    }
    pgw_task_ws_free(t->lua);
    t->c->ws = NULL;
    free(t);
}

static void tun_enter(struct pgw_ws_tunnel *t)
{
    t->depth++;
    pgw_conn_enter(t->c);
}

static void tun_leave(struct pgw_ws_tunnel *t)
{
    struct pgw_conn *c = t->c;
    if (--t->depth == 0 && t->finished) {
        int client_gone = t->cl.gone, linger = t->linger;
        tun_release(t);
        if (client_gone)
            pgw_conn_close(c, NULL);
        else
            pgw_conn_end(c, linger);
    }
    pgw_conn_leave(c);
}

const char *pgw_ws_tunnel_id(const struct pgw_ws_tunnel *t) { return t->id; }

const char *pgw_ws_tunnel_route(const struct pgw_ws_tunnel *t) { return t->route->name; }

const char *pgw_ws_tunnel_client(const struct pgw_ws_tunnel *t) { return t->client_str; }

void pgw_ws_tunnel_free(struct pgw_ws_tunnel *t)
{
    if (t != NULL)
        tun_release(t);
}

/* ---- Connections by id, and pushes (pgw.ws.send) ---- */


static struct pgw_ws_tunnel **ids;  /* chained buckets, hashed on the id's first hex digits */
static size_t ids_cap, ids_count;
static struct pgw_ws_tunnel *push_list;
static struct event *push_ev;

/* The first 8 hex digits of a (random) id. */
static size_t id_hash(const char *id)
{
    size_t h = 0;
    for (int i = 0; i < 8; i++)
        h = h << 4 | (size_t)(id[i] <= '9' ? id[i] - '0' : id[i] - 'a' + 10);
    return h;
}

static void ids_grow(void)
{
    size_t cap = ids_cap ? ids_cap * 2 : 1024;
    struct pgw_ws_tunnel **v = pgw_calloc(cap, sizeof(*v));
    for (size_t i = 0; i < ids_cap; i++)
        for (struct pgw_ws_tunnel *t = ids[i], *next; t != NULL; t = next) {
            next = t->id_next;
            size_t h = id_hash(t->id) & (cap - 1);
            t->id_next = v[h];
            v[h] = t;
        }
    free(ids);
    ids = v;
    ids_cap = cap;
}

static void ids_add(struct pgw_ws_tunnel *t)
{
    if (ids_count >= ids_cap)
        ids_grow();
    size_t h = id_hash(t->id) & (ids_cap - 1);
    t->id_next = ids[h];
    ids[h] = t;
    ids_count++;
}

static void ids_remove(struct pgw_ws_tunnel *t)
{
    struct pgw_ws_tunnel **pp = &ids[id_hash(t->id) & (ids_cap - 1)];
    while (*pp != NULL && *pp != t)
        pp = &(*pp)->id_next;
    if (*pp == t) {
        *pp = t->id_next;
        ids_count--;
    }
}

int pgw_ws_id_valid(const char *id, size_t len)
{
    if (len != 32)
        return 0;
    for (size_t i = 0; i < 32; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return 0;
    return 1;
}

static struct pgw_ws_tunnel *ids_find(const char *id, size_t len)
{
    if (ids_cap == 0 || !pgw_ws_id_valid(id, len))
        return NULL;
    for (struct pgw_ws_tunnel *t = ids[id_hash(id) & (ids_cap - 1)]; t != NULL; t = t->id_next)
        if (memcmp(t->id, id, 32) == 0)
            return t;
    return NULL;
}

static void push_unlist(struct pgw_ws_tunnel *t)
{
    if (!t->push_listed)
        return;
    if (t->push_prev)
        t->push_prev->push_next = t->push_next;
    else
        push_list = t->push_next;
    if (t->push_next)
        t->push_next->push_prev = t->push_prev;
    t->push_prev = t->push_next = NULL;
    t->push_listed = 0;
}

static void on_push(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    while (push_list != NULL) {
        struct pgw_ws_tunnel *t = push_list;
        push_unlist(t);
        tun_enter(t);
        tun_settle(t); /* delivers what it can, flushes */
        tun_leave(t);
    }
}

/* Sends the waiting pushes to the client while nothing else is under way towards it: no policy
 * run, and no upstream message half relayed (its fragments must stay together). Each push goes
 * through the outbound ws_message functions like an upstream message, if there are any; replies
 * queued behind a streaming upstream message go as they are. Returns whether the last waiting
 * reply went (the client may be read again). */
static int deliver_pushes(struct pgw_ws_tunnel *t)
{
    struct evbuffer *q = t->pushes;
    unsigned replies = t->replies_waiting;
    while (evbuffer_get_length(q) > 0 && !t->finished && !t->lua_busy && !t->cl.close_sent &&
           (t->up.assemble || t->up.parser.msg_opcode == 0)) {
        uint8_t hdr[5];
        evbuffer_copyout(q, hdr, 5);
        uint32_t len;
        memcpy(&len, hdr + 1, 4);
        evbuffer_drain(q, 5);
        const char *data = len ? (const char *)evbuffer_pullup(q, len) : "";
        unsigned opcode = hdr[0] & ~PUSH_REPLY;
        if (hdr[0] & PUSH_REPLY) {
            t->replies_waiting--;
            send_frame(&t->cl, opcode, 1, (const uint8_t *)data, len);
        } else if (!t->up.assemble) {
            send_frame(&t->cl, opcode, 1, (const uint8_t *)data, len);
            t->up.messages++;
            t->up.bytes += len;
        } else {
            t->lua_busy = 1;
            t->busy_client = 0; /* outbound, as if the upstream had sent it */
            t->in_flight_len = len;
            int rc = pgw_task_ws_message(t->lua, 0, opcode, data, len);
            if (rc == PGW_DECLINED)
                message_relayed(t, opcode, data, len);
            else if (rc != PGW_AGAIN)
                message_done(t, rc);
        }
        evbuffer_drain(q, len);
    }
    if (t->cl.close_sent || t->finished) { /* nothing more goes to the client */
        evbuffer_drain(q, evbuffer_get_length(q));
        t->replies_waiting = 0;
    }
    return replies > 0 && t->replies_waiting == 0;
}

/* Appends a message to <t>'s queue towards the client and has the event loop deliver it (never
 * inside the caller's Lua). <kind>: the opcode, with PUSH_REPLY for a pgw.ws.reply. */
static void queue_to_client(struct pgw_ws_tunnel *t, unsigned kind, const char *data, size_t len)
{
    if (t->pushes == NULL)
        t->pushes = evbuffer_new();
    uint8_t hdr[5] = {(uint8_t)kind};
    uint32_t l32 = (uint32_t)len;
    memcpy(hdr + 1, &l32, 4);
    evbuffer_add(t->pushes, hdr, 5);
    evbuffer_add(t->pushes, data, len);
    if (!t->push_listed) {
        t->push_listed = 1;
        t->push_prev = NULL;
        t->push_next = push_list;
        if (push_list)
            push_list->push_prev = t;
        push_list = t;
    }
    if (push_ev == NULL)
        push_ev = evtimer_new(pgw_worker.base, on_push, NULL);
    struct timeval tv = {0, 0};
    evtimer_add(push_ev, &tv);
}

const char *pgw_ws_push_reason(int status)
{
    switch (status) {
    case PGW_WS_PUSH_SENT: return NULL;
    case PGW_WS_PUSH_UNKNOWN: return "unknown connection";
    case PGW_WS_PUSH_CLOSED: return "closed";
    case PGW_WS_PUSH_FULL: return "queue full";
    default: return "timeout";
    }
}

int pgw_ws_push(const char *id, size_t id_len, unsigned opcode, const char *data, size_t len)
{
    struct pgw_ws_tunnel *t = ids_find(id, id_len);
    if (t == NULL)
        return PGW_WS_PUSH_UNKNOWN;
    if (t->finished || t->ending || t->cl.gone)
        return PGW_WS_PUSH_CLOSED;
    if (t->pushes != NULL && evbuffer_get_length(t->pushes) + len + 5 > PUSH_QUEUE_MAX)
        return PGW_WS_PUSH_FULL;
    queue_to_client(t, opcode, data, len);
    return PGW_WS_PUSH_SENT;
}

/* 32 hex digits from the kernel's generator: an id nobody can guess or choose, since policies
 * may address a connection by it. */
static void random_id(char out[33])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t r[16];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
        uint64_t a = mask_next(), b = mask_next();
        memcpy(r, &a, 8);
        memcpy(r + 8, &b, 8);
    }
    for (int i = 0; i < 16; i++) {
        out[2 * i] = hex[r[i] >> 4];
        out[2 * i + 1] = hex[r[i] & 15];
    }
    out[32] = '\0';
}

static void side_init(struct side *s, struct pgw_io *io, int is_client, uint64_t max_message)
{
    s->io = io;
    s->is_client = is_client ? 1 : 0;
    s->name = is_client ? "client" : "upstream";
    pgw_ws_parser_init(&s->parser, is_client, max_message);
}

void pgw_ws_tunnel_open(struct pgw_req *req, const struct pgw_http_response *resp,
                        size_t head_len, struct pgw_upstream_conn *uc, struct pgw_io *up)
{
    struct pgw_conn *c = req->conn;
    struct pgw_ws_tunnel *t = pgw_calloc(1, sizeof(*t));
    t->c = c;
    t->uc = uc;
    t->route = req->route;
    t->conf = req->route->websocket;
    t->start_us = pgw_now_us();
    memcpy(t->request_id, req->id, req->id_len + 1);
    memcpy(t->client_str, req->client_str, sizeof(t->client_str));
    random_id(t->id);
    ids_add(t);
    side_init(&t->cl, &c->io, 1, t->conf->max_message);
    side_init(&t->up, up, 0, t->conf->max_message);
    write_101(req, resp);
    evbuffer_drain(up->in, head_len);
    up->read_deadline = 0; /* the tunnel's deadlines run on the client's timer */
    pgw_proxy_upstream_adopt(uc, on_up_read, on_up_write, on_up_timer, t);
    t->lua = pgw_task_ws_new(req, t);
    t->cl.assemble = t->lua != NULL && pgw_task_ws_has_message(t->lua, 1);
    t->up.assemble = t->lua != NULL && pgw_task_ws_has_message(t->lua, 0);
    c->ws = t;
    pgw_req_finish_upgraded(req); /* the pool is cleared: req is gone */
    tun_enter(t);
    pgw_io_read_timeout(&c->io, t->conf->idle_timeout);
    if (t->lua != NULL && pgw_task_ws_has(t->lua, PGW_STAGE_WS_CONNECT)) {
        flush_side(t, &t->cl); /* the 101 goes first */
        t->lua_busy = 1;       /* nothing is relayed before ws_connect returns */
        t->connecting = 1;
        int rc = pgw_task_ws_connect(t->lua);
        if (rc != PGW_AGAIN)
            connect_done(t, rc);
    }
    if (!t->finished && !t->lua_busy)
        tun_pump_both(t); /* frames that came right behind the handshake */
    tun_settle(t);
    if (!t->finished)
        pgw_io_kick(&c->io); /* TLS may hold records read with the handshake */
    tun_leave(t);
}
