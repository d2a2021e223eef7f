/* gold_api.c — gold families on the API (the same operations as
 * `vdipoolctl gold ...`, through provisioner/shared/glue.c):
 *
 *   GET  /v1/golds                          the config's golds: name, path or dir,
 *                                           current version
 *   GET  /v1/golds/{name}                   versions, history, and `publishing`
 *                                           (percent) while a publish runs
 *   POST /v1/golds/{name}/publish  [{"note"}]          the open edit becomes the next
 *                                                      version (answered when written)
 *   POST /v1/golds/{name}/rollback [{"to": N, "note"}] an earlier version is current
 *
 * The catalog work runs on a worker; after a publish or rollback the
 * service re-reads its config, so pools that follow the family roll over. */
#include "api.h"
#include "daemon.h"
#include "glue.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { GOLD_SHOW, GOLD_PUBLISH, GOLD_ROLLBACK } gold_op;

struct gold_job {
    gold_op op;
    request *r;
    vdi_catalog *catalog;
    char family[64];
    char dir[PATH_MAX];
    char note[512];
    unsigned to;
    atomic_int permille; /* publish progress, read by GET on the loop */
    struct gold_job *next;
    /* results */
    json_t *result;
    int status;
    vdi_error err;
};

static void publish_progress(double percent, void *ctx)
{
    struct gold_job *g = ctx;
    atomic_store(&g->permille, (int)(percent * 10));
}

static void gold_run(void *data)
{
    struct gold_job *g = data;
    g->status = 200;
    if (g->op == GOLD_SHOW) {
        g->result = glue_family_json(g->catalog, g->family, &g->err);
    } else if (g->op == GOLD_ROLLBACK) {
        unsigned was = 0, now = 0;
        if (glue_rollback(g->catalog, g->family, g->to, "api", g->note[0] ? g->note : NULL,
                          &was, &now, &g->err) == 0)
            g->result = json_pack("{s:s,s:i,s:i}", "gold", g->family, "current", now, "was", was);
    } else {
        vdi_gold_version v;
        if (glue_publish_edit(g->catalog, g->family, g->dir, g->note[0] ? g->note : NULL, "api",
                              publish_progress, g, &v, &g->err) == 0)
            g->result = glue_version_json(&v);
    }
    if (!g->result)
        g->status = g->err.code == -ENOENT ? 404 : g->err.code == -EBUSY ? 409 : 400;
}

static void gold_done(service *svc, void *data)
{
    struct gold_job *g = data;
    for (struct gold_job **p = &svc->gold_jobs; *p; p = &(*p)->next)
        if (*p == g) {
            *p = g->next;
            break;
        }
    if (g->status != 200) {
        request_respond_json(g->r, g->status, json_pack("{s:s}", "error", g->err.message));
    } else {
        if (g->op == GOLD_SHOW) {
            /* A publish of this family still running shows how far it is. */
            for (struct gold_job *o = svc->gold_jobs; o; o = o->next)
                if (o->op == GOLD_PUBLISH && !strcmp(o->family, g->family))
                    json_object_set_new(g->result, "publishing",
                                        json_real(atomic_load(&o->permille) / 10.0));
        } else {
            svc_log("info", "gold=%s event=%s result=%s", g->family,
                    g->op == GOLD_PUBLISH ? "published" : "rolled-back", "ok");
            if (service_reload(svc, NULL, NULL) < 0)
                svc_log("error", "gold=%s event=reload-not-queued; run `vdipoolctl reload`",
                        g->family);
        }
        request_respond_json(g->r, 200, g->result);
    }
    free(g);
}

void golds_list(service *svc, request *r)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < vdi_config_gold_count(svc->config); i++) {
        const vdi_gold_config *g = vdi_config_gold(svc->config, i);
        json_t *o = json_pack("{s:s?,s:s?}", "name", g->name, "path", g->path);
        if (g->dir) {
            json_object_set_new(o, "dir", json_string(g->dir));
            json_object_set_new(o, "current_version", json_integer(g->version));
        }
        json_array_append_new(arr, o);
    }
    request_respond_json(r, 200, json_pack("{s:o}", "golds", arr));
}

void gold_request(service *svc, request *r, const char *name, const char *action)
{
    const vdi_gold_config *gc = vdi_config_find_gold(svc->config, name);
    if (!gc || !gc->dir) {
        request_respond_json(r, 404,
                             json_pack("{s:s}", "error",
                                       gc ? "this gold is one image ('path'): it has no versions"
                                          : "no such gold in the config"));
        return;
    }
    struct gold_job *g = calloc(1, sizeof *g);
    if (!g) {
        request_respond_json(r, 500, json_pack("{s:s}", "error", "out of memory"));
        return;
    }
    g->op = !action ? GOLD_SHOW : !strcmp(action, "publish") ? GOLD_PUBLISH : GOLD_ROLLBACK;
    g->r = r;
    g->catalog = svc->catalog;
    snprintf(g->family, sizeof g->family, "%s", name);
    snprintf(g->dir, sizeof g->dir, "%s", gc->dir);
    json_t *body = json_loads(request_body(r), 0, NULL);
    const char *note = json_string_value(json_object_get(body, "note"));
    snprintf(g->note, sizeof g->note, "%s", note ? note : "");
    json_int_t to = json_integer_value(json_object_get(body, "to"));
    g->to = to > 0 && to < 100000 ? (unsigned)to : 0;
    json_decref(body);
    if (g->op == GOLD_PUBLISH)
        for (struct gold_job *o = svc->gold_jobs; o; o = o->next)
            if (o->op == GOLD_PUBLISH && !strcmp(o->family, name)) {
                free(g);
                request_respond_json(r, 409, json_pack("{s:s}", "error",
                                                       "a publish of this gold is running"));
                return;
            }
    request_hold(r);
    g->next = svc->gold_jobs;
    svc->gold_jobs = g;
    if (work_submit(svc, gold_run, gold_done, g) < 0) {
        g->status = 503;
        vdi_error_set(&g->err, -EAGAIN, "cannot queue the work");
        gold_done(svc, g);
    }
}
