/* hosts.c — the KVM hosts one vdipoold spreads its pools over. Each host is
 * a libvirtd reached through its own connection (a libvirt_bridge: keepalive,
 * back-off reconnect, events on the loop); vdipoold runs no agent of its own
 * on a host. This file owns:
 *  - the host objects, made and updated from the config (a host removed
 *    from the config keeps its object and drains);
 *  - placement: which host a new desktop of a pool goes to;
 *  - what happens when a host comes and goes: its desktops become
 *    `unreachable` (kept, sessions open) and are reconciled by adoption
 *    when it answers again (adopt.c);
 *  - each host's free memory, read on a worker every HOST_READ_S seconds.
 * Every field of a host is the loop's; a job copies the connection
 * reference it needs. */
#include "daemon.h"
#include "libvirt_events.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the bridge's callbacks, on the loop ------------------------------------------- */

static void bridge_connected(void *ctx, virConnectPtr conn)
{
    host_on_connected(ctx, conn);
}

static void bridge_disconnected(void *ctx)
{
    host_on_disconnected(ctx);
}

static void bridge_connect_failed(void *ctx, const char *error)
{
    host *h = ctx;
    set_str(&h->last_error, error);
    h->last_error_at = service_now(h->svc);
    /* Not reachable at start: what the catalog records on it is shown
     * unreachable, so that the other hosts can go ahead. */
    if (!h->settled && !h->marking)
        adopt_mark_unreachable(h);
}

static const libvirt_bridge_callbacks host_bridge_cb = {
    .connected = bridge_connected,
    .disconnected = bridge_disconnected,
    .connect_failed = bridge_connect_failed,
    .domain_event = service_on_domain_event,
    .io_error = service_on_io_error,
    .block_threshold = service_on_block_threshold,
    .agent_event = service_on_agent_event,
};

/* ---- the objects ------------------------------------------------------------------- */

host *service_any_host(service *svc)
{
    for (size_t i = 0; i < svc->nhosts; i++)
        if (host_usable(svc->hosts[i]) && svc->hosts[i]->cfg &&
            svc->hosts[i]->cfg->state == VDI_HOST_ACTIVE)
            return svc->hosts[i];
    for (size_t i = 0; i < svc->nhosts; i++)
        if (host_usable(svc->hosts[i]))
            return svc->hosts[i];
    return NULL;
}

void hosts_set_online(service *svc, bool online)
{
    for (size_t i = 0; i < svc->nhosts; i++) {
        host *h = svc->hosts[i];
        h->online = h->adopted = online;
        h->settled = true;
    }
    hosts_update(svc);
}

static host *host_new(service *svc, const vdi_host_config *hc)
{
    host **v = realloc(svc->hosts, (svc->nhosts + 1) * sizeof *v);
    if (!v)
        return NULL;
    svc->hosts = v;
    host *h = calloc(1, sizeof *h);
    if (!h || !(h->name = strdup(hc->name)) || !(h->uri = strdup(hc->uri))) {
        if (h)
            free(h->name);
        free(h);
        return NULL;
    }
    h->svc = svc;
    h->cfg = hc;
    h->index = (unsigned)svc->nhosts;
    svc->hosts[svc->nhosts++] = h;
    return h;
}

static void host_start_bridge(host *h)
{
    service *svc = h->svc;
    h->bridge = libvirt_bridge_new(svc->loop, h->uri, &host_bridge_cb, h);
    if (!h->bridge) {
        svc_log("error", "host=%s event=bridge-not-started uri=%s reason=\"cannot start "
                         "libvirt's event loop\"",
                h->name, h->uri);
        return;
    }
    libvirt_bridge_connect(h->bridge);
}

int hosts_apply_config(service *svc)
{
    int rc = 0;
    vdi_config *config = svc->config;
    for (size_t i = 0; i < svc->nhosts; i++) {
        host *h = svc->hosts[i];
        const vdi_host_config *hc = vdi_config_find_host(config, h->name);
        if (!hc && h->cfg)
            svc_log("info", "host=%s event=removed-from-config desktops=%u; it drains", h->name,
                    h->desktops);
        h->cfg = hc;
        if (hc && strcmp(hc->uri, h->uri)) {
            /* Another libvirtd for the same name: the old connection goes,
             * its desktops wait unreachable until adoption on the new one. */
            svc_log("info", "host=%s event=uri-changed old=%s new=%s", h->name, h->uri, hc->uri);
            set_str(&h->uri, hc->uri);
            if (h->bridge) {
                libvirt_bridge_stop(h->bridge);
                libvirt_bridge_close(h->bridge);
                if (h->online)
                    host_on_disconnected(h);
                host_start_bridge(h);
            }
        }
    }
    for (size_t i = 0; i < vdi_config_host_count(config); i++) {
        const vdi_host_config *hc = vdi_config_host(config, i);
        if (service_find_host(svc, hc->name))
            continue;
        host *h = host_new(svc, hc);
        if (!h) {
            svc_log("error", "host=%s event=not-added reason=\"out of memory\"", hc->name);
            rc = -ENOMEM;
            continue;
        }
        if (svc->hosts_started)
            host_start_bridge(h);
    }
    hosts_update(svc);
    return rc;
}

int hosts_start(service *svc)
{
    svc->hosts_started = true;
    for (size_t i = 0; i < svc->nhosts; i++)
        if (svc->hosts[i]->cfg && !svc->hosts[i]->bridge)
            host_start_bridge(svc->hosts[i]);
    return 0;
}

void hosts_stop(service *svc)
{
    for (size_t i = 0; i < svc->nhosts; i++)
        libvirt_bridge_stop(svc->hosts[i]->bridge);
}

void hosts_close(service *svc)
{
    for (size_t i = 0; i < svc->nhosts; i++)
        libvirt_bridge_close(svc->hosts[i]->bridge);
}

void hosts_free(service *svc)
{
    for (size_t i = 0; i < svc->nhosts; i++) {
        host *h = svc->hosts[i];
        if (h->conn)
            virConnectClose(h->conn);
        json_decref(h->stopped_while_adopting);
        json_decref(h->listing);
        free(h->name);
        free(h->uri);
        free(h->last_error);
        free(h); /* its bridge lives until the process ends (libvirt_events.c) */
    }
    free(svc->hosts);
    svc->hosts = NULL;
    svc->nhosts = 0;
}

/* ---- coming and going -------------------------------------------------------------- */

void host_on_connected(host *h, virConnectPtr conn)
{
    if (h->conn)
        virConnectClose(h->conn);
    h->conn = conn;
    h->online = true;
    h->adopted = false;
    h->connected_since = service_now(h->svc);
    set_str(&h->last_error, NULL);
    svc_log("info", "host=%s event=connected uri=%s", h->name, h->uri);
    hosts_update(h->svc);
    adopt_start(h);
}

/* Its desktops that were running (or about to) are kept as they were, but
 * unreachable: never handed out, never ended, their slots taken, until the
 * host answers again. Jobs in flight keep their own connection reference
 * and fail on their own. */
void host_on_disconnected(host *h)
{
    service *svc = h->svc;
    if (h->conn)
        virConnectClose(h->conn);
    h->conn = NULL;
    h->online = false;
    h->adopted = false;
    h->memory_known = false;
    h->lost_since = service_now(svc);
    set_str(&h->last_error, "the connection to its libvirtd was lost");
    h->last_error_at = h->lost_since;
    unsigned lost = 0;
    for (size_t i = 0; i < svc->npools; i++) {
        pool *p = svc->pools[i];
        for (unsigned k = 0; k < p->nslots; k++) {
            desktop *d = p->desktops[k];
            if (d->host != h || d->busy)
                continue;
            if (d->state == DESKTOP_BOOTING || d->state == DESKTOP_READY ||
                d->state == DESKTOP_ASSIGNED || d->state == DESKTOP_PAUSED) {
                d->unreachable_from = d->state;
                desktop_set_state(d, DESKTOP_UNREACHABLE);
                lost++;
            }
        }
    }
    svc_log("warning", "host=%s event=host-lost uri=%s desktops=%u; its desktops are kept "
                       "unreachable, spares are made up on the other hosts",
            h->name, h->uri, lost);
    hosts_update(svc);
    service_kick(svc);
}

/* ---- placement --------------------------------------------------------------------- */

/* The host's free memory at its last reading, less what was placed since
 * (never below zero). */
static uint64_t host_free_now(const host *h)
{
    return h->free_memory > h->memory_placed ? h->free_memory - h->memory_placed : 0;
}

/* Why a host the pool may use (pool_place filters the others) cannot take
 * a desktop of p now, or NULL when it can. */
static const char *host_refuses(const pool *p, const host *h)
{
    if (h->cfg->state == VDI_HOST_MAINTENANCE)
        return "in maintenance";
    if (!h->online)
        return "unreachable";
    if (!h->adopted)
        return "being adopted";
    if (h->cfg->max_desktops && h->desktops >= h->cfg->max_desktops)
        return "at max_desktops";
    /* Memory is checked on hosts that set reserve_memory: a guest takes its
     * memory as it touches it, so free memory alone would refuse hosts
     * that have room; with a reserve, every desktop counts whole. */
    if (h->cfg->reserve_memory && h->memory_known &&
        host_free_now(h) < p->cfg->domain.memory_bytes + h->cfg->reserve_memory)
        return "short of memory above reserve_memory";
    return NULL;
}

host *pool_place(pool *p)
{
    service *svc = p->svc;
    host *best = NULL;
    unsigned best_count = 0;
    char why[512] = "";
    size_t used = 0;
    for (size_t i = 0; i < svc->nhosts; i++) {
        host *h = svc->hosts[i];
        if (!h->cfg || !vdi_config_pool_may_use(p->config, p->cfg, h->cfg))
            continue; /* not one of the pool's hosts: not worth a word */
        const char *no = host_refuses(p, h);
        if (no) {
            int n = snprintf(why + used, sizeof why - used, "%s%s: %s", used ? ", " : "",
                             h->name, no);
            if (n > 0 && (size_t)n < sizeof why - used)
                used += (size_t)n;
            continue;
        }
        unsigned *c = pool_host_count(p, h);
        unsigned count = c ? *c : 0;
        /* Fewest of this pool's desktops first (one host's loss takes the
         * fewest spares), then the emptiest host, then the most memory. */
        if (!best || count < best_count ||
            (count == best_count &&
             (h->desktops < best->desktops ||
              (h->desktops == best->desktops && h->memory_known && best->memory_known &&
               host_free_now(h) > host_free_now(best))))) {
            best = h;
            best_count = count;
        }
    }
    if (best) {
        if (p->no_host)
            svc_log("info", "pool=%s event=host-available host=%s", p->name, best->name);
        set_str(&p->no_host, NULL);
    } else {
        char msg[600];
        snprintf(msg, sizeof msg, "no host can take a new desktop (%s)",
                 used ? why : "none of its hosts is configured");
        if (!p->no_host || strcmp(p->no_host, msg))
            svc_log("warning", "pool=%s event=no-host reason=\"%s\"", p->name, msg);
        set_str(&p->no_host, msg);
    }
    return best;
}

/* ---- memory, on a worker ------------------------------------------------------------ */

typedef struct memory_req {
    host *h;             /* read on the loop only (hosts are never freed before the loop) */
    virConnectPtr conn;  /* a reference */
    bool local;          /* the host is this machine: its KSM counters are readable */
    uint64_t free, total;
    json_t *rss; /* {domain name: resident bytes, or null when not read now} */
    bool ksm_known, ksm_running;
    uint64_t ksm_shared, ksm_sharing; /* pages */
    int rc;
} memory_req;

static void memory_run(void *data)
{
    memory_req *r = data;
    virNodeInfo info;
    unsigned long long free_bytes = virNodeGetFreeMemory(r->conn);
    if (free_bytes == 0 || virNodeGetInfo(r->conn, &info) < 0) {
        r->rc = -EIO;
        return;
    }
    r->free = free_bytes;
    r->total = (uint64_t)info.memory * 1024;
    /* Every running domain's resident memory in one call (balloon.rss).
     * NOWAIT: a domain that libvirt works on (a start, a restore, a call
     * stuck on a frozen QEMU's monitor) is listed without it instead of
     * holding this call — and, in libvirtd, the connection's other calls —
     * for up to libvirt's job wait (30 s); its last reading is kept. */
    r->rss = json_object();
    virDomainStatsRecordPtr *stats = NULL;
    int n = virConnectGetAllDomainStats(r->conn, VIR_DOMAIN_STATS_BALLOON, &stats,
                                        VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE |
                                            VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT);
    for (int i = 0; i < n; i++) {
        json_t *rss = json_null();
        for (int k = 0; k < stats[i]->nparams; k++)
            if (!strcmp(stats[i]->params[k].field, "balloon.rss")) {
                json_decref(rss);
                rss = json_integer((json_int_t)stats[i]->params[k].value.ul * 1024);
            }
        json_object_set_new(r->rss, virDomainGetName(stats[i]->dom), rss);
    }
    if (n >= 0)
        virDomainStatsRecordListFree(stats);
    /* KSM merges the identical pages of resumed desktops; its counters are
     * the kernel's, readable only for this machine. */
    if (r->local) {
        unsigned long long run = 0, shared = 0, sharing = 0;
        FILE *f;
        r->ksm_known = (f = fopen("/sys/kernel/mm/ksm/run", "r")) && fscanf(f, "%llu", &run) == 1;
        if (f)
            fclose(f);
        if ((f = fopen("/sys/kernel/mm/ksm/pages_shared", "r"))) {
            r->ksm_known &= fscanf(f, "%llu", &shared) == 1;
            fclose(f);
        }
        if ((f = fopen("/sys/kernel/mm/ksm/pages_sharing", "r"))) {
            r->ksm_known &= fscanf(f, "%llu", &sharing) == 1;
            fclose(f);
        }
        r->ksm_running = run == 1;
        r->ksm_shared = shared;
        r->ksm_sharing = sharing;
    }
}

static void memory_done(service *svc, void *data)
{
    (void)svc;
    memory_req *r = data;
    host *h = r->h;
    h->reading = false;
    if (r->rc == 0 && h->online) {
        /* Each desktop's resident memory, from this host's reading. */
        for (size_t i = 0; i < svc->npools; i++)
            for (unsigned k = 0; k < svc->pools[i]->nslots; k++) {
                desktop *d = svc->pools[i]->desktops[k];
                if (d->host != h)
                    continue;
                json_t *rss = d->name ? json_object_get(r->rss, d->name) : NULL;
                if (!json_is_null(rss)) /* null: running, busy in libvirt, not read now */
                    d->rss_bytes = (uint64_t)json_integer_value(rss);
            }
        h->ksm_known = r->ksm_known;
        h->ksm_running = r->ksm_running;
        h->ksm_shared = r->ksm_shared;
        h->ksm_sharing = r->ksm_sharing;
        h->free_memory = r->free;
        h->total_memory = r->total;
        h->memory_known = true;
        h->memory_placed = 0; /* the reading includes what was placed before it */
    }
    virConnectClose(r->conn);
    json_decref(r->rss);
    free(r);
}

static void read_memory(host *h)
{
    memory_req *r = calloc(1, sizeof *r);
    if (!r || virConnectRef(h->conn) < 0) {
        free(r);
        return;
    }
    r->h = h;
    r->conn = h->conn;
    /* This machine: a local URI (qemu:///system), not one naming a host. */
    const char *a = strstr(h->uri, "://");
    r->local = a && (a[3] == '/' || !strncmp(a + 3, "localhost", 9));
    h->reading = true;
    h->read_at = service_now(h->svc);
    if (work_submit(h->svc, memory_run, memory_done, r) < 0) {
        h->reading = false;
        virConnectClose(r->conn);
        free(r);
    }
}

void hosts_tick(service *svc)
{
    int64_t now = service_now(svc);
    for (size_t i = 0; i < svc->nhosts; i++) {
        host *h = svc->hosts[i];
        if (!h->cfg && h->bridge && !h->desktops) {
            /* Removed from the config and drained: its connection goes. */
            svc_log("info", "host=%s event=disconnected reason=\"removed from the config and "
                            "drained\"",
                    h->name);
            libvirt_bridge_stop(h->bridge);
            libvirt_bridge_close(h->bridge);
            h->bridge = NULL;
            if (h->conn)
                virConnectClose(h->conn);
            h->conn = NULL;
            h->online = h->adopted = false;
            continue;
        }
        libvirt_bridge_tick(h->bridge);
        if (h->conn && !h->adopted && !h->adopting)
            adopt_start(h); /* an adoption that failed is retried */
        if (h->conn && h->adopted && !h->reading && now - h->read_at >= HOST_READ_S)
            read_memory(h);
    }
    hosts_update(svc);
}

/* ---- views -------------------------------------------------------------------------- */

json_t *hosts_json(service *svc)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < svc->nhosts; i++) {
        host *h = svc->hosts[i];
        json_t *ds = json_array();
        for (size_t k = 0; h->cfg && k < vdi_config_datastore_count(svc->config); k++) {
            const vdi_datastore_config *d = vdi_config_datastore(svc->config, k);
            if (vdi_config_host_sees(h->cfg, d))
                json_array_append_new(ds, json_string(d->name));
        }
        unsigned by_state[DESKTOP_STATE_COUNT];
        host_count_states(svc, h, by_state);
        json_t *states = json_object();
        for (int s = 0; s < DESKTOP_STATE_COUNT; s++)
            if (by_state[s])
                json_object_set_new(states, desktop_state_name((desktop_state)s),
                                    json_integer(by_state[s]));
        const char *connection = h->online ? (h->adopted ? "connected" : "adopting")
                                           : (h->bridge ? "unreachable" : "disconnected");
        json_t *o = json_pack(
            "{s:s,s:s,s:s,s:s,s:b,s:i,s:o,s:o}", "name", h->name, "uri", h->uri, "state",
            h->cfg ? vdi_host_state_name(h->cfg->state) : "removed", "connection", connection,
            "connected", h->online, "desktops", (json_int_t)h->desktops, "desktops_by_state",
            states, "datastores", ds);
        if (h->cfg) {
            json_object_set_new(o, "max_desktops", json_integer(h->cfg->max_desktops));
            json_object_set_new(o, "reserve_memory", json_integer((json_int_t)h->cfg->reserve_memory));
        }
        if (h->memory_known) {
            json_object_set_new(o, "free_memory", json_integer((json_int_t)h->free_memory));
            json_object_set_new(o, "total_memory", json_integer((json_int_t)h->total_memory));
        }
        if (h->ksm_known) {
            long page = sysconf(_SC_PAGESIZE);
            json_object_set_new(
                o, "ksm",
                json_pack("{s:b,s:I,s:I}", "running", h->ksm_running, "shared_bytes",
                          (json_int_t)(h->ksm_shared * (uint64_t)page), "saved_bytes",
                          (json_int_t)(h->ksm_sharing * (uint64_t)page)));
        }
        if (h->connected_since && h->online)
            json_object_set_new(o, "connected_since", json_integer(h->connected_since));
        if (h->lost_since && !h->online)
            json_object_set_new(o, "unreachable_since", json_integer(h->lost_since));
        if (h->last_error) {
            json_object_set_new(o, "last_error", json_string(h->last_error));
            json_object_set_new(o, "last_error_at", json_integer(h->last_error_at));
        }
        json_array_append_new(arr, o);
    }
    return arr;
}
