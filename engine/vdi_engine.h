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

/* Lower-case hex of a hash into buf (at least 2 * VDI_HASH_SIZE + 1 bytes). */
const char *vdi_hash_hex(const uint8_t hash[VDI_HASH_SIZE], char *buf, size_t len);

#endif
