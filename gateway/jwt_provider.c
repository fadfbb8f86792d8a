/* jwt_provider.c: JWT providers of a generation (jwt_provider.h). */
#include "jwt_provider.h"
#include "genfiles.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>

#define CACHE_MAX_BYTES (16u << 20) /* payload bytes cached per provider */

/* ---- The verified-token cache: direct-mapped on the token's SHA-256 ---- */

struct cache_entry {
    unsigned char digest[32]; /* of the whole token; an empty slot has payload == NULL */
    char *payload;
    size_t payload_len;
    struct pgw_jwt_result res; /* exp, nbf */
};

struct pgw_jwt_cache {
    struct cache_entry *v;
    size_t n, bytes;
};

static struct pgw_jwt_cache *cache_new(size_t n)
{
    struct pgw_jwt_cache *c = pgw_calloc(1, sizeof(*c));
    c->v = pgw_calloc(n, sizeof(*c->v));
    c->n = n;
    return c;
}

static void cache_clear(struct pgw_jwt_cache *c)
{
    for (size_t i = 0; c != NULL && i < c->n; i++) {
        free(c->v[i].payload);
        c->v[i].payload = NULL;
    }
    if (c != NULL)
        c->bytes = 0;
}

static void cache_free(struct pgw_jwt_cache *c)
{
    if (c == NULL)
        return;
    cache_clear(c);
    free(c->v);
    free(c);
}

static struct cache_entry *cache_slot(struct pgw_jwt_cache *c, const unsigned char *digest)
{
    uint64_t h;
    memcpy(&h, digest, sizeof(h));
    return &c->v[h % c->n];
}

static void cache_put(struct pgw_jwt_cache *c, const unsigned char *digest,
                      const struct pgw_jwt_result *res)
{
    struct cache_entry *e = cache_slot(c, digest);
    if (e->payload != NULL) {
        c->bytes -= e->payload_len;
        free(e->payload);
        e->payload = NULL;
    }
    if (c->bytes + res->payload_len > CACHE_MAX_BYTES)
        return;
    memcpy(e->digest, digest, 32);
    e->payload = pgw_malloc(res->payload_len + 1);
    memcpy(e->payload, res->payload, res->payload_len);
    e->payload_len = res->payload_len;
    e->res = *res;
    e->res.payload = e->payload;
    c->bytes += res->payload_len;
}

/* ---- Building ---- */

struct build {
    const char *file; /* the configuration's, for "FILE:LINE: " */
    const char *blob;
    size_t len;
    char *err;
    size_t errlen, used;
    unsigned quiet_failures; /* unreadable files: reported by genfiles.c */
};

static void PGW_PRINTF(2, 3) build_err(struct build *b, const char *fmt, ...)
{
    if (b->used + 1 >= b->errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->err + b->used, b->errlen - b->used, fmt, ap);
    va_end(ap);
    if (n > 0)
        b->used = PGW_MIN(b->used + (size_t)n, b->errlen - 1);
}

static struct pgw_jwt_key *build_key(struct build *b, const struct pgw_config_jwt_provider *cp,
                                     size_t i)
{
    const struct pgw_config_jwt_key *k = &cp->keys[i];
    const char *path = k->file != NULL ? k->file : k->secret_file;
    const char *data = k->secret;
    size_t dlen = k->secret != NULL ? strlen(k->secret) : 0;
    char e[256];
    int r = path != NULL ? pgw_genfiles_find(b->blob, b->len, path, &data, &dlen) : PGW_OK;
    if (r == PGW_DECLINED)
        b->quiet_failures++;
    else if (r != PGW_OK)
        build_err(b, "%s:%u: jwt.providers.%s.keys[%zu]: %s was not read\n", b->file, k->line,
                  cp->name, i, path);
    if (r != PGW_OK)
        return NULL;
    struct pgw_jwt_key *key;
    if (k->file != NULL) {
        key = pgw_jwt_key_pem(k->alg, k->kid, data, dlen, e, sizeof(e));
    } else {
        if (k->secret_file != NULL && dlen > 0 && data[dlen - 1] == '\n')
            dlen -= dlen > 1 && data[dlen - 2] == '\r' ? 2 : 1; /* the file's final newline */
        key = pgw_jwt_key_secret(k->alg, k->kid, (const unsigned char *)data, dlen, e, sizeof(e));
    }
    if (key == NULL)
        build_err(b, "%s:%u: jwt.providers.%s.keys[%zu]: %s%s%s\n", b->file, k->line, cp->name, i,
                  path ? path : "", path ? ": " : "", e);
    return key;
}

static void provider_init(struct build *b, struct pgw_jwt_provider *p,
                          const struct pgw_config_jwt_provider *cp)
{
    p->conf = cp;
    p->rules = (struct pgw_jwt_rules){
        .issuer = cp->issuer,
        .audiences = cp->audiences,
        .naud = cp->num_audiences,
        .required = cp->required_claims,
        .nreq = cp->num_required_claims,
        .leeway = (double)cp->leeway / 1000.0,
        .reject_future_iat = cp->reject_future_iat,
        .max_size = (size_t)cp->max_token_size,
    };
    p->keys = pgw_jwt_keyset_new();
    for (size_t i = 0; i < cp->num_keys; i++) {
        struct pgw_jwt_key *k = build_key(b, cp, i);
        if (k != NULL)
            pgw_jwt_keyset_add(p->keys, k);
    }
    if (cp->cache > 0)
        p->cache = cache_new((size_t)cp->cache);
}

struct pgw_jwt_gen *pgw_jwt_gen_new(const struct pgw_config *c, const char *blob, size_t len,
                                    char *err, size_t errlen)
{
    struct build b = {.file = c->file, .blob = blob, .len = len, .err = err, .errlen = errlen};
    if (errlen > 0)
        err[0] = '\0';
    struct pgw_jwt_gen *g = pgw_calloc(1, sizeof(*g));
    g->v = pgw_calloc(c->num_jwt_providers + 1, sizeof(*g->v));
    g->n = c->num_jwt_providers;
    for (size_t i = 0; i < g->n; i++)
        provider_init(&b, &g->v[i], &c->jwt_providers[i]);
    if (b.used > 0 || b.quiet_failures > 0) {
        pgw_jwt_gen_free(g);
        return NULL;
    }
    return g;
}

int pgw_jwt_check(const struct pgw_config *c, const char *blob, size_t len, char *err,
                  size_t errlen)
{
    struct pgw_jwt_gen *g = pgw_jwt_gen_new(c, blob, len, err, errlen);
    pgw_jwt_gen_free(g);
    return g != NULL ? PGW_OK : PGW_ERR;
}

static int same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

void pgw_jwt_gen_adopt(struct pgw_jwt_gen *g, const struct pgw_jwt_gen *old)
{
    for (size_t i = 0; old != NULL && i < g->n; i++) {
        struct pgw_jwt_provider *p = &g->v[i];
        const struct pgw_jwt_provider *o =
            pgw_jwt_gen_find(old, p->conf->name, strlen(p->conf->name));
        if (o == NULL || o->jwks == NULL || p->conf->jwks_url == NULL ||
            !same_str(o->conf->jwks_url, p->conf->jwks_url) ||
            o->conf->jwks_algorithms != p->conf->jwks_algorithms)
            continue;
        p->jwks = pgw_jwt_keyset_ref(o->jwks);
        p->jwks_taken = o->jwks_taken;
        p->jwks_attempt = o->jwks_attempt;
    }
}

void pgw_jwt_gen_free(struct pgw_jwt_gen *g)
{
    if (g == NULL)
        return;
    for (size_t i = 0; i < g->n; i++) {
        pgw_jwt_keyset_unref(g->v[i].keys);
        pgw_jwt_keyset_unref(g->v[i].jwks);
        cache_free(g->v[i].cache);
    }
    free(g->v);
    free(g);
}

struct pgw_jwt_provider *pgw_jwt_gen_find(const struct pgw_jwt_gen *g, const char *name,
                                          size_t len)
{
    for (size_t i = 0; g != NULL && i < g->n; i++)
        if (strlen(g->v[i].conf->name) == len && memcmp(g->v[i].conf->name, name, len) == 0)
            return &g->v[i];
    return NULL;
}

/* ---- Verification ---- */

int pgw_jwt_provider_verify(struct pgw_jwt_provider *p, const char *token, size_t len, double now,
                            const char **payload, size_t *plen, int *code, const char **why)
{
    static unsigned char scratch[64 * 1024 + 16]; /* max_token_size is at most 64 KiB */
    unsigned char digest[32];
    struct cache_entry *e = NULL;
    struct pgw_jwt_result res;
    *code = 0;
    if (p->cache != NULL && len <= p->rules.max_size) {
        pgw_jwt_sha256(token, len, digest);
        e = cache_slot(p->cache, digest);
        if (e->payload != NULL && CRYPTO_memcmp(e->digest, digest, 32) == 0) {
            if (pgw_jwt_check_times(&p->rules, &e->res, now, why) != PGW_OK) {
                *code = PGW_JWT_INVALID;
                return PGW_ERR;
            }
            *payload = e->payload;
            *plen = e->payload_len;
            return PGW_OK;
        }
    }
    struct pgw_jwt_keyset *sets[2] = {p->keys, p->jwks};
    if (pgw_jwt_verify(&p->rules, sets, 2, token, len, now, scratch, sizeof(scratch), &res, why) !=
        PGW_OK) {
        *code = res.code;
        return PGW_ERR;
    }
    if (e != NULL)
        cache_put(p->cache, digest, &res);
    *payload = res.payload;
    *plen = res.payload_len;
    return PGW_OK;
}

/* ---- JWKS ---- */

int pgw_jwt_provider_jwks_claim(struct pgw_jwt_provider *p, double mono, int forced)
{
    if (p->conf->jwks_url == NULL || (p->jwks_busy_until > 0 && mono < p->jwks_busy_until))
        return 0;
    if (forced && p->jwks_attempt > 0 &&
        mono - p->jwks_attempt < (double)p->conf->jwks_min_refresh / 1000.0)
        return 0;
    p->jwks_attempt = mono;
    p->jwks_busy_until = mono + (double)p->conf->jwks_timeout / 1000.0 + 1.0;
    return 1;
}

long pgw_jwt_provider_jwks_done(struct pgw_jwt_provider *p, const char *json, size_t len,
                                size_t *skipped, char *err, size_t errlen)
{
    p->jwks_busy_until = 0;
    p->jwks_version++;
    *skipped = 0;
    if (json == NULL) {
        snprintf(err, errlen, "fetch failed");
        return -1;
    }
    size_t taken;
    struct pgw_jwt_keyset *ks =
        pgw_jwt_keyset_from_jwks(json, len, p->conf->jwks_algorithms, &taken, skipped, err, errlen);
    if (ks == NULL)
        return -1;
    pgw_jwt_keyset_unref(p->jwks);
    p->jwks = ks;
    p->jwks_taken = taken;
    cache_clear(p->cache); /* a key may have gone: tokens are verified again */
    return (long)taken;
}
