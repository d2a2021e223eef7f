/* api_access.h — who may ask the control API (api_access.c). */
#ifndef VDI_API_ACCESS_H
#define VDI_API_ACCESS_H

#include "http_request.h"

#include <stdbool.h>
#include <uv.h>

/* The Unix peer may use the API: root, the daemon's own user, or a member
 * of group vdipool (SO_PEERCRED). */
bool api_peer_allowed(uv_pipe_t *p);
/* A request a browser sent is addressed to a loopback host name and comes
 * from that same origin; one that is not a browser's passes. */
bool api_browser_request_allowed(const http_request *h);
/* The Authorization header carries the TCP listener's bearer token,
 * compared in constant time; false when there is no token. */
bool api_token_ok(const char *token, const char *authorization);

#endif
