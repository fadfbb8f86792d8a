/* wsproxy.h: WebSocket proxying (docs/websocket.md): the handshake checks on both sides and the
 * tunnel that relays frames between a client connection and an upstream connection after a 101,
 * parsing them both ways with ws.c and running the ws_* policy stages per message.
 *
 * Ownership: a tunnel belongs to its client connection (c->ws, freed by conn_free or when the
 * tunnel ends); it owns the upstream connection it took over from the proxy (freed with it), its
 * Lua task (which owns the connection's pgw.ctx table) and the messages being assembled. The
 * connection keeps its generation while the tunnel is open, so the route, its limits and its
 * policy set stay those the WebSocket started with.
 */
#ifndef PGW_WSPROXY_H
#define PGW_WSPROXY_H

#include "pgw.h"

#include <event2/event.h>

struct pgw_req;
struct pgw_conn;
struct pgw_out;
struct pgw_http_response;
struct pgw_task;
struct pgw_ws_tunnel;
struct pgw_upstream_conn;
struct pgw_io;

/* request.c, after routing: checks a WebSocket handshake on a WebSocket route and sets
 * req->ws_handshake, or answers an invalid one (400, 426, 403). Returns 1 to go on, 0 when the
 * request was answered. Requests that are no handshake go on untouched. */
int pgw_ws_handshake_check(struct pgw_req *req);

/* proxy.c: the fields a handshake adds to the request head for the upstream (Connection,
 * Upgrade; Sec-WebSocket-* pass as end-to-end fields except Extensions, which never does). */
void pgw_ws_handshake_fields(struct pgw_out *w);
/* proxy.c: whether a request field is kept out of a handshake's upstream request. */
int pgw_ws_drop_request_field(const char *name, size_t len);

/* proxy.c: the upstream answered 101 to <req>'s handshake. Returns NULL when the answer opens a
 * tunnel, else why not (static string: the request is then a 502). */
const char *pgw_ws_upgrade_check(const struct pgw_req *req, const struct pgw_http_response *resp);

/* proxy.c: opens the tunnel after a valid 101 whose head is the first <head_len> bytes of
 * up->in: writes the 101 to the client, takes <uc> (whose io is <up>; the bytes after the head
 * are the upstream's first frames) and finishes the handshake request (req is gone after). */
void pgw_ws_tunnel_open(struct pgw_req *req, const struct pgw_http_response *resp,
                        size_t head_len, struct pgw_upstream_conn *uc, struct pgw_io *up);

/* server.c: the client connection's events while it carries a tunnel. */
void pgw_ws_on_client_read(struct pgw_ws_tunnel *t);
void pgw_ws_on_client_write(struct pgw_ws_tunnel *t);
void pgw_ws_on_client_timer(struct pgw_ws_tunnel *t);
/* server.c: the connection is freed (fast stop, close_all): frees the tunnel at once. */
void pgw_ws_tunnel_free(struct pgw_ws_tunnel *t);
/* server.c: graceful stop reached its deadline: close 1001 to both sides, then close. */
void pgw_ws_tunnel_shutdown(struct pgw_ws_tunnel *t);

/* The connection's id (32 random hex digits), which names it in logs and to policies. */
const char *pgw_ws_tunnel_id(const struct pgw_ws_tunnel *t);
/* The name of the route it was opened on. */
const char *pgw_ws_tunnel_route(const struct pgw_ws_tunnel *t);
/* The client address of the handshake request (pgw.req.get_client_addr()'s value there). */
const char *pgw_ws_tunnel_client(const struct pgw_ws_tunnel *t);
/* lua_task.c: a ws_connect or ws_message run that waited has ended (PGW_OK/DONE/ERR). */
void pgw_ws_task_done(struct pgw_ws_tunnel *t, int rc);

/* lua_ws.c (pgw.ws): what the running ws_* policy asks of its tunnel. <to_client>: 1 sends to
 * the client, 0 to the upstream. <opcode>: PGW_WS_OP_TEXT or BINARY. */
void pgw_ws_tunnel_send(struct pgw_ws_tunnel *t, int to_client, unsigned opcode,
                        const char *data, size_t len);
/* pgw.ws.send: queues a message for the client of the connection <id> of this worker, sent (through
 * its outbound ws_message policies) from the event loop. Returns a PGW_WS_PUSH_* status
 * (control.h): SENT, UNKNOWN (no connection of this worker has that id), CLOSED (closing), FULL
 * (1 MiB already queued). */
int pgw_ws_push(const char *id, size_t id_len, unsigned opcode, const char *data, size_t len);
/* The reason a push status gives to users ("unknown connection", ...; "timeout" for any other
 * value), NULL for SENT. */
const char *pgw_ws_push_reason(int status);
/* Whether <id,len> has the shape of a connection id: 32 lower-case hex digits. */
int pgw_ws_id_valid(const char *id, size_t len);
/* Closes both sides with <code> and <reason> once the running policy returns. */
void pgw_ws_tunnel_close_by_policy(struct pgw_ws_tunnel *t, int code, const char *reason,
                                   size_t reason_len);

/* proxy.c: hands the upstream connection <uc> over to a tunnel: its io gets the tunnel's
 * callbacks and <arg>; the proxy forgets it. Freed by pgw_proxy_upstream_free. */
void pgw_proxy_upstream_adopt(struct pgw_upstream_conn *uc, event_callback_fn on_read,
                              event_callback_fn on_write, event_callback_fn on_timer, void *arg);
void pgw_proxy_upstream_free(struct pgw_upstream_conn *uc);
/* The upstream's "host:port" for logs. */
const char *pgw_proxy_upstream_label(const struct pgw_upstream_conn *uc);

#endif
