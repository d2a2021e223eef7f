/* glue.c — where config meets the engine. */
#include "glue.h"
#include "vdi_engine.h"

#include <errno.h>
#include "vdi_engine.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int glue_check_gold(const char *path, char *why, size_t len, void *ctx)
{
    (void)ctx;
    vdi_chain *chain = NULL;
    vdi_error err = { 0 };
    int rc = vdi_chain_resolve(path, 0, &chain, &err);
    if (rc < 0) {
        /* The engine's message starts with the path, which the caller names already. */
        size_t plen = strlen(path);
        const char *msg = err.message;
        if (!strncmp(msg, path, plen) && (msg[plen] == ' ' || msg[plen] == ':'))
            msg += plen + (msg[plen] == ':' ? 2 : 1);
        snprintf(why, len, "%s", msg);
    }
    vdi_chain_free(chain);
    return rc;
}

int glue_resolve_version(const char *family, const char *dir, unsigned version, char *path,
                         size_t path_len, unsigned *resolved, char *why, size_t why_len,
                         void *ctx)
{
    vdi_catalog *cat = ctx;
    vdi_gold_version v;
    vdi_error err = {0};
    int rc = vdi_version_find(cat, family, version, &v, &err);
    if (rc < 0) {
        snprintf(why, why_len, "%s", err.message);
        return rc;
    }
    char real_dir[PATH_MAX], real_path[PATH_MAX];
    const char *slash = strrchr(v.path, '/');
    snprintf(real_path, sizeof real_path, "%.*s", slash ? (int)(slash - v.path) : 0, v.path);
    if (!realpath(dir, real_dir) || strcmp(real_dir, real_path)) {
        snprintf(why, why_len,
                 "gold '%s' keeps its versions in %s, not in %s; correct its 'dir'", family,
                 real_path, dir);
        return -EINVAL;
    }
    if (v.state == VDI_GOLD_TAINTED) {
        snprintf(why, why_len,
                 "version %u of gold '%s' (%s) is tainted or no longer sealed; roll back to "
                 "another version with `vdipoolctl gold rollback %s --to N`",
                 v.version, family, v.path, family);
        return -ESTALE;
    }
    snprintf(path, path_len, "%s", v.path);
    *resolved = v.version;
    return 0;
}
