/* pool_test.c: the per-request arena: alignment, large blocks, cleanups order, clear/reuse. */
#include "../../gateway/pool.c"
#include "../support/test.h"

#include <stdint.h>

static int order[8];
static int norder;
static void rec(void *arg) { order[norder++] = (int)(intptr_t)arg; }

static void test_alignment(void)
{
    struct pgw_pool *p = pgw_pool_new(128);
    for (size_t n = 1; n < 300; n += 7) {
        void *a = pgw_pool_alloc(p, n);
        CHECK(((uintptr_t)a & 15) == 0);
        memset(a, 0xab, n);
    }
    pgw_pool_free(p);
}

static void test_large_and_many(void)
{
    struct pgw_pool *p = pgw_pool_new(0);
    char *small = pgw_pool_alloc(p, 10);
    memcpy(small, "123456789", 10);
    char *big = pgw_pool_alloc(p, 100000);
    memset(big, 1, 100000);
    char *small2 = pgw_pool_alloc(p, 10);
    CHECK(small2 == small + 16); /* the big block did not consume the current one */
    for (int i = 0; i < 2000; i++)
        memset(pgw_pool_alloc(p, 100), i, 100);
    CHECK(strcmp(small, "123456789") == 0);
    pgw_pool_free(p);
}

static void test_cleanups_reverse_order_and_cancel(void)
{
    struct pgw_pool *p = pgw_pool_new(0);
    norder = 0;
    pgw_pool_defer(p, rec, (void *)1);
    struct pgw_pool_cleanup *c2 = pgw_pool_defer(p, rec, (void *)2);
    pgw_pool_defer(p, rec, (void *)3);
    pgw_pool_cancel(c2);
    pgw_pool_clear(p);
    CHECK_INT(norder, 2);
    CHECK_INT(order[0], 3);
    CHECK_INT(order[1], 1);
    /* reuse after clear, cleanups run again on free */
    norder = 0;
    pgw_pool_defer(p, rec, (void *)7);
    CHECK_INT(pgw_pool_used(p) > 0, 1);
    pgw_pool_free(p);
    CHECK_INT(norder, 1);
    CHECK_INT(order[0], 7);
}

static void test_clear_reuses_first_block(void)
{
    struct pgw_pool *p = pgw_pool_new(1024);
    void *a = pgw_pool_alloc(p, 64);
    for (int i = 0; i < 100; i++)
        pgw_pool_alloc(p, 512);
    pgw_pool_clear(p);
    CHECK_INT(pgw_pool_used(p), 0);
    void *b = pgw_pool_alloc(p, 64);
    CHECK(a == b);
    char *s = pgw_pool_strndup(p, "hello world", 5);
    CHECK(strcmp(s, "hello") == 0);
    char *z = pgw_pool_calloc(p, 33);
    int zero = 1;
    for (int i = 0; i < 33; i++)
        zero &= z[i] == 0;
    CHECK(zero);
    pgw_pool_free(p);
}

int main(void)
{
    RUN(test_alignment);
    RUN(test_large_and_many);
    RUN(test_cleanups_reverse_order_and_cancel);
    RUN(test_clear_reuses_first_block);
    return TEST_REPORT("pool");
}
