/* server.c: the worker's event loop, generations, listeners, accept and the client connection
 * lifecycle (see server.h). The request pipeline itself lives in request.c.
 */
#include "server.h"
#include "log.h"
#include "proxy.h"

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

struct pgw_worker pgw_worker;

static struct pgw_log_ratelimit emfile_log, accept_log, maxconn_log;

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
    pgw_config_unref(g->config);
    free(g);
}

/* ---- Connections ---- */

static void on_client_read(evutil_socket_t fd, short what, void *arg);
static void on_client_write(evutil_socket_t fd, short what, void *arg);
static void on_client_timer(evutil_socket_t fd, short what, void *arg);

static void conn_free(struct pgw_conn *c)
{
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

static void conn_new(int listener_index, evutil_socket_t fd, const struct sockaddr_storage *peer)
{
    struct pgw_conn *c = pgw_calloc(1, sizeof(*c));
    struct pgw_gen *g = pgw_worker.gen;
    g->refs++;
    c->gen = g;
    c->id = ++pgw_worker.next_conn_id;
    c->listener_index = listener_index;
    c->peer = *peer;
    conn_set_client(c, peer);
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
     * client_header_timeout; an idle keep-alive connection gets the keep-alive timeout. */
    c->state = conn_uses_proxy_protocol(c) ? PGW_CONN_PROXY_PROTOCOL : PGW_CONN_IDLE;
    pgw_io_read_timeout(&c->io, g->config->timeouts.header);
    pgw_io_want_read(&c->io, 1);
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

static void on_client_read(evutil_socket_t fd, short what, void *arg)
{
    struct pgw_conn *c = arg;
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    pgw_conn_enter(c);
    size_t budget = pgw_conn_read_budget(c);
    if (budget == 0) {
        pgw_io_want_read(&c->io, 0); /* backpressure: resumed when the buffer drains */
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
    pgw_conn_leave(c);
}

static void on_client_write(evutil_socket_t fd, short what, void *arg)
{
    struct pgw_conn *c = arg;
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    pgw_conn_enter(c);
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
    } else {
        pgw_conn_close(c, NULL); /* idle keep-alive or a connection that never spoke */
    }
    pgw_conn_leave(c);
}

/* ---- Listeners and accept ---- */

static void accept_pause(void)
{
    if (pgw_worker.accept_paused)
        return;
    pgw_worker.accept_paused = 1;
    for (size_t i = 0; i < pgw_worker.num_listeners; i++)
        event_del(pgw_worker.listeners[i].ev);
    struct timeval tv = {0, 100 * 1000};
    evtimer_add(pgw_worker.accept_timer, &tv);
}

static void on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    pgw_worker.accept_paused = 0;
    for (size_t i = 0; i < pgw_worker.num_listeners; i++)
        event_add(pgw_worker.listeners[i].ev, NULL);
}

static void refuse_over_limit(evutil_socket_t fd)
{
    /* Best effort, never blocks: the socket is new, its send buffer empty. */
    static const char resp[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                               "Content-Length: 52\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
                               "{\"status\":503,\"error\":\"too many connections\"}      \n";
    ssize_t w = send(fd, resp, sizeof(resp) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    PGW_UNUSED(w);
    close(fd);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    struct pgw_listener *l = arg;
    PGW_UNUSED(what);
    for (int i = 0; i < 64 && !pgw_worker.stopping; i++) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof(peer);
        int fd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK)
                return;
            if (e == EINTR || e == ECONNABORTED)
                continue;
            if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
                pgw_log_limited(&emfile_log, 5000, PGW_LOG_ERROR,
                                "accept on %s: %s; accepting paused for 100 ms", l->name,
                                strerror(e));
                accept_pause();
                return;
            }
            pgw_log_limited(&accept_log, 5000, PGW_LOG_WARN, "accept on %s: %s", l->name,
                            strerror(e));
            return;
        }
        if (pgw_worker.num_conns >= pgw_worker.gen->config->limits.max_connections) {
            pgw_log_limited(&maxconn_log, 5000, PGW_LOG_WARN,
                            "max_connections (%zu) reached: new connections answered 503",
                            pgw_worker.gen->config->limits.max_connections);
            refuse_over_limit(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn_new(l->index, fd, &peer);
    }
}

static int listener_open(const struct pgw_config_listener *cl, evutil_socket_t *out)
{
    int fd = socket(cl->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        pgw_log_error("listener %s: socket: %s", cl->name, strerror(errno));
        return PGW_ERR;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (cl->sa.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&cl->sa, cl->sa_len) == -1 ||
        listen(fd, cl->backlog > 0 ? cl->backlog : 511) == -1) {
        pgw_log_error("listener %s: cannot listen on %s: %s", cl->name, cl->address,
                      strerror(errno));
        close(fd);
        return PGW_ERR;
    }
    *out = fd;
    return PGW_OK;
}

static int listeners_open(const struct pgw_config *config)
{
    pgw_worker.listeners = pgw_calloc(config->num_listeners, sizeof(struct pgw_listener));
    for (size_t i = 0; i < config->num_listeners; i++) {
        struct pgw_listener *l = &pgw_worker.listeners[i];
        l->index = (int)i;
        l->name = config->listeners[i].name;
        if (listener_open(&config->listeners[i], &l->fd) != PGW_OK)
            return PGW_ERR;
        pgw_worker.num_listeners++;
        l->ev = event_new(pgw_worker.base, l->fd, EV_READ | EV_PERSIST, on_accept, l);
        event_add(l->ev, NULL);
        pgw_log_info("listener %s on %s", l->name, config->listeners[i].address);
    }
    return PGW_OK;
}

static void listeners_close(void)
{
    for (size_t i = 0; i < pgw_worker.num_listeners; i++) {
        event_free(pgw_worker.listeners[i].ev);
        close(pgw_worker.listeners[i].fd);
    }
    free(pgw_worker.listeners);
    pgw_worker.listeners = NULL;
    pgw_worker.num_listeners = 0;
}

/* ---- Worker ---- */

static void on_flush_timer(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    pgw_access_log_flush();
}

static void on_stop_check(evutil_socket_t fd, short what, void *arg);

/* Closes the connections that hold no request: idle keep-alive ones and those that never sent a
 * byte. Closing them loses nothing; a request in flight ends with Connection: close instead. */
static void close_idle_conns(void)
{
    struct pgw_conn *c = pgw_worker.conns;
    while (c != NULL) {
        struct pgw_conn *next = c->next;
        int idle = c->state == PGW_CONN_IDLE || c->state == PGW_CONN_PROXY_PROTOCOL;
        if (idle && evbuffer_get_length(c->io.in) == 0 && c->in_handler == 0)
            pgw_conn_close(c, NULL);
        c = next;
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    if (pgw_worker.stopping)
        return;
    pgw_log_notice("signal %d: stopping (in-flight requests get up to %d ms)", (int)sig,
                   PGW_STOP_GRACE_MS);
    pgw_worker.stopping = 1;
    for (size_t i = 0; i < pgw_worker.num_listeners; i++)
        event_del(pgw_worker.listeners[i].ev);
    close_idle_conns();
    struct event *ev = evtimer_new(pgw_worker.base, on_stop_check, event_self_cbarg());
    struct timeval tv = {0, 0};
    evtimer_add(ev, &tv);
}

static void on_stop_check(evutil_socket_t fd, short what, void *arg)
{
    static uint64_t deadline;
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    if (deadline == 0)
        deadline = pgw_now_ms() + PGW_STOP_GRACE_MS;
    /* Drain: requests that end meanwhile close their connection (stopping forbids keep-alive). */
    close_idle_conns();
    if (pgw_worker.num_conns == 0 || pgw_now_ms() >= deadline) {
        if (pgw_worker.num_conns > 0)
            pgw_log_warn("stopping with %zu connection(s) still open", pgw_worker.num_conns);
        event_free(arg);
        event_base_loopbreak(pgw_worker.base);
        return;
    }
    struct timeval tv = {0, 20 * 1000};
    evtimer_add(arg, &tv);
}

/* The worker's resolver: the configured name servers, else those of /etc/resolv.conf (none
 * found: only /etc/hosts and IP literals work, and a log line says so). */
static struct evdns_base *dns_new(struct event_base *base, const struct pgw_config_resolver *r)
{
    struct evdns_base *dns;
    if (r->num_nameservers == 0) {
        dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                       EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (dns == NULL) {
            pgw_log_warn("no usable name server in /etc/resolv.conf: upstream host names are "
                         "resolved from /etc/hosts only");
            dns = evdns_base_new(base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
            evdns_base_load_hosts(dns, NULL);
        }
    } else {
        dns = evdns_base_new(base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        for (size_t i = 0; i < r->num_nameservers; i++) {
            struct sockaddr_storage sa;
            socklen_t len;
            const struct pgw_config_target *t = &r->nameservers[i];
            pgw_assert(pgw_addr_parse_ip(t->host, strlen(t->host), &sa, &len) == PGW_OK);
            if (sa.ss_family == AF_INET)
                ((struct sockaddr_in *)&sa)->sin_port = htons(t->port);
            else
                ((struct sockaddr_in6 *)&sa)->sin6_port = htons(t->port);
            if (evdns_base_nameserver_sockaddr_add(dns, (struct sockaddr *)&sa, len, 0) != 0)
                pgw_log_warn("name server %s:%u could not be added", t->host,
                             (unsigned)t->port);
        }
        evdns_base_load_hosts(dns, NULL);
    }
    pgw_assert(dns != NULL);
    char secs[32];
    snprintf(secs, sizeof(secs), "%.3f", (double)r->timeout / 1000.0);
    evdns_base_set_option(dns, "timeout:", secs);
    evdns_base_set_option(dns, "attempts:", "2");
    return dns;
}

static uint64_t random_seed(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof(s), GRND_NONBLOCK) != (ssize_t)sizeof(s))
        s = (uint64_t)getpid() * 0x9E3779B97F4A7C15ULL ^ pgw_now_us();
    return s;
}

int pgw_server_run(struct pgw_config *config)
{
    signal(SIGPIPE, SIG_IGN);
    struct event_config *ec = event_config_new();
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    pgw_worker.base = event_base_new_with_config(ec);
    event_config_free(ec);
    pgw_assert(pgw_worker.base != NULL);
    pgw_worker.dns = dns_new(pgw_worker.base, &config->resolver);
    pgw_worker.id_seed = random_seed();
    const char *err = NULL;
    pgw_worker.gen = pgw_gen_new(config, 1, &err);
    if (pgw_worker.gen == NULL) {
        pgw_log_error("cannot build the routing tables: %s", err ? err : "?");
        return 1;
    }
    pgw_worker.accept_timer = evtimer_new(pgw_worker.base, on_accept_resume, NULL);
    pgw_worker.flush_timer = event_new(pgw_worker.base, -1, EV_PERSIST, on_flush_timer, NULL);
    struct timeval one_s = {1, 0};
    evtimer_add(pgw_worker.flush_timer, &one_s);
    struct event *sigterm = evsignal_new(pgw_worker.base, SIGTERM, on_signal, NULL);
    struct event *sigint = evsignal_new(pgw_worker.base, SIGINT, on_signal, NULL);
    evsignal_add(sigterm, NULL);
    evsignal_add(sigint, NULL);
    int status = 0;
    if (listeners_open(config) != PGW_OK) {
        status = 1;
    } else {
        pgw_log_notice("passerelle started (pid %d)", (int)getpid());
        event_base_dispatch(pgw_worker.base);
        pgw_log_notice("passerelle stopped");
    }
    listeners_close();
    while (pgw_worker.conns != NULL)
        pgw_conn_close(pgw_worker.conns, "shutdown");
    pgw_access_log_flush();
    event_free(sigterm);
    event_free(sigint);
    event_free(pgw_worker.flush_timer);
    event_free(pgw_worker.accept_timer);
    pgw_gen_unref(pgw_worker.gen);
    pgw_worker.gen = NULL;
    evdns_base_free(pgw_worker.dns, 0);
    event_base_free(pgw_worker.base);
    return status;
}
