/* cli_scan.c — `vdipoolctl image scan|tree|reconcile` and `vdipoolctl space`:
 * what is on disk, what depends on what, and how much room is left. */
#include "cli.h"
#include "vdi_config.h"
#include "vdi_engine.h"
#include "vdi_strmap.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_image_scan(cli_call *c)
{
    const cli_opts *o = &c->o;
    vdi_catalog *cat = c->catalog;
    int status = CLI_OK;
    vdi_scan_entry *v = NULL;
    size_t n = 0;
    vdi_error err = {0};
    if (vdi_scan_dir(cat, c->args[0], &v, &n, &err) < 0) {
        status = cli_fail(o->json, &err);
        return status;
    }
    size_t orphans = 0, unknown = 0, lonely = 0;
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        const vdi_scan_entry *e = &v[i];
        bool orphan = e->parent[0] && e->parent_status != VDI_PARENT_OK;
        orphans += orphan;
        unknown += e->parent[0] && !e->in_catalog;
        lonely += e->is_gold && e->children == 0;
        if (o->json) {
            json_array_append_new(
                arr, json_pack("{s:s,s:s,s:I,s:I,s:s?,s:s,s:b,s:b,s:b,s:i}", "path", e->path,
                               "format", vdi_format_name(e->format), "virtual_size",
                               (json_int_t)e->virtual_size, "allocated_bytes",
                               (json_int_t)e->allocated, "parent", e->parent[0] ? e->parent : NULL,
                               "parent_status", vdi_parent_status_name(e->parent_status),
                               "parent_sealed", e->parent_sealed, "in_catalog", e->in_catalog,
                               "gold", e->is_gold, "children", (int)e->children));
            continue;
        }
        if (!e->parent[0]) {
            printf("%s: %s root%s, %zu child%s in this scan%s\n", e->path,
                   vdi_format_name(e->format), e->is_gold ? " (sealed gold)" : "", e->children,
                   e->children == 1 ? "" : "ren",
                   e->is_gold && e->children == 0 ? " - a gold with no children" : "");
        } else {
            printf("%s: child of %s - parent %s%s%s\n", e->path, e->parent,
                   vdi_parent_status_name(e->parent_status),
                   e->parent_sealed ? " (sealed gold)" : "",
                   e->in_catalog ? "" : "; NOT in the catalog");
        }
    }
    if (o->json) {
        cli_print_json(json_pack("{s:o,s:i,s:i,s:i}", "images", arr, "orphans", (int)orphans,
                                 "unknown_children", (int)unknown, "golds_without_children",
                                 (int)lonely));
    } else {
        json_decref(arr);
        printf("%zu images: %zu orphaned, %zu children the catalog does not know, %zu golds "
               "with no children\n",
               n, orphans, unknown, lonely);
    }
    vdi_scan_free(v, n);
    return CLI_OK;
}

/* ---- tree ------------------------------------------------------------------ */

typedef struct node {
    char *path;
    char *parent; /* NULL: a root */
    uint64_t allocated, virtual_size;
    bool gold, exists;
    const char *state;
    size_t first_child, last_child, next_sibling; /* indexes, NONE at the end */
} node;

#define NONE SIZE_MAX

/* Every image once, found by path through a map (a tree of 10,000 children
 * was quadratic with a linear search). */
typedef struct forest {
    node *v;
    size_t n, cap;
    vdi_strmap *index; /* path -> index into v; keys are the nodes' own paths */
} forest;

static node *find_node(forest *f, const char *path)
{
    size_t i;
    return path && vdi_strmap_get(f->index, path, &i) ? &f->v[i] : NULL;
}

static void set_parent(node *x, const char *parent)
{
    free(x->parent);
    x->parent = parent && *parent ? strdup(parent) : NULL;
}

static node *add_node(forest *f, const char *path)
{
    node *x = find_node(f, path);
    if (x)
        return x;
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 32;
        node *nv = realloc(f->v, f->cap * sizeof *nv);
        if (!nv)
            abort();
        f->v = nv;
    }
    x = &f->v[f->n];
    memset(x, 0, sizeof *x);
    x->first_child = x->last_child = x->next_sibling = NONE;
    if (!(x->path = strdup(path)) || vdi_strmap_put(f->index, x->path, f->n) < 0)
        abort();
    f->n++;
    vdi_image *img = NULL;
    if (vdi_image_open(path, &img, NULL) == 0) {
        x->exists = true;
        x->allocated = vdi_image_allocated_bytes(img);
        x->virtual_size = vdi_image_virtual_size(img);
        const char *b = vdi_image_backing_name(img);
        char *bp = NULL;
        if (b && vdi_backing_real_path(path, b, &bp, NULL) == 0)
            set_parent(x, bp);
        free(bp);
        vdi_image_close(img);
    }
    return x;
}

static void free_forest(forest *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->v[i].path);
        free(f->v[i].parent);
    }
    free(f->v);
    vdi_strmap_free(f->index);
}

static json_t *print_subtree(forest *f, size_t idx, const char *prefix, bool last, bool root,
                             bool json)
{
    node *x = &f->v[idx];
    char a[32], b[32];
    uint64_t worst = x->virtual_size > x->allocated ? x->virtual_size - x->allocated : 0;
    if (!json) {
        if (root)
            printf("%s", x->path);
        else
            printf("%s%s %s", prefix, last ? "└──" : "├──", x->path);
        if (!x->exists)
            printf("  [missing]\n");
        else if (x->gold)
            printf("  [gold, %s] %s virtual, %s allocated\n", x->state,
                   vdi_format_size(x->virtual_size, a, sizeof a),
                   vdi_format_size(x->allocated, b, sizeof b));
        else
            printf("  %s allocated, %s worst case\n", vdi_format_size(x->allocated, a, sizeof a),
                   vdi_format_size(worst, b, sizeof b));
    }
    json_t *children = json_array();
    char sub[1024];
    snprintf(sub, sizeof sub, "%s%s", prefix, root ? "" : (last ? "    " : "│   "));
    for (size_t k = x->first_child; k != NONE; k = f->v[k].next_sibling)
        json_array_append_new(children,
                              print_subtree(f, k, sub, f->v[k].next_sibling == NONE, false, json));
    if (!json) {
        json_decref(children);
        return NULL;
    }
    return json_pack("{s:s,s:b,s:s?,s:I,s:I,s:I,s:o}", "path", x->path, "gold", x->gold, "state",
                     x->state, "allocated_bytes", (json_int_t)x->allocated, "virtual_size",
                     (json_int_t)x->virtual_size, "worst_case_bytes", (json_int_t)worst, "children",
                     children);
}

/* The catalog's children as (path, parent) pairs: the images are opened
 * after the catalog's lock is released. */
typedef struct child_pairs {
    char **v; /* path, parent, path, parent, ... */
    size_t n, cap;
} child_pairs;

static int collect_child(void *ctx, const vdi_child_info *c)
{
    child_pairs *l = ctx;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        char **nv = realloc(l->v, 2 * cap * sizeof *nv);
        if (!nv)
            return -ENOMEM;
        l->v = nv;
        l->cap = cap;
    }
    l->v[2 * l->n] = strdup(c->path);
    l->v[2 * l->n + 1] = strdup(c->parent);
    l->n++;
    return l->v[2 * l->n - 2] && l->v[2 * l->n - 1] ? 0 : -ENOMEM;
}

int cli_image_tree(cli_call *c)
{
    const cli_opts *o = &c->o;
    vdi_catalog *cat = c->catalog;
    int status = CLI_OK;
    vdi_error err = {0};
    forest f = {.index = vdi_strmap_new()};
    vdi_gold_info *golds = NULL;
    size_t ng = 0;
    child_pairs kids = {0};
    if (!f.index)
        abort();
    if (vdi_catalog_golds(cat, &golds, &ng, &err) < 0 ||
        vdi_catalog_each_child(cat, collect_child, &kids, &err) < 0) {
        status = cli_fail(o->json, &err);
        goto cleanup;
    }
    for (size_t i = 0; i < ng; i++) {
        node *x = add_node(&f, golds[i].path);
        x->gold = true;
        x->state = vdi_gold_state_name(golds[i].state);
    }
    for (size_t i = 0; i < kids.n; i++) {
        node *x = add_node(&f, kids.v[2 * i]);
        if (!x->exists)
            set_parent(x, kids.v[2 * i + 1]);
    }
    if (c->nargs > 0) {
        vdi_scan_entry *v = NULL;
        size_t n = 0;
        if (vdi_scan_dir(cat, c->args[0], &v, &n, &err) < 0) {
            status = cli_fail(o->json, &err);
            goto cleanup;
        }
        for (size_t i = 0; i < n; i++)
            add_node(&f, v[i].path);
        vdi_scan_free(v, n);
    }
    /* Parents outside what we know yet still head their subtree. */
    for (size_t i = 0; i < f.n; i++)
        if (f.v[i].parent && !find_node(&f, f.v[i].parent)) {
            char *parent = strdup(f.v[i].parent); /* add_node may move f.v */
            if (!parent)
                abort();
            add_node(&f, parent);
            free(parent);
        }
    /* Each node's children, in the order they were found. */
    for (size_t i = 0; i < f.n; i++) {
        node *up = find_node(&f, f.v[i].parent);
        if (!up || up == &f.v[i])
            continue;
        if (up->last_child == NONE)
            up->first_child = i;
        else
            f.v[up->last_child].next_sibling = i;
        up->last_child = i;
    }
    json_t *roots = json_array();
    for (size_t i = 0; i < f.n; i++) {
        node *up = find_node(&f, f.v[i].parent);
        if (!up || up == &f.v[i])
            json_array_append_new(roots, print_subtree(&f, i, "", true, true, o->json));
    }
    if (o->json)
        cli_print_json(json_pack("{s:o}", "roots", roots));
    else {
        json_decref(roots);
        if (f.n == 0)
            printf("no golds or children known (seal a gold, or give a DIR to scan)\n");
    }
cleanup:
    free_forest(&f);
    free(golds);
    for (size_t i = 0; i < 2 * kids.n; i++)
        free(kids.v[i]);
    free(kids.v);
    return status;
}

int cli_image_reconcile(cli_call *c)
{
    const cli_opts *o = &c->o;
    vdi_catalog *cat = c->catalog;
    int status = CLI_OK;
    vdi_reconcile_report r;
    vdi_error err = {0};
    if (vdi_reconcile(cat, c->args[0], &r, &err) < 0)
        status = cli_fail(o->json, &err);
    else if (o->json)
        cli_print_json(json_pack("{s:i,s:i,s:i,s:i}", "dropped_records", (int)r.dropped_records,
                                 "unknown_children", (int)r.unknown_children, "orphans",
                                 (int)r.orphans, "temporaries_removed",
                                 (int)r.temporaries_removed));
    else
        printf("%s: dropped %zu records of deleted children, removed %zu temporary files; "
               "%zu children the catalog does not know and %zu orphans are left for you "
               "(see `vdipoolctl image scan %s`)\n",
               c->args[0], r.dropped_records, r.temporaries_removed, r.unknown_children, r.orphans,
               c->args[0]);
    return status;
}

/* ---- space ----------------------------------------------------------------- */

/* Sessions a pool needs before its own history replaces expected_growth. */
#define GROWTH_MIN_SAMPLES 20

int cli_space(cli_call *c)
{
    const cli_opts *o = &c->o;
    const char *path = cli_config_path(o->value[0]);
    vdi_config *cfg = NULL;
    vdi_config_errors *errors = NULL;
    vdi_config_options copts = {0};
    if (vdi_config_load(path, &copts, &cfg, &errors) < 0) {
        const vdi_config_error *e = vdi_config_errors_get(errors, 0);
        vdi_error err;
        vdi_error_set(&err, -EINVAL, "%s:%d: %s (run `vdipoolctl config check`)", e->file, e->line,
                      e->message);
        vdi_config_errors_free(errors);
        return cli_fail(o->json, &err);
    }
    vdi_catalog *cat = NULL;
    int status = cli_open_catalog(o->json, &cat);
    if (status) {
        vdi_config_free(cfg);
        return status;
    }
    bool rescan = o->flag[0];
    json_t *stores = json_array();
    for (size_t i = 0; i < vdi_config_datastore_count(cfg); i++) {
        const vdi_datastore_config *d = vdi_config_datastore(cfg, i);
        if (d->kind == VDI_DATASTORE_LOCAL) {
            /* Its directory is on its host, measured there through libvirt. */
            if (o->json)
                json_array_append_new(stores,
                                      json_pack("{s:s,s:s,s:s,s:s}", "name", d->name, "path",
                                                d->path, "source", "host", "host", d->host));
            else
                printf("datastore %s (%s on host %s): host-local, measured by vdipoold through "
                       "libvirt (`vdipoolctl hosts`)\n",
                       d->name, d->path, d->host);
            continue;
        }
        vdi_space_report r;
        vdi_space_rescan_result found = {0};
        vdi_error err = {0};
        int rc = rescan ? vdi_space_rescan(cat, d->name, d->path, d->reserve_bytes,
                                           d->reserve_percent, &r, &found, &err)
                        : vdi_space_measure_known(cat, d->name, d->path, d->reserve_bytes,
                                                  d->reserve_percent, &r, &err);
        if (rc < 0) {
            status = cli_fail(o->json, &err);
            continue;
        }
        char a[32], b[32], rs[32], e1[32], e2[32];
        if (!o->json) {
            printf("datastore %s (%s): %s capacity, %s free, %s reserve; %zu children %s "
                   "%s and could grow by %s more (%.2fx capacity, limit %.2fx)\n",
                   d->name, d->path, vdi_format_size(r.capacity, a, sizeof a),
                   vdi_format_size(r.free, b, sizeof b), vdi_format_size(r.reserve, rs, sizeof rs),
                   r.children, rescan ? "found, allocating" : "recorded, allocating",
                   vdi_format_size(r.children_allocated, e1, sizeof e1),
                   vdi_format_size(r.worst_case, e2, sizeof e2), r.overcommit, d->max_overcommit);
            if (rescan)
                printf("  rescan: the catalog recorded %zu children holding %s; %zu records set "
                       "right, %zu files it does not know, %zu records whose file is gone%s\n",
                       found.recorded_children,
                       vdi_format_size(found.recorded_before, e1, sizeof e1), found.corrected,
                       found.unknown, found.missing,
                       found.unknown || found.missing ? " (see `vdipoolctl image reconcile`)" : "");
        }
        json_t *pools = json_array();
        for (size_t j = 0; j < vdi_config_pool_count(cfg); j++) {
            const vdi_pool_config *p = vdi_config_pool(cfg, j);
            if (strcmp(p->datastore, d->name))
                continue;
            uint64_t growth = p->expected_growth;
            size_t samples = 0;
            bool learned = vdi_catalog_growth_p95(cat, p->name, GROWTH_MIN_SAMPLES, &growth,
                                                  &samples, NULL) == 0;
            vdi_image *g = NULL;
            uint64_t worst = 0;
            if (vdi_image_open(p->gold, &g, NULL) == 0) {
                worst = vdi_image_virtual_size(g);
                vdi_image_close(g);
            }
            vdi_error why = {0};
            bool admit = vdi_space_admit(&r, d->name, growth, vdi_space_committed(&r, growth), worst,
                                         d->max_overcommit, &why) == 0;
            if (o->json) {
                json_array_append_new(
                    pools,
                    json_pack("{s:s,s:I,s:s,s:i,s:b,s:s?}", "pool", p->name, "expected_growth",
                              (json_int_t)growth, "growth_source",
                              learned ? "p95 of sessions" : "configured", "sessions", (int)samples,
                              "admits_another", admit, "refusal", admit ? NULL : why.message));
            } else {
                printf("  pool %s: a new desktop is expected to grow by %s (%s); %s\n", p->name,
                       vdi_format_size(growth, a, sizeof a),
                       learned ? "95th percentile of its sessions" : "configured expected_growth",
                       admit ? "another one would be admitted" : why.message);
            }
        }
        if (o->json)
            json_array_append_new(
                stores,
                json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:i,s:I,s:I,s:f,s:f,s:o,s:o*}", "name", d->name,
                          "path", d->path, "source", rescan ? "rescan" : "catalog", "capacity",
                          (json_int_t)r.capacity, "free", (json_int_t)r.free, "reserve",
                          (json_int_t)r.reserve, "children", (int)r.children, "children_allocated",
                          (json_int_t)r.children_allocated, "worst_case", (json_int_t)r.worst_case,
                          "overcommit", r.overcommit, "max_overcommit", d->max_overcommit, "pools",
                          pools, "rescan",
                          rescan
                              ? json_pack("{s:i,s:I,s:i,s:i,s:i}", "recorded_children",
                                          (int)found.recorded_children, "recorded_allocated",
                                          (json_int_t)found.recorded_before, "corrected",
                                          (int)found.corrected, "unknown_files", (int)found.unknown,
                                          "missing_files", (int)found.missing)
                              : NULL));
        else
            json_decref(pools);
    }
    if (o->json)
        cli_print_json(json_pack("{s:o}", "datastores", stores));
    else
        json_decref(stores);
    vdi_config_free(cfg);
    vdi_catalog_close(cat);
    return status;
}
