/* store_test.c: the LMDB store: entries with expiry, exact increments across processes, the
 * sweeper, map full, a damaged fast file (recreated), a damaged durable file (refused, named),
 * stale reader slots of a killed process. */
#include "../../gateway/store.c"
#include "../support/test.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>

#define MB (1024u * 1024)

static char dir[256];

static void fresh_dir(void)
{
    char cmd[300];
    snprintf(dir, sizeof(dir), "/tmp/pgw-store-test.%d", (int)getpid());
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

static struct pgw_store *open_fresh(size_t fast_map)
{
    char err[512];
    fresh_dir();
    CHECK_INT(pgw_store_prepare(dir, 1 * MB, fast_map, 1, err, sizeof(err)), PGW_OK);
    struct pgw_store *s = pgw_store_open(dir, 1 * MB, fast_map, err, sizeof(err));
    CHECK(s != NULL);
    return s;
}

static void test_set_get_expiry(void)
{
    struct pgw_store *s = open_fresh(4 * MB);
    char buf[64];
    struct pgw_store_value v = {.kind = PGW_STORE_BYTES, .bytes = "hello", .len = 5}, out;
    CHECK_INT(pgw_store_set(s, "k", 1, &v, 2000), PGW_OK);
    CHECK_INT(pgw_store_get(s, "k", 1, 1000, buf, sizeof(buf), &out), PGW_OK);
    CHECK_MEM(out.bytes, out.len, "hello");
    CHECK_INT(pgw_store_get(s, "k", 1, 2000, buf, sizeof(buf), &out), PGW_DECLINED); /* expired */
    CHECK_INT(pgw_store_get(s, "nope", 4, 1000, buf, sizeof(buf), &out), PGW_DECLINED);
    CHECK_INT(pgw_store_get(s, "k", 1, 1000, buf, 2, &out), PGW_AGAIN);
    CHECK_INT(out.len, 5);
    struct pgw_store_value n = {.kind = PGW_STORE_NUMBER, .n = 2.5};
    CHECK_INT(pgw_store_set(s, "n", 1, &n, 0), PGW_OK);
    CHECK_INT(pgw_store_get(s, "n", 1, 1ull << 50, buf, sizeof(buf), &out), PGW_OK);
    CHECK(out.kind == PGW_STORE_NUMBER && out.n == 2.5);
    CHECK_INT(pgw_store_delete(s, "n", 1), PGW_OK);
    CHECK_INT(pgw_store_delete(s, "n", 1), PGW_OK); /* absent: fine */
    CHECK_INT(pgw_store_get(s, "n", 1, 0, buf, sizeof(buf), &out), PGW_DECLINED);
    pgw_store_close(s);
}

static void test_incr_limit_and_window(void)
{
    struct pgw_store *s = open_fresh(4 * MB);
    int64_t val = 0;
    for (int i = 1; i <= 3; i++) {
        CHECK_INT(pgw_store_incr(s, "w", 1, 1, 3, 5000, 1000, &val), PGW_OK);
        CHECK_INT(val, i);
    }
    CHECK_INT(pgw_store_incr(s, "w", 1, 1, 3, 5000, 1000, &val), PGW_DECLINED);
    CHECK_INT(val, 3); /* refused: nothing written */
    /* the window expires at 5000: a new one starts from zero with the new expiry */
    CHECK_INT(pgw_store_incr(s, "w", 1, 1, 3, 9000, 5000, &val), PGW_OK);
    CHECK_INT(val, 1);
    /* an existing window keeps its expiry even when asked for another */
    CHECK_INT(pgw_store_incr(s, "w", 1, 1, -1, 99999, 8999, &val), PGW_OK);
    CHECK_INT(val, 2);
    CHECK_INT(pgw_store_incr(s, "w", 1, 1, -1, 99999, 9000, &val), PGW_OK);
    CHECK_INT(val, 1);
    struct pgw_store_value v = {.kind = PGW_STORE_BYTES, .bytes = "x", .len = 1};
    CHECK_INT(pgw_store_set(s, "b", 1, &v, 0), PGW_OK);
    CHECK_INT(pgw_store_incr(s, "b", 1, 1, -1, 0, 0, &val), PGW_ERR);
    CHECK(strstr(pgw_store_error(s), "not a counter") != NULL);
    pgw_store_close(s);
}

/* Two processes add concurrently against a limit: exactly <limit> increments succeed. */
static void test_exact_across_processes(void)
{
    struct pgw_store *s = open_fresh(4 * MB);
    pgw_store_close(s);
    enum { PROCS = 4, TRIES = 3000, LIMIT = 5000 };
    int fds[PROCS][2];
    pid_t pids[PROCS];
    for (int p = 0; p < PROCS; p++) {
        CHECK(pipe(fds[p]) == 0);
        pids[p] = fork();
        if (pids[p] == 0) {
            char err[256];
            struct pgw_store *c = pgw_store_open(dir, 1 * MB, 4 * MB, err, sizeof(err));
            int ok = 0;
            int64_t v;
            for (int i = 0; c != NULL && i < TRIES; i++)
                ok += pgw_store_incr(c, "lim", 3, 1, LIMIT, 0, 0, &v) == PGW_OK;
            pgw_store_close(c);
            ssize_t w = write(fds[p][1], &ok, sizeof(ok));
            _exit(w == sizeof(ok) ? 0 : 1);
        }
        close(fds[p][1]);
    }
    int total = 0;
    for (int p = 0; p < PROCS; p++) {
        int ok = 0, st = 0;
        CHECK(read(fds[p][0], &ok, sizeof(ok)) == sizeof(ok));
        close(fds[p][0]);
        waitpid(pids[p], &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        total += ok;
    }
    CHECK_INT(total, LIMIT);
    char err[256];
    s = pgw_store_open(dir, 1 * MB, 4 * MB, err, sizeof(err));
    int64_t v = 0;
    CHECK_INT(pgw_store_incr(s, "lim", 3, 0, -1, 0, 0, &v), PGW_OK);
    CHECK_INT(v, LIMIT);
    pgw_store_close(s);
}

static void test_fixed_window_and_clock_steps(void)
{
    struct pgw_store *s = open_fresh(4 * MB);
    struct pgw_store_limit o;
    /* window [60000, 120000), limit 3 */
    for (int i = 1; i <= 3; i++) {
        CHECK_INT(pgw_store_fixed(s, "f", 1, 60000, 120000, 3, 1, 61000, &o), PGW_OK);
        CHECK(o.allowed);
        CHECK_INT(o.count, i);
        CHECK_INT(o.remaining, 3 - i);
        CHECK_INT(o.reset_ms, 120000);
    }
    CHECK_INT(pgw_store_fixed(s, "f", 1, 60000, 120000, 3, 1, 62000, &o), PGW_OK);
    CHECK(!o.allowed);
    CHECK_INT(o.remaining, 0);
    CHECK_INT(o.retry_ms, 58000);
    /* the clock steps back into the previous window: still the stored window, still full */
    CHECK_INT(pgw_store_fixed(s, "f", 1, 0, 60000, 3, 1, 59000, &o), PGW_OK);
    CHECK(!o.allowed);
    CHECK_INT(o.reset_ms, 120000);
    /* the next window starts from zero */
    CHECK_INT(pgw_store_fixed(s, "f", 1, 120000, 180000, 3, 1, 120001, &o), PGW_OK);
    CHECK(o.allowed);
    CHECK_INT(o.count, 1);
    /* a clock step forward by several windows is one new window, not a burst of them */
    CHECK_INT(pgw_store_fixed(s, "f", 1, 600000, 660000, 3, 3, 600000, &o), PGW_OK);
    CHECK(o.allowed && o.count == 3);
    CHECK_INT(pgw_store_fixed(s, "f", 1, 600000, 660000, 3, 1, 600000, &o), PGW_OK);
    CHECK(!o.allowed);
    pgw_store_close(s);
}

static void test_gcra(void)
{
    struct pgw_store *s = open_fresh(4 * MB);
    struct pgw_store_limit o;
    /* 10 per second (period 100 ms), burst 2: three at once, then one per 100 ms */
    uint64_t t = 1000000;
    for (int i = 0; i < 3; i++) {
        CHECK_INT(pgw_store_gcra(s, "g", 1, 100000, 2, t, &o), PGW_OK);
        CHECK(o.allowed);
        CHECK_INT(o.remaining, 2 - i);
    }
    CHECK_INT(pgw_store_gcra(s, "g", 1, 100000, 2, t, &o), PGW_OK);
    CHECK(!o.allowed);
    CHECK_INT(o.retry_ms, 100);
    CHECK_INT(pgw_store_gcra(s, "g", 1, 100000, 2, t + 99, &o), PGW_OK);
    CHECK(!o.allowed);
    CHECK_INT(pgw_store_gcra(s, "g", 1, 100000, 2, t + 100, &o), PGW_OK);
    CHECK(o.allowed);
    /* the clock steps back one second: no extra admissions */
    CHECK_INT(pgw_store_gcra(s, "g", 1, 100000, 2, t - 1000, &o), PGW_OK);
    CHECK(!o.allowed);
    /* long idle: a full bucket again */
    CHECK_INT(pgw_store_gcra(s, "g", 1, 100000, 2, t + 10000, &o), PGW_OK);
    CHECK(o.allowed);
    CHECK_INT(o.remaining, 2);
    /* exact over 10 simulated seconds at a steady stream: 3 + 100 admissions */
    int ok = 0;
    for (uint64_t ms = 0; ms < 10000; ms += 5) {
        CHECK_INT(pgw_store_gcra(s, "h", 1, 100000, 2, t + ms, &o), PGW_OK);
        ok += o.allowed;
    }
    CHECK_INT(ok, 3 + 99);
    pgw_store_close(s);
}

static void test_sweep(void)
{
    struct pgw_store *s = open_fresh(4 * MB);
    struct pgw_store_value v = {.kind = PGW_STORE_BYTES, .bytes = "v", .len = 1};
    char key[16];
    for (int i = 0; i < 100; i++) {
        int n = snprintf(key, sizeof(key), "k%03d", i);
        CHECK_INT(pgw_store_set(s, key, (size_t)n, &v, i % 2 ? 0 : 500), PGW_OK);
    }
    size_t total = 0, n;
    int rounds = 0;
    while ((n = pgw_store_sweep(s, 1000, 7)) > 0 || rounds == 0) {
        CHECK(n <= 7);
        total += n;
        if (++rounds > 100)
            break;
    }
    total += pgw_store_sweep(s, 1000, 7); /* after wrapping around */
    CHECK_INT(total, 50);
    char buf[8];
    struct pgw_store_value out;
    CHECK_INT(pgw_store_get(s, "k001", 4, 1000, buf, sizeof(buf), &out), PGW_OK);
    pgw_store_close(s);
}

static void test_map_full(void)
{
    struct pgw_store *s = open_fresh(256 * 1024);
    char val[4000];
    memset(val, 'x', sizeof(val));
    struct pgw_store_value v = {.kind = PGW_STORE_BYTES, .bytes = val, .len = sizeof(val)};
    int r = PGW_OK;
    char key[16];
    for (int i = 0; i < 1000 && r == PGW_OK; i++) {
        int n = snprintf(key, sizeof(key), "big%d", i);
        r = pgw_store_set(s, key, (size_t)n, &v, 0);
    }
    CHECK_INT(r, PGW_ERR);
    CHECK(pgw_store_full(s));
    CHECK(strstr(pgw_store_error(s), "map full") != NULL);
    CHECK(strstr(pgw_store_error(s), "fast.mdb") != NULL);
    /* reads and deletes still work */
    char buf[8];
    struct pgw_store_value out;
    CHECK_INT(pgw_store_get(s, "big0", 4, 0, buf, sizeof(buf), &out), PGW_AGAIN);
    CHECK_INT(pgw_store_delete(s, "big0", 4), PGW_OK);
    pgw_store_close(s);
}

static void write_garbage(const char *name)
{
    char path[400], junk[8192];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    memset(junk, 0x5a, sizeof(junk));
    CHECK(write(fd, junk, sizeof(junk)) == (ssize_t)sizeof(junk));
    close(fd);
}

static void test_damaged_fast_is_recreated(void)
{
    struct pgw_store *s = open_fresh(4 * MB);
    pgw_store_close(s);
    write_garbage("fast.mdb");
    char err[512];
    CHECK_INT(pgw_store_prepare(dir, 1 * MB, 4 * MB, 1, err, sizeof(err)), PGW_OK);
    s = pgw_store_open(dir, 1 * MB, 4 * MB, err, sizeof(err));
    CHECK(s != NULL);
    int64_t v;
    CHECK_INT(pgw_store_incr(s, "c", 1, 1, -1, 0, 0, &v), PGW_OK);
    CHECK_INT(v, 1);
    pgw_store_close(s);
}

/* Outside the master's start (a reload, the CLI: workers may have the file open) a damaged fast
 * file is an error, never deleted. */
static void test_damaged_fast_is_kept_without_repair(void)
{
    struct pgw_store *s = open_fresh(4 * MB);
    pgw_store_close(s);
    write_garbage("fast.mdb");
    char err[512];
    CHECK_INT(pgw_store_prepare(dir, 1 * MB, 4 * MB, 0, err, sizeof(err)), PGW_ERR);
    CHECK(strstr(err, "fast.mdb") != NULL);
    char path[400];
    snprintf(path, sizeof(path), "%s/fast.mdb", dir);
    struct stat st;
    CHECK(stat(path, &st) == 0 && st.st_size == 8192); /* still the damaged file */
}

static void test_damaged_durable_is_refused(void)
{
    struct pgw_store *s = open_fresh(4 * MB);
    pgw_store_close(s);
    write_garbage("durable.mdb");
    char err[512];
    CHECK_INT(pgw_store_prepare(dir, 1 * MB, 4 * MB, 1, err, sizeof(err)), PGW_ERR);
    CHECK(strstr(err, "durable.mdb") != NULL);
}

/* A process killed inside a read transaction leaves a reader slot that is cleared. (Another
 * process keeps the environment open meanwhile, as the other workers do: the last process to
 * leave an environment takes its reader table with it.) */
static void test_stale_readers(void)
{
    struct pgw_store *s = open_fresh(4 * MB);
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        char err[256];
        struct pgw_store *c = pgw_store_open(dir, 1 * MB, 4 * MB, err, sizeof(err));
        MDB_txn *txn;
        if (c == NULL || mdb_txn_begin(c->fast.env, NULL, MDB_RDONLY, &txn) != 0)
            _exit(1);
        ssize_t w = write(ready[1], "x", 1);
        (void)w;
        pause(); /* killed while it holds the reader slot */
        _exit(0);
    }
    char x;
    CHECK(read(ready[0], &x, 1) == 1);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    CHECK_INT(pgw_store_reader_check(s), 1);
    CHECK_INT(pgw_store_reader_check(s), 0);
    pgw_store_close(s);
    close(ready[0]);
    close(ready[1]);
}

int main(void)
{
    RUN(test_set_get_expiry);
    RUN(test_incr_limit_and_window);
    RUN(test_exact_across_processes);
    RUN(test_fixed_window_and_clock_steps);
    RUN(test_gcra);
    RUN(test_sweep);
    RUN(test_map_full);
    RUN(test_damaged_fast_is_recreated);
    RUN(test_damaged_fast_is_kept_without_repair);
    RUN(test_damaged_durable_is_refused);
    RUN(test_stale_readers);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        return 1;
    return TEST_REPORT("store");
}
