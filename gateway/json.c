/* json.c: the strict JSON reader of json.h. Validation is one recursive pass bounded by the
 * nesting depth; walking a validated document reuses the same skip functions without their
 * checks failing. */
#include "json.h"

#include <locale.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MAX_TOP_MEMBERS 256

struct scan {
    const char *p, *end;
    int depth, max_depth;
    const char *reason;
    /* pgw_json_parse_path: the member names to follow from the root, and what is found there */
    const char *const *path;
    size_t path_n;
    struct pgw_json found;
    int has_found;
};

static int fail(struct scan *s, const char *reason)
{
    if (s->reason == NULL)
        s->reason = reason;
    return PGW_ERR;
}

static void skip_ws(struct scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The 4 hex digits at <p> (at least 4 bytes available), or -1. */
static long hex4(const char *p)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval((unsigned char)p[i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

/* Length of the UTF-8 sequence at <p> (< end), or 0 when it is not well-formed (overlong forms,
 * surrogates and code points past U+10FFFF refused). */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t n;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4, min = 0x10000;
    else
        return 0;
    if ((size_t)(end - p) < n)
        return 0;
    unsigned cp = c & (0xFF >> (n + 1));
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* An escape after the backslash at s->p - 1; checks \u surrogate pairing. */
static int scan_escape(struct scan *s)
{
    if (s->p == s->end)
        return fail(s, "unterminated string");
    char c = *s->p++;
    if (c != 'u')
        return memchr("\"\\/bfnrt", c, 8) != NULL ? PGW_OK : fail(s, "invalid escape");
    if (s->end - s->p < 4 || hex4(s->p) < 0)
        return fail(s, "invalid \\u escape");
    long u = hex4(s->p);
    s->p += 4;
    if (u >= 0xDC00 && u <= 0xDFFF)
        return fail(s, "lone surrogate");
    if (u < 0xD800 || u > 0xDBFF)
        return PGW_OK;
    if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u' || hex4(s->p + 2) < 0xDC00 ||
        hex4(s->p + 2) > 0xDFFF)
        return fail(s, "lone surrogate");
    s->p += 6;
    return PGW_OK;
}

/* Whether none of the 8 bytes at <p> ends or escapes a string or needs a check: all printable
 * ASCII other than '"' and '\\' (word at a time: a long string costs ~1 instruction a byte). */
static int plain8(const char *p)
{
    const uint64_t ones = 0x0101010101010101ull, highs = ones * 0x80;
    uint64_t x;
    memcpy(&x, p, 8);
    if (x & highs)
        return 0;
    /* every byte < 0x80 now: a byte-wise "below n" is (x - n) & 0x80, exact for "any byte" */
    uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
    return (((x - ones * 0x20) | (q - ones) | (b - ones)) & highs) == 0;
}

#ifdef __SSE2__
/* 16 bytes a step: a signed "below 0x20" also catches every byte >= 0x80. */
static int plain16(const char *p)
{
    __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
    __m128i bad = _mm_or_si128(_mm_cmplt_epi8(x, _mm_set1_epi8(0x20)),
                               _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('"')),
                                            _mm_cmpeq_epi8(x, _mm_set1_epi8('\\'))));
    return _mm_movemask_epi8(bad) == 0;
}
#endif

static int scan_string(struct scan *s)
{
    s->p++; /* the opening quote */
    while (s->p < s->end) {
#ifdef __SSE2__
        while (s->end - s->p >= 16 && plain16(s->p))
            s->p += 16;
#endif
        while (s->end - s->p >= 8 && plain8(s->p))
            s->p += 8;
        if (s->p == s->end)
            break;
        unsigned char c = (unsigned char)*s->p;
        if (c == '"') {
            s->p++;
            return PGW_OK;
        }
        if (c < 0x20)
            return fail(s, "control character in a string");
        if (c == '\\') {
            s->p++;
            if (scan_escape(s) != PGW_OK)
                return PGW_ERR;
            continue;
        }
        size_t n = utf8_len((const unsigned char *)s->p, (const unsigned char *)s->end);
        if (n == 0)
            return fail(s, "invalid UTF-8");
        s->p += n;
    }
    return fail(s, "unterminated string");
}

static int is_digit(int c) { return c >= '0' && c <= '9'; }

static int scan_number(struct scan *s)
{
    const char *p = s->p, *e = s->end;
    if (p < e && *p == '-')
        p++;
    if (p == e || !is_digit(*p))
        return fail(s, "invalid number");
    if (*p == '0')
        p++;
    else
        while (p < e && is_digit(*p))
            p++;
    if (p < e && *p == '.') {
        p++;
        if (p == e || !is_digit(*p))
            return fail(s, "invalid number");
        while (p < e && is_digit(*p))
            p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-'))
            p++;
        if (p == e || !is_digit(*p))
            return fail(s, "invalid number");
        while (p < e && is_digit(*p))
            p++;
    }
    s->p = p;
    return PGW_OK;
}

static int scan_literal(struct scan *s, const char *word, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return fail(s, "invalid literal");
    s->p += n;
    return PGW_OK;
}

static int scan_value_at(struct scan *s, struct pgw_json *v, int level);
static int scan_value(struct scan *s, struct pgw_json *v) { return scan_value_at(s, v, -1); }

/* The path level of the value of member <k> in an object at path level <level> (-1: off the
 * path). A later member of the same name supersedes what an earlier one led to. */
static int member_level(struct scan *s, const struct pgw_json *k, int level)
{
    if (level < 0 || (size_t)level >= s->path_n ||
        !pgw_json_str_eq(k, s->path[level], strlen(s->path[level])))
        return -1;
    s->has_found = 0;
    return level + 1;
}

/* An array or object at s->p; <close> is its closing bracket; <level>: how many names of
 * s->path led to it (-1 when it is off the path). */
static int scan_container(struct scan *s, char close, int level)
{
    if (++s->depth > s->max_depth)
        return fail(s, "nested too deeply");
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        s->depth--;
        return PGW_OK;
    }
    for (;;) {
        struct pgw_json v, k = {.p = s->p, .type = PGW_JSON_STRING};
        int child = -1;
        if (close == '}') {
            skip_ws(s);
            k.p = s->p;
            if (s->p == s->end || *s->p != '"')
                return fail(s, "member name expected");
            if (scan_string(s) != PGW_OK)
                return PGW_ERR;
            k.len = (size_t)(s->p - k.p);
            child = member_level(s, &k, level);
            skip_ws(s);
            if (s->p == s->end || *s->p != ':')
                return fail(s, "':' expected");
            s->p++;
        }
        if (scan_value_at(s, &v, child) != PGW_OK)
            return PGW_ERR;
        if (child >= 0 && (size_t)child == s->path_n) {
            s->found = v;
            s->has_found = 1;
        }
        skip_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (s->p < s->end && *s->p == close) {
            s->p++;
            s->depth--;
            return PGW_OK;
        }
        return fail(s, close == '}' ? "',' or '}' expected" : "',' or ']' expected");
    }
}

static int scan_value_at(struct scan *s, struct pgw_json *v, int level)
{
    skip_ws(s);
    if (s->p == s->end)
        return fail(s, "unexpected end of input");
    v->p = s->p;
    int r;
    switch (*s->p) {
    case '{':
        v->type = PGW_JSON_OBJECT;
        r = scan_container(s, '}', level);
        break;
    case '[':
        v->type = PGW_JSON_ARRAY;
        r = scan_container(s, ']', -1);
        break;
    case '"':
        v->type = PGW_JSON_STRING;
        r = scan_string(s);
        break;
    case 't':
        v->type = PGW_JSON_TRUE;
        r = scan_literal(s, "true", 4);
        break;
    case 'f':
        v->type = PGW_JSON_FALSE;
        r = scan_literal(s, "false", 5);
        break;
    case 'n':
        v->type = PGW_JSON_NULL;
        r = scan_literal(s, "null", 4);
        break;
    default:
        v->type = PGW_JSON_NUMBER;
        r = scan_number(s);
    }
    v->len = (size_t)(s->p - v->p);
    return r;
}

/* Whether two member-name spans (strings of a validated document) decode to the same text. */
static int same_name(const struct pgw_json *a, const struct pgw_json *b)
{
    if (a->len == b->len && memcmp(a->p, b->p, a->len) == 0)
        return 1;
    if (memchr(a->p, '\\', a->len) == NULL && memchr(b->p, '\\', b->len) == NULL)
        return 0;
    char sx[512], sy[512]; /* decoded text is never longer than its JSON */
    char *x = a->len <= sizeof(sx) ? sx : pgw_malloc(a->len);
    char *y = b->len <= sizeof(sy) ? sy : pgw_malloc(b->len);
    size_t xl = 0, yl = 0;
    int same = pgw_json_str(a, x, a->len, &xl) == PGW_OK && pgw_json_str(b, y, b->len, &yl) == PGW_OK &&
               xl == yl && memcmp(x, y, xl) == 0;
    if (x != sx)
        free(x);
    if (y != sy)
        free(y);
    return same;
}

static int check_unique(const struct pgw_json *obj, const char **reason)
{
    struct pgw_json names[MAX_TOP_MEMBERS], k, v;
    size_t n = 0, pos = 0;
    while (pgw_json_next(obj, &pos, &k, &v) == PGW_OK) {
        if (n == MAX_TOP_MEMBERS) {
            *reason = "too many members";
            return PGW_ERR;
        }
        for (size_t i = 0; i < n; i++)
            if (same_name(&names[i], &k)) {
                *reason = "repeated member name";
                return PGW_ERR;
            }
        names[n++] = k;
    }
    return PGW_OK;
}

/* The whole of s->p..s->end as one value, surrounding whitespace allowed; <level>: 0 to follow
 * s->path from the root, -1 not to. */
static int scan_document(struct scan *s, struct pgw_json *root, int level, const char **reason)
{
    if (scan_value_at(s, root, level) != PGW_OK) {
        *reason = s->reason;
        return PGW_ERR;
    }
    skip_ws(s);
    if (s->p != s->end) {
        *reason = "unexpected data after the value";
        return PGW_ERR;
    }
    return PGW_OK;
}

int pgw_json_parse(const char *text, size_t len, int max_depth, unsigned flags,
                   struct pgw_json *root, const char **reason)
{
    struct scan s = {.p = text, .end = text + len, .max_depth = max_depth};
    if (scan_document(&s, root, -1, reason) != PGW_OK)
        return PGW_ERR;
    if ((flags & PGW_JSON_UNIQUE_TOP) && root->type == PGW_JSON_OBJECT)
        return check_unique(root, reason);
    return PGW_OK;
}

int pgw_json_parse_path(const char *text, size_t len, int max_depth, const char *const *path,
                        size_t n, struct pgw_json *val, const char **reason)
{
    struct scan s = {.p = text, .end = text + len, .max_depth = max_depth, .path = path,
                     .path_n = n};
    struct pgw_json root;
    if (scan_document(&s, &root, n > 0 ? 0 : -1, reason) != PGW_OK)
        return PGW_ERR;
    if (n == 0)
        s.found = root, s.has_found = 1;
    if (!s.has_found)
        return PGW_DECLINED;
    *val = s.found;
    return PGW_OK;
}

int pgw_json_next(const struct pgw_json *c, size_t *pos, struct pgw_json *key,
                  struct pgw_json *val)
{
    if (c->type != PGW_JSON_OBJECT && c->type != PGW_JSON_ARRAY)
        return PGW_DONE;
    /* validated: no failure below; a deep document was within max_depth already */
    struct scan s = {.p = c->p + (*pos == 0 ? 1 : *pos), .end = c->p + c->len - 1, .max_depth = 1 << 30};
    skip_ws(&s);
    if (s.p < s.end && *s.p == ',')
        s.p++;
    skip_ws(&s);
    if (s.p >= s.end)
        return PGW_DONE;
    if (c->type == PGW_JSON_OBJECT) {
        struct pgw_json k = {.p = s.p, .type = PGW_JSON_STRING};
        scan_string(&s);
        k.len = (size_t)(s.p - k.p);
        if (key != NULL)
            *key = k;
        skip_ws(&s);
        s.p++; /* ':' */
    }
    scan_value(&s, val);
    *pos = (size_t)(s.p - c->p);
    return PGW_OK;
}

int pgw_json_get(const struct pgw_json *obj, const char *name, struct pgw_json *val)
{
    if (obj->type != PGW_JSON_OBJECT)
        return PGW_DECLINED;
    struct pgw_json o = *obj, k, v, last; /* a copy: <val> may be <obj> */
    size_t pos = 0, nl = strlen(name);
    int found = PGW_DECLINED;
    while (pgw_json_next(&o, &pos, &k, &v) == PGW_OK)
        if (pgw_json_str_eq(&k, name, nl)) {
            last = v;
            found = PGW_OK;
        }
    if (found == PGW_OK)
        *val = last;
    return found;
}

static size_t put_utf8(char *out, unsigned long cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

int pgw_json_str(const struct pgw_json *v, char *out, size_t cap, size_t *len)
{
    if (v->type != PGW_JSON_STRING || v->len < 2)
        return PGW_ERR;
    const char *p = v->p + 1, *e = v->p + v->len - 1;
    size_t n = 0;
    while (p < e) {
        char tmp[4];
        const char *src = p;
        size_t k = 1;
        if (*p != '\\') {
            p++;
        } else {
            char c = p[1];
            p += 2;
            static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
            const char *m = c != 'u' ? memchr(from, c, 8) : NULL;
            if (m != NULL) {
                tmp[0] = to[m - from];
            } else { /* \uXXXX, paired when a high surrogate (validated) */
                unsigned long cp = (unsigned long)hex4(p);
                p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + ((unsigned long)hex4(p + 2) - 0xDC00);
                    p += 6;
                }
                k = put_utf8(tmp, cp);
            }
            src = tmp;
        }
        if (n + k > cap)
            return PGW_ERR;
        memcpy(out + n, src, k);
        n += k;
    }
    *len = n;
    return PGW_OK;
}

int pgw_json_str_eq(const struct pgw_json *v, const char *s, size_t n)
{
    if (v->type != PGW_JSON_STRING)
        return 0;
    if (memchr(v->p, '\\', v->len) == NULL) /* the common case: no escape */
        return v->len == n + 2 && memcmp(v->p + 1, s, n) == 0;
    char stack[1024]; /* decoded text is never longer than its JSON */
    char *buf = v->len <= sizeof(stack) ? stack : pgw_malloc(v->len);
    size_t l;
    int eq = pgw_json_str(v, buf, v->len, &l) == PGW_OK && l == n && memcmp(buf, s, n) == 0;
    if (buf != stack)
        free(buf);
    return eq;
}

int pgw_json_num(const struct pgw_json *v, double *out)
{
    static locale_t c_locale;
    char buf[512];
    if (v->type != PGW_JSON_NUMBER || v->len >= sizeof(buf))
        return PGW_ERR;
    if (c_locale == (locale_t)0)
        c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    pgw_assert(c_locale != (locale_t)0);
    memcpy(buf, v->p, v->len);
    buf[v->len] = '\0';
    *out = strtod_l(buf, NULL, c_locale);
    return PGW_OK;
}
