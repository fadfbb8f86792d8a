/* tls_test.c: tls.c without the network: certificates made here with OpenSSL, contexts built
 * from a configuration, SNI name matching, the ticket-key callback across rotations, and the
 * transport of pgw_io over a socketpair (records coalesced, bytes buffered inside OpenSSL
 * delivered, truncation told from a clean end).
 */
#include "../../gateway/tls.c"
#include "../../gateway/genfiles.h"
#include "../support/test.h"

#include <event2/event.h>
#include <openssl/ec.h>
#include <sys/socket.h>
#include <unistd.h>

static char dir[] = "/tmp/pgw-tls-test-XXXXXX";

/* ---- Certificates ---- */

static EVP_PKEY *new_key(int rsa)
{
    EVP_PKEY *k = rsa ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
    pgw_assert(k != NULL);
    return k;
}

/* A self-signed certificate for <cn> with DNS names <sans> ("a,b"; NULL: none), valid from
 * <from_days> to <to_days> relative to now. */
static X509 *new_cert(EVP_PKEY *k, const char *cn, const char *sans, long from_days,
                      long to_days)
{
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 42);
    X509_gmtime_adj(X509_getm_notBefore(x), from_days * 86400);
    X509_gmtime_adj(X509_getm_notAfter(x), to_days * 86400);
    X509_set_pubkey(x, k);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, n);
    if (sans != NULL) {
        char v[512] = "";
        for (const char *p = sans; *p;) {
            const char *c = strchr(p, ',');
            size_t l = c ? (size_t)(c - p) : strlen(p);
            snprintf(v + strlen(v), sizeof(v) - strlen(v), "%sDNS:%.*s", *v ? "," : "", (int)l, p);
            p += l + (c != NULL);
        }
        X509V3_CTX ctx;
        X509V3_set_ctx_nodb(&ctx);
        X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
        X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name, v);
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    X509_sign(x, k, EVP_sha256());
    return x;
}

static void write_pem(const char *name, X509 *x, EVP_PKEY *k, const char *pass)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    pgw_assert(f != NULL);
    if (x != NULL)
        PEM_write_X509(f, x);
    if (k != NULL)
        PEM_write_PrivateKey(f, k, pass ? EVP_aes_128_cbc() : NULL, (unsigned char *)pass,
                             pass ? (int)strlen(pass) : 0, NULL, NULL);
    fclose(f);
}

/* Writes <name>.pem and <name>.key. */
static void make_pair(const char *name, int rsa, const char *cn, const char *sans)
{
    char n[64];
    EVP_PKEY *k = new_key(rsa);
    X509 *x = new_cert(k, cn, sans, -1, 30);
    snprintf(n, sizeof(n), "%s.pem", name);
    write_pem(n, x, NULL, NULL);
    snprintf(n, sizeof(n), "%s.key", name);
    write_pem(n, NULL, k, NULL);
    X509_free(x);
    EVP_PKEY_free(k);
}

/* ---- Building from a configuration ---- */

static struct pgw_config *load(const char *listener_tls)
{
    char yaml[2048], err[2048];
    snprintf(yaml, sizeof(yaml),
             "listeners:\n  - name: tls\n    address: \"127.0.0.1:1\"\n    tls: %s\n",
             listener_tls);
    struct pgw_config *c = pgw_config_load_string("t.yaml", yaml, strlen(yaml), err, sizeof(err));
    if (c == NULL)
        fprintf(stderr, "config: %s\n", err);
    return c;
}

/* Prepares <listener_tls> as the master does. Returns PGW_OK/PGW_ERR, the error in <err>. */
static int prepare(const char *listener_tls, char *err, size_t errlen, struct pgw_tls_gen **out)
{
    struct pgw_config *c = load(listener_tls);
    if (c == NULL)
        return PGW_DECLINED;
    char *blob;
    size_t len;
    int r = pgw_genfiles_prepare(c, 0, &blob, &len, err, errlen);
    if (r == PGW_OK && out != NULL)
        *out = pgw_tls_gen_new(c, blob, len, err, errlen);
    free(blob);
    pgw_config_unref(c);
    return r;
}

static char *tls_conf(char *buf, size_t len, const char *certs)
{
    snprintf(buf, len, "{ certificates: [%s] }", certs);
    return buf;
}

#define PAIR(n) "{ cert: \"%s/" n ".pem\", key: \"%s/" n ".key\" }"

static void test_build_errors(void)
{
    char conf[1024], certs[512], err[2048];
    /* build errors: missing file, mismatched key, garbage, encrypted key */
    snprintf(certs, sizeof(certs), "{ cert: \"%s/nope.pem\", key: \"%s/a.key\" }", dir, dir);
    CHECK_INT(prepare(tls_conf(conf, sizeof(conf), certs), err, sizeof(err), NULL), PGW_ERR);
    CHECK(strstr(err, "nope.pem: cannot read") != NULL);

    snprintf(certs, sizeof(certs), "{ cert: \"%s/a.pem\", key: \"%s/b.key\" }", dir, dir);
    CHECK_INT(prepare(tls_conf(conf, sizeof(conf), certs), err, sizeof(err), NULL), PGW_ERR);
    CHECK(strstr(err, "listeners.tls.tls.certificates[0]: key does not match") != NULL);

    snprintf(certs, sizeof(certs), "{ cert: \"%s/garbage.pem\", key: \"%s/a.key\" }", dir, dir);
    CHECK_INT(prepare(tls_conf(conf, sizeof(conf), certs), err, sizeof(err), NULL), PGW_ERR);
    CHECK(strstr(err, "no valid PEM certificate") != NULL);

    snprintf(certs, sizeof(certs), "{ cert: \"%s/a.pem\", key: \"%s/enc.key\" }", dir, dir);
    CHECK_INT(prepare(tls_conf(conf, sizeof(conf), certs), err, sizeof(err), NULL), PGW_ERR);
    CHECK(strstr(err, "unencrypted PEM private key") != NULL);
    CHECK_INT(ERR_peek_error(), 0); /* nothing left for the next connection */
}

static void test_sni_grouping(void)
{
    char conf[1024], certs[512], err[2048];
    struct pgw_tls_gen *tg = NULL;
    /* certificates: same names share a context, SNI exact and one-label wildcard */
    snprintf(certs, sizeof(certs), PAIR("a") ", " PAIR("a_rsa") ", " PAIR("w"), dir, dir, dir,
             dir, dir, dir);
    CHECK_INT(prepare(tls_conf(conf, sizeof(conf), certs), err, sizeof(err), &tg), PGW_OK);
    CHECK(tg != NULL);
    if (tg == NULL) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    const struct listener_tls *lt = &tg->ls[0];
    CHECK_INT(lt->nctx, 2); /* a.pem and a_rsa.pem serve the same names */
    CHECK_INT(find_ctx(lt, "a.example"), 0);
    CHECK_INT(find_ctx(lt, "API.A.EXAMPLE"), 0);
    CHECK_INT(find_ctx(lt, "x.w.example"), 1);
    CHECK_INT(find_ctx(lt, "exact.w.example"), 0); /* the exact name wins over the wildcard */
    CHECK_INT(find_ctx(lt, "x.y.w.example"), -1);  /* one label only */
    CHECK_INT(find_ctx(lt, "w.example"), -1);
    CHECK_INT(find_ctx(lt, ".w.example"), -1);
    CHECK_INT(find_ctx(lt, "other.example"), -1);
    CHECK(pgw_tls_listener_ctx(tg, 0) == lt->ctxs[0]);
    pgw_tls_gen_free(tg);
}

/* ---- Session tickets ---- */

static int ticket_round(unsigned char name[16], int enc)
{
    unsigned char iv[EVP_MAX_IV_LENGTH] = {0};
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *h = EVP_MAC_CTX_new(mac);
    int r = on_ticket_key(NULL, name, iv, c, h, enc);
    EVP_MAC_CTX_free(h);
    EVP_MAC_free(mac);
    EVP_CIPHER_CTX_free(c);
    return r;
}

static void test_tickets(void)
{
    unsigned char keys[3 * PGW_TLS_TICKET_KEY_LEN], name[16], name2[16];
    /* ticket keys: current encrypts, older ones decrypt (renewed), unknown refused */
    pgw_tls_set_ticket_keys(keys, 0);
    CHECK_INT(ticket_round(name, 1), 0); /* no key yet: no ticket */
    pgw_tls_new_ticket_key(keys);
    pgw_tls_set_ticket_keys(keys, 1);
    CHECK_INT(ticket_round(name, 1), 1);
    CHECK_INT(ticket_round(name, 0), 1);
    memmove(keys + PGW_TLS_TICKET_KEY_LEN, keys, PGW_TLS_TICKET_KEY_LEN); /* a rotation */
    pgw_tls_new_ticket_key(keys);
    pgw_tls_set_ticket_keys(keys, 2);
    CHECK_INT(ticket_round(name, 0), 2); /* still valid, to be renewed */
    CHECK_INT(ticket_round(name2, 1), 1);
    CHECK(memcmp(name, name2, 16) != 0);
    memset(name, 0xAB, sizeof(name));
    CHECK_INT(ticket_round(name, 0), 0);
}

/* ---- The transport over a socketpair ---- */

static int reads;
static void on_r(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    reads++;
}
static void on_nothing(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
}

struct pair {
    struct event_base *base;
    struct pgw_io io; /* the server side, through pgw_io */
    SSL *client;      /* the client side, plain OpenSSL */
    SSL_CTX *cctx;
    int cfd;
};

static int pair_open(struct pair *p, struct pgw_tls_gen *tg)
{
    int sv[2];
    pgw_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    p->base = event_base_new();
    pgw_io_init(&p->io, p->base, sv[0], on_r, on_nothing, on_nothing, NULL);
    pgw_tls_attach_server(&p->io, pgw_tls_listener_ctx(tg, 0));
    p->cctx = SSL_CTX_new(TLS_client_method());
    p->client = SSL_new(p->cctx);
    p->cfd = sv[1];
    SSL_set_fd(p->client, sv[1]);
    SSL_set_tlsext_host_name(p->client, "a.example");
    SSL_set_connect_state(p->client);
    for (int i = 0; i < 100; i++) {
        int c = SSL_do_handshake(p->client);
        int s = pgw_tls_handshake(&p->io);
        if (c == 1 && s == PGW_OK)
            return PGW_OK;
        if (s == PGW_ERR)
            return PGW_ERR;
    }
    return PGW_ERR;
}

static void pair_close(struct pair *p)
{
    pgw_io_clear(&p->io);
    SSL_free(p->client);
    SSL_CTX_free(p->cctx);
    close(p->cfd);
    event_base_free(p->base);
}

static void test_transport(void)
{
    char conf[1024], certs[512], err[2048], buf[40000];
    struct pgw_tls_gen *tg = NULL;
    struct pair p;
    /* transport: small buffers in one record, buffered bytes delivered, truncation */
    snprintf(certs, sizeof(certs), PAIR("a"), dir, dir);
    CHECK_INT(prepare(tls_conf(conf, sizeof(conf), certs), err, sizeof(err), &tg), PGW_OK);
    if (tg == NULL || pair_open(&p, tg) != PGW_OK) {
        CHECK(0);
        return;
    }
    CHECK(strcmp(pgw_tls_version(&p.io), "TLSv1.3") == 0);
    for (int i = 0; i < 100; i++) /* 100 small buffers: one 10,000-byte record */
        evbuffer_add(p.io.out, buf, 100);
    CHECK_INT(pgw_io_flush(&p.io, 1000), PGW_OK);
    size_t got = 0;
    CHECK_INT(SSL_read_ex(p.client, buf, sizeof(buf), &got), 1);
    CHECK_INT(got, 10000); /* SSL_read returns one record at most */

    memset(buf, 'x', 10000); /* one record, read 100 bytes: the rest waits inside OpenSSL */
    CHECK_INT(SSL_write(p.client, buf, 10000), 10000);
    pgw_io_want_read(&p.io, 1);
    CHECK_INT(pgw_io_read(&p.io, 100), 100);
    CHECK_INT(recv(p.io.fd, buf, 1, MSG_PEEK), -1); /* nothing left on the socket... */
    reads = 0;
    event_base_loop(p.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    CHECK_INT(reads, 1); /* ...yet the read callback runs */
    size_t total = 100;
    ssize_t n;
    while ((n = pgw_io_read(&p.io, 5000)) > 0)
        total += (size_t)n;
    CHECK_INT(total, 10000);
    CHECK_INT(n, PGW_AGAIN);

    SSL_shutdown(p.client); /* close_notify: a clean end */
    CHECK_INT(pgw_io_read(&p.io, 100), 0);
    CHECK_INT(p.io.truncated, 0);
    pair_close(&p);

    CHECK_INT(pair_open(&p, tg), PGW_OK);
    shutdown(p.cfd, SHUT_WR); /* no close_notify: truncated */
    CHECK_INT(pgw_io_read(&p.io, 100), 0);
    CHECK_INT(p.io.truncated, 1);
    CHECK_INT(ERR_peek_error(), 0);
    pair_close(&p);
    pgw_tls_gen_free(tg);
}

int main(void)
{
    pgw_assert(mkdtemp(dir) != NULL);
    make_pair("a", 0, "a.example", "a.example,api.a.example,exact.w.example");
    make_pair("a_rsa", 1, "a.example", "api.a.example,a.example,exact.w.example");
    make_pair("b", 0, "b.example", "b.example");
    make_pair("w", 0, "w", "*.w.example");
    char path[128];
    snprintf(path, sizeof(path), "%s/garbage.pem", dir);
    FILE *f = fopen(path, "w");
    fputs("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n", f);
    fclose(f);
    EVP_PKEY *k = new_key(0);
    write_pem("enc.key", NULL, k, "secret");
    EVP_PKEY_free(k);

    RUN(test_build_errors);
    RUN(test_sni_grouping);
    RUN(test_tickets);
    RUN(test_transport);

    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return TEST_REPORT("tls");
}
