/* genfiles.h: the files of a generation. Certificates, private keys, CA files and JWT keys are read
 * by the master only, when it validates a configuration; their bytes travel to the workers inside
 * the generation message, so a worker never reads a file that changed after validation, and
 * what a worker builds (TLS contexts, JWT keys) is what the master checked.
 *
 * The blob is "u32 path length, path, u32 data length, data" repeated (host byte order: it only
 * crosses a socketpair to our own children).
 */
#ifndef PGW_GENFILES_H
#define PGW_GENFILES_H

#include "pgw.h"
#include "config.h"

/* Master: reads every file <c> names into a heap blob (the caller frees it), then validates what
 * is built from them (pgw_tls_check, pgw_jwt_check). PGW_ERR with one "where: reason" line per
 * problem in <err>. Warnings (an expired certificate, verification off) are logged when <warn>
 * is set. */
int pgw_genfiles_prepare(const struct pgw_config *c, int warn, char **blob, size_t *len, char *err,
                         size_t errlen);

/* The bytes of <path> in <blob>: PGW_OK with *data (pointing into the blob) and *dlen, PGW_ERR
 * when it is not there, or PGW_DECLINED when the master could not read it (already reported:
 * the caller adds no error of its own). */
int pgw_genfiles_find(const char *blob, size_t len, const char *path, const char **data,
                      size_t *dlen);

#endif
