/* glue.c — where config meets the engine. */
#include "glue.h"
#include "vdi_engine.h"

#include <stdio.h>
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
