/* golds.c — the golds a pool depends on: QEMU's write lock held on the
 * current gold (and on the previous one during a roll-out, until its last
 * desktop is gone), and the gold's state in the catalog (sealed, retiring,
 * retired) as pools move between golds. */
#include "daemon.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

const char *pool_gold(const pool *p)
{
    return p->held_gold ? p->held_gold : p->cfg->gold;
}

/* Marks a gold's state in the catalog (a short write on the loop). */
static void set_gold_state(pool *p, const char *gold, vdi_gold_state state)
{
    char real[PATH_MAX];
    vdi_error err = {0};
    if (!realpath(gold, real) ||
        vdi_catalog_set_gold_state(p->svc->catalog, real, state, NULL, &err) < 0)
        svc_log("warning", "pool=%s event=gold-state-not-recorded gold=%s state=%s reason=\"%s\"",
                p->name, gold, vdi_gold_state_name(state),
                err.message[0] ? err.message : "cannot resolve the path");
}

/* Is gold the current gold of another pool (which must keep cloning from it)? */
static bool gold_current_elsewhere(const pool *self, const char *gold)
{
    const service *svc = self->svc;
    for (size_t i = 0; i < svc->npools; i++) {
        const pool *q = svc->pools[i];
        if (q != self && !q->draining && q->cfg && !strcmp(pool_gold(q), gold))
            return true;
    }
    return false;
}

void pool_release_gold_locks(pool *p, bool current_too)
{
    if (p->retiring_lock >= 0) {
        bool in_use = false;
        for (const desktop *d = pool_next_occupied(p, NULL); d && !in_use;
             d = pool_next_occupied(p, d))
            in_use = d->gold && !strcmp(d->gold, p->retiring_gold);
        if (!in_use) {
            vdi_guard_unlock(p->retiring_lock);
            p->retiring_lock = -1;
            svc_log("info", "pool=%s event=gold-released gold=%s", p->name, p->retiring_gold);
            size_t n = 0;
            if (!gold_current_elsewhere(p, p->retiring_gold) &&
                vdi_catalog_count_children(p->svc->catalog, p->retiring_gold, &n, NULL) == 0 &&
                n == 0)
                set_gold_state(p, p->retiring_gold, VDI_GOLD_RETIRED);
            set_str(&p->retiring_gold, NULL);
        }
    }
    if (current_too && p->gold_lock >= 0) {
        vdi_guard_unlock(p->gold_lock);
        p->gold_lock = -1;
    }
}

/* A gold a pool takes (back) as current is sealed again, unless tainted. */
static void reinstate_gold(pool *p, const char *gold)
{
    vdi_gold_info g;
    if (vdi_catalog_gold(p->svc->catalog, gold, &g, NULL) == 0 &&
        (g.state == VDI_GOLD_RETIRING || g.state == VDI_GOLD_RETIRED)) {
        set_gold_state(p, gold, VDI_GOLD_SEALED);
        svc_log("info", "pool=%s event=gold-reinstated gold=%s was=%s", p->name, gold,
                vdi_gold_state_name(g.state));
    }
}

/* Holds QEMU's write lock on the pool's current gold. On a roll-out the
 * previous gold stays locked (retiring) until its last desktop is gone;
 * rolling back to the gold being left takes its lock back. */
void pool_lock_gold(pool *p)
{
    if (p->gold_lock >= 0 && p->locked_gold && !strcmp(p->locked_gold, pool_gold(p)))
        return;
    int lock = -1;
    if (p->retiring_lock >= 0 && p->retiring_gold && !strcmp(p->retiring_gold, pool_gold(p))) {
        lock = p->retiring_lock;
        p->retiring_lock = -1;
        set_str(&p->retiring_gold, NULL);
    }
    if (p->gold_lock >= 0) {
        if (p->retiring_lock >= 0)
            vdi_guard_unlock(p->retiring_lock);
        p->retiring_lock = p->gold_lock;
        set_str(&p->retiring_gold, p->locked_gold);
        p->gold_lock = -1;
        if (!gold_current_elsewhere(p, p->retiring_gold))
            set_gold_state(p, p->retiring_gold, VDI_GOLD_RETIRING);
        svc_log("info", "pool=%s event=rollout from=%s to=%s", p->name, p->retiring_gold,
                pool_gold(p));
    }
    vdi_error err = {0};
    if (lock < 0 && vdi_guard_lock(pool_gold(p), &lock, &err) < 0) {
        lock = -1;
        svc_log("warning", "pool=%s event=gold-not-locked reason=\"%s\"", p->name, err.message);
    }
    p->gold_lock = lock;
    set_str(&p->locked_gold, pool_gold(p));
    reinstate_gold(p, pool_gold(p));
}

void pool_hold_gold(pool *p, const char *previous)
{
    int64_t now = p->svc->ops->now();
    if (!previous) {
        p->gold_since = now; /* a new pool */
        return;
    }
    if (p->cfg->rollout != VDI_ROLLOUT_MANUAL || !strcmp(previous, p->cfg->gold)) {
        if (strcmp(previous, p->cfg->gold))
            p->gold_since = now;
        if (p->held_gold)
            svc_log("info", "pool=%s event=gold-released-from-hold gold=%s", p->name,
                    p->held_gold);
        set_str(&p->held_gold, NULL);
        return;
    }
    if (!p->held_gold) {
        set_str(&p->held_gold, previous);
        svc_log("info",
                "pool=%s event=rollout-held gold=%s new=%s; `vdipoolctl pool rollout %s` moves "
                "the pool",
                p->name, previous, p->cfg->gold, p->name);
    }
}

int pool_rollout(pool *p)
{
    if (!p->held_gold)
        return -EALREADY;
    svc_log("info", "pool=%s event=rollout-asked from=%s to=%s", p->name, p->held_gold,
            p->cfg->gold);
    set_str(&p->held_gold, NULL);
    p->gold_since = p->svc->ops->now();
    p->tend_all = true;
    pool_lock_gold(p);
    return 0;
}
