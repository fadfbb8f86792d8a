/* policy.c: policy bundles and sets (see policy.h). */
#include "policy.h"
#include "log.h"
#include "lua_task.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#define POLICY_FILE_MAX (1u << 20)
#define BUNDLE_MAX_FILES 1000

/* ---- Error text: "FILE:LINE: message\n" lines, truncated with a count ---- */

struct errs {
    char *buf;
    size_t len, cap;
    unsigned n, dropped;
};

static void errs_add(struct errs *e, const char *fmt, ...) PGW_PRINTF(2, 3);
static void errs_add(struct errs *e, const char *fmt, ...)
{
    e->n++;
    if (e->buf == NULL || e->cap == 0)
        return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    size_t l = n < 0 ? 0 : PGW_MIN((size_t)n, sizeof(line) - 1);
    if (e->len + l + 2 > e->cap - 40) { /* keep room for the count */
        e->dropped++;
        int m = snprintf(e->buf + e->len, e->cap - e->len, "(%u more errors)\n", e->dropped);
        PGW_UNUSED(m);
        return;
    }
    memcpy(e->buf + e->len, line, l);
    e->len += l;
    e->buf[e->len++] = '\n';
    e->buf[e->len] = '\0';
}

/* ---- Bundles ---- */

static int cmp_src(const void *a, const void *b)
{
    return strcmp(((const struct pgw_policy_src *)a)->name, ((const struct pgw_policy_src *)b)->name);
}

static char *read_all(const char *path, size_t *len, const char **why)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        *why = strerror(errno);
        return NULL;
    }
    char *buf = pgw_malloc(POLICY_FILE_MAX + 1);
    size_t n = fread(buf, 1, POLICY_FILE_MAX + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n > POLICY_FILE_MAX) {
        *why = bad ? "read error" : "larger than 1 MiB";
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* One directory entry: PGW_OK (added or ignored) or PGW_ERR (reported). */
static int bundle_add(struct pgw_policy_bundle *b, size_t *cap, const char *dir, const char *fname,
                      struct errs *e)
{
    size_t fl = strlen(fname);
    if (fl < 5 || strcmp(fname + fl - 4, ".lua") != 0 || fname[0] == '.')
        return PGW_OK; /* README, editor backups (.x.lua.swp), ... */
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, fname);
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return PGW_OK;
    if (!pgw_is_lower_name(fname, fl - 4)) {
        errs_add(e, "%s: not a policy name (lower-case letters, digits and _, starting with a "
                    "letter, at most 64)", path);
        return PGW_ERR;
    }
    if (b->n >= BUNDLE_MAX_FILES) {
        errs_add(e, "%s: more than %d policy files", dir, BUNDLE_MAX_FILES);
        return PGW_ERR;
    }
    const char *why = NULL;
    size_t len = 0;
    char *src = read_all(path, &len, &why);
    if (src == NULL) {
        errs_add(e, "%s: cannot read: %s", path, why);
        return PGW_ERR;
    }
    if (len > 0 && src[0] == '\x1b') {
        errs_add(e, "%s: bytecode is not accepted, only Lua source text", path);
        free(src);
        return PGW_ERR;
    }
    if (b->n == *cap) {
        *cap = *cap ? *cap * 2 : 16;
        b->v = pgw_realloc(b->v, *cap * sizeof(*b->v));
    }
    struct pgw_policy_src *s = &b->v[b->n++];
    s->name = pgw_strndup(fname, fl - 4);
    s->path = pgw_strndup(path, strlen(path));
    s->src = src;
    s->len = len;
    return PGW_OK;
}

int pgw_policy_bundle_read(const char *dir, struct pgw_policy_bundle *b, char *err, size_t errlen)
{
    struct errs e = {err, 0, errlen, 0, 0};
    if (err && errlen)
        err[0] = '\0';
    memset(b, 0, sizeof(*b));
    DIR *d = opendir(dir);
    if (d == NULL) {
        if (errno == ENOENT)
            return PGW_OK;
        errs_add(&e, "%s: cannot open the policies directory: %s", dir, strerror(errno));
        return PGW_ERR;
    }
    size_t cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        bundle_add(b, &cap, dir, de->d_name, &e);
    closedir(d);
    if (b->n > 1)
        qsort(b->v, b->n, sizeof(*b->v), cmp_src);
    if (e.n > 0) {
        pgw_policy_bundle_free(b);
        return PGW_ERR;
    }
    return PGW_OK;
}

void pgw_policy_bundle_free(struct pgw_policy_bundle *b)
{
    for (size_t i = 0; i < b->n; i++) {
        free(b->v[i].name);
        free(b->v[i].path);
        free(b->v[i].src);
    }
    free(b->v);
    memset(b, 0, sizeof(*b));
}

static void put_u32(char **p, uint32_t v)
{
    memcpy(*p, &v, 4);
    *p += 4;
}

static void put_str(char **p, const char *s, size_t n)
{
    put_u32(p, (uint32_t)n);
    memcpy(*p, s, n);
    *p += n;
}

char *pgw_policy_bundle_encode(const struct pgw_policy_bundle *b, size_t *len)
{
    size_t n = 4;
    for (size_t i = 0; i < b->n; i++)
        n += 12 + strlen(b->v[i].name) + strlen(b->v[i].path) + b->v[i].len;
    char *buf = pgw_malloc(n), *p = buf;
    put_u32(&p, (uint32_t)b->n);
    for (size_t i = 0; i < b->n; i++) {
        put_str(&p, b->v[i].name, strlen(b->v[i].name));
        put_str(&p, b->v[i].path, strlen(b->v[i].path));
        put_str(&p, b->v[i].src, b->v[i].len);
    }
    *len = n;
    return buf;
}

static char *get_str(const char **p, const char *end, size_t *n)
{
    uint32_t l;
    if ((size_t)(end - *p) < 4)
        return NULL;
    memcpy(&l, *p, 4);
    *p += 4;
    if ((size_t)(end - *p) < l)
        return NULL;
    char *s = pgw_strndup(*p, l);
    *p += l;
    if (n)
        *n = l;
    return s;
}

int pgw_policy_bundle_decode(const char *p, size_t len, struct pgw_policy_bundle *b)
{
    const char *end = p + len;
    uint32_t count;
    memset(b, 0, sizeof(*b));
    if (len < 4)
        return PGW_ERR;
    memcpy(&count, p, 4);
    p += 4;
    if (count > BUNDLE_MAX_FILES)
        return PGW_ERR;
    b->v = pgw_calloc(count ? count : 1, sizeof(*b->v));
    for (uint32_t i = 0; i < count; i++) {
        struct pgw_policy_src *s = &b->v[b->n++];
        s->name = get_str(&p, end, NULL);
        s->path = s->name ? get_str(&p, end, NULL) : NULL;
        s->src = s->path ? get_str(&p, end, &s->len) : NULL;
        if (s->src == NULL) {
            pgw_policy_bundle_free(b);
            return PGW_ERR;
        }
    }
    return p == end ? PGW_OK : (pgw_policy_bundle_free(b), PGW_ERR);
}

/* ---- Building a set ---- */

struct loaded {
    const char *name; /* owned by set->names */
    const char *path;
    int ref;          /* the policy table */
    int fn[PGW_PS_COUNT + 1]; /* stage functions, then init_worker */
};

struct build {
    struct pgw_lua *lua;
    struct pgw_policy_set *set;
    const struct pgw_config *config;
    struct loaded *v;
    size_t n, cap;
    int engine_ref; /* pgw.internal.engine */
    struct errs e;
};

static struct loaded *find_loaded(struct build *b, const char *name)
{
    for (size_t i = 0; i < b->n; i++)
        if (strcmp(b->v[i].name, name) == 0)
            return &b->v[i];
    return NULL;
}

static const char *set_name(struct pgw_policy_set *set, const char *name)
{
    set->names = pgw_realloc(set->names, (set->num_names + 1) * sizeof(*set->names));
    return set->names[set->num_names++] = pgw_strndup(name, strlen(name));
}

/* Pushes engine[field]. */
static void push_engine(struct build *b, const char *field)
{
    lua_State *L = pgw_lua_state(b->lua);
    lua_rawgeti(L, LUA_REGISTRYINDEX, b->engine_ref);
    lua_getfield(L, -1, field);
    lua_remove(L, -2);
}

/* Checks the table of <l> and pins its stage functions. */
static int pin_stages(struct build *b, struct loaded *l)
{
    lua_State *L = pgw_lua_state(b->lua);
    char err[2048];
    push_engine(b, "check");
    lua_rawgeti(L, LUA_REGISTRYINDEX, l->ref);
    if (pgw_lua_call_guarded(b->lua, 1, 2, b->config->lua.budget, err, sizeof(err)) != PGW_OK) {
        errs_add(&b->e, "%s: %s", l->path, err);
        return PGW_ERR;
    }
    if (!lua_toboolean(L, -2)) {
        errs_add(&b->e, "%s: %s", l->path, lua_tostring(L, -1));
        lua_pop(L, 2);
        return PGW_ERR;
    }
    lua_pop(L, 2);
    push_engine(b, "stages");
    lua_rawgeti(L, LUA_REGISTRYINDEX, l->ref);
    if (pgw_lua_call_guarded(b->lua, 1, PGW_PS_COUNT + 1, b->config->lua.budget, err,
                             sizeof(err)) != PGW_OK) {
        errs_add(&b->e, "%s: %s", l->path, err);
        return PGW_ERR;
    }
    for (int i = PGW_PS_COUNT; i >= 0; i--) /* results are popped last first */
        l->fn[i] = lua_isfunction(L, -1) ? luaL_ref(L, LUA_REGISTRYINDEX) : (lua_pop(L, 1), LUA_NOREF);
    return PGW_OK;
}

static const struct pgw_lua_module *builtin_find(const char *name)
{
    char mod[128];
    snprintf(mod, sizeof(mod), "pgw.policies.%s", name);
    for (const struct pgw_lua_module *m = pgw_lua_sdk; m->name != NULL; m++)
        if (strcmp(m->name, mod) == 0)
            return m;
    return NULL;
}

static struct loaded *add_loaded(struct build *b, const char *name, const char *path)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 16;
        b->v = pgw_realloc(b->v, b->cap * sizeof(*b->v));
    }
    struct loaded *l = &b->v[b->n++];
    memset(l, 0, sizeof(*l));
    l->name = set_name(b->set, name);
    l->path = set_name(b->set, path);
    l->ref = LUA_NOREF;
    for (int i = 0; i <= PGW_PS_COUNT; i++)
        l->fn[i] = LUA_NOREF;
    return l;
}

/* Loads one policy with the bridge in stage "load". */
static int load_one(struct build *b, struct loaded *l, const char *src, size_t len, unsigned flags,
                    char *err, size_t errlen)
{
    struct pgw_bridge_run run = {PGW_STAGE_LOAD, l->name, NULL, NULL, NULL, b->set, 0};
    struct pgw_bridge_run saved = pgw_bridge_enter(&run);
    int r = pgw_lua_load_policy(b->lua, l->name, l->path, src, len, flags,
                                (unsigned)b->config->lua.budget, &l->ref, err, errlen);
    pgw_bridge_leave(&saved);
    return r;
}

static void load_builtin(struct build *b, const char *name)
{
    if (find_loaded(b, name) != NULL)
        return;
    const struct pgw_lua_module *m = builtin_find(name);
    if (m == NULL)
        return; /* reported by the chain builder */
    char path[160], err[4096];
    snprintf(path, sizeof(path), "pgw/policies/%s.lua", name);
    struct loaded *l = add_loaded(b, name, path);
    if (load_one(b, l, (const char *)m->code, m->len, PGW_LUA_POLICY_BUILTIN, err,
                 sizeof(err)) != PGW_OK || pin_stages(b, l) != PGW_OK) {
        if (l->ref == LUA_NOREF)
            errs_add(&b->e, "%s", err);
        b->n--;
    }
}

/* Whether <err> is "module 'X' not found" for a policy X of the bundle not loaded yet. */
static int needs_pending(const struct pgw_policy_bundle *bundle, const char *err,
                         const char *pending)
{
    for (size_t i = 0; i < bundle->n; i++) {
        if (!pending[i])
            continue;
        char pat[128];
        snprintf(pat, sizeof(pat), "module '%s' not found", bundle->v[i].name);
        if (strstr(err, pat) != NULL)
            return 1;
    }
    return 0;
}

/* Loads the bundle; a policy that requires another one is retried after the others loaded. */
static void load_bundle(struct build *b, const struct pgw_policy_bundle *bundle)
{
    char *pending = pgw_calloc(bundle->n + 1, 1);
    char **errs = pgw_calloc(bundle->n + 1, sizeof(char *));
    for (size_t i = 0; i < bundle->n; i++) {
        pending[i] = 1;
        if (builtin_find(bundle->v[i].name) != NULL) {
            errs_add(&b->e, "%s: %s is the name of a built-in policy: copy it under another name",
                     bundle->v[i].path, bundle->v[i].name);
            pending[i] = 0;
        }
    }
    for (int progress = 1; progress;) {
        progress = 0;
        for (size_t i = 0; i < bundle->n; i++) {
            if (!pending[i])
                continue;
            const struct pgw_policy_src *s = &bundle->v[i];
            char err[4096];
            struct loaded *l = add_loaded(b, s->name, s->path);
            pending[i] = 0;
            if (load_one(b, l, s->src, s->len, 0, err, sizeof(err)) == PGW_OK) {
                progress = 1;
                if (pin_stages(b, l) != PGW_OK)
                    b->n--;
                continue;
            }
            b->n--;
            free(errs[i]);
            errs[i] = pgw_strndup(err, strlen(err));
            if (needs_pending(bundle, err, pending))
                pending[i] = 1;
        }
    }
    for (size_t i = 0; i < bundle->n; i++) {
        if (errs[i] != NULL && find_loaded(b, bundle->v[i].name) == NULL)
            errs_add(&b->e, "%s", errs[i]);
        free(errs[i]);
    }
    free(errs);
    free(pending);
}

static unsigned stage_bit(int i)
{
    static const unsigned bits[PGW_PS_COUNT] = {
        PGW_STAGE_REWRITE,    PGW_STAGE_ACCESS,     PGW_STAGE_HEADER_FILTER, PGW_STAGE_BODY_FILTER,
        PGW_STAGE_LOG,        PGW_STAGE_WS_CONNECT, PGW_STAGE_WS_MESSAGE,    PGW_STAGE_WS_CLOSE};
    return bits[i];
}

/* Builds one chain entry: the policy's conf checked against its schema. */
static int build_entry(struct build *b, const struct pgw_config_policy *p, const char *where,
                       struct pgw_policy_entry *en)
{
    lua_State *L = pgw_lua_state(b->lua);
    struct loaded *l = find_loaded(b, p->name);
    if (l == NULL) {
        if (builtin_find(p->name) == NULL && b->e.n == 0)
            errs_add(&b->e, "%s:%u: %s: no policy named %s (neither built-in nor %s/%s.lua)",
                     b->config->file, p->line, where, p->name, b->config->policies_dir, p->name);
        else if (builtin_find(p->name) == NULL)
            errs_add(&b->e, "%s:%u: %s: policy %s is not available (see the errors above)",
                     b->config->file, p->line, where, p->name);
        return PGW_ERR;
    }
    char err[2048];
    push_engine(b, "conf");
    lua_rawgeti(L, LUA_REGISTRYINDEX, l->ref);
    lua_pushstring(L, p->conf_json);
    lua_pushstring(L, p->name);
    pgw_lua_push_readonly(b->lua);
    /* in stage "load", so that a policy's check_conf may call the SDK (pgw.jwt.provider) */
    struct pgw_bridge_run run = {PGW_STAGE_LOAD, l->name, NULL, NULL, NULL, b->set, 0};
    struct pgw_bridge_run saved = pgw_bridge_enter(&run);
    int r = pgw_lua_call_guarded(b->lua, 4, 2, b->config->lua.budget, err, sizeof(err));
    pgw_bridge_leave(&saved);
    if (r != PGW_OK) {
        errs_add(&b->e, "%s:%u: %s: %s", b->config->file, p->line, where, err);
        return PGW_ERR;
    }
    if (lua_isnil(L, -2)) {
        errs_add(&b->e, "%s:%u: %s: %s", b->config->file, p->line, where, lua_tostring(L, -1));
        lua_pop(L, 2);
        return PGW_ERR;
    }
    lua_pop(L, 1);
    en->conf = luaL_ref(L, LUA_REGISTRYINDEX);
    en->name = l->name;
    en->init = l->fn[PGW_PS_COUNT];
    for (int i = 0; i < PGW_PS_COUNT; i++)
        en->fn[i] = l->fn[i];
    return PGW_OK;
}

/* Builds the chain of <ps>. With <only> (a PGW_PS_* index, or -1 for every stage), only that
 * stage runs there, and a policy without a function for it is an error: it would silently run
 * nothing (websocket.actions: ws_message). */
static void build_chain(struct build *b, const struct pgw_config_policies *ps, const char *where,
                        int only, struct pgw_policy_chain *ch)
{
    ch->v = pgw_calloc(ps->n + 1, sizeof(*ch->v));
    for (size_t i = 0; i < ps->n; i++) {
        struct pgw_policy_entry *en = &ch->v[ch->n];
        if (build_entry(b, &ps->v[i], where, en) != PGW_OK)
            continue;
        if (only >= 0 && en->fn[only] == LUA_NOREF) {
            const char *st = pgw_bridge_stage_name(stage_bit(only));
            errs_add(&b->e, "%s:%u: %s: policy %s has no %s function (only %s runs in an "
                     "action)", b->config->file, ps->v[i].line, where, en->name, st, st);
        }
        for (int s = 0; s < PGW_PS_COUNT; s++)
            if (en->fn[s] != LUA_NOREF && (only < 0 || s == only))
                ch->stages |= stage_bit(s);
        ch->n++;
    }
}

/* The chains of route <r>'s websocket.actions, then its default (num_actions + 1). */
static struct pgw_policy_chain *build_action_chains(struct build *b, const struct pgw_config_route *r)
{
    const struct pgw_config_websocket *ws = r->websocket;
    struct pgw_policy_chain *chs = pgw_calloc(ws->num_actions + 1, sizeof(*chs));
    char where[600];
    for (size_t j = 0; j < ws->num_actions; j++) {
        snprintf(where, sizeof(where), "route \"%s\": websocket.actions.%s", r->name,
                 ws->actions[j].name);
        build_chain(b, &ws->actions[j].policies, where, PGW_PS_WS_MESSAGE, &chs[j]);
    }
    snprintf(where, sizeof(where), "route \"%s\": websocket.default", r->name);
    build_chain(b, &ws->default_policies, where, PGW_PS_WS_MESSAGE, &chs[ws->num_actions]);
    return chs;
}

/* init_worker(conf) of every entry of <ch>, in chain order. */
static void run_init(struct pgw_policy_set *set, const struct pgw_policy_chain *ch)
{
    lua_State *L = pgw_lua_state(set->lua);
    for (size_t i = 0; i < ch->n; i++) {
        if (ch->v[i].init == LUA_NOREF)
            continue;
        char err[4096];
        struct pgw_bridge_run run = {PGW_STAGE_INIT_WORKER, ch->v[i].name, NULL, NULL,
                                     set->gen, set, 0};
        struct pgw_bridge_run saved = pgw_bridge_enter(&run);
        lua_rawgeti(L, LUA_REGISTRYINDEX, ch->v[i].init);
        lua_rawgeti(L, LUA_REGISTRYINDEX, ch->v[i].conf);
        if (pgw_lua_call_guarded(set->lua, 1, 0, set->budget, err, sizeof(err)) != PGW_OK) {
            for (char *p = err; *p != '\0'; p++) /* one line, as stage errors */
                if (*p == '\n' || *p == '\t')
                    *p = *p == '\n' ? '|' : ' ';
            pgw_log_error("policy %s: stage init_worker: %s", ch->v[i].name, err);
        }
        pgw_bridge_leave(&saved);
    }
}

void pgw_policy_set_init(struct pgw_policy_set *set)
{
    for (size_t i = 0; i < set->num_listeners; i++)
        run_init(set, &set->listeners[i]);
    for (size_t i = 0; i < set->num_routes; i++) {
        run_init(set, &set->routes[i]);
        for (size_t j = 0; set->ws_actions[i] != NULL &&
                           j <= set->config->routes[i].websocket->num_actions; j++)
            run_init(set, &set->ws_actions[i][j]);
    }
}

/* The plans of the config, checked (pgw.internal.engine.plans). */
static int build_plans(struct build *b)
{
    lua_State *L = pgw_lua_state(b->lua);
    char err[2048];
    push_engine(b, "plans");
    lua_pushstring(L, b->config->plans_json);
    pgw_lua_push_readonly(b->lua);
    if (pgw_lua_call_guarded(b->lua, 2, 2, 1000, err, sizeof(err)) != PGW_OK) {
        errs_add(&b->e, "%s:%u: %s", b->config->file, b->config->plans_line, err);
        return LUA_NOREF;
    }
    if (lua_isnil(L, -2)) {
        errs_add(&b->e, "%s:%u: %s", b->config->file, b->config->plans_line, lua_tostring(L, -1));
        lua_pop(L, 2);
        return LUA_NOREF;
    }
    lua_pop(L, 1);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

static void collect_builtins(struct build *b, const struct pgw_config_policies *ps)
{
    for (size_t i = 0; i < ps->n; i++)
        load_builtin(b, ps->v[i].name);
}

struct pgw_policy_set *pgw_policy_set_build(struct pgw_lua *lua, const struct pgw_config *config,
                                            const struct pgw_policy_bundle *bundle, char *err,
                                            size_t errlen)
{
    lua_State *L = pgw_lua_state(lua);
    struct pgw_policy_set *set = pgw_calloc(1, sizeof(*set));
    set->lua = lua;
    set->budget = (unsigned)config->lua.budget;
    set->timers_max = config->lua.timers;
    set->plans_ref = LUA_NOREF;
    set->config = config;
    struct build b = {.lua = lua, .set = set, .config = config, .e = {err, 0, errlen, 0, 0}};
    if (err && errlen)
        err[0] = '\0';
    lua_getglobal(L, "require");
    lua_pushliteral(L, "pgw.internal.engine");
    char msg[2048];
    if (pgw_lua_call_guarded(lua, 1, 1, 1000, msg, sizeof(msg)) != PGW_OK) {
        errs_add(&b.e, "the embedded SDK: %s", msg);
        pgw_policy_set_free(set);
        return NULL;
    }
    b.engine_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    set->plans_ref = build_plans(&b);
    for (size_t i = 0; i < config->num_listeners; i++)
        collect_builtins(&b, &config->listeners[i].policies);
    for (size_t i = 0; i < config->num_routes; i++) {
        const struct pgw_config_websocket *ws = config->routes[i].websocket;
        collect_builtins(&b, &config->routes[i].policies);
        for (size_t j = 0; ws != NULL && j < ws->num_actions; j++)
            collect_builtins(&b, &ws->actions[j].policies);
        if (ws != NULL)
            collect_builtins(&b, &ws->default_policies);
    }
    load_bundle(&b, bundle);

    set->num_listeners = config->num_listeners;
    set->listeners = pgw_calloc(config->num_listeners + 1, sizeof(*set->listeners));
    set->num_routes = config->num_routes;
    set->routes = pgw_calloc(config->num_routes + 1, sizeof(*set->routes));
    set->ws_actions = pgw_calloc(config->num_routes + 1, sizeof(*set->ws_actions));
    char where[300];
    for (size_t i = 0; i < config->num_listeners; i++) {
        snprintf(where, sizeof(where), "listener \"%s\": policies", config->listeners[i].name);
        build_chain(&b, &config->listeners[i].policies, where, -1, &set->listeners[i]);
    }
    for (size_t i = 0; i < config->num_routes; i++) {
        snprintf(where, sizeof(where), "route \"%s\": policies", config->routes[i].name);
        build_chain(&b, &config->routes[i].policies, where, -1, &set->routes[i]);
        if (config->routes[i].websocket != NULL && config->routes[i].websocket->num_actions > 0)
            set->ws_actions[i] = build_action_chains(&b, &config->routes[i]);
    }
    /* The policy tables stay reachable through their functions. */
    for (size_t i = 0; i < b.n; i++)
        pgw_lua_unref(lua, b.v[i].ref);
    pgw_lua_unref(lua, b.engine_ref);
    set->fn_refs = pgw_calloc(b.n * (PGW_PS_COUNT + 1) + 1, sizeof(int));
    for (size_t i = 0; i < b.n; i++)
        for (int s = 0; s <= PGW_PS_COUNT; s++)
            set->fn_refs[set->num_fn_refs++] = b.v[i].fn[s];
    free(b.v);
    if (b.e.n > 0) {
        pgw_policy_set_free(set);
        return NULL;
    }
    return set;
}

static void free_chains(struct pgw_lua *lua, struct pgw_policy_chain *chains, size_t n)
{
    for (size_t i = 0; chains != NULL && i < n; i++) {
        for (size_t j = 0; j < chains[i].n; j++)
            pgw_lua_unref(lua, chains[i].v[j].conf);
        free(chains[i].v);
    }
    free(chains);
}

void pgw_policy_set_free(struct pgw_policy_set *set)
{
    if (set == NULL)
        return;
    set->retired = 1;
    pgw_lua_timers_free(set);
    free_chains(set->lua, set->listeners, set->num_listeners);
    for (size_t i = 0; set->ws_actions != NULL && i < set->num_routes; i++)
        if (set->ws_actions[i] != NULL)
            free_chains(set->lua, set->ws_actions[i],
                        set->config->routes[i].websocket->num_actions + 1);
    free(set->ws_actions);
    free_chains(set->lua, set->routes, set->num_routes);
    for (size_t i = 0; i < set->num_fn_refs; i++)
        pgw_lua_unref(set->lua, set->fn_refs[i]);
    pgw_lua_unref(set->lua, set->plans_ref);
    free(set->fn_refs);
    for (size_t i = 0; i < set->num_names; i++)
        free(set->names[i]);
    free(set->names);
    free(set);
}

int pgw_policy_config_uses(const struct pgw_config *config)
{
    for (size_t i = 0; i < config->num_listeners; i++)
        if (config->listeners[i].policies.n > 0)
            return 1;
    for (size_t i = 0; i < config->num_routes; i++)
        if (config->routes[i].policies.n > 0 ||
            (config->routes[i].websocket != NULL && config->routes[i].websocket->num_actions > 0))
            return 1;
    return 0;
}

int pgw_policy_check(const struct pgw_config *config, const struct pgw_policy_bundle *bundle,
                     char *err, size_t errlen)
{
    if (!pgw_policy_config_uses(config) && bundle->n == 0)
        return PGW_OK;
    struct pgw_lua *lua = pgw_bridge_lua_new(config, err, errlen);
    if (lua == NULL)
        return PGW_ERR;
    struct pgw_policy_set *set = pgw_policy_set_build(lua, config, bundle, err, errlen);
    int r = set != NULL ? PGW_OK : PGW_ERR;
    pgw_policy_set_free(set);
    pgw_lua_free(lua);
    return r;
}

int pgw_policy_validate(const struct pgw_config *config, char **enc, size_t *enc_len, char *err,
                        size_t errlen)
{
    struct pgw_policy_bundle b;
    if (pgw_policy_bundle_read(config->policies_dir, &b, err, errlen) != PGW_OK)
        return PGW_ERR;
    int r = pgw_policy_check(config, &b, err, errlen);
    if (r == PGW_OK && enc != NULL)
        *enc = pgw_policy_bundle_encode(&b, enc_len);
    pgw_policy_bundle_free(&b);
    return r;
}
