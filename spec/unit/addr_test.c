/* addr_test.c: CIDR ranges, listen addresses, formatting, PROXY protocol v1/v2 (split at every
 * byte), X-Forwarded-For real-ip selection. */
#include "../../gateway/addr.c"
#include "../support/test.h"

#include <netinet/in.h>
#include <stdlib.h>

/* Formats <ss> as "addr" or "addr port" for comparisons. */
static const char *show(const struct sockaddr_storage *ss, int with_port)
{
    static char buf[80];
    size_t n = pgw_addr_format((const struct sockaddr *)ss, buf, PGW_ADDR_STRLEN);
    if (with_port) {
        unsigned port = 0;
        if (ss->ss_family == AF_INET)
            port = ntohs(((const struct sockaddr_in *)ss)->sin_port);
        else if (ss->ss_family == AF_INET6)
            port = ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
        snprintf(buf + n, sizeof(buf) - n, " %u", port);
    }
    return buf;
}

static struct sockaddr_storage ip(const char *s)
{
    struct sockaddr_storage ss;
    pgw_assert(pgw_addr_parse_ip(s, strlen(s), &ss, NULL) == PGW_OK);
    return ss;
}

static struct pgw_cidr cidr(const char *s)
{
    struct pgw_cidr c;
    pgw_assert(pgw_cidr_parse(s, strlen(s), &c) == PGW_OK);
    return c;
}

/* ---- CIDR ---- */

static void test_cidr_parse(void)
{
    static const struct {
        const char *in;
        int ok, family;
        unsigned prefix;
        const char *net; /* the network address after clearing host bits */
    } cases[] = {
        {"10.0.0.0/8", 1, AF_INET, 8, "10.0.0.0"},
        {"10.1.2.3/8", 1, AF_INET, 8, "10.0.0.0"},
        {"192.168.1.7", 1, AF_INET, 32, "192.168.1.7"},
        {"0.0.0.0/0", 1, AF_INET, 0, "0.0.0.0"},
        {"172.16.255.255/12", 1, AF_INET, 12, "172.16.0.0"},
        {"10.0.0.255/31", 1, AF_INET, 31, "10.0.0.254"},
        {"::1", 1, AF_INET6, 128, "::1"},
        {"::/0", 1, AF_INET6, 0, "::"},
        {"2001:db8::ffff/32", 1, AF_INET6, 32, "2001:db8::"},
        {"2001:db8:abcd::/47", 1, AF_INET6, 47, "2001:db8:abcc::"},
        {"fe80::1/127", 1, AF_INET6, 127, "fe80::"},
        {"::ffff:10.0.0.0/104", 1, AF_INET6, 104, "10.0.0.0"},
        {"10.0.0.0/32", 1, AF_INET, 32, "10.0.0.0"},
        {"::/128", 1, AF_INET6, 128, "::"},
        {"10.0.0.0/33", 0, 0, 0, NULL},
        {"::/129", 0, 0, 0, NULL},
        {"1.2.3", 0, 0, 0, NULL},
        {"10.0.0.0/", 0, 0, 0, NULL},
        {"/8", 0, 0, 0, NULL},
        {"", 0, 0, 0, NULL},
        {"/", 0, 0, 0, NULL},
        {"010.0.0.0/8", 0, 0, 0, NULL},
        {"10.0.0.0/08", 0, 0, 0, NULL},
        {"10.0.0.0/8 ", 0, 0, 0, NULL},
        {" 10.0.0.0/8", 0, 0, 0, NULL},
        {"10.0.0.0 /8", 0, 0, 0, NULL},
        {"10.0.0.0/ 8", 0, 0, 0, NULL},
        {"10.0.0.0/-1", 0, 0, 0, NULL},
        {"10.0.0.0/+8", 0, 0, 0, NULL},
        {"10.0.0.0/8/8", 0, 0, 0, NULL},
        {"10.0.0.0/1000", 0, 0, 0, NULL},
        {"256.0.0.0/8", 0, 0, 0, NULL},
        {"[::1]/128", 0, 0, 0, NULL},
        {"fe80::1%eth0/64", 0, 0, 0, NULL},
        {"example.com/8", 0, 0, 0, NULL},
        {"1.2.3.4.5", 0, 0, 0, NULL},
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(cases); i++) {
        struct pgw_cidr c;
        int rc = pgw_cidr_parse(cases[i].in, strlen(cases[i].in), &c);
        if (rc != (cases[i].ok ? PGW_OK : PGW_ERR))
            fprintf(stderr, "  cidr case \"%s\"\n", cases[i].in);
        CHECK_INT(rc, cases[i].ok ? PGW_OK : PGW_ERR);
        if (rc != PGW_OK || !cases[i].ok)
            continue;
        CHECK_INT(c.family, cases[i].family);
        CHECK_INT(c.prefix, cases[i].prefix);
        struct sockaddr_storage ss;
        fill_sa(&ss, c.family, c.addr, 0);
        CHECK(strcmp(show(&ss, 0), cases[i].net) == 0);
    }
    /* <len> bounds the input: the rest of the buffer is not read */
    struct pgw_cidr c;
    CHECK_INT(pgw_cidr_parse("10.0.0.0/8xyz", 10, &c), PGW_OK);
    CHECK_INT(c.prefix, 8);
    CHECK_INT(pgw_cidr_parse("10.0.0.0\0/8", 11, &c), PGW_ERR);
}

static void test_cidr_match(void)
{
    static const struct {
        const char *range, *addr;
        int match;
    } cases[] = {
        {"10.0.0.0/8", "10.255.1.2", 1},
        {"10.0.0.0/8", "11.0.0.0", 0},
        {"10.0.0.0/8", "9.255.255.255", 0},
        {"10.0.0.0/8", "::ffff:10.1.2.3", 1},
        {"10.0.0.0/8", "::ffff:11.1.2.3", 0},
        {"10.0.0.0/8", "::a01:203", 0}, /* IPv4-compatible is not IPv4-mapped */
        {"10.0.0.0/8", "2001:db8::1", 0},
        {"192.168.1.7", "192.168.1.7", 1},
        {"192.168.1.7", "192.168.1.6", 0},
        {"0.0.0.0/0", "255.255.255.255", 1},
        {"0.0.0.0/0", "::ffff:1.2.3.4", 1},
        {"0.0.0.0/0", "::1", 0},
        {"172.16.0.0/12", "172.31.255.255", 1},
        {"172.16.0.0/12", "172.32.0.0", 0},
        {"10.0.0.254/31", "10.0.0.255", 1},
        {"10.0.0.254/31", "10.0.0.253", 0},
        {"::1", "::1", 1},
        {"::1", "::2", 0},
        {"::/0", "2001:db8::1", 1},
        {"::/0", "1.2.3.4", 1}, /* an IPv4 address is ::ffff:1.2.3.4 for IPv6 ranges */
        {"::ffff:0:0/96", "1.2.3.4", 1},
        {"::ffff:10.0.0.0/104", "10.9.9.9", 1},
        {"::ffff:10.0.0.0/104", "11.9.9.9", 0},
        {"2001:db8::/32", "2001:db8:ffff::1", 1},
        {"2001:db8::/32", "2001:db9::1", 0},
        {"2001:db8:abcc::/47", "2001:db8:abcd:1::", 1},
        {"2001:db8:abcc::/47", "2001:db8:abce::", 0},
        {"fe80::/127", "fe80::1", 1},
        {"fe80::/127", "fe80::2", 0},
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(cases); i++) {
        struct pgw_cidr c = cidr(cases[i].range);
        struct sockaddr_storage ss = ip(cases[i].addr);
        int got = pgw_cidr_match(&c, (struct sockaddr *)&ss);
        if (got != cases[i].match)
            fprintf(stderr, "  match case %s in %s\n", cases[i].addr, cases[i].range);
        CHECK_INT(got, cases[i].match);
    }
    struct pgw_cidr list[] = {cidr("10.0.0.0/8"), cidr("192.168.0.0/16"), cidr("fd00::/8")};
    struct sockaddr_storage a = ip("192.168.3.4"), b = ip("fd12::1"), d = ip("8.8.8.8");
    CHECK(pgw_cidr_match_any(list, 3, (struct sockaddr *)&a));
    CHECK(pgw_cidr_match_any(list, 3, (struct sockaddr *)&b));
    CHECK(!pgw_cidr_match_any(list, 3, (struct sockaddr *)&d));
    CHECK(!pgw_cidr_match_any(list, 0, (struct sockaddr *)&a));
    struct sockaddr_storage unspec;
    memset(&unspec, 0, sizeof(unspec));
    struct pgw_cidr all = cidr("::/0");
    CHECK(!pgw_cidr_match(&all, (struct sockaddr *)&unspec));
}

/* ---- Listen addresses, IP literals, formatting ---- */

static void test_listen(void)
{
    static const struct {
        const char *in;
        const char *out; /* "addr port", NULL = rejected */
        int family;
    } cases[] = {
        {"127.0.0.1:8080", "127.0.0.1 8080", AF_INET},
        {"0.0.0.0:1", "0.0.0.0 1", AF_INET},
        {"[::1]:8080", "::1 8080", AF_INET6},
        {"[::]:443", ":: 443", AF_INET6},
        {"*:8080", "0.0.0.0 8080", AF_INET},
        {":8080", "0.0.0.0 8080", AF_INET},
        {"10.0.0.1:65535", "10.0.0.1 65535", AF_INET},
        {"[::ffff:1.2.3.4]:80", "1.2.3.4 80", AF_INET6},
        {"127.0.0.1:0", NULL, 0},
        {"127.0.0.1:65536", NULL, 0},
        {"127.0.0.1:08080", NULL, 0},
        {"127.0.0.1:", NULL, 0},
        {"127.0.0.1", NULL, 0},
        {"127.0.0.1:80x", NULL, 0},
        {"127.0.0.1:-80", NULL, 0},
        {"127.0.0.1: 80", NULL, 0},
        {" 127.0.0.1:80", NULL, 0},
        {"::1:8080", NULL, 0},
        {"[::1]8080", NULL, 0},
        {"[::1]:", NULL, 0},
        {"[::1:8080", NULL, 0},
        {"[1.2.3.4]:80", NULL, 0},
        {"localhost:80", NULL, 0},
        {"**:80", NULL, 0},
        {"", NULL, 0},
        {":", NULL, 0},
        {"1.2.3:80", NULL, 0},
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(cases); i++) {
        struct sockaddr_storage ss;
        socklen_t len = 0;
        int rc = pgw_addr_parse_listen(cases[i].in, &ss, &len);
        if (rc != (cases[i].out ? PGW_OK : PGW_ERR))
            fprintf(stderr, "  listen case \"%s\"\n", cases[i].in);
        CHECK_INT(rc, cases[i].out ? PGW_OK : PGW_ERR);
        if (rc != PGW_OK || cases[i].out == NULL)
            continue;
        CHECK(strcmp(show(&ss, 1), cases[i].out) == 0);
        CHECK_INT(ss.ss_family, cases[i].family);
        CHECK_INT(len, cases[i].family == AF_INET ? sizeof(struct sockaddr_in)
                                                  : sizeof(struct sockaddr_in6));
    }
}

static void test_parse_ip_and_format(void)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char buf[PGW_ADDR_STRLEN];

    CHECK_INT(pgw_addr_parse_ip("10.1.2.3", 8, &ss, &len), PGW_OK);
    CHECK_INT(len, sizeof(struct sockaddr_in));
    CHECK_MEM(buf, pgw_addr_format((struct sockaddr *)&ss, buf, sizeof(buf)), "10.1.2.3");
    CHECK_INT(pgw_addr_parse_ip("2001:DB8:0:0::1", 15, &ss, &len), PGW_OK);
    CHECK_INT(len, sizeof(struct sockaddr_in6));
    CHECK_MEM(buf, pgw_addr_format((struct sockaddr *)&ss, buf, sizeof(buf)), "2001:db8::1");
    CHECK_INT(pgw_addr_parse_ip("::ffff:192.0.2.1", 16, &ss, &len), PGW_OK);
    CHECK_INT(ss.ss_family, AF_INET6);
    CHECK_MEM(buf, pgw_addr_format((struct sockaddr *)&ss, buf, sizeof(buf)), "192.0.2.1");
    /* the longest form fits PGW_ADDR_STRLEN */
    const char *lng = "ffff:ffff:ffff:ffff:ffff:fffe:255.255.255.255";
    CHECK_INT(pgw_addr_parse_ip(lng, strlen(lng), &ss, NULL), PGW_OK);
    CHECK(pgw_addr_format((struct sockaddr *)&ss, buf, sizeof(buf)) > 0);
    /* too small a buffer or an unknown family: empty string */
    CHECK_INT(pgw_addr_format((struct sockaddr *)&ss, buf, 8), 0);
    CHECK_INT(buf[0], 0);
    struct sockaddr_storage un;
    memset(&un, 0, sizeof(un));
    un.ss_family = AF_UNIX;
    CHECK_INT(pgw_addr_format((struct sockaddr *)&un, buf, sizeof(buf)), 0);
    CHECK_INT(buf[0], 0);

    static const char *bad[] = {"",         "1.2.3",  "[::1]", "::1%lo", "1.2.3.4:80", " 1.2.3.4",
                                "1.2.3.4 ", "01.2.3.4", "abc",  "1.2.3.256", "::1::",
                                "fe80::1%eth0"};
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad); i++)
        CHECK_INT(pgw_addr_parse_ip(bad[i], strlen(bad[i]), &ss, &len), PGW_ERR);
    /* embedded NUL, length bound */
    CHECK_INT(pgw_addr_parse_ip("1.2.3.4\0x", 9, &ss, &len), PGW_ERR);
    CHECK_INT(pgw_addr_parse_ip("1.2.3.45", 7, &ss, &len), PGW_OK);
    CHECK_MEM(buf, pgw_addr_format((struct sockaddr *)&ss, buf, sizeof(buf)), "1.2.3.4");
}

/* ---- PROXY protocol ---- */

/* Feeds every prefix of <hdr,len> (copied to the heap so that ASan sees overreads) and checks
 * that each is PGW_AGAIN and the whole is <expect_len>, then appends request bytes. */
static int check_split(const char *hdr, size_t len, struct sockaddr_storage *src, socklen_t *sl)
{
    int ok = 1;
    for (size_t k = 0; k < len; k++) {
        char *p = pgw_malloc(k ? k : 1);
        memcpy(p, hdr, k);
        int rc = pgw_addr_parse_proxy_protocol(p, k, src, sl);
        free(p);
        if (rc != PGW_AGAIN) {
            fprintf(stderr, "  prefix of %zu bytes gave %d\n", k, rc);
            ok = 0;
        }
    }
    char *p = pgw_malloc(len + 16);
    memcpy(p, hdr, len);
    int rc = pgw_addr_parse_proxy_protocol(p, len, src, sl);
    memcpy(p + len, "GET / HTTP/1.1\r\n", 16);
    struct sockaddr_storage src2;
    socklen_t sl2;
    if (pgw_addr_parse_proxy_protocol(p, len + 16, &src2, &sl2) != rc)
        ok = 0;
    free(p);
    return ok ? rc : -100;
}

/* A malformed header: every prefix is AGAIN until the first bad byte, then ERR for good. */
static int check_bad(const char *hdr, size_t len)
{
    struct sockaddr_storage src;
    socklen_t sl;
    int seen_err = 0;
    for (size_t k = 0; k <= len; k++) {
        char *p = pgw_malloc(k ? k : 1);
        memcpy(p, hdr, k);
        int rc = pgw_addr_parse_proxy_protocol(p, k, &src, &sl);
        free(p);
        if (rc == PGW_ERR)
            seen_err = 1;
        else if (rc != PGW_AGAIN || seen_err)
            return 0;
    }
    return seen_err;
}

#define V1(s) s, sizeof(s) - 1

static void test_proxy_v1_valid(void)
{
    static const struct {
        const char *hdr;
        size_t len;
        const char *src; /* "addr port" or "" for unspec */
    } cases[] = {
        {V1("PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"), "1.2.3.4 1111"},
        {V1("PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n"), "255.255.255.255 65535"},
        {V1("PROXY TCP6 2001:db8::1 2001:db8::2 40000 443\r\n"), "2001:db8::1 40000"},
        {V1("PROXY TCP6 ::ffff:1.2.3.4 ::1 1 2\r\n"), "1.2.3.4 1"},
        {V1("PROXY UNKNOWN\r\n"), ""},
        {V1("PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"), ""},
        {V1("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"),
         "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535"},
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(cases); i++) {
        struct sockaddr_storage src;
        socklen_t sl = 99;
        int rc = check_split(cases[i].hdr, cases[i].len, &src, &sl);
        if (rc != (int)cases[i].len)
            fprintf(stderr, "  v1 case %zu: %d\n", i, rc);
        CHECK_INT(rc, cases[i].len);
        if (cases[i].src[0] == '\0') {
            CHECK_INT(src.ss_family, AF_UNSPEC);
            CHECK_INT(sl, 0);
        } else {
            CHECK(strcmp(show(&src, 1), cases[i].src) == 0);
            CHECK_INT(sl, src.ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                                   : sizeof(struct sockaddr_in6));
        }
    }
}

static void test_proxy_v1_invalid(void)
{
    static const char *bad[] = {
        "GET / HTTP/1.1\r\n",
        "proxy TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n",
        "PROXY  TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n",
        "PROXY TCP4  1.2.3.4 5.6.7.8 1111 2222\r\n",
        "PROXY TCP4 1.2.3.4  5.6.7.8 1111 2222\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1111  2222\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222 \r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\r",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1111\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 01111 2222\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1111 65536\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2222\r\n",
        "PROXY TCP4 1.2.3 5.6.7.8 1111 2222\r\n",
        "PROXY TCP4 1.2.3.256 5.6.7.8 1111 2222\r\n",
        "PROXY TCP4 01.2.3.4 5.6.7.8 1111 2222\r\n",
        "PROXY TCP4 ::1 ::1 1111 2222\r\n",
        "PROXY TCP6 1.2.3.4 5.6.7.8 1111 2222\r\n",
        "PROXY TCP6 ::1::2 ::1 1111 2222\r\n",
        "PROXY TCP6 12345::1 ::1 1111 2222\r\n",
        "PROXY TCP6 :::1 ::1 1111 2222\r\n",
        "PROXY TCP6 [::1] ::1 1111 2222\r\n",
        "PROXY TCP5 1.2.3.4 5.6.7.8 1111 2222\r\n",
        "PROXY UDP4 1.2.3.4 5.6.7.8 1111 2222\r\n",
        "PROXY UNKNOWNX\r\n",
        "PROXY UNKNOWN\n",
        "PROXY UNKNOWN junk\nmore\r\n",
        "PROXY\r\n",
        "PROXY TCP4\r\n",
        "PROXY TCP4 1.2.3.4\t5.6.7.8 1111 2222\r\n",
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(bad); i++) {
        int ok = check_bad(bad[i], strlen(bad[i]));
        if (!ok)
            fprintf(stderr, "  v1 bad case %zu: %s", i, bad[i]);
        CHECK(ok);
    }
    /* errors come early, not at the end of the line */
    struct sockaddr_storage src;
    socklen_t sl;
    CHECK_INT(pgw_addr_parse_proxy_protocol("X", 1, &src, &sl), PGW_ERR);
    CHECK_INT(pgw_addr_parse_proxy_protocol("PROXY TCP4 1.2.3.4444", 21, &src, &sl), PGW_ERR);
    CHECK_INT(pgw_addr_parse_proxy_protocol("PROXY TCP4 1.2.3.4 5.6.7.8 99999", 32, &src, &sl),
              PGW_ERR);
    CHECK_INT(pgw_addr_parse_proxy_protocol("PROXY TCP6 1:2:3:4:5:6:7:8:9", 28, &src, &sl),
              PGW_AGAIN); /* caught by inet_pton at the space */
    CHECK_INT(pgw_addr_parse_proxy_protocol("PROXY TCP6 1:2:3:4:5:6:7:8:9 ", 29, &src, &sl),
              PGW_ERR);
    /* 107 bytes without CRLF: an UNKNOWN line may be long, but not that long */
    char line[200] = "PROXY UNKNOWN ";
    memset(line + 14, 'x', sizeof(line) - 14);
    memcpy(line + 105, "\r\n", 2);
    CHECK_INT(pgw_addr_parse_proxy_protocol(line, 107, &src, &sl), 107);
    memcpy(line + 105, "x\r\n", 3);
    CHECK_INT(pgw_addr_parse_proxy_protocol(line, 106, &src, &sl), PGW_AGAIN);
    CHECK_INT(pgw_addr_parse_proxy_protocol(line, 107, &src, &sl), PGW_ERR);
    CHECK_INT(pgw_addr_parse_proxy_protocol(line, 108, &src, &sl), PGW_ERR);
    /* a long IPv6 TCP6 line over 107 bytes is rejected even though each field is valid */
    const char *lng = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 "
                      "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 65535 65535\r\n";
    CHECK(check_bad(lng, strlen(lng)));
}

/* Builds a v2 header: <vc> version/command byte, <fam>, the address block <addr,alen>. */
static size_t v2(uint8_t *out, uint8_t vc, uint8_t fam, const uint8_t *addr, size_t alen)
{
    memcpy(out, pp2_sig, 12);
    out[12] = vc;
    out[13] = fam;
    out[14] = (uint8_t)(alen >> 8);
    out[15] = (uint8_t)alen;
    if (alen)
        memcpy(out + 16, addr, alen);
    return 16 + alen;
}

static void test_proxy_v2(void)
{
    static uint8_t hdr[16 + 65535 + 16];
    static uint8_t block[65535];
    struct sockaddr_storage src;
    socklen_t sl;
    size_t n;

    /* TCP over IPv4: 1.2.3.4:1111 -> 5.6.7.8:2222 */
    const uint8_t a4[12] = {1, 2, 3, 4, 5, 6, 7, 8, 0x04, 0x57, 0x08, 0xae};
    n = v2(hdr, 0x21, 0x11, a4, 12);
    CHECK_INT(check_split((char *)hdr, n, &src, &sl), 28);
    CHECK(strcmp(show(&src, 1), "1.2.3.4 1111") == 0);
    CHECK_INT(sl, sizeof(struct sockaddr_in));

    /* TCP over IPv6 with TLVs after the addresses (skipped) */
    memset(block, 0, 36);
    block[0] = 0x20;
    block[1] = 0x01;
    block[2] = 0x0d;
    block[3] = 0xb8;
    block[15] = 1;
    block[31] = 2;
    block[32] = 0x9c;
    block[33] = 0x40;
    block[35] = 0x50;
    memcpy(block + 36, "\x04\x00\x03" "abc", 6); /* PP2_TYPE_NOOP */
    n = v2(hdr, 0x21, 0x21, block, 42);
    CHECK_INT(check_split((char *)hdr, n, &src, &sl), 58);
    CHECK(strcmp(show(&src, 1), "2001:db8::1 40000") == 0);
    CHECK_INT(sl, sizeof(struct sockaddr_in6));

    /* LOCAL: keep the peer, whatever the family byte says */
    n = v2(hdr, 0x20, 0x00, NULL, 0);
    CHECK_INT(check_split((char *)hdr, n, &src, &sl), 16);
    CHECK_INT(src.ss_family, AF_UNSPEC);
    CHECK_INT(sl, 0);
    n = v2(hdr, 0x20, 0x11, a4, 12);
    CHECK_INT(check_split((char *)hdr, n, &src, &sl), 28);
    CHECK_INT(src.ss_family, AF_UNSPEC);
    n = v2(hdr, 0x20, 0x77, NULL, 0);
    CHECK_INT(check_split((char *)hdr, n, &src, &sl), 16);

    /* PROXY over UNSPEC, UDP, unix sockets: keep the peer */
    n = v2(hdr, 0x21, 0x00, NULL, 0);
    CHECK_INT(check_split((char *)hdr, n, &src, &sl), 16);
    CHECK_INT(src.ss_family, AF_UNSPEC);
    n = v2(hdr, 0x21, 0x12, a4, 12);
    CHECK_INT(check_split((char *)hdr, n, &src, &sl), 28);
    CHECK_INT(src.ss_family, AF_UNSPEC);
    memset(block, 'u', 216);
    n = v2(hdr, 0x21, 0x31, block, 216);
    CHECK_INT(check_split((char *)hdr, n, &src, &sl), 232);
    CHECK_INT(src.ss_family, AF_UNSPEC);

    /* the largest header */
    memset(block, 0, sizeof(block));
    n = v2(hdr, 0x21, 0x11, block, 65535);
    CHECK_INT(pgw_addr_parse_proxy_protocol((char *)hdr, n, &src, &sl), 65551);
    CHECK_INT(pgw_addr_parse_proxy_protocol((char *)hdr, n - 1, &src, &sl), PGW_AGAIN);

    /* malformed: fails at the byte that makes it so */
    n = v2(hdr, 0x11, 0x11, a4, 12); /* version 1 */
    CHECK(check_bad((char *)hdr, n));
    CHECK_INT(pgw_addr_parse_proxy_protocol((char *)hdr, 13, &src, &sl), PGW_ERR);
    n = v2(hdr, 0x31, 0x11, a4, 12); /* version 3 */
    CHECK(check_bad((char *)hdr, n));
    n = v2(hdr, 0x22, 0x11, a4, 12); /* command 2 */
    CHECK(check_bad((char *)hdr, n));
    n = v2(hdr, 0x21, 0x41, a4, 12); /* family 4 */
    CHECK(check_bad((char *)hdr, n));
    CHECK_INT(pgw_addr_parse_proxy_protocol((char *)hdr, 14, &src, &sl), PGW_ERR);
    n = v2(hdr, 0x21, 0x13, a4, 12); /* transport 3 */
    CHECK(check_bad((char *)hdr, n));
    n = v2(hdr, 0x21, 0x10, a4, 12); /* INET over UNSPEC transport: not a defined pair */
    CHECK(check_bad((char *)hdr, n));
    n = v2(hdr, 0x21, 0x11, a4, 11); /* address block too short */
    CHECK(check_bad((char *)hdr, n));
    CHECK_INT(pgw_addr_parse_proxy_protocol((char *)hdr, 16, &src, &sl), PGW_ERR);
    n = v2(hdr, 0x21, 0x21, block, 35);
    CHECK(check_bad((char *)hdr, n));
    n = v2(hdr, 0x21, 0x31, block, 215);
    CHECK(check_bad((char *)hdr, n));
    /* signature mismatch in each byte */
    for (size_t i = 0; i < 12; i++) {
        n = v2(hdr, 0x21, 0x11, a4, 12);
        hdr[i] ^= 0x40;
        CHECK(check_bad((char *)hdr, n));
        CHECK_INT(pgw_addr_parse_proxy_protocol((char *)hdr, i + 1, &src, &sl), PGW_ERR);
    }
    CHECK_INT(pgw_addr_parse_proxy_protocol("", 0, &src, &sl), PGW_AGAIN);
    CHECK_INT(pgw_addr_parse_proxy_protocol("\x16\x03\x01", 3, &src, &sl), PGW_ERR); /* TLS */
}

/* ---- X-Forwarded-For ---- */

static void test_xff(void)
{
    struct pgw_cidr trusted[] = {cidr("10.0.0.0/8"), cidr("fd00::/8"), cidr("127.0.0.1")};
    static const struct {
        const char *fields[3];
        const char *want; /* NULL: PGW_DECLINED */
    } cases[] = {
        {{"1.2.3.4"}, "1.2.3.4"},
        {{"1.2.3.4, 10.0.0.2"}, "1.2.3.4"},
        {{"6.6.6.6, 1.2.3.4, 10.0.0.2, 10.0.0.3"}, "1.2.3.4"},
        {{"10.0.0.9, 10.0.0.2"}, "10.0.0.9"}, /* all trusted: the leftmost */
        {{"  1.2.3.4 ,\t10.0.0.2  "}, "1.2.3.4"},
        {{"1.2.3.4,10.0.0.2"}, "1.2.3.4"},
        {{"1.2.3.4:5678, 10.0.0.2:80"}, "1.2.3.4"},
        {{"[2001:db8::1]:443, [fd00::1]"}, "2001:db8::1"},
        {{"2001:db8::1, fd00::5"}, "2001:db8::1"},
        {{"::ffff:10.1.1.1, ::ffff:1.2.3.4"}, "1.2.3.4"},
        {{"::ffff:1.2.3.4, ::ffff:10.1.1.1"}, "1.2.3.4"},
        {{"1.2.3.4, , 10.0.0.2,"}, "1.2.3.4"},
        /* several fields: the last field holds the nearest hops */
        {{"6.6.6.6", "1.2.3.4, 10.0.0.2", "10.0.0.3"}, "1.2.3.4"},
        {{"6.6.6.6", "10.0.0.2", "10.0.0.3"}, "6.6.6.6"},
        {{"6.6.6.6", "", "10.0.0.3"}, "6.6.6.6"},
        /* an unparsable element stops the walk at the last address read */
        {{"unknown"}, NULL},
        {{""}, NULL},
        {{" , "}, NULL},
        {{"1.2.3.4, unknown"}, NULL},
        {{"1.2.3.4, 10.0.0.2:99999"}, NULL},
        {{"1.2.3.4, unknown, 10.0.0.2"}, "10.0.0.2"},
        {{"6.6.6.6, garbage, 10.0.0.2, 10.0.0.3"}, "10.0.0.2"},
        {{"garbage", "10.0.0.3"}, "10.0.0.3"},
        /* garbage left of the first untrusted hop is never read */
        {{"garbage, 1.2.3.4, 10.0.0.2"}, "1.2.3.4"},
        {{"1.2.3.4 5.6.7.8, 10.0.0.2"}, "10.0.0.2"},
        {{"[::1, 10.0.0.2"}, "10.0.0.2"},
        {{"[1.2.3.4]:80, 10.0.0.2"}, "10.0.0.2"},
        {{"1.2.3.4:, 10.0.0.2"}, "10.0.0.2"},
        {{"01.2.3.4, 10.0.0.2"}, "10.0.0.2"},
        {{"example.com, 10.0.0.2"}, "10.0.0.2"},
    };
    for (size_t i = 0; i < PGW_ARRAY_LEN(cases); i++) {
        const char *vals[3];
        size_t lens[3], n = 0;
        for (; n < 3 && cases[i].fields[n] != NULL; n++) {
            /* heap copies without NUL: the parser must respect the lengths */
            size_t l = strlen(cases[i].fields[n]);
            char *p = pgw_malloc(l);
            memcpy(p, cases[i].fields[n], l);
            vals[n] = p;
            lens[n] = l;
        }
        struct sockaddr_storage out;
        memset(&out, 0xee, sizeof(out));
        int rc = pgw_addr_from_xff(vals, lens, n, trusted, PGW_ARRAY_LEN(trusted), &out);
        if (cases[i].want == NULL) {
            if (rc != PGW_DECLINED)
                fprintf(stderr, "  xff case %zu: %d\n", i, rc);
            CHECK_INT(rc, PGW_DECLINED);
            CHECK_INT(((uint8_t *)&out)[0], 0xee); /* untouched */
        } else {
            CHECK_INT(rc, PGW_OK);
            if (rc == PGW_OK && strcmp(show(&out, 0), cases[i].want) != 0) {
                fprintf(stderr, "  xff case %zu: got %s\n", i, show(&out, 0));
                CHECK(0);
            }
            if (rc == PGW_OK)
                CHECK_INT(out.ss_family == AF_INET ? ((struct sockaddr_in *)&out)->sin_port
                                                   : ((struct sockaddr_in6 *)&out)->sin6_port,
                          0);
        }
        for (size_t k = 0; k < n; k++)
            free((void *)vals[k]);
    }
    /* no field at all, no trusted ranges */
    struct sockaddr_storage out;
    CHECK_INT(pgw_addr_from_xff(NULL, NULL, 0, trusted, 3, &out), PGW_DECLINED);
    const char *v = "1.2.3.4, 5.6.7.8";
    size_t l = strlen(v);
    CHECK_INT(pgw_addr_from_xff(&v, &l, 1, NULL, 0, &out), PGW_OK);
    CHECK(strcmp(show(&out, 0), "5.6.7.8") == 0);
}

static void test_equal(void)
{
    struct sockaddr_storage a, b, c, d, e;
    socklen_t l;
    CHECK_INT(pgw_addr_parse_listen("127.0.0.1:80", &a, &l), PGW_OK);
    CHECK_INT(pgw_addr_parse_listen("*:80", &b, &l), PGW_OK);
    CHECK_INT(pgw_addr_parse_listen("0.0.0.0:80", &c, &l), PGW_OK);
    CHECK_INT(pgw_addr_parse_listen("[::1]:80", &d, &l), PGW_OK);
    CHECK_INT(pgw_addr_parse_listen("[::1]:81", &e, &l), PGW_OK);
    CHECK(pgw_addr_equal(&a, &a));
    CHECK(!pgw_addr_equal(&a, &b));
    CHECK(pgw_addr_equal(&b, &c)); /* "*" is 0.0.0.0 */
    CHECK(!pgw_addr_equal(&a, &d));
    CHECK(!pgw_addr_equal(&d, &e)); /* ports differ */
    CHECK(pgw_addr_equal(&d, &d));
    struct sockaddr_storage u1 = {.ss_family = AF_UNIX}, u2 = {.ss_family = AF_UNIX};
    CHECK(!pgw_addr_equal(&u1, &u2)); /* other families never compare equal */
}

static void test_hosts(void)
{
    static const char h[] = "# comment\n127.0.0.1\tlocalhost loopback\n"
                            "::1 localhost ip6-localhost # trailing comment\n"
                            "10.0.0.7 users.internal Users-2 # users\n"
                            "bogus-address users.internal\n"
                            "10.0.0.8\n"
                            "   \n"
                            "10.0.0.9 other #users.internal\n"
                            "10.0.0.10 users.internal";
    struct sockaddr_storage out[4];
    socklen_t lens[4];
    char buf[PGW_ADDR_STRLEN];
    CHECK_INT(pgw_hosts_lookup(h, sizeof(h) - 1, "localhost", 9, out, lens, 4), 2);
    pgw_addr_format((struct sockaddr *)&out[0], buf, sizeof(buf));
    CHECK(strcmp(buf, "127.0.0.1") == 0);
    pgw_addr_format((struct sockaddr *)&out[1], buf, sizeof(buf));
    CHECK(strcmp(buf, "::1") == 0);
    CHECK_INT(pgw_hosts_lookup(h, sizeof(h) - 1, "USERS.internal", 14, out, lens, 4), 2);
    pgw_addr_format((struct sockaddr *)&out[1], buf, sizeof(buf));
    CHECK(strcmp(buf, "10.0.0.10") == 0); /* last line, no final newline */
    CHECK_INT(pgw_hosts_lookup(h, sizeof(h) - 1, "users-2", 7, out, lens, 4), 1);
    CHECK_INT(pgw_hosts_lookup(h, sizeof(h) - 1, "users", 5, out, lens, 4), 0);
    CHECK_INT(pgw_hosts_lookup(h, sizeof(h) - 1, "10.0.0.8", 8, out, lens, 4), 0);
    CHECK_INT(pgw_hosts_lookup(h, sizeof(h) - 1, "localhost", 9, out, lens, 1), 1); /* bounded */
    CHECK_INT(pgw_hosts_lookup("", 0, "localhost", 9, out, lens, 4), 0);
}

int main(void)
{
    RUN(test_cidr_parse);
    RUN(test_cidr_match);
    RUN(test_listen);
    RUN(test_parse_ip_and_format);
    RUN(test_proxy_v1_valid);
    RUN(test_proxy_v1_invalid);
    RUN(test_proxy_v2);
    RUN(test_xff);
    RUN(test_equal);
    RUN(test_hosts);
    return TEST_REPORT("addr");
}
