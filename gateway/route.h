/* route.h: path normalisation and the per-listener route tables. Pure code (no libevent, no Lua).
 *
 * Paths are normalised before matching, and the normalised path is what the upstream receives:
 * percent-encoded unreserved characters are decoded (%61 -> a), other percent-escapes are kept with
 * upper-case hex digits, dot-segments are removed (RFC 3986 section 5.2.4), runs of '/' are merged.
 * %2F and %5C (encoded slash and backslash) are rejected unless allowed; %00, a malformed escape
 * ("%4", "%zz") or a raw byte that is not allowed in a path is always rejected. A path that tries
 * to climb above the root ("/../x") is clamped at the root, as browsers and nginx do.
 *
 * A route table holds, for one listener, the routes that name it, sorted by precedence:
 * exact paths, then templates ("/users/{id}": each {name} matches one non-empty segment), then
 * prefixes ("/orders/": the path itself without the final slash and everything below it), the
 * longer (more literal characters) first within each kind; at equal path a route with a host beats
 * one without and a route with methods beats one without. Host matching is case-insensitive on the
 * authority without its port; "*.example.com" matches one or more labels before ".example.com".
 */
#ifndef PGW_ROUTE_H
#define PGW_ROUTE_H

#include "pgw.h"
#include "config.h"

#define PGW_ROUTE_MAX_PARAMS 8

/* Normalises the path <in,in_len> (starting with '/') into <out> (capacity at least in_len + 1:
 * the result is never longer than the input). Returns PGW_OK with *out_len set, or PGW_ERR with
 * *err set to a static description (the caller answers 400). */
int pgw_route_normalize_path(const char *in, size_t in_len, char *out, size_t *out_len,
                             int allow_encoded_slash, const char **err);

struct pgw_route_param {
    const char *name; /* from the route's template; lives as long as the table */
    size_t name_len;
    const char *value; /* slice of the matched path */
    size_t value_len;
};

struct pgw_route_match {
    const struct pgw_config_route *route; /* NULL when nothing matched */
    int index;                            /* index of route in config->routes */
    int method_mismatch; /* a route matched host and path but not the method (answer 405) */
    size_t prefix_len;   /* for prefix routes: the length of the matched prefix without its final '/' */
    struct pgw_route_param params[PGW_ROUTE_MAX_PARAMS];
    size_t num_params;
};

struct pgw_route_table;

/* Builds the table of the routes of <config> that name listener <listener_name>. The table keeps
 * pointers into <config>: it must not outlive it. Returns NULL with *err on an invalid template
 * (config.c validates templates first, so this does not happen for a loaded config). */
struct pgw_route_table *pgw_route_table_new(const struct pgw_config *config,
                                            const char *listener_name, const char **err);
void pgw_route_table_free(struct pgw_route_table *t);

/* Finds the route for <host> (authority, may carry ":port"; may be NULL), <method> and the
 * normalised <path>. Fills <m>; returns PGW_OK when a route matched, PGW_DECLINED otherwise
 * (m->method_mismatch tells 405 from 404). Parameter values are slices of <path>. */
int pgw_route_match(const struct pgw_route_table *t, const char *host, size_t host_len,
                    const char *method, size_t method_len, const char *path, size_t path_len,
                    struct pgw_route_match *m);

/* Validates a path pattern as config.c needs it: starts with '/', template braces well formed
 * with names [A-Za-z_][A-Za-z0-9_]* each a whole segment, at most PGW_ROUTE_MAX_PARAMS.
 * Returns PGW_OK or PGW_ERR with *err set. */
int pgw_route_check_pattern(const char *pattern, const char **err);

#endif
