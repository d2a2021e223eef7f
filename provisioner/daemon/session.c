/* session.c — sessions: a user acquires a ready desktop (or waits for one,
 * first come first served), the session is recorded in the catalog, and it
 * ends by release, guest power-off, time limit or operator, which ends the
 * desktop (domain destroyed, child deleted). */
#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An acquire waiting for a desktop of its pool, on the pool's queue (oldest
 * first) from its arrival until it is answered or withdrawn. A pool is
 * freed only after its queue was answered (sessions_fail_pool_waiters), so
 * `p` stays valid while the waiter is queued. */
struct waiter {
    waiter *prev, *next; /* the pool's queue */
    pool *p;             /* NULL once off the queue */
    service *svc;
    char *user;
    acquire_cb cb;
    void *ctx;
    uv_timer_t timer; /* acquire_timeout; the waiter is freed when it closes */
};

static json_t *error_json(const char *why)
{
    return json_pack("{s:s}", "error", why);
}

static json_t *assignment_json(const desktop *d)
{
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:I}", "desktop", d->name, "domain", d->name, "pool",
                     d->pool->name, "user", d->user ? d->user : "", "display",
                     d->display ? d->display : "", "session_started_at",
                     (json_int_t)d->session_start);
}

/* cb(ctx, 200, the assignment) once d's session start is on disk
 * (durable.c); at once when the start was not recorded. */
static void answer_assigned(service *svc, desktop *d, acquire_cb cb, void *ctx)
{
    if (!d->session_id)
        cb(ctx, 200, assignment_json(d));
    else
        durable_answer_send(svc, d->pool->name, d->name, cb, ctx, assignment_json(d));
}

/* ready -> assigned: the desktop that has waited longest (the ready list
 * is in the order desktops became ready). */
static desktop *assign(pool *p, const char *user)
{
    desktop *pick = p->by_state[DESKTOP_READY].head;
    while (pick && pick->busy)
        pick = pick->state_next;
    if (!pick)
        return NULL;
    set_str(&pick->user, user);
    if (!pick->user)
        return NULL;
    pick->session_start = service_now(p->svc);
    vdi_error err = {0};
    /* A short single-statement write on the loop (see objects.h). */
    if (vdi_catalog_session_begin(p->svc->catalog, p->name, pick->name, user, pick->session_start,
                                  &pick->session_id, &err) < 0) {
        pick->session_id = 0;
        svc_log("error", "pool=%s desktop=%s event=session-not-recorded reason=\"%s\"", p->name,
                pick->name, err.message);
    }
    pool_count_session(p, false, END_OTHER);
    /* The guest's users are read afresh for this session (agent.c). */
    pick->user_seen = false;
    pick->logged_off_at = 0;
    pick->users_poll_at = 0;
    pick->idle_seconds = -1;
    desktop_set_state(pick, DESKTOP_ASSIGNED);
    char quoted[LOG_VALUE_MAX];
    svc_log("info", "pool=%s desktop=%s session=%lld event=assigned user=%s", p->name, pick->name,
            (long long)pick->session_id, log_value(user, quoted, sizeof quoted));
    return pick;
}


/* Can the pool still produce a ready desktop without one ending? */
static bool pool_can_produce(const pool *p)
{
    if (pool_closed(p) || p->blocked)
        return false;
    const desktop_list *n = p->by_state;
    if (n[DESKTOP_CLONING].count || n[DESKTOP_STARTING].count || n[DESKTOP_BOOTING].count)
        return true;
    /* Desktops in slots past a reduced size are ending: they count as in
     * use until they are gone. */
    return p->nslots - n[DESKTOP_EMPTY].count - n[DESKTOP_FAILED].count < p->cfg->size;
}

static json_t *unavailable(const pool *p, const char *why_default)
{
    char why[1024];
    if (p->draining)
        snprintf(why, sizeof why, "pool %s is being removed: no new sessions", p->name);
    else if (p->drained_since)
        snprintf(why, sizeof why,
                 "pool %s is drained by an operator: no new sessions (open it again with "
                 "`vdipoolctl pool undrain %s`)",
                 p->name, p->name);
    else if (p->blocked)
        snprintf(why, sizeof why, "pool %s cannot prepare desktops: %.900s", p->name, p->blocked);
    else
        snprintf(why, sizeof why, "%s", why_default);
    return error_json(why);
}

static void waiter_closed(uv_handle_t *h)
{
    waiter *w = h->data;
    free(w->user);
    free(w);
}

static void enqueue_waiter(pool *p, waiter *w)
{
    w->p = p;
    w->next = NULL;
    w->prev = p->waiting_tail;
    if (p->waiting_tail)
        p->waiting_tail->next = w;
    else
        p->waiting_head = w;
    p->waiting_tail = w;
    p->nwaiting++;
}

/* Takes w off its pool's queue; it is freed once its timer is closed. */
static void drop_waiter(waiter *w)
{
    pool *p = w->p;
    if (p) {
        if (w->prev)
            w->prev->next = w->next;
        else
            p->waiting_head = w->next;
        if (w->next)
            w->next->prev = w->prev;
        else
            p->waiting_tail = w->prev;
        p->nwaiting--;
        w->p = NULL;
    }
    uv_timer_stop(&w->timer);
    uv_close((uv_handle_t *)&w->timer, waiter_closed);
}

static void finish_waiter(waiter *w, int status, json_t *body)
{
    acquire_cb cb = w->cb;
    void *ctx = w->ctx;
    drop_waiter(w);
    cb(ctx, status, body);
}

static void waiter_timeout(uv_timer_t *t)
{
    waiter *w = t->data;
    char why[256];
    snprintf(why, sizeof why, "no desktop of pool %.64s became ready within %llus", w->p->name,
             (unsigned long long)vdi_config_service(w->svc->config)->acquire_timeout);
    finish_waiter(w, 503, unavailable(w->p, why));
}

/* Oldest first, pool by pool: a pool's queue is served from its head until
 * a waiter must go on waiting (all behind it must too), so a pass costs
 * what it serves, not every waiter. */
void sessions_serve_waiters(service *svc)
{
    for (size_t i = 0; i < svc->npools; i++) {
        pool *p = svc->pools[i];
        waiter *w;
        while ((w = p->waiting_head)) {
            desktop *d = pool_closed(p) ? NULL : assign(p, w->user);
            if (d) {
                acquire_cb cb = w->cb;
                void *ctx = w->ctx;
                drop_waiter(w);
                answer_assigned(svc, d, cb, ctx);
            } else if (!pool_can_produce(p)) {
                finish_waiter(w, 503, unavailable(p, "no desktop is ready"));
            } else {
                break;
            }
        }
    }
}

bool service_cancel_acquire(service *svc, void *ctx)
{
    for (size_t i = 0; i < svc->npools; i++)
        for (waiter *w = svc->pools[i]->waiting_head; w; w = w->next) {
            if (w->ctx != ctx)
                continue;
            char quoted[LOG_VALUE_MAX];
            svc_log("info", "pool=%s event=acquire-withdrawn user=%s", w->p->name,
                    log_value(w->user, quoted, sizeof quoted));
            drop_waiter(w);    /* nobody to answer */
            service_kick(svc); /* one fewer wanted spare */
            return true;
        }
    return false;
}

/* At shutdown: every pending acquire gets an answer. */
void sessions_fail_waiters(service *svc)
{
    for (size_t i = 0; i < svc->npools; i++)
        while (svc->pools[i]->waiting_head)
            finish_waiter(svc->pools[i]->waiting_head, 503,
                          error_json("vdipoold is shutting down"));
}

/* The service is torn down without a stop (vdipoold answers waiters at its
 * stop, sessions_fail_waiters): waiters left are taken off their pools,
 * unanswered, and their timers closed (each is freed when the loop runs its
 * close), so that nothing calls back into what is gone. */
void sessions_forget_waiters(service *svc)
{
    for (size_t i = 0; i < svc->npools; i++)
        while (svc->pools[i]->waiting_head)
            drop_waiter(svc->pools[i]->waiting_head);
}

/* A pool about to be freed: its waiters hear why. */
void sessions_fail_pool_waiters(pool *p)
{
    while (p->waiting_head)
        finish_waiter(p->waiting_head, 404, error_json("the pool was removed"));
}

void service_acquire(service *svc, const char *pool_name, const char *user, acquire_cb cb,
                     void *ctx)
{
    pool *p = service_find_pool(svc, pool_name);
    if (!p) {
        char why[256];
        snprintf(why, sizeof why, "no pool named '%.128s'", pool_name);
        cb(ctx, 404, error_json(why));
        return;
    }
    desktop *d = pool_assigned_to(p, user);
    if (d) {
        answer_assigned(svc, d, cb, ctx); /* the same user asking twice */
        return;
    }
    if (pool_closed(p)) {
        cb(ctx, 503, unavailable(p, ""));
        return;
    }
    /* Earlier waiters of this pool come first. */
    if (!p->nwaiting && (d = assign(p, user))) {
        answer_assigned(svc, d, cb, ctx);
        service_kick(svc);
        return;
    }
    if (!pool_can_produce(p)) {
        char why[256];
        snprintf(why, sizeof why, "pool %.64s is full: all %u desktops are in use", p->name,
                 p->cfg->size);
        cb(ctx, 503, unavailable(p, why));
        return;
    }
    waiter *w = calloc(1, sizeof *w);
    if (!w || !(w->user = strdup(user))) {
        free(w);
        cb(ctx, 500, error_json("out of memory"));
        return;
    }
    w->svc = svc;
    w->cb = cb;
    w->ctx = ctx;
    if (uv_timer_init(svc->loop, &w->timer) < 0) {
        free(w->user);
        free(w);
        cb(ctx, 500, error_json("cannot wait for a desktop (timer)"));
        return;
    }
    w->timer.data = w;
    if (uv_timer_start(&w->timer, waiter_timeout,
                       vdi_config_service(svc->config)->acquire_timeout * 1000, 0) < 0) {
        uv_close((uv_handle_t *)&w->timer, waiter_closed);
        cb(ctx, 500, error_json("cannot wait for a desktop (timer)"));
        return;
    }
    enqueue_waiter(p, w);
    sessions_serve_waiters(svc); /* a desktop may be ready for the ones before */
    service_kick(svc);
}

void session_end(desktop *d, end_reason why)
{
    desktop_begin_end(d, why);
}

/* libvirt's lifecycle events, queued by the bridge and delivered here on
 * the loop. A destroy also emits SHUTDOWN/HOST: act on STOPPED only. */
void service_on_domain_event(void *ctx, const char *name, int event, int detail)
{
    host *h = ctx; /* the host whose connection told it */
    service *svc = h->svc;
    desktop *d = host_find_desktop(h, name);
    if (d && d->state == DESKTOP_ADOPTING) {
        /* libvirt was at work on it (adopt.c): whatever happened, its own
         * check, due at once (the controller's next step looks at held
         * desktops), says what it is now; a stopped one is ended there, even
         * if a check running now saw it run. */
        if (event == VIR_DOMAIN_EVENT_STOPPED && d->busy)
            d->stopped_in_check = true;
        d->retry_at = 0;
        service_kick(svc);
        return;
    }
    if (event == VIR_DOMAIN_EVENT_SUSPENDED && detail == VIR_DOMAIN_EVENT_SUSPENDED_IOERROR) {
        if (d)
            desktop_paused(d, d->io_error ? d->io_error : "I/O error");
        service_kick(svc);
        return;
    }
    if (event == VIR_DOMAIN_EVENT_RESUMED) {
        if (d)
            desktop_resumed(d);
        return;
    }
    if (event != VIR_DOMAIN_EVENT_STOPPED)
        return;
    if (d && d->state == DESKTOP_EMPTY && h->adopting && h->stopped_while_adopting) {
        /* The adoption's list of domains may still show it running: it
         * must not be adopted as running (adopt.c reads this). */
        json_array_append_new(h->stopped_while_adopting, json_string(name));
        return;
    }
    if (!d || d->state == DESKTOP_ENDING || d->state == DESKTOP_EMPTY)
        return;
    end_reason reason = detail == VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN  ? END_GUEST_SHUTDOWN
                        : detail == VIR_DOMAIN_EVENT_STOPPED_FAILED  ? END_CRASHED
                        : detail == VIR_DOMAIN_EVENT_STOPPED_CRASHED ? END_CRASHED
                                                                     : END_OTHER;
    svc_log("info", "pool=%s desktop=%s event=domain-stopped detail=%d", d->pool->name, name,
            detail);
    if (d->busy)
        return; /* a start that is failing; its job ends it */
    session_end(d, d->state == DESKTOP_ASSIGNED ? reason : END_OTHER);
    service_kick(svc);
}

/* QEMU's reason for an I/O error ("enospc", "eio", ...), reported before
 * the guest is paused (error_policy='stop'). */
void service_on_io_error(void *ctx, const char *name, const char *reason)
{
    host *h = ctx; /* the host whose connection told it */
    service *svc = h->svc;
    desktop *d = host_find_desktop(h, name);
    if (!d)
        return;
    const char *why = !strcmp(reason, "enospc") ? "no space" : reason[0] ? reason : "I/O error";
    if (d->state == DESKTOP_PAUSED)
        return;
    set_str(&d->io_error, why);
    if (d->state == DESKTOP_READY || d->state == DESKTOP_ASSIGNED)
        desktop_paused(d, why);
    service_kick(svc);
}

/* The desktop's child grew past its write budget (libvirt's block threshold,
 * set at start): before the datastore can fill, check it has room. */
void service_on_block_threshold(void *ctx, const char *name, uint64_t threshold, uint64_t excess)
{
    host *h = ctx; /* the host whose connection told it */
    service *svc = h->svc;
    desktop *d = host_find_desktop(h, name);
    if (!d)
        return;
    svc_log("info", "pool=%s desktop=%s event=write-budget-exceeded threshold=%llu excess=%llu",
            d->pool->name, d->name, (unsigned long long)threshold, (unsigned long long)excess);
    svc->budget_events++;
    svc->ops->check_budget(d, threshold + excess);
}

/* ---- the last hour's sessions, from the catalog ------------------------------------ */

static void seed_minute(void *ctx, int64_t minute, const char *reason, uint64_t count)
{
    pool *p = ctx;
    unsigned i = pool_recent_bucket(p, minute);
    if (!reason) {
        p->recent.started[i] += (uint32_t)count;
        return;
    }
    int r = 0;
    while (r < END_REASON_COUNT && strcmp(end_reason_name((end_reason)r), reason))
        r++;
    p->recent.ended[i][r < END_REASON_COUNT ? r : END_OTHER] += (uint32_t)count;
}

/* The last hour's sessions from the catalog, for a pool just made (at
 * start or when a reload adds it): two grouped reads of at most 60 rows per
 * reason, on the loop like the pool's other start-up reads. */
void pool_seed_recent(pool *p)
{
    if (!p->svc->catalog)
        return;
    int64_t minute = service_now(p->svc) / 60;
    vdi_error err = {0};
    if (vdi_catalog_sessions_by_minute(p->svc->catalog, p->name, (minute - 59) * 60, seed_minute, p,
                                       &err) < 0)
        svc_log("warning", "pool=%s event=recent-sessions-unknown reason=\"%s\"", p->name,
                err.message);
}
