/* cli_guard.c — `vdipoolctl image seal|unseal|verify|merge|reparent`: the
 * guard and the operations that write parents, offline. */
#include "cli.h"
#include "vdi_config.h"
#include "vdi_engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Children can hide in any datastore: add the configured ones (when a config
 * is there to read) to the directories searched before writing a parent. */
static vdi_config *add_datastores(cli_opts *o)
{
    const char *path = cli_config_path(NULL);
    vdi_config_options opts = {.skip_filesystem_checks = true};
    vdi_config *cfg = NULL;
    vdi_config_errors *errors = NULL;
    if (access(path, R_OK) != 0 || vdi_config_load(path, &opts, &cfg, &errors) < 0) {
        vdi_config_errors_free(errors);
        return NULL;
    }
    for (size_t i = 0; i < vdi_config_datastore_count(cfg) && o->nsearch < 16; i++)
        o->search[o->nsearch++] = vdi_config_datastore(cfg, i)->path;
    return cfg;
}

static json_t *gold_json(const vdi_gold_info *g)
{
    char hex[2 * VDI_HASH_SIZE + 1];
    json_t *prot = json_array();
    if (g->protections & VDI_PROTECT_READONLY)
        json_array_append_new(prot, json_string("read-only"));
    if (g->protections & VDI_PROTECT_OWNER)
        json_array_append_new(prot, json_string("qemu-owner"));
    if (g->protections & VDI_PROTECT_IMMUTABLE)
        json_array_append_new(prot, json_string("immutable"));
    return json_pack("{s:s,s:s,s:s,s:I,s:I,s:s,s:I,s:o,s:s}", "path", g->path, "state",
                     vdi_gold_state_name(g->state), "format", vdi_format_name(g->format),
                     "virtual_size", (json_int_t)g->virtual_size, "size", (json_int_t)g->fp.size,
                     "sha256", vdi_hash_hex(g->fp.hash, hex, sizeof hex), "sealed_at",
                     (json_int_t)g->sealed_at, "protections", prot, "reason", g->reason);
}

static void print_protections(unsigned p)
{
    printf("protections: %s%s%s%s\n", p & VDI_PROTECT_READONLY ? "read-only (0440) " : "",
           p & VDI_PROTECT_OWNER ? "owned by libvirt-qemu " : "",
           p & VDI_PROTECT_IMMUTABLE ? "immutable " : "", p ? "" : "none");
}

int cli_image_seal(cli_call *c)
{
    cli_opts *o = &c->o;
    vdi_catalog *cat = c->catalog;
    int status = CLI_OK;
    vdi_seal_result r;
    vdi_error err = {0};
    if (vdi_seal(cat, c->args[0], &r, &err) < 0) {
        status = cli_fail(o->json, &err);
    } else if (o->json) {
        json_t *j = gold_json(&r.gold);
        json_object_set_new(j, "notes", json_string(r.notes));
        cli_print_json(j);
    } else {
        char hex[2 * VDI_HASH_SIZE + 1];
        printf("sealed %s (%s, sha256 %s)\n", r.gold.path, vdi_format_name(r.gold.format),
               vdi_hash_hex(r.gold.fp.hash, hex, sizeof hex));
        print_protections(r.gold.protections);
        if (r.notes[0])
            printf("note: %s\n", r.notes);
    }
    return status;
}

int cli_image_unseal(cli_call *c)
{
    cli_opts *o = &c->o;
    vdi_catalog *cat = c->catalog;
    int status = CLI_OK;
    vdi_config *cfg = add_datastores(o);
    size_t orphaned = 0;
    vdi_error err = {0};
    if (vdi_unseal(cat, c->args[0], o->flag[0], o->search, o->nsearch, &orphaned, &err) < 0)
        status = cli_fail(o->json, &err);
    else if (o->json)
        cli_print_json(json_pack("{s:s,s:i}", "unsealed", c->args[0], "orphaned", (int)orphaned));
    else if (orphaned)
        printf("unsealed %s; %zu child%s now orphaned: any write to it corrupts them\n", c->args[0],
               orphaned, orphaned == 1 ? " is" : "ren are");
    else
        printf("unsealed %s (it had no children)\n", c->args[0]);
    vdi_config_free(cfg);
    return status;
}

int cli_image_verify(cli_call *c)
{
    cli_opts *o = &c->o;
    vdi_catalog *cat = c->catalog;
    int status = CLI_OK;
    char real[4096];
    const char *path = realpath(c->args[0], real) ? real : c->args[0];
    vdi_error err = {0};
    if (vdi_guard_check(cat, path, true, &err) < 0) {
        status = cli_fail(o->json, &err);
    } else {
        vdi_gold_info g;
        vdi_catalog_gold(cat, path, &g, NULL);
        if (o->json)
            cli_print_json(gold_json(&g));
        else {
            char when[64];
            struct tm tm;
            localtime_r(&(time_t){(time_t)g.sealed_at}, &tm);
            strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S %Z", &tm);
            printf("%s matches its fingerprint (content hash checked; sealed %s)\n", g.path, when);
        }
    }
    return status;
}

static void show_progress(double pct, void *ctx)
{
    (void)ctx;
    if (isatty(2)) {
        fprintf(stderr, "\r  %5.1f%%", pct);
        fflush(stderr);
    }
}

int cli_image_merge(cli_call *c)
{
    cli_opts *o = &c->o;
    int modes = o->flag[0] + (o->value[0] != NULL) + (o->value[1] != NULL);
    if (modes != 1)
        return cli_usage_error("choose one of --into-parent, --into NEW, --to ANCESTOR");
    vdi_merge_mode mode = o->flag[0]    ? VDI_MERGE_INTO_PARENT
                          : o->value[0] ? VDI_MERGE_INTO_NEW
                                        : VDI_MERGE_TO_ANCESTOR;
    const char *target = o->value[0] ? o->value[0] : o->value[1];
    vdi_catalog *cat = c->catalog;
    int status = CLI_OK;
    vdi_config *cfg = add_datastores(o);
    vdi_merge_plan *plan = NULL;
    vdi_error err = {0};
    if (vdi_merge_plan_new(cat, c->args[0], mode, target, o->search, o->nsearch, &plan, &err) < 0) {
        status = cli_fail(o->json, &err);
        goto cleanup;
    }
    if (o->flag[1]) {
        if (o->json)
            cli_print_json(json_pack("{s:b,s:s,s:I}", "dry_run", 1, "plan",
                                     vdi_merge_plan_describe(plan), "space_needed",
                                     (json_int_t)vdi_merge_plan_space_needed(plan)));
        else
            printf("dry run, nothing done:\n%s", vdi_merge_plan_describe(plan));
        goto cleanup;
    }
    if (!o->json)
        printf("%s", vdi_merge_plan_describe(plan));
    if (vdi_merge_execute(cat, plan, o->json ? NULL : show_progress, NULL, &err) < 0) {
        if (!o->json && isatty(2))
            fputc('\n', stderr);
        status = cli_fail(o->json, &err);
        goto cleanup;
    }
    if (o->json)
        cli_print_json(json_pack("{s:b,s:s}", "merged", 1, "plan", vdi_merge_plan_describe(plan)));
    else {
        if (isatty(2))
            fputc('\n', stderr);
        printf("done\n");
    }
cleanup:
    vdi_merge_plan_free(plan);
    vdi_config_free(cfg);
    return status;
}

int cli_image_reparent(cli_call *c)
{
    cli_opts *o = &c->o;
    vdi_catalog *cat = c->catalog;
    int status = CLI_OK;
    vdi_error err = {0};
    if (vdi_reparent(cat, c->args[0], c->args[1], &err) < 0)
        status = cli_fail(o->json, &err);
    else if (o->json)
        cli_print_json(json_pack("{s:s,s:s}", "child", c->args[0], "parent", c->args[1]));
    else
        printf("%s now names %s as its parent (same content as the parent it was made from)\n",
               c->args[0], c->args[1]);
    return status;
}
