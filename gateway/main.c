/* main.c: the command line. `passerelle -c FILE` runs the gateway, `passerelle check -c FILE`
 * validates a configuration and exits non-zero with every error (FILE:LINE: message) on stderr.
 * Everything else lives in server.c (the worker) and config.c (the snapshot).
 */
#include "config.h"
#include "log.h"
#include "server.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#define PGW_VERSION "0.1.0"
#define DEFAULT_CONFIG "passerelle.yaml"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: passerelle [-c FILE]            run the gateway (default %s)\n"
            "       passerelle check [-c FILE]      validate the configuration and exit\n"
            "       passerelle version              print the version\n"
            "options:\n"
            "  -c, --config FILE   the YAML configuration file\n"
            "  -h, --help          this text\n",
            DEFAULT_CONFIG);
}

/* Loads <path>, printing every error. Returns the snapshot or NULL. */
static struct pgw_config *load(const char *path)
{
    char err[8192];
    err[0] = '\0';
    struct pgw_config *c = pgw_config_load(path, err, sizeof(err));
    if (c == NULL)
        fprintf(stderr, "%s%sconfiguration %s is invalid\n", err,
                (err[0] && err[strlen(err) - 1] != '\n') ? "\n" : "", path);
    return c;
}

static int cmd_check(const char *path)
{
    struct pgw_config *c = load(path);
    if (c == NULL)
        return 1;
    printf("configuration %s is valid: %zu listener(s), %zu upstream(s), %zu route(s)\n", path,
           c->num_listeners, c->num_upstreams, c->num_routes);
    pgw_config_unref(c);
    return 0;
}

static int cmd_run(const char *path)
{
    struct pgw_config *c = load(path);
    if (c == NULL)
        return 1;
    if (pgw_log_open(c) != PGW_OK) {
        pgw_config_unref(c);
        return 1;
    }
    int status = pgw_server_run(c);
    pgw_config_unref(c);
    pgw_log_close();
    return status;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "run";
    if (argc > 1 && argv[1][0] != '-') {
        cmd = argv[1];
        argv++;
        argc--;
    }
    const char *path = DEFAULT_CONFIG;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            path = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "passerelle: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (strcmp(cmd, "run") == 0)
        return cmd_run(path);
    if (strcmp(cmd, "check") == 0)
        return cmd_check(path);
    if (strcmp(cmd, "version") == 0) {
        printf("passerelle %s\n", PGW_VERSION);
        return 0;
    }
    fprintf(stderr, "passerelle: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
