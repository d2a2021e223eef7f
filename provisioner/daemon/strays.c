/* strays.c — the stray check, once every host has been adopted (adopt.c):
 * a worker removes children of our pools that no desktop and no domain
 * uses (made before a crash, never started) and closes sessions whose
 * desktop is gone. The controllers clone meanwhile: only children made and
 * sessions begun before the check started are its business, so a new spare
 * is never taken for a stray. A child is never removed while a domain of
 * that name or disk exists, or while a desktop holds it (every state but
 * empty, and empty ones a job holds). */
#include "daemon.h"
#include "jobs.h"
#include "vdi_strmap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- on a worker, with copies of what the loop knows ------------------------------- */

typedef struct stray_req {
    vdi_catalog *catalog;
    int64_t since;   /* unix seconds when the check began: newer records are not strays */
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
    json_array_foreach(in_use, i, v)
    {
        if (vdi_strmap_put(ix->paths, json_string_value(v), 0) < 0)
            return -1;
    }
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

/* Each datastore directory is reconciled once, however many pools share it:
 * a reconcile probes every image in the directory, and a site with ten
 * pools on one datastore would otherwise probe its children ten times. */
static void reconcile_datastores(stray_req *r)
{
    vdi_strmap *done = vdi_strmap_new();
    size_t i;
    json_t *p;
    json_array_foreach(r->pools, i, p)
    {
        const char *pname = json_string_value(json_object_get(p, "name"));
        const char *dir = json_string_value(json_object_get(p, "datastore"));
        size_t unused;
        if (!dir || (done && vdi_strmap_get(done, dir, &unused)))
            continue;
        if (done && vdi_strmap_put(done, dir, i) < 0) {
            vdi_strmap_free(done); /* out of memory: the rest are reconciled per pool */
            done = NULL;
        }
        vdi_error err = {0};
        vdi_reconcile_report rep;
        double t0 = jobs_mono();
        if (vdi_reconcile(r->catalog, dir, &rep, &err) < 0) {
            svc_log("warning", "pool=%s event=reconcile-failed datastore=%s reason=\"%s\"", pname,
                    dir, err.message);
            continue;
        }
        svc_log("info",
                "event=datastore-reconciled datastore=%s records_dropped=%zu unknown_children=%zu "
                "orphans=%zu temporaries_removed=%zu seconds=%.3f",
                dir, rep.dropped_records, rep.unknown_children, rep.orphans,
                rep.temporaries_removed, jobs_mono() - t0);
    }
    vdi_strmap_free(done);
}

static void remove_pool_strays(stray_req *r, json_t *p, const vdi_child_info *kids, size_t n)
{
    const char *pname = json_string_value(json_object_get(p, "name"));
    in_use_index ix = {0};
    if (in_use_build(&ix, r->domains, json_object_get(p, "in_use")) < 0) {
        svc_log("warning", "pool=%s event=strays-not-checked reason=\"out of memory\"", pname);
        in_use_free(&ix);
        return;
    }
    for (size_t k = 0; k < n; k++) {
        vdi_gold_info sealed;
        vdi_error err = {0};
        if (strcmp(kids[k].pool, pname) || kids[k].created_at >= r->since ||
            child_in_use(&ix, kids[k].path))
            continue;
        /* A sealed child is a memory image's template: it goes with its
         * image (templates.c), never as a stray. */
        if (vdi_catalog_gold(r->catalog, kids[k].path, &sealed, NULL) == 0)
            continue;
        svc_log("info", "pool=%s event=stray-child-removed child=%s", pname, kids[k].path);
        if (vdi_child_delete(r->catalog, kids[k].path, NULL, &err) < 0)
            svc_log("error", "pool=%s event=stray-child-not-removed child=%s reason=\"%s\"", pname,
                    kids[k].path, err.message);
    }
    in_use_free(&ix);
}

static void strays_run(void *data)
{
    stray_req *r = data;
    reconcile_datastores(r);
    /* The catalog's children, read once for every pool (after the
     * reconcile dropped the records whose file is gone). */
    size_t i, n = 0;
    json_t *p;
    bool any_shared = false;
    json_array_foreach(r->pools, i, p)
    {
        any_shared |= !json_is_true(json_object_get(p, "local"));
    }
    vdi_child_info *kids = NULL;
    vdi_error err = {0};
    bool kids_read = any_shared && vdi_catalog_children(r->catalog, NULL, &kids, &n, &err) == 0;
    json_array_foreach(r->pools, i, p)
    {
        const char *pname = json_string_value(json_object_get(p, "name"));
        if (json_is_true(json_object_get(p, "local")))
            ; /* children on a host: not checked here */
        else if (!kids_read)
            svc_log("warning", "pool=%s event=strays-not-checked reason=\"%s\"", pname,
                    err.message);
        else
            remove_pool_strays(r, p, kids, n);
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
    free(kids);
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
void strays_check(service *svc)
{
    json_t *all = json_array();
    for (size_t i = 0; i < svc->nhosts; i++) {
        host *h = svc->hosts[i];
        if (!h->cfg)
            continue;
        if (!h->adopted || !h->listing) {
            svc_log("info",
                    "event=strays-not-checked reason=\"host %s is not adopted yet\"; "
                    "checked once every host is",
                    h->name);
            json_decref(all);
            return;
        }
        json_array_extend(all, h->listing);
    }
    remove_strays(svc, all); /* takes the array */
}
