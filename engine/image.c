/* image.c — probing one file: what format it is, and for qcow2 its header.
 * A parent must be a disk image file, so anything else is refused with a
 * sentence that says what the file looks like. */
#include "internal.h"
#include "qcow2.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct vdi_image {
    char *path;
    vdi_format format;
    uint64_t virtual_size;
    uint64_t file_size;
    uint64_t allocated;
    uint64_t dev, ino;
    qcow2_header q; /* valid when format is qcow2 */
};

const char *vdi_format_name(vdi_format format)
{
    switch (format) {
    case VDI_FORMAT_RAW: return "raw";
    case VDI_FORMAT_QCOW2: return "qcow2";
    default: return "unknown";
    }
}

/* Reads up to len bytes at off; returns bytes read or a negative errno. */
static ssize_t read_at(int fd, void *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[1] << 8 | p[0]); }

static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p + 4) << 32 | le32(p); }

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static const char *vhd_type_name(uint32_t type)
{
    switch (type) {
    case 2: return "fixed";
    case 3: return "dynamic";
    case 4: return "differencing";
    default: return "unknown-type";
    }
}

/* VHDX: does the File Parameters metadata item say HasParent? Returns 1, 0,
 * or -1 when the metadata cannot be read (the file is refused either way). */
static int vhdx_has_parent(int fd, uint64_t file_size)
{
    static const uint8_t metadata_region[16] = { 0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b,
                                                 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e };
    static const uint8_t file_parameters[16] = { 0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d,
                                                 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b };
    static const uint8_t parent_locator[16] = { 0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45,
                                                0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c };
    uint8_t rt[65536];
    /* Region table at 192 KiB, 64 KiB long: 16-byte header, 32-byte entries. */
    if (read_at(fd, rt, sizeof rt, 192 * 1024) != (ssize_t)sizeof rt || memcmp(rt, "regi", 4))
        return -1;
    uint32_t entries = le32(rt + 8);
    if (entries > (sizeof rt - 16) / 32)
        return -1;
    for (uint32_t i = 0; i < entries; i++) {
        const uint8_t *e = rt + 16 + (size_t)i * 32;
        if (memcmp(e, metadata_region, 16))
            continue;
        uint64_t off = le64(e + 16);
        uint32_t len = le32(e + 24);
        if (len < 32 || off > file_size || len > file_size - off)
            return -1;
        uint8_t mt[65536];
        size_t tlen = len < sizeof mt ? len : sizeof mt;
        if (read_at(fd, mt, tlen, off) != (ssize_t)tlen || memcmp(mt, "metadata", 8))
            return -1;
        uint16_t items = le16(mt + 10);
        if (items > (tlen - 32) / 32)
            return -1;
        for (uint16_t j = 0; j < items; j++) {
            const uint8_t *m = mt + 32 + (size_t)j * 32;
            if (!memcmp(m, parent_locator, 16))
                return 1;
            if (memcmp(m, file_parameters, 16))
                continue;
            uint32_t ioff = le32(m + 16), ilen = le32(m + 20);
            if (ilen < 8 || ioff > len - 8)
                return -1;
            uint8_t fp[8];
            if (read_at(fd, fp, sizeof fp, off + ioff) != (ssize_t)sizeof fp)
                return -1;
            return (le32(fp + 4) & 2) ? 1 : 0;
        }
        return -1;
    }
    return -1;
}

static bool looks_like_text(const uint8_t *b, size_t n)
{
    if (n == 0 || !memchr(b, '\n', n))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(isprint(b[i]) || b[i] == '\n' || b[i] == '\r' || b[i] == '\t'))
            return false;
    return true;
}

/* Names a file that is not a usable disk image, or returns NULL when the
 * head and size are those of a plausible raw disk. */
static int refuse_non_image(int fd, const char *path, const uint8_t *head, size_t n,
                            uint64_t size, vdi_error *err)
{
    const char *what = NULL;
    if (n >= 4 && !memcmp(head, "QFI\xfb", 4))
        what = "a qcow (version 1) image; convert it with `qemu-img convert -O qcow2`";
    else if (n >= 4 && !memcmp(head, "KDMV", 4))
        what = "a VMDK image; convert it with `qemu-img convert -O qcow2`";
    else if (n >= 21 && !memcmp(head, "# Disk DescriptorFile", 21))
        what = "a VMDK descriptor; convert the disk with `qemu-img convert -O qcow2`";
    else if (n >= 4 && !memcmp(head, "QED\0", 4))
        what = "a QED image; convert it with `qemu-img convert -O qcow2`";
    else if (n >= 68 && le32(head + 64) == 0xbeda107fu)
        what = "a VirtualBox VDI image; convert it with `qemu-img convert -O qcow2`";
    else if (n >= 6 && !memcmp(head, "LUKS\xba\xbe", 6))
        what = "a LUKS-encrypted volume, which vdipool does not support";
    else if (n >= 0x8006 && !memcmp(head + 0x8001, "CD001", 5))
        what = "an ISO 9660 CD/DVD image; attach it as a CD-ROM, it cannot be a parent disk";
    else if (n >= 2 && head[0] == 0x1f && head[1] == 0x8b)
        what = "gzip-compressed data; decompress it first";
    else if (n >= 6 && !memcmp(head, "\xfd" "7zXZ\0", 6))
        what = "xz-compressed data; decompress it first";
    else if (n >= 4 && !memcmp(head, "\x28\xb5\x2f\xfd", 4))
        what = "zstd-compressed data; decompress it first";
    else if (n >= 3 && !memcmp(head, "BZh", 3))
        what = "bzip2-compressed data; decompress it first";
    else if (n >= 4 && !memcmp(head, "PK\x03\x04", 4))
        what = "a zip archive";
    else if (n >= 262 && !memcmp(head + 257, "ustar", 5))
        what = "a tar archive; extract the disk image from it first";
    else if (n >= 4 && !memcmp(head, "\x7f" "ELF", 4))
        what = "an ELF executable";
    else if (n >= 16 && !memcmp(head, "SQLite format 3", 16))
        what = "an SQLite database";
    /* A raw disk may start with any bytes, so text is only named for files
     * that cannot be disks anyway (size not a multiple of 512). */
    else if (size % 512 && looks_like_text(head, n < 512 ? n : 512))
        what = "a text file";
    if (what)
        return vdi_error_set(err, -EINVAL, "%s is not a disk image: it looks like %s", path, what);

    /* VHD: footer copy at 0 (dynamic, differencing) or footer at the end (fixed). */
    uint8_t footer[512];
    const uint8_t *vhd = NULL;
    if (n >= 512 && !memcmp(head, "conectix", 8))
        vhd = head;
    else if (size >= 512 && read_at(fd, footer, 512, size - 512) == 512 &&
             !memcmp(footer, "conectix", 8))
        vhd = footer;
    if (vhd) {
        uint32_t type = be32(vhd + 60);
        if (type == 4)
            return vdi_error_set(err, -ENOTSUP,
                                 "%s is a differencing VHD (footer disk type 4): QEMU 7.2 would "
                                 "open it as a standalone disk whose parent blocks read as zeros, "
                                 "silently. Merge it into its parent with Hyper-V or "
                                 "`Merge-VHD`, then convert the result with `qemu-img convert -O "
                                 "qcow2`",
                                 path);
        return vdi_error_set(err, -ENOTSUP,
                             "%s is a %s VHD image, which vdipool does not take as a parent; "
                             "convert it with `qemu-img convert -f vpc -O qcow2`",
                             path, vhd_type_name(type));
    }
    if (n >= 8 && !memcmp(head, "vhdxfile", 8)) {
        int parent = vhdx_has_parent(fd, size);
        if (parent == 1)
            return vdi_error_set(err, -ENOTSUP,
                                 "%s is a differencing VHDX (HasParent): QEMU 7.2 would open it as "
                                 "a standalone disk whose parent blocks read as zeros, silently. "
                                 "Merge it into its parent first, then convert the result with "
                                 "`qemu-img convert -f vhdx -O qcow2`",
                                 path);
        return vdi_error_set(err, -ENOTSUP,
                             "%s is a VHDX image, which vdipool does not take as a parent; convert "
                             "it with `qemu-img convert -f vhdx -O qcow2`",
                             path);
    }
    if (size % 512)
        return vdi_error_set(err, -EINVAL,
                             "%s is not a disk image: its size (%llu bytes) is not a multiple of "
                             "512",
                             path, (unsigned long long)size);
    return 0;
}

int vdi_image_vhd_kind(const char *path, vdi_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return vdi_error_set(err, -errno, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    uint8_t head[512], footer[512];
    int kind = 0;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && read_at(fd, head, 512, 0) == 512) {
        uint64_t size = (uint64_t)st.st_size;
        const uint8_t *vhd = NULL;
        if (!memcmp(head, "conectix", 8))
            vhd = head;
        else if (size >= 512 && read_at(fd, footer, 512, size - 512) == 512 &&
                 !memcmp(footer, "conectix", 8))
            vhd = footer;
        if (vhd && be32(vhd + 60) == 4)
            kind = vdi_error_set(err, -ENOTSUP,
                                 "%s is a differencing VHD: QEMU cannot read its parent; merge "
                                 "it into its parent with Hyper-V (`Merge-VHD`) and import the "
                                 "result",
                                 path);
        else if (vhd)
            kind = 1;
        else if (!memcmp(head, "vhdxfile", 8))
            kind = vhdx_has_parent(fd, size) == 1
                       ? vdi_error_set(err, -ENOTSUP,
                                       "%s is a differencing VHDX (HasParent): QEMU cannot read "
                                       "its parent; merge it into its parent first and import "
                                       "the result",
                                       path)
                       : 2;
    }
    close(fd);
    return kind;
}

int vdi_image_open(const char *path, vdi_image **out, vdi_error *err)
{
    int rc = 0;
    int fd = -1;
    uint8_t *buf = NULL;
    vdi_image *img = NULL;
    *out = NULL;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        rc = -errno;
        if (rc == -ENOENT)
            vdi_error_set(err, rc, "%s does not exist", path);
        else
            vdi_error_set(err, rc, "cannot open %s: %s", path, strerror(-rc));
        goto cleanup;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = vdi_error_set(err, -errno, "cannot stat %s: %s", path, strerror(errno));
        goto cleanup;
    }
    if (!S_ISREG(st.st_mode)) {
        const char *kind = S_ISDIR(st.st_mode)    ? "a directory"
                           : S_ISBLK(st.st_mode)  ? "a block device"
                           : S_ISCHR(st.st_mode)  ? "a character device"
                           : S_ISFIFO(st.st_mode) ? "a FIFO"
                           : S_ISSOCK(st.st_mode) ? "a socket"
                                                  : "not a regular file";
        rc = vdi_error_set(err, -EINVAL, "%s is %s, not a disk image file", path, kind);
        goto cleanup;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size == 0) {
        rc = vdi_error_set(err, -EINVAL, "%s is an empty file (0 bytes), not a disk image", path);
        goto cleanup;
    }

    /* A probe reads what the header needs: the first 4 KiB hold a qcow2
     * header, its extensions and a child's backing name (they end at the
     * backing name). An image without a backing name (a gold) may have
     * extensions up to the end of its first cluster, which is read then;
     * other formats get 64 KiB for their signatures (ISO's sits at 32 KiB).
     * Scanning a datastore of children thus reads 4 KiB per child. */
    size_t want = 4096;
    buf = malloc(want);
    if (!buf) {
        rc = vdi_error_set(err, -ENOMEM, "out of memory probing %s", path);
        goto cleanup;
    }
    ssize_t n = read_at(fd, buf, want, 0);
    if (n < 0) {
        rc = vdi_error_set(err, (int)n, "cannot read %s: %s", path, strerror((int)-n));
        goto cleanup;
    }
    bool qcow2 = n >= 8 && be32(buf) == QCOW2_MAGIC && be32(buf + 4) >= 2;
    if (!qcow2 && (size_t)n == want) {
        uint8_t *bigger = realloc(buf, 64 * 1024);
        if (!bigger) {
            rc = vdi_error_set(err, -ENOMEM, "out of memory probing %s", path);
            goto cleanup;
        }
        buf = bigger;
        if ((n = read_at(fd, buf, 64 * 1024, 0)) < 0) {
            rc = vdi_error_set(err, (int)n, "cannot read %s: %s", path, strerror((int)-n));
            goto cleanup;
        }
    }

    img = calloc(1, sizeof *img);
    if (!img || !(img->path = strdup(path))) {
        rc = vdi_error_set(err, -ENOMEM, "out of memory probing %s", path);
        goto cleanup;
    }
    img->file_size = size;
    img->allocated = (uint64_t)st.st_blocks * 512;
    img->dev = (uint64_t)st.st_dev;
    img->ino = (uint64_t)st.st_ino;

    if (qcow2) {
        uint32_t cluster_bits = n >= 24 ? be32(buf + 20) : 0;
        uint64_t backing_offset = n >= 20 ? be64(buf + 8) : 0;
        uint32_t backing_size = n >= 20 ? be32(buf + 16) : 0;
        bool all_read = backing_offset && backing_size &&
                        backing_offset + backing_size <= (uint64_t)n;
        if (!all_read && cluster_bits >= 9 && cluster_bits <= QCOW2_MAX_CLUSTER_BITS &&
            (size_t)n == want) {
            size_t cs = (size_t)1 << cluster_bits;
            uint8_t *bigger = cs > want ? realloc(buf, cs) : buf;
            if (!bigger) {
                rc = vdi_error_set(err, -ENOMEM, "out of memory probing %s", path);
                goto cleanup;
            }
            buf = bigger;
            n = read_at(fd, buf, cs, 0);
            if (n < 0) {
                rc = vdi_error_set(err, (int)n, "cannot read %s: %s", path, strerror((int)-n));
                goto cleanup;
            }
        }
        rc = qcow2_parse_header(buf, (size_t)n, size, &img->q, err);
        if (rc < 0) {
            vdi_error_prefix(err, "%s: ", path);
            goto cleanup;
        }
        img->format = VDI_FORMAT_QCOW2;
        img->virtual_size = img->q.virtual_size;
    } else {
        rc = refuse_non_image(fd, path, buf, (size_t)n, size, err);
        if (rc < 0)
            goto cleanup;
        img->format = VDI_FORMAT_RAW;
        img->virtual_size = size;
    }
    *out = img;
    img = NULL;

cleanup:
    if (fd >= 0)
        close(fd);
    free(buf);
    vdi_image_close(img);
    return rc;
}

void vdi_image_close(vdi_image *img)
{
    if (!img)
        return;
    free(img->path);
    free(img);
}

const char *vdi_image_path(const vdi_image *img) { return img->path; }
vdi_format vdi_image_format(const vdi_image *img) { return img->format; }
uint64_t vdi_image_virtual_size(const vdi_image *img) { return img->virtual_size; }
uint64_t vdi_image_file_size(const vdi_image *img) { return img->file_size; }
uint64_t vdi_image_allocated_bytes(const vdi_image *img) { return img->allocated; }

int vdi_image_qcow2_version(const vdi_image *img)
{
    return img->format == VDI_FORMAT_QCOW2 ? (int)img->q.version : 0;
}

uint32_t vdi_image_cluster_size(const vdi_image *img)
{
    return img->format == VDI_FORMAT_QCOW2 ? UINT32_C(1) << img->q.cluster_bits : 0;
}

bool vdi_image_extended_l2(const vdi_image *img)
{
    return img->format == VDI_FORMAT_QCOW2 && (img->q.incompatible_features & QCOW2_INCOMPAT_EXTL2);
}

bool vdi_image_dirty(const vdi_image *img)
{
    return img->format == VDI_FORMAT_QCOW2 && (img->q.incompatible_features & QCOW2_INCOMPAT_DIRTY);
}

const char *vdi_image_backing_name(const vdi_image *img)
{
    return img->format == VDI_FORMAT_QCOW2 && img->q.has_backing ? img->q.backing_name : NULL;
}

const char *vdi_image_backing_format(const vdi_image *img)
{
    return img->format == VDI_FORMAT_QCOW2 && img->q.has_backing_format ? img->q.backing_format
                                                                         : NULL;
}

void vdi_image_identity(const vdi_image *img, uint64_t *dev, uint64_t *ino)
{
    *dev = img->dev;
    *ino = img->ino;
}

int vdi_backing_path(const char *child_path, const char *backing_name, char **out,
                     vdi_error *err)
{
    *out = NULL;
    if (!strncmp(backing_name, "json:", 5))
        return vdi_error_set(err, -ENOTSUP,
                             "backing file '%s' is a json: specification; vdipool only follows "
                             "plain local files",
                             backing_name);
    /* QEMU treats "proto:..." as a protocol when the colon comes before any slash. */
    const char *colon = strchr(backing_name, ':');
    const char *slash = strchr(backing_name, '/');
    if (colon && (!slash || colon < slash))
        return vdi_error_set(err, -ENOTSUP,
                             "backing file '%s' names a protocol ('%.*s:'); vdipool only follows "
                             "plain local files",
                             backing_name, (int)(colon - backing_name), backing_name);
    char *path = NULL;
    if (backing_name[0] == '/') {
        path = strdup(backing_name);
    } else {
        const char *last = strrchr(child_path, '/');
        size_t dirlen = last ? (size_t)(last - child_path) + 1 : 0;
        size_t len = dirlen + strlen(backing_name) + 1;
        path = malloc(len);
        if (path)
            snprintf(path, len, "%.*s%s", (int)dirlen, child_path, backing_name);
    }
    if (!path)
        return vdi_error_set(err, -ENOMEM, "out of memory");
    *out = path;
    return 0;
}

int vdi_backing_real_path(const char *child_path, const char *backing_name, char **out,
                          vdi_error *err)
{
    int rc = vdi_backing_path(child_path, backing_name, out, err);
    char real[PATH_MAX];
    if (rc < 0 || !realpath(*out, real))
        return rc;
    char *canonical = strdup(real);
    if (!canonical) {
        free(*out);
        *out = NULL;
        return vdi_error_set(err, -ENOMEM, "out of memory");
    }
    free(*out);
    *out = canonical;
    return 0;
}

int vdi_for_each_image_(const char *dir, vdi_image_visit_fn fn, void *ctx)
{
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path)
            continue;
        struct stat st;
        if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode))
            continue;
        vdi_image *img = NULL;
        if (vdi_image_open(path, &img, NULL) < 0)
            continue;
        fn(path, img, ctx);
        vdi_image_close(img);
    }
    closedir(d);
    return 0;
}
