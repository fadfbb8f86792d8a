/* util.c: the allocation wrappers and small helpers declared in pgw.h. */
#include "pgw.h"

#include <stdio.h>
#include <stdlib.h>

const char pgw_err_timeout[] = "timeout";
const char pgw_err_closed[] = "closed";
const char pgw_err_reset[] = "reset";
const char pgw_err_refused[] = "refused";
const char pgw_err_resolve[] = "resolve failed";
const char pgw_err_protocol[] = "protocol error";
const char pgw_err_too_large[] = "too large";
const char pgw_err_no_target[] = "no usable target";

static PGW_NORETURN void oom(size_t n, const char *file, int line)
{
    fprintf(stderr, "passerelle: out of memory allocating %zu bytes at %s:%d\n", n, file, line);
    abort();
}

void *pgw_malloc_at(size_t n, const char *file, int line)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        oom(n, file, line);
    return p;
}

void *pgw_calloc_at(size_t c, size_t n, const char *file, int line)
{
    void *p = calloc(c ? c : 1, n ? n : 1);
    if (p == NULL)
        oom(c * n, file, line);
    return p;
}

void *pgw_realloc_at(void *old, size_t n, const char *file, int line)
{
    void *p = realloc(old, n ? n : 1);
    if (p == NULL)
        oom(n, file, line);
    return p;
}

char *pgw_strndup_at(const char *s, size_t n, const char *file, int line)
{
    char *p = pgw_malloc_at(n + 1, file, line);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void pgw_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "passerelle: assertion failed: %s at %s:%d\n", expr, file, line);
    abort();
}

int pgw_str_ieq(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return 0;
    for (size_t i = 0; i < alen; i++)
        if (pgw_lower((unsigned char)a[i]) != pgw_lower((unsigned char)b[i]))
            return 0;
    return 1;
}

int pgw_is_lower_name(const char *s, size_t n)
{
    if (n == 0 || n > 64 || !(s[0] >= 'a' && s[0] <= 'z'))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return 0;
    return 1;
}
