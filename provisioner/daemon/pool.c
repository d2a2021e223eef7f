/* pool.c — the pool controller. Each pool converges its observed desktops
 * toward what its config asks (spares started and ready, never more than
 * size desktops), one bounded step at a time: a tick, an event or a
 * finished job triggers a step. The step only decides; the transitions are
 * desktop.c's and the work is the service's desktop_ops (jobs on the thread
 * pool, or a test's fakes). */
#include "daemon.h"

#include <stdlib.h>
#include <string.h>

/* Does another pool have a live desktop of this name (a removed pool that
 * is draining, whose desktop_prefix a new pool took over)? */
static bool name_taken(service *svc, const pool *self, const char *name)
{
    for (size_t i = 0; i < svc->npools; i++) {
        const pool *q = svc->pools[i];
        if (q == self)
            continue;
        for (unsigned j = 0; j < q->nslots; j++)
            if (q->desktops[j]->state != DESKTOP_EMPTY && q->desktops[j]->name &&
                !strcmp(q->desktops[j]->name, name))
                return true;
    }
    return false;
}

/* What a desktop that is not busy needs now, by its state. */
static void tend(pool *p, desktop *d, int64_t now, unsigned max_starts)
{
    service *svc = p->svc;
    bool outside = d->slot > p->cfg->size; /* the pool shrank */
    switch (d->state) {
    case DESKTOP_FAILED:
        if (now >= d->retry_at)
            desktop_retry_failed(d);
        break;
    case DESKTOP_ENDING: /* an end that failed, retried */
        if (now >= d->retry_at)
            desktop_retry_end(d);
        break;
    case DESKTOP_READY:
        if (p->draining || outside)
            session_end(d, END_OTHER);
        else if (!d->gold || strcmp(d->gold, p->cfg->gold))
            session_end(d, END_OTHER); /* roll-out: replaced by the new gold */
        else if (p->cfg->session.idle_spare_max_age &&
                 now - d->state_since > (int64_t)p->cfg->session.idle_spare_max_age)
            session_end(d, END_OTHER);
        break;
    case DESKTOP_ASSIGNED:
        if (p->cfg->session.max_duration &&
            now - d->session_start > (int64_t)p->cfg->session.max_duration)
            session_end(d, END_MAX_DURATION);
        break;
    case DESKTOP_STARTING:
        if (svc->online && svc->starts_running < max_starts)
            desktop_begin_start(d);
        break;
    default: break;
    }
}

void pool_step(pool *p)
{
    service *svc = p->svc;
    const vdi_service_config *sc = vdi_config_service(svc->config);
    int64_t now = service_now(svc);
    unsigned pipeline = 0, in_use = 0;
    for (unsigned i = 0; i < p->nslots; i++) {
        desktop *d = p->desktops[i];
        if (!d->busy)
            tend(p, d, now, sc->max_parallel_starts);
        if (d->state == DESKTOP_CLONING || d->state == DESKTOP_STARTING ||
            d->state == DESKTOP_READY)
            pipeline++;
        if (d->state != DESKTOP_EMPTY && d->state != DESKTOP_FAILED)
            in_use++;
    }
    if (p->draining || !svc->online)
        return;
    /* Users waiting in acquire count as wanted spares, so a pool with few or
     * no spares still prepares a desktop on demand. */
    unsigned wanted = p->cfg->spares + sessions_waiting(svc, p->name);
    if (p->blocked && now < p->blocked_retry_at)
        wanted = 0; /* blocked: wait for the back-off or for space to free up */
    for (unsigned i = 0; i < p->nslots && i < p->cfg->size; i++) {
        if (pipeline >= wanted || in_use >= p->cfg->size ||
            svc->clones_running >= sc->max_parallel_clones)
            break;
        desktop *d = p->desktops[i];
        if (d->state != DESKTOP_EMPTY || d->busy)
            continue;
        desktop_name_slot(d);
        if (!d->name || name_taken(svc, p, d->name))
            continue; /* a draining pool's desktop of that name is still ending */
        bool was_blocked = p->blocked != NULL;
        desktop_begin_clone(d);
        pipeline++;
        in_use++;
        if (was_blocked)
            break; /* one probe at a time while blocked */
    }
    pool_release_gold_locks(p, false);
}

static bool pool_idle(const pool *p)
{
    for (unsigned j = 0; j < p->nslots; j++)
        if (p->desktops[j]->state != DESKTOP_EMPTY || p->desktops[j]->busy)
            return false;
    return true;
}

void service_converge(service *svc)
{
    if (svc->stopping || !svc->adopted || svc->adopting)
        return;
    for (size_t i = 0; i < svc->npools; i++)
        pool_step(svc->pools[i]);
    /* Pools removed from the config go once their last desktop has ended. */
    for (size_t i = 0; i < svc->npools;) {
        pool *p = svc->pools[i];
        if (p->draining && pool_idle(p)) {
            svc_log("info", "pool=%s event=removed", p->name);
            memmove(&svc->pools[i], &svc->pools[i + 1], (svc->npools - i - 1) * sizeof *svc->pools);
            svc->npools--;
            pool_free(p);
            continue;
        }
        i++;
    }
    if (!svc->ready_notified) {
        bool all = true;
        for (size_t i = 0; i < svc->npools; i++) {
            unsigned ready = 0;
            for (unsigned j = 0; j < svc->pools[i]->nslots; j++)
                ready += svc->pools[i]->desktops[j]->state == DESKTOP_READY;
            all &= ready >= svc->pools[i]->cfg->spares;
        }
        if (all) {
            svc->ready_notified = true;
            svc_log("info", "event=spares-ready");
        }
    }
}

void service_step(service *svc)
{
    sessions_serve_waiters(svc);
    service_converge(svc);
}
