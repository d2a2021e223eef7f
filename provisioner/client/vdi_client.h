/* vdi_client.h — the control API's client: HTTP/1.1 requests over
 * vdipoold's Unix socket, one per call or many on a kept connection.
 * vdipoolctl, the tests and the benchmarks use it; it shares no header with
 * the daemon. */
#ifndef VDI_CLIENT_H
#define VDI_CLIENT_H

#include "vdi_common.h"

#include <jansson.h>

#define VDI_CLIENT_DEFAULT_SOCKET "/run/vdipool/vdipool.sock"

/* The socket to use: `given`, else $VDIPOOL_SOCKET, else the default. */
const char *vdi_client_socket(const char *given);

/* Sends one request (body may be NULL) and reads the whole answer. Returns
 * the HTTP status and *body_out (caller frees), or a negative code with err
 * saying why (daemon not running, no HTTP answer). */
int vdi_client_call(const char *socket_path, const char *method, const char *path, const char *body,
                    char **body_out, vdi_error *err);

/* The same, with the answer parsed as JSON (*out NULL when it is not JSON). */
int vdi_client_call_json(const char *socket_path, const char *method, const char *path,
                         const char *body, json_t **out, vdi_error *err);

/* A kept connection (HTTP/1.1 keep-alive) for many requests, one at a
 * time; not for sharing between threads. A connection the daemon closed
 * while idle is replaced once, transparently. */
typedef struct vdi_client_conn vdi_client_conn;
int vdi_client_connect(const char *socket_path, vdi_client_conn **out, vdi_error *err);
int vdi_client_request(vdi_client_conn *c, const char *method, const char *path, const char *body,
                       char **body_out, vdi_error *err);
int vdi_client_request_json(vdi_client_conn *c, const char *method, const char *path,
                            const char *body, json_t **out, vdi_error *err);
void vdi_client_disconnect(vdi_client_conn *c);

#endif
