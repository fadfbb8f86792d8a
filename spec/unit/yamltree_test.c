/* yamltree_test.c: the YAML tree (kinds, lines, plain and quoted scalars, nulls), what it refuses
 * (duplicate and non-string keys, anchors, aliases, tags, NUL bytes, a second document, too deep or
 * too many nodes) with the line of each error, syntax errors, empty documents, and the error
 * collector: sorting, quoting, and writing into buffers too small for everything.
 */
#include "../../gateway/yamltree.c"
#include "../support/test.h"

#include <stdlib.h>

static char errbuf[8192];
static struct pgw_errs errs;
static int fatal;

/* Reads <yaml> into a tree; its errors are written to errbuf. Free with done(). */
static struct pgw_yaml_node *parse(const char *yaml)
{
    errs = (struct pgw_errs){.file = "t.yaml"};
    struct pgw_yaml_node *root = pgw_yaml_read(&errs, yaml, strlen(yaml), &fatal);
    pgw_errs_write(&errs, errbuf, sizeof(errbuf));
    return root;
}

static void done(struct pgw_yaml_node *root)
{
    pgw_errs_clear(&errs);
    pgw_yaml_free(root);
}

#define CHECK_SCALAR(n, line_, s)                                                                  \
    do {                                                                                           \
        CHECK_INT((n)->kind, PGW_YAML_SCALAR);                                                     \
        CHECK_INT((n)->line, (line_));                                                             \
        CHECK_MEM((n)->str, (n)->len, s);                                                          \
    } while (0)

static void test_tree_shape_and_lines(void)
{
    struct pgw_yaml_node *r = parse("a: 1\n"
                                    "b: \"two\"\n"
                                    "c:\n"
                                    "  - x\n"
                                    "  - { k: v }\n"
                                    "d: [1, 2]\n"
                                    "e:\n"
                                    "f: 'q'\n");
    CHECK_INT(fatal, 0);
    CHECK_MEM(errbuf, strlen(errbuf), "");
    CHECK(r != NULL);
    if (r == NULL)
        return;
    CHECK_INT(r->kind, PGW_YAML_MAP);
    CHECK_INT(r->line, 1);
    CHECK_INT(r->n, 12); /* key, value, key, value... */

    CHECK_SCALAR(r->kids[0], 1, "a");
    CHECK_SCALAR(r->kids[1], 1, "1");
    CHECK(r->kids[1]->is_plain);
    CHECK_SCALAR(r->kids[3], 2, "two");
    CHECK(!r->kids[3]->is_plain);

    const struct pgw_yaml_node *c = r->kids[5];
    CHECK_INT(c->kind, PGW_YAML_SEQ);
    CHECK_INT(c->line, 4); /* a block list starts at its first "-" */
    CHECK_INT(c->n, 2);
    CHECK_SCALAR(c->kids[0], 4, "x");
    CHECK_INT(c->kids[1]->kind, PGW_YAML_MAP);
    CHECK_INT(c->kids[1]->line, 5);
    CHECK_INT(c->kids[1]->n, 2);
    CHECK_SCALAR(c->kids[1]->kids[1], 5, "v");

    const struct pgw_yaml_node *d = r->kids[7];
    CHECK_INT(d->kind, PGW_YAML_SEQ);
    CHECK_INT(d->line, 6);
    CHECK_INT(d->n, 2);
    CHECK_SCALAR(d->kids[1], 6, "2");

    CHECK_SCALAR(r->kids[9], 7, ""); /* "e:" with no value */
    CHECK(pgw_yaml_is_null(r->kids[9]));
    CHECK_SCALAR(r->kids[11], 8, "q");
    CHECK(!r->kids[11]->is_plain);
    for (size_t i = 0; i < r->n; i++)
        CHECK(!r->kids[i]->is_bad);
    done(r);
}

static void test_is_null_and_describe(void)
{
    struct pgw_yaml_node *r = parse("[~, null, Null, NULL, nULL, \"null\", '', x, [], {}]");
    CHECK(r != NULL && r->n == 10);
    if (r == NULL || r->n != 10)
        return;
    for (size_t i = 0; i < 4; i++)
        CHECK(pgw_yaml_is_null(r->kids[i]));
    for (size_t i = 4; i < 10; i++)
        CHECK(!pgw_yaml_is_null(r->kids[i])); /* other spellings, quoted, lists, maps */
    CHECK(strcmp(pgw_yaml_describe(r->kids[0]), "nothing (null)") == 0);
    CHECK(strcmp(pgw_yaml_describe(r->kids[5]), "a string") == 0);
    CHECK(strcmp(pgw_yaml_describe(r->kids[8]), "a list") == 0);
    CHECK(strcmp(pgw_yaml_describe(r->kids[9]), "a map") == 0);
    CHECK(pgw_yaml_is(r->kids[7], "x"));
    CHECK(!pgw_yaml_is(r->kids[7], "xx"));
    CHECK(!pgw_yaml_is(r->kids[7], ""));
    CHECK(!pgw_yaml_is(r->kids[8], ""));
    CHECK(!pgw_yaml_is(r->kids[1], "Null"));
    done(r);
}

static void test_empty_documents(void)
{
    struct pgw_yaml_node *r = parse("");
    CHECK(r == NULL);
    CHECK_INT(fatal, 0); /* empty, not broken */
    CHECK(!pgw_errs_any(&errs));
    done(r);

    r = parse("# only a comment\n\n");
    CHECK(r == NULL);
    CHECK_INT(fatal, 0);
    CHECK(!pgw_errs_any(&errs));
    done(r);

    r = parse("---\n"); /* an explicit empty document: a null root */
    CHECK(r != NULL && pgw_yaml_is_null(r));
    CHECK_INT(fatal, 0);
    done(r);

    r = parse("~\n");
    CHECK(r != NULL && pgw_yaml_is_null(r));
    CHECK_INT(r ? r->line : 0, 1);
    done(r);
}

static void test_duplicate_keys(void)
{
    struct pgw_yaml_node *r = parse("a: 1\n"
                                    "b: 2\n"
                                    "a: 3\n"
                                    "m:\n"
                                    "  a: 1\n"
                                    "  a: 2\n"
                                    "a: 4\n");
    CHECK(r != NULL); /* reported, not fatal: the schema walk still runs */
    CHECK_INT(fatal, 0);
    CHECK(strcmp(errbuf, "t.yaml:3: duplicate key \"a\" (first at line 1)\n"
                         "t.yaml:6: duplicate key \"a\" (first at line 5)\n"
                         "t.yaml:7: duplicate key \"a\" (first at line 1)\n") == 0);
    done(r);

    /* same prefix, different lengths: no false duplicate */
    r = parse("{ab: 1, a: 2, abc: 3, \"a\": 4}\n");
    CHECK(strcmp(errbuf, "t.yaml:1: duplicate key \"a\" (first at line 1)\n") == 0);
    done(r);

    r = parse("? [x]\n: 1\n? {y: 1}\n: 2\nz: 3\n");
    CHECK(r != NULL);
    CHECK_INT(fatal, 0);
    CHECK(strcmp(errbuf, "t.yaml:1: map keys must be strings, got a list\n"
                         "t.yaml:3: map keys must be strings, got a map\n") == 0);
    done(r);
}

#define NOT_SUPPORTED ": anchors and aliases are not supported, write the value out\n"

static void test_anchors_aliases_tags(void)
{
    struct pgw_yaml_node *r = parse("a: &x 1\n"
                                    "b: *x\n"
                                    "c: !!str 3\n"
                                    "d: !local { }\n"
                                    "e: &m [1]\n");
    CHECK(r != NULL);
    CHECK_INT(fatal, 0);
    CHECK(strcmp(errbuf, "t.yaml:1: anchor \"x\"" NOT_SUPPORTED
                         "t.yaml:2: alias \"x\"" NOT_SUPPORTED
                         "t.yaml:3: tags (\"tag:yaml.org,2002:str\") are not supported\n"
                         "t.yaml:4: tags (\"!local\") are not supported\n"
                         "t.yaml:5: anchor \"m\"" NOT_SUPPORTED) == 0);
    if (r != NULL && r->n == 10) {
        const struct pgw_yaml_node *alias = r->kids[3];
        CHECK_SCALAR(alias, 2, ""); /* a placeholder, never the anchored value */
        CHECK(alias->is_bad);
        CHECK(!r->kids[1]->is_bad); /* the anchored value itself is kept */
        CHECK_INT(r->kids[9]->kind, PGW_YAML_SEQ);
    }
    done(r);

    /* an alias used as a key is reported once, as an alias, not also as a duplicate */
    r = parse("k: &k v\n*k : 1\n*k : 2\n");
    CHECK(strcmp(errbuf, "t.yaml:1: anchor \"k\"" NOT_SUPPORTED
                         "t.yaml:2: alias \"k\"" NOT_SUPPORTED
                         "t.yaml:3: alias \"k\"" NOT_SUPPORTED) == 0);
    done(r);
}

static void test_nul_byte(void)
{
    struct pgw_yaml_node *r = parse("a: \"x\\0y\"\n");
    CHECK(r != NULL && r->n == 2);
    CHECK(strcmp(errbuf, "t.yaml:1: a string contains a NUL byte\n") == 0);
    if (r != NULL && r->n == 2) {
        CHECK(r->kids[1]->is_bad);
        CHECK_INT(r->kids[1]->len, 3);
    }
    done(r);
}

static void test_fatal_errors(void)
{
    struct pgw_yaml_node *r = parse("a: 1\nb: [1, 2\n");
    CHECK(r == NULL);
    CHECK_INT(fatal, 1);
    CHECK(strcmp(errbuf, "t.yaml:3: YAML syntax error: did not find expected ',' or ']' "
                         "(while parsing a flow sequence at line 2)\n") == 0);
    done(r);

    r = parse("limits:\n  body: 1k\n   header_fields: 5\n");
    CHECK(r == NULL && fatal);
    CHECK(strcmp(errbuf, "t.yaml:3: YAML syntax error: mapping values are not allowed in this "
                         "context\n") == 0);
    done(r);

    r = parse("a: 1\n\xff: 1\n"); /* a reader error: its line is counted from the byte offset */
    CHECK(r == NULL && fatal);
    CHECK(strcmp(errbuf, "t.yaml:2: YAML syntax error: invalid leading UTF-8 octet\n") == 0);
    done(r);

    r = parse("a: 1\n---\nb: 2\n");
    CHECK(r == NULL && fatal);
    CHECK(strcmp(errbuf, "t.yaml:2: only one YAML document is allowed\n") == 0);
    done(r);

    /* errors found before the fatal one are kept, in line order */
    r = parse("a: &x 1\nb: [\n");
    CHECK(r == NULL && fatal);
    CHECK(strncmp(errbuf, "t.yaml:1: anchor \"x\"", 20) == 0);
    CHECK(strstr(errbuf, "\nt.yaml:3: YAML syntax error: ") != NULL);
    done(r);
}

static void test_bounds(void)
{
    char deep[2 * MAX_DEPTH + 8];
    size_t n = 0;
    for (int i = 0; i <= MAX_DEPTH; i++)
        deep[n++] = '[';
    for (int i = 0; i <= MAX_DEPTH; i++)
        deep[n++] = ']';
    deep[n] = '\0';
    struct pgw_yaml_node *r = parse(deep);
    CHECK(r == NULL && fatal);
    CHECK(strcmp(errbuf, "t.yaml:1: lists and maps nested deeper than 64 levels\n") == 0);
    done(r);

    /* MAX_DEPTH levels exactly are fine */
    memset(deep, '[', MAX_DEPTH);
    memset(deep + MAX_DEPTH, ']', MAX_DEPTH);
    deep[2 * MAX_DEPTH] = '\0';
    r = parse(deep);
    CHECK(r != NULL && !fatal && !pgw_errs_any(&errs));
    done(r);

    /* a flow list of MAX_NODES scalars, plus the list itself: one node too many */
    size_t len = 1 + 2 * (size_t)MAX_NODES;
    char *big = pgw_malloc(len + 1);
    big[0] = '[';
    for (size_t i = 0; i < MAX_NODES; i++)
        memcpy(big + 1 + 2 * i, "0,", 2);
    big[len - 1] = ']'; /* in place of the last ',' */
    big[len] = '\0';
    r = parse(big);
    CHECK(r == NULL && fatal);
    CHECK(strcmp(errbuf, "t.yaml:1: more than 1000000 YAML nodes: refusing to read further\n") ==
          0);
    done(r);
    free(big);
}

static void test_errs_sorted_by_line(void)
{
    struct pgw_errs e = {.file = "f.yaml"};
    char buf[256];

    CHECK(!pgw_errs_any(&e));
    pgw_errs_add(&e, 5, "five-a");
    pgw_errs_add(&e, 2, "two");
    pgw_errs_add(&e, 5, "five-b %d", 42);
    pgw_errs_add(&e, 1, "one");
    pgw_errs_add(&e, 5, "five-c");
    CHECK(pgw_errs_any(&e));
    pgw_errs_write(&e, buf, sizeof(buf));
    CHECK(strcmp(buf, "f.yaml:1: one\n"
                      "f.yaml:2: two\n"
                      "f.yaml:5: five-a\n" /* same line: order of discovery */
                      "f.yaml:5: five-b 42\n"
                      "f.yaml:5: five-c\n") == 0);
    pgw_errs_write(&e, buf, sizeof(buf)); /* writing twice gives the same text */
    CHECK(strncmp(buf, "f.yaml:1: one\nf.yaml:2: two\nf.yaml:5: five-a\n", 44) == 0);
    pgw_errs_clear(&e);

    /* a message longer than PGW_ERRS_MSG_MAX is cut, not overflowed */
    char long_msg[2 * PGW_ERRS_MSG_MAX];
    static char big[2 * PGW_ERRS_MSG_MAX];
    memset(long_msg, 'x', sizeof(long_msg) - 1);
    long_msg[sizeof(long_msg) - 1] = '\0';
    e = (struct pgw_errs){.file = "f"};
    pgw_errs_add(&e, 1, "%s", long_msg);
    pgw_errs_write(&e, big, sizeof(big));
    CHECK_INT(strlen(big), strlen("f:1: ") + PGW_ERRS_MSG_MAX - 1 + 1);
    pgw_errs_clear(&e);
}

static void test_errs_write_small_buffers(void)
{
    static const char l1[] = "f.yaml:1: first\n",
                      l2[] = "f.yaml:2: a second message, longer than the count of the rest\n",
                      more1[] = "f.yaml: 1 more error(s) not shown\n",
                      more2[] = "f.yaml: 2 more error(s) not shown\n";
    struct pgw_errs e = {.file = "f.yaml"};
    char buf[512];

    pgw_errs_add(&e, 3, "a third message, longer than the count of the rest");
    pgw_errs_add(&e, 1, "first");
    pgw_errs_add(&e, 2, "a second message, longer than the count of the rest");
    CHECK(strlen(l2) > strlen(more1) + 1);

    /* two whole lines and the count */
    memset(buf, 'Z', sizeof(buf));
    pgw_errs_write(&e, buf, strlen(l1) + strlen(l2) + strlen(more1) + 1);
    CHECK(strncmp(buf, l1, strlen(l1)) == 0);
    CHECK(strncmp(buf + strlen(l1), l2, strlen(l2)) == 0);
    CHECK(strcmp(buf + strlen(l1) + strlen(l2), more1) == 0);

    /* two whole lines and no room for the count: never half a line, never half a count */
    memset(buf, 'Z', sizeof(buf));
    pgw_errs_write(&e, buf, strlen(l1) + strlen(l2) + strlen(more1));
    CHECK_INT(strlen(buf), strlen(l1) + strlen(l2));
    CHECK(strncmp(buf + strlen(l1), l2, strlen(l2)) == 0);

    /* a line and a half: the half line is left out, the count says what is missing */
    memset(buf, 'Z', sizeof(buf));
    pgw_errs_write(&e, buf, strlen(l1) + strlen(more2) + 1);
    CHECK_INT(strlen(buf), strlen(l1) + strlen(more2));
    CHECK(strcmp(buf + strlen(l1), more2) == 0);

    /* too small for the first line: its truncated start, NUL-terminated */
    memset(buf, 'Z', sizeof(buf));
    pgw_errs_write(&e, buf, 8);
    CHECK(strcmp(buf, "f.yaml:") == 0);

    memset(buf, 'Z', sizeof(buf));
    pgw_errs_write(&e, buf, 1);
    CHECK_INT(buf[0], '\0');
    CHECK_INT(buf[1], 'Z');

    memset(buf, 'Z', sizeof(buf));
    pgw_errs_write(&e, buf, 0); /* nothing written at all */
    CHECK_INT(buf[0], 'Z');
    pgw_errs_write(&e, NULL, 10);

    /* everything fits */
    pgw_errs_write(&e, buf, sizeof(buf));
    CHECK(strncmp(buf, l1, strlen(l1)) == 0);
    CHECK(strstr(buf, "f.yaml:3: a third message") != NULL);
    CHECK(strstr(buf, "more error") == NULL);
    CHECK_INT(buf[strlen(buf) - 1], '\n');
    pgw_errs_clear(&e);

    /* past MAX_ERRORS, errors are only counted */
    static char big[64 * 1024];
    e = (struct pgw_errs){.file = "f"};
    for (unsigned i = 0; i < MAX_ERRORS + 5; i++)
        pgw_errs_add(&e, i + 1, "e");
    CHECK_INT(e.n, MAX_ERRORS);
    CHECK_INT(e.dropped, 5);
    pgw_errs_write(&e, big, sizeof(big));
    CHECK(strncmp(big, "f:1: e\nf:2: e\n", 14) == 0);
    const char *tail = "f:1000: e\nf: 5 more error(s) not shown\n";
    CHECK(strlen(big) > strlen(tail) && strcmp(big + strlen(big) - strlen(tail), tail) == 0);
    pgw_errs_clear(&e);
}

static void test_quote(void)
{
    char q[PGW_ERRS_QUOTE_MAX], s[100];

    CHECK(strcmp(pgw_errs_quote(q, "abc", 3), "\"abc\"") == 0);
    CHECK(strcmp(pgw_errs_quote(q, "", 0), "\"\"") == 0);
    CHECK(strcmp(pgw_errs_quote(q, "a\"b\\c\n\x7f\xc3\xa9", 9),
                 "\"a\\x22b\\x5cc\\x0a\\x7f\\xc3\\xa9\"") == 0);
    CHECK(strcmp(pgw_errs_quote(q, "ab\0cd", 5), "\"ab\\x00cd\"") == 0); /* the length counts */

    memset(s, 'a', sizeof(s));
    pgw_errs_quote(q, s, 48);
    CHECK_INT(strlen(q), 50); /* 48 bytes fit whole */
    pgw_errs_quote(q, s, 49);
    CHECK_INT(strlen(q), 53); /* 48, then "..." */
    CHECK(strcmp(q + 49, "\"...") == 0);

    memset(s, '\x01', sizeof(s)); /* the worst case still fits the buffer */
    pgw_errs_quote(q, s, sizeof(s));
    CHECK(strlen(q) < sizeof(q));
    CHECK(strcmp(q + strlen(q) - 4, "\"...") == 0);
}

int main(void)
{
    RUN(test_tree_shape_and_lines);
    RUN(test_is_null_and_describe);
    RUN(test_empty_documents);
    RUN(test_duplicate_keys);
    RUN(test_anchors_aliases_tags);
    RUN(test_nul_byte);
    RUN(test_fatal_errors);
    RUN(test_bounds);
    RUN(test_errs_sorted_by_line);
    RUN(test_errs_write_small_buffers);
    RUN(test_quote);
    return TEST_REPORT("yamltree");
}
