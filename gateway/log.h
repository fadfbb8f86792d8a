/* log.h: the error log (levels, one line per event, written at once) and the access log (JSON
 * lines, buffered and flushed by a timer the server arms, or when the buffer fills). Owns the two
 * file descriptors. Pure code: no libevent (server.c drives the flush timer).
 *
 * Error-log line: "2026-11-25T06:20:57.123Z [error] <message>\n".
 */
#ifndef PGW_LOG_H
#define PGW_LOG_H

#include "pgw.h"
#include "config.h"

#include <stdarg.h>

extern enum pgw_log_level pgw_log_level_min;

/* Opens the logs named by <config> (relative paths are taken from the current directory;
 * missing directories are created). Returns PGW_OK or PGW_ERR with a message on stderr. The
 * previous files, if any, are closed after the new ones opened. */
int pgw_log_open(const struct pgw_config *config);
void pgw_log_close(void);

void pgw_log(enum pgw_log_level level, const char *fmt, ...) PGW_PRINTF(2, 3);
void pgw_log_v(enum pgw_log_level level, const char *fmt, va_list ap);

#define pgw_log_error(...) pgw_log(PGW_LOG_ERROR, __VA_ARGS__)
#define pgw_log_warn(...) pgw_log(PGW_LOG_WARN, __VA_ARGS__)
#define pgw_log_notice(...) pgw_log(PGW_LOG_NOTICE, __VA_ARGS__)
#define pgw_log_info(...) pgw_log(PGW_LOG_INFO, __VA_ARGS__)
#define pgw_log_debug(...)                                                                         \
    do {                                                                                           \
        if (PGW_UNLIKELY(pgw_log_level_min == PGW_LOG_DEBUG))                                      \
            pgw_log(PGW_LOG_DEBUG, __VA_ARGS__);                                                   \
    } while (0)

/* A log site that may fire per request: at most one line per <interval_ms> per site; the next
 * line after a quiet period says how many were suppressed. <site> is a static counter. */
struct pgw_log_ratelimit {
    uint64_t last_ms;
    unsigned suppressed;
};
void pgw_log_limited(struct pgw_log_ratelimit *site, uint64_t interval_ms, enum pgw_log_level level,
                     const char *fmt, ...) PGW_PRINTF(4, 5);

/* Whether the access log is on. */
int pgw_access_log_enabled(void);
/* Reserves room for a line of up to <max> bytes in the access-log buffer (flushing first if
 * needed); the caller writes into it and commits the bytes written (ending with '\n'). */
char *pgw_access_log_reserve(size_t max);
void pgw_access_log_commit(size_t len);
/* Writes buffered access-log lines out. */
void pgw_access_log_flush(void);

/* Formats the current wall-clock time as "2026-11-25T06:20:57.123Z" into <buf> (at least 25
 * bytes); returns the length. */
size_t pgw_log_time(char *buf);

/* Appends <s,n> as the inside of a JSON string (escaping quotes, backslashes, control bytes and
 * bytes >= 0x80 as \u00XX) to <out>, which has room for 6 * n bytes. Returns bytes written. */
size_t pgw_json_escape(char *out, const char *s, size_t n);

/* Monotonic clocks: coarse (cheap, ~4 ms resolution) for deadlines, precise for durations. */
uint64_t pgw_now_ms(void);
uint64_t pgw_now_us(void);

#endif
