/* libvirt_events.c — the bridge between libvirt and the libuv loop.
 *
 * libvirt's default event loop runs on one dedicated thread. Its callbacks
 * (domain lifecycle events, connection closed) do nothing but queue a small
 * record and wake the loop with uv_async_send; the loop thread alone acts on
 * them. Connecting is blocking, so it runs on the libuv thread pool, with
 * back-off while libvirtd is away; running desktops are never touched by a
 * reconnect, only re-read. */
#include "service.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { EV_LIFECYCLE, EV_CLOSED } event_kind;

typedef struct queued_event {
    event_kind kind;
    char name[96];
    int event, detail;
} queued_event;

static struct {
    pthread_t thread;
    bool running;
    pthread_mutex_t lock;
    queued_event *q;
    size_t n, cap;
    uv_async_t wake;
    service *svc;
    int lifecycle_cb;
    virConnectPtr registered; /* the connection the callbacks are on */
} bridge = { .lock = PTHREAD_MUTEX_INITIALIZER, .lifecycle_cb = -1 };

static void *event_thread(void *arg)
{
    (void)arg;
    while (bridge.running)
        if (virEventRunDefaultImpl() < 0)
            break;
    return NULL;
}

static void push(event_kind kind, const char *name, int event, int detail)
{
    pthread_mutex_lock(&bridge.lock);
    if (bridge.n == bridge.cap) {
        size_t cap = bridge.cap ? bridge.cap * 2 : 64;
        queued_event *q = realloc(bridge.q, cap * sizeof *q);
        if (!q) {
            pthread_mutex_unlock(&bridge.lock);
            return;
        }
        bridge.q = q;
        bridge.cap = cap;
    }
    queued_event *e = &bridge.q[bridge.n++];
    e->kind = kind;
    snprintf(e->name, sizeof e->name, "%s", name ? name : "");
    e->event = event;
    e->detail = detail;
    pthread_mutex_unlock(&bridge.lock);
    uv_async_send(&bridge.wake);
}

static int on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *opaque)
{
    (void)conn;
    (void)opaque;
    push(EV_LIFECYCLE, virDomainGetName(dom), event, detail);
    return 0;
}

static void on_close(virConnectPtr conn, int reason, void *opaque)
{
    (void)conn;
    (void)opaque;
    push(EV_CLOSED, NULL, reason, 0);
}

static void schedule_reconnect(service *svc);

static void drain(uv_async_t *h)
{
    service *svc = h->data;
    pthread_mutex_lock(&bridge.lock);
    queued_event *q = bridge.q;
    size_t n = bridge.n;
    bridge.q = NULL;
    bridge.n = bridge.cap = 0;
    pthread_mutex_unlock(&bridge.lock);
    for (size_t i = 0; i < n; i++) {
        queued_event *e = &q[i];
        if (e->kind == EV_CLOSED) {
            if (svc->conn) {
                svc_log("warning", "event=libvirt-disconnected reason=%d; running desktops are "
                                   "left alone, reconnecting",
                        e->event);
                virConnectPtr old = svc->conn;
                svc->conn = NULL;
                bridge.registered = NULL;
                bridge.lifecycle_cb = -1;
                virConnectClose(old);
                schedule_reconnect(svc);
            }
            continue;
        }
        /* A destroy also emits SHUTDOWN/HOST: act on STOPPED only. */
        if (e->event == VIR_DOMAIN_EVENT_STOPPED)
            service_on_domain_stopped(svc, e->name, e->detail);
    }
    free(q);
}

int libvirt_events_start(service *svc)
{
    if (virEventRegisterDefaultImpl() < 0)
        return -1;
    bridge.svc = svc;
    uv_async_init(svc->loop, &bridge.wake, drain);
    bridge.wake.data = svc;
    bridge.running = true;
    if (pthread_create(&bridge.thread, NULL, event_thread, NULL) != 0)
        return -1;
    pthread_detach(bridge.thread);
    return 0;
}

void libvirt_events_stop(void)
{
    bridge.running = false;
    uv_close((uv_handle_t *)&bridge.wake, NULL);
}

/* ---- connecting ------------------------------------------------------------ */

typedef struct connect_req {
    uv_work_t work;
    service *svc;
    char uri[512];
    virConnectPtr conn;
    char error[512];
} connect_req;

static void connect_work(uv_work_t *w)
{
    connect_req *r = w->data;
    r->conn = virConnectOpen(r->uri);
    if (!r->conn) {
        virErrorPtr e = virGetLastError();
        snprintf(r->error, sizeof r->error, "%s", e && e->message ? e->message : "unknown error");
        return;
    }
    /* Keepalive: a libvirtd that went away is noticed within ~15 s. */
    virConnectSetKeepAlive(r->conn, 5, 3);
    if (virConnectRegisterCloseCallback(r->conn, on_close, NULL, NULL) < 0 ||
        (bridge.lifecycle_cb = virConnectDomainEventRegisterAny(
             r->conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE, VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle),
             NULL, NULL)) < 0) {
        virErrorPtr e = virGetLastError();
        snprintf(r->error, sizeof r->error, "cannot subscribe to domain events: %s",
                 e && e->message ? e->message : "unknown error");
        virConnectClose(r->conn);
        r->conn = NULL;
    }
}

static void reconnect_timer(uv_timer_t *t)
{
    service *svc = t->data;
    uv_close((uv_handle_t *)t, (uv_close_cb)free);
    libvirt_connect(svc);
}

static void schedule_reconnect(service *svc)
{
    if (svc->stopping)
        return;
    unsigned delay = svc->reconnect_delay_ms ? svc->reconnect_delay_ms : 500;
    svc->reconnect_delay_ms = delay * 2 > 30000 ? 30000 : delay * 2;
    uv_timer_t *t = malloc(sizeof *t);
    if (!t)
        return;
    uv_timer_init(svc->loop, t);
    t->data = svc;
    uv_timer_start(t, reconnect_timer, delay, 0);
}

static void connect_done(uv_work_t *w, int status)
{
    (void)status;
    connect_req *r = w->data;
    service *svc = r->svc;
    svc->connecting = false;
    if (!r->conn) {
        svc_log("error", "event=libvirt-connect-failed uri=%s error=\"%s\"; retrying", r->uri,
                r->error);
        schedule_reconnect(svc);
    } else if (svc->stopping) {
        virConnectClose(r->conn);
    } else {
        svc->conn = r->conn;
        bridge.registered = r->conn;
        svc->reconnect_delay_ms = 0;
        svc_log("info", "event=libvirt-connected uri=%s", r->uri);
        service_on_connected(svc);
    }
    free(r);
}

void libvirt_connect(service *svc)
{
    if (svc->conn || svc->connecting || svc->stopping)
        return;
    connect_req *r = calloc(1, sizeof *r);
    if (!r)
        return;
    r->svc = svc;
    r->work.data = r;
    snprintf(r->uri, sizeof r->uri, "%s", vdi_config_service(svc->config)->libvirt_uri);
    svc->connecting = true;
    uv_queue_work(svc->loop, &r->work, connect_work, connect_done);
}
