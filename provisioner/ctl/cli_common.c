/* cli_common.c — what every vdipoolctl command shares: option parsing,
 * errors in words or JSON, the catalog and the config file it uses. */
#include "cli.h"
#include "vdi_config.h"
#include "vdi_engine.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_fail(bool json, const vdi_error *err)
{
    if (json) {
        json_t *o =
            json_pack("{s:{s:s,s:i}}", "error", "message", err->message, "errno", -err->code);
        cli_print_json(o);
    } else {
        fprintf(stderr, "vdipoolctl: %s\n", err->message);
    }
    return CLI_FAILED;
}

int cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("vdipoolctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return CLI_USAGE;
}

int cli_open_catalog(bool json, vdi_catalog **cat)
{
    vdi_error err = {0};
    if (vdi_catalog_open(vdi_state_dir_default(), cat, &err) < 0)
        return cli_fail(json, &err);
    return CLI_OK;
}

const char *cli_config_path(const char *given)
{
    if (given && *given)
        return given;
    const char *env = getenv("VDIPOOL_CONFIG");
    return env && *env ? env : VDI_CONFIG_DEFAULT_PATH;
}

void cli_print_json(json_t *value)
{
    if (!value)
        return;
    char *s = json_dumps(value, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (s) {
        puts(s);
        free(s);
    }
    json_decref(value);
}

int cli_parse(int argc, char **argv, const char *const *flags, const char *const *values,
              cli_opts *o)
{
    memset(o, 0, sizeof *o);
    char **pos = calloc((size_t)argc + 1, sizeof *pos);
    if (!pos)
        return -1;
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool known = false;
        if (!strcmp(a, "--json")) {
            o->json = known = true;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            o->help = known = true;
        } else if (!strcmp(a, "--search")) {
            if (i + 1 >= argc || o->nsearch == 16) {
                free(pos);
                return cli_usage_error("--search needs a directory"), -1;
            }
            o->search[o->nsearch++] = argv[++i];
            known = true;
        } else if (!strncmp(a, "--", 2)) {
            for (int f = 0; flags && flags[f]; f++)
                if (!strcmp(a + 2, flags[f]))
                    o->flag[f] = known = true;
            for (int v = 0; values && values[v] && !known; v++)
                if (!strcmp(a + 2, values[v])) {
                    if (i + 1 >= argc) {
                        free(pos);
                        return cli_usage_error("%s needs a value", a), -1;
                    }
                    o->value[v] = argv[++i];
                    known = true;
                }
            if (!known) {
                free(pos);
                return cli_usage_error("unknown option %s", a), -1;
            }
        } else {
            pos[npos++] = argv[i];
        }
    }
    /* Positionals go to the end of argv, in order: they are argv[first..argc). */
    int first = argc - npos;
    for (int i = 0; i < npos; i++)
        argv[first + i] = pos[i];
    free(pos);
    return first;
}
