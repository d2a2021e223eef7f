/* family.c — every child of a parent: those the catalog records, and images
 * in the parent's directory (and any further directories asked for) whose
 * backing file is the parent, which the catalog does not know. Sits below
 * guard, children and merge, which all ask it before touching a parent. */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct found_list {
    vdi_found_child *v;
    size_t n, cap;
} found_list;

static int add_found(found_list *l, const char *path, bool in_catalog)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->v[i].path, path)) {
            l->v[i].in_catalog |= in_catalog;
            return 0;
        }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        vdi_found_child *nv = realloc(l->v, cap * sizeof *nv);
        if (!nv)
            return -ENOMEM;
        l->v = nv;
        l->cap = cap;
    }
    snprintf(l->v[l->n].path, sizeof l->v[l->n].path, "%s", path);
    l->v[l->n].in_catalog = in_catalog;
    l->n++;
    return 0;
}

typedef struct child_search {
    uint64_t dev, ino;
    found_list *found;
} child_search;

/* An image whose backing file is the searched parent (same dev and inode). */
static void visit_candidate(const char *path, const vdi_image *img, void *ctx)
{
    child_search *cs = ctx;
    const char *b = vdi_image_backing_name(img);
    char *bp = NULL;
    struct stat pst;
    if (b && vdi_backing_path(path, b, &bp, NULL) == 0 && stat(bp, &pst) == 0 &&
        (uint64_t)pst.st_dev == cs->dev && (uint64_t)pst.st_ino == cs->ino) {
        char real[PATH_MAX];
        add_found(cs->found, realpath(path, real) ? real : path, false);
    }
    free(bp);
}

int vdi_find_children(vdi_catalog *cat, const char *parent, const char *const *dirs, size_t ndirs,
                      vdi_found_child **out, size_t *count, vdi_error *err)
{
    *out = NULL;
    *count = 0;
    char real[PATH_MAX];
    struct stat st;
    if (!realpath(parent, real) || stat(real, &st) < 0)
        return vdi_error_set(err, -errno, "cannot resolve %s: %s", parent, strerror(errno));
    found_list l = {0};
    vdi_child_info *known = NULL;
    size_t nknown = 0;
    int rc = vdi_catalog_children(cat, real, &known, &nknown, err);
    if (rc < 0)
        return rc;
    /* A record whose file is gone is no child any more (reconcile drops it). */
    for (size_t i = 0; i < nknown && rc == 0; i++)
        if (access(known[i].path, F_OK) == 0)
            rc = add_found(&l, known[i].path, true);
    free(known);
    char pdir[PATH_MAX];
    snprintf(pdir, sizeof pdir, "%s", real);
    *strrchr(pdir, '/') = '\0';
    child_search cs = {(uint64_t)st.st_dev, (uint64_t)st.st_ino, &l};
    vdi_for_each_image_(*pdir ? pdir : "/", visit_candidate, &cs);
    for (size_t i = 0; i < ndirs; i++)
        vdi_for_each_image_(dirs[i], visit_candidate, &cs);
    if (rc < 0) {
        free(l.v);
        return vdi_error_set(err, rc, "out of memory");
    }
    *out = l.v;
    *count = l.n;
    return 0;
}
