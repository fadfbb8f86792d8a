/* proxy-bev.c: the bench proxy on libevent bufferevents (bufferevent_socket_new), the way a
 * gateway would use them: read and write timeouts via bufferevent_set_timeouts, data moved
 * between the input of one bufferevent and the output of the other; bufferevents write on the
 * next loop pass and add/delete write interest as output is appended/drained. */
#include "common.h"

#include <event2/bufferevent.h>

struct client;

struct up { /* keep-alive upstream connection */
    struct bufferevent *bev;
    struct client *c; /* request in flight, NULL while idle in the pool */
    struct pool_link link;
    size_t left; /* response bytes still to relay, 0 = head not parsed yet */
};

struct client {
    struct bufferevent *bev;
    struct up *up;
};

static const struct timeval tmo = {IDLE_TIMEOUT_MS / 1000, (IDLE_TIMEOUT_MS % 1000) * 1000};

static void client_read(struct bufferevent *bev, void *arg);

static void up_free(struct up *u)
{
    pool_unlink(&u->link);
    bufferevent_free(u->bev); /* BEV_OPT_CLOSE_ON_FREE */
    free(u);
}

static void client_free(struct client *c)
{
    if (c->up) { /* response in flight: the upstream connection cannot be reused */
        c->up->c = NULL;
        up_free(c->up);
    }
    bufferevent_free(c->bev);
    free(c);
}

static void up_read(struct bufferevent *bev, void *arg)
{
    struct up *u = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct client *c = u->c;
    if (!c) { /* bytes on an idle connection: protocol error */
        up_free(u);
        return;
    }
    if (u->left == 0) {
        ssize_t n = response_len(in);
        if (n == -1)
            return;
        if (n < 0) {
            client_free(c);
            return;
        }
        u->left = (size_t)n;
    }
    size_t have = evbuffer_get_length(in), mv = have < u->left ? have : u->left;
    evbuffer_remove_buffer(in, bufferevent_get_output(c->bev), mv); /* write scheduled */
    u->left -= mv;
    if (u->left > 0)
        return;
    served++;
    c->up = NULL;
    u->c = NULL;
    pool_put(&u->link);
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        client_read(c->bev, c); /* pipelined request */
}

static void up_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct up *u = arg;
    if (what & BEV_EVENT_CONNECTED)
        return;
    if (u->c) /* EOF, error or timeout mid-response: the client connection is lost too */
        client_free(u->c);
    else
        up_free(u);
}

static struct up *up_get(void)
{
    struct up *u = pool_take();
    if (u)
        return u;
    int fd = upstream_socket();
    if (fd < 0)
        return NULL;
    u = calloc(1, sizeof(*u));
    u->link.owner = u;
    u->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(u->bev, up_read, NULL, up_event, u);
    bufferevent_set_timeouts(u->bev, &tmo, &tmo);
    bufferevent_enable(u->bev, EV_READ | EV_WRITE); /* idle pooled ones keep reading: close seen */
    return u;
}

static void client_read(struct bufferevent *bev, void *arg)
{
    struct client *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (c->up)
        return; /* one request in flight at a time */
    ssize_t hl = head_len(in);
    if (hl < 0) {
        if (evbuffer_get_length(in) > MAX_HEAD)
            client_free(c);
        return;
    }
    struct up *u = up_get();
    if (!u) {
        client_free(c);
        return;
    }
    u->c = c;
    c->up = u;
    evbuffer_remove_buffer(in, bufferevent_get_output(u->bev), (size_t)hl); /* write scheduled */
}

static void client_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev, (void)what;
    client_free(arg); /* EOF, error or timeout */
}

static void on_accept_fd(int fd)
{
    struct client *c = calloc(1, sizeof(*c));
    c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(c->bev, client_read, NULL, client_event, c);
    bufferevent_set_timeouts(c->bev, &tmo, &tmo);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

int main(int argc, char **argv)
{
    return run_main(argc, argv, "proxy-bev");
}
