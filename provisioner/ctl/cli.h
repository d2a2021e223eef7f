/* cli.h — vdipoolctl's command groups, each in its own file. A command gets
 * argc/argv starting at its own name and returns the process exit status. */
#ifndef VDI_CLI_H
#define VDI_CLI_H

#include "vdi_common.h"
#include "vdi_engine.h"

#include <jansson.h>
#include <stdbool.h>

/* Exit statuses: 0 ok, 1 the operation failed, 2 bad usage. */
enum { CLI_OK = 0, CLI_FAILED = 1, CLI_USAGE = 2 };

int cli_image(int argc, char **argv);
int cli_config(int argc, char **argv);
int cli_space(int argc, char **argv);
int cli_status(int argc, char **argv);
int cli_acquire(int argc, char **argv);
int cli_release(int argc, char **argv);
int cli_reload(int argc, char **argv);
int cli_images(int argc, char **argv);
int cli_image_seal(int argc, char **argv);
int cli_image_unseal(int argc, char **argv);
int cli_image_verify(int argc, char **argv);
int cli_image_merge(int argc, char **argv);
int cli_image_reparent(int argc, char **argv);
int cli_image_scan(int argc, char **argv);
int cli_image_tree(int argc, char **argv);
int cli_image_reconcile(int argc, char **argv);

/* Options every command shares: --json, --help, --search DIR (repeatable),
 * and up to eight flags and eight values the command names. Returns the index of
 * the first positional argument, or -1 (usage error already printed). */
typedef struct cli_opts {
    bool json;
    bool help;
    const char *search[16];
    size_t nsearch;
    bool flag[8];          /* set by the command's flag names, in order */
    const char *value[8];  /* set by the command's value names, in order */
} cli_opts;

int cli_parse(int argc, char **argv, const char *const *flags, const char *const *values,
              cli_opts *o);

/* Prints an error: a sentence on stderr, or {"error": …} on stdout with --json. */
int cli_fail(bool json, const vdi_error *err);
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Opens the catalog of --state-dir / $VDIPOOL_STATE_DIR; on failure prints
 * why and returns the exit status. */
int cli_open_catalog(bool json, vdi_catalog **cat);
/* The config file: `given` (from --config), else $VDIPOOL_CONFIG, else the default. */
const char *cli_config_path(const char *given);

/* Prints a JSON value (and a newline) to stdout and releases it. */
void cli_print_json(json_t *value);

#endif
