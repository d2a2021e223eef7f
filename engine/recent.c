/* recent.c — a pool's sessions of the last minutes, counted by minute, so
 * that vdipoold's "last hour" figures start from the catalog after a
 * restart instead of from zero. Two grouped queries: at most one row per
 * minute for starts and one per minute and reason for ends, however many
 * sessions there were. */
#include "internal.h"

int vdi_catalog_sessions_by_minute(vdi_catalog *cat, const char *pool, int64_t since,
                                   void (*fn)(void *ctx, int64_t minute, const char *reason,
                                              uint64_t count),
                                   void *ctx, vdi_error *err)
{
    /* Both read ranges of the index on (pool, ended_at), never every
     * session of the pool: a session started since `since` is either still
     * open (ended_at NULL) or ended since then. */
    static const char *const queries[2] = {
        "SELECT m, NULL, SUM(c) FROM ("
        " SELECT started_at / 60 AS m, COUNT(*) AS c FROM sessions"
        "  WHERE pool = ?1 AND ended_at IS NULL AND started_at >= ?2 GROUP BY 1"
        " UNION ALL"
        " SELECT started_at / 60, COUNT(*) FROM sessions"
        "  WHERE pool = ?1 AND ended_at >= ?2 AND started_at >= ?2 GROUP BY 1)"
        " GROUP BY 1",
        "SELECT ended_at / 60, end_reason, COUNT(*) FROM sessions "
        "WHERE pool = ?1 AND ended_at >= ?2 GROUP BY 1, 2"};
    for (int q = 0; q < 2; q++) {
        sqlite3_stmt *s;
        int rc = vdi_catalog_prepare_(cat, queries[q], &s, err);
        if (rc < 0)
            return rc;
        sqlite3_bind_text(s, 1, pool, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, since);
        int step;
        while ((step = sqlite3_step(s)) == SQLITE_ROW) {
            const char *reason = (const char *)sqlite3_column_text(s, 1);
            fn(ctx, sqlite3_column_int64(s, 0),
               q == 0   ? NULL
               : reason ? reason
                        : "",
               (uint64_t)sqlite3_column_int64(s, 2));
        }
        if (step != SQLITE_DONE)
            rc = vdi_catalog_db_error_(cat, err, "count recent sessions");
        vdi_catalog_finish_(cat, s);
        if (rc < 0)
            return rc;
    }
    return 0;
}
