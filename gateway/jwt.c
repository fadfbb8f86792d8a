/* jwt.c: keys, key sets and token verification of jwt.h. */
#include "jwt.h"
#include "json.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <stdio.h>
#include <stdlib.h>

struct pgw_jwt_key {
    int alg;
    char *kid;              /* NULL: none */
    size_t kid_len;
    EVP_PKEY *pkey;         /* asymmetric algorithms */
    unsigned char *secret;  /* HS*: owned, cleansed on free */
    size_t secret_len;
    EVP_MAC_CTX *mac;       /* HS*: HMAC keyed with secret, duplicated per verification */
};

struct pgw_jwt_keyset {
    int refs;
    size_t n;
    struct pgw_jwt_key **v;
};

/* ---- Algorithms ---- */

struct alg_info {
    const char *name;
    int family; /* 'H' HMAC, 'R' RSA PKCS#1, 'P' RSA-PSS, 'E' ECDSA, 'D' EdDSA */
    int bits;   /* hash size; the ES curve's coordinate size in bytes goes to coord */
    int coord;
    const char *curve;
};

static const struct alg_info ALGS[PGW_JWT_ALG_END] = {
    [PGW_JWT_HS256] = {"HS256", 'H', 256, 0, NULL},
    [PGW_JWT_HS384] = {"HS384", 'H', 384, 0, NULL},
    [PGW_JWT_HS512] = {"HS512", 'H', 512, 0, NULL},
    [PGW_JWT_RS256] = {"RS256", 'R', 256, 0, NULL},
    [PGW_JWT_RS384] = {"RS384", 'R', 384, 0, NULL},
    [PGW_JWT_RS512] = {"RS512", 'R', 512, 0, NULL},
    [PGW_JWT_PS256] = {"PS256", 'P', 256, 0, NULL},
    [PGW_JWT_PS384] = {"PS384", 'P', 384, 0, NULL},
    [PGW_JWT_PS512] = {"PS512", 'P', 512, 0, NULL},
    [PGW_JWT_ES256] = {"ES256", 'E', 256, 32, "prime256v1"},
    [PGW_JWT_ES384] = {"ES384", 'E', 384, 48, "secp384r1"},
    [PGW_JWT_ES512] = {"ES512", 'E', 512, 66, "secp521r1"},
    [PGW_JWT_EDDSA] = {"EdDSA", 'D', 0, 0, NULL},
};

int pgw_jwt_alg_parse(const char *s, size_t n)
{
    for (int a = 1; a < PGW_JWT_ALG_END; a++)
        if (strlen(ALGS[a].name) == n && memcmp(ALGS[a].name, s, n) == 0)
            return a;
    return 0;
}

const char *pgw_jwt_alg_name(int alg)
{
    return alg > 0 && alg < PGW_JWT_ALG_END ? ALGS[alg].name : "?";
}

int pgw_jwt_alg_is_hmac(int alg) { return alg > 0 && alg < PGW_JWT_ALG_END && ALGS[alg].family == 'H'; }

/* The digest of <alg>, fetched once per process: OpenSSL 3 would look EVP_sha256() up in its
 * provider store on every EVP_DigestVerifyInit otherwise. NULL for EdDSA, which hashes itself. */
static const EVP_MD *alg_md(int alg)
{
    static EVP_MD *mds[3]; /* process lifetime */
    static const char *const names[3] = {"SHA256", "SHA384", "SHA512"};
    int i = ALGS[alg].bits == 256 ? 0 : ALGS[alg].bits == 384 ? 1 : ALGS[alg].bits == 512 ? 2 : -1;
    if (i < 0)
        return NULL;
    if (mds[i] == NULL)
        mds[i] = EVP_MD_fetch(NULL, names[i], NULL);
    pgw_assert(mds[i] != NULL);
    return mds[i];
}

void pgw_jwt_sha256(const void *data, size_t len, unsigned char out[32])
{
    static EVP_MD_CTX *ctx; /* process lifetime: one context reused, no allocation per call */
    if (ctx == NULL)
        ctx = EVP_MD_CTX_new();
    pgw_assert(ctx != NULL);
    int ok = EVP_DigestInit_ex2(ctx, alg_md(PGW_JWT_HS256), NULL) == 1 &&
             EVP_DigestUpdate(ctx, data, len) == 1 && EVP_DigestFinal_ex(ctx, out, NULL) == 1;
    pgw_assert(ok);
}

/* ---- Keys ---- */

static void set_err(char *err, size_t errlen, const char *fmt, const char *arg)
{
    if (errlen > 0)
        snprintf(err, errlen, fmt, arg);
    ERR_clear_error();
}

/* Whether <pkey> can verify <alg>; NULL when it can, else why not. */
static const char *key_fits(EVP_PKEY *pkey, int alg)
{
    const struct alg_info *a = &ALGS[alg];
    int id = EVP_PKEY_get_base_id(pkey);
    switch (a->family) {
    case 'R':
    case 'P':
        if (id != EVP_PKEY_RSA)
            return "an RSA key is expected";
        return EVP_PKEY_get_bits(pkey) < 2048 ? "RSA keys of fewer than 2048 bits are refused" : NULL;
    case 'E': {
        char group[64];
        size_t gl = 0;
        if (id != EVP_PKEY_EC)
            return "an EC key is expected";
        if (!EVP_PKEY_get_group_name(pkey, group, sizeof(group), &gl) || strcmp(group, a->curve) != 0)
            return alg == PGW_JWT_ES256 ? "ES256 needs a P-256 key"
                   : alg == PGW_JWT_ES384 ? "ES384 needs a P-384 key"
                                          : "ES512 needs a P-521 key";
        return NULL;
    }
    case 'D':
        return id == EVP_PKEY_ED25519 || id == EVP_PKEY_ED448 ? NULL
                                                              : "an Ed25519 or Ed448 key is expected";
    default:
        return "an HMAC algorithm takes a secret, not a key file";
    }
}

static struct pgw_jwt_key *key_new(int alg, const char *kid, size_t kid_len)
{
    struct pgw_jwt_key *k = pgw_calloc(1, sizeof(*k));
    k->alg = alg;
    if (kid != NULL) {
        k->kid = pgw_strndup(kid, kid_len);
        k->kid_len = kid_len;
    }
    return k;
}

static void key_free(struct pgw_jwt_key *k)
{
    if (k == NULL)
        return;
    EVP_PKEY_free(k->pkey);
    EVP_MAC_CTX_free(k->mac);
    if (k->secret != NULL)
        OPENSSL_cleanse(k->secret, k->secret_len);
    free(k->secret);
    free(k->kid);
    free(k);
}

struct pgw_jwt_key *pgw_jwt_key_pem(int alg, const char *kid, const char *pem, size_t len,
                                    char *err, size_t errlen)
{
    if (alg <= 0 || alg >= PGW_JWT_ALG_END) {
        set_err(err, errlen, "%s", "unknown algorithm");
        return NULL;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *pkey = NULL;
    if (len > 0 && memmem(pem, len, "-----BEGIN CERTIFICATE-----", 27) != NULL) {
        X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        pkey = x != NULL ? X509_get_pubkey(x) : NULL;
        X509_free(x);
    } else if (len > 0 && memmem(pem, len, "PRIVATE KEY-----", 16) != NULL) {
        BIO_free(bio);
        set_err(err, errlen, "%s", "a private key: give the public key (or a certificate)");
        return NULL;
    } else {
        pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    }
    BIO_free(bio);
    if (pkey == NULL) {
        set_err(err, errlen, "%s", "not a PEM public key or certificate");
        return NULL;
    }
    const char *why = key_fits(pkey, alg);
    if (why != NULL) {
        EVP_PKEY_free(pkey);
        set_err(err, errlen, "%s", why);
        return NULL;
    }
    struct pgw_jwt_key *k = key_new(alg, kid, kid ? strlen(kid) : 0);
    k->pkey = pkey;
    return k;
}

struct pgw_jwt_key *pgw_jwt_key_secret(int alg, const char *kid, const unsigned char *secret,
                                       size_t len, char *err, size_t errlen)
{
    if (!pgw_jwt_alg_is_hmac(alg)) {
        set_err(err, errlen, "%s", "a secret goes with HS256, HS384 or HS512");
        return NULL;
    }
    if (len < (size_t)ALGS[alg].bits / 8) {
        char m[96];
        snprintf(m, sizeof(m), "a %s secret must have at least %d bytes", ALGS[alg].name,
                 ALGS[alg].bits / 8);
        set_err(err, errlen, "%s", m);
        return NULL;
    }
    struct pgw_jwt_key *k = key_new(alg, kid, kid ? strlen(kid) : 0);
    k->secret = pgw_malloc(len);
    memcpy(k->secret, secret, len);
    k->secret_len = len;
    /* keyed once: a verification duplicates the keyed state instead of hashing the key again */
    EVP_MAC *hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    k->mac = hmac != NULL ? EVP_MAC_CTX_new(hmac) : NULL;
    EVP_MAC_free(hmac);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)EVP_MD_get0_name(alg_md(alg)), 0),
        OSSL_PARAM_construct_end(),
    };
    pgw_assert(k->mac != NULL && EVP_MAC_init(k->mac, k->secret, len, params) == 1);
    return k;
}

/* ---- Key sets ---- */

struct pgw_jwt_keyset *pgw_jwt_keyset_new(void)
{
    struct pgw_jwt_keyset *ks = pgw_calloc(1, sizeof(*ks));
    ks->refs = 1;
    return ks;
}

void pgw_jwt_keyset_add(struct pgw_jwt_keyset *ks, struct pgw_jwt_key *k)
{
    ks->v = pgw_realloc(ks->v, (ks->n + 1) * sizeof(*ks->v));
    ks->v[ks->n++] = k;
}

size_t pgw_jwt_keyset_count(const struct pgw_jwt_keyset *ks) { return ks != NULL ? ks->n : 0; }

struct pgw_jwt_keyset *pgw_jwt_keyset_ref(struct pgw_jwt_keyset *ks)
{
    if (ks != NULL)
        ks->refs++;
    return ks;
}

void pgw_jwt_keyset_unref(struct pgw_jwt_keyset *ks)
{
    if (ks == NULL || --ks->refs > 0)
        return;
    for (size_t i = 0; i < ks->n; i++)
        key_free(ks->v[i]);
    free(ks->v);
    free(ks);
}

/* ---- JWKS ---- */

long pgw_jwt_b64url_decode(unsigned char *out, const char *in, size_t n)
{
    static signed char map[256];
    static int ready;
    if (!ready) {
        ready = 1;
        memset(map, -1, sizeof(map));
        for (int i = 0; i < 64; i++)
            map[(unsigned char)"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[i]] =
                (signed char)i;
    }
    if (n % 4 == 1)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = map[(unsigned char)in[i]];
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return acc != 0 ? -1 : (long)o; /* leftover bits must be zero: one encoding per value */
}

/* Member <name> of JWK <jwk>, a base64url string, decoded into <out> (cap bytes). Length, or -1. */
static long jwk_bytes(const struct pgw_json *jwk, const char *name, unsigned char *out, size_t cap)
{
    struct pgw_json v;
    char text[2048];
    size_t tl;
    if (pgw_json_get(jwk, name, &v) != PGW_OK || pgw_json_str(&v, text, sizeof(text), &tl) != PGW_OK ||
        tl == 0 || tl / 4 * 3 + 3 > cap)
        return -1;
    return pgw_jwt_b64url_decode(out, text, tl);
}

static EVP_PKEY *from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *pkey = NULL;
    if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

static EVP_PKEY *jwk_rsa(const struct pgw_json *jwk)
{
    unsigned char n[1540], e[16];
    long nl = jwk_bytes(jwk, "n", n, sizeof(n)), el = jwk_bytes(jwk, "e", e, sizeof(e));
    if (nl <= 0 || el <= 0)
        return NULL;
    BIGNUM *bn = BN_bin2bn(n, (int)nl, NULL), *be = BN_bin2bn(e, (int)el, NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    EVP_PKEY *pkey = NULL;
    if (bn != NULL && be != NULL && bld != NULL &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
        pkey = from_params("RSA", bld);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    return pkey;
}

static EVP_PKEY *jwk_ec(const struct pgw_json *jwk, int *alg)
{
    static const struct {
        const char *crv, *group;
        int alg;
        long size;
    } curves[] = {{"P-256", "P-256", PGW_JWT_ES256, 32},
                  {"P-384", "P-384", PGW_JWT_ES384, 48},
                  {"P-521", "P-521", PGW_JWT_ES512, 66}};
    struct pgw_json crv;
    if (pgw_json_get(jwk, "crv", &crv) != PGW_OK)
        return NULL;
    for (size_t i = 0; i < PGW_ARRAY_LEN(curves); i++) {
        if (!pgw_json_str_eq(&crv, curves[i].crv, strlen(curves[i].crv)))
            continue;
        unsigned char pt[1 + 2 * 66 + 8];
        long size = curves[i].size;
        pt[0] = 0x04; /* uncompressed point */
        if (jwk_bytes(jwk, "x", pt + 1, 72) != size || jwk_bytes(jwk, "y", pt + 1 + size, 72) != size)
            return NULL;
        OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
        EVP_PKEY *pkey = NULL;
        if (bld != NULL &&
            OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, curves[i].group, 0) &&
            OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, (size_t)(1 + 2 * size)))
            pkey = from_params("EC", bld);
        OSSL_PARAM_BLD_free(bld);
        EVP_PKEY_CTX *check = pkey != NULL ? EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL) : NULL;
        if (pkey != NULL && (check == NULL || EVP_PKEY_public_check(check) != 1)) {
            EVP_PKEY_free(pkey); /* not a point of the curve */
            pkey = NULL;
        }
        EVP_PKEY_CTX_free(check);
        *alg = curves[i].alg;
        return pkey;
    }
    return NULL;
}

static EVP_PKEY *jwk_okp(const struct pgw_json *jwk)
{
    struct pgw_json crv;
    unsigned char x[64];
    if (pgw_json_get(jwk, "crv", &crv) != PGW_OK)
        return NULL;
    int type = pgw_json_str_eq(&crv, "Ed25519", 7) ? EVP_PKEY_ED25519
               : pgw_json_str_eq(&crv, "Ed448", 5) ? EVP_PKEY_ED448
                                                   : 0;
    long xl = jwk_bytes(jwk, "x", x, sizeof(x));
    if (type == 0 || xl != (type == EVP_PKEY_ED25519 ? 32 : 57))
        return NULL;
    return EVP_PKEY_new_raw_public_key(type, NULL, x, (size_t)xl);
}

/* Adds the keys JWK <jwk> gives to <ks>; PGW_DECLINED when it gives none. */
static int jwk_add(struct pgw_jwt_keyset *ks, const struct pgw_json *jwk, unsigned algs)
{
    struct pgw_json v, kidv;
    char kid[PGW_JWT_MAX_KID];
    size_t kid_len = 0;
    int has_kid = pgw_json_get(jwk, "kid", &kidv) == PGW_OK;
    if (has_kid && pgw_json_str(&kidv, kid, sizeof(kid), &kid_len) != PGW_OK)
        return PGW_DECLINED;
    if (pgw_json_get(jwk, "use", &v) == PGW_OK && !pgw_json_str_eq(&v, "sig", 3))
        return PGW_DECLINED;
    int want = 0;
    if (pgw_json_get(jwk, "alg", &v) == PGW_OK) {
        char a[16];
        size_t al;
        if (pgw_json_str(&v, a, sizeof(a), &al) != PGW_OK || (want = pgw_jwt_alg_parse(a, al)) == 0 ||
            !(algs & PGW_JWT_ALG_BIT(want)))
            return PGW_DECLINED;
    }
    struct pgw_json kty;
    if (pgw_json_get(jwk, "kty", &kty) != PGW_OK)
        return PGW_DECLINED;
    EVP_PKEY *pkey = NULL;
    int ec_alg = 0;
    if (pgw_json_str_eq(&kty, "RSA", 3))
        pkey = jwk_rsa(jwk);
    else if (pgw_json_str_eq(&kty, "EC", 2))
        pkey = jwk_ec(jwk, &ec_alg);
    else if (pgw_json_str_eq(&kty, "OKP", 3))
        pkey = jwk_okp(jwk);
    if (pkey == NULL) { /* "oct" too: secrets never come from a URL */
        ERR_clear_error();
        return PGW_DECLINED;
    }
    size_t before = ks->n;
    for (int a = 1; a < PGW_JWT_ALG_END; a++) {
        if ((want != 0 && a != want) || !(algs & PGW_JWT_ALG_BIT(a)) || key_fits(pkey, a) != NULL)
            continue;
        struct pgw_jwt_key *k = key_new(a, has_kid ? kid : NULL, kid_len);
        k->pkey = pkey;
        EVP_PKEY_up_ref(pkey);
        pgw_jwt_keyset_add(ks, k);
    }
    EVP_PKEY_free(pkey);
    return ks->n > before ? PGW_OK : PGW_DECLINED;
}

struct pgw_jwt_keyset *pgw_jwt_keyset_from_jwks(const char *json, size_t len, unsigned algs,
                                                size_t *taken, size_t *skipped, char *err,
                                                size_t errlen)
{
    struct pgw_json root, keys, jwk;
    const char *reason;
    *skipped = *taken = 0;
    if (pgw_json_parse(json, len, PGW_JWT_MAX_DEPTH, 0, &root, &reason) != PGW_OK) {
        set_err(err, errlen, "invalid JSON: %s", reason);
        return NULL;
    }
    if (pgw_json_get(&root, "keys", &keys) != PGW_OK || keys.type != PGW_JSON_ARRAY) {
        set_err(err, errlen, "%s", "not a JSON Web Key Set (no \"keys\" array)");
        return NULL;
    }
    struct pgw_jwt_keyset *ks = pgw_jwt_keyset_new();
    size_t pos = 0;
    while (pgw_json_next(&keys, &pos, NULL, &jwk) == PGW_OK) {
        if (*taken >= PGW_JWT_MAX_JWKS_KEYS || jwk.type != PGW_JSON_OBJECT ||
            jwk_add(ks, &jwk, algs) != PGW_OK)
            (*skipped)++;
        else
            (*taken)++;
    }
    return ks;
}

/* ---- Signatures ---- */

/* ES*: the JOSE signature is r || s, each exactly <coord> bytes; OpenSSL wants DER. */
static int es_to_der(const unsigned char *sig, size_t len, int coord, unsigned char *der,
                     size_t *der_len)
{
    if (len != (size_t)coord * 2)
        return PGW_ERR;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, coord, NULL), *s = BN_bin2bn(sig + coord, coord, NULL);
    if (es == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(es, r, s)) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return PGW_ERR;
    }
    unsigned char *p = der;
    int n = i2d_ECDSA_SIG(es, &p); /* at most 141 bytes for P-521 */
    ECDSA_SIG_free(es);
    if (n <= 0)
        return PGW_ERR;
    *der_len = (size_t)n;
    return PGW_OK;
}

static int verify_hmac(const struct pgw_jwt_key *k, const char *data, size_t len,
                       const unsigned char *sig, size_t sig_len)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    size_t mac_len = 0;
    EVP_MAC_CTX *c = EVP_MAC_CTX_dup(k->mac);
    int done = c != NULL && EVP_MAC_update(c, (const unsigned char *)data, len) == 1 &&
               EVP_MAC_final(c, mac, &mac_len, sizeof(mac)) == 1;
    EVP_MAC_CTX_free(c);
    if (!done)
        return PGW_ERR;
    int ok = sig_len == mac_len && CRYPTO_memcmp(mac, sig, mac_len) == 0; /* constant time */
    OPENSSL_cleanse(mac, sizeof(mac));
    return ok ? PGW_OK : PGW_ERR;
}

static int verify_pkey(const struct pgw_jwt_key *k, const char *data, size_t len,
                       const unsigned char *sig, size_t sig_len)
{
    const struct alg_info *a = &ALGS[k->alg];
    unsigned char der[160];
    if (a->family == 'E') {
        if (es_to_der(sig, sig_len, a->coord, der, &sig_len) != PGW_OK)
            return PGW_ERR;
        sig = der;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int ok = md != NULL && EVP_DigestVerifyInit(md, &pctx, alg_md(k->alg), NULL, k->pkey) == 1;
    if (ok && a->family == 'P')
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, alg_md(k->alg)) == 1;
    ok = ok && EVP_DigestVerify(md, sig, sig_len, (const unsigned char *)data, len) == 1;
    EVP_MD_CTX_free(md);
    ERR_clear_error();
    return ok ? PGW_OK : PGW_ERR;
}

static int verify_sig(const struct pgw_jwt_key *k, const char *data, size_t len,
                      const unsigned char *sig, size_t sig_len)
{
    return k->secret != NULL ? verify_hmac(k, data, len, sig, sig_len)
                             : verify_pkey(k, data, len, sig, sig_len);
}

/* ---- Tokens ---- */

struct token {
    const char *text;
    size_t len;
    const char *parts[3];
    size_t lens[3];
    struct pgw_json header;
    size_t header_len; /* decoded bytes at the start of the scratch buffer */
    int alg;
    const char *kid;
    size_t kid_len;
    char kid_buf[PGW_JWT_MAX_KID];
};

static int refuse(struct pgw_jwt_result *out, const char **why, const char *reason, int code)
{
    out->code = code;
    *why = reason;
    return PGW_ERR;
}

static int split(struct token *t, const char **why)
{
    const char *p = t->text, *end = t->text + t->len;
    for (int i = 0; i < 3; i++) {
        const char *dot = i < 2 ? memchr(p, '.', (size_t)(end - p)) : end;
        if (dot == NULL) {
            *why = "not a JWS compact token (too few parts)";
            return PGW_ERR;
        }
        t->parts[i] = p;
        t->lens[i] = (size_t)(dot - p);
        p = dot + 1;
    }
    if (memchr(t->parts[2], '.', t->lens[2]) != NULL) {
        *why = "not a JWS compact token (more than 3 parts)";
        return PGW_ERR;
    }
    if (t->lens[0] == 0 || t->lens[1] == 0) {
        *why = "empty header or payload";
        return PGW_ERR;
    }
    return PGW_OK;
}

static int is_typ_ok(const struct pgw_json *typ)
{
    char s[32];
    size_t n;
    if (pgw_json_str(typ, s, sizeof(s), &n) != PGW_OK)
        return 0;
    const char *p = s;
    if (n > 12 && PGW_IEQ_LIT(s, 12, "application/"))
        p += 12, n -= 12;
    return PGW_IEQ_LIT(p, n, "JWT") || PGW_IEQ_LIT(p, n, "at+jwt");
}

/* Decodes and checks the header into t->header (JSON in <buf>). */
static int read_header(struct token *t, unsigned char *buf, const char **why)
{
    long hl = pgw_jwt_b64url_decode(buf, t->parts[0], t->lens[0]);
    const char *reason;
    if (hl < 0)
        return *why = "header is not base64url", PGW_ERR;
    t->header_len = (size_t)hl;
    if (pgw_json_parse((const char *)buf, (size_t)hl, PGW_JWT_MAX_DEPTH, PGW_JSON_UNIQUE_TOP,
                       &t->header, &reason) != PGW_OK ||
        t->header.type != PGW_JSON_OBJECT)
        return *why = "header is not a JSON object with unique members", PGW_ERR;
    struct pgw_json v;
    char a[16];
    size_t al;
    if (pgw_json_get(&t->header, "alg", &v) != PGW_OK || pgw_json_str(&v, a, sizeof(a), &al) != PGW_OK)
        return *why = "no alg", PGW_ERR;
    if (PGW_IEQ_LIT(a, al, "none"))
        return *why = "alg none", PGW_ERR;
    if ((t->alg = pgw_jwt_alg_parse(a, al)) == 0)
        return *why = "unsupported alg", PGW_ERR;
    if (pgw_json_get(&t->header, "crit", &v) == PGW_OK)
        return *why = "crit header (no extension is supported)", PGW_ERR;
    if (pgw_json_get(&t->header, "typ", &v) == PGW_OK && !is_typ_ok(&v))
        return *why = "typ is neither JWT nor at+jwt", PGW_ERR;
    t->kid = NULL;
    if (pgw_json_get(&t->header, "kid", &v) == PGW_OK) {
        if (pgw_json_str(&v, t->kid_buf, sizeof(t->kid_buf), &t->kid_len) != PGW_OK)
            return *why = "kid is not a string of at most 256 bytes", PGW_ERR;
        t->kid = t->kid_buf;
    }
    /* jku, x5u, x5c, jwk: ignored. Keys come from the provider only. */
    return PGW_OK;
}

/* Finds the key and checks the signature. */
static int check_signature(const struct token *t, struct pgw_jwt_keyset *const *sets, size_t nsets,
                           unsigned char *buf, struct pgw_jwt_result *out, const char **why)
{
    long sl = pgw_jwt_b64url_decode(buf, t->parts[2], t->lens[2]);
    if (sl <= 0)
        return refuse(out, why, "signature is not base64url", PGW_JWT_INVALID);
    const char *data = t->text;
    size_t data_len = t->lens[0] + 1 + t->lens[1];
    size_t nkeys = 0, tried = 0, kid_seen = 0;
    for (size_t s = 0; s < nsets; s++)
        for (size_t i = 0; sets[s] != NULL && i < sets[s]->n; i++) {
            const struct pgw_jwt_key *k = sets[s]->v[i];
            nkeys++;
            if (t->kid != NULL &&
                (k->kid == NULL || k->kid_len != t->kid_len || memcmp(k->kid, t->kid, t->kid_len) != 0))
                continue;
            kid_seen++;
            if (k->alg != t->alg) /* pinned: the key verifies its algorithm only */
                continue;
            if (++tried > 8)
                return refuse(out, why, "no key verified the signature (8 tried)", PGW_JWT_INVALID);
            if (verify_sig(k, data, data_len, buf, (size_t)sl) == PGW_OK)
                return PGW_OK;
            if (t->kid != NULL)
                return refuse(out, why, "bad signature", PGW_JWT_INVALID);
        }
    if (nkeys == 0)
        return refuse(out, why, "no keys loaded", PGW_JWT_NO_KEYS);
    if (t->kid != NULL && kid_seen == 0)
        return refuse(out, why, "unknown kid", PGW_JWT_UNKNOWN_KID);
    if (tried == 0)
        return refuse(out, why, "alg does not match the key's algorithm", PGW_JWT_INVALID);
    return refuse(out, why, "bad signature", PGW_JWT_INVALID);
}

static int get_time(const struct pgw_json *payload, const char *name, double *v, int *has,
                    const char **why, const char *bad)
{
    struct pgw_json j;
    *has = pgw_json_get(payload, name, &j) == PGW_OK;
    if (*has && pgw_json_num(&j, v) != PGW_OK) {
        *why = bad;
        return PGW_ERR;
    }
    return PGW_OK;
}

static int check_aud(const struct pgw_jwt_rules *r, const struct pgw_json *payload)
{
    struct pgw_json aud, item;
    if (pgw_json_get(payload, "aud", &aud) != PGW_OK ||
        (aud.type != PGW_JSON_STRING && aud.type != PGW_JSON_ARRAY))
        return PGW_ERR; /* RFC 7519 §4.1.3: a string or an array of strings */
    size_t pos = 0;
    int single = aud.type == PGW_JSON_STRING;
    while (single || pgw_json_next(&aud, &pos, NULL, &item) == PGW_OK) {
        const struct pgw_json *one = single ? &aud : &item;
        for (size_t i = 0; i < r->naud; i++)
            if (pgw_json_str_eq(one, r->audiences[i], strlen(r->audiences[i])))
                return PGW_OK;
        if (single)
            break;
    }
    return PGW_ERR;
}

static int check_claims(const struct pgw_jwt_rules *r, const struct pgw_json *payload, double now,
                        struct pgw_jwt_result *out, const char **why)
{
    double iat;
    int has_iat;
    struct pgw_json v;
    if (get_time(payload, "exp", &out->exp, &out->has_exp, why, "exp is not a number") != PGW_OK ||
        get_time(payload, "nbf", &out->nbf, &out->has_nbf, why, "nbf is not a number") != PGW_OK ||
        get_time(payload, "iat", &iat, &has_iat, why, "iat is not a number") != PGW_OK)
        return PGW_ERR;
    if (pgw_jwt_check_times(r, out, now, why) != PGW_OK)
        return PGW_ERR;
    if (r->reject_future_iat && has_iat && iat > now + r->leeway)
        return *why = "iat in the future", PGW_ERR;
    if (r->issuer != NULL &&
        (pgw_json_get(payload, "iss", &v) != PGW_OK || !pgw_json_str_eq(&v, r->issuer, strlen(r->issuer))))
        return *why = "wrong issuer", PGW_ERR;
    if (r->naud > 0 && check_aud(r, payload) != PGW_OK)
        return *why = "audience not accepted", PGW_ERR;
    for (size_t i = 0; i < r->nreq; i++)
        if (pgw_json_get(payload, r->required[i], &v) != PGW_OK)
            return *why = "a required claim is missing", PGW_ERR;
    return PGW_OK;
}

int pgw_jwt_check_times(const struct pgw_jwt_rules *r, const struct pgw_jwt_result *res, double now,
                        const char **why)
{
    if (res->has_exp && now >= res->exp + r->leeway)
        return *why = "token expired", PGW_ERR;
    if (res->has_nbf && now + r->leeway < res->nbf)
        return *why = "token not yet valid (nbf)", PGW_ERR;
    return PGW_OK;
}

int pgw_jwt_verify(const struct pgw_jwt_rules *r, struct pgw_jwt_keyset *const *sets, size_t nsets,
                   const char *token, size_t len, double now, unsigned char *buf, size_t cap,
                   struct pgw_jwt_result *out, const char **why)
{
    memset(out, 0, sizeof(*out));
    struct token t = {.text = token, .len = len};
    if (len > r->max_size)
        return refuse(out, why, "token too large", PGW_JWT_INVALID);
    pgw_assert(cap >= len);
    if (split(&t, why) != PGW_OK)
        return refuse(out, why, *why, PGW_JWT_INVALID);
    /* buf: the header's JSON, then the signature, then the payload, each after the previous */
    if (read_header(&t, buf, why) != PGW_OK)
        return refuse(out, why, *why, PGW_JWT_INVALID);
    out->alg = t.alg;
    unsigned char *sig = buf + t.header_len; /* then the payload, over the checked signature */
    if (check_signature(&t, sets, nsets, sig, out, why) != PGW_OK)
        return PGW_ERR;
    long pl = pgw_jwt_b64url_decode(sig, t.parts[1], t.lens[1]);
    struct pgw_json payload;
    const char *reason;
    if (pl < 0)
        return refuse(out, why, "payload is not base64url", PGW_JWT_INVALID);
    if (pgw_json_parse((const char *)sig, (size_t)pl, PGW_JWT_MAX_DEPTH, PGW_JSON_UNIQUE_TOP, &payload,
                       &reason) != PGW_OK ||
        payload.type != PGW_JSON_OBJECT)
        return refuse(out, why, "payload is not a JSON object with unique members", PGW_JWT_INVALID);
    if (check_claims(r, &payload, now, out, why) != PGW_OK)
        return refuse(out, why, *why, PGW_JWT_INVALID);
    out->payload = (const char *)sig;
    out->payload_len = (size_t)pl;
    return PGW_OK;
}
