/* jobruns.c — what the daemon's desktop jobs do on a worker (jobs.c queues
 * them and delivers their results on the loop): clone a child (or, on a
 * host-local datastore, a volume through libvirt) after admission, start
 * its domain paused with a write budget, end it and delete its child,
 * resume a paused guest, check a write budget. Each works only on what its
 * job owns (jobs.h). */
#include "daemon.h"
#include "hoststore.h"
#include "jobs.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static bool host_local(const job *j)
{
    return j->ds && j->ds->kind == VDI_DATASTORE_LOCAL;
}

/* The job's host-local storage pool, or NULL with j->error. */
static virStoragePoolPtr job_host_pool(job *j)
{
    char why[1024] = "";
    virStoragePoolPtr sp = NULL;
    if (!j->conn)
        job_fail(j, -ENOTCONN, "host %s is not connected", j->host ? j->host : "?");
    else if (hoststore_pool(j->conn, j->ds, &sp, why, sizeof why) < 0)
        job_fail(j, -EIO, "host %s: %s", j->host ? j->host : "?", why);
    return sp;
}

/* The job's datastore measured without a walk: statvfs (shared) or the
 * host's storage pool (local), and the catalog's usage of it. 0, or -1
 * with j->error. */
static int job_space(job *j, vdi_space_report *r)
{
    vdi_error err = {0};
    if (!j->ds) {
        job_fail(j, -ENOENT, "no datastore");
        return -1;
    }
    if (!host_local(j)) {
        if (vdi_space_measure_known(j->catalog, j->ds->name, j->ds->path, j->ds->reserve_bytes,
                                    j->ds->reserve_percent, r, &err) < 0) {
            job_fail(j, err.code, "%s", err.message);
            return -1;
        }
        return 0;
    }
    if (!j->conn) {
        job_fail(j, -ENOTCONN, "host %s is not connected", j->host ? j->host : "?");
        return -1;
    }
    char why[1024] = "";
    int rc = hoststore_measure(j->conn, j->ds, j->catalog, r, why, sizeof why);
    if (rc < 0)
        job_fail(j, rc, "host %s: %s", j->host ? j->host : "?", why);
    return rc < 0 ? -1 : 0;
}

/* Free bytes above the reserve of the job's datastore, or -1 with j->error. */
static int64_t room_above_reserve(job *j)
{
    vdi_space_report r;
    if (job_space(j, &r) < 0)
        return -1;
    return r.free > r.reserve ? (int64_t)(r.free - r.reserve) : 0;
}

static const char *base_name(const char *path)
{
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

/* A clone on a host-local datastore: the host's proved copy of the gold,
 * then the child made there through the storage API and recorded here. */
static void clone_on_host(job *j, const vdi_gold_info *g)
{
    vdi_error err = {0};
    vdi_chain *chain = NULL;
    if (vdi_chain_resolve(j->gold, 0, &chain, &err) < 0 || vdi_chain_length(chain) != 1) {
        job_fail(j, -EINVAL,
                 "gold %s %s; a host-local datastore needs a gold that is one image (flatten "
                 "it: vdipoolctl gold import makes one)",
                 j->gold, chain ? "has a backing file" : err.message);
        j->blocked = true;
        vdi_chain_free(chain);
        return;
    }
    vdi_chain_free(chain);
    virStoragePoolPtr sp = job_host_pool(j);
    if (!sp) {
        j->blocked = true; /* the datastore, for every desktop of the pool */
        return;
    }
    char why[2048] = "", copy[4096] = "";
    bool copied = false;
    int rc = hoststore_gold(j->conn, sp, j->catalog, g, j->host ? j->host : "?", copy, sizeof copy,
                            &copied, why, sizeof why);
    if (rc < 0) {
        job_fail(j, rc, "host %s: %s", j->host ? j->host : "?", why);
        j->blocked = true;
    } else if ((rc = hoststore_child_create(j->conn, sp, base_name(j->child), copy, g->format,
                                            g->virtual_size, why, sizeof why)) < 0) {
        job_fail(j, rc, "host %s: %s", j->host ? j->host : "?", why);
    } else {
        vdi_child_meta meta = {
            .datastore = j->ds->name, .pool = j->pool, .slot = (int)j->slot, .host = j->host};
        if (vdi_catalog_record_child(j->catalog, j->child, copy, &meta, g->virtual_size, &err) <
            0) {
            job_fail(j, err.code, "%s", err.message);
            hoststore_child_delete(sp, base_name(j->child), NULL, why, sizeof why);
        }
    }
    virStoragePoolFree(sp);
}

void jobs_clone_run(void *data)
{
    job *j = data;
    vdi_error err = {0};
    vdi_gold_info g;
    if (vdi_catalog_gold(j->catalog, j->gold, &g, NULL) < 0) {
        job_fail(j, -EPERM, "gold %s is not sealed; seal it first: vdipoolctl image seal %s",
                 j->gold, j->gold);
        j->blocked = true;
        return;
    }
    if (g.state == VDI_GOLD_TAINTED) {
        job_fail(j, -ESTALE, "gold %s is tainted: %s", j->gold, g.reason);
        j->blocked = true;
        return;
    }
    vdi_hash_hex(g.fp.hash, j->gold_hash, sizeof j->gold_hash); /* for the start */
    if (!j->ds) {
        job_fail(j, -ENOENT, "pool %s has no datastore", j->pool);
        j->blocked = true;
        return;
    }
    /* O(1): statvfs (or the host's pool info) and the catalog's running
     * usage of the datastore, never a walk of its children. Clones still in
     * flight count as children. */
    vdi_space_report r;
    if (job_space(j, &r) < 0) {
        j->blocked = true;
        return;
    }
    r.children += j->clones_in_flight;
    uint64_t growth = job_growth(j);
    /* Admission counts what the children already admitted are still expected
     * to grow by, not only the free space of the moment. */
    if (vdi_space_admit(&r, j->ds->name, growth, vdi_space_committed(&r, growth), g.virtual_size,
                        j->ds->max_overcommit, &err) < 0) {
        job_fail(j, err.code, "%s", err.message);
        j->blocked = true;
        return;
    }
    if (host_local(j)) {
        clone_on_host(j, &g);
        return;
    }
    if (access(j->child, F_OK) == 0 && vdi_child_delete(j->catalog, j->child, NULL, &err) < 0) {
        job_fail(j, err.code, "a leftover child is in the way: %s", err.message);
        return;
    }
    vdi_clone_options o;
    vdi_clone_options_init(&o);
    /* A resumed desktop's child is a child of the template child. */
    o.max_depth = j->pc->max_chain_depth + 1 + (j->template_child ? 1 : 0);
    vdi_cloner *cl = NULL;
    vdi_child_meta meta = {
        .datastore = j->ds->name, .pool = j->pool, .slot = (int)j->slot, .host = j->host};
    if (vdi_cloner_new(j->template_child ? j->template_child : j->gold, &o, &cl, &err) < 0 ||
        vdi_clone_recorded(j->catalog, cl, j->child, &meta, &err) < 0) {
        job_fail(j, err.code, "%s", err.message);
        j->blocked = err.code == -ESTALE || err.code == -ELOOP;
    } else {
        /* What the record has: the engine measured the file it had just
         * made the same way, and nothing writes to it before its start. */
        struct stat st;
        if (stat(j->child, &st) == 0)
            j->child_bytes = (uint64_t)st.st_blocks * 512;
    }
    vdi_cloner_free(cl);
}

void jobs_start_run(void *data)
{
    job *j = data;
    if (j->memory_image) {
        template_resume_start(j); /* start = "resume" (templates.c) */
        return;
    }
    vdi_error err = {0};
    /* The gold's hash as the clone read it; read here only when not known
     * (and always on a host-local datastore, which needs its format too). */
    vdi_gold_info g = {0};
    if ((!*j->gold_hash || host_local(j)) && vdi_catalog_gold(j->catalog, j->gold, &g, NULL) == 0)
        vdi_hash_hex(g.fp.hash, j->gold_hash, sizeof j->gold_hash);
    domain_spec spec = {.name = j->name,
                        .child = j->child,
                        .gold = j->gold,
                        .gold_hash_hex = j->gold_hash,
                        .slot = j->slot};
    /* On a host-local datastore the child's parent is the host's copy.
     * The child's size (where its write budget starts) is read before the
     * domain starts, so that its CPUs wait for no catalog read. */
    vdi_child_info *rec = host_local(j) ? malloc(sizeof *rec) : NULL;
    int64_t child_bytes = -1;
    if (host_local(j)) {
        if (!rec || vdi_catalog_child(j->catalog, j->child, rec, &err) < 0) {
            job_fail(j, rec ? err.code : -ENOMEM, "%s", rec ? err.message : "out of memory");
            free(rec);
            return;
        }
        spec.backing_on_host = rec->parent;
        spec.backing_format = g.format;
        child_bytes = job_recorded_bytes(rec);
    } else {
        child_bytes = job_child_bytes(j);
    }
    char *xml = domain_xml_build(j->pc, &spec, &err);
    free(rec);
    if (!xml) {
        job_fail(j, err.code, "%s", err.message);
        return;
    }
    if (!j->conn) {
        free(xml);
        job_fail(j, -ENOTCONN, "not connected to libvirt");
        return;
    }
    /* A transient domain: it vanishes when destroyed, and lives on if
     * vdipoold restarts (no autodestroy). Its CPUs wait until the write
     * budget is set and the display read: the guest writes nothing
     * unbudgeted, and QEMU's monitor answers at once instead of between a
     * booting guest's slices (up to 0.3 s under TCG). A driver that cannot
     * start paused (libvirt's test driver) starts it running. A crash
     * before the resume leaves a paused spare, which the next start ends
     * (adopt.c, pool.c): it was never handed out. */
    bool paused = true;
    virDomainPtr dom = virDomainCreateXML(j->conn, xml, VIR_DOMAIN_START_PAUSED);
    if (!dom && virGetLastErrorCode() == VIR_ERR_INVALID_ARG) {
        paused = false;
        dom = virDomainCreateXML(j->conn, xml, 0);
    }
    free(xml);
    if (!dom) {
        job_fail(j, -EIO, "cannot start the domain: %s", libvirt_message());
        return;
    }
    job_release_start_slot(j);
    job_domain_running(j, dom, child_bytes);
    if (paused)
        vdi_crashpoint("start:paused");
    /* A failed resume fails the start: its end destroys the domain. */
    if (paused && virDomainResume(dom) < 0)
        job_fail(j, -EIO, "cannot run the started domain: %s", libvirt_message());
    virDomainFree(dom);
}

/* Whether the job's datastore has room above its reserve for what one
 * desktop of the pool is expected to grow by. On false, j->rc is set: a
 * failure to measure, or -ENOSPC with `what` and the numbers. */
static bool room_for_growth(job *j, const char *what, uint64_t *growth_out)
{
    int64_t room = room_above_reserve(j);
    if (room < 0)
        return false;
    uint64_t growth = job_growth(j);
    *growth_out = growth;
    if ((uint64_t)room >= growth)
        return true;
    char a[32], b[32];
    job_fail(j, -ENOSPC,
             "%s: only %s is free above the reserve of datastore %s, %s expected per "
             "desktop",
             what, vdi_format_size((uint64_t)room, a, sizeof a), j->ds->name,
             vdi_format_size(growth, b, sizeof b));
    return false;
}

virDomainPtr job_domain(job *j)
{
    virDomainPtr dom = j->conn ? virDomainLookupByName(j->conn, j->name) : NULL;
    if (!dom)
        job_fail(j, -ENOENT, "cannot find the domain: %s",
                 j->conn ? libvirt_message() : "not connected to libvirt");
    return dom;
}

/* A paused guest is resumed only when its datastore has room for what the
 * pool's desktops are expected to grow by. */
void jobs_resume_run(void *data)
{
    job *j = data;
    uint64_t growth;
    virDomainPtr dom = room_for_growth(j, "not resumed yet", &growth) ? job_domain(j) : NULL;
    if (!dom)
        return;
    if (virDomainResume(dom) < 0)
        job_fail(j, -EIO, "cannot resume the domain: %s", libvirt_message());
    virDomainFree(dom);
}

/* The desktop grew past its write budget: raise the budget when the
 * datastore has room for it, else report the datastore short (new spares
 * wait). */
void jobs_budget_run(void *data)
{
    job *j = data;
    uint64_t growth;
    virDomainPtr dom =
        room_for_growth(j, "a desktop grew past its write budget; new spares wait", &growth)
            ? job_domain(j)
            : NULL;
    if (!dom)
        return;
    if (virDomainSetBlockThreshold(dom, "vda", j->threshold + growth, 0) < 0)
        job_fail(j, -EIO, "cannot raise the write budget: %s", libvirt_message());
    virDomainFree(dom);
}

/* Destroys the domain if it runs, then deletes the child and closes the
 * session. The child stays when the domain may still run. */
void jobs_end_run(void *data)
{
    job *j = data;
    if (!j->conn) {
        job_fail(j, -ENOTCONN, "not connected to libvirt; the domain may still run");
        return;
    }
    virDomainPtr dom = virDomainLookupByName(j->conn, j->name);
    if (dom) {
        if (virDomainIsActive(dom) == 1 && virDomainDestroy(dom) < 0)
            job_fail(j, -EIO, "cannot destroy the domain: %s", libvirt_message());
        if (j->rc == 0 && virDomainIsPersistent(dom) == 1 &&
            virDomainUndefineFlags(dom, VIR_DOMAIN_UNDEFINE_NVRAM) < 0)
            job_fail(j, -EIO, "cannot undefine the domain: %s", libvirt_message());
        virDomainFree(dom);
    } else {
        virErrorPtr e = virGetLastError();
        if (e && e->code != VIR_ERR_NO_DOMAIN) {
            job_fail(j, -EIO, "cannot look up the domain: %s", libvirt_message());
        }
    }
    if (j->rc < 0)
        return; /* never delete the disk of a domain that may still run */
    vdi_error err = {0};
    uint64_t bytes = 0;
    if (j->child)
        template_resume_copy_remove(j->child); /* a crash between copy and restore */
    if (j->child && host_local(j)) {
        virStoragePoolPtr sp = job_host_pool(j);
        char why[1024] = "";
        int rc =
            sp ? hoststore_child_delete(sp, base_name(j->child), &bytes, why, sizeof why) : j->rc;
        if (sp)
            virStoragePoolFree(sp);
        if (rc < 0 && sp)
            job_fail(j, rc, "host %s: %s", j->host ? j->host : "?", why);
        if (rc < 0)
            return; /* the record stays with the volume; the end is retried */
        if (vdi_catalog_forget_child(j->catalog, j->child, &err) < 0)
            job_fail(j, err.code, "%s", err.message);
    } else if (j->child) {
        /* The session closes with the child's record, in one commit. */
        vdi_session_close session = {.id = j->session_id,
                                     .ended_at = (int64_t)time(NULL),
                                     .reason = end_reason_name(j->reason)};
        if (vdi_child_delete_ending(j->catalog, j->child, &session, &bytes, &err) < 0)
            job_fail(j, err.code, "%s", err.message); /* retried, the session closed then */
        return;
    }
    if (j->session_id && vdi_catalog_session_end(j->catalog, j->session_id, (int64_t)time(NULL),
                                                 end_reason_name(j->reason), bytes, &err) < 0)
        svc_log("error",
                "pool=%s desktop=%s session=%lld event=session-end-not-recorded "
                "reason=\"%s\"",
                j->pool, j->name, (long long)j->session_id, err.message);
}
