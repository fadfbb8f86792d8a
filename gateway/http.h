/* http.h: the strict HTTP/1.1 parser (requests, responses, chunked bodies) and the small
 * serialisation helpers the proxy needs. Pure code: no libevent, no Lua, no allocation.
 *
 * The head parsers follow picohttpparser's contract: they parse a whole head from the start of
 * <buf,len> each time they are called (the caller calls again when more bytes arrived) and return
 * the number of bytes the head used (> 0), PGW_AGAIN when the head is incomplete, or PGW_ERR when it
 * is malformed, with ->status (the HTTP status to answer) and ->err (a static string for the log).
 * Every name/value pointer they return points into <buf>: the slices live as long as <buf>.
 *
 * Strictness (the security core; see docs/http.md for the list and the status of each case):
 * both Content-Length and Transfer-Encoding, two Content-Length fields or a list, non-digit or
 * overflowing lengths, a Transfer-Encoding whose last coding is not chunked (400) or that names an
 * unknown coding (501), Transfer-Encoding in HTTP/1.0, obs-fold, bare CR, whitespace before the
 * colon, empty/non-token names, NUL/CR/LF/control bytes in values, lines without a colon,
 * underscores in names, a missing Host in HTTP/1.1, two Hosts, an empty Host, a Host list or
 * a Host that is not host[:port], non-token methods, request targets with spaces, control bytes,
 * bytes >= 0x80 or a fragment: 400. Well-formed versions other than HTTP/1.0 and HTTP/1.1: 505
 * (the digits are compared as text, so HTTP/1.10 and HTTP/01.1 are such versions, never 1.1).
 * Request line over the limit: 414; header section or field count over the limit: 431. A bare LF
 * line ending and up to 4 empty lines before the request line are accepted (the proxy
 * re-serialises heads with CRLF only).
 */
#ifndef PGW_HTTP_H
#define PGW_HTTP_H

#include "pgw.h"

#include <stdint.h>
#include <stddef.h>

struct pgw_http_header {
    const char *name;
    size_t name_len;
    const char *value; /* leading and trailing SP/HTAB removed */
    size_t value_len;
};

struct pgw_http_limits {
    size_t request_line;   /* bytes, request line without its line ending (414 beyond) */
    size_t header_section; /* bytes, the whole head including the request line (431 beyond) */
    size_t header_fields;  /* number of fields (431 beyond); also bounded by the caller's array */
    int drop_underscores;  /* requests: 1 skips fields whose name has '_' (config
                              underscores_in_headers: drop), 0 answers 400; responses allow '_' */
};

enum pgw_http_body {
    PGW_HTTP_BODY_NONE = 0, /* no body (requests without CL/TE, or CL: 0) */
    PGW_HTTP_BODY_LENGTH,   /* Content-Length bytes follow */
    PGW_HTTP_BODY_CHUNKED,  /* chunked coding */
    PGW_HTTP_BODY_EOF       /* responses only: body runs until the upstream closes */
};

/* Request target forms (RFC 9112 section 3.2). */
enum pgw_http_target {
    PGW_HTTP_TARGET_ORIGIN = 0, /* "/path?query" */
    PGW_HTTP_TARGET_ABSOLUTE,   /* "http://authority/path?query": authority replaces Host */
    PGW_HTTP_TARGET_AUTHORITY,  /* CONNECT host:port (the caller answers 405) */
    PGW_HTTP_TARGET_ASTERISK    /* OPTIONS * */
};

struct pgw_http_request {
    /* outputs of pgw_http_parse_request, all slices into the parsed buffer */
    const char *method;
    size_t method_len;
    const char *target; /* the raw request target as sent */
    size_t target_len;
    enum pgw_http_target target_form;
    const char *path; /* origin-form part of the target: "/..." up to '?' (or "*"); a static "/"
                         for an absolute-form target without a path; NULL for CONNECT */
    size_t path_len;
    const char *query; /* after '?', without it; NULL when there is no '?' */
    size_t query_len;
    const char *authority; /* Host field value, or the absolute-form authority when present */
    size_t authority_len;
    int minor_version; /* 0 or 1 */
    struct pgw_http_header *headers; /* the caller's array */
    size_t num_headers;
    enum pgw_http_body body;
    uint64_t content_length; /* when body == PGW_HTTP_BODY_LENGTH */
    unsigned keep_alive : 1;      /* persistent per version and Connection tokens */
    unsigned expect_continue : 1; /* Expect: 100-continue */
    unsigned upgrade : 1;         /* Connection: upgrade and an Upgrade field are present */
    unsigned is_connect : 1;      /* method CONNECT (the caller answers 405) */
    /* on PGW_ERR */
    int status;      /* 400, 414, 431, 501, 505 */
    const char *err; /* static description for the log */
};

struct pgw_http_response {
    int minor_version;
    int status;
    const char *reason;
    size_t reason_len;
    struct pgw_http_header *headers;
    size_t num_headers;
    enum pgw_http_body body; /* framing as sent; see pgw_http_response_body() */
    uint64_t content_length;
    unsigned keep_alive : 1; /* per version and Connection tokens; a body delimited by EOF
                                (pgw_http_response_body) still forbids reuse */
    const char *err;         /* on PGW_ERR: static description for the log */
};

/* Parses a request head from the start of <buf,len> into <req>, using <headers> (capacity
 * <max_headers>) for the fields. Returns the head's length, PGW_AGAIN, or PGW_ERR with
 * req->status and req->err set. Applies <lim> even to an incomplete head (a request line longer
 * than lim->request_line without its end is already 414). <lim> NULL means 8k, 32k, 100 fields.
 * The head's length counts the skipped empty lines before the request line; bytes after the head
 * (body, pipelined requests) are never read. */
int pgw_http_parse_request(const char *buf, size_t len, struct pgw_http_request *req,
                           struct pgw_http_header *headers, size_t max_headers,
                           const struct pgw_http_limits *lim);

/* Parses an upstream response head, with the same strictness as requests (conflicting framing,
 * bad lengths, an oversized head or too many fields are PGW_ERR: the proxy answers 502), except
 * that underscores in names are allowed. lim->request_line bounds the status line. Status codes
 * outside 100..599 are PGW_ERR. Interim 1xx responses are parsed as any other; the caller skips
 * them. */
int pgw_http_parse_response(const char *buf, size_t len, struct pgw_http_response *resp,
                            struct pgw_http_header *headers, size_t max_headers,
                            const struct pgw_http_limits *lim);

/* The framing of a response body given the request that asked for it: none for HEAD requests,
 * 1xx, 204 and 304; otherwise what the head said (PGW_HTTP_BODY_EOF when it said nothing). */
enum pgw_http_body pgw_http_response_body(const struct pgw_http_response *resp, int is_head);

/* ---- chunked bodies ---- */

struct pgw_http_chunked {
    int state;          /* private */
    uint64_t remaining; /* private: data bytes left in the current chunk */
    size_t line_len;    /* private: bytes seen on the current size/trailer line */
    size_t trailer_len; /* private: bytes of trailer section seen */
    unsigned digits;    /* private */
    const char *err;    /* on PGW_ERR: static description for the log */
};

#define PGW_HTTP_CHUNK_EXT_MAX 256    /* bytes of chunk extensions per size line */
#define PGW_HTTP_TRAILERS_MAX 8192    /* bytes of trailer section: all lines, their line endings
                                         and the final empty line together */

void pgw_http_chunked_init(struct pgw_http_chunked *d);

/* Decodes chunked framing from <buf,len>. On return *consumed bytes of <buf> were used; of those,
 * the body data is buf[*data_off, *data_off + *data_len) (at most one data span per call: call
 * again with the rest). Returns PGW_OK (more to come; call again with the rest or more input),
 * PGW_DONE (the last chunk and the trailer section were consumed; trailers are validated and
 * discarded, never turned into headers), or PGW_ERR (d->err set: bad or overflowing size,
 * empty size line, extensions over PGW_HTTP_CHUNK_EXT_MAX, missing CRLF after the data, bad
 * trailer field). Never reads past <len>. A data span may come with PGW_OK and PGW_DONE (never
 * with PGW_ERR: when bad framing follows data in the same buffer, the data comes with PGW_OK and
 * the next call returns PGW_ERR, so a proxy relays every good byte before giving up); on
 * PGW_DONE, the bytes after *consumed belong to the next message. Once PGW_DONE or PGW_ERR was
 * returned, later calls return the same and consume nothing. */
int pgw_http_chunked_decode(struct pgw_http_chunked *d, const char *buf, size_t len,
                            size_t *consumed, size_t *data_off, size_t *data_len);

/* ---- helpers for the proxy ---- */

/* Whether <name> is a hop-by-hop field the proxy never forwards: Connection, Keep-Alive,
 * Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade, Proxy-Authenticate (case-insensitive).
 * Proxy-Authorization is NOT hop-by-hop for us: it is forwarded. */
int pgw_http_is_hop_by_hop(const char *name, size_t name_len);

/* The names listed in the Connection fields of a head, collected once so that each field of
 * the head is checked against them without rescanning (pgw_http_conn_names_has). Elements that
 * are hop-by-hop anyway (close, keep-alive, upgrade, ...) are not kept. */
#define PGW_HTTP_CONN_NAMES_MAX 8
struct pgw_http_conn_names {
    struct pgw_str v[PGW_HTTP_CONN_NAMES_MAX];
    size_t n;
    int overflow; /* more than the maximum: has() answers by rescanning */
    const struct pgw_http_header *headers;
    size_t num_headers;
};
void pgw_http_conn_names_init(struct pgw_http_conn_names *c, const struct pgw_http_header *headers,
                              size_t n);
int pgw_http_conn_names_has(const struct pgw_http_conn_names *c, const char *name, size_t len);

/* Whether <name> is listed as a token in any Connection field of <headers> (those fields are
 * removed before forwarding, RFC 9110 section 7.6.1). */
int pgw_http_connection_lists(const struct pgw_http_header *headers, size_t n, const char *name,
                              size_t name_len);

/* Finds the first field named <name> (case-insensitive); NULL when absent. */
const struct pgw_http_header *pgw_http_find(const struct pgw_http_header *headers, size_t n,
                                            const char *name, size_t name_len);

/* Whether <method> is idempotent (RFC 9110 section 9.2.2: GET HEAD PUT DELETE OPTIONS TRACE). */
int pgw_http_is_idempotent(const char *method, size_t method_len);

/* The reason phrase for <status> ("Unknown" for unknown codes). */
const char *pgw_http_reason(int status);

#endif
