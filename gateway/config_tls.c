/* config_tls.c: the TLS keys of the configuration (docs/tls.md): `tls` on listeners and on
 * upstream groups, and the top-level `tls` section. Only the shape is checked here; the files
 * themselves are read and checked by tls.c in the master (pgw_tls_prepare).
 */
#include "config_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Listeners ---- */

static const struct field listener_tls_fields[] = {
    FIELD(F_DURATION, struct pgw_config_listener_tls, handshake_timeout, 1, 600 * SEC),
    FIELD(F_BOOL, struct pgw_config_listener_tls, session_tickets, 0, 1),
    FIELD(F_COUNT, struct pgw_config_listener_tls, verify_depth, 1, 16),
};

static void load_certs(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                       struct pgw_config_listener_tls *t)
{
    static const char *const keys[] = {"cert", "key", NULL};
    char ew[160];

    if (!pgw_cfg_want_kind(x, v, PGW_YAML_SEQ, where, "certificates"))
        return;
    if (v->n == 0) {
        pgw_cfg_err(x, v->line, where, "certificates", "at least one {cert, key} is needed");
        return;
    }
    t->certs = pgw_calloc(v->n, sizeof(*t->certs));
    for (size_t i = 0; i < v->n; i++) {
        const struct pgw_yaml_node *e = v->kids[i], *f;
        snprintf(ew, sizeof(ew), "%s.certificates[%zu]", where, i);
        if (!pgw_cfg_want_kind(x, e, PGW_YAML_MAP, ew, NULL))
            continue;
        struct pgw_config_tls_cert *c = &t->certs[t->num_certs++];
        c->line = e->line;
        pgw_cfg_walk_keys(x, e, ew, keys, NULL, 0, NULL);
        if ((f = pgw_cfg_require(x, e, ew, "cert")) != NULL)
            pgw_cfg_read_str(x, f, ew, "cert", &c->cert);
        if ((f = pgw_cfg_require(x, e, ew, "key")) != NULL)
            pgw_cfg_read_str(x, f, ew, "key", &c->key);
    }
}

static void load_protocols(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *v, const char *where,
                           struct pgw_config_listener_tls *t)
{
    static const char *const names[] = {"TLSv1.2", "TLSv1.3", NULL};
    if (!pgw_cfg_want_kind(x, v, PGW_YAML_SEQ, where, "protocols"))
        return;
    if (v->n == 0) {
        pgw_cfg_err(x, v->line, where, "protocols", "at least one of TLSv1.2, TLSv1.3 is needed");
        return;
    }
    t->protocols = 0;
    for (size_t i = 0; i < v->n; i++) {
        int k = pgw_cfg_read_enum(x, v->kids[i], where, "protocols", names);
        if (k >= 0)
            t->protocols |= k == 0 ? PGW_TLS_V12 : PGW_TLS_V13;
    }
    if (t->protocols == 0)
        t->protocols = PGW_TLS_V12 | PGW_TLS_V13; /* already reported */
}

void pgw_cfg_load_listener_tls(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n,
                               const char *lwhere, struct pgw_config_listener *l)
{
    static const char *const extras[] = {"certificates", "unknown_sni", "protocols", "ciphers",
                                         "verify_client", "client_ca", NULL};
    static const char *const sni[] = {"default", "reject", NULL};
    static const char *const verify[] = {"off", "optional", "required", NULL};
    char where[64];
    const struct pgw_yaml_node *v;

    snprintf(where, sizeof(where), "%s.tls", lwhere);
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, lwhere, "tls"))
        return;
    struct pgw_config_listener_tls *t = pgw_calloc(1, sizeof(*t));
    l->tls = t;
    t->line = n->line;
    t->protocols = PGW_TLS_V12 | PGW_TLS_V13;
    t->handshake_timeout = 10 * SEC;
    t->session_tickets = 1;
    t->verify_depth = 4;
    pgw_cfg_walk_keys(x, n, where, extras, listener_tls_fields,
                      PGW_ARRAY_LEN(listener_tls_fields), t);
    if ((v = pgw_cfg_require(x, n, where, "certificates")) != NULL)
        load_certs(x, v, where, t);
    if ((v = pgw_cfg_map_get(n, "unknown_sni")) != NULL)
        t->reject_unknown_sni = pgw_cfg_read_enum(x, v, where, "unknown_sni", sni) == 1;
    if ((v = pgw_cfg_map_get(n, "protocols")) != NULL)
        load_protocols(x, v, where, t);
    if ((v = pgw_cfg_map_get(n, "ciphers")) != NULL)
        pgw_cfg_read_str(x, v, where, "ciphers", &t->ciphers);
    if ((v = pgw_cfg_map_get(n, "client_ca")) != NULL)
        pgw_cfg_read_str(x, v, where, "client_ca", &t->client_ca);
    if ((v = pgw_cfg_map_get(n, "verify_client")) != NULL) {
        int k;
        if (v->kind == PGW_YAML_SCALAR && v->is_plain && pgw_yaml_is(v, "false"))
            k = 0; /* off written as a boolean */
        else
            k = pgw_cfg_read_enum(x, v, where, "verify_client", verify);
        t->verify_client = k < 0 ? 0 : k;
        if (k > 0 && t->client_ca == NULL)
            pgw_cfg_err(x, v->line, where, "verify_client",
                        "needs client_ca (the CAs client certificates must chain to)");
    }
}

/* ---- Upstreams ---- */

static const struct field upstream_tls_fields[] = {
    FIELD(F_BOOL, struct pgw_config_upstream_tls, verify, 0, 1),
};

void pgw_cfg_load_upstream_tls(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n,
                               const char *uwhere, struct pgw_config_upstream *u)
{
    static const char *const extras[] = {"ca", "server_name", "cert", "key", NULL};
    static const char *const strs[] = {"ca", "server_name", "cert", "key"};
    char where[96];

    snprintf(where, sizeof(where), "%s.tls", uwhere);
    if (n->kind == PGW_YAML_SCALAR) {
        int on;
        if (pgw_cfg_read_bool(x, n, uwhere, "tls", &on) == PGW_OK && on) {
            u->tls = pgw_calloc(1, sizeof(*u->tls));
            u->tls->verify = 1;
            u->tls->line = n->line;
        }
        return;
    }
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, uwhere, "tls"))
        return;
    struct pgw_config_upstream_tls *t = pgw_calloc(1, sizeof(*t));
    u->tls = t;
    t->verify = 1;
    t->line = n->line;
    pgw_cfg_walk_keys(x, n, where, extras, upstream_tls_fields,
                      PGW_ARRAY_LEN(upstream_tls_fields), t);
    char **outs[] = {&t->ca, &t->server_name, &t->cert, &t->key};
    for (size_t i = 0; i < PGW_ARRAY_LEN(strs); i++) {
        const struct pgw_yaml_node *v = pgw_cfg_map_get(n, strs[i]);
        if (v != NULL)
            pgw_cfg_read_str(x, v, where, strs[i], outs[i]);
    }
    if ((t->cert == NULL) != (t->key == NULL))
        pgw_cfg_err(x, n->line, where, NULL, "cert and key go together (mutual TLS)");
}

/* ---- The top-level section ---- */

void pgw_cfg_load_tls_section(struct pgw_cfg_ctx *x, const struct pgw_yaml_node *n)
{
    static const struct field fields[] = {
        FIELD(F_DURATION, struct pgw_config, tls_ticket_rotation, 60 * SEC, 7 * 24 * 3600 * SEC),
    };
    if (!pgw_cfg_want_kind(x, n, PGW_YAML_MAP, "", "tls"))
        return;
    /* the member is named tls_ticket_rotation; the key is ticket_rotation */
    struct field f = fields[0];
    f.key = "ticket_rotation";
    pgw_cfg_walk_keys(x, n, "tls", NULL, &f, 1, x->c);
}

void pgw_cfg_free_tls(struct pgw_config *c)
{
    for (size_t i = 0; i < c->num_listeners; i++) {
        struct pgw_config_listener_tls *t = c->listeners[i].tls;
        if (t == NULL)
            continue;
        for (size_t j = 0; j < t->num_certs; j++) {
            free(t->certs[j].cert);
            free(t->certs[j].key);
        }
        free(t->certs);
        free(t->ciphers);
        free(t->client_ca);
        free(t);
    }
    for (size_t i = 0; i < c->num_upstreams; i++) {
        struct pgw_config_upstream_tls *t = c->upstreams[i].tls;
        if (t == NULL)
            continue;
        free(t->ca);
        free(t->server_name);
        free(t->cert);
        free(t->key);
        free(t);
    }
}
