/* chain.c — an image and its parents down to the root. The file format only
 * records child -> parent, so this walks upward, checking at every link that
 * the parent exists, is the format the child says it is, and is not already
 * in the chain. */
#include "vdi_engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct vdi_chain {
    vdi_image *links[VDI_CHAIN_MAX_LINKS + 1];
    size_t length;
    char *warnings[16];
    size_t nwarnings;
};

static void add_warning(vdi_chain *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add_warning(vdi_chain *c, const char *fmt, ...)
{
    if (c->nwarnings >= sizeof c->warnings / sizeof c->warnings[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    char *w = NULL;
    if (vasprintf(&w, fmt, ap) >= 0)
        c->warnings[c->nwarnings++] = w;
    va_end(ap);
}

static int format_from_name(const char *name, vdi_format *out)
{
    if (!strcmp(name, "qcow2"))
        *out = VDI_FORMAT_QCOW2;
    else if (!strcmp(name, "raw"))
        *out = VDI_FORMAT_RAW;
    else
        return -ENOTSUP;
    return 0;
}

int vdi_chain_resolve(const char *path, unsigned max_depth, vdi_chain **out, vdi_error *err)
{
    int rc = 0;
    char *next = NULL;
    *out = NULL;
    vdi_chain *c = calloc(1, sizeof *c);
    if (!c)
        return vdi_error_set(err, -ENOMEM, "out of memory");

    rc = vdi_image_open(path, &c->links[0], err);
    if (rc < 0)
        goto error;
    c->length = 1;

    for (;;) {
        const vdi_image *child = c->links[c->length - 1];
        const char *name = vdi_image_backing_name(child);
        if (!name)
            break;
        unsigned depth = (unsigned)c->length; /* backing links once this one is added */
        if (depth > VDI_CHAIN_MAX_LINKS || (max_depth && depth > max_depth)) {
            rc = vdi_error_set(err, -ELOOP,
                               "%s: the chain is deeper than the limit of %u backing links; "
                               "flatten it with `vdipoolctl image merge`",
                               path, max_depth && max_depth < VDI_CHAIN_MAX_LINKS ? max_depth
                                                                                  : VDI_CHAIN_MAX_LINKS);
            goto error;
        }
        free(next);
        next = NULL;
        rc = vdi_backing_path(vdi_image_path(child), name, &next, err);
        if (rc < 0) {
            vdi_error_prefix(err, "%s: ", vdi_image_path(child));
            goto error;
        }
        vdi_image *parent = NULL;
        rc = vdi_image_open(next, &parent, err);
        if (rc == -ENOENT) {
            rc = vdi_error_set(err, -ENOENT,
                               "%s: its backing file '%s' (%s) does not exist, so the chain is "
                               "broken; if the parent was moved, point the child at it with "
                               "`vdipoolctl image reparent`",
                               vdi_image_path(child), name, next);
            goto error;
        }
        if (rc < 0) {
            vdi_error_prefix(err, "%s: its backing file is unusable: ", vdi_image_path(child));
            goto error;
        }
        c->links[c->length++] = parent;

        uint64_t pdev, pino;
        vdi_image_identity(parent, &pdev, &pino);
        for (size_t i = 0; i + 1 < c->length; i++) {
            uint64_t dev, ino;
            vdi_image_identity(c->links[i], &dev, &ino);
            if (dev == pdev && ino == pino) {
                rc = vdi_error_set(err, -ELOOP,
                                   "%s: backing files form a loop: %s names %s, which is already "
                                   "link %zu of the chain",
                                   path, vdi_image_path(child), next, i);
                goto error;
            }
        }

        const char *declared = vdi_image_backing_format(child);
        vdi_format actual = vdi_image_format(parent);
        if (declared) {
            vdi_format want;
            if (format_from_name(declared, &want) < 0) {
                rc = vdi_error_set(err, -ENOTSUP,
                                   "%s declares its backing file %s as format '%s', which vdipool "
                                   "does not support",
                                   vdi_image_path(child), next, declared);
                goto error;
            }
            if (want != actual) {
                rc = vdi_error_set(err, -EINVAL,
                                   "%s declares its backing file %s as %s, but that file is %s; "
                                   "QEMU would read it wrongly. Fix the child with `qemu-img "
                                   "rebase -u -F %s`",
                                   vdi_image_path(child), next, declared, vdi_format_name(actual),
                                   vdi_format_name(actual));
                goto error;
            }
        } else {
            add_warning(c,
                        "%s does not record its backing format; QEMU has to guess that %s is %s",
                        vdi_image_path(child), next, vdi_format_name(actual));
        }
        if (vdi_image_virtual_size(child) < vdi_image_virtual_size(parent))
            add_warning(c, "%s (%llu bytes) is smaller than its parent %s (%llu bytes)",
                        vdi_image_path(child), (unsigned long long)vdi_image_virtual_size(child),
                        next, (unsigned long long)vdi_image_virtual_size(parent));
    }
    for (size_t i = 0; i < c->length; i++)
        if (vdi_image_dirty(c->links[i]))
            add_warning(c,
                        "%s is marked dirty: it is open for writing or was not closed cleanly "
                        "(`qemu-img check -r all` repairs it when nothing has it open)",
                        vdi_image_path(c->links[i]));
    free(next);
    *out = c;
    return 0;

error:
    free(next);
    vdi_chain_free(c);
    return rc;
}

void vdi_chain_free(vdi_chain *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->length; i++)
        vdi_image_close(c->links[i]);
    for (size_t i = 0; i < c->nwarnings; i++)
        free(c->warnings[i]);
    free(c);
}

size_t vdi_chain_length(const vdi_chain *c) { return c->length; }

const vdi_image *vdi_chain_link(const vdi_chain *c, size_t index)
{
    return index < c->length ? c->links[index] : NULL;
}

const vdi_image *vdi_chain_root(const vdi_chain *c) { return c->links[c->length - 1]; }

unsigned vdi_chain_depth(const vdi_chain *c) { return (unsigned)(c->length - 1); }

uint64_t vdi_chain_allocated_bytes(const vdi_chain *c)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < c->length; i++)
        sum += vdi_image_allocated_bytes(c->links[i]);
    return sum;
}

size_t vdi_chain_warning_count(const vdi_chain *c) { return c->nwarnings; }

const char *vdi_chain_warning(const vdi_chain *c, size_t index)
{
    return index < c->nwarnings ? c->warnings[index] : NULL;
}
