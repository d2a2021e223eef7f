/* api_http.c — the control API's connections: HTTP/1.1 over the Unix
 * socket or the loopback TCP listener (api_server.c accepts them; who may
 * ask is api_access.c's). Connections persist (HTTP/1.1 keep-alive, unless
 * the client says Connection: close or speaks HTTP/1.0) and requests on one connection are answered
 * one at a time in the order they were sent: the next is parsed only once the answer to the
 * previous one is written, so pipelined requests wait in a bounded buffer.
 * Limits on the request line, headers and body answer 414/431/413, other
 * versions than 1.0 and 1.1 505, a request that does not arrive within
 * 10 s 408; a connection idle for KEEPALIVE_IDLE_MS between requests is
 * closed quietly, and an error answer closes its connection. The parser is
 * Debian's http-parser, kept behind http_request.c. */
#include "api.h"
#include "api_access.h"
#include "api_connection.h"
#include "http_request.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Limits on what a client may send, and how long it may take. */
#define HEADER_TIMEOUT_MS 10000 /* a whole request must arrive within this: 408 */
#define DRAIN_TIMEOUT_MS 2000   /* after an error answer, input is read and dropped this long */
#define DRAIN_MAX (1024 * 1024)
#define KEEPALIVE_IDLE_MS 30000 /* a kept connection without a new request is closed */
/* Bytes of pipelined requests held while an earlier one is answered;
 * reading pauses beyond this until the queue is worked off. */
#define PENDING_MAX (HTTP_MAX_HEADERS + HTTP_MAX_BODY)

/* One connection and its current request: after an answer is written the
 * same object takes the connection's next request (the routes see one
 * request at a time and never keep it past their answer). A request
 * without a connection (api_request_fuzz) keeps its answer's status
 * instead of writing it. */
struct request {
    union {
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } handle;
    uv_stream_t *stream; /* NULL: detached (fuzzing) */
    uv_timer_t timer;    /* idle, then header timeout, then the drain after an error */
    int open_handles;    /* stream and timer: freed when both are closed */
    http_request http;
    char *token;        /* a TCP connection's copy of its listener's bearer token */
    api_route_fn route; /* the server's, or the fuzzer's */
    void *route_ctx;
    api_open_fn open;
    bool is_tcp;
    bool denied; /* the Unix peer failed the credential check */
    bool over_limit;  /* accepted beyond service.max_connections: answered 503 */
    api_tally *tally; /* counts this connection until its handles are closed */
    bool responded, closed, held, dispatched, draining;
    bool (*on_gone)(void *ctx, request *r); /* a held request's client went away */
    void *gone_ctx;
    size_t drained;
    int answered_status; /* what was answered (detached requests) */
    bool keep_alive;     /* the answer being written keeps the connection */
    bool peer_done;      /* the client closed its side: answer what was sent, then close */
    bool started;        /* a byte of the current request has arrived */
    bool reading_paused; /* pending is full */
    bool streaming;      /* an event stream: the connection carries it until closed */
    char *pending;       /* bytes after the current request (pipelined), not parsed yet */
    size_t pending_len;
};

typedef struct reply {
    uv_write_t req;
    uv_shutdown_t shutdown;
    char *msg;
    request *r;
    bool drain; /* an error answer: keep reading (and dropping) after it */
} reply;

static void free_request(request *r)
{
    http_request_free(&r->http);
    free(r->pending);
    free(r->token);
    free(r);
}

static void handle_closed(uv_handle_t *h)
{
    request *r = h->data;
    if (--r->open_handles > 0)
        return;
    r->closed = true;
    api_tally_leave(r->tally); /* its descriptor is free again */
    r->tally = NULL;
    if (!r->held || r->responded)
        free_request(r);
}

static void close_request(request *r)
{
    if (!r->stream)
        return;
    if (r->streaming) {
        /* Whoever feeds the stream lets go of it before the request goes. */
        r->streaming = false;
        if (r->on_gone)
            r->on_gone(r->gone_ctx, r);
    }
    if (!uv_is_closing((uv_handle_t *)r->stream))
        uv_close((uv_handle_t *)r->stream, handle_closed);
    if (!uv_is_closing((uv_handle_t *)&r->timer))
        uv_close((uv_handle_t *)&r->timer, handle_closed);
}

static void drain_over(uv_timer_t *t)
{
    close_request(t->data);
}

static void on_shutdown(uv_shutdown_t *s, int status)
{
    (void)status;
    reply *rep = s->data;
    request *r = rep->r;
    free(rep->msg);
    free(rep);
    /* The client may still be sending what we refused: read and drop it for
     * a moment, so that closing does not reset the connection before the
     * client has read our answer. */
    if (uv_timer_start(&r->timer, drain_over, DRAIN_TIMEOUT_MS, 0) < 0)
        close_request(r);
}

static void next_request(request *r);

static void on_written(uv_write_t *w, int status)
{
    reply *rep = w->data;
    request *r = rep->r;
    if (rep->drain && status == 0 && !r->closed) {
        r->draining = true;
        rep->shutdown.data = rep;
        if (uv_shutdown(&rep->shutdown, r->stream, on_shutdown) == 0)
            return;
    }
    bool next = !rep->drain && status == 0 && r->keep_alive && !r->closed;
    free(rep->msg);
    free(rep);
    if (next)
        next_request(r);
    else
        close_request(r);
}

static const char *status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    }
    return "Error";
}

void request_respond_bytes(request *r, int status, const char *type, const char *headers,
                           const void *body, size_t len)
{
    if (r->responded)
        return;
    r->responded = true;
    r->answered_status = status;
    if (!r->stream)
        return;      /* detached: the status is all that is kept */
    if (r->closed) { /* the client went away while we waited */
        free_request(r);
        return;
    }
    uv_timer_stop(&r->timer);
    /* Answers sent before the whole request was read (refusals) close the
     * connection; so does a client that asked for it or has closed its side
     * with nothing more sent, and one over service.max_connections. */
    r->keep_alive =
        r->dispatched && r->http.keep_alive && !(r->peer_done && !r->pending_len) && !r->over_limit;
    reply *rep = calloc(1, sizeof *rep);
    char *head = NULL;
    /* No answer may be sniffed into another type, nor kept by a cache: they
     * are the service's state now. */
    int head_len = asprintf(&head,
                            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                            "X-Content-Type-Options: nosniff\r\n%sConnection: %s\r\n\r\n",
                            status, status_text(status), type, len,
                            headers ? headers : "Cache-Control: no-store\r\n",
                            r->keep_alive ? "keep-alive" : "close");
    if (!rep || head_len < 0 || !(rep->msg = malloc((size_t)head_len + len))) {
        if (head_len >= 0)
            free(head);
        free(rep);
        close_request(r);
        return;
    }
    memcpy(rep->msg, head, (size_t)head_len);
    if (len)
        memcpy(rep->msg + head_len, body, len);
    free(head);
    rep->r = r;
    rep->req.data = rep;
    /* Answers sent before the whole request was read (refusals) drain first. */
    rep->drain = !r->dispatched;
    uv_buf_t buf = uv_buf_init(rep->msg, (unsigned)((size_t)head_len + len));
    if (uv_write(&rep->req, r->stream, &buf, 1, on_written) < 0) {
        free(rep->msg);
        free(rep);
        close_request(r);
    }
}

void request_respond_text(request *r, int status, const char *type, const char *text)
{
    request_respond_bytes(r, status, type, NULL, text, strlen(text));
}

/* A JSON answer with the given header lines (NULL: the default ones). */
static void respond_json_with(request *r, int status, const char *headers, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(body);
    char *line = NULL;
    if (asprintf(&line, "%s\n", text ? text : "{}") < 0)
        line = NULL;
    const char *answer = line ? line : "{}\n";
    request_respond_bytes(r, status, "application/json", headers, answer, strlen(answer));
    free(text);
    free(line);
}

void request_respond_json(request *r, int status, json_t *body)
{
    respond_json_with(r, status, NULL, body);
}

void request_hold(request *r)
{
    r->held = true;
}

/* ---- event streams (server-sent events) ---------------------------------------- */

/* A stream's writes that have not reached the client; a subscriber that
 * falls this far behind is dropped rather than buffered without bound. */
#define STREAM_BACKLOG_MAX (1024 * 1024)

typedef struct stream_write {
    uv_write_t req;
    char *text;
} stream_write;

static void stream_written(uv_write_t *w, int status)
{
    stream_write *sw = w->data;
    free(sw->text);
    free(sw);
    (void)status; /* a failed write shows up as the read side ending */
}

static int stream_send(request *r, const char *text)
{
    if (!r->streaming || r->closed || !r->stream)
        return -EPIPE;
    if (uv_stream_get_write_queue_size(r->stream) > STREAM_BACKLOG_MAX) {
        svc_log("warning", "event=event-stream-dropped reason=\"the client reads too slowly\"");
        close_request(r);
        return -EPIPE;
    }
    stream_write *sw = calloc(1, sizeof *sw);
    if (!sw || !(sw->text = strdup(text))) {
        free(sw);
        close_request(r);
        return -ENOMEM;
    }
    sw->req.data = sw;
    uv_buf_t buf = uv_buf_init(sw->text, (unsigned)strlen(sw->text));
    if (uv_write(&sw->req, r->stream, &buf, 1, stream_written) < 0) {
        free(sw->text);
        free(sw);
        close_request(r);
        return -EPIPE;
    }
    return 0;
}

int request_stream_begin(request *r, bool (*on_gone)(void *ctx, request *r), void *ctx)
{
    if (r->responded)
        return -EALREADY;
    r->responded = true;
    r->answered_status = 200;
    if (!r->stream || r->closed)
        return -ENOTCONN; /* detached (fuzzing), or the client is gone */
    uv_timer_stop(&r->timer);
    r->streaming = true;
    r->on_gone = on_gone;
    r->gone_ctx = ctx;
    /* Pipelined requests after this one are never answered: the stream is
     * the connection's last answer. */
    free(r->pending);
    r->pending = NULL;
    r->pending_len = 0;
    return stream_send(r, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                          "Cache-Control: no-cache\r\nConnection: close\r\n\r\n");
}

int request_stream_write(request *r, const char *text)
{
    return stream_send(r, text);
}

void request_stream_end(request *r)
{
    close_request(r);
}

void request_on_gone(request *r, bool (*fn)(void *ctx, request *r), void *ctx)
{
    r->on_gone = fn;
    r->gone_ctx = ctx;
}
const char *request_method(const request *r)
{
    return r->http.method;
}
const char *request_body(const request *r)
{
    return r->http.body ? r->http.body : "";
}
const char *request_path(const request *r)
{
    return r->http.path;
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

const char *request_query(const request *r, const char *name, char *buf, size_t len)
{
    const char *q = strchr(r->http.url, '?');
    size_t nlen = strlen(name);
    while (q && *q) {
        q++;
        if (!strncmp(q, name, nlen) && (q[nlen] == '=' || q[nlen] == '&' || !q[nlen])) {
            const char *v = q[nlen] == '=' ? q + nlen + 1 : q + nlen;
            size_t vlen = strcspn(v, "&"), o = 0;
            for (size_t i = 0; i < vlen && o + 1 < len; i++) {
                bool escape = v[i] == '%' && i + 2 < vlen;
                int hi = escape ? hex_digit(v[i + 1]) : -1, lo = escape ? hex_digit(v[i + 2]) : -1;
                if (hi >= 0 && lo >= 0 && (hi || lo)) {
                    buf[o++] = (char)(hi << 4 | lo);
                    i += 2;
                } else {
                    buf[o++] = v[i];
                }
            }
            buf[o] = '\0';
            return buf;
        }
        q = strchr(q, '&');
    }
    return NULL;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    buf->base = malloc(suggested);
    buf->len = buf->base ? suggested : 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

/* A whole request: checks who asks, then routes it. */
static void dispatch(request *r)
{
    r->dispatched = true;
    if (r->stream)
        uv_timer_stop(&r->timer); /* a held answer (acquire) may take longer */
    if (r->over_limit) {
        char why[400];
        snprintf(why, sizeof why,
                 "too many connections: %u are open and at most %u are served "
                 "(service.max_connections, lower when the open-files limit is low); reuse "
                 "kept connections (HTTP/1.1 keep-alive), close idle ones, or raise the limit",
                 r->tally ? api_tally_open(r->tally) : 0, r->tally ? api_tally_max(r->tally) : 0);
        respond_json_with(r, 503, "Cache-Control: no-store\r\nRetry-After: 1\r\n",
                          json_pack("{s:s}", "error", why));
        return;
    }
    if (r->denied) {
        request_respond_json(r, 403,
                             json_pack("{s:s}", "error",
                                       "not allowed: the control socket is for root and "
                                       "group vdipool"));
        return;
    }
    /* Content without data (the dashboard's page and script) is served
     * before the token is asked for: the page sends it with every API call
     * it makes. */
    if (r->open && r->open(r))
        return;
    if (!api_browser_request_allowed(&r->http)) {
        request_respond_json(
            r, 403,
            json_pack("{s:s}", "error",
                      "a browser's request from another origin, or to a host name that is not "
                      "loopback, is refused: open the dashboard at http://127.0.0.1:PORT/ "
                      "(through an SSH forward from elsewhere)"));
        return;
    }
    if (r->is_tcp) {
        if (!api_token_ok(r->token ? r->token : "", r->http.authorization)) {
            request_respond_json(r, 401,
                                 json_pack("{s:s}", "error", "missing or wrong bearer token"));
            return;
        }
    }
    r->route(r->route_ctx, r);
}

/* Keeps bytes that arrived after the current request, for the next one. */
static void keep_pending(request *r, const char *data, size_t len)
{
    if (!len)
        return;
    char *p = realloc(r->pending, r->pending_len + len);
    if (!p) {
        svc_log("error", "event=connection-dropped reason=\"out of memory\"");
        close_request(r);
        return;
    }
    memcpy(p + r->pending_len, data, len);
    r->pending = p;
    r->pending_len += len;
    if (r->pending_len > PENDING_MAX && r->stream && !r->reading_paused) {
        uv_read_stop(r->stream);
        r->reading_paused = true;
    }
}

static void header_timeout(uv_timer_t *t);

/* Feeds bytes to the request; answers a refusal, routes a whole request.
 * Bytes after a whole request wait for the next one. */
static void feed(request *r, const char *data, size_t len)
{
    if (r->streaming)
        return; /* a subscriber has nothing more to ask on this connection */
    if (r->responded && !r->dispatched)
        return; /* refused: what follows is dropped, and the connection closes */
    if (r->dispatched) {
        keep_pending(r, data, len);
        return;
    }
    if (!r->started && len && r->stream) {
        r->started = true; /* from here the whole request has 10 s */
        uv_timer_start(&r->timer, header_timeout, HEADER_TIMEOUT_MS, 0);
    }
    int rc = http_request_feed(&r->http, data, len);
    if (rc > 0) {
        keep_pending(r, data + r->http.used, len - r->http.used);
        dispatch(r);
    } else if (rc < 0) {
        request_respond_json(r, r->http.error_status,
                             json_pack("{s:s}", "error", r->http.error_text));
    }
}

static void idle_timeout(uv_timer_t *t)
{
    close_request(t->data); /* no new request on a kept connection */
}

/* The answer to the current request is written and the connection kept:
 * the same object takes the next request, starting with what the client
 * already sent. */
static void next_request(request *r)
{
    http_request_free(&r->http);
    http_request_init(&r->http);
    r->responded = r->held = r->dispatched = r->started = false;
    r->on_gone = NULL;
    r->gone_ctx = NULL;
    r->answered_status = 0;
    char *bytes = r->pending;
    size_t len = r->pending_len;
    r->pending = NULL;
    r->pending_len = 0;
    if (r->reading_paused && uv_read_start(r->stream, on_alloc, on_read) == 0)
        r->reading_paused = false;
    if (uv_timer_start(&r->timer, idle_timeout, KEEPALIVE_IDLE_MS, 0) < 0) {
        free(bytes);
        close_request(r);
        return;
    }
    feed(r, bytes, len);
    free(bytes);
    /* The client has closed its side and sent no whole request more. */
    if (r->peer_done && !r->dispatched && !r->responded)
        close_request(r);
}


static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    request *r = s->data;
    if (n > 0 && r->draining) {
        r->drained += (size_t)n;
        if (r->drained > DRAIN_MAX)
            close_request(r);
    } else if (n > 0) {
        feed(r, buf->base, (size_t)n);
    } else if (n < 0) {
        uv_read_stop(s);
        r->peer_done = true;
        if (r->streaming) {
            close_request(r); /* a subscriber went away */
        } else if (r->held && !r->responded) {
            /* The client went away while its answer was pending: the route
             * may withdraw the work (an acquire's waiter); else the answer,
             * when it comes, frees the request. */
            if (r->on_gone && r->on_gone(r->gone_ctx, r)) {
                r->responded = true;
                svc_log("info", "event=client-gone path=%s; its waiting request was withdrawn",
                        r->http.path);
            }
            close_request(r);
        } else if ((!r->responded && !r->dispatched) || r->draining) {
            close_request(r); /* nothing (whole) to answer */
        }
        /* Else an answer is being written: on_written closes or, with
         * pipelined requests still pending, answers them first. */
    }
    free(buf->base);
}

static void header_timeout(uv_timer_t *t)
{
    request *r = t->data;
    if (!r->dispatched && !r->responded)
        request_respond_json(r, 408,
                             json_pack("{s:s}", "error", "the request did not arrive within 10 s"));
}

void api_accept(uv_stream_t *server, uv_loop_t *loop, const api_routes *routes, bool tcp)
{
    request *r = calloc(1, sizeof *r);
    if (!r) {
        svc_log("error", "event=connection-dropped reason=\"out of memory\"");
        return;
    }
    if (tcp && !(r->token = strdup(routes->token ? routes->token : ""))) {
        free(r);
        svc_log("error", "event=connection-dropped reason=\"out of memory\"");
        return;
    }
    r->route = routes->route;
    r->route_ctx = routes->ctx;
    r->open = routes->open;
    r->is_tcp = tcp;
    r->stream = (uv_stream_t *)&r->handle;
    int rc = tcp ? uv_tcp_init(loop, &r->handle.tcp) : uv_pipe_init(loop, &r->handle.pipe, 0);
    if (rc < 0) {
        free(r->token);
        free(r);
        return;
    }
    r->open_handles = 1;
    r->stream->data = r;
    if (uv_timer_init(loop, &r->timer) == 0) {
        r->open_handles++;
        r->timer.data = r;
    } else {
        r->closed = true; /* no timer: treat the connection as gone at once */
        uv_close((uv_handle_t *)r->stream, handle_closed);
        return;
    }
    if (uv_accept(server, r->stream) < 0) {
        close_request(r);
        return;
    }
    http_request_init(&r->http);
    /* One beyond the limit has its request read and is answered 503
     * (closing at once would look like a failed connect). */
    if ((r->tally = routes->tally))
        r->over_limit = !api_tally_admit(r->tally, uv_now(loop));
    /* A refused peer still gets its request read and a 403 answer: closing
     * at once would look like a failed connect to the client. */
    r->denied = !tcp && !api_peer_allowed(&r->handle.pipe);
    if (uv_timer_start(&r->timer, header_timeout, HEADER_TIMEOUT_MS, 0) < 0 ||
        uv_read_start(r->stream, on_alloc, on_read) < 0)
        close_request(r);
}

int api_request_fuzz(const char *data, size_t len, api_route_fn route, api_open_fn open, void *ctx,
                     uv_loop_t *loop)
{
    request *r = calloc(1, sizeof *r);
    if (!r)
        return -1;
    r->route = route;
    r->route_ctx = ctx;
    r->open = open;
    http_request_init(&r->http);
    feed(r, data, len);
    if (r->held && !r->responded && loop)
        uv_run(loop, UV_RUN_DEFAULT); /* answers from workers (reload, metrics) */
    int status = r->responded ? r->answered_status : 0;
    free_request(r);
    return status;
}
