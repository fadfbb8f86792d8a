/* control_test.c: the master<->worker channel: framing, large payloads with partial writes,
 * descriptors passed with SCM_RIGHTS (also queued behind a partial frame), peer close, malformed
 * frames, bounds, send failures reported later and never re-entrantly, no descriptor leaks. */
#include "../../gateway/control.c"
#include "../support/test.h"

#include <dirent.h>
#include <sys/resource.h>
#include <sys/stat.h>

#define MAX_MSGS 16
#define LOOP_BOUND 200000

/* ---- Helpers ---- */

struct rec_msg {
    uint32_t type;
    uint64_t arg;
    char *payload; /* a copy */
    size_t len;
    int fds[PGW_CHAN_FDS_MAX];
    size_t nfds;
};

/* One end of a test channel and what its callback saw. */
struct side {
    struct pgw_chan *ch;
    struct rec_msg msgs[MAX_MSGS];
    int nmsgs;      /* messages delivered (only the first MAX_MSGS are recorded) */
    int nclosed;    /* NULL callbacks */
    int msg_after_close;
    int free_on_close;
    /* send-from-callback test */
    int reply_in_cb;
    int in_msg_cb;
    int null_in_msg_cb;
    int reply_rc[2];
};

static void on_msg(struct pgw_chan *ch, const struct pgw_msg *m, void *arg)
{
    struct side *s = arg;
    CHECK(ch == s->ch);
    if (m == NULL) {
        if (s->in_msg_cb)
            s->null_in_msg_cb = 1;
        s->nclosed++;
        if (s->free_on_close) {
            pgw_chan_free(ch);
            s->ch = NULL;
        }
        return;
    }
    if (s->nclosed)
        s->msg_after_close = 1;
    if (s->nmsgs < MAX_MSGS) {
        struct rec_msg *r = &s->msgs[s->nmsgs];
        r->type = m->type;
        r->arg = m->arg;
        r->len = m->len;
        r->payload = malloc(m->len ? m->len : 1);
        if (m->len)
            memcpy(r->payload, m->payload, m->len);
        r->nfds = m->nfds;
        for (size_t i = 0; i < m->nfds; i++)
            r->fds[i] = m->fds[i];
    } else {
        close_fds(m->fds, m->nfds);
    }
    s->nmsgs++;
    if (s->reply_in_cb) {
        s->in_msg_cb = 1;
        s->reply_rc[0] = pgw_chan_send(ch, PGW_MSG_GEN_OK, 1, "x", 1, NULL, 0);
        s->reply_rc[1] = pgw_chan_send(ch, PGW_MSG_GEN_OK, 2, NULL, 0, NULL, 0);
        s->in_msg_cb = 0;
    }
}

/* Frees what the side recorded (closing received descriptors still held) and its channel. */
static void side_clear(struct side *s)
{
    for (int i = 0; i < s->nmsgs && i < MAX_MSGS; i++) {
        free(s->msgs[i].payload);
        close_fds(s->msgs[i].fds, s->msgs[i].nfds);
    }
    pgw_chan_free(s->ch);
    memset(s, 0, sizeof(*s));
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

#define FD_CHECK_BEGIN() int fd_count0_ = count_fds()
#define FD_CHECK_END() CHECK_INT(count_fds(), fd_count0_)

static void open_pair(struct event_base *base, struct side *a, struct side *b)
{
    int sv[2];
    pgw_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    if (a)
        a->ch = pgw_chan_new(base, sv[0], on_msg, a);
    if (b)
        b->ch = pgw_chan_new(base, sv[1], on_msg, b);
}

/* A channel on one end; the other end is returned raw, for hand-written bytes. */
static int open_raw(struct event_base *base, struct side *b)
{
    int sv[2];
    pgw_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    b->ch = pgw_chan_new(base, sv[1], on_msg, b);
    return sv[0];
}

/* Runs the loop without blocking until *counter reaches <want> (bounded). Returns whether it did. */
static int pump_until(struct event_base *base, const int *counter, int want)
{
    for (int i = 0; i < LOOP_BOUND; i++) {
        if (*counter >= want)
            return 1;
        event_base_loop(base, EVLOOP_NONBLOCK | EVLOOP_ONCE);
    }
    return *counter >= want;
}

static void pump_idle(struct event_base *base, int n)
{
    for (int i = 0; i < n; i++)
        event_base_loop(base, EVLOOP_NONBLOCK | EVLOOP_ONCE);
}

static int is_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFD);
    return fl != -1 && (fl & FD_CLOEXEC);
}

static ino_t fd_ino(int fd)
{
    struct stat st;
    if (fstat(fd, &st) == -1)
        return 0;
    return st.st_ino;
}

/* Writes one byte on <w> and reads it back from <r>. */
static int pipe_works(int w, int r, char c)
{
    char got = 0;
    if (write(w, &c, 1) != 1)
        return 0;
    int fl = fcntl(r, F_GETFL);
    fcntl(r, F_SETFL, fl | O_NONBLOCK);
    ssize_t n = read(r, &got, 1);
    fcntl(r, F_SETFL, fl);
    return n == 1 && got == c;
}

static void raw_header(unsigned char *h, uint32_t magic, uint32_t type, uint64_t arg, uint32_t len,
                       uint32_t nfds)
{
    put32((char *)h, magic);
    put32((char *)h + 4, type);
    put64((char *)h + 8, arg);
    put32((char *)h + 16, len);
    put32((char *)h + 20, nfds);
}

static int raw_send(int fd, const void *buf, size_t len, const int *fds, size_t nfds)
{
    struct iovec iov = {(void *)buf, len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    char cbuf[CMSG_SPACE(sizeof(int) * 4)];
    if (nfds > 0) {
        memset(cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    }
    return sendmsg(fd, &mh, MSG_NOSIGNAL) == (ssize_t)len;
}

/* A payload surely bigger than what the socket takes at once (the channel raises SO_SNDBUF up
 * to net.core.wmem_max): at least 6 MiB, three times the send buffer, within the bound. */
static size_t big_len(const struct pgw_chan *ch)
{
    int sndbuf = 0;
    socklen_t sl = sizeof(sndbuf);
    size_t n = 6u * 1024 * 1024;
    if (getsockopt(ch->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &sl) == 0 && (size_t)sndbuf * 3 > n)
        n = (size_t)sndbuf * 3;
    return n < PGW_CHAN_PAYLOAD_MAX ? n : PGW_CHAN_PAYLOAD_MAX;
}

static char *pattern(size_t len, unsigned seed)
{
    char *p = malloc(len);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (char)(x >> 16);
    }
    return p;
}

/* ---- Tests ---- */

static void test_small_messages_in_order(void)
{
    FD_CHECK_BEGIN();
    struct event_base *base = event_base_new();
    struct side a = {0}, b = {0};
    open_pair(base, &a, &b);

    static const char gen[] = "gw.yaml\0listen: 8080\n";
    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_GEN, 7, gen, sizeof(gen) - 1, NULL, 0), PGW_OK);
    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_STATUS, 0, NULL, 0, NULL, 0), PGW_OK);
    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_GEN_ERR, UINT64_MAX, "bad", 3, NULL, 0), PGW_OK);
    CHECK_INT(pgw_chan_send(a.ch, 0xdeadbeefu, 0x0102030405060708ull, "", 0, NULL, 0), PGW_OK);
    CHECK_INT(pgw_chan_queued(a.ch), 0); /* small frames leave at once */
    CHECK_INT(pgw_chan_send(b.ch, PGW_MSG_STATUS_REPLY, 42, "{}", 2, NULL, 0), PGW_OK);

    CHECK(pump_until(base, &b.nmsgs, 4));
    CHECK(pump_until(base, &a.nmsgs, 1));
    pump_idle(base, 10);
    CHECK_INT(b.nmsgs, 4);
    CHECK_INT(a.nmsgs, 1);
    CHECK_INT(a.nclosed + b.nclosed, 0);
    if (b.nmsgs == 4) {
        CHECK_INT(b.msgs[0].type, PGW_MSG_GEN);
        CHECK_INT(b.msgs[0].arg, 7);
        CHECK_MEM(b.msgs[0].payload, b.msgs[0].len, "gw.yaml\0listen: 8080\n");
        CHECK_INT(b.msgs[0].nfds, 0);
        CHECK_INT(b.msgs[1].type, PGW_MSG_STATUS);
        CHECK_INT(b.msgs[1].arg, 0);
        CHECK_INT(b.msgs[1].len, 0);
        CHECK_INT(b.msgs[2].type, PGW_MSG_GEN_ERR);
        CHECK(b.msgs[2].arg == UINT64_MAX);
        CHECK_MEM(b.msgs[2].payload, b.msgs[2].len, "bad");
        CHECK(b.msgs[3].type == 0xdeadbeefu);
        CHECK(b.msgs[3].arg == 0x0102030405060708ull);
        CHECK_INT(b.msgs[3].len, 0);
    }
    if (a.nmsgs == 1) {
        CHECK_INT(a.msgs[0].type, PGW_MSG_STATUS_REPLY);
        CHECK_INT(a.msgs[0].arg, 42);
        CHECK_MEM(a.msgs[0].payload, a.msgs[0].len, "{}");
    }
    side_clear(&a);
    side_clear(&b);
    event_base_free(base);
    FD_CHECK_END();
}

static void test_large_payload(void)
{
    FD_CHECK_BEGIN();
    struct event_base *base = event_base_new();
    struct side a = {0}, b = {0};
    open_pair(base, &a, &b);

    size_t big = big_len(a.ch);
    char *p = pattern(big, 1);
    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_GEN, 3, p, big, NULL, 0), PGW_OK);
    CHECK(pgw_chan_queued(a.ch) > 0);           /* more than the socket buffers take */
    CHECK(pgw_chan_queued(a.ch) <= big + HDR_LEN);
    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_STATUS, 4, "after", 5, NULL, 0), PGW_OK); /* queued */

    CHECK(pump_until(base, &b.nmsgs, 2));
    CHECK_INT(b.nmsgs, 2);
    CHECK_INT(pgw_chan_queued(a.ch), 0);
    CHECK_INT(a.nclosed + b.nclosed, 0);
    if (b.nmsgs == 2) {
        CHECK_INT(b.msgs[0].type, PGW_MSG_GEN);
        CHECK_INT(b.msgs[0].arg, 3);
        CHECK_INT(b.msgs[0].len, big);
        CHECK(b.msgs[0].len == big && memcmp(b.msgs[0].payload, p, big) == 0);
        CHECK_INT(b.msgs[1].arg, 4);
        CHECK_MEM(b.msgs[1].payload, b.msgs[1].len, "after");
    }
    free(p);
    side_clear(&a);
    side_clear(&b);
    event_base_free(base);
    FD_CHECK_END();
}

/* Exactly PGW_CHAN_PAYLOAD_MAX bytes is allowed on both ends. */
static void test_payload_at_bound(void)
{
    FD_CHECK_BEGIN();
    struct event_base *base = event_base_new();
    struct side a = {0}, b = {0};
    open_pair(base, &a, &b);

    size_t len = PGW_CHAN_PAYLOAD_MAX;
    char *p = pattern(len, 2);
    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_GEN, 9, p, len, NULL, 0), PGW_OK);
    CHECK(pump_until(base, &b.nmsgs, 1));
    CHECK_INT(b.nclosed, 0);
    CHECK_INT(pgw_chan_queued(a.ch), 0);
    if (b.nmsgs == 1)
        CHECK(b.msgs[0].len == len && memcmp(b.msgs[0].payload, p, len) == 0);
    free(p);
    side_clear(&a);
    side_clear(&b);
    event_base_free(base);
    FD_CHECK_END();
}

static void test_descriptors(void)
{
    FD_CHECK_BEGIN();
    struct event_base *base = event_base_new();
    struct side a = {0}, b = {0};
    open_pair(base, &a, &b);

    int p[3][2], rd[3];
    for (int i = 0; i < 3; i++) {
        pgw_assert(pipe(p[i]) == 0);
        rd[i] = p[i][0];
    }
    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_GEN, 1, "fds", 3, rd, 3), PGW_OK);
    CHECK(pump_until(base, &b.nmsgs, 1));
    CHECK_INT(b.nclosed, 0);
    if (b.nmsgs == 1) {
        CHECK_MEM(b.msgs[0].payload, b.msgs[0].len, "fds");
        CHECK_INT(b.msgs[0].nfds, 3);
        for (size_t i = 0; i < b.msgs[0].nfds && i < 3; i++) {
            int fd = b.msgs[0].fds[i];
            CHECK(fd >= 0);
            CHECK(is_cloexec(fd));
            CHECK(fd_ino(fd) == fd_ino(p[i][0])); /* the same pipe, in order */
            CHECK(pipe_works(p[i][1], fd, (char)('a' + i)));
        }
    }
    /* the sender's own descriptors are still open and working */
    for (int i = 0; i < 3; i++) {
        CHECK(fcntl(p[i][0], F_GETFD) != -1);
        CHECK(pipe_works(p[i][1], p[i][0], 'z'));
    }
    /* (the channel closed its duplicates once sent: the end-of-test fd count checks it) */
    for (int i = 0; i < 3; i++) {
        close(p[i][0]);
        close(p[i][1]);
    }
    side_clear(&a);
    side_clear(&b);
    event_base_free(base);
    FD_CHECK_END();
}

/* Frames with descriptors queued behind a frame still partially sent, some carrying descriptors
 * themselves; the caller closes its own copies right after each send. */
static void test_descriptors_queued_behind_partial(void)
{
    FD_CHECK_BEGIN();
    struct event_base *base = event_base_new();
    struct side a = {0}, b = {0};
    open_pair(base, &a, &b);

    int p[6][2];
    ino_t ino[6];
    for (int i = 0; i < 6; i++) {
        pgw_assert(pipe(p[i]) == 0);
        ino[i] = fd_ino(p[i][0]);
    }
    size_t big = big_len(a.ch);
    char *payload = pattern(big, 3);
    /* msg 0: big, 1 fd; msg 1: 2 fds; msg 2: none; msg 3: big, 2 fds; msg 4: 1 fd */
    static const size_t counts[5] = {1, 2, 0, 2, 1};
    const size_t lens[5] = {big, 2, 0, big, 1};
    int next = 0;
    for (int k = 0; k < 5; k++) {
        int fds[2];
        for (size_t j = 0; j < counts[k]; j++)
            fds[j] = p[next + (int)j][0];
        CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_GEN, (uint64_t)k, payload, lens[k], fds, counts[k]),
                  PGW_OK);
        if (k == 0)
            CHECK(pgw_chan_queued(a.ch) > 0); /* the rest are queued behind a partial frame */
        for (size_t j = 0; j < counts[k]; j++) {
            close(p[next][0]);
            p[next][0] = -1;
            next++;
        }
    }
    CHECK(pump_until(base, &b.nmsgs, 5));
    CHECK_INT(b.nmsgs, 5);
    CHECK_INT(b.nclosed, 0);
    CHECK_INT(pgw_chan_queued(a.ch), 0);
    next = 0;
    for (int k = 0; k < 5 && k < b.nmsgs; k++) {
        struct rec_msg *r = &b.msgs[k];
        CHECK_INT(r->arg, k);
        CHECK_INT(r->len, lens[k]);
        CHECK(r->len == lens[k] && memcmp(r->payload, payload, lens[k]) == 0);
        CHECK_INT(r->nfds, counts[k]);
        for (size_t j = 0; j < r->nfds && j < counts[k]; j++, next++) {
            CHECK(fd_ino(r->fds[j]) == ino[next]);
            CHECK(is_cloexec(r->fds[j]));
            CHECK(pipe_works(p[next][1], r->fds[j], 'q'));
        }
    }
    free(payload);
    for (int i = 0; i < 6; i++)
        close(p[i][1]);
    side_clear(&a);
    side_clear(&b);
    event_base_free(base);
    FD_CHECK_END();
}

/* PGW_CHAN_FDS_MAX descriptors in one frame (when the limit allows that many open). */
static void test_descriptors_at_bound(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == -1 || rl.rlim_cur < 4 * PGW_CHAN_FDS_MAX)
        return;
    FD_CHECK_BEGIN();
    struct event_base *base = event_base_new();
    struct side a = {0}, b = {0};
    open_pair(base, &a, &b);
    int p[2];
    pgw_assert(pipe(p) == 0);
    int fds[PGW_CHAN_FDS_MAX];
    for (int i = 0; i < PGW_CHAN_FDS_MAX; i++)
        fds[i] = p[0];
    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_GEN, 1, NULL, 0, fds, PGW_CHAN_FDS_MAX), PGW_OK);
    CHECK(pump_until(base, &b.nmsgs, 1));
    CHECK_INT(b.nclosed, 0);
    if (b.nmsgs == 1) {
        CHECK_INT(b.msgs[0].nfds, PGW_CHAN_FDS_MAX);
        CHECK(pipe_works(p[1], b.msgs[0].fds[PGW_CHAN_FDS_MAX - 1], 'm'));
    }
    close(p[0]);
    close(p[1]);
    side_clear(&a);
    side_clear(&b);
    event_base_free(base);
    FD_CHECK_END();
}

/* The peer sends two messages and closes: both arrive, then one NULL, and freeing the channel in
 * that callback is safe. */
static void test_peer_close_free_in_callback(void)
{
    FD_CHECK_BEGIN();
    struct event_base *base = event_base_new();
    struct side a = {0}, b = {0};
    open_pair(base, &a, &b);
    b.free_on_close = 1;

    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_GEN_OK, 1, "one", 3, NULL, 0), PGW_OK);
    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_GEN_OK, 2, "two", 3, NULL, 0), PGW_OK);
    side_clear(&a);
    CHECK(pump_until(base, &b.nclosed, 1));
    pump_idle(base, 20);
    CHECK_INT(b.nclosed, 1);
    CHECK(b.ch == NULL);
    CHECK_INT(b.nmsgs, 2);
    CHECK(!b.msg_after_close);
    if (b.nmsgs == 2) {
        CHECK_MEM(b.msgs[0].payload, b.msgs[0].len, "one");
        CHECK_MEM(b.msgs[1].payload, b.msgs[1].len, "two");
    }
    side_clear(&b);
    event_base_free(base);
    FD_CHECK_END();
}

/* The peer closes while a large frame (with descriptors) is still queued: the write side breaks,
 * one NULL, queued duplicates are closed, the channel can be freed in the callback. */
static void test_peer_close_while_sending(void)
{
    FD_CHECK_BEGIN();
    struct event_base *base = event_base_new();
    struct side a = {0}, b = {0};
    open_pair(base, &a, &b);
    a.free_on_close = 1;

    int p[2];
    pgw_assert(pipe(p) == 0);
    size_t big = big_len(a.ch);
    char *payload = pattern(big, 4);
    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_GEN, 1, payload, big, NULL, 0), PGW_OK);
    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_GEN, 2, payload, 10, p, 2), PGW_OK); /* still queued */
    CHECK(pgw_chan_queued(a.ch) > 0);
    side_clear(&b);
    CHECK(pump_until(base, &a.nclosed, 1));
    pump_idle(base, 20);
    CHECK_INT(a.nclosed, 1);
    CHECK(a.ch == NULL);
    CHECK_INT(a.nmsgs, 0);
    free(payload);
    close(p[0]);
    close(p[1]);
    side_clear(&a);
    event_base_free(base);
    FD_CHECK_END();
}

/* The channel is not freed in the NULL callback: it stays quiet, and sending fails. */
static void test_send_on_broken_channel(void)
{
    FD_CHECK_BEGIN();
    struct event_base *base = event_base_new();
    struct side a = {0}, b = {0};
    open_pair(base, &a, &b);
    side_clear(&a);
    CHECK(pump_until(base, &b.nclosed, 1));
    CHECK_INT(pgw_chan_send(b.ch, PGW_MSG_GEN_OK, 1, "x", 1, NULL, 0), PGW_ERR);
    int p[2];
    pgw_assert(pipe(p) == 0);
    CHECK_INT(pgw_chan_send(b.ch, PGW_MSG_GEN_OK, 1, "x", 1, p, 1), PGW_ERR);
    pump_idle(base, 20);
    CHECK_INT(b.nclosed, 1);
    CHECK_INT(b.nmsgs, 0);
    side_clear(&b);

    /* broken by a protocol error while the peer is still there: sending fails all the same */
    int raw = open_raw(base, &b);
    CHECK(raw_send(raw, "garbage garbage garbage garbage", 31, NULL, 0));
    CHECK(pump_until(base, &b.nclosed, 1));
    CHECK_INT(pgw_chan_send(b.ch, PGW_MSG_GEN_OK, 1, "x", 1, NULL, 0), PGW_ERR);
    CHECK_INT(pgw_chan_send(b.ch, PGW_MSG_GEN_OK, 1, "x", 1, p, 1), PGW_ERR);
    pump_idle(base, 20);
    CHECK_INT(b.nclosed, 1);
    char c;
    CHECK(recv(raw, &c, 1, MSG_DONTWAIT) == -1 && errno == EAGAIN); /* nothing was sent */
    close(raw);
    close(p[0]);
    close(p[1]);
    side_clear(&b);
    event_base_free(base);
    FD_CHECK_END();
}

static void test_send_over_bounds(void)
{
    FD_CHECK_BEGIN();
    struct event_base *base = event_base_new();
    struct side a = {0}, b = {0};
    open_pair(base, &a, &b);
    int p[2];
    pgw_assert(pipe(p) == 0);
    int fds[PGW_CHAN_FDS_MAX + 1];
    for (int i = 0; i < PGW_CHAN_FDS_MAX + 1; i++)
        fds[i] = p[0];
    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_GEN, 1, "x", 1, fds, PGW_CHAN_FDS_MAX + 1), PGW_ERR);
    char *huge = calloc(1, (size_t)PGW_CHAN_PAYLOAD_MAX + 1);
    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_GEN, 1, huge, (size_t)PGW_CHAN_PAYLOAD_MAX + 1, NULL, 0),
              PGW_ERR);
    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_GEN, 1, huge, SIZE_MAX, NULL, 0), PGW_ERR);
    free(huge);
    CHECK_INT(pgw_chan_queued(a.ch), 0);
    /* nothing was queued and the channel still works */
    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_GEN, 5, "ok", 2, NULL, 0), PGW_OK);
    CHECK(pump_until(base, &b.nmsgs, 1));
    pump_idle(base, 10);
    CHECK_INT(b.nmsgs, 1);
    CHECK_INT(a.nclosed + b.nclosed, 0);
    if (b.nmsgs == 1)
        CHECK_INT(b.msgs[0].arg, 5);
    close(p[0]);
    close(p[1]);
    side_clear(&a);
    side_clear(&b);
    event_base_free(base);
    FD_CHECK_END();
}

/* Writes <bytes> raw into a channel's peer (optionally closing it after): expects one NULL and no
 * message. */
static void expect_protocol_error(const void *bytes, size_t len, int close_after)
{
    struct event_base *base = event_base_new();
    struct side b = {0};
    int raw = open_raw(base, &b);
    b.free_on_close = 1;
    CHECK(raw_send(raw, bytes, len, NULL, 0));
    if (close_after) {
        close(raw);
        raw = -1;
    }
    CHECK(pump_until(base, &b.nclosed, 1));
    pump_idle(base, 10);
    CHECK_INT(b.nclosed, 1);
    CHECK_INT(b.nmsgs, 0);
    if (raw != -1)
        close(raw);
    side_clear(&b);
    event_base_free(base);
}

static void test_malformed_frames(void)
{
    FD_CHECK_BEGIN();
    unsigned char h[HDR_LEN + 3];

    /* baseline: a hand-built frame in the documented layout is accepted */
    {
        struct event_base *base = event_base_new();
        struct side b = {0};
        int raw = open_raw(base, &b);
        raw_header(h, CHAN_MAGIC, PGW_MSG_STATUS, 77, 3, 0);
        memcpy(h + HDR_LEN, "abc", 3);
        CHECK(raw_send(raw, h, HDR_LEN + 3, NULL, 0));
        CHECK(pump_until(base, &b.nmsgs, 1));
        CHECK_INT(b.nclosed, 0);
        if (b.nmsgs == 1) {
            CHECK_INT(b.msgs[0].type, PGW_MSG_STATUS);
            CHECK_INT(b.msgs[0].arg, 77);
            CHECK_MEM(b.msgs[0].payload, b.msgs[0].len, "abc");
        }
        close(raw);
        side_clear(&b);
        event_base_free(base);
    }

    static const char garbage[] = "GET / HTTP/1.1\r\nHost: example\r\n\r\n";
    expect_protocol_error(garbage, sizeof(garbage) - 1, 0);

    raw_header(h, CHAN_MAGIC ^ 1, PGW_MSG_GEN, 1, 0, 0); /* bad magic */
    expect_protocol_error(h, HDR_LEN, 0);

    raw_header(h, CHAN_MAGIC, PGW_MSG_GEN, 1, PGW_CHAN_PAYLOAD_MAX + 1, 0); /* over the bound */
    expect_protocol_error(h, HDR_LEN, 0);

    raw_header(h, CHAN_MAGIC, PGW_MSG_GEN, 1, UINT32_MAX, 0);
    expect_protocol_error(h, HDR_LEN, 0);

    raw_header(h, CHAN_MAGIC, PGW_MSG_GEN, 1, 0, PGW_CHAN_FDS_MAX + 1); /* too many fds */
    expect_protocol_error(h, HDR_LEN, 0);

    raw_header(h, CHAN_MAGIC, PGW_MSG_GEN, 1, 100, 0); /* truncated frame, then EOF */
    expect_protocol_error(h, HDR_LEN + 3, 1);

    expect_protocol_error("pgw", 3, 1); /* a partial header, then EOF */
    FD_CHECK_END();
}

/* A frame announcing more descriptors than came with it; the one that did come is closed. */
static void test_more_fds_announced_than_sent(void)
{
    FD_CHECK_BEGIN();
    int p[2];
    pgw_assert(pipe(p) == 0);
    unsigned char h[HDR_LEN];
    for (int sent = 0; sent <= 1; sent++) {
        struct event_base *base = event_base_new();
        struct side b = {0};
        int raw = open_raw(base, &b);
        raw_header(h, CHAN_MAGIC, PGW_MSG_GEN, 1, 0, 2);
        CHECK(raw_send(raw, h, HDR_LEN, p, (size_t)sent));
        CHECK(pump_until(base, &b.nclosed, 1));
        pump_idle(base, 10);
        CHECK_INT(b.nclosed, 1);
        CHECK_INT(b.nmsgs, 0);
        close(raw);
        side_clear(&b);
        event_base_free(base);
    }
    close(p[0]);
    close(p[1]);
    FD_CHECK_END();
}

/* The message callback replies after the peer closed: pgw_chan_send fails without calling back,
 * the NULL arrives later, once. */
static void test_send_failure_inside_callback(void)
{
    FD_CHECK_BEGIN();
    struct event_base *base = event_base_new();
    struct side a = {0}, b = {0};
    open_pair(base, &a, &b);
    b.reply_in_cb = 1;
    b.free_on_close = 1;

    CHECK_INT(pgw_chan_send(a.ch, PGW_MSG_STATUS, 1, "q", 1, NULL, 0), PGW_OK);
    side_clear(&a); /* the message is in b's socket; the peer is gone */
    CHECK(pump_until(base, &b.nclosed, 1));
    pump_idle(base, 20);
    CHECK_INT(b.nmsgs, 1);
    CHECK_INT(b.nclosed, 1);
    CHECK(!b.null_in_msg_cb);
    CHECK_INT(b.reply_rc[0], PGW_ERR);
    CHECK_INT(b.reply_rc[1], PGW_ERR);
    CHECK(b.ch == NULL);
    side_clear(&b);
    event_base_free(base);
    FD_CHECK_END();
}

/* The same, with the peer still there but its receive side shut: the reply fails the same way. */
static void test_send_failure_outside_callback(void)
{
    FD_CHECK_BEGIN();
    struct event_base *base = event_base_new();
    struct side b = {0};
    int raw = open_raw(base, &b);
    b.free_on_close = 1;
    shutdown(raw, SHUT_RD);
    CHECK_INT(pgw_chan_send(b.ch, PGW_MSG_GEN_OK, 1, "x", 1, NULL, 0), PGW_ERR);
    CHECK_INT(b.nclosed, 0); /* not from inside pgw_chan_send */
    CHECK(pump_until(base, &b.nclosed, 1));
    pump_idle(base, 10);
    CHECK_INT(b.nclosed, 1);
    close(raw);
    side_clear(&b);
    event_base_free(base);
    FD_CHECK_END();
}

int main(void)
{
    RUN(test_small_messages_in_order);
    RUN(test_large_payload);
    RUN(test_payload_at_bound);
    RUN(test_descriptors);
    RUN(test_descriptors_queued_behind_partial);
    RUN(test_descriptors_at_bound);
    RUN(test_peer_close_free_in_callback);
    RUN(test_peer_close_while_sending);
    RUN(test_send_on_broken_channel);
    RUN(test_send_over_bounds);
    RUN(test_malformed_frames);
    RUN(test_more_fds_announced_than_sent);
    RUN(test_send_failure_inside_callback);
    RUN(test_send_failure_outside_callback);
    return TEST_REPORT("control");
}
