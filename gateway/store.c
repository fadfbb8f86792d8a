/* store.c: the LMDB store (see store.h). */
#include "store.h"
#include "log.h"

#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define FAST_FLAGS (MDB_WRITEMAP | MDB_MAPASYNC | MDB_NOSYNC | MDB_NOMETASYNC)
#define HDR 9 /* expiry (8) + kind (1) */

struct env {
    MDB_env *env;
    MDB_dbi dbi;
    char path[4096];
};

struct pgw_store {
    struct env durable, fast;
    MDB_dbi tables[2]; /* durable: keys, consumers */
    char err[4200];
    int full;
    char sweep_key[PGW_STORE_KEY_MAX]; /* where the sweeper resumes */
    size_t sweep_len;
};

static int env_open(struct env *e, const char *dir, const char *name, size_t map, unsigned flags,
                    char *err, size_t errlen)
{
    snprintf(e->path, sizeof(e->path), "%s/%s", dir, name);
    int rc = mdb_env_create(&e->env);
    if (rc == 0)
        rc = mdb_env_set_mapsize(e->env, map);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(e->env, 8);
    if (rc == 0)
        rc = mdb_env_open(e->env, e->path, flags | MDB_NOSUBDIR | MDB_NOTLS, 0600);
    MDB_txn *txn = NULL;
    if (rc == 0)
        rc = mdb_txn_begin(e->env, NULL, 0, &txn);
    if (rc == 0)
        rc = mdb_dbi_open(txn, NULL, 0, &e->dbi);
    if (rc == 0) {
        rc = mdb_txn_commit(txn);
        txn = NULL;
    }
    if (txn != NULL)
        mdb_txn_abort(txn);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", e->path, mdb_strerror(rc));
        if (e->env != NULL)
            mdb_env_close(e->env);
        e->env = NULL;
        return rc;
    }
    return 0;
}

static void env_close(struct env *e)
{
    if (e->env != NULL)
        mdb_env_close(e->env);
    e->env = NULL;
}

/* A fast file that does not open is recreated empty: its counters are not worth a refusal. */
static int fast_open_or_recreate(struct env *e, const char *dir, size_t map, char *err,
                                 size_t errlen)
{
    int rc = env_open(e, dir, "fast.mdb", map, FAST_FLAGS, err, errlen);
    if (rc == MDB_INVALID || rc == MDB_CORRUPTED || rc == MDB_VERSION_MISMATCH ||
        rc == MDB_PAGE_NOTFOUND) {
        pgw_log_warn("store: %s; recreating %s/fast.mdb empty (counters and TTL entries are lost)",
                     err, dir);
        char path[4200];
        snprintf(path, sizeof(path), "%s/fast.mdb", dir);
        unlink(path);
        snprintf(path, sizeof(path), "%s/fast.mdb-lock", dir);
        unlink(path);
        rc = env_open(e, dir, "fast.mdb", map, FAST_FLAGS, err, errlen);
    }
    return rc;
}

int pgw_store_prepare(const char *dir, size_t durable_map, size_t fast_map, int repair, char *err,
                      size_t errlen)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create the store directory: %s", dir, strerror(errno));
        return PGW_ERR;
    }
    struct pgw_store s;
    memset(&s, 0, sizeof(s));
    if (env_open(&s.durable, dir, "durable.mdb", durable_map, 0, err, errlen) != 0)
        return PGW_ERR;
    int rc = repair ? fast_open_or_recreate(&s.fast, dir, fast_map, err, errlen)
                    : env_open(&s.fast, dir, "fast.mdb", fast_map, FAST_FLAGS, err, errlen);
    if (rc != 0) {
        env_close(&s.durable);
        return PGW_ERR;
    }
    int dead = pgw_store_reader_check(&s);
    if (dead > 0)
        pgw_log_notice("store: cleared %d reader slot(s) left by dead processes", dead);
    env_close(&s.fast);
    env_close(&s.durable);
    return PGW_OK;
}

static int open_tables(struct pgw_store *s, char *err, size_t errlen)
{
    static const char *const names[] = {"keys", "consumers"};
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->durable.env, NULL, 0, &txn);
    for (size_t i = 0; rc == 0 && i < PGW_ARRAY_LEN(names); i++)
        rc = mdb_dbi_open(txn, names[i], MDB_CREATE, &s->tables[i]);
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc != 0)
        snprintf(err, errlen, "%s: %s", s->durable.path, mdb_strerror(rc));
    return rc;
}

struct pgw_store *pgw_store_open(const char *dir, size_t durable_map, size_t fast_map, char *err,
                                 size_t errlen)
{
    struct pgw_store *s = pgw_calloc(1, sizeof(*s));
    if (env_open(&s->durable, dir, "durable.mdb", durable_map, 0, err, errlen) != 0 ||
        open_tables(s, err, errlen) != 0 ||
        env_open(&s->fast, dir, "fast.mdb", fast_map, FAST_FLAGS, err, errlen) != 0) {
        pgw_store_close(s);
        return NULL;
    }
    return s;
}

void pgw_store_close(struct pgw_store *s)
{
    if (s == NULL)
        return;
    env_close(&s->fast);
    env_close(&s->durable);
    free(s);
}

static int fail(struct pgw_store *s, const struct env *e, int rc)
{
    s->full = rc == MDB_MAP_FULL;
    if (s->full) {
        size_t map = 0;
        MDB_envinfo info;
        if (mdb_env_info(e->env, &info) == 0)
            map = info.me_mapsize;
        snprintf(s->err, sizeof(s->err), "%s: map full (%zu bytes): raise its map size",
                 e->path, map);
    } else {
        snprintf(s->err, sizeof(s->err), "%s: %s", e->path, mdb_strerror(rc));
    }
    return PGW_ERR;
}

const char *pgw_store_error(const struct pgw_store *s) { return s->err; }
int pgw_store_full(const struct pgw_store *s) { return s->full; }

int pgw_store_sync(struct pgw_store *s)
{
    int rc = mdb_env_sync(s->fast.env, 1);
    return rc == 0 ? PGW_OK : fail(s, &s->fast, rc);
}

int pgw_store_reader_check(struct pgw_store *s)
{
    int a = 0, b = 0;
    if (s->durable.env != NULL)
        mdb_reader_check(s->durable.env, &a);
    if (s->fast.env != NULL)
        mdb_reader_check(s->fast.env, &b);
    return a + b;
}

/* ---- Fast entries ---- */

static uint64_t rd_u64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static int expired(const MDB_val *d, uint64_t now_ms)
{
    if (d->mv_size < HDR)
        return 1; /* not ours: treated as absent */
    uint64_t exp = rd_u64(d->mv_data);
    return exp != 0 && exp <= now_ms;
}

static int decode(const MDB_val *d, char *buf, size_t cap, struct pgw_store_value *v)
{
    const unsigned char *p = d->mv_data;
    size_t len = d->mv_size - HDR;
    v->kind = (enum pgw_store_kind)p[8];
    if (v->kind == PGW_STORE_INT && len == 8) {
        memcpy(&v->i, p + HDR, 8);
        return PGW_OK;
    }
    if (v->kind == PGW_STORE_NUMBER && len == 8) {
        memcpy(&v->n, p + HDR, 8);
        return PGW_OK;
    }
    v->kind = PGW_STORE_BYTES;
    v->len = len;
    if (len > cap)
        return PGW_AGAIN;
    memcpy(buf, p + HDR, len); /* copied before the transaction ends */
    v->bytes = buf;
    return PGW_OK;
}

int pgw_store_get(struct pgw_store *s, const char *key, size_t klen, uint64_t now_ms, char *buf,
                  size_t cap, struct pgw_store_value *v)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->fast.env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return fail(s, &s->fast, rc);
    MDB_val k = {klen, (void *)key}, d;
    rc = mdb_get(txn, s->fast.dbi, &k, &d);
    int r;
    if (rc == MDB_NOTFOUND)
        r = PGW_DECLINED;
    else if (rc != 0)
        r = fail(s, &s->fast, rc);
    else if (expired(&d, now_ms))
        r = PGW_DECLINED;
    else
        r = decode(&d, buf, cap, v);
    mdb_txn_abort(txn);
    return r;
}

static size_t encode(unsigned char *out, const struct pgw_store_value *v, uint64_t expires_ms)
{
    memcpy(out, &expires_ms, 8);
    out[8] = (unsigned char)v->kind;
    if (v->kind == PGW_STORE_INT) {
        memcpy(out + HDR, &v->i, 8);
        return HDR + 8;
    }
    if (v->kind == PGW_STORE_NUMBER) {
        memcpy(out + HDR, &v->n, 8);
        return HDR + 8;
    }
    memcpy(out + HDR, v->bytes, v->len);
    return HDR + v->len;
}

/* One write transaction putting <key> = <v>. */
static int put(struct pgw_store *s, MDB_txn *txn, const char *key, size_t klen,
               const struct pgw_store_value *v, uint64_t expires_ms)
{
    size_t len = HDR + (v->kind == PGW_STORE_BYTES ? v->len : 8);
    MDB_val k = {klen, (void *)key}, d = {len, NULL};
    int rc = mdb_put(txn, s->fast.dbi, &k, &d, MDB_RESERVE); /* written in place: WRITEMAP */
    if (rc != 0)
        return rc;
    encode(d.mv_data, v, expires_ms);
    return 0;
}

int pgw_store_set(struct pgw_store *s, const char *key, size_t klen,
                  const struct pgw_store_value *v, uint64_t expires_ms)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->fast.env, NULL, 0, &txn);
    if (rc != 0)
        return fail(s, &s->fast, rc);
    rc = put(s, txn, key, klen, v, expires_ms);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return fail(s, &s->fast, rc);
    }
    rc = mdb_txn_commit(txn);
    return rc == 0 ? PGW_OK : fail(s, &s->fast, rc);
}

int pgw_store_delete(struct pgw_store *s, const char *key, size_t klen)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->fast.env, NULL, 0, &txn);
    if (rc != 0)
        return fail(s, &s->fast, rc);
    MDB_val k = {klen, (void *)key};
    rc = mdb_del(txn, s->fast.dbi, &k, NULL);
    if (rc != 0 && rc != MDB_NOTFOUND) {
        mdb_txn_abort(txn);
        return fail(s, &s->fast, rc);
    }
    rc = mdb_txn_commit(txn);
    return rc == 0 ? PGW_OK : fail(s, &s->fast, rc);
}

int pgw_store_incr(struct pgw_store *s, const char *key, size_t klen, int64_t delta,
                   int64_t limit, uint64_t expires_ms, uint64_t now_ms, int64_t *value)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->fast.env, NULL, 0, &txn);
    if (rc != 0)
        return fail(s, &s->fast, rc);
    MDB_val k = {klen, (void *)key}, d;
    int64_t cur = 0;
    uint64_t exp = expires_ms;
    rc = mdb_get(txn, s->fast.dbi, &k, &d);
    if (rc == 0 && !expired(&d, now_ms)) {
        const unsigned char *p = d.mv_data;
        if (d.mv_size != HDR + 8 || p[8] != PGW_STORE_INT) {
            mdb_txn_abort(txn);
            snprintf(s->err, sizeof(s->err), "the entry is not a counter");
            s->full = 0;
            return PGW_ERR;
        }
        memcpy(&cur, p + HDR, 8);
        exp = rd_u64(p); /* a window keeps the expiry it was created with */
    } else if (rc != 0 && rc != MDB_NOTFOUND) {
        mdb_txn_abort(txn);
        return fail(s, &s->fast, rc);
    }
    int64_t next = cur + delta;
    if ((delta > 0 && next < cur) || (limit >= 0 && next > limit)) {
        mdb_txn_abort(txn); /* over the limit (or overflow): nothing written */
        *value = cur;
        return PGW_DECLINED;
    }
    struct pgw_store_value v = {.kind = PGW_STORE_INT, .i = next};
    rc = put(s, txn, key, klen, &v, exp);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return fail(s, &s->fast, rc);
    }
    rc = mdb_txn_commit(txn);
    if (rc != 0)
        return fail(s, &s->fast, rc);
    *value = next;
    return PGW_OK;
}

/* ---- Rate limits ----
 * Records (kind INT, 16-byte payload stored as BYTES with the entry's expiry):
 *   fixed: window start (8), count (8);   gcra: TAT in us (8), latest clock in ms (8). */

struct pair {
    uint64_t a;
    int64_t b;
};

/* Reads the 16-byte state of <key> in <txn>; 0 found, 1 absent or expired, else an LMDB error. */
static int pair_get(struct pgw_store *s, MDB_txn *txn, const char *key, size_t klen,
                    uint64_t now_ms, struct pair *p)
{
    MDB_val k = {klen, (void *)key}, d;
    int rc = mdb_get(txn, s->fast.dbi, &k, &d);
    if (rc == MDB_NOTFOUND)
        return 1;
    if (rc != 0)
        return rc;
    if (expired(&d, now_ms) || d.mv_size != HDR + 16)
        return 1;
    memcpy(&p->a, (const unsigned char *)d.mv_data + HDR, 8);
    memcpy(&p->b, (const unsigned char *)d.mv_data + HDR + 8, 8);
    return 0;
}

static int pair_put(struct pgw_store *s, MDB_txn *txn, const char *key, size_t klen,
                    const struct pair *p, uint64_t expires_ms)
{
    char buf[16];
    memcpy(buf, &p->a, 8);
    memcpy(buf + 8, &p->b, 8);
    struct pgw_store_value v = {.kind = PGW_STORE_BYTES, .bytes = buf, .len = 16};
    return put(s, txn, key, klen, &v, expires_ms);
}

/* Runs <step> on the state of <key> in one write transaction and writes what it decides. */
static int limit_txn(struct pgw_store *s, const char *key, size_t klen, uint64_t now_ms,
                     int (*step)(struct pair *p, int found, void *arg, uint64_t *expires),
                     void *arg)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->fast.env, NULL, 0, &txn);
    if (rc != 0)
        return fail(s, &s->fast, rc);
    struct pair p = {0, 0};
    rc = pair_get(s, txn, key, klen, now_ms, &p);
    if (rc > 1 || rc < 0) {
        mdb_txn_abort(txn);
        return fail(s, &s->fast, rc);
    }
    uint64_t expires = 0;
    if (!step(&p, rc == 0, arg, &expires)) { /* refused: nothing to write */
        mdb_txn_abort(txn);
        return PGW_OK;
    }
    rc = pair_put(s, txn, key, klen, &p, expires);
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    return rc == 0 ? PGW_OK : fail(s, &s->fast, rc);
}

struct fixed_arg {
    uint64_t start, end, now;
    int64_t limit, cost;
    struct pgw_store_limit *out;
};

static int fixed_step(struct pair *p, int found, void *arg, uint64_t *expires)
{
    struct fixed_arg *f = arg;
    uint64_t start = f->start, end = f->end;
    if (found && p->a > start) { /* the clock went back: keep counting in the stored window */
        end = p->a + (end - start);
        start = p->a;
    }
    int64_t count = found && p->a == start ? p->b : 0;
    struct pgw_store_limit *o = f->out;
    o->reset_ms = end;
    o->allowed = count + f->cost <= f->limit;
    o->count = o->allowed ? count + f->cost : count;
    o->remaining = f->limit - o->count > 0 ? f->limit - o->count : 0;
    o->retry_ms = o->allowed ? 0 : (end > f->now ? end - f->now : 0);
    if (!o->allowed)
        return 0;
    p->a = start;
    p->b = o->count;
    *expires = end;
    return 1;
}

int pgw_store_fixed(struct pgw_store *s, const char *key, size_t klen, uint64_t start_ms,
                    uint64_t end_ms, int64_t limit, int64_t cost, uint64_t now_ms,
                    struct pgw_store_limit *out)
{
    pgw_assert(end_ms > start_ms);
    struct fixed_arg f = {start_ms, end_ms, now_ms, limit, cost, out};
    return limit_txn(s, key, klen, now_ms, fixed_step, &f);
}

struct gcra_arg {
    uint64_t period_us, now_ms;
    int64_t burst;
    struct pgw_store_limit *out;
};

static int gcra_step(struct pair *p, int found, void *arg, uint64_t *expires)
{
    struct gcra_arg *g = arg;
    uint64_t now_ms = found && (uint64_t)p->b > g->now_ms ? (uint64_t)p->b : g->now_ms;
    uint64_t now = now_ms * 1000, tau = g->period_us * (uint64_t)g->burst;
    uint64_t tat = found && p->a > now ? p->a : now;
    struct pgw_store_limit *o = g->out;
    o->allowed = tat - now <= tau;
    uint64_t next = o->allowed ? tat + g->period_us : tat;
    uint64_t used = next - now; /* how far ahead the bucket is */
    o->remaining = used >= tau + g->period_us ? 0 : (int64_t)((tau + g->period_us - used) / g->period_us);
    o->reset_ms = next / 1000 + (next % 1000 ? 1 : 0);
    o->retry_ms = o->allowed ? 0 : (tat - now - tau + 999) / 1000;
    o->count = 0;
    if (!o->allowed)
        return 0;
    p->a = next;
    p->b = (int64_t)now_ms;
    *expires = o->reset_ms + 1000; /* a full bucket needs no state */
    return 1;
}

int pgw_store_gcra(struct pgw_store *s, const char *key, size_t klen, uint64_t period_us,
                   int64_t burst, uint64_t now_ms, struct pgw_store_limit *out)
{
    pgw_assert(period_us > 0 && burst >= 0);
    struct gcra_arg g = {period_us, now_ms, burst, out};
    return limit_txn(s, key, klen, now_ms, gcra_step, &g);
}

size_t pgw_store_sweep(struct pgw_store *s, uint64_t now_ms, size_t max)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    if (mdb_txn_begin(s->fast.env, NULL, 0, &txn) != 0)
        return 0;
    if (mdb_cursor_open(txn, s->fast.dbi, &cur) != 0) {
        mdb_txn_abort(txn);
        return 0;
    }
    MDB_val k = {s->sweep_len, s->sweep_key}, d;
    int rc = s->sweep_len > 0 ? mdb_cursor_get(cur, &k, &d, MDB_SET_RANGE)
                              : mdb_cursor_get(cur, &k, &d, MDB_FIRST);
    size_t deleted = 0, seen = 0;
    while (rc == 0 && deleted < max && seen < max * 16) {
        seen++;
        if (expired(&d, now_ms) && d.mv_size >= HDR && mdb_cursor_del(cur, 0) == 0) {
            deleted++;
            rc = mdb_cursor_get(cur, &k, &d, MDB_GET_CURRENT);
            if (rc == 0)
                continue; /* the cursor moved to the next entry */
        }
        rc = mdb_cursor_get(cur, &k, &d, MDB_NEXT);
    }
    if (rc == 0 && k.mv_size <= sizeof(s->sweep_key)) { /* resume here next time */
        memcpy(s->sweep_key, k.mv_data, k.mv_size);
        s->sweep_len = k.mv_size;
    } else {
        s->sweep_len = 0; /* reached the end: start over */
    }
    mdb_cursor_close(cur);
    if (mdb_txn_commit(txn) != 0)
        return 0;
    return deleted;
}

/* ---- Durable records ---- */

uint64_t pgw_store_durable_version(struct pgw_store *s)
{
    MDB_envinfo info;
    if (mdb_env_info(s->durable.env, &info) != 0)
        return UINT64_MAX; /* never matches a cached version */
    return (uint64_t)info.me_last_txnid;
}

int pgw_store_rec_get(struct pgw_store *s, enum pgw_store_table t, const void *key, size_t klen,
                      void *buf, size_t cap, size_t *len)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->durable.env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return fail(s, &s->durable, rc);
    MDB_val k = {klen, (void *)key}, d;
    rc = mdb_get(txn, s->tables[t], &k, &d);
    int r = PGW_OK;
    if (rc == MDB_NOTFOUND) {
        r = PGW_DECLINED;
    } else if (rc != 0) {
        r = fail(s, &s->durable, rc);
    } else {
        *len = d.mv_size;
        if (d.mv_size > cap)
            r = PGW_AGAIN;
        else
            memcpy(buf, d.mv_data, d.mv_size); /* copied before the transaction ends */
    }
    mdb_txn_abort(txn);
    return r;
}

int pgw_store_rec_put(struct pgw_store *s, enum pgw_store_table t, const void *key, size_t klen,
                      const void *val, size_t vlen, int only_new)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->durable.env, NULL, 0, &txn);
    if (rc != 0)
        return fail(s, &s->durable, rc);
    MDB_val k = {klen, (void *)key}, d = {vlen, (void *)val};
    if (val != NULL)
        rc = mdb_put(txn, s->tables[t], &k, &d, only_new ? MDB_NOOVERWRITE : 0);
    else
        rc = mdb_del(txn, s->tables[t], &k, NULL);
    if (rc == MDB_KEYEXIST || (val == NULL && rc == MDB_NOTFOUND)) {
        mdb_txn_abort(txn);
        return PGW_DECLINED;
    }
    if (rc != 0) {
        mdb_txn_abort(txn);
        return fail(s, &s->durable, rc);
    }
    rc = mdb_txn_commit(txn); /* the durable environment syncs on commit */
    return rc == 0 ? PGW_OK : fail(s, &s->durable, rc);
}

int pgw_store_rec_scan(struct pgw_store *s, enum pgw_store_table t,
                       int (*fn)(const void *key, size_t klen, const void *val, size_t vlen,
                                 void *arg),
                       void *arg)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    int rc = mdb_txn_begin(s->durable.env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return fail(s, &s->durable, rc);
    rc = mdb_cursor_open(txn, s->tables[t], &cur);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return fail(s, &s->durable, rc);
    }
    MDB_val k, d;
    for (rc = mdb_cursor_get(cur, &k, &d, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &d, MDB_NEXT))
        if (fn(k.mv_data, k.mv_size, d.mv_data, d.mv_size, arg) != 0)
            break;
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return rc == 0 || rc == MDB_NOTFOUND ? PGW_OK : fail(s, &s->durable, rc);
}
