/* main.c: the command line.
 *   passerelle [-c FILE]            run: the master, which starts the workers
 *   passerelle check [-c FILE]      validate a configuration, print every FILE:LINE error
 *   passerelle reload|status [-c FILE | -s SOCKET]   talk to a running master
 *   passerelle worker               internal: what the master execs for each worker
 */
#include "config.h"
#include "log.h"
#include "master.h"
#include "cli_keys.h"
#include "policy.h"
#include "genfiles.h"
#include "tls.h"
#include "server.h"
#include "yamltree.h"

#include <errno.h>
#include <getopt.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define PGW_VERSION "0.2.0"
#define DEFAULT_CONFIG "passerelle.yaml"
#define DEFAULT_SOCKET "logs/passerelle.sock"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: passerelle [-c FILE]            run the gateway (default %s)\n"
            "       passerelle check [-c FILE]      validate the configuration and exit\n"
            "       passerelle keys add|import|list|show|suspend|revoke|activate|delete ... [-c FILE]\n"
            "       passerelle consumers add|set|show|list|delete ... [-c FILE]\n"
            "       passerelle reload [-c FILE | -s SOCKET]\n"
            "                                       make the running gateway reload its file\n"
            "       passerelle status [-c FILE | -s SOCKET]\n"
            "                                       print the running gateway's state as JSON\n"
            "       passerelle ws-send ID MESSAGE [--binary] [-c FILE | -s SOCKET]\n"
            "                                       send a message to the client of WebSocket ID\n"
            "                                       (MESSAGE - reads it from standard input)\n"
            "       passerelle version              print the version\n"
            "options:\n"
            "  -c, --config FILE   the YAML configuration file\n"
            "  -s, --socket PATH   the control socket (default: control.socket of FILE)\n"
            "  -h, --help          this text\n",
            DEFAULT_CONFIG);
}

static int print_errors(const char *path, const char *err)
{
    fprintf(stderr, "%s%sconfiguration %s is invalid\n", err,
            (err[0] && err[strlen(err) - 1] != '\n') ? "\n" : "", path);
    return 1;
}

static int cmd_check(const char *path)
{
    char err[8192];
    struct pgw_config *c = pgw_config_load(path, err, sizeof(err));
    if (c == NULL)
        return print_errors(path, err);
    /* policies, then files (certificates, keys): every error of both is printed */
    int bad = pgw_policy_validate(c, NULL, NULL, err, sizeof(err)) != PGW_OK;
    size_t used = bad ? strlen(err) : 0;
    char *files = NULL;
    size_t files_len = 0;
    bad |= pgw_genfiles_prepare(c, 1, &files, &files_len, err + used, sizeof(err) - used) != PGW_OK;
    if (bad) {
        free(files);
        pgw_config_unref(c);
        return print_errors(path, err);
    }
    free(files);
    printf("configuration %s is valid: %zu listener(s), %zu upstream(s), %zu route(s)\n", path,
           c->num_listeners, c->num_upstreams, c->num_routes);
    pgw_config_unref(c);
    return 0;
}

static int cmd_run(const char *path)
{
    char err[8192];
    size_t len;
    char *text = pgw_config_read_file(path, &len, err, sizeof(err));
    struct pgw_config *c = text ? pgw_config_load_string(path, text, len, err, sizeof(err)) : NULL;
    if (c == NULL) {
        free(text);
        return print_errors(path, err);
    }
    if (pgw_log_open(c) != PGW_OK) {
        pgw_config_unref(c);
        free(text);
        return 1;
    }
    int status = pgw_master_run(path, c, text, len); /* owns c and text */
    pgw_log_close();
    return status;
}

/* The control socket named by <path>'s control.socket, found even when the file no longer
 * validates (a reload of a broken file must reach the master to be refused and recorded). */
static char *socket_of(const char *path)
{
    char err[8192];
    struct pgw_config *c = pgw_config_load(path, err, sizeof(err));
    if (c != NULL) {
        char *s = pgw_strndup(c->control_socket, strlen(c->control_socket));
        pgw_config_unref(c);
        return s;
    }
    size_t len;
    char *text = pgw_config_read_file(path, &len, err, sizeof(err));
    struct pgw_errs e = {.file = path};
    int fatal = 0;
    struct pgw_yaml_node *root = text ? pgw_yaml_read(&e, text, len, &fatal) : NULL;
    const char *found = NULL;
    for (size_t i = 0; root && root->kind == PGW_YAML_MAP && i + 1 < root->n; i += 2) {
        const struct pgw_yaml_node *k = root->kids[i], *v = root->kids[i + 1];
        if (!pgw_yaml_is(k, "control") || v->kind != PGW_YAML_MAP)
            continue;
        for (size_t j = 0; j + 1 < v->n; j += 2)
            if (pgw_yaml_is(v->kids[j], "socket") && v->kids[j + 1]->kind == PGW_YAML_SCALAR)
                found = v->kids[j + 1]->str;
    }
    char *s = pgw_strndup(found ? found : DEFAULT_SOCKET, strlen(found ? found : DEFAULT_SOCKET));
    pgw_yaml_free(root);
    pgw_errs_clear(&e);
    free(text);
    return s;
}

/* Sends "<cmd>\n" to the master and returns its whole answer (heap), or NULL. */
static char *ask_master(const char *sock, const char *cmd)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", sock);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
        fprintf(stderr, "passerelle: no master answers on %s: %s\n", sock, strerror(errno));
        if (fd != -1)
            close(fd);
        return NULL;
    }
    struct timeval tv = {15, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    dprintf(fd, "%s\n", cmd);
    size_t cap = 4096, n = 0;
    char *buf = pgw_malloc(cap);
    ssize_t r;
    while ((r = read(fd, buf + n, cap - n - 1)) > 0) {
        n += (size_t)r;
        if (n + 1 == cap)
            buf = pgw_realloc(buf, cap *= 2);
    }
    close(fd);
    buf[n] = '\0';
    if (r == -1 || n == 0) {
        fprintf(stderr, "passerelle: the master on %s did not answer\n", sock);
        free(buf);
        return NULL;
    }
    return buf;
}

static int cmd_control(const char *cmd, const char *path, const char *sock_opt)
{
    char *sock = sock_opt ? pgw_strndup(sock_opt, strlen(sock_opt)) : socket_of(path);
    char *answer = ask_master(sock, cmd);
    free(sock);
    if (answer == NULL)
        return 1;
    int status = 0;
    if (strncmp(answer, "ok ", 3) == 0) {
        printf("reloaded: generation %s", answer + 3);
    } else if (strncmp(answer, "error\n", 6) == 0) {
        fprintf(stderr, "%s", answer + 6);
        status = 1;
    } else {
        fputs(answer, stdout);
    }
    free(answer);
    return status;
}

/* passerelle ws-send ID MESSAGE: pgw.ws.send through the master ("-": the message from stdin). */
static int cmd_ws_send(const char *const args[2], const char *path, const char *sock_opt,
                       int binary)
{
    if (args[0] == NULL) {
        fprintf(stderr, "passerelle: usage: passerelle ws-send ID MESSAGE [--binary]\n");
        return 2;
    }
    enum { MAX = 64 * 1024 };
    unsigned char *msg = pgw_malloc(MAX + 1);
    size_t n = 0;
    if (strcmp(args[1], "-") == 0) {
        ssize_t r;
        while (n <= MAX && (r = read(0, msg + n, MAX + 1 - n)) > 0)
            n += (size_t)r;
    } else {
        n = strlen(args[1]);
        memcpy(msg, args[1], PGW_MIN(n, (size_t)MAX + 1));
    }
    if (n > MAX) {
        fprintf(stderr, "passerelle: ws-send: messages of at most 64 KiB\n");
        free(msg);
        return 2;
    }
    size_t idl = strlen(args[0]);
    char *line = pgw_malloc(64 + idl + 4 * (n / 3 + 1));
    int k = sprintf(line, "ws-send %s %s ", args[0], binary ? "binary" : "text");
    EVP_EncodeBlock((unsigned char *)line + k, msg, (int)n);
    free(msg);
    char *sock = sock_opt ? pgw_strndup(sock_opt, strlen(sock_opt)) : socket_of(path);
    char *answer = ask_master(sock, line);
    free(sock);
    free(line);
    if (answer == NULL)
        return 1;
    int status = strncmp(answer, "ok", 2) == 0 ? 0 : 1;
    if (status == 0)
        printf("sent\n");
    else
        fprintf(stderr, "passerelle: ws-send: %s", strncmp(answer, "error\n", 6) == 0
                                                        ? answer + 6 : answer);
    free(answer);
    return status;
}

int main(int argc, char **argv)
{
    pgw_config_policy_engine = 1; /* linked in: policies: lists are run */
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"socket", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {"binary", no_argument, NULL, 'b'},
        {NULL, 0, NULL, 0},
    };
    int binary = 0;
    const char *cmd = "run";
    if (argc > 1 && argv[1][0] != '-') {
        cmd = argv[1];
        argv++;
        argc--;
    }
    if (strcmp(cmd, "worker") == 0)
        return pgw_worker_main(PGW_WORKER_CHAN_FD);
    if (strcmp(cmd, "keys") == 0 || strcmp(cmd, "consumers") == 0)
        return pgw_cli_store(cmd, argc, argv);
    const char *path = DEFAULT_CONFIG, *sock = NULL;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:s:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            path = optarg;
            break;
        case 's':
            sock = optarg;
            break;
        case 'b':
            binary = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    const char *ws_args[2] = {NULL, NULL};
    if (strcmp(cmd, "ws-send") == 0 && argc - optind == 2) { /* ID MESSAGE */
        ws_args[0] = argv[optind];
        ws_args[1] = argv[optind + 1];
        optind = argc;
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
    if (strcmp(cmd, "reload") == 0 || strcmp(cmd, "status") == 0)
        return cmd_control(cmd, path, sock);
    if (strcmp(cmd, "ws-send") == 0)
        return cmd_ws_send(ws_args, path, sock, binary);
    if (strcmp(cmd, "version") == 0) {
        printf("passerelle %s\n", PGW_VERSION);
        return 0;
    }
    fprintf(stderr, "passerelle: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
