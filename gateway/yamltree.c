/* yamltree.c: the YAML tree and the error collector declared in yamltree.h.
 *
 * libyaml's event API feeds a builder that keeps a stack of the open lists and maps; each event
 * becomes at most one node, so the tree is bounded by the text and by MAX_NODES and MAX_DEPTH.
 * Errors are kept with their line and a sequence number, and sorted only when written out.
 */
#include "yamltree.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <yaml.h>

#define MAX_NODES 1000000u /* bounds the tree built from a pathological file */
#define MAX_DEPTH 64       /* the config schema needs 5 levels; flow nesting needs no stack */
#define MAX_ERRORS 1000u   /* kept; the rest are counted */

/* ---- Errors ---- */

struct pgw_errs_entry {
    unsigned line;
    size_t seq; /* keeps the order of discovery among errors on one line */
    char *msg;
};

void pgw_errs_add(struct pgw_errs *e, unsigned line, const char *fmt, ...)
{
    char msg[PGW_ERRS_MSG_MAX];
    va_list ap;

    if (e->n == MAX_ERRORS) {
        e->dropped++;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (e->n == e->cap) {
        e->cap = e->cap ? 2 * e->cap : 16;
        e->v = pgw_realloc(e->v, e->cap * sizeof(*e->v));
    }
    e->v[e->n] = (struct pgw_errs_entry){line, e->n, pgw_strndup(msg, strlen(msg))};
    e->n++;
}

int pgw_errs_any(const struct pgw_errs *e) { return e->n > 0 || e->dropped > 0; }

static int err_cmp(const void *a, const void *b)
{
    const struct pgw_errs_entry *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* A buffer too small for even one line gets its truncated start: the caller always has something
 * to print. */
void pgw_errs_write(struct pgw_errs *e, char *buf, size_t len)
{
    size_t used = 0, shown = 0;

    if (buf == NULL || len == 0)
        return;
    buf[0] = '\0';
    if (e->n > 0) /* e->v is NULL until the first error, and qsort's base must not be */
        qsort(e->v, e->n, sizeof(*e->v), err_cmp);
    for (; shown < e->n; shown++) {
        const struct pgw_errs_entry *x = &e->v[shown];
        int n = snprintf(buf + used, len - used, "%s:%u: %s\n", e->file, x->line, x->msg);
        if (n < 0 || (size_t)n >= len - used) {
            if (shown > 0)
                buf[used] = '\0'; /* keep whole lines only */
            else
                used = len - 1;
            break;
        }
        used += (size_t)n;
    }
    size_t rest = e->n - shown + e->dropped;
    if (rest > 0 && used < len - 1) {
        int n = snprintf(buf + used, len - used, "%s: %zu more error(s) not shown\n", e->file,
                         rest);
        if (n < 0 || (size_t)n >= len - used)
            buf[used] = '\0';
    }
}

void pgw_errs_clear(struct pgw_errs *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->v[i].msg);
    free(e->v);
}

const char *pgw_errs_quote(char *buf, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, shown = PGW_MIN(len, 48);

    buf[o++] = '"';
    for (size_t i = 0; i < shown && o < PGW_ERRS_QUOTE_MAX - 9; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[c >> 4];
            buf[o++] = hex[c & 15];
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o++] = '"';
    if (shown < len) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
    return buf;
}

/* ---- The YAML tree ---- */

struct builder {
    struct pgw_errs *e;
    const char *input;
    size_t input_len;
    struct pgw_yaml_node *stack[MAX_DEPTH];
    size_t depth;
    struct pgw_yaml_node *root;
    size_t num_nodes;
    int docs;
};

void pgw_yaml_free(struct pgw_yaml_node *n)
{
    if (n == NULL)
        return;
    for (size_t i = 0; i < n->n; i++)
        pgw_yaml_free(n->kids[i]); /* depth bounded by MAX_DEPTH */
    free(n->kids);
    free(n->str);
    free(n);
}

static unsigned mark_line(const yaml_mark_t *m) { return (unsigned)m->line + 1; }

static unsigned line_at_offset(const char *s, size_t len, size_t off)
{
    unsigned line = 1;
    for (size_t i = 0; i < off && i < len; i++)
        line += s[i] == '\n';
    return line;
}

int pgw_yaml_is(const struct pgw_yaml_node *n, const char *s)
{
    size_t len = strlen(s);
    return n->kind == PGW_YAML_SCALAR && n->len == len && memcmp(n->str, s, len) == 0;
}

int pgw_yaml_is_null(const struct pgw_yaml_node *n)
{
    return n->kind == PGW_YAML_SCALAR && n->is_plain &&
           (n->len == 0 || pgw_yaml_is(n, "~") || pgw_yaml_is(n, "null") ||
            pgw_yaml_is(n, "Null") || pgw_yaml_is(n, "NULL"));
}

const char *pgw_yaml_describe(const struct pgw_yaml_node *n)
{
    if (n->kind == PGW_YAML_MAP)
        return "a map";
    if (n->kind == PGW_YAML_SEQ)
        return "a list";
    return pgw_yaml_is_null(n) ? "nothing (null)" : "a string";
}

/* Adds <n> (owned from here on) under the open collection. */
static int attach(struct builder *b, struct pgw_yaml_node *n)
{
    if (b->depth == 0) {
        pgw_assert(b->root == NULL); /* one document only */
        b->root = n;
    } else {
        struct pgw_yaml_node *p = b->stack[b->depth - 1];
        if (p->n == p->cap) {
            p->cap = p->cap ? 2 * p->cap : 4;
            p->kids = pgw_realloc(p->kids, p->cap * sizeof(*p->kids));
        }
        p->kids[p->n++] = n;
    }
    if (++b->num_nodes > MAX_NODES) {
        pgw_errs_add(b->e, n->line, "more than %u YAML nodes: refusing to read further", MAX_NODES);
        return PGW_ERR;
    }
    return PGW_OK;
}

/* Aliases are what makes a small YAML file expand into a huge tree; the config has no use for
 * them, nor for anchors or tags, so all three are refused where they appear. */
static void check_props(struct builder *b, unsigned line, const yaml_char_t *anchor,
                        const yaml_char_t *tag)
{
    char q[PGW_ERRS_QUOTE_MAX];
    if (anchor != NULL)
        pgw_errs_add(b->e, line,
                     "anchor %s: anchors and aliases are not supported, write the value out",
                     pgw_errs_quote(q, (const char *)anchor, strlen((const char *)anchor)));
    if (tag != NULL)
        pgw_errs_add(b->e, line, "tags (%s) are not supported",
                     pgw_errs_quote(q, (const char *)tag, strlen((const char *)tag)));
}

static struct pgw_yaml_node *node_new(enum pgw_yaml_kind kind, unsigned line)
{
    struct pgw_yaml_node *n = pgw_calloc(1, sizeof(*n));
    n->kind = kind;
    n->line = line;
    return n;
}

static int add_scalar(struct builder *b, const yaml_event_t *ev)
{
    struct pgw_yaml_node *n = node_new(PGW_YAML_SCALAR, mark_line(&ev->start_mark));
    n->str = pgw_strndup((const char *)ev->data.scalar.value, ev->data.scalar.length);
    n->len = ev->data.scalar.length;
    n->is_plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    check_props(b, n->line, ev->data.scalar.anchor, ev->data.scalar.tag);
    if (memchr(n->str, '\0', n->len) != NULL) {
        pgw_errs_add(b->e, n->line, "a string contains a NUL byte");
        n->is_bad = 1;
    }
    return attach(b, n);
}

static int add_alias(struct builder *b, const yaml_event_t *ev)
{
    char q[PGW_ERRS_QUOTE_MAX];
    const char *a = (const char *)ev->data.alias.anchor;
    struct pgw_yaml_node *n = node_new(PGW_YAML_SCALAR, mark_line(&ev->start_mark));
    n->str = pgw_strndup("", 0);
    n->is_bad = 1;
    pgw_errs_add(b->e, n->line,
                 "alias %s: anchors and aliases are not supported, write the value out",
                 pgw_errs_quote(q, a, strlen(a)));
    return attach(b, n);
}

static int open_collection(struct builder *b, enum pgw_yaml_kind kind, const yaml_event_t *ev,
                           const yaml_char_t *anchor, const yaml_char_t *tag)
{
    struct pgw_yaml_node *n = node_new(kind, mark_line(&ev->start_mark));
    check_props(b, n->line, anchor, tag);
    if (attach(b, n) != PGW_OK)
        return PGW_ERR;
    if (b->depth == MAX_DEPTH) {
        pgw_errs_add(b->e, n->line, "lists and maps nested deeper than %d levels", MAX_DEPTH);
        return PGW_ERR;
    }
    b->stack[b->depth++] = n;
    return PGW_OK;
}

struct key_ref {
    const struct pgw_yaml_node *key;
    size_t pos;
};

static int key_ref_cmp(const void *a, const void *b)
{
    const struct key_ref *x = a, *y = b;
    if (x->key->len != y->key->len)
        return x->key->len < y->key->len ? -1 : 1;
    int c = memcmp(x->key->str, y->key->str, x->key->len);
    if (c != 0)
        return c;
    return x->pos < y->pos ? -1 : 1;
}

/* Duplicate keys: sorting keeps a map of many keys (upstreams) from costing n^2. */
static void check_map_keys(struct builder *b, const struct pgw_yaml_node *map)
{
    char q[PGW_ERRS_QUOTE_MAX];
    size_t nk = map->n / 2, m = 0;
    struct key_ref *v = pgw_malloc(nk * sizeof(*v));

    for (size_t i = 0; i < nk; i++) {
        const struct pgw_yaml_node *k = map->kids[2 * i];
        if (k->is_bad)
            continue;
        if (k->kind != PGW_YAML_SCALAR)
            pgw_errs_add(b->e, k->line, "map keys must be strings, got %s", pgw_yaml_describe(k));
        else
            v[m++] = (struct key_ref){k, i};
    }
    qsort(v, m, sizeof(*v), key_ref_cmp);
    for (size_t i = 1, first = 0; i < m; i++) {
        const struct pgw_yaml_node *k0 = v[first].key, *k = v[i].key;
        if (k0->len == k->len && memcmp(k0->str, k->str, k->len) == 0)
            pgw_errs_add(b->e, k->line, "duplicate key %s (first at line %u)",
                         pgw_errs_quote(q, k->str, k->len), k0->line);
        else
            first = i;
    }
    free(v);
}

static void syntax_error(struct builder *b, const yaml_parser_t *p)
{
    unsigned line = p->error == YAML_READER_ERROR
                        ? line_at_offset(b->input, b->input_len, p->problem_offset)
                        : mark_line(&p->problem_mark);
    const char *problem = p->problem ? p->problem : "unknown error";

    if (p->error == YAML_MEMORY_ERROR)
        pgw_errs_add(b->e, line, "out of memory while reading YAML");
    else if (p->context != NULL)
        pgw_errs_add(b->e, line, "YAML syntax error: %s (%s at line %u)", problem, p->context,
                     mark_line(&p->context_mark));
    else
        pgw_errs_add(b->e, line, "YAML syntax error: %s", problem);
}

/* Returns 0 to go on, 1 at the end of the stream, -1 on an error that stops reading. */
static int on_event(struct builder *b, const yaml_event_t *ev)
{
    switch (ev->type) {
    case YAML_STREAM_END_EVENT:
        return 1;
    case YAML_DOCUMENT_START_EVENT:
        if (b->docs++ > 0) {
            pgw_errs_add(b->e, mark_line(&ev->start_mark), "only one YAML document is allowed");
            return -1;
        }
        return 0;
    case YAML_ALIAS_EVENT:
        return add_alias(b, ev) == PGW_OK ? 0 : -1;
    case YAML_SCALAR_EVENT:
        return add_scalar(b, ev) == PGW_OK ? 0 : -1;
    case YAML_SEQUENCE_START_EVENT:
        return open_collection(b, PGW_YAML_SEQ, ev, ev->data.sequence_start.anchor,
                               ev->data.sequence_start.tag) == PGW_OK ? 0 : -1;
    case YAML_MAPPING_START_EVENT:
        return open_collection(b, PGW_YAML_MAP, ev, ev->data.mapping_start.anchor,
                               ev->data.mapping_start.tag) == PGW_OK ? 0 : -1;
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        pgw_assert(b->depth > 0);
        b->depth--;
        if (b->stack[b->depth]->kind == PGW_YAML_MAP)
            check_map_keys(b, b->stack[b->depth]);
        return 0;
    default: /* stream start, document end */
        return 0;
    }
}

struct pgw_yaml_node *pgw_yaml_read(struct pgw_errs *e, const char *yaml, size_t len, int *fatal)
{
    struct builder b = {.e = e, .input = yaml, .input_len = len};
    yaml_parser_t parser;
    int r = 0;

    *fatal = 0;
    if (!yaml_parser_initialize(&parser))
        pgw_assert(!"yaml_parser_initialize"); /* only fails on OOM, fatal everywhere */
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
    while (r == 0) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            syntax_error(&b, &parser);
            r = -1;
            break;
        }
        r = on_event(&b, &ev);
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    if (r < 0) {
        pgw_yaml_free(b.root);
        *fatal = 1;
        return NULL;
    }
    return b.root;
}
