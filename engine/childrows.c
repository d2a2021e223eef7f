/* childrows.c — the catalog's rows of children: recorded at a clone,
 * their size updated, their parent moved by a merge, removed at a delete,
 * and read back (one, all, by parent, or counted), and the per-datastore
 * usage that triggers keep beside them (the schema and triggers are in
 * catalog.c). The engine's clone and delete write these rows under their
 * intents (children.c). */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int vdi_catalog_add_child_(vdi_catalog *cat, const char *path, const char *parent,
                           const vdi_child_meta *meta, uint64_t bytes, uint64_t virtual_size,
                           vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(
        cat,
        "INSERT OR REPLACE INTO children(path, parent, datastore, pool, slot, "
        "created_at, last_bytes, virtual_size, host) VALUES(?,?,?,?,?,?,?,?,?)",
        &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, path, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, parent, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, meta && meta->datastore ? meta->datastore : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, meta && meta->pool ? meta->pool : "", -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 5, meta ? meta->slot : -1);
    sqlite3_bind_int64(st, 6, time(NULL));
    sqlite3_bind_int64(st, 7, (sqlite3_int64)bytes);
    sqlite3_bind_int64(st, 8, (sqlite3_int64)virtual_size);
    sqlite3_bind_text(st, 9, meta && meta->host ? meta->host : "", -1, SQLITE_STATIC);
    return vdi_catalog_write_(cat, st, NULL, err);
}

int vdi_catalog_set_child_bytes(vdi_catalog *cat, const char *path, uint64_t bytes, vdi_error *err)
{
    sqlite3_stmt *st;
    int rc =
        vdi_catalog_prepare_(cat, "UPDATE children SET last_bytes = ? WHERE path = ?", &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)bytes);
    sqlite3_bind_text(st, 2, path, -1, SQLITE_STATIC);
    return vdi_catalog_write_(cat, st, NULL, err);
}

int vdi_catalog_set_child_usage_(vdi_catalog *cat, const char *path, const char *datastore,
                                 uint64_t bytes, uint64_t virtual_size, vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(
        cat, "UPDATE children SET datastore = ?, last_bytes = ?, virtual_size = ? WHERE path = ?",
        &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, datastore, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)bytes);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)virtual_size);
    sqlite3_bind_text(st, 4, path, -1, SQLITE_STATIC);
    return vdi_catalog_write_(cat, st, NULL, err);
}

int vdi_catalog_datastore_usage(vdi_catalog *cat, const char *datastore, vdi_datastore_usage *out,
                                vdi_error *err)
{
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(
        cat, "SELECT children, allocated, virtual FROM datastore_usage WHERE datastore = ?", &st,
        err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, datastore, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        out->children = (uint64_t)sqlite3_column_int64(st, 0);
        out->allocated = (uint64_t)sqlite3_column_int64(st, 1);
        out->virtual_size = (uint64_t)sqlite3_column_int64(st, 2);
    } else if (step != SQLITE_DONE) {
        rc = vdi_catalog_db_error_(cat, err, "read datastore usage");
    }
    vdi_catalog_finish_(cat, st);
    return rc;
}

int vdi_catalog_remove_child_(vdi_catalog *cat, const char *path, vdi_error *err)
{
    return vdi_catalog_write_text_(cat, "DELETE FROM children WHERE path = ?", path, err);
}

int vdi_catalog_update_child_parent_(vdi_catalog *cat, const char *path, const char *parent,
                                     vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(cat, "UPDATE children SET parent = ? WHERE path = ?", &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, parent, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, path, -1, SQLITE_STATIC);
    return vdi_catalog_write_(cat, st, NULL, err);
}

static void child_from_row(sqlite3_stmt *st, void *row)
{
    vdi_child_info *c = row;
    memset(c, 0, sizeof *c);
    c->id = sqlite3_column_int64(st, 0);
    vdi_copy_text_(c->path, sizeof c->path, sqlite3_column_text(st, 1));
    vdi_copy_text_(c->parent, sizeof c->parent, sqlite3_column_text(st, 2));
    vdi_copy_text_(c->datastore, sizeof c->datastore, sqlite3_column_text(st, 3));
    vdi_copy_text_(c->pool, sizeof c->pool, sqlite3_column_text(st, 4));
    c->slot = sqlite3_column_int(st, 5);
    c->created_at = sqlite3_column_int64(st, 6);
    c->last_bytes = (uint64_t)sqlite3_column_int64(st, 7);
    vdi_copy_text_(c->host, sizeof c->host, sqlite3_column_text(st, 8));
    c->virtual_size = (uint64_t)sqlite3_column_int64(st, 9);
}

#define CHILD_COLUMNS                                                                              \
    "id, path, parent, datastore, pool, slot, created_at, last_bytes, host, virtual_size"

int vdi_catalog_child(vdi_catalog *cat, const char *path, vdi_child_info *out, vdi_error *err)
{
    char real[PATH_MAX];
    int rc = vdi_catalog_row_by_path_(cat, "SELECT " CHILD_COLUMNS " FROM children WHERE path = ?",
                                      &path, real, child_from_row, out, "read children", err);
    if (rc == -ENOENT)
        vdi_error_set(err, rc, "%s is not a child the catalog knows", path);
    return rc;
}

int vdi_catalog_each_child(vdi_catalog *cat, int (*fn)(void *ctx, const vdi_child_info *child),
                           void *ctx, vdi_error *err)
{
    sqlite3_stmt *st;
    int rc =
        vdi_catalog_prepare_(cat, "SELECT " CHILD_COLUMNS " FROM children ORDER BY path", &st, err);
    if (rc < 0)
        return rc;
    vdi_child_info *c = malloc(sizeof *c);
    int step = SQLITE_DONE;
    if (!c)
        rc = vdi_error_set(err, -ENOMEM, "out of memory");
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        child_from_row(st, c);
        rc = fn(ctx, c);
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = vdi_catalog_db_error_(cat, err, "read children");
    vdi_catalog_finish_(cat, st);
    free(c);
    return rc;
}

int vdi_catalog_count_children(vdi_catalog *cat, const char *parent, size_t *count, vdi_error *err)
{
    sqlite3_stmt *st;
    *count = 0;
    int rc = vdi_catalog_prepare_(cat, "SELECT COUNT(*) FROM children WHERE parent = ?", &st, err);
    if (rc < 0)
        return rc;
    char real[PATH_MAX];
    sqlite3_bind_text(st, 1, vdi_catalog_canonical_(parent, real), -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        *count = (size_t)sqlite3_column_int64(st, 0);
    else
        rc = vdi_catalog_db_error_(cat, err, "count children");
    vdi_catalog_finish_(cat, st);
    return rc;
}

int vdi_catalog_children(vdi_catalog *cat, const char *parent, vdi_child_info **out, size_t *count,
                         vdi_error *err)
{
    sqlite3_stmt *st;
    *out = NULL;
    *count = 0;
    int rc = vdi_catalog_prepare_(cat,
                                  parent ? "SELECT " CHILD_COLUMNS
                                           " FROM children WHERE parent = ? ORDER BY path"
                                         : "SELECT " CHILD_COLUMNS " FROM children ORDER BY path",
                                  &st, err);
    if (rc < 0)
        return rc;
    char real[PATH_MAX];
    if (parent)
        sqlite3_bind_text(st, 1, vdi_catalog_canonical_(parent, real), -1, SQLITE_STATIC);
    void *rows = NULL;
    rc = vdi_catalog_rows_(cat, st, sizeof **out, child_from_row, "read children", &rows, count,
                           err);
    *out = rows;
    return rc;
}
