/* vdi_strmap.h — a map from strings to indexes (open addressing), for
 * lookups by path among thousands of images where a linear search made a
 * walk quadratic. Keys are not copied: each must stay valid and unchanged
 * while it is in the map. */
#ifndef VDI_STRMAP_H
#define VDI_STRMAP_H

#include <stdbool.h>
#include <stddef.h>

typedef struct vdi_strmap vdi_strmap;

vdi_strmap *vdi_strmap_new(void);
void vdi_strmap_free(vdi_strmap *m);
/* Adds key -> value, or replaces the value of an equal key. -ENOMEM. */
int vdi_strmap_put(vdi_strmap *m, const char *key, size_t value);
/* The value of an equal key, if there is one. */
bool vdi_strmap_get(const vdi_strmap *m, const char *key, size_t *value);
/* Removes an equal key; whether there was one. */
bool vdi_strmap_remove(vdi_strmap *m, const char *key);
size_t vdi_strmap_count(const vdi_strmap *m);

#endif
