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
          "  space [--config PATH] [--rescan] [--json]\n"
          "                                     datastores: capacity, reserve, worst-case growth,\n"
          "                                     from the catalog (--rescan: walk each datastore\n"
          "                                     and set the catalog's records right)\n"
          "\n"
          "Service (through vdipoold's socket; --socket PATH or $VDIPOOL_SOCKET):\n"
          "  status [POOL] [--state S,...] [--json]\n"
          "                                     pools and their desktops (a pool of more\n"
          "                                     than 50 is counted; name it to list them)\n"
          "  acquire POOL --user NAME [--json]  hand a desktop to a user\n"
          "  release DESKTOP [--reason operator] [--json]\n"
          "                                     end its session: destroy it, the pool refills\n"
          "  reload [--json]                    re-read the config (refused if invalid)\n"
          "  images [--json]                    golds and their children\n"
          "  hosts [--json]                     KVM hosts: connection, state, desktops, memory\n"
          "  pool rollout POOL                  a pool with rollout = \"manual\" moves to its\n"
          "                                     config's gold (version)\n"
          "  pool drain POOL                    no new sessions, spares end, sessions finish;\n"
          "                                     kept across restarts\n"
          "  pool undrain POOL                  open a drained pool again\n"
          "\n"
          "Gold versions (offline; a running vdipoold is told to reload):\n"
          "  gold import NAME FILE [--dir DIR] [--note TEXT]\n"
          "                                     FILE becomes the next sealed version, current\n"
          "  gold versions NAME [--json]        versions, their state and the history\n"
          "  gold rollback NAME [--to N]        an earlier version becomes current again\n"
          "  gold edit NAME | gold publish NAME a maintenance domain, then its disk as the\n"
          "                                     next version (edit --discard throws it away)\n"
          "  gold prune NAME --keep K [--dry-run]\n"
          "                                     delete old versions nothing uses\n"
          "\n"
          "Config (offline):\n"
          "  config check [--config PATH] [--json]\n"
          "                                     validate the config, print every error with its "
          "line\n"
          "  config diff OLD NEW [--json]       what applying NEW over OLD would change\n"
          "\n"
          "Run `vdipoolctl image --help`, `gold --help` or `config --help` for every option.\n",
          out);
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

/* ---- the one command table -------------------------------------------------- */

static const char *const no_names[] = {NULL};
static const char *const clone_flags[] = {"extended-l2", "no-extended-l2", "no-sync", NULL};
static const char *const clone_values[] = {"size",  "cluster-size", "max-depth",
                                           "count", "prefix",       NULL};
static const char *const force_flag[] = {"force", NULL};
static const char *const merge_flags[] = {"into-parent", "dry-run", NULL};
static const char *const merge_values[] = {"into", "to", NULL};
static const char *const config_value[] = {"config", NULL};
/* Service commands: value[0] is --socket everywhere. */
static const char *const socket_values[] = {"socket", "user", "reason", NULL};
static const char *const status_values[] = {"socket", "state", NULL};
/* Gold commands: value[0] --config, value[1] --socket, then their own. */
static const char *const gold_values[] = {"config", "socket", "dir", "note", NULL};
static const char *const gold_rollback_values[] = {"config", "socket", "to", "note", NULL};
static const char *const gold_prune_values[] = {"config", "socket", "keep", NULL};
static const char *const dry_run_flag[] = {"dry-run", NULL};
static const char *const gold_edit_values[] = {"config", "socket", "pool", NULL};
static const char *const discard_flag[] = {"discard", NULL};
static const char *const rescan_flag[] = {"rescan", NULL};

typedef struct cli_command {
    const char *group; /* "image", "config", or NULL for a top-level command */
    const char *name;
    cli_handler run;
    int min_args, max_args;    /* positional arguments */
    const char *args_usage;    /* what the positionals are, for errors */
    const char *const *flags;  /* --NAME switches, in cli_opts.flag order */
    const char *const *values; /* --NAME VALUE options, in cli_opts.value order */
    bool needs_catalog;        /* opened before, closed after (space opens its own
                                  once the config is valid) */
} cli_command;

static const cli_command commands[] = {
    {"image", "inspect", cli_image_inspect, 1, 1, "exactly one FILE", no_names, no_names, false},
    {"image", "clone", cli_image_clone, 2, 2, "PARENT and CHILD (or DIR with --count)", clone_flags,
     clone_values, true},
    {"image", "seal", cli_image_seal, 1, 1, "one GOLD", no_names, no_names, true},
    {"image", "unseal", cli_image_unseal, 1, 1, "one GOLD", force_flag, no_names, true},
    {"image", "verify", cli_image_verify, 1, 1, "one GOLD", no_names, no_names, true},
    {"image", "merge", cli_image_merge, 1, 1, "one CHILD", merge_flags, merge_values, true},
    {"image", "reparent", cli_image_reparent, 2, 2, "CHILD and NEWPARENT", no_names, no_names,
     true},
    {"image", "scan", cli_image_scan, 1, 1, "one DIR", no_names, no_names, true},
    {"image", "tree", cli_image_tree, 0, 1, "at most one DIR", no_names, no_names, true},
    {"image", "reconcile", cli_image_reconcile, 1, 1, "one DIR", no_names, no_names, true},
    {"config", "check", cli_config_check, 0, 0, "no arguments (use --config PATH)", no_names,
     config_value, false},
    {"config", "diff", cli_config_diff, 2, 2, "OLD and NEW", no_names, no_names, false},
    {NULL, "space", cli_space, 0, 0, "no arguments", rescan_flag, config_value, false},
    {NULL, "status", cli_status, 0, 1, "at most one POOL", no_names, status_values, false},
    {NULL, "acquire", cli_acquire, 1, 1, "POOL and --user NAME", no_names, socket_values, false},
    {NULL, "release", cli_release, 1, 1,
     "one DESKTOP (add --reason operator to end any desktop's session as an operator)", no_names,
     socket_values, false},
    {NULL, "reload", cli_reload, 0, 0, "no arguments", no_names, socket_values, false},
    {NULL, "images", cli_images, 0, 0, "no arguments", no_names, socket_values, false},
    {NULL, "hosts", cli_hosts, 0, 0, "no arguments", no_names, socket_values, false},
    {"pool", "rollout", cli_pool_rollout, 1, 1, "one POOL", no_names, socket_values, false},
    {"pool", "drain", cli_pool_drain, 1, 1, "one POOL", no_names, socket_values, false},
    {"pool", "undrain", cli_pool_undrain, 1, 1, "one POOL", no_names, socket_values, false},
    {"gold", "import", cli_gold_import, 2, 2, "NAME and FILE", no_names, gold_values, true},
    {"gold", "versions", cli_gold_versions, 1, 1, "one NAME", no_names, gold_values, true},
    {"gold", "rollback", cli_gold_rollback, 1, 1, "one NAME (and --to N)", no_names,
     gold_rollback_values, true},
    {"gold", "edit", cli_gold_edit, 1, 1, "one NAME", discard_flag, gold_edit_values, false},
    {"gold", "publish", cli_gold_publish, 1, 1, "one NAME", no_names, gold_values, true},
    {"gold", "prune", cli_gold_prune, 1, 1, "one NAME and --keep K", dry_run_flag,
     gold_prune_values, true},
};

static void group_usage(const char *group, FILE *out)
{
    if (!strcmp(group, "image"))
        cli_image_usage(out);
    else if (!strcmp(group, "gold"))
        cli_gold_usage(out);
    else if (!strcmp(group, "pool"))
        usage(out);
    else
        cli_config_usage(out);
}

/* Parses a command's options by its row, checks its arity, opens what it
 * needs and runs it. argv starts at the command's own name. */
static int dispatch(const cli_command *cmd, int argc, char **argv)
{
    cli_call c = {0};
    int first = cli_parse(argc, argv, cmd->flags, cmd->values, &c.o);
    if (first < 0)
        return CLI_USAGE;
    if (c.o.help) {
        if (cmd->group)
            group_usage(cmd->group, stdout);
        else
            usage(stdout);
        return CLI_OK;
    }
    c.args = argv + first;
    c.nargs = argc - first;
    if (c.nargs < cmd->min_args || c.nargs > cmd->max_args)
        return cli_usage_error("%s%s%s takes %s", cmd->group ? cmd->group : "",
                               cmd->group ? " " : "", cmd->name, cmd->args_usage);
    if (cmd->needs_catalog) {
        int status = cli_open_catalog(c.o.json, &c.catalog);
        if (status)
            return status;
    }
    int status = cmd->run(&c);
    vdi_catalog_close(c.catalog);
    return status;
}

int main(int argc, char **argv)
{
    argc = take_state_dir(argc, argv);
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    const char *word = argv[1];
    if (!strcmp(word, "-h") || !strcmp(word, "--help") || !strcmp(word, "help")) {
        usage(stdout);
        return CLI_OK;
    }
    bool is_group = false;
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const cli_command *cmd = &commands[i];
        if (!cmd->group && !strcmp(word, cmd->name))
            return dispatch(cmd, argc - 1, argv + 1);
        if (cmd->group && !strcmp(word, cmd->group)) {
            is_group = true;
            if (argc > 2 && !strcmp(argv[2], cmd->name))
                return dispatch(cmd, argc - 2, argv + 2);
        }
    }
    if (is_group) {
        bool asked = argc > 2 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"));
        if (argc > 2 && !asked) {
            fprintf(stderr, "vdipoolctl: unknown %s command '%s'\n", word, argv[2]);
            group_usage(word, stderr);
            return CLI_USAGE;
        }
        group_usage(word, asked ? stdout : stderr);
        return asked ? CLI_OK : CLI_USAGE;
    }
    fprintf(stderr, "vdipoolctl: unknown command '%s'\n", word);
    usage(stderr);
    return CLI_USAGE;
}
