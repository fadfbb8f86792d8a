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

/* Checks (and repairs) the store directory before workers start: creates <dir>, opens both
 * environments once, recreates a fast file that fails to open (logged), clears reader slots left
 * by dead processes, closes. PGW_ERR with the reason (naming the file) in <err>. */
int pgw_store_prepare(const char *dir, size_t durable_map, size_t fast_map, char *err,
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

/* Deletes at most <max> expired entries, continuing where the previous call stopped (small
 * write transactions: the sweeper timer calls it). Returns how many it deleted. */
size_t pgw_store_sweep(struct pgw_store *s, uint64_t now_ms, size_t max);

#endif
