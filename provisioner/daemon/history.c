/* history.c — finished sessions' records are kept for
 * service.session_history (0: for ever) and then forgotten, so that the
 * catalog of a busy site does not grow without end. vdipoold reads only
 * recent sessions (a pool's last hour, its learned growth over the last
 * 500, open sessions at adoption), so what goes is the operator's own
 * history. A worker forgets at most PRUNE_ROUNDS batches of PRUNE_BATCH
 * rows per run, each in a short transaction, so that other commits go on
 * between them; runs are an hour apart, or a minute while more is left. */
#include "daemon.h"

#include <stdlib.h>
#include <string.h>

/* A batch holds the catalog's lock (which the loop's session starts take
 * too) for a few milliseconds; between batches others commit. */
#define PRUNE_BATCH 1000
#define PRUNE_ROUNDS 50
#define PRUNE_EVERY_S 3600

typedef struct prune_req {
    vdi_catalog *catalog;
    int64_t ended_before;
    uint64_t removed;
    bool more; /* a full run: older records are left for the next */
    char *error;
} prune_req;

static void prune_run(void *data)
{
    prune_req *r = data;
    for (int round = 0; round < PRUNE_ROUNDS; round++) {
        uint64_t n = 0;
        vdi_error err = {0};
        if (vdi_catalog_prune_sessions(r->catalog, r->ended_before, PRUNE_BATCH, &n, &err) < 0) {
            r->error = strdup(err.message);
            return;
        }
        r->removed += n;
        if (n < PRUNE_BATCH)
            return;
    }
    r->more = true;
}

static void prune_done(service *svc, void *data)
{
    prune_req *r = data;
    svc->pruning = false;
    int64_t now = service_now(svc);
    svc->prune_at = now + (r->more ? 60 : PRUNE_EVERY_S);
    if (r->error)
        svc_log("warning", "event=sessions-not-pruned reason=\"%s\"; tried again in an hour",
                r->error);
    else if (r->removed)
        svc_log("info", "event=sessions-pruned removed=%llu ended_before=%lld%s",
                (unsigned long long)r->removed, (long long)r->ended_before,
                r->more ? " more=yes" : "");
    free(r->error);
    free(r);
}

void history_step(service *svc)
{
    uint64_t keep = vdi_config_service(svc->config)->session_history;
    int64_t now = service_now(svc);
    if (!keep || svc->pruning || svc->stopping || now < svc->prune_at || !svc->catalog)
        return;
    prune_req *r = calloc(1, sizeof *r);
    if (!r)
        return;
    r->catalog = svc->catalog;
    r->ended_before = now - (int64_t)keep;
    svc->pruning = true;
    if (work_submit(svc, prune_run, prune_done, r) < 0) {
        svc->pruning = false;
        svc->prune_at = now + 60;
        free(r);
    }
}
