/* qcow2.c — reading and writing the qcow2 header. Every offset and size read
 * from a file is checked against the buffer and the file before use: images
 * come from operators, guests and attackers alike. */
#include "qcow2.h"

#include <errno.h>
#include <string.h>

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const uint8_t *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

static bool aligned(uint64_t off, uint32_t cluster_bits)
{
    return (off & ((UINT64_C(1) << cluster_bits) - 1)) == 0;
}

static uint64_t div_round_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

/* Number of L1 entries needed to map virtual_size. */
static uint64_t l1_entries_for(uint64_t virtual_size, uint32_t cluster_bits, bool extended_l2)
{
    uint32_t l2_bits = cluster_bits - (extended_l2 ? 4 : 3);
    unsigned shift = cluster_bits + l2_bits;
    if (shift >= 64)
        return 1;
    return div_round_up(virtual_size, UINT64_C(1) << shift);
}

static int parse_extensions(const uint8_t *buf, size_t start, size_t end, qcow2_header *h,
                            vdi_error *err)
{
    size_t off = start;
    /* Each extension is at least 8 bytes, so the loop is bounded by end/8. */
    while (off + 8 <= end) {
        uint32_t type = be32(buf + off);
        uint32_t len = be32(buf + off + 4);
        if (type == QCOW2_EXT_END)
            return 0;
        size_t data = off + 8;
        if (len > end - data)
            return vdi_error_set(err, -EINVAL,
                                 "qcow2 header extension 0x%08x at offset %zu claims %u bytes, "
                                 "past the end of the header area (%zu)",
                                 type, off, len, end);
        switch (type) {
        case QCOW2_EXT_BACKING_FORMAT:
            if (len == 0 || len > QCOW2_MAX_BACKING_FMT)
                return vdi_error_set(err, -EINVAL,
                                     "qcow2 backing-format extension has length %u (expected 1..%u)",
                                     len, QCOW2_MAX_BACKING_FMT);
            if (memchr(buf + data, '\0', len))
                return vdi_error_set(err, -EINVAL, "qcow2 backing-format name contains a NUL byte");
            memcpy(h->backing_format, buf + data, len);
            h->backing_format[len] = '\0';
            h->has_backing_format = true;
            break;
        case QCOW2_EXT_DATA_FILE:
            return vdi_error_set(err, -ENOTSUP,
                                 "qcow2 image uses an external data file, which vdipool does not "
                                 "support");
        case QCOW2_EXT_CRYPTO:
            return vdi_error_set(err, -ENOTSUP, "qcow2 image is encrypted (LUKS); vdipool does not "
                                                "support encrypted images");
        default:
            break; /* feature table, bitmaps, unknown: QEMU keeps them, so do we */
        }
        size_t padded = ((size_t)len + 7) & ~(size_t)7;
        if (padded > end - data)
            return 0; /* the padding may run into the end: nothing more fits */
        off = data + padded;
    }
    return 0;
}

int qcow2_parse_header(const uint8_t *buf, size_t buflen, uint64_t file_size, qcow2_header *out,
                       vdi_error *err)
{
    qcow2_header h;
    memset(&h, 0, sizeof h);
    if (buflen > file_size)
        buflen = (size_t)file_size;
    if (buflen < QCOW2_V2_HEADER_LEN)
        return vdi_error_set(err, -EINVAL,
                             "truncated qcow2 header: %zu bytes, a header needs at least %u",
                             buflen, QCOW2_V2_HEADER_LEN);
    if (be32(buf) != QCOW2_MAGIC)
        return vdi_error_set(err, -EINVAL, "not a qcow2 file (bad magic)");
    h.version = be32(buf + 4);
    if (h.version != 2 && h.version != 3)
        return vdi_error_set(err, -ENOTSUP,
                             "qcow2 version %u is not supported (only 2 and 3); convert with "
                             "`qemu-img convert -O qcow2`",
                             h.version);
    uint64_t backing_offset = be64(buf + 8);
    uint32_t backing_size = be32(buf + 16);
    h.cluster_bits = be32(buf + 20);
    h.virtual_size = be64(buf + 24);
    h.crypt_method = be32(buf + 32);
    h.l1_size = be32(buf + 36);
    h.l1_table_offset = be64(buf + 40);
    h.refcount_table_offset = be64(buf + 48);
    h.refcount_table_clusters = be32(buf + 56);
    h.nb_snapshots = be32(buf + 60);
    h.snapshots_offset = be64(buf + 64);

    if (h.cluster_bits < QCOW2_MIN_CLUSTER_BITS || h.cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return vdi_error_set(err, -EINVAL, "qcow2 cluster_bits %u is out of range (%u..%u)",
                             h.cluster_bits, QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
    uint32_t cluster_size = UINT32_C(1) << h.cluster_bits;

    if (h.version == 2) {
        h.header_length = QCOW2_V2_HEADER_LEN;
        h.refcount_order = 4;
    } else {
        if (buflen < QCOW2_V3_HEADER_LEN)
            return vdi_error_set(err, -EINVAL,
                                 "truncated qcow2 v3 header: %zu bytes, it needs at least %u",
                                 buflen, QCOW2_V3_HEADER_LEN);
        h.incompatible_features = be64(buf + 72);
        h.compatible_features = be64(buf + 80);
        h.autoclear_features = be64(buf + 88);
        h.refcount_order = be32(buf + 96);
        h.header_length = be32(buf + 100);
        if (h.header_length < QCOW2_V3_HEADER_LEN || h.header_length > cluster_size ||
            h.header_length > buflen)
            return vdi_error_set(err, -EINVAL,
                                 "qcow2 header_length %u is invalid (must be %u..%u and inside the "
                                 "file)",
                                 h.header_length, QCOW2_V3_HEADER_LEN, cluster_size);
        if (h.header_length > QCOW2_V3_HEADER_LEN)
            h.compression_type = buf[104];
        if (h.refcount_order > 6)
            return vdi_error_set(err, -EINVAL, "qcow2 refcount_order %u is out of range (0..6)",
                                 h.refcount_order);
        uint64_t unknown = h.incompatible_features & ~(uint64_t)QCOW2_INCOMPAT_KNOWN;
        if (unknown)
            return vdi_error_set(err, -ENOTSUP,
                                 "qcow2 image has unknown incompatible features 0x%llx; a newer "
                                 "QEMU wrote it",
                                 (unsigned long long)unknown);
        if (h.incompatible_features & QCOW2_INCOMPAT_CORRUPT)
            return vdi_error_set(err, -EINVAL,
                                 "qcow2 image is marked corrupt; inspect it with `qemu-img check` "
                                 "and repair with `qemu-img check -r all`");
        if (h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
            return vdi_error_set(err, -ENOTSUP, "qcow2 image uses an external data file, which "
                                                "vdipool does not support");
        if ((h.incompatible_features & QCOW2_INCOMPAT_COMPRESSION) && h.compression_type > 1)
            return vdi_error_set(err, -ENOTSUP, "qcow2 compression type %u is unknown",
                                 h.compression_type);
        if ((h.incompatible_features & QCOW2_INCOMPAT_EXTL2) && h.cluster_bits < 14)
            return vdi_error_set(err, -EINVAL,
                                 "qcow2 image uses extended L2 entries with %u-byte clusters (they "
                                 "need at least 16384)",
                                 cluster_size);
    }
    if (h.crypt_method != 0)
        return vdi_error_set(err, -ENOTSUP,
                             "qcow2 image is encrypted (method %u); vdipool does not support "
                             "encrypted images",
                             h.crypt_method);

    bool extl2 = h.incompatible_features & QCOW2_INCOMPAT_EXTL2;
    if (h.virtual_size > (UINT64_C(1) << 62))
        return vdi_error_set(err, -EINVAL, "qcow2 virtual size %llu is implausibly large",
                             (unsigned long long)h.virtual_size);
    if ((uint64_t)h.l1_size * 8 > QCOW2_MAX_L1_BYTES)
        return vdi_error_set(err, -EINVAL,
                             "qcow2 L1 table of %u entries is larger than QEMU accepts (%u bytes)",
                             h.l1_size, QCOW2_MAX_L1_BYTES);
    uint64_t l1_needed = l1_entries_for(h.virtual_size, h.cluster_bits, extl2);
    if (h.l1_size < l1_needed)
        return vdi_error_set(err, -EINVAL,
                             "qcow2 L1 table has %u entries but the virtual size %llu needs %llu",
                             h.l1_size, (unsigned long long)h.virtual_size,
                             (unsigned long long)l1_needed);
    if (h.l1_size && (h.l1_table_offset == 0 || !aligned(h.l1_table_offset, h.cluster_bits) ||
                      h.l1_table_offset > file_size))
        return vdi_error_set(err, -EINVAL,
                             "qcow2 L1 table offset %llu is invalid (zero, unaligned or past the "
                             "end of the %llu-byte file)",
                             (unsigned long long)h.l1_table_offset, (unsigned long long)file_size);
    if (h.refcount_table_offset == 0 || !aligned(h.refcount_table_offset, h.cluster_bits) ||
        h.refcount_table_offset > file_size)
        return vdi_error_set(err, -EINVAL,
                             "qcow2 refcount table offset %llu is invalid (zero, unaligned or past "
                             "the end of the %llu-byte file)",
                             (unsigned long long)h.refcount_table_offset,
                             (unsigned long long)file_size);
    if (h.refcount_table_clusters == 0 ||
        (uint64_t)h.refcount_table_clusters * cluster_size > QCOW2_MAX_REFTABLE_BYTES)
        return vdi_error_set(err, -EINVAL, "qcow2 refcount table of %u clusters is out of range",
                             h.refcount_table_clusters);
    if (h.nb_snapshots > QCOW2_MAX_SNAPSHOTS)
        return vdi_error_set(err, -EINVAL, "qcow2 image claims %u snapshots (QEMU allows %u)",
                             h.nb_snapshots, QCOW2_MAX_SNAPSHOTS);
    if (h.nb_snapshots && (!aligned(h.snapshots_offset, h.cluster_bits) ||
                           h.snapshots_offset == 0 || h.snapshots_offset > file_size))
        return vdi_error_set(err, -EINVAL, "qcow2 snapshot table offset %llu is invalid",
                             (unsigned long long)h.snapshots_offset);

    /* Header extensions live between the header and the backing name (or the
     * end of the first cluster); the backing name must lie in the first cluster. */
    size_t area_end = cluster_size < buflen ? cluster_size : buflen;
    if (backing_offset != 0) {
        if (backing_size == 0 || backing_size > QCOW2_MAX_BACKING_NAME)
            return vdi_error_set(err, -EINVAL,
                                 "qcow2 backing file name length %u is invalid (1..%u)",
                                 backing_size, QCOW2_MAX_BACKING_NAME);
        if (backing_offset < h.header_length || backing_offset > file_size ||
            backing_offset + backing_size > file_size)
            return vdi_error_set(err, -EINVAL,
                                 "qcow2 backing file name at offset %llu (+%u bytes) lies outside "
                                 "the %llu-byte file",
                                 (unsigned long long)backing_offset, backing_size,
                                 (unsigned long long)file_size);
        if (backing_offset + backing_size > area_end)
            return vdi_error_set(err, -EINVAL,
                                 "qcow2 backing file name at offset %llu (+%u bytes) lies outside "
                                 "the first cluster",
                                 (unsigned long long)backing_offset, backing_size);
        if (memchr(buf + backing_offset, '\0', backing_size))
            return vdi_error_set(err, -EINVAL, "qcow2 backing file name contains a NUL byte");
        memcpy(h.backing_name, buf + backing_offset, backing_size);
        h.backing_name[backing_size] = '\0';
        h.has_backing = true;
        area_end = (size_t)backing_offset;
    }
    int rc = parse_extensions(buf, h.header_length, area_end, &h, err);
    if (rc < 0)
        return rc;
    *out = h;
    return 0;
}

int qcow2_plan_layout(uint64_t virtual_size, uint32_t cluster_bits, bool extended_l2,
                      qcow2_layout *out, vdi_error *err)
{
    if (cluster_bits < QCOW2_MIN_CLUSTER_BITS || cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return vdi_error_set(err, -EINVAL, "cluster size %llu is out of range (512 B .. 2 MiB)",
                             (unsigned long long)(UINT64_C(1) << cluster_bits));
    if (extended_l2 && cluster_bits < 14)
        return vdi_error_set(err, -EINVAL,
                             "extended L2 entries need a cluster size of at least 16 KiB");
    if (virtual_size == 0 || virtual_size % 512)
        return vdi_error_set(err, -EINVAL,
                             "virtual size %llu must be a non-zero multiple of 512 bytes",
                             (unsigned long long)virtual_size);
    uint64_t cs = UINT64_C(1) << cluster_bits;
    uint64_t l1 = l1_entries_for(virtual_size, cluster_bits, extended_l2);
    if (l1 * 8 > QCOW2_MAX_L1_BYTES)
        return vdi_error_set(err, -EINVAL,
                             "virtual size %llu needs an L1 table of %llu entries, more than QEMU "
                             "accepts; use a larger cluster size",
                             (unsigned long long)virtual_size, (unsigned long long)l1);
    qcow2_layout L = { .cluster_bits = cluster_bits, .extended_l2 = extended_l2,
                       .virtual_size = virtual_size, .l1_entries = (uint32_t)l1 };
    L.l1_clusters = div_round_up(l1 * 8, cs);
    /* 16-bit refcounts: a refcount block covers cs/2 clusters, and the blocks
     * and table count themselves, so iterate to a fixed point. */
    uint64_t per_block = cs / 2;
    uint64_t rb = 1, rt = 1;
    for (int i = 0; i < 16; i++) {
        uint64_t total = 1 + rt + rb + L.l1_clusters;
        uint64_t nrb = div_round_up(total, per_block);
        uint64_t nrt = div_round_up(nrb * 8, cs);
        if (nrb == rb && nrt == rt)
            break;
        rb = nrb;
        rt = nrt;
    }
    if (rt * cs > QCOW2_MAX_REFTABLE_BYTES)
        return vdi_error_set(err, -EINVAL, "refcount table would be too large");
    L.refblock_clusters = rb;
    L.reftable_clusters = rt;
    L.total_clusters = 1 + rt + rb + L.l1_clusters;
    *out = L;
    return 0;
}

int qcow2_build_header(const qcow2_layout *L, const char *backing_name,
                       const char *backing_format, uint8_t *buf, size_t buflen, vdi_error *err)
{
    size_t name_len = strlen(backing_name);
    size_t fmt_len = strlen(backing_format);
    uint64_t cs = UINT64_C(1) << L->cluster_bits;
    if (name_len == 0 || name_len > QCOW2_MAX_BACKING_NAME)
        return vdi_error_set(err, -ENAMETOOLONG,
                             "backing file name '%s' is %zu bytes; qcow2 allows 1..%u", backing_name,
                             name_len, QCOW2_MAX_BACKING_NAME);
    if (fmt_len == 0 || fmt_len > QCOW2_MAX_BACKING_FMT)
        return vdi_error_set(err, -EINVAL, "backing format '%s' is invalid", backing_format);
    const uint32_t header_len = 112; /* v3 header plus compression type, padded */
    size_t fmt_ext = 8 + ((fmt_len + 7) & ~(size_t)7);
    size_t name_off = header_len + fmt_ext + 8;
    size_t used = name_off + name_len;
    if (used > cs || used > buflen)
        return vdi_error_set(err, -ENAMETOOLONG,
                             "backing file name of %zu bytes does not fit the %llu-byte header "
                             "cluster",
                             name_len, (unsigned long long)cs);
    memset(buf, 0, used);
    put32(buf + 0, QCOW2_MAGIC);
    put32(buf + 4, 3);
    put64(buf + 8, name_off);
    put32(buf + 16, (uint32_t)name_len);
    put32(buf + 20, L->cluster_bits);
    put64(buf + 24, L->virtual_size);
    put32(buf + 32, 0);
    put32(buf + 36, L->l1_entries);
    put64(buf + 40, (1 + L->reftable_clusters + L->refblock_clusters) * cs);
    put64(buf + 48, cs);
    put32(buf + 56, (uint32_t)L->reftable_clusters);
    put32(buf + 60, 0);
    put64(buf + 64, 0);
    put64(buf + 72, L->extended_l2 ? QCOW2_INCOMPAT_EXTL2 : 0);
    put64(buf + 80, 0);
    put64(buf + 88, 0);
    put32(buf + 96, 4);
    put32(buf + 100, header_len);
    buf[104] = 0; /* zlib */
    put32(buf + header_len, QCOW2_EXT_BACKING_FORMAT);
    put32(buf + header_len + 4, (uint32_t)fmt_len);
    memcpy(buf + header_len + 8, backing_format, fmt_len);
    /* end-of-extensions marker is the 8 zero bytes already at name_off - 8 */
    memcpy(buf + name_off, backing_name, name_len);
    return (int)used;
}
