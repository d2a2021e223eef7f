/* api_routes.c — what each endpoint of the control API does. The transport
 * (api_http.c) hands each request here, on the loop. */
#include "api_routes.h"
#include "api.h"
#include "daemon.h"
#include "hoststore.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void not_found(request *r, const char *what)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", what);
    request_respond_json(r, 404, json_pack("{s:s}", "error", msg));
}

static void bad_request(request *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bad_request(request *r, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    request_respond_json(r, 400, json_pack("{s:s}", "error", msg));
}

/* ?NAME=N, a whole number; *out is left alone when NAME is absent. */
static bool query_count(request *r, const char *name, unsigned *out)
{
    char v[32];
    if (!request_query(r, name, v, sizeof v))
        return true;
    char *end = NULL;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (!*v || *end || errno || n > UINT_MAX || *v == '-' || *v == '+') {
        bad_request(r, "?%s=%s is not a whole number of desktops (0 to %u)", name, v, UINT_MAX);
        return false;
    }
    *out = (unsigned)n;
    return true;
}

/* ?summary=1|0 (also true/false, yes/no). */
static bool query_switch(request *r, const char *name, bool *out)
{
    char v[16];
    if (!request_query(r, name, v, sizeof v))
        return true;
    if (!*v || !strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes"))
        *out = true;
    else if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no"))
        *out = false;
    else {
        bad_request(r, "?%s=%s: use 1 or 0", name, v);
        return false;
    }
    return true;
}

/* ?state=ready,assigned: a mask of 1u << desktop_state; 0 when absent. */
static bool query_states(request *r, unsigned *mask)
{
    char v[512];
    if (!request_query(r, "state", v, sizeof v))
        return true;
    *mask = 0;
    for (const char *s = v;; s++) {
        size_t len = strcspn(s, ",");
        desktop_state st;
        if (!desktop_state_from_name(s, len, &st)) {
            char known[256] = "";
            for (int k = 0; k < DESKTOP_STATE_COUNT; k++)
                snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", k ? ", " : "",
                         desktop_state_name((desktop_state)k));
            bad_request(r,
                        "'%.*s' is not a desktop state; use one or more of %s, "
                        "separated by commas",
                        (int)len, s, known);
            return false;
        }
        *mask |= 1u << st;
        s += len;
        if (!*s)
            return true;
    }
}

static json_t *images_json(vdi_catalog *catalog);

/* ---- work off the loop: measuring datastores and reading the catalog ---------- */

/* What a worker needs of the datastores, copied on the loop: a reload may
 * free the config while the worker runs. */
typedef struct datastore_copy {
    char name[64], path[4096];
    uint64_t reserve_bytes;
    double reserve_percent, max_overcommit;
    vdi_datastore_config config; /* for a host-local one: name, path, reserve (into the copy) */
    bool local;
    char host[64];
    virConnectPtr conn; /* local: its host's connection (a reference), or NULL */
} datastore_copy;

/* A datastore measured without a walk: statvfs, or (host-local) its host's
 * storage pool; with the catalog's usage of it. */
static int measure_store(vdi_catalog *catalog, const datastore_copy *ds, vdi_space_report *s,
                         vdi_error *err)
{
    if (!ds->local)
        return vdi_space_measure_known(catalog, ds->name, ds->path, ds->reserve_bytes,
                                       ds->reserve_percent, s, err);
    if (!ds->conn)
        return vdi_error_set(err, -ENOTCONN, "host %s is not connected", ds->host);
    char why[1024] = "";
    int rc = hoststore_measure(ds->conn, &ds->config, catalog, s, why, sizeof why);
    return rc < 0 ? vdi_error_set(err, rc, "host %s: %s", ds->host, why) : 0;
}

typedef struct deferred {
    vdi_catalog *catalog;
    request *r;
    datastore_copy *stores;
    size_t nstores;
    char *prefix_text; /* metrics: the loop-owned part, already rendered */
    bool metrics, images;
    json_t *result;
    char *text;
} deferred;

static json_t *space_json(vdi_catalog *catalog, const datastore_copy *stores, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        const datastore_copy *ds = &stores[i];
        vdi_space_report s;
        vdi_error err = {0};
        if (measure_store(catalog, ds, &s, &err) < 0) {
            json_array_append_new(arr,
                                  json_pack("{s:s,s:s}", "name", ds->name, "error", err.message));
            continue;
        }
        json_t *o = json_pack("{s:s,s:s?}", "kind", ds->local ? "local" : "shared", "host",
                              ds->local ? ds->host : NULL);
        json_array_append_new(
            arr, json_pack("{s:s,s:s,s:I,s:I,s:I,s:i,s:I,s:I,s:f,s:f}", "name", ds->name, "path",
                           ds->path, "capacity", (json_int_t)s.capacity, "free", (json_int_t)s.free,
                           "reserve", (json_int_t)s.reserve, "children", (int)s.children,
                           "children_allocated", (json_int_t)s.children_allocated, "worst_case",
                           (json_int_t)s.worst_case, "overcommit", s.overcommit, "max_overcommit",
                           ds->max_overcommit));
        json_object_update(json_array_get(arr, json_array_size(arr) - 1), o);
        json_decref(o);
    }
    return json_pack("{s:o}", "datastores", arr);
}

/* Prometheus lines for the datastores, appended to the loop's part. */
static char *datastore_metrics(vdi_catalog *catalog, const char *prefix,
                               const datastore_copy *stores, size_t n)
{
    size_t cap = strlen(prefix) + 256 + n * 1024;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    size_t len = (size_t)snprintf(out, cap,
                                  "%s# HELP vdipool_datastore_bytes Datastore capacity, "
                                  "free and children's bytes.\n"
                                  "# TYPE vdipool_datastore_bytes gauge\n",
                                  prefix);
    for (size_t i = 0; i < n && len < cap; i++) {
        vdi_space_report r;
        if (measure_store(catalog, &stores[i], &r, NULL) < 0)
            continue;
        const char *kinds[5] = {"capacity", "free", "reserve", "children_allocated", "worst_case"};
        uint64_t values[5] = {r.capacity, r.free, r.reserve, r.children_allocated, r.worst_case};
        for (int k = 0; k < 5 && len < cap; k++)
            len += (size_t)snprintf(out + len, cap - len,
                                    "vdipool_datastore_bytes{datastore=\"%s\",kind=\"%s\"} %llu\n",
                                    stores[i].name, kinds[k], (unsigned long long)values[k]);
    }
    return out;
}

static void stores_free(deferred *d)
{
    for (size_t i = 0; i < d->nstores; i++)
        if (d->stores[i].conn)
            virConnectClose(d->stores[i].conn);
    free(d->stores);
}

static void deferred_work(void *data)
{
    deferred *d = data;
    if (d->metrics)
        d->text = datastore_metrics(d->catalog, d->prefix_text ? d->prefix_text : "", d->stores,
                                    d->nstores);
    else if (d->images)
        d->result = images_json(d->catalog);
    else
        d->result = space_json(d->catalog, d->stores, d->nstores);
}

static void deferred_done(service *svc, void *data)
{
    (void)svc;
    deferred *d = data;
    if (d->metrics)
        request_respond_text(d->r, 200, "text/plain; version=0.0.4", d->text ? d->text : "");
    else
        request_respond_json(d->r, 200, d->result);
    free(d->text);
    free(d->prefix_text);
    stores_free(d);
    free(d);
}

/* Answers r from a worker thread: datastores are measured and the catalog
 * read there, never on the loop. */
static void defer(service *svc, request *r, bool metrics, bool images)
{
    deferred *d = calloc(1, sizeof *d);
    size_t n = vdi_config_datastore_count(svc->config);
    if (!d || !(d->stores = calloc(n ? n : 1, sizeof *d->stores))) {
        free(d);
        request_respond_json(r, 500, json_pack("{s:s}", "error", "out of memory"));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const vdi_datastore_config *ds = vdi_config_datastore(svc->config, i);
        snprintf(d->stores[i].name, sizeof d->stores[i].name, "%s", ds->name);
        snprintf(d->stores[i].path, sizeof d->stores[i].path, "%s", ds->path);
        d->stores[i].reserve_bytes = ds->reserve_bytes;
        d->stores[i].reserve_percent = ds->reserve_percent;
        d->stores[i].max_overcommit = ds->max_overcommit;
        if (ds->kind == VDI_DATASTORE_LOCAL) {
            datastore_copy *c = &d->stores[i];
            c->local = true;
            snprintf(c->host, sizeof c->host, "%s", ds->host ? ds->host : "");
            c->config = *ds;
            c->config.name = c->name; /* the copy's own strings, not the config's */
            c->config.path = c->path;
            c->config.host = c->host;
            host *h = service_find_host(svc, ds->host);
            if (h && h->conn && virConnectRef(h->conn) == 0)
                c->conn = h->conn;
        }
    }
    d->nstores = n;
    d->catalog = svc->catalog;
    d->r = r;
    d->metrics = metrics;
    d->images = images;
    if (metrics)
        d->prefix_text = service_metrics_text(svc);
    request_hold(r);
    if (work_submit(svc, deferred_work, deferred_done, d) < 0) {
        request_respond_json(r, 503, json_pack("{s:s}", "error", "cannot queue work; try again"));
        free(d->prefix_text);
        stores_free(d);
        free(d);
    }
}

/* Does the child's header name `gold` as its backing file? */
static bool backed_by(const char *child, const char *backing_name, const char *gold)
{
    char *path = NULL;
    if (!backing_name || vdi_backing_real_path(child, backing_name, &path, NULL) < 0)
        return false;
    bool same = !strcmp(path, gold);
    free(path);
    return same;
}

static json_t *images_json(vdi_catalog *catalog)
{
    vdi_gold_info *golds = NULL;
    size_t ng = 0;
    vdi_error err = {0};
    if (vdi_catalog_golds(catalog, &golds, &ng, &err) < 0)
        return json_pack("{s:[],s:s}", "golds", "error", err.message);
    json_t *arr = json_array();
    for (size_t i = 0; i < ng; i++) {
        vdi_child_info *kids = NULL;
        size_t nk = 0;
        if (vdi_catalog_children(catalog, golds[i].path, &kids, &nk, &err) < 0)
            svc_log("warning", "event=images-incomplete gold=%s reason=\"%s\"", golds[i].path,
                    err.message);
        json_t *children = json_array();
        for (size_t k = 0; k < nk; k++) {
            vdi_image *img = NULL;
            uint64_t alloc = 0, vsize = golds[i].virtual_size;
            bool missing = true, orphaned = false;
            if (vdi_image_open(kids[k].path, &img, NULL) == 0) {
                missing = false;
                alloc = vdi_image_allocated_bytes(img);
                vsize = vdi_image_virtual_size(img);
                orphaned = !backed_by(kids[k].path, vdi_image_backing_name(img), golds[i].path);
                vdi_image_close(img);
            }
            json_t *c =
                json_pack("{s:s,s:s,s:i,s:I,s:I}", "path", kids[k].path, "pool", kids[k].pool,
                          "slot", kids[k].slot, "allocated_bytes", (json_int_t)alloc,
                          "worst_case_bytes", (json_int_t)(vsize > alloc ? vsize - alloc : 0));
            /* missing: the file is gone; orphaned: its header no longer
             * names this gold (what `vdipoolctl image tree` marks). */
            if (missing)
                json_object_set_new(c, "missing", json_true());
            if (orphaned)
                json_object_set_new(c, "orphaned", json_true());
            json_array_append_new(children, c);
        }
        free(kids);
        json_array_append_new(arr,
                              json_pack("{s:s,s:s,s:I,s:o}", "gold", golds[i].path, "state",
                                        vdi_gold_state_name(golds[i].state), "virtual_size",
                                        (json_int_t)golds[i].virtual_size, "children", children));
    }
    free(golds);
    return json_pack("{s:o}", "golds", arr);
}

/* The answer to POST /v1/reload, once the worker has read the file. */
static void reloaded(void *ctx, int rc, json_t *errors)
{
    if (rc == 0) {
        json_decref(errors);
        request_respond_json(ctx, 200, json_pack("{s:b}", "reloaded", 1));
    } else {
        request_respond_json(
            ctx, 400,
            json_pack("{s:b,s:o}", "reloaded", 0, "errors", errors ? errors : json_array()));
    }
}

static void acquired(void *ctx, int status, json_t *body)
{
    request_respond_json(ctx, status, body);
}

/* A broker that gave up on an acquire: its user must not get a desktop. */
static bool acquire_gone(void *svc, request *r)
{
    return service_cancel_acquire(svc, r);
}

/* Splits "/v1/pools/NAME/acquire" into parts; returns how many. */
static int split(const char *path, char parts[6][128])
{
    int n = 0;
    const char *p = path;
    while (*p && n < 6) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        size_t len = strcspn(p, "/");
        snprintf(parts[n++], 128, "%.*s", (int)(len < 127 ? len : 127), p);
        p += len;
    }
    return n;
}

void api_route(void *ctx, request *r)
{
    service *svc = ctx;
    const char *m = request_method(r);
    char parts[6][128];
    int n = split(request_path(r), parts);
    bool get = !strcmp(m, "GET"), post = !strcmp(m, "POST");

    if (n == 1 && !strcmp(parts[0], "metrics") && get) {
        defer(svc, r, true, false);
        return;
    }
    if (n < 2 || strcmp(parts[0], "v1")) {
        not_found(r, "unknown path; see the README's API reference");
        return;
    }
    if (svc->stopping && post) {
        request_respond_json(r, 503, json_pack("{s:s}", "error", "vdipoold is shutting down"));
        return;
    }
    if (n == 2 && !strcmp(parts[1], "status") && get) {
        request_respond_json(r, 200, status_json(svc));
    } else if (n == 2 && !strcmp(parts[1], "hosts") && get) {
        request_respond_json(r, 200, json_pack("{s:o}", "hosts", hosts_json(svc)));
    } else if (n == 3 && !strcmp(parts[1], "hosts") && get) {
        json_t *all = hosts_json(svc), *found = NULL, *h;
        size_t i;
        json_array_foreach(all, i, h) if (!strcmp(json_string_value(json_object_get(h, "name")),
                                                 parts[2])) found = json_incref(h);
        json_decref(all);
        if (found)
            request_respond_json(r, 200, found);
        else
            not_found(r, "no such host");
    } else if (n == 2 && !strcmp(parts[1], "pools") && get) {
        json_t *arr = json_array();
        for (size_t i = 0; i < svc->npools; i++)
            json_array_append_new(arr, pool_json(svc->pools[i], false));
        request_respond_json(r, 200, json_pack("{s:o}", "pools", arr));
    } else if (n == 3 && !strcmp(parts[1], "pools") && get) {
        /* ?summary=1: counts only; ?offset=N&limit=M: a page of desktops;
         * ?state=S,...: only desktops in those states. */
        pool *p = service_find_pool(svc, parts[2]);
        bool summary = false;
        unsigned offset = 0, limit = 0, states = 0;
        if (!p)
            not_found(r, "no such pool");
        else if (query_switch(r, "summary", &summary) && query_count(r, "offset", &offset) &&
                 query_count(r, "limit", &limit) && query_states(r, &states))
            request_respond_json(r, 200, pool_json_page(p, !summary, offset, limit, states));
    } else if (n == 4 && !strcmp(parts[1], "pools") && !strcmp(parts[3], "acquire") && post) {
        json_error_t jerr;
        json_t *body = json_loads(request_body(r), 0, &jerr);
        const char *user = json_string_value(json_object_get(body, "user"));
        size_t bad = user ? strcspn(user, "\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c"
                                          "\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18"
                                          "\x19\x1a\x1b\x1c\x1d\x1e\x1f\x7f")
                          : 0;
        if (user && user[bad]) {
            char msg[256];
            snprintf(msg, sizeof msg,
                     "the user name must not contain control characters (byte 0x%02x at "
                     "position %zu)",
                     (unsigned char)user[bad], bad);
            request_respond_json(r, 400, json_pack("{s:s}", "error", msg));
        } else if (!user || !*user || strlen(user) > 120) {
            char msg[256];
            snprintf(msg, sizeof msg, "the body must be JSON like {\"user\": \"alice\"}%s%s",
                     body ? "" : ": ", body ? "" : jerr.text);
            request_respond_json(r, 400, json_pack("{s:s}", "error", msg));
        } else {
            request_hold(r);
            request_on_gone(r, acquire_gone, svc);
            service_acquire(svc, parts[2], user, acquired, r);
        }
        json_decref(body);
    } else if (n == 4 && !strcmp(parts[1], "pools") && !strcmp(parts[3], "rollout") && post) {
        pool *p = service_find_pool(svc, parts[2]);
        if (!p) {
            not_found(r, "no such pool");
        } else if (pool_rollout(p) < 0) {
            char msg[512];
            snprintf(msg, sizeof msg,
                     "pool %s is not holding back a roll-out: it clones from %s, its config's "
                     "gold",
                     p->name, p->cfg->gold);
            request_respond_json(r, 409, json_pack("{s:s}", "error", msg));
        } else {
            request_respond_json(r, 200, pool_json(p, false));
            service_kick(svc);
        }
    } else if (n == 4 && !strcmp(parts[1], "pools") &&
               (!strcmp(parts[3], "drain") || !strcmp(parts[3], "undrain")) && post) {
        pool_drain_request(svc, r, parts[2], !strcmp(parts[3], "drain"));
    } else if (n == 4 && !strcmp(parts[1], "golds") &&
               (!strcmp(parts[3], "edit") || !strcmp(parts[3], "discard")) && post) {
        gold_maintenance(svc, r, parts[2], !strcmp(parts[3], "discard"));
    } else if (n == 4 && !strcmp(parts[1], "golds") &&
               (!strcmp(parts[3], "publish") || !strcmp(parts[3], "rollback")) && post) {
        gold_request(svc, r, parts[2], parts[3]);
    } else if (n == 2 && !strcmp(parts[1], "golds") && get) {
        golds_list(svc, r);
    } else if ((n == 3 || (n == 4 && !strcmp(parts[3], "versions"))) &&
               !strcmp(parts[1], "golds") && get) {
        gold_request(svc, r, parts[2], NULL);
    } else if (n == 3 && !strcmp(parts[1], "desktops") && get) {
        desktop *d = service_find_desktop(svc, parts[2]);
        if (d)
            request_respond_json(r, 200, desktop_detail_json(d));
        else
            not_found(r, "no such desktop");
    } else if (n == 4 && !strcmp(parts[1], "desktops") && !strcmp(parts[3], "release") && post) {
        desktop *d = service_find_desktop(svc, parts[2]);
        json_t *body = json_loads(request_body(r), 0, NULL);
        const char *reason = json_string_value(json_object_get(body, "reason"));
        if (!d) {
            not_found(r, "no such desktop");
        } else if (d->state == DESKTOP_UNREACHABLE) {
            char msg[512];
            snprintf(msg, sizeof msg,
                     "desktop %s is unreachable (host %s does not answer): its session is kept "
                     "until the host answers again; then it is kept if its domain still runs, "
                     "ended if not",
                     d->name, d->host ? d->host->name : "?");
            request_respond_json(r, 409, json_pack("{s:s}", "error", msg));
        } else if (d->state == DESKTOP_ADOPTING) {
            char msg[512];
            snprintf(msg, sizeof msg,
                     "desktop %s is adopting: libvirt is still starting, restoring or changing "
                     "its domain (begun before vdipoold restarted), and ending it now could "
                     "break libvirt's work; it is adopted when libvirt is done (within "
                     "service.adopt_wait, %llus): try again then",
                     d->name, (unsigned long long)vdi_config_service(svc->config)->adopt_wait);
            request_respond_json(r, 409, json_pack("{s:s}", "error", msg));
        } else if (d->state != DESKTOP_ASSIGNED && !(reason && !strcmp(reason, "operator"))) {
            char msg[256];
            snprintf(msg, sizeof msg, "desktop %s is %s, not assigned", d->name,
                     desktop_state_name(d->state));
            request_respond_json(r, 400, json_pack("{s:s}", "error", msg));
        } else if (d->state == DESKTOP_EMPTY || d->state == DESKTOP_ENDING || d->busy) {
            /* Nothing to end now: say so rather than answer as if it ended. */
            char msg[256];
            snprintf(msg, sizeof msg, "desktop %s is %s%s", d->name, desktop_state_name(d->state),
                     d->state == DESKTOP_EMPTY    ? ": it has no domain or session to end"
                     : d->state == DESKTOP_ENDING ? " already"
                                                  : "; its current step must finish first, "
                                                    "try again in a moment");
            request_respond_json(r, 409, json_pack("{s:s}", "error", msg));
        } else {
            session_end(d, reason && !strcmp(reason, "operator") ? END_OPERATOR : END_RELEASED);
            request_respond_json(r, 200, desktop_json(d));
            service_kick(svc);
        }
        json_decref(body);
    } else if (n == 2 && !strcmp(parts[1], "events") && get) {
        char pool_name[128];
        events_subscribe(svc, r, request_query(r, "pool", pool_name, sizeof pool_name));
    } else if (n == 2 && !strcmp(parts[1], "space") && get) {
        defer(svc, r, false, false);
    } else if (n == 2 && !strcmp(parts[1], "images") && get) {
        defer(svc, r, false, true);
    } else if (n == 2 && !strcmp(parts[1], "reload") && post) {
        request_hold(r);
        if (service_reload(svc, reloaded, r) < 0)
            request_respond_json(r, 503, json_pack("{s:s}", "error", "cannot queue the reload"));
    } else {
        not_found(r, "unknown path or method; see the README's API reference");
    }
}
