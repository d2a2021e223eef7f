/* libvirt_events.c — the bridge between libvirt and the libuv loop.
 *
 * libvirt's default event loop runs on one dedicated thread. Its callbacks
 * (domain lifecycle events, connection closed) do nothing but queue a small
 * record under `lock` and wake the loop with uv_async_send; the loop thread
 * alone acts on them, through the callbacks the service handed in.
 * Connecting is blocking, so it runs on the libuv thread pool, with back-off
 * while libvirtd is away; running desktops are never touched by a
 * reconnect, only re-read (by the service, on `connected`). */
#include "libvirt_events.h"
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { EV_LIFECYCLE, EV_CLOSED, EV_IO_ERROR, EV_BLOCK_THRESHOLD, EV_AGENT } event_kind;

#define NCALLBACKS 4 /* lifecycle, I/O error, block threshold, agent */

typedef struct queued_event {
    event_kind kind;
    char *name;
    char *text;              /* EV_IO_ERROR: QEMU's reason ("enospc") */
    unsigned long long a, b; /* EV_BLOCK_THRESHOLD: threshold, excess */
    int event, detail;
    virConnectPtr conn; /* which connection it came from (not a reference) */
} queued_event;

struct libvirt_bridge {
    /* Immutable after libvirt_bridge_new. */
    uv_loop_t *loop;
    libvirt_bridge_callbacks cb;
    void *ctx;
    char *uri;
    /* Owned by the loop thread. */
    virConnectPtr conn;  /* our reference; NULL while disconnected */
    int callback_ids[NCALLBACKS]; /* on conn; -1 when not registered */
    bool connecting, stopping;
    unsigned reconnect_delay_ms;
    uv_timer_t reconnect;
    uv_async_t wake;
    /* Shared with the event thread, under lock. */
    pthread_mutex_t lock;
    bool closed; /* stopped: the wake handle is gone, drop events */
    queued_event *q;
    size_t n, cap;
};

/* The process's one libvirt event thread. */
static atomic_bool event_thread_running;

static void *event_thread(void *arg)
{
    (void)arg;
    while (atomic_load(&event_thread_running))
        if (virEventRunDefaultImpl() < 0)
            break;
    return NULL;
}

static int start_event_thread(void)
{
    static bool started;
    if (started)
        return 0;
    if (virEventRegisterDefaultImpl() < 0)
        return -1;
    atomic_store(&event_thread_running, true);
    pthread_t thread;
    if (pthread_create(&thread, NULL, event_thread, NULL) != 0)
        return -1;
    pthread_setname_np(thread, "vdi-lv-events"); /* top -H, perf: who spends what */
    pthread_detach(thread);
    started = true;
    return 0;
}

/* On libvirt's event thread. */
static queued_event *push_begin(libvirt_bridge *b)
{
    pthread_mutex_lock(&b->lock);
    if (b->closed) {
        pthread_mutex_unlock(&b->lock);
        return NULL;
    }
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        queued_event *q = realloc(b->q, cap * sizeof *q);
        if (!q) {
            pthread_mutex_unlock(&b->lock);
            fprintf(stderr, "vdipoold: out of memory queueing a libvirt event\n");
            return NULL;
        }
        b->q = q;
        b->cap = cap;
    }
    queued_event *e = &b->q[b->n++];
    memset(e, 0, sizeof *e);
    return e;
}

static void push_end(libvirt_bridge *b)
{
    pthread_mutex_unlock(&b->lock);
    uv_async_send(&b->wake);
}

static void push(libvirt_bridge *b, event_kind kind, virConnectPtr conn, const char *name,
                 int event, int detail)
{
    queued_event *e = push_begin(b);
    if (!e)
        return;
    e->kind = kind;
    e->conn = conn;
    e->name = name ? strdup(name) : NULL;
    e->event = event;
    e->detail = detail;
    push_end(b);
}

static int on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *opaque)
{
    push(opaque, EV_LIFECYCLE, conn, virDomainGetName(dom), event, detail);
    return 0;
}

static void on_io_error(virConnectPtr conn, virDomainPtr dom, const char *src_path,
                        const char *dev_alias, int action, const char *reason, void *opaque)
{
    (void)src_path;
    (void)dev_alias;
    libvirt_bridge *b = opaque;
    queued_event *e = push_begin(b);
    if (!e)
        return;
    e->kind = EV_IO_ERROR;
    e->conn = conn;
    e->name = strdup(virDomainGetName(dom));
    e->text = strdup(reason ? reason : "");
    e->event = action;
    push_end(b);
}

static void on_block_threshold(virConnectPtr conn, virDomainPtr dom, const char *dev,
                               const char *path, unsigned long long threshold,
                               unsigned long long excess, void *opaque)
{
    (void)path;
    /* libvirt reports a threshold twice, by target ("vda") and by image
     * index ("vda[1]"): one is enough. */
    if (dev && strchr(dev, '['))
        return;
    libvirt_bridge *b = opaque;
    queued_event *e = push_begin(b);
    if (!e)
        return;
    e->kind = EV_BLOCK_THRESHOLD;
    e->conn = conn;
    e->name = strdup(virDomainGetName(dom));
    e->a = threshold;
    e->b = excess;
    push_end(b);
}

/* The guest agent in a domain connected or went away (libvirt watches its
 * channel; no polling). */
static void on_agent(virConnectPtr conn, virDomainPtr dom, int state, int reason, void *opaque)
{
    push(opaque, EV_AGENT, conn, virDomainGetName(dom), state, reason);
}

static void on_close(virConnectPtr conn, int reason, void *opaque)
{
    push(opaque, EV_CLOSED, conn, NULL, reason, 0);
}

static void schedule_reconnect(libvirt_bridge *b);

static void drop_connection(libvirt_bridge *b)
{
    virConnectPtr old = b->conn;
    b->conn = NULL;
    for (int i = 0; i < NCALLBACKS; i++) {
        if (b->callback_ids[i] >= 0)
            virConnectDomainEventDeregisterAny(old, b->callback_ids[i]); /* fails on a dead link */
        b->callback_ids[i] = -1;
    }
    virConnectUnregisterCloseCallback(old, on_close);
    virConnectClose(old);
}

static void drain(uv_async_t *h)
{
    libvirt_bridge *b = h->data;
    pthread_mutex_lock(&b->lock);
    queued_event *q = b->q;
    size_t n = b->n;
    b->q = NULL;
    b->n = b->cap = 0;
    pthread_mutex_unlock(&b->lock);
    for (size_t i = 0; i < n; i++) {
        queued_event *e = &q[i];
        if (e->kind == EV_CLOSED && b->conn && e->conn == b->conn && !b->stopping) {
            svc_log("warning",
                    "event=libvirt-disconnected uri=%s reason=%d; running desktops "
                    "are left alone, reconnecting",
                    b->uri, e->event);
            drop_connection(b);
            b->cb.disconnected(b->ctx);
            schedule_reconnect(b);
        } else if (e->kind == EV_LIFECYCLE && e->conn == b->conn && e->name) {
            b->cb.domain_event(b->ctx, e->name, e->event, e->detail);
        } else if (e->kind == EV_IO_ERROR && e->conn == b->conn && e->name && e->text) {
            b->cb.io_error(b->ctx, e->name, e->text);
        } else if (e->kind == EV_BLOCK_THRESHOLD && e->conn == b->conn && e->name) {
            b->cb.block_threshold(b->ctx, e->name, e->a, e->b);
        } else if (e->kind == EV_AGENT && e->conn == b->conn && e->name && b->cb.agent_event) {
            b->cb.agent_event(b->ctx, e->name,
                              e->event == VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED);
        }
        free(e->name);
        free(e->text);
    }
    free(q);
}

/* ---- connecting, on a worker --------------------------------------------------- */

typedef struct connect_req {
    uv_work_t work;
    libvirt_bridge *b;
    char *uri;
    virConnectPtr conn; /* result: a reference, or NULL */
    int callback_ids[NCALLBACKS];
    char error[512];
} connect_req;

static void connect_work(uv_work_t *w)
{
    connect_req *r = w->data;
    for (int i = 0; i < NCALLBACKS; i++)
        r->callback_ids[i] = -1;
    r->conn = virConnectOpen(r->uri);
    if (!r->conn) {
        virErrorPtr e = virGetLastError();
        snprintf(r->error, sizeof r->error, "%s", e && e->message ? e->message : "unknown error");
        return;
    }
    /* Keepalive: a libvirtd that went away is noticed within ~15 s. */
    if (virConnectSetKeepAlive(r->conn, 5, 3) < 0)
        svc_log("warning", "event=libvirt-keepalive-not-set uri=%s", r->uri);
    if (virConnectRegisterCloseCallback(r->conn, on_close, r->b, NULL) < 0 ||
        (r->callback_ids[0] = virConnectDomainEventRegisterAny(
             r->conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE, VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle),
             r->b, NULL)) < 0 ||
        (r->callback_ids[1] = virConnectDomainEventRegisterAny(
             r->conn, NULL, VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON,
             VIR_DOMAIN_EVENT_CALLBACK(on_io_error), r->b, NULL)) < 0 ||
        (r->callback_ids[2] = virConnectDomainEventRegisterAny(
             r->conn, NULL, VIR_DOMAIN_EVENT_ID_BLOCK_THRESHOLD,
             VIR_DOMAIN_EVENT_CALLBACK(on_block_threshold), r->b, NULL)) < 0) {
        virErrorPtr e = virGetLastError();
        snprintf(r->error, sizeof r->error, "cannot subscribe to domain events: %s",
                 e && e->message ? e->message : "unknown error");
        virConnectClose(r->conn);
        r->conn = NULL;
        return;
    }
    /* Without agent events, pools with ready_when = "agent" never see a
     * desktop become ready; they say so (boot_timeout) rather than the
     * connection failing for every pool. */
    r->callback_ids[3] = virConnectDomainEventRegisterAny(
        r->conn, NULL, VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, VIR_DOMAIN_EVENT_CALLBACK(on_agent),
        r->b, NULL);
    if (r->callback_ids[3] < 0)
        svc_log("warning", "event=agent-events-unavailable uri=%s reason=\"%s\"", r->uri,
                virGetLastError() && virGetLastError()->message ? virGetLastError()->message
                                                                : "unknown");
}

static void connect_done(uv_work_t *w, int status)
{
    (void)status;
    connect_req *r = w->data;
    libvirt_bridge *b = r->b;
    b->connecting = false;
    if (!r->conn) {
        svc_log("error", "event=libvirt-connect-failed uri=%s error=\"%s\"; retrying", r->uri,
                r->error);
        schedule_reconnect(b);
        if (b->cb.connect_failed && !b->stopping)
            b->cb.connect_failed(b->ctx, r->error);
    } else if (b->stopping) {
        virConnectClose(r->conn);
    } else {
        b->conn = r->conn;
        memcpy(b->callback_ids, r->callback_ids, sizeof b->callback_ids);
        b->reconnect_delay_ms = 0;
        svc_log("info", "event=libvirt-connected uri=%s", r->uri);
        if (virConnectRef(b->conn) == 0)
            b->cb.connected(b->ctx, b->conn); /* the service's own reference */
    }
    free(r->uri);
    free(r);
}

static void reconnect_timer(uv_timer_t *t)
{
    libvirt_bridge_connect(t->data);
}

static void schedule_reconnect(libvirt_bridge *b)
{
    if (b->stopping)
        return;
    unsigned delay = b->reconnect_delay_ms ? b->reconnect_delay_ms : 500;
    b->reconnect_delay_ms = delay * 2 > 30000 ? 30000 : delay * 2;
    int rc = uv_timer_start(&b->reconnect, reconnect_timer, delay, 0);
    if (rc < 0)
        svc_log("error", "event=reconnect-not-scheduled reason=\"%s\"; the next tick retries",
                uv_strerror(rc));
}

void libvirt_bridge_connect(libvirt_bridge *b)
{
    if (b->conn || b->connecting || b->stopping)
        return;
    connect_req *r = calloc(1, sizeof *r);
    if (!r || !(r->uri = strdup(b->uri))) {
        free(r);
        svc_log("error", "event=libvirt-connect-failed reason=\"out of memory\"; retrying");
        schedule_reconnect(b);
        return;
    }
    r->b = b;
    r->work.data = r;
    b->connecting = true;
    int rc = uv_queue_work(b->loop, &r->work, connect_work, connect_done);
    if (rc < 0) {
        b->connecting = false;
        free(r->uri);
        free(r);
        svc_log("error", "event=libvirt-connect-failed reason=\"%s\"; retrying", uv_strerror(rc));
        schedule_reconnect(b);
    }
}

libvirt_bridge *libvirt_bridge_new(uv_loop_t *loop, const char *uri,
                                   const libvirt_bridge_callbacks *cb, void *ctx)
{
    if (start_event_thread() < 0)
        return NULL;
    libvirt_bridge *b = calloc(1, sizeof *b);
    if (!b || !(b->uri = strdup(uri))) {
        free(b);
        return NULL;
    }
    b->loop = loop;
    b->cb = *cb;
    b->ctx = ctx;
    for (int i = 0; i < NCALLBACKS; i++)
        b->callback_ids[i] = -1;
    pthread_mutex_init(&b->lock, NULL);
    if (uv_async_init(loop, &b->wake, drain) < 0) {
        free(b->uri);
        free(b);
        return NULL;
    }
    b->wake.data = b;
    if (uv_timer_init(loop, &b->reconnect) < 0) {
        uv_close((uv_handle_t *)&b->wake, NULL); /* the bridge is then left to the process */
        return NULL;
    }
    b->reconnect.data = b;
    return b;
}

bool libvirt_bridge_connected(const libvirt_bridge *b)
{
    return b && b->conn;
}

/* The bridge's handles close with the loop (uv_walk at shutdown); the
 * object itself lives until the process ends, since libvirt's event thread
 * may still hold it as a callback argument. */
void libvirt_bridge_stop(libvirt_bridge *b)
{
    if (!b)
        return;
    b->stopping = true;
    pthread_mutex_lock(&b->lock);
    b->closed = true;
    pthread_mutex_unlock(&b->lock);
    uv_timer_stop(&b->reconnect);
    if (!uv_is_closing((uv_handle_t *)&b->wake))
        uv_close((uv_handle_t *)&b->wake, NULL);
    if (!uv_is_closing((uv_handle_t *)&b->reconnect))
        uv_close((uv_handle_t *)&b->reconnect, NULL);
}

void libvirt_bridge_close(libvirt_bridge *b)
{
    if (b && b->conn)
        drop_connection(b);
}

/* A safety net, called every second: a bridge that is neither connected,
 * connecting nor waiting to reconnect (its timer could not be started)
 * tries again. */
void libvirt_bridge_tick(libvirt_bridge *b)
{
    if (b && !b->conn && !b->connecting && !b->stopping &&
        !uv_is_active((uv_handle_t *)&b->reconnect))
        libvirt_bridge_connect(b);
}
