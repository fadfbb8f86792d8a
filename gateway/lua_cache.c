/* lua_cache.c: pgw.cache (docs/sdk.md), a per-worker LRU cache with TTL, one namespace per
 * policy. The cache is process-global plain C memory (malloc), not Lua memory: it survives policy
 * reloads, it is bounded by its own limits (pgw_lua_cache_configure) and not by the state's cap.
 *
 * Structure: a chained hash table (SipHash-1-3 with a random key, so that keys chosen by clients
 * cannot pile up in one chain) over entries that also sit on a doubly linked list, most recently
 * used first; every operation is O(1) apart from the table doubling. An entry's key is
 * "<policy>\0<key>", the policy being pgw_bridge_current()->policy. Values are copies of a
 * string, a number or a boolean, with their type. Expiry uses CLOCK_MONOTONIC; an expired entry
 * is dropped when a lookup meets it in its chain, when it reaches the end of the LRU list, or by
 * eviction.
 *
 * Limits: max_entries entries and max_bytes bytes, counting per entry its key, its string value
 * and CACHE_ENTRY_OVERHEAD; when a set goes past either, the least recently used entries are
 * evicted. One entry may not take more than max_bytes / 8 (set returns nil, "too large").
 *
 * Threads: the worker's thread only.
 */
#include "lua_bridge.h"

#include <math.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>

#define CACHE_STAGES (PGW_STAGES_ANY & ~PGW_STAGE_LOAD)
#define CACHE_DEFAULT_ENTRIES 10000
#define CACHE_DEFAULT_BYTES (16u << 20)
#define CACHE_MIN_BUCKETS 64
#define CACHE_KEY_STACK 256   /* composite keys up to this size are built on the C stack */
#define CACHE_EXPIRED_SWEEP 4 /* expired entries dropped from the LRU end per set, at most */

struct cache_entry {
    struct cache_entry *hnext;       /* hash chain */
    struct cache_entry *prev, *next; /* LRU list, most recent first */
    uint64_t hash;
    uint64_t expires; /* CLOCK_MONOTONIC ns; 0: never */
    size_t klen, vlen;
    int type; /* LUA_TSTRING, LUA_TNUMBER or LUA_TBOOLEAN */
    union {
        double number;
        int boolean;
    } v;
    char data[]; /* key (klen bytes), then the string value (vlen bytes) */
};

#define CACHE_ENTRY_OVERHEAD sizeof(struct cache_entry)

static struct {
    struct cache_entry **buckets;
    size_t nbuckets, count, bytes;
    size_t max_entries, max_bytes;
    struct cache_entry *head, *tail;
    uint64_t key[2];
    int keyed;
} cache = {.max_entries = CACHE_DEFAULT_ENTRIES, .max_bytes = CACHE_DEFAULT_BYTES};

/* Test hook (spec/unit/lua_util_test.c includes this file): added to the clock. */
static uint64_t cache_clock_skew_ns;

static uint64_t cache_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + cache_clock_skew_ns;
}

/* ---- Hashing: SipHash-1-3 ---- */

#define ROTL64(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND(v0, v1, v2, v3)                                                                   \
    do {                                                                                           \
        v0 += v1, v1 = ROTL64(v1, 13), v1 ^= v0, v0 = ROTL64(v0, 32);                              \
        v2 += v3, v3 = ROTL64(v3, 16), v3 ^= v2;                                                   \
        v0 += v3, v3 = ROTL64(v3, 21), v3 ^= v0;                                                   \
        v2 += v1, v1 = ROTL64(v1, 17), v1 ^= v2, v2 = ROTL64(v2, 32);                              \
    } while (0)

static uint64_t load_le64(const unsigned char *p, size_t n)
{
    uint64_t m = 0;
    for (size_t i = 0; i < n; i++)
        m |= (uint64_t)p[i] << (8 * i);
    return m;
}

static uint64_t cache_siphash(const unsigned char *in, size_t n)
{
    uint64_t v0 = 0x736f6d6570736575ull ^ cache.key[0], v1 = 0x646f72616e646f6dull ^ cache.key[1];
    uint64_t v2 = 0x6c7967656e657261ull ^ cache.key[0], v3 = 0x7465646279746573ull ^ cache.key[1];
    size_t whole = n & ~(size_t)7;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = load_le64(in + i, 8);
        v3 ^= m;
        SIPROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    uint64_t b = (uint64_t)n << 56 | load_le64(in + whole, n - whole);
    v3 ^= b;
    SIPROUND(v0, v1, v2, v3);
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND(v0, v1, v2, v3);
    SIPROUND(v0, v1, v2, v3);
    SIPROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

static void cache_init_key(void)
{
    if (getrandom(cache.key, sizeof(cache.key), GRND_NONBLOCK) != (ssize_t)sizeof(cache.key)) {
        cache.key[0] = cache_now() ^ (uint64_t)(uintptr_t)&cache;
        cache.key[1] = cache.key[0] * 0x9e3779b97f4a7c15ull;
    }
    cache.keyed = 1;
}

/* ---- The table and the list ---- */

static size_t entry_size(const struct cache_entry *e)
{
    return CACHE_ENTRY_OVERHEAD + e->klen + e->vlen;
}

static void lru_unlink(struct cache_entry *e)
{
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        cache.head = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    else
        cache.tail = e->prev;
}

static void lru_push_front(struct cache_entry *e)
{
    e->prev = NULL;
    e->next = cache.head;
    if (cache.head != NULL)
        cache.head->prev = e;
    cache.head = e;
    if (cache.tail == NULL)
        cache.tail = e;
}

static struct cache_entry **bucket_of(uint64_t hash)
{
    return &cache.buckets[hash & (cache.nbuckets - 1)];
}

/* Unlinks <e> from its chain (<link> points at the pointer to it) and the list, and frees it. */
static void entry_drop(struct cache_entry **link, struct cache_entry *e)
{
    *link = e->hnext;
    lru_unlink(e);
    cache.count--;
    cache.bytes -= entry_size(e);
    free(e);
}

/* Same, when the chain position is not known. */
static void entry_drop_any(struct cache_entry *e)
{
    struct cache_entry **link = bucket_of(e->hash);
    while (*link != e)
        link = &(*link)->hnext;
    entry_drop(link, e);
}

static int is_expired(const struct cache_entry *e, uint64_t now)
{
    return e->expires != 0 && e->expires <= now;
}

/* The live entry for <key,klen>, or NULL. Expired entries met on the way are dropped. */
static struct cache_entry *cache_find(const char *key, size_t klen, uint64_t hash, uint64_t now)
{
    if (cache.nbuckets == 0)
        return NULL;
    struct cache_entry **link = bucket_of(hash);
    while (*link != NULL) {
        struct cache_entry *e = *link;
        if (is_expired(e, now)) {
            entry_drop(link, e);
            continue;
        }
        if (e->hash == hash && e->klen == klen && memcmp(e->data, key, klen) == 0)
            return e;
        link = &e->hnext;
    }
    return NULL;
}

static void cache_grow(void)
{
    size_t n = cache.nbuckets == 0 ? CACHE_MIN_BUCKETS : cache.nbuckets * 2;
    struct cache_entry **buckets = pgw_calloc(n, sizeof(*buckets));
    for (size_t i = 0; i < cache.nbuckets; i++) {
        struct cache_entry *e = cache.buckets[i];
        while (e != NULL) {
            struct cache_entry *next = e->hnext;
            e->hnext = buckets[e->hash & (n - 1)];
            buckets[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(cache.buckets);
    cache.buckets = buckets;
    cache.nbuckets = n;
}

/* Evicts from the LRU end: expired entries (a few), then whatever exceeds the limits. */
static void cache_evict(uint64_t now)
{
    for (int i = 0; i < CACHE_EXPIRED_SWEEP && cache.tail != NULL; i++) {
        if (!is_expired(cache.tail, now))
            break;
        entry_drop_any(cache.tail);
    }
    while (cache.tail != NULL && (cache.count > cache.max_entries || cache.bytes > cache.max_bytes))
        entry_drop_any(cache.tail);
}

/* Takes ownership of <e> (hash, key and value set), replacing any entry with its key. */
static void cache_insert(struct cache_entry *e, uint64_t now)
{
    struct cache_entry *old = cache_find(e->data, e->klen, e->hash, now);
    if (old != NULL)
        entry_drop_any(old);
    if (cache.count >= cache.nbuckets)
        cache_grow();
    struct cache_entry **bucket = bucket_of(e->hash);
    e->hnext = *bucket;
    *bucket = e;
    lru_push_front(e);
    cache.count++;
    cache.bytes += entry_size(e);
    cache_evict(now);
}

/* Test hook, and for a worker that exits: drops every entry and the table. */
void pgw_lua_cache_reset(void)
{
    while (cache.tail != NULL)
        entry_drop_any(cache.tail);
    free(cache.buckets);
    cache.buckets = NULL;
    cache.nbuckets = 0;
}

/* Sets the limits (both > 0), evicting at once what exceeds them. */
void pgw_lua_cache_configure(size_t max_entries, size_t max_bytes)
{
    pgw_assert(max_entries > 0 && max_bytes > 0);
    cache.max_entries = max_entries;
    cache.max_bytes = max_bytes;
    cache_evict(cache_now());
}

/* ---- Lua API ---- */

static int cache_arg_error(lua_State *L, const char *fname, int arg, const char *expected)
{
    return luaL_error(L, "%s: bad argument #%d (%s expected, got %s)", fname, arg, expected,
                      luaL_typename(L, arg));
}

/* The composite key "<policy>\0<key>" of argument 1, hashed. */
struct cache_key {
    const char *base;
    size_t len;
    uint64_t hash;
    char stack[CACHE_KEY_STACK];
};

static void cache_check_key(lua_State *L, const char *fname)
{
    if (lua_type(L, 1) != LUA_TSTRING)
        cache_arg_error(L, fname, 1, "string");
}

/* Builds the composite key of argument 1 (checked), in <k->stack> or in a userdata pushed at
 * index <nargs> + 1 (the stack is cut there first, so the userdata never passes for an argument).
 * May raise "not enough memory", before anything is acquired. */
static void cache_key_build(lua_State *L, int nargs, struct cache_key *k)
{
    lua_settop(L, nargs);
    size_t klen;
    const char *key = lua_tolstring(L, 1, &klen);
    const struct pgw_bridge_run *run = pgw_bridge_current();
    const char *policy = run != NULL && run->policy != NULL ? run->policy : "";
    size_t plen = strlen(policy);
    size_t len = plen + 1 + klen;
    char *buf = len <= CACHE_KEY_STACK ? k->stack : lua_newuserdata(L, len);
    memcpy(buf, policy, plen);
    buf[plen] = '\0';
    memcpy(buf + plen + 1, key, klen);
    if (!cache.keyed)
        cache_init_key();
    k->base = buf;
    k->len = len;
    k->hash = cache_siphash((const unsigned char *)buf, len);
}

static void cache_push_value(lua_State *L, const struct cache_entry *e)
{
    if (e->type == LUA_TSTRING)
        lua_pushlstring(L, e->data + e->klen, e->vlen);
    else if (e->type == LUA_TNUMBER)
        lua_pushnumber(L, e->v.number);
    else
        lua_pushboolean(L, e->v.boolean);
}

/* pgw.cache.get(key) -> value | nil */
static int l_cache_get(lua_State *L)
{
    pgw_bridge_check(L, "pgw.cache.get", CACHE_STAGES);
    cache_check_key(L, "pgw.cache.get");
    struct cache_key k;
    cache_key_build(L, 1, &k);
    struct cache_entry *e = cache_find(k.base, k.len, k.hash, cache_now());
    if (e == NULL) {
        lua_pushnil(L);
        return 1;
    }
    lru_unlink(e);
    lru_push_front(e);
    cache_push_value(L, e);
    return 1;
}

/* Argument 3 of set: nil (no expiry) or seconds > 0. Returns the expiry time, 0 for never. */
static uint64_t cache_check_ttl(lua_State *L, uint64_t now)
{
    if (lua_isnoneornil(L, 3))
        return 0;
    if (lua_type(L, 3) != LUA_TNUMBER || !(lua_tonumber(L, 3) > 0))
        cache_arg_error(L, "pgw.cache.set", 3, "positive number or nil");
    double ns = ceil(lua_tonumber(L, 3) * 1e9);
    if (ns >= 4e18) /* over a century: never */
        return 0;
    return now + (uint64_t)ns;
}

/* pgw.cache.set(key, value[, ttl]) -> true | nil, "too large" */
static int l_cache_set(lua_State *L)
{
    pgw_bridge_check(L, "pgw.cache.set", CACHE_STAGES);
    cache_check_key(L, "pgw.cache.set");
    int type = lua_type(L, 2);
    if (type != LUA_TSTRING && type != LUA_TNUMBER && type != LUA_TBOOLEAN)
        cache_arg_error(L, "pgw.cache.set", 2, "string, number or boolean");
    uint64_t now = cache_now();
    uint64_t expires = cache_check_ttl(L, now);
    struct cache_key k;
    cache_key_build(L, 3, &k);
    size_t vlen = 0;
    const char *value = type == LUA_TSTRING ? lua_tolstring(L, 2, &vlen) : NULL;
    if (CACHE_ENTRY_OVERHEAD + k.len + vlen > cache.max_bytes / 8) {
        lua_pushnil(L);
        lua_pushliteral(L, "too large");
        return 2;
    }
    /* Nothing below raises. */
    struct cache_entry *e = pgw_malloc(CACHE_ENTRY_OVERHEAD + k.len + vlen);
    e->hash = k.hash;
    e->expires = expires;
    e->klen = k.len;
    e->vlen = vlen;
    e->type = type;
    memcpy(e->data, k.base, k.len);
    if (type == LUA_TSTRING)
        memcpy(e->data + k.len, value, vlen);
    else if (type == LUA_TNUMBER)
        e->v.number = lua_tonumber(L, 2);
    else
        e->v.boolean = lua_toboolean(L, 2);
    cache_insert(e, now);
    lua_pushboolean(L, 1);
    return 1;
}

/* pgw.cache.delete(key) */
static int l_cache_delete(lua_State *L)
{
    pgw_bridge_check(L, "pgw.cache.delete", CACHE_STAGES);
    cache_check_key(L, "pgw.cache.delete");
    struct cache_key k;
    cache_key_build(L, 1, &k);
    struct cache_entry *e = cache_find(k.base, k.len, k.hash, cache_now());
    if (e != NULL)
        entry_drop_any(e);
    return 0;
}

/* Sets field cache = { get, set, delete } on the table at the top of the stack (pgw.core). */
void pgw_lua_open_cache(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"get", l_cache_get}, {"set", l_cache_set}, {"delete", l_cache_delete}, {NULL, NULL}};
    lua_createtable(L, 0, 3);
    for (const luaL_Reg *f = funcs; f->name != NULL; f++) {
        lua_pushcfunction(L, f->func);
        lua_setfield(L, -2, f->name);
    }
    lua_setfield(L, -2, "cache");
}
