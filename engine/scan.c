/* scan.c — the orphaned-file locator and reconcile: what is on disk against
 * what the catalog knows. */
#include "internal.h"
#include "vdi_strmap.h"

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *vdi_parent_status_name(vdi_parent_status s)
{
    switch (s) {
    case VDI_PARENT_NONE: return "none";
    case VDI_PARENT_OK: return "ok";
    case VDI_PARENT_MISSING: return "missing";
    case VDI_PARENT_CHANGED: return "changed";
    case VDI_PARENT_UNUSABLE: return "unusable";
    }
    return "unknown";
}

/* nftw has no context pointer: the walk is single-threaded per call. */
static struct {
    vdi_scan_entry *v;
    size_t n, cap;
    int rc;
    struct stat state_dir; /* the catalog's own directory is not scanned */
    bool have_state_dir;
} walk;

static int visit(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)ftw;
    if (type == FTW_D && walk.have_state_dir && st->st_dev == walk.state_dir.st_dev &&
        st->st_ino == walk.state_dir.st_ino)
        return FTW_SKIP_SUBTREE;
    if (type != FTW_F || !S_ISREG(st->st_mode))
        return 0;
    const char *base = strrchr(path, '/');
    if (base && base[1] == '.')
        return 0; /* temporaries */
    vdi_image *img = NULL;
    if (vdi_image_open(path, &img, NULL) < 0)
        return 0;
    if (walk.n == walk.cap) {
        size_t cap = walk.cap ? walk.cap * 2 : 64;
        vdi_scan_entry *nv = realloc(walk.v, cap * sizeof *nv);
        if (!nv) {
            vdi_image_close(img);
            walk.rc = -ENOMEM;
            return FTW_STOP;
        }
        walk.v = nv;
        walk.cap = cap;
    }
    vdi_scan_entry *e = &walk.v[walk.n++];
    memset(e, 0, sizeof *e);
    char real[PATH_MAX];
    e->path = strdup(realpath(path, real) ? real : path);
    e->parent = strdup("");
    e->format = vdi_image_format(img);
    e->virtual_size = vdi_image_virtual_size(img);
    e->allocated = vdi_image_allocated_bytes(img);
    const char *b = vdi_image_backing_name(img);
    if (b) {
        char *bp = NULL;
        free(e->parent);
        e->parent = vdi_backing_real_path(path, b, &bp, NULL) == 0 ? bp : strdup(b);
        e->parent_status = VDI_PARENT_MISSING; /* settled after the walk */
    }
    vdi_image_close(img);
    if (!e->path || !e->parent) {
        walk.rc = -ENOMEM;
        return FTW_STOP;
    }
    return 0;
}

void vdi_scan_free(vdi_scan_entry *v, size_t count)
{
    for (size_t i = 0; v && i < count; i++) {
        free(v[i].path);
        free(v[i].parent);
    }
    free(v);
}

int vdi_scan_dir(vdi_catalog *cat, const char *dir, vdi_scan_entry **out, size_t *count,
                 vdi_error *err)
{
    *out = NULL;
    *count = 0;
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return vdi_error_set(err, -ENOTDIR, "%s is not a directory", dir);
    memset(&walk, 0, sizeof walk);
    walk.have_state_dir = stat(vdi_catalog_state_dir(cat), &walk.state_dir) == 0;
    if (nftw(dir, visit, 32, FTW_PHYS | FTW_ACTIONRETVAL) < 0 || walk.rc < 0) {
        vdi_scan_free(walk.v, walk.n);
        return vdi_error_set(err, walk.rc ? walk.rc : -errno, "cannot scan %s", dir);
    }
    /* Linear in the number of images: children are counted through a map
     * of paths, and each distinct parent is opened and checked once (a
     * datastore has thousands of children of a handful of golds). */
    vdi_strmap *by_path = vdi_strmap_new();
    vdi_strmap *parents = vdi_strmap_new();
    typedef struct parent_verdict {
        vdi_parent_status status;
        bool sealed;
    } parent_verdict;
    parent_verdict *verdicts = calloc(walk.n + 1, sizeof *verdicts);
    size_t nverdicts = 0;
    int rc = by_path && parents && verdicts ? 0 : -ENOMEM;
    for (size_t i = 0; i < walk.n && rc == 0; i++)
        rc = vdi_strmap_put(by_path, walk.v[i].path, i);
    for (size_t i = 0; i < walk.n && rc == 0; i++) {
        vdi_scan_entry *e = &walk.v[i];
        size_t k;
        if (e->parent[0] && vdi_strmap_get(by_path, e->parent, &k))
            walk.v[k].children++;
    }
    for (size_t i = 0; i < walk.n && rc == 0; i++) {
        vdi_scan_entry *e = &walk.v[i];
        vdi_gold_info g;
        vdi_child_info c;
        e->is_gold = vdi_catalog_gold(cat, e->path, &g, NULL) == 0;
        e->in_catalog = e->is_gold || vdi_catalog_child(cat, e->path, &c, NULL) == 0;
        if (!e->parent[0])
            continue;
        size_t k;
        if (!vdi_strmap_get(parents, e->parent, &k)) {
            parent_verdict *pv = &verdicts[k = nverdicts++];
            vdi_image *p = NULL;
            if (access(e->parent, F_OK) != 0)
                pv->status = VDI_PARENT_MISSING;
            else if (vdi_image_open(e->parent, &p, NULL) < 0)
                pv->status = VDI_PARENT_UNUSABLE;
            else
                pv->status = VDI_PARENT_OK;
            vdi_image_close(p);
            if (vdi_catalog_gold(cat, e->parent, &g, NULL) == 0) {
                pv->sealed = true;
                if (g.state == VDI_GOLD_TAINTED || vdi_guard_check(cat, e->parent, false, NULL) < 0)
                    pv->status = VDI_PARENT_CHANGED;
            }
            rc = vdi_strmap_put(parents, e->parent, k);
        }
        e->parent_status = verdicts[k].status;
        e->parent_sealed = verdicts[k].sealed;
    }
    vdi_strmap_free(by_path);
    vdi_strmap_free(parents);
    free(verdicts);
    if (rc < 0) {
        vdi_scan_free(walk.v, walk.n);
        return vdi_error_set(err, rc, "out of memory scanning %s", dir);
    }
    *out = walk.v;
    *count = walk.n;
    walk.v = NULL;
    return 0;
}

typedef struct path_list {
    const char *dir;
    size_t dlen;
    char **v;
    size_t n, cap;
} path_list;

static int collect_under(void *ctx, const vdi_child_info *c)
{
    path_list *l = ctx;
    if (strncmp(c->path, l->dir, l->dlen) || c->path[l->dlen] != '/')
        return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        char **nv = realloc(l->v, cap * sizeof *nv);
        if (!nv)
            return -ENOMEM;
        l->v = nv;
        l->cap = cap;
    }
    return (l->v[l->n] = strdup(c->path)) ? (l->n++, 0) : -ENOMEM;
}

int vdi_reconcile(vdi_catalog *cat, const char *dir, vdi_reconcile_report *out, vdi_error *err)
{
    memset(out, 0, sizeof *out);
    char real[PATH_MAX];
    if (!realpath(dir, real))
        return vdi_error_set(err, -errno, "%s: %s", dir, strerror(errno));
    int swept = vdi_clone_sweep_temporaries(real, NULL);
    if (swept > 0)
        out->temporaries_removed = (size_t)swept;
    /* The records under dir, as paths only (a record is 8 KiB), checked
     * against the disk after the catalog's lock is released. */
    path_list under = {.dir = real, .dlen = strlen(real)};
    int rc = vdi_catalog_each_child(cat, collect_under, &under, err);
    if (rc == -ENOMEM)
        vdi_error_set(err, rc, "out of memory listing the children under %s", real);
    for (size_t i = 0; i < under.n && rc == 0; i++)
        if (access(under.v[i], F_OK) != 0 && errno == ENOENT) {
            rc = vdi_catalog_remove_child_(cat, under.v[i], err);
            out->dropped_records++;
        }
    for (size_t i = 0; i < under.n; i++)
        free(under.v[i]);
    free(under.v);
    if (rc < 0)
        return rc;
    vdi_scan_entry *v = NULL;
    size_t m = 0;
    if ((rc = vdi_scan_dir(cat, real, &v, &m, err)) < 0)
        return rc;
    for (size_t i = 0; i < m; i++) {
        if (!v[i].parent[0])
            continue;
        if (!v[i].in_catalog)
            out->unknown_children++;
        if (v[i].parent_status == VDI_PARENT_MISSING || v[i].parent_status == VDI_PARENT_CHANGED ||
            v[i].parent_status == VDI_PARENT_UNUSABLE)
            out->orphans++;
    }
    vdi_scan_free(v, m);
    return 0;
}
