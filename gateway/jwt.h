/* jwt.h: JSON Web Token verification (RFC 7515, 7518, 7519, 8037) with OpenSSL 3, and JSON Web Key
 * Sets (RFC 7517). Knows nothing of Lua, libevent or the configuration (jwt_provider.c does).
 *
 * Why not libjwt for the signatures: Debian's libjwt 1.10 takes a PEM key per call and parses it on
 * every jwt_decode (bench/jwt-verify.sh measures what that costs per token), has no PS256, EdDSA
 * nor JWKS, and refuses a `typ` other than "JWT" (RFC 9068 access tokens say "at+jwt"). Here a key
 * is parsed once (per generation, or per JWKS fetch) into an EVP_PKEY or an HMAC secret, and each
 * key verifies exactly one algorithm: the token's `alg` must equal it, which is what stops the
 * HS256-with-an-RSA-public-key confusion.
 *
 * Ownership: a key belongs to the keyset it was added to; keysets are refcounted and immutable
 * once built, so a verification in progress never sees one change.
 */
#ifndef PGW_JWT_H
#define PGW_JWT_H

#include "pgw.h"

enum pgw_jwt_alg {
    PGW_JWT_HS256 = 1,
    PGW_JWT_HS384,
    PGW_JWT_HS512,
    PGW_JWT_RS256,
    PGW_JWT_RS384,
    PGW_JWT_RS512,
    PGW_JWT_PS256,
    PGW_JWT_PS384,
    PGW_JWT_PS512,
    PGW_JWT_ES256,
    PGW_JWT_ES384,
    PGW_JWT_ES512,
    PGW_JWT_EDDSA,
    PGW_JWT_ALG_END
};
#define PGW_JWT_ALG_BIT(a) (1u << (a))
#define PGW_JWT_ALGS_ASYMMETRIC                                                                    \
    (((1u << PGW_JWT_ALG_END) - 1) & ~(PGW_JWT_ALG_BIT(PGW_JWT_HS256) | PGW_JWT_ALG_BIT(PGW_JWT_HS384) | \
                                       PGW_JWT_ALG_BIT(PGW_JWT_HS512) | 1u))

#define PGW_JWT_MAX_DEPTH 16     /* JSON nesting in headers, payloads and key sets */
#define PGW_JWT_MAX_KID 256      /* bytes of a decoded kid */
#define PGW_JWT_MAX_JWKS_KEYS 64 /* keys taken from one key set */

/* The algorithm named exactly <s,n> ("RS256", "EdDSA"), or 0. */
int pgw_jwt_alg_parse(const char *s, size_t n);
const char *pgw_jwt_alg_name(int alg);
/* Whether <alg> is an HMAC algorithm. */
int pgw_jwt_alg_is_hmac(int alg);

struct pgw_jwt_key;
struct pgw_jwt_keyset;

/* A public key for <alg> from PEM text (a public key or a certificate); <kid> may be NULL. The key
 * type must fit <alg> (RSA of 2048 bits or more for RS/PS, the curve of the ES algorithm, Ed25519
 * or Ed448 for EdDSA). NULL with a reason in <err>. */
struct pgw_jwt_key *pgw_jwt_key_pem(int alg, const char *kid, const char *pem, size_t len,
                                    char *err, size_t errlen);
/* An HMAC secret (copied) for HS256/384/512, at least as long as the hash. */
struct pgw_jwt_key *pgw_jwt_key_secret(int alg, const char *kid, const unsigned char *secret,
                                       size_t len, char *err, size_t errlen);

struct pgw_jwt_keyset *pgw_jwt_keyset_new(void);
/* Adds <k> to <ks> (which takes ownership). Only while <ks> is being built. */
void pgw_jwt_keyset_add(struct pgw_jwt_keyset *ks, struct pgw_jwt_key *k);
/* The keys of a JWKS document: at most PGW_JWT_MAX_JWKS_KEYS, of the algorithms in <algs> (a mask
 * of PGW_JWT_ALG_BIT). A key whose type, curve, `use` or `alg` is not usable is skipped and counted
 * in *skipped, the others in *taken; a JWK without `alg` gives one key per allowed algorithm that
 * fits it (so the set may hold more keys than *taken). `oct` keys
 * are always skipped. NULL with <err> when the document is not a JSON object with a `keys` array. */
struct pgw_jwt_keyset *pgw_jwt_keyset_from_jwks(const char *json, size_t len, unsigned algs,
                                                size_t *taken, size_t *skipped, char *err,
                                                size_t errlen);
size_t pgw_jwt_keyset_count(const struct pgw_jwt_keyset *ks);
struct pgw_jwt_keyset *pgw_jwt_keyset_ref(struct pgw_jwt_keyset *ks);
void pgw_jwt_keyset_unref(struct pgw_jwt_keyset *ks);

/* The checks of a provider. */
struct pgw_jwt_rules {
    const char *issuer;      /* NULL: `iss` not checked */
    char *const *audiences;  /* `aud` must hold one of them, when naud > 0 */
    size_t naud;
    char *const *required;   /* claims that must be present */
    size_t nreq;
    double leeway;           /* seconds */
    int reject_future_iat;
    size_t max_size;         /* bytes of the token */
};

enum pgw_jwt_code {
    PGW_JWT_INVALID = 1, /* refused: the token is bad */
    PGW_JWT_UNKNOWN_KID, /* no key has the token's kid: a key set refresh may help */
    PGW_JWT_NO_KEYS,     /* no key at all can be tried for this token */
};

struct pgw_jwt_result {
    int alg;
    const char *payload; /* the decoded payload (JSON text), in the caller's buffer */
    size_t payload_len;
    double exp, nbf;     /* valid when has_exp / has_nbf */
    int has_exp, has_nbf;
    int code;            /* enum pgw_jwt_code when verification failed */
};

/* Verifies <token,len> at time <now> (seconds since the epoch) with the keys of sets[0..nsets)
 * (NULL sets skipped; a kid is looked up in set order) and the checks <r>. <buf> is scratch of at
 * least <len> bytes; the payload returned points into it. PGW_OK, or PGW_ERR with out->code and
 * *why (a static string, for the log only). */
int pgw_jwt_verify(const struct pgw_jwt_rules *r, struct pgw_jwt_keyset *const *sets, size_t nsets,
                   const char *token, size_t len, double now, unsigned char *buf, size_t cap,
                   struct pgw_jwt_result *out, const char **why);

/* The time checks alone (exp, nbf), for a token verified earlier. PGW_OK or PGW_ERR with *why. */
int pgw_jwt_check_times(const struct pgw_jwt_rules *r, const struct pgw_jwt_result *res, double now,
                        const char **why);

/* SHA-256 of <data,len> into <out> (the verified-token cache's key). */
void pgw_jwt_sha256(const void *data, size_t len, unsigned char out[32]);

/* base64url without padding (RFC 7515 §2), canonical (unused bits zero). Returns the decoded
 * length, or -1. <out> has room for n * 3 / 4 bytes. */
long pgw_jwt_b64url_decode(unsigned char *out, const char *in, size_t n);

#endif
