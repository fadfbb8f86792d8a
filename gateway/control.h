/* control.h: the channel between the master and one worker: a non-blocking AF_UNIX stream
 * socketpair carrying framed messages, with file descriptors (listening sockets) passed along
 * with SCM_RIGHTS. Each side owns one end wrapped in a pgw_chan; a pgw_chan owns its socket, its
 * events, its buffers and any descriptor received but not yet handed to the callback.
 *
 * Frame: a 24-byte header {magic, type, arg (u64), payload length, number of fds} then the payload;
 * the descriptors travel with the first byte of their header, so the receiver always has them when
 * the header is complete. Bounds: PGW_CHAN_PAYLOAD_MAX bytes, PGW_CHAN_FDS_MAX descriptors; a
 * frame beyond them (or a bad magic) is a protocol error that closes the channel.
 */
#ifndef PGW_CONTROL_H
#define PGW_CONTROL_H

#include "pgw.h"

#include <event2/event.h>
#include <stdint.h>

#define PGW_CHAN_PAYLOAD_MAX (32u * 1024 * 1024)
#define PGW_CHAN_FDS_MAX 250

enum pgw_msg_type {
    PGW_MSG_GEN = 1,      /* master -> worker: arg = generation number, payload = "<config file
                             name>\0<YAML>...", see master.c send_gen(); fds = listening
                             sockets in config order */
    PGW_MSG_GEN_OK,       /* worker -> master: arg = the generation now active */
    PGW_MSG_GEN_ERR,      /* worker -> master: arg = generation refused, payload = why */
    PGW_MSG_STATUS,       /* master -> worker: arg = query id */
    PGW_MSG_STATUS_REPLY, /* worker -> master: arg = query id, payload = a JSON object */
    PGW_MSG_PING,         /* master -> worker: arg = sequence number (the watchdog) */
    PGW_MSG_PONG,         /* worker -> master: arg = the sequence number, answered at once */
    PGW_MSG_TICKETS,      /* master -> worker: payload = TLS session-ticket keys, current first
                             (PGW_TLS_TICKET_KEY_LEN bytes each) */
    PGW_MSG_WS_PUSH,      /* pgw.ws.send to a connection another worker may hold: worker ->
                             master, then master -> every other worker; arg = the sender's query
                             id, payload = connection id (32) + opcode (1) + the message */
    PGW_MSG_WS_PUSH_REPLY, /* the answer, the other way: arg = that query id, payload = one
                              PGW_WS_PUSH_* byte */
};

/* Answers of PGW_MSG_WS_PUSH_REPLY. */
enum { PGW_WS_PUSH_SENT = 0, PGW_WS_PUSH_UNKNOWN, PGW_WS_PUSH_CLOSED, PGW_WS_PUSH_FULL };

struct pgw_msg {
    uint32_t type;
    uint64_t arg;
    const char *payload; /* valid during the callback only */
    size_t len;
    int *fds;            /* the callback owns them: it keeps or closes every one */
    size_t nfds;
};

struct pgw_chan;

/* Called once per complete message, or with <m> NULL when the channel closed or broke (the
 * callback may free the channel then; nothing else touches it afterwards). */
typedef void (*pgw_chan_cb)(struct pgw_chan *ch, const struct pgw_msg *m, void *arg);

/* Wraps <fd> (made non-blocking; owned from now on) and starts reading. */
struct pgw_chan *pgw_chan_new(struct event_base *base, int fd, pgw_chan_cb cb, void *arg);
/* Closes the socket, frees buffers, closes descriptors not yet delivered. */
void pgw_chan_free(struct pgw_chan *ch);

/* Queues a message; sends what the socket takes now and the rest when it is writable. <fds> are
 * duplicated by the kernel when the frame leaves: the caller keeps ownership of its own. Returns
 * PGW_OK, or PGW_ERR when the channel is already broken or the frame is over the bounds. */
int pgw_chan_send(struct pgw_chan *ch, uint32_t type, uint64_t arg, const void *payload,
                  size_t len, const int *fds, size_t nfds);

/* Bytes queued and not yet sent. */
size_t pgw_chan_queued(const struct pgw_chan *ch);

#endif
