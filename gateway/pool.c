/* pool.c: the per-request arena (see pool.h). Blocks are chained; an allocation larger than a
 * quarter of the default block gets a block of its own so that big requests do not waste the
 * tail of the current block. */
#include "pool.h"

#include <stdlib.h>

#define POOL_ALIGN 16
#define POOL_BLOCK_DEFAULT 4096

struct pool_block {
    struct pool_block *next;
    size_t size; /* bytes of data[] */
    size_t used;
    _Alignas(POOL_ALIGN) unsigned char data[];
};

struct pgw_pool_cleanup {
    struct pgw_pool_cleanup *next;
    pgw_pool_cleanup_fn fn; /* NULL once cancelled */
    void *arg;
};

struct pgw_pool {
    struct pool_block *first; /* kept by pgw_pool_clear() */
    struct pool_block *current;
    struct pgw_pool_cleanup *cleanups; /* most recent first */
    size_t used;
};

static size_t align_up(size_t n) { return (n + POOL_ALIGN - 1) & ~(size_t)(POOL_ALIGN - 1); }

static struct pool_block *block_new(size_t size)
{
    struct pool_block *b = pgw_malloc(sizeof(*b) + size);
    b->next = NULL;
    b->size = size;
    b->used = 0;
    return b;
}

struct pgw_pool *pgw_pool_new(size_t first_block)
{
    struct pgw_pool *p = pgw_malloc(sizeof(*p));
    p->first = p->current = block_new(align_up(first_block ? first_block : POOL_BLOCK_DEFAULT));
    p->cleanups = NULL;
    p->used = 0;
    return p;
}

static void run_cleanups(struct pgw_pool *p)
{
    /* A cleanup may register or cancel others (it only ever touches its own resource), so pop
     * one at a time instead of walking a list that may change under us. */
    while (p->cleanups != NULL) {
        struct pgw_pool_cleanup *c = p->cleanups;
        p->cleanups = c->next;
        if (c->fn != NULL)
            c->fn(c->arg);
    }
}

static void free_blocks_after(struct pool_block *b)
{
    struct pool_block *n = b->next;
    b->next = NULL;
    while (n != NULL) {
        struct pool_block *next = n->next;
        free(n);
        n = next;
    }
}

void pgw_pool_clear(struct pgw_pool *p)
{
    run_cleanups(p);
    free_blocks_after(p->first);
    p->first->used = 0;
    p->current = p->first;
    p->used = 0;
}

void pgw_pool_free(struct pgw_pool *p)
{
    if (p == NULL)
        return;
    run_cleanups(p);
    free_blocks_after(p->first);
    free(p->first);
    free(p);
}

void *pgw_pool_alloc(struct pgw_pool *p, size_t n)
{
    size_t need = align_up(n ? n : 1);
    struct pool_block *b = p->current;
    pgw_assert(need >= n); /* overflow */
    p->used += need;
    if (PGW_LIKELY(b->size - b->used >= need)) {
        void *r = b->data + b->used;
        b->used += need;
        return r;
    }
    if (need > POOL_BLOCK_DEFAULT / 4) {
        /* Large: its own block, chained after the current one so the current keeps serving. */
        struct pool_block *big = block_new(need);
        big->used = need;
        big->next = b->next;
        b->next = big;
        return big->data;
    }
    struct pool_block *nb = block_new(POOL_BLOCK_DEFAULT);
    nb->next = b->next;
    b->next = nb;
    p->current = nb;
    nb->used = need;
    return nb->data;
}

void *pgw_pool_calloc(struct pgw_pool *p, size_t n)
{
    void *r = pgw_pool_alloc(p, n);
    memset(r, 0, n);
    return r;
}

char *pgw_pool_strndup(struct pgw_pool *p, const char *s, size_t n)
{
    char *r = pgw_pool_alloc(p, n + 1);
    memcpy(r, s, n);
    r[n] = '\0';
    return r;
}

struct pgw_pool_cleanup *pgw_pool_defer(struct pgw_pool *p, pgw_pool_cleanup_fn fn, void *arg)
{
    struct pgw_pool_cleanup *c = pgw_pool_alloc(p, sizeof(*c));
    c->fn = fn;
    c->arg = arg;
    c->next = p->cleanups;
    p->cleanups = c;
    return c;
}

void pgw_pool_cancel(struct pgw_pool_cleanup *c)
{
    if (c != NULL)
        c->fn = NULL;
}

size_t pgw_pool_used(const struct pgw_pool *p) { return p->used; }
