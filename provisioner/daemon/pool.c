/* pool.c — the pool controller. Each pool converges its observed desktops
 * toward what its config asks (spares started and ready, never more than
 * size desktops), one bounded step at a time: a tick, an event or a
 * finished job triggers a step. The step only decides; the transitions are
 * desktop.c's and the work is the service's desktop_ops (jobs on the thread
 * pool, or a test's fakes). A pool's life is here too: made, pointed at
 * its settings (which takes the golds' locks it needs, golds.c) and freed. */
#include "daemon.h"

#include <stdlib.h>
#include <string.h>

/* Does another pool have a live desktop of this name (a removed pool that
 * is draining, whose desktop_prefix a new pool took over)? Configured pools
 * never share a prefix (config check refuses it). */
static bool name_taken(service *svc, const pool *self, const char *name)
{
    for (size_t i = 0; i < svc->npools; i++) {
        const pool *q = svc->pools[i];
        if (q == self || !q->draining)
            continue;
        for (const desktop *d = pool_next_occupied(q, NULL); d; d = pool_next_occupied(q, d))
            if (d->name && !strcmp(d->name, name))
                return true;
    }
    return false;
}

/* Is a desktop on this datastore paused because the datastore is full? */
static bool datastore_short(service *svc, const char *ds_path)
{
    for (size_t i = 0; i < svc->npools; i++) {
        const vdi_datastore_config *ds = pool_datastore(svc->pools[i]);
        if (!ds || strcmp(ds->path, ds_path))
            continue;
        for (const desktop *d = svc->pools[i]->by_state[DESKTOP_PAUSED].head; d; d = d->state_next)
            if (desktop_paused_for_space(d))
                return true;
    }
    return false;
}

/* For a desktop paused on a full datastore: end the newest ready spare on
 * that datastore (never an assigned desktop). Returns whether one was
 * ended or is still ending, so the resume waits for the space. */
static bool reclaim_spare(service *svc, const char *ds_path)
{
    desktop *newest = NULL;
    for (size_t i = 0; i < svc->npools; i++) {
        pool *q = svc->pools[i];
        const vdi_datastore_config *ds = pool_datastore(q);
        if (!ds || strcmp(ds->path, ds_path))
            continue;
        if (q->by_state[DESKTOP_ENDING].count)
            return true;
        for (desktop *e = q->by_state[DESKTOP_READY].head; e; e = e->state_next) {
            if (e->busy)
                return true;
            if (!newest || e->state_since > newest->state_since)
                newest = e;
        }
    }
    if (!newest)
        return false;
    svc_log("info", "pool=%s desktop=%s event=spare-reclaimed reason=\"its datastore is full\"",
            newest->pool->name, newest->name);
    session_end(newest, END_OTHER);
    return true;
}

static void tend_paused(pool *p, desktop *d, int64_t now)
{
    if (d->resume_state != DESKTOP_ASSIGNED) {
        session_end(d, END_OTHER); /* a spare that filled its datastore, or broke: no use */
        return;
    }
    uint64_t limit = p->cfg->session.paused_timeout;
    if (limit && now - d->paused_since >= (int64_t)limit) {
        svc_log("warning", "pool=%s desktop=%s event=paused-too-long seconds=%lld reason=\"%s\"",
                p->name, d->name, (long long)(now - d->paused_since), d->pause_reason);
        session_end(d, desktop_paused_for_space(d) ? END_NO_SPACE : END_OTHER);
        return;
    }
    const vdi_datastore_config *ds = pool_datastore(p);
    if (!desktop_paused_for_space(d) || !ds || now < d->retry_at)
        return;
    if (!reclaim_spare(p->svc, ds->path))
        desktop_begin_resume(d);
}

/* What a desktop that is not busy needs now, by its state. */
/* The pool's slots in use may go past `size` by as many desktops as are
 * unreachable: their host's loss is made up on the other hosts, and the
 * extra slots empty again when the host returns. */
static unsigned pool_capacity(const pool *p)
{
    unsigned lost = p->by_state[DESKTOP_UNREACHABLE].count;
    return p->cfg->size + (lost < p->cfg->size ? lost : p->cfg->size);
}

/* A desktop waiting to start whose host is gone or draining has no domain
 * yet: it moves to a host that can take it (the child is on a shared
 * datastore). false when there is none now. */
static bool start_host_ready(pool *p, desktop *d)
{
    if (host_usable(d->host) && d->host->cfg && d->host->cfg->state == VDI_HOST_ACTIVE)
        return true;
    host *h = pool_place(p);
    if (!h)
        return false;
    svc_log("info", "pool=%s desktop=%s event=moved-host from=%s to=%s", p->name, d->name,
            d->host ? d->host->name : "-", h->name);
    desktop_set_host(d, h);
    return true;
}

static void tend(pool *p, desktop *d, int64_t now, unsigned max_starts)
{
    service *svc = p->svc;
    bool outside = d->slot > pool_capacity(p); /* the pool shrank, or a lost host returned */
    /* A host in maintenance (or removed) drains: its spares go, sessions finish. */
    bool host_draining = d->host && (!d->host->cfg || d->host->cfg->state != VDI_HOST_ACTIVE ||
                                     !vdi_config_pool_may_use(p->config, p->cfg, d->host->cfg));
    switch (d->state) {
    case DESKTOP_FAILED:
        if (now >= d->retry_at)
            desktop_retry_failed(d);
        break;
    case DESKTOP_ENDING: /* an end that failed, retried */
        if (now >= d->retry_at)
            desktop_retry_end(d);
        break;
    case DESKTOP_BOOTING:
        if (pool_closed(p) || outside || host_draining || !d->gold || strcmp(d->gold, pool_gold(p)))
            session_end(d, END_OTHER);
        else
            pool_tend_agent(p, d, now);
        break;
    case DESKTOP_READY:
        if (pool_closed(p) || outside || host_draining)
            session_end(d, END_OTHER);
        else if (!d->gold || strcmp(d->gold, pool_gold(p)))
            session_end(d, END_OTHER); /* roll-out: replaced by the new gold */
        else if (p->cfg->session.idle_spare_max_age &&
                 now - d->state_since > (int64_t)p->cfg->session.idle_spare_max_age)
            session_end(d, END_OTHER);
        else
            pool_tend_agent(p, d, now);
        break;
    case DESKTOP_PAUSED: tend_paused(p, d, now); break;
    case DESKTOP_ASSIGNED:
        if (p->cfg->session.max_duration &&
            now - d->session_start > (int64_t)p->cfg->session.max_duration)
            session_end(d, END_MAX_DURATION);
        else if (p->cfg->rollout == VDI_ROLLOUT_IMMEDIATE && d->gold &&
                 strcmp(d->gold, pool_gold(p)) &&
                 now - p->gold_since >= (int64_t)p->cfg->rollout_notice)
            session_end(d, END_ROLLOUT); /* its gold was replaced, the notice is over */
        else
            pool_tend_agent(p, d, now);
        break;
    case DESKTOP_STARTING:
        if (start_slots_busy(svc) >= max_starts)
            start_slots_wanted(svc); /* the next slot freed wakes the loop */
        else if (start_host_ready(p, d))
            desktop_begin_start(d);
        break;
    case DESKTOP_ADOPTING: adopt_recheck(d, now); break;
    default: break;
    }
}

/* More ready spares than the pool keeps (a lost host's desktops came back
 * after their spares were made up elsewhere, or `spares` was lowered): the
 * newest go, so that the pool settles at what its config asks. */
static void trim_spares(pool *p)
{
    if (pool_closed(p) || !p->svc->online)
        return;
    unsigned want = p->cfg->spares + p->nwaiting;
    unsigned ready = p->by_state[DESKTOP_READY].count;
    /* The ready list is in the order desktops became ready: newest last. */
    for (desktop *d = p->by_state[DESKTOP_READY].tail, *prev; d && ready > want; d = prev) {
        prev = d->state_prev; /* session_end moves d to the ending list */
        if (d->busy)
            continue;
        svc_log("info", "pool=%s desktop=%s event=spare-trimmed ready=%u spares=%u", p->name,
                d->name, ready, want);
        session_end(d, END_OTHER);
        ready--;
    }
}

/* Desktops held while libvirt finishes a start or restore (adopting)
 * without a session: spares about to be adopted, so none is cloned for
 * them meanwhile. Few, and only after a restart. */
static unsigned held_spares(const pool *p)
{
    unsigned n = 0;
    for (const desktop *d = p->by_state[DESKTOP_ADOPTING].head; d; d = d->state_next)
        n += d->session_id == 0;
    return n;
}

void pool_step(pool *p)
{
    service *svc = p->svc;
    const vdi_service_config *sc = vdi_config_service(svc->config);
    int64_t now = service_now(svc);
    /* Time limits and retries count in seconds, so every desktop is looked
     * at once per second (and at once after a config change); the steps in
     * between, one per finished job under load, look only at desktops
     * waiting to start or paused, which a finished job can unblock, and
     * held ones (adopting) whose check an event made due. */
    if (now != p->tended_at || p->tend_all) {
        p->tended_at = now;
        p->tend_all = false;
        for (unsigned i = 0; i < p->nslots; i++)
            if (!p->desktops[i]->busy)
                tend(p, p->desktops[i], now, sc->max_parallel_starts);
        trim_spares(p);
    } else {
        static const desktop_state prompt[] = {DESKTOP_STARTING, DESKTOP_PAUSED, DESKTOP_ADOPTING};
        for (size_t k = 0; k < 3; k++)
            for (desktop *d = p->by_state[prompt[k]].head, *next; d; d = next) {
                next = d->state_next; /* tend may move d to another list */
                if (!d->busy)
                    tend(p, d, now, sc->max_parallel_starts);
            }
    }
    const desktop_list *n = p->by_state;
    unsigned pipeline = n[DESKTOP_CLONING].count + n[DESKTOP_STARTING].count +
                        n[DESKTOP_RESUMING].count + n[DESKTOP_BOOTING].count +
                        n[DESKTOP_READY].count + held_spares(p);
    unsigned in_use = p->nslots - n[DESKTOP_EMPTY].count - n[DESKTOP_FAILED].count;
    if (pool_closed(p) || !svc->online)
        return;
    pool_tend_template(p, now); /* start = "resume": its memory image */
    /* Users waiting in acquire count as wanted spares, so a pool with few or
     * no spares still prepares a desktop on demand. */
    unsigned wanted = p->cfg->spares + p->nwaiting;
    if (p->blocked && now < p->blocked_retry_at)
        wanted = 0; /* blocked: wait for the back-off or for space to free up */
    /* start = "resume": new desktops wait for the memory image being made
     * (about one boot); they boot only when it cannot be made. */
    if (p->cfg->start == VDI_START_RESUME &&
        (p->tmpl.state == TEMPLATE_BUILDING || p->tmpl.state == TEMPLATE_NONE))
        wanted = 0;
    const vdi_datastore_config *ds = pool_datastore(p);
    if (ds && datastore_short(svc, ds->path))
        wanted = 0; /* a guest is paused for space there: no new spares take it */
    unsigned capacity = pool_capacity(p);
    if (pipeline < wanted && in_use < capacity && capacity > p->nslots)
        pool_grow_slots(p, capacity);
    for (unsigned i = 0; i < p->nslots && i < capacity; i++) {
        if (pipeline >= wanted || in_use >= capacity ||
            svc->clones_running >= sc->max_parallel_clones)
            break;
        desktop *d = p->desktops[i];
        if (d->state != DESKTOP_EMPTY || d->busy)
            continue;
        desktop_name_slot(d);
        if (!d->name || name_taken(svc, p, d->name))
            continue; /* a draining pool's desktop of that name is still ending */
        host *h = pool_place(p);
        if (!h)
            break; /* p->no_host says why; a host's return or a reload kicks a step */
        desktop_set_host(d, h);
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
    if (svc->stopping || !svc->adopted)
        return;
    for (size_t i = 0; i < svc->npools; i++)
        pool_step(svc->pools[i]);
    /* Pools removed from the config go once their last desktop has ended. */
    for (size_t i = 0; i < svc->npools;) {
        pool *p = svc->pools[i];
        if (p->draining && pool_idle(p)) {
            svc_log("info", "pool=%s event=removed", p->name);
            sessions_fail_pool_waiters(p);
            memmove(&svc->pools[i], &svc->pools[i + 1], (svc->npools - i - 1) * sizeof *svc->pools);
            svc->npools--;
            pool_free(p);
            continue;
        }
        i++;
    }
    if (!svc->ready_notified) {
        bool all = true;
        for (size_t i = 0; i < svc->npools; i++)
            all &= svc->pools[i]->by_state[DESKTOP_READY].count >= svc->pools[i]->cfg->spares;
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

/* ---- a pool's life: made, pointed at its settings, freed ---------------------------- */

void pool_free(pool *p)
{
    if (!p)
        return;
    pool_release_gold_locks(p, true);
    if (p->retiring_lock >= 0)
        vdi_guard_unlock(p->retiring_lock);
    pool_free_objects(p);
}

/* Points the pool at its settings in `config` (taking a reference): its
 * slots grow to the size, and it holds the golds it needs. */
int pool_configure(pool *p, vdi_config *config, const vdi_pool_config *pc)
{
    char *previous = p->cfg ? strdup(pool_gold(p)) : NULL;
    vdi_config *old = p->config;
    p->config = vdi_config_ref(config);
    p->cfg = pc;
    vdi_config_unref(old);
    p->draining = false;
    set_str(&p->blocked, NULL);
    p->blocked_retry_at = 0;
    p->blocked_probes = 0;
    int rc = pool_grow_slots(p, pc->size);
    if (rc < 0)
        svc_log("error", "pool=%s event=resize-failed size=%u have=%u reason=\"out of memory\"",
                p->name, pc->size, p->nslots);
    pool_hold_gold(p, previous);
    free(previous);
    pool_lock_gold(p);
    return rc;
}

pool *pool_new(service *svc, vdi_config *config, const vdi_pool_config *pc)
{
    pool *p = calloc(1, sizeof *p);
    if (!p || !(p->name = strdup(pc->name))) {
        free(p);
        return NULL;
    }
    p->svc = svc;
    p->gold_lock = p->retiring_lock = -1;
    if (pool_configure(p, config, pc) < 0) {
        pool_free(p);
        return NULL;
    }
    return p;
}
