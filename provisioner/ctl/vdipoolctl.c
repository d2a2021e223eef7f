/* vdipoolctl — the operator's command-line client. Offline commands (image …)
 * work on files directly through libvdiengine; service commands talk to
 * vdipoold over its control socket. */
#include "cli.h"
#include "vdi_config.h"
#include "vdi_engine.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fputs("usage: vdipoolctl <command> [options]\n"
          "\n"
          "Images (offline, no daemon needed):\n"
          "  image inspect FILE [--json]        format, sizes, parent and the chain to the root\n"
          "  image clone PARENT CHILD [--size SIZE]\n"
          "                                     make one differencing child of PARENT\n"
          "  image clone PARENT DIR --count N [--prefix NAME]\n"
          "                                     make N children in DIR in one go\n"
          "  image seal|unseal|verify|merge|reparent|scan|tree|reconcile ...\n"
          "                                     the guard, merges and the orphaned-file locator\n"
          "  space [--config PATH] [--json]     datastores: capacity, reserve, worst-case growth\n"
          "\n"
          "Service (through vdipoold's socket; --socket PATH or $VDIPOOL_SOCKET):\n"
          "  status [--json]                    pools and their desktops\n"
          "  acquire POOL --user NAME [--json]  hand a desktop to a user\n"
          "  release DESKTOP [--reason operator] [--json]\n"
          "                                     end its session: destroy it, the pool refills\n"
          "  reload [--json]                    re-read the config (refused if invalid)\n"
          "  images [--json]                    golds and their children\n"
          "\n"
          "Config (offline):\n"
          "  config check [--config PATH] [--json]\n"
          "                                     validate the config, print every error with its line\n"
          "  config diff OLD NEW [--json]       what applying NEW over OLD would change\n"
          "\n"
          "Run `vdipoolctl image --help` or `vdipoolctl config --help` for every option.\n",
          out);
}

int cli_fail(bool json, const vdi_error *err)
{
    if (json) {
        json_t *o = json_pack("{s:{s:s,s:i}}", "error", "message", err->message, "errno",
                              -err->code);
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
    vdi_error err = { 0 };
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

/* --state-dir DIR anywhere on the line sets $VDIPOOL_STATE_DIR for the engine. */
static int take_state_dir(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        int drop = 0;
        if (!strcmp(argv[i], "--state-dir") && i + 1 < argc) {
            v = argv[i + 1];
            drop = 2;
        } else if (!strncmp(argv[i], "--state-dir=", 12)) {
            v = argv[i] + 12;
            drop = 1;
        }
        if (v) {
            setenv("VDIPOOL_STATE_DIR", v, 1);
            memmove(&argv[i], &argv[i + drop], (size_t)(argc - i - drop + 1) * sizeof *argv);
            argc -= drop;
            i--;
        }
    }
    return argc;
}

int main(int argc, char **argv)
{
    argc = take_state_dir(argc, argv);
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return CLI_OK;
    }
    if (!strcmp(cmd, "image"))
        return cli_image(argc - 1, argv + 1);
    if (!strcmp(cmd, "config"))
        return cli_config(argc - 1, argv + 1);
    if (!strcmp(cmd, "space"))
        return cli_space(argc - 1, argv + 1);
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } daemon_cmds[] = { { "status", cli_status },   { "acquire", cli_acquire },
                        { "release", cli_release }, { "reload", cli_reload },
                        { "images", cli_images } };
    for (size_t i = 0; i < sizeof daemon_cmds / sizeof daemon_cmds[0]; i++)
        if (!strcmp(cmd, daemon_cmds[i].name))
            return daemon_cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "vdipoolctl: unknown command '%s'\n", cmd);
    usage(stderr);
    return CLI_USAGE;
}
