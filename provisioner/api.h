/* api.h — between the HTTP transport (api_http.c) and the routes
 * (api_routes.c). */
#ifndef VDI_API_H
#define VDI_API_H

#include "service.h"

typedef struct request request;

/* What routes see of a request. */
const char *request_method(const request *r);
const char *request_path(const request *r);   /* without the query string */
const char *request_body(const request *r);   /* NUL-terminated, "" when none */
/* Answers once; a later call does nothing. Takes ownership of body. */
void request_respond_json(request *r, int status, json_t *body);
void request_respond_text(request *r, int status, const char *type, const char *text);
/* For answers that come later (acquire waiting for a spare). */
void request_hold(request *r);

/* api_routes.c */
void api_route(service *svc, request *r);

#endif
