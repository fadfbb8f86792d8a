/* lua_jwt.c: pgw.jwt (docs/jwt.md), registered into pgw.core by pgw_lua_open_jwt(): token
 * verification against the providers of the running generation (jwt_provider.h), their
 * settings, and the JWKS refresh protocol the built-in `jwt` policy drives. The providers are the
 * generation's: a request, and a timer, use those of the generation its policy set belongs to.
 */
#include "jwt_provider.h"
#include "log.h"
#include "lua.h"
#include "lua_bridge.h"
#include "policy.h"
#include "server.h"

#include <lauxlib.h>
#include <time.h>

#define STAGES_VERIFY (PGW_STAGES_REQUEST | PGW_STAGE_TIMER)
#define STAGES_JWKS (PGW_STAGES_REQUEST | PGW_STAGE_TIMER | PGW_STAGE_INIT_WORKER)

/* Monotonic seconds, from the clock the rest of the gateway uses. */
static double mono_now(void) { return (double)pgw_now_us() / 1e6; }

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *check_str(lua_State *L, int arg, const char *fname, size_t *len)
{
    if (lua_type(L, arg) != LUA_TSTRING)
        luaL_error(L, "%s: bad argument #%d (string expected, got %s)", fname, arg,
                   luaL_typename(L, arg));
    return lua_tolstring(L, arg, len);
}

/* The provider named by argument 1 in the running generation; raises when there is none. */
static struct pgw_jwt_provider *check_provider(lua_State *L, const char *fname)
{
    size_t len;
    const char *name = check_str(L, 1, fname, &len);
    const struct pgw_bridge_run *run = pgw_bridge_current();
    struct pgw_jwt_provider *p =
        run->gen != NULL ? pgw_jwt_gen_find(run->gen->jwt, name, len) : NULL;
    if (p == NULL)
        luaL_error(L, "%s: no JWT provider named \"%s\"", fname, name);
    return p;
}

static const char *const CODES[] = {"", "invalid", "unknown_kid", "no_keys"};

/* pgw.jwt.verify(provider, token) -> claims | nil, reason, code */
static int l_jwt_verify(lua_State *L)
{
    pgw_bridge_check(L, "pgw.jwt.verify", STAGES_VERIFY);
    struct pgw_jwt_provider *p = check_provider(L, "pgw.jwt.verify");
    size_t len, plen;
    const char *token = check_str(L, 2, "pgw.jwt.verify", &len), *payload, *why = "invalid";
    int code;
    if (pgw_jwt_provider_verify(p, token, len, wall_now(), &payload, &plen, &code, &why) != PGW_OK) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        lua_pushstring(L, CODES[code > 0 && code < 4 ? code : 1]);
        return 3;
    }
    if (pgw_lua_json_push(L, payload, plen) != PGW_OK) { /* checked by json.c: not reached */
        lua_pushnil(L);
        lua_pushliteral(L, "payload is not JSON");
        lua_pushstring(L, CODES[PGW_JWT_INVALID]);
        return 3;
    }
    return 1;
}

static void set_strs(lua_State *L, const char *field, char *const *v, size_t n)
{
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushstring(L, v[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, field);
}

static void set_num(lua_State *L, const char *field, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, field);
}

/* pgw.jwt.provider(name) -> settings table | nil. In the master (checking a configuration), only
 * the configuration's settings (no key counts). */
static int l_jwt_provider(lua_State *L)
{
    pgw_bridge_check(L, "pgw.jwt.provider", PGW_STAGES_ANY);
    size_t len;
    const char *name = check_str(L, 1, "pgw.jwt.provider", &len);
    const struct pgw_bridge_run *run = pgw_bridge_current();
    const struct pgw_config *c = run->gen != NULL ? run->gen->config
                                 : run->set != NULL ? run->set->config
                                                    : NULL;
    const struct pgw_config_jwt_provider *cp = NULL;
    for (size_t i = 0; c != NULL && i < c->num_jwt_providers; i++)
        if (strlen(c->jwt_providers[i].name) == len && memcmp(c->jwt_providers[i].name, name, len) == 0)
            cp = &c->jwt_providers[i];
    if (cp == NULL) {
        lua_pushnil(L);
        return 1;
    }
    lua_createtable(L, 0, 10);
    lua_pushstring(L, cp->name);
    lua_setfield(L, -2, "name");
    if (cp->issuer != NULL) {
        lua_pushstring(L, cp->issuer);
        lua_setfield(L, -2, "issuer");
    }
    set_strs(L, "audiences", cp->audiences, cp->num_audiences);
    set_strs(L, "required_claims", cp->required_claims, cp->num_required_claims);
    lua_pushstring(L, cp->consumer_claim);
    lua_setfield(L, -2, "consumer_claim");
    lua_pushboolean(L, cp->require_consumer);
    lua_setfield(L, -2, "require_consumer");
    if (cp->jwks_url != NULL) {
        lua_createtable(L, 0, 4);
        lua_pushstring(L, cp->jwks_url);
        lua_setfield(L, -2, "url");
        set_num(L, "refresh", (double)cp->jwks_refresh / 1000.0);
        set_num(L, "min_refresh", (double)cp->jwks_min_refresh / 1000.0);
        set_num(L, "timeout", (double)cp->jwks_timeout / 1000.0);
        lua_setfield(L, -2, "jwks");
    }
    struct pgw_jwt_provider *p = run->gen != NULL ? pgw_jwt_gen_find(run->gen->jwt, name, len) : NULL;
    if (p != NULL) {
        set_num(L, "keys", (double)pgw_jwt_keyset_count(p->keys));
        set_num(L, "jwks_keys", (double)p->jwks_taken);
        set_num(L, "jwks_version", (double)p->jwks_version);
        set_num(L, "jwks_age", p->jwks_attempt > 0 ? mono_now() - p->jwks_attempt : -1);
    }
    return 1;
}

/* pgw.jwt.jwks_claim(provider, forced) -> whether the caller should fetch the JWKS now, and
 * whether a fetch is in flight (then pgw.jwt.provider(p).jwks_version changes when it ends) */
static int l_jwt_jwks_claim(lua_State *L)
{
    pgw_bridge_check(L, "pgw.jwt.jwks_claim", STAGES_JWKS);
    struct pgw_jwt_provider *p = check_provider(L, "pgw.jwt.jwks_claim");
    double now = mono_now();
    int go = pgw_jwt_provider_jwks_claim(p, now, lua_toboolean(L, 2));
    lua_pushboolean(L, go);
    lua_pushboolean(L, !go && p->jwks_busy_until > now);
    return 2;
}

/* pgw.jwt.jwks_done(provider, body | nil) -> keys, skipped | nil, reason */
static int l_jwt_jwks_done(lua_State *L)
{
    pgw_bridge_check(L, "pgw.jwt.jwks_done", STAGES_JWKS);
    struct pgw_jwt_provider *p = check_provider(L, "pgw.jwt.jwks_done");
    size_t len = 0, skipped;
    const char *body = lua_isnoneornil(L, 2) ? NULL : check_str(L, 2, "pgw.jwt.jwks_done", &len);
    char err[256];
    long n = pgw_jwt_provider_jwks_done(p, body, len, &skipped, err, sizeof(err));
    if (n < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushinteger(L, (lua_Integer)n);
    lua_pushinteger(L, (lua_Integer)skipped);
    return 2;
}

/* pgw.jwt.claim_refresher(provider) -> true for the first caller in this generation */
static int l_jwt_claim_refresher(lua_State *L)
{
    pgw_bridge_check(L, "pgw.jwt.claim_refresher", STAGES_JWKS);
    struct pgw_jwt_provider *p = check_provider(L, "pgw.jwt.claim_refresher");
    lua_pushboolean(L, p->conf->jwks_url != NULL && !p->refresher);
    p->refresher = 1;
    return 1;
}

void pgw_lua_open_jwt(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"verify", l_jwt_verify},
        {"provider", l_jwt_provider},
        {"jwks_claim", l_jwt_jwks_claim},
        {"jwks_done", l_jwt_jwks_done},
        {"claim_refresher", l_jwt_claim_refresher},
        {NULL, NULL},
    };
    lua_newtable(L);
    for (const luaL_Reg *f = funcs; f->name != NULL; f++) {
        lua_pushcfunction(L, f->func);
        lua_setfield(L, -2, f->name);
    }
    lua_setfield(L, -2, "jwt");
}
