/* io.c: see io.h. */
#include "io.h"
#include "log.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define IO_READ_CHUNK 16384

static ssize_t plain_read(struct pgw_io *io, size_t max)
{
    struct evbuffer_iovec vec[2];
    int n = evbuffer_reserve_space(io->in, (ev_ssize_t)max, vec, 2);
    if (n <= 0)
        return PGW_ERR;
    /* reserve_space may hand back more than asked; never read past max */
    size_t room = 0;
    for (int i = 0; i < n; i++) {
        if (vec[i].iov_len > max - room)
            vec[i].iov_len = max - room;
        room += vec[i].iov_len;
    }
    struct iovec iov[2];
    for (int i = 0; i < n; i++) {
        iov[i].iov_base = vec[i].iov_base;
        iov[i].iov_len = vec[i].iov_len;
    }
    ssize_t r;
    do {
        r = n == 1 ? read(io->fd, iov[0].iov_base, iov[0].iov_len) : readv(io->fd, iov, n);
    } while (r == -1 && errno == EINTR);
    if (r == -1) {
        io->err_no = errno;
        evbuffer_commit_space(io->in, vec, 0);
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? PGW_AGAIN : PGW_ERR;
    }
    size_t left = (size_t)r;
    for (int i = 0; i < n; i++) {
        vec[i].iov_len = PGW_MIN(vec[i].iov_len, left);
        left -= vec[i].iov_len;
    }
    evbuffer_commit_space(io->in, vec, n);
    return r;
}

static ssize_t plain_write(struct pgw_io *io)
{
    int r = evbuffer_write(io->out, io->fd);
    if (r == -1) {
        io->err_no = errno;
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? PGW_AGAIN : PGW_ERR;
    }
    return r;
}

const struct pgw_transport pgw_transport_plain = {"plain", plain_read, plain_write, NULL, NULL};

/* The events call these first: a transport blocked in one direction gets the other's event. */
static void io_on_read(evutil_socket_t fd, short what, void *arg)
{
    struct pgw_io *io = arg;
    if (io->tr_wants_read) {
        io->tr_wants_read = 0;
        pgw_io_sync_events(io);
        io->on_write(fd, EV_WRITE, io->arg);
        return;
    }
    io->on_read(fd, what, io->arg);
}

static void io_on_write(evutil_socket_t fd, short what, void *arg)
{
    struct pgw_io *io = arg;
    if (io->tr_wants_write) {
        io->tr_wants_write = 0;
        pgw_io_sync_events(io);
        io->on_read(fd, EV_READ, io->arg);
        return;
    }
    io->on_write(fd, what, io->arg);
}

void pgw_io_init(struct pgw_io *io, struct event_base *base, evutil_socket_t fd,
                 event_callback_fn on_read, event_callback_fn on_write, event_callback_fn on_timer,
                 void *arg)
{
    memset(io, 0, sizeof(*io));
    io->fd = fd;
    io->tr = &pgw_transport_plain;
    io->on_read = on_read;
    io->on_write = on_write;
    io->arg = arg;
    io->rev = event_new(base, fd, EV_READ | EV_PERSIST, io_on_read, io);
    io->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, io_on_write, io);
    io->tev = evtimer_new(base, on_timer, arg);
    io->in = evbuffer_new();
    io->out = evbuffer_new();
    pgw_assert(io->rev && io->wev && io->tev && io->in && io->out);
}

void pgw_io_rebind(struct pgw_io *io, event_callback_fn on_read, event_callback_fn on_write,
                   event_callback_fn on_timer, void *arg)
{
    io->on_read = on_read;
    io->on_write = on_write;
    io->arg = arg;
    struct event_base *base = event_get_base(io->tev);
    event_del(io->tev);
    event_assign(io->tev, base, -1, 0, on_timer, arg);
    io->timer_at = 0;
    pgw_io_timer_sync(io);
}

void pgw_io_clear(struct pgw_io *io)
{
    int owns_fd = io->rev != NULL && io->fd >= 0; /* a zeroed io has fd 0 but owns nothing */
    if (io->tls != NULL && io->tr->close != NULL)
        io->tr->close(io);
    if (io->rev)
        event_free(io->rev);
    if (io->wev)
        event_free(io->wev);
    if (io->tev)
        event_free(io->tev);
    if (io->in)
        evbuffer_free(io->in);
    if (io->out)
        evbuffer_free(io->out);
    if (owns_fd)
        close(io->fd);
    memset(io, 0, sizeof(*io));
    io->fd = -1;
}

ssize_t pgw_io_read(struct pgw_io *io, size_t max)
{
    if (max == 0)
        return PGW_AGAIN;
    return io->tr->read(io, PGW_MIN(max, (size_t)IO_READ_CHUNK * 4));
}

int pgw_io_flush(struct pgw_io *io, uint64_t send_timeout_ms)
{
    while (evbuffer_get_length(io->out) > 0) {
        ssize_t w = io->tr->write(io);
        if (w == PGW_ERR)
            return PGW_ERR;
        if (w == PGW_AGAIN || w == 0) {
            if (!io->writing) {
                io->write_deadline = pgw_now_ms() + send_timeout_ms;
                pgw_io_want_write(io, 1);
                pgw_io_timer_sync(io);
            }
            return PGW_AGAIN;
        }
        if (io->writing) /* progress: the send timeout counts from now */
            io->write_deadline = pgw_now_ms() + send_timeout_ms;
    }
    if (io->writing)
        pgw_io_want_write(io, 0);
    io->write_deadline = 0;
    return PGW_OK;
}

void pgw_io_sync_events(struct pgw_io *io)
{
    unsigned r = io->reading | io->tr_wants_read, w = io->writing | io->tr_wants_write;
    if (r != io->rev_added) {
        if (r)
            event_add(io->rev, NULL);
        else
            event_del(io->rev);
        io->rev_added = r;
    }
    if (w != io->wev_added) {
        if (w)
            event_add(io->wev, NULL);
        else
            event_del(io->wev);
        io->wev_added = w;
    }
}

void pgw_io_kick(struct pgw_io *io)
{
    if (io->reading && io->tr->has_pending != NULL && io->tr->has_pending(io))
        event_active(io->rev, EV_READ, 0);
}

void pgw_io_want_read(struct pgw_io *io, int on)
{
    unsigned was = io->reading;
    io->reading = on ? 1 : 0;
    pgw_io_sync_events(io);
    /* Bytes already inside the transport make no socket event: deliver them now. Only when
     * reading resumes: a transport that holds half a record and wants more (a read that failed
     * with "again") must not be woken again and again. */
    if (on && !was)
        pgw_io_kick(io);
}

void pgw_io_want_write(struct pgw_io *io, int on)
{
    io->writing = on ? 1 : 0;
    pgw_io_sync_events(io);
}

static uint64_t earliest(const struct pgw_io *io)
{
    uint64_t r = io->read_deadline, w = io->write_deadline;
    if (r == 0)
        return w;
    if (w == 0)
        return r;
    return PGW_MIN(r, w);
}

void pgw_io_timer_sync(struct pgw_io *io)
{
    uint64_t due = earliest(io);
    if (due == 0)
        return; /* a pending timer finds nothing to do when it fires; cheaper than deleting */
    if (io->timer_at != 0 && io->timer_at <= due)
        return; /* fires early enough; re-checked then */
    uint64_t now = pgw_now_ms();
    uint64_t ms = due > now ? due - now : 0;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(io->tev, &tv);
    io->timer_at = due;
}

void pgw_io_read_timeout(struct pgw_io *io, uint64_t ms)
{
    io->read_deadline = ms ? pgw_now_ms() + ms : 0;
    pgw_io_timer_sync(io);
}

int pgw_io_timer_fired(struct pgw_io *io)
{
    io->timer_at = 0;
    uint64_t now = pgw_now_ms();
    int r = 0;
    if (io->read_deadline != 0 && io->read_deadline <= now)
        r |= PGW_IO_READ_EXPIRED;
    if (io->write_deadline != 0 && io->write_deadline <= now)
        r |= PGW_IO_WRITE_EXPIRED;
    if (r == 0)
        pgw_io_timer_sync(io);
    return r;
}
