/* test.h: minimal assertion macros for the C unit tests (one binary per module, built with
 * -fsanitize=address,undefined). Each binary ends by printing "<suite>: N passed, N failed" and
 * exits non-zero when anything failed; spec/run-all aggregates the counts.
 */
#ifndef PGW_TEST_H
#define PGW_TEST_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int test_passed, test_failed, test_current_failed;
static const char *test_current;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s: %s:%d: %s\n", test_current, __FILE__, __LINE__, #cond);     \
            test_current_failed = 1;                                                               \
        }                                                                                          \
    } while (0)

#define CHECK_INT(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_) {                                                                            \
            fprintf(stderr, "FAIL %s: %s:%d: %s == %lld, expected %lld\n", test_current, __FILE__,  \
                    __LINE__, #a, a_, b_);                                                         \
            test_current_failed = 1;                                                               \
        }                                                                                          \
    } while (0)

#define CHECK_MEM(p, n, lit)                                                                       \
    do {                                                                                           \
        if ((n) != sizeof(lit) - 1 || memcmp((p), (lit), (n)) != 0) {                              \
            fprintf(stderr, "FAIL %s: %s:%d: %s is \"%.*s\", expected \"%s\"\n", test_current,    \
                    __FILE__, __LINE__, #p, (int)(n), (const char *)(p), lit);                     \
            test_current_failed = 1;                                                               \
        }                                                                                          \
    } while (0)

/* Reports a failure inside a table case (the macros above name the line, not the case). */
static inline void failf(const char *name, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline void failf(const char *name, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "FAIL %s: [%s] ", test_current, name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    test_current_failed = 1;
}

#define RUN(fn)                                                                                    \
    do {                                                                                           \
        test_current = #fn;                                                                        \
        test_current_failed = 0;                                                                   \
        fn();                                                                                      \
        if (test_current_failed)                                                                   \
            test_failed++;                                                                         \
        else                                                                                       \
            test_passed++;                                                                         \
    } while (0)

#define TEST_REPORT(suite)                                                                         \
    (printf("%s: %d passed, %d failed\n", (suite), test_passed, test_failed), test_failed ? 1 : 0)

#endif
