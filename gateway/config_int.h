/* config_int.h: the schema-walking helpers of config.c, shared with the section loaders kept in
 * their own files (config_tls.c). Not for other modules: they read struct pgw_config only.
 *
 * Every reader reports its own errors as "<where>.<key>: message" at the value's line and returns
 * PGW_ERR (or NULL / 0) so that the caller simply moves on: errors are collected, not fatal.
 */
#ifndef PGW_CONFIG_INT_H
#define PGW_CONFIG_INT_H

#include "config.h"
#include "yamltree.h"

#include <stddef.h>

#define KIB 1024ull
#define SEC 1000ull
#define MAX_DURATION (7 * 24 * 3600 * SEC)

struct pgw_cfg_ctx {
    struct pgw_errs *e;
    struct pgw_config *c;
};

enum field_type { F_BOOL, F_COUNT, F_SIZE, F_DURATION };

/* A key whose value goes straight into a struct member of the same name. */
struct field {
    const char *key;
    enum field_type type;
    size_t off, size;
    uint64_t min, max;
};

#define FIELD(type_, st, member, min_, max_)                                                       \
    {#member, type_, offsetof(st, member), sizeof(((st *)0)->member), min_, max_}

/* Reports "<where>.<key>: message" (or "<where>: " / "<key>: " when one of them is missing). */
void PGW_PRINTF(5, 6) pgw_cfg_err(struct pgw_cfg_ctx *x, unsigned line, const char *where,
                                  const char *key, const char *fmt, ...);
const struct pgw_yaml_node *pgw_cfg_map_get(const struct pgw_yaml_node *map, const char *key);
int pgw_cfg_want_scalar(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n, const char *where,
                        const char *key, const char *expected);
int pgw_cfg_want_kind(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n,
                      enum pgw_yaml_kind kind, const char *where, const char *key);
/* Looks up a required key, reporting its absence at the map's line. */
const struct pgw_yaml_node *pgw_cfg_require(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *map,
                                            const char *where, const char *key);
/* A non-empty string into *out (replacing what was there). */
int pgw_cfg_read_str(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                     const char *key, char **out);
/* Returns the index of <v> in <names> (NULL-terminated) or -1 after reporting it. */
int pgw_cfg_read_enum(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                      const char *key, const char *const *names);
int pgw_cfg_read_bool(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                      const char *key, int *out);
/* Reads the keys of <map> found in <fields> into <base>, reports keys in neither <fields> nor
 * <extras> (which the caller reads itself). */
void pgw_cfg_walk_keys(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *map, const char *where,
                       const char *const *extras, const struct field *fields, size_t nf,
                       void *base);

/* A `policies:` list (entries NAME or { NAME: { settings } }) into *ps. */
void pgw_cfg_load_policies(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                           struct pgw_config_policies *ps);
void pgw_cfg_free_policies(struct pgw_config_policies *ps);

/* config_tls.c */
void pgw_cfg_load_listener_tls(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n,
                               const char *where, struct pgw_config_listener *l);
void pgw_cfg_load_upstream_tls(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n,
                               const char *where, struct pgw_config_upstream *u);
void pgw_cfg_load_tls_section(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n);
void pgw_cfg_free_tls(struct pgw_config *c);

/* config_jwt.c */
void pgw_cfg_load_jwt_section(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n);
void pgw_cfg_free_jwt(struct pgw_config *c);

/* config_ws.c */
void pgw_cfg_load_route_websocket(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v,
                                  const char *where, struct pgw_config_route *r);
void pgw_cfg_free_route_websocket(struct pgw_config_route *r);

#endif
