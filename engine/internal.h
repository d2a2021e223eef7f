/* internal.h — what the engine's modules share with each other and nobody
 * else: the intent journal, the clone steps, running qemu-img, fingerprints. */
#ifndef VDI_ENGINE_INTERNAL_H
#define VDI_ENGINE_INTERNAL_H

#include "vdi_engine.h"

#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

/* catalog.c */
sqlite3 *vdi_catalog_db_(vdi_catalog *cat);
/* Runs SQL with no result rows; returns 0 or -EIO with err set. */
int vdi_catalog_exec_(vdi_catalog *cat, const char *sql, vdi_error *err);
/* A statement of the catalog (cached by the SQL literal's address); the
 * catalog's lock is held from prepare to finish. write_ steps a statement
 * without rows, finishes it, and flushes a commit; write_unflushed_ leaves
 * the commit to a later flush (see "Group commit" in catalog.c). */
int vdi_catalog_prepare_(vdi_catalog *cat, const char *sql, sqlite3_stmt **st, vdi_error *err);
void vdi_catalog_finish_(vdi_catalog *cat, sqlite3_stmt *st);
int vdi_catalog_write_(vdi_catalog *cat, sqlite3_stmt *st, int64_t *rowid, vdi_error *err);
/* Prepares `sql` (a string literal: the statement cache knows it by its
 * address), binds `text` to its one parameter and writes (flushed), as
 * vdi_catalog_write_: for the "DELETE ... WHERE path = ?" of each table. */
int vdi_catalog_write_text_(vdi_catalog *cat, const char *sql, const char *text, vdi_error *err);
int vdi_catalog_write_unflushed_(vdi_catalog *cat, sqlite3_stmt *st, int64_t *rowid,
                                 vdi_error *err);
/* As write_unflushed_, and *commit receives the commit's number (0 inside
 * a transaction), for vdi_catalog_flush later. */
int vdi_catalog_write_numbered_(vdi_catalog *cat, sqlite3_stmt *st, int64_t *rowid,
                                uint64_t *commit, vdi_error *err);
int vdi_catalog_db_error_(vdi_catalog *cat, vdi_error *err, const char *what);
/* Steps a prepared statement (parameters bound) through its rows into a
 * malloc'd array of `size`-byte rows filled by from_row, finishes it, and
 * hands the array over (*out NULL, *count 0 for no rows); `what` names the
 * read in an error. */
int vdi_catalog_rows_(vdi_catalog *cat, sqlite3_stmt *st, size_t size,
                      void (*from_row)(sqlite3_stmt *st, void *row), const char *what, void **out,
                      size_t *count, vdi_error *err);
/* The catalog names files by their canonical path: a lookup resolves the
 * path it is given (relative, through links) into `real` when the file
 * exists, and uses it as given otherwise (a record whose file is gone). */
const char *vdi_catalog_canonical_(const char *path, char real[PATH_MAX]);
/* Steps a lookup by path (parameter 1 of st): the path as given first, then,
 * when nothing is recorded under it, its canonical form (*path is then
 * `real`). Paths are recorded canonical and the daemon looks up paths it was
 * given by the catalog or the config, so the usual lookup resolves nothing:
 * realpath reads a link per component, 30 readlinks per desktop cycle. A
 * recorded path whose directory became a link is found as recorded; the
 * guard's fingerprint check still compares it with the file there. */
int vdi_catalog_step_by_path_(sqlite3_stmt *st, const char **path, char real[PATH_MAX]);
/* The one row `sql` (a string literal whose one parameter is a path) finds
 * for *path, looked up as vdi_catalog_step_by_path_ does (*path may then
 * point at `real`), read into `row` by from_row: 0; -ENOENT with err
 * untouched, for the caller to say what is not known; or an error naming
 * `what`. */
int vdi_catalog_row_by_path_(vdi_catalog *cat, const char *sql, const char **path,
                             char real[PATH_MAX], void (*from_row)(sqlite3_stmt *st, void *row),
                             void *row, const char *what, vdi_error *err);
/* A text column into a fixed buffer ("" for NULL), truncated to fit. */
void vdi_copy_text_(char *dst, size_t len, const unsigned char *src);
/* Intents: written (and synced) before the first step of an operation. */
int vdi_intent_begin_(vdi_catalog *cat, const char *op, const char *target, const char *data,
                      int64_t *id, vdi_error *err);
/* The same intent, committed but not yet flushed: the caller may only make
 * temporary files (which the sweep removes) until vdi_catalog_flush(cat,
 * *commit) has returned 0. A clone overlaps that flush with its writing. */
int vdi_intent_begin_pending_(vdi_catalog *cat, const char *op, const char *target,
                              const char *data, int64_t *id, uint64_t *commit, vdi_error *err);
int vdi_intent_end_(vdi_catalog *cat, int64_t id, vdi_error *err);
int vdi_catalog_add_child_(vdi_catalog *cat, const char *path, const char *parent,
                           const vdi_child_meta *meta, uint64_t bytes, uint64_t virtual_size,
                           vdi_error *err);
int vdi_catalog_remove_child_(vdi_catalog *cat, const char *path, vdi_error *err);
/* A rescan's correction of a child's row: its datastore, what it holds and
 * its virtual size (the per-datastore usage follows by trigger). */
int vdi_catalog_set_child_usage_(vdi_catalog *cat, const char *path, const char *datastore,
                                 uint64_t bytes, uint64_t virtual_size, vdi_error *err);
int vdi_catalog_update_child_parent_(vdi_catalog *cat, const char *path, const char *parent,
                                     vdi_error *err);
int vdi_catalog_put_gold_(vdi_catalog *cat, const vdi_gold_info *g, vdi_error *err);
int vdi_catalog_delete_gold_(vdi_catalog *cat, const char *path, vdi_error *err);
int vdi_catalog_begin_(vdi_catalog *cat, vdi_error *err);
int vdi_catalog_commit_(vdi_catalog *cat, vdi_error *err);
/* Commits without waiting for the disk: only for a transaction that closes
 * an intent flushed earlier, whose loss recovery repairs to the same result
 * (see "Group commit" in catalog.c). */
int vdi_catalog_commit_unflushed_(vdi_catalog *cat, vdi_error *err);
void vdi_catalog_rollback_(vdi_catalog *cat);

/* The storage half of vdi_catalog_open (journal.c adds recovery). */
int vdi_catalog_open_storage_(const char *state_dir, vdi_catalog **out, vdi_error *err);
void vdi_catalog_count_recovered_(vdi_catalog *cat, bool forward);

/* Intents left by processes that no longer run, oldest first. */
typedef struct vdi_intent_row {
    int64_t id;
    char *op, *target, *data;
} vdi_intent_row;
int vdi_intents_leftover_(vdi_catalog *cat, vdi_intent_row **out, size_t *count, vdi_error *err);
void vdi_intent_rows_free_(vdi_intent_row *rows, size_t count);

/* Recoverers, one per journaled operation, called by journal.c for each
 * leftover intent (see its table). Return 1 rolled forward, 0 rolled back,
 * negative on failure. */
int vdi_recover_clone_(vdi_catalog *cat, const char *target, const char *data, vdi_error *err);
/* vdi_guard_check on a gold's row already read from the catalog. */
int vdi_guard_check_gold_(vdi_catalog *cat, const vdi_gold_info *g, bool full, vdi_error *err);
int vdi_recover_delete_(vdi_catalog *cat, const char *target, const char *data, vdi_error *err);
int vdi_recover_seal_(vdi_catalog *cat, const char *target, const char *data, vdi_error *err);
int vdi_recover_merge_(vdi_catalog *cat, const char *op, const char *target, const char *data,
                       vdi_error *err);
int vdi_recover_reparent_(vdi_catalog *cat, const char *target, const char *data,
                          vdi_error *err);
int vdi_recover_version_(vdi_catalog *cat, const char *target, const char *data, vdi_error *err);

/* clone.c: the two halves of making a child, for journaled callers. */
int vdi_cloner_write_temp_(vdi_cloner *c, const char *child_path, bool sync, char **temp_out,
                           vdi_error *err);
int vdi_place_noreplace_(const char *temp, const char *final, vdi_error *err);
bool vdi_cloner_sync_(const vdi_cloner *c);

/* flushgroup.c: threads that each need every change so far on disk share
 * one flush (see the comment there). */
typedef struct vdi_flush_group {
    pthread_mutex_t lock;
    /* Waiters by the flush that covers them: done[generation & 1] for the
     * running one, done[(generation + 1) & 1] for the one after it. */
    pthread_cond_t done[2];
    unsigned waiting[2];      /* under lock: how many wait on each */
    _Atomic uint64_t changes; /* changes numbered so far */
    uint64_t flushed;         /* under lock: every change up to this is on disk */
    uint64_t flushes;         /* under lock: flushes done */
    uint64_t generation;      /* under lock: flushes begun */
    uint64_t running_covers;  /* under lock, while running: what the flush covers */
    bool running;             /* under lock: a leader is flushing */
} vdi_flush_group;
void vdi_flush_group_init(vdi_flush_group *g);
void vdi_flush_group_destroy(vdi_flush_group *g);
/* Numbers a change just made (its effects are in the OS's cache). */
uint64_t vdi_flush_group_change(vdi_flush_group *g);
uint64_t vdi_flush_group_last(vdi_flush_group *g);
/* Whether change number `change` is on disk; never waits for a flush. */
bool vdi_flush_group_covers(vdi_flush_group *g, uint64_t change);
/* Returns once `change` is on disk, running flush(arg) as the leader when
 * no flush in progress will cover it: 0, or the flush's negative errno. */
int vdi_flush_group_wait(vdi_flush_group *g, uint64_t change, int (*flush)(void *arg), void *arg);
uint64_t vdi_flush_group_flushes(vdi_flush_group *g);
/* The directory part of a path ("." or "/" when it has none). */
void vdi_dir_of_(const char *path, char *buf, size_t len);
/* Flushes the directory holding path (after a rename or unlink in it),
 * shared with other threads that changed the same directory meanwhile. */
int vdi_sync_dir_of_(const char *path);

/* qemu.c: runs qemu-img with arguments; with progress, parses its -p output.
 * On failure err carries qemu-img's own last lines. */
int vdi_qemu_img_(const char *const *argv, vdi_progress_fn progress, void *ctx, vdi_error *err);

/* image.c: calls fn for every disk image directly in dir (hidden files,
 * such as temporaries, and anything that is not an image are skipped). */
typedef void (*vdi_image_visit_fn)(const char *path, const vdi_image *img, void *ctx);
int vdi_for_each_image_(const char *dir, vdi_image_visit_fn fn, void *ctx);

/* guard.c */
void vdi_fingerprint_from_stat_(const struct stat *st, vdi_fingerprint *fp);

/* Writes a small text file atomically: temp + fsync + rename + dir fsync. */
int vdi_write_file_atomic_(const char *path, const char *text, vdi_error *err);

#endif
