/* service.c — the service object: its pools, applying a config (at start
 * and on reload, by diff), the gold locks a pool holds, and what happens
 * when libvirt connects or goes away. */
#include "service.h"
#include "glue.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void set_str(char **dst, const char *src)
{
    if (*dst == src)
        return;
    char *copy = src ? strdup(src) : NULL;
    if (src && !copy)
        svc_log("error", "event=out-of-memory copying \"%.64s\"", src);
    free(*dst);
    *dst = copy;
}

pool *service_find_pool(service *svc, const char *name)
{
    for (size_t i = 0; i < svc->npools; i++)
        if (!strcmp(svc->pools[i]->name, name))
            return svc->pools[i];
    return NULL;
}

desktop *service_find_desktop(service *svc, const char *name)
{
    for (size_t i = 0; i < svc->npools; i++)
        for (unsigned j = 0; j < svc->pools[i]->nslots; j++) {
            desktop *d = svc->pools[i]->desktops[j];
            if (d->name && !strcmp(d->name, name))
                return d;
        }
    return NULL;
}

const vdi_datastore_config *pool_datastore(const pool *p)
{
    return vdi_config_find_datastore(p->config, p->cfg->datastore);
}

/* ---- gold locks ----------------------------------------------------------------- */

/* Marks a gold's state in the catalog (a short write on the loop). */
static void set_gold_state(pool *p, const char *gold, vdi_gold_state state)
{
    char real[PATH_MAX];
    vdi_error err = {0};
    if (!realpath(gold, real) ||
        vdi_catalog_set_gold_state(p->svc->catalog, real, state, NULL, &err) < 0)
        svc_log("warning", "pool=%s event=gold-state-not-recorded gold=%s state=%s reason=\"%s\"",
                p->name, gold, vdi_gold_state_name(state),
                err.message[0] ? err.message : "cannot resolve the path");
}

/* Is gold the current gold of another pool (which must keep cloning from it)? */
static bool gold_current_elsewhere(const pool *self, const char *gold)
{
    const service *svc = self->svc;
    for (size_t i = 0; i < svc->npools; i++) {
        const pool *q = svc->pools[i];
        if (q != self && !q->draining && q->cfg && !strcmp(q->cfg->gold, gold))
            return true;
    }
    return false;
}

void pool_release_gold_locks(pool *p, bool current_too)
{
    if (p->retiring_lock >= 0) {
        bool in_use = false;
        for (unsigned i = 0; i < p->nslots; i++)
            in_use |= p->desktops[i]->state != DESKTOP_EMPTY && p->desktops[i]->gold &&
                      !strcmp(p->desktops[i]->gold, p->retiring_gold);
        if (!in_use) {
            vdi_guard_unlock(p->retiring_lock);
            p->retiring_lock = -1;
            svc_log("info", "pool=%s event=gold-released gold=%s", p->name, p->retiring_gold);
            vdi_child_info *kids = NULL;
            size_t n = 0;
            if (!gold_current_elsewhere(p, p->retiring_gold) &&
                vdi_catalog_children(p->svc->catalog, p->retiring_gold, &kids, &n, NULL) == 0 &&
                n == 0)
                set_gold_state(p, p->retiring_gold, VDI_GOLD_RETIRED);
            free(kids);
            set_str(&p->retiring_gold, NULL);
        }
    }
    if (current_too && p->gold_lock >= 0) {
        vdi_guard_unlock(p->gold_lock);
        p->gold_lock = -1;
    }
}

/* A gold a pool takes (back) as current is sealed again, unless tainted. */
static void reinstate_gold(pool *p, const char *gold)
{
    vdi_gold_info g;
    if (vdi_catalog_gold(p->svc->catalog, gold, &g, NULL) == 0 &&
        (g.state == VDI_GOLD_RETIRING || g.state == VDI_GOLD_RETIRED)) {
        set_gold_state(p, gold, VDI_GOLD_SEALED);
        svc_log("info", "pool=%s event=gold-reinstated gold=%s was=%s", p->name, gold,
                vdi_gold_state_name(g.state));
    }
}

/* Holds QEMU's write lock on the pool's current gold. On a roll-out the
 * previous gold stays locked (retiring) until its last desktop is gone;
 * rolling back to the gold being left takes its lock back. */
static void lock_gold(pool *p)
{
    if (p->gold_lock >= 0 && p->locked_gold && !strcmp(p->locked_gold, p->cfg->gold))
        return;
    int lock = -1;
    if (p->retiring_lock >= 0 && p->retiring_gold && !strcmp(p->retiring_gold, p->cfg->gold)) {
        lock = p->retiring_lock;
        p->retiring_lock = -1;
        set_str(&p->retiring_gold, NULL);
    }
    if (p->gold_lock >= 0) {
        if (p->retiring_lock >= 0)
            vdi_guard_unlock(p->retiring_lock);
        p->retiring_lock = p->gold_lock;
        set_str(&p->retiring_gold, p->locked_gold);
        p->gold_lock = -1;
        if (!gold_current_elsewhere(p, p->retiring_gold))
            set_gold_state(p, p->retiring_gold, VDI_GOLD_RETIRING);
        svc_log("info", "pool=%s event=rollout from=%s to=%s", p->name, p->retiring_gold,
                p->cfg->gold);
    }
    vdi_error err = { 0 };
    if (lock < 0 && vdi_guard_lock(p->cfg->gold, &lock, &err) < 0) {
        lock = -1;
        svc_log("warning", "pool=%s event=gold-not-locked reason=\"%s\"", p->name, err.message);
    }
    p->gold_lock = lock;
    set_str(&p->locked_gold, p->cfg->gold);
    reinstate_gold(p, p->cfg->gold);
}

/* ---- pools ------------------------------------------------------------------------ */

static int grow_slots(pool *p, unsigned size)
{
    if (size <= p->nslots)
        return 0;
    desktop **v = realloc(p->desktops, size * sizeof *v);
    if (!v)
        return -ENOMEM;
    p->desktops = v; /* only the pointer array moves; desktops stay put */
    for (unsigned i = p->nslots; i < size; i++) {
        desktop *d = calloc(1, sizeof *d);
        if (!d)
            return -ENOMEM;
        d->pool = p;
        d->slot = i + 1;
        d->state = DESKTOP_EMPTY;
        desktop_name_slot(d);
        v[i] = d;
        p->nslots = i + 1;
    }
    return 0;
}

static void desktop_free(desktop *d)
{
    free(d->name);
    free(d->child);
    free(d->gold);
    free(d->user);
    free(d->failure);
    free(d->display);
    free(d);
}

void pool_free(pool *p)
{
    if (!p)
        return;
    pool_release_gold_locks(p, true);
    if (p->retiring_lock >= 0)
        vdi_guard_unlock(p->retiring_lock);
    for (unsigned i = 0; i < p->nslots; i++)
        desktop_free(p->desktops[i]);
    free(p->desktops);
    free(p->name);
    free(p->blocked);
    free(p->locked_gold);
    free(p->retiring_gold);
    vdi_config_unref(p->config);
    free(p);
}

/* Points the pool at its settings in `config` (taking a reference). */
static int pool_configure(pool *p, vdi_config *config, const vdi_pool_config *pc)
{
    vdi_config *old = p->config;
    p->config = vdi_config_ref(config);
    p->cfg = pc;
    vdi_config_unref(old);
    p->draining = false;
    set_str(&p->blocked, NULL);
    int rc = grow_slots(p, pc->size);
    if (rc < 0)
        svc_log("error", "pool=%s event=resize-failed size=%u have=%u reason=\"out of memory\"",
                p->name, pc->size, p->nslots);
    lock_gold(p);
    return rc;
}

static pool *pool_new(service *svc, vdi_config *config, const vdi_pool_config *pc)
{
    pool *p = calloc(1, sizeof *p);
    if (!p || !(p->name = strdup(pc->name))) {
        free(p);
        return NULL;
    }
    p->svc = svc;
    p->gold_lock = p->retiring_lock = -1;
    if (pool_configure(p, config, pc) < 0) {
        pool_free(p);
        return NULL;
    }
    return p;
}

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

/* Takes over the caller's reference on config. Existing pools follow their
 * new settings; pools missing from it drain (keeping a reference on the
 * config they were made from until they are gone); new pools are added. */
int service_apply_config(service *svc, vdi_config *config)
{
    vdi_config *old = svc->config;
    if (old)
        log_diff(old, config);
    svc->config = config;
    int rc = 0;
    for (size_t i = 0; i < svc->npools; i++) {
        pool *p = svc->pools[i];
        const vdi_pool_config *pc = vdi_config_find_pool(config, p->name);
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
        svc_log("info", "pool=%s event=added size=%u spares=%u gold=%s", p->name, pc->size,
                pc->spares, pc->gold);
    }
    vdi_config_unref(old);
    svc->ready_notified = false;
    return rc;
}

int service_load_config(const char *path, vdi_config **out, json_t **errors_json)
{
    vdi_config_options opts = {.check_image = glue_check_gold};
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

int service_reload(service *svc, json_t **errors)
{
    vdi_config *cfg = NULL;
    if (service_load_config(svc->config_path, &cfg, errors) < 0) {
        svc_log("error", "event=reload-refused config=%s; the running config stays",
                svc->config_path);
        return -EINVAL;
    }
    const vdi_service_config *a = vdi_config_service(svc->config), *b = vdi_config_service(cfg);
    if (strcmp(a->socket_path, b->socket_path) || strcmp(a->state_dir, b->state_dir) ||
        strcmp(a->libvirt_uri, b->libvirt_uri))
        svc_log("warning", "event=reload-partial: socket, state_dir and libvirt_uri take effect "
                           "at the next start");
    log_set_level(b->log_level);
    if (service_apply_config(svc, cfg) < 0)
        svc_log("error", "event=reload-incomplete: some pools could not be resized or added "
                         "(out of memory); they are retried at the next reload");
    svc_log("info", "event=reloaded config=%s pools=%zu", svc->config_path,
            vdi_config_pool_count(svc->config));
    service_converge(svc);
    return 0;
}

int service_init(service *svc, uv_loop_t *loop, const char *config_path, vdi_config *config,
                 vdi_catalog *catalog, const desktop_ops *ops)
{
    svc->loop = loop;
    svc->ops = ops;
    svc->catalog = catalog;
    if (!(svc->config_path = strdup(config_path)))
        return -ENOMEM;
    return service_apply_config(svc, config);
}

void service_shutdown(service *svc)
{
    for (size_t i = 0; i < svc->npools; i++)
        pool_free(svc->pools[i]);
    free(svc->pools);
    svc->pools = NULL;
    svc->npools = 0;
    if (svc->conn)
        virConnectClose(svc->conn);
    svc->conn = NULL;
    vdi_config_unref(svc->config);
    svc->config = NULL;
    free(svc->config_path);
    free(svc->state_dir);
}

/* ---- libvirt ------------------------------------------------------------------------- */

/* The bridge hands over a reference on the new connection. */
void service_on_connected(service *svc, virConnectPtr conn)
{
    if (svc->conn)
        virConnectClose(svc->conn);
    svc->conn = conn;
    svc->online = true;
    adopt_start(svc);
}

/* Running desktops are left alone; jobs in flight keep their own reference
 * and fail on their own. */
void service_on_disconnected(service *svc)
{
    if (svc->conn)
        virConnectClose(svc->conn);
    svc->conn = NULL;
    svc->online = false;
}
