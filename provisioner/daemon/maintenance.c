/* maintenance.c — editing a gold family: a maintenance domain NAME-maint
 * runs on a child of the family's current version (DIR/maintenance.qcow2),
 * never on the version itself, with the domain settings of a pool that uses
 * the family (its network, console and template). `vdipoolctl gold publish`
 * (offline) then writes the child's chain as the next version; discard
 * destroys the domain and deletes the child.
 *
 *   POST /v1/golds/{name}/edit     [{"pool": "P"}]  200 {domain, display, child, version}
 *   POST /v1/golds/{name}/discard                   200 {discarded}
 *
 * One edit per family at a time (the child's file is the marker). The work
 * (clone, libvirt) runs on a worker with copies; the answer comes after. */
#include "api.h"
#include "daemon.h"

#include <errno.h>
#include <stdarg.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct maint_req {
    request *r;
    bool discard;
    vdi_catalog *catalog;
    virConnectPtr conn;  /* a reference, or NULL */
    char *address;       /* where the host's displays are reached */
    vdi_config *config;  /* a reference: pc points into it */
    const vdi_pool_config *pc;
    char family[64];
    char domain[128];
    char child[PATH_MAX + 32];
    char gold[PATH_MAX];
    unsigned version;
    /* results */
    int status;
    char error[1024];
    char *display;
} maint_req;

static void fail(maint_req *m, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void fail(maint_req *m, int status, const char *fmt, ...)
{
    m->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->error, sizeof m->error, fmt, ap);
    va_end(ap);
}

static const char *libvirt_error(void)
{
    virErrorPtr e = virGetLastError();
    return e && e->message ? e->message : "unknown error";
}

static void edit_run(void *data)
{
    maint_req *m = data;
    vdi_error err = {0};
    virDomainPtr old = m->conn ? virDomainLookupByName(m->conn, m->domain) : NULL;
    if (old) {
        bool running = virDomainIsActive(old) == 1;
        virDomainFree(old);
        if (running) {
            fail(m, 409,
                 "%s still runs from an earlier edit; shut it down or `vdipoolctl gold edit "
                 "--discard %s`",
                 m->domain, m->family);
            return;
        }
    }
    vdi_cloner *cloner = NULL;
    vdi_clone_options opts;
    vdi_clone_options_init(&opts);
    vdi_child_meta meta = {.datastore = NULL, .pool = "", .slot = -1};
    if (vdi_cloner_new(m->gold, &opts, &cloner, &err) < 0 ||
        vdi_clone_recorded(m->catalog, cloner, m->child, &meta, &err) < 0) {
        vdi_cloner_free(cloner);
        fail(m, 500, "cannot make the maintenance child %s: %s", m->child, err.message);
        return;
    }
    vdi_cloner_free(cloner);
    char hex[2 * VDI_HASH_SIZE + 1] = "";
    vdi_gold_info g;
    if (vdi_catalog_gold(m->catalog, m->gold, &g, NULL) == 0)
        vdi_hash_hex(g.fp.hash, hex, sizeof hex);
    domain_spec spec = {
        .name = m->domain, .child = m->child, .gold = m->gold, .gold_hash_hex = hex, .slot = 0};
    char *xml = domain_xml_build(m->pc, &spec, &err);
    virDomainPtr dom = xml && m->conn ? virDomainCreateXML(m->conn, xml, 0) : NULL;
    free(xml);
    if (!dom) {
        fail(m, 500, "cannot start the maintenance domain %s: %s", m->domain,
             !m->conn ? "not connected to libvirt" : err.message[0] ? err.message : libvirt_error());
        vdi_child_delete(m->catalog, m->child, NULL, NULL); /* nothing half-made stays */
        return;
    }
    m->display = domain_display(dom, m->address);
    virDomainFree(dom);
    m->status = 200;
}

static void discard_run(void *data)
{
    maint_req *m = data;
    virDomainPtr dom = m->conn ? virDomainLookupByName(m->conn, m->domain) : NULL;
    bool had_domain = dom != NULL;
    if (dom) {
        if (virDomainIsActive(dom) == 1 && virDomainDestroy(dom) < 0) {
            fail(m, 500, "cannot destroy %s: %s", m->domain, libvirt_error());
            virDomainFree(dom);
            return; /* its disk stays while it may run */
        }
        virDomainFree(dom);
    } else if (!m->conn) {
        fail(m, 503, "not connected to libvirt: %s may still run", m->domain);
        return;
    }
    vdi_error err = {0};
    bool child = access(m->child, F_OK) == 0;
    if (child && vdi_child_delete(m->catalog, m->child, NULL, &err) < 0)
        fail(m, 500, "cannot delete %s: %s", m->child, err.message);
    else if (!child && !had_domain)
        fail(m, 409, "gold %s has no edit open", m->family);
    else
        m->status = 200;
}

static void maint_done(service *svc, void *data)
{
    (void)svc;
    maint_req *m = data;
    if (m->status != 200) {
        svc_log("error", "gold=%s event=%s-failed reason=\"%s\"", m->family,
                m->discard ? "edit-discard" : "edit", m->error);
        request_respond_json(m->r, m->status, json_pack("{s:s}", "error", m->error));
    } else if (m->discard) {
        svc_log("info", "gold=%s event=edit-discarded domain=%s", m->family, m->domain);
        request_respond_json(m->r, 200, json_pack("{s:s,s:s}", "discarded", m->child, "domain",
                                                  m->domain));
    } else {
        svc_log("info", "gold=%s event=edit-started domain=%s version=%u child=%s", m->family,
                m->domain, m->version, m->child);
        request_respond_json(m->r, 200,
                             json_pack("{s:s,s:s?,s:s,s:i,s:s}", "domain", m->domain, "display",
                                       m->display, "child", m->child, "version", m->version,
                                       "gold", m->gold));
    }
    if (m->conn)
        virConnectClose(m->conn);
    vdi_config_unref(m->config);
    free(m->display);
    free(m->address);
    free(m);
}

void gold_maintenance(service *svc, request *r, const char *family, bool discard)
{
    const vdi_gold_config *gc = vdi_config_find_gold(svc->config, family);
    if (!gc || !gc->dir) {
        request_respond_json(r, 404,
                             json_pack("{s:s}", "error",
                                       gc ? "this gold is one image ('path'); only a family "
                                            "with a 'dir' has versions to edit"
                                          : "no such gold in the config"));
        return;
    }
    json_t *body = json_loads(request_body(r), 0, NULL);
    const char *want_pool = json_string_value(json_object_get(body, "pool"));
    const vdi_pool_config *pc = NULL;
    for (size_t i = 0; i < svc->npools && !pc; i++) {
        const pool *p = svc->pools[i];
        if (p->draining || !p->cfg->gold_name || strcmp(p->cfg->gold_name, family))
            continue;
        if (!want_pool || !strcmp(p->name, want_pool))
            pc = p->cfg;
    }
    maint_req *m = calloc(1, sizeof *m);
    if (!m) {
        json_decref(body);
        request_respond_json(r, 500, json_pack("{s:s}", "error", "out of memory"));
        return;
    }
    m->r = r;
    m->discard = discard;
    m->catalog = svc->catalog;
    snprintf(m->family, sizeof m->family, "%s", family);
    snprintf(m->domain, sizeof m->domain, "%s-maint", family);
    snprintf(m->child, sizeof m->child, "%s/maintenance.qcow2", gc->dir);
    snprintf(m->gold, sizeof m->gold, "%s", gc->path);
    m->version = gc->version;
    bool open_edit = access(m->child, F_OK) == 0;
    char msg[PATH_MAX + 512] = "";
    if (!discard && !pc && want_pool)
        snprintf(msg, sizeof msg, "pool %s does not use gold %s", want_pool, family);
    else if (!discard && !pc)
        snprintf(msg, sizeof msg,
                 "no pool uses gold %s; its maintenance domain takes a pool's domain settings",
                 family);
    else if (!discard && open_edit)
        snprintf(msg, sizeof msg,
                 "gold %s is being edited already (%s): publish it with `vdipoolctl gold publish "
                 "%s` or throw it away with `vdipoolctl gold edit --discard %s`",
                 family, m->child, family, family);
    /* discard also takes a maintenance domain whose child is gone already. */
    json_decref(body);
    if (msg[0]) {
        free(m);
        request_respond_json(r, 409, json_pack("{s:s}", "error", msg));
        return;
    }
    if (pc) {
        m->config = vdi_config_ref(svc->config);
        m->pc = pc;
    }
    /* The maintenance domain runs on the first connected, active host of
     * the config (the same one finds it again for a discard). */
    host *h = service_any_host(svc);
    if (h && virConnectRef(h->conn) == 0) {
        m->conn = h->conn;
        m->address = host_display_address(h->uri);
    }
    request_hold(r);
    if (work_submit(svc, discard ? discard_run : edit_run, maint_done, m) < 0) {
        fail(m, 503, "cannot queue the work");
        maint_done(svc, m);
    }
}
