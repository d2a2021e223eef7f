/* catalog.c — the SQLite catalog: its connection and durability, and its
 * schema (the intent journal's rows are in intents.c and their recovery in
 * journal.c; the statements of children are in childrows.c, sealed golds'
 * in sealedgolds.c, sessions' in sessions.c, versions' in versions.c). Files on disk stay the
 * ground truth; the catalog records what the qcow2 format cannot (a parent's children, a gold's
 * fingerprint).
 *
 * Invariant: an intent row is committed and on disk (see wal_sync) before
 * the first step of its operation touches a file, and is
 * deleted in the same transaction as the operation's final catalog update.
 * One relaxation: a clone writes its temporary file while its intent's
 * flush may still be pending, and waits for that flush before the rename
 * (vdi_intent_begin_pending_): a temporary file is removed by the sweep
 * whatever the journal says, so until a child exists under its real name
 * there is nothing recovery must know about.
 * So after a crash every half-done operation has its intent, and
 * vdi_catalog_open finishes or undoes it. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Threads: one catalog may be used from several threads at once (the
 * service's loop and its workers). `lock` (recursive) is held from each
 * statement's prepare to its finalize, and from vdi_catalog_begin_ to the
 * matching commit or rollback, so a transaction is never interleaved with
 * another thread's statements. It is never held across file work: the
 * engine's operations take it only inside catalog calls.
 *
 * Durability without holding the lock across a disk flush: the connection
 * runs WAL with synchronous=NORMAL, so a commit writes its frames to the WAL
 * file (the OS's cache) without flushing, and the committing call then
 * flushes the WAL itself (wal_sync, fdatasync on its own descriptor) after
 * releasing the lock, before it returns. A caller therefore sees the same
 * promise as synchronous=FULL (its commit is on disk when the call returns,
 * so an intent is there before its operation touches a file), while other
 * threads commit meanwhile. The WAL is append-only between checkpoints and
 * the flush covers the whole file, so a later commit is never durable
 * without an earlier one.
 *
 * Group commit: each commit is numbered in `wal`, a flush group
 * (flushgroup.c): a thread whose commit a flush already covered returns
 * without one, and threads that committed while a flush ran share the next.
 * Under load one fdatasync carries the commits of many jobs instead of each
 * job queuing its own.
 *
 * Commits that close an intent (the record of a finished clone or delete)
 * need no flush of their own (vdi_catalog_commit_unflushed_): the intent was
 * flushed before the operation touched a file, so if a power loss drops the
 * closing commit the intent is still there and recovery finishes the
 * operation to the same result; and any later flushed commit carries it.
 * A session's begin and end do not wait either (the argument is in
 * sessions.c). */
/* Prepared statements kept for reuse, found by the address of their SQL
 * text (every call site passes a string literal): parsing a statement cost
 * more than running it on the daemon's clone/end path. A statement in use
 * (a nested call of the same site under the recursive lock) is not shared:
 * the caller gets a fresh one, finalized at its finish. */
#define STATEMENT_CACHE 48
typedef struct cached_statement {
    const char *sql;
    sqlite3_stmt *st;
    bool busy;
} cached_statement;

struct vdi_catalog {
    pthread_mutex_t lock;
    bool in_txn; /* under lock: a transaction begun by the lock's holder */
    sqlite3 *db;
    cached_statement cache[STATEMENT_CACHE]; /* under lock */
    /* Statements prepared (each one lock hold), for /metrics: written under
     * lock, read without it (atomic), so that the loop never waits on it. */
    _Atomic uint64_t statements;
    int wal_fd;    /* the WAL file, read-only, for wal_sync; -1: commits flush themselves */
    vdi_flush_group wal; /* commits are its changes, numbered under lock */
    char *state_dir;
    unsigned forward, back;
};

static const char *SCHEMA =
    "CREATE TABLE IF NOT EXISTS golds ("
    "  id INTEGER PRIMARY KEY,"
    "  path TEXT NOT NULL UNIQUE,"
    "  format TEXT NOT NULL,"
    "  virtual_size INTEGER NOT NULL,"
    "  size INTEGER NOT NULL, dev INTEGER NOT NULL, ino INTEGER NOT NULL,"
    "  mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,"
    "  hash BLOB NOT NULL,"
    "  sealed_at INTEGER NOT NULL,"
    "  state TEXT NOT NULL,"
    "  protections INTEGER NOT NULL DEFAULT 0,"
    "  reason TEXT NOT NULL DEFAULT '');"
    "CREATE TABLE IF NOT EXISTS children ("
    "  id INTEGER PRIMARY KEY,"
    "  path TEXT NOT NULL UNIQUE,"
    "  parent TEXT NOT NULL,"
    "  datastore TEXT NOT NULL DEFAULT '',"
    "  pool TEXT NOT NULL DEFAULT '',"
    "  slot INTEGER NOT NULL DEFAULT -1,"
    "  created_at INTEGER NOT NULL,"
    "  last_bytes INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX IF NOT EXISTS children_parent ON children(parent);"
    "CREATE TABLE IF NOT EXISTS datastore_usage ("
    "  datastore TEXT PRIMARY KEY,"
    "  children INTEGER NOT NULL DEFAULT 0,"
    "  allocated INTEGER NOT NULL DEFAULT 0,"
    "  virtual INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS sessions ("
    "  id INTEGER PRIMARY KEY,"
    "  pool TEXT NOT NULL, desktop TEXT NOT NULL, user TEXT NOT NULL DEFAULT '',"
    "  started_at INTEGER NOT NULL, ended_at INTEGER,"
    "  end_reason TEXT, final_bytes INTEGER);"
    "CREATE INDEX IF NOT EXISTS sessions_pool ON sessions(pool, ended_at);"
    /* A desktop's open session, looked up for every desktop adopted at start:
     * without it each lookup read every session ever recorded (2 000
     * desktops over 200 000 past sessions: 18 s). Partial: only open
     * sessions are in it, so it stays as small as the pools. */
    "CREATE INDEX IF NOT EXISTS sessions_open ON sessions(desktop) WHERE ended_at IS NULL;"
    /* Finished sessions by when they ended, for forgetting the oldest
     * (vdi_catalog_prune_sessions): a batch reads what it deletes instead
     * of scanning the table, which held the catalog's lock for 0.14 s over
     * a million sessions none of which was old enough. */
    "CREATE INDEX IF NOT EXISTS sessions_ended ON sessions(ended_at) WHERE ended_at IS NOT NULL;"
    "CREATE TABLE IF NOT EXISTS gold_versions ("
    "  family TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL UNIQUE,"
    "  created_at INTEGER NOT NULL, note TEXT NOT NULL DEFAULT '',"
    "  created_by TEXT NOT NULL DEFAULT '', current INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (family, version));"
    "CREATE TABLE IF NOT EXISTS gold_audit ("
    "  id INTEGER PRIMARY KEY, family TEXT NOT NULL, at INTEGER NOT NULL,"
    "  who TEXT NOT NULL, action TEXT NOT NULL, version INTEGER NOT NULL,"
    "  note TEXT NOT NULL DEFAULT '');"
    "CREATE TABLE IF NOT EXISTS memory_images ("
    "  path TEXT PRIMARY KEY, template TEXT NOT NULL, gold TEXT NOT NULL,"
    "  pool TEXT NOT NULL DEFAULT '', size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
    "  ctime_ns INTEGER NOT NULL, hash BLOB NOT NULL, created_at INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS pool_drains ("
    "  pool TEXT PRIMARY KEY, since INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS intents ("
    "  id INTEGER PRIMARY KEY,"
    "  op TEXT NOT NULL, target TEXT NOT NULL, data TEXT NOT NULL DEFAULT '',"
    "  pid INTEGER NOT NULL, created_at INTEGER NOT NULL);";

const char *vdi_state_dir_default(void)
{
    const char *env = getenv("VDIPOOL_STATE_DIR");
    return env && *env ? env : "/var/lib/vdipool";
}

sqlite3 *vdi_catalog_db_(vdi_catalog *cat)
{
    return cat->db;
}
const char *vdi_catalog_state_dir(const vdi_catalog *cat)
{
    return cat->state_dir;
}
unsigned vdi_catalog_rolled_forward(const vdi_catalog *cat)
{
    return cat->forward;
}
unsigned vdi_catalog_rolled_back(const vdi_catalog *cat)
{
    return cat->back;
}
void vdi_catalog_count_recovered_(vdi_catalog *cat, bool forward)
{
    if (forward)
        cat->forward++;
    else
        cat->back++;
}

static int db_error(vdi_catalog *cat, vdi_error *err, const char *what)
{
    return vdi_error_set(err, -EIO, "catalog %s/catalog.db: %s: %s", cat->state_dir, what,
                         sqlite3_errmsg(cat->db));
}

/* Numbers a commit just made; under lock, after SQLite's COMMIT returned
 * (its frames are written), so a flush that reads a number covers them. */
static uint64_t commit_numbered(vdi_catalog *cat)
{
    return vdi_flush_group_change(&cat->wal);
}

static int flush_wal(void *arg)
{
    const vdi_catalog *cat = arg;
    return fdatasync(cat->wal_fd) < 0 ? -errno : 0;
}

/* Returns once commit number `seq` is on disk (see "Group commit" at the
 * top); called without the lock. */
static int wal_sync(vdi_catalog *cat, uint64_t seq, vdi_error *err)
{
    if (cat->wal_fd < 0)
        return 0;
    int rc = vdi_flush_group_wait(&cat->wal, seq, flush_wal, cat);
    if (rc < 0)
        return vdi_error_set(err, rc, "catalog %s/catalog.db: cannot flush its journal: %s",
                             cat->state_dir, strerror(-rc));
    return 0;
}

uint64_t vdi_catalog_last_commit(vdi_catalog *cat)
{
    return vdi_flush_group_last(&cat->wal);
}

bool vdi_catalog_commit_on_disk(vdi_catalog *cat, uint64_t commit)
{
    /* synchronous=FULL until the WAL's descriptor is open: each commit
     * flushed itself. */
    return cat->wal_fd < 0 || vdi_flush_group_covers(&cat->wal, commit);
}

int vdi_catalog_flush(vdi_catalog *cat, uint64_t commit, vdi_error *err)
{
    return wal_sync(cat, commit, err);
}

void vdi_catalog_counts(vdi_catalog *cat, uint64_t *commits, uint64_t *flushes)
{
    *commits = vdi_flush_group_last(&cat->wal);
    *flushes = vdi_flush_group_flushes(&cat->wal);
}

uint64_t vdi_catalog_statements(vdi_catalog *cat)
{
    return atomic_load_explicit(&cat->statements, memory_order_relaxed);
}

static int exec_locked(vdi_catalog *cat, const char *sql, vdi_error *err)
{
    char *msg = NULL;
    int rc = 0;
    if (sqlite3_exec(cat->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        rc = vdi_error_set(err, -EIO, "catalog %s/catalog.db: %s", cat->state_dir,
                           msg ? msg : "error");
        sqlite3_free(msg);
    }
    return rc;
}

int vdi_catalog_exec_(vdi_catalog *cat, const char *sql, vdi_error *err)
{
    pthread_mutex_lock(&cat->lock);
    int rc = exec_locked(cat, sql, err);
    bool committed = sqlite3_get_autocommit(cat->db); /* not inside a transaction */
    uint64_t seq = rc == 0 && committed ? commit_numbered(cat) : 0;
    pthread_mutex_unlock(&cat->lock);
    return seq ? wal_sync(cat, seq, err) : rc;
}

/* A transaction keeps the lock from BEGIN to COMMIT or ROLLBACK. */
int vdi_catalog_begin_(vdi_catalog *cat, vdi_error *err)
{
    pthread_mutex_lock(&cat->lock);
    int rc = exec_locked(cat, "BEGIN IMMEDIATE", err);
    if (rc < 0) {
        pthread_mutex_unlock(&cat->lock);
        return rc;
    }
    cat->in_txn = true;
    return 0;
}

/* A failed COMMIT is rolled back here, so the caller's later rollback_
 * (which many error paths call) finds nothing to undo. */
static int commit(vdi_catalog *cat, bool flush, vdi_error *err)
{
    int rc = exec_locked(cat, "COMMIT", err);
    if (rc < 0)
        sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
    uint64_t seq = rc == 0 ? commit_numbered(cat) : 0;
    cat->in_txn = false;
    pthread_mutex_unlock(&cat->lock);
    return rc == 0 && flush ? wal_sync(cat, seq, err) : rc;
}

int vdi_catalog_commit_(vdi_catalog *cat, vdi_error *err)
{
    return commit(cat, true, err);
}

int vdi_catalog_commit_unflushed_(vdi_catalog *cat, vdi_error *err)
{
    return commit(cat, false, err);
}

void vdi_catalog_rollback_(vdi_catalog *cat)
{
    pthread_mutex_lock(&cat->lock);
    if (cat->in_txn) {
        sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
        cat->in_txn = false;
        pthread_mutex_unlock(&cat->lock); /* begin_'s hold */
    }
    pthread_mutex_unlock(&cat->lock);
}

/* Takes the catalog's lock until finish(): a statement is one critical section. */
static int prepare(vdi_catalog *cat, const char *sql, sqlite3_stmt **st, vdi_error *err)
{
    pthread_mutex_lock(&cat->lock);
    atomic_fetch_add_explicit(&cat->statements, 1, memory_order_relaxed);
    cached_statement *slot = NULL;
    for (size_t i = 0; i < STATEMENT_CACHE; i++) {
        cached_statement *c = &cat->cache[i];
        if (c->sql == sql && !c->busy) {
            c->busy = true;
            *st = c->st;
            return 0;
        }
        if (!c->sql && !slot)
            slot = c;
    }
    bool keep = slot && !strchr(sql, ';'); /* one statement, not a script */
    if (sqlite3_prepare_v3(cat->db, sql, -1, keep ? SQLITE_PREPARE_PERSISTENT : 0, st, NULL) !=
        SQLITE_OK) {
        int rc = db_error(cat, err, "prepare");
        pthread_mutex_unlock(&cat->lock);
        return rc;
    }
    if (keep)
        *slot = (cached_statement){.sql = sql, .st = *st, .busy = true};
    return 0;
}

/* Ends the use of a statement from prepare(): a cached one is reset and its
 * bindings cleared (they may point at the caller's strings), others are
 * finalized. Releases prepare's hold on the lock. */
static void finish(vdi_catalog *cat, sqlite3_stmt *st)
{
    bool cached = false;
    for (size_t i = 0; i < STATEMENT_CACHE && !cached; i++)
        if (cat->cache[i].st == st && cat->cache[i].busy) {
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            cat->cache[i].busy = false;
            cached = true;
        }
    if (!cached)
        sqlite3_finalize(st);
    pthread_mutex_unlock(&cat->lock);
}

/* Steps a statement that returns no rows and finishes it; *rowid (when
 * asked) is read before the lock is released. A write outside a transaction
 * commits by itself: it is flushed when `durable` (see wal_sync). */
static int step_write(vdi_catalog *cat, sqlite3_stmt *st, int64_t *rowid, bool durable,
                      uint64_t *commit_out, vdi_error *err)
{
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : db_error(cat, err, "write");
    if (rc == 0 && rowid)
        *rowid = sqlite3_last_insert_rowid(cat->db);
    bool committed = !sqlite3_stmt_readonly(st) && sqlite3_get_autocommit(cat->db);
    uint64_t seq = rc == 0 && committed ? commit_numbered(cat) : 0;
    finish(cat, st);
    if (commit_out)
        *commit_out = seq;
    return seq && durable ? wal_sync(cat, seq, err) : rc;
}

/* For the engine's other modules that keep tables here (versions.c,
 * sessions.c). */
int vdi_catalog_prepare_(vdi_catalog *cat, const char *sql, sqlite3_stmt **st, vdi_error *err)
{
    return prepare(cat, sql, st, err);
}

void vdi_catalog_finish_(vdi_catalog *cat, sqlite3_stmt *st)
{
    finish(cat, st);
}

int vdi_catalog_write_(vdi_catalog *cat, sqlite3_stmt *st, int64_t *rowid, vdi_error *err)
{
    return step_write(cat, st, rowid, true, NULL, err);
}

int vdi_catalog_write_text_(vdi_catalog *cat, const char *sql, const char *text, vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = prepare(cat, sql, &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
    return step_write(cat, st, NULL, true, NULL, err);
}

int vdi_catalog_write_unflushed_(vdi_catalog *cat, sqlite3_stmt *st, int64_t *rowid, vdi_error *err)
{
    return step_write(cat, st, rowid, false, NULL, err);
}

int vdi_catalog_write_numbered_(vdi_catalog *cat, sqlite3_stmt *st, int64_t *rowid,
                                uint64_t *commit, vdi_error *err)
{
    return step_write(cat, st, rowid, false, commit, err);
}

int vdi_catalog_db_error_(vdi_catalog *cat, vdi_error *err, const char *what)
{
    return db_error(cat, err, what);
}

int vdi_catalog_rows_(vdi_catalog *cat, sqlite3_stmt *st, size_t size,
                      void (*from_row)(sqlite3_stmt *st, void *row), const char *what, void **out,
                      size_t *count, vdi_error *err)
{
    *out = NULL;
    *count = 0;
    size_t n = 0, cap = 0;
    char *v = NULL;
    int rc = 0, step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            char *nv = realloc(v, cap * size);
            if (!nv) {
                rc = vdi_error_set(err, -ENOMEM, "out of memory");
                break;
            }
            v = nv;
        }
        from_row(st, v + n++ * size);
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = db_error(cat, err, what);
    finish(cat, st);
    if (rc < 0) {
        free(v);
        return rc;
    }
    *out = v;
    *count = n;
    return 0;
}

/* The catalog names files by their canonical path: a lookup resolves the
 * path it is given (relative, through links) when the file exists, and
 * uses it as given otherwise (a record whose file is gone). */
const char *vdi_catalog_canonical_(const char *path, char real[PATH_MAX])
{
    return path && realpath(path, real) ? real : path;
}

int vdi_catalog_step_by_path_(sqlite3_stmt *st, const char **path, char real[PATH_MAX])
{
    sqlite3_bind_text(st, 1, *path, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step != SQLITE_DONE)
        return step;
    const char *canon = vdi_catalog_canonical_(*path, real);
    if (!strcmp(canon, *path))
        return step;
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, canon, -1, SQLITE_STATIC);
    *path = canon;
    return sqlite3_step(st);
}

int vdi_catalog_row_by_path_(vdi_catalog *cat, const char *sql, const char **path,
                             char real[PATH_MAX], void (*from_row)(sqlite3_stmt *st, void *row),
                             void *row, const char *what, vdi_error *err)
{
    sqlite3_stmt *st;
    int rc = prepare(cat, sql, &st, err);
    if (rc < 0)
        return rc;
    int step = vdi_catalog_step_by_path_(st, path, real);
    if (step == SQLITE_ROW)
        from_row(st, row);
    else
        rc = step == SQLITE_DONE ? -ENOENT : db_error(cat, err, what);
    finish(cat, st);
    return rc;
}

void vdi_copy_text_(char *dst, size_t len, const unsigned char *src)
{
    snprintf(dst, len, "%s", src ? (const char *)src : "");
}

/* Per datastore: how many children the catalog knows there, what they hold
 * and their virtual sizes, kept by triggers on every insert, delete and
 * update of a child (the triggers insert with WHERE NOT EXISTS: an outer
 * INSERT OR REPLACE would turn their own OR IGNORE into a REPLACE), so that admission reads one row
 * instead of walking the directory. Rebuilt from the children at every open (catalogs of earlier
 * versions lack the column and the table). */
static int usage_setup(vdi_catalog *cat, vdi_error *err)
{
    /* Fails harmlessly when the column exists already. */
    sqlite3_exec(cat->db, "ALTER TABLE children ADD COLUMN virtual_size INTEGER NOT NULL DEFAULT 0",
                 NULL, NULL, NULL);
    /* The host whose domain uses the child (several hosts share a datastore). */
    sqlite3_exec(cat->db, "ALTER TABLE children ADD COLUMN host TEXT NOT NULL DEFAULT ''", NULL,
                 NULL, NULL);
    static const char *const sql =
        "PRAGMA recursive_triggers = ON;" /* INSERT OR REPLACE fires the delete trigger */
        /* Made anew at every open: a catalog always has this version's triggers. */
        "DROP TRIGGER IF EXISTS usage_insert; DROP TRIGGER IF EXISTS usage_delete;"
        "DROP TRIGGER IF EXISTS usage_update;"
        "CREATE TRIGGER usage_insert AFTER INSERT ON children BEGIN"
        "  INSERT INTO datastore_usage(datastore) SELECT NEW.datastore WHERE NOT EXISTS "
        "    (SELECT 1 FROM datastore_usage WHERE datastore = NEW.datastore);"
        "  UPDATE datastore_usage SET children = children + 1, allocated = allocated + "
        "    NEW.last_bytes, virtual = virtual + NEW.virtual_size WHERE datastore = NEW.datastore;"
        "END;"
        "CREATE TRIGGER usage_delete AFTER DELETE ON children BEGIN"
        "  UPDATE datastore_usage SET children = children - 1, allocated = allocated - "
        "    OLD.last_bytes, virtual = virtual - OLD.virtual_size WHERE datastore = OLD.datastore;"
        "END;"
        "CREATE TRIGGER usage_update AFTER UPDATE OF last_bytes, virtual_size, "
        "    datastore ON children BEGIN"
        "  UPDATE datastore_usage SET children = children - 1, allocated = allocated - "
        "    OLD.last_bytes, virtual = virtual - OLD.virtual_size WHERE datastore = OLD.datastore;"
        "  INSERT INTO datastore_usage(datastore) SELECT NEW.datastore WHERE NOT EXISTS "
        "    (SELECT 1 FROM datastore_usage WHERE datastore = NEW.datastore);"
        "  UPDATE datastore_usage SET children = children + 1, allocated = allocated + "
        "    NEW.last_bytes, virtual = virtual + NEW.virtual_size WHERE datastore = NEW.datastore;"
        "END;"
        "BEGIN IMMEDIATE;"
        "DELETE FROM datastore_usage;"
        "INSERT INTO datastore_usage(datastore, children, allocated, virtual) SELECT datastore, "
        "  COUNT(*), SUM(last_bytes), SUM(virtual_size) FROM children GROUP BY datastore;"
        "COMMIT;";
    return vdi_catalog_exec_(cat, sql, err);
}

int vdi_catalog_open_storage_(const char *state_dir, vdi_catalog **out, vdi_error *err)
{
    *out = NULL;
    if (mkdir(state_dir, 0750) < 0 && errno != EEXIST)
        return vdi_error_set(err, -errno, "cannot create the state directory %s: %s", state_dir,
                             strerror(errno));
    vdi_catalog *cat = calloc(1, sizeof *cat);
    if (!cat || !(cat->state_dir = strdup(state_dir))) {
        free(cat);
        return vdi_error_set(err, -ENOMEM, "out of memory");
    }
    cat->wal_fd = -1;
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&cat->lock, &attr);
    vdi_flush_group_init(&cat->wal);
    pthread_mutexattr_destroy(&attr);
    char path[4200];
    snprintf(path, sizeof path, "%s/catalog.db", state_dir);
    int rc = 0;
    if (sqlite3_open_v2(path, &cat->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        rc = vdi_error_set(err, -EIO, "cannot open the catalog %s: %s", path,
                           cat->db ? sqlite3_errmsg(cat->db) : "out of memory");
        goto error;
    }
    sqlite3_busy_timeout(cat->db, 10000);
    /* Until the WAL's descriptor is open, every commit flushes itself. */
    if ((rc = vdi_catalog_exec_(cat, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", err)) <
            0 ||
        (rc = vdi_catalog_exec_(cat, SCHEMA, err)) < 0 || (rc = usage_setup(cat, err)) < 0)
        goto error;
    /* The WAL exists now (the set-up above wrote) and stays until the last
     * connection closes, which cannot happen while this one is open. Its
     * directory entry is flushed once; from here commits are flushed by
     * wal_sync outside the lock (see the comment at the top). */
    snprintf(path, sizeof path, "%s/catalog.db-wal", state_dir);
    cat->wal_fd = open(path, O_RDONLY | O_CLOEXEC);
    int sync_rc = cat->wal_fd >= 0 ? vdi_sync_dir_of_(path) : 0;
    if (sync_rc < 0) {
        rc = vdi_error_set(err, sync_rc, "cannot flush the state directory %s: %s", state_dir,
                           strerror(-sync_rc));
        goto error;
    }
    if (cat->wal_fd >= 0 &&
        (rc = vdi_catalog_exec_(cat, "PRAGMA synchronous=NORMAL", err)) < 0)
        goto error;
    *out = cat;
    return 0;

error:
    vdi_catalog_close(cat);
    return rc;
}

void vdi_catalog_close(vdi_catalog *cat)
{
    if (!cat)
        return;
    for (size_t i = 0; i < STATEMENT_CACHE; i++)
        sqlite3_finalize(cat->cache[i].st);
    sqlite3_close(cat->db);
    if (cat->wal_fd >= 0)
        close(cat->wal_fd);
    pthread_mutex_destroy(&cat->lock);
    vdi_flush_group_destroy(&cat->wal);
    free(cat->state_dir);
    free(cat);
}

void vdi_crashpoint(const char *name)
{
    const char *at = getenv("VDIPOOL_CRASH_AT");
    if (at && !strcmp(at, name))
        kill(getpid(), SIGKILL);
    /* Tests also pause an operation half-way, to show it is left alone. */
    const char *stop = getenv("VDIPOOL_STOP_AT");
    if (stop && !strcmp(stop, name))
        raise(SIGSTOP);
}

bool vdi_failpoint(const char *name)
{
    const char *at = getenv("VDIPOOL_FAIL_AT");
    return at && !strcmp(at, name);
}

int vdi_write_file_atomic_(const char *path, const char *text, vdi_error *err)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f)
        return vdi_error_set(err, -errno, "cannot write %s: %s", tmp, strerror(errno));
    int rc = 0;
    if (fputs(text, f) < 0 || fflush(f) != 0 || fsync(fileno(f)) != 0)
        rc = -errno;
    if (fclose(f) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc < 0) {
        unlink(tmp);
        return vdi_error_set(err, rc, "cannot write %s: %s", path, strerror(-rc));
    }
    vdi_sync_dir_of_(path);
    return 0;
}
