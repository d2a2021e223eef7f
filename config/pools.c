/* pools.c — the `golds` and `pools` sections: each gold's image or family
 * of versions (resolved to a path through the catalog when the caller
 * gives a resolver), and each pool with its gold, datastore, sizes, domain
 * and limits. A pool names its gold by name or by path, so both live here.
 * Errors are collected like every section's (see config.c). */
#include "reading.h"

#include <errno.h>
#include <libconfig.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int default_image_check(const char *path, char *why, size_t len, void *unused)
{
    (void)unused;
    struct stat st;
    if (stat(path, &st) < 0) {
        snprintf(why, len, "%s", errno == ENOENT ? "it does not exist" : strerror(errno));
        return -errno;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, len, "it is not a regular file (a gold must be a disk image file)");
        return -EINVAL;
    }
    return 0;
}

static void check_gold_path(parse_ctx *ctx, const config_setting_t *s, const char *where,
                            const char *path)
{
    if (!cfg_is_absolute(path)) {
        ERR(ctx, s, "%s: gold path \"%s\" must be absolute", where, path);
        return;
    }
    if (ctx->opts->skip_filesystem_checks)
        return;
    char why[512] = "";
    vdi_config_image_check check =
        ctx->opts->check_image ? ctx->opts->check_image : default_image_check;
    if (check(path, why, sizeof why, ctx->opts->check_ctx) < 0)
        ERR(ctx, s, "%s: gold %s is not usable: %s", where, path, why);
}

/* A family's version (0: current) to its path, through the catalog. */
static bool resolve_family(parse_ctx *ctx, const config_setting_t *s, const char *where,
                           const char *family, const char *dir, unsigned version, const char **path,
                           unsigned *resolved)
{
    char buf[4096], why[512] = "";
    const vdi_config_options *o = ctx->opts;
    if (!o->resolve_version) {
        if (version)
            snprintf(buf, sizeof buf, "%s/v%04u.qcow2", dir, version);
        else
            snprintf(buf, sizeof buf, "%s/current", dir);
        *path = cfg_keep(ctx->cfg, buf);
        *resolved = version;
        return true;
    }
    if (o->resolve_version(family, dir, version, buf, sizeof buf, resolved, why, sizeof why,
                           o->resolve_ctx) < 0) {
        ERR(ctx, s, "%s: %s", where, why);
        return false;
    }
    *path = cfg_keep(ctx->cfg, buf);
    return true;
}

void cfg_parse_golds(parse_ctx *ctx, const config_setting_t *list)
{
    vdi_config *cfg = ctx->cfg;
    cfg_entry *e = NULL;
    size_t n = cfg_collect_entries(ctx, list, "gold", &e);
    cfg->golds = cfg_section_items(n, sizeof *cfg->golds);
    static const char *const keys[] = {"name", "path", "dir", NULL};
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *g = e[i].group;
        char where[96];
        vdi_gold_config *gc = &cfg->golds[cfg->ngolds++];
        gc->name = e[i].name;
        cfg_entry_begin(ctx, &e[i], "gold", keys, where, sizeof where, &gc->file, &gc->line);
        if (cfg_member(g, "path") && cfg_member(g, "dir")) {
            ERR(ctx, cfg_member(g, "dir"),
                "%s has both 'path' (one image) and 'dir' (a family of versions); keep one", where);
        } else if (cfg_member(g, "dir")) {
            if (cfg_get_string(ctx, g, "dir", where, true, &gc->dir)) {
                if (!cfg_is_absolute(gc->dir))
                    ERR(ctx, cfg_member(g, "dir"), "%s: 'dir' must be an absolute path", where);
                else if (gc->name)
                    resolve_family(ctx, cfg_member(g, "dir"), where, gc->name, gc->dir, 0,
                                   &gc->path, &gc->version);
            }
        } else if (cfg_get_string(ctx, g, "path", where, true, &gc->path)) {
            check_gold_path(ctx, cfg_member(g, "path"), where, gc->path);
        }
    }
    free(e);
}

static unsigned desktop_digits(unsigned size)
{
    unsigned d = 1;
    while (size >= 10) {
        size /= 10;
        d++;
    }
    return d < 3 ? 3 : d;
}

static void parse_pool(parse_ctx *ctx, const cfg_entry *e, vdi_pool_config *p)
{
    vdi_config *cfg = ctx->cfg;
    const config_setting_t *g = e->group;
    char where[96];
    static const char *const keys[] = {"name",
                                       "desktop_prefix",
                                       "gold",
                                       "datastore",
                                       "size",
                                       "spares",
                                       "max_chain_depth",
                                       "expected_growth",
                                       "domain",
                                       "session",
                                       "ready_when",
                                       "boot_timeout",
                                       "hostname",
                                       "hostname_command",
                                       "rollout",
                                       "rollout_notice",
                                       "hosts",
                                       "start",
                                       "template_settle",
                                       NULL};
    p->name = e->name;
    cfg_entry_begin(ctx, e, "pool", keys, where, sizeof where, &p->file, &p->line);
    p->desktop_prefix = e->name;
    p->size = 1;
    p->spares = 1;
    p->max_chain_depth = 3;
    p->expected_growth = 2ULL << 30;

    if (cfg_get_string(ctx, g, "desktop_prefix", where, false, &p->desktop_prefix))
        cfg_check_name(ctx, cfg_member(g, "desktop_prefix"), "desktop_prefix", p->desktop_prefix);
    bool have_size = cfg_get_uint(ctx, g, "size", where, 1, 100000, &p->size);
    if (!cfg_member(g, "size"))
        ERR(ctx, g, "%s needs 'size', the most desktops it may have", where);
    if (cfg_get_uint(ctx, g, "spares", where, 0, 100000, &p->spares) && have_size &&
        p->spares > p->size)
        ERR(ctx, cfg_member(g, "spares"), "%s: 'spares' (%u) is larger than 'size' (%u)", where,
            p->spares, p->size);
    if (!cfg_member(g, "spares") && p->spares > p->size)
        p->spares = p->size;
    cfg_get_uint(ctx, g, "max_chain_depth", where, 1, 16, &p->max_chain_depth);
    cfg_get_size(ctx, g, "expected_growth", where, 0, &p->expected_growth);
    static const char *const rollouts[] = {"on-logoff", "immediate", "manual", NULL};
    int ri = cfg_get_choice(ctx, g, "rollout", where, rollouts);
    p->rollout = ri >= 0 ? (vdi_rollout)ri : VDI_ROLLOUT_ON_LOGOFF;
    p->rollout_notice = 600;
    cfg_get_duration(ctx, g, "rollout_notice", where, 7ULL * 86400, &p->rollout_notice);
    if (cfg_member(g, "rollout_notice") && p->rollout != VDI_ROLLOUT_IMMEDIATE)
        ERR(ctx, cfg_member(g, "rollout_notice"),
            "%s: 'rollout_notice' is for rollout = \"immediate\" (sessions end that long "
            "after a roll-out)",
            where);

    const char *gold = NULL;
    if (cfg_get_string(ctx, g, "gold", where, true, &gold)) {
        const config_setting_t *gs = cfg_member(g, "gold");
        if (gold[0] == '/') {
            p->gold = gold;
            check_gold_path(ctx, gs, where, gold);
        } else {
            /* "name@N" pins version N of a family. */
            char family[128];
            const char *at = strchr(gold, '@');
            snprintf(family, sizeof family, "%.*s", at ? (int)(at - gold) : (int)strlen(gold),
                     gold);
            char *end = NULL;
            unsigned long pin = at ? strtoul(at + 1, &end, 10) : 0;
            if (at && (!at[1] || *end || pin == 0 || pin > 99999))
                ERR(ctx, gs, "%s: '%s' pins no version: write \"%s@3\" for version 3", where, gold,
                    family);
            for (size_t i = 0; i < cfg->ngolds; i++) {
                const vdi_gold_config *gc = &cfg->golds[i];
                if (!gc->name || strcmp(gc->name, family))
                    continue;
                p->gold_name = gc->name;
                if (at && !gc->dir)
                    ERR(ctx, gs,
                        "%s: gold '%s' is one image ('path'), it has no versions to "
                        "pin; give it a 'dir' to keep versions",
                        where, family);
                else if (at && pin)
                    resolve_family(ctx, gs, where, family, gc->dir, (unsigned)pin, &p->gold,
                                   &p->gold_version);
                else {
                    p->gold = gc->path;
                    p->gold_version = gc->version;
                }
                p->gold_pinned = at != NULL;
            }
            gold = family;
            if (!p->gold_name) {
                const char *best = NULL;
                size_t bd = SIZE_MAX;
                for (size_t i = 0; i < cfg->ngolds; i++) {
                    size_t d =
                        cfg->golds[i].name ? cfg_edit_distance(gold, cfg->golds[i].name) : SIZE_MAX;
                    if (d < bd) {
                        bd = d;
                        best = cfg->golds[i].name;
                    }
                }
                if (best && bd <= 2)
                    ERR(ctx, gs, "%s: no gold named '%s' (did you mean '%s'?)", where, gold, best);
                else
                    ERR(ctx, gs,
                        "%s: no gold named '%s'; define it under 'golds' or give an "
                        "absolute path",
                        where, gold);
            }
        }
    }
    if (cfg_get_string(ctx, g, "datastore", where, true, &p->datastore) &&
        !vdi_config_find_datastore(cfg, p->datastore))
        ERR(ctx, cfg_member(g, "datastore"), "%s: no datastore named '%s'", where, p->datastore);
    cfg_parse_pool_hosts(ctx, g, where, p);

    /* domain */
    vdi_domain_config *d = &p->domain;
    d->memory_bytes = 2ULL << 30;
    d->vcpus = 2;
    d->network = "default";
    d->graphics = VDI_GRAPHICS_SPICE;
    d->kvm = true;
    const config_setting_t *dg = cfg_member(g, "domain");
    char dwhere[128];
    snprintf(dwhere, sizeof dwhere, "%s domain", where);
    if (dg && config_setting_type(dg) != CONFIG_TYPE_GROUP) {
        ERR(ctx, dg, "%s: 'domain' must be a group: domain = { memory = \"4G\"; ... };", where);
    } else if (dg) {
        static const char *const dkeys[] = {"memory",   "vcpus", "network", "graphics",
                                            "template", "accel", NULL};
        cfg_check_keys(ctx, dg, dkeys, dwhere);
        cfg_get_size(ctx, dg, "memory", dwhere, 16ULL << 20, &d->memory_bytes);
        cfg_get_uint(ctx, dg, "vcpus", dwhere, 1, 512, &d->vcpus);
        if (cfg_get_string(ctx, dg, "network", dwhere, false, &d->network) &&
            !strcmp(d->network, "none"))
            d->network = NULL;
        static const char *const gfx[] = {"spice", "vnc", "none", NULL};
        int gi = cfg_get_choice(ctx, dg, "graphics", dwhere, gfx);
        if (gi >= 0)
            d->graphics = (vdi_graphics)gi;
        static const char *const accels[] = {"kvm", "tcg", NULL};
        int ai = cfg_get_choice(ctx, dg, "accel", dwhere, accels);
        if (ai >= 0)
            d->kvm = ai == 0;
        if (cfg_get_string(ctx, dg, "template", dwhere, false, &d->template_path)) {
            struct stat st;
            const config_setting_t *ts = cfg_member(dg, "template");
            if (!cfg_is_absolute(d->template_path))
                ERR(ctx, ts, "%s: 'template' must be an absolute path", dwhere);
            else if (!ctx->opts->skip_filesystem_checks &&
                     (stat(d->template_path, &st) < 0 || !S_ISREG(st.st_mode)))
                ERR(ctx, ts, "%s: template %s is not a readable file", dwhere, d->template_path);
        }
    }

    /* session */
    cfg_parse_readiness(ctx, g, where, p);

    vdi_session_config *s = &p->session;
    s->on_end = "destroy";
    s->paused_timeout = 600;
    s->logoff_grace = 30;
    s->agent_lost_timeout = 300;
    const config_setting_t *sg = cfg_member(g, "session");
    char swhere[128];
    snprintf(swhere, sizeof swhere, "%s session", where);
    if (sg && config_setting_type(sg) != CONFIG_TYPE_GROUP) {
        ERR(ctx, sg, "%s: 'session' must be a group: session = { max_duration = \"12h\"; };",
            where);
    } else if (sg) {
        static const char *const skeys[] = {
            "max_duration",  "idle_spare_max_age", "on_end",      "paused_timeout", "logoff_grace",
            "login_timeout", "agent_lost_timeout", "idle_logoff", "idle_command",   NULL};
        cfg_check_keys(ctx, sg, skeys, swhere);
        cfg_get_duration(ctx, sg, "max_duration", swhere, 366ULL * 86400, &s->max_duration);
        cfg_get_duration(ctx, sg, "idle_spare_max_age", swhere, 366ULL * 86400,
                         &s->idle_spare_max_age);
        cfg_get_duration(ctx, sg, "paused_timeout", swhere, 366ULL * 86400, &s->paused_timeout);
        cfg_get_duration(ctx, sg, "logoff_grace", swhere, 86400, &s->logoff_grace);
        cfg_get_duration(ctx, sg, "login_timeout", swhere, 366ULL * 86400, &s->login_timeout);
        cfg_get_duration(ctx, sg, "agent_lost_timeout", swhere, 86400, &s->agent_lost_timeout);
        cfg_get_duration(ctx, sg, "idle_logoff", swhere, 366ULL * 86400, &s->idle_logoff);
        cfg_get_string(ctx, sg, "idle_command", swhere, false, &s->idle_command);
        if (s->idle_logoff && (!s->idle_command || !*s->idle_command))
            ERR(ctx, cfg_member(sg, "idle_logoff"),
                "%s: 'idle_logoff' needs 'idle_command', a program in the guest that prints "
                "how many seconds its user has been idle (the QEMU guest agent does not report "
                "it; see README, \"Ready means usable\")",
                swhere);
        if (p->ready_when != VDI_READY_AGENT)
            for (const char *const *k =
                     (const char *const[]){"logoff_grace", "login_timeout", "agent_lost_timeout",
                                           "idle_logoff", "idle_command", NULL};
                 *k; k++)
                if (cfg_member(sg, *k))
                    ERR(ctx, cfg_member(sg, *k),
                        "%s: '%s' needs the guest agent: set ready_when = \"agent\" in the "
                        "pool",
                        swhere, *k);
        static const char *const ends[] = {"destroy", NULL};
        cfg_get_choice(ctx, sg, "on_end", swhere, ends);
    }
}

void cfg_parse_pools(parse_ctx *ctx, const config_setting_t *list)
{
    vdi_config *cfg = ctx->cfg;
    cfg_entry *e = NULL;
    size_t n = cfg_collect_entries(ctx, list, "pool", &e);
    cfg->pools = cfg_section_items(n, sizeof *cfg->pools);
    for (size_t i = 0; i < n; i++) {
        vdi_pool_config *p = &cfg->pools[cfg->npools++];
        parse_pool(ctx, &e[i], p);
        /* Desktops are PREFIX-NNN; equal prefixes would give two pools one domain name. */
        for (size_t j = 0; j + 1 < cfg->npools; j++) {
            const vdi_pool_config *q = &cfg->pools[j];
            if (p->desktop_prefix && q->desktop_prefix &&
                !strcmp(p->desktop_prefix, q->desktop_prefix))
                ERR(ctx, e[i].group,
                    "pool '%s' would name its desktops like pool '%s' (%s-%0*u): give one of "
                    "them another 'desktop_prefix'",
                    p->name ? p->name : "?", q->name ? q->name : "?", p->desktop_prefix,
                    (int)desktop_digits(p->size), 1u);
        }
    }
    free(e);
}
