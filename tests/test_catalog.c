/* test_catalog.c — the catalog as storage: sessions and growth history,
 * lookups by any spelling of a path, and one catalog shared by several
 * threads at once (the service's loop and its workers), whose statements and
 * transactions must never interleave. */
#include "helpers.h"
#include "internal.h" /* the flush group */
#include "vdi_engine.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *dir;
static vdi_catalog *cat;
static char gold[4200];

static void setup(void)
{
    dir = th_tempdir("catalog");
    vdi_error err = {0};
    ck_assert_msg(vdi_catalog_open(th_path(dir, "state"), &cat, &err) == 0, "%s", err.message);
    snprintf(gold, sizeof gold, "%s/gold.qcow2", dir);
    free(th_must("qemu-img create -q -f qcow2 %s 64M", gold));
}

static void teardown(void)
{
    vdi_catalog_close(cat);
    th_tempdir_remove(dir);
}

START_TEST(sessions_and_growth)
{
    vdi_error err = {0};
    int64_t id = 0;
    ck_assert_int_eq(vdi_catalog_session_begin(cat, "p", "p-001", "alice", 100, &id, &err), 0);
    ck_assert_int_gt(id, 0);
    int64_t open_id = 0, started = 0;
    char user[64];
    ck_assert_int_eq(
        vdi_catalog_open_session(cat, "p-001", &open_id, user, sizeof user, &started, &err), 0);
    ck_assert_int_eq(open_id, id);
    ck_assert_str_eq(user, "alice");
    ck_assert_int_eq(started, 100);
    ck_assert_int_eq(vdi_catalog_session_end(cat, id, 200, "released", 4096, &err), 0);
    ck_assert_int_eq(vdi_catalog_open_session(cat, "p-001", &open_id, NULL, 0, NULL, NULL),
                     -ENOENT);
    uint64_t p95 = 0;
    size_t samples = 0;
    ck_assert_int_eq(vdi_catalog_growth_p95(cat, "p", 2, &p95, &samples, NULL), -ENODATA);
    ck_assert_int_eq(vdi_catalog_growth_p95(cat, "p", 1, &p95, &samples, &err), 0);
    ck_assert_uint_eq(p95, 4096);
    ck_assert_uint_eq(samples, 1);
}
END_TEST

/* Finished sessions older than the cut-off go, oldest first and at most a
 * batch at a time; open sessions stay however old, and newer ones stay. */
START_TEST(old_finished_sessions_are_pruned)
{
    vdi_error err = {0};
    for (int i = 0; i < 5; i++) { /* ended at 1000..1004 */
        vdi_session_record s = {.pool = "p",
                                .desktop = "p-001",
                                .user = "u",
                                .started_at = 900 + i,
                                .ended_at = 1000 + i,
                                .end_reason = "released"};
        ck_assert_int_eq(vdi_catalog_record_session(cat, &s, &err), 0);
    }
    int64_t open_id = 0, recent_id = 0;
    ck_assert_int_eq(vdi_catalog_session_begin(cat, "p", "p-002", "old", 10, &open_id, &err), 0);
    ck_assert_int_eq(vdi_catalog_session_begin(cat, "p", "p-003", "new", 4000, &recent_id, &err),
                     0);
    ck_assert_int_eq(vdi_catalog_session_end(cat, recent_id, 5000, "released", 0, &err), 0);

    uint64_t removed = 0;
    ck_assert_int_eq(vdi_catalog_prune_sessions(cat, 2000, 3, &removed, &err), 0);
    ck_assert_uint_eq(removed, 3); /* a batch: more are left */
    ck_assert_int_eq(vdi_catalog_prune_sessions(cat, 2000, 3, &removed, &err), 0);
    ck_assert_uint_eq(removed, 2); /* fewer than a batch: none older is left */
    ck_assert_int_eq(vdi_catalog_prune_sessions(cat, 2000, 3, &removed, &err), 0);
    ck_assert_uint_eq(removed, 0);

    /* The open one (begun long before the cut-off) and the recent one stay. */
    int64_t id = 0;
    ck_assert_int_eq(vdi_catalog_open_session(cat, "p-002", &id, NULL, 0, NULL, &err), 0);
    ck_assert_int_eq(id, open_id);
    uint64_t p95 = 0;
    size_t samples = 0;
    ck_assert_int_eq(vdi_catalog_growth_p95(cat, "p", 1, &p95, &samples, &err), 0);
    ck_assert_uint_eq(samples, 1); /* only the recent finished one */
}
END_TEST

static int plan_row(void *ctx, int ncol, char **cols, char **names)
{
    (void)names;
    char *plan = ctx;
    if (ncol >= 4 && cols[3])
        snprintf(plan + strlen(plan), 1024 - strlen(plan), "%s;", cols[3]);
    return 0;
}

/* The reads a start makes per desktop and per pool, and a batch of old
 * sessions forgotten, are index searches, not scans of every session ever
 * recorded (bench_adopt with a history measures what a scan cost). The SQL
 * is sessions.c's. */
START_TEST(session_reads_use_indexes)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/catalog.db", th_path(dir, "state"));
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    const char *queries[] = {
        "EXPLAIN QUERY PLAN SELECT id, user, started_at FROM sessions WHERE desktop = ? AND "
        "ended_at IS NULL ORDER BY id DESC LIMIT 1",
        "EXPLAIN QUERY PLAN SELECT m, NULL, SUM(c) FROM ( SELECT started_at / 60 AS m, COUNT(*) "
        "AS c FROM sessions  WHERE pool = ?1 AND ended_at IS NULL AND started_at >= ?2 GROUP BY 1 "
        "UNION ALL SELECT started_at / 60, COUNT(*) FROM sessions  WHERE pool = ?1 AND ended_at "
        ">= ?2 AND started_at >= ?2 GROUP BY 1) GROUP BY 1",
        "EXPLAIN QUERY PLAN SELECT ended_at / 60, end_reason, COUNT(*) FROM sessions WHERE pool = "
        "?1 AND ended_at >= ?2 GROUP BY 1, 2",
        "EXPLAIN QUERY PLAN DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE "
        "ended_at IS NOT NULL AND ended_at < ? ORDER BY ended_at LIMIT ?)"};
    const char *expect[] = {"USING INDEX sessions_open (desktop=?)",
                            "USING INDEX sessions_pool (pool=? AND ended_at>?)",
                            "USING INDEX sessions_pool (pool=? AND ended_at>?)",
                            "USING COVERING INDEX sessions_ended (ended_at>? AND ended_at<?)"};
    for (size_t i = 0; i < sizeof queries / sizeof *queries; i++) {
        char plan[1024] = "";
        ck_assert_int_eq(sqlite3_exec(db, queries[i], plan_row, plan, NULL), SQLITE_OK);
        ck_assert_msg(strstr(plan, expect[i]) && !strstr(plan, "SCAN sessions"), "%s: %s",
                      queries[i], plan);
    }
    sqlite3_close(db);
}
END_TEST

START_TEST(lookups_canonicalise_paths)
{
    vdi_seal_result r;
    vdi_error err = {0};
    ck_assert_msg(vdi_seal(cat, gold, &r, &err) == 0, "%s", err.message);
    /* Through a link and a relative spelling, the record is found. */
    char link[4200];
    snprintf(link, sizeof link, "%s/link.qcow2", dir);
    ck_assert_int_eq(symlink(gold, link), 0);
    vdi_gold_info g;
    ck_assert_int_eq(vdi_catalog_gold(cat, link, &g, &err), 0);
    ck_assert_str_eq(g.path, r.gold.path);
    char cwd[4200];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    ck_assert_int_eq(chdir(dir), 0);
    ck_assert_int_eq(vdi_catalog_gold(cat, "./gold.qcow2", &g, &err), 0);
    ck_assert_int_eq(vdi_catalog_set_gold_state(cat, "gold.qcow2", VDI_GOLD_RETIRING, NULL, &err),
                     0);
    ck_assert_int_eq(chdir(cwd), 0);
    ck_assert_int_eq(vdi_catalog_gold(cat, gold, &g, &err), 0);
    ck_assert_int_eq(g.state, VDI_GOLD_RETIRING);

    /* A child, by its recorded path and through a link to its directory. */
    ck_assert_int_eq(vdi_catalog_set_gold_state(cat, gold, VDI_GOLD_SEALED, NULL, &err), 0);
    free(th_must("mkdir -p %s/ds && ln -s ds %s/ds-link", dir, dir));
    vdi_cloner *cl = NULL;
    ck_assert_int_eq(vdi_cloner_new(gold, NULL, &cl, &err), 0);
    vdi_child_meta meta = {.datastore = "ds", .pool = "p", .slot = 1};
    char *child = strdup(th_path(dir, "ds/a.qcow2"));
    ck_assert_msg(vdi_clone_recorded(cat, cl, child, &meta, &err) == 0, "%s", err.message);
    vdi_cloner_free(cl);
    vdi_child_info c;
    ck_assert_int_eq(vdi_catalog_child(cat, child, &c, &err), 0);
    ck_assert_int_eq(vdi_catalog_child(cat, th_path(dir, "ds-link/a.qcow2"), &c, &err), 0);
    ck_assert_str_eq(c.path, child);
    ck_assert_int_eq(vdi_catalog_child(cat, th_path(dir, "ds-link/b.qcow2"), &c, &err), -ENOENT);
    free(child);
}
END_TEST

/* The gold sealed, a datastore directory ds/ beside it, and a cloner of
 * the gold (the caller frees it). */
static vdi_cloner *sealed_gold_cloner(void)
{
    vdi_seal_result r;
    vdi_error err = {0};
    ck_assert_msg(vdi_seal(cat, gold, &r, &err) == 0, "%s", err.message);
    free(th_must("mkdir -p %s/ds", dir));
    vdi_cloner *cl = NULL;
    ck_assert_int_eq(vdi_cloner_new(gold, NULL, &cl, &err), 0);
    return cl;
}

START_TEST(datastore_usage_follows_children)
{
    vdi_error err = {0};
    vdi_cloner *cl = sealed_gold_cloner();
    vdi_child_meta meta = {.datastore = "ds", .pool = "p", .slot = 1};
    char *paths[3];
    for (int i = 0; i < 3; i++) {
        paths[i] = strdup(th_path(dir, i == 0   ? "ds/a.qcow2"
                                       : i == 1 ? "ds/b.qcow2"
                                                : "ds/c.qcow2"));
        ck_assert_msg(vdi_clone_recorded(cat, cl, paths[i], &meta, &err) == 0, "%s", err.message);
    }
    vdi_cloner_free(cl);
    vdi_datastore_usage u;
    ck_assert_int_eq(vdi_catalog_datastore_usage(cat, "ds", &u, &err), 0);
    ck_assert_uint_eq(u.children, 3);
    ck_assert_uint_eq(u.virtual_size, 3ULL * 64 << 20);
    vdi_space_report walk;
    ck_assert_int_eq(vdi_space_measure(th_path(dir, "ds"), 0, 0, &walk, &err), 0);
    ck_assert_uint_eq(u.allocated, walk.children_allocated);
    /* A refresh, a delete and a record written again keep it exact. */
    ck_assert_int_eq(vdi_catalog_set_child_bytes(cat, paths[0], 1 << 20, &err), 0);
    ck_assert_int_eq(vdi_child_delete(cat, paths[1], NULL, &err), 0);
    ck_assert_int_eq(vdi_catalog_datastore_usage(cat, "ds", &u, &err), 0);
    ck_assert_uint_eq(u.children, 2);
    ck_assert_uint_eq(u.allocated, (1 << 20) + walk.children_allocated / 3);
    /* Reopening rebuilds it from the children and finds the same. */
    vdi_catalog_close(cat);
    ck_assert_int_eq(vdi_catalog_open(th_path(dir, "state"), &cat, &err), 0);
    vdi_datastore_usage again;
    ck_assert_int_eq(vdi_catalog_datastore_usage(cat, "ds", &again, &err), 0);
    ck_assert_uint_eq(again.children, u.children);
    ck_assert_uint_eq(again.allocated, u.allocated);
    ck_assert_uint_eq(again.virtual_size, u.virtual_size);
    for (int i = 0; i < 3; i++)
        free(paths[i]);
}
END_TEST

/* A desktop's end deletes its child and closes its session in one
 * transaction: two commits (the delete's intent, then the rest), the
 * session's final size the child's, and nothing of the child left. */
START_TEST(a_child_deleted_at_a_session_end_closes_it_in_one_commit)
{
    vdi_error err = {0};
    vdi_cloner *cl = sealed_gold_cloner();
    vdi_child_meta meta = {.datastore = "ds", .pool = "p", .slot = 1};
    const char *child = th_path(dir, "ds/p-001.qcow2");
    ck_assert_msg(vdi_clone_recorded(cat, cl, child, &meta, &err) == 0, "%s", err.message);
    vdi_cloner_free(cl);
    int64_t id = 0;
    ck_assert_int_eq(vdi_catalog_session_begin(cat, "p", "p-001", "alice", 100, &id, &err), 0);
    uint64_t before = vdi_catalog_last_commit(cat), bytes = 0;
    vdi_session_close session = {.id = id, .ended_at = 200, .reason = "released"};
    ck_assert_msg(vdi_child_delete_ending(cat, child, &session, &bytes, &err) == 0, "%s",
                  err.message);
    ck_assert_uint_eq(vdi_catalog_last_commit(cat), before + 2);
    ck_assert_uint_gt(bytes, 0);
    ck_assert_int_eq(access(child, F_OK), -1);
    vdi_child_info info;
    ck_assert_int_eq(vdi_catalog_child(cat, child, &info, NULL), -ENOENT);
    ck_assert_int_eq(vdi_catalog_open_session(cat, "p-001", &id, NULL, 0, NULL, NULL), -ENOENT);
    uint64_t p95 = 0;
    size_t samples = 0;
    ck_assert_int_eq(vdi_catalog_growth_p95(cat, "p", 1, &p95, &samples, &err), 0);
    ck_assert_uint_eq(p95, bytes);
    vdi_datastore_usage u;
    ck_assert_int_eq(vdi_catalog_datastore_usage(cat, "ds", &u, &err), 0);
    ck_assert_uint_eq(u.children, 0);
    /* Without a session (an end before any user) it is a plain delete. */
    ck_assert_int_eq(vdi_child_delete_ending(cat, child, NULL, NULL, &err), 0);
}
END_TEST

/* /metrics counts the catalog's statements: one per row lookup, whether it
 * finds the row or not, and none for reading the counts. */
START_TEST(statements_are_counted_one_per_lookup)
{
    vdi_error err = {0};
    uint64_t s0 = vdi_catalog_statements(cat);
    vdi_child_info info;
    ck_assert_int_lt(vdi_catalog_child(cat, "/nowhere/none.qcow2", &info, &err), 0);
    ck_assert_uint_eq(vdi_catalog_statements(cat), s0 + 1);
    uint64_t commits, flushes;
    vdi_catalog_counts(cat, &commits, &flushes);
    ck_assert_uint_eq(vdi_catalog_statements(cat), s0 + 1);
    int64_t id = 0;
    ck_assert_int_eq(vdi_catalog_session_begin(cat, "p", "p-001", "alice", 100, &id, &err), 0);
    ck_assert_uint_gt(vdi_catalog_statements(cat), s0 + 1);
}
END_TEST

/* Commits are numbered; a session's start and end wait for no flush, a
 * flush puts them on disk once, and a flushed write carries what came
 * before it. */
START_TEST(unflushed_commits_reach_the_disk_with_a_flush)
{
    vdi_error err = {0};
    uint64_t commits0, flushes0, commits, flushes;
    vdi_catalog_counts(cat, &commits0, &flushes0);
    ck_assert_uint_eq(commits0, vdi_catalog_last_commit(cat));
    int64_t id = 0;
    ck_assert_int_eq(vdi_catalog_session_begin(cat, "p", "p-001", "alice", 100, &id, &err), 0);
    uint64_t begun = vdi_catalog_last_commit(cat);
    ck_assert_uint_eq(begun, commits0 + 1);
    ck_assert(!vdi_catalog_commit_on_disk(cat, begun));
    vdi_catalog_counts(cat, &commits, &flushes);
    ck_assert_uint_eq(flushes, flushes0);
    ck_assert_int_eq(vdi_catalog_flush(cat, begun, &err), 0);
    ck_assert(vdi_catalog_commit_on_disk(cat, begun));
    vdi_catalog_counts(cat, &commits, &flushes);
    ck_assert_uint_eq(flushes, flushes0 + 1);
    /* Asked again, a flush already done costs nothing. */
    ck_assert_int_eq(vdi_catalog_flush(cat, begun, &err), 0);
    vdi_catalog_counts(cat, &commits, &flushes);
    ck_assert_uint_eq(flushes, flushes0 + 1);
    ck_assert_int_eq(vdi_catalog_session_end(cat, id, 200, "released", 0, &err), 0);
    uint64_t ended = vdi_catalog_last_commit(cat);
    ck_assert(!vdi_catalog_commit_on_disk(cat, ended));
    /* A seal is on disk when it returns, and so is the end before it. */
    vdi_seal_result r;
    ck_assert_msg(vdi_seal(cat, gold, &r, &err) == 0, "%s", err.message);
    ck_assert_uint_gt(vdi_catalog_last_commit(cat), ended);
    ck_assert(vdi_catalog_commit_on_disk(cat, vdi_catalog_last_commit(cat)));
    ck_assert(vdi_catalog_commit_on_disk(cat, ended));
}
END_TEST

/* ---- several threads on one catalog -------------------------------------------- */

#define THREADS 6
#define ROUNDS 40

typedef struct worker {
    int index;
    int failures;
    char error[1100];
} worker;

static void *churn(void *arg)
{
    worker *w = arg;
    vdi_cloner *cl = NULL;
    vdi_error err = {0};
    if (vdi_cloner_new(gold, NULL, &cl, &err) < 0) {
        w->failures++;
        snprintf(w->error, sizeof w->error, "%s", err.message);
        return NULL;
    }
    for (int i = 0; i < ROUNDS; i++) {
        char child[4300], desktop[64];
        snprintf(child, sizeof child, "%s/ds/t%d-%03d.qcow2", dir, w->index, i);
        snprintf(desktop, sizeof desktop, "t%d-%03d", w->index, i);
        vdi_child_meta meta = {.datastore = "ds", .pool = "p", .slot = i};
        int64_t id = 0;
        vdi_child_info *kids = NULL;
        size_t n = 0;
        /* A clone (intent + file + transaction), a session, a listing and a
         * delete, from each thread at once. */
        if (vdi_clone_recorded(cat, cl, child, &meta, &err) < 0 ||
            vdi_catalog_session_begin(cat, "p", desktop, "u", i, &id, &err) < 0 ||
            vdi_catalog_children(cat, gold, &kids, &n, &err) < 0 ||
            vdi_catalog_session_end(cat, id, i + 1, "released", 0, &err) < 0 ||
            vdi_child_delete(cat, child, NULL, &err) < 0) {
            w->failures++;
            snprintf(w->error, sizeof w->error, "%s", err.message);
        }
        free(kids);
    }
    vdi_cloner_free(cl);
    return NULL;
}

/* Runs fn on THREADS threads at once, each with its own worker, and fails
 * the test with the last error of any thread that failed. */
static void run_workers(void *(*fn)(void *))
{
    pthread_t t[THREADS];
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.index = i};
        ck_assert_int_eq(pthread_create(&t[i], NULL, fn, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        ck_assert_msg(w[i].failures == 0, "thread %d: %d failures, last: %s", i, w[i].failures,
                      w[i].error);
    }
}

/* The flush group's promise, under threads: a wait returns only once a
 * flush that began after the change covers it, and waiters share flushes.
 * The "disk" keeps what was written when a flush began. */
static vdi_flush_group group;
static _Atomic uint64_t written, on_disk;

static int slow_flush(void *arg)
{
    (void)arg;
    uint64_t snapshot = atomic_load(&written);
    usleep(2000);
    for (uint64_t d = atomic_load(&on_disk); d < snapshot;)
        if (atomic_compare_exchange_weak(&on_disk, &d, snapshot))
            break;
    return 0;
}

static void *write_and_wait(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < ROUNDS; i++) {
        uint64_t mine = atomic_fetch_add(&written, 1) + 1;
        uint64_t change = vdi_flush_group_change(&group);
        if (vdi_flush_group_wait(&group, change, slow_flush, NULL) < 0 ||
            atomic_load(&on_disk) < mine) {
            w->failures++;
            snprintf(w->error, sizeof w->error, "write %llu returned before it was on disk",
                     (unsigned long long)mine);
        }
        if (i % 3 == 0)
            usleep((unsigned)(w->index * 300)); /* arrive during flushes, not in step */
    }
    return NULL;
}

START_TEST(flush_group_covers_every_waiter_and_shares_flushes)
{
    vdi_flush_group_init(&group);
    atomic_store(&written, 0);
    atomic_store(&on_disk, 0);
    run_workers(write_and_wait);
    uint64_t flushes = vdi_flush_group_flushes(&group);
    ck_assert_uint_eq(vdi_flush_group_last(&group), THREADS * ROUNDS);
    ck_assert_uint_lt(flushes, THREADS * ROUNDS / 2); /* shared */
    ck_assert(vdi_flush_group_covers(&group, THREADS * ROUNDS));
    vdi_flush_group_destroy(&group);
}
END_TEST

START_TEST(threads_share_one_catalog)
{
    vdi_seal_result r;
    vdi_error err = {0};
    ck_assert_msg(vdi_seal(cat, gold, &r, &err) == 0, "%s", err.message);
    free(th_must("mkdir -p %s/ds", dir));
    uint64_t commits0, flushes0;
    vdi_catalog_counts(cat, &commits0, &flushes0);
    run_workers(churn);
    /* Each round commits six times (a clone's intent and record, a session's
     * start and end, a delete's intent and record); only the two intents
     * wait for the disk, and concurrent ones may share a flush. */
    uint64_t commits, flushes;
    vdi_catalog_counts(cat, &commits, &flushes);
    ck_assert_uint_eq(commits - commits0, 6 * THREADS * ROUNDS);
    ck_assert_uint_le(flushes - flushes0, 2 * THREADS * ROUNDS);
    /* Everything was recorded and removed; no intent is left behind. */
    vdi_child_info *kids = NULL;
    size_t n = 0;
    ck_assert_int_eq(vdi_catalog_children(cat, NULL, &kids, &n, &err), 0);
    free(kids);
    ck_assert_uint_eq(n, 0);
    uint64_t p95 = 0;
    size_t samples = 0;
    ck_assert_int_eq(vdi_catalog_growth_p95(cat, "p", 1, &p95, &samples, &err), 0);
    ck_assert_uint_eq(samples, THREADS * ROUNDS > 500 ? 500 : THREADS * ROUNDS);
    vdi_catalog_close(cat);
    cat = NULL;
    ck_assert_int_eq(vdi_catalog_open(th_path(dir, "state"), &cat, &err), 0);
    ck_assert_uint_eq(vdi_catalog_rolled_forward(cat) + vdi_catalog_rolled_back(cat), 0);
    char *left = th_must("ls -A %s/ds", dir);
    ck_assert_str_eq(left, "");
    free(left);
}
END_TEST

TH_MAIN("catalog",
        {"catalog",
         setup,
         teardown,
         120,
         {sessions_and_growth, old_finished_sessions_are_pruned, session_reads_use_indexes,
          lookups_canonicalise_paths, datastore_usage_follows_children,
          a_child_deleted_at_a_session_end_closes_it_in_one_commit,
          statements_are_counted_one_per_lookup, unflushed_commits_reach_the_disk_with_a_flush,
          flush_group_covers_every_waiter_and_shares_flushes, threads_share_one_catalog, NULL}})
