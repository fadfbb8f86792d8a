/* control.c: framed messages with descriptors over a socketpair (see control.h). */
#include "control.h"
#include "log.h"

#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define CHAN_MAGIC 0x70677763u /* "pgwc" */
#define HDR_LEN 24
#define READ_CHUNK 65536

/* A frame waiting to leave: its bytes and the duplicates of its descriptors. */
struct frame {
    struct frame *next;
    char *buf;
    size_t len, sent;
    int *fds;
    size_t nfds;
};

struct pgw_chan {
    int fd;
    struct event *rev, *wev;
    struct evbuffer *in;
    int *fds; /* received, not yet delivered, in arrival order */
    size_t nfds, fds_cap;
    struct frame *head, *tail;
    size_t pending;
    pgw_chan_cb cb;
    void *arg;
    int broken;
    int send_failed; /* reported from the read callback, never from inside pgw_chan_send */
};

static struct pgw_log_ratelimit chan_log;

static void put32(char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t get64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static void close_fds(int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

static void frame_free(struct frame *f)
{
    close_fds(f->fds, f->nfds);
    free(f->fds);
    free(f->buf);
    free(f);
}

/* The peer is gone or spoke nonsense: stop, and tell the owner once. */
static void chan_break(struct pgw_chan *ch)
{
    if (ch->broken)
        return;
    ch->broken = 1;
    event_del(ch->rev);
    event_del(ch->wev);
    ch->cb(ch, NULL, ch->arg); /* may free ch */
}

/* ---- Sending ---- */

/* Sends queued frames until the socket is full. Returns PGW_OK or PGW_ERR (broken). */
static int chan_flush(struct pgw_chan *ch)
{
    while (ch->head != NULL) {
        struct frame *f = ch->head;
        struct iovec iov = {f->buf + f->sent, f->len - f->sent};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        char cbuf[CMSG_SPACE(sizeof(int) * PGW_CHAN_FDS_MAX)];
        if (f->sent == 0 && f->nfds > 0) { /* descriptors ride with the first byte */
            memset(cbuf, 0, sizeof(cbuf));
            mh.msg_control = cbuf;
            mh.msg_controllen = CMSG_SPACE(sizeof(int) * f->nfds);
            struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int) * f->nfds);
            memcpy(CMSG_DATA(cm), f->fds, sizeof(int) * f->nfds);
        }
        ssize_t n = sendmsg(ch->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                event_add(ch->wev, NULL);
                return PGW_OK;
            }
            pgw_log_limited(&chan_log, 1000, PGW_LOG_WARN, "control channel: send: %s",
                            strerror(errno));
            return PGW_ERR;
        }
        if (f->sent == 0 && f->nfds > 0) { /* the kernel holds its own references now */
            close_fds(f->fds, f->nfds);
            f->nfds = 0;
        }
        f->sent += (size_t)n;
        ch->pending -= (size_t)n;
        if (f->sent < f->len)
            continue;
        ch->head = f->next;
        if (ch->head == NULL)
            ch->tail = NULL;
        frame_free(f);
    }
    event_del(ch->wev);
    return PGW_OK;
}

int pgw_chan_send(struct pgw_chan *ch, uint32_t type, uint64_t arg, const void *payload,
                  size_t len, const int *fds, size_t nfds)
{
    if (ch->broken || ch->send_failed || len > PGW_CHAN_PAYLOAD_MAX || nfds > PGW_CHAN_FDS_MAX)
        return PGW_ERR;
    struct frame *f = pgw_calloc(1, sizeof(*f));
    f->len = HDR_LEN + len;
    f->buf = pgw_malloc(f->len);
    put32(f->buf, CHAN_MAGIC);
    put32(f->buf + 4, type);
    put64(f->buf + 8, arg);
    put32(f->buf + 16, (uint32_t)len);
    put32(f->buf + 20, (uint32_t)nfds);
    if (len > 0)
        memcpy(f->buf + HDR_LEN, payload, len);
    f->fds = pgw_calloc(nfds ? nfds : 1, sizeof(int));
    for (size_t i = 0; i < nfds; i++) {
        f->fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
        if (f->fds[i] == -1) {
            int e = errno;
            f->nfds = i;
            frame_free(f);
            pgw_log_error("control channel: cannot duplicate a descriptor: %s", strerror(e));
            return PGW_ERR;
        }
    }
    f->nfds = nfds;
    if (ch->tail)
        ch->tail->next = f;
    else
        ch->head = f;
    ch->tail = f;
    ch->pending += f->len;
    if (chan_flush(ch) != PGW_OK) {
        /* The owner may be inside its own callback: report the break from a fresh event. */
        ch->send_failed = 1;
        event_active(ch->rev, EV_READ, 1);
        return PGW_ERR;
    }
    return PGW_OK;
}

size_t pgw_chan_queued(const struct pgw_chan *ch) { return ch->pending; }

static void on_chan_write(evutil_socket_t fd, short what, void *arg)
{
    struct pgw_chan *ch = arg;
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    if (chan_flush(ch) != PGW_OK)
        chan_break(ch);
}

/* ---- Receiving ---- */

static void take_fds(struct pgw_chan *ch, struct msghdr *mh)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm != NULL; cm = CMSG_NXTHDR(mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        if (ch->nfds + n > ch->fds_cap) {
            ch->fds_cap = ch->nfds + n + 16;
            ch->fds = pgw_realloc(ch->fds, ch->fds_cap * sizeof(int));
        }
        memcpy(ch->fds + ch->nfds, CMSG_DATA(cm), n * sizeof(int));
        ch->nfds += n;
    }
}

/* Delivers every complete frame. Returns PGW_OK, PGW_DONE when the callback freed the channel
 * (it may only do so on NULL, i.e. after chan_break), or PGW_ERR on a protocol error. */
static int deliver(struct pgw_chan *ch)
{
    for (;;) {
        size_t have = evbuffer_get_length(ch->in);
        if (have < HDR_LEN)
            return PGW_OK;
        const unsigned char *h = evbuffer_pullup(ch->in, HDR_LEN);
        uint32_t len = get32(h + 16), nfds = get32(h + 20);
        if (get32(h) != CHAN_MAGIC || len > PGW_CHAN_PAYLOAD_MAX || nfds > PGW_CHAN_FDS_MAX ||
            nfds > ch->nfds) {
            pgw_log_error("control channel: malformed frame (magic, length or descriptors)");
            return PGW_ERR;
        }
        if (have < HDR_LEN + (size_t)len)
            return PGW_OK;
        const unsigned char *p = evbuffer_pullup(ch->in, (ev_ssize_t)(HDR_LEN + len));
        struct pgw_msg m = {get32(p + 4), get64(p + 8), (const char *)p + HDR_LEN, len, NULL,
                            nfds};
        int fds[PGW_CHAN_FDS_MAX];
        if (nfds > 0) { /* ch->fds is NULL until a descriptor ever arrived */
            memcpy(fds, ch->fds, nfds * sizeof(int));
            memmove(ch->fds, ch->fds + nfds, (ch->nfds - nfds) * sizeof(int));
            ch->nfds -= nfds;
        }
        m.fds = fds;
        ch->cb(ch, &m, ch->arg);
        evbuffer_drain(ch->in, HDR_LEN + len);
    }
}

static void on_chan_read(evutil_socket_t fd, short what, void *arg)
{
    struct pgw_chan *ch = arg;
    PGW_UNUSED(what);
    if (ch->send_failed) {
        chan_break(ch);
        return;
    }
    char buf[READ_CHUNK];
    char cbuf[CMSG_SPACE(sizeof(int) * PGW_CHAN_FDS_MAX)];
    struct iovec iov = {buf, sizeof(buf)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof(cbuf)};
    ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n > 0)
        take_fds(ch, &mh);
    if (n > 0 && (mh.msg_flags & MSG_CTRUNC)) {
        pgw_log_error("control channel: descriptors truncated");
        n = -1;
    }
    if (n <= 0) {
        chan_break(ch);
        return;
    }
    evbuffer_add(ch->in, buf, (size_t)n);
    if (deliver(ch) == PGW_ERR)
        chan_break(ch);
}

/* ---- Life cycle ---- */

struct pgw_chan *pgw_chan_new(struct event_base *base, int fd, pgw_chan_cb cb, void *arg)
{
    struct pgw_chan *ch = pgw_calloc(1, sizeof(*ch));
    evutil_make_socket_nonblocking(fd);
    int big = 4 * 1024 * 1024; /* a generation (config text) usually leaves in one write */
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    ch->fd = fd;
    ch->cb = cb;
    ch->arg = arg;
    ch->in = evbuffer_new();
    ch->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_chan_read, ch);
    ch->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_chan_write, ch);
    pgw_assert(ch->in && ch->rev && ch->wev);
    event_add(ch->rev, NULL);
    return ch;
}

void pgw_chan_free(struct pgw_chan *ch)
{
    if (ch == NULL)
        return;
    event_free(ch->rev);
    event_free(ch->wev);
    evbuffer_free(ch->in);
    close_fds(ch->fds, ch->nfds);
    free(ch->fds);
    while (ch->head != NULL) {
        struct frame *f = ch->head;
        ch->head = f->next;
        frame_free(f);
    }
    close(ch->fd);
    free(ch);
}
