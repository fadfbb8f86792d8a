/* cli_keys.h: the store's command-line verbs (`passerelle keys ...`, `passerelle consumers ...`).
 */
#ifndef PGW_CLI_KEYS_H
#define PGW_CLI_KEYS_H

/* <what> is "keys" or "consumers"; argv[1] is the verb, then its arguments and -c FILE.
 * Returns the process exit status. */
int pgw_cli_store(const char *what, int argc, char **argv);

#endif
