/* jwt_test.c: jwt.c and jwt_provider.c without the network. Keys are generated here with OpenSSL
 * (RSA 2048, P-256/384/521, Ed25519, Ed448) and tokens signed here (HMAC, PKCS#1 v1.5, PSS with
 * the salt as long as the hash, ECDSA converted to the raw r || s of RFC 7518, EdDSA). Every
 * refusal has a control: the same set-up with the untampered token verifies.
 */
#include "../../gateway/jwt.c"
#include "../../gateway/config.h"
#include "../../gateway/genfiles.h"
#include "../../gateway/jwt_provider.h"
#include "../support/test.h"

#include <jwt.h> /* libjwt, the oracle of test_libjwt_oracle */

#include <openssl/ecdsa.h>
#include <openssl/hmac.h>
#include <openssl/rsa.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#define NOW 1700000000.0

/* ---- Memory kept until the end of the current test ---- */

static void *garbage[65536];
static size_t ngarbage;
static struct pgw_jwt_keyset *kept_sets[1024];
static size_t nkept_sets;

static void *keep(void *p)
{
    pgw_assert(ngarbage < PGW_ARRAY_LEN(garbage));
    garbage[ngarbage++] = p;
    return p;
}

static struct pgw_jwt_keyset *keep_ks(struct pgw_jwt_keyset *ks)
{
    pgw_assert(nkept_sets < PGW_ARRAY_LEN(kept_sets));
    if (ks != NULL)
        kept_sets[nkept_sets++] = ks;
    return ks;
}

static void collect(void)
{
    for (size_t i = 0; i < ngarbage; i++)
        free(garbage[i]);
    ngarbage = 0;
    for (size_t i = 0; i < nkept_sets; i++)
        pgw_jwt_keyset_unref(kept_sets[i]);
    nkept_sets = 0;
}

static char *PGW_PRINTF(1, 2) fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    int n = vasprintf(&s, f, ap);
    va_end(ap);
    pgw_assert(n >= 0);
    return keep(s);
}

/* ---- base64url ---- */

static size_t b64url(char *out, const unsigned char *in, size_t n)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = a[(v >> 6) & 63];
        out[o++] = a[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
    } else if (n - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = a[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

static char *b64s(const void *in, size_t n)
{
    char *s = keep(malloc(n / 3 * 4 + 5));
    b64url(s, in, n);
    return s;
}

/* ---- Keys ---- */

static EVP_PKEY *rsa_a, *rsa_b, *rsa_small, *ec256, *ec256_b, *ec384, *ec521, *ed25519, *ed448;

static char *pub_pem(EVP_PKEY *k)
{
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(b, k);
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *s = keep(pgw_strndup(data, (size_t)n));
    BIO_free(b);
    return s;
}

static char *priv_pem(EVP_PKEY *k, int traditional)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (traditional)
        PEM_write_bio_PrivateKey_traditional(b, k, NULL, NULL, 0, NULL, NULL);
    else
        PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *s = keep(pgw_strndup(data, (size_t)n));
    BIO_free(b);
    return s;
}

static char *cert_pem(EVP_PKEY *k)
{
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    X509_gmtime_adj(X509_getm_notBefore(x), -86400);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, k);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"idp", -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509_sign(x, k, EVP_sha256());
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, x);
    char *data;
    long len = BIO_get_mem_data(b, &data);
    char *s = keep(pgw_strndup(data, (size_t)len));
    BIO_free(b);
    X509_free(x);
    return s;
}

static const unsigned char SECRET[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
#define SECRET_LEN 64

/* The key of the tests for <alg>. */
static EVP_PKEY *pkey_for(int alg)
{
    switch (alg) {
    case PGW_JWT_ES256:
        return ec256;
    case PGW_JWT_ES384:
        return ec384;
    case PGW_JWT_ES512:
        return ec521;
    case PGW_JWT_EDDSA:
        return ed25519;
    default:
        return pgw_jwt_alg_is_hmac(alg) ? NULL : rsa_a;
    }
}

static struct pgw_jwt_key *key_of(int alg, const char *kid, EVP_PKEY *pk, const unsigned char *secret)
{
    char err[256] = "";
    struct pgw_jwt_key *k;
    if (pgw_jwt_alg_is_hmac(alg)) {
        k = pgw_jwt_key_secret(alg, kid, secret, SECRET_LEN, err, sizeof(err));
    } else {
        const char *pem = pub_pem(pk);
        k = pgw_jwt_key_pem(alg, kid, pem, strlen(pem), err, sizeof(err));
    }
    if (k == NULL) {
        fprintf(stderr, "FAIL %s: key for %s: %s\n", test_current, pgw_jwt_alg_name(alg), err);
        test_current_failed = 1;
    }
    return k;
}

/* A key set of one key per (alg, kid, key) given: alg 0 ends the list. */
static struct pgw_jwt_keyset *ks_of(int alg, const char *kid, EVP_PKEY *pk, const unsigned char *secret)
{
    struct pgw_jwt_keyset *ks = keep_ks(pgw_jwt_keyset_new());
    struct pgw_jwt_key *k = key_of(alg, kid, pk, secret);
    if (k != NULL)
        pgw_jwt_keyset_add(ks, k);
    return ks;
}

static struct pgw_jwt_keyset *ks_for(int alg, const char *kid)
{
    return ks_of(alg, kid, pkey_for(alg), SECRET);
}

static void ks_add(struct pgw_jwt_keyset *ks, int alg, const char *kid, EVP_PKEY *pk,
                   const unsigned char *secret)
{
    struct pgw_jwt_key *k = key_of(alg, kid, pk, secret);
    if (k != NULL)
        pgw_jwt_keyset_add(ks, k);
}

/* ---- Signing ---- */

struct signer {
    int alg;                     /* how the signature is made (the header may say otherwise) */
    EVP_PKEY *pk;                /* asymmetric */
    const unsigned char *secret; /* HS* */
    size_t slen;
    int der;                     /* ES*: leave the DER signature OpenSSL makes */
    int salt;                    /* PS*: 0 the hash's length (RFC 7518), -1 none, else bytes */
};

static struct signer signer_for(int alg)
{
    return (struct signer){.alg = alg, .pk = pkey_for(alg), .secret = SECRET, .slen = SECRET_LEN};
}

static size_t sign_data(const struct signer *s, const char *data, size_t len, unsigned char *sig)
{
    const struct alg_info *a = &ALGS[s->alg];
    if (a->family == 'H') {
        unsigned n = 0;
        HMAC(alg_md(s->alg), s->secret, (int)s->slen, (const unsigned char *)data, len, sig, &n);
        return n;
    }
    unsigned char der[1024];
    size_t n = sizeof(der);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    pgw_assert(EVP_DigestSignInit(md, &pctx, alg_md(s->alg), NULL, s->pk) == 1);
    if (a->family == 'P') {
        pgw_assert(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1);
        int salt = s->salt == 0 ? RSA_PSS_SALTLEN_DIGEST : s->salt < 0 ? 0 : s->salt;
        pgw_assert(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, salt) == 1);
        pgw_assert(EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, alg_md(s->alg)) == 1);
    }
    pgw_assert(EVP_DigestSign(md, der, &n, (const unsigned char *)data, len) == 1);
    EVP_MD_CTX_free(md);
    if (a->family != 'E' || s->der) {
        memcpy(sig, der, n);
        return n;
    }
    const unsigned char *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)n);
    pgw_assert(es != NULL);
    const BIGNUM *r, *ss;
    ECDSA_SIG_get0(es, &r, &ss);
    BN_bn2binpad(r, sig, a->coord);
    BN_bn2binpad(ss, sig + a->coord, a->coord);
    ECDSA_SIG_free(es);
    return (size_t)a->coord * 2;
}

/* The signature of <h>.<p> (JSON texts, encoded here). */
static size_t sig_of(const struct signer *s, const char *h, const char *p, unsigned char *sig)
{
    char *input = fmt("%s.%s", b64s(h, strlen(h)), b64s(p, strlen(p)));
    return sign_data(s, input, strlen(input), sig);
}

static char *join(const char *h, const char *p, const unsigned char *sig, size_t sl)
{
    return fmt("%s.%s.%s", b64s(h, strlen(h)), b64s(p, strlen(p)), b64s(sig, sl));
}

static char *tok(const struct signer *s, const char *h, const char *p)
{
    unsigned char sig[1024];
    size_t sl = sig_of(s, h, p, sig);
    return join(h, p, sig, sl);
}

static char *hdr(int alg) { return fmt("{\"alg\":\"%s\",\"typ\":\"JWT\"}", pgw_jwt_alg_name(alg)); }
static char *hdr_kid(int alg, const char *kid)
{
    return fmt("{\"alg\":\"%s\",\"kid\":\"%s\"}", pgw_jwt_alg_name(alg), kid);
}
static char *pl_default(void) { return fmt("{\"sub\":\"u\",\"exp\":%.0f}", NOW + 600); }

/* The usual token of <alg>, signed with the test key of <alg>. */
static char *tok_for(int alg) { struct signer s = signer_for(alg); return tok(&s, hdr(alg), pl_default()); }

/* ---- Verifying ---- */

static struct pgw_jwt_rules R;
static struct pgw_jwt_result g_res;
static const char *g_why;
static char g_payload[65536];

static void reset_rules(void) { R = (struct pgw_jwt_rules){.leeway = 30, .max_size = 65536}; }

/* pgw_jwt_verify with a scratch buffer of exactly the token's length (ASan sees any overrun). */
static int vfy_sets(struct pgw_jwt_keyset *const *sets, size_t nsets, const char *token, size_t len,
                    double now)
{
    unsigned char *buf = malloc(len > 0 ? len : 1);
    g_why = "(not set)";
    int rc = pgw_jwt_verify(&R, sets, nsets, token, len, now, buf, len, &g_res, &g_why);
    if (rc == PGW_OK) {
        pgw_assert(g_res.payload_len < sizeof(g_payload));
        CHECK(g_res.payload >= (const char *)buf &&
              g_res.payload + g_res.payload_len <= (const char *)buf + len);
        memcpy(g_payload, g_res.payload, g_res.payload_len);
        g_payload[g_res.payload_len] = '\0';
        g_res.payload = g_payload;
        CHECK_INT(g_res.code, 0);
    } else {
        CHECK(g_why != NULL && strcmp(g_why, "(not set)") != 0);
        CHECK(g_res.code == PGW_JWT_INVALID || g_res.code == PGW_JWT_UNKNOWN_KID ||
              g_res.code == PGW_JWT_NO_KEYS);
    }
    CHECK_INT(ERR_peek_error(), 0); /* nothing left in OpenSSL's error queue */
    free(buf);
    return rc;
}

static int vfy_at(struct pgw_jwt_keyset *ks, const char *token, double now)
{
    struct pgw_jwt_keyset *sets[1] = {ks};
    return vfy_sets(sets, 1, token, strlen(token), now);
}

static int vfy(struct pgw_jwt_keyset *ks, const char *token) { return vfy_at(ks, token, NOW); }

#define EXPECT_OK(call)                                                                            \
    do {                                                                                           \
        if ((call) != PGW_OK) {                                                                    \
            fprintf(stderr, "FAIL %s: %s:%d: %s refused: %s\n", test_current, __FILE__, __LINE__,  \
                    #call, g_why);                                                                 \
            test_current_failed = 1;                                                               \
        }                                                                                          \
    } while (0)

#define EXPECT_REFUSED(call, want_code)                                                            \
    do {                                                                                           \
        if ((call) != PGW_ERR) {                                                                   \
            fprintf(stderr, "FAIL %s: %s:%d: %s accepted\n", test_current, __FILE__, __LINE__,     \
                    #call);                                                                        \
            test_current_failed = 1;                                                               \
        } else if (g_res.code != (want_code)) {                                                    \
            fprintf(stderr, "FAIL %s: %s:%d: %s: code %d, expected %d (%s)\n", test_current,       \
                    __FILE__, __LINE__, #call, g_res.code, (int)(want_code), g_why);              \
            test_current_failed = 1;                                                               \
        }                                                                                          \
    } while (0)

#define EXPECT_WHY(sub)                                                                            \
    do {                                                                                           \
        if (g_why == NULL || strstr(g_why, (sub)) == NULL) {                                       \
            fprintf(stderr, "FAIL %s: %s:%d: reason \"%s\", expected \"%s\"\n", test_current,      \
                    __FILE__, __LINE__, g_why ? g_why : "(null)", (sub));                          \
            test_current_failed = 1;                                                               \
        }                                                                                          \
    } while (0)

/* ---- Algorithms ---- */

static void test_alg_names(void)
{
    for (int a = 1; a < PGW_JWT_ALG_END; a++) {
        const char *n = pgw_jwt_alg_name(a);
        CHECK_INT(pgw_jwt_alg_parse(n, strlen(n)), a);
        CHECK_INT(pgw_jwt_alg_is_hmac(a), a <= PGW_JWT_HS512);
        CHECK_INT(!!(PGW_JWT_ALGS_ASYMMETRIC & PGW_JWT_ALG_BIT(a)), a > PGW_JWT_HS512);
    }
    CHECK_INT(PGW_JWT_ALGS_ASYMMETRIC & 1u, 0);
    CHECK_INT(PGW_JWT_ALGS_ASYMMETRIC & PGW_JWT_ALG_BIT(PGW_JWT_ALG_END), 0);
    static const char *const bad[] = {"rs256", "EDDSA", "eddsa", "HS256 ", " HS256", "", "none",
                                      "HS25", "HS2566", "ES256K", "RSA-OAEP", "Ed25519"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad); i++)
        CHECK_INT(pgw_jwt_alg_parse(bad[i], strlen(bad[i])), 0);
    CHECK_INT(pgw_jwt_alg_parse("RS256", 4), 0);
    CHECK(strcmp(pgw_jwt_alg_name(0), "?") == 0);
    CHECK(strcmp(pgw_jwt_alg_name(PGW_JWT_ALG_END), "?") == 0);
    CHECK(strcmp(pgw_jwt_alg_name(-1), "?") == 0);
    CHECK(!pgw_jwt_alg_is_hmac(0));
    CHECK(!pgw_jwt_alg_is_hmac(PGW_JWT_ALG_END));
}

static void test_b64url(void)
{
    static const struct {
        const char *in, *out;
        long n;
    } cases[] = {
        {"", "", 0},        {"Zg", "f", 1},     {"Zm8", "fo", 2},      {"Zm9v", "foo", 3},
        {"Zm9vYg", "foob", 4}, {"Zm9vYmE", "fooba", 5}, {"Zm9vYmFy", "foobar", 6},
        {"-_-_", "\xfb\xff\xbf", 3}, {"AAAA", "\0\0\0", 3}, {"__8", "\xff\xff", 2},
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(cases); i++) {
        size_t n = strlen(cases[i].in);
        unsigned char *out = malloc(n * 3 / 4 + 1);
        char *in = malloc(n + 1);
        memcpy(in, cases[i].in, n);
        long l = pgw_jwt_b64url_decode(out, in, n);
        CHECK_INT(l, cases[i].n);
        if (l == cases[i].n)
            CHECK(memcmp(out, cases[i].out, (size_t)l) == 0);
        free(out);
        free(in);
    }
    static const char *const bad[] = {
        "A",     "AAAAA", "Zh",   "Zm9",   "AB",    "AAB",   "Zg==",  "Zg=",   "Zm8=", "Zm9v+",
        "Zm9/",  "Zm9+",  "Zm 9", "Zm9v ", " Zm9v", "Zm\n9v", "Zm.9", "Zm9v\x80", "Z\xC3\xA9v",
        "Zm9vY", "____A", "Zm9vYmF=",
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad); i++) {
        size_t n = strlen(bad[i]);
        unsigned char out[16];
        if (pgw_jwt_b64url_decode(out, bad[i], n) != -1) {
            fprintf(stderr, "FAIL %s: decoded <%s>\n", test_current, bad[i]);
            test_current_failed = 1;
        }
    }
    unsigned char nul_out[4];
    CHECK_INT(pgw_jwt_b64url_decode(nul_out, "Zm\0v", 4), -1);
    /* every non-canonical last character is refused, the canonical one decodes */
    const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (int v = 0; v < 64; v++) {
        char in2[2] = {'Q', alphabet[v]}, in3[3] = {'Q', 'Q', alphabet[v]};
        unsigned char out[4];
        CHECK_INT(pgw_jwt_b64url_decode(out, in2, 2), (v & 15) ? -1 : 1);
        CHECK_INT(pgw_jwt_b64url_decode(out, in3, 3), (v & 3) ? -1 : 2);
    }
    /* round trips, into buffers of exactly n * 3 / 4 bytes */
    unsigned char data[200];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (unsigned char)(i * 37 + 11);
    for (size_t len = 0; len <= sizeof(data); len++) {
        char enc[300];
        size_t n = b64url(enc, data, len);
        char *in = malloc(n + 1);
        memcpy(in, enc, n);
        unsigned char *out = malloc(n * 3 / 4 + 1);
        long l = pgw_jwt_b64url_decode(out, in, n);
        CHECK_INT(l, len);
        CHECK(l < 0 || memcmp(out, data, len) == 0);
        free(in);
        free(out);
    }
}

/* ---- Every algorithm ---- */

/* <s> signs for <alg> (the header says <alg>); verifies with <ks>, then a one-bit change in the
 * signature (several places), the payload and the header must each fail. */
static void check_alg(int alg, const struct signer *s, struct pgw_jwt_keyset *ks)
{
    char *h = fmt("{\"alg\":\"%s\",\"typ\":\"JWT\",\"x\":\"a\"}", pgw_jwt_alg_name(alg));
    char *h_flip = fmt("{\"alg\":\"%s\",\"typ\":\"JWT\",\"x\":\"c\"}", pgw_jwt_alg_name(alg));
    char *p = fmt("{\"sub\":\"u\",\"exp\":%.0f}", NOW + 600);
    char *p_flip = fmt("{\"sub\":\"t\",\"exp\":%.0f}", NOW + 600);
    unsigned char sig[1024];
    size_t sl = sig_of(s, h, p, sig);
    if (vfy(ks, join(h, p, sig, sl)) != PGW_OK) {
        fprintf(stderr, "FAIL %s: %s refused: %s\n", test_current, pgw_jwt_alg_name(alg), g_why);
        test_current_failed = 1;
        return;
    }
    CHECK_INT(g_res.alg, alg);
    CHECK(strcmp(g_payload, p) == 0);
    CHECK_INT(g_res.has_exp, 1);
    CHECK(g_res.exp == NOW + 600);
    CHECK_INT(g_res.has_nbf, 0);
    size_t where[] = {0, sl / 2, sl - 1};
    for (size_t w = 0; w < PGW_ARRAY_LEN(where); w++)
        for (int bit = 0; bit < 8; bit += 7) {
            unsigned char bad[1024];
            memcpy(bad, sig, sl);
            bad[where[w]] ^= (unsigned char)(1u << bit);
            if (vfy(ks, join(h, p, bad, sl)) != PGW_ERR || g_res.code != PGW_JWT_INVALID) {
                fprintf(stderr, "FAIL %s: %s: signature bit %d of byte %zu changed, accepted\n",
                        test_current, pgw_jwt_alg_name(alg), bit, where[w]);
                test_current_failed = 1;
            }
        }
    if (vfy(ks, join(h, p_flip, sig, sl)) != PGW_ERR || g_res.code != PGW_JWT_INVALID ||
        strcmp(g_why, "bad signature") != 0) {
        fprintf(stderr, "FAIL %s: %s: payload bit changed: %s\n", test_current,
                pgw_jwt_alg_name(alg), g_why);
        test_current_failed = 1;
    }
    if (vfy(ks, join(h_flip, p, sig, sl)) != PGW_ERR || g_res.code != PGW_JWT_INVALID ||
        strcmp(g_why, "bad signature") != 0) {
        fprintf(stderr, "FAIL %s: %s: header bit changed: %s\n", test_current, pgw_jwt_alg_name(alg),
                g_why);
        test_current_failed = 1;
    }
    /* the signature over the other header/payload verifies: the flips alone made the difference */
    unsigned char sig2[1024];
    size_t sl2 = sig_of(s, h_flip, p_flip, sig2);
    CHECK_INT(vfy(ks, join(h_flip, p_flip, sig2, sl2)), PGW_OK);
    /* a signature one byte short or long */
    if (sl > 1)
        CHECK_INT(vfy(ks, join(h, p, sig, sl - 1)), PGW_ERR);
    unsigned char longer[1025];
    memcpy(longer, sig, sl);
    longer[sl] = 0;
    CHECK_INT(vfy(ks, join(h, p, longer, sl + 1)), PGW_ERR);
}

static void test_every_alg(void)
{
    for (int alg = 1; alg < PGW_JWT_ALG_END; alg++) {
        struct signer s = signer_for(alg);
        check_alg(alg, &s, ks_for(alg, NULL));
    }
    /* EdDSA with Ed448 */
    struct signer s448 = {.alg = PGW_JWT_EDDSA, .pk = ed448};
    check_alg(PGW_JWT_EDDSA, &s448, ks_of(PGW_JWT_EDDSA, NULL, ed448, NULL));
    /* keys from certificates */
    char err[256];
    for (int alg = PGW_JWT_RS256; alg < PGW_JWT_ALG_END; alg++) {
        if (pkey_for(alg) == ed25519)
            continue; /* X509_sign with an Ed25519 key needs no digest: not worth the detour */
        const char *pem = cert_pem(pkey_for(alg));
        struct pgw_jwt_key *k = pgw_jwt_key_pem(alg, NULL, pem, strlen(pem), err, sizeof(err));
        CHECK(k != NULL);
        if (k == NULL)
            continue;
        struct pgw_jwt_keyset *ks = keep_ks(pgw_jwt_keyset_new());
        pgw_jwt_keyset_add(ks, k);
        struct signer s = signer_for(alg);
        check_alg(alg, &s, ks);
    }
}

/* ---- libjwt as an oracle ---- */

/* libjwt 1.10 (the library the design first named) on the same tokens: it agrees with us on
 * genuine and tampered HS/RS/ES tokens, and accepts the key-confusion token we refuse when it
 * is given the RSA public key's PEM, which is why every key here is pinned to one algorithm. */
static int libjwt_accepts(const char *token, const unsigned char *key, size_t klen, jwt_alg_t *alg)
{
    jwt_t *j = NULL;
    int r = jwt_decode(&j, token, key, (int)klen);
    if (r == 0 && alg != NULL)
        *alg = jwt_get_alg(j);
    jwt_free(j);
    return r == 0;
}

static void test_libjwt_oracle(void)
{
    static const int algs[] = {PGW_JWT_HS256, PGW_JWT_RS256, PGW_JWT_ES256, PGW_JWT_ES384};
    for (size_t i = 0; i < PGW_ARRAY_LEN(algs); i++) {
        int a = algs[i];
        EVP_PKEY *pk = pkey_for(a);
        const unsigned char *key = a == PGW_JWT_HS256 ? SECRET : (const unsigned char *)pub_pem(pk);
        size_t klen = a == PGW_JWT_HS256 ? SECRET_LEN : strlen((const char *)key);
        struct pgw_jwt_keyset *ks = ks_of(a, NULL, a == PGW_JWT_HS256 ? NULL : pk,
                                          a == PGW_JWT_HS256 ? SECRET : NULL);
        char *good = tok_for(a);
        char *bad = keep(pgw_strndup(good, strlen(good)));
        char *last = bad + strlen(bad) - 2; /* a signature byte, not the last character */
        *last = *last == 'A' ? 'B' : 'A';
        CHECK(libjwt_accepts(good, key, klen, NULL));
        EXPECT_OK(vfy(ks, good));
        CHECK(!libjwt_accepts(bad, key, klen, NULL));
        EXPECT_REFUSED(vfy(ks, bad), PGW_JWT_INVALID);
    }
    const char *pem = pub_pem(rsa_a);
    struct signer evil = {.alg = PGW_JWT_HS256, .secret = (const unsigned char *)pem, .slen = strlen(pem)};
    char *confused = tok(&evil, hdr(PGW_JWT_HS256), pl_default());
    jwt_alg_t got = JWT_ALG_NONE;
    CHECK(libjwt_accepts(confused, (const unsigned char *)pem, strlen(pem), &got)); /* the pitfall */
    CHECK(got == JWT_ALG_HS256);
    EXPECT_REFUSED(vfy(ks_of(PGW_JWT_RS256, NULL, rsa_a, NULL), confused), PGW_JWT_INVALID);
}

/* ---- Algorithm pinning ---- */

static void test_alg_pinning(void)
{
    const char *pem = pub_pem(rsa_a);
    /* the key confusion attack: HS256 with the RSA public key's PEM text as the secret */
    for (int h = PGW_JWT_HS256; h <= PGW_JWT_HS512; h++) {
        struct signer evil = {.alg = h, .secret = (const unsigned char *)pem, .slen = strlen(pem)};
        char *t = tok(&evil, hdr(h), pl_default());
        char *tk = tok(&evil, hdr_kid(h, "rsa"), pl_default());
        /* control: it is a well-made HMAC token */
        char err[256];
        struct pgw_jwt_keyset *hk = keep_ks(pgw_jwt_keyset_new());
        pgw_jwt_keyset_add(hk, pgw_jwt_key_secret(h, "rsa", (const unsigned char *)pem, strlen(pem),
                                                  err, sizeof(err)));
        EXPECT_OK(vfy(hk, t));
        EXPECT_OK(vfy(hk, tk));
        /* refused by the RSA key pinned to RS256, with or without kid */
        struct pgw_jwt_keyset *rk = ks_of(PGW_JWT_RS256, "rsa", rsa_a, NULL);
        EXPECT_REFUSED(vfy(rk, t), PGW_JWT_INVALID);
        EXPECT_REFUSED(vfy(rk, tk), PGW_JWT_INVALID);
        /* refused by the RSA key under every RS and PS algorithm */
        struct pgw_jwt_keyset *all = keep_ks(pgw_jwt_keyset_new());
        for (int a = PGW_JWT_RS256; a <= PGW_JWT_PS512; a++)
            ks_add(all, a, "rsa", rsa_a, NULL);
        EXPECT_REFUSED(vfy(all, t), PGW_JWT_INVALID);
        EXPECT_REFUSED(vfy(all, tk), PGW_JWT_INVALID);
        /* same from a JWKS: kty RSA without alg expands to RS and PS only */
        BIGNUM *n = NULL, *e = NULL;
        EVP_PKEY_get_bn_param(rsa_a, OSSL_PKEY_PARAM_RSA_N, &n);
        EVP_PKEY_get_bn_param(rsa_a, OSSL_PKEY_PARAM_RSA_E, &e);
        unsigned char nb[512], eb[8];
        int nl = BN_bn2bin(n, nb), el = BN_bn2bin(e, eb);
        BN_free(n);
        BN_free(e);
        char *jwks = fmt("{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"rsa\",\"n\":\"%s\",\"e\":\"%s\"}]}",
                         b64s(nb, (size_t)nl), b64s(eb, (size_t)el));
        size_t skipped, taken;
        struct pgw_jwt_keyset *jk = keep_ks(
            pgw_jwt_keyset_from_jwks(jwks, strlen(jwks), PGW_JWT_ALGS_ASYMMETRIC | PGW_JWT_ALG_BIT(h),
                                     &taken, &skipped, err, sizeof(err)));
        CHECK(jk != NULL);
        CHECK_INT(taken, 1);
        CHECK_INT(pgw_jwt_keyset_count(jk), 6);
        EXPECT_REFUSED(vfy(jk, t), PGW_JWT_INVALID);
        EXPECT_REFUSED(vfy(jk, tk), PGW_JWT_INVALID);
    }
    /* RS256 token against the same RSA key configured PS256, and the other way round */
    struct pgw_jwt_keyset *ps = ks_of(PGW_JWT_PS256, NULL, rsa_a, NULL);
    struct pgw_jwt_keyset *rs = ks_of(PGW_JWT_RS256, NULL, rsa_a, NULL);
    char *t_rs = tok_for(PGW_JWT_RS256), *t_ps = tok_for(PGW_JWT_PS256);
    EXPECT_OK(vfy(rs, t_rs));
    EXPECT_OK(vfy(ps, t_ps));
    EXPECT_REFUSED(vfy(ps, t_rs), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(rs, t_ps), PGW_JWT_INVALID);
    /* a header that says RS256 over a PSS signature (and the reverse): the padding is the key's */
    struct signer pss = signer_for(PGW_JWT_PS256), pkcs = signer_for(PGW_JWT_RS256);
    EXPECT_REFUSED(vfy(rs, tok(&pss, hdr(PGW_JWT_RS256), pl_default())), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ps, tok(&pkcs, hdr(PGW_JWT_PS256), pl_default())), PGW_JWT_INVALID);
    /* PSS with a salt other than the hash's length (RFC 7518 §3.5) */
    for (int a = PGW_JWT_PS256; a <= PGW_JWT_PS512; a++) {
        struct pgw_jwt_keyset *pk = ks_of(a, NULL, rsa_a, NULL);
        int hl = ALGS[a].bits / 8;
        static const int salts[] = {-1, 20, 64, 65};
        for (size_t i = 0; i < PGW_ARRAY_LEN(salts); i++) {
            struct signer sp = {.alg = a, .pk = rsa_a, .salt = salts[i]};
            char *t = tok(&sp, hdr(a), pl_default());
            if (salts[i] == hl)
                EXPECT_OK(vfy(pk, t));
            else
                EXPECT_REFUSED(vfy(pk, t), PGW_JWT_INVALID);
        }
    }
    /* the hash is the key's too: RS384 token against an RS256 key */
    EXPECT_REFUSED(vfy(rs, tok_for(PGW_JWT_RS384)), PGW_JWT_INVALID);
    struct signer rs384 = signer_for(PGW_JWT_RS384);
    EXPECT_REFUSED(vfy(rs, tok(&rs384, hdr(PGW_JWT_RS256), pl_default())), PGW_JWT_INVALID);
    /* ES256 token against a P-384 key (ES384) */
    struct pgw_jwt_keyset *p384 = ks_for(PGW_JWT_ES384, NULL);
    EXPECT_OK(vfy(p384, tok_for(PGW_JWT_ES384)));
    EXPECT_REFUSED(vfy(p384, tok_for(PGW_JWT_ES256)), PGW_JWT_INVALID);
    struct signer es256_by_384 = {.alg = PGW_JWT_ES384, .pk = ec384};
    EXPECT_REFUSED(vfy(p384, tok(&es256_by_384, hdr(PGW_JWT_ES256), pl_default())), PGW_JWT_INVALID);
    char err[256];
    const char *p384pem = pub_pem(ec384);
    CHECK(pgw_jwt_key_pem(PGW_JWT_ES256, NULL, p384pem, strlen(p384pem), err, sizeof(err)) == NULL);
    /* EdDSA token against an ES256 key, ES256 against EdDSA, HS256 against EdDSA */
    EXPECT_REFUSED(vfy(ks_for(PGW_JWT_ES256, NULL), tok_for(PGW_JWT_EDDSA)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks_for(PGW_JWT_EDDSA, NULL), tok_for(PGW_JWT_ES256)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks_for(PGW_JWT_EDDSA, NULL), tok_for(PGW_JWT_HS256)), PGW_JWT_INVALID);
    /* an HS256 secret does not verify HS512 */
    EXPECT_REFUSED(vfy(ks_for(PGW_JWT_HS256, NULL), tok_for(PGW_JWT_HS512)), PGW_JWT_INVALID);
    EXPECT_WHY("alg");
}

/* ---- Header ---- */

static void test_header_alg(void)
{
    struct pgw_jwt_keyset *ks = ks_for(PGW_JWT_HS256, NULL);
    struct signer s = signer_for(PGW_JWT_HS256);
    char *p = pl_default();
    EXPECT_OK(vfy(ks, tok(&s, "{\"alg\":\"HS256\"}", p))); /* control */
    static const char *const nones[] = {"none", "None", "NONE", "nOnE", "\\u006eone"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(nones); i++) {
        char *h = fmt("{\"alg\":\"%s\"}", nones[i]);
        const char *hb = b64s(h, strlen(h)), *pb = b64s(p, strlen(p));
        EXPECT_REFUSED(vfy(ks, fmt("%s.%s.", hb, pb)), PGW_JWT_INVALID);
        EXPECT_REFUSED(vfy(ks, fmt("%s.%s.AAAA", hb, pb)), PGW_JWT_INVALID);
        EXPECT_REFUSED(vfy(ks, tok(&s, h, p)), PGW_JWT_INVALID);
        if (i < 4)
            EXPECT_WHY("none");
    }
    static const char *const unknown[] = {
        "{\"alg\":\"HS1024\"}", "{\"alg\":\"hs256\"}", "{\"alg\":\"HS256 \"}", "{\"alg\":\" HS256\"}",
        "{\"alg\":\"ES256K\"}", "{\"alg\":\"RSA-OAEP\"}", "{\"alg\":\"dir\"}", "{\"alg\":\"\"}",
        "{\"alg\":256}", "{\"alg\":null}", "{\"alg\":[\"HS256\"]}", "{\"alg\":{\"HS256\":1}}",
        "{\"typ\":\"JWT\"}", "{}", "{\"alg\":\"HS256\\u0000\"}", "{\"Alg\":\"HS256\"}",
        "{\"alg\":\"HS256HS256HS256HS256\"}", "{\"alg\":\"Ed25519\"}",
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(unknown); i++)
        if (vfy(ks, tok(&s, unknown[i], p)) != PGW_ERR || g_res.code != PGW_JWT_INVALID) {
            fprintf(stderr, "FAIL %s: header %s accepted\n", test_current, unknown[i]);
            test_current_failed = 1;
        }
    /* an escaped name is the same name */
    EXPECT_OK(vfy(ks, tok(&s, "{\"\\u0061lg\":\"\\u0048S256\"}", p)));
    /* crit */
    EXPECT_REFUSED(vfy(ks, tok(&s, "{\"alg\":\"HS256\",\"crit\":[\"b64\"],\"b64\":false}", p)),
                   PGW_JWT_INVALID);
    EXPECT_WHY("crit");
    EXPECT_REFUSED(vfy(ks, tok(&s, "{\"alg\":\"HS256\",\"crit\":[]}", p)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, tok(&s, "{\"alg\":\"HS256\",\"crit\":null}", p)), PGW_JWT_INVALID);
    EXPECT_OK(vfy(ks, tok(&s, "{\"alg\":\"HS256\",\"b64\":false}", p)));
}

static void test_header_typ(void)
{
    struct pgw_jwt_keyset *ks = ks_for(PGW_JWT_ES256, NULL);
    struct signer s = signer_for(PGW_JWT_ES256);
    char *p = pl_default();
    static const char *const good[] = {"\"JWT\"", "\"jwt\"", "\"Jwt\"", "\"at+jwt\"", "\"AT+JWT\"",
                                       "\"application/at+jwt\"", "\"application/JWT\"",
                                       "\"Application/Jwt\"", "\"APPLICATION/AT+JWT\"",
                                       "\"\\u004aWT\""};
    for (size_t i = 0; i < PGW_ARRAY_LEN(good); i++)
        if (vfy(ks, tok(&s, fmt("{\"alg\":\"ES256\",\"typ\":%s}", good[i]), p)) != PGW_OK) {
            fprintf(stderr, "FAIL %s: typ %s refused: %s\n", test_current, good[i], g_why);
            test_current_failed = 1;
        }
    EXPECT_OK(vfy(ks, tok(&s, "{\"alg\":\"ES256\"}", p))); /* absent */
    static const char *const bad[] = {"\"foo\"", "\"\"", "\"JWS\"", "\"JOSE\"", "\"JOSE+JSON\"",
                                      "\"application/\"", "\"application/foo\"", "\"JWT \"",
                                      "\" JWT\"", "\"at+jwt2\"", "\"application/application/jwt\"",
                                      "\"applicationXjwt\"", "\"xapplication/jwt\"", "\"at jwt\"",
                                      "123", "null", "[\"JWT\"]", "{\"JWT\":1}", "true",
                                      "\"JWT\\u0000\""};
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad); i++)
        if (vfy(ks, tok(&s, fmt("{\"alg\":\"ES256\",\"typ\":%s}", bad[i]), p)) != PGW_ERR ||
            g_res.code != PGW_JWT_INVALID) {
            fprintf(stderr, "FAIL %s: typ %s accepted\n", test_current, bad[i]);
            test_current_failed = 1;
        }
}

static char *ec_jwk_members(EVP_PKEY *k, int coord)
{
    BIGNUM *x = NULL, *y = NULL;
    EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_EC_PUB_X, &x);
    EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_EC_PUB_Y, &y);
    unsigned char xb[66], yb[66];
    BN_bn2binpad(x, xb, coord);
    BN_bn2binpad(y, yb, coord);
    BN_free(x);
    BN_free(y);
    return fmt("\"x\":\"%s\",\"y\":\"%s\"", b64s(xb, (size_t)coord), b64s(yb, (size_t)coord));
}

static void test_header_key_urls_ignored(void)
{
    /* the attacker signs with its own key and embeds it (jwk), or points at it (jku, x5u, x5c) */
    const char *jwk = fmt("{\"kty\":\"EC\",\"crv\":\"P-256\",%s}", ec_jwk_members(ec256_b, 32));
    const char *extra = fmt("\"jwk\":%s,\"jku\":\"https://evil.example/jwks.json\","
                            "\"x5u\":\"https://evil.example/cert.pem\",\"x5c\":[\"MIIB\"]",
                            jwk);
    struct signer evil = {.alg = PGW_JWT_ES256, .pk = ec256_b};
    struct signer good = signer_for(PGW_JWT_ES256);
    char *p = pl_default();
    struct pgw_jwt_keyset *ks = ks_for(PGW_JWT_ES256, "legit");
    char *h = fmt("{\"alg\":\"ES256\",%s}", extra), *hk = fmt("{\"alg\":\"ES256\",\"kid\":\"legit\",%s}", extra);
    EXPECT_REFUSED(vfy(ks, tok(&evil, h, p)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, tok(&evil, hk, p)), PGW_JWT_INVALID);
    /* with no key at all, the embedded key is not taken either */
    EXPECT_REFUSED(vfy(keep_ks(pgw_jwt_keyset_new()), tok(&evil, h, p)), PGW_JWT_NO_KEYS);
    /* control: these members are ignored, not refused, on a token of the right key */
    EXPECT_OK(vfy(ks, tok(&good, h, p)));
    EXPECT_OK(vfy(ks, tok(&good, hk, p)));
    /* and the attacker's token verifies with the attacker's key: the refusal is the key's */
    EXPECT_OK(vfy(ks_of(PGW_JWT_ES256, NULL, ec256_b, NULL), tok(&evil, h, p)));
}

/* ---- Key selection ---- */

static void test_kid(void)
{
    static const unsigned char SA[] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    static const unsigned char SB[] = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    static const unsigned char SC[] = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    static const unsigned char SD[] = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
    struct pgw_jwt_keyset *ks = keep_ks(pgw_jwt_keyset_new());
    ks_add(ks, PGW_JWT_HS256, "a", NULL, SA);
    ks_add(ks, PGW_JWT_HS256, "b", NULL, SB);
    ks_add(ks, PGW_JWT_RS256, "r", rsa_a, NULL);
    ks_add(ks, PGW_JWT_ES256, "e", ec256, NULL);
    ks_add(ks, PGW_JWT_HS256, NULL, NULL, SC);
    CHECK_INT(pgw_jwt_keyset_count(ks), 5);
    struct signer sa = {.alg = PGW_JWT_HS256, .secret = SA, .slen = 64};
    struct signer sb = {.alg = PGW_JWT_HS256, .secret = SB, .slen = 64};
    struct signer sc = {.alg = PGW_JWT_HS256, .secret = SC, .slen = 64};
    struct signer sd = {.alg = PGW_JWT_HS256, .secret = SD, .slen = 64};
    struct signer rs = signer_for(PGW_JWT_RS256), es = signer_for(PGW_JWT_ES256);
    struct signer rs_other = {.alg = PGW_JWT_RS256, .pk = rsa_b};
    char *p = pl_default();
    /* the key with the kid */
    EXPECT_OK(vfy(ks, tok(&sb, hdr_kid(PGW_JWT_HS256, "b"), p)));
    EXPECT_OK(vfy(ks, tok(&sa, hdr_kid(PGW_JWT_HS256, "a"), p)));
    EXPECT_OK(vfy(ks, tok(&rs, hdr_kid(PGW_JWT_RS256, "r"), p)));
    EXPECT_OK(vfy(ks, tok(&es, hdr_kid(PGW_JWT_ES256, "e"), p)));
    EXPECT_OK(vfy(ks, tok(&sb, "{\"alg\":\"HS256\",\"kid\":\"\\u0062\"}", p)));
    /* the kid's key only: another key that would verify is not tried */
    EXPECT_REFUSED(vfy(ks, tok(&sb, hdr_kid(PGW_JWT_HS256, "a"), p)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, tok(&sc, hdr_kid(PGW_JWT_HS256, "b"), p)), PGW_JWT_INVALID);
    /* kid of a key of another algorithm */
    EXPECT_REFUSED(vfy(ks, tok(&sa, hdr_kid(PGW_JWT_HS256, "r"), p)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, tok(&rs, hdr_kid(PGW_JWT_RS256, "e"), p)), PGW_JWT_INVALID);
    /* unknown kids: compared as bytes */
    EXPECT_REFUSED(vfy(ks, tok(&sb, hdr_kid(PGW_JWT_HS256, "zz"), p)), PGW_JWT_UNKNOWN_KID);
    EXPECT_REFUSED(vfy(ks, tok(&sb, hdr_kid(PGW_JWT_HS256, "B"), p)), PGW_JWT_UNKNOWN_KID);
    EXPECT_REFUSED(vfy(ks, tok(&sb, hdr_kid(PGW_JWT_HS256, "b "), p)), PGW_JWT_UNKNOWN_KID);
    EXPECT_REFUSED(vfy(ks, tok(&sb, hdr_kid(PGW_JWT_HS256, ""), p)), PGW_JWT_UNKNOWN_KID);
    EXPECT_REFUSED(vfy(ks, tok(&sb, "{\"alg\":\"HS256\",\"kid\":\"b\\u0000\"}", p)), PGW_JWT_UNKNOWN_KID);
    /* no kid: the keys of the algorithm are tried */
    EXPECT_OK(vfy(ks, tok(&sa, hdr(PGW_JWT_HS256), p)));
    EXPECT_OK(vfy(ks, tok(&sb, hdr(PGW_JWT_HS256), p)));
    EXPECT_OK(vfy(ks, tok(&sc, hdr(PGW_JWT_HS256), p)));
    EXPECT_OK(vfy(ks, tok(&rs, hdr(PGW_JWT_RS256), p)));
    EXPECT_REFUSED(vfy(ks, tok(&sd, hdr(PGW_JWT_HS256), p)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, tok(&rs_other, hdr(PGW_JWT_RS256), p)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, tok_for(PGW_JWT_PS256)), PGW_JWT_INVALID); /* no key of the alg */
    /* a kid that is not a string of at most 256 bytes */
    EXPECT_REFUSED(vfy(ks, tok(&sb, "{\"alg\":\"HS256\",\"kid\":1}", p)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, tok(&sb, "{\"alg\":\"HS256\",\"kid\":null}", p)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, tok(&sb, "{\"alg\":\"HS256\",\"kid\":[\"b\"]}", p)), PGW_JWT_INVALID);
    char k256[257], k257[258];
    memset(k256, 'k', 256);
    k256[256] = '\0';
    memset(k257, 'k', 257);
    k257[257] = '\0';
    struct pgw_jwt_keyset *lk = keep_ks(pgw_jwt_keyset_new());
    ks_add(lk, PGW_JWT_HS256, k256, NULL, SA);
    ks_add(lk, PGW_JWT_HS256, k257, NULL, SA);
    EXPECT_OK(vfy(lk, tok(&sa, hdr_kid(PGW_JWT_HS256, k256), p)));
    EXPECT_REFUSED(vfy(lk, tok(&sa, hdr_kid(PGW_JWT_HS256, k257), p)), PGW_JWT_INVALID);
    /* no keys */
    struct pgw_jwt_keyset *empty = keep_ks(pgw_jwt_keyset_new());
    EXPECT_REFUSED(vfy(empty, tok(&sb, hdr_kid(PGW_JWT_HS256, "b"), p)), PGW_JWT_NO_KEYS);
    EXPECT_REFUSED(vfy(empty, tok(&sb, hdr(PGW_JWT_HS256), p)), PGW_JWT_NO_KEYS);
    char *t = tok(&sb, hdr(PGW_JWT_HS256), p);
    struct pgw_jwt_keyset *nulls[2] = {NULL, NULL};
    EXPECT_REFUSED(vfy_sets(nulls, 2, t, strlen(t), NOW), PGW_JWT_NO_KEYS);
    EXPECT_REFUSED(vfy_sets(nulls, 0, t, strlen(t), NOW), PGW_JWT_NO_KEYS);
    /* two sets: static first, then the JWKS; NULL sets skipped */
    struct pgw_jwt_keyset *stat = ks_of(PGW_JWT_HS256, "dup", NULL, SA);
    struct pgw_jwt_keyset *jw = keep_ks(pgw_jwt_keyset_new());
    ks_add(jw, PGW_JWT_ES256, "j", ec256, NULL);
    ks_add(jw, PGW_JWT_HS256, "dup", NULL, SB);
    struct pgw_jwt_keyset *two[2] = {stat, jw}, *one_null[2] = {NULL, jw};
    char *tj = tok(&es, hdr_kid(PGW_JWT_ES256, "j"), p);
    EXPECT_OK(vfy_sets(two, 2, tj, strlen(tj), NOW));
    EXPECT_OK(vfy_sets(one_null, 2, tj, strlen(tj), NOW));
    char *tx = tok(&es, hdr_kid(PGW_JWT_ES256, "x"), p);
    EXPECT_REFUSED(vfy_sets(two, 2, tx, strlen(tx), NOW), PGW_JWT_UNKNOWN_KID);
    char *tdup_a = tok(&sa, hdr_kid(PGW_JWT_HS256, "dup"), p);
    char *tdup_b = tok(&sb, hdr_kid(PGW_JWT_HS256, "dup"), p);
    EXPECT_OK(vfy_sets(two, 2, tdup_a, strlen(tdup_a), NOW));
    EXPECT_REFUSED(vfy_sets(two, 2, tdup_b, strlen(tdup_b), NOW), PGW_JWT_INVALID); /* set order */
    EXPECT_OK(vfy_sets(one_null, 2, tdup_b, strlen(tdup_b), NOW));
    /* without kid, at most 8 keys are tried */
    struct pgw_jwt_keyset *many = keep_ks(pgw_jwt_keyset_new());
    static unsigned char secrets[9][64];
    for (int i = 0; i < 9; i++) {
        memset(secrets[i], 'A' + i, 64);
        ks_add(many, PGW_JWT_HS256, NULL, NULL, secrets[i]);
    }
    struct signer s8 = {.alg = PGW_JWT_HS256, .secret = secrets[7], .slen = 64};
    struct signer s9 = {.alg = PGW_JWT_HS256, .secret = secrets[8], .slen = 64};
    EXPECT_OK(vfy(many, tok(&s8, hdr(PGW_JWT_HS256), p)));
    EXPECT_REFUSED(vfy(many, tok(&s9, hdr(PGW_JWT_HS256), p)), PGW_JWT_INVALID);
}

/* ---- Shape ---- */

/* A header JSON whose base64url contains <c> ('-' or '_'). */
static char *header_with_b64_char(char c, int alg)
{
    char h[128], enc[200];
    for (int i = 0; i < 3; i++) {
        /* ASCII encodes to '-' or '_' only from a '>', '?' or '~' at a position 3n+2 */
        snprintf(h, sizeof(h), "{\"alg\":\"%s\",\"n\":\"%.*s>?~\"}", pgw_jwt_alg_name(alg),
                 i % 3, "aa");
        b64url(enc, (const unsigned char *)h, strlen(h));
        if (strchr(enc, c) != NULL)
            return fmt("%s", h);
    }
    pgw_assert(0);
    return NULL;
}

static void test_shape(void)
{
    struct pgw_jwt_keyset *ks = ks_for(PGW_JWT_HS256, NULL);
    struct signer s = signer_for(PGW_JWT_HS256);
    char *h = hdr(PGW_JWT_HS256), *p = pl_default();
    char *t = tok(&s, h, p);
    EXPECT_OK(vfy(ks, t));
    const char *d1 = strchr(t, '.'), *d2 = strrchr(t, '.');
    char *hb = keep(pgw_strndup(t, (size_t)(d1 - t)));
    char *pb = keep(pgw_strndup(d1 + 1, (size_t)(d2 - d1 - 1)));
    char *sb = keep(pgw_strndup(d2 + 1, strlen(d2 + 1)));
    EXPECT_OK(vfy(ks, fmt("%s.%s.%s", hb, pb, sb)));
    /* parts */
    static const char *const shapes[] = {"%s.%s", "%s.%s.%s.", "%s.%s.%s.%s", "%s.%s.%s.%s.%s",
                                         ".%s.%s", "%s..%s", "%s.%s.", "%s%s.%s", "%s.%s%s",
                                         "%s.%s.%s.AAAA.BBBB"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(shapes); i++) {
        char *bad;
        switch (i) {
        case 0: bad = fmt(shapes[i], hb, pb); break;
        case 1: bad = fmt(shapes[i], hb, pb, sb); break;
        case 2: bad = fmt(shapes[i], hb, pb, sb, sb); break;
        case 3: bad = fmt(shapes[i], hb, pb, sb, sb, sb); break; /* JWE-like */
        case 4: bad = fmt(shapes[i], pb, sb); break;
        case 5: bad = fmt(shapes[i], hb, sb); break;
        case 6: bad = fmt(shapes[i], hb, pb); break;
        case 7: bad = fmt(shapes[i], hb, pb, sb); break;
        case 8: bad = fmt(shapes[i], hb, pb, sb); break;
        default: bad = fmt(shapes[i], hb, pb, sb); break;
        }
        if (vfy(ks, bad) != PGW_ERR || g_res.code != PGW_JWT_INVALID) {
            fprintf(stderr, "FAIL %s: shape %s accepted\n", test_current, shapes[i]);
            test_current_failed = 1;
        }
    }
    static const char *const tiny[] = {"", ".", "..", "...", "....", "a", "a.b", "a.b.c", "a..c"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(tiny); i++)
        EXPECT_REFUSED(vfy(ks, tiny[i]), PGW_JWT_INVALID);
    /* whitespace, NUL and other bytes around or inside */
    EXPECT_REFUSED(vfy(ks, fmt(" %s", t)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, fmt("%s\n", t)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, fmt("%s.%s .%s", hb, pb, sb)), PGW_JWT_INVALID);
    char *tn = keep(malloc(strlen(t) + 2));
    memcpy(tn, t, strlen(t));
    tn[strlen(t)] = '\0';
    struct pgw_jwt_keyset *sets[1] = {ks};
    EXPECT_REFUSED(vfy_sets(sets, 1, tn, strlen(t) + 1, NOW), PGW_JWT_INVALID); /* NUL at the end */
    /* '+', '/' and '=' are not base64url, even where they decode to the same bits */
    char *hd = header_with_b64_char('-', PGW_JWT_HS256), *hu = header_with_b64_char('_', PGW_JWT_HS256);
    char *td = tok(&s, hd, p), *tu = tok(&s, hu, p);
    EXPECT_OK(vfy(ks, td));
    EXPECT_OK(vfy(ks, tu));
    for (char *c = td; *c != '.'; c++)
        if (*c == '-')
            *c = '+';
    for (char *c = tu; *c != '.'; c++)
        if (*c == '_')
            *c = '/';
    EXPECT_REFUSED(vfy(ks, td), PGW_JWT_INVALID);
    EXPECT_WHY("header is not base64url");
    EXPECT_REFUSED(vfy(ks, tu), PGW_JWT_INVALID);
    /* the same in the signature */
    char *sig_std = keep(pgw_strndup(sb, strlen(sb)));
    int changed = 0;
    for (char *c = sig_std; *c; c++)
        if (*c == '-' || *c == '_')
            *c = *c == '-' ? '+' : '/', changed = 1;
    if (changed)
        EXPECT_REFUSED(vfy(ks, fmt("%s.%s.%s", hb, pb, sig_std)), PGW_JWT_INVALID);
    /* padding */
    CHECK(strlen(hb) % 4 != 0 || strlen(pb) % 4 != 0 || strlen(sb) % 4 != 0);
    EXPECT_REFUSED(vfy(ks, fmt("%s=.%s.%s", hb, pb, sb)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, fmt("%s.%s=.%s", hb, pb, sb)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, fmt("%s.%s.%s=", hb, pb, sb)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, fmt("%s.%s.%s==", hb, pb, sb)), PGW_JWT_INVALID);
    /* non-canonical: the last character with non-zero unused bits (HS256: 32 bytes, 43 characters,
     * 2 unused bits), in the signature, the header and the payload */
    CHECK_INT(strlen(sb), 43);
    const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *nc = keep(pgw_strndup(sb, strlen(sb)));
    int last = (int)(strchr(alphabet, nc[42]) - alphabet);
    CHECK_INT(last & 3, 0);
    nc[42] = alphabet[last | 1];
    EXPECT_REFUSED(vfy(ks, fmt("%s.%s.%s", hb, pb, nc)), PGW_JWT_INVALID);
    nc[42] = alphabet[last | 2];
    EXPECT_REFUSED(vfy(ks, fmt("%s.%s.%s", hb, pb, nc)), PGW_JWT_INVALID);
    /* header / payload whose length leaves unused bits */
    for (int which = 0; which < 2; which++) {
        char *x = keep(pgw_strndup(which ? pb : hb, strlen(which ? pb : hb)));
        size_t n = strlen(x);
        if (n % 4 == 0)
            continue;
        int bits_unused = n % 4 == 2 ? 4 : 2;
        int v = (int)(strchr(alphabet, x[n - 1]) - alphabet);
        CHECK_INT(v & ((1 << bits_unused) - 1), 0);
        x[n - 1] = alphabet[v | 1];
        EXPECT_REFUSED(vfy(ks, which ? fmt("%s.%s.%s", hb, x, sb) : fmt("%s.%s.%s", x, pb, sb)),
                       PGW_JWT_INVALID);
    }
    /* an impossible length (4n+1 characters) */
    EXPECT_REFUSED(vfy(ks, fmt("%s.%s.%sA", hb, pb, sb)), PGW_JWT_INVALID);
    /* the size bound */
    size_t tl = strlen(t);
    R.max_size = tl;
    EXPECT_OK(vfy(ks, t));
    R.max_size = tl - 1;
    EXPECT_REFUSED(vfy(ks, t), PGW_JWT_INVALID);
    EXPECT_WHY("too large");
    R.max_size = 65536;
}

static void test_shape_json(void)
{
    struct pgw_jwt_keyset *ks = ks_for(PGW_JWT_HS256, NULL);
    struct signer s = signer_for(PGW_JWT_HS256);
    char *h = hdr(PGW_JWT_HS256), *p = pl_default();
    EXPECT_OK(vfy(ks, tok(&s, h, p)));
    /* headers that are not JSON objects */
    static const char *const headers[] = {
        "[]", "[\"HS256\"]", "\"HS256\"", "1", "null", "true", "{", "{\"alg\":\"HS256\"",
        "{\"alg\":\"HS256\"} x", "{\"alg\":\"HS256\"}{}", "{\"alg\":\"HS256\",}", "{'alg':'HS256'}",
        "{\"alg\":\"HS256\",\"x\":\"\xC0\x80\"}", "{\"alg\":\"HS256\",\"x\":\"\\ud800\"}",
        "\xEF\xBB\xBF{\"alg\":\"HS256\"}", " ",
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(headers); i++)
        if (vfy(ks, tok(&s, headers[i], p)) != PGW_ERR || g_res.code != PGW_JWT_INVALID) {
            fprintf(stderr, "FAIL %s: header <%s> accepted\n", test_current, headers[i]);
            test_current_failed = 1;
        }
    EXPECT_OK(vfy(ks, tok(&s, " \n{ \"alg\" : \"HS256\" }\t", p))); /* whitespace is fine */
    /* payloads that are not JSON objects (the signature is right) */
    static const char *const payloads[] = {
        "[1]", "[{\"exp\":1}]", "\"s\"", "123", "null", "false", "{\"a\":1", "{\"a\":1}}",
        "{\"a\":1}x", "{\"a\":01}", "{\"a\":\"\x01\"}", "{\"a\":\"\xFF\"}", " ",
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(payloads); i++)
        if (vfy(ks, tok(&s, h, payloads[i])) != PGW_ERR || g_res.code != PGW_JWT_INVALID) {
            fprintf(stderr, "FAIL %s: payload <%s> accepted\n", test_current, payloads[i]);
            test_current_failed = 1;
        }
    EXPECT_OK(vfy(ks, tok(&s, h, "{}")));
    /* nesting: PGW_JWT_MAX_DEPTH levels (the object itself is one) pass, one more does not */
    char open[64] = "", close[64] = "";
    for (int i = 0; i < PGW_JWT_MAX_DEPTH - 1; i++) {
        strcat(open, "[");
        strcat(close, "]");
    }
    char *h16 = fmt("{\"alg\":\"HS256\",\"x\":%s1%s}", open, close);
    char *h17 = fmt("{\"alg\":\"HS256\",\"x\":[%s1%s]}", open, close);
    char *p16 = fmt("{\"exp\":%.0f,\"x\":%s{}%s}", NOW + 60, open + 1, close + 1);
    char *p17 = fmt("{\"exp\":%.0f,\"x\":%s{}%s}", NOW + 60, open, close);
    EXPECT_OK(vfy(ks, tok(&s, h16, p)));
    EXPECT_REFUSED(vfy(ks, tok(&s, h17, p)), PGW_JWT_INVALID);
    EXPECT_OK(vfy(ks, tok(&s, h, p16)));
    EXPECT_REFUSED(vfy(ks, tok(&s, h, p17)), PGW_JWT_INVALID);
    /* deep nesting far past the bound */
    char deep[4096];
    strcpy(deep, "{\"alg\":\"HS256\",\"x\":");
    size_t dl = strlen(deep);
    memset(deep + dl, '[', 2000);
    deep[dl + 2000] = '\0';
    EXPECT_REFUSED(vfy(ks, tok(&s, deep, p)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, tok(&s, h, deep)), PGW_JWT_INVALID);
    /* repeated member names, also written with an escape */
    static const char *const dup_headers[] = {
        "{\"alg\":\"HS256\",\"alg\":\"HS256\"}",
        "{\"alg\":\"HS256\",\"\\u0061lg\":\"none\"}",
        "{\"\\u0061lg\":\"none\",\"alg\":\"HS256\"}",
        "{\"alg\":\"HS256\",\"kid\":\"a\",\"k\\u0069d\":\"b\"}",
        "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"typ\":\"foo\"}",
        "{\"alg\":\"HS256\",\"crit\":[],\"cr\\u0069t\":[]}",
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(dup_headers); i++)
        if (vfy(ks, tok(&s, dup_headers[i], p)) != PGW_ERR || g_res.code != PGW_JWT_INVALID) {
            fprintf(stderr, "FAIL %s: header <%s> accepted\n", test_current, dup_headers[i]);
            test_current_failed = 1;
        }
    char *dup_payloads[] = {
        fmt("{\"sub\":\"a\",\"sub\":\"b\",\"exp\":%.0f}", NOW + 60),
        fmt("{\"exp\":%.0f,\"\\u0065xp\":%.0f}", NOW - 600, NOW + 600),
        fmt("{\"\\u0065xp\":%.0f,\"exp\":%.0f}", NOW + 600, NOW - 600),
        fmt("{\"exp\":%.0f,\"aud\":\"x\",\"a\\u0075d\":\"api\"}", NOW + 60),
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(dup_payloads); i++)
        if (vfy(ks, tok(&s, h, dup_payloads[i])) != PGW_ERR || g_res.code != PGW_JWT_INVALID) {
            fprintf(stderr, "FAIL %s: payload <%s> accepted\n", test_current, dup_payloads[i]);
            test_current_failed = 1;
        }
    /* nested repeated names are the application's business: accepted */
    EXPECT_OK(vfy(ks, tok(&s, h, fmt("{\"exp\":%.0f,\"o\":{\"a\":1,\"a\":2}}", NOW + 60))));
}

/* ---- Claims ---- */

static int claims(struct pgw_jwt_keyset *ks, const char *payload)
{
    struct signer s = signer_for(PGW_JWT_HS256);
    return vfy(ks, tok(&s, hdr(PGW_JWT_HS256), payload));
}

static void test_claims_times(void)
{
    struct pgw_jwt_keyset *ks = ks_for(PGW_JWT_HS256, NULL);
    /* exp, leeway 30 s */
    EXPECT_OK(claims(ks, fmt("{\"exp\":%.0f}", NOW + 1)));
    EXPECT_OK(claims(ks, fmt("{\"exp\":%.0f}", NOW - 29)));
    EXPECT_OK(claims(ks, fmt("{\"exp\":%.3f}", NOW - 29.5)));
    EXPECT_REFUSED(claims(ks, fmt("{\"exp\":%.0f}", NOW - 30)), PGW_JWT_INVALID);
    EXPECT_REFUSED(claims(ks, fmt("{\"exp\":%.0f}", NOW - 100)), PGW_JWT_INVALID);
    EXPECT_WHY("expired");
    EXPECT_REFUSED(claims(ks, "{\"exp\":0}"), PGW_JWT_INVALID);
    EXPECT_REFUSED(claims(ks, "{\"exp\":-1e300}"), PGW_JWT_INVALID);
    R.leeway = 0;
    EXPECT_REFUSED(claims(ks, fmt("{\"exp\":%.0f}", NOW - 1)), PGW_JWT_INVALID);
    EXPECT_REFUSED(claims(ks, fmt("{\"exp\":%.0f}", NOW)), PGW_JWT_INVALID);
    EXPECT_OK(claims(ks, fmt("{\"exp\":%.0f}", NOW + 1)));
    R.leeway = 30;
    const char *bad[] = {"\"x\"", "\"1800000000\"", "null", "true", "[1800000000]", "{}"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad); i++) {
        EXPECT_REFUSED(claims(ks, fmt("{\"exp\":%s}", bad[i])), PGW_JWT_INVALID);
        EXPECT_REFUSED(claims(ks, fmt("{\"exp\":%.0f,\"nbf\":%s}", NOW + 60, bad[i])), PGW_JWT_INVALID);
        EXPECT_REFUSED(claims(ks, fmt("{\"exp\":%.0f,\"iat\":%s}", NOW + 60, bad[i])), PGW_JWT_INVALID);
    }
    /* the result carries exp and nbf */
    EXPECT_OK(claims(ks, fmt("{\"exp\":%.0f,\"nbf\":%.0f}", NOW + 60, NOW - 5)));
    CHECK_INT(g_res.has_exp, 1);
    CHECK_INT(g_res.has_nbf, 1);
    CHECK(g_res.exp == NOW + 60 && g_res.nbf == NOW - 5);
    EXPECT_OK(claims(ks, "{\"sub\":\"x\"}")); /* no exp, no required claims: accepted */
    CHECK_INT(g_res.has_exp, 0);
    /* nbf */
    EXPECT_OK(claims(ks, fmt("{\"nbf\":%.0f}", NOW)));
    EXPECT_OK(claims(ks, fmt("{\"nbf\":%.0f}", NOW + 30)));
    EXPECT_REFUSED(claims(ks, fmt("{\"nbf\":%.0f}", NOW + 31)), PGW_JWT_INVALID);
    EXPECT_REFUSED(claims(ks, fmt("{\"nbf\":%.0f}", NOW + 3600)), PGW_JWT_INVALID);
    EXPECT_WHY("nbf");
    /* iat */
    EXPECT_OK(claims(ks, fmt("{\"iat\":%.0f}", NOW + 3600))); /* not checked by default */
    R.reject_future_iat = 1;
    EXPECT_REFUSED(claims(ks, fmt("{\"iat\":%.0f}", NOW + 3600)), PGW_JWT_INVALID);
    EXPECT_WHY("iat");
    EXPECT_REFUSED(claims(ks, fmt("{\"iat\":%.0f}", NOW + 31)), PGW_JWT_INVALID);
    EXPECT_OK(claims(ks, fmt("{\"iat\":%.0f}", NOW + 30)));
    EXPECT_OK(claims(ks, fmt("{\"iat\":%.0f}", NOW - 3600)));
    R.reject_future_iat = 0;
    /* pgw_jwt_check_times alone */
    struct pgw_jwt_result r = {.has_exp = 1, .exp = NOW + 10, .has_nbf = 1, .nbf = NOW - 10};
    const char *why = NULL;
    CHECK_INT(pgw_jwt_check_times(&R, &r, NOW, &why), PGW_OK);
    CHECK_INT(pgw_jwt_check_times(&R, &r, NOW + 39.9, &why), PGW_OK);
    CHECK_INT(pgw_jwt_check_times(&R, &r, NOW + 40, &why), PGW_ERR);
    CHECK(why != NULL && strstr(why, "expired") != NULL);
    CHECK_INT(pgw_jwt_check_times(&R, &r, NOW - 40, &why), PGW_OK);
    CHECK_INT(pgw_jwt_check_times(&R, &r, NOW - 40.5, &why), PGW_ERR);
    r.has_exp = r.has_nbf = 0;
    CHECK_INT(pgw_jwt_check_times(&R, &r, 1e18, &why), PGW_OK);
}

static void test_claims_iss_aud_required(void)
{
    struct pgw_jwt_keyset *ks = ks_for(PGW_JWT_HS256, NULL);
    /* iss */
    R.issuer = "https://idp.example/";
    EXPECT_OK(claims(ks, "{\"iss\":\"https://idp.example/\"}"));
    EXPECT_OK(claims(ks, "{\"iss\":\"https:\\/\\/idp.example\\/\"}"));
    static const char *const bad_iss[] = {"{\"iss\":\"https://idp.example\"}",
                                          "{\"iss\":\"https://idp.example//\"}",
                                          "{\"iss\":\"HTTPS://idp.example/\"}",
                                          "{\"iss\":\"https://evil.example/\"}",
                                          "{\"iss\":[\"https://idp.example/\"]}",
                                          "{\"iss\":1}",
                                          "{\"iss\":null}",
                                          "{\"sub\":\"https://idp.example/\"}",
                                          "{\"iss\":\"https://idp.example/\\u0000\"}",
                                          "{}"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad_iss); i++)
        if (claims(ks, bad_iss[i]) != PGW_ERR || g_res.code != PGW_JWT_INVALID) {
            fprintf(stderr, "FAIL %s: %s accepted\n", test_current, bad_iss[i]);
            test_current_failed = 1;
        }
    EXPECT_WHY("issuer");
    R.issuer = NULL;
    EXPECT_OK(claims(ks, "{\"iss\":\"anyone\"}"));
    EXPECT_OK(claims(ks, "{\"iss\":1}"));
    /* aud */
    char *auds[] = {"api", "web"};
    R.audiences = auds;
    R.naud = 2;
    static const char *const good_aud[] = {"{\"aud\":\"api\"}", "{\"aud\":\"web\"}",
                                           "{\"aud\":[\"x\",\"web\"]}", "{\"aud\":[\"api\"]}",
                                           "{\"aud\":[1,null,\"api\"]}", "{\"aud\":\"\\u0061pi\"}"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(good_aud); i++)
        if (claims(ks, good_aud[i]) != PGW_OK) {
            fprintf(stderr, "FAIL %s: %s refused: %s\n", test_current, good_aud[i], g_why);
            test_current_failed = 1;
        }
    static const char *const bad_aud[] = {"{\"aud\":\"other\"}", "{\"aud\":\"API\"}",
                                          "{\"aud\":\"api \"}", "{\"aud\":\"ap\"}",
                                          "{\"aud\":[\"x\"]}", "{\"aud\":[]}",
                                          "{\"aud\":[[\"api\"]]}", "{\"aud\":1}",
                                          "{\"aud\":null}", "{\"aud\":true}",
                                          "{\"sub\":\"api\"}", "{}"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad_aud); i++)
        if (claims(ks, bad_aud[i]) != PGW_ERR || g_res.code != PGW_JWT_INVALID) {
            fprintf(stderr, "FAIL %s: %s accepted\n", test_current, bad_aud[i]);
            test_current_failed = 1;
        }
    EXPECT_WHY("audience");
    R.naud = 0;
    EXPECT_OK(claims(ks, "{\"aud\":\"whatever\"}"));
    EXPECT_OK(claims(ks, "{\"aud\":1}"));
    EXPECT_OK(claims(ks, "{}"));
    /* required claims */
    char *req[] = {"exp", "sub"};
    R.required = req;
    R.nreq = 2;
    EXPECT_OK(claims(ks, fmt("{\"exp\":%.0f,\"sub\":\"u\"}", NOW + 60)));
    EXPECT_OK(claims(ks, fmt("{\"exp\":%.0f,\"sub\":null}", NOW + 60))); /* present */
    EXPECT_OK(claims(ks, fmt("{\"exp\":%.0f,\"s\\u0075b\":\"u\"}", NOW + 60)));
    EXPECT_REFUSED(claims(ks, fmt("{\"exp\":%.0f}", NOW + 60)), PGW_JWT_INVALID);
    EXPECT_WHY("required");
    EXPECT_REFUSED(claims(ks, "{\"sub\":\"u\"}"), PGW_JWT_INVALID);
    EXPECT_REFUSED(claims(ks, fmt("{\"exp\":%.0f,\"o\":{\"sub\":\"u\"}}", NOW + 60)), PGW_JWT_INVALID);
    EXPECT_REFUSED(claims(ks, fmt("{\"exp\":%.0f,\"Sub\":\"u\"}", NOW + 60)), PGW_JWT_INVALID);
    R.nreq = 0;
    R.required = NULL;
}

/* RFC 7519 §4.1.3: aud is a string or an array of strings. An object whose member *values* name
 * an accepted audience is neither. */
static void test_claims_aud_object(void)
{
    struct pgw_jwt_keyset *ks = ks_for(PGW_JWT_HS256, NULL);
    char *auds[] = {"api"};
    R.audiences = auds;
    R.naud = 1;
    EXPECT_OK(claims(ks, "{\"aud\":\"api\"}")); /* control */
    EXPECT_REFUSED(claims(ks, "{\"aud\":{\"x\":\"api\"}}"), PGW_JWT_INVALID);
    EXPECT_REFUSED(claims(ks, "{\"aud\":{\"api\":\"api\"}}"), PGW_JWT_INVALID);
}

/* ---- ES signature encoding ---- */

static void test_es_signature_length(void)
{
    for (int alg = PGW_JWT_ES256; alg <= PGW_JWT_ES512; alg++) {
        struct pgw_jwt_keyset *ks = ks_for(alg, NULL);
        struct signer raw = signer_for(alg), der = signer_for(alg);
        der.der = 1;
        char *h = hdr(alg), *p = pl_default();
        unsigned char sig[1024];
        size_t sl = sig_of(&raw, h, p, sig);
        int coord = ALGS[alg].coord;
        CHECK_INT(sl, 2 * coord);
        EXPECT_OK(vfy(ks, join(h, p, sig, sl)));
        /* DER as OpenSSL makes it */
        EXPECT_REFUSED(vfy(ks, tok(&der, h, p)), PGW_JWT_INVALID);
        /* one byte short, one long, r and s swapped, r || s without the padding of r */
        EXPECT_REFUSED(vfy(ks, join(h, p, sig, sl - 1)), PGW_JWT_INVALID);
        unsigned char longer[300];
        memcpy(longer, sig, sl);
        longer[sl] = 0;
        EXPECT_REFUSED(vfy(ks, join(h, p, longer, sl + 1)), PGW_JWT_INVALID);
        unsigned char pad[300] = {0};
        memcpy(pad + 1, sig, sl); /* a leading zero: still the same r as a number */
        EXPECT_REFUSED(vfy(ks, join(h, p, pad, sl + 1)), PGW_JWT_INVALID);
        unsigned char sw[300];
        memcpy(sw, sig + coord, (size_t)coord);
        memcpy(sw + coord, sig, (size_t)coord);
        EXPECT_REFUSED(vfy(ks, join(h, p, sw, sl)), PGW_JWT_INVALID);
        /* r = 0 or s = 0 */
        unsigned char z[300];
        memcpy(z, sig, sl);
        memset(z, 0, (size_t)coord);
        EXPECT_REFUSED(vfy(ks, join(h, p, z, sl)), PGW_JWT_INVALID);
        memcpy(z, sig, sl);
        memset(z + coord, 0, (size_t)coord);
        EXPECT_REFUSED(vfy(ks, join(h, p, z, sl)), PGW_JWT_INVALID);
        /* all ones (past the order) */
        memset(z, 0xff, sl);
        EXPECT_REFUSED(vfy(ks, join(h, p, z, sl)), PGW_JWT_INVALID);
        /* the raw signature of the other ES sizes */
        int other = alg == PGW_JWT_ES256 ? PGW_JWT_ES384 : PGW_JWT_ES256;
        struct signer os = signer_for(other);
        unsigned char osig[300];
        size_t osl = sig_of(&os, h, p, osig);
        EXPECT_REFUSED(vfy(ks, join(h, p, osig, osl)), PGW_JWT_INVALID);
    }
}

/* ---- JWKS ---- */

static char *jwk_rsa_members(EVP_PKEY *k)
{
    BIGNUM *n = NULL, *e = NULL;
    EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_RSA_N, &n);
    EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_RSA_E, &e);
    unsigned char nb[1024], eb[16];
    int nl = BN_bn2bin(n, nb), el = BN_bn2bin(e, eb);
    BN_free(n);
    BN_free(e);
    return fmt("\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"%s\"", b64s(nb, (size_t)nl), b64s(eb, (size_t)el));
}

static char *t_jwk_ec(EVP_PKEY *k, const char *crv, int coord)
{
    return fmt("\"kty\":\"EC\",\"crv\":\"%s\",%s", crv, ec_jwk_members(k, coord));
}

static char *t_jwk_okp(EVP_PKEY *k, const char *crv)
{
    unsigned char x[64];
    size_t xl = sizeof(x);
    EVP_PKEY_get_raw_public_key(k, x, &xl);
    return fmt("\"kty\":\"OKP\",\"crv\":\"%s\",\"x\":\"%s\"", crv, b64s(x, xl));
}

static size_t g_taken; /* the JWKs taken by the last jwks() */

static struct pgw_jwt_keyset *jwks(const char *doc, unsigned algs, size_t *skipped, char *err,
                                   size_t errlen)
{
    char *copy = malloc(strlen(doc) + 1); /* exact length for ASan (the NUL is not passed) */
    memcpy(copy, doc, strlen(doc));
    err[0] = '\0';
    g_taken = 99;
    struct pgw_jwt_keyset *ks =
        pgw_jwt_keyset_from_jwks(copy, strlen(doc), algs, &g_taken, skipped, err, errlen);
    free(copy);
    CHECK_INT(ERR_peek_error(), 0);
    return keep_ks(ks);
}

static void test_jwks_keys(void)
{
    char err[256];
    size_t skipped = 99;
    const unsigned ALL = PGW_JWT_ALGS_ASYMMETRIC;
    char *doc = fmt("{\"keys\":["
                    "{%s,\"kid\":\"r1\",\"alg\":\"RS256\",\"use\":\"sig\"},"
                    "{%s,\"kid\":\"e256\",\"alg\":\"ES256\"},"
                    "{%s,\"kid\":\"e384\",\"alg\":\"ES384\"},"
                    "{%s,\"kid\":\"e521\",\"alg\":\"ES512\"},"
                    "{%s,\"kid\":\"d1\",\"alg\":\"EdDSA\"},"
                    "{%s,\"kid\":\"d448\",\"alg\":\"EdDSA\"}]}",
                    jwk_rsa_members(rsa_a), t_jwk_ec(ec256, "P-256", 32), t_jwk_ec(ec384, "P-384", 48),
                    t_jwk_ec(ec521, "P-521", 66), t_jwk_okp(ed25519, "Ed25519"), t_jwk_okp(ed448, "Ed448"));
    struct pgw_jwt_keyset *ks = jwks(doc, ALL, &skipped, err, sizeof(err));
    CHECK(ks != NULL);
    if (ks == NULL)
        return;
    CHECK_INT(pgw_jwt_keyset_count(ks), 6);
    CHECK_INT(g_taken, 6);
    CHECK_INT(skipped, 0);
    char *p = pl_default();
    struct signer rs = signer_for(PGW_JWT_RS256), e2 = signer_for(PGW_JWT_ES256),
                  e3 = signer_for(PGW_JWT_ES384), e5 = signer_for(PGW_JWT_ES512),
                  d1 = signer_for(PGW_JWT_EDDSA), d4 = {.alg = PGW_JWT_EDDSA, .pk = ed448},
                  rs_b = {.alg = PGW_JWT_RS256, .pk = rsa_b};
    EXPECT_OK(vfy(ks, tok(&rs, hdr_kid(PGW_JWT_RS256, "r1"), p)));
    EXPECT_OK(vfy(ks, tok(&e2, hdr_kid(PGW_JWT_ES256, "e256"), p)));
    EXPECT_OK(vfy(ks, tok(&e3, hdr_kid(PGW_JWT_ES384, "e384"), p)));
    EXPECT_OK(vfy(ks, tok(&e5, hdr_kid(PGW_JWT_ES512, "e521"), p)));
    EXPECT_OK(vfy(ks, tok(&d1, hdr_kid(PGW_JWT_EDDSA, "d1"), p)));
    EXPECT_OK(vfy(ks, tok(&d4, hdr_kid(PGW_JWT_EDDSA, "d448"), p)));
    EXPECT_OK(vfy(ks, tok(&e5, hdr(PGW_JWT_ES512), p)));
    EXPECT_REFUSED(vfy(ks, tok(&rs_b, hdr_kid(PGW_JWT_RS256, "r1"), p)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, tok(&d1, hdr_kid(PGW_JWT_EDDSA, "d448"), p)), PGW_JWT_INVALID);
    EXPECT_REFUSED(vfy(ks, tok(&rs, hdr_kid(PGW_JWT_RS256, "r2"), p)), PGW_JWT_UNKNOWN_KID);
    /* the keys of the set outlive the document */
    struct pgw_jwt_keyset *ref = pgw_jwt_keyset_ref(ks);
    CHECK(ref == ks);
    pgw_jwt_keyset_unref(ref);
    EXPECT_OK(vfy(ks, tok(&rs, hdr_kid(PGW_JWT_RS256, "r1"), p)));

    /* an RSA JWK without alg: one key per allowed RS and PS algorithm */
    char *rsa_noalg = fmt("{\"keys\":[{%s,\"kid\":\"r\"}]}", jwk_rsa_members(rsa_a));
    ks = jwks(rsa_noalg, ALL, &skipped, err, sizeof(err));
    CHECK_INT(pgw_jwt_keyset_count(ks), 6);
    CHECK_INT(g_taken, 1); /* one JWK, six keys */
    for (size_t i = 0; ks != NULL && i < ks->n; i++) {
        CHECK_INT(ks->v[i]->alg, PGW_JWT_RS256 + (int)i);
        CHECK(ks->v[i]->kid != NULL && strcmp(ks->v[i]->kid, "r") == 0);
    }
    for (int a = PGW_JWT_RS256; a <= PGW_JWT_PS512; a++) {
        struct signer s = {.alg = a, .pk = rsa_a};
        EXPECT_OK(vfy(ks, tok(&s, hdr_kid(a, "r"), p)));
    }
    ks = jwks(rsa_noalg, PGW_JWT_ALG_BIT(PGW_JWT_RS256) | PGW_JWT_ALG_BIT(PGW_JWT_PS512), &skipped, err,
              sizeof(err));
    CHECK_INT(pgw_jwt_keyset_count(ks), 2);
    struct signer rs384 = signer_for(PGW_JWT_RS384), ps512 = signer_for(PGW_JWT_PS512);
    EXPECT_OK(vfy(ks, tok(&ps512, hdr_kid(PGW_JWT_PS512, "r"), p)));
    EXPECT_REFUSED(vfy(ks, tok(&rs384, hdr_kid(PGW_JWT_RS384, "r"), p)), PGW_JWT_INVALID);
    /* HMAC algorithms allowed do not make an RSA key a secret */
    ks = jwks(rsa_noalg, ALL | PGW_JWT_ALG_BIT(PGW_JWT_HS256), &skipped, err, sizeof(err));
    CHECK_INT(pgw_jwt_keyset_count(ks), 6);
    /* EC and OKP JWKs without alg: the one algorithm of the curve */
    char *ec_noalg = fmt("{\"keys\":[{%s},{%s},{%s},{%s}]}", t_jwk_ec(ec256, "P-256", 32),
                         t_jwk_ec(ec384, "P-384", 48), t_jwk_ec(ec521, "P-521", 66),
                         t_jwk_okp(ed25519, "Ed25519"));
    ks = jwks(ec_noalg, ALL, &skipped, err, sizeof(err));
    CHECK_INT(pgw_jwt_keyset_count(ks), 4);
    CHECK_INT(skipped, 0);
    static const int want[] = {PGW_JWT_ES256, PGW_JWT_ES384, PGW_JWT_ES512, PGW_JWT_EDDSA};
    for (size_t i = 0; ks != NULL && i < ks->n && i < 4; i++) {
        CHECK_INT(ks->v[i]->alg, want[i]);
        CHECK(ks->v[i]->kid == NULL);
    }
    EXPECT_OK(vfy(ks, tok_for(PGW_JWT_ES384)));
    EXPECT_OK(vfy(ks, tok_for(PGW_JWT_EDDSA)));
    ks = jwks(ec_noalg, ALL & ~PGW_JWT_ALG_BIT(PGW_JWT_ES256), &skipped, err, sizeof(err));
    CHECK_INT(pgw_jwt_keyset_count(ks), 3);
    CHECK_INT(skipped, 1);
}

/* One good key and one JWK that must be skipped. */
static void expect_skipped(const char *bad_members, unsigned algs, int line)
{
    char err[256];
    size_t skipped = 99;
    char *doc = fmt("{\"keys\":[{%s,\"kid\":\"good\",\"alg\":\"EdDSA\"},%s]}",
                    t_jwk_okp(ed25519, "Ed25519"), bad_members);
    struct pgw_jwt_keyset *ks = jwks(doc, algs, &skipped, err, sizeof(err));
    if (ks == NULL || pgw_jwt_keyset_count(ks) != 1 || skipped != 1 || g_taken != 1) {
        fprintf(stderr, "FAIL %s: line %d: %zu keys, %zu skipped (%s)\n", test_current, line,
                pgw_jwt_keyset_count(ks), skipped, err);
        test_current_failed = 1;
    }
}
#define SKIPPED(members) expect_skipped((members), PGW_JWT_ALGS_ASYMMETRIC, __LINE__)

static void test_jwks_skipped(void)
{
    const unsigned ALL = PGW_JWT_ALGS_ASYMMETRIC;
    char *rsa = jwk_rsa_members(rsa_a);
    /* control: the same document shape with a good second key gives two keys */
    char err[256];
    size_t skipped;
    char *doc = fmt("{\"keys\":[{%s,\"alg\":\"EdDSA\"},{%s,\"alg\":\"RS256\"}]}",
                    t_jwk_okp(ed25519, "Ed25519"), rsa);
    struct pgw_jwt_keyset *ks = jwks(doc, ALL, &skipped, err, sizeof(err));
    CHECK_INT(pgw_jwt_keyset_count(ks), 2);
    CHECK_INT(skipped, 0);
    /* use */
    SKIPPED(fmt("{%s,\"use\":\"enc\"}", rsa));
    SKIPPED(fmt("{%s,\"use\":1}", rsa));
    SKIPPED(fmt("{%s,\"use\":\"SIG\"}", rsa));
    /* alg: not allowed, unknown, not fitting the key */
    expect_skipped(fmt("{%s,\"alg\":\"RS256\"}", rsa), PGW_JWT_ALG_BIT(PGW_JWT_EDDSA) | PGW_JWT_ALG_BIT(PGW_JWT_PS256),
                   __LINE__);
    SKIPPED(fmt("{%s,\"alg\":\"RS1\"}", rsa));
    SKIPPED(fmt("{%s,\"alg\":\"rs256\"}", rsa));
    SKIPPED(fmt("{%s,\"alg\":256}", rsa));
    SKIPPED(fmt("{%s,\"alg\":\"ES256\"}", rsa));
    SKIPPED(fmt("{%s,\"alg\":\"ES384\"}", t_jwk_ec(ec256, "P-256", 32)));
    SKIPPED(fmt("{%s,\"alg\":\"EdDSA\"}", t_jwk_ec(ec256, "P-256", 32)));
    expect_skipped(fmt("{%s,\"alg\":\"HS256\"}", rsa), ALL | PGW_JWT_ALG_BIT(PGW_JWT_HS256), __LINE__);
    /* oct: never, with or without alg, even with HMAC allowed */
    const unsigned WITH_HS = ALL | PGW_JWT_ALG_BIT(PGW_JWT_HS256);
    expect_skipped("{\"kty\":\"oct\",\"k\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY\",\"alg\":\"HS256\"}",
                   WITH_HS, __LINE__);
    expect_skipped("{\"kty\":\"oct\",\"k\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY\"}", WITH_HS,
                   __LINE__);
    /* kty */
    SKIPPED("{\"n\":\"AQAB\",\"e\":\"AQAB\"}");
    SKIPPED(fmt("{%s,\"kty\":\"rsa\"}", t_jwk_okp(ed25519, "Ed25519") + strlen("\"kty\":\"OKP\",")));
    SKIPPED("{\"kty\":1}");
    SKIPPED("{\"kty\":\"RSA-HSM\"}");
    /* EC: point not on the curve, coordinates of the wrong length, unknown or missing curve */
    {
        BIGNUM *x = NULL, *y = NULL;
        EVP_PKEY_get_bn_param(ec256, OSSL_PKEY_PARAM_EC_PUB_X, &x);
        EVP_PKEY_get_bn_param(ec256, OSSL_PKEY_PARAM_EC_PUB_Y, &y);
        unsigned char xb[34], yb[34];
        BN_bn2binpad(x, xb + 1, 32);
        BN_bn2binpad(y, yb + 1, 32);
        BN_free(x);
        BN_free(y);
        xb[0] = yb[0] = 0;
        char *good = fmt("{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}", b64s(xb + 1, 32),
                         b64s(yb + 1, 32));
        char *gdoc = fmt("{\"keys\":[%s]}", good);
        CHECK_INT(pgw_jwt_keyset_count(jwks(gdoc, ALL, &skipped, err, sizeof(err))), 1); /* control */
        unsigned char yf[32];
        memcpy(yf, yb + 1, 32);
        yf[31] ^= 1;
        SKIPPED(fmt("{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}", b64s(xb + 1, 32),
                    b64s(yf, 32)));
        SKIPPED(fmt("{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}", b64s(xb + 2, 31),
                    b64s(yb + 1, 32)));
        SKIPPED(fmt("{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}", b64s(xb, 33),
                    b64s(yb + 1, 32)));
        SKIPPED(fmt("{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}", b64s(xb + 1, 32),
                    b64s(yb, 33)));
        SKIPPED(fmt("{\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"%s\",\"y\":\"%s\"}", b64s(xb + 1, 32),
                    b64s(yb + 1, 32)));
        SKIPPED(fmt("{\"kty\":\"EC\",\"crv\":\"secp256k1\",\"x\":\"%s\",\"y\":\"%s\"}", b64s(xb + 1, 32),
                    b64s(yb + 1, 32)));
        SKIPPED(fmt("{\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}", b64s(xb + 1, 32), b64s(yb + 1, 32)));
        SKIPPED(fmt("{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\"}", b64s(xb + 1, 32)));
        SKIPPED(fmt("{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s=\",\"y\":\"%s\"}", b64s(xb + 1, 32),
                    b64s(yb + 1, 32)));
        SKIPPED("{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"\",\"y\":\"\"}");
        /* the point at infinity / zero coordinates */
        unsigned char zero[32] = {0};
        SKIPPED(fmt("{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}", b64s(zero, 32),
                    b64s(zero, 32)));
    }
    /* the P-384 and P-521 keys under the wrong crv */
    SKIPPED(fmt("{%s}", t_jwk_ec(ec384, "P-256", 48)));
    SKIPPED(fmt("{%s}", t_jwk_ec(ec384, "P-521", 48)));
    SKIPPED(fmt("{%s}", t_jwk_ec(ec521, "P-384", 66)));
    /* RSA: short, missing or malformed n or e */
    SKIPPED(fmt("{%s}", jwk_rsa_members(rsa_small)));
    SKIPPED(fmt("{%s,\"alg\":\"RS256\"}", jwk_rsa_members(rsa_small)));
    SKIPPED("{\"kty\":\"RSA\",\"e\":\"AQAB\"}");
    {
        char *m = keep(pgw_strndup(rsa, strlen(rsa)));
        char *n = strstr(m, "\"n\":\"") + 5;
        char *no_e = keep(pgw_strndup(m, (size_t)(strstr(m, ",\"e\"") - m)));
        SKIPPED(fmt("{%s}", no_e));
        char saved = n[10];
        n[10] = '+';
        SKIPPED(fmt("{%s}", m));
        n[10] = '/';
        SKIPPED(fmt("{%s}", m));
        n[10] = saved;
        SKIPPED(fmt("{\"kty\":\"RSA\",\"n\":1,\"e\":\"AQAB\"}"));
        SKIPPED(fmt("{%s,\"e\":\"\"}", no_e));
        SKIPPED(fmt("{%s,\"e\":\"AQAB=\"}", no_e));
    }
    /* OKP: wrong length, other curves */
    {
        unsigned char x[33] = {0};
        size_t xl = 32;
        EVP_PKEY_get_raw_public_key(ed25519, x, &xl);
        SKIPPED(fmt("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"%s\"}", b64s(x, 31)));
        SKIPPED(fmt("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"%s\"}", b64s(x, 33)));
        SKIPPED(fmt("{\"kty\":\"OKP\",\"crv\":\"X25519\",\"x\":\"%s\"}", b64s(x, 32)));
        SKIPPED(fmt("{\"kty\":\"OKP\",\"crv\":\"Ed448\",\"x\":\"%s\"}", b64s(x, 32)));
        SKIPPED(fmt("{\"kty\":\"OKP\",\"x\":\"%s\"}", b64s(x, 32)));
        SKIPPED("{\"kty\":\"OKP\",\"crv\":\"Ed25519\"}");
    }
    /* kid: not a string, or longer than 256 bytes */
    SKIPPED(fmt("{%s,\"kid\":1}", rsa));
    char long_kid[300];
    memset(long_kid, 'k', 257);
    long_kid[257] = '\0';
    SKIPPED(fmt("{%s,\"kid\":\"%s\"}", rsa, long_kid));
    long_kid[256] = '\0';
    {
        char *d = fmt("{\"keys\":[{%s,\"kid\":\"%s\",\"alg\":\"RS256\"}]}", rsa, long_kid);
        CHECK_INT(pgw_jwt_keyset_count(jwks(d, ALL, &skipped, err, sizeof(err))), 1);
    }
    /* entries that are not objects */
    SKIPPED("1");
    SKIPPED("\"x\"");
    SKIPPED("[]");
    SKIPPED("null");
    SKIPPED("{}");
}

static void test_jwks_documents(void)
{
    char err[256];
    size_t skipped;
    const unsigned ALL = PGW_JWT_ALGS_ASYMMETRIC;
    static const char *const bad[] = {"[]", "{}", "{\"keys\":{}}", "{\"keys\":\"x\"}", "{\"keys\":null}",
                                      "{\"Keys\":[]}", "", "{", "{\"keys\":[}", "null", "\"keys\"",
                                      "{\"keys\":[]} x", "{\"keys\":[1,]}"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad); i++) {
        struct pgw_jwt_keyset *ks = jwks(bad[i], ALL, &skipped, err, sizeof(err));
        if (ks != NULL || err[0] == '\0') {
            fprintf(stderr, "FAIL %s: JWKS <%s> taken (err \"%s\")\n", test_current, bad[i], err);
            test_current_failed = 1;
        }
    }
    CHECK(jwks("{", ALL, &skipped, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "invalid JSON") != NULL);
    CHECK(jwks("{}", ALL, &skipped, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "keys") != NULL);
    /* too deep */
    char deep[256] = "{\"keys\":[],\"x\":";
    for (int i = 0; i < PGW_JWT_MAX_DEPTH; i++)
        strcat(deep, "[");
    for (int i = 0; i < PGW_JWT_MAX_DEPTH; i++)
        strcat(deep, "]");
    strcat(deep, "}");
    CHECK(jwks(deep, ALL, &skipped, err, sizeof(err)) == NULL);
    /* an empty set is a set */
    struct pgw_jwt_keyset *ks = jwks("{\"keys\":[]}", ALL, &skipped, err, sizeof(err));
    CHECK(ks != NULL);
    CHECK_INT(pgw_jwt_keyset_count(ks), 0);
    CHECK_INT(skipped, 0);
    ks = jwks(" {\"other\":1, \"keys\" : [ ] } ", ALL, &skipped, err, sizeof(err));
    CHECK(ks != NULL);
    /* a tiny error buffer, and none */
    char small[8];
    CHECK(jwks("[]", ALL, &skipped, small, sizeof(small)) == NULL);
    CHECK(strlen(small) < sizeof(small));
    size_t taken;
    CHECK(pgw_jwt_keyset_from_jwks("[]", 2, ALL, &taken, &skipped, err, 0) == NULL);
}

static void test_jwks_cap(void)
{
    char err[256];
    size_t skipped;
    const char *okp = t_jwk_okp(ed25519, "Ed25519");
    for (int total = PGW_JWT_MAX_JWKS_KEYS - 1; total <= PGW_JWT_MAX_JWKS_KEYS + 6; total++) {
        size_t cap = 64 * 1024, l = 0;
        char *doc = keep(malloc(cap));
        l += (size_t)snprintf(doc + l, cap - l, "{\"keys\":[");
        /* ten bad ones first: they do not count against the cap */
        for (int i = 0; i < 10; i++)
            l += (size_t)snprintf(doc + l, cap - l, "{\"kty\":\"oct\",\"k\":\"AAAA\",\"kid\":\"o%d\"},", i);
        for (int i = 0; i < total; i++)
            l += (size_t)snprintf(doc + l, cap - l, "%s{%s,\"kid\":\"k%d\",\"alg\":\"EdDSA\"}",
                                  i ? "," : "", okp, i);
        l += (size_t)snprintf(doc + l, cap - l, "]}");
        pgw_assert(l < cap);
        struct pgw_jwt_keyset *ks = jwks(doc, PGW_JWT_ALGS_ASYMMETRIC, &skipped, err, sizeof(err));
        size_t want = total < PGW_JWT_MAX_JWKS_KEYS ? (size_t)total : PGW_JWT_MAX_JWKS_KEYS;
        CHECK_INT(pgw_jwt_keyset_count(ks), want);
        CHECK_INT(g_taken, want);
        CHECK_INT(skipped, 10 + (size_t)total - want);
        if (total == PGW_JWT_MAX_JWKS_KEYS + 6) {
            struct signer d = signer_for(PGW_JWT_EDDSA);
            char *p = pl_default();
            EXPECT_OK(vfy(ks, tok(&d, hdr_kid(PGW_JWT_EDDSA, "k0"), p)));
            EXPECT_OK(vfy(ks, tok(&d, hdr_kid(PGW_JWT_EDDSA, "k63"), p)));
            EXPECT_REFUSED(vfy(ks, tok(&d, hdr_kid(PGW_JWT_EDDSA, "k64"), p)), PGW_JWT_UNKNOWN_KID);
        }
    }
}

/* The cap counts JWKs: RSA JWKs without alg each expand to the allowed RS and PS algorithms. */
static void test_jwks_cap_expanded(void)
{
    char err[256];
    size_t skipped;
    const char *rsa = jwk_rsa_members(rsa_a);
    size_t cap = 64 * 1024 * 2, l = 0;
    char *doc = keep(malloc(cap));
    l += (size_t)snprintf(doc + l, cap - l, "{\"keys\":[");
    for (int i = 0; i < PGW_JWT_MAX_JWKS_KEYS + 2; i++)
        l += (size_t)snprintf(doc + l, cap - l, "%s{%s,\"kid\":\"r%d\"}", i ? "," : "", rsa, i);
    l += (size_t)snprintf(doc + l, cap - l, "]}");
    pgw_assert(l < cap);
    unsigned algs = PGW_JWT_ALG_BIT(PGW_JWT_RS256) | PGW_JWT_ALG_BIT(PGW_JWT_PS256);
    struct pgw_jwt_keyset *ks = jwks(doc, algs, &skipped, err, sizeof(err));
    CHECK_INT(g_taken, PGW_JWT_MAX_JWKS_KEYS);
    CHECK_INT(skipped, 2);
    CHECK_INT(pgw_jwt_keyset_count(ks), 2 * PGW_JWT_MAX_JWKS_KEYS);
    struct signer s = {.alg = PGW_JWT_PS256, .pk = rsa_a};
    EXPECT_OK(vfy(ks, tok(&s, hdr_kid(PGW_JWT_PS256, "r63"), pl_default())));
    EXPECT_REFUSED(vfy(ks, tok(&s, hdr_kid(PGW_JWT_PS256, "r64"), pl_default())), PGW_JWT_UNKNOWN_KID);
}

/* ---- Keys from PEM and secrets ---- */

static void expect_pem_refused(int alg, const char *pem, size_t len, const char *why, int line)
{
    char err[256] = "";
    if (len == (size_t)-1)
        len = strlen(pem);
    struct pgw_jwt_key *k = pgw_jwt_key_pem(alg, "k", pem, len, err, sizeof(err));
    if (k != NULL) {
        fprintf(stderr, "FAIL %s: line %d: key taken for %s\n", test_current, line,
                pgw_jwt_alg_name(alg));
        test_current_failed = 1;
        key_free(k);
    } else if (err[0] == '\0' || (why != NULL && strstr(err, why) == NULL)) {
        fprintf(stderr, "FAIL %s: line %d: error \"%s\", expected \"%s\"\n", test_current, line, err,
                why ? why : "(any)");
        test_current_failed = 1;
    }
    if (ERR_peek_error() != 0) {
        fprintf(stderr, "FAIL %s: line %d: OpenSSL error queue not empty\n", test_current, line);
        test_current_failed = 1;
        ERR_clear_error();
    }
}
#define PEM_REFUSED(alg, pem, why) expect_pem_refused((alg), (pem), (size_t)-1, (why), __LINE__)

static void test_key_pem(void)
{
    char err[256];
    /* controls */
    for (int a = PGW_JWT_RS256; a < PGW_JWT_ALG_END; a++) {
        const char *pem = pub_pem(pkey_for(a));
        struct pgw_jwt_key *k = pgw_jwt_key_pem(a, "kid-1", pem, strlen(pem), err, sizeof(err));
        CHECK(k != NULL);
        if (k != NULL) {
            CHECK_INT(k->alg, a);
            CHECK(k->kid != NULL && strcmp(k->kid, "kid-1") == 0 && k->kid_len == 5);
            key_free(k);
        }
    }
    struct pgw_jwt_key *k = pgw_jwt_key_pem(PGW_JWT_EDDSA, NULL, pub_pem(ed448), strlen(pub_pem(ed448)),
                                            err, sizeof(err));
    CHECK(k != NULL && k->kid == NULL);
    key_free(k);
    /* private keys, in every PEM form */
    PEM_REFUSED(PGW_JWT_RS256, priv_pem(rsa_a, 0), "private key");
    PEM_REFUSED(PGW_JWT_RS256, priv_pem(rsa_a, 1), "private key");
    PEM_REFUSED(PGW_JWT_ES256, priv_pem(ec256, 0), "private key");
    PEM_REFUSED(PGW_JWT_ES256, priv_pem(ec256, 1), "private key");
    PEM_REFUSED(PGW_JWT_EDDSA, priv_pem(ed25519, 0), "private key");
    PEM_REFUSED(PGW_JWT_RS256, fmt("%s%s", pub_pem(rsa_a), priv_pem(rsa_a, 0)), "private key");
    /* RSA under 2048 bits */
    PEM_REFUSED(PGW_JWT_RS256, pub_pem(rsa_small), "2048");
    PEM_REFUSED(PGW_JWT_PS256, pub_pem(rsa_small), "2048");
    PEM_REFUSED(PGW_JWT_RS512, cert_pem(rsa_small), "2048");
    /* wrong curve */
    PEM_REFUSED(PGW_JWT_ES256, pub_pem(ec384), "P-256");
    PEM_REFUSED(PGW_JWT_ES256, pub_pem(ec521), "P-256");
    PEM_REFUSED(PGW_JWT_ES384, pub_pem(ec256), "P-384");
    PEM_REFUSED(PGW_JWT_ES512, pub_pem(ec384), "P-521");
    PEM_REFUSED(PGW_JWT_ES384, cert_pem(ec256), "P-384");
    /* wrong type */
    PEM_REFUSED(PGW_JWT_RS256, pub_pem(ec256), "RSA");
    PEM_REFUSED(PGW_JWT_PS384, pub_pem(ed25519), "RSA");
    PEM_REFUSED(PGW_JWT_ES256, pub_pem(rsa_a), "EC");
    PEM_REFUSED(PGW_JWT_ES256, pub_pem(ed25519), "EC");
    PEM_REFUSED(PGW_JWT_EDDSA, pub_pem(rsa_a), "Ed25519");
    PEM_REFUSED(PGW_JWT_EDDSA, pub_pem(ec256), "Ed25519");
    PEM_REFUSED(PGW_JWT_HS256, pub_pem(rsa_a), "secret");
    /* not PEM, or a broken one */
    PEM_REFUSED(PGW_JWT_RS256, "hello", NULL);
    expect_pem_refused(PGW_JWT_RS256, "", 0, NULL, __LINE__);
    const char *pem = pub_pem(rsa_a);
    expect_pem_refused(PGW_JWT_RS256, pem, strlen(pem) / 2, NULL, __LINE__);
    char *broken = keep(pgw_strndup(pem, strlen(pem)));
    broken[40] = broken[40] == 'A' ? 'B' : 'A';
    broken[41] = '!';
    PEM_REFUSED(PGW_JWT_RS256, broken, NULL);
    PEM_REFUSED(PGW_JWT_RS256, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", NULL);
    PEM_REFUSED(PGW_JWT_RS256, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", NULL);
    /* no such algorithm */
    PEM_REFUSED(0, pem, NULL);
    PEM_REFUSED(PGW_JWT_ALG_END, pem, NULL);
    PEM_REFUSED(-3, pem, NULL);
    /* a small error buffer is enough */
    char tiny[4];
    CHECK(pgw_jwt_key_pem(PGW_JWT_ES256, NULL, pem, strlen(pem), tiny, sizeof(tiny)) == NULL);
    CHECK(strlen(tiny) < sizeof(tiny));
    CHECK(pgw_jwt_key_pem(PGW_JWT_ES256, NULL, pem, strlen(pem), tiny, 0) == NULL);
    CHECK_INT(ERR_peek_error(), 0);
}

static void test_key_secret(void)
{
    char err[256];
    static const struct {
        int alg;
        size_t min;
    } cases[] = {{PGW_JWT_HS256, 32}, {PGW_JWT_HS384, 48}, {PGW_JWT_HS512, 64}};
    unsigned char secret[64];
    memset(secret, 's', sizeof(secret));
    for (size_t i = 0; i < PGW_ARRAY_LEN(cases); i++) {
        err[0] = '\0';
        CHECK(pgw_jwt_key_secret(cases[i].alg, NULL, secret, cases[i].min - 1, err, sizeof(err)) == NULL);
        CHECK(strstr(err, "at least") != NULL);
        CHECK(pgw_jwt_key_secret(cases[i].alg, NULL, secret, 0, err, sizeof(err)) == NULL);
        struct pgw_jwt_key *k = pgw_jwt_key_secret(cases[i].alg, "h", secret, cases[i].min, err, sizeof(err));
        CHECK(k != NULL);
        key_free(k);
    }
    CHECK(pgw_jwt_key_secret(PGW_JWT_RS256, NULL, secret, 64, err, sizeof(err)) == NULL);
    CHECK(pgw_jwt_key_secret(PGW_JWT_EDDSA, NULL, secret, 64, err, sizeof(err)) == NULL);
    CHECK(pgw_jwt_key_secret(0, NULL, secret, 64, err, sizeof(err)) == NULL);
    CHECK(pgw_jwt_key_secret(PGW_JWT_ALG_END, NULL, secret, 64, err, sizeof(err)) == NULL);
    /* the secret is copied: the caller's buffer may change after */
    unsigned char mine[64];
    memcpy(mine, SECRET, 64);
    struct pgw_jwt_keyset *ks = keep_ks(pgw_jwt_keyset_new());
    pgw_jwt_keyset_add(ks, pgw_jwt_key_secret(PGW_JWT_HS256, NULL, mine, 64, err, sizeof(err)));
    memset(mine, 0, sizeof(mine));
    EXPECT_OK(vfy(ks, tok_for(PGW_JWT_HS256)));
    /* a secret with NUL bytes is used whole */
    unsigned char nul[40] = {0};
    nul[39] = 1;
    struct pgw_jwt_keyset *nk = keep_ks(pgw_jwt_keyset_new());
    pgw_jwt_keyset_add(nk, pgw_jwt_key_secret(PGW_JWT_HS256, NULL, nul, 40, err, sizeof(err)));
    struct signer sn = {.alg = PGW_JWT_HS256, .secret = nul, .slen = 40};
    struct signer s39 = {.alg = PGW_JWT_HS256, .secret = nul, .slen = 39};
    EXPECT_OK(vfy(nk, tok(&sn, hdr(PGW_JWT_HS256), pl_default())));
    EXPECT_REFUSED(vfy(nk, tok(&s39, hdr(PGW_JWT_HS256), pl_default())), PGW_JWT_INVALID);
}

/* ---- Providers ---- */

struct prov {
    struct pgw_config c;
    struct pgw_config_jwt_provider cp;
    struct pgw_config_jwt_key key;
    struct pgw_jwt_gen *g;
    struct pgw_jwt_provider *p;
    struct pgw_jwt_keyset *hidden;
};

/* A provider with one HS256 key (SECRET), a JWKS URL and a cache of <cache> tokens. */
static void prov_init(struct prov *x, uint64_t cache, const char *jwks_url)
{
    memset(x, 0, sizeof(*x));
    x->key = (struct pgw_config_jwt_key){.alg = PGW_JWT_HS256, .secret = (char *)SECRET};
    x->cp = (struct pgw_config_jwt_provider){
        .name = "corp",
        .keys = &x->key,
        .num_keys = 1,
        .jwks_url = (char *)jwks_url,
        .jwks_refresh = 3600000,
        .jwks_min_refresh = 30000,
        .jwks_timeout = 5000,
        .jwks_algorithms = PGW_JWT_ALGS_ASYMMETRIC,
        .leeway = 0,
        .max_token_size = 8192,
        .cache = cache,
    };
    x->c.jwt_providers = &x->cp;
    x->c.num_jwt_providers = 1;
    char err[512];
    x->g = pgw_jwt_gen_new(&x->c, NULL, 0, err, sizeof(err));
    if (x->g == NULL)
        fprintf(stderr, "gen: %s\n", err);
    pgw_assert(x->g != NULL);
    x->p = pgw_jwt_gen_find(x->g, "corp", 4);
    pgw_assert(x->p != NULL);
    CHECK(pgw_jwt_gen_find(x->g, "cor", 3) == NULL);
    CHECK(pgw_jwt_gen_find(x->g, "corpx", 5) == NULL);
}

/* The static keys go away (so that only the cache can accept a token), then come back. */
static void prov_hide_keys(struct prov *x)
{
    pgw_assert(x->hidden == NULL);
    x->hidden = x->p->keys;
    x->p->keys = pgw_jwt_keyset_new();
}

static void prov_show_keys(struct prov *x)
{
    pgw_assert(x->hidden != NULL);
    pgw_jwt_keyset_unref(x->p->keys);
    x->p->keys = x->hidden;
    x->hidden = NULL;
}

static void prov_free(struct prov *x)
{
    if (x->hidden != NULL)
        prov_show_keys(x);
    pgw_jwt_gen_free(x->g);
}

static int p_code;
static const char *p_payload;
static size_t p_plen;

static int pv(struct prov *x, const char *token, double now)
{
    p_code = -1;
    g_why = "(not set)";
    p_payload = NULL;
    int rc = pgw_jwt_provider_verify(x->p, token, strlen(token), now, &p_payload, &p_plen, &p_code,
                                     &g_why);
    g_res.code = p_code; /* for EXPECT_REFUSED */
    if (rc == PGW_OK)
        CHECK(p_payload != NULL);
    CHECK_INT(ERR_peek_error(), 0);
    return rc;
}

static void test_provider_cache(void)
{
    struct prov x;
    prov_init(&x, 64, "https://idp.example/jwks.json");
    CHECK(x.p->cache != NULL);
    CHECK_INT(pgw_jwt_keyset_count(x.p->keys), 1);
    CHECK(x.p->jwks == NULL);
    struct signer s = signer_for(PGW_JWT_HS256);
    char *pl = fmt("{\"sub\":\"u\",\"exp\":%.0f}", NOW + 100);
    char *t = tok(&s, hdr(PGW_JWT_HS256), pl);
    char *t2 = tok(&s, hdr(PGW_JWT_HS256), fmt("{\"sub\":\"v\",\"exp\":%.0f}", NOW + 100));
    /* verified once, then from the cache */
    EXPECT_OK(pv(&x, t, NOW));
    CHECK(p_plen == strlen(pl) && memcmp(p_payload, pl, p_plen) == 0);
    prov_hide_keys(&x);
    EXPECT_OK(pv(&x, t, NOW));
    CHECK(p_plen == strlen(pl) && memcmp(p_payload, pl, p_plen) == 0);
    EXPECT_REFUSED(pv(&x, t2, NOW), PGW_JWT_NO_KEYS); /* not cached: the keys are really gone */
    /* exp is still checked on a hit */
    EXPECT_OK(pv(&x, t, NOW + 99));
    EXPECT_REFUSED(pv(&x, t, NOW + 100), PGW_JWT_INVALID);
    EXPECT_WHY("expired");
    EXPECT_REFUSED(pv(&x, t, NOW + 1000), PGW_JWT_INVALID);
    EXPECT_OK(pv(&x, t, NOW)); /* the entry stays for a clock that is behind */
    /* a failed fetch and a bad document keep the cache (and the previous keys) */
    size_t skipped = 99;
    char err[256];
    CHECK_INT(pgw_jwt_provider_jwks_done(x.p, NULL, 0, &skipped, err, sizeof(err)), -1);
    EXPECT_OK(pv(&x, t, NOW));
    CHECK_INT(pgw_jwt_provider_jwks_done(x.p, "nope", 4, &skipped, err, sizeof(err)), -1);
    CHECK(strstr(err, "invalid JSON") != NULL);
    EXPECT_OK(pv(&x, t, NOW));
    CHECK(x.p->jwks == NULL);
    /* new keys installed: the cache is cleared, tokens are verified again */
    CHECK_INT(pgw_jwt_provider_jwks_done(x.p, "{\"keys\":[]}", 11, &skipped, err, sizeof(err)), 0);
    CHECK(x.p->jwks != NULL);
    EXPECT_REFUSED(pv(&x, t, NOW), PGW_JWT_NO_KEYS);
    struct pgw_jwt_keyset *before = x.p->jwks;
    CHECK_INT(pgw_jwt_provider_jwks_done(x.p, "[]", 2, &skipped, err, sizeof(err)), -1);
    CHECK(x.p->jwks == before); /* the previous keys stay */
    prov_show_keys(&x);
    EXPECT_OK(pv(&x, t, NOW));
    /* keys from the JWKS, through the provider */
    char *doc = fmt("{\"keys\":[{%s,\"kid\":\"d1\",\"alg\":\"EdDSA\"},{\"kty\":\"oct\",\"k\":\"AAAA\"}]}",
                    t_jwk_okp(ed25519, "Ed25519"));
    CHECK_INT(pgw_jwt_provider_jwks_done(x.p, doc, strlen(doc), &skipped, err, sizeof(err)), 1);
    CHECK_INT(skipped, 1);
    struct signer d = signer_for(PGW_JWT_EDDSA);
    char *td = tok(&d, hdr_kid(PGW_JWT_EDDSA, "d1"), pl);
    EXPECT_OK(pv(&x, td, NOW));
    EXPECT_REFUSED(pv(&x, tok(&d, hdr_kid(PGW_JWT_EDDSA, "d2"), pl), NOW), PGW_JWT_UNKNOWN_KID);
    EXPECT_OK(pv(&x, t, NOW)); /* static keys still work */
    /* the JWKS key is removed: the cached token td must not outlive it */
    CHECK_INT(pgw_jwt_provider_jwks_done(x.p, "{\"keys\":[]}", 11, &skipped, err, sizeof(err)), 0);
    EXPECT_REFUSED(pv(&x, td, NOW), PGW_JWT_UNKNOWN_KID);
    /* nbf is checked on a hit too */
    char *tn = tok(&s, hdr(PGW_JWT_HS256), fmt("{\"nbf\":%.0f,\"exp\":%.0f}", NOW - 10, NOW + 100));
    EXPECT_OK(pv(&x, tn, NOW));
    prov_hide_keys(&x);
    EXPECT_OK(pv(&x, tn, NOW));
    EXPECT_REFUSED(pv(&x, tn, NOW - 20), PGW_JWT_INVALID);
    EXPECT_WHY("nbf");
    prov_show_keys(&x);
    /* refusals are not cached */
    unsigned char sig[64];
    size_t sl = sig_of(&s, hdr(PGW_JWT_HS256), pl, sig);
    sig[0] ^= 1;
    char *bad = join(hdr(PGW_JWT_HS256), pl, sig, sl);
    EXPECT_REFUSED(pv(&x, bad, NOW), PGW_JWT_INVALID);
    EXPECT_REFUSED(pv(&x, bad, NOW), PGW_JWT_INVALID);
    char *expired = tok(&s, hdr(PGW_JWT_HS256), fmt("{\"exp\":%.0f}", NOW - 1));
    EXPECT_REFUSED(pv(&x, expired, NOW), PGW_JWT_INVALID);
    EXPECT_OK(pv(&x, expired, NOW - 10)); /* verified: now cached with its exp */
    EXPECT_REFUSED(pv(&x, expired, NOW), PGW_JWT_INVALID);
    /* a token over the size bound is not looked up in the cache */
    EXPECT_OK(pv(&x, t, NOW));
    x.p->rules.max_size = strlen(t) - 1;
    EXPECT_REFUSED(pv(&x, t, NOW), PGW_JWT_INVALID);
    EXPECT_WHY("too large");
    x.p->rules.max_size = 8192;
    prov_free(&x);
}

static void test_provider_cache_slots(void)
{
    struct signer s = signer_for(PGW_JWT_HS256);
    char *t1 = tok(&s, hdr(PGW_JWT_HS256), fmt("{\"n\":1,\"exp\":%.0f}", NOW + 100));
    char *t2 = tok(&s, hdr(PGW_JWT_HS256), fmt("{\"n\":2,\"exp\":%.0f}", NOW + 100));
    /* one slot: t2 takes t1's place, and t1 is not mistaken for t2 */
    struct prov x;
    prov_init(&x, 1, NULL);
    EXPECT_OK(pv(&x, t1, NOW));
    EXPECT_OK(pv(&x, t2, NOW));
    prov_hide_keys(&x);
    EXPECT_OK(pv(&x, t2, NOW));
    CHECK(p_plen > 5 && memcmp(p_payload, "{\"n\":2", 6) == 0);
    EXPECT_REFUSED(pv(&x, t1, NOW), PGW_JWT_NO_KEYS);
    prov_free(&x);
    /* no cache */
    prov_init(&x, 0, NULL);
    CHECK(x.p->cache == NULL);
    EXPECT_OK(pv(&x, t1, NOW));
    prov_hide_keys(&x);
    EXPECT_REFUSED(pv(&x, t1, NOW), PGW_JWT_NO_KEYS);
    prov_free(&x);
    /* many tokens through a small cache: each answer is its own token's payload */
    prov_init(&x, 7, NULL);
    char *toks[40], *pls[40];
    for (int i = 0; i < 40; i++) {
        pls[i] = fmt("{\"n\":%d,\"exp\":%.0f}", i, NOW + 100);
        toks[i] = tok(&s, hdr(PGW_JWT_HS256), pls[i]);
    }
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 40; i++) {
            int j = (i * 7 + round) % 40;
            EXPECT_OK(pv(&x, toks[j], NOW));
            CHECK(p_plen == strlen(pls[j]) && memcmp(p_payload, pls[j], p_plen) == 0);
        }
    prov_free(&x);
}

static void test_jwks_claim(void)
{
    struct prov x;
    char err[256];
    size_t skipped;
    /* no URL: never */
    prov_init(&x, 0, NULL);
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1000, 0), 0);
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1000, 1), 0);
    prov_free(&x);

    prov_init(&x, 0, "https://idp.example/jwks.json"); /* min_refresh 30 s, timeout 5 s */
    /* the first claim, even forced */
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1000, 1), 1);
    /* none while one is in flight, forced or not */
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1000, 0), 0);
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1003, 1), 0);
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1005.9, 0), 0);
    CHECK_INT(x.p->jwks_version, 0);
    CHECK_INT(pgw_jwt_provider_jwks_done(x.p, NULL, 0, &skipped, err, sizeof(err)), -1);
    CHECK_INT(x.p->jwks_version, 1);
    /* forced: at most once per min_refresh since the last attempt */
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1001, 1), 0);
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1029.99, 1), 0);
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1030, 1), 1);
    CHECK_INT(pgw_jwt_provider_jwks_done(x.p, "{\"keys\":[]}", 11, &skipped, err, sizeof(err)), 0);
    CHECK_INT(x.p->jwks_version, 2);
    /* the scheduled refresh (not forced) is not held back by min_refresh */
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1031, 0), 1);
    CHECK_INT(pgw_jwt_provider_jwks_done(x.p, "{\"keys\":[]}", 11, &skipped, err, sizeof(err)), 0);
    /* ... but it counts as an attempt for the forced ones */
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1060.9, 1), 0);
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1061, 1), 1);
    /* an in-flight fetch that never finishes expires after timeout + 1 s */
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1066.99, 0), 0);
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1066.99, 1), 0);
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1067, 0), 1);
    /* and the forced rule still applies after an expiry */
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1073, 1), 0);
    CHECK_INT(pgw_jwt_provider_jwks_claim(x.p, 1097, 1), 1);
    CHECK_INT(pgw_jwt_provider_jwks_done(x.p, NULL, 0, &skipped, err, sizeof(err)), -1);
    /* a flood of unknown kids: one fetch per min_refresh */
    int fetches = 0;
    for (int i = 0; i < 6000; i++) {
        double t = 2000 + i * 0.01; /* 60 s */
        if (pgw_jwt_provider_jwks_claim(x.p, t, 1)) {
            fetches++;
            CHECK_INT(pgw_jwt_provider_jwks_done(x.p, NULL, 0, &skipped, err, sizeof(err)), -1);
        }
    }
    CHECK_INT(fetches, 2); /* at 2000 and 2030 */
    prov_free(&x);
}

static void test_gen_adopt(void)
{
    struct prov a, b, c;
    char err[256];
    size_t skipped;
    prov_init(&a, 8, "https://idp.example/jwks.json");
    char *doc = fmt("{\"keys\":[{%s,\"kid\":\"d1\",\"alg\":\"EdDSA\"}]}", t_jwk_okp(ed25519, "Ed25519"));
    CHECK_INT(pgw_jwt_provider_jwks_claim(a.p, 500, 0), 1);
    CHECK_INT(pgw_jwt_provider_jwks_done(a.p, doc, strlen(doc), &skipped, err, sizeof(err)), 1);
    /* same name, URL and algorithms: the keys are taken over */
    prov_init(&b, 8, "https://idp.example/jwks.json");
    pgw_jwt_gen_adopt(b.g, a.g);
    CHECK(b.p->jwks == a.p->jwks);
    CHECK(b.p->jwks_attempt == 500);
    CHECK_INT(b.p->jwks_taken, 1);
    /* another URL: not */
    prov_init(&c, 8, "https://other.example/jwks.json");
    pgw_jwt_gen_adopt(c.g, a.g);
    CHECK(c.p->jwks == NULL);
    prov_free(&c);
    /* other algorithms: not */
    prov_init(&c, 8, "https://idp.example/jwks.json");
    c.cp.jwks_algorithms = PGW_JWT_ALG_BIT(PGW_JWT_RS256);
    pgw_jwt_gen_adopt(c.g, a.g);
    CHECK(c.p->jwks == NULL);
    prov_free(&c);
    pgw_jwt_gen_adopt(b.g, NULL);
    /* the old generation goes; the keys stay with the new one */
    prov_free(&a);
    struct signer d = signer_for(PGW_JWT_EDDSA);
    EXPECT_OK(pv(&b, tok(&d, hdr_kid(PGW_JWT_EDDSA, "d1"), pl_default()), NOW));
    prov_free(&b);
}

/* The path the gateway takes: a configuration, its files read into the blob, keys built. */
static char dir[] = "/tmp/pgw-jwt-test-XXXXXX";

static void write_file(const char *name, const char *data)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    pgw_assert(f != NULL);
    fputs(data, f);
    fclose(f);
}

static void test_gen_from_config(void)
{
    if (mkdtemp(dir) == NULL) {
        CHECK(0);
        return;
    }
    write_file("rsa.pub.pem", pub_pem(rsa_a));
    write_file("ec.pub.pem", pub_pem(ec256));
    write_file("rsa.key", priv_pem(rsa_a, 0));
    write_file("hs.secret", fmt("%s\n", (const char *)SECRET));
    char err[2048] = "";
    char *section = fmt("    corp:\n"
                        "      issuer: https://idp.example/\n"
                        "      audiences: [api]\n"
                        "      leeway: 0s\n"
                        "      keys:\n"
                        "        - { kid: r, alg: RS256, file: \"%s/rsa.pub.pem\" }\n"
                        "        - { kid: e, alg: ES256, file: \"%s/ec.pub.pem\" }\n"
                        "        - { kid: h, alg: HS256, secret_file: \"%s/hs.secret\" }\n",
                        dir, dir, dir);
    char *yaml = fmt("listeners:\n  - name: l\n    address: \"127.0.0.1:1\"\njwt:\n  providers:\n%s",
                     section);
    struct pgw_config *c = pgw_config_load_string("t.yaml", yaml, strlen(yaml), err, sizeof(err));
    if (c == NULL) {
        fprintf(stderr, "FAIL %s: config: %s\n", test_current, err);
        test_current_failed = 1;
        return;
    }
    char *blob = NULL;
    size_t len = 0;
    CHECK_INT(pgw_genfiles_prepare(c, 0, &blob, &len, err, sizeof(err)), PGW_OK);
    struct pgw_jwt_gen *g = pgw_jwt_gen_new(c, blob, len, err, sizeof(err));
    CHECK(g != NULL);
    if (g != NULL) {
        struct pgw_jwt_provider *p = pgw_jwt_gen_find(g, "corp", 4);
        CHECK(p != NULL);
        CHECK_INT(pgw_jwt_keyset_count(p->keys), 3);
        CHECK_INT(p->rules.max_size, 8192);
        CHECK(p->cache != NULL);
        char *pl = fmt("{\"iss\":\"https://idp.example/\",\"aud\":\"api\",\"exp\":%.0f}", NOW + 60);
        struct signer rs = signer_for(PGW_JWT_RS256), es = signer_for(PGW_JWT_ES256),
                      hs = signer_for(PGW_JWT_HS256);
        const char *why, *payload;
        size_t plen;
        int code;
        char *t;
        t = tok(&rs, hdr_kid(PGW_JWT_RS256, "r"), pl);
        CHECK_INT(pgw_jwt_provider_verify(p, t, strlen(t), NOW, &payload, &plen, &code, &why), PGW_OK);
        t = tok(&es, hdr_kid(PGW_JWT_ES256, "e"), pl);
        CHECK_INT(pgw_jwt_provider_verify(p, t, strlen(t), NOW, &payload, &plen, &code, &why), PGW_OK);
        /* the secret file's final newline is not part of the secret */
        t = tok(&hs, hdr_kid(PGW_JWT_HS256, "h"), pl);
        CHECK_INT(pgw_jwt_provider_verify(p, t, strlen(t), NOW, &payload, &plen, &code, &why), PGW_OK);
        /* the default required claim is exp */
        t = tok(&hs, hdr_kid(PGW_JWT_HS256, "h"), "{\"iss\":\"https://idp.example/\",\"aud\":\"api\"}");
        CHECK_INT(pgw_jwt_provider_verify(p, t, strlen(t), NOW, &payload, &plen, &code, &why), PGW_ERR);
        /* issuer and audience come from the configuration */
        t = tok(&hs, hdr_kid(PGW_JWT_HS256, "h"), fmt("{\"iss\":\"x\",\"aud\":\"api\",\"exp\":%.0f}", NOW + 60));
        CHECK_INT(pgw_jwt_provider_verify(p, t, strlen(t), NOW, &payload, &plen, &code, &why), PGW_ERR);
        CHECK_INT(code, PGW_JWT_INVALID);
        pgw_jwt_gen_free(g);
    }
    free(blob);
    pgw_config_unref(c);
    /* a key that does not fit its alg, a private key: the configuration is refused, naming it */
    static const char *const bad[] = {"{ kid: x, alg: ES256, file: \"%s/rsa.pub.pem\" }",
                                      "{ kid: x, alg: RS256, file: \"%s/rsa.key\" }",
                                      "{ kid: x, alg: RS256, file: \"%s/missing.pem\" }"};
    static const char *const why[] = {"EC key", "private key", "missing.pem"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad); i++) {
        char *key = fmt(bad[i], dir);
        yaml = fmt("listeners:\n  - name: l\n    address: \"127.0.0.1:1\"\njwt:\n  providers:\n"
                   "    corp:\n      keys:\n        - %s\n",
                   key);
        err[0] = '\0';
        c = pgw_config_load_string("t.yaml", yaml, strlen(yaml), err, sizeof(err));
        if (c == NULL) {
            CHECK(strstr(err, why[i]) != NULL || i == 2);
            continue;
        }
        blob = NULL;
        CHECK_INT(pgw_genfiles_prepare(c, 0, &blob, &len, err, sizeof(err)), PGW_ERR);
        CHECK(strstr(err, "jwt.providers.corp.keys[0]") != NULL || strstr(err, why[i]) != NULL);
        CHECK(strstr(err, why[i]) != NULL);
        free(blob);
        pgw_config_unref(c);
    }
    char path[300];
    static const char *const files[] = {"rsa.pub.pem", "ec.pub.pem", "rsa.key", "hs.secret"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(files); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* ---- main ---- */

#define T(fn)                                                                                      \
    do {                                                                                           \
        reset_rules();                                                                             \
        RUN(fn);                                                                                   \
        collect();                                                                                 \
    } while (0)

int main(void)
{
    rsa_a = EVP_RSA_gen(2048);
    rsa_b = EVP_RSA_gen(2048);
    rsa_small = EVP_RSA_gen(1024);
    ec256 = EVP_EC_gen("P-256");
    ec256_b = EVP_EC_gen("P-256");
    ec384 = EVP_EC_gen("P-384");
    ec521 = EVP_EC_gen("P-521");
    ed25519 = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    ed448 = EVP_PKEY_Q_keygen(NULL, NULL, "ED448");
    pgw_assert(rsa_a && rsa_b && rsa_small && ec256 && ec256_b && ec384 && ec521 && ed25519 && ed448);

    T(test_alg_names);
    T(test_b64url);
    T(test_every_alg);
    T(test_alg_pinning);
    T(test_libjwt_oracle);
    T(test_header_alg);
    T(test_header_typ);
    T(test_header_key_urls_ignored);
    T(test_kid);
    T(test_shape);
    T(test_shape_json);
    T(test_claims_times);
    T(test_claims_iss_aud_required);
    T(test_claims_aud_object);
    T(test_es_signature_length);
    T(test_jwks_keys);
    T(test_jwks_skipped);
    T(test_jwks_documents);
    T(test_jwks_cap);
    T(test_jwks_cap_expanded);
    T(test_key_pem);
    T(test_key_secret);
    T(test_provider_cache);
    T(test_provider_cache_slots);
    T(test_jwks_claim);
    T(test_gen_adopt);
    T(test_gen_from_config);

    EVP_PKEY *all[] = {rsa_a, rsa_b, rsa_small, ec256, ec256_b, ec384, ec521, ed25519, ed448};
    for (size_t i = 0; i < PGW_ARRAY_LEN(all); i++)
        EVP_PKEY_free(all[i]);
    return TEST_REPORT("jwt");
}
