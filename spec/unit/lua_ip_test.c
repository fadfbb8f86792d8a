/* lua_ip_test.c: pgw.ip (lua_ip.c): the compiled matcher (ranges sorted and merged per family,
 * binary search) checked against addr.c's linear pgw_cidr_match_any, and the Lua API (errors,
 * invalid input, the memory cap). lua_ip.c is included to reach its statics; it needs nothing of
 * the bridge, so no fake bridge functions are defined here. */
#include "../../gateway/lua_ip.c"
#include "../support/test.h"
#include "../support/lua_snippets.h"

#include <arpa/inet.h>
#include <time.h>

/* ---- Helpers ---- */

#define CAP (64u * 1024 * 1024)


static const char prelude[] =
    SNIPPETS_PRELUDE;

static void open_modules(lua_State *L)
{
    pgw_lua_open_ip(L);
}

static struct pgw_lua *new_state(size_t cap) { return snippets_state(cap, open_modules, prelude); }

static struct pgw_lua *lua;

/* A matcher built in C memory from string CIDRs (all valid). Free with free(). */
static struct ip_matcher *build(const char *const *list, size_t n)
{
    struct pgw_cidr *c = malloc((n ? n : 1) * sizeof(*c));
    size_t cap4 = 0, cap6 = 0;
    for (size_t i = 0; i < n; i++) {
        if (pgw_cidr_parse(list[i], strlen(list[i]), &c[i]) != PGW_OK) {
            fprintf(stderr, "FAIL %s: bad test CIDR %s\n", test_current, list[i]);
            test_current_failed = 1;
            n = i;
            break;
        }
        unsigned s = cidr_slots(&c[i]);
        cap4 += (s & SLOT_V4) != 0;
        cap6 += (s & SLOT_V6) != 0;
    }
    struct ip_matcher *m = malloc(matcher_size(cap4, cap6));
    matcher_init(m, cap4, cap6);
    for (size_t i = 0; i < n; i++)
        CHECK(matcher_add(m, &c[i]));
    matcher_finish(m);
    free(c);
    return m;
}

static int q(const struct ip_matcher *m, const char *addr)
{
    struct sockaddr_storage ss;
    if (pgw_addr_parse_ip(addr, strlen(addr), &ss, NULL) != PGW_OK) {
        fprintf(stderr, "FAIL %s: bad test address %s\n", test_current, addr);
        test_current_failed = 1;
        return -1;
    }
    return matcher_match(m, (const struct sockaddr *)&ss);
}

#define BUILD(...)                                                                                 \
    build((const char *const[]){__VA_ARGS__},                                                     \
          sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *))

/* ---- The compiled matcher ---- */

static void test_v4(void)
{
    struct ip_matcher *m = BUILD("10.0.0.0/8", "192.0.2.7", "172.16.5.9/12");
    CHECK_INT(m->n4, 3);
    CHECK_INT(m->n6, 0);
    CHECK_INT(q(m, "10.0.0.0"), 1);
    CHECK_INT(q(m, "10.255.255.255"), 1);
    CHECK_INT(q(m, "9.255.255.255"), 0);
    CHECK_INT(q(m, "11.0.0.0"), 0);
    CHECK_INT(q(m, "192.0.2.7"), 1); /* a bare address is a /32 */
    CHECK_INT(q(m, "192.0.2.6"), 0);
    CHECK_INT(q(m, "192.0.2.8"), 0);
    CHECK_INT(q(m, "172.16.0.0"), 1); /* host bits cleared: 172.16.0.0/12 */
    CHECK_INT(q(m, "172.31.255.255"), 1);
    CHECK_INT(q(m, "172.32.0.0"), 0);
    CHECK_INT(q(m, "::1"), 0);
    CHECK_INT(q(m, "::a00:1"), 0); /* IPv4-compatible (deprecated) is not mapped */
    free(m);

    m = BUILD("203.0.113.9/32");
    CHECK_INT(q(m, "203.0.113.9"), 1);
    CHECK_INT(q(m, "203.0.113.10"), 0);
    CHECK_INT(q(m, "203.0.113.8"), 0);
    free(m);

    m = BUILD("0.0.0.0/0");
    CHECK_INT(m->n4, 1);
    CHECK_INT(q(m, "0.0.0.0"), 1);
    CHECK_INT(q(m, "255.255.255.255"), 1);
    CHECK_INT(q(m, "::ffff:1.2.3.4"), 1);
    CHECK_INT(q(m, "::"), 0);
    CHECK_INT(q(m, "2001:db8::1"), 0);
    free(m);

    m = BUILD("1.2.3.4"); /* lookups below and above the only range */
    CHECK_INT(q(m, "0.0.0.0"), 0);
    CHECK_INT(q(m, "255.255.255.255"), 0);
    free(m);

    m = build(NULL, 0); /* the empty list matches nothing */
    CHECK_INT(q(m, "1.2.3.4"), 0);
    CHECK_INT(q(m, "::1"), 0);
    free(m);
}

static void test_v6(void)
{
    struct ip_matcher *m = BUILD("2001:db8::/32", "::1", "fe80::/10", "2001:db8:ffff::1/128");
    CHECK_INT(m->n6, 3); /* the /128 lies inside 2001:db8::/32 */
    CHECK_INT(m->n4, 0);
    CHECK_INT(q(m, "2001:db8::"), 1);
    CHECK_INT(q(m, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"), 1);
    CHECK_INT(q(m, "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff"), 0);
    CHECK_INT(q(m, "2001:db9::"), 0);
    CHECK_INT(q(m, "::1"), 1);
    CHECK_INT(q(m, "::2"), 0);
    CHECK_INT(q(m, "::"), 0);
    CHECK_INT(q(m, "fe80::1"), 1);
    CHECK_INT(q(m, "febf:ffff::1"), 1);
    CHECK_INT(q(m, "fec0::"), 0);
    CHECK_INT(q(m, "127.0.0.1"), 0);
    free(m);

    /* a /128 and the ends of the space, where lo/hi arithmetic could overflow */
    m = BUILD("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::/128");
    CHECK_INT(m->n6, 2);
    CHECK_INT(q(m, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 1);
    CHECK_INT(q(m, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"), 0);
    CHECK_INT(q(m, "::"), 1);
    CHECK_INT(q(m, "::1"), 0);
    free(m);

    /* a prefix that is not a multiple of 8 or 64 */
    m = BUILD("2001:db8:0:8000::/49");
    CHECK_INT(q(m, "2001:db8:0:8000::"), 1);
    CHECK_INT(q(m, "2001:db8:0:ffff:ffff:ffff:ffff:ffff"), 1);
    CHECK_INT(q(m, "2001:db8:0:7fff:ffff:ffff:ffff:ffff"), 0);
    CHECK_INT(q(m, "2001:db8:1::"), 0);
    free(m);

    m = BUILD("::/0");
    CHECK_INT(m->n6, 1);
    CHECK_INT(m->n4, 1); /* ::/0 holds ::ffff:0:0/96, so every IPv4 address */
    CHECK_INT(q(m, "::"), 1);
    CHECK_INT(q(m, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 1);
    CHECK_INT(q(m, "0.0.0.0"), 1);
    CHECK_INT(q(m, "255.255.255.255"), 1);
    free(m);
}

static void test_mapped(void)
{
    /* IPv4 ranges hold IPv4-mapped IPv6 addresses */
    struct ip_matcher *m = BUILD("10.0.0.0/8", "192.0.2.7");
    CHECK_INT(q(m, "::ffff:10.1.2.3"), 1);
    CHECK_INT(q(m, "::ffff:a01:203"), 1); /* the same address written in hex */
    CHECK_INT(q(m, "::FFFF:192.0.2.7"), 1);
    CHECK_INT(q(m, "::ffff:192.0.2.8"), 0);
    CHECK_INT(q(m, "::ffff:11.0.0.1"), 0);
    CHECK_INT(q(m, "64:ff9b::10.1.2.3"), 0); /* NAT64 is not mapped */
    free(m);

    /* IPv6 ranges inside ::ffff:0:0/96 are the IPv4 ranges they map */
    m = BUILD("::ffff:10.0.0.0/104", "::ffff:192.0.2.7");
    CHECK_INT(m->n4, 2);
    CHECK_INT(m->n6, 0);
    CHECK_INT(q(m, "10.9.8.7"), 1);
    CHECK_INT(q(m, "::ffff:10.9.8.7"), 1);
    CHECK_INT(q(m, "11.0.0.0"), 0);
    CHECK_INT(q(m, "192.0.2.7"), 1);
    free(m);

    /* ranges that contain all of ::ffff:0:0/96 hold every IPv4 address; others none */
    const char *const holders[] = {"::ffff:0:0/96", "::/80", "::/64", "::/1", "::ff00:0:0/88"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(holders); i++) {
        m = build(&holders[i], 1);
        CHECK_INT(q(m, "1.2.3.4"), 1);
        CHECK_INT(q(m, "::ffff:255.255.255.255"), 1);
        free(m);
    }
    const char *const others[] = {"::/97",    "::/95",         "::/81",        "::fffe:0:0/96",
                                  "8000::/1", "2001:db8::/32", "::ffff:0:0/97"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(others); i++) {
        m = build(&others[i], 1);
        CHECK_INT(q(m, "200.2.3.4"), 0);
        free(m);
    }
    m = BUILD("::ffff:0:0/97"); /* the lower half of the IPv4 space */
    CHECK_INT(q(m, "127.255.255.255"), 1);
    CHECK_INT(q(m, "128.0.0.0"), 0);
    free(m);
}

static void test_merge(void)
{
    /* overlapping ranges: one range */
    struct ip_matcher *m = BUILD("10.1.0.0/16", "10.0.0.0/8", "10.1.2.3", "10.200.0.0/13");
    CHECK_INT(m->n4, 1);
    CHECK_INT(m->v4[0].lo, 0x0a000000);
    CHECK_INT(m->v4[0].hi, 0x0affffff);
    free(m);

    /* adjacent ranges join, in any order; a gap of one address does not */
    m = BUILD("10.128.0.0/9", "10.0.0.0/9", "10.0.0.1");
    CHECK_INT(m->n4, 1);
    free(m);
    m = BUILD("192.0.2.1", "192.0.2.0", "192.0.2.2", "192.0.2.3");
    CHECK_INT(m->n4, 1);
    CHECK_INT(m->v4[0].lo, 0xc0000200);
    CHECK_INT(m->v4[0].hi, 0xc0000203);
    free(m);
    m = BUILD("192.0.2.1", "192.0.2.3", "192.0.2.5");
    CHECK_INT(m->n4, 3);
    CHECK_INT(q(m, "192.0.2.2"), 0);
    CHECK_INT(q(m, "192.0.2.3"), 1);
    CHECK_INT(q(m, "192.0.2.4"), 0);
    free(m);

    /* the top of the space: hi + 1 would overflow */
    m = BUILD("255.255.255.255", "255.255.255.254", "0.0.0.0/0", "128.0.0.0/1");
    CHECK_INT(m->n4, 1);
    CHECK_INT(m->v4[0].lo, 0);
    CHECK_INT(m->v4[0].hi, UINT32_MAX);
    free(m);
    m = BUILD("255.255.255.255", "255.255.255.253");
    CHECK_INT(m->n4, 2);
    free(m);

    /* duplicates */
    m = BUILD("1.2.3.4", "1.2.3.4", "1.2.3.4/32", "::ffff:1.2.3.4");
    CHECK_INT(m->n4, 1);
    free(m);

    /* IPv6: overlapping, adjacent (across a 64-bit word boundary), nested, the top */
    m = BUILD("2001:db8::/33", "2001:db8:8000::/33", "2001:db8::5", "2001:db8:1::/48");
    CHECK_INT(m->n6, 1);
    CHECK(m->v6[0].lo.hi == 0x20010db800000000ull && m->v6[0].lo.lo == 0);
    CHECK(m->v6[0].hi.hi == 0x20010db8ffffffffull && m->v6[0].hi.lo == UINT64_MAX);
    free(m);
    m = BUILD("2001:db8:0:1::/64", "2001:db8::/64");
    CHECK_INT(m->n6, 1);
    free(m);
    m = BUILD("2001:db8::ffff:ffff:ffff:ffff", "2001:db8:0:1::");
    CHECK_INT(m->n6, 1);
    free(m);
    m = BUILD("2001:db8::ffff:ffff:ffff:fffe", "2001:db8:0:1::");
    CHECK_INT(m->n6, 2);
    CHECK_INT(q(m, "2001:db8::ffff:ffff:ffff:ffff"), 0);
    free(m);
    m = BUILD("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::/0", "8000::/1");
    CHECK_INT(m->n6, 1);
    free(m);
}

/* ---- Random lists against the linear check ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    uint64_t x = rng_state; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dull;
}

static void clear_host_bits(struct pgw_cidr *c)
{
    unsigned max = c->family == AF_INET ? 32 : 128;
    for (unsigned bit = c->prefix; bit < max; bit++)
        c->addr[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
}

/* A random CIDR, written as text and parsed: IPv4 (prefixes 16..32, a few 12..15), IPv4 written
 * as IPv4-mapped IPv6 ranges, IPv6 in 2001::/16 (prefixes 40..128, a few 33..39), and rarely
 * IPv6 ranges just below the mapped space (::/81..::/95). Ranges that hold the whole mapped space
 * (hence every IPv4 address) are left to test_mapped: one of them would make every IPv4 query a
 * hit. */
static void random_fresh(struct pgw_cidr *c)
{
    char text[64], buf[INET6_ADDRSTRLEN];
    unsigned kind = (unsigned)(rnd() % 100);
    uint8_t a[16];
    for (int i = 0; i < 16; i++)
        a[i] = (uint8_t)rnd();
    a[0] = (uint8_t)(1 + a[0] % 223);
    if (kind < 55) {
        unsigned prefix = kind < 3 ? 12 + (unsigned)(rnd() % 4) : 16 + (unsigned)(rnd() % 17);
        snprintf(text, sizeof(text), "%u.%u.%u.%u/%u", a[0], a[1], a[2], a[3], prefix);
    } else if (kind < 65) {
        unsigned prefix = 96 + 16 + (unsigned)(rnd() % 17);
        snprintf(text, sizeof(text), "::ffff:%u.%u.%u.%u/%u", a[0], a[1], a[2], a[3], prefix);
    } else if (kind < 66) {
        snprintf(text, sizeof(text), "::/%u", 81 + (unsigned)(rnd() % 15));
    } else {
        memcpy(a, "\x20\x01", 2);
        unsigned prefix = kind < 68 ? 33 + (unsigned)(rnd() % 7) : 40 + (unsigned)(rnd() % 89);
        inet_ntop(AF_INET6, a, buf, sizeof(buf));
        snprintf(text, sizeof(text), "%s/%u", buf, prefix);
    }
    if (pgw_cidr_parse(text, strlen(text), c) != PGW_OK) {
        fprintf(stderr, "FAIL %s: random CIDR %s does not parse\n", test_current, text);
        test_current_failed = 1;
    }
}

/* A range that overlaps or touches <base>: inside it, around it, or its sibling (the block of
 * the same size next to it, which merges with it). */
static void random_variant(struct pgw_cidr *c, const struct pgw_cidr *base)
{
    unsigned max = base->family == AF_INET ? 32 : 128;
    unsigned min = base->family == AF_INET ? 8 : memcmp(base->addr, v4mapped, 12) == 0 ? 104 : 34;
    static const uint8_t zero[10];
    *c = *base;
    if (base->family == AF_INET6 && memcmp(base->addr, zero, 10) == 0 &&
        memcmp(base->addr, v4mapped, 12) != 0)
        return; /* ::/81..::/95: a wider range or the sibling would hold the mapped space */
    switch (rnd() % 3) {
    case 0: /* inside */
        c->prefix += (unsigned)(rnd() % 5);
        if (c->prefix > max)
            c->prefix = max;
        for (unsigned bit = base->prefix; bit < c->prefix; bit++)
            if (rnd() & 1)
                c->addr[bit / 8] |= (uint8_t)(0x80u >> (bit % 8));
        break;
    case 1: /* around */
        c->prefix -= (unsigned)(rnd() % 3);
        if (c->prefix < min)
            c->prefix = min;
        break;
    default: /* the sibling */
        if (c->prefix > min)
            c->addr[(c->prefix - 1) / 8] ^= (uint8_t)(0x80u >> ((c->prefix - 1) % 8));
    }
    clear_host_bits(c);
}

/* Fills <ss> with a random address near the edges of <c> (one below, first, last, one above) or
 * inside it, in the form a client may use (IPv4, or IPv4-mapped IPv6 half the time). */
static void random_addr_near(const struct pgw_cidr *c, struct sockaddr_storage *ss)
{
    uint8_t a[16];
    uint64_t r = rnd();
    int v4 = c->family == AF_INET;
    size_t len = v4 ? 4 : 16;
    unsigned prefix = c->prefix;
    memcpy(a, c->addr, len);
    switch (r % 5) {
    case 0: /* first */
        break;
    case 1: /* last */
    case 3: /* one above: last + 1 */
        for (unsigned bit = prefix; bit < len * 8; bit++)
            a[bit / 8] |= (uint8_t)(0x80u >> (bit % 8));
        if (r % 5 == 3)
            for (size_t i = len; i-- > 0 && ++a[i] == 0;)
                ;
        break;
    case 2: /* one below: first - 1 */
        for (size_t i = len; i-- > 0 && a[i]-- == 0;)
            ;
        break;
    default: /* anywhere inside */
        for (unsigned bit = prefix; bit < len * 8; bit++)
            if (rnd() & 1)
                a[bit / 8] |= (uint8_t)(0x80u >> (bit % 8));
    }
    memset(ss, 0, sizeof(*ss));
    if (v4 && (rnd() & 1)) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        memcpy(&sin->sin_addr, a, 4);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        sin6->sin6_family = AF_INET6;
        if (v4) {
            memcpy(sin6->sin6_addr.s6_addr, v4mapped, 12);
            memcpy(sin6->sin6_addr.s6_addr + 12, a, 4);
        } else {
            memcpy(sin6->sin6_addr.s6_addr, a, 16);
        }
    }
}

static void test_random_vs_linear(void)
{
    enum { N = 10000, QUERIES = 40000, TIMED = 200000 };
    struct pgw_cidr *list = malloc(N * sizeof(*list));
    size_t cap4 = 0, cap6 = 0;
    for (size_t i = 0; i < N; i++) {
        if (i > 0 && rnd() % 10 < 3)
            random_variant(&list[i], &list[rnd() % i]);
        else
            random_fresh(&list[i]);
        unsigned s = cidr_slots(&list[i]);
        cap4 += (s & SLOT_V4) != 0;
        cap6 += (s & SLOT_V6) != 0;
    }
    struct ip_matcher *m = malloc(matcher_size(cap4, cap6));
    matcher_init(m, cap4, cap6);
    for (size_t i = 0; i < N; i++)
        CHECK(matcher_add(m, &list[i]));
    matcher_finish(m);
    /* the random list had overlaps and adjacent ranges, and still many ranges */
    CHECK(m->n4 < cap4 && m->n6 < cap6);
    CHECK(m->n4 > 1000 && m->n6 > 1000);
    /* the merged ranges are sorted, disjoint and not adjacent */
    for (size_t i = 1; i < m->n4; i++)
        CHECK((uint64_t)m->v4[i - 1].hi + 1 < m->v4[i].lo);
    for (size_t i = 1; i < m->n6; i++)
        CHECK(!v6_joins(m->v6[i].lo, m->v6[i - 1].hi) &&
              u128_cmp(m->v6[i - 1].lo, m->v6[i].lo) < 0);

    size_t hits = 0, misses = 0, mismatches = 0;
    for (size_t k = 0; k < QUERIES; k++) {
        struct sockaddr_storage ss;
        if (k % 4 == 0) { /* anywhere, in the neighbourhood of the list or not */
            struct pgw_cidr c;
            memset(&c, 0, sizeof(c));
            c.family = rnd() & 1 ? AF_INET : AF_INET6;
            for (int i = 0; i < 16; i++)
                c.addr[i] = (uint8_t)rnd();
            if (c.family == AF_INET)
                c.addr[0] = (uint8_t)(1 + c.addr[0] % 223);
            else if (rnd() & 1)
                memcpy(c.addr, "\x20\x01", 2);
            c.prefix = c.family == AF_INET ? 32 : 128;
            random_addr_near(&c, &ss);
        } else {
            random_addr_near(&list[rnd() % N], &ss);
        }
        int want = pgw_cidr_match_any(list, N, (const struct sockaddr *)&ss);
        int got = matcher_match(m, (const struct sockaddr *)&ss);
        if (want != got && mismatches++ < 5) {
            char buf[PGW_ADDR_STRLEN];
            pgw_addr_format((const struct sockaddr *)&ss, buf, sizeof(buf));
            fprintf(stderr, "FAIL %s: %s: matcher %d, linear %d\n", test_current, buf, got, want);
            test_current_failed = 1;
        }
        if (want)
            hits++;
        else
            misses++;
    }
    CHECK_INT(mismatches, 0);
    if (!(hits > QUERIES / 10 && misses > QUERIES / 10)) { /* both answers were exercised */
        fprintf(stderr, "FAIL %s: %zu hits, %zu misses\n", test_current, hits, misses);
        test_current_failed = 1;
    }

    /* The lookup is a binary search: 200k lookups in a 10k list take well under a second even
     * under the sanitizers (the linear check takes about 1.5 s for 10k lookups). */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    size_t found = 0;
    for (size_t k = 0; k < TIMED; k++) {
        struct sockaddr_storage ss;
        random_addr_near(&list[k % N], &ss);
        found += (size_t)matcher_match(m, (const struct sockaddr *)&ss);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    CHECK(found > 0);
    CHECK(secs < 1.0);
    free(m);
    free(list);
}

/* ---- The Lua API ---- */

static void test_lua_api(void)
{
    LUA(lua, "local m = pgw.ip.matcher({ '10.0.0.0/8', '2001:db8::/32', '192.0.2.7' })\n"
             "eq(type(m), 'userdata')\n"
             "eq(m:match('10.1.2.3'), true); eq(m:match('11.0.0.1'), false)\n"
             "eq(m:match('2001:db8::1'), true); eq(m:match('2001:db9::1'), false)\n"
             "eq(m:match('::ffff:10.1.2.3'), true, 'mapped')\n"
             "eq(m:match('192.0.2.7'), true); eq(m:match('192.0.2.8'), false)\n"
             "eq(getmetatable(m), 'pgw.ip.matcher')\n"
             "eq(tostring(m), 'pgw.ip.matcher (2 IPv4 ranges, 1 IPv6 ranges)')\n"
             "local e = pgw.ip.matcher({})\n"
             "eq(e:match('1.2.3.4'), false); eq(e:match('::'), false)\n");
    /* unparsable addresses: nil, "invalid address" */
    LUA(lua, "local m = pgw.ip.matcher({ '0.0.0.0/0', '::/0' })\n"
             "for _, a in ipairs({ '', 'x', '1.2.3', '1.2.3.4.5', '256.0.0.1', '010.0.0.1',\n"
             "    ' 1.2.3.4', '1.2.3.4 ', '1.2.3.4/32', '[::1]', 'fe80::1%eth0', '1.2.3.4:80',\n"
             "    '1.2.3.4\\0', ':::', '1::2::3', string.rep('1', 100) }) do\n"
             "  local ok, e = m:match(a)\n"
             "  eq(ok, nil, a); eq(e, 'invalid address', a)\n"
             "  eq(pgw.ip.valid(a), false, a)\n"
             "end\n");
    LUA(lua, "for _, a in ipairs({ '1.2.3.4', '0.0.0.0', '255.255.255.255', '::', '::1',\n"
             "    '2001:DB8::1', '::ffff:1.2.3.4', 'fe80::1:2:3:4' }) do\n"
             "  eq(pgw.ip.valid(a), true, a)\n"
             "end\n");
    /* misuse raises */
    LUA(lua, "local m = pgw.ip.matcher({ '10.0.0.0/8' })\n"
             "raises('pgw.ip.matcher:match: bad argument #1 (string expected, got number)',\n"
             "  m.match, m, 10)\n"
             "raises('pgw.ip.matcher:match: bad argument #1 (string expected, got nil)',\n"
             "  m.match, m, nil)\n"
             "raises('pgw.ip.matcher:match: bad argument #1 (string expected, got no value)',\n"
             "  m.match, m)\n"
             "raises('pgw.ip.matcher:match: bad self (a pgw.ip.matcher expected, got string)',\n"
             "  m.match, '10.0.0.1')\n"
             "raises('bad self (a pgw.ip.matcher expected, got userdata)', m.match,\n"
             "  io.stdout, '10.0.0.1')\n"
             "raises('pgw.ip.valid: bad argument #1 (string expected, got nil)',\n"
             "  pgw.ip.valid, nil)\n"
             "raises('pgw.ip.valid: bad argument #1 (string expected, got number)',\n"
             "  pgw.ip.valid, 1)\n"
             "raises('pgw.ip.matcher: bad argument #1 (table expected, got string)',\n"
             "  pgw.ip.matcher, '10.0.0.0/8')\n"
             "raises('pgw.ip.matcher: bad argument #1 (table expected, got no value)',\n"
             "  pgw.ip.matcher)\n"
             "raises('pgw.ip.matcher: bad item 2 (string expected, got number)',\n"
             "  pgw.ip.matcher, { '10.0.0.0/8', 10 })\n"
             "raises('pgw.ip.matcher: bad item 1 (string expected, got table)',\n"
             "  pgw.ip.matcher, { {} })\n");
}

static void test_lua_invalid_cidrs(void)
{
    LUA(lua, "local bad = { '10.0.0.0/33', '::/129', '010.0.0.1', '10.0.0.0/08', ' 10.0.0.1',\n"
             "  '10.0.0.1 ', '[::1]', '[::1]/128', 'fe80::1%eth0', '', '10.0.0', '1.2.3.4/',\n"
             "  'abc', '1.2.3.4/-1', '1.2.3.4/+8', '1.2.3.4/8/8', '::/', '/8', '1.2.3.4/1000',\n"
             "  '256.1.1.1', 'localhost', '10.0.0.0 /8', '1.2.3.4/ 8', '::ffff:1.2.3.4/129' }\n"
             "for _, b in ipairs(bad) do\n"
             "  raises('pgw.ip.matcher: invalid CIDR \"' .. b .. '\" (item 3)',\n"
             "    pgw.ip.matcher, { '10.0.0.0/8', '::1', b, '1.2.3.4' })\n"
             "end\n");
    /* the exact message, with quoting of unprintable bytes and long items cut */
    LUA(lua, "local ok, e = pcall(pgw.ip.matcher, { '10.0.0.0/8', '::1', 'x' })\n"
             "eq(e, 'pgw.ip.matcher: invalid CIDR \"x\" (item 3)')\n"
             "ok, e = pcall(pgw.ip.matcher, { '1.2.3.4\\0\"' })\n"
             "eq(e, 'pgw.ip.matcher: invalid CIDR \"1.2.3.4\\\\0\\\\34\" (item 1)')\n"
             "ok, e = pcall(pgw.ip.matcher, { string.rep('a', 200) })\n"
             "eq(e, 'pgw.ip.matcher: invalid CIDR \"' .. string.rep('a', 80) ..\n"
             "  '...\" (item 1)')\n");
}

/* A read-only view (what a policy's conf is) reads through its metatable. */
static void test_lua_view(void)
{
    LUA(lua, "local data = { '10.0.0.0/8', '::1' }\n"
             "local view = setmetatable({}, { __index = data, __newindex = error })\n"
             "local m = pgw.ip.matcher(view)\n"
             "eq(m:match('10.0.0.1'), true); eq(m:match('::1'), true)\n"
             "eq(m:match('11.0.0.1'), false)\n");
    /* a list that grows while it is read is refused, not overrun */
    LUA(lua, "local n, data = 0, {}\n"
             "local grow = setmetatable({}, { __index = function(_, i)\n"
             "  n = n + 1\n"
             "  if n <= 3 then return ({ '1.2.3.4', '5.6.7.8' })[i] end\n"
             "  if i <= 4 then return '9.9.9.' .. i end\n"
             "end })\n"
             "raises('pgw.ip.matcher: the list changed while it was read',\n"
             "  pgw.ip.matcher, grow)\n");
}

static void test_lua_large(void)
{
    /* 100k entries compile, and the matcher's memory is Lua's (counted against the cap) */
    lua_State *L = pgw_lua_state(lua);
    lua_gc(L, LUA_GCCOLLECT, 0);
    LUA(lua, "big = {}\n"
             "for i = 0, 99999 do\n"
             "  big[#big + 1] = string.format('%d.%d.%d.0/24', 10 + i % 7, (i * 7) % 256,\n"
             "    i % 256)\n"
             "  big[#big + 1] = string.format('2001:db8:%x:%x::/64', math.floor(i / 256),\n"
             "    i % 256)\n"
             "end\n");
    size_t before = pgw_lua_mem_used(lua);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    LUA(lua, "bigm = pgw.ip.matcher(big)\n");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    size_t after = pgw_lua_mem_used(lua);
    CHECK(after - before >= 100000 * (sizeof(struct v4_range) + sizeof(struct v6_range)));
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    CHECK(secs < 5.0);
    LUA(lua, "eq(bigm:match('11.7.1.200'), true); eq(bigm:match('2001:db8:186:9f::1'), true)\n"
             "eq(bigm:match('2001:db8:186:a0::1'), false); eq(bigm:match('9.0.0.1'), false)\n"
             "big, bigm = nil, nil\n");
    lua_gc(L, LUA_GCCOLLECT, 0);
}

/* The cap refuses a matcher that does not fit: "not enough memory" raised, the state usable. */
static void test_lua_memory_cap(void)
{
    struct pgw_lua *small = new_state(CAP);
    if (small == NULL) {
        test_current_failed = 1;
        return;
    }
    lua_State *L = pgw_lua_state(small);
    /* 200k copies of one string: the table takes 8 bytes an entry, the matcher 32 */
    LUA(small, "list = {}\n"
               "for i = 1, 200000 do list[i] = '2001:db8::/32' end\n");
    lua_gc(L, LUA_GCCOLLECT, 0);
    pgw_lua_set_limit(small, pgw_lua_mem_used(small) + 3u * 1024 * 1024 + PGW_LUA_RESERVE);
    LUA(small, "local ok, e = pcall(pgw.ip.matcher, list)\n"
               "eq(ok, false); eq(e, 'not enough memory')\n"
               "local m = pgw.ip.matcher({ '2001:db8::/32' })\n"
               "eq(m:match('2001:db8::1'), true)\n"
               "list = nil\n");
    pgw_lua_free(small);
}

int main(void)
{
    lua = new_state(CAP);
    if (lua == NULL)
        return 1;

    RUN(test_v4);
    RUN(test_v6);
    RUN(test_mapped);
    RUN(test_merge);
    RUN(test_random_vs_linear);
    RUN(test_lua_api);
    RUN(test_lua_invalid_cidrs);
    RUN(test_lua_view);
    RUN(test_lua_large);
    RUN(test_lua_memory_cap);

    pgw_lua_free(lua);
    return TEST_REPORT("lua_ip");
}
