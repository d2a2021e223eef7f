/* scrub.c — golds in use are re-hashed in the background, one at a time,
 * each about every SCRUB_INTERVAL_S; a gold whose content changed is
 * tainted (no new clones, its children reported orphaned). */
#include "daemon.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCRUB_INTERVAL_S (6 * 3600)

typedef struct scrub_req {
    vdi_catalog *catalog;
    char *gold;
    int rc;
    char *error;
} scrub_req;

static void scrub_run(void *data)
{
    scrub_req *j = data;
    vdi_gold_info g;
    if (vdi_catalog_gold(j->catalog, j->gold, &g, NULL) < 0 || g.state == VDI_GOLD_TAINTED)
        return;
    /* Hashing a large gold takes minutes; the catalog is not held meanwhile. */
    vdi_error err = {0};
    if (vdi_guard_verify_content(&g, &err) == -ESTALE) {
        j->rc = vdi_guard_check(j->catalog, g.path, true, &err); /* taints, counts orphans */
        j->error = strdup(err.message);
    }
}

static void scrub_done(service *svc, void *data)
{
    scrub_req *j = data;
    if (j->rc < 0)
        svc_log("error", "event=gold-tainted gold=%s reason=\"%s\"", j->gold,
                j->error ? j->error : "content changed");
    else
        svc_log("debug", "event=gold-scrubbed gold=%s", j->gold);
    svc->scrubbing = false;
    free(j->gold);
    free(j->error);
    free(j);
}

void scrub_step(service *svc)
{
    if (svc->scrubbing || svc->npools == 0 || svc->stopping)
        return;
    int64_t now = service_now(svc);
    int64_t spacing = SCRUB_INTERVAL_S / (int64_t)svc->npools;
    if (svc->last_scrub && now - svc->last_scrub < spacing)
        return;
    pool *p = svc->pools[svc->scrub_next++ % svc->npools];
    scrub_req *j = calloc(1, sizeof *j);
    if (!j || !(j->gold = strdup(pool_gold(p)))) {
        free(j);
        return;
    }
    j->catalog = svc->catalog;
    svc->last_scrub = now;
    if (work_submit(svc, scrub_run, scrub_done, j) < 0) {
        svc_log("warning", "pool=%s event=scrub-not-queued", p->name);
        free(j->gold);
        free(j);
        return;
    }
    svc->scrubbing = true;
}
