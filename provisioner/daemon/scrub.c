/* scrub.c — golds in use are re-hashed in the background, one at a time,
 * each about every SCRUB_INTERVAL_S; a gold whose content changed is
 * tainted (no new clones, its children reported orphaned). A pool on a
 * host-local datastore has its host's copy of the gold proved too (read
 * back and hashed): a copy that changed is refused at the next clone.
 *
 * A scrub reads the whole gold, tens of GiB for a real desktop image. Begun
 * while the pools fill (at start-up, after a wave of log-offs) it would take
 * the datastore's reads and the CPU from the clones and the desktops
 * booting, so a due scrub waits for a tick with no clone and no start in
 * flight, at most SCRUB_MAX_WAIT_S: a site that never stops refilling is
 * still scrubbed. Between scrubs the guard's cheap check before every clone
 * (ctime, immutable flag) still stands. */
#include "daemon.h"
#include "hoststore.h"

#include <errno.h>
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
    /* A host-local datastore: its host's connection (a reference) and the
     * datastore (pointing into config, a reference). */
    virConnectPtr conn;
    vdi_config *config;
    const vdi_datastore_config *ds;
    char *host;
    int copy_rc;
    char *copy_error;
} scrub_req;

static void scrub_free(scrub_req *j)
{
    if (j->conn)
        virConnectClose(j->conn);
    vdi_config_unref(j->config);
    free(j->gold);
    free(j->error);
    free(j->host);
    free(j->copy_error);
    free(j);
}

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
        return;
    }
    if (!j->conn)
        return;
    virStoragePoolPtr sp = NULL;
    char why[1024] = "";
    j->copy_rc = hoststore_pool(j->conn, j->ds, &sp, why, sizeof why);
    if (j->copy_rc == 0)
        j->copy_rc = hoststore_verify_gold(j->conn, sp, &g, why, sizeof why);
    if (j->copy_rc == -ENOENT)
        j->copy_rc = 0; /* not copied there yet */
    if (j->copy_rc < 0)
        j->copy_error = strdup(why);
    if (sp)
        virStoragePoolFree(sp);
}

static void scrub_done(service *svc, void *data)
{
    scrub_req *j = data;
    if (j->rc < 0)
        svc_log("error", "event=gold-tainted gold=%s reason=\"%s\"", j->gold,
                j->error ? j->error : "content changed");
    else
        svc_log("debug", "event=gold-scrubbed gold=%s", j->gold);
    if (j->copy_rc == -ESTALE)
        svc_log("error", "host=%s event=gold-copy-changed gold=%s reason=\"%s\"; it is refused at "
                         "the next clone",
                j->host, j->gold, j->copy_error ? j->copy_error : "content changed");
    else if (j->copy_rc < 0)
        svc_log("warning", "host=%s event=gold-copy-not-scrubbed gold=%s reason=\"%s\"", j->host,
                j->gold, j->copy_error ? j->copy_error : "unknown");
    svc->scrubbing = false;
    scrub_free(j);
}

void scrub_step(service *svc)
{
    if (svc->scrubbing || svc->npools == 0 || svc->stopping)
        return;
    int64_t now = service_now(svc);
    int64_t spacing = SCRUB_INTERVAL_S / (int64_t)svc->npools;
    if (svc->last_scrub && now - svc->last_scrub < spacing)
        return;
    if (svc->clones_running || svc->starts_running) {
        if (!svc->scrub_waiting_since) {
            svc->scrub_waiting_since = now;
            svc_log("debug", "event=scrub-waits reason=\"pools are filling\" clones=%u starts=%u",
                    svc->clones_running, svc->starts_running);
        }
        if (now - svc->scrub_waiting_since < SCRUB_MAX_WAIT_S)
            return;
        svc_log("info", "event=scrub-waited seconds=%lld; it runs while the pools fill",
                (long long)(now - svc->scrub_waiting_since));
    }
    svc->scrub_waiting_since = 0;
    pool *p = svc->pools[svc->scrub_next++ % svc->npools];
    scrub_req *j = calloc(1, sizeof *j);
    if (!j || !(j->gold = strdup(pool_gold(p)))) {
        free(j);
        return;
    }
    j->catalog = svc->catalog;
    svc->last_scrub = now;
    const vdi_datastore_config *ds = pool_datastore(p);
    host *h = ds && ds->kind == VDI_DATASTORE_LOCAL ? service_find_host(svc, ds->host) : NULL;
    if (h && h->conn && (j->host = strdup(h->name)) && virConnectRef(h->conn) == 0) {
        j->conn = h->conn;
        j->config = vdi_config_ref(p->config);
        j->ds = ds;
    }
    if (work_submit(svc, scrub_run, scrub_done, j) < 0) {
        svc_log("warning", "pool=%s event=scrub-not-queued", p->name);
        scrub_free(j);
        return;
    }
    svc->scrubbing = true;
}
