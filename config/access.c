/* access.c — reading a loaded config: counts, items by index and by name,
 * and the names of its enums. Used by every reader of the value, including
 * the parsers' own cross-checks. */
#include "reading.h"

#include <string.h>

const char *vdi_config_path(const vdi_config *c) { return c->path; }
const vdi_service_config *vdi_config_service(const vdi_config *c) { return &c->service; }
size_t vdi_config_datastore_count(const vdi_config *c) { return c->ndatastores; }
size_t vdi_config_gold_count(const vdi_config *c) { return c->ngolds; }
size_t vdi_config_pool_count(const vdi_config *c) { return c->npools; }

const vdi_datastore_config *vdi_config_datastore(const vdi_config *c, size_t i)
{
    return i < c->ndatastores ? &c->datastores[i] : NULL;
}

const vdi_gold_config *vdi_config_gold(const vdi_config *c, size_t i)
{
    return i < c->ngolds ? &c->golds[i] : NULL;
}

const vdi_pool_config *vdi_config_pool(const vdi_config *c, size_t i)
{
    return i < c->npools ? &c->pools[i] : NULL;
}

const vdi_datastore_config *vdi_config_find_datastore(const vdi_config *c, const char *name)
{
    for (size_t i = 0; i < c->ndatastores; i++)
        if (c->datastores[i].name && !strcmp(c->datastores[i].name, name))
            return &c->datastores[i];
    return NULL;
}

const vdi_gold_config *vdi_config_find_gold(const vdi_config *c, const char *name)
{
    for (size_t i = 0; i < c->ngolds; i++)
        if (c->golds[i].name && !strcmp(c->golds[i].name, name))
            return &c->golds[i];
    return NULL;
}

const vdi_pool_config *vdi_config_find_pool(const vdi_config *c, const char *name)
{
    for (size_t i = 0; i < c->npools; i++)
        if (c->pools[i].name && !strcmp(c->pools[i].name, name))
            return &c->pools[i];
    return NULL;
}

const char *vdi_graphics_name(vdi_graphics g)
{
    return g == VDI_GRAPHICS_SPICE ? "spice" : g == VDI_GRAPHICS_VNC ? "vnc" : "none";
}

const char *vdi_log_level_name(vdi_log_level l)
{
    static const char *const names[] = { "debug", "info", "warning", "error" };
    return l <= VDI_LOG_ERROR ? names[l] : "info";
}

size_t vdi_config_host_count(const vdi_config *c) { return c->nhosts; }

const vdi_host_config *vdi_config_host(const vdi_config *c, size_t i)
{
    return i < c->nhosts ? &c->hosts[i] : NULL;
}

const vdi_host_config *vdi_config_find_host(const vdi_config *c, const char *name)
{
    for (size_t i = 0; name && i < c->nhosts; i++)
        if (c->hosts[i].name && !strcmp(c->hosts[i].name, name))
            return &c->hosts[i];
    return NULL;
}

const char *vdi_host_state_name(vdi_host_state s)
{
    return s == VDI_HOST_MAINTENANCE ? "maintenance" : "active";
}

const char *vdi_datastore_kind_name(vdi_datastore_kind k)
{
    return k == VDI_DATASTORE_LOCAL ? "local" : "shared";
}
