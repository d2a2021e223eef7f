/* cli.h — vdipoolctl's commands, each group in its own file, all named in
 * one table (vdipoolctl.c) that gives each its arity, options and whether
 * it needs the catalog. A command gets a cli_call with everything parsed
 * and returns the process exit status. */
#ifndef VDI_CLI_H
#define VDI_CLI_H

#include "vdi_common.h"
#include "vdi_engine.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

/* Exit statuses: 0 ok, 1 the operation failed, 2 bad usage. */
enum { CLI_OK = 0, CLI_FAILED = 1, CLI_USAGE = 2 };

/* Options every command shares: --json, --help, --search DIR (repeatable),
 * and up to eight flags and eight values the command names. Returns the index of
 * the first positional argument, or -1 (usage error already printed). */
typedef struct cli_opts {
    bool json;
    bool help;
    const char *search[16];
    size_t nsearch;
    bool flag[8];         /* set by the command's flag names, in order */
    const char *value[8]; /* set by the command's value names, in order */
} cli_opts;

int cli_parse(int argc, char **argv, const char *const *flags, const char *const *values,
              cli_opts *o);

/* What a command is handed: options parsed by its table row, its
 * positional arguments (arity checked), and the catalog when its row asks. */
typedef struct cli_call {
    cli_opts o;
    char **args;
    int nargs;
    vdi_catalog *catalog; /* opened and closed by the dispatcher, or NULL */
} cli_call;

typedef int (*cli_handler)(cli_call *c);

/* The long help of a group (`vdipoolctl image --help`). */
void cli_image_usage(FILE *out);
void cli_config_usage(FILE *out);
void cli_gold_usage(FILE *out);

int cli_image_inspect(cli_call *c);
int cli_image_clone(cli_call *c);
int cli_image_seal(cli_call *c);
int cli_image_unseal(cli_call *c);
int cli_image_verify(cli_call *c);
int cli_image_merge(cli_call *c);
int cli_image_reparent(cli_call *c);
int cli_image_scan(cli_call *c);
int cli_image_tree(cli_call *c);
int cli_image_reconcile(cli_call *c);
int cli_config_check(cli_call *c);
int cli_config_diff(cli_call *c);
int cli_space(cli_call *c);
int cli_status(cli_call *c);
int cli_acquire(cli_call *c);
int cli_release(cli_call *c);
int cli_reload(cli_call *c);
int cli_images(cli_call *c);
int cli_pool_rollout(cli_call *c);
int cli_pool_drain(cli_call *c);
int cli_pool_undrain(cli_call *c);
int cli_hosts(cli_call *c);
int cli_gold_import(cli_call *c);
int cli_gold_versions(cli_call *c);
int cli_gold_rollback(cli_call *c);
int cli_gold_prune(cli_call *c);
int cli_gold_edit(cli_call *c);
int cli_gold_publish(cli_call *c);

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
