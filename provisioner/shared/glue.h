/* glue.h — where config meets the engine, for both programs. */
#ifndef VDI_GLUE_H
#define VDI_GLUE_H

#include <stddef.h>

/* vdi_config_image_check for golds: the whole chain must resolve. */
int glue_check_gold(const char *path, char *why, size_t why_len, void *ctx);

#endif
