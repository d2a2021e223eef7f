/* desktop.c — a desktop's state machine. Every change of state goes through
 * one of the functions below, on the loop thread; work that blocks is done
 * by the service's desktop_ops (jobs.c, or a test's fakes), which report back
 * through desktop_cloned/started/ended.
 *
 * Transitions, and the function that makes each:
 *
 *   empty    -> cloning    desktop_begin_clone     (pool.c: a spare is wanted)
 *   cloning  -> starting   desktop_cloned          (the child exists)
 *   cloning  -> empty      desktop_cloned          (the pool is blocked: space, gold;
 *                                                    pool.c probes again after a back-off)
 *   cloning  -> failed     desktop_cloned          (this desktop's clone failed)
 *   starting -> resuming   desktop_begin_start     (start = "resume": restored from
 *                                                    the pool's memory image)
 *   starting|resuming -> ready  desktop_started    (the domain runs)
 *   starting -> booting    desktop_started         (ready_when = "agent": agent.c
 *                                                    takes it on to ready or ending)
 *   starting -> ending     desktop_started         (the start failed; then failed)
 *   ready    -> assigned   session.c assign        (handed to a user)
 *   ready    -> ending     desktop_begin_end       (recycled, rolled out, drained)
 *   assigned -> ending     desktop_begin_end       (via session_end: the session ends)
 *   ending   -> empty      desktop_ended           (domain destroyed, child deleted)
 *   ending   -> failed     desktop_ended           (after a failed start)
 *   ending   -> ending     desktop_ended           (the end failed: retried after 5 s,
 *                                                    desktop_retry_end)
 *   failed   -> empty      desktop_retry_failed    (its back-off is over)
 *   empty    -> ready|assigned  desktop_adopt      (adopt.c: a running domain found)
 *   ready|assigned -> paused    desktop_paused     (the guest stopped on an I/O error)
 *   paused   -> ready|assigned  desktop_resumed    (libvirt's RESUMED, or our resume job)
 *   paused   -> ending     desktop_begin_end       (a paused spare; a session past
 *                                                    paused_timeout: no-space)
 *   booting|ready|assigned|paused -> unreachable     (hosts.c: its host's connection
 *                                                    was lost; slot and session kept)
 *   unreachable -> the state it had  desktop_reachable (adopt.c: its domain still runs)
 *   unreachable -> ending  desktop_begin_end       (adopt.c: its domain is gone)
 *   empty|unreachable -> adopting  (adopt.c hold_for_libvirt: libvirt still starts or
 *                                   restores its domain; slot and session kept)
 *   adopting -> ready|booting|assigned|paused  desktop_adopt (adopt.c: libvirt is done,
 *                                   or service.adopt_wait passed)
 *   adopting -> ending     desktop_begin_end       (adopt.c: its domain stopped or is gone)
 *
 * Invariants: a busy desktop (a job runs for it) changes state only through
 * its job's result; a desktop's child is never deleted while its domain may
 * run (an end that could not destroy the domain keeps the child). */
#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *desktop_state_name(desktop_state s)
{
    static const char *const names[] = {
#define XX(id, name) name,
        DESKTOP_STATE_MAP(XX)
#undef XX
    };
    return (unsigned)s < DESKTOP_STATE_COUNT ? names[s] : "unknown";
}

bool desktop_state_from_name(const char *name, size_t len, desktop_state *out)
{
    for (int s = 0; s < DESKTOP_STATE_COUNT; s++) {
        const char *n = desktop_state_name((desktop_state)s);
        if (strlen(n) == len && !strncmp(n, name, len)) {
            *out = (desktop_state)s;
            return true;
        }
    }
    return false;
}

const char *end_reason_name(end_reason r)
{
    static const char *const names[] = {
#define XX(id, name) name,
        END_REASON_MAP(XX)
#undef XX
    };
    return (unsigned)r < END_REASON_COUNT ? names[r] : "other";
}

const char *agent_state_name(agent_state a)
{
    return a == AGENT_CONNECTED ? "connected" : a == AGENT_DISCONNECTED ? "disconnected" : "unknown";
}

/* Keeps the change in the desktop's ring of its last ones (a desktop whose
 * ring cannot be allocated just has no history). */
static void remember_change(desktop *d, desktop_state from, desktop_state to)
{
    if (!d->history && !(d->history = calloc(1, sizeof *d->history)))
        return;
    desktop_history *h = d->history;
    h->changes[h->next] = (desktop_change){
        .at = d->state_since,
        .from = (uint8_t)from,
        .to = (uint8_t)to,
        .reason = (uint8_t)(to == DESKTOP_ENDING ? d->end_reason : END_REASON_COUNT)};
    h->next = (h->next + 1) % DESKTOP_HISTORY;
    if (h->count < DESKTOP_HISTORY)
        h->count++;
}

/* The one place a desktop's state changes: it moves to the tail of its new
 * state's list (a desktop set to the state it has moves to the tail too, as
 * its state_since is new). */
void desktop_set_state(desktop *d, desktop_state s)
{
    if (d->state != s)
        svc_log("debug", "pool=%s desktop=%s event=state from=%s to=%s", d->pool->name, d->name,
                desktop_state_name(d->state), desktop_state_name(s));
    desktop_state from = d->state;
    if (s == DESKTOP_EMPTY || s == DESKTOP_FAILED) {
        desktop_set_host(d, NULL); /* no domain and no child on any host any more */
        d->rss_bytes = 0;
    }
    if (s == DESKTOP_READY && d->clone_mono > 0 &&
        (from == DESKTOP_STARTING || from == DESKTOP_RESUMING || from == DESKTOP_BOOTING)) {
        latency_observe(&d->pool->svc->ready_latency, (double)uv_hrtime() / 1e9 - d->clone_mono);
        d->clone_mono = 0;
    }
    desktop_list_remove(d);
    d->state = s;
    d->state_since = service_now(d->pool->svc);
    desktop_list_add(d);
    if (from != s) {
        remember_change(d, from, s);
        if (d->pool->svc->desktop_changed)
            d->pool->svc->desktop_changed(d, from);
    }
}

static void record_failure(desktop *d, const char *why)
{
    set_str(&d->failure, why);
    d->failures++;
    unsigned backoff = d->failures > 6 ? 300 : 5u << (d->failures - 1);
    d->retry_at = service_now(d->pool->svc) + backoff;
    svc_log("error", "pool=%s desktop=%s event=failed retry_in=%us reason=\"%s\"", d->pool->name,
            d->name, backoff, why);
}

void desktop_begin_clone(desktop *d)
{
    pool *p = d->pool;
    set_str(&d->gold, pool_gold(p));
    desktop_choose_start(d); /* start = "resume": from the pool's memory image */
    d->clone_mono = (double)uv_hrtime() / 1e9;
    desktop_set_state(d, DESKTOP_CLONING);
    p->svc->clones_running++; /* until desktop_cloned */
    p->svc->ops->clone(d);
}

void desktop_begin_start(desktop *d)
{
    /* A new run: what the agent said of the last one no longer holds. */
    d->agent = AGENT_UNKNOWN;
    d->agent_since = service_now(d->pool->svc);
    d->agent_ready = false;
    d->boot_seconds = 0;
    d->start_mono = (double)uv_hrtime() / 1e9;
    if (d->memory_image)
        desktop_set_state(d, DESKTOP_RESUMING);
    d->pool->svc->starts_running++; /* until desktop_started */
    d->pool->svc->ops->start(d);
}

void desktop_begin_end(desktop *d, end_reason why)
{
    if (d->state == DESKTOP_ENDING || d->state == DESKTOP_EMPTY || d->busy)
        return;
    d->end_reason = why;
    char user[LOG_VALUE_MAX];
    svc_log("info", "pool=%s desktop=%s event=ending reason=%s user=%s", d->pool->name, d->name,
            end_reason_name(why), log_value(d->user, user, sizeof user));
    desktop_set_state(d, DESKTOP_ENDING);
    d->pool->svc->ops->end(d);
}

void desktop_begin_resume(desktop *d)
{
    if (d->state == DESKTOP_PAUSED && !d->busy)
        d->pool->svc->ops->resume(d);
}

void desktop_begin_agent_check(desktop *d)
{
    if (d->state != DESKTOP_BOOTING || d->busy)
        return;
    d->agent_retry_at = service_now(d->pool->svc) + AGENT_RETRY_S;
    d->pool->svc->ops->agent_check(d);
}

/* The desktop's hostname from the pool's pattern (NULL: leave it alone). */
static void choose_hostname(desktop *d)
{
    char name[128];
    const vdi_pool_config *pc = d->pool->cfg;
    if (pc->hostname && *pc->hostname &&
        vdi_config_hostname(pc, d->name, d->slot, name, sizeof name) == 0)
        set_str(&d->hostname, name);
    else
        set_str(&d->hostname, NULL);
}

void desktop_booting(desktop *d)
{
    d->agent_ready = false;
    d->agent_retry_at = 0;
    choose_hostname(d);
    svc_log("info", "pool=%s desktop=%s event=booting agent=%s", d->pool->name, d->name,
            agent_state_name(d->agent));
    desktop_set_state(d, DESKTOP_BOOTING);
    if (d->agent == AGENT_CONNECTED)
        desktop_begin_agent_check(d);
}

void desktop_retry_end(desktop *d)
{
    if (d->state == DESKTOP_ENDING && !d->busy)
        d->pool->svc->ops->end(d);
}

void desktop_retry_failed(desktop *d)
{
    if (d->state == DESKTOP_FAILED && !d->busy)
        desktop_set_state(d, DESKTOP_EMPTY);
}

void desktop_cloned(desktop *d, int rc, bool pool_blocked, const char *error, double seconds)
{
    pool *p = d->pool;
    p->svc->clones_running--;
    if (rc == 0) {
        latency_observe(&p->svc->clone_latency, seconds);
        if (p->blocked)
            svc_log("info", "pool=%s event=unblocked", p->name);
        set_str(&p->blocked, NULL);
        p->blocked_probes = 0;
        p->blocked_retry_at = 0;
        svc_log("info", "pool=%s desktop=%s event=cloned child=%s seconds=%.3f", p->name, d->name,
                d->child, seconds);
        desktop_set_state(d, DESKTOP_STARTING);
    } else if (pool_blocked) {
        /* The next probe waits: 1 s doubling to 30 s, or less when space
         * frees up (desktop_ended). Never a busy loop. */
        unsigned wait = p->blocked_probes >= 5 ? 30 : 1u << p->blocked_probes;
        p->blocked_probes++;
        p->blocked_retry_at = service_now(p->svc) + wait;
        if (!p->blocked || strcmp(p->blocked, error))
            svc_log("warning", "pool=%s event=blocked retry_in=%us reason=\"%s\"", p->name, wait,
                    error);
        set_str(&p->blocked, error);
        desktop_set_state(d, DESKTOP_EMPTY);
    } else {
        record_failure(d, error);
        desktop_set_state(d, DESKTOP_FAILED);
    }
}

void desktop_started(desktop *d, int rc, const char *error, const char *display, double seconds)
{
    pool *p = d->pool;
    p->svc->starts_running--;
    if (rc == 0) {
        latency_observe(d->state == DESKTOP_RESUMING ? &p->svc->resume_latency
                                                     : &p->svc->start_latency,
                        seconds);
        set_str(&d->display, display && *display ? display : NULL);
        d->failures = 0;
        set_str(&d->failure, NULL);
        if (p->cfg->ready_when == VDI_READY_AGENT) {
            desktop_booting(d); /* ready once its guest agent answers (agent.c) */
            return;
        }
        svc_log("info", "pool=%s desktop=%s event=ready display=%s seconds=%.3f", p->name, d->name,
                d->display ? d->display : "none", seconds);
        d->boot_seconds = seconds;
        desktop_set_state(d, DESKTOP_READY);
        if (d->io_error)
            desktop_paused(d, d->io_error); /* it paused while its start was reported */
        return;
    }
    desktop_fail(d, error, END_OTHER);
}

void desktop_fail(desktop *d, const char *why, end_reason reason)
{
    record_failure(d, why);
    d->fail_after_end = true; /* whatever half-started goes first */
    d->end_reason = reason;
    char user[LOG_VALUE_MAX];
    svc_log("info", "pool=%s desktop=%s event=ending reason=%s user=%s", d->pool->name, d->name,
            end_reason_name(reason), log_value(d->user, user, sizeof user));
    desktop_set_state(d, DESKTOP_ENDING);
    d->pool->svc->ops->end(d);
}

void desktop_ended(desktop *d, int rc, const char *error)
{
    pool *p = d->pool;
    if (rc < 0) {
        svc_log("error", "pool=%s desktop=%s event=end-failed reason=\"%s\"", p->name, d->name,
                error);
        set_str(&d->failure, error);
        d->retry_at = service_now(p->svc) + 5; /* desktop_retry_end, from pool_step */
        return;
    }
    svc_log("info", "pool=%s desktop=%s event=ended reason=%s session=%lld", p->name, d->name,
            end_reason_name(d->end_reason), (long long)d->session_id);
    if (d->session_id)
        pool_count_session(p, true, d->end_reason);
    d->session_id = 0;
    set_str(&d->user, NULL);
    set_str(&d->display, NULL);
    json_decref(d->users);
    d->users = NULL;
    bool failed = d->fail_after_end;
    d->fail_after_end = false;
    p->blocked_retry_at = 0; /* a child is gone: a blocked pool probes again at once */
    desktop_set_state(d, failed ? DESKTOP_FAILED : DESKTOP_EMPTY);
}

void desktop_adopt(desktop *d, const char *child, const char *gold, const char *display,
                   agent_state agent, int64_t session_id, const char *user,
                   int64_t session_start)
{
    set_str(&d->child, child);
    set_str(&d->gold, gold);
    set_str(&d->display, display && *display ? display : NULL);
    d->agent = agent;
    d->agent_since = service_now(d->pool->svc);
    d->start_mono = 0; /* its boot time is not known */
    if (session_id) {
        /* A restart of vdipoold never ends a user's session. */
        d->session_id = session_id;
        d->session_start = session_start;
        d->agent_ready = true;
        d->user_seen = false;
        d->logged_off_at = 0;
        d->users_poll_at = 0;
        d->idle_seconds = -1;
        set_str(&d->user, user);
        desktop_set_state(d, DESKTOP_ASSIGNED);
    } else if (d->pool->cfg->ready_when == VDI_READY_AGENT) {
        /* Whether it had booted and got its identity before the restart is
         * not known: the agent is asked again before it is handed out. */
        desktop_booting(d);
    } else {
        desktop_set_state(d, DESKTOP_READY);
    }
    svc_log("info", "pool=%s desktop=%s event=adopted state=%s agent=%s", d->pool->name, d->name,
            desktop_state_name(d->state), agent_state_name(agent));
}

void desktop_reachable(desktop *d, agent_state agent, const char *display, const char *paused)
{
    if (d->state != DESKTOP_UNREACHABLE)
        return;
    desktop_state back = d->unreachable_from;
    if (display && *display)
        set_str(&d->display, display);
    d->agent = agent;
    d->agent_since = service_now(d->pool->svc);
    svc_log("info", "pool=%s desktop=%s event=reachable host=%s state=%s", d->pool->name,
            d->name, d->host ? d->host->name : "-", desktop_state_name(back));
    if (back == DESKTOP_PAUSED)
        back = d->resume_state == DESKTOP_ASSIGNED ? DESKTOP_ASSIGNED : DESKTOP_READY;
    if (back == DESKTOP_BOOTING ||
        (back == DESKTOP_READY && d->pool->cfg->ready_when == VDI_READY_AGENT && !d->agent_ready))
        desktop_booting(d);
    else
        desktop_set_state(d, back == DESKTOP_ASSIGNED ? DESKTOP_ASSIGNED : DESKTOP_READY);
    if (paused)
        desktop_paused(d, paused);
}

bool desktop_paused_for_space(const desktop *d)
{
    return d->state == DESKTOP_PAUSED && d->pause_reason && !strcmp(d->pause_reason, "no space");
}

/* The guest stopped on an I/O error (error_policy='stop'): it is never
 * handed out while paused, and the controller decides what comes next. */
void desktop_paused(desktop *d, const char *reason)
{
    if (d->state == DESKTOP_PAUSED)
        return;
    if (d->state != DESKTOP_READY && d->state != DESKTOP_ASSIGNED) {
        set_str(&d->io_error, reason); /* applied once it is ready */
        return;
    }
    d->resume_state = d->state;
    d->paused_since = service_now(d->pool->svc);
    d->retry_at = 0;
    set_str(&d->pause_reason, reason ? reason : "I/O error");
    set_str(&d->io_error, NULL);
    char user[LOG_VALUE_MAX];
    svc_log("warning", "pool=%s desktop=%s event=paused reason=\"%s\" was=%s user=%s",
            d->pool->name, d->name, d->pause_reason, desktop_state_name(d->state),
            log_value(d->user, user, sizeof user));
    desktop_set_state(d, DESKTOP_PAUSED);
}

void desktop_resumed(desktop *d)
{
    if (d->state != DESKTOP_PAUSED)
        return;
    int64_t paused = service_now(d->pool->svc) - d->paused_since;
    svc_log("info", "pool=%s desktop=%s event=resumed paused_seconds=%lld reason=\"%s\"",
            d->pool->name, d->name, (long long)paused, d->pause_reason);
    set_str(&d->pause_reason, NULL);
    desktop_set_state(d, d->resume_state);
}

void desktop_resume_tried(desktop *d, int rc, const char *error)
{
    if (rc == 0) {
        desktop_resumed(d);
        return;
    }
    d->retry_at = service_now(d->pool->svc) + 2;
    svc_log("debug", "pool=%s desktop=%s event=resume-waits reason=\"%s\"", d->pool->name, d->name,
            error);
}
