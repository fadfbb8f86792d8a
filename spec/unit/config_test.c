/* config_test.c: the YAML configuration loader: every key of a full file, the defaults, each kind
 * of error with its line, several errors at once, sizes and durations, anchors and aliases, and
 * the refcount. Every snapshot is released, so LeakSanitizer checks the ownership too.
 */
#include "../../gateway/config.c"
#include "../support/test.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#define NAME "t.yaml"
/* Two lines that make a config valid: error tests append to it, so their lines start at 3. */
#define BASE                                                                                       \
    "listeners:\n"                                                                                 \
    "  - { name: public, address: \"127.0.0.1:8080\" }\n"

static char errbuf[16384];

static struct pgw_config *load(const char *yaml)
{
    return pgw_config_load_string(NAME, yaml, strlen(yaml), errbuf, sizeof(errbuf));
}

/* Whether errbuf has a line "t.yaml:<line>: ..." that contains <needle>. */
static int has_error(unsigned line, const char *needle)
{
    char prefix[32];
    size_t plen = (size_t)snprintf(prefix, sizeof(prefix), NAME ":%u: ", line);
    for (const char *p = errbuf; *p != '\0';) {
        const char *nl = strchr(p, '\n');
        size_t n = nl != NULL ? (size_t)(nl - p) : strlen(p);
        if (n >= plen && memcmp(p, prefix, plen) == 0 && memmem(p, n, needle, strlen(needle)))
            return 1;
        p += n + (nl != NULL);
    }
    return 0;
}

static size_t count_lines(void)
{
    size_t n = 0;
    for (const char *p = errbuf; *p != '\0'; p++)
        n += *p == '\n';
    return n;
}

/* Loads <yaml>, which must fail with an error at <line> containing <needle>. */
#define EXPECT_ERROR(yaml, line, needle) expect_error(__LINE__, (yaml), (line), (needle))
static void expect_error(int src_line, const char *yaml, unsigned line, const char *needle)
{
    struct pgw_config *c = load(yaml);
    if (c != NULL) {
        fprintf(stderr, "FAIL %s: config_test.c:%d: loaded, expected an error at line %u (%s)\n",
                test_current, src_line, line, needle);
        test_current_failed = 1;
        pgw_config_unref(c);
        return;
    }
    if (!has_error(line, needle)) {
        fprintf(stderr, "FAIL %s: config_test.c:%d: no error at line %u with \"%s\"; got:\n%s",
                test_current, src_line, line, needle, errbuf);
        test_current_failed = 1;
    }
}

/* Loads <yaml>, which must succeed; returns the snapshot. */
#define EXPECT_OK(yaml) expect_ok(__LINE__, (yaml))
static struct pgw_config *expect_ok(int src_line, const char *yaml)
{
    struct pgw_config *c = load(yaml);
    if (c == NULL) {
        fprintf(stderr, "FAIL %s: config_test.c:%d: expected to load; got:\n%s", test_current,
                src_line, errbuf);
        test_current_failed = 1;
    }
    return c;
}

#define CHECK_STR(s, lit) CHECK((s) != NULL && strcmp((s), (lit)) == 0)

/* ---- A full file ---- */

static const char full[] =
    "# every key\n"                                                           /* 1 */
    "listeners:\n"                                                            /* 2 */
    "  - name: public\n"                                                      /* 3 */
    "    address: \"0.0.0.0:8080\"\n"                                         /* 4 */
    "    backlog: 1024\n"                                                     /* 5 */
    "  - { name: admin, address: \"[::1]:9090\" }\n"                          /* 6 */
    "real_ip:\n"                                                              /* 7 */
    "  from: x-forwarded-for\n"                                               /* 8 */
    "  trusted: [10.0.0.0/8, \"::1\", 192.168.1.7]\n"                         /* 9 */
    "limits:\n"                                                               /* 10 */
    "  request_line: 4k\n"                                                    /* 11 */
    "  header_section: 16K\n"                                                 /* 12 */
    "  header_fields: 50\n"                                                   /* 13 */
    "  body: 1g\n"                                                            /* 14 */
    "  max_connections: 500\n"                                                /* 15 */
    "timeouts: { header: 5s, body: 250ms, keepalive: 2m, send: 1h }\n"        /* 16 */
    "upstreams:\n"                                                            /* 17 */
    "  api:\n"                                                                /* 18 */
    "    targets: [\"10.0.0.1:8001\", \"[2001:db8::1]:8002\", api.internal:80]\n"
    "    connect_timeout: 500ms\n"                                            /* 20 */
    "    read_timeout: 20\n"                                                  /* 21 */
    "    send_timeout: 15s\n"                                                 /* 22 */
    "    retries: 2\n"                                                        /* 23 */
    "    retry_deadline: 5s\n"                                                /* 24 */
    "    keepalive: 0\n"                                                      /* 25 */
    "    keepalive_timeout: 30s\n"                                            /* 26 */
    "    max_fails: 0\n"                                                      /* 27 */
    "    fail_timeout: 1m\n"                                                  /* 28 */
    "  static: { targets: [\"Static.Example:8080\"] }\n"                      /* 29 */
    "routes:\n"                                                               /* 30 */
    "  - name: users\n"                                                       /* 31 */
    "    type: proxy\n"                                                       /* 32 */
    "    listeners: [public, admin]\n"                                        /* 33 */
    "    match: { host: API.Example.com, path: \"/users/{id}\", methods: [get, POST] }\n"
    "    upstream: api\n"                                                     /* 35 */
    "    preserve_host: true\n"                                               /* 36 */
    "  - name: files\n"                                                       /* 37 */
    "    listeners: [public]\n"                                               /* 38 */
    "    match: { host: \"*.Example.com\", path: /files/ }\n"                 /* 39 */
    "    upstream: static\n"                                                  /* 40 */
    "    strip_prefix: true\n"                                                /* 41 */
    "  - name: exact\n"                                                       /* 42 */
    "    listeners: [public]\n"                                               /* 43 */
    "    match:\n"                                                            /* 44 */
    "      path: /exact\n"                                                    /* 45 */
    "      methods:\n"                                                        /* 46 */
    "        - DELETE\n"                                                      /* 47 */
    "    upstream: api\n"                                                     /* 48 */
    "    preserve_host: false\n"                                              /* 49 */
    "    strip_prefix: false\n"                                               /* 50 */
    "  - name: health\n"                                                      /* 51 */
    "    type: status\n"                                                      /* 52 */
    "    listeners: [admin]\n"                                                /* 53 */
    "    match: { path: /healthz, host: \"[2001:DB8::5]\" }\n"                /* 54 */
    "access_log: { path: /var/log/gw.json, format: json }\n"                  /* 55 */
    "error_log: { path: logs/error.log, level: warn }\n"                      /* 56 */
    "http: { underscores_in_headers: drop, allow_encoded_slash: true }\n";    /* 57 */

static void check_full_listeners(const struct pgw_config *c)
{
    CHECK_INT(c->num_listeners, 2);
    const struct pgw_config_listener *l = &c->listeners[0];
    CHECK_STR(l->name, "public");
    CHECK_STR(l->address, "0.0.0.0:8080");
    CHECK_INT(l->backlog, 1024);
    CHECK_INT(l->line, 3);
    CHECK_INT(l->sa.ss_family, AF_INET);
    CHECK_INT(l->sa_len, sizeof(struct sockaddr_in));
    CHECK_INT(ntohs(((const struct sockaddr_in *)&l->sa)->sin_port), 8080);
    l = &c->listeners[1];
    CHECK_STR(l->name, "admin");
    CHECK_STR(l->address, "[::1]:9090");
    CHECK_INT(l->backlog, 511);
    CHECK_INT(l->line, 6);
    CHECK_INT(l->sa.ss_family, AF_INET6);
    CHECK_INT(ntohs(((const struct sockaddr_in6 *)&l->sa)->sin6_port), 9090);
}

static void check_full_sections(const struct pgw_config *c)
{
    CHECK_INT(c->real_ip.from, PGW_REAL_IP_XFF);
    CHECK_INT(c->real_ip.num_trusted, 3);
    CHECK_INT(c->real_ip.trusted[0].family, AF_INET);
    CHECK_INT(c->real_ip.trusted[0].prefix, 8);
    CHECK_INT(c->real_ip.trusted[1].family, AF_INET6);
    CHECK_INT(c->real_ip.trusted[1].prefix, 128);
    CHECK_INT(c->real_ip.trusted[2].prefix, 32);
    CHECK_INT(c->limits.request_line, 4096);
    CHECK_INT(c->limits.header_section, 16384);
    CHECK_INT(c->limits.header_fields, 50);
    CHECK_INT(c->limits.body, 1073741824);
    CHECK_INT(c->limits.max_connections, 500);
    CHECK_INT(c->timeouts.header, 5000);
    CHECK_INT(c->timeouts.body, 250);
    CHECK_INT(c->timeouts.keepalive, 120000);
    CHECK_INT(c->timeouts.send, 3600000);
    CHECK_INT(c->access_log.enabled, 1);
    CHECK_STR(c->access_log.path, "/var/log/gw.json");
    CHECK_STR(c->error_log.path, "logs/error.log");
    CHECK_INT(c->error_log.level, PGW_LOG_WARN);
    CHECK_INT(c->underscores_in_headers, 1);
    CHECK_INT(c->allow_encoded_slash, 1);
}

static void check_full_upstreams(const struct pgw_config *c)
{
    CHECK_INT(c->num_upstreams, 2);
    const struct pgw_config_upstream *u = &c->upstreams[0];
    CHECK_STR(u->name, "api");
    CHECK_INT(u->line, 18);
    CHECK_INT(u->num_targets, 3);
    CHECK_STR(u->targets[0].host, "10.0.0.1");
    CHECK_INT(u->targets[0].port, 8001);
    CHECK_INT(u->targets[0].is_literal, 1);
    CHECK_STR(u->targets[1].host, "2001:db8::1");
    CHECK_INT(u->targets[1].port, 8002);
    CHECK_INT(u->targets[1].is_literal, 1);
    CHECK_STR(u->targets[2].host, "api.internal");
    CHECK_INT(u->targets[2].port, 80);
    CHECK_INT(u->targets[2].is_literal, 0);
    CHECK_INT(u->connect_timeout, 500);
    CHECK_INT(u->read_timeout, 20000);
    CHECK_INT(u->send_timeout, 15000);
    CHECK_INT(u->retries, 2);
    CHECK_INT(u->retry_deadline, 5000);
    CHECK_INT(u->keepalive, 0);
    CHECK_INT(u->keepalive_timeout, 30000);
    CHECK_INT(u->max_fails, 0);
    CHECK_INT(u->fail_timeout, 60000);
    u = &c->upstreams[1];
    CHECK_STR(u->name, "static");
    CHECK_INT(u->line, 29);
    CHECK_INT(u->num_targets, 1);
    CHECK_STR(u->targets[0].host, "Static.Example"); /* kept as written: it becomes Host */
    CHECK_INT(u->targets[0].is_literal, 0);
    CHECK_INT(u->connect_timeout, 2000); /* defaults */
    CHECK_INT(u->retries, 1);
}

static void check_full_routes(const struct pgw_config *c)
{
    CHECK_INT(c->num_routes, 4);
    const struct pgw_config_route *r = &c->routes[0];
    CHECK_STR(r->name, "users");
    CHECK_INT(r->line, 31);
    CHECK_INT(r->type, PGW_ROUTE_PROXY);
    CHECK_INT(r->num_listeners, 2);
    CHECK_STR(r->listeners[0], "public");
    CHECK_STR(r->listeners[1], "admin");
    CHECK_STR(r->host, "api.example.com");
    CHECK_STR(r->path, "/users/{id}");
    CHECK_INT(r->path_kind, PGW_PATH_TEMPLATE);
    CHECK_INT(r->num_methods, 2);
    CHECK_STR(r->methods[0], "GET");
    CHECK_STR(r->methods[1], "POST");
    CHECK_STR(r->upstream, "api");
    CHECK_INT(r->upstream_index, 0);
    CHECK_INT(r->preserve_host, 1);
    CHECK_INT(r->strip_prefix, 0);
    r = &c->routes[1];
    CHECK_STR(r->host, "*.example.com");
    CHECK_STR(r->path, "/files/");
    CHECK_INT(r->path_kind, PGW_PATH_PREFIX);
    CHECK_INT(r->num_methods, 0);
    CHECK(r->methods == NULL);
    CHECK_INT(r->upstream_index, 1);
    CHECK_INT(r->strip_prefix, 1);
    CHECK_INT(r->preserve_host, 0);
    r = &c->routes[2];
    CHECK(r->host == NULL);
    CHECK_INT(r->path_kind, PGW_PATH_EXACT);
    CHECK_INT(r->num_methods, 1);
    CHECK_STR(r->methods[0], "DELETE");
    CHECK_INT(r->upstream_index, 0);
    CHECK_INT(r->line, 42);
    r = &c->routes[3];
    CHECK_STR(r->name, "health");
    CHECK_INT(r->type, PGW_ROUTE_STATUS);
    CHECK_STR(r->host, "[2001:db8::5]");
    CHECK(r->upstream == NULL);
    CHECK_INT(r->upstream_index, -1);
    CHECK_INT(r->num_listeners, 1);
    CHECK_STR(r->listeners[0], "admin");
}

static void test_full(void)
{
    struct pgw_config *c = EXPECT_OK(full);
    if (c == NULL)
        return;
    CHECK_INT(c->refs, 1);
    CHECK_STR(c->file, NAME);
    CHECK_INT(errbuf[0], '\0');
    check_full_listeners(c);
    check_full_sections(c);
    check_full_upstreams(c);
    check_full_routes(c);
    pgw_config_unref(c);
}

static void test_defaults(void)
{
    struct pgw_config *c = EXPECT_OK(BASE "upstreams:\n  u: { targets: [\"h:1\"] }\n"
                                          "routes:\n"
                                          "  - { name: r, listeners: [public], match: { path: / },"
                                          " upstream: u }\n");
    if (c == NULL)
        return;
    CHECK_INT(c->listeners[0].backlog, 511);
    CHECK_INT(c->real_ip.from, PGW_REAL_IP_NONE);
    CHECK_INT(c->real_ip.num_trusted, 0);
    CHECK_INT(c->limits.request_line, 8192);
    CHECK_INT(c->limits.header_section, 32768);
    CHECK_INT(c->limits.header_fields, 100);
    CHECK_INT(c->limits.body, 10485760);
    CHECK_INT(c->limits.max_connections, 10000);
    CHECK_INT(c->timeouts.header, 10000);
    CHECK_INT(c->timeouts.body, 30000);
    CHECK_INT(c->timeouts.keepalive, 60000);
    CHECK_INT(c->timeouts.send, 30000);
    const struct pgw_config_upstream *u = &c->upstreams[0];
    CHECK_INT(u->connect_timeout, 2000);
    CHECK_INT(u->read_timeout, 30000);
    CHECK_INT(u->send_timeout, 30000);
    CHECK_INT(u->retries, 1);
    CHECK_INT(u->retry_deadline, 0);
    CHECK_INT(u->keepalive, 64);
    CHECK_INT(u->keepalive_timeout, 60000);
    CHECK_INT(u->max_fails, 3);
    CHECK_INT(u->fail_timeout, 10000);
    const struct pgw_config_route *r = &c->routes[0];
    CHECK_INT(r->type, PGW_ROUTE_PROXY);
    CHECK(r->host == NULL);
    CHECK_INT(r->path_kind, PGW_PATH_PREFIX);
    CHECK_INT(r->num_methods, 0);
    CHECK_INT(r->preserve_host, 0);
    CHECK_INT(r->strip_prefix, 0);
    CHECK_INT(c->access_log.enabled, 1);
    CHECK_STR(c->access_log.path, "logs/access.log");
    CHECK_STR(c->error_log.path, "-");
    CHECK_INT(c->error_log.level, PGW_LOG_INFO);
    CHECK_INT(c->underscores_in_headers, 0);
    CHECK_INT(c->allow_encoded_slash, 0);
    pgw_config_unref(c);

    /* no upstreams and no routes at all is valid: every request gets 404 */
    c = EXPECT_OK(BASE "upstreams: {}\nroutes: []\n");
    if (c != NULL) {
        CHECK_INT(c->num_upstreams, 0);
        CHECK_INT(c->num_routes, 0);
        pgw_config_unref(c);
    }
}

/* ---- Sizes and durations ---- */

static void test_parse_size(void)
{
    static const struct {
        const char *s;
        uint64_t v;
    } ok[] = {
        {"0", 0},
        {"123", 123},
        {"8k", 8192},
        {"32K", 32768},
        {"10m", 10485760},
        {"10M", 10485760},
        {"1g", 1073741824},
        {"1G", 1073741824},
        {"007", 7},
        {"18446744073709551615", UINT64_MAX},
        {"17179869183g", 17179869183ull << 30},
    };
    static const char *const bad[] = {
        "", "k", "10x", "-1", "+1", "1.5k", " 1", "1 ", "8kb", "8kk", "0x10", "1e3",
        "18446744073709551616", "17179869184g", "99999999999999999999g", "18014398509481984k",
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(ok); i++) {
        uint64_t v = 42;
        CHECK_INT(pgw_config_parse_size(ok[i].s, &v), PGW_OK);
        CHECK(v == ok[i].v);
    }
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad); i++) {
        uint64_t v = 42;
        if (pgw_config_parse_size(bad[i], &v) != PGW_ERR)
            fprintf(stderr, "accepted size \"%s\"\n", bad[i]);
        CHECK_INT(pgw_config_parse_size(bad[i], &v), PGW_ERR);
        CHECK_INT(v, 42); /* untouched on error */
    }
}

static void test_parse_duration(void)
{
    static const struct {
        const char *s;
        uint64_t ms;
    } ok[] = {
        {"250ms", 250},
        {"10s", 10000},
        {"2m", 120000},
        {"1h", 3600000},
        {"30", 30000},
        {"0", 0},
        {"0ms", 0},
        {"18446744073709551615ms", UINT64_MAX},
        {"5124095576030h", 5124095576030ull * 3600000},
    };
    static const char *const bad[] = {
        "", "ms", "s", "10x", "1.5s", "-1", "+1", "10S", "10MS", "10 s", "1d", "10sec",
        "18446744073709551615", "5124095576031h", "99999999999999999999ms",
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(ok); i++) {
        uint64_t v = 42;
        CHECK_INT(pgw_config_parse_duration(ok[i].s, &v), PGW_OK);
        CHECK(v == ok[i].ms);
    }
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad); i++) {
        uint64_t v = 42;
        if (pgw_config_parse_duration(bad[i], &v) != PGW_ERR)
            fprintf(stderr, "accepted duration \"%s\"\n", bad[i]);
        CHECK_INT(pgw_config_parse_duration(bad[i], &v), PGW_ERR);
        CHECK_INT(v, 42);
    }
}

static void test_size_and_duration_fields(void)
{
    EXPECT_ERROR(BASE "limits:\n  body: 1.5k\n", 4, "limits.body: expected a size");
    EXPECT_ERROR(BASE "limits:\n  body: -1\n", 4, "limits.body: expected a size");
    EXPECT_ERROR(BASE "limits:\n  body: \"\"\n", 4, "limits.body: expected a size");
    EXPECT_ERROR(BASE "limits:\n  body: 99999999999999999999g\n", 4, "expected a size");
    EXPECT_ERROR(BASE "limits:\n  body: abc\n", 4, "got \"abc\"");
    EXPECT_ERROR(BASE "limits:\n  body:\n", 4, "limits.body: expected a size");
    EXPECT_ERROR(BASE "limits:\n  body: [1]\n", 4, "expected a size (bytes");
    EXPECT_ERROR(BASE "timeouts:\n  header: 10x\n", 4, "timeouts.header: expected a duration");
    EXPECT_ERROR(BASE "timeouts:\n  header: 1.5s\n", 4, "timeouts.header: expected a duration");
    EXPECT_ERROR(BASE "timeouts:\n  header: 0\n", 4, "below the minimum (1ms)");
    EXPECT_ERROR(BASE "timeouts:\n  header: 0ms\n", 4, "below the minimum");
    EXPECT_ERROR(BASE "timeouts:\n  send: 169h\n", 4, "above the maximum (168h)");
    EXPECT_ERROR(BASE "timeouts:\n  send: {a: 1}\n", 4, "expected a duration");

    /* quoted sizes and durations are fine: "8k" is a string either way */
    struct pgw_config *c =
        EXPECT_OK(BASE "limits: { body: \"0\", request_line: '1k' }\ntimeouts: { send: '168h' }\n");
    if (c != NULL) {
        CHECK_INT(c->limits.body, 0);
        CHECK_INT(c->limits.request_line, 1024);
        CHECK_INT(c->timeouts.send, 168 * 3600000ull);
        pgw_config_unref(c);
    }
}

/* ---- YAML-level errors ---- */

static void test_empty(void)
{
    EXPECT_ERROR("", 1, "the configuration is empty");
    EXPECT_ERROR("# nothing here\n\n", 1, "the configuration is empty");
    EXPECT_ERROR("---\n", 1, "the configuration is empty");
    EXPECT_ERROR("~\n", 1, "the configuration is empty");
    EXPECT_ERROR("# c\n- a\n", 2, "the top level must be a map of sections, got a list");
    EXPECT_ERROR("hello\n", 1, "the top level must be a map");
    CHECK_INT(count_lines(), 1);
}

static void test_syntax_errors(void)
{
    EXPECT_ERROR(BASE "limits:\n  body: 1k\n   header_fields: 5\n", 5, "YAML syntax error");
    EXPECT_ERROR(BASE "limits: { body: 1k\n", 4, "YAML syntax error");
    EXPECT_ERROR(BASE "routes:\n\t- a\n", 4, "YAML syntax error");
    EXPECT_ERROR(BASE "x: \"unterminated\n", 4, "while scanning a quoted scalar at line 3");
    CHECK_INT(count_lines(), 1); /* the tree is incomplete: nothing else is reported */
    EXPECT_ERROR(BASE "a: 1\n---\nb: 2\n", 4, "only one YAML document is allowed");
    EXPECT_ERROR(BASE "\xff: 1\n", 3, "YAML syntax error");
    EXPECT_ERROR(BASE "x: \"a\\0b\"\n", 3, "NUL byte");
}

static void test_duplicate_keys(void)
{
    EXPECT_ERROR(BASE "limits: {}\n\nlimits: {}\n", 5,
                 "duplicate key \"limits\" (first at line 3)");
    EXPECT_ERROR(BASE "listeners: []\n", 3, "duplicate key \"listeners\" (first at line 1)");
    EXPECT_ERROR(BASE "limits: { body: 1k, body: 2k }\n", 3, "duplicate key \"body\"");
    EXPECT_ERROR(BASE "upstreams:\n  a: { targets: [\"h:1\"] }\n  b: { targets: [\"h:2\"] }\n"
                      "  a: { targets: [\"h:3\"] }\n",
                 6, "duplicate key \"a\" (first at line 4)");
    /* the third of three copies still names the first */
    EXPECT_ERROR(BASE "http: {}\nhttp: {}\nhttp: {}\n", 5, "(first at line 3)");
    CHECK(has_error(4, "(first at line 3)"));
    EXPECT_ERROR(BASE "? [a, b]\n: 1\n", 3, "map keys must be strings, got a list");
}

static void test_anchors_and_aliases(void)
{
    EXPECT_ERROR(BASE "upstreams:\n  a: &t { targets: [\"h:1\"] }\n  b: *t\n", 4,
                 "anchor \"t\": anchors and aliases are not supported");
    CHECK(has_error(5, "alias \"t\": anchors and aliases are not supported"));
    CHECK(!has_error(5, "expected a map")); /* the alias is reported once, not as a null too */
    EXPECT_ERROR(BASE "limits: { body: !!str 1k }\n", 3, "tags");

    /* billion laughs: nine levels of nine aliases would be 9^9 nodes if expanded */
    static const char lol[] =
        "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n"
        "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
        "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
        "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
        "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
        "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
        "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
        "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n";
    EXPECT_ERROR(lol, 9, "alias \"h\"");
    CHECK(has_error(1, "anchor \"a\""));
    CHECK(count_lines() < 100);
}

static void test_nesting_bound(void)
{
    char deep[2 * 200 + 16];
    size_t n = 0;
    n += (size_t)sprintf(deep, "x: ");
    for (int i = 0; i < 200; i++)
        deep[n++] = '[';
    for (int i = 0; i < 200; i++)
        deep[n++] = ']';
    deep[n++] = '\n';
    deep[n] = '\0';
    EXPECT_ERROR(deep, 1, "nested deeper than 64 levels");
    CHECK_INT(count_lines(), 1);
}

/* ---- Unknown keys and wrong types ---- */

static void test_unknown_keys(void)
{
    EXPECT_ERROR(BASE "listenrs: []\n", 3,
                 "unknown top-level key \"listenrs\" (allowed: listeners, upstreams, routes, "
                 "real_ip, limits, timeouts, access_log, error_log, http, resolver, workers, control, "
                 "policies, store, plans, tls, jwt)");
    EXPECT_ERROR("listeners:\n  - { name: a, address: \":80\", bakclog: 5 }\n", 2,
                 "listeners[0]: unknown key \"bakclog\" (allowed: name, address, policies, tls, backlog)");
    EXPECT_ERROR(BASE "limits: { bdy: 1 }\n", 3, "limits: unknown key \"bdy\" (allowed: "
                                                 "request_line, header_section, header_fields, "
                                                 "body, max_connections, websocket_buffer)");
    EXPECT_ERROR(BASE "timeouts: { idle: 1 }\n", 3, "(allowed: header, body, keepalive, send, drain, watchdog)");
    EXPECT_ERROR(BASE "upstreams:\n  u:\n    targets: [\"h:1\"]\n    retry: 2\n", 6,
                 "upstreams.u: unknown key \"retry\" (allowed: targets, tls, connect_timeout");
    EXPECT_ERROR(BASE "routes:\n  - name: r\n    listeners: [public]\n    match: { path: /, "
                      "hots: a }\n    type: status\n",
                 6, "routes[0].match: unknown key \"hots\" (allowed: host, path, methods)");
    EXPECT_ERROR(BASE "routes:\n  - name: r\n    type: status\n    listeners: [public]\n"
                      "    match: { path: / }\n    timeout: 1s\n",
                 8, "routes[0]: unknown key \"timeout\" (allowed: name, type, listeners, match, "
                    "upstream, policies, websocket, preserve_host, strip_prefix, https_only)");
    EXPECT_ERROR(BASE "real_ip: { from: proxy_protocol, trusted: [\"::1\"], via: x }\n", 3,
                 "real_ip: unknown key \"via\" (allowed: trusted, from)");
    EXPECT_ERROR(BASE "access_log: { path: a, rotate: 1 }\n", 3, "(allowed: path, format, flush)");
    EXPECT_ERROR(BASE "error_log: { file: a }\n", 3, "(allowed: path, level)");
    EXPECT_ERROR(BASE "http: { x: 1 }\n", 3,
                 "(allowed: underscores_in_headers, allow_encoded_slash)");
    /* a key shown in a message never breaks the one-line-per-error format */
    EXPECT_ERROR(BASE "\"a\\nb\": 1\n", 3, "unknown top-level key \"a\\x0ab\"");
    CHECK_INT(count_lines(), 1);
}

static void test_wrong_types(void)
{
    EXPECT_ERROR("listeners: { name: a }\n", 1, "listeners: expected a list, got a map");
    EXPECT_ERROR("listeners:\n  - public\n", 2, "listeners[0]: expected a map, got a string");
    EXPECT_ERROR(BASE "limits: [1, 2]\n", 3, "limits: expected a map, got a list");
    EXPECT_ERROR(BASE "limits:\n", 3, "limits: expected a map, got nothing (null)");
    EXPECT_ERROR(BASE "limits: { header_fields: abc }\n", 3,
                 "limits.header_fields: expected a non-negative integer, got \"abc\"");
    EXPECT_ERROR(BASE "limits: { header_fields: \"50\" }\n", 3,
                 "(quoted: write it without quotes)");
    EXPECT_ERROR(BASE "limits: { header_fields: 1.5 }\n", 3, "expected a non-negative integer");
    EXPECT_ERROR(BASE "limits: { header_fields: -5 }\n", 3, "expected a non-negative integer");
    EXPECT_ERROR(BASE "limits: { header_fields: 99999999999999999999 }\n", 3,
                 "expected a non-negative integer");
    EXPECT_ERROR(BASE "upstreams: [a]\n", 3, "upstreams: expected a map, got a list");
    EXPECT_ERROR(BASE "upstreams:\n  u: { targets: \"h:1\" }\n", 4,
                 "upstreams.u.targets: expected a list, got a string");
    EXPECT_ERROR(BASE "upstreams:\n  u: { targets: [[\"h:1\"]] }\n", 4,
                 "upstreams.u.targets: expected a string, got a list");
    EXPECT_ERROR(BASE "routes: { a: 1 }\n", 3, "routes: expected a list, got a map");
    EXPECT_ERROR(BASE "routes:\n  - name: [r]\n    type: status\n    listeners: [public]\n"
                      "    match: { path: / }\n",
                 4, "routes[0].name: expected a string, got a list");
    EXPECT_ERROR(BASE "routes:\n  - name: r\n    type: status\n    listeners: [public]\n"
                      "    match: { path: ~ }\n",
                 7, "routes[0].match.path: expected a string, got nothing (null)");
    EXPECT_ERROR(BASE "http: { allow_encoded_slash: yes }\n", 3,
                 "expected true or false, got \"yes\" (YAML 1.2: yes/no/on/off are strings)");
    EXPECT_ERROR(BASE "http: { allow_encoded_slash: \"true\" }\n", 3, "(quoted: write it");
    EXPECT_ERROR(BASE "http: { allow_encoded_slash: 1 }\n", 3, "expected true or false");
    EXPECT_ERROR(BASE "http: { underscores_in_headers: [drop] }\n", 3,
                 "expected one of reject, drop, got a list");
    EXPECT_ERROR(BASE "error_log: debug\n", 3, "error_log: expected a map, got a string");

    struct pgw_config *c =
        EXPECT_OK(BASE "http: { allow_encoded_slash: True }\n");
    if (c != NULL) {
        CHECK_INT(c->allow_encoded_slash, 1);
        pgw_config_unref(c);
    }
    c = EXPECT_OK(BASE "http: { allow_encoded_slash: FALSE, underscores_in_headers: reject }\n");
    if (c != NULL) {
        CHECK_INT(c->allow_encoded_slash, 0);
        CHECK_INT(c->underscores_in_headers, 0);
        pgw_config_unref(c);
    }
}

/* ---- Sections ---- */

static void test_listeners(void)
{
    EXPECT_ERROR("# c\nlimits: {}\n", 2, "missing required key \"listeners\"");
    EXPECT_ERROR("listeners: []\n", 1, "listeners: at least one listener is needed");
    EXPECT_ERROR("listeners:\n  - { address: \":80\" }\n", 2,
                 "listeners[0]: missing required key \"name\"");
    EXPECT_ERROR("listeners:\n  - { name: a }\n", 2, "missing required key \"address\"");
    EXPECT_ERROR("listeners:\n  - { name: \"a b\", address: \":80\" }\n", 2,
                 "listeners[0].name: invalid name \"a b\"");
    EXPECT_ERROR("listeners:\n  - { name: \"\", address: \":80\" }\n", 2, "must not be empty");
    EXPECT_ERROR("listeners:\n  - { name: a, address: \":80\" }\n"
                 "  - { name: a, address: \":81\" }\n",
                 3, "listeners[1].name: listener \"a\" is already defined at line 2");
    EXPECT_ERROR("listeners:\n  - { name: a, address: \"127.0.0.1:80\" }\n"
                 "  - name: b\n    address: \"127.0.0.1:80\"\n",
                 4, "\"127.0.0.1:80\" is already used by listener \"a\" (line 2)");
    EXPECT_ERROR("listeners:\n  - { name: a, address: \"[::1]:80\" }\n"
                 "  - { name: b, address: \"[0:0::1]:80\" }\n",
                 3, "is already used by listener \"a\"");
    EXPECT_ERROR("listeners:\n  - { name: a, address: localhost:80 }\n", 2,
                 "invalid listen address \"localhost:80\"");
    EXPECT_ERROR("listeners:\n  - { name: a, address: \"127.0.0.1\" }\n", 2,
                 "invalid listen address");
    EXPECT_ERROR("listeners:\n  - { name: a, address: \":80\", backlog: 0 }\n", 2,
                 "listeners[0].backlog: \"0\" is below the minimum (1)");
    EXPECT_ERROR("listeners:\n  - { name: a, address: \":80\", backlog: 70000 }\n", 2,
                 "above the maximum (65535)");

    /* same port, different addresses: allowed (the more specific one wins in the kernel) */
    struct pgw_config *c = EXPECT_OK("listeners:\n  - { name: a, address: \"127.0.0.1:80\" }\n"
                                     "  - { name: b, address: \"*:80\" }\n"
                                     "  - { name: c-2_X, address: \"[::]:80\", backlog: 1 }\n");
    if (c != NULL) {
        CHECK_INT(c->num_listeners, 3);
        CHECK_STR(c->listeners[2].name, "c-2_X");
        CHECK_INT(c->listeners[2].backlog, 1);
        pgw_config_unref(c);
    }
}

static void test_real_ip(void)
{
    EXPECT_ERROR(BASE "real_ip: { trusted: [10.0.0.0/8] }\n", 3,
                 "real_ip: missing required key \"from\"");
    EXPECT_ERROR(BASE "real_ip: { from: x-forwarded-for }\n", 3,
                 "real_ip: missing required key \"trusted\"");
    EXPECT_ERROR(BASE "real_ip: { from: xff, trusted: [\"::1\"] }\n", 3,
                 "real_ip.from: expected one of x-forwarded-for, proxy_protocol, got \"xff\"");
    EXPECT_ERROR(BASE "real_ip:\n  from: proxy_protocol\n  trusted: []\n", 5,
                 "real_ip.trusted: at least one address or range is needed");
    EXPECT_ERROR(BASE "real_ip:\n  from: proxy_protocol\n  trusted:\n    - 10.0.0.0/8\n"
                      "    - 10.0.0.0/33\n",
                 7, "real_ip.trusted: invalid address or range \"10.0.0.0/33\"");
    EXPECT_ERROR(BASE "real_ip: { from: proxy_protocol, trusted: [localhost] }\n", 3,
                 "invalid address or range \"localhost\"");

    struct pgw_config *c =
        EXPECT_OK(BASE "real_ip: { from: proxy_protocol, trusted: [0.0.0.0/0, \"::/0\"] }\n");
    if (c != NULL) {
        CHECK_INT(c->real_ip.from, PGW_REAL_IP_PROXY_PROTOCOL);
        CHECK_INT(c->real_ip.num_trusted, 2);
        CHECK_INT(c->real_ip.trusted[0].prefix, 0);
        pgw_config_unref(c);
    }
}

static void test_limits(void)
{
    EXPECT_ERROR(BASE "limits: { request_line: 63 }\n", 3,
                 "limits.request_line: \"63\" is below the minimum (64)");
    EXPECT_ERROR(BASE "limits: { request_line: 2m }\n", 3, "above the maximum (1m)");
    EXPECT_ERROR(BASE "limits: { header_fields: 0 }\n", 3, "\"0\" is below the minimum (1)");
    EXPECT_ERROR(BASE "limits: { header_fields: 10001 }\n", 3, "above the maximum (10000)");
    EXPECT_ERROR(BASE "limits: { max_connections: 0 }\n", 3, "below the minimum (1)");
    /* the default header_section (32k) is smaller than this request_line */
    EXPECT_ERROR(BASE "limits:\n  request_line: 64k\n", 4,
                 "limits.header_section: 32k must be at least request_line (64k)");
    EXPECT_ERROR(BASE "limits:\n  request_line: 8k\n  header_section: 4k\n", 5,
                 "4k must be at least request_line (8k)");

    struct pgw_config *c = EXPECT_OK(
        BASE "limits: { request_line: 64, header_section: 64, header_fields: 10000, body: 0 }\n");
    if (c != NULL) {
        CHECK_INT(c->limits.request_line, 64);
        CHECK_INT(c->limits.header_section, 64);
        CHECK_INT(c->limits.header_fields, 10000);
        CHECK_INT(c->limits.body, 0);
        pgw_config_unref(c);
    }
}

static void test_upstream_targets(void)
{
#define UP(targets) BASE "upstreams:\n  u:\n    targets: " targets "\n"
    EXPECT_ERROR(BASE "upstreams:\n  u: { read_timeout: 1s }\n", 4,
                 "upstreams.u: missing required key \"targets\"");
    EXPECT_ERROR(UP("[]"), 5, "upstreams.u.targets: at least one target (host:port) is needed");
    EXPECT_ERROR(UP("[\"10.0.0.1\"]"), 5, "\"10.0.0.1\": missing port (host:port)");
    EXPECT_ERROR(UP("[\"10.0.0.1:\"]"), 5, "the port must be 1..65535");
    EXPECT_ERROR(UP("[\"h:0\"]"), 5, "the port must be 1..65535");
    EXPECT_ERROR(UP("[\"h:65536\"]"), 5, "the port must be 1..65535");
    EXPECT_ERROR(UP("[\"h:080\"]"), 5, "without leading zeros");
    EXPECT_ERROR(UP("[\"h:8x\"]"), 5, "the port must be");
    EXPECT_ERROR(UP("[\"::1:80\"]"), 5, "IPv6 addresses go in brackets");
    EXPECT_ERROR(UP("[\"[::1]\"]"), 5, "missing port");
    EXPECT_ERROR(UP("[\"[::1:80\"]"), 5, "missing ']'");
    EXPECT_ERROR(UP("[\"[10.0.0.1]:80\"]"), 5, "brackets must hold an IPv6 address");
    EXPECT_ERROR(UP("[\":80\"]"), 5, "host names have 1 to 253 bytes");
    EXPECT_ERROR(UP("[\"a..b:80\"]"), 5, "labels have 1 to 63 bytes");
    EXPECT_ERROR(UP("[\"a_b c:80\"]"), 5, "host names use only");
    EXPECT_ERROR(UP("[\"10.0.0.256:80\"]"), 5, "not a valid IPv4 address");
    EXPECT_ERROR(UP("[\"010.0.0.1:80\"]"), 5, "not a valid IPv4 address");
    EXPECT_ERROR(UP("[\"h:1\", \"nope\", \"h:2\"]"), 5, "\"nope\": missing port");
    EXPECT_ERROR(BASE "upstreams:\n  \"bad name\": { targets: [\"h:1\"] }\n", 4,
                 "upstreams: invalid name \"bad name\"");
    EXPECT_ERROR(BASE "upstreams:\n  u: [\"h:1\"]\n", 4, "upstreams.u: expected a map, got a list");

    struct pgw_config *c =
        EXPECT_OK(UP("[\"h:1\", \"[::ffff:10.0.0.1]:65535\", \"1.2.3.4:80\", a-b_c.d1:8080]"));
    if (c != NULL) {
        const struct pgw_config_upstream *u = &c->upstreams[0];
        CHECK_INT(u->num_targets, 4);
        CHECK_STR(u->targets[0].host, "h");
        CHECK_INT(u->targets[0].is_literal, 0);
        CHECK_STR(u->targets[1].host, "::ffff:10.0.0.1");
        CHECK_INT(u->targets[1].port, 65535);
        CHECK_INT(u->targets[1].is_literal, 1);
        CHECK_INT(u->targets[2].is_literal, 1);
        CHECK_STR(u->targets[3].host, "a-b_c.d1");
        CHECK_INT(u->targets[3].is_literal, 0);
        pgw_config_unref(c);
    }
#undef UP
}

static void test_upstream_fields(void)
{
#define UP(field) BASE "upstreams:\n  u:\n    targets: [\"h:1\"]\n    " field "\n"
    EXPECT_ERROR(UP("connect_timeout: 0"), 6, "upstreams.u.connect_timeout: \"0\" is below");
    EXPECT_ERROR(UP("read_timeout: 3x"), 6, "upstreams.u.read_timeout: expected a duration");
    EXPECT_ERROR(UP("send_timeout: -1s"), 6, "expected a duration");
    EXPECT_ERROR(UP("retries: 101"), 6, "upstreams.u.retries: \"101\" is above the maximum (100)");
    EXPECT_ERROR(UP("retries: two"), 6, "expected a non-negative integer");
    EXPECT_ERROR(UP("retry_deadline: 8d"), 6, "expected a duration");
    EXPECT_ERROR(UP("keepalive: 100001"), 6, "above the maximum (100000)");
    EXPECT_ERROR(UP("keepalive_timeout: 0s"), 6, "below the minimum (1ms)");
    EXPECT_ERROR(UP("max_fails: 1000001"), 6, "above the maximum");
    EXPECT_ERROR(UP("fail_timeout: 0"), 6, "below the minimum");

    struct pgw_config *c = EXPECT_OK(UP("retry_deadline: 0"));
    if (c != NULL) {
        CHECK_INT(c->upstreams[0].retry_deadline, 0);
        pgw_config_unref(c);
    }
#undef UP
}

/* A route under test starts at line 5, after an upstream "u" on line 3 and "routes:" on line 4. */
#define ROUTES BASE "upstreams: { u: { targets: [\"h:1\"] } }\nroutes:\n"

static void test_route_references(void)
{
    EXPECT_ERROR(ROUTES "  - name: r\n"                   /* 5 */
                        "    listeners: [public, nope]\n" /* 6 */
                        "    match: { path: / }\n"        /* 7 */
                        "    upstream: u\n",              /* 8 */
                 5, "routes[0].listeners: route \"r\": unknown listener \"nope\"");
    EXPECT_ERROR(ROUTES "  - name: r\n"
                        "    listeners: [public]\n"
                        "    match: { path: / }\n"
                        "    upstream: v\n",
                 5, "routes[0].upstream: route \"r\": unknown upstream \"v\"");
    EXPECT_ERROR(ROUTES "  - name: r\n    listeners: [public]\n    match: { path: / }\n", 5,
                 "routes[0]: missing required key \"upstream\"");
    EXPECT_ERROR(ROUTES "  - name: r\n    listeners: [public, public]\n    match: { path: / }\n"
                        "    upstream: u\n",
                 6, "\"public\" is listed twice");
    EXPECT_ERROR(ROUTES "  - name: r\n    listeners: []\n    match: { path: / }\n    upstream: u\n",
                 6, "routes[0].listeners: at least one listener name is needed");
    EXPECT_ERROR(ROUTES "  - { name: r, match: { path: / }, upstream: u }\n", 5,
                 "routes[0]: missing required key \"listeners\"");
    EXPECT_ERROR(ROUTES "  - { listeners: [public], match: { path: / }, upstream: u }\n", 5,
                 "routes[0]: missing required key \"name\"");
    EXPECT_ERROR(ROUTES "  - { name: r, listeners: [public], upstream: u }\n", 5,
                 "routes[0]: missing required key \"match\"");
    EXPECT_ERROR(ROUTES "  - { name: r, listeners: [public], match: {}, upstream: u }\n", 5,
                 "routes[0].match: missing required key \"path\"");
    EXPECT_ERROR(ROUTES "  - { name: r, listeners: [public], match: { path: /a }, upstream: u }\n"
                        "  - { name: r, listeners: [public], match: { path: /b }, upstream: u }\n",
                 6, "routes[1].name: route \"r\" is already defined at line 5");
}

static void test_route_types(void)
{
    EXPECT_ERROR(ROUTES "  - name: h\n    type: status\n    listeners: [public]\n"
                        "    match: { path: /h }\n    upstream: u\n",
                 9, "routes[0].upstream: not allowed on a status route");
    EXPECT_ERROR(ROUTES "  - name: h\n    type: status\n    listeners: [public]\n"
                        "    match: { path: /h/ }\n    strip_prefix: true\n",
                 9, "routes[0].strip_prefix: not allowed on a status route");
    EXPECT_ERROR(ROUTES "  - { name: h, type: health, listeners: [public], match: { path: /h } }\n",
                 5, "routes[0].type: expected one of proxy, status, got \"health\"");
    CHECK_INT(count_lines(), 1); /* not also "missing upstream" */
    EXPECT_ERROR(ROUTES "  - name: r\n    listeners: [public]\n    match: { path: /exact }\n"
                        "    upstream: u\n    strip_prefix: true\n",
                 9, "routes[0].strip_prefix: only prefix paths");
    EXPECT_ERROR(ROUTES "  - { name: r, listeners: [public], match: { path: \"/a/{x}\" },"
                        " upstream: u, strip_prefix: true }\n",
                 5, "only prefix paths");
    EXPECT_ERROR(ROUTES "  - { name: r, listeners: [public], match: { path: / }, upstream: u,"
                        " preserve_host: on }\n",
                 5, "routes[0].preserve_host: expected true or false, got \"on\"");
}

/* websocket: true | false | { allowed_origins, max_message, idle_timeout, close_timeout } */
static void test_route_websocket(void)
{
#define WS(v) ROUTES "  - name: r\n    listeners: [public]\n    upstream: u\n" \
                    "    match: { path: /ws }\n    websocket: " v "\n"
    struct pgw_config *c = EXPECT_OK(WS("true"));
    if (c != NULL) {
        const struct pgw_config_websocket *ws = c->routes[0].websocket;
        CHECK(ws != NULL);
        CHECK(ws->max_message == 1024 * 1024 && ws->idle_timeout == 300000 &&
              ws->close_timeout == 5000 && ws->num_allowed_origins == 0);
        CHECK(c->limits.websocket_buffer == 64ull << 20);
        pgw_config_unref(c);
    }
    c = EXPECT_OK(WS("false"));
    if (c != NULL) {
        CHECK(c->routes[0].websocket == NULL);
        pgw_config_unref(c);
    }
    c = EXPECT_OK(WS("{ allowed_origins: [\"https://App.Example.com\", \"http://[::1]:8080\"], "
                     "max_message: 64k, idle_timeout: 2s, close_timeout: 250ms }"));
    if (c != NULL) {
        const struct pgw_config_websocket *ws = c->routes[0].websocket;
        CHECK(ws != NULL && ws->num_allowed_origins == 2);
        if (ws != NULL && ws->num_allowed_origins == 2) {
            CHECK(strcmp(ws->allowed_origins[0], "https://app.example.com") == 0);
            CHECK(strcmp(ws->allowed_origins[1], "http://[::1]:8080") == 0);
        }
        CHECK(ws != NULL && ws->max_message == 65536 && ws->idle_timeout == 2000 &&
              ws->close_timeout == 250);
        pgw_config_unref(c);
    }
    EXPECT_ERROR(WS("yes"), 9, "routes[0].websocket: expected true or false");
    EXPECT_ERROR(WS("[1]"), 9, "routes[0].websocket: expected a map, got a list");
    EXPECT_ERROR(WS("{ max_mesage: 1k }"), 9, "routes[0].websocket: unknown key \"max_mesage\"");
    EXPECT_ERROR(WS("{ max_message: 0 }"), 9, "routes[0].websocket.max_message: \"0\" is below");
    EXPECT_ERROR(WS("{ max_message: 2g }"), 9, "routes[0].websocket.max_message");
    EXPECT_ERROR(WS("{ allowed_origins: [] }"), 9, "allowed_origins: must not be empty");
    EXPECT_ERROR(WS("{ allowed_origins: [app.example.com] }"), 9,
                 "\"app.example.com\" is not an origin");
    EXPECT_ERROR(WS("{ allowed_origins: [\"https://a.example.com/path\"] }"), 9,
                 "is not an origin");
    EXPECT_ERROR(WS("{ allowed_origins: [\"https://\"] }"), 9, "is not an origin");
    EXPECT_ERROR(ROUTES "  - name: h\n    type: status\n    listeners: [public]\n"
                        "    match: { path: /h }\n    websocket: true\n",
                 9, "routes[0].websocket: not allowed on a status route");
    EXPECT_ERROR(BASE "limits: { websocket_buffer: 1k }\n", 3, "limits.websocket_buffer");
#undef WS
}

/* websocket.selection / actions / default: route selection per message */
static void test_route_websocket_selection(void)
{
#define WS(v) ROUTES "  - name: r\n    listeners: [public]\n    upstream: u\n" \
                    "    match: { path: /ws }\n    websocket: " v "\n"
#define ACT "actions: { join: { policies: [a] }, \"say it\": { policies: [b, c: { x: 1 }] } }"
    pgw_config_policy_engine = 1;
    struct pgw_config *c = EXPECT_OK(WS("{ selection: \"$request.body.meta.type\", " ACT ", "
                                        "default: { policies: [d] } }"));
    if (c != NULL) {
        const struct pgw_config_websocket *ws = c->routes[0].websocket;
        CHECK(ws != NULL && ws->selection_depth == 2 && ws->num_actions == 2);
        if (ws != NULL && ws->selection_depth == 2 && ws->num_actions == 2) {
            CHECK(strcmp(ws->selection[0], "meta") == 0 && strcmp(ws->selection[1], "type") == 0);
            CHECK(strcmp(ws->actions[0].name, "join") == 0 && ws->actions[0].name_len == 4);
            CHECK(strcmp(ws->actions[1].name, "say it") == 0 && ws->actions[1].policies.n == 2);
            CHECK(strcmp(ws->actions[1].policies.v[1].conf_json, "{\"x\":1}") == 0);
            CHECK(ws->default_policies.n == 1 && strcmp(ws->default_policies.v[0].name, "d") == 0);
        }
        pgw_config_unref(c);
    }
    c = EXPECT_OK(WS("{ selection: action, " ACT " }"));
    if (c != NULL) {
        const struct pgw_config_websocket *ws = c->routes[0].websocket;
        CHECK(ws != NULL && ws->selection_depth == 1 && ws->default_policies.n == 0);
        pgw_config_unref(c);
    }
    EXPECT_ERROR(WS("{ selection: action }"), 9, "websocket.selection: needs websocket.actions");
    EXPECT_ERROR(WS("{ " ACT " }"), 9, "websocket.actions: needs websocket.selection");
    EXPECT_ERROR(WS("{ selection: a, " ACT ", default: { policies: [] } }"), 9,
                 "websocket.default.policies: must not be empty");
    EXPECT_ERROR(WS("{ default: { policies: [d] } }"), 9, "websocket.default: goes with");
    EXPECT_ERROR(WS("{ selection: \"a..b\", " ACT " }"), 9, "(a field name is empty)");
    EXPECT_ERROR(WS("{ selection: \"$request.body.\", " ACT " }"), 9, "a field name is empty");
    EXPECT_ERROR(WS("{ selection: \"a b\", " ACT " }"), 9, "a space or a control character");
    EXPECT_ERROR(WS("{ selection: a.b.c.d.e.f.g.h.i, " ACT " }"), 9, "more than 8 levels");
    EXPECT_ERROR(WS("{ selection: [a], " ACT " }"), 9, "websocket.selection: expected a dotted");
    EXPECT_ERROR(WS("{ selection: a, actions: {} }"), 9, "must name 1 to 256 actions");
    EXPECT_ERROR(WS("{ selection: \"$request.body\", " ACT " }"), 9,
                 "the AWS form is $request.body.<field>");
    EXPECT_ERROR(WS("{ selection: a, actions: { \"a\\tb\": { policies: [a] } } }"), 9,
                 "no control character");
    EXPECT_ERROR(WS("{ selection: a, actions: { j: [a] } }"), 9, "expected a map, got a list");
    EXPECT_ERROR(WS("{ selection: a, actions: { j: { policies: [a], upstream: u } } }"), 9,
                 "unknown key \"upstream\" (allowed: policies)");
    EXPECT_ERROR(WS("{ selection: a, actions: { j: {} } }"), 9, "missing required key \"policies\"");
    EXPECT_ERROR(WS("{ selection: a, actions: { j: { policies: [\"Bad\"] } } }"), 9,
                 "is not a policy name");
    pgw_config_policy_engine = 0;
#undef ACT
#undef WS
}

static void test_route_match(void)
{
#define MATCH(m) ROUTES "  - name: r\n    listeners: [public]\n    upstream: u\n    match: " m "\n"
    EXPECT_ERROR(MATCH("{ path: users }"), 8, "routes[0].match.path: \"users\": path pattern");
    EXPECT_ERROR(MATCH("{ path: \"/a/{id\" }"), 8, "\"/a/{id\": unbalanced '{'");
    EXPECT_ERROR(MATCH("{ path: \"/a/../b\" }"), 8, "is not a normalised path");
    EXPECT_ERROR(MATCH("{ path: \"\" }"), 8, "routes[0].match.path: must not be empty");
    EXPECT_ERROR(MATCH("{ path: /, host: \"a.example.com:8080\" }"), 8,
                 "routes[0].match.host: \"a.example.com:8080\": the host must not carry a port");
    EXPECT_ERROR(MATCH("{ path: /, host: \"a.*.com\" }"), 8,
                 "a wildcard is only allowed as a whole first label");
    EXPECT_ERROR(MATCH("{ path: /, host: \"*\" }"), 8, "only allowed as a whole first label");
    EXPECT_ERROR(MATCH("{ path: /, host: \"*example.com\" }"), 8, "wildcard");
    EXPECT_ERROR(MATCH("{ path: /, host: \"ex ample.com\" }"), 8, "host names use only");
    EXPECT_ERROR(MATCH("{ path: /, host: \"[::1]:80\" }"), 8, "brackets must hold an IPv6");
    EXPECT_ERROR(MATCH("{ path: /, methods: [] }"), 8,
                 "routes[0].match.methods: must not be empty: leave it out to allow any method");
    EXPECT_ERROR(MATCH("{ path: /, methods: [GET, \"G T\"] }"), 8, "invalid method \"G T\"");
    EXPECT_ERROR(MATCH("{ path: /, methods: [GET, \"\"] }"), 8, "invalid method \"\"");
    EXPECT_ERROR(MATCH("{ path: /, methods: [GET, get] }"), 8, "GET is listed twice");
    EXPECT_ERROR(MATCH("{ path: /, methods: GET }"), 8, "methods: expected a list, got a string");
    EXPECT_ERROR(MATCH("[/]"), 8, "routes[0].match: expected a map, got a list");

    struct pgw_config *c = EXPECT_OK(MATCH("{ path: /a/b, host: \"::1\", methods: [m-search, "
                                           "PROPFIND] }"));
    if (c != NULL) {
        const struct pgw_config_route *r = &c->routes[0];
        CHECK_STR(r->host, "::1");
        CHECK_INT(r->path_kind, PGW_PATH_EXACT);
        CHECK_STR(r->methods[0], "M-SEARCH");
        CHECK_STR(r->methods[1], "PROPFIND");
        pgw_config_unref(c);
    }
#undef MATCH
}

static void test_logs(void)
{
    struct pgw_config *c = EXPECT_OK(BASE "access_log: off\n");
    if (c != NULL) {
        CHECK_INT(c->access_log.enabled, 0);
        pgw_config_unref(c);
    }
    c = EXPECT_OK(BASE "access_log: { path: \"-\" }\nerror_log: { level: debug }\n");
    if (c != NULL) {
        CHECK_INT(c->access_log.enabled, 1);
        CHECK_STR(c->access_log.path, "-");
        CHECK_INT(c->access_log.flush, 1000);
        CHECK_INT(c->error_log.level, PGW_LOG_DEBUG);
        CHECK_STR(c->error_log.path, "-");
        pgw_config_unref(c);
    }
    static const struct { const char *flush; uint64_t ms; } flushes[] = {
        {"0", 0}, {"0ms", 0}, {"250ms", 250}, {"5s", 5000}, {"1m", 60000}};
    for (size_t i = 0; i < PGW_ARRAY_LEN(flushes); i++) {
        char yaml[128];
        snprintf(yaml, sizeof(yaml), BASE "access_log: { path: a.log, flush: %s }\n",
                 flushes[i].flush);
        c = EXPECT_OK(yaml);
        if (c != NULL) {
            CHECK_INT(c->access_log.flush, flushes[i].ms);
            pgw_config_unref(c);
        }
    }
    EXPECT_ERROR(BASE "access_log: { path: a.log, flush: 60001ms }\n", 3, "flush");
    EXPECT_ERROR(BASE "access_log: { path: a.log, flush: soon }\n", 3, "flush");
    EXPECT_ERROR(BASE "access_log: { path: a.log, flush: [1s] }\n", 3, "flush");
    static const char *const levels[] = {"debug", "info", "notice", "warn", "error"};
    for (int i = 0; i < 5; i++) {
        char yaml[128];
        snprintf(yaml, sizeof(yaml), BASE "error_log: { level: %s, path: e.log }\n", levels[i]);
        c = EXPECT_OK(yaml);
        if (c != NULL) {
            CHECK_INT(c->error_log.level, i);
            CHECK_STR(c->error_log.path, "e.log");
            pgw_config_unref(c);
        }
    }
    EXPECT_ERROR(BASE "access_log: on\n", 3,
                 "access_log: expected off or a map {path, format, flush}, got \"on\"");
    EXPECT_ERROR(BASE "access_log:\n", 3, "expected off or a map {path, format, flush}, got nothing");
    EXPECT_ERROR(BASE "access_log: { format: text }\n", 3,
                 "access_log.format: expected one of json, got \"text\"");
    EXPECT_ERROR(BASE "access_log: { path: \"\" }\n", 3, "access_log.path: must not be empty");
    EXPECT_ERROR(BASE "error_log: { level: warning }\n", 3,
                 "error_log.level: expected one of debug, info, notice, warn, error, got "
                 "\"warning\"");
    EXPECT_ERROR(BASE "error_log: { path: [a] }\n", 3, "error_log.path: expected a string");
}

static void test_resolver(void)
{
    struct pgw_config *c = EXPECT_OK(BASE);
    if (c != NULL) {
        CHECK_INT(c->resolver.num_nameservers, 0);
        CHECK_INT(c->resolver.timeout, 2000);
        pgw_config_unref(c);
    }
    c = EXPECT_OK(BASE "resolver: { nameservers: [\"10.0.0.2:53\", \"[::1]:5353\"], "
                       "timeout: 250ms }\n");
    if (c != NULL) {
        CHECK_INT(c->resolver.num_nameservers, 2);
        CHECK_STR(c->resolver.nameservers[0].host, "10.0.0.2");
        CHECK_INT(c->resolver.nameservers[0].port, 53);
        CHECK_STR(c->resolver.nameservers[1].host, "::1");
        CHECK_INT(c->resolver.nameservers[1].port, 5353);
        CHECK_INT(c->resolver.timeout, 250);
        pgw_config_unref(c);
    }
    EXPECT_ERROR(BASE "resolver: { nameservers: [\"dns.example:53\"] }\n", 3,
                 "resolver.nameservers: \"dns.example:53\": a name server is an IP address");
    EXPECT_ERROR(BASE "resolver: { nameservers: [\"10.0.0.2\"] }\n", 3, "missing port");
    EXPECT_ERROR(BASE "resolver: { nameservers: \"10.0.0.2:53\" }\n", 3,
                 "resolver.nameservers: expected a list");
    EXPECT_ERROR(BASE "resolver: { timeout: 0s }\n", 3, "resolver.timeout");
    EXPECT_ERROR(BASE "resolver: { ttl: 5s }\n", 3, "ttl");
}

static void test_processes(void)
{
    struct pgw_config *c = EXPECT_OK(BASE);
    if (c != NULL) {
        CHECK_INT(c->workers, 0); /* auto */
        CHECK_STR(c->control_socket, "logs/passerelle.sock");
        CHECK_INT(c->timeouts.drain, 30000);
        pgw_config_unref(c);
    }
    c = EXPECT_OK(BASE "workers: 4\ncontrol: { socket: /run/p.sock }\ntimeouts: { drain: 2m }\n");
    if (c != NULL) {
        CHECK_INT(c->workers, 4);
        CHECK_STR(c->control_socket, "/run/p.sock");
        CHECK_INT(c->timeouts.drain, 120000);
        pgw_config_unref(c);
    }
    c = EXPECT_OK(BASE "workers: auto\n");
    if (c != NULL) {
        CHECK_INT(c->workers, 0);
        pgw_config_unref(c);
    }
    EXPECT_ERROR(BASE "workers: 0\n", 3, "workers");
    EXPECT_ERROR(BASE "workers: 257\n", 3, "workers");
    EXPECT_ERROR(BASE "workers: \"4\"\n", 3, "expected auto or a number 1..256");
    EXPECT_ERROR(BASE "workers: many\n", 3, "workers");
    EXPECT_ERROR(BASE "control: { sock: x }\n", 3, "control: unknown key \"sock\"");
    EXPECT_ERROR(BASE "control: { socket: \"\" }\n", 3, "control.socket: must not be empty");
    char yaml[400];
    snprintf(yaml, sizeof(yaml), BASE "control: { socket: /%0120d }\n", 0);
    EXPECT_ERROR(yaml, 3, "control.socket: the path must be shorter than 100 bytes");
}

#define POLICY_BASE                                                                                \
    "listeners:\n"                                                                                 \
    "  - name: public\n"                                                                           \
    "    address: \"127.0.0.1:8080\"\n"                                                           \
    "    policies: [ request_id, { cors: { origins: [\"*\"] } } ]\n"                               \
    "upstreams: { u: { targets: [\"127.0.0.1:9\"] } }\n"                                          \
    "routes:\n"                                                                                    \
    "  - name: r\n"                                                                                \
    "    listeners: [public]\n"                                                                    \
    "    match: { path: / }\n"                                                                     \
    "    upstream: u\n"                                                                            \
    "    policies:\n"

static void test_policies(void)
{
    /* without the engine, a policy list is refused: it would never run */
    EXPECT_ERROR(POLICY_BASE "      - key_auth\n", 4, "policies are not run by this version");
    pgw_config_policy_engine = 1;
    struct pgw_config *c = EXPECT_OK(
        POLICY_BASE "      - key_auth: { header: apikey, hide: true }\n"
                    "      - rate_limit: { limit: 100, window: 1m, burst: 1.5e2, by: null }\n"
                    "      - my_transform\n"
                    "      - empty:\n"
                    "      - quoted: { n: \"42\", s: \"caf\xc3\xa9 \\\"q\\\"\", l: [1, two, -0.5], "
                    "m: { x: ~ } }\n"
                    "policies: { dir: /etc/passerelle/policies }\n");
    if (c == NULL)
        return;
    CHECK_STR(c->policies_dir, "/etc/passerelle/policies");
    const struct pgw_config_policies *lp = &c->listeners[0].policies;
    CHECK_INT(lp->n, 2);
    CHECK_STR(lp->v[0].name, "request_id");
    CHECK_STR(lp->v[0].conf_json, "{}");
    CHECK_STR(lp->v[1].name, "cors");
    CHECK_STR(lp->v[1].conf_json, "{\"origins\":[\"*\"]}");
    const struct pgw_config_policies *rp = &c->routes[0].policies;
    CHECK_INT(rp->n, 5);
    CHECK_STR(rp->v[0].name, "key_auth");
    CHECK_STR(rp->v[0].conf_json, "{\"header\":\"apikey\",\"hide\":true}");
    CHECK_INT(rp->v[0].line, 12);
    CHECK_STR(rp->v[1].conf_json, "{\"limit\":100,\"window\":\"1m\",\"burst\":1.5e2,\"by\":null}");
    CHECK_STR(rp->v[2].name, "my_transform");
    CHECK_STR(rp->v[2].conf_json, "{}");
    CHECK_STR(rp->v[3].name, "empty");
    CHECK_STR(rp->v[3].conf_json, "{}");
    CHECK_STR(rp->v[4].conf_json, "{\"n\":\"42\",\"s\":\"caf\xc3\xa9 \\\"q\\\"\",\"l\":[1,\"two\",-0.5],"
                                  "\"m\":{\"x\":null}}");
    pgw_config_unref(c);

    c = EXPECT_OK(BASE);
    if (c != NULL) {
        CHECK_STR(c->policies_dir, "policies");
        CHECK_INT(c->listeners[0].policies.n, 0);
        pgw_config_unref(c);
    }
    EXPECT_ERROR(POLICY_BASE "      - KeyAuth\n", 12, "\"KeyAuth\" is not a policy name");
    EXPECT_ERROR(POLICY_BASE "      - a: {}\n        b: {}\n", 12, "each entry names one policy");
    EXPECT_ERROR(POLICY_BASE "      - key_auth: [1]\n", 12, "the settings of key_auth must be a map");
    EXPECT_ERROR(POLICY_BASE "      - [x]\n", 12, "expected a policy name");
    EXPECT_ERROR(POLICY_BASE "      - x\npolicies: { directory: x }\n", 13,
                 "policies: unknown key \"directory\"");
    EXPECT_ERROR(BASE "routes: []\npolicies: [a]\n", 4, "policies: expected a map");
    pgw_config_policy_engine = 0;
}

/* ---- Several errors, the buffer, files, refcounts ---- */

static void test_many_errors(void)
{
    static const char yaml[] = "listeners:\n"                                      /* 1 */
                               "  - { name: a, address: \":80\", backlog: x }\n"    /* 2 */
                               "limits:\n"                                         /* 3 */
                               "  body: 10q\n"                                     /* 4 */
                               "routes:\n"                                         /* 5 */
                               "  - { name: r, listeners: [b], match: { path: / }, upstream: u }\n"
                               "timeouts: { send: 0 }\n"                           /* 7 */
                               "bogus: 1\n"                                        /* 8 */
                               "limits: {}\n";                                     /* 9 */
    EXPECT_ERROR(yaml, 2, "listeners[0].backlog: expected a non-negative integer, got \"x\"");
    CHECK(has_error(4, "limits.body: expected a size"));
    CHECK(has_error(6, "unknown listener \"b\""));
    CHECK(has_error(6, "unknown upstream \"u\""));
    CHECK(has_error(7, "timeouts.send: \"0\" is below the minimum"));
    CHECK(has_error(8, "unknown top-level key \"bogus\""));
    CHECK(has_error(9, "duplicate key \"limits\" (first at line 3)"));
    CHECK_INT(count_lines(), 7);
    /* sorted by line, one per line, each "FILE:LINE: " */
    unsigned last = 0;
    for (const char *p = errbuf; *p != '\0'; p = strchr(p, '\n') + 1) {
        unsigned line = 0;
        CHECK(sscanf(p, NAME ":%u: ", &line) == 1);
        CHECK(line >= last);
        last = line;
    }
}

static void test_errbuf_truncation(void)
{
    static const char yaml[] = "a: 1\nb: 2\nc: 3\nd: 4\ne: 5\n";
    char small[300]; /* room for one whole line and the note, not for two lines */
    memset(small, 'x', sizeof(small));
    struct pgw_config *c = pgw_config_load_string(NAME, yaml, strlen(yaml), small, sizeof(small));
    CHECK(c == NULL);
    size_t len = strnlen(small, sizeof(small));
    CHECK(len < sizeof(small));
    CHECK(len > 0 && small[len - 1] == '\n'); /* whole lines only */
    CHECK(strncmp(small, NAME ":1: unknown top-level key \"a\"", 30) == 0);
    CHECK(strstr(small, "more error(s) not shown") != NULL);

    char tiny[10];
    c = pgw_config_load_string(NAME, yaml, strlen(yaml), tiny, sizeof(tiny));
    CHECK(c == NULL);
    CHECK_MEM(tiny, strlen(tiny), "t.yaml:1:");

    c = pgw_config_load_string(NAME, yaml, strlen(yaml), NULL, 0);
    CHECK(c == NULL);
    c = pgw_config_load_string(NAME, BASE, strlen(BASE), NULL, 0);
    CHECK(c != NULL);
    pgw_config_unref(c);
}

static void test_load_file_and_refs(void)
{
    char path[] = "/tmp/pgw_config_test_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd != -1);
    if (fd == -1)
        return;
    CHECK(write(fd, full, sizeof(full) - 1) == (ssize_t)(sizeof(full) - 1));
    close(fd);
    struct pgw_config *c = pgw_config_load(path, errbuf, sizeof(errbuf));
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK_STR(c->file, path);
        CHECK_INT(c->num_routes, 4);
        CHECK(pgw_config_ref(c) == c);
        CHECK_INT(c->refs, 2);
        pgw_config_unref(c);
        CHECK_INT(c->refs, 1);
        pgw_config_unref(c);
    }
    pgw_config_unref(NULL);

    fd = open(path, O_WRONLY | O_TRUNC);
    CHECK(write(fd, "listeners: 5\n", 13) == 13);
    close(fd);
    c = pgw_config_load(path, errbuf, sizeof(errbuf));
    CHECK(c == NULL);
    char want[128];
    snprintf(want, sizeof(want), "%s:1: listeners: expected a list", path);
    CHECK(strncmp(errbuf, want, strlen(want)) == 0);
    unlink(path);

    c = pgw_config_load(path, errbuf, sizeof(errbuf));
    CHECK(c == NULL);
    snprintf(want, sizeof(want), "%s: cannot read: No such file or directory\n", path);
    CHECK(strcmp(errbuf, want) == 0);
}

/* TLS keys (config_tls.c): shapes only; the files are checked by tls.c. */
static void test_tls(void)
{
#define TLSL(t) "listeners:\n  - name: s\n    address: \"127.0.0.1:8443\"\n    tls: " t "\n"
    struct pgw_config *c = EXPECT_OK(TLSL("{ certificates: [ { cert: a.pem, key: a.key } ] }"));
    if (c != NULL) {
        const struct pgw_config_listener_tls *t = c->listeners[0].tls;
        CHECK(t != NULL && t->num_certs == 1 && t->session_tickets == 1);
        CHECK(t != NULL && t->protocols == (PGW_TLS_V12 | PGW_TLS_V13));
        CHECK(t != NULL && t->handshake_timeout == 10000 && t->verify_depth == 4);
        CHECK(t != NULL && t->verify_client == PGW_TLS_VERIFY_OFF && !t->reject_unknown_sni);
        CHECK_INT(c->tls_ticket_rotation, 3600 * 1000);
        pgw_config_unref(c);
    }
    c = EXPECT_OK(TLSL("{ certificates: [ { cert: a.pem, key: a.key } ], protocols: [TLSv1.3], "
                       "unknown_sni: reject, verify_client: required, client_ca: ca.pem, "
                       "handshake_timeout: 2s }") "tls: { ticket_rotation: 10m }\n");
    if (c != NULL) {
        const struct pgw_config_listener_tls *t = c->listeners[0].tls;
        CHECK(t->protocols == PGW_TLS_V13 && t->reject_unknown_sni);
        CHECK(t->verify_client == PGW_TLS_VERIFY_REQUIRED && t->handshake_timeout == 2000);
        CHECK_STR(t->client_ca, "ca.pem");
        CHECK_INT(c->tls_ticket_rotation, 600 * 1000);
        pgw_config_unref(c);
    }
    EXPECT_ERROR(TLSL("{ }"), 4, "listeners[0].tls: missing required key \"certificates\"");
    EXPECT_ERROR(TLSL("{ certificates: [] }"), 4, "at least one {cert, key}");
    EXPECT_ERROR(TLSL("{ certificates: [ { cert: a.pem } ] }"), 4,
                 "certificates[0]: missing required key \"key\"");
    EXPECT_ERROR(TLSL("{ certificates: [ { cert: a.pem, key: k, pass: x } ] }"), 4,
                 "unknown key \"pass\"");
    EXPECT_ERROR(TLSL("{ certificates: [ { cert: a, key: k } ], protocols: [TLSv1.1] }"), 4,
                 "expected one of TLSv1.2, TLSv1.3");
    EXPECT_ERROR(TLSL("{ certificates: [ { cert: a, key: k } ], verify_client: required }"), 4,
                 "needs client_ca");
    EXPECT_ERROR(TLSL("{ certificates: [ { cert: a, key: k } ], unknown_sni: drop }"), 4,
                 "expected one of default, reject");
    EXPECT_ERROR(TLSL("{ certificates: [ { cert: a, key: k } ], ciphers: \"\" }"), 4,
                 "ciphers: must not be empty");
    EXPECT_ERROR(BASE "tls: { ticket_rotation: 10s }\n", 3, "below the minimum");
#define UPT(t) BASE "upstreams:\n  u:\n    targets: [\"h:1\"]\n    tls: " t "\n"
    c = EXPECT_OK(UPT("true"));
    CHECK(c != NULL && c->upstreams[0].tls != NULL && c->upstreams[0].tls->verify == 1);
    pgw_config_unref(c);
    c = EXPECT_OK(UPT("false"));
    CHECK(c != NULL && c->upstreams[0].tls == NULL);
    pgw_config_unref(c);
    c = EXPECT_OK(UPT("{ ca: ca.pem, server_name: api.example, verify: false }"));
    CHECK(c != NULL && c->upstreams[0].tls->verify == 0);
    CHECK(c != NULL && strcmp(c->upstreams[0].tls->server_name, "api.example") == 0);
    pgw_config_unref(c);
    EXPECT_ERROR(UPT("{ cert: c.pem }"), 6, "cert and key go together");
    EXPECT_ERROR(UPT("yes"), 6, "YAML 1.2");
    EXPECT_ERROR(UPT("{ sni: x }"), 6, "unknown key \"sni\"");
#undef UPT
#undef TLSL
}

int main(void)
{
    RUN(test_full);
    RUN(test_defaults);
    RUN(test_parse_size);
    RUN(test_parse_duration);
    RUN(test_size_and_duration_fields);
    RUN(test_empty);
    RUN(test_syntax_errors);
    RUN(test_duplicate_keys);
    RUN(test_anchors_and_aliases);
    RUN(test_nesting_bound);
    RUN(test_unknown_keys);
    RUN(test_wrong_types);
    RUN(test_listeners);
    RUN(test_real_ip);
    RUN(test_limits);
    RUN(test_upstream_targets);
    RUN(test_upstream_fields);
    RUN(test_route_references);
    RUN(test_route_types);
    RUN(test_route_websocket);
    RUN(test_route_websocket_selection);
    RUN(test_route_match);
    RUN(test_logs);
    RUN(test_resolver);
    RUN(test_processes);
    RUN(test_policies);
    RUN(test_many_errors);
    RUN(test_errbuf_truncation);
    RUN(test_load_file_and_refs);
    RUN(test_tls);
    return TEST_REPORT("config");
}
