/* bench/ws-bench.c: WebSocket load client for bench/ws-bench.sh (single thread, epoll).
 *
 *   ws-bench [options] [ws://]HOST:PORT[/PATH]
 *
 * Modes:
 *   load (default)  opens -c connections (a real RFC 6455 handshake each: the 101, Upgrade,
 *                   Connection and Sec-WebSocket-Accept are checked), then keeps -w messages of
 *                   -s bytes in flight on each (closed loop: each echo received sends the next
 *                   message), -W seconds of warm-up then -d seconds measured; then closes every
 *                   connection with a close handshake.
 *   -n COUNT        check mode: each connection sends COUNT messages (-w in flight), waits for
 *                   their echoes and closes; no time limit but -T.
 *   --idle N        opens N WebSockets (at most -p handshakes in progress at once), prints
 *                   "ESTABLISHED n=... failed=..." on stdout when every attempt is done, holds them
 *                   idle (answering pings) until SIGUSR1, SIGINT or SIGTERM, or -d seconds
 *                   (default 300), then closes them all with a close handshake.
 *
 * Messages are single masked frames, text (default, printable ASCII) or binary (-b); each echo
 * must come back with the same opcode and the same payload (fragments accepted: a proxy may
 * re-fragment), checked byte for byte. With -j FIELD=VALUE the payload is a JSON object naming
 * VALUE in FIELD (dotted: nested objects) and padded to exactly -s bytes with a filler string,
 * e.g. -j action=echo -s 64: {"action":"echo","d":"<38 printable ASCII characters>"}
 * (-j a.b=x: {"a":{"b":"x"},"d":"..."}), for a gateway that selects a chain per message by a
 * JSON field (bench/ws-bench.sh's gw-select case); -s below the object's fixed part is an error. Masks: 16 pre-masked copies of the frame, each with its own
 * random key, used in turn (so sending costs no masking work in the client).
 *
 * Output: one line on stdout,
 *   RESULT mode=load conns=50 inflight=2 size=64 opcode=text payload=ascii|json warmup_s=2 duration_s=8.000
 *          messages=N msgs_per_s=X p50_us= p90_us= p99_us= p999_us= max_us= errors=E
 *          handshake_errors=H err_proto= err_payload= err_closed= closed_clean= closed_unclean=
 *          client_cpu_s= [ticks_NAME=...] sys_busy_ticks= sys_steal_ticks= clk_tck=
 * where messages are round trips (a message sent and its echo received) completed during the
 * measured window, latency is from queueing a message to receiving the end of its echo (µs), and
 * errors = err_proto + err_payload + err_closed (after the handshake). CPU figures cover the
 * measured window only (load: after the warm-up; it starts and ends with the samples): client_cpu_s
 * is this process's, ticks_NAME the processes given with --ticks NAME=PID,PID,... (utime + stime +
 * cutime + cstime from /proc/PID/stat, at most 4 groups), sys_* the whole machine's (/proc/stat:
 * busy = user + nice + system + irq + softirq). Diagnostics on stderr.
 * Exit status: 0; 3 if a handshake failed (load/check: the first failure stops the run, with the
 * reason on stderr); 1 if errors occurred; 2 for usage errors.
 *
 * Build: gcc -O2 -Wall -Wextra -o ws-bench bench/ws-bench.c -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
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
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "ws-common.h"

#define SCRATCH (256 * 1024)
#define NVAR 16         /* pre-masked copies of the message frame */
#define HIST_MAX 200000 /* latency histogram: 1 µs buckets up to 200 ms, then one overflow */
#define HS_MAX 8192

enum { ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_CLOSING, ST_DONE };
enum { M_LOAD, M_CHECK, M_IDLE };

struct conn {
    int fd, id, state;
    int writing;
    char accept[32]; /* expected Sec-WebSocket-Accept */
    char *hs;        /* handshake response so far */
    size_t hslen;
    /* frame parser */
    unsigned char hdr[10];
    unsigned hdrlen;
    int in_payload;
    uint64_t remain;
    int op, fin;
    int in_msg, msg_op;
    uint64_t msg_len;
    int msg_bad;
    unsigned char ctl[125];
    unsigned ctllen;
    /* sending */
    uint64_t queued;  /* message frames queued and not completely sent */
    size_t off;       /* bytes of the first queued frame already sent */
    unsigned vnext;   /* variant of the first queued frame */
    char *extra;      /* control frames to send at the next frame boundary */
    size_t extralen;
    /* in flight */
    uint64_t *ts; /* ring of -w send times (ns) */
    unsigned tshead, tscount;
    uint64_t sent, received; /* messages */
};

static int ep;
static unsigned char scratch[SCRATCH];
static unsigned char *frames[NVAR];
static size_t flen;
static unsigned char *payload;
static size_t S = 64;
static int W = 1, C = 50, binary, mode = M_LOAD;
static const char *json_spec; /* -j FIELD=VALUE: JSON payload */
static double duration = -1, warmup = 2, timeout_s = 30;
static long count, idle_n;
static int max_pending = 256;
static struct sockaddr_storage addr;
static socklen_t addrlen;
static char hostport[300], path[1024] = "/";
static volatile sig_atomic_t got_signal;

static uint64_t hist[HIST_MAX + 1], hist_n, hist_max;
static int measuring, running, closing_all;
static uint64_t n_msgs;
static long err_proto, err_payload, err_closed, hs_errors, closed_clean, closed_unclean;
static long n_open, n_established, n_failed, n_done;
static uint64_t rng;

/* --ticks NAME=PID[,PID...]: CPU ticks (utime+stime+cutime+cstime from /proc/PID/stat, summed)
 * of other processes over the measured window, read at its exact start and end */
#define NTICK 4
static struct {
    char name[32];
    int pids[64];
    int npids;
    long long t0, t1;
} tick[NTICK];
static int ntick;
static long long sys0[2], sys1[2]; /* machine-wide busy and steal ticks from /proc/stat */
static double cpu0, cpu1;          /* this process's CPU seconds */

static long long pid_ticks(int pid)
{
    char fn[64], buf[2048];
    snprintf(fn, sizeof fn, "/proc/%d/stat", pid);
    FILE *f = fopen(fn, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    /* after ") ": state(3) ... utime(14) stime(15) cutime(16) cstime(17) */
    long long v[17] = {0};
    int field = 3;
    p += 2;
    while (*p && field <= 17) {
        if (field >= 14) v[field - 1] = strtoll(p, NULL, 10);
        while (*p && *p != ' ') p++;
        while (*p == ' ') p++;
        field++;
    }
    return v[13] + v[14] + v[15] + v[16];
}

static void sys_ticks(long long out[2])
{
    FILE *f = fopen("/proc/stat", "r");
    long long u = 0, ni = 0, sy = 0, id = 0, io = 0, irq = 0, sirq = 0, st = 0;
    if (f) {
        if (fscanf(f, "cpu %lld %lld %lld %lld %lld %lld %lld %lld", &u, &ni, &sy, &id, &io, &irq,
                   &sirq, &st) != 8)
            u = ni = sy = irq = sirq = st = 0;
        fclose(f);
    }
    out[0] = u + ni + sy + irq + sirq;
    out[1] = st;
}

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void sample(int end)
{
    for (int i = 0; i < ntick; i++) {
        long long s = 0;
        for (int j = 0; j < tick[i].npids; j++) s += pid_ticks(tick[i].pids[j]);
        if (end)
            tick[i].t1 = s;
        else
            tick[i].t0 = s;
    }
    sys_ticks(end ? sys1 : sys0);
    if (end)
        cpu1 = self_cpu();
    else
        cpu0 = self_cpu();
}

static void on_signal(int sig) { (void)sig; got_signal = 1; }

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        perror("ws-bench: malloc");
        exit(1);
    }
    return p;
}

/* a masked frame (fin_op, payload p of n bytes) into out; returns its length */
static size_t build_frame(unsigned char *out, int fin_op, const unsigned char *p, size_t n)
{
    size_t h = 0;
    out[h++] = (unsigned char)fin_op;
    if (n < 126) {
        out[h++] = (unsigned char)(0x80 | n);
    } else if (n < 65536) {
        out[h++] = 0x80 | 126;
        out[h++] = (unsigned char)(n >> 8);
        out[h++] = (unsigned char)n;
    } else {
        out[h++] = 0x80 | 127;
        for (int i = 0; i < 8; i++) out[h++] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    }
    uint32_t k = (uint32_t)rnd();
    unsigned char *mk = out + h;
    memcpy(mk, &k, 4);
    h += 4;
    for (size_t i = 0; i < n; i++) out[h + i] = p[i] ^ mk[i & 3];
    return h + n;
}

/* -j FIELD=VALUE: p (n bytes) = {"F1":{"F2":..."VALUE"...},"d":"<filler>"}, exactly n bytes;
 * FIELD is dotted (F1.F2...). Names and value are written as they are (no escapes: refused if
 * they hold a quote, a backslash, a control character or an empty name). The filler is printable
 * ASCII without quote or backslash. Exits (2) if n is below the object's fixed part. */
static void json_payload(unsigned char *p, size_t n, const char *spec)
{
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || strlen(spec) > 200) {
        fprintf(stderr, "ws-bench: -j %s: expected FIELD=VALUE (200 bytes at most)\n", spec);
        exit(2);
    }
    for (const char *q = spec; *q; q++) {
        if (*q == '"' || *q == '\\' || (unsigned char)*q < 0x20 ||
            (q < eq && *q == '.' && (q == spec || q[-1] == '.' || q + 1 == eq))) {
            fprintf(stderr, "ws-bench: -j %s: no quote, backslash, control character or empty "
                            "name allowed\n", spec);
            exit(2);
        }
    }
    char head[1024]; /* at most 2 + 4 * 200 + 1 + 99 + 6 bytes */
    size_t h = 0, depth = 1;
    head[h++] = '{';
    head[h++] = '"';
    for (const char *q = spec; q < eq; q++) {
        if (*q == '.') {
            memcpy(head + h, "\":{\"", 4);
            h += 4;
            depth++;
        } else {
            head[h++] = *q;
        }
    }
    h += (size_t)snprintf(head + h, sizeof head - h, "\":\"%s\"", eq + 1);
    for (size_t i = 1; i < depth; i++) head[h++] = '}';
    memcpy(head + h, ",\"d\":\"", 6);
    h += 6;
    if (n < h + 2) {
        fprintf(stderr, "ws-bench: -j %s: -s %zu is below the JSON message's fixed part (%zu bytes)\n",
                spec, n, h + 2);
        exit(2);
    }
    memcpy(p, head, h);
    for (size_t i = h; i < n - 2; i++) {
        unsigned char ch;
        do ch = (unsigned char)('!' + (rnd() % 94));
        while (ch == '"' || ch == '\\');
        p[i] = ch;
    }
    p[n - 2] = '"';
    p[n - 1] = '}';
}

static void set_writing(struct conn *c, int w)
{
    if (c->writing == w) return;
    struct epoll_event ev = {.events = EPOLLIN | (w ? EPOLLOUT : 0), .data.ptr = c};
    c->writing = w;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_end(struct conn *c, int clean)
{
    if (c->state == ST_DONE) return;
    if (c->state >= ST_OPEN) {
        n_open--;
        if (clean)
            closed_clean++;
        else
            closed_unclean++;
    }
    c->state = ST_DONE;
    close(c->fd);
    c->fd = -1;
    free(c->hs);
    c->hs = NULL;
    free(c->extra);
    c->extra = NULL;
    c->extralen = 0;
    n_done++;
}

/* Sends what is queued: control frames at a frame boundary, then message frames. */
static void pump(struct conn *c)
{
    for (;;) {
        if (c->extralen && c->off == 0) {
            ssize_t w = send(c->fd, c->extra, c->extralen, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                if (errno == EINTR) continue;
                if (c->state != ST_CLOSING && !closing_all) err_closed++;
                conn_end(c, 0);
                return;
            }
            memmove(c->extra, c->extra + w, c->extralen - (size_t)w);
            c->extralen -= (size_t)w;
            if (c->extralen) break;
            continue;
        }
        if (!c->queued) break;
        struct iovec iov[16];
        int n = 0;
        for (uint64_t i = 0; i < c->queued && n < 16; i++, n++) {
            unsigned char *f = frames[(c->vnext + i) % NVAR];
            iov[n].iov_base = f + (i ? 0 : c->off);
            iov[n].iov_len = flen - (i ? 0 : c->off);
        }
        ssize_t w = writev(c->fd, iov, n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            if (c->state != ST_CLOSING && !closing_all) err_closed++;
            conn_end(c, 0);
            return;
        }
        c->off += (size_t)w;
        while (c->queued && c->off >= flen) {
            c->off -= flen;
            c->queued--;
            c->vnext = (c->vnext + 1) % NVAR;
        }
    }
    set_writing(c, c->queued || c->extralen);
}

static void queue_extra(struct conn *c, int fin_op, const unsigned char *p, size_t n)
{
    c->extra = realloc(c->extra, c->extralen + 14 + n);
    if (!c->extra) {
        perror("ws-bench: realloc");
        exit(1);
    }
    c->extralen += build_frame((unsigned char *)c->extra + c->extralen, fin_op, p, n);
}

static void queue_message(struct conn *c)
{
    c->ts[(c->tshead + c->tscount) % (unsigned)W] = now_ns();
    c->tscount++;
    c->queued++;
    c->sent++;
}

/* queues a close frame: message frames not yet started are dropped (nothing may follow a close),
 * one partly sent is finished first */
static void queue_close(struct conn *c, unsigned code)
{
    unsigned char p[2] = {(unsigned char)(code >> 8), (unsigned char)code};
    if (c->queued) c->queued = c->off ? 1 : 0;
    queue_extra(c, 0x88, p, 2);
}

static void start_close(struct conn *c)
{
    if (c->state != ST_OPEN) return;
    queue_close(c, 1000);
    c->state = ST_CLOSING;
    pump(c);
}

static void start_sending(struct conn *c)
{
    long n = W;
    if (mode == M_CHECK && n > count) n = count;
    for (long i = 0; i < n; i++) queue_message(c);
    pump(c);
}

static void fail_conn(struct conn *c, long *counter, const char *what)
{
    (*counter)++;
    if (*counter <= 5) fprintf(stderr, "ws-bench: connection %d: %s\n", c->id, what);
    if (c->state == ST_OPEN) { /* tell the server why, then drop */
        queue_close(c, 1002);
        c->state = ST_CLOSING;
        pump(c);
    }
    if (c->state != ST_DONE) conn_end(c, 0);
}

static void message_done(struct conn *c)
{
    uint64_t t = now_ns();
    if (c->msg_bad || c->msg_len != S || c->msg_op != (binary ? 2 : 1)) {
        char why[160];
        snprintf(why, sizeof why, "echo mismatch: %s, %llu bytes, opcode %d (expected %zu, %d)",
                 c->msg_bad ? "payload differs" : "length or opcode",
                 (unsigned long long)c->msg_len, c->msg_op, S, binary ? 2 : 1);
        fail_conn(c, &err_payload, why);
        return;
    }
    if (!c->tscount) {
        fail_conn(c, &err_proto, "an echo for a message never sent");
        return;
    }
    uint64_t sent = c->ts[c->tshead];
    c->tshead = (c->tshead + 1) % (unsigned)W;
    c->tscount--;
    c->received++;
    if (c->state != ST_OPEN) return; /* closing: echoes still in flight are ignored */
    if (measuring) {
        uint64_t us = (t - sent) / 1000;
        hist[us < HIST_MAX ? us : HIST_MAX]++;
        if (us > hist_max) hist_max = us;
        hist_n++;
        n_msgs++;
    }
    if (mode == M_CHECK) {
        if (c->sent < (uint64_t)count) {
            queue_message(c);
            pump(c);
        } else if (c->received == (uint64_t)count) {
            start_close(c);
        }
    } else if (running) {
        queue_message(c);
        pump(c);
    }
}

/* a complete frame (header parsed, payload consumed) */
static void frame_done(struct conn *c)
{
    int op = c->op;
    if (op <= 2) {
        if (c->fin) {
            c->in_msg = 0;
            message_done(c);
        }
        return;
    }
    if (op == 9) { /* ping */
        if (c->state == ST_OPEN) {
            queue_extra(c, 0x8a, c->ctl, c->ctllen);
            pump(c);
        }
    } else if (op == 8) {
        if (c->state == ST_CLOSING) { /* the answer to our close: done */
            conn_end(c, 1);
        } else { /* the server closes: answer, then it closes the TCP connection */
            if (mode != M_IDLE || !closing_all) {
                char why[64];
                snprintf(why, sizeof why, "the server sent close %d",
                         c->ctllen >= 2 ? c->ctl[0] << 8 | c->ctl[1] : 1005);
                err_closed++;
                if (err_closed <= 5) fprintf(stderr, "ws-bench: connection %d: %s\n", c->id, why);
            }
            if (c->queued) c->queued = c->off ? 1 : 0;
            queue_extra(c, 0x88, c->ctl, c->ctllen >= 2 ? 2 : 0);
            c->state = ST_CLOSING;
            pump(c);
            if (c->state != ST_DONE) conn_end(c, 0);
        }
    }
}

/* feeds received bytes to the frame parser */
static void frames_in(struct conn *c, const unsigned char *p, size_t len)
{
    size_t pos = 0;
    while (pos < len && c->state != ST_DONE) {
        if (!c->in_payload) {
            c->hdr[c->hdrlen++] = p[pos++];
            if (c->hdrlen < 2) continue;
            unsigned l7 = c->hdr[1] & 0x7f, need = l7 == 126 ? 4 : l7 == 127 ? 10 : 2;
            if (c->hdrlen < need) continue;
            int op = c->hdr[0] & 0x0f;
            if (c->hdr[1] & 0x80 || c->hdr[0] & 0x70 || (op > 2 && op < 8) || op > 10) {
                fail_conn(c, &err_proto, "bad frame header from the server (masked, RSV or opcode)");
                return;
            }
            uint64_t n = l7;
            if (l7 == 126) n = (uint64_t)c->hdr[2] << 8 | c->hdr[3];
            if (l7 == 127) {
                n = 0;
                for (int i = 0; i < 8; i++) n = n << 8 | c->hdr[2 + i];
            }
            c->op = op;
            c->fin = c->hdr[0] >> 7;
            c->hdrlen = 0;
            if (op >= 8) {
                if (n > 125 || !c->fin) {
                    fail_conn(c, &err_proto, "bad control frame from the server");
                    return;
                }
                c->ctllen = 0;
            } else if (op == 0) {
                if (!c->in_msg) {
                    fail_conn(c, &err_proto, "continuation frame without a message");
                    return;
                }
            } else {
                if (c->in_msg) {
                    fail_conn(c, &err_proto, "new message inside a fragmented one");
                    return;
                }
                c->in_msg = 1;
                c->msg_op = op;
                c->msg_len = 0;
                c->msg_bad = 0;
            }
            c->remain = n;
            c->in_payload = 1;
            if (n == 0) {
                c->in_payload = 0;
                frame_done(c);
            }
            continue;
        }
        size_t n = len - pos;
        if (n > c->remain) n = (size_t)c->remain;
        if (c->op >= 8) {
            memcpy(c->ctl + c->ctllen, p + pos, n);
            c->ctllen += (unsigned)n;
        } else {
            if (!c->msg_bad &&
                (c->msg_len + n > S || memcmp(p + pos, payload + c->msg_len, n) != 0))
                c->msg_bad = 1;
            c->msg_len += n;
        }
        pos += n;
        c->remain -= n;
        if (!c->remain) {
            c->in_payload = 0;
            frame_done(c);
        }
    }
}

static void hs_fail(struct conn *c, const char *why)
{
    hs_errors++;
    n_failed++;
    if (hs_errors <= 5 || mode != M_IDLE)
        fprintf(stderr, "ws-bench: handshake failed on connection %d to %s%s: %s\n", c->id,
                hostport, path, why);
    conn_end(c, 0);
}

static void handshake_in(struct conn *c, const unsigned char *p, size_t len)
{
    if (c->hslen + len > HS_MAX) {
        hs_fail(c, "response head over 8 KiB");
        return;
    }
    c->hs = realloc(c->hs, c->hslen + len + 1);
    if (!c->hs) {
        perror("ws-bench: realloc");
        exit(1);
    }
    memcpy(c->hs + c->hslen, p, len);
    c->hslen += len;
    c->hs[c->hslen] = 0;
    char *end = strstr(c->hs, "\r\n\r\n");
    if (!end) return;
    end[2] = 0;
    size_t used = (size_t)(end + 4 - c->hs);
    char status[200], v[256];
    const char *eol = strstr(c->hs, "\r\n");
    snprintf(status, sizeof status, "%.*s", (int)(eol - c->hs), c->hs);
    if (strncmp(c->hs, "HTTP/1.1 101", 12) != 0) {
        char why[300];
        snprintf(why, sizeof why, "got \"%s\" instead of 101", status);
        hs_fail(c, why);
        return;
    }
    if (!header(c->hs, "Upgrade", v, sizeof v) || strcasecmp(v, "websocket") != 0) {
        hs_fail(c, "101 without Upgrade: websocket");
        return;
    }
    if (!header(c->hs, "Connection", v, sizeof v) || !strcasestr(v, "upgrade")) {
        hs_fail(c, "101 without Connection: upgrade");
        return;
    }
    if (!header(c->hs, "Sec-WebSocket-Accept", v, sizeof v)) {
        hs_fail(c, "101 without Sec-WebSocket-Accept");
        return;
    }
    if (strcmp(v, c->accept) != 0) {
        char why[400];
        snprintf(why, sizeof why, "wrong Sec-WebSocket-Accept \"%.64s\" (expected %s)", v,
                 c->accept);
        hs_fail(c, why);
        return;
    }
    if (header(c->hs, "Sec-WebSocket-Extensions", v, sizeof v)) {
        hs_fail(c, "101 with an extension we did not offer");
        return;
    }
    size_t rest = c->hslen - used;
    unsigned char tail[HS_MAX];
    memcpy(tail, c->hs + used, rest);
    free(c->hs);
    c->hs = NULL;
    c->hslen = 0;
    c->state = ST_OPEN;
    n_open++;
    n_established++;
    if (rest) frames_in(c, tail, rest);
    if (c->state == ST_OPEN && running && mode != M_IDLE) start_sending(c);
}

static int conn_start(struct conn *c)
{
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0) {
        fprintf(stderr, "ws-bench: socket: %s\n", strerror(errno));
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->state = ST_CONNECTING;
    if (connect(fd, (struct sockaddr *)&addr, addrlen) < 0 && errno != EINPROGRESS) {
        char why[160];
        snprintf(why, sizeof why, "connect: %s", strerror(errno));
        hs_fail(c, why);
        return 0;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    c->writing = 1;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

static void on_connected(struct conn *c)
{
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) {
        char why[160];
        snprintf(why, sizeof why, "connect: %s", strerror(err));
        hs_fail(c, why);
        return;
    }
    unsigned char k[16];
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = rnd();
        memcpy(k + i, &r, 8);
    }
    char key[32], cat[80], req[1600];
    unsigned char sha[SHA_DIGEST_LENGTH];
    b64(k, 16, key);
    int n = snprintf(cat, sizeof cat, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    SHA1((unsigned char *)cat, (size_t)n, sha);
    b64(sha, sizeof sha, c->accept);
    n = snprintf(req, sizeof req,
                 "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                 path, hostport, key);
    if (send(c->fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        char why[160];
        snprintf(why, sizeof why, "sending the request: %s", strerror(errno));
        hs_fail(c, why);
        return;
    }
    c->state = ST_HANDSHAKE;
    set_writing(c, 0);
}

static void on_event(struct conn *c, uint32_t evs)
{
    if (c->state == ST_CONNECTING) {
        if (evs & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c);
        return;
    }
    if (evs & EPOLLOUT) {
        pump(c);
        if (c->state == ST_DONE) return;
    }
    if (!(evs & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    for (int rounds = 0; rounds < 4 && c->state != ST_DONE; rounds++) {
        ssize_t r = recv(c->fd, scratch, SCRATCH, 0);
        if (r <= 0) {
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
            if (r < 0 && errno == EINTR) continue;
            if (c->state == ST_HANDSHAKE) {
                hs_fail(c, r == 0 ? "connection closed before a response"
                                  : "connection reset before a response");
            } else if (c->state == ST_CLOSING) {
                conn_end(c, 0);
            } else {
                fail_conn(c, &err_closed, r == 0 ? "connection closed by the server without a close frame"
                                                 : "connection reset");
            }
            return;
        }
        if (c->state == ST_HANDSHAKE)
            handshake_in(c, scratch, (size_t)r);
        else
            frames_in(c, scratch, (size_t)r);
        if ((size_t)r < SCRATCH) return;
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: ws-bench [-c CONNS] [-w INFLIGHT] [-s SIZE] [-b] [-j FIELD=VALUE] [-d SECS] [-W WARMUP]\n"
            "                [-n COUNT] [--idle N] [-p PENDING] [-T TIMEOUT] [--ticks NAME=PIDS]\n"
            "                [ws://]HOST:PORT[/PATH]\n"
            "  -c 50       connections (load, check)\n"
            "  -w 1        messages in flight per connection\n"
            "  -s 64       message size in bytes\n"
            "  -b          binary messages (default text)\n"
            "  -j F=V      JSON payload {\"F\":\"V\",\"d\":\"...\"} padded to -s bytes (F dotted: nested)\n"
            "  -d 8        measured seconds (load); idle: hold time (default 300)\n"
            "  -W 2        warm-up seconds before measuring (load)\n"
            "  -n COUNT    check mode: COUNT messages per connection, then close\n"
            "  --idle N    open N idle WebSockets, print ESTABLISHED, hold until SIGUSR1/-d\n"
            "  -p 256      handshakes in progress at once\n"
            "  -T 30       seconds allowed to establish (and for check mode as a whole)\n"
            "  --ticks NAME=PID,...  report those processes' CPU ticks over the measured window\n");
    exit(2);
}

static void parse_url(const char *u)
{
    if (strncmp(u, "ws://", 5) == 0) u += 5;
    const char *slash = strchr(u, '/');
    size_t hl = slash ? (size_t)(slash - u) : strlen(u);
    if (hl >= sizeof hostport) usage();
    memcpy(hostport, u, hl);
    hostport[hl] = 0;
    if (slash) snprintf(path, sizeof path, "%s", slash);
    char host[300];
    const char *colon = strrchr(hostport, ':');
    if (!colon) usage();
    snprintf(host, sizeof host, "%.*s", (int)(colon - hostport), hostport);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    int e = getaddrinfo(host, colon + 1, &hints, &res);
    if (e) {
        fprintf(stderr, "ws-bench: %s: %s\n", hostport, gai_strerror(e));
        exit(2);
    }
    memcpy(&addr, res->ai_addr, res->ai_addrlen);
    addrlen = res->ai_addrlen;
    freeaddrinfo(res);
}

static uint64_t percentile(double q)
{
    if (!hist_n) return 0;
    uint64_t want = (uint64_t)(q * (double)hist_n + 0.999999), acc = 0;
    if (want < 1) want = 1;
    for (uint64_t i = 0; i <= HIST_MAX; i++) {
        acc += hist[i];
        if (acc >= want) return i == HIST_MAX ? hist_max : i;
    }
    return hist_max;
}

int main(int argc, char **argv)
{
    const char *url = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-b")) {
            binary = 1;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
        } else if (a[0] == '-' && a[1] && v) {
            i++;
            if (!strcmp(a, "-c")) C = atoi(v);
            else if (!strcmp(a, "-w")) W = atoi(v);
            else if (!strcmp(a, "-s")) S = (size_t)strtoull(v, NULL, 10);
            else if (!strcmp(a, "-j")) json_spec = v;
            else if (!strcmp(a, "-d")) duration = atof(v);
            else if (!strcmp(a, "-W")) warmup = atof(v);
            else if (!strcmp(a, "-n")) { count = atol(v); mode = M_CHECK; }
            else if (!strcmp(a, "--idle")) { idle_n = atol(v); mode = M_IDLE; }
            else if (!strcmp(a, "-p")) max_pending = atoi(v);
            else if (!strcmp(a, "-T")) timeout_s = atof(v);
            else if (!strcmp(a, "--ticks") && ntick < NTICK) {
                const char *eq = strchr(v, '=');
                if (!eq || eq == v || eq - v >= 32) usage();
                snprintf(tick[ntick].name, sizeof tick[ntick].name, "%.*s", (int)(eq - v), v);
                for (const char *q = eq + 1; *q && tick[ntick].npids < 64;) {
                    tick[ntick].pids[tick[ntick].npids++] = atoi(q);
                    while (*q && *q != ',') q++;
                    if (*q == ',') q++;
                }
                ntick++;
            }
            else usage();
        } else if (a[0] != '-' && !url) {
            url = a;
        } else {
            usage();
        }
    }
    if (!url || C < 1 || W < 1 || max_pending < 1 || (mode == M_CHECK && count < 1) ||
        (mode == M_IDLE && idle_n < 1))
        usage();
    if (duration < 0) duration = mode == M_IDLE ? 300 : 8;
    parse_url(url);
    if (mode == M_IDLE) C = (int)idle_n;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if ((rlim_t)C + 16 > rl.rlim_cur) {
        fprintf(stderr, "ws-bench: %d connections need more descriptors than the limit (%llu)\n",
                C, (unsigned long long)rl.rlim_cur);
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: epoll_wait returns EINTR */
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    rng = now_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;

    payload = xmalloc(S ? S : 1);
    if (json_spec)
        json_payload(payload, S, json_spec);
    else
        for (size_t i = 0; i < S; i++) payload[i] = (unsigned char)('!' + (rnd() % 94));
    for (int v = 0; v < NVAR; v++) {
        frames[v] = xmalloc(S + 14);
        flen = build_frame(frames[v], 0x80 | (binary ? 2 : 1), payload, S);
    }

    ep = epoll_create1(EPOLL_CLOEXEC);
    struct conn *conns = calloc((size_t)C, sizeof *conns);
    uint64_t *tsbuf = calloc((size_t)C * (size_t)W, sizeof *tsbuf);
    if (!conns || !tsbuf) {
        perror("ws-bench: calloc");
        return 1;
    }
    for (int i = 0; i < C; i++) {
        conns[i].id = i;
        conns[i].fd = -1;
        conns[i].state = -1; /* not started */
        conns[i].ts = tsbuf + (size_t)i * (size_t)W;
    }

    struct epoll_event evs[512];
    uint64_t t_start = now_ns(), deadline = t_start + (uint64_t)(timeout_s * 1e9);
    int next = 0;
    /* ---- establish every connection, at most max_pending handshakes at a time ---- */
    while (n_established + n_failed < C) {
        while (next < C && (next - n_established - n_failed) < max_pending &&
               !(mode != M_IDLE && n_failed)) {
            if (conn_start(&conns[next]) < 0) return 1;
            next++;
        }
        if (mode != M_IDLE && n_failed) break; /* load/check: the first failure stops the run */
        if (got_signal || now_ns() > deadline) break;
        int n = epoll_wait(ep, evs, 512, 100);
        for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, evs[i].events);
    }
    double t_est = (double)(now_ns() - t_start) / 1e9;
    if (n_established + n_failed < C) {
        long pending = C - n_established - n_failed;
        fprintf(stderr, "ws-bench: %ld connections not established after %.1f s%s\n", pending,
                t_est, got_signal ? " (interrupted)" : "");
        hs_errors += pending;
        n_failed += pending;
    }
    if (mode == M_IDLE) {
        printf("ESTABLISHED n=%ld failed=%ld secs=%.2f\n", n_established, n_failed, t_est);
        fflush(stdout);
    }

    double measured = 0;
    if (!n_failed || mode == M_IDLE) {
        /* ---- run ---- */
        running = 1;
        uint64_t t0 = now_ns(), t_measure = t0, t_end;
        if (mode == M_LOAD) {
            t_measure = t0 + (uint64_t)(warmup * 1e9);
            t_end = t_measure + (uint64_t)(duration * 1e9);
        } else if (mode == M_CHECK) {
            t_end = deadline;
            measuring = 1;
        } else {
            t_end = t0 + (uint64_t)(duration * 1e9);
        }
        if (mode != M_IDLE)
            for (int i = 0; i < C; i++)
                if (conns[i].state == ST_OPEN) start_sending(&conns[i]);
        uint64_t m0 = t0;
        if (mode != M_LOAD) sample(0);
        for (;;) {
            uint64_t t = now_ns();
            if (mode == M_LOAD && !measuring && t >= t_measure) {
                sample(0);
                measuring = 1;
                m0 = now_ns();
            }
            if (t >= t_end || got_signal) break;
            if (mode == M_CHECK && n_done == C) break;
            if (mode != M_IDLE && n_open == 0 && n_done == C) break;
            uint64_t wait_ns = t_end - t;
            if (mode == M_LOAD && !measuring && t_measure - t < wait_ns) wait_ns = t_measure - t;
            int ms = (int)(wait_ns / 1000000) + 1;
            if (ms > 100) ms = 100;
            int n = epoll_wait(ep, evs, 512, ms);
            for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, evs[i].events);
        }
        if (mode == M_LOAD && !measuring) { /* the run ended before the warm-up did */
            sample(0);
            m0 = now_ns();
        }
        measured = (double)(now_ns() - m0) / 1e9;
        sample(1);
        if (mode == M_CHECK && n_done < C) {
            fprintf(stderr, "ws-bench: check: %ld connections did not finish within -T %.0f s\n",
                    C - n_done, timeout_s);
            err_closed += C - n_done;
        }
        measuring = 0;
        running = 0;
    }

    /* ---- close every open connection with a close handshake (10 s at most) ---- */
    closing_all = 1;
    uint64_t t_close = now_ns(), close_deadline = t_close + 10000000000ull;
    for (int i = 0; i < C; i++)
        if (conns[i].state == ST_OPEN) start_close(&conns[i]);
    while (n_open > 0 && now_ns() < close_deadline) {
        int n = epoll_wait(ep, evs, 512, 100);
        for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, evs[i].events);
    }
    for (int i = 0; i < C; i++)
        if (conns[i].state != ST_DONE && conns[i].fd >= 0) conn_end(&conns[i], 0);
    if (mode == M_IDLE)
        printf("CLOSED clean=%ld unclean=%ld secs=%.2f\n", closed_clean, closed_unclean,
               (double)(now_ns() - t_close) / 1e9);

    long errors = err_proto + err_payload + err_closed;
    printf("RESULT mode=%s conns=%d inflight=%d size=%zu opcode=%s payload=%s warmup_s=%g duration_s=%.3f "
           "messages=%llu msgs_per_s=%.0f p50_us=%llu p90_us=%llu p99_us=%llu p999_us=%llu "
           "max_us=%llu errors=%ld handshake_errors=%ld err_proto=%ld err_payload=%ld "
           "err_closed=%ld closed_clean=%ld closed_unclean=%ld client_cpu_s=%.3f",
           mode == M_LOAD ? "load" : mode == M_CHECK ? "check" : "idle", C, W, S,
           binary ? "binary" : "text", json_spec ? "json" : "ascii", mode == M_LOAD ? warmup : 0, measured,
           (unsigned long long)n_msgs, measured > 0 ? (double)n_msgs / measured : 0,
           (unsigned long long)percentile(0.50), (unsigned long long)percentile(0.90),
           (unsigned long long)percentile(0.99), (unsigned long long)percentile(0.999),
           (unsigned long long)hist_max, errors, hs_errors, err_proto, err_payload, err_closed,
           closed_clean, closed_unclean, cpu1 - cpu0);
    for (int i = 0; i < ntick; i++) printf(" ticks_%s=%lld", tick[i].name, tick[i].t1 - tick[i].t0);
    printf(" sys_busy_ticks=%lld sys_steal_ticks=%lld clk_tck=%ld\n", sys1[0] - sys0[0],
           sys1[1] - sys0[1], sysconf(_SC_CLK_TCK));
    fflush(stdout);
    if (hs_errors) return 3;
    return errors ? 1 : 0;
}
