/* cli_gold.c — `vdipoolctl gold import|versions|rollback|prune`: a gold
 * family's versions (engine/versions.c). A change of the current version is
 * handed to a running vdipoold with a reload, so the pools that follow the
 * family roll over (ready desktops are replaced, sessions finish). */
#include "cli.h"
#include "glue.h"
#include "vdi_client.h"
#include "vdi_config.h"

#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void cli_gold_usage(FILE *out)
{
    fputs("usage: vdipoolctl gold <command> NAME [options]\n"
          "\n"
          "A gold family keeps sealed, standalone versions in one directory\n"
          "(DIR/v0001.qcow2, ...); pools with gold = \"NAME\" follow its current version,\n"
          "gold = \"NAME@N\" pins version N. Configure it as\n"
          "  golds = ( { name = \"NAME\"; dir = \"DIR\"; } );\n"
          "\n"
          "  gold import NAME FILE [--dir DIR] [--note TEXT]\n"
          "        write FILE (raw, qcow2 chain, standalone VHD/VHDX) as the next version,\n"
          "        sparse and sealed, and make it current (--dir: the family's directory,\n"
          "        else the config's 'dir', else where its versions are)\n"
          "  gold versions NAME [--json]\n"
          "        every version: state, children, size, fingerprint, note; the history\n"
          "  gold rollback NAME [--to N] [--note TEXT]\n"
          "        make version N (default: the one before the current) current again,\n"
          "        after re-hashing it against its fingerprint\n"
          "  gold edit NAME [--pool POOL]\n"
          "        start NAME-maint, a domain on a child of the current version (never the\n"
          "        version itself) with a pool's domain settings, through vdipoold\n"
          "  gold edit --discard NAME\n"
          "        destroy the maintenance domain and throw its child away\n"
          "  gold publish NAME [--note TEXT]\n"
          "        once NAME-maint has shut down: its disk becomes the next version,\n"
          "        standalone and sealed, and current\n"
          "  gold prune NAME --keep K [--dry-run]\n"
          "        delete versions older than the newest K that nothing uses (no child,\n"
          "        not current, not pinned by a pool)\n"
          "\n"
          "Options: --config PATH (the config, for 'dir' and pinned versions),\n"
          "--socket PATH (the running vdipoold, told to reload), --state-dir DIR, --json.\n",
          out);
}

/* Who asked, for the audit trail: the sudo user behind root when there is one. */
static const char *who(void)
{
    const char *sudo = getenv("SUDO_USER");
    if (sudo && *sudo)
        return sudo;
    struct passwd *pw = getpwuid(getuid());
    return pw ? pw->pw_name : "unknown";
}

/* The config without resolving families (that needs no valid version):
 * only to read a family's dir and the pools' pins. NULL when unreadable. */
static vdi_config *read_config(const cli_opts *o)
{
    const char *path = cli_config_path(o->value[0]);
    if (access(path, R_OK) != 0)
        return NULL;
    vdi_config_options opts = {.skip_filesystem_checks = true};
    vdi_config *cfg = NULL;
    vdi_config_errors *errors = NULL;
    if (vdi_config_load(path, &opts, &cfg, &errors) < 0)
        cfg = NULL;
    vdi_config_errors_free(errors);
    return cfg;
}

/* Tells a running vdipoold to re-read the config, so pools follow the new
 * current version; says so either way. */
static void tell_daemon(const cli_opts *o, const char *family)
{
    char *text = NULL;
    vdi_error err = {0};
    int status = vdi_client_call(vdi_client_socket(o->value[1]), "POST", "/v1/reload", NULL,
                                 &text, &err);
    if (o->json) {
        free(text);
        return;
    }
    if (status == 200)
        printf("vdipoold reloaded: pools that follow gold '%s' roll over (ready desktops are "
               "replaced, sessions finish on the version they started on)\n",
               family);
    else if (status < 0)
        printf("vdipoold is not running here (%s); pools follow at its next start\n",
               err.message);
    else
        printf("vdipoold refused the reload (HTTP %d): %s\nfix the config and run `vdipoolctl "
               "reload`\n",
               status, text ? text : "");
    free(text);
}

static void progress(double percent, void *ctx)
{
    (void)ctx;
    fprintf(stderr, "\r  writing the version: %5.1f%%", percent);
    fflush(stderr);
}

/* The family's directory: the config's 'dir', else where its versions are. */
static bool family_dir(cli_call *c, const char *family, char *out, size_t len)
{
    vdi_config *cfg = read_config(&c->o);
    const vdi_gold_config *g = cfg ? vdi_config_find_gold(cfg, family) : NULL;
    bool found = g && g->dir;
    if (found)
        snprintf(out, len, "%s", g->dir);
    vdi_config_unref(cfg);
    vdi_gold_version cur;
    if (!found && vdi_version_find(c->catalog, family, 0, &cur, NULL) == 0) {
        snprintf(out, len, "%s", cur.path);
        char *slash = strrchr(out, '/');
        if (slash)
            *slash = '\0';
        found = true;
    }
    return found;
}

int cli_gold_import(cli_call *c)
{
    const cli_opts *o = &c->o;
    const char *family = c->args[0], *file = c->args[1];
    char known_dir[PATH_MAX];
    const char *dir = o->value[2];
    if (!dir && family_dir(c, family, known_dir, sizeof known_dir))
        dir = known_dir;
    if (!dir)
        return cli_usage_error("gold '%s' has no directory yet: give --dir DIR, or add "
                               "golds = ( { name = \"%s\"; dir = \"DIR\"; } ) to the config",
                               family, family);
    vdi_version_request req = {.family = family,
                               .dir = dir,
                               .source = file,
                               .note = o->value[3],
                               .who = who(),
                               .action = "import",
                               .reserve_bytes = glue_version_reserve(dir)};
    vdi_gold_version v;
    vdi_error err = {0};
    bool tty = !o->json && isatty(2);
    int rc = vdi_version_create(c->catalog, &req, tty ? progress : NULL, NULL, &v, &err);
    if (tty)
        fputs("\n", stderr);
    if (rc < 0)
        return cli_fail(o->json, &err);
    if (o->json) {
        cli_print_json(glue_version_json(&v));
    } else {
        char a[32], b[32];
        printf("gold %s: version %u is current: %s (%s allocated of %s)\n", family, v.version,
               v.path, vdi_format_size(v.allocated, a, sizeof a),
               vdi_format_size(v.virtual_size, b, sizeof b));
    }
    tell_daemon(o, family);
    return CLI_OK;
}

static void local_time(int64_t at, char *out, size_t len)
{
    struct tm tm;
    time_t t = (time_t)at;
    strftime(out, len, "%Y-%m-%d %H:%M:%S", localtime_r(&t, &tm));
}

int cli_gold_versions(cli_call *c)
{
    const cli_opts *o = &c->o;
    const char *family = c->args[0];
    vdi_gold_version *v = NULL;
    size_t n = 0;
    vdi_gold_audit *trail = NULL;
    size_t ntrail = 0;
    vdi_error err = {0};
    if (vdi_versions_list(c->catalog, family, &v, &n, &err) < 0 ||
        vdi_versions_audit(c->catalog, family, &trail, &ntrail, &err) < 0) {
        free(v);
        return cli_fail(o->json, &err);
    }
    if (n == 0) {
        free(v);
        free(trail);
        vdi_error_set(&err, -ENOENT,
                      "gold '%s' has no versions: make one with `vdipoolctl gold import %s FILE "
                      "--dir DIR`",
                      family, family);
        return cli_fail(o->json, &err);
    }
    if (o->json) {
        json_t *fam = glue_family_json(c->catalog, family, &err);
        if (!fam) {
            free(v);
            free(trail);
            return cli_fail(o->json, &err);
        }
        cli_print_json(fam);
    } else {
        printf("%-7s %-10s %-19s %-10s %10s %10s  %-12s %s\n", "version", "state", "created",
               "by", "allocated", "virtual", "sha256", "note");
        for (size_t i = 0; i < n; i++) {
            json_t *j = glue_version_json(&v[i]);
            char when[32], a[32], b[32], state[32];
            local_time(v[i].created_at, when, sizeof when);
            const char *st = json_string_value(json_object_get(j, "state"));
            if (!strcmp(st, "retiring"))
                snprintf(state, sizeof state, "retiring:%zu", v[i].children);
            else
                snprintf(state, sizeof state, "%s", st);
            printf("%-7u %-10s %-19s %-10s %10s %10s  %.12s %s\n", v[i].version, state, when,
                   v[i].created_by, vdi_format_size(v[i].allocated, a, sizeof a),
                   vdi_format_size(v[i].virtual_size, b, sizeof b),
                   json_string_value(json_object_get(j, "sha256")), v[i].note);
            json_decref(j);
        }
        printf("history:\n");
        for (size_t i = 0; i < ntrail; i++) {
            char when[32];
            local_time(trail[i].at, when, sizeof when);
            printf("  %s %-8s v%u by %s%s%s\n", when, trail[i].action, trail[i].version,
                   trail[i].who, trail[i].note[0] ? ": " : "", trail[i].note);
        }
    }
    free(v);
    free(trail);
    return CLI_OK;
}

int cli_gold_rollback(cli_call *c)
{
    const cli_opts *o = &c->o;
    const char *family = c->args[0];
    vdi_error err = {0};
    unsigned to = 0, was = 0, now = 0;
    if (o->value[2]) {
        char *end = NULL;
        unsigned long v = strtoul(o->value[2], &end, 10);
        if (!*o->value[2] || *end || v == 0 || v > 99999)
            return cli_usage_error("--to takes a version number, such as --to 3");
        to = (unsigned)v;
    }
    if (glue_rollback(c->catalog, family, to, who(), o->value[3], &was, &now, &err) < 0)
        return cli_fail(o->json, &err);
    if (o->json)
        cli_print_json(json_pack("{s:s,s:i,s:i}", "gold", family, "current", now, "was", was));
    else
        printf("gold %s: version %u is current again (was %u)\n", family, now, was);
    tell_daemon(o, family);
    return CLI_OK;
}

int cli_gold_prune(cli_call *c)
{
    const cli_opts *o = &c->o;
    const char *family = c->args[0];
    char *end = NULL;
    unsigned long keep = o->value[2] ? strtoul(o->value[2], &end, 10) : 0;
    if (!o->value[2] || !*o->value[2] || *end || keep == 0 || keep > 99999)
        return cli_usage_error("gold prune needs --keep K, how many of the newest versions "
                               "to keep (at least 1)");
    /* Versions the config pins stay, whatever their age. */
    vdi_config *cfg = read_config(o);
    const char *pinned[256];
    size_t npinned = 0;
    char paths[256][PATH_MAX + 32];
    for (size_t i = 0; cfg && i < vdi_config_pool_count(cfg) && npinned < 256; i++) {
        const vdi_pool_config *p = vdi_config_pool(cfg, i);
        vdi_gold_version v;
        if (p->gold_pinned && p->gold_name && !strcmp(p->gold_name, family) &&
            vdi_version_find(c->catalog, family, p->gold_version, &v, NULL) == 0) {
            snprintf(paths[npinned], sizeof paths[npinned], "%s", v.path);
            pinned[npinned] = paths[npinned];
            npinned++;
        }
    }
    vdi_config_unref(cfg);
    vdi_gold_version *gone = NULL, *busy = NULL;
    size_t ngone = 0, nbusy = 0;
    vdi_error err = {0};
    bool dry = o->flag[0];
    int rc = vdi_versions_prune(c->catalog, family, (unsigned)keep, pinned, npinned, dry, who(),
                                &gone, &ngone, &busy, &nbusy, &err);
    if (o->json) {
        json_t *arr = json_array(), *kept = json_array();
        for (size_t i = 0; i < ngone; i++)
            json_array_append_new(arr, glue_version_json(&gone[i]));
        for (size_t i = 0; i < nbusy; i++)
            json_array_append_new(kept, glue_version_json(&busy[i]));
        cli_print_json(json_pack("{s:s,s:b,s:o,s:o}", "gold", family, "dry_run", dry,
                                 dry ? "would_delete" : "deleted", arr, "kept_in_use", kept));
    } else {
        for (size_t i = 0; i < ngone; i++)
            printf("%s version %u: %s\n", dry ? "would delete" : "deleted", gone[i].version,
                   gone[i].path);
        for (size_t i = 0; i < nbusy; i++) {
            char why[64];
            if (busy[i].current)
                snprintf(why, sizeof why, "current");
            else if (busy[i].children)
                snprintf(why, sizeof why, "%zu child%s", busy[i].children,
                         busy[i].children == 1 ? "" : "ren");
            else
                snprintf(why, sizeof why, "pinned by a pool");
            printf("kept version %u: %s\n", busy[i].version, why);
        }
        printf("gold %s: %zu version%s %s; %zu older one%s kept (in use)\n", family, ngone,
               ngone == 1 ? "" : "s", dry ? "would go" : "deleted", nbusy,
               nbusy == 1 ? "" : "s");
    }
    free(busy);
    free(gone);
    if (rc < 0)
        return cli_fail(o->json, &err);
    return CLI_OK;
}

int cli_gold_edit(cli_call *c)
{
    const cli_opts *o = &c->o;
    const char *family = c->args[0];
    bool discard = o->flag[0];
    char path[256], body[256] = "";
    snprintf(path, sizeof path, "/v1/golds/%s/%s", family, discard ? "discard" : "edit");
    if (o->value[2]) {
        json_t *b = json_pack("{s:s}", "pool", o->value[2]);
        char *t = json_dumps(b, JSON_COMPACT);
        snprintf(body, sizeof body, "%s", t ? t : "");
        free(t);
        json_decref(b);
    }
    char *text = NULL;
    vdi_error err = {0};
    int status = vdi_client_call(vdi_client_socket(o->value[1]), "POST", path,
                                 body[0] ? body : NULL, &text, &err);
    if (status < 0)
        return cli_fail(o->json, &err);
    json_t *j = json_loads(text ? text : "", 0, NULL);
    free(text);
    if (status != 200) {
        vdi_error_set(&err, -EIO, "%s",
                      j && json_string_value(json_object_get(j, "error"))
                          ? json_string_value(json_object_get(j, "error"))
                          : "vdipoold refused");
        json_decref(j);
        return cli_fail(o->json, &err);
    }
    if (o->json) {
        cli_print_json(j);
        return CLI_OK;
    }
    if (discard) {
        printf("gold %s: the edit is thrown away (%s)\n", family,
               json_string_value(json_object_get(j, "discarded")));
    } else {
        const char *dom = json_string_value(json_object_get(j, "domain"));
        const char *display = json_string_value(json_object_get(j, "display"));
        printf("gold %s: %s runs on a child of version %d (%s)\n"
               "  console: virsh console %s%s%s\n"
               "  when done, shut it down inside, then: vdipoolctl gold publish %s --note "
               "\"what changed\"\n"
               "  or throw it away: vdipoolctl gold edit --discard %s\n",
               family, dom, (int)json_integer_value(json_object_get(j, "version")),
               json_string_value(json_object_get(j, "child")), dom,
               display ? "; display: " : "", display ? display : "", family, family);
    }
    json_decref(j);
    return CLI_OK;
}

int cli_gold_publish(cli_call *c)
{
    const cli_opts *o = &c->o;
    const char *family = c->args[0];
    char dir[PATH_MAX];
    vdi_error err = {0};
    if (!family_dir(c, family, dir, sizeof dir)) {
        vdi_error_set(&err, -ENOENT, "gold '%s' is not a family with versions", family);
        return cli_fail(o->json, &err);
    }
    vdi_gold_version v;
    bool tty = !o->json && isatty(2);
    int rc = glue_publish_edit(c->catalog, family, dir, o->value[3], who(),
                               tty ? progress : NULL, NULL, &v, &err);
    if (tty)
        fputs("\n", stderr);
    if (rc < 0)
        return cli_fail(o->json, &err);
    if (o->json) {
        cli_print_json(glue_version_json(&v));
    } else {
        char a[32];
        printf("gold %s: version %u is published and current: %s (%s allocated)\n", family,
               v.version, v.path, vdi_format_size(v.allocated, a, sizeof a));
    }
    tell_daemon(o, family);
    return CLI_OK;
}
