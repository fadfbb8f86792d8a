/* master.h: the master process (see master.c): configuration, listening sockets, generations,
 * workers, the control socket. */
#ifndef PGW_MASTER_H
#define PGW_MASTER_H

#include "config.h"

#include <stddef.h>

/* The descriptor a worker finds its channel to the master on (set up between fork and exec). */
#define PGW_WORKER_CHAN_FD 3

/* Runs the master for the configuration file <path>, already loaded into <config> from <text>
 * (both owned by the master from now on). Returns the exit status once every worker stopped. */
int pgw_master_run(const char *path, struct pgw_config *config, char *text, size_t text_len);

#endif
