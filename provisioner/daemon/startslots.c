/* startslots.c — service.max_parallel_starts bounds how many domains are
 * being created at once: QEMU launching is the costly part of a start. A
 * start's slot is freed by its worker as soon as the domain exists. What
 * the start does after that (read the display, set the write budget, resume
 * the paused CPUs) are short monitor calls, but on a host busy launching
 * other QEMUs each took up to 0.14 s (bench_refill, 20 demo desktops, two
 * starts at once: 0.8 s in all); the next start need not wait for them.
 *
 * The loop alone counts. svc->starts_running is every start between its
 * begin and its result (desktop.c); svc->starts_freed is the start jobs
 * still running whose slot a worker freed and the loop has taken into
 * account. A worker adds to `freed`, which the loop takes; it wakes the
 * loop only when a start waits for a slot, so starts that never wait cost
 * no extra turn of the loop.
 *
 * Must stay true: starts_freed <= starts_running, since a start job counts
 * in starts_running until its result, and its early release is taken into
 * starts_freed (take(), from start_slot_returned) before that result is
 * applied.
 *
 * Threads: `freed` and `waiting` are atomics; `closed` is under `lock`.
 * The object outlives every job: it is freed after the loop has ended. */
#include "daemon.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct start_slots {
    service *svc;
    uv_async_t wake;      /* a worker freed a slot that a start waits for */
    atomic_uint freed;    /* freed by workers, not yet taken by the loop */
    atomic_bool waiting;  /* the loop has a start waiting for a slot */
    pthread_mutex_t lock; /* orders a worker's wake with the handle's close */
    bool closed;          /* under lock: no more wakes */
};

static void take(service *svc)
{
    start_slots *s = svc->start_slots;
    if (s)
        svc->starts_freed += atomic_exchange(&s->freed, 0);
}

static void on_wake(uv_async_t *h)
{
    start_slots *s = h->data;
    take(s->svc);
    service_kick(s->svc); /* the controller starts the waiting desktop */
}

int start_slots_start(service *svc)
{
    start_slots *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->svc = svc;
    int rc = uv_async_init(svc->loop, &s->wake, on_wake);
    if (rc < 0) {
        free(s);
        return rc;
    }
    s->wake.data = s;
    pthread_mutex_init(&s->lock, NULL);
    svc->start_slots = s;
    return 0;
}

void start_slots_stop(service *svc)
{
    start_slots *s = svc->start_slots;
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->closed = true;
    pthread_mutex_unlock(&s->lock);
    if (!uv_is_closing((uv_handle_t *)&s->wake))
        uv_close((uv_handle_t *)&s->wake, NULL);
}

void start_slots_free(service *svc)
{
    start_slots *s = svc->start_slots;
    if (!s)
        return;
    svc->start_slots = NULL;
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void start_slot_release(start_slots *s)
{
    atomic_fetch_add(&s->freed, 1);
    if (!atomic_exchange(&s->waiting, false))
        return;
    pthread_mutex_lock(&s->lock);
    if (!s->closed)
        uv_async_send(&s->wake);
    pthread_mutex_unlock(&s->lock);
}

unsigned start_slots_busy(service *svc)
{
    take(svc);
    return svc->starts_running - svc->starts_freed;
}

void start_slots_wanted(service *svc)
{
    start_slots *s = svc->start_slots;
    if (!s)
        return;
    atomic_store(&s->waiting, true);
    /* A worker that freed a slot before `waiting` was set did not wake the
     * loop: its slot is seen here (both atomics are sequentially
     * consistent), and the controller steps again at once. */
    if (atomic_load(&s->freed) && atomic_exchange(&s->waiting, false))
        service_kick(svc);
}

void start_slot_returned(service *svc)
{
    take(svc); /* the job's release happened before its result came back */
    svc->starts_freed--;
}
