/* keys.c: API keys and consumers (see keys.h). Records are small binary layouts:
 *   key:      version(1) status(1) expires(8) created(8) id(12) consumer_len(1) consumer
 *   consumer: version(1) created(8) plan_len(1) plan groups_len(2) groups
 */
#include "keys.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <stdio.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_REC_MIN (1 + 1 + 8 + 8 + PGW_KEYS_ID_LEN + 1)
#define REC_MAX 1024

int pgw_keys_secret(const char *dir, int create, unsigned char secret[PGW_KEYS_SECRET_LEN],
                    char *err, size_t errlen)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/secret", dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && create) {
        unsigned char fresh[PGW_KEYS_SECRET_LEN];
        if (getrandom(fresh, sizeof(fresh), 0) != (ssize_t)sizeof(fresh)) {
            snprintf(err, errlen, "%s: getrandom: %s", path, strerror(errno));
            return PGW_ERR;
        }
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        int ok = fd >= 0 && write(fd, fresh, sizeof(fresh)) == (ssize_t)sizeof(fresh) &&
                 fsync(fd) == 0;
        if (fd >= 0)
            close(fd);
        if (!ok) {
            snprintf(err, errlen, "%s: cannot create the server secret: %s", path,
                     strerror(errno));
            return PGW_ERR;
        }
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot read the server secret: %s", path, strerror(errno));
        return PGW_ERR;
    }
    ssize_t n = read(fd, secret, PGW_KEYS_SECRET_LEN);
    close(fd);
    if (n != PGW_KEYS_SECRET_LEN) {
        snprintf(err, errlen, "%s: the server secret must be %d bytes", path, PGW_KEYS_SECRET_LEN);
        return PGW_ERR;
    }
    return PGW_OK;
}

/* OpenSSL 3's one-shot HMAC() fetches the digest and builds its contexts on every call (about
 * 20,000 instructions); a MAC context kept per secret and re-initialised with a NULL key reuses
 * the prepared inner and outer states (a few thousand). One per process: workers are single-
 * threaded and use one secret. */
static EVP_MAC_CTX *mac_ctx;
static unsigned char mac_secret[PGW_KEYS_SECRET_LEN];

static EVP_MAC_CTX *mac_for(const unsigned char *secret)
{
    if (mac_ctx != NULL && memcmp(mac_secret, secret, PGW_KEYS_SECRET_LEN) == 0)
        return mac_ctx;
    EVP_MAC_CTX_free(mac_ctx);
    mac_ctx = NULL;
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    EVP_MAC_free(mac);
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
                           OSSL_PARAM_construct_end()};
    if (ctx == NULL || !EVP_MAC_init(ctx, secret, PGW_KEYS_SECRET_LEN, params)) {
        EVP_MAC_CTX_free(ctx);
        return NULL;
    }
    memcpy(mac_secret, secret, PGW_KEYS_SECRET_LEN);
    return mac_ctx = ctx;
}

void pgw_keys_mac(const unsigned char *secret, const char *key, size_t len, unsigned char mac[32])
{
    EVP_MAC_CTX *ctx = mac_for(secret);
    size_t n = 0;
    if (ctx != NULL && EVP_MAC_init(ctx, NULL, 0, NULL) &&
        EVP_MAC_update(ctx, (const unsigned char *)key, len) && EVP_MAC_final(ctx, mac, &n, 32) &&
        n == 32)
        return;
    unsigned int m = 32; /* the slow path, should the cached context fail */
    HMAC(EVP_sha256(), secret, PGW_KEYS_SECRET_LEN, (const unsigned char *)key, len, mac, &m);
}

void pgw_keys_generate(char out[40])
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char r[24];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
        pgw_assert(!"getrandom failed");
    memcpy(out, "pgw_", 4);
    char *p = out + 4;
    for (size_t i = 0; i < sizeof(r); i += 3) {
        uint32_t v = (uint32_t)r[i] << 16 | (uint32_t)r[i + 1] << 8 | r[i + 2];
        for (int j = 3; j >= 0; j--)
            *p++ = b64[(v >> (6 * j)) & 63];
    }
    *p = '\0';
}

const char *pgw_keys_status_name(enum pgw_key_status st)
{
    return st == PGW_KEY_ACTIVE ? "active" : st == PGW_KEY_SUSPENDED ? "suspended" : "revoked";
}

int pgw_keys_valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > PGW_KEYS_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '@' || c == '-'))
            return 0;
    }
    return 1;
}

/* ---- Keys ---- */

static size_t key_encode(const struct pgw_key_info *k, unsigned char *out)
{
    size_t cl = strlen(k->consumer), n = 0;
    out[n++] = 1;
    out[n++] = (unsigned char)k->status;
    memcpy(out + n, &k->expires_ms, 8);
    n += 8;
    memcpy(out + n, &k->created_ms, 8);
    n += 8;
    memcpy(out + n, k->id, PGW_KEYS_ID_LEN);
    n += PGW_KEYS_ID_LEN;
    out[n++] = (unsigned char)cl;
    memcpy(out + n, k->consumer, cl);
    return n + cl;
}

static int key_decode(const unsigned char *p, size_t len, struct pgw_key_info *k)
{
    if (len < KEY_REC_MIN || p[0] != 1 || p[1] > PGW_KEY_REVOKED)
        return PGW_ERR;
    k->status = (enum pgw_key_status)p[1];
    memcpy(&k->expires_ms, p + 2, 8);
    memcpy(&k->created_ms, p + 10, 8);
    memcpy(k->id, p + 18, PGW_KEYS_ID_LEN);
    k->id[PGW_KEYS_ID_LEN] = '\0';
    size_t cl = p[18 + PGW_KEYS_ID_LEN];
    if (KEY_REC_MIN + cl != len || cl > PGW_KEYS_NAME_MAX)
        return PGW_ERR;
    memcpy(k->consumer, p + KEY_REC_MIN, cl);
    k->consumer[cl] = '\0';
    return PGW_OK;
}

static void mac_id(const unsigned char mac[32], char id[PGW_KEYS_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < PGW_KEYS_ID_LEN / 2; i++) {
        id[2 * i] = hex[mac[i] >> 4];
        id[2 * i + 1] = hex[mac[i] & 15];
    }
    id[PGW_KEYS_ID_LEN] = '\0';
}

int pgw_keys_add(struct pgw_store *s, const unsigned char *secret, const char *key, size_t len,
                 const char *consumer, uint64_t expires_ms, uint64_t now_ms,
                 struct pgw_key_info *out, char *err, size_t errlen)
{
    struct pgw_consumer_info c;
    int r = pgw_consumers_get(s, consumer, &c);
    if (r != PGW_OK) {
        snprintf(err, errlen, "%s", r == PGW_DECLINED ? "no such consumer" : pgw_store_error(s));
        return PGW_ERR;
    }
    unsigned char mac[32], rec[REC_MAX];
    pgw_keys_mac(secret, key, len, mac);
    memset(out, 0, sizeof(*out));
    mac_id(mac, out->id);
    snprintf(out->consumer, sizeof(out->consumer), "%s", consumer);
    out->status = PGW_KEY_ACTIVE;
    out->expires_ms = expires_ms;
    out->created_ms = now_ms;
    r = pgw_store_rec_put(s, PGW_STORE_KEYS, mac, 32, rec, key_encode(out, rec), 1);
    if (r == PGW_ERR)
        snprintf(err, errlen, "%s", pgw_store_error(s));
    return r;
}

int pgw_keys_lookup(struct pgw_store *s, const unsigned char mac[32], struct pgw_key_info *out)
{
    unsigned char rec[REC_MAX];
    size_t len = 0;
    int r = pgw_store_rec_get(s, PGW_STORE_KEYS, mac, 32, rec, sizeof(rec), &len);
    if (r != PGW_OK)
        return r == PGW_AGAIN ? PGW_ERR : r;
    return key_decode(rec, len, out);
}

struct find {
    const char *id;
    unsigned char *mac;
    struct pgw_key_info *out;
    int found;
};

static int find_cb(const void *key, size_t klen, const void *val, size_t vlen, void *arg)
{
    struct find *f = arg;
    struct pgw_key_info k;
    if (klen != 32 || key_decode(val, vlen, &k) != PGW_OK || strcmp(k.id, f->id) != 0)
        return 0;
    memcpy(f->mac, key, 32);
    *f->out = k;
    f->found = 1;
    return 1;
}

int pgw_keys_find(struct pgw_store *s, const char *id, unsigned char mac[32],
                  struct pgw_key_info *out)
{
    struct find f = {id, mac, out, 0};
    if (pgw_store_rec_scan(s, PGW_STORE_KEYS, find_cb, &f) != PGW_OK)
        return PGW_ERR;
    return f.found ? PGW_OK : PGW_DECLINED;
}

int pgw_keys_set_status(struct pgw_store *s, const char *id, enum pgw_key_status st)
{
    unsigned char mac[32], rec[REC_MAX];
    struct pgw_key_info k;
    int r = pgw_keys_find(s, id, mac, &k);
    if (r != PGW_OK)
        return r;
    k.status = st;
    return pgw_store_rec_put(s, PGW_STORE_KEYS, mac, 32, rec, key_encode(&k, rec), 0);
}

int pgw_keys_delete(struct pgw_store *s, const char *id)
{
    unsigned char mac[32];
    struct pgw_key_info k;
    int r = pgw_keys_find(s, id, mac, &k);
    if (r != PGW_OK)
        return r;
    return pgw_store_rec_put(s, PGW_STORE_KEYS, mac, 32, NULL, 0, 0);
}

struct list_keys {
    int (*fn)(const struct pgw_key_info *k, void *arg);
    void *arg;
};

static int list_keys_cb(const void *key, size_t klen, const void *val, size_t vlen, void *arg)
{
    PGW_UNUSED(key);
    struct list_keys *l = arg;
    struct pgw_key_info k;
    if (klen != 32 || key_decode(val, vlen, &k) != PGW_OK)
        return 0;
    return l->fn(&k, l->arg);
}

int pgw_keys_list(struct pgw_store *s, int (*fn)(const struct pgw_key_info *k, void *arg),
                  void *arg)
{
    struct list_keys l = {fn, arg};
    return pgw_store_rec_scan(s, PGW_STORE_KEYS, list_keys_cb, &l);
}

/* ---- Consumers ---- */

static size_t consumer_encode(const struct pgw_consumer_info *c, unsigned char *out)
{
    size_t pl = strlen(c->plan), gl = strlen(c->groups), n = 0;
    out[n++] = 1;
    memcpy(out + n, &c->created_ms, 8);
    n += 8;
    out[n++] = (unsigned char)pl;
    memcpy(out + n, c->plan, pl);
    n += pl;
    out[n++] = (unsigned char)(gl >> 8);
    out[n++] = (unsigned char)gl;
    memcpy(out + n, c->groups, gl);
    return n + gl;
}

static int consumer_decode(const unsigned char *p, size_t len, struct pgw_consumer_info *c)
{
    if (len < 12 || p[0] != 1)
        return PGW_ERR;
    memcpy(&c->created_ms, p + 1, 8);
    size_t pl = p[9];
    if (pl > PGW_KEYS_NAME_MAX || 10 + pl + 2 > len)
        return PGW_ERR;
    memcpy(c->plan, p + 10, pl);
    c->plan[pl] = '\0';
    size_t gl = (size_t)p[10 + pl] << 8 | p[11 + pl];
    if (gl > PGW_KEYS_GROUPS_MAX || 12 + pl + gl != len)
        return PGW_ERR;
    memcpy(c->groups, p + 12 + pl, gl);
    c->groups[gl] = '\0';
    return PGW_OK;
}

int pgw_consumers_put(struct pgw_store *s, const struct pgw_consumer_info *c, int only_new)
{
    unsigned char rec[REC_MAX];
    return pgw_store_rec_put(s, PGW_STORE_CONSUMERS, c->name, strlen(c->name), rec,
                             consumer_encode(c, rec), only_new);
}

int pgw_consumers_get(struct pgw_store *s, const char *name, struct pgw_consumer_info *out)
{
    unsigned char rec[REC_MAX];
    size_t len = 0;
    int r = pgw_store_rec_get(s, PGW_STORE_CONSUMERS, name, strlen(name), rec, sizeof(rec), &len);
    if (r != PGW_OK)
        return r == PGW_AGAIN ? PGW_ERR : r;
    snprintf(out->name, sizeof(out->name), "%s", name);
    return consumer_decode(rec, len, out);
}

int pgw_consumers_delete(struct pgw_store *s, const char *name)
{
    return pgw_store_rec_put(s, PGW_STORE_CONSUMERS, name, strlen(name), NULL, 0, 0);
}

struct list_consumers {
    int (*fn)(const struct pgw_consumer_info *c, void *arg);
    void *arg;
};

static int list_consumers_cb(const void *key, size_t klen, const void *val, size_t vlen, void *arg)
{
    struct list_consumers *l = arg;
    struct pgw_consumer_info c;
    if (klen == 0 || klen > PGW_KEYS_NAME_MAX || consumer_decode(val, vlen, &c) != PGW_OK)
        return 0;
    memcpy(c.name, key, klen);
    c.name[klen] = '\0';
    return l->fn(&c, l->arg);
}

int pgw_consumers_list(struct pgw_store *s,
                       int (*fn)(const struct pgw_consumer_info *c, void *arg), void *arg)
{
    struct list_consumers l = {fn, arg};
    return pgw_store_rec_scan(s, PGW_STORE_CONSUMERS, list_consumers_cb, &l);
}
