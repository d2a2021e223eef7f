/* space.c — datastores that never fill. A child can grow up to its virtual
 * size; the sum of that worst case is allowed to exceed capacity only by the
 * configured overcommit ratio, and each new child must fit its expected
 * growth into the free space above the reserve. */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

/* A child counts with what it holds and what it may still grow by. */
static void count_child(const char *path, const vdi_image *img, void *ctx)
{
    (void)path;
    vdi_space_report *out = ctx;
    if (!vdi_image_backing_name(img))
        return; /* a root (a gold kept here) does not grow */
    uint64_t alloc = vdi_image_allocated_bytes(img);
    uint64_t vs = vdi_image_virtual_size(img);
    out->children++;
    out->children_allocated += alloc;
    out->worst_case += vs > alloc ? vs - alloc : 0;
}

static int measure_fs(const char *dir, uint64_t reserve_bytes, double reserve_percent,
                      vdi_space_report *out, vdi_error *err)
{
    memset(out, 0, sizeof *out);
    struct statvfs vfs;
    if (statvfs(dir, &vfs) < 0)
        return vdi_error_set(err, -errno, "cannot measure datastore %s: %s", dir, strerror(errno));
    out->capacity = (uint64_t)vfs.f_blocks * vfs.f_frsize;
    out->free = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    out->reserve = reserve_percent > 0 ? (uint64_t)((double)out->capacity * reserve_percent / 100.0)
                                       : reserve_bytes;
    return 0;
}

int vdi_space_measure(const char *dir, uint64_t reserve_bytes, double reserve_percent,
                      vdi_space_report *out, vdi_error *err)
{
    int rc = measure_fs(dir, reserve_bytes, reserve_percent, out, err);
    if (rc < 0)
        return rc;
    if (vdi_for_each_image_(dir, count_child, out) < 0)
        return vdi_error_set(err, -errno, "cannot read datastore %s: %s", dir, strerror(errno));
    out->overcommit = out->capacity ? (double)out->worst_case / (double)out->capacity : 0;
    return 0;
}

/* ---- a rescan: the walk, and the catalog's records set right ----------------------- */

typedef struct found_child {
    char *path;
    uint64_t allocated, virtual_size;
} found_child;

typedef struct rescan_walk {
    vdi_space_report *report;
    found_child *found;
    size_t count, cap;
    bool out_of_memory;
} rescan_walk;

static void collect_child(const char *path, const vdi_image *img, void *ctx)
{
    rescan_walk *w = ctx;
    if (!vdi_image_backing_name(img))
        return;
    count_child(path, img, w->report);
    if (w->count == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 256;
        found_child *grown = realloc(w->found, cap * sizeof *grown);
        if (!grown) {
            w->out_of_memory = true;
            return;
        }
        w->found = grown;
        w->cap = cap;
    }
    found_child *f = &w->found[w->count];
    if (!(f->path = strdup(path))) {
        w->out_of_memory = true;
        return;
    }
    f->allocated = vdi_image_allocated_bytes(img);
    f->virtual_size = vdi_image_virtual_size(img);
    w->count++;
}

/* Each found child's record: set right when it says otherwise, taken into
 * this datastore when it was recorded without one; *matched counts the
 * records that are this datastore's. Inside the caller's transaction. */
static int correct_records(vdi_catalog *cat, const char *datastore, const rescan_walk *w,
                           size_t *matched, vdi_space_rescan_result *res, vdi_error *err)
{
    vdi_child_info *rec = malloc(sizeof *rec);
    if (!rec)
        return vdi_error_set(err, -ENOMEM, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < w->count && rc == 0; i++) {
        const found_child *f = &w->found[i];
        vdi_error lookup = {0};
        int found = vdi_catalog_child(cat, f->path, rec, &lookup);
        if (found == -ENOENT) {
            res->unknown++;
            continue;
        }
        if (found < 0) {
            *err = lookup;
            rc = found;
            break;
        }
        if (rec->datastore[0] && strcmp(rec->datastore, datastore))
            continue; /* another datastore's (the same directory named twice) */
        (*matched)++;
        if (!strcmp(rec->datastore, datastore) && rec->last_bytes == f->allocated &&
            rec->virtual_size == f->virtual_size)
            continue;
        rc = vdi_catalog_set_child_usage_(cat, rec->path, datastore, f->allocated, f->virtual_size,
                                          err);
        res->corrected += rc == 0;
    }
    free(rec);
    return rc;
}

int vdi_space_rescan(vdi_catalog *cat, const char *datastore, const char *dir,
                     uint64_t reserve_bytes, double reserve_percent, vdi_space_report *out,
                     vdi_space_rescan_result *res, vdi_error *err)
{
    memset(res, 0, sizeof *res);
    int rc = measure_fs(dir, reserve_bytes, reserve_percent, out, err);
    if (rc < 0)
        return rc;
    char real[PATH_MAX];
    if (!realpath(dir, real))
        return vdi_error_set(err, -errno, "cannot read datastore %s: %s", dir, strerror(errno));
    vdi_datastore_usage before;
    if ((rc = vdi_catalog_datastore_usage(cat, datastore, &before, err)) < 0)
        return rc;
    res->recorded_before = before.allocated;
    res->recorded_children = (size_t)before.children;
    rescan_walk w = {.report = out};
    if (vdi_for_each_image_(real, collect_child, &w) < 0)
        rc = vdi_error_set(err, -errno, "cannot read datastore %s: %s", dir, strerror(errno));
    else if (w.out_of_memory)
        rc = vdi_error_set(err, -ENOMEM, "out of memory while walking datastore %s", dir);
    out->overcommit = out->capacity ? (double)out->worst_case / (double)out->capacity : 0;
    /* One transaction: the daemon's admission reads the usage either as it
     * was or as the walk found it, never half of each. */
    size_t matched = 0;
    if (rc == 0 && (rc = vdi_catalog_begin_(cat, err)) == 0) {
        rc = correct_records(cat, datastore, &w, &matched, res, err);
        if (rc == 0)
            rc = vdi_catalog_commit_(cat, err);
        else
            vdi_catalog_rollback_(cat);
    }
    vdi_datastore_usage after;
    if (rc == 0 && (rc = vdi_catalog_datastore_usage(cat, datastore, &after, err)) == 0)
        res->missing = after.children > matched ? (size_t)after.children - matched : 0;
    for (size_t i = 0; i < w.count; i++)
        free(w.found[i].path);
    free(w.found);
    return rc;
}

static void add_usage(const vdi_datastore_usage *usage, vdi_space_report *out)
{
    out->children = (size_t)usage->children;
    out->children_allocated = usage->allocated;
    out->worst_case =
        usage->virtual_size > usage->allocated ? usage->virtual_size - usage->allocated : 0;
    out->overcommit = out->capacity ? (double)out->worst_case / (double)out->capacity : 0;
}

int vdi_space_measure_usage(const char *dir, uint64_t reserve_bytes, double reserve_percent,
                            const vdi_datastore_usage *usage, vdi_space_report *out, vdi_error *err)
{
    int rc = measure_fs(dir, reserve_bytes, reserve_percent, out, err);
    if (rc < 0)
        return rc;
    add_usage(usage, out);
    return 0;
}

void vdi_space_report_from(uint64_t capacity, uint64_t free_bytes, uint64_t reserve_bytes,
                           double reserve_percent, const vdi_datastore_usage *usage,
                           vdi_space_report *out)
{
    memset(out, 0, sizeof *out);
    out->capacity = capacity;
    out->free = free_bytes;
    out->reserve =
        reserve_percent > 0 ? (uint64_t)((double)capacity * reserve_percent / 100.0) : reserve_bytes;
    add_usage(usage, out);
}

int vdi_space_measure_known(vdi_catalog *cat, const char *datastore, const char *dir,
                            uint64_t reserve_bytes, double reserve_percent, vdi_space_report *out,
                            vdi_error *err)
{
    vdi_datastore_usage usage;
    int rc = vdi_catalog_datastore_usage(cat, datastore, &usage, err);
    if (rc < 0)
        return rc;
    return vdi_space_measure_usage(dir, reserve_bytes, reserve_percent, &usage, out, err);
}

uint64_t vdi_space_committed(const vdi_space_report *r, uint64_t expected_growth)
{
    uint64_t promised = (uint64_t)r->children * expected_growth;
    return promised > r->children_allocated ? promised - r->children_allocated : 0;
}

int vdi_space_admit(const vdi_space_report *r, const char *datastore, uint64_t expected_growth,
                    uint64_t committed_growth, uint64_t worst_case, double max_overcommit,
                    vdi_error *err)
{
    char a[32], b[32], c[32], d[32], e[32];
    uint64_t avail = r->free > r->reserve ? r->free - r->reserve : 0;
    uint64_t needed = expected_growth + committed_growth;
    if (needed > avail)
        return vdi_error_set(
            err, -ENOSPC,
            "datastore %s is full: a new desktop is expected to grow by %s and "
            "those already on it by %s more, but only %s is free above the %s "
            "reserve (short by %s)",
            datastore, vdi_format_size(expected_growth, a, sizeof a),
            vdi_format_size(committed_growth, e, sizeof e), vdi_format_size(avail, b, sizeof b),
            vdi_format_size(r->reserve, c, sizeof c), vdi_format_size(needed - avail, d, sizeof d));
    if (r->capacity) {
        double after = (double)(r->worst_case + worst_case) / (double)r->capacity;
        if (after > max_overcommit) {
            uint64_t limit = (uint64_t)(max_overcommit * (double)r->capacity);
            return vdi_error_set(err, -ENOSPC,
                                 "datastore %s would be overcommitted: its children could grow "
                                 "to %.2fx its capacity (%s of worst-case growth on %s), above "
                                 "max_overcommit %.2f (over by %s)",
                                 datastore, after,
                                 vdi_format_size(r->worst_case + worst_case, a, sizeof a),
                                 vdi_format_size(r->capacity, b, sizeof b), max_overcommit,
                                 vdi_format_size(r->worst_case + worst_case - limit, c, sizeof c));
        }
    }
    return 0;
}
