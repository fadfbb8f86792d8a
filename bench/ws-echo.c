/* bench/ws-echo.c: the upstream of bench/ws-bench.sh, a single-threaded epoll WebSocket echo
 * server (RFC 6455), fast enough that the proxy in front of it is what is measured.
 *
 *   ws-echo [ADDR:]PORT        e.g. ws-echo 127.0.0.1:18280 (default address 127.0.0.1)
 *
 * Accepts the opening handshake on any path (GET with Upgrade: websocket, Connection: upgrade,
 * a Sec-WebSocket-Key and Sec-WebSocket-Version: 13; else 400 and close), answers 101 with the
 * Sec-WebSocket-Accept (OpenSSL SHA-1) and no extension nor subprotocol. Then every data frame
 * (text, binary, continuation) is echoed back as one frame with the same FIN bit and opcode,
 * unmasked: a message fragmented by a proxy comes back with the same fragments. Pings get a pong
 * with the same payload, pongs are ignored, a close is answered with a close carrying the same
 * code (or none) and the TCP connection is then closed by us (RFC 6455 §7.1.1: the server closes
 * first). An unmasked client frame, RSV bits, a reserved opcode, a bad control frame or a frame
 * over 64 MiB get close 1002/1009 and the connection is closed. No UTF-8 validation: the proxy in
 * front is the one under test; this only has to be correct for correct input and cheap.
 *
 * Memory per idle connection is one small struct: reads go to a shared 256 KiB buffer, and only
 * a partial frame left at the end of a read (or output the socket did not take) is copied to a
 * per-connection heap buffer, freed once consumed. The soft RLIMIT_NOFILE is raised to the hard
 * limit at start (10,000+ connections). SIGTERM/SIGINT stop it; it prints counts on stderr then.
 *
 * Build: gcc -O2 -Wall -Wextra -o ws-echo bench/ws-echo.c -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ws-common.h"

#define SCRATCH (256 * 1024)
#define HEAD_MAX 8192
#define FRAME_MAX (64u << 20)
#define OUT_HIGH (4u << 20) /* stop reading a connection whose unsent output exceeds this */

enum { ST_HANDSHAKE, ST_OPEN, ST_CLOSING };

struct conn {
    int fd;
    int state;
    int reading; /* EPOLLIN is in the interest set */
    int writing; /* EPOLLOUT is in the interest set */
    char *in;    /* unconsumed input (partial head or frame) */
    size_t inlen, incap;
    char *out; /* unsent output */
    size_t outoff, outlen, outcap;
};

static int ep;
static char scratch[SCRATCH];
static char *obuf; /* output being built for one connection in one pass */
static size_t olen, ocap;
static volatile sig_atomic_t stop;
static unsigned long long n_conns, n_open, n_frames, n_bad;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q) {
        perror("ws-echo: realloc");
        exit(1);
    }
    return q;
}

static void oput(const void *p, size_t n)
{
    if (olen + n > ocap) {
        while (olen + n > ocap) ocap = ocap ? ocap * 2 : 65536;
        obuf = xrealloc(obuf, ocap);
    }
    memcpy(obuf + olen, p, n);
    olen += n;
}

static void frame_header(int fin_op, uint64_t len)
{
    unsigned char h[10];
    size_t n;
    h[0] = (unsigned char)fin_op;
    if (len < 126) {
        h[1] = (unsigned char)len;
        n = 2;
    } else if (len < 65536) {
        h[1] = 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
        n = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++) h[2 + i] = (unsigned char)(len >> (56 - 8 * i));
        n = 10;
    }
    oput(h, n);
}

static void set_events(struct conn *c, int reading, int writing)
{
    if (c->reading == reading && c->writing == writing) return;
    struct epoll_event ev = {.events = (reading ? EPOLLIN : 0) | (writing ? EPOLLOUT : 0),
                             .data.ptr = c};
    c->reading = reading;
    c->writing = writing;
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) perror("ws-echo: epoll_ctl");
}

static void conn_free(struct conn *c)
{
    close(c->fd); /* also removes it from the epoll set */
    free(c->in);
    free(c->out);
    free(c);
    n_open--;
}

/* Sends what is pending (c->out first, then obuf). Returns -1 if the connection died. */
static int flush(struct conn *c)
{
    if (c->outlen > c->outoff) { /* older output first; the new one queues behind it */
        if (olen) {
            size_t pend = c->outlen - c->outoff;
            if (c->outoff) memmove(c->out, c->out + c->outoff, pend);
            c->outoff = 0;
            c->outlen = pend;
            if (pend + olen > c->outcap) {
                c->outcap = pend + olen;
                c->out = xrealloc(c->out, c->outcap);
            }
            memcpy(c->out + pend, obuf, olen);
            c->outlen += olen;
            olen = 0;
        }
        while (c->outoff < c->outlen) {
            ssize_t w = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                if (errno == EINTR) continue;
                return -1;
            }
            c->outoff += (size_t)w;
        }
    } else if (olen) {
        size_t off = 0;
        while (off < olen) {
            ssize_t w = send(c->fd, obuf + off, olen - off, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                if (errno == EINTR) continue;
                olen = 0;
                return -1;
            }
            off += (size_t)w;
        }
        if (off < olen) {
            size_t rest = olen - off;
            if (rest > c->outcap) {
                c->outcap = rest;
                c->out = xrealloc(c->out, c->outcap);
            }
            memcpy(c->out, obuf + off, rest);
            c->outoff = 0;
            c->outlen = rest;
        }
        olen = 0;
    }
    if (c->outoff == c->outlen && c->out) { /* all sent: give the memory back */
        free(c->out);
        c->out = NULL;
        c->outoff = c->outlen = c->outcap = 0;
    }
    return 0;
}

static int has_token(const char *list, const char *tok)
{
    size_t tl = strlen(tok);
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        const char *s = p;
        while (*p && *p != ',') p++;
        const char *e = p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
        if ((size_t)(e - s) == tl && strncasecmp(s, tok, tl) == 0) return 1;
    }
    return 0;
}

/* Handles a complete request head (NUL-terminated at its blank line). 0: upgraded; -1: refused. */
static int handshake(struct conn *c, char *head)
{
    char up[256], cn[256], key[128], ver[16];
    if (strncmp(head, "GET ", 4) != 0 || !header(head, "Upgrade", up, sizeof up) ||
        !has_token(up, "websocket") || !header(head, "Connection", cn, sizeof cn) ||
        !has_token(cn, "upgrade") || !header(head, "Sec-WebSocket-Key", key, sizeof key) ||
        !header(head, "Sec-WebSocket-Version", ver, sizeof ver) || strcmp(ver, "13") != 0) {
        static const char bad[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                  "Connection: close\r\n\r\n";
        oput(bad, sizeof bad - 1);
        n_bad++;
        return -1;
    }
    char cat[128 + 40];
    unsigned char sha[SHA_DIGEST_LENGTH];
    char acc[32];
    int n = snprintf(cat, sizeof cat, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    SHA1((const unsigned char *)cat, (size_t)n, sha);
    b64(sha, sizeof sha, acc);
    char resp[256];
    n = snprintf(resp, sizeof resp,
                 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                 acc);
    oput(resp, (size_t)n);
    c->state = ST_OPEN;
    return 0;
}

static void close_frame(uint16_t code)
{
    unsigned char p[2] = {(unsigned char)(code >> 8), (unsigned char)code};
    frame_header(0x88, 2);
    oput(p, 2);
}

/* Consumes complete frames from <buf,len>; returns the bytes consumed, output in obuf. Sets
 * c->state to ST_CLOSING after answering (or sending) a close. */
static size_t frames(struct conn *c, unsigned char *buf, size_t len)
{
    size_t pos = 0;
    while (c->state == ST_OPEN && len - pos >= 2) {
        unsigned char *f = buf + pos;
        int fin_op = f[0], op = f[0] & 0x0f, masked = f[1] & 0x80;
        uint64_t plen = f[1] & 0x7f;
        size_t hl = 2;
        if (plen == 126) {
            if (len - pos < 4) break;
            plen = (uint64_t)f[2] << 8 | f[3];
            hl = 4;
        } else if (plen == 127) {
            if (len - pos < 10) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = plen << 8 | f[2 + i];
            hl = 10;
        }
        if (!masked || (fin_op & 0x70) || (op > 2 && op < 8) || op > 10 ||
            (op >= 8 && (plen > 125 || !(fin_op & 0x80)))) {
            close_frame(1002);
            c->state = ST_CLOSING;
            break;
        }
        if (plen > FRAME_MAX) {
            close_frame(1009);
            c->state = ST_CLOSING;
            break;
        }
        if (len - pos < hl + 4 + plen) break; /* incomplete frame */
        unsigned char *mk = f + hl, *p = f + hl + 4;
        size_t n = (size_t)plen, i = 0;
        uint32_t m32;
        memcpy(&m32, mk, 4);
        for (; i + 4 <= n; i += 4) { /* mask is 4-byte periodic from the payload start */
            uint32_t w;
            memcpy(&w, p + i, 4);
            w ^= m32;
            memcpy(p + i, &w, 4);
        }
        for (; i < n; i++) p[i] ^= mk[i & 3];
        pos += hl + 4 + n;
        n_frames++;
        switch (op) {
        case 0: case 1: case 2:
            frame_header(fin_op, n);
            oput(p, n);
            break;
        case 9: /* ping -> pong */
            frame_header(0x8a, n);
            oput(p, n);
            break;
        case 10:
            break;
        case 8: /* close: answer with the same code, then we close the TCP connection */
            frame_header(0x88, n >= 2 ? 2 : 0);
            if (n >= 2) oput(p, 2);
            c->state = ST_CLOSING;
            break;
        }
    }
    return pos;
}

/* input handling for one connection; returns -1 if it must be freed */
static int on_read(struct conn *c)
{
    for (int rounds = 0; rounds < 4; rounds++) {
        unsigned char *buf;
        size_t have, room;
        if (c->inlen) { /* a partial head or frame is waiting: read behind it */
            if (c->incap - c->inlen < 65536) {
                c->incap = c->inlen + 65536 > c->incap * 2 ? c->inlen + 65536 : c->incap * 2;
                c->in = xrealloc(c->in, c->incap);
            }
            buf = (unsigned char *)c->in;
            have = c->inlen;
            room = c->incap - c->inlen - 1;
        } else {
            buf = (unsigned char *)scratch;
            have = 0;
            room = SCRATCH - 1;
        }
        ssize_t r = recv(c->fd, buf + have, room, 0);
        if (r == 0) return -1;
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            if (errno == EINTR) continue;
            return -1;
        }
        size_t len = have + (size_t)r, used = 0;
        if (c->state == ST_HANDSHAKE) {
            buf[len] = 0;
            char *end = strstr((char *)buf, "\r\n\r\n");
            if (!end) {
                if (len > HEAD_MAX) return -1;
            } else {
                end[2] = 0;
                used = (size_t)(end + 4 - (char *)buf);
                if (handshake(c, (char *)buf) < 0) {
                    c->state = ST_CLOSING;
                    used = len;
                }
            }
        }
        if (c->state == ST_OPEN) used += frames(c, buf + used, len - used);
        if (c->state == ST_CLOSING) used = len; /* anything after the close is ignored */
        size_t rest = len - used;
        if (buf == (unsigned char *)c->in) {
            if (rest && used) memmove(c->in, c->in + used, rest);
            c->inlen = rest;
            if (!rest) {
                free(c->in);
                c->in = NULL;
                c->incap = 0;
            }
        } else if (rest) {
            c->incap = rest + 65536;
            c->in = xrealloc(NULL, c->incap);
            memcpy(c->in, buf + used, rest);
            c->inlen = rest;
        }
        if (flush(c) < 0) return -1;
        if (c->state == ST_CLOSING) {
            if (c->outoff == c->outlen) return -1; /* close sent: we close first */
            set_events(c, 0, 1);
            return 0;
        }
        if (c->outlen - c->outoff > OUT_HIGH) { /* the peer does not read: stop reading it */
            set_events(c, 0, 1);
            return 0;
        }
        set_events(c, 1, c->outlen > c->outoff);
        if ((size_t)r < room) return 0; /* the socket is drained */
    }
    return 0;
}

static int on_write(struct conn *c)
{
    if (flush(c) < 0) return -1;
    if (c->outoff < c->outlen) return 0;
    if (c->state == ST_CLOSING) return -1;
    set_events(c, 1, 0);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: ws-echo [ADDR:]PORT\n");
        return 2;
    }
    char addr[64] = "127.0.0.1";
    const char *port = argv[1], *colon = strrchr(argv[1], ':');
    if (colon) {
        snprintf(addr, sizeof addr, "%.*s", (int)(colon - argv[1]), argv[1]);
        port = colon + 1;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port))};
    if (inet_pton(AF_INET, addr, &sin.sin_addr) != 1) {
        fprintf(stderr, "ws-echo: bad address %s\n", addr);
        return 2;
    }
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(ls, 4096) < 0) {
        fprintf(stderr, "ws-echo: cannot listen on %s:%s: %s\n", addr, port, strerror(errno));
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev);
    fprintf(stderr, "ws-echo: listening on %s:%s (fd limit %llu)\n", addr, port,
            (unsigned long long)rl.rlim_cur);

    struct epoll_event evs[256];
    int accept_paused = 0;
    while (!stop) {
        int n = epoll_wait(ep, evs, 256, accept_paused ? 100 : -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("ws-echo: epoll_wait");
            return 1;
        }
        if (accept_paused) { /* out of descriptors earlier: try again */
            accept_paused = 0;
            epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev);
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) {
                        if (errno == EMFILE || errno == ENFILE) {
                            fprintf(stderr, "ws-echo: accept: %s (%llu open)\n", strerror(errno),
                                    n_open);
                            epoll_ctl(ep, EPOLL_CTL_DEL, ls, NULL);
                            accept_paused = 1;
                        }
                        break;
                    }
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    nc->reading = 1;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                    n_conns++;
                    n_open++;
                }
                continue;
            }
            int dead = 0;
            if (evs[i].events & (EPOLLERR | EPOLLHUP) && !(evs[i].events & EPOLLIN)) dead = 1;
            if (!dead && (evs[i].events & EPOLLOUT)) dead = on_write(c) < 0;
            if (!dead && (evs[i].events & EPOLLIN) && c->reading) dead = on_read(c) < 0;
            if (dead) conn_free(c);
        }
    }
    fprintf(stderr, "ws-echo: stopped: %llu connections (%llu open, %llu refused), %llu frames\n",
            n_conns, n_open, n_bad, n_frames);
    return 0;
}
