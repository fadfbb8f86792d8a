/* lua_ip.c: pgw.ip (docs/sdk.md), registered into pgw.core by pgw_lua_open_ip(): IP address
 * checks and CIDR matchers for access-control policies (ip_restriction).
 *
 *   local m = pgw.ip.matcher({ "10.0.0.0/8", "2001:db8::/32", "192.0.2.7" })
 *   m:match("10.1.2.3")  --> true;  m:match("nope") --> nil, "invalid address"
 *   pgw.ip.valid("::1")  --> true
 *
 * A matcher compiles its list once into sorted, non-overlapping ranges, one array per family,
 * so that a lookup is one binary search (O(log n)) whatever the length of the list. Parsing is
 * addr.c's (pgw_cidr_parse, pgw_addr_parse_ip: strict, no whitespace, no leading zeros) and the
 * meaning is pgw_cidr_match_any's: an IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4
 * address a.b.c.d, an IPv6 range that lies inside ::ffff:0:0/96 is the IPv4 range it maps, and an
 * IPv6 range that contains all of ::ffff:0:0/96 (::/0, ::/64, ::ffff:0:0/96) also holds every
 * IPv4 address. Every function runs in any stage (pure computation, no waits).
 *
 * Memory: a matcher is one userdata (header and both range arrays), so the state's memory cap
 * applies and the GC frees it; nothing is allocated outside Lua, and an error raised half-way
 * (a bad entry, "not enough memory", the CPU budget) leaks nothing.
 */
#include "addr.h"
#include "lua_bridge.h"

#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MATCHER_MT "pgw.ip.matcher"
#define GUARD_EVERY 4096 /* list entries read between two CPU-guard polls */

/* ---- Ranges ---- */

struct v4_range {
    uint32_t lo, hi; /* inclusive, host byte order */
};

struct u128 {
    uint64_t hi, lo;
};

struct v6_range {
    struct u128 lo, hi; /* inclusive */
};

/* A compiled list. The arrays follow the header in the same block (a userdata, or malloc'ed
 * memory in the unit tests): cap4/cap6 slots reserved by the first pass over the list, n4/n6
 * used, sorted and merged by matcher_finish(). */
struct ip_matcher {
    size_t n4, n6, cap4, cap6;
    struct v6_range *v6;
    struct v4_range *v4;
};

static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static struct u128 u128_from_bytes(const uint8_t b[16])
{
    struct u128 v = {0, 0};
    for (int i = 0; i < 8; i++) {
        v.hi = v.hi << 8 | b[i];
        v.lo = v.lo << 8 | b[8 + i];
    }
    return v;
}

static int u128_cmp(struct u128 a, struct u128 b)
{
    if (a.hi != b.hi)
        return a.hi < b.hi ? -1 : 1;
    if (a.lo != b.lo)
        return a.lo < b.lo ? -1 : 1;
    return 0;
}

/* The host bits of a /<prefix> (0..128) as a 128-bit mask. */
static struct u128 u128_hostmask(unsigned prefix)
{
    struct u128 m;
    m.hi = prefix >= 64 ? 0 : UINT64_MAX >> prefix;
    m.lo = prefix >= 128 ? 0 : prefix <= 64 ? UINT64_MAX : UINT64_MAX >> (prefix - 64);
    return m;
}

static uint32_t load_be32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | (uint32_t)b[3];
}

static struct v4_range v4_range_of(const uint8_t *addr, unsigned prefix)
{
    uint32_t lo = load_be32(addr);
    uint32_t host = prefix >= 32 ? 0 : UINT32_MAX >> prefix;
    struct v4_range r = {lo & ~host, lo | host};
    return r;
}

/* Where a CIDR goes: an IPv4 range, an IPv6 range, or both (an IPv6 range containing all of
 * ::ffff:0:0/96 holds every IPv4 address too). */
enum { SLOT_V4 = 1, SLOT_V6 = 2 };

static unsigned cidr_slots(const struct pgw_cidr *c)
{
    if (c->family == AF_INET)
        return SLOT_V4;
    if (c->prefix >= 96 && memcmp(c->addr, v4mapped, 12) == 0)
        return SLOT_V4; /* inside the mapped space: the IPv4 range it maps */
    if (c->prefix <= 96) {
        /* does the range contain ::ffff:0:0/96? compare the first <prefix> bits */
        unsigned whole = c->prefix / 8, rest = c->prefix % 8;
        if (memcmp(c->addr, v4mapped, whole) == 0 &&
            (rest == 0 || ((c->addr[whole] ^ v4mapped[whole]) & (0xff00u >> rest)) == 0))
            return SLOT_V4 | SLOT_V6;
    }
    return SLOT_V6;
}

static size_t matcher_size(size_t cap4, size_t cap6)
{
    return sizeof(struct ip_matcher) + cap6 * sizeof(struct v6_range) +
           cap4 * sizeof(struct v4_range);
}

/* <m> is a block of matcher_size(cap4, cap6) bytes. */
static void matcher_init(struct ip_matcher *m, size_t cap4, size_t cap6)
{
    m->n4 = m->n6 = 0;
    m->cap4 = cap4;
    m->cap6 = cap6;
    m->v6 = (struct v6_range *)(m + 1);
    m->v4 = (struct v4_range *)(m->v6 + cap6);
}

/* Adds <c> (before matcher_finish). Returns 0 when the slots reserved are used up. */
static int matcher_add(struct ip_matcher *m, const struct pgw_cidr *c)
{
    unsigned slots = cidr_slots(c);
    if (((slots & SLOT_V4) && m->n4 == m->cap4) || ((slots & SLOT_V6) && m->n6 == m->cap6))
        return 0;
    if (c->family == AF_INET) {
        m->v4[m->n4++] = v4_range_of(c->addr, c->prefix);
        return 1;
    }
    if (slots == SLOT_V4) {
        m->v4[m->n4++] = v4_range_of(c->addr + 12, c->prefix - 96);
        return 1;
    }
    if (slots & SLOT_V4) {
        struct v4_range all = {0, UINT32_MAX};
        m->v4[m->n4++] = all;
    }
    struct u128 net = u128_from_bytes(c->addr), host = u128_hostmask(c->prefix);
    struct v6_range r;
    r.lo.hi = net.hi & ~host.hi;
    r.lo.lo = net.lo & ~host.lo;
    r.hi.hi = net.hi | host.hi;
    r.hi.lo = net.lo | host.lo;
    m->v6[m->n6++] = r;
    return 1;
}

static int cmp_v4(const void *a, const void *b)
{
    const struct v4_range *x = a, *y = b;
    if (x->lo != y->lo)
        return x->lo < y->lo ? -1 : 1;
    return 0;
}

static int cmp_v6(const void *a, const void *b)
{
    const struct v6_range *x = a, *y = b;
    return u128_cmp(x->lo, y->lo);
}

/* Whether a range starting at <lo> touches or overlaps one ending at <hi> (lo <= hi + 1). */
static int v6_joins(struct u128 lo, struct u128 hi)
{
    if (u128_cmp(lo, hi) <= 0)
        return 1;
    /* lo > hi, so hi + 1 does not overflow */
    struct u128 next = hi;
    if (++next.lo == 0)
        next.hi++;
    return u128_cmp(lo, next) == 0;
}

/* Sorts both arrays and merges overlapping and adjacent ranges in place. */
static void matcher_finish(struct ip_matcher *m)
{
    size_t out = 0;
    if (m->n4 > 1)
        qsort(m->v4, m->n4, sizeof(*m->v4), cmp_v4);
    for (size_t i = 0; i < m->n4; i++) {
        struct v4_range r = m->v4[i];
        if (out > 0 && (uint64_t)r.lo <= (uint64_t)m->v4[out - 1].hi + 1) {
            if (r.hi > m->v4[out - 1].hi)
                m->v4[out - 1].hi = r.hi;
        } else {
            m->v4[out++] = r;
        }
    }
    m->n4 = out;

    out = 0;
    if (m->n6 > 1)
        qsort(m->v6, m->n6, sizeof(*m->v6), cmp_v6);
    for (size_t i = 0; i < m->n6; i++) {
        struct v6_range r = m->v6[i];
        if (out > 0 && v6_joins(r.lo, m->v6[out - 1].hi)) {
            if (u128_cmp(r.hi, m->v6[out - 1].hi) > 0)
                m->v6[out - 1].hi = r.hi;
        } else {
            m->v6[out++] = r;
        }
    }
    m->n6 = out;
}

static int match_v4(const struct ip_matcher *m, uint32_t a)
{
    size_t lo = 0, hi = m->n4; /* the first range whose lo > a is in [lo, hi] */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->v4[mid].lo <= a)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && a <= m->v4[lo - 1].hi;
}

static int match_v6(const struct ip_matcher *m, struct u128 a)
{
    size_t lo = 0, hi = m->n6;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (u128_cmp(m->v6[mid].lo, a) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && u128_cmp(a, m->v6[lo - 1].hi) <= 0;
}

/* Whether <sa> (AF_INET or AF_INET6; other families never match) lies in one of the ranges. */
static int matcher_match(const struct ip_matcher *m, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const uint8_t *b = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
        return match_v4(m, load_be32(b));
    }
    if (sa->sa_family != AF_INET6)
        return 0;
    const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    if (memcmp(b, v4mapped, 12) == 0)
        return match_v4(m, load_be32(b + 12));
    return match_v6(m, u128_from_bytes(b));
}

/* ---- Lua ---- */

/* Pushes <s,n> quoted, with control and non-ASCII bytes escaped, cut at 80 bytes. */
static const char *push_quoted(lua_State *L, const char *s, size_t n)
{
    char buf[400];
    size_t j = 0;
    buf[j++] = '"';
    for (size_t i = 0; i < n && i < 80; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
            j += (size_t)snprintf(buf + j, sizeof(buf) - j, "\\%u", c);
        else
            buf[j++] = (char)c;
    }
    if (n > 80)
        j += (size_t)snprintf(buf + j, sizeof(buf) - j, "...");
    buf[j++] = '"';
    lua_pushlstring(L, buf, j);
    return lua_tostring(L, -1);
}

/* Reads item <i> of the list at index 1 (through metamethods, so a read-only view works) into
 * <c>. Returns 0 at the end of the list; raises on an item that is not a valid CIDR string. */
static int list_item(lua_State *L, int i, struct pgw_cidr *c)
{
    lua_pushinteger(L, i);
    lua_gettable(L, 1); /* list ... item */
    int type = lua_type(L, -1);
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (type != LUA_TSTRING)
        luaL_error(L, "pgw.ip.matcher: bad item %d (string expected, got %s)", i,
                   lua_typename(L, type));
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (pgw_cidr_parse(s, len, c) != PGW_OK)
        luaL_error(L, "pgw.ip.matcher: invalid CIDR %s (item %d)", push_quoted(L, s, len), i);
    lua_pop(L, 1);
    if (i % GUARD_EVERY == 0)
        pgw_lua_guard_check(L);
    return 1;
}

/* pgw.ip.matcher(list): a matcher (userdata) for an array of CIDRs and addresses. Raises on a
 * list that is not a table and on an invalid item. Two passes over the list: the first checks
 * and counts, the second fills the userdata sized by the first. */
static int l_ip_matcher(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TTABLE)
        return luaL_error(L, "pgw.ip.matcher: bad argument #1 (table expected, got %s)",
                          luaL_typename(L, 1));
    lua_settop(L, 1);
    size_t cap4 = 0, cap6 = 0;
    struct pgw_cidr c;
    for (int i = 1; list_item(L, i, &c); i++) {
        unsigned slots = cidr_slots(&c);
        cap4 += (slots & SLOT_V4) != 0;
        cap6 += (slots & SLOT_V6) != 0;
        if (i == INT32_MAX)
            return luaL_error(L, "pgw.ip.matcher: list too long");
    }
    if (cap4 + cap6 > (SIZE_MAX - sizeof(struct ip_matcher)) / sizeof(struct v6_range))
        return luaL_error(L, "pgw.ip.matcher: list too long");
    struct ip_matcher *m = lua_newuserdata(L, matcher_size(cap4, cap6)); /* list m */
    matcher_init(m, cap4, cap6);
    luaL_getmetatable(L, MATCHER_MT);
    lua_setmetatable(L, -2);
    for (int i = 1; list_item(L, i, &c); i++)
        if (!matcher_add(m, &c))
            return luaL_error(L, "pgw.ip.matcher: the list changed while it was read");
    matcher_finish(m);
    return 1;
}

static struct ip_matcher *check_matcher(lua_State *L, const char *fname)
{
    void *p = lua_touserdata(L, 1);
    if (p != NULL && lua_getmetatable(L, 1)) {
        luaL_getmetatable(L, MATCHER_MT);
        int same = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (same)
            return p;
    }
    luaL_error(L, "%s: bad self (a pgw.ip.matcher expected, got %s)", fname, luaL_typename(L, 1));
    return NULL;
}

/* m:match(addr): true/false, or nil, "invalid address" when <addr> is not an IP literal. */
static int l_matcher_match(lua_State *L)
{
    static const char fname[] = "pgw.ip.matcher:match";
    const struct ip_matcher *m = check_matcher(L, fname);
    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_error(L, "%s: bad argument #1 (string expected, got %s)", fname,
                          luaL_typename(L, 2));
    size_t len;
    const char *s = lua_tolstring(L, 2, &len);
    struct sockaddr_storage ss;
    if (pgw_addr_parse_ip(s, len, &ss, NULL) != PGW_OK) {
        lua_pushnil(L);
        lua_pushliteral(L, "invalid address");
        return 2;
    }
    lua_pushboolean(L, matcher_match(m, (const struct sockaddr *)&ss));
    return 1;
}

static int l_matcher_tostring(lua_State *L)
{
    const struct ip_matcher *m = check_matcher(L, "pgw.ip.matcher:__tostring");
    lua_pushfstring(L, "pgw.ip.matcher (%d IPv4 ranges, %d IPv6 ranges)", (int)m->n4,
                    (int)m->n6);
    return 1;
}

/* pgw.ip.valid(addr): whether <addr> is an IPv4 or IPv6 address (no prefix, brackets, port or
 * zone). Raises on a non-string. */
static int l_ip_valid(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "pgw.ip.valid: bad argument #1 (string expected, got %s)",
                          luaL_typename(L, 1));
    size_t len;
    const char *s = lua_tolstring(L, 1, &len);
    struct sockaddr_storage ss;
    lua_pushboolean(L, pgw_addr_parse_ip(s, len, &ss, NULL) == PGW_OK);
    return 1;
}

/* Sets `ip` on the table at the top of the stack (pgw.core) and creates the matchers'
 * metatable. Call once per state, at setup. */
void pgw_lua_open_ip(lua_State *L)
{
    lua_newtable(L); /* core ip */
    lua_pushcfunction(L, l_ip_matcher);
    lua_setfield(L, -2, "matcher");
    lua_pushcfunction(L, l_ip_valid);
    lua_setfield(L, -2, "valid");
    lua_setfield(L, -2, "ip");

    luaL_newmetatable(L, MATCHER_MT); /* core mt */
    lua_newtable(L);
    lua_pushcfunction(L, l_matcher_match);
    lua_setfield(L, -2, "match");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_matcher_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, MATCHER_MT);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}
