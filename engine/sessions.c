/* sessions.c — the catalog's record of sessions: a desktop's session
 * begins and ends, an open one is found again after a restart, a pool's
 * growth is learned from its finished ones, and its last minutes are
 * counted so that vdipoold's "last hour" figures start from the catalog
 * after a restart instead of from zero (two grouped queries: at most one
 * row per minute for starts and one per minute and reason for ends,
 * however many sessions there were). The table and its indexes are made
 * with the rest of the schema (catalog.c). */
#include "internal.h"

#include <errno.h>
#include <stdio.h>

int vdi_catalog_record_session(vdi_catalog *cat, const vdi_session_record *s, vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(
        cat,
        "INSERT INTO sessions(pool, desktop, user, started_at, ended_at, end_reason, "
        "final_bytes) VALUES(?,?,?,?,?,?,?)",
        &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, s->pool, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, s->desktop, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, s->user ? s->user : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, s->started_at);
    sqlite3_bind_int64(st, 5, s->ended_at);
    sqlite3_bind_text(st, 6, s->end_reason ? s->end_reason : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)s->final_bytes);
    return vdi_catalog_write_(cat, st, NULL, err);
}

/* Durability of session records: a session's start and end are committed
 * but not flushed (the start is the one write on the loop's acquire path,
 * which must not wait for the disk). Both survive a crash of vdipoold (the
 * WAL is in the OS's cache); a power loss can lose them until a later flush
 * covers them. The daemon answers an acquire only once its start is on disk
 * (vdi_catalog_commit_on_disk, else vdi_catalog_flush on a worker), so a
 * desktop a broker was given is never found without its session after a
 * power loss, even on a host the loss did not reach, and so never handed to
 * a second user. A lost end leaves the session open on a desktop whose
 * child is gone (the delete's intent was flushed before it): the next start
 * closes it (adopt.c). No file operation depends on a session record, so
 * the intent journal's promise is untouched. */
int vdi_catalog_session_begin(vdi_catalog *cat, const char *pool, const char *desktop,
                              const char *user, int64_t started_at, int64_t *id, vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(
        cat, "INSERT INTO sessions(pool, desktop, user, started_at) VALUES(?,?,?,?)", &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, pool, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, desktop, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, user ? user : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, started_at);
    return vdi_catalog_write_unflushed_(cat, st, id, err);
}

int vdi_catalog_session_end(vdi_catalog *cat, int64_t id, int64_t ended_at, const char *reason,
                            uint64_t final_bytes, vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(
        cat,
        "UPDATE sessions SET ended_at = ?, end_reason = ?, final_bytes = ? WHERE id = "
        "? AND ended_at IS NULL",
        &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, ended_at);
    sqlite3_bind_text(st, 2, reason ? reason : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)final_bytes);
    sqlite3_bind_int64(st, 4, id);
    return vdi_catalog_write_unflushed_(cat, st, NULL, err);
}

int vdi_catalog_open_session(vdi_catalog *cat, const char *desktop, int64_t *id, char *user,
                             size_t user_len, int64_t *started_at, vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(
        cat,
        "SELECT id, user, started_at FROM sessions WHERE desktop = ? AND ended_at IS "
        "NULL ORDER BY id DESC LIMIT 1",
        &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, desktop, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        *id = sqlite3_column_int64(st, 0);
        const unsigned char *recorded_user = sqlite3_column_text(st, 1);
        if (user)
            snprintf(user, user_len, "%s", recorded_user ? (const char *)recorded_user : "");
        if (started_at)
            *started_at = sqlite3_column_int64(st, 2);
    } else {
        rc = vdi_error_set(err, -ENOENT, "desktop %s has no open session", desktop);
    }
    vdi_catalog_finish_(cat, st);
    return rc;
}

int vdi_catalog_growth_p95(vdi_catalog *cat, const char *pool, size_t min_samples, uint64_t *bytes,
                           size_t *samples, vdi_error *err)
{
    sqlite3_stmt *st;
    /* The last 500 finished sessions: recent behaviour is what matters. */
    int rc = vdi_catalog_prepare_(
        cat,
        "SELECT final_bytes FROM (SELECT final_bytes FROM sessions WHERE pool = ? AND "
        "final_bytes IS NOT NULL AND ended_at IS NOT NULL ORDER BY ended_at DESC "
        "LIMIT 500) ORDER BY final_bytes",
        &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, pool, -1, SQLITE_STATIC);
    uint64_t v[500];
    size_t n = 0;
    while (sqlite3_step(st) == SQLITE_ROW && n < 500)
        v[n++] = (uint64_t)sqlite3_column_int64(st, 0);
    vdi_catalog_finish_(cat, st);
    if (samples)
        *samples = n;
    if (n == 0 || n < min_samples)
        return vdi_error_set(err, -ENODATA, "pool %s has %zu finished sessions, fewer than %zu",
                             pool, n, min_samples);
    size_t idx = (n * 95 + 99) / 100; /* nearest rank */
    *bytes = v[idx ? idx - 1 : 0];
    return 0;
}

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

/* Through the index of finished sessions by end (sessions_ended): a batch
 * of 1 000 over a million sessions holds the catalog's lock for a few
 * milliseconds. The count is read inside the transaction, while no other
 * statement can run. */
int vdi_catalog_prune_sessions(vdi_catalog *cat, int64_t ended_before, unsigned max_rows,
                               uint64_t *removed, vdi_error *err)
{
    *removed = 0;
    int rc = vdi_catalog_begin_(cat, err);
    if (rc < 0)
        return rc;
    sqlite3_stmt *st;
    rc = vdi_catalog_prepare_(cat,
                              "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE "
                              "ended_at IS NOT NULL AND ended_at < ? ORDER BY ended_at LIMIT ?)",
                              &st, err);
    if (rc == 0) {
        sqlite3_bind_int64(st, 1, ended_before);
        sqlite3_bind_int64(st, 2, max_rows);
        rc = vdi_catalog_write_unflushed_(cat, st, NULL, err);
    }
    if (rc < 0) {
        vdi_catalog_rollback_(cat);
        return rc;
    }
    uint64_t n = (uint64_t)sqlite3_changes(vdi_catalog_db_(cat));
    if ((rc = vdi_catalog_commit_unflushed_(cat, err)) == 0)
        *removed = n;
    return rc;
}
