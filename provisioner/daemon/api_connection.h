/* api_connection.h — a connection the listeners (api_server.c) accepted,
 * served by api_http.c: what its requests are routed to. */
#ifndef VDI_API_CONNECTION_H
#define VDI_API_CONNECTION_H

#include "api.h"
#include "log.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* The connections a server's listeners accepted and have not closed yet,
 * shared by the server and each of them: either may outlive the other,
 * and the tally is freed when the last lets go. Loop thread only. */
typedef struct api_tally {
    unsigned open;             /* accepted and not closed */
    unsigned max;              /* beyond it a new connection is answered 503 */
    uint64_t refused;          /* connections answered 503 since start */
    log_throttle refused_log;  /* the warning about them, at most every 10 s */
    unsigned refs;             /* the server, and each connection not closed */
} api_tally;

/* Counts an accepted connection (it holds the tally until api_tally_leave);
 * false when it is beyond the limit, and then a warning says so at most
 * every 10 s. */
bool api_tally_admit(api_tally *t, uint64_t now_ms);
/* The connection is closed (t may be NULL: it was never counted). */
void api_tally_leave(api_tally *t);
/* Lets go of one reference; the last frees the tally. */
void api_tally_release(api_tally *t);

/* What every request of a listener is routed to (api_server_start's), and
 * the TCP listener's bearer token ("" when none). */
typedef struct api_routes {
    api_route_fn route;
    void *ctx;
    api_open_fn open;
    const char *token;
    api_tally *tally; /* counts the connection while it is open */
} api_routes;

/* Accepts one connection on the listening `server` (tcp: the TCP listener,
 * else the Unix socket) and serves its requests with `routes`. The
 * connection keeps copies: it may outlive the listener (api_server_stop
 * lets requests in flight be answered). */
void api_accept(uv_stream_t *server, uv_loop_t *loop, const api_routes *routes, bool tcp);

#endif
