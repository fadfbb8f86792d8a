/* genfiles.c: the files of a generation (genfiles.h). */
#include "genfiles.h"
#include "jwt_provider.h"
#include "tls.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>

/* A data length that marks a file the master could not read (already reported): only in the
 * master's blob of a refused configuration, never sent to a worker. */
#define UNREADABLE UINT32_MAX

/* Adds <path> and its bytes (<data> NULL: the UNREADABLE marker). */
static void blob_add(char **blob, size_t *len, const char *path, const char *data, size_t dlen)
{
    uint32_t pl = (uint32_t)strlen(path), dl = data != NULL ? (uint32_t)dlen : UNREADABLE;
    if (data == NULL)
        dlen = 0;
    *blob = pgw_realloc(*blob, *len + 8 + pl + dlen);
    char *p = *blob + *len;
    memcpy(p, &pl, 4);
    memcpy(p + 4, path, pl);
    memcpy(p + 4 + pl, &dl, 4);
    if (dlen > 0)
        memcpy(p + 8 + pl, data, dlen);
    *len += 8 + pl + dlen;
}

int pgw_genfiles_find(const char *blob, size_t len, const char *path, const char **data,
                      size_t *dlen)
{
    size_t want = strlen(path), off = 0;
    while (off + 8 <= len) {
        uint32_t pl, dl;
        memcpy(&pl, blob + off, 4);
        if (off + 8 + pl > len)
            break;
        memcpy(&dl, blob + off + 4 + pl, 4);
        size_t bytes = dl == UNREADABLE ? 0 : dl;
        if (off + 8 + pl + bytes > len)
            break;
        if (pl == want && memcmp(blob + off + 4, path, pl) == 0) {
            *data = blob + off + 8 + pl;
            *dlen = bytes;
            return dl == UNREADABLE ? PGW_DECLINED : PGW_OK;
        }
        off += 8 + pl + bytes;
    }
    return PGW_ERR;
}

/* A file the configuration names, and where ("listeners.public.tls.certificates[0].key"). */
struct config_file {
    const char *path;
    unsigned line; /* of the setting in the configuration; 0 when unknown */
    char where[160];
};

/* Every file name the settings of <c> use (TLS, JWT keys), in a fixed order, into <out> (at most <cap>).
Returns how many there are: config_files(c, NULL, 0) counts them. */
static size_t config_files(const struct pgw_config *c, struct config_file *out, size_t cap)
{
    size_t n = 0;
#define ADD(p, line_, ...)                                                                         \
    do {                                                                                           \
        if ((p) != NULL && n++ < cap) {                                                            \
            out[n - 1].path = (p);                                                                 \
            out[n - 1].line = (line_);                                                             \
            snprintf(out[n - 1].where, sizeof(out[0].where), __VA_ARGS__);                         \
        }                                                                                          \
    } while (0)
    for (size_t i = 0; i < c->num_listeners; i++) {
        const struct pgw_config_listener_tls *t = c->listeners[i].tls;
        const char *ln = c->listeners[i].name;
        for (size_t j = 0; t != NULL && j < t->num_certs; j++) {
            ADD(t->certs[j].cert, t->certs[j].line, "listeners.%s.tls.certificates[%zu].cert", ln, j);
            ADD(t->certs[j].key, t->certs[j].line, "listeners.%s.tls.certificates[%zu].key", ln, j);
        }
        if (t != NULL)
            ADD(t->client_ca, t->line, "listeners.%s.tls.client_ca", ln);
    }
    for (size_t i = 0; i < c->num_upstreams; i++) {
        const struct pgw_config_upstream_tls *t = c->upstreams[i].tls;
        const char *un = c->upstreams[i].name;
        if (t != NULL) {
            ADD(t->ca, t->line, "upstreams.%s.tls.ca", un);
            ADD(t->cert, t->line, "upstreams.%s.tls.cert", un);
            ADD(t->key, t->line, "upstreams.%s.tls.key", un);
        }
    }
    ADD(c->http_ca, 0, "policies.http_ca");
    for (size_t i = 0; i < c->num_jwt_providers; i++) {
        const struct pgw_config_jwt_provider *p = &c->jwt_providers[i];
        for (size_t j = 0; j < p->num_keys; j++) {
            ADD(p->keys[j].file, p->keys[j].line, "jwt.providers.%s.keys[%zu].file", p->name, j);
            ADD(p->keys[j].secret_file, p->keys[j].line, "jwt.providers.%s.keys[%zu].secret_file", p->name, j);
        }
    }
#undef ADD
    return n;
}


int pgw_genfiles_prepare(const struct pgw_config *c, int warn, char **blob, size_t *blob_len,
                         char *err, size_t errlen)
{
    size_t n = config_files(c, NULL, 0);
    struct config_file *files = pgw_calloc(n ? n : 1, sizeof(*files));
    config_files(c, files, n);
    *blob = NULL;
    *blob_len = 0;
    size_t used = 0;
    if (errlen > 0)
        err[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const char *d;
        size_t dl;
        if (pgw_genfiles_find(*blob, *blob_len, files[i].path, &d, &dl) != PGW_ERR)
            continue; /* the same file twice */
        char e[512];
        size_t len = 0;
        char *data = pgw_config_read_file(files[i].path, &len, e, sizeof(e));
        if (data == NULL) { /* e: "PATH: cannot read: reason\n" */
            char at[300] = "";
            if (files[i].line > 0)
                snprintf(at, sizeof(at), "%s:%u: ", c->file, files[i].line);
            int k = snprintf(err + used, errlen - used, "%s%s: %s", at, files[i].where, e);
            used = k > 0 ? PGW_MIN(used + (size_t)k, errlen - 1) : used;
            blob_add(blob, blob_len, files[i].path, NULL, 0); /* its users stay quiet about it */
            continue;
        }
        blob_add(blob, blob_len, files[i].path, data, len);
        OPENSSL_cleanse(data, len); /* keys do not linger in freed memory */
        free(data);
    }
    free(files);
    /* what is built from the files is checked even after a read error, for its other errors */
    int ok = used == 0;
    ok &= pgw_tls_check(c, *blob, *blob_len, warn, err + used, errlen - used) == PGW_OK;
    used += strlen(err + used);
    ok &= pgw_jwt_check(c, *blob, *blob_len, err + used, errlen - used) == PGW_OK;
    if (ok)
        return PGW_OK;
    if (*blob != NULL)
        OPENSSL_cleanse(*blob, *blob_len);
    free(*blob);
    *blob = NULL;
    *blob_len = 0;
    return PGW_ERR;
}
