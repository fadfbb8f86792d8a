/* config.h: the immutable configuration snapshot, loaded from one YAML file with libyaml.
 *
 * pgw_config_load() reads and validates the whole file: unknown keys, wrong types, bad values and
 * broken references (a route naming an unknown listener or upstream) are errors reported as
 * "FILE:LINE: message" (all of them, one per line, into the caller's buffer). A loaded snapshot is
 * never modified; it is shared by refcount (pgw_config_ref/_unref) so that a request keeps the
 * version it started with when a later issue reloads the configuration. The snapshot owns every
 * string and array it points to.
 *
 * Sizes accept "123", "8k", "32K", "10m", "1g" (powers of 1024); durations accept "250ms", "10s",
 * "2m", "1h" or a plain number of seconds. See docs/config.md for every key.
 */
#ifndef PGW_CONFIG_H
#define PGW_CONFIG_H

#include "pgw.h"
#include "addr.h"

#include <stdint.h>
#include <sys/socket.h>

/* One entry of a `policies:` list: a policy and its settings, in the order they run. */
struct pgw_config_policy {
    char *name;      /* [a-z][a-z0-9_]*: a built-in policy or <policies.dir>/<name>.lua */
    char *conf_json; /* the entry's settings as JSON text ("{}" when none), checked against the
                        policy's own schema when the policy set is built */
    unsigned line;
};

struct pgw_config_policies {
    struct pgw_config_policy *v;
    size_t n;
};

/* TLS on a listener (docs/tls.md); file names as written, read by tls.c in the master. */
struct pgw_config_tls_cert {
    char *cert, *key;
    unsigned line;
};

#define PGW_TLS_V12 1u
#define PGW_TLS_V13 2u

enum pgw_tls_verify { PGW_TLS_VERIFY_OFF = 0, PGW_TLS_VERIFY_OPTIONAL, PGW_TLS_VERIFY_REQUIRED };

struct pgw_config_listener_tls {
    struct pgw_config_tls_cert *certs; /* the first is the default */
    size_t num_certs;
    int reject_unknown_sni;            /* unknown_sni: reject */
    unsigned protocols;                /* PGW_TLS_V12 | PGW_TLS_V13 */
    char *ciphers;                     /* TLS 1.2 list, NULL: the default */
    uint64_t handshake_timeout;        /* ms, default 10s */
    int session_tickets;               /* default 1 */
    int verify_client;                 /* enum pgw_tls_verify */
    char *client_ca;
    unsigned verify_depth;             /* default 4 */
    unsigned line;
};

/* TLS towards an upstream group (tls: true, or the map). */
struct pgw_config_upstream_tls {
    int verify;                   /* default 1 */
    char *ca;                     /* NULL: the system store */
    char *server_name;            /* NULL: the target's host */
    char *cert, *key;             /* client certificate (mutual TLS), or NULL */
    unsigned line;
};

struct pgw_config_listener {
    char *name;
    char *address;                  /* as written: "0.0.0.0:8080", "[::1]:8080" */
    struct sockaddr_storage sa;     /* parsed */
    socklen_t sa_len;
    int backlog;                    /* listen(2) backlog, default 511 */
    struct pgw_config_policies policies; /* run first for every request on this listener */
    struct pgw_config_listener_tls *tls; /* NULL: plain HTTP */
    unsigned line;                  /* line in the file, for messages */
};

enum pgw_real_ip_from { PGW_REAL_IP_NONE = 0, PGW_REAL_IP_XFF, PGW_REAL_IP_PROXY_PROTOCOL };

struct pgw_config_real_ip {
    enum pgw_real_ip_from from;  /* NONE when the real_ip section is absent */
    struct pgw_cidr *trusted;
    size_t num_trusted;
};

struct pgw_config_limits {
    size_t request_line;   /* default 8k */
    size_t header_section; /* default 32k */
    size_t header_fields;  /* default 100 */
    uint64_t body;         /* default 10m; 0 means no body allowed */
    size_t max_connections; /* per worker, default 10000 */
    uint64_t websocket_buffer; /* per worker: WebSocket messages being assembled, default 64m */
};

/* all durations in milliseconds */
struct pgw_config_timeouts {
    uint64_t header;    /* whole request head, default 10s */
    uint64_t body;      /* between body reads, default 30s (and the whole body, see docs) */
    uint64_t keepalive; /* idle between requests, default 60s */
    uint64_t send;      /* a client not reading our response, default 30s */
    uint64_t drain;     /* graceful stop (SIGQUIT): time left to requests in flight, default 30s */
    uint64_t watchdog;  /* a worker whose event loop does not answer the master for that long is
                           killed and replaced, default 10s */
};

struct pgw_config_target {
    char *host; /* host name or IP literal, NUL-terminated, no brackets */
    uint16_t port;
    int is_literal; /* host is an IP address: no DNS */
};

struct pgw_config_upstream {
    char *name;
    struct pgw_config_target *targets;
    size_t num_targets;
    uint64_t connect_timeout; /* ms, default 2s */
    uint64_t read_timeout;    /* ms, default 30s: no response byte for that long -> 504 */
    uint64_t send_timeout;    /* ms, default 30s: upstream not reading our request */
    unsigned retries;         /* default 1: attempts after the first */
    uint64_t retry_deadline;  /* ms, default 0: no time bound on retrying beyond `retries` */
    unsigned keepalive;       /* idle connections kept per worker, default 64; 0 = none */
    uint64_t keepalive_timeout; /* ms, idle upstream connection lifetime, default 60s */
    unsigned max_fails;       /* passive health: failures before skipping, default 3 */
    uint64_t fail_timeout;    /* ms, how long a failed target is skipped, default 10s */
    struct pgw_config_upstream_tls *tls; /* NULL: plain HTTP */
    unsigned line;
};

enum pgw_path_kind { PGW_PATH_EXACT = 0, PGW_PATH_TEMPLATE, PGW_PATH_PREFIX };

enum pgw_route_type { PGW_ROUTE_PROXY = 0, PGW_ROUTE_STATUS };

#define PGW_WS_ACTION_NAME_MAX 256 /* bytes of an action name */

/* One entry of a route's websocket.actions: messages whose selection field is <name>. */
struct pgw_config_ws_action {
    char *name; /* NUL-terminated; may not contain NUL (JSON strings with \u0000 never match) */
    size_t name_len;
    struct pgw_config_policies policies;
};

/* A route's `websocket:` (docs/websocket.md): `true` or a map of these. */
struct pgw_config_websocket {
    char **allowed_origins;    /* lower-cased origins; NULL: any Origin */
    size_t num_allowed_origins;
    uint64_t max_message;      /* bytes of one message, default 1m */
    uint64_t idle_timeout;     /* ms without a frame either way, default 5m */
    uint64_t close_timeout;    /* ms to wait for the other side's close, default 5s */
    /* Route selection per message: the dotted field `selection` of inbound JSON messages names
     * an action; its chain (or `default`) runs after the route's. NULL/0 when not configured. */
    char **selection;          /* the path's member names, NUL-terminated */
    size_t selection_depth;
    struct pgw_config_ws_action *actions;
    size_t num_actions;
    struct pgw_config_policies default_policies; /* n == 0: no default chain */
};

struct pgw_config_route {
    char *name;
    enum pgw_route_type type;  /* "proxy" (default) or "status" (liveness answer) */
    char **listeners;          /* names; at least one */
    size_t num_listeners;
    char *host;                /* lower-case, no port; NULL = any; "*.example.com" wildcard */
    char *path;                /* as written: "/users/{id}", "/orders/", "/exact" */
    enum pgw_path_kind path_kind; /* template if it has "{", prefix if it ends with "/", else exact */
    char **methods;            /* upper-case; NULL/0 = any */
    size_t num_methods;
    char *upstream;            /* name; required for proxy routes */
    int upstream_index;        /* resolved index into config->upstreams, -1 for status routes */
    int preserve_host;         /* default 0: upstream Host is the target's host[:port] */
    int strip_prefix;          /* default 0: remove the matched prefix before forwarding */
    int https_only;            /* plain requests: 308 to https (GET/HEAD) or 426 */
    int https_port;            /* the port of its first TLS listener (0: none), for the 308 */
    struct pgw_config_policies policies; /* in order, after the listener's */
    struct pgw_config_websocket *websocket; /* NULL: not a WebSocket route */
    unsigned line;
};

enum pgw_log_level { PGW_LOG_DEBUG = 0, PGW_LOG_INFO, PGW_LOG_NOTICE, PGW_LOG_WARN, PGW_LOG_ERROR };

struct pgw_config_access_log {
    int enabled;    /* "access_log: off" -> 0; default on, path logs/access.log */
    char *path;     /* "-" or "stdout" for standard output */
    uint64_t flush; /* ms: buffered lines are written at least this often, default 1s; 0 writes
                       each line as its request ends */
};

struct pgw_config_error_log {
    char *path;   /* default "-" = standard error */
    enum pgw_log_level level; /* default info */
};

/* resolver: { nameservers: ["127.0.0.1:53"], timeout: 2s }. Without nameservers, those of
 * /etc/resolv.conf; /etc/hosts is always consulted first. */
struct pgw_config_resolver {
    struct pgw_config_target *nameservers; /* IP literals with their port */
    size_t num_nameservers;
    uint64_t timeout; /* ms per query attempt, default 2s */
};

#define PGW_WORKERS_MAX 256

/* The store (store.h): off unless `store: { dir }` is given. */
struct pgw_config_store {
    char *dir;              /* NULL: no store */
    uint64_t durable_map;   /* bytes, default 64m */
    uint64_t fast_map;      /* bytes, default 256m */
    uint64_t sync_interval; /* ms, default 1s: the fast file is flushed this often */
};

/* The policy engine's per-worker limits (keys of the `policies:` section). */
struct pgw_config_lua {
    uint64_t memory;   /* bytes a worker's Lua state may use, default 64m */
    uint64_t budget;   /* ms one uninterrupted run of policy code may take, default 100ms */
    uint64_t body_max; /* bytes pgw.req.read_body() may buffer, default 1m */
    unsigned timers;   /* pgw.timer timers pending per worker, default 1024 */
};

/* JWT providers (docs/jwt.md); key files are read by the master (genfiles.c), keys built by
 * jwt_provider.c. */
struct pgw_config_jwt_key {
    char *kid;          /* NULL: none */
    int alg;            /* enum pgw_jwt_alg */
    char *file;         /* PEM public key or certificate (asymmetric algorithms) */
    char *secret;       /* HS*: inline secret ... */
    char *secret_file;  /* ... or read from this file (a final newline removed) */
    unsigned line;
};

struct pgw_config_jwt_provider {
    char *name;
    char *issuer;
    char **audiences, **required_claims;
    size_t num_audiences, num_required_claims;
    struct pgw_config_jwt_key *keys;
    size_t num_keys;
    char *jwks_url;
    uint64_t jwks_refresh, jwks_min_refresh, jwks_timeout; /* ms */
    unsigned jwks_algorithms; /* mask of PGW_JWT_ALG_BIT */
    uint64_t leeway;          /* ms */
    int reject_future_iat, require_consumer;
    char *consumer_claim;
    uint64_t max_token_size, cache;
    unsigned line;
};

struct pgw_config {
    int refs;
    char *file; /* the path it was loaded from */
    unsigned workers;     /* worker processes; 0 = auto (one per CPU) */
    char *control_socket; /* control: { socket: PATH }, default "logs/passerelle.sock" */
    char *policies_dir;   /* policies: { dir: PATH }, default "policies" */
    char *http_ca;        /* policies: { http_ca: FILE }: pgw.http's trust store (NULL: system) */
    uint64_t tls_ticket_rotation; /* tls: { ticket_rotation }, ms, default 1h */
    struct pgw_config_lua lua; /* policies: { memory, budget, body_max, timers } */
    struct pgw_config_store store;
    char *plans_json;     /* plans: as JSON text ("{}" when none), checked by the policy engine */
    unsigned plans_line;
    struct pgw_config_listener *listeners;
    size_t num_listeners;
    struct pgw_config_real_ip real_ip;
    struct pgw_config_limits limits;
    struct pgw_config_timeouts timeouts;
    struct pgw_config_upstream *upstreams;
    size_t num_upstreams;
    struct pgw_config_route *routes;
    size_t num_routes;
    struct pgw_config_resolver resolver;
    struct pgw_config_access_log access_log;
    struct pgw_config_error_log error_log;
    int underscores_in_headers; /* http: { underscores_in_headers: reject | drop }: 0 reject, 1 drop */
    int allow_encoded_slash;    /* http: { allow_encoded_slash: false } keeps %2F/%5C rejected */
    struct pgw_config_jwt_provider *jwt_providers; /* jwt: { providers: {...} } */
    size_t num_jwt_providers;
};

/* Set to 1 by the policy engine when it is linked in; until then a non-empty `policies:` list
 * is a configuration error rather than a list that silently never runs. */
extern int pgw_config_policy_engine;

/* Loads and validates <path>. Returns the snapshot (refs == 1) or NULL with every error written
 * to <errbuf> as "FILE:LINE: message\n" lines sorted by line (whole lines while they fit in
 * <errlen>, then a count of the rest; always NUL-terminated). A file that cannot be read gives
 * one "FILE: cannot read: reason\n" line. */
struct pgw_config *pgw_config_load(const char *path, char *errbuf, size_t errlen);

/* Same from a string; <name> is used in messages in place of the file name (for tests). */
struct pgw_config *pgw_config_load_string(const char *name, const char *yaml, size_t len,
                                          char *errbuf, size_t errlen);

/* Reads the whole file <path> (at most 16 MiB) into a heap buffer the caller frees; NULL with a
 * "FILE: cannot read: reason" message in <errbuf>. The master keeps the text of each generation
 * it accepted, so that workers build from exactly what was validated. */
char *pgw_config_read_file(const char *path, size_t *len, char *errbuf, size_t errlen);

/* Whether two target lists name the same host:port pairs in the same order. */
int pgw_config_targets_equal(const struct pgw_config_target *a, size_t na,
                             const struct pgw_config_target *b, size_t nb);

struct pgw_config *pgw_config_ref(struct pgw_config *c);
void pgw_config_unref(struct pgw_config *c);

/* Helpers shared with other modules. */
/* Parses "10s", "250ms", "2m", "1h", "30" (seconds) into milliseconds. Integers only; PGW_ERR on
 * anything else ("1.5s", "-1", "10x", "") or on overflow, *ms untouched. */
int pgw_config_parse_duration(const char *s, uint64_t *ms);
/* Parses "8k", "32K", "10m", "1g", "123" into bytes (powers of 1024). Integers only; PGW_ERR on
 * anything else ("1.5k", "-1", "8kb", "") or on overflow, *bytes untouched. */
int pgw_config_parse_size(const char *s, uint64_t *bytes);

#endif
