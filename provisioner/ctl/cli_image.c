/* cli_image.c — `vdipoolctl image …`: offline commands on image files. */
#include "cli.h"
#include "vdi_engine.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

void cli_image_usage(FILE *out)
{
    fputs(
        "usage:\n"
        "  vdipoolctl image inspect FILE [--json]\n"
        "  vdipoolctl image clone PARENT CHILD [options]\n"
        "  vdipoolctl image clone PARENT DIR --count N [--prefix NAME] [options]\n"
        "  vdipoolctl image seal GOLD [--json]\n"
        "  vdipoolctl image unseal GOLD [--force] [--search DIR]...\n"
        "  vdipoolctl image verify GOLD [--json]          full content check of a sealed gold\n"
        "  vdipoolctl image merge CHILD (--into-parent | --into NEW | --to ANCESTOR)\n"
        "                             [--dry-run] [--search DIR]... [--json]\n"
        "  vdipoolctl image reparent CHILD NEWPARENT\n"
        "  vdipoolctl image scan DIR [--json]\n"
        "  vdipoolctl image tree [DIR] [--json]\n"
        "  vdipoolctl image reconcile DIR [--json]\n"
        "\n"
        "Every command takes --state-dir DIR (default $VDIPOOL_STATE_DIR or /var/lib/vdipool).\n"
        "\n"
        "clone options:\n"
        "  --size SIZE          virtual size of the child (default: the parent's; never smaller)\n"
        "  --cluster-size SIZE  qcow2 cluster size (default 128K)\n"
        "  --extended-l2 / --no-extended-l2\n"
        "                       4 KiB subclusters (default on for clusters of 16K and more)\n"
        "  --max-depth N        refuse when the child's chain would be deeper (default 3, 0: no "
        "limit)\n"
        "  --no-sync            do not fsync (scratch children only)\n"
        "  --json               machine-readable output\n",
        out);
}

static json_t *image_json(const vdi_image *img)
{
    json_t *out = json_object();
    json_object_set_new(out, "path", json_string(vdi_image_path(img)));
    json_object_set_new(out, "format", json_string(vdi_format_name(vdi_image_format(img))));
    json_object_set_new(out, "virtual_size", json_integer((json_int_t)vdi_image_virtual_size(img)));
    json_object_set_new(out, "file_size", json_integer((json_int_t)vdi_image_file_size(img)));
    json_object_set_new(out, "allocated_bytes",
                        json_integer((json_int_t)vdi_image_allocated_bytes(img)));
    if (vdi_image_format(img) == VDI_FORMAT_QCOW2) {
        json_object_set_new(out, "qcow2_version", json_integer(vdi_image_qcow2_version(img)));
        json_object_set_new(out, "cluster_size", json_integer(vdi_image_cluster_size(img)));
        json_object_set_new(out, "extended_l2", json_boolean(vdi_image_extended_l2(img)));
        json_object_set_new(out, "dirty", json_boolean(vdi_image_dirty(img)));
    }
    const char *b = vdi_image_backing_name(img);
    json_object_set_new(out, "backing_file", b ? json_string(b) : json_null());
    const char *bf = vdi_image_backing_format(img);
    json_object_set_new(out, "backing_format", bf ? json_string(bf) : json_null());
    return out;
}

static void print_format(const vdi_image *img)
{
    if (vdi_image_format(img) != VDI_FORMAT_QCOW2) {
        printf("raw");
        return;
    }
    char cs[32];
    printf("qcow2 (v%d, %s clusters%s%s)", vdi_image_qcow2_version(img),
           vdi_format_size(vdi_image_cluster_size(img), cs, sizeof cs),
           vdi_image_extended_l2(img) ? ", extended L2" : "",
           vdi_image_dirty(img) ? ", DIRTY" : "");
}

int cli_image_inspect(cli_call *c)
{
    const cli_opts *o = &c->o;
    bool json = o->json;
    const char *path = c->args[0];

    vdi_error err = {0};
    vdi_image *img = NULL;
    if (vdi_image_open(path, &img, &err) < 0)
        return cli_fail(json, &err);
    vdi_chain *chain = NULL;
    vdi_error chain_err = {0};
    int chain_rc = vdi_chain_resolve(path, 0, &chain, &chain_err);

    if (json) {
        json_t *out = image_json(img);
        if (chain_rc == 0) {
            json_t *links = json_array();
            for (size_t i = 0; i < vdi_chain_length(chain); i++) {
                json_t *l = image_json(vdi_chain_link(chain, i));
                json_object_set_new(l, "depth", json_integer((json_int_t)i));
                json_array_append_new(links, l);
            }
            json_t *warnings = json_array();
            for (size_t i = 0; i < vdi_chain_warning_count(chain); i++)
                json_array_append_new(warnings, json_string(vdi_chain_warning(chain, i)));
            json_object_set_new(out, "depth", json_integer(vdi_chain_depth(chain)));
            json_object_set_new(out, "root", json_string(vdi_image_path(vdi_chain_root(chain))));
            json_object_set_new(out, "chain", links);
            json_object_set_new(out, "chain_allocated_bytes",
                                json_integer((json_int_t)vdi_chain_allocated_bytes(chain)));
            json_object_set_new(out, "warnings", warnings);
        } else {
            json_object_set_new(
                out, "error",
                json_pack("{s:s,s:i}", "message", chain_err.message, "errno", -chain_err.code));
        }
        cli_print_json(out);
    } else {
        char a[32], b[32];
        printf("%s\n", path);
        printf("  format:        ");
        print_format(img);
        printf("\n  virtual size:  %s (%llu bytes)\n",
               vdi_format_size(vdi_image_virtual_size(img), a, sizeof a),
               (unsigned long long)vdi_image_virtual_size(img));
        printf("  allocated:     %s (%llu bytes)\n",
               vdi_format_size(vdi_image_allocated_bytes(img), a, sizeof a),
               (unsigned long long)vdi_image_allocated_bytes(img));
        const char *backing = vdi_image_backing_name(img);
        const char *bfmt = vdi_image_backing_format(img);
        printf("  parent:        %s%s%s%s\n", backing ? backing : "none (a root image)",
               bfmt ? " (" : "", bfmt ? bfmt : "", bfmt ? ")" : "");
        if (chain_rc == 0) {
            printf("chain: depth %u, root %s\n", vdi_chain_depth(chain),
                   vdi_image_path(vdi_chain_root(chain)));
            for (size_t i = 0; i < vdi_chain_length(chain); i++) {
                const vdi_image *l = vdi_chain_link(chain, i);
                printf("  %zu  %-6s %10s virtual %10s allocated  %s\n", i,
                       vdi_format_name(vdi_image_format(l)),
                       vdi_format_size(vdi_image_virtual_size(l), a, sizeof a),
                       vdi_format_size(vdi_image_allocated_bytes(l), b, sizeof b),
                       vdi_image_path(l));
            }
            for (size_t i = 0; i < vdi_chain_warning_count(chain); i++)
                printf("warning: %s\n", vdi_chain_warning(chain, i));
        } else {
            fprintf(stderr, "vdipoolctl: chain: %s\n", chain_err.message);
        }
    }
    vdi_chain_free(chain);
    vdi_image_close(img);
    return chain_rc == 0 ? CLI_OK : CLI_FAILED;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* "win11.qcow2" -> "win11-" */
static void default_prefix(const char *parent, char *buf, size_t len)
{
    const char *base = strrchr(parent, '/');
    base = base ? base + 1 : parent;
    const char *dot = strrchr(base, '.');
    int n = dot && dot != base ? (int)(dot - base) : (int)strlen(base);
    snprintf(buf, len, "%.*s-", n, base);
}

int cli_image_clone(cli_call *c)
{
    const cli_opts *o = &c->o;
    bool json = o->json;
    long count = 0;
    const char *prefix = o->value[4];
    vdi_clone_options opts;
    vdi_clone_options_init(&opts);
    opts.max_depth = 3;
    uint64_t v;
    char *end;
    if (o->value[0] && (vdi_parse_size(o->value[0], &v) < 0 || v == 0))
        return cli_usage_error("--size '%s' is not a size (try 20G or 64G)", o->value[0]);
    if (o->value[0])
        opts.virtual_size = v;
    if (o->value[1] && (vdi_parse_size(o->value[1], &v) < 0 || v > UINT32_MAX))
        return cli_usage_error("--cluster-size '%s' is not a size (try 64K)", o->value[1]);
    if (o->value[1])
        opts.cluster_size = (uint32_t)v;
    if (o->flag[0] && o->flag[1])
        return cli_usage_error("--extended-l2 and --no-extended-l2 exclude each other");
    if (o->flag[0] || o->flag[1])
        opts.extended_l2 = o->flag[0] ? 1 : 0;
    if (o->flag[2])
        opts.sync = false;
    if (o->value[2]) {
        errno = 0;
        long d = strtol(o->value[2], &end, 10);
        if (errno || *end || d < 0 || d > VDI_CHAIN_MAX_LINKS)
            return cli_usage_error("--max-depth '%s' must be a number from 0 to %d", o->value[2],
                                   VDI_CHAIN_MAX_LINKS);
        opts.max_depth = (unsigned)d;
    }
    if (o->value[3]) {
        errno = 0;
        count = strtol(o->value[3], &end, 10);
        if (errno || *end || count < 1 || count > 100000)
            return cli_usage_error("--count '%s' must be a number from 1 to 100000", o->value[3]);
    }
    const char *parent = c->args[0], *target = c->args[1];
    if (prefix && !count)
        return cli_usage_error("--prefix goes with --count");
    if (prefix && (strchr(prefix, '/') || !*prefix))
        return cli_usage_error("--prefix '%s' must be a plain file name prefix", prefix);

    vdi_catalog *cat = c->catalog;
    vdi_error err = {0};
    vdi_cloner *cloner = NULL;
    if (vdi_cloner_new(parent, &opts, &cloner, &err) < 0) {
        return cli_fail(json, &err);
    }

    int status = CLI_OK;
    char **names = NULL;
    size_t made = 0;
    double t0 = now_seconds();
    if (!count) {
        if (vdi_clone_recorded(cat, cloner, target, NULL, &err) < 0) {
            status = cli_fail(json, &err);
            goto cleanup;
        }
        made = 1;
    } else {
        struct stat st;
        if (stat(target, &st) < 0 || !S_ISDIR(st.st_mode)) {
            vdi_error_set(&err, -ENOTDIR, "%s is not a directory (with --count, give a directory)",
                          target);
            status = cli_fail(json, &err);
            goto cleanup;
        }
        char pfx[NAME_MAX + 1];
        if (prefix)
            snprintf(pfx, sizeof pfx, "%s", prefix);
        else
            default_prefix(parent, pfx, sizeof pfx);
        int width = count >= 1000 ? (count >= 10000 ? 5 : 4) : 3;
        names = calloc((size_t)count, sizeof *names);
        if (!names) {
            vdi_error_set(&err, -ENOMEM, "out of memory");
            status = cli_fail(json, &err);
            goto cleanup;
        }
        /* Refuse before writing anything, so a clash never leaves half a batch. */
        for (long i = 0; i < count; i++) {
            if (asprintf(&names[i], "%s/%s%0*ld.qcow2", target, pfx, width, i + 1) < 0) {
                names[i] = NULL;
                vdi_error_set(&err, -ENOMEM, "out of memory");
                status = cli_fail(json, &err);
                goto cleanup;
            }
            if (lstat(names[i], &st) == 0) {
                vdi_error_set(&err, -EEXIST,
                              "%s already exists; choose another --prefix or remove the old "
                              "children first",
                              names[i]);
                status = cli_fail(json, &err);
                goto cleanup;
            }
        }
        if (vdi_clone_batch_recorded(cat, cloner, names, (size_t)count, NULL, &made, &err) < 0) {
            status = cli_fail(json, &err);
            if (made)
                fprintf(stderr, "vdipoolctl: %zu of %ld children were made\n", made, count);
            goto cleanup;
        }
    }
    double elapsed = now_seconds() - t0;

    if (json) {
        json_t *out = json_object();
        json_object_set_new(out, "parent", json_string(vdi_cloner_backing_name(cloner)));
        json_object_set_new(out, "virtual_size",
                            json_integer((json_int_t)vdi_cloner_virtual_size(cloner)));
        json_t *children = json_array();
        if (!count)
            json_array_append_new(children, json_string(target));
        for (long i = 0; i < count; i++)
            json_array_append_new(children, json_string(names[i]));
        json_object_set_new(out, "children", children);
        json_object_set_new(out, "seconds", json_real(elapsed));
        cli_print_json(out);
    } else if (!count) {
        printf("made %s, a child of %s\n", target, vdi_cloner_backing_name(cloner));
    } else {
        printf("made %zu children of %s in %s (%s .. %s) in %.1f ms (%.1f us each)\n", made,
               vdi_cloner_backing_name(cloner), target, strrchr(names[0], '/') + 1,
               strrchr(names[count - 1], '/') + 1, elapsed * 1e3, elapsed * 1e6 / (double)made);
    }

cleanup:
    if (names)
        for (long i = 0; i < count; i++)
            free(names[i]);
    free(names);
    vdi_cloner_free(cloner);
    return status;
}
