/* pgw.h: what every module of the C core shares: return codes, byte strings, allocation
 * wrappers that abort on failure, always-on assertions and the static error strings that
 * async completions pass around. Knows nothing of libevent, Lua or LMDB.
 */
#ifndef PGW_H
#define PGW_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PGW_OK 0
#define PGW_ERR -1      /* failed; detail already logged or in *err */
#define PGW_AGAIN -2    /* need more input / would block: call again later */
#define PGW_DONE -3     /* response already produced: stop the pipeline */
#define PGW_DECLINED -4 /* not mine: let the next handler try */

struct pgw_str {
    const char *base;
    size_t len;
};

#define PGW_STRLIT(s) ((struct pgw_str){(s), sizeof(s) - 1})
#define PGW_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define PGW_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PGW_MAX(a, b) ((a) > (b) ? (a) : (b))
#define PGW_UNUSED(x) ((void)(x))

#if defined(__GNUC__)
#define PGW_LIKELY(x) __builtin_expect(!!(x), 1)
#define PGW_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define PGW_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define PGW_NORETURN __attribute__((noreturn))
#else
#define PGW_LIKELY(x) (x)
#define PGW_UNLIKELY(x) (x)
#define PGW_PRINTF(f, a)
#define PGW_NORETURN
#endif

/* Allocation: abort with file:line on failure, so call sites never test for NULL. */
#define pgw_malloc(n) pgw_malloc_at((n), __FILE__, __LINE__)
#define pgw_calloc(c, n) pgw_calloc_at((c), (n), __FILE__, __LINE__)
#define pgw_realloc(p, n) pgw_realloc_at((p), (n), __FILE__, __LINE__)
#define pgw_strndup(s, n) pgw_strndup_at((s), (n), __FILE__, __LINE__)
void *pgw_malloc_at(size_t n, const char *file, int line);
void *pgw_calloc_at(size_t c, size_t n, const char *file, int line);
void *pgw_realloc_at(void *p, size_t n, const char *file, int line);
/* Returns a NUL-terminated heap copy of <s,n>; the caller frees it. */
char *pgw_strndup_at(const char *s, size_t n, const char *file, int line);

#define pgw_assert(e) ((e) ? (void)0 : pgw_assert_fail(#e, __FILE__, __LINE__))
PGW_NORETURN void pgw_assert_fail(const char *expr, const char *file, int line);

/* ASCII helpers that never depend on the locale. */
static inline int pgw_lower(int c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }
/* Case-insensitive comparison of <a,alen> with <b,blen>. */
int pgw_str_ieq(const char *a, size_t alen, const char *b, size_t blen);
#define PGW_IEQ_LIT(p, n, lit) pgw_str_ieq((p), (n), (lit), sizeof(lit) - 1)
/* Whether <s,n> is a lower-case identifier [a-z][a-z0-9_]* of at most 64 bytes (policy and JWT
 * provider names). */
int pgw_is_lower_name(const char *s, size_t n);

/* Errors passed to async completions, compared by address. */
extern const char pgw_err_timeout[];
extern const char pgw_err_closed[];
extern const char pgw_err_reset[];
extern const char pgw_err_refused[];
extern const char pgw_err_resolve[];
extern const char pgw_err_protocol[];
extern const char pgw_err_too_large[];
extern const char pgw_err_no_target[];

#endif
