/* api_server.c — the control API's listeners: the Unix socket (never
 * taken over from a running vdipoold; mode 0660, group vdipool) and the
 * optional loopback TCP listener with its bearer token. Each accepted
 * connection is handed to api_http.c (api_connection.h); who may ask is
 * api_access.c's. The listeners' connections are counted against
 * service.max_connections in a tally (api_tally.c) whose limit is set
 * here. */
#include "api.h"
#include "api_connection.h"
#include "log.h"

#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

struct api_server {
    uv_loop_t *loop;
    api_routes routes; /* the service's, called on the loop, and the token */
    uv_pipe_t unix_server;
    uv_tcp_t tcp_server;
    bool have_tcp;
    bool unix_listening; /* the socket file is ours to remove */
    int open_handles;    /* closing: freed when the last one is closed */
    char token[256];
    char socket_path[4096];
    api_tally *tally;             /* also held by each open connection */
    unsigned max_connections;     /* as configured (the tally's may be lower) */
    log_throttle accept_failures; /* the warning about them, at most every 10 s */
};

/* Descriptors the daemon keeps for itself beside the API's connections:
 * the catalog and journal, libvirt's connections, the parallel clones'
 * files, guest agents' event streams, the log. */
#define FDS_KEPT_FOR_THE_SERVICE 256

/* service.max_connections, lowered (with a warning) when the open-files
 * limit would let connections take the descriptors clones and the catalog
 * need: a client holding many connections must never make a clone fail. */
static unsigned connection_limit(unsigned wanted)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY ||
        rl.rlim_cur >= (rlim_t)wanted + FDS_KEPT_FOR_THE_SERVICE)
        return wanted;
    unsigned allowed = rl.rlim_cur > FDS_KEPT_FOR_THE_SERVICE + 16
                           ? (unsigned)(rl.rlim_cur - FDS_KEPT_FOR_THE_SERVICE)
                           : 16;
    svc_log("warning",
            "event=connections-limited max_connections=%u allowed=%u open_files=%llu "
            "reason=\"the open-files limit leaves room for %u API connections beside the "
            "daemon's own files; raise it (LimitNOFILE= in the unit, ulimit -n) or lower "
            "service.max_connections\"",
            wanted, allowed, (unsigned long long)rl.rlim_cur, allowed);
    return allowed;
}

/* A failed accept (out of descriptors, most often: libuv then drops the
 * waiting connection) is logged at most every 10 s, with how many. */
static void accept_failed(api_server *a, int status)
{
    uint64_t count;
    if (log_throttle_due(&a->accept_failures, uv_now(a->loop), 10000, &count))
        svc_log("warning", "event=accept-failed count=%llu open=%u reason=\"%s\"",
                (unsigned long long)count, a->tally ? api_tally_open(a->tally) : 0,
                uv_strerror(status));
}

static void on_unix_connection(uv_stream_t *server, int status)
{
    api_server *a = server->data;
    if (status == 0)
        api_accept(server, a->loop, &a->routes, false);
    else
        accept_failed(a, status);
}

static void on_tcp_connection(uv_stream_t *server, int status)
{
    api_server *a = server->data;
    if (status == 0)
        api_accept(server, a->loop, &a->routes, true);
    else
        accept_failed(a, status);
}

void api_server_connection_stats(const api_server *a, api_connection_stats *out)
{
    *out = (api_connection_stats){0};
    if (a && a->tally)
        *out = (api_connection_stats){.open = api_tally_open(a->tally),
                                      .max = api_tally_max(a->tally),
                                      .refused = api_tally_refused(a->tally)};
}

void api_server_set_max_connections(api_server *a, unsigned max)
{
    if (a && a->tally && a->max_connections != max) {
        a->max_connections = max;
        api_tally_set_max(a->tally, connection_limit(max));
        svc_log("info", "event=max-connections max_connections=%u open=%u", api_tally_max(a->tally),
                api_tally_open(a->tally));
    }
}

int api_server_start(uv_loop_t *loop, const vdi_service_config *sc, api_route_fn route,
                     api_open_fn open, void *route_ctx, api_server **out, vdi_error *err)
{
    api_server *a = calloc(1, sizeof *a);
    if (!a)
        return vdi_error_set(err, -ENOMEM, "out of memory");
    a->loop = loop;
    *out = a; /* api_server_stop frees it, whatever happens below */
    a->max_connections = sc->max_connections;
    if (!(a->tally = api_tally_new(connection_limit(sc->max_connections))))
        return vdi_error_set(err, -ENOMEM, "out of memory");
    a->routes = (api_routes){
        .route = route, .ctx = route_ctx, .open = open, .token = a->token, .tally = a->tally};
    snprintf(a->socket_path, sizeof a->socket_path, "%s", sc->socket_path);
    /* The socket's directory (/run/vdipool) is made here when missing. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", a->socket_path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        mkdir(dir, 0755);
    }
    /* A socket that answers belongs to a running vdipoold: never take it over.
     * One that does not is a stale leftover of a previous run. */
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(a->socket_path) >= sizeof sa.sun_path)
        return vdi_error_set(err, -ENAMETOOLONG,
                             "the socket path %s is too long (at most %zu bytes)", a->socket_path,
                             sizeof sa.sun_path - 1);
    memcpy(sa.sun_path, a->socket_path, strlen(a->socket_path) + 1);
    bool live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (probe >= 0)
        close(probe);
    if (live)
        return vdi_error_set(err, -EADDRINUSE,
                             "%s is the socket of a running vdipoold; stop it first, or give "
                             "this one another service.socket",
                             a->socket_path);
    unlink(a->socket_path);
    int rc = uv_pipe_init(loop, &a->unix_server, 0);
    a->unix_server.data = a;
    if (rc == 0)
        rc = uv_pipe_bind(&a->unix_server, a->socket_path);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&a->unix_server, 64, on_unix_connection);
    if (rc < 0)
        return vdi_error_set(err, rc, "cannot listen on %s: %s", a->socket_path, uv_strerror(rc));
    a->unix_listening = true;
    struct group *g = getgrnam("vdipool");
    chmod(a->socket_path, 0660);
    if (g && chown(a->socket_path, (uid_t)-1, g->gr_gid) < 0)
        svc_log("warning", "event=socket-group-not-set reason=\"%s\"", strerror(errno));

    if (sc->listen) {
        FILE *f = fopen(sc->token_file, "r");
        if (!f || !fgets(a->token, sizeof a->token, f)) {
            if (f)
                fclose(f);
            return vdi_error_set(err, -EINVAL, "cannot read the API token from %s", sc->token_file);
        }
        fclose(f);
        a->token[strcspn(a->token, "\r\n")] = '\0';
        char host[64];
        const char *colon = strrchr(sc->listen, ':');
        snprintf(host, sizeof host, "%.*s", (int)(colon - sc->listen), sc->listen);
        if (!strcmp(host, "localhost"))
            snprintf(host, sizeof host, "127.0.0.1");
        struct sockaddr_storage addr;
        if (host[0] == '[') {
            host[strlen(host) - 1] = '\0';
            uv_ip6_addr(host + 1, atoi(colon + 1), (struct sockaddr_in6 *)&addr);
        } else {
            uv_ip4_addr(host, atoi(colon + 1), (struct sockaddr_in *)&addr);
        }
        rc = uv_tcp_init(loop, &a->tcp_server);
        a->tcp_server.data = a;
        if (rc == 0)
            rc = uv_tcp_bind(&a->tcp_server, (struct sockaddr *)&addr, 0);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&a->tcp_server, 64, on_tcp_connection);
        if (rc < 0)
            return vdi_error_set(err, rc, "cannot listen on %s: %s", sc->listen, uv_strerror(rc));
        a->have_tcp = true;
    }
    svc_log("info", "event=api-listening socket=%s%s%s", a->socket_path, a->have_tcp ? " tcp=" : "",
            a->have_tcp ? sc->listen : "");
    return 0;
}

static void server_closed(uv_handle_t *h)
{
    api_server *a = h->data;
    if (--a->open_handles == 0) {
        api_tally_release(a->tally);
        free(a);
    }
}

void api_server_stop(api_server *a)
{
    if (!a)
        return;
    a->open_handles = 1 + a->have_tcp;
    if (a->unix_listening)
        unlink(a->socket_path);
    uv_close((uv_handle_t *)&a->unix_server, server_closed);
    if (a->have_tcp)
        uv_close((uv_handle_t *)&a->tcp_server, server_closed);
}
