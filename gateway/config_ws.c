/* config_ws.c: a route's `websocket:` setting (docs/websocket.md): `true`, `false`, or a map of
 * allowed_origins, max_message, idle_timeout and close_timeout. */
#include "config_int.h"

#include <stdio.h>
#include <stdlib.h>

#define WS_FIELD(type, member, min, max) FIELD(type, struct pgw_config_websocket, member, min, max)

static const struct field ws_fields[] = {
    WS_FIELD(F_SIZE, max_message, 1, 1ull << 30),
    WS_FIELD(F_DURATION, idle_timeout, 1, MAX_DURATION),
    WS_FIELD(F_DURATION, close_timeout, 1, 600 * SEC),
};

/* An origin as browsers send it (RFC 6454): "scheme://host[:port]", no path, no user info. */
static int origin_ok(const char *s, size_t n)
{
    const char *sep = NULL;
    for (size_t i = 0; i + 2 < n; i++)
        if (s[i] == ':' && s[i + 1] == '/' && s[i + 2] == '/') {
            sep = s + i;
            break;
        }
    if (sep == NULL || sep == s)
        return 0;
    for (const char *p = s; p < sep; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              (p > s && ((*p >= '0' && *p <= '9') || *p == '+' || *p == '-' || *p == '.'))))
            return 0;
    const char *h = sep + 3;
    if (h == s + n)
        return 0;
    for (const char *p = h; p < s + n; p++) {
        unsigned char c = (unsigned char)*p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '-' || c == ':' || c == '[' || c == ']' || c == '_';
        if (!ok)
            return 0;
    }
    return 1;
}

static void load_origins(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                         struct pgw_config_websocket *ws)
{
    char q[PGW_ERRS_QUOTE_MAX];
    if (!pgw_cfg_want_kind(x, v, PGW_YAML_SEQ, where, "allowed_origins"))
        return;
    if (v->n == 0) {
        pgw_cfg_err(x, v->line, where, "allowed_origins",
                    "must not be empty: leave it out to allow any origin");
        return;
    }
    ws->allowed_origins = pgw_calloc(v->n, sizeof(*ws->allowed_origins));
    for (size_t i = 0; i < v->n; i++) {
        const struct pgw_yaml_node *s = v->kids[i];
        if (!pgw_cfg_want_kind(x, s, PGW_YAML_SCALAR, where, "allowed_origins"))
            continue;
        if (!origin_ok(s->str, s->len)) {
            pgw_cfg_err(x, s->line, where, "allowed_origins",
                        "%s is not an origin (scheme://host[:port], no path)",
                        pgw_errs_quote(q, s->str, s->len));
            continue;
        }
        char *o = pgw_strndup(s->str, s->len);
        for (size_t j = 0; j < s->len; j++)
            o[j] = (char)pgw_lower((unsigned char)o[j]);
        ws->allowed_origins[ws->num_allowed_origins++] = o;
    }
}

void pgw_cfg_load_route_websocket(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v,
                                  const char *route_where, struct pgw_config_route *r)
{
    static const char *const extras[] = {"allowed_origins", NULL};
    char where[48];
    snprintf(where, sizeof(where), "%s.websocket", route_where);
    if (v->kind == PGW_YAML_SCALAR) {
        int on = 0;
        if (pgw_cfg_read_bool(x, v, route_where, "websocket", &on) != PGW_OK || !on)
            return;
    } else if (!pgw_cfg_want_kind(x, v, PGW_YAML_MAP, route_where, "websocket")) {
        return;
    }
    struct pgw_config_websocket *ws = pgw_calloc(1, sizeof(*ws));
    ws->max_message = 1 * KIB * KIB;
    ws->idle_timeout = 300 * SEC;
    ws->close_timeout = 5 * SEC;
    r->websocket = ws;
    if (v->kind != PGW_YAML_MAP)
        return;
    pgw_cfg_walk_keys(x, v, where, extras, ws_fields, PGW_ARRAY_LEN(ws_fields), ws);
    const struct pgw_yaml_node *o = pgw_cfg_map_get(v, "allowed_origins");
    if (o != NULL)
        load_origins(x, o, where, ws);
}

void pgw_cfg_free_route_websocket(struct pgw_config_route *r)
{
    if (r->websocket == NULL)
        return;
    for (size_t i = 0; i < r->websocket->num_allowed_origins; i++)
        free(r->websocket->allowed_origins[i]);
    free(r->websocket->allowed_origins);
    free(r->websocket);
    r->websocket = NULL;
}
