/* pool.c — the pool controllers. Each pool converges its observed desktops
 * toward what its config asks (spares started and ready, never more than
 * size desktops), one bounded step at a time: a tick, an event or a finished
 * piece of work triggers a step; blocking work (clone, libvirt calls,
 * deletes) runs on the thread pool and its result is applied here, on the
 * loop thread, which alone changes state.
 *
 * Desktop states: empty -> cloning -> starting -> ready -> assigned ->
 * ending -> empty, with failed (reason, back-off) beside them. */
#include "service.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Finished sessions needed before learned growth replaces expected_growth. */
#define GROWTH_MIN_SAMPLES 20

static const char *const reasons[] = { "guest-shutdown", "released", "max-duration",
                                       "operator", "crashed", "other" };

static int reason_index(const char *r)
{
    for (int i = 0; i < 5; i++)
        if (!strcmp(r, reasons[i]))
            return i;
    return 5;
}

const char *desktop_state_name(desktop_state s)
{
    static const char *const names[] = { "empty",    "cloning", "starting", "ready",
                                         "assigned", "ending",  "failed" };
    return s <= DESKTOP_FAILED ? names[s] : "unknown";
}

int64_t now_seconds(void) { return (int64_t)time(NULL); }

static void set_state(desktop *d, desktop_state s)
{
    if (d->state != s)
        svc_log("debug", "pool=%s desktop=%s event=state from=%s to=%s", d->pool->name, d->name,
                desktop_state_name(d->state), desktop_state_name(s));
    d->state = s;
    d->state_since = now_seconds();
}

pool *service_find_pool(service *svc, const char *name)
{
    for (size_t i = 0; i < svc->npools; i++)
        if (!strcmp(svc->pools[i]->name, name))
            return svc->pools[i];
    return NULL;
}

desktop *service_find_desktop(service *svc, const char *name)
{
    for (size_t i = 0; i < svc->npools; i++)
        for (unsigned j = 0; j < svc->pools[i]->nslots; j++)
            if (!strcmp(svc->pools[i]->desktops[j].name, name))
                return &svc->pools[i]->desktops[j];
    return NULL;
}

static const vdi_datastore_config *pool_datastore(const pool *p)
{
    return vdi_config_find_datastore(p->svc->config, p->cfg->datastore);
}

static void name_slot(pool *p, desktop *d)
{
    unsigned digits = 3;
    for (unsigned v = p->cfg->size; v >= 1000; v /= 10)
        digits++;
    snprintf(d->name, sizeof d->name, "%s-%0*u", p->cfg->desktop_prefix, (int)digits, d->slot);
    const vdi_datastore_config *ds = pool_datastore(p);
    snprintf(d->child, sizeof d->child, "%s/%s.qcow2", ds ? ds->path : "/nonexistent", d->name);
}

static void observe(latency_histogram *h, double seconds)
{
    static const double bounds[11] = { 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 };
    int i = 0;
    while (i < 11 && seconds > bounds[i])
        i++;
    h->buckets[i]++;
    h->count++;
    h->sum += seconds;
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- work on the thread pool --------------------------------------------- */

typedef enum { JOB_CLONE, JOB_START, JOB_END } job_kind;

typedef struct job {
    uv_work_t work;
    job_kind kind;
    service *svc;
    desktop *d;
    /* inputs, copied on the loop thread */
    char name[96], child[4096], gold[4096], pool[64], datastore[64], ds_path[4096];
    uint64_t reserve_bytes, expected_growth;
    double reserve_percent, max_overcommit;
    unsigned max_depth, slot;
    int64_t session_id;
    char reason[48];
    char *xml_cfg_error;
    const vdi_pool_config *cfg;
    /* outputs */
    int rc;
    bool blocked; /* a pool-wide reason (space, gold), not this desktop's fault */
    char error[1024];
    char display[128];
    double started;
} job;

static void job_fail(job *j, int rc, const char *msg)
{
    j->rc = rc;
    snprintf(j->error, sizeof j->error, "%s", msg);
}

static void libvirt_error(job *j, const char *what)
{
    virErrorPtr e = virGetLastError();
    char msg[900];
    snprintf(msg, sizeof msg, "%s: %s", what, e && e->message ? e->message : "unknown error");
    job_fail(j, -EIO, msg);
}

static void clone_work(uv_work_t *w)
{
    job *j = w->data;
    service *svc = j->svc;
    vdi_error err = { 0 };
    pthread_mutex_lock(&svc->catalog_lock);
    vdi_gold_info g;
    char real[4096];
    if (!realpath(j->gold, real))
        snprintf(real, sizeof real, "%s", j->gold);
    if (vdi_catalog_gold(svc->catalog, real, &g, NULL) < 0) {
        snprintf(j->error, sizeof j->error,
                 "gold %s is not sealed; seal it first: vdipoolctl image seal %s", j->gold, j->gold);
        j->rc = -EPERM;
        j->blocked = true;
        goto done;
    }
    if (g.state == VDI_GOLD_TAINTED) {
        snprintf(j->error, sizeof j->error, "gold %s is tainted: %s", j->gold, g.reason);
        j->rc = -ESTALE;
        j->blocked = true;
        goto done;
    }
    vdi_space_report r;
    if (vdi_space_measure(j->ds_path, j->reserve_bytes, j->reserve_percent, &r, &err) < 0) {
        job_fail(j, err.code, err.message);
        j->blocked = true;
        goto done;
    }
    uint64_t growth = j->expected_growth;
    vdi_catalog_growth_p95(svc->catalog, j->pool, GROWTH_MIN_SAMPLES, &growth, NULL, NULL);
    if (vdi_space_admit(&r, j->datastore, growth, g.virtual_size, j->max_overcommit, &err) < 0) {
        job_fail(j, err.code, err.message);
        j->blocked = true;
        goto done;
    }
    if (access(j->child, F_OK) == 0)
        vdi_child_delete(svc->catalog, j->child, NULL, NULL); /* a leftover of ours */
    vdi_clone_options o;
    vdi_clone_options_init(&o);
    o.max_depth = j->max_depth;
    vdi_cloner *cl = NULL;
    vdi_child_meta meta = { .datastore = j->datastore, .pool = j->pool, .slot = (int)j->slot };
    if (vdi_cloner_new(j->gold, &o, &cl, &err) < 0 ||
        vdi_clone_recorded(svc->catalog, cl, j->child, &meta, &err) < 0) {
        job_fail(j, err.code, err.message);
        j->blocked = err.code == -ESTALE || err.code == -ELOOP;
    }
    vdi_cloner_free(cl);
done:
    pthread_mutex_unlock(&svc->catalog_lock);
}

static void find_display(virDomainPtr dom, char *out, size_t len)
{
    out[0] = '\0';
    char *xml = virDomainGetXMLDesc(dom, 0);
    if (!xml)
        return;
    const char *g = strstr(xml, "<graphics ");
    if (g) {
        const char *type = strstr(g, "type='");
        const char *port = strstr(g, "port='");
        if (type && port) {
            char t[16] = "";
            sscanf(type + 6, "%15[^']", t);
            int p = atoi(port + 6);
            if (p > 0)
                snprintf(out, len, "%s://127.0.0.1:%d", t, p);
        }
    }
    free(xml);
}

static void start_work(uv_work_t *w)
{
    job *j = w->data;
    service *svc = j->svc;
    vdi_error err = { 0 };
    char hex[2 * VDI_HASH_SIZE + 1] = "";
    pthread_mutex_lock(&svc->catalog_lock);
    vdi_gold_info g;
    char real[4096];
    if (realpath(j->gold, real) && vdi_catalog_gold(svc->catalog, real, &g, NULL) == 0)
        vdi_hash_hex(g.fp.hash, hex, sizeof hex);
    pthread_mutex_unlock(&svc->catalog_lock);
    desktop copy = *j->d; /* the XML needs name, slot, child, gold: fixed while busy */
    char *xml = domain_xml_build(j->cfg, &copy, hex, &err);
    if (!xml) {
        job_fail(j, err.code, err.message);
        return;
    }
    virConnectPtr conn = svc->conn;
    if (!conn) {
        free(xml);
        job_fail(j, -ENOTCONN, "not connected to libvirt");
        return;
    }
    /* A transient domain: it vanishes when destroyed, and lives on if
     * vdipoold restarts (no autodestroy). */
    virDomainPtr dom = virDomainCreateXML(conn, xml, 0);
    free(xml);
    if (!dom) {
        libvirt_error(j, "cannot start the domain");
        return;
    }
    find_display(dom, j->display, sizeof j->display);
    virDomainFree(dom);
}

static void end_work(uv_work_t *w)
{
    job *j = w->data;
    service *svc = j->svc;
    virConnectPtr conn = svc->conn;
    if (conn) {
        virDomainPtr dom = virDomainLookupByName(conn, j->name);
        if (dom) {
            if (virDomainIsActive(dom) == 1 && virDomainDestroy(dom) < 0)
                libvirt_error(j, "cannot destroy the domain");
            if (j->rc == 0 && virDomainIsPersistent(dom) == 1)
                virDomainUndefineFlags(dom, VIR_DOMAIN_UNDEFINE_NVRAM);
            virDomainFree(dom);
        }
    } else {
        job_fail(j, -ENOTCONN, "not connected to libvirt; the domain may still run");
        return;
    }
    if (j->rc < 0)
        return; /* never delete the disk of a domain that may still run */
    vdi_error err = { 0 };
    uint64_t bytes = 0;
    pthread_mutex_lock(&svc->catalog_lock);
    if (vdi_child_delete(svc->catalog, j->child, &bytes, &err) < 0)
        job_fail(j, err.code, err.message);
    if (j->session_id)
        vdi_catalog_session_end(svc->catalog, j->session_id, now_seconds(), j->reason, bytes,
                                NULL);
    pthread_mutex_unlock(&svc->catalog_lock);
}

static void job_done(uv_work_t *w, int status);

static void submit(job_kind kind, desktop *d, uv_work_cb fn)
{
    pool *p = d->pool;
    service *svc = p->svc;
    job *j = calloc(1, sizeof *j);
    if (!j)
        return;
    j->work.data = j;
    j->kind = kind;
    j->svc = svc;
    j->d = d;
    j->cfg = p->cfg;
    j->started = mono();
    snprintf(j->name, sizeof j->name, "%s", d->name);
    snprintf(j->child, sizeof j->child, "%s", d->child);
    snprintf(j->gold, sizeof j->gold, "%s", d->gold);
    snprintf(j->pool, sizeof j->pool, "%s", p->name);
    snprintf(j->reason, sizeof j->reason, "%s", d->end_reason);
    j->session_id = d->session_id;
    j->slot = d->slot;
    const vdi_datastore_config *ds = pool_datastore(p);
    if (ds) {
        snprintf(j->datastore, sizeof j->datastore, "%s", ds->name);
        snprintf(j->ds_path, sizeof j->ds_path, "%s", ds->path);
        j->reserve_bytes = ds->reserve_bytes;
        j->reserve_percent = ds->reserve_percent;
        j->max_overcommit = ds->max_overcommit;
    }
    j->expected_growth = p->cfg->expected_growth;
    j->max_depth = p->cfg->max_chain_depth + 1;
    d->busy = true;
    if (kind == JOB_CLONE)
        svc->clones_running++;
    if (kind == JOB_START)
        svc->starts_running++;
    uv_queue_work(svc->loop, &j->work, fn, job_done);
}

static void serve_waiters(service *svc);

static void fail_desktop(desktop *d, const char *why)
{
    snprintf(d->failure, sizeof d->failure, "%s", why);
    d->failures++;
    unsigned backoff = d->failures > 6 ? 300 : 5u << (d->failures - 1);
    d->retry_at = now_seconds() + backoff;
    svc_log("error", "pool=%s desktop=%s event=failed retry_in=%us reason=\"%s\"", d->pool->name,
            d->name, backoff, why);
}

static void job_done(uv_work_t *w, int status)
{
    (void)status;
    job *j = w->data;
    desktop *d = j->d;
    pool *p = d->pool;
    service *svc = j->svc;
    d->busy = false;
    double took = mono() - j->started;
    switch (j->kind) {
    case JOB_CLONE:
        svc->clones_running--;
        if (j->rc == 0) {
            observe(&svc->clone_latency, took);
            p->blocked[0] = '\0';
            svc_log("info", "pool=%s desktop=%s event=cloned child=%s seconds=%.3f", p->name,
                    d->name, d->child, took);
            set_state(d, DESKTOP_STARTING);
        } else if (j->blocked) {
            if (strcmp(p->blocked, j->error))
                svc_log("warning", "pool=%s event=blocked reason=\"%s\"", p->name, j->error);
            snprintf(p->blocked, sizeof p->blocked, "%s", j->error);
            set_state(d, DESKTOP_EMPTY);
        } else {
            fail_desktop(d, j->error);
            set_state(d, DESKTOP_FAILED);
        }
        break;
    case JOB_START:
        svc->starts_running--;
        if (j->rc == 0) {
            observe(&svc->start_latency, took);
            snprintf(d->display, sizeof d->display, "%s", j->display);
            d->failures = 0;
            svc_log("info", "pool=%s desktop=%s event=ready display=%s seconds=%.3f", p->name,
                    d->name, d->display[0] ? d->display : "none", took);
            set_state(d, DESKTOP_READY);
        } else {
            fail_desktop(d, j->error);
            snprintf(d->end_reason, sizeof d->end_reason, "failed");
            set_state(d, DESKTOP_ENDING);
            submit(JOB_END, d, end_work);
        }
        break;
    case JOB_END:
        if (j->rc < 0) {
            svc_log("error", "pool=%s desktop=%s event=end-failed reason=\"%s\"", p->name, d->name,
                    j->error);
            fail_desktop(d, j->error);
            set_state(d, DESKTOP_ENDING); /* retried at the next tick */
            d->retry_at = now_seconds() + 5;
            break;
        }
        svc_log("info", "pool=%s desktop=%s event=ended reason=%s session=%lld", p->name, d->name,
                d->end_reason, (long long)d->session_id);
        if (d->session_id)
            p->sessions_ended[reason_index(d->end_reason)]++;
        d->session_id = 0;
        d->user[0] = '\0';
        d->display[0] = '\0';
        set_state(d, strcmp(d->end_reason, "failed") ? DESKTOP_EMPTY : DESKTOP_FAILED);
        break;
    }
    free(j);
    serve_waiters(svc);
    service_converge(svc);
}

/* ---- sessions ----------------------------------------------------------------- */

void pool_end_session(desktop *d, const char *reason)
{
    if (d->state == DESKTOP_ENDING || d->state == DESKTOP_EMPTY || d->busy)
        return;
    snprintf(d->end_reason, sizeof d->end_reason, "%s", reason);
    svc_log("info", "pool=%s desktop=%s event=ending reason=%s user=%s", d->pool->name, d->name,
            reason, d->user[0] ? d->user : "-");
    set_state(d, DESKTOP_ENDING);
    submit(JOB_END, d, end_work);
}

void service_on_domain_stopped(service *svc, const char *name, int detail)
{
    desktop *d = service_find_desktop(svc, name);
    if (!d || d->state == DESKTOP_ENDING || d->state == DESKTOP_EMPTY)
        return;
    const char *reason = detail == VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN  ? "guest-shutdown"
                         : detail == VIR_DOMAIN_EVENT_STOPPED_FAILED  ? "crashed"
                         : detail == VIR_DOMAIN_EVENT_STOPPED_CRASHED ? "crashed"
                                                                      : "other";
    svc_log("info", "pool=%s desktop=%s event=domain-stopped detail=%d", d->pool->name, name,
            detail);
    if (d->busy)
        return; /* a start that is failing; its job ends it */
    pool_end_session(d, d->state == DESKTOP_ASSIGNED ? reason : "other");
}

struct waiter {
    waiter *next;
    service *svc;
    char pool[64], user[128];
    acquire_cb cb;
    void *ctx;
    uv_timer_t timer;
    bool done;
};

static json_t *assignment_json(desktop *d)
{
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:I}", "desktop", d->name, "domain", d->name, "pool",
                     d->pool->name, "user", d->user, "display", d->display,
                     "session_started_at", (json_int_t)d->session_start);
}

static desktop *assign(pool *p, const char *user)
{
    desktop *pick = NULL;
    for (unsigned i = 0; i < p->nslots; i++) {
        desktop *d = &p->desktops[i];
        if (d->state == DESKTOP_READY && !d->busy && (!pick || d->state_since < pick->state_since))
            pick = d;
    }
    if (!pick)
        return NULL;
    snprintf(pick->user, sizeof pick->user, "%s", user);
    pick->session_start = now_seconds();
    vdi_error err = { 0 };
    pthread_mutex_lock(&p->svc->catalog_lock);
    if (vdi_catalog_session_begin(p->svc->catalog, p->name, pick->name, user, pick->session_start,
                                  &pick->session_id, &err) < 0)
        svc_log("error", "pool=%s desktop=%s event=session-not-recorded reason=\"%s\"", p->name,
                pick->name, err.message);
    pthread_mutex_unlock(&p->svc->catalog_lock);
    p->sessions_started++;
    set_state(pick, DESKTOP_ASSIGNED);
    svc_log("info", "pool=%s desktop=%s session=%lld event=assigned user=%s", p->name, pick->name,
            (long long)pick->session_id, user);
    return pick;
}

static desktop *existing_assignment(pool *p, const char *user)
{
    for (unsigned i = 0; i < p->nslots; i++)
        if (p->desktops[i].state == DESKTOP_ASSIGNED && !strcmp(p->desktops[i].user, user))
            return &p->desktops[i];
    return NULL;
}

/* Can the pool still produce a ready desktop without one ending? */
static bool pool_can_produce(const pool *p)
{
    if (p->draining || p->blocked[0])
        return false;
    unsigned in_use = 0;
    for (unsigned i = 0; i < p->nslots && i < p->cfg->size; i++) {
        desktop_state s = p->desktops[i].state;
        if (s == DESKTOP_CLONING || s == DESKTOP_STARTING)
            return true;
        if (s != DESKTOP_EMPTY && s != DESKTOP_FAILED)
            in_use++;
    }
    return in_use < p->cfg->size;
}

static json_t *unavailable(const pool *p, const char *why_default)
{
    char why[1024];
    if (p->draining)
        snprintf(why, sizeof why, "pool %s is being removed: no new sessions", p->name);
    else if (p->blocked[0])
        snprintf(why, sizeof why, "pool %s cannot prepare desktops: %s", p->name, p->blocked);
    else
        snprintf(why, sizeof why, "%s", why_default);
    return json_pack("{s:s}", "error", why);
}

static void waiter_closed(uv_handle_t *h) { free(h->data); }

static void finish_waiter(waiter *w, int status, json_t *body)
{
    service *svc = w->svc;
    for (waiter **pp = &svc->waiters; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    w->done = true;
    uv_timer_stop(&w->timer);
    w->cb(w->ctx, status, body);
    uv_close((uv_handle_t *)&w->timer, waiter_closed);
}

static void waiter_timeout(uv_timer_t *t)
{
    waiter *w = t->data;
    pool *p = service_find_pool(w->svc, w->pool);
    char why[256];
    snprintf(why, sizeof why, "no desktop of pool %s became ready within %llus", w->pool,
             (unsigned long long)vdi_config_service(w->svc->config)->acquire_timeout);
    finish_waiter(w, 503, p ? unavailable(p, why) : json_pack("{s:s}", "error", why));
}

static void serve_waiters(service *svc)
{
    for (waiter *w = svc->waiters, *next; w; w = next) {
        next = w->next;
        pool *p = service_find_pool(svc, w->pool);
        if (!p) {
            finish_waiter(w, 404, json_pack("{s:s}", "error", "the pool was removed"));
            continue;
        }
        desktop *d = assign(p, w->user);
        if (d)
            finish_waiter(w, 200, assignment_json(d));
        else if (!pool_can_produce(p))
            finish_waiter(w, 503, unavailable(p, "no desktop is ready"));
    }
}

void service_acquire(service *svc, const char *pool_name, const char *user, acquire_cb cb,
                     void *ctx)
{
    pool *p = service_find_pool(svc, pool_name);
    if (!p) {
        char why[256];
        snprintf(why, sizeof why, "no pool named '%s'", pool_name);
        cb(ctx, 404, json_pack("{s:s}", "error", why));
        return;
    }
    desktop *d = existing_assignment(p, user);
    if (d) {
        cb(ctx, 200, assignment_json(d)); /* the same user asking twice */
        return;
    }
    if (p->draining) {
        cb(ctx, 503, unavailable(p, ""));
        return;
    }
    d = assign(p, user);
    if (d) {
        cb(ctx, 200, assignment_json(d));
        service_converge(svc);
        return;
    }
    if (!pool_can_produce(p)) {
        char why[256];
        snprintf(why, sizeof why, "pool %s is full: all %u desktops are in use", p->name,
                 p->cfg->size);
        cb(ctx, 503, unavailable(p, why));
        return;
    }
    waiter *w = calloc(1, sizeof *w);
    if (!w) {
        cb(ctx, 500, json_pack("{s:s}", "error", "out of memory"));
        return;
    }
    w->svc = svc;
    snprintf(w->pool, sizeof w->pool, "%s", pool_name);
    snprintf(w->user, sizeof w->user, "%s", user);
    w->cb = cb;
    w->ctx = ctx;
    uv_timer_init(svc->loop, &w->timer);
    w->timer.data = w;
    uv_timer_start(&w->timer, waiter_timeout,
                   vdi_config_service(svc->config)->acquire_timeout * 1000, 0);
    w->next = svc->waiters;
    svc->waiters = w;
    service_converge(svc);
}

/* ---- converging ---------------------------------------------------------------- */

static void release_gold_locks(pool *p, bool current_too)
{
    if (p->retiring_lock >= 0) {
        bool in_use = false;
        for (unsigned i = 0; i < p->nslots; i++)
            in_use |= p->desktops[i].state != DESKTOP_EMPTY &&
                      !strcmp(p->desktops[i].gold, p->retiring_gold);
        if (!in_use) {
            vdi_guard_unlock(p->retiring_lock);
            p->retiring_lock = -1;
            svc_log("info", "pool=%s event=gold-released gold=%s", p->name, p->retiring_gold);
            pthread_mutex_lock(&p->svc->catalog_lock);
            char real[4096];
            vdi_child_info *kids = NULL;
            size_t n = 0;
            if (realpath(p->retiring_gold, real) &&
                vdi_catalog_children(p->svc->catalog, real, &kids, &n, NULL) == 0 && n == 0)
                vdi_catalog_set_gold_state(p->svc->catalog, real, VDI_GOLD_RETIRED, NULL, NULL);
            free(kids);
            pthread_mutex_unlock(&p->svc->catalog_lock);
            p->retiring_gold[0] = '\0';
        }
    }
    if (current_too && p->gold_lock >= 0) {
        vdi_guard_unlock(p->gold_lock);
        p->gold_lock = -1;
    }
}

/* Does another pool have a live desktop of this name (a removed pool that
 * is draining, whose desktop_prefix a new pool took over)? */
static bool name_taken(service *svc, const pool *self, const char *name)
{
    for (size_t i = 0; i < svc->npools; i++) {
        const pool *q = svc->pools[i];
        if (q == self)
            continue;
        for (unsigned j = 0; j < q->nslots; j++)
            if (q->desktops[j].state != DESKTOP_EMPTY && !strcmp(q->desktops[j].name, name))
                return true;
    }
    return false;
}

static void pool_step(pool *p)
{
    service *svc = p->svc;
    const vdi_service_config *sc = vdi_config_service(svc->config);
    int64_t now = now_seconds();
    unsigned pipeline = 0, in_use = 0;
    for (unsigned i = 0; i < p->nslots; i++) {
        desktop *d = &p->desktops[i];
        if (d->busy)
            goto count;
        bool outside = d->slot > p->cfg->size; /* the pool shrank */
        switch (d->state) {
        case DESKTOP_FAILED:
            if (now >= d->retry_at)
                set_state(d, DESKTOP_EMPTY);
            break;
        case DESKTOP_ENDING: /* an end that failed, retried */
            if (now >= d->retry_at)
                submit(JOB_END, d, end_work);
            break;
        case DESKTOP_READY:
            if (p->draining || outside)
                pool_end_session(d, "other");
            else if (strcmp(d->gold, p->cfg->gold))
                pool_end_session(d, "other"); /* roll-out: replaced by the new gold */
            else if (p->cfg->session.idle_spare_max_age &&
                     now - d->state_since > (int64_t)p->cfg->session.idle_spare_max_age)
                pool_end_session(d, "other");
            break;
        case DESKTOP_ASSIGNED:
            if (p->cfg->session.max_duration &&
                now - d->session_start > (int64_t)p->cfg->session.max_duration)
                pool_end_session(d, "max-duration");
            break;
        case DESKTOP_STARTING:
            if (svc->conn && svc->starts_running < sc->max_parallel_starts)
                submit(JOB_START, d, start_work);
            break;
        default:
            break;
        }
    count:
        if (d->state == DESKTOP_CLONING || d->state == DESKTOP_STARTING ||
            d->state == DESKTOP_READY)
            pipeline++;
        if (d->state != DESKTOP_EMPTY && d->state != DESKTOP_FAILED)
            in_use++;
    }
    if (p->draining || !svc->conn)
        return;
    /* Users waiting in acquire count as wanted spares, so a pool with few or
     * no spares still prepares a desktop on demand. */
    unsigned wanted = p->cfg->spares;
    for (waiter *w = svc->waiters; w; w = w->next)
        if (!strcmp(w->pool, p->name))
            wanted++;
    /* Admission problems are retried at every tick; the clone job re-checks. */
    for (unsigned i = 0; i < p->nslots && i < p->cfg->size; i++) {
        if (pipeline >= wanted || in_use >= p->cfg->size ||
            svc->clones_running >= sc->max_parallel_clones)
            break;
        desktop *d = &p->desktops[i];
        if (d->state != DESKTOP_EMPTY || d->busy)
            continue;
        snprintf(d->gold, sizeof d->gold, "%s", p->cfg->gold);
        name_slot(p, d);
        if (name_taken(svc, p, d->name))
            continue; /* a draining pool's desktop of that name is still ending */
        set_state(d, DESKTOP_CLONING);
        submit(JOB_CLONE, d, clone_work);
        pipeline++;
        in_use++;
        if (p->blocked[0])
            break; /* one probe at a time while blocked */
    }
    release_gold_locks(p, false);
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
        bool empty = true;
        for (unsigned j = 0; j < p->nslots; j++)
            empty &= p->desktops[j].state == DESKTOP_EMPTY && !p->desktops[j].busy;
        if (p->draining && empty) {
            svc_log("info", "pool=%s event=removed", p->name);
            release_gold_locks(p, true);
            free(p->desktops);
            free(p);
            memmove(&svc->pools[i], &svc->pools[i + 1], (svc->npools - i - 1) * sizeof *svc->pools);
            svc->npools--;
            continue;
        }
        i++;
    }
    if (!svc->ready_notified) {
        bool all = true;
        for (size_t i = 0; i < svc->npools; i++) {
            unsigned ready = 0;
            for (unsigned j = 0; j < svc->pools[i]->nslots; j++)
                ready += svc->pools[i]->desktops[j].state == DESKTOP_READY;
            all &= ready >= svc->pools[i]->cfg->spares;
        }
        if (all) {
            svc->ready_notified = true;
            svc_log("info", "event=spares-ready");
        }
    }
}

/* ---- scrub: golds in use are re-hashed in the background ------------------------ */

/* Each gold in use is re-hashed about this often, one gold at a time. */
#define SCRUB_INTERVAL_S (6 * 3600)

typedef struct scrub_job {
    uv_work_t work;
    service *svc;
    char gold[4096];
    int rc;
    char error[1024];
} scrub_job;

static void scrub_work(uv_work_t *w)
{
    scrub_job *j = w->data;
    service *svc = j->svc;
    vdi_gold_info g;
    char real[4096];
    if (!realpath(j->gold, real))
        return;
    pthread_mutex_lock(&svc->catalog_lock);
    int rc = vdi_catalog_gold(svc->catalog, real, &g, NULL);
    pthread_mutex_unlock(&svc->catalog_lock);
    if (rc < 0 || g.state == VDI_GOLD_TAINTED)
        return;
    /* Hashing a large gold takes minutes: without the catalog's lock. */
    vdi_error err = { 0 };
    if (vdi_guard_verify_content(&g, &err) == -ESTALE) {
        pthread_mutex_lock(&svc->catalog_lock);
        j->rc = vdi_guard_check(svc->catalog, real, true, &err); /* taints, counts orphans */
        pthread_mutex_unlock(&svc->catalog_lock);
        snprintf(j->error, sizeof j->error, "%s", err.message);
    }
}

static void scrub_done(uv_work_t *w, int status)
{
    (void)status;
    scrub_job *j = w->data;
    if (j->rc < 0)
        svc_log("error", "event=gold-tainted gold=%s reason=\"%s\"", j->gold, j->error);
    else
        svc_log("debug", "event=gold-scrubbed gold=%s", j->gold);
    j->svc->scrubbing = false;
    free(j);
}

void service_scrub_step(service *svc)
{
    if (svc->scrubbing || svc->npools == 0 || svc->stopping)
        return;
    int64_t now = now_seconds();
    int64_t spacing = SCRUB_INTERVAL_S / (int64_t)svc->npools;
    if (svc->last_scrub && now - svc->last_scrub < spacing)
        return;
    pool *p = svc->pools[svc->scrub_next++ % svc->npools];
    scrub_job *j = calloc(1, sizeof *j);
    if (!j)
        return;
    j->work.data = j;
    j->svc = svc;
    snprintf(j->gold, sizeof j->gold, "%s", p->cfg->gold);
    svc->scrubbing = true;
    svc->last_scrub = now;
    uv_queue_work(svc->loop, &j->work, scrub_work, scrub_done);
}

/* ---- config --------------------------------------------------------------------- */

static void lock_gold(pool *p)
{
    if (p->gold_lock >= 0 && !strcmp(p->locked_gold, p->cfg->gold))
        return;
    if (p->gold_lock >= 0) {
        /* Roll-out: the old gold stays locked until its last desktop is gone. */
        if (p->retiring_lock >= 0)
            vdi_guard_unlock(p->retiring_lock);
        p->retiring_lock = p->gold_lock;
        snprintf(p->retiring_gold, sizeof p->retiring_gold, "%s", p->locked_gold);
        p->gold_lock = -1;
        pthread_mutex_lock(&p->svc->catalog_lock);
        char real[4096];
        if (realpath(p->retiring_gold, real))
            vdi_catalog_set_gold_state(p->svc->catalog, real, VDI_GOLD_RETIRING, NULL, NULL);
        pthread_mutex_unlock(&p->svc->catalog_lock);
        svc_log("info", "pool=%s event=rollout from=%s to=%s", p->name, p->retiring_gold,
                p->cfg->gold);
    }
    vdi_error err = { 0 };
    if (vdi_guard_lock(p->cfg->gold, &p->gold_lock, &err) < 0)
        svc_log("warning", "pool=%s event=gold-not-locked reason=\"%s\"", p->name, err.message);
    snprintf(p->locked_gold, sizeof p->locked_gold, "%s", p->cfg->gold);
}

static int resize_slots(pool *p, unsigned size)
{
    if (size > p->nslots) {
        desktop *v = realloc(p->desktops, size * sizeof *v);
        if (!v)
            return -ENOMEM;
        memset(v + p->nslots, 0, (size - p->nslots) * sizeof *v);
        p->desktops = v;
        for (unsigned i = 0; i < size; i++)
            v[i].pool = p; /* realloc may have moved them */
        for (unsigned i = p->nslots; i < size; i++) {
            v[i].slot = i + 1;
            v[i].state = DESKTOP_EMPTY;
            name_slot(p, &v[i]);
        }
        p->nslots = size;
    }
    return 0;
}

int service_apply_config(service *svc, vdi_config *config, bool initial)
{
    vdi_config *old = svc->config;
    vdi_config_diff *diff = NULL;
    if (!initial && vdi_config_diff_new(old, config, &diff) == 0) {
        for (size_t i = 0; i < vdi_config_diff_count(diff); i++) {
            const vdi_config_change *c = vdi_config_diff_get(diff, i);
            svc_log("info", "event=config-change kind=%s name=%s%s%s%s%s%s",
                    vdi_change_kind_name(c->kind), c->name, c->field ? " field=" : "",
                    c->field ? c->field : "", c->old_value ? " old=" : "",
                    c->old_value ? c->old_value : "", c->new_value ? " new=" : "");
        }
        vdi_config_diff_free(diff);
    }
    svc->config = config;
    /* Existing pools point at the new config's values; missing ones drain. */
    for (size_t i = 0; i < svc->npools; i++) {
        pool *p = svc->pools[i];
        const vdi_pool_config *pc = vdi_config_find_pool(config, p->name);
        if (pc) {
            p->cfg = pc;
            p->draining = false;
            p->blocked[0] = '\0';
            resize_slots(p, pc->size);
            lock_gold(p);
        } else if (!p->draining) {
            svc_log("info", "pool=%s event=draining", p->name);
            p->draining = true;
        }
    }
    /* A draining pool still needs a config to read: keep a copy alive by
     * pointing it at a pool of the same name when it comes back, or at its
     * old values (the old config is kept while any pool drains). */
    bool keep_old = false;
    for (size_t i = 0; i < svc->npools; i++)
        keep_old |= svc->pools[i]->draining;
    for (size_t i = 0; i < vdi_config_pool_count(config); i++) {
        const vdi_pool_config *pc = vdi_config_pool(config, i);
        if (service_find_pool(svc, pc->name))
            continue;
        pool *p = calloc(1, sizeof *p);
        pool **v = realloc(svc->pools, (svc->npools + 1) * sizeof *v);
        if (!p || !v) {
            free(p);
            return -ENOMEM;
        }
        svc->pools = v;
        p->svc = svc;
        p->cfg = pc;
        p->gold_lock = p->retiring_lock = -1;
        snprintf(p->name, sizeof p->name, "%s", pc->name);
        resize_slots(p, pc->size);
        lock_gold(p);
        svc->pools[svc->npools++] = p;
        svc_log("info", "pool=%s event=added size=%u spares=%u gold=%s", p->name, pc->size,
                pc->spares, pc->gold);
    }
    if (old && old != config) {
        if (keep_old) {
            /* Leak-free hand-over: the draining pools' cfg points into old;
             * it is freed when they are gone (see service_converge). */
            static vdi_config *kept[64];
            static size_t nkept;
            if (nkept < 64)
                kept[nkept++] = old;
            else
                vdi_config_free(kept[0] = old); /* never reached in practice */
        } else {
            vdi_config_free(old);
        }
    }
    svc->ready_notified = false;
    return 0;
}

/* ---- adoption at start-up (and after a reconnect) -------------------------------- */

typedef struct adopt_req {
    uv_work_t work;
    service *svc;
    json_t *domains; /* [{name, active, pool, slot, child}] */
} adopt_req;

/* libvirt hands metadata back re-serialized, without our prefix
 * ("<child>…</child>"); accept either form. */
static char *xml_field(const char *xml, const char *tag)
{
    static const char *const prefixes[] = { "", "vdipool:" };
    for (int i = 0; i < 2; i++) {
        char open[64], close[64];
        snprintf(open, sizeof open, "<%s%s>", prefixes[i], tag);
        snprintf(close, sizeof close, "</%s%s>", prefixes[i], tag);
        const char *a = strstr(xml, open);
        const char *b = a ? strstr(a, close) : NULL;
        if (a && b) {
            a += strlen(open);
            return strndup(a, (size_t)(b - a));
        }
    }
    return NULL;
}

static void adopt_work(uv_work_t *w)
{
    adopt_req *r = w->data;
    r->domains = json_array();
    virConnectPtr conn = r->svc->conn;
    if (!conn)
        return;
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(conn, &doms, 0);
    for (int i = 0; i < n; i++) {
        char *meta = virDomainGetMetadata(doms[i], VIR_DOMAIN_METADATA_ELEMENT, VDI_XML_NS, 0);
        if (meta) {
            char *pname = xml_field(meta, "pool"), *slot = xml_field(meta, "slot"),
                 *child = xml_field(meta, "child"), *gold = xml_field(meta, "gold");
            char display[128] = "";
            if (virDomainIsActive(doms[i]) == 1)
                find_display(doms[i], display, sizeof display);
            json_array_append_new(
                r->domains,
                json_pack("{s:s,s:b,s:s,s:i,s:s,s:s,s:s}", "name", virDomainGetName(doms[i]),
                          "active", virDomainIsActive(doms[i]) == 1, "pool", pname ? pname : "",
                          "slot", slot ? atoi(slot) : 0, "child", child ? child : "", "gold",
                          gold ? gold : "", "display", display));
            free(pname);
            free(slot);
            free(child);
            free(gold);
            free(meta);
        }
        virDomainFree(doms[i]);
    }
    free(doms);
}

/* Is `child` the disk of a domain libvirt has, or named like one? */
static bool used_by_domain(json_t *domains, const char *child)
{
    const char *base = strrchr(child, '/');
    base = base ? base + 1 : child;
    size_t i;
    json_t *dom;
    json_array_foreach(domains, i, dom)
    {
        const char *c = json_string_value(json_object_get(dom, "child"));
        const char *name = json_string_value(json_object_get(dom, "name"));
        size_t nlen = name ? strlen(name) : 0;
        if ((c && !strcmp(c, child)) ||
            (name && !strncmp(base, name, nlen) && !strcmp(base + nlen, ".qcow2")))
            return true;
    }
    return false;
}

static void remove_strays(service *svc, json_t *domains)
{
    /* Children of our pools with no desktop: made before a crash, never started. */
    for (size_t i = 0; i < svc->npools; i++) {
        pool *p = svc->pools[i];
        const vdi_datastore_config *ds = pool_datastore(p);
        if (!ds)
            continue;
        pthread_mutex_lock(&svc->catalog_lock);
        vdi_reconcile_report rep;
        vdi_reconcile(svc->catalog, ds->path, &rep, NULL);
        vdi_child_info *kids = NULL;
        size_t n = 0;
        vdi_catalog_children(svc->catalog, NULL, &kids, &n, NULL);
        for (size_t k = 0; k < n; k++) {
            if (strcmp(kids[k].pool, p->name))
                continue;
            desktop *d = NULL;
            for (unsigned j = 0; j < p->nslots; j++)
                if (!strcmp(p->desktops[j].child, kids[k].path) &&
                    p->desktops[j].state != DESKTOP_EMPTY)
                    d = &p->desktops[j];
            /* Never the disk of a domain that exists, whatever its state. */
            if (!d && !used_by_domain(domains, kids[k].path)) {
                svc_log("info", "pool=%s event=stray-child-removed child=%s", p->name,
                        kids[k].path);
                vdi_child_delete(svc->catalog, kids[k].path, NULL, NULL);
            }
        }
        free(kids);
        /* Sessions that ended while we were away (their domain is gone). */
        for (unsigned j = 0; j < p->nslots; j++) {
            desktop *d = &p->desktops[j];
            int64_t id;
            if (d->state == DESKTOP_EMPTY &&
                vdi_catalog_open_session(svc->catalog, d->name, &id, NULL, 0, NULL, NULL) == 0)
                vdi_catalog_session_end(svc->catalog, id, now_seconds(), "other", 0, NULL);
        }
        pthread_mutex_unlock(&svc->catalog_lock);
    }
}

static void adopt_done(uv_work_t *w, int status)
{
    (void)status;
    adopt_req *r = w->data;
    service *svc = r->svc;
    size_t idx;
    json_t *dom;
    json_array_foreach(r->domains, idx, dom)
    {
        const char *name = json_string_value(json_object_get(dom, "name"));
        desktop *d = service_find_desktop(svc, name);
        if (!d || d->state != DESKTOP_EMPTY)
            continue;
        snprintf(d->child, sizeof d->child, "%s",
                 json_string_value(json_object_get(dom, "child")));
        snprintf(d->gold, sizeof d->gold, "%s", json_string_value(json_object_get(dom, "gold")));
        snprintf(d->display, sizeof d->display, "%s",
                 json_string_value(json_object_get(dom, "display")));
        if (!json_is_true(json_object_get(dom, "active"))) {
            pool_end_session(d, "other");
            continue;
        }
        pthread_mutex_lock(&svc->catalog_lock);
        int64_t id = 0, started = 0;
        char user[128] = "";
        bool session = vdi_catalog_open_session(svc->catalog, d->name, &id, user, sizeof user,
                                                &started, NULL) == 0;
        pthread_mutex_unlock(&svc->catalog_lock);
        if (session) {
            /* A restart of vdipoold never ends a user's session. */
            d->session_id = id;
            d->session_start = started;
            snprintf(d->user, sizeof d->user, "%s", user);
            set_state(d, DESKTOP_ASSIGNED);
        } else {
            set_state(d, DESKTOP_READY);
        }
        svc_log("info", "pool=%s desktop=%s event=adopted state=%s", d->pool->name, d->name,
                desktop_state_name(d->state));
    }
    /* After a reconnect: desktops whose domain stopped while we could not
     * hear its events are ended now. */
    for (size_t i = 0; i < svc->npools; i++)
        for (unsigned k = 0; k < svc->pools[i]->nslots; k++) {
            desktop *d = &svc->pools[i]->desktops[k];
            if (d->busy || (d->state != DESKTOP_READY && d->state != DESKTOP_ASSIGNED))
                continue;
            bool running = false;
            json_array_foreach(r->domains, idx, dom)
            {
                if (!strcmp(json_string_value(json_object_get(dom, "name")), d->name) &&
                    json_is_true(json_object_get(dom, "active")))
                    running = true;
            }
            if (!running) {
                svc_log("info", "pool=%s desktop=%s event=domain-gone-while-disconnected",
                        d->pool->name, d->name);
                pool_end_session(d, "other");
            }
        }
    remove_strays(svc, r->domains);
    json_decref(r->domains);
    free(r);
    svc->adopted = true;
    service_converge(svc);
}

void service_on_connected(service *svc)
{
    adopt_req *r = calloc(1, sizeof *r);
    if (!r)
        return;
    r->svc = svc;
    r->work.data = r;
    uv_queue_work(svc->loop, &r->work, adopt_work, adopt_done);
}

/* ---- views ----------------------------------------------------------------------- */

json_t *desktop_json(const desktop *d)
{
    json_t *o = json_pack("{s:s,s:s,s:i,s:s,s:I}", "name", d->name, "pool", d->pool->name, "slot",
                          d->slot, "state", desktop_state_name(d->state), "state_since",
                          (json_int_t)d->state_since);
    if (d->state != DESKTOP_EMPTY) {
        json_object_set_new(o, "child", json_string(d->child));
        json_object_set_new(o, "gold", json_string(d->gold));
    }
    if (d->display[0])
        json_object_set_new(o, "display", json_string(d->display));
    if (d->state == DESKTOP_ASSIGNED) {
        json_object_set_new(o, "user", json_string(d->user));
        json_object_set_new(o, "session_id", json_integer(d->session_id));
        json_object_set_new(o, "session_started_at", json_integer(d->session_start));
    }
    if (d->state == DESKTOP_FAILED || d->failure[0])
        json_object_set_new(o, "last_failure", json_string(d->failure));
    return o;
}

json_t *pool_json(const pool *p, bool with_desktops)
{
    unsigned counts[DESKTOP_STATES] = { 0 };
    for (unsigned i = 0; i < p->nslots; i++)
        counts[p->desktops[i].state]++;
    json_t *states = json_object();
    for (int s = 0; s < DESKTOP_STATES; s++)
        json_object_set_new(states, desktop_state_name((desktop_state)s), json_integer(counts[s]));
    json_t *o = json_pack("{s:s,s:s,s:s,s:i,s:i,s:b,s:o}", "name", p->name, "gold", p->cfg->gold,
                          "datastore", p->cfg->datastore, "size", p->cfg->size, "spares",
                          p->cfg->spares, "draining", p->draining, "desktops_by_state", states);
    if (p->blocked[0])
        json_object_set_new(o, "blocked", json_string(p->blocked));
    if (p->retiring_gold[0])
        json_object_set_new(o, "retiring_gold", json_string(p->retiring_gold));
    if (p->cfg->domain.template_path)
        json_object_set_new(o, "domain_template", json_string(p->cfg->domain.template_path));
    if (with_desktops) {
        json_t *arr = json_array();
        for (unsigned i = 0; i < p->nslots; i++)
            if (p->desktops[i].state != DESKTOP_EMPTY || i < p->cfg->size)
                json_array_append_new(arr, desktop_json(&p->desktops[i]));
        json_object_set_new(o, "desktops", arr);
    }
    return o;
}

/* The loop-owned part of /metrics (datastores are measured off the loop). */
void service_write_metrics(service *svc, char **out)
{
    size_t cap = 8192, len = 0;
    char *b = malloc(cap);
#define EMIT(...)                                                                                  \
    do {                                                                                           \
        int n_ = snprintf(b + len, cap - len, __VA_ARGS__);                                        \
        if (n_ > 0 && (size_t)n_ >= cap - len) {                                                   \
            char *nb_ = realloc(b, (cap + (size_t)n_) * 2);                                        \
            if (!nb_)                                                                              \
                break;                                                                             \
            b = nb_;                                                                               \
            cap = (cap + (size_t)n_) * 2;                                                          \
            n_ = snprintf(b + len, cap - len, __VA_ARGS__);                                        \
        }                                                                                          \
        if (n_ > 0)                                                                                \
            len += (size_t)n_;                                                                     \
    } while (0)
    if (!b) {
        *out = NULL;
        return;
    }
    EMIT("# HELP vdipool_desktops Desktops by pool and state.\n# TYPE vdipool_desktops gauge\n");
    for (size_t i = 0; i < svc->npools; i++) {
        pool *p = svc->pools[i];
        unsigned counts[DESKTOP_STATES] = { 0 };
        for (unsigned j = 0; j < p->nslots; j++)
            counts[p->desktops[j].state]++;
        for (int s = 0; s < DESKTOP_STATES; s++)
            EMIT("vdipool_desktops{pool=\"%s\",state=\"%s\"} %u\n", p->name,
                 desktop_state_name((desktop_state)s), counts[s]);
    }
    EMIT("# HELP vdipool_sessions_started_total Sessions started.\n"
         "# TYPE vdipool_sessions_started_total counter\n");
    for (size_t i = 0; i < svc->npools; i++)
        EMIT("vdipool_sessions_started_total{pool=\"%s\"} %llu\n", svc->pools[i]->name,
             (unsigned long long)svc->pools[i]->sessions_started);
    EMIT("# HELP vdipool_sessions_ended_total Sessions ended, by reason.\n"
         "# TYPE vdipool_sessions_ended_total counter\n");
    for (size_t i = 0; i < svc->npools; i++)
        for (int r = 0; r < 6; r++)
            EMIT("vdipool_sessions_ended_total{pool=\"%s\",reason=\"%s\"} %llu\n",
                 svc->pools[i]->name, reasons[r],
                 (unsigned long long)svc->pools[i]->sessions_ended[r]);
    static const char *const les[12] = { "0.01", "0.05", "0.1", "0.25", "0.5", "1",
                                         "2.5",  "5",    "10",  "30",   "60",  "+Inf" };
    const latency_histogram *hs[2] = { &svc->clone_latency, &svc->start_latency };
    const char *names[2] = { "vdipool_clone_seconds", "vdipool_start_seconds" };
    for (int h = 0; h < 2; h++) {
        EMIT("# HELP %s Latency of %s.\n# TYPE %s histogram\n", names[h],
             h ? "domain starts" : "clones", names[h]);
        uint64_t cum = 0;
        for (int k = 0; k < 12; k++) {
            cum += hs[h]->buckets[k];
            EMIT("%s_bucket{le=\"%s\"} %llu\n", names[h], les[k], (unsigned long long)cum);
        }
        EMIT("%s_sum %.6f\n%s_count %llu\n", names[h], hs[h]->sum, names[h],
             (unsigned long long)hs[h]->count);
    }
#undef EMIT
    *out = b;
}
