/* glue.h — where config meets the engine, for both programs. */
#ifndef VDI_GLUE_H
#define VDI_GLUE_H

#include "vdi_engine.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* vdi_config_image_check for golds: the whole chain must resolve. */
int glue_check_gold(const char *path, char *why, size_t why_len, void *ctx);
/* vdi_config_version_resolver from the catalog (ctx: a vdi_catalog *): a
 * family's version must exist, be sealed (not tainted) and live in the
 * family's dir. */
int glue_resolve_version(const char *family, const char *dir, unsigned version, char *path,
                         size_t path_len, unsigned *resolved, char *why, size_t why_len,
                         void *ctx);

/* A gold version as the CLI (--json) and the API show it; its state is
 * current, retiring (with children), retired or tainted. */
json_t *glue_version_json(const vdi_gold_version *v);
/* A family's versions and its history: {"gold", "versions", "history"}, or
 * NULL with err. */
json_t *glue_family_json(vdi_catalog *cat, const char *family, vdi_error *err);

/* What a new gold version leaves free on dir's filesystem: 5 % of it, like
 * a datastore's default (measured on its nearest existing parent while dir
 * does not exist yet); 0 when it cannot be measured. */
uint64_t glue_version_reserve(const char *dir);
/* Makes version `to` of family current again (0: the newest untainted one
 * before the current); *was and *now get the versions. */
int glue_rollback(vdi_catalog *cat, const char *family, unsigned to, const char *who,
                  const char *note, unsigned *was, unsigned *now, vdi_error *err);
/* Publishes the family's open edit (DIR/maintenance.qcow2) as its next
 * version: refused while a process has the child open for writing (its
 * maintenance domain runs) or when the version it started from changed;
 * the child goes afterwards. 5 % of DIR's filesystem stays free. */
int glue_publish_edit(vdi_catalog *cat, const char *family, const char *dir, const char *note,
                      const char *who, vdi_progress_fn progress, void *ctx,
                      vdi_gold_version *out, vdi_error *err);

#endif
