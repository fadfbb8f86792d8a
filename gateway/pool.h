/* pool.h: the per-request arena. Small allocations come from blocks that die together when the
 * pool is cleared or freed; anything that is not plain memory (timers, upstream leases, later Lua
 * refs) registers a cleanup with pgw_pool_defer(), and cleanups run in reverse order of
 * registration when the pool is cleared or freed, including when a request is aborted.
 * A keep-alive connection reuses its pool: pgw_pool_clear() keeps the first block.
 * Pure code: no libevent, no Lua.
 */
#ifndef PGW_POOL_H
#define PGW_POOL_H

#include "pgw.h"

typedef void (*pgw_pool_cleanup_fn)(void *arg);

struct pgw_pool;

/* Creates a pool whose first block holds <first_block> bytes (rounded up). */
struct pgw_pool *pgw_pool_new(size_t first_block);
/* Runs the cleanups, then frees every block and the pool. */
void pgw_pool_free(struct pgw_pool *p);
/* Runs the cleanups, frees every block but the first and resets the pool for reuse. */
void pgw_pool_clear(struct pgw_pool *p);

/* Returns <n> bytes aligned for any type, valid until the pool is cleared or freed. */
void *pgw_pool_alloc(struct pgw_pool *p, size_t n);
void *pgw_pool_calloc(struct pgw_pool *p, size_t n);
/* Copies <s,n> into the pool with a NUL after it; returns the copy. */
char *pgw_pool_strndup(struct pgw_pool *p, const char *s, size_t n);

/* Registers <fn>(<arg>) to run when the pool is cleared or freed (reverse order). Returns a handle
 * that pgw_pool_cancel() takes to drop the cleanup without running it (when the resource was
 * released early). */
struct pgw_pool_cleanup *pgw_pool_defer(struct pgw_pool *p, pgw_pool_cleanup_fn fn, void *arg);
void pgw_pool_cancel(struct pgw_pool_cleanup *c);

/* Bytes handed out since the last clear (for tests and limits). */
size_t pgw_pool_used(const struct pgw_pool *p);

#endif
