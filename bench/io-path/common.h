/* common.h: what both bench proxies share (listening, accepting, upstream connect, HTTP framing,
 * shutdown). Only the socket I/O path differs between proxy-bev.c and proxy-ev.c.
 *
 * Trivial HTTP/1.1 keep-alive reverse proxy work: a request is a head ending in "\r\n\r\n" (GET,
 * no body), forwarded unchanged to one upstream over a pooled keep-alive connection; the response
 * is a head plus Content-Length bytes (assumed present), relayed to the client as it arrives.
 * One request in flight per client connection (wrk does not pipeline).
 */
#ifndef IO_PATH_COMMON_H
#define IO_PATH_COMMON_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define IDLE_TIMEOUT_MS 60000 /* read (keep-alive/header) and write timeout, both sides */
#define READ_MAX 16384        /* per read call, = libevent's bufferevent default */
#define MAX_HEAD 65536

static struct event_base *base;
static struct sockaddr_in upstream_addr;
static unsigned long long served; /* responses fully relayed */

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Non-blocking socket with connect() to the upstream started (may be EINPROGRESS); -1 on error. */
static int upstream_socket(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    set_nodelay(fd);
    if (connect(fd, (struct sockaddr *)&upstream_addr, sizeof(upstream_addr)) < 0 &&
        errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Length of the head ("\r\n\r\n" included) at the start of <b>, or -1 if incomplete. */
static ssize_t head_len(struct evbuffer *b)
{
    struct evbuffer_ptr p = evbuffer_search(b, "\r\n\r\n", 4, NULL);
    return p.pos < 0 ? -1 : (ssize_t)p.pos + 4;
}

/* Length of the whole response (head + Content-Length) at the start of <b>: -1 if the head is
 * incomplete, -2 if it is malformed. */
static ssize_t response_len(struct evbuffer *b)
{
    ssize_t hl = head_len(b);
    if (hl < 0)
        return evbuffer_get_length(b) > MAX_HEAD ? -2 : -1;
    const char *h = (const char *)evbuffer_pullup(b, hl), *end = h + hl;
    for (const char *l = memchr(h, '\n', (size_t)hl); l && l + 16 < end;
         l = memchr(l + 1, '\n', (size_t)(end - l - 1))) {
        if (strncasecmp(l + 1, "content-length:", 15) == 0) {
            char *e;
            long long n = strtoll(l + 16, &e, 10);
            return n < 0 || e == l + 16 ? -2 : hl + (ssize_t)n;
        }
    }
    return -2;
}

/* The upstream keep-alive pool: idle connections, most recently used first. */
struct pool_link {
    struct pool_link *prev, *next;
    void *owner; /* the variant's struct up */
    int pooled;
};
static struct pool_link *pool_head;

static void pool_put(struct pool_link *l)
{
    l->prev = NULL;
    l->next = pool_head;
    if (pool_head)
        pool_head->prev = l;
    pool_head = l;
    l->pooled = 1;
}

static void pool_unlink(struct pool_link *l)
{
    if (!l->pooled)
        return;
    if (l->prev)
        l->prev->next = l->next;
    else
        pool_head = l->next;
    if (l->next)
        l->next->prev = l->prev;
    l->pooled = 0;
}

static void *pool_take(void)
{
    struct pool_link *l = pool_head;
    if (!l)
        return NULL;
    pool_unlink(l);
    return l->owner;
}

static void on_accept_fd(int fd); /* per variant */

static void on_listen(evutil_socket_t lfd, short what, void *arg)
{
    (void)what, (void)arg;
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or a transient error: retried on the next event */
        set_nodelay(fd);
        on_accept_fd(fd);
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig, (void)what, (void)arg;
    event_base_loopbreak(base);
}

/* argv: <listen port> <upstream port>. Sets up the base, the listener and the signals, runs the
 * loop, and reports the responses served on exit. */
static int run_main(int argc, char **argv, const char *name)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_PORT (both on 127.0.0.1)\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    upstream_addr.sin_family = AF_INET;
    upstream_addr.sin_port = htons((uint16_t)atoi(argv[2]));
    upstream_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    if (lfd < 0)
        die("socket");
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 1024) < 0)
        die("bind/listen");

    if (!(base = event_base_new()))
        die("event_base_new");
    struct event *lev = event_new(base, lfd, EV_READ | EV_PERSIST, on_listen, NULL);
    struct event *s1 = evsignal_new(base, SIGTERM, on_signal, NULL);
    struct event *s2 = evsignal_new(base, SIGINT, on_signal, NULL);
    event_add(lev, NULL);
    event_add(s1, NULL);
    event_add(s2, NULL);
    fprintf(stderr, "%s: listening on 127.0.0.1:%s, upstream 127.0.0.1:%s, libevent %s (%s)\n",
            name, argv[1], argv[2], event_get_version(), event_base_get_method(base));
    event_base_dispatch(base);
    fprintf(stderr, "%s: served %llu\n", name, served);
    return 0;
}

#endif
