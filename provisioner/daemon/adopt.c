/* adopt.c — reconciling with libvirt at start-up and after a reconnect.
 * Files on disk and libvirt's domains are the ground truth:
 *  1. a worker lists the domains that carry vdipool metadata;
 *  2. the loop adopts the running ones into their slots (ready, or assigned
 *     when the catalog has the session open), and ends desktops whose
 *     domain stopped while nobody listened; but a desktop whose domain
 *     libvirt still works on (a start or restore begun for a vdipoold that
 *     crashed) is held in state adopting, its domain asked about again by a
 *     job of its own, until libvirt is done (bounded): the host's other
 *     desktops are adopted and handed out meanwhile;
 *  3. once every host is adopted, the stray check runs (strays.c). */
#include "daemon.h"
#include "jobs.h"
#include "vdi_strmap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* One domain as adoption reads it, or NULL when it carries no vdipool
 * metadata (not ours). On a worker; `address` is where the host's displays
 * are reached. */
static json_t *describe_domain(virDomainPtr dom, const char *address)
{
    char *meta = virDomainGetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT, VDI_XML_NS, 0);
    if (!meta)
        return NULL;
    char *pname = xml_field(meta, "pool"), *slot = xml_field(meta, "slot"),
         *child = xml_field(meta, "child"), *gold = xml_field(meta, "gold");
    bool active = virDomainIsActive(dom) == 1;
    int state = VIR_DOMAIN_NOSTATE, reason = 0;
    if (active && virDomainGetState(dom, &state, &reason, 0) < 0)
        state = VIR_DOMAIN_NOSTATE;
    /* libvirt still works on it: starting or restoring it (its state is
     * "paused, starting up" until then), or a call waits on its monitor.
     * Asked only of a domain that does not run (adoption ends none that
     * runs): one call more for a few, not for all. A driver without control
     * info has no such jobs. A job that ended between the two calls (a
     * resume or restore that finished) changed the state read first: read
     * again, else a domain that runs now would be taken for a paused one. */
    bool in_job = false;
    if (active && state != VIR_DOMAIN_RUNNING) {
        virDomainControlInfo control;
        in_job = virDomainGetControlInfo(dom, &control, 0) == 0 &&
                 (control.state == VIR_DOMAIN_CONTROL_JOB ||
                  control.state == VIR_DOMAIN_CONTROL_OCCUPIED);
        if (!in_job && virDomainGetState(dom, &state, &reason, 0) < 0)
            state = VIR_DOMAIN_NOSTATE;
    }
    /* One XML read gives the display and the agent channel's state. */
    char *xml = active ? virDomainGetXMLDesc(dom, 0) : NULL;
    char *display = domain_display_from_xml(xml, address);
    agent_state agent = domain_agent_from_xml(xml);
    free(xml);
    const char *paused = active ? pause_reason(dom, state, reason) : NULL;
    json_t *o =
        json_pack("{s:s,s:b,s:s,s:i,s:s,s:s,s:s,s:s?,s:i,s:b}", "name", virDomainGetName(dom),
                  "active", active, "pool", pname ? pname : "", "slot", slot ? atoi(slot) : 0,
                  "child", child ? child : "", "gold", gold ? gold : "", "display",
                  display ? display : "", "paused", paused, "agent", (int)agent, "in_job", in_job);
    free(pname);
    free(slot);
    free(child);
    free(gold);
    free(display);
    free(meta);
    return o;
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
        json_t *o = describe_domain(doms[i], r->address);
        if (o)
            json_array_append_new(r->domains, o);
        virDomainFree(doms[i]);
    }
    free(doms);
}

/* ---- on the loop ----------------------------------------------------------------- */

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

/* Whether libvirt still works on a listed domain that adoption would end
 * or take as it is: one that does not run (paused or stopping) with a
 * libvirt job in progress (describe_domain). Ending it now would destroy it
 * in the middle of libvirt's start or restore for a client that is gone —
 * which crashed libvirtd 9.0 — and taking it as it is would take a domain
 * about to run for a paused one. */
static bool libvirt_at_work(json_t *dom)
{
    return json_is_true(json_object_get(dom, "in_job"));
}

/* The catalog's open session of d, if any: its id (0 when none), user and
 * start. */
static int64_t open_session(service *svc, const desktop *d, char *user, size_t user_len,
                            int64_t *started)
{
    int64_t id = 0;
    *started = 0;
    user[0] = '\0';
    return vdi_catalog_open_session(svc->catalog, d->name, &id, user, user_len, started, NULL) == 0
               ? id
               : 0;
}

/* Adopts the listed domain `dom` into d on host h. A domain that is gone
 * (NULL), does not run, or stopped after it was listed (`gone`) is taken
 * with the desktop's session and ended at once, so that the end closes the
 * session too; a running one becomes ready, booting or assigned as its
 * session says, and paused when its guest stopped on an error. */
static void adopt_domain(service *svc, host *h, desktop *d, json_t *dom, bool gone)
{
    char user[256];
    int64_t started, id = open_session(svc, d, user, sizeof user, &started);
    /* A domain that is gone leaves the child and gold d was held with. */
    const char *child = dom ? json_string_value(json_object_get(dom, "child")) : d->child;
    const char *gold = dom ? json_string_value(json_object_get(dom, "gold")) : d->gold;
    desktop_set_host(d, h);
    if (!dom || !json_is_true(json_object_get(dom, "active")) || gone) {
        desktop_adopt(d, child, gold, NULL, AGENT_UNKNOWN, id, user, started);
        session_end(d, END_OTHER);
        return;
    }
    agent_state agent = (agent_state)json_integer_value(json_object_get(dom, "agent"));
    desktop_adopt(d, child, gold, json_string_value(json_object_get(dom, "display")), agent, id,
                  user, started);
    const char *paused = json_string_value(json_object_get(dom, "paused"));
    if (paused)
        desktop_paused(d, paused);
}

/* d's domain was listed with libvirt at work on it: d is held (state
 * adopting) with what the listing says and its open session, never handed
 * out or ended, and its domain is asked about again after a second
 * (adopt_recheck). Its slot counts as taken, so nothing is cloned into it. */
static void hold_for_libvirt(service *svc, host *h, desktop *d, json_t *dom)
{
    set_str(&d->child, json_string_value(json_object_get(dom, "child")));
    set_str(&d->gold, json_string_value(json_object_get(dom, "gold")));
    desktop_set_host(d, h);
    char user[256];
    int64_t started, id = open_session(svc, d, user, sizeof user, &started);
    if (id) {
        d->session_id = id;
        d->session_start = started;
        set_str(&d->user, user);
    }
    d->retry_at = service_now(svc) + 1;
    d->stopped_in_check = false;
    svc_log("info",
            "pool=%s desktop=%s event=adopt-waiting host=%s was=%s reason=\"libvirt is still "
            "starting, restoring or changing its domain\"; adopted when it is done (at most %ds)",
            d->pool->name, d->name, h->name, desktop_state_name(d->state),
            (int)vdi_config_service(svc->config)->adopt_wait);
    desktop_set_state(d, DESKTOP_ADOPTING);
}

/* ---- a held desktop's own check (state adopting) ------------------------------------ */

/* How long until a held desktop's domain is asked about again: a second
 * while the wait is young (a start's job ends within seconds), then less
 * often, at most every 8 s — and never past service.adopt_wait, which the
 * log promised as the longest wait. */
static int64_t recheck_delay(const service *svc, int64_t waited)
{
    int64_t delay = waited / 4, wait_max = (int64_t)vdi_config_service(svc->config)->adopt_wait;
    delay = delay < 1 ? 1 : delay > 8 ? 8 : delay;
    if (waited < wait_max && waited + delay > wait_max)
        delay = wait_max - waited;
    return delay;
}

static void recheck_run(void *data)
{
    job *j = data;
    if (!j->conn) {
        job_fail(j, -ENOTCONN, "host %s is not connected", j->host ? j->host : "?");
        return;
    }
    virDomainPtr dom = virDomainLookupByName(j->conn, j->name);
    if (!dom) {
        virErrorPtr e = virGetLastError();
        if (!e || e->code != VIR_ERR_NO_DOMAIN)
            job_fail(j, -EIO, "cannot look up the domain: %s", libvirt_message());
        return; /* gone: j->domain stays NULL */
    }
    j->domain = describe_domain(dom, j->address);
    if (!j->domain)
        job_fail(j, -EPERM, "the domain no longer carries vdipool's metadata");
    virDomainFree(dom);
}

void adopt_checked(desktop *d, int rc, const char *error, json_t *domain)
{
    service *svc = d->pool->svc;
    int64_t now = service_now(svc), waited = now - d->state_since;
    if (d->state != DESKTOP_ADOPTING)
        return;
    if (rc < 0) {
        /* Not known whether libvirt is done: held, asked again. */
        d->retry_at = now + recheck_delay(svc, waited);
        svc_log("warning", "pool=%s desktop=%s event=adopt-check-failed reason=\"%s\"; asked again",
                d->pool->name, d->name, error ? error : "unknown");
        return;
    }
    bool gone = d->stopped_in_check;
    bool at_work = !gone && domain && libvirt_at_work(domain);
    /* service.adopt_wait: a start takes seconds, a restore of a large
     * memory image from a slow disk, many at once, may take minutes. */
    if (at_work && waited < (int64_t)vdi_config_service(svc->config)->adopt_wait) {
        d->retry_at = now + recheck_delay(svc, waited);
        return;
    }
    if (at_work)
        svc_log("warning",
                "pool=%s desktop=%s event=adopt-wait-given-up waited=%llds; adopted as it is",
                d->pool->name, d->name, (long long)waited);
    else
        svc_log("info", "pool=%s desktop=%s event=adopt-wait-over waited=%llds", d->pool->name,
                d->name, (long long)waited);
    adopt_domain(svc, d->host, d, domain, gone);
}

static void recheck_done(service *svc, void *data)
{
    job *j = data;
    desktop *d = job_desktop(svc, j);
    if (d) {
        d->busy = false;
        adopt_checked(d, j->rc, j->error, j->domain);
    }
    job_free(j);
    service_kick(svc);
}

void adopt_op_check(desktop *d)
{
    job_submit_with(d, JOB_ADOPT_CHECK, recheck_run, recheck_done);
}

void adopt_recheck(desktop *d, int64_t now)
{
    if (d->state != DESKTOP_ADOPTING || d->busy || now < d->retry_at || !host_usable(d->host))
        return; /* a host that does not answer: asked once it is adopted again */
    d->stopped_in_check = false;
    d->pool->svc->ops->adopt_check(d);
}

static void list_done(service *svc, void *data)
{
    (void)svc; /* adopt_listing reaches it through the host */
    adopt_req *r = data;
    host *h = r->h;
    if (r->conn)
        virConnectClose(r->conn);
    free(r->address);
    if (r->error || !r->domains || !h->online) {
        svc_log("error", "host=%s event=adopt-failed reason=\"%s\"; retried at the next tick",
                h->name, r->error ? r->error : !h->online ? "disconnected meanwhile" : "no answer");
        json_decref(h->stopped_while_adopting);
        h->stopped_while_adopting = NULL;
        json_decref(r->domains);
        free(r->error);
        free(r);
        h->adopting = false;
        return;
    }
    json_t *domains = r->domains;
    free(r);
    adopt_listing(h, domains);
}

void adopt_listing(host *h, json_t *domains)
{
    service *svc = h->svc;
    /* Domains that stopped after the listing: their events came while
     * their desktops were empty; they are ended, not adopted as running. */
    vdi_strmap *stopped = vdi_strmap_new();
    size_t si;
    json_t *sv;
    json_array_foreach(h->stopped_while_adopting, si, sv)
        if (stopped) vdi_strmap_put(stopped, json_string_value(sv), si);
    size_t idx;
    json_t *dom;
    json_array_foreach(domains, idx, dom)
    {
        const char *name = json_string_value(json_object_get(dom, "name"));
        desktop *d = service_find_desktop(svc, name);
        size_t unused;
        bool gone = stopped && vdi_strmap_get(stopped, name, &unused);
        /* A desktop held (adopting) when the host's connection was lost
         * was not asked about meanwhile: it is taken as listed now, and
         * if libvirt still works on it, its wait starts again. One whose
         * check went out before the loss is left to that check's answer,
         * its wait counted from now too. */
        if (d && d->busy && d->state == DESKTOP_ADOPTING && d->host == h) {
            d->state_since = service_now(svc);
            continue;
        }
        bool ours =
            d && !d->busy &&
            (d->state == DESKTOP_EMPTY ||
             ((d->state == DESKTOP_UNREACHABLE || d->state == DESKTOP_ADOPTING) && d->host == h));
        if (ours && !gone && libvirt_at_work(dom)) {
            hold_for_libvirt(svc, h, d, dom);
            continue;
        }
        if (ours && d->state == DESKTOP_UNREACHABLE) {
            reconcile_unreachable(d, dom, gone);
            continue;
        }
        if (d && d->host && d->host != h && d->state != DESKTOP_EMPTY &&
            json_is_true(json_object_get(dom, "active")))
            svc_log("warning",
                    "host=%s desktop=%s event=domain-on-two-hosts other=%s; the one on %s is "
                    "left alone (not vdipool's any more: destroy it by hand)",
                    h->name, name, d->host->name, h->name);
        if (!ours)
            continue;
        if (gone)
            svc_log("info", "pool=%s desktop=%s event=stopped-while-adopting", d->pool->name,
                    name);
        adopt_domain(svc, h, d, dom, gone);
    }
    /* After a reconnect: this host's desktops whose domain stopped while we
     * could not hear its events are ended now. */
    vdi_strmap *running = vdi_strmap_new();
    json_array_foreach(domains, idx, dom)
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
    h->listing = domains;
    /* Adopted: the controllers may use this host, beside the stray check. */
    h->adopting = false;
    h->adopted = true;
    h->settled = true;
    svc_log("info", "host=%s event=adopted desktops=%u", h->name, h->desktops);
    hosts_update(svc);
    strays_check(svc);
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
