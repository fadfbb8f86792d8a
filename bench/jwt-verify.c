/* bench/jwt-verify.c: CPU cost of verifying one JWT, our verifier (gateway/jwt.c, keys parsed once
 * into an EVP_PKEY) against Debian's libjwt 1.10 (PEM key given, and parsed, on every jwt_decode),
 * and the provider's verified-token cache (gateway/jwt_provider.c).
 *
 *   jwt-verify [RUNS [MS]]
 *
 * Keys are made here (RSA 2048, EC P-256, Ed25519, a 32-byte HMAC secret), their PEM public keys
 * written to a temporary directory, and a configuration with one provider per algorithm (issuer,
 * audience, cache on and off) is loaded by config.c; the key files go through genfiles.c and the
 * providers are built by jwt_provider.c, exactly as a worker builds them. One realistic access
 * token per algorithm: a header with typ and kid, 11 claims (iss sub aud exp nbf iat jti scope
 * client_id email name), exp ten years ahead.
 *
 * For each algorithm and method, RUNS (5) runs of N verifications of the same token, N chosen so
 * that one run takes about MS (300) ms of CPU; the time is CLOCK_PROCESS_CPUTIME_ID, the figure the
 * median of the runs. Methods:
 *   libjwt      jwt_decode(&jwt, token, pem, pem_len) + jwt_get_alg() == the expected alg + the exp
 *               claim read and compared (libjwt 1.10 checks no claim), jwt_free
 *   pem-parse   PEM_read_bio_PUBKEY of the same PEM text + EVP_PKEY_free: the key parsing alone,
 *               the part libjwt repeats per token
 *   ours        pgw_jwt_verify with the provider's keys (parsed once) and rules (exp, nbf, iss, aud)
 *   provider    pgw_jwt_provider_verify, cache off: ours + the provider's call
 *   cache-hit   pgw_jwt_provider_verify, cache on, the token already verified: SHA-256 of the
 *               token + a lookup + the exp/nbf check
 * Every call's result is checked (a method that refuses the token aborts the program).
 */
#include "../gateway/config.h"
#include "../gateway/genfiles.h"
#include "../gateway/jwt.h"
#include "../gateway/jwt_provider.h"

#include <jwt.h> /* libjwt (/usr/include/jwt.h; ours is ../gateway/jwt.h) */

#include <errno.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/opensslv.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_RUNS 21
#define ISSUER "https://idp.example.com/"
#define AUDIENCE "orders-api"

static void die(const char *what)
{
    fprintf(stderr, "jwt-verify: %s", what);
    unsigned long e;
    while ((e = ERR_get_error()) != 0)
        fprintf(stderr, ": %s", ERR_reason_error_string(e));
    fputc('\n', stderr);
    exit(1);
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- Tokens ---- */

static size_t b64url(char *out, const unsigned char *in, size_t n)
{
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = A[v >> 18];
        out[o++] = A[(v >> 12) & 63];
        out[o++] = A[(v >> 6) & 63];
        out[o++] = A[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = A[v >> 18];
        out[o++] = A[(v >> 12) & 63];
    } else if (n - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = A[v >> 18];
        out[o++] = A[(v >> 12) & 63];
        out[o++] = A[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

/* Signs <data> with <k> (or HMACs it with <secret>) the JWS way: raw r || s for ECDSA. */
static size_t sign(const char *alg, EVP_PKEY *k, const unsigned char *secret, size_t secret_len,
                   const char *data, size_t len, unsigned char *sig)
{
    if (strcmp(alg, "HS256") == 0) {
        unsigned n = 0;
        if (HMAC(EVP_sha256(), secret, (int)secret_len, (const unsigned char *)data, len, sig, &n) ==
            NULL)
            die("HMAC");
        return n;
    }
    int ed = strcmp(alg, "EdDSA") == 0, es = alg[0] == 'E' && !ed, ps = alg[0] == 'P';
    unsigned char der[512];
    size_t n = sizeof(der);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    if (md == NULL || EVP_DigestSignInit(md, &pctx, ed ? NULL : EVP_sha256(), NULL, k) != 1)
        die("EVP_DigestSignInit");
    if (ps && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
               EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1))
        die("PSS");
    if (EVP_DigestSign(md, es ? der : sig, &n, (const unsigned char *)data, len) != 1)
        die("EVP_DigestSign");
    EVP_MD_CTX_free(md);
    if (!es)
        return n;
    const unsigned char *p = der;
    ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &p, (long)n);
    if (s == NULL || BN_bn2binpad(ECDSA_SIG_get0_r(s), sig, 32) != 32 ||
        BN_bn2binpad(ECDSA_SIG_get0_s(s), sig + 32, 32) != 32)
        die("ECDSA signature");
    ECDSA_SIG_free(s);
    return 64;
}

static char *make_token(const char *alg, EVP_PKEY *k, const unsigned char *secret,
                        size_t secret_len, time_t now)
{
    char header[128], payload[1024];
    snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s-2026\"}", alg,
             alg);
    snprintf(payload, sizeof(payload),
             "{\"iss\":\"" ISSUER "\",\"sub\":\"user-0042\",\"aud\":\"" AUDIENCE "\","
             "\"exp\":%lld,\"nbf\":%lld,\"iat\":%lld,"
             "\"jti\":\"5f0c8a0e-6c1f-4b7e-9a55-3f1d2b9c7e41\","
             "\"scope\":\"orders:read orders:write profile email\","
             "\"client_id\":\"mobile-app-ios\",\"email\":\"jane.doe@example.com\","
             "\"name\":\"Jane Doe\"}",
             (long long)now + 10LL * 365 * 86400, (long long)now - 60, (long long)now - 60);
    char *t = malloc(4096);
    size_t n = b64url(t, (const unsigned char *)header, strlen(header));
    t[n++] = '.';
    n += b64url(t + n, (const unsigned char *)payload, strlen(payload));
    unsigned char sig[512];
    size_t sl = sign(alg, k, secret, secret_len, t, n, sig);
    t[n++] = '.';
    b64url(t + n, sig, sl);
    return t;
}

/* ---- Keys and providers ---- */

static char *pem_of(EVP_PKEY *k)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL || PEM_write_bio_PUBKEY(b, k) != 1)
        die("PEM_write_bio_PUBKEY");
    char *p;
    long n = BIO_get_mem_data(b, &p);
    char *s = malloc((size_t)n + 1);
    memcpy(s, p, (size_t)n);
    s[n] = '\0';
    BIO_free(b);
    return s;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "w");
    if (f == NULL || fwrite(data, 1, len, f) != len || fclose(f) != 0)
        die(path);
}

struct alg_case {
    const char *alg;
    int libjwt_alg; /* jwt_alg_t, or -1: not in libjwt 1.10 */
    EVP_PKEY *key;
    char *pem;      /* the public key's PEM text (for HS256: the secret, libjwt takes it as is) */
    size_t pem_len;
    char *token;
    struct pgw_jwt_provider *p, *p_nocache;
    double us[5];   /* per method, median; < 0: not measured */
    long iters[5];
};

enum { M_LIBJWT, M_PEM, M_OURS, M_PROVIDER, M_CACHE, M_END };
static const char *const METHOD[M_END] = {"libjwt", "pem-parse", "ours", "provider", "cache-hit"};

static struct alg_case *g_case; /* the case being measured */
static double g_now;
static volatile size_t g_sink;

static void run_libjwt(void)
{
    jwt_t *j = NULL;
    if (jwt_decode(&j, g_case->token, (const unsigned char *)g_case->pem, (int)g_case->pem_len) != 0)
        die("libjwt: jwt_decode refused the token");
    if ((int)jwt_get_alg(j) != g_case->libjwt_alg)
        die("libjwt: wrong alg");
    errno = 0;
    long exp = jwt_get_grant_int(j, "exp");
    if (errno != 0 || (double)exp <= g_now)
        die("libjwt: exp");
    g_sink += (size_t)exp;
    jwt_free(j);
}

static void run_pem(void)
{
    BIO *b = BIO_new_mem_buf(g_case->pem, (int)g_case->pem_len);
    EVP_PKEY *k = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
    if (k == NULL)
        die("PEM_read_bio_PUBKEY");
    g_sink += (size_t)EVP_PKEY_get_bits(k) * 0 + 1;
    EVP_PKEY_free(k);
    BIO_free(b);
}

static void run_ours(void)
{
    static unsigned char buf[8192];
    struct pgw_jwt_result res;
    const char *why = NULL;
    struct pgw_jwt_keyset *sets[1] = {g_case->p->keys};
    if (pgw_jwt_verify(&g_case->p->rules, sets, 1, g_case->token, strlen(g_case->token), g_now, buf,
                       sizeof(buf), &res, &why) != PGW_OK) {
        fprintf(stderr, "ours: %s\n", why);
        die("ours refused the token");
    }
    g_sink += res.payload_len;
}

static void run_provider_with(struct pgw_jwt_provider *p)
{
    const char *payload, *why = NULL;
    size_t plen;
    int code;
    if (pgw_jwt_provider_verify(p, g_case->token, strlen(g_case->token), g_now, &payload, &plen,
                                &code, &why) != PGW_OK) {
        fprintf(stderr, "provider: %s\n", why);
        die("the provider refused the token");
    }
    g_sink += plen;
}
static void run_provider(void) { run_provider_with(g_case->p_nocache); }
static void run_cache(void) { run_provider_with(g_case->p); }

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median µs per call of <fn> over <runs> runs, N calibrated to about <ms> ms per run. */
static double measure(void (*fn)(void), int runs, double ms, long *iters, double *lo, double *hi)
{
    long n = 1;
    double t;
    for (;;) { /* calibration, also the warm-up */
        double t0 = cpu_now();
        for (long i = 0; i < n; i++)
            fn();
        t = cpu_now() - t0;
        if (t >= 0.02)
            break;
        n *= 4;
    }
    n = (long)((double)n * (ms / 1000.0) / t) + 1;
    double v[MAX_RUNS];
    for (int r = 0; r < runs; r++) {
        double t0 = cpu_now();
        for (long i = 0; i < n; i++)
            fn();
        v[r] = (cpu_now() - t0) * 1e6 / (double)n;
    }
    qsort(v, (size_t)runs, sizeof(v[0]), cmp_double);
    *iters = n;
    *lo = v[0];
    *hi = v[runs - 1];
    return runs % 2 ? v[runs / 2] : (v[runs / 2 - 1] + v[runs / 2]) / 2;
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 5;
    double ms = argc > 2 ? atof(argv[2]) : 300;
    if (runs < 1 || runs > MAX_RUNS || ms <= 0) {
        fprintf(stderr, "usage: jwt-verify [RUNS (1..%d) [MS per run]]\n", MAX_RUNS);
        return 2;
    }
    time_t now = time(NULL);
    g_now = (double)now;

    unsigned char secret[32];
    char secret_b64[64];
    if (RAND_bytes(secret, sizeof(secret)) != 1)
        die("RAND_bytes");
    b64url(secret_b64, secret, sizeof(secret)); /* 43 printable bytes: usable as a YAML string */
    EVP_PKEY *rsa = EVP_RSA_gen(2048), *ec = EVP_EC_gen("P-256");
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (rsa == NULL || ec == NULL || ed == NULL)
        die("key generation");

    struct alg_case cases[] = {
        {.alg = "HS256", .libjwt_alg = JWT_ALG_HS256},
        {.alg = "RS256", .libjwt_alg = JWT_ALG_RS256, .key = rsa},
        {.alg = "PS256", .libjwt_alg = -1, .key = rsa},
        {.alg = "ES256", .libjwt_alg = JWT_ALG_ES256, .key = ec},
        {.alg = "EdDSA", .libjwt_alg = -1, .key = ed},
    };
    size_t ncases = sizeof(cases) / sizeof(cases[0]);

    char dir[] = "/tmp/jwt-verify.XXXXXX";
    if (mkdtemp(dir) == NULL)
        die("mkdtemp");
    char yaml[8192], path[256];
    size_t yl = (size_t)snprintf(yaml, sizeof(yaml), "listeners:\n  - { name: l, address: \"127.0.0.1:1\" }\n"
                                             "jwt:\n  providers:\n");
    for (size_t i = 0; i < ncases; i++) {
        struct alg_case *c = &cases[i];
        char key[512];
        if (c->key != NULL) {
            c->pem = pem_of(c->key);
            snprintf(path, sizeof(path), "%s/%s.pub.pem", dir, c->alg);
            write_file(path, c->pem, strlen(c->pem));
            snprintf(key, sizeof(key), "{ kid: %s-2026, alg: %s, file: \"%s\" }", c->alg, c->alg,
                     path);
        } else {
            c->pem = strdup(secret_b64);
            snprintf(key, sizeof(key), "{ kid: %s-2026, alg: %s, secret: \"%s\" }", c->alg, c->alg,
                     secret_b64);
        }
        c->pem_len = strlen(c->pem);
        for (int cache = 1; cache >= 0; cache--)
            yl += (size_t)snprintf(yaml + yl, sizeof(yaml) - yl,
                                   "    p%zu_%d:\n      issuer: \"" ISSUER "\"\n"
                                   "      audiences: [" AUDIENCE "]\n"
                                   "      keys: [ %s ]\n      cache: %d\n",
                                   i, cache, key, cache ? 1000 : 0);
        c->token = make_token(c->alg, c->key, (const unsigned char *)secret_b64,
                              strlen(secret_b64), now);
    }

    char err[4096];
    struct pgw_config *conf = pgw_config_load_string("bench.yaml", yaml, yl, err, sizeof(err));
    if (conf == NULL) {
        fprintf(stderr, "%s", err);
        die("configuration");
    }
    char *blob;
    size_t blen;
    if (pgw_genfiles_prepare(conf, 0, &blob, &blen, err, sizeof(err)) != PGW_OK) {
        fprintf(stderr, "%s", err);
        die("genfiles");
    }
    struct pgw_jwt_gen *gen = pgw_jwt_gen_new(conf, blob, blen, err, sizeof(err));
    if (gen == NULL) {
        fprintf(stderr, "%s", err);
        die("providers");
    }
    for (size_t i = 0; i < ncases; i++) {
        char name[32];
        snprintf(name, sizeof(name), "p%zu_1", i);
        cases[i].p = pgw_jwt_gen_find(gen, name, strlen(name));
        snprintf(name, sizeof(name), "p%zu_0", i);
        cases[i].p_nocache = pgw_jwt_gen_find(gen, name, strlen(name));
        if (cases[i].p == NULL || cases[i].p_nocache == NULL || cases[i].p->cache == NULL ||
            cases[i].p_nocache->cache != NULL)
            die("provider lookup");
    }
    for (size_t i = 0; i < ncases; i++) {
        snprintf(path, sizeof(path), "%s/%s.pub.pem", dir, cases[i].alg);
        unlink(path);
    }
    rmdir(dir);

    printf("# jwt-verify: %s; libjwt 1.10 (Debian %s); %d runs per figure, ~%.0f ms CPU each; "
           "median µs of CPU per verification (CLOCK_PROCESS_CPUTIME_ID)\n",
           OpenSSL_version(OPENSSL_VERSION), "libjwt-dev", runs, ms);
    printf("# tokens: header {alg,typ,kid}, 11 claims (iss sub aud exp nbf iat jti scope client_id "
           "email name); checked by ours: signature, exp, nbf, iss, aud\n\n");

    void (*const fns[M_END])(void) = {run_libjwt, run_pem, run_ours, run_provider, run_cache};
    double lo[8][M_END], hi[8][M_END];
    for (size_t i = 0; i < ncases; i++) {
        g_case = &cases[i];
        for (int m = 0; m < M_END; m++) {
            g_case->us[m] = -1;
            if ((m == M_LIBJWT && g_case->libjwt_alg < 0) || (m == M_PEM && g_case->key == NULL))
                continue;
            g_case->us[m] = measure(fns[m], runs, ms, &g_case->iters[m], &lo[i][m], &hi[i][m]);
            fprintf(stderr, "  %-6s %-10s %10.3f µs  (N=%ld, min %.3f, max %.3f)\n", g_case->alg,
                    METHOD[m], g_case->us[m], g_case->iters[m], lo[i][m], hi[i][m]);
        }
    }

    printf("| alg | token bytes | libjwt 1.10 (PEM per call) | PEM parse alone | ours (keys parsed once) "
           "| provider, cache off | provider, cache hit |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < ncases; i++) {
        struct alg_case *c = &cases[i];
        printf("| %s | %zu |", c->alg, strlen(c->token));
        for (int m = 0; m < M_END; m++) {
            if (c->us[m] < 0)
                printf(" – |");
            else
                printf(" %.2f (%.2f–%.2f) |", c->us[m], lo[i][m], hi[i][m]);
        }
        printf("\n");
    }
    printf("\nFigures: median µs (min–max of the runs).\n\n");
    printf("| alg | ours / libjwt | libjwt − ours (µs) | PEM parse / libjwt | cache hit / ours | "
           "cache hit saves (µs) |\n");
    printf("|---|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < ncases; i++) {
        struct alg_case *c = &cases[i];
        double *u = c->us;
        printf("| %s |", c->alg);
        if (u[M_LIBJWT] > 0)
            printf(" %.3f | %.2f |", u[M_OURS] / u[M_LIBJWT], u[M_LIBJWT] - u[M_OURS]);
        else
            printf(" – | – |");
        if (u[M_LIBJWT] > 0 && u[M_PEM] > 0)
            printf(" %.2f |", u[M_PEM] / u[M_LIBJWT]);
        else
            printf(" – |");
        printf(" %.4f | %.2f |\n", u[M_CACHE] / u[M_OURS], u[M_PROVIDER] - u[M_CACHE]);
    }
    fprintf(stderr, "(sink %zu)\n", (size_t)g_sink);

    pgw_jwt_gen_free(gen);
    free(blob);
    pgw_config_unref(conf);
    for (size_t i = 0; i < ncases; i++) {
        free(cases[i].pem);
        free(cases[i].token);
    }
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec);
    EVP_PKEY_free(ed);
    return 0;
}
