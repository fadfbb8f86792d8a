/* worker.c: a worker process: its event loop, the listening sockets it accepts on, the channel
 * to the master (generations in, status out), signals and stopping. Connections and requests
 * live in server.c and request.c.
 *
 * Accept spreading: every worker has the same listening sockets (duplicates sent by the master).
 * Each worker registers them in a private epoll set with EPOLLEXCLUSIVE, and that set in its
 * libevent loop, so the kernel wakes one waiting worker per new connection instead of all of
 * them (no thundering herd), and a worker that is busy or stuck is simply not waiting: the next
 * one takes the connection from the shared queue. SO_REUSEPORT would instead hash every
 * connection to a fixed worker's own queue, including a stuck worker's.
 *
 * Generations: the master sends the validated configuration text and the listening sockets; the
 * worker builds the generation, swaps it in, and answers GEN_OK. A request ends on the generation
 * it started with; a keep-alive connection moves to the newest one between requests (server.c).
 */
#include "control.h"
#include "log.h"
#include "lua_task.h"
#include "policy.h"
#include "wsproxy.h"
#include "proxy.h"
#include "server.h"
#include "store.h"
#include "keys.h"
#include "tls.h"
#include "jwt_provider.h"

#include <errno.h>
#include <malloc.h>
#include <event2/dns.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct pgw_worker pgw_worker;

static struct pgw_log_ratelimit emfile_log, accept_log, maxconn_log;

/* ---- Accept ---- */

static void accept_pause(void)
{
    if (pgw_worker.accept_paused)
        return;
    pgw_worker.accept_paused = 1;
    event_del(pgw_worker.acc_ev);
    struct timeval tv = {0, 100 * 1000};
    evtimer_add(pgw_worker.accept_timer, &tv);
}

static void on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    pgw_worker.accept_paused = 0;
    if (!pgw_worker.stopping)
        event_add(pgw_worker.acc_ev, NULL);
}

#define PGW_ACCEPT_BATCH_TLS 2

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

/* Accepts up to a batch on listener <index>. A TLS listener takes few at a time: each new
 * connection costs a full handshake (~300 µs of CPU) in the next loop pass, and a large batch
 * made every request already in flight wait behind all of them (8 ms p50 with 50 clients
 * reconnecting, and clients spinning on their own handshakes meanwhile). */
static void accept_batch(size_t index)
{
    const char *name = pgw_worker.gen->config->listeners[index].name;
    int lfd = pgw_worker.listeners[index].fd;
    int batch = pgw_worker.gen->config->listeners[index].tls != NULL ? PGW_ACCEPT_BATCH_TLS : 64;
    for (int i = 0; i < batch && !pgw_worker.stopping; i++) {
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
                                "accept on %s: %s; accepting paused for 100 ms", name, strerror(e));
                accept_pause();
                return;
            }
            pgw_log_limited(&accept_log, 5000, PGW_LOG_WARN, "accept on %s: %s", name,
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
        pgw_conn_new((int)index, fd, &peer);
    }
}

static void on_accept(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    struct epoll_event evs[16];
    int n = epoll_wait(fd, evs, (int)PGW_ARRAY_LEN(evs), 0);
    for (int i = 0; i < n; i++)
        if (evs[i].data.u32 < pgw_worker.num_listeners)
            accept_batch(evs[i].data.u32);
}

/* ---- Listeners ---- */

int pgw_listener_open(const struct pgw_config_listener *cl, int *out, char *err, size_t errlen)
{
    int fd = socket(cl->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        snprintf(err, errlen, "listener %s: socket: %s", cl->name, strerror(errno));
        return PGW_ERR;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (cl->sa.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&cl->sa, cl->sa_len) == -1 ||
        listen(fd, cl->backlog > 0 ? cl->backlog : 511) == -1) {
        snprintf(err, errlen, "listener %s: cannot listen on %s: %s", cl->name, cl->address,
                 strerror(errno));
        close(fd);
        return PGW_ERR;
    }
    *out = fd;
    return PGW_OK;
}

static void listeners_close(void)
{
    for (size_t i = 0; i < pgw_worker.num_listeners; i++) {
        /* The master and other workers hold the same socket: leave our epoll set explicitly,
         * closing our descriptor alone would not. */
        epoll_ctl(pgw_worker.acc_ep, EPOLL_CTL_DEL, pgw_worker.listeners[i].fd, NULL);
        close(pgw_worker.listeners[i].fd);
    }
    free(pgw_worker.listeners);
    pgw_worker.listeners = NULL;
    pgw_worker.num_listeners = 0;
}

/* Takes ownership of <fds>, one per listener of the new generation. */
static void listeners_install(const int *fds, size_t n)
{
    static int exclusive = EPOLLEXCLUSIVE;
    listeners_close();
    pgw_worker.listeners = pgw_calloc(n ? n : 1, sizeof(struct pgw_listener));
    for (size_t i = 0; i < n; i++) {
        struct epoll_event ev = {.events = EPOLLIN | (uint32_t)exclusive, .data.u32 = (uint32_t)i};
        if (epoll_ctl(pgw_worker.acc_ep, EPOLL_CTL_ADD, fds[i], &ev) == -1 && errno == EINVAL &&
            exclusive) {
            pgw_log_warn("EPOLLEXCLUSIVE is not supported: every worker wakes on a new connection");
            exclusive = 0;
            ev.events = EPOLLIN;
            epoll_ctl(pgw_worker.acc_ep, EPOLL_CTL_ADD, fds[i], &ev);
        }
        pgw_worker.listeners[i].fd = fds[i];
    }
    pgw_worker.num_listeners = n;
}

/* ---- Generations from the master ---- */

static int resolver_equal(const struct pgw_config_resolver *a, const struct pgw_config_resolver *b)
{
    return a->timeout == b->timeout &&
           pgw_config_targets_equal(a->nameservers, a->num_nameservers, b->nameservers,
                                    b->num_nameservers);
}

/* Points the resolver at the generation's name servers when they changed (reloading the hosts
 * file and resolv.conf on every generation would only add duplicate entries). */
static void dns_configure(const struct pgw_config_resolver *r)
{
    struct evdns_base *dns = pgw_worker.dns;
    if (pgw_worker.gen != NULL && resolver_equal(&pgw_worker.gen->config->resolver, r))
        return;
    evdns_base_clear_nameservers_and_suspend(dns);
    if (r->num_nameservers == 0) {
        if (evdns_base_resolv_conf_parse(dns, DNS_OPTIONS_ALL, "/etc/resolv.conf") != 0)
            pgw_log_warn("no usable name server in /etc/resolv.conf: upstream host names are "
                         "resolved from /etc/hosts only");
    } else {
        for (size_t i = 0; i < r->num_nameservers; i++) {
            const struct pgw_config_target *t = &r->nameservers[i];
            struct sockaddr_storage sa;
            socklen_t len;
            pgw_assert(pgw_addr_parse_ip(t->host, strlen(t->host), &sa, &len) == PGW_OK);
            if (sa.ss_family == AF_INET)
                ((struct sockaddr_in *)&sa)->sin_port = htons(t->port);
            else
                ((struct sockaddr_in6 *)&sa)->sin6_port = htons(t->port);
            if (evdns_base_nameserver_sockaddr_add(dns, (struct sockaddr *)&sa, len, 0) != 0)
                pgw_log_warn("name server %s:%u could not be added", t->host, (unsigned)t->port);
        }
        evdns_base_load_hosts(dns, NULL);
    }
    char secs[32];
    snprintf(secs, sizeof(secs), "%.3f", (double)r->timeout / 1000.0);
    evdns_base_set_option(dns, "timeout:", secs);
    evdns_base_set_option(dns, "attempts:", "2");
    evdns_base_resume(dns);
}

/* Upstream names found in /etc/hosts use its addresses and skip DNS (evdns's own hosts support
 * only serves getaddrinfo lookups, not the TTL-carrying ones proxy.c makes). Read once per
 * generation: the file is small and may have changed since the last one. */
static void hosts_reload(void)
{
    free(pgw_worker.hosts);
    pgw_worker.hosts = NULL;
    pgw_worker.hosts_len = 0;
    FILE *f = fopen("/etc/hosts", "rb");
    if (f == NULL)
        return;
    size_t cap = 1 << 20; /* a hosts file larger than this is cut: nobody has one */
    char *buf = pgw_malloc(cap);
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    pgw_worker.hosts = buf;
    pgw_worker.hosts_len = n;
}

static void on_flush_timer(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    pgw_access_log_flush();
}

/* access_log.flush of the newest generation: buffered lines are written at least every <ms>
 * (0: log.c writes each line at once, no timer). Re-armed only when the interval changes, so
 * reloads more frequent than it do not keep postponing the flush. */
static void flush_timer_arm(uint64_t ms)
{
    static uint64_t armed = UINT64_MAX;
    if (ms == armed)
        return;
    armed = ms;
    if (ms == 0) {
        evtimer_del(pgw_worker.flush_timer);
        return;
    }
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(pgw_worker.flush_timer, &tv);
}

static void gen_refuse(uint64_t number, const char *why, const int *fds, size_t nfds)
{
    for (size_t i = 0; i < nfds; i++)
        close(fds[i]);
    pgw_log_error("generation %llu refused: %s", (unsigned long long)number, why);
    pgw_chan_send(pgw_worker.chan, PGW_MSG_GEN_ERR, number, why, strlen(why), NULL, 0);
}

/* ---- The store ---- */

#define STORE_SWEEP_BATCH 200

/* Every tick: flush the fast file, expire a batch of TTL entries; every minute, clear reader
 * slots left by dead processes (a killed worker). */
static void on_store_timer(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    static struct pgw_log_ratelimit sync_log;
    static uint64_t last_check;
    struct pgw_store *s = pgw_worker.store;
    if (s == NULL)
        return;
    if (pgw_store_sync(s) != PGW_OK)
        pgw_log_limited(&sync_log, 60000, PGW_LOG_ERROR, "store: sync: %s", pgw_store_error(s));
    uint64_t now_ms = (uint64_t)time(NULL) * 1000;
    pgw_store_sweep(s, now_ms, STORE_SWEEP_BATCH);
    if (pgw_now_ms() - last_check >= 60000) {
        last_check = pgw_now_ms();
        int dead = pgw_store_reader_check(s);
        if (dead > 0)
            pgw_log_notice("store: cleared %d reader slot(s) left by dead processes", dead);
    }
}

/* Opens, reopens or closes the store for a new generation. */
static int store_configure(const struct pgw_config_store *sc, char *err, size_t errlen)
{
    if (sc->dir != NULL && pgw_worker.store_dir != NULL &&
        strcmp(sc->dir, pgw_worker.store_dir) == 0) { /* map sizes take effect at restart */
        struct timeval tv = {(time_t)(sc->sync_interval / 1000),
                             (suseconds_t)(sc->sync_interval % 1000) * 1000};
        event_add(pgw_worker.store_timer, &tv); /* the interval may have changed */
        return PGW_OK;
    }
    struct pgw_store *s = NULL;
    if (sc->dir != NULL) {
        if (pgw_keys_secret(sc->dir, 0, pgw_worker.store_secret, err, errlen) != PGW_OK)
            return PGW_ERR;
        s = pgw_store_open(sc->dir, (size_t)sc->durable_map, (size_t)sc->fast_map, err, errlen);
        if (s == NULL)
            return PGW_ERR;
    }
    if (pgw_worker.store != NULL) {
        pgw_store_sync(pgw_worker.store);
        pgw_store_close(pgw_worker.store);
    }
    free(pgw_worker.store_dir);
    pgw_worker.store = s;
    pgw_worker.store_dir = sc->dir ? pgw_strndup(sc->dir, strlen(sc->dir)) : NULL;
    if (pgw_worker.store_timer == NULL)
        pgw_worker.store_timer = event_new(pgw_worker.base, -1, EV_PERSIST, on_store_timer, NULL);
    event_del(pgw_worker.store_timer);
    if (s != NULL) {
        struct timeval tv = {(time_t)(sc->sync_interval / 1000),
                             (suseconds_t)(sc->sync_interval % 1000) * 1000};
        event_add(pgw_worker.store_timer, &tv);
    }
    return PGW_OK;
}

static void store_close(void)
{
    if (pgw_worker.store_timer != NULL)
        event_free(pgw_worker.store_timer);
    pgw_worker.store_timer = NULL;
    if (pgw_worker.store != NULL) {
        pgw_store_sync(pgw_worker.store);
        pgw_store_close(pgw_worker.store);
    }
    pgw_worker.store = NULL;
    free(pgw_worker.store_dir);
    pgw_worker.store_dir = NULL;
}

/* Builds the generation's policy set in the worker's Lua state. PGW_ERR with <err> set. */
static int gen_policies(struct pgw_gen *g, const struct pgw_policy_bundle *b, char *err,
                        size_t errlen)
{
    if (!pgw_policy_config_uses(g->config) && b->n == 0)
        return PGW_OK; /* no Lua on the request path at all */
    if (pgw_bridge_worker_init(g->config, err, errlen) != PGW_OK)
        return PGW_ERR;
    g->policies = pgw_policy_set_build(pgw_bridge_lua(), g->config, b, err, errlen);
    if (g->policies == NULL)
        return PGW_ERR;
    g->policies->gen = g;
    pgw_policy_set_init(g->policies);
    return PGW_OK;
}

/* PGW_MSG_GEN: payload as master.c's send_gen() writes it. Builds and swaps in the new
 * generation. */
static void gen_install(const struct pgw_msg *m)
{
    /* "<file name>\0", u32 YAML length, YAML, u32 files length, files (genfiles.h), bundle */
    const char *nul = memchr(m->payload, '\0', m->len);
    const char *yaml = NULL, *files = NULL;
    uint32_t tl = 0, fl = 0;
    size_t left = nul ? m->len - (size_t)(nul + 1 - m->payload) : 0;
    if (nul != NULL && left >= 4) {
        memcpy(&tl, nul + 1, 4);
        yaml = nul + 5;
        left -= 4;
    }
    if (yaml != NULL && left >= (size_t)tl + 4) {
        memcpy(&fl, yaml + tl, 4);
        files = yaml + tl + 4;
        left -= (size_t)tl + 4;
    }
    struct pgw_policy_bundle bundle;
    if (files == NULL || left < fl ||
        pgw_policy_bundle_decode(files + fl, left - fl, &bundle) != PGW_OK) {
        gen_refuse(m->arg, "malformed generation message", m->fds, m->nfds);
        return;
    }
    static char errbuf[16384];
    struct pgw_config *config =
        pgw_config_load_string(m->payload, yaml, tl, errbuf, sizeof(errbuf));
    if (config == NULL) { /* the master validated it: only a version skew gets here */
        pgw_policy_bundle_free(&bundle);
        gen_refuse(m->arg, errbuf, m->fds, m->nfds);
        return;
    }
    hosts_reload();
    const char *err = NULL;
    struct pgw_gen *g = m->nfds == config->num_listeners ? pgw_gen_new(config, m->arg, &err) : NULL;
    pgw_config_unref(config); /* the generation holds its own reference */
    /* Logs first: init_worker errors of the new policies belong in the new error log. */
    if (g != NULL && pgw_log_open(g->config) != PGW_OK)
        pgw_log_error("generation %llu: logs not reopened", (unsigned long long)m->arg);
    if (g != NULL)
        flush_timer_arm(g->config->access_log.flush);
    if (g != NULL &&
        ((g->tls = pgw_tls_gen_new(g->config, files, fl, errbuf, sizeof(errbuf))) == NULL ||
         (g->jwt = pgw_jwt_gen_new(g->config, files, fl, errbuf, sizeof(errbuf))) == NULL)) {
        err = errbuf;
        pgw_gen_unref(g);
        g = NULL;
    }
    if (g != NULL && (store_configure(&g->config->store, errbuf, sizeof(errbuf)) != PGW_OK ||
                      gen_policies(g, &bundle, errbuf, sizeof(errbuf)) != PGW_OK)) {
        err = errbuf;
        pgw_gen_unref(g);
        g = NULL;
    }
    pgw_policy_bundle_free(&bundle);
    if (g == NULL) {
        gen_refuse(m->arg, err ? err : "listener sockets do not match the configuration", m->fds,
                   m->nfds);
        return;
    }
    dns_configure(&g->config->resolver);
    listeners_install(m->fds, m->nfds);
    struct pgw_gen *old = pgw_worker.gen;
    pgw_jwt_gen_adopt(g->jwt, old != NULL ? old->jwt : NULL);
    for (size_t i = 0; old != NULL && i < g->config->num_upstreams; i++)
        for (size_t j = 0; j < old->config->num_upstreams; j++)
            pgw_upstream_adopt(g->upstreams[i], old->upstreams[j]);
    pgw_worker.gen = g;
    pgw_conns_follow_gen();
    if (old != NULL && old->policies != NULL)
        pgw_policy_set_retire(old->policies); /* its timers stop */
    pgw_gen_unref(old); /* freed when its last request ends */
    if (!pgw_worker.accept_paused && !pgw_worker.stopping)
        event_add(pgw_worker.acc_ev, NULL);
    pgw_log_info("worker %d: generation %llu active", (int)getpid(), (unsigned long long)m->arg);
    pgw_chan_send(pgw_worker.chan, PGW_MSG_GEN_OK, m->arg, NULL, 0, NULL, 0);
}

static void status_reply(uint64_t query)
{
    char buf[4096], ws[3600];
    struct pgw_lua *lua = pgw_bridge_lua();
    pgw_conns_ws_by_route(ws, sizeof(ws));
    int n = snprintf(buf, sizeof(buf),
                     "{\"pid\":%d,\"generation\":%llu,\"connections\":%zu,\"requests\":%llu,"
                     "\"lua_memory\":%zu,\"lua_memory_peak\":%zu,\"websockets\":%s}",
                     (int)getpid(), (unsigned long long)(pgw_worker.gen ? pgw_worker.gen->number : 0),
                     pgw_worker.num_conns, (unsigned long long)pgw_worker.requests,
                     lua ? pgw_lua_mem_used(lua) : 0, lua ? pgw_lua_mem_peak(lua) : 0, ws);
    pgw_chan_send(pgw_worker.chan, PGW_MSG_STATUS_REPLY, query, buf, (size_t)n, NULL, 0);
}

static void worker_stop(int fast, const char *why);

/* The master asks whether this worker holds a connection another worker pushes to. */
static void ws_push_local(const struct pgw_msg *m)
{
    uint8_t status = PGW_WS_PUSH_UNKNOWN;
    if (m->len >= 33)
        status = (uint8_t)pgw_ws_push(m->payload, 32, (uint8_t)m->payload[32], m->payload + 33,
                                      m->len - 33);
    pgw_chan_send(pgw_worker.chan, PGW_MSG_WS_PUSH_REPLY, m->arg, (const char *)&status, 1, NULL,
                  0);
}

static void on_master_msg(struct pgw_chan *ch, const struct pgw_msg *m, void *arg)
{
    PGW_UNUSED(ch);
    PGW_UNUSED(arg);
    if (m == NULL) { /* the master is gone: nobody would replace us or reload; drain and go */
        pgw_chan_free(pgw_worker.chan);
        pgw_worker.chan = NULL;
        worker_stop(0, "the master closed the control channel");
        return;
    }
    switch (m->type) {
    case PGW_MSG_GEN:
        gen_install(m);
        return;
    case PGW_MSG_STATUS:
        status_reply(m->arg);
        break;
    case PGW_MSG_TICKETS:
        pgw_tls_set_ticket_keys((const unsigned char *)m->payload,
                                m->len / PGW_TLS_TICKET_KEY_LEN);
        break;
    case PGW_MSG_WS_PUSH:
        ws_push_local(m);
        break;
    case PGW_MSG_WS_PUSH_REPLY:
        pgw_lua_ws_push_reply(m->arg, m->len == 1 ? (uint8_t)m->payload[0] : PGW_WS_PUSH_UNKNOWN);
        break;
    case PGW_MSG_PING: /* answered from the event loop: a stuck loop does not answer */
        pgw_chan_send(pgw_worker.chan, PGW_MSG_PONG, m->arg, NULL, 0, NULL, 0);
        break;
    default:
        pgw_log_warn("control channel: unexpected message type %u", m->type);
        break;
    }
    for (size_t i = 0; i < m->nfds; i++)
        close(m->fds[i]);
}

/* ---- Stopping ---- */

static struct event *stop_timer;
static uint64_t stop_deadline;
static int ws_shut; /* open WebSockets were sent close 1001 at the drain deadline */

#define WS_SHUTDOWN_GRACE_MS 1000 /* for their close handshakes after that */

static void on_stop_check(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    /* Requests that end meanwhile close their connection (stopping forbids keep-alive). */
    pgw_conns_close_idle();
    if (!ws_shut && pgw_worker.num_conns > 0 && pgw_now_ms() >= stop_deadline) {
        ws_shut = 1;
        if (pgw_conns_ws_shutdown() > 0)
            stop_deadline = pgw_now_ms() + WS_SHUTDOWN_GRACE_MS;
    }
    if (pgw_worker.num_conns == 0 || pgw_now_ms() >= stop_deadline) {
        if (pgw_worker.num_conns > 0)
            pgw_log_warn("worker %d: drain time over, closing %zu connection(s)", (int)getpid(),
                         pgw_worker.num_conns);
        event_base_loopbreak(pgw_worker.base);
        return;
    }
    struct timeval tv = {0, 20 * 1000};
    evtimer_add(stop_timer, &tv);
}

/* Fast: close everything now. Graceful: stop accepting, close idle connections, let requests in
 * flight finish within timeouts.drain. A second graceful request does not restart the drain; a
 * fast one after a graceful one cuts it short. */
static void worker_stop(int fast, const char *why)
{
    int level = fast ? 2 : 1;
    if (pgw_worker.stopping >= level)
        return;
    int first = pgw_worker.stopping == 0;
    pgw_worker.stopping = level;
    pgw_log_notice("worker %d: %s: %s", (int)getpid(), why,
                   fast ? "stopping now" : "draining");
    event_del(pgw_worker.acc_ev);
    listeners_close();
    if (fast) {
        pgw_conns_close_all("shutdown");
        event_base_loopbreak(pgw_worker.base);
        return;
    }
    if (first) {
        uint64_t drain = pgw_worker.gen ? pgw_worker.gen->config->timeouts.drain : 0;
        stop_deadline = pgw_now_ms() + drain;
        stop_timer = evtimer_new(pgw_worker.base, on_stop_check, NULL);
        struct timeval tv = {0, 0};
        evtimer_add(stop_timer, &tv);
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    worker_stop(sig != SIGQUIT, strsignal((int)sig));
}

/* ---- The worker's life ---- */

static uint64_t random_seed(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof(s), GRND_NONBLOCK) != (ssize_t)sizeof(s))
        s = (uint64_t)getpid() * 0x9E3779B97F4A7C15ULL ^ pgw_now_us();
    return s;
}

static struct event_base *base_new(void)
{
    struct event_config *ec = event_config_new();
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    struct event_base *base = event_base_new_with_config(ec);
    event_config_free(ec);
    pgw_assert(base != NULL);
    return base;
}

/* glibc returns the top of the heap to the kernel as soon as 128 KiB are free there, and only
 * raises that bound after the first large mmapped block is freed. Connection buffers (TLS
 * records, 16-64 KiB reads) churn right at that size: until the bound moved, the heap was trimmed
 * and grown again (brk, page faults) several times per request, 5x the CPU of a 16 KiB TLS
 * response in the benchmark. Fixed bounds: blocks under 1 MiB from the heap, trimmed past 16 MiB
 * free. */
static void malloc_tune(void)
{
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    mallopt(M_TRIM_THRESHOLD, 16 << 20);
}

int pgw_worker_main(int chan_fd)
{
    malloc_tune();
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN); /* reloads come from the master, never from a terminal hang-up */
    pgw_worker.base = base_new();
    pgw_worker.dns = evdns_base_new(pgw_worker.base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    pgw_worker.id_seed = random_seed();
    pgw_worker.acc_ep = epoll_create1(EPOLL_CLOEXEC);
    pgw_assert(pgw_worker.acc_ep != -1 && pgw_worker.dns != NULL);
    pgw_worker.acc_ev = event_new(pgw_worker.base, pgw_worker.acc_ep, EV_READ | EV_PERSIST,
                                  on_accept, NULL);
    pgw_worker.accept_timer = evtimer_new(pgw_worker.base, on_accept_resume, NULL);
    pgw_worker.flush_timer = event_new(pgw_worker.base, -1, EV_PERSIST, on_flush_timer, NULL);
    flush_timer_arm(1000); /* until the first generation says */
    static const int sigs[] = {SIGTERM, SIGINT, SIGQUIT};
    struct event *sev[PGW_ARRAY_LEN(sigs)];
    for (size_t i = 0; i < PGW_ARRAY_LEN(sigs); i++) {
        sev[i] = evsignal_new(pgw_worker.base, sigs[i], on_signal, NULL);
        evsignal_add(sev[i], NULL);
    }
    pgw_worker.chan = pgw_chan_new(pgw_worker.base, chan_fd, on_master_msg, NULL);
    event_base_dispatch(pgw_worker.base);
    pgw_conns_close_all("shutdown");
    pgw_access_log_flush();
    pgw_log_info("worker %d: stopped", (int)getpid());
    listeners_close();
    for (size_t i = 0; i < PGW_ARRAY_LEN(sigs); i++)
        event_free(sev[i]);
    if (stop_timer)
        event_free(stop_timer);
    pgw_chan_free(pgw_worker.chan);
    event_free(pgw_worker.flush_timer);
    event_free(pgw_worker.accept_timer);
    event_free(pgw_worker.acc_ev);
    close(pgw_worker.acc_ep);
    if (pgw_worker.gen != NULL && pgw_worker.gen->policies != NULL)
        pgw_policy_set_retire(pgw_worker.gen->policies); /* timers: one premature run */
    pgw_gen_unref(pgw_worker.gen);
    pgw_worker.gen = NULL;
    pgw_bridge_worker_free();
    store_close();
    event_base_loop(pgw_worker.base, EVLOOP_NONBLOCK); /* cancelled lookups report back */
    evdns_base_free(pgw_worker.dns, 0);
    event_base_free(pgw_worker.base);
    free(pgw_worker.hosts);
    pgw_log_close();
    return 0;
}
