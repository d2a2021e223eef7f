/* guard.c — parents that cannot change. Three layers, cheap to strong:
 * the catalog fingerprint (stat before every clone, hash on seal and when in
 * doubt), file protections (0440, QEMU's owner, the immutable attribute), and
 * while the service runs, QEMU's own image lock held against writers.
 *
 * libvirt's DAC driver chowns a running domain's backing chain to QEMU's user
 * and never gives it back: that moves owner and ctime, not content. So a
 * ctime change alone is never taken as tampering: it sends the check to the
 * hash, and only a different hash taints. */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/fs.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* QEMU's file-posix locking: byte 100 + permission bit holds "I have this
 * permission", byte 200 + bit "I do not share it". WRITE is bit 1. */
#define QEMU_LOCK_PERM_BASE 100
#define QEMU_LOCK_SHARED_BASE 200
#define QEMU_PERM_WRITE_BIT 1

void vdi_fingerprint_from_stat_(const struct stat *st, vdi_fingerprint *fp)
{
    fp->size = (uint64_t)st->st_size;
    fp->dev = (uint64_t)st->st_dev;
    fp->ino = (uint64_t)st->st_ino;
    fp->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    fp->ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
}

static int get_flags(const char *path, int *flags)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    int rc = ioctl(fd, FS_IOC_GETFLAGS, flags) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

static int set_immutable(const char *path, bool on)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    int flags = 0;
    int rc = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) < 0)
        rc = -errno;
    if (rc == 0) {
        int want = on ? (flags | FS_IMMUTABLE_FL) : (flags & ~FS_IMMUTABLE_FL);
        if (want != flags && ioctl(fd, FS_IOC_SETFLAGS, &want) < 0)
            rc = -errno;
    }
    close(fd);
    return rc;
}

/* ---- who writes? ------------------------------------------------------- */

int vdi_guard_open_writers(const char *path, char *who, size_t who_len)
{
    int count = 0;
    if (who && who_len)
        who[0] = '\0';
    struct stat target;
    if (stat(path, &target) < 0)
        return 0;

    /* A QEMU with write permission holds a lock on its WRITE perm byte. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) {
        struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
                            .l_start = QEMU_LOCK_PERM_BASE + QEMU_PERM_WRITE_BIT, .l_len = 1 };
        if (fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK) {
            count++;
            if (who && who_len)
                snprintf(who, who_len, "a QEMU process (it holds QEMU's write lock)");
        }
        close(fd);
    }

    /* Any process with a write descriptor: /proc/PID/fdinfo says its flags. */
    DIR *proc = opendir("/proc");
    if (!proc)
        return count;
    struct dirent *p;
    pid_t self = getpid();
    while ((p = readdir(proc))) {
        char *end;
        long pid = strtol(p->d_name, &end, 10);
        if (*end || pid <= 0 || pid == self)
            continue;
        char fddir[64];
        snprintf(fddir, sizeof fddir, "/proc/%ld/fd", pid);
        DIR *fds = opendir(fddir);
        if (!fds)
            continue;
        struct dirent *f;
        while ((f = readdir(fds))) {
            if (f->d_name[0] == '.')
                continue;
            char link[320];
            snprintf(link, sizeof link, "%s/%s", fddir, f->d_name);
            struct stat st;
            if (stat(link, &st) < 0 || st.st_dev != target.st_dev || st.st_ino != target.st_ino)
                continue;
            char info[320];
            snprintf(info, sizeof info, "/proc/%ld/fdinfo/%s", pid, f->d_name);
            FILE *fi = fopen(info, "r");
            if (!fi)
                continue;
            char line[256];
            unsigned long flags = 0;
            while (fgets(line, sizeof line, fi))
                if (sscanf(line, "flags: %lo", &flags) == 1)
                    break;
            fclose(fi);
            if ((flags & O_ACCMODE) == O_RDONLY)
                continue;
            count++;
            if (who && who_len && (!who[0] || strstr(who, "QEMU's write lock"))) {
                char comm[64] = "?";
                char cpath[64];
                snprintf(cpath, sizeof cpath, "/proc/%ld/comm", pid);
                FILE *c = fopen(cpath, "r");
                if (c) {
                    if (fgets(comm, sizeof comm, c))
                        comm[strcspn(comm, "\n")] = '\0';
                    fclose(c);
                }
                snprintf(who, who_len, "process %ld (%s)", pid, comm);
            }
        }
        closedir(fds);
    }
    closedir(proc);
    return count;
}

/* ---- seal ---------------------------------------------------------------- */

static int count_children(vdi_catalog *cat, const char *path, size_t *n)
{
    vdi_found_child *kids = NULL;
    int rc = vdi_find_children(cat, path, NULL, 0, &kids, n, NULL);
    free(kids);
    return rc;
}

int vdi_seal(vdi_catalog *cat, const char *path, vdi_seal_result *out, vdi_error *err)
{
    memset(out, 0, sizeof *out);
    char real[PATH_MAX];
    if (!realpath(path, real)) {
        if (errno == ENOENT)
            return vdi_error_set(err, -ENOENT, "%s does not exist", path);
        return vdi_error_set(err, -errno, "cannot resolve %s: %s", path, strerror(errno));
    }
    vdi_chain *chain = NULL;
    int rc = vdi_chain_resolve(real, 0, &chain, err);
    if (rc < 0)
        return vdi_error_prefix(err, "cannot seal: ");
    vdi_format format = vdi_image_format(vdi_chain_link(chain, 0));
    uint64_t vsize = vdi_image_virtual_size(vdi_chain_link(chain, 0));
    vdi_chain_free(chain);

    vdi_gold_info existing;
    if (vdi_catalog_gold(cat, real, &existing, NULL) == 0) {
        if (existing.state == VDI_GOLD_TAINTED)
            return vdi_error_set(err, -ESTALE,
                                 "%s is tainted (%s); its children are orphaned. Delete them, "
                                 "then `vdipoolctl image unseal --force` it before sealing it "
                                 "again",
                                 real, existing.reason);
        /* Sealing again re-checks the content. */
        rc = vdi_guard_check(cat, real, true, err);
        if (rc < 0)
            return rc;
        vdi_catalog_gold(cat, real, &out->gold, NULL);
        snprintf(out->notes, sizeof out->notes, "already sealed; its content still matches");
        return 0;
    }

    char who[128];
    if (vdi_guard_open_writers(real, who, sizeof who) > 0)
        return vdi_error_set(err, -EBUSY,
                             "%s is open for writing by %s; stop the writer (shut the VM down), "
                             "then seal",
                             real, who);

    struct stat st0;
    if (stat(real, &st0) < 0)
        return vdi_error_set(err, -errno, "cannot stat %s: %s", real, strerror(errno));
    int flags0 = 0;
    get_flags(real, &flags0);
    char data[128];
    snprintf(data, sizeof data, "%o %u %u %d", (unsigned)(st0.st_mode & 07777),
             (unsigned)st0.st_uid, (unsigned)st0.st_gid, (flags0 & FS_IMMUTABLE_FL) ? 1 : 0);
    int64_t intent;
    if ((rc = vdi_intent_begin_(cat, "seal", real, data, &intent, err)) < 0)
        return rc;

    vdi_gold_info *g = &out->gold;
    snprintf(g->path, sizeof g->path, "%s", real);
    g->format = format;
    g->virtual_size = vsize;
    rc = vdi_content_hash(real, g->fp.hash, err);
    if (rc < 0)
        goto fail;
    struct stat st1;
    if (stat(real, &st1) < 0 || st1.st_size != st0.st_size ||
        st1.st_mtim.tv_sec != st0.st_mtim.tv_sec || st1.st_mtim.tv_nsec != st0.st_mtim.tv_nsec) {
        rc = vdi_error_set(err, -EBUSY, "%s changed while it was being hashed; stop whatever "
                                        "writes it and seal again",
                           real);
        goto fail;
    }
    vdi_crashpoint("seal:hashed");

    /* Owner and mode first: libvirt chowns a backing chain to QEMU's user,
     * and cannot once the file is immutable, so give it what it wants now. */
    size_t nl = 0;
    out->notes[0] = '\0';
    struct passwd *qemu = getpwnam("libvirt-qemu");
    if (qemu) {
        struct group *kvm = getgrnam("kvm");
        gid_t gid = kvm ? kvm->gr_gid : qemu->pw_gid;
        if (chown(real, qemu->pw_uid, gid) == 0)
            g->protections |= VDI_PROTECT_OWNER;
        else
            nl += (size_t)snprintf(out->notes + nl, sizeof out->notes - nl,
                                   "owner not changed to libvirt-qemu (%s); ", strerror(errno));
    } else {
        nl += (size_t)snprintf(out->notes + nl, sizeof out->notes - nl,
                               "owner left as is (no libvirt-qemu user); ");
    }
    if (chmod(real, 0440) == 0)
        g->protections |= VDI_PROTECT_READONLY;
    else
        nl += (size_t)snprintf(out->notes + nl, sizeof out->notes - nl,
                               "mode not made 0440 (%s); ", strerror(errno));
    int irc = set_immutable(real, true);
    if (irc == 0)
        g->protections |= VDI_PROTECT_IMMUTABLE;
    else
        nl += (size_t)snprintf(out->notes + nl, sizeof out->notes - nl,
                               "immutable attribute not set (%s: %s); ",
                               irc == -ENOTTY || irc == -EOPNOTSUPP ? "the filesystem does not "
                                                                      "support it"
                                                                    : "no CAP_LINUX_IMMUTABLE",
                               strerror(-irc));
    if (nl >= 2 && nl < sizeof out->notes)
        out->notes[nl - 2] = '\0';
    vdi_crashpoint("seal:protected");

    struct stat st2;
    if (stat(real, &st2) < 0) {
        rc = vdi_error_set(err, -errno, "cannot stat %s: %s", real, strerror(errno));
        goto fail;
    }
    vdi_fingerprint_from_stat_(&st2, &g->fp);
    g->sealed_at = time(NULL);
    g->state = VDI_GOLD_SEALED;
    if ((rc = vdi_catalog_begin_(cat, err)) < 0)
        goto fail;
    if ((rc = vdi_catalog_put_gold_(cat, g, err)) < 0 ||
        (rc = vdi_intent_end_(cat, intent, err)) < 0 || (rc = vdi_catalog_commit_(cat, err)) < 0) {
        vdi_catalog_rollback_(cat);
        goto fail;
    }
    vdi_catalog_gold(cat, real, g, NULL);
    return 0;

fail:
    vdi_recover_seal_(cat, real, data, NULL);
    vdi_intent_end_(cat, intent, NULL);
    return rc;
}

/* An unfinished seal is undone: protections back as they were. */
int vdi_recover_seal_(vdi_catalog *cat, const char *target, const char *data, vdi_error *err)
{
    (void)cat;
    (void)err;
    unsigned mode = 0644, uid = 0, gid = 0;
    int was_immutable = 0;
    if (sscanf(data, "%o %u %u %d", &mode, &uid, &gid, &was_immutable) != 4)
        return 0;
    if (!was_immutable)
        set_immutable(target, false);
    if (chown(target, uid, gid) < 0 || chmod(target, mode) < 0)
        return 0; /* the file may be gone; nothing more to undo */
    return 0;
}

int vdi_unseal(vdi_catalog *cat, const char *path, bool force, const char *const *dirs,
               size_t ndirs, size_t *orphaned, vdi_error *err)
{
    if (orphaned)
        *orphaned = 0;
    char real[PATH_MAX];
    if (!realpath(path, real))
        snprintf(real, sizeof real, "%s", path);
    vdi_gold_info g;
    int rc = vdi_catalog_gold(cat, real, &g, err);
    if (rc < 0)
        return rc;
    vdi_found_child *kids = NULL;
    size_t n = 0;
    if (access(real, F_OK) == 0) {
        rc = vdi_find_children(cat, real, dirs, ndirs, &kids, &n, err);
        if (rc < 0)
            return rc;
    }
    if (n && !force) {
        rc = vdi_error_set(err, -EBUSY,
                           "%s has %zu child%s (first: %s); unsealing would let writes orphan "
                           "them. Remove them first, or use --force",
                           real, n, n == 1 ? "" : "ren", kids[0].path);
        free(kids);
        return rc;
    }
    /* A template child with a memory image saved on it: writing to it would
     * corrupt every desktop resumed from that image, force or not. */
    size_t images = 0;
    if (vdi_memory_images_on(cat, real, &images, NULL) == 0 && images) {
        free(kids);
        return vdi_error_set(err, -EBUSY,
                             "%s has %zu memory image%s saved on it; delete %s first", real,
                             images, images == 1 ? "" : "s", images == 1 ? "it" : "them");
    }
    free(kids);
    if (access(real, F_OK) == 0) {
        set_immutable(real, false);
        if (chmod(real, 0640) < 0)
            return vdi_error_set(err, -errno, "cannot make %s writable: %s", real,
                                 strerror(errno));
    }
    rc = vdi_catalog_delete_gold_(cat, real, err);
    if (rc == 0 && orphaned)
        *orphaned = n;
    return rc;
}

/* ---- check ---------------------------------------------------------------- */

static int taint(vdi_catalog *cat, const vdi_gold_info *g, const char *what, vdi_error *err)
{
    size_t n = 0;
    count_children(cat, g->path, &n);
    char reason[512];
    snprintf(reason, sizeof reason, "%s", what);
    vdi_catalog_set_gold_state(cat, g->path, VDI_GOLD_TAINTED, reason, NULL);
    return vdi_error_set(err, -ESTALE,
                         "gold %s changed since it was sealed (%s): %zu child%s orphaned; no new "
                         "children will be made from it",
                         g->path, what, n, n == 1 ? "" : "ren");
}

static void fmt_time(int64_t ns, char *buf, size_t len)
{
    time_t t = (time_t)(ns / 1000000000);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%09lldZ", (long long)(ns % 1000000000));
}

int vdi_guard_check(vdi_catalog *cat, const char *path, bool full, vdi_error *err)
{
    vdi_gold_info g;
    int rc = vdi_catalog_gold(cat, path, &g, err);
    return rc < 0 ? rc : vdi_guard_check_gold_(cat, &g, full, err);
}

int vdi_guard_check_gold_(vdi_catalog *cat, const vdi_gold_info *row, bool full, vdi_error *err)
{
    vdi_gold_info g = *row; /* its ctime may be brought up to date below */
    int rc;
    if (g.state == VDI_GOLD_TAINTED)
        return vdi_error_set(err, -ESTALE, "gold %s is tainted: %s", g.path, g.reason);
    struct stat st;
    if (stat(g.path, &st) < 0)
        return taint(cat, &g, errno == ENOENT ? "the file is gone: deleted or renamed"
                                              : "the file cannot be read",
                     err);
    vdi_fingerprint now;
    vdi_fingerprint_from_stat_(&st, &now);
    char what[256];
    if (now.dev != g.fp.dev || now.ino != g.fp.ino)
        return taint(cat, &g, "another file is now at its path (inode changed)", err);
    if (now.size != g.fp.size) {
        snprintf(what, sizeof what, "size %llu -> %llu", (unsigned long long)g.fp.size,
                 (unsigned long long)now.size);
        return taint(cat, &g, what, err);
    }
    if (now.mtime_ns != g.fp.mtime_ns) {
        char a[64], b[64];
        fmt_time(g.fp.mtime_ns, a, sizeof a);
        fmt_time(now.mtime_ns, b, sizeof b);
        snprintf(what, sizeof what, "mtime %s -> %s", a, b);
        return taint(cat, &g, what, err);
    }
    int flags = 0;
    bool lost_immutable = (g.protections & VDI_PROTECT_IMMUTABLE) &&
                          get_flags(g.path, &flags) == 0 && !(flags & FS_IMMUTABLE_FL);
    bool doubt = now.ctime_ns != g.fp.ctime_ns || lost_immutable;
    if (!full && !doubt)
        return 0;
    /* The content decides: owner and mode changes (libvirt's chown) are fine. */
    uint8_t h[VDI_HASH_SIZE];
    rc = vdi_content_hash(g.path, h, err);
    if (rc < 0)
        return rc;
    if (memcmp(h, g.fp.hash, VDI_HASH_SIZE))
        return taint(cat, &g, "its content hash differs", err);
    if (now.ctime_ns != g.fp.ctime_ns) {
        g.fp.ctime_ns = now.ctime_ns;
        vdi_catalog_put_gold_(cat, &g, NULL);
    }
    return 0;
}

int vdi_guard_verify_content(const vdi_gold_info *g, vdi_error *err)
{
    uint8_t h[VDI_HASH_SIZE];
    int rc = vdi_content_hash(g->path, h, err);
    if (rc < 0)
        return rc;
    if (memcmp(h, g->fp.hash, VDI_HASH_SIZE))
        return vdi_error_set(err, -ESTALE, "gold %s: its content hash differs", g->path);
    return 0;
}

/* ---- lock ------------------------------------------------------------------ */

int vdi_guard_lock(const char *path, int *fd_out, vdi_error *err)
{
    *fd_out = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return vdi_error_set(err, -errno, "cannot open %s to lock it: %s", path, strerror(errno));
    /* A shared lock on "does not share WRITE": QEMU's writers see a conflict,
     * its readers (backing files share WRITE) do not. */
    struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET,
                        .l_start = QEMU_LOCK_SHARED_BASE + QEMU_PERM_WRITE_BIT, .l_len = 1 };
    if (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
        int e = errno;
        close(fd);
        if (e == EAGAIN || e == EACCES)
            return vdi_error_set(err, -EBUSY, "%s is open for writing (QEMU's write lock is "
                                              "held); cannot guard it",
                                 path);
        return vdi_error_set(err, -e, "cannot lock %s: %s", path, strerror(e));
    }
    /* Two shared locks do not conflict, so a writer that was already there
     * is found by its WRITE permission byte instead. */
    struct flock probe = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
                           .l_start = QEMU_LOCK_PERM_BASE + QEMU_PERM_WRITE_BIT, .l_len = 1 };
    if (fcntl(fd, F_OFD_GETLK, &probe) == 0 && probe.l_type != F_UNLCK) {
        close(fd);
        return vdi_error_set(err, -EBUSY, "%s is open for writing by a QEMU process; cannot "
                                          "guard it",
                             path);
    }
    *fd_out = fd;
    return 0;
}

void vdi_guard_unlock(int fd)
{
    if (fd >= 0)
        close(fd);
}
