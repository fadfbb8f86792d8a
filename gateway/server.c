/* server.c: the worker's event loop, generations, listeners, accept and the client connection
 * lifecycle (see server.h). The request pipeline itself lives in request.c.
 */
#include "server.h"
#include "log.h"
#include "policy.h"
#include "proxy.h"
#include "tls.h"
#include "jwt_provider.h"
#include "wsproxy.h"

#include <errno.h>
#include <event2/dns.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

static struct pgw_log_ratelimit accept_log, tls_log;

/* ---- Generations ---- */

struct pgw_gen *pgw_gen_new(struct pgw_config *config, uint64_t number, const char **err)
{
    struct pgw_gen *g = pgw_calloc(1, sizeof(*g));
    g->refs = 1;
    g->number = number;
    g->config = pgw_config_ref(config);
    g->tables = pgw_calloc(config->num_listeners, sizeof(*g->tables));
    for (size_t i = 0; i < config->num_listeners; i++) {
        g->tables[i] = pgw_route_table_new(config, config->listeners[i].name, err);
        if (g->tables[i] == NULL) {
            pgw_gen_unref(g);
            return NULL;
        }
    }
    g->upstreams = pgw_calloc(config->num_upstreams, sizeof(*g->upstreams));
    for (size_t i = 0; i < config->num_upstreams; i++)
        g->upstreams[i] = pgw_upstream_new(&config->upstreams[i]);
    g->req_limits.request_line = config->limits.request_line;
    g->req_limits.header_section = config->limits.header_section;
    g->req_limits.header_fields = config->limits.header_fields;
    g->req_limits.drop_underscores = config->underscores_in_headers;
    return g;
}

void pgw_gen_unref(struct pgw_gen *g)
{
    if (g == NULL || --g->refs > 0)
        return;
    for (size_t i = 0; g->tables && i < g->config->num_listeners; i++)
        pgw_route_table_free(g->tables[i]);
    for (size_t i = 0; g->upstreams && i < g->config->num_upstreams; i++)
        if (g->upstreams[i])
            pgw_upstream_free(g->upstreams[i]);
    free(g->tables);
    free(g->upstreams);
    pgw_policy_set_free(g->policies);
    pgw_tls_gen_free(g->tls);
    pgw_jwt_gen_free(g->jwt);
    pgw_config_unref(g->config);
    free(g);
}

/* ---- Connections ---- */

static void on_client_read(evutil_socket_t fd, short what, void *arg);
static void conn_tls_step(struct pgw_conn *c);
static void conn_read(struct pgw_conn *c);
static void on_client_write(evutil_socket_t fd, short what, void *arg);
static void on_client_timer(evutil_socket_t fd, short what, void *arg);

static void conn_free(struct pgw_conn *c)
{
    pgw_ws_tunnel_free(c->ws); /* before the generation goes: it runs on its policies */
    pgw_pool_free(c->pool); /* runs the request's cleanups: upstream lease, timers */
    pgw_io_clear(&c->io);
    pgw_gen_unref(c->gen);
    if (c->prev)
        c->prev->next = c->next;
    else
        pgw_worker.conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
    pgw_worker.num_conns--;
}

static void conn_linger(struct pgw_conn *c)
{
    if (!c->linger || c->client_eof) {
        pgw_conn_close(c, NULL);
        return;
    }
    if (c->io.tls != NULL)
        pgw_tls_send_close(&c->io);
    shutdown(c->io.fd, SHUT_WR);
    evbuffer_drain(c->io.in, evbuffer_get_length(c->io.in));
    c->io.write_deadline = 0;
    pgw_io_read_timeout(&c->io, PGW_LINGER_MS);
    pgw_io_want_read(&c->io, 1);
}

void pgw_conn_end(struct pgw_conn *c, int linger)
{
    c->state = PGW_CONN_CLOSING;
    c->linger = linger ? 1 : 0;
    pgw_io_read_timeout(&c->io, 0);
    int r = pgw_io_flush(&c->io, c->gen->config->timeouts.send);
    if (r == PGW_ERR) {
        pgw_conn_close(c, NULL);
        return;
    }
    if (r == PGW_AGAIN) {
        pgw_io_want_read(&c->io, 0); /* on_client_write lingers once flushed */
        return;
    }
    conn_linger(c);
}

void pgw_conn_enter(struct pgw_conn *c) { c->in_handler++; }

void pgw_conn_leave(struct pgw_conn *c)
{
    pgw_assert(c->in_handler > 0);
    if (--c->in_handler == 0 && c->close_asap)
        conn_free(c);
}

void pgw_conn_close(struct pgw_conn *c, const char *termination)
{
    if (c->dead)
        return; /* closing already: aborting the request below ends up here again */
    c->dead = 1;
    if (c->req != NULL && !c->req->finished)
        pgw_req_abort(c->req, termination);
    pgw_io_want_read(&c->io, 0);
    pgw_io_want_write(&c->io, 0);
    if (c->in_handler > 0) {
        c->close_asap = 1;
        return;
    }
    conn_free(c);
}

static int conn_uses_proxy_protocol(const struct pgw_conn *c)
{
    return c->gen->config->real_ip.from == PGW_REAL_IP_PROXY_PROTOCOL && c->peer_trusted;
}

static void conn_set_client(struct pgw_conn *c, const struct sockaddr_storage *sa)
{
    c->client = *sa;
    pgw_addr_format((const struct sockaddr *)sa, c->client_str, sizeof(c->client_str));
}

void pgw_conn_new(int listener_index, evutil_socket_t fd, const struct sockaddr_storage *peer)
{
    struct pgw_conn *c = pgw_calloc(1, sizeof(*c));
    struct pgw_gen *g = pgw_worker.gen;
    g->refs++;
    c->gen = g;
    c->id = ++pgw_worker.next_conn_id;
    c->listener_index = listener_index;
    c->peer = *peer;
    conn_set_client(c, peer);
    memcpy(c->peer_str, c->client_str, sizeof(c->peer_str)); /* before any PROXY header */
    const struct pgw_config_real_ip *rip = &g->config->real_ip;
    c->peer_trusted = rip->num_trusted > 0 &&
                      pgw_cidr_match_any(rip->trusted, rip->num_trusted,
                                         (const struct sockaddr *)peer);
    c->pool = pgw_pool_new(4096);
    pgw_io_init(&c->io, pgw_worker.base, fd, on_client_read, on_client_write, on_client_timer, c);
    pgw_worker.num_conns++;
    c->next = pgw_worker.conns;
    if (c->next)
        c->next->prev = c;
    pgw_worker.conns = c;
    /* A new connection must send its head within the header timeout, as nginx's
     * client_header_timeout (a TLS one its handshake within the handshake timeout first); an
     * idle keep-alive connection gets the keep-alive timeout. */
    const struct pgw_config_listener_tls *tls = g->config->listeners[listener_index].tls;
    c->state = conn_uses_proxy_protocol(c) ? PGW_CONN_PROXY_PROTOCOL
               : tls != NULL               ? PGW_CONN_TLS_DETECT
                                           : PGW_CONN_IDLE;
    pgw_io_read_timeout(&c->io, tls != NULL ? tls->handshake_timeout : g->config->timeouts.header);
    pgw_io_want_read(&c->io, 1);
    if (c->state == PGW_CONN_TLS_DETECT) {
        /* The ClientHello is usually there already (the client wrote it as its connect ended):
         * answering it now, not a loop pass later, halves the time clients wait for the server's
         * first flight when handshakes queue up. */
        pgw_conn_enter(c);
        conn_tls_step(c);
        pgw_conn_leave(c);
    }
}

static void conn_process_loop(struct pgw_conn *c);

size_t pgw_conn_read_budget(const struct pgw_conn *c)
{
    size_t have = evbuffer_get_length(c->io.in);
    size_t cap;
    switch (c->state) {
    case PGW_CONN_PROXY_PROTOCOL:
        cap = 16 + 65535;
        break;
    case PGW_CONN_IDLE:
    case PGW_CONN_HEAD:
        /* one byte more than the largest head, so that an oversized head is seen as such */
        cap = c->gen->req_limits.header_section + 1;
        break;
    case PGW_CONN_ACTIVE:
    case PGW_CONN_CLOSING: /* lingering: read and drop */
        cap = PGW_CLIENT_BUFFER_MAX;
        break;
    default:
        cap = 0;
    }
    return have >= cap ? 0 : cap - have;
}

/* On a TLS listener the PROXY header is peeked, then exactly its bytes are consumed: what
 * follows belongs to OpenSSL. */
static int conn_peek_proxy_header(struct pgw_conn *c)
{
    char *buf = pgw_pool_alloc(c->pool, 16 + 65535);
    ssize_t n = recv(c->io.fd, buf, 16 + 65535, MSG_PEEK);
    if (n == -1 && (errno == EAGAIN || errno == EINTR))
        return PGW_AGAIN;
    if (n <= 0)
        return PGW_ERR;
    struct sockaddr_storage src;
    socklen_t src_len;
    int r = pgw_addr_parse_proxy_protocol(buf, (size_t)n, &src, &src_len);
    if (r == PGW_AGAIN && n == 16 + 65535)
        r = PGW_ERR;
    if (r < 0)
        return r;
    if (recv(c->io.fd, buf, (size_t)r, 0) != r)
        return PGW_ERR;
    if (src.ss_family != AF_UNSPEC)
        conn_set_client(c, &src);
    c->state = PGW_CONN_TLS_DETECT;
    return PGW_OK;
}

static int conn_read_proxy_header(struct pgw_conn *c)
{
    size_t len = evbuffer_get_length(c->io.in);
    const char *p = (const char *)evbuffer_pullup(c->io.in, -1);
    struct sockaddr_storage src;
    socklen_t src_len;
    int r = pgw_addr_parse_proxy_protocol(p, len, &src, &src_len);
    if (r == PGW_AGAIN)
        return PGW_AGAIN;
    if (r < 0) {
        pgw_log_limited(&accept_log, 1000, PGW_LOG_WARN,
                        "connection from %s: invalid PROXY protocol header; closed",
                        c->client_str);
        return PGW_ERR;
    }
    if (src.ss_family != AF_UNSPEC)
        conn_set_client(c, &src);
    evbuffer_drain(c->io.in, (size_t)r);
    c->state = PGW_CONN_IDLE;
    return PGW_OK;
}

/* The first byte on a TLS listener: a handshake starts TLS; an upper-case letter is a plain HTTP
 * request, answered 400; anything else is closed. */
static void conn_tls_detect(struct pgw_conn *c)
{
    unsigned char b;
    ssize_t n = recv(c->io.fd, &b, 1, MSG_PEEK);
    if (n == -1 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        pgw_conn_close(c, NULL);
        return;
    }
    if (PGW_TLS_IS_HANDSHAKE_BYTE(b)) {
        pgw_tls_attach_server(&c->io, pgw_tls_listener_ctx(c->gen->tls, (size_t)c->listener_index));
        c->state = PGW_CONN_TLS_HANDSHAKE;
        return;
    }
    if (b >= 'A' && b <= 'Z') {
        c->state = PGW_CONN_IDLE;
        pgw_req_reject_as(c, 400, "plain HTTP request sent to the TLS port", "plain_http_on_tls");
        return;
    }
    pgw_log_limited(&tls_log, 1000, PGW_LOG_INFO,
                    "client %s: not a TLS handshake (first byte 0x%02x): closed", c->client_str, b);
    pgw_conn_close(c, NULL);
}

/* Advances the TLS start of a connection (read or write event). */
static void conn_tls_step(struct pgw_conn *c)
{
    if (c->state == PGW_CONN_PROXY_PROTOCOL) {
        int r = conn_peek_proxy_header(c);
        if (r == PGW_AGAIN)
            return;
        if (r == PGW_ERR) {
            pgw_log_limited(&accept_log, 1000, PGW_LOG_WARN,
                            "connection from %s: invalid PROXY protocol header; closed",
                            c->client_str);
            pgw_conn_close(c, "bad_request");
            return;
        }
    }
    if (c->state == PGW_CONN_TLS_DETECT)
        conn_tls_detect(c);
    if (c->state != PGW_CONN_TLS_HANDSHAKE)
        return;
    int r = pgw_tls_handshake(&c->io);
    if (r == PGW_AGAIN)
        return;
    if (r == PGW_ERR) {
        pgw_log_limited(&tls_log, 1000, PGW_LOG_INFO, "client %s: TLS handshake failed: %s",
                        c->client_str, pgw_tls_error());
        pgw_conn_close(c, NULL);
        return;
    }
    if (pgw_tls_peer_status(&c->io) == PGW_TLS_PEER_INVALID) {
        c->cert_invalid = 1;
        c->cert_error = pgw_tls_peer_error(&c->io);
    }
    c->state = PGW_CONN_IDLE;
    pgw_io_read_timeout(&c->io, c->gen->config->timeouts.header);
    pgw_io_want_read(&c->io, 1);
    /* The first request usually came with the client's Finished and waits inside OpenSSL: read
     * it now, not after every other event of this loop pass (each may be a handshake). */
    if (c->io.tr->has_pending(&c->io))
        conn_read(c);
}

static int conn_in_tls_start(const struct pgw_conn *c)
{
    return c->state == PGW_CONN_TLS_DETECT || c->state == PGW_CONN_TLS_HANDSHAKE ||
           (c->state == PGW_CONN_PROXY_PROTOCOL && c->io.tls == NULL &&
            c->gen->config->listeners[c->listener_index].tls != NULL);
}

void pgw_conn_process(struct pgw_conn *c)
{
    /* A loop, not recursion: a request answered at once lets the next pipelined one run, in
     * the outer call when this one is nested. */
    if (c->processing)
        return;
    c->processing = 1;
    conn_process_loop(c);
    c->processing = 0;
}

/* Between two requests a keep-alive connection moves to the newest generation, so that a reload
 * reaches clients and balancers that keep connections open for hours; a request in flight always
 * ends on the generation it started with. Returns 0 when the connection's listener (same name
 * and address) is gone from the new generation: the connection must close. */
static int conn_follow_gen(struct pgw_conn *c)
{
    struct pgw_gen *g = pgw_worker.gen;
    if (c->gen == g || g == NULL)
        return 1;
    const struct pgw_config_listener *old = &c->gen->config->listeners[c->listener_index];
    for (size_t i = 0; i < g->config->num_listeners; i++) {
        const struct pgw_config_listener *l = &g->config->listeners[i];
        if (strcmp(l->name, old->name) != 0 || !pgw_addr_equal(&l->sa, &old->sa))
            continue;
        if ((l->tls != NULL) != (c->io.tls != NULL))
            return 0; /* the listener turned TLS on or off: this connection speaks the old way */
        g->refs++;
        pgw_gen_unref(c->gen);
        c->gen = g;
        c->listener_index = (int)i;
        const struct pgw_config_real_ip *rip = &g->config->real_ip;
        c->peer_trusted = rip->num_trusted > 0 &&
                          pgw_cidr_match_any(rip->trusted, rip->num_trusted,
                                             (const struct sockaddr *)&c->peer);
        return 1;
    }
    return 0;
}

static void conn_process_loop(struct pgw_conn *c)
{
    while (!c->dead) {
        if (c->state == PGW_CONN_PROXY_PROTOCOL) {
            int r = conn_read_proxy_header(c);
            if (r == PGW_AGAIN)
                return;
            if (r == PGW_ERR) {
                pgw_conn_close(c, "bad_request");
                return;
            }
        }
        if (c->state != PGW_CONN_IDLE && c->state != PGW_CONN_HEAD)
            return;
        size_t len = evbuffer_get_length(c->io.in);
        if (len == 0)
            return;
        if (c->state == PGW_CONN_IDLE) {
            if (!conn_follow_gen(c)) {
                pgw_conn_close(c, NULL); /* its listener was removed by a reload */
                return;
            }
            c->state = PGW_CONN_HEAD;
            if (c->requests > 0) /* the head deadline starts at its first byte */
                pgw_io_read_timeout(&c->io, c->gen->config->timeouts.header);
        }
        const char *p = (const char *)evbuffer_pullup(c->io.in, -1);
        struct pgw_http_request h;
        struct pgw_http_header headers[PGW_MAX(1, c->gen->req_limits.header_fields)];
        int r = pgw_http_parse_request(p, len, &h, headers, PGW_ARRAY_LEN(headers),
                                       &c->gen->req_limits);
        if (r == PGW_AGAIN) {
            if (c->client_eof) {
                pgw_conn_close(c, "client_closed");
                return;
            }
            return;
        }
        if (r == PGW_ERR) {
            pgw_req_reject(c, h.status, h.err);
            return;
        }
        c->state = PGW_CONN_ACTIVE;
        c->requests++;
        pgw_req_start(c, p, (size_t)r, &h);
    }
}

static void conn_on_eof(struct pgw_conn *c)
{
    c->client_eof = 1;
    pgw_io_want_read(&c->io, 0);
    if (c->state == PGW_CONN_ACTIVE && c->req != NULL) {
        /* Half-close: the request may still be answered (HAProxy's default); a client that is
         * really gone makes the response write fail. */
        pgw_req_on_client_data(c->req);
        return;
    }
    if (c->state == PGW_CONN_HEAD) {
        pgw_conn_process(c); /* parses what is there once more; closes if incomplete */
        return;
    }
    pgw_conn_close(c, c->state == PGW_CONN_CLOSING ? NULL : "client_closed");
}

/* Reads what the client sent and acts on it (inside an enter/leave guard). */
static void conn_read(struct pgw_conn *c)
{
    size_t budget = pgw_conn_read_budget(c);
    if (conn_in_tls_start(c)) {
        conn_tls_step(c);
    } else if (budget == 0) { /* backpressure: resumed when the buffer drains */
        if (c->state == PGW_CONN_ACTIVE && c->req != NULL)
            pgw_req_client_read(c->req, 0);
        else
            pgw_io_want_read(&c->io, 0);
    } else {
        ssize_t n = pgw_io_read(&c->io, budget);
        if (n > 0) {
            if (c->state == PGW_CONN_ACTIVE)
                pgw_req_on_client_data(c->req);
            else if (c->state == PGW_CONN_CLOSING)
                evbuffer_drain(c->io.in, evbuffer_get_length(c->io.in));
            else
                pgw_conn_process(c);
        } else if (n == 0) {
            conn_on_eof(c);
        } else if (n == PGW_ERR) {
            pgw_conn_close(c, c->io.err_no == ECONNRESET ? "client_reset" : "client_closed");
        }
    }
}

static void on_client_read(evutil_socket_t fd, short what, void *arg)
{
    struct pgw_conn *c = arg;
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    if (c->ws != NULL) {
        pgw_ws_on_client_read(c->ws);
        return;
    }
    pgw_conn_enter(c);
    conn_read(c);
    pgw_conn_leave(c);
}

static void on_client_write(evutil_socket_t fd, short what, void *arg)
{
    struct pgw_conn *c = arg;
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    if (c->ws != NULL) {
        pgw_ws_on_client_write(c->ws);
        return;
    }
    pgw_conn_enter(c);
    if (conn_in_tls_start(c)) {
        conn_tls_step(c);
        pgw_conn_leave(c);
        return;
    }
    int r = pgw_io_flush(&c->io, c->gen->config->timeouts.send);
    if (r == PGW_ERR) {
        pgw_conn_close(c, "client_closed");
    } else if (c->state == PGW_CONN_CLOSING) {
        if (r == PGW_OK)
            conn_linger(c);
    } else if (c->req != NULL && evbuffer_get_length(c->io.out) < PGW_OUTPUT_LOW) {
        pgw_req_on_client_drain(c->req);
    }
    pgw_conn_leave(c);
}

static void on_client_timer(evutil_socket_t fd, short what, void *arg)
{
    struct pgw_conn *c = arg;
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    if (c->ws != NULL) {
        pgw_ws_on_client_timer(c->ws);
        return;
    }
    int expired = pgw_io_timer_fired(&c->io);
    if (expired == 0)
        return;
    pgw_conn_enter(c);
    if (expired & PGW_IO_WRITE_EXPIRED) {
        pgw_log_info("client %s: send timeout, connection closed", c->client_str);
        pgw_conn_close(c, "send_timeout");
    } else if (c->state == PGW_CONN_HEAD) {
        pgw_req_reject(c, 408, "request head not received in time");
    } else if (c->state == PGW_CONN_ACTIVE && c->req != NULL) {
        pgw_req_on_client_timeout(c->req, expired);
    } else if (c->state == PGW_CONN_CLOSING) {
        pgw_conn_close(c, NULL); /* lingering close reached its deadline */
    } else if (conn_in_tls_start(c)) {
        pgw_log_limited(&tls_log, 1000, PGW_LOG_INFO,
                        "client %s: TLS handshake not finished in time: closed", c->client_str);
        pgw_conn_close(c, NULL);
    } else {
        pgw_conn_close(c, NULL); /* idle keep-alive or a connection that never spoke */
    }
    pgw_conn_leave(c);
}

/* ---- Bulk operations for the worker ---- */

void pgw_conns_close_idle(void)
{
    struct pgw_conn *c = pgw_worker.conns;
    while (c != NULL) {
        struct pgw_conn *next = c->next;
        int idle = c->state == PGW_CONN_IDLE || c->state == PGW_CONN_PROXY_PROTOCOL ||
                   c->state == PGW_CONN_TLS_DETECT || c->state == PGW_CONN_TLS_HANDSHAKE;
        if (idle && evbuffer_get_length(c->io.in) == 0 && c->in_handler == 0)
            pgw_conn_close(c, NULL);
        c = next;
    }
}

void pgw_conns_follow_gen(void)
{
    struct pgw_conn *c = pgw_worker.conns;
    while (c != NULL) {
        struct pgw_conn *next = c->next;
        if (c->state == PGW_CONN_IDLE && c->in_handler == 0 && !conn_follow_gen(c))
            pgw_conn_close(c, NULL);
        c = next;
    }
}

size_t pgw_conns_ws_by_route(char *buf, size_t len)
{
    enum { MAX_ROUTES = 64 };
    const char *names[MAX_ROUTES];
    size_t counts[MAX_ROUTES], n = 0;
    for (struct pgw_conn *c = pgw_worker.conns; c != NULL; c = c->next) {
        if (c->ws == NULL)
            continue;
        const char *name = pgw_ws_tunnel_route(c->ws);
        size_t i = 0;
        while (i < n && strcmp(names[i], name) != 0)
            i++;
        if (i == n && n == MAX_ROUTES)
            continue;
        if (i == n) {
            names[n] = name;
            counts[n++] = 0;
        }
        counts[i]++;
    }
    pgw_assert(len >= 3);
    size_t o = 1;
    buf[0] = '{';
    for (size_t i = 0; i < n; i++) {
        char item[96];
        int k = snprintf(item, sizeof(item), "%s\"%s\":%zu", i ? "," : "", names[i], counts[i]);
        if (k <= 0 || (size_t)k >= sizeof(item) || o + (size_t)k + 2 > len)
            break;
        memcpy(buf + o, item, (size_t)k);
        o += (size_t)k;
    }
    buf[o++] = '}';
    buf[o] = '\0';
    return o;
}

size_t pgw_conns_ws_shutdown(void)
{
    size_t n = 0;
    for (struct pgw_conn *c = pgw_worker.conns; c != NULL; c = c->next)
        n += c->ws != NULL;
    struct pgw_conn *c = pgw_worker.conns;
    while (c != NULL) { /* a tunnel may end at once and free its connection: walk ahead */
        struct pgw_conn *next = c->next;
        if (c->ws != NULL)
            pgw_ws_tunnel_shutdown(c->ws);
        c = next;
    }
    return n;
}

void pgw_conns_close_all(const char *termination)
{
    while (pgw_worker.conns != NULL)
        pgw_conn_close(pgw_worker.conns, termination);
}
