/* sealedgolds.c — the catalog's records of sealed golds: a gold's
 * fingerprint (size, device, inode, times and content hash) and its state
 * (sealed, retiring, retired, tainted), written when it is sealed and by the
 * guard, read before every clone and start. Paths are canonical
 * (vdi_catalog_canonical_); the table is made with the rest of the schema
 * (catalog.c). */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

const char *vdi_gold_state_name(vdi_gold_state s)
{
    switch (s) {
    case VDI_GOLD_SEALED: return "sealed";
    case VDI_GOLD_RETIRING: return "retiring";
    case VDI_GOLD_RETIRED: return "retired";
    case VDI_GOLD_TAINTED: return "tainted";
    }
    return "unknown";
}

static vdi_gold_state gold_state_from(const char *s)
{
    if (!strcmp(s, "retiring"))
        return VDI_GOLD_RETIRING;
    if (!strcmp(s, "retired"))
        return VDI_GOLD_RETIRED;
    if (!strcmp(s, "tainted"))
        return VDI_GOLD_TAINTED;
    return VDI_GOLD_SEALED;
}

int vdi_catalog_put_gold_(vdi_catalog *cat, const vdi_gold_info *g, vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(
        cat,
        "INSERT INTO golds(path, format, virtual_size, size, dev, ino, mtime_ns, "
        "ctime_ns, hash, sealed_at, state, protections, reason) "
        "VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13) "
        "ON CONFLICT(path) DO UPDATE SET format=?2, virtual_size=?3, size=?4, "
        "dev=?5, ino=?6, mtime_ns=?7, ctime_ns=?8, hash=?9, sealed_at=?10, "
        "state=?11, protections=?12, reason=?13",
        &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, g->path, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, vdi_format_name(g->format), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)g->virtual_size);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)g->fp.size);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)g->fp.dev);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)g->fp.ino);
    sqlite3_bind_int64(st, 7, g->fp.mtime_ns);
    sqlite3_bind_int64(st, 8, g->fp.ctime_ns);
    sqlite3_bind_blob(st, 9, g->fp.hash, VDI_HASH_SIZE, SQLITE_STATIC);
    sqlite3_bind_int64(st, 10, g->sealed_at);
    sqlite3_bind_text(st, 11, vdi_gold_state_name(g->state), -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 12, (int)g->protections);
    sqlite3_bind_text(st, 13, g->reason, -1, SQLITE_STATIC);
    return vdi_catalog_write_(cat, st, NULL, err);
}

int vdi_catalog_delete_gold_(vdi_catalog *cat, const char *path, vdi_error *err)
{
    return vdi_catalog_write_text_(cat, "DELETE FROM golds WHERE path = ?", path, err);
}

int vdi_catalog_set_gold_state(vdi_catalog *cat, const char *path, vdi_gold_state state,
                               const char *reason, vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(cat, "UPDATE golds SET state = ?, reason = ? WHERE path = ?", &st,
                                  err);
    if (rc < 0)
        return rc;
    char real[PATH_MAX];
    path = vdi_catalog_canonical_(path, real);
    sqlite3_bind_text(st, 1, vdi_gold_state_name(state), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, reason ? reason : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, path, -1, SQLITE_STATIC);
    rc = vdi_catalog_write_(cat, st, NULL, err);
    if (rc == 0 && sqlite3_changes(vdi_catalog_db_(cat)) == 0)
        return vdi_error_set(err, -ENOENT, "%s is not a sealed gold", path);
    return rc;
}

static void gold_from_row(sqlite3_stmt *st, void *row)
{
    vdi_gold_info *g = row;
    memset(g, 0, sizeof *g);
    g->id = sqlite3_column_int64(st, 0);
    vdi_copy_text_(g->path, sizeof g->path, sqlite3_column_text(st, 1));
    const char *fmt = (const char *)sqlite3_column_text(st, 2);
    g->format = fmt && !strcmp(fmt, "raw") ? VDI_FORMAT_RAW : VDI_FORMAT_QCOW2;
    g->virtual_size = (uint64_t)sqlite3_column_int64(st, 3);
    g->fp.size = (uint64_t)sqlite3_column_int64(st, 4);
    g->fp.dev = (uint64_t)sqlite3_column_int64(st, 5);
    g->fp.ino = (uint64_t)sqlite3_column_int64(st, 6);
    g->fp.mtime_ns = sqlite3_column_int64(st, 7);
    g->fp.ctime_ns = sqlite3_column_int64(st, 8);
    if (sqlite3_column_bytes(st, 9) == VDI_HASH_SIZE)
        memcpy(g->fp.hash, sqlite3_column_blob(st, 9), VDI_HASH_SIZE);
    g->sealed_at = sqlite3_column_int64(st, 10);
    g->state = gold_state_from((const char *)sqlite3_column_text(st, 11));
    g->protections = (unsigned)sqlite3_column_int(st, 12);
    vdi_copy_text_(g->reason, sizeof g->reason, sqlite3_column_text(st, 13));
}

#define GOLD_COLUMNS                                                                               \
    "id, path, format, virtual_size, size, dev, ino, mtime_ns, ctime_ns, hash, sealed_at, "        \
    "state, protections, reason"

int vdi_catalog_gold(vdi_catalog *cat, const char *path, vdi_gold_info *out, vdi_error *err)
{
    char real[PATH_MAX];
    int rc = vdi_catalog_row_by_path_(cat, "SELECT " GOLD_COLUMNS " FROM golds WHERE path = ?",
                                      &path, real, gold_from_row, out, "read golds", err);
    if (rc == -ENOENT)
        vdi_error_set(err, rc, "%s is not a sealed gold (seal it with `vdipoolctl image seal %s`)",
                      path, path);
    return rc;
}

int vdi_catalog_golds(vdi_catalog *cat, vdi_gold_info **out, size_t *count, vdi_error *err)
{
    sqlite3_stmt *st;
    *out = NULL;
    *count = 0;
    int rc =
        vdi_catalog_prepare_(cat, "SELECT " GOLD_COLUMNS " FROM golds ORDER BY path", &st, err);
    if (rc < 0)
        return rc;
    void *rows = NULL;
    rc = vdi_catalog_rows_(cat, st, sizeof **out, gold_from_row, "read golds", &rows, count, err);
    *out = rows;
    return rc;
}
