/* route.c: path normalisation and the per-listener route tables (see route.h).
 *
 * Two decisions beyond RFC 3986, both made because the normalised path is what the upstream
 * receives, and an upstream that reads it differently from us can be reached past a route:
 * - A raw backslash is rejected like %5C, unless allow_encoded_slash: browsers never send one
 *   (they turn it into '/'), and IIS, ASP.NET and some Java and Node routers treat it as a
 *   separator, so "/public\..\admin" would be one opaque segment here and "/admin" there. When
 *   allowed it is kept literally, as nginx does, never turned into '/'.
 * - A dot-segment followed by parameters ("/..;/", "/.;x/") is rejected: Tomcat and Jetty strip
 *   ";params" from each segment before resolving dot-segments, the classic route bypass behind
 *   gateways ("/public/..;/admin").
 * Other raw bytes are accepted exactly when the request parser accepts them in a target (VCHAR
 * except '#'), minus '?' (the query never comes in here): controls, space, DEL and bytes >= 0x80
 * are rejected, since they would otherwise reach the upstream request line. The remaining
 * characters RFC 3986 leaves out of a path ('"' '<' '>' '^' '`' '{' '|' '}' '[' ']') pass as
 * they are, like nginx; the output cannot grow, so they are not re-encoded.
 *
 * Matching runs per request and never allocates: pgw_route_table_new() sorts the routes once by
 * precedence and splits templates into segments, so pgw_route_match() takes the first route that
 * fits. Exact paths are found by binary search on their length, templates by their segment count.
 */
#include "route.h"

#include <stdlib.h>
#include <string.h>

typedef unsigned char uchar;

/* ---- Path normalisation ---- */

static const char upper_hex[] = "0123456789ABCDEF";

static inline int hex_val(uchar c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static inline int is_unreserved(uchar c)
{
    uchar l = c | 0x20;
    return (l >= 'a' && l <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
           c == '~';
}

/* Raw bytes the parser lets into a target, minus '?'; the caller decides '%' and '\\'. */
static inline int is_raw_path_byte(uchar c) { return c > 0x20 && c < 0x7f && c != '#' && c != '?'; }

static int fail(const char **err, const char *msg)
{
    if (err != NULL)
        *err = msg;
    return PGW_ERR;
}

/* One pass, segment by segment, written straight into <out>: each segment is decoded after the
 * '/' that ends the output, then dropped (".") or popped with its parent ("..") once complete, so
 * dot-segments are recognised after decoding ("%2e%2E"). Every output byte stands for at least
 * one input byte already read (a written '/' for the input '/' that ends its segment, an escape
 * for itself), so the output never outgrows the input. */
int pgw_route_normalize_path(const char *in, size_t in_len, char *out, size_t *out_len,
                             int allow_encoded_slash, const char **err)
{
    const uchar *p = (const uchar *)in, *end = p + in_len;
    size_t o;

    if (in_len == 0 || in[0] != '/')
        return fail(err, "path does not start with '/'");
    out[0] = '/';
    o = 1;
    p++;
    while (p < end) {
        if (*p == '/') { /* merged: the output already ends with '/' */
            p++;
            continue;
        }
        size_t seg = o;
        while (p < end && *p != '/') {
            uchar c = *p;
            if (c == '%') {
                int hi, lo;
                if (end - p < 3 || (hi = hex_val(p[1])) < 0 || (lo = hex_val(p[2])) < 0)
                    return fail(err, "malformed percent-escape in path");
                c = (uchar)(hi << 4 | lo);
                p += 3;
                if (is_unreserved(c)) {
                    out[o++] = (char)c;
                    continue;
                }
                if (c == 0)
                    return fail(err, "%00 in path");
                if ((c == '/' || c == '\\') && !allow_encoded_slash)
                    return fail(err, "encoded slash or backslash in path");
                out[o++] = '%';
                out[o++] = upper_hex[hi];
                out[o++] = upper_hex[lo];
                continue;
            }
            if (!is_raw_path_byte(c))
                return fail(err, "byte not allowed in path");
            if (c == '\\' && !allow_encoded_slash)
                return fail(err, "backslash in path");
            out[o++] = (char)c;
            p++;
        }
        size_t n = o - seg;
        if (n == 1 && out[seg] == '.') {
            o = seg;
        } else if (n == 2 && out[seg] == '.' && out[seg + 1] == '.') {
            o = seg;
            if (o > 1) { /* pop the parent and keep its leading '/'; at the root, stay there */
                o--;
                while (out[o - 1] != '/')
                    o--;
            }
        } else if (n >= 2 && out[seg] == '.' &&
                   (out[seg + 1] == ';' ||
                    (n >= 3 && out[seg + 1] == '.' && out[seg + 2] == ';'))) {
            return fail(err, "dot-segment with parameters in path");
        } else if (p < end) {
            out[o++] = '/'; /* stands for the input '/' at p */
        }
    }
    *out_len = o;
    return PGW_OK;
}

/* ---- Patterns ---- */

static inline int is_name_start(uchar c)
{
    uchar l = c | 0x20;
    return (l >= 'a' && l <= 'z') || c == '_';
}

static inline int is_name_char(uchar c) { return is_name_start(c) || (c >= '0' && c <= '9'); }

int pgw_route_check_pattern(const char *pattern, const char **err)
{
    struct pgw_str names[PGW_ROUTE_MAX_PARAMS];
    size_t num_names = 0, len;

    if (pattern == NULL || pattern[0] != '/')
        return fail(err, "path pattern does not start with '/'");
    len = strlen(pattern);
    for (size_t i = 0; i < len; i++) {
        if (pattern[i] == '}')
            return fail(err, "unbalanced '}' in path pattern");
        if (pattern[i] != '{')
            continue;
        if (pattern[i - 1] != '/') /* i > 0: pattern[0] is '/' */
            return fail(err, "a {parameter} must be a whole path segment");
        size_t start = ++i;
        while (i < len && is_name_char((uchar)pattern[i]))
            i++;
        if (i == len)
            return fail(err, "unbalanced '{' in path pattern");
        if (pattern[i] != '}' || i == start || !is_name_start((uchar)pattern[start]))
            return fail(err, "parameter names must match [A-Za-z_][A-Za-z0-9_]*");
        if (i + 1 < len && pattern[i + 1] == '}')
            return fail(err, "unbalanced '}' in path pattern");
        if (i + 1 < len && pattern[i + 1] != '/')
            return fail(err, "a {parameter} must be a whole path segment");
        if (num_names == PGW_ROUTE_MAX_PARAMS)
            return fail(err, "too many parameters in path pattern (at most 8)");
        for (size_t k = 0; k < num_names; k++)
            if (names[k].len == i - start && memcmp(names[k].base, pattern + start, i - start) == 0)
                return fail(err, "duplicate parameter name in path pattern");
        names[num_names++] = (struct pgw_str){pattern + start, i - start};
    }

    /* Requests are matched after normalisation, so a pattern that normalisation would change
     * ("/a/./b", "//a", "/%7euser", "/%c3%a9", "/a b") could never match: refuse it rather than
     * leave a dead route. Braces are plain bytes to the normaliser, so templates check too.
     * Encoded slashes pass here: whether they reach the router is the listener's setting. */
    char *norm = pgw_malloc(len + 1);
    size_t norm_len;
    const char *nerr;
    int ok = pgw_route_normalize_path(pattern, len, norm, &norm_len, 1, &nerr) == PGW_OK &&
             norm_len == len && memcmp(norm, pattern, len) == 0;
    free(norm);
    if (!ok)
        return fail(err, "path pattern is not a normalised path (dot-segments, '//', a needless or "
                         "lower-case percent-escape, or a byte not allowed in a path): it could "
                         "never match");
    return PGW_OK;
}

/* ---- Tables ---- */

struct seg {
    const char *base; /* literal bytes, or the parameter name */
    size_t len;
    int is_param;
};

struct entry {
    const struct pgw_config_route *route;
    int index;
    enum pgw_path_kind kind;
    const char *path; /* exact: the path; prefix: the path without its final '/' */
    size_t len;
    size_t weight;    /* literal characters of the pattern: longer first within a kind */
    const char *host; /* NULL: any host; a wildcard keeps ".example.com" */
    size_t host_len;
    int host_rank;    /* 2: exact host, 1: wildcard, 0: any */
    struct seg *segs; /* template: one per '/' of the pattern */
    size_t num_segs;
    size_t min_len;   /* template: shortest path it can match */
};

struct pgw_route_table {
    struct entry *entries;
    size_t num_entries;
    size_t exact_end;    /* entries[0, exact_end) are exact, by length, longest first */
    size_t template_end; /* then templates up to template_end, then prefixes */
    struct seg *segs;
};

static int route_on_listener(const struct pgw_config_route *r, const char *listener_name)
{
    for (size_t i = 0; i < r->num_listeners; i++)
        if (r->listeners[i] != NULL && strcmp(r->listeners[i], listener_name) == 0)
            return 1;
    return 0;
}

static size_t count_slashes(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += s[i] == '/';
    return c;
}

/* Host without brackets, port or final dot: how both sides are compared. The authority comes
 * from the parser (a reg-name has no ':', an IP literal is bracketed); config hosts have no port,
 * but an IPv6 host may be written with or without brackets. */
static void host_key(const char *h, size_t n, const char **out, size_t *out_len)
{
    if (n > 0 && h[0] == '[') {
        const char *close = memchr(h, ']', n);
        h++;
        n = close != NULL ? (size_t)(close - h) : n - 1;
    } else {
        const char *colon = memchr(h, ':', n);
        if (colon != NULL && memchr(colon + 1, ':', n - (size_t)(colon + 1 - h)) == NULL)
            n = (size_t)(colon - h); /* one ':' is a port; more is a bare IPv6 literal */
        if (n > 0 && h[n - 1] == '.')
            n--; /* "example.com." names the same host */
    }
    *out = h;
    *out_len = n;
}

static int entry_cmp(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    if (x->kind != y->kind)
        return x->kind < y->kind ? -1 : 1;
    if (x->weight != y->weight)
        return x->weight > y->weight ? -1 : 1;
    if (x->host_rank != y->host_rank)
        return x->host_rank > y->host_rank ? -1 : 1;
    if (x->host_rank == 1 && x->host_len != y->host_len) /* "*.a.b.com" before "*.b.com" */
        return x->host_len > y->host_len ? -1 : 1;
    int xm = x->route->num_methods > 0, ym = y->route->num_methods > 0;
    if (xm != ym)
        return xm > ym ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index; /* config order: qsort is not stable */
}

struct pgw_route_table *pgw_route_table_new(const struct pgw_config *config,
                                            const char *listener_name, const char **err)
{
    struct pgw_route_table *t = pgw_calloc(1, sizeof(*t));
    size_t num_segs = 0;

    pgw_assert(listener_name != NULL);
    for (size_t i = 0; i < config->num_routes; i++) {
        const struct pgw_config_route *r = &config->routes[i];
        if (!route_on_listener(r, listener_name))
            continue;
        if (pgw_route_check_pattern(r->path, err) != PGW_OK)
            goto fail;
        t->num_entries++;
        if (r->path_kind == PGW_PATH_TEMPLATE)
            num_segs += count_slashes(r->path, strlen(r->path));
    }
    t->entries = pgw_calloc(t->num_entries, sizeof(*t->entries));
    t->segs = pgw_calloc(num_segs, sizeof(*t->segs));

    struct entry *e = t->entries;
    struct seg *s = t->segs;
    for (size_t i = 0; i < config->num_routes; i++) {
        const struct pgw_config_route *r = &config->routes[i];
        if (!route_on_listener(r, listener_name))
            continue;
        size_t len = strlen(r->path);
        e->route = r;
        e->index = (int)i;
        e->kind = r->path_kind;
        e->path = r->path;
        e->len = len;
        e->weight = len;
        if (r->host != NULL && r->host[0] != '\0') {
            if (r->host[0] == '*' && r->host[1] == '.') {
                e->host = r->host + 1;
                e->host_len = strlen(e->host);
                e->host_rank = 1;
            } else {
                host_key(r->host, strlen(r->host), &e->host, &e->host_len);
                e->host_rank = 2;
            }
        }
        if (e->kind == PGW_PATH_PREFIX && len > 0 && r->path[len - 1] == '/')
            e->len = len - 1;
        if (e->kind == PGW_PATH_TEMPLATE) {
            /* checked above: every '{' opens a whole segment "{name}" */
            e->segs = s;
            e->min_len = len;
            const char *p = r->path + 1, *end = r->path + len;
            for (;;) {
                const char *slash = memchr(p, '/', (size_t)(end - p));
                const char *send = slash != NULL ? slash : end;
                if (send > p && *p == '{') {
                    *s = (struct seg){p + 1, (size_t)(send - p) - 2, 1};
                    e->weight -= s->len + 2;
                    e->min_len -= s->len + 1; /* the name and braces stand for one byte or more */
                } else {
                    *s = (struct seg){p, (size_t)(send - p), 0};
                }
                s++;
                e->num_segs++;
                if (slash == NULL)
                    break;
                p = slash + 1;
            }
        }
        e++;
    }
    qsort(t->entries, t->num_entries, sizeof(*t->entries), entry_cmp);
    while (t->exact_end < t->num_entries && t->entries[t->exact_end].kind == PGW_PATH_EXACT)
        t->exact_end++;
    t->template_end = t->exact_end;
    while (t->template_end < t->num_entries &&
           t->entries[t->template_end].kind == PGW_PATH_TEMPLATE)
        t->template_end++;
    return t;

fail:
    pgw_route_table_free(t);
    return NULL;
}

void pgw_route_table_free(struct pgw_route_table *t)
{
    if (t == NULL)
        return;
    free(t->entries);
    free(t->segs);
    free(t);
}

/* ---- Matching ---- */

static int host_ok(const struct entry *e, const char *host, size_t host_len)
{
    if (e->host_rank == 0)
        return 1;
    if (host_len == 0)
        return 0; /* a route for a host never serves a request that names none */
    if (e->host_rank == 2)
        return pgw_str_ieq(host, host_len, e->host, e->host_len);
    /* "*.example.com": at least one non-empty label before ".example.com" */
    return host_len > e->host_len && host[0] != '.' &&
           pgw_str_ieq(host + host_len - e->host_len, e->host_len, e->host, e->host_len);
}

static int method_listed(const struct pgw_config_route *r, const char *method, size_t method_len)
{
    for (size_t i = 0; i < r->num_methods; i++)
        if (strlen(r->methods[i]) == method_len && memcmp(r->methods[i], method, method_len) == 0)
            return 1;
    return 0;
}

/* A route that allows GET also answers HEAD (RFC 9110 section 9.3.2: HEAD is GET without the
 * body), as nginx's limit_except does. */
static int method_ok(const struct pgw_config_route *r, const char *method, size_t method_len)
{
    if (r->num_methods == 0 || method_listed(r, method, method_len))
        return 1;
    return method_len == 4 && memcmp(method, "HEAD", 4) == 0 && method_listed(r, "GET", 3);
}

/* Params are written into <m> as segments match; a later failure leaves them to be overwritten. */
static int template_ok(const struct entry *e, const char *path, size_t path_len,
                       struct pgw_route_match *m)
{
    const char *p = path + 1, *end = path + path_len;
    size_t np = 0;
    for (size_t i = 0; i < e->num_segs; i++) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *send = slash != NULL ? slash : end;
        size_t n = (size_t)(send - p);
        const struct seg *s = &e->segs[i];
        if (s->is_param) {
            if (n == 0)
                return 0;
            m->params[np++] = (struct pgw_route_param){s->base, s->len, p, n};
        } else if (n != s->len || memcmp(p, s->base, n) != 0) {
            return 0;
        }
        p = send + 1; /* slash counts are equal: only the last segment has none after it */
    }
    m->num_params = np;
    return 1;
}

/* Host and method of a path match; path tests happen in the caller. 1: matched. */
static int try_entry(const struct entry *e, const char *host, size_t host_len, const char *method,
                     size_t method_len, struct pgw_route_match *m)
{
    if (!host_ok(e, host, host_len))
        return 0;
    if (!method_ok(e->route, method, method_len)) {
        m->method_mismatch = 1;
        return 0;
    }
    m->route = e->route;
    m->index = e->index;
    m->method_mismatch = 0; /* a less specific route took the method a more specific one lacks */
    return 1;
}

int pgw_route_match(const struct pgw_route_table *t, const char *host, size_t host_len,
                    const char *method, size_t method_len, const char *path, size_t path_len,
                    struct pgw_route_match *m)
{
    const struct entry *e = t->entries;
    size_t lo, hi;

    m->route = NULL;
    m->index = -1;
    m->method_mismatch = 0;
    m->prefix_len = 0;
    m->num_params = 0;
    if (host == NULL)
        host_len = 0;
    else
        host_key(host, host_len, &host, &host_len);

    /* exact: first entry not longer than the path, then the run of its length */
    lo = 0;
    hi = t->exact_end;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (e[mid].len > path_len)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; i < t->exact_end && e[i].len == path_len; i++)
        if (memcmp(e[i].path, path, path_len) == 0 &&
            try_entry(&e[i], host, host_len, method, method_len, m))
            return PGW_OK;

    if (t->template_end > t->exact_end && path_len > 0 && path[0] == '/') {
        size_t slashes = count_slashes(path, path_len);
        for (size_t i = t->exact_end; i < t->template_end; i++) {
            if (e[i].num_segs != slashes || path_len < e[i].min_len ||
                !template_ok(&e[i], path, path_len, m))
                continue;
            if (try_entry(&e[i], host, host_len, method, method_len, m))
                return PGW_OK;
        }
        m->num_params = 0;
    }

    for (size_t i = t->template_end; i < t->num_entries; i++) {
        size_t n = e[i].len;
        if (path_len < n || memcmp(path, e[i].path, n) != 0 || (path_len > n && path[n] != '/'))
            continue;
        if (try_entry(&e[i], host, host_len, method, method_len, m)) {
            m->prefix_len = n;
            return PGW_OK;
        }
    }
    return PGW_DECLINED;
}
