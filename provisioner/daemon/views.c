/* views.c — what the API shows of the service: JSON for pools, desktops
 * and status, and the loop-owned part of the Prometheus metrics. Read-only. */
#include "api.h"
#include "daemon.h"
#include "text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const bucket_names[LATENCY_BUCKETS + 1] = {
    "0.01", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "+Inf"};

json_t *desktop_json(const desktop *d)
{
    json_t *o = json_pack("{s:s,s:s,s:i,s:s,s:I}", "name", d->name ? d->name : "", "pool",
                          d->pool->name, "slot", d->slot, "state", desktop_state_name(d->state),
                          "state_since", (json_int_t)d->state_since);
    if (d->state != DESKTOP_EMPTY) {
        json_object_set_new(o, "child", json_string(d->child ? d->child : ""));
        json_object_set_new(o, "gold", json_string(d->gold ? d->gold : ""));
    }
    if (d->host)
        json_object_set_new(o, "host", json_string(d->host->name));
    if (d->display)
        json_object_set_new(o, "display", json_string(d->display));
    if (d->state == DESKTOP_UNREACHABLE)
        json_object_set_new(o, "state_before", json_string(desktop_state_name(d->unreachable_from)));
    if (d->state == DESKTOP_UNREACHABLE || d->state == DESKTOP_ADOPTING) {
        if (d->user)
            json_object_set_new(o, "user", json_string(d->user));
        if (d->session_id)
            json_object_set_new(o, "session_id", json_integer(d->session_id));
    }
    if (d->state == DESKTOP_ASSIGNED) {
        json_object_set_new(o, "user", json_string(d->user ? d->user : ""));
        json_object_set_new(o, "session_id", json_integer(d->session_id));
        json_object_set_new(o, "session_started_at", json_integer(d->session_start));
    }
    if (d->failure)
        json_object_set_new(o, "last_failure", json_string(d->failure));
    if (d->boot_seconds > 0)
        json_object_set_new(o, "boot_seconds", json_real(d->boot_seconds));
    if (d->memory_image && d->state != DESKTOP_EMPTY)
        json_object_set_new(o, "resumed_from", json_string(d->memory_image));
    if (d->pool->cfg->ready_when == VDI_READY_AGENT && d->state != DESKTOP_EMPTY &&
        d->state != DESKTOP_CLONING && d->state != DESKTOP_FAILED) {
        json_object_set_new(o, "agent", json_string(agent_state_name(d->agent)));
        json_object_set_new(o, "agent_since", json_integer(d->agent_since));
        if (d->hostname)
            json_object_set_new(o, "hostname", json_string(d->hostname));
        if (d->state == DESKTOP_ASSIGNED) {
            json_object_set_new(o, "logged_in_users",
                                d->users ? json_copy(d->users) : json_array());
            if (d->logged_off_at)
                json_object_set_new(o, "logged_off_at", json_integer(d->logged_off_at));
            if (d->idle_seconds >= 0)
                json_object_set_new(o, "idle_seconds", json_integer(d->idle_seconds));
        }
    }
    if (d->state == DESKTOP_PAUSED) {
        json_object_set_new(o, "paused_reason",
                            json_string(d->pause_reason ? d->pause_reason : ""));
        json_object_set_new(o, "paused_since", json_integer(d->paused_since));
        if (d->user)
            json_object_set_new(o, "user", json_string(d->user));
    }
    return o;
}

/* A desktop's last state changes, oldest first. */
json_t *desktop_detail_json(const desktop *d)
{
    json_t *o = desktop_json(d), *changes = json_array();
    const desktop_history *h = d->history;
    for (unsigned k = 0; h && k < h->count; k++) {
        const desktop_change *c =
            &h->changes[(h->next + DESKTOP_HISTORY - h->count + k) % DESKTOP_HISTORY];
        json_t *e = json_pack("{s:I,s:s,s:s}", "at", (json_int_t)c->at, "from",
                              desktop_state_name((desktop_state)c->from), "to",
                              desktop_state_name((desktop_state)c->to));
        if (c->reason < END_REASON_COUNT)
            json_object_set_new(e, "reason", json_string(end_reason_name((end_reason)c->reason)));
        json_array_append_new(changes, e);
    }
    json_object_set_new(o, "history", changes);
    return o;
}

/* Sessions started and ended (by reason) in the last 60 minutes (the
 * current one and the 59 before it), from the catalog's sessions when the
 * pool was made and counted since; `since` is where that window begins. */
static json_t *sessions_last_hour(const pool *p)
{
    int64_t now = service_now(p->svc), minute = now / 60;
    uint64_t started = 0, ended[END_REASON_COUNT] = {0};
    for (unsigned i = 0; i < 60; i++) {
        if (p->recent.minute[i] < minute - 59 || p->recent.minute[i] > minute)
            continue;
        started += p->recent.started[i];
        for (int r = 0; r < END_REASON_COUNT; r++)
            ended[r] += p->recent.ended[i][r];
    }
    json_t *by_reason = json_object();
    uint64_t total = 0;
    for (int r = 0; r < END_REASON_COUNT; r++)
        if (ended[r]) {
            json_object_set_new(by_reason, end_reason_name((end_reason)r),
                                json_integer((json_int_t)ended[r]));
            total += ended[r];
        }
    int64_t since = (minute - 59) * 60;
    return json_pack("{s:I,s:I,s:o,s:I}", "started", (json_int_t)started, "ended",
                     (json_int_t)total, "ended_by_reason", by_reason, "since", (json_int_t)since);
}

/* The resident memory of a pool's desktops at their hosts' last readings;
 * measured (may be NULL) gets how many had a reading. */
static uint64_t pool_rss(const pool *p, unsigned *measured)
{
    uint64_t rss = 0;
    unsigned n = 0;
    for (const desktop *d = pool_next_occupied(p, NULL); d; d = pool_next_occupied(p, d))
        if (d->rss_bytes) {
            rss += d->rss_bytes;
            n++;
        }
    if (measured)
        *measured = n;
    return rss;
}

/* How many of the pool's desktops run on each gold (version), a roll-out's
 * progress. */
static json_t *desktops_by_gold(const pool *p)
{
    json_t *o = json_object();
    for (const desktop *d = pool_next_occupied(p, NULL); d; d = pool_next_occupied(p, d)) {
        if (d->state == DESKTOP_FAILED || !d->gold)
            continue;
        json_t *n = json_object_get(o, d->gold);
        json_object_set_new(o, d->gold, json_integer(n ? json_integer_value(n) + 1 : 1));
    }
    return o;
}

static int by_slot(const void *a, const void *b)
{
    unsigned x = (*(const desktop *const *)a)->slot, y = (*(const desktop *const *)b)->slot;
    return (x > y) - (x < y);
}

/* The desktops the API lists, in slot order: every slot within size, and
 * beyond it those not empty (a pool that shrank), in one of the states of
 * `state_mask` (0: any). A filter without `empty` is served from the state
 * lists (the desktops it names, sorted), not from a walk of every slot.
 * The array is malloc'd; NULL with *count 0 when out of memory. */
static const desktop **listed_desktops(const pool *p, unsigned state_mask, size_t *count)
{
    *count = 0;
    bool from_lists = state_mask && !(state_mask & (1u << DESKTOP_EMPTY));
    size_t cap = 0;
    for (int s = 0; s < DESKTOP_STATE_COUNT; s++)
        if (!from_lists || (state_mask & (1u << s)))
            cap += p->by_state[s].count;
    const desktop **v = malloc((cap ? cap : 1) * sizeof *v);
    if (!v)
        return NULL;
    size_t n = 0;
    if (from_lists) {
        for (int s = 0; s < DESKTOP_STATE_COUNT; s++)
            if (state_mask & (1u << s))
                for (const desktop *d = p->by_state[s].head; d && n < cap; d = d->state_next)
                    v[n++] = d;
        qsort(v, n, sizeof *v, by_slot);
    } else {
        for (unsigned i = 0; i < p->nslots && n < cap; i++) {
            const desktop *d = p->desktops[i];
            if ((d->state != DESKTOP_EMPTY || i < p->cfg->size) &&
                (!state_mask || (state_mask & (1u << d->state))))
                v[n++] = d;
        }
    }
    *count = n;
    return v;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* How long the current spares took from start to ready: min, median, max
 * (over the ready list only), or NULL when none is known. */
static json_t *spares_boot_json(const pool *p)
{
    const desktop_list *ready = &p->by_state[DESKTOP_READY];
    double *v = ready->count ? malloc(ready->count * sizeof *v) : NULL;
    size_t n = 0;
    for (const desktop *d = ready->head; v && d; d = d->state_next)
        if (d->boot_seconds > 0)
            v[n++] = d->boot_seconds;
    json_t *o = NULL;
    if (n) {
        qsort(v, n, sizeof *v, cmp_double);
        o = json_pack("{s:f,s:f,s:f,s:i}", "min", v[0], "median", v[n / 2], "max", v[n - 1],
                      "desktops", (int)n);
    }
    free(v);
    return o;
}

json_t *pool_json(const pool *p, bool with_desktops)
{
    return pool_json_page(p, with_desktops, 0, 0, 0);
}

/* Desktops from `offset` on, at most `limit` of them (0: all), counted over
 * the slots the API lists (within size, or beyond it while not empty) that
 * are in one of the states of `state_mask` (0: any). */
json_t *pool_json_page(const pool *p, bool with_desktops, unsigned offset, unsigned limit,
                       unsigned state_mask)
{
    json_t *states = json_object(); /* every slot is on its state's list */
    for (int s = 0; s < DESKTOP_STATE_COUNT; s++)
        json_object_set_new(states, desktop_state_name((desktop_state)s),
                            json_integer(p->by_state[s].count));
    json_t *o = json_pack("{s:s,s:s,s:s,s:i,s:i,s:b,s:o}", "name", p->name, "gold", pool_gold(p),
                          "datastore", p->cfg->datastore, "size", p->cfg->size, "spares",
                          p->cfg->spares, "draining", p->draining, "desktops_by_state", states);
    json_object_set_new(o, "drained", json_boolean(p->drained_since != 0));
    if (p->drained_since)
        json_object_set_new(o, "drained_since", json_integer(p->drained_since));
    json_object_set_new(o, "sessions_last_hour", sessions_last_hour(p));
    if (p->blocked)
        json_object_set_new(o, "blocked", json_string(p->blocked));
    if (p->no_host)
        json_object_set_new(o, "no_host", json_string(p->no_host));
    json_t *by_host = json_object();
    for (unsigned k = 0; k < p->nhost_counts && k < p->svc->nhosts; k++)
        if (p->host_counts[k])
            json_object_set_new(by_host, p->svc->hosts[k]->name, json_integer(p->host_counts[k]));
    json_object_set_new(o, "desktops_by_host", by_host);
    if (p->cfg->hosts) {
        json_t *names = json_array();
        for (size_t k = 0; k < p->cfg->nhosts; k++)
            json_array_append_new(names, json_string(p->cfg->hosts[k]));
        json_object_set_new(o, "hosts", names);
    }
    if (p->retiring_gold)
        json_object_set_new(o, "retiring_gold", json_string(p->retiring_gold));
    if (p->cfg->domain.template_path)
        json_object_set_new(o, "domain_template", json_string(p->cfg->domain.template_path));
    json_object_set_new(o, "ready_when", json_string(vdi_ready_when_name(p->cfg->ready_when)));
    json_object_set_new(o, "start", json_string(vdi_start_name(p->cfg->start)));
    if (p->cfg->start == VDI_START_RESUME) {
        static const char *const tstates[] = {"none", "building", "ready", "failed"};
        json_t *t = json_pack("{s:s}", "state", tstates[p->tmpl.state]);
        if (p->tmpl.image && p->tmpl.state == TEMPLATE_READY) {
            json_object_set_new(t, "image", json_string(p->tmpl.image));
            json_object_set_new(t, "template_child", json_string(p->tmpl.child));
            json_object_set_new(t, "built_seconds", json_real(p->tmpl.built_seconds));
        }
        if (p->tmpl.problem)
            json_object_set_new(t, "problem", json_string(p->tmpl.problem));
        json_object_set_new(o, "memory_image", t);
    }
    json_object_set_new(o, "rollout", json_string(vdi_rollout_name(p->cfg->rollout)));
    if (p->held_gold)
        json_object_set_new(o, "held_for_rollout_to", json_string(p->cfg->gold));
    if (p->cfg->gold_version)
        json_object_set_new(o, "gold_version", json_integer(p->cfg->gold_version));
    json_object_set_new(o, "desktops_by_gold", desktops_by_gold(p));
    if (p->cfg->ready_when == VDI_READY_AGENT)
        json_object_set_new(o, "boot_timeout", json_integer((json_int_t)p->cfg->boot_timeout));
    if (p->boot_problem)
        json_object_set_new(o, "boot_problem", json_string(p->boot_problem));
    unsigned measured = 0;
    uint64_t rss = pool_rss(p, &measured);
    json_object_set_new(o, "memory", json_pack("{s:I,s:i}", "rss_bytes", (json_int_t)rss,
                                               "desktops", (int)measured));
    json_t *boot = spares_boot_json(p);
    if (boot)
        json_object_set_new(o, "spares_boot_seconds", boot);
    if (with_desktops) {
        json_t *arr = json_array();
        size_t listed = 0;
        const desktop **v = listed_desktops(p, state_mask, &listed);
        for (size_t i = offset; v && i < listed && (!limit || i - offset < limit); i++)
            json_array_append_new(arr, desktop_json(v[i]));
        free(v);
        json_object_set_new(o, "desktops", arr);
        if (offset || limit || state_mask) {
            json_object_set_new(o, "desktops_total", json_integer(listed));
            json_object_set_new(o, "offset", json_integer(offset));
        }
    }
    return o;
}

json_t *status_json(service *svc)
{
    json_t *pools = json_array();
    for (size_t i = 0; i < svc->npools; i++)
        json_array_append_new(pools, pool_json(svc->pools[i], false));
    unsigned connected = 0;
    for (size_t i = 0; i < svc->nhosts; i++)
        connected += svc->hosts[i]->online;
    /* libvirt_connected: every host answers (one host: its connection). */
    return json_pack("{s:s,s:I,s:b,s:i,s:i,s:s,s:s,s:o}", "version", "0.1.0", "started_at",
                     (json_int_t)svc->started_at, "libvirt_connected",
                     svc->nhosts > 0 && connected == svc->nhosts, "hosts_connected", connected,
                     "hosts", (int)svc->nhosts, "config", svc->config_path, "state_dir",
                     svc->state_dir, "pools", pools);
}

/* The loop-owned part of /metrics (datastores are measured off the loop). */
char *service_metrics_text(service *svc)
{
    strbuf t = {0};
    text_append(&t, "# HELP vdipool_desktops Desktops by pool and state.\n"
                    "# TYPE vdipool_desktops gauge\n");
    for (size_t i = 0; i < svc->npools; i++)
        for (int s = 0; s < DESKTOP_STATE_COUNT; s++)
            text_append(&t, "vdipool_desktops{pool=\"%s\",state=\"%s\"} %u\n", svc->pools[i]->name,
                        desktop_state_name((desktop_state)s), svc->pools[i]->by_state[s].count);
    text_append(&t, "# HELP vdipool_host_desktops Desktops by host and state.\n"
                    "# TYPE vdipool_host_desktops gauge\n"
                    "# HELP vdipool_host_connected Whether vdipoold reaches the host's libvirtd.\n"
                    "# TYPE vdipool_host_connected gauge\n");
    for (size_t i = 0; i < svc->nhosts; i++) {
        const host *h = svc->hosts[i];
        unsigned counts[DESKTOP_STATE_COUNT];
        host_count_states(svc, h, counts);
        text_append(&t, "vdipool_host_connected{host=\"%s\"} %d\n", h->name, h->online ? 1 : 0);
        for (int s = 0; s < DESKTOP_STATE_COUNT; s++)
            if (s != DESKTOP_EMPTY)
                text_append(&t, "vdipool_host_desktops{host=\"%s\",state=\"%s\"} %u\n", h->name,
                            desktop_state_name((desktop_state)s), counts[s]);
        if (h->memory_known)
            text_append(&t, "vdipool_host_free_memory_bytes{host=\"%s\"} %llu\n", h->name,
                        (unsigned long long)h->free_memory);
        if (h->ksm_known)
            text_append(&t, "vdipool_host_ksm_saved_bytes{host=\"%s\"} %llu\n", h->name,
                        (unsigned long long)(h->ksm_sharing * (uint64_t)sysconf(_SC_PAGESIZE)));
    }
    text_append(&t, "# HELP vdipool_pool_rss_bytes Resident memory of a pool's desktops.\n"
                    "# TYPE vdipool_pool_rss_bytes gauge\n");
    for (size_t i = 0; i < svc->npools; i++) {
        text_append(&t, "vdipool_pool_rss_bytes{pool=\"%s\"} %llu\n", svc->pools[i]->name,
                    (unsigned long long)pool_rss(svc->pools[i], NULL));
    }
    text_append(&t, "# HELP vdipool_sessions_started_total Sessions started.\n"
                    "# TYPE vdipool_sessions_started_total counter\n");
    for (size_t i = 0; i < svc->npools; i++)
        text_append(&t, "vdipool_sessions_started_total{pool=\"%s\"} %llu\n", svc->pools[i]->name,
                    (unsigned long long)svc->pools[i]->sessions_started);
    text_append(&t, "# HELP vdipool_sessions_ended_total Sessions ended, by reason.\n"
                    "# TYPE vdipool_sessions_ended_total counter\n");
    for (size_t i = 0; i < svc->npools; i++)
        for (int r = 0; r < END_REASON_COUNT; r++)
            text_append(&t, "vdipool_sessions_ended_total{pool=\"%s\",reason=\"%s\"} %llu\n",
                        svc->pools[i]->name, end_reason_name((end_reason)r),
                        (unsigned long long)svc->pools[i]->sessions_ended[r]);
    text_append(&t,
                "# HELP vdipool_write_budget_exceeded_total Desktops whose child grew past "
                "what admission assumed.\n# TYPE vdipool_write_budget_exceeded_total counter\n"
                "vdipool_write_budget_exceeded_total %llu\n",
                (unsigned long long)svc->budget_events);
    if (svc->api) {
        api_connection_stats c;
        api_server_connection_stats(svc->api, &c);
        text_append(&t,
                    "# HELP vdipool_api_connections API connections open (kept, held acquires "
                    "and event streams included).\n# TYPE vdipool_api_connections gauge\n"
                    "vdipool_api_connections %u\n"
                    "# HELP vdipool_api_connections_max service.max_connections as applied.\n"
                    "# TYPE vdipool_api_connections_max gauge\nvdipool_api_connections_max %u\n"
                    "# HELP vdipool_api_connections_refused_total Connections answered 503 for "
                    "being over service.max_connections.\n"
                    "# TYPE vdipool_api_connections_refused_total counter\n"
                    "vdipool_api_connections_refused_total %llu\n",
                    c.open, c.max, (unsigned long long)c.refused);
    }
    if (svc->catalog) {
        uint64_t commits, flushes;
        vdi_catalog_counts(svc->catalog, &commits, &flushes);
        text_append(&t,
                    "# HELP vdipool_catalog_commits_total Catalog transactions committed.\n"
                    "# TYPE vdipool_catalog_commits_total counter\n"
                    "vdipool_catalog_commits_total %llu\n"
                    "# HELP vdipool_catalog_flushes_total Disk flushes of the catalog's journal "
                    "(one carries many commits under load).\n"
                    "# TYPE vdipool_catalog_flushes_total counter\n"
                    "vdipool_catalog_flushes_total %llu\n"
                    "# HELP vdipool_acquire_flush_waits_total Acquire answers that waited for "
                    "their session to reach the disk.\n"
                    "# TYPE vdipool_acquire_flush_waits_total counter\n"
                    "vdipool_acquire_flush_waits_total %llu\n"
                    "# HELP vdipool_catalog_statements_total Catalog rows read or written "
                    "(statements run, each one hold of the catalog's lock).\n"
                    "# TYPE vdipool_catalog_statements_total counter\n"
                    "vdipool_catalog_statements_total %llu\n",
                    (unsigned long long)commits, (unsigned long long)flushes,
                    (unsigned long long)svc->answers_waited,
                    (unsigned long long)vdi_catalog_statements(svc->catalog));
    }
    const latency_histogram *hs[5] = {&svc->clone_latency, &svc->start_latency,
                                      &svc->boot_latency, &svc->resume_latency,
                                      &svc->ready_latency};
    const char *names[5] = {"vdipool_clone_seconds", "vdipool_start_seconds",
                            "vdipool_boot_seconds", "vdipool_resume_seconds",
                            "vdipool_ready_seconds"};
    const char *what[5] = {"clones", "domain starts",
                           "boots (domain start to guest agent ready, ready_when = agent)",
                           "resumes from a memory image (start = resume)",
                           "new desktops, clone begun to ready (all of the above)"};
    for (int h = 0; h < 5; h++) {
        text_append(&t, "# HELP %s Latency of %s.\n# TYPE %s histogram\n", names[h], what[h],
                    names[h]);
        uint64_t cum = 0;
        for (int k = 0; k <= LATENCY_BUCKETS; k++) {
            cum += hs[h]->buckets[k];
            text_append(&t, "%s_bucket{le=\"%s\"} %llu\n", names[h], bucket_names[k],
                        (unsigned long long)cum);
        }
        text_append(&t, "%s_sum %.6f\n%s_count %llu\n", names[h], hs[h]->sum, names[h],
                    (unsigned long long)hs[h]->count);
    }
    return text_take(&t);
}
