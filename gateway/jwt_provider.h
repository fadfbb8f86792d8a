/* jwt_provider.h: the JWT providers of a generation (config `jwt.providers`, docs/jwt.md): their
 * static keys built once from the generation's files, the key set last fetched from their JWKS
 * URL (fetched by the `jwt` policy through pgw.http; its state lives here so that it is shared by
 * every route of the worker and survives a reload), and a bounded cache of verified tokens.
 * Knows nothing of Lua or libevent.
 *
 * Ownership: a pgw_jwt_gen belongs to its generation (struct pgw_gen) and borrows that
 * generation's config; its providers own their key sets (refcounted: a reload hands the JWKS
 * keys to the next generation) and their cache.
 */
#ifndef PGW_JWT_PROVIDER_H
#define PGW_JWT_PROVIDER_H

#include "pgw.h"
#include "config.h"
#include "jwt.h"

struct pgw_jwt_cache;

struct pgw_jwt_provider {
    const struct pgw_config_jwt_provider *conf;
    struct pgw_jwt_rules rules;
    struct pgw_jwt_keyset *keys;  /* static keys (may be empty) */
    struct pgw_jwt_keyset *jwks;  /* the last key set fetched, NULL until one was */
    size_t jwks_taken;            /* the JWKs it came from */
    uint64_t jwks_version;        /* fetches finished (good or not), for waiters */
    double jwks_attempt;          /* monotonic seconds when the last fetch started */
    double jwks_busy_until;       /* a fetch is in flight until then (0: none) */
    int refresher;                /* the refresh timer of this generation was claimed */
    struct pgw_jwt_cache *cache;  /* NULL when conf->cache == 0 */
};

struct pgw_jwt_gen {
    struct pgw_jwt_provider *v;
    size_t n;
};

/* Master: validates the providers of <c> by building their keys from <blob> (genfiles.h).
 * PGW_ERR with one "where: reason" line per bad key in <err>. */
int pgw_jwt_check(const struct pgw_config *c, const char *blob, size_t len, char *err,
                  size_t errlen);

/* Worker: the providers of <c>, keys built from <blob>; NULL with <err>. */
struct pgw_jwt_gen *pgw_jwt_gen_new(const struct pgw_config *c, const char *blob, size_t len,
                                    char *err, size_t errlen);
/* Takes over the JWKS keys (and fetch times) of <old>'s providers with the same name, URL and
 * algorithms, so a reload neither waits for nor repeats a fetch. */
void pgw_jwt_gen_adopt(struct pgw_jwt_gen *g, const struct pgw_jwt_gen *old);
void pgw_jwt_gen_free(struct pgw_jwt_gen *g);
struct pgw_jwt_provider *pgw_jwt_gen_find(const struct pgw_jwt_gen *g, const char *name,
                                          size_t len);

/* Verifies <token> with the provider's keys, through its cache. PGW_OK with the payload's JSON in
 * *payload (valid until the next call), or PGW_ERR with *code (enum pgw_jwt_code) and *why. */
int pgw_jwt_provider_verify(struct pgw_jwt_provider *p, const char *token, size_t len, double now,
                            const char **payload, size_t *plen, int *code, const char **why);

/* JWKS fetch protocol, monotonic seconds <mono>. claim: 1 when the caller should fetch now (none
 * in flight, and for an unknown kid (<forced>) the last attempt at least min_refresh ago); it then
 * calls done() with the body, or with NULL when the fetch failed. done returns the keys taken, or
 * -1 with <err> (the previous keys stay). */
int pgw_jwt_provider_jwks_claim(struct pgw_jwt_provider *p, double mono, int forced);
long pgw_jwt_provider_jwks_done(struct pgw_jwt_provider *p, const char *json, size_t len,
                                size_t *skipped, char *err, size_t errlen);

#endif
