/* yamltree.h: reads a YAML text into a small tree of scalars, lists and maps, and collects the
 * errors found in a file as "FILE:LINE: message" lines sorted by line.
 *
 * pgw_yaml_read() builds the tree from libyaml's event API; this is the only module that includes
 * <yaml.h>. Every node knows its line. Anchors, aliases and tags are refused where they appear, so
 * the tree is never larger than the text (no "billion laughs"); one document only, bounded in
 * nodes and depth; duplicate keys are reported once for every map. The tree owns its strings and
 * knows nothing of any schema: config.c walks it and checks the keys and values.
 *
 * struct pgw_errs collects errors instead of stopping at the first: a caller reports everything it
 * finds, then pgw_errs_write() prints them all, sorted by line, into one buffer. It owns its
 * messages; the file name is borrowed.
 */
#ifndef PGW_YAMLTREE_H
#define PGW_YAMLTREE_H

#include "pgw.h"

#define PGW_ERRS_MSG_MAX 512  /* bytes of one message, NUL included; the rest is cut */
#define PGW_ERRS_QUOTE_MAX 72 /* size of a pgw_errs_quote() buffer */

/* ---- Errors ---- */

struct pgw_errs_entry;

/* Embedded by its user: {.file = name}, then pgw_errs_clear() when done. */
struct pgw_errs {
    const char *file; /* named in every line written; borrowed */
    struct pgw_errs_entry *v;
    size_t n, cap;
    size_t dropped; /* errors past the first 1000: counted, not kept */
};

/* Records a message for <line> (1-based). Errors on one line keep the order they were added in. */
void PGW_PRINTF(3, 4) pgw_errs_add(struct pgw_errs *e, unsigned line, const char *fmt, ...);

/* Whether anything was recorded, including dropped errors. */
int pgw_errs_any(const struct pgw_errs *e);

/* Sorts the errors by line and writes whole "FILE:LINE: message\n" lines to <buf> while they fit,
 * then "FILE: N more error(s) not shown\n" if that fits. A buffer too small for the first line gets
 * its truncated start. Always NUL-terminated when <len> > 0; does nothing when <buf> is NULL or
 * <len> is 0.
 */
void pgw_errs_write(struct pgw_errs *e, char *buf, size_t len);

/* Frees the messages; <e> may not be used again. */
void pgw_errs_clear(struct pgw_errs *e);

/* Writes <s,len> into <buf> (PGW_ERRS_QUOTE_MAX bytes) between double quotes for a message, so
 * that every message stays on one line whatever the file holds: control and non-ASCII bytes, '"'
 * and '\' as \xHH; at most 48 bytes (fewer when escapes fill <buf>), then "..." if <len> > 48.
 * Returns <buf>.
 */
const char *pgw_errs_quote(char *buf, const char *s, size_t len);

/* ---- The YAML tree ---- */

enum pgw_yaml_kind { PGW_YAML_SCALAR, PGW_YAML_SEQ, PGW_YAML_MAP };

struct pgw_yaml_node {
    enum pgw_yaml_kind kind;
    int is_plain; /* an unquoted scalar: may be null, a boolean or a number */
    int is_bad;   /* already reported (an alias, a NUL byte): readers stay quiet about it */
    unsigned line;
    char *str; /* scalar: NUL-terminated, no NUL inside (refused) */
    size_t len;
    struct pgw_yaml_node **kids; /* list: items; map: key, value, key, value... */
    size_t n, cap;
};

/* Parses <yaml,len>. Returns the root, owned by the caller (pgw_yaml_free), or NULL: for an empty
 * stream (*fatal == 0) or after an error that stopped reading (*fatal == 1: syntax, a second
 * document, too many nodes or levels). Errors that do not stop reading (anchors, aliases, tags,
 * NUL bytes, non-scalar or duplicate keys) are added to <e> too, and the tree is still returned:
 * nodes already reported have is_bad set.
 */
struct pgw_yaml_node *pgw_yaml_read(struct pgw_errs *e, const char *yaml, size_t len, int *fatal);

/* Frees <n> and everything under it; NULL is fine. */
void pgw_yaml_free(struct pgw_yaml_node *n);

/* Whether <n> is a scalar equal to <s>. */
int pgw_yaml_is(const struct pgw_yaml_node *n, const char *s);

/* YAML 1.2 core schema: an empty plain scalar, "~" and "null" in three spellings. */
int pgw_yaml_is_null(const struct pgw_yaml_node *n);

/* "a map", "a list", "nothing (null)" or "a string", for "expected X, got Y" messages. */
const char *pgw_yaml_describe(const struct pgw_yaml_node *n);

#endif
