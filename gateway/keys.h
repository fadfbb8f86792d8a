/* keys.h: API keys and consumers, kept in the store's durable environment (store.h).
 *
 * A key is never stored in clear: its record is found under HMAC-SHA-256(server secret, key), so
 * a lookup is one B-tree search whatever the number of keys, and a copy of the store does not
 * reveal a key. The server secret is <store dir>/secret (32 random bytes, mode 0600), created by
 * the master on first start; losing it invalidates every key. A key's record holds its id (the
 * first 12 hex digits of the HMAC: what `passerelle keys` shows and takes), its consumer, its
 * status and its expiry. A consumer's record holds its plan and groups; a key names its consumer,
 * so changing a consumer's plan applies to all its keys at once, without restart.
 *
 * Pure code over store.h and OpenSSL: no libevent, no Lua.
 */
#ifndef PGW_KEYS_H
#define PGW_KEYS_H

#include "store.h"

#define PGW_KEYS_SECRET_LEN 32
#define PGW_KEYS_ID_LEN 12
#define PGW_KEYS_NAME_MAX 64    /* consumer and plan names */
#define PGW_KEYS_GROUPS_MAX 512 /* groups, comma-separated */
#define PGW_KEYS_KEY_MAX 256    /* a clear key */

enum pgw_key_status { PGW_KEY_ACTIVE = 0, PGW_KEY_SUSPENDED = 1, PGW_KEY_REVOKED = 2 };

struct pgw_key_info {
    char id[PGW_KEYS_ID_LEN + 1];
    char consumer[PGW_KEYS_NAME_MAX + 1];
    enum pgw_key_status status;
    uint64_t expires_ms; /* 0: never */
    uint64_t created_ms;
};

struct pgw_consumer_info {
    char name[PGW_KEYS_NAME_MAX + 1];
    char plan[PGW_KEYS_NAME_MAX + 1]; /* "" when none */
    char groups[PGW_KEYS_GROUPS_MAX + 1];
    uint64_t created_ms;
};

/* Reads <dir>/secret; with <create>, makes it (32 bytes from getrandom, 0600) when absent.
 * PGW_ERR with the reason in <err>. */
int pgw_keys_secret(const char *dir, int create, unsigned char secret[PGW_KEYS_SECRET_LEN],
                    char *err, size_t errlen);
/* HMAC-SHA-256 of <key> under <secret>. */
void pgw_keys_mac(const unsigned char *secret, const char *key, size_t len, unsigned char mac[32]);
/* A new random key, "pgw_" and 32 URL-safe base64 characters (24 random bytes), NUL-terminated. */
void pgw_keys_generate(char out[40]);

const char *pgw_keys_status_name(enum pgw_key_status st);
/* Names: 1..64 bytes of [A-Za-z0-9._@-]. */
int pgw_keys_valid_name(const char *s);

/* Stores a new key for <consumer> (which must exist). PGW_OK with *out filled, PGW_DECLINED when
 * that key exists already, PGW_ERR (store error, or unknown consumer: message in <err>). */
int pgw_keys_add(struct pgw_store *s, const unsigned char *secret, const char *key, size_t len,
                 const char *consumer, uint64_t expires_ms, uint64_t now_ms,
                 struct pgw_key_info *out, char *err, size_t errlen);
/* Finds the key whose HMAC is <mac>: PGW_OK, PGW_DECLINED (unknown), PGW_ERR. */
int pgw_keys_lookup(struct pgw_store *s, const unsigned char mac[32], struct pgw_key_info *out);
/* Finds a key by its id (a scan: CLI only). PGW_OK with <mac>, PGW_DECLINED, PGW_ERR. */
int pgw_keys_find(struct pgw_store *s, const char *id, unsigned char mac[32],
                  struct pgw_key_info *out);
/* Changes the status of the key with id <id>. PGW_OK, PGW_DECLINED (no such id), PGW_ERR. */
int pgw_keys_set_status(struct pgw_store *s, const char *id, enum pgw_key_status st);
/* Removes the key with id <id>: PGW_OK, PGW_DECLINED (no such id), PGW_ERR. */
int pgw_keys_delete(struct pgw_store *s, const char *id);
/* Calls <fn> for every key. */
int pgw_keys_list(struct pgw_store *s, int (*fn)(const struct pgw_key_info *k, void *arg),
                  void *arg);

/* Consumers: put (create or replace; with <only_new>, PGW_DECLINED if it exists), get, delete,
 * list. */
int pgw_consumers_put(struct pgw_store *s, const struct pgw_consumer_info *c, int only_new);
int pgw_consumers_get(struct pgw_store *s, const char *name, struct pgw_consumer_info *out);
int pgw_consumers_delete(struct pgw_store *s, const char *name);
int pgw_consumers_list(struct pgw_store *s,
                       int (*fn)(const struct pgw_consumer_info *c, void *arg), void *arg);

#endif
