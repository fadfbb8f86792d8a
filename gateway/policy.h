/* policy.h: policy sets. A bundle is the source text of the user policies (every <name>.lua of
 * the policies directory), read once by the master and shipped with each generation, so every
 * worker builds from exactly what was validated. A set is what a Lua state built from a config
 * and a bundle: every policy loaded into the sandbox, and one chain per listener and per route
 * (the policies of its `policies:` list in order, each with its validated, defaulted, read-only
 * conf). The master builds a set in a scratch state to validate a generation (`passerelle check`,
 * reload); each worker builds its own in its state and hangs it on the generation, so requests
 * finish on the set they started with.
 *
 * Ownership: a bundle owns its strings. A set owns its registry refs (released by
 * pgw_policy_set_free, which must not run inside Lua code) and its timers (lua_timer.c).
 */
#ifndef PGW_POLICY_H
#define PGW_POLICY_H

#include "pgw.h"
#include "config.h"
#include "lua.h"

/* ---- Bundles ---- */

struct pgw_policy_src {
    char *name; /* file name without ".lua" */
    char *path; /* <dir>/<name>.lua, for messages */
    char *src;
    size_t len;
};

struct pgw_policy_bundle {
    struct pgw_policy_src *v;
    size_t n;
};

/* Reads every <name>.lua of <dir> (names: [a-z][a-z0-9_]*, at most 1 MiB each; other files are
 * ignored). A missing directory is an empty bundle. Returns PGW_OK, or PGW_ERR with
 * "path: reason" lines in <err> (unreadable file, bad name for a .lua file, bytecode). */
int pgw_policy_bundle_read(const char *dir, struct pgw_policy_bundle *b, char *err,
                           size_t errlen);
void pgw_policy_bundle_free(struct pgw_policy_bundle *b);
/* Serialises <b> into a new heap buffer (*len bytes); pgw_policy_bundle_decode() reverses it.
 * Decode returns PGW_ERR on a malformed buffer (b is then empty). */
char *pgw_policy_bundle_encode(const struct pgw_policy_bundle *b, size_t *len);
int pgw_policy_bundle_decode(const char *p, size_t len, struct pgw_policy_bundle *b);

/* ---- Sets ---- */

/* The stages a policy table may define, indexed for fn[] below. */
enum pgw_policy_stage_idx {
    PGW_PS_REWRITE = 0,
    PGW_PS_ACCESS,
    PGW_PS_HEADER_FILTER,
    PGW_PS_BODY_FILTER,
    PGW_PS_LOG,
    PGW_PS_WS_CONNECT,
    PGW_PS_WS_MESSAGE,
    PGW_PS_WS_CLOSE,
    PGW_PS_COUNT
};

struct pgw_policy_entry {
    const char *name; /* the policy's name (owned by the set) */
    int fn[PGW_PS_COUNT]; /* registry refs of the stage functions, LUA_NOREF when absent */
    int conf;             /* registry ref of the read-only conf view */
    int init;             /* init_worker, LUA_NOREF when absent */
};

struct pgw_policy_chain {
    struct pgw_policy_entry *v;
    size_t n;
    unsigned stages; /* PGW_STAGE_* bits for which some entry has a function */
};

struct pgw_policy_set {
    struct pgw_lua *lua;
    struct pgw_policy_chain *listeners; /* one per config listener */
    struct pgw_policy_chain *routes;    /* one per config route */
    size_t num_listeners, num_routes;
    /* per route: NULL, or the chains of its websocket.actions in config order followed by its
     * websocket.default (empty when not set); only their ws_message functions run */
    struct pgw_policy_chain **ws_actions;
    int *fn_refs;  /* every stage function of every policy loaded (released by free) */
    size_t num_fn_refs;
    char **names;  /* the names the chains point at */
    size_t num_names;
    struct pgw_timer *timers; /* created by this set's code (lua_timer.c) */
    int retired;              /* a newer set replaced it: its timers stopped */
    unsigned budget;          /* ms per run of policy code (config policies.budget) */
    unsigned timers_max;      /* config policies.timers */
    int plans_ref;            /* registry ref of the read-only plans view (pgw.plan) */
    struct pgw_gen *gen;      /* the generation that owns the set (NULL in the master) */
    const struct pgw_config *config; /* the configuration it was built for (borrowed: the
                                        generation, or the master's check, outlives the set) */
};

/* Builds the set for <config> and <bundle> in <lua>: loads the built-in policies the config
 * names and every policy of the bundle (the bundle's must all load, whether used or not), checks
 * each table (pgw.policy.check) and each route's and listener's config for it against its schema.
 * Returns the set, or NULL with every error as "FILE:LINE: message\n" lines in <err>. */
struct pgw_policy_set *pgw_policy_set_build(struct pgw_lua *lua, const struct pgw_config *config,
                                            const struct pgw_policy_bundle *bundle, char *err,
                                            size_t errlen);
/* Calls every init_worker(conf) of the set, in chain order (errors are logged, not fatal), with
 * set->gen as the generation of the runs. */
void pgw_policy_set_init(struct pgw_policy_set *set);
/* Stops the set's timers (they run once more with premature = true). */
void pgw_policy_set_retire(struct pgw_policy_set *set);
void pgw_policy_set_free(struct pgw_policy_set *set);

/* Validates <config> with <bundle> in a scratch state (the master's check). PGW_OK, or PGW_ERR
 * with messages in <err>. */
int pgw_policy_check(const struct pgw_config *config, const struct pgw_policy_bundle *bundle,
                     char *err, size_t errlen);

/* Reads the bundle of <config>'s policies directory and checks it with the config (the master,
 * `passerelle check`). PGW_OK with the encoded bundle in *enc (heap; NULL allowed to skip), or
 * PGW_ERR with "FILE:LINE: message" lines in <err>. */
int pgw_policy_validate(const struct pgw_config *config, char **enc, size_t *enc_len, char *err,
                        size_t errlen);

/* Whether the config names any policy (no Lua state is needed otherwise). */
int pgw_policy_config_uses(const struct pgw_config *config);

#endif
