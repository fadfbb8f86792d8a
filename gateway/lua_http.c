/* lua_http.c: pgw.http.request{...}, the policies' non-blocking HTTP/1.1 client (docs/sdk.md).
 *
 * l_http_request checks the whole table first and raises on misuse (STYLE §5); from then on it
 * only returns: nil, "too many requests" past the per-worker limit, or the result of waiting
 * (pgw_bridge_wait, lua_bridge.h). Steps of one request: targets (the url's authority, or the
 * upstream group's targets in order, each tried once while connecting fails) -> address (an IP
 * literal, or the first address evdns_getaddrinfo gives) -> non-blocking connect -> write the
 * request while reading -> response head (pgw_http_parse_response; 1xx skipped) -> body by
 * Content-Length, chunked coding (pgw_http_chunked_decode) or EOF. One deadline covers it all.
 * No connection pooling in this version: every request opens its own connection and sends
 * `Connection: close`. https URLs (and upstream groups with `tls`) speak TLS through tls.h after
 * the connect: certificate and host name verified, a failed handshake is "tls handshake failed".
 *
 * Ownership: a struct http_op is malloc'd per call and owns itself: the socket and its two
 * events, the deadline timer, the request and response evbuffers, the copied response head and
 * the ticket of a pending evdns_getaddrinfo. It is freed exactly once: by on_timer after the
 * result was delivered (pgw_bridge_wake), or by on_cancel (w->cancel) when the bridge abandons
 * the task first. The result is always delivered from the deadline timer, activated by
 * op_finish(), so waking Lua never happens inside the call itself or inside a DNS or socket
 * callback that still uses the operation. A DNS lookup outlives a cancel: libevent calls back
 * later with EVUTIL_EAI_CANCEL, so its callback argument is a small ticket (not the operation)
 * that the callback frees; cancelling only detaches it.
 *
 * Every byte from the server is hostile: the head is bounded (64 KiB, 100 fields, 8 interim
 * responses), the body by max_body, and lengths are compared before anything is added.
 */
#include "lua_bridge.h"
#include "policy.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "server.h"
#include "tls.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define FNAME "pgw.http.request"
#define HTTP_MAX_ACTIVE 1024      /* requests in flight per worker */
#define HTTP_HEAD_MAX (64 * 1024) /* response head */
#define HTTP_HEADERS_MAX 100      /* response header fields */
#define HTTP_STATUS_LINE_MAX 8192
#define HTTP_INTERIM_MAX 8       /* 1xx responses before the final one */
#define HTTP_READ_MAX 16384      /* bytes per read(2) */
#define HTTP_TIMEOUT_DEFAULT 5.0 /* seconds */
#define HTTP_TIMEOUT_MAX 86400.0
#define HTTP_BODY_DEFAULT (1024 * 1024)
#define HTTP_BODY_MAX (UINT64_C(1) << 53) /* larger max_body values are clamped */
#define HTTP_HOST_MAX 253

static const char err_connect[] = "connect failed";
static const char err_bad[] = "bad response";
static const char err_busy[] = "too many requests";
static const char err_nomem[] = "out of memory";
static const char err_tls[] = "tls handshake failed";

static const struct pgw_http_limits head_limits = {
    .request_line = HTTP_STATUS_LINE_MAX,
    .header_section = HTTP_HEAD_MAX,
    .header_fields = HTTP_HEADERS_MAX,
    .drop_underscores = 0,
};

static size_t http_active; /* operations alive in this worker */
static struct pgw_log_ratelimit tls_log;

struct http_target {
    char host[HTTP_HOST_MAX + 1]; /* name or IP literal without brackets; "" = unusable */
    uint16_t port;
};

struct http_op;

/* The argument of a pending evdns_getaddrinfo: it outlives a cancelled operation. */
struct dns_ticket {
    struct http_op *op; /* NULL once the operation was cancelled or finished */
};

struct http_op {
    struct pgw_wait wait; /* first member: on_cancel gets &op->wait */
    struct event_base *base;
    struct evdns_base *dns;
    struct event *timer; /* the deadline; activated by op_finish() to deliver the result */
    struct dns_ticket *ticket;
    struct evdns_getaddrinfo_request *dns_req;
    evutil_socket_t fd;
    struct event *rev, *wev;
    SSL_CTX *tls_ctx;  /* referenced; NULL: plain HTTP */
    void *ssl;         /* the TLS session of the current connection */
    char *tls_name;    /* server_name of the upstream group's tls, or NULL: the target's host */
    int tls_verify;
    struct evbuffer *out;  /* request line, then the whole request once connected */
    struct evbuffer *post; /* header lines after Host, framing, empty line, body */
    struct evbuffer *in;   /* response bytes not parsed yet */
    struct evbuffer *body;
    char *head; /* the final response head, copied; parsed again when the result is built */
    size_t head_len;
    struct pgw_http_chunked chunked;
    enum pgw_http_body framing;
    uint64_t content_length;
    uint64_t max_body;
    struct timeval connect_tv; /* per-target connect timeout (upstream groups); 0 = none */
    struct sockaddr_storage addr;
    socklen_t addr_len;
    struct http_target *targets; /* copied: a reload may free the config meanwhile */
    size_t num_targets, next_target;
    const char *last_err; /* why the last target failed */
    const char *err;      /* the result: NULL for a response */
    int status;
    int result_ref;
    unsigned interim;
    unsigned is_head : 1;
    unsigned has_host : 1; /* the policy set Host */
    unsigned connected : 1;
    unsigned head_done : 1;
    unsigned eof : 1;
    unsigned in_resolve : 1; /* inside evdns_getaddrinfo(): an answer given at once waits */
    unsigned handshaking : 1; /* TLS handshake in progress */
    unsigned want_tls : 1;    /* https (tls_ctx NULL: no context in this generation) */
    unsigned truncated : 1;   /* the TLS stream ended without close_notify */
    unsigned done : 1;       /* finished: resources released, result pending delivery */
};

/* What l_http_request read from the table. Slices point into Lua strings of the table, which is
 * argument 1 and stays alive during the call. */
struct http_args {
    const char *url, *upstream, *path, *method, *body;
    size_t url_len, upstream_len, path_len, method_len, body_len;
    double timeout;
    uint64_t max_body;
    const struct pgw_config_upstream *up;
    size_t up_index;
    struct http_target url_target;
    int has_host;
    int is_tls;
};

/* ---- Checking the table (may raise; nothing acquired yet) ---- */

/* Writes <s,n> into <buf> (at least 128 bytes) for an error message: printable ASCII as is,
 * '"' and '\\' escaped, other bytes as \r \n \0 or \xNN, cut after 60 input bytes. */
static const char *show(char *buf, size_t cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i;
    for (i = 0; i < n && i < 60 && o + 8 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
            buf[o++] = (char)c;
            continue;
        }
        buf[o++] = '\\';
        if (c == '"' || c == '\\')
            buf[o++] = (char)c;
        else if (c == '\r' || c == '\n' || c == 0)
            buf[o++] = c == '\r' ? 'r' : c == '\n' ? 'n' : '0';
        else {
            buf[o++] = 'x';
            buf[o++] = hex[c >> 4];
            buf[o++] = hex[c & 15];
        }
    }
    if (i < n && o + 4 < cap)
        o += (size_t)snprintf(buf + o, cap - o, "...");
    buf[o] = '\0';
    return buf;
}

static int is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_token(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((unsigned char)s[i]))
            return 0;
    return 1;
}

/* A request-target byte we send as is: visible ASCII except '#' (a fragment is never sent). */
static int is_target_byte(unsigned char c) { return c > 0x20 && c < 0x7f && c != '#'; }

static void check_path(lua_State *L, const char *p, size_t n)
{
    char q[128];
    int ok = n > 0 && p[0] == '/';
    for (size_t i = 0; ok && i < n; i++)
        ok = is_target_byte((unsigned char)p[i]);
    if (!ok)
        luaL_error(L, FNAME ": invalid path \"%s\"", show(q, sizeof(q), p, n));
}

static const char *const fields[] = {"url",     "upstream", "path",    "method",
                                     "headers", "body",     "timeout", "max_body"};

static void check_keys(lua_State *L)
{
    char q[128];
    lua_pushnil(L);
    while (lua_next(L, 1) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, FNAME ": unknown key (a %s)", luaL_typename(L, -1));
        size_t n;
        const char *k = lua_tolstring(L, -1, &n);
        size_t i = 0;
        while (i < PGW_ARRAY_LEN(fields) && (strlen(fields[i]) != n || memcmp(fields[i], k, n)))
            i++;
        if (i == PGW_ARRAY_LEN(fields))
            luaL_error(L, FNAME ": unknown key \"%s\"", show(q, sizeof(q), k, n));
    }
}

/* Pushes field <name> of the argument table (raw: a metatable cannot run code here). */
static void get_field(lua_State *L, const char *name)
{
    lua_pushstring(L, name);
    lua_rawget(L, 1);
}

/* Field <name> of the table as a string, or NULL when absent; raises on another type. Leaves the
 * stack as it was (the string stays referenced by the table). */
static const char *opt_string(lua_State *L, const char *name, size_t *len)
{
    get_field(L, name);
    const char *s = NULL;
    if (lua_type(L, -1) == LUA_TSTRING)
        s = lua_tolstring(L, -1, len);
    else if (!lua_isnil(L, -1))
        luaL_error(L, FNAME ": bad field \"%s\" (string expected, got %s)", name,
                   luaL_typename(L, -1));
    lua_pop(L, 1);
    return s;
}

/* Host of a URL: an IPv6 literal (<is_bracketed>), an IPv4 literal, or a DNS name of letters,
 * digits, '-', '_' and '.'. Something made only of digits and dots must be a valid IPv4
 * address ("1.2.3", "01.2.3.4" are refused). */
static int parse_host(const char *h, size_t n, int is_bracketed, struct http_target *t)
{
    unsigned char a[16];
    int is_numeric = 1;
    if (n == 0 || n > HTTP_HOST_MAX)
        return PGW_ERR;
    memcpy(t->host, h, n);
    t->host[n] = '\0';
    if (is_bracketed)
        return evutil_inet_pton(AF_INET6, t->host, a) == 1 ? PGW_OK : PGW_ERR;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)h[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return PGW_ERR;
        if (!(c >= '0' && c <= '9') && c != '.')
            is_numeric = 0;
    }
    if (is_numeric && evutil_inet_pton(AF_INET, t->host, a) != 1)
        return PGW_ERR;
    return PGW_OK;
}

/* 1..65535, digits only, no leading zero; <p> NULL means the default 80. */
static int parse_port(const char *p, size_t n, uint16_t *port)
{
    unsigned v = 0;
    if (p == NULL) {
        *port = 80;
        return PGW_OK;
    }
    if (n == 0 || n > 5 || p[0] == '0')
        return PGW_ERR;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return PGW_ERR;
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    if (v > 65535)
        return PGW_ERR;
    *port = (uint16_t)v;
    return PGW_OK;
}

/* "http://host[:port][/path][?query]" into a->url_target and the request target a->path (an
 * empty path or one starting with '?' gets its '/' when the request line is written). */
static void parse_url(lua_State *L, struct http_args *a)
{
    char q[128];
    const char *u = a->url, *end = a->url + a->url_len, *p, *port = NULL, *host, *host_end;
    a->is_tls = a->url_len >= 8 && PGW_IEQ_LIT(u, 8, "https://");
    if (!a->is_tls && (a->url_len < 7 || !PGW_IEQ_LIT(u, 7, "http://")))
        luaL_error(L, FNAME ": url must start with http:// or https:// (got \"%s\")",
                   show(q, sizeof(q), u, a->url_len));
    const char *auth = u + (a->is_tls ? 8 : 7), *auth_end = auth;
    while (auth_end < end && *auth_end != '/' && *auth_end != '?')
        auth_end++;
    int is_bracketed = auth < auth_end && *auth == '[';
    if (is_bracketed) {
        host = auth + 1;
        host_end = memchr(host, ']', (size_t)(auth_end - host));
        if (host_end == NULL)
            goto bad;
        p = host_end + 1;
    } else {
        host = host_end = auth;
        while (host_end < auth_end && *host_end != ':')
            host_end++;
        p = host_end;
    }
    if (p < auth_end) {
        if (*p != ':')
            goto bad;
        port = p + 1;
    }
    if (parse_host(host, (size_t)(host_end - host), is_bracketed, &a->url_target) != PGW_OK ||
        parse_port(port, port ? (size_t)(auth_end - port) : 0, &a->url_target.port) != PGW_OK)
        goto bad;
    if (port == NULL && a->is_tls)
        a->url_target.port = 443;
    for (p = auth_end; p < end; p++)
        if (!is_target_byte((unsigned char)*p))
            goto bad;
    a->path = auth_end;
    a->path_len = (size_t)(end - auth_end);
    return;
bad:
    luaL_error(L, FNAME ": invalid url \"%s\"", show(q, sizeof(q), u, a->url_len));
}

/* The upstream group <name> of the running generation's config (or, while policies load, of
 * the config they are built for), or NULL. */
static const struct pgw_config_upstream *lookup_upstream(const char *name, size_t n, size_t *index)
{
    const struct pgw_bridge_run *run = pgw_bridge_current();
    const struct pgw_config *c = NULL;
    if (run != NULL)
        c = run->gen != NULL ? run->gen->config : run->set != NULL ? run->set->config : NULL;
    for (size_t i = 0; c != NULL && i < c->num_upstreams; i++) {
        const char *un = c->upstreams[i].name;
        if (strlen(un) == n && memcmp(un, name, n) == 0) {
            *index = i;
            return &c->upstreams[i];
        }
    }
    return NULL;
}

static const struct pgw_config_upstream *find_upstream(lua_State *L, const char *name, size_t n,
                                                       size_t *index)
{
    char q[128];
    const struct pgw_config_upstream *u = lookup_upstream(name, n, index);
    if (u != NULL)
        return u;
    luaL_error(L, FNAME ": unknown upstream \"%s\"", show(q, sizeof(q), name, n));
    return NULL;
}

static double opt_timeout(lua_State *L)
{
    double v = HTTP_TIMEOUT_DEFAULT;
    get_field(L, "timeout");
    if (!lua_isnil(L, -1)) {
        v = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : NAN;
        if (!(v > 0)) /* also NaN */
            luaL_error(L, FNAME ": timeout must be a positive number");
    }
    lua_pop(L, 1);
    return v < HTTP_TIMEOUT_MAX ? v : HTTP_TIMEOUT_MAX;
}

static uint64_t size_unit(const char *u, size_t n)
{
    if (n == 0 || (n == 1 && pgw_lower(u[0]) == 'b'))
        return 1;
    if (n > 2 || (n == 2 && pgw_lower(u[1]) != 'b'))
        return 0;
    switch (pgw_lower(u[0])) {
    case 'k':
        return UINT64_C(1) << 10;
    case 'm':
        return UINT64_C(1) << 20;
    case 'g':
        return UINT64_C(1) << 30;
    }
    return 0;
}

/* The SDK's size syntax (pgw.schema.parse_size): <digits[.digits]>[spaces][b|k|kb|m|mb|g|gb],
 * case-insensitive, and the result must be a whole number of bytes ("1.5k" yes, "1.1k" no). */
static int parse_size(const char *s, size_t n, uint64_t *out)
{
    uint64_t ip = 0, fp = 0, scale = 1;
    size_t i = 0, digits = 0;
    int has_dot = 0;
    for (; i < n; i++) {
        unsigned d = (unsigned)(unsigned char)s[i] - '0';
        if (s[i] == '.' && !has_dot) {
            has_dot = 1;
        } else if (d > 9) {
            break;
        } else if (!has_dot) {
            if (ip > UINT64_C(100000000000000))
                return PGW_ERR;
            ip = ip * 10 + d;
            digits++;
        } else if (scale < UINT64_C(1000000000)) {
            fp = fp * 10 + d;
            scale *= 10;
            digits++;
        } else if (d != 0) {
            return PGW_ERR;
        }
    }
    while (i < n && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r')))
        i++;
    uint64_t mult = size_unit(s + i, n - i);
    if (digits == 0 || mult == 0 || ip >= UINT64_MAX / mult - 1 || (fp * mult) % scale != 0)
        return PGW_ERR;
    *out = ip * mult + fp * mult / scale; /* the fraction adds less than mult: no overflow */
    return PGW_OK;
}

static uint64_t opt_max_body(lua_State *L)
{
    uint64_t v = HTTP_BODY_DEFAULT;
    get_field(L, "max_body");
    if (lua_type(L, -1) == LUA_TNUMBER) {
        double d = lua_tonumber(L, -1);
        if (!(d >= 1))
            goto bad;
        v = d < (double)HTTP_BODY_MAX ? (uint64_t)d : HTTP_BODY_MAX;
    } else if (lua_type(L, -1) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        if (parse_size(s, n, &v) != PGW_OK || v == 0)
            goto bad;
        v = PGW_MIN(v, HTTP_BODY_MAX);
    } else if (!lua_isnil(L, -1)) {
        goto bad;
    }
    lua_pop(L, 1);
    return v;
bad:
    luaL_error(L, FNAME ": max_body must be a positive number or size string");
    return 0;
}

static void read_args(lua_State *L, struct http_args *a)
{
    char q[128];
    memset(a, 0, sizeof(*a));
    check_keys(L);
    a->url = opt_string(L, "url", &a->url_len);
    a->upstream = opt_string(L, "upstream", &a->upstream_len);
    a->path = opt_string(L, "path", &a->path_len);
    a->method = opt_string(L, "method", &a->method_len);
    a->body = opt_string(L, "body", &a->body_len);
    if (a->url == NULL && a->upstream == NULL)
        luaL_error(L, FNAME ": url or upstream required");
    if (a->url != NULL && a->upstream != NULL)
        luaL_error(L, FNAME ": url and upstream are exclusive");
    if (a->url != NULL) {
        if (a->path != NULL)
            luaL_error(L, FNAME ": path goes with upstream (a url carries its own)");
        parse_url(L, a);
    } else {
        a->up = find_upstream(L, a->upstream, a->upstream_len, &a->up_index);
        a->is_tls = a->up->tls != NULL;
        if (a->path == NULL) {
            a->path = "/";
            a->path_len = 1;
        }
        check_path(L, a->path, a->path_len);
    }
    if (a->method == NULL) {
        a->method = "GET";
        a->method_len = 3;
    } else if (!is_token(a->method, a->method_len)) {
        luaL_error(L, FNAME ": invalid method \"%s\"",
                   show(q, sizeof(q), a->method, a->method_len));
    }
    a->timeout = opt_timeout(L);
    a->max_body = opt_max_body(L);
}

/* ---- Request headers (may raise; nothing acquired yet) ---- */

static const char *const managed_headers[] = {
    "content-length", "transfer-encoding", "connection",      "upgrade", "te",
    "trailer",        "keep-alive",        "proxy-connection"};

static void check_header_name(lua_State *L, const char *name, size_t n)
{
    char q[128];
    if (!is_token(name, n))
        luaL_error(L, FNAME ": invalid header name \"%s\"", show(q, sizeof(q), name, n));
    for (size_t i = 0; i < PGW_ARRAY_LEN(managed_headers); i++)
        if (pgw_str_ieq(name, n, managed_headers[i], strlen(managed_headers[i])))
            luaL_error(L, FNAME ": header \"%s\" is managed by the gateway", managed_headers[i]);
}

/* Appends "<name>: <value>\r\n" to the lines table (index 2); the value (a string or a number)
 * is on top of the stack and stays there. */
static void add_line(lua_State *L, const char *name, int *nlines)
{
    char q[128];
    size_t n;
    lua_pushvalue(L, -1); /* tostring on a copy: the original may be a key of lua_next */
    const char *v = lua_tolstring(L, -1, &n);
    for (size_t i = 0; i < n; i++)
        if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0')
            luaL_error(L, FNAME ": invalid header value \"%s\"", show(q, sizeof(q), v, n));
    lua_pushfstring(L, "%s: %s\r\n", name, v); /* name and value hold no NUL */
    lua_rawseti(L, 2, ++*nlines);
    lua_pop(L, 1);
}

static void bad_value(lua_State *L, const char *name, size_t n, const char *got)
{
    char q[128];
    luaL_error(L,
               FNAME ": bad value for header \"%s\" (string, number or array of strings "
                     "expected, got %s)",
               show(q, sizeof(q), name, n), got);
}

/* The array of strings at <t>: one line each. Returns how many. */
static int add_array(lua_State *L, const char *name, size_t name_len, int t, int *nlines)
{
    size_t len = lua_objlen(L, t), count = 0;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        count++;
        lua_pop(L, 1);
    }
    if (count != len)
        bad_value(L, name, name_len, "a table that is not an array");
    for (size_t i = 1; i <= len; i++) {
        lua_rawgeti(L, t, (int)i);
        if (lua_type(L, -1) != LUA_TSTRING)
            bad_value(L, name, name_len, "an array holding a non-string");
        add_line(L, name, nlines);
        lua_pop(L, 1);
    }
    return (int)len;
}

/* Checks the headers table and turns it into lines in the table at index 2. Returns the number
 * of lines; sets a->has_host when the policy gave Host. */
static int collect_headers(lua_State *L, struct http_args *a)
{
    int nlines = 0;
    get_field(L, "headers");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (!lua_istable(L, -1))
        luaL_error(L, FNAME ": bad field \"headers\" (table expected, got %s)",
                   luaL_typename(L, -1));
    int h = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, h) != 0) { /* h: key value */
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, FNAME ": invalid header name (a %s)", luaL_typename(L, -2));
        size_t n;
        const char *name = lua_tolstring(L, -2, &n);
        check_header_name(L, name, n);
        int count = 1;
        if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)
            add_line(L, name, &nlines);
        else if (lua_istable(L, -1))
            count = add_array(L, name, n, lua_gettop(L), &nlines);
        else
            bad_value(L, name, n, luaL_typename(L, -1));
        if (PGW_IEQ_LIT(name, n, "host")) { /* also "Host" and "host" both given */
            if (count != 1 || a->has_host)
                luaL_error(L, FNAME ": header \"host\" takes exactly one value");
            a->has_host = 1;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return nlines;
}

/* Methods whose request carries content: without a body they still send Content-Length: 0
 * (RFC 9110 section 8.6), or some servers answer 411. */
static int wants_length(const struct http_args *a)
{
    return a->body != NULL || (a->method_len == 4 && memcmp(a->method, "POST", 4) == 0) ||
           (a->method_len == 3 && memcmp(a->method, "PUT", 3) == 0) ||
           (a->method_len == 5 && memcmp(a->method, "PATCH", 5) == 0);
}

/* Pushes what follows the Host line: the policy's header lines, the framing, the empty line. */
static void push_post(lua_State *L, const struct http_args *a, int nlines)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= nlines; i++) {
        lua_rawgeti(L, 2, i);
        luaL_addvalue(&b);
    }
    if (wants_length(a)) {
        char cl[48];
        snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", a->body_len);
        luaL_addstring(&b, cl);
    }
    luaL_addstring(&b, "Connection: close\r\n\r\n");
    luaL_pushresult(&b);
}

/* ---- The operation (no raise from here on) ---- */

static void on_timer(evutil_socket_t fd, short what, void *arg);
static void on_io(evutil_socket_t fd, short what, void *arg);
static void on_cancel(struct pgw_wait *w);

static void copy_targets(struct http_op *op, const struct http_args *a)
{
    if (a->up == NULL) {
        op->targets = pgw_malloc(sizeof(*op->targets));
        op->targets[0] = a->url_target;
        op->num_targets = 1;
        return;
    }
    op->num_targets = a->up->num_targets;
    op->targets = pgw_calloc(PGW_MAX(op->num_targets, (size_t)1), sizeof(*op->targets));
    for (size_t i = 0; i < op->num_targets; i++) {
        const struct pgw_config_target *ct = &a->up->targets[i];
        size_t n = strlen(ct->host);
        if (n <= HTTP_HOST_MAX) /* else stays "": that target fails to resolve */
            memcpy(op->targets[i].host, ct->host, n + 1);
        op->targets[i].port = ct->port;
    }
    uint64_t ms = a->up->connect_timeout;
    op->connect_tv.tv_sec = (time_t)(ms / 1000);
    op->connect_tv.tv_usec = (suseconds_t)(ms % 1000 * 1000);
}

static struct evbuffer *buffer_new(void)
{
    struct evbuffer *b = evbuffer_new();
    pgw_assert(b != NULL);
    return b;
}

/* Allocates the operation with the request line in ->out and the rest of the request (from
 * <post,post_len> and the body) in ->post. */
static struct http_op *op_new(const struct http_args *a, const char *post, size_t post_len)
{
    struct http_op *op = pgw_calloc(1, sizeof(*op));
    http_active++;
    op->wait.cancel = on_cancel;
    op->base = pgw_bridge_base();
    pgw_assert(op->base != NULL);
    op->dns = pgw_bridge_dns();
    op->fd = -1;
    op->result_ref = LUA_NOREF;
    op->max_body = a->max_body;
    op->is_head = a->method_len == 4 && memcmp(a->method, "HEAD", 4) == 0;
    op->has_host = a->has_host != 0;
    op->last_err = err_connect; /* an upstream group without targets */
    op->want_tls = a->is_tls != 0;
    if (a->is_tls) {
        const struct pgw_bridge_run *run = pgw_bridge_current();
        struct pgw_tls_gen *tg = run != NULL && run->gen != NULL ? run->gen->tls : NULL;
        op->tls_ctx = pgw_tls_ctx_ref(a->up ? pgw_tls_upstream_ctx(tg, a->up_index)
                                            : pgw_tls_http_ctx(tg));
        op->tls_verify = a->up == NULL || a->up->tls->verify;
        if (a->up != NULL && a->up->tls->server_name != NULL)
            op->tls_name = pgw_strndup(a->up->tls->server_name, strlen(a->up->tls->server_name));
    }
    pgw_http_chunked_init(&op->chunked);
    copy_targets(op, a);
    op->timer = evtimer_new(op->base, on_timer, op);
    pgw_assert(op->timer != NULL);
    op->out = buffer_new();
    op->post = buffer_new();
    op->in = buffer_new();
    op->body = buffer_new();

    evbuffer_add(op->out, a->method, a->method_len);
    evbuffer_add(op->out, " ", 1);
    if (a->path_len == 0 || a->path[0] == '?')
        evbuffer_add(op->out, "/", 1);
    evbuffer_add(op->out, a->path, a->path_len);
    evbuffer_add(op->out, " HTTP/1.1\r\n", 11);
    evbuffer_add(op->post, post, post_len);
    if (a->body != NULL)
        evbuffer_add(op->post, a->body, a->body_len);
    return op;
}

static void conn_close(struct http_op *op)
{
    pgw_tls_free(op->ssl);
    op->ssl = NULL;
    op->handshaking = 0;
    if (op->rev != NULL)
        event_free(op->rev);
    if (op->wev != NULL)
        event_free(op->wev);
    op->rev = op->wev = NULL;
    if (op->fd != -1)
        close(op->fd);
    op->fd = -1;
    op->connected = 0;
}

/* Releases what can fire or hold the peer: DNS, socket, events, request and input buffers. The
 * head, the body and the timer stay for the result. Idempotent. */
static void op_release(struct http_op *op)
{
    if (op->ticket != NULL) {
        op->ticket->op = NULL; /* the callback comes later (EVUTIL_EAI_CANCEL) and frees it */
        op->ticket = NULL;
        if (op->dns_req != NULL)
            evdns_getaddrinfo_cancel(op->dns_req);
        op->dns_req = NULL;
    }
    conn_close(op);
    if (op->out != NULL)
        evbuffer_free(op->out);
    if (op->post != NULL)
        evbuffer_free(op->post);
    if (op->in != NULL)
        evbuffer_free(op->in);
    op->out = op->post = op->in = NULL;
}

static void op_free(struct http_op *op)
{
    op_release(op);
    if (op->timer != NULL)
        event_free(op->timer);
    if (op->body != NULL)
        evbuffer_free(op->body);
    free(op->head);
    free(op->targets);
    free(op->tls_name);
    pgw_tls_ctx_unref(op->tls_ctx);
    free(op);
}

/* Ends the operation with <err> (NULL: a response): releases the connection at once and
 * delivers the result from the timer callback, in a fresh libevent frame. The caller returns
 * right after, touching nothing. */
static void op_finish(struct http_op *op, const char *err)
{
    op->done = 1;
    op->err = err;
    op_release(op);
    event_del(op->timer);
    event_active(op->timer, EV_TIMEOUT, 1);
}

static void on_cancel(struct pgw_wait *w)
{
    struct http_op *op = (struct http_op *)w; /* wait is the first member */
    http_active--;
    op_free(op);
}

/* ---- Targets, resolution, connect ---- */

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

static int parse_ip(const char *host, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (evutil_inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        *len = sizeof(*s4);
        return PGW_OK;
    }
    if (evutil_inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        *len = sizeof(*s6);
        return PGW_OK;
    }
    return PGW_ERR;
}

static int start_connect(struct http_op *op)
{
    const struct http_target *t = &op->targets[op->next_target - 1];
    set_port(&op->addr, t->port);
    int fd = socket(op->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        pgw_log_debug(FNAME ": %s:%u: socket: %s", t->host, t->port, strerror(errno));
        op->last_err = err_connect;
        return PGW_ERR;
    }
    if (connect(fd, (struct sockaddr *)&op->addr, op->addr_len) == -1 && errno != EINPROGRESS) {
        pgw_log_debug(FNAME ": %s:%u: connect: %s", t->host, t->port, strerror(errno));
        close(fd);
        op->last_err = err_connect;
        return PGW_ERR;
    }
    op->fd = fd;
    op->rev = event_new(op->base, fd, EV_READ | EV_PERSIST, on_io, op);
    op->wev = event_new(op->base, fd, EV_WRITE | EV_PERSIST, on_io, op);
    pgw_assert(op->rev != NULL && op->wev != NULL);
    int has_tv = op->connect_tv.tv_sec != 0 || op->connect_tv.tv_usec != 0;
    event_add(op->wev, has_tv ? &op->connect_tv : NULL);
    return PGW_AGAIN;
}

/* An answer arrived (op->addr_len == 0: none): connect, or fail this target. */
static int resolved(struct http_op *op)
{
    if (op->addr_len == 0) {
        op->last_err = pgw_err_resolve;
        return PGW_ERR;
    }
    return start_connect(op);
}

static int next_targets(struct http_op *op);

static void on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct dns_ticket *tk = arg;
    struct http_op *op = tk->op;
    free(tk);
    if (op != NULL) {
        op->ticket = NULL;
        op->dns_req = NULL;
        op->addr_len = 0;
        if (result == 0 && res != NULL && res->ai_addrlen <= sizeof(op->addr) &&
            (res->ai_family == AF_INET || res->ai_family == AF_INET6)) {
            memcpy(&op->addr, res->ai_addr, res->ai_addrlen);
            op->addr_len = (socklen_t)res->ai_addrlen;
        }
    }
    if (res != NULL)
        evutil_freeaddrinfo(res);
    if (op == NULL || op->in_resolve) /* cancelled, or answered inside start_resolve() */
        return;
    int rc = resolved(op);
    if (rc == PGW_ERR)
        rc = next_targets(op);
    if (rc == PGW_ERR)
        op_finish(op, op->last_err);
}

static int start_resolve(struct http_op *op, const struct http_target *t)
{
    if (op->dns == NULL) {
        op->last_err = pgw_err_resolve;
        return PGW_ERR;
    }
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    struct dns_ticket *tk = pgw_malloc(sizeof(*tk));
    tk->op = op;
    op->ticket = tk;
    op->addr_len = 0;
    op->in_resolve = 1;
    struct evdns_getaddrinfo_request *r =
        evdns_getaddrinfo(op->dns, t->host, NULL, &hints, on_resolved, tk);
    op->in_resolve = 0;
    if (op->ticket == NULL) /* answered at once (hosts file, error): the callback ran */
        return resolved(op);
    if (r == NULL) { /* libevent always calls back first; if not, leave it the ticket */
        op->ticket->op = NULL;
        op->ticket = NULL;
        op->last_err = pgw_err_resolve;
        return PGW_ERR;
    }
    op->dns_req = r;
    return PGW_AGAIN;
}

static int start_target(struct http_op *op)
{
    const struct http_target *t = &op->targets[op->next_target++];
    if (t->host[0] == '\0') {
        op->last_err = pgw_err_resolve;
        return PGW_ERR;
    }
    if (parse_ip(t->host, &op->addr, &op->addr_len) == PGW_OK)
        return start_connect(op);
    return start_resolve(op, t);
}

/* Starts the targets not tried yet, in order, until one is in progress: PGW_AGAIN, or PGW_ERR
 * with op->last_err when none is left. */
static int next_targets(struct http_op *op)
{
    while (op->next_target < op->num_targets)
        if (start_target(op) == PGW_AGAIN)
            return PGW_AGAIN;
    return PGW_ERR;
}

/* The connect finished (or its timeout fired). On success the request is queued and both
 * directions are watched: a server may answer (and close) before reading the whole request. */
static int connect_done(struct http_op *op, short what)
{
    int e = ETIMEDOUT;
    socklen_t len = sizeof(e);
    if (!(what & EV_TIMEOUT) && getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &e, &len) == -1)
        e = errno;
    if (e != 0) {
        const struct http_target *t = &op->targets[op->next_target - 1];
        pgw_log_debug(FNAME ": %s:%u: connect: %s", t->host, t->port, strerror(e));
        return PGW_ERR;
    }
    op->connected = 1;
    event_del(op->wev);
    event_add(op->wev, NULL);
    event_add(op->rev, NULL);
    const struct http_target *t = &op->targets[op->next_target - 1];
    if (op->tls_ctx != NULL) {
        op->ssl = pgw_tls_client_new(op->tls_ctx, op->fd, op->tls_name ? op->tls_name : t->host,
                                     op->tls_verify);
        op->handshaking = 1;
    }
    if (!op->has_host) {
        int v6 = strchr(t->host, ':') != NULL;
        evbuffer_add_printf(op->out, "Host: %s%s%s", v6 ? "[" : "", t->host, v6 ? "]" : "");
        if (t->port != (op->tls_ctx != NULL ? 443 : 80))
            evbuffer_add_printf(op->out, ":%u", t->port);
        evbuffer_add(op->out, "\r\n", 2);
    }
    evbuffer_add_buffer(op->out, op->post);
    return PGW_OK;
}

/* ---- Request and response bytes ---- */

/* TLS: one record at a time. PGW_AGAIN: wait (the write event stays), PGW_ERR: stop writing. */
static int send_tls(struct http_op *op)
{
    size_t len;
    while ((len = evbuffer_get_length(op->out)) > 0) {
        size_t n = PGW_MIN(len, (size_t)HTTP_READ_MAX);
        const void *p = evbuffer_pullup(op->out, (ev_ssize_t)n);
        ssize_t w = pgw_tls_send(op->ssl, p, n);
        if (w == PGW_AGAIN)
            return PGW_AGAIN;
        if (w < 0)
            return PGW_ERR;
        evbuffer_drain(op->out, (size_t)w);
    }
    return PGW_OK;
}

static void send_request(struct http_op *op)
{
    if (op->ssl != NULL) {
        if (send_tls(op) == PGW_AGAIN)
            return;
        evbuffer_drain(op->out, evbuffer_get_length(op->out));
        event_del(op->wev);
        return;
    }
    while (evbuffer_get_length(op->out) > 0) {
        struct evbuffer_iovec v[8];
        int nv = evbuffer_peek(op->out, -1, NULL, v, 8);
        struct msghdr mh;
        memset(&mh, 0, sizeof(mh));
        mh.msg_iov = (struct iovec *)v; /* evbuffer_iovec is laid out as struct iovec */
        mh.msg_iovlen = (size_t)PGW_MIN(nv, 8);
        ssize_t n = sendmsg(op->fd, &mh, MSG_NOSIGNAL);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n == -1) /* the server stopped reading; it may have answered: read on */
            break;
        evbuffer_drain(op->out, (size_t)n);
    }
    evbuffer_drain(op->out, evbuffer_get_length(op->out));
    event_del(op->wev);
}

/* One read(2) into ->in: PGW_OK (bytes, or ->eof set), PGW_AGAIN, PGW_ERR (reset). */
static int read_some(struct http_op *op)
{
    struct evbuffer_iovec v;
    int nv = evbuffer_reserve_space(op->in, HTTP_READ_MAX, &v, 1);
    pgw_assert(nv == 1);
    ssize_t n;
    if (op->ssl != NULL) {
        int truncated = 0;
        n = pgw_tls_recv(op->ssl, v.iov_base, PGW_MIN(v.iov_len, (size_t)HTTP_READ_MAX),
                         &truncated);
        op->truncated = truncated != 0;
        if (n < 0)
            return (int)n; /* PGW_AGAIN or PGW_ERR */
        if (pgw_tls_pending(op->ssl))
            event_active(op->rev, EV_READ, 0); /* already read from the socket: no event */
    } else {
        n = recv(op->fd, v.iov_base, PGW_MIN(v.iov_len, (size_t)HTTP_READ_MAX), 0);
    }
    if (n == -1) /* the reserved space is simply not committed */
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? PGW_AGAIN : PGW_ERR;
    if (n == 0) {
        op->eof = 1;
        return PGW_OK;
    }
    v.iov_len = (size_t)n;
    evbuffer_commit_space(op->in, &v, 1);
    return PGW_OK;
}

static int bad_response(const struct http_op *op, const char *why, const char **err)
{
    const struct http_target *t = &op->targets[op->next_target - 1];
    pgw_log_debug(FNAME ": %s:%u: bad response: %s", t->host, t->port, why);
    *err = err_bad;
    return PGW_ERR;
}

/* Parses heads from ->in until the final one (1xx skipped): PGW_OK with the head copied,
 * PGW_AGAIN, or PGW_ERR with *err. */
static int parse_head(struct http_op *op, const char **err)
{
    struct pgw_http_header hdrs[HTTP_HEADERS_MAX];
    struct pgw_http_response resp;
    for (;;) {
        size_t len = PGW_MIN(evbuffer_get_length(op->in), (size_t)HTTP_HEAD_MAX);
        const char *p = NULL;
        int rc = PGW_AGAIN;
        if (len > 0) {
            p = (const char *)evbuffer_pullup(op->in, (ev_ssize_t)len);
            pgw_assert(p != NULL);
            rc = pgw_http_parse_response(p, len, &resp, hdrs, HTTP_HEADERS_MAX, &head_limits);
        }
        if (rc == PGW_AGAIN && len >= HTTP_HEAD_MAX)
            return bad_response(op, "head too large", err);
        if (rc == PGW_AGAIN && op->eof) {
            *err = pgw_err_closed;
            return PGW_ERR;
        }
        if (rc == PGW_AGAIN)
            return PGW_AGAIN;
        if (rc < 0)
            return bad_response(op, resp.err ? resp.err : "malformed head", err);
        if (resp.status < 200) {
            if (resp.status == 101 || ++op->interim > HTTP_INTERIM_MAX)
                return bad_response(op, "unexpected interim response", err);
            evbuffer_drain(op->in, (size_t)rc);
            continue;
        }
        op->status = resp.status;
        op->framing = pgw_http_response_body(&resp, op->is_head);
        op->content_length = resp.content_length;
        op->head = pgw_malloc((size_t)rc);
        memcpy(op->head, p, (size_t)rc);
        op->head_len = (size_t)rc;
        op->head_done = 1;
        evbuffer_drain(op->in, (size_t)rc);
        return PGW_OK;
    }
}

static int body_length(struct http_op *op, const char **err)
{
    if (op->content_length > op->max_body) {
        *err = pgw_err_too_large;
        return PGW_ERR;
    }
    uint64_t have = evbuffer_get_length(op->body);
    uint64_t want = op->content_length - have;
    size_t avail = evbuffer_get_length(op->in);
    size_t n = want < avail ? (size_t)want : avail;
    evbuffer_remove_buffer(op->in, op->body, n);
    if (have + n == op->content_length)
        return PGW_DONE;
    if (op->eof) {
        *err = pgw_err_closed;
        return PGW_ERR;
    }
    return PGW_AGAIN;
}

static int body_chunked(struct http_op *op, const char **err)
{
    size_t len;
    while ((len = evbuffer_get_length(op->in)) > 0) {
        const char *p = (const char *)evbuffer_pullup(op->in, -1);
        size_t used = 0, off = 0, dlen = 0;
        pgw_assert(p != NULL);
        int rc = pgw_http_chunked_decode(&op->chunked, p, len, &used, &off, &dlen);
        if (dlen > 0) {
            if ((uint64_t)evbuffer_get_length(op->body) + dlen > op->max_body) {
                *err = pgw_err_too_large;
                return PGW_ERR;
            }
            evbuffer_add(op->body, p + off, dlen);
        }
        evbuffer_drain(op->in, used);
        if (rc == PGW_DONE)
            return PGW_DONE;
        if (rc == PGW_ERR)
            return bad_response(op, op->chunked.err ? op->chunked.err : "bad chunk", err);
        if (used == 0)
            break;
    }
    if (op->eof) {
        *err = pgw_err_closed;
        return PGW_ERR;
    }
    return PGW_AGAIN;
}

static int body_eof(struct http_op *op, const char **err)
{
    uint64_t total = (uint64_t)evbuffer_get_length(op->body) + evbuffer_get_length(op->in);
    if (total > op->max_body) {
        *err = pgw_err_too_large;
        return PGW_ERR;
    }
    evbuffer_add_buffer(op->body, op->in);
    if (op->eof && op->truncated) { /* a TLS end without close_notify: maybe cut short */
        *err = pgw_err_closed;
        return PGW_ERR;
    }
    return op->eof ? PGW_DONE : PGW_AGAIN;
}

/* Reads once and advances: PGW_AGAIN, PGW_DONE (response complete), PGW_ERR with *err. */
static int read_response(struct http_op *op, const char **err)
{
    int rc = read_some(op);
    if (rc == PGW_AGAIN)
        return PGW_AGAIN;
    if (rc == PGW_ERR) {
        *err = pgw_err_closed;
        return PGW_ERR;
    }
    if (!op->head_done && (rc = parse_head(op, err)) != PGW_OK)
        return rc;
    switch (op->framing) {
    case PGW_HTTP_BODY_NONE:
        return PGW_DONE;
    case PGW_HTTP_BODY_LENGTH:
        return body_length(op, err);
    case PGW_HTTP_BODY_CHUNKED:
        return body_chunked(op, err);
    case PGW_HTTP_BODY_EOF:
        break;
    }
    return body_eof(op, err);
}

/* Advances the TLS handshake: PGW_OK when done (the request goes out), else the operation waits
 * or moved on to the next target (or finished). */
static int tls_step(struct http_op *op)
{
    int want_write;
    int r = pgw_tls_step(op->ssl, &want_write);
    if (r == PGW_AGAIN) {
        if (want_write)
            event_add(op->wev, NULL);
        else
            event_del(op->wev);
        return PGW_AGAIN;
    }
    if (r == PGW_ERR) {
        const struct http_target *t = &op->targets[op->next_target - 1];
        pgw_log_limited(&tls_log, 1000, PGW_LOG_ERROR, FNAME ": %s:%u: TLS handshake failed: %s",
                        t->host, t->port, pgw_tls_error());
        conn_close(op);
        op->last_err = err_tls;
        if (next_targets(op) == PGW_ERR)
            op_finish(op, op->last_err);
        return PGW_ERR;
    }
    op->handshaking = 0;
    event_add(op->wev, NULL);
    return PGW_OK;
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    struct http_op *op = arg;
    const char *err = NULL;
    int rc = PGW_AGAIN;
    PGW_UNUSED(fd);
    if (!op->connected) {
        if (connect_done(op, what) != PGW_OK) {
            conn_close(op);
            op->last_err = err_connect;
            if (next_targets(op) == PGW_ERR)
                op_finish(op, op->last_err);
            return;
        }
        what = EV_WRITE;
    }
    if (op->handshaking && tls_step(op) != PGW_OK)
        return;
    if (what & EV_WRITE)
        send_request(op);
    if (what & EV_READ)
        rc = read_response(op, &err);
    if (rc == PGW_DONE)
        op_finish(op, NULL);
    else if (rc == PGW_ERR)
        op_finish(op, err);
}

/* ---- The result ---- */

/* t[name] = value, or an array of the values when the name repeats. Stack: headers table on
 * top; left as it was. */
static void set_header(lua_State *L, const struct pgw_http_header *h)
{
    char *name = (char *)h->name; /* points into op->head, ours to modify */
    for (size_t i = 0; i < h->name_len; i++)
        name[i] = (char)pgw_lower((unsigned char)name[i]);
    lua_pushlstring(L, name, h->name_len); /* hdrs name */
    lua_pushvalue(L, -1);
    lua_rawget(L, -3); /* hdrs name old */
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushlstring(L, h->value, h->value_len);
    } else if (lua_isstring(L, -1)) {
        lua_createtable(L, 2, 0);
        lua_insert(L, -2);
        lua_rawseti(L, -2, 1);
        lua_pushlstring(L, h->value, h->value_len);
        lua_rawseti(L, -2, 2); /* hdrs name {old, value} */
    } else {
        lua_pushlstring(L, h->value, h->value_len);
        lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
    }
    lua_rawset(L, -3);
}

/* lua_cpcall function: builds { status, headers, body } from op (argument 1, light userdata) and
 * leaves it in op->result_ref. */
static int l_http_result(lua_State *L)
{
    struct http_op *op = lua_touserdata(L, 1);
    struct pgw_http_header hdrs[HTTP_HEADERS_MAX];
    struct pgw_http_response resp;
    int rc = pgw_http_parse_response(op->head, op->head_len, &resp, hdrs, HTTP_HEADERS_MAX,
                                     &head_limits);
    pgw_assert(rc == (int)op->head_len); /* the same bytes parsed before */
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, op->status);
    lua_setfield(L, -2, "status");
    lua_createtable(L, 0, (int)resp.num_headers);
    for (size_t i = 0; i < resp.num_headers; i++)
        set_header(L, &hdrs[i]);
    lua_setfield(L, -2, "headers");
    size_t n = evbuffer_get_length(op->body);
    const char *b = n > 0 ? (const char *)evbuffer_pullup(op->body, -1) : "";
    if (b == NULL)
        return luaL_error(L, "not enough memory");
    lua_pushlstring(L, b, n);
    lua_setfield(L, -2, "body");
    op->result_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* Builds the result in a protected call on the state's main thread, then moves it to <co>: a
 * body that does not fit under the memory cap becomes nil, "out of memory", not a panic. */
static int build_result(struct http_op *op, lua_State *co)
{
    lua_State *L = pgw_lua_state(pgw_lua_from_state(co));
    if (!lua_checkstack(L, 2))
        return PGW_ERR;
    if (lua_cpcall(L, l_http_result, op) != 0) {
        lua_pop(L, 1);
        return PGW_ERR;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, op->result_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, op->result_ref);
    op->result_ref = LUA_NOREF;
    lua_xmove(L, co, 1);
    return PGW_OK;
}

/* Pushes the results on the waiting thread; returns how many. */
static int push_result(struct http_op *op)
{
    lua_State *co = pgw_bridge_wait_thread(&op->wait);
    const char *err = op->err;
    if (!pgw_bridge_wait_reserve(&op->wait, 2))
        return 0;
    if (err == NULL && build_result(op, co) == PGW_OK)
        return 1;
    lua_pushnil(co);
    lua_pushstring(co, err != NULL ? err : err_nomem);
    return 2;
}

/* The deadline, or the delivery of a result op_finish() prepared. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct http_op *op = arg;
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    if (!op->done) {
        op->done = 1;
        op->err = pgw_err_timeout;
        op_release(op);
    }
    int nres = push_result(op);
    http_active--;
    pgw_bridge_wake(&op->wait, nres); /* may run Lua, which may start new requests */
    op_free(op);
}

static void op_start(struct http_op *op, double timeout)
{
    struct timeval tv;
    tv.tv_sec = (time_t)timeout;
    tv.tv_usec = (suseconds_t)((timeout - floor(timeout)) * 1e6);
    evtimer_add(op->timer, &tv);
    if (op->want_tls && op->tls_ctx == NULL) /* never plain HTTP in place of https */
        op_finish(op, err_tls);
    else if (next_targets(op) == PGW_ERR)
        op_finish(op, op->last_err);
}

/* ---- pgw.http ---- */

/* res, err = pgw.http.request{ url = | upstream = , path, method, headers, body, timeout,
 * max_body } (docs/sdk.md). Stages: rewrite, access, timer. Yields. Raises on a malformed
 * table; returns { status, headers, body } or nil and "timeout", "connect failed", "closed",
 * "too large", "resolve failed", "bad response", "too many requests", "out of memory". */
static int l_http_request(lua_State *L)
{
    struct http_args a;
    pgw_bridge_check(L, FNAME, PGW_STAGES_WAIT);
    if (lua_type(L, 1) != LUA_TTABLE)
        return luaL_error(L, FNAME ": bad argument #1 (table expected, got %s)",
                          luaL_typename(L, 1));
    lua_settop(L, 1);
    lua_newtable(L); /* 1: args, 2: header lines */
    read_args(L, &a);
    int nlines = collect_headers(L, &a);
    push_post(L, &a, nlines); /* 3: the request after its Host line */
    if (!lua_isyieldable(L))
        return luaL_error(L, FNAME ": cannot wait here (called through a C function that does "
                                   "not allow yields)");
    if (http_active >= HTTP_MAX_ACTIVE) {
        lua_pushnil(L);
        lua_pushstring(L, err_busy);
        return 2;
    }
    size_t post_len;
    const char *post = lua_tolstring(L, 3, &post_len);
    struct http_op *op = op_new(&a, post, post_len); /* nothing below raises */
    op_start(op, a.timeout);
    return pgw_bridge_wait(L, &op->wait);
}

/* pgw.http.has_upstream(name): whether the config has that upstream group (any stage, load
 * included: check_conf uses it). */
static int l_http_has_upstream(lua_State *L)
{
    size_t n, index;
    const char *name = luaL_checklstring(L, 1, &n);
    lua_pushboolean(L, lookup_upstream(name, n, &index) != NULL);
    return 1;
}

void pgw_lua_open_http(lua_State *L)
{
    static const luaL_Reg http_fns[] = {
        {"request", l_http_request}, {"has_upstream", l_http_has_upstream}, {NULL, NULL}};
    lua_createtable(L, 0, 2);
    luaL_register(L, NULL, http_fns);
    lua_setfield(L, -2, "http");
}
