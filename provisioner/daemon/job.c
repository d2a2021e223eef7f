/* job.c — what every job is: its object (made by jobs.c, owned by the
 * worker while it runs), failing it with a message, the pool's expected
 * growth it carries, and what a running domain tells about itself (its
 * display, its guest agent's channel). Used by jobs.c, resume.c and
 * templates.c; it calls nothing of theirs. */
#include "daemon.h"
#include "jobs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Finished sessions needed before learned growth replaces expected_growth. */
#define GROWTH_MIN_SAMPLES 20

double jobs_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void job_free(job *j)
{
    if (j->conn)
        virConnectClose(j->conn);
    vdi_config_unref(j->config);
    free(j->host);
    free(j->address);
    free(j->template_child);
    free(j->memory_image);
    free(j->pool);
    free(j->name);
    free(j->child);
    free(j->gold);
    free(j->error);
    free(j->display);
    free(j->hostname);
    json_decref(j->users);
    json_decref(j->domain);
    free(j);
}

void job_fail(job *j, int rc, const char *fmt, ...)
{
    j->rc = rc < 0 ? rc : -EIO;
    free(j->error);
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&j->error, fmt, ap) < 0)
        j->error = NULL;
    va_end(ap);
}

const char *libvirt_message(void)
{
    virErrorPtr e = virGetLastError();
    return e && e->message ? e->message : "unknown error";
}

/* What a desktop of this pool is expected to grow by: the p95 of its
 * finished sessions once there are enough, else expected_growth. */
uint64_t job_growth(job *j)
{
    if (!j->growth_read) {
        /* -ENODATA (too few sessions yet) keeps expected_growth. */
        j->growth_learned = vdi_catalog_growth_p95(j->catalog, j->pool, GROWTH_MIN_SAMPLES,
                                                   &j->growth_p95, NULL, NULL) == 0;
        j->growth_read = j->growth_reread = true;
    }
    return j->growth_learned ? j->growth_p95 : j->pc->expected_growth;
}

/* Where a host's displays are reached: the host part of its libvirt URI
 * ("qemu+ssh://root@h1.example:22/system" -> "h1.example"), or 127.0.0.1 for
 * a local URI. NULL only when out of memory. */
char *host_display_address(const char *uri)
{
    const char *a = uri ? strstr(uri, "://") : NULL;
    if (a) {
        a += 3;
        const char *end = a + strcspn(a, "/?");
        const char *at = memchr(a, '@', (size_t)(end - a));
        if (at)
            a = at + 1;
        const char *colon = *a == '[' ? memchr(a, ']', (size_t)(end - a)) : NULL;
        if (colon) { /* [v6]:port */
            a++;
            end = colon;
        } else if ((colon = memchr(a, ':', (size_t)(end - a))))
            end = colon;
        if (end > a && strncmp(a, "localhost", (size_t)(end - a)))
            return strndup(a, (size_t)(end - a));
    }
    return strdup("127.0.0.1");
}

char *domain_display_from_xml(const char *xml, const char *address)
{
    char *out = NULL;
    const char *g = xml ? strstr(xml, "<graphics ") : NULL;
    if (g) {
        const char *type = strstr(g, "type='");
        const char *port = strstr(g, "port='");
        char t[16] = "";
        if (type && port && sscanf(type + 6, "%15[^']", t) == 1) {
            int p = atoi(port + 6);
            if (p > 0 && asprintf(&out, "%s://%s:%d", t, address ? address : "127.0.0.1", p) < 0)
                out = NULL;
        }
    }
    return out;
}

/* A running domain's XML shows its agent channel as
 * <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>. */
agent_state domain_agent_from_xml(const char *xml)
{
    const char *c = xml ? strstr(xml, "name='org.qemu.guest_agent.0'") : NULL;
    if (!c)
        return AGENT_UNKNOWN;
    const char *end = strchr(c, '>');
    const char *state = strstr(c, "state='connected'");
    return state && (!end || state < end) ? AGENT_CONNECTED : AGENT_DISCONNECTED;
}

char *domain_display(virDomainPtr dom, const char *address)
{
    char *xml = virDomainGetXMLDesc(dom, 0);
    char *out = domain_display_from_xml(xml, address);
    free(xml);
    return out;
}

/* A size as a signed count, -1 when not measured: 0 (a child made on
 * another host is recorded so) or beyond what int64_t holds. */
static int64_t known_bytes(uint64_t bytes)
{
    return bytes > 0 && bytes <= INT64_MAX ? (int64_t)bytes : -1;
}

int64_t job_recorded_bytes(const vdi_child_info *rec)
{
    return known_bytes(rec->last_bytes);
}

int64_t job_child_bytes(job *j)
{
    /* As the clone before this start measured it: no catalog read. */
    int64_t bytes = known_bytes(j->child_bytes);
    if (bytes >= 0)
        return bytes;
    vdi_child_info *rec = malloc(sizeof *rec);
    bytes = rec && vdi_catalog_child(j->catalog, j->child, rec, NULL) == 0 ? job_recorded_bytes(rec)
                                                                           : -1;
    free(rec);
    return bytes;
}

/* A write budget: libvirt tells us (BLOCK_THRESHOLD) when the child has
 * grown by what admission assumed, before the datastore can fill.
 * Admission counted the child at the size its clone recorded, so the
 * budget starts there; libvirt is asked only when that is unknown. */
void job_set_write_budget(job *j, virDomainPtr dom, int64_t child_bytes)
{
    uint64_t growth = job_growth(j);
    virDomainBlockInfo info = {.allocation = (unsigned long long)child_bytes};
    if ((child_bytes < 0 && virDomainGetBlockInfo(dom, "vda", &info, 0) < 0) ||
        virDomainSetBlockThreshold(dom, "vda", info.allocation + growth, 0) < 0)
        svc_log("warning", "pool=%s desktop=%s event=write-budget-not-set reason=\"%s\"", j->pool,
                j->name, libvirt_message());
}

void job_release_start_slot(job *j)
{
    if (j->start_slots && !j->slot_released) {
        j->slot_released = true;
        start_slot_release(j->start_slots);
    }
}

/* Each RPC here runs between the domain's start and its being ready (and
 * the ones that reach QEMU's monitor wait for a guest that is busy booting,
 * tens to hundreds of milliseconds under TCG, unless it was started
 * paused): only what is needed is asked. */
void job_domain_running(job *j, virDomainPtr dom, int64_t child_bytes)
{
    if (domain_has_display(j->pc))
        j->display = domain_display(dom, j->address);
    job_set_write_budget(j, dom, child_bytes);
}
