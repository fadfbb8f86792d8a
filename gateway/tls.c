/* tls.c: see tls.h. */
#include "tls.h"
#include "genfiles.h"
#include "log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TLS_RECORD_MAX 16384 /* plaintext bytes per record written */
#define DEFAULT_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"
/* removed from any configured TLS 1.2 list */
#define WEAK_CIPHERS ":!aNULL:!eNULL:!EXPORT:!RC4:!3DES:!MD5:!DES:!PSK:!SRP:!DSS"

/* ---- Errors ---- */

static char last_err[512];

const char *pgw_tls_error(void) { return last_err; }

/* Drains OpenSSL's error queue into last_err, prefixed with <what>: one line, nothing left for the
 * next connection. */
static void drain_errors(const char *what)
{
    size_t used = (size_t)snprintf(last_err, sizeof(last_err), "%s", what);
    unsigned long e;
    const char *data;
    int flags;
    int first = 1;
    while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
        if (used >= sizeof(last_err) - 1)
            continue; /* keep draining */
        const char *reason = ERR_reason_error_string(e);
        used += (size_t)snprintf(last_err + used, sizeof(last_err) - used, "%s%s%s%s",
                                 first ? (*what ? ": " : "") : "; ",
                                 reason ? reason : "unknown error",
                                 (flags & ERR_TXT_STRING) && data && *data ? ": " : "",
                                 (flags & ERR_TXT_STRING) && data ? data : "");
        first = 0;
    }
    if (used >= sizeof(last_err))
        used = sizeof(last_err) - 1;
    last_err[used] = '\0';
}

/* ---- Reading PEM from memory ---- */

struct build {
    const char *blob;
    size_t blob_len;
    char *err; /* "where: reason\n" lines */
    size_t errlen, used;
    int warn;
    unsigned quiet_failures; /* failures whose error was reported elsewhere */
};

static void PGW_PRINTF(3, 4) build_err(struct build *b, const char *where, const char *fmt, ...)
{
    if (b->used + 1 >= b->errlen)
        return;
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    int n = snprintf(b->err + b->used, b->errlen - b->used, "%s: %s\n", where, msg);
    if (n > 0)
        b->used = PGW_MIN(b->used + (size_t)n, b->errlen - 1);
    ERR_clear_error();
}

static int no_password(char *buf, int size, int rwflag, void *u)
{
    PGW_UNUSED(buf);
    PGW_UNUSED(size);
    PGW_UNUSED(rwflag);
    PGW_UNUSED(u);
    return -1; /* an encrypted key is refused, never prompted for */
}

static BIO *file_bio(struct build *b, const char *where, const char *path)
{
    const char *data;
    size_t len;
    int r = pgw_genfiles_find(b->blob, b->blob_len, path, &data, &len);
    if (r != PGW_OK) {
        if (r == PGW_ERR)
            build_err(b, where, "%s was not read", path);
        else
            b->quiet_failures++; /* unreadable: reported by genfiles.c */
        return NULL;
    }
    BIO *bio = BIO_new_mem_buf(data, (int)len);
    pgw_assert(bio != NULL);
    return bio;
}

/* The certificates of a PEM file, in order (a new stack, or NULL with an error). */
static STACK_OF(X509) *read_certs(struct build *b, const char *where, const char *path)
{
    BIO *bio = file_bio(b, where, path);
    if (bio == NULL)
        return NULL;
    STACK_OF(X509) *certs = sk_X509_new_null();
    X509 *x;
    while ((x = PEM_read_bio_X509(bio, NULL, no_password, NULL)) != NULL)
        sk_X509_push(certs, x);
    unsigned long e = ERR_peek_last_error();
    BIO_free(bio);
    if (sk_X509_num(certs) == 0 ||
        (e != 0 && ERR_GET_REASON(e) != PEM_R_NO_START_LINE)) {
        drain_errors("");
        build_err(b, where, "%s: no valid PEM certificate%s%s", path, *last_err ? ": " : "",
                  last_err);
        sk_X509_pop_free(certs, X509_free);
        return NULL;
    }
    ERR_clear_error();
    return certs;
}

static EVP_PKEY *read_key(struct build *b, const char *where, const char *path)
{
    BIO *bio = file_bio(b, where, path);
    if (bio == NULL)
        return NULL;
    EVP_PKEY *k = PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL);
    BIO_free(bio);
    if (k == NULL) {
        drain_errors("");
        build_err(b, where, "%s: no valid unencrypted PEM private key: %s", path, last_err);
    }
    return k;
}

/* Adds the CAs of <path> to <ctx>'s store (and, for a server, to the names it asks clients
 * for). */
static int load_ca(struct build *b, SSL_CTX *ctx, const char *where, const char *path,
                   int is_server)
{
    STACK_OF(X509) *cas = read_certs(b, where, path);
    if (cas == NULL)
        return PGW_ERR;
    X509_STORE *st = SSL_CTX_get_cert_store(ctx);
    STACK_OF(X509_NAME) *names = is_server ? sk_X509_NAME_new_null() : NULL;
    for (int i = 0; i < sk_X509_num(cas); i++) {
        X509 *x = sk_X509_value(cas, i);
        X509_STORE_add_cert(st, x);
        if (names != NULL)
            sk_X509_NAME_push(names, X509_NAME_dup(X509_get_subject_name(x)));
    }
    if (names != NULL)
        SSL_CTX_set_client_CA_list(ctx, names); /* takes the stack */
    sk_X509_pop_free(cas, X509_free);
    ERR_clear_error();
    return PGW_OK;
}

/* Loads a certificate chain and its key into <ctx> (one slot per key type). */
static int load_cert_key(struct build *b, SSL_CTX *ctx, const char *where, const char *cert,
                         const char *key, STACK_OF(X509) **leaf_chain)
{
    STACK_OF(X509) *certs = read_certs(b, where, cert);
    if (certs == NULL)
        return PGW_ERR;
    EVP_PKEY *k = read_key(b, where, key);
    if (k == NULL) {
        sk_X509_pop_free(certs, X509_free);
        return PGW_ERR;
    }
    X509 *leaf = sk_X509_shift(certs);
    int ok = SSL_CTX_use_certificate(ctx, leaf) == 1;
    if (!ok) {
        drain_errors("");
        build_err(b, where, "%s: certificate refused: %s", cert, last_err);
    } else if (SSL_CTX_set1_chain(ctx, certs) != 1 || SSL_CTX_use_PrivateKey(ctx, k) != 1 ||
               SSL_CTX_check_private_key(ctx) != 1) {
        drain_errors("");
        build_err(b, where, "key does not match the certificate (%s)", last_err);
        ok = 0;
    }
    EVP_PKEY_free(k);
    sk_X509_unshift(certs, leaf); /* back in front: the caller may read the leaf */
    if (ok && leaf_chain != NULL)
        *leaf_chain = certs;
    else
        sk_X509_pop_free(certs, X509_free);
    return ok ? PGW_OK : PGW_ERR;
}

/* ---- Session tickets ---- */

struct ticket_key {
    unsigned char name[16], hmac[32], aes[32];
};

static struct ticket_key ticket_keys[PGW_TLS_TICKET_KEYS_MAX];
static size_t num_ticket_keys;
static EVP_CIPHER *ticket_cipher;

void pgw_tls_set_ticket_keys(const unsigned char *keys, size_t n)
{
    n = PGW_MIN(n, (size_t)PGW_TLS_TICKET_KEYS_MAX);
    for (size_t i = 0; i < n; i++) {
        const unsigned char *k = keys + i * PGW_TLS_TICKET_KEY_LEN;
        memcpy(ticket_keys[i].name, k, 16);
        memcpy(ticket_keys[i].hmac, k + 16, 32);
        memcpy(ticket_keys[i].aes, k + 48, 32);
    }
    OPENSSL_cleanse(ticket_keys + n, sizeof(ticket_keys[0]) * (PGW_TLS_TICKET_KEYS_MAX - n));
    num_ticket_keys = n;
}

void pgw_tls_cleanse(void *p, size_t len) { OPENSSL_cleanse(p, len); }

void pgw_tls_new_ticket_key(unsigned char key[PGW_TLS_TICKET_KEY_LEN])
{
    pgw_assert(RAND_bytes(key, PGW_TLS_TICKET_KEY_LEN) == 1);
}

static int ticket_mac_init(EVP_MAC_CTX *hctx, const struct ticket_key *k)
{
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, sizeof(k->hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    return EVP_MAC_CTX_set_params(hctx, params);
}

/* OpenSSL's ticket callback: encrypt with the current key; decrypt with any key still held
 * (2: renew the ticket); 0: unknown key, full handshake. TLS 1.3 tickets are always renewed: a
 * resumed TLS 1.3 handshake gets no new ticket otherwise, and clients that use a ticket once (RFC
 * 8446 C.4; wrk through SSL_clear) fell back to a full handshake every other connection. A TLS 1.2
 * ticket under the current key stays as it is. */
static int on_ticket_key(SSL *s, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *cctx,
                         EVP_MAC_CTX *hctx, int enc)
{
    if (ticket_cipher == NULL)
        ticket_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    if (ticket_cipher == NULL)
        return -1;
    if (enc) {
        if (num_ticket_keys == 0)
            return 0; /* no key from the master yet: no ticket */
        const struct ticket_key *k = &ticket_keys[0];
        if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(ticket_cipher)) != 1)
            return -1;
        memcpy(name, k->name, 16);
        if (EVP_EncryptInit_ex(cctx, ticket_cipher, NULL, k->aes, iv) != 1 ||
            ticket_mac_init(hctx, k) != 1)
            return -1;
        return 1;
    }
    for (size_t i = 0; i < num_ticket_keys; i++) {
        const struct ticket_key *k = &ticket_keys[i];
        if (CRYPTO_memcmp(name, k->name, 16) != 0)
            continue;
        if (ticket_mac_init(hctx, k) != 1 ||
            EVP_DecryptInit_ex(cctx, ticket_cipher, NULL, k->aes, iv) != 1)
            return -1;
        int tls13 = s != NULL && SSL_version(s) >= TLS1_3_VERSION;
        return i == 0 && !tls13 ? 1 : 2;
    }
    return 0;
}

/* ---- Server contexts ---- */

/* A name served by a listener: "host" or "*.domain", lower case, and the context serving it. */
struct sni_name {
    char *name;
    size_t ctx;
};

struct listener_tls {
    SSL_CTX **ctxs; /* [0]: the default (first certificate's) */
    size_t nctx;
    struct sni_name *names;
    size_t nnames;
    int reject_unknown;
};

struct pgw_tls_gen {
    struct listener_tls *ls; /* one per config listener; nctx 0 for plain ones */
    size_t nls;
    SSL_CTX **ups; /* one per upstream group; NULL for plain ones */
    size_t nups;
    SSL_CTX *http;
};

static int name_eq(const char *a, const char *b, size_t blen)
{
    return strlen(a) == blen && strncasecmp(a, b, blen) == 0;
}

/* The context for server name <sn>: exact names first, then "*.rest" for one label. -1: none. */
static long find_ctx(const struct listener_tls *lt, const char *sn)
{
    size_t len = strlen(sn);
    for (size_t i = 0; i < lt->nnames; i++)
        if (lt->names[i].name[0] != '*' && name_eq(lt->names[i].name, sn, len))
            return (long)lt->names[i].ctx;
    const char *dot = memchr(sn, '.', len);
    if (dot == NULL || dot == sn)
        return -1;
    for (size_t i = 0; i < lt->nnames; i++) {
        const char *n = lt->names[i].name;
        if (n[0] == '*' && n[1] == '.' && name_eq(n + 1, dot, len - (size_t)(dot - sn)))
            return (long)lt->names[i].ctx;
    }
    return -1;
}

static int on_servername(SSL *ssl, int *alert, void *arg)
{
    const struct listener_tls *lt = arg;
    const char *sn = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    long i = sn != NULL ? find_ctx(lt, sn) : -1;
    if (i < 0) {
        if (!lt->reject_unknown)
            return SSL_TLSEXT_ERR_OK; /* the default certificate */
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    if (i > 0)
        SSL_set_SSL_CTX(ssl, lt->ctxs[i]);
    return SSL_TLSEXT_ERR_OK;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char ours[] = "\x08http/1.1";
    PGW_UNUSED(ssl);
    PGW_UNUSED(arg);
    if (SSL_select_next_proto((unsigned char **)out, outlen, ours, sizeof(ours) - 1, in, inlen) ==
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_OK;
    return SSL_TLSEXT_ERR_ALERT_FATAL; /* no_application_protocol: we speak HTTP/1.1 only */
}

static int verify_accept_all(int ok, X509_STORE_CTX *st)
{
    PGW_UNUSED(ok);
    PGW_UNUSED(st);
    return 1; /* optional: the result stays in SSL_get_verify_result(), checked per request */
}

static int set_protocols(SSL_CTX *ctx, unsigned protocols)
{
    int min = (protocols & PGW_TLS_V12) ? TLS1_2_VERSION : TLS1_3_VERSION;
    int max = (protocols & PGW_TLS_V13) ? TLS1_3_VERSION : TLS1_2_VERSION;
    return SSL_CTX_set_min_proto_version(ctx, min) == 1 &&
           SSL_CTX_set_max_proto_version(ctx, max) == 1;
}

static SSL_CTX *server_ctx_new(struct build *b, const struct pgw_config *c,
                               const struct pgw_config_listener *l, struct listener_tls *lt,
                               const char *where)
{
    const struct pgw_config_listener_tls *t = l->tls;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    pgw_assert(ctx != NULL);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION |
                                 (t->session_tickets ? 0 : SSL_OP_NO_TICKET));
    /* NO_AUTO_CHAIN: the chain is the file's, never rebuilt (and re-verified) per handshake */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS | SSL_MODE_NO_AUTO_CHAIN);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)l->name,
                                   (unsigned)PGW_MIN(strlen(l->name), 32));
    SSL_CTX_set_timeout(ctx, (long)(2 * c->tls_ticket_rotation / 1000));
    SSL_CTX_set_num_tickets(ctx, t->session_tickets ? 1 : 0);
    if (t->session_tickets)
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket_key);
    if (!set_protocols(ctx, t->protocols))
        build_err(b, where, "protocols refused by OpenSSL");
    char ciphers[1024];
    snprintf(ciphers, sizeof(ciphers), "%s%s", t->ciphers ? t->ciphers : DEFAULT_CIPHERS,
             WEAK_CIPHERS);
    if (SSL_CTX_set_cipher_list(ctx, ciphers) != 1)
        build_err(b, where, "ciphers: no usable suite in \"%s\"", t->ciphers ? t->ciphers : "");
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_tlsext_servername_arg(ctx, lt);
    if (t->verify_client != PGW_TLS_VERIFY_OFF && t->client_ca != NULL) {
        char w[192];
        snprintf(w, sizeof(w), "%s.client_ca", where);
        load_ca(b, ctx, w, t->client_ca, 1);
        if (t->verify_client == PGW_TLS_VERIFY_REQUIRED)
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        else
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, verify_accept_all);
        SSL_CTX_set_verify_depth(ctx, (int)t->verify_depth);
    }
    return ctx;
}

/* The DNS names of <x> (subjectAltName, else the CN), lower case, into <names> (malloc'd). */
static size_t cert_names(X509 *x, char ***names)
{
    size_t n = 0;
    *names = NULL;
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type != GEN_DNS)
            continue;
        const char *s = (const char *)ASN1_STRING_get0_data(g->d.dNSName);
        int len = ASN1_STRING_length(g->d.dNSName);
        if (len <= 0 || len > 253 || memchr(s, '\0', (size_t)len) != NULL)
            continue;
        *names = pgw_realloc(*names, (n + 1) * sizeof(char *));
        (*names)[n] = pgw_strndup(s, (size_t)len);
        for (char *p = (*names)[n]; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        n++;
    }
    GENERAL_NAMES_free(gens);
    if (n == 0) {
        char cn[256];
        if (X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn,
                                      sizeof(cn)) > 0) {
            *names = pgw_malloc(sizeof(char *));
            (*names)[0] = pgw_strndup(cn, strlen(cn));
            for (char *p = (*names)[0]; *p; p++)
                *p = (char)tolower((unsigned char)*p);
            n = 1;
        }
    }
    ERR_clear_error();
    return n;
}

static int same_names(char **a, size_t na, char **b, size_t nb)
{
    if (na != nb)
        return 0;
    for (size_t i = 0; i < na; i++) {
        int found = 0;
        for (size_t j = 0; j < nb && !found; j++)
            found = strcmp(a[i], b[j]) == 0;
        if (!found)
            return 0;
    }
    return 1;
}

static void check_validity(struct build *b, const char *where, X509 *leaf)
{
    if (!b->warn)
        return;
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0)
        pgw_log_warn("%s: the certificate has expired: clients will refuse it", where);
    else if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0)
        pgw_log_warn("%s: the certificate is not valid yet: clients will refuse it", where);
}

/* Builds the contexts of one TLS listener: certificates serving the same names share one context
 * (an RSA and an ECDSA one: OpenSSL picks by what the client supports). */
static void listener_build(struct build *b, const struct pgw_config *c, size_t li,
                           struct listener_tls *lt)
{
    const struct pgw_config_listener *l = &c->listeners[li];
    const struct pgw_config_listener_tls *t = l->tls;
    char where[160];
    char ***sets = pgw_calloc(t->num_certs, sizeof(char **));
    size_t *nsets = pgw_calloc(t->num_certs, sizeof(size_t));
    size_t *set_ctx = pgw_calloc(t->num_certs, sizeof(size_t));
    lt->ctxs = pgw_calloc(t->num_certs, sizeof(SSL_CTX *));
    lt->reject_unknown = t->reject_unknown_sni;
    for (size_t i = 0; i < t->num_certs; i++) {
        snprintf(where, sizeof(where), "listeners.%s.tls.certificates[%zu]", l->name, i);
        size_t into = lt->nctx;
        STACK_OF(X509) *chain = NULL;
        /* a context serving the same names takes this certificate as its other key type */
        SSL_CTX *probe = server_ctx_new(b, c, l, lt, where);
        if (load_cert_key(b, probe, where, t->certs[i].cert, t->certs[i].key, &chain) != PGW_OK) {
            SSL_CTX_free(probe);
            continue;
        }
        X509 *leaf = sk_X509_value(chain, 0);
        check_validity(b, where, leaf);
        nsets[i] = cert_names(leaf, &sets[i]);
        for (size_t j = 0; j < i; j++)
            if (sets[j] != NULL && same_names(sets[i], nsets[i], sets[j], nsets[j]))
                into = set_ctx[j];
        if (into < lt->nctx) {
            SSL_CTX_free(probe);
            load_cert_key(b, lt->ctxs[into], where, t->certs[i].cert, t->certs[i].key, NULL);
        } else {
            lt->ctxs[lt->nctx++] = probe;
            for (size_t k = 0; k < nsets[i]; k++) {
                lt->names = pgw_realloc(lt->names, (lt->nnames + 1) * sizeof(*lt->names));
                lt->names[lt->nnames].name = pgw_strndup(sets[i][k], strlen(sets[i][k]));
                lt->names[lt->nnames++].ctx = into;
            }
        }
        set_ctx[i] = into;
        sk_X509_pop_free(chain, X509_free);
    }
    for (size_t i = 0; i < t->num_certs; i++) {
        for (size_t k = 0; k < nsets[i]; k++)
            free(sets[i][k]);
        free(sets[i]);
    }
    free(sets);
    free(nsets);
    free(set_ctx);
}

/* ---- Client contexts ---- */

static SSL_CTX *client_ctx_new(struct build *b, const char *where, int verify, const char *ca,
                               const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    pgw_assert(ctx != NULL);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* NO_AUTO_CHAIN: the chain is the file's, never rebuilt (and re-verified) per handshake */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS | SSL_MODE_NO_AUTO_CHAIN);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x08http/1.1", 9);
    SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    char w[160];
    if (ca != NULL) {
        snprintf(w, sizeof(w), "%s.ca", where);
        load_ca(b, ctx, w, ca, 0);
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        drain_errors("");
        build_err(b, where, "the system CA store cannot be used: %s", last_err);
    }
    if (cert != NULL && key != NULL) {
        snprintf(w, sizeof(w), "%s.cert", where);
        load_cert_key(b, ctx, w, cert, key, NULL);
    }
    return ctx;
}

/* ---- Generations ---- */

static struct pgw_tls_gen *gen_build(const struct pgw_config *c, const char *blob, size_t len,
                                     int warn, char *err, size_t errlen)
{
    struct build b = {.blob = blob, .blob_len = len, .err = err, .errlen = errlen, .warn = warn};
    if (errlen > 0)
        err[0] = '\0';
    struct pgw_tls_gen *tg = pgw_calloc(1, sizeof(*tg));
    tg->nls = c->num_listeners;
    tg->ls = pgw_calloc(tg->nls ? tg->nls : 1, sizeof(*tg->ls));
    for (size_t i = 0; i < c->num_listeners; i++)
        if (c->listeners[i].tls != NULL)
            listener_build(&b, c, i, &tg->ls[i]);
    tg->nups = c->num_upstreams;
    tg->ups = pgw_calloc(tg->nups ? tg->nups : 1, sizeof(*tg->ups));
    for (size_t i = 0; i < c->num_upstreams; i++) {
        const struct pgw_config_upstream_tls *t = c->upstreams[i].tls;
        if (t == NULL)
            continue;
        char where[128];
        snprintf(where, sizeof(where), "upstreams.%s.tls", c->upstreams[i].name);
        tg->ups[i] = client_ctx_new(&b, where, t->verify, t->ca, t->cert, t->key);
        if (!t->verify && warn)
            pgw_log_warn("%s: certificate verification is off (verify: false): the upstream's "
                         "identity is not checked",
                         where);
    }
    tg->http = client_ctx_new(&b, "policies.http_ca", 1, c->http_ca, NULL, NULL);
    if (b.used > 0 || b.quiet_failures > 0) {
        pgw_tls_gen_free(tg);
        return NULL;
    }
    return tg;
}

int pgw_tls_check(const struct pgw_config *c, const char *blob, size_t len, int warn, char *err,
                  size_t errlen)
{
    struct pgw_tls_gen *tg = gen_build(c, blob, len, warn, err, errlen);
    if (tg == NULL)
        return PGW_ERR;
    pgw_tls_gen_free(tg);
    return PGW_OK;
}

struct pgw_tls_gen *pgw_tls_gen_new(const struct pgw_config *c, const char *blob, size_t len,
                                    char *err, size_t errlen)
{
    return gen_build(c, blob, len, 0, err, errlen);
}

void pgw_tls_gen_free(struct pgw_tls_gen *tg)
{
    if (tg == NULL)
        return;
    for (size_t i = 0; i < tg->nls; i++) {
        struct listener_tls *lt = &tg->ls[i];
        for (size_t j = 0; j < lt->nctx; j++)
            SSL_CTX_free(lt->ctxs[j]);
        for (size_t j = 0; j < lt->nnames; j++)
            free(lt->names[j].name);
        free(lt->ctxs);
        free(lt->names);
    }
    for (size_t i = 0; i < tg->nups; i++)
        SSL_CTX_free(tg->ups[i]);
    SSL_CTX_free(tg->http);
    free(tg->ls);
    free(tg->ups);
    free(tg);
}

SSL_CTX *pgw_tls_listener_ctx(const struct pgw_tls_gen *tg, size_t i)
{
    return tg != NULL && i < tg->nls && tg->ls[i].nctx > 0 ? tg->ls[i].ctxs[0] : NULL;
}

SSL_CTX *pgw_tls_upstream_ctx(const struct pgw_tls_gen *tg, size_t i)
{
    return tg != NULL && i < tg->nups ? tg->ups[i] : NULL;
}

SSL_CTX *pgw_tls_http_ctx(struct pgw_tls_gen *tg) { return tg != NULL ? tg->http : NULL; }

/* ---- The transport ---- */

/* A failed SSL_read_ex/SSL_write_ex: what pgw_io expects back. */
enum outcome { OUT_WANT_READ, OUT_WANT_WRITE, OUT_END, OUT_TRUNCATED, OUT_FAILED };

/* What a failed SSL_read_ex/SSL_write_ex/SSL_do_handshake means. A fatal error drains OpenSSL's
 * queue into last_err (with *err_no for the caller) and makes the session quiet: no close_notify
 * after it. An EOF without close_notify is OUT_TRUNCATED, never a clean end. */
static enum outcome classify(SSL *ssl, int r, int *err_no)
{
    switch (SSL_get_error(ssl, r)) {
    case SSL_ERROR_WANT_READ:
        return OUT_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return OUT_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: /* close_notify */
        return OUT_END;
    case SSL_ERROR_SSL:
        if (ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
            ERR_clear_error();
            SSL_set_quiet_shutdown(ssl, 1);
            return OUT_TRUNCATED;
        }
        drain_errors("tls");
        *err_no = EPROTO;
        break;
    default: /* SSL_ERROR_SYSCALL */
        *err_no = errno ? errno : ECONNRESET;
        drain_errors("");
        break;
    }
    SSL_set_quiet_shutdown(ssl, 1);
    return OUT_FAILED;
}

/* A failed SSL_read_ex/SSL_write_ex on a pgw_io: what pgw_io expects back. A read that must
 * write (or the reverse) asks pgw_io for the other event. */
static ssize_t io_failed(struct pgw_io *io, SSL *ssl, int reading)
{
    switch (classify(ssl, 0, &io->err_no)) {
    case OUT_WANT_READ:
        if (!reading) {
            io->tr_wants_read = 1;
            pgw_io_sync_events(io);
        }
        return PGW_AGAIN;
    case OUT_WANT_WRITE:
        if (reading) {
            io->tr_wants_write = 1;
            pgw_io_sync_events(io);
        }
        return PGW_AGAIN;
    case OUT_TRUNCATED:
        io->truncated = 1;
        /* fall through */
    case OUT_END:
        if (reading)
            return 0;
        io->err_no = EPIPE;
        return PGW_ERR;
    case OUT_FAILED:
        break;
    }
    return PGW_ERR;
}

static ssize_t tls_read(struct pgw_io *io, size_t max)
{
    SSL *ssl = io->tls;
    struct evbuffer_iovec v;
    max = PGW_MIN(max, (size_t)TLS_RECORD_MAX);
    if (evbuffer_reserve_space(io->in, (ev_ssize_t)max, &v, 1) != 1)
        return PGW_ERR;
    size_t got = 0;
    ERR_clear_error();
    if (SSL_read_ex(ssl, v.iov_base, PGW_MIN(v.iov_len, max), &got) == 1) {
        v.iov_len = got;
        evbuffer_commit_space(io->in, &v, 1);
        if (io->reading && SSL_has_pending(ssl))
            event_active(io->rev, EV_READ, 0); /* decrypted or read-ahead bytes epoll cannot see */
        return (ssize_t)got;
    }
    evbuffer_commit_space(io->in, &v, 0);
    return io_failed(io, ssl, 1);
}

static ssize_t tls_write(struct pgw_io *io)
{
    SSL *ssl = io->tls;
    size_t n = PGW_MIN(evbuffer_get_length(io->out), (size_t)TLS_RECORD_MAX);
    struct evbuffer_iovec v;
    const void *p;
    /* one record from small buffers coalesced, not one record per buffer */
    if (evbuffer_peek(io->out, (ev_ssize_t)n, NULL, &v, 1) == 1)
        p = v.iov_base;
    else
        p = evbuffer_pullup(io->out, (ev_ssize_t)n);
    size_t w = 0;
    ERR_clear_error();
    if (SSL_write_ex(ssl, p, n, &w) == 1) {
        evbuffer_drain(io->out, w);
        if (io->reading && SSL_has_pending(ssl))
            event_active(io->rev, EV_READ, 0);
        return (ssize_t)w;
    }
    return io_failed(io, ssl, 0);
}

static int tls_has_pending(const struct pgw_io *io) { return SSL_has_pending(io->tls); }

/* close_notify, once, without waiting for the peer's (a session ended by a fatal error is quiet:
 * SSL_shutdown sends nothing then). */
static void send_close(SSL *ssl)
{
    if (SSL_is_init_finished(ssl) && !(SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN)) {
        ERR_clear_error();
        SSL_shutdown(ssl);
    }
    ERR_clear_error();
}

void pgw_tls_send_close(struct pgw_io *io) { send_close(io->tls); }

static void tls_close(struct pgw_io *io)
{
    pgw_tls_free(io->tls); /* close_notify, once, without waiting for the peer's */
    io->tls = NULL;
}

static const struct pgw_transport transport_tls = {"tls", tls_read, tls_write, tls_has_pending,
                                                   tls_close};

static void client_setup(SSL *ssl, const char *name, int verify, void *session);

static SSL *attach(struct pgw_io *io, SSL_CTX *ctx)
{
    SSL *ssl = SSL_new(ctx);
    pgw_assert(ssl != NULL);
    pgw_assert(SSL_set_fd(ssl, io->fd) == 1);
    io->tls = ssl;
    io->tr = &transport_tls;
    return ssl;
}

void pgw_tls_attach_server(struct pgw_io *io, SSL_CTX *ctx)
{
    SSL_set_accept_state(attach(io, ctx));
}

void pgw_tls_attach_client(struct pgw_io *io, SSL_CTX *ctx, const char *name, int verify,
                           void *session)
{
    client_setup(attach(io, ctx), name, verify, session);
}

void *pgw_tls_client_new(SSL_CTX *ctx, int fd, const char *name, int verify)
{
    SSL *ssl = SSL_new(ctx);
    pgw_assert(ssl != NULL);
    pgw_assert(SSL_set_fd(ssl, fd) == 1);
    client_setup(ssl, name, verify, NULL);
    return ssl;
}

void pgw_tls_free(void *ssl)
{
    if (ssl == NULL)
        return;
    send_close(ssl);
    SSL_free(ssl);
}

int pgw_tls_pending(void *ssl) { return SSL_has_pending(ssl); }

SSL_CTX *pgw_tls_ctx_ref(SSL_CTX *ctx)
{
    if (ctx != NULL)
        SSL_CTX_up_ref(ctx);
    return ctx;
}

void pgw_tls_ctx_unref(SSL_CTX *ctx) { SSL_CTX_free(ctx); }

int pgw_tls_step(void *ssl, int *want_write)
{
    ERR_clear_error();
    int r = SSL_do_handshake(ssl);
    *want_write = 0;
    if (r == 1)
        return PGW_OK;
    switch (SSL_get_error(ssl, r)) {
    case SSL_ERROR_WANT_READ:
        return PGW_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        *want_write = 1;
        return PGW_AGAIN;
    case SSL_ERROR_SSL: {
        long vr = SSL_get_verify_result(ssl);
        drain_errors("");
        if (vr != X509_V_OK && !SSL_is_server(ssl)) {
            size_t l = strlen(last_err);
            snprintf(last_err + l, sizeof(last_err) - l, ": %s", X509_verify_cert_error_string(vr));
        }
        break;
    }
    default: {
        int e = errno;
        drain_errors("");
        if (*last_err == '\0')
            snprintf(last_err, sizeof(last_err), "%s",
                     e ? strerror(e) : "the peer closed the connection in the handshake");
    }
    }
    SSL_set_quiet_shutdown(ssl, 1);
    return PGW_ERR;
}

ssize_t pgw_tls_recv(void *ssl, void *buf, size_t n, int *truncated)
{
    size_t got = 0;
    int err_no;
    ERR_clear_error();
    if (SSL_read_ex(ssl, buf, n, &got) == 1)
        return (ssize_t)got;
    switch (classify(ssl, 0, &err_no)) {
    case OUT_WANT_READ:
    case OUT_WANT_WRITE:
        return PGW_AGAIN;
    case OUT_TRUNCATED:
        *truncated = 1;
        return 0;
    case OUT_END:
        return 0;
    case OUT_FAILED:
        break;
    }
    return PGW_ERR;
}

ssize_t pgw_tls_send(void *ssl, const void *buf, size_t n)
{
    size_t w = 0;
    int err_no;
    ERR_clear_error();
    if (SSL_write_ex(ssl, buf, PGW_MIN(n, (size_t)TLS_RECORD_MAX), &w) == 1)
        return (ssize_t)w;
    enum outcome o = classify(ssl, 0, &err_no);
    return o == OUT_WANT_READ || o == OUT_WANT_WRITE ? PGW_AGAIN : PGW_ERR;
}

/* <name> is sent as SNI unless it is an IP address, and checked against the certificate (its IP
 * addresses for an IP) when <verify> is set. */
static void client_setup(SSL *ssl, const char *name, int verify, void *session)
{
    SSL_set_connect_state(ssl);
    unsigned char ip[16];
    int is_ip = inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1;
    if (!is_ip)
        SSL_set_tlsext_host_name(ssl, name);
    if (verify && is_ip) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name);
    } else if (verify) {
        SSL_set1_host(ssl, name);
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    }
    if (session != NULL)
        SSL_set_session(ssl, session);
    ERR_clear_error();
}

int pgw_tls_handshake(struct pgw_io *io)
{
    int want_write;
    int r = pgw_tls_step(io->tls, &want_write);
    if (r == PGW_AGAIN) {
        pgw_io_want_write(io, want_write);
        if (!want_write)
            pgw_io_want_read(io, 1);
    } else if (r == PGW_OK) {
        pgw_io_want_write(io, 0);
    }
    return r;
}

void *pgw_tls_session_get(const struct pgw_io *io)
{
    SSL_SESSION *s = io->tls ? SSL_get1_session(io->tls) : NULL;
    if (s != NULL && !SSL_SESSION_is_resumable(s)) {
        SSL_SESSION_free(s);
        return NULL;
    }
    return s;
}

void pgw_tls_session_free(void *session) { SSL_SESSION_free(session); }

int pgw_tls_idle_check(struct pgw_io *io)
{
    char b;
    size_t got = 0;
    ERR_clear_error();
    if (SSL_read_ex(io->tls, &b, 1, &got) == 1)
        return PGW_ERR; /* stray data on an idle connection */
    int e = SSL_get_error(io->tls, 0);
    if (e == SSL_ERROR_WANT_READ)
        return PGW_OK; /* only post-handshake records (session tickets) */
    ERR_clear_error();
    SSL_set_quiet_shutdown(io->tls, 1);
    return PGW_ERR;
}

/* ---- Facts ---- */

const char *pgw_tls_version(const struct pgw_io *io)
{
    return io->tls ? SSL_get_version(io->tls) : "";
}

const char *pgw_tls_cipher(const struct pgw_io *io)
{
    return io->tls ? SSL_get_cipher_name((SSL *)io->tls) : "";
}

const char *pgw_tls_server_name(const struct pgw_io *io)
{
    return io->tls ? SSL_get_servername(io->tls, TLSEXT_NAMETYPE_host_name) : NULL;
}

int pgw_tls_resumed(const struct pgw_io *io) { return io->tls ? SSL_session_reused(io->tls) : 0; }

enum pgw_tls_peer pgw_tls_peer_status(const struct pgw_io *io)
{
    if (io->tls == NULL || SSL_get0_peer_certificate(io->tls) == NULL)
        return PGW_TLS_PEER_NONE;
    return SSL_get_verify_result(io->tls) == X509_V_OK ? PGW_TLS_PEER_VERIFIED
                                                        : PGW_TLS_PEER_INVALID;
}

const char *pgw_tls_peer_error(const struct pgw_io *io)
{
    return io->tls ? X509_verify_cert_error_string(SSL_get_verify_result(io->tls)) : "";
}

/* Appends <s> (NUL included) to buf; returns where it starts. */
static const char *put(char *buf, size_t len, size_t *used, const char *s, size_t n)
{
    if (*used + n + 1 > len)
        n = *used + 1 >= len ? 0 : len - *used - 1;
    char *p = buf + *used;
    memcpy(p, s, n);
    p[n] = '\0';
    *used += n + 1;
    return p;
}

static const char *put_name(char *buf, size_t len, size_t *used, const X509_NAME *name)
{
    BIO *bio = BIO_new(BIO_s_mem());
    X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253);
    char *data;
    long n = BIO_get_mem_data(bio, &data);
    const char *r = put(buf, len, used, data, n > 0 ? (size_t)n : 0);
    BIO_free(bio);
    return r;
}

static const char *put_time(char *buf, size_t len, size_t *used, const ASN1_TIME *t)
{
    struct tm tm;
    char s[32] = "";
    if (ASN1_TIME_to_tm(t, &tm) == 1)
        strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return put(buf, len, used, s, strlen(s));
}

int pgw_tls_peer_fields(const struct pgw_io *io, char *buf, size_t len, const char *out[7])
{
    X509 *x = io->tls ? SSL_get0_peer_certificate(io->tls) : NULL;
    if (x == NULL)
        return PGW_DECLINED;
    size_t used = 0;
    out[0] = put_name(buf, len, &used, X509_get_subject_name(x));
    out[1] = put_name(buf, len, &used, X509_get_issuer_name(x));
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    out[2] = put(buf, len, &used, hex ? hex : "", hex ? strlen(hex) : 0);
    OPENSSL_free(hex);
    BN_free(bn);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    char fp[2 * EVP_MAX_MD_SIZE + 1];
    X509_digest(x, EVP_sha256(), md, &mdlen);
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(fp + 2 * i, 3, "%02x", md[i]);
    out[3] = put(buf, len, &used, fp, 2 * mdlen);
    out[4] = put_time(buf, len, &used, X509_get0_notBefore(x));
    out[5] = put_time(buf, len, &used, X509_get0_notAfter(x));
    long vr = SSL_get_verify_result(io->tls);
    const char *ve = vr == X509_V_OK ? "" : X509_verify_cert_error_string(vr);
    out[6] = put(buf, len, &used, ve, strlen(ve));
    ERR_clear_error();
    return PGW_OK;
}
