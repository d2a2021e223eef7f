/* hoststore.h — a host-local datastore (kind = "local"): a directory that only
 * one host sees, worked through libvirt's storage API on that host's
 * connection. vdipoold never touches its files: the host's libvirtd makes
 * and deletes the children, and holds a verified copy of each gold.
 *
 * Every function blocks on libvirt RPCs: call them on a worker, with a
 * connection reference the job owns. They are thread-safe. */
#ifndef VDI_HOSTSTORE_H
#define VDI_HOSTSTORE_H

#include "vdi_config.h"
#include "vdi_engine.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The datastore's storage pool on the host ("vdipool-NAME", a `dir` pool on
 * ds->path, made and started when missing). 0, or a negative code with why. */
int hoststore_pool(virConnectPtr conn, const vdi_datastore_config *ds, virStoragePoolPtr *out,
                   char *why, size_t why_len);

/* The host's copy of a sealed gold, usable for a clone: copied once
 * (virStorageVolUpload in chunks, resumed where an interrupted copy of this
 * process stopped), made read-only (mode 0444), and verified against the
 * sealed fingerprint by downloading and hashing it; afterwards checked
 * cheaply (mode, size, times) before every clone. A copy that does not match
 * is refused: replaced when no child depends on it, else -ESTALE.
 * path_out gets the copy's path on the host. copied: set when this call
 * copied it. */
int hoststore_gold(virConnectPtr conn, virStoragePoolPtr pool, vdi_catalog *catalog,
                   const vdi_gold_info *gold, const char *host_name, char *path_out,
                   size_t path_len, bool *copied, char *why, size_t why_len);

/* A full re-check of the host's copy (the scrub): 0 when it matches,
 * -ESTALE when it does not, -ENOENT when there is no copy. */
int hoststore_verify_gold(virConnectPtr conn, virStoragePoolPtr pool, const vdi_gold_info *gold,
                          char *why, size_t why_len);

/* A differencing child NAME (a file name, e.g. "lab-001.qcow2") over the
 * host's gold copy; a leftover of that name is deleted first. */
int hoststore_child_create(virConnectPtr conn, virStoragePoolPtr pool, const char *name,
                           const char *backing_path, vdi_format backing_format,
                           uint64_t virtual_size, char *why, size_t why_len);
/* Deletes the child; one that does not exist is not an error. allocated:
 * what it held (0 when unknown). */
int hoststore_child_delete(virStoragePoolPtr pool, const char *name, uint64_t *allocated,
                           char *why, size_t why_len);

/* The pool's capacity and free bytes, as libvirt counts them. */
int hoststore_space(virStoragePoolPtr pool, uint64_t *capacity, uint64_t *available, char *why,
                    size_t why_len);

/* The datastore measured as admission and /v1/space see it: its storage
 * pool's capacity and free bytes on the host, with the catalog's usage of
 * it and the reserve. 0, or a negative code with why. */
int hoststore_measure(virConnectPtr conn, const vdi_datastore_config *ds, vdi_catalog *catalog,
                      vdi_space_report *out, char *why, size_t why_len);

/* The copy's file name on the host for a gold: gold-HASH16.FORMAT. */
void hoststore_gold_name(const vdi_gold_info *gold, char *out, size_t len);

#endif
