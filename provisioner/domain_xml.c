/* domain_xml.c — the libvirt domain of a desktop, from the pool's settings
 * or from the operator's template file.
 *
 * The disk names its whole backing chain with <seclabel model='dac'
 * relabel='no'/> on every parent: libvirt's DAC driver would otherwise chown
 * the gold to QEMU's user on every start (it is sealed with that owner
 * already). error_policy='stop' pauses a guest whose datastore is full
 * instead of failing its writes. */
#include "service.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct buf {
    char *s;
    size_t len, cap;
} buf;

static void put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *piece = NULL;
    int n = vasprintf(&piece, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t cap = (b->cap + (size_t)n + 1) * 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            free(piece);
            return;
        }
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->len, piece, (size_t)n + 1);
    b->len += (size_t)n;
    free(piece);
}

/* XML-escaped copy (static rotating buffers: short-lived use only). */
static const char *esc(const char *s)
{
    static char bufs[6][4096 * 2];
    static int next;
    char *out = bufs[next++ % 6];
    size_t o = 0;
    for (; s && *s && o < sizeof bufs[0] - 8; s++) {
        const char *r = NULL;
        switch (*s) {
        case '&': r = "&amp;"; break;
        case '<': r = "&lt;"; break;
        case '>': r = "&gt;"; break;
        case '\'': r = "&apos;"; break;
        case '"': r = "&quot;"; break;
        }
        if (r) {
            size_t l = strlen(r);
            memcpy(out + o, r, l);
            o += l;
        } else {
            out[o++] = *s;
        }
    }
    out[o] = '\0';
    return out;
}

static int disk_xml(buf *b, const desktop *d, vdi_error *err)
{
    vdi_chain *chain = NULL;
    int rc = vdi_chain_resolve(d->gold, 0, &chain, err);
    if (rc < 0)
        return rc;
    put(b, "    <disk type='file' device='disk'>\n"
           "      <driver name='qemu' type='qcow2' error_policy='stop' rerror_policy='stop' "
           "discard='unmap'/>\n"
           "      <source file='%s'/>\n",
        esc(d->child));
    for (size_t i = 0; i < vdi_chain_length(chain); i++) {
        const vdi_image *l = vdi_chain_link(chain, i);
        put(b,
            "%*s<backingStore type='file'>\n%*s  <format type='%s'/>\n"
            "%*s  <source file='%s'><seclabel model='dac' relabel='no'/></source>\n",
            (int)(6 + 2 * i), "", (int)(6 + 2 * i), "", vdi_format_name(vdi_image_format(l)),
            (int)(6 + 2 * i), "", esc(vdi_image_path(l)));
    }
    put(b, "%*s<backingStore/>\n", (int)(6 + 2 * vdi_chain_length(chain)), "");
    for (size_t i = vdi_chain_length(chain); i-- > 0;)
        put(b, "%*s</backingStore>\n", (int)(6 + 2 * i), "");
    put(b, "      <target dev='vda' bus='virtio'/>\n    </disk>\n");
    vdi_chain_free(chain);
    return 0;
}

static void metadata_xml(buf *b, const vdi_pool_config *cfg, const desktop *d, const char *hash)
{
    put(b,
        "  <metadata>\n    <vdipool:desktop xmlns:vdipool='" VDI_XML_NS "'>\n"
        "      <vdipool:pool>%s</vdipool:pool>\n"
        "      <vdipool:slot>%u</vdipool:slot>\n"
        "      <vdipool:child>%s</vdipool:child>\n"
        "      <vdipool:gold>%s</vdipool:gold>\n"
        "      <vdipool:gold-sha256>%s</vdipool:gold-sha256>\n"
        "    </vdipool:desktop>\n  </metadata>\n",
        esc(cfg->name), d->slot, esc(d->child), esc(d->gold), hash);
}

/* Replaces every {{key}} in a template with its value. */
static char *fill_template(const char *tpl, const char *const *keys, const char *const *values,
                           size_t n)
{
    buf b = { 0 };
    const char *p = tpl;
    while (*p) {
        const char *open = strstr(p, "{{");
        if (!open) {
            put(&b, "%s", p);
            break;
        }
        put(&b, "%.*s", (int)(open - p), p);
        const char *close = strstr(open, "}}");
        if (!close) {
            put(&b, "%s", open);
            break;
        }
        size_t klen = (size_t)(close - open - 2);
        bool found = false;
        for (size_t i = 0; i < n; i++)
            if (strlen(keys[i]) == klen && !strncmp(open + 2, keys[i], klen)) {
                put(&b, "%s", values[i]);
                found = true;
            }
        if (!found)
            put(&b, "%.*s", (int)(close + 2 - open), open);
        p = close + 2;
    }
    return b.s;
}

char *domain_xml_build(const vdi_pool_config *cfg, const desktop *d, const char *hash,
                       vdi_error *err)
{
    const vdi_domain_config *dc = &cfg->domain;
    buf disk = { 0 }, meta = { 0 };
    if (disk_xml(&disk, d, err) < 0) {
        free(disk.s);
        return NULL;
    }
    metadata_xml(&meta, cfg, d, hash);
    char memory[32], vcpus[16];
    snprintf(memory, sizeof memory, "%llu", (unsigned long long)(dc->memory_bytes / 1024));
    snprintf(vcpus, sizeof vcpus, "%u", dc->vcpus);
    char *out = NULL;
    if (dc->template_path) {
        FILE *f = fopen(dc->template_path, "r");
        if (!f) {
            vdi_error_set(err, -errno, "cannot read domain template %s: %s", dc->template_path,
                          strerror(errno));
            goto done;
        }
        buf t = { 0 };
        char chunk[4096];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
            put(&t, "%.*s", (int)n, chunk);
        fclose(f);
        const char *keys[] = { "name", "memory_kib", "vcpus", "type", "disk", "metadata" };
        const char *values[] = { d->name, memory, vcpus, dc->kvm ? "kvm" : "qemu", disk.s, meta.s };
        out = fill_template(t.s ? t.s : "", keys, values, 6);
        free(t.s);
        goto done;
    }
    buf b = { 0 };
    put(&b,
        "<domain type='%s'>\n  <name>%s</name>\n%s"
        "  <memory unit='KiB'>%s</memory>\n  <vcpu>%s</vcpu>\n"
        "  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\n"
        "  <features><acpi/></features>\n"
        "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n"
        "  <on_crash>destroy</on_crash>\n  <devices>\n%s",
        dc->kvm ? "kvm" : "qemu", esc(d->name), meta.s, memory, vcpus, disk.s);
    if (dc->network)
        put(&b, "    <interface type='network'><source network='%s'/><model type='virtio'/>"
                "</interface>\n",
            esc(dc->network));
    if (dc->graphics == VDI_GRAPHICS_SPICE)
        put(&b, "    <graphics type='spice' autoport='yes' listen='127.0.0.1'/>\n"
                "    <video><model type='qxl'/></video>\n");
    else if (dc->graphics == VDI_GRAPHICS_VNC)
        put(&b, "    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>\n"
                "    <video><model type='vga'/></video>\n");
    put(&b, "    <input type='keyboard' bus='ps2'/>\n    <memballoon model='none'/>\n"
            "  </devices>\n</domain>\n");
    out = b.s;
done:
    free(disk.s);
    free(meta.s);
    return out;
}
