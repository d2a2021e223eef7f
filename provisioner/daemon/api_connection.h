/* api_connection.h — a connection the listeners (api_server.c) accepted,
 * served by api_http.c: what its requests are routed to. */
#ifndef VDI_API_CONNECTION_H
#define VDI_API_CONNECTION_H

#include "api.h"
#include "api_tally.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

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
