/* service.c — the service object: applying a config (at start and on
 * reload, by diff: hosts and pools added, resized, rolled out, drained). */
#include "api.h"
#include "daemon.h"
#include "glue.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void log_diff(const vdi_config *old, const vdi_config *config)
{
    vdi_config_diff *diff = NULL;
    if (vdi_config_diff_new(old, config, &diff) < 0)
        return;
    for (size_t i = 0; i < vdi_config_diff_count(diff); i++) {
        const vdi_config_change *c = vdi_config_diff_get(diff, i);
        svc_log("info", "event=config-change kind=%s name=%s%s%s%s%s%s%s",
                vdi_change_kind_name(c->kind), c->name, c->field ? " field=" : "",
                c->field ? c->field : "", c->old_value ? " old=" : "",
                c->old_value ? c->old_value : "", c->new_value ? " new=" : "",
                c->new_value ? c->new_value : "");
    }
    vdi_config_diff_free(diff);
}

/* Takes over the caller's reference on config. Hosts follow it first (a
 * pool's placement reads them); existing pools follow their new settings;
 * pools missing from it drain (keeping a reference on the config they were
 * made from until they are gone); new pools are added. */
int service_apply_config(service *svc, vdi_config *config)
{
    vdi_config *old = svc->config;
    if (old)
        log_diff(old, config);
    svc->config = config;
    int rc = hosts_apply_config(svc);
    for (size_t i = 0; i < svc->npools; i++) {
        pool *p = svc->pools[i];
        const vdi_pool_config *pc = vdi_config_find_pool(config, p->name);
        p->tend_all = true; /* limits, gold and size may have changed */
        if (pc) {
            if (pool_configure(p, config, pc) < 0)
                rc = -ENOMEM;
        } else if (!p->draining) {
            svc_log("info", "pool=%s event=draining", p->name);
            p->draining = true;
        }
    }
    for (size_t i = 0; i < vdi_config_pool_count(config); i++) {
        const vdi_pool_config *pc = vdi_config_pool(config, i);
        if (service_find_pool(svc, pc->name))
            continue;
        pool **v = realloc(svc->pools, (svc->npools + 1) * sizeof *v);
        if (v)
            svc->pools = v;
        pool *p = v ? pool_new(svc, config, pc) : NULL;
        if (!p) {
            svc_log("error", "pool=%s event=not-added reason=\"out of memory\"", pc->name);
            rc = -ENOMEM;
            continue;
        }
        svc->pools[svc->npools++] = p;
        pool_load_drain(p);
        pool_seed_recent(p);
        svc_log("info", "pool=%s event=added size=%u spares=%u gold=%s", p->name, pc->size,
                pc->spares, pc->gold);
    }
    vdi_config_unref(old);
    svc->ready_notified = false;
    return rc;
}

int service_load_config(const char *path, vdi_catalog *catalog, vdi_config **out,
                        json_t **errors_json)
{
    /* Without the catalog gold families cannot be resolved (only at start,
     * to learn where the state directory is). */
    vdi_config_options opts = {.check_image = glue_check_gold,
                               .resolve_version = catalog ? glue_resolve_version : NULL,
                               .resolve_ctx = catalog};
    vdi_config_errors *errors = NULL;
    int rc = vdi_config_load(path, &opts, out, &errors);
    if (rc < 0) {
        json_t *arr = json_array();
        for (size_t i = 0; i < vdi_config_errors_count(errors); i++) {
            const vdi_config_error *e = vdi_config_errors_get(errors, i);
            svc_log("error", "event=config-error file=%s line=%d message=\"%s\"", e->file, e->line,
                    e->message);
            json_array_append_new(arr, json_pack("{s:s,s:i,s:s}", "file", e->file, "line", e->line,
                                                 "message", e->message));
        }
        vdi_config_errors_free(errors);
        if (errors_json)
            *errors_json = arr;
        else
            json_decref(arr);
    }
    return rc;
}

/* A reload reads and checks the file on a worker (a large or slow config
 * never stalls the loop); the running config stays in force meanwhile. */
typedef struct reload_req {
    char *path;         /* a copy of the service's config_path */
    vdi_catalog *catalog; /* thread-safe: gold families are resolved through it */
    uint64_t seq;       /* reloads apply in the order they were asked */
    vdi_config *config; /* result, or NULL with errors */
    json_t *errors;
    reload_cb cb;
    void *ctx;
} reload_req;

static void reload_run(void *data)
{
    reload_req *r = data;
    if (service_load_config(r->path, r->catalog, &r->config, &r->errors) < 0)
        r->config = NULL;
}

static void reload_done(service *svc, void *data)
{
    reload_req *r = data;
    int rc = 0;
    if (!r->config) {
        svc_log("error", "event=reload-refused config=%s; the running config stays", r->path);
        rc = -EINVAL;
    } else if (r->seq < svc->reload_applied || svc->stopping) {
        /* A later reload was applied already: this older reading is dropped. */
        vdi_config_unref(r->config);
    } else {
        svc->reload_applied = r->seq;
        const vdi_service_config *a = vdi_config_service(svc->config);
        const vdi_service_config *b = vdi_config_service(r->config);
        if (strcmp(a->socket_path, b->socket_path) || strcmp(a->state_dir, b->state_dir))
            svc_log("warning", "event=reload-partial: socket and state_dir take effect at the "
                               "next start");
        log_set_level(b->log_level);
        api_server_set_max_connections(svc->api, b->max_connections);
        if (service_apply_config(svc, r->config) < 0)
            svc_log("error", "event=reload-incomplete: some pools could not be resized or added "
                             "(out of memory); they are retried at the next reload");
        svc_log("info", "event=reloaded config=%s pools=%zu", r->path,
                vdi_config_pool_count(svc->config));
        service_kick(svc);
    }
    if (r->cb)
        r->cb(r->ctx, rc, r->errors);
    else
        json_decref(r->errors);
    free(r->path);
    free(r);
}

int service_reload(service *svc, reload_cb cb, void *ctx)
{
    reload_req *r = calloc(1, sizeof *r);
    if (!r || !(r->path = strdup(svc->config_path))) {
        free(r);
        return -ENOMEM;
    }
    r->seq = ++svc->reload_asked;
    r->catalog = svc->catalog;
    r->cb = cb;
    r->ctx = ctx;
    int rc = work_submit(svc, reload_run, reload_done, r);
    if (rc < 0) {
        free(r->path);
        free(r);
    }
    return rc;
}

int service_init(service *svc, uv_loop_t *loop, const char *config_path, vdi_config *config,
                 vdi_catalog *catalog, const desktop_ops *ops)
{
    int rc = service_objects_init(svc, loop, service_step);
    if (rc < 0)
        return rc;
    svc->ops = ops;
    svc->catalog = catalog;
    svc->started_at = service_now(svc);
    if (!(svc->config_path = strdup(config_path)))
        return -ENOMEM;
    return service_apply_config(svc, config);
}

void service_shutdown(service *svc)
{
    /* No step after this: a kick still pending would run on freed pools. */
    svc->stopping = true;
    if (svc->kick_ready)
        uv_timer_stop(&svc->kick);
    svc->kick_pending = false;
    sessions_forget_waiters(svc);
    for (size_t i = 0; i < svc->npools; i++)
        pool_free(svc->pools[i]);
    free(svc->pools);
    svc->pools = NULL;
    svc->npools = 0;
    hosts_free(svc);
    vdi_config_unref(svc->config);
    svc->config = NULL;
    free(svc->config_path);
    free(svc->state_dir);
}
