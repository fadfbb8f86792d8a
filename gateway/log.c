/* log.c: the error and access logs (see log.h). */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum pgw_log_level pgw_log_level_min = PGW_LOG_INFO;

static int error_fd = 2;
static int access_fd = -1;
static char access_buf[64 * 1024];
static size_t access_len;
static int access_at_once; /* access_log: { flush: 0 }: each line written as it is committed */

static const char *const level_names[] = {"debug", "info", "notice", "warn", "error"};

uint64_t pgw_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t pgw_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

size_t pgw_log_time(char *buf)
{
    /* The formatted second is cached: strftime and gmtime_r are not free. */
    static time_t cached_sec = -1;
    static char cached[24];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (tv.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        strftime(cached, sizeof(cached), "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = tv.tv_sec;
    }
    memcpy(buf, cached, 19);
    buf[19] = '.';
    unsigned ms = (unsigned)(tv.tv_usec / 1000);
    buf[20] = (char)('0' + ms / 100);
    buf[21] = (char)('0' + ms / 10 % 10);
    buf[22] = (char)('0' + ms % 10);
    buf[23] = 'Z';
    buf[24] = '\0';
    return 24;
}

static int make_parent_dirs(const char *path)
{
    char tmp[4096];
    size_t n = strlen(path);
    if (n >= sizeof(tmp))
        return PGW_ERR;
    memcpy(tmp, path, n + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) == -1 && errno != EEXIST)
            return PGW_ERR;
        *p = '/';
    }
    return PGW_OK;
}

static int open_log(const char *path, int std_fd)
{
    /* "-" is the log's natural stream: stdout for the access log, stderr for the error log. */
    if (path == NULL || strcmp(path, "-") == 0)
        return std_fd;
    if (strcmp(path, "stderr") == 0)
        return 2;
    if (strcmp(path, "stdout") == 0)
        return 1;
    if (make_parent_dirs(path) != PGW_OK) {
        fprintf(stderr, "passerelle: cannot create the directory of %s: %s\n", path,
                strerror(errno));
        return -1;
    }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd == -1)
        fprintf(stderr, "passerelle: cannot open %s: %s\n", path, strerror(errno));
    return fd;
}

static void close_log(int fd)
{
    if (fd > 2)
        close(fd);
}

int pgw_log_open(const struct pgw_config *config)
{
    int efd = open_log(config->error_log.path, 2);
    if (efd == -1)
        return PGW_ERR;
    int afd = -1;
    if (config->access_log.enabled) {
        afd = open_log(config->access_log.path, 1);
        if (afd == -1) {
            close_log(efd);
            return PGW_ERR;
        }
    }
    pgw_access_log_flush();
    close_log(error_fd);
    close_log(access_fd);
    error_fd = efd;
    access_fd = afd;
    access_at_once = config->access_log.flush == 0;
    pgw_log_level_min = config->error_log.level;
    return PGW_OK;
}

void pgw_log_close(void)
{
    pgw_access_log_flush();
    close_log(access_fd);
    access_fd = -1;
    close_log(error_fd);
    error_fd = 2;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w == -1) {
            if (errno == EINTR)
                continue;
            return; /* a full disk must not stop the gateway; nothing better to do here */
        }
        p += w;
        n -= (size_t)w;
    }
}

void pgw_log_v(enum pgw_log_level level, const char *fmt, va_list ap)
{
    if (level < pgw_log_level_min)
        return;
    char line[2048];
    size_t n = pgw_log_time(line);
    n += (size_t)snprintf(line + n, sizeof(line) - n, " [%s] ", level_names[level]);
    int m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    if (m < 0)
        m = 0;
    n += PGW_MIN((size_t)m, sizeof(line) - n - 2);
    line[n++] = '\n';
    write_all(error_fd, line, n);
}

void pgw_log(enum pgw_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pgw_log_v(level, fmt, ap);
    va_end(ap);
}

void pgw_log_limited(struct pgw_log_ratelimit *site, uint64_t interval_ms, enum pgw_log_level level,
                     const char *fmt, ...)
{
    uint64_t now = pgw_now_ms();
    if (site->last_ms != 0 && now - site->last_ms < interval_ms) {
        site->suppressed++;
        return;
    }
    if (site->suppressed > 0)
        pgw_log(level, "(%u similar messages suppressed)", site->suppressed);
    site->suppressed = 0;
    site->last_ms = now ? now : 1;
    va_list ap;
    va_start(ap, fmt);
    pgw_log_v(level, fmt, ap);
    va_end(ap);
}

int pgw_access_log_enabled(void) { return access_fd != -1; }

char *pgw_access_log_reserve(size_t max)
{
    pgw_assert(max <= sizeof(access_buf));
    if (sizeof(access_buf) - access_len < max)
        pgw_access_log_flush();
    return access_buf + access_len;
}

void pgw_access_log_commit(size_t len)
{
    pgw_assert(access_len + len <= sizeof(access_buf));
    access_len += len;
    if (access_at_once)
        pgw_access_log_flush();
}

void pgw_access_log_flush(void)
{
    if (access_len > 0 && access_fd != -1)
        write_all(access_fd, access_buf, access_len);
    access_len = 0;
}

size_t pgw_json_escape(char *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            /* Request data is not known to be UTF-8: escape bytes, never emit invalid JSON. */
            memcpy(o, "\\u00", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
            o += 6;
        } else {
            *o++ = (char)c;
        }
    }
    return (size_t)(o - out);
}
