/* libvirt_events.h — one libvirt connection bridged onto the libuv loop:
 * connecting with back-off, keepalive, and lifecycle events delivered on
 * the loop thread through the callbacks the caller hands in. */
#ifndef VDI_LIBVIRT_EVENTS_H
#define VDI_LIBVIRT_EVENTS_H

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct libvirt_bridge libvirt_bridge;

/* Called on the loop thread. */
typedef struct libvirt_bridge_callbacks {
    /* A new connection; conn is a reference the callee now owns. */
    void (*connected)(void *ctx, virConnectPtr conn);
    /* A connection attempt failed (may be NULL); the bridge retries by itself. */
    void (*connect_failed)(void *ctx, const char *error);
    /* The connection was lost; the bridge reconnects by itself. */
    void (*disconnected)(void *ctx);
    /* A domain lifecycle event (VIR_DOMAIN_EVENT_*). */
    void (*domain_event)(void *ctx, const char *name, int event, int detail);
    /* An I/O error of a domain's disk, with QEMU's reason ("enospc"). */
    void (*io_error)(void *ctx, const char *name, const char *reason);
    /* A disk grew past the threshold set on it. */
    void (*block_threshold)(void *ctx, const char *name, uint64_t threshold, uint64_t excess);
    /* The domain's guest agent connected (true) or disconnected (false). */
    void (*agent_event)(void *ctx, const char *name, bool connected);
} libvirt_bridge_callbacks;

libvirt_bridge *libvirt_bridge_new(uv_loop_t *loop, const char *uri,
                                   const libvirt_bridge_callbacks *cb, void *ctx);
void libvirt_bridge_connect(libvirt_bridge *b);
bool libvirt_bridge_connected(const libvirt_bridge *b);
/* Called every second: reconnects if nothing else will. */
void libvirt_bridge_tick(libvirt_bridge *b);
/* Stops reconnecting and closes the bridge's handles (events are dropped). */
void libvirt_bridge_stop(libvirt_bridge *b);
/* Closes the bridge's own connection (after the loop has ended). */
void libvirt_bridge_close(libvirt_bridge *b);

#endif
