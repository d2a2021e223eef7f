/* glue.c — where config meets the engine. */
#include "glue.h"
#include "vdi_engine.h"

#include <errno.h>
#include "vdi_engine.h"

#include <limits.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int glue_check_gold(const char *path, char *why, size_t len, void *ctx)
{
    (void)ctx;
    vdi_chain *chain = NULL;
    vdi_error err = { 0 };
    int rc = vdi_chain_resolve(path, 0, &chain, &err);
    if (rc < 0) {
        /* The engine's message starts with the path, which the caller names already. */
        size_t plen = strlen(path);
        const char *msg = err.message;
        if (!strncmp(msg, path, plen) && (msg[plen] == ' ' || msg[plen] == ':'))
            msg += plen + (msg[plen] == ':' ? 2 : 1);
        snprintf(why, len, "%s", msg);
    }
    vdi_chain_free(chain);
    return rc;
}

int glue_resolve_version(const char *family, const char *dir, unsigned version, char *path,
                         size_t path_len, unsigned *resolved, char *why, size_t why_len,
                         void *ctx)
{
    vdi_catalog *cat = ctx;
    vdi_gold_version v;
    vdi_error err = {0};
    int rc = vdi_version_find(cat, family, version, &v, &err);
    if (rc < 0) {
        snprintf(why, why_len, "%s", err.message);
        return rc;
    }
    char real_dir[PATH_MAX], real_path[PATH_MAX];
    const char *slash = strrchr(v.path, '/');
    snprintf(real_path, sizeof real_path, "%.*s", slash ? (int)(slash - v.path) : 0, v.path);
    if (!realpath(dir, real_dir) || strcmp(real_dir, real_path)) {
        snprintf(why, why_len,
                 "gold '%s' keeps its versions in %s, not in %s; correct its 'dir'", family,
                 real_path, dir);
        return -EINVAL;
    }
    if (v.state == VDI_GOLD_TAINTED) {
        snprintf(why, why_len,
                 "version %u of gold '%s' (%s) is tainted or no longer sealed; roll back to "
                 "another version with `vdipoolctl gold rollback %s --to N`",
                 v.version, family, v.path, family);
        return -ESTALE;
    }
    snprintf(path, path_len, "%s", v.path);
    *resolved = v.version;
    return 0;
}

json_t *glue_version_json(const vdi_gold_version *v)
{
    char hex[2 * VDI_HASH_SIZE + 1];
    vdi_hash_hex(v->hash, hex, sizeof hex);
    const char *state = v->current                     ? "current"
                        : v->state == VDI_GOLD_TAINTED ? "tainted"
                        : v->children                  ? "retiring"
                                                       : "retired";
    return json_pack("{s:i,s:s,s:s,s:I,s:s,s:s,s:i,s:I,s:I,s:s}", "version", v->version, "state",
                     state, "path", v->path, "created_at", (json_int_t)v->created_at,
                     "created_by", v->created_by, "note", v->note, "children",
                     (int)v->children, "allocated", (json_int_t)v->allocated, "virtual_size",
                     (json_int_t)v->virtual_size, "sha256", hex);
}

json_t *glue_family_json(vdi_catalog *cat, const char *family, vdi_error *err)
{
    vdi_gold_version *v = NULL;
    size_t n = 0;
    vdi_gold_audit *trail = NULL;
    size_t ntrail = 0;
    if (vdi_versions_list(cat, family, &v, &n, err) < 0 ||
        vdi_versions_audit(cat, family, &trail, &ntrail, err) < 0) {
        free(v);
        return NULL;
    }
    json_t *arr = json_array(), *hist = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, glue_version_json(&v[i]));
    for (size_t i = 0; i < ntrail; i++)
        json_array_append_new(hist, json_pack("{s:I,s:s,s:s,s:i,s:s}", "at",
                                              (json_int_t)trail[i].at, "who", trail[i].who,
                                              "action", trail[i].action, "version",
                                              trail[i].version, "note", trail[i].note));
    free(v);
    free(trail);
    return json_pack("{s:s,s:o,s:o}", "gold", family, "versions", arr, "history", hist);
}

int glue_rollback(vdi_catalog *cat, const char *family, unsigned to, const char *who,
                  const char *note, unsigned *was, unsigned *now, vdi_error *err)
{
    vdi_gold_version cur;
    int rc = vdi_version_find(cat, family, 0, &cur, err);
    if (rc < 0)
        return rc;
    if (!to) {
        /* The newest version below the current one that is still whole. */
        vdi_gold_version *all = NULL;
        size_t n = 0;
        if ((rc = vdi_versions_list(cat, family, &all, &n, err)) < 0)
            return rc;
        for (size_t i = 0; i < n; i++)
            if (all[i].version < cur.version && all[i].state != VDI_GOLD_TAINTED)
                to = all[i].version;
        free(all);
        if (!to)
            return vdi_error_set(err, -ENOENT, "gold '%s' has no version before %u to go back to",
                                 family, cur.version);
    }
    if ((rc = vdi_version_make_current(cat, family, to, who, note, err)) < 0)
        return rc;
    *was = cur.version;
    *now = to;
    return 0;
}

uint64_t glue_version_reserve(const char *dir)
{
    char probe[PATH_MAX];
    snprintf(probe, sizeof probe, "%s", dir);
    while (access(probe, F_OK) != 0 && strrchr(probe, '/') && strrchr(probe, '/') != probe)
        *strrchr(probe, '/') = '\0';
    struct statvfs vfs;
    return statvfs(probe, &vfs) == 0 ? (uint64_t)vfs.f_blocks * vfs.f_frsize / 20 : 0;
}

int glue_publish_edit(vdi_catalog *cat, const char *family, const char *dir, const char *note,
                      const char *who, vdi_progress_fn progress, void *ctx,
                      vdi_gold_version *out, vdi_error *err)
{
    char child[PATH_MAX + 32];
    snprintf(child, sizeof child, "%s/maintenance.qcow2", dir);
    if (access(child, F_OK) != 0)
        return vdi_error_set(err, -ENOENT,
                             "gold '%s' has no edit to publish: start one with `vdipoolctl gold "
                             "edit %s`",
                             family, family);
    char who_has[256] = "";
    if (vdi_guard_open_writers(child, who_has, sizeof who_has) > 0)
        return vdi_error_set(err, -EBUSY,
                             "%s-maint still runs (%s has %s open for writing): shut it down "
                             "inside the guest first, then publish",
                             family, who_has, child);
    /* The version the edit started from must still be the one sealed: a
     * changed parent would publish what nobody edited. */
    vdi_child_info ci;
    int rc = vdi_catalog_child(cat, child, &ci, err);
    if (rc == 0)
        rc = vdi_guard_check(cat, ci.parent, false, err);
    if (rc < 0)
        return rc;
    vdi_version_request req = {.family = family,
                               .dir = dir,
                               .source = child,
                               .note = note,
                               .who = who,
                               .action = "publish"};
    req.reserve_bytes = glue_version_reserve(dir);
    if ((rc = vdi_version_create(cat, &req, progress, ctx, out, err)) < 0)
        return rc;
    /* The edit is over: its child goes (the new version stands alone). A
     * child that cannot go is only a leftover, the version is made. */
    vdi_child_delete(cat, child, NULL, NULL);
    return 0;
}
