/* config.c — libconfig files to a validated vdi_config: the top level, the
 * service and datastores sections and the config's life. Every value is
 * checked and every error is collected (with the file and line libconfig
 * records for each setting), so an operator sees all mistakes at once. A
 * config with any error is never returned. Reading one value is values.c;
 * the golds and pools sections are pools.c, a pool's readiness settings
 * readiness.c. */
#include "reading.h"

#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void parse_service(parse_ctx *ctx, const config_setting_t *g)
{
    vdi_service_config *s = &ctx->cfg->service;
    s->socket_path = "/run/vdipool/vdipool.sock";
    s->state_dir = "/var/lib/vdipool";
    s->libvirt_uri = "qemu:///system";
    s->log_level = VDI_LOG_INFO;
    s->max_parallel_clones = 4;
    s->max_parallel_starts = 2;
    s->acquire_timeout = 30;
    s->adopt_wait = 120;
    s->max_connections = 1024;
    if (!g)
        return;
    if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
        ERR(ctx, g, "'service' must be a group: service = { ... };");
        return;
    }
    static const char *const keys[] = {"socket",
                                       "listen",
                                       "token_file",
                                       "state_dir",
                                       "libvirt_uri",
                                       "log_level",
                                       "max_parallel_clones",
                                       "max_parallel_starts",
                                       "acquire_timeout",
                                       "adopt_wait",
                                       "session_history",
                                       "max_connections",
                                       NULL};
    cfg_check_keys(ctx, g, keys, "service");
    const char *w = "service";
    if (cfg_get_string(ctx, g, "socket", w, false, &s->socket_path) && !cfg_is_absolute(s->socket_path))
        ERR(ctx, cfg_member(g, "socket"), "service: 'socket' must be an absolute path");
    if (cfg_get_string(ctx, g, "state_dir", w, false, &s->state_dir) && !cfg_is_absolute(s->state_dir))
        ERR(ctx, cfg_member(g, "state_dir"), "service: 'state_dir' must be an absolute path");
    cfg_get_string(ctx, g, "libvirt_uri", w, false, &s->libvirt_uri);
    static const char *const levels[] = { "debug", "info", "warning", "error", NULL };
    int lvl = cfg_get_choice(ctx, g, "log_level", w, levels);
    if (lvl >= 0)
        s->log_level = (vdi_log_level)lvl;
    cfg_get_uint(ctx, g, "max_parallel_clones", w, 1, 64, &s->max_parallel_clones);
    cfg_get_uint(ctx, g, "max_parallel_starts", w, 1, 64, &s->max_parallel_starts);
    cfg_get_duration(ctx, g, "acquire_timeout", w, 600, &s->acquire_timeout);
    cfg_get_uint(ctx, g, "max_connections", w, 1, 65536, &s->max_connections);
    /* Restores of large memory images from a slow disk, many at once, may
     * take minutes; past an hour a job is hung, not slow. */
    if (cfg_get_duration(ctx, g, "adopt_wait", w, 3600, &s->adopt_wait) && s->adopt_wait < 1)
        ERR(ctx, cfg_member(g, "adopt_wait"),
            "service: 'adopt_wait' must be at least 1s (how long a desktop libvirt is still "
            "starting or restoring is held before it is adopted as it is)");
    /* The pool's last hour and its learned growth read recent sessions. */
    if (cfg_get_duration(ctx, g, "session_history", w, 0, &s->session_history) &&
        s->session_history && s->session_history < 86400)
        ERR(ctx, cfg_member(g, "session_history"),
            "service: 'session_history' must be at least 1d, or \"0\" to keep every session's "
            "record");

    if (cfg_get_string(ctx, g, "listen", w, false, &s->listen)) {
        /* Only loopback: the TCP listener is for a broker on this host. */
        const char *colon = strrchr(s->listen, ':');
        size_t hostlen = colon ? (size_t)(colon - s->listen) : 0;
        long port = 0;
        if (colon) {
            char *end;
            port = strtol(colon + 1, &end, 10);
            if (*end || end == colon + 1)
                port = 0;
        }
        bool loopback = (hostlen > 4 && !memcmp(s->listen, "127.", 4)) ||
                        (hostlen == 5 && !memcmp(s->listen, "[::1]", 5)) ||
                        (hostlen == 9 && !memcmp(s->listen, "localhost", 9));
        if (!loopback || port < 1 || port > 65535)
            ERR(ctx, cfg_member(g, "listen"),
                "service: 'listen' is \"%s\"; it must be a loopback address and port such as "
                "\"127.0.0.1:8470\" (the API is not meant for the network)",
                s->listen);
        if (!cfg_get_string(ctx, g, "token_file", w, false, &s->token_file))
            ERR(ctx, cfg_member(g, "listen"),
                "service: 'listen' needs 'token_file', the file holding the bearer token");
    } else if (cfg_member(g, "token_file")) {
        cfg_get_string(ctx, g, "token_file", w, false, &s->token_file);
    }
    if (s->token_file && !cfg_is_absolute(s->token_file))
        ERR(ctx, cfg_member(g, "token_file"), "service: 'token_file' must be an absolute path");
}

static void parse_datastores(parse_ctx *ctx, const config_setting_t *list)
{
    vdi_config *cfg = ctx->cfg;
    if (!list) {
        cfg_error_at(ctx, ctx->main_file, 0,
                     "no 'datastores': at least one is needed, e.g. datastores = ( { name = "
                     "\"local\"; path = \"/var/lib/vdipool/desktops\"; } );");
        return;
    }
    cfg_entry *e = NULL;
    size_t n = cfg_collect_entries(ctx, list, "datastore", &e);
    cfg->datastores = cfg_section_items(n, sizeof *cfg->datastores);
    int lt = config_setting_type(list);
    if (n == 0 && (lt == CONFIG_TYPE_LIST || lt == CONFIG_TYPE_GROUP))
        ERR(ctx, list, "'datastores' is empty: at least one is needed");
    static const char *const keys[] = { "name", "path", "reserve", "max_overcommit", "kind",
                                        "host", NULL };
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *g = e[i].group;
        char where[96];
        vdi_datastore_config *d = &cfg->datastores[cfg->ndatastores++];
        d->name = e[i].name;
        cfg_entry_begin(ctx, &e[i], "datastore", keys, where, sizeof where, &d->file, &d->line);
        d->reserve_percent = 5.0;
        d->max_overcommit = 3.0;
        cfg_parse_datastore_kind(ctx, g, where, d);
        if (cfg_get_string(ctx, g, "path", where, true, &d->path)) {
            struct stat st;
            if (!cfg_is_absolute(d->path))
                ERR(ctx, cfg_member(g, "path"), "%s: 'path' must be an absolute path", where);
            else if (!ctx->opts->skip_filesystem_checks && d->kind == VDI_DATASTORE_SHARED &&
                     (stat(d->path, &st) < 0 || !S_ISDIR(st.st_mode)))
                ERR(ctx, cfg_member(g, "path"),
                    "%s: path %s is not a directory (create it, on the filesystem that will hold "
                    "the desktops' disks)",
                    where, d->path);
            for (size_t j = 0; j + 1 < cfg->ndatastores; j++)
                if (cfg->datastores[j].path && !strcmp(cfg->datastores[j].path, d->path))
                    ERR(ctx, cfg_member(g, "path"), "%s: path %s is also datastore '%s'", where,
                        d->path, cfg->datastores[j].name ? cfg->datastores[j].name : "?");
        }
        const config_setting_t *r = cfg_member(g, "reserve");
        if (r && config_setting_type(r) == CONFIG_TYPE_STRING &&
            strchr(config_setting_get_string(r), '%')) {
            const char *txt = config_setting_get_string(r);
            char *end;
            double pct = strtod(txt, &end);
            if (end == txt || strcmp(end, "%") || !(pct >= 0 && pct <= 90))
                ERR(ctx, r, "%s: 'reserve' is \"%s\"; a percentage must be from \"0%%\" to "
                            "\"90%%\"",
                    where, txt);
            else
                d->reserve_percent = pct;
        } else if (cfg_get_size(ctx, g, "reserve", where, 0, &d->reserve_bytes)) {
            d->reserve_percent = 0;
        }
        cfg_get_double(ctx, g, "max_overcommit", where, 0.01, 1000, &d->max_overcommit);
    }
    free(e);
}

/* Errors are found section by section; present them in file order: grouped
 * by file (in order of first appearance), by line within a file. Stable. */
static void sort_errors(vdi_config_errors *e)
{
    for (size_t i = 1; i < e->count; i++) {
        vdi_config_error item = e->items[i];
        size_t j = i;
        while (j > 0) {
            const vdi_config_error *prev = &e->items[j - 1];
            if (strcmp(prev->file, item.file) != 0 || prev->line <= item.line)
                break;
            e->items[j] = e->items[j - 1];
            j--;
        }
        e->items[j] = item;
    }
}

static int finish(parse_ctx *ctx, vdi_config **out, vdi_config_errors **errors)
{
    if (ctx->errors->count) {
        sort_errors(ctx->errors);
        vdi_config_free(ctx->cfg);
        *errors = ctx->errors;
        return -EINVAL;
    }
    vdi_config_errors_free(ctx->errors);
    *out = ctx->cfg;
    return 0;
}

typedef struct prescan_sink {
    vdi_config_errors *errors;
} prescan_sink;

static void prescan_error(void *ctx, const char *file, int line, const char *message)
{
    prescan_sink *sink = ctx;
    cfg_errors_append(sink->errors, file, line, message);
}

/* Runs the prescan; on refusal *errors holds what it found. */
static int prescan(const char *path, const char *text, const char *include_dir,
                   vdi_config_errors **errors)
{
    prescan_sink sink = { calloc(1, sizeof *sink.errors) };
    if (!sink.errors)
        abort();
    int rc = text ? vdi_config_prescan_text_(text, path, prescan_error, &sink)
                  : vdi_config_prescan_file_(path, include_dir, prescan_error, &sink);
    if (rc == 0) {
        vdi_config_errors_free(sink.errors);
        return 0;
    }
    *errors = sink.errors;
    return rc;
}

static int parse_common(config_t *cf, bool read_ok, const char *name,
                        const vdi_config_options *opts_in, vdi_config **out,
                        vdi_config_errors **errors)
{
    static const vdi_config_options defaults = { 0 };
    parse_ctx ctx = { .opts = opts_in ? opts_in : &defaults, .main_file = name };
    *out = NULL;
    *errors = NULL;
    ctx.cfg = calloc(1, sizeof *ctx.cfg);
    if (ctx.cfg)
        atomic_init(&ctx.cfg->refs, 1);
    ctx.errors = calloc(1, sizeof *ctx.errors);
    if (!ctx.cfg || !ctx.errors)
        abort();
    ctx.cfg->path = strdup(name);
    if (!read_ok) {
        const char *file = config_error_file(cf);
        int line = config_error_line(cf);
        const char *text = config_error_text(cf);
        if (config_error_type(cf) == CONFIG_ERR_FILE_IO)
            cfg_error_at(&ctx, file ? file : name, 0,
                         "cannot read the config file (%s); check that it exists and is "
                         "readable, or pass --config PATH",
                         text ? text : "I/O error");
        else
            cfg_error_at(&ctx, file ? file : name, line, "%s; fix the syntax near this line",
                         text ? text : "syntax error");
        return finish(&ctx, out, errors);
    }
    const config_setting_t *root = config_root_setting(cf);
    static const char *const keys[] = { "service", "hosts", "datastores", "golds", "pools", NULL };
    cfg_check_keys(&ctx, root, keys, "the top level");
    parse_service(&ctx, config_setting_get_member(root, "service"));
    parse_datastores(&ctx, config_setting_get_member(root, "datastores"));
    cfg_parse_hosts(&ctx, config_setting_get_member(root, "hosts"));
    cfg_parse_golds(&ctx, config_setting_get_member(root, "golds"));
    cfg_parse_pools(&ctx, config_setting_get_member(root, "pools"));
    return finish(&ctx, out, errors);
}

int vdi_config_load(const char *path, const vdi_config_options *opts, vdi_config **out,
                    vdi_config_errors **errors)
{
    config_t cf;
    config_init(&cf);
    /* @include names are relative to the including file's directory. */
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (slash)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else
        snprintf(dir, sizeof dir, ".");
    const char *include_dir = slash == path ? "/" : dir;
    *out = NULL;
    *errors = NULL;
    if (prescan(path, NULL, include_dir, errors) < 0) {
        config_destroy(&cf);
        return -EINVAL;
    }
    config_set_include_dir(&cf, include_dir);
    bool ok = config_read_file(&cf, path) == CONFIG_TRUE;
    int rc = parse_common(&cf, ok, path, opts, out, errors);
    config_destroy(&cf);
    return rc;
}

int vdi_config_parse_string(const char *text, const char *name, const vdi_config_options *opts,
                            vdi_config **out, vdi_config_errors **errors)
{
    *out = NULL;
    *errors = NULL;
    if (prescan(name, text, NULL, errors) < 0)
        return -EINVAL;
    config_t cf;
    config_init(&cf);
    bool ok = config_read_string(&cf, text) == CONFIG_TRUE;
    int rc = parse_common(&cf, ok, name, opts, out, errors);
    config_destroy(&cf);
    return rc;
}

vdi_config *vdi_config_ref(vdi_config *cfg)
{
    if (cfg)
        atomic_fetch_add(&cfg->refs, 1);
    return cfg;
}

void vdi_config_unref(vdi_config *cfg) { vdi_config_free(cfg); }

void vdi_config_free(vdi_config *cfg)
{
    if (!cfg || atomic_fetch_sub(&cfg->refs, 1) != 1)
        return;
    for (size_t i = 0; i < cfg->nstrings; i++)
        free(cfg->strings[i]);
    free(cfg->strings);
    free(cfg->datastores);
    free(cfg->golds);
    free(cfg->pools);
    free(cfg->hosts);
    free(cfg->path);
    free(cfg);
}
