/* resume.c — a resumed start (start = "resume"), on a worker: the memory
 * image checked, a copy of it written whose header XML names the desktop
 * (name, a new UUID, metadata, its child over the template child), restored,
 * the copy removed, the desktop's own network card and clock. See
 * templates.c for how the image is made. */
#include "daemon.h"
#include "jobs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- the domain XML of a resumed desktop -------------------------------------------- */

/* s with [from, to) replaced by text, into b. */
static const char *splice_text(strbuf *b, const char *s, const char *from, const char *to,
                          const char *text)
{
    text_append(b, "%.*s%s", (int)(from - s), s, text);
    return to;
}

char *resume_domain_xml(const char *saved, const vdi_pool_config *cfg, const domain_spec *spec,
                        const char *template_child, const char *uuid, vdi_error *err)
{
    const char *name_a = strstr(saved, "<name>"), *name_b = name_a ? strstr(name_a, "</name>") : NULL;
    const char *uuid_a = strstr(saved, "<uuid>"), *uuid_b = uuid_a ? strstr(uuid_a, "</uuid>") : NULL;
    const char *meta_a = strstr(saved, "<metadata>");
    const char *meta_b = meta_a ? strstr(meta_a, "</metadata>") : NULL;
    const char *disk = strstr(saved, "<disk type='file' device='disk'>");
    const char *src_a = disk ? strstr(disk, "<source file='") : NULL;
    const char *src_b = src_a ? strchr(src_a + 14, '\'') : NULL;
    const char *tag_end = src_b ? strchr(src_b, '>') : NULL;
    const char *disk_end = disk ? strstr(disk, "</disk>") : NULL;
    /* The first disk's own <source .../> (self-closing: no seclabel of its
     * own) and, after it, its backing chain up to the target. */
    const char *chain_a = tag_end ? tag_end + 1 : NULL;
    const char *chain_b = chain_a ? strstr(chain_a, "<target ") : NULL;
    if (!name_b || !uuid_b || !src_b || !tag_end || tag_end[-1] != '/' || !disk_end ||
        !chain_b || chain_b > disk_end || src_a > disk_end ||
        uuid_a < name_b || (meta_a && (!meta_b || meta_a < uuid_b || meta_b > src_a))) {
        vdi_error_set(err, -EINVAL,
                      "the memory image's domain XML has no name, uuid or file disk where "
                      "vdipool puts them; build the image again");
        return NULL;
    }
    strbuf b = {0}, x = {0};
    text_append_xml(&x, spec->name);
    char *name_x = text_take(&x);
    strbuf cs = {0};
    text_append(&cs, "<source file='");
    text_append_xml(&cs, spec->child);
    text_append(&cs, "'/>\n      <backingStore type='file'>\n        <format type='qcow2'/>\n"
                     "        <source file='");
    text_append_xml(&cs, template_child);
    text_append(&cs, "'>\n          <seclabel model='dac' relabel='no'/>\n        </source>");
    char *src_x = text_take(&cs);
    strbuf ms = {0};
    domain_metadata_xml(&ms, cfg, spec);
    char *meta_x = text_take(&ms);
    /* Pieces in the order they appear in the saved XML. */
    const char *p = saved;
    p = splice_text(&b, p, name_a + 6, name_b, name_x);
    p = splice_text(&b, p, uuid_a + 6, uuid_b, uuid);
    if (meta_a) {
        /* domain_metadata_xml writes whole lines ("  <metadata>...</metadata>\n"):
         * the saved element's lines are replaced whole. */
        const char *line = meta_a;
        while (line > saved && line[-1] == ' ')
            line--;
        const char *end = meta_b + strlen("</metadata>");
        if (*end == '\n')
            end++;
        p = splice_text(&b, p, line, end, meta_x ? meta_x : "");
    }
    /* The desktop's child over the template child over the old chain. */
    p = splice_text(&b, p, src_a, tag_end + 1, src_x);
    text_append(&b, "%.*s", (int)(chain_b - p), p);
    text_append(&b, "</backingStore>\n      ");
    p = chain_b;
    text_append(&b, "%s", p);
    free(name_x);
    free(src_x);
    free(meta_x);
    char *out = text_take(&b);
    if (!out)
        vdi_error_set(err, -ENOMEM, "out of memory");
    return out;
}

/* ---- a resumed start, on a worker ---------------------------------------------------- */

static void copy_path(const char *child, char *out, size_t len)
{
    snprintf(out, len, "%s.resume", child);
}

void template_resume_copy_remove(const char *child)
{
    char copy[4200];
    copy_path(child, copy, sizeof copy);
    if (unlink(copy) < 0 && errno != ENOENT)
        svc_log("warning", "event=resume-copy-not-removed copy=%s reason=\"%s\"", copy,
                strerror(errno));
}

static void random_uuid(char *out, size_t len)
{
    uint8_t b[16] = {0};
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(b, 1, sizeof b, f) != sizeof b) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        for (size_t i = 0; i < sizeof b; i++)
            b[i] ^= (uint8_t)((uint64_t)ts.tv_nsec >> (i % 8 * 8)) ^ (uint8_t)(getpid() >> i);
    }
    if (f)
        fclose(f);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    snprintf(out, len,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
}

/* The desktop's own network card, with its own MAC (libvirt makes one):
 * the template has none, so no two desktops share the template's. */
static int attach_network(job *j, virDomainPtr dom)
{
    const char *net = j->pc->domain.network;
    if (!net || j->pc->domain.template_path)
        return 0;
    strbuf b = {0};
    text_append(&b, "<interface type='network'><source network='");
    text_append_xml(&b, net);
    text_append(&b, "'/><model type='virtio'/></interface>");
    char *xml = text_take(&b);
    int rc = xml && virDomainAttachDeviceFlags(dom, xml, VIR_DOMAIN_AFFECT_LIVE) == 0 ? 0 : -EIO;
    free(xml);
    if (rc < 0)
        job_fail(j, rc, "cannot give the resumed desktop its network card: %s",
                 libvirt_message());
    return rc;
}

void template_resume_start(job *j)
{
    vdi_error err = {0};
    if (!j->conn) {
        job_fail(j, -ENOTCONN, "not connected to libvirt");
        return;
    }
    /* Never resume from an image or a template that changed. */
    if (vdi_memory_image_check(j->catalog, j->memory_image, false, &err) < 0 ||
        vdi_guard_check(j->catalog, j->template_child, false, &err) < 0) {
        job_fail(j, -ESTALE, "%s", err.message);
        j->template_bad = true;
        return;
    }
    vdi_save_image img;
    if (vdi_save_image_read(j->memory_image, &img, &err) < 0) {
        job_fail(j, err.code, "%s", err.message);
        j->template_bad = true;
        return;
    }
    char hex[2 * VDI_HASH_SIZE + 1] = "", uuid[40], copy[4200];
    vdi_gold_info g;
    if (vdi_catalog_gold(j->catalog, j->gold, &g, NULL) == 0)
        vdi_hash_hex(g.fp.hash, hex, sizeof hex);
    domain_spec spec = {
        .name = j->name, .child = j->child, .gold = j->gold, .gold_hash_hex = hex, .slot = j->slot};
    random_uuid(uuid, sizeof uuid);
    char *xml = resume_domain_xml(img.xml, j->pc, &spec, j->template_child, uuid, &err);
    vdi_save_image_clear(&img);
    if (!xml) {
        job_fail(j, err.code, "%s", err.message);
        j->template_bad = true;
        return;
    }
    copy_path(j->child, copy, sizeof copy);
    int rc = vdi_save_image_copy(j->memory_image, copy, xml, &err);
    free(xml);
    if (rc < 0) {
        job_fail(j, rc, "%s", err.message);
        return;
    }
    /* Restored paused: its network card and write budget are in place
     * before the guest runs again (as a boot does, jobs.c); a crash before
     * the resume leaves a paused spare, which the next start ends. */
    int64_t child_bytes = job_child_bytes(j);
    rc = virDomainRestoreFlags(j->conn, copy, NULL, VIR_DOMAIN_SAVE_PAUSED);
    if (rc < 0)
        job_fail(j, -EIO, "cannot resume the desktop: %s", libvirt_message());
    template_resume_copy_remove(j->child);
    if (rc < 0)
        return;
    job_release_start_slot(j);
    virDomainPtr dom = virDomainLookupByName(j->conn, j->name);
    if (!dom) {
        job_fail(j, -ENOENT, "the resumed desktop is gone: %s", libvirt_message());
        return;
    }
    if (attach_network(j, dom) == 0) {
        job_set_write_budget(j, dom, child_bytes);
        vdi_crashpoint("resume:paused");
        if (virDomainResume(dom) < 0) {
            job_fail(j, -EIO, "cannot run the resumed desktop: %s", libvirt_message());
            virDomainFree(dom);
            return;
        }
        /* A resumed guest's agent was running already: its channel may be
         * connected without a lifecycle event to say so. One read of the
         * running domain gives that and the display. */
        char *live = virDomainGetXMLDesc(dom, 0);
        j->display = domain_display_from_xml(live, j->address);
        j->agent_connected = domain_agent_from_xml(live) == AGENT_CONNECTED;
        free(live);
        /* The guest's clock stopped with the template: the agent sets it
         * from the host's (it reconnects within a moment of the restore). */
        if (j->pc->ready_when == VDI_READY_AGENT) {
            int tries = 0;
            while (virDomainSetTime(dom, 0, 0, VIR_DOMAIN_TIME_SYNC) < 0 && ++tries < 10)
                usleep(300000);
            if (tries == 10)
                svc_log("warning", "pool=%s desktop=%s event=time-not-set reason=\"%s\"",
                        j->pool, j->name, libvirt_message());
        }
    }
    virDomainFree(dom);
}
