/* journal.c — recovery of the intent journal. Every multi-step operation
 * writes an intent row before it touches a file (intents.c stores them);
 * when the catalog is opened, the intents of processes that no longer run
 * are handed to the recoverer of their operation, which finishes or undoes
 * the work, and the intent is then cleared.
 *
 * The recoverers live with their operations (children.c, guard.c, merge.c);
 * this table is the one place that names them, so the catalog below knows
 * no operation. An operation this version does not know has its intent
 * dropped (a newer vdipool wrote it; files stay, reconcile reports them). */
#include "internal.h"

#include <string.h>

typedef int (*recoverer_fn)(vdi_catalog *cat, const char *op, const char *target, const char *data,
                            vdi_error *err);

static int recover_clone(vdi_catalog *cat, const char *op, const char *target, const char *data,
                         vdi_error *err)
{
    (void)op;
    return vdi_recover_clone_(cat, target, data, err);
}

static int recover_delete(vdi_catalog *cat, const char *op, const char *target, const char *data,
                          vdi_error *err)
{
    (void)op;
    return vdi_recover_delete_(cat, target, data, err);
}

static int recover_seal(vdi_catalog *cat, const char *op, const char *target, const char *data,
                        vdi_error *err)
{
    (void)op;
    return vdi_recover_seal_(cat, target, data, err);
}

static int recover_version(vdi_catalog *cat, const char *op, const char *target,
                           const char *data, vdi_error *err)
{
    (void)op;
    return vdi_recover_version_(cat, target, data, err);
}

static int recover_reparent(vdi_catalog *cat, const char *op, const char *target, const char *data,
                            vdi_error *err)
{
    (void)op;
    return vdi_recover_reparent_(cat, target, data, err);
}

static const struct {
    const char *op;
    recoverer_fn recover;
} recoverers[] = {
    {"clone", recover_clone},
    {"delete", recover_delete},
    {"seal", recover_seal},
    {"merge-convert", vdi_recover_merge_},
    {"merge-commit", vdi_recover_merge_},
    {"reparent", recover_reparent},
    {"version-create", recover_version},
};

static recoverer_fn find_recoverer(const char *op)
{
    for (size_t i = 0; i < sizeof recoverers / sizeof recoverers[0]; i++)
        if (!strcmp(recoverers[i].op, op))
            return recoverers[i].recover;
    return NULL;
}

static int recover(vdi_catalog *cat, vdi_error *err)
{
    vdi_intent_row *v = NULL;
    size_t n = 0;
    int rc = vdi_intents_leftover_(cat, &v, &n, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        recoverer_fn fn = find_recoverer(v[i].op);
        int r = fn ? fn(cat, v[i].op, v[i].target, v[i].data, err) : 0;
        if (r >= 0) {
            vdi_catalog_count_recovered_(cat, r > 0);
            r = vdi_intent_end_(cat, v[i].id, err);
        }
        if (r < 0 && rc == 0) {
            vdi_error_prefix(err, "recovering an interrupted %s of %s: ", v[i].op, v[i].target);
            rc = r;
        }
    }
    vdi_intent_rows_free_(v, n);
    return rc;
}

int vdi_catalog_open(const char *state_dir, vdi_catalog **out, vdi_error *err)
{
    int rc = vdi_catalog_open_storage_(state_dir, out, err);
    if (rc < 0)
        return rc;
    if ((rc = recover(*out, err)) < 0) {
        vdi_catalog_close(*out);
        *out = NULL;
    }
    return rc;
}
