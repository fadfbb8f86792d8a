/* route_test.c: path normalisation, pattern validation and route tables (precedence, hosts,
 * methods, params, listeners). Configs are built by hand so that this test does not need config.c.
 * Inputs are copied into heap buffers of their exact size, and normalisation writes into a buffer
 * of the input's size, so ASan catches any read past the input or write past the promised bound.
 */
#include "../../gateway/route.c"
#include "../support/test.h"

#include <stdint.h>
#include <stdlib.h>

/* ---- Normalisation helpers ---- */

/* Normalises <in,len> from and into exact-size heap buffers; the result is copied to <res>. */
static int norm(const char *in, size_t len, int allow, char *res, size_t *res_len, const char **err)
{
    char *ibuf = malloc(len ? len : 1);
    char *obuf = malloc(len ? len : 1); /* tighter than the contract's len + 1: never longer */
    size_t olen = 0;
    memcpy(ibuf, in, len);
    *err = NULL;
    int rc = pgw_route_normalize_path(ibuf, len, obuf, &olen, allow, err);
    *res_len = 0;
    if (rc == PGW_OK) {
        memcpy(res, obuf, olen);
        *res_len = olen;
    }
    free(ibuf);
    free(obuf);
    return rc;
}

#define NORM_AS(allow, in, lit)                                                                    \
    do {                                                                                           \
        char r_[512];                                                                              \
        size_t n_;                                                                                 \
        const char *e_;                                                                            \
        CHECK_INT(norm((in), sizeof(in) - 1, (allow), r_, &n_, &e_), PGW_OK);                      \
        CHECK_MEM(r_, n_, lit);                                                                    \
    } while (0)

#define NORM_BAD_AS(allow, in)                                                                     \
    do {                                                                                           \
        char r_[512];                                                                              \
        size_t n_;                                                                                 \
        const char *e_;                                                                            \
        CHECK_INT(norm((in), sizeof(in) - 1, (allow), r_, &n_, &e_), PGW_ERR);                     \
        CHECK(e_ != NULL && e_[0] != '\0');                                                        \
    } while (0)

#define NORM(in, lit) NORM_AS(0, in, lit)
#define NORM_BAD(in) NORM_BAD_AS(0, in)
/* rejected whatever allow_encoded_slash says */
#define NORM_BAD_ALWAYS(in)                                                                        \
    do {                                                                                           \
        NORM_BAD_AS(0, in);                                                                        \
        NORM_BAD_AS(1, in);                                                                        \
    } while (0)

/* ---- Normalisation ---- */

static void test_norm_plain(void)
{
    NORM("/", "/");
    NORM("/admin", "/admin");
    NORM("/a/b/c", "/a/b/c");
    NORM("/a-b_c~d.e", "/a-b_c~d.e");
    NORM("/users/42/orders", "/users/42/orders");
}

static void test_norm_admin_equivalents(void)
{
    NORM("/admin", "/admin");
    NORM("//admin", "/admin");
    NORM("/./admin", "/admin");
    NORM("/x/../admin", "/admin");
    NORM("/%61dmin", "/admin");
    NORM("/%61%64%6D%69%6e", "/admin");
    NORM("/%2e/admin", "/admin");
    NORM("/%2e%2e/admin", "/admin");
    NORM("///.//x/./..//admin", "/admin");
    NORM("/x/%2E%2E/admin", "/admin");
}

static void test_norm_trailing_slash(void)
{
    NORM("/a/", "/a/");
    NORM("/a/.", "/a/");
    NORM("/a/..", "/");
    NORM("/a/./", "/a/");
    NORM("/a/b/..", "/a/");
    NORM("/a/b/../", "/a/");
    NORM("/a//", "/a/");
    NORM("/a/%2e", "/a/");
    NORM("/a/b/%2e%2e", "/a/");
}

static void test_norm_merge_slashes(void)
{
    NORM("//", "/");
    NORM("///", "/");
    NORM("///a///b//", "/a/b/");
    NORM("/a//b", "/a/b");
}

static void test_norm_clamp_at_root(void)
{
    NORM("/..", "/");
    NORM("/../", "/");
    NORM("/.", "/");
    NORM("/../../a", "/a");
    NORM("/a/b/../../../c", "/c");
    NORM("/..//../a/", "/a/");
    NORM("/%2e%2e/%2E%2E/etc/passwd", "/etc/passwd");
    NORM("/a/../../../..", "/");
}

static void test_norm_dot_lookalikes(void)
{
    NORM("/.../a", "/.../a");
    NORM("/..a/b", "/..a/b");
    NORM("/a../b", "/a../b");
    NORM("/.a/b", "/.a/b");
    NORM("/a./b", "/a./b");
    NORM("/a/.../..", "/a/");
    NORM("/%2e%2e%2e", "/...");
    NORM("/.%2e.", "/...");
}

static void test_norm_unreserved_decoded(void)
{
    NORM("/%41%5a%61%7a%30%39%2d%2e%5f%7e", "/AZaz09-._~");
    NORM("/%41%5A", "/AZ");
    NORM("/%7Euser", "/~user");
    NORM("/a%2Db", "/a-b");
}

static void test_norm_reserved_kept_upper(void)
{
    NORM("/%3a%40%21", "/%3A%40%21");
    NORM("/%3A", "/%3A");
    NORM("/caf%c3%a9", "/caf%C3%A9");
    NORM("/%20", "/%20");
    NORM("/%25", "/%25");
    NORM("/%2541", "/%2541"); /* decoded once only: never "/A" */
    NORM("/%252e%252e/admin", "/%252e%252e/admin");
    NORM("/%0a", "/%0A");
    NORM("/%7f", "/%7F");
    NORM("/%3f%23", "/%3F%23");
    NORM("/%ff", "/%FF");
    NORM("/%3B", "/%3B");
}

static void test_norm_encoded_slash(void)
{
    NORM_BAD("/a%2fb");
    NORM_BAD("/a%2Fb");
    NORM_BAD("/a%5cb");
    NORM_BAD("/a%5Cb");
    NORM_BAD("/%2F");
    NORM_BAD("/%2e%2e%2fadmin");
    NORM_BAD("/..%5c..%5cadmin");
    NORM_AS(1, "/a%2fb", "/a%2Fb");
    NORM_AS(1, "/a%5cb", "/a%5Cb");
    NORM_AS(1, "/files/a%2Fb/../c", "/files/c");
    /* allowed, an encoded slash is data: no segment boundary, so no dot-segment */
    NORM_AS(1, "/%2e%2e%2fadmin", "/..%2Fadmin");
}

static void test_norm_nul_and_malformed(void)
{
    NORM_BAD_ALWAYS("/%00");
    NORM_BAD_ALWAYS("/a%00b");
    NORM_BAD_ALWAYS("/%4");
    NORM_BAD_ALWAYS("/%");
    NORM_BAD_ALWAYS("/a%");
    NORM_BAD_ALWAYS("/%zz");
    NORM_BAD_ALWAYS("/%4g");
    NORM_BAD_ALWAYS("/%g4");
    NORM_BAD_ALWAYS("/%%41");
    NORM_BAD_ALWAYS("/% 41");
    NORM_BAD_ALWAYS("/%-1");
    NORM_BAD_ALWAYS("/%+1");
    NORM_BAD_ALWAYS("/ok/%2");
}

static void test_norm_raw_bytes(void)
{
    NORM_BAD_ALWAYS("/a b");
    NORM_BAD_ALWAYS("/a\tb");
    NORM_BAD_ALWAYS("/a\r\nb");
    NORM_BAD_ALWAYS("/a\nGET / HTTP/1.1");
    NORM_BAD_ALWAYS("/a\x7f");
    NORM_BAD_ALWAYS("/caf\xc3\xa9");
    NORM_BAD_ALWAYS("/\x80");
    NORM_BAD_ALWAYS("/\xff");
    NORM_BAD_ALWAYS("/a\0b");
    NORM_BAD_ALWAYS("/\x01");
    NORM_BAD_ALWAYS("/a#frag");
    NORM_BAD_ALWAYS("/a?q=1"); /* the query is never passed in */
    NORM_BAD_ALWAYS("/?");
    /* what the parser lets through and RFC 3986 allows */
    NORM("/a:b@c!$&'()*+,;=", "/a:b@c!$&'()*+,;=");
    /* what the parser lets through and RFC 3986 does not: kept as is, as nginx does */
    NORM("/{x}|^`\"<>[]", "/{x}|^`\"<>[]");
}

static void test_norm_raw_backslash(void)
{
    NORM_BAD("/a\\b");
    NORM_BAD("/public\\..\\admin");
    NORM_BAD("/\\");
    NORM_AS(1, "/a\\b", "/a\\b");
    NORM_AS(1, "/public\\..\\admin", "/public\\..\\admin"); /* literal, never a separator */
}

static void test_norm_dot_with_params(void)
{
    NORM_BAD_ALWAYS("/..;/admin");
    NORM_BAD_ALWAYS("/public/..;/admin");
    NORM_BAD_ALWAYS("/..;");
    NORM_BAD_ALWAYS("/.;x/a");
    NORM_BAD_ALWAYS("/.;");
    NORM_BAD_ALWAYS("/%2e%2e;/admin");
    NORM_BAD_ALWAYS("/.%2e;jsessionid=1/admin");
    NORM("/a;b", "/a;b");
    NORM("/..a;b", "/..a;b");
    NORM("/...;x", "/...;x");
    NORM("/;/a", "/;/a");
    NORM("/..%3B/admin", "/..%3B/admin"); /* encoded: not a parameter separator */
}

static void test_norm_not_absolute(void)
{
    NORM_BAD_ALWAYS("");
    NORM_BAD_ALWAYS("a/b");
    NORM_BAD_ALWAYS("*");
    NORM_BAD_ALWAYS("%2Fa");
    NORM_BAD_ALWAYS("http://example.com/");
    NORM_BAD_ALWAYS("../a");
}

static void test_norm_error_messages(void)
{
    char r[64];
    size_t n;
    const char *e1, *e2, *e3;
    norm("/%2F", 4, 0, r, &n, &e1);
    norm("/%4", 3, 0, r, &n, &e2);
    norm("/%00", 4, 0, r, &n, &e3);
    CHECK(e1 != e2 && e2 != e3 && e1 != e3);
    CHECK(strstr(e1, "slash") != NULL);
    CHECK(strstr(e2, "malformed") != NULL);
    CHECK(strstr(e3, "%00") != NULL);
    /* a NULL err is allowed */
    char o[8];
    CHECK_INT(pgw_route_normalize_path("/%4", 3, o, &n, 0, NULL), PGW_ERR);
    /* input not NUL-terminated: only <in_len> bytes count */
    CHECK_INT(pgw_route_normalize_path("/ab?x=1", 3, o, &n, 0, NULL), PGW_OK);
    CHECK_MEM(o, n, "/ab");
}

/* Properties over random paths from an alphabet that makes dot-segments, escapes and runs of
 * slashes likely: success means a normal path that normalises to itself, no longer than the
 * input. */
static void test_norm_properties(void)
{
    static const char *const atoms[] = {"/", "/", "/", ".", "..", "a", "b", "%2e", "%2E", "%2f",
                                        "%5c", "%41", "%c3", "%", "%0", ";", "\\", "~", "%3b"};
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    int ok_count = 0, bad_count = 0;
    for (int iter = 0; iter < 20000; iter++) {
        char in[64];
        size_t len = 1;
        in[0] = '/';
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        size_t natoms = (size_t)(seed >> 60);
        for (size_t k = 0; k < natoms; k++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            const char *a = atoms[(seed >> 33) % PGW_ARRAY_LEN(atoms)];
            size_t alen = strlen(a);
            memcpy(in + len, a, alen);
            len += alen;
        }
        int allow = (int)((seed >> 20) & 1);
        char out[64], out2[64];
        size_t olen, olen2;
        const char *err;
        if (norm(in, len, allow, out, &olen, &err) != PGW_OK) {
            bad_count++;
            CHECK(err != NULL);
            continue;
        }
        ok_count++;
        CHECK(olen >= 1 && olen <= len && out[0] == '/');
        int clean = 1;
        for (size_t i = 0; i + 1 < olen; i++)
            clean &= !(out[i] == '/' && out[i + 1] == '/');
        for (size_t i = 0; i < olen; i++) {
            if (out[i] != '/')
                continue;
            size_t j = i + 1;
            while (j < olen && out[j] != '/')
                j++;
            size_t n = j - i - 1;
            clean &= !(n == 1 && out[i + 1] == '.');
            clean &= !(n == 2 && out[i + 1] == '.' && out[i + 2] == '.');
        }
        if (!clean)
            fprintf(stderr, "not normal: \"%.*s\" -> \"%.*s\"\n", (int)len, in, (int)olen, out);
        CHECK(clean);
        CHECK_INT(norm(out, olen, allow, out2, &olen2, &err), PGW_OK);
        CHECK(olen2 == olen && memcmp(out, out2, olen) == 0);
    }
    CHECK(ok_count > 1000 && bad_count > 1000); /* the alphabet exercises both outcomes */
}

/* ---- Patterns ---- */

#define PATTERN_OK(p)                                                                              \
    do {                                                                                           \
        const char *e_ = NULL;                                                                     \
        CHECK_INT(pgw_route_check_pattern((p), &e_), PGW_OK);                                      \
    } while (0)

#define PATTERN_BAD(p, needle)                                                                     \
    do {                                                                                           \
        const char *e_ = NULL;                                                                     \
        CHECK_INT(pgw_route_check_pattern((p), &e_), PGW_ERR);                                     \
        CHECK(e_ != NULL && strstr(e_, (needle)) != NULL);                                         \
    } while (0)

static void test_pattern_valid(void)
{
    PATTERN_OK("/");
    PATTERN_OK("/a");
    PATTERN_OK("/orders/");
    PATTERN_OK("/users/{id}");
    PATTERN_OK("/users/{id}/");
    PATTERN_OK("/users/{id}/orders/{order_id}");
    PATTERN_OK("/{a}/{b}");
    PATTERN_OK("/{_}");
    PATTERN_OK("/u/{_x9}/{Zz}");
    PATTERN_OK("/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}"); /* PGW_ROUTE_MAX_PARAMS */
    PATTERN_OK("/caf%C3%A9");
    PATTERN_OK("/a%2Fb"); /* matchable when the listener allows encoded slashes */
    PATTERN_OK("/a;b");
}

static void test_pattern_invalid(void)
{
    PATTERN_BAD(NULL, "'/'");
    PATTERN_BAD("", "'/'");
    PATTERN_BAD("a", "'/'");
    PATTERN_BAD("users/{id}", "'/'");
    PATTERN_BAD("{id}", "'/'");
    PATTERN_BAD("/users/{id", "unbalanced '{'");
    PATTERN_BAD("/users/{", "unbalanced '{'");
    PATTERN_BAD("/users/id}", "unbalanced '}'");
    PATTERN_BAD("/users/}", "unbalanced '}'");
    PATTERN_BAD("/users/{id}}", "unbalanced '}'");
    PATTERN_BAD("/users/{}", "names");
    PATTERN_BAD("/users/{1a}", "names");
    PATTERN_BAD("/users/{a-b}", "names");
    PATTERN_BAD("/users/{a.b}", "names");
    PATTERN_BAD("/users/{a b}", "names");
    PATTERN_BAD("/users/{{id}}", "names");
    PATTERN_BAD("/users/{a/b}", "names");
    PATTERN_BAD("/users/x{id}", "whole path segment");
    PATTERN_BAD("/users/{id}x", "whole path segment");
    PATTERN_BAD("/users/{id}{x}", "whole path segment");
    PATTERN_BAD("/{a}/{a}", "duplicate");
    PATTERN_BAD("/{id}/x/{id}", "duplicate");
    PATTERN_BAD("/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}", "too many");
    PATTERN_BAD("/a/./b", "normalised");
    PATTERN_BAD("/a/../b", "normalised");
    PATTERN_BAD("//a", "normalised");
    PATTERN_BAD("/a//", "normalised");
    PATTERN_BAD("/a/.", "normalised");
    PATTERN_BAD("/%7euser", "normalised");
    PATTERN_BAD("/%61dmin", "normalised");
    PATTERN_BAD("/caf%c3%a9", "normalised");
    PATTERN_BAD("/a b", "normalised");
    PATTERN_BAD("/a?b", "normalised");
    PATTERN_BAD("/a#b", "normalised");
    PATTERN_BAD("/%4", "normalised");
    PATTERN_BAD("/%00", "normalised");
    PATTERN_BAD("/users/{id}/..", "normalised");
}

/* ---- Tables: building configs by hand ---- */

static char *L_PUBLIC[] = {"public"};
static char *L_INTERNAL[] = {"internal"};
static char *L_BOTH[] = {"internal", "public"};
/* NULL-terminated here only to count them; route.c reads num_methods */
static char *M_GET[] = {"GET", NULL};
static char *M_GET_HEAD[] = {"GET", "HEAD", NULL};
static char *M_POST[] = {"POST", NULL};

/* path_kind as config.c computes it */
static enum pgw_path_kind kind_of(const char *path)
{
    if (strchr(path, '{') != NULL)
        return PGW_PATH_TEMPLATE;
    size_t n = strlen(path);
    return n > 0 && path[n - 1] == '/' ? PGW_PATH_PREFIX : PGW_PATH_EXACT;
}

#define ROUTE_L(nm, p, h, ms, ls)                                                                  \
    {                                                                                              \
        .name = (nm), .listeners = (ls), .num_listeners = PGW_ARRAY_LEN(ls), .host = (h),          \
        .path = (p), .methods = (ms), .upstream = "up", .upstream_index = 0                        \
    }
#define ROUTE(nm, p, h, ms) ROUTE_L(nm, p, h, ms, L_PUBLIC)

static struct pgw_config cfg_of(struct pgw_config_route *routes, size_t n)
{
    struct pgw_config c;
    memset(&c, 0, sizeof(c));
    c.refs = 1;
    c.routes = routes;
    c.num_routes = n;
    for (size_t i = 0; i < n; i++) {
        routes[i].path_kind = kind_of(routes[i].path);
        routes[i].num_methods = 0;
        while (routes[i].methods != NULL && routes[i].methods[routes[i].num_methods] != NULL)
            routes[i].num_methods++;
    }
    return c;
}

/* Matches with host, method and path in exact-size heap buffers (no NUL after them), so ASan
 * sees any read past their lengths. The path copy lives until the next call, for params. */
static char *last_path;

static int match(const struct pgw_route_table *t, const char *host, const char *method,
                 const char *path, struct pgw_route_match *m)
{
    size_t hl = host ? strlen(host) : 0, ml = strlen(method), pl = strlen(path);
    char *h = host ? malloc(hl ? hl : 1) : NULL;
    char *me = malloc(ml ? ml : 1);
    free(last_path);
    last_path = malloc(pl ? pl : 1);
    if (h)
        memcpy(h, host, hl);
    memcpy(me, method, ml);
    memcpy(last_path, path, pl);
    memset(m, 0x5a, sizeof(*m)); /* garbage in: match must set every field it reports */
    int rc = pgw_route_match(t, h, hl, me, ml, last_path, pl, m);
    free(h);
    free(me);
    return rc;
}

/* the route name matched, "404" or "405" */
static const char *who(const struct pgw_route_table *t, const char *host, const char *method,
                       const char *path)
{
    struct pgw_route_match m;
    int rc = match(t, host, method, path, &m);
    if (rc == PGW_OK) {
        if (m.route == NULL || m.method_mismatch != 0)
            return "BAD";
        return m.route->name;
    }
    if (rc != PGW_DECLINED || m.route != NULL || m.index != -1 || m.num_params != 0)
        return "BAD";
    return m.method_mismatch ? "405" : "404";
}

#define WHO(t, host, method, path, expect)                                                         \
    do {                                                                                           \
        const char *w_ = who((t), (host), (method), (path));                                       \
        if (strcmp(w_, (expect)) != 0) {                                                           \
            fprintf(stderr, "FAIL %s: %s:%d: %s %s (Host: %s) -> %s, expected %s\n", test_current, \
                    __FILE__, __LINE__, (method), (path), (host) ? (host) : "-", w_, (expect));    \
            test_current_failed = 1;                                                               \
        }                                                                                          \
    } while (0)

static struct pgw_route_table *table(struct pgw_config *c, const char *listener)
{
    const char *err = NULL;
    struct pgw_route_table *t = pgw_route_table_new(c, listener, &err);
    CHECK(t != NULL);
    if (t == NULL) {
        fprintf(stderr, "table: %s\n", err);
        abort();
    }
    return t;
}

/* ---- Tables ---- */

static void test_kinds_precedence(void)
{
    /* declared least specific first: the table sorts */
    struct pgw_config_route r[] = {
        ROUTE("prefix", "/users/", NULL, NULL),
        ROUTE("template", "/users/{id}", NULL, NULL),
        ROUTE("exact", "/users/me", NULL, NULL),
    };
    struct pgw_config c = cfg_of(r, PGW_ARRAY_LEN(r));
    struct pgw_route_table *t = table(&c, "public");
    struct pgw_route_match m;

    CHECK_INT(match(t, NULL, "GET", "/users/me", &m), PGW_OK);
    CHECK(m.route == &r[2]);
    CHECK_INT(m.index, 2);
    CHECK_INT(m.num_params, 0);
    CHECK_INT(m.prefix_len, 0);
    CHECK_INT(m.method_mismatch, 0);

    CHECK_INT(match(t, NULL, "GET", "/users/42", &m), PGW_OK);
    CHECK_INT(m.index, 1);
    CHECK_INT(m.num_params, 1);
    CHECK_MEM(m.params[0].name, m.params[0].name_len, "id");
    CHECK_MEM(m.params[0].value, m.params[0].value_len, "42");
    CHECK(m.params[0].value == last_path + 7); /* a slice of the path, not a copy */

    CHECK_INT(match(t, NULL, "GET", "/users/42/x", &m), PGW_OK);
    CHECK_INT(m.index, 0);
    CHECK_INT(m.prefix_len, 6);
    CHECK_INT(m.num_params, 0);

    WHO(t, NULL, "GET", "/users", "prefix");
    WHO(t, NULL, "GET", "/users/", "prefix");
    WHO(t, NULL, "GET", "/users/me/", "prefix");
    WHO(t, NULL, "GET", "/users/42/", "prefix");
    WHO(t, NULL, "GET", "/usersx", "404");
    WHO(t, NULL, "GET", "/user", "404");
    WHO(t, NULL, "GET", "/", "404");
    pgw_route_table_free(t);
}

static void test_prefix_longest_first(void)
{
    struct pgw_config_route r[] = {
        ROUTE("root", "/", NULL, NULL),
        ROUTE("api", "/api/", NULL, NULL),
        ROUTE("v1", "/api/v1/", NULL, NULL),
    };
    struct pgw_config c = cfg_of(r, PGW_ARRAY_LEN(r));
    struct pgw_route_table *t = table(&c, "public");
    struct pgw_route_match m;

    CHECK_INT(match(t, NULL, "GET", "/api/v1/x", &m), PGW_OK);
    CHECK_INT(m.index, 2);
    CHECK_INT(m.prefix_len, 7);
    CHECK_INT(match(t, NULL, "GET", "/api/v1", &m), PGW_OK);
    CHECK_INT(m.index, 2);
    CHECK_INT(m.prefix_len, 7);
    CHECK_INT(match(t, NULL, "GET", "/api/v2", &m), PGW_OK);
    CHECK_INT(m.index, 1);
    CHECK_INT(m.prefix_len, 4);
    CHECK_INT(match(t, NULL, "GET", "/apix", &m), PGW_OK);
    CHECK_INT(m.index, 0);
    CHECK_INT(m.prefix_len, 0);
    CHECK_INT(match(t, NULL, "GET", "/", &m), PGW_OK);
    CHECK_INT(m.index, 0);
    WHO(t, NULL, "DELETE", "/anything/at/all", "root");
    WHO(t, NULL, "GET", "/api/v1x", "api");
    pgw_route_table_free(t);
}

static void test_template_longest_first(void)
{
    struct pgw_config_route r[] = {
        ROUTE("two", "/a/{x}/{y}", NULL, NULL),
        ROUTE("one", "/a/{x}/c", NULL, NULL),
        ROUTE("deep", "/{p}/{q}/{r}/{s}", NULL, NULL),
        ROUTE("slash", "/a/{x}/", NULL, NULL),
    };
    struct pgw_config c = cfg_of(r, PGW_ARRAY_LEN(r));
    struct pgw_route_table *t = table(&c, "public");
    struct pgw_route_match m;

    CHECK_INT(match(t, NULL, "GET", "/a/b/c", &m), PGW_OK);
    CHECK_INT(m.index, 1);
    CHECK_INT(m.num_params, 1);
    CHECK_MEM(m.params[0].value, m.params[0].value_len, "b");
    CHECK_INT(match(t, NULL, "GET", "/a/b/d", &m), PGW_OK);
    CHECK_INT(m.index, 0);
    CHECK_INT(m.num_params, 2);
    CHECK_MEM(m.params[0].name, m.params[0].name_len, "x");
    CHECK_MEM(m.params[0].value, m.params[0].value_len, "b");
    CHECK_MEM(m.params[1].name, m.params[1].name_len, "y");
    CHECK_MEM(m.params[1].value, m.params[1].value_len, "d");
    CHECK_INT(match(t, NULL, "GET", "/w/x/y/z", &m), PGW_OK);
    CHECK_INT(m.index, 2);
    CHECK_INT(m.num_params, 4);
    CHECK_MEM(m.params[3].name, m.params[3].name_len, "s");
    CHECK_MEM(m.params[3].value, m.params[3].value_len, "z");
    WHO(t, NULL, "GET", "/a/b/", "slash");
    WHO(t, NULL, "GET", "/a/b", "404");    /* one segment short */
    WHO(t, NULL, "GET", "/a/b/c/", "404"); /* "/a/{x}/{y}" has no trailing slash */
    WHO(t, NULL, "GET", "/a//c", "404");   /* a parameter is never empty */
    WHO(t, NULL, "GET", "/a/b/c/d/e", "404");
    WHO(t, NULL, "GET", "/b/b/c", "404");
    pgw_route_table_free(t);
}

static void test_params_edges(void)
{
    struct pgw_config_route r[] = {
        ROUTE("orders", "/users/{id}/orders/{order_id}", NULL, NULL),
        ROUTE("root", "/{only}", NULL, NULL),
        ROUTE("eight", "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}", NULL, NULL),
    };
    struct pgw_config c = cfg_of(r, PGW_ARRAY_LEN(r));
    struct pgw_route_table *t = table(&c, "public");
    struct pgw_route_match m;

    CHECK_INT(match(t, NULL, "GET", "/users/42/orders/7", &m), PGW_OK);
    CHECK_INT(m.index, 0);
    CHECK_INT(m.num_params, 2);
    CHECK_MEM(m.params[0].name, m.params[0].name_len, "id");
    CHECK_MEM(m.params[0].value, m.params[0].value_len, "42");
    CHECK_MEM(m.params[1].name, m.params[1].name_len, "order_id");
    CHECK_MEM(m.params[1].value, m.params[1].value_len, "7");
    CHECK(m.params[1].value == last_path + 17);
    /* names point into the config's pattern */
    CHECK(m.params[1].name >= r[0].path && m.params[1].name < r[0].path + strlen(r[0].path));
    /* values keep escapes as normalised */
    CHECK_INT(match(t, NULL, "GET", "/users/a%20b/orders/%C3%A9", &m), PGW_OK);
    CHECK_MEM(m.params[0].value, m.params[0].value_len, "a%20b");
    CHECK_MEM(m.params[1].value, m.params[1].value_len, "%C3%A9");
    CHECK_INT(match(t, NULL, "GET", "/x", &m), PGW_OK);
    CHECK_INT(m.index, 1);
    CHECK_MEM(m.params[0].value, m.params[0].value_len, "x");
    WHO(t, NULL, "GET", "/", "404"); /* "/{only}" needs a non-empty segment */
    WHO(t, NULL, "GET", "/users/42/orders/", "404");
    CHECK_INT(match(t, NULL, "GET", "/1/2/3/4/5/6/7/8", &m), PGW_OK);
    CHECK_INT(m.num_params, 8);
    CHECK_MEM(m.params[7].name, m.params[7].name_len, "h");
    CHECK_MEM(m.params[7].value, m.params[7].value_len, "8");
    pgw_route_table_free(t);
}

static void test_host_beats_no_host(void)
{
    struct pgw_config_route r[] = {
        ROUTE("any", "/p", NULL, NULL),
        ROUTE("wild", "/p", "*.example.com", NULL),
        ROUTE("exact", "/p", "api.example.com", NULL),
        ROUTE("deeper", "/p", "*.eu.example.com", NULL),
    };
    struct pgw_config c = cfg_of(r, PGW_ARRAY_LEN(r));
    struct pgw_route_table *t = table(&c, "public");

    WHO(t, "api.example.com", "GET", "/p", "exact");
    WHO(t, "API.Example.COM:8443", "GET", "/p", "exact");
    WHO(t, "api.example.com.", "GET", "/p", "exact");
    WHO(t, "www.example.com", "GET", "/p", "wild");
    WHO(t, "a.eu.example.com", "GET", "/p", "deeper");
    WHO(t, "eu.example.com", "GET", "/p", "wild");
    WHO(t, "other.org", "GET", "/p", "any");
    WHO(t, "example.com", "GET", "/p", "any");
    WHO(t, NULL, "GET", "/p", "any");
    WHO(t, "", "GET", "/p", "any");
    pgw_route_table_free(t);
}

static void test_longer_path_beats_host(void)
{
    struct pgw_config_route r[] = {
        ROUTE("host_api", "/api/", "example.com", NULL),
        ROUTE("v1", "/api/v1/", NULL, NULL),
    };
    struct pgw_config c = cfg_of(r, PGW_ARRAY_LEN(r));
    struct pgw_route_table *t = table(&c, "public");
    WHO(t, "example.com", "GET", "/api/v1/x", "v1");
    WHO(t, "example.com", "GET", "/api/v2", "host_api");
    WHO(t, "other.com", "GET", "/api/v2", "404");
    pgw_route_table_free(t);
}

static void test_wildcard_hosts(void)
{
    struct pgw_config_route r[] = {
        ROUTE("wild", "/", "*.example.com", NULL),
    };
    struct pgw_config c = cfg_of(r, PGW_ARRAY_LEN(r));
    struct pgw_route_table *t = table(&c, "public");

    WHO(t, "a.example.com", "GET", "/", "wild");
    WHO(t, "a.b.c.example.com", "GET", "/x", "wild");
    WHO(t, "A.EXAMPLE.COM", "GET", "/", "wild");
    WHO(t, "a.example.com:8080", "GET", "/", "wild");
    WHO(t, "a.example.com.", "GET", "/", "wild");
    WHO(t, "example.com", "GET", "/", "404");
    WHO(t, ".example.com", "GET", "/", "404");
    WHO(t, "..example.com", "GET", "/", "404"); /* no label before the suffix */
    WHO(t, "aexample.com", "GET", "/", "404");
    WHO(t, "xexample.com", "GET", "/", "404");
    WHO(t, "example.com.evil.org", "GET", "/", "404");
    WHO(t, "a.example.co", "GET", "/", "404");
    WHO(t, "a.example.com.evil", "GET", "/", "404");
    WHO(t, NULL, "GET", "/", "404");
    pgw_route_table_free(t);
}

static void test_host_ports_and_ipv6(void)
{
    struct pgw_config_route r[] = {
        ROUTE("name", "/", "example.com", NULL),
        ROUTE("v6", "/", "::1", NULL),
        ROUTE("v6b", "/", "[2001:db8::1]", NULL),
        ROUTE("v4", "/", "127.0.0.1", NULL),
    };
    struct pgw_config c = cfg_of(r, PGW_ARRAY_LEN(r));
    struct pgw_route_table *t = table(&c, "public");

    WHO(t, "example.com", "GET", "/", "name");
    WHO(t, "example.com:80", "GET", "/", "name");
    WHO(t, "Example.Com:65535", "GET", "/", "name");
    WHO(t, "example.com:", "GET", "/", "name");
    WHO(t, "example.co", "GET", "/", "404");
    WHO(t, "example.comm", "GET", "/", "404");
    WHO(t, "[::1]:8080", "GET", "/", "v6");
    WHO(t, "[::1]", "GET", "/", "v6");
    WHO(t, "[2001:DB8::1]:443", "GET", "/", "v6b");
    WHO(t, "[2001:db8::1]", "GET", "/", "v6b");
    WHO(t, "[::2]:8080", "GET", "/", "404");
    WHO(t, "127.0.0.1:8080", "GET", "/", "v4");
    WHO(t, "127.0.0.1", "GET", "/", "v4");
    WHO(t, "127.0.0.10", "GET", "/", "404");
    pgw_route_table_free(t);
}

static void test_methods_beat_none(void)
{
    struct pgw_config_route r[] = {
        ROUTE("any", "/m", NULL, NULL),
        ROUTE("read", "/m", NULL, M_GET_HEAD),
        ROUTE("write", "/m", NULL, M_POST),
    };
    struct pgw_config c = cfg_of(r, PGW_ARRAY_LEN(r));
    struct pgw_route_table *t = table(&c, "public");
    struct pgw_route_match m;

    WHO(t, NULL, "GET", "/m", "read");
    WHO(t, NULL, "HEAD", "/m", "read");
    WHO(t, NULL, "POST", "/m", "write");
    WHO(t, NULL, "DELETE", "/m", "any");
    WHO(t, NULL, "get", "/m", "any"); /* methods are case-sensitive */
    WHO(t, NULL, "GE", "/m", "any");
    WHO(t, NULL, "GETS", "/m", "any");
    /* a more specific route skipped for its method leaves no 405 behind a match */
    CHECK_INT(match(t, NULL, "PUT", "/m", &m), PGW_OK);
    CHECK_INT(m.method_mismatch, 0);
    CHECK_INT(m.index, 0);
    pgw_route_table_free(t);
}

static void test_404_vs_405(void)
{
    struct pgw_config_route r[] = {
        ROUTE("get_only", "/only-get", NULL, M_GET),
        ROUTE("host_get", "/h", "a.example.com", M_GET),
        ROUTE("tmpl_get", "/items/{id}", NULL, M_GET),
        ROUTE("prefix_post", "/upload/", NULL, M_POST),
    };
    struct pgw_config c = cfg_of(r, PGW_ARRAY_LEN(r));
    struct pgw_route_table *t = table(&c, "public");

    WHO(t, NULL, "GET", "/only-get", "get_only");
    WHO(t, NULL, "POST", "/only-get", "405");
    WHO(t, NULL, "get", "/only-get", "405");
    WHO(t, NULL, "HEAD", "/only-get", "get_only"); /* GET implies HEAD */
    WHO(t, NULL, "HEAD", "/upload/x", "405");
    WHO(t, NULL, "POST", "/other", "404");
    WHO(t, NULL, "POST", "/only-get/", "404");
    WHO(t, "a.example.com", "GET", "/h", "host_get");
    WHO(t, "a.example.com", "POST", "/h", "405");
    WHO(t, "b.example.com", "POST", "/h", "404"); /* the host did not match: not 405 */
    WHO(t, NULL, "POST", "/h", "404");
    WHO(t, NULL, "DELETE", "/items/3", "405");
    WHO(t, NULL, "DELETE", "/items/3/4", "404");
    WHO(t, NULL, "GET", "/upload/x", "405");
    WHO(t, NULL, "GET", "/upload", "405");
    WHO(t, NULL, "POST", "/upload", "prefix_post");
    pgw_route_table_free(t);
}

static void test_fallback_across_kinds(void)
{
    struct pgw_config_route r[] = {
        ROUTE("me_post", "/users/me", NULL, M_POST),
        ROUTE("user_get", "/users/{id}", NULL, M_GET),
        ROUTE("host_tmpl", "/t/{x}", "a.example.com", NULL),
        ROUTE("t_prefix", "/t/", NULL, NULL),
    };
    struct pgw_config c = cfg_of(r, PGW_ARRAY_LEN(r));
    struct pgw_route_table *t = table(&c, "public");
    struct pgw_route_match m;

    WHO(t, NULL, "POST", "/users/me", "me_post");
    WHO(t, NULL, "GET", "/users/me", "user_get"); /* exact skipped for its method */
    WHO(t, NULL, "DELETE", "/users/me", "405");
    WHO(t, "a.example.com", "GET", "/t/1", "host_tmpl");
    /* the template matched the path but not the host: no params leak into the prefix match */
    CHECK_INT(match(t, "b.example.com", "GET", "/t/1", &m), PGW_OK);
    CHECK_INT(m.index, 3);
    CHECK_INT(m.num_params, 0);
    CHECK_INT(m.prefix_len, 2);
    pgw_route_table_free(t);
}

static void test_equal_routes_config_order(void)
{
    struct pgw_config_route r[] = {
        ROUTE("first", "/same", NULL, NULL),
        ROUTE("second", "/same", NULL, NULL),
        ROUTE("t_first", "/{a}/x", NULL, NULL),
        ROUTE("t_second", "/x/{a}", NULL, NULL),
    };
    struct pgw_config c = cfg_of(r, PGW_ARRAY_LEN(r));
    struct pgw_route_table *t = table(&c, "public");
    WHO(t, NULL, "GET", "/same", "first");
    WHO(t, NULL, "GET", "/x/x", "t_first");
    pgw_route_table_free(t);
}

static void test_listener_filtering(void)
{
    struct pgw_config_route r[] = {
        ROUTE_L("pub", "/pub", NULL, NULL, L_PUBLIC),
        ROUTE_L("int", "/int", NULL, NULL, L_INTERNAL),
        ROUTE_L("both", "/both", NULL, NULL, L_BOTH),
        ROUTE_L("int_root", "/", NULL, NULL, L_INTERNAL),
    };
    struct pgw_config c = cfg_of(r, PGW_ARRAY_LEN(r));
    struct pgw_route_table *pub = table(&c, "public");
    struct pgw_route_table *in = table(&c, "internal");
    struct pgw_route_table *other = table(&c, "admin");
    struct pgw_route_table *prefix = table(&c, "pub"); /* names compare whole */

    CHECK_INT(pub->num_entries, 2);
    CHECK_INT(in->num_entries, 3);
    CHECK_INT(other->num_entries, 0);
    CHECK_INT(prefix->num_entries, 0);
    WHO(pub, NULL, "GET", "/pub", "pub");
    WHO(pub, NULL, "GET", "/both", "both");
    WHO(pub, NULL, "GET", "/int", "404");
    WHO(in, NULL, "GET", "/int", "int");
    WHO(in, NULL, "GET", "/both", "both");
    WHO(in, NULL, "GET", "/pub", "int_root");
    WHO(other, NULL, "GET", "/", "404");
    WHO(other, NULL, "GET", "/pub", "404");
    pgw_route_table_free(pub);
    pgw_route_table_free(in);
    pgw_route_table_free(other);
    pgw_route_table_free(prefix);
}

static void test_table_errors(void)
{
    struct pgw_config_route r[] = {
        ROUTE_L("ok", "/ok", NULL, NULL, L_PUBLIC),
        ROUTE_L("bad", "/users/{id", NULL, NULL, L_INTERNAL),
    };
    struct pgw_config c = cfg_of(r, PGW_ARRAY_LEN(r));
    const char *err = NULL;
    CHECK(pgw_route_table_new(&c, "internal", &err) == NULL);
    CHECK(err != NULL && strstr(err, "'{'") != NULL);
    /* a bad route on another listener does not concern this table */
    err = NULL;
    struct pgw_route_table *t = pgw_route_table_new(&c, "public", &err);
    CHECK(t != NULL && err == NULL);
    pgw_route_table_free(t);
    pgw_route_table_free(NULL);

    struct pgw_config empty;
    memset(&empty, 0, sizeof(empty));
    t = pgw_route_table_new(&empty, "public", &err);
    CHECK(t != NULL);
    if (t != NULL) {
        WHO(t, NULL, "GET", "/", "404");
        pgw_route_table_free(t);
    }
}

/* Many exact routes of many lengths: each path finds its own route through the length search. */
static void test_exact_many(void)
{
    enum { N = 60 };
    static char paths[N][16];
    static char names[N][16];
    struct pgw_config_route r[N];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < N; i++) {
        snprintf(paths[i], sizeof(paths[i]), "/r%d", i * 37 % 1000); /* lengths 2 to 4 digits */
        snprintf(names[i], sizeof(names[i]), "n%d", i);
        r[i].name = names[i];
        r[i].path = paths[i];
        r[i].listeners = L_PUBLIC;
        r[i].num_listeners = 1;
        r[i].methods = (i % 3 == 0) ? M_GET : NULL;
    }
    struct pgw_config c = cfg_of(r, N);
    struct pgw_route_table *t = table(&c, "public");
    struct pgw_route_match m;
    for (int i = 0; i < N; i++) {
        CHECK_INT(match(t, NULL, "GET", paths[i], &m), PGW_OK);
        CHECK_INT(m.index, i);
        int rc = match(t, NULL, "POST", paths[i], &m);
        CHECK_INT(rc, i % 3 == 0 ? PGW_DECLINED : PGW_OK);
        CHECK_INT(m.method_mismatch, i % 3 == 0);
    }
    WHO(t, NULL, "GET", "/r", "404");
    WHO(t, NULL, "GET", "/r99999", "404");
    WHO(t, NULL, "GET", "/", "404");
    WHO(t, NULL, "GET", "/r0/", "404");
    pgw_route_table_free(t);
}

/* The whole request path as request.c runs it: normalise, then match. */
static void test_normalise_then_match(void)
{
    struct pgw_config_route r[] = {
        ROUTE("admin", "/admin", NULL, NULL),
        ROUTE("public", "/public/", NULL, NULL),
    };
    struct pgw_config c = cfg_of(r, PGW_ARRAY_LEN(r));
    struct pgw_route_table *t = table(&c, "public");
    static const char *const to_admin[] = {"/admin", "//admin", "/./admin", "/x/../admin",
                                           "/%61dmin", "/public/../admin", "/public/%2e%2e/admin",
                                           "/../admin", "/%2E%2E/%61%64min"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(to_admin); i++) {
        char out[64];
        size_t n;
        CHECK_INT(pgw_route_normalize_path(to_admin[i], strlen(to_admin[i]), out, &n, 0, NULL),
                  PGW_OK);
        out[n] = '\0';
        WHO(t, NULL, "GET", out, "admin");
    }
    pgw_route_table_free(t);
}

int main(void)
{
    RUN(test_norm_plain);
    RUN(test_norm_admin_equivalents);
    RUN(test_norm_trailing_slash);
    RUN(test_norm_merge_slashes);
    RUN(test_norm_clamp_at_root);
    RUN(test_norm_dot_lookalikes);
    RUN(test_norm_unreserved_decoded);
    RUN(test_norm_reserved_kept_upper);
    RUN(test_norm_encoded_slash);
    RUN(test_norm_nul_and_malformed);
    RUN(test_norm_raw_bytes);
    RUN(test_norm_raw_backslash);
    RUN(test_norm_dot_with_params);
    RUN(test_norm_not_absolute);
    RUN(test_norm_error_messages);
    RUN(test_norm_properties);
    RUN(test_pattern_valid);
    RUN(test_pattern_invalid);
    RUN(test_kinds_precedence);
    RUN(test_prefix_longest_first);
    RUN(test_template_longest_first);
    RUN(test_params_edges);
    RUN(test_host_beats_no_host);
    RUN(test_longer_path_beats_host);
    RUN(test_wildcard_hosts);
    RUN(test_host_ports_and_ipv6);
    RUN(test_methods_beat_none);
    RUN(test_404_vs_405);
    RUN(test_fallback_across_kinds);
    RUN(test_equal_routes_config_order);
    RUN(test_listener_filtering);
    RUN(test_table_errors);
    RUN(test_exact_many);
    RUN(test_normalise_then_match);
    free(last_path);
    return TEST_REPORT("route");
}
