/* http_request.c — see http_request.h. */
#include "http_request.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A parser callback refuses the request: parsing stops there. */
static int refuse(http_request *h, int status, const char *why)
{
    if (!h->error_status) {
        h->error_status = status;
        h->error_text = why;
    }
    return -1;
}

static int count_header_bytes(http_request *h, size_t len)
{
    h->header_bytes += len;
    return h->header_bytes > HTTP_MAX_HEADERS
               ? refuse(h, 431, "the request line and headers are larger than 16 KiB")
               : 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    http_request *h = p->data;
    size_t have = strlen(h->url);
    if (have + len > HTTP_MAX_URL)
        return refuse(h, 414, "the request target is longer than 2048 bytes");
    memcpy(h->url + have, at, len);
    h->url[have + len] = '\0';
    return count_header_bytes(h, len);
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    http_request *h = p->data;
    snprintf(h->field, sizeof h->field, "%.*s", (int)(len < 63 ? len : 63), at);
    /* The headers the transport looks at are kept (cut at their buffer's
     * size); the others are only counted. */
    h->value = NULL;
    if (!strcasecmp(h->field, "Authorization"))
        h->value = h->authorization, h->value_size = sizeof h->authorization;
    else if (!strcasecmp(h->field, "Origin"))
        h->value = h->origin, h->value_size = sizeof h->origin;
    else if (!strcasecmp(h->field, "Host"))
        h->value = h->host, h->value_size = sizeof h->host;
    else if (!strncasecmp(h->field, "Sec-Fetch-", 10))
        h->fetch_metadata = true;
    return count_header_bytes(h, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    http_request *h = p->data;
    if (h->value) {
        size_t have = strlen(h->value);
        size_t room = h->value_size - 1 - have;
        size_t n = len < room ? len : room;
        memcpy(h->value + have, at, n);
        h->value[have + n] = '\0';
    }
    return count_header_bytes(h, len);
}

static int on_headers_complete(http_parser *p)
{
    http_request *h = p->data;
    if (p->http_major != 1 || p->http_minor > 1)
        return refuse(h, 505, "only HTTP/1.0 and HTTP/1.1 are spoken here");
    if (p->content_length != ULLONG_MAX && p->content_length > HTTP_MAX_BODY)
        return refuse(h, 413, "the request body is larger than 64 KiB");
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    http_request *h = p->data;
    if (h->body_len + len > HTTP_MAX_BODY)
        return refuse(h, 413, "the request body is larger than 64 KiB");
    char *b = realloc(h->body, h->body_len + len + 1);
    if (!b)
        return refuse(h, 503, "out of memory");
    memcpy(b + h->body_len, at, len);
    h->body = b;
    h->body_len += len;
    h->body[h->body_len] = '\0';
    return 0;
}

static int on_message_complete(http_parser *p)
{
    http_request *h = p->data;
    snprintf(h->method, sizeof h->method, "%s", http_method_str(p->method));
    memcpy(h->path, h->url, sizeof h->path);
    h->path[strcspn(h->path, "?")] = '\0';
    h->complete = true;
    h->keep_alive = http_should_keep_alive(p) != 0;
    http_parser_pause(p, 1); /* the next request is parsed by a fresh parser */
    return 0;
}

static const http_parser_settings settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void http_request_init(http_request *h)
{
    memset(h, 0, sizeof *h);
    http_parser_init(&h->parser, HTTP_REQUEST);
    h->parser.data = h;
}

void http_request_free(http_request *h)
{
    free(h->body);
    h->body = NULL;
}

int http_request_feed(http_request *h, const char *data, size_t len)
{
    h->used = 0;
    if (h->complete)
        return 1;
    if (h->error_status)
        return -1;
    size_t done = http_parser_execute(&h->parser, &settings, data, len);
    h->used = done;
    if (h->complete)
        return 1;
    if (h->error_status)
        return -1;
    if (done != len) {
        h->error_status = 400;
        h->error_text = http_errno_description(HTTP_PARSER_ERRNO(&h->parser));
        return -1;
    }
    return 0;
}
