/* addr.h: socket addresses, CIDR ranges and the real client address (PROXY protocol v1/v2 and
 * X-Forwarded-For from trusted proxies). Pure code: no libevent, no Lua. Used by config.c to parse
 * listener addresses and trusted ranges, by server.c for the client address, later by ACLs.
 */
#ifndef PGW_ADDR_H
#define PGW_ADDR_H

#include "pgw.h"

#include <stdint.h>
#include <sys/socket.h>

struct pgw_cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16]; /* network byte order, host bits cleared */
    unsigned prefix;  /* bits */
};

/* Parses "10.0.0.0/8", "::1/128" or a single address ("192.168.1.7" = /32, "::1" = /128) of
 * <len> bytes. Host bits set beyond the prefix are cleared ("10.1.2.3/8" = 10.0.0.0/8). Strict:
 * no whitespace, no brackets or zone, no IPv4 octet or prefix with a leading zero ("010.0.0.1"
 * could mean octal to other tools), prefix 0..32 or 0..128. Returns PGW_OK or PGW_ERR. */
int pgw_cidr_parse(const char *s, size_t len, struct pgw_cidr *c);
/* Whether <sa> (AF_INET or AF_INET6) lies within <c>; an IPv4-mapped IPv6 address (::ffff:a.b.c.d)
 * matches IPv4 ranges, and an IPv4 address matches IPv6 ranges that contain its mapped form
 * (::/0, ::ffff:0:0/96). Other families never match. */
int pgw_cidr_match(const struct pgw_cidr *c, const struct sockaddr *sa);
int pgw_cidr_match_any(const struct pgw_cidr *c, size_t n, const struct sockaddr *sa);

/* Parses the NUL-terminated listen address "host:port", "[v6]:port", "*:port" or ":port", where
 * host is an IP literal; "*" and an empty host mean 0.0.0.0 (IPv4 any; "[::]:port" for IPv6 any).
 * The port is 1..65535 without leading zeros. Rejected: no port, an unbracketed IPv6 address,
 * "[1.2.3.4]:80", host names. Returns PGW_OK with <sa>, <len> set, or PGW_ERR. */
int pgw_addr_parse_listen(const char *s, struct sockaddr_storage *sa, socklen_t *len);

/* Parses an IP literal (v4 or v6, no brackets, no port) of <len> bytes into <sa> with port 0.
 * Returns PGW_OK or PGW_ERR. */
int pgw_addr_parse_ip(const char *s, size_t len, struct sockaddr_storage *sa, socklen_t *sa_len);

/* Looks <name> (<name_len> bytes) up in the hosts-file text <text,len>: lines "address name
 * [alias...]", '#' starting a comment, names compared case-insensitively. Writes the addresses of
 * every matching line (port 0, in file order, at most <max>) into <out>/<out_lens>; lines whose
 * address does not parse are skipped. Returns how many were found. */
size_t pgw_hosts_lookup(const char *text, size_t len, const char *name, size_t name_len,
                        struct sockaddr_storage *out, socklen_t *out_lens, size_t max);

/* Whether <a> and <b> are the same IPv4 or IPv6 address and port (other families: never). */
int pgw_addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

/* Writes the address of <sa> without port ("10.1.2.3", "2001:db8::1"; IPv4-mapped IPv6 shown as
 * IPv4) NUL-terminated into <buf> (PGW_ADDR_STRLEN bytes are always enough). Returns the length;
 * 0 with an empty string for other families (AF_UNSPEC, AF_UNIX) or a buffer too small. */
size_t pgw_addr_format(const struct sockaddr *sa, char *buf, size_t buflen);
#define PGW_ADDR_STRLEN 46

/* Parses a PROXY protocol header (v1 text or v2 binary) at the start of <buf,len>.
 * Returns the header length with *src set to the source address and port, *src_len to its size;
 * src->ss_family == AF_UNSPEC and *src_len == 0 mean "keep the peer address" (v1 UNKNOWN; v2
 * LOCAL; v2 PROXY over UNSPEC, UDP or AF_UNIX). Returns PGW_AGAIN while <buf> is a prefix of a
 * valid header, PGW_ERR as soon as it cannot be one (a prefix that gets PGW_ERR never becomes
 * valid with more bytes).
 * v1 is strict: "PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n" with single spaces, addresses
 * of the announced family, ports 0..65535 without leading zeros, at most 107 bytes;
 * "PROXY UNKNOWN" may carry anything up to the CRLF. v2: the 12-byte signature, version 2,
 * command LOCAL or PROXY, for PROXY one of the family/transport bytes the spec defines and an
 * address block at least as long as that family's; up to 16 + 65535 bytes, TLVs skipped. */
int pgw_addr_parse_proxy_protocol(const char *buf, size_t len, struct sockaddr_storage *src,
                                  socklen_t *src_len);

/* The client address from X-Forwarded-For field values, to call only when the peer is a trusted
 * proxy. Walks the comma-separated elements from the right (over every X-Forwarded-For field, last
 * field last; <values>/<lens> hold one field value each) and returns the first address that is
 * not in <trusted>; when all are trusted, the leftmost. Elements may carry a port ("1.2.3.4:5678",
 * "[::1]:80"; dropped: *out has port 0) and whitespace around them; empty elements are skipped.
 * An element that does not parse ("unknown", a host name, garbage) breaks the chain: what lies to
 * its left cannot be attributed to a trusted hop, so the walk stops and the result is the last
 * address read, i.e. the trusted proxy to its right (nginx real_ip_recursive does the same).
 * Returns PGW_OK with *out set, or PGW_DECLINED (*out untouched) when there is no element or the
 * rightmost one does not parse: the caller keeps the peer address. */
int pgw_addr_from_xff(const char *const *values, const size_t *lens, size_t n,
                      const struct pgw_cidr *trusted, size_t num_trusted,
                      struct sockaddr_storage *out);

#endif
