/* io.h: one non-blocking socket with its buffers, events, deadlines and transport. Used by both
 * sides of the proxy (client connections in server.c, upstream connections in proxy.c).
 *
 * Design (chosen by measurement against bufferevents, see docs/architecture.md): the socket is
 * driven by plain events; reads go straight into reserved evbuffer space with one readv (no
 * FIONREAD ioctl, no 4 KiB cap as with evbuffer_read); writes happen at once with writev and
 * write interest is armed only when the kernel says EAGAIN. Deadlines are kept as numbers and the
 * single timer event is re-armed lazily: pushing a deadline later (every keep-alive request does)
 * costs nothing until the timer fires and finds the deadline moved.
 *
 * The transport interface (plain TCP now, TLS later) sits under pgw_io_read/pgw_io_flush.
 * A pgw_io owns its socket, its three events and its two evbuffers.
 */
#ifndef PGW_IO_H
#define PGW_IO_H

#include "pgw.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <sys/types.h>

struct pgw_io;

struct pgw_transport {
    const char *name;
    /* Reads into <io->in> at most <max> bytes: bytes read (> 0), 0 at EOF, PGW_AGAIN, PGW_ERR
     * (io->err_no set). */
    ssize_t (*read)(struct pgw_io *io, size_t max);
    /* Writes from <io->out>: bytes written (>= 0), PGW_AGAIN when nothing could be written,
     * PGW_ERR (io->err_no set). */
    ssize_t (*write)(struct pgw_io *io);
};

extern const struct pgw_transport pgw_transport_plain;

struct pgw_io {
    evutil_socket_t fd;
    struct event *rev, *wev, *tev; /* read, write (armed on EAGAIN only), deadline timer */
    struct evbuffer *in, *out;
    const struct pgw_transport *tr;
    uint64_t read_deadline;  /* coarse ms (pgw_now_ms), 0 = none */
    uint64_t write_deadline; /* armed while output is pending */
    uint64_t timer_at;       /* when the timer event is due, 0 = not pending */
    unsigned reading : 1;    /* rev is added */
    unsigned writing : 1;    /* wev is added */
    int err_no;
};

/* Sets up <io> for <fd> (non-blocking already) with callbacks for read, write and timer events,
 * all receiving <arg>. Does not start reading: call pgw_io_want_read(). */
void pgw_io_init(struct pgw_io *io, struct event_base *base, evutil_socket_t fd,
                 event_callback_fn on_read, event_callback_fn on_write, event_callback_fn on_timer,
                 void *arg);
/* Frees the events and buffers and closes the socket. Safe on a zeroed or cleared io. */
void pgw_io_clear(struct pgw_io *io);

/* Reads once (at most <max> bytes) into io->in: bytes, 0 at EOF, PGW_AGAIN or PGW_ERR. */
ssize_t pgw_io_read(struct pgw_io *io, size_t max);
/* Writes as much of io->out as the socket takes. Returns PGW_OK when io->out is empty (write
 * interest and write deadline dropped), PGW_AGAIN when bytes remain (write interest armed,
 * write deadline kept at <send_timeout_ms> after the last progress), PGW_ERR on a socket error. */
int pgw_io_flush(struct pgw_io *io, uint64_t send_timeout_ms);

void pgw_io_want_read(struct pgw_io *io, int on);
void pgw_io_want_write(struct pgw_io *io, int on);

/* Sets the read deadline to <ms> from now (0 removes it) and re-arms the timer if needed. */
void pgw_io_read_timeout(struct pgw_io *io, uint64_t ms);
/* Re-arms the timer for the earliest deadline (call from a timer callback that found no
 * deadline expired, or after changing deadlines directly). */
void pgw_io_timer_sync(struct pgw_io *io);
/* Called first in a timer callback: marks the timer as fired. Returns which deadlines expired:
 * bit 1 read, bit 2 write. */
int pgw_io_timer_fired(struct pgw_io *io);

#define PGW_IO_READ_EXPIRED 1
#define PGW_IO_WRITE_EXPIRED 2

#endif
