/* config_ws.c: a route's `websocket:` setting (docs/websocket.md): `true`, `false`, or a map of
 * allowed_origins, max_message, idle_timeout, close_timeout, and the route selection per message
 * (selection, actions, default). */
#include "config_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

#define SELECTION_DEPTH_MAX 8
#define SELECTION_NAME_MAX 128
#define ACTIONS_MAX 256

/* `selection`: a dotted path of member names ("action", "meta.type"); the AWS form
 * "$request.body.action" is accepted. */
static void load_selection(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                           struct pgw_config_websocket *ws)
{
    static const char aws[] = "$request.body.";
    char q[PGW_ERRS_QUOTE_MAX];
    if (!pgw_cfg_want_scalar(x, v, where, "selection", "a dotted JSON field name"))
        return;
    const char *s = v->str, *end = v->str + v->len;
    if (v->len >= sizeof(aws) - 1 && memcmp(s, aws, sizeof(aws) - 1) == 0) {
        s += sizeof(aws) - 1;
    } else if (v->str[0] == '$') {
        pgw_cfg_err(x, v->line, where, "selection", "%s: the AWS form is $request.body.<field>",
                    pgw_errs_quote(q, v->str, v->len));
        return;
    }
    char *names[SELECTION_DEPTH_MAX];
    size_t n = 0;
    const char *why = NULL;
    for (const char *p = s; why == NULL; p++) {
        const char *seg = p;
        while (p < end && *p != '.' && (unsigned char)*p > ' ' && *p != 0x7f)
            p++;
        if (p < end && *p != '.')
            why = "a field name has a space or a control character";
        else if (p == seg)
            why = "a field name is empty";
        else if ((size_t)(p - seg) > SELECTION_NAME_MAX)
            why = "a field name is longer than 128 bytes";
        else if (n == SELECTION_DEPTH_MAX)
            why = "more than 8 levels";
        else
            names[n++] = pgw_strndup(seg, (size_t)(p - seg));
        if (p >= end)
            break;
    }
    if (why != NULL) {
        pgw_cfg_err(x, v->line, where, "selection", "%s is not a dotted field path (%s)",
                    pgw_errs_quote(q, v->str, v->len), why);
        for (size_t i = 0; i < n; i++)
            free(names[i]);
        return;
    }
    ws->selection = pgw_calloc(n, sizeof(*ws->selection));
    memcpy(ws->selection, names, n * sizeof(*names));
    ws->selection_depth = n;
}

/* An action's (or the default's) map: { policies: [...] }. */
static void load_chain(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                       struct pgw_config_policies *ps)
{
    static const char *const extras[] = {"policies", NULL};
    if (!pgw_cfg_want_kind(x, v, PGW_YAML_MAP, where, NULL))
        return;
    pgw_cfg_walk_keys(x, v, where, extras, NULL, 0, NULL);
    const struct pgw_yaml_node *p = pgw_cfg_require(x, v, where, "policies");
    if (p == NULL)
        return;
    pgw_cfg_load_policies(x, p, where, ps);
    if (p->kind == PGW_YAML_SEQ && p->n == 0)
        pgw_cfg_err(x, p->line, where, "policies", "must not be empty");
}

static int has_control(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < ' ' || s[i] == 0x7f)
            return 1;
    return 0;
}

static void load_actions(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                         struct pgw_config_websocket *ws)
{
    char q[PGW_ERRS_QUOTE_MAX], aw[PGW_ERRS_QUOTE_MAX + 64];
    if (!pgw_cfg_want_kind(x, v, PGW_YAML_MAP, where, "actions"))
        return;
    size_t n = v->n / 2;
    if (n == 0 || n > ACTIONS_MAX) {
        pgw_cfg_err(x, v->line, where, "actions", "must name 1 to 256 actions");
        return;
    }
    ws->actions = pgw_calloc(n, sizeof(*ws->actions));
    for (size_t i = 0; i < n; i++) {
        const struct pgw_yaml_node *k = v->kids[2 * i], *c = v->kids[2 * i + 1];
        if (!pgw_cfg_want_scalar(x, k, where, "actions", "an action name"))
            continue;
        if (k->len == 0 || k->len > PGW_WS_ACTION_NAME_MAX || has_control(k->str, k->len)) {
            pgw_cfg_err(x, k->line, where, "actions", "%s: an action name has 1 to 256 bytes, "
                        "no control character", pgw_errs_quote(q, k->str, k->len));
            continue;
        }
        for (size_t j = 0; j < ws->num_actions; j++)
            if (ws->actions[j].name_len == k->len && memcmp(ws->actions[j].name, k->str, k->len) == 0)
                pgw_cfg_err(x, k->line, where, "actions", "action %s is defined twice",
                            pgw_errs_quote(q, k->str, k->len));
        struct pgw_config_ws_action *a = &ws->actions[ws->num_actions++];
        a->name = pgw_strndup(k->str, k->len);
        a->name_len = k->len;
        snprintf(aw, sizeof(aw), "%s.actions.%s", where, pgw_errs_quote(q, k->str, k->len));
        load_chain(x, c, aw, &a->policies);
    }
}

/* selection, actions and default go together (default is optional). */
static void load_routing(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                         struct pgw_config_websocket *ws)
{
    const struct pgw_yaml_node *sel = pgw_cfg_map_get(v, "selection");
    const struct pgw_yaml_node *act = pgw_cfg_map_get(v, "actions");
    const struct pgw_yaml_node *def = pgw_cfg_map_get(v, "default");
    if (sel != NULL)
        load_selection(x, sel, where, ws);
    if (act != NULL)
        load_actions(x, act, where, ws);
    if (def != NULL) {
        char dw[64];
        snprintf(dw, sizeof(dw), "%s.default", where);
        load_chain(x, def, dw, &ws->default_policies);
    }
    if (sel != NULL && act == NULL)
        pgw_cfg_err(x, sel->line, where, "selection", "needs websocket.actions (the chains it selects)");
    if (act != NULL && sel == NULL)
        pgw_cfg_err(x, act->line, where, "actions", "needs websocket.selection (the field naming the action)");
    if (def != NULL && (sel == NULL || act == NULL))
        pgw_cfg_err(x, def->line, where, "default", "goes with websocket.selection and websocket.actions "
                    "(without them, the route's policies see every message)");
}

void pgw_cfg_load_route_websocket(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v,
                                  const char *route_where, struct pgw_config_route *r)
{
    static const char *const extras[] = {"allowed_origins", "selection", "actions", "default", NULL};
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
    load_routing(x, v, where, ws);
}

void pgw_cfg_free_route_websocket(struct pgw_config_route *r)
{
    if (r->websocket == NULL)
        return;
    for (size_t i = 0; i < r->websocket->num_allowed_origins; i++)
        free(r->websocket->allowed_origins[i]);
    free(r->websocket->allowed_origins);
    for (size_t i = 0; i < r->websocket->selection_depth; i++)
        free(r->websocket->selection[i]);
    free(r->websocket->selection);
    for (size_t i = 0; i < r->websocket->num_actions; i++) {
        free(r->websocket->actions[i].name);
        pgw_cfg_free_policies(&r->websocket->actions[i].policies);
    }
    free(r->websocket->actions);
    pgw_cfg_free_policies(&r->websocket->default_policies);
    free(r->websocket);
    r->websocket = NULL;
}
