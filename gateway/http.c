/* http.c: the strict HTTP/1.1 head parsers, the chunked decoder and the proxy helpers (http.h).
 *
 * The head parsers are picohttpparser-shaped: stateless, they reparse from the start of the buffer
 * on every call, in one forward pass. Byte classes come from 256-entry tables; field values and
 * targets are skipped 8 bytes at a time while no byte in the word needs a closer look. Every
 * rejection is decided on the first offending byte, so a prefix of a bad head is already rejected
 * when that byte arrived, and a prefix of a good head is always PGW_AGAIN.
 */
#include "http.h"

#include <limits.h>

#define EMPTY_LINES_MAX 4 /* RFC 9112 2.2: ignore at least one empty line before a request */
#define DEFAULT_REQUEST_LINE 8192
#define DEFAULT_HEADER_SECTION 32768
#define DEFAULT_HEADER_FIELDS 100

typedef unsigned char uchar;

/* ---- Byte classes ---- */

/* 1: tchar (RFC 9110 5.6.2) other than '_', 2: '_' (names treat it apart) */
static const unsigned char token_tab[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0,
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 2,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 0,
    /* 0x80-0xff: 0 */
};

/* 1: field-value byte: HTAB, SP, VCHAR, obs-text (no CTL, no DEL) */
static const unsigned char value_tab[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

/* target byte, VCHAR but '#': bit 1 ends the path ('?' lacks it), bit 0 query */
static const unsigned char target_tab[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 3, 3, 0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0,
    /* 0x80-0xff: 0 */
};

/* hex digit value, 255 for anything else */
static const unsigned char hex_tab[256] = {
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255, 255, 255, 255, 255, 255,
    255, 10, 11, 12, 13, 14, 15, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 10, 11, 12, 13, 14, 15, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
};

/* bit 0: reg-name byte we accept (ALPHA DIGIT - . _ ~), bit 1: IP-literal byte */
static const unsigned char host_tab[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 0,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 0, 0, 0, 0, 0,
    0, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1,
    0, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0,
    /* 0x80-0xff: 0 */
};

static const char slash[] = "/";

/* SWAR helpers: whether any byte of the 64-bit word <x> is zero / below <n> (n <= 0x80). Exact
 * for "any", which is all we ask: the byte loop that follows finds which one. */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull
#define HAS_ZERO(x) (((x) - ONES) & ~(x) & HIGHS)
#define HAS_LESS(x, n) (((x) - ONES * (n)) & ~(x) & HIGHS)

static inline uint64_t load64(const char *p)
{
    uint64_t x;
    memcpy(&x, p, sizeof(x)); /* an unaligned load on every target we build for */
    return x;
}

/* Skips field-value bytes (value_tab). Words without CTL or DEL go 8 at a time; a HTAB sends the
 * rest of the value to the byte loop, which is rare enough not to matter. */
static inline const char *skip_value(const char *p, const char *end)
{
    while (end - p >= 8) {
        uint64_t x = load64(p);
        if (HAS_LESS(x, 0x20) | HAS_ZERO(x ^ (ONES * 0x7f)))
            break;
        p += 8;
    }
    while (p < end && value_tab[(uchar)*p])
        p++;
    return p;
}

/* Skips target bytes that have <bit> in target_tab: 2 stops at '?' (path), 1 does not (query). */
static inline const char *skip_target(const char *p, const char *end, unsigned bit)
{
    uint64_t q = bit == 2 ? ONES * '?' : ONES * '#'; /* the query loop tests '#' twice: harmless */
    while (end - p >= 8) {
        uint64_t x = load64(p);
        if ((HAS_LESS(x, 0x21) | (x & HIGHS) | HAS_ZERO(x ^ (ONES * 0x7f)) |
             HAS_ZERO(x ^ (ONES * '#')) | HAS_ZERO(x ^ q)))
            break;
        p += 8;
    }
    while (p < end && (target_tab[(uchar)*p] & bit))
        p++;
    return p;
}

static inline int is_ows(int c) { return c == ' ' || c == '\t'; }

/* Case-insensitive comparison with a lowercase literal. */
static int ieq(const char *p, size_t n, const char *lit, size_t lit_len)
{
    if (n != lit_len)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (pgw_lower((uchar)p[i]) != lit[i])
            return 0;
    return 1;
}
#define IEQ(p, n, lit) ieq((p), (n), (lit), sizeof(lit) - 1)

/* Next element of a comma-separated list (RFC 9110 5.6.1) in [*pp, end), OWS trimmed; empty
 * elements are returned too (callers skip them). *pp starts at the list and becomes NULL after
 * the last element. Returns 0 when the list is exhausted. */
static int next_elem(const char **pp, const char *end, const char **elem, size_t *elem_len)
{
    const char *p = *pp;
    if (p == NULL)
        return 0;
    while (p < end && is_ows((uchar)*p))
        p++;
    const char *s = p;
    while (p < end && *p != ',')
        p++;
    const char *e = p;
    while (e > s && is_ows((uchar)e[-1]))
        e--;
    *elem = s;
    *elem_len = (size_t)(e - s);
    *pp = p < end ? p + 1 : NULL; /* past the comma, or exhausted */
    return 1;
}

static int is_token(const char *p, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!token_tab[(uchar)p[i]])
            return 0;
    return 1;
}

/* host[:port] as RFC 3986 allows it in Host and authorities, narrowed: reg-names of ALPHA DIGIT
 * - . _ ~ only (no pct-encoding, no sub-delims, so no list and no userinfo), IPv6 literals in
 * brackets, a port of 1 to 5 digits up to 65535, required when <need_port>. */
static int valid_host(const char *p, size_t n, int need_port)
{
    const char *end = p + n, *h = p;
    if (n == 0)
        return 0;
    if (*p == '[') {
        int colons = 0;
        for (p++; p < end && (host_tab[(uchar)*p] & 2); p++)
            colons += *p == ':';
        if (p == end || *p != ']' || colons < 2)
            return 0;
        p++;
    } else {
        while (p < end && (host_tab[(uchar)*p] & 1))
            p++;
        if (p == h)
            return 0;
    }
    if (p == end)
        return !need_port;
    if (*p != ':' || end - p < 2 || end - p > 6)
        return 0;
    unsigned port = 0;
    for (p++; p < end; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        port = port * 10 + (unsigned)(*p - '0');
    }
    return port <= 65535;
}

/* Content-Length: 1 to 19 digits (so no uint64_t overflow), at most INT64_MAX. */
static int parse_length(const char *p, size_t n, uint64_t *out)
{
    uint64_t x = 0;
    if (n == 0 || n > 19)
        return PGW_ERR;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)((uchar)p[i] - '0');
        if (d > 9)
            return PGW_ERR;
        x = x * 10 + d;
    }
    if (x > (uint64_t)INT64_MAX)
        return PGW_ERR;
    *out = x;
    return PGW_OK;
}

/* ---- Head parsing, shared by requests and responses ---- */

/* One parse: where the head may end and how the error is reported. */
struct scan {
    const char *buf;
    const char *end; /* min(buf + len, buf + header_section) */
    int truncated;   /* end is the header_section bound: running out is 431, not PGW_AGAIN */
    int status;
    const char *err;
};

/* What the field lines said about framing and connection handling, gathered during the pass. */
struct head {
    uint64_t content_length;
    const char *host;
    size_t host_len;
    unsigned cl_count;
    unsigned host_count;
    unsigned te_count;       /* Transfer-Encoding fields */
    unsigned te_chunked : 1; /* chunked seen in the list */
    unsigned te_last_chunked : 1;
    unsigned te_unknown : 1; /* a coding other than chunked */
    unsigned conn_close : 1;
    unsigned conn_keep_alive : 1;
    unsigned conn_upgrade : 1;
    unsigned has_upgrade : 1;
    unsigned expect_continue : 1;
};

enum { F_REQUEST = 1, F_DROP_UNDERSCORES = 2 };

static int fail(struct scan *sc, int status, const char *err)
{
    sc->status = status;
    sc->err = err;
    return PGW_ERR;
}

/* The input ended before the head did. */
static int ran_out(struct scan *sc)
{
    return sc->truncated ? fail(sc, 431, "header section too large") : PGW_AGAIN;
}

/* Consumes a line ending at *pp (CRLF or bare LF). PGW_OK, PGW_AGAIN/431, or 400 for bare CR. */
static int line_end(struct scan *sc, const char **pp)
{
    const char *p = *pp;
    if (*p == '\n') {
        *pp = p + 1;
        return PGW_OK;
    }
    if (p + 1 == sc->end)
        return ran_out(sc);
    if (p[1] != '\n')
        return fail(sc, 400, "bare CR");
    *pp = p + 2;
    return PGW_OK;
}

static int note_te(struct scan *sc, struct head *h, const char *v, size_t n)
{
    const char *p = v, *e;
    size_t elen;
    h->te_count++;
    while (next_elem(&p, v + n, &e, &elen)) {
        if (elen == 0)
            continue; /* RFC 9110 5.6.1: empty list elements do not count */
        if (!is_token(e, elen))
            return fail(sc, 400, "bad Transfer-Encoding (parameters or non-token)");
        if (IEQ(e, elen, "chunked")) {
            if (h->te_chunked)
                return fail(sc, 400, "chunked applied twice");
            h->te_chunked = 1;
            h->te_last_chunked = 1;
        } else {
            h->te_unknown = 1;
            h->te_last_chunked = 0;
        }
    }
    return PGW_OK;
}

static void note_connection(struct head *h, const char *v, size_t n)
{
    const char *p = v, *e;
    size_t elen;
    while (next_elem(&p, v + n, &e, &elen)) {
        if (IEQ(e, elen, "close"))
            h->conn_close = 1;
        else if (IEQ(e, elen, "keep-alive"))
            h->conn_keep_alive = 1;
        else if (IEQ(e, elen, "upgrade"))
            h->conn_upgrade = 1;
    }
}

/* The fields that change how the message is framed or handled. Dispatching on the length first
 * keeps the common case (none of them) at one switch. */
static int note_field(struct scan *sc, struct head *h, const char *name, size_t name_len,
                      const char *value, size_t value_len, unsigned flags)
{
    switch (name_len) {
    case 4:
        if ((flags & F_REQUEST) && IEQ(name, name_len, "host")) {
            if (h->host_count++)
                return fail(sc, 400, "two Host fields");
            if (value_len == 0)
                return fail(sc, 400, "empty Host");
            if (!valid_host(value, value_len, 0))
                return fail(sc, 400, "bad Host");
            h->host = value;
            h->host_len = value_len;
        }
        break;
    case 6:
        if ((flags & F_REQUEST) && IEQ(name, name_len, "expect") &&
            IEQ(value, value_len, "100-continue"))
            h->expect_continue = 1;
        break;
    case 7:
        if (IEQ(name, name_len, "upgrade"))
            h->has_upgrade = 1;
        break;
    case 10:
        if (IEQ(name, name_len, "connection"))
            note_connection(h, value, value_len);
        break;
    case 14:
        if (IEQ(name, name_len, "content-length")) {
            if (h->cl_count++)
                return fail(sc, 400, "two Content-Length fields");
            if (parse_length(value, value_len, &h->content_length) != PGW_OK)
                return fail(sc, 400, "bad Content-Length");
        }
        break;
    case 17:
        if (IEQ(name, name_len, "transfer-encoding"))
            return note_te(sc, h, value, value_len);
        break;
    }
    return PGW_OK;
}

/* Why a field name stopped at byte <c>, which is not ':'. */
static const char *bad_name_reason(int c)
{
    if (c == ' ' || c == '\t')
        return "whitespace before the colon";
    if (c == '\r' || c == '\n')
        return "field line without a colon";
    if (c == '_')
        return "underscore in a field name";
    return "bad byte in a field name";
}

/* Parses field lines from <p> up to and including the empty line. Returns the head's length,
 * PGW_AGAIN or PGW_ERR (sc->status, sc->err). */
static int parse_fields(struct scan *sc, const char *p, struct head *h,
                        struct pgw_http_header *headers, size_t max, size_t *num, unsigned flags)
{
    const char *end = sc->end;
    size_t n = 0, nfields = 0;
    int rc;

    for (;;) {
        if (p == end)
            return ran_out(sc);
        if (*p == '\r' || *p == '\n') {
            if ((rc = line_end(sc, &p)) != PGW_OK)
                return rc;
            break;
        }
        if (is_ows((uchar)*p)) /* obs-fold, or whitespace before the first field (RFC 9112 2.2) */
            return fail(sc, 400, "obs-fold or whitespace at the start of a field line");
        if (nfields == max)
            return fail(sc, 431, "too many header fields");
        nfields++;

        const char *name = p;
        int underscore = 0;
        for (;;) {
            while (p < end && token_tab[(uchar)*p] == 1)
                p++;
            if (p < end && *p == '_' && (flags & (F_REQUEST | F_DROP_UNDERSCORES)) != F_REQUEST) {
                underscore = 1;
                p++;
                continue;
            }
            break;
        }
        if (p == end)
            return ran_out(sc);
        if (*p != ':')
            return fail(sc, 400, bad_name_reason((uchar)*p));
        if (p == name)
            return fail(sc, 400, "empty field name");
        size_t name_len = (size_t)(p - name);

        p++;
        while (p < end && is_ows((uchar)*p))
            p++;
        const char *value = p;
        p = skip_value(p, end);
        if (p == end)
            return ran_out(sc);
        const char *vend = p;
        if (*p != '\r' && *p != '\n')
            return fail(sc, 400, *p ? "control byte in a field value" : "NUL in a field value");
        if ((rc = line_end(sc, &p)) != PGW_OK)
            return rc;
        while (vend > value && is_ows((uchar)vend[-1]))
            vend--;

        if (underscore && (flags & F_REQUEST))
            continue; /* F_DROP_UNDERSCORES: validated, counted, then forgotten */
        headers[n].name = name;
        headers[n].name_len = name_len;
        headers[n].value = value;
        headers[n].value_len = (size_t)(vend - value);
        n++;
        if ((rc = note_field(sc, h, name, name_len, value, (size_t)(vend - value), flags)) != PGW_OK)
            return rc;
    }
    *num = n;
    return (int)(p - sc->buf);
}

/* Framing shared by both directions (RFC 9112 6.1-6.3): CL and TE together, TE in HTTP/1.0 and
 * a TE whose final coding is not chunked are 400; codings we do not implement are 501. */
static int framing(struct scan *sc, const struct head *h, int minor, enum pgw_http_body *body,
                   uint64_t *content_length)
{
    *content_length = 0;
    *body = PGW_HTTP_BODY_NONE;
    if (h->te_count) {
        if (h->cl_count)
            return fail(sc, 400, "both Content-Length and Transfer-Encoding");
        if (minor == 0)
            return fail(sc, 400, "Transfer-Encoding in HTTP/1.0");
        if (!h->te_last_chunked)
            return fail(sc, 400, "final transfer coding is not chunked");
        if (h->te_unknown)
            return fail(sc, 501, "unsupported transfer coding");
        *body = PGW_HTTP_BODY_CHUNKED;
    } else if (h->cl_count) {
        *content_length = h->content_length;
        if (h->content_length > 0)
            *body = PGW_HTTP_BODY_LENGTH;
    }
    return PGW_OK;
}

static int keep_alive(const struct head *h, int minor)
{
    if (h->conn_close)
        return 0;
    return minor == 1 || h->conn_keep_alive;
}

static void scan_init(struct scan *sc, const char *buf, size_t len,
                      const struct pgw_http_limits *lim, size_t *rl_limit)
{
    /* Bounded so that the head's length fits the int we return and rl_limit + 1 cannot wrap. */
    size_t hs = lim ? lim->header_section : DEFAULT_HEADER_SECTION;
    size_t rl = lim ? lim->request_line : DEFAULT_REQUEST_LINE;
    if (hs > INT_MAX - 1)
        hs = INT_MAX - 1;
    sc->buf = buf;
    sc->truncated = len > hs;
    sc->end = buf + (sc->truncated ? hs : len);
    sc->status = 0;
    sc->err = NULL;
    *rl_limit = rl < hs ? rl : hs;
}

/* The start line may not be longer than <limit> bytes before its line ending. Scans stop at
 * start + limit + 1; running out there is 414, elsewhere what ran_out() says. */
static int line_ran_out(struct scan *sc, const char *start, const char *p, size_t limit, int code)
{
    if ((size_t)(p - start) > limit)
        return fail(sc, code, code == 414 ? "request line too long" : "status line too long");
    return ran_out(sc);
}

/* "HTTP/" DIGIT+ "." DIGIT+ at *pp, ending at a byte of <end> that is not a digit. Returns the
 * minor version (0 or 1) for HTTP/1.0 and HTTP/1.1, 9 for any other well-formed version, or
 * PGW_AGAIN / PGW_ERR (not well-formed: *pp points at the offending byte). */
static int parse_version(const char **pp, const char *end)
{
    static const char name[] = "HTTP/";
    const char *p = *pp, *major, *minor;
    for (size_t i = 0; i < sizeof(name) - 1; i++, p++) {
        if (p == end)
            goto again;
        if (*p != name[i])
            goto bad;
    }
    for (major = p; p < end && *p >= '0' && *p <= '9'; p++)
        ;
    if (p == end)
        goto again;
    if (p == major || *p != '.')
        goto bad;
    for (minor = ++p; p < end && *p >= '0' && *p <= '9'; p++)
        ;
    if (p == end)
        goto again;
    if (p == minor)
        goto bad;
    *pp = p;
    if (minor - major == 2 && *major == '1' && p - minor == 1 && (*minor == '0' || *minor == '1'))
        return *minor - '0';
    return 9;
again:
    *pp = p;
    return PGW_AGAIN;
bad:
    *pp = p;
    return PGW_ERR;
}

/* ---- Requests ---- */

/* Sorts the target into its form (RFC 9112 3.2) and fills path, query and the authority. */
static int classify_target(struct scan *sc, struct pgw_http_request *req, const char *t,
                           size_t tlen, const char *q)
{
    const char *tend = t + tlen, *pend = q ? q : tend;

    if (req->is_connect) {
        if (!valid_host(t, tlen, 1))
            return fail(sc, 400, "CONNECT needs an authority-form target (host:port)");
        req->target_form = PGW_HTTP_TARGET_AUTHORITY;
        req->authority = t;
        req->authority_len = tlen;
        return PGW_OK;
    }
    if (*t == '/') {
        req->target_form = PGW_HTTP_TARGET_ORIGIN;
        req->path = t;
        req->path_len = (size_t)(pend - t);
    } else if (tlen == 1 && *t == '*') {
        if (req->method_len != 7 || memcmp(req->method, "OPTIONS", 7) != 0)
            return fail(sc, 400, "asterisk-form target outside OPTIONS");
        req->target_form = PGW_HTTP_TARGET_ASTERISK;
        req->path = t;
        req->path_len = 1;
    } else {
        const char *a;
        if (pend - t >= 7 && IEQ(t, 7, "http://"))
            a = t + 7;
        else if (pend - t >= 8 && IEQ(t, 8, "https://"))
            a = t + 8;
        else
            return fail(sc, 400, "bad request target");
        const char *s = memchr(a, '/', (size_t)(pend - a));
        const char *aend = s ? s : pend;
        if (!valid_host(a, (size_t)(aend - a), 0))
            return fail(sc, 400, "bad authority in an absolute-form target");
        req->target_form = PGW_HTTP_TARGET_ABSOLUTE;
        req->authority = a;
        req->authority_len = (size_t)(aend - a);
        if (s) {
            req->path = s;
            req->path_len = (size_t)(pend - s);
        } else {
            req->path = slash;
            req->path_len = 1;
        }
    }
    if (q) {
        req->query = q + 1;
        req->query_len = (size_t)(tend - q - 1);
    }
    return PGW_OK;
}

/* method SP request-target SP HTTP-version, then the line ending. */
static int parse_request_line(struct scan *sc, const char **pp, struct pgw_http_request *req,
                              size_t limit)
{
    const char *start = *pp, *p = start, *end = sc->end;
    int rc;
    if ((size_t)(end - start) > limit + 1)
        end = start + limit + 1;

    while (p < end && token_tab[(uchar)*p])
        p++;
    if (p == end)
        return line_ran_out(sc, start, p, limit, 414);
    if (*p != ' ')
        return fail(sc, 400, "method is not a token");
    if (p == start)
        return fail(sc, 400, "empty method");
    req->method = start;
    req->method_len = (size_t)(p - start);
    req->is_connect = req->method_len == 7 && memcmp(start, "CONNECT", 7) == 0;

    const char *t = ++p, *q = NULL;
    p = skip_target(p, end, 2);
    if (p < end && *p == '?') {
        q = p;
        p = skip_target(p + 1, end, 1);
    }
    if (p == end)
        return line_ran_out(sc, start, p, limit, 414);
    if (*p != ' ')
        return fail(sc, 400, *p == '#' ? "fragment in the request target"
                                       : "bad byte in the request target");
    if (p == t)
        return fail(sc, 400, "empty request target");
    req->target = t;
    req->target_len = (size_t)(p - t);
    if ((rc = classify_target(sc, req, t, req->target_len, q)) != PGW_OK)
        return rc;

    p++;
    rc = parse_version(&p, end);
    if (rc == PGW_AGAIN)
        return line_ran_out(sc, start, p, limit, 414);
    if (rc == PGW_ERR || (*p != '\r' && *p != '\n'))
        return fail(sc, 400, "bad HTTP version");
    if (rc > 1)
        return fail(sc, 505, "unsupported HTTP version");
    req->minor_version = rc;
    if ((rc = line_end(sc, &p)) != PGW_OK)
        return rc;
    *pp = p;
    return PGW_OK;
}

int pgw_http_parse_request(const char *buf, size_t len, struct pgw_http_request *req,
                           struct pgw_http_header *headers, size_t max_headers,
                           const struct pgw_http_limits *lim)
{
    struct scan sc;
    struct head h;
    size_t rl_limit;
    const char *p = buf;
    int rc;

    memset(req, 0, sizeof(*req));
    memset(&h, 0, sizeof(h));
    req->headers = headers;
    scan_init(&sc, buf, len, lim, &rl_limit);
    size_t max = lim ? PGW_MIN(max_headers, lim->header_fields)
                     : PGW_MIN(max_headers, DEFAULT_HEADER_FIELDS);
    unsigned flags = F_REQUEST | (lim && lim->drop_underscores ? F_DROP_UNDERSCORES : 0);

    for (int empty = 0; p < sc.end && (*p == '\r' || *p == '\n'); empty++) {
        if (empty == EMPTY_LINES_MAX) {
            rc = fail(&sc, 400, "too many empty lines before the request line");
            goto out;
        }
        if ((rc = line_end(&sc, &p)) != PGW_OK)
            goto out;
    }
    if ((rc = parse_request_line(&sc, &p, req, rl_limit)) != PGW_OK)
        goto out;
    if ((rc = parse_fields(&sc, p, &h, headers, max, &req->num_headers, flags)) < 0)
        goto out;

    if (req->minor_version == 1 && h.host_count == 0) {
        rc = fail(&sc, 400, "missing Host");
        goto out;
    }
    if (framing(&sc, &h, req->minor_version, &req->body, &req->content_length) != PGW_OK) {
        rc = PGW_ERR;
        goto out;
    }
    if (req->target_form == PGW_HTTP_TARGET_ORIGIN || req->target_form == PGW_HTTP_TARGET_ASTERISK) {
        req->authority = h.host;
        req->authority_len = h.host_len;
    }
    req->keep_alive = keep_alive(&h, req->minor_version);
    /* RFC 9110 10.1.1 and 7.8: an HTTP/1.0 request's 100-continue and Upgrade are ignored. */
    req->expect_continue = h.expect_continue && req->minor_version == 1;
    req->upgrade = h.conn_upgrade && h.has_upgrade && req->minor_version == 1;
    return rc;
out:
    if (rc == PGW_ERR) {
        req->status = sc.status;
        req->err = sc.err;
    }
    return rc;
}

/* ---- Responses ---- */

/* HTTP-version SP 3DIGIT [SP reason-phrase], then the line ending. An empty reason may come
 * without its SP: common, and the line ending leaves no ambiguity. */
static int parse_status_line(struct scan *sc, const char **pp, struct pgw_http_response *resp,
                             size_t limit)
{
    const char *start = *pp, *p = start, *end = sc->end;
    int rc;
    if ((size_t)(end - start) > limit + 1)
        end = start + limit + 1;

    rc = parse_version(&p, end);
    if (rc == PGW_AGAIN)
        return line_ran_out(sc, start, p, limit, 502);
    if (rc == PGW_ERR || *p != ' ')
        return fail(sc, 502, "bad HTTP version in the status line");
    if (rc > 1)
        return fail(sc, 502, "unsupported HTTP version in the status line");
    resp->minor_version = rc;

    p++;
    int status = 0;
    for (int i = 0; i < 3; i++, p++) {
        if (p == end)
            return line_ran_out(sc, start, p, limit, 502);
        if (*p < '0' || *p > '9')
            return fail(sc, 502, "bad status code");
        status = status * 10 + (*p - '0');
    }
    if (p == end)
        return line_ran_out(sc, start, p, limit, 502);
    if (status < 100 || status > 599)
        return fail(sc, 502, "status code outside 100..599");
    resp->status = status;
    if (*p == ' ') {
        const char *r = ++p;
        p = skip_value(p, end);
        if (p == end)
            return line_ran_out(sc, start, p, limit, 502);
        resp->reason = r;
        resp->reason_len = (size_t)(p - r);
    }
    if (*p != '\r' && *p != '\n')
        return fail(sc, 502, "bad byte in the status line");
    if ((rc = line_end(sc, &p)) != PGW_OK)
        return rc;
    *pp = p;
    return PGW_OK;
}

int pgw_http_parse_response(const char *buf, size_t len, struct pgw_http_response *resp,
                            struct pgw_http_header *headers, size_t max_headers,
                            const struct pgw_http_limits *lim)
{
    struct scan sc;
    struct head h;
    size_t rl_limit;
    const char *p = buf;
    int rc;

    memset(resp, 0, sizeof(*resp));
    memset(&h, 0, sizeof(h));
    resp->headers = headers;
    resp->reason = "";
    scan_init(&sc, buf, len, lim, &rl_limit);
    size_t max = lim ? PGW_MIN(max_headers, lim->header_fields)
                     : PGW_MIN(max_headers, DEFAULT_HEADER_FIELDS);

    if ((rc = parse_status_line(&sc, &p, resp, rl_limit)) != PGW_OK)
        goto out;
    if ((rc = parse_fields(&sc, p, &h, headers, max, &resp->num_headers, 0)) < 0)
        goto out;
    if (framing(&sc, &h, resp->minor_version, &resp->body, &resp->content_length) != PGW_OK) {
        rc = PGW_ERR;
        goto out;
    }
    if (h.te_count == 0 && h.cl_count == 0)
        resp->body = PGW_HTTP_BODY_EOF;
    resp->keep_alive = keep_alive(&h, resp->minor_version);
    return rc;
out:
    if (rc == PGW_ERR)
        resp->err = sc.err;
    return rc;
}

enum pgw_http_body pgw_http_response_body(const struct pgw_http_response *resp, int is_head)
{
    /* RFC 9112 6.3 rule 1: these never have content, whatever their fields say. */
    if (is_head || resp->status < 200 || resp->status == 204 || resp->status == 304)
        return PGW_HTTP_BODY_NONE;
    return resp->body;
}

/* ---- Chunked bodies ---- */

/* One state per position in the grammar (RFC 9112 7.1); each case reads one byte, except data. */
enum {
    CH_SIZE_FIRST = 0, /* first hex digit of a size line */
    CH_SIZE,           /* more hex digits */
    CH_BWS,            /* whitespace after the size or an extension: only ';' may follow */
    CH_EXT_NAME_START, /* after ';' (and BWS) */
    CH_EXT_NAME,
    CH_EXT_NAME_BWS,   /* whitespace after a name: '=' or ';' */
    CH_EXT_VAL_START,  /* after '=' (and BWS) */
    CH_EXT_VAL_TOKEN,
    CH_EXT_QUOTED,
    CH_EXT_QUOTED_ESC,
    CH_EXT_QUOTED_END, /* after the closing quote */
    CH_SIZE_LF,        /* CR seen at the end of a size line */
    CH_DATA,
    CH_DATA_CR,        /* the line ending that must follow the data */
    CH_DATA_LF,
    CH_TRAILER_START,  /* a trailer field line or the final empty line */
    CH_TRAILER_NAME,
    CH_TRAILER_VALUE,
    CH_TRAILER_LF,
    CH_END_LF,         /* CR seen on the final empty line */
    CH_DONE,
    CH_ERROR
};

void pgw_http_chunked_init(struct pgw_http_chunked *d)
{
    memset(d, 0, sizeof(*d));
    d->state = CH_SIZE_FIRST;
}

/* The size line ended: data follows, or the trailer section after the last chunk. */
static void size_line_done(struct pgw_http_chunked *d)
{
    d->state = d->remaining ? CH_DATA : CH_TRAILER_START;
    d->line_len = 0;
    d->digits = 0;
}

/* Where a size line may end (after the size, a name, a token value or a quoted value). */
static int ext_end_or(struct pgw_http_chunked *d, int c, int same)
{
    if (c == ';')
        return CH_EXT_NAME_START;
    if (c == ' ' || c == '\t')
        return CH_BWS;
    if (c == '\r')
        return CH_SIZE_LF;
    if (c == '\n') {
        size_line_done(d);
        return d->state;
    }
    return same;
}

/* Steps the size-line and trailer states over one byte <c>. Returns the error or NULL. */
static const char *chunked_step(struct pgw_http_chunked *d, int c)
{
    int s;

    /* Every byte of the trailer section counts, the LF of each line ending included (those are
     * consumed by the CH_*_LF case below, before the trailer states proper). */
    if (d->state >= CH_TRAILER_START && d->state <= CH_END_LF &&
        ++d->trailer_len > PGW_HTTP_TRAILERS_MAX)
        return "trailer section too large";

    switch (d->state) {
    case CH_SIZE_FIRST:
        if (hex_tab[c] == 255)
            return (c == '\r' || c == '\n' || c == ';') ? "empty chunk size" : "bad chunk size";
        d->remaining = hex_tab[c];
        d->digits = 1;
        d->state = CH_SIZE;
        return NULL;
    case CH_SIZE:
        if (hex_tab[c] != 255) {
            /* 16 digits at most, and the value stays <= INT64_MAX like Content-Length */
            if (++d->digits > 16 || d->remaining > ((uint64_t)INT64_MAX >> 4))
                return "chunk size too large";
            d->remaining = d->remaining << 4 | hex_tab[c];
            return NULL;
        }
        s = ext_end_or(d, c, CH_ERROR);
        if (s == CH_ERROR)
            return "bad chunk size";
        d->state = s;
        return NULL;
    case CH_SIZE_LF:
    case CH_DATA_LF:
    case CH_TRAILER_LF:
    case CH_END_LF:
        if (c != '\n')
            return "bare CR in chunked framing";
        if (d->state == CH_SIZE_LF)
            size_line_done(d);
        else if (d->state == CH_DATA_LF)
            d->state = CH_SIZE_FIRST;
        else if (d->state == CH_TRAILER_LF)
            d->state = CH_TRAILER_START;
        else
            d->state = CH_DONE;
        return NULL;
    case CH_DATA_CR:
        if (c == '\r')
            d->state = CH_DATA_LF;
        else if (c == '\n')
            d->state = CH_SIZE_FIRST;
        else
            return "chunk longer than its size";
        return NULL;
    default:
        break;
    }

    /* extensions: ;name[=token|"quoted"], BWS around ';' and '=' */
    if (d->state < CH_TRAILER_START) {
        if (++d->line_len > PGW_HTTP_CHUNK_EXT_MAX)
            return "chunk extensions too long";
        switch (d->state) {
        case CH_BWS:
            if (c == ';')
                d->state = CH_EXT_NAME_START;
            else if (c != ' ' && c != '\t')
                return "bad whitespace in a chunk size line";
            return NULL;
        case CH_EXT_NAME_START:
            if (token_tab[c])
                d->state = CH_EXT_NAME;
            else if (c != ' ' && c != '\t')
                return "bad chunk extension";
            return NULL;
        case CH_EXT_NAME:
            if (token_tab[c])
                return NULL;
            if (c == '=') {
                d->state = CH_EXT_VAL_START;
                return NULL;
            }
            s = ext_end_or(d, c, CH_ERROR);
            if (s == CH_BWS)
                s = CH_EXT_NAME_BWS;
            break;
        case CH_EXT_NAME_BWS:
            if (c == '=')
                d->state = CH_EXT_VAL_START;
            else if (c == ';')
                d->state = CH_EXT_NAME_START;
            else if (c != ' ' && c != '\t')
                return "bad chunk extension";
            return NULL;
        case CH_EXT_VAL_START:
            if (c == '"')
                d->state = CH_EXT_QUOTED;
            else if (token_tab[c])
                d->state = CH_EXT_VAL_TOKEN;
            else if (c != ' ' && c != '\t')
                return "bad chunk extension";
            return NULL;
        case CH_EXT_VAL_TOKEN:
            if (token_tab[c])
                return NULL;
            s = ext_end_or(d, c, CH_ERROR);
            break;
        case CH_EXT_QUOTED:
            /* qdtext: HTAB SP 0x21 0x23-0x5B 0x5D-0x7E obs-text */
            if (c == '"')
                d->state = CH_EXT_QUOTED_END;
            else if (c == '\\')
                d->state = CH_EXT_QUOTED_ESC;
            else if (!value_tab[c])
                return "control byte in a chunk extension";
            return NULL;
        case CH_EXT_QUOTED_ESC:
            if (!value_tab[c])
                return "control byte in a chunk extension";
            d->state = CH_EXT_QUOTED;
            return NULL;
        case CH_EXT_QUOTED_END:
            s = ext_end_or(d, c, CH_ERROR);
            break;
        default:
            return "bad chunked decoder state";
        }
        if (s == CH_ERROR)
            return value_tab[c] ? "bad chunk extension" : "control byte in a chunk extension";
        d->state = s;
        return NULL;
    }

    /* trailer section: validated like header fields, then dropped (counted above) */
    switch (d->state) {
    case CH_TRAILER_START:
        if (c == '\r')
            d->state = CH_END_LF;
        else if (c == '\n')
            d->state = CH_DONE;
        else if (token_tab[c])
            d->state = CH_TRAILER_NAME;
        else
            return (c == ' ' || c == '\t') ? "obs-fold in the trailer section"
                                           : "bad byte in a trailer field name";
        return NULL;
    case CH_TRAILER_NAME:
        if (c == ':')
            d->state = CH_TRAILER_VALUE;
        else if (!token_tab[c])
            return bad_name_reason(c);
        return NULL;
    case CH_TRAILER_VALUE:
        if (c == '\r')
            d->state = CH_TRAILER_LF;
        else if (c == '\n')
            d->state = CH_TRAILER_START;
        else if (!value_tab[c])
            return "control byte in a trailer field value";
        return NULL;
    }
    return "bad chunked decoder state";
}

int pgw_http_chunked_decode(struct pgw_http_chunked *d, const char *buf, size_t len,
                            size_t *consumed, size_t *data_off, size_t *data_len)
{
    size_t i = 0;
    int have_data = 0;

    *data_off = 0;
    *data_len = 0;
    *consumed = 0;
    if (d->state == CH_DONE)
        return PGW_DONE;
    if (d->state == CH_ERROR)
        return PGW_ERR;

    while (i < len) {
        if (d->state == CH_DATA) {
            if (have_data)
                break; /* one span per call: the caller comes back for the next one */
            size_t n = len - i;
            if (n > d->remaining)
                n = (size_t)d->remaining;
            *data_off = i;
            *data_len = n;
            have_data = 1;
            i += n;
            d->remaining -= n;
            if (d->remaining == 0)
                d->state = CH_DATA_CR;
            continue;
        }
        const char *err = chunked_step(d, (uchar)buf[i]);
        i++;
        if (PGW_UNLIKELY(err != NULL)) {
            d->state = CH_ERROR;
            d->err = err;
            *consumed = i - 1;
            if (have_data)
                return PGW_OK; /* deliver the good data first; the next call reports the error */
            return PGW_ERR;
        }
        if (d->state == CH_DONE) {
            *consumed = i;
            return PGW_DONE;
        }
    }
    *consumed = i;
    return PGW_OK;
}

/* ---- Helpers for the proxy ---- */

int pgw_http_is_hop_by_hop(const char *name, size_t name_len)
{
    switch (name_len) {
    case 2:
        return IEQ(name, name_len, "te");
    case 7:
        return IEQ(name, name_len, "trailer") || IEQ(name, name_len, "upgrade");
    case 10:
        return IEQ(name, name_len, "connection") || IEQ(name, name_len, "keep-alive");
    case 16:
        return IEQ(name, name_len, "proxy-connection");
    case 17:
        return IEQ(name, name_len, "transfer-encoding");
    case 18:
        return IEQ(name, name_len, "proxy-authenticate");
    }
    return 0;
}

int pgw_http_connection_lists(const struct pgw_http_header *headers, size_t n, const char *name,
                              size_t name_len)
{
    for (size_t i = 0; i < n; i++) {
        const struct pgw_http_header *f = &headers[i];
        if (!IEQ(f->name, f->name_len, "connection"))
            continue;
        const char *p = f->value, *e;
        size_t elen;
        while (next_elem(&p, f->value + f->value_len, &e, &elen))
            if (elen == name_len && pgw_str_ieq(e, elen, name, name_len))
                return 1;
    }
    return 0;
}

void pgw_http_conn_names_init(struct pgw_http_conn_names *c, const struct pgw_http_header *headers,
                              size_t n)
{
    c->n = 0;
    c->overflow = 0;
    c->headers = headers;
    c->num_headers = n;
    for (size_t i = 0; i < n; i++) {
        const struct pgw_http_header *f = &headers[i];
        if (!IEQ(f->name, f->name_len, "connection"))
            continue;
        const char *p = f->value, *e;
        size_t elen;
        while (next_elem(&p, f->value + f->value_len, &e, &elen)) {
            if (elen == 0 || pgw_http_is_hop_by_hop(e, elen))
                continue;
            if (c->n == PGW_HTTP_CONN_NAMES_MAX) {
                c->overflow = 1;
                return;
            }
            c->v[c->n++] = (struct pgw_str){e, elen};
        }
    }
}

int pgw_http_conn_names_has(const struct pgw_http_conn_names *c, const char *name, size_t len)
{
    if (c->overflow)
        return pgw_http_connection_lists(c->headers, c->num_headers, name, len);
    for (size_t i = 0; i < c->n; i++)
        if (c->v[i].len == len && pgw_str_ieq(c->v[i].base, len, name, len))
            return 1;
    return 0;
}

const struct pgw_http_header *pgw_http_find(const struct pgw_http_header *headers, size_t n,
                                            const char *name, size_t name_len)
{
    for (size_t i = 0; i < n; i++)
        if (headers[i].name_len == name_len &&
            pgw_str_ieq(headers[i].name, name_len, name, name_len))
            return &headers[i];
    return NULL;
}

int pgw_http_is_idempotent(const char *method, size_t method_len)
{
    /* methods are case-sensitive (RFC 9110 9.1) */
    static const struct pgw_str idempotent[] = {
        PGW_STRLIT("GET"), PGW_STRLIT("HEAD"),    PGW_STRLIT("PUT"),
        PGW_STRLIT("DELETE"), PGW_STRLIT("OPTIONS"), PGW_STRLIT("TRACE"),
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(idempotent); i++)
        if (method_len == idempotent[i].len && memcmp(method, idempotent[i].base, method_len) == 0)
            return 1;
    return 0;
}

const char *pgw_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    }
    return "Unknown";
}
