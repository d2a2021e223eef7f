/* saveimage.c — libvirt's QEMU save image (what virDomainSave writes): a
 * 92-byte header, then data_len bytes holding the domain XML (NUL ended),
 * the cookie (NUL ended, at cookieOffset within the data) and zero padding,
 * then QEMU's migration stream to the end of the file.
 *
 *   magic[16] "LibvirtQemudSave"   ("LibvirtQemudPart" while being written)
 *   uint32 version (2), data_len, was_running, format (0 = raw),
 *          cookieOffset, unused[14]            -- host byte order (x86: LE)
 *
 * A desktop resumed from a pool's memory image gets its own copy of the
 * image whose XML names the desktop (name, UUID, disk): the UUID is
 * guest-visible ABI, so libvirt refuses to restore an image under another
 * UUID with a replacement XML; a rewritten header is what it accepts.
 * The stream is copied with copy_file_range, so a filesystem that shares
 * extents copies nothing, and it stays at the same offset whenever the new
 * XML fits the old data area. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SAVE_MAGIC "LibvirtQemudSave"
#define SAVE_PARTIAL "LibvirtQemudPart"
#define SAVE_HEADER 92
#define SAVE_MAX_DATA (16u << 20) /* an XML and a cookie; anything larger is not a save image */

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4); /* host order, as libvirt writes it */
    return v;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

/* A NUL-ended string inside [p, p + len), or NULL. */
static char *take_string(const uint8_t *p, size_t len)
{
    const uint8_t *nul = memchr(p, '\0', len);
    return nul ? strndup((const char *)p, (size_t)(nul - p)) : NULL;
}

int vdi_save_image_parse(const uint8_t *buf, size_t len, uint64_t file_size,
                         vdi_save_image *out, vdi_error *err)
{
    memset(out, 0, sizeof *out);
    if (len < SAVE_HEADER || file_size < SAVE_HEADER)
        return vdi_error_set(err, -EINVAL, "too short for a libvirt save image (%zu bytes)",
                             len);
    if (!memcmp(buf, SAVE_PARTIAL, 16))
        return vdi_error_set(err, -EINVAL,
                             "an unfinished libvirt save image (its save was interrupted)");
    if (memcmp(buf, SAVE_MAGIC, 16))
        return vdi_error_set(err, -EINVAL, "not a libvirt QEMU save image (no LibvirtQemudSave "
                                           "magic)");
    out->version = get_u32(buf + 16);
    out->data_len = get_u32(buf + 20);
    out->was_running = get_u32(buf + 24);
    out->format = get_u32(buf + 28);
    out->cookie_offset = get_u32(buf + 32);
    if (out->version != 2)
        return vdi_error_set(err, -ENOTSUP,
                             "save image version %u (of another byte order or libvirt); "
                             "version 2 is supported",
                             out->version);
    if (out->format != 0)
        return vdi_error_set(err, -ENOTSUP,
                             "a compressed save image (format %u); save it raw "
                             "(qemu.conf: save_image_format = \"raw\")",
                             out->format);
    if (out->data_len == 0 || out->data_len > SAVE_MAX_DATA)
        return vdi_error_set(err, -EINVAL, "save image data length %u is out of range (1..%u)",
                             out->data_len, SAVE_MAX_DATA);
    out->stream_offset = SAVE_HEADER + (uint64_t)out->data_len;
    if (out->stream_offset > file_size)
        return vdi_error_set(err, -EINVAL,
                             "save image data (%u bytes) runs past the end of the file (%llu)",
                             out->data_len, (unsigned long long)file_size);
    if (len < out->stream_offset)
        return vdi_error_set(err, -EAGAIN, "read %llu bytes of the header to parse it",
                             (unsigned long long)out->stream_offset);
    const uint8_t *data = buf + SAVE_HEADER;
    uint32_t xml_area = out->cookie_offset ? out->cookie_offset : out->data_len;
    if (xml_area > out->data_len)
        return vdi_error_set(err, -EINVAL, "save image cookie offset %u is past its data (%u)",
                             out->cookie_offset, out->data_len);
    if (!(out->xml = take_string(data, xml_area)) || !out->xml[0]) {
        vdi_save_image_clear(out);
        return vdi_error_set(err, -EINVAL, "save image XML is not a NUL-ended string in its data");
    }
    if (out->cookie_offset &&
        !(out->cookie = take_string(data + out->cookie_offset, out->data_len - out->cookie_offset))) {
        vdi_save_image_clear(out);
        return vdi_error_set(err, -EINVAL, "save image cookie is not a NUL-ended string");
    }
    out->size = file_size;
    return 0;
}

void vdi_save_image_clear(vdi_save_image *img)
{
    free(img->xml);
    free(img->cookie);
    img->xml = img->cookie = NULL;
}

int vdi_save_image_read(const char *path, vdi_save_image *out, vdi_error *err)
{
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return vdi_error_set(err, -errno, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    uint8_t head[SAVE_HEADER];
    int rc;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        rc = vdi_error_set(err, -EINVAL, "%s is not a regular file", path);
    } else if (pread(fd, head, sizeof head, 0) != (ssize_t)sizeof head) {
        rc = vdi_error_set(err, -EINVAL, "%s: too short for a libvirt save image", path);
    } else if ((rc = vdi_save_image_parse(head, sizeof head, (uint64_t)st.st_size, out, err)) ==
               -EAGAIN) {
        size_t want = (size_t)out->stream_offset;
        uint8_t *all = malloc(want);
        if (!all)
            rc = vdi_error_set(err, -ENOMEM, "out of memory");
        else if (pread(fd, all, want, 0) != (ssize_t)want)
            rc = vdi_error_set(err, -EIO, "cannot read %s's header: %s", path, strerror(errno));
        else
            rc = vdi_save_image_parse(all, want, (uint64_t)st.st_size, out, err);
        free(all);
    }
    if (rc < 0 && err && !strstr(err->message, path)) {
        char msg[sizeof err->message];
        memcpy(msg, err->message, sizeof msg);
        vdi_error_set(err, rc, "%s: %.900s", path, msg);
    }
    close(fd);
    return rc;
}

static int write_all(int fd, const uint8_t *p, size_t len, off_t off)
{
    while (len) {
        ssize_t n = pwrite(fd, p, len, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

/* The stream from src (at from) to dst (at to), len bytes: copy_file_range
 * (shared extents where the filesystem can), read/write where it cannot. */
static int copy_stream(int src, int dst, uint64_t from, uint64_t to, uint64_t len)
{
    loff_t in = (loff_t)from, out = (loff_t)to;
    while (len) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : (size_t)len;
        ssize_t n = copy_file_range(src, &in, dst, &out, chunk, 0);
        if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP ||
                      errno == EINVAL)) {
            static uint8_t buf[1 << 20];
            ssize_t r = pread(src, buf, chunk < sizeof buf ? chunk : sizeof buf, in);
            if (r <= 0 || write_all(dst, buf, (size_t)r, out) < 0)
                return -1;
            n = r;
            in += r;
            out += r;
        } else if (n <= 0) {
            return -1;
        }
        len -= (uint64_t)n;
    }
    return 0;
}

int vdi_save_image_copy(const char *src, const char *dst, const char *new_xml, vdi_error *err)
{
    vdi_save_image img;
    int rc = vdi_save_image_read(src, &img, err);
    if (rc < 0)
        return rc;
    size_t xml_len = strlen(new_xml) + 1;
    size_t cookie_len = img.cookie ? strlen(img.cookie) + 1 : 0;
    /* The same data area when the new XML fits (the stream stays where it
     * was, block-aligned as libvirt put it), else a larger one. */
    uint64_t data_len = img.data_len;
    if (xml_len + cookie_len > data_len)
        data_len = (xml_len + cookie_len + 4095) / 4096 * 4096;
    if (data_len > SAVE_MAX_DATA) {
        vdi_save_image_clear(&img);
        return vdi_error_set(err, -E2BIG, "the new domain XML (%zu bytes) is too large", xml_len);
    }
    uint8_t *head = calloc(1, SAVE_HEADER + data_len);
    if (!head) {
        vdi_save_image_clear(&img);
        return vdi_error_set(err, -ENOMEM, "out of memory");
    }
    memcpy(head, SAVE_PARTIAL, 16); /* finished last: a crash leaves an unfinished image */
    put_u32(head + 16, 2);
    put_u32(head + 20, (uint32_t)data_len);
    put_u32(head + 24, img.was_running);
    put_u32(head + 28, 0);
    put_u32(head + 32, img.cookie ? (uint32_t)xml_len : 0);
    memcpy(head + SAVE_HEADER, new_xml, xml_len);
    if (img.cookie)
        memcpy(head + SAVE_HEADER + xml_len, img.cookie, cookie_len);

    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", dst);
    int in = open(src, O_RDONLY | O_CLOEXEC);
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    uint64_t stream_len = img.size - img.stream_offset;
    if (in < 0 || out < 0) {
        rc = vdi_error_set(err, -errno, "cannot open %s: %s", in < 0 ? src : tmp, strerror(errno));
    } else if (write_all(out, head, SAVE_HEADER + data_len, 0) < 0 ||
               copy_stream(in, out, img.stream_offset, SAVE_HEADER + data_len, stream_len) < 0) {
        rc = vdi_error_set(err, -errno ? -errno : -EIO, "cannot write %s: %s", tmp,
                           strerror(errno));
    } else if (write_all(out, (const uint8_t *)SAVE_MAGIC, 16, 0) < 0 || fsync(out) < 0 ||
               rename(tmp, dst) < 0) {
        rc = vdi_error_set(err, -errno, "cannot finish %s: %s", dst, strerror(errno));
    }
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    if (rc < 0)
        unlink(tmp);
    else
        vdi_sync_dir_of_(dst);
    free(head);
    vdi_save_image_clear(&img);
    return rc;
}
