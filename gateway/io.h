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
 * The transport interface (plain TCP, or TLS from tls.c) sits under pgw_io_read/pgw_io_flush.
 * A transport may need the other direction to make progress (a TLS read that must write, a TLS
 * write that must read): it sets tr_wants_write / tr_wants_read, the io arms that event too, and
 * when it fires the blocked side's callback runs instead. The user's callbacks never see this.
 * A pgw_io owns its socket, its three events, its two evbuffers and its transport state (<tls>).
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
    /* Whether bytes are buffered inside the transport (not visible to epoll); NULL: never. */
    int (*has_pending)(const struct pgw_io *io);
    /* Ends the transport's state before the socket closes (TLS: close_notify when the session is
     * clean, then frees it); NULL: nothing to do. */
    void (*close)(struct pgw_io *io);
};

extern const struct pgw_transport pgw_transport_plain;

struct pgw_io {
    evutil_socket_t fd;
    struct event *rev, *wev, *tev; /* read, write (armed on EAGAIN only), deadline timer */
    struct evbuffer *in, *out;
    const struct pgw_transport *tr;
    void *tls;               /* the transport's state (tls.c: an SSL *), owned */
    event_callback_fn on_read, on_write; /* the user's callbacks, called by the io's own */
    void *arg;
    uint64_t read_deadline;  /* coarse ms (pgw_now_ms), 0 = none */
    uint64_t write_deadline; /* armed while output is pending */
    uint64_t timer_at;       /* when the timer event is due, 0 = not pending */
    unsigned reading : 1;    /* the user wants read events */
    unsigned writing : 1;    /* the user wants write events */
    unsigned rev_added : 1;  /* rev is added: reading || tr_wants_read */
    unsigned wev_added : 1;  /* wev is added: writing || tr_wants_write */
    unsigned tr_wants_read : 1;  /* the transport's write waits for readability */
    unsigned tr_wants_write : 1; /* the transport's read waits for writability */
    unsigned truncated : 1;  /* the peer closed without ending the transport properly (TLS) */
    int err_no;
};

/* Sets up <io> for <fd> (non-blocking already) with callbacks for read, write and timer events,
 * all receiving <arg>. Does not start reading: call pgw_io_want_read(). */
void pgw_io_init(struct pgw_io *io, struct event_base *base, evutil_socket_t fd,
                 event_callback_fn on_read, event_callback_fn on_write, event_callback_fn on_timer,
                 void *arg);
/* Gives <io> other callbacks and argument (a connection changing owner); deadlines are kept. */
void pgw_io_rebind(struct pgw_io *io, event_callback_fn on_read, event_callback_fn on_write,
                   event_callback_fn on_timer, void *arg);
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
/* Runs the read callback soon if the transport holds bytes that epoll cannot see (after a TLS
 * handshake, which may have read the first request with it). */
void pgw_io_kick(struct pgw_io *io);
/* Adds or removes rev/wev to match what the user and the transport want (transports call it
 * after changing tr_wants_*). */
void pgw_io_sync_events(struct pgw_io *io);

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
