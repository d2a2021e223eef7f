/* merge.c — merges and reparents. qemu-img moves the data; this file decides
 * what is safe: never write a sealed gold, never write a parent that has
 * other children (that would orphan them), never start what the target
 * filesystem cannot hold, and journal every step. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

struct vdi_merge_plan {
    vdi_merge_mode mode;
    char child[PATH_MAX];
    char target[PATH_MAX];      /* parent/ancestor written, or the new file */
    char **removed;             /* links deleted afterwards, top first */
    size_t nremoved;
    uint64_t needed, free_bytes;
    char description[5 * PATH_MAX];
};

void vdi_merge_plan_free(vdi_merge_plan *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->nremoved; i++)
        free(p->removed[i]);
    free(p->removed);
    free(p);
}

const char *vdi_merge_plan_describe(const vdi_merge_plan *p) { return p->description; }
uint64_t vdi_merge_plan_space_needed(const vdi_merge_plan *p) { return p->needed; }

static uint64_t free_space_of(const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    else
        snprintf(dir, sizeof dir, "."); /* a bare file name lives in the current directory */
    struct statvfs vfs;
    if (statvfs(*dir ? dir : ".", &vfs) < 0)
        return 0;
    return (uint64_t)vfs.f_bavail * vfs.f_frsize;
}

static bool same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* Refuses writing `link` when it is a sealed gold or has children other
 * than `only_child`. */
static int refuse_shared_link(vdi_catalog *cat, const char *link, const char *only_child,
                              const char *const *dirs, size_t ndirs, vdi_error *err)
{
    char real[PATH_MAX];
    if (!realpath(link, real))
        return vdi_error_set(err, -errno, "cannot resolve %s: %s", link, strerror(errno));
    vdi_gold_info g;
    if (vdi_catalog_gold(cat, real, &g, NULL) == 0)
        return vdi_error_set(err, -EPERM,
                             "%s is a sealed gold: golds are never written. Merge into a new "
                             "image instead (--into NEW)",
                             real);
    vdi_found_child *kids = NULL;
    size_t n = 0;
    int rc = vdi_find_children(cat, real, dirs, ndirs, &kids, &n, err);
    if (rc < 0)
        return rc;
    char others[1024] = "";
    size_t len = 0, nothers = 0;
    for (size_t i = 0; i < n; i++) {
        if (same_file(kids[i].path, only_child))
            continue;
        nothers++;
        if (len < sizeof others - 256)
            len += (size_t)snprintf(others + len, sizeof others - len, "%s%s", len ? ", " : "",
                                    kids[i].path);
    }
    free(kids);
    if (nothers)
        return vdi_error_set(err, -EBUSY,
                             "%s has %zu other child%s (%s); writing into it would orphan them",
                             real, nothers, nothers == 1 ? "" : "ren", others);
    return 0;
}

static int add_removed(vdi_merge_plan *p, const char *path)
{
    char **v = realloc(p->removed, (p->nremoved + 1) * sizeof *v);
    if (!v)
        return -ENOMEM;
    p->removed = v;
    if (!(v[p->nremoved] = strdup(path)))
        return -ENOMEM;
    p->nremoved++;
    return 0;
}

int vdi_merge_plan_new(vdi_catalog *cat, const char *child, vdi_merge_mode mode,
                       const char *target, const char *const *dirs, size_t ndirs,
                       vdi_merge_plan **out, vdi_error *err)
{
    *out = NULL;
    vdi_merge_plan *p = calloc(1, sizeof *p);
    if (!p)
        return vdi_error_set(err, -ENOMEM, "out of memory");
    p->mode = mode;
    vdi_chain *chain = NULL;
    int rc = 0;
    if (!realpath(child, p->child)) {
        rc = vdi_error_set(err, -errno, "%s: %s", child, strerror(errno));
        goto error;
    }
    if ((rc = vdi_chain_resolve(p->child, 0, &chain, err)) < 0)
        goto error;
    if (vdi_catalog_gold(cat, p->child, &(vdi_gold_info){ 0 }, NULL) == 0) {
        rc = vdi_error_set(err, -EPERM, "%s is a sealed gold, not a child to merge", p->child);
        goto error;
    }
    char a[32], b[32];
    if (mode == VDI_MERGE_INTO_NEW) {
        if (!target) {
            rc = vdi_error_set(err, -EINVAL, "merging into a new image needs its path");
            goto error;
        }
        struct stat st;
        if (lstat(target, &st) == 0) {
            rc = vdi_error_set(err, -EEXIST, "%s already exists; vdipool never overwrites a file",
                               target);
            goto error;
        }
        snprintf(p->target, sizeof p->target, "%s", target);
        /* The new image holds at most the data of every link. */
        p->needed = vdi_chain_allocated_bytes(chain);
        uint64_t vs = vdi_image_virtual_size(vdi_chain_link(chain, 0));
        if (p->needed > vs)
            p->needed = vs;
        p->free_bytes = free_space_of(p->target);
        snprintf(p->description, sizeof p->description,
                 "merge the chain of %s (%u links) into a new standalone image %s\n"
                 "  writes:  %s (up to %s)\n"
                 "  removes: nothing; %s and its parents stay as they are\n"
                 "  space:   needs up to %s, %s free there\n",
                 p->child, (unsigned)vdi_chain_length(chain), p->target, p->target,
                 vdi_format_size(p->needed, a, sizeof a), p->child,
                 vdi_format_size(p->needed, a, sizeof a),
                 vdi_format_size(p->free_bytes, b, sizeof b));
    } else {
        size_t k = 1; /* index of the link written into */
        if (vdi_chain_depth(chain) == 0) {
            rc = vdi_error_set(err, -EINVAL, "%s has no parent: nothing to merge it into",
                               p->child);
            goto error;
        }
        if (mode == VDI_MERGE_TO_ANCESTOR) {
            if (!target) {
                rc = vdi_error_set(err, -EINVAL, "--to needs an ancestor");
                goto error;
            }
            for (k = 1; k < vdi_chain_length(chain); k++)
                if (same_file(vdi_image_path(vdi_chain_link(chain, k)), target))
                    break;
            if (k == vdi_chain_length(chain)) {
                rc = vdi_error_set(err, -EINVAL, "%s is not an ancestor of %s", target, p->child);
                goto error;
            }
        }
        if (!realpath(vdi_image_path(vdi_chain_link(chain, k)), p->target)) {
            rc = vdi_error_set(err, -errno, "cannot resolve the parent: %s", strerror(errno));
            goto error;
        }
        /* Every link written or removed must be ours alone. */
        for (size_t i = 1; i <= k; i++) {
            rc = refuse_shared_link(cat, vdi_image_path(vdi_chain_link(chain, i)),
                                    vdi_image_path(vdi_chain_link(chain, i - 1)), dirs, ndirs,
                                    err);
            if (rc < 0)
                goto error;
        }
        for (size_t i = 0; i < k; i++) {
            char real[PATH_MAX];
            if (!realpath(vdi_image_path(vdi_chain_link(chain, i)), real) ||
                add_removed(p, real) < 0) {
                rc = vdi_error_set(err, -ENOMEM, "out of memory");
                goto error;
            }
            p->needed += vdi_image_allocated_bytes(vdi_chain_link(chain, i));
        }
        p->free_bytes = free_space_of(p->target);
        size_t len = (size_t)snprintf(p->description, sizeof p->description,
                                      "merge %s into %s %s\n  writes:  %s (up to %s)\n  removes:",
                                      p->child, k == 1 ? "its parent" : "its ancestor", p->target,
                                      p->target, vdi_format_size(p->needed, a, sizeof a));
        for (size_t i = 0; i < p->nremoved && len < sizeof p->description - 512; i++)
            len += (size_t)snprintf(p->description + len, sizeof p->description - len, " %s",
                                    p->removed[i]);
        snprintf(p->description + len, sizeof p->description - len,
                 "\n  space:   needs up to %s while the merged links still exist, %s free there\n",
                 vdi_format_size(p->needed, a, sizeof a),
                 vdi_format_size(p->free_bytes, b, sizeof b));
    }
    if (p->needed > p->free_bytes) {
        rc = vdi_error_set(err, -ENOSPC,
                           "not enough space to merge %s: it needs up to %s on the filesystem of "
                           "%s, which has %s free (short by %s)",
                           p->child, vdi_format_size(p->needed, a, sizeof a), p->target,
                           vdi_format_size(p->free_bytes, b, sizeof b),
                           vdi_format_size(p->needed - p->free_bytes, (char[32]){ 0 }, 32));
        goto error;
    }
    vdi_chain_free(chain);
    *out = p;
    return 0;

error:
    vdi_chain_free(chain);
    vdi_merge_plan_free(p);
    return rc;
}

static int commit_into(const char *ancestor, const char *top, vdi_progress_fn progress,
                       void *ctx, vdi_error *err)
{
    const char *argv[] = { "qemu-img", "commit", "-p", "-f", "qcow2", "-b", ancestor, top, NULL };
    return vdi_qemu_img_(argv, progress, ctx, err);
}

static int remove_links(vdi_catalog *cat, char **links, size_t n, vdi_error *err)
{
    for (size_t i = 0; i < n; i++) {
        if (unlink(links[i]) < 0 && errno != ENOENT)
            return vdi_error_set(err, -errno, "cannot remove %s: %s", links[i], strerror(errno));
        vdi_sync_dir_of_(links[i]);
        vdi_crashpoint("merge:removed-one");
        int rc = vdi_catalog_remove_child_(cat, links[i], err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int vdi_merge_execute(vdi_catalog *cat, vdi_merge_plan *p, vdi_progress_fn progress, void *ctx,
                      vdi_error *err)
{
    int64_t intent;
    int rc;
    if (p->mode == VDI_MERGE_INTO_NEW) {
        char temp[PATH_MAX + 32];
        snprintf(temp, sizeof temp, "%s.vdi-merge-%ld", p->target, (long)getpid());
        if ((rc = vdi_intent_begin_(cat, "merge-convert", p->target, temp, &intent, err)) < 0)
            return rc;
        const char *argv[] = { "qemu-img", "convert", "-p", "-O", "qcow2", p->child, temp, NULL };
        rc = vdi_qemu_img_(argv, progress, ctx, err);
        vdi_crashpoint("merge:converted");
        if (rc == 0) {
            /* qemu-img convert writes with cache=unsafe: make it durable first. */
            int fd = open(temp, O_RDONLY | O_CLOEXEC);
            if (fd < 0 || fsync(fd) < 0)
                rc = vdi_error_set(err, -errno, "cannot sync %s: %s", temp, strerror(errno));
            if (fd >= 0)
                close(fd);
        }
        if (rc == 0)
            rc = vdi_place_noreplace_(temp, p->target, err);
        if (rc == 0)
            vdi_sync_dir_of_(p->target);
        else
            unlink(temp);
        vdi_intent_end_(cat, intent, NULL);
        return rc;
    }
    /* data: the link written into, then the links to remove, top first. */
    size_t len = strlen(p->target) + 2;
    for (size_t i = 0; i < p->nremoved; i++)
        len += strlen(p->removed[i]) + 1;
    char *data = malloc(len), *d = data;
    if (!data)
        return vdi_error_set(err, -ENOMEM, "out of memory");
    d += sprintf(d, "%s", p->target);
    for (size_t i = 0; i < p->nremoved; i++)
        d += sprintf(d, "\n%s", p->removed[i]);
    rc = vdi_intent_begin_(cat, "merge-commit", p->child, data, &intent, err);
    free(data);
    if (rc < 0)
        return rc;
    rc = commit_into(p->target, p->child, progress, ctx, err);
    if (rc < 0) {
        /* The links still hold all their data; the intent goes, nothing is lost. */
        vdi_intent_end_(cat, intent, NULL);
        return rc;
    }
    vdi_crashpoint("merge:committed");
    if ((rc = vdi_catalog_begin_(cat, err)) < 0)
        return rc;
    if ((rc = remove_links(cat, p->removed, p->nremoved, err)) < 0 ||
        (rc = vdi_intent_end_(cat, intent, err)) < 0) {
        vdi_catalog_rollback_(cat);
        return rc;
    }
    return vdi_catalog_commit_(cat, err);
}

int vdi_recover_merge_(vdi_catalog *cat, const char *op, const char *target, const char *data,
                       vdi_error *err)
{
    if (!strcmp(op, "merge-convert")) {
        unlink(data); /* the half-written temporary image */
        return access(target, F_OK) == 0 ? 1 : 0;
    }
    char *copy = strdup(data);
    if (!copy)
        return vdi_error_set(err, -ENOMEM, "out of memory");
    char *lines[VDI_CHAIN_MAX_LINKS + 1];
    size_t n = 0;
    char *save = NULL;
    for (char *l = strtok_r(copy, "\n", &save); l && n < VDI_CHAIN_MAX_LINKS + 1;
         l = strtok_r(NULL, "\n", &save))
        lines[n++] = l;
    int rc = 0;
    /* If the top still exists the commit may be incomplete: run it again (it
     * writes the same data). Links go only after a whole commit. */
    if (n >= 2 && access(target, F_OK) == 0)
        rc = commit_into(lines[0], target, NULL, NULL, err);
    if (rc == 0 && n >= 2)
        rc = remove_links(cat, lines + 1, n - 1, err);
    free(copy);
    return rc < 0 ? rc : 1;
}

/* ---- reparent ----------------------------------------------------------------- */

int vdi_reparent(vdi_catalog *cat, const char *child, const char *new_parent, vdi_error *err)
{
    char real_child[PATH_MAX], real_new[PATH_MAX];
    if (!realpath(child, real_child))
        return vdi_error_set(err, -errno, "%s: %s", child, strerror(errno));
    if (!realpath(new_parent, real_new))
        return vdi_error_set(err, -errno, "%s: %s", new_parent, strerror(errno));
    vdi_image *img = NULL;
    int rc = vdi_image_open(real_child, &img, err);
    if (rc < 0)
        return rc;
    char *old = NULL;
    const char *b = vdi_image_backing_name(img);
    if (!b) {
        vdi_image_close(img);
        return vdi_error_set(err, -EINVAL, "%s has no parent to repoint", real_child);
    }
    rc = vdi_backing_path(real_child, b, &old, err);
    vdi_image_close(img);
    if (rc < 0)
        return rc;
    char old_path[PATH_MAX];
    snprintf(old_path, sizeof old_path, "%s", old);
    free(old);

    vdi_gold_info g;
    if (vdi_catalog_gold(cat, old_path, &g, NULL) < 0)
        return vdi_error_set(err, -ENOENT,
                             "no fingerprint is recorded for %s, the parent %s was made from "
                             "(only sealed golds have one), so %s cannot be proven to be the same "
                             "file",
                             old_path, real_child, real_new);
    vdi_image *np = NULL;
    if ((rc = vdi_image_open(real_new, &np, err)) < 0)
        return rc;
    vdi_format fmt = vdi_image_format(np);
    uint64_t size = vdi_image_file_size(np);
    vdi_image_close(np);
    if (size != g.fp.size || fmt != g.format)
        return vdi_error_set(err, -EINVAL,
                             "%s is not the parent %s was made from: it is a %s file of %llu "
                             "bytes, the original was %s and %llu bytes",
                             real_new, real_child, vdi_format_name(fmt), (unsigned long long)size,
                             vdi_format_name(g.format), (unsigned long long)g.fp.size);
    uint8_t h[VDI_HASH_SIZE];
    if ((rc = vdi_content_hash(real_new, h, err)) < 0)
        return rc;
    if (memcmp(h, g.fp.hash, VDI_HASH_SIZE))
        return vdi_error_set(err, -EINVAL,
                             "%s is not the parent %s was made from: its content hash differs "
                             "from the one recorded when %s was sealed",
                             real_new, real_child, old_path);

    char data[2 * PATH_MAX + 2];
    snprintf(data, sizeof data, "%s\n%s", old_path, real_new);
    int64_t intent;
    if ((rc = vdi_intent_begin_(cat, "reparent", real_child, data, &intent, err)) < 0)
        return rc;
    const char *argv[] = { "qemu-img", "rebase", "-u", "-f", "qcow2", "-b", real_new, "-F",
                           vdi_format_name(fmt), real_child, NULL };
    rc = vdi_qemu_img_(argv, NULL, NULL, err);
    if (rc < 0) {
        vdi_intent_end_(cat, intent, NULL);
        return rc;
    }
    vdi_crashpoint("reparent:rebased");
    if ((rc = vdi_catalog_begin_(cat, err)) < 0)
        return rc;
    vdi_child_info ci;
    if (vdi_catalog_child(cat, real_child, &ci, NULL) == 0)
        rc = vdi_catalog_update_child_parent_(cat, real_child, real_new, err);
    else
        rc = vdi_catalog_add_child_(cat, real_child, real_new, NULL, 0, 0, err);
    /* The gold moved: its record follows it when the old file is gone. */
    if (rc == 0 && access(old_path, F_OK) != 0)
        rc = vdi_catalog_delete_gold_(cat, old_path, err);
    if (rc == 0)
        rc = vdi_intent_end_(cat, intent, err);
    if (rc == 0)
        rc = vdi_catalog_commit_(cat, err);
    else
        vdi_catalog_rollback_(cat);
    if (rc < 0)
        return rc;
    /* The new location is a gold now: seal it (protections, fingerprint). */
    vdi_seal_result sealed;
    if (vdi_catalog_gold(cat, real_new, &g, NULL) < 0)
        rc = vdi_seal(cat, real_new, &sealed, err);
    return rc;
}

int vdi_recover_reparent_(vdi_catalog *cat, const char *target, const char *data, vdi_error *err)
{
    const char *nl = strchr(data, '\n');
    if (!nl)
        return 0;
    const char *new_parent = nl + 1;
    vdi_image *img = NULL;
    if (vdi_image_open(target, &img, NULL) < 0)
        return 0;
    bool done = vdi_image_backing_name(img) && !strcmp(vdi_image_backing_name(img), new_parent);
    vdi_image_close(img);
    if (!done)
        return 0; /* the child still names the old parent: nothing happened */
    vdi_child_info ci;
    int rc = vdi_catalog_child(cat, target, &ci, NULL) == 0
                 ? vdi_catalog_update_child_parent_(cat, target, new_parent, err)
                 : vdi_catalog_add_child_(cat, target, new_parent, NULL, 0, 0, err);
    return rc < 0 ? rc : 1;
}
