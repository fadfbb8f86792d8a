/* json.h: a strict JSON reader (RFC 8259) for C code that must look inside untrusted JSON without
 * Lua: JWT headers and payloads, JSON Web Key Sets. Knows nothing of Lua or libevent.
 *
 * pgw_json_parse() validates a whole document once (grammar, nesting depth, optionally unique
 * member names at the top level) and returns its root as a span; the other functions walk spans
 * of a validated document without re-checking it. Nothing is allocated: a span points into the
 * caller's text, which must outlive it. Strings are decoded (escapes, \u surrogate pairs to UTF-8)
 * only when asked, into the caller's buffer.
 */
#ifndef PGW_JSON_H
#define PGW_JSON_H

#include "pgw.h"

enum pgw_json_type {
    PGW_JSON_OBJECT = 1,
    PGW_JSON_ARRAY,
    PGW_JSON_STRING, /* the span includes the quotes */
    PGW_JSON_NUMBER,
    PGW_JSON_TRUE,
    PGW_JSON_FALSE,
    PGW_JSON_NULL,
};

struct pgw_json {
    const char *p; /* first byte of the value */
    size_t len;    /* bytes of the value, brackets or quotes included */
    int type;      /* enum pgw_json_type */
};

#define PGW_JSON_UNIQUE_TOP 1u /* refuse an object root with a repeated member name */

/* Validates <s,len> as exactly one JSON value, surrounding whitespace allowed, nested at most
 * <max_depth> arrays/objects deep. With PGW_JSON_UNIQUE_TOP, a root object must have at most 256
 * members, all with distinct (decoded) names. PGW_OK with *root set, or PGW_ERR with *reason (a
 * static string). */
int pgw_json_parse(const char *s, size_t len, int max_depth, unsigned flags, struct pgw_json *root,
                   const char **reason);

/* Validates <s,len> as pgw_json_parse does (no flags) and, in the same pass, finds the value at
 * <path>: <n> member names followed from the root object (where a name repeats, the last one,
 * as pgw_json_get would). PGW_OK with *val; PGW_DECLINED when the document is valid but has no
 * value there; PGW_ERR with *reason when it is not valid. */
int pgw_json_parse_path(const char *s, size_t len, int max_depth, const char *const *path,
                        size_t n, struct pgw_json *val, const char **reason);

/* Iterates an object's members or an array's elements: *pos starts at 0. PGW_OK with the next
 * one in *val (and its name in *key for an object; key may be NULL), PGW_DONE after the last. */
int pgw_json_next(const struct pgw_json *c, size_t *pos, struct pgw_json *key,
                  struct pgw_json *val);

/* The member <name> of object <obj> (the last one if repeated). PGW_OK, or PGW_DECLINED when
 * absent or when <obj> is not an object (then *val is untouched). <val> may be <obj>. */
int pgw_json_get(const struct pgw_json *obj, const char *name, struct pgw_json *val);

/* Decodes string <v> into <out> (at most <cap> bytes, not NUL-terminated). PGW_OK with *len, or
 * PGW_ERR when <v> is not a string or the decoded text does not fit. */
int pgw_json_str(const struct pgw_json *v, char *out, size_t cap, size_t *len);

/* Whether <v> is a string whose decoded text equals <s,n> (byte for byte). */
int pgw_json_str_eq(const struct pgw_json *v, const char *s, size_t n);

/* The value of number <v>. PGW_ERR when <v> is not a number, or is written with 512 characters
 * or more (no claim or key needs that many). */
int pgw_json_num(const struct pgw_json *v, double *out);

#endif
