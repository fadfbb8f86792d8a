/* lua.c: the LuaJIT state, its memory cap, the embedded SDK, the policy sandbox and the CPU guard
 * (see lua.h and docs/lua.md). */
#include "lua.h"
#include "log.h"

#include <lualib.h>
#include <luajit.h>

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

/* The guard's handler reads and writes fields that the thread it interrupted may be using. The
 * signal goes to the thread that owns the state (SIGEV_THREAD_ID), so the only reordering to
 * prevent is the compiler's: relaxed lock-free atomics plus signal fences. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2 && ATOMIC_INT_LOCK_FREE == 2,
               "the CPU guard needs lock-free atomics (async-signal-safe)");
#define LD(field) atomic_load_explicit(&(field), memory_order_relaxed)
#define ST(field, v)                                                                               \
    do {                                                                                           \
        atomic_signal_fence(memory_order_seq_cst);                                                 \
        atomic_store_explicit(&(field), (v), memory_order_relaxed);                                \
        atomic_signal_fence(memory_order_seq_cst);                                                 \
    } while (0)

/* Instructions between count-hook calls once a run overran: small enough that the error comes
 * within microseconds, large enough that the hook is not called on every instruction. */
#define GUARD_HOOK_COUNT 1000
/* While a run stays over budget, the handler re-installs the hook this often (ns): it repairs a
 * dispatch table that the interrupted code was rewriting when the first signal came. */
#define GUARD_REFIRE_NS (10 * 1000000ull)

struct pgw_lua {
    lua_State *L;
    size_t limit, used, peak;
    int reserve_open; /* 1: the bridge works, the whole cap is usable */

    timer_t timer;
    int has_timer;
    int armed;                  /* main thread only */
    unsigned budget_ms;         /* of the current run, for the message */
    _Atomic uint64_t deadline;  /* CLOCK_MONOTONIC ns of the current run's end; 0 when disarmed */
    _Atomic uint64_t timer_at;  /* when the kernel timer fires next (0 or past: not pending) */
    _Atomic int fired;          /* the handler installed the hook during the current run */
    int tripped;                /* the hook raised the budget error during the current run */
    char trip_msg[256];
};

/* Registry keys (their addresses). */
static char sandbox_key, msgh_key;
/* First value of every bridge yield (pgw_lua_yield); compared by address. */
static char io_yield_key;

static void set_err(char *err, size_t errlen, const char *fmt, ...) PGW_PRINTF(3, 4);
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- Memory ---- */

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct pgw_lua *lua = ud;
    if (ptr == NULL)
        osize = 0;
    if (nsize == 0) {
        free(ptr);
        lua->used -= osize;
        return NULL;
    }
    if (nsize > osize) {
        size_t limit = lua->reserve_open ? lua->limit : lua->limit - PGW_LUA_RESERVE;
        if (lua->used + (nsize - osize) > limit)
            return NULL; /* LuaJIT raises "not enough memory" */
    }
    void *p = realloc(ptr, nsize);
    if (p == NULL)
        return nsize <= osize ? ptr : NULL; /* Lua assumes a shrink never fails */
    lua->used = lua->used - osize + nsize;
    if (lua->used > lua->peak)
        lua->peak = lua->used;
    return p;
}

size_t pgw_lua_mem_used(const struct pgw_lua *lua) { return lua->used; }
size_t pgw_lua_mem_peak(const struct pgw_lua *lua) { return lua->peak; }

int pgw_lua_reserve_open(struct pgw_lua *lua)
{
    int previous = lua->reserve_open;
    lua->reserve_open = 1;
    return previous;
}

void pgw_lua_reserve_restore(struct pgw_lua *lua, int previous) { lua->reserve_open = previous; }

/* After a run: garbage left by a policy that allocated fast would otherwise wait for the next
 * GC cycle, which LuaJIT paces on the heap doubling, past the cap. */
static void collect_if_high(struct pgw_lua *lua)
{
    if (lua->used > (lua->limit - PGW_LUA_RESERVE) / 4 * 3)
        lua_gc(lua->L, LUA_GCCOLLECT, 0);
}

/* ---- CPU guard ---- */

static void set_timer(struct pgw_lua *lua, uint64_t at)
{
    struct itimerspec its = {0};
    its.it_value.tv_sec = (time_t)(at / 1000000000u);
    its.it_value.tv_nsec = (long)(at % 1000000000u);
    timer_settime(lua->timer, TIMER_ABSTIME, &its, NULL);
    ST(lua->timer_at, at);
}

/* Formats the budget error once per run, with the file:line of <ar> when it has one. */
static void trip(struct pgw_lua *lua, lua_State *L, lua_Debug *ar) {
  if (lua->tripped)
    return;
  lua->tripped = 1;
  /* lua_getinfo "Sl" fills ar without allocating. */
  if (ar != NULL && lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
    snprintf(lua->trip_msg, sizeof(lua->trip_msg), "%s:%d: ", ar->short_src,
             ar->currentline);
  else
    lua->trip_msg[0] = '\0';
  size_t n = strlen(lua->trip_msg);
  snprintf(lua->trip_msg + n, sizeof(lua->trip_msg) - n,
           "policy exceeded its CPU budget of %u ms", lua->budget_ms);
}

static int raise_trip(struct pgw_lua *lua, lua_State *L) {
  int saved = pgw_lua_reserve_open(lua);
  lua_pushstring(L, lua->trip_msg);
  pgw_lua_reserve_restore(lua, saved);
  return lua_error(L);
}

static void guard_hook(lua_State *L, lua_Debug *ar) {
  struct pgw_lua *lua = pgw_lua_from_state(L);
  if (LD(lua->deadline) == 0 || !LD(lua->fired))
    return; /* left over from a run that ended */
  trip(lua, L,
       ar); /* a hook adds no frame: ar is the function that was running */
  raise_trip(lua, L);
}

void pgw_lua_guard_check(lua_State *L) {
  struct pgw_lua *lua = pgw_lua_from_state(L);
  uint64_t deadline = LD(lua->deadline);
  if (deadline == 0 || (!LD(lua->fired) && mono_ns() < deadline))
    return;
  /* Level 0 is the C function that checks; name the nearest Lua code above it
   * (a tail call replaced the caller's frame, pcall(string.find, ...) puts a C
   * function in between). */
  lua_Debug ar;
  int level = 1;
  while (lua_getstack(L, level, &ar) && lua_getinfo(L, "l", &ar) &&
         ar.currentline <= 0)
    level++;
  trip(lua, L, lua_getstack(L, level, &ar) ? &ar : NULL);
  raise_trip(lua, L);
}

/* Async-signal-safe: clock_gettime, timer_settime, atomics, and lua_sethook,
 * which LuaJIT documents as callable "asynchronously (e.g. during a signal)"
 * (lj_dispatch.c) and uses so in luajit.c's SIGINT handler. */
static void on_guard_signal(int sig, siginfo_t *si, void *uctx)
{
    PGW_UNUSED(sig);
    PGW_UNUSED(uctx);
    int saved_errno = errno;
    struct pgw_lua *lua = si->si_code == SI_TIMER ? si->si_value.sival_ptr : NULL;
    if (lua == NULL)
        goto out;
    uint64_t deadline = LD(lua->deadline);
    if (deadline == 0) { /* idle: let the timer lapse */
        ST(lua->timer_at, 0);
        goto out;
    }
    uint64_t now = mono_ns();
    if (now < deadline) { /* set for an earlier run: wait for this one's deadline */
        set_timer(lua, deadline);
        goto out;
    }
    ST(lua->fired, 1);
    set_timer(lua, now + GUARD_REFIRE_NS);
    /* Off then on: forces LuaJIT to rewrite its whole dispatch table (see GUARD_REFIRE_NS). */
    lua_sethook(lua->L, NULL, 0, 0);
    lua_sethook(lua->L, guard_hook, LUA_MASKCOUNT, GUARD_HOOK_COUNT);
out:
    errno = saved_errno;
}

void pgw_lua_guard_arm(struct pgw_lua *lua, unsigned budget_ms)
{
    pgw_assert(!lua->armed && budget_ms > 0);
    lua->armed = 1;
    lua->budget_ms = budget_ms;
    lua->tripped = 0;
    ST(lua->fired, 0);
    uint64_t now = mono_ns();
    uint64_t deadline = now + (uint64_t)budget_ms * 1000000u;
    ST(lua->deadline, deadline);
    /* A pending expiry before the deadline is fine (the handler moves it); a missing or later
     * one is not. */
    uint64_t at = LD(lua->timer_at);
    if (at <= now || at > deadline)
        set_timer(lua, deadline);
}

int pgw_lua_guard_disarm(struct pgw_lua *lua)
{
    pgw_assert(lua->armed);
    lua->armed = 0;
    ST(lua->deadline, 0); /* from here on the handler leaves the hook alone */
    int fired = LD(lua->fired);
    if (fired) {
        lua_sethook(lua->L, NULL, 0, 0);
        ST(lua->fired, 0);
    }
    return fired || lua->tripped;
}

/* Raises the budget error again after a policy's pcall or coroutine caught it. */
static int l_guard_check(lua_State *L)
{
    struct pgw_lua *lua = pgw_lua_from_state(L);
    if (!lua->tripped)
        return 0;
    lua_pushstring(L, lua->trip_msg);
    return lua_error(L);
}

static int install_guard_signal(char *err, size_t errlen)
{
    static int installed;
    if (installed)
        return PGW_OK;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_guard_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(PGW_LUA_GUARD_SIGNAL, &sa, NULL) == -1) {
        set_err(err, errlen, "lua: sigaction: %s", strerror(errno));
        return PGW_ERR;
    }
    installed = 1;
    return PGW_OK;
}

/* ---- Errors and tracebacks ---- */

static const char *error_text(lua_State *L, int idx)
{
    const char *msg = lua_tostring(L, idx);
    if (msg != NULL)
        return msg;
    /* No __tostring here: the bridge never runs policy code outside a guarded run. */
    return lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, idx));
}

static int l_msgh(lua_State *L)
{
    struct pgw_lua *lua = pgw_lua_from_state(L);
    int saved = pgw_lua_reserve_open(lua);
    luaL_traceback(L, L, error_text(L, 1), 1);
    pgw_lua_reserve_restore(lua, saved);
    return 1;
}

static int on_panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    pgw_log_error("lua: unprotected error (panic): %s", msg ? msg : "(not a string)");
    abort();
    return 0;
}

/* ---- The embedded SDK ---- */

static const struct pgw_lua_module *sdk_find(const char *name)
{
    for (const struct pgw_lua_module *m = pgw_lua_sdk; m->name != NULL; m++)
        if (strcmp(m->name, name) == 0)
            return m;
    return NULL;
}

static int l_sdk_has(lua_State *L)
{
    lua_pushboolean(L, sdk_find(luaL_checkstring(L, 1)) != NULL);
    return 1;
}

/* package.loaders[2]: the only place `require` looks after package.preload. */
static int l_sdk_loader(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    const struct pgw_lua_module *m = sdk_find(name);
    if (m == NULL) {
        lua_pushfstring(L, "\n\tno module '%s' in the embedded SDK", name);
        return 1;
    }
    if (luaL_loadbuffer(L, (const char *)m->code, m->len, m->chunkname) != 0)
        return lua_error(L);
    return 1;
}

/* ---- State ---- */

static void seed_random(lua_State *L)
{
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed))
        seed = mono_ns() ^ (uint64_t)getpid() << 32;
    lua_getglobal(L, "math");
    lua_getfield(L, -1, "randomseed");
    lua_pushnumber(L, (lua_Number)(seed >> 11)); /* 53 bits: exact in a double */
    lua_call(L, 1, 0);
    lua_pop(L, 1);
}

/* Runs under lua_cpcall: any error (a cap too small) comes back as a status, not a panic. */
static int init_state(lua_State *L)
{
    luaL_openlibs(L);

    lua_getglobal(L, "string"); /* string */
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);

    lua_getglobal(L, "package"); /* package */
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "cpath");
    lua_getfield(L, -1, "loaders"); /* package loaders */
    lua_createtable(L, 2, 0);       /* package loaders new */
    lua_rawgeti(L, -2, 1);          /* the preload searcher (ffi, jit.*, table.new...) */
    lua_rawseti(L, -2, 1);
    lua_pushcfunction(L, l_sdk_loader);
    lua_rawseti(L, -2, 2);
    lua_setfield(L, -3, "loaders"); /* package loaders */
    lua_pop(L, 2);

    seed_random(L);

    lua_pushlightuserdata(L, &msgh_key);
    lua_pushcfunction(L, l_msgh);
    lua_rawset(L, LUA_REGISTRYINDEX);

    const struct pgw_lua_module *m = sdk_find("pgw.internal.sandbox");
    if (m == NULL)
        return luaL_error(L, "the embedded SDK has no pgw.internal.sandbox");
    if (luaL_loadbuffer(L, (const char *)m->code, m->len, m->chunkname) != 0)
        return lua_error(L);
    lua_createtable(L, 0, 4); /* chunk priv */
    pgw_lua_pattern_push(L);
    lua_setfield(L, -2, "pattern");
    lua_pushcfunction(L, l_guard_check);
    lua_setfield(L, -2, "guard_check");
    lua_pushlightuserdata(L, &io_yield_key);
    lua_setfield(L, -2, "io_yield");
    lua_pushcfunction(L, l_sdk_has);
    lua_setfield(L, -2, "sdk_has");
    lua_call(L, 1, 1); /* sandbox */
    if (!lua_istable(L, -1))
        return luaL_error(L, "pgw.internal.sandbox did not return a table");
    lua_pushlightuserdata(L, &sandbox_key);
    lua_insert(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
    return 0;
}

struct pgw_lua *pgw_lua_new(size_t mem_limit, char *err, size_t errlen)
{
    if (mem_limit < PGW_LUA_MEM_MIN) {
        set_err(err, errlen, "lua: memory limit %zu is below the minimum of %u bytes", mem_limit,
                PGW_LUA_MEM_MIN);
        return NULL;
    }
    if (install_guard_signal(err, errlen) != PGW_OK)
        return NULL;
    struct pgw_lua *lua = pgw_calloc(1, sizeof(*lua));
    lua->limit = mem_limit;
    lua->reserve_open = 1;
    lua->L = lua_newstate(l_alloc, lua);
    if (lua->L == NULL) {
        set_err(err, errlen, "lua: cannot create a state (a LuaJIT without GC64 cannot use a "
                             "custom allocator)");
        goto fail;
    }
    lua_atpanic(lua->L, on_panic);
    if (lua_cpcall(lua->L, init_state, lua) != 0) {
        set_err(err, errlen, "lua: initialisation failed: %s", error_text(lua->L, -1));
        goto fail;
    }
    lua_settop(lua->L, 0);

    struct sigevent sev;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = PGW_LUA_GUARD_SIGNAL;
    sev.sigev_value.sival_ptr = lua;
    sev.sigev_notify_thread_id = gettid();
    if (timer_create(CLOCK_MONOTONIC, &sev, &lua->timer) == -1) {
        set_err(err, errlen, "lua: timer_create: %s", strerror(errno));
        goto fail;
    }
    lua->has_timer = 1;
    return lua;

fail:
    if (lua->L != NULL)
        lua_close(lua->L);
    free(lua);
    return NULL;
}

void pgw_lua_free(struct pgw_lua *lua)
{
    if (lua == NULL)
        return;
    pgw_assert(!lua->armed);
    if (lua->has_timer)
        timer_delete(lua->timer); /* also drops an expiry still queued */
    lua_close(lua->L);
    free(lua);
}

lua_State *pgw_lua_state(struct pgw_lua *lua) { return lua->L; }

struct pgw_lua *pgw_lua_from_state(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

void pgw_lua_unref(struct pgw_lua *lua, int ref)
{
    if (ref != LUA_NOREF && ref != LUA_REFNIL)
        luaL_unref(lua->L, LUA_REGISTRYINDEX, ref);
}

/* ---- Running Lua code ---- */

int pgw_lua_call_guarded(struct pgw_lua *lua, int nargs, int nresults, unsigned budget_ms,
                         char *err, size_t errlen)
{
    lua_State *L = lua->L;
    int base = lua_gettop(L) - nargs; /* the function */
    pgw_assert(base >= 1);
    lua_pushlightuserdata(L, &msgh_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_insert(L, base); /* msgh fn args */

    int saved = lua->reserve_open;
    lua->reserve_open = 0;
    pgw_lua_guard_arm(lua, budget_ms);
    int rc = lua_pcall(L, nargs, nresults, base);
    pgw_lua_guard_disarm(lua);
    lua->reserve_open = saved;

    lua_remove(L, base); /* results, or the error */
    if (rc != 0) {
        set_err(err, errlen, "%s", error_text(L, -1));
        lua_settop(L, base - 1);
        collect_if_high(lua);
        return PGW_ERR;
    }
    collect_if_high(lua);
    return PGW_OK;
}

lua_State *pgw_lua_thread_new(struct pgw_lua *lua, int *ref)
{
    lua_State *co = lua_newthread(lua->L);
    *ref = luaL_ref(lua->L, LUA_REGISTRYINDEX);
    return co;
}

int pgw_lua_yield(lua_State *L)
{
    lua_pushlightuserdata(L, &io_yield_key);
    return lua_yield(L, 1);
}

int pgw_lua_resume(struct pgw_lua *lua, lua_State *co, int nargs, unsigned budget_ms, char *err,
                   size_t errlen)
{
    int saved = lua->reserve_open;
    lua->reserve_open = 0;
    pgw_lua_guard_arm(lua, budget_ms);
    int rc = lua_resume(co, nargs);
    pgw_lua_guard_disarm(lua);
    lua->reserve_open = saved;

    if (rc == 0) {
        collect_if_high(lua);
        return PGW_OK;
    }
    if (rc == LUA_YIELD) {
        int is_io = lua_gettop(co) >= 1 && lua_touserdata(co, 1) == &io_yield_key;
        lua_settop(co, 0);
        if (is_io)
            return PGW_AGAIN;
        set_err(err, errlen, "coroutine.yield reached the request's thread (only a bridge "
                             "function that waits may suspend it)");
        return PGW_ERR;
    }
    lua_State *L = lua->L;
    int top = lua_gettop(L);
    luaL_traceback(L, co, error_text(co, -1), 0);
    set_err(err, errlen, "%s", lua_tostring(L, -1));
    lua_settop(L, top);
    lua_settop(co, 0);
    collect_if_high(lua);
    return PGW_ERR;
}

/* ---- Policies ---- */

int pgw_lua_load_policy(struct pgw_lua *lua, const char *name, const char *path, const char *src,
                        size_t len, unsigned flags, unsigned budget_ms, int *ref, char *err,
                        size_t errlen)
{
    lua_State *L = lua->L;
    int top = lua_gettop(L);
    *ref = LUA_NOREF;
    int bytecode = (flags & PGW_LUA_POLICY_BYTECODE) != 0;
    if (len > 0 && src[0] == '\x1b' && !bytecode) {
        set_err(err, errlen, "%s: bytecode is not accepted, only Lua source text", path);
        return PGW_ERR;
    }
    char chunkname[512];
    snprintf(chunkname, sizeof(chunkname), "@%s", path);
    if (luaL_loadbufferx(L, src, len, chunkname, bytecode ? "b" : "t") != 0) { /* chunk */
        set_err(err, errlen, "%s", error_text(L, -1));
        goto fail;
    }
    if (!(flags & PGW_LUA_POLICY_JIT))
        luaJIT_setmode(L, -1, LUAJIT_MODE_ALLFUNC | LUAJIT_MODE_OFF);

    lua_pushlightuserdata(L, &sandbox_key);
    lua_rawget(L, LUA_REGISTRYINDEX); /* chunk sandbox */
    lua_getfield(L, -1, "new_env");
    lua_pushstring(L, name);
    if (lua_pcall(L, 1, 1, 0) != 0) { /* chunk sandbox env */
        set_err(err, errlen, "%s: building the environment: %s", path, error_text(L, -1));
        goto fail;
    }
    lua_setfenv(L, -3); /* chunk sandbox */
    lua_insert(L, -2);  /* sandbox chunk */

    if (pgw_lua_call_guarded(lua, 0, 1, budget_ms, err, errlen) != PGW_OK)
        goto fail; /* sandbox */
    if (!lua_istable(L, -1)) {   /* sandbox result */
        set_err(err, errlen, "%s: a policy must return a table, got %s", path,
                luaL_typename(L, -1));
        goto fail;
    }
    lua_getfield(L, -2, "register");
    lua_pushstring(L, name);
    lua_pushvalue(L, -3);
    if (lua_pcall(L, 2, 0, 0) != 0) { /* sandbox result */
        set_err(err, errlen, "%s: registering: %s", path, error_text(L, -1));
        goto fail;
    }
    *ref = luaL_ref(L, LUA_REGISTRYINDEX); /* sandbox */
    lua_settop(L, top);
    return PGW_OK;

fail:
    lua_settop(L, top);
    return PGW_ERR;
}

void pgw_lua_push_readonly(struct pgw_lua *lua)
{
    lua_pushlightuserdata(lua->L, &sandbox_key);
    lua_rawget(lua->L, LUA_REGISTRYINDEX);
    lua_getfield(lua->L, -1, "readonly");
    lua_remove(lua->L, -2);
}

void pgw_lua_set_limit(struct pgw_lua *lua, size_t mem_limit) { lua->limit = mem_limit; }

int pgw_lua_forget_policy(struct pgw_lua *lua, const char *name)
{
    lua_State *L = lua->L;
    int top = lua_gettop(L);
    lua_pushlightuserdata(L, &sandbox_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "register"); /* sandbox register */
    lua_pushstring(L, name);
    lua_pushnil(L);
    int rc = lua_pcall(L, 2, 0, 0) == 0 ? PGW_OK : PGW_ERR;
    lua_settop(L, top);
    return rc;
}
