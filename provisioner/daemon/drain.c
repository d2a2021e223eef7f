/* drain.c — an operator drains a pool before maintenance of its gold, its
 * datastore or its hosts: no new sessions (acquire answers 503 with why),
 * its spares and booting desktops end, sessions run until their users log
 * off. Unlike a pool removed from the config (draining), a drained pool
 * keeps its config and stays until an operator opens it again; the drain
 * is in the catalog, so a restart of vdipoold keeps it.
 *
 *   POST /v1/pools/{pool}/drain     vdipoolctl pool drain POOL
 *   POST /v1/pools/{pool}/undrain   vdipoolctl pool undrain POOL
 *
 * The catalog is written first (one short statement on the loop, like a
 * session's begin): an answer of 200 means the drain survives a crash. */
#include "api.h"
#include "daemon.h"

#include <stdio.h>

void pool_load_drain(pool *p)
{
    if (!p->svc->catalog)
        return; /* tests without a catalog */
    vdi_error err = {0};
    if (vdi_catalog_pool_drain(p->svc->catalog, p->name, &p->drained_since, &err) < 0)
        svc_log("error", "pool=%s event=drain-unknown reason=\"%s\"; it is taken as open", p->name,
                err.message);
    else if (p->drained_since)
        svc_log("info", "pool=%s event=drained since=%lld (an operator's drain, kept)", p->name,
                (long long)p->drained_since);
}

void pool_drain_request(service *svc, request *r, const char *pool_name, bool drain)
{
    pool *p = service_find_pool(svc, pool_name);
    if (!p) {
        request_respond_json(r, 404, json_pack("{s:s}", "error", "no such pool"));
        return;
    }
    if (p->draining) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "pool %s is being removed (it is no longer in the config): it cannot be %s",
                 p->name, drain ? "drained" : "opened");
        request_respond_json(r, 409, json_pack("{s:s}", "error", msg));
        return;
    }
    if (drain == (p->drained_since != 0)) { /* already so: nothing to write */
        request_respond_json(r, 200, pool_json(p, false));
        return;
    }
    int64_t since = drain ? service_now(svc) : 0;
    vdi_error err = {0};
    if (vdi_catalog_set_pool_drain(svc->catalog, p->name, since, &err) < 0) {
        svc_log("error", "pool=%s event=%s-failed reason=\"%s\"", p->name,
                drain ? "drain" : "undrain", err.message);
        char msg[1200];
        snprintf(msg, sizeof msg, "cannot record the %s of pool %.64s in the catalog: %s",
                 drain ? "drain" : "undrain", p->name, err.message);
        request_respond_json(r, 500, json_pack("{s:s}", "error", msg));
        return;
    }
    p->drained_since = since;
    p->tend_all = true; /* its spares go (or come back) at the next step */
    svc_log("info", "pool=%s event=%s sessions=%u", p->name, drain ? "drained" : "undrained",
            p->by_state[DESKTOP_ASSIGNED].count);
    if (drain)
        sessions_serve_waiters(svc); /* its waiters get their 503 now */
    request_respond_json(r, 200, pool_json(p, false));
    service_kick(svc);
}
