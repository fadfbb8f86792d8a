/* bench/tls-transport.c: the server side of TLS keep-alive exchanges, our transport (gateway/io.c
 * + gateway/tls.c) against libevent's OpenSSL bufferevents, with the same SSL_CTX.
 *
 *   tls-transport [-s] ours|bufferevent BODY [N [K [WARM]]]
 *
 * The parent is the server: one thread, one event_base, K accepted loopback connections, a TLS
 * context built by tls.c from a configuration (certificate made here in memory: EC P-256,
 * self-signed). A forked child is the client, plain non-blocking OpenSSL with poll(), the same
 * for both implementations: it sends a REQ_LEN-byte request, reads the whole response
 * (HEAD_LEN + BODY bytes), sends the next one, over K connections, WARM + N requests in all.
 * The server queues each response as two evbuffer additions (head, body), as a proxy does.
 *
 * Measured in the server, from the arrival of request WARM to that of request WARM + N (N
 * exchanges): CPU (getrusage, user + system), page faults and wall time; with -s instead, where the kernel
 * allows perf_event_open on syscall tracepoints, the syscalls of the server thread by type (the
 * tracepoints cost about 1 µs per syscall here, so -s runs are not for CPU figures). The client
 * counts the TLS records of each measured response (and the size of the first): read_ahead off
 * and a 64 KiB buffer, so one SSL_read_ex returns the data of one record at most.
 *
 * Output: one line "RESULT key=value ...", parsed by bench/tls-transport.sh.
 */
#include "../gateway/io.h"
#include "../gateway/log.h"
#include "../gateway/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/bufferevent_struct.h> /* ev_read, for the workaround in b_on_event */
#include <event2/event.h>
#include <linux/perf_event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REQ_LEN 120
#define HEAD_LEN 200
#define CLIENT_BUF 65536

static long body_len, n_measured = 20000, n_conns = 1, n_warm = 1000;
static char *head, *body;

static void die(const char *what)
{
    fprintf(stderr, "tls-transport: %s", what);
    unsigned long e;
    while ((e = ERR_get_error()) != 0)
        fprintf(stderr, ": %s", ERR_reason_error_string(e));
    if (errno)
        fprintf(stderr, " (%s)", strerror(errno));
    fputc('\n', stderr);
    exit(1);
}

/* ---- The server's context, built by tls.c from a configuration ---- */

static struct pgw_tls_gen *make_tls(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (k == NULL || x == NULL)
        die("key");
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -86400);
    X509_gmtime_adj(X509_getm_notAfter(x), 30 * 86400);
    X509_set_pubkey(x, k);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"bench.local", -1,
                               -1, 0);
    X509_set_issuer_name(x, n);
    if (X509_sign(x, k, EVP_sha256()) <= 0)
        die("sign");

    /* tls.c reads certificate files once (pgw_tls_prepare, as the master does): written to a
     * private temporary directory, removed as soon as they are read */
    char dir[] = "/tmp/tls-transport.XXXXXX", cert[64], key[64];
    if (mkdtemp(dir) == NULL)
        die("mkdtemp");
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    FILE *f = fopen(cert, "w");
    if (f == NULL || PEM_write_X509(f, x) != 1 || fclose(f) != 0)
        die("cert.pem");
    f = fopen(key, "w");
    if (f == NULL || PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) != 1 || fclose(f) != 0)
        die("key.pem");
    X509_free(x);
    EVP_PKEY_free(k);

    char yaml[1024], err[2048];
    snprintf(yaml, sizeof(yaml),
             "listeners:\n"
             "  - name: bench\n"
             "    address: \"127.0.0.1:1\"\n"
             "    tls: { certificates: [{ cert: \"%s\", key: \"%s\" }], session_tickets: false }\n",
             cert, key);
    struct pgw_config *c = pgw_config_load_string("bench.yaml", yaml, strlen(yaml), err,
                                                  sizeof(err));
    if (c == NULL) {
        fprintf(stderr, "tls-transport: config: %s\n", err);
        exit(1);
    }
    char *blob = NULL;
    size_t blen = 0;
    int r = pgw_tls_prepare(c, 0, &blob, &blen, err, sizeof(err));
    unlink(cert);
    unlink(key);
    rmdir(dir);
    struct pgw_tls_gen *tg = r == PGW_OK ? pgw_tls_gen_new(c, blob, blen, err, sizeof(err)) : NULL;
    if (blob != NULL) {
        pgw_tls_cleanse(blob, blen);
        free(blob);
    }
    pgw_config_unref(c);
    if (tg == NULL) {
        fprintf(stderr, "tls-transport: tls: %s\n", err);
        exit(1);
    }
    return tg;
}

/* ---- Syscall counts of the server thread (perf_event_open on tracepoints) ---- */

static const char *const sc_names[] = {"read", "write", "readv", "writev", "epoll_wait",
                                       "epoll_pwait", "epoll_ctl", "ioctl"};
#define SC_N (sizeof(sc_names) / sizeof(sc_names[0]))
static int sc_fd[1 + SC_N]; /* [0]: raw_syscalls:sys_enter (all), the group leader; -1: none */
static int sc_ok;

static long tracepoint_id(const char *event)
{
    char path[160];
    snprintf(path, sizeof(path), "/sys/kernel/tracing/events/%s/id", event);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(path, sizeof(path), "/sys/kernel/debug/tracing/events/%s/id", event);
        f = fopen(path, "r");
    }
    long id = -1;
    if (f != NULL) {
        if (fscanf(f, "%ld", &id) != 1)
            id = -1;
        fclose(f);
    }
    return id;
}

static int tracepoint_open(long id, int group)
{
    struct perf_event_attr a;
    memset(&a, 0, sizeof(a));
    a.type = PERF_TYPE_TRACEPOINT;
    a.size = sizeof(a);
    a.config = (unsigned long long)id;
    a.disabled = group < 0;
    a.read_format = PERF_FORMAT_GROUP;
    return (int)syscall(SYS_perf_event_open, &a, 0, -1, group, 0);
}

static void sc_setup(void)
{
    for (size_t i = 0; i <= SC_N; i++)
        sc_fd[i] = -1;
    long id = tracepoint_id("raw_syscalls/sys_enter");
    if (id < 0 || (sc_fd[0] = tracepoint_open(id, -1)) < 0)
        return;
    for (size_t i = 0; i < SC_N; i++) {
        char ev[64];
        snprintf(ev, sizeof(ev), "syscalls/sys_enter_%s", sc_names[i]);
        if ((id = tracepoint_id(ev)) >= 0)
            sc_fd[1 + i] = tracepoint_open(id, sc_fd[0]); /* -1 if absent: counted as other */
    }
    sc_ok = 1;
}

/* Counts in the order of sc_names after the total; absent events give 0. */
static void sc_read(unsigned long long out[1 + SC_N])
{
    unsigned long long buf[2 + SC_N];
    memset(out, 0, sizeof(unsigned long long) * (1 + SC_N));
    if (!sc_ok || read(sc_fd[0], buf, sizeof(buf)) < (ssize_t)sizeof(unsigned long long)) {
        sc_ok = 0;
        return;
    }
    out[0] = buf[1];
    size_t k = 2;
    for (size_t i = 0; i < SC_N && k <= buf[0]; i++)
        if (sc_fd[1 + i] >= 0)
            out[1 + i] = buf[k++];
}

/* ---- The measurement window ---- */

static long requests; /* complete requests the server has seen */
static struct rusage ru0, ru1;
static struct timespec t0, t1;
static unsigned long long sc0[1 + SC_N], sc1[1 + SC_N];

static void on_request(void)
{
    requests++;
    if (requests == n_warm) {
        if (sc_ok)
            ioctl(sc_fd[0], PERF_EVENT_IOC_ENABLE, PERF_IOC_FLAG_GROUP);
        sc_read(sc0);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        getrusage(RUSAGE_SELF, &ru0);
    } else if (requests == n_warm + n_measured) {
        getrusage(RUSAGE_SELF, &ru1);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        sc_read(sc1);
        if (sc_ok)
            ioctl(sc_fd[0], PERF_EVENT_IOC_DISABLE, PERF_IOC_FLAG_GROUP);
    }
}

/* ---- Server: connections ---- */

static struct event_base *base;
static SSL_CTX *server_ctx;
static long accepted, closed;

static void conn_gone(void)
{
    closed++;
    if (accepted == n_conns && closed == n_conns)
        event_base_loopbreak(base);
}

/* ours: pgw_io with the TLS transport */
struct oconn {
    struct pgw_io io;
    int handshaking;
};

static void o_close(struct oconn *c)
{
    pgw_io_clear(&c->io);
    free(c);
    conn_gone();
}

/* Returns -1 when the connection was closed. */
static int o_handshake(struct oconn *c)
{
    int r = pgw_tls_handshake(&c->io);
    if (r == PGW_AGAIN)
        return 0;
    if (r == PGW_ERR) {
        fprintf(stderr, "tls-transport: handshake: %s\n", pgw_tls_error());
        o_close(c);
        return -1;
    }
    c->handshaking = 0;
    pgw_io_want_read(&c->io, 1); /* as server.c does after a handshake: */
    pgw_io_kick(&c->io);         /* a request that came with the handshake is read at once */
    return 0;
}

static void o_on_read(evutil_socket_t fd, short what, void *arg)
{
    struct oconn *c = arg;
    (void)fd;
    (void)what;
    if (c->handshaking) {
        o_handshake(c);
        return;
    }
    ssize_t n = pgw_io_read(&c->io, 16384);
    if (n == PGW_AGAIN)
        return;
    if (n <= 0) { /* EOF or error */
        o_close(c);
        return;
    }
    while (evbuffer_get_length(c->io.in) >= REQ_LEN) {
        evbuffer_drain(c->io.in, REQ_LEN);
        on_request();
        evbuffer_add(c->io.out, head, HEAD_LEN);
        evbuffer_add(c->io.out, body, (size_t)body_len);
        if (pgw_io_flush(&c->io, 30000) == PGW_ERR) {
            o_close(c);
            return;
        }
    }
}

static void o_on_write(evutil_socket_t fd, short what, void *arg)
{
    struct oconn *c = arg;
    (void)fd;
    (void)what;
    if (c->handshaking) {
        o_handshake(c);
        return;
    }
    if (pgw_io_flush(&c->io, 30000) == PGW_ERR)
        o_close(c);
}

static void o_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct oconn *c = arg;
    (void)fd;
    (void)what;
    if (pgw_io_timer_fired(&c->io) != 0) {
        fprintf(stderr, "tls-transport: send timeout\n");
        o_close(c);
    }
}

static void o_new(evutil_socket_t fd)
{
    struct oconn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        die("calloc");
    pgw_io_init(&c->io, base, fd, o_on_read, o_on_write, o_on_timer, c);
    pgw_tls_attach_server(&c->io, server_ctx);
    c->handshaking = 1;
    o_handshake(c);
}

/* bufferevent: libevent's OpenSSL bufferevent on the same SSL_CTX */
static void b_on_read(struct bufferevent *bev, void *arg)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    (void)arg;
    while (evbuffer_get_length(in) >= REQ_LEN) {
        evbuffer_drain(in, REQ_LEN);
        on_request();
        bufferevent_write(bev, head, HEAD_LEN);
        bufferevent_write(bev, body, (size_t)body_len);
    }
}

static void b_on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)arg;
    /* libevent 2.1's OpenSSL bufferevent looks only at SSL_pending() (decrypted bytes), not at
     * SSL_has_pending() (records OpenSSL read ahead but has not decrypted yet). With read_ahead
     * on, the client's first request often arrives in the same socket read as its Finished
     * message: the handshake swallows it, epoll never reports the socket again, and the
     * connection stalls (seen here with K >= 2). Run the bufferevent's read event once by hand,
     * as a proxy built on it would have to. */
    if ((what & BEV_EVENT_CONNECTED) && SSL_has_pending(bufferevent_openssl_get_ssl(bev)))
        event_active(&bev->ev_read, EV_READ, 1);
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if ((what & BEV_EVENT_ERROR) && requests < n_warm + n_measured)
            fprintf(stderr, "tls-transport: bufferevent error 0x%x: %s\n", what,
                    ERR_reason_error_string(bufferevent_get_openssl_error(bev)));
        bufferevent_free(bev);
        conn_gone();
    }
}

static void b_new(evutil_socket_t fd)
{
    SSL *ssl = SSL_new(server_ctx);
    if (ssl == NULL)
        die("SSL_new");
    struct bufferevent *bev = bufferevent_openssl_socket_new(base, fd, ssl,
                                                             BUFFEREVENT_SSL_ACCEPTING,
                                                             BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL)
        die("bufferevent_openssl_socket_new");
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    bufferevent_setcb(bev, b_on_read, NULL, b_on_event, NULL);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static int use_bev;

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    (void)what;
    (void)arg;
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* as worker.c does */
        accepted++;
        if (use_bev)
            b_new(fd);
        else
            o_new(fd);
    }
}

/* ---- Client (the child process) ---- */

struct cconn {
    int fd;
    SSL *ssl;
    enum { C_HANDSHAKE, C_SEND, C_RECV, C_DONE } state;
    short want;       /* POLLIN or POLLOUT */
    long idx;         /* 1-based number of the request in flight */
    size_t got;       /* response bytes so far */
    long records;     /* SSL_read_ex calls that returned data for this response */
    size_t first;     /* bytes of its first record */
};

struct client_result {
    long responses, records, bytes_bad;
    double first_bytes; /* sum over measured responses of the first record's size */
    int ok;
};

static long issued;
static struct client_result cres;

/* After a failed SSL call: 0 to wait (c->want set), -1 on an error. */
static int c_blocked(struct cconn *c, int r)
{
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        c->want = POLLIN;
        return 0;
    case SSL_ERROR_WANT_WRITE:
        c->want = POLLOUT;
        return 0;
    default:
        return -1;
    }
}

static void c_next(struct cconn *c, long total)
{
    if (issued < total) {
        c->idx = ++issued;
        c->state = C_SEND;
    } else {
        SSL_shutdown(c->ssl); /* close_notify, not waiting for the server's */
        close(c->fd);
        c->state = C_DONE;
    }
}

/* Advances <c> as far as it goes without blocking: 0, or -1 on an error. */
static int c_drive(struct cconn *c, const char *req, char *buf, size_t resp_len, long total)
{
    for (;;) {
        int r;
        size_t n;
        switch (c->state) {
        case C_HANDSHAKE:
            if ((r = SSL_do_handshake(c->ssl)) != 1)
                return c_blocked(c, r);
            c_next(c, total);
            break;
        case C_SEND:
            if ((r = SSL_write_ex(c->ssl, req, REQ_LEN, &n)) != 1)
                return c_blocked(c, r);
            c->state = C_RECV;
            c->got = 0;
            c->records = 0;
            break;
        case C_RECV:
            if ((r = SSL_read_ex(c->ssl, buf, CLIENT_BUF, &n)) != 1)
                return c_blocked(c, r);
            if (c->records++ == 0)
                c->first = n;
            c->got += n;
            if (c->got > resp_len) {
                cres.bytes_bad++;
                return -1;
            }
            if (c->got == resp_len) {
                if (c->idx > n_warm) {
                    cres.responses++;
                    cres.records += c->records;
                    cres.first_bytes += (double)c->first;
                }
                c_next(c, total);
            }
            break;
        case C_DONE:
            return 0;
        }
    }
}

static int run_client(int port)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return -1;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_read_ahead(ctx, 0); /* one record per SSL_read_ex: records are counted */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    struct cconn *cs = calloc((size_t)n_conns, sizeof(*cs));
    struct pollfd *pfd = calloc((size_t)n_conns, sizeof(*pfd));
    char *buf = malloc(CLIENT_BUF), req[REQ_LEN];
    if (cs == NULL || pfd == NULL || buf == NULL)
        return -1;
    /* a request line and headers, padded to REQ_LEN; the server only counts bytes */
    memset(req, 'x', sizeof(req));
    static const char line[] = "GET /bench HTTP/1.1\r\nHost: bench.local\r\nX-Pad: ";
    memcpy(req, line, sizeof(line) - 1);
    memcpy(req + REQ_LEN - 4, "\r\n\r\n", 4);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (long i = 0; i < n_conns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
            return -1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        int fl = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        cs[i].fd = fd;
        cs[i].ssl = SSL_new(ctx);
        SSL_set_fd(cs[i].ssl, fd);
        SSL_set_tlsext_host_name(cs[i].ssl, "bench.local");
        SSL_set_connect_state(cs[i].ssl);
        cs[i].state = C_HANDSHAKE;
    }
    long total = n_warm + n_measured;
    size_t resp_len = HEAD_LEN + (size_t)body_len;
    for (long i = 0; i < n_conns; i++)
        if (c_drive(&cs[i], req, buf, resp_len, total) < 0)
            return -1;
    for (;;) {
        nfds_t np = 0;
        for (long i = 0; i < n_conns; i++)
            if (cs[i].state != C_DONE) {
                pfd[np].fd = cs[i].fd;
                pfd[np].events = cs[i].want;
                pfd[np].revents = 0;
                np++;
            }
        if (np == 0)
            break;
        int r = poll(pfd, np, 20000);
        if (r <= 0) {
            fprintf(stderr, "tls-transport: client: %s\n", r == 0 ? "stalled 20 s" : "poll");
            for (long i = 0; i < n_conns; i++)
                if (cs[i].state != C_DONE)
                    fprintf(stderr, "  connection %ld: state %d, request %ld, %zu of %zu bytes, "
                                    "waiting for %s\n",
                            i, (int)cs[i].state, cs[i].idx, cs[i].got, resp_len,
                            cs[i].want == POLLIN ? "input" : "output");
            return -1;
        }
        np = 0;
        for (long i = 0; i < n_conns; i++) {
            if (cs[i].state == C_DONE)
                continue;
            if (pfd[np++].revents != 0 && c_drive(&cs[i], req, buf, resp_len, total) < 0)
                return -1;
        }
    }
    for (long i = 0; i < n_conns; i++)
        SSL_free(cs[i].ssl);
    SSL_CTX_free(ctx);
    free(cs);
    free(pfd);
    free(buf);
    return 0;
}

/* ---- Main ---- */

static long arg_long(const char *s, long min)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < min) {
        fprintf(stderr, "tls-transport: bad number \"%s\"\n", s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    int count_syscalls = 0;
    if (argc > 1 && strcmp(argv[1], "-s") == 0) {
        count_syscalls = 1;
        argv++;
        argc--;
    }
    if (argc < 3 || argc > 6 || (strcmp(argv[1], "ours") != 0 && strcmp(argv[1], "bufferevent"))) {
        fprintf(stderr, "usage: tls-transport [-s] ours|bufferevent BODY [N [K [WARM]]]\n"
                        "  BODY bytes after a %d-byte head, N measured exchanges (20000) after\n"
                        "  WARM (1000), over K connections (1); -s: count the server's syscalls\n"
                        "  (their tracepoints cost CPU: use separate runs for CPU figures)\n",
                HEAD_LEN);
        return 2;
    }
    use_bev = strcmp(argv[1], "bufferevent") == 0;
    body_len = arg_long(argv[2], 0);
    if (argc > 3)
        n_measured = arg_long(argv[3], 1);
    if (argc > 4)
        n_conns = arg_long(argv[4], 1);
    if (argc > 5)
        n_warm = arg_long(argv[5], 1);
    signal(SIGPIPE, SIG_IGN);

    head = malloc(HEAD_LEN);
    body = malloc((size_t)body_len + 1);
    if (head == NULL || body == NULL)
        die("malloc");
    memset(head, 'h', HEAD_LEN);
    memset(body, 'b', (size_t)body_len + 1);

    struct pgw_tls_gen *tg = make_tls();
    server_ctx = pgw_tls_listener_ctx(tg, 0);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t slen = sizeof(sa);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 128) != 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &slen) != 0)
        die("listen");
    int pp[2];
    if (pipe(pp) != 0)
        die("pipe");
    fflush(NULL);
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        close(lfd);
        close(pp[0]);
        pgw_tls_gen_free(tg); /* the server's, inherited: unused here */
        cres.ok = run_client(ntohs(sa.sin_port)) == 0;
        if (!cres.ok)
            ERR_print_errors_fp(stderr);
        free(head);
        free(body);
        if (write(pp[1], &cres, sizeof(cres)) != (ssize_t)sizeof(cres))
            cres.ok = 0;
        exit(cres.ok ? 0 : 1); /* exit, not _exit: a sanitizer build checks the child for leaks */
    }
    close(pp[1]);

    if (count_syscalls)
        sc_setup();
    base = event_base_new();
    struct event *lev = event_new(base, lfd, EV_READ | EV_PERSIST, on_accept, NULL);
    if (base == NULL || lev == NULL || event_add(lev, NULL) != 0)
        die("event_base");
    event_base_dispatch(base);

    struct client_result cr = {0};
    ssize_t got = read(pp[0], &cr, sizeof(cr));
    int status = 0;
    waitpid(child, &status, 0);
    close(pp[0]);
    event_free(lev);
    event_base_free(base);
    close(lfd);
    pgw_tls_gen_free(tg);
    free(head);
    free(body);
    for (size_t i = 0; count_syscalls && i <= SC_N; i++)
        if (sc_fd[i] >= 0)
            close(sc_fd[i]);
    if (got != (ssize_t)sizeof(cr) || !cr.ok || status != 0 ||
        requests != n_warm + n_measured) {
        fprintf(stderr, "tls-transport: run failed (client ok %d, requests %ld of %ld)\n", cr.ok,
                requests, n_warm + n_measured);
        return 1;
    }

    double us = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) * 1e6 +
                (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec);
    double sy = (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) * 1e6 +
                (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec);
    double wall = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    double nx = (double)n_measured;
    printf("RESULT impl=%s body=%ld conns=%ld n=%ld cpu_us=%.2f usr_us=%.2f sys_us=%.2f "
           "minflt=%.3f xps=%.0f records=%.3f first_record=%.0f",
           use_bev ? "bufferevent" : "ours", body_len, n_conns, n_measured, (us + sy) / nx,
           us / nx, sy / nx, (double)(ru1.ru_minflt - ru0.ru_minflt) / nx, nx / wall,
           cr.responses ? (double)cr.records / (double)cr.responses : 0.0,
           cr.responses ? cr.first_bytes / (double)cr.responses : 0.0);
    if (sc_ok) {
        unsigned long long known = 0;
        printf(" syscalls=%.3f", (double)(sc1[0] - sc0[0]) / nx);
        for (size_t i = 0; i < SC_N; i++) {
            unsigned long long d = sc1[1 + i] - sc0[1 + i];
            known += d;
            if (d > 0)
                printf(" sc_%s=%.3f", sc_names[i], (double)d / nx);
        }
        printf(" sc_other=%.3f", (double)(sc1[0] - sc0[0] - known) / nx);
    } else {
        printf(" syscalls=%s", count_syscalls ? "n/a" : "-");
    }
    printf("\n");
    return 0;
}
