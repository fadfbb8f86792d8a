/* addr.c: IP literals, CIDR ranges, listen addresses, PROXY protocol v1/v2 and X-Forwarded-For.
 * Pure code over byte buffers: no libevent, no Lua, no allocation.
 */
#include "addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

/* ---- IP literals ---- */

#define V4_MAX_TEXT 15 /* "255.255.255.255" */
#define V6_MAX_TEXT 45 /* "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" */

static const uint8_t v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* Parses an IP literal without brackets, port or zone. <want> is AF_INET, AF_INET6 or AF_UNSPEC
 * (either, chosen by the presence of ':'). inet_pton() needs a NUL-terminated copy, and an
 * embedded NUL must not let it parse a prefix of the element. glibc's inet_pton rejects IPv4
 * octets with leading zeros ("010.0.0.1"), which inet_aton would read as octal: we rely on that,
 * and the tests pin it down. */
static int parse_ip_bytes(const char *s, size_t len, int want, int *family, uint8_t addr[16])
{
    char buf[V6_MAX_TEXT + 1];
    int fam;

    if (len == 0 || len > V6_MAX_TEXT || memchr(s, '\0', len) != NULL)
        return PGW_ERR;
    fam = memchr(s, ':', len) != NULL ? AF_INET6 : AF_INET;
    if (want != AF_UNSPEC && want != fam)
        return PGW_ERR;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (inet_pton(fam, buf, addr) != 1)
        return PGW_ERR;
    *family = fam;
    return PGW_OK;
}

/* Decimal port without sign or leading zeros, at most 65535. Port 0 only when <allow_zero>. */
static int parse_port(const char *s, size_t len, int allow_zero, uint16_t *port)
{
    unsigned v = 0;

    if (len == 0 || len > 5 || (s[0] == '0' && len > 1))
        return PGW_ERR;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return PGW_ERR;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535 || (v == 0 && !allow_zero))
        return PGW_ERR;
    *port = (uint16_t)v;
    return PGW_OK;
}

static socklen_t fill_sa(struct sockaddr_storage *ss, int family, const uint8_t *addr,
                         uint16_t port)
{
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        memcpy(&sin->sin_addr, addr, 4);
        return sizeof(*sin);
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    memcpy(&sin6->sin6_addr, addr, 16);
    return sizeof(*sin6);
}

/* The address of <sa> as 16 bytes, IPv4 as IPv4-mapped IPv6, so that one comparison serves both
 * families. Returns 0 for other families. */
static int sa_to_v6(const struct sockaddr *sa, uint8_t out[16])
{
    if (sa->sa_family == AF_INET) {
        memcpy(out, v4mapped_prefix, 12);
        memcpy(out + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 1;
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(out, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return 1;
    }
    return 0;
}

int pgw_addr_parse_ip(const char *s, size_t len, struct sockaddr_storage *sa, socklen_t *sa_len)
{
    uint8_t addr[16];
    int family;

    if (parse_ip_bytes(s, len, AF_UNSPEC, &family, addr) != PGW_OK)
        return PGW_ERR;
    socklen_t n = fill_sa(sa, family, addr, 0);
    if (sa_len != NULL)
        *sa_len = n;
    return PGW_OK;
}

size_t pgw_addr_format(const struct sockaddr *sa, char *buf, size_t buflen)
{
    const void *src;
    int family = sa->sa_family;

    if (buflen == 0)
        return 0;
    if (family == AF_INET) {
        src = &((const struct sockaddr_in *)sa)->sin_addr;
    } else if (family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        src = a;
        if (memcmp(a, v4mapped_prefix, 12) == 0) {
            family = AF_INET;
            src = a + 12;
        }
    } else {
        buf[0] = '\0';
        return 0;
    }
    if (inet_ntop(family, src, buf, (socklen_t)PGW_MIN(buflen, (size_t)INT32_MAX)) == NULL) {
        buf[0] = '\0';
        return 0;
    }
    return strlen(buf);
}

/* ---- CIDR ---- */

int pgw_cidr_parse(const char *s, size_t len, struct pgw_cidr *c)
{
    const char *slash = memchr(s, '/', len);
    size_t alen = slash != NULL ? (size_t)(slash - s) : len;
    unsigned max, prefix;
    int family;

    memset(c, 0, sizeof(*c));
    if (parse_ip_bytes(s, alen, AF_UNSPEC, &family, c->addr) != PGW_OK)
        return PGW_ERR;
    max = family == AF_INET ? 32 : 128;
    prefix = max;
    if (slash != NULL) {
        const char *p = slash + 1;
        size_t plen = len - alen - 1;
        /* same digit rules as ports: "/08" or "/ 8" are typos, not intentions */
        if (plen == 0 || plen > 3 || (p[0] == '0' && plen > 1))
            return PGW_ERR;
        prefix = 0;
        for (size_t i = 0; i < plen; i++) {
            if (p[i] < '0' || p[i] > '9')
                return PGW_ERR;
            prefix = prefix * 10 + (unsigned)(p[i] - '0');
        }
        if (prefix > max)
            return PGW_ERR;
    }
    /* clear host bits so that matching compares whole bytes plus one masked byte */
    for (unsigned bit = prefix; bit < max; bit++)
        c->addr[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
    c->family = family;
    c->prefix = prefix;
    return PGW_OK;
}

int pgw_cidr_match(const struct pgw_cidr *c, const struct sockaddr *sa)
{
    uint8_t a[16], net[16];
    unsigned prefix;

    if (!sa_to_v6(sa, a))
        return 0;
    if (c->family == AF_INET) {
        memcpy(net, v4mapped_prefix, 12);
        memcpy(net + 12, c->addr, 4);
        prefix = c->prefix + 96;
    } else {
        memcpy(net, c->addr, 16);
        prefix = c->prefix;
    }
    size_t whole = prefix / 8;
    if (memcmp(a, net, whole) != 0)
        return 0;
    if (prefix % 8 == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xff00u >> (prefix % 8));
    return (a[whole] & mask) == net[whole];
}

int pgw_cidr_match_any(const struct pgw_cidr *c, size_t n, const struct sockaddr *sa)
{
    for (size_t i = 0; i < n; i++)
        if (pgw_cidr_match(&c[i], sa))
            return 1;
    return 0;
}

/* ---- Listen addresses ---- */

int pgw_addr_parse_listen(const char *s, struct sockaddr_storage *sa, socklen_t *len)
{
    const char *host, *colon;
    size_t host_len;
    uint8_t addr[16];
    int family;

    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || end[1] != ':')
            return PGW_ERR;
        host = s + 1;
        host_len = (size_t)(end - host);
        colon = end + 1;
        /* brackets are for IPv6 only: "[1.2.3.4]:80" is a mistake */
        if (parse_ip_bytes(host, host_len, AF_INET6, &family, addr) != PGW_OK)
            return PGW_ERR;
    } else {
        colon = strchr(s, ':');
        if (colon == NULL || strchr(colon + 1, ':') != NULL)
            return PGW_ERR; /* no port, or an unbracketed IPv6 address */
        host = s;
        host_len = (size_t)(colon - s);
        if (host_len == 0 || (host_len == 1 && host[0] == '*')) {
            family = AF_INET;
            memset(addr, 0, sizeof(addr));
        } else if (parse_ip_bytes(host, host_len, AF_INET, &family, addr) != PGW_OK) {
            return PGW_ERR;
        }
    }
    uint16_t port;
    if (parse_port(colon + 1, strlen(colon + 1), 0, &port) != PGW_OK)
        return PGW_ERR;
    socklen_t n = fill_sa(sa, family, addr, port);
    if (len != NULL)
        *len = n;
    return PGW_OK;
}

/* ---- PROXY protocol ---- */

#define PP1_MAX 107
#define PP2_HEADER 16

static const char pp2_sig[12] = {'\r', '\n', '\r', '\n', '\0', '\r', '\n', 'Q', 'U', 'I', 'T', '\n'};

/* Matches the literal <lit> at *pos: PGW_OK (pos advanced), PGW_AGAIN when <buf> ends inside a
 * matching prefix, PGW_ERR on the first differing byte. */
static int expect_lit(const char *buf, size_t n, size_t *pos, const char *lit, size_t lit_len)
{
    for (size_t i = 0; i < lit_len; i++) {
        if (*pos + i >= n)
            return PGW_AGAIN;
        if (buf[*pos + i] != lit[i])
            return PGW_ERR;
    }
    *pos += lit_len;
    return PGW_OK;
}

static int is_hex(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Whether <s,len> can still become a valid address of <family> when more bytes follow. These are
 * necessary conditions only (inet_pton decides at the delimiter); they let garbage fail at once
 * instead of when the field ends, and never reject a prefix of a valid address. */
static int ip_prefix_ok(int family, const char *s, size_t len)
{
    if (family == AF_INET) {
        size_t digits = 0, dots = 0;
        unsigned octet = 0;
        if (len > V4_MAX_TEXT)
            return 0;
        for (size_t i = 0; i < len; i++) {
            if (s[i] == '.') {
                if (digits == 0 || ++dots > 3)
                    return 0;
                digits = 0;
                octet = 0;
            } else if (s[i] >= '0' && s[i] <= '9') {
                if (digits == 1 && octet == 0)
                    return 0; /* leading zero */
                octet = octet * 10 + (unsigned)(s[i] - '0');
                if (++digits > 3 || octet > 255)
                    return 0;
            } else {
                return 0;
            }
        }
        return 1;
    }
    size_t run = 0, double_colons = 0;
    int seen_dot = 0;
    if (len > V6_MAX_TEXT)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (ch == ':') {
            if (seen_dot)
                return 0;
            if (i > 0 && s[i - 1] == ':') {
                if (++double_colons > 1 || (i > 1 && s[i - 2] == ':'))
                    return 0;
            }
            run = 0;
        } else if (ch == '.') {
            seen_dot = 1;
            run = 0;
        } else if (is_hex(ch)) {
            if (++run > 4 || (seen_dot && !(ch >= '0' && ch <= '9')))
                return 0;
        } else {
            return 0;
        }
    }
    return 1;
}

/* One space-terminated address field of a v1 line. */
static int pp1_addr(const char *buf, size_t n, size_t *pos, int family, uint8_t addr[16])
{
    size_t start = *pos, i = start;
    int got;

    while (i < n && buf[i] != ' ') {
        if (!ip_prefix_ok(family, buf + start, i + 1 - start))
            return PGW_ERR;
        i++;
    }
    if (i == n)
        return PGW_AGAIN;
    if (parse_ip_bytes(buf + start, i - start, family, &got, addr) != PGW_OK)
        return PGW_ERR;
    *pos = i + 1;
    return PGW_OK;
}

/* One port field of a v1 line, ended by <term> (' ' or '\r'). */
static int pp1_port(const char *buf, size_t n, size_t *pos, char term, uint16_t *port)
{
    size_t start = *pos, i = start;
    unsigned v = 0;

    for (; i < n && buf[i] != term; i++) {
        if (buf[i] < '0' || buf[i] > '9' || (i > start && buf[start] == '0'))
            return PGW_ERR;
        v = v * 10 + (unsigned)(buf[i] - '0');
        if (v > 65535)
            return PGW_ERR;
    }
    if (i == n)
        return PGW_AGAIN;
    if (i == start)
        return PGW_ERR;
    *port = (uint16_t)v;
    *pos = i + 1;
    return PGW_OK;
}

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ != PGW_OK)                                                                         \
            return rc_;                                                                            \
    } while (0)

/* The v1 grammar over the first <n> bytes (at most PP1_MAX): "PROXY TCP4|TCP6 src dst sport
 * dport\r\n" with single spaces, or "PROXY UNKNOWN[ anything]\r\n". */
static int pp1_scan(const char *buf, size_t n, struct sockaddr_storage *src, socklen_t *src_len)
{
    size_t pos = 0;
    uint8_t saddr[16], daddr[16];
    uint16_t sport, dport;
    int family;

    TRY(expect_lit(buf, n, &pos, "PROXY ", 6));
    size_t proto = pos;
    int r4 = expect_lit(buf, n, &pos, "TCP4 ", 5);
    pos = proto;
    int r6 = expect_lit(buf, n, &pos, "TCP6 ", 5);
    pos = proto;
    int ru = expect_lit(buf, n, &pos, "UNKNOWN", 7);
    if (ru == PGW_OK) {
        /* the rest of an UNKNOWN line is ignored, but it is still one line */
        if (pos < n && buf[pos] == ' ') {
            while (++pos < n && buf[pos] != '\r')
                if (buf[pos] == '\n')
                    return PGW_ERR;
        }
        TRY(expect_lit(buf, n, &pos, "\r\n", 2));
        memset(src, 0, sizeof(*src));
        src->ss_family = AF_UNSPEC;
        *src_len = 0;
        return (int)pos;
    }
    if (r4 == PGW_OK)
        family = AF_INET;
    else if (r6 == PGW_OK)
        family = AF_INET6;
    else if (r4 == PGW_AGAIN || r6 == PGW_AGAIN || ru == PGW_AGAIN)
        return PGW_AGAIN;
    else
        return PGW_ERR;
    pos = proto + 5;
    TRY(pp1_addr(buf, n, &pos, family, saddr));
    TRY(pp1_addr(buf, n, &pos, family, daddr));
    TRY(pp1_port(buf, n, &pos, ' ', &sport));
    TRY(pp1_port(buf, n, &pos, '\r', &dport));
    TRY(expect_lit(buf, n, &pos, "\n", 1));
    *src_len = fill_sa(src, family, saddr, sport);
    return (int)pos;
}

static int pp1_parse(const char *buf, size_t len, struct sockaddr_storage *src,
                     socklen_t *src_len)
{
    int rc = pp1_scan(buf, PGW_MIN(len, (size_t)PP1_MAX), src, src_len);
    /* 107 bytes without a complete line: no valid header is that long */
    if (rc == PGW_AGAIN && len >= PP1_MAX)
        return PGW_ERR;
    return rc;
}

static int pp2_parse(const char *buf, size_t len, struct sockaddr_storage *src,
                     socklen_t *src_len)
{
    const uint8_t *b = (const uint8_t *)buf;
    size_t pos = 0;

    TRY(expect_lit(buf, len, &pos, pp2_sig, sizeof(pp2_sig)));
    if (len < 13)
        return PGW_AGAIN;
    unsigned version = b[12] >> 4, command = b[12] & 0x0f;
    if (version != 2 || command > 1)
        return PGW_ERR;
    if (len < 14)
        return PGW_AGAIN;
    unsigned fam = b[13];
    /* LOCAL (health checks from the proxy itself) must be accepted whatever the family byte;
     * for PROXY only the combinations the spec defines are */
    if (command == 1 && fam != 0x00 && fam != 0x11 && fam != 0x12 && fam != 0x21 &&
        fam != 0x22 && fam != 0x31 && fam != 0x32)
        return PGW_ERR;
    if (len < PP2_HEADER)
        return PGW_AGAIN;
    size_t alen = (size_t)b[14] << 8 | b[15];
    size_t need = 0;
    if (command == 1)
        need = (fam >> 4) == 1 ? 12 : (fam >> 4) == 2 ? 36 : (fam >> 4) == 3 ? 216 : 0;
    if (alen < need)
        return PGW_ERR;
    if (len < PP2_HEADER + alen)
        return PGW_AGAIN;
    /* TCP over IPv4 or IPv6 gives the client; LOCAL, UNSPEC, UDP and unix sockets keep the peer */
    if (command == 1 && fam == 0x11) {
        *src_len = fill_sa(src, AF_INET, b + 16, (uint16_t)(b[24] << 8 | b[25]));
    } else if (command == 1 && fam == 0x21) {
        *src_len = fill_sa(src, AF_INET6, b + 16, (uint16_t)(b[48] << 8 | b[49]));
    } else {
        memset(src, 0, sizeof(*src));
        src->ss_family = AF_UNSPEC;
        *src_len = 0;
    }
    return (int)(PP2_HEADER + alen);
}

int pgw_addr_parse_proxy_protocol(const char *buf, size_t len, struct sockaddr_storage *src,
                                  socklen_t *src_len)
{
    if (len == 0)
        return PGW_AGAIN;
    if (buf[0] == 'P')
        return pp1_parse(buf, len, src, src_len);
    if (buf[0] == '\r')
        return pp2_parse(buf, len, src, src_len);
    return PGW_ERR;
}

/* ---- X-Forwarded-For ---- */

/* One list element, OWS already trimmed: "1.2.3.4", "1.2.3.4:80", "2001:db8::1", "[::1]",
 * "[::1]:80". The port is validated and dropped. */
static int parse_xff_elem(const char *s, size_t len, struct sockaddr_storage *out)
{
    uint8_t addr[16];
    uint16_t port;
    int family;

    if (len > 0 && s[0] == '[') {
        const char *end = memchr(s, ']', len);
        if (end == NULL)
            return PGW_ERR;
        size_t rest = len - (size_t)(end + 1 - s);
        if (rest > 0 && (end[1] != ':' || parse_port(end + 2, rest - 1, 1, &port) != PGW_OK))
            return PGW_ERR;
        if (parse_ip_bytes(s + 1, (size_t)(end - s - 1), AF_INET6, &family, addr) != PGW_OK)
            return PGW_ERR;
    } else {
        const char *colon = memchr(s, ':', len);
        size_t alen = len;
        /* a single colon is an IPv4 port; more make an unbracketed IPv6 address */
        if (colon != NULL && memchr(colon + 1, ':', len - (size_t)(colon + 1 - s)) == NULL) {
            alen = (size_t)(colon - s);
            if (parse_port(colon + 1, len - alen - 1, 1, &port) != PGW_OK)
                return PGW_ERR;
            if (parse_ip_bytes(s, alen, AF_INET, &family, addr) != PGW_OK)
                return PGW_ERR;
        } else if (parse_ip_bytes(s, alen, AF_UNSPEC, &family, addr) != PGW_OK) {
            return PGW_ERR;
        }
    }
    fill_sa(out, family, addr, 0);
    return PGW_OK;
}

int pgw_addr_from_xff(const char *const *values, const size_t *lens, size_t n,
                      const struct pgw_cidr *trusted, size_t num_trusted,
                      struct sockaddr_storage *out)
{
    struct sockaddr_storage cand;
    int found = 0;

    for (size_t f = n; f-- > 0;) {
        const char *v = values[f];
        size_t end = lens[f];
        for (;;) {
            size_t start = end;
            while (start > 0 && v[start - 1] != ',')
                start--;
            size_t a = start, b = end;
            while (a < b && (v[a] == ' ' || v[a] == '\t'))
                a++;
            while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
                b--;
            /* empty list elements are legal HTTP ("a, , b") and carry nothing */
            if (a < b) {
                /* a broken chain: we cannot tell who wrote what is further left, so the answer
                 * is the last hop we could read (nginx's real_ip_recursive does the same) */
                if (parse_xff_elem(v + a, b - a, &cand) != PGW_OK)
                    return found ? PGW_OK : PGW_DECLINED;
                *out = cand;
                found = 1;
                if (!pgw_cidr_match_any(trusted, num_trusted, (const struct sockaddr *)out))
                    return PGW_OK;
            }
            if (start == 0)
                break;
            end = start - 1;
        }
    }
    return found ? PGW_OK : PGW_DECLINED;
}

int pgw_addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family != AF_INET6)
        return 0;
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

static int hosts_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }

size_t pgw_hosts_lookup(const char *text, size_t len, const char *name, size_t name_len,
                        struct sockaddr_storage *out, socklen_t *out_lens, size_t max)
{
    size_t found = 0;
    const char *p = text, *end = text + len;
    while (p < end && found < max) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = eol ? eol : end;
        const char *hash = memchr(p, '#', (size_t)(line_end - p));
        const char *stop = hash ? hash : line_end;
        const char *fields[2];
        size_t flen[2], nf = 0;
        int matched = 0;
        for (const char *q = p; q < stop;) {
            while (q < stop && hosts_space(*q))
                q++;
            const char *w = q;
            while (q < stop && !hosts_space(*q))
                q++;
            if (q == w)
                break;
            if (nf < 2) {
                fields[nf] = w;
                flen[nf++] = (size_t)(q - w);
            }
            if (nf >= 2 && w != fields[0] && pgw_str_ieq(w, (size_t)(q - w), name, name_len))
                matched = 1;
        }
        if (matched && pgw_addr_parse_ip(fields[0], flen[0], &out[found], &out_lens[found]) ==
                           PGW_OK)
            found++;
        p = eol ? eol + 1 : end;
    }
    return found;
}
