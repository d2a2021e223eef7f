/* hosts.c — the KVM hosts a config spreads its pools over, the kind of
 * each datastore (shared by every host, or local to one), and which hosts a
 * pool may use. A config without `hosts` has exactly one host, "local", on
 * the service's libvirt_uri: single-host configs read as before. */
#include "reading.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void cfg_parse_datastore_kind(parse_ctx *ctx, const config_setting_t *g, const char *where,
                              vdi_datastore_config *d)
{
    static const char *const kinds[] = { "shared", "local", NULL };
    int k = cfg_get_choice(ctx, g, "kind", where, kinds);
    d->kind = k == 1 ? VDI_DATASTORE_LOCAL : VDI_DATASTORE_SHARED;
    bool have_host = cfg_get_string(ctx, g, "host", where, false, &d->host);
    if (d->kind == VDI_DATASTORE_SHARED && have_host) {
        ERR(ctx, cfg_member(g, "host"),
            "%s: 'host' is for kind = \"local\" (a directory on that host only); a shared "
            "datastore is seen by every host that lists it",
            where);
        d->host = NULL;
    }
    if (d->kind == VDI_DATASTORE_LOCAL) {
        if (!have_host)
            ERR(ctx, g, "%s: kind = \"local\" needs 'host', the host whose directory it is",
                where);
    }
}

static bool datastore_listed(const vdi_host_config *h, const char *name)
{
    for (size_t i = 0; i < h->ndatastores; i++)
        if (!strcmp(h->datastores[i], name))
            return true;
    return false;
}

bool vdi_config_host_sees(const vdi_host_config *h, const vdi_datastore_config *ds)
{
    if (!h || !ds || !h->name || !ds->name)
        return false;
    if (ds->kind == VDI_DATASTORE_LOCAL)
        return ds->host && !strcmp(ds->host, h->name);
    return !h->datastores || datastore_listed(h, ds->name);
}

bool vdi_config_pool_may_use(const vdi_config *c, const vdi_pool_config *p,
                             const vdi_host_config *h)
{
    if (p->hosts) {
        bool named = false;
        for (size_t i = 0; i < p->nhosts && !named; i++)
            named = h->name && !strcmp(p->hosts[i], h->name);
        if (!named)
            return false;
    }
    return vdi_config_host_sees(h, vdi_config_find_datastore(c, p->datastore));
}

static void implicit_host(vdi_config *cfg)
{
    cfg->hosts = calloc(1, sizeof *cfg->hosts);
    if (!cfg->hosts)
        abort();
    vdi_host_config *h = &cfg->hosts[cfg->nhosts++];
    h->name = "local";
    h->uri = cfg->service.libvirt_uri;
    h->implicit = true;
    h->state = VDI_HOST_ACTIVE;
    h->file = cfg->path;
}

static void parse_host(parse_ctx *ctx, const cfg_entry *e, vdi_host_config *h)
{
    vdi_config *cfg = ctx->cfg;
    const config_setting_t *g = e->group;
    char where[96];
    static const char *const keys[] = {"name",           "uri",   "datastores", "max_desktops",
                                       "reserve_memory", "state", NULL};
    h->name = e->name;
    cfg_entry_begin(ctx, e, "host", keys, where, sizeof where, &h->file, &h->line);
    if (cfg_get_string(ctx, g, "uri", where, true, &h->uri) && !strstr(h->uri, ":/"))
        ERR(ctx, cfg_member(g, "uri"),
            "%s: uri \"%s\" is not a libvirt URI; e.g. \"qemu+ssh://root@h1.example/system\" or "
            "\"qemu+tls://h1.example/system\"",
            where, h->uri);
    if (cfg_get_name_list(ctx, g, "datastores", where, &h->datastores, &h->ndatastores))
        for (size_t i = 0; i < h->ndatastores; i++) {
            const vdi_datastore_config *ds = vdi_config_find_datastore(cfg, h->datastores[i]);
            if (!ds)
                ERR(ctx, cfg_member(g, "datastores"), "%s: no datastore named '%s'", where,
                    h->datastores[i]);
            else if (ds->kind == VDI_DATASTORE_LOCAL && ds->host && e->name &&
                     strcmp(ds->host, e->name))
                ERR(ctx, cfg_member(g, "datastores"),
                    "%s: datastore '%s' is local to host '%s'; only that host can see it", where,
                    ds->name, ds->host);
        }
    cfg_get_uint(ctx, g, "max_desktops", where, 0, 100000, &h->max_desktops);
    cfg_get_size(ctx, g, "reserve_memory", where, 0, &h->reserve_memory);
    static const char *const states[] = { "active", "maintenance", NULL };
    int s = cfg_get_choice(ctx, g, "state", where, states);
    h->state = s == 1 ? VDI_HOST_MAINTENANCE : VDI_HOST_ACTIVE;
}

void cfg_parse_hosts(parse_ctx *ctx, const config_setting_t *list)
{
    vdi_config *cfg = ctx->cfg;
    if (!list) {
        implicit_host(cfg);
    } else {
        cfg_entry *e = NULL;
        size_t n = cfg_collect_entries(ctx, list, "host", &e);
        if (n == 0) {
            ERR(ctx, list, "'hosts' is empty: name at least one host, or remove 'hosts' to use "
                           "the service's libvirt_uri");
            free(e);
            implicit_host(cfg);
        } else {
            cfg->hosts = cfg_section_items(n, sizeof *cfg->hosts);
            for (size_t i = 0; i < n; i++) {
                if (!e[i].name)
                    continue; /* reported; a host without a name is no host */
                vdi_host_config *h = &cfg->hosts[cfg->nhosts++];
                parse_host(ctx, &e[i], h);
                for (size_t j = 0; j + 1 < cfg->nhosts; j++)
                    if (h->uri && cfg->hosts[j].uri && !strcmp(h->uri, cfg->hosts[j].uri))
                        ERR(ctx, cfg_member(e[i].group, "uri"),
                            "host '%s' has the uri of host '%s' (%s): one libvirtd is one host",
                            h->name ? h->name : "?", cfg->hosts[j].name, h->uri);
            }
            free(e);
        }
    }
    /* Local datastores name a host that exists. */
    for (size_t i = 0; i < cfg->ndatastores; i++) {
        const vdi_datastore_config *d = &cfg->datastores[i];
        if (d->kind == VDI_DATASTORE_LOCAL && d->host && !vdi_config_find_host(cfg, d->host))
            cfg_error_at(ctx, d->file, d->line,
                         "datastore '%s': host '%s' is not in 'hosts'%s", d->name ? d->name : "?",
                         d->host, list ? "" : " (this config has no 'hosts' list)");
    }
}

void cfg_parse_pool_hosts(parse_ctx *ctx, const config_setting_t *g, const char *where,
                          vdi_pool_config *p)
{
    vdi_config *cfg = ctx->cfg;
    const config_setting_t *s = cfg_member(g, "hosts");
    if (cfg_get_name_list(ctx, g, "hosts", where, &p->hosts, &p->nhosts)) {
        if (p->nhosts == 0)
            ERR(ctx, s, "%s: 'hosts' is empty; remove it to use every host", where);
        for (size_t i = 0; i < p->nhosts; i++)
            if (!vdi_config_find_host(cfg, p->hosts[i]))
                ERR(ctx, s, "%s: no host named '%s' (hosts: see 'hosts' at the top level)", where,
                    p->hosts[i]);
    } else if (s) {
        p->hosts = NULL; /* reported */
        p->nhosts = 0;
        return;
    }
    const vdi_datastore_config *ds = p->datastore ? vdi_config_find_datastore(cfg, p->datastore)
                                                  : NULL;
    if (!ds)
        return;
    for (size_t i = 0; i < cfg->nhosts; i++)
        if (vdi_config_pool_may_use(cfg, p, &cfg->hosts[i]))
            return;
    ERR(ctx, s ? s : cfg_member(g, "datastore"),
        "%s: none of %s sees datastore '%s'; add it to a host's 'datastores' or name another "
        "host",
        where, p->hosts ? "its hosts" : "the hosts", ds->name);
}
