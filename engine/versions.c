/* versions.c — gold families: sealed, standalone versions of a gold in one
 * directory (v0001.qcow2, ...), one of them current, with an audit trail.
 *
 * Making a version never writes an existing image: the source (an imported
 * disk, or a maintenance child over the current version) is read by
 * `qemu-img convert` into a hidden temporary beside the versions, which is
 * flushed, renamed to its version name, sealed and only then recorded. The
 * intent journal names the final path and the temporary, so a crash at any
 * step is finished (the version is recorded) or undone (the files go, the
 * current version stays) when the catalog is next opened. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define VERSION_COLUMNS "family, version, path, created_at, note, created_by, current"

static void version_from_row(sqlite3_stmt *st, void *row)
{
    vdi_gold_version *v = row;
    memset(v, 0, sizeof *v);
    snprintf(v->family, sizeof v->family, "%s", (const char *)sqlite3_column_text(st, 0));
    v->version = (unsigned)sqlite3_column_int64(st, 1);
    snprintf(v->path, sizeof v->path, "%s", (const char *)sqlite3_column_text(st, 2));
    v->created_at = sqlite3_column_int64(st, 3);
    snprintf(v->note, sizeof v->note, "%s", (const char *)sqlite3_column_text(st, 4));
    snprintf(v->created_by, sizeof v->created_by, "%s", (const char *)sqlite3_column_text(st, 5));
    v->current = sqlite3_column_int(st, 6) != 0;
}

/* What the catalog and the file say beyond the version's own row. */
static void version_details(vdi_catalog *cat, vdi_gold_version *v)
{
    struct stat st;
    if (stat(v->path, &st) == 0)
        v->allocated = (uint64_t)st.st_blocks * 512;
    vdi_gold_info g;
    if (vdi_catalog_gold(cat, v->path, &g, NULL) == 0) {
        v->state = g.state;
        v->virtual_size = g.virtual_size;
        memcpy(v->hash, g.fp.hash, sizeof v->hash);
    } else {
        v->state = VDI_GOLD_TAINTED; /* no longer sealed: never used */
    }
    if (vdi_catalog_count_children(cat, v->path, &v->children, NULL) < 0)
        v->children = 0;
}

int vdi_versions_list(vdi_catalog *cat, const char *family, vdi_gold_version **out,
                      size_t *count, vdi_error *err)
{
    *out = NULL;
    *count = 0;
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(
        cat, "SELECT " VERSION_COLUMNS " FROM gold_versions WHERE family = ? ORDER BY version",
        &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, family, -1, SQLITE_STATIC);
    void *rows = NULL;
    size_t n = 0;
    rc = vdi_catalog_rows_(cat, st, sizeof(vdi_gold_version), version_from_row,
                           "read gold versions", &rows, &n, err);
    if (rc < 0)
        return rc;
    vdi_gold_version *v = rows;
    for (size_t i = 0; i < n; i++)
        version_details(cat, &v[i]); /* outside the statement: these ask the catalog */
    *out = v;
    *count = n;
    return 0;
}

int vdi_version_find(vdi_catalog *cat, const char *family, unsigned version,
                     vdi_gold_version *out, vdi_error *err)
{
    vdi_gold_version *all = NULL;
    size_t n = 0;
    int rc = vdi_versions_list(cat, family, &all, &n, err);
    if (rc < 0)
        return rc;
    rc = -ENOENT;
    for (size_t i = 0; i < n && rc < 0; i++)
        if (version ? all[i].version == version : all[i].current) {
            *out = all[i];
            rc = 0;
        }
    if (rc < 0 && n == 0)
        vdi_error_set(err, -ENOENT,
                      "gold '%s' has no version yet: make one with `vdipoolctl gold import %s "
                      "FILE`",
                      family, family);
    else if (rc < 0 && version)
        vdi_error_set(err, -ENOENT, "gold '%s' has no version %u (it has 1 to %u)", family,
                      version, all[n - 1].version);
    else if (rc < 0)
        vdi_error_set(err, -ENOENT, "gold '%s' has no current version", family);
    free(all);
    return rc;
}

static int audit(vdi_catalog *cat, const char *family, const char *who, const char *action,
                 unsigned version, const char *note, vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(cat,
                                  "INSERT INTO gold_audit (family, at, who, action, version, "
                                  "note) VALUES (?, ?, ?, ?, ?, ?)",
                                  &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, family, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (int64_t)time(NULL));
    sqlite3_bind_text(st, 3, who ? who : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, action, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, version);
    sqlite3_bind_text(st, 6, note ? note : "", -1, SQLITE_STATIC);
    return vdi_catalog_write_(cat, st, NULL, err);
}

static int set_current(vdi_catalog *cat, const char *family, unsigned version, vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(
        cat, "UPDATE gold_versions SET current = (version = ?) WHERE family = ?", &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, version);
    sqlite3_bind_text(st, 2, family, -1, SQLITE_STATIC);
    return vdi_catalog_write_(cat, st, NULL, err);
}

/* ---- making a version ------------------------------------------------------- */

static bool family_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 48)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(s[i] >= 'a' && s[i] <= 'z') && !(s[i] >= 'A' && s[i] <= 'Z') &&
            !(s[i] >= '0' && s[i] <= '9') && s[i] != '-' && s[i] != '_' && s[i] != '.')
            return false;
    return true;
}

/* qemu-img's name of the source's format, after refusing what cannot be a
 * gold; *allocated gets what the data can take at most in the new file. */
static int source_format(const char *source, const char **format, uint64_t *allocated,
                         vdi_error *err)
{
    int kind = vdi_image_vhd_kind(source, err);
    if (kind < 0)
        return kind;
    if (kind > 0) {
        struct stat st;
        if (stat(source, &st) < 0)
            return vdi_error_set(err, -errno, "%s: %s", source, strerror(errno));
        *format = kind == 1 ? "vpc" : "vhdx";
        *allocated = (uint64_t)st.st_blocks * 512;
        return 0;
    }
    vdi_chain *chain = NULL;
    int rc = vdi_chain_resolve(source, 0, &chain, err);
    if (rc < 0)
        return rc;
    *format = vdi_image_format(vdi_chain_link(chain, 0)) == VDI_FORMAT_RAW ? "raw" : "qcow2";
    *allocated = vdi_chain_allocated_bytes(chain);
    vdi_chain_free(chain);
    return 0;
}

static int check_space(const vdi_version_request *req, uint64_t needed, const char *final,
                       vdi_error *err)
{
    struct statvfs vfs;
    if (statvfs(req->dir, &vfs) < 0)
        return vdi_error_set(err, -errno, "cannot measure %s: %s", req->dir, strerror(errno));
    uint64_t free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    if (free_bytes >= needed + req->reserve_bytes)
        return 0;
    char a[32], b[32], c[32];
    return vdi_error_set(err, -ENOSPC,
                         "%s would need up to %s (what %s holds), but %s has %s free and keeps "
                         "%s in reserve; free space there or give the family another dir",
                         final, vdi_format_size(needed, a, sizeof a), req->source, req->dir,
                         vdi_format_size(free_bytes, b, sizeof b),
                         vdi_format_size(req->reserve_bytes, c, sizeof c));
}

static int flush_file(const char *path, vdi_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return vdi_error_set(err, -e, "cannot flush %s: %s", path, strerror(e));
    }
    close(fd);
    return 0;
}

static int record_version(vdi_catalog *cat, const vdi_version_request *req, unsigned version,
                          const char *path, vdi_error *err)
{
    int rc = vdi_catalog_begin_(cat, err);
    if (rc < 0)
        return rc;
    sqlite3_stmt *st;
    rc = vdi_catalog_prepare_(cat,
                              "INSERT INTO gold_versions (family, version, path, created_at, "
                              "note, created_by, current) VALUES (?, ?, ?, ?, ?, ?, 0)",
                              &st, err);
    if (rc == 0) {
        sqlite3_bind_text(st, 1, req->family, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, version);
        sqlite3_bind_text(st, 3, path, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, (int64_t)time(NULL));
        sqlite3_bind_text(st, 5, req->note ? req->note : "", -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, req->who ? req->who : "", -1, SQLITE_STATIC);
        rc = vdi_catalog_write_(cat, st, NULL, err);
    }
    if (rc == 0)
        rc = set_current(cat, req->family, version, err);
    if (rc == 0)
        rc = audit(cat, req->family, req->who, req->action ? req->action : "publish", version,
                   req->note, err);
    if (rc == 0)
        return vdi_catalog_commit_(cat, err);
    vdi_catalog_rollback_(cat);
    return rc;
}

int vdi_version_create(vdi_catalog *cat, const vdi_version_request *req,
                       vdi_progress_fn progress, void *ctx, vdi_gold_version *out,
                       vdi_error *err)
{
    if (!family_name_ok(req->family))
        return vdi_error_set(err, -EINVAL,
                             "'%s' is not a gold name: use 1-48 letters, digits, '-', '_' or '.'",
                             req->family);
    if (mkdir(req->dir, 0755) < 0 && errno != EEXIST)
        return vdi_error_set(err, -errno, "cannot make %s: %s", req->dir, strerror(errno));
    char dir[PATH_MAX];
    if (!realpath(req->dir, dir))
        return vdi_error_set(err, -errno, "%s: %s", req->dir, strerror(errno));
    const char *format = NULL;
    uint64_t needed = 0;
    int rc = source_format(req->source, &format, &needed, err);
    if (rc < 0)
        return rc;

    vdi_gold_version *all = NULL;
    size_t n = 0;
    if ((rc = vdi_versions_list(cat, req->family, &all, &n, err)) < 0)
        return rc;
    unsigned next = n ? all[n - 1].version + 1 : 1;
    free(all);
    char final[PATH_MAX + 32], temp[PATH_MAX + 64];
    snprintf(final, sizeof final, "%s/v%04u.qcow2", dir, next);
    snprintf(temp, sizeof temp, "%s/" VDI_TEMP_PREFIX "%ld-v%04u.qcow2", dir, (long)getpid(),
             next);
    if (access(final, F_OK) == 0)
        return vdi_error_set(err, -EEXIST,
                             "%s exists but the catalog does not know it as version %u; move it "
                             "away first",
                             final, next);
    if ((rc = check_space(req, needed, final, err)) < 0)
        return rc;

    int64_t intent = 0;
    if ((rc = vdi_intent_begin_(cat, "version-create", final, temp, &intent, err)) < 0)
        return rc;
    const char *argv[] = {"qemu-img", "convert", "-p", "-f", format, "-O", "qcow2",
                          req->source, temp, NULL};
    rc = vdi_qemu_img_(argv, progress, ctx, err);
    vdi_crashpoint("version:converted");
    if (rc == 0)
        rc = flush_file(temp, err);
    if (rc == 0)
        rc = vdi_place_noreplace_(temp, final, err);
    if (rc == 0 && vdi_sync_dir_of_(final) < 0)
        rc = vdi_error_set(err, -EIO, "cannot flush the directory of %s", final);
    vdi_crashpoint("version:placed");
    vdi_seal_result sealed;
    if (rc == 0)
        rc = vdi_seal(cat, final, &sealed, err);
    vdi_crashpoint("version:sealed");
    if (rc == 0)
        rc = record_version(cat, req, next, final, err);
    if (rc < 0) {
        /* Undo: nothing half-made stays under a version name. */
        unlink(temp);
        if (access(final, F_OK) == 0) {
            vdi_unseal(cat, final, false, NULL, 0, NULL, NULL); /* -ENOENT: not sealed yet */
            unlink(final);
        }
        vdi_intent_end_(cat, intent, NULL);
        return rc;
    }
    vdi_intent_end_(cat, intent, NULL);
    return out ? vdi_version_find(cat, req->family, next, out, err) : 0;
}

/* A crash left a version-create intent: a version recorded under `target`
 * is done; anything else is removed (the temporary, and the final file with
 * its seal), and the current version stays what it was. */
int vdi_recover_version_(vdi_catalog *cat, const char *target, const char *data, vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(cat, "SELECT version FROM gold_versions WHERE path = ?", &st,
                                  err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, target, -1, SQLITE_STATIC);
    bool recorded = sqlite3_step(st) == SQLITE_ROW;
    vdi_catalog_finish_(cat, st);
    unlink(data);
    if (recorded)
        return 1;
    if (access(target, F_OK) == 0) {
        vdi_unseal(cat, target, false, NULL, 0, NULL, NULL); /* not sealed yet: nothing to do */
        if (unlink(target) < 0 && errno != ENOENT)
            return vdi_error_set(err, -errno, "cannot remove the unrecorded version %s: %s",
                                 target, strerror(errno));
    }
    return 0;
}

/* ---- rollback and prune ----------------------------------------------------------- */

int vdi_version_make_current(vdi_catalog *cat, const char *family, unsigned version,
                             const char *who, const char *note, vdi_error *err)
{
    vdi_gold_version v;
    int rc = vdi_version_find(cat, family, version, &v, err);
    if (rc < 0)
        return rc;
    if (v.current)
        return 0;
    /* Its bytes must still be the ones sealed: a full hash, not a stat. */
    if ((rc = vdi_guard_check(cat, v.path, true, err)) < 0)
        return rc;
    if ((rc = vdi_catalog_begin_(cat, err)) < 0)
        return rc;
    rc = set_current(cat, family, version, err);
    if (rc == 0)
        rc = audit(cat, family, who, "rollback", version, note, err);
    if (rc == 0)
        return vdi_catalog_commit_(cat, err);
    vdi_catalog_rollback_(cat);
    return rc;
}

static int forget_version(vdi_catalog *cat, const char *family, unsigned version,
                          vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(
        cat, "DELETE FROM gold_versions WHERE family = ? AND version = ?", &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, family, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, version);
    return vdi_catalog_write_(cat, st, NULL, err);
}

int vdi_versions_prune(vdi_catalog *cat, const char *family, unsigned keep,
                       const char *const *pinned, size_t npinned, bool dry_run, const char *who,
                       vdi_gold_version **gone, size_t *ngone, vdi_gold_version **busy,
                       size_t *nbusy, vdi_error *err)
{
    *gone = *busy = NULL;
    *ngone = *nbusy = 0;
    vdi_gold_version *all = NULL;
    size_t n = 0;
    int rc = vdi_versions_list(cat, family, &all, &n, err);
    if (rc < 0)
        return rc;
    vdi_gold_version *out = calloc(n ? n : 1, sizeof *out);
    vdi_gold_version *kept = calloc(n ? n : 1, sizeof *kept);
    if (!out || !kept) {
        free(all);
        free(out);
        free(kept);
        return vdi_error_set(err, -ENOMEM, "out of memory");
    }
    size_t m = 0, k = 0;
    /* The newest `keep` stay; of the older ones, those in use stay too. */
    for (size_t i = 0; i + keep < n && rc == 0; i++) {
        vdi_gold_version *v = &all[i];
        bool is_pinned = false;
        for (size_t p = 0; p < npinned; p++)
            is_pinned |= pinned[p] && !strcmp(pinned[p], v->path);
        if (v->current || v->children || is_pinned) {
            kept[k++] = *v;
            continue;
        }
        if (!dry_run) {
            /* Unseal refuses a gold with children (it checks its directory too). */
            size_t orphaned = 0;
            rc = vdi_unseal(cat, v->path, false, NULL, 0, &orphaned, err);
            if (rc == -ENOENT)
                rc = 0; /* no longer sealed (tainted and dropped): still removable */
            if (rc == 0 && unlink(v->path) < 0 && errno != ENOENT)
                rc = vdi_error_set(err, -errno, "cannot remove %s: %s", v->path,
                                   strerror(errno));
            if (rc == 0)
                rc = forget_version(cat, family, v->version, err);
            if (rc == 0)
                rc = audit(cat, family, who, "prune", v->version, NULL, err);
        }
        if (rc == 0)
            out[m++] = *v;
    }
    free(all);
    *gone = out;
    *ngone = m;
    *busy = kept;
    *nbusy = k;
    return rc;
}

int vdi_versions_audit(vdi_catalog *cat, const char *family, vdi_gold_audit **out,
                       size_t *count, vdi_error *err)
{
    *out = NULL;
    *count = 0;
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(cat,
                                  "SELECT at, who, action, version, note FROM gold_audit WHERE "
                                  "family = ? ORDER BY id",
                                  &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, family, -1, SQLITE_STATIC);
    size_t n = 0, cap = 0;
    vdi_gold_audit *v = NULL;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            vdi_gold_audit *nv = realloc(v, cap * sizeof *v);
            if (!nv) {
                rc = vdi_error_set(err, -ENOMEM, "out of memory");
                break;
            }
            v = nv;
        }
        vdi_gold_audit *a = &v[n++];
        a->at = sqlite3_column_int64(st, 0);
        snprintf(a->who, sizeof a->who, "%s", (const char *)sqlite3_column_text(st, 1));
        snprintf(a->action, sizeof a->action, "%s", (const char *)sqlite3_column_text(st, 2));
        a->version = (unsigned)sqlite3_column_int64(st, 3);
        snprintf(a->note, sizeof a->note, "%s", (const char *)sqlite3_column_text(st, 4));
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = vdi_catalog_db_error_(cat, err, "read the gold audit trail");
    vdi_catalog_finish_(cat, st);
    if (rc < 0) {
        free(v);
        return rc;
    }
    *out = v;
    *count = n;
    return 0;
}
