/* tls.h: TLS with OpenSSL 3: the contexts of a generation (listeners with SNI, upstream groups,
 * the pgw.http client), session-ticket keys shared by all workers, and the TLS transport of
 * pgw_io (io.h).
 *
 * Why our own transport rather than libevent's OpenSSL bufferevents: pgw_io already drives the
 * socket with plain events and evbuffers (see io.h); the TLS transport is SSL_read_ex/SSL_write_ex
 * on the non-blocking socket under the same interface, so the proxy code is the same for both and
 * no extra buffer layer or callback hop is added (docs/architecture.md has the numbers).
 *
 * Files. Certificates, keys and CA files are read by the master only, when it validates a
 * configuration (genfiles.h); their bytes travel to the workers with the generation,
 * and contexts are built from those bytes (pgw_tls_gen_new), so a worker never reads a file that
 * changed after validation. The master builds every context once itself to validate them.
 *
 * Ownership: a pgw_tls_gen owns its SSL_CTXs; an SSL made from one takes its own reference
 * (OpenSSL's refcount), so a connection outlives a reload that freed its generation's contexts.
 */
#ifndef PGW_TLS_H
#define PGW_TLS_H

#include "pgw.h"
#include "config.h"
#include "io.h"

#include <stdint.h>
#include <sys/types.h>

struct pgw_tls_gen;
typedef struct ssl_ctx_st SSL_CTX;

/* Master: validates the TLS settings of <c> by building every context from the file bytes in
 * <blob> (genfiles.h). PGW_ERR with one "where: reason" line per problem in <err>. Warnings (an
 * expired certificate, verification off) are logged when <warn> is set. */
int pgw_tls_check(const struct pgw_config *c, const char *blob, size_t len, int warn, char *err,
                  size_t errlen);

/* Builds the contexts of <c> from the file bytes in <blob>. NULL with <err> on failure. A config
 * without any TLS gives an empty (non-NULL) pgw_tls_gen. */
struct pgw_tls_gen *pgw_tls_gen_new(const struct pgw_config *c, const char *blob, size_t len,
                                    char *err, size_t errlen);
void pgw_tls_gen_free(struct pgw_tls_gen *tg);

/* The server context of listener <i> (NULL: plain listener). */
SSL_CTX *pgw_tls_listener_ctx(const struct pgw_tls_gen *tg, size_t i);
/* The client context of upstream group <i> (NULL: plain upstream). */
SSL_CTX *pgw_tls_upstream_ctx(const struct pgw_tls_gen *tg, size_t i);
/* The client context for pgw.http's https:// URLs (created on first use). */
SSL_CTX *pgw_tls_http_ctx(struct pgw_tls_gen *tg);

/* ---- Session tickets (worker) ---- */

#define PGW_TLS_TICKET_KEY_LEN 80 /* name 16, HMAC key 32, AES key 32 */
#define PGW_TLS_TICKET_KEYS_MAX 3 /* the current key first, then older ones that still decrypt */

/* Replaces the ticket keys (from PGW_MSG_TICKETS): <n> keys of PGW_TLS_TICKET_KEY_LEN bytes. */
void pgw_tls_set_ticket_keys(const unsigned char *keys, size_t n);
/* Wipes <len> bytes at <p> (key material about to be freed). */
void pgw_tls_cleanse(void *p, size_t len);
/* Master: fills <key> with a new random key. */
void pgw_tls_new_ticket_key(unsigned char key[PGW_TLS_TICKET_KEY_LEN]);

/* ---- Connections ---- */

/* Puts TLS on <io> (connected or accepted socket): server side with <ctx> a listener context, or
 * client side towards <name>, a host name (sent as SNI) or an IP address (no SNI), checked against
 * the certificate when <verify> is set. A previous session to resume may be given (<session>, not
 * consumed). */
void pgw_tls_attach_server(struct pgw_io *io, SSL_CTX *ctx);
void pgw_tls_attach_client(struct pgw_io *io, SSL_CTX *ctx, const char *name, int verify,
                           void *session);

/* The same for code that drives its own socket (pgw.http): a client SSL on <fd>, freed (with a
 * close_notify when the session is clean) by pgw_tls_free. */
void *pgw_tls_client_new(SSL_CTX *ctx, int fd, const char *name, int verify);
void pgw_tls_free(void *ssl);
/* A handshake step: PGW_OK, PGW_AGAIN (*want_write: wait for writability, else readability),
 * PGW_ERR (pgw_tls_error()). */
int pgw_tls_step(void *ssl, int *want_write);
/* Bytes read (> 0), 0 at the end (*truncated set when it had no close_notify), PGW_AGAIN,
 * PGW_ERR. */
ssize_t pgw_tls_recv(void *ssl, void *buf, size_t n, int *truncated);
/* Bytes written (one record at most), PGW_AGAIN, PGW_ERR. */
ssize_t pgw_tls_send(void *ssl, const void *buf, size_t n);
/* Whether <ssl> holds bytes already read from the socket (read again without waiting). */
int pgw_tls_pending(void *ssl);
/* A context kept beyond its generation (OpenSSL's refcount). */
SSL_CTX *pgw_tls_ctx_ref(SSL_CTX *ctx);
void pgw_tls_ctx_unref(SSL_CTX *ctx);

/* Advances the handshake: PGW_OK when done, PGW_AGAIN (read or write interest set as needed),
 * PGW_ERR (the reason is in pgw_tls_error()). */
int pgw_tls_handshake(struct pgw_io *io);

/* Sends close_notify now (before a half-close of the socket); safe to repeat. */
void pgw_tls_send_close(struct pgw_io *io);

/* Why the last TLS operation of this worker failed: OpenSSL's error queue, drained at the failure
 * into one line ("" when there was none). */
const char *pgw_tls_error(void);

/* For client connections: the session to resume next time (a new reference, or NULL);
 * pgw_tls_session_free() releases it. */
void *pgw_tls_session_get(const struct pgw_io *io);
void pgw_tls_session_free(void *session);

/* On an idle pooled connection that became readable: PGW_OK when only TLS records (session
 * tickets) arrived and the connection stays usable, PGW_ERR when the peer closed or sent data. */
int pgw_tls_idle_check(struct pgw_io *io);

/* Connection facts for logs and pgw.req.get_tls(): "" when <io> is plain. */
const char *pgw_tls_version(const struct pgw_io *io);
const char *pgw_tls_cipher(const struct pgw_io *io);
const char *pgw_tls_server_name(const struct pgw_io *io); /* NULL: none sent */
int pgw_tls_resumed(const struct pgw_io *io);

/* The client certificate of a server connection. */
enum pgw_tls_peer { PGW_TLS_PEER_NONE = 0, PGW_TLS_PEER_VERIFIED, PGW_TLS_PEER_INVALID };
enum pgw_tls_peer pgw_tls_peer_status(const struct pgw_io *io);
/* Why the peer certificate did not verify (a static string). */
const char *pgw_tls_peer_error(const struct pgw_io *io);
/* Writes the peer certificate's fields into <buf> (NUL-terminated strings one after the other:
 * subject, issuer, serial, fingerprint, not_before, not_after, verify error). Returns PGW_OK,
 * or PGW_DECLINED when there is no certificate. */
int pgw_tls_peer_fields(const struct pgw_io *io, char *buf, size_t len, const char *out[7]);

/* Whether <b> (the first byte a client sent) starts a TLS handshake record. */
#define PGW_TLS_IS_HANDSHAKE_BYTE(b) ((unsigned char)(b) == 0x16)

#endif
