/* vdi_strmap.c — see vdi_strmap.h. Linear probing over a power-of-two
 * table kept at most half full. */
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
