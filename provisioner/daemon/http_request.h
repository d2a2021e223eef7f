/* http_request.h — one HTTP/1.x request read from bytes, with the control
 * API's limits: a request target over 2 KiB is refused with 414, a request
 * line and headers over 16 KiB with 431, a body over 64 KiB with 413, any
 * version but 1.0 and 1.1 with 505. Debian's http-parser does the parsing;
 * nothing here knows sockets or the service. */
#ifndef VDI_HTTP_REQUEST_H
#define VDI_HTTP_REQUEST_H

#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>

#define HTTP_MAX_URL 2048
#define HTTP_MAX_HEADERS (16 * 1024)
#define HTTP_MAX_BODY (64 * 1024)

typedef struct http_request {
    http_parser parser;
    char url[HTTP_MAX_URL + 1];
    char path[HTTP_MAX_URL + 1]; /* the URL without its query string */
    char method[16];
    char *body; /* NUL-terminated, or NULL */
    size_t body_len;
    size_t header_bytes;
    char field[64];
    char authorization[512]; /* the Authorization header, as sent */
    char origin[256];        /* the Origin header (browsers), or "" */
    char host[256];          /* the Host header, or "" */
    bool fetch_metadata;     /* a Sec-Fetch-* header came: a browser sent it */
    char *value;             /* where the current header's value goes, or NULL */
    size_t value_size;
    int error_status;       /* a refusal: the status to answer ... */
    const char *error_text; /* ... and why */
    bool complete;
    bool keep_alive; /* the client wants the connection kept (HTTP/1.1 default) */
    size_t used;     /* bytes of the fed data that belong to this request */
} http_request;

void http_request_init(http_request *h);
void http_request_free(http_request *h);
/* Feeds bytes. Returns 1 once a whole request has been read (nothing after
 * it is parsed: `used` says how much of the last call's data was this
 * request's, the rest belongs to the next request on the connection), 0
 * when more is needed, -1 when the request is refused (error_status and
 * error_text say how to answer). */
int http_request_feed(http_request *h, const char *data, size_t len);

#endif
