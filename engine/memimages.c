/* memimages.c — memory images (a booted template domain saved by libvirt)
 * in the catalog: each with the template child it was saved on (sealed like
 * a gold: every resumed desktop's child is a child of it), the gold and pool
 * it was made for, and its fingerprint. An image is read-only; a desktop
 * resumes from a rewritten copy, never from the image itself. */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define IMAGE_COLUMNS "path, template, gold, pool, size, mtime_ns, ctime_ns, hash, created_at"

static void image_from_row(sqlite3_stmt *st, void *row)
{
    vdi_memory_image *m = row;
    memset(m, 0, sizeof *m);
    snprintf(m->path, sizeof m->path, "%s", (const char *)sqlite3_column_text(st, 0));
    snprintf(m->template_child, sizeof m->template_child, "%s",
             (const char *)sqlite3_column_text(st, 1));
    snprintf(m->gold, sizeof m->gold, "%s", (const char *)sqlite3_column_text(st, 2));
    snprintf(m->pool, sizeof m->pool, "%s", (const char *)sqlite3_column_text(st, 3));
    m->size = (uint64_t)sqlite3_column_int64(st, 4);
    m->mtime_ns = sqlite3_column_int64(st, 5);
    m->ctime_ns = sqlite3_column_int64(st, 6);
    if (sqlite3_column_bytes(st, 7) == VDI_HASH_SIZE)
        memcpy(m->hash, sqlite3_column_blob(st, 7), VDI_HASH_SIZE);
    m->created_at = sqlite3_column_int64(st, 8);
}

static int64_t ns_of(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int vdi_memory_image_record(vdi_catalog *cat, const char *path, const char *template_child,
                            const char *gold, const char *pool, vdi_error *err)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return vdi_error_set(err, -errno, "cannot stat memory image %s: %s", path,
                             strerror(errno));
    uint8_t hash[VDI_HASH_SIZE];
    int rc = vdi_content_hash(path, hash, err);
    if (rc < 0)
        return rc;
    sqlite3_stmt *s;
    rc = vdi_catalog_prepare_(cat,
                              "INSERT OR REPLACE INTO memory_images(" IMAGE_COLUMNS
                              ") VALUES(?,?,?,?,?,?,?,?,?)",
                              &s, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(s, 1, path, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, template_child, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, gold, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, pool ? pool : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, (sqlite3_int64)st.st_size);
    sqlite3_bind_int64(s, 6, ns_of(st.st_mtim));
    sqlite3_bind_int64(s, 7, ns_of(st.st_ctim));
    sqlite3_bind_blob(s, 8, hash, VDI_HASH_SIZE, SQLITE_STATIC);
    sqlite3_bind_int64(s, 9, (sqlite3_int64)time(NULL));
    return vdi_catalog_write_(cat, s, NULL, err);
}

int vdi_memory_image_get(vdi_catalog *cat, const char *path, vdi_memory_image *out,
                         vdi_error *err)
{
    char real[PATH_MAX];
    int rc =
        vdi_catalog_row_by_path_(cat, "SELECT " IMAGE_COLUMNS " FROM memory_images WHERE path = ?",
                                 &path, real, image_from_row, out, "read memory images", err);
    if (rc == -ENOENT)
        vdi_error_set(err, rc, "%s is not a memory image the catalog knows", path);
    return rc;
}

int vdi_memory_image_check(vdi_catalog *cat, const char *path, bool full, vdi_error *err)
{
    vdi_memory_image m;
    int rc = vdi_memory_image_get(cat, path, &m, err);
    if (rc < 0)
        return rc;
    struct stat st;
    if (stat(path, &st) < 0)
        return vdi_error_set(err, -ESTALE, "memory image %s is gone: %s", path, strerror(errno));
    if ((uint64_t)st.st_size != m.size || ns_of(st.st_mtim) != m.mtime_ns ||
        ns_of(st.st_ctim) != m.ctime_ns)
        return vdi_error_set(err, -ESTALE,
                             "memory image %s changed since it was made (size %llu, was %llu; "
                             "its times changed)",
                             path, (unsigned long long)st.st_size, (unsigned long long)m.size);
    if (!full)
        return 0;
    uint8_t hash[VDI_HASH_SIZE];
    if ((rc = vdi_content_hash(path, hash, err)) < 0)
        return rc;
    if (memcmp(hash, m.hash, VDI_HASH_SIZE))
        return vdi_error_set(err, -ESTALE,
                             "memory image %s does not match its fingerprint (its content changed)",
                             path);
    return 0;
}

int vdi_memory_image_forget(vdi_catalog *cat, const char *path, vdi_error *err)
{
    return vdi_catalog_write_text_(cat, "DELETE FROM memory_images WHERE path = ?", path, err);
}

int vdi_memory_images_on(vdi_catalog *cat, const char *template_child, size_t *count,
                         vdi_error *err)
{
    sqlite3_stmt *s;
    *count = 0;
    int rc = vdi_catalog_prepare_(cat, "SELECT COUNT(*) FROM memory_images WHERE template = ?",
                                  &s, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(s, 1, template_child, -1, SQLITE_STATIC);
    if (sqlite3_step(s) == SQLITE_ROW)
        *count = (size_t)sqlite3_column_int64(s, 0);
    else
        rc = vdi_catalog_db_error_(cat, err, "count memory images");
    vdi_catalog_finish_(cat, s);
    return rc;
}

int vdi_memory_images_of_pool(vdi_catalog *cat, const char *pool, vdi_memory_image **out,
                              size_t *count, vdi_error *err)
{
    *out = NULL;
    *count = 0;
    sqlite3_stmt *s;
    int rc = vdi_catalog_prepare_(
        cat, "SELECT " IMAGE_COLUMNS " FROM memory_images WHERE pool = ? ORDER BY created_at", &s,
        err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(s, 1, pool, -1, SQLITE_STATIC);
    void *rows = NULL;
    rc = vdi_catalog_rows_(cat, s, sizeof **out, image_from_row, "read memory images", &rows, count,
                           err);
    *out = rows;
    return rc;
}
