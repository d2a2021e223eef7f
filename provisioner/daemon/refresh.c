/* refresh.c — keeps the catalog's record of what each child holds current,
 * so that admission and the space views never walk a datastore: every
 * second a worker stats the children of up to REFRESH_BATCH live desktops
 * (round robin over all pools) and records their sizes; the catalog's
 * per-datastore usage follows by its triggers. A pool of N desktops is
 * refreshed every N / REFRESH_BATCH seconds. */
#include "daemon.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define REFRESH_BATCH 64

typedef struct refresh_req {
    vdi_catalog *catalog;
    char *paths[REFRESH_BATCH];
    size_t n;
} refresh_req;

static void refresh_run(void *data)
{
    refresh_req *r = data;
    for (size_t i = 0; i < r->n; i++) {
        struct stat st;
        vdi_error err = {0};
        /* A child deleted meanwhile has no record to update: nothing happens. */
        if (stat(r->paths[i], &st) == 0 &&
            vdi_catalog_set_child_bytes(r->catalog, r->paths[i], (uint64_t)st.st_blocks * 512,
                                        &err) < 0)
            svc_log("warning", "event=child-size-not-recorded child=%s reason=\"%s\"", r->paths[i],
                    err.message);
    }
}

static void refresh_done(service *svc, void *data)
{
    refresh_req *r = data;
    for (size_t i = 0; i < r->n; i++)
        free(r->paths[i]);
    free(r);
    svc->refreshing = false;
}

static bool has_child(const desktop *d)
{
    return d->child && (d->state == DESKTOP_READY || d->state == DESKTOP_ASSIGNED ||
                        d->state == DESKTOP_PAUSED || d->state == DESKTOP_BOOTING);
}

void refresh_step(service *svc)
{
    if (svc->refreshing || svc->stopping || svc->npools == 0)
        return;
    refresh_req *r = calloc(1, sizeof *r);
    if (!r)
        return;
    r->catalog = svc->catalog;
    size_t total = 0;
    for (size_t i = 0; i < svc->npools; i++)
        total += svc->pools[i]->nslots;
    /* Walk at most one full round from where the last batch stopped. */
    for (size_t seen = 0; seen < total && r->n < REFRESH_BATCH; seen++) {
        size_t k = svc->refresh_next++ % total;
        desktop *d = NULL;
        for (size_t i = 0; i < svc->npools && !d; i++) {
            if (k < svc->pools[i]->nslots)
                d = svc->pools[i]->desktops[k];
            else
                k -= svc->pools[i]->nslots;
        }
        if (d && has_child(d) && (r->paths[r->n] = strdup(d->child)))
            r->n++;
    }
    if (r->n == 0 || work_submit(svc, refresh_run, refresh_done, r) < 0) {
        refresh_done(svc, r);
        return;
    }
    svc->refreshing = true;
}
