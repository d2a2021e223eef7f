/* adopt.c — reconciling with libvirt at start-up and after a reconnect.
 * Files on disk and libvirt's domains are the ground truth:
 *  1. a worker lists the domains that carry vdipool metadata;
 *  2. the loop adopts the running ones into their slots (ready, or assigned
 *     when the catalog has the session open), and ends desktops whose
 *     domain stopped while nobody listened; but while libvirt still runs a
 *     job on a domain adoption would end (a start or restore begun for a
 *     vdipoold that crashed), the host waits, bounded, and is listed again;
 *  3. a worker removes children of our pools that no desktop and no domain
 *     uses (made before a crash, never started) and closes sessions whose
 *     desktop is gone. The controllers clone meanwhile: only children made
 *     and sessions begun before the check started are its business, so a
 *     new spare is never taken for a stray.
 * A child is never removed while a domain of that name or disk exists. */
#include "daemon.h"
#include "vdi_strmap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct adopt_req {
    host *h;            /* read on the loop only */
    virConnectPtr conn; /* a reference */
    char *address;      /* where the host's displays are reached */
    vdi_catalog *catalog;
    json_t *domains; /* [{name, active, pool, slot, child, gold, display}] */
    char *error;
} adopt_req;

/* libvirt hands metadata back re-serialized, without our prefix
 * ("<child>…</child>"); accept either form. */
static char *xml_field(const char *xml, const char *tag)
{
    static const char *const prefixes[] = {"", "vdipool:"};
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

/* How long adoption waits for libvirt's jobs on domains it would end
 * before it ends them anyway (a start takes seconds, a restore of a large
 * memory image from a slow disk tens of seconds). */
#define ADOPT_JOB_WAIT_S 120

/* Why a running domain is paused, or NULL when it is not: a guest stopped
 * on an I/O error while nobody listened is never adopted as ready. */
static const char *pause_reason(virDomainPtr dom, int state, int reason)
{
    if (state != VIR_DOMAIN_PAUSED)
        return NULL;
    if (reason != VIR_DOMAIN_PAUSED_IOERROR)
        return "paused outside vdipool";
    virDomainDiskError errors[8];
    int n = virDomainGetDiskErrors(dom, errors, 8, 0);
    bool no_space = false;
    for (int i = 0; i < n; i++) {
        no_space |= errors[i].error == VIR_DOMAIN_DISK_ERROR_NO_SPACE;
        free(errors[i].disk);
    }
    return no_space ? "no space" : "I/O error";
}

static void list_run(void *data)
{
    adopt_req *r = data;
    r->domains = json_array();
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(r->conn, &doms, 0);
    if (n < 0) {
        virErrorPtr e = virGetLastError();
        r->error = strdup(e && e->message ? e->message : "unknown error");
        return;
    }
    for (int i = 0; i < n; i++) {
        char *meta = virDomainGetMetadata(doms[i], VIR_DOMAIN_METADATA_ELEMENT, VDI_XML_NS, 0);
        if (meta) {
            char *pname = xml_field(meta, "pool"), *slot = xml_field(meta, "slot"),
                 *child = xml_field(meta, "child"), *gold = xml_field(meta, "gold");
            bool active = virDomainIsActive(doms[i]) == 1;
            int state = VIR_DOMAIN_NOSTATE, reason = 0;
            if (active && virDomainGetState(doms[i], &state, &reason, 0) < 0)
                state = VIR_DOMAIN_NOSTATE;
            /* One XML read gives the display and the agent channel's state. */
            char *xml = active ? virDomainGetXMLDesc(doms[i], 0) : NULL;
            char *display = domain_display_from_xml(xml, r->address);
            agent_state agent = domain_agent_from_xml(xml);
            free(xml);
            const char *paused = active ? pause_reason(doms[i], state, reason) : NULL;
            /* libvirt still works on it: starting or restoring it (its state
             * is "paused, starting up" until then), or a call waits on its
             * monitor. Asked only of a domain that does not run (adoption
             * ends none that runs): one call more for a few, not for all. A
             * driver without control info has no such jobs. */
            virDomainControlInfo control;
            bool in_job = active && state != VIR_DOMAIN_RUNNING &&
                          virDomainGetControlInfo(doms[i], &control, 0) == 0 &&
                          (control.state == VIR_DOMAIN_CONTROL_JOB ||
                           control.state == VIR_DOMAIN_CONTROL_OCCUPIED);
            json_array_append_new(
                r->domains, json_pack("{s:s,s:b,s:s,s:i,s:s,s:s,s:s,s:s?,s:i,s:b}", "name",
                                      virDomainGetName(doms[i]), "active", active, "pool",
                                      pname ? pname : "", "slot", slot ? atoi(slot) : 0, "child",
                                      child ? child : "", "gold", gold ? gold : "", "display",
                                      display ? display : "", "paused", paused, "agent", (int)agent,
                                      "in_job", in_job));
            free(pname);
            free(slot);
            free(child);
            free(gold);
            free(display);
            free(meta);
        }
        virDomainFree(doms[i]);
    }
    free(doms);
}

/* ---- strays, on a worker with copies of what the loop knows ------------------------ */

typedef struct stray_req {
    vdi_catalog *catalog;
    int64_t since; /* unix seconds when the check began: newer records are not strays */
    json_t *domains; /* what libvirt has (from list_run) */
    json_t *pools;   /* [{name, datastore, in_use: [child], empty: [desktop name]}] */
} stray_req;

/* What makes a child "in use": its path is a desktop's or a domain's disk,
 * or its file is named after a domain (NAME.qcow2). Maps, because a pool
 * of 20 000 has as many children, domains and desktops. */
typedef struct in_use_index {
    vdi_strmap *paths; /* keys owned by the json arrays */
    vdi_strmap *domain_names;
} in_use_index;

static int in_use_build(in_use_index *ix, json_t *domains, json_t *in_use)
{
    ix->paths = vdi_strmap_new();
    ix->domain_names = vdi_strmap_new();
    if (!ix->paths || !ix->domain_names)
        return -1;
    size_t i;
    json_t *v;
    json_array_foreach(domains, i, v)
    {
        const char *c = json_string_value(json_object_get(v, "child"));
        const char *name = json_string_value(json_object_get(v, "name"));
        if ((c && *c && vdi_strmap_put(ix->paths, c, 0) < 0) ||
            (name && vdi_strmap_put(ix->domain_names, name, 0) < 0))
            return -1;
    }
    json_array_foreach(in_use, i, v) if (vdi_strmap_put(ix->paths, json_string_value(v), 0) < 0)
        return -1;
    return 0;
}

static void in_use_free(in_use_index *ix)
{
    vdi_strmap_free(ix->paths);
    vdi_strmap_free(ix->domain_names);
}

static bool child_in_use(const in_use_index *ix, const char *child)
{
    size_t unused;
    if (vdi_strmap_get(ix->paths, child, &unused))
        return true;
    const char *base = strrchr(child, '/');
    base = base ? base + 1 : child;
    size_t len = strlen(base);
    if (len <= 6 || strcmp(base + len - 6, ".qcow2"))
        return false;
    char *name = strndup(base, len - 6);
    /* Out of memory: call it in use, never remove what might be. */
    bool used = !name || vdi_strmap_get(ix->domain_names, name, &unused);
    free(name);
    return used;
}

static void strays_run(void *data)
{
    stray_req *r = data;
    size_t i;
    json_t *p;
    json_array_foreach(r->pools, i, p)
    {
        const char *pname = json_string_value(json_object_get(p, "name"));
        const char *dir = json_string_value(json_object_get(p, "datastore"));
        json_t *in_use = json_object_get(p, "in_use");
        vdi_error err = {0};
        vdi_reconcile_report rep;
        if (dir && vdi_reconcile(r->catalog, dir, &rep, &err) < 0)
            svc_log("warning", "pool=%s event=reconcile-failed datastore=%s reason=\"%s\"", pname,
                    dir, err.message);
        vdi_child_info *kids = NULL;
        size_t n = 0;
        in_use_index ix = {0};
        if (json_is_true(json_object_get(p, "local")))
            ; /* children on a host: not checked here */
        else if (in_use_build(&ix, r->domains, in_use) < 0)
            svc_log("warning", "pool=%s event=strays-not-checked reason=\"out of memory\"", pname);
        else if (vdi_catalog_children(r->catalog, NULL, &kids, &n, &err) < 0)
            svc_log("warning", "pool=%s event=strays-not-checked reason=\"%s\"", pname,
                    err.message);
        for (size_t k = 0; k < n; k++) {
            vdi_gold_info sealed;
            if (strcmp(kids[k].pool, pname) || kids[k].created_at >= r->since ||
                child_in_use(&ix, kids[k].path))
                continue;
            /* A sealed child is a memory image's template: it goes with its
             * image (templates.c), never as a stray. */
            if (vdi_catalog_gold(r->catalog, kids[k].path, &sealed, NULL) == 0)
                continue;
            svc_log("info", "pool=%s event=stray-child-removed child=%s", pname, kids[k].path);
            if (vdi_child_delete(r->catalog, kids[k].path, NULL, &err) < 0)
                svc_log("error", "pool=%s event=stray-child-not-removed child=%s reason=\"%s\"",
                        pname, kids[k].path, err.message);
        }
        in_use_free(&ix);
        free(kids);
        /* Sessions that ended while we were away (their desktop is empty). */
        size_t j;
        json_t *name;
        json_array_foreach(json_object_get(p, "empty"), j, name)
        {
            int64_t id, started = 0;
            if (vdi_catalog_open_session(r->catalog, json_string_value(name), &id, NULL, 0,
                                         &started, NULL) == 0 &&
                started < r->since &&
                vdi_catalog_session_end(r->catalog, id, (int64_t)time(NULL), "other", 0, &err) < 0)
                svc_log("error", "desktop=%s event=session-end-not-recorded reason=\"%s\"",
                        json_string_value(name), err.message);
        }
    }
}

static void strays_done(service *svc, void *data)
{
    stray_req *r = data;
    json_decref(r->domains);
    json_decref(r->pools);
    free(r);
    svc->checking_strays = false;
}

static void remove_strays(service *svc, json_t *domains)
{
    stray_req *r = svc->checking_strays ? NULL : calloc(1, sizeof *r);
    if (!r) {
        json_decref(domains); /* one check at a time; the next adoption checks again */
        return;
    }
    svc->checking_strays = true;
    r->catalog = svc->catalog;
    r->since = service_now(svc);
    r->domains = domains;
    r->pools = json_array();
    for (size_t i = 0; i < svc->npools; i++) {
        pool *p = svc->pools[i];
        const vdi_datastore_config *ds = pool_datastore(p);
        json_t *in_use = json_array(), *empty = json_array();
        for (unsigned j = 0; j < p->nslots; j++) {
            desktop *d = p->desktops[j];
            if (d->state != DESKTOP_EMPTY || d->busy) {
                if (d->child)
                    json_array_append_new(in_use, json_string(d->child));
            } else if (d->name) {
                json_array_append_new(empty, json_string(d->name));
            }
        }
        /* A host-local datastore is not vdipoold's to walk: its strays
         * (volumes on the host) are left to the operator. */
        bool local = ds && ds->kind == VDI_DATASTORE_LOCAL;
        json_array_append_new(r->pools,
                              json_pack("{s:s,s:s?,s:b,s:o,s:o}", "name", p->name, "datastore",
                                        ds && !local ? ds->path : NULL, "local", local, "in_use",
                                        in_use, "empty", empty));
    }
    if (work_submit(svc, strays_run, strays_done, r) < 0) {
        svc_log("warning", "event=strays-not-checked reason=\"cannot queue work\"");
        strays_done(svc, r);
    }
}

/* ---- on the loop ----------------------------------------------------------------- */

/* Every host with a config has been adopted since it last connected: the
 * stray check sees every domain there is. */
static void maybe_remove_strays(service *svc)
{
    json_t *all = json_array();
    for (size_t i = 0; i < svc->nhosts; i++) {
        host *h = svc->hosts[i];
        if (!h->cfg)
            continue;
        if (!h->adopted || !h->listing) {
            svc_log("info", "event=strays-not-checked reason=\"host %s is not adopted yet\"; "
                            "checked once every host is",
                    h->name);
            json_decref(all);
            return;
        }
        json_array_extend(all, h->listing);
    }
    remove_strays(svc, all); /* takes the array */
}

/* A domain listed on host h whose desktop is unreachable there: its
 * host answers again. */
static void reconcile_unreachable(desktop *d, json_t *dom, bool gone)
{
    if (!json_is_true(json_object_get(dom, "active")) || gone) {
        svc_log("info", "pool=%s desktop=%s event=domain-gone-while-unreachable host=%s",
                d->pool->name, d->name, d->host->name);
        session_end(d, END_OTHER);
        return;
    }
    desktop_reachable(d, (agent_state)json_integer_value(json_object_get(dom, "agent")),
                      json_string_value(json_object_get(dom, "display")),
                      json_string_value(json_object_get(dom, "paused")));
}

/* Domains that adoption would end or take as they are while libvirt still
 * works on them: a desktop's domain not running (paused or stopping) with a
 * libvirt job in progress, whose desktop no job of ours holds. Ending one of
 * them now would destroy it in the middle of libvirt's start or restore
 * for a client that is gone — which crashed libvirtd 9.0 — or take a
 * domain that is about to run for one that is paused. */
static unsigned count_in_libvirt_jobs(service *svc, json_t *domains, const char **first)
{
    unsigned n = 0;
    size_t idx;
    json_t *dom;
    json_array_foreach(domains, idx, dom)
    {
        if (!json_is_true(json_object_get(dom, "in_job")))
            continue;
        const char *name = json_string_value(json_object_get(dom, "name"));
        desktop *d = service_find_desktop(svc, name);
        if (!d || d->busy)
            continue;
        if (!n++)
            *first = name;
    }
    return n;
}

static void stop_waiting(host *h)
{
    h->adopt_waiting_since = h->adopt_next_at = 0;
    h->adopt_waiting_on = 0;
}

/* Whether the host's adoption waits for libvirt's jobs (then hosts_tick
 * lists it again at adopt_next_at), or goes ahead: none left, or waited long
 * enough. */
static bool adoption_waits(service *svc, host *h, json_t *domains)
{
    const char *first = "";
    unsigned n = count_in_libvirt_jobs(svc, domains, &first);
    int64_t now = service_now(svc);
    if (!n) {
        if (h->adopt_waiting_since)
            svc_log("info", "host=%s event=adopt-wait-over waited=%llds", h->name,
                    (long long)(now - h->adopt_waiting_since));
        stop_waiting(h);
        return false;
    }
    if (!h->adopt_waiting_since) {
        h->adopt_waiting_since = now;
        svc_log("info",
                "host=%s event=adopt-waiting domains=%u first=%s reason=\"libvirt is still "
                "starting, restoring or changing them\"; adopted when it is done (at most %ds)",
                h->name, n, first, ADOPT_JOB_WAIT_S);
    }
    h->adopt_waiting_on = n;
    int64_t waited = now - h->adopt_waiting_since;
    if (waited < ADOPT_JOB_WAIT_S) {
        /* Listed again after 1 s while the wait is young (a start's job
         * ends within seconds), then less often, at most every 8 s: a
         * listing asks libvirt about every domain of the host. */
        int64_t delay = waited / 4;
        h->adopt_next_at = now + (delay < 1 ? 1 : delay > 8 ? 8 : delay);
        return true;
    }
    svc_log("warning",
            "host=%s event=adopt-wait-given-up domains=%u first=%s waited=%llds; they are "
            "adopted as they are",
            h->name, n, first, (long long)(now - h->adopt_waiting_since));
    stop_waiting(h);
    return false;
}

/* A listing that is not adopted (it failed, or the host waits for
 * libvirt's jobs) goes with what it gathered; hosts_tick lists the host
 * again. */
static void drop_listing(host *h, adopt_req *r)
{
    json_decref(h->stopped_while_adopting);
    h->stopped_while_adopting = NULL;
    json_decref(r->domains);
    free(r->error);
    free(r);
    h->adopting = false;
}

static void list_done(service *svc, void *data)
{
    adopt_req *r = data;
    host *h = r->h;
    if (r->conn)
        virConnectClose(r->conn);
    free(r->address);
    if (r->error || !r->domains || !h->online) {
        svc_log("error", "host=%s event=adopt-failed reason=\"%s\"; retried at the next tick",
                h->name, r->error ? r->error : !h->online ? "disconnected meanwhile" : "no answer");
        drop_listing(h, r);
        return;
    }
    if (adoption_waits(svc, h, r->domains)) {
        drop_listing(h, r);
        return;
    }
    /* Domains that stopped after the listing: their events came while
     * their desktops were empty; they are ended, not adopted as running. */
    vdi_strmap *stopped = vdi_strmap_new();
    size_t si;
    json_t *sv;
    json_array_foreach(h->stopped_while_adopting, si, sv)
        if (stopped) vdi_strmap_put(stopped, json_string_value(sv), si);
    size_t idx;
    json_t *dom;
    json_array_foreach(r->domains, idx, dom)
    {
        const char *name = json_string_value(json_object_get(dom, "name"));
        desktop *d = service_find_desktop(svc, name);
        size_t unused;
        bool gone = stopped && vdi_strmap_get(stopped, name, &unused);
        if (d && d->state == DESKTOP_UNREACHABLE && d->host == h && !d->busy) {
            reconcile_unreachable(d, dom, gone);
            continue;
        }
        if (d && d->host && d->host != h && d->state != DESKTOP_EMPTY &&
            json_is_true(json_object_get(dom, "active")))
            svc_log("warning",
                    "host=%s desktop=%s event=domain-on-two-hosts other=%s; the one on %s is "
                    "left alone (not vdipool's any more: destroy it by hand)",
                    h->name, name, d->host->name, h->name);
        if (!d || d->state != DESKTOP_EMPTY || d->busy)
            continue;
        const char *child = json_string_value(json_object_get(dom, "child"));
        const char *gold = json_string_value(json_object_get(dom, "gold"));
        const char *display = json_string_value(json_object_get(dom, "display"));
        if (gone)
            svc_log("info", "pool=%s desktop=%s event=stopped-while-adopting", d->pool->name,
                    name);
        int64_t id = 0, started = 0;
        char user[256] = "";
        bool session = vdi_catalog_open_session(svc->catalog, d->name, &id, user, sizeof user,
                                                &started, NULL) == 0;
        desktop_set_host(d, h);
        if (!json_is_true(json_object_get(dom, "active")) || gone) {
            /* A domain that does not run (defined, or stopped meanwhile):
             * taken with its session, so that the end closes it too. */
            desktop_adopt(d, child, gold, NULL, AGENT_UNKNOWN, session ? id : 0, user, started);
            session_end(d, END_OTHER);
            continue;
        }
        agent_state agent = (agent_state)json_integer_value(json_object_get(dom, "agent"));
        desktop_adopt(d, child, gold, display, agent, session ? id : 0, user, started);
        const char *paused = json_string_value(json_object_get(dom, "paused"));
        if (paused)
            desktop_paused(d, paused);
    }
    /* After a reconnect: this host's desktops whose domain stopped while we
     * could not hear its events are ended now. */
    vdi_strmap *running = vdi_strmap_new();
    json_array_foreach(r->domains, idx, dom)
    {
        if (running && json_is_true(json_object_get(dom, "active")) &&
            vdi_strmap_put(running, json_string_value(json_object_get(dom, "name")), idx) < 0) {
            vdi_strmap_free(running);
            running = NULL;
        }
    }
    if (!running)
        svc_log("warning", "event=adopt-check-skipped reason=\"out of memory\"; desktops "
                           "whose domain stopped are found at their next event");
    for (size_t i = 0; running && i < svc->npools; i++)
        for (unsigned k = 0; k < svc->pools[i]->nslots; k++) {
            desktop *d = svc->pools[i]->desktops[k];
            if (d->busy || d->host != h ||
                (d->state != DESKTOP_READY && d->state != DESKTOP_ASSIGNED &&
                 d->state != DESKTOP_BOOTING && d->state != DESKTOP_UNREACHABLE))
                continue;
            size_t unused;
            if (!vdi_strmap_get(running, d->name, &unused)) {
                svc_log("info", "pool=%s desktop=%s event=domain-gone-while-%s host=%s",
                        d->pool->name, d->name,
                        d->state == DESKTOP_UNREACHABLE ? "unreachable" : "disconnected",
                        h->name);
                session_end(d, END_OTHER);
            }
        }
    vdi_strmap_free(running);
    vdi_strmap_free(stopped); /* its keys belong to the array below */
    json_decref(h->stopped_while_adopting);
    h->stopped_while_adopting = NULL;
    json_decref(h->listing);
    h->listing = r->domains;
    free(r);
    /* Adopted: the controllers may use this host, beside the stray check. */
    h->adopting = false;
    h->adopted = true;
    h->settled = true;
    svc_log("info", "host=%s event=adopted desktops=%u", h->name, h->desktops);
    hosts_update(svc);
    maybe_remove_strays(svc);
    service_kick(svc);
}

void adopt_start(host *h)
{
    service *svc = h->svc;
    if (h->adopting || !h->conn)
        return;
    adopt_req *r = calloc(1, sizeof *r);
    if (!r || virConnectRef(h->conn) < 0 || !(r->address = host_display_address(h->uri))) {
        if (r && r->conn)
            virConnectClose(r->conn);
        free(r);
        svc_log("error", "host=%s event=adopt-failed reason=\"out of memory\"; retried at the "
                         "next tick",
                h->name);
        return;
    }
    r->h = h;
    r->conn = h->conn;
    r->catalog = svc->catalog;
    h->adopting = true;
    json_decref(h->stopped_while_adopting);
    h->stopped_while_adopting = json_array();
    if (work_submit(svc, list_run, list_done, r) < 0) {
        h->adopting = false;
        virConnectClose(r->conn);
        free(r->address);
        free(r);
        svc_log("error", "host=%s event=adopt-failed reason=\"cannot queue work\"; retried at "
                         "the next tick",
                h->name);
    }
}

/* ---- a host unreachable at start ---------------------------------------------------- */

typedef struct mark_req {
    host *h; /* read on the loop only */
    vdi_catalog *catalog;
    char *host_name;
    json_t *found; /* [{pool, slot, child, gold, session, user, started}] */
} mark_req;

static int collect_child(void *ctx, const vdi_child_info *c)
{
    mark_req *m = ctx;
    if (strcmp(c->host, m->host_name) || !c->pool[0] || c->slot < 1)
        return 0;
    json_array_append_new(m->found, json_pack("{s:s,s:i,s:s,s:s}", "pool", c->pool, "slot",
                                              c->slot, "child", c->path, "gold", c->parent));
    return 0;
}

static void mark_run(void *data)
{
    mark_req *m = data;
    vdi_error err = {0};
    m->found = json_array();
    if (vdi_catalog_each_child(m->catalog, collect_child, m, &err) < 0)
        svc_log("error", "host=%s event=unreachable-desktops-not-read reason=\"%s\"",
                m->host_name, err.message);
}

static void mark_done(service *svc, void *data)
{
    mark_req *m = data;
    host *h = m->h;
    h->marking = false;
    unsigned marked = 0;
    size_t i;
    json_t *f;
    json_array_foreach(m->found, i, f)
    {
        if (h->settled)
            break; /* it connected and was adopted meanwhile */
        pool *p = service_find_pool(svc, json_string_value(json_object_get(f, "pool")));
        unsigned slot = (unsigned)json_integer_value(json_object_get(f, "slot"));
        if (!p || slot < 1 || (slot > p->nslots && pool_grow_slots(p, slot) < 0))
            continue;
        desktop *d = p->desktops[slot - 1];
        if (d->state != DESKTOP_EMPTY || d->busy)
            continue;
        desktop_name_slot(d);
        int64_t id = 0, started = 0;
        char user[256] = "";
        bool session = vdi_catalog_open_session(svc->catalog, d->name, &id, user, sizeof user,
                                                &started, NULL) == 0;
        set_str(&d->child, json_string_value(json_object_get(f, "child")));
        set_str(&d->gold, json_string_value(json_object_get(f, "gold")));
        desktop_set_host(d, h);
        if (session) {
            d->session_id = id;
            d->session_start = started;
            d->agent_ready = true;
            set_str(&d->user, user);
        }
        d->unreachable_from = session ? DESKTOP_ASSIGNED : DESKTOP_READY;
        desktop_set_state(d, DESKTOP_UNREACHABLE);
        marked++;
    }
    if (!h->settled) {
        svc_log("warning", "host=%s event=unreachable-at-start desktops=%u reason=\"%s\"; "
                           "they are kept until it answers",
                h->name, marked, h->last_error ? h->last_error : "not connected");
        h->settled = true;
        hosts_update(svc);
    }
    json_decref(m->found);
    free(m->host_name);
    free(m);
}

void adopt_mark_unreachable(host *h)
{
    mark_req *m = calloc(1, sizeof *m);
    if (!m || !(m->host_name = strdup(h->name))) {
        free(m);
        return; /* the next failed attempt tries again */
    }
    m->h = h;
    m->catalog = h->svc->catalog;
    h->marking = true;
    if (work_submit(h->svc, mark_run, mark_done, m) < 0) {
        h->marking = false;
        free(m->host_name);
        free(m);
    }
}
