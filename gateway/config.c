/* config.c: loads the YAML configuration into an immutable, refcounted snapshot.
 *
 * Two passes. yamltree.c first builds a small tree of scalars, lists and maps; anchors, aliases and
 * tags are refused there, so the tree is never larger than the text (no "billion laughs"), and
 * duplicate keys are found once for every map. The schema walk here then checks every key and
 * value against config.h and fills the snapshot. Errors are collected, not returned early, then
 * sorted by line and written out together: any error means no snapshot.
 */
#include "config.h"
#include "addr.h"
#include "route.h"
#include "config_int.h"
#include "yamltree.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_FILE_SIZE (16u << 20) /* bytes; a larger file is a mistake, not a config */
#define MAX_NAME 64               /* listener, upstream and route names */


/* ---- Values ---- */

static const char *parse_digits(const char *s, uint64_t *v)
{
    uint64_t x = 0;
    const char *p = s;

    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (x > (UINT64_MAX - d) / 10)
            return NULL;
        x = x * 10 + d;
    }
    if (p == s)
        return NULL;
    *v = x;
    return p;
}

int pgw_config_parse_size(const char *s, uint64_t *bytes)
{
    uint64_t v;
    unsigned shift = 0;
    const char *p = parse_digits(s, &v);

    if (p == NULL)
        return PGW_ERR;
    switch (*p) {
    case 'k': case 'K': shift = 10; p++; break;
    case 'm': case 'M': shift = 20; p++; break;
    case 'g': case 'G': shift = 30; p++; break;
    }
    if (*p != '\0' || v > (UINT64_MAX >> shift))
        return PGW_ERR;
    *bytes = v << shift;
    return PGW_OK;
}

int pgw_config_parse_duration(const char *s, uint64_t *ms)
{
    uint64_t v, mul;
    const char *p = parse_digits(s, &v);

    if (p == NULL)
        return PGW_ERR;
    if (strcmp(p, "ms") == 0)
        mul = 1;
    else if (*p == '\0' || strcmp(p, "s") == 0)
        mul = SEC;
    else if (strcmp(p, "m") == 0)
        mul = 60 * SEC;
    else if (strcmp(p, "h") == 0)
        mul = 3600 * SEC;
    else
        return PGW_ERR;
    if (v > UINT64_MAX / mul)
        return PGW_ERR;
    *ms = v * mul;
    return PGW_OK;
}

static int parse_count(const char *s, uint64_t *v)
{
    const char *p = parse_digits(s, v);
    return p != NULL && *p == '\0' ? PGW_OK : PGW_ERR;
}

struct unit {
    char name[3];
    uint64_t size;
};

static const struct unit size_units[] = {{"g", 1ull << 30}, {"m", 1ull << 20}, {"k", 1ull << 10}};
static const struct unit duration_units[] = {
    {"h", 3600 * SEC}, {"m", 60 * SEC}, {"s", SEC}, {"ms", 1}};

/* Formats a bound for a message in the largest unit that divides it, as the user would write it. */
static const char *fmt_unit(char *buf, size_t len, uint64_t v, const struct unit *u, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (v != 0 && v % u[i].size == 0) {
            snprintf(buf, len, "%llu%s", (unsigned long long)(v / u[i].size), u[i].name);
            return buf;
        }
    }
    snprintf(buf, len, "%llu", (unsigned long long)v);
    return buf;
}

/* ---- Schema helpers ---- */

/* Reports "<where>.<key>: message" (or "<where>: " / "<key>: " when one of them is missing). */
void PGW_PRINTF(5, 6) pgw_cfg_err(struct pgw_cfg_ctx *x, unsigned line, const char *where, const char *key,
                                  const char *fmt, ...)
{
    char msg[PGW_ERRS_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pgw_errs_add(x->e, line, "%s%s%s: %s", where, (*where && key) ? "." : "", key ? key : "", msg);
}

const struct pgw_yaml_node *pgw_cfg_map_get(const struct pgw_yaml_node *map, const char *key)
{
    for (size_t i = 0; i + 1 < map->n; i += 2)
        if (pgw_yaml_is(map->kids[i], key))
            return map->kids[i + 1];
    return NULL;
}

/* Whether <n> is a non-null scalar; if not, reports that <expected> was expected. */
int pgw_cfg_want_scalar(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n, const char *where,
                       const char *key, const char *expected)
{
    if (n->kind == PGW_YAML_SCALAR && !pgw_yaml_is_null(n))
        return 1;
    if (!n->is_bad)
        pgw_cfg_err(x, n->line, where, key, "expected %s, got %s", expected, pgw_yaml_describe(n));
    return 0;
}

int pgw_cfg_want_kind(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n, enum pgw_yaml_kind kind,
                     const char *where, const char *key)
{
    if (kind == PGW_YAML_SCALAR)
        return pgw_cfg_want_scalar(x, n, where, key, "a string");
    if (n->kind == kind)
        return 1;
    if (!n->is_bad)
        pgw_cfg_err(x, n->line, where, key, "expected %s, got %s",
             kind == PGW_YAML_MAP ? "a map" : "a list", pgw_yaml_describe(n));
    return 0;
}

/* Looks up a required key, reporting its absence at the map's line. */
const struct pgw_yaml_node *pgw_cfg_require(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *map,
                                           const char *where, const char *key)
{
    const struct pgw_yaml_node *v = pgw_cfg_map_get(map, key);
    if (v == NULL)
        pgw_cfg_err(x, map->line, where, NULL, "missing required key \"%s\"", key);
    return v;
}

int pgw_cfg_read_str(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                    const char *key, char **out)
{
    if (!pgw_cfg_want_kind(x, v, PGW_YAML_SCALAR, where, key))
        return PGW_ERR;
    if (v->len == 0) {
        pgw_cfg_err(x, v->line, where, key, "must not be empty");
        return PGW_ERR;
    }
    free(*out); /* a duplicate key, already reported */
    *out = pgw_strndup(v->str, v->len);
    return PGW_OK;
}

static int is_name(const char *s, size_t len)
{
    if (len == 0 || len > MAX_NAME)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Sets *out even for a malformed name, so that references to it do not cascade into more errors. */
static int read_name(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                     const char *key, char **out)
{
    char q[PGW_ERRS_QUOTE_MAX];
    if (pgw_cfg_read_str(x, v, where, key, out) != PGW_OK)
        return PGW_ERR;
    if (is_name(v->str, v->len))
        return PGW_OK;
    pgw_cfg_err(x, v->line, where, key, "invalid name %s: use 1 to %d of A-Z a-z 0-9 _ -",
         pgw_errs_quote(q, v->str, v->len), MAX_NAME);
    return PGW_ERR;
}

/* Returns the index of <v> in <names> or -1 after reporting it. */
int pgw_cfg_read_enum(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                     const char *key, const char *const *names)
{
    char q[PGW_ERRS_QUOTE_MAX], list[256];
    size_t used = (size_t)snprintf(list, sizeof(list), "one of");

    for (int i = 0; names[i] != NULL; i++) {
        used += (size_t)snprintf(list + used, sizeof(list) - used, "%s %s", i ? "," : "", names[i]);
        pgw_assert(used < sizeof(list));
    }
    if (!pgw_cfg_want_scalar(x, v, where, key, list))
        return -1;
    for (int i = 0; names[i] != NULL; i++)
        if (pgw_yaml_is(v, names[i]))
            return i;
    pgw_cfg_err(x, v->line, where, key, "expected %s, got %s", list, pgw_errs_quote(q, v->str, v->len));
    return -1;
}

int pgw_cfg_read_bool(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                     const char *key, int *out)
{
    static const char *const yaml11[] = {"yes", "no", "on", "off", "y", "n", NULL};
    char q[PGW_ERRS_QUOTE_MAX];

    if (!pgw_cfg_want_scalar(x, v, where, key, "true or false"))
        return PGW_ERR;
    if (v->is_plain &&
        (pgw_yaml_is(v, "true") || pgw_yaml_is(v, "True") || pgw_yaml_is(v, "TRUE"))) {
        *out = 1;
        return PGW_OK;
    }
    if (v->is_plain &&
        (pgw_yaml_is(v, "false") || pgw_yaml_is(v, "False") || pgw_yaml_is(v, "FALSE"))) {
        *out = 0;
        return PGW_OK;
    }
    const char *hint = v->is_plain ? "" : " (quoted: write it without quotes)";
    for (int i = 0; yaml11[i] != NULL; i++)
        if (pgw_str_ieq(v->str, v->len, yaml11[i], strlen(yaml11[i])))
            hint = " (YAML 1.2: yes/no/on/off are strings)";
    pgw_cfg_err(x, v->line, where, key, "expected true or false, got %s%s",
         pgw_errs_quote(q, v->str, v->len), hint);
    return PGW_ERR;
}

/* ---- Field tables ---- */

static void store(void *base, const struct field *f, uint64_t v)
{
    char *p = (char *)base + f->off;
    if (f->size == sizeof(uint64_t)) {
        memcpy(p, &v, sizeof(v));
    } else {
        /* int and unsigned members: the bounds in the tables keep values below INT_MAX */
        pgw_assert(f->size == sizeof(uint32_t) && v <= INT32_MAX);
        uint32_t u = (uint32_t)v;
        memcpy(p, &u, sizeof(u));
    }
}

static const char *fmt_value(char *buf, size_t len, enum field_type type, uint64_t v)
{
    if (type == F_SIZE)
        return fmt_unit(buf, len, v, size_units, PGW_ARRAY_LEN(size_units));
    if (type == F_DURATION)
        return fmt_unit(buf, len, v, duration_units, PGW_ARRAY_LEN(duration_units));
    snprintf(buf, len, "%llu", (unsigned long long)v);
    return buf;
}

static int read_number(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                       const struct field *f, uint64_t *out)
{
    static const char *const expected[] = {
        [F_COUNT] = "a non-negative integer",
        [F_SIZE] = "a size (bytes, or with a k, m or g suffix: 8k, 10m)",
        [F_DURATION] = "a duration (250ms, 10s, 2m, 1h, or a number of seconds)",
    };
    char q[PGW_ERRS_QUOTE_MAX];

    if (!pgw_cfg_want_scalar(x, v, where, f->key, expected[f->type]))
        return PGW_ERR;
    int r = f->type == F_COUNT      ? parse_count(v->str, out)
            : f->type == F_SIZE     ? pgw_config_parse_size(v->str, out)
                                    : pgw_config_parse_duration(v->str, out);
    if (r == PGW_OK && (f->type != F_COUNT || v->is_plain))
        return PGW_OK;
    pgw_cfg_err(x, v->line, where, f->key, "expected %s, got %s%s", expected[f->type],
         pgw_errs_quote(q, v->str, v->len),
         r == PGW_OK ? " (quoted: write it without quotes)" : "");
    return PGW_ERR;
}

static void read_field(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                       const struct field *f, void *base)
{
    char q[PGW_ERRS_QUOTE_MAX], bound[32];
    uint64_t val;

    if (f->type == F_BOOL) {
        int b;
        if (pgw_cfg_read_bool(x, v, where, f->key, &b) == PGW_OK)
            store(base, f, (uint64_t)b);
        return;
    }
    if (read_number(x, v, where, f, &val) != PGW_OK)
        return;
    if (val < f->min)
        pgw_cfg_err(x, v->line, where, f->key, "%s is below the minimum (%s)",
             pgw_errs_quote(q, v->str, v->len), fmt_value(bound, sizeof(bound), f->type, f->min));
    else if (val > f->max)
        pgw_cfg_err(x, v->line, where, f->key, "%s is above the maximum (%s)",
             pgw_errs_quote(q, v->str, v->len), fmt_value(bound, sizeof(bound), f->type, f->max));
    else
        store(base, f, val);
}

static void unknown_key(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *k, const char *where,
                        const char *const *extras, const struct field *fields, size_t nf)
{
    char q[PGW_ERRS_QUOTE_MAX], list[512];
    size_t used = 0;

    for (size_t i = 0; extras != NULL && extras[i] != NULL; i++)
        used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%s", used ? ", " : "",
                                 extras[i]);
    for (size_t i = 0; i < nf; i++)
        used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%s", used ? ", " : "",
                                 fields[i].key);
    pgw_assert(used < sizeof(list));
    if (*where)
        pgw_errs_add(x->e, k->line, "%s: unknown key %s (allowed: %s)", where,
                     pgw_errs_quote(q, k->str, k->len), list);
    else
        pgw_errs_add(x->e, k->line, "unknown top-level key %s (allowed: %s)",
                     pgw_errs_quote(q, k->str, k->len), list);
}

/* Reads the keys of <map> found in <fields> into <base>, reports keys in neither <fields> nor
 * <extras> (which the caller reads itself). */
void pgw_cfg_walk_keys(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *map, const char *where,
                      const char *const *extras, const struct field *fields, size_t nf, void *base)
{
    for (size_t i = 0; i + 1 < map->n; i += 2) {
        const struct pgw_yaml_node *k = map->kids[i];
        int known = 0;
        if (k->kind != PGW_YAML_SCALAR || k->is_bad)
            continue; /* reported while reading the tree */
        for (size_t j = 0; j < nf && !known; j++) {
            if (pgw_yaml_is(k, fields[j].key)) {
                read_field(x, map->kids[i + 1], where, &fields[j], base);
                known = 1;
            }
        }
        for (size_t j = 0; extras != NULL && extras[j] != NULL && !known; j++)
            known = pgw_yaml_is(k, extras[j]);
        if (!known)
            unknown_key(x, k, where, extras, fields, nf);
    }
}

/* ---- Hosts and targets ---- */

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* A DNS name (letters, digits, '-', '_', labels of 1..63 bytes, 253 at most) or an IPv4 address;
 * a last label of digits only must make a valid IPv4 address ("10.0.0.256" is no host name). */
static const char *check_name(const char *s, size_t len)
{
    size_t label = 0;
    int numeric = 1;

    if (len == 0 || len > 253)
        return "host names have 1 to 253 bytes";
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '.') {
            if (label == 0 || label > 63)
                return "host name labels have 1 to 63 bytes";
            if (i < len)
                numeric = 1;
            label = 0;
            continue;
        }
        char c = (char)pgw_lower((unsigned char)s[i]);
        if (!((c >= 'a' && c <= 'z') || is_digit(c) || c == '-' || c == '_'))
            return "host names use only letters, digits, '-', '_' and '.'";
        numeric &= is_digit(c);
        label++;
    }
    if (numeric && pgw_addr_parse_ip(s, len, &(struct sockaddr_storage){0}, NULL) != PGW_OK)
        return "not a valid IPv4 address";
    return NULL;
}

static int is_ipv6(const char *s, size_t len)
{
    struct sockaddr_storage sa;
    return memchr(s, ':', len) != NULL && pgw_addr_parse_ip(s, len, &sa, NULL) == PGW_OK;
}

/* Parses "host:port" or "[v6]:port". Returns NULL or a static description. */
static const char *parse_target(const char *s, struct pgw_config_target *t)
{
    const char *host = s, *colon;
    size_t host_len;
    uint64_t port;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL)
            return "missing ']' after the IPv6 address";
        host = s + 1;
        host_len = (size_t)(close - host);
        if (!is_ipv6(host, host_len))
            return "brackets must hold an IPv6 address";
        if (close[1] != ':')
            return "missing port (host:port)";
        colon = close + 1;
        t->is_literal = 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return "missing port (host:port)";
        host_len = (size_t)(colon - s);
        if (memchr(s, ':', host_len) != NULL)
            return "IPv6 addresses go in brackets: [2001:db8::1]:8080";
        const char *err = check_name(s, host_len);
        if (err != NULL)
            return err;
        struct sockaddr_storage sa;
        t->is_literal = pgw_addr_parse_ip(s, host_len, &sa, NULL) == PGW_OK;
    }
    const char *p = colon + 1;
    if (p[0] == '0' || parse_count(p, &port) != PGW_OK || port < 1 || port > 65535)
        return "the port must be 1..65535 without leading zeros";
    t->host = pgw_strndup(host, host_len);
    t->port = (uint16_t)port;
    return NULL;
}

/* A route's host, lower-cased in place: a name, "*.name", an IPv4 or IPv6 address. No port. */
static const char *check_match_host(char *h, size_t len)
{
    for (size_t i = 0; i < len; i++)
        h[i] = (char)pgw_lower((unsigned char)h[i]);
    if (h[0] == '[') {
        if (h[len - 1] != ']' || !is_ipv6(h + 1, len - 2))
            return "brackets must hold an IPv6 address, without a port";
        return NULL;
    }
    if (is_ipv6(h, len))
        return NULL;
    if (memchr(h, ':', len) != NULL)
        return "the host must not carry a port";
    if (len >= 2 && h[0] == '*' && h[1] == '.') {
        h += 2;
        len -= 2;
    }
    if (memchr(h, '*', len) != NULL)
        return "a wildcard is only allowed as a whole first label: *.example.com";
    return check_name(h, len);
}

/* ---- Sections ---- */

/* In load order: load_root() pairs loaders with these by position. */
static const char *const top_keys[] = {"listeners", "upstreams",  "routes",    "real_ip",
                                       "limits",    "timeouts",   "access_log", "error_log",
                                       "http",      "resolver",   "workers",    "control",
                                       "policies",  "store",      "plans",      "tls",
                                       "jwt",       NULL};

static const struct field listener_fields[] = {
    FIELD(F_COUNT, struct pgw_config_listener, backlog, 1, 65535),
};

static void load_listener_address(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                                  struct pgw_config_listener *l)
{
    char q[PGW_ERRS_QUOTE_MAX];
    if (pgw_cfg_read_str(x, v, where, "address", &l->address) != PGW_OK)
        return;
    if (pgw_addr_parse_listen(l->address, &l->sa, &l->sa_len) != PGW_OK) {
        pgw_cfg_err(x, v->line, where, "address",
             "invalid listen address %s: expected ip:port, [ipv6]:port, *:port or :port",
             pgw_errs_quote(q, v->str, v->len));
        l->sa_len = 0;
        return;
    }
    for (const struct pgw_config_listener *o = x->c->listeners; o < l; o++)
        if (o->sa_len > 0 && pgw_addr_equal(&o->sa, &l->sa))
            pgw_cfg_err(x, v->line, where, "address", "%s is already used by listener \"%s\" (line %u)",
                 pgw_errs_quote(q, v->str, v->len), o->name ? o->name : "?", o->line);
}

/* ---- Policy lists ---- */

int pgw_config_policy_engine;

/* A growable byte buffer for the JSON text of a policy's settings. */
struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = pgw_realloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}
#define SB_LIT(b, lit) sb_add((b), (lit), sizeof(lit) - 1)

/* A JSON string: quotes, backslashes and control bytes escaped, UTF-8 passed through. */
static void sb_json_string(struct sbuf *b, const char *s, size_t n)
{
    SB_LIT(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_add(b, e, 2);
        } else if (c < 0x20 || c == 0x7f) {
            char e[8];
            snprintf(e, sizeof(e), "\\u%04x", c);
            sb_add(b, e, 6);
        } else {
            sb_add(b, (const char *)&c, 1);
        }
    }
    SB_LIT(b, "\"");
}

/* Whether <s> is a JSON number as written: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int is_json_number(const char *s)
{
    const char *p = s + (*s == '-');
    if (*p == '0')
        p++;
    else if (is_digit(*p))
        while (is_digit(*p))
            p++;
    else
        return 0;
    if (*p == '.') {
        if (!is_digit(*++p))
            return 0;
        while (is_digit(*p))
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        p += p[1] == '+' || p[1] == '-' ? 2 : 1;
        if (!is_digit(*p))
            return 0;
        while (is_digit(*p))
            p++;
    }
    return *p == '\0';
}

/* Plain scalars become JSON numbers, booleans and null when they read as such (YAML 1.2 core
 * schema); everything else, and every quoted scalar, is a string. */
static void yaml_to_json(struct sbuf *b, const struct pgw_yaml_node *n)
{
    if (n->kind == PGW_YAML_SCALAR) {
        if (n->is_plain && pgw_yaml_is_null(n))
            SB_LIT(b, "null");
        else if (n->is_plain && (pgw_yaml_is(n, "true") || pgw_yaml_is(n, "false")))
            sb_add(b, n->str, n->len);
        else if (n->is_plain && is_json_number(n->str))
            sb_add(b, n->str, n->len);
        else
            sb_json_string(b, n->str, n->len);
        return;
    }
    int map = n->kind == PGW_YAML_MAP;
    sb_add(b, map ? "{" : "[", 1);
    for (size_t i = 0; i < n->n; i += map ? 2 : 1) {
        if (i > 0)
            SB_LIT(b, ",");
        if (map) {
            sb_json_string(b, n->kids[i]->str ? n->kids[i]->str : "", n->kids[i]->len);
            SB_LIT(b, ":");
            yaml_to_json(b, n->kids[i + 1]);
        } else {
            yaml_to_json(b, n->kids[i]);
        }
    }
    sb_add(b, map ? "}" : "]", 1);
}

static int is_policy_name(const char *s, size_t len)
{
    if (len == 0 || len > 64 || !(s[0] >= 'a' && s[0] <= 'z'))
        return 0;
    for (size_t i = 1; i < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || is_digit(s[i]) || s[i] == '_'))
            return 0;
    return 1;
}

/* One entry: NAME, or { NAME: { settings } } (NAME: with nothing means no settings). */
static void load_policy_entry(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *e, const char *where,
                              struct pgw_config_policies *ps)
{
    char q[PGW_ERRS_QUOTE_MAX];
    const struct pgw_yaml_node *k = e, *v = NULL;
    if (e->kind == PGW_YAML_MAP) {
        if (e->n != 2) {
            pgw_cfg_err(x, e->line, where, "policies",
                 "each entry names one policy: \"- name\" or \"- name: { settings }\"");
            return;
        }
        k = e->kids[0];
        v = e->kids[1];
    }
    if (k->kind != PGW_YAML_SCALAR || k->is_bad) {
        pgw_cfg_err(x, e->line, where, "policies", "expected a policy name, got %s", pgw_yaml_describe(k));
        return;
    }
    if (!is_policy_name(k->str, k->len)) {
        pgw_cfg_err(x, k->line, where, "policies",
             "%s is not a policy name (lower-case letters, digits and _, starting with a letter)",
             pgw_errs_quote(q, k->str, k->len));
        return;
    }
    if (v != NULL && !pgw_yaml_is_null(v) && v->kind != PGW_YAML_MAP) {
        pgw_cfg_err(x, v->line, where, "policies", "the settings of %s must be a map, got %s", k->str,
             pgw_yaml_describe(v));
        return;
    }
    struct pgw_config_policy *p = &ps->v[ps->n++];
    p->name = pgw_strndup(k->str, k->len);
    p->line = k->line;
    struct sbuf b = {0};
    if (v == NULL || pgw_yaml_is_null(v))
        SB_LIT(&b, "{}");
    else
        yaml_to_json(&b, v);
    p->conf_json = b.p;
}

void pgw_cfg_load_policies(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                           struct pgw_config_policies *ps)
{
    if (!pgw_cfg_want_kind(x, v, PGW_YAML_SEQ, where, "policies"))
        return;
    ps->v = pgw_calloc(v->n ? v->n : 1, sizeof(*ps->v));
    for (size_t i = 0; i < v->n; i++)
        load_policy_entry(x, v->kids[i], where, ps);
    /* A policy list that nothing would run is a security hole (a key_auth that never checks):
     * refused until the policy engine is linked in. */
    if (ps->n > 0 && !pgw_config_policy_engine)
        pgw_cfg_err(x, ps->v[0].line, where, "policies",
             "policies are not run by this version of passerelle yet (the policy engine is in "
             "progress): remove this list");
}

void pgw_cfg_free_policies(struct pgw_config_policies *ps)
{
    for (size_t i = 0; i < ps->n; i++) {
        free(ps->v[i].name);
        free(ps->v[i].conf_json);
    }
    free(ps->v);
}

static const struct field lua_fields[] = {
    FIELD(F_SIZE, struct pgw_config_lua, memory, 4u << 20, 1ull << 40),
    FIELD(F_DURATION, struct pgw_config_lua, budget, 1, 60 * SEC),
    FIELD(F_SIZE, struct pgw_config_lua, body_max, 1, 1ull << 30),
    FIELD(F_COUNT, struct pgw_config_lua, timers, 0, 1000000),
};

static void load_policies_section(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    static const char *const extras[] = {"dir", "http_ca", NULL};
    const struct pgw_yaml_node *v;
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, "", "policies"))
        return;
    pgw_cfg_walk_keys(x, n, "policies", extras, lua_fields, PGW_ARRAY_LEN(lua_fields), &x->c->lua);
    if ((v = pgw_cfg_map_get(n, "dir")) != NULL)
        pgw_cfg_read_str(x, v, "policies", "dir", &x->c->policies_dir);
    if ((v = pgw_cfg_map_get(n, "http_ca")) != NULL)
        pgw_cfg_read_str(x, v, "policies", "http_ca", &x->c->http_ca);
}

static void load_listener(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n, size_t i)
{
    static const char *const extras[] = {"name", "address", "policies", "tls", NULL};
    char where[32];
    const struct pgw_yaml_node *v;

    snprintf(where, sizeof(where), "listeners[%zu]", i);
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, where, NULL))
        return;
    struct pgw_config_listener *l = &x->c->listeners[x->c->num_listeners++];
    l->line = n->line;
    l->backlog = 511;
    pgw_cfg_walk_keys(x, n, where, extras, listener_fields, PGW_ARRAY_LEN(listener_fields), l);
    if ((v = pgw_cfg_require(x, n, where, "name")) != NULL &&
        read_name(x, v, where, "name", &l->name) == PGW_OK) {
        for (const struct pgw_config_listener *o = x->c->listeners; o < l; o++)
            if (o->name != NULL && strcmp(o->name, l->name) == 0)
                pgw_cfg_err(x, v->line, where, "name", "listener \"%s\" is already defined at line %u",
                     l->name, o->line);
    }
    if ((v = pgw_cfg_require(x, n, where, "address")) != NULL)
        load_listener_address(x, v, where, l);
    if ((v = pgw_cfg_map_get(n, "policies")) != NULL)
        pgw_cfg_load_policies(x, v, where, &l->policies);
    if ((v = pgw_cfg_map_get(n, "tls")) != NULL)
        pgw_cfg_load_listener_tls(x, v, where, l);
}

static void load_listeners(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *root)
{
    const struct pgw_yaml_node *seq = pgw_cfg_map_get(root, "listeners");
    if (seq == NULL) {
        pgw_errs_add(x->e, root->line,
                     "missing required key \"listeners\" (a list of {name, address})");
        return;
    }
    if (!pgw_cfg_want_kind(x, seq, PGW_YAML_SEQ, "", "listeners"))
        return;
    if (seq->n == 0) {
        pgw_cfg_err(x, seq->line, "", "listeners", "at least one listener is needed");
        return;
    }
    x->c->listeners = pgw_calloc(seq->n, sizeof(*x->c->listeners));
    for (size_t i = 0; i < seq->n; i++)
        load_listener(x, seq->kids[i], i);
}

static void load_real_ip(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    static const char *const extras[] = {"trusted", "from", NULL};
    static const char *const froms[] = {"x-forwarded-for", "proxy_protocol", NULL};
    struct pgw_config_real_ip *ri = &x->c->real_ip;
    char q[PGW_ERRS_QUOTE_MAX];
    const struct pgw_yaml_node *v;

    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, "", "real_ip"))
        return;
    pgw_cfg_walk_keys(x, n, "real_ip", extras, NULL, 0, NULL);
    if ((v = pgw_cfg_require(x, n, "real_ip", "from")) != NULL) {
        int i = pgw_cfg_read_enum(x, v, "real_ip", "from", froms);
        if (i >= 0)
            ri->from = (enum pgw_real_ip_from)(i + 1); /* the enum follows the list, after NONE */
    }
    if ((v = pgw_cfg_require(x, n, "real_ip", "trusted")) == NULL ||
        !pgw_cfg_want_kind(x, v, PGW_YAML_SEQ, "real_ip", "trusted"))
        return;
    if (v->n == 0)
        pgw_cfg_err(x, v->line, "real_ip", "trusted", "at least one address or range is needed");
    ri->trusted = pgw_calloc(v->n, sizeof(*ri->trusted));
    for (size_t i = 0; i < v->n; i++) {
        const struct pgw_yaml_node *s = v->kids[i];
        if (!pgw_cfg_want_kind(x, s, PGW_YAML_SCALAR, "real_ip", "trusted"))
            continue;
        if (pgw_cidr_parse(s->str, s->len, &ri->trusted[ri->num_trusted]) == PGW_OK)
            ri->num_trusted++;
        else
            pgw_cfg_err(x, s->line, "real_ip", "trusted", "invalid address or range %s",
                 pgw_errs_quote(q, s->str, s->len));
    }
}

static const struct field limit_fields[] = {
    FIELD(F_SIZE, struct pgw_config_limits, request_line, 64, 1 * KIB * KIB),
    FIELD(F_SIZE, struct pgw_config_limits, header_section, 64, 1 * KIB * KIB),
    FIELD(F_COUNT, struct pgw_config_limits, header_fields, 1, 10000),
    FIELD(F_SIZE, struct pgw_config_limits, body, 0, UINT64_MAX),
    FIELD(F_COUNT, struct pgw_config_limits, max_connections, 1, 1000000),
    FIELD(F_SIZE, struct pgw_config_limits, websocket_buffer, 64 * KIB, 1ull << 40),
};

static void load_limits(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    struct pgw_config_limits *l = &x->c->limits;
    char a[32], b[32];

    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, "", "limits"))
        return;
    pgw_cfg_walk_keys(x, n, "limits", NULL, limit_fields, PGW_ARRAY_LEN(limit_fields), l);
    if (l->header_section < l->request_line) {
        const struct pgw_yaml_node *v = pgw_cfg_map_get(n, "header_section");
        v = v ? v : pgw_cfg_map_get(n, "request_line");
        v = v ? v : n;
        pgw_cfg_err(x, v->line, "limits", "header_section",
             "%s must be at least request_line (%s): the head includes the request line",
             fmt_value(a, sizeof(a), F_SIZE, l->header_section),
             fmt_value(b, sizeof(b), F_SIZE, l->request_line));
    }
}

static const struct field timeout_fields[] = {
    FIELD(F_DURATION, struct pgw_config_timeouts, header, 1, MAX_DURATION),
    FIELD(F_DURATION, struct pgw_config_timeouts, body, 1, MAX_DURATION),
    FIELD(F_DURATION, struct pgw_config_timeouts, keepalive, 1, MAX_DURATION),
    FIELD(F_DURATION, struct pgw_config_timeouts, send, 1, MAX_DURATION),
    FIELD(F_DURATION, struct pgw_config_timeouts, drain, 1, MAX_DURATION),
    FIELD(F_DURATION, struct pgw_config_timeouts, watchdog, 500, MAX_DURATION),
};

static void load_timeouts(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    if (pgw_cfg_want_kind(x, n, PGW_YAML_MAP, "", "timeouts"))
        pgw_cfg_walk_keys(x, n, "timeouts", NULL, timeout_fields, PGW_ARRAY_LEN(timeout_fields),
                  &x->c->timeouts);
}

#define UPSTREAM_FIELD(type, member, min, max)                                                     \
    FIELD(type, struct pgw_config_upstream, member, min, max)
static const struct field upstream_fields[] = {
    UPSTREAM_FIELD(F_DURATION, connect_timeout, 1, MAX_DURATION),
    UPSTREAM_FIELD(F_DURATION, read_timeout, 1, MAX_DURATION),
    UPSTREAM_FIELD(F_DURATION, send_timeout, 1, MAX_DURATION),
    UPSTREAM_FIELD(F_COUNT, retries, 0, 100),
    UPSTREAM_FIELD(F_DURATION, retry_deadline, 0, MAX_DURATION),
    UPSTREAM_FIELD(F_COUNT, keepalive, 0, 100000),
    UPSTREAM_FIELD(F_DURATION, keepalive_timeout, 1, MAX_DURATION),
    UPSTREAM_FIELD(F_COUNT, max_fails, 0, 1000000),
    UPSTREAM_FIELD(F_DURATION, fail_timeout, 1, MAX_DURATION),
};

static void load_targets(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                         struct pgw_config_upstream *u)
{
    char q[PGW_ERRS_QUOTE_MAX];

    if (!pgw_cfg_want_kind(x, v, PGW_YAML_SEQ, where, "targets"))
        return;
    if (v->n == 0) {
        pgw_cfg_err(x, v->line, where, "targets", "at least one target (host:port) is needed");
        return;
    }
    u->targets = pgw_calloc(v->n, sizeof(*u->targets));
    for (size_t i = 0; i < v->n; i++) {
        const struct pgw_yaml_node *s = v->kids[i];
        if (!pgw_cfg_want_kind(x, s, PGW_YAML_SCALAR, where, "targets"))
            continue;
        const char *err = parse_target(s->str, &u->targets[u->num_targets]);
        if (err == NULL)
            u->num_targets++;
        else
            pgw_cfg_err(x, s->line, where, "targets", "%s: %s", pgw_errs_quote(q, s->str, s->len), err);
    }
}

static const struct pgw_config_upstream upstream_defaults = {
    .connect_timeout = 2 * SEC,
    .read_timeout = 30 * SEC,
    .send_timeout = 30 * SEC,
    .retries = 1,
    .retry_deadline = 0,
    .keepalive = 64,
    .keepalive_timeout = 60 * SEC,
    .max_fails = 3,
    .fail_timeout = 10 * SEC,
};

static void load_upstream(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *k,
                          const struct pgw_yaml_node *n)
{
    static const char *const extras[] = {"targets", "tls", NULL};
    char q[PGW_ERRS_QUOTE_MAX], where[16 + MAX_NAME];
    const struct pgw_yaml_node *v;

    if (k->kind != PGW_YAML_SCALAR || k->is_bad)
        return; /* reported while reading the tree */
    struct pgw_config_upstream *u = &x->c->upstreams[x->c->num_upstreams++];
    *u = upstream_defaults;
    u->line = k->line;
    u->name = pgw_strndup(k->str, k->len);
    if (is_name(k->str, k->len)) {
        snprintf(where, sizeof(where), "upstreams.%s", u->name);
    } else {
        snprintf(where, sizeof(where), "upstreams.?");
        pgw_cfg_err(x, k->line, "", "upstreams", "invalid name %s: use 1 to %d of A-Z a-z 0-9 _ -",
             pgw_errs_quote(q, k->str, k->len), MAX_NAME);
    }
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, where, NULL))
        return;
    pgw_cfg_walk_keys(x, n, where, extras, upstream_fields, PGW_ARRAY_LEN(upstream_fields), u);
    if ((v = pgw_cfg_require(x, n, where, "targets")) != NULL)
        load_targets(x, v, where, u);
    if ((v = pgw_cfg_map_get(n, "tls")) != NULL)
        pgw_cfg_load_upstream_tls(x, v, where, u);
}

static void load_upstreams(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, "", "upstreams"))
        return;
    x->c->upstreams = pgw_calloc(n->n / 2, sizeof(*x->c->upstreams));
    for (size_t i = 0; i + 1 < n->n; i += 2)
        load_upstream(x, n->kids[i], n->kids[i + 1]);
}

/* ---- Routes ---- */

static const struct field route_fields[] = {
    FIELD(F_BOOL, struct pgw_config_route, preserve_host, 0, 1),
    FIELD(F_BOOL, struct pgw_config_route, strip_prefix, 0, 1),
    FIELD(F_BOOL, struct pgw_config_route, https_only, 0, 1),
};

static int is_tchar(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || is_digit((char)c) ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Methods are case-sensitive tokens; upper-casing here makes "get" mean what the writer meant. */
static void load_methods(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                         struct pgw_config_route *r)
{
    char q[PGW_ERRS_QUOTE_MAX];

    if (!pgw_cfg_want_kind(x, v, PGW_YAML_SEQ, where, "methods"))
        return;
    if (v->n == 0) {
        pgw_cfg_err(x, v->line, where, "methods", "must not be empty: leave it out to allow any method");
        return;
    }
    r->methods = pgw_calloc(v->n, sizeof(*r->methods));
    for (size_t i = 0; i < v->n; i++) {
        const struct pgw_yaml_node *s = v->kids[i];
        if (!pgw_cfg_want_kind(x, s, PGW_YAML_SCALAR, where, "methods"))
            continue;
        int ok = s->len > 0 && s->len <= 32;
        for (size_t j = 0; j < s->len && ok; j++)
            ok = is_tchar((unsigned char)s->str[j]);
        if (!ok) {
            pgw_cfg_err(x, s->line, where, "methods", "invalid method %s",
                 pgw_errs_quote(q, s->str, s->len));
            continue;
        }
        char *m = pgw_strndup(s->str, s->len);
        int dup = 0;
        for (size_t j = 0; j < s->len; j++)
            m[j] = (m[j] >= 'a' && m[j] <= 'z') ? (char)(m[j] - 32) : m[j];
        for (size_t j = 0; j < r->num_methods && !dup; j++)
            dup = strcmp(r->methods[j], m) == 0;
        if (dup) {
            pgw_cfg_err(x, s->line, where, "methods", "%s is listed twice", m);
            free(m);
            continue;
        }
        r->methods[r->num_methods++] = m;
    }
}

static void load_match(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n, const char *route_where,
                       struct pgw_config_route *r)
{
    static const char *const extras[] = {"host", "path", "methods", NULL};
    char where[48], q[PGW_ERRS_QUOTE_MAX];
    const struct pgw_yaml_node *v;

    snprintf(where, sizeof(where), "%s.match", route_where);
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, route_where, "match"))
        return;
    pgw_cfg_walk_keys(x, n, where, extras, NULL, 0, NULL);
    if ((v = pgw_cfg_map_get(n, "host")) != NULL && pgw_cfg_read_str(x, v, where, "host", &r->host) == PGW_OK) {
        const char *err = check_match_host(r->host, strlen(r->host));
        if (err != NULL)
            pgw_cfg_err(x, v->line, where, "host", "%s: %s", pgw_errs_quote(q, v->str, v->len), err);
    }
    if ((v = pgw_cfg_require(x, n, where, "path")) != NULL &&
        pgw_cfg_read_str(x, v, where, "path", &r->path) == PGW_OK) {
        const char *err = NULL;
        if (pgw_route_check_pattern(r->path, &err) != PGW_OK)
            pgw_cfg_err(x, v->line, where, "path", "%s: %s", pgw_errs_quote(q, v->str, v->len),
                 err ? err : "invalid path pattern");
        r->path_kind = strchr(r->path, '{') != NULL         ? PGW_PATH_TEMPLATE
                       : r->path[strlen(r->path) - 1] == '/' ? PGW_PATH_PREFIX
                                                             : PGW_PATH_EXACT;
    }
    if ((v = pgw_cfg_map_get(n, "methods")) != NULL)
        load_methods(x, v, where, r);
}

static int find_listener(const struct pgw_config *c, const char *name)
{
    for (size_t i = 0; i < c->num_listeners; i++)
        if (c->listeners[i].name != NULL && strcmp(c->listeners[i].name, name) == 0)
            return (int)i;
    return -1;
}

static int find_upstream(const struct pgw_config *c, const char *name)
{
    for (size_t i = 0; i < c->num_upstreams; i++)
        if (strcmp(c->upstreams[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* References are reported at the route's line: that is where the reader looks for the route. */
static void load_route_listeners(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                                 struct pgw_config_route *r)
{
    if (!pgw_cfg_want_kind(x, v, PGW_YAML_SEQ, where, "listeners"))
        return;
    if (v->n == 0) {
        pgw_cfg_err(x, v->line, where, "listeners", "at least one listener name is needed");
        return;
    }
    r->listeners = pgw_calloc(v->n, sizeof(*r->listeners));
    for (size_t i = 0; i < v->n; i++) {
        char *name = NULL;
        if (read_name(x, v->kids[i], where, "listeners", &name) != PGW_OK) {
            free(name);
            continue;
        }
        int dup = 0;
        for (size_t j = 0; j < r->num_listeners && !dup; j++)
            dup = strcmp(r->listeners[j], name) == 0;
        if (dup) {
            pgw_cfg_err(x, v->kids[i]->line, where, "listeners", "\"%s\" is listed twice", name);
            free(name);
            continue;
        }
        if (find_listener(x->c, name) < 0)
            pgw_cfg_err(x, r->line, where, "listeners", "route \"%s\": unknown listener \"%s\"",
                 r->name ? r->name : "?", name);
        r->listeners[r->num_listeners++] = name;
    }
}

/* What depends on the route type: a proxy route needs an upstream, a status route answers
 * itself, so proxy-only keys on it are mistakes worth reporting rather than ignoring. */
static void load_route_target(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n, const char *where,
                              struct pgw_config_route *r)
{
    static const char *const proxy_only[] = {"upstream", "preserve_host", "strip_prefix",
                                             "websocket", NULL};
    const struct pgw_yaml_node *v;

    if (r->type == PGW_ROUTE_STATUS) {
        for (int i = 0; proxy_only[i] != NULL; i++)
            if ((v = pgw_cfg_map_get(n, proxy_only[i])) != NULL)
                pgw_cfg_err(x, v->line, where, proxy_only[i], "not allowed on a status route");
        return;
    }
    if ((v = pgw_cfg_require(x, n, where, "upstream")) != NULL &&
        read_name(x, v, where, "upstream", &r->upstream) == PGW_OK) {
        r->upstream_index = find_upstream(x->c, r->upstream);
        if (r->upstream_index < 0)
            pgw_cfg_err(x, r->line, where, "upstream", "route \"%s\": unknown upstream \"%s\"",
                 r->name ? r->name : "?", r->upstream);
    }
    if ((v = pgw_cfg_map_get(n, "websocket")) != NULL)
        pgw_cfg_load_route_websocket(x, v, where, r);
    if (r->strip_prefix && r->path != NULL && r->path_kind != PGW_PATH_PREFIX) {
        v = pgw_cfg_map_get(n, "strip_prefix");
        pgw_cfg_err(x, v->line, where, "strip_prefix",
             "only prefix paths (ending with '/') have a prefix to strip");
    }
}

static void load_route(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n, size_t i)
{
    static const char *const extras[] = {"name",     "type",     "listeners", "match",
                                         "upstream", "policies", "websocket", NULL};
    static const char *const types[] = {"proxy", "status", NULL};
    char where[32];
    const struct pgw_yaml_node *v;

    snprintf(where, sizeof(where), "routes[%zu]", i);
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, where, NULL))
        return;
    struct pgw_config_route *r = &x->c->routes[x->c->num_routes++];
    r->line = n->line;
    r->upstream_index = -1;
    pgw_cfg_walk_keys(x, n, where, extras, route_fields, PGW_ARRAY_LEN(route_fields), r);
    if ((v = pgw_cfg_require(x, n, where, "name")) != NULL &&
        read_name(x, v, where, "name", &r->name) == PGW_OK) {
        for (const struct pgw_config_route *o = x->c->routes; o < r; o++)
            if (o->name != NULL && strcmp(o->name, r->name) == 0)
                pgw_cfg_err(x, v->line, where, "name", "route \"%s\" is already defined at line %u",
                     r->name, o->line);
    }
    int type = 0;
    if ((v = pgw_cfg_map_get(n, "type")) != NULL && (type = pgw_cfg_read_enum(x, v, where, "type", types)) == 1)
        r->type = PGW_ROUTE_STATUS;
    if ((v = pgw_cfg_require(x, n, where, "listeners")) != NULL)
        load_route_listeners(x, v, where, r);
    for (size_t j = 0; r->https_only && j < r->num_listeners && r->https_port == 0; j++) {
        int li = find_listener(x->c, r->listeners[j] ? r->listeners[j] : "");
        const struct pgw_config_listener *l = li >= 0 ? &x->c->listeners[li] : NULL;
        if (l != NULL && l->tls != NULL && l->sa_len > 0)
            r->https_port = ntohs(l->sa.ss_family == AF_INET6
                                      ? ((const struct sockaddr_in6 *)&l->sa)->sin6_port
                                      : ((const struct sockaddr_in *)&l->sa)->sin_port);
    }
    if ((v = pgw_cfg_require(x, n, where, "match")) != NULL)
        load_match(x, v, where, r);
    if (type >= 0) /* with a misspelt type, what the route needs is unknown: say nothing more */
        load_route_target(x, n, where, r);
    if ((v = pgw_cfg_map_get(n, "policies")) != NULL)
        pgw_cfg_load_policies(x, v, where, &r->policies);
}

static void load_routes(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_SEQ, "", "routes"))
        return;
    x->c->routes = pgw_calloc(n->n, sizeof(*x->c->routes));
    for (size_t i = 0; i < n->n; i++)
        load_route(x, n->kids[i], i);
}

/* ---- Logs and HTTP ---- */

static const struct field access_log_fields[] = {
    FIELD(F_DURATION, struct pgw_config_access_log, flush, 0, 60 * SEC),
};

static void load_access_log(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    static const char *const extras[] = {"path", "format", NULL};
    static const char *const formats[] = {"json", NULL};
    struct pgw_config_access_log *al = &x->c->access_log;
    const struct pgw_yaml_node *v;

    if (pgw_yaml_is(n, "off")) {
        al->enabled = 0;
        return;
    }
    if (n->kind != PGW_YAML_MAP) {
        char q[PGW_ERRS_QUOTE_MAX];
        if (!n->is_bad)
            pgw_cfg_err(x, n->line, "", "access_log",
                        "expected off or a map {path, format, flush}, got %s",
                 n->kind == PGW_YAML_SCALAR && !pgw_yaml_is_null(n)
                     ? pgw_errs_quote(q, n->str, n->len)
                     : pgw_yaml_describe(n));
        return;
    }
    pgw_cfg_walk_keys(x, n, "access_log", extras, access_log_fields,
                      PGW_ARRAY_LEN(access_log_fields), al);
    if ((v = pgw_cfg_map_get(n, "path")) != NULL)
        pgw_cfg_read_str(x, v, "access_log", "path", &al->path);
    if ((v = pgw_cfg_map_get(n, "format")) != NULL)
        pgw_cfg_read_enum(x, v, "access_log", "format", formats);
}

static void load_error_log(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    static const char *const extras[] = {"path", "level", NULL};
    static const char *const levels[] = {"debug", "info", "notice", "warn", "error", NULL};
    struct pgw_config_error_log *el = &x->c->error_log;
    const struct pgw_yaml_node *v;

    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, "", "error_log"))
        return;
    pgw_cfg_walk_keys(x, n, "error_log", extras, NULL, 0, NULL);
    if ((v = pgw_cfg_map_get(n, "path")) != NULL)
        pgw_cfg_read_str(x, v, "error_log", "path", &el->path);
    if ((v = pgw_cfg_map_get(n, "level")) != NULL) {
        int i = pgw_cfg_read_enum(x, v, "error_log", "level", levels);
        if (i >= 0)
            el->level = (enum pgw_log_level)i; /* the enum follows the list's order */
    }
}

static const struct field http_fields[] = {
    FIELD(F_BOOL, struct pgw_config, allow_encoded_slash, 0, 1),
};

static void load_http(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    static const char *const extras[] = {"underscores_in_headers", NULL};
    static const char *const modes[] = {"reject", "drop", NULL};
    const struct pgw_yaml_node *v;

    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, "", "http"))
        return;
    pgw_cfg_walk_keys(x, n, "http", extras, http_fields, PGW_ARRAY_LEN(http_fields), x->c);
    if ((v = pgw_cfg_map_get(n, "underscores_in_headers")) != NULL)
        x->c->underscores_in_headers =
            pgw_cfg_read_enum(x, v, "http", "underscores_in_headers", modes) == 1;
}

static const struct field resolver_fields[] = {
    FIELD(F_DURATION, struct pgw_config_resolver, timeout, 1, 60 * SEC),
};

static void load_resolver(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    static const char *const extras[] = {"nameservers", NULL};
    struct pgw_config_resolver *r = &x->c->resolver;
    char q[PGW_ERRS_QUOTE_MAX];
    const struct pgw_yaml_node *v;

    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, "", "resolver"))
        return;
    pgw_cfg_walk_keys(x, n, "resolver", extras, resolver_fields, PGW_ARRAY_LEN(resolver_fields), r);
    if ((v = pgw_cfg_map_get(n, "nameservers")) == NULL || !pgw_cfg_want_kind(x, v, PGW_YAML_SEQ, "resolver",
                                                              "nameservers"))
        return;
    r->nameservers = pgw_calloc(v->n, sizeof(*r->nameservers));
    for (size_t i = 0; i < v->n; i++) {
        const struct pgw_yaml_node *s = v->kids[i];
        if (!pgw_cfg_want_kind(x, s, PGW_YAML_SCALAR, "resolver", "nameservers"))
            continue;
        struct pgw_config_target *t = &r->nameservers[r->num_nameservers];
        const char *err = parse_target(s->str, t);
        if (err == NULL && !t->is_literal) {
            free(t->host);
            err = "a name server is an IP address with its port (\"10.0.0.2:53\")";
        }
        if (err == NULL)
            r->num_nameservers++;
        else
            pgw_cfg_err(x, s->line, "resolver", "nameservers", "%s: %s",
                 pgw_errs_quote(q, s->str, s->len), err);
    }
}

/* ---- Processes ---- */

static void load_workers(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    static const struct field f = FIELD(F_COUNT, struct pgw_config, workers, 1, PGW_WORKERS_MAX);
    if (pgw_yaml_is(n, "auto")) {
        x->c->workers = 0;
        return;
    }
    if (n->kind == PGW_YAML_SCALAR && !n->is_plain) {
        pgw_cfg_err(x, n->line, "", "workers", "expected auto or a number 1..%d", PGW_WORKERS_MAX);
        return;
    }
    read_field(x, n, "", &f, x->c);
}

static void load_control(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    static const char *const extras[] = {"socket", NULL};
    const struct pgw_yaml_node *v;
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, "", "control"))
        return;
    pgw_cfg_walk_keys(x, n, "control", extras, NULL, 0, NULL);
    if ((v = pgw_cfg_map_get(n, "socket")) != NULL) {
        char *path = NULL;
        if (pgw_cfg_read_str(x, v, "control", "socket", &path) != PGW_OK)
            return;
        if (strlen(path) >= 100) { /* sun_path holds 108 bytes */
            pgw_cfg_err(x, v->line, "control", "socket", "the path must be shorter than 100 bytes");
            free(path);
            return;
        }
        free(x->c->control_socket);
        x->c->control_socket = path;
    }
}

static const struct field store_fields[] = {
    FIELD(F_SIZE, struct pgw_config_store, durable_map, 1u << 20, 1ull << 40),
    FIELD(F_SIZE, struct pgw_config_store, fast_map, 1u << 20, 1ull << 40),
    FIELD(F_DURATION, struct pgw_config_store, sync_interval, 10, 3600 * SEC),
};

static void load_store(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    static const char *const extras[] = {"dir", NULL};
    const struct pgw_yaml_node *v;
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, "", "store"))
        return;
    pgw_cfg_walk_keys(x, n, "store", extras, store_fields, PGW_ARRAY_LEN(store_fields), &x->c->store);
    if ((v = pgw_cfg_map_get(n, "dir")) != NULL)
        pgw_cfg_read_str(x, v, "store", "dir", &x->c->store.dir);
    else
        pgw_cfg_err(x, n->line, "store", "dir", "required: the directory of the store's files");
}

/* Plans are checked by the policy engine (pgw.internal.plans), like policy settings. */
static void load_plans(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, "", "plans"))
        return;
    struct sbuf b = {0};
    yaml_to_json(&b, n);
    free(x->c->plans_json);
    x->c->plans_json = b.p;
    x->c->plans_line = n->line;
}

/* ---- Snapshot ---- */

static void set_defaults(struct pgw_config *c)
{
    c->limits = (struct pgw_config_limits){
        .request_line = 8 * KIB,
        .header_section = 32 * KIB,
        .header_fields = 100,
        .body = 10 * KIB * KIB,
        .max_connections = 10000,
        .websocket_buffer = 64 * KIB * KIB,
    };
    c->timeouts = (struct pgw_config_timeouts){
        .header = 10 * SEC, .body = 30 * SEC, .keepalive = 60 * SEC, .send = 30 * SEC,
        .drain = 30 * SEC, .watchdog = 10 * SEC};
    c->control_socket = pgw_strndup("logs/passerelle.sock", 20);
    c->policies_dir = pgw_strndup("policies", 8);
    c->lua = (struct pgw_config_lua){.memory = 64u << 20, .budget = 100, .body_max = 1u << 20,
                                     .timers = 1024};
    c->store = (struct pgw_config_store){.durable_map = 64u << 20, .fast_map = 256u << 20,
                                         .sync_interval = SEC};
    c->plans_json = pgw_strndup("{}", 2);
    c->access_log.enabled = 1;
    c->access_log.path = pgw_strndup("logs/access.log", 15);
    c->access_log.flush = 1 * SEC;
    c->error_log.path = pgw_strndup("-", 1);
    c->error_log.level = PGW_LOG_INFO;
    c->resolver.timeout = 2 * SEC;
    c->tls_ticket_rotation = 3600 * SEC;
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void config_free(struct pgw_config *c)
{
    pgw_cfg_free_tls(c);
    pgw_cfg_free_jwt(c);
    for (size_t i = 0; i < c->num_listeners; i++) {
        free(c->listeners[i].name);
        free(c->listeners[i].address);
        pgw_cfg_free_policies(&c->listeners[i].policies);
    }
    free(c->listeners);
    free(c->real_ip.trusted);
    for (size_t i = 0; i < c->num_upstreams; i++) {
        struct pgw_config_upstream *u = &c->upstreams[i];
        for (size_t j = 0; j < u->num_targets; j++)
            free(u->targets[j].host);
        free(u->targets);
        free(u->name);
    }
    free(c->upstreams);
    for (size_t i = 0; i < c->num_routes; i++) {
        struct pgw_config_route *r = &c->routes[i];
        free(r->name);
        free_strv(r->listeners, r->num_listeners);
        free(r->host);
        free(r->path);
        free_strv(r->methods, r->num_methods);
        free(r->upstream);
        pgw_cfg_free_policies(&r->policies);
        pgw_cfg_free_route_websocket(r);
    }
    free(c->routes);
    for (size_t i = 0; i < c->resolver.num_nameservers; i++)
        free(c->resolver.nameservers[i].host);
    free(c->resolver.nameservers);
    free(c->access_log.path);
    free(c->error_log.path);
    free(c->control_socket);
    free(c->policies_dir);
    free(c->store.dir);
    free(c->plans_json);
    free(c->http_ca);
    free(c->file);
    free(c);
}

/* Sections in dependency order: routes refer to listeners and upstreams. */
static void load_root(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *root)
{
    static void (*const loaders[])(struct pgw_cfg_ctx *, const struct pgw_yaml_node *) = {
        NULL, load_upstreams, load_routes, load_real_ip, load_limits,
        load_timeouts, load_access_log, load_error_log, load_http,      load_resolver,
        load_workers,  load_control,    load_policies_section, load_store, load_plans,
        pgw_cfg_load_tls_section, pgw_cfg_load_jwt_section,
    };
    pgw_cfg_walk_keys(x, root, "", top_keys, NULL, 0, NULL);
    load_listeners(x, root);
    for (size_t i = 1; i < PGW_ARRAY_LEN(loaders); i++) {
        const struct pgw_yaml_node *v = pgw_cfg_map_get(root, top_keys[i]);
        if (v != NULL)
            loaders[i](x, v);
    }
}

struct pgw_config *pgw_config_load_string(const char *name, const char *yaml, size_t len,
                                          char *errbuf, size_t errlen)
{
    struct pgw_errs e = {.file = name};
    struct pgw_cfg_ctx x = {.e = &e};
    int fatal;

    if (errbuf != NULL && errlen > 0)
        errbuf[0] = '\0';
    struct pgw_yaml_node *root = pgw_yaml_read(&e, yaml, len, &fatal);
    if (!fatal && (root == NULL || pgw_yaml_is_null(root)))
        pgw_errs_add(&e, 1, "the configuration is empty");
    else if (root != NULL && !root->is_bad && root->kind != PGW_YAML_MAP)
        pgw_errs_add(&e, root->line, "the top level must be a map of sections, got %s",
                     pgw_yaml_describe(root));
    x.c = pgw_calloc(1, sizeof(*x.c));
    x.c->file = pgw_strndup(name, strlen(name));
    set_defaults(x.c);
    if (root != NULL && root->kind == PGW_YAML_MAP)
        load_root(&x, root);
    pgw_yaml_free(root);
    if (pgw_errs_any(&e)) {
        pgw_errs_write(&e, errbuf, errlen);
        pgw_errs_clear(&e);
        config_free(x.c);
        return NULL;
    }
    pgw_errs_clear(&e);
    x.c->refs = 1;
    return x.c;
}

static void io_error(const char *path, const char *what, char *errbuf, size_t errlen)
{
    if (errbuf != NULL && errlen > 0)
        snprintf(errbuf, errlen, "%s: cannot read: %s\n", path, what);
}

/* Reads all of <f> into a heap buffer, up to one byte past MAX_FILE_SIZE (which tells "too large"
 * from "exactly the limit"). Returns the buffer, or NULL with errno set. */
static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 64 * 1024, n = 0;
    char *buf = pgw_malloc(cap);

    for (;;) {
        n += fread(buf + n, 1, cap - n, f);
        if (ferror(f)) {
            int saved = errno;
            free(buf);
            errno = saved;
            return NULL;
        }
        if (n < cap || n > MAX_FILE_SIZE)
            break;
        cap = PGW_MIN(cap * 2, (size_t)MAX_FILE_SIZE + 1);
        buf = pgw_realloc(buf, cap);
    }
    *len = n;
    return buf;
}

char *pgw_config_read_file(const char *path, size_t *len, char *errbuf, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        io_error(path, strerror(errno), errbuf, errlen);
        return NULL; /* no line to name: "FILE: cannot read: reason" */
    }
    char *buf = read_all(f, len);
    if (buf == NULL) {
        io_error(path, strerror(errno), errbuf, errlen);
    } else if (*len > MAX_FILE_SIZE) {
        io_error(path, "larger than 16 MiB", errbuf, errlen);
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

struct pgw_config *pgw_config_load(const char *path, char *errbuf, size_t errlen)
{
    size_t len = 0;
    char *buf = pgw_config_read_file(path, &len, errbuf, errlen);
    struct pgw_config *c = buf ? pgw_config_load_string(path, buf, len, errbuf, errlen) : NULL;
    free(buf);
    return c;
}

int pgw_config_targets_equal(const struct pgw_config_target *a, size_t na,
                             const struct pgw_config_target *b, size_t nb)
{
    if (na != nb)
        return 0;
    for (size_t i = 0; i < na; i++)
        if (a[i].port != b[i].port || strcmp(a[i].host, b[i].host) != 0)
            return 0;
    return 1;
}

struct pgw_config *pgw_config_ref(struct pgw_config *c)
{
    pgw_assert(c->refs > 0);
    c->refs++;
    return c;
}

void pgw_config_unref(struct pgw_config *c)
{
    if (c == NULL)
        return;
    pgw_assert(c->refs > 0);
    if (--c->refs == 0)
        config_free(c);
}
