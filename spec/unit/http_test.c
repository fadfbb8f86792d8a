/* http_test.c: the strict HTTP/1.1 parser (gateway/http.c). Tables of exact bytes and the
 * expected outcome for requests, responses and chunked bodies; every valid head is also fed split
 * at every byte boundary, each prefix copied into an exact-size heap buffer so that ASan reports
 * any read past the length; a deterministic mutation test checks the parser's invariants on
 * thousands of damaged inputs. */
#include "../../gateway/http.c"
#include "../support/test.h"

#include <stdarg.h>
#include <stdlib.h>

#define MAXH 128 /* header array capacity used by the tests (the default limit is 100) */

/* A byte-exact literal: pointer and length, NULs included. */
#define BYTES(s) .bytes = (s), .len = sizeof(s) - 1
#define TAIL(s) .tail = (s), .tail_len = sizeof(s) - 1

/* A heap copy of exactly <n> bytes: reading buf[n] is an ASan error. */
static char *dup_exact(const char *p, size_t n)
{
    char *b = malloc(n);
    pgw_assert(b != NULL || n == 0);
    if (b == NULL)
        b = malloc(1); /* malloc(0) may return NULL; keep a valid pointer, never read */
    if (n > 0)
        memcpy(b, p, n);
    return b;
}

/* <a,alen> followed by <b,blen>, in an exact-size heap buffer. */
static char *concat(const char *a, size_t alen, const char *b, size_t blen)
{
    char *r = malloc(alen + blen + 1);
    pgw_assert(r != NULL);
    memcpy(r, a, alen);
    if (blen > 0)
        memcpy(r + alen, b, blen);
    r[alen + blen] = '\0';
    return r;
}

/* Compares a parsed slice with <want>; want NULL means the slice must be NULL. */
static void check_slice(const char *name, const char *what, const char *got, size_t got_len,
                        const char *want)
{
    if (want == NULL) {
        if (got != NULL)
            failf(name, "%s is \"%.*s\", expected NULL", what, (int)got_len, got);
        return;
    }
    if (got == NULL) {
        failf(name, "%s is NULL, expected \"%s\"", what, want);
        return;
    }
    if (got_len != strlen(want) || memcmp(got, want, got_len) != 0)
        failf(name, "%s is \"%.*s\", expected \"%s\"", what, (int)got_len, got, want);
}

static void check_num(const char *name, const char *what, long long got, long long want)
{
    if (got != want)
        failf(name, "%s is %lld, expected %lld", what, got, want);
}

/* A slice must lie inside [buf, buf + n) (or be the static "/"). */
static int inside(const char *p, size_t plen, const char *buf, size_t n)
{
    if (p == NULL || p == slash)
        return 1;
    return p >= buf && p + plen <= buf + n;
}

static const struct pgw_http_limits small_limits = {
    .request_line = 32, .header_section = 128, .header_fields = 4, .drop_underscores = 0};
static const struct pgw_http_limits drop_limits = {
    .request_line = 8192, .header_section = 32768, .header_fields = 100, .drop_underscores = 1};

/* ---- Requests: one parse of a heap copy ---- */

static int parse_req(const char *bytes, size_t len, const struct pgw_http_limits *lim,
                     struct pgw_http_request *req, struct pgw_http_header *h, size_t maxh)
{
    char *buf = dup_exact(bytes, len);
    int rc = pgw_http_parse_request(buf, len, req, h, maxh, lim);
    free(buf);
    return rc;
}

/* Every strict prefix of <bytes> (whose head is <head_len> bytes) is PGW_AGAIN, the head alone
 * and every longer input return exactly <head_len>. */
static void check_split_request(const char *name, const char *bytes, size_t len, size_t head_len,
                                const struct pgw_http_limits *lim)
{
    struct pgw_http_request req;
    struct pgw_http_header h[MAXH];
    for (size_t k = 0; k <= len; k++) {
        int rc = parse_req(bytes, k, lim, &req, h, MAXH);
        long long want = k < head_len ? PGW_AGAIN : (long long)head_len;
        if (rc != want) {
            failf(name, "prefix of %zu/%zu bytes returned %d, expected %lld (%s)", k, len, rc,
                  want, req.err ? req.err : "-");
            return;
        }
    }
}

/* A rejected input: the whole is PGW_ERR with <status> and an err string; every prefix is
 * PGW_AGAIN until the offending byte and the same error from then on. */
static void check_bad_request(const char *name, const char *bytes, size_t len, int status,
                              const struct pgw_http_limits *lim)
{
    struct pgw_http_request req;
    struct pgw_http_header h[MAXH];
    int rc = parse_req(bytes, len, lim, &req, h, MAXH);
    if (rc != PGW_ERR || req.status != status || req.err == NULL) {
        failf(name, "returned %d status %d (%s), expected PGW_ERR status %d", rc, req.status,
              req.err ? req.err : "err NULL", status);
        return;
    }
    const char *err = req.err;
    int seen_err = 0;
    for (size_t k = 0; k < len; k++) {
        rc = parse_req(bytes, k, lim, &req, h, MAXH);
        if (rc == PGW_AGAIN && !seen_err)
            continue;
        if (rc == PGW_ERR && req.status == status && req.err == err) {
            seen_err = 1;
            continue;
        }
        failf(name, "prefix of %zu/%zu bytes returned %d status %d (%s) after %s", k, len, rc,
              req.status, req.err ? req.err : "-", seen_err ? "the error" : "PGW_AGAIN");
        return;
    }
}

/* ---- Requests: valid ---- */

struct req_case {
    const char *name;
    const char *bytes; /* the head */
    size_t len;
    const char *tail; /* bytes after the head (body, next request); never read */
    size_t tail_len;
    const char *method, *path, *query, *authority; /* NULL: expected NULL */
    enum pgw_http_target form;
    int minor;
    unsigned num_headers;
    enum pgw_http_body body;
    uint64_t content_length;
    unsigned keep_alive, expect_continue, upgrade, is_connect;
};

#define GET11 "GET / HTTP/1.1\r\nHost: a\r\n"

static const struct req_case valid_requests[] = {
    {.name = "simple GET", BYTES("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"), .method = "GET",
     .path = "/", .authority = "example.com", .minor = 1, .num_headers = 1, .keep_alive = 1},
    {.name = "query and several fields",
     BYTES("GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n"
           "User-Agent: curl/8.0\r\n\r\n"),
     .method = "GET", .path = "/a/b", .query = "x=1&y=2", .authority = "example.com:8080",
     .minor = 1, .num_headers = 3, .keep_alive = 1},
    {.name = "empty query", BYTES("GET /p? HTTP/1.1\r\nHost: a\r\n\r\n"), .method = "GET",
     .path = "/p", .query = "", .authority = "a", .minor = 1, .num_headers = 1, .keep_alive = 1},
    {.name = "query holding '?' and '/'", BYTES("GET /p?a=/b?c HTTP/1.1\r\nHost: a\r\n\r\n"),
     .method = "GET", .path = "/p", .query = "a=/b?c", .authority = "a", .minor = 1,
     .num_headers = 1, .keep_alive = 1},
    {.name = "target with every accepted VCHAR",
     BYTES("GET /a-b._~!$&'()*+,;=:@%20\"<>\\^`{|}/0aZ HTTP/1.1\r\nHost: a\r\n\r\n"),
     .method = "GET", .path = "/a-b._~!$&'()*+,;=:@%20\"<>\\^`{|}/0aZ", .authority = "a",
     .minor = 1, .num_headers = 1, .keep_alive = 1},
    {.name = "long path and query (word-at-a-time scan)",
     BYTES("GET /0123456789abcdef0123456789abcdef?0123456789abcdef0123456789 HTTP/1.1\r\n"
           "Host: a\r\n\r\n"),
     .method = "GET", .path = "/0123456789abcdef0123456789abcdef",
     .query = "0123456789abcdef0123456789", .authority = "a", .minor = 1, .num_headers = 1,
     .keep_alive = 1},
    {.name = "method made of every tchar",
     BYTES("!#$%&'*+-.^_`|~09azAZ / HTTP/1.1\r\nHost: a\r\n\r\n"),
     .method = "!#$%&'*+-.^_`|~09azAZ", .path = "/", .authority = "a", .minor = 1,
     .num_headers = 1, .keep_alive = 1},
    {.name = "POST with Content-Length and its body behind",
     BYTES("POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"), TAIL("hello"),
     .method = "POST", .path = "/submit", .authority = "a", .minor = 1, .num_headers = 2,
     .body = PGW_HTTP_BODY_LENGTH, .content_length = 5, .keep_alive = 1},
    {.name = "Content-Length: 0 is no body",
     BYTES("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"), .method = "POST",
     .path = "/", .authority = "a", .minor = 1, .num_headers = 2, .keep_alive = 1},
    {.name = "Content-Length with leading zeros and OWS",
     BYTES("PUT /x HTTP/1.1\r\nHost: a\r\ncontent-length: \t007 \t\r\n\r\n"), TAIL("1234567"),
     .method = "PUT", .path = "/x", .authority = "a", .minor = 1, .num_headers = 2,
     .body = PGW_HTTP_BODY_LENGTH, .content_length = 7, .keep_alive = 1},
    {.name = "Content-Length INT64_MAX",
     BYTES("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n"),
     .method = "POST", .path = "/", .authority = "a", .minor = 1, .num_headers = 2,
     .body = PGW_HTTP_BODY_LENGTH, .content_length = 9223372036854775807ull, .keep_alive = 1},
    {.name = "chunked with its body behind",
     BYTES("POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
     TAIL("5\r\nhello\r\n0\r\n\r\n"), .method = "POST", .path = "/up", .authority = "a",
     .minor = 1, .num_headers = 2, .body = PGW_HTTP_BODY_CHUNKED, .keep_alive = 1},
    {.name = "chunked, any case, empty list elements",
     BYTES("POST / HTTP/1.1\r\nHost: a\r\nTRANSFER-ENCODING: , Chunked ,\r\n\r\n"),
     .method = "POST", .path = "/", .authority = "a", .minor = 1, .num_headers = 2,
     .body = PGW_HTTP_BODY_CHUNKED, .keep_alive = 1},
    {.name = "HTTP/1.0 without Host", BYTES("GET /old HTTP/1.0\r\n\r\n"), .method = "GET",
     .path = "/old", .minor = 0},
    {.name = "HTTP/1.0 with Host and Content-Length",
     BYTES("POST /f HTTP/1.0\r\nHost: a\r\nContent-Length: 2\r\n\r\n"), TAIL("hi"),
     .method = "POST", .path = "/f", .authority = "a", .minor = 0, .num_headers = 2,
     .body = PGW_HTTP_BODY_LENGTH, .content_length = 2},
    {.name = "HTTP/1.0 Connection: Keep-Alive",
     BYTES("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), .method = "GET", .path = "/",
     .minor = 0, .num_headers = 1, .keep_alive = 1},
    {.name = "HTTP/1.0 keep-alive then close in one list",
     BYTES("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"), .method = "GET",
     .path = "/", .minor = 0, .num_headers = 1},
    {.name = "HTTP/1.1 Connection: close", BYTES(GET11 "Connection: close\r\n\r\n"),
     .method = "GET", .path = "/", .authority = "a", .minor = 1, .num_headers = 2},
    {.name = "HTTP/1.1 close inside a list",
     BYTES(GET11 "Connection: foo,  CLOSE ,bar\r\n\r\n"), .method = "GET", .path = "/",
     .authority = "a", .minor = 1, .num_headers = 2},
    {.name = "HTTP/1.1 close in a second Connection field",
     BYTES(GET11 "Connection: keep-alive\r\nConnection: close\r\n\r\n"), .method = "GET",
     .path = "/", .authority = "a", .minor = 1, .num_headers = 3},
    {.name = "HTTP/1.1 Connection: keep-alive", BYTES(GET11 "Connection: keep-alive\r\n\r\n"),
     .method = "GET", .path = "/", .authority = "a", .minor = 1, .num_headers = 2,
     .keep_alive = 1},
    {.name = "HTTP/1.1 tokens that only look like close",
     BYTES(GET11 "Connection: closed, xclose, close-x\r\n\r\n"), .method = "GET", .path = "/",
     .authority = "a", .minor = 1, .num_headers = 2, .keep_alive = 1},
    {.name = "absolute-form: authority replaces Host",
     BYTES("GET http://example.com/p?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n"),
     .method = "GET", .path = "/p", .query = "q=1", .authority = "example.com",
     .form = PGW_HTTP_TARGET_ABSOLUTE, .minor = 1, .num_headers = 1, .keep_alive = 1},
    {.name = "absolute-form without a path",
     BYTES("GET http://example.com:8080 HTTP/1.1\r\nHost: x\r\n\r\n"), .method = "GET",
     .path = "/", .authority = "example.com:8080", .form = PGW_HTTP_TARGET_ABSOLUTE, .minor = 1,
     .num_headers = 1, .keep_alive = 1},
    {.name = "absolute-form https, any case, no path, a query",
     BYTES("GET HTTPS://Example.COM?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"), .method = "GET",
     .path = "/", .query = "x=1", .authority = "Example.COM", .form = PGW_HTTP_TARGET_ABSOLUTE,
     .minor = 1, .num_headers = 1, .keep_alive = 1},
    {.name = "absolute-form IPv6 in HTTP/1.0 without Host",
     BYTES("GET http://[::1]:80/a/b HTTP/1.0\r\n\r\n"), .method = "GET", .path = "/a/b",
     .authority = "[::1]:80", .form = PGW_HTTP_TARGET_ABSOLUTE, .minor = 0},
    {.name = "OPTIONS *", BYTES("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), .method = "OPTIONS",
     .path = "*", .authority = "a", .form = PGW_HTTP_TARGET_ASTERISK, .minor = 1,
     .num_headers = 1, .keep_alive = 1},
    {.name = "CONNECT authority-form is flagged",
     BYTES("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
     .method = "CONNECT", .authority = "example.com:443", .form = PGW_HTTP_TARGET_AUTHORITY,
     .minor = 1, .num_headers = 1, .keep_alive = 1, .is_connect = 1},
    {.name = "Expect: 100-continue",
     BYTES("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"),
     TAIL("abc"), .method = "POST", .path = "/", .authority = "a", .minor = 1, .num_headers = 3,
     .body = PGW_HTTP_BODY_LENGTH, .content_length = 3, .keep_alive = 1, .expect_continue = 1},
    {.name = "Expect: 100-Continue in any case, with OWS",
     BYTES("PUT / HTTP/1.1\r\nHost: a\r\nEXPECT:  100-Continue \r\nContent-Length: 1\r\n\r\n"),
     TAIL("x"), .method = "PUT", .path = "/", .authority = "a", .minor = 1, .num_headers = 3,
     .body = PGW_HTTP_BODY_LENGTH, .content_length = 1, .keep_alive = 1, .expect_continue = 1},
    {.name = "Expect with another value is ignored",
     BYTES("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, foo\r\n\r\n"), .method = "POST",
     .path = "/", .authority = "a", .minor = 1, .num_headers = 2, .keep_alive = 1},
    {.name = "Expect in HTTP/1.0 is ignored",
     BYTES("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"), TAIL("abc"),
     .method = "POST", .path = "/", .minor = 0, .num_headers = 2, .body = PGW_HTTP_BODY_LENGTH,
     .content_length = 3},
    {.name = "Upgrade with the Connection token",
     BYTES("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
           "Upgrade: websocket\r\n\r\n"),
     .method = "GET", .path = "/ws", .authority = "a", .minor = 1, .num_headers = 3,
     .keep_alive = 1, .upgrade = 1},
    {.name = "Upgrade field without the Connection token",
     BYTES(GET11 "Upgrade: websocket\r\n\r\n"), .method = "GET", .path = "/", .authority = "a",
     .minor = 1, .num_headers = 2, .keep_alive = 1},
    {.name = "Connection: upgrade without an Upgrade field",
     BYTES(GET11 "Connection: upgrade\r\n\r\n"), .method = "GET", .path = "/", .authority = "a",
     .minor = 1, .num_headers = 2, .keep_alive = 1},
    {.name = "Upgrade in HTTP/1.0 is ignored",
     BYTES("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
     .method = "GET", .path = "/", .minor = 0, .num_headers = 2},
    {.name = "one leading empty line", BYTES("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
     .method = "GET", .path = "/", .authority = "a", .minor = 1, .num_headers = 1,
     .keep_alive = 1},
    {.name = "four leading empty lines, CRLF and LF",
     BYTES("\r\n\n\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), .method = "GET", .path = "/",
     .authority = "a", .minor = 1, .num_headers = 1, .keep_alive = 1},
    {.name = "bare LF line endings", BYTES("GET / HTTP/1.1\nHost: a\nAccept: b\n\n"),
     .method = "GET", .path = "/", .authority = "a", .minor = 1, .num_headers = 2,
     .keep_alive = 1},
    {.name = "mixed line endings", BYTES("GET / HTTP/1.1\r\nHost: a\nX: y\r\n\n"),
     .method = "GET", .path = "/", .authority = "a", .minor = 1, .num_headers = 2,
     .keep_alive = 1},
    {.name = "pipelined request behind", BYTES("GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"),
     TAIL("GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"), .method = "GET", .path = "/1",
     .authority = "a", .minor = 1, .num_headers = 1, .keep_alive = 1},
    {.name = "garbage behind the head is not read", BYTES("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
     TAIL("\0\r\xff \x01"), .method = "GET", .path = "/", .authority = "a", .minor = 1,
     .num_headers = 1, .keep_alive = 1},
    {.name = "Host forms: IPv4 and port 65535",
     BYTES("GET / HTTP/1.1\r\nHost: 127.0.0.1:65535\r\n\r\n"), .method = "GET", .path = "/",
     .authority = "127.0.0.1:65535", .minor = 1, .num_headers = 1, .keep_alive = 1},
    {.name = "Host forms: IPv6 literal", BYTES("GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n"),
     .method = "GET", .path = "/", .authority = "[2001:db8::1]", .minor = 1, .num_headers = 1,
     .keep_alive = 1},
    {.name = "Host forms: - . _ ~ and any case",
     BYTES("GET / HTTP/1.1\r\nhOST:  A-b.c_d~E \r\n\r\n"), .method = "GET", .path = "/",
     .authority = "A-b.c_d~E", .minor = 1, .num_headers = 1, .keep_alive = 1},
    {.name = "field values: empty, OWS only, obs-text, inner HTAB",
     BYTES(GET11 "X-Empty:\r\nX-Spaces: \t \r\nX-Text: caf\xc3\xa9 \t au lait\t\r\n"
                 "X-Long: 0123456789abcdef\t0123456789abcdef \x80\xff!~\r\n\r\n"),
     .method = "GET", .path = "/", .authority = "a", .minor = 1, .num_headers = 5,
     .keep_alive = 1},
    {.name = "field names of every tchar", BYTES(GET11 "!#$%&'*+-.^`|~09azAZ: v\r\n\r\n"),
     .method = "GET", .path = "/", .authority = "a", .minor = 1, .num_headers = 2,
     .keep_alive = 1},
};

static void check_request_fields(const struct req_case *c, const char *buf, size_t len, int rc,
                                 const struct pgw_http_request *req)
{
    if (rc != (int)c->len) {
        failf(c->name, "returned %d, expected %zu (%s, status %d)", rc, c->len,
              req->err ? req->err : "-", req->status);
        return;
    }
    check_slice(c->name, "method", req->method, req->method_len, c->method);
    check_slice(c->name, "path", req->path, req->path_len, c->path);
    check_slice(c->name, "query", req->query, req->query_len, c->query);
    check_slice(c->name, "authority", req->authority, req->authority_len, c->authority);
    check_num(c->name, "target_form", req->target_form, c->form);
    check_num(c->name, "minor_version", req->minor_version, c->minor);
    check_num(c->name, "num_headers", (long long)req->num_headers, c->num_headers);
    check_num(c->name, "body", req->body, c->body);
    check_num(c->name, "content_length", (long long)req->content_length,
              (long long)c->content_length);
    check_num(c->name, "keep_alive", req->keep_alive, c->keep_alive);
    check_num(c->name, "expect_continue", req->expect_continue, c->expect_continue);
    check_num(c->name, "upgrade", req->upgrade, c->upgrade);
    check_num(c->name, "is_connect", req->is_connect, c->is_connect);
    if (req->err != NULL || req->status != 0)
        failf(c->name, "err/status set on success");
    if (!inside(req->target, req->target_len, buf, (size_t)rc) ||
        !inside(req->path, req->path_len, buf, (size_t)rc) ||
        !inside(req->query, req->query_len, buf, (size_t)rc) ||
        !inside(req->authority, req->authority_len, buf, (size_t)rc))
        failf(c->name, "a slice points outside the head");
    PGW_UNUSED(len);
}

static void test_request_valid(void)
{
    for (size_t i = 0; i < PGW_ARRAY_LEN(valid_requests); i++) {
        const struct req_case *c = &valid_requests[i];
        size_t total = c->len + c->tail_len;
        char *buf = concat(c->bytes, c->len, c->tail, c->tail_len);
        char *exact = dup_exact(buf, total);
        struct pgw_http_request req;
        struct pgw_http_header h[MAXH];
        int rc = pgw_http_parse_request(exact, total, &req, h, MAXH, NULL);
        check_request_fields(c, exact, total, rc, &req);
        free(exact);
        free(buf);
    }
}

static void test_request_valid_split(void)
{
    for (size_t i = 0; i < PGW_ARRAY_LEN(valid_requests); i++) {
        const struct req_case *c = &valid_requests[i];
        char *buf = concat(c->bytes, c->len, c->tail, c->tail_len);
        check_split_request(c->name, buf, c->len + c->tail_len, c->len, NULL);
        free(buf);
    }
}

/* The head alone, parsed into an exact buffer, gives the same fields as with the tail. */
static void test_request_head_alone(void)
{
    for (size_t i = 0; i < PGW_ARRAY_LEN(valid_requests); i++) {
        const struct req_case *c = &valid_requests[i];
        char *exact = dup_exact(c->bytes, c->len);
        struct pgw_http_request req;
        struct pgw_http_header h[MAXH];
        int rc = pgw_http_parse_request(exact, c->len, &req, h, MAXH, NULL);
        check_request_fields(c, exact, c->len, rc, &req);
        free(exact);
    }
}

/* Names and values are returned exactly, OWS trimmed, in order. */
static void test_request_header_slices(void)
{
    static const char in[] = GET11 "X-Empty:\r\nX-Spaces: \t \r\n"
                                   "X-Text: caf\xc3\xa9 \t au lait\t\r\nx-lower:v\r\n\r\n";
    char *buf = dup_exact(in, sizeof(in) - 1);
    struct pgw_http_request req;
    struct pgw_http_header h[8];
    int rc = pgw_http_parse_request(buf, sizeof(in) - 1, &req, h, 8, NULL);
    CHECK_INT(rc, sizeof(in) - 1);
    CHECK_INT(req.num_headers, 5);
    CHECK(req.headers == h);
    CHECK_MEM(h[0].name, h[0].name_len, "Host");
    CHECK_MEM(h[0].value, h[0].value_len, "a");
    CHECK_MEM(h[1].name, h[1].name_len, "X-Empty");
    CHECK_INT(h[1].value_len, 0);
    CHECK_MEM(h[2].name, h[2].name_len, "X-Spaces");
    CHECK_INT(h[2].value_len, 0);
    CHECK_MEM(h[3].value, h[3].value_len, "caf\xc3\xa9 \t au lait");
    CHECK_MEM(h[4].name, h[4].name_len, "x-lower");
    CHECK_MEM(h[4].value, h[4].value_len, "v");
    CHECK_MEM(req.target, req.target_len, "/");
    free(buf);
}

/* ---- Requests: rejected ---- */

struct bad_case {
    const char *name;
    const char *bytes;
    size_t len;
    int status;
};

static const struct bad_case bad_requests[] = {
    /* framing */
    {"Content-Length and Transfer-Encoding",
     BYTES("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
     400},
    {"Transfer-Encoding then Content-Length",
     BYTES("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"),
     400},
    {"two equal Content-Length",
     BYTES("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"), 400},
    {"two different Content-Length",
     BYTES("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n"), 400},
    {"Content-Length list", BYTES(GET11 "Content-Length: 5, 5\r\n\r\n"), 400},
    {"Content-Length trailing comma", BYTES(GET11 "Content-Length: 5,\r\n\r\n"), 400},
    {"Content-Length +5", BYTES(GET11 "Content-Length: +5\r\n\r\n"), 400},
    {"Content-Length -5", BYTES(GET11 "Content-Length: -5\r\n\r\n"), 400},
    {"Content-Length with an inner space", BYTES(GET11 "Content-Length: 1 2\r\n\r\n"), 400},
    {"Content-Length hex", BYTES(GET11 "Content-Length: 0x5\r\n\r\n"), 400},
    {"Content-Length with a letter", BYTES(GET11 "Content-Length: 5a\r\n\r\n"), 400},
    {"Content-Length exponent", BYTES(GET11 "Content-Length: 1e3\r\n\r\n"), 400},
    {"Content-Length decimal point", BYTES(GET11 "Content-Length: 5.0\r\n\r\n"), 400},
    {"Content-Length empty", BYTES(GET11 "Content-Length:\r\n\r\n"), 400},
    {"Content-Length OWS only", BYTES(GET11 "Content-Length:  \t \r\n\r\n"), 400},
    {"Content-Length INT64_MAX + 1", BYTES(GET11 "Content-Length: 9223372036854775808\r\n\r\n"),
     400},
    {"Content-Length 2^64", BYTES(GET11 "Content-Length: 18446744073709551616\r\n\r\n"), 400},
    {"Content-Length 20 digits", BYTES(GET11 "Content-Length: 00000000000000000005\r\n\r\n"), 400},
    {"Content-Length 30 digits",
     BYTES(GET11 "Content-Length: 123456789012345678901234567890\r\n\r\n"), 400},
    {"Transfer-Encoding gzip alone", BYTES(GET11 "Transfer-Encoding: gzip\r\n\r\n"), 400},
    {"Transfer-Encoding identity", BYTES(GET11 "Transfer-Encoding: identity\r\n\r\n"), 400},
    {"Transfer-Encoding chunked, gzip", BYTES(GET11 "Transfer-Encoding: chunked, gzip\r\n\r\n"),
     400},
    {"Transfer-Encoding last in a second field not chunked",
     BYTES(GET11 "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"), 400},
    {"Transfer-Encoding gzip, chunked (unknown coding)",
     BYTES(GET11 "Transfer-Encoding: gzip, chunked\r\n\r\n"), 501},
    {"Transfer-Encoding unknown coding in a first field",
     BYTES(GET11 "Transfer-Encoding: x-custom\r\nTransfer-Encoding: chunked\r\n\r\n"), 501},
    {"Transfer-Encoding chunked, chunked",
     BYTES(GET11 "Transfer-Encoding: chunked, chunked\r\n\r\n"), 400},
    {"Transfer-Encoding chunked in two fields",
     BYTES(GET11 "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"), 400},
    {"Transfer-Encoding with a parameter", BYTES(GET11 "Transfer-Encoding: chunked;q=1\r\n\r\n"),
     400},
    {"Transfer-Encoding quoted", BYTES(GET11 "Transfer-Encoding: \"chunked\"\r\n\r\n"), 400},
    {"Transfer-Encoding chunked with a space inside",
     BYTES(GET11 "Transfer-Encoding: chun ked\r\n\r\n"), 400},
    {"Transfer-Encoding empty", BYTES(GET11 "Transfer-Encoding:\r\n\r\n"), 400},
    {"Transfer-Encoding in HTTP/1.0",
     BYTES("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400},
    /* field syntax */
    {"obs-fold with SP", BYTES(GET11 "X: a\r\n b\r\n\r\n"), 400},
    {"obs-fold with HTAB", BYTES(GET11 "X: a\r\n\tb\r\n\r\n"), 400},
    {"obs-fold after a bare LF", BYTES(GET11 "X: a\n b\n\n"), 400},
    {"whitespace before the first field", BYTES("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), 400},
    {"bare CR ending the request line", BYTES("GET / HTTP/1.1\rHost: a\r\n\r\n"), 400},
    {"bare CR in a value", BYTES(GET11 "X: a\rb\r\n\r\n"), 400},
    {"bare CR ending a field line", BYTES(GET11 "X: a\r\r\n\r\n"), 400},
    {"bare CR as the final line", BYTES(GET11 "\r\r\n"), 400},
    {"bare CR in a name", BYTES(GET11 "X\r: a\r\n\r\n"), 400},
    {"bare CR before the request line", BYTES("\r\rGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"SP between name and colon", BYTES("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), 400},
    {"HTAB between name and colon", BYTES(GET11 "X\t: a\r\n\r\n"), 400},
    {"empty field name", BYTES(GET11 ": a\r\n\r\n"), 400},
    {"NUL in a name", BYTES(GET11 "X\0Y: a\r\n\r\n"), 400},
    {"NUL starting a name", BYTES(GET11 "\0: a\r\n\r\n"), 400},
    {"control byte in a name", BYTES(GET11 "X\x01Y: a\r\n\r\n"), 400},
    {"DEL in a name", BYTES(GET11 "X\x7f: a\r\n\r\n"), 400},
    {"obs-text in a name", BYTES(GET11 "X\xc3\xa9: a\r\n\r\n"), 400},
    {"'(' in a name", BYTES(GET11 "X(: a\r\n\r\n"), 400},
    {"'/' in a name", BYTES(GET11 "X/Y: a\r\n\r\n"), 400},
    {"'@' in a name", BYTES(GET11 "X@Y: a\r\n\r\n"), 400},
    {"'\"' in a name", BYTES(GET11 "X\"Y: a\r\n\r\n"), 400},
    {"'{' in a name", BYTES(GET11 "X{: a\r\n\r\n"), 400},
    {"'[' in a name", BYTES(GET11 "X[: a\r\n\r\n"), 400},
    {"'=' in a name", BYTES(GET11 "X=Y: a\r\n\r\n"), 400},
    {"NUL in a value", BYTES(GET11 "X: a\0b\r\n\r\n"), 400},
    {"NUL at the end of a value", BYTES(GET11 "X: ab\0\r\n\r\n"), 400},
    {"NUL after 8 value bytes", BYTES(GET11 "X: 0123456789\0\r\n\r\n"), 400},
    {"SOH in a value", BYTES(GET11 "X: a\x01" "b\r\n\r\n"), 400},
    {"VT in a value", BYTES(GET11 "X: a\x0b" "b\r\n\r\n"), 400},
    {"FF in a value", BYTES(GET11 "X: a\x0c" "b\r\n\r\n"), 400},
    {"US in a value", BYTES(GET11 "X: a\x1f" "b\r\n\r\n"), 400},
    {"ESC after 16 value bytes", BYTES(GET11 "X: 0123456789abcdef\x1b\r\n\r\n"), 400},
    {"DEL in a value", BYTES(GET11 "X: a\x7f" "b\r\n\r\n"), 400},
    {"DEL after 8 value bytes", BYTES(GET11 "X: 01234567\x7f\r\n\r\n"), 400},
    {"LF inside a value makes a line without colon", BYTES(GET11 "X: a\nb c\r\n\r\n"), 400},
    {"line without a colon", BYTES(GET11 "Hosta\r\n\r\n"), 400},
    {"line without a colon, bare LF", BYTES(GET11 "X\n\n"), 400},
    {"line without a colon, with a space", BYTES(GET11 "X a\r\n\r\n"), 400},
    {"underscore in a name", BYTES(GET11 "X_Y: a\r\n\r\n"), 400},
    {"underscore starting a name", BYTES(GET11 "_X: a\r\n\r\n"), 400},
    {"Content_Length", BYTES(GET11 "Content_Length: 5\r\n\r\n"), 400},
    /* Host */
    {"HTTP/1.1 without Host", BYTES("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"), 400},
    {"HTTP/1.1 absolute-form without Host", BYTES("GET http://a/ HTTP/1.1\r\n\r\n"), 400},
    {"two Host fields", BYTES(GET11 "Host: a\r\n\r\n"), 400},
    {"two Host fields, different", BYTES(GET11 "host: b\r\n\r\n"), 400},
    {"Host list", BYTES("GET / HTTP/1.1\r\nHost: a, b\r\n\r\n"), 400},
    {"Host list without space", BYTES("GET / HTTP/1.1\r\nHost: a,b\r\n\r\n"), 400},
    {"empty Host", BYTES("GET / HTTP/1.1\r\nHost:\r\n\r\n"), 400},
    {"Host OWS only", BYTES("GET / HTTP/1.1\r\nHost:  \t \r\n\r\n"), 400},
    {"empty Host in HTTP/1.0", BYTES("GET / HTTP/1.0\r\nHost:\r\n\r\n"), 400},
    {"Host with a space", BYTES("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400},
    {"Host with a path", BYTES("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), 400},
    {"Host with userinfo", BYTES("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"), 400},
    {"Host pct-encoded", BYTES("GET / HTTP/1.1\r\nHost: %61\r\n\r\n"), 400},
    {"Host with ';'", BYTES("GET / HTTP/1.1\r\nHost: a;b\r\n\r\n"), 400},
    {"Host obs-text", BYTES("GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n"), 400},
    {"Host port only", BYTES("GET / HTTP/1.1\r\nHost: :80\r\n\r\n"), 400},
    {"Host empty port", BYTES("GET / HTTP/1.1\r\nHost: a:\r\n\r\n"), 400},
    {"Host port over 65535", BYTES("GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n"), 400},
    {"Host port of 6 digits", BYTES("GET / HTTP/1.1\r\nHost: a:000080\r\n\r\n"), 400},
    {"Host port with a letter", BYTES("GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n"), 400},
    {"Host two ports", BYTES("GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n"), 400},
    {"Host unclosed IPv6", BYTES("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"), 400},
    {"Host IPv6 without colons", BYTES("GET / HTTP/1.1\r\nHost: [abc]\r\n\r\n"), 400},
    {"Host IPv6 with a bad byte", BYTES("GET / HTTP/1.1\r\nHost: [::g]\r\n\r\n"), 400},
    {"Host IPv6 followed by junk", BYTES("GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n"), 400},
    /* method and target */
    {"method with '('", BYTES("G(T / HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"method with ':'", BYTES("G:T / HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"method with a control byte", BYTES("GE\x01T / HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"method with obs-text", BYTES("G\xffT / HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"method followed by HTAB", BYTES("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"empty method", BYTES(" / HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"request line without target", BYTES("GET\r\nHost: a\r\n\r\n"), 400},
    {"TLS ClientHello on a plain port", BYTES("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
     400},
    {"space in the target", BYTES("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"two spaces before the target", BYTES("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"two spaces after the target", BYTES("GET /  HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"HTAB in the target", BYTES("GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"NUL in the target", BYTES("GET /a\0 HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"control byte in the target", BYTES("GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"control byte after 8 target bytes", BYTES("GET /0123456789\x1f HTTP/1.1\r\nHost: a\r\n\r\n"),
     400},
    {"DEL in the target", BYTES("GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"byte 0x80 in the target", BYTES("GET /a\x80 HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"byte 0xff in the target after 8 bytes",
     BYTES("GET /01234567\xff HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"UTF-8 in the query", BYTES("GET /?q=caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"fragment", BYTES("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"fragment in the query", BYTES("GET /a?b#c HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"fragment after 8 query bytes", BYTES("GET /?0123456789#c HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"CR in the target", BYTES("GET /a\r\nHost: a\r\n\r\n"), 400},
    {"relative target", BYTES("GET a/b HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"query-only target", BYTES("GET ?a HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"asterisk outside OPTIONS", BYTES("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"asterisk with a query", BYTES("OPTIONS *?a HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"absolute-form other scheme", BYTES("GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"absolute-form empty authority", BYTES("GET http:/// HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"absolute-form scheme only", BYTES("GET http:// HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"absolute-form userinfo", BYTES("GET http://u:p@a/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"absolute-form bad port", BYTES("GET http://a:99999/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"CONNECT without a port", BYTES("CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"CONNECT origin-form", BYTES("CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"CONNECT absolute-form", BYTES("CONNECT http://a:1/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    /* versions */
    {"HTTP/2.0", BYTES("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505},
    {"HTTP/1.2", BYTES("GET / HTTP/1.2\r\nHost: a\r\n\r\n"), 505},
    {"HTTP/1.10 is not 1.1", BYTES("GET / HTTP/1.10\r\nHost: a\r\n\r\n"), 505},
    {"HTTP/1.32 is not 1.3", BYTES("GET / HTTP/1.32\r\nHost: a\r\n\r\n"), 505},
    {"HTTP/1.01 is not 1.1", BYTES("GET / HTTP/1.01\r\nHost: a\r\n\r\n"), 505},
    {"HTTP/01.1 is not 1.1", BYTES("GET / HTTP/01.1\r\nHost: a\r\n\r\n"), 505},
    {"HTTP/11.1 is not 1.1", BYTES("GET / HTTP/11.1\r\nHost: a\r\n\r\n"), 505},
    {"HTTP/0.9", BYTES("GET / HTTP/0.9\r\n\r\n"), 505},
    {"HTTP/2.0 bare LF", BYTES("GET / HTTP/2.0\n\n"), 505},
    {"HTTP/2 without minor", BYTES("GET / HTTP/2\r\nHost: a\r\n\r\n"), 400},
    {"HTTP/1. without minor digits", BYTES("GET / HTTP/1.\r\nHost: a\r\n\r\n"), 400},
    {"HTTP/.1 without major digits", BYTES("GET / HTTP/.1\r\nHost: a\r\n\r\n"), 400},
    {"lowercase http/1.1", BYTES("GET / http/1.1\r\nHost: a\r\n\r\n"), 400},
    {"HTTPS/1.1", BYTES("GET / HTTPS/1.1\r\nHost: a\r\n\r\n"), 400},
    {"SP after the version", BYTES("GET / HTTP/1.1 \r\nHost: a\r\n\r\n"), 400},
    {"junk after the version", BYTES("GET / HTTP/1.1x\r\nHost: a\r\n\r\n"), 400},
    {"HTAB before the version", BYTES("GET /\tHTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"missing version", BYTES("GET /\r\nHost: a\r\n\r\n"), 400},
    {"missing version with a space", BYTES("GET / \r\nHost: a\r\n\r\n"), 400},
    /* empty lines */
    {"five empty lines before the request line",
     BYTES("\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"five bare LF before the request line", BYTES("\n\n\n\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
     400},
    {"whitespace line before the request line", BYTES(" \r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
     400},
    /* small limits (small_limits: request line 32, section 128, 4 fields): see below */
};

static void test_request_bad(void)
{
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad_requests); i++) {
        const struct bad_case *c = &bad_requests[i];
        check_bad_request(c->name, c->bytes, c->len, c->status, NULL);
    }
}

/* A request line of <n> bytes (without its CRLF): "GET /aaa... HTTP/1.1". */
static char *request_line_of(size_t n, size_t *len, int complete)
{
    static const char tail[] = " HTTP/1.1";
    static const char rest[] = "\r\nHost: a\r\n\r\n";
    pgw_assert(n > 5 + sizeof(tail));
    char *b = malloc(n + sizeof(rest));
    memcpy(b, "GET /", 5);
    memset(b + 5, 'a', n - 5 - (sizeof(tail) - 1));
    memcpy(b + n - (sizeof(tail) - 1), tail, sizeof(tail) - 1);
    *len = n;
    if (complete) {
        memcpy(b + n, rest, sizeof(rest) - 1);
        *len += sizeof(rest) - 1;
    }
    return b;
}

/* A head of exactly <n> bytes ("GET / HTTP/1.1", Host, one long X field), complete or cut. */
static char *head_of(size_t n, size_t *len, int complete)
{
    static const char start[] = GET11 "X: ";
    pgw_assert(n > sizeof(start) + 4);
    char *b = malloc(n);
    memcpy(b, start, sizeof(start) - 1);
    memset(b + sizeof(start) - 1, 'v', n - (sizeof(start) - 1) - 4);
    memcpy(b + n - 4, "\r\n\r\n", 4);
    *len = complete ? n : n - 4;
    return b;
}

/* Rejections under small limits: request line 32 bytes, head 128 bytes, 4 fields. */
static const struct bad_case bad_requests_small[] = {
    {"request line of 33 bytes", BYTES("GET /0123456789012345678 HTTP/1.1\r\nHost: a\r\n\r\n"),
     414},
    {"request line of 33 bytes, incomplete", BYTES("GET /0123456789012345678 HTTP/1.1"), 414},
    {"request line over the limit in the method", BYTES("GETGETGETGETGETGETGETGETGETGETGET"),
     414},
    {"request line over the limit in the target", BYTES("GET /01234567890123456789012345678"),
     414},
    {"request line over the limit in the version", BYTES("GET /01234567890123456789 HTTP/1."),
     414},
    {"request line over the limit after empty lines",
     BYTES("\r\n\r\nGET /0123456789012345678 HTTP/1.1\r\n"), 414},
    {"5 fields", BYTES(GET11 "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"), 431},
    {"5 fields, incomplete", BYTES(GET11 "A: 1\r\nB: 2\r\nC: 3\r\nD"), 431},
};

static void test_request_limits_small(void)
{
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad_requests_small); i++) {
        const struct bad_case *c = &bad_requests_small[i];
        check_bad_request(c->name, c->bytes, c->len, c->status, &small_limits);
    }
    /* the accepted edges: a request line of exactly 32 bytes, 4 fields, a head of 128 bytes */
    static const char rl32[] = "GET /012345678901234567 HTTP/1.1\r\nHost: a\r\n\r\n";
    static const char f4[] = GET11 "A: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    size_t len;
    char *hs128 = head_of(128, &len, 1);
    check_split_request("request line of exactly 32 bytes", rl32, sizeof(rl32) - 1,
                        sizeof(rl32) - 1, &small_limits);
    check_split_request("exactly 4 fields", f4, sizeof(f4) - 1, sizeof(f4) - 1, &small_limits);
    check_split_request("head of exactly 128 bytes", hs128, 128, 128, &small_limits);
    /* a head of exactly the limit with bytes behind it: truncation does not hide its end */
    char *big = concat(hs128, 128, "GET / HTTP/1.1\r\n", 16);
    check_split_request("head of exactly 128 bytes, more behind", big, 128 + 16, 128,
                        &small_limits);
    free(big);
    free(hs128);
    /* one byte more is 431, complete or not, wherever the limit falls */
    static const size_t over[] = {129, 130, 200};
    for (size_t i = 0; i < PGW_ARRAY_LEN(over); i++) {
        char *b = head_of(over[i], &len, 1);
        check_bad_request("head over 128 bytes", b, len, 431, &small_limits);
        free(b);
        b = head_of(over[i] + 4, &len, 0); /* over[i] bytes, its CRLF CRLF not yet in */
        check_bad_request("head over 128 bytes, incomplete", b, len, 431, &small_limits);
        free(b);
    }
}

static int parse_heap(const char *b, size_t len, const struct pgw_http_limits *lim,
                      struct pgw_http_request *req)
{
    static struct pgw_http_header h[MAXH];
    return parse_req(b, len, lim, req, h, MAXH);
}

static void test_request_limits_default(void)
{
    struct pgw_http_request req;
    size_t len;
    char *b;

    /* request line: 8192 bytes accepted, 8193 is 414 whether complete or not */
    b = request_line_of(8192, &len, 1);
    CHECK_INT(parse_heap(b, len, NULL, &req), len);
    CHECK_INT(parse_heap(b, 8192, NULL, &req), PGW_AGAIN);
    CHECK_INT(parse_heap(b, 8193, NULL, &req), PGW_AGAIN); /* the CR: the line may still end */
    free(b);
    b = request_line_of(8193, &len, 1);
    CHECK_INT(parse_heap(b, len, NULL, &req), PGW_ERR);
    CHECK_INT(req.status, 414);
    CHECK(req.err != NULL);
    CHECK_INT(parse_heap(b, 8193, NULL, &req), PGW_ERR);
    CHECK_INT(req.status, 414);
    CHECK_INT(parse_heap(b, 8192, NULL, &req), PGW_AGAIN);
    free(b);
    b = request_line_of(20000, &len, 0);
    CHECK_INT(parse_heap(b, len, NULL, &req), PGW_ERR);
    CHECK_INT(req.status, 414);
    free(b);

    /* header section: 32768 bytes accepted, 32769 is 431, incomplete too */
    b = head_of(32768, &len, 1);
    CHECK_INT(parse_heap(b, len, NULL, &req), 32768);
    CHECK_INT(parse_heap(b, len - 1, NULL, &req), PGW_AGAIN);
    free(b);
    b = head_of(32769, &len, 1);
    CHECK_INT(parse_heap(b, len, NULL, &req), PGW_ERR);
    CHECK_INT(req.status, 431);
    CHECK(req.err != NULL);
    CHECK_INT(parse_heap(b, 32768, NULL, &req), PGW_AGAIN);
    free(b);
    b = head_of(40000, &len, 0);
    CHECK_INT(parse_heap(b, len, NULL, &req), PGW_ERR);
    CHECK_INT(req.status, 431);
    CHECK_INT(parse_heap(b, 32768, NULL, &req), PGW_AGAIN);
    CHECK_INT(parse_heap(b, 32769, NULL, &req), PGW_ERR);
    free(b);
}

/* <n> fields "Xi: v" after "GET / HTTP/1.1" and Host. */
static char *fields_of(size_t n, size_t *len)
{
    char *b = malloc(64 + n * 16);
    size_t o = (size_t)sprintf(b, "%s", GET11);
    for (size_t i = 1; i < n; i++)
        o += (size_t)sprintf(b + o, "X%zu: v\r\n", i);
    o += (size_t)sprintf(b + o, "\r\n");
    *len = o;
    return b;
}

static void test_request_field_count(void)
{
    struct pgw_http_request req;
    struct pgw_http_header h[MAXH];
    size_t len;
    char *b;

    /* default limit: 100 fields */
    b = fields_of(100, &len);
    CHECK_INT(parse_req(b, len, NULL, &req, h, MAXH), len);
    CHECK_INT(req.num_headers, 100);
    free(b);
    b = fields_of(101, &len);
    CHECK_INT(parse_req(b, len, NULL, &req, h, MAXH), PGW_ERR);
    CHECK_INT(req.status, 431);
    CHECK(req.err != NULL);
    free(b);
    /* the caller's array bounds the count too */
    b = fields_of(3, &len);
    CHECK_INT(parse_req(b, len, NULL, &req, h, 3), len);
    CHECK_INT(parse_req(b, len, NULL, &req, h, 2), PGW_ERR);
    CHECK_INT(req.status, 431);
    free(b);
    /* lim->header_fields below the array */
    struct pgw_http_limits lim = {8192, 32768, 2, 0};
    b = fields_of(2, &len);
    CHECK_INT(parse_req(b, len, &lim, &req, h, MAXH), len);
    free(b);
    b = fields_of(3, &len);
    CHECK_INT(parse_req(b, len, &lim, &req, h, MAXH), PGW_ERR);
    CHECK_INT(req.status, 431);
    free(b);
    /* no room at all */
    static const char nohost[] = "GET / HTTP/1.0\r\n\r\n";
    CHECK_INT(parse_req(nohost, sizeof(nohost) - 1, NULL, &req, NULL, 0), sizeof(nohost) - 1);
    static const char onefield[] = "GET / HTTP/1.0\r\nX: y\r\n\r\n";
    CHECK_INT(parse_req(onefield, sizeof(onefield) - 1, NULL, &req, NULL, 0), PGW_ERR);
    CHECK_INT(req.status, 431);
}

/* ---- Requests: underscores ---- */

static void test_request_underscores(void)
{
    static const char in[] = "POST / HTTP/1.1\r\nHost: a\r\nX_Secret: 1\r\n_lead: 2\r\n"
                             "Content_Length: 5\r\nTransfer_Encoding: chunked\r\nX-Ok: 3\r\n\r\n";
    struct pgw_http_request req;
    struct pgw_http_header h[MAXH];
    char *buf = dup_exact(in, sizeof(in) - 1);

    /* default: 400 at the first underscore */
    CHECK_INT(pgw_http_parse_request(buf, sizeof(in) - 1, &req, h, MAXH, NULL), PGW_ERR);
    CHECK_INT(req.status, 400);
    CHECK(req.err != NULL);

    /* drop: validated, counted against the field limit, never returned, never framing */
    CHECK_INT(pgw_http_parse_request(buf, sizeof(in) - 1, &req, h, MAXH, &drop_limits),
              sizeof(in) - 1);
    CHECK_INT(req.num_headers, 2);
    CHECK_MEM(h[0].name, h[0].name_len, "Host");
    CHECK_MEM(h[1].name, h[1].name_len, "X-Ok");
    CHECK_INT(req.body, PGW_HTTP_BODY_NONE);
    CHECK(pgw_http_find(h, req.num_headers, "x_secret", 8) == NULL);
    check_split_request("drop_underscores", buf, sizeof(in) - 1, sizeof(in) - 1, &drop_limits);
    free(buf);

    /* a dropped field is still validated */
    static const char bad[] = GET11 "X_Y: a\x01" "b\r\n\r\n";
    check_bad_request("dropped field with a control byte", bad, sizeof(bad) - 1, 400,
                      &drop_limits);
    static const char badname[] = GET11 "X_Y : a\r\n\r\n";
    check_bad_request("dropped field with a space before the colon", badname,
                      sizeof(badname) - 1, 400, &drop_limits);
    /* a dropped Host does not count as Host */
    static const char nohost[] = "GET / HTTP/1.1\r\nHo_st: a\r\n\r\n";
    check_bad_request("dropped Ho_st is no Host", nohost, sizeof(nohost) - 1, 400, &drop_limits);
    /* dropped fields count against the limit */
    struct pgw_http_limits lim = drop_limits;
    lim.header_fields = 2;
    static const char three[] = GET11 "A_: 1\r\nB: 2\r\n\r\n";
    check_bad_request("dropped fields are counted", three, sizeof(three) - 1, 431, &lim);
}

/* ---- Responses ---- */

static int parse_resp(const char *bytes, size_t len, const struct pgw_http_limits *lim,
                      struct pgw_http_response *resp, struct pgw_http_header *h, size_t maxh)
{
    char *buf = dup_exact(bytes, len);
    int rc = pgw_http_parse_response(buf, len, resp, h, maxh, lim);
    free(buf);
    return rc;
}

struct resp_case {
    const char *name;
    const char *bytes; /* the head */
    size_t len;
    const char *tail;
    size_t tail_len;
    int status;
    const char *reason;
    int minor;
    unsigned num_headers;
    enum pgw_http_body body;      /* resp.body: the framing as sent */
    enum pgw_http_body body_get;  /* pgw_http_response_body(resp, 0) */
    enum pgw_http_body body_head; /* pgw_http_response_body(resp, 1): always NONE */
    uint64_t content_length;
    unsigned keep_alive;
};

static const struct resp_case valid_responses[] = {
    {.name = "200 with Content-Length", BYTES("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
     TAIL("hello"), .status = 200, .reason = "OK", .minor = 1, .num_headers = 1,
     .body = PGW_HTTP_BODY_LENGTH, .body_get = PGW_HTTP_BODY_LENGTH, .content_length = 5,
     .keep_alive = 1},
    {.name = "200 chunked",
     BYTES("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"),
     TAIL("0\r\n\r\n"), .status = 200, .reason = "OK", .minor = 1, .num_headers = 2,
     .body = PGW_HTTP_BODY_CHUNKED, .body_get = PGW_HTTP_BODY_CHUNKED, .keep_alive = 1},
    {.name = "200 delimited by EOF", BYTES("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n"),
     TAIL("body until close"), .status = 200, .reason = "OK", .minor = 1, .num_headers = 1,
     .body = PGW_HTTP_BODY_EOF, .body_get = PGW_HTTP_BODY_EOF, .keep_alive = 1},
    {.name = "HTTP/1.0 200 delimited by EOF", BYTES("HTTP/1.0 200 OK\r\n\r\n"), .status = 200,
     .reason = "OK", .minor = 0, .body = PGW_HTTP_BODY_EOF, .body_get = PGW_HTTP_BODY_EOF},
    {.name = "HTTP/1.0 keep-alive with a length",
     BYTES("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n"), TAIL("ok"),
     .status = 200, .reason = "OK", .minor = 0, .num_headers = 2, .body = PGW_HTTP_BODY_LENGTH,
     .body_get = PGW_HTTP_BODY_LENGTH, .content_length = 2, .keep_alive = 1},
    {.name = "Connection: close",
     BYTES("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"), .status = 200,
     .reason = "OK", .minor = 1, .num_headers = 2},
    {.name = "Content-Length: 0", BYTES("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
     TAIL("HTTP/1.1 200 OK\r\n"), .status = 200, .reason = "OK", .minor = 1, .num_headers = 1,
     .keep_alive = 1},
    {.name = "100 Continue", BYTES("HTTP/1.1 100 Continue\r\n\r\n"),
     TAIL("HTTP/1.1 200 OK\r\n\r\n"), .status = 100, .reason = "Continue", .minor = 1,
     .body = PGW_HTTP_BODY_EOF, .keep_alive = 1},
    {.name = "103 Early Hints with a field",
     BYTES("HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"), .status = 103,
     .reason = "Early Hints", .minor = 1, .num_headers = 1, .body = PGW_HTTP_BODY_EOF,
     .keep_alive = 1},
    {.name = "101 Switching Protocols",
     BYTES("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "\r\n"),
     .status = 101, .reason = "Switching Protocols", .minor = 1, .num_headers = 2,
     .body = PGW_HTTP_BODY_EOF, .keep_alive = 1},
    {.name = "204 has no body", BYTES("HTTP/1.1 204 No Content\r\n\r\n"), .status = 204,
     .reason = "No Content", .minor = 1, .body = PGW_HTTP_BODY_EOF, .keep_alive = 1},
    {.name = "304 has no body whatever its length says",
     BYTES("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"), .status = 304,
     .reason = "Not Modified", .minor = 1, .num_headers = 1, .body = PGW_HTTP_BODY_LENGTH,
     .content_length = 10, .keep_alive = 1},
    {.name = "599 and an empty reason without SP", BYTES("HTTP/1.1 599\r\n\r\n"), .status = 599,
     .reason = "", .minor = 1, .body = PGW_HTTP_BODY_EOF, .body_get = PGW_HTTP_BODY_EOF,
     .keep_alive = 1},
    {.name = "empty reason with SP", BYTES("HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n"),
     .status = 404, .reason = "", .minor = 1, .num_headers = 1, .keep_alive = 1},
    {.name = "reason with HTAB, obs-text, long",
     BYTES("HTTP/1.1 200 Tr\xc3\xa8s\tbien, merci beaucoup\r\nContent-Length: 0\r\n\r\n"),
     .status = 200, .reason = "Tr\xc3\xa8s\tbien, merci beaucoup", .minor = 1, .num_headers = 1,
     .keep_alive = 1},
    {.name = "underscores allowed in names",
     BYTES("HTTP/1.1 200 OK\r\nX_Upstream_Id: 7\r\n_x: y\r\nContent-Length: 0\r\n\r\n"),
     .status = 200, .reason = "OK", .minor = 1, .num_headers = 3, .keep_alive = 1},
    {.name = "bare LF", BYTES("HTTP/1.1 200 OK\nContent-Length: 1\n\n"), TAIL("x"),
     .status = 200, .reason = "OK", .minor = 1, .num_headers = 1, .body = PGW_HTTP_BODY_LENGTH,
     .body_get = PGW_HTTP_BODY_LENGTH, .content_length = 1, .keep_alive = 1},
};

static void test_response_valid(void)
{
    for (size_t i = 0; i < PGW_ARRAY_LEN(valid_responses); i++) {
        const struct resp_case *c = &valid_responses[i];
        size_t total = c->len + c->tail_len;
        char *buf = concat(c->bytes, c->len, c->tail, c->tail_len);
        char *exact = dup_exact(buf, total);
        struct pgw_http_response resp;
        struct pgw_http_header h[MAXH];
        int rc = pgw_http_parse_response(exact, total, &resp, h, MAXH, NULL);
        if (rc != (int)c->len) {
            failf(c->name, "returned %d, expected %zu (%s)", rc, c->len,
                  resp.err ? resp.err : "-");
        } else {
            check_num(c->name, "status", resp.status, c->status);
            check_slice(c->name, "reason", resp.reason, resp.reason_len, c->reason);
            check_num(c->name, "minor_version", resp.minor_version, c->minor);
            check_num(c->name, "num_headers", (long long)resp.num_headers, c->num_headers);
            check_num(c->name, "body", resp.body, c->body);
            check_num(c->name, "response_body(GET)", pgw_http_response_body(&resp, 0),
                      c->body_get);
            check_num(c->name, "response_body(HEAD)", pgw_http_response_body(&resp, 1),
                      PGW_HTTP_BODY_NONE);
            check_num(c->name, "content_length", (long long)resp.content_length,
                      (long long)c->content_length);
            check_num(c->name, "keep_alive", resp.keep_alive, c->keep_alive);
            if (resp.err != NULL)
                failf(c->name, "err set on success");
        }
        free(exact);

        /* split at every byte: PGW_AGAIN for every strict prefix of the head */
        for (size_t k = 0; k <= total; k++) {
            rc = parse_resp(buf, k, NULL, &resp, h, MAXH);
            long long want = k < c->len ? PGW_AGAIN : (long long)c->len;
            if (rc != want) {
                failf(c->name, "prefix of %zu/%zu bytes returned %d, expected %lld", k, total, rc,
                      want);
                break;
            }
        }
        free(buf);
    }
}

static void test_response_header_slices(void)
{
    static const char in[] = "HTTP/1.1 200 OK\r\nX_Id:  7 \r\nSet-Cookie: a=b\r\n\r\n";
    struct pgw_http_response resp;
    struct pgw_http_header h[4];
    char *buf = dup_exact(in, sizeof(in) - 1);
    CHECK_INT(pgw_http_parse_response(buf, sizeof(in) - 1, &resp, h, 4, NULL), sizeof(in) - 1);
    CHECK_INT(resp.num_headers, 2);
    CHECK(resp.headers == h);
    CHECK_MEM(h[0].name, h[0].name_len, "X_Id");
    CHECK_MEM(h[0].value, h[0].value_len, "7");
    CHECK_MEM(h[1].name, h[1].name_len, "Set-Cookie");
    CHECK_MEM(h[1].value, h[1].value_len, "a=b");
    free(buf);
}

struct bad_resp_case {
    const char *name;
    const char *bytes;
    size_t len;
};

static const struct bad_resp_case bad_responses[] = {
    {"Content-Length and Transfer-Encoding",
     BYTES("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")},
    {"two equal Content-Length",
     BYTES("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")},
    {"two different Content-Length",
     BYTES("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")},
    {"Content-Length list", BYTES("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n")},
    {"Content-Length signed", BYTES("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n")},
    {"Content-Length overflow",
     BYTES("HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551617\r\n\r\n")},
    {"Transfer-Encoding not ending in chunked",
     BYTES("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")},
    {"Transfer-Encoding unknown coding",
     BYTES("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")},
    {"Transfer-Encoding in HTTP/1.0",
     BYTES("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")},
    {"status 099", BYTES("HTTP/1.1 099 Low\r\n\r\n")},
    {"status 000", BYTES("HTTP/1.1 000 Zero\r\n\r\n")},
    {"status 600", BYTES("HTTP/1.1 600 High\r\n\r\n")},
    {"status 999", BYTES("HTTP/1.1 999 High\r\n\r\n")},
    {"status of 4 digits", BYTES("HTTP/1.1 2000 OK\r\n\r\n")},
    {"status of 2 digits", BYTES("HTTP/1.1 20 OK\r\n\r\n")},
    {"status with a letter", BYTES("HTTP/1.1 2x0 OK\r\n\r\n")},
    {"status signed", BYTES("HTTP/1.1 +20 OK\r\n\r\n")},
    {"two spaces before the status", BYTES("HTTP/1.1  200 OK\r\n\r\n")},
    {"no space after the status", BYTES("HTTP/1.1 200OK\r\n\r\n")},
    {"HTAB after the status", BYTES("HTTP/1.1 200\tOK\r\n\r\n")},
    {"no status", BYTES("HTTP/1.1 \r\n\r\n")},
    {"no space after the version", BYTES("HTTP/1.1\r\n\r\n")},
    {"HTAB before the status", BYTES("HTTP/1.1\t200 OK\r\n\r\n")},
    {"HTTP/2.0", BYTES("HTTP/2.0 200 OK\r\n\r\n")},
    {"HTTP/1.10", BYTES("HTTP/1.10 200 OK\r\n\r\n")},
    {"HTTP/2", BYTES("HTTP/2 200 OK\r\n\r\n")},
    {"lowercase http", BYTES("http/1.1 200 OK\r\n\r\n")},
    {"leading empty line", BYTES("\r\nHTTP/1.1 200 OK\r\n\r\n")},
    {"not HTTP at all", BYTES("SSH-2.0-OpenSSH_9.2\r\n")},
    {"control byte in the reason", BYTES("HTTP/1.1 200 O\x01K\r\n\r\n")},
    {"NUL in the reason", BYTES("HTTP/1.1 200 O\0K\r\n\r\n")},
    {"bare CR after the status line", BYTES("HTTP/1.1 200 OK\rX: y\r\n\r\n")},
    {"bare CR in a value", BYTES("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n")},
    {"obs-fold", BYTES("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n")},
    {"space before the colon", BYTES("HTTP/1.1 200 OK\r\nX : a\r\n\r\n")},
    {"empty name", BYTES("HTTP/1.1 200 OK\r\n: a\r\n\r\n")},
    {"line without a colon", BYTES("HTTP/1.1 200 OK\r\nX\r\n\r\n")},
    {"NUL in a value", BYTES("HTTP/1.1 200 OK\r\nX: a\0\r\n\r\n")},
    {"DEL in a name", BYTES("HTTP/1.1 200 OK\r\nX\x7f: a\r\n\r\n")},
};

static void test_response_bad(void)
{
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad_responses); i++) {
        const struct bad_resp_case *c = &bad_responses[i];
        struct pgw_http_response resp;
        struct pgw_http_header h[MAXH];
        int rc = parse_resp(c->bytes, c->len, NULL, &resp, h, MAXH);
        if (rc != PGW_ERR || resp.err == NULL) {
            failf(c->name, "returned %d (%s), expected PGW_ERR", rc, resp.err ? resp.err : "-");
            continue;
        }
        /* prefixes: PGW_AGAIN, then the same error once the offending byte is in */
        const char *err = resp.err;
        int seen_err = 0;
        for (size_t k = 0; k < c->len; k++) {
            rc = parse_resp(c->bytes, k, NULL, &resp, h, MAXH);
            if (rc == PGW_AGAIN && !seen_err)
                continue;
            if (rc == PGW_ERR && resp.err == err) {
                seen_err = 1;
                continue;
            }
            failf(c->name, "prefix of %zu bytes returned %d (%s)", k, rc,
                  resp.err ? resp.err : "-");
            break;
        }
    }
}

static void test_response_limits(void)
{
    struct pgw_http_response resp;
    struct pgw_http_header h[MAXH];
    /* small_limits: status line 32, head 128, 4 fields */
    static const char line33[] = "HTTP/1.1 200 0123456789abcdefghij\r\n\r\n";
    static const char line32[] = "HTTP/1.1 200 0123456789abcdefghi\r\n\r\n";
    CHECK_INT(parse_resp(line32, sizeof(line32) - 1, &small_limits, &resp, h, MAXH),
              sizeof(line32) - 1);
    CHECK_INT(parse_resp(line33, sizeof(line33) - 1, &small_limits, &resp, h, MAXH), PGW_ERR);
    CHECK(resp.err != NULL);
    CHECK_INT(parse_resp(line33, 33, &small_limits, &resp, h, MAXH), PGW_ERR); /* incomplete */
    static const char f5[] = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n";
    CHECK_INT(parse_resp(f5, sizeof(f5) - 1, &small_limits, &resp, h, MAXH), PGW_ERR);
    CHECK(resp.err != NULL);
    CHECK_INT(parse_resp(f5, sizeof(f5) - 1, NULL, &resp, h, 4), PGW_ERR);
    CHECK_INT(parse_resp(f5, sizeof(f5) - 1, NULL, &resp, h, 5), sizeof(f5) - 1);
    char big[200];
    memcpy(big, "HTTP/1.1 200 OK\r\nX: ", 20);
    memset(big + 20, 'v', sizeof(big) - 20);
    CHECK_INT(parse_resp(big, sizeof(big), &small_limits, &resp, h, MAXH), PGW_ERR); /* no end */
    CHECK(resp.err != NULL);
    CHECK_INT(parse_resp(big, 128, &small_limits, &resp, h, MAXH), PGW_AGAIN);
    memcpy(big + 124, "\r\n\r\n", 4);
    CHECK_INT(parse_resp(big, sizeof(big), &small_limits, &resp, h, MAXH), 128);
    memcpy(big + 124, "v\r\n\r\n", 5);
    CHECK_INT(parse_resp(big, sizeof(big), &small_limits, &resp, h, MAXH), PGW_ERR);
}

/* ---- Chunked bodies ---- */

struct feed_result {
    int rc;
    size_t consumed;
    char data[20000];
    size_t data_len;
    const char *err;
};

/* Feeds <body> to a fresh decoder as a connection would: <first> bytes arrive, then <step> more
 * at a time; the decoder is called on the unconsumed bytes (an exact heap copy each time) until
 * it makes no progress, then more bytes arrive. Checks the per-call contract on the way. */
static void feed_chunked(const char *name, const char *body, size_t len, size_t first, size_t step,
                         struct feed_result *r)
{
    struct pgw_http_chunked d;
    size_t pos = 0, avail = PGW_MIN(first, len);
    pgw_http_chunked_init(&d);
    r->rc = PGW_OK;
    r->data_len = 0;
    r->err = NULL;
    for (;;) {
        size_t n = avail - pos, used = 99, off = 99, dlen = 99;
        char *copy = dup_exact(body + pos, n);
        int rc = pgw_http_chunked_decode(&d, copy, n, &used, &off, &dlen);
        if (used > n || (dlen > 0 && off + dlen > used) || (rc == PGW_ERR && dlen != 0) ||
            (rc == PGW_OK && n > 0 && used == 0) || (rc == PGW_ERR && d.err == NULL)) {
            failf(name, "bad call result: rc %d used %zu of %zu, data %zu+%zu", rc, used, n, off,
                  dlen);
            free(copy);
            r->rc = -100;
            break;
        }
        if (dlen > 0) {
            pgw_assert(r->data_len + dlen <= sizeof(r->data));
            memcpy(r->data + r->data_len, copy + off, dlen);
            r->data_len += dlen;
        }
        free(copy);
        pos += used;
        r->rc = rc;
        if (rc != PGW_OK)
            break;
        if (pos == avail) {
            if (avail == len)
                break;
            avail = PGW_MIN(avail + step, len);
        }
    }
    r->consumed = pos;
    r->err = d.err;
}

struct chunk_case {
    const char *name;
    const char *bytes; /* the chunked body */
    size_t len;
    const char *data; /* the decoded data */
    size_t data_len;
};

#define DATA(s) .data = (s), .data_len = sizeof(s) - 1

static const struct chunk_case valid_chunked[] = {
    {"one chunk", BYTES("5\r\nhello\r\n0\r\n\r\n"), DATA("hello")},
    {"two chunks", BYTES("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), DATA("hello world")},
    {"empty body", BYTES("0\r\n\r\n"), DATA("")},
    {"leading zeros on the last chunk", BYTES("000\r\n\r\n"), DATA("")},
    {"hex sizes in both cases",
     BYTES("a\r\n0123456789\r\nB\r\nabcdefghijk\r\n0\r\n\r\n"), DATA("0123456789abcdefghijk")},
    {"16 hex digits", BYTES("0000000000000003\r\nabc\r\n0000000000000000\r\n\r\n"), DATA("abc")},
    {"data holding CRLF and NUL", BYTES("6\r\n\r\n\0\r\n0\r\n0\r\n\r\n"), DATA("\r\n\0\r\n0")},
    {"extensions", BYTES("5;name=value\r\nhello\r\n3;a;b=c\r\nabc\r\n0;last\r\n\r\n"),
     DATA("helloabc")},
    {"extension with BWS", BYTES("3 ; a = b ;c\t;\td=e\r\nabc\r\n0\r\n\r\n"), DATA("abc")},
    {"quoted extension with escapes",
     BYTES("3;a=\"b c;\\\"d\\\\\"\r\nabc\r\n0;q=\"\"\r\n\r\n"), DATA("abc")},
    {"quoted extension with obs-text", BYTES("1;a=\"\xc3\xa9\"\r\nx\r\n0\r\n\r\n"), DATA("x")},
    {"trailers", BYTES("5\r\nhello\r\n0\r\nX-Trailer: v\r\nY_Z:\t w \r\nEmpty:\r\n\r\n"),
     DATA("hello")},
    {"bare LF everywhere", BYTES("5\nhello\n0\nT: v\n\n"), DATA("hello")},
    {"extension of exactly PGW_HTTP_CHUNK_EXT_MAX bytes",
     BYTES("1;0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
           "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
           "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
           "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\nx\r\n0\r\n\r\n"),
     DATA("x")},
};

static void check_feed(const struct chunk_case *c, size_t first, size_t step)
{
    static struct feed_result r;
    feed_chunked(c->name, c->bytes, c->len, first, step, &r);
    if (r.rc != PGW_DONE || r.consumed != c->len || r.data_len != c->data_len ||
        memcmp(r.data, c->data, c->data_len) != 0)
        failf(c->name, "fed %zu then %zu at a time: rc %d (%s), consumed %zu of %zu, data %zu "
                       "bytes \"%.*s\"",
              first, step, r.rc, r.err ? r.err : "-", r.consumed, c->len, r.data_len,
              (int)r.data_len, r.data);
}

static void test_chunked_valid(void)
{
    for (size_t i = 0; i < PGW_ARRAY_LEN(valid_chunked); i++) {
        const struct chunk_case *c = &valid_chunked[i];
        check_feed(c, c->len, c->len);        /* whole */
        for (size_t k = 0; k < c->len; k++) /* split at every byte */
            check_feed(c, k, c->len);
        check_feed(c, 1, 1); /* a byte at a time */
        check_feed(c, 0, 3);
    }
}

/* After PGW_DONE the next message's bytes are left alone, and DONE is sticky. */
static void test_chunked_next_message(void)
{
    static const char in[] = "3\r\nabc\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\n";
    size_t body_len = sizeof("3\r\nabc\r\n0\r\nT: 1\r\n\r\n") - 1;
    char *buf = dup_exact(in, sizeof(in) - 1);
    struct pgw_http_chunked d;
    size_t used, off, dlen, pos = 0;
    int rc;
    char data[8];
    size_t data_len = 0;
    pgw_http_chunked_init(&d);
    do {
        rc = pgw_http_chunked_decode(&d, buf + pos, sizeof(in) - 1 - pos, &used, &off, &dlen);
        memcpy(data + data_len, buf + pos + off, dlen);
        data_len += dlen;
        pos += used;
    } while (rc == PGW_OK);
    CHECK_INT(rc, PGW_DONE);
    CHECK_INT(pos, body_len);
    CHECK_MEM(data, data_len, "abc");
    rc = pgw_http_chunked_decode(&d, buf + pos, sizeof(in) - 1 - pos, &used, &off, &dlen);
    CHECK_INT(rc, PGW_DONE);
    CHECK_INT(used, 0);
    CHECK_INT(dlen, 0);
    free(buf);

    /* a whole body and the next one in one buffer; then data in the same call as DONE */
    static const char two[] = "0\r\n\r\n0\r\n\r\n";
    pgw_http_chunked_init(&d);
    CHECK_INT(pgw_http_chunked_decode(&d, two, sizeof(two) - 1, &used, &off, &dlen), PGW_DONE);
    CHECK_INT(used, 5);
    static const char last[] = "2\r\nab\r\n0\r\n\r\nX";
    pgw_http_chunked_init(&d);
    CHECK_INT(pgw_http_chunked_decode(&d, last, sizeof(last) - 1, &used, &off, &dlen), PGW_DONE);
    CHECK_INT(used, sizeof(last) - 2); /* everything but the next message's X */
    CHECK_INT(off, 3);
    CHECK_INT(dlen, 2);

    /* one data span per call: a second chunk in the same buffer waits for the next call */
    static const char spans[] = "1\r\na\r\n1\r\nb\r\n0\r\n\r\n";
    pgw_http_chunked_init(&d);
    CHECK_INT(pgw_http_chunked_decode(&d, spans, sizeof(spans) - 1, &used, &off, &dlen), PGW_OK);
    CHECK_INT(off, 3);
    CHECK_INT(dlen, 1);
    CHECK_INT(used, 9); /* through the second size line, stopping before its data */
    CHECK_INT(pgw_http_chunked_decode(&d, spans + 9, sizeof(spans) - 10, &used, &off, &dlen),
              PGW_DONE);
    CHECK_INT(off, 0);
    CHECK_INT(dlen, 1);
    CHECK_INT(used, sizeof(spans) - 10);

    /* empty input */
    pgw_http_chunked_init(&d);
    CHECK_INT(pgw_http_chunked_decode(&d, spans, 0, &used, &off, &dlen), PGW_OK);
    CHECK_INT(used, 0);
    /* a size up to INT64_MAX is accepted and streams */
    static const char huge[] = "7fffffffffffffff\r\n0123456789";
    pgw_http_chunked_init(&d);
    CHECK_INT(pgw_http_chunked_decode(&d, huge, sizeof(huge) - 1, &used, &off, &dlen), PGW_OK);
    CHECK_INT(used, sizeof(huge) - 1);
    CHECK_INT(dlen, 10);
    CHECK(d.remaining == 0x7fffffffffffffffull - 10);
}

struct chunk_bad_case {
    const char *name;
    const char *bytes;
    size_t len;
    size_t at; /* bytes consumed when the error is reported: the offending byte's offset */
};

static const struct chunk_bad_case bad_chunked[] = {
    {"non-hex size", BYTES("x\r\n"), 0},
    {"non-hex after a digit", BYTES("5x\r\nhello\r\n0\r\n\r\n"), 1},
    {"signed size", BYTES("+5\r\nhello\r\n"), 0},
    {"0x prefix", BYTES("0x5\r\nhello\r\n"), 1},
    {"empty size line", BYTES("\r\n"), 0},
    {"empty size line, bare LF", BYTES("\n"), 0},
    {"extension without a size", BYTES(";a\r\n"), 0},
    {"space before the size", BYTES(" 5\r\nhello\r\n"), 0},
    {"17 hex digits", BYTES("00000000000000005\r\nhello\r\n"), 16},
    {"2^64", BYTES("10000000000000000\r\n"), 16},
    {"2^63", BYTES("8000000000000000\r\n"), 15},
    {"16 f", BYTES("ffffffffffffffff\r\n"), 15},
    {"trailing whitespace on the size line", BYTES("5 \r\nhello\r\n"), 2},
    {"empty extension", BYTES("5;\r\nhello\r\n"), 2},
    {"extension without a name", BYTES("5;=a\r\nhello\r\n"), 2},
    {"extension without a value", BYTES("5;a=\r\nhello\r\n"), 4},
    {"two words in an extension name", BYTES("5;a b\r\nhello\r\n"), 4},
    {"control byte in an extension", BYTES("5;a=\x01\r\nhello\r\n"), 4},
    {"unterminated quoted extension", BYTES("5;a=\"b\r\nhello\r\n"), 6},
    {"junk after a quoted extension", BYTES("5;a=\"b\"c\r\nhello\r\n"), 7},
    {"extension over PGW_HTTP_CHUNK_EXT_MAX",
     BYTES("1;0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
           "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
           "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
           "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\nx\r\n0\r\n\r\n"),
     258},
    {"bare CR on the size line", BYTES("5\rhello\r\n"), 2},
    {"chunk longer than its size", BYTES("5\r\nhelloX\r\n0\r\n\r\n"), 8},
    {"chunk shorter than its size", BYTES("5\r\nhel\r\n0\r\n\r\n"), 8},
    {"bare CR after the data", BYTES("5\r\nhello\rX0\r\n\r\n"), 9},
    {"space in a trailer name", BYTES("0\r\nX Y: a\r\n\r\n"), 4},
    {"trailer with an empty name", BYTES("0\r\n: a\r\n\r\n"), 3},
    {"trailer obs-fold", BYTES("0\r\nX: a\r\n b\r\n\r\n"), 9},
    {"trailer line without a colon", BYTES("0\r\nX\r\n\r\n"), 4},
    {"control byte in a trailer value", BYTES("0\r\nX: a\x01\r\n\r\n"), 7},
    {"NUL in a trailer value", BYTES("0\r\nX: \0\r\n\r\n"), 6},
    {"bare CR in a trailer value", BYTES("0\r\nX: a\rb\r\n\r\n"), 8},
    {"bare CR ending the trailers", BYTES("0\r\n\rX"), 4},
    {"non-token trailer name", BYTES("0\r\nX(: a\r\n\r\n"), 4},
};

static void test_chunked_bad(void)
{
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad_chunked); i++) {
        const struct chunk_bad_case *c = &bad_chunked[i];
        static struct feed_result r;
        feed_chunked(c->name, c->bytes, c->len, c->len, c->len, &r);
        if (r.rc != PGW_ERR || r.err == NULL || r.consumed != c->at) {
            failf(c->name, "whole: rc %d (%s), consumed %zu, expected PGW_ERR at %zu", r.rc,
                  r.err ? r.err : "-", r.consumed, c->at);
            continue;
        }
        const char *err = r.err;
        for (size_t k = 0; k < c->len; k++) {
            feed_chunked(c->name, c->bytes, c->len, k, c->len, &r);
            if (r.rc != PGW_ERR || r.err != err || r.consumed != c->at) {
                failf(c->name, "split at %zu: rc %d (%s), consumed %zu", k, r.rc,
                      r.err ? r.err : "-", r.consumed);
                break;
            }
        }
        feed_chunked(c->name, c->bytes, c->len, 1, 1, &r);
        if (r.rc != PGW_ERR || r.err != err || r.consumed != c->at)
            failf(c->name, "byte at a time: rc %d, consumed %zu", r.rc, r.consumed);
    }
}

/* The trailer section is limited to PGW_HTTP_TRAILERS_MAX bytes, its final CRLF included. */
static void test_chunked_trailer_limit(void)
{
    size_t n = 3 + PGW_HTTP_TRAILERS_MAX + 1;
    char *b = malloc(n);
    static struct feed_result r;
    memcpy(b, "0\r\nX: ", 6);
    memset(b + 6, 'v', n - 6);
    /* exactly the limit: "X: vvv...\r\n\r\n" of PGW_HTTP_TRAILERS_MAX bytes */
    memcpy(b + 3 + PGW_HTTP_TRAILERS_MAX - 4, "\r\n\r\n", 4);
    feed_chunked("trailers at the limit", b, 3 + PGW_HTTP_TRAILERS_MAX, 3 + PGW_HTTP_TRAILERS_MAX,
                 1000, &r);
    CHECK_INT(r.rc, PGW_DONE);
    CHECK_INT(r.consumed, 3 + PGW_HTTP_TRAILERS_MAX);
    /* one byte more */
    memset(b + 6, 'v', n - 6);
    memcpy(b + n - 4, "\r\n\r\n", 4);
    feed_chunked("trailers over the limit", b, n, n, n, &r);
    CHECK_INT(r.rc, PGW_ERR);
    CHECK(r.err != NULL);
    CHECK_INT(r.consumed, 3 + PGW_HTTP_TRAILERS_MAX);
    /* many short lines: their LFs count too. 2048 lines "a:\r\n" and the final CRLF are 8194
     * bytes; before the fix only 6145 of them were counted and this passed. */
    size_t m = 3 + 2048 * 4 + 2;
    char *lines = malloc(m);
    memcpy(lines, "0\r\n", 3);
    for (size_t i = 0; i < 2048; i++)
        memcpy(lines + 3 + i * 4, "a:\r\n", 4);
    memcpy(lines + m - 2, "\r\n", 2);
    feed_chunked("short trailer lines over the limit", lines, m, m, m, &r);
    CHECK_INT(r.rc, PGW_ERR);
    CHECK_INT(r.consumed, 3 + PGW_HTTP_TRAILERS_MAX);
    /* the same at exactly the limit: one line fewer, one line 2 bytes longer (8192 bytes) */
    memcpy(lines + 3 + 2046 * 4, "abc:\r\n\r\n", 8);
    feed_chunked("short trailer lines at the limit", lines, m - 2, m - 2, 7, &r);
    CHECK_INT(r.rc, PGW_DONE);
    CHECK_INT(r.consumed, 3 + PGW_HTTP_TRAILERS_MAX);
    free(lines);
    /* never-ending trailer line */
    memset(b + 6, 'v', n - 6);
    feed_chunked("trailer line without end", b, n, 100, 100, &r);
    CHECK_INT(r.rc, PGW_ERR);
    free(b);
}

/* PGW_ERR is sticky: nothing consumed afterwards, even on valid input. */
static void test_chunked_sticky_error(void)
{
    struct pgw_http_chunked d;
    size_t used, off, dlen;
    pgw_http_chunked_init(&d);
    CHECK_INT(pgw_http_chunked_decode(&d, "z", 1, &used, &off, &dlen), PGW_ERR);
    CHECK_INT(used, 0);
    CHECK(d.err != NULL);
    const char *err = d.err;
    CHECK_INT(pgw_http_chunked_decode(&d, "0\r\n\r\n", 5, &used, &off, &dlen), PGW_ERR);
    CHECK_INT(used, 0);
    CHECK_INT(dlen, 0);
    CHECK(d.err == err);
    /* data decoded earlier in the call is delivered first (PGW_OK); the error comes next */
    pgw_http_chunked_init(&d);
    CHECK_INT(pgw_http_chunked_decode(&d, "2\r\nabX", 6, &used, &off, &dlen), PGW_OK);
    CHECK_INT(used, 5);
    CHECK_INT(off, 3);
    CHECK_INT(dlen, 2);
    CHECK_INT(pgw_http_chunked_decode(&d, "X", 1, &used, &off, &dlen), PGW_ERR);
    CHECK_INT(used, 0);
    CHECK_INT(dlen, 0);
    /* init makes it usable again */
    pgw_http_chunked_init(&d);
    CHECK_INT(pgw_http_chunked_decode(&d, "0\r\n\r\n", 5, &used, &off, &dlen), PGW_DONE);
}

/* ---- Helpers ---- */

static void test_hop_by_hop(void)
{
    static const char *const yes[] = {"Connection",         "connection",       "KEEP-ALIVE",
                                      "Proxy-Connection",   "TE",               "te",
                                      "Trailer",            "Transfer-Encoding", "Upgrade",
                                      "Proxy-Authenticate", "proxy-authenticate"};
    static const char *const no[] = {"Proxy-Authorization", "Host", "Trailers", "TEE", "T", "",
                                     "Keep-Alives", "Upgrade-Insecure-Requests", "Connectio",
                                     "Content-Length", "Transfer_Encoding"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(yes); i++)
        if (!pgw_http_is_hop_by_hop(yes[i], strlen(yes[i])))
            failf(yes[i], "should be hop-by-hop");
    for (size_t i = 0; i < PGW_ARRAY_LEN(no); i++)
        if (pgw_http_is_hop_by_hop(no[i], strlen(no[i])))
            failf(no[i], "should not be hop-by-hop");
    /* the length is honoured: no NUL terminator assumed */
    CHECK(pgw_http_is_hop_by_hop("TEXT", 2));
    CHECK(!pgw_http_is_hop_by_hop("TE", 1));
}

#define HDR(n, v) {(n), sizeof(n) - 1, (v), sizeof(v) - 1}

static void test_connection_lists(void)
{
    static const struct pgw_http_header h[] = {
        HDR("Host", "a"),
        HDR("Connection", "keep-alive, X-Foo ,,x-bar"),
        HDR("X-Foo", "1"),
        HDR("connection", "Baz"),
        HDR("Not-Connection", "qux"),
    };
    CHECK(pgw_http_connection_lists(h, 5, "x-foo", 5));
    CHECK(pgw_http_connection_lists(h, 5, "X-BAR", 5));
    CHECK(pgw_http_connection_lists(h, 5, "keep-alive", 10));
    CHECK(pgw_http_connection_lists(h, 5, "baz", 3));
    CHECK(!pgw_http_connection_lists(h, 5, "qux", 3));
    CHECK(!pgw_http_connection_lists(h, 5, "x-fo", 4));
    CHECK(!pgw_http_connection_lists(h, 5, "x-foo ", 6));
    CHECK(!pgw_http_connection_lists(h, 3, "baz", 3)); /* n honoured */
    CHECK(!pgw_http_connection_lists(h, 0, "x-foo", 5));
    CHECK(!pgw_http_connection_lists(NULL, 0, "x-foo", 5));
}

static void test_find(void)
{
    static const struct pgw_http_header h[] = {
        HDR("Host", "a"),
        HDR("X-Dup", "first"),
        HDR("x-dup", "second"),
        HDR("Content-Type", "text/plain"),
    };
    const struct pgw_http_header *f = pgw_http_find(h, 4, "x-DUP", 5);
    CHECK(f == &h[1]);
    CHECK(pgw_http_find(h, 4, "content-type", 12) == &h[3]);
    CHECK(pgw_http_find(h, 4, "Content-Typ", 11) == NULL);
    CHECK(pgw_http_find(h, 4, "Missing", 7) == NULL);
    CHECK(pgw_http_find(h, 3, "content-type", 12) == NULL);
    CHECK(pgw_http_find(NULL, 0, "Host", 4) == NULL);
}

static void test_idempotent(void)
{
    static const char *const yes[] = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"};
    static const char *const no[] = {"POST", "PATCH", "CONNECT", "get", "Get", "GETX", "GE", "",
                                     "PROPFIND"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(yes); i++)
        if (!pgw_http_is_idempotent(yes[i], strlen(yes[i])))
            failf(yes[i], "should be idempotent");
    for (size_t i = 0; i < PGW_ARRAY_LEN(no); i++)
        if (pgw_http_is_idempotent(no[i], strlen(no[i])))
            failf(no[i], "should not be idempotent");
    CHECK(pgw_http_is_idempotent("GETX", 3));
}

static void test_reason(void)
{
    static const struct {
        int status;
        const char *reason;
    } cases[] = {
        {100, "Continue"},        {101, "Switching Protocols"},
        {200, "OK"},              {204, "No Content"},
        {304, "Not Modified"},    {400, "Bad Request"},
        {404, "Not Found"},       {405, "Method Not Allowed"},
        {413, "Content Too Large"}, {414, "URI Too Long"},
        {417, "Expectation Failed"}, {431, "Request Header Fields Too Large"},
        {501, "Not Implemented"}, {502, "Bad Gateway"},
        {504, "Gateway Timeout"}, {505, "HTTP Version Not Supported"},
        {0, "Unknown"},           {599, "Unknown"},
        {-1, "Unknown"},          {1000, "Unknown"},
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(cases); i++)
        if (strcmp(pgw_http_reason(cases[i].status), cases[i].reason) != 0)
            failf(cases[i].reason, "pgw_http_reason(%d) is \"%s\"", cases[i].status,
                  pgw_http_reason(cases[i].status));
}

static void test_response_body(void)
{
    struct pgw_http_response r;
    memset(&r, 0, sizeof(r));
    static const int none[] = {100, 101, 103, 199, 204, 304};
    static const enum pgw_http_body framings[] = {PGW_HTTP_BODY_NONE, PGW_HTTP_BODY_LENGTH,
                                                  PGW_HTTP_BODY_CHUNKED, PGW_HTTP_BODY_EOF};
    for (size_t f = 0; f < PGW_ARRAY_LEN(framings); f++) {
        r.body = framings[f];
        for (size_t i = 0; i < PGW_ARRAY_LEN(none); i++) {
            r.status = none[i];
            CHECK_INT(pgw_http_response_body(&r, 0), PGW_HTTP_BODY_NONE);
            CHECK_INT(pgw_http_response_body(&r, 1), PGW_HTTP_BODY_NONE);
        }
        static const int some[] = {200, 201, 203, 205, 206, 301, 303, 404, 500, 599};
        for (size_t i = 0; i < PGW_ARRAY_LEN(some); i++) {
            r.status = some[i];
            CHECK_INT(pgw_http_response_body(&r, 0), framings[f]);
            CHECK_INT(pgw_http_response_body(&r, 1), PGW_HTTP_BODY_NONE);
        }
    }
}

/* ---- Randomised mutations (fixed seed) ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
    /* xorshift64*: deterministic across platforms */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}

/* Bytes the parser treats specially, to make mutations bite more often than random bytes do. */
static const char interesting[] = "\r\n \t:,;_\0\x7f\x80\xff#?/0aZ-\"\\=";

static size_t mutate(char *b, size_t len, size_t cap)
{
    int rounds = 1 + (int)(rnd() % 4);
    for (int i = 0; i < rounds; i++) {
        size_t at = len ? rnd() % len : 0;
        char c = rnd() % 2 ? (char)rnd() : interesting[rnd() % (sizeof(interesting) - 1)];
        switch (rnd() % 4) {
        case 0: /* replace */
            if (len)
                b[at] = c;
            break;
        case 1: /* flip a bit */
            if (len)
                b[at] ^= (char)(1u << (rnd() % 8));
            break;
        case 2: /* insert */
            if (len < cap) {
                memmove(b + at + 1, b + at, len - at);
                b[at] = c;
                len++;
            }
            break;
        default: /* delete */
            if (len) {
                memmove(b + at, b + at + 1, len - at - 1);
                len--;
            }
            break;
        }
    }
    return len;
}

static int is_valid_status(int s)
{
    return s == 400 || s == 414 || s == 431 || s == 501 || s == 505;
}

/* What every successful request parse must guarantee, whatever the input. */
static void check_request_invariants(const char *in, size_t len, int rc,
                                     const struct pgw_http_request *req, size_t maxh)
{
    if (rc == PGW_AGAIN)
        return;
    if (rc == PGW_ERR) {
        if (!is_valid_status(req->status) || req->err == NULL)
            failf("mutation", "PGW_ERR with status %d err %p on \"%.*s\"", req->status,
                  (const void *)req->err, (int)len, in);
        return;
    }
    if (rc <= 0 || (size_t)rc > len || req->num_headers > maxh) {
        failf("mutation", "returned %d for %zu bytes, %zu headers", rc, len, req->num_headers);
        return;
    }
    size_t n = (size_t)rc;
    if (!inside(req->method, req->method_len, in, n) || !inside(req->path, req->path_len, in, n) ||
        !inside(req->query, req->query_len, in, n) ||
        !inside(req->authority, req->authority_len, in, n) || req->minor_version < 0 ||
        req->minor_version > 1 || !is_token(req->method, req->method_len))
        failf("mutation", "request line slices wrong on \"%.*s\"", (int)len, in);
    unsigned cl = 0, te = 0, host = 0;
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct pgw_http_header *f = &req->headers[i];
        if (!inside(f->name, f->name_len, in, n) || !inside(f->value, f->value_len, in, n))
            failf("mutation", "field slice outside the head");
        for (size_t j = 0; j < f->name_len; j++)
            if (token_tab[(uchar)f->name[j]] != 1)
                failf("mutation", "non-token or '_' in a returned name");
        for (size_t j = 0; j < f->value_len; j++)
            if (!value_tab[(uchar)f->value[j]])
                failf("mutation", "control byte in a returned value");
        if (f->value_len && (is_ows(f->value[0]) || is_ows(f->value[f->value_len - 1])))
            failf("mutation", "value not trimmed");
        cl += IEQ(f->name, f->name_len, "content-length");
        te += IEQ(f->name, f->name_len, "transfer-encoding");
        host += IEQ(f->name, f->name_len, "host");
    }
    if (cl > 1 || (cl && te) || host > 1 || (req->minor_version == 1 && host == 0) ||
        (te && req->body != PGW_HTTP_BODY_CHUNKED) || (te && req->minor_version == 0))
        failf("mutation", "framing fields accepted: cl %u te %u host %u on \"%.*s\"", cl, te,
              host, (int)len, in);
}

/* Every prefix agrees with the whole: PGW_AGAIN until a verdict, then the same verdict. */
static void check_prefix_consistency(const char *in, size_t len,
                                     const struct pgw_http_limits *lim)
{
    struct pgw_http_request req;
    struct pgw_http_header h[16];
    int rc = parse_req(in, len, lim, &req, h, 16);
    int status = req.status;
    for (size_t k = 0; k < len; k++) {
        int r = parse_req(in, k, lim, &req, h, 16);
        if (r == PGW_AGAIN)
            continue;
        if (r != rc || (r == PGW_ERR && req.status != status)) {
            failf("mutation", "prefix %zu of %zu returned %d/%d, the whole %d/%d on \"%.*s\"", k,
                  len, r, req.status, rc, status, (int)len, in);
            return;
        }
    }
}

static void test_request_mutations(void)
{
    enum { ITERATIONS = 4000, CAP = 512 };
    char b[CAP];
    struct pgw_http_header h[16];
    struct pgw_http_request req;
    int counts[3] = {0, 0, 0};
    static const struct pgw_http_limits tiny = {24, 96, 6, 1};
    for (int it = 0; it < ITERATIONS; it++) {
        const struct req_case *c = &valid_requests[rnd() % PGW_ARRAY_LEN(valid_requests)];
        size_t len = PGW_MIN(c->len + c->tail_len, (size_t)CAP);
        memcpy(b, c->bytes, PGW_MIN(c->len, len));
        if (len > c->len)
            memcpy(b + c->len, c->tail, len - c->len);
        len = mutate(b, len, CAP);
        const struct pgw_http_limits *lim = it % 3 == 0 ? &tiny : it % 3 == 1 ? NULL : &drop_limits;
        char *exact = dup_exact(b, len);
        int rc = pgw_http_parse_request(exact, len, &req, h, 16, lim);
        check_request_invariants(exact, len, rc, &req, 16);
        counts[rc == PGW_AGAIN ? 0 : rc == PGW_ERR ? 1 : 2]++;
        free(exact);
        if (it % 4 == 0)
            check_prefix_consistency(b, len, lim);
        if (test_current_failed)
            break;
    }
    /* the mutations must exercise all three outcomes */
    CHECK(counts[0] > 0);
    CHECK(counts[1] > ITERATIONS / 10);
    CHECK(counts[2] > ITERATIONS / 10);
    /* pure noise, and noise after a valid request line */
    for (int it = 0; it < 2000; it++) {
        size_t len = rnd() % 64, o = 0;
        if (it % 2) {
            memcpy(b, "GET / HTTP/1.1\r\n", 16);
            o = 16;
        }
        for (size_t i = 0; i < len; i++)
            b[o + i] = it % 4 < 2 ? (char)rnd() : interesting[rnd() % (sizeof(interesting) - 1)];
        char *exact = dup_exact(b, o + len);
        int rc = pgw_http_parse_request(exact, o + len, &req, h, 16, NULL);
        check_request_invariants(exact, o + len, rc, &req, 16);
        free(exact);
    }
}

static void test_response_mutations(void)
{
    enum { CAP = 512 };
    char b[CAP];
    struct pgw_http_header h[16];
    struct pgw_http_response resp;
    for (int it = 0; it < 3000; it++) {
        const struct resp_case *c = &valid_responses[rnd() % PGW_ARRAY_LEN(valid_responses)];
        size_t len = c->len;
        memcpy(b, c->bytes, len);
        len = mutate(b, len, CAP);
        char *exact = dup_exact(b, len);
        int rc = pgw_http_parse_response(exact, len, &resp, h, 16, it % 2 ? &small_limits : NULL);
        if (rc == PGW_ERR && resp.err == NULL)
            failf("response mutation", "PGW_ERR without err");
        if (rc > 0) {
            if ((size_t)rc > len || resp.status < 100 || resp.status > 599 ||
                resp.num_headers > 16 || resp.minor_version < 0 || resp.minor_version > 1)
                failf("response mutation", "returned %d status %d on \"%.*s\"", rc, resp.status,
                      (int)len, b);
            for (size_t i = 0; i < resp.num_headers; i++)
                if (!inside(h[i].name, h[i].name_len, exact, (size_t)rc) ||
                    !inside(h[i].value, h[i].value_len, exact, (size_t)rc))
                    failf("response mutation", "slice outside the head");
        } else if (rc != PGW_AGAIN && rc != PGW_ERR) {
            failf("response mutation", "returned %d", rc);
        }
        free(exact);
    }
}

static void test_chunked_mutations(void)
{
    enum { CAP = 1024 };
    static char b[CAP];
    static struct feed_result r, whole;
    for (int it = 0; it < 3000; it++) {
        const struct chunk_case *c = &valid_chunked[rnd() % PGW_ARRAY_LEN(valid_chunked)];
        size_t len = PGW_MIN(c->len, (size_t)CAP);
        memcpy(b, c->bytes, len);
        len = mutate(b, len, CAP);
        size_t first = len ? rnd() % (len + 1) : 0;
        feed_chunked("chunked mutation", b, len, first, 1 + rnd() % 8, &r);
        if (r.consumed > len || r.data_len > len ||
            (r.rc != PGW_OK && r.rc != PGW_DONE && r.rc != PGW_ERR) ||
            (r.rc == PGW_ERR && r.err == NULL))
            failf("chunked mutation", "rc %d consumed %zu data %zu of %zu", r.rc, r.consumed,
                  r.data_len, len);
        /* however the input is split, the verdict, the bytes consumed and (short of an error,
         * which cannot take back data already delivered) the data are the same */
        feed_chunked("chunked mutation, whole", b, len, len, len, &whole);
        if (whole.rc != r.rc || whole.consumed != r.consumed || whole.err != r.err ||
            (r.rc != PGW_ERR && (whole.data_len != r.data_len ||
                                 memcmp(whole.data, r.data, r.data_len) != 0)))
            failf("chunked mutation", "split at %zu: rc %d consumed %zu data %zu; whole: rc %d "
                                      "consumed %zu data %zu",
                  first, r.rc, r.consumed, r.data_len, whole.rc, whole.consumed, whole.data_len);
        if (test_current_failed)
            break;
    }
}

int main(void)
{
    RUN(test_request_valid);
    RUN(test_request_valid_split);
    RUN(test_request_head_alone);
    RUN(test_request_header_slices);
    RUN(test_request_bad);
    RUN(test_request_limits_small);
    RUN(test_request_limits_default);
    RUN(test_request_field_count);
    RUN(test_request_underscores);
    RUN(test_response_valid);
    RUN(test_response_header_slices);
    RUN(test_response_bad);
    RUN(test_response_limits);
    RUN(test_chunked_valid);
    RUN(test_chunked_next_message);
    RUN(test_chunked_bad);
    RUN(test_chunked_trailer_limit);
    RUN(test_chunked_sticky_error);
    RUN(test_hop_by_hop);
    RUN(test_connection_lists);
    RUN(test_find);
    RUN(test_idempotent);
    RUN(test_reason);
    RUN(test_response_body);
    RUN(test_request_mutations);
    RUN(test_response_mutations);
    RUN(test_chunked_mutations);
    return TEST_REPORT("http");
}
