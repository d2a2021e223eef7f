/* objects.c — the service's objects themselves: finding pools and
 * desktops, making and freeing them (a desktop is allocated once and never
 * moves), naming a slot, latency histograms, and asking the loop for a
 * controller step. Everything above builds on these; they call nothing
 * above them. */
#include "daemon.h"
#include "vdi_strmap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t service_now(const service *svc)
{
    return svc->ops->now();
}

pool *service_find_pool(service *svc, const char *name)
{
    for (size_t i = 0; i < svc->npools; i++)
        if (!strcmp(svc->pools[i]->name, name))
            return svc->pools[i];
    return NULL;
}

/* A desktop's name is always PREFIX-N with N its slot (desktop_name_slot
 * is the only place that names one, with any number of digits), so a
 * lookup parses the number instead of comparing every slot's name:
 * adoption and every libvirt event look desktops up by name, and a linear
 * search made adopting 20 000 desktops quadratic. A desktop named before
 * a reload changed its pool's prefix keeps its old name until it is
 * recycled: the slow walk still finds it. */
desktop *service_find_desktop(service *svc, const char *name)
{
    for (size_t i = 0; i < svc->npools; i++) {
        pool *p = svc->pools[i];
        const char *prefix = p->cfg->desktop_prefix;
        size_t plen = prefix ? strlen(prefix) : 0;
        if (!plen || strncmp(name, prefix, plen) || name[plen] != '-')
            continue;
        const char *digits = name + plen + 1;
        unsigned long slot = 0;
        size_t k = 0;
        for (; digits[k] >= '0' && digits[k] <= '9' && k < 10; k++)
            slot = slot * 10 + (unsigned long)(digits[k] - '0');
        if (k == 0 || digits[k] != '\0' || slot < 1 || slot > p->nslots)
            continue;
        desktop *d = p->desktops[slot - 1];
        if (d->name && !strcmp(d->name, name))
            return d;
    }
    for (size_t i = 0; i < svc->npools; i++)
        for (unsigned j = 0; j < svc->pools[i]->nslots; j++) {
            desktop *d = svc->pools[i]->desktops[j];
            if (d->name && !strcmp(d->name, name))
                return d;
        }
    return NULL;
}

const vdi_datastore_config *pool_datastore(const pool *p)
{
    return vdi_config_find_datastore(p->config, p->cfg->datastore);
}

/* PREFIX-NNN, with more digits for pools of 1000 or more; the child is
 * named after it in the pool's datastore. */
void desktop_name_slot(desktop *d)
{
    pool *p = d->pool;
    unsigned digits = 3;
    for (unsigned v = p->cfg->size; v >= 1000; v /= 10)
        digits++;
    char *name = NULL, *child = NULL;
    const vdi_datastore_config *ds = pool_datastore(p);
    if (asprintf(&name, "%s-%0*u", p->cfg->desktop_prefix, (int)digits, d->slot) < 0)
        name = NULL;
    if (name && asprintf(&child, "%s/%s.qcow2", ds ? ds->path : "/nonexistent", name) < 0)
        child = NULL;
    if (name && child) {
        free(d->name);
        free(d->child);
        d->name = name;
        d->child = child;
    } else {
        free(name);
        free(child);
        svc_log("error", "pool=%s slot=%u event=out-of-memory naming a desktop", p->name, d->slot);
    }
}

/* ---- the assigned desktops by user (pool.by_user) ------------------------------ */

static desktop *assigned_walk(pool *p, const char *user, const desktop *besides)
{
    for (desktop *d = p->by_state[DESKTOP_ASSIGNED].head; d; d = d->state_next)
        if (d != besides && d->user && !strcmp(d->user, user))
            return d;
    return NULL;
}

static void by_user_lost(pool *p)
{
    if (!p->by_user_lost)
        svc_log("error", "pool=%s event=out-of-memory indexing sessions by user; acquires walk "
                         "the sessions instead", p->name);
    p->by_user_lost = true;
}

static void by_user_add(desktop *d)
{
    pool *p = d->pool;
    if (p->by_user_lost || !d->user)
        return;
    if (!p->by_user && !(p->by_user = vdi_strmap_new())) {
        by_user_lost(p);
        return;
    }
    size_t slot;
    if (vdi_strmap_get(p->by_user, d->user, &slot))
        p->user_clashes++; /* the user has another desktop: that one stays indexed */
    else if (vdi_strmap_put(p->by_user, d->user, d->slot) < 0)
        by_user_lost(p);
}

static void by_user_remove(desktop *d)
{
    pool *p = d->pool;
    size_t slot;
    if (p->by_user_lost || !d->user || !p->by_user || !vdi_strmap_get(p->by_user, d->user, &slot))
        return;
    if (slot != d->slot) {
        p->user_clashes--; /* another desktop of the same user is the indexed one */
        return;
    }
    vdi_strmap_remove(p->by_user, d->user);
    /* Rare (two open sessions of one user, as a restart may find): the
     * user's other desktop takes its place. */
    desktop *other = p->user_clashes ? assigned_walk(p, d->user, d) : NULL;
    if (other) {
        p->user_clashes--;
        if (vdi_strmap_put(p->by_user, other->user, other->slot) < 0)
            by_user_lost(p);
    }
}

desktop *pool_assigned_to(pool *p, const char *user)
{
    if (p->by_user_lost)
        return assigned_walk(p, user, NULL);
    size_t slot;
    if (!p->by_user || !vdi_strmap_get(p->by_user, user, &slot) || slot < 1 || slot > p->nslots)
        return NULL;
    desktop *d = p->desktops[slot - 1];
    return d->state == DESKTOP_ASSIGNED ? d : NULL;
}

/* The pool's per-state lists (see desktop.state_next): desktop_set_state
 * moves a desktop between them, a new slot joins the list for empty. */
void desktop_list_add(desktop *d)
{
    desktop_list *l = &d->pool->by_state[d->state];
    d->state_next = NULL;
    d->state_prev = l->tail;
    if (l->tail)
        l->tail->state_next = d;
    else
        l->head = d;
    l->tail = d;
    l->count++;
    if (d->state == DESKTOP_ASSIGNED)
        by_user_add(d);
}

void desktop_list_remove(desktop *d)
{
    desktop_list *l = &d->pool->by_state[d->state];
    if (d->state_prev)
        d->state_prev->state_next = d->state_next;
    else
        l->head = d->state_next;
    if (d->state_next)
        d->state_next->state_prev = d->state_prev;
    else
        l->tail = d->state_prev;
    d->state_prev = d->state_next = NULL;
    l->count--;
    if (d->state == DESKTOP_ASSIGNED)
        by_user_remove(d);
}

int pool_grow_slots(pool *p, unsigned size)
{
    if (size <= p->nslots)
        return 0;
    desktop **v = realloc(p->desktops, size * sizeof *v);
    if (!v)
        return -ENOMEM;
    p->desktops = v; /* only the pointer array moves; desktops stay put */
    for (unsigned i = p->nslots; i < size; i++) {
        desktop *d = calloc(1, sizeof *d);
        if (!d)
            return -ENOMEM;
        d->pool = p;
        d->slot = i + 1;
        d->state = DESKTOP_EMPTY;
        desktop_list_add(d);
        desktop_name_slot(d);
        v[i] = d;
        p->nslots = i + 1;
    }
    return 0;
}

static void desktop_free(desktop *d)
{
    free(d->name);
    free(d->child);
    free(d->gold);
    free(d->user);
    free(d->failure);
    free(d->display);
    free(d->pause_reason);
    free(d->io_error);
    free(d->hostname);
    free(d->template_child);
    free(d->memory_image);
    free(d->gold_hash);
    json_decref(d->users);
    free(d->history);
    free(d);
}

/* Frees the pool's desktops and what the pool owns; the golds' locks are
 * the caller's (pool_free in pool.c releases them first). */
void pool_free_objects(pool *p)
{
    for (unsigned i = 0; i < p->nslots; i++) {
        desktop_set_host(p->desktops[i], NULL);
        desktop_free(p->desktops[i]);
    }
    free(p->desktops);
    free(p->name);
    free(p->blocked);
    free(p->boot_problem);
    free(p->locked_gold);
    free(p->retiring_gold);
    free(p->held_gold);
    free(p->host_counts);
    free(p->no_host);
    free(p->tmpl.gold);
    free(p->tmpl.child);
    free(p->tmpl.image);
    free(p->tmpl.problem);
    vdi_strmap_free(p->by_user);
    vdi_config_unref(p->config);
    free(p);
}

/* The bucket of `minute` (unix seconds / 60) in the pool's last-hour ring,
 * emptied first when it still counts a minute an hour older. */
unsigned pool_recent_bucket(pool *p, int64_t minute)
{
    unsigned i = (unsigned)(minute % 60);
    if (p->recent.minute[i] != minute) {
        p->recent.minute[i] = minute;
        p->recent.started[i] = 0;
        memset(p->recent.ended[i], 0, sizeof p->recent.ended[i]);
    }
    return i;
}

void pool_count_session(pool *p, bool ended, end_reason why)
{
    unsigned i = pool_recent_bucket(p, service_now(p->svc) / 60);
    if (ended) {
        p->sessions_ended[why]++;
        p->recent.ended[i][why]++;
    } else {
        p->sessions_started++;
        p->recent.started[i]++;
    }
}

static const double bucket_bounds[LATENCY_BUCKETS] = {0.01, 0.05, 0.1, 0.25, 0.5, 1,
                                                      2.5,  5,    10,  30,   60};

void latency_observe(latency_histogram *h, double seconds)
{
    int i = 0;
    while (i < LATENCY_BUCKETS && seconds > bucket_bounds[i])
        i++;
    h->buckets[i]++;
    h->count++;
    h->sum += seconds;
}

static void kicked(uv_timer_t *t)
{
    service *svc = t->data;
    svc->kick_pending = false;
    if (svc->step)
        svc->step(svc);
}

/* One controller step on the next turn of the loop, however many things
 * asked for it in this one (a finished job, an acquire, an event). */
void service_kick(service *svc)
{
    if (svc->kick_pending || svc->stopping || !svc->kick_ready)
        return;
    if (uv_timer_start(&svc->kick, kicked, 0, 0) == 0)
        svc->kick_pending = true;
}

int service_objects_init(service *svc, uv_loop_t *loop, void (*step)(service *svc))
{
    svc->loop = loop;
    svc->step = step;
    int rc = uv_timer_init(loop, &svc->kick);
    svc->kick.data = svc;
    svc->kick_ready = rc == 0;
    return rc;
}

/* ---- hosts: finding them, and which desktops are on each ------------------------- */

host *service_find_host(service *svc, const char *name)
{
    for (size_t i = 0; name && i < svc->nhosts; i++)
        if (!strcmp(svc->hosts[i]->name, name))
            return svc->hosts[i];
    return NULL;
}

bool host_usable(const host *h)
{
    return h && h->online && h->adopted;
}

/* svc->online (some host connected) and svc->adopted (every host settled:
 * the controllers may run). */
void hosts_update(service *svc)
{
    bool online = false, settled = svc->nhosts > 0;
    for (size_t i = 0; i < svc->nhosts; i++) {
        online |= svc->hosts[i]->online;
        settled &= svc->hosts[i]->settled || !svc->hosts[i]->cfg;
    }
    bool was = svc->adopted;
    svc->online = online;
    svc->adopted = settled;
    if (settled && !was)
        service_kick(svc);
}

desktop *host_find_desktop(host *h, const char *name)
{
    desktop *d = service_find_desktop(h->svc, name);
    return d && (!d->host || d->host == h) ? d : NULL;
}

unsigned *pool_host_count(pool *p, const host *h)
{
    if (h->index >= p->nhost_counts) {
        unsigned n = h->index + 1;
        unsigned *v = realloc(p->host_counts, n * sizeof *v);
        if (!v)
            return NULL;
        memset(v + p->nhost_counts, 0, (n - p->nhost_counts) * sizeof *v);
        p->host_counts = v;
        p->nhost_counts = n;
    }
    return &p->host_counts[h->index];
}

void desktop_set_host(desktop *d, host *h)
{
    if (d->host == h)
        return;
    if (d->host) {
        unsigned *c = pool_host_count(d->pool, d->host);
        if (c && *c)
            (*c)--;
        if (d->host->desktops)
            d->host->desktops--;
    }
    d->host = h;
    if (h) {
        unsigned *c = pool_host_count(d->pool, h);
        if (c)
            (*c)++;
        h->desktops++;
        h->memory_placed += d->pool->cfg->domain.memory_bytes;
    }
}

const desktop *pool_next_occupied(const pool *p, const desktop *d)
{
    if (d && d->state_next)
        return d->state_next;
    for (int s = d ? (int)d->state + 1 : 0; s < DESKTOP_STATE_COUNT; s++)
        if (s != DESKTOP_EMPTY && p->by_state[s].head)
            return p->by_state[s].head;
    return NULL;
}

void host_count_states(service *svc, const host *h, unsigned counts[DESKTOP_STATE_COUNT])
{
    memset(counts, 0, DESKTOP_STATE_COUNT * sizeof *counts);
    /* An empty slot has no host (desktop_set_state). */
    for (size_t i = 0; i < svc->npools; i++) {
        const pool *p = svc->pools[i];
        for (const desktop *d = pool_next_occupied(p, NULL); d; d = pool_next_occupied(p, d))
            if (d->host == h)
                counts[d->state]++;
    }
}
