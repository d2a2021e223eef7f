/* pooldrains.c — pools an operator drained, kept in the catalog so that a
 * drained pool stays drained across a restart of vdipoold (an upgrade in a
 * maintenance window must not bring its spares back). One row per drained
 * pool; opening it again deletes the row. */
#include "internal.h"

#include <stdio.h>

int vdi_catalog_set_pool_drain(vdi_catalog *cat, const char *pool, int64_t since, vdi_error *err)
{
    sqlite3_stmt *s;
    int rc = since ? vdi_catalog_prepare_(cat,
                                          "INSERT OR REPLACE INTO pool_drains(pool, since) "
                                          "VALUES(?, ?)",
                                          &s, err)
                   : vdi_catalog_prepare_(cat, "DELETE FROM pool_drains WHERE pool = ?", &s, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(s, 1, pool, -1, SQLITE_STATIC);
    if (since)
        sqlite3_bind_int64(s, 2, since);
    return vdi_catalog_write_(cat, s, NULL, err);
}

int vdi_catalog_pool_drain(vdi_catalog *cat, const char *pool, int64_t *since, vdi_error *err)
{
    sqlite3_stmt *s;
    *since = 0;
    int rc = vdi_catalog_prepare_(cat, "SELECT since FROM pool_drains WHERE pool = ?", &s, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(s, 1, pool, -1, SQLITE_STATIC);
    int step = sqlite3_step(s);
    if (step == SQLITE_ROW)
        *since = sqlite3_column_int64(s, 0);
    else if (step != SQLITE_DONE)
        rc = vdi_catalog_db_error_(cat, err, "read drained pools");
    vdi_catalog_finish_(cat, s);
    return rc;
}
