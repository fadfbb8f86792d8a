/* ws_test.c: the WebSocket codec (gateway/ws.c).
 *
 * Frame-level cases reproduce what Autobahn|Testsuite groups 1-7 and 9 check that a codec can
 * decide (framing, pings, RSV bits, reserved opcodes, fragmentation, UTF-8, close frames, large
 * messages), plus masking per direction, length encodings and the message limit. A case is a byte
 * stream and what it must produce: complete messages and control frames in order, the message
 * left in progress, and for a violation the close code and the stream offset of the byte whose
 * arrival must report it. Every stream is fed whole, split in two at every offset and one byte at
 * a time (large ones at sampled offsets and in pieces of fixed sizes), each piece in an exact-size
 * heap copy so that ASan reports a read past it; every chunk is checked against ws.h's contract
 * as it comes out. UTF-8 is also checked exhaustively on short strings against a reference built
 * from the encoder's side (every scalar value encoded), not from a decoder.
 */
#include "../../gateway/ws.c"
#include "../support/test.h"

#include <stdarg.h>
#include <stdlib.h>
#include <time.h>

#define FIN 0x80
#define RSV1 0x40
#define CONT PGW_WS_OP_CONT
#define TEXT PGW_WS_OP_TEXT
#define BINARY PGW_WS_OP_BINARY
#define CLOSE PGW_WS_OP_CLOSE
#define PING PGW_WS_OP_PING
#define PONG PGW_WS_OP_PONG

#define MAX_EVENTS 64
#define SPLIT_ALL_MAX 4096     /* streams up to this size are split at every offset */
#define BYTEWISE_MAX (1 << 17) /* and fed one byte at a time up to this size */

static long cases_run, feedings_run; /* reported before the counts */
static double secs_1m[3], secs_16m[3];  /* by opcode: pgw_ws_parse time for 1 and 16 MiB */

/* ---- Byte buffers ---- */

struct bytes {
    uint8_t *p;
    size_t len, cap;
};

static void bytes_put(struct bytes *b, const void *p, size_t n)
{
    if (b->p == NULL || b->len + n > b->cap) { /* always allocated: memcmp never sees NULL */
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        pgw_assert(b->p != NULL);
        b->cap = cap;
    }
    if (n > 0)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void bytes_free(struct bytes *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* A heap copy of exactly <n> bytes: reading past it is an ASan error. */
static uint8_t *dup_exact(const void *p, size_t n)
{
    uint8_t *b = malloc(n > 0 ? n : 1);
    pgw_assert(b != NULL);
    if (n > 0)
        memcpy(b, p, n);
    return b;
}

static uint32_t rng_state = 12345;
static uint32_t rng(void)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return rng_state >> 8;
}

/* ---- What a stream produces ---- */

struct event {
    unsigned op;
    int close_code;
    size_t off, len; /* payload in outcome.data */
};

struct outcome {
    struct bytes data;   /* the events' payloads, in order */
    struct event ev[MAX_EVENTS];
    int nev;
    unsigned partial_op; /* a data message begun and not finished: its opcode (0: none) */
    struct bytes part;   /* its bytes so far */
    int err;             /* the close code of the violation (0: none) */
};

static void outcome_reset(struct outcome *o)
{
    o->data.len = o->part.len = 0;
    o->nev = 0;
    o->partial_op = 0;
    o->err = 0;
}

static void outcome_free(struct outcome *o)
{
    bytes_free(&o->data);
    bytes_free(&o->part);
}

static void push_event(struct outcome *o, unsigned op, int close_code, const void *p, size_t n)
{
    pgw_assert(o->nev < MAX_EVENTS);
    o->ev[o->nev++] = (struct event){op, close_code, o->data.len, n};
    bytes_put(&o->data, p, n);
}

/* ---- Building a case: the stream and what it must produce ---- */

static struct tcase {
    char name[128];
    int from_client;
    uint64_t max_message;
    struct bytes in;     /* the stream, masked when from_client */
    struct outcome want;
    size_t err_at;       /* the byte whose arrival reports want.err */
    uint32_t key_seed;   /* varies the masking keys from frame to frame */
} T;

static void case_begin(int from_client, uint64_t max_message, const char *fmt, ...)
    PGW_PRINTF(3, 4);
static void case_begin(int from_client, uint64_t max_message, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(T.name, sizeof(T.name), fmt, ap);
    va_end(ap);
    T.from_client = from_client;
    T.max_message = max_message;
    T.in.len = 0;
    outcome_reset(&T.want);
    T.err_at = 0;
}

static void next_key(uint8_t key[4])
{
    T.key_seed = T.key_seed * 2654435761u + 0x9E3779B9u;
    for (int i = 0; i < 4; i++)
        key[i] = (uint8_t)(T.key_seed >> (8 * i)) ^ 0x5A;
}

/* Appends a frame written independently of ws.c: first byte <b0>, the length <announced> on
 * <enc> extended bytes (0: the minimal encoding, 2 or 8 to force one), a masking key when
 * <mask_bit>, then <pl,n> masked with it. Returns the offset of the frame. */
static size_t put_raw(uint8_t b0, int mask_bit, int enc, uint64_t announced, const void *pl,
                      size_t n)
{
    size_t start = T.in.len, hl = 2;
    uint8_t h[PGW_WS_HEADER_MAX], key[4];
    if (enc == 0)
        enc = announced < 126 ? 0 : announced <= 0xFFFF ? 2 : 8;
    h[0] = b0;
    h[1] = (uint8_t)((mask_bit ? 0x80 : 0) | (enc == 0 ? announced : enc == 2 ? 126 : 127));
    for (int i = 0; i < enc; i++)
        h[hl++] = (uint8_t)(announced >> (8 * (enc - 1 - i)));
    if (mask_bit) {
        next_key(key);
        memcpy(h + hl, key, 4);
        hl += 4;
    }
    bytes_put(&T.in, h, hl);
    size_t at = T.in.len;
    bytes_put(&T.in, pl, n);
    for (size_t i = 0; mask_bit && i < n; i++)
        T.in.p[at + i] ^= key[i & 3];
    return start;
}

/* A frame with the minimal length, masked as the case's direction requires. */
static size_t put(uint8_t b0, const void *pl, size_t n)
{
    return put_raw(b0, T.from_client, 0, n, pl, n);
}

static size_t put_str(uint8_t b0, const char *s) { return put(b0, s, strlen(s)); }

/* The offset of the byte that completes the length of the frame at <start>. */
static size_t len_at(size_t start)
{
    unsigned l = T.in.p[start + 1] & 0x7F;
    return start + 1 + (l == 126 ? 2 : l == 127 ? 8 : 0);
}

static size_t last_byte(void) { return T.in.len - 1; }

static void want_msg(unsigned op, const void *p, size_t n) { push_event(&T.want, op, 0, p, n); }
static void want_str(unsigned op, const char *s) { want_msg(op, s, strlen(s)); }
static void want_ctl(unsigned op, const void *p, size_t n, int close_code)
{
    push_event(&T.want, op, close_code, p, n);
}

/* The message in progress when the stream ends; with an error, what may have been handed out of
 * it before (the chunks seen must be a prefix of it). */
static void want_partial(unsigned op, const void *p, size_t n)
{
    T.want.partial_op = op;
    T.want.part.len = 0;
    bytes_put(&T.want.part, p, n);
}

static void want_err(int code, size_t at)
{
    T.want.err = code;
    T.err_at = at;
}

/* ---- Feeding a stream ---- */

static struct run {
    struct pgw_ws_parser p;
    struct outcome got;
    int frame_open;                      /* a data frame was partly handed out */
    size_t err_call_start, err_piece_end; /* stream bytes given to the call that failed */
    char bad[200];                       /* the first broken contract, "" if none */
    int timing;
    double parse_secs;
} R;

/* Records the first broken contract of a run; returns 0 to end the check that found it. */
static int broke(const char *fmt, ...) PGW_PRINTF(1, 2);
static int broke(const char *fmt, ...)
{
    if (R.bad[0] != '\0')
        return 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(R.bad, sizeof(R.bad), fmt, ap);
    va_end(ap);
    return 0;
}

static int take_data(const struct pgw_ws_chunk *c)
{
    struct outcome *o = &R.got;
    if (c->opcode != TEXT && c->opcode != BINARY)
        return broke("data chunk with opcode %u", c->opcode);
    if (c->first != (o->partial_op == 0))
        return broke("first=%d with%s a message in progress", c->first, o->partial_op ? "" : "out");
    if (!c->first && c->opcode != o->partial_op)
        return broke("opcode %u in a message of opcode %u", c->opcode, o->partial_op);
    if (c->len == 0 && (R.frame_open || !c->frame_end))
        return broke("an empty chunk that is not a whole empty frame");
    if (c->fin && !c->frame_end)
        return broke("fin without frame_end");
    if (c->close_code != 0 || c->reason != NULL || c->reason_len != 0)
        return broke("close fields set on a data chunk");
    if (c->first) {
        o->partial_op = c->opcode;
        o->part.len = 0;
    }
    bytes_put(&o->part, c->data, c->len);
    R.frame_open = !c->frame_end;
    if (c->fin) {
        push_event(o, c->opcode, 0, o->part.p, o->part.len);
        o->partial_op = 0;
        o->part.len = 0;
    }
    return 1;
}

static int take_control(const struct pgw_ws_chunk *c)
{
    if (c->opcode != CLOSE && c->opcode != PING && c->opcode != PONG)
        return broke("control chunk with opcode %u", c->opcode);
    if (!c->first || !c->fin || !c->frame_end)
        return broke("control chunk without first, fin and frame_end");
    if (c->data != R.p.ctl || c->len > PGW_WS_CONTROL_MAX)
        return broke("control payload not in p->ctl");
    if (R.frame_open)
        return broke("control chunk inside a data frame");
    if (c->opcode == CLOSE) {
        int code = c->len == 0 ? PGW_WS_CLOSE_NO_STATUS : c->data[0] << 8 | c->data[1];
        if (c->close_code != code)
            return broke("close_code %d, payload says %d", c->close_code, code);
        if (c->len > 0 && (c->reason != c->data + 2 || c->reason_len != c->len - 2))
            return broke("reason is not the payload after the code");
        if (c->len == 0 && c->reason_len != 0)
            return broke("a reason in an empty close");
    } else if (c->close_code != 0 || c->reason != NULL || c->reason_len != 0) {
        return broke("close fields set on a ping or pong");
    }
    push_event(&R.got, c->opcode, c->close_code, c->data, c->len);
    return 1;
}

static double now_secs(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* After a failure, a valid frame must fail too, with the same code and reason. */
static void check_sticky(void)
{
    uint8_t ping[6] = {FIN | PING, 0x80, 1, 2, 3, 4};
    int code = R.p.close_code;
    const char *err = R.p.err;
    size_t used;
    struct pgw_ws_chunk c;
    ping[1] = R.p.from_client ? 0x80 : 0x00;
    if (pgw_ws_parse(&R.p, ping, R.p.from_client ? 6 : 2, &used, &c) != PGW_ERR ||
        R.p.close_code != code || R.p.err != err)
        broke("the error is not sticky");
}

/* Feeds stream bytes [off, off + n) as one piece (an exact-size heap copy), calling
 * pgw_ws_parse until it asks for more. Returns 0 once the parser failed. */
static int feed(size_t off, size_t n)
{
    uint8_t *copy = dup_exact(T.in.p + off, n);
    size_t at = 0;
    int rc;
    for (;;) {
        struct pgw_ws_chunk c;
        size_t used = (size_t)-1;
        double t0 = R.timing ? now_secs() : 0;
        rc = pgw_ws_parse(&R.p, copy + at, n - at, &used, &c);
        if (R.timing)
            R.parse_secs += now_secs() - t0;
        if (rc == PGW_ERR) {
            R.got.err = R.p.close_code;
            R.err_call_start = off + at;
            R.err_piece_end = off + n;
            if (R.p.close_code == 0 || R.p.err == NULL)
                broke("PGW_ERR without close_code and err");
            check_sticky();
            break;
        }
        if (rc != PGW_OK && rc != PGW_AGAIN) {
            broke("returned %d", rc);
            break;
        }
        if (used > n - at) {
            broke("used %zu of %zu bytes", used, n - at);
            break;
        }
        if (rc == PGW_AGAIN) {
            if (used != n - at)
                broke("PGW_AGAIN with %zu of %zu bytes used", used, n - at);
            break;
        }
        if (used == 0) {
            broke("a chunk without consuming anything");
            break;
        }
        if (c.opcode < 8 && ((uintptr_t)c.data < (uintptr_t)(copy + at) ||
                             (uintptr_t)(c.data + c.len) > (uintptr_t)(copy + at + used)))
            broke("chunk data outside the bytes used");
        if (c.opcode < 8)
            take_data(&c);
        else
            take_control(&c);
        at += used;
    }
    free(copy);
    return rc != PGW_ERR;
}

static void run_begin(void)
{
    pgw_ws_parser_init(&R.p, T.from_client, T.max_message);
    outcome_reset(&R.got);
    R.frame_open = 0;
    R.bad[0] = '\0';
    R.err_call_start = R.err_piece_end = 0;
    R.parse_secs = 0;
    feedings_run++;
}

static void run_split(size_t k)
{
    run_begin();
    if (feed(0, k))
        feed(k, T.in.len - k);
}

static void run_pieces(size_t size)
{
    run_begin();
    for (size_t off = 0; off < T.in.len; off += size)
        if (!feed(off, PGW_MIN(size, T.in.len - off)))
            return;
}

/* Compares the run with the case; reports the first difference. */
static int check_run(const char *mode)
{
    struct outcome *g = &R.got, *w = &T.want;
    if (R.bad[0] != '\0') {
        failf(T.name, "%s: %s", mode, R.bad);
        return 0;
    }
    if (g->err != w->err) {
        failf(T.name, "%s: close code %d (%s), expected %d", mode, g->err,
              R.p.err ? R.p.err : "no error", w->err);
        return 0;
    }
    if (w->err && (R.err_call_start > T.err_at || T.err_at >= R.err_piece_end)) {
        failf(T.name, "%s: \"%s\" reported by the call on bytes [%zu, %zu), not by the one on "
              "byte %zu", mode, R.p.err, R.err_call_start, R.err_piece_end, T.err_at);
        return 0;
    }
    if (!w->err && (R.p.in_payload || R.p.hdr_have != 0)) {
        failf(T.name, "%s: the stream ended inside a frame for the parser", mode);
        return 0;
    }
    if (g->nev != w->nev) {
        failf(T.name, "%s: %d messages and control frames, expected %d", mode, g->nev, w->nev);
        return 0;
    }
    for (int i = 0; i < g->nev; i++) {
        const struct event *a = &g->ev[i], *b = &w->ev[i];
        if (a->op != b->op || a->close_code != b->close_code || a->len != b->len ||
            memcmp(g->data.p + a->off, w->data.p + b->off, a->len) != 0) {
            failf(T.name, "%s: event %d is op %u code %d, %zu bytes; expected op %u code %d, %zu "
                  "bytes%s", mode, i, a->op, a->close_code, a->len, b->op, b->close_code, b->len,
                  a->len == b->len ? " (content differs)" : "");
            return 0;
        }
    }
    /* with an error, the message in progress may have been cut anywhere before the bad byte */
    int op_ok = g->partial_op == w->partial_op || (w->err && g->partial_op == 0);
    int len_ok = w->err ? g->part.len <= w->part.len : g->part.len == w->part.len;
    if (!op_ok || !len_ok || (g->part.len > 0 && memcmp(g->part.p, w->part.p, g->part.len) != 0)) {
        failf(T.name, "%s: message in progress: op %u, %zu bytes; expected op %u, %s%zu bytes",
              mode, g->partial_op, g->part.len, w->partial_op, w->err ? "a prefix of " : "",
              w->part.len);
        return 0;
    }
    return 1;
}

/* Splits sampled from a long stream: all near both ends, 64 in between. */
static size_t next_split(size_t k, size_t n)
{
    if (n <= SPLIT_ALL_MAX || k < 64 || k + 64 >= n)
        return k + 1;
    return PGW_MAX(k + 1, PGW_MIN(k + n / 64 + 1, n - 64));
}

/* Feeds the case's stream every way and checks each run. */
static void run_case(void)
{
    static const size_t sizes[] = {997, 4096, 65536};
    size_t n = T.in.len;
    char mode[64];
    cases_run++;
    run_pieces(n);
    if (!check_run("whole"))
        return;
    if (n <= BYTEWISE_MAX) {
        run_pieces(1);
        if (!check_run("one byte at a time"))
            return;
    }
    for (size_t k = 1; k < n; k = next_split(k, n)) {
        run_split(k);
        snprintf(mode, sizeof(mode), "split at %zu", k);
        if (!check_run(mode))
            return;
    }
    for (size_t i = 0; n > SPLIT_ALL_MAX && i < PGW_ARRAY_LEN(sizes); i++) {
        run_pieces(sizes[i]);
        snprintf(mode, sizeof(mode), "pieces of %zu", sizes[i]);
        if (!check_run(mode))
            return;
    }
}

/* Large streams: in pieces of the given sizes only (0: whole). */
static void run_case_sizes(const size_t *sizes, size_t nsizes)
{
    char mode[64];
    cases_run++;
    for (size_t i = 0; i < nsizes; i++) {
        run_pieces(sizes[i] ? sizes[i] : T.in.len);
        snprintf(mode, sizeof(mode), "pieces of %zu", sizes[i] ? sizes[i] : T.in.len);
        if (!check_run(mode))
            return;
    }
}

static const char *op_name(unsigned op)
{
    static const char *const names[16] = {"cont", "text", "binary", "op3", "op4", "op5", "op6",
                                          "op7", "close", "ping", "pong", "op11", "op12", "op13",
                                          "op14", "op15"};
    return names[op & 0xF];
}

/* ---- UTF-8: a reference from the encoder's side ---- */

/* Bitmaps of the byte strings that are the encoding of a scalar value (enc[L], L bytes) or a
 * proper prefix of one (pre[k], k bytes), found by encoding every scalar value. Strings of 1 to 3
 * bytes index the bitmaps by their big-endian value; 4-byte encodings by their payload bits. */
static uint8_t *ref_enc[5], *ref_pre[4];

static size_t encode(uint32_t cp, uint8_t *o)
{
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | cp >> 6);
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | cp >> 12);
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | cp >> 18);
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* The bit of the <k>-byte string <s>, or -1 when no encoding can have that shape. */
static long ref_index(const uint8_t *s, size_t k)
{
    if (k < 4) {
        long v = 0;
        for (size_t i = 0; i < k; i++)
            v = v << 8 | s[i];
        return v;
    }
    if (s[0] < 0xF0 || s[0] > 0xF7)
        return -1;
    for (int i = 1; i < 4; i++)
        if ((s[i] & 0xC0) != 0x80)
            return -1;
    return (long)(s[0] & 7) << 18 | (s[1] & 0x3F) << 12 | (s[2] & 0x3F) << 6 | (s[3] & 0x3F);
}

static int bit_get(const uint8_t *m, long i) { return i >= 0 && (m[i >> 3] >> (i & 7)) & 1; }
static void bit_set(uint8_t *m, long i) { m[i >> 3] |= (uint8_t)(1 << (i & 7)); }

static void ref_build(void)
{
    for (int k = 1; k <= 4; k++) {
        ref_enc[k] = calloc(1 << 21, 1); /* 2^24 bits covers every index */
        if (k < 4)
            ref_pre[k] = calloc(1 << 21, 1);
    }
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        uint8_t o[4];
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        size_t l = encode(cp, o);
        bit_set(ref_enc[l], ref_index(o, l));
        for (size_t k = 1; k < l; k++)
            bit_set(ref_pre[k], ref_index(o, k));
    }
}

static void ref_free(void)
{
    for (int k = 1; k <= 4; k++) {
        free(ref_enc[k]);
        if (k < 4)
            free(ref_pre[k]);
    }
}

/* Whether <s,n> is a sequence of encodings, followed (when <partial_ok>) by a proper prefix of
 * one. Encodings are prefix-free, so at most one length matches at each step. */
static int ref_valid(const uint8_t *s, size_t n, int partial_ok)
{
    while (n > 0) {
        size_t l = 0;
        for (size_t k = 1; k <= 4 && k <= n && l == 0; k++)
            if (bit_get(ref_enc[k], ref_index(s, k)))
                l = k;
        if (l == 0)
            return partial_ok && n < 4 && bit_get(ref_pre[n], ref_index(s, n));
        s += l;
        n -= l;
    }
    return 1;
}

static int utf8_failures;

/* Feeds <s,n> whole and one byte at a time; compares every prefix with the reference. */
static void check_utf8(const uint8_t *s, size_t n)
{
    struct pgw_utf8 all, step;
    pgw_utf8_init(&all);
    pgw_utf8_init(&step);
    int ok = pgw_utf8_feed(&all, s, n) == PGW_OK;
    int bad = ok != ref_valid(s, n, 1) || pgw_utf8_complete(&all) != ref_valid(s, n, 0);
    for (size_t k = 0; k < n && !bad; k++) {
        int r = pgw_utf8_feed(&step, s + k, 1) == PGW_OK;
        bad = r != ref_valid(s, k + 1, 1) || pgw_utf8_complete(&step) != ref_valid(s, k + 1, 0);
    }
    if (bad && utf8_failures++ < 10) {
        char hex[64] = "";
        for (size_t i = 0; i < n && i < 16; i++)
            snprintf(hex + 3 * i, sizeof(hex) - 3 * i, "%02X ", s[i]);
        failf("utf8", "%sdisagrees with the reference (feed %d, complete %d)", hex, ok,
              pgw_utf8_complete(&all));
    }
}

/* ---- UTF-8 validator ---- */

static void test_utf8_reference_sanity(void)
{
    /* the reference itself, on a few known strings */
    CHECK(ref_valid((const uint8_t *)"\xce\xba\xe1\xbd\xb9", 5, 0));
    CHECK(!ref_valid((const uint8_t *)"\xed\xa0\x80", 3, 1));
    CHECK(ref_valid((const uint8_t *)"\xf4\x8f", 2, 1));
    CHECK(!ref_valid((const uint8_t *)"\xf4\x8f", 2, 0));
    CHECK(!ref_valid((const uint8_t *)"\xf4\x90", 2, 1));
    CHECK(!ref_valid((const uint8_t *)"\xc0\x80", 2, 1));
    CHECK(ref_valid((const uint8_t *)"\xf0\x90\x80\x80", 4, 0));
}

static void test_utf8_code_points(void)
{
    /* every code point, surrogates included: valid alone, complete only at the end */
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        uint8_t o[4];
        size_t l = encode(cp, o);
        struct pgw_utf8 u;
        pgw_utf8_init(&u);
        int surrogate = cp >= 0xD800 && cp <= 0xDFFF;
        int ok = pgw_utf8_feed(&u, o, l) == PGW_OK && pgw_utf8_complete(&u);
        if (ok == surrogate && utf8_failures++ < 10)
            failf("utf8", "U+%04X %s", cp, surrogate ? "accepted" : "refused");
    }
    /* code points past U+10FFFF, written the same way */
    for (uint32_t cp = 0x110000; cp < 0x200000; cp += 0x101) {
        uint8_t o[4];
        struct pgw_utf8 u;
        pgw_utf8_init(&u);
        encode(cp, o);
        CHECK(pgw_utf8_feed(&u, o, 4) == PGW_ERR);
    }
}

static void test_utf8_exhaustive(void)
{
    static const uint8_t alphabet[] = {0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0,
                                       0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0,
                                       0xF1, 0xF3, 0xF4, 0xF5, 0xF7, 0xF8, 0xFE, 0xFF};
    const size_t na = sizeof(alphabet);
    uint8_t s[4];
    for (unsigned a = 0; a < 256; a++) { /* every 1- and 2-byte string */
        s[0] = (uint8_t)a;
        check_utf8(s, 1);
        for (unsigned b = 0; b < 256; b++) {
            s[1] = (uint8_t)b;
            check_utf8(s, 2);
        }
    }
    for (unsigned a = 0xE0; a <= 0xF4; a++) /* 3-byte leads with every byte around 80-BF */
        for (unsigned b = 0x70; b < 0xC8; b++)
            for (unsigned c = 0x70; c < 0xC8; c++) {
                s[0] = (uint8_t)a, s[1] = (uint8_t)b, s[2] = (uint8_t)c;
                check_utf8(s, 3);
            }
    for (size_t i = 0; i < na * na * na * na; i++) { /* 4-byte strings of boundary bytes */
        s[0] = alphabet[i % na];
        s[1] = alphabet[i / na % na];
        s[2] = alphabet[i / na / na % na];
        s[3] = alphabet[i / na / na / na];
        check_utf8(s, 4);
    }
    for (unsigned a = 0xF0; a <= 0xF4; a++) /* 4-byte sequences around the F0 and F4 limits */
        for (unsigned b = 0x80; b < 0xC0; b++)
            for (unsigned c = 0; c < 4; c++) {
                static const uint8_t third[] = {0x7F, 0x80, 0xBF, 0xC0};
                s[0] = (uint8_t)a, s[1] = (uint8_t)b, s[2] = third[c], s[3] = 0xBF;
                check_utf8(s, 4);
            }
}

/* ASCII runs (the 8-byte path) with one non-ASCII byte at every position and alignment. */
static void test_utf8_ascii_runs(void)
{
    static const uint8_t odd[] = {0x80, 0xC3, 0xE2, 0xF0, 0xFF, 0xC0};
    uint8_t text[48];
    for (size_t n = 0; n <= 40; n++)
        for (size_t at = 0; at <= n; at++)
            for (size_t o = 0; o < sizeof(odd); o++) {
                memset(text, 'a', sizeof(text));
                if (at < n)
                    text[at] = odd[o];
                for (size_t align = 0; align < 8; align += 3) {
                    uint8_t *b = dup_exact(text, n + align); /* ASan guards the end */
                    memcpy(b + align, text, n);
                    check_utf8(b + align, n);
                    free(b);
                }
            }
    /* a multibyte character split at every position of a long ASCII run */
    static const uint8_t euro[] = {0xE2, 0x82, 0xAC};
    for (size_t at = 0; at < 40; at++) {
        memset(text, 'x', sizeof(text));
        memcpy(text + at, euro, 3);
        for (size_t k = 0; k <= 43; k++) {
            struct pgw_utf8 u;
            pgw_utf8_init(&u);
            CHECK(pgw_utf8_feed(&u, text, k) == PGW_OK);
            CHECK(pgw_utf8_feed(&u, text + k, 43 - k) == PGW_OK);
            CHECK(pgw_utf8_complete(&u));
        }
    }
}

static void test_utf8_sticky(void)
{
    struct pgw_utf8 u;
    pgw_utf8_init(&u);
    CHECK(pgw_utf8_feed(&u, (const uint8_t *)"ab\xff", 3) == PGW_ERR);
    CHECK(pgw_utf8_feed(&u, (const uint8_t *)"abcdefghijkl", 12) == PGW_ERR);
    CHECK(pgw_utf8_feed(&u, NULL, 0) == PGW_ERR);
    CHECK(!pgw_utf8_complete(&u));
    pgw_utf8_init(&u);
    CHECK(pgw_utf8_feed(&u, NULL, 0) == PGW_OK);
    CHECK(pgw_utf8_complete(&u));
    CHECK(pgw_utf8_feed(&u, (const uint8_t *)"\xf0\x9f", 2) == PGW_OK);
    CHECK(!pgw_utf8_complete(&u));
    CHECK(pgw_utf8_feed(&u, (const uint8_t *)"\x98", 1) == PGW_OK);
    CHECK(!pgw_utf8_complete(&u));
    CHECK(pgw_utf8_feed(&u, (const uint8_t *)"\x80", 1) == PGW_OK);
    CHECK(pgw_utf8_complete(&u));
}

/* ---- UTF-8 cases (Autobahn 6.x, after Markus Kuhn's UTF-8 decoder capability test) ---- */

#define VALID -1
#define CUT -2 /* a valid prefix cut short: refused at the end of the message */

struct utf8_case {
    const char *s;
    int n;
    int bad; /* VALID, CUT, or the index of the first byte that makes it invalid */
};
#define U(lit, bad) {lit, (int)sizeof(lit) - 1, bad}
#define KOSME "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5" /* 11 bytes */

static const struct utf8_case utf8_cases[] = {
    /* 6.2, 6.5, multilingual text */
    U("Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!", VALID),
    U(KOSME, VALID),
    U("\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xe4\xb8\xad\xe6\x96\x87", VALID),
    U("\xd7\xa2\xd7\x91\xd7\xa8\xd7\x99\xd7\xaa \xd0\xa0\xd1\x83\xd1\x81\xd1\x81\xd0\xba\xd0\xb8"
      "\xd0\xb9", VALID),
    U("\xf0\x9f\x98\x80\xf0\x9f\x9a\x80 \xf0\x9f\x87\xab\xf0\x9f\x87\xb7", VALID),
    U("ASCII only, longer than one word: 0123456789", VALID),
    /* 6.7, 6.9, 6.11: boundaries */
    U("\x00", VALID), U("\x7f", VALID), U("\xc2\x80", VALID), U("\xdf\xbf", VALID),
    U("\xe0\xa0\x80", VALID), U("\xef\xbf\xbf", VALID), U("\xf0\x90\x80\x80", VALID),
    U("\xf4\x8f\xbf\xbf", VALID), U("\xed\x9f\xbf", VALID), U("\xee\x80\x80", VALID),
    U("\xef\xbf\xbd", VALID), U("a\xef\xbf\xbd" "b", VALID),
    U("\xf4\x90\x80\x80", 1), U("\xf5\x80\x80\x80", 0),
    /* 6.22: noncharacters are valid UTF-8 */
    U("\xef\xbf\xbe", VALID), U("\xf0\x9f\xbf\xbe", VALID), U("\xf0\x9f\xbf\xbf", VALID),
    U("\xf3\xbf\xbf\xbf", VALID), U("\xf4\x8f\xbf\xbe", VALID), U("\xef\xb7\x90", VALID),
    U("\xef\xb7\xaf", VALID),
    /* 6.3, 6.4: invalid in the middle */
    U(KOSME "\xed\xa0\x80" "edited", 12), U(KOSME "\xf4\x90\x80\x80" "edited", 12),
    /* 6.6: every prefix of KOSME */
    U("\xce", CUT), U("\xce\xba", VALID), U("\xce\xba\xe1", CUT), U("\xce\xba\xe1\xbd", CUT),
    U("\xce\xba\xe1\xbd\xb9", VALID), U("\xce\xba\xe1\xbd\xb9\xcf", CUT),
    U("\xce\xba\xe1\xbd\xb9\xcf\x83", VALID), U("\xce\xba\xe1\xbd\xb9\xcf\x83\xce", CUT),
    U("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc", VALID),
    U("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce", CUT),
    /* 6.8, 6.10: 5- and 6-byte forms, F7 */
    U("\xf8\x88\x80\x80\x80", 0), U("\xfc\x84\x80\x80\x80\x80", 0), U("\xf7\xbf\xbf\xbf", 0),
    U("\xfb\xbf\xbf\xbf\xbf", 0), U("\xfd\xbf\xbf\xbf\xbf\xbf", 0),
    /* 6.12: unexpected continuation bytes */
    U("\x80", 0), U("\xbf", 0), U("\x80\xbf", 0), U("\x80\xbf\x80", 0), U("a\x80", 1),
    U("\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95"
      "\x96\x97\x98\x99\x9a\x9b\x9c\x9d\x9e\x9f\xa0\xa1\xa2\xa3\xa4\xa5\xa6\xa7\xa8\xa9\xaa\xab"
      "\xac\xad\xae\xaf\xb0\xb1\xb2\xb3\xb4\xb5\xb6\xb7\xb8\xb9\xba\xbb\xbc\xbd\xbe\xbf", 0),
    /* 6.13: lonely start characters */
    U("\xc0 \xc1 \xc2 \xc3 \xc4 \xc5 \xc6 \xc7 \xc8 \xc9 \xca \xcb \xcc \xcd \xce \xcf ", 0),
    U("\xc2 \xc3 ", 1), U("\xdf ", 1), U("\xe0 ", 1), U("\xef ", 1), U("\xf0 ", 1), U("\xf4 ", 1),
    U("\xf5 ", 0), U("\xf8 ", 0), U("\xfc ", 0),
    /* 6.14: last continuation byte missing */
    U("\xc0", 0), U("\xe0\x80", 1), U("\xf0\x80\x80", 1), U("\xf8\x80\x80\x80", 0),
    U("\xfc\x80\x80\x80\x80", 0), U("\xdf", CUT), U("\xef\xbf", CUT), U("\xf7\xbf\xbf", 0),
    U("\xe0\xa0", CUT), U("\xf0\x90", CUT), U("\xf4\x8f\xbf", CUT),
    /* 6.15: concatenated incomplete sequences */
    U("\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xfc\x80\x80\x80\x80\xdf\xef\xbf\xf7\xbf\xbf", 0),
    U("\xdf\xef\xbf", 1),
    /* 6.16: impossible bytes */
    U("\xfe", 0), U("\xff", 0), U("\xfe\xfe\xff\xff", 0), U("ok\xff", 2),
    /* 6.17-6.19: overlong forms of '/', of the largest values, of NUL */
    U("\xc0\xaf", 0), U("\xe0\x80\xaf", 1), U("\xf0\x80\x80\xaf", 1), U("\xf8\x80\x80\x80\xaf", 0),
    U("\xc1\xbf", 0), U("\xe0\x9f\xbf", 1), U("\xf0\x8f\xbf\xbf", 1),
    U("\xfc\x83\xbf\xbf\xbf\xbf", 0),
    U("\xc0\x80", 0), U("\xe0\x80\x80", 1), U("\xf0\x80\x80\x80", 1),
    /* 6.20, 6.21: UTF-16 surrogates, single and paired */
    U("\xed\xa0\x80", 1), U("\xed\xad\xbf", 1), U("\xed\xae\x80", 1), U("\xed\xaf\xbf", 1),
    U("\xed\xb0\x80", 1), U("\xed\xbe\x80", 1), U("\xed\xbf\xbf", 1),
    U("\xed\xa0\x80\xed\xb0\x80", 1), U("\xed\xaf\xbf\xed\xbf\xbf", 1),
    /* invalid at the end of a message, in and after ASCII words */
    U("Hello\xce", CUT), U("Hello\xf0\x9f\x98", CUT), U("Hello\xff", 5),
    U("abcdefghijklmno\x80", 15), U("abcdefgh\xc3\x28", 9), U("abcdefghijklmnop\xed\xa0", 17),
};

/* The expected outcome of a text message made of utf8_case <u>, whose byte i lies at stream
 * offset pos[i]; <last_empty>: the FIN frame carries no byte of it. */
static void want_utf8(const struct utf8_case *u, const size_t *pos, int last_empty)
{
    size_t n = (size_t)u->n;
    if (u->bad == VALID) {
        want_msg(TEXT, u->s, n);
    } else if (u->bad == CUT) {
        want_partial(TEXT, u->s, last_empty ? n : n - 1); /* the chunk with the last byte fails */
        want_err(PGW_WS_CLOSE_INVALID_DATA, last_byte());
    } else {
        want_partial(TEXT, u->s, (size_t)u->bad); /* never a byte from the bad one on */
        want_err(PGW_WS_CLOSE_INVALID_DATA, pos[u->bad]);
    }
}

/* Appends the text <s,n> as a frame and records where its bytes land. */
static void put_text_part(uint8_t b0, const char *s, size_t n, size_t *pos)
{
    put(b0, s, n);
    for (size_t i = 0; i < n; i++)
        pos[i] = T.in.len - n + i;
}

static void test_ab6_utf8(void)
{
    size_t pos[128];
    for (size_t c = 0; c < PGW_ARRAY_LEN(utf8_cases); c++) {
        const struct utf8_case *u = &utf8_cases[c];
        size_t n = (size_t)u->n;
        pgw_assert(n <= PGW_ARRAY_LEN(pos));
        check_utf8((const uint8_t *)u->s, n); /* the table agrees with the reference */
        case_begin(1, 0, "6.x utf8 case %zu, one frame", c);
        put_text_part(FIN | TEXT, u->s, n, pos);
        want_utf8(u, pos, 0);
        run_case();
        case_begin(1, 0, "6.x utf8 case %zu, a frame per byte", c);
        for (size_t i = 0; i < n; i++)
            put_text_part((i == 0 ? TEXT : CONT) | (i + 1 == n ? FIN : 0), u->s + i, 1, pos + i);
        want_utf8(u, pos, 0);
        run_case();
        for (size_t k = 0; k <= n; k++) {
            case_begin(1, 0, "6.x utf8 case %zu, two frames cut at %zu%s", c, k,
                       k % 3 == 1 ? ", ping between" : "");
            put_text_part(TEXT, u->s, k, pos);
            if (k % 3 == 1 && (u->bad < 0 || (size_t)u->bad >= k)) {
                put_str(FIN | PING, "between");
                want_str(PING, "between");
            }
            put_text_part(FIN | CONT, u->s + k, n - k, pos + k);
            want_utf8(u, pos, k == n);
            run_case();
        }
    }
    case_begin(1, 0, "6.1 empty text, one frame");
    put(FIN | TEXT, "", 0);
    want_msg(TEXT, "", 0);
    run_case();
    case_begin(1, 0, "6.1 empty text, three empty frames");
    put(TEXT, "", 0);
    put(CONT, "", 0);
    put(FIN | CONT, "", 0);
    want_msg(TEXT, "", 0);
    run_case();
    case_begin(1, 0, "6.x binary is not UTF-8 checked");
    put_str(BINARY, "\xff\xfe");
    put_str(FIN | CONT, "\xed\xa0\x80\xc0");
    want_str(BINARY, "\xff\xfe\xed\xa0\x80\xc0");
    run_case();
}

/* ---- Autobahn 1: text and binary messages of boundary lengths ---- */

static void test_ab1_framing(void)
{
    static const size_t lens[] = {0, 1, 125, 126, 127, 128, 65535, 65536};
    for (int dir = 1; dir >= 0; dir--)
        for (unsigned op = TEXT; op <= BINARY; op++)
            for (size_t i = 0; i < PGW_ARRAY_LEN(lens); i++) {
                size_t n = lens[i];
                if (dir == 0 && n > 65535 && op == TEXT)
                    continue; /* once per direction is enough at this size */
                uint8_t *pl = malloc(n + 1);
                for (size_t j = 0; j < n; j++)
                    pl[j] = op == TEXT ? (uint8_t)('!' + j % 90) : (uint8_t)(0xFE ^ j);
                case_begin(dir, 0, "1.x %s of %zu bytes, %s frames", op_name(op), n,
                           dir ? "client" : "server");
                put((uint8_t)(FIN | op), pl, n);
                want_msg(op, pl, n);
                run_case();
                free(pl);
            }
    case_begin(1, 0, "1.x two messages, text then binary");
    put_str(FIN | TEXT, "first");
    put_str(FIN | BINARY, "\x01\x02\x03");
    put_str(FIN | TEXT, "");
    want_str(TEXT, "first");
    want_str(BINARY, "\x01\x02\x03");
    want_str(TEXT, "");
    run_case();
}

/* ---- Autobahn 2: pings and pongs ---- */

static void test_ab2_ping_pong(void)
{
    uint8_t big[126], bin[] = {0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff};
    memset(big, 0xFE, sizeof(big));
    case_begin(1, 0, "2.1 ping, empty");
    put(FIN | PING, "", 0);
    want_ctl(PING, "", 0, 0);
    run_case();
    case_begin(1, 0, "2.2 ping, text payload");
    put_str(FIN | PING, "Hello, world!");
    want_str(PING, "Hello, world!");
    run_case();
    case_begin(1, 0, "2.3 ping, binary payload");
    put(FIN | PING, bin, sizeof(bin));
    want_ctl(PING, bin, sizeof(bin), 0);
    run_case();
    case_begin(1, 0, "2.4 ping, 125 bytes");
    put(FIN | PING, big, 125);
    want_ctl(PING, big, 125, 0);
    run_case();
    case_begin(1, 0, "2.5 ping, 126 bytes");
    size_t start = put(FIN | PING, big, 126);
    want_err(PGW_WS_CLOSE_PROTOCOL, len_at(start));
    run_case();
    case_begin(1, 0, "2.5 pong, 126 bytes announced on 64 bits");
    start = put_raw(FIN | PONG, 1, 8, 126, big, 126);
    want_err(PGW_WS_CLOSE_PROTOCOL, start + 9);
    run_case();
    case_begin(1, 0, "2.7 unsolicited pong, empty");
    put(FIN | PONG, "", 0);
    want_ctl(PONG, "", 0, 0);
    run_case();
    case_begin(1, 0, "2.8-2.9 unsolicited pong, then ping");
    put_str(FIN | PONG, "unsolicited pong payload");
    put_str(FIN | PING, "ping payload");
    want_str(PONG, "unsolicited pong payload");
    want_str(PING, "ping payload");
    run_case();
    case_begin(1, 0, "2.10 ten pings");
    for (int i = 0; i < 10; i++) {
        char s[32];
        snprintf(s, sizeof(s), "payload-%d", i);
        put_str(FIN | PING, s);
        want_str(PING, s);
    }
    run_case();
    case_begin(0, 0, "2.x server ping and pong, unmasked");
    put_str(FIN | PING, "from the server");
    put(FIN | PONG, big, 125);
    want_str(PING, "from the server");
    want_ctl(PONG, big, 125, 0);
    run_case();
    case_begin(1, 0, "2.x ping between two messages");
    put_str(FIN | TEXT, "a");
    put_str(FIN | PING, "p");
    put_str(FIN | BINARY, "b");
    want_str(TEXT, "a");
    want_str(PING, "p");
    want_str(BINARY, "b");
    run_case();
}

/* ---- Autobahn 3: RSV bits ---- */

static void test_ab3_rsv(void)
{
    static const unsigned ops[] = {TEXT, BINARY, PING, PONG, CLOSE, CONT};
    for (unsigned rsv = 1; rsv <= 7; rsv++)
        for (size_t i = 0; i < PGW_ARRAY_LEN(ops); i++) {
            unsigned op = ops[i];
            case_begin(1, 0, "3.x RSV=%u on %s", rsv, op_name(op));
            put_str(FIN | TEXT, "Hello");
            want_str(TEXT, "Hello");
            if (op == CONT)
                put_str(TEXT, "Hel");
            size_t start = op == CLOSE ? put((uint8_t)(FIN | rsv << 4 | op), "\x03\xe8", 2)
                                       : put_str((uint8_t)(FIN | rsv << 4 | op), "Hello");
            put(FIN | PING, "", 0); /* never seen: the error came first */
            if (op == CONT)
                want_partial(TEXT, "Hel", 3);
            want_err(PGW_WS_CLOSE_PROTOCOL, start);
            run_case();
        }
}

/* ---- Autobahn 4: reserved opcodes ---- */

static void test_ab4_opcodes(void)
{
    static const unsigned ops[] = {3, 4, 5, 6, 7, 11, 12, 13, 14, 15};
    for (size_t i = 0; i < PGW_ARRAY_LEN(ops); i++)
        for (int variant = 0; variant < 4; variant++) {
            static const char *const what[] = {"empty", "with payload", "after a message",
                                               "not FIN"};
            case_begin(1, 0, "4.x opcode %u, %s", ops[i], what[variant]);
            if (variant == 2) {
                put_str(FIN | TEXT, "Hello");
                want_str(TEXT, "Hello");
            }
            uint8_t b0 = (uint8_t)((variant == 3 ? 0 : FIN) | ops[i]);
            size_t start = variant == 0 ? put(b0, "", 0) : put_str(b0, "reserved opcode payload");
            put(FIN | PING, "", 0);
            want_err(PGW_WS_CLOSE_PROTOCOL, start);
            run_case();
        }
}

/* ---- Autobahn 5: fragmentation ---- */

static void test_ab5_fragmentation(void)
{
    size_t start;
    case_begin(1, 0, "5.1 ping in 2 fragments");
    start = put_str(PING, "fragment1");
    put_str(FIN | CONT, "fragment2");
    want_err(PGW_WS_CLOSE_PROTOCOL, start);
    run_case();
    case_begin(1, 0, "5.2 pong in 2 fragments");
    start = put_str(PONG, "fragment1");
    put_str(FIN | CONT, "fragment2");
    want_err(PGW_WS_CLOSE_PROTOCOL, start);
    run_case();
    case_begin(1, 0, "5.x close in 2 fragments");
    start = put(CLOSE, "\x03", 1);
    put(FIN | CONT, "\xe8", 1);
    want_err(PGW_WS_CLOSE_PROTOCOL, start);
    run_case();
    case_begin(1, 0, "5.x ping not FIN inside a fragmented message");
    put_str(TEXT, "fragment1");
    start = put_str(PING, "p");
    want_partial(TEXT, "fragment1", 9);
    want_err(PGW_WS_CLOSE_PROTOCOL, start);
    run_case();
    case_begin(1, 0, "5.3 text in 2 fragments");
    put_str(TEXT, "fragment1");
    put_str(FIN | CONT, "fragment2");
    want_str(TEXT, "fragment1fragment2");
    run_case();
    case_begin(1, 0, "5.6 text in 2 fragments, ping between");
    put_str(TEXT, "fragment1");
    put_str(FIN | PING, "ping payload");
    put_str(FIN | CONT, "fragment2");
    want_str(PING, "ping payload");
    want_str(TEXT, "fragment1fragment2");
    run_case();
    case_begin(1, 0, "5.x binary in 3 fragments, close between");
    put_str(BINARY, "\x01\x02");
    put(FIN | CLOSE, "\x03\xe8" "bye", 5);
    put_str(CONT, "\x03");
    put_str(FIN | CONT, "\x04");
    want_ctl(CLOSE, "\x03\xe8" "bye", 5, 1000);
    want_str(BINARY, "\x01\x02\x03\x04");
    run_case();
    case_begin(1, 0, "5.9 continuation FIN with nothing to continue");
    start = put_str(FIN | CONT, "non-continuation payload");
    put_str(FIN | TEXT, "Hello, world!");
    want_err(PGW_WS_CLOSE_PROTOCOL, start);
    run_case();
    case_begin(1, 0, "5.12 continuation not FIN with nothing to continue");
    start = put_str(CONT, "non-continuation payload");
    put_str(FIN | TEXT, "Hello, world!");
    want_err(PGW_WS_CLOSE_PROTOCOL, start);
    run_case();
    case_begin(1, 0, "5.15 text in 2 fragments, then a stray continuation");
    put_str(TEXT, "fragment1");
    put_str(FIN | CONT, "fragment2");
    start = put_str(CONT, "fragment3");
    put_str(FIN | TEXT, "fragment4");
    want_str(TEXT, "fragment1fragment2");
    want_err(PGW_WS_CLOSE_PROTOCOL, start);
    run_case();
    case_begin(1, 0, "5.16 stray continuation, then a fragmented text");
    start = put_str(CONT, "fragment1");
    put_str(TEXT, "fragment2");
    put_str(FIN | CONT, "fragment3");
    want_err(PGW_WS_CLOSE_PROTOCOL, start);
    run_case();
    case_begin(1, 0, "5.18 text not FIN, then a new text");
    put_str(TEXT, "fragment1");
    start = put_str(FIN | TEXT, "fragment2");
    want_partial(TEXT, "fragment1", 9);
    want_err(PGW_WS_CLOSE_PROTOCOL, start);
    run_case();
    case_begin(1, 0, "5.x text not FIN, then a binary");
    put_str(TEXT, "fragment1");
    start = put_str(BINARY, "fragment2");
    want_partial(TEXT, "fragment1", 9);
    want_err(PGW_WS_CLOSE_PROTOCOL, start);
    run_case();
    case_begin(1, 0, "5.x binary not FIN, then a text after a ping");
    put_str(BINARY, "b");
    put(FIN | PING, "", 0);
    start = put_str(FIN | TEXT, "t");
    want_ctl(PING, "", 0, 0);
    want_partial(BINARY, "b", 1);
    want_err(PGW_WS_CLOSE_PROTOCOL, start);
    run_case();
    case_begin(1, 0, "5.19 text in 5 fragments, pings after the 2nd and 4th");
    const char *frag[] = {"fragment1", "fragment2", "fragment3", "fragment4", "fragment5"};
    for (int i = 0; i < 5; i++) {
        put_str((uint8_t)((i == 0 ? TEXT : CONT) | (i == 4 ? FIN : 0)), frag[i]);
        if (i == 1 || i == 3) {
            put_str(FIN | PING, i == 1 ? "pongme 1!" : "pongme 2!");
            want_str(PING, i == 1 ? "pongme 1!" : "pongme 2!");
        }
    }
    want_str(TEXT, "fragment1fragment2fragment3fragment4fragment5");
    run_case();
    case_begin(1, 0, "5.x empty fragments around a payload");
    put(TEXT, "", 0);
    put(CONT, "", 0);
    put_str(CONT, "abc");
    put(FIN | CONT, "", 0);
    want_str(TEXT, "abc");
    run_case();
    case_begin(1, 0, "5.x two fragmented messages in a row");
    put_str(BINARY, "one");
    put_str(FIN | CONT, "two");
    put_str(TEXT, "three");
    put_str(FIN | CONT, "four");
    want_str(BINARY, "onetwo");
    want_str(TEXT, "threefour");
    run_case();
    case_begin(1, 0, "5.x stream ends inside a fragmented message");
    put_str(TEXT, "frag");
    put_str(CONT, "ment");
    want_partial(TEXT, "fragment", 8);
    run_case();
    for (int kind = 0; kind < 2; kind++) {
        const char *s = "Hello, fragmented world! One frame per byte, pings now and then.";
        size_t n = strlen(s);
        unsigned op = kind ? BINARY : TEXT;
        case_begin(1, 0, "5.x %s in %zu fragments of 1 byte, pings between", op_name(op), n);
        for (size_t i = 0; i < n; i++) {
            put((uint8_t)((i == 0 ? op : CONT) | (i + 1 == n ? FIN : 0)), s + i, 1);
            if (i % 7 == 6) {
                put_str(FIN | PING, "p");
                want_str(PING, "p");
            }
        }
        want_str(op, s);
        run_case();
    }
    case_begin(1, 0, "5.x text in 600 fragments of 1 byte");
    char many[600];
    for (size_t i = 0; i < sizeof(many); i++) {
        many[i] = (char)('a' + i % 26);
        put((uint8_t)((i == 0 ? TEXT : CONT) | (i + 1 == sizeof(many) ? FIN : 0)), many + i, 1);
    }
    want_msg(TEXT, many, sizeof(many));
    run_case();
}

/* ---- Autobahn 7: close frames ---- */

static void close_case(int code, const char *reason, size_t reason_len, int want_code)
{
    uint8_t pl[200];
    pl[0] = (uint8_t)(code >> 8);
    pl[1] = (uint8_t)code;
    memcpy(pl + 2, reason, reason_len);
    case_begin(1, 0, "7.x close %d with a reason of %zu bytes", code, reason_len);
    put_str(FIN | TEXT, "Hello World");
    want_str(TEXT, "Hello World");
    size_t start = put(FIN | CLOSE, pl, 2 + reason_len);
    if (want_code == PGW_WS_CLOSE_PROTOCOL && 2 + reason_len > PGW_WS_CONTROL_MAX)
        want_err(want_code, len_at(start));
    else if (want_code == PGW_WS_CLOSE_PROTOCOL || want_code == PGW_WS_CLOSE_INVALID_DATA)
        want_err(want_code, last_byte()); /* decided when the payload is whole */
    else
        want_ctl(CLOSE, pl, 2 + reason_len, code);
    run_case();
}

static void test_ab7_close(void)
{
    static const int valid[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                                1013, 1014, 3000, 3999, 4000, 4999};
    static const int invalid[] = {0,    999,  1004, 1005, 1006, 1015, 1016, 1100,
                                  2000, 2999, 5000, 65535, 1024, 2500};
    char stars[130];
    memset(stars, '*', sizeof(stars));
    case_begin(1, 0, "7.3.1 close, empty payload");
    put(FIN | CLOSE, "", 0);
    want_ctl(CLOSE, "", 0, PGW_WS_CLOSE_NO_STATUS);
    run_case();
    case_begin(1, 0, "7.3.2 close, 1-byte payload");
    size_t start = put(FIN | CLOSE, "\x03", 1);
    want_err(PGW_WS_CLOSE_PROTOCOL, len_at(start));
    run_case();
    close_case(1000, "", 0, 0);                          /* 7.3.3 */
    close_case(1000, "Hello World!", 12, 0);             /* 7.3.4 */
    close_case(1000, stars, 123, 0);                     /* 7.3.5: 125 bytes */
    close_case(1000, stars, 124, PGW_WS_CLOSE_PROTOCOL); /* 7.3.6: 126 bytes */
    close_case(1000, KOSME "\xed\xa0\x80" "edited", 20, PGW_WS_CLOSE_INVALID_DATA); /* 7.5.1 */
    close_case(1000, "bye\xce", 4, PGW_WS_CLOSE_INVALID_DATA);
    close_case(1001, "\xf0\x9f\x98\x80", 4, 0);
    for (size_t i = 0; i < PGW_ARRAY_LEN(valid); i++) /* 7.7.x */
        close_case(valid[i], "", 0, 0);
    for (size_t i = 0; i < PGW_ARRAY_LEN(invalid); i++) /* 7.9.x, 7.13.x */
        close_case(invalid[i], "reason", 6, PGW_WS_CLOSE_PROTOCOL);
    case_begin(1, 0, "7.1.5 text fragment, close, continuation");
    put_str(TEXT, "fragment1");
    put(FIN | CLOSE, "\x03\xe8", 2);
    put_str(FIN | CONT, "fragment2");
    want_ctl(CLOSE, "\x03\xe8", 2, 1000);
    want_str(TEXT, "fragment1fragment2");
    run_case();
    case_begin(1, 0, "7.1.6 a large text, then close");
    char *large = malloc(3000);
    memset(large, 'B', 3000);
    put(FIN | TEXT, large, 3000);
    put(FIN | CLOSE, "\x03\xe8", 2);
    want_msg(TEXT, large, 3000);
    want_ctl(CLOSE, "\x03\xe8", 2, 1000);
    run_case();
    free(large);
    case_begin(0, 0, "7.x close from a server, unmasked");
    put(FIN | CLOSE, "\x03\xe9" "going", 7);
    want_ctl(CLOSE, "\x03\xe9" "going", 7, 1001);
    run_case();
    for (int code = -1; code <= 70000; code++) {
        int want = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
                   (code >= 3000 && code <= 4999);
        if (pgw_ws_close_code_valid(code) != want)
            failf("close code", "%d is %s", code, want ? "refused" : "accepted");
    }
}

/* ---- Autobahn 9: large messages ---- */

/* A <total>-byte message of <op> in frames of <frag> bytes (0: one frame). */
static uint8_t *big_message(unsigned op, size_t total, size_t frag, uint64_t max, int multibyte)
{
    uint8_t *pl = malloc(total);
    size_t body = multibyte ? total - total % 12 : 0;
    for (size_t i = 0; i < body; i += 12)
        memcpy(pl + i, KOSME "-", 12); /* characters cut by the fragments */
    if (op == TEXT) {
        memset(pl + body, '*', total - body);
    } else {
        for (size_t i = body; i < total; i += 4) {
            uint32_t r = rng() ^ (uint32_t)i << 8; /* rng() has 24 bits */
            memcpy(pl + i, &r, PGW_MIN(4, total - i));
        }
    }
    case_begin(1, max, "9.x %s of %zu bytes in %s of %zu%s", op_name(op), total,
               frag ? "fragments" : "one frame", frag ? frag : total,
               multibyte ? ", multibyte" : "");
    if (frag == 0)
        frag = total;
    for (size_t off = 0; off < total; off += frag)
        put((uint8_t)((off == 0 ? op : CONT) | (off + frag >= total ? FIN : 0)), pl + off,
            PGW_MIN(frag, total - off));
    return pl;
}

/* Seconds spent inside pgw_ws_parse for the current case fed in 64 KiB pieces, best of 5. */
static double parse_time(void)
{
    double best = 1e9;
    R.timing = 1;
    for (int i = 0; i < 5; i++) {
        run_pieces(65536);
        best = PGW_MIN(best, R.parse_secs);
    }
    R.timing = 0;
    return best;
}

static void test_ab9_large(void)
{
    static const size_t sizes[] = {0, 65536, 4096, 1 << 20, 65537, 997};
    static const size_t big_sizes[] = {65536}; /* 16 MiB: 256 chunks and more */
    for (unsigned op = TEXT; op <= BINARY; op++)
        for (int frag = 0; frag < 2; frag++) {
            uint8_t *pl = big_message(op, 1 << 20, frag ? 65536 : 0, 0, 0);
            want_msg(op, pl, 1 << 20);
            run_case_sizes(sizes, PGW_ARRAY_LEN(sizes));
            free(pl);
            pl = big_message(op, 16 << 20, frag ? 65536 : 0, 0, 0);
            want_msg(op, pl, 16 << 20);
            run_case_sizes(big_sizes, PGW_ARRAY_LEN(big_sizes));
            free(pl);
        }
    uint8_t *pl = big_message(TEXT, 1 << 20, 65535, 0, 1);
    want_msg(TEXT, pl, 1 << 20);
    run_case_sizes(sizes, PGW_ARRAY_LEN(sizes));
    free(pl);
    /* the limit at scale: exactly 16 MiB passes; one byte more fails at the last header */
    pl = big_message(BINARY, 16 << 20, 65536, 16 << 20, 0);
    want_msg(BINARY, pl, 16 << 20);
    run_case_sizes(big_sizes, PGW_ARRAY_LEN(big_sizes));
    free(pl);
    pl = big_message(BINARY, (16 << 20) + 1, 65536, 16 << 20, 0);
    size_t last = T.in.len - 1 - 6; /* the last frame: 1 byte, header of 6 */
    want_partial(BINARY, pl, 16 << 20);
    want_err(PGW_WS_CLOSE_TOO_BIG, len_at(last));
    run_case_sizes(big_sizes, PGW_ARRAY_LEN(big_sizes));
    free(pl);
}

/* 1 MiB and 16 MiB messages in 64 KiB fragments, whole. The parse times are printed at the end
 * for information only (16 times the bytes took about 17 times as long): speed is asserted in
 * benchmarks, never in unit tests, on shared machines. */
static void test_ab9_linear(void)
{
    for (unsigned op = TEXT; op <= BINARY; op++) {
        uint8_t *pl = big_message(op, 1 << 20, 65536, 0, 0);
        want_msg(op, pl, 1 << 20);
        double small = parse_time();
        free(pl);
        pl = big_message(op, 16 << 20, 65536, 0, 0);
        want_msg(op, pl, 16 << 20);
        double large = parse_time();
        free(pl);
        CHECK(check_run("timed"));
        secs_1m[op] = small, secs_16m[op] = large;
    }
}

/* ---- Direction, lengths, limits ---- */

static void test_masking_direction(void)
{
    size_t start;
    case_begin(1, 0, "client frame without a mask");
    start = put_raw(FIN | TEXT, 0, 0, 5, "Hello", 5);
    want_err(PGW_WS_CLOSE_PROTOCOL, start + 1);
    run_case();
    case_begin(1, 0, "client ping without a mask, after a message");
    put_str(FIN | BINARY, "ok");
    start = put_raw(FIN | PING, 0, 0, 0, "", 0);
    want_str(BINARY, "ok");
    want_err(PGW_WS_CLOSE_PROTOCOL, start + 1);
    run_case();
    case_begin(0, 0, "server frame with a mask");
    start = put_raw(FIN | TEXT, 1, 0, 5, "Hello", 5);
    want_err(PGW_WS_CLOSE_PROTOCOL, start + 1);
    run_case();
    case_begin(0, 0, "server frames unmasked, fragmented");
    put_str(TEXT, "Hel");
    put_str(FIN | PONG, "x");
    put_str(FIN | CONT, "lo");
    want_str(PONG, "x");
    want_str(TEXT, "Hello");
    run_case();
}

static void test_length_encodings(void)
{
    size_t start;
    uint8_t pl[300];
    memset(pl, 'z', sizeof(pl));
    case_begin(1, 0, "non-minimal lengths are accepted");
    put_raw(FIN | TEXT, 1, 2, 3, "abc", 3);
    put_raw(FIN | BINARY, 1, 8, 3, "def", 3);
    put_raw(FIN | PING, 1, 2, 5, "hello", 5);
    put_raw(FIN | CLOSE, 1, 8, 2, "\x03\xe8", 2);
    want_str(TEXT, "abc");
    want_str(BINARY, "def");
    want_str(PING, "hello");
    want_ctl(CLOSE, "\x03\xe8", 2, 1000);
    run_case();
    case_begin(1, 0, "16-bit length of 300 on 64 bits");
    put_raw(FIN | BINARY, 1, 8, 300, pl, 300);
    want_msg(BINARY, pl, 300);
    run_case();
    case_begin(1, 0, "64-bit length with the top bit set");
    start = put_raw(FIN | BINARY, 1, 8, 0x8000000000000000ull, pl, 10);
    want_err(PGW_WS_CLOSE_PROTOCOL, start + 9);
    run_case();
    case_begin(0, 0, "64-bit length, all bits set, server frame");
    start = put_raw(FIN | TEXT, 0, 8, UINT64_MAX, pl, 10);
    want_err(PGW_WS_CLOSE_PROTOCOL, start + 9);
    run_case();
    case_begin(1, 0, "control frame of 126 bytes on 16 bits");
    start = put_raw(FIN | PING, 1, 2, 126, pl, 126);
    want_err(PGW_WS_CLOSE_PROTOCOL, start + 3);
    run_case();

    /* a 2^62-byte frame is fine until a limit says otherwise: its first bytes come out */
    struct pgw_ws_parser p;
    struct pgw_ws_chunk c;
    size_t used;
    uint8_t frame[24] = {FIN | BINARY, 127, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6};
    pgw_ws_parser_init(&p, 0, 0);
    CHECK_INT(pgw_ws_parse(&p, frame, 16, &used, &c), PGW_OK);
    CHECK_INT(used, 16);
    CHECK_INT(c.len, 6);
    CHECK(c.first && !c.fin && !c.frame_end && c.opcode == BINARY && c.data == frame + 10);
    CHECK(p.frame_left == (1ull << 62) - 6);
    CHECK_INT(pgw_ws_parse(&p, frame, 0, &used, &c), PGW_AGAIN);
    CHECK_INT(used, 0);
    CHECK_INT(pgw_ws_parse(&p, frame + 16, 8, &used, &c), PGW_OK);
    CHECK(c.len == 8 && !c.first && !c.fin && !c.frame_end);
    pgw_ws_parser_init(&p, 0, (uint64_t)1 << 40);
    CHECK_INT(pgw_ws_parse(&p, frame, 16, &used, &c), PGW_ERR);
    CHECK_INT(p.close_code, PGW_WS_CLOSE_TOO_BIG);
}

static void test_max_message(void)
{
    uint8_t pl[2000];
    size_t start;
    for (size_t i = 0; i < sizeof(pl); i++)
        pl[i] = (uint8_t)('a' + i % 26);
    case_begin(1, 1000, "max_message: exactly the limit, twice");
    put(FIN | TEXT, pl, 1000);
    put(FIN | BINARY, pl, 1000);
    want_msg(TEXT, pl, 1000);
    want_msg(BINARY, pl, 1000);
    run_case();
    case_begin(1, 1000, "max_message: one byte more");
    start = put(FIN | BINARY, pl, 1001);
    want_err(PGW_WS_CLOSE_TOO_BIG, len_at(start));
    run_case();
    case_begin(1, 100, "max_message: one byte more, 7-bit length");
    start = put(FIN | TEXT, pl, 101);
    want_err(PGW_WS_CLOSE_TOO_BIG, len_at(start));
    run_case();
    case_begin(1, 1000, "max_message: fragments up to the limit, pings between");
    put(TEXT, pl, 600);
    put(FIN | PING, pl, 125);
    put(CONT, pl + 600, 0);
    put(FIN | CONT, pl + 600, 400);
    want_ctl(PING, pl, 125, 0);
    want_msg(TEXT, pl, 1000);
    run_case();
    case_begin(1, 1000, "max_message: fragments one byte past the limit");
    put(BINARY, pl, 600);
    put(CONT, pl + 600, 399);
    start = put(FIN | CONT, pl + 999, 2);
    want_partial(BINARY, pl, 999);
    want_err(PGW_WS_CLOSE_TOO_BIG, len_at(start));
    run_case();
    case_begin(1, 1, "max_message 1: empty and 1-byte messages");
    put(FIN | TEXT, "", 0);
    put(FIN | TEXT, "x", 1);
    put(BINARY, "", 0);
    put(FIN | CONT, "y", 1);
    start = put(FIN | TEXT, "zz", 2);
    want_str(TEXT, "");
    want_str(TEXT, "x");
    want_str(BINARY, "y");
    want_err(PGW_WS_CLOSE_TOO_BIG, len_at(start));
    run_case();
    case_begin(0, 125, "max_message does not apply to control frames");
    put(FIN | CLOSE, "\x03\xe8" "0123456789", 12);
    want_ctl(CLOSE, "\x03\xe8" "0123456789", 12, 1000);
    run_case();
}

/* ---- Chunks, calls, errors ---- */

static void test_chunk_flags(void)
{
    /* text "Hel" + ping + "lo" (FIN), server frames, fed whole */
    uint8_t s[] = {TEXT, 3, 'H', 'e', 'l', FIN | PING, 1, '!', FIN | CONT, 2, 'l', 'o'};
    struct pgw_ws_parser p;
    struct pgw_ws_chunk c;
    size_t used;
    pgw_ws_parser_init(&p, 0, 0);
    CHECK_INT(pgw_ws_parse(&p, s, sizeof(s), &used, &c), PGW_OK);
    CHECK_INT(used, 5);
    CHECK(c.opcode == TEXT && c.len == 3 && c.data == s + 2 && c.first && !c.fin && c.frame_end);
    CHECK(p.msg_started && p.msg_opcode == TEXT);
    CHECK_INT(pgw_ws_parse(&p, s + 5, sizeof(s) - 5, &used, &c), PGW_OK);
    CHECK_INT(used, 3);
    CHECK(c.opcode == PING && c.len == 1 && c.data == p.ctl && c.first && c.fin && c.frame_end);
    CHECK_INT(pgw_ws_parse(&p, s + 8, sizeof(s) - 8, &used, &c), PGW_OK);
    CHECK_INT(used, 4);
    CHECK(c.opcode == TEXT && c.len == 2 && c.data == s + 10 && !c.first && c.fin && c.frame_end);
    CHECK(p.msg_opcode == 0);
    CHECK_INT(pgw_ws_parse(&p, s + 12, 0, &used, &c), PGW_AGAIN);
    CHECK_INT(used, 0);

    /* a frame cut in its payload: one chunk per call, flags on the right one */
    uint8_t t[] = {FIN | BINARY, 6, 1, 2, 3, 4, 5, 6};
    pgw_ws_parser_init(&p, 0, 0);
    CHECK_INT(pgw_ws_parse(&p, t, 2, &used, &c), PGW_AGAIN); /* the header alone */
    CHECK_INT(used, 2);
    CHECK_INT(pgw_ws_parse(&p, t + 2, 4, &used, &c), PGW_OK);
    CHECK(used == 4 && c.len == 4 && c.first && !c.fin && !c.frame_end);
    CHECK_INT(pgw_ws_parse(&p, t + 6, 2, &used, &c), PGW_OK);
    CHECK(used == 2 && c.len == 2 && !c.first && c.fin && c.frame_end && c.data[1] == 6);

    /* a masked frame: the payload unmasked in place; a control frame collected across calls */
    uint8_t m[] = {FIN | TEXT, 0x83, 0x11, 0x22, 0x33, 0x44, 'a' ^ 0x11, 'b' ^ 0x22, 'c' ^ 0x33,
                   FIN | PING, 0x82, 0x11, 0x22, 0x33, 0x44, 'p' ^ 0x11, 'q' ^ 0x22};
    pgw_ws_parser_init(&p, 1, 0);
    CHECK_INT(pgw_ws_parse(&p, m, 8, &used, &c), PGW_OK);
    CHECK(used == 8 && c.len == 2 && memcmp(m + 6, "ab", 2) == 0 && !c.frame_end);
    CHECK_INT(pgw_ws_parse(&p, m + 8, 8, &used, &c), PGW_OK);
    CHECK(used == 1 && c.len == 1 && m[8] == 'c' && c.fin);
    CHECK_INT(pgw_ws_parse(&p, m + 9, 7, &used, &c), PGW_AGAIN);
    CHECK_INT(pgw_ws_parse(&p, m + 16, 1, &used, &c), PGW_OK);
    CHECK(c.opcode == PING && c.len == 2 && memcmp(c.data, "pq", 2) == 0);
}

static void test_errors(void)
{
    static const struct {
        uint8_t frame[4];
        size_t len;
        int from_client, code;
        const char *err;
    } cases[] = {
        {{FIN | RSV1 | TEXT, 0}, 2, 0, 1002, "RSV bits set"},
        {{FIN | 3, 0}, 2, 0, 1002, "reserved opcode"},
        {{FIN | 0xB, 0}, 2, 0, 1002, "reserved opcode"},
        {{PING, 0}, 2, 0, 1002, NULL},
        {{FIN | CONT, 0}, 2, 0, 1002, NULL},
        {{FIN | TEXT, 0x80}, 2, 0, 1002, NULL},
        {{FIN | TEXT, 0x00}, 2, 1, 1002, NULL},
        {{FIN | CLOSE, 1, 3}, 3, 0, 1002, NULL},
        {{FIN | TEXT, 1, 0xff}, 3, 0, 1007, NULL},
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(cases); i++) {
        struct pgw_ws_parser p;
        struct pgw_ws_chunk c;
        size_t used;
        uint8_t b[4];
        memcpy(b, cases[i].frame, 4);
        pgw_ws_parser_init(&p, cases[i].from_client, 0);
        CHECK_INT(pgw_ws_parse(&p, b, cases[i].len, &used, &c), PGW_ERR);
        CHECK_INT(p.close_code, cases[i].code);
        CHECK(p.err != NULL && strlen(p.err) > 0 && strlen(p.err) < 60);
        if (cases[i].err != NULL && p.err != NULL)
            CHECK(strcmp(p.err, cases[i].err) == 0);
        const char *err = p.err;
        uint8_t ok[2] = {FIN | TEXT, 0};
        CHECK_INT(pgw_ws_parse(&p, ok, 2, &used, &c), PGW_ERR);
        CHECK_INT(pgw_ws_parse(&p, ok, 0, &used, &c), PGW_ERR);
        CHECK(p.err == err && p.close_code == cases[i].code);
    }
}

/* ---- Writing frames ---- */

static void test_frame_header(void)
{
    static const uint8_t key[4] = {0xA1, 0xB2, 0xC3, 0xD4};
    uint8_t h[PGW_WS_HEADER_MAX];
    CHECK_MEM(h, pgw_ws_frame_header(h, TEXT, 1, 0, NULL), "\x81\x00");
    CHECK_MEM(h, pgw_ws_frame_header(h, BINARY, 0, 125, NULL), "\x02\x7d");
    CHECK_MEM(h, pgw_ws_frame_header(h, TEXT, 1, 126, NULL), "\x81\x7e\x00\x7e");
    CHECK_MEM(h, pgw_ws_frame_header(h, CONT, 0, 65535, NULL), "\x00\x7e\xff\xff");
    CHECK_MEM(h, pgw_ws_frame_header(h, TEXT, 1, 65536, NULL),
              "\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00");
    CHECK_MEM(h, pgw_ws_frame_header(h, BINARY, 1, 0x0102030405060708ull, NULL),
              "\x82\x7f\x01\x02\x03\x04\x05\x06\x07\x08");
    CHECK_MEM(h, pgw_ws_frame_header(h, BINARY, 1, INT64_MAX, NULL),
              "\x82\x7f\x7f\xff\xff\xff\xff\xff\xff\xff");
    CHECK_MEM(h, pgw_ws_frame_header(h, PING, 1, 5, key), "\x89\x85\xa1\xb2\xc3\xd4");
    CHECK_MEM(h, pgw_ws_frame_header(h, CLOSE, 1, 126, key), "\x88\xfe\x00\x7e\xa1\xb2\xc3\xd4");
    CHECK_MEM(h, pgw_ws_frame_header(h, TEXT, 0, 65536, key),
              "\x01\xff\x00\x00\x00\x00\x00\x01\x00\x00\xa1\xb2\xc3\xd4");
    CHECK_INT(pgw_ws_frame_header(h, PONG, 1, 1ull << 40, key), PGW_WS_HEADER_MAX);
}

/* Frames written with pgw_ws_frame_header and pgw_ws_mask (in two pieces, so every key offset
 * is used) come back out of the parser as they went in. */
static void test_frame_roundtrip(void)
{
    static const size_t lens[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 125, 126, 127, 1000,
                                  65535, 65536, 70001};
    uint8_t *pl = malloc(70001), *frame = malloc(70001 + PGW_WS_HEADER_MAX);
    for (size_t i = 0; i < 70001; i++)
        pl[i] = (uint8_t)rng();
    for (size_t l = 0; l < PGW_ARRAY_LEN(lens); l++)
        for (int masked = 0; masked < 2; masked++)
            for (size_t cut = 0; cut < 8 && cut <= lens[l]; cut++) {
                size_t n = lens[l];
                uint8_t key[4] = {(uint8_t)rng(), (uint8_t)rng(), (uint8_t)rng(), (uint8_t)rng()};
                size_t hl = pgw_ws_frame_header(frame, BINARY, 1, n, masked ? key : NULL);
                memcpy(frame + hl, pl, n);
                if (masked) {
                    unsigned off = pgw_ws_mask(frame + hl, cut, key, 0);
                    CHECK_INT(off, cut % 4);
                    CHECK_INT(pgw_ws_mask(frame + hl + cut, n - cut, key, off), n % 4);
                }
                struct pgw_ws_parser p;
                struct pgw_ws_chunk c;
                size_t used;
                pgw_ws_parser_init(&p, masked, 0);
                CHECK_INT(pgw_ws_parse(&p, frame, hl + n, &used, &c), PGW_OK);
                CHECK(used == hl + n && c.len == n && c.fin && c.first);
                CHECK(n == 0 || memcmp(c.data, pl, n) == 0);
            }
    free(pl);
    free(frame);
}

static void test_mask(void)
{
    static const uint8_t key[4] = {0x12, 0x34, 0x56, 0x78};
    uint8_t src[128];
    for (size_t i = 0; i < sizeof(src); i++)
        src[i] = (uint8_t)(i * 37 + 5);
    for (size_t align = 0; align < 8; align++)
        for (size_t n = 0; n <= 100; n++) /* past the 32- and 8-byte steps and their tails */
            for (unsigned off = 0; off < 4; off++) {
                uint8_t *b = malloc(align + n > 0 ? align + n : 1); /* ASan guards the end */
                uint8_t *d = malloc(align + n > 0 ? align + n : 1);
                memcpy(b + align, src, n);
                CHECK_INT(pgw_ws_mask(b + align, n, key, off), (off + n) % 4);
                for (size_t i = 0; i < n; i++)
                    if (b[align + i] != (src[i] ^ key[(off + i) % 4])) {
                        failf("mask", "align %zu len %zu off %u: byte %zu", align, n, off, i);
                        break;
                    }
                /* copy and mask in one pass: the same bytes, the source untouched */
                CHECK_INT(pgw_ws_mask_copy(d + align, src, n, key, off), (off + n) % 4);
                CHECK(n == 0 || memcmp(d + align, b + align, n) == 0);
                free(d);
                CHECK_INT(pgw_ws_mask(b + align, n, key, off), (off + n) % 4);
                CHECK(n == 0 || memcmp(b + align, src, n) == 0); /* XOR twice: the original */
                free(b);
            }
    /* in pieces of every size, chaining the offset: the same as in one go */
    uint8_t whole[300], parts[300];
    for (size_t i = 0; i < sizeof(whole); i++)
        whole[i] = parts[i] = (uint8_t)rng();
    pgw_ws_mask(whole, sizeof(whole), key, 0);
    for (size_t step = 1; step <= 23; step++) {
        uint8_t b[300];
        memcpy(b, parts, sizeof(b));
        unsigned off = 0;
        for (size_t at = 0; at < sizeof(b); at += step)
            off = pgw_ws_mask(b + at, PGW_MIN(step, sizeof(b) - at), key, off);
        CHECK(memcmp(b, whole, sizeof(b)) == 0);
    }
}

/* ---- Close payloads ---- */

/* Builds a close payload from <reason> and checks it: code first, then the longest prefix of the
 * reason that fits and ends on a character. Returns the reason's length in the payload. */
static size_t close_payload_len(int code, const char *reason, size_t n)
{
    uint8_t out[PGW_WS_CONTROL_MAX + 8];
    memset(out, 0xEE, sizeof(out));
    size_t len = pgw_ws_close_payload(out, code, reason, n);
    CHECK(len >= 2 && len <= PGW_WS_CONTROL_MAX);
    CHECK(out[0] == (uint8_t)(code >> 8) && out[1] == (uint8_t)code);
    CHECK(memcmp(out + 2, reason, len - 2) == 0);
    CHECK(out[len] == 0xEE || len == PGW_WS_CONTROL_MAX); /* nothing written past it */
    return len - 2;
}

static void test_close_payload(void)
{
    char r[300];
    memset(r, 'r', sizeof(r));
    uint8_t out[PGW_WS_CONTROL_MAX];
    CHECK_MEM(out, pgw_ws_close_payload(out, 1000, "bye", 3), "\x03\xe8" "bye");
    CHECK_MEM(out, pgw_ws_close_payload(out, 4999, NULL, 0), "\x13\x87");
    CHECK_INT(close_payload_len(1001, r, 123), 123);
    CHECK_INT(close_payload_len(1001, r, 124), 123);
    CHECK_INT(close_payload_len(1001, r, 300), 123);
    memcpy(r + 122, "\xc3\xa9", 2); /* é over the limit: dropped whole */
    CHECK_INT(close_payload_len(1000, r, 124), 122);
    memcpy(r + 121, "\xe2\x82\xac", 3); /* € */
    CHECK_INT(close_payload_len(1000, r, 124), 121);
    memcpy(r + 120, "\xf0\x9f\x98\x80", 4); /* 😀 */
    CHECK_INT(close_payload_len(1000, r, 124), 120);
    memset(r, 'r', sizeof(r));
    memcpy(r + 119, "\xf0\x9f\x98\x80", 4); /* ends exactly at 123 */
    CHECK_INT(close_payload_len(1000, r, 200), 123);
    memcpy(r + 123, "\xc3\xa9", 2); /* starts right after the limit: nothing to drop */
    CHECK_INT(close_payload_len(1000, r, 125), 123);
    /* every alignment of 2-, 3- and 4-byte characters against the limit */
    static const char *const chars[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    for (size_t c = 0; c < 3; c++)
        for (size_t lead = 0; lead < 8; lead++) {
            size_t cl = c + 2, n = lead;
            memset(r, 'a', lead);
            while (n + cl <= sizeof(r)) {
                memcpy(r + n, chars[c], cl);
                n += cl;
            }
            size_t got = close_payload_len(1000, r, n);
            struct pgw_utf8 u;
            pgw_utf8_init(&u);
            CHECK(pgw_utf8_feed(&u, (const uint8_t *)r, got) == PGW_OK && pgw_utf8_complete(&u));
            CHECK(got <= 123 && got + cl > 123); /* the longest that fits */
        }
    /* not UTF-8: at most 3 bytes backed off */
    memset(r, 0x80, sizeof(r));
    CHECK_INT(close_payload_len(1000, r, 200), 120);
    /* a built payload is a valid close frame */
    memset(r, 'x', sizeof(r));
    memcpy(r + 121, "\xe2\x82\xac", 3);
    size_t n = pgw_ws_close_payload(out, 1001, r, 200);
    case_begin(0, 0, "close payload roundtrip");
    put(FIN | CLOSE, out, n);
    want_ctl(CLOSE, out, n, 1001);
    run_case();
}

/* ---- Handshake values ---- */

static void test_key_valid(void)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char k[32] = "dGhlIHNhbXBsZSBub25jZQ==";
    CHECK(pgw_ws_key_valid(k, 24));
    CHECK(pgw_ws_key_valid("AAAAAAAAAAAAAAAAAAAAAB==", 24)); /* low bits need not be zero */
    CHECK(pgw_ws_key_valid("++++++++++++++++++++//==", 24));
    CHECK(!pgw_ws_key_valid(k, 23));
    CHECK(!pgw_ws_key_valid("dGhlIHNhbXBsZSBub25jZQ=", 23));
    CHECK(!pgw_ws_key_valid("dGhlIHNhbXBsZSBub25jZQ===", 25));
    CHECK(!pgw_ws_key_valid("dGhlIHNhbXBsZSBub25jZQ=A", 24));
    CHECK(!pgw_ws_key_valid("dGhlIHNhbXBsZSBub25jZQAA", 24)); /* no padding */
    CHECK(!pgw_ws_key_valid("dGhlIHNhbXBsZSBub25jZ===", 24));
    CHECK(!pgw_ws_key_valid("dGhlIHNhbXBsZSBub25jZ-_==", 24));
    CHECK(!pgw_ws_key_valid("dGhlIHNhbXBsZSBub25jZQ==", 0));
    CHECK(!pgw_ws_key_valid("", 0));
    for (size_t pos = 0; pos < 24; pos++) /* every byte at every position */
        for (int b = 0; b < 256; b++) {
            char t[24];
            memcpy(t, k, 24);
            t[pos] = (char)b;
            int want = pos < 22 ? b != 0 && strchr(b64, b) != NULL : b == '=';
            if (pgw_ws_key_valid(t, 24) != want)
                failf("key", "byte 0x%02x at %zu", b, pos);
        }
}

static void test_accept(void)
{
    char out[29];
    memset(out, 'x', sizeof(out));
    pgw_ws_accept("dGhlIHNhbXBsZSBub25jZQ==", 24, out);
    CHECK_MEM(out, strlen(out), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    pgw_ws_accept("x3JJHMbDL1EzLkh9GBhXDw==", 24, out);
    CHECK_MEM(out, strlen(out), "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
    pgw_ws_accept("AAAAAAAAAAAAAAAAAAAAAA==XYZ", 24, out); /* only key_len bytes */
    CHECK_MEM(out, strlen(out), "ICX+Yqv66kxgM0FcWaLWlFLwTAI=");
}

static void test_list_has(void)
{
    CHECK(pgw_ws_list_has("websocket", 9, "websocket", 9, 0));
    CHECK(pgw_ws_list_has("keep-alive, Upgrade", 19, "upgrade", 7, 1));
    CHECK(!pgw_ws_list_has("keep-alive, Upgrade", 19, "upgrade", 7, 0));
    CHECK(pgw_ws_list_has("keep-alive, Upgrade", 19, "Upgrade", 7, 0));
    CHECK(pgw_ws_list_has(", ,\tUPGRADE\t ,", 14, "upgrade", 7, 1));
    CHECK(pgw_ws_list_has(",,keep-alive,,", 14, "keep-alive", 10, 0));
    CHECK(!pgw_ws_list_has("", 0, "upgrade", 7, 1));
    CHECK(!pgw_ws_list_has(NULL, 0, "upgrade", 7, 1));
    CHECK(!pgw_ws_list_has(" , ,\t", 5, "", 0, 0)); /* empty items are skipped, not matched */
    CHECK(!pgw_ws_list_has("upgradex", 8, "upgrade", 7, 1));
    CHECK(!pgw_ws_list_has("xupgrade", 8, "upgrade", 7, 1));
    CHECK(!pgw_ws_list_has("up grade", 8, "upgrade", 7, 1));
    CHECK(pgw_ws_list_has("a b, c", 6, "a b", 3, 0));
    CHECK(pgw_ws_list_has("chat, superchat", 15, "superchat", 9, 0));
    CHECK(pgw_ws_list_has("chat, superchat", 15, "chat", 4, 0));
    CHECK(!pgw_ws_list_has("chat, superchat", 15, "super", 5, 0));
    CHECK(!pgw_ws_list_has("chat, superchat", 4, "superchat", 9, 0)); /* <len> bounds it */
    CHECK(pgw_ws_list_has("chat, superchat", 4, "chat", 4, 0));
    CHECK(!pgw_ws_list_has("chat, superchat", 3, "chat", 4, 0));
    CHECK(pgw_ws_list_has("x,y", 3, "y", 1, 0));
    CHECK(pgw_ws_list_has("13, 8, 7", 8, "13", 2, 0));
    CHECK(!pgw_ws_list_has("13, 8, 7", 8, "1", 1, 0));
}

int main(void)
{
    ref_build();
    RUN(test_utf8_reference_sanity);
    RUN(test_utf8_code_points);
    RUN(test_utf8_exhaustive);
    RUN(test_utf8_ascii_runs);
    RUN(test_utf8_sticky);
    RUN(test_ab1_framing);
    RUN(test_ab2_ping_pong);
    RUN(test_ab3_rsv);
    RUN(test_ab4_opcodes);
    RUN(test_ab5_fragmentation);
    RUN(test_ab6_utf8);
    RUN(test_ab7_close);
    RUN(test_ab9_large);
    RUN(test_ab9_linear);
    RUN(test_masking_direction);
    RUN(test_length_encodings);
    RUN(test_max_message);
    RUN(test_chunk_flags);
    RUN(test_errors);
    RUN(test_frame_header);
    RUN(test_frame_roundtrip);
    RUN(test_mask);
    RUN(test_close_payload);
    RUN(test_key_valid);
    RUN(test_accept);
    RUN(test_list_has);
    ref_free();
    bytes_free(&T.in);
    outcome_free(&T.want);
    outcome_free(&R.got);
    printf("ws: %ld stream cases, %ld feedings; parsing 1 / 16 MiB: text %.1f / %.1f ms, "
           "binary %.1f / %.1f ms\n", cases_run, feedings_run, secs_1m[TEXT] * 1e3,
           secs_16m[TEXT] * 1e3, secs_1m[BINARY] * 1e3, secs_16m[BINARY] * 1e3);
    return TEST_REPORT("ws");
}
