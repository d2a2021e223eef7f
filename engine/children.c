/* children.c — children the catalog knows: cloning and deleting them under
 * the intent journal, and recovering interrupted clones and deletes. */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Every sealed gold in the parent's chain must still match its fingerprint,
 * and must not be retiring: checked before each clone. */
static int check_parent_chain(vdi_catalog *cat, const vdi_cloner *cl, vdi_error *err)
{
    const vdi_chain *chain = vdi_cloner_parent_chain(cl);
    for (size_t i = 0; i < vdi_chain_length(chain); i++) {
        char real[PATH_MAX];
        if (!realpath(vdi_image_path(vdi_chain_link(chain, i)), real))
            return vdi_error_set(err, -errno, "cannot resolve %s: %s",
                                 vdi_image_path(vdi_chain_link(chain, i)), strerror(errno));
        vdi_gold_info g;
        int rc = vdi_catalog_gold(cat, real, &g, NULL);
        if (rc == -ENOENT)
            continue;
        if (rc < 0)
            return vdi_catalog_gold(cat, real, &g, err);
        if (g.state == VDI_GOLD_TAINTED)
            return vdi_error_set(err, -ESTALE, "gold %s is tainted (%s): no new children", real,
                                 g.reason);
        if (g.state != VDI_GOLD_SEALED)
            return vdi_error_set(err, -EPERM, "gold %s is %s: no new children", real,
                                 vdi_gold_state_name(g.state));
        rc = vdi_guard_check_gold_(cat, &g, false, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static char *join_lines(const char *first, char *const *rest, size_t n)
{
    size_t len = strlen(first) + 2;
    for (size_t i = 0; i < n; i++)
        len += strlen(rest[i]) + 1;
    char *s = malloc(len), *p = s;
    if (!s)
        return NULL;
    p += sprintf(p, "%s", first);
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "\n%s", rest[i]);
    return s;
}

/* The catalog names files by absolute path: the directory resolved, the
 * file name as given (the file need not exist yet). */
static char *absolute_path(const char *path)
{
    char dir[PATH_MAX], real[PATH_MAX];
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (slash)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else
        snprintf(dir, sizeof dir, ".");
    if (!realpath(*dir ? dir : "/", real))
        return NULL;
    char *out = NULL;
    if (asprintf(&out, "%s/%s", strcmp(real, "/") ? real : "", base) < 0)
        return NULL;
    return out;
}

static int clone_batch(vdi_catalog *cat, vdi_cloner *cl, char *const *paths, size_t count,
                       const vdi_child_meta *meta, size_t *made, vdi_error *err);

int vdi_clone_batch_recorded(vdi_catalog *cat, vdi_cloner *cl, char *const *paths_in, size_t count,
                             const vdi_child_meta *meta, size_t *made, vdi_error *err)
{
    if (made)
        *made = 0;
    if (count == 0)
        return 0;
    char **paths = calloc(count, sizeof *paths);
    if (!paths)
        return vdi_error_set(err, -ENOMEM, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++)
        if (!(paths[i] = absolute_path(paths_in[i])))
            rc = vdi_error_set(err, -errno ? -errno : -ENOMEM,
                               "cannot create %s: its directory does not exist", paths_in[i]);
    if (rc == 0)
        rc = clone_batch(cat, cl, paths, count, meta, made, err);
    for (size_t i = 0; i < count; i++)
        free(paths[i]);
    free(paths);
    return rc;
}

static int clone_batch(vdi_catalog *cat, vdi_cloner *cl, char *const *paths, size_t count,
                       const vdi_child_meta *meta, size_t *made, vdi_error *err)
{
    int rc = check_parent_chain(cat, cl, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < count; i++) {
        struct stat st;
        if (lstat(paths[i], &st) == 0)
            return vdi_error_set(err, -EEXIST, "%s already exists; vdipool never overwrites a file",
                                 paths[i]);
    }
    const char *parent = vdi_cloner_backing_name(cl);
    /* The intent: a line of the children's metadata (so that a recovered
     * child keeps its datastore, pool and slot), the parent, the children. */
    char *head = NULL;
    if (asprintf(&head, "meta\t%s\t%s\t%d\n%s", meta && meta->datastore ? meta->datastore : "",
                 meta && meta->pool ? meta->pool : "", meta ? meta->slot : -1, parent) < 0)
        head = NULL;
    char *data = head ? join_lines(head, paths, count) : NULL;
    free(head);
    if (!data)
        return vdi_error_set(err, -ENOMEM, "out of memory");
    /* The intent's flush runs while the temporary files are written (other
     * jobs' commits may carry it meanwhile); it is waited for before the
     * first rename, so no child exists under its name without it. */
    int64_t intent;
    uint64_t intent_commit = 0;
    rc = vdi_intent_begin_pending_(cat, "clone", paths[0], data, &intent, &intent_commit, err);
    free(data);
    if (rc < 0)
        return rc;
    vdi_crashpoint("clone:begun");

    size_t done = 0;
    if (count == 1) {
        char *temp = NULL;
        rc = vdi_cloner_write_temp_(cl, paths[0], vdi_cloner_sync_(cl), &temp, err);
        if (rc == 0) {
            vdi_crashpoint("clone:written");
            rc = vdi_catalog_flush(cat, intent_commit, err);
            if (rc == 0)
                rc = vdi_place_noreplace_(temp, paths[0], err);
            else
                unlink(temp);
            free(temp);
        }
        if (rc == 0) {
            done = 1;
            if (vdi_cloner_sync_(cl))
                vdi_sync_dir_of_(paths[0]);
        }
    } else {
        for (size_t i = 0; i < count && rc == 0; i++)
            rc = vdi_cloner_stage(cl, paths[i], err);
        if (rc == 0) {
            vdi_crashpoint("clone:written");
            rc = vdi_catalog_flush(cat, intent_commit, err); /* staged files go with the cloner */
        }
        if (rc == 0)
            rc = vdi_cloner_commit(cl, &done, err);
    }
    vdi_crashpoint("clone:renamed");

    /* Record exactly the children that exist, and close the intent, at once. */
    vdi_error db_err;
    int r = vdi_catalog_begin_(cat, &db_err);
    for (size_t i = 0; i < count && r == 0; i++) {
        struct stat st;
        if (lstat(paths[i], &st) == 0 && (rc == 0 || i < done))
            r = vdi_catalog_add_child_(cat, paths[i], parent, meta, (uint64_t)st.st_blocks * 512,
                                       vdi_cloner_virtual_size(cl), &db_err);
    }
    if (r == 0)
        r = vdi_intent_end_(cat, intent, &db_err);
    /* Unflushed: if a power loss drops this, recovery finds each child
     * complete under its real name (made durable before its rename when the
     * cloner syncs) and records it from the intent, as here. */
    if (r == 0)
        r = vdi_catalog_commit_unflushed_(cat, &db_err);
    else
        vdi_catalog_rollback_(cat);
    if (r < 0 && rc == 0) {
        rc = r;
        if (err)
            *err = db_err;
    }
    if (made)
        *made = done;
    return rc;
}

int vdi_clone_recorded(vdi_catalog *cat, vdi_cloner *cl, const char *child_path,
                       const vdi_child_meta *meta, vdi_error *err)
{
    char *paths[1] = {(char *)child_path};
    return vdi_clone_batch_recorded(cat, cl, paths, 1, meta, NULL, err);
}

int vdi_recover_clone_(vdi_catalog *cat, const char *target, const char *data, vdi_error *err)
{
    (void)target;
    char *copy = strdup(data);
    if (!copy)
        return vdi_error_set(err, -ENOMEM, "out of memory");
    char *save = NULL;
    char *parent = strtok_r(copy, "\n", &save);
    /* Intents written since the metadata line was added start with it. */
    vdi_child_meta meta = {.datastore = "", .pool = "", .slot = -1};
    bool has_meta = parent && !strncmp(parent, "meta\t", 5);
    if (has_meta) {
        char *fields = parent + 5;
        char *ds = strsep(&fields, "\t"), *pool = strsep(&fields, "\t");
        meta.datastore = ds ? ds : "";
        meta.pool = pool ? pool : "";
        meta.slot = fields ? atoi(fields) : -1;
        parent = strtok_r(NULL, "\n", &save);
    }
    int forward = 0;
    int rc = 0;
    char swept[PATH_MAX] = ""; /* a batch's children share a directory: sweep it once */
    for (char *child = strtok_r(NULL, "\n", &save); child && rc == 0;
         child = strtok_r(NULL, "\n", &save)) {
        vdi_image *img = NULL;
        if (vdi_image_open(child, &img, NULL) == 0) {
            /* Under its real name a child is complete (it was renamed there
             * only after being written): keep it if it is the one we made. */
            const char *b = vdi_image_backing_name(img);
            if (parent && b && !strcmp(b, parent)) {
                rc = vdi_catalog_add_child_(cat, child, parent, has_meta ? &meta : NULL,
                                            vdi_image_allocated_bytes(img),
                                            vdi_image_virtual_size(img), err);
                forward = 1;
            }
            vdi_image_close(img);
        }
        /* Temporary files of the dead writer go. */
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", child);
        char *slash = strrchr(dir, '/');
        if (slash) {
            *slash = '\0';
            if (strcmp(dir, swept)) {
                vdi_clone_sweep_temporaries(*dir ? dir : "/", NULL);
                snprintf(swept, sizeof swept, "%s", dir);
            }
        }
    }
    free(copy);
    return rc < 0 ? rc : forward;
}

int vdi_child_delete(vdi_catalog *cat, const char *path, uint64_t *final_bytes, vdi_error *err)
{
    return vdi_child_delete_ending(cat, path, NULL, final_bytes, err);
}

int vdi_child_delete_ending(vdi_catalog *cat, const char *path, const vdi_session_close *session,
                            uint64_t *final_bytes, vdi_error *err)
{
    struct stat st;
    bool exists = lstat(path, &st) == 0;
    if (!exists && errno != ENOENT)
        return vdi_error_set(err, -errno, "cannot stat %s: %s", path, strerror(errno));
    if (final_bytes)
        *final_bytes = exists ? (uint64_t)st.st_blocks * 512 : 0;
    int64_t intent;
    int rc = vdi_intent_begin_(cat, "delete", path, "", &intent, err);
    if (rc < 0)
        return rc;
    if (exists && unlink(path) < 0 && errno != ENOENT) {
        rc = vdi_error_set(err, -errno, "cannot delete %s: %s", path, strerror(errno));
        vdi_intent_end_(cat, intent, NULL);
        return rc;
    }
    vdi_crashpoint("delete:unlinked");
    vdi_sync_dir_of_(path);
    if ((rc = vdi_catalog_begin_(cat, err)) < 0)
        return rc;
    /* Unflushed: if a power loss drops this, the intent redoes the delete
     * and the session stays open until the service finds its desktop gone
     * (as when the session's own write was lost). */
    uint64_t bytes = exists ? (uint64_t)st.st_blocks * 512 : 0;
    if ((rc = vdi_catalog_remove_child_(cat, path, err)) == 0 &&
        (!session || !session->id ||
         (rc = vdi_catalog_session_end(cat, session->id, session->ended_at, session->reason, bytes,
                                       err)) == 0) &&
        (rc = vdi_intent_end_(cat, intent, err)) == 0)
        return vdi_catalog_commit_unflushed_(cat, err);
    vdi_catalog_rollback_(cat);
    return rc;
}

int vdi_recover_delete_(vdi_catalog *cat, const char *target, const char *data, vdi_error *err)
{
    (void)data;
    if (unlink(target) < 0 && errno != ENOENT)
        return vdi_error_set(err, -errno, "cannot delete %s: %s", target, strerror(errno));
    vdi_sync_dir_of_(target);
    int rc = vdi_catalog_remove_child_(cat, target, err);
    return rc < 0 ? rc : 1;
}

int vdi_catalog_record_child(vdi_catalog *cat, const char *path, const char *parent,
                             const vdi_child_meta *meta, uint64_t virtual_size, vdi_error *err)
{
    return vdi_catalog_add_child_(cat, path, parent, meta, 0, virtual_size, err);
}

int vdi_catalog_forget_child(vdi_catalog *cat, const char *path, vdi_error *err)
{
    return vdi_catalog_remove_child_(cat, path, err);
}
