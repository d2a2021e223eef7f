/* qcow2.h — private to the engine: the qcow2 header as bytes on disk.
 * Parsing treats the buffer as hostile; building produces an empty overlay.
 * Layout follows docs/interop/qcow2.txt of QEMU (version 2 and 3 headers). */
#ifndef VDI_QCOW2_H
#define VDI_QCOW2_H

#include "vdi_common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QCOW2_MAGIC 0x514649fbu
#define QCOW2_V2_HEADER_LEN 72u
#define QCOW2_V3_HEADER_LEN 104u
#define QCOW2_MIN_CLUSTER_BITS 9u
#define QCOW2_MAX_CLUSTER_BITS 21u
#define QCOW2_MAX_BACKING_NAME 1023u           /* QEMU refuses longer names */
#define QCOW2_MAX_BACKING_FMT 15u              /* QEMU's backing_format[16] */
#define QCOW2_MAX_L1_BYTES (32u * 1024 * 1024)  /* QEMU's QCOW_MAX_L1_SIZE */
#define QCOW2_MAX_REFTABLE_BYTES (8u * 1024 * 1024)
#define QCOW2_MAX_SNAPSHOTS 65536u

#define QCOW2_INCOMPAT_DIRTY (1u << 0)
#define QCOW2_INCOMPAT_CORRUPT (1u << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1u << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1u << 3)
#define QCOW2_INCOMPAT_EXTL2 (1u << 4)
#define QCOW2_INCOMPAT_KNOWN 0x1fu

#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

typedef struct qcow2_header {
    uint32_t version;
    uint32_t cluster_bits;
    uint64_t virtual_size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;
    bool has_backing;
    char backing_name[QCOW2_MAX_BACKING_NAME + 1];
    bool has_backing_format;
    char backing_format[QCOW2_MAX_BACKING_FMT + 1];
} qcow2_header;

/* Parses the start of a qcow2 file. `buf` holds the first `buflen` bytes of a
 * file of `file_size` bytes; everything the header refers to in the first
 * cluster must lie inside buf. Returns 0, or -EINVAL with a message naming
 * the bad field. Never reads outside buf. */
int qcow2_parse_header(const uint8_t *buf, size_t buflen, uint64_t file_size, qcow2_header *out,
                       vdi_error *err);

/* How an empty overlay of a given size is laid out, cluster by cluster:
 * header | refcount table | refcount blocks | L1 table. */
typedef struct qcow2_layout {
    uint32_t cluster_bits;
    bool extended_l2;
    uint64_t virtual_size;
    uint32_t l1_entries;
    uint64_t l1_clusters;
    uint64_t reftable_clusters;
    uint64_t refblock_clusters;
    uint64_t total_clusters;
} qcow2_layout;

int qcow2_plan_layout(uint64_t virtual_size, uint32_t cluster_bits, bool extended_l2,
                      qcow2_layout *out, vdi_error *err);

/* Writes the header cluster's meaningful bytes (header, backing format
 * extension, end marker, backing name) into buf; returns their length or a
 * negative code. buf must hold at least one cluster. */
int qcow2_build_header(const qcow2_layout *layout, const char *backing_name,
                       const char *backing_format, uint8_t *buf, size_t buflen, vdi_error *err);

#endif
