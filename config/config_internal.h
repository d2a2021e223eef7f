/* config_internal.h — shared inside libvdiconfig only. */
#ifndef VDI_CONFIG_INTERNAL_H
#define VDI_CONFIG_INTERNAL_H

#include "vdi_config.h"

#include <stdarg.h>

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
