/* glue.h — where config meets the engine, for both programs. */
#ifndef VDI_GLUE_H
#define VDI_GLUE_H

#include <stddef.h>

/* vdi_config_image_check for golds: the whole chain must resolve. */
int glue_check_gold(const char *path, char *why, size_t why_len, void *ctx);
/* vdi_config_version_resolver from the catalog (ctx: a vdi_catalog *): a
 * family's version must exist, be sealed (not tainted) and live in the
 * family's dir. */
int glue_resolve_version(const char *family, const char *dir, unsigned version, char *path,
                         size_t path_len, unsigned *resolved, char *why, size_t why_len,
                         void *ctx);

#endif
