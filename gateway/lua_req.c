/* lua_req.c: the request side of the SDK (docs/sdk.md): pgw.req.*, pgw.resp.*, pgw.exit,
 * pgw.ctx and pgw.log, registered into pgw.core by pgw_lua_open_req(). The query-string helpers
 * (get_query, set_query_arg, ...) are Lua, in lua/pgw/init.lua, over get_raw_query and
 * set_raw_query here.
 *
 * Ownership: everything these functions store for the request (header lists, path, body, the
 * exit response) is copied into the request's pool; Lua strings are never kept past a call.
 * Misuse raises before anything is allocated (STYLE §5).
 */
#include "log.h"
#include "lua_task.h"
#include "server.h"
#include "tls.h"

#include <stdio.h>
#include <stdlib.h>

static struct pgw_req *cur_req(lua_State *L, const char *fname, unsigned stages)
{
    pgw_bridge_check(L, fname, stages);
    struct pgw_req *req = pgw_bridge_current()->req;
    if (req == NULL)
        luaL_error(L, "%s: no request in stage %s", fname,
                   pgw_bridge_stage_name(pgw_bridge_current()->stage));
    return req;
}

#define REQ_READ PGW_STAGES_REQUEST
#define REQ_WRITE (PGW_STAGE_REWRITE | PGW_STAGE_ACCESS)
#define RESP_READ (PGW_STAGE_HEADER_FILTER | PGW_STAGE_BODY_FILTER | PGW_STAGE_LOG)
#define RESP_WRITE PGW_STAGE_HEADER_FILTER

static const char *check_str(lua_State *L, int idx, const char *fname, size_t *len)
{
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "%s: bad argument #%d (string expected, got %s)", fname, idx,
                   luaL_typename(L, idx));
    return lua_tolstring(L, idx, len);
}

/* Pushes <s,n> quoted, with control bytes escaped, cut at 80 bytes (for error messages). */
static const char *quote(lua_State *L, const char *s, size_t n)
{
    char buf[400];
    size_t j = 0;
    buf[j++] = '"';
    for (size_t i = 0; i < n && i < 80; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || c == '"' || c == '\\')
            j += (size_t)snprintf(buf + j, sizeof(buf) - j, "\\%u", c);
        else
            buf[j++] = (char)c;
    }
    if (n > 80)
        j += (size_t)snprintf(buf + j, sizeof(buf) - j, "...");
    buf[j++] = '"';
    lua_pushlstring(L, buf, j);
    return lua_tostring(L, -1);
}

/* ---- Header lists ---- */

struct hlist {
    struct pgw_http_header **v;
    size_t *n, *cap;
};

static const char *const managed[] = {"content-length", "transfer-encoding", "connection",
                                      "keep-alive", "upgrade", "te", "trailer",
                                      "proxy-connection", NULL};

/* RFC 9110 tchar, as a table: names are checked on every set. */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

static int is_tchar(unsigned char c) { return tchar[c]; }

static const char *check_name_at(lua_State *L, int idx, const char *fname, size_t *len)
{
    const char *name = check_str(L, idx, fname, len);
    int ok = *len > 0 && *len <= 256;
    for (size_t i = 0; ok && i < *len; i++)
        ok = is_tchar((unsigned char)name[i]);
    if (!ok)
        luaL_error(L, "%s: invalid header name %s", fname, quote(L, name, *len));
    return name;
}

static const char *check_name(lua_State *L, const char *fname, size_t *len)
{
    return check_name_at(L, 1, fname, len);
}

static int is_managed(const char *name, size_t len)
{
    for (size_t i = 0; managed[i] != NULL; i++)
        if (pgw_str_ieq(name, len, managed[i], strlen(managed[i])))
            return 1;
    return 0;
}

static void check_value(lua_State *L, const char *fname, const char *v, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0')
            luaL_error(L, "%s: invalid header value %s", fname, quote(L, v, len));
    if (len > 65536)
        luaL_error(L, "%s: header value longer than 64 KiB", fname);
}

/* Checks the value at <idx> (string, number or array of them); returns the number of values. */
static int check_values(lua_State *L, int idx, const char *fname)
{
    int t = lua_type(L, idx);
    if (t == LUA_TNUMBER)
        return 1; /* digits, sign, '.', 'e', "inf", "nan": nothing to inject */
    if (t == LUA_TSTRING) {
        size_t len;
        const char *v = lua_tolstring(L, idx, &len);
        check_value(L, fname, v, len);
        return 1;
    }
    int n = t == LUA_TTABLE ? (int)lua_objlen(L, idx) : 0;
    if (n <= 0 || n > 100)
        luaL_error(L, "%s: bad argument #%d (string, number or array of strings expected, got %s)",
                   fname, idx, luaL_typename(L, idx));
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "%s: bad argument #%d (value %d is a %s)", fname, idx, i,
                       luaL_typename(L, -1));
        size_t len;
        const char *v = lua_tolstring(L, -1, &len);
        check_value(L, fname, v, len);
        lua_pop(L, 1);
    }
    return n;
}

static void hl_mutable(struct pgw_pool *pool, struct hlist h, size_t extra)
{
    if (*h.cap >= *h.n + extra)
        return;
    size_t cap = (*h.n + extra) * 2 + 8;
    struct pgw_http_header *v = pgw_pool_alloc(pool, sizeof(*v) * cap);
    if (*h.n > 0)
        memcpy(v, *h.v, sizeof(*v) * *h.n);
    *h.v = v;
    *h.cap = cap;
}

static void hl_remove(struct hlist h, const char *name, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; i < *h.n; i++)
        if ((*h.v)[i].name_len != len || !pgw_str_ieq((*h.v)[i].name, len, name, len))
            (*h.v)[j++] = (*h.v)[i];
    *h.n = j;
}

static void hl_append(struct pgw_pool *pool, struct hlist h, const char *name, size_t nlen,
                      const char *v, size_t vlen)
{
    hl_mutable(pool, h, 1);
    struct pgw_http_header *f = &(*h.v)[(*h.n)++];
    f->name = pgw_pool_strndup(pool, name, nlen);
    f->name_len = nlen;
    f->value = pgw_pool_strndup(pool, v, vlen);
    f->value_len = vlen;
}

/* The text of an integral number in (-2^53, 2^53) into <buf> (24 bytes); 0 if not integral. */
static size_t int_text(lua_Number n, char *buf)
{
    if (!(n > -9007199254740992.0 && n < 9007199254740992.0) || n != (lua_Number)(int64_t)n)
        return 0;
    int64_t v = (int64_t)n;
    uint64_t u = v < 0 ? (uint64_t)(-v) : (uint64_t)v;
    char tmp[24];
    size_t k = 0;
    do {
        tmp[k++] = (char)('0' + u % 10);
        u /= 10;
    } while (u > 0);
    size_t len = 0;
    if (v < 0)
        buf[len++] = '-';
    while (k > 0)
        buf[len++] = tmp[--k];
    return len;
}

/* Appends the value(s) at <idx>, already checked. */
static void hl_append_values(lua_State *L, struct pgw_pool *pool, struct hlist h, const char *name,
                             size_t nlen, int idx)
{
    size_t len;
    char num[24];
    if (lua_type(L, idx) == LUA_TNUMBER && (len = int_text(lua_tonumber(L, idx), num)) > 0) {
        hl_append(pool, h, name, nlen, num, len); /* no Lua string made for the number */
        return;
    }
    if (lua_type(L, idx) != LUA_TTABLE) {
        const char *v = lua_tolstring(L, idx, &len);
        hl_append(pool, h, name, nlen, v, len);
        return;
    }
    int n = (int)lua_objlen(L, idx);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        const char *v = lua_tolstring(L, -1, &len);
        hl_append(pool, h, name, nlen, v, len);
        lua_pop(L, 1);
    }
}

static int hl_get(lua_State *L, struct hlist h, const char *name, size_t len)
{
    const struct pgw_http_header *one = NULL;
    size_t matches = 0;
    for (size_t i = 0; i < *h.n; i++) {
        const struct pgw_http_header *f = &(*h.v)[i];
        if (f->name_len == len && pgw_str_ieq(f->name, len, name, len)) {
            one = f;
            matches++;
        }
    }
    if (matches <= 1) {
        if (one != NULL)
            lua_pushlstring(L, one->value, one->value_len);
        else
            lua_pushnil(L);
        return 1;
    }
    luaL_Buffer b;
    int found = 0;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < *h.n; i++) {
        const struct pgw_http_header *f = &(*h.v)[i];
        if (f->name_len != len || !pgw_str_ieq(f->name, len, name, len))
            continue;
        if (found++)
            luaL_addlstring(&b, ", ", 2);
        luaL_addlstring(&b, f->value, f->value_len);
    }
    luaL_pushresult(&b);
    if (!found) {
        lua_pop(L, 1);
        lua_pushnil(L);
    }
    return 1;
}

static void push_lower(lua_State *L, const char *s, size_t n)
{
    char buf[257];
    n = PGW_MIN(n, sizeof(buf) - 1);
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)pgw_lower((unsigned char)s[i]);
    lua_pushlstring(L, buf, n);
}

static int hl_get_all(lua_State *L, struct hlist h)
{
    lua_createtable(L, 0, (int)*h.n);
    for (size_t i = 0; i < *h.n; i++) {
        const struct pgw_http_header *f = &(*h.v)[i];
        push_lower(L, f->name, f->name_len); /* t name */
        lua_pushvalue(L, -1);
        lua_rawget(L, -3); /* t name old */
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushlstring(L, f->value, f->value_len);
        } else if (lua_istable(L, -1)) {
            lua_pushlstring(L, f->value, f->value_len);
            lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
        } else {
            lua_createtable(L, 2, 0); /* t name old new */
            lua_insert(L, -2);
            lua_rawseti(L, -2, 1);
            lua_pushlstring(L, f->value, f->value_len);
            lua_rawseti(L, -2, 2);
        }
        lua_rawset(L, -3);
    }
    return 1;
}

enum { OP_SET, OP_ADD, OP_CLEAR };

/* set/add/clear on <h>: arguments (name[, value]) at 1 and 2. Returns the name checked. */
static void hl_write(lua_State *L, struct pgw_pool *pool, struct hlist h, const char *fname,
                     int op, int clear_cl_ok)
{
    size_t nlen;
    const char *name = check_name(L, fname, &nlen);
    if (is_managed(name, nlen) && !(op == OP_CLEAR && clear_cl_ok &&
                                    PGW_IEQ_LIT(name, nlen, "content-length"))) {
        lua_pushlstring(L, name, nlen);
        push_lower(L, name, nlen);
        luaL_error(L, "%s: header \"%s\" is managed by the gateway", fname, lua_tostring(L, -1));
    }
    if (op != OP_CLEAR)
        check_values(L, 2, fname);
    hl_mutable(pool, h, 0);
    if (op != OP_ADD)
        hl_remove(h, name, nlen);
    if (op != OP_CLEAR)
        hl_append_values(L, pool, h, name, nlen, 2);
}

/* ---- pgw.req ---- */

static struct hlist req_headers(struct pgw_req *req)
{
    return (struct hlist){(struct pgw_http_header **)&req->h.headers, &req->h.num_headers,
                          &req->headers_cap};
}

static int l_req_get_method(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.get_method", REQ_READ);
    lua_pushlstring(L, req->h.method ? req->h.method : "", req->h.method_len);
    return 1;
}

static int l_req_get_path(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.get_path", REQ_READ);
    if (req->path != NULL)
        lua_pushlstring(L, req->path, req->path_len);
    else
        lua_pushlstring(L, req->h.path ? req->h.path : "", req->h.path_len);
    return 1;
}

static int l_req_get_raw_path(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.get_raw_path", REQ_READ);
    lua_pushlstring(L, req->h.path ? req->h.path : "", req->h.path_len);
    return 1;
}

static int l_req_get_path_params(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.get_path_params", REQ_READ);
    lua_createtable(L, 0, (int)req->match.num_params);
    for (size_t i = 0; req->route != NULL && i < req->match.num_params; i++) {
        const struct pgw_route_param *p = &req->match.params[i];
        lua_pushlstring(L, p->name, p->name_len);
        lua_pushlstring(L, p->value, p->value_len);
        lua_rawset(L, -3);
    }
    return 1;
}

static int l_req_get_scheme(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.get_scheme", REQ_READ);
    if (req->conn->io.tls != NULL)
        lua_pushliteral(L, "https");
    else
        lua_pushliteral(L, "http");
    return 1;
}

static int l_req_get_raw_query(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.get_raw_query", REQ_READ);
    lua_pushlstring(L, req->h.query ? req->h.query : "", req->h.query ? req->h.query_len : 0);
    return 1;
}

static int l_req_set_raw_query(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.set_raw_query", REQ_WRITE);
    size_t len;
    const char *q = check_str(L, 1, "pgw.req.set_raw_query", &len);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)q[i] <= 0x20 || q[i] == '#' || (unsigned char)q[i] >= 0x7f)
            return luaL_error(L, "pgw.req.set_raw_query: invalid query string");
    if (len > 65536)
        return luaL_error(L, "pgw.req.set_raw_query: query string longer than 64 KiB");
    req->h.query = len ? pgw_pool_strndup(req->pool, q, len) : NULL;
    req->h.query_len = len;
    return 0;
}

static int l_req_get_header(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.get_header", REQ_READ);
    size_t len;
    const char *name = check_name(L, "pgw.req.get_header", &len);
    if (PGW_IEQ_LIT(name, len, "host")) {
        if (req->up_host != NULL)
            lua_pushlstring(L, req->up_host, req->up_host_len);
        else if (req->h.authority_len > 0)
            lua_pushlstring(L, req->h.authority, req->h.authority_len);
        else
            lua_pushnil(L);
        return 1;
    }
    return hl_get(L, req_headers(req), name, len);
}

static int l_req_get_headers(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.get_headers", REQ_READ);
    return hl_get_all(L, req_headers(req));
}

static void set_host(lua_State *L, struct pgw_req *req, const char *fname, int idx)
{
    size_t len;
    const char *h = check_str(L, idx, fname, &len);
    int ok = len > 0 && len <= 255;
    for (size_t i = 0; ok && i < len; i++)
        ok = (unsigned char)h[i] > 0x20 && (unsigned char)h[i] < 0x7f && !strchr("/?#@\\", h[i]);
    if (!ok)
        luaL_error(L, "%s: invalid host %s", fname, quote(L, h, len));
    req->up_host = pgw_pool_strndup(req->pool, h, len);
    req->up_host_len = len;
}

static int req_write(lua_State *L, const char *fname, int op)
{
    struct pgw_req *req = cur_req(L, fname, REQ_WRITE);
    size_t len;
    const char *name = check_name(L, fname, &len);
    if (PGW_IEQ_LIT(name, len, "host")) {
        if (op == OP_CLEAR)
            return luaL_error(L, "%s: the Host header cannot be removed", fname);
        set_host(L, req, fname, 2);
        return 0;
    }
    hl_write(L, req->pool, req_headers(req), fname, op, 0);
    return 0;
}

static int l_req_set_header(lua_State *L) { return req_write(L, "pgw.req.set_header", OP_SET); }
static int l_req_add_header(lua_State *L) { return req_write(L, "pgw.req.add_header", OP_ADD); }
static int l_req_clear_header(lua_State *L)
{
    return req_write(L, "pgw.req.clear_header", OP_CLEAR);
}

static int l_req_get_client_addr(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.get_client_addr", REQ_READ);
    lua_pushstring(L, req->client_str);
    return 1;
}

static void set_field_str(lua_State *L, const char *k, const char *v)
{
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

/* pgw.req.get_tls(): nil on a plain connection, else { protocol, cipher, server_name, resumed,
 * client = nil | { subject, issuer, serial, fingerprint, not_before, not_after, verified,
 * verify_error } } (docs/sdk.md). */
static int l_req_get_tls(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.get_tls", REQ_READ);
    const struct pgw_io *io = &req->conn->io;
    if (io->tls == NULL) {
        lua_pushnil(L);
        return 1;
    }
    lua_createtable(L, 0, 5);
    set_field_str(L, "protocol", pgw_tls_version(io));
    set_field_str(L, "cipher", pgw_tls_cipher(io));
    const char *sn = pgw_tls_server_name(io);
    if (sn != NULL)
        set_field_str(L, "server_name", sn);
    lua_pushboolean(L, pgw_tls_resumed(io));
    lua_setfield(L, -2, "resumed");
    char buf[4096];
    const char *f[7];
    if (pgw_tls_peer_fields(io, buf, sizeof(buf), f) == PGW_OK) {
        static const char *const names[] = {"subject",   "issuer",    "serial", "fingerprint",
                                            "not_before", "not_after"};
        lua_createtable(L, 0, 8);
        for (size_t i = 0; i < PGW_ARRAY_LEN(names); i++)
            set_field_str(L, names[i], f[i]);
        lua_pushboolean(L, f[6][0] == '\0');
        lua_setfield(L, -2, "verified");
        if (f[6][0] != '\0')
            set_field_str(L, "verify_error", f[6]);
        lua_setfield(L, -2, "client");
    }
    return 1;
}

static int l_req_get_listener(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.get_listener", REQ_READ);
    lua_pushstring(L, req->gen->config->listeners[req->conn->listener_index].name);
    return 1;
}

static int l_req_get_route(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.get_route", REQ_READ);
    if (req->route != NULL)
        lua_pushstring(L, req->route->name);
    else
        lua_pushnil(L);
    return 1;
}

static int l_req_get_id(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.get_id", REQ_READ);
    lua_pushlstring(L, req->id, req->id_len);
    return 1;
}

static int l_req_set_path(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.set_path", REQ_WRITE);
    size_t len;
    const char *p = check_str(L, 1, "pgw.req.set_path", &len);
    int ok = len > 0 && len <= 8192 && p[0] == '/';
    for (size_t i = 0; ok && i < len; i++)
        ok = (unsigned char)p[i] > 0x20 && (unsigned char)p[i] < 0x7f && p[i] != '?' &&
             p[i] != '#';
    if (!ok)
        return luaL_error(L, "pgw.req.set_path: invalid path %s", quote(L, p, len));
    req->up_path = pgw_pool_strndup(req->pool, p, len);
    req->up_path_len = len;
    return 0;
}

static int l_req_set_host(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.set_host", REQ_WRITE);
    set_host(L, req, "pgw.req.set_host", 1);
    return 0;
}

static int l_req_set_upstream(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.set_upstream", REQ_WRITE);
    size_t len;
    const char *name = check_str(L, 1, "pgw.req.set_upstream", &len);
    const struct pgw_config *cfg = req->gen->config;
    for (size_t i = 0; i < cfg->num_upstreams; i++) {
        if (strcmp(cfg->upstreams[i].name, name) == 0) {
            req->upstream_index = (int)i;
            return 0;
        }
    }
    return luaL_error(L, "pgw.req.set_upstream: unknown upstream \"%s\"", name);
}

static int l_req_set_body(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.set_body", REQ_WRITE);
    size_t len;
    const char *b = check_str(L, 1, "pgw.req.set_body", &len);
    if (len > req->gen->config->limits.body)
        return luaL_error(L, "pgw.req.set_body: body larger than limits.body");
    char *copy = pgw_pool_alloc(req->pool, len + 1);
    memcpy(copy, b, len);
    req->body_data = copy;
    req->body_data_len = len;
    req->body_buffered = 1;
    return 0;
}

/* ---- pgw.req.read_body ---- */

struct body_op {
    struct pgw_wait w; /* first: the bridge's pointer is the op's */
    struct pgw_req *req;
    struct evbuffer *buf;
    struct event *kick; /* the first pump runs from the loop, never inside Lua */
    size_t max;
};

static void body_op_free(struct body_op *op)
{
    if (op->kick != NULL)
        event_free(op->kick);
    evbuffer_free(op->buf);
    op->req->body_reading = 0;
    op->req->body_decode = 0;
    free(op);
}

static void body_op_cancel(struct pgw_wait *w) { body_op_free((struct body_op *)w); }

static void body_op_wake(struct body_op *op, const char *err)
{
    struct pgw_req *req = op->req;
    lua_State *co = pgw_bridge_wait_thread(&op->w);
    int n = 1;
    size_t len = evbuffer_get_length(op->buf);
    char *copy = NULL;
    if (err == NULL) {
        copy = pgw_pool_alloc(req->pool, len + 1);
        evbuffer_remove(op->buf, copy, len);
        if (pgw_bridge_push_string(&op->w, copy, len) != PGW_OK)
            err = "out of memory"; /* the policy's share of the cap cannot hold it */
    }
    if (err == NULL) {
        req->body_data = copy;
        req->body_data_len = len;
        req->body_buffered = 1;
    } else {
        req->body_lost = 1; /* part of it was consumed: it can no longer be forwarded */
        lua_pushnil(co);
        lua_pushstring(co, err);
        n = 2;
    }
    req->body_reading = 0;
    req->body_decode = 0;
    if (op->kick != NULL)
        event_free(op->kick);
    pgw_bridge_wake(&op->w, n); /* may finish the request; the op is no longer registered */
    evbuffer_free(op->buf);
    free(op);
}

/* Moves what the client sent into the op's buffer; wakes the task when the body is complete
 * or too large. Event callbacks only: the pump may answer and finish the request, which cancels
 * the op. */
static void body_op_step(struct body_op *op)
{
    struct pgw_req *req = op->req;
    for (;;) {
        size_t have = evbuffer_get_length(op->buf);
        size_t before = evbuffer_get_length(req->conn->io.in);
        int r = pgw_req_body_pump(req, op->buf, op->max + 1 - have);
        if (r == PGW_ERR)
            return; /* answered (400/413) and finished: the op was cancelled */
        if (evbuffer_get_length(op->buf) > op->max) {
            body_op_wake(op, "too large");
            return;
        }
        if (r == PGW_DONE) {
            body_op_wake(op, NULL);
            return;
        }
        if (evbuffer_get_length(req->conn->io.in) == before)
            return; /* wait for pgw_req_on_client_data() */
    }
}

static void on_body_kick(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    struct body_op *op = arg;
    struct pgw_conn *c = op->req->conn;
    pgw_conn_enter(c);
    body_op_step(op);
    pgw_conn_leave(c);
}

void pgw_lua_body_on_data(struct pgw_req *req)
{
    if (req->lua != NULL && req->lua->wait != NULL && req->body_reading)
        body_op_step((struct body_op *)req->lua->wait);
}

static int l_req_read_body(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.req.read_body", REQ_WRITE);
    uint64_t ceiling = PGW_MIN(req->gen->config->lua.body_max, req->gen->config->limits.body);
    uint64_t max = ceiling;
    if (!lua_isnoneornil(L, 1)) {
        lua_Number n = luaL_checknumber(L, 1);
        if (!(n >= 0))
            return luaL_error(L, "pgw.req.read_body: bad argument #1 (non-negative number expected)");
        if (n < (lua_Number)ceiling)
            max = (uint64_t)n;
    }
    if (req->body_buffered) {
        lua_pushlstring(L, req->body_data, req->body_data_len);
        return 1;
    }
    if (req->body_lost) {
        lua_pushnil(L);
        lua_pushliteral(L, "too large");
        return 2;
    }
    if (req->body_done) { /* no body */
        req->body_data = "";
        req->body_buffered = 1;
        lua_pushliteral(L, "");
        return 1;
    }
    if (req->h.body == PGW_HTTP_BODY_LENGTH && req->h.content_length > max) {
        req->body_lost = 1; /* not a byte read: the answer is the policy's (or 413) */
        lua_pushnil(L);
        lua_pushliteral(L, "too large");
        return 2;
    }
    pgw_bridge_check_wait(L, "pgw.req.read_body");
    struct body_op *op = pgw_calloc(1, sizeof(*op));
    op->w.cancel = body_op_cancel;
    op->req = req;
    op->max = (size_t)max;
    op->buf = evbuffer_new();
    op->kick = evtimer_new(pgw_bridge_base(), on_body_kick, op);
    struct timeval zero = {0, 0};
    evtimer_add(op->kick, &zero);
    req->body_reading = 1;
    req->body_decode = 1;
    return pgw_bridge_wait(L, &op->w);
}

/* ---- pgw.resp ---- */

static struct hlist resp_headers(struct pgw_req *req)
{
    return (struct hlist){&req->resp_headers, &req->resp_num_headers, &req->resp_headers_cap};
}

static int l_resp_get_status(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.resp.get_status", RESP_READ);
    lua_pushinteger(L, req->status);
    return 1;
}

static int l_resp_set_status(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.resp.set_status", RESP_WRITE);
    lua_Number n = lua_tonumber(L, 1);
    if (lua_type(L, 1) != LUA_TNUMBER || n != (int)n || n < 100 || n > 599)
        return luaL_error(L, "pgw.resp.set_status: invalid status %s",
                          lua_tostring(L, 1) ? lua_tostring(L, 1) : luaL_typename(L, 1));
    req->status = (int)n;
    return 0;
}

static int l_resp_get_header(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.resp.get_header", RESP_READ);
    size_t len;
    const char *name = check_name(L, "pgw.resp.get_header", &len);
    return hl_get(L, resp_headers(req), name, len);
}

static int l_resp_get_headers(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.resp.get_headers", RESP_READ);
    return hl_get_all(L, resp_headers(req));
}

static int resp_write(lua_State *L, const char *fname, int op)
{
    struct pgw_req *req = cur_req(L, fname, RESP_WRITE);
    size_t len;
    const char *name = check_name(L, fname, &len);
    if (op == OP_CLEAR && PGW_IEQ_LIT(name, len, "content-length"))
        req->resp_unframed = 1;
    hl_write(L, req->pool, resp_headers(req), fname, op, 1);
    return 0;
}

static int l_resp_set_header(lua_State *L) { return resp_write(L, "pgw.resp.set_header", OP_SET); }
static int l_resp_add_header(lua_State *L) { return resp_write(L, "pgw.resp.add_header", OP_ADD); }
static int l_resp_clear_header(lua_State *L)
{
    return resp_write(L, "pgw.resp.clear_header", OP_CLEAR);
}

/* ---- pgw.exit, pgw.ctx, pgw.log ---- */

static int l_exit(lua_State *L)
{
    struct pgw_req *req = cur_req(L, "pgw.exit", REQ_WRITE);
    struct pgw_task *t = req->lua;
    lua_Number n = lua_tonumber(L, 1);
    if (lua_type(L, 1) != LUA_TNUMBER || n != (int)n || n < 200 || n > 599)
        return luaL_error(L, "pgw.exit: invalid status %s",
                          lua_tostring(L, 1) ? lua_tostring(L, 1) : luaL_typename(L, 1));
    if (t->exit.status != 0)
        return luaL_error(L, "pgw.exit: the response is already decided");
    if (!lua_isnoneornil(L, 2) && lua_type(L, 2) != LUA_TSTRING)
        return luaL_error(L, "pgw.exit: bad argument #2 (string or nil expected, got %s)",
                          luaL_typename(L, 2));
    int has_headers = !lua_isnoneornil(L, 3);
    if (has_headers && !lua_istable(L, 3))
        return luaL_error(L, "pgw.exit: bad argument #3 (table or nil expected, got %s)",
                          luaL_typename(L, 3));
    /* Check every header first (raises), then copy (no raise below). */
    lua_settop(L, 3);
    for (int pass = 0; has_headers && pass < 2; pass++) {
        lua_pushnil(L);
        while (lua_next(L, 3) != 0) { /* status body headers k v */
            size_t nlen;
            const char *name = check_name_at(L, 4, "pgw.exit", &nlen);
            if (is_managed(name, nlen))
                luaL_error(L, "pgw.exit: header \"%s\" is managed by the gateway", name);
            if (pass == 0) {
                check_values(L, 5, "pgw.exit");
            } else {
                struct hlist h = {&t->exit.headers, &t->exit.num_headers, &t->exit.cap_headers};
                hl_append_values(L, req->pool, h, name, nlen, 5);
            }
            lua_pop(L, 1);
        }
    }
    size_t blen = 0;
    const char *body = lua_tolstring(L, 2, &blen);
    t->exit.status = (int)n;
    if (body != NULL) {
        t->exit.body = pgw_pool_strndup(req->pool, body, blen);
        t->exit.body_len = blen;
    }
    return 0;
}

static int l_ctx(lua_State *L)
{
    struct pgw_task *t;
    if (pgw_bridge_check(L, "pgw.ctx", REQ_READ | PGW_STAGES_WS) & PGW_STAGES_WS)
        t = pgw_bridge_current()->task; /* the WebSocket connection's */
    else
        t = cur_req(L, "pgw.ctx", REQ_READ)->lua;
    if (t->ctx_ref == LUA_NOREF) {
        lua_newtable(L);
        lua_pushvalue(L, -1);
        t->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        return 1;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->ctx_ref);
    return 1;
}

static int log_at(lua_State *L, enum pgw_log_level level)
{
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_getglobal(L, "tostring");
    int ts = lua_gettop(L);
    for (int i = 1; i <= n; i++) {
        lua_pushvalue(L, ts);
        lua_pushvalue(L, i);
        lua_call(L, 1, 1);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    const struct pgw_bridge_run *run = pgw_bridge_current();
    const char *stage = pgw_bridge_stage_name(run->stage);
    const char *pol = run->policy ? run->policy : "?";
    int ml = (int)PGW_MIN(len, 4000);
    if (run->req != NULL)
        pgw_log(level, "policy %s: stage %s: request %s: %.*s", pol, stage, run->req->id, ml, msg);
    else
        pgw_log(level, "policy %s: stage %s: %.*s", pol, stage, ml, msg);
    return 0;
}

static int l_log_err(lua_State *L) { return log_at(L, PGW_LOG_ERROR); }
static int l_log_warn(lua_State *L) { return log_at(L, PGW_LOG_WARN); }
static int l_log_info(lua_State *L) { return log_at(L, PGW_LOG_INFO); }
static int l_log_debug(lua_State *L)
{
    if (pgw_log_level_min != PGW_LOG_DEBUG)
        return 0;
    return log_at(L, PGW_LOG_DEBUG);
}

/* pgw.plan(name) -> the usage plan <name> of the config (a read-only view), or nil. */
static int l_plan(lua_State *L)
{
    pgw_bridge_check(L, "pgw.plan", PGW_STAGES_ANY);
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "pgw.plan: bad argument #1 (string expected, got %s)",
                          luaL_typename(L, 1));
    const struct pgw_policy_set *set = pgw_bridge_current()->set;
    if (set == NULL || set->plans_ref == LUA_NOREF) {
        lua_pushnil(L);
        return 1;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, set->plans_ref);
    lua_pushvalue(L, 1);
    lua_gettable(L, -2); /* through the view's __index */
    return 1;
}

/* Raises "request already finished" for a handle that outlived its request. */
static int l_check_handle(lua_State *L)
{
    struct pgw_task *t = pgw_task_from_handle(L, 1);
    if (t == NULL)
        return luaL_error(L, "bad self (a pgw.req handle expected, got %s)", luaL_typename(L, 1));
    if (t != pgw_bridge_current()->task)
        return luaL_error(L, "a request handle used outside its own request");
    return 0;
}

/* pgw.core.set_handle_methods(t): method calls on a pgw.req handle look up <t>. */
static int l_set_handle_methods(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_getmetatable(L, "pgw.req");
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "__index");
    return 0;
}

static const luaL_Reg req_fns[] = {
    {"get_method", l_req_get_method},       {"get_path", l_req_get_path},
    {"get_raw_path", l_req_get_raw_path},   {"get_path_params", l_req_get_path_params},
    {"get_scheme", l_req_get_scheme},       {"get_raw_query", l_req_get_raw_query},
    {"set_raw_query", l_req_set_raw_query}, {"get_header", l_req_get_header},
    {"get_headers", l_req_get_headers},     {"set_header", l_req_set_header},
    {"add_header", l_req_add_header},       {"clear_header", l_req_clear_header},
    {"get_client_addr", l_req_get_client_addr}, {"get_listener", l_req_get_listener},
    {"get_tls", l_req_get_tls},
    {"get_route", l_req_get_route},         {"get_id", l_req_get_id},
    {"set_path", l_req_set_path},           {"set_host", l_req_set_host},
    {"set_upstream", l_req_set_upstream},   {"set_body", l_req_set_body},
    {"read_body", l_req_read_body},         {NULL, NULL}};

static const luaL_Reg resp_fns[] = {
    {"get_status", l_resp_get_status},   {"set_status", l_resp_set_status},
    {"get_header", l_resp_get_header},   {"get_headers", l_resp_get_headers},
    {"set_header", l_resp_set_header},   {"add_header", l_resp_add_header},
    {"clear_header", l_resp_clear_header}, {NULL, NULL}};

static const luaL_Reg log_fns[] = {{"err", l_log_err},   {"warn", l_log_warn},
                                   {"info", l_log_info}, {"debug", l_log_debug},
                                   {NULL, NULL}};

static void add_lib(lua_State *L, const char *name, const luaL_Reg *fns)
{
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    lua_setfield(L, -2, name);
}

void pgw_lua_open_req(lua_State *L)
{
    add_lib(L, "req", req_fns);
    add_lib(L, "resp", resp_fns);
    add_lib(L, "log", log_fns);
    lua_pushcfunction(L, l_exit);
    lua_setfield(L, -2, "exit");
    lua_pushcfunction(L, l_ctx);
    lua_setfield(L, -2, "ctx");
    lua_pushcfunction(L, l_plan);
    lua_setfield(L, -2, "plan");
    lua_pushcfunction(L, l_check_handle);
    lua_setfield(L, -2, "check_handle");
    lua_pushcfunction(L, l_set_handle_methods);
    lua_setfield(L, -2, "set_handle_methods");
    luaL_newmetatable(L, "pgw.req");
    lua_pushliteral(L, "pgw.req");
    lua_setfield(L, -2, "__metatable"); /* getmetatable(req) is a string: nothing to edit */
    lua_pop(L, 1);
}
