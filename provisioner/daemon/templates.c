/* templates.c — instant desktops (start = "resume"): instead of booting
 * each desktop, a pool boots one template domain per gold version, saves its
 * memory (virDomainSaveFlags) and resumes every new desktop from it.
 *
 * For the pool's current gold a worker makes, once:
 *   PREFIX-template-T.qcow2   the template child of the gold, sealed like a
 *                             gold after the save (it is the parent of every
 *                             resumed desktop's child: a write to it would
 *                             corrupt them all);
 *   PREFIX-template-T.save    the memory image of the template domain
 *                             (booted on that child, no network card, until
 *                             ready: its agent answers, or template_settle
 *                             passed), read-only and fingerprinted in the
 *                             catalog.
 * A desktop's clone is a child of the template child; its start job writes a
 * copy of the image whose header XML names the desktop (name, UUID,
 * metadata, disk chain), restores it, removes the copy, gives the desktop its
 * own network card (its own MAC) and, with the agent, the time. An image
 * whose fingerprint or template changed is never resumed: the pool boots
 * until a new one is made. Images of retired golds go once no desktop's
 * child depends on their template. */
#include "daemon.h"
#include "jobs.h"

#include <errno.h>
#include <libvirt/libvirt-qemu.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TEMPLATE_RETRY_S 300 /* a failed build is tried again after this */
#define TEMPLATE_RETIRE_S 10 /* how often unused images of earlier golds are looked for */

/* ---- building a pool's memory image, on a worker ------------------------------------ */

typedef struct build_req {
    vdi_catalog *catalog;
    virConnectPtr conn; /* a reference on the host it is built on */
    vdi_config *config; /* a reference: pc and ds point into it */
    const vdi_pool_config *pc;
    const vdi_datastore_config *ds;
    char *pool, *gold, *host;
    int64_t stamp;
    char *keep; /* retire_only: the pool's current image */
    bool retire_only;
    /* Results. */
    int rc;
    bool reused;
    char *child, *image, *error;
    double seconds;
} build_req;

static void build_fail(build_req *r, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void build_fail(build_req *r, int rc, const char *fmt, ...)
{
    r->rc = rc < 0 ? rc : -EIO;
    free(r->error);
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&r->error, fmt, ap) < 0)
        r->error = NULL;
    va_end(ap);
}

static bool path_gone(const char *path)
{
    return access(path, F_OK) < 0 && errno == ENOENT;
}

/* Images of this pool for another gold, or that no longer prove, go once no
 * child depends on their template: the record, the image, the template. */
static void retire_images(build_req *r, const vdi_memory_image *imgs, size_t n, const char *keep)
{
    for (size_t i = 0; i < n; i++) {
        const vdi_memory_image *m = &imgs[i];
        if (keep && !strcmp(m->path, keep))
            continue;
        size_t kids = 0;
        vdi_error err = {0};
        if (vdi_catalog_count_children(r->catalog, m->template_child, &kids, &err) < 0 || kids)
            continue;
        svc_log("info", "pool=%s event=memory-image-retired image=%s template=%s", r->pool,
                m->path, m->template_child);
        size_t orphaned = 0;
        if (vdi_memory_image_forget(r->catalog, m->path, &err) < 0 ||
            (unlink(m->path) < 0 && errno != ENOENT) ||
            (!path_gone(m->template_child) &&
             vdi_unseal(r->catalog, m->template_child, false, NULL, 0, &orphaned, &err) < 0) ||
            vdi_child_delete(r->catalog, m->template_child, NULL, &err) < 0)
            svc_log("warning", "pool=%s event=memory-image-not-retired image=%s reason=\"%s\"",
                    r->pool, m->path, err.message[0] ? err.message : strerror(errno));
    }
}

/* An image for this pool and gold that still proves: reused. */
static bool find_image(build_req *r, const vdi_memory_image *imgs, size_t n)
{
    for (size_t i = n; i-- > 0;) {
        const vdi_memory_image *m = &imgs[i];
        if (strcmp(m->gold, r->gold))
            continue;
        vdi_error err = {0};
        if (vdi_memory_image_check(r->catalog, m->path, true, &err) == 0 &&
            vdi_guard_check(r->catalog, m->template_child, false, &err) == 0) {
            r->child = strdup(m->template_child);
            r->image = strdup(m->path);
            r->reused = true;
            return true;
        }
        svc_log("warning", "pool=%s event=memory-image-refused image=%s reason=\"%s\"", r->pool,
                m->path, err.message);
    }
    return false;
}

/* Ready to be saved: its agent answers, or it ran template_settle. */
static int wait_template(build_req *r, virDomainPtr dom)
{
    /* -1 from IsActive: libvirtd went away (not the domain). */
    if (r->pc->ready_when != VDI_READY_AGENT) {
        sleep((unsigned)r->pc->template_settle);
        int active = virDomainIsActive(dom);
        return active == 1 ? 0 : active < 0 ? -ENOTCONN : -ESRCH;
    }
    time_t end = time(NULL) + (time_t)r->pc->boot_timeout;
    while (time(NULL) < end) {
        int active = virDomainIsActive(dom);
        if (active != 1)
            return active < 0 ? -ENOTCONN : -ESRCH;
        char *answer =
            virDomainQemuAgentCommand(dom, "{\"execute\":\"guest-ping\"}", 2, 0);
        if (answer) {
            free(answer);
            sleep(2); /* let the services that start after the agent settle */
            return 0;
        }
        sleep(1);
    }
    return -ETIMEDOUT;
}

/* Template domains of this pool left by an earlier build (a crash): gone. */
static void destroy_leftover_templates(build_req *r, const char *prefix)
{
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(r->conn, &doms, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
    for (int i = 0; i < n; i++) {
        if (!strncmp(virDomainGetName(doms[i]), prefix, strlen(prefix))) {
            svc_log("info", "pool=%s event=template-leftover-destroyed domain=%s", r->pool,
                    virDomainGetName(doms[i]));
            virDomainDestroy(doms[i]);
        }
        virDomainFree(doms[i]);
    }
    free(doms);
}

static void build_run(void *data)
{
    build_req *r = data;
    double t0 = (double)uv_hrtime() / 1e9;
    /* retire_only runs without a connection, pool settings or gold. */
    vdi_memory_image *imgs = NULL;
    size_t n = 0;
    vdi_error err = {0};
    if (vdi_memory_images_of_pool(r->catalog, r->pool, &imgs, &n, &err) < 0) {
        build_fail(r, err.code, "%s", err.message);
        return;
    }
    if (r->retire_only) {
        retire_images(r, imgs, n, r->keep);
        free(imgs);
        return;
    }
    if (find_image(r, imgs, n)) {
        retire_images(r, imgs, n, r->image);
        free(imgs);
        return;
    }
    char prefix[160], name[200];
    snprintf(prefix, sizeof prefix, "%s-template-", r->pc->desktop_prefix);
    snprintf(name, sizeof name, "%s%lld", prefix, (long long)r->stamp);
    if (asprintf(&r->child, "%s/%s.qcow2", r->ds->path, name) < 0 ||
        asprintf(&r->image, "%s/%s.save", r->ds->path, name) < 0) {
        build_fail(r, -ENOMEM, "out of memory");
        free(imgs);
        return;
    }
    destroy_leftover_templates(r, prefix);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", r->image);
    unlink(tmp);

    vdi_gold_info g;
    char hex[2 * VDI_HASH_SIZE + 1] = "";
    vdi_cloner *cl = NULL;
    vdi_clone_options o;
    vdi_clone_options_init(&o);
    o.max_depth = r->pc->max_chain_depth + 1;
    vdi_child_meta meta = {.datastore = r->ds->name, .pool = r->pool, .slot = -1, .host = r->host};
    if (vdi_catalog_gold(r->catalog, r->gold, &g, &err) < 0) {
        build_fail(r, -EPERM, "gold %s is not sealed", r->gold);
        free(imgs);
        return;
    }
    vdi_hash_hex(g.fp.hash, hex, sizeof hex);
    if (vdi_cloner_new(r->gold, &o, &cl, &err) < 0 ||
        vdi_clone_recorded(r->catalog, cl, r->child, &meta, &err) < 0) {
        build_fail(r, err.code, "cannot make the template child: %s", err.message);
        vdi_cloner_free(cl);
        free(imgs);
        return;
    }
    vdi_cloner_free(cl);
    domain_spec spec = {.name = name,
                        .child = r->child,
                        .gold = r->gold,
                        .gold_hash_hex = hex,
                        .slot = 0,
                        .no_network = true};
    char *xml = domain_xml_build(r->pc, &spec, &err);
    virDomainPtr dom = xml ? virDomainCreateXML(r->conn, xml, 0) : NULL;
    free(xml);
    int rc = 0;
    if (!dom) {
        build_fail(r, -EIO, "cannot start the template domain: %s",
                   err.message[0] ? err.message : libvirt_message());
    } else if ((rc = wait_template(r, dom)) < 0) {
        build_fail(r, rc, "the template domain %s",
                   rc == -ETIMEDOUT  ? "did not become ready in boot_timeout"
                   : rc == -ENOTCONN ? "was lost with the connection to libvirtd"
                                     : "stopped before it could be saved");
        virDomainDestroy(dom);
    } else if (virDomainSaveFlags(dom, tmp, NULL, VIR_DOMAIN_SAVE_RUNNING) < 0) {
        build_fail(r, -EIO, "cannot save the template domain: %s", libvirt_message());
        virDomainDestroy(dom);
    }
    if (dom)
        virDomainFree(dom);
    vdi_save_image check;
    if (r->rc == 0 && vdi_save_image_read(tmp, &check, &err) < 0)
        build_fail(r, err.code, "the saved image is not usable: %s", err.message);
    else if (r->rc == 0)
        vdi_save_image_clear(&check);
    vdi_seal_result sealed;
    if (r->rc == 0 && (chmod(tmp, 0444) < 0 || rename(tmp, r->image) < 0))
        build_fail(r, -errno, "cannot keep the memory image %s: %s", r->image, strerror(errno));
    if (r->rc == 0 && vdi_seal(r->catalog, r->child, &sealed, &err) < 0)
        build_fail(r, err.code, "cannot seal the template child: %s", err.message);
    if (r->rc == 0 &&
        vdi_memory_image_record(r->catalog, r->image, r->child, r->gold, r->pool, &err) < 0)
        build_fail(r, err.code, "cannot record the memory image: %s", err.message);
    if (r->rc < 0) {
        /* Nothing half-made stays: no desktop depends on these yet. */
        size_t orphaned = 0;
        unlink(tmp);
        unlink(r->image);
        vdi_memory_image_forget(r->catalog, r->image, NULL);
        vdi_unseal(r->catalog, r->child, true, NULL, 0, &orphaned, NULL);
        vdi_child_delete(r->catalog, r->child, NULL, NULL);
    } else {
        retire_images(r, imgs, n, r->image);
    }
    free(imgs);
    r->seconds = (double)uv_hrtime() / 1e9 - t0;
}

static void build_done(service *svc, void *data)
{
    build_req *r = data;
    pool *p = service_find_pool(svc, r->pool);
    if (r->retire_only) {
        if (p)
            p->tmpl.retiring = false;
    } else if (p && p->tmpl.state == TEMPLATE_BUILDING) {
        if (r->rc == 0 && !strcmp(r->gold, pool_gold(p))) {
            p->tmpl.state = TEMPLATE_READY;
            set_str(&p->tmpl.gold, r->gold);
            set_str(&p->tmpl.child, r->child);
            set_str(&p->tmpl.image, r->image);
            set_str(&p->tmpl.problem, NULL);
            p->tmpl.built_seconds = r->seconds;
            svc_log("info", "pool=%s event=memory-image-%s image=%s template=%s seconds=%.3f",
                    p->name, r->reused ? "found" : "made", r->image, r->child, r->seconds);
        } else if (r->rc == 0) {
            p->tmpl.state = TEMPLATE_NONE; /* the gold moved on meanwhile: again */
        } else {
            /* A lost connection is libvirtd's, not the gold's: soon again. */
            int wait = r->rc == -ENOTCONN ? 10 : TEMPLATE_RETRY_S;
            p->tmpl.state = TEMPLATE_FAILED;
            p->tmpl.retry_at = service_now(svc) + wait;
            char msg[1200];
            snprintf(msg, sizeof msg, "no memory image (%s); desktops boot, retried in %ds",
                     r->error ? r->error : "unknown error", wait);
            set_str(&p->tmpl.problem, msg);
            svc_log("error", "pool=%s event=memory-image-failed reason=\"%s\"", p->name, msg);
        }
    }
    if (r->conn)
        virConnectClose(r->conn);
    vdi_config_unref(r->config);
    free(r->pool);
    free(r->gold);
    free(r->host);
    free(r->child);
    free(r->image);
    free(r->error);
    free(r->keep);
    free(r);
    service_kick(svc);
}

/* ---- on the loop ------------------------------------------------------------------- */

static void template_clear(pool *p)
{
    free(p->tmpl.gold);
    free(p->tmpl.child);
    free(p->tmpl.image);
    free(p->tmpl.problem);
    memset(&p->tmpl, 0, sizeof p->tmpl);
}

static host *template_host(pool *p)
{
    service *svc = p->svc;
    for (size_t i = 0; i < svc->nhosts; i++) {
        host *h = svc->hosts[i];
        if (host_usable(h) && h->cfg && h->cfg->state == VDI_HOST_ACTIVE &&
            vdi_config_pool_may_use(p->config, p->cfg, h->cfg))
            return h;
    }
    return NULL;
}

void pool_tend_template(pool *p, int64_t now)
{
    if (p->cfg->start != VDI_START_RESUME) {
        if (p->tmpl.state != TEMPLATE_NONE && p->tmpl.state != TEMPLATE_BUILDING)
            template_clear(p);
        return;
    }
    const char *gold = pool_gold(p);
    if (p->tmpl.state == TEMPLATE_BUILDING)
        return;
    if (p->tmpl.gold && strcmp(p->tmpl.gold, gold)) {
        svc_log("info", "pool=%s event=memory-image-outdated gold=%s", p->name, gold);
        template_clear(p); /* a roll-out: a new image; the old goes when unused */
    }
    if (p->tmpl.state == TEMPLATE_READY) {
        /* Images of earlier golds go once their last desktop has. */
        if (!p->tmpl.retiring && now >= p->tmpl.retire_at) {
            p->tmpl.retire_at = now + TEMPLATE_RETIRE_S;
            build_req *r = calloc(1, sizeof *r);
            if (!r || !(r->pool = strdup(p->name)) || !(r->keep = strdup(p->tmpl.image))) {
                if (r)
                    free(r->pool);
                free(r);
                return;
            }
            r->catalog = p->svc->catalog;
            r->retire_only = true;
            p->tmpl.retiring = true;
            if (work_submit(p->svc, build_run, build_done, r) < 0)
                build_done(p->svc, r);
        }
        return;
    }
    if (p->tmpl.state == TEMPLATE_FAILED && now < p->tmpl.retry_at)
        return;
    const vdi_datastore_config *ds = pool_datastore(p);
    host *h = ds ? template_host(p) : NULL;
    build_req *r = h ? calloc(1, sizeof *r) : NULL;
    if (!r)
        return; /* no host yet: the next step asks again */
    r->catalog = p->svc->catalog;
    r->config = vdi_config_ref(p->config);
    r->pc = p->cfg;
    r->ds = ds;
    r->stamp = (int64_t)time(NULL);
    r->pool = strdup(p->name);
    r->gold = strdup(gold);
    r->host = strdup(h->name);
    if (virConnectRef(h->conn) == 0)
        r->conn = h->conn;
    p->tmpl.state = TEMPLATE_BUILDING;
    set_str(&p->tmpl.gold, gold);
    svc_log("info", "pool=%s event=memory-image-building host=%s gold=%s", p->name, h->name, gold);
    if (!r->pool || !r->gold || !r->host || !r->conn ||
        work_submit(p->svc, build_run, build_done, r) < 0) {
        build_fail(r, -ENOMEM, "cannot queue the build");
        build_done(p->svc, r);
    }
}

void desktop_choose_start(desktop *d)
{
    pool *p = d->pool;
    bool resume = p->cfg->start == VDI_START_RESUME && p->tmpl.state == TEMPLATE_READY &&
                  d->gold && p->tmpl.gold && !strcmp(p->tmpl.gold, d->gold);
    set_str(&d->template_child, resume ? p->tmpl.child : NULL);
    set_str(&d->memory_image, resume ? p->tmpl.image : NULL);
}

void pool_template_refused(pool *p, const char *why)
{
    if (p->tmpl.state != TEMPLATE_READY)
        return;
    char msg[1200];
    snprintf(msg, sizeof msg, "memory image refused (%s); desktops boot, a new image in %ds",
             why, TEMPLATE_RETRY_S);
    svc_log("error", "pool=%s event=memory-image-refused image=%s reason=\"%s\"", p->name,
            p->tmpl.image, why);
    set_str(&p->tmpl.problem, msg);
    p->tmpl.state = TEMPLATE_FAILED;
    p->tmpl.retry_at = service_now(p->svc) + TEMPLATE_RETRY_S;
}
