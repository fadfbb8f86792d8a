/* cli_keys.c: `passerelle keys ...` and `passerelle consumers ...` (docs/store.md). They open the
 * store named by the configuration directly (LMDB lets them work while the gateway runs: a key
 * added here is seen by the next request) and print one line per record.
 */
#include "cli_keys.h"
#include "config.h"
#include "keys.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct opts {
    const char *config, *consumer, *plan, *groups, *expires, *key;
    int plan_set, groups_set, create_consumers;
    int argc;
    char **argv; /* positional arguments after the verb */
};

static uint64_t now_ms(void) { return (uint64_t)time(NULL) * 1000; }

static int parse_opts(int argc, char **argv, struct opts *o)
{
    static const struct option lo[] = {
        {"config", required_argument, NULL, 'c'}, {"consumer", required_argument, NULL, 'C'},
        {"plan", required_argument, NULL, 'p'},   {"groups", required_argument, NULL, 'g'},
        {"expires", required_argument, NULL, 'e'}, {"key", required_argument, NULL, 'k'},
        {"create-consumers", no_argument, NULL, 'n'}, {NULL, 0, NULL, 0}};
    memset(o, 0, sizeof(*o));
    o->config = "passerelle.yaml";
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:", lo, NULL)) != -1) {
        switch (ch) {
        case 'c': o->config = optarg; break;
        case 'C': o->consumer = optarg; break;
        case 'p': o->plan = optarg; o->plan_set = 1; break;
        case 'g': o->groups = optarg; o->groups_set = 1; break;
        case 'e': o->expires = optarg; break;
        case 'k': o->key = optarg; break;
        case 'n': o->create_consumers = 1; break;
        default: return PGW_ERR;
        }
    }
    o->argc = argc - optind;
    o->argv = argv + optind;
    return PGW_OK;
}

/* Opens the store of the configuration <path>; NULL after printing why. */
static struct pgw_store *open_store(const char *path, unsigned char secret[PGW_KEYS_SECRET_LEN])
{
    char err[8192];
    struct pgw_config *c = pgw_config_load(path, err, sizeof(err));
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return NULL;
    }
    struct pgw_store *s = NULL;
    if (c->store.dir == NULL)
        fprintf(stderr, "%s: no store configured (store: { dir: ... })\n", path);
    else if (pgw_store_prepare(c->store.dir, (size_t)c->store.durable_map,
                               (size_t)c->store.fast_map, 0, err, sizeof(err)) != PGW_OK ||
             pgw_keys_secret(c->store.dir, 1, secret, err, sizeof(err)) != PGW_OK ||
             (s = pgw_store_open(c->store.dir, (size_t)c->store.durable_map,
                                 (size_t)c->store.fast_map, err, sizeof(err))) == NULL)
        fprintf(stderr, "passerelle: %s\n", err);
    pgw_config_unref(c);
    return s;
}

static void fmt_time(uint64_t ms, char *buf, size_t len)
{
    if (ms == 0) {
        snprintf(buf, len, "never");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void print_key(const struct pgw_key_info *k)
{
    char exp[32], cre[32];
    fmt_time(k->expires_ms, exp, sizeof(exp));
    fmt_time(k->created_ms, cre, sizeof(cre));
    printf("%s consumer=%s status=%s expires=%s created=%s\n", k->id, k->consumer,
           pgw_keys_status_name(k->status), exp, cre);
}

/* --expires 30d (a duration from now) into an absolute time; 0 for none. */
static int expiry(const char *s, uint64_t *out)
{
    uint64_t ms = 0;
    *out = 0;
    if (s == NULL)
        return PGW_OK;
    size_t n = strlen(s);
    char num[32];
    if (n > 1 && n < sizeof(num) && s[n - 1] == 'd') { /* days, which config durations lack */
        memcpy(num, s, n - 1);
        num[n - 1] = '\0';
        uint64_t days = 0;
        if (pgw_config_parse_duration(num, &days) == PGW_OK && days > 0 && days / 1000 <= 36500) {
            *out = now_ms() + days * 86400; /* "<n>" parsed as seconds: n * 1000 ms */
            return PGW_OK;
        }
    }
    if (pgw_config_parse_duration(s, &ms) != PGW_OK || ms == 0) {
        fprintf(stderr, "passerelle: --expires wants a duration (30d, 12h, 90m), got '%s'\n", s);
        return PGW_ERR;
    }
    *out = now_ms() + ms;
    return PGW_OK;
}

static int add_key(struct pgw_store *s, const unsigned char *secret, const char *key,
                   const char *consumer, uint64_t exp, int print_clear)
{
    char err[512];
    struct pgw_key_info k;
    size_t len = strlen(key);
    if (len < 8 || len > PGW_KEYS_KEY_MAX) {
        fprintf(stderr, "passerelle: a key must be 8 to %d bytes\n", PGW_KEYS_KEY_MAX);
        return PGW_ERR;
    }
    int r = pgw_keys_add(s, secret, key, len, consumer, exp, now_ms(), &k, err, sizeof(err));
    if (r == PGW_DECLINED) {
        fprintf(stderr, "passerelle: that key exists already\n");
        return PGW_ERR;
    }
    if (r != PGW_OK) {
        fprintf(stderr, "passerelle: consumer %s: %s\n", consumer, err);
        return PGW_ERR;
    }
    if (print_clear)
        printf("%s\n", key); /* shown once: only its HMAC is stored */
    print_key(&k);
    return PGW_OK;
}

/* With --create-consumers, a consumer named in the file that does not exist is created. */
static void ensure_consumer(struct pgw_store *s, const char *name)
{
    struct pgw_consumer_info c;
    if (!pgw_keys_valid_name(name) || pgw_consumers_get(s, name, &c) != PGW_DECLINED)
        return;
    memset(&c, 0, sizeof(c));
    memcpy(c.name, name, strlen(name)); /* at most PGW_KEYS_NAME_MAX: a valid name */
    c.created_ms = now_ms();
    pgw_consumers_put(s, &c, 1);
}

/* Lines "<key> <consumer> [<expires duration>]"; '#' comments and blank lines skipped. */
static int import_keys(struct pgw_store *s, const unsigned char *secret, const char *file,
                       int create_consumers)
{
    FILE *f = strcmp(file, "-") == 0 ? stdin : fopen(file, "r");
    if (f == NULL) {
        perror(file);
        return 1;
    }
    char line[1024];
    unsigned n = 0, lineno = 0, bad = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        char key[PGW_KEYS_KEY_MAX + 2], consumer[PGW_KEYS_NAME_MAX + 2], dur[32];
        int fields = sscanf(line, "%257s %65s %31s", key, consumer, dur);
        if (fields <= 0 || key[0] == '#')
            continue;
        uint64_t exp = 0;
        struct pgw_key_info k;
        char err[512];
        if (fields >= 2 && create_consumers)
            ensure_consumer(s, consumer);
        int r = PGW_ERR;
        size_t klen = strlen(key);
        snprintf(err, sizeof(err), "%s", "bad line (<key> <consumer> [<expires>])");
        if (fields >= 2 && (klen < 8 || klen > PGW_KEYS_KEY_MAX))
            snprintf(err, sizeof(err), "a key must be 8 to %d bytes", PGW_KEYS_KEY_MAX);
        else if (fields == 3 && expiry(dur, &exp) != PGW_OK)
            snprintf(err, sizeof(err), "bad expiry %s", dur);
        else if (fields >= 2)
            r = pgw_keys_add(s, secret, key, klen, consumer, exp, now_ms(), &k, err,
                             sizeof(err));
        if (r == PGW_DECLINED) {
            fprintf(stderr, "%s:%u: not imported: that key exists already\n", file, lineno);
            bad++;
            continue;
        }
        if (r != PGW_OK) {
            fprintf(stderr, "%s:%u: not imported: %s\n", file, lineno, err);
            bad++;
            continue;
        }
        n++;
    }
    if (f != stdin)
        fclose(f);
    printf("imported %u key(s), %u line(s) refused\n", n, bad);
    return bad ? 1 : 0;
}

struct list_ctx {
    const char *consumer;
};

static int list_cb(const struct pgw_key_info *k, void *arg)
{
    struct list_ctx *l = arg;
    if (l->consumer == NULL || strcmp(l->consumer, k->consumer) == 0)
        print_key(k);
    return 0;
}

static int keys_verb(struct pgw_store *s, const unsigned char *secret, const char *verb,
                     struct opts *o)
{
    if (strcmp(verb, "add") == 0) {
        uint64_t exp;
        if (o->consumer == NULL || expiry(o->expires, &exp) != PGW_OK) {
            if (o->consumer == NULL)
                fprintf(stderr, "passerelle: keys add needs --consumer NAME\n");
            return 2;
        }
        char gen[40];
        pgw_keys_generate(gen);
        return add_key(s, secret, o->key ? o->key : gen, o->consumer, exp, o->key == NULL) ? 1 : 0;
    }
    if (strcmp(verb, "import") == 0 && o->argc == 1)
        return import_keys(s, secret, o->argv[0], o->create_consumers);
    if (strcmp(verb, "list") == 0) {
        struct list_ctx l = {o->consumer};
        return pgw_keys_list(s, list_cb, &l) == PGW_OK ? 0 : 1;
    }
    enum pgw_key_status st = PGW_KEY_ACTIVE;
    int change = strcmp(verb, "suspend") == 0 ? (st = PGW_KEY_SUSPENDED, 1)
                 : strcmp(verb, "revoke") == 0 ? (st = PGW_KEY_REVOKED, 1)
                 : strcmp(verb, "activate") == 0;
    if (strcmp(verb, "delete") == 0 && o->argc == 1) {
        int r = pgw_keys_delete(s, o->argv[0]);
        if (r != PGW_OK)
            fprintf(stderr, "passerelle: %s\n",
                    r == PGW_DECLINED ? "no key with that id" : pgw_store_error(s));
        else
            printf("%s deleted\n", o->argv[0]);
        return r == PGW_OK ? 0 : 1;
    }
    if ((change || strcmp(verb, "show") == 0) && o->argc == 1) {
        unsigned char mac[32];
        struct pgw_key_info k;
        int r = change ? pgw_keys_set_status(s, o->argv[0], st)
                       : PGW_OK;
        if (r == PGW_OK)
            r = pgw_keys_find(s, o->argv[0], mac, &k);
        if (r == PGW_DECLINED) {
            fprintf(stderr, "passerelle: no key with id %s\n", o->argv[0]);
            return 1;
        }
        if (r != PGW_OK) {
            fprintf(stderr, "passerelle: %s\n", pgw_store_error(s));
            return 1;
        }
        print_key(&k);
        return 0;
    }
    fprintf(stderr, "passerelle: keys add|import FILE|list|show ID|suspend ID|revoke ID|"
                    "activate ID|delete ID\n");
    return 2;
}

static int print_consumer_cb(const struct pgw_consumer_info *c, void *arg)
{
    PGW_UNUSED(arg);
    printf("%s plan=%s groups=%s\n", c->name, c->plan[0] ? c->plan : "-",
           c->groups[0] ? c->groups : "-");
    return 0;
}

static int consumers_write(struct pgw_store *s, struct opts *o, int create)
{
    struct pgw_consumer_info c;
    const char *name = o->argv[0];
    memset(&c, 0, sizeof(c));
    if (!pgw_keys_valid_name(name) || (o->plan && o->plan[0] && !pgw_keys_valid_name(o->plan)) ||
        (o->groups && strlen(o->groups) > PGW_KEYS_GROUPS_MAX)) {
        fprintf(stderr, "passerelle: names are 1 to 64 of [A-Za-z0-9._@-]; groups at most %d "
                        "bytes\n", PGW_KEYS_GROUPS_MAX);
        return 2;
    }
    if (!create && pgw_consumers_get(s, name, &c) != PGW_OK) {
        fprintf(stderr, "passerelle: no consumer %s\n", name);
        return 1;
    }
    snprintf(c.name, sizeof(c.name), "%s", name);
    if (o->plan_set)
        snprintf(c.plan, sizeof(c.plan), "%s", o->plan);
    if (o->groups_set)
        snprintf(c.groups, sizeof(c.groups), "%s", o->groups);
    if (create)
        c.created_ms = now_ms();
    int r = pgw_consumers_put(s, &c, create);
    if (r == PGW_DECLINED) {
        fprintf(stderr, "passerelle: consumer %s exists already (use consumers set)\n", name);
        return 1;
    }
    if (r != PGW_OK) {
        fprintf(stderr, "passerelle: %s\n", pgw_store_error(s));
        return 1;
    }
    return print_consumer_cb(&c, NULL);
}

static int consumers_verb(struct pgw_store *s, const char *verb, struct opts *o)
{
    if (strcmp(verb, "list") == 0)
        return pgw_consumers_list(s, print_consumer_cb, NULL) == PGW_OK ? 0 : 1;
    if (o->argc == 1 && (strcmp(verb, "add") == 0 || strcmp(verb, "set") == 0))
        return consumers_write(s, o, strcmp(verb, "add") == 0);
    if (o->argc == 1 && strcmp(verb, "show") == 0) {
        struct pgw_consumer_info c;
        if (pgw_consumers_get(s, o->argv[0], &c) != PGW_OK) {
            fprintf(stderr, "passerelle: no consumer %s\n", o->argv[0]);
            return 1;
        }
        return print_consumer_cb(&c, NULL);
    }
    if (o->argc == 1 && strcmp(verb, "delete") == 0) {
        int r = pgw_consumers_delete(s, o->argv[0]);
        if (r != PGW_OK)
            fprintf(stderr, "passerelle: %s\n",
                    r == PGW_DECLINED ? "no such consumer" : pgw_store_error(s));
        return r == PGW_OK ? 0 : 1;
    }
    fprintf(stderr, "passerelle: consumers add NAME [--plan P] [--groups a,b]|set NAME ...|"
                    "show NAME|list|delete NAME\n");
    return 2;
}

int pgw_cli_store(const char *what, int argc, char **argv)
{
    struct opts o;
    if (parse_opts(argc, argv, &o) != PGW_OK || o.argc < 1) {
        fprintf(stderr, "usage: passerelle %s VERB [ARGS] [-c FILE]\n", what);
        return 2;
    }
    const char *verb = o.argv[0]; /* options may come before or after it */
    o.argv++;
    o.argc--;
    unsigned char secret[PGW_KEYS_SECRET_LEN];
    struct pgw_store *s = open_store(o.config, secret);
    if (s == NULL)
        return 1;
    int rc = strcmp(what, "keys") == 0 ? keys_verb(s, secret, verb, &o)
                                       : consumers_verb(s, verb, &o);
    pgw_store_close(s);
    return rc;
}
