/* vdipoolctl — the operator's command-line client. Offline commands (image …)
 * work on files directly through libvdiengine; service commands talk to
 * vdipoold over its control socket. */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
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

int main(int argc, char **argv)
{
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
    fprintf(stderr, "vdipoolctl: unknown command '%s'\n", cmd);
    usage(stderr);
    return CLI_USAGE;
}
