/* proxy.h: upstream groups and the upstream side of a request: target selection (round robin
 * with passive health), non-blocking DNS with TTL, per-worker keep-alive pools, connect, request
 * forwarding with backpressure, strict response parsing and relaying, retries.
 *
 * Ownership: a pgw_upstream (one per configured group and generation) owns its targets and their
 * idle connections. A request leases one connection at a time through its pgw_proxy (allocated in
 * the request's pool); the pool cleanup gives the connection back to the idle list when it is
 * reusable (whole response read, nothing extra, keep-alive allowed) or closes it.
 */
#ifndef PGW_PROXY_H
#define PGW_PROXY_H

#include "server.h"

struct pgw_upstream *pgw_upstream_new(const struct pgw_config_upstream *conf);
/* Called for a new generation: when <old> (same name) has the same targets, <up> takes over its
 * idle keep-alive connections, resolved addresses and passive-health state, so that a reload
 * does not cost every upstream a round of new connections. Leased connections stay with <old>
 * and close when they come back. */
void pgw_upstream_adopt(struct pgw_upstream *up, struct pgw_upstream *old);
/* Closes idle connections and frees. Leased connections must have been released. */
void pgw_upstream_free(struct pgw_upstream *up);

/* Starts proxying <req> to its route's upstream. The exchange then runs from events and ends
 * with pgw_req_send_end(), pgw_req_respond_error() or pgw_req_abort(). */
void pgw_proxy_start(struct pgw_req *req);
/* The client sent more request body (or the client buffer has room again). */
void pgw_proxy_on_client_data(struct pgw_req *req);
/* The client output drained: resume reading the upstream. */
void pgw_proxy_on_client_drain(struct pgw_req *req);

#endif
