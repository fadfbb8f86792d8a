/* proxy-ev.c: the bench proxy on plain events, as gateway/io.c: a persistent EV_READ event per
 * socket, one read() into reserved evbuffer space per readiness, writes at once with writev
 * (evbuffer_write), EV_WRITE added only on EAGAIN and deleted once drained, and one timer per
 * connection re-armed lazily (a deadline pushed later costs nothing until the timer fires). */
#include "common.h"

#include <sys/uio.h>

struct conn {
    int fd;
    struct event *rev, *wev, *tev;
    struct evbuffer *in, *out;
    uint64_t deadline; /* no progress by then (ms): timed out */
    uint64_t timer_at; /* when tev is due, 0 = not pending */
    int writing;       /* wev added */
};

struct client;

struct up {
    struct conn io;
    struct client *c;
    struct pool_link link;
    size_t left;
};

struct client {
    struct conn io;
    struct up *up;
};


static uint64_t now_ms(void) /* as the gateway's pgw_now_ms: vDSO, no syscall */
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void conn_init(struct conn *io, int fd, event_callback_fn rd, event_callback_fn wr,
                      event_callback_fn tm, void *arg)
{
    io->fd = fd;
    io->rev = event_new(base, fd, EV_READ | EV_PERSIST, rd, arg);
    io->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, wr, arg);
    io->tev = evtimer_new(base, tm, arg);
    io->in = evbuffer_new();
    io->out = evbuffer_new();
    event_add(io->rev, NULL);
}

static void conn_clear(struct conn *io)
{
    event_free(io->rev);
    event_free(io->wev);
    event_free(io->tev);
    evbuffer_free(io->in);
    evbuffer_free(io->out);
    close(io->fd);
}

/* Lazy deadline: only arm the timer if none is pending early enough. */
static void conn_touch(struct conn *io)
{
    io->deadline = now_ms() + IDLE_TIMEOUT_MS;
    if (io->timer_at != 0 && io->timer_at <= io->deadline)
        return;
    struct timeval tv = {IDLE_TIMEOUT_MS / 1000, (IDLE_TIMEOUT_MS % 1000) * 1000};
    evtimer_add(io->tev, &tv);
    io->timer_at = io->deadline;
}

/* Timer fired: 1 if the deadline passed, else re-armed for it and 0. */
static int conn_expired(struct conn *io)
{
    io->timer_at = 0;
    uint64_t now = now_ms();
    if (io->deadline <= now)
        return 1;
    struct timeval tv = {(time_t)((io->deadline - now) / 1000),
                         (suseconds_t)((io->deadline - now) % 1000 * 1000)};
    evtimer_add(io->tev, &tv);
    io->timer_at = io->deadline;
    return 0;
}

/* One read into reserved space: bytes, 0 at EOF, -1 on error, -2 on EAGAIN. */
static ssize_t conn_read(struct conn *io)
{
    struct evbuffer_iovec v[2];
    int n = evbuffer_reserve_space(io->in, READ_MAX, v, 2);
    if (n <= 0)
        return -1;
    size_t room = 0;
    for (int i = 0; i < n; i++) {
        if (v[i].iov_len > READ_MAX - room)
            v[i].iov_len = READ_MAX - room;
        room += v[i].iov_len;
    }
    ssize_t r;
    do
        r = n == 1 ? read(io->fd, v[0].iov_base, v[0].iov_len) : readv(io->fd, (struct iovec *)v, n);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        evbuffer_commit_space(io->in, v, 0);
        return errno == EAGAIN ? -2 : -1;
    }
    size_t left = (size_t)r;
    for (int i = 0; i < n; i++) {
        v[i].iov_len = v[i].iov_len < left ? v[i].iov_len : left;
        left -= v[i].iov_len;
    }
    evbuffer_commit_space(io->in, v, n);
    if (r > 0)
        conn_touch(io);
    return r;
}

/* Writes now; arms EV_WRITE only when the kernel says EAGAIN. 0 ok/pending, -1 error. */
static int conn_flush(struct conn *io)
{
    while (evbuffer_get_length(io->out) > 0) {
        int w = evbuffer_write(io->out, io->fd);
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return -1;
        if (w <= 0) {
            if (!io->writing) {
                event_add(io->wev, NULL);
                io->writing = 1;
                conn_touch(io);
            }
            return 0;
        }
        if (io->writing)
            conn_touch(io);
    }
    if (io->writing) {
        event_del(io->wev);
        io->writing = 0;
    }
    return 0;
}

static void client_process(struct client *c);

static void up_free(struct up *u)
{
    pool_unlink(&u->link);
    conn_clear(&u->io);
    free(u);
}

static void client_free(struct client *c)
{
    if (c->up) {
        c->up->c = NULL;
        up_free(c->up);
    }
    conn_clear(&c->io);
    free(c);
}

static void up_fail(struct up *u)
{
    if (u->c)
        client_free(u->c);
    else
        up_free(u);
}

static void up_on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct up *u = arg;
    ssize_t r = conn_read(&u->io);
    if (r == -2)
        return;
    struct client *c = u->c;
    if (r <= 0 || !c) { /* EOF, error, or bytes on an idle connection */
        up_fail(u);
        return;
    }
    if (u->left == 0) {
        ssize_t n = response_len(u->io.in);
        if (n == -1)
            return;
        if (n < 0) {
            client_free(c);
            return;
        }
        u->left = (size_t)n;
    }
    size_t have = evbuffer_get_length(u->io.in), mv = have < u->left ? have : u->left;
    evbuffer_remove_buffer(u->io.in, c->io.out, mv);
    u->left -= mv;
    if (u->left == 0) {
        served++;
        c->up = NULL;
        u->c = NULL;
        pool_put(&u->link);
    }
    if (conn_flush(&c->io) < 0) {
        client_free(c);
        return;
    }
    if (!c->up && evbuffer_get_length(c->io.in) > 0)
        client_process(c); /* pipelined request */
}

static void up_on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct up *u = arg;
    if (conn_flush(&u->io) < 0)
        up_fail(u);
}

static void up_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct up *u = arg;
    if (conn_expired(&u->io))
        up_fail(u);
}

static struct up *up_get(void)
{
    struct up *u = pool_take();
    if (u)
        return u;
    int fd = upstream_socket();
    if (fd < 0)
        return NULL;
    u = calloc(1, sizeof(*u));
    u->link.owner = u;
    conn_init(&u->io, fd, up_on_read, up_on_write, up_on_timer, u);
    conn_touch(&u->io);
    return u;
}

static void client_process(struct client *c)
{
    ssize_t hl = head_len(c->io.in);
    if (hl < 0) {
        if (evbuffer_get_length(c->io.in) > MAX_HEAD)
            client_free(c);
        return;
    }
    struct up *u = up_get();
    if (!u) {
        client_free(c);
        return;
    }
    u->c = c;
    c->up = u;
    evbuffer_remove_buffer(c->io.in, u->io.out, (size_t)hl);
    if (conn_flush(&u->io) < 0)
        client_free(c);
}

static void client_on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct client *c = arg;
    ssize_t r = conn_read(&c->io);
    if (r == -2)
        return;
    if (r <= 0) {
        client_free(c);
        return;
    }
    if (!c->up)
        client_process(c);
}

static void client_on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct client *c = arg;
    if (conn_flush(&c->io) < 0)
        client_free(c);
}

static void client_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct client *c = arg;
    if (conn_expired(&c->io))
        client_free(c);
}

static void on_accept_fd(int fd)
{
    struct client *c = calloc(1, sizeof(*c));
    conn_init(&c->io, fd, client_on_read, client_on_write, client_on_timer, c);
    conn_touch(&c->io);
}

int main(int argc, char **argv)
{
    return run_main(argc, argv, "proxy-ev");
}
