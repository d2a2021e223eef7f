/* reading.h — what the readers of a config share inside libvdiconfig: the
 * config being built, its errors and the typed getters (values.c), the
 * readiness settings (readiness.c), the pre-scan (prescan.c). */
#ifndef VDI_CONFIG_READING_H
#define VDI_CONFIG_READING_H

#include "vdi_config.h"

#include <stdarg.h>

#include <libconfig.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct vdi_config_errors {
    vdi_config_error *items;
    size_t count, cap;
};

struct vdi_config {
    atomic_uint refs; /* vdi_config_ref/unref; the value itself never changes */
    char *path;
    vdi_service_config service;
    vdi_datastore_config *datastores;
    size_t ndatastores;
    vdi_gold_config *golds;
    size_t ngolds;
    vdi_pool_config *pools;
    size_t npools;
    vdi_host_config *hosts; /* at least one: without `hosts`, "local" on libvirt_uri */
    size_t nhosts;
    char **strings; /* every string the views point to */
    size_t nstrings, capstrings;
};

typedef struct parse_ctx {
    vdi_config *cfg;
    vdi_config_errors *errors;
    const char *main_file;
    const vdi_config_options *opts;
} parse_ctx;


/* One entry of `pools`/`datastores`/`golds`: its group and its name (NULL
 * when missing or invalid, already reported). */
typedef struct cfg_entry {
    const config_setting_t *group;
    const char *name; /* NULL when missing (already reported) */
} cfg_entry;

/* ---- values.c: errors and typed getters; each reports its own error ---- */
void cfg_errors_append(vdi_config_errors *e, const char *file, int line, const char *message);
void cfg_error_at(parse_ctx *ctx, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
const char *cfg_setting_file(parse_ctx *ctx, const config_setting_t *s);
#define ERR(ctx, setting, ...)                                                                     \
    cfg_error_at((ctx), cfg_setting_file((ctx), (setting)),                                            \
                 (setting) ? (int)config_setting_source_line(setting) : 0, __VA_ARGS__)
/* A copy of s that lives as long as the config. */
const char *cfg_keep(vdi_config *cfg, const char *s);
/* Zeroed memory that lives as long as the config. */
void *cfg_keep_alloc(vdi_config *cfg, size_t size);
/* A list of names (`key = [ "a", "b" ]`): true and the names when present
 * and valid (a name given twice is reported). */
bool cfg_get_name_list(parse_ctx *ctx, const config_setting_t *group, const char *key,
                       const char *where, const char *const **out, size_t *count);
size_t cfg_edit_distance(const char *a, const char *b);
/* Reports keys of group that are not in allowed (with a "did you mean"). */
void cfg_check_keys(parse_ctx *ctx, const config_setting_t *group, const char *const *allowed,
                    const char *where);
const config_setting_t *cfg_member(const config_setting_t *group, const char *key);
bool cfg_get_string(parse_ctx *ctx, const config_setting_t *group, const char *key,
                    const char *where, bool required, const char **out);
bool cfg_get_uint(parse_ctx *ctx, const config_setting_t *group, const char *key,
                  const char *where, long long min, long long max, unsigned *out);
bool cfg_get_double(parse_ctx *ctx, const config_setting_t *group, const char *key,
                    const char *where, double min, double max, double *out);
bool cfg_get_size(parse_ctx *ctx, const config_setting_t *group, const char *key,
                  const char *where, uint64_t min, uint64_t *out);
bool cfg_get_duration(parse_ctx *ctx, const config_setting_t *group, const char *key,
                      const char *where, uint64_t max, uint64_t *out);
/* One of a fixed set of words; returns the index or -1. */
int cfg_get_choice(parse_ctx *ctx, const config_setting_t *group, const char *key,
                   const char *where, const char *const *choices);
bool cfg_check_name(parse_ctx *ctx, const config_setting_t *s, const char *what,
                    const char *name);
size_t cfg_collect_entries(parse_ctx *ctx, const config_setting_t *list, const char *what,
                           cfg_entry **out);
/* A zeroed array of n items of `size` for a section's entries (never NULL). */
void *cfg_section_items(size_t n, size_t size);
/* What every entry of a section starts with: `where` ("pool 'office'", for
 * its errors), its keys not in `keys` reported, and the file and line it
 * was read from. */
void cfg_entry_begin(parse_ctx *ctx, const cfg_entry *e, const char *what, const char *const *keys,
                     char *where, size_t where_len, const char **file, int *line);
bool cfg_is_absolute(const char *p);

/* ---- hosts.c -------------------------------------------------------------- */
/* `hosts` (after the datastores), and the datastores' kind and host. */
void cfg_parse_hosts(parse_ctx *ctx, const config_setting_t *list);
void cfg_parse_datastore_kind(parse_ctx *ctx, const config_setting_t *g, const char *where,
                              vdi_datastore_config *d);
/* A pool's `hosts` (after cfg_parse_hosts): each known and seeing its datastore. */
void cfg_parse_pool_hosts(parse_ctx *ctx, const config_setting_t *g, const char *where,
                          vdi_pool_config *p);

/* ---- pools.c -------------------------------------------------------------- */
/* `golds`, then `pools` (after the datastores and hosts they name). */
void cfg_parse_golds(parse_ctx *ctx, const config_setting_t *list);
void cfg_parse_pools(parse_ctx *ctx, const config_setting_t *list);

/* ---- readiness.c ---------------------------------------------------------- */
/* ready_when, boot_timeout, hostname, hostname_command of pool group g
 * (after its domain settings: a template is checked for the agent channel). */
void cfg_parse_readiness(parse_ctx *ctx, const config_setting_t *g, const char *where,
                         vdi_pool_config *p);

/* Limits on what an operator's files may hold (prescan.c). */
#define VDI_CONFIG_MAX_FILE (1024 * 1024)
#define VDI_CONFIG_MAX_STRING 4096
#define VDI_CONFIG_MAX_INCLUDE_DEPTH 8

typedef void (*prescan_error_fn)(void *ctx, const char *file, int line, const char *message);

/* Check a file (and what it @includes, resolved against include_dir) or a
 * text before libconfig reads it; every problem goes to error(). Return 0
 * or -EINVAL. */
int vdi_config_prescan_file_(const char *path, const char *include_dir, prescan_error_fn error,
                             void *ctx);
int vdi_config_prescan_text_(const char *text, const char *name, prescan_error_fn error,
                             void *ctx);

#endif
