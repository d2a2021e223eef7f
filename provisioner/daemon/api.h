/* api.h — the control API's transport (api_server.c listens, api_http.c
 * serves connections, api_access.c decides who may ask): HTTP/1.1 over a
 * Unix socket, optionally loopback TCP with a bearer token. It knows nothing of
 * the service: it checks the peer, parses a request and hands it to the
 * route callback it was given, which answers now or later. */
#ifndef VDI_API_H
#define VDI_API_H

#include "vdi_config.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct api_server api_server;
typedef struct request request;
typedef void (*api_route_fn)(void *ctx, request *r);
/* Answers a request that needs no authorisation (content without data: the
 * dashboard's page and script) and returns true, or returns false. */
typedef bool (*api_open_fn)(request *r);

/* Listens on the service's socket (and TCP listener); *out is set even on
 * failure, for api_server_stop. open (may be NULL) is asked first, before
 * the peer's credentials or the token are checked; route gets the rest. */
int api_server_start(uv_loop_t *loop, const vdi_service_config *sc, api_route_fn route,
                     api_open_fn open, void *route_ctx, api_server **out, vdi_error *err);
/* Stops listening and removes the socket file; frees the server once its
 * handles are closed. Requests in flight are still answered. */
void api_server_stop(api_server *server);

/* The API's connections: open now, the limit (service.max_connections,
 * lowered when the open-files limit is too small for it), and how many
 * were answered 503 for being over it since start. All 0 without a server. */
typedef struct api_connection_stats {
    unsigned open, max;
    uint64_t refused;
} api_connection_stats;
void api_server_connection_stats(const api_server *server, api_connection_stats *out);
/* A reload's service.max_connections; connections already open stay. */
void api_server_set_max_connections(api_server *server, unsigned max);

/* For fuzzing the parser and the routes: parses data as one request and,
 * when it is whole, routes it; runs loop (when given) until a held answer
 * is given. Returns the status answered, or 0 when the request was
 * incomplete. */
int api_request_fuzz(const char *data, size_t len, api_route_fn route, api_open_fn open, void *ctx,
                     uv_loop_t *loop);

/* What routes see of a request. */
const char *request_method(const request *r);
const char *request_path(const request *r); /* without the query string */
/* The value of NAME in the query string (?NAME=VALUE&...), copied into buf
 * with its %XX escapes decoded (a client may send "ready%2Cassigned");
 * %00 and a malformed escape stay as written, for the route's check to
 * name. NULL when it is not there. */
const char *request_query(const request *r, const char *name, char *buf, size_t len);
const char *request_body(const request *r); /* NUL-terminated, "" when none */
/* Answers once; a later call does nothing. Takes ownership of body. */
void request_respond_json(request *r, int status, json_t *body);
void request_respond_text(request *r, int status, const char *type, const char *text);
/* Any bytes; headers (NULL: Cache-Control: no-store) are whole lines, each
 * ending in CRLF. */
void request_respond_bytes(request *r, int status, const char *type, const char *headers,
                           const void *body, size_t len);
/* For answers that come later (acquire waiting for a spare). */
void request_hold(request *r);
/* Called when a held request's client goes away before its answer: fn
 * returns true when it withdrew the work, and then no answer is given. */
void request_on_gone(request *r, bool (*fn)(void *ctx, request *r), void *ctx);

/* An event stream (text/event-stream) as the answer: the headers are sent
 * now and request_stream_write sends more until the client or
 * request_stream_end closes the connection; on_gone is called once, before
 * the request goes, whoever closed it. 0, or a negative code when there is
 * no connection to stream on (then nothing is kept). */
int request_stream_begin(request *r, bool (*on_gone)(void *ctx, request *r), void *ctx);
int request_stream_write(request *r, const char *text);
void request_stream_end(request *r);

#endif
