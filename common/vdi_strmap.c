/* vdi_strmap.c — see vdi_strmap.h. Linear probing over a power-of-two
 * table kept at most half full. A removal shifts the keys after it back
 * (no tombstones), so that every key stays reachable from its home slot
 * without an empty slot in between. */
#include "vdi_strmap.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct slot {
    const char *key; /* NULL: empty */
    size_t value;
} slot;

struct vdi_strmap {
    slot *v;
    size_t cap, n; /* cap is a power of two */
};

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

vdi_strmap *vdi_strmap_new(void)
{
    vdi_strmap *m = calloc(1, sizeof *m);
    if (m && !(m->v = calloc(m->cap = 64, sizeof *m->v))) {
        free(m);
        return NULL;
    }
    return m;
}

void vdi_strmap_free(vdi_strmap *m)
{
    if (m)
        free(m->v);
    free(m);
}

static slot *find(slot *v, size_t cap, const char *key)
{
    for (size_t i = hash(key) & (cap - 1);; i = (i + 1) & (cap - 1))
        if (!v[i].key || !strcmp(v[i].key, key))
            return &v[i];
}

int vdi_strmap_put(vdi_strmap *m, const char *key, size_t value)
{
    if ((m->n + 1) * 2 > m->cap) {
        size_t cap = m->cap * 2;
        slot *v = calloc(cap, sizeof *v);
        if (!v)
            return -ENOMEM;
        for (size_t i = 0; i < m->cap; i++)
            if (m->v[i].key)
                *find(v, cap, m->v[i].key) = m->v[i];
        free(m->v);
        m->v = v;
        m->cap = cap;
    }
    slot *s = find(m->v, m->cap, key);
    if (!s->key)
        m->n++;
    s->key = key;
    s->value = value;
    return 0;
}

bool vdi_strmap_get(const vdi_strmap *m, const char *key, size_t *value)
{
    const slot *s = find(m->v, m->cap, key);
    if (!s->key)
        return false;
    *value = s->value;
    return true;
}

bool vdi_strmap_remove(vdi_strmap *m, const char *key)
{
    size_t mask = m->cap - 1;
    slot *hole = find(m->v, m->cap, key);
    if (!hole->key)
        return false;
    size_t i = (size_t)(hole - m->v);
    for (size_t j = (i + 1) & mask; m->v[j].key; j = (j + 1) & mask) {
        size_t home = hash(m->v[j].key) & mask;
        /* The key at j may move into the hole at i only if its home is not
         * in the cyclic range (i, j]: else the hole is before its home. */
        bool home_after_hole = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!home_after_hole) {
            m->v[i] = m->v[j];
            i = j;
        }
    }
    m->v[i] = (slot){0};
    m->n--;
    return true;
}

size_t vdi_strmap_count(const vdi_strmap *m)
{
    return m->n;
}
