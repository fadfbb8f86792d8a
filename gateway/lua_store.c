/* lua_store.c: pgw.store (docs/sdk.md), the worker's LMDB store seen from policies: get, set
 * with TTL, delete, and an atomic increment with a limit, which is how exact rate limits and
 * quotas count across every worker of the host. Each call is one short transaction (store.h);
 * nothing waits. Keys live in one namespace per policy ("<policy>\0<key>").
 *
 * Failures return nil and a reason; a full map is logged at most once per 10 s, not per call.
 */
#include "log.h"
#include "lua_bridge.h"
#include "server.h"
#include "store.h"
#include "keys.h"

#include <event2/event.h>
#include <openssl/crypto.h>
#include <sys/time.h>

#define STAGES (PGW_STAGES_ANY & ~PGW_STAGE_LOAD)

static struct pgw_store *cur_store(lua_State *L, const char *fname)
{
    pgw_bridge_check(L, fname, STAGES);
    if (pgw_worker.store == NULL)
        luaL_error(L, "%s: no store configured (add store: { dir: ... } to the config)", fname);
    return pgw_worker.store;
}

uint64_t pgw_lua_store_now_ms(void)
{
    struct timeval tv;
    if (pgw_bridge_base() == NULL || event_base_gettimeofday_cached(pgw_bridge_base(), &tv) != 0)
        gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

/* "<policy>\0<key>" into <buf>; raises on a bad key. Returns the length. */
static size_t full_key(lua_State *L, const char *fname, char *buf)
{
    if (lua_type(L, 1) != LUA_TSTRING)
        luaL_error(L, "%s: bad argument #1 (string expected, got %s)", fname, luaL_typename(L, 1));
    size_t klen;
    const char *key = lua_tolstring(L, 1, &klen);
    const char *pol = pgw_bridge_current()->policy ? pgw_bridge_current()->policy : "";
    size_t plen = strlen(pol);
    if (klen == 0 || plen + 1 + klen > PGW_STORE_KEY_MAX)
        luaL_error(L, "%s: key must be 1 to %d bytes", fname,
                   (int)(PGW_STORE_KEY_MAX - plen - 1));
    memcpy(buf, pol, plen);
    buf[plen] = '\0';
    memcpy(buf + plen + 1, key, klen);
    return plen + 1 + klen;
}

/* Seconds at <idx> (nil or none: 0 = never) into an absolute expiry in ms. */
static uint64_t expiry_arg(lua_State *L, int idx, const char *fname)
{
    if (lua_isnoneornil(L, idx))
        return 0;
    if (lua_type(L, idx) != LUA_TNUMBER || !(lua_tonumber(L, idx) > 0) ||
        lua_tonumber(L, idx) > 10.0 * 365 * 86400)
        luaL_error(L, "%s: bad argument #%d (ttl: seconds > 0, or nil for no expiry)", fname, idx);
    return pgw_lua_store_now_ms() + (uint64_t)(lua_tonumber(L, idx) * 1000.0 + 0.5);
}

static int store_failed(lua_State *L, struct pgw_store *s)
{
    static struct pgw_log_ratelimit fail_log;
    pgw_log_limited(&fail_log, 10000, PGW_LOG_ERROR, "store: %s", pgw_store_error(s));
    lua_pushnil(L);
    lua_pushstring(L, pgw_store_full(s) ? "store full" : "store error");
    return 2;
}

static void push_value(lua_State *L, const struct pgw_store_value *v)
{
    if (v->kind == PGW_STORE_INT)
        lua_pushnumber(L, (lua_Number)v->i);
    else if (v->kind == PGW_STORE_NUMBER)
        lua_pushnumber(L, v->n);
    else
        lua_pushlstring(L, v->bytes, v->len);
}

/* pgw.store.get(key) -> value | nil | nil, reason */
static int l_get(lua_State *L)
{
    struct pgw_store *s = cur_store(L, "pgw.store.get");
    char key[PGW_STORE_KEY_MAX], small[1024];
    size_t klen = full_key(L, "pgw.store.get", key);
    uint64_t now = pgw_lua_store_now_ms();
    struct pgw_store_value v;
    char *buf = small;
    size_t cap = sizeof(small);
    for (int tries = 0; tries < 3; tries++) {
        int r = pgw_store_get(s, key, klen, now, buf, cap, &v);
        if (r == PGW_OK) {
            push_value(L, &v);
            return 1;
        }
        if (r == PGW_DECLINED) {
            lua_pushnil(L);
            return 1;
        }
        if (r == PGW_ERR)
            return store_failed(L, s);
        cap = v.len; /* PGW_AGAIN: larger than the buffer; Lua owns the bigger one */
        buf = lua_newuserdata(L, cap);
    }
    return store_failed(L, s);
}

/* pgw.store.set(key, value[, ttl]) -> true | nil, reason */
static int l_set(lua_State *L)
{
    struct pgw_store *s = cur_store(L, "pgw.store.set");
    char key[PGW_STORE_KEY_MAX];
    size_t klen = full_key(L, "pgw.store.set", key);
    struct pgw_store_value v = {0};
    if (lua_type(L, 2) == LUA_TNUMBER) {
        lua_Number n = lua_tonumber(L, 2);
        if (n == (lua_Number)(int64_t)n && n > -9007199254740992.0 && n < 9007199254740992.0) {
            v.kind = PGW_STORE_INT;
            v.i = (int64_t)n;
        } else {
            v.kind = PGW_STORE_NUMBER;
            v.n = n;
        }
    } else if (lua_type(L, 2) == LUA_TSTRING) {
        v.kind = PGW_STORE_BYTES;
        v.bytes = lua_tolstring(L, 2, &v.len);
        if (v.len > PGW_STORE_VALUE_MAX)
            return luaL_error(L, "pgw.store.set: value longer than %d bytes",
                              (int)PGW_STORE_VALUE_MAX);
    } else {
        return luaL_error(L, "pgw.store.set: bad argument #2 (string or number expected, got %s)",
                          luaL_typename(L, 2));
    }
    uint64_t exp = expiry_arg(L, 3, "pgw.store.set");
    if (pgw_store_set(s, key, klen, &v, exp) != PGW_OK)
        return store_failed(L, s);
    lua_pushboolean(L, 1);
    return 1;
}

/* pgw.store.delete(key) -> true | nil, reason */
static int l_delete(lua_State *L)
{
    struct pgw_store *s = cur_store(L, "pgw.store.delete");
    char key[PGW_STORE_KEY_MAX];
    size_t klen = full_key(L, "pgw.store.delete", key);
    if (pgw_store_delete(s, key, klen) != PGW_OK)
        return store_failed(L, s);
    lua_pushboolean(L, 1);
    return 1;
}

static int64_t int_field(lua_State *L, int t, const char *name, int64_t dflt, const char *fname)
{
    lua_getfield(L, t, name);
    int64_t v = dflt;
    if (!lua_isnil(L, -1)) {
        lua_Number n = lua_tonumber(L, -1);
        if (lua_type(L, -1) != LUA_TNUMBER || n != (lua_Number)(int64_t)n || n < 0 ||
            n > 9007199254740991.0)
            luaL_error(L, "%s: %s must be a non-negative integer", fname, name);
        v = (int64_t)n;
    }
    lua_pop(L, 1);
    return v;
}

/* pgw.store.incr(key[, delta[, { limit = n, ttl = s }]]) -> count | nil, "limit", count |
 * nil, reason */
static int l_incr(lua_State *L)
{
    const char *fname = "pgw.store.incr";
    struct pgw_store *s = cur_store(L, fname);
    char key[PGW_STORE_KEY_MAX];
    size_t klen = full_key(L, fname, key);
    lua_Number d = lua_isnoneornil(L, 2) ? 1 : lua_tonumber(L, 2);
    if ((!lua_isnoneornil(L, 2) && lua_type(L, 2) != LUA_TNUMBER) || d != (lua_Number)(int64_t)d ||
        d < -9007199254740991.0 || d > 9007199254740991.0)
        return luaL_error(L, "%s: bad argument #2 (an integer delta expected)", fname);
    int64_t limit = -1;
    uint64_t exp = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        limit = int_field(L, 3, "limit", -1, fname);
        lua_getfield(L, 3, "ttl");
        exp = expiry_arg(L, lua_gettop(L), fname);
        lua_pop(L, 1);
    }
    int64_t value = 0;
    int r = pgw_store_incr(s, key, klen, (int64_t)d, limit, exp, pgw_lua_store_now_ms(), &value);
    if (r == PGW_ERR)
        return store_failed(L, s);
    if (r == PGW_DECLINED) {
        lua_pushnil(L);
        lua_pushliteral(L, "limit");
        lua_pushnumber(L, (lua_Number)value);
        return 3;
    }
    lua_pushnumber(L, (lua_Number)value);
    return 1;
}

/* ---- Limiters ---- */

static void push_limit(lua_State *L, const struct pgw_store_limit *o)
{
    lua_pushboolean(L, o->allowed);
    lua_pushnumber(L, (lua_Number)o->remaining);
    lua_pushnumber(L, (lua_Number)o->reset_ms / 1000.0);
    lua_pushnumber(L, (lua_Number)o->retry_ms / 1000.0);
}

static lua_Number num_arg(lua_State *L, int idx, const char *fname, const char *what,
                          lua_Number min)
{
    if (lua_type(L, idx) != LUA_TNUMBER || !(lua_tonumber(L, idx) >= min) ||
        lua_tonumber(L, idx) > 9007199254740991.0)
        luaL_error(L, "%s: bad argument #%d (%s)", fname, idx, what);
    return lua_tonumber(L, idx);
}

/* pgw.store.fixed(key, limit, window_start, window_end[, cost]) -> allowed, remaining, reset,
 * retry_after | nil, reason. Times in seconds since the epoch. */
static int l_fixed(lua_State *L)
{
    const char *fname = "pgw.store.fixed";
    struct pgw_store *s = cur_store(L, fname);
    char key[PGW_STORE_KEY_MAX];
    size_t klen = full_key(L, fname, key);
    int64_t limit = (int64_t)num_arg(L, 2, fname, "limit: an integer >= 0", 0);
    lua_Number start = num_arg(L, 3, fname, "window start: seconds", 0);
    lua_Number end = num_arg(L, 4, fname, "window end: seconds after the start", start + 0.001);
    int64_t cost = lua_isnoneornil(L, 5) ? 1 : (int64_t)num_arg(L, 5, fname, "cost >= 0", 0);
    struct pgw_store_limit o;
    if (pgw_store_fixed(s, key, klen, (uint64_t)(start * 1000.0), (uint64_t)(end * 1000.0),
                        limit, cost, pgw_lua_store_now_ms(), &o) != PGW_OK)
        return store_failed(L, s);
    push_limit(L, &o);
    return 4;
}

/* pgw.store.gcra(key, rate, period, burst) -> allowed, remaining, reset, retry_after | nil,
 * reason: <rate> admissions per <period> seconds on average, <burst> more at once. */
static int l_gcra(lua_State *L)
{
    const char *fname = "pgw.store.gcra";
    struct pgw_store *s = cur_store(L, fname);
    char key[PGW_STORE_KEY_MAX];
    size_t klen = full_key(L, fname, key);
    lua_Number rate = num_arg(L, 2, fname, "rate: a number > 0", 1e-9);
    lua_Number period = num_arg(L, 3, fname, "period: seconds > 0", 1e-6);
    int64_t burst = (int64_t)num_arg(L, 4, fname, "burst: an integer >= 0", 0);
    uint64_t period_us = (uint64_t)(period * 1e6 / rate);
    if (period_us == 0)
        period_us = 1;
    struct pgw_store_limit o;
    if (pgw_store_gcra(s, key, klen, period_us, burst, pgw_lua_store_now_ms(), &o) != PGW_OK)
        return store_failed(L, s);
    push_limit(L, &o);
    return 4;
}

/* ---- pgw.keys ---- */

/* Lookups of the same key are answered from a small direct-mapped cache of (key, record,
 * consumer) while the durable environment's version has not changed: any write (a key added,
 * suspended or revoked by the CLI, a plan changed) invalidates every entry at once, so a change
 * is seen by the next request, and a hit costs no HMAC and no transaction. Keys are compared in
 * constant time; the slot hash is seeded per process, so crafted keys can only evict entries. */
#define KC_SLOTS 1024
#define KC_KEY_MAX 96

struct kc_entry {
    uint64_t version; /* 0: empty */
    size_t klen;
    char key[KC_KEY_MAX];
    struct pgw_key_info k;
    struct pgw_consumer_info c;
    int has_consumer;
};

static struct kc_entry *kc;
static uint64_t kc_seed;

static struct kc_entry *kc_slot(const char *key, size_t len)
{
    if (kc == NULL) {
        kc = pgw_calloc(KC_SLOTS, sizeof(*kc));
        kc_seed = pgw_lua_store_now_ms() * 0x9E3779B97F4A7C15ULL ^ (uint64_t)(uintptr_t)kc;
    }
    uint64_t h = kc_seed ^ 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)key[i]) * 0x100000001b3ULL;
    h ^= h >> 29;
    return &kc[h & (KC_SLOTS - 1)];
}

/* Fills *k and *c for <key>: PGW_OK (c may be missing: *has_consumer 0), PGW_DECLINED, PGW_ERR. */
static int kc_lookup(struct pgw_store *s, const char *key, size_t len, struct pgw_key_info *k,
                     struct pgw_consumer_info *c, int *has_consumer)
{
    uint64_t version = pgw_store_durable_version(s);
    struct kc_entry *e = len <= KC_KEY_MAX ? kc_slot(key, len) : NULL;
    if (e != NULL && e->version == version && e->klen == len &&
        CRYPTO_memcmp(e->key, key, len) == 0) {
        *k = e->k;
        *c = e->c;
        *has_consumer = e->has_consumer;
        return PGW_OK;
    }
    unsigned char mac[32];
    pgw_keys_mac(pgw_worker.store_secret, key, len, mac);
    int r = pgw_keys_lookup(s, mac, k);
    if (r != PGW_OK)
        return r; /* unknown keys are not cached: a key added now works at once */
    r = pgw_consumers_get(s, k->consumer, c);
    if (r == PGW_ERR)
        return r;
    *has_consumer = r == PGW_OK;
    if (e != NULL) {
        e->version = version;
        e->klen = len;
        memcpy(e->key, key, len);
        e->k = *k;
        e->c = *c;
        e->has_consumer = *has_consumer;
    }
    return PGW_OK;
}

/* pgw.keys.lookup(key) -> { id, consumer, status, expires, plan, groups } | nil | nil, reason.
 * The consumer's plan and groups are read in the same call (a plan change applies at once). */
static int l_keys_lookup(lua_State *L)
{
    const char *fname = "pgw.keys.lookup";
    struct pgw_store *s = cur_store(L, fname);
    size_t len;
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "%s: bad argument #1 (string expected, got %s)", fname,
                          luaL_typename(L, 1));
    const char *key = lua_tolstring(L, 1, &len);
    if (len == 0 || len > PGW_KEYS_KEY_MAX) {
        lua_pushnil(L);
        return 1;
    }
    struct pgw_key_info k;
    struct pgw_consumer_info c;
    int has_consumer = 0;
    int r = kc_lookup(s, key, len, &k, &c, &has_consumer);
    if (r == PGW_DECLINED) {
        lua_pushnil(L);
        return 1;
    }
    if (r != PGW_OK)
        return store_failed(L, s);
    r = has_consumer ? PGW_OK : PGW_DECLINED;
    lua_createtable(L, 0, 6);
    lua_pushstring(L, k.id);
    lua_setfield(L, -2, "id");
    lua_pushstring(L, k.consumer);
    lua_setfield(L, -2, "consumer");
    lua_pushstring(L, r == PGW_DECLINED ? "revoked" : pgw_keys_status_name(k.status));
    lua_setfield(L, -2, "status");
    lua_pushnumber(L, (lua_Number)k.expires_ms / 1000.0);
    lua_setfield(L, -2, "expires");
    lua_pushstring(L, r == PGW_OK ? c.plan : "");
    lua_setfield(L, -2, "plan");
    lua_pushstring(L, r == PGW_OK ? c.groups : "");
    lua_setfield(L, -2, "groups");
    return 1;
}

/* pgw.keys.consumer(name) -> { name, plan, groups } | nil | nil, reason */
static int l_keys_consumer(lua_State *L)
{
    const char *fname = "pgw.keys.consumer";
    struct pgw_store *s = cur_store(L, fname);
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "%s: bad argument #1 (string expected, got %s)", fname,
                          luaL_typename(L, 1));
    struct pgw_consumer_info c;
    int r = pgw_keys_valid_name(lua_tostring(L, 1)) ? pgw_consumers_get(s, lua_tostring(L, 1), &c)
                                                    : PGW_DECLINED;
    if (r == PGW_DECLINED) {
        lua_pushnil(L);
        return 1;
    }
    if (r != PGW_OK)
        return store_failed(L, s);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, c.name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, c.plan);
    lua_setfield(L, -2, "plan");
    lua_pushstring(L, c.groups);
    lua_setfield(L, -2, "groups");
    return 1;
}

void pgw_lua_open_store(lua_State *L)
{
    static const luaL_Reg fns[] = {{"get", l_get},     {"set", l_set},   {"delete", l_delete},
                                   {"incr", l_incr},   {"fixed", l_fixed}, {"gcra", l_gcra},
                                   {NULL, NULL}};
    static const luaL_Reg keys[] = {{"lookup", l_keys_lookup}, {"consumer", l_keys_consumer},
                                    {NULL, NULL}};
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    lua_setfield(L, -2, "store");
    lua_newtable(L);
    luaL_register(L, NULL, keys);
    lua_setfield(L, -2, "keys");
}
