/* master.c: the master process. It alone reads and validates the configuration, opens the
 * listening sockets, numbers each accepted configuration as a generation and hands it to the
 * workers over their channels; it starts the workers (fork + exec of our own binary, so each
 * starts from a clean process image), replaces one that dies, and answers the CLI on the control
 * socket (`passerelle reload`, `passerelle status`).
 *
 * Ownership: the master owns the current configuration snapshot and its text, the listening
 * sockets (workers get duplicates with each generation), the control socket, one channel per
 * worker and the CLI connections.
 */
#include "master.h"
#include "policy.h"
#include "control.h"
#include "log.h"
#include "server.h"
#include "store.h"
#include "keys.h"
#include "genfiles.h"
#include "tls.h"
#include "ws.h"
#include "wsproxy.h"

#include <errno.h>
#include <openssl/evp.h>
#include <sys/inotify.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define CLI_TIMEOUT_MS 5000    /* a reload or status answer waits that long for the workers */
#define STOP_KILL_GRACE_MS 5000 /* after the drain (or at once for a fast stop) */
#define QUICK_DEATH_MS 1000

struct worker {
    int slot;
    pid_t pid;           /* 0: not running */
    struct pgw_chan *ch;
    uint64_t started_ms;
    uint64_t gen;        /* last generation it confirmed */
    unsigned quick_deaths;
    struct event *respawn;
    uint64_t last_pong_ms; /* the watchdog: the last time its event loop answered */
};

struct lsock {
    struct sockaddr_storage sa;
    socklen_t len;
    int fd;
};

enum cli_kind { CLI_READING, CLI_RELOAD, CLI_STATUS, CLI_WS_SEND, CLI_WRITING };

/* A command line: "ws-send" carries a base64 message of up to 64 KiB. */
#define CLI_LINE_MAX (96 * 1024)

struct cli {
    int fd;
    struct event *rev, *wev, *timer;
    struct evbuffer *in, *out;
    enum cli_kind kind;
    uint64_t want;       /* reload: the generation; status, ws-send: the query id */
    unsigned waiting;    /* worker answers still expected */
    struct evbuffer *acc; /* status: worker objects collected */
    struct cli *prev, *next;
};

static struct {
    struct event_base *base;
    char exe[4096];
    const char *path;            /* the configuration file */
    struct pgw_config *config;   /* the current generation's */
    char *text;                  /* its validated text, sent to workers */
    size_t text_len;
    char *bundle;      /* the policies of the current generation, encoded (policy.h) */
    size_t bundle_len;
    char *files;       /* its certificates, keys, CAs and JWT keys, encoded (genfiles.h) */
    size_t files_len;
    unsigned char tickets[PGW_TLS_TICKET_KEYS_MAX * PGW_TLS_TICKET_KEY_LEN]; /* current first */
    size_t ntickets;
    struct event *ticket_timer;
    uint64_t gen;
    unsigned reloads;
    char *last_error;            /* of the last failed reload, or NULL */
    struct lsock *ls;            /* one per config listener, same order */
    size_t nls;
    struct worker workers[PGW_WORKERS_MAX];
    size_t nworkers;             /* slots in use (the configured count) */
    int ctl_fd;
    struct event *ctl_ev;
    char ctl_path[108];
    struct cli *clis;
    uint64_t next_query;
    int stopping;                /* 1 graceful, 2 fast */
    struct event *kill_timer;
    struct event *watchdog;
    uint64_t ping_seq;
    int ino_fd, ino_wd;          /* inotify on the policies directory (-1: none) */
    char *ino_dir;
    struct event *ino_ev, *ino_timer;
    uint64_t ino_first_ms;       /* first change not reloaded yet (0: none) */
} M;

static void cli_reply(struct cli *c, const char *fmt, ...) PGW_PRINTF(2, 3);
static uint64_t reload(char *err, size_t errlen);
static void policies_watch(const char *dir);
static void clis_on_gen(uint64_t gen);
static void clis_on_status(const struct worker *w, uint64_t query, const char *json, size_t len);

/* ---- Workers ---- */

static unsigned worker_count(const struct pgw_config *c)
{
    if (c->workers > 0)
        return c->workers;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > PGW_WORKERS_MAX ? PGW_WORKERS_MAX : (unsigned)n;
}

static int *listener_fds(void)
{
    int *fds = pgw_calloc(M.nls ? M.nls : 1, sizeof(int));
    for (size_t i = 0; i < M.nls; i++)
        fds[i] = M.ls[i].fd;
    return fds;
}

/* PGW_MSG_GEN payload: "<file name>\0", the YAML's length (4 bytes), the YAML, the files'
 * length (4 bytes), the files (genfiles.h), the policy bundle. */
static void send_gen(struct worker *w)
{
    size_t pl = strlen(M.path) + 1;
    size_t plen = pl + 4 + M.text_len + 4 + M.files_len + M.bundle_len;
    char *payload = pgw_malloc(plen);
    uint32_t tl = (uint32_t)M.text_len, sl = (uint32_t)M.files_len;
    char *p = payload;
    memcpy(p, M.path, pl);
    memcpy(p += pl, &tl, 4);
    memcpy(p += 4, M.text, M.text_len);
    memcpy(p += M.text_len, &sl, 4);
    if (M.files_len > 0) /* M.files is NULL when no file is named */
        memcpy(p + 4, M.files, M.files_len);
    p += 4 + M.files_len;
    if (M.bundle_len > 0)
        memcpy(p, M.bundle, M.bundle_len);
    int *fds = listener_fds();
    if (pgw_chan_send(w->ch, PGW_MSG_GEN, M.gen, payload, plen, fds, M.nls) != PGW_OK)
        pgw_log_error("worker %d (pid %d): generation %llu not sent", w->slot, (int)w->pid,
                      (unsigned long long)M.gen);
    free(fds);
    pgw_tls_cleanse(payload, plen);
    free(payload);
}

static void send_tickets(struct worker *w)
{
    pgw_chan_send(w->ch, PGW_MSG_TICKETS, 0, M.tickets, M.ntickets * PGW_TLS_TICKET_KEY_LEN,
                  NULL, 0);
}

/* Every tls.ticket_rotation: a new current key; the two before it still decrypt. */
static void on_ticket_rotation(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    memmove(M.tickets + PGW_TLS_TICKET_KEY_LEN, M.tickets,
            (PGW_TLS_TICKET_KEYS_MAX - 1) * PGW_TLS_TICKET_KEY_LEN);
    pgw_tls_new_ticket_key(M.tickets);
    M.ntickets = PGW_MIN(M.ntickets + 1, (size_t)PGW_TLS_TICKET_KEYS_MAX);
    for (size_t i = 0; i < M.nworkers; i++)
        if (M.workers[i].pid != 0 && M.workers[i].ch != NULL)
            send_tickets(&M.workers[i]);
    uint64_t every = M.config->tls_ticket_rotation;
    struct timeval tv = {(time_t)(every / 1000), (suseconds_t)(every % 1000) * 1000};
    evtimer_add(M.ticket_timer, &tv);
}

static void on_worker_msg(struct pgw_chan *ch, const struct pgw_msg *m, void *arg);

static void worker_spawn(struct worker *w)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1) {
        pgw_log_error("worker %d: socketpair: %s", w->slot, strerror(errno));
        return;
    }
    pid_t master = getpid();
    pid_t pid = fork();
    if (pid == -1) {
        pgw_log_error("worker %d: fork: %s", w->slot, strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return;
    }
    if (pid == 0) { /* child: only async-signal-safe calls until exec */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != master)
            _exit(1);
        if (sv[1] == PGW_WORKER_CHAN_FD)
            fcntl(sv[1], F_SETFD, 0);
        else if (dup2(sv[1], PGW_WORKER_CHAN_FD) == -1)
            _exit(1);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execl(M.exe, "passerelle", "worker", (char *)NULL);
        _exit(127);
    }
    close(sv[1]);
    w->pid = pid;
    w->gen = 0;
    w->started_ms = pgw_now_ms();
    w->last_pong_ms = w->started_ms;
    w->ch = pgw_chan_new(M.base, sv[0], on_worker_msg, w);
    pgw_log_info("worker %d started (pid %d)", w->slot, (int)pid);
    send_tickets(w);
    send_gen(w);
}

static void on_respawn(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    struct worker *w = arg;
    if (!M.stopping && w->pid == 0 && (size_t)w->slot < M.nworkers)
        worker_spawn(w);
}

/* ---- pgw.ws.send across workers ----
 * A worker that does not hold the connection asks the master, which asks every other worker and
 * answers with the first that holds it (ids are unique), or "unknown" once all said so. A worker
 * that dies before answering leaves its query to expire in the watchdog tick. */

#define WS_PUSH_PENDING 256
#define WS_PUSH_EXPIRE_MS 3000

static struct ws_push_query {
    uint64_t qid;       /* 0: free */
    pid_t origin;       /* the asking worker, and its query id; 0: a CLI (`passerelle ws-send`) */
    uint64_t origin_qid;
    unsigned waiting;
    uint64_t started_ms;
} ws_pushes[WS_PUSH_PENDING];
static uint64_t ws_push_seq;

static void clis_on_ws_push(uint64_t qid, uint8_t status);

static void ws_push_answer(struct ws_push_query *q, uint8_t status)
{
    if (q->origin == 0)
        clis_on_ws_push(q->qid, status);
    for (size_t i = 0; i < M.nworkers && q->origin != 0; i++) {
        struct worker *w = &M.workers[i];
        if (w->pid == q->origin && w->ch != NULL)
            pgw_chan_send(w->ch, PGW_MSG_WS_PUSH_REPLY, q->origin_qid, (const char *)&status, 1,
                          NULL, 0);
    }
    q->qid = 0;
}

/* Asks every worker but <from> (NULL: a CLI) to push <payload>. Returns the query id, or 0 when
 * too many are in flight (answered "unknown" then, and logged). */
static uint64_t ws_push_ask(struct worker *from, uint64_t origin_qid, const char *payload,
                            size_t len)
{
    struct ws_push_query *q = NULL;
    for (size_t i = 0; i < WS_PUSH_PENDING && q == NULL; i++)
        if (ws_pushes[i].qid == 0)
            q = &ws_pushes[i];
    if (q == NULL) {
        pgw_log_warn("pgw.ws.send: %d pushes across workers in flight, one refused",
                     WS_PUSH_PENDING);
        uint8_t unknown = PGW_WS_PUSH_UNKNOWN;
        if (from != NULL)
            pgw_chan_send(from->ch, PGW_MSG_WS_PUSH_REPLY, origin_qid, (const char *)&unknown, 1,
                          NULL, 0);
        return 0;
    }
    uint64_t qid = ++ws_push_seq;
    *q = (struct ws_push_query){qid, from ? from->pid : 0, origin_qid, 0, pgw_now_ms()};
    for (size_t i = 0; i < M.nworkers; i++) {
        struct worker *w = &M.workers[i];
        if (w == from || w->pid == 0 || w->ch == NULL)
            continue;
        pgw_chan_send(w->ch, PGW_MSG_WS_PUSH, q->qid, payload, len, NULL, 0);
        q->waiting++;
    }
    if (q->waiting == 0)
        ws_push_answer(q, PGW_WS_PUSH_UNKNOWN);
    return qid;
}

static void ws_push_reply(const struct pgw_msg *m)
{
    for (size_t i = 0; i < WS_PUSH_PENDING; i++) {
        struct ws_push_query *q = &ws_pushes[i];
        if (q->qid != m->arg || q->qid == 0)
            continue;
        uint8_t status = m->len == 1 ? (uint8_t)m->payload[0] : PGW_WS_PUSH_UNKNOWN;
        if (status != PGW_WS_PUSH_UNKNOWN || --q->waiting == 0)
            ws_push_answer(q, status);
        return;
    }
}

static void ws_push_expire(uint64_t now)
{
    for (size_t i = 0; i < WS_PUSH_PENDING; i++)
        if (ws_pushes[i].qid != 0 && now - ws_pushes[i].started_ms > WS_PUSH_EXPIRE_MS)
            ws_push_answer(&ws_pushes[i], PGW_WS_PUSH_UNKNOWN);
}

static void on_worker_msg(struct pgw_chan *ch, const struct pgw_msg *m, void *arg)
{
    struct worker *w = arg;
    PGW_UNUSED(ch);
    if (m == NULL) { /* the worker exited or broke the protocol; SIGCHLD reaps it */
        pgw_chan_free(w->ch);
        w->ch = NULL;
        return;
    }
    for (size_t i = 0; i < m->nfds; i++)
        close(m->fds[i]); /* workers send none */
    switch (m->type) {
    case PGW_MSG_GEN_OK:
        w->gen = m->arg;
        clis_on_gen(m->arg);
        break;
    case PGW_MSG_GEN_ERR:
        pgw_log_error("worker %d (pid %d) refused generation %llu: %.*s", w->slot, (int)w->pid,
                      (unsigned long long)m->arg, (int)PGW_MIN(m->len, 2000), m->payload);
        break;
    case PGW_MSG_STATUS_REPLY:
        clis_on_status(w, m->arg, m->payload, m->len);
        break;
    case PGW_MSG_PONG:
        w->last_pong_ms = pgw_now_ms();
        break;
    case PGW_MSG_WS_PUSH:
        ws_push_ask(w, m->arg, m->payload, m->len);
        break;
    case PGW_MSG_WS_PUSH_REPLY:
        ws_push_reply(m);
        break;
    default:
        pgw_log_warn("worker %d: unexpected message type %u", w->slot, m->type);
    }
}

static struct worker *worker_by_pid(pid_t pid)
{
    for (size_t i = 0; i < PGW_WORKERS_MAX; i++)
        if (M.workers[i].pid == pid)
            return &M.workers[i];
    return NULL;
}

static size_t workers_running(void)
{
    size_t n = 0;
    for (size_t i = 0; i < PGW_WORKERS_MAX; i++)
        n += M.workers[i].pid != 0;
    return n;
}

static void worker_reaped(struct worker *w, int status)
{
    char how[64];
    if (WIFSIGNALED(status))
        snprintf(how, sizeof(how), "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(how, sizeof(how), "exited with status %d", WEXITSTATUS(status));
    int expected = M.stopping || (size_t)w->slot >= M.nworkers;
    pgw_log(expected ? PGW_LOG_INFO : PGW_LOG_ERROR, "worker %d (pid %d) %s%s", w->slot,
            (int)w->pid, how, expected ? "" : "; replacing it");
    if (w->ch != NULL) {
        pgw_chan_free(w->ch);
        w->ch = NULL;
    }
    int quick = pgw_now_ms() - w->started_ms < QUICK_DEATH_MS;
    w->quick_deaths = quick ? w->quick_deaths + 1 : 0;
    w->pid = 0;
    if (expected)
        return;
    /* At once, unless it keeps dying at start-up: then once a second, not in a tight loop. */
    struct timeval tv = {0, w->quick_deaths > 1 ? 900 * 1000 : 0};
    evtimer_add(w->respawn, &tv);
}

static void on_sigchld(evutil_socket_t sig, short what, void *arg)
{
    PGW_UNUSED(sig);
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        struct worker *w = worker_by_pid(pid);
        if (w != NULL)
            worker_reaped(w, status);
    }
    if (M.stopping && workers_running() == 0)
        event_base_loopbreak(M.base);
}

/* Starts or retires workers to match the configured count. */
static void workers_resize(size_t want)
{
    for (size_t i = want; i < M.nworkers; i++)
        if (M.workers[i].pid != 0)
            kill(M.workers[i].pid, SIGQUIT); /* surplus: drains and exits */
    size_t old = M.nworkers;
    M.nworkers = want;
    for (size_t i = old; i < want; i++)
        if (M.workers[i].pid == 0)
            worker_spawn(&M.workers[i]);
}

/* ---- Watchdog ---- */

/* Pings every worker four times per timeouts.watchdog; a worker whose event loop has not
 * answered for the whole period (stuck in a loop, stopped, deadlocked) is killed and, like any
 * worker that dies, replaced. Losing its in-flight requests is the price of getting its share of
 * the traffic back. */
static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    uint64_t now = pgw_now_ms(), limit = M.config->timeouts.watchdog;
    M.ping_seq++;
    ws_push_expire(now);
    for (size_t i = 0; i < M.nworkers; i++) {
        struct worker *w = &M.workers[i];
        if (w->pid == 0 || w->ch == NULL || M.stopping)
            continue;
        if (now - w->last_pong_ms > limit) {
            pgw_log_error("worker %d (pid %d) has not answered for %llu ms: killed", w->slot,
                          (int)w->pid, (unsigned long long)(now - w->last_pong_ms));
            kill(w->pid, SIGKILL);
            w->last_pong_ms = now; /* one kill; the reaper replaces it */
            continue;
        }
        pgw_chan_send(w->ch, PGW_MSG_PING, M.ping_seq, NULL, 0, NULL, 0);
    }
    uint64_t every = PGW_MAX(limit / 4, 100);
    struct timeval tv = {(time_t)(every / 1000), (suseconds_t)(every % 1000) * 1000};
    evtimer_add(M.watchdog, &tv);
}

/* ---- Listening sockets ---- */

/* Builds the socket set of <c>: the sockets of addresses already open are kept, new ones opened.
 * On failure nothing changes and <err> says why. On success the old set is replaced and the
 * sockets no longer listed are closed (workers close their duplicates with the new generation). */
static int listeners_sync(const struct pgw_config *c, char *err, size_t errlen)
{
    struct lsock *ls = pgw_calloc(c->num_listeners ? c->num_listeners : 1, sizeof(*ls));
    int *taken = pgw_calloc(M.nls ? M.nls : 1, sizeof(int));
    size_t i;
    for (i = 0; i < c->num_listeners; i++) {
        const struct pgw_config_listener *cl = &c->listeners[i];
        ls[i].sa = cl->sa;
        ls[i].len = cl->sa_len;
        ls[i].fd = -1;
        for (size_t j = 0; j < M.nls; j++) {
            if (!taken[j] && pgw_addr_equal(&M.ls[j].sa, &cl->sa)) {
                taken[j] = 1;
                ls[i].fd = M.ls[j].fd;
                listen(ls[i].fd, cl->backlog > 0 ? cl->backlog : 511); /* backlog may change */
                break;
            }
        }
        if (ls[i].fd == -1 && pgw_listener_open(cl, &ls[i].fd, err, errlen) != PGW_OK)
            break;
    }
    if (i < c->num_listeners) { /* undo: close only what this call opened */
        for (size_t k = 0; k < i; k++) {
            int reused = 0;
            for (size_t j = 0; j < M.nls; j++)
                reused |= M.ls[j].fd == ls[k].fd;
            if (!reused)
                close(ls[k].fd);
        }
        free(ls);
        free(taken);
        return PGW_ERR;
    }
    for (size_t j = 0; j < M.nls; j++)
        if (!taken[j])
            close(M.ls[j].fd);
    free(M.ls);
    free(taken);
    M.ls = ls;
    M.nls = c->num_listeners;
    return PGW_OK;
}

/* ---- Reload ---- */

static void set_last_error(const char *e)
{
    free(M.last_error);
    size_t n = e ? strlen(e) : 0;
    while (n > 0 && e[n - 1] == '\n')
        n--;
    M.last_error = e ? pgw_strndup(e, n) : NULL;
}

/* The store directory is checked (and a damaged fast file recreated) by the master, before any
 * worker opens it; nothing stays open across fork. */
static int store_prepare(const struct pgw_config *c, int repair, char *err, size_t errlen)
{
    unsigned char secret[PGW_KEYS_SECRET_LEN];
    if (c->store.dir == NULL)
        return PGW_OK;
    if (pgw_store_prepare(c->store.dir, (size_t)c->store.durable_map, (size_t)c->store.fast_map,
                          repair, err, errlen) != PGW_OK)
        return PGW_ERR;
    return pgw_keys_secret(c->store.dir, 1, secret, err, errlen); /* created on first start */
}

/* Reads and validates the file, opens new sockets, then hands the generation to every worker.
 * Returns the new generation number, or 0 with every error in <err>. */
static uint64_t reload(char *err, size_t errlen)
{
    size_t len;
    err[0] = '\0';
    char *text = pgw_config_read_file(M.path, &len, err, errlen);
    struct pgw_config *c = text ? pgw_config_load_string(M.path, text, len, err, errlen) : NULL;
    char *bundle = NULL, *files = NULL;
    size_t bundle_len = 0, files_len = 0;
    if (c != NULL && pgw_genfiles_prepare(c, 1, &files, &files_len, err, errlen) != PGW_OK) {
        pgw_config_unref(c);
        c = NULL;
    }
    if (c != NULL && store_prepare(c, 0, err, errlen) != PGW_OK) {
        pgw_config_unref(c);
        c = NULL;
    }
    if (c != NULL && pgw_policy_validate(c, &bundle, &bundle_len, err, errlen) != PGW_OK) {
        pgw_config_unref(c);
        c = NULL;
    }
    if (c != NULL && listeners_sync(c, err, errlen) != PGW_OK) {
        pgw_config_unref(c);
        c = NULL;
    }
    if (c == NULL) {
        free(text);
        free(bundle);
        free(files);
        policies_watch(M.config->policies_dir); /* re-watch a directory renamed back */
        set_last_error(err);
        for (const char *line = err; *line != '\0';) { /* one log line per error */
            const char *nl = strchr(line, '\n');
            int n = nl ? (int)(nl - line) : (int)strlen(line);
            pgw_log_error("reload refused (generation %llu stays active): %.*s",
                          (unsigned long long)M.gen, n, line);
            line += n + (nl != NULL);
        }
        return 0;
    }
    if (pgw_log_open(c) != PGW_OK)
        pgw_log_error("reload: logs could not be reopened; the old ones stay in use");
    pgw_config_unref(M.config);
    free(M.text);
    M.config = c;
    M.text = text;
    M.text_len = len;
    free(M.bundle);
    M.bundle = bundle;
    M.bundle_len = bundle_len;
    free(M.files);
    M.files = files;
    M.files_len = files_len;
    M.gen++;
    M.reloads++;
    set_last_error(NULL);
    policies_watch(c->policies_dir);
    pgw_log_notice("configuration %s: generation %llu", M.path, (unsigned long long)M.gen);
    for (size_t i = 0; i < M.nworkers; i++)
        if (M.workers[i].pid != 0 && M.workers[i].ch != NULL)
            send_gen(&M.workers[i]);
    workers_resize(worker_count(c));
    return M.gen;
}

/* ---- Watching the policies directory ---- */

/* A change is acted on once the directory has been quiet this long: an editor's save (write,
 * rename, chmod) or a deploy copying several files is one reload. */
#define POLICIES_DEBOUNCE_MS 300
/* ...but a directory that never stays quiet (a file rewritten every 100 ms) still reloads at
 * least this often, so the last version always becomes active. */
#define POLICIES_DEBOUNCE_MAX_MS 1000

static void on_policies_quiet(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    M.ino_first_ms = 0;
    if (M.stopping)
        return;
    pgw_log_notice("policies directory %s changed: reloading", M.ino_dir);
    char err[8192];
    reload(err, sizeof(err)); /* a refusal is logged and kept for `passerelle status` */
}

static void on_inotify(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    int relevant = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            size_t l = ev->len ? strlen(ev->name) : 0;
            if ((l > 4 && strcmp(ev->name + l - 4, ".lua") == 0) || (ev->mask & IN_IGNORED))
                relevant = 1;
            if (ev->mask & (IN_IGNORED | IN_MOVE_SELF)) { /* renamed or deleted: watch anew */
                if (M.ino_wd >= 0 && ev->wd == M.ino_wd)
                    inotify_rm_watch(fd, M.ino_wd);
                M.ino_wd = -1; /* the next reload (this one) watches the path again */
            }
            p += sizeof(*ev) + ev->len;
        }
    }
    if (relevant) { /* re-armed by every event: waits for quiet, up to the maximum */
        uint64_t now = pgw_now_ms();
        if (M.ino_first_ms == 0)
            M.ino_first_ms = now;
        uint64_t left = M.ino_first_ms + POLICIES_DEBOUNCE_MAX_MS > now
                            ? M.ino_first_ms + POLICIES_DEBOUNCE_MAX_MS - now
                            : 0;
        uint64_t wait = PGW_MIN(left, (uint64_t)POLICIES_DEBOUNCE_MS);
        struct timeval tv = {(time_t)(wait / 1000), (suseconds_t)(wait % 1000) * 1000};
        evtimer_add(M.ino_timer, &tv);
    }
}

/* Watches <dir> (the current generation's policies.dir): files written, moved in or out, or
 * deleted trigger a reload like HUP. A missing directory is not watched (logged once). */
static void policies_watch(const char *dir)
{
    if (M.ino_fd < 0) {
        M.ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (M.ino_fd < 0) {
            pgw_log_warn("inotify: %s: policy files are reloaded on HUP only", strerror(errno));
            return;
        }
        M.ino_ev = event_new(M.base, M.ino_fd, EV_READ | EV_PERSIST, on_inotify, NULL);
        M.ino_timer = evtimer_new(M.base, on_policies_quiet, NULL);
        event_add(M.ino_ev, NULL);
        M.ino_wd = -1;
    }
    if (M.ino_wd >= 0 && M.ino_dir != NULL && strcmp(M.ino_dir, dir) == 0)
        return;
    if (M.ino_wd >= 0)
        inotify_rm_watch(M.ino_fd, M.ino_wd);
    free(M.ino_dir);
    M.ino_dir = pgw_strndup(dir, strlen(dir));
    M.ino_wd = inotify_add_watch(M.ino_fd, dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM |
                                                    IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF);
    if (M.ino_wd < 0)
        pgw_log_info("policies directory %s not watched: %s", dir, strerror(errno));
}

/* ---- Control socket: CLI connections ---- */

static void cli_free(struct cli *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        M.clis = c->next;
    if (c->next)
        c->next->prev = c->prev;
    event_free(c->rev);
    event_free(c->wev);
    event_free(c->timer);
    evbuffer_free(c->in);
    evbuffer_free(c->out);
    if (c->acc)
        evbuffer_free(c->acc);
    close(c->fd);
    free(c);
}

static void cli_flush(struct cli *c)
{
    while (evbuffer_get_length(c->out) > 0) {
        int n = evbuffer_write(c->out, c->fd);
        if (n == -1 && (errno == EAGAIN || errno == EINTR)) {
            event_add(c->wev, NULL);
            return;
        }
        if (n <= 0)
            break;
    }
    cli_free(c);
}

static void cli_reply(struct cli *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(c->out, fmt, ap);
    va_end(ap);
    c->kind = CLI_WRITING;
    event_del(c->rev);
    event_del(c->timer);
    cli_flush(c);
}

/* Returns <s> as a quoted JSON string (heap), or "null" for NULL. */
static char *json_string(const char *s)
{
    if (s == NULL)
        return pgw_strndup("null", 4);
    size_t n = strlen(s);
    char *out = pgw_malloc(6 * n + 3);
    out[0] = '"';
    size_t k = pgw_json_escape(out + 1, s, n);
    out[k + 1] = '"';
    out[k + 2] = '\0';
    return out;
}

static void status_finish(struct cli *c)
{
    char *err = json_string(M.last_error), *path = json_string(M.path);
    evbuffer_add(c->acc, "", 1);
    cli_reply(c,
              "{\"master_pid\":%d,\"generation\":%llu,\"config\":%s,\"workers\":[%s],"
              "\"last_reload_error\":%s,\"reloads\":%u}\n",
              (int)getpid(), (unsigned long long)M.gen, path,
              (const char *)evbuffer_pullup(c->acc, -1), err, M.reloads);
    free(err);
    free(path);
}

static void clis_on_status(const struct worker *w, uint64_t query, const char *json, size_t len)
{
    if (len < 2 || json[0] != '{' || json[len - 1] != '}')
        return;
    for (struct cli *c = M.clis; c != NULL; c = c->next) {
        if (c->kind != CLI_STATUS || c->want != query)
            continue;
        /* the worker's {"pid":..} with its slot added in front */
        evbuffer_add_printf(c->acc, "%s{\"slot\":%d,%.*s", evbuffer_get_length(c->acc) ? "," : "",
                            w->slot, (int)(len - 1), json + 1);
        if (--c->waiting == 0)
            status_finish(c);
        return;
    }
}

static void clis_on_gen(uint64_t gen)
{
    struct cli *c = M.clis;
    while (c != NULL) {
        struct cli *next = c->next;
        if (c->kind == CLI_RELOAD && gen == c->want && --c->waiting == 0)
            cli_reply(c, "ok %llu\n", (unsigned long long)gen);
        c = next;
    }
}

static void clis_on_ws_push(uint64_t qid, uint8_t status)
{
    for (struct cli *c = M.clis; c != NULL; c = c->next) {
        if (c->kind != CLI_WS_SEND || c->want != qid)
            continue;
        const char *why = pgw_ws_push_reason(status);
        if (why == NULL)
            cli_reply(c, "ok\n");
        else
            cli_reply(c, "error\n%s\n", why);
        return;
    }
}

/* "ws-send <id> text|binary <base64>": pgw.ws.send from the CLI, asked of every worker. */
static void cli_ws_send(struct cli *c, char *args)
{
    char *id = strtok(args, " "), *op = strtok(NULL, " "), *b64 = strtok(NULL, " ");
    int binary = op != NULL && strcmp(op, "binary") == 0;
    if (b64 == NULL)
        b64 = ""; /* an empty message */
    if (id == NULL || !pgw_ws_id_valid(id, strlen(id)) || op == NULL ||
        (!binary && strcmp(op, "text") != 0)) {
        cli_reply(c, "error\nusage: ws-send <id> text|binary <base64>\n");
        return;
    }
    size_t blen = strlen(b64);
    char *payload = pgw_malloc(33 + blen);
    int n = blen % 4 == 0 ? EVP_DecodeBlock((unsigned char *)payload + 33,
                                            (const unsigned char *)b64, (int)blen)
                          : -1;
    for (size_t i = blen; n > 0 && i > 0 && b64[i - 1] == '='; i--)
        n--; /* EVP_DecodeBlock counts the padding as zero bytes */
    struct pgw_utf8 u;
    pgw_utf8_init(&u);
    if (n < 0 || (!binary && (pgw_utf8_feed(&u, (uint8_t *)payload + 33, (size_t)n) != PGW_OK ||
                              !pgw_utf8_complete(&u)))) {
        free(payload);
        cli_reply(c, "error\n%s\n", n < 0 ? "bad base64" : "a text message must be UTF-8");
        return;
    }
    memcpy(payload, id, 32);
    payload[32] = (char)(binary ? PGW_WS_OP_BINARY : PGW_WS_OP_TEXT);
    size_t workers = 0;
    for (size_t i = 0; i < M.nworkers; i++)
        workers += M.workers[i].pid != 0 && M.workers[i].ch != NULL;
    if (workers == 0) { /* nobody to ask: answered here, so that <c> is not freed inside */
        free(payload);
        cli_reply(c, "error\nunknown connection\n");
        return;
    }
    c->kind = CLI_WS_SEND;
    c->want = ws_push_seq + 1; /* the id ws_push_ask gives the query: its answers find <c> */
    uint64_t qid = ws_push_ask(NULL, 0, payload, 33 + (size_t)n);
    free(payload);
    if (qid == 0) {
        cli_reply(c, "error\ntoo many pushes in flight\n");
        return;
    }
    struct timeval tv = {WS_PUSH_EXPIRE_MS / 1000 + 1, 0};
    evtimer_add(c->timer, &tv);
}

static void on_cli_timer(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    struct cli *c = arg;
    if (c->kind == CLI_STATUS)
        status_finish(c); /* with the workers that answered */
    else if (c->kind == CLI_RELOAD)
        cli_reply(c, "ok %llu (%u worker(s) did not confirm in time)\n",
                  (unsigned long long)c->want, c->waiting);
    else if (c->kind == CLI_WS_SEND)
        cli_reply(c, "error\ntimeout\n");
    else
        cli_free(c);
}

static void cli_command(struct cli *c, char *line)
{
    if (strcmp(line, "reload") == 0) {
        char err[8192];
        uint64_t gen = reload(err, sizeof(err));
        if (gen == 0) {
            cli_reply(c, "error\n%s", err);
            return;
        }
        c->kind = CLI_RELOAD;
        c->want = gen;
        for (size_t i = 0; i < M.nworkers; i++)
            c->waiting += M.workers[i].pid != 0 && M.workers[i].ch != NULL;
        if (c->waiting == 0)
            cli_reply(c, "ok %llu\n", (unsigned long long)gen);
        return;
    }
    if (strcmp(line, "status") == 0) {
        c->kind = CLI_STATUS;
        c->want = ++M.next_query;
        c->acc = evbuffer_new();
        for (size_t i = 0; i < PGW_WORKERS_MAX; i++) {
            struct worker *w = &M.workers[i];
            if (w->pid != 0 && w->ch != NULL &&
                pgw_chan_send(w->ch, PGW_MSG_STATUS, c->want, NULL, 0, NULL, 0) == PGW_OK)
                c->waiting++;
        }
        if (c->waiting == 0)
            status_finish(c);
        return;
    }
    if (strncmp(line, "ws-send ", 8) == 0) {
        cli_ws_send(c, line + 8);
        return;
    }
    cli_reply(c, "error\nunknown command (reload, status, ws-send)\n");
}

static void on_cli_read(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(what);
    struct cli *c = arg;
    int n = evbuffer_read(c->in, fd, CLI_LINE_MAX);
    if (n <= 0 && !(n == -1 && (errno == EAGAIN || errno == EINTR))) {
        cli_free(c);
        return;
    }
    struct evbuffer_ptr eol = evbuffer_search_eol(c->in, NULL, NULL, EVBUFFER_EOL_LF);
    if (eol.pos == -1) {
        if (evbuffer_get_length(c->in) > CLI_LINE_MAX)
            cli_free(c);
        return;
    }
    size_t len = PGW_MIN((size_t)eol.pos, CLI_LINE_MAX);
    char *line = pgw_malloc(len + 1);
    evbuffer_remove(c->in, line, len);
    line[len] = '\0';
    event_del(c->rev);
    cli_command(c, line);
    free(line);
}

static void on_cli_write(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    cli_flush(arg);
}

static void on_ctl_accept(evutil_socket_t lfd, short what, void *arg)
{
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd == -1)
        return;
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1 ||
        (cred.uid != 0 && cred.uid != geteuid())) {
        pgw_log_warn("control socket: uid %d refused", (int)cred.uid);
        close(fd);
        return;
    }
    struct cli *c = pgw_calloc(1, sizeof(*c));
    c->fd = fd;
    c->in = evbuffer_new();
    c->out = evbuffer_new();
    c->rev = event_new(M.base, fd, EV_READ | EV_PERSIST, on_cli_read, c);
    c->wev = event_new(M.base, fd, EV_WRITE | EV_PERSIST, on_cli_write, c);
    c->timer = evtimer_new(M.base, on_cli_timer, c);
    c->next = M.clis;
    if (c->next)
        c->next->prev = c;
    M.clis = c;
    event_add(c->rev, NULL);
    struct timeval tv = {CLI_TIMEOUT_MS / 1000, 0};
    event_add(c->timer, &tv);
}

/* Creates the control socket, mode 0600. A socket file left by a dead master is replaced; one
 * with a live master behind it means another gateway uses this path: refuse to start. */
static int ctl_open(const char *path)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sun.sun_path)) {
        pgw_log_error("control socket path too long: %s", path);
        return PGW_ERR;
    }
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe != -1 && connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
        close(probe);
        pgw_log_error("control socket %s: another passerelle master is running", path);
        return PGW_ERR;
    }
    if (probe != -1)
        close(probe);
    unlink(path);
    char dir[108];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash != NULL && slash != dir) {
        *slash = '\0';
        mkdir(dir, 0755);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    mode_t old = umask(077);
    int ok = fd != -1 && bind(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0 && listen(fd, 16) == 0;
    umask(old);
    if (!ok) {
        pgw_log_error("control socket %s: %s", path, strerror(errno));
        if (fd != -1)
            close(fd);
        return PGW_ERR;
    }
    chmod(path, 0600);
    M.ctl_fd = fd;
    snprintf(M.ctl_path, sizeof(M.ctl_path), "%s", path);
    M.ctl_ev = event_new(M.base, fd, EV_READ | EV_PERSIST, on_ctl_accept, NULL);
    event_add(M.ctl_ev, NULL);
    return PGW_OK;
}

/* ---- Signals and stopping ---- */

static void on_kill_timer(evutil_socket_t fd, short what, void *arg)
{
    PGW_UNUSED(fd);
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    for (size_t i = 0; i < PGW_WORKERS_MAX; i++) {
        if (M.workers[i].pid != 0) {
            pgw_log_warn("worker %zu (pid %d) still running: killed", i, (int)M.workers[i].pid);
            kill(M.workers[i].pid, SIGKILL);
        }
    }
}

static void master_stop(int fast)
{
    int level = fast ? 2 : 1;
    if (M.stopping >= level)
        return; /* a second QUIT does not restart the drain */
    M.stopping = level;
    pgw_log_notice("master: %s", fast ? "stopping now" : "graceful stop: draining");
    for (size_t i = 0; i < M.nls; i++) /* workers close theirs: the ports close */
        close(M.ls[i].fd);
    M.nls = 0;
    for (size_t i = 0; i < PGW_WORKERS_MAX; i++)
        if (M.workers[i].pid != 0)
            kill(M.workers[i].pid, fast ? SIGTERM : SIGQUIT);
    uint64_t grace = STOP_KILL_GRACE_MS + (fast ? 0 : M.config->timeouts.drain);
    struct timeval tv = {(time_t)(grace / 1000), (suseconds_t)(grace % 1000) * 1000};
    event_del(M.kill_timer);
    event_add(M.kill_timer, &tv);
    if (workers_running() == 0)
        event_base_loopbreak(M.base);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    PGW_UNUSED(what);
    PGW_UNUSED(arg);
    if (sig == SIGHUP) {
        char err[8192];
        if (!M.stopping)
            reload(err, sizeof(err));
        return;
    }
    master_stop(sig != SIGQUIT);
}

/* ---- Run ---- */

/* One error-log line per line of <err>. */
static void log_error_lines(const char *err)
{
    for (const char *line = err; *line != '\0';) {
        const char *nl = strchr(line, '\n');
        int len = nl ? (int)(nl - line) : (int)strlen(line);
        pgw_log_error("%.*s", len, line);
        line += len + (nl != NULL);
    }
}

int pgw_master_run(const char *path, struct pgw_config *config, char *text, size_t text_len)
{
    signal(SIGPIPE, SIG_IGN);
    M.path = path;
    M.config = config;
    M.text = text;
    M.text_len = text_len;
    M.gen = 1;
    ssize_t n = readlink("/proc/self/exe", M.exe, sizeof(M.exe) - 1);
    if (n <= 0) {
        pgw_log_error("cannot find our own executable: %s", strerror(errno));
        return 1;
    }
    M.exe[n] = '\0';
    M.base = event_base_new();
    pgw_assert(M.base != NULL);
    char err[8192];
    if (store_prepare(config, 1, err, sizeof(err)) != PGW_OK) {
        pgw_log_error("%s", err);
        return 1;
    }
    if (pgw_policy_validate(config, &M.bundle, &M.bundle_len, err, sizeof(err)) != PGW_OK) {
        log_error_lines(err);
        return 1;
    }
    if (pgw_genfiles_prepare(config, 1, &M.files, &M.files_len, err, sizeof(err)) != PGW_OK) {
        log_error_lines(err);
        return 1;
    }
    if (listeners_sync(config, err, sizeof(err)) != PGW_OK) {
        pgw_log_error("%s", err);
        return 1;
    }
    M.ticket_timer = evtimer_new(M.base, on_ticket_rotation, NULL);
    M.ntickets = 0;
    on_ticket_rotation(-1, 0, NULL); /* the first key; workers get it before their generation */
    if (ctl_open(config->control_socket) != PGW_OK)
        return 1;
    M.ino_fd = -1;
    policies_watch(config->policies_dir);
    M.kill_timer = evtimer_new(M.base, on_kill_timer, NULL);
    M.watchdog = evtimer_new(M.base, on_watchdog, NULL);
    on_watchdog(-1, 0, NULL);
    static const int sigs[] = {SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGCHLD};
    struct event *sev[PGW_ARRAY_LEN(sigs)];
    for (size_t i = 0; i < PGW_ARRAY_LEN(sigs); i++) {
        sev[i] = evsignal_new(M.base, sigs[i], sigs[i] == SIGCHLD ? on_sigchld : on_signal, NULL);
        evsignal_add(sev[i], NULL);
    }
    for (size_t i = 0; i < PGW_WORKERS_MAX; i++) {
        M.workers[i].slot = (int)i;
        M.workers[i].respawn = evtimer_new(M.base, on_respawn, &M.workers[i]);
    }
    pgw_log_notice("passerelle master started (pid %d), generation 1, control socket %s",
                   (int)getpid(), M.ctl_path);
    workers_resize(worker_count(config));
    event_base_dispatch(M.base);
    pgw_log_notice("passerelle stopped");
    while (M.clis != NULL)
        cli_free(M.clis);
    for (size_t i = 0; i < PGW_WORKERS_MAX; i++) {
        pgw_chan_free(M.workers[i].ch);
        event_free(M.workers[i].respawn);
    }
    for (size_t i = 0; i < PGW_ARRAY_LEN(sigs); i++)
        event_free(sev[i]);
    for (size_t i = 0; i < M.nls; i++)
        close(M.ls[i].fd);
    free(M.ls);
    event_free(M.kill_timer);
    event_free(M.watchdog);
    event_free(M.ctl_ev);
    close(M.ctl_fd);
    unlink(M.ctl_path);
    event_base_free(M.base);
    pgw_config_unref(M.config);
    free(M.text);
    free(M.bundle);
    free(M.files);
    event_free(M.ticket_timer);
    pgw_tls_cleanse(M.tickets, sizeof(M.tickets));
    free(M.last_error);
    if (M.ino_fd >= 0) {
        event_free(M.ino_ev);
        event_free(M.ino_timer);
        close(M.ino_fd);
    }
    free(M.ino_dir);
    return 0;
}
