/* lua.h: the Lua bridge core. One LuaJIT state per worker (struct pgw_lua) with a memory cap,
 * the SDK embedded as bytecode (`require "pgw"` never touches the disk), the policy sandbox, and
 * the CPU guard that stops a policy overrunning its budget. Owns the lua_State, its POSIX timer
 * and the registry refs it hands out. Pure code: no libevent; the request pipeline (lua_*.c,
 * stage.c) builds on the primitives below. docs/lua.md explains the sandbox, the cap and the
 * guarantee.
 *
 * Threads: a state and everything below is used from the thread that created it, after fork()
 * (POSIX timers are not inherited by a child).
 *
 * Memory: every allocation of the state goes through a counting allocator. Policy code may use
 * mem_limit - PGW_LUA_RESERVE bytes; the last PGW_LUA_RESERVE bytes are open only while the
 * bridge works (between runs of Lua code, or inside a pgw_lua_reserve_open() section), so the
 * bridge can still build an error, a traceback or a coroutine after a policy hit the cap. Past
 * the cap, an allocation fails with the Lua error "not enough memory"; an allocation failure in
 * unprotected bridge code is a panic (logged, then abort), like malloc failure elsewhere.
 *
 * CPU guard: a budget is a wall-clock deadline on one uninterrupted run of Lua code (one
 * lua_pcall or lua_resume slice). The deadline is a number checked by a lazily re-armed
 * CLOCK_MONOTONIC timer (PGW_LUA_GUARD_SIGNAL, delivered to the creating thread), so arming and
 * disarming cost one clock read and no system call in the common case. When a run overruns,
 * the signal handler installs a count hook; the hook raises "<file>:<line>: policy exceeded its
 * CPU budget of N ms" in the policy's interpreted code (policy functions are loaded with the JIT
 * off for that reason), and wrapped pcall/xpcall/coroutine.resume re-raise it so a policy cannot
 * swallow it. Policy code matches patterns with lua_pattern.c, whose step budget polls the
 * deadline (pgw_lua_guard_check). Not covered: time spent inside one other C function (a huge
 * table.sort or table.concat: bounded by the memory cap), and compiled SDK code; the master's
 * heartbeat kill is the last line of defence there.
 */
#ifndef PGW_LUA_H
#define PGW_LUA_H

#include "pgw.h"

#include <lauxlib.h>
#include <lua.h>

/* Bytes at the top of the cap that only the bridge may use. */
#define PGW_LUA_RESERVE (256u * 1024)
/* Smallest cap pgw_lua_new() accepts: the libraries, the SDK and the reserve must fit. */
#define PGW_LUA_MEM_MIN (2u * 1024 * 1024)
/* Real-time signal of the CPU guard timer; nothing else in the process may use it. */
#define PGW_LUA_GUARD_SIGNAL (SIGRTMIN + 1)

/* A chunk of the embedded SDK (build/gen/lua_sdk.c, written by tools/luabc). */
struct pgw_lua_module {
    const char *name;      /* "pgw", "pgw.policy", "pgw.internal.sandbox" */
    const char *chunkname; /* "=pgw/policy.lua" */
    const unsigned char *code;
    size_t len;
};
/* Terminated by an entry whose name is NULL. */
extern const struct pgw_lua_module pgw_lua_sdk[];

struct pgw_lua;

/* ---- State ---- */

/* Creates a state capped at <mem_limit> bytes (>= PGW_LUA_MEM_MIN): opens the standard
 * libraries, removes string.dump, makes `require` resolve only the embedded SDK (and
 * package.preload) for trusted code, locks the string metatable, loads the sandbox and creates
 * the guard timer. Returns NULL with a message in <err> on failure. Free with pgw_lua_free(). */
struct pgw_lua *pgw_lua_new(size_t mem_limit, char *err, size_t errlen);
/* Closes the state (finalizers run), deletes the timer. Must not be called from Lua code. */
void pgw_lua_free(struct pgw_lua *lua);

lua_State *pgw_lua_state(struct pgw_lua *lua);
/* The pgw_lua that owns <L> (any thread of the state). */
struct pgw_lua *pgw_lua_from_state(lua_State *L);
/* Bytes currently allocated by the state, and the highest value seen. */
size_t pgw_lua_mem_used(const struct pgw_lua *lua);
size_t pgw_lua_mem_peak(const struct pgw_lua *lua);

/* Opens the reserve for bridge work done inside Lua calls (an l_* function that must build its
 * result even when the policy used up its share). Returns the previous setting, which the
 * caller passes back to pgw_lua_reserve_restore() before returning to Lua; nothing between the
 * two may raise (STYLE §5: raise before acquiring). Runs of Lua code started by the functions
 * below always close the reserve and restore it afterwards. */
int pgw_lua_reserve_open(struct pgw_lua *lua);
void pgw_lua_reserve_restore(struct pgw_lua *lua, int previous);

/* ---- Policies ---- */

#define PGW_LUA_POLICY_JIT 0x1 /* trusted built-in: leave the JIT on (not covered by the guard) */
#define PGW_LUA_POLICY_BYTECODE 0x2 /* trusted built-in from the embedded SDK: bytecode accepted */
#define PGW_LUA_POLICY_BUILTIN (PGW_LUA_POLICY_JIT | PGW_LUA_POLICY_BYTECODE)

/* Loads the policy <name> from source text <src,len>; <path> names it in messages and
 * tracebacks ("<path>:<line>: ..."). Bytecode is refused. The chunk gets its own sandboxed
 * environment (docs/lua.md), its functions are JIT-disabled unless PGW_LUA_POLICY_JIT is set,
 * and it runs under the CPU guard with <budget_ms>; it must return a table. On success returns
 * PGW_OK with *<ref> a registry reference to that table (release with pgw_lua_unref()) and
 * makes the table reachable from other policies' `require "<name>"` (a read-only snapshot,
 * replacing any previous policy of that name). On failure returns PGW_ERR with the message
 * (file:line, and a traceback for runtime errors) in <err>; the previous policy of that name, if
 * any, stays registered. The Lua stack is left as it was. */
int pgw_lua_load_policy(struct pgw_lua *lua, const char *name, const char *path, const char *src,
                        size_t len, unsigned flags, unsigned budget_ms, int *ref, char *err,
                        size_t errlen);
/* Makes `require "<name>"` fail for policies loaded from now on (a policy removed from the set);
 * policies already loaded keep what they required. Returns PGW_OK (PGW_ERR only on an internal
 * error of the sandbox). */
int pgw_lua_forget_policy(struct pgw_lua *lua, const char *name);
/* Pushes the sandbox's readonly(t) function (a view of t: docs/lua.md). */
void pgw_lua_push_readonly(struct pgw_lua *lua);
/* Changes the memory cap (a new generation); a cap below what is in use only stops growth. */
void pgw_lua_set_limit(struct pgw_lua *lua, size_t mem_limit);
/* Releases a reference returned by this module (LUA_NOREF and LUA_REFNIL are ignored). */
void pgw_lua_unref(struct pgw_lua *lua, int ref);

/* ---- Running Lua code under the CPU guard ---- */

/* Calls the function below <nargs> arguments on the state's main stack with lua_pcall, under a
 * traceback message handler and the guard with <budget_ms> (> 0). For load and init work, never
 * for request stages (a C pcall frame cannot be yielded across). Returns PGW_OK with <nresults>
 * results pushed, or PGW_ERR with the function and arguments popped and the message (with a
 * traceback, except for "not enough memory") in <err>. */
int pgw_lua_call_guarded(struct pgw_lua *lua, int nargs, int nresults, unsigned budget_ms,
                         char *err, size_t errlen);

/* Arms the guard for one run of Lua code of at most <budget_ms> (> 0) milliseconds, reported
 * in the error message. Not nestable. Costs one clock read; a timer system call only when the
 * pending expiry is missing or later than the new deadline. */
void pgw_lua_guard_arm(struct pgw_lua *lua, unsigned budget_ms);
/* Ends the run armed last. Returns 1 if the budget was exceeded during it (the count hook was
 * installed), 0 otherwise; removes the hook. */
int pgw_lua_guard_disarm(struct pgw_lua *lua);

/* For C functions that run long without returning to Lua: if the current run's deadline has
 * passed, raises the budget error of the hook ("<file>:<line>: policy exceeded its CPU budget of
 * N ms", the location of the Lua code calling the C function), which the policy cannot swallow;
 * otherwise returns. Costs one clock read. No effect outside a guarded run. */
void pgw_lua_guard_check(lua_State *L);

/* ---- Pattern matching for policies (lua_pattern.c) ---- */

/* Pushes a table { find, match, gmatch, gsub }: Lua 5.1 pattern functions with LuaJIT's results
 * and error messages, which call pgw_lua_guard_check() every few thousand matching steps and
 * raise "pattern too complex" past 200 nested pattern items. For states made by pgw_lua_new()
 * only. The sandbox installs them in each policy's `string` and the string metatable. */
void pgw_lua_pattern_push(lua_State *L);

/* ---- Coroutines (the request thread) ---- */

/* Creates a thread anchored in the registry; *<ref> releases it with pgw_lua_unref(). */
lua_State *pgw_lua_thread_new(struct pgw_lua *lua, int *ref);

/* Resumes <co> with the <nargs> values on top of its stack, under the guard with <budget_ms>.
 * Returns PGW_OK when the function returned (its results are on <co>'s stack), PGW_AGAIN when it
 * waits in a bridge function that yielded with pgw_lua_yield() (the stack is emptied; resume
 * later with that function's results), PGW_ERR on error (message with <co>'s traceback in <err>;
 * <co> is dead: replace it). A plain coroutine.yield reaching C is an error too: a policy's own
 * coroutines yield to their resumer, never to the request's thread. */
int pgw_lua_resume(struct pgw_lua *lua, lua_State *co, int nargs, unsigned budget_ms, char *err,
                   size_t errlen);

/* For a bridge C function that waits: `return pgw_lua_yield(L);`. The yield travels up through
 * any coroutines the policy created (their resumers forward it) to pgw_lua_resume(), and the
 * values given to the next resume become this function's results. */
int pgw_lua_yield(lua_State *L);

#endif
