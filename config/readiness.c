/* readiness.c — a pool's readiness and identity settings (ready_when,
 * boot_timeout, hostname, hostname_command) and the hostname a desktop
 * gets from its pool's pattern. */
#include "reading.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *vdi_rollout_name(vdi_rollout rollout)
{
    return rollout == VDI_ROLLOUT_IMMEDIATE ? "immediate"
           : rollout == VDI_ROLLOUT_MANUAL  ? "manual"
                                            : "on-logoff";
}

const char *vdi_ready_when_name(vdi_ready_when when)
{
    return when == VDI_READY_AGENT ? "agent" : "started";
}

int vdi_config_hostname(const vdi_pool_config *pool, const char *desktop_name, unsigned slot,
                        char *out, size_t out_len)
{
    const char *pattern = pool->hostname ? pool->hostname : "{{name}}";
    size_t len = 0;
    char slot_text[16];
    snprintf(slot_text, sizeof slot_text, "%u", slot);
    for (const char *p = pattern; *p;) {
        const char *value = NULL;
        size_t skip = 1;
        if (!strncmp(p, "{{name}}", 8))
            value = desktop_name, skip = 8;
        else if (!strncmp(p, "{{pool}}", 8))
            value = pool->name, skip = 8;
        else if (!strncmp(p, "{{slot}}", 8))
            value = slot_text, skip = 8;
        size_t vlen = value ? strlen(value) : 1;
        if (len + vlen + 1 > out_len)
            return -ENOSPC;
        memcpy(out + len, value ? value : p, vlen);
        len += vlen;
        p += skip;
    }
    out[len] = '\0';
    if (len == 0 || len > 63 || out[0] == '-' || out[len - 1] == '-')
        return -EINVAL;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)out[i]) && out[i] != '-')
            return -EINVAL;
    return 0;
}

static bool file_mentions(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return true; /* unreadable: reported where the template is checked */
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

const char *vdi_start_name(vdi_start start)
{
    return start == VDI_START_RESUME ? "resume" : "boot";
}

static bool file_mentions(const char *path, const char *needle);

/* start and template_settle: how a desktop's guest gets running. */
static void parse_start(parse_ctx *ctx, const config_setting_t *g, const char *where,
                        vdi_pool_config *p)
{
    static const char *const starts[] = { "boot", "resume", NULL };
    int si = cfg_get_choice(ctx, g, "start", where, starts);
    p->start = si == 1 ? VDI_START_RESUME : VDI_START_BOOT;
    p->template_settle = 15;
    cfg_get_duration(ctx, g, "template_settle", where, 3600, &p->template_settle);
    if (cfg_member(g, "template_settle") && p->start != VDI_START_RESUME)
        ERR(ctx, cfg_member(g, "template_settle"),
            "%s: 'template_settle' is for start = \"resume\" (how long the template domain "
            "runs before its memory is saved)",
            where);
    const vdi_datastore_config *ds =
        p->datastore ? vdi_config_find_datastore(ctx->cfg, p->datastore) : NULL;
    if (p->start == VDI_START_RESUME && p->domain.template_path &&
        !ctx->opts->skip_filesystem_checks && file_mentions(p->domain.template_path, "<interface"))
        ERR(ctx, cfg_member(g, "start"),
            "%s: start = \"resume\" saves a template domain without a network card and gives "
            "each resumed desktop its own; remove the <interface> from the domain template %s",
            where, p->domain.template_path);
    if (p->start == VDI_START_RESUME && ds && ds->kind == VDI_DATASTORE_LOCAL)
        ERR(ctx, cfg_member(g, "start"),
            "%s: start = \"resume\" needs a shared datastore (its memory image and template "
            "child are written by vdipoold); datastore '%s' is local to host '%s'",
            where, ds->name, ds->host ? ds->host : "?");
}

/* ready_when, boot_timeout, hostname, hostname_command: a desktop is ready
 * when its guest agent answers and its identity is set. */
void cfg_parse_readiness(parse_ctx *ctx, const config_setting_t *g, const char *where,
                            vdi_pool_config *p)
{
    parse_start(ctx, g, where, p);
    p->ready_when = VDI_READY_STARTED;
    p->boot_timeout = 600;
    p->hostname = "{{name}}";
    p->hostname_command = "hostname";
    static const char *const whens[] = { "started", "agent", NULL };
    int wi = cfg_get_choice(ctx, g, "ready_when", where, whens);
    if (wi >= 0)
        p->ready_when = (vdi_ready_when)wi;
    cfg_get_duration(ctx, g, "boot_timeout", where, 86400, &p->boot_timeout);
    if (cfg_member(g, "boot_timeout") && p->boot_timeout == 0)
        ERR(ctx, cfg_member(g, "boot_timeout"), "%s: 'boot_timeout' must be at least 1s", where);
    cfg_get_string(ctx, g, "hostname", where, false, &p->hostname);
    cfg_get_string(ctx, g, "hostname_command", where, false, &p->hostname_command);
    if (cfg_member(g, "hostname_command") && !*p->hostname_command)
        ERR(ctx, cfg_member(g, "hostname_command"),
            "%s: 'hostname_command' is empty; set hostname = \"\" to leave hostnames alone",
            where);
    if (p->ready_when != VDI_READY_AGENT) {
        for (const char *const *k = (const char *const[]){"boot_timeout", "hostname",
                                                         "hostname_command", NULL};
             *k; k++)
            if (cfg_member(g, *k))
                ERR(ctx, cfg_member(g, *k),
                    "%s: '%s' needs the guest agent: set ready_when = \"agent\"", where, *k);
        return;
    }
    if (*p->hostname && p->desktop_prefix) {
        char sample[128] = "", name[128];
        snprintf(name, sizeof name, "%s-%03u", p->desktop_prefix, 1u);
        if (vdi_config_hostname(p, name, 1, sample, sizeof sample) < 0)
            ERR(ctx,
                cfg_member(g, "hostname")         ? cfg_member(g, "hostname")
                : cfg_member(g, "desktop_prefix") ? cfg_member(g, "desktop_prefix")
                                              : cfg_member(g, "ready_when"),
                "%s: hostname \"%s\" gives \"%.63s\" for desktop %s, which is not a valid "
                "hostname: use 1-63 letters, digits and '-' ({{name}}, {{pool}} and {{slot}} are "
                "replaced; '_' and '.' in the desktop prefix are not allowed in a hostname)",
                where, p->hostname, sample, name);
    }
    if (p->domain.template_path && !ctx->opts->skip_filesystem_checks &&
        !file_mentions(p->domain.template_path, "org.qemu.guest_agent.0"))
        ERR(ctx, cfg_member(g, "ready_when"),
            "%s: ready_when = \"agent\" but the domain template %s has no guest agent "
            "channel; add <channel type='unix'><target type='virtio' "
            "name='org.qemu.guest_agent.0'/></channel> to its <devices>",
            where, p->domain.template_path);
}

