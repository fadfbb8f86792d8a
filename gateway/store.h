/* store.h: the gateway's store, two LMDB environments in one directory (docs/store.md):
 *
 *   <dir>/durable.mdb  keys and consumers: written by the CLI and admin paths, synced on every
 *                      commit. A damaged file refuses to open, and its name is in the message.
 *   <dir>/fast.mdb     counters and TTL entries (pgw.store, rate limits): MDB_WRITEMAP |
 *                      MDB_MAPASYNC | MDB_NOSYNC, synced by pgw_store_sync() from a timer. A machine
 *                      crash can leave it damaged: pgw_store_prepare() recreates it empty (logged).
 *
 * Every operation is one short transaction that ends before the function returns: nothing is
 * held across a yield or an event-loop turn, and values are copied out before the transaction
 * ends. Pure code: no libevent, no Lua.
 *
 * Processes: an environment must not cross fork(). The master calls pgw_store_prepare() before it
 * forks (creates the directory, checks both files, recreates a damaged fast one, clears stale
 * reader slots) and opens nothing afterwards; each worker opens its own handles after fork.
 *
 * Fast entries are: an 8-byte expiry (ms since the epoch, 0 = never), a 1-byte kind, the value.
 */
#ifndef PGW_STORE_H
#define PGW_STORE_H

#include "pgw.h"

#include <stdint.h>

struct pgw_store;

enum pgw_store_kind { PGW_STORE_BYTES = 0, PGW_STORE_INT = 1, PGW_STORE_NUMBER = 2 };

/* Values handed in and out. <bytes> points into the caller's buffer on output. */
struct pgw_store_value {
    enum pgw_store_kind kind;
    int64_t i;
    double n;
    const char *bytes;
    size_t len;
};

#define PGW_STORE_KEY_MAX 480 /* LMDB's default key limit is 511 bytes */
#define PGW_STORE_VALUE_MAX (64u * 1024)

/* Checks the store directory: creates <dir>, opens both environments once, clears reader slots
 * left by dead processes, closes. With <repair> (the master at start, before any worker runs), a
 * fast file that fails to open is recreated empty (logged); otherwise (reloads, the CLI, while
 * workers may have the file open) that is an error. PGW_ERR with the reason (naming the file) in
 * <err>. */
int pgw_store_prepare(const char *dir, size_t durable_map, size_t fast_map, int repair, char *err,
                      size_t errlen);

/* Opens both environments (a worker, after fork; the CLI). NULL with <err> on failure. */
struct pgw_store *pgw_store_open(const char *dir, size_t durable_map, size_t fast_map, char *err,
                                 size_t errlen);
void pgw_store_close(struct pgw_store *s);

/* Flushes the fast environment to disk (a timer calls it). PGW_OK or PGW_ERR. */
int pgw_store_sync(struct pgw_store *s);
/* Clears reader slots of dead processes in both environments; returns how many. */
int pgw_store_reader_check(struct pgw_store *s);

/* The message of the last failed operation of <s> ("map full (fast.mdb: 1 MiB)", ...). */
const char *pgw_store_error(const struct pgw_store *s);
/* Whether the last failure was the map being full. */
int pgw_store_full(const struct pgw_store *s);

/* ---- Fast entries ---- */

/* Reads <key>: PGW_OK with *v (bytes copied into <buf,cap>; PGW_AGAIN with v->len set when
 * they do not fit), PGW_DECLINED when absent or expired at <now_ms>, PGW_ERR on a store error. */
int pgw_store_get(struct pgw_store *s, const char *key, size_t klen, uint64_t now_ms, char *buf,
                  size_t cap, struct pgw_store_value *v);
/* Writes <key> = <v>, expiring at <expires_ms> (0: never). PGW_OK or PGW_ERR. */
int pgw_store_set(struct pgw_store *s, const char *key, size_t klen,
                  const struct pgw_store_value *v, uint64_t expires_ms);
/* PGW_OK (removed or absent) or PGW_ERR. */
int pgw_store_delete(struct pgw_store *s, const char *key, size_t klen);

/* Adds <delta> to the integer at <key> (absent or expired: 0, created with expiry
 * <expires_ms>; an existing entry keeps its expiry), in one write transaction: no two
 * processes ever see the same count. With <limit> >= 0, a result above <limit> is refused
 * (nothing written). Returns PGW_OK with *value the new count, PGW_DECLINED with *value the
 * current count (over the limit), PGW_ERR (store error, or the entry is not an integer). */
int pgw_store_incr(struct pgw_store *s, const char *key, size_t klen, int64_t delta,
                   int64_t limit, uint64_t expires_ms, uint64_t now_ms, int64_t *value);

/* ---- Durable records (keys.c builds keys and consumers on these) ---- */

/* The id of the durable environment's last committed transaction, read from its meta page
 * without a transaction: it changes with every write of any process (the CLI's included), so
 * a cache of durable records is valid while it stays the same. */
uint64_t pgw_store_durable_version(struct pgw_store *s);

enum pgw_store_table { PGW_STORE_KEYS = 0, PGW_STORE_CONSUMERS = 1 };

/* Reads the record <key> of <table> into <buf,cap> (*len set; PGW_AGAIN when it does not fit).
 * PGW_OK, PGW_DECLINED (absent), PGW_ERR. */
int pgw_store_rec_get(struct pgw_store *s, enum pgw_store_table t, const void *key, size_t klen,
                      void *buf, size_t cap, size_t *len);
/* Writes (or with <val> NULL deletes) the record; synced to disk before it returns. With
 * <only_new>, an existing record makes it fail with PGW_DECLINED. PGW_OK or PGW_ERR. */
int pgw_store_rec_put(struct pgw_store *s, enum pgw_store_table t, const void *key, size_t klen,
                      const void *val, size_t vlen, int only_new);
/* Calls <fn> for every record of <table> in key order until it returns non-zero (one read
 * transaction: for the CLI, never on the request path). PGW_OK or PGW_ERR. */
int pgw_store_rec_scan(struct pgw_store *s, enum pgw_store_table t,
                       int (*fn)(const void *key, size_t klen, const void *val, size_t vlen,
                                 void *arg),
                       void *arg);

/* ---- Rate limits (one write transaction per admission: exact across processes) ---- */

/* The answer of a limiter. */
struct pgw_store_limit {
    int allowed;
    int64_t count;        /* fixed: requests counted in the window, this one included if allowed */
    int64_t remaining;    /* admissions left now */
    uint64_t reset_ms;    /* fixed: end of the window; gcra: when the bucket is full again */
    uint64_t retry_ms;    /* when refused: how long until one admission would pass */
};

/* Fixed window [start_ms, end_ms) chosen by the caller (aligned windows, UTC days or months).
 * Admits <cost> more when count + cost <= limit. Time never goes backwards per key: a window
 * older than the one stored (the clock stepped back) is answered from the stored one, so a clock
 * step neither resets nor doubles a window. PGW_OK (answer in *out) or PGW_ERR. */
int pgw_store_fixed(struct pgw_store *s, const char *key, size_t klen, uint64_t start_ms,
                    uint64_t end_ms, int64_t limit, int64_t cost, uint64_t now_ms,
                    struct pgw_store_limit *out);

/* GCRA (generic cell rate algorithm): one admission every <period_us> on average, with up to
 * <burst> extra at once. The stored state is the theoretical arrival time and the latest clock
 * seen (never going backwards). PGW_OK (answer in *out) or PGW_ERR. */
int pgw_store_gcra(struct pgw_store *s, const char *key, size_t klen, uint64_t period_us,
                   int64_t burst, uint64_t now_ms, struct pgw_store_limit *out);

/* Deletes at most <max> expired entries, continuing where the previous call stopped (small
 * write transactions: the sweeper timer calls it). Returns how many it deleted. */
size_t pgw_store_sweep(struct pgw_store *s, uint64_t now_ms, size_t max);

#endif
