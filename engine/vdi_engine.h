/* vdi_engine.h — the one public header of libvdiengine: everything about
 * disk images on disk. No libuv, no libvirt; usable alone by the CLI's offline
 * commands, the service and tests.
 *
 * Conventions: functions return 0 or a negative errno-style code and fill the
 * optional vdi_error with a sentence that names the file and what to do.
 * Objects are opaque and owned by the caller once returned. */
#ifndef VDI_ENGINE_H
#define VDI_ENGINE_H

#include "vdi_common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- formats ------------------------------------------------------------ */

typedef enum vdi_format {
    VDI_FORMAT_UNKNOWN = 0,
    VDI_FORMAT_RAW,   /* "fixed" */
    VDI_FORMAT_QCOW2, /* "dynamic", or a differencing child when it has a backing file */
} vdi_format;

/* "raw", "qcow2" or "unknown". */
const char *vdi_format_name(vdi_format format);

/* ---- image: one file, probed --------------------------------------------- */

typedef struct vdi_image vdi_image;

/* Opens `path` read-only and probes it. Refuses, with a message saying what
 * the file looks like: a missing path, a directory, a device, a FIFO, an
 * empty file, a VHD/VHDX (differencing ones by name), other image formats,
 * archives, text, and qcow2 headers that fail validation. */
int vdi_image_open(const char *path, vdi_image **out, vdi_error *err);
void vdi_image_close(vdi_image *img);
/* Whether path is a VHD (1) or VHDX (2) that stands alone, or neither (0);
 * -ENOTSUP with the reason for a differencing one (QEMU cannot follow its
 * parent). Such files are only ever converted (gold import), never used. */
int vdi_image_vhd_kind(const char *path, vdi_error *err);

const char *vdi_image_path(const vdi_image *img);
vdi_format vdi_image_format(const vdi_image *img);
uint64_t vdi_image_virtual_size(const vdi_image *img);
uint64_t vdi_image_file_size(const vdi_image *img);
/* Bytes the filesystem has allocated for the file (st_blocks * 512). */
uint64_t vdi_image_allocated_bytes(const vdi_image *img);
/* qcow2 version (2 or 3), 0 for raw. */
int vdi_image_qcow2_version(const vdi_image *img);
/* Cluster size in bytes for qcow2, 0 for raw. */
uint32_t vdi_image_cluster_size(const vdi_image *img);
bool vdi_image_extended_l2(const vdi_image *img);
/* qcow2 "dirty" bit: open for writing with lazy refcounts, or not closed cleanly. */
bool vdi_image_dirty(const vdi_image *img);
/* Backing file name exactly as stored, or NULL when the image has no parent. */
const char *vdi_image_backing_name(const vdi_image *img);
/* Backing format as recorded in the header extension, or NULL when absent. */
const char *vdi_image_backing_format(const vdi_image *img);
/* Device and inode, to tell files apart (loops, moved parents). */
void vdi_image_identity(const vdi_image *img, uint64_t *dev, uint64_t *ino);

/* Resolves a backing file name the way QEMU does: absolute names as they are,
 * relative names against the directory of the child's path. Refuses protocol
 * names ("nbd:", "json:"). *out is malloc'd. */
int vdi_backing_path(const char *child_path, const char *backing_name, char **out,
                     vdi_error *err);
/* vdi_backing_path, then canonical (realpath) when the parent exists, so
 * that it compares equal to the catalog's paths; as resolved when not. */
int vdi_backing_real_path(const char *child_path, const char *backing_name, char **out,
                          vdi_error *err);

/* ---- chain: an image and all its parents down to the root ----------------- */

typedef struct vdi_chain vdi_chain;

/* Hard limit on links followed, whatever max_depth says. */
#define VDI_CHAIN_MAX_LINKS 64

/* Opens `path` and every parent. max_depth limits the number of backing links
 * (0: only the hard limit). Fails on a missing link, a loop, a backing format
 * that does not match the parent's real format, or too deep a chain. */
int vdi_chain_resolve(const char *path, unsigned max_depth, vdi_chain **out, vdi_error *err);
void vdi_chain_free(vdi_chain *chain);

/* Links, top first: link 0 is `path`, the last one is the root. */
size_t vdi_chain_length(const vdi_chain *chain);
const vdi_image *vdi_chain_link(const vdi_chain *chain, size_t index);
const vdi_image *vdi_chain_root(const vdi_chain *chain);
/* Backing links below the top: 0 for a root, 1 for a child of a root. */
unsigned vdi_chain_depth(const vdi_chain *chain);
/* Sum of the allocated bytes of every link. */
uint64_t vdi_chain_allocated_bytes(const vdi_chain *chain);
/* Things that work but an operator should know (no backing format recorded,
 * a child smaller than its parent, a dirty qcow2). */
size_t vdi_chain_warning_count(const vdi_chain *chain);
const char *vdi_chain_warning(const vdi_chain *chain, size_t index);

/* ---- clone: differencing children, written natively ------------------------ */

typedef struct vdi_clone_options {
    uint64_t virtual_size;  /* 0: the parent's; larger allowed, smaller refused */
    uint32_t cluster_size;  /* 0: VDI_CLONE_DEFAULT_CLUSTER_SIZE */
    int extended_l2;        /* -1: default for the cluster size, 0 off, 1 on */
    bool sync;              /* make each child durable (fsync file and directory) */
    unsigned max_depth;     /* refuse when the child would be deeper; 0: no limit */
} vdi_clone_options;

/* Chosen from bench/README.md: 128 KiB clusters with extended L2 entries give
 * 4 KiB subclusters, so a guest's 4 KiB write over the gold copies nothing. */
#define VDI_CLONE_DEFAULT_CLUSTER_SIZE (128u * 1024)

void vdi_clone_options_init(vdi_clone_options *opts);

/* A cloner holds one probed parent and a prebuilt child header, so each child
 * costs a handful of syscalls. The parent is opened read-only and never
 * written. */
typedef struct vdi_cloner vdi_cloner;

int vdi_cloner_new(const char *parent_path, const vdi_clone_options *opts, vdi_cloner **out,
                   vdi_error *err);
void vdi_cloner_free(vdi_cloner *cloner);  /* also removes staged, uncommitted files */

/* The parent's chain as resolved when the cloner was made. */
const vdi_chain *vdi_cloner_parent_chain(const vdi_cloner *cloner);
/* The absolute backing file name written into every child. */
const char *vdi_cloner_backing_name(const vdi_cloner *cloner);
uint64_t vdi_cloner_virtual_size(const vdi_cloner *cloner);

/* Makes one child at `child_path`: written to a temporary name in the same
 * directory, synced when opts.sync, then renamed. Refuses an existing path;
 * on any failure no file is left under either name. */
int vdi_cloner_create(vdi_cloner *cloner, const char *child_path, vdi_error *err);

/* Batch path: stage writes each child under its temporary name; commit makes
 * them all durable with one syncfs (when opts.sync), renames them into place
 * and syncs the directories. A crash before commit leaves only temporary
 * files (see vdi_clone_sweep_temporaries), never a half-made child. Commit
 * renames what it can and returns the first error; `committed` (optional)
 * receives how many children now exist. */
int vdi_cloner_stage(vdi_cloner *cloner, const char *child_path, vdi_error *err);
int vdi_cloner_commit(vdi_cloner *cloner, size_t *committed, vdi_error *err);

/* One child, no cloner to keep. */
int vdi_clone(const char *parent_path, const char *child_path, const vdi_clone_options *opts,
              vdi_error *err);

/* Temporary files are named with this prefix, the writer's pid and a counter. */
#define VDI_TEMP_PREFIX ".vdi-tmp-"

/* Removes temporary files in `dir` left by writers that no longer run.
 * Returns how many were removed, or a negative code. */
int vdi_clone_sweep_temporaries(const char *dir, vdi_error *err);

/* ---- content hash -------------------------------------------------------- */

#define VDI_HASH_SIZE 32

/* SHA-256 over a file's content, defined by the content alone: the file is cut
 * into 64 KiB blocks, every block that is not all zeros contributes its offset
 * and bytes, and the size closes the hash. Holes are skipped without being
 * read (SEEK_DATA/SEEK_HOLE), so a sparse 2 TiB gold hashes in the time its
 * data takes, and punching or filling zero ranges does not change the hash. */
int vdi_content_hash(const char *path, uint8_t out[VDI_HASH_SIZE], vdi_error *err);
/* The same hash over bytes fed in order (an image read through a stream,
 * such as a libvirt volume download): equal to vdi_content_hash of a file
 * with those bytes. */
typedef struct vdi_hasher vdi_hasher;
vdi_hasher *vdi_hasher_new(void);
void vdi_hasher_update(vdi_hasher *h, const void *data, size_t len);
/* The hash of everything fed; frees h. -ENOMEM or -EIO on failure. */
int vdi_hasher_finish(vdi_hasher *h, uint8_t out[VDI_HASH_SIZE]);
void vdi_hasher_free(vdi_hasher *h);

/* Lower-case hex of a hash into buf (at least 2 * VDI_HASH_SIZE + 1 bytes). */
const char *vdi_hash_hex(const uint8_t hash[VDI_HASH_SIZE], char *buf, size_t len);

/* ---- catalog: what the file format cannot answer ----------------------------
 * SQLite (WAL) in the state directory: golds with their fingerprints,
 * children with their parents, sessions, and an intent journal. Every
 * multi-step operation writes its intent first; opening the catalog finishes
 * or rolls back whatever a crash interrupted. */

typedef struct vdi_catalog vdi_catalog;

/* $VDIPOOL_STATE_DIR, or /var/lib/vdipool. */
const char *vdi_state_dir_default(void);

int vdi_catalog_open(const char *state_dir, vdi_catalog **out, vdi_error *err);
void vdi_catalog_close(vdi_catalog *cat);

/* Durability. Every commit gets a number. Most commits are on disk when the
 * call that made them returns; a session's start and end and the record
 * that closes a clone's or a delete's intent are committed without waiting
 * for the disk (they survive a crash of the process, and a power loss only
 * once a later flush covers them). A caller that must promise more (an
 * acquire's answer) asks whether a commit is on disk without blocking, and
 * flushes on a worker: concurrent flushes are merged (group commit). */
uint64_t vdi_catalog_last_commit(vdi_catalog *cat);
bool vdi_catalog_commit_on_disk(vdi_catalog *cat, uint64_t commit);
/* Blocks until commit number `commit` is on disk. */
int vdi_catalog_flush(vdi_catalog *cat, uint64_t commit, vdi_error *err);
/* Commits and disk flushes so far, for /metrics. */
void vdi_catalog_counts(vdi_catalog *cat, uint64_t *commits, uint64_t *flushes);
/* Statements run on the catalog so far (row reads and writes, each one hold
 * of its lock; not BEGIN and COMMIT), for /metrics. */
uint64_t vdi_catalog_statements(vdi_catalog *cat);
const char *vdi_catalog_state_dir(const vdi_catalog *cat);
/* Interrupted operations that opening the catalog completed / undid. */
unsigned vdi_catalog_rolled_forward(const vdi_catalog *cat);
unsigned vdi_catalog_rolled_back(const vdi_catalog *cat);

typedef struct vdi_fingerprint {
    uint64_t size, dev, ino;
    int64_t mtime_ns, ctime_ns;
    uint8_t hash[VDI_HASH_SIZE];
} vdi_fingerprint;

typedef enum vdi_gold_state {
    VDI_GOLD_SEALED,
    VDI_GOLD_RETIRING, /* no new clones; released when its last child is gone */
    VDI_GOLD_RETIRED,
    VDI_GOLD_TAINTED,  /* changed since sealed: no clones, children orphaned */
} vdi_gold_state;

const char *vdi_gold_state_name(vdi_gold_state state);

/* Protections that took effect on a sealed gold. */
#define VDI_PROTECT_READONLY 1u  /* mode 0440 */
#define VDI_PROTECT_OWNER 2u     /* owned by QEMU's user, so libvirt has nothing to chown */
#define VDI_PROTECT_IMMUTABLE 4u /* FS_IMMUTABLE_FL */

typedef struct vdi_gold_info {
    int64_t id;
    char path[4096];
    vdi_format format;
    uint64_t virtual_size;
    vdi_fingerprint fp;
    int64_t sealed_at; /* unix seconds */
    vdi_gold_state state;
    unsigned protections;
    char reason[512]; /* why it is tainted */
} vdi_gold_info;

typedef struct vdi_child_info {
    int64_t id;
    char path[4096];
    char parent[4096];   /* absolute path of its parent when it was made */
    char datastore[64];  /* "" when not made for a pool */
    char pool[64];
    int slot;            /* -1 when none */
    int64_t created_at;
    uint64_t last_bytes; /* allocated bytes when last measured */
    char host[64];       /* the host it was made for; "" when none */
    uint64_t virtual_size; /* its guest disk's size, as recorded (0 in old catalogs) */
} vdi_child_info;

/* Calls fn for every child the catalog knows, in path order, without
 * holding them all in memory (a datastore may have tens of thousands); fn
 * returning non-zero stops the walk and is returned. fn runs under the
 * catalog's lock and must not call the catalog. */
int vdi_catalog_each_child(vdi_catalog *cat, int (*fn)(void *ctx, const vdi_child_info *child),
                           void *ctx, vdi_error *err);

/* -ENOENT when the path is not a sealed (or retiring, tainted) gold. */
int vdi_catalog_gold(vdi_catalog *cat, const char *path, vdi_gold_info *out, vdi_error *err);
/* All golds; *out is malloc'd. */
int vdi_catalog_golds(vdi_catalog *cat, vdi_gold_info **out, size_t *count, vdi_error *err);
int vdi_catalog_child(vdi_catalog *cat, const char *path, vdi_child_info *out, vdi_error *err);
/* How many children are recorded with `parent`, without reading them (a
 * gold of a large pool has thousands). */
int vdi_catalog_count_children(vdi_catalog *cat, const char *parent, size_t *count,
                               vdi_error *err);
/* Children recorded with `parent` (or all children when parent is NULL). */
int vdi_catalog_children(vdi_catalog *cat, const char *parent, vdi_child_info **out,
                         size_t *count, vdi_error *err);
int vdi_catalog_set_gold_state(vdi_catalog *cat, const char *path, vdi_gold_state state,
                               const char *reason, vdi_error *err);

/* Sessions in the catalog (sessions.c). */
typedef struct vdi_session_record {
    const char *pool;
    const char *desktop;
    const char *user;
    int64_t started_at, ended_at;
    const char *end_reason;
    uint64_t final_bytes; /* the child's allocated bytes when the session ended */
} vdi_session_record;

int vdi_catalog_record_session(vdi_catalog *cat, const vdi_session_record *s, vdi_error *err);
/* An open session (ended_at NULL) survives a restart of the service. Begin
 * and end are committed without a flush (see vdi_catalog_flush). */
int vdi_catalog_session_begin(vdi_catalog *cat, const char *pool, const char *desktop,
                              const char *user, int64_t started_at, int64_t *id, vdi_error *err);
int vdi_catalog_session_end(vdi_catalog *cat, int64_t id, int64_t ended_at, const char *reason,
                            uint64_t final_bytes, vdi_error *err);
/* The open session of a desktop: -ENOENT when none. */
int vdi_catalog_open_session(vdi_catalog *cat, const char *desktop, int64_t *id, char *user,
                             size_t user_len, int64_t *started_at, vdi_error *err);
/* The 95th percentile of a pool's final child sizes; -ENODATA with fewer
 * than min_samples sessions. */
int vdi_catalog_growth_p95(vdi_catalog *cat, const char *pool, size_t min_samples,
                           uint64_t *bytes, size_t *samples, vdi_error *err);
/* Forgets up to `max_rows` finished sessions that ended before
 * `ended_before` (unix seconds), the earliest ended first, in one transaction; open
 * sessions are never forgotten. *removed says how many went (fewer than
 * max_rows: none older is left). Not flushed: a power loss may bring some
 * back, to be forgotten again. */
int vdi_catalog_prune_sessions(vdi_catalog *cat, int64_t ended_before, unsigned max_rows,
                               uint64_t *removed, vdi_error *err);
/* A pool's sessions since `since` (unix seconds), counted by minute (unix
 * seconds / 60): fn gets reason NULL for starts, the end reason for ends. */
int vdi_catalog_sessions_by_minute(vdi_catalog *cat, const char *pool, int64_t since,
                                   void (*fn)(void *ctx, int64_t minute, const char *reason,
                                              uint64_t count),
                                   void *ctx, vdi_error *err);

/* ---- children, recorded ----------------------------------------------------- */

typedef struct vdi_child_meta {
    const char *datastore; /* NULL when none */
    const char *pool;
    int slot;              /* -1 when none */
    const char *host;      /* the host its domain runs on; NULL when none */
} vdi_child_meta;

/* Clones with the cheap guard check of the parent first (a tainted or changed
 * gold is refused), journaled, and records the children. */
int vdi_clone_recorded(vdi_catalog *cat, vdi_cloner *cloner, const char *child_path,
                       const vdi_child_meta *meta, vdi_error *err);
int vdi_clone_batch_recorded(vdi_catalog *cat, vdi_cloner *cloner, char *const *paths,
                             size_t count, const vdi_child_meta *meta, size_t *made,
                             vdi_error *err);
/* Deletes a child file and its record (journaled). final_bytes may be NULL. */
int vdi_child_delete(vdi_catalog *cat, const char *path, uint64_t *final_bytes, vdi_error *err);
/* The session a deleted child served, closed in the delete's last
 * transaction (vdi_catalog_session_end's fields; its final_bytes are the
 * child's size). */
typedef struct vdi_session_close {
    int64_t id; /* 0: none */
    int64_t ended_at;
    const char *reason;
} vdi_session_close;
/* vdi_child_delete that also closes the child's session (NULL: none) in
 * the same transaction: one commit for a desktop's end, not two. */
int vdi_child_delete_ending(vdi_catalog *cat, const char *path, const vdi_session_close *session,
                            uint64_t *final_bytes, vdi_error *err);
/* A child made elsewhere (on a host-local datastore, through libvirt's
 * storage API), recorded without touching files; and its record dropped
 * once it is deleted there. */
int vdi_catalog_record_child(vdi_catalog *cat, const char *path, const char *parent,
                             const vdi_child_meta *meta, uint64_t virtual_size, vdi_error *err);
int vdi_catalog_forget_child(vdi_catalog *cat, const char *path, vdi_error *err);

/* What the catalog knows of a datastore's children, kept current on every
 * change of a child (no directory walk): how many, what they hold (as last
 * recorded) and their virtual sizes. */
typedef struct vdi_datastore_usage {
    uint64_t children, allocated, virtual_size;
} vdi_datastore_usage;
int vdi_catalog_datastore_usage(vdi_catalog *cat, const char *datastore, vdi_datastore_usage *out,
                                vdi_error *err);
/* Records what a child holds now (a refresh of its allocation). */
int vdi_catalog_set_child_bytes(vdi_catalog *cat, const char *path, uint64_t bytes, vdi_error *err);

/* Every child of `parent`: those the catalog knows, plus images in `dirs`
 * (and the parent's own directory) whose backing file is that same file,
 * which the catalog does not know. */
typedef struct vdi_found_child {
    char path[4096];
    bool in_catalog;
} vdi_found_child;

int vdi_find_children(vdi_catalog *cat, const char *parent, const char *const *dirs, size_t ndirs,
                      vdi_found_child **out, size_t *count, vdi_error *err);

/* ---- guard: parents that cannot change ---------------------------------------- */

typedef struct vdi_seal_result {
    vdi_gold_info gold;
    char notes[1024]; /* which protections did not take effect, and why */
} vdi_seal_result;

/* Seals a gold: refuses a non-image and a file another process has open for
 * writing; records the fingerprint; makes it read-only, QEMU-owned and
 * immutable where possible. Sealing a sealed gold re-checks it. */
int vdi_seal(vdi_catalog *cat, const char *path, vdi_seal_result *out, vdi_error *err);
/* Unseals a gold with no children; with force, orphans them (*orphaned says
 * how many). dirs are searched for children the catalog does not know. */
int vdi_unseal(vdi_catalog *cat, const char *path, bool force, const char *const *dirs,
               size_t ndirs, size_t *orphaned, vdi_error *err);
/* Checks a sealed gold against its fingerprint: cheap (stat) or full (hash).
 * 0: unchanged. -ESTALE: changed, now tainted, err says what changed and how
 * many children are orphaned. -ENOENT: not a sealed gold. */
int vdi_guard_check(vdi_catalog *cat, const char *path, bool full, vdi_error *err);
/* The full hash of a gold against a fingerprint read earlier, without the
 * catalog (for scrubbing off the catalog's lock): 0 when it matches,
 * -ESTALE when it does not (then run vdi_guard_check to taint it). */
int vdi_guard_verify_content(const vdi_gold_info *gold, vdi_error *err);
/* Holds QEMU's image lock against writers ("shared write" byte, 201) with an
 * OFD lock: QEMU write opens fail with "Failed to get write lock", read-only
 * and backing opens keep working. Returns an fd to keep open. */
int vdi_guard_lock(const char *path, int *fd_out, vdi_error *err);
void vdi_guard_unlock(int fd);
/* Processes that have `path` open for writing (QEMU by its lock bytes, any
 * process by /proc/PID/fdinfo). Returns how many; `who` names the first. */
int vdi_guard_open_writers(const char *path, char *who, size_t who_len);

/* ---- merge and reparent (the data plane is qemu-img) -------------------------- */

typedef enum vdi_merge_mode {
    VDI_MERGE_INTO_PARENT, /* commit the child into its parent, remove the child */
    VDI_MERGE_INTO_NEW,    /* write the whole chain as a new standalone image */
    VDI_MERGE_TO_ANCESTOR, /* commit every link above an ancestor into it, remove them */
} vdi_merge_mode;

typedef struct vdi_merge_plan vdi_merge_plan;

/* Works out what a merge writes and removes and the space it needs, and
 * refuses it (naming the reason) when it would orphan other children, write
 * a sealed gold, or not fit on the target's filesystem. */
int vdi_merge_plan_new(vdi_catalog *cat, const char *child, vdi_merge_mode mode,
                       const char *target, const char *const *dirs, size_t ndirs,
                       vdi_merge_plan **out, vdi_error *err);
/* A few lines: what is written, what is removed, space needed and free. */
const char *vdi_merge_plan_describe(const vdi_merge_plan *plan);
uint64_t vdi_merge_plan_space_needed(const vdi_merge_plan *plan);
/* progress: percent done, 0..100, called as qemu-img reports it. */
typedef void (*vdi_progress_fn)(double percent, void *ctx);
int vdi_merge_execute(vdi_catalog *cat, vdi_merge_plan *plan, vdi_progress_fn progress,
                      void *ctx, vdi_error *err);
void vdi_merge_plan_free(vdi_merge_plan *plan);

/* Points a child at its parent's new location (qemu-img rebase -u), only when
 * the new file's content hash equals the one recorded when the original
 * parent was sealed. */
int vdi_reparent(vdi_catalog *cat, const char *child, const char *new_parent, vdi_error *err);

/* ---- space -------------------------------------------------------------------- */

typedef struct vdi_space_report {
    uint64_t capacity, free;      /* statvfs of the datastore's filesystem */
    uint64_t reserve;             /* bytes kept free */
    size_t children;              /* images found in the datastore */
    uint64_t children_allocated;  /* their allocated bytes */
    uint64_t worst_case;          /* sum of (root virtual size - allocated) */
    double overcommit;            /* worst_case / capacity */
} vdi_space_report;

/* Measures a datastore directory: every image in it (not recursive). reserve
 * is reserve_bytes, or reserve_percent of capacity when that is > 0. */
int vdi_space_measure(const char *dir, uint64_t reserve_bytes, double reserve_percent,
                      vdi_space_report *out, vdi_error *err);
/* The same without walking the directory: the filesystem's numbers from
 * statvfs, the children's from the catalog's usage of the datastore. */
int vdi_space_measure_usage(const char *dir, uint64_t reserve_bytes, double reserve_percent,
                            const vdi_datastore_usage *usage, vdi_space_report *out,
                            vdi_error *err);
/* The same with the filesystem's numbers measured elsewhere (a host-local
 * datastore: libvirt's storage pool info on that host). */
void vdi_space_report_from(uint64_t capacity, uint64_t free_bytes, uint64_t reserve_bytes,
                           double reserve_percent, const vdi_datastore_usage *usage,
                           vdi_space_report *out);
/* statvfs plus the catalog's usage of the datastore named `datastore`. */
int vdi_space_measure_known(vdi_catalog *cat, const char *datastore, const char *dir,
                            uint64_t reserve_bytes, double reserve_percent, vdi_space_report *out,
                            vdi_error *err);
/* What `vdipoolctl space --rescan` found besides the numbers. */
typedef struct vdi_space_rescan_result {
    size_t corrected;         /* records whose size or datastore the walk corrected */
    size_t unknown;           /* child files in the directory the catalog does not know */
    size_t missing;           /* records of the datastore whose file the walk did not find */
    uint64_t recorded_before; /* what the datastore's records said its children hold */
    size_t recorded_children; /* how many records it had, before */
} vdi_space_rescan_result;
/* vdi_space_measure, and the catalog's records of the datastore named
 * `datastore` brought in line with what the walk found, in one transaction:
 * each known child's allocation and virtual size, and the datastore of
 * children recorded without one (made by hand with `image clone`). */
int vdi_space_rescan(vdi_catalog *cat, const char *datastore, const char *dir,
                     uint64_t reserve_bytes, double reserve_percent, vdi_space_report *out,
                     vdi_space_rescan_result *res, vdi_error *err);
/* Admits one more child that is expected to grow by expected_growth and may
 * grow by worst_case, while the children already admitted are still
 * expected to grow by committed_growth; or refuses with -ENOSPC naming the
 * limit and by how much it is missed. */
int vdi_space_admit(const vdi_space_report *r, const char *datastore, uint64_t expected_growth,
                    uint64_t committed_growth, uint64_t worst_case, double max_overcommit,
                    vdi_error *err);
/* What the children measured in r are still expected to grow by when each
 * was admitted for expected_growth: children x growth - what they hold. */
uint64_t vdi_space_committed(const vdi_space_report *r, uint64_t expected_growth);

/* ---- memory images: libvirt's QEMU save format (saveimage.c) --------------------- */

typedef struct vdi_save_image {
    uint32_t version, data_len, was_running, format, cookie_offset;
    char *xml;              /* the domain XML the image restores as */
    char *cookie;           /* libvirt's cookie, or NULL */
    uint64_t stream_offset; /* where QEMU's migration stream begins */
    uint64_t size;          /* the file's size */
} vdi_save_image;

/* Parses the header and data area from buf (len bytes of a file of
 * file_size bytes). -EAGAIN with out->stream_offset set: read that many
 * bytes and call again. Refuses unfinished, compressed and foreign images. */
int vdi_save_image_parse(const uint8_t *buf, size_t len, uint64_t file_size,
                         vdi_save_image *out, vdi_error *err);
int vdi_save_image_read(const char *path, vdi_save_image *out, vdi_error *err);
void vdi_save_image_clear(vdi_save_image *img);
/* dst: src with its domain XML replaced by new_xml (temp file + fsync +
 * rename; the stream copied with copy_file_range). */
int vdi_save_image_copy(const char *src, const char *dst, const char *new_xml, vdi_error *err);

/* Pools an operator drained (pooldrains.c): since is unix seconds; setting
 * 0 opens the pool again. A read of a pool never drained gives 0. */
int vdi_catalog_set_pool_drain(vdi_catalog *cat, const char *pool, int64_t since,
                               vdi_error *err);
int vdi_catalog_pool_drain(vdi_catalog *cat, const char *pool, int64_t *since, vdi_error *err);

/* Memory images in the catalog (memimages.c). */
typedef struct vdi_memory_image {
    char path[4096];
    char template_child[4096]; /* sealed; every resumed desktop's parent */
    char gold[4096];
    char pool[64];
    uint64_t size;
    int64_t mtime_ns, ctime_ns;
    uint8_t hash[VDI_HASH_SIZE];
    int64_t created_at;
} vdi_memory_image;

/* Fingerprints the (read-only) image at path and records it. */
int vdi_memory_image_record(vdi_catalog *cat, const char *path, const char *template_child,
                            const char *gold, const char *pool, vdi_error *err);
int vdi_memory_image_get(vdi_catalog *cat, const char *path, vdi_memory_image *out,
                         vdi_error *err);
/* 0 when unchanged: size and times (cheap), and the content hash when full;
 * -ESTALE naming what changed; -ENOENT when the catalog does not know it. */
int vdi_memory_image_check(vdi_catalog *cat, const char *path, bool full, vdi_error *err);
int vdi_memory_image_forget(vdi_catalog *cat, const char *path, vdi_error *err);
/* The memory images made for a pool, oldest first (*out malloc'd). */
int vdi_memory_images_of_pool(vdi_catalog *cat, const char *pool, vdi_memory_image **out,
                              size_t *count, vdi_error *err);
/* How many memory images were saved on a template child. */
int vdi_memory_images_on(vdi_catalog *cat, const char *template_child, size_t *count,
                         vdi_error *err);

/* ---- scan: the orphaned-file locator ------------------------------------------- */

typedef enum vdi_parent_status {
    VDI_PARENT_NONE,      /* a root image */
    VDI_PARENT_OK,        /* exists; matches its fingerprint when sealed */
    VDI_PARENT_MISSING,
    VDI_PARENT_CHANGED,   /* a sealed gold that no longer matches (tainted) */
    VDI_PARENT_UNUSABLE,  /* exists but cannot be opened as the declared image */
} vdi_parent_status;

typedef struct vdi_scan_entry {
    char *path;
    vdi_format format;
    uint64_t virtual_size, allocated;
    char *parent;               /* resolved backing path, "" for roots */
    vdi_parent_status parent_status;
    bool parent_sealed;         /* the parent is a gold in the catalog */
    bool in_catalog;            /* known as a child or a gold */
    bool is_gold;
    size_t children;            /* images in the scan naming this one */
} vdi_scan_entry;

/* Probes every regular file under dir (recursively, not following links);
 * files that are not images are skipped. Free *out with vdi_scan_free. */
int vdi_scan_dir(vdi_catalog *cat, const char *dir, vdi_scan_entry **out, size_t *count,
                 vdi_error *err);
void vdi_scan_free(vdi_scan_entry *v, size_t count);
const char *vdi_parent_status_name(vdi_parent_status status);

/* Catalog against disk for one datastore directory: records whose file is
 * gone are dropped (safe); unknown children and orphans are only reported. */
typedef struct vdi_reconcile_report {
    size_t dropped_records;   /* catalog children whose file was gone */
    size_t unknown_children;  /* images on disk the catalog does not know */
    size_t orphans;           /* children whose parent is missing or changed */
    size_t temporaries_removed;
} vdi_reconcile_report;

int vdi_reconcile(vdi_catalog *cat, const char *dir, vdi_reconcile_report *out, vdi_error *err);

/* ---- gold versions: a gold family's sealed, standalone images -------------
 * A family (a name and a directory) holds versions v0001.qcow2, v0002.qcow2,
 * ...; each is written once (a chain flattened by qemu-img convert, sparse),
 * sealed, and recorded with who made it, when and why; one is current.
 * Pools follow the current version or pin one. Every change is kept in an
 * audit trail. */

typedef struct vdi_gold_version {
    char family[64];
    unsigned version;
    char path[4096];
    bool current;
    int64_t created_at;
    char note[512];
    char created_by[64];
    size_t children;        /* children the catalog records of it */
    uint64_t allocated;     /* bytes the file holds */
    uint64_t virtual_size;
    vdi_gold_state state;   /* sealed, retiring, retired, tainted (the gold's record) */
    uint8_t hash[VDI_HASH_SIZE];
} vdi_gold_version;

/* Every version of a family, oldest first; *out is malloc'd. */
int vdi_versions_list(vdi_catalog *cat, const char *family, vdi_gold_version **out,
                      size_t *count, vdi_error *err);
/* One version (version 0: the current one); -ENOENT with the reason. */
int vdi_version_find(vdi_catalog *cat, const char *family, unsigned version,
                     vdi_gold_version *out, vdi_error *err);

typedef struct vdi_version_request {
    const char *family;     /* a gold name */
    const char *dir;        /* the family's directory (made when missing) */
    const char *source;     /* a disk (raw, qcow2 chain, standalone VHD/VHDX) to write */
    const char *note;       /* may be NULL */
    const char *who;        /* who asked, for the audit trail */
    const char *action;     /* "import" or "publish", for the audit trail */
    uint64_t reserve_bytes; /* free space to leave on the directory's filesystem */
} vdi_version_request;

/* Writes req->source as the family's next version (standalone, sparse,
 * zeroes detected), seals it and makes it current. Space is checked first;
 * a crash at any step is finished or undone when the catalog is next
 * opened; the current version is never opened for writing. */
int vdi_version_create(vdi_catalog *cat, const vdi_version_request *req,
                       vdi_progress_fn progress, void *ctx, vdi_gold_version *out,
                       vdi_error *err);
/* Makes an earlier version current again after re-hashing it against its
 * fingerprint (a changed one is refused and marked tainted). */
int vdi_version_make_current(vdi_catalog *cat, const char *family, unsigned version,
                             const char *who, const char *note, vdi_error *err);
/* Deletes versions older than the newest `keep` that are not current, not
 * in `pinned` (paths a config pins) and have no children; with dry_run only
 * lists them. *gone lists what went (or would go), *busy the older versions
 * kept because they are in use (current, pinned or with children); both
 * malloc'd. */
int vdi_versions_prune(vdi_catalog *cat, const char *family, unsigned keep,
                       const char *const *pinned, size_t npinned, bool dry_run, const char *who,
                       vdi_gold_version **gone, size_t *ngone, vdi_gold_version **busy,
                       size_t *nbusy, vdi_error *err);

typedef struct vdi_gold_audit {
    int64_t at;
    char who[64];
    char action[32]; /* import, publish, rollback, prune */
    unsigned version;
    char note[512];
} vdi_gold_audit;
/* The family's audit trail, oldest first; *out is malloc'd. */
int vdi_versions_audit(vdi_catalog *cat, const char *family, vdi_gold_audit **out,
                       size_t *count, vdi_error *err);

/* Test hook: when $VDIPOOL_CRASH_AT equals name, the process kills itself
 * with SIGKILL here, to prove that every step can be recovered
 * ($VDIPOOL_STOP_AT stops it with SIGSTOP instead). Opening the catalog
 * recovers only intents of processes that no longer run. */
void vdi_crashpoint(const char *name);
/* Test hook: true when $VDIPOOL_FAIL_AT equals name; the caller then acts
 * as if that step failed, to prove the failure is handled. */
bool vdi_failpoint(const char *name);

#endif
