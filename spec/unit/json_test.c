/* json_test.c: the strict JSON reader of json.c. Every document is copied into a heap buffer of
 * exactly its length (no NUL after it), so that a read past its end is an ASan report: valid
 * documents of every type, every invalid shape (grammar, numbers, escapes, surrogates, UTF-8,
 * depth), unique top-level names, iteration, lookups, string decoding, numbers, every prefix of
 * valid documents, and a deterministic mutation pass over a few documents.
 */
#include "../../gateway/json.c"
#include "../support/test.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* ---- Helpers ---- */

static char *heap_copy(const char *s, size_t n)
{
    char *p = malloc(n > 0 ? n : 1);
    pgw_assert(p != NULL);
    memcpy(p, s, n);
    return p;
}

/* Parses <s,n> from an exact-size heap copy. The copy is kept in *keep (freed by the caller) when
 * keep is not NULL, so that the spans in *root stay valid. */
static int parse_n(const char *s, size_t n, int depth, unsigned flags, struct pgw_json *root,
                   const char **reason, char **keep)
{
    char *p = heap_copy(s, n);
    struct pgw_json r;
    const char *why = NULL;
    int rc = pgw_json_parse(p, n, depth, flags, &r, &why);
    if (root != NULL)
        *root = r;
    if (reason != NULL)
        *reason = why;
    if (rc != PGW_OK && why == NULL) {
        fprintf(stderr, "FAIL %s: no reason for a refused document\n", test_current);
        test_current_failed = 1;
    }
    if (keep != NULL)
        *keep = p;
    else
        free(p);
    return rc;
}

static int ok_doc(const char *s) { return parse_n(s, strlen(s), 16, 0, NULL, NULL, NULL) == PGW_OK; }
static int ok_doc_n(const char *s, size_t n) { return parse_n(s, n, 16, 0, NULL, NULL, NULL) == PGW_OK; }

/* Each of these must be refused; reports the ones that are not. */
static void expect_invalid(const char *const *docs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ok_doc(docs[i])) {
            fprintf(stderr, "FAIL %s: accepted invalid document [%zu] <%s>\n", test_current, i,
                    docs[i]);
            test_current_failed = 1;
        }
}

static void expect_valid(const char *const *docs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const char *why = NULL;
        if (parse_n(docs[i], strlen(docs[i]), 16, 0, NULL, &why, NULL) != PGW_OK) {
            fprintf(stderr, "FAIL %s: refused valid document [%zu] <%s>: %s\n", test_current, i,
                    docs[i], why ? why : "?");
            test_current_failed = 1;
        }
    }
}

/* A string value "<body>" (body is the raw bytes between the quotes). */
static int ok_string(const char *body, size_t n)
{
    char doc[256];
    pgw_assert(n + 2 <= sizeof(doc));
    doc[0] = '"';
    memcpy(doc + 1, body, n);
    doc[n + 1] = '"';
    return ok_doc_n(doc, n + 2);
}
#define OK_STRING(lit) ok_string((lit), sizeof(lit) - 1)

/* Walks a validated value completely: every member, element, string (decoded into an exact-size
 * heap buffer) and number. Returns the number of values seen. */
static size_t walk(const struct pgw_json *v)
{
    size_t count = 1;
    if (v->type == PGW_JSON_OBJECT || v->type == PGW_JSON_ARRAY) {
        struct pgw_json k, x;
        size_t pos = 0;
        while (pgw_json_next(v, &pos, &k, &x) == PGW_OK) {
            if (v->type == PGW_JSON_OBJECT) {
                CHECK_INT(k.type, PGW_JSON_STRING);
                count += walk(&k) - 1; /* a name is not a value */
            }
            count += walk(&x);
        }
    } else if (v->type == PGW_JSON_STRING) {
        char *out = malloc(v->len);
        size_t l = 0;
        CHECK_INT(pgw_json_str(v, out, v->len, &l), PGW_OK); /* decoded is never longer */
        CHECK(l <= v->len - 2);
        free(out);
    } else if (v->type == PGW_JSON_NUMBER) {
        double d;
        CHECK_INT(pgw_json_num(v, &d), PGW_OK);
    }
    return count;
}

/* ---- Valid documents ---- */

static void test_valid_types(void)
{
    static const struct {
        const char *doc;
        int type;
        size_t off, len; /* of the root span */
    } cases[] = {
        {"{}", PGW_JSON_OBJECT, 0, 2},
        {"[]", PGW_JSON_ARRAY, 0, 2},
        {"\"\"", PGW_JSON_STRING, 0, 2},
        {"\"abc\"", PGW_JSON_STRING, 0, 5},
        {"0", PGW_JSON_NUMBER, 0, 1},
        {"-12.5e+3", PGW_JSON_NUMBER, 0, 8},
        {"true", PGW_JSON_TRUE, 0, 4},
        {"false", PGW_JSON_FALSE, 0, 5},
        {"null", PGW_JSON_NULL, 0, 4},
        {" \t\r\n{ \"a\" : [ 1 , 2 ] }\n ", PGW_JSON_OBJECT, 4, 19},
        {"  42  ", PGW_JSON_NUMBER, 2, 2},
        {"\n\"x\"", PGW_JSON_STRING, 1, 3},
        {"[{\"a\":{\"b\":[null,true,false,\"s\",-0.5e-2,{}]}},[]]", PGW_JSON_ARRAY, 0, 49},
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(cases); i++) {
        struct pgw_json root;
        const char *why = NULL;
        char *keep;
        size_t n = strlen(cases[i].doc);
        int rc = parse_n(cases[i].doc, n, 16, 0, &root, &why, &keep);
        CHECK_INT(rc, PGW_OK);
        if (rc == PGW_OK) {
            CHECK_INT(root.type, cases[i].type);
            CHECK_INT(root.p - keep, cases[i].off);
            CHECK_INT(root.len, cases[i].len);
        }
        free(keep);
    }
    /* with every flag, scalars and arrays as roots too */
    struct pgw_json root;
    CHECK_INT(parse_n("[1,1]", 5, 16, PGW_JSON_UNIQUE_TOP, &root, NULL, NULL), PGW_OK);
    CHECK_INT(parse_n("\"a\"", 3, 16, PGW_JSON_UNIQUE_TOP, &root, NULL, NULL), PGW_OK);

    static const char *const valid[] = {
        "{\"\":0}",       "[\"\\u0000\"]", "{\"a\":{\"a\":{\"a\":1}}}", "[[],[[]],{}]",
        "\"\x7f\"",       "[0,-0,0.0,-0.0]", "[1e0,1E0,1e+0,1e-0,1.5E+10]", "[123456789012345678901234567890]",
        "{\"a\" :1 ,\"b\":2}", "[true ,false, null]", "\"\\/\\\\\\\"\\b\\f\\n\\r\\t\"",
    };
    expect_valid(valid, PGW_ARRAY_LEN(valid));
}

static void test_numbers(void)
{
    static const char *const valid[] = {"0",    "-0",     "1",      "-1",   "10",   "1.0",
                                        "1e5",  "1E-5",   "1.25e+3", "0.0", "-0.5e0", "0e0",
                                        "9007199254740993", "1e400", "-1e-400"};
    expect_valid(valid, PGW_ARRAY_LEN(valid));
    static const char *const invalid[] = {
        "01",  "-01", "00",   "1.",   ".1",   "+1",   "-",    "1e",  "1e+",  "1e-",   "1.e3",
        "0x10", "NaN", "Infinity", "-Infinity", "1 2", "--1", "1.5.2", "1e5e5", "- 1", "[01]",
        "[1.]", "{\"a\":-}", "0.", "1ee2", "1e+-2", "\xef\xbc\x91" /* fullwidth 1 */,
    };
    expect_invalid(invalid, PGW_ARRAY_LEN(invalid));
}

static void test_literals_and_structure(void)
{
    static const char *const invalid[] = {
        "", " ", "\t\n", "tru", "True", "TRUE", "nul", "nulll", "falsey", "t", "f", "n", "truefalse",
        "[1,]", "{\"a\":1,}", "[,1]", "{,}", "[1 2]", "{\"a\" 1}", "{\"a\":}", "{a:1}", "{'a':1}",
        "{1:1}", "{null:1}", "[", "]", "{", "}", "[1}", "{\"a\":1]", "[1],", "{} {}", "[]x", "\"a\"\"b\"",
        "{\"a\":1 \"b\":2}", "[1,,2]", "{\"a\"}", "{\"a\":1:2}", "/*x*/1", "[1]//", "#", "\xEF\xBB\xBF{}",
        "\v1", "1\f", "\xC2\xA0 1", "[\"a\" \"b\"]", "{\"a\",1}", "[}", "{]", "[[]", "[]]", "{\"a\":{}",
        "'a'", "undefined",
    };
    expect_invalid(invalid, PGW_ARRAY_LEN(invalid));
    /* a NUL byte inside the length: trailing garbage, or inside a value */
    CHECK(!ok_doc_n("1\0", 2));
    CHECK(!ok_doc_n("[1\0]", 4));
    CHECK(!ok_doc_n("\0", 1));
    CHECK(!ok_doc_n("{\"a\":1}\0", 8));
    /* the reasons name the problem */
    const char *why;
    CHECK_INT(parse_n("[1] x", 5, 16, 0, NULL, &why, NULL), PGW_ERR);
    CHECK(why != NULL && strstr(why, "after the value") != NULL);
    CHECK_INT(parse_n("", 0, 16, 0, NULL, &why, NULL), PGW_ERR);
    CHECK(why != NULL && strstr(why, "end of input") != NULL);
}

static void test_strings(void)
{
    /* bare control characters */
    for (int c = 0; c < 0x20; c++) {
        char b[1] = {(char)c};
        if (ok_string(b, 1)) {
            fprintf(stderr, "FAIL %s: accepted control character 0x%02x\n", test_current, c);
            test_current_failed = 1;
        }
    }
    CHECK(OK_STRING("\x20"));
    CHECK(OK_STRING("\x7f"));
    /* escapes */
    CHECK(OK_STRING("\\\" \\\\ \\/ \\b \\f \\n \\r \\t"));
    CHECK(OK_STRING("\\u0041\\u00e9\\u00E9\\uFFFF\\u0000"));
    static const char *const bad_escapes[] = {"\\a", "\\x41", "\\U0041", "\\u12", "\\u12G4", "\\'",
                                              "\\0", "\\ ", "\\u", "\\u-123", "\\u+123", "\\u 123",
                                              "\\e", "\\v", "\\N"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad_escapes); i++)
        if (ok_string(bad_escapes[i], strlen(bad_escapes[i]))) {
            fprintf(stderr, "FAIL %s: accepted escape <%s>\n", test_current, bad_escapes[i]);
            test_current_failed = 1;
        }
    /* surrogates */
    CHECK(OK_STRING("\\ud83d\\ude00"));
    CHECK(OK_STRING("\\uD83D\\uDE00"));
    CHECK(OK_STRING("\\uDBFF\\uDFFF"));
    CHECK(OK_STRING("\\uD800\\uDC00"));
    CHECK(OK_STRING("\\uD7FF\\uE000"));
    static const char *const bad_surrogates[] = {
        "\\ud800",         "\\udc00",       "\\udfff",        "\\ud800x",       "\\ud800\\u0041",
        "\\ud800\\ud800",  "\\udc00\\ud800", "\\ud800\\",      "\\ud800\\u",     "\\ud800\\udc0",
        "\\ud800\\n",      "a\\udbff",       "\\ud800\\uE000", "\\ud800 \\udc00", "\\ud800\\\\udc00",
        "\\ud800\\uZc00",
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad_surrogates); i++)
        if (ok_string(bad_surrogates[i], strlen(bad_surrogates[i]))) {
            fprintf(stderr, "FAIL %s: accepted surrogate <%s>\n", test_current, bad_surrogates[i]);
            test_current_failed = 1;
        }
    /* UTF-8 */
    static const char *const good_utf8[] = {
        "\xC3\xA9",         "\xC2\x80",         "\xDF\xBF",         "\xE0\xA0\x80",
        "\xE2\x82\xAC",     "\xED\x9F\xBF",     "\xEE\x80\x80",     "\xEF\xBF\xBF",
        "\xF0\x90\x80\x80", "\xF0\x9F\x98\x80", "\xF4\x8F\xBF\xBF",
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(good_utf8); i++)
        if (!ok_string(good_utf8[i], strlen(good_utf8[i]))) {
            fprintf(stderr, "FAIL %s: refused UTF-8 [%zu]\n", test_current, i);
            test_current_failed = 1;
        }
    static const char *const bad_utf8[] = {
        "\xC0\x80",         "\xC1\xBF",         "\xE0\x80\x80",     "\xE0\x9F\xBF",
        "\xF0\x8F\xBF\xBF", "\xF0\x80\x80\x80", "\xED\xA0\x80",     "\xED\xBF\xBF",
        "\xF4\x90\x80\x80", "\xF5\x80\x80\x80", "\xF7\xBF\xBF\xBF", "\xF8\x88\x80\x80\x80",
        "\xFC\x84\x80\x80\x80\x80", "\xFE", "\xFF", "\x80", "\xBF", "\xC3", "\xE2\x82",
        "\xF0\x9F\x98", "\xC3\x28", "\xE2\x28\xA1", "\xE2\x82\x28", "\xF0\x28\x8C\xBC",
        "\xC3\xA9\x80", "a\xC3",
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad_utf8); i++)
        if (ok_string(bad_utf8[i], strlen(bad_utf8[i]))) {
            fprintf(stderr, "FAIL %s: accepted bad UTF-8 [%zu]\n", test_current, i);
            test_current_failed = 1;
        }
    /* a truncated sequence right at the end of the input (no closing quote to read) */
    CHECK(!ok_doc_n("\"\xC3", 2));
    CHECK(!ok_doc_n("\"\xE2\x82", 3));
    CHECK(!ok_doc_n("\"\xF0\x9F\x98", 4));
    /* member names obey the same rules */
    CHECK(!ok_doc("{\"\x01\":1}"));
    CHECK(!ok_doc("{\"\\ud800\":1}"));
    CHECK(!ok_doc("{\"\xC0\x80\":1}"));
    CHECK(ok_doc("{\"\\ud83d\\ude00\":1}"));
    /* unterminated */
    static const char *const unterminated[] = {"\"", "\"abc", "\"abc\\", "\"abc\\\"", "\"\\u00",
                                               "\"\\u", "\"\\ud83d\\ude0", "[\"a]", "{\"a:1}",
                                               "{\"a\":\"b}"};
    expect_invalid(unterminated, PGW_ARRAY_LEN(unterminated));
}

static char *nested(char *buf, int levels, const char *open, const char *inner, const char *close)
{
    buf[0] = '\0';
    for (int i = 0; i < levels; i++)
        strcat(buf, open);
    strcat(buf, inner);
    for (int i = 0; i < levels; i++)
        strcat(buf, close);
    return buf;
}

/* Long strings go 16 (SSE2) then 8 bytes at a time: one special byte (or sequence) at every offset of a
 * 40-byte ASCII run, inside a string, must be judged as the byte-wise rules say. */
static void test_strings_word_at_a_time(void)
{
    static const struct {
        const char *bytes;
        int ok;
    } cases[] = {
        {"\x7f", 1},     {"~", 1},         {" ", 1},        {"\x1f", 0},     {"\x01", 0},
        {"\t", 0},       {"\\n", 1},      {"\\\"", 1},   {"\\u00e9", 1}, {"\\x", 0},
        {"\xc3\xa9", 1}, {"\xe2\x82\xac", 1}, {"\xf0\x9f\x98\x80", 1}, {"\x80", 0},
        {"\xc3", 0},     {"\xed\xa0\x80", 0}, {"\xff", 0}, {"\"", 0}, /* an early end */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t bl = strlen(cases[i].bytes);
        for (size_t at = 0; at <= 40; at++) {
            char doc[128];
            size_t n = 0;
            doc[n++] = '"';
            for (size_t k = 0; k <= 40; k++) {
                if (k == at) {
                    memcpy(doc + n, cases[i].bytes, bl);
                    n += bl;
                }
                if (k < 40)
                    doc[n++] = (char)('a' + k % 26);
            }
            doc[n++] = '"';
            int rc = parse_n(doc, n, 4, 0, NULL, NULL, NULL);
            if ((rc == PGW_OK) != cases[i].ok) {
                fprintf(stderr, "FAIL %s: case %zu at offset %zu: rc %d\n", test_current, i, at, rc);
                test_current_failed = 1;
            }
        }
    }
}

static void test_depth(void)
{
    char doc[4096];
    const char *why;
    for (int max = 0; max <= 20; max++) {
        /* arrays: exactly at the bound, and one over */
        nested(doc, max, "[", "1", "]");
        CHECK_INT(parse_n(doc, strlen(doc), max, 0, NULL, NULL, NULL), PGW_OK);
        nested(doc, max + 1, "[", "1", "]");
        CHECK_INT(parse_n(doc, strlen(doc), max, 0, NULL, &why, NULL), PGW_ERR);
        CHECK(why != NULL && strstr(why, "deep") != NULL);
        /* empty innermost container counts too */
        if (max > 0) {
            nested(doc, max - 1, "[", "[]", "]");
            CHECK_INT(parse_n(doc, strlen(doc), max, 0, NULL, NULL, NULL), PGW_OK);
        }
        nested(doc, max, "[", "[]", "]");
        CHECK_INT(parse_n(doc, strlen(doc), max, 0, NULL, NULL, NULL), PGW_ERR);
        /* objects */
        nested(doc, max, "{\"a\":", "true", "}");
        CHECK_INT(parse_n(doc, strlen(doc), max, 0, NULL, NULL, NULL), PGW_OK);
        nested(doc, max + 1, "{\"a\":", "true", "}");
        CHECK_INT(parse_n(doc, strlen(doc), max, 0, NULL, NULL, NULL), PGW_ERR);
        /* mixed */
        nested(doc, max, "[{\"k\":[]},{\"a\":", "{}", "}]");
        int depth = 2 * max + 1; /* each level: an array then an object; {} innermost */
        CHECK_INT(parse_n(doc, strlen(doc), depth, 0, NULL, NULL, NULL), PGW_OK);
        CHECK_INT(parse_n(doc, strlen(doc), depth - 1, 0, NULL, NULL, NULL), PGW_ERR);
    }
    /* siblings do not add up: depth is nesting, not count */
    CHECK_INT(parse_n("[[1],[2],[3],{\"a\":[4]}]", 23, 3, 0, NULL, NULL, NULL), PGW_OK);
    /* scalars need no depth */
    CHECK_INT(parse_n("1", 1, 0, 0, NULL, NULL, NULL), PGW_OK);
    CHECK_INT(parse_n("{}", 2, 0, 0, NULL, NULL, NULL), PGW_ERR);
    /* a huge nesting is refused at the bound, without deep recursion */
    size_t big = 1u << 20;
    char *deep = malloc(big);
    memset(deep, '[', big);
    CHECK_INT(parse_n(deep, big, 16, 0, NULL, &why, NULL), PGW_ERR);
    memset(deep, '{', big);
    CHECK_INT(parse_n(deep, big, 16, 0, NULL, NULL, NULL), PGW_ERR);
    for (size_t i = 0; i + 5 <= big; i += 5)
        memcpy(deep + i, "{\"a\":", 5);
    CHECK_INT(parse_n(deep, big / 5 * 5, 16, 0, NULL, NULL, NULL), PGW_ERR);
    free(deep);
}

/* ---- Unique top-level names ---- */

static void test_unique_top(void)
{
    struct pgw_json root, v;
    const char *why;
    char *keep;
    double d;
    /* without the flag: accepted, and get gives the last one */
    CHECK_INT(parse_n("{\"a\":1,\"b\":2,\"a\":3}", 19, 16, 0, &root, NULL, &keep), PGW_OK);
    CHECK_INT(pgw_json_get(&root, "a", &v), PGW_OK);
    CHECK_INT(pgw_json_num(&v, &d), PGW_OK);
    CHECK(d == 3);
    free(keep);
    static const char *const dups[] = {
        "{\"a\":1,\"a\":1}",
        "{\"a\":1,\"b\":2,\"a\":3}",
        "{\"alg\":\"RS256\",\"\\u0061lg\":\"none\"}",
        "{\"\\u0061lg\":\"none\",\"alg\":\"RS256\"}",
        "{\"\\u0061\\u006c\\u0067\":1,\"\\u0061lg\":2}",
        "{\"a/b\":1,\"a\\/b\":2}",
        "{\"\\u00e9\":1,\"\xC3\xA9\":2}",
        "{\"\\ud83d\\ude00\":1,\"\xF0\x9F\x98\x80\":2}",
        "{\"\":1,\"\":2}",
        "{\"\\u0000\":1,\"\\u0000\":2}",
        "{\"x\":[],\"y\":{},\"x\":null}",
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(dups); i++) {
        size_t n = strlen(dups[i]);
        CHECK_INT(parse_n(dups[i], n, 16, 0, NULL, NULL, NULL), PGW_OK);
        if (parse_n(dups[i], n, 16, PGW_JSON_UNIQUE_TOP, NULL, &why, NULL) == PGW_OK) {
            fprintf(stderr, "FAIL %s: accepted repeated names [%zu] <%s>\n", test_current, i, dups[i]);
            test_current_failed = 1;
        } else {
            CHECK(why != NULL && strstr(why, "repeated") != NULL);
        }
    }
    static const char *const distinct[] = {
        "{\"a\":1,\"A\":1}",
        "{\"a\":1,\"a \":1}",
        "{\"\\u0061\":1,\"\\u0062\":1}",
        "{\"a\":{\"b\":1,\"b\":2},\"c\":[{\"d\":1,\"d\":1}]}", /* only the top level is checked */
        "{\"\\u0000\":1,\"\":2}",
        "{\"\\u00e9\":1,\"e\":2}",
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(distinct); i++)
        if (parse_n(distinct[i], strlen(distinct[i]), 16, PGW_JSON_UNIQUE_TOP, NULL, &why, NULL) !=
            PGW_OK) {
            fprintf(stderr, "FAIL %s: refused distinct names [%zu] <%s>: %s\n", test_current, i,
                    distinct[i], why);
            test_current_failed = 1;
        }
    /* at most 256 members with the flag */
    char doc[8192];
    for (int members = 255; members <= 257; members++) {
        size_t l = 0;
        doc[l++] = '{';
        for (int i = 0; i < members; i++)
            l += (size_t)snprintf(doc + l, sizeof(doc) - l, "%s\"m%d\":%d", i ? "," : "", i, i);
        doc[l++] = '}';
        CHECK_INT(parse_n(doc, l, 16, 0, NULL, NULL, NULL), PGW_OK);
        CHECK_INT(parse_n(doc, l, 16, PGW_JSON_UNIQUE_TOP, NULL, &why, NULL),
                  members <= 256 ? PGW_OK : PGW_ERR);
    }
}

/* The flag promises distinct *decoded* names: a long name written once plainly and once with an
 * escape must be refused too (same_name() falls back to comparing raw bytes past 512 bytes). */
static void test_unique_top_long_names(void)
{
    static char doc[4096];
    for (size_t name_len = 100; name_len <= 1500; name_len += 700) {
        size_t l = 0;
        doc[l++] = '{';
        doc[l++] = '"';
        memset(doc + l, 'a', name_len);
        l += name_len;
        memcpy(doc + l, "\":1,\"\\u0061", 11);
        l += 11;
        memset(doc + l, 'a', name_len - 1);
        l += name_len - 1;
        memcpy(doc + l, "\":2}", 4);
        l += 4;
        const char *why = NULL;
        int rc = parse_n(doc, l, 16, PGW_JSON_UNIQUE_TOP, NULL, &why, NULL);
        if (rc == PGW_OK) {
            fprintf(stderr, "FAIL %s: names of %zu bytes, one escaped, taken as distinct\n",
                    test_current, name_len);
            test_current_failed = 1;
        }
        /* control: the same two names differing in their last byte are distinct */
        doc[l - 5] = 'b';
        rc = parse_n(doc, l, 16, PGW_JSON_UNIQUE_TOP, NULL, &why, NULL);
        if (rc != PGW_OK) {
            fprintf(stderr, "FAIL %s: distinct names of %zu bytes refused: %s\n", test_current,
                    name_len, why);
            test_current_failed = 1;
        }
    }
    /* two long names, each with escapes in different places, that decode to the same text */
    size_t l = 0;
    char a[1200], b[1200];
    memset(a, 'x', sizeof(a));
    memset(b, 'x', sizeof(b));
    memcpy(a, "\\u0078", 6);            /* \u0078 is 'x' */
    memcpy(b + sizeof(b) - 6, "\\u0078", 6);
    l += (size_t)snprintf(doc + l, sizeof(doc) - l, "{\"%.*s\":1,\"%.*s\":2}", (int)sizeof(a), a,
                          (int)sizeof(b), b);
    CHECK_INT(parse_n(doc, l, 16, 0, NULL, NULL, NULL), PGW_OK);
    CHECK_INT(parse_n(doc, l, 16, PGW_JSON_UNIQUE_TOP, NULL, NULL, NULL), PGW_ERR);
}

/* ---- Walking ---- */

static void test_iteration(void)
{
    struct pgw_json root, k, v, k2, v2;
    char *keep;
    size_t pos;
    const char *doc = " { \"a\" : 1 , \"b\":[ true ,\"x\", {\"c\":null} , [ ] ],\"\":\"e\\n\" , \"d\" : { } } ";
    CHECK_INT(parse_n(doc, strlen(doc), 16, PGW_JSON_UNIQUE_TOP, &root, NULL, &keep), PGW_OK);
    static const struct {
        const char *key;
        int type;
        const char *raw;
    } want[] = {
        {"a", PGW_JSON_NUMBER, "1"},
        {"b", PGW_JSON_ARRAY, "[ true ,\"x\", {\"c\":null} , [ ] ]"},
        {"", PGW_JSON_STRING, "\"e\\n\""},
        {"d", PGW_JSON_OBJECT, "{ }"},
    };
    pos = 0;
    size_t i = 0;
    while (pgw_json_next(&root, &pos, &k, &v) == PGW_OK) {
        if (i >= PGW_ARRAY_LEN(want)) {
            i++;
            break;
        }
        CHECK(pgw_json_str_eq(&k, want[i].key, strlen(want[i].key)));
        CHECK_INT(v.type, want[i].type);
        CHECK(v.len == strlen(want[i].raw) && memcmp(v.p, want[i].raw, v.len) == 0);
        i++;
    }
    CHECK_INT(i, PGW_ARRAY_LEN(want));
    /* after the end, still the end */
    CHECK_INT(pgw_json_next(&root, &pos, &k, &v), PGW_DONE);
    /* nested: the array b */
    CHECK_INT(pgw_json_get(&root, "b", &v), PGW_OK);
    static const int types[] = {PGW_JSON_TRUE, PGW_JSON_STRING, PGW_JSON_OBJECT, PGW_JSON_ARRAY};
    pos = 0;
    i = 0;
    while (pgw_json_next(&v, &pos, NULL, &v2) == PGW_OK) {
        if (i < PGW_ARRAY_LEN(types))
            CHECK_INT(v2.type, types[i]);
        if (v2.type == PGW_JSON_OBJECT) { /* nested twice */
            size_t p2 = 0;
            struct pgw_json v3;
            CHECK_INT(pgw_json_next(&v2, &p2, &k2, &v3), PGW_OK);
            CHECK(pgw_json_str_eq(&k2, "c", 1));
            CHECK_INT(v3.type, PGW_JSON_NULL);
            CHECK_INT(pgw_json_next(&v2, &p2, &k2, &v3), PGW_DONE);
        }
        if (v2.type == PGW_JSON_ARRAY) { /* "[ ]": empty */
            size_t p2 = 0;
            struct pgw_json v3;
            CHECK_INT(pgw_json_next(&v2, &p2, NULL, &v3), PGW_DONE);
        }
        i++;
    }
    CHECK_INT(i, 4);
    /* the empty object d */
    CHECK_INT(pgw_json_get(&root, "d", &v), PGW_OK);
    pos = 0;
    CHECK_INT(pgw_json_next(&v, &pos, &k, &v2), PGW_DONE);
    /* a scalar has no members */
    CHECK_INT(pgw_json_get(&root, "a", &v), PGW_OK);
    pos = 0;
    CHECK_INT(pgw_json_next(&v, &pos, &k, &v2), PGW_DONE);
    CHECK_INT(walk(&root), 10);
    free(keep);

    /* an array root; values of every type; no whitespace at all */
    doc = "[1,\"two\",[3],{\"four\":4},true,false,null,-5e-1]";
    CHECK_INT(parse_n(doc, strlen(doc), 16, 0, &root, NULL, &keep), PGW_OK);
    static const int atypes[] = {PGW_JSON_NUMBER, PGW_JSON_STRING, PGW_JSON_ARRAY,
                                 PGW_JSON_OBJECT, PGW_JSON_TRUE,   PGW_JSON_FALSE,
                                 PGW_JSON_NULL,   PGW_JSON_NUMBER};
    pos = 0;
    i = 0;
    while (pgw_json_next(&root, &pos, &k, &v) == PGW_OK) {
        if (i < PGW_ARRAY_LEN(atypes))
            CHECK_INT(v.type, atypes[i]);
        i++;
    }
    CHECK_INT(i, PGW_ARRAY_LEN(atypes));
    CHECK_INT(walk(&root), 11);
    free(keep);

    /* deep nesting walks to the bottom */
    char deep[256];
    nested(deep, 16, "[", "\"bottom\"", "]");
    CHECK_INT(parse_n(deep, strlen(deep), 16, 0, &root, NULL, &keep), PGW_OK);
    v = root;
    int levels = 0;
    while (v.type == PGW_JSON_ARRAY) {
        pos = 0;
        CHECK_INT(pgw_json_next(&v, &pos, NULL, &v2), PGW_OK);
        v = v2;
        levels++;
    }
    CHECK_INT(levels, 16);
    CHECK(pgw_json_str_eq(&v, "bottom", 6));
    free(keep);
}

static void test_get(void)
{
    struct pgw_json root, v;
    char *keep;
    double d;
    const char *doc = "{\"a\":1,\"n\":{\"x\":5},\"\\u0062\":2,\"a\":7,\"arr\":[{\"a\":9}],\"a\\u0000\":3}";
    CHECK_INT(parse_n(doc, strlen(doc), 16, 0, &root, NULL, &keep), PGW_OK);
    CHECK_INT(pgw_json_get(&root, "a", &v), PGW_OK); /* the last of two */
    CHECK_INT(pgw_json_num(&v, &d), PGW_OK);
    CHECK(d == 7);
    CHECK_INT(pgw_json_get(&root, "b", &v), PGW_OK); /* written with an escape */
    CHECK_INT(pgw_json_num(&v, &d), PGW_OK);
    CHECK(d == 2);
    struct pgw_json w = root; /* into its own input (a path walk): still the last of two */
    CHECK_INT(pgw_json_get(&w, "a", &w), PGW_OK);
    CHECK_INT(pgw_json_num(&w, &d), PGW_OK);
    CHECK(d == 7);
    CHECK_INT(pgw_json_get(&root, "x", &v), PGW_DECLINED); /* not at this level */
    CHECK_INT(pgw_json_get(&root, "", &v), PGW_DECLINED);
    CHECK_INT(pgw_json_get(&root, "A", &v), PGW_DECLINED);
    CHECK_INT(pgw_json_get(&root, "a\\u0000", &v), PGW_DECLINED); /* decoded names only */
    CHECK_INT(pgw_json_get(&root, "n", &v), PGW_OK);
    CHECK_INT(v.type, PGW_JSON_OBJECT);
    struct pgw_json x;
    CHECK_INT(pgw_json_get(&v, "x", &x), PGW_OK);
    CHECK_INT(pgw_json_num(&x, &d), PGW_OK);
    CHECK(d == 5);
    CHECK_INT(pgw_json_get(&root, "arr", &v), PGW_OK);
    CHECK_INT(pgw_json_get(&v, "a", &x), PGW_DECLINED); /* not an object */
    CHECK_INT(pgw_json_get(&x, "a", &v), PGW_DECLINED);
    free(keep);
    CHECK_INT(parse_n("\"a\"", 3, 16, 0, &root, NULL, &keep), PGW_OK);
    CHECK_INT(pgw_json_get(&root, "a", &v), PGW_DECLINED);
    free(keep);
}

/* Decodes the string literal <lit> (JSON text with its quotes) into an exact-size heap buffer. */
static int decode(const char *lit, size_t cap, char *out, size_t *len)
{
    struct pgw_json root;
    char *keep;
    if (parse_n(lit, strlen(lit), 16, 0, &root, NULL, &keep) != PGW_OK) {
        fprintf(stderr, "FAIL %s: <%s> does not parse\n", test_current, lit);
        test_current_failed = 1;
        return PGW_DECLINED;
    }
    char *buf = malloc(cap > 0 ? cap : 1);
    int rc = pgw_json_str(&root, buf, cap, len);
    if (rc == PGW_OK)
        memcpy(out, buf, *len);
    free(buf);
    free(keep);
    return rc;
}

/* The value at a path, the slow way: parse, then pgw_json_get level by level. */
static int walk_path(const char *doc, size_t len, const char *const *path, size_t n,
                     struct pgw_json *out)
{
    const char *why;
    if (pgw_json_parse(doc, len, 16, 0, out, &why) != PGW_OK)
        return PGW_ERR;
    for (size_t i = 0; i < n; i++)
        if (pgw_json_get(out, path[i], out) != PGW_OK)
            return PGW_DECLINED;
    return PGW_OK;
}

/* pgw_json_parse_path finds in one pass what parsing then walking finds, repeated names and
 * escapes included, and refuses what pgw_json_parse refuses. */
static void test_parse_path(void)
{
    static const char *const docs[] = {
        "{\"action\":\"join\"}", "{\"action\":\"a\",\"action\":\"b\"}",
        "{\"act\\u0069on\":\"x\"}", "{\"action\":5}", "{\"x\":{\"action\":\"no\"}}",
        "[{\"action\":\"no\"}]", "\"action\"", "{}", "{\"action\":\"a\"", "{\"action\":\"a\"} x",
        "{\"meta\":{\"type\":\"a\"},\"meta\":{\"type\":\"b\"}}",
        "{\"meta\":{\"type\":\"a\"},\"meta\":{}}", "{\"meta\":{\"type\":\"a\"},\"meta\":5}",
        "{\"meta\":{\"type\":\"a\",\"type\":\"c\"},\"x\":[1,{\"type\":2}]}",
        "{\"meta\":{\"type\":{\"type\":\"deep\"}}}", "{\"meta\":[{\"type\":\"a\"}]}",
        "{\"type\":\"top\",\"meta\":{\"other\":1,\"type\":\"in\"},\"type\":\"t2\"}",
        "{\"meta\":{\"type\":\"a\"},\"meta\":{\"type\":\"b\"},\"meta\":{\"x\":{\"type\":1}}}",
        "{\"meta\":{\"type\":\"\\u00e9\"}}", "{\"meta\" : { \"type\" : \"sp\" } }",
    };
    static const char *const p1[] = {"action"}, *const p2[] = {"meta", "type"},
                             *const p3[] = {"meta", "type", "type"};
    static const struct {
        const char *const *names;
        size_t n;
    } paths[] = {{p1, 1}, {p2, 2}, {p3, 3}, {p1, 0}};
    for (size_t d = 0; d < sizeof(docs) / sizeof(docs[0]); d++)
        for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
            struct pgw_json want = {0}, got = {0};
            const char *why = NULL;
            char *copy = heap_copy(docs[d], strlen(docs[d]));
            int rw = walk_path(copy, strlen(docs[d]), paths[i].names, paths[i].n, &want);
            int rg = pgw_json_parse_path(copy, strlen(docs[d]), 16, paths[i].names, paths[i].n,
                                         &got, &why);
            if (rw != rg || (rg == PGW_OK && (got.p != want.p || got.len != want.len ||
                                              got.type != want.type)) ||
                (rg == PGW_ERR && why == NULL)) {
                fprintf(stderr, "FAIL %s: doc %zu path %zu: %d vs %d\n", test_current, d, i, rg, rw);
                test_current_failed = 1;
            }
            free(copy);
        }
}

static void test_str(void)
{
    static const struct {
        const char *json, *out;
        size_t out_len;
    } cases[] = {
        {"\"\"", "", 0},
        {"\"abc\"", "abc", 3},
        {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t", 8},
        {"\"a\\u0000b\"", "a\0b", 3},
        {"\"\\u0041\\u007f\"", "A\x7f", 2},
        {"\"\\u0080\"", "\xC2\x80", 2},
        {"\"\\u00e9\\u00E9\"", "\xC3\xA9\xC3\xA9", 4},
        {"\"\\u07FF\"", "\xDF\xBF", 2},
        {"\"\\u0800\"", "\xE0\xA0\x80", 3},
        {"\"\\u20ac\"", "\xE2\x82\xAC", 3},
        {"\"\\uFFFF\"", "\xEF\xBF\xBF", 3},
        {"\"\\ud800\\udc00\"", "\xF0\x90\x80\x80", 4},
        {"\"\\ud83d\\ude00\"", "\xF0\x9F\x98\x80", 4},
        {"\"\\uDBFF\\uDFFF\"", "\xF4\x8F\xBF\xBF", 4},
        {"\"x\\ud83d\\ude00y\\n\"", "x\xF0\x9F\x98\x80y\n", 7},
        {"\"\xC3\xA9\xF0\x9F\x98\x80\"", "\xC3\xA9\xF0\x9F\x98\x80", 6},
        {"\"\\\\u0041\"", "\\u0041", 6},
    };
    char out[64];
    size_t len;
    for (size_t i = 0; i < PGW_ARRAY_LEN(cases); i++) {
        size_t want = cases[i].out_len;
        /* exact capacity */
        len = 999;
        int rc = decode(cases[i].json, want, out, &len);
        if (rc != PGW_OK || len != want || memcmp(out, cases[i].out, want) != 0) {
            fprintf(stderr, "FAIL %s: decoding [%zu] %s: rc %d len %zu\n", test_current, i,
                    cases[i].json, rc, len);
            test_current_failed = 1;
        }
        /* one byte short */
        if (want > 0 && decode(cases[i].json, want - 1, out, &len) != PGW_ERR) {
            fprintf(stderr, "FAIL %s: [%zu] fits in %zu bytes\n", test_current, i, want - 1);
            test_current_failed = 1;
        }
        /* roomy */
        CHECK_INT(decode(cases[i].json, 64, out, &len), PGW_OK);
        CHECK_INT(len, want);
    }
    /* a multi-byte character that does not fit whole is not cut */
    CHECK_INT(decode("\"ab\\u20ac\"", 4, out, &len), PGW_ERR);
    CHECK_INT(decode("\"ab\\ud83d\\ude00\"", 5, out, &len), PGW_ERR);
    /* not a string */
    struct pgw_json root;
    char *keep;
    CHECK_INT(parse_n("[\"a\"]", 5, 16, 0, &root, NULL, &keep), PGW_OK);
    CHECK_INT(pgw_json_str(&root, out, sizeof(out), &len), PGW_ERR);
    free(keep);
    CHECK_INT(parse_n("12", 2, 16, 0, &root, NULL, &keep), PGW_OK);
    CHECK_INT(pgw_json_str(&root, out, sizeof(out), &len), PGW_ERR);
    free(keep);
}

static void test_str_eq(void)
{
    struct pgw_json root, v;
    char *keep;
    const char *doc = "[\"abc\",\"a\\u0062c\",\"a\\u0000b\",\"\",\"\\u00e9\",\"\xC3\xA9\",1,null,\"ab\",\"abcd\"]";
    CHECK_INT(parse_n(doc, strlen(doc), 16, 0, &root, NULL, &keep), PGW_OK);
    struct pgw_json items[10];
    size_t pos = 0, n = 0;
    while (n < 10 && pgw_json_next(&root, &pos, NULL, &v) == PGW_OK)
        items[n++] = v;
    CHECK_INT(n, 10);
    CHECK(pgw_json_str_eq(&items[0], "abc", 3));
    CHECK(!pgw_json_str_eq(&items[0], "ab", 2));
    CHECK(!pgw_json_str_eq(&items[0], "abcd", 4));
    CHECK(!pgw_json_str_eq(&items[0], "ABC", 3));
    CHECK(!pgw_json_str_eq(&items[0], "\"abc\"", 5));
    CHECK(pgw_json_str_eq(&items[1], "abc", 3));
    CHECK(!pgw_json_str_eq(&items[1], "abd", 3));
    CHECK(!pgw_json_str_eq(&items[1], "a\\u0062c", 8));
    CHECK(pgw_json_str_eq(&items[2], "a\0b", 3));
    CHECK(!pgw_json_str_eq(&items[2], "a", 1));
    CHECK(pgw_json_str_eq(&items[3], "", 0));
    CHECK(!pgw_json_str_eq(&items[3], "a", 1));
    CHECK(pgw_json_str_eq(&items[4], "\xC3\xA9", 2));
    CHECK(pgw_json_str_eq(&items[5], "\xC3\xA9", 2));
    CHECK(!pgw_json_str_eq(&items[6], "1", 1)); /* a number is not a string */
    CHECK(!pgw_json_str_eq(&items[7], "null", 4));
    CHECK(!pgw_json_str_eq(&items[8], "abc", 3));
    CHECK(!pgw_json_str_eq(&items[9], "abc", 3));
    CHECK(!pgw_json_str_eq(&root, "abc", 3));
    free(keep);
}

static void test_num(void)
{
    static const struct {
        const char *text;
        double want;
    } cases[] = {
        {"0", 0},           {"-0", 0},          {"1", 1},           {"-1", -1},
        {"1.5", 1.5},       {"1e3", 1000},      {"1E+3", 1000},     {"-2.5E-1", -0.25},
        {"1700000000", 1700000000}, {"1700000000.25", 1700000000.25},
        {"9007199254740992", 9007199254740992.0}, {"0.1", 0.1},
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(cases); i++) {
        struct pgw_json root;
        char *keep;
        double d = -12345;
        CHECK_INT(parse_n(cases[i].text, strlen(cases[i].text), 16, 0, &root, NULL, &keep), PGW_OK);
        CHECK_INT(pgw_json_num(&root, &d), PGW_OK);
        if (d != cases[i].want) {
            fprintf(stderr, "FAIL %s: %s read as %.17g\n", test_current, cases[i].text, d);
            test_current_failed = 1;
        }
        free(keep);
    }
    /* a number inside a document: the span ends where the number does */
    struct pgw_json root, v;
    char *keep;
    double d;
    CHECK_INT(parse_n("{\"e\":12,\"f\":3}", 14, 16, 0, &root, NULL, &keep), PGW_OK);
    CHECK_INT(pgw_json_get(&root, "e", &v), PGW_OK);
    CHECK_INT(pgw_json_num(&v, &d), PGW_OK);
    CHECK(d == 12);
    free(keep);
    CHECK_INT(parse_n("[-0]", 4, 16, 0, &root, NULL, &keep), PGW_OK);
    size_t pos = 0;
    CHECK_INT(pgw_json_next(&root, &pos, NULL, &v), PGW_OK);
    CHECK_INT(pgw_json_num(&v, &d), PGW_OK);
    CHECK(d == 0 && signbit(d));
    free(keep);
    CHECK_INT(parse_n("1e400", 5, 16, 0, &root, NULL, &keep), PGW_OK);
    CHECK_INT(pgw_json_num(&root, &d), PGW_OK);
    CHECK(isinf(d) && d > 0);
    free(keep);
    /* not numbers */
    static const char *const others[] = {"\"1\"", "true", "null", "[1]", "{}"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(others); i++) {
        CHECK_INT(parse_n(others[i], strlen(others[i]), 16, 0, &root, NULL, &keep), PGW_OK);
        CHECK_INT(pgw_json_num(&root, &d), PGW_ERR);
        free(keep);
    }
    /* the decimal point does not depend on the locale */
    if (setlocale(LC_NUMERIC, "de_DE.UTF-8") != NULL || setlocale(LC_NUMERIC, "fr_FR.UTF-8") != NULL) {
        CHECK_INT(parse_n("2.5", 3, 16, 0, &root, NULL, &keep), PGW_OK);
        CHECK_INT(pgw_json_num(&root, &d), PGW_OK);
        CHECK(d == 2.5);
        free(keep);
        setlocale(LC_NUMERIC, "C");
    }
}

/* ---- Truncation and mutation ---- */

static const char *const samples[] = {
    "{\"alg\":\"RS256\",\"kid\":\"k\\u00e9y-1\",\"typ\":\"JWT\"}",
    "{\"sub\":\"1234567890\",\"name\":\"J\xC3\xB6hn \\ud83d\\ude00\",\"admin\":true,\"iat\":1516239022,"
    "\"aud\":[\"a\",\"b\"],\"x\":{\"y\":[null,false,-1.5e-3,{}]}}",
    "[1,[2,[3,[4,[5]]]],\"\\\"\\\\\\/\\b\\f\\n\\r\\t\",{\"\":\"\"}]",
    "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
    "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}]}",
    "\"\\u0041\\ud800\\udc00\xE2\x82\xAC\"",
    "[0,-0.0,10,1e10,1E-10,123.456e+7]",
};

static void test_every_prefix(void)
{
    for (size_t s = 0; s < PGW_ARRAY_LEN(samples); s++) {
        size_t n = strlen(samples[s]);
        struct pgw_json root;
        char *keep;
        CHECK_INT(parse_n(samples[s], n, 16, PGW_JSON_UNIQUE_TOP, &root, NULL, &keep), PGW_OK);
        walk(&root);
        free(keep);
        for (size_t l = 0; l < n; l++)
            if (parse_n(samples[s], l, 16, PGW_JSON_UNIQUE_TOP, NULL, NULL, NULL) == PGW_OK) {
                fprintf(stderr, "FAIL %s: prefix of %zu bytes of sample %zu accepted\n",
                        test_current, l, s);
                test_current_failed = 1;
            }
        /* every suffix too: only the whole document (or its last whitespace-free tail that is
         * itself a value, which these samples do not have) parses */
        for (size_t l = 1; l < n; l++) {
            const char *why;
            int rc = parse_n(samples[s] + l, n - l, 16, 0, &root, &why, &keep);
            if (rc == PGW_OK)
                walk(&root);
            free(keep);
        }
    }
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Random byte changes, insertions and deletions; whatever parses is walked completely. ASan and
 * UBSan judge: nothing may read out of bounds, overflow or recurse without bound. */
static void test_mutations(void)
{
    static const char alphabet[] = "{}[]\",:\\u0123456789abcdefABCDEF-+.eEtrunlsfa \t\n\x01\x7f\xC3\xA9"
                                   "\xED\xA0\x80\xF0\x9F\xF4\x90\xFF";
    size_t accepted = 0;
    char buf[512];
    for (int round = 0; round < 20000; round++) {
        const char *src = samples[rng() % PGW_ARRAY_LEN(samples)];
        size_t n = strlen(src);
        memcpy(buf, src, n);
        int edits = 1 + (int)(rng() % 4);
        for (int e = 0; e < edits && n > 0; e++) {
            size_t at = rng() % n;
            char c = alphabet[rng() % (sizeof(alphabet) - 1)];
            switch (rng() % 3) {
            case 0:
                buf[at] = c;
                break;
            case 1:
                if (n < sizeof(buf)) {
                    memmove(buf + at + 1, buf + at, n - at);
                    buf[at] = c;
                    n++;
                }
                break;
            default:
                memmove(buf + at, buf + at + 1, n - at - 1);
                n--;
            }
        }
        struct pgw_json root;
        char *keep;
        int depth = (int)(rng() % 8);
        if (parse_n(buf, n, depth, rng() & 1 ? PGW_JSON_UNIQUE_TOP : 0, &root, NULL, &keep) ==
            PGW_OK) {
            accepted++;
            walk(&root);
            struct pgw_json v;
            pgw_json_get(&root, "alg", &v);
            pgw_json_str_eq(&root, "x", 1);
        }
        free(keep);
    }
    CHECK(accepted > 0); /* some mutations stay valid, and were walked */
}

int main(void)
{
    RUN(test_valid_types);
    RUN(test_numbers);
    RUN(test_literals_and_structure);
    RUN(test_strings);
    RUN(test_strings_word_at_a_time);
    RUN(test_depth);
    RUN(test_unique_top);
    RUN(test_unique_top_long_names);
    RUN(test_iteration);
    RUN(test_get);
    RUN(test_parse_path);
    RUN(test_str);
    RUN(test_str_eq);
    RUN(test_num);
    RUN(test_every_prefix);
    RUN(test_mutations);
    return TEST_REPORT("json");
}
