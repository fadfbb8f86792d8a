/* proxy.c: upstream groups and the upstream half of a request (see proxy.h).
 *
 * Failure mapping, as nginx and HAProxy do: refused or unreachable -> next target, else 502;
 * connect timeout -> 504; no response byte within read_timeout -> 504; reset, empty answer,
 * garbage or conflicting framing -> 502; a body cut short -> the client connection is closed
 * after the bytes received. A request is retried on the next target only while nothing of it
 * reached the upstream (connect failures), or when it is idempotent, carried no body and no
 * response byte reached the client; `retries` and `retry_deadline` bound the attempts. A reused
 * keep-alive connection that fails before any response byte is retried once on a new connection
 * for idempotent requests, without counting as a retry (the upstream closed it as we sent).
 */
#include "proxy.h"
#include "log.h"
#include "out.h"
#include "tls.h"
#include "wsproxy.h"

#include <errno.h>
#include <event2/dns.h>
#include <inttypes.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define DNS_MAX_ADDRS 8
#define DNS_TTL_MIN_S 1
#define DNS_TTL_MAX_S 3600
#define UPSTREAM_HEAD_MAX (64 * 1024)
#define UPSTREAM_HEADERS_MAX 200

enum fail_kind {
    FAIL_REFUSED,         /* not sent */
    FAIL_CONNECT,         /* not sent: unreachable, resolve failure */
    FAIL_CONNECT_TIMEOUT, /* not sent */
    FAIL_RESET,           /* sent; reset or closed before any response byte */
    FAIL_READ_TIMEOUT,    /* sent; no response in time */
    FAIL_PROTOCOL,        /* garbage or conflicting framing */
};

struct target;

struct pgw_upstream_conn {
    struct pgw_io io;
    struct target *t;
    struct pgw_proxy *px; /* the lease holder; NULL while idle */
    struct pgw_upstream_conn *prev, *next; /* idle list of the target */
    unsigned connected : 1;   /* TCP connected */
    unsigned handshaking : 1; /* TLS handshake in progress (after the TCP connect) */
    unsigned requests;
    unsigned addr_epoch; /* t->addr_epoch when it connected: an older one is never reused */
};

struct target {
    const struct pgw_config_target *conf;
    struct pgw_upstream *up;
    char label[PGW_UPSTREAM_LABEL_MAX]; /* host:port, for logs */
    struct sockaddr_storage addrs[DNS_MAX_ADDRS];
    socklen_t addr_lens[DNS_MAX_ADDRS];
    size_t naddrs, next_addr;
    uint64_t dns_expires; /* coarse ms; 0 for literals */
    struct evdns_request *dns_req;
    int dns_v6; /* the lookup in flight is the AAAA fallback */
    struct pgw_proxy *waiters; /* requests waiting for this resolution */
    unsigned fails;
    uint64_t down_until;
    struct pgw_upstream_conn *idle; /* most recently used first */
    unsigned addr_epoch;            /* bumped when DNS changes the address set */
    void *tls_session;              /* TLS: the last session, resumed by new connections */
    unsigned static_addrs : 1;      /* from /etc/hosts: no DNS */
};

struct pgw_upstream {
    const struct pgw_config_upstream *conf;
    struct target *targets;
    size_t ntargets;
    unsigned rr;
    size_t idle_count;
};

struct pgw_proxy {
    struct pgw_req *req;
    struct pgw_upstream *up;
    struct target *t;
    struct pgw_upstream_conn *uc;
    struct pgw_proxy *wait_prev, *wait_next;
    unsigned waiting_dns : 1;
    unsigned reused : 1;      /* uc came from the idle pool */
    unsigned fresh_retry : 1; /* the transparent retry of a failed reused connection was used */
    unsigned sent_all : 1;    /* the whole request reached the upstream socket */
    unsigned buffered_sent : 1; /* a policy's buffered body went out in this attempt */
    unsigned head_parsed : 1;
    unsigned reusable : 1;    /* give uc back to the pool on release */
    unsigned paused : 1;      /* not reading the upstream: the client is slow */
    char *head;               /* serialised request head, in the pool */
    const struct target *head_for; /* the target whose name is in its Host field */
    size_t head_len;
    uint64_t deadline;        /* retry deadline, coarse ms; 0 = none */
    uint64_t tried;           /* bit i: target i was tried (first 64 targets) */
    unsigned attempts;
    uint64_t attempt_start_us;
    struct pgw_http_response resp;
    enum pgw_http_body resp_body;
    uint64_t resp_left;
    struct pgw_http_chunked resp_chunked;
};

static struct pgw_log_ratelimit fail_log, dns_log;

static void attempt(struct pgw_proxy *px);
static void attempt_failed(struct pgw_proxy *px, enum fail_kind kind, const char *detail);
static void send_request(struct pgw_proxy *px);
static void on_upstream_read(evutil_socket_t fd, short what, void *arg);
static void on_upstream_write(evutil_socket_t fd, short what, void *arg);
static void on_upstream_timer(evutil_socket_t fd, short what, void *arg);

/* ---- Groups and targets ---- */

static void target_init(struct target *t, struct pgw_upstream *up,
                        const struct pgw_config_target *conf)
{
    memset(t, 0, sizeof(*t));
    t->conf = conf;
    t->up = up;
    int v6 = strchr(conf->host, ':') != NULL;
    snprintf(t->label, sizeof(t->label), v6 ? "[%s]:%u" : "%s:%u", conf->host,
             (unsigned)conf->port);
    if (conf->is_literal) {
        if (pgw_addr_parse_ip(conf->host, strlen(conf->host), &t->addrs[0], &t->addr_lens[0]) ==
            PGW_OK)
            t->naddrs = 1;
    } else if (pgw_worker.hosts != NULL) {
        t->naddrs = pgw_hosts_lookup(pgw_worker.hosts, pgw_worker.hosts_len, conf->host,
                                     strlen(conf->host), t->addrs, t->addr_lens, DNS_MAX_ADDRS);
        t->static_addrs = t->naddrs > 0;
    }
    for (size_t i = 0; i < t->naddrs; i++) {
        struct sockaddr_storage *sa = &t->addrs[i];
        if (sa->ss_family == AF_INET)
            ((struct sockaddr_in *)sa)->sin_port = htons(conf->port);
        else
            ((struct sockaddr_in6 *)sa)->sin6_port = htons(conf->port);
    }
}

struct pgw_upstream *pgw_upstream_new(const struct pgw_config_upstream *conf)
{
    struct pgw_upstream *up = pgw_calloc(1, sizeof(*up));
    up->conf = conf;
    up->ntargets = conf->num_targets;
    up->targets = pgw_calloc(up->ntargets, sizeof(*up->targets));
    for (size_t i = 0; i < up->ntargets; i++)
        target_init(&up->targets[i], up, &conf->targets[i]);
    return up;
}

static void uc_free(struct pgw_upstream_conn *uc)
{
    pgw_io_clear(&uc->io);
    free(uc);
}

static void idle_unlink(struct pgw_upstream_conn *uc)
{
    struct target *t = uc->t;
    if (uc->prev)
        uc->prev->next = uc->next;
    else
        t->idle = uc->next;
    if (uc->next)
        uc->next->prev = uc->prev;
    uc->prev = uc->next = NULL;
    t->up->idle_count--;
}

/* Puts <uc> first on the idle list of <t> (most recently used first). */
static void idle_push(struct target *t, struct pgw_upstream_conn *uc)
{
    uc->t = t;
    uc->next = t->idle;
    uc->prev = NULL;
    if (t->idle)
        t->idle->prev = uc;
    t->idle = uc;
    t->up->idle_count++;
}

/* Closes the idle connections of <t>; <why> goes to the debug log. */
static void target_drop_idle(struct target *t, const char *why)
{
    if (t->idle != NULL)
        pgw_log_debug("upstream %s: target %s: idle connections closed: %s", t->up->conf->name,
                      t->label, why);
    while (t->idle != NULL) {
        struct pgw_upstream_conn *uc = t->idle;
        idle_unlink(uc);
        uc_free(uc);
    }
}

void pgw_upstream_free(struct pgw_upstream *up)
{
    for (size_t i = 0; i < up->ntargets; i++) {
        struct target *t = &up->targets[i];
        target_drop_idle(t, "generation released");
        pgw_tls_session_free(t->tls_session);
        if (t->dns_req != NULL)
            evdns_cancel_request(pgw_worker.dns, t->dns_req);
    }
    free(up->targets);
    free(up);
}

void pgw_upstream_adopt(struct pgw_upstream *up, struct pgw_upstream *old)
{
    const struct pgw_config_upstream *a = up->conf, *b = old->conf;
    if (strcmp(a->name, b->name) != 0 ||
        !pgw_config_targets_equal(a->targets, a->num_targets, b->targets, b->num_targets))
        return;
    /* TLS connections were verified under the old settings, which may have changed */
    int keep_conns = a->tls == NULL && b->tls == NULL;
    for (size_t i = 0; i < up->ntargets; i++) {
        struct target *t = &up->targets[i], *o = &old->targets[i];
        if (!t->conf->is_literal && !t->static_addrs && o->naddrs > 0 && t->naddrs == 0) {
            memcpy(t->addrs, o->addrs, sizeof(t->addrs)); /* no re-resolution before the TTL */
            memcpy(t->addr_lens, o->addr_lens, sizeof(t->addr_lens));
            t->naddrs = o->naddrs;
            t->dns_expires = o->dns_expires;
        }
        t->fails = o->fails;
        t->down_until = o->down_until;
        if (t->naddrs != o->naddrs ||
            memcmp(t->addrs, o->addrs, sizeof(t->addrs[0]) * t->naddrs) != 0)
            continue; /* the addresses changed (hosts file): the old connections go with old */
        while (keep_conns && o->idle != NULL && up->idle_count < up->conf->keepalive) {
            struct pgw_upstream_conn *uc = o->idle;
            idle_unlink(uc);
            uc->addr_epoch = t->addr_epoch;
            idle_push(t, uc);
            pgw_io_read_timeout(&uc->io, up->conf->keepalive_timeout);
        }
    }
}

static int target_is_down(const struct target *t, uint64_t now)
{
    return t->down_until != 0 && now < t->down_until;
}

static void target_failed(struct target *t)
{
    const struct pgw_config_upstream *conf = t->up->conf;
    if (conf->max_fails == 0)
        return;
    if (++t->fails >= conf->max_fails && t->down_until <= pgw_now_ms()) {
        t->down_until = pgw_now_ms() + conf->fail_timeout;
        pgw_log_warn("upstream %s: target %s failed %u times: skipped for %" PRIu64 " ms",
                     conf->name, t->label, t->fails, conf->fail_timeout);
    }
}

static void target_succeeded(struct target *t)
{
    t->fails = 0;
    t->down_until = 0;
}

/* Round robin over targets not tried yet by this request, healthy ones first; when every
 * untried target is down, one is tried anyway rather than failing without trying. */
static struct target *pick_target(struct pgw_proxy *px)
{
    struct pgw_upstream *up = px->up;
    uint64_t now = pgw_now_ms();
    struct target *fallback = NULL;
    for (size_t k = 0; k < up->ntargets; k++) {
        size_t i = (up->rr + k) % up->ntargets;
        if (i < 64 && (px->tried & (1ULL << i)))
            continue;
        struct target *t = &up->targets[i];
        if (target_is_down(t, now)) {
            if (fallback == NULL || t->down_until < fallback->down_until)
                fallback = t;
            continue;
        }
        up->rr = (unsigned)((i + 1) % up->ntargets);
        return t;
    }
    return fallback;
}

/* ---- DNS ---- */

static void dns_wake(struct target *t, int ok);

static void on_dns(int result, char type, int count, int ttl, void *addresses, void *arg)
{
    /* A cancelled lookup is reported from a deferred callback, after pgw_upstream_free() freed
     * the target: <arg> must not be touched then. */
    if (result == DNS_ERR_CANCEL)
        return;
    struct target *t = arg;
    t->dns_req = NULL;
    if (PGW_UNLIKELY(pgw_log_level_min == PGW_LOG_DEBUG) && result == DNS_ERR_NONE && count > 0) {
        char a[PGW_ADDR_STRLEN] = "";
        if (type == DNS_IPv4_A)
            inet_ntop(AF_INET, addresses, a, sizeof(a));
        else
            inet_ntop(AF_INET6, addresses, a, sizeof(a));
        pgw_log_debug("upstream %s: %s resolved to %s (%d address(es), ttl %d)",
                      t->up->conf->name, t->conf->host, a, count, ttl);
    }
    if (result != DNS_ERR_NONE || count <= 0) {
        if (!t->dns_v6) { /* no A record: try AAAA */
            t->dns_v6 = 1;
            t->dns_req = evdns_base_resolve_ipv6(pgw_worker.dns, t->conf->host, 0, on_dns, t);
            if (t->dns_req != NULL)
                return;
        }
        pgw_log_limited(&dns_log, 5000, PGW_LOG_ERROR, "upstream %s: cannot resolve %s: %s",
                        t->up->conf->name, t->conf->host, evdns_err_to_string(result));
        /* keep stale addresses if any: better than none while the resolver is down */
        if (t->naddrs > 0)
            t->dns_expires = pgw_now_ms() + DNS_TTL_MIN_S * 1000;
        dns_wake(t, t->naddrs > 0);
        return;
    }
    size_t n = PGW_MIN((size_t)count, (size_t)DNS_MAX_ADDRS);
    struct sockaddr_storage old[DNS_MAX_ADDRS];
    size_t nold = t->naddrs;
    memcpy(old, t->addrs, sizeof(old[0]) * nold);
    for (size_t i = 0; i < n; i++) {
        struct sockaddr_storage *sa = &t->addrs[i];
        memset(sa, 0, sizeof(*sa));
        if (type == DNS_IPv4_A) {
            struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
            s4->sin_family = AF_INET;
            s4->sin_port = htons(t->conf->port);
            memcpy(&s4->sin_addr, (const char *)addresses + 4 * i, 4);
            t->addr_lens[i] = sizeof(*s4);
        } else {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)sa;
            s6->sin6_family = AF_INET6;
            s6->sin6_port = htons(t->conf->port);
            memcpy(&s6->sin6_addr, (const char *)addresses + 16 * i, 16);
            t->addr_lens[i] = sizeof(*s6);
        }
    }
    t->naddrs = n;
    if (nold > 0 && (nold != n || memcmp(old, t->addrs, sizeof(old[0]) * n) != 0)) {
        t->addr_epoch++; /* connections leased now are not pooled again when they come back */
        target_drop_idle(t, "its address changed");
    }
    int secs = ttl < DNS_TTL_MIN_S ? DNS_TTL_MIN_S : ttl > DNS_TTL_MAX_S ? DNS_TTL_MAX_S : ttl;
    t->dns_expires = pgw_now_ms() + (uint64_t)secs * 1000;
    dns_wake(t, 1);
}

static void dns_start(struct target *t)
{
    if (t->dns_req != NULL)
        return;
    t->dns_v6 = 0;
    t->dns_req = evdns_base_resolve_ipv4(pgw_worker.dns, t->conf->host, 0, on_dns, t);
    if (t->dns_req == NULL) {
        pgw_log_debug("upstream %s: resolution of %s did not start", t->up->conf->name,
                      t->conf->host);
    }
}

static void dns_unwait(struct pgw_proxy *px)
{
    if (!px->waiting_dns)
        return;
    if (px->wait_prev)
        px->wait_prev->wait_next = px->wait_next;
    else
        px->t->waiters = px->wait_next;
    if (px->wait_next)
        px->wait_next->wait_prev = px->wait_prev;
    px->wait_prev = px->wait_next = NULL;
    px->waiting_dns = 0;
}

static void dns_wake(struct target *t, int ok)
{
    while (t->waiters != NULL) {
        struct pgw_proxy *px = t->waiters;
        struct pgw_conn *c = px->req->conn;
        dns_unwait(px);
        pgw_conn_enter(c);
        if (ok)
            attempt(px);
        else
            attempt_failed(px, FAIL_CONNECT, "name resolution failed");
        pgw_conn_leave(c);
    }
}

/* Returns 1 when <t> has an address to use now, 0 when the caller must wait for DNS (on_dns
 * wakes it), -1 when no lookup could start. */
static int target_ready(struct target *t)
{
    if (t->conf->is_literal || t->static_addrs)
        return 1;
    uint64_t now = pgw_now_ms();
    if (t->naddrs > 0) {
        if (now >= t->dns_expires)
            dns_start(t); /* refresh in the background; the stale address serves meanwhile */
        return 1;
    }
    dns_start(t);
    if (t->dns_req == NULL) { /* evdns refused to start it: no callback will come */
        pgw_log_limited(&dns_log, 5000, PGW_LOG_ERROR, "upstream %s: cannot resolve %s: the "
                        "lookup did not start", t->up->conf->name, t->conf->host);
        return -1;
    }
    return 0;
}

/* ---- Leases ---- */

/* Keeps the newest session of a TLS connection for the next ones (TLS 1.3 servers may take a
 * ticket once: a resumed connection brings a new one). */
static void keep_session(struct pgw_upstream_conn *uc)
{
    struct target *t = uc->t;
    if (uc->io.tls == NULL || uc->handshaking)
        return;
    void *s = pgw_tls_session_get(&uc->io);
    if (s == NULL)
        return;
    pgw_tls_session_free(t->tls_session);
    t->tls_session = s;
}

static void uc_release(struct pgw_upstream_conn *uc, int reusable)
{
    struct target *t = uc->t;
    struct pgw_upstream *up = t->up;
    uc->px = NULL;
    keep_session(uc);
    if (!reusable || up->conf->keepalive == 0 || up->idle_count >= up->conf->keepalive ||
        uc->addr_epoch != t->addr_epoch ||
        evbuffer_get_length(uc->io.in) > 0 || evbuffer_get_length(uc->io.out) > 0 ||
        pgw_worker.stopping) {
        uc_free(uc);
        return;
    }
    /* Idle: keep reading, so that a close (or stray bytes) from the upstream frees it at once. */
    idle_push(t, uc);
    uc->io.write_deadline = 0;
    pgw_io_want_write(&uc->io, 0);
    pgw_io_read_timeout(&uc->io, up->conf->keepalive_timeout);
    pgw_io_want_read(&uc->io, 1);
}

static void px_release_uc(struct pgw_proxy *px)
{
    struct pgw_upstream_conn *uc = px->uc;
    if (uc == NULL)
        return;
    px->uc = NULL;
    uc_release(uc, px->reusable);
    px->reusable = 0;
}

/* Pool cleanup of the request: gives the connection back or closes it, leaves DNS queues. */
static void px_cleanup(void *arg)
{
    struct pgw_proxy *px = arg;
    dns_unwait(px);
    px_release_uc(px);
    px->req->px = NULL;
}

/* The TLS handshake towards the upstream, within the connect timeout (set at the connect). */
static void uc_handshake(struct pgw_proxy *px)
{
    struct pgw_upstream_conn *uc = px->uc;
    int r = pgw_tls_handshake(&uc->io);
    if (r == PGW_AGAIN)
        return;
    if (r == PGW_ERR) {
        char why[600];
        snprintf(why, sizeof(why), "TLS handshake failed: %s", pgw_tls_error());
        attempt_failed(px, FAIL_CONNECT, why);
        return;
    }
    uc->handshaking = 0;
    uc->io.read_deadline = 0;
    uc->io.write_deadline = 0;
    send_request(px);
}

/* The TCP connection is up: the request goes out, after a TLS handshake for TLS upstreams. */
static void connected(struct pgw_proxy *px)
{
    struct pgw_upstream_conn *uc = px->uc;
    struct pgw_req *req = px->req;
    SSL_CTX *ctx = pgw_tls_upstream_ctx(req->gen->tls, (size_t)req->upstream_index);
    if (ctx == NULL) {
        send_request(px);
        return;
    }
    const struct pgw_config_upstream_tls *tc = px->up->conf->tls;
    const char *name = tc->server_name ? tc->server_name : px->t->conf->host;
    pgw_tls_attach_client(&uc->io, ctx, name, tc->verify, px->t->tls_session);
    uc->handshaking = 1;
    uint64_t deadline = pgw_now_ms() + px->up->conf->connect_timeout;
    uc->io.read_deadline = deadline;
    pgw_io_timer_sync(&uc->io);
    uc_handshake(px);
}

static void connect_new(struct pgw_proxy *px)
{
    struct target *t = px->t;
    pgw_assert(t->naddrs > 0);
    size_t ai = t->next_addr++ % t->naddrs;
    const struct sockaddr_storage *sa = &t->addrs[ai];
    int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        attempt_failed(px, FAIL_CONNECT, strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct pgw_upstream_conn *uc = pgw_calloc(1, sizeof(*uc));
    pgw_io_init(&uc->io, pgw_worker.base, fd, on_upstream_read, on_upstream_write,
                on_upstream_timer, uc);
    uc->t = t;
    uc->addr_epoch = t->addr_epoch;
    uc->px = px;
    px->uc = uc;
    px->reused = 0;
    pgw_addr_format((const struct sockaddr *)sa, px->req->upstream_addr, PGW_ADDR_STRLEN);
    size_t alen = strlen(px->req->upstream_addr);
    snprintf(px->req->upstream_addr + alen, sizeof(px->req->upstream_addr) - alen, ":%u",
             (unsigned)t->conf->port);
    int r = connect(fd, (const struct sockaddr *)sa, t->addr_lens[ai]);
    if (r == 0) {
        uc->connected = 1;
        connected(px);
        return;
    }
    int e = errno;
    if (e != EINPROGRESS) {
        attempt_failed(px, e == ECONNREFUSED ? FAIL_REFUSED : FAIL_CONNECT, strerror(e));
        return;
    }
    uc->io.write_deadline = pgw_now_ms() + px->up->conf->connect_timeout;
    pgw_io_want_write(&uc->io, 1);
    pgw_io_timer_sync(&uc->io);
}

static void lease(struct pgw_proxy *px)
{
    struct target *t = px->t;
    if (t->idle != NULL) {
        struct pgw_upstream_conn *uc = t->idle;
        idle_unlink(uc);
        uc->px = px;
        px->uc = uc;
        px->reused = 1;
        uc->io.read_deadline = 0;
        size_t ll = strlen(t->label); /* labels fit: PGW_UPSTREAM_LABEL_MAX */
        memcpy(px->req->upstream_addr, t->label, ll + 1);
        send_request(px);
        return;
    }
    connect_new(px);
}

static void attempt(struct pgw_proxy *px)
{
    struct target *t = px->t;
    if (t == NULL) {
        t = pick_target(px);
        if (t == NULL) {
            pgw_log_limited(&fail_log, 1000, PGW_LOG_ERROR,
                            "request %s: upstream %s: no target left to try", px->req->id,
                            px->up->conf->name);
            pgw_req_respond_error(px->req, 502, "upstream_unavailable", 0);
            return;
        }
        px->t = t;
        size_t i = (size_t)(t - px->up->targets);
        if (i < 64)
            px->tried |= 1ULL << i;
        px->attempts++;
    }
    px->attempt_start_us = pgw_now_us();
    int ready = target_ready(t);
    if (ready < 0) {
        attempt_failed(px, FAIL_CONNECT, "name resolution failed");
        return;
    }
    if (ready == 0) {
        px->waiting_dns = 1;
        px->wait_prev = NULL;
        px->wait_next = t->waiters;
        if (t->waiters)
            t->waiters->wait_prev = px;
        t->waiters = px;
        return;
    }
    lease(px);
}

/* ---- Request towards the upstream ---- */

static int drop_request_field(const struct pgw_http_header *f, int keep_forwarded,
                              const struct pgw_http_conn_names *cn)
{
    const char *n = f->name;
    size_t l = f->name_len;
    if (pgw_http_is_hop_by_hop(n, l))
        return 1;
    if (PGW_IEQ_LIT(n, l, "host") || PGW_IEQ_LIT(n, l, "content-length") ||
        PGW_IEQ_LIT(n, l, "expect") || PGW_IEQ_LIT(n, l, "x-request-id") ||
        PGW_IEQ_LIT(n, l, "x-forwarded-for"))
        return 1; /* re-added below with our values */
    if (!keep_forwarded &&
        (PGW_IEQ_LIT(n, l, "x-forwarded-proto") || PGW_IEQ_LIT(n, l, "x-forwarded-host")))
        return 1;
    if (pgw_ws_drop_request_field(n, l))
        return 1; /* no extension is negotiated: the gateway reads every frame */
    return pgw_http_conn_names_has(cn, n, l);
}

/* The address the connection came from, as X-Forwarded-For records it: the TCP peer, or the
 * source given by a PROXY protocol header (the balancer in front does not add the field). */
static size_t forwarded_for_addr(const struct pgw_conn *c, char *buf, size_t len)
{
    if (c->gen->config->real_ip.from == PGW_REAL_IP_PROXY_PROTOCOL)
        return (size_t)snprintf(buf, len, "%s", c->client_str);
    size_t n = strlen(c->peer_str);
    pgw_assert(n < len);
    memcpy(buf, c->peer_str, n + 1);
    return n;
}

/* Serialises the request head for the upstream into the pool, once per request (retries reuse
 * it). Hop-by-hop fields and those named in Connection go; ours are added after that step. */
static void build_head(struct pgw_proxy *px)
{
    struct pgw_req *req = px->req;
    struct pgw_conn *c = req->conn;
    const struct pgw_config_route *route = req->route;
    const struct pgw_config_upstream *uconf = px->up->conf;
    int keep_forwarded = c->peer_trusted;
    size_t max = 512 + req->path_len + req->h.query_len + req->h.authority_len + req->id_len +
                 PGW_ADDR_STRLEN + req->up_path_len + req->up_host_len;
    for (size_t i = 0; i < req->h.num_headers; i++)
        max += req->h.headers[i].name_len + req->h.headers[i].value_len + 6;
    max += PGW_UPSTREAM_LABEL_MAX; /* Host, from the target */
    char *buf = pgw_pool_alloc(req->pool, max);
    struct pgw_out w = {buf, buf + max};
    const char *path = req->path;
    size_t plen = req->path_len;
    if (req->up_path != NULL) { /* pgw.req.set_path */
        path = req->up_path;
        plen = req->up_path_len;
    } else if (route->strip_prefix && route->path_kind == PGW_PATH_PREFIX) {
        path += req->match.prefix_len;
        plen -= req->match.prefix_len;
        if (plen == 0 || path[0] != '/') { /* "/api" stripped from "/api" leaves "/" */
            path = "/";
            plen = 1;
        }
    }
    pgw_out_mem(&w, req->h.method, req->h.method_len);
    PGW_OUT_LIT(&w, " ");
    pgw_out_mem(&w, path, plen);
    if (req->h.query != NULL) {
        PGW_OUT_LIT(&w, "?");
        pgw_out_mem(&w, req->h.query, req->h.query_len);
    }
    PGW_OUT_LIT(&w, " HTTP/1.1\r\nHost: ");
    if (req->up_host != NULL) { /* pgw.req.set_host */
        pgw_out_mem(&w, req->up_host, req->up_host_len);
    } else if (route->preserve_host && req->h.authority_len > 0) {
        pgw_out_mem(&w, req->h.authority, req->h.authority_len);
    } else {
        const struct target *t = px->t ? px->t : &px->up->targets[0];
        const char *label = t->label;
        size_t llen = strlen(label);
        if (t->conf->port == 80)
            llen -= 3; /* ":80" */
        pgw_out_mem(&w, label, llen);
    }
    PGW_OUT_LIT(&w, "\r\n");
    const char *xff[16];
    size_t xff_len[16], nxff = 0;
    struct pgw_http_conn_names cn;
    pgw_http_conn_names_init(&cn, req->h.headers, req->h.num_headers);
    for (size_t i = 0; i < req->h.num_headers; i++) {
        const struct pgw_http_header *f = &req->h.headers[i];
        if (PGW_IEQ_LIT(f->name, f->name_len, "x-forwarded-for") && nxff < 16) {
            xff[nxff] = f->value;
            xff_len[nxff++] = f->value_len;
        }
        if (!drop_request_field(f, keep_forwarded, &cn))
            pgw_out_field(&w, f->name, f->name_len, f->value, f->value_len);
    }
    PGW_OUT_LIT(&w, "X-Forwarded-For: ");
    for (size_t i = 0; i < nxff; i++) {
        pgw_out_mem(&w, xff[i], xff_len[i]);
        PGW_OUT_LIT(&w, ", ");
    }
    char addr[PGW_ADDR_STRLEN];
    size_t alen = forwarded_for_addr(c, addr, sizeof(addr));
    pgw_out_mem(&w, addr, alen);
    PGW_OUT_LIT(&w, "\r\n");
    if (!keep_forwarded ||
        !pgw_http_find(req->h.headers, req->h.num_headers, "x-forwarded-proto", 17))
    {
        if (c->io.tls != NULL)
            PGW_OUT_LIT(&w, "X-Forwarded-Proto: https\r\n");
        else
            PGW_OUT_LIT(&w, "X-Forwarded-Proto: http\r\n");
    }
    if ((!keep_forwarded ||
         !pgw_http_find(req->h.headers, req->h.num_headers, "x-forwarded-host", 16)) &&
        req->h.authority_len > 0)
        pgw_out_field(&w, "X-Forwarded-Host", 16, req->h.authority, req->h.authority_len);
    pgw_out_field(&w, "X-Request-Id", 12, req->id, req->id_len);
    if (req->body_buffered) { /* read_body / set_body: the whole body, re-framed */
        char num[24];
        int n = snprintf(num, sizeof(num), "%zu", req->body_data_len);
        pgw_out_field(&w, "Content-Length", 14, num, (size_t)n);
    } else if (req->h.body == PGW_HTTP_BODY_LENGTH) {
        char num[24];
        int n = snprintf(num, sizeof(num), "%" PRIu64, req->h.content_length);
        pgw_out_field(&w, "Content-Length", 14, num, (size_t)n);
    } else if (req->h.body == PGW_HTTP_BODY_CHUNKED) {
        PGW_OUT_LIT(&w, "Transfer-Encoding: chunked\r\n");
    }
    if (req->ws_handshake)
        pgw_ws_handshake_fields(&w);
    else if (uconf->keepalive == 0)
        PGW_OUT_LIT(&w, "Connection: close\r\n");
    PGW_OUT_LIT(&w, "\r\n");
    px->head = buf;
    px->head_for = px->t;
    px->head_len = (size_t)(w.p - buf);
    PGW_UNUSED(xff_len);
}

/* Moves request body from the client to the upstream while the upstream buffer has room, then
 * writes. Returns PGW_OK, or PGW_ERR when the request ended (px is gone). */
static int pump_and_flush(struct pgw_proxy *px)
{
    struct pgw_req *req = px->req;
    struct pgw_upstream_conn *uc = px->uc;
    if (req->body_buffered && !px->buffered_sent) { /* a policy's body: whole, once per attempt */
        px->buffered_sent = 1;
        pgw_req_body_pump(req, uc->io.out, 0);
    }
    for (;;) {
        size_t pending = evbuffer_get_length(uc->io.out);
        if (req->body_done || pending >= PGW_OUTPUT_HIGH)
            break;
        size_t before = evbuffer_get_length(req->conn->io.in);
        int r = pgw_req_body_pump(req, uc->io.out, PGW_OUTPUT_HIGH - pending);
        if (r == PGW_ERR)
            return PGW_ERR;
        if (r == PGW_OK && evbuffer_get_length(req->conn->io.in) == before)
            break;
    }
    int r = pgw_io_flush(&uc->io, px->up->conf->send_timeout);
    if (r == PGW_ERR) {
        attempt_failed(px, FAIL_RESET, strerror(uc->io.err_no));
        return PGW_ERR;
    }
    pgw_req_client_read(req, evbuffer_get_length(uc->io.out) < PGW_OUTPUT_HIGH);
    if (r == PGW_OK && req->body_done && !px->sent_all) {
        px->sent_all = 1;
        pgw_io_read_timeout(&uc->io, px->up->conf->read_timeout);
    }
    return PGW_OK;
}

static void send_request(struct pgw_proxy *px)
{
    struct pgw_upstream_conn *uc = px->uc;
    uc->requests++;
    if (px->head_for != px->t && !px->req->route->preserve_host && px->req->up_host == NULL)
        build_head(px); /* a retry on another target: Host names that target */
    evbuffer_add(uc->io.out, px->head, px->head_len);
    px->buffered_sent = 0;
    pgw_io_want_read(&uc->io, 1);
    /* Until the whole request is sent the client body timeout governs; the read timeout starts
     * when we wait for the upstream alone. */
    uc->io.read_deadline = 0;
    pump_and_flush(px);
}

void pgw_proxy_on_client_data(struct pgw_req *req)
{
    struct pgw_proxy *px = req->px;
    if (px->uc == NULL || !px->uc->connected || px->uc->handshaking) {
        pgw_req_client_read(req, 1); /* buffer up to the client limit meanwhile */
        return;
    }
    pump_and_flush(px);
}

/* ---- Response from the upstream ---- */

static void response_complete(struct pgw_proxy *px)
{
    struct pgw_req *req = px->req;
    struct pgw_upstream_conn *uc = px->uc;
    px->reusable = px->resp.keep_alive && px->sent_all && px->resp_body != PGW_HTTP_BODY_EOF &&
                   evbuffer_get_length(uc->io.in) == 0;
    target_succeeded(px->t);
    px_release_uc(px);
    pgw_req_send_end(req); /* finishes the request: px is gone after this */
}

/* Relays what uc->io.in holds of the body. Returns PGW_OK to go on reading, PGW_DONE when the
 * request ended (px is gone). */
static int relay_body(struct pgw_proxy *px)
{
    struct pgw_req *req = px->req;
    struct evbuffer *in = px->uc->io.in;
    switch (px->resp_body) {
    case PGW_HTTP_BODY_NONE:
        response_complete(px);
        return PGW_DONE;
    case PGW_HTTP_BODY_LENGTH: {
        size_t n = evbuffer_get_length(in);
        if ((uint64_t)n > px->resp_left)
            n = (size_t)px->resp_left;
        if (pgw_req_send_body(req, in, n) != PGW_OK)
            return PGW_DONE;
        px->resp_left -= n;
        if (px->resp_left == 0) {
            response_complete(px);
            return PGW_DONE;
        }
        return PGW_OK;
    }
    case PGW_HTTP_BODY_EOF:
        return pgw_req_send_body(req, in, evbuffer_get_length(in)) == PGW_OK ? PGW_OK : PGW_DONE;
    case PGW_HTTP_BODY_CHUNKED:
        break;
    }
    for (;;) {
        size_t len = evbuffer_get_length(in);
        if (len == 0)
            return PGW_OK;
        const char *p = (const char *)evbuffer_pullup(in, -1);
        size_t used = 0, off = 0, dlen = 0;
        int r = pgw_http_chunked_decode(&px->resp_chunked, p, len, &used, &off, &dlen);
        if (r == PGW_ERR) {
            pgw_log_error("request %s: upstream %s: bad chunked body: %s", req->id,
                          px->t->label, px->resp_chunked.err ? px->resp_chunked.err : "?");
            target_failed(px->t);
            pgw_req_abort(req, "upstream_protocol");
            return PGW_DONE;
        }
        if (dlen > 0) {
            evbuffer_drain(in, off);
            if (pgw_req_send_body(req, in, dlen) != PGW_OK)
                return PGW_DONE;
            evbuffer_drain(in, used - off - dlen);
        } else {
            evbuffer_drain(in, used);
        }
        if (r == PGW_DONE) {
            response_complete(px);
            return PGW_DONE;
        }
        if (used == 0)
            return PGW_OK;
    }
}

/* A 101: a WebSocket tunnel opens when it answers the handshake properly, else 502. */
static int upgrade(struct pgw_proxy *px, size_t head_len)
{
    struct pgw_req *req = px->req;
    const char *why = pgw_ws_upgrade_check(req, &px->resp);
    if (why != NULL) {
        px->reusable = 0;
        attempt_failed(px, FAIL_PROTOCOL, why);
        return PGW_DONE;
    }
    struct pgw_upstream_conn *uc = px->uc;
    req->upstream_status = 101;
    req->upstream_us = pgw_now_us() - px->attempt_start_us;
    target_succeeded(px->t);
    px->uc = NULL; /* the tunnel's now */
    uc->px = NULL;
    pgw_ws_tunnel_open(req, &px->resp, head_len, uc, &uc->io); /* req and px are gone after */
    return PGW_DONE;
}

/* Parses the response head. Returns PGW_OK when the head was relayed, PGW_AGAIN for more
 * input, PGW_DONE when the request ended. */
static int handle_head(struct pgw_proxy *px)
{
    struct pgw_req *req = px->req;
    struct evbuffer *in = px->uc->io.in;
    for (;;) {
        size_t len = evbuffer_get_length(in);
        const char *p = (const char *)evbuffer_pullup(in, -1);
        struct pgw_http_header headers[UPSTREAM_HEADERS_MAX];
        struct pgw_http_limits lim = {UPSTREAM_HEAD_MAX, UPSTREAM_HEAD_MAX, UPSTREAM_HEADERS_MAX, 0};
        int r = pgw_http_parse_response(p, len, &px->resp, headers, UPSTREAM_HEADERS_MAX, &lim);
        if (r == PGW_AGAIN)
            return PGW_AGAIN;
        if (r == PGW_ERR) {
            attempt_failed(px, FAIL_PROTOCOL, px->resp.err ? px->resp.err : "bad response head");
            return PGW_DONE;
        }
        if (px->resp.status >= 100 && px->resp.status < 200) {
            if (px->resp.status == 101)
                return upgrade(px, (size_t)r);
            evbuffer_drain(in, (size_t)r); /* interim answers are ours to absorb */
            continue;
        }
        int is_head = PGW_IEQ_LIT(req->h.method, req->h.method_len, "HEAD");
        px->resp_body = pgw_http_response_body(&px->resp, is_head);
        px->resp_left = px->resp.content_length;
        pgw_http_chunked_init(&px->resp_chunked);
        px->head_parsed = 1;
        req->upstream_status = px->resp.status;
        req->upstream_us = pgw_now_us() - px->attempt_start_us;
        if (pgw_req_send_head(req, &px->resp, px->resp_body) != PGW_OK)
            return PGW_DONE; /* a policy failed: answered 500, px is gone */
        evbuffer_drain(in, (size_t)r);
        return PGW_OK;
    }
}

static void on_response_eof(struct pgw_proxy *px, const char *why)
{
    struct pgw_req *req = px->req;
    if (px->uc->io.truncated)
        why = "TLS stream truncated (no close_notify)";
    if (!px->head_parsed) {
        if (evbuffer_get_length(px->uc->io.in) > 0)
            attempt_failed(px, FAIL_PROTOCOL, "connection closed inside the response head");
        else
            attempt_failed(px, FAIL_RESET, why);
        return;
    }
    if (px->resp_body == PGW_HTTP_BODY_EOF && !px->uc->io.truncated) {
        response_complete(px);
        return;
    }
    pgw_log_error("request %s: upstream %s: %s before the end of the response body", req->id,
                  px->t->label, why);
    target_failed(px->t);
    pgw_req_abort(req, "upstream_truncated"); /* no padding, no fake last chunk */
}

static void upstream_read(struct pgw_proxy *px)
{
    struct pgw_req *req = px->req;
    struct pgw_upstream_conn *uc = px->uc;
    if (px->head_parsed && pgw_req_output_pending(req) >= PGW_OUTPUT_HIGH) {
        px->paused = 1; /* the client is slow: stop reading until it drains */
        pgw_io_want_read(&uc->io, 0);
        return;
    }
    size_t budget = px->head_parsed ? PGW_OUTPUT_HIGH : UPSTREAM_HEAD_MAX + 1;
    size_t have = evbuffer_get_length(uc->io.in);
    ssize_t n = pgw_io_read(&uc->io, budget > have ? budget - have : 1);
    if (n == PGW_AGAIN)
        return;
    if (n == 0 || n == PGW_ERR) {
        on_response_eof(px, n == 0 ? "connection closed" : strerror(uc->io.err_no));
        return;
    }
    if (px->sent_all)
        pgw_io_read_timeout(&uc->io, px->up->conf->read_timeout);
    if (!px->head_parsed) {
        int r = handle_head(px);
        if (r == PGW_DONE)
            return;
        if (r == PGW_AGAIN) {
            if (evbuffer_get_length(uc->io.in) > UPSTREAM_HEAD_MAX)
                attempt_failed(px, FAIL_PROTOCOL, "response head too large");
            return;
        }
    }
    if (relay_body(px) == PGW_DONE)
        return;
    if (pgw_req_flush(req) == PGW_ERR)
        return; /* the client is gone; the request was aborted */
}

void pgw_proxy_on_client_drain(struct pgw_req *req)
{
    struct pgw_proxy *px = req->px;
    if (px->uc != NULL && px->paused) {
        px->paused = 0;
        pgw_io_want_read(&px->uc->io, 1);
    }
}

/* ---- Upstream events ---- */

static void idle_conn_event(struct pgw_upstream_conn *uc, int readable)
{
    /* TLS 1.3 servers send session tickets after the handshake: records, not data */
    if (readable && uc->io.tls != NULL && pgw_tls_idle_check(&uc->io) == PGW_OK)
        return;
    /* An idle connection that becomes readable was closed by the upstream or got stray bytes:
     * either way it cannot carry another request. */
    idle_unlink(uc);
    uc_free(uc);
}

static void on_upstream_read(evutil_socket_t fd, short what, void *arg)
{
    struct pgw_upstream_conn *uc = arg;
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    if (uc->px == NULL) {
        idle_conn_event(uc, 1);
        return;
    }
    struct pgw_conn *c = uc->px->req->conn;
    pgw_conn_enter(c);
    if (uc->handshaking)
        uc_handshake(uc->px);
    else
        upstream_read(uc->px);
    pgw_conn_leave(c);
}

static void on_connected(struct pgw_proxy *px)
{
    struct pgw_upstream_conn *uc = px->uc;
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(uc->io.fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
        err = errno;
    if (err != 0) {
        attempt_failed(px, err == ECONNREFUSED ? FAIL_REFUSED : FAIL_CONNECT, strerror(err));
        return;
    }
    uc->connected = 1;
    uc->io.write_deadline = 0;
    pgw_io_want_write(&uc->io, 0);
    connected(px);
}

static void on_upstream_write(evutil_socket_t fd, short what, void *arg)
{
    struct pgw_upstream_conn *uc = arg;
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    if (uc->px == NULL) {
        pgw_io_want_write(&uc->io, 0);
        return;
    }
    struct pgw_proxy *px = uc->px;
    struct pgw_conn *c = px->req->conn;
    pgw_conn_enter(c);
    if (!uc->connected)
        on_connected(px);
    else if (uc->handshaking)
        uc_handshake(px);
    else
        pump_and_flush(px);
    pgw_conn_leave(c);
}

static void on_upstream_timer(evutil_socket_t fd, short what, void *arg)
{
    struct pgw_upstream_conn *uc = arg;
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    int expired = pgw_io_timer_fired(&uc->io);
    if (expired == 0)
        return;
    if (uc->px == NULL) { /* idle past keepalive_timeout */
        idle_conn_event(uc, 0);
        return;
    }
    struct pgw_proxy *px = uc->px;
    struct pgw_req *req = px->req;
    struct pgw_conn *c = req->conn;
    pgw_conn_enter(c);
    if (!uc->connected || uc->handshaking) {
        attempt_failed(px, FAIL_CONNECT_TIMEOUT,
                       uc->handshaking ? "TLS handshake timeout" : "connect timeout");
    } else if (px->head_parsed) {
        pgw_log_error("request %s: upstream %s: timeout in the response body", req->id,
                      px->t->label);
        target_failed(px->t);
        pgw_req_abort(req, "upstream_timeout");
    } else {
        attempt_failed(px, FAIL_READ_TIMEOUT,
                       (expired & PGW_IO_WRITE_EXPIRED) ? "send timeout" : "read timeout");
    }
    pgw_conn_leave(c);
}

/* ---- Failures and retries ---- */

static const char *const fail_terms[] = {
    [FAIL_REFUSED] = "upstream_refused",
    [FAIL_CONNECT] = "upstream_connect_error",
    [FAIL_CONNECT_TIMEOUT] = "upstream_connect_timeout",
    [FAIL_RESET] = "upstream_reset",
    [FAIL_READ_TIMEOUT] = "upstream_timeout",
    [FAIL_PROTOCOL] = "upstream_protocol",
};

static int may_retry(struct pgw_proxy *px, enum fail_kind kind)
{
    struct pgw_req *req = px->req;
    if (req->resp_started)
        return 0;
    int not_sent = kind == FAIL_REFUSED || kind == FAIL_CONNECT || kind == FAIL_CONNECT_TIMEOUT;
    int replayable = pgw_http_is_idempotent(req->h.method, req->h.method_len) &&
                     !req->body_started && kind != FAIL_PROTOCOL;
    if (!not_sent && !replayable)
        return 0;
    if (px->deadline != 0 && pgw_now_ms() >= px->deadline)
        return 0;
    return 1;
}

static void attempt_failed(struct pgw_proxy *px, enum fail_kind kind, const char *detail)
{
    struct pgw_req *req = px->req;
    struct target *t = px->t;
    int was_reused = px->reused;
    px->reusable = 0;
    px_release_uc(px);
    px->sent_all = 0;
    /* The upstream closed a pooled connection as we sent on it: no fault of the target. */
    if (was_reused && kind == FAIL_RESET && !px->fresh_retry && may_retry(px, kind)) {
        px->fresh_retry = 1;
        pgw_log_debug("request %s: pooled connection to %s failed (%s); retrying on a new one",
                      req->id, t->label, detail);
        connect_new(px);
        return;
    }
    target_failed(t);
    int status = (kind == FAIL_CONNECT_TIMEOUT || kind == FAIL_READ_TIMEOUT) ? 504 : 502;
    pgw_log_limited(&fail_log, 1000, PGW_LOG_ERROR,
                    "request %s: upstream %s: target %s: %s (attempt %u)", req->id,
                    px->up->conf->name, t->label, detail, px->attempts);
    if (px->attempts <= px->up->conf->retries && may_retry(px, kind)) {
        px->t = NULL;
        struct target *next = pick_target(px);
        if (next != NULL) {
            req->retries++;
            px->t = NULL;
            /* pick_target advanced rr; step back so attempt() picks the same one */
            px->up->rr = (unsigned)((size_t)(next - px->up->targets) % px->up->ntargets);
            attempt(px);
            return;
        }
    }
    pgw_req_respond_error(req, status, fail_terms[kind], 0);
}

/* ---- Start ---- */

/* ---- Upstream connections handed to a WebSocket tunnel ---- */

void pgw_proxy_upstream_adopt(struct pgw_upstream_conn *uc, event_callback_fn on_read,
                              event_callback_fn on_write, event_callback_fn on_timer, void *arg)
{
    pgw_io_rebind(&uc->io, on_read, on_write, on_timer, arg);
}

void pgw_proxy_upstream_free(struct pgw_upstream_conn *uc)
{
    uc_free(uc);
}

const char *pgw_proxy_upstream_label(const struct pgw_upstream_conn *uc)
{
    return uc->t->label;
}

void pgw_proxy_start(struct pgw_req *req)
{
    struct pgw_proxy *px = pgw_pool_calloc(req->pool, sizeof(*px));
    px->req = req;
    px->up = req->gen->upstreams[req->upstream_index];
    req->px = px;
    pgw_pool_defer(req->pool, px_cleanup, px);
    if (px->up->conf->retry_deadline > 0)
        px->deadline = pgw_now_ms() + px->up->conf->retry_deadline;
    if (pgw_stage_run(req, PGW_STAGE_BALANCE) != PGW_OK) {
        if (!req->finished)
            pgw_req_respond_error(req, 500, "policy_error", 0);
        return;
    }
    px->t = pick_target(px);
    if (px->t != NULL) {
        size_t i = (size_t)(px->t - px->up->targets);
        if (i < 64)
            px->tried |= 1ULL << i;
        px->attempts = 1;
    }
    build_head(px);
    if (px->t == NULL) {
        pgw_req_respond_error(req, 502, "upstream_unavailable", 0);
        return;
    }
    attempt(px);
}
