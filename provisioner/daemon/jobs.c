/* jobs.c — the real desktop_ops: clone, start and end run on libuv's
 * thread pool (what each does there is jobruns.c's). A job owns everything
 * it reads: copies of the desktop's strings, a reference on the config its
 * settings point into, and a reference on the libvirt connection. Its
 * result comes back to the loop, which finds the desktop again by pool
 * name and slot (and job number) before it changes anything; a result for
 * a slot that is gone has its leftovers removed. */
#include "jobs.h"
#include "daemon.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Hands a job's result to the desktop's state machine. */
static void deliver(desktop *d, job_kind kind, int rc, bool blocked, const char *error,
                    const char *display, double seconds)
{
    switch (kind) {
    case JOB_CLONE: desktop_cloned(d, rc, blocked, error, seconds); break;
    case JOB_START: desktop_started(d, rc, error, display, seconds); break;
    case JOB_END: desktop_ended(d, rc, error); break;
    case JOB_RESUME: desktop_resume_tried(d, rc, error); break;
    case JOB_LEFTOVERS:
    case JOB_BUDGET:
    case JOB_AGENT_CHECK:
    case JOB_USERS:
    case JOB_ADOPT_CHECK: break; /* not delivered here (job_done, agent.c, adopt.c) */
    }
}

/* The desktop this job was for, or NULL when its slot or pool is gone or
 * another job has taken it since. */
desktop *job_desktop(service *svc, const job *j)
{
    pool *p = service_find_pool(svc, j->pool);
    if (!p || j->slot == 0 || j->slot > p->nslots)
        return NULL;
    desktop *d = p->desktops[j->slot - 1];
    return d->busy && d->job_seq == j->seq ? d : NULL;
}

void job_done(service *svc, void *data)
{
    job *j = data;
    double took = jobs_mono() - j->started;
    desktop *d = j->kind == JOB_LEFTOVERS ? NULL : job_desktop(svc, j);
    if (j->slot_released)
        start_slot_returned(svc);
    pool *gp = j->growth_reread ? service_find_pool(svc, j->pool) : NULL;
    if (gp) {
        gp->growth_read = true;
        gp->growth_learned = j->growth_learned;
        gp->growth_p95 = j->growth_p95;
        gp->growth_read_at = jobs_mono();
    }
    if (j->kind == JOB_BUDGET) {
        pool *p = service_find_pool(svc, j->pool);
        if (j->rc == 0) {
            svc_log("info", "pool=%s desktop=%s event=write-budget-raised from=%llu", j->pool,
                    j->name, (unsigned long long)j->threshold);
        } else if (p) {
            svc_log("warning", "pool=%s desktop=%s event=datastore-short reason=\"%s\"", j->pool,
                    j->name, j->error ? j->error : "unknown");
            if (j->rc == -ENOSPC) {
                set_str(&p->blocked, j->error);
                p->blocked_retry_at = service_now(svc) + 30;
            }
        }
    } else if (j->kind == JOB_LEFTOVERS) {
        if (j->rc < 0)
            svc_log("error", "pool=%s desktop=%s event=leftovers-not-removed reason=\"%s\"",
                    j->pool, j->name, j->error ? j->error : "unknown");
    } else if (!d) {
        svc_log("warning", "pool=%s desktop=%s event=stale-result job=%d; removing its leftovers",
                j->pool, j->name, (int)j->kind);
        /* The desktop's transition would have closed these counts. */
        if (j->kind == JOB_CLONE)
            svc->clones_running--;
        if (j->kind == JOB_START)
            svc->starts_running--;
        /* Only what a clone or a start made is a leftover; a resume or an
         * end changed nothing that must go. */
        if ((j->kind == JOB_CLONE || j->kind == JOB_START) && j->rc == 0)
            jobs_clean_leftovers(svc, service_find_host(svc, j->host), j->name, j->child);
    } else {
        d->busy = false;
        if (j->kind == JOB_CLONE) {
            set_str(&d->gold_hash, j->rc == 0 && *j->gold_hash ? j->gold_hash : NULL);
            d->child_bytes = j->rc == 0 ? j->child_bytes : 0;
        }
        if (j->template_bad)
            pool_template_refused(d->pool, j->error ? j->error : "unknown error");
        if (j->agent_connected && d->agent != AGENT_CONNECTED) {
            d->agent = AGENT_CONNECTED;
            d->agent_since = service_now(svc);
        }
        deliver(d, j->kind, j->rc, j->blocked, j->error ? j->error : "unknown error", j->display,
                took);
    }
    job_free(j);
    service_kick(svc);
}

static job *job_new(service *svc, host *h, job_kind kind, const char *pool_name,
                    const char *name, const char *child)
{
    job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->kind = kind;
    j->idle_seconds = -1;
    j->catalog = svc->catalog;
    j->started = jobs_mono();
    j->pool = strdup(pool_name ? pool_name : "");
    j->name = strdup(name ? name : "");
    j->child = child ? strdup(child) : NULL;
    if (!j->pool || !j->name || (child && !j->child)) {
        job_free(j);
        return NULL;
    }
    if (h && ((h->name && !(j->host = strdup(h->name))) ||
              !(j->address = host_display_address(h->uri)))) {
        job_free(j);
        return NULL;
    }
    if (h && h->conn && virConnectRef(h->conn) == 0)
        j->conn = h->conn;
    return j;
}

/* Queues a job for d; on failure the desktop gets the failure as a result
 * at once, so its state never waits for a job that does not exist. */
/* A job for d with copies of what any job for it reads, or NULL. */
job *desktop_job(desktop *d, job_kind kind)
{
    pool *p = d->pool;
    job *j = job_new(p->svc, d->host, kind, p->name, d->name, d->child);
    if (!j)
        return NULL;
    j->config = vdi_config_ref(p->config);
    j->pc = p->cfg;
    j->ds = pool_datastore(p);
    j->slot = d->slot;
    if (kind == JOB_START) {
        if (d->gold_hash)
            snprintf(j->gold_hash, sizeof j->gold_hash, "%s", d->gold_hash);
        /* Once: a later start of the same child reads its record. */
        j->child_bytes = d->child_bytes;
        d->child_bytes = 0;
        j->start_slots = p->svc->start_slots;
    }
    j->session_id = d->session_id;
    j->reason = d->end_reason;
    if (p->growth_read && jobs_mono() - p->growth_read_at < GROWTH_TTL) {
        j->growth_read = true;
        j->growth_learned = p->growth_learned;
        j->growth_p95 = p->growth_p95;
    }
    if ((d->gold && !(j->gold = strdup(d->gold))) ||
        (d->template_child && !(j->template_child = strdup(d->template_child))) ||
        (d->memory_image && !(j->memory_image = strdup(d->memory_image))) ||
        (kind == JOB_AGENT_CHECK && d->hostname && !(j->hostname = strdup(d->hostname)))) {
        job_free(j);
        return NULL;
    }
    return j;
}

void job_submit(desktop *d, job_kind kind, work_run_fn run)
{
    job_submit_with(d, kind, run, job_done);
}

void job_submit_with(desktop *d, job_kind kind, work_run_fn run, work_done_fn done)
{
    pool *p = d->pool;
    service *svc = p->svc;
    job *j = desktop_job(d, kind);
    int rc = -ENOMEM;
    if (j) {
        j->clones_in_flight = svc->clones_running ? svc->clones_running - 1 : 0;
        j->seq = ++svc->next_job_seq;
        d->busy = true;
        d->job_seq = j->seq;
        rc = work_submit(svc, run, done, j);
    }
    if (rc == 0)
        return;
    svc_log("error", "pool=%s desktop=%s event=job-not-queued kind=%d reason=\"%s\"", p->name,
            d->name, (int)kind, uv_strerror(rc));
    if (j) {
        /* The job's own result, at once: its done() finds the desktop busy
         * with this job and hands it the failure (an agent check is only
         * asked again: -EAGAIN). */
        job_fail(j, kind == JOB_AGENT_CHECK ? -EAGAIN : rc, "could not queue work: %s",
                 uv_strerror(rc));
        done(svc, j);
    } else {
        char why[128];
        snprintf(why, sizeof why, "could not queue work: %s", uv_strerror(rc));
        deliver(d, kind, rc, false, why, NULL, 0); /* agent checks are simply asked again */
    }
}

void jobs_clean_leftovers(service *svc, host *h, const char *name, const char *child)
{
    job *j = job_new(svc, h, JOB_LEFTOVERS, "", name, child);
    if (!j || work_submit(svc, jobs_end_run, job_done, j) < 0) {
        svc_log("error",
                "desktop=%s event=leftovers-not-removed child=%s reason=\"cannot queue "
                "work\"; reconcile at the next start removes it",
                name, child ? child : "-");
        if (j)
            job_free(j);
    }
}

void jobs_op_clone(desktop *d)
{
    job_submit(d, JOB_CLONE, jobs_clone_run);
}
void jobs_op_start(desktop *d)
{
    job_submit(d, JOB_START, jobs_start_run);
}
void jobs_op_end(desktop *d)
{
    job_submit(d, JOB_END, jobs_end_run);
}
void jobs_op_resume(desktop *d)
{
    job_submit(d, JOB_RESUME, jobs_resume_run);
}

/* Not a change of the desktop's state: it stays usable (not busy). */
void jobs_op_check_budget(desktop *d, uint64_t threshold)
{
    pool *p = d->pool;
    job *j = desktop_job(d, JOB_BUDGET);
    if (j)
        j->threshold = threshold;
    if (!j || work_submit(p->svc, jobs_budget_run, job_done, j) < 0) {
        svc_log("error", "pool=%s desktop=%s event=write-budget-not-checked", p->name, d->name);
        if (j)
            job_free(j);
    }
}
int64_t jobs_op_now(void)
{
    return (int64_t)time(NULL);
}
