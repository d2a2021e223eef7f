/* clone.c — differencing children written natively. A child is an empty
 * qcow2 v3 overlay: header cluster, refcount table, refcount blocks and an
 * all-zero L1 table left as a hole. Everything about the parent is worked out
 * once per cloner, so each child costs open, three small writes, ftruncate,
 * close and rename.
 *
 * Invariant: a child appears under its real name only complete (and, when
 * asked, durable): it is written under a temporary name in the same directory
 * and renamed with RENAME_NOREPLACE, which also refuses to replace a file. */
#include "internal.h"
#include "qcow2.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct write_op {
    uint64_t offset;
    const uint8_t *data;
    size_t len;
} write_op;

typedef struct staged {
    char *temp;
    char *final;
} staged;

struct vdi_cloner {
    vdi_clone_options opts;
    vdi_chain *parent;
    char *backing_name;
    qcow2_layout layout;
    uint8_t *header;  /* meaningful bytes of cluster 0 */
    uint8_t *reftable;
    uint8_t *refblocks;
    write_op ops[3];
    uint64_t file_size;
    long pid; /* cached: temporary names carry the writer's pid */
    staged *staged;
    size_t nstaged, capstaged;
};

void vdi_clone_options_init(vdi_clone_options *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->extended_l2 = -1;
    opts->sync = true;
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static int log2_exact(uint32_t v)
{
    if (v == 0 || (v & (v - 1)))
        return -1;
    return __builtin_ctz(v);
}

int vdi_cloner_new(const char *parent_path, const vdi_clone_options *opts_in, vdi_cloner **out,
                   vdi_error *err)
{
    int rc = 0;
    *out = NULL;
    vdi_clone_options opts;
    if (opts_in)
        opts = *opts_in;
    else
        vdi_clone_options_init(&opts);

    vdi_cloner *c = calloc(1, sizeof *c);
    if (!c)
        return vdi_error_set(err, -ENOMEM, "out of memory");
    c->opts = opts;
    c->pid = (long)getpid();

    /* The child adds one link, so the parent may be at most max_depth - 1 deep. */
    if (opts.max_depth == 1) {
        rc = vdi_chain_resolve(parent_path, 0, &c->parent, err);
        if (rc == 0 && vdi_chain_depth(c->parent) > 0)
            rc = vdi_error_set(err, -ELOOP,
                               "%s is itself a child; a child of it would exceed the maximum "
                               "chain depth of 1",
                               parent_path);
    } else {
        rc = vdi_chain_resolve(parent_path, opts.max_depth ? opts.max_depth - 1 : 0, &c->parent,
                               err);
    }
    if (rc < 0)
        goto error;

    const vdi_image *top = vdi_chain_link(c->parent, 0);
    for (size_t i = 0; i < vdi_chain_length(c->parent); i++) {
        if (vdi_image_dirty(vdi_chain_link(c->parent, i))) {
            rc = vdi_error_set(err, -EBUSY,
                               "%s is marked dirty: something has it open for writing or it was "
                               "not closed cleanly. A child of it would see changing data; run "
                               "`qemu-img check -r all` once nothing has it open",
                               vdi_image_path(vdi_chain_link(c->parent, i)));
            goto error;
        }
    }

    uint64_t size = vdi_image_virtual_size(top);
    if (opts.virtual_size) {
        if (opts.virtual_size < size) {
            rc = vdi_error_set(err, -EINVAL,
                               "a child cannot be smaller than its parent: asked for %llu bytes, "
                               "%s is %llu",
                               (unsigned long long)opts.virtual_size, parent_path,
                               (unsigned long long)size);
            goto error;
        }
        size = opts.virtual_size;
    }
    size = (size + 511) & ~UINT64_C(511);

    uint32_t cs = opts.cluster_size ? opts.cluster_size : VDI_CLONE_DEFAULT_CLUSTER_SIZE;
    int bits = log2_exact(cs);
    if (bits < (int)QCOW2_MIN_CLUSTER_BITS || bits > (int)QCOW2_MAX_CLUSTER_BITS) {
        rc = vdi_error_set(err, -EINVAL,
                           "cluster size %u is invalid: use a power of two from 512 to 2097152", cs);
        goto error;
    }
    bool extl2 = opts.extended_l2 < 0 ? bits >= 14 : opts.extended_l2 != 0;
    rc = qcow2_plan_layout(size, (uint32_t)bits, extl2, &c->layout, err);
    if (rc < 0)
        goto error;

    /* The child names its parent by absolute, symlink-free path, so it keeps
     * working whatever directory the child and its users are in. */
    c->backing_name = realpath(parent_path, NULL);
    if (!c->backing_name) {
        rc = vdi_error_set(err, -errno, "cannot resolve %s: %s", parent_path, strerror(errno));
        goto error;
    }
    c->header = calloc(1, cs);
    if (!c->header) {
        rc = vdi_error_set(err, -ENOMEM, "out of memory");
        goto error;
    }
    int hlen = qcow2_build_header(&c->layout, c->backing_name,
                                  vdi_format_name(vdi_image_format(top)), c->header, cs, err);
    if (hlen < 0) {
        rc = hlen;
        goto error;
    }

    /* Refcount table entries point at the blocks; every block holds 16-bit
     * refcounts of 1 for each cluster in use. */
    const qcow2_layout *L = &c->layout;
    size_t rt_len = (size_t)L->refblock_clusters * 8;
    size_t rb_len = (size_t)L->total_clusters * 2;
    c->reftable = malloc(rt_len);
    c->refblocks = malloc(rb_len);
    if (!c->reftable || !c->refblocks) {
        rc = vdi_error_set(err, -ENOMEM, "out of memory");
        goto error;
    }
    uint64_t first_block = 1 + L->reftable_clusters;
    for (uint64_t i = 0; i < L->refblock_clusters; i++)
        put64(c->reftable + i * 8, (first_block + i) * cs);
    for (uint64_t i = 0; i < L->total_clusters; i++)
        put16(c->refblocks + i * 2, 1);
    /* Refcount blocks are contiguous and entries run on across them, so one
     * write covers all of them. */
    c->ops[0] = (write_op){ 0, c->header, (size_t)hlen };
    c->ops[1] = (write_op){ (uint64_t)cs, c->reftable, rt_len };
    c->ops[2] = (write_op){ first_block * cs, c->refblocks, rb_len };
    c->file_size = L->total_clusters * cs;
    *out = c;
    return 0;

error:
    vdi_cloner_free(c);
    return rc;
}

static void discard_staged(vdi_cloner *c)
{
    for (size_t i = 0; i < c->nstaged; i++) {
        unlink(c->staged[i].temp);
        free(c->staged[i].temp);
        free(c->staged[i].final);
    }
    c->nstaged = 0;
}

void vdi_cloner_free(vdi_cloner *c)
{
    if (!c)
        return;
    discard_staged(c);
    free(c->staged);
    vdi_chain_free(c->parent);
    free(c->backing_name);
    free(c->header);
    free(c->reftable);
    free(c->refblocks);
    free(c);
}

const vdi_chain *vdi_cloner_parent_chain(const vdi_cloner *c) { return c->parent; }
const char *vdi_cloner_backing_name(const vdi_cloner *c) { return c->backing_name; }
uint64_t vdi_cloner_virtual_size(const vdi_cloner *c) { return c->layout.virtual_size; }
bool vdi_cloner_sync_(const vdi_cloner *c) { return c->opts.sync; }

static int write_all_at(int fd, const uint8_t *data, size_t len, uint64_t off)
{
    while (len) {
        ssize_t n = pwrite(fd, data, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        data += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* Temporary names are unique in the process: cloners on several threads
 * (the service's parallel clones) write into one directory at once. */
static atomic_ulong temp_seq;

/* Writes the child under a fresh temporary name next to child_path. */
int vdi_cloner_write_temp_(vdi_cloner *c, const char *child_path, bool sync, char **temp_out,
                           vdi_error *err)
{
    char dir[PATH_MAX];
    vdi_dir_of_(child_path, dir, sizeof dir);
    char *temp = NULL;
    if (asprintf(&temp, "%s/%s%ld-%lu", dir, VDI_TEMP_PREFIX, c->pid, atomic_fetch_add(&temp_seq, 1)) < 0)
        return vdi_error_set(err, -ENOMEM, "out of memory");

    int rc = 0;
    int fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd < 0) {
        rc = -errno;
        if (rc == -ENOENT)
            vdi_error_set(err, rc, "cannot create %s: directory %s does not exist", child_path, dir);
        else
            vdi_error_set(err, rc, "cannot create a file in %s for %s: %s", dir, child_path,
                          strerror(-rc));
        free(temp);
        return rc;
    }
    for (int i = 0; i < 3 && rc == 0; i++)
        rc = write_all_at(fd, c->ops[i].data, c->ops[i].len, c->ops[i].offset);
    if (rc == 0 && ftruncate(fd, (off_t)c->file_size) < 0)
        rc = -errno;
    if (rc == 0 && sync && fdatasync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc < 0) {
        vdi_error_set(err, rc, "cannot write %s: %s%s", child_path, strerror(-rc),
                      rc == -ENOSPC ? " (the datastore is full)" : "");
        unlink(temp);
        free(temp);
        return rc;
    }
    *temp_out = temp;
    return 0;
}

/* rename(2) that never replaces an existing file. */
static int rename_noreplace(const char *from, const char *to)
{
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -errno;
    /* Filesystem without RENAME_NOREPLACE: link() refuses existing names too. */
    if (link(from, to) < 0)
        return -errno;
    unlink(from);
    return 0;
}

static int refuse_existing(const char *child_path, vdi_error *err)
{
    struct stat st;
    if (lstat(child_path, &st) == 0)
        return vdi_error_set(err, -EEXIST, "%s already exists; vdipool never overwrites a file",
                             child_path);
    return 0;
}

int vdi_place_noreplace_(const char *temp, const char *child_path, vdi_error *err)
{
    int rc = rename_noreplace(temp, child_path);
    if (rc < 0) {
        unlink(temp);
        if (rc == -EEXIST)
            return vdi_error_set(err, rc, "%s already exists; vdipool never overwrites a file",
                                 child_path);
        return vdi_error_set(err, rc, "cannot rename the new child to %s: %s", child_path,
                             strerror(-rc));
    }
    return 0;
}

int vdi_cloner_create(vdi_cloner *c, const char *child_path, vdi_error *err)
{
    int rc = refuse_existing(child_path, err);
    if (rc < 0)
        return rc;
    char *temp = NULL;
    rc = vdi_cloner_write_temp_(c, child_path, c->opts.sync, &temp, err);
    if (rc < 0)
        return rc;
    rc = vdi_place_noreplace_(temp, child_path, err);
    free(temp);
    if (rc == 0 && c->opts.sync) {
        rc = vdi_sync_dir_of_(child_path);
        if (rc < 0)
            vdi_error_set(err, rc, "created %s but could not sync its directory: %s", child_path,
                          strerror(-rc));
    }
    return rc;
}

int vdi_cloner_stage(vdi_cloner *c, const char *child_path, vdi_error *err)
{
    int rc = refuse_existing(child_path, err);
    if (rc < 0)
        return rc;
    if (c->nstaged == c->capstaged) {
        size_t cap = c->capstaged ? c->capstaged * 2 : 16;
        staged *s = realloc(c->staged, cap * sizeof *s);
        if (!s)
            return vdi_error_set(err, -ENOMEM, "out of memory");
        c->staged = s;
        c->capstaged = cap;
    }
    char *final = strdup(child_path);
    if (!final)
        return vdi_error_set(err, -ENOMEM, "out of memory");
    /* Staged files are made durable together at commit, not one by one. */
    char *temp = NULL;
    rc = vdi_cloner_write_temp_(c, child_path, false, &temp, err);
    if (rc < 0) {
        free(final);
        return rc;
    }
    c->staged[c->nstaged++] = (staged){ temp, final };
    return 0;
}

/* One syncfs per filesystem makes every staged file durable at once. */
static int sync_filesystems_of(vdi_cloner *c, bool dirs_only)
{
    dev_t seen[8];
    size_t nseen = 0;
    int rc = 0;
    for (size_t i = 0; i < c->nstaged; i++) {
        char dir[PATH_MAX];
        vdi_dir_of_(c->staged[i].final, dir, sizeof dir);
        struct stat st;
        if (stat(dir, &st) < 0)
            continue;
        bool done = false;
        for (size_t j = 0; j < nseen; j++)
            done |= seen[j] == st.st_dev;
        if (done)
            continue;
        int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            continue;
        int r = dirs_only ? fsync(fd) : syncfs(fd);
        if (r < 0 && rc == 0)
            rc = -errno;
        close(fd);
        if (nseen < 8)
            seen[nseen++] = st.st_dev;
    }
    return rc;
}

int vdi_cloner_commit(vdi_cloner *c, size_t *committed, vdi_error *err)
{
    int rc = 0;
    size_t done = 0;
    if (committed)
        *committed = 0;
    if (c->nstaged == 0)
        return 0;
    if (c->opts.sync) {
        rc = sync_filesystems_of(c, false);
        if (rc < 0) {
            vdi_error_set(err, rc, "cannot sync %zu new children: %s", c->nstaged, strerror(-rc));
            discard_staged(c);
            return rc;
        }
    }
    for (size_t i = 0; i < c->nstaged; i++) {
        vdi_error one;
        int r = vdi_place_noreplace_(c->staged[i].temp, c->staged[i].final, &one);
        if (r < 0 && rc == 0) {
            rc = r;
            if (err)
                *err = one;
        }
        if (r == 0)
            done++;
    }
    if (c->opts.sync) {
        /* The renames are directory updates: sync every directory involved. */
        int r = sync_filesystems_of(c, true);
        if (r < 0 && rc == 0)
            rc = vdi_error_set(err, r, "renamed %zu children but could not sync their directory: %s",
                               done, strerror(-r));
    }
    for (size_t i = 0; i < c->nstaged; i++) {
        free(c->staged[i].temp);
        free(c->staged[i].final);
    }
    c->nstaged = 0;
    if (committed)
        *committed = done;
    return rc;
}

int vdi_clone(const char *parent_path, const char *child_path, const vdi_clone_options *opts,
              vdi_error *err)
{
    vdi_cloner *c = NULL;
    int rc = vdi_cloner_new(parent_path, opts, &c, err);
    if (rc == 0)
        rc = vdi_cloner_create(c, child_path, err);
    vdi_cloner_free(c);
    return rc;
}

int vdi_clone_sweep_temporaries(const char *dir, vdi_error *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return vdi_error_set(err, -errno, "cannot read directory %s: %s", dir, strerror(errno));
    int removed = 0;
    size_t plen = strlen(VDI_TEMP_PREFIX);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, VDI_TEMP_PREFIX, plen))
            continue;
        long pid = strtol(e->d_name + plen, NULL, 10);
        /* A live writer (kill(pid, 0) succeeds or is not ours to signal) keeps its files. */
        if (pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM))
            continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0)
            removed++;
    }
    closedir(d);
    return removed;
}
