/* out.h: a bounds-checked writer into memory the caller sized beforehand (a pool block, reserved
 * evbuffer space), used to serialise heads without a formatted print per field. Writing past
 * the end is a bug in the caller's sizing: pgw_assert aborts. Pure code.
 */
#ifndef PGW_OUT_H
#define PGW_OUT_H

#include "pgw.h"

#include <stdint.h>
#include <string.h>

struct pgw_out {
    char *p;   /* next byte to write */
    char *end; /* one past the last writable byte */
};

static inline void pgw_out_mem(struct pgw_out *o, const char *s, size_t n)
{
    pgw_assert((size_t)(o->end - o->p) >= n);
    memcpy(o->p, s, n);
    o->p += n;
}

#define PGW_OUT_LIT(o, lit) pgw_out_mem((o), (lit), sizeof(lit) - 1)

static inline void pgw_out_u64(struct pgw_out *o, uint64_t v)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    pgw_assert(o->end - o->p >= n);
    while (n)
        *o->p++ = tmp[--n];
}

/* "name: value\r\n" */
static inline void pgw_out_field(struct pgw_out *o, const char *name, size_t nlen,
                                 const char *val, size_t vlen)
{
    pgw_out_mem(o, name, nlen);
    PGW_OUT_LIT(o, ": ");
    pgw_out_mem(o, val, vlen);
    PGW_OUT_LIT(o, "\r\n");
}

#endif
