/* cli_config.c — `vdipoolctl config check|diff`: offline validation of the
 * operator's files, with the engine checking that golds are disk images. */
#include "cli.h"
#include "glue.h"
#include "vdi_config.h"
#include "vdi_engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void cli_config_usage(FILE *out)
{
    fputs("usage:\n"
          "  vdipoolctl config check [--config PATH] [--json]\n"
          "  vdipoolctl config diff OLD NEW [--json]\n"
          "\n"
          "check prints every error (FILE:LINE: message) and exits 1, or one line per pool.\n"
          "diff prints what applying NEW over OLD would change. PATH defaults to $VDIPOOL_CONFIG\n"
          "or " VDI_CONFIG_DEFAULT_PATH ".\n",
          out);
}

static void print_errors(bool json, const vdi_config_errors *errors, const char *path)
{
    size_t n = vdi_config_errors_count(errors);
    if (json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) {
            const vdi_config_error *e = vdi_config_errors_get(errors, i);
            json_array_append_new(arr, json_pack("{s:s,s:i,s:s}", "file", e->file, "line", e->line,
                                                 "message", e->message));
        }
        cli_print_json(json_pack("{s:b,s:s,s:o}", "valid", 0, "config", path, "errors", arr));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const vdi_config_error *e = vdi_config_errors_get(errors, i);
        if (e->line > 0)
            fprintf(stderr, "%s:%d: %s\n", e->file, e->line, e->message);
        else
            fprintf(stderr, "%s: %s\n", e->file, e->message);
    }
    fprintf(stderr, "%s: %zu error%s; nothing was applied\n", path, n, n == 1 ? "" : "s");
}

/* With filesystem checks, gold families are resolved through the catalog
 * of $VDIPOOL_STATE_DIR (--state-dir) when it can be opened. */
static int load(const char *path, bool fs_checks, vdi_config **cfg, vdi_config_errors **errors)
{
    vdi_catalog *cat = NULL;
    if (fs_checks && access(vdi_state_dir_default(), F_OK) == 0 &&
        vdi_catalog_open(vdi_state_dir_default(), &cat, NULL) < 0)
        cat = NULL;
    vdi_config_options opts = {.check_image = glue_check_gold,
                               .skip_filesystem_checks = !fs_checks,
                               .resolve_version = cat ? glue_resolve_version : NULL,
                               .resolve_ctx = cat};
    int rc = vdi_config_load(path, &opts, cfg, errors);
    vdi_catalog_close(cat);
    return rc;
}

static json_t *pool_json(const vdi_pool_config *p)
{
    return json_pack(
        "{s:s,s:s,s:s?,s:s,s:s,s:i,s:i,s:i,s:I,s:{s:I,s:i,s:s?,s:s,s:s?,s:s},"
        "s:{s:I,s:I,s:s}}",
        "name", p->name, "gold", p->gold, "gold_name", p->gold_name, "datastore", p->datastore,
        "desktop_prefix", p->desktop_prefix, "size", p->size, "spares", p->spares,
        "max_chain_depth", p->max_chain_depth, "expected_growth", (json_int_t)p->expected_growth,
        "domain", "memory", (json_int_t)p->domain.memory_bytes, "vcpus", p->domain.vcpus, "network",
        p->domain.network, "graphics", vdi_graphics_name(p->domain.graphics), "template",
        p->domain.template_path, "accel", p->domain.kvm ? "kvm" : "tcg", "session", "max_duration",
        (json_int_t)p->session.max_duration, "idle_spare_max_age",
        (json_int_t)p->session.idle_spare_max_age, "on_end", p->session.on_end);
}

int cli_config_check(cli_call *c)
{
    const cli_opts *o = &c->o;
    bool json = o->json;
    const char *path = cli_config_path(o->value[0]);

    vdi_config *cfg = NULL;
    vdi_config_errors *errors = NULL;
    if (load(path, true, &cfg, &errors) < 0) {
        print_errors(json, errors, path);
        vdi_config_errors_free(errors);
        return CLI_FAILED;
    }
    if (json) {
        json_t *pools = json_array();
        for (size_t i = 0; i < vdi_config_pool_count(cfg); i++)
            json_array_append_new(pools, pool_json(vdi_config_pool(cfg, i)));
        cli_print_json(json_pack("{s:b,s:s,s:i,s:i,s:o}", "valid", 1, "config", path, "datastores",
                                 (int)vdi_config_datastore_count(cfg), "golds",
                                 (int)vdi_config_gold_count(cfg), "pools", pools));
    } else {
        printf("%s is valid: %zu datastore%s, %zu gold%s, %zu pool%s\n", path,
               vdi_config_datastore_count(cfg), vdi_config_datastore_count(cfg) == 1 ? "" : "s",
               vdi_config_gold_count(cfg), vdi_config_gold_count(cfg) == 1 ? "" : "s",
               vdi_config_pool_count(cfg), vdi_config_pool_count(cfg) == 1 ? "" : "s");
        for (size_t i = 0; i < vdi_config_pool_count(cfg); i++) {
            const vdi_pool_config *p = vdi_config_pool(cfg, i);
            char mem[32], dur[32];
            printf("pool %s: %u desktop%s (%u spare%s) of %s%s%s%s on datastore %s, %s and %u "
                   "vCPU%s each, %s, sessions %s%s\n",
                   p->name, p->size, p->size == 1 ? "" : "s", p->spares, p->spares == 1 ? "" : "s",
                   p->gold_name ? p->gold_name : p->gold, p->gold_name ? " (" : "",
                   p->gold_name ? p->gold : "", p->gold_name ? ")" : "", p->datastore,
                   vdi_format_size(p->domain.memory_bytes, mem, sizeof mem), p->domain.vcpus,
                   p->domain.vcpus == 1 ? "" : "s", vdi_graphics_name(p->domain.graphics),
                   p->session.max_duration ? "up to " : "unlimited",
                   p->session.max_duration
                       ? vdi_format_duration(p->session.max_duration, dur, sizeof dur)
                       : "");
        }
    }
    vdi_config_free(cfg);
    return CLI_OK;
}

int cli_config_diff(cli_call *c)
{
    const cli_opts *o = &c->o;
    bool json = o->json;
    const char *old_path = c->args[0], *new_path = c->args[1];
    vdi_config *old_cfg = NULL, *new_cfg = NULL;
    vdi_config_errors *errors = NULL;
    int status = CLI_OK;
    /* The old config may name files that are gone by now: only NEW, the one
     * that would be applied, has its paths checked. */
    if (load(old_path, false, &old_cfg, &errors) < 0) {
        print_errors(json, errors, old_path);
        status = CLI_FAILED;
        goto cleanup;
    }
    if (load(new_path, true, &new_cfg, &errors) < 0) {
        print_errors(json, errors, new_path);
        status = CLI_FAILED;
        goto cleanup;
    }
    vdi_config_diff *diff = NULL;
    if (vdi_config_diff_new(old_cfg, new_cfg, &diff) < 0) {
        fprintf(stderr, "vdipoolctl: out of memory\n");
        status = CLI_FAILED;
        goto cleanup;
    }
    size_t n = vdi_config_diff_count(diff);
    if (json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) {
            const vdi_config_change *ch = vdi_config_diff_get(diff, i);
            json_array_append_new(arr, json_pack("{s:s,s:s,s:s?,s:s?,s:s?}", "kind",
                                                 vdi_change_kind_name(ch->kind), "name", ch->name,
                                                 "field", ch->field, "old", ch->old_value, "new",
                                                 ch->new_value));
        }
        cli_print_json(json_pack("{s:o}", "changes", arr));
    } else if (n == 0) {
        printf("no changes\n");
    } else {
        for (size_t i = 0; i < n; i++) {
            const vdi_config_change *ch = vdi_config_diff_get(diff, i);
            const char *what = ch->kind == VDI_CHANGE_SERVICE             ? ""
                               : ch->kind <= VDI_CHANGE_DATASTORE_CHANGED ? "datastore "
                               : ch->kind <= VDI_CHANGE_GOLD_CHANGED      ? "gold "
                                                                          : "pool ";
            if (ch->field)
                printf("%s%s: %s %s -> %s\n", what, ch->name, ch->field, ch->old_value,
                       ch->new_value);
            else if (ch->kind == VDI_CHANGE_POOL_ADDED || ch->kind == VDI_CHANGE_DATASTORE_ADDED ||
                     ch->kind == VDI_CHANGE_GOLD_ADDED)
                printf("%s%s: added%s%s\n", what, ch->name, ch->new_value ? " " : "",
                       ch->new_value ? ch->new_value : "");
            else
                printf("%s%s: removed%s\n", what, ch->name,
                       ch->kind == VDI_CHANGE_POOL_REMOVED ? " (it drains: no new sessions, gone "
                                                             "when its last desktop ends)"
                                                           : "");
        }
    }
    vdi_config_diff_free(diff);

cleanup:
    vdi_config_errors_free(errors);
    vdi_config_free(old_cfg);
    vdi_config_free(new_cfg);
    return status;
}
