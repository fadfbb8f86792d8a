/* request.c: one request from its parsed head to its access-log line: the pipeline (stages,
 * normalisation, routing, handler), gateway-generated answers, the request body towards the
 * upstream, the response head and body towards the client, and the end of the request
 * (keep-alive or close). See server.h for ownership.
 */
#include "log.h"
#include "lua_task.h"
#include "out.h"
#include "proxy.h"
#include "server.h"
#include "tls.h"
#include "wsproxy.h"

#include <inttypes.h>
#include <stdio.h>
#include <sys/socket.h>

static struct pgw_log_ratelimit reject_log;

/* Pipeline phases, in order: the listener's rewrite policies, routing, the route's rewrite
 * policies, access (listener's then route's), the handler. A phase whose policies wait ends in
 * PGW_AGAIN and pgw_req_stage_done() continues with the next one. */
enum { PHASE_REWRITE, PHASE_ROUTE, PHASE_ROUTE_REWRITE, PHASE_ACCESS, PHASE_HANDLER };

static void req_finish(struct pgw_req *req);

/* ---- Small writers ---- */

/* Reserves <max> bytes at the end of <buf> for an out writer; out_commit() adds what was written. */
static struct evbuffer_iovec out_reserve(struct evbuffer *buf, size_t max, struct pgw_out *o)
{
    struct evbuffer_iovec v;
    int n = evbuffer_reserve_space(buf, (ev_ssize_t)max, &v, 1);
    pgw_assert(n == 1 && v.iov_len >= max);
    o->p = v.iov_base;
    o->end = (char *)v.iov_base + max;
    return v;
}

static void out_commit(struct evbuffer *buf, struct evbuffer_iovec v, const struct pgw_out *o)
{
    v.iov_len = (size_t)(o->p - (char *)v.iov_base);
    evbuffer_commit_space(buf, &v, 1);
}

/* ---- Request ids ---- */

static uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static int id_char_ok(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '_' || ch == '.';
}

static void req_set_id(struct pgw_req *req)
{
    const struct pgw_http_header *h =
        pgw_http_find(req->h.headers, req->h.num_headers, "x-request-id", 12);
    if (h != NULL && h->value_len > 0 && h->value_len < sizeof(req->id)) {
        size_t i = 0;
        while (i < h->value_len && id_char_ok((unsigned char)h->value[i]))
            i++;
        if (i == h->value_len) { /* a sane id from the client is kept end to end */
            memcpy(req->id, h->value, i);
            req->id[i] = '\0';
            req->id_len = i;
            req->id_from_client = 1;
            return;
        }
    }
    static const char hex[] = "0123456789abcdef";
    uint64_t n = ++pgw_worker.id_counter;
    uint64_t a = mix64(pgw_worker.id_seed ^ n), b = mix64(a ^ n);
    for (int i = 0; i < 16; i++) {
        req->id[i] = hex[(a >> (60 - 4 * i)) & 15];
        req->id[16 + i] = hex[(b >> (60 - 4 * i)) & 15];
    }
    req->id[32] = '\0';
    req->id_len = 32;
}

/* ---- Starting a request ---- */

static const char *rebase(const char *p, const char *from, size_t len, const char *to)
{
    return (p >= from && p < from + len) ? to + (p - from) : p;
}

static struct pgw_req *req_new(struct pgw_conn *c)
{
    struct pgw_req *req = pgw_pool_calloc(c->pool, sizeof(*req));
    req->conn = c;
    req->client = c->client;
    memcpy(req->client_str, c->client_str, sizeof(req->client_str));
    req->pool = c->pool;
    req->gen = c->gen;
    req->start_us = pgw_now_us();
    req->upstream_index = -1;
    req->termination = "ok";
    req->keep_alive = 1;
    c->req = req;
    return req;
}

/* Copies the head into the pool so that its slices outlive the input buffer. */
static void req_copy_head(struct pgw_req *req, const char *head, size_t len,
                          const struct pgw_http_request *h)
{
    char *copy = pgw_pool_alloc(req->pool, len);
    memcpy(copy, head, len);
    req->h = *h;
    req->h.method = rebase(h->method, head, len, copy);
    req->h.target = rebase(h->target, head, len, copy);
    req->h.path = rebase(h->path, head, len, copy);
    req->h.query = h->query ? rebase(h->query, head, len, copy) : NULL;
    req->h.authority = h->authority ? rebase(h->authority, head, len, copy) : NULL;
    struct pgw_http_header *hs = pgw_pool_alloc(req->pool, sizeof(*hs) * (h->num_headers + 1));
    for (size_t i = 0; i < h->num_headers; i++) {
        hs[i].name = rebase(h->headers[i].name, head, len, copy);
        hs[i].name_len = h->headers[i].name_len;
        hs[i].value = rebase(h->headers[i].value, head, len, copy);
        hs[i].value_len = h->headers[i].value_len;
    }
    req->h.headers = hs;
}

/* With real_ip.from: x-forwarded-for and a trusted peer, the client is the rightmost address of
 * X-Forwarded-For that is not itself a trusted proxy (per request: one balancer connection
 * carries requests from many clients). */
static void req_set_client(struct pgw_req *req)
{
    const struct pgw_config_real_ip *rip = &req->gen->config->real_ip;
    if (rip->from != PGW_REAL_IP_XFF || !req->conn->peer_trusted)
        return;
    const char *vals[16];
    size_t lens[16], n = 0;
    for (size_t i = 0; i < req->h.num_headers; i++) {
        const struct pgw_http_header *f = &req->h.headers[i];
        if (!PGW_IEQ_LIT(f->name, f->name_len, "x-forwarded-for"))
            continue;
        if (n == PGW_ARRAY_LEN(vals)) { /* keep the rightmost fields: they are the trusted ones */
            memmove(vals, vals + 1, sizeof(vals[0]) * (n - 1));
            memmove(lens, lens + 1, sizeof(lens[0]) * (n - 1));
            n--;
        }
        vals[n] = f->value;
        lens[n++] = f->value_len;
    }
    struct sockaddr_storage sa;
    if (n == 0 || pgw_addr_from_xff(vals, lens, n, rip->trusted, rip->num_trusted, &sa) != PGW_OK)
        return;
    req->client = sa;
    pgw_addr_format((const struct sockaddr *)&sa, req->client_str, sizeof(req->client_str));
}

static void req_pipeline(struct pgw_req *req, int phase);

void pgw_req_start(struct pgw_conn *c, const char *head, size_t head_len,
                   const struct pgw_http_request *h)
{
    struct pgw_req *req = req_new(c);
    req_copy_head(req, head, head_len, h);
    evbuffer_drain(c->io.in, head_len);
    req->bytes_in = head_len;
    req_set_id(req);
    req_set_client(req);
    pgw_worker.requests++;
    req->body_left = h->body == PGW_HTTP_BODY_LENGTH ? h->content_length : 0;
    req->body_done = h->body == PGW_HTTP_BODY_NONE;
    pgw_http_chunked_init(&req->chunked);
    pgw_io_read_timeout(&c->io, req->body_done ? 0 : c->gen->config->timeouts.body);
    if (c->cert_invalid) { /* verify_client: optional, and the certificate did not verify */
        pgw_log_info("request %s from %s: client certificate invalid: %s", req->id,
                     req->client_str, c->cert_error);
        pgw_req_respond_error(req, 403, "client_cert_invalid", 1);
        return;
    }
    if (h->is_connect) {
        pgw_req_respond_error(req, 405, "bad_request", 1);
        return;
    }
    if (h->body == PGW_HTTP_BODY_LENGTH && h->content_length > c->gen->config->limits.body) {
        /* Refused before reading a byte of it; no "100 Continue" was or will be sent. */
        pgw_log_info("request %s: body of %" PRIu64 " bytes over the limit of %" PRIu64,
                     req->id, h->content_length, c->gen->config->limits.body);
        pgw_req_respond_error(req, 413, "body_too_large", 1);
        return;
    }
    req_pipeline(req, PHASE_REWRITE);
}

void pgw_req_reject(struct pgw_conn *c, int status, const char *why)
{
    pgw_req_reject_as(c, status, why, status == 408 ? "client_timeout" : "bad_request");
}

void pgw_req_reject_as(struct pgw_conn *c, int status, const char *why, const char *termination)
{
    pgw_log_limited(&reject_log, 1000, PGW_LOG_INFO, "client %s: %d: %s", c->client_str, status,
                    why ? why : "bad request");
    c->state = PGW_CONN_ACTIVE;
    struct pgw_req *req = req_new(c);
    req->bytes_in = evbuffer_get_length(c->io.in);
    req_set_id(req);
    req->body_done = 1;
    req->h.keep_alive = 0;
    pgw_req_respond_error(req, status, termination, 1);
}

/* ---- The pipeline ---- */

static void respond_exit(struct pgw_req *req);
static int resp_header_filter(struct pgw_req *req);
static void write_head(struct pgw_req *req, int status, const char *reason, size_t reason_len,
                       const struct pgw_http_header *hs, size_t nh,
                       const struct pgw_http_response *resp);

/* What a stage's result means for the pipeline: 1 go on, 0 answered or waiting. */
static int stage_result(struct pgw_req *req, int r)
{
    if (r == PGW_OK)
        return 1;
    if (r == PGW_ERR && !req->finished)
        pgw_req_respond_error(req, 500, "policy_error", 0);
    else if (r == PGW_DONE && !req->finished)
        respond_exit(req);
    return 0; /* PGW_AGAIN: pgw_req_stage_done() continues the pipeline */
}

/* Runs the policies of <phase>; returns 1 to go on, 0 when the request was answered or waits. */
static int run_phase(struct pgw_req *req, int phase, unsigned stage, int only_listener,
                     int only_route)
{
    if (req->gen->policies == NULL)
        return 1;
    req->phase = phase;
    return stage_result(req, pgw_task_run_request_stage(req, stage, only_listener, only_route));
}

static void respond(struct pgw_req *req, int status, const char *body, size_t body_len,
                    int close, const char *extra, size_t extra_len);

/* Whether <h,n> can go into a Location as the host: a DNS name or IPv4 address, or a bracketed
 * IPv6 address, without a port. */
static int is_redirect_host(const char *h, size_t n)
{
    if (n == 0 || n > 255)
        return 0;
    int v6 = h[0] == '[';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)h[i];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                 (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' ||
                 (v6 && (ch == ':' || (ch == '[' && i == 0) || (ch == ']' && i == n - 1)));
        if (!ok)
            return 0;
    }
    return !v6 || h[n - 1] == ']';
}

/* A route with https_only reached over plain HTTP: 308 to the same URL over https for GET and
 * HEAD, 426 otherwise (a redirect would lose the body, and the client may not follow it). */
static void respond_https_only(struct pgw_req *req)
{
    const char *host = req->h.authority;
    size_t hl = req->h.authority_len;
    if (host != NULL && hl > 0 && host[0] == '[') { /* [v6]:port */
        const char *rb = memchr(host, ']', hl);
        hl = rb ? (size_t)(rb - host) + 1 : hl;
    } else if (host != NULL) {
        const char *colon = memchr(host, ':', hl);
        hl = colon ? (size_t)(colon - host) : hl;
    }
    int is_get = PGW_IEQ_LIT(req->h.method, req->h.method_len, "GET") ||
                 PGW_IEQ_LIT(req->h.method, req->h.method_len, "HEAD");
    if (!is_get || host == NULL || !is_redirect_host(host, hl)) {
        static const char up[] = "Upgrade: TLS/1.2, HTTP/1.1\r\nConnection: Upgrade\r\n";
        static const char body[] = "{\"status\":426,\"error\":\"Upgrade Required\"}\n";
        req->termination = "https_required";
        respond(req, 426, body, sizeof(body) - 1, 1, up, sizeof(up) - 1);
        return;
    }
    size_t pl = PGW_MIN(req->h.path_len, 8192), ql = PGW_MIN(req->h.query_len, 8192);
    char *loc = pgw_pool_alloc(req->pool, 40 + hl + pl + ql);
    char port[16] = "";
    if (req->route->https_port != 0 && req->route->https_port != 443)
        snprintf(port, sizeof(port), ":%d", req->route->https_port);
    int n = snprintf(loc, 40 + hl + pl + ql, "Location: https://%.*s%s%.*s%s%.*s\r\n", (int)hl,
                     host, port, (int)pl, req->h.path, req->h.query ? "?" : "", (int)ql,
                     req->h.query ? req->h.query : "");
    req->termination = "https_redirect";
    respond(req, 308, "", 0, 0, loc, (size_t)n);
}

static int req_route(struct pgw_req *req)
{
    struct pgw_conn *c = req->conn;
    const struct pgw_config *cfg = req->gen->config;
    const char *err = NULL;
    if (req->h.target_form == PGW_HTTP_TARGET_ASTERISK) {
        req->path = pgw_pool_strndup(req->pool, "*", 1);
        req->path_len = 1;
        pgw_req_respond_error(req, 404, "no_route", 1);
        return 0;
    }
    req->path = pgw_pool_alloc(req->pool, req->h.path_len + 1);
    if (pgw_route_normalize_path(req->h.path, req->h.path_len, req->path, &req->path_len,
                                 cfg->allow_encoded_slash, &err) != PGW_OK) {
        req->path_len = 0;
        pgw_log_info("request %s from %s: bad path: %s", req->id, req->client_str, err);
        pgw_req_respond_error(req, 400, "bad_request", 1);
        return 0;
    }
    req->path[req->path_len] = '\0';
    int r = pgw_route_match(req->gen->tables[c->listener_index], req->h.authority,
                            req->h.authority_len, req->h.method, req->h.method_len, req->path,
                            req->path_len, &req->match);
    if (r != PGW_OK) {
        /* Like every 4xx the gateway makes itself, a routing miss ends the connection: a client
         * probing for routes gets one answer per connection, and nothing pipelined behind a
         * request we refused is ever looked at. */
        int status = req->match.method_mismatch ? 405 : 404;
        pgw_req_respond_error(req, status, "no_route", 1);
        return 0;
    }
    req->route = req->match.route;
    if (req->upstream_index < 0) /* a listener policy may have chosen one */
        req->upstream_index = req->route->upstream_index;
    if (req->route->https_only && c->io.tls == NULL) {
        respond_https_only(req);
        return 0;
    }
    return pgw_ws_handshake_check(req);
}

static void respond_status(struct pgw_req *req);

static void req_pipeline(struct pgw_req *req, int phase)
{
    switch (phase) {
    case PHASE_REWRITE:
        if (!run_phase(req, PHASE_REWRITE, PGW_STAGE_REWRITE, 1, 0))
            return;
        /* fall through */
    case PHASE_ROUTE:
        if (!req_route(req))
            return;
        /* fall through */
    case PHASE_ROUTE_REWRITE:
        if (!run_phase(req, PHASE_ROUTE_REWRITE, PGW_STAGE_REWRITE, 0, 1))
            return;
        /* fall through */
    case PHASE_ACCESS:
        if (!run_phase(req, PHASE_ACCESS, PGW_STAGE_ACCESS, 0, 0))
            return;
        /* fall through */
    case PHASE_HANDLER:
        if (req->body_lost) { /* read_body refused it and no policy answered */
            pgw_req_respond_error(req, 413, "body_too_large", 1);
            return;
        }
        if (req->route->type == PGW_ROUTE_STATUS)
            respond_status(req);
        else
            pgw_proxy_start(req);
        return;
    }
}

void pgw_req_stage_done(struct pgw_req *req, int rc)
{
    if (req->finished)
        return;
    struct pgw_conn *c = req->conn;
    pgw_conn_enter(c);
    if (stage_result(req, rc))
        req_pipeline(req, req->phase + 1);
    pgw_conn_leave(c);
}

/* ---- Answers made by the gateway ---- */

/* Queues a complete response with a small body and finishes the request. */
static void respond(struct pgw_req *req, int status, const char *body, size_t body_len,
                    int close, const char *extra, size_t extra_len)
{
    struct pgw_conn *c = req->conn;
    int is_head = req->h.method && PGW_IEQ_LIT(req->h.method, req->h.method_len, "HEAD");
    if (close || !req->body_done || pgw_worker.stopping)
        req->keep_alive = 0; /* an unread body cannot be skipped safely */
    req->keep_alive &= req->h.keep_alive;
    req->status = status;
    struct pgw_out o;
    struct evbuffer_iovec v = out_reserve(c->io.out, 256 + req->id_len + body_len + extra_len, &o);
    PGW_OUT_LIT(&o, "HTTP/1.1 ");
    pgw_out_u64(&o, (uint64_t)status);
    PGW_OUT_LIT(&o, " ");
    const char *reason = pgw_http_reason(status);
    pgw_out_mem(&o, reason, strlen(reason));
    PGW_OUT_LIT(&o, "\r\nContent-Type: application/json\r\nContent-Length: ");
    pgw_out_u64(&o, body_len);
    PGW_OUT_LIT(&o, "\r\n");
    if (req->id_len > 0)
        pgw_out_field(&o, "X-Request-Id", 12, req->id, req->id_len);
    if (extra_len > 0)
        pgw_out_mem(&o, extra, extra_len);
    if (!req->keep_alive)
        PGW_OUT_LIT(&o, "Connection: close\r\n");
    else if (req->h.minor_version == 0)
        PGW_OUT_LIT(&o, "Connection: keep-alive\r\n");
    PGW_OUT_LIT(&o, "\r\n");
    if (!is_head)
        pgw_out_mem(&o, body, body_len);
    req->bytes_out += (size_t)(o.p - (char *)v.iov_base);
    out_commit(c->io.out, v, &o);
    req->resp_started = 1;
    req->resp_done = 1;
    req_finish(req);
}

static void respond_error(struct pgw_req *req, int status, const char *termination, int close,
                          const char *extra, size_t extra_len)
{
    if (req->resp_started) { /* too late for an answer: the client sees a cut response */
        pgw_req_abort(req, termination);
        return;
    }
    req->termination = termination;
    char body[160];
    int n = snprintf(body, sizeof(body), "{\"status\":%d,\"error\":\"%s\",\"request_id\":\"%s\"}\n",
                     status, pgw_http_reason(status), req->id);
    respond(req, status, body, (size_t)n, close, extra, extra_len);
}

void pgw_req_respond_error(struct pgw_req *req, int status, const char *termination, int close)
{
    respond_error(req, status, termination, close, NULL, 0);
}

void pgw_req_respond_error_extra(struct pgw_req *req, int status, const char *termination,
                                 const char *extra, size_t extra_len)
{
    respond_error(req, status, termination, 1, extra, extra_len);
}

/* The answer pgw.exit() decided: header_filter and body_filter of every policy run on it. */
static void respond_exit(struct pgw_req *req)
{
    struct pgw_exit *e = &req->lua->exit;
    int is_head = PGW_IEQ_LIT(req->h.method, req->h.method_len, "HEAD");
    req->status = e->status;
    req->resp_headers = e->headers;
    req->resp_num_headers = e->num_headers;
    req->resp_headers_cap = e->cap_headers;
    if (resp_header_filter(req) != PGW_OK)
        return;
    const char *body = e->body ? e->body : "";
    size_t len = e->body ? e->body_len : 0;
    if (pgw_task_body_filter(req, body, len, 1, &body, &len) != PGW_OK) {
        req->resp_headers = NULL;
        pgw_req_respond_error(req, 500, "policy_error", 0);
        return;
    }
    if (!req->body_done || pgw_worker.stopping)
        req->keep_alive = 0; /* an unread body cannot be skipped safely */
    req->keep_alive &= req->h.keep_alive;
    int no_body = req->status == 204 || req->status == 304;
    if (!no_body) { /* the length after the filters */
        char num[24];
        int n = snprintf(num, sizeof(num), "%zu", len);
        if (req->resp_num_headers == req->resp_headers_cap) {
            struct pgw_http_header *hs =
                pgw_pool_alloc(req->pool, sizeof(*hs) * (req->resp_headers_cap + 1));
            if (req->resp_num_headers > 0)
                memcpy(hs, req->resp_headers, sizeof(*hs) * req->resp_num_headers);
            req->resp_headers = hs;
            req->resp_headers_cap++;
        }
        req->resp_headers[req->resp_num_headers++] = (struct pgw_http_header){
            "Content-Length", 14, pgw_pool_strndup(req->pool, num, (size_t)n), (size_t)n};
    }
    write_head(req, req->status, NULL, 0, req->resp_headers, req->resp_num_headers, NULL);
    if (!is_head && !no_body) {
        evbuffer_add(req->conn->io.out, body, len);
        req->bytes_out += len;
    }
    req->resp_done = 1;
    req_finish(req);
}

static void respond_status(struct pgw_req *req)
{
    static const char body[] = "{\"status\":\"ok\"}\n";
    respond(req, 200, body, sizeof(body) - 1, 0, NULL, 0);
}

/* ---- Request body towards the upstream ---- */

static void chunk_header(struct evbuffer *dst, size_t n)
{
    char line[24];
    int len = snprintf(line, sizeof(line), "%zx\r\n", n);
    evbuffer_add(dst, line, (size_t)len);
}

static int body_pump_length(struct pgw_req *req, struct evbuffer *dst, size_t max)
{
    struct evbuffer *in = req->conn->io.in;
    size_t n = PGW_MIN(evbuffer_get_length(in), max);
    if ((uint64_t)n > req->body_left)
        n = (size_t)req->body_left;
    if (n > 0) {
        evbuffer_remove_buffer(in, dst, n);
        req->body_left -= n;
        req->bytes_in += n;
        req->body_started = 1;
    }
    return req->body_left == 0 ? PGW_DONE : PGW_OK;
}

/* Decodes what the client buffer holds of a chunked body and re-encodes it into <dst>: the
 * upstream sees clean framing (no extensions, no trailers, CRLF only). */
static int body_pump_chunked(struct pgw_req *req, struct evbuffer *dst, size_t max)
{
    struct evbuffer *in = req->conn->io.in;
    size_t len = PGW_MIN(evbuffer_get_length(in), max);
    if (len == 0)
        return PGW_OK;
    const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
    size_t pos = 0;
    int r = PGW_OK;
    while (pos < len && r == PGW_OK) {
        size_t used = 0, off = 0, dlen = 0;
        r = pgw_http_chunked_decode(&req->chunked, p + pos, len - pos, &used, &off, &dlen);
        if (r == PGW_ERR)
            break;
        if (dlen > 0) {
            req->body_left += dlen; /* counts decoded bytes for the limit */
            if (req->body_left > req->gen->config->limits.body) {
                evbuffer_drain(in, pos);
                pgw_log_info("request %s: chunked body over the limit of %" PRIu64, req->id,
                             req->gen->config->limits.body);
                pgw_req_respond_error(req, 413, "body_too_large", 1);
                return PGW_ERR;
            }
            if (!req->body_decode)
                chunk_header(dst, dlen);
            evbuffer_add(dst, p + pos + off, dlen);
            if (!req->body_decode)
                evbuffer_add(dst, "\r\n", 2);
        }
        pos += used;
        if (used == 0)
            break;
    }
    evbuffer_drain(in, pos);
    req->bytes_in += pos;
    req->body_started |= pos > 0;
    if (r == PGW_ERR) {
        pgw_log_info("request %s from %s: bad chunked body: %s", req->id, req->client_str,
                     req->chunked.err ? req->chunked.err : "?");
        pgw_req_respond_error(req, 400, "bad_request", 1);
        return PGW_ERR;
    }
    if (r == PGW_DONE) {
        if (!req->body_decode)
            evbuffer_add(dst, "0\r\n\r\n", 5);
        return PGW_DONE;
    }
    return PGW_OK;
}

/* The body a policy buffered or replaced goes out whole, once per attempt. */
static int body_pump_buffered(struct pgw_req *req, struct evbuffer *dst)
{
    if (!req->body_done) { /* set_body before the client's body was read: it is dropped */
        req->body_done = 1;
        req->body_discarded = 1;
        req->keep_alive = 0;
        pgw_req_client_read(req, 0);
    }
    evbuffer_add(dst, req->body_data, req->body_data_len);
    return PGW_DONE;
}

int pgw_req_body_pump(struct pgw_req *req, struct evbuffer *dst, size_t max)
{
    struct pgw_conn *c = req->conn;
    if (req->body_buffered && !req->body_decode)
        return body_pump_buffered(req, dst);
    if (req->body_done)
        return PGW_DONE;
    if (req->h.expect_continue && !req->continue_sent && !req->resp_started &&
        evbuffer_get_length(c->io.in) == 0) {
        /* The client waits for our go-ahead; the upstream never sees Expect. */
        evbuffer_add(c->io.out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        req->continue_sent = 1;
        if (pgw_io_flush(&c->io, c->gen->config->timeouts.send) == PGW_ERR) {
            pgw_req_abort(req, "client_closed");
            return PGW_ERR;
        }
    }
    size_t before = evbuffer_get_length(c->io.in);
    int r = req->h.body == PGW_HTTP_BODY_CHUNKED ? body_pump_chunked(req, dst, max)
                                                  : body_pump_length(req, dst, max);
    if (r == PGW_ERR)
        return PGW_ERR;
    if (r == PGW_DONE) {
        req->body_done = 1;
        pgw_io_read_timeout(&c->io, 0);
    } else if (evbuffer_get_length(c->io.in) < before) {
        pgw_io_read_timeout(&c->io, c->gen->config->timeouts.body); /* progress */
    }
    if (!c->io.reading)
        pgw_req_client_read(req, 1);
    if (r != PGW_DONE && c->client_eof && evbuffer_get_length(c->io.in) == 0) {
        pgw_log_info("request %s from %s: client closed before the end of the body", req->id,
                     c->client_str);
        pgw_req_respond_error(req, 400, "client_closed", 1);
        return PGW_ERR;
    }
    return r;
}

void pgw_req_client_read(struct pgw_req *req, int on)
{
    struct pgw_conn *c = req->conn;
    int reading = on && !c->client_eof && pgw_conn_read_budget(c) > 0;
    int was = c->io.reading;
    pgw_io_want_read(&c->io, reading);
    /* The body deadline measures the client, not us: it runs only while we wait to read. When
     * the upstream is slow to take the body, its send_timeout governs instead. */
    if (!req->body_done && was != reading)
        pgw_io_read_timeout(&c->io, reading ? c->gen->config->timeouts.body : 0);
}

void pgw_req_on_client_data(struct pgw_req *req)
{
    if (req->lua != NULL && req->lua->wait != NULL && req->conn->client_eof &&
        !req->body_reading) {
        /* The client left while a policy waits: nobody wants the answer any more. */
        pgw_log_info("request %s from %s: client closed while a policy waited", req->id,
                     req->client_str);
        pgw_req_abort(req, "client_closed");
        return;
    }
    if (req->body_reading) {
        pgw_lua_body_on_data(req);
        return;
    }
    if (!req->body_done && req->px != NULL)
        pgw_proxy_on_client_data(req);
    else if (!req->body_done && req->conn->client_eof && !req->resp_started)
        pgw_req_respond_error(req, 400, "client_closed", 1);
    /* else: pipelined bytes wait in the buffer; reading stops when it is full */
}

void pgw_req_on_client_drain(struct pgw_req *req)
{
    if (req->px != NULL)
        pgw_proxy_on_client_drain(req);
}

void pgw_req_on_client_timeout(struct pgw_req *req, int expired)
{
    PGW_UNUSED(expired);
    if (!req->body_done && req->lua != NULL && req->lua->wait != NULL && !req->body_reading) {
        /* a policy waits on something else: the client is not the one late */
        pgw_io_read_timeout(&req->conn->io, req->gen->config->timeouts.body);
        return;
    }
    if (!req->body_done) {
        pgw_log_info("request %s from %s: request body not received in time", req->id,
                     req->client_str);
        pgw_req_respond_error(req, 408, "client_timeout", 1);
    }
}

/* ---- Response towards the client ---- */

size_t pgw_req_output_pending(const struct pgw_req *req)
{
    return evbuffer_get_length(req->conn->io.out);
}

int pgw_req_flush(struct pgw_req *req)
{
    struct pgw_conn *c = req->conn;
    int r = pgw_io_flush(&c->io, c->gen->config->timeouts.send);
    if (r == PGW_ERR) {
        pgw_req_abort(req, "client_closed");
        return PGW_ERR;
    }
    return r;
}

/* <cn>: the names the response's Connection fields list (dropped too). */
static int skip_response_field(const struct pgw_http_header *f,
                               const struct pgw_http_conn_names *cn)
{
    if (pgw_http_is_hop_by_hop(f->name, f->name_len))
        return 1;
    if (PGW_IEQ_LIT(f->name, f->name_len, "x-request-id"))
        return 1; /* ours replaces it, so one id follows the request everywhere */
    return pgw_http_conn_names_has(cn, f->name, f->name_len);
}

/* Gives the policies the response fields: an array in the pool that header_filter edits. With
 * <deep>, the strings are copied too, because body_filter and log read them after the upstream's
 * buffer moved on; without, they stay slices of that buffer, which lives until the head is
 * written. */
static void resp_headers_copy(struct pgw_req *req, const struct pgw_http_response *resp, int deep)
{
    size_t n = resp->num_headers;
    req->resp_headers = pgw_pool_alloc(req->pool, sizeof(*req->resp_headers) * (n + 8));
    req->resp_headers_cap = n + 8;
    req->resp_num_headers = 0;
    struct pgw_http_conn_names cn;
    pgw_http_conn_names_init(&cn, resp->headers, n);
    for (size_t i = 0; i < n; i++) {
        const struct pgw_http_header *f = &resp->headers[i];
        if (skip_response_field(f, &cn))
            continue;
        struct pgw_http_header *d = &req->resp_headers[req->resp_num_headers++];
        *d = *f;
        if (deep) {
            d->name = pgw_pool_strndup(req->pool, f->name, f->name_len);
            d->value = pgw_pool_strndup(req->pool, f->value, f->value_len);
        }
    }
}

/* Runs header_filter over req->status and req->resp_headers. Returns PGW_OK, or PGW_ERR after
 * answering 500 (nothing was sent yet). */
static int resp_header_filter(struct pgw_req *req)
{
    if (pgw_task_run_request_stage(req, PGW_STAGE_HEADER_FILTER, 0, 0) == PGW_OK)
        return PGW_OK;
    req->resp_headers = NULL; /* the 500 goes out without the policies' fields */
    req->resp_num_headers = 0;
    pgw_req_respond_error(req, 500, "policy_error", 0);
    return PGW_ERR;
}

static uint64_t declared_length(const struct pgw_req *req)
{
    const struct pgw_http_header *f =
        pgw_http_find(req->resp_headers, req->resp_num_headers, "content-length", 14);
    uint64_t v = 0;
    for (size_t i = 0; f != NULL && i < f->value_len; i++)
        v = v * 10 + (uint64_t)(f->value[i] - '0');
    return f != NULL ? v : UINT64_MAX;
}

/* Writes "HTTP/1.1 <status> <reason>" and the fields to the client, with ours after them. */
static void write_head(struct pgw_req *req, int status, const char *reason, size_t reason_len,
                       const struct pgw_http_header *hs, size_t nh,
                       const struct pgw_http_response *resp)
{
    struct pgw_conn *c = req->conn;
    size_t max = 128 + req->id_len + reason_len;
    for (size_t i = 0; i < nh; i++)
        max += hs[i].name_len + hs[i].value_len + 4;
    struct pgw_out o;
    struct evbuffer_iovec v = out_reserve(c->io.out, max, &o);
    PGW_OUT_LIT(&o, "HTTP/1.1 ");
    pgw_out_u64(&o, (uint64_t)status);
    PGW_OUT_LIT(&o, " ");
    if (reason_len > 0) {
        pgw_out_mem(&o, reason, reason_len);
    } else {
        const char *r = pgw_http_reason(status);
        pgw_out_mem(&o, r, strlen(r));
    }
    PGW_OUT_LIT(&o, "\r\n");
    struct pgw_http_conn_names cn;
    if (resp != NULL)
        pgw_http_conn_names_init(&cn, resp->headers, resp->num_headers);
    for (size_t i = 0; i < nh; i++) {
        const struct pgw_http_header *f = &hs[i];
        if (resp == NULL || !skip_response_field(f, &cn))
            pgw_out_field(&o, f->name, f->name_len, f->value, f->value_len);
    }
    if (req->resp_chunked)
        PGW_OUT_LIT(&o, "Transfer-Encoding: chunked\r\n");
    pgw_out_field(&o, "X-Request-Id", 12, req->id, req->id_len);
    if (!req->keep_alive)
        PGW_OUT_LIT(&o, "Connection: close\r\n");
    else if (req->h.minor_version == 0)
        PGW_OUT_LIT(&o, "Connection: keep-alive\r\n");
    PGW_OUT_LIT(&o, "\r\n");
    req->bytes_out += (size_t)(o.p - (char *)v.iov_base);
    out_commit(c->io.out, v, &o);
    req->resp_started = 1;
}

int pgw_req_send_head(struct pgw_req *req, const struct pgw_http_response *resp,
                      enum pgw_http_body body)
{
    struct pgw_conn *c = req->conn;
    int client11 = req->h.minor_version == 1;
    req->status = resp->status;
    const struct pgw_policy_chain *chains[2];
    if (pgw_task_chains(req, PGW_STAGE_HEADER_FILTER | PGW_STAGE_BODY_FILTER | PGW_STAGE_LOG,
                        chains) > 0) {
        resp_headers_copy(req, resp, pgw_task_chains(req, PGW_STAGE_BODY_FILTER | PGW_STAGE_LOG,
                                                     chains) > 0);
        if (resp_header_filter(req) != PGW_OK)
            return PGW_ERR;
        req->resp_filtered = pgw_task_chains(req, PGW_STAGE_BODY_FILTER, chains) > 0;
        req->resp_no_body = body == PGW_HTTP_BODY_NONE;
        if (body == PGW_HTTP_BODY_LENGTH && req->resp_unframed)
            body = PGW_HTTP_BODY_EOF; /* a body filter may change the length */
        req->resp_declared = body == PGW_HTTP_BODY_LENGTH ? declared_length(req) : UINT64_MAX;
    }
    int unframed = body == PGW_HTTP_BODY_CHUNKED || body == PGW_HTTP_BODY_EOF;
    req->resp_chunked = client11 && unframed;
    if ((!client11 && unframed) || !req->body_done || !req->h.keep_alive || c->client_eof ||
        pgw_worker.stopping) /* draining: say so, the client opens its next one elsewhere */
        req->keep_alive = 0;
    if (req->resp_headers != NULL)
        write_head(req, req->status, req->status == resp->status ? resp->reason : NULL,
                   req->status == resp->status ? resp->reason_len : 0, req->resp_headers,
                   req->resp_num_headers, NULL);
    else
        write_head(req, resp->status, resp->reason, resp->reason_len, resp->headers,
                   resp->num_headers, resp);
    return PGW_OK;
}

static void send_bytes(struct pgw_req *req, const char *p, size_t len)
{
    struct evbuffer *out = req->conn->io.out;
    if (len == 0)
        return;
    if (req->resp_chunked)
        chunk_header(out, len);
    evbuffer_add(out, p, len);
    if (req->resp_chunked)
        evbuffer_add(out, "\r\n", 2);
    req->bytes_out += len;
    req->resp_sent += len;
}

/* Runs the body filters over <p,len>; PGW_ERR when a filter failed (the request was aborted). */
static int send_filtered(struct pgw_req *req, const char *p, size_t len, int eof)
{
    const char *o;
    size_t olen;
    if (pgw_task_body_filter(req, p, len, eof, &o, &olen) != PGW_OK) {
        pgw_req_abort(req, "policy_error");
        return PGW_ERR;
    }
    if (req->resp_no_body)
        return PGW_OK; /* no body may follow this head, whatever a filter returns */
    if (req->resp_declared != UINT64_MAX && req->resp_sent + olen > req->resp_declared) {
        pgw_log_error("request %s: a body_filter changed the length of a response whose "
                      "Content-Length was kept (clear it in header_filter)", req->id);
        olen = (size_t)(req->resp_declared - req->resp_sent); /* never more than declared */
        req->keep_alive = 0;
    }
    send_bytes(req, o, olen);
    return PGW_OK;
}

int pgw_req_send_body(struct pgw_req *req, struct evbuffer *src, size_t len)
{
    struct evbuffer *out = req->conn->io.out;
    if (len == 0)
        return PGW_OK;
    if (req->resp_filtered) {
        const char *p = (const char *)evbuffer_pullup(src, (ev_ssize_t)len);
        if (send_filtered(req, p, len, 0) != PGW_OK)
            return PGW_ERR; /* aborted: src went with the upstream connection */
        evbuffer_drain(src, len);
        return PGW_OK;
    }
    if (req->resp_chunked) {
        chunk_header(out, len);
        evbuffer_remove_buffer(src, out, len);
        evbuffer_add(out, "\r\n", 2);
    } else {
        evbuffer_remove_buffer(src, out, len);
    }
    req->bytes_out += len;
    return PGW_OK;
}

void pgw_req_send_end(struct pgw_req *req)
{
    if (req->resp_filtered) {
        if (send_filtered(req, "", 0, 1) != PGW_OK)
            return;
        if (req->resp_declared != UINT64_MAX && req->resp_sent != req->resp_declared) {
            pgw_log_error("request %s: a body_filter sent %" PRIu64 " bytes of a response whose "
                          "Content-Length says %" PRIu64 ": closing", req->id, req->resp_sent,
                          req->resp_declared);
            pgw_req_abort(req, "policy_error");
            return;
        }
    }
    if (req->resp_chunked) {
        evbuffer_add(req->conn->io.out, "0\r\n\r\n", 5);
        req->bytes_out += 5;
    }
    req->resp_done = 1;
    req_finish(req);
}

void pgw_req_finish_upgraded(struct pgw_req *req)
{
    req->status = 101;
    req->termination = "upgraded";
    req->resp_started = req->resp_done = 1;
    req->keep_alive = 0;
    req_finish(req);
}

void pgw_req_abort(struct pgw_req *req, const char *termination)
{
    if (req->finished)
        return;
    req->termination = termination ? termination : "aborted";
    req->keep_alive = 0;
    if (!req->resp_started)
        req->status = 0; /* nothing was answered; the log says why */
    req_finish(req);
}

/* ---- End of a request ---- */

static void access_log_write(struct pgw_req *req)
{
    if (!pgw_access_log_enabled())
        return;
    struct pgw_conn *c = req->conn;
    const char *path = req->path_len ? req->path : req->h.path;
    size_t plen = PGW_MIN(req->path_len ? req->path_len : req->h.path_len, 2048);
    size_t mlen = PGW_MIN(req->h.method_len, 64);
    char *line = pgw_access_log_reserve(16384);
    char *p = line;
    char ts[32];
    pgw_log_time(ts);
    uint64_t now = pgw_now_us();
    const char *route = req->route ? req->route->name : "";
    p += sprintf(p, "{\"time\":\"%s\",\"request_id\":\"%s\",\"listener\":\"%s\",\"route\":\"%s\","
                    "\"client\":\"%s\",\"method\":\"",
                 ts, req->id, c->gen->config->listeners[c->listener_index].name, route,
                 req->client_str);
    p += pgw_json_escape(p, req->h.method ? req->h.method : "", req->h.method ? mlen : 0);
    p += sprintf(p, "\",\"path\":\"");
    p += pgw_json_escape(p, path ? path : "", path ? plen : 0);
    p += sprintf(p, "\",\"status\":%d,\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64
                    ",\"upstream\":\"%s\",\"upstream_status\":%d,\"upstream_ms\":%.3f,"
                    "\"total_ms\":%.3f,\"retries\":%u,\"termination\":\"%s\","
                    "\"tls_version\":\"%s\",\"tls_cipher\":\"%s\",\"tls_resumed\":%s}\n",
                 req->status, req->bytes_in, req->bytes_out, req->upstream_addr,
                 req->upstream_status, (double)req->upstream_us / 1000.0,
                 (double)(now - req->start_us) / 1000.0, req->retries, req->termination,
                 pgw_tls_version(&c->io), pgw_tls_cipher(&c->io),
                 pgw_tls_resumed(&c->io) ? "true" : "false");
    pgw_access_log_commit((size_t)(p - line));
}

static void req_finish(struct pgw_req *req)
{
    struct pgw_conn *c = req->conn;
    pgw_assert(!req->finished);
    req->finished = 1;
    if (req->gen->policies != NULL)
        pgw_task_run_request_stage(req, PGW_STAGE_LOG, 0, 0); /* errors are logged only */
    access_log_write(req);
    if (c->ws != NULL) { /* upgraded: the connection now carries the tunnel, and no request */
        c->req = NULL;
        pgw_pool_free(c->pool); /* 4 KiB less per open WebSocket */
        c->pool = NULL;
        c->state = PGW_CONN_WS;
        return;
    }
    int keep = req->keep_alive && req->body_done && req->resp_done && !c->client_eof &&
               !pgw_worker.stopping;
    /* Unread input (a body we did not read, pipelined bytes behind an error) must be read and
     * dropped before the close, or the kernel's RST could destroy the answer in flight. */
    int linger = !keep && (!req->body_done || evbuffer_get_length(c->io.in) > 0 ||
                           req->status >= 400);
    c->req = NULL;
    pgw_pool_clear(c->pool); /* req is gone from here on; the upstream lease was released */
    if (!keep) {
        pgw_conn_end(c, linger);
        return;
    }
    c->state = PGW_CONN_IDLE;
    pgw_io_read_timeout(&c->io, c->gen->config->timeouts.keepalive);
    if (!c->io.reading)
        pgw_io_want_read(&c->io, 1);
    if (pgw_io_flush(&c->io, c->gen->config->timeouts.send) == PGW_ERR) {
        pgw_conn_close(c, NULL);
        return;
    }
    if (evbuffer_get_length(c->io.in) > 0)
        pgw_conn_process(c);
}
