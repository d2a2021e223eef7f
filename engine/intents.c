/* intents.c — the rows of the intent journal: written before an operation
 * touches a file (on disk when vdi_intent_begin_ returns, see wal_sync in
 * catalog.c), deleted with the operation's last catalog update, and read
 * back at open for the intents of processes that no longer run. Storage
 * only: journal.c hands the leftovers to their operations' recoverers, and
 * the operations (children.c, guard.c, merge.c, versions.c) write them. */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int vdi_intent_begin_pending_(vdi_catalog *cat, const char *op, const char *target,
                              const char *data, int64_t *id, uint64_t *commit, vdi_error *err)
{
    *commit = 0;
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(
        cat, "INSERT INTO intents(op, target, data, pid, created_at) VALUES(?,?,?,?,?)", &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, op, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, target, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, data ? data : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, getpid());
    sqlite3_bind_int64(st, 5, time(NULL));
    return vdi_catalog_write_numbered_(cat, st, id, commit, err);
}

/* The pending intent and its flush (commit 0, inside a transaction: no
 * flush of its own, as any write there). */
int vdi_intent_begin_(vdi_catalog *cat, const char *op, const char *target, const char *data,
                      int64_t *id, vdi_error *err)
{
    uint64_t commit;
    int rc = vdi_intent_begin_pending_(cat, op, target, data, id, &commit, err);
    return rc < 0 ? rc : vdi_catalog_flush(cat, commit, err);
}

int vdi_intent_end_(vdi_catalog *cat, int64_t id, vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(cat, "DELETE FROM intents WHERE id = ?", &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    return vdi_catalog_write_(cat, st, NULL, err);
}

int vdi_intents_leftover_(vdi_catalog *cat, vdi_intent_row **out, size_t *count, vdi_error *err)
{
    *out = NULL;
    *count = 0;
    sqlite3_stmt *st;
    int rc = vdi_catalog_prepare_(cat, "SELECT id, op, target, data, pid FROM intents ORDER BY id",
                                  &st, err);
    if (rc < 0)
        return rc;
    vdi_intent_row *v = NULL;
    size_t n = 0, cap = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        /* An intent of a process that still runs is work in progress (the
         * service cloning while an operator runs vdipoolctl), not a crash. */
        pid_t owner = (pid_t)sqlite3_column_int64(st, 4);
        if (owner > 0 && owner != getpid() && (kill(owner, 0) == 0 || errno == EPERM))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            vdi_intent_row *nv = realloc(v, cap * sizeof *v);
            if (!nv) {
                rc = vdi_error_set(err, -ENOMEM, "out of memory");
                break;
            }
            v = nv;
        }
        v[n].id = sqlite3_column_int64(st, 0);
        v[n].op = strdup((const char *)sqlite3_column_text(st, 1));
        v[n].target = strdup((const char *)sqlite3_column_text(st, 2));
        v[n].data = strdup((const char *)sqlite3_column_text(st, 3));
        n++;
        if (!v[n - 1].op || !v[n - 1].target || !v[n - 1].data) {
            rc = vdi_error_set(err, -ENOMEM, "out of memory");
            break;
        }
    }
    vdi_catalog_finish_(cat, st);
    if (rc < 0) {
        vdi_intent_rows_free_(v, n);
        return rc;
    }
    *out = v;
    *count = n;
    return 0;
}

void vdi_intent_rows_free_(vdi_intent_row *rows, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        free(rows[i].op);
        free(rows[i].target);
        free(rows[i].data);
    }
    free(rows);
}
