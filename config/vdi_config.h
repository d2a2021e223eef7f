/* vdi_config.h — the one public header of libvdiconfig: operator config files
 * (libconfig syntax, with @include) turned into a validated, immutable value.
 * Depends on libconfig and libvdicommon only; checking that a gold is a disk
 * image is delegated to a callback, so config never links the engine.
 *
 * A config either loads whole, with every value checked, or not at all: the
 * errors (each with file and line) are returned together, and the service
 * keeps running on the config it had. */
#ifndef VDI_CONFIG_H
#define VDI_CONFIG_H

#include "vdi_common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VDI_CONFIG_DEFAULT_PATH "/etc/vdipool/vdipool.conf"

/* ---- errors --------------------------------------------------------------- */

typedef struct vdi_config_error {
    char *file;    /* the file the bad setting is in (an @include'd one, if so) */
    int line;      /* 1-based; 0 when the error is about the file as a whole */
    char *message; /* what is wrong and what is expected */
} vdi_config_error;

typedef struct vdi_config_errors vdi_config_errors;

size_t vdi_config_errors_count(const vdi_config_errors *errors);
const vdi_config_error *vdi_config_errors_get(const vdi_config_errors *errors, size_t index);
void vdi_config_errors_free(vdi_config_errors *errors);

/* ---- the value ------------------------------------------------------------ */

typedef enum vdi_log_level {
    VDI_LOG_DEBUG,
    VDI_LOG_INFO,
    VDI_LOG_WARNING,
    VDI_LOG_ERROR,
} vdi_log_level;

typedef struct vdi_service_config {
    const char *socket_path;       /* control socket */
    const char *listen;            /* "127.0.0.1:PORT" or NULL */
    const char *token_file;        /* bearer token for the TCP listener; NULL without it */
    const char *state_dir;
    const char *libvirt_uri;
    vdi_log_level log_level;
    unsigned max_parallel_clones;
    unsigned max_parallel_starts;
    uint64_t acquire_timeout;      /* seconds an acquire waits for a spare */
    /* Seconds adoption holds a desktop whose domain libvirt is still
     * starting or restoring (state adopting) before it is adopted as it
     * is; 120. */
    uint64_t adopt_wait;
    /* Seconds a finished session's record is kept in the catalog; 0: every
     * record is kept. */
    uint64_t session_history;
    /* API connections open at once (Unix socket and TCP together, held
     * acquires and event streams included); beyond it a new one is
     * answered 503. 1024. */
    unsigned max_connections;
} vdi_service_config;

/* Where a datastore's directory is: on a filesystem every host and vdipoold
 * mount at the same path (shared), or on one host only (local), reached
 * through libvirt's storage API on that host. */
typedef enum vdi_datastore_kind { VDI_DATASTORE_SHARED, VDI_DATASTORE_LOCAL } vdi_datastore_kind;

typedef struct vdi_datastore_config {
    const char *name;
    const char *path;
    vdi_datastore_kind kind;
    const char *host;              /* kind local: the host that has it; else NULL */
    uint64_t reserve_bytes;        /* when given as a size */
    double reserve_percent;        /* when given as "N%", else 0 */
    double max_overcommit;         /* sum of worst-case growth / capacity */
    int line;
    const char *file;
} vdi_datastore_config;

/* A KVM host: a libvirtd reached through `uri`. A config without `hosts`
 * has one, named "local", on the service's libvirt_uri. */
typedef enum vdi_host_state {
    VDI_HOST_ACTIVE,      /* takes new desktops */
    VDI_HOST_MAINTENANCE, /* drains: no new desktops, sessions finish, spares go */
} vdi_host_state;

typedef struct vdi_host_config {
    const char *name;
    const char *uri;
    const char *const *datastores; /* the datastores it sees; NULL: every shared one */
    size_t ndatastores;
    unsigned max_desktops;         /* 0: no limit */
    uint64_t reserve_memory;       /* bytes of the host's memory never given to desktops */
    vdi_host_state state;
    bool implicit;                 /* made from libvirt_uri, not written in the file */
    int line;
    const char *file;
} vdi_host_config;

typedef struct vdi_gold_config {
    const char *name;
    const char *path;  /* the image; for a family, its current version (resolved) */
    const char *dir;   /* a family of versions (vdipoolctl gold ...), or NULL */
    unsigned version;  /* a family's current version, or 0 */
    int line;
    const char *file;
} vdi_gold_config;

typedef enum vdi_graphics { VDI_GRAPHICS_SPICE, VDI_GRAPHICS_VNC, VDI_GRAPHICS_NONE } vdi_graphics;

typedef struct vdi_domain_config {
    uint64_t memory_bytes;
    unsigned vcpus;
    const char *network;           /* libvirt network name, or NULL for none */
    vdi_graphics graphics;
    const char *template_path;     /* libvirt domain XML template, or NULL */
    bool kvm;                      /* false: TCG (type='qemu'), for tests and hosts without KVM */
} vdi_domain_config;

typedef struct vdi_session_config {
    uint64_t max_duration;         /* seconds; 0 = unlimited */
    uint64_t idle_spare_max_age;   /* seconds a started spare may wait; 0 = unlimited */
    uint64_t paused_timeout;       /* seconds an assigned desktop may stay paused on an I/O
                                      error before its session ends; 0 = unlimited; 600 */
    const char *on_end;            /* "destroy" */
    /* With ready_when = "agent" (the guest agent reports its users): */
    uint64_t logoff_grace;         /* seconds after the last user logged off; 30 */
    uint64_t login_timeout;        /* seconds a handed-out desktop waits for a log-in; 0 = off */
    uint64_t agent_lost_timeout;   /* seconds the agent may be gone while the domain runs; 300 */
    uint64_t idle_logoff;          /* seconds without input before the session ends; 0 = off */
    const char *idle_command;      /* run in the guest: prints the user's idle seconds */
} vdi_session_config;

/* How a pool moves to a new gold (its gold's current version changed, or
 * the config points it elsewhere). */
typedef enum vdi_rollout {
    VDI_ROLLOUT_ON_LOGOFF, /* ready desktops replaced at once, sessions finish */
    VDI_ROLLOUT_IMMEDIATE, /* and sessions end (reason rollout) after rollout_notice */
    VDI_ROLLOUT_MANUAL,    /* the pool stays on its gold until `vdipoolctl pool rollout` */
} vdi_rollout;

typedef enum vdi_ready_when {
    VDI_READY_STARTED, /* the domain runs */
    VDI_READY_AGENT,   /* its guest agent connected and answered, identity set */
} vdi_ready_when;

/* How a desktop's guest gets running. */
typedef enum vdi_start {
    VDI_START_BOOT,   /* the domain boots from its disk */
    VDI_START_RESUME, /* restored from the pool's memory image (a booted template) */
} vdi_start;

typedef struct vdi_pool_config {
    const char *name;
    const char *desktop_prefix;    /* desktops are named PREFIX-NNN */
    const char *gold;              /* the gold's path (a named gold resolved) */
    const char *gold_name;         /* the name it was referred to by, or NULL for a path */
    unsigned gold_version;         /* a family's version: pinned ("name@N") or its current */
    bool gold_pinned;              /* "name@N": stays on N whatever becomes current */
    const char *datastore;         /* datastore name */
    unsigned size;
    unsigned spares;
    unsigned max_chain_depth;
    uint64_t expected_growth;      /* bytes a child grows in a session, before history */
    vdi_domain_config domain;
    vdi_session_config session;
    vdi_ready_when ready_when;
    vdi_start start;
    uint64_t template_settle;      /* resume, ready_when = started: seconds the template runs
                                      before it is saved; 15 */
    vdi_rollout rollout;
    uint64_t rollout_notice;       /* immediate: seconds a session keeps after a roll-out; 600 */
    uint64_t boot_timeout;         /* seconds from start to ready (agent); 600 */
    const char *hostname;          /* pattern, "{{name}}" by default; "" = leave it */
    const char *hostname_command;  /* run in the guest with the hostname as argument */
    const char *const *hosts;      /* the hosts it may use; NULL: every host */
    size_t nhosts;
    int line;
    const char *file;
} vdi_pool_config;

/* A desktop's hostname from its pool's pattern ({{name}}, {{pool}}, {{slot}}):
 * 0, or -EINVAL when the result is not a valid hostname (1-63 letters,
 * digits and '-', not starting or ending with '-'), or -ENOSPC. */
int vdi_config_hostname(const vdi_pool_config *pool, const char *desktop_name, unsigned slot,
                        char *out, size_t out_len);
const char *vdi_ready_when_name(vdi_ready_when when);
const char *vdi_start_name(vdi_start start);
const char *vdi_rollout_name(vdi_rollout rollout);

typedef struct vdi_config vdi_config;

/* Answers whether `path` is a disk image usable as a gold; on refusal it
 * writes why (a sentence) into why. Return 0 or a negative code. */
typedef int (*vdi_config_image_check)(const char *path, char *why, size_t why_len, void *ctx);

/* A gold family's version (0: the current one) as a path, from the catalog:
 * 0 with path and *version set, or a negative code with why (no version
 * yet, no such version, tainted, its files in another directory). */
typedef int (*vdi_config_version_resolver)(const char *family, const char *dir, unsigned version,
                                           char *path, size_t path_len, unsigned *resolved,
                                           char *why, size_t why_len, void *ctx);

typedef struct vdi_config_options {
    vdi_config_image_check check_image; /* NULL: only check the path is a regular file */
    void *check_ctx;
    /* NULL: families resolve to DIR/current (checks skipped), for tools
     * without a catalog such as fuzzing and `config diff`. */
    vdi_config_version_resolver resolve_version;
    void *resolve_ctx;
    bool skip_filesystem_checks;        /* do not look at paths at all (fuzzing, diff of old files) */
} vdi_config_options;

/* Loads and validates a file (with its @includes, relative to its directory).
 * Returns 0 and *out, or a negative code and *errors (at least one). */
int vdi_config_load(const char *path, const vdi_config_options *opts, vdi_config **out,
                    vdi_config_errors **errors);
/* The same from text in memory; `name` stands for the file in errors. */
int vdi_config_parse_string(const char *text, const char *name, const vdi_config_options *opts,
                            vdi_config **out, vdi_config_errors **errors);
/* A config is reference-counted so that every holder (the service, a
 * draining pool, a job on a worker thread) keeps the value it read alive;
 * ref/unref are thread-safe, the value is immutable. vdi_config_free drops
 * one reference, like vdi_config_unref. */
vdi_config *vdi_config_ref(vdi_config *config);
void vdi_config_unref(vdi_config *config);
void vdi_config_free(vdi_config *config);

const char *vdi_config_path(const vdi_config *config);
const vdi_service_config *vdi_config_service(const vdi_config *config);
size_t vdi_config_datastore_count(const vdi_config *config);
const vdi_datastore_config *vdi_config_datastore(const vdi_config *config, size_t index);
const vdi_datastore_config *vdi_config_find_datastore(const vdi_config *config, const char *name);
size_t vdi_config_gold_count(const vdi_config *config);
const vdi_gold_config *vdi_config_gold(const vdi_config *config, size_t index);
size_t vdi_config_pool_count(const vdi_config *config);
const vdi_pool_config *vdi_config_pool(const vdi_config *config, size_t index);
const vdi_pool_config *vdi_config_find_pool(const vdi_config *config, const char *name);
const vdi_gold_config *vdi_config_find_gold(const vdi_config *config, const char *name);

size_t vdi_config_host_count(const vdi_config *config);
const vdi_host_config *vdi_config_host(const vdi_config *config, size_t index);
const vdi_host_config *vdi_config_find_host(const vdi_config *config, const char *name);
/* Can desktops on this datastore run on this host? */
bool vdi_config_host_sees(const vdi_host_config *host, const vdi_datastore_config *ds);
/* May this pool place desktops on this host (its `hosts`, and the host sees
 * the pool's datastore)? */
bool vdi_config_pool_may_use(const vdi_config *config, const vdi_pool_config *pool,
                             const vdi_host_config *host);
const char *vdi_host_state_name(vdi_host_state state);
const char *vdi_datastore_kind_name(vdi_datastore_kind kind);

const char *vdi_graphics_name(vdi_graphics graphics);
const char *vdi_log_level_name(vdi_log_level level);

/* ---- diff ----------------------------------------------------------------- */

typedef enum vdi_change_kind {
    VDI_CHANGE_SERVICE,          /* a service setting changed (field says which) */
    VDI_CHANGE_DATASTORE_ADDED,
    VDI_CHANGE_DATASTORE_REMOVED,
    VDI_CHANGE_DATASTORE_CHANGED,
    VDI_CHANGE_GOLD_ADDED,
    VDI_CHANGE_GOLD_REMOVED,
    VDI_CHANGE_GOLD_CHANGED,
    VDI_CHANGE_POOL_ADDED,
    VDI_CHANGE_POOL_REMOVED,
    VDI_CHANGE_POOL_RESIZED,     /* size or spares */
    VDI_CHANGE_POOL_GOLD,        /* the pool's gold changed: a roll-out */
    VDI_CHANGE_POOL_DOMAIN,      /* domain settings: new desktops differ */
    VDI_CHANGE_POOL_DATASTORE,
    VDI_CHANGE_POOL_SESSION,     /* session limits */
    VDI_CHANGE_POOL_OTHER,       /* prefix, chain depth, expected growth */
    VDI_CHANGE_HOST_ADDED,
    VDI_CHANGE_HOST_REMOVED,
    VDI_CHANGE_HOST_CHANGED,     /* uri, state, limits or datastores */
    VDI_CHANGE_POOL_HOSTS,
} vdi_change_kind;

typedef struct vdi_config_change {
    vdi_change_kind kind;
    const char *name;      /* pool, datastore or gold name; "service" for service */
    const char *field;     /* the setting that changed, or NULL for added/removed */
    char *old_value;       /* as text, or NULL */
    char *new_value;
} vdi_config_change;

typedef struct vdi_config_diff vdi_config_diff;

/* What changed from old to new, in a stable order: service, datastores,
 * golds, pools. Both configs must outlive the diff. */
int vdi_config_diff_new(const vdi_config *old_config, const vdi_config *new_config,
                        vdi_config_diff **out);
size_t vdi_config_diff_count(const vdi_config_diff *diff);
const vdi_config_change *vdi_config_diff_get(const vdi_config_diff *diff, size_t index);
void vdi_config_diff_free(vdi_config_diff *diff);
const char *vdi_change_kind_name(vdi_change_kind kind);

#endif
