/* keys_test.c: API keys and consumers on the durable store: the server secret, HMAC lookup
 * (the clear key is never stored), ids, statuses, consumers and their plans. */
#include "../../gateway/keys.c"
#include "../support/test.h"

#include <sys/mman.h>

#define MB (1024u * 1024)

static char dir[256];
static unsigned char secret[PGW_KEYS_SECRET_LEN];

static struct pgw_store *open_fresh(void)
{
    char cmd[300], err[512];
    snprintf(dir, sizeof(dir), "/tmp/pgw-keys-test.%d", (int)getpid());
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    CHECK_INT(pgw_store_prepare(dir, 1 * MB, 1 * MB, 1, err, sizeof(err)), PGW_OK);
    CHECK_INT(pgw_keys_secret(dir, 1, secret, err, sizeof(err)), PGW_OK);
    struct pgw_store *s = pgw_store_open(dir, 1 * MB, 1 * MB, err, sizeof(err));
    CHECK(s != NULL);
    return s;
}

static void add_consumer(struct pgw_store *s, const char *name, const char *plan)
{
    struct pgw_consumer_info c;
    memset(&c, 0, sizeof(c));
    snprintf(c.name, sizeof(c.name), "%s", name);
    snprintf(c.plan, sizeof(c.plan), "%s", plan);
    snprintf(c.groups, sizeof(c.groups), "admins,ops");
    c.created_ms = 1;
    CHECK_INT(pgw_consumers_put(s, &c, 1), PGW_OK);
}

static void test_secret(void)
{
    struct pgw_store *s = open_fresh();
    unsigned char again[PGW_KEYS_SECRET_LEN];
    char err[512];
    CHECK_INT(pgw_keys_secret(dir, 0, again, err, sizeof(err)), PGW_OK);
    CHECK(memcmp(secret, again, sizeof(again)) == 0); /* created once, then read */
    char path[300];
    snprintf(path, sizeof(path), "%s/secret", dir);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    CHECK_INT(pgw_keys_secret("/nonexistent-dir", 0, again, err, sizeof(err)), PGW_ERR);
    CHECK(strstr(err, "/nonexistent-dir/secret") != NULL);
    pgw_store_close(s);
}

static void test_add_lookup(void)
{
    struct pgw_store *s = open_fresh();
    add_consumer(s, "alice", "gold");
    char key[40], err[256];
    pgw_keys_generate(key);
    CHECK(strncmp(key, "pgw_", 4) == 0 && strlen(key) == 36);
    struct pgw_key_info k, got;
    CHECK_INT(pgw_keys_add(s, secret, key, strlen(key), "alice", 0, 1000, &k, err, sizeof(err)),
              PGW_OK);
    CHECK_INT(strlen(k.id), PGW_KEYS_ID_LEN);
    CHECK_INT(pgw_keys_add(s, secret, key, strlen(key), "alice", 0, 1000, &k, err, sizeof(err)),
              PGW_DECLINED);
    CHECK_INT(pgw_keys_add(s, secret, "another-key-1234", 16, "nobody", 0, 0, &k, err,
                           sizeof(err)), PGW_ERR);
    CHECK(strstr(err, "no such consumer") != NULL);
    unsigned char mac[32];
    pgw_keys_mac(secret, key, strlen(key), mac);
    CHECK_INT(pgw_keys_lookup(s, mac, &got), PGW_OK);
    CHECK(strcmp(got.consumer, "alice") == 0 && got.status == PGW_KEY_ACTIVE);
    pgw_keys_mac(secret, "wrong", 5, mac);
    CHECK_INT(pgw_keys_lookup(s, mac, &got), PGW_DECLINED);
    /* another secret gives another HMAC: the same key is unknown */
    unsigned char other[PGW_KEYS_SECRET_LEN];
    memset(other, 7, sizeof(other));
    pgw_keys_mac(other, key, strlen(key), mac);
    CHECK_INT(pgw_keys_lookup(s, mac, &got), PGW_DECLINED);
    pgw_store_close(s);
    /* the clear key is nowhere in the durable file */
    char path[300];
    snprintf(path, sizeof(path), "%s/durable.mdb", dir);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    CHECK(memmem(buf, n, key, strlen(key)) == NULL);
}

static void test_status_and_list(void)
{
    struct pgw_store *s = open_fresh();
    add_consumer(s, "bob", "");
    char err[256];
    struct pgw_key_info k, got;
    CHECK_INT(pgw_keys_add(s, secret, "bob-key-0000000001", 18, "bob", 5000, 1000, &k, err,
                           sizeof(err)), PGW_OK);
    CHECK_INT(pgw_keys_set_status(s, k.id, PGW_KEY_SUSPENDED), PGW_OK);
    CHECK_INT(pgw_keys_set_status(s, "000000000000", PGW_KEY_REVOKED), PGW_DECLINED);
    unsigned char mac[32];
    CHECK_INT(pgw_keys_find(s, k.id, mac, &got), PGW_OK);
    CHECK(got.status == PGW_KEY_SUSPENDED);
    CHECK_INT(got.expires_ms, 5000);
    CHECK_INT(got.created_ms, 1000);
    CHECK_INT(pgw_keys_delete(s, k.id), PGW_OK);
    CHECK_INT(pgw_keys_find(s, k.id, mac, &got), PGW_DECLINED);
    CHECK_INT(pgw_keys_lookup(s, mac, &got), PGW_DECLINED);
    CHECK_INT(pgw_keys_delete(s, k.id), PGW_DECLINED);
    pgw_store_close(s);
}

static int count_cb(const struct pgw_consumer_info *c, void *arg)
{
    (*(int *)arg)++;
    CHECK(strcmp(c->groups, "admins,ops") == 0);
    return 0;
}

static void test_consumers(void)
{
    struct pgw_store *s = open_fresh();
    add_consumer(s, "carol", "silver");
    struct pgw_consumer_info c;
    memset(&c, 0, sizeof(c));
    snprintf(c.name, sizeof(c.name), "carol");
    CHECK_INT(pgw_consumers_put(s, &c, 1), PGW_DECLINED); /* exists */
    CHECK_INT(pgw_consumers_get(s, "carol", &c), PGW_OK);
    CHECK(strcmp(c.plan, "silver") == 0);
    snprintf(c.plan, sizeof(c.plan), "gold");
    CHECK_INT(pgw_consumers_put(s, &c, 0), PGW_OK); /* a plan change */
    CHECK_INT(pgw_consumers_get(s, "carol", &c), PGW_OK);
    CHECK(strcmp(c.plan, "gold") == 0);
    add_consumer(s, "dave", "");
    int n = 0;
    CHECK_INT(pgw_consumers_list(s, count_cb, &n), PGW_OK);
    CHECK_INT(n, 2);
    CHECK_INT(pgw_consumers_delete(s, "dave"), PGW_OK);
    CHECK_INT(pgw_consumers_delete(s, "dave"), PGW_DECLINED);
    CHECK_INT(pgw_consumers_get(s, "dave", &c), PGW_DECLINED);
    CHECK(pgw_keys_valid_name("a.b@c-d_e"));
    CHECK(!pgw_keys_valid_name("a b"));
    CHECK(!pgw_keys_valid_name(""));
    pgw_store_close(s);
}

int main(void)
{
    RUN(test_secret);
    RUN(test_add_lookup);
    RUN(test_status_and_list);
    RUN(test_consumers);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        return 1;
    return TEST_REPORT("keys");
}
