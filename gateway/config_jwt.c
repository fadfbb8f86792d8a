/* config_jwt.c: the `jwt:` section (docs/jwt.md): providers of JSON Web Tokens. Only the shape
 * is checked here; key files are read by the master with the generation's other files
 * (genfiles.c) and turned into keys by jwt_provider.c, which reports bad keys.
 */
#include "config_int.h"
#include "jwt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PROVIDERS 64

static const struct field provider_fields[] = {
    FIELD(F_DURATION, struct pgw_config_jwt_provider, leeway, 0, 3600 * SEC),
    FIELD(F_BOOL, struct pgw_config_jwt_provider, reject_future_iat, 0, 1),
    FIELD(F_BOOL, struct pgw_config_jwt_provider, require_consumer, 0, 1),
    FIELD(F_SIZE, struct pgw_config_jwt_provider, max_token_size, 64, 64 * KIB),
    FIELD(F_COUNT, struct pgw_config_jwt_provider, cache, 0, 1000000),
};

/* A list of non-empty strings. */
static void read_strs(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                      const char *key, char ***out, size_t *n)
{
    if (!pgw_cfg_want_kind(x, v, PGW_YAML_SEQ, where, key))
        return;
    *out = pgw_calloc(v->n + 1, sizeof(char *));
    for (size_t i = 0; i < v->n; i++)
        if (pgw_cfg_read_str(x, v->kids[i], where, key, &(*out)[*n]) == PGW_OK)
            (*n)++;
}

static int read_alg(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                    const char *key)
{
    char q[PGW_ERRS_QUOTE_MAX];
    if (!pgw_cfg_want_scalar(x, v, where, key, "an algorithm"))
        return 0;
    int alg = pgw_jwt_alg_parse(v->str, v->len);
    if (alg == 0)
        pgw_cfg_err(x, v->line, where, key,
                    "unknown algorithm %s: one of HS256 HS384 HS512 RS256 RS384 RS512 PS256 "
                    "PS384 PS512 ES256 ES384 ES512 EdDSA (none is never accepted)",
                    pgw_errs_quote(q, v->str, v->len));
    return alg;
}

static void load_key(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *e, const char *where,
                     struct pgw_config_jwt_key *k)
{
    static const char *const keys[] = {"kid", "alg", "file", "secret", "secret_file", NULL};
    const struct pgw_yaml_node *v;
    k->line = e->line;
    pgw_cfg_walk_keys(x, e, where, keys, NULL, 0, NULL);
    if ((v = pgw_cfg_map_get(e, "kid")) != NULL) {
        pgw_cfg_read_str(x, v, where, "kid", &k->kid);
        if (k->kid != NULL && strlen(k->kid) > PGW_JWT_MAX_KID)
            pgw_cfg_err(x, v->line, where, "kid", "at most %d bytes", PGW_JWT_MAX_KID);
    }
    if ((v = pgw_cfg_require(x, e, where, "alg")) != NULL)
        k->alg = read_alg(x, v, where, "alg");
    if ((v = pgw_cfg_map_get(e, "file")) != NULL)
        pgw_cfg_read_str(x, v, where, "file", &k->file);
    if ((v = pgw_cfg_map_get(e, "secret")) != NULL)
        pgw_cfg_read_str(x, v, where, "secret", &k->secret);
    if ((v = pgw_cfg_map_get(e, "secret_file")) != NULL)
        pgw_cfg_read_str(x, v, where, "secret_file", &k->secret_file);
    if (k->alg == 0)
        return;
    int sources = (k->file != NULL) + (k->secret != NULL) + (k->secret_file != NULL);
    if (pgw_jwt_alg_is_hmac(k->alg) && (k->file != NULL || sources != 1))
        pgw_cfg_err(x, e->line, where, NULL, "%s takes one of secret or secret_file",
                    pgw_jwt_alg_name(k->alg));
    else if (!pgw_jwt_alg_is_hmac(k->alg) && (k->file == NULL || sources != 1))
        pgw_cfg_err(x, e->line, where, NULL, "%s takes a file (a PEM public key or certificate)",
                    pgw_jwt_alg_name(k->alg));
}

static void load_keys(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                      struct pgw_config_jwt_provider *p)
{
    char kw[200];
    if (!pgw_cfg_want_kind(x, v, PGW_YAML_SEQ, where, "keys"))
        return;
    p->keys = pgw_calloc(v->n + 1, sizeof(*p->keys));
    for (size_t i = 0; i < v->n; i++) {
        snprintf(kw, sizeof(kw), "%s.keys[%zu]", where, i);
        if (pgw_cfg_want_kind(x, v->kids[i], PGW_YAML_MAP, kw, NULL))
            load_key(x, v->kids[i], kw, &p->keys[p->num_keys++]);
    }
}

/* https://host[:port]/path: visible ASCII, a host. pgw.http checks the rest when it fetches. */
static int is_https_url(const char *u)
{
    if (strncmp(u, "https://", 8) != 0 || u[8] == '\0' || u[8] == '/' || u[8] == ':')
        return 0;
    for (const char *p = u; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || *p == '#')
            return 0;
    return 1;
}

static void load_jwks(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n, const char *pwhere,
                      struct pgw_config_jwt_provider *p)
{
    struct field fields[] = {
        FIELD(F_DURATION, struct pgw_config_jwt_provider, jwks_refresh, 10 * SEC, 7 * 24 * 3600 * SEC),
        FIELD(F_DURATION, struct pgw_config_jwt_provider, jwks_min_refresh, 1 * SEC, 24 * 3600 * SEC),
        FIELD(F_DURATION, struct pgw_config_jwt_provider, jwks_timeout, 100, 60 * SEC),
    };
    fields[0].key = "refresh";
    fields[1].key = "min_refresh";
    fields[2].key = "timeout";
    static const char *const extras[] = {"url", "algorithms", NULL};
    char where[160];
    const struct pgw_yaml_node *v;
    snprintf(where, sizeof(where), "%s.jwks", pwhere);
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, pwhere, "jwks"))
        return;
    pgw_cfg_walk_keys(x, n, where, extras, fields, PGW_ARRAY_LEN(fields), p);
    if ((v = pgw_cfg_require(x, n, where, "url")) != NULL &&
        pgw_cfg_read_str(x, v, where, "url", &p->jwks_url) == PGW_OK && !is_https_url(p->jwks_url))
        pgw_cfg_err(x, v->line, where, "url",
                    "must be an https:// URL (keys are never fetched without TLS)");
    if ((v = pgw_cfg_map_get(n, "algorithms")) != NULL &&
        pgw_cfg_want_kind(x, v, PGW_YAML_SEQ, where, "algorithms")) {
        p->jwks_algorithms = 0;
        for (size_t i = 0; i < v->n; i++) {
            int a = read_alg(x, v->kids[i], where, "algorithms");
            if (a != 0 && pgw_jwt_alg_is_hmac(a))
                pgw_cfg_err(x, v->kids[i]->line, where, "algorithms",
                            "%s: shared secrets are never taken from a URL", pgw_jwt_alg_name(a));
            else if (a != 0)
                p->jwks_algorithms |= PGW_JWT_ALG_BIT(a);
        }
        if (v->n == 0)
            pgw_cfg_err(x, v->line, where, "algorithms", "must not be empty");
    }
}

static void load_provider(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *k,
                          const struct pgw_yaml_node *n, struct pgw_config_jwt_provider *p)
{
    static const char *const extras[] = {"issuer", "audiences", "keys", "jwks", "required_claims",
                                         "consumer_claim", NULL};
    char where[128], q[PGW_ERRS_QUOTE_MAX];
    const struct pgw_yaml_node *v;
    snprintf(where, sizeof(where), "jwt.providers.%.64s", k->str);
    p->name = pgw_strndup(k->str, k->len);
    p->line = k->line;
    if (!pgw_is_lower_name(k->str, k->len))
        pgw_cfg_err(x, k->line, "jwt.providers", NULL,
                    "invalid provider name %s: [a-z][a-z0-9_]*, at most 64 characters",
                    pgw_errs_quote(q, k->str, k->len));
    p->leeway = 30 * SEC;
    p->max_token_size = 8 * KIB;
    p->cache = 10000;
    p->jwks_refresh = 3600 * SEC;
    p->jwks_min_refresh = 30 * SEC;
    p->jwks_timeout = 5 * SEC;
    p->jwks_algorithms = PGW_JWT_ALGS_ASYMMETRIC;
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, "jwt.providers", p->name))
        return;
    pgw_cfg_walk_keys(x, n, where, extras, provider_fields, PGW_ARRAY_LEN(provider_fields), p);
    if ((v = pgw_cfg_map_get(n, "issuer")) != NULL)
        pgw_cfg_read_str(x, v, where, "issuer", &p->issuer);
    if ((v = pgw_cfg_map_get(n, "audiences")) != NULL)
        read_strs(x, v, where, "audiences", &p->audiences, &p->num_audiences);
    if ((v = pgw_cfg_map_get(n, "required_claims")) != NULL)
        read_strs(x, v, where, "required_claims", &p->required_claims, &p->num_required_claims);
    else {
        p->required_claims = pgw_calloc(2, sizeof(char *));
        p->required_claims[0] = pgw_strndup("exp", 3);
        p->num_required_claims = 1;
    }
    if ((v = pgw_cfg_map_get(n, "consumer_claim")) != NULL)
        pgw_cfg_read_str(x, v, where, "consumer_claim", &p->consumer_claim);
    else
        p->consumer_claim = pgw_strndup("sub", 3);
    if ((v = pgw_cfg_map_get(n, "keys")) != NULL)
        load_keys(x, v, where, p);
    if ((v = pgw_cfg_map_get(n, "jwks")) != NULL)
        load_jwks(x, v, where, p);
    if (p->num_keys == 0 && p->jwks_url == NULL)
        pgw_cfg_err(x, n->line, where, NULL, "needs keys, a jwks url, or both");
}

void pgw_cfg_load_jwt_section(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    static const char *const extras[] = {"providers", NULL};
    const struct pgw_yaml_node *v;
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, "", "jwt"))
        return;
    pgw_cfg_walk_keys(x, n, "jwt", extras, NULL, 0, NULL);
    if ((v = pgw_cfg_require(x, n, "jwt", "providers")) == NULL ||
        !pgw_cfg_want_kind(x, v, PGW_YAML_MAP, "jwt", "providers"))
        return;
    size_t count = v->n / 2;
    if (count > MAX_PROVIDERS) {
        pgw_cfg_err(x, v->line, "jwt", "providers", "at most %d providers", MAX_PROVIDERS);
        count = MAX_PROVIDERS;
    }
    struct pgw_config *c = x->c;
    c->jwt_providers = pgw_calloc(count + 1, sizeof(*c->jwt_providers));
    for (size_t i = 0; i < count; i++)
        load_provider(x, v->kids[2 * i], v->kids[2 * i + 1], &c->jwt_providers[c->num_jwt_providers++]);
}

static void free_strs(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void pgw_cfg_free_jwt(struct pgw_config *c)
{
    for (size_t i = 0; i < c->num_jwt_providers; i++) {
        struct pgw_config_jwt_provider *p = &c->jwt_providers[i];
        for (size_t j = 0; j < p->num_keys; j++) {
            free(p->keys[j].kid);
            free(p->keys[j].file);
            free(p->keys[j].secret);
            free(p->keys[j].secret_file);
        }
        free(p->keys);
        free_strs(p->audiences, p->num_audiences);
        free_strs(p->required_claims, p->num_required_claims);
        free(p->name);
        free(p->issuer);
        free(p->jwks_url);
        free(p->consumer_claim);
    }
    free(c->jwt_providers);
}
