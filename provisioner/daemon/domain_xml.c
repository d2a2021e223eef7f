/* domain_xml.c — the libvirt domain of a desktop, from the pool's settings
 * or from the operator's template file.
 *
 * The disk names its whole backing chain with <seclabel model='dac'
 * relabel='no'/> on every parent: libvirt's DAC driver would otherwise chown
 * the gold to QEMU's user on every start (it is sealed with that owner
 * already). error_policy='stop' pauses a guest whose datastore is full
 * instead of failing its writes. */
#include "daemon.h"
#include "text.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int disk_xml(strbuf *b, const domain_spec *d, vdi_error *err)
{
    text_append(b, "    <disk type='file' device='disk'>\n"
                   "      <driver name='qemu' type='qcow2' error_policy='stop' "
                   "rerror_policy='stop' discard='unmap'/>\n"
                   "      <source file='");
    text_append_xml(b, d->child);
    text_append(b, "'/>\n");
    if (d->backing_on_host) {
        text_append(b, "      <backingStore type='file'>\n        <format type='%s'/>\n"
                       "        <source file='",
                    vdi_format_name(d->backing_format));
        text_append_xml(b, d->backing_on_host);
        text_append(b, "'><seclabel model='dac' relabel='no'/></source>\n"
                       "        <backingStore/>\n      </backingStore>\n"
                       "      <target dev='vda' bus='virtio'/>\n    </disk>\n");
        return 0;
    }
    vdi_chain *chain = NULL;
    int rc = vdi_chain_resolve(d->gold, 0, &chain, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < vdi_chain_length(chain); i++) {
        const vdi_image *l = vdi_chain_link(chain, i);
        int indent = (int)(6 + 2 * i);
        text_append(b,
                    "%*s<backingStore type='file'>\n%*s  <format type='%s'/>\n%*s  <source file='",
                    indent, "", indent, "", vdi_format_name(vdi_image_format(l)), indent, "");
        text_append_xml(b, vdi_image_path(l));
        text_append(b, "'><seclabel model='dac' relabel='no'/></source>\n");
    }
    text_append(b, "%*s<backingStore/>\n", (int)(6 + 2 * vdi_chain_length(chain)), "");
    for (size_t i = vdi_chain_length(chain); i-- > 0;)
        text_append(b, "%*s</backingStore>\n", (int)(6 + 2 * i), "");
    text_append(b, "      <target dev='vda' bus='virtio'/>\n    </disk>\n");
    vdi_chain_free(chain);
    return 0;
}

void domain_metadata_xml(strbuf *b, const vdi_pool_config *cfg, const domain_spec *d)
{
    text_append(b, "  <metadata>\n    <vdipool:desktop xmlns:vdipool='" VDI_XML_NS "'>\n"
                   "      <vdipool:pool>");
    text_append_xml(b, cfg->name);
    text_append(b,
                "</vdipool:pool>\n      <vdipool:slot>%u</vdipool:slot>\n"
                "      <vdipool:child>",
                d->slot);
    text_append_xml(b, d->child);
    text_append(b, "</vdipool:child>\n      <vdipool:gold>");
    text_append_xml(b, d->gold);
    text_append(b,
                "</vdipool:gold>\n      <vdipool:gold-sha256>%s</vdipool:gold-sha256>\n"
                "    </vdipool:desktop>\n  </metadata>\n",
                d->gold_hash_hex ? d->gold_hash_hex : "");
}

/* Replaces every {{key}} in a template with its value. */
static char *fill_template(const char *tpl, const char *const *keys, const char *const *values,
                           size_t n)
{
    strbuf b = {0};
    const char *p = tpl;
    while (*p) {
        const char *open = strstr(p, "{{");
        if (!open) {
            text_append(&b, "%s", p);
            break;
        }
        text_append(&b, "%.*s", (int)(open - p), p);
        const char *close = strstr(open, "}}");
        if (!close) {
            text_append(&b, "%s", open);
            break;
        }
        size_t klen = (size_t)(close - open - 2);
        bool found = false;
        for (size_t i = 0; i < n; i++)
            if (strlen(keys[i]) == klen && !strncmp(open + 2, keys[i], klen)) {
                text_append(&b, "%s", values[i]);
                found = true;
            }
        if (!found)
            text_append(&b, "%.*s", (int)(close + 2 - open), open);
        p = close + 2;
    }
    return text_take(&b);
}

bool domain_has_display(const vdi_pool_config *cfg)
{
    return cfg->domain.graphics != VDI_GRAPHICS_NONE || cfg->domain.template_path;
}

char *domain_xml_build(const vdi_pool_config *cfg, const domain_spec *d, vdi_error *err)
{
    const vdi_domain_config *dc = &cfg->domain;
    strbuf disk = {0}, meta = {0};
    char *out = NULL, *disk_s = NULL, *meta_s = NULL;
    if (disk_xml(&disk, d, err) < 0) {
        free(text_take(&disk));
        return NULL;
    }
    domain_metadata_xml(&meta, cfg, d);
    disk_s = text_take(&disk);
    meta_s = text_take(&meta);
    if (!disk_s || !meta_s) {
        vdi_error_set(err, -ENOMEM, "out of memory building the domain XML");
        goto done;
    }
    char memory[32], vcpus[16];
    snprintf(memory, sizeof memory, "%llu", (unsigned long long)(dc->memory_bytes / 1024));
    snprintf(vcpus, sizeof vcpus, "%u", dc->vcpus);
    if (dc->template_path) {
        FILE *f = fopen(dc->template_path, "r");
        if (!f) {
            vdi_error_set(err, -errno, "cannot read domain template %s: %s", dc->template_path,
                          strerror(errno));
            goto done;
        }
        strbuf t = {0};
        char chunk[4096];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
            text_append(&t, "%.*s", (int)n, chunk);
        fclose(f);
        char *tpl = text_take(&t);
        const char *keys[] = {"name", "memory_kib", "vcpus", "type", "disk", "metadata"};
        const char *values[] = {d->name, memory, vcpus, dc->kvm ? "kvm" : "qemu", disk_s, meta_s};
        out = tpl ? fill_template(tpl, keys, values, 6) : NULL;
        free(tpl);
        if (!out)
            vdi_error_set(err, -ENOMEM, "out of memory filling the domain template %s",
                          dc->template_path);
        goto done;
    }
    strbuf b = {0};
    text_append(&b, "<domain type='%s'>\n  <name>", dc->kvm ? "kvm" : "qemu");
    text_append_xml(&b, d->name);
    text_append(&b,
                "</name>\n%s"
                "  <memory unit='KiB'>%s</memory>\n  <vcpu>%s</vcpu>\n"
                "  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\n"
                "  <features><acpi/></features>\n"
                "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n"
                "  <on_crash>destroy</on_crash>\n  <devices>\n%s",
                meta_s, memory, vcpus, disk_s);
    if (dc->network && !d->no_network) {
        text_append(&b, "    <interface type='network'><source network='");
        text_append_xml(&b, dc->network);
        text_append(&b, "'/><model type='virtio'/></interface>\n");
    }
    if (dc->graphics == VDI_GRAPHICS_SPICE)
        text_append(&b, "    <graphics type='spice' autoport='yes' listen='127.0.0.1'/>\n"
                        "    <video><model type='qxl'/></video>\n");
    else if (dc->graphics == VDI_GRAPHICS_VNC)
        text_append(&b, "    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>\n"
                        "    <video><model type='vga'/></video>\n");
    /* The guest agent's channel: libvirt reports the agent connecting and
     * leaving, and vdipool talks to it (ready_when = "agent", log-off). A
     * gold without an agent simply never connects. */
    text_append(&b, "    <channel type='unix'><target type='virtio' "
                    "name='org.qemu.guest_agent.0'/></channel>\n"
                    "    <input type='keyboard' bus='ps2'/>\n    <memballoon model='none'/>\n"
                    "  </devices>\n</domain>\n");
    out = text_take(&b);
    if (!out)
        vdi_error_set(err, -ENOMEM, "out of memory building the domain XML");
done:
    free(disk_s);
    free(meta_s);
    return out;
}
