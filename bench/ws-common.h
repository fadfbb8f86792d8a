/* bench/ws-common.h: the HTTP-head helpers bench/ws-bench.c and bench/ws-echo.c share
 * (#included: each tool stays one file to compile). */
#ifndef WS_COMMON_H
#define WS_COMMON_H

#include <stddef.h>
#include <string.h>
#include <strings.h>

/* Case-insensitive search for a field's value in a NUL-terminated head; copies it (trimmed,
 * cut to vmax - 1 bytes) into val. 1 if found. */
static int header(const char *head, const char *name, char *val, size_t vmax)
{
    size_t nl = strlen(name);
    const char *p = strstr(head, "\r\n");
    while (p && p[2] != '\r') {
        p += 2;
        const char *eol = strstr(p, "\r\n");
        if (!eol) return 0;
        if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            const char *e = eol;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
            size_t n = (size_t)(e - v);
            if (n >= vmax) n = vmax - 1;
            memcpy(val, v, n);
            val[n] = 0;
            return 1;
        }
        p = eol;
    }
    return 0;
}

/* Standard base64 of <in,n> into out (4 * ceil(n / 3) + 1 bytes), NUL-terminated. */
static void b64(const unsigned char *in, size_t n, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, o = 0;
    for (i = 0; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = t[v >> 18];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = t[(v >> 6) & 63];
        out[o++] = t[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0);
        out[o++] = t[v >> 18];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = i + 1 < n ? t[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = 0;
}

#endif
