/* events.c — GET /v1/events: desktop state changes as server-sent events,
 * so that a broker learns of a desktop turning ready, assigned or ended
 * without polling.
 *
 *   GET /v1/events[?pool=NAME]   text/event-stream, until either side closes
 *
 * First an `event: hello` whose data is the status (every pool's counts),
 * then one `event: desktop` per change of a desktop's state, its data the
 * desktop as GET /v1/desktops/{name} shows it plus `previous_state`; `id:`
 * numbers events in order (there is no replay: after a reconnect, read the
 * pools again). A comment line every 15 s keeps idle connections alive.
 * At most EVENTS_MAX_SUBSCRIBERS streams; a subscriber more than 1 MiB
 * behind is dropped (api_http.c). Everything here runs on the loop. */
#include "api.h"
#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EVENTS_MAX_SUBSCRIBERS 64
#define EVENTS_PING_S 15

struct subscriber {
    request *r;
    char *pool; /* only this pool's desktops, or NULL for all */
    subscriber *next;
};

static bool subscriber_gone(void *ctx, request *r)
{
    service *svc = ctx;
    for (subscriber **s = &svc->subscribers; *s; s = &(*s)->next)
        if ((*s)->r == r) {
            subscriber *gone = *s;
            *s = gone->next;
            free(gone->pool);
            free(gone);
            svc->nsubscribers--;
            break;
        }
    return true;
}

static void send_event(request *r, uint64_t id, const char *type, json_t *data)
{
    char *text = json_dumps(data, JSON_COMPACT | JSON_PRESERVE_ORDER);
    char *event = NULL;
    if (text && asprintf(&event, "id: %llu\nevent: %s\ndata: %s\n\n", (unsigned long long)id, type,
                         text) < 0)
        event = NULL;
    if (event)
        request_stream_write(r, event);
    else
        request_stream_end(r); /* out of memory: better no stream than a gap */
    free(text);
    free(event);
}

void events_subscribe(service *svc, request *r, const char *pool_name)
{
    if (pool_name && !service_find_pool(svc, pool_name)) {
        request_respond_json(r, 404, json_pack("{s:s}", "error", "no such pool"));
        return;
    }
    if (svc->nsubscribers >= EVENTS_MAX_SUBSCRIBERS) {
        char msg[128];
        snprintf(msg, sizeof msg, "already %d event streams; close one first",
                 EVENTS_MAX_SUBSCRIBERS);
        request_respond_json(r, 503, json_pack("{s:s}", "error", msg));
        return;
    }
    subscriber *s = calloc(1, sizeof *s);
    if (!s || (pool_name && !(s->pool = strdup(pool_name)))) {
        free(s);
        request_respond_json(r, 500, json_pack("{s:s}", "error", "out of memory"));
        return;
    }
    if (request_stream_begin(r, subscriber_gone, svc) < 0) {
        free(s->pool);
        free(s); /* no connection to stream on; it was never listed */
        return;
    }
    s->r = r;
    s->next = svc->subscribers;
    svc->subscribers = s;
    svc->nsubscribers++;
    svc_log("info", "event=events-subscribed pool=%s subscribers=%u", pool_name ? pool_name : "*",
            svc->nsubscribers);
    if (request_stream_write(r, "retry: 2000\n\n") == 0) {
        json_t *hello = status_json(svc);
        send_event(r, svc->event_seq, "hello", hello);
        json_decref(hello);
    }
}

void events_desktop_changed(desktop *d, desktop_state from)
{
    service *svc = d->pool->svc;
    if (!svc->subscribers || from == d->state)
        return;
    json_t *data = desktop_json(d);
    json_object_set_new(data, "previous_state", json_string(desktop_state_name(from)));
    uint64_t id = ++svc->event_seq;
    for (subscriber *s = svc->subscribers, *next; s; s = next) {
        next = s->next; /* a write that fails drops s */
        if (!s->pool || !strcmp(s->pool, d->pool->name))
            send_event(s->r, id, "desktop", data);
    }
    json_decref(data);
}

void events_tick(service *svc)
{
    int64_t now = service_now(svc);
    if (!svc->subscribers || now < svc->events_ping_at)
        return;
    svc->events_ping_at = now + EVENTS_PING_S;
    for (subscriber *s = svc->subscribers, *next; s; s = next) {
        next = s->next;
        request_stream_write(s->r, ": keep-alive\n\n");
    }
}

void events_stop(service *svc)
{
    while (svc->subscribers)
        request_stream_end(svc->subscribers->r); /* subscriber_gone unlinks it */
}
