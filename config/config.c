/* config.c — libconfig files to a validated vdi_config. Every value is
 * checked and every error is collected (with the file and line libconfig
 * records for each setting), so an operator sees all mistakes at once. A
 * config with any error is never returned. */
#include "config_internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdatomic.h>
#include <libconfig.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct vdi_config_errors {
    vdi_config_error *items;
    size_t count, cap;
};

struct vdi_config {
    atomic_uint refs; /* vdi_config_ref/unref; the value itself never changes */
    char *path;
    vdi_service_config service;
    vdi_datastore_config *datastores;
    size_t ndatastores;
    vdi_gold_config *golds;
    size_t ngolds;
    vdi_pool_config *pools;
    size_t npools;
    char **strings; /* every string the views point to */
    size_t nstrings, capstrings;
};

typedef struct parse_ctx {
    vdi_config *cfg;
    vdi_config_errors *errors;
    const char *main_file;
    const vdi_config_options *opts;
} parse_ctx;

/* ---- errors --------------------------------------------------------------- */

static void add_error_at(parse_ctx *ctx, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void errors_append(vdi_config_errors *e, const char *file, int line, const char *message)
{
    if (e->count == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 8;
        vdi_config_error *items = realloc(e->items, cap * sizeof *items);
        if (!items)
            return;
        e->items = items;
        e->cap = cap;
    }
    char *msg = strdup(message), *f = strdup(file);
    if (!msg || !f) {
        free(msg);
        free(f);
        return;
    }
    e->items[e->count++] = (vdi_config_error){ f, line, msg };
}

static void add_error_at(parse_ctx *ctx, const char *file, int line, const char *fmt, ...)
{
    char *msg = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    if (msg)
        errors_append(ctx->errors, file ? file : ctx->main_file, line, msg);
    free(msg);
}

static const char *setting_file(parse_ctx *ctx, const config_setting_t *s)
{
    const char *f = s ? config_setting_source_file(s) : NULL;
    return f ? f : ctx->main_file;
}

#define ERR(ctx, setting, ...)                                                                     \
    add_error_at((ctx), setting_file((ctx), (setting)),                                            \
                 (setting) ? (int)config_setting_source_line(setting) : 0, __VA_ARGS__)

size_t vdi_config_errors_count(const vdi_config_errors *e) { return e ? e->count : 0; }

const vdi_config_error *vdi_config_errors_get(const vdi_config_errors *e, size_t i)
{
    return e && i < e->count ? &e->items[i] : NULL;
}

void vdi_config_errors_free(vdi_config_errors *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->count; i++) {
        free(e->items[i].file);
        free(e->items[i].message);
    }
    free(e->items);
    free(e);
}

/* ---- strings owned by the config ------------------------------------------ */

static const char *keep(vdi_config *cfg, const char *s)
{
    if (!s)
        return NULL;
    if (cfg->nstrings == cfg->capstrings) {
        size_t cap = cfg->capstrings ? cfg->capstrings * 2 : 32;
        char **v = realloc(cfg->strings, cap * sizeof *v);
        if (!v)
            abort(); /* a config is tiny; running out here is not recoverable */
        cfg->strings = v;
        cfg->capstrings = cap;
    }
    char *copy = strdup(s);
    if (!copy)
        abort();
    cfg->strings[cfg->nstrings++] = copy;
    return copy;
}

/* ---- keys ----------------------------------------------------------------- */

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return SIZE_MAX;
    size_t prev[65], cur[65];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (tolower((unsigned char)a[i - 1]) !=
                                        tolower((unsigned char)b[j - 1]));
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof cur);
    }
    return prev[lb];
}

/* Refuses settings not in `allowed`, suggesting the nearest known one. */
static void check_keys(parse_ctx *ctx, const config_setting_t *group, const char *const *allowed,
                       const char *where)
{
    int n = config_setting_length(group);
    for (int i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
        const char *name = config_setting_name(s);
        if (!name)
            continue;
        bool known = false;
        const char *best = NULL;
        size_t best_d = SIZE_MAX;
        for (const char *const *k = allowed; *k; k++) {
            if (!strcmp(name, *k)) {
                known = true;
                break;
            }
            size_t d = edit_distance(name, *k);
            if (d < best_d) {
                best_d = d;
                best = *k;
            }
        }
        if (known)
            continue;
        size_t limit = strlen(name) <= 4 ? 1 : 2;
        if (best && (best_d <= limit || (strlen(best) > 3 && strstr(name, best))))
            ERR(ctx, s, "unknown setting '%s' in %s (did you mean '%s'?)", name, where, best);
        else {
            char list[512] = "";
            size_t len = 0;
            for (const char *const *k = allowed; *k && len < sizeof list - 64; k++)
                len += (size_t)snprintf(list + len, sizeof list - len, "%s%s",
                                        k == allowed ? "" : ", ", *k);
            ERR(ctx, s, "unknown setting '%s' in %s (known settings: %s)", name, where, list);
        }
    }
}

/* ---- typed getters: each returns true when the value was present and valid,
 * leaving *out at the default otherwise ------------------------------------- */

static const config_setting_t *member(const config_setting_t *group, const char *key)
{
    return group ? config_setting_get_member(group, key) : NULL;
}

static bool get_string(parse_ctx *ctx, const config_setting_t *group, const char *key,
                       const char *where, bool required, const char **out)
{
    const config_setting_t *s = member(group, key);
    if (!s) {
        if (required)
            ERR(ctx, group, "%s needs '%s'", where, key);
        return false;
    }
    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        ERR(ctx, s, "%s: '%s' must be a string in double quotes", where, key);
        return false;
    }
    const char *v = config_setting_get_string(s);
    if (!v || !*v) {
        ERR(ctx, s, "%s: '%s' must not be empty", where, key);
        return false;
    }
    *out = keep(ctx->cfg, v);
    return true;
}

static bool get_uint(parse_ctx *ctx, const config_setting_t *group, const char *key,
                     const char *where, long long min, long long max, unsigned *out)
{
    const config_setting_t *s = member(group, key);
    if (!s)
        return false;
    int t = config_setting_type(s);
    if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64) {
        ERR(ctx, s, "%s: '%s' must be a whole number without quotes (%lld..%lld)", where, key,
            min, max);
        return false;
    }
    long long v = config_setting_get_int64(s);
    if (v < min || v > max) {
        ERR(ctx, s, "%s: '%s' is %lld; it must be from %lld to %lld", where, key, v, min, max);
        return false;
    }
    *out = (unsigned)v;
    return true;
}

static bool get_double(parse_ctx *ctx, const config_setting_t *group, const char *key,
                       const char *where, double min, double max, double *out)
{
    const config_setting_t *s = member(group, key);
    if (!s)
        return false;
    int t = config_setting_type(s);
    double v;
    if (t == CONFIG_TYPE_FLOAT)
        v = config_setting_get_float(s);
    else if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64)
        v = (double)config_setting_get_int64(s);
    else {
        ERR(ctx, s, "%s: '%s' must be a number without quotes", where, key);
        return false;
    }
    if (!(v >= min && v <= max)) {
        ERR(ctx, s, "%s: '%s' is %g; it must be from %g to %g", where, key, v, min, max);
        return false;
    }
    *out = v;
    return true;
}

/* A value with units: a string the parser understands ("20G", "12h") or a
 * plain non-negative integer (bytes, seconds). `kind` and `example` word the
 * errors. */
static bool get_with_units(parse_ctx *ctx, const config_setting_t *s, const char *key,
                           const char *where, int (*parse)(const char *, uint64_t *),
                           const char *kind, const char *example, uint64_t *out)
{
    int t = config_setting_type(s);
    if (t == CONFIG_TYPE_STRING) {
        const char *text = config_setting_get_string(s);
        if (parse(text, out) < 0) {
            ERR(ctx, s, "%s: '%s' is \"%s\", which is not a %s; write it like %s", where, key,
                text, kind, example);
            return false;
        }
        return true;
    }
    if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64) {
        long long n = config_setting_get_int64(s);
        if (n < 0) {
            ERR(ctx, s, "%s: '%s' must not be negative", where, key);
            return false;
        }
        *out = (uint64_t)n;
        return true;
    }
    ERR(ctx, s, "%s: '%s' must be a %s like %s", where, key, kind, example);
    return false;
}

/* Sizes: "512M", "20G", "1T" or a plain integer of bytes. */
static bool get_size(parse_ctx *ctx, const config_setting_t *group, const char *key,
                     const char *where, uint64_t min, uint64_t *out)
{
    const config_setting_t *s = member(group, key);
    uint64_t v;
    if (!s || !get_with_units(ctx, s, key, where, vdi_parse_size, "size",
                              "\"512M\", \"20G\" or \"1T\"", &v))
        return false;
    if (v < min) {
        char minbuf[32];
        ERR(ctx, s, "%s: '%s' is %llu bytes; it must be at least %s (did you forget the unit, "
                    "as in \"4G\"?)",
            where, key, (unsigned long long)v, vdi_format_size(min, minbuf, sizeof minbuf));
        return false;
    }
    *out = v;
    return true;
}

/* Durations: "90s", "15m", "12h", "2d", "0" (none) or a plain integer of seconds. */
static bool get_duration(parse_ctx *ctx, const config_setting_t *group, const char *key,
                         const char *where, uint64_t max, uint64_t *out)
{
    const config_setting_t *s = member(group, key);
    uint64_t v;
    if (!s || !get_with_units(ctx, s, key, where, vdi_parse_duration, "duration",
                              "\"90s\", \"15m\" or \"12h\"", &v))
        return false;
    if (max && v > max) {
        char a[32], b[32];
        ERR(ctx, s, "%s: '%s' is %s; it must be at most %s", where, key,
            vdi_format_duration(v, a, sizeof a), vdi_format_duration(max, b, sizeof b));
        return false;
    }
    *out = v;
    return true;
}

/* One of a fixed set of words; returns the index or -1. */
static int get_choice(parse_ctx *ctx, const config_setting_t *group, const char *key,
                      const char *where, const char *const *choices)
{
    const config_setting_t *s = member(group, key);
    if (!s)
        return -1;
    const char *v = config_setting_type(s) == CONFIG_TYPE_STRING ? config_setting_get_string(s)
                                                                  : NULL;
    for (int i = 0; v && choices[i]; i++)
        if (!strcmp(v, choices[i]))
            return i;
    char list[256] = "";
    size_t len = 0;
    for (int i = 0; choices[i]; i++)
        len += (size_t)snprintf(list + len, sizeof list - len, "%s\"%s\"", i ? ", " : "",
                                choices[i]);
    if (v)
        ERR(ctx, s, "%s: '%s' is \"%s\"; it must be one of %s", where, key, v, list);
    else
        ERR(ctx, s, "%s: '%s' must be one of %s (in double quotes)", where, key, list);
    return -1;
}

/* Names of pools, datastores, golds and desktop prefixes end up in libvirt
 * domain names and file names: keep them to a safe alphabet. */
static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 48 || !isalnum((unsigned char)s[0]))
        return false;
    bool all_digits = true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || c == '-' || c == '_' || c == '.'))
            return false;
        all_digits &= isdigit(c) != 0;
    }
    return !all_digits;
}

static bool check_name(parse_ctx *ctx, const config_setting_t *s, const char *what,
                       const char *name)
{
    if (valid_name(name))
        return true;
    ERR(ctx, s, "%s name '%s' is invalid: use 1-48 letters, digits, '-', '_' or '.', starting "
                "with a letter or digit",
        what, name);
    return false;
}

/* ---- entries: lists of groups with `name`, or a group of named groups ----- */

typedef struct entry {
    const config_setting_t *group;
    const char *name; /* NULL when missing (already reported) */
} entry;

/* Collects the entries of `pools`/`datastores`/`golds` in either form:
 *   pools = ( { name = "office"; ... }, ... );
 *   pools = { office = { ... }; lab = { ... }; };   (one @include per pool) */
static size_t collect_entries(parse_ctx *ctx, const config_setting_t *list, const char *what,
                              entry **out)
{
    *out = NULL;
    if (!list)
        return 0;
    int t = config_setting_type(list);
    if (t != CONFIG_TYPE_LIST && t != CONFIG_TYPE_GROUP) {
        ERR(ctx, list,
            "'%ss' must be a list of groups, ( { name = \"...\"; ... }, ... ), or a group of "
            "named groups",
            what);
        return 0;
    }
    int n = config_setting_length(list);
    entry *v = calloc((size_t)(n > 0 ? n : 1), sizeof *v);
    if (!v)
        abort();
    size_t count = 0;
    for (int i = 0; i < n; i++) {
        const config_setting_t *g = config_setting_get_elem(list, (unsigned)i);
        if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
            ERR(ctx, g, "each %s must be a group in braces { ... }", what);
            continue;
        }
        const char *name = NULL;
        const config_setting_t *ns = member(g, "name");
        if (t == CONFIG_TYPE_GROUP) {
            name = config_setting_name(g);
            if (ns)
                ERR(ctx, ns, "%s '%s' is named by its setting; remove 'name' here", what, name);
        } else if (!ns) {
            ERR(ctx, g, "a %s needs 'name'", what);
        } else if (config_setting_type(ns) != CONFIG_TYPE_STRING) {
            ERR(ctx, ns, "a %s's 'name' must be a string in double quotes", what);
        } else {
            name = config_setting_get_string(ns);
        }
        if (name && !check_name(ctx, ns ? ns : g, what, name))
            name = NULL;
        if (name) {
            for (size_t j = 0; j < count; j++) {
                if (v[j].name && !strcmp(v[j].name, name)) {
                    ERR(ctx, g, "%s '%s' is defined twice (first at %s:%d)", what, name,
                        setting_file(ctx, v[j].group), config_setting_source_line(v[j].group));
                    name = NULL;
                    break;
                }
            }
        }
        v[count++] = (entry){ g, name ? keep(ctx->cfg, name) : NULL };
    }
    *out = v;
    return count;
}

static bool is_absolute(const char *p) { return p && p[0] == '/'; }

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
    if (!g)
        return;
    if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
        ERR(ctx, g, "'service' must be a group: service = { ... };");
        return;
    }
    static const char *const keys[] = { "socket",  "listen", "token_file", "state_dir",
                                        "libvirt_uri", "log_level", "max_parallel_clones",
                                        "max_parallel_starts", "acquire_timeout", NULL };
    check_keys(ctx, g, keys, "service");
    const char *w = "service";
    if (get_string(ctx, g, "socket", w, false, &s->socket_path) && !is_absolute(s->socket_path))
        ERR(ctx, member(g, "socket"), "service: 'socket' must be an absolute path");
    if (get_string(ctx, g, "state_dir", w, false, &s->state_dir) && !is_absolute(s->state_dir))
        ERR(ctx, member(g, "state_dir"), "service: 'state_dir' must be an absolute path");
    get_string(ctx, g, "libvirt_uri", w, false, &s->libvirt_uri);
    static const char *const levels[] = { "debug", "info", "warning", "error", NULL };
    int lvl = get_choice(ctx, g, "log_level", w, levels);
    if (lvl >= 0)
        s->log_level = (vdi_log_level)lvl;
    get_uint(ctx, g, "max_parallel_clones", w, 1, 64, &s->max_parallel_clones);
    get_uint(ctx, g, "max_parallel_starts", w, 1, 64, &s->max_parallel_starts);
    get_duration(ctx, g, "acquire_timeout", w, 600, &s->acquire_timeout);

    if (get_string(ctx, g, "listen", w, false, &s->listen)) {
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
            ERR(ctx, member(g, "listen"),
                "service: 'listen' is \"%s\"; it must be a loopback address and port such as "
                "\"127.0.0.1:8470\" (the API is not meant for the network)",
                s->listen);
        if (!get_string(ctx, g, "token_file", w, false, &s->token_file))
            ERR(ctx, member(g, "listen"),
                "service: 'listen' needs 'token_file', the file holding the bearer token");
    } else if (member(g, "token_file")) {
        get_string(ctx, g, "token_file", w, false, &s->token_file);
    }
    if (s->token_file && !is_absolute(s->token_file))
        ERR(ctx, member(g, "token_file"), "service: 'token_file' must be an absolute path");
}

static void parse_datastores(parse_ctx *ctx, const config_setting_t *list)
{
    vdi_config *cfg = ctx->cfg;
    if (!list) {
        add_error_at(ctx, ctx->main_file, 0,
                     "no 'datastores': at least one is needed, e.g. datastores = ( { name = "
                     "\"local\"; path = \"/var/lib/vdipool/desktops\"; } );");
        return;
    }
    entry *e = NULL;
    size_t n = collect_entries(ctx, list, "datastore", &e);
    cfg->datastores = calloc(n ? n : 1, sizeof *cfg->datastores);
    if (!cfg->datastores)
        abort();
    int lt = config_setting_type(list);
    if (n == 0 && (lt == CONFIG_TYPE_LIST || lt == CONFIG_TYPE_GROUP))
        ERR(ctx, list, "'datastores' is empty: at least one is needed");
    static const char *const keys[] = { "name", "path", "reserve", "max_overcommit", NULL };
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *g = e[i].group;
        char where[96];
        snprintf(where, sizeof where, "datastore '%s'", e[i].name ? e[i].name : "?");
        check_keys(ctx, g, keys, where);
        vdi_datastore_config *d = &cfg->datastores[cfg->ndatastores++];
        d->name = e[i].name;
        d->file = keep(cfg, setting_file(ctx, g));
        d->line = config_setting_source_line(g);
        d->reserve_percent = 5.0;
        d->max_overcommit = 3.0;
        if (get_string(ctx, g, "path", where, true, &d->path)) {
            struct stat st;
            if (!is_absolute(d->path))
                ERR(ctx, member(g, "path"), "%s: 'path' must be an absolute path", where);
            else if (!ctx->opts->skip_filesystem_checks &&
                     (stat(d->path, &st) < 0 || !S_ISDIR(st.st_mode)))
                ERR(ctx, member(g, "path"),
                    "%s: path %s is not a directory (create it, on the filesystem that will hold "
                    "the desktops' disks)",
                    where, d->path);
            for (size_t j = 0; j + 1 < cfg->ndatastores; j++)
                if (cfg->datastores[j].path && !strcmp(cfg->datastores[j].path, d->path))
                    ERR(ctx, member(g, "path"), "%s: path %s is also datastore '%s'", where,
                        d->path, cfg->datastores[j].name ? cfg->datastores[j].name : "?");
        }
        const config_setting_t *r = member(g, "reserve");
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
        } else if (get_size(ctx, g, "reserve", where, 0, &d->reserve_bytes)) {
            d->reserve_percent = 0;
        }
        get_double(ctx, g, "max_overcommit", where, 0.01, 1000, &d->max_overcommit);
    }
    free(e);
}

static int default_image_check(const char *path, char *why, size_t len, void *unused)
{
    (void)unused;
    struct stat st;
    if (stat(path, &st) < 0) {
        snprintf(why, len, "%s", errno == ENOENT ? "it does not exist" : strerror(errno));
        return -errno;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, len, "it is not a regular file (a gold must be a disk image file)");
        return -EINVAL;
    }
    return 0;
}

static void check_gold_path(parse_ctx *ctx, const config_setting_t *s, const char *where,
                            const char *path)
{
    if (!is_absolute(path)) {
        ERR(ctx, s, "%s: gold path \"%s\" must be absolute", where, path);
        return;
    }
    if (ctx->opts->skip_filesystem_checks)
        return;
    char why[512] = "";
    vdi_config_image_check check = ctx->opts->check_image ? ctx->opts->check_image
                                                           : default_image_check;
    if (check(path, why, sizeof why, ctx->opts->check_ctx) < 0)
        ERR(ctx, s, "%s: gold %s is not usable: %s", where, path, why);
}

static void parse_golds(parse_ctx *ctx, const config_setting_t *list)
{
    vdi_config *cfg = ctx->cfg;
    entry *e = NULL;
    size_t n = collect_entries(ctx, list, "gold", &e);
    cfg->golds = calloc(n ? n : 1, sizeof *cfg->golds);
    if (!cfg->golds)
        abort();
    static const char *const keys[] = { "name", "path", NULL };
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *g = e[i].group;
        char where[96];
        snprintf(where, sizeof where, "gold '%s'", e[i].name ? e[i].name : "?");
        check_keys(ctx, g, keys, where);
        vdi_gold_config *gc = &cfg->golds[cfg->ngolds++];
        gc->name = e[i].name;
        gc->file = keep(cfg, setting_file(ctx, g));
        gc->line = config_setting_source_line(g);
        if (get_string(ctx, g, "path", where, true, &gc->path))
            check_gold_path(ctx, member(g, "path"), where, gc->path);
    }
    free(e);
}

static unsigned desktop_digits(unsigned size)
{
    unsigned d = 1;
    while (size >= 10) {
        size /= 10;
        d++;
    }
    return d < 3 ? 3 : d;
}

/* ---- readiness and identity (the guest agent) ------------------------------ */

const char *vdi_ready_when_name(vdi_ready_when when)
{
    return when == VDI_READY_AGENT ? "agent" : "started";
}

int vdi_config_hostname(const vdi_pool_config *pool, const char *desktop_name, unsigned slot,
                        char *out, size_t out_len)
{
    const char *pattern = pool->hostname ? pool->hostname : "{{name}}";
    size_t len = 0;
    char slot_text[16];
    snprintf(slot_text, sizeof slot_text, "%u", slot);
    for (const char *p = pattern; *p;) {
        const char *value = NULL;
        size_t skip = 1;
        if (!strncmp(p, "{{name}}", 8))
            value = desktop_name, skip = 8;
        else if (!strncmp(p, "{{pool}}", 8))
            value = pool->name, skip = 8;
        else if (!strncmp(p, "{{slot}}", 8))
            value = slot_text, skip = 8;
        size_t vlen = value ? strlen(value) : 1;
        if (len + vlen + 1 > out_len)
            return -ENOSPC;
        memcpy(out + len, value ? value : p, vlen);
        len += vlen;
        p += skip;
    }
    out[len] = '\0';
    if (len == 0 || len > 63 || out[0] == '-' || out[len - 1] == '-')
        return -EINVAL;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)out[i]) && out[i] != '-')
            return -EINVAL;
    return 0;
}

static bool file_mentions(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return true; /* unreadable: reported where the template is checked */
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

/* ready_when, boot_timeout, hostname, hostname_command: a desktop is ready
 * when its guest agent answers and its identity is set. */
static void parse_readiness(parse_ctx *ctx, const config_setting_t *g, const char *where,
                            vdi_pool_config *p)
{
    p->ready_when = VDI_READY_STARTED;
    p->boot_timeout = 600;
    p->hostname = "{{name}}";
    p->hostname_command = "hostname";
    static const char *const whens[] = { "started", "agent", NULL };
    int wi = get_choice(ctx, g, "ready_when", where, whens);
    if (wi >= 0)
        p->ready_when = (vdi_ready_when)wi;
    get_duration(ctx, g, "boot_timeout", where, 86400, &p->boot_timeout);
    if (member(g, "boot_timeout") && p->boot_timeout == 0)
        ERR(ctx, member(g, "boot_timeout"), "%s: 'boot_timeout' must be at least 1s", where);
    get_string(ctx, g, "hostname", where, false, &p->hostname);
    get_string(ctx, g, "hostname_command", where, false, &p->hostname_command);
    if (member(g, "hostname_command") && !*p->hostname_command)
        ERR(ctx, member(g, "hostname_command"),
            "%s: 'hostname_command' is empty; set hostname = \"\" to leave hostnames alone",
            where);
    if (p->ready_when != VDI_READY_AGENT) {
        for (const char *const *k = (const char *const[]){"boot_timeout", "hostname",
                                                         "hostname_command", NULL};
             *k; k++)
            if (member(g, *k))
                ERR(ctx, member(g, *k),
                    "%s: '%s' needs the guest agent: set ready_when = \"agent\"", where, *k);
        return;
    }
    if (*p->hostname && p->desktop_prefix) {
        char sample[128] = "", name[128];
        snprintf(name, sizeof name, "%s-%03u", p->desktop_prefix, 1u);
        if (vdi_config_hostname(p, name, 1, sample, sizeof sample) < 0)
            ERR(ctx,
                member(g, "hostname")         ? member(g, "hostname")
                : member(g, "desktop_prefix") ? member(g, "desktop_prefix")
                                              : member(g, "ready_when"),
                "%s: hostname \"%s\" gives \"%.63s\" for desktop %s, which is not a valid "
                "hostname: use 1-63 letters, digits and '-' ({{name}}, {{pool}} and {{slot}} are "
                "replaced; '_' and '.' in the desktop prefix are not allowed in a hostname)",
                where, p->hostname, sample, name);
    }
    if (p->domain.template_path && !ctx->opts->skip_filesystem_checks &&
        !file_mentions(p->domain.template_path, "org.qemu.guest_agent.0"))
        ERR(ctx, member(g, "ready_when"),
            "%s: ready_when = \"agent\" but the domain template %s has no guest agent "
            "channel; add <channel type='unix'><target type='virtio' "
            "name='org.qemu.guest_agent.0'/></channel> to its <devices>",
            where, p->domain.template_path);
}

static void parse_pool(parse_ctx *ctx, const entry *e, vdi_pool_config *p)
{
    vdi_config *cfg = ctx->cfg;
    const config_setting_t *g = e->group;
    char where[96];
    snprintf(where, sizeof where, "pool '%s'", e->name ? e->name : "?");
    static const char *const keys[] = { "name", "desktop_prefix", "gold", "datastore", "size",
                                        "spares", "max_chain_depth", "expected_growth", "domain",
                                        "session", "ready_when", "boot_timeout", "hostname",
                                        "hostname_command", NULL };
    check_keys(ctx, g, keys, where);
    p->name = e->name;
    p->file = keep(cfg, setting_file(ctx, g));
    p->line = config_setting_source_line(g);
    p->desktop_prefix = e->name;
    p->size = 1;
    p->spares = 1;
    p->max_chain_depth = 3;
    p->expected_growth = 2ULL << 30;

    if (get_string(ctx, g, "desktop_prefix", where, false, &p->desktop_prefix))
        check_name(ctx, member(g, "desktop_prefix"), "desktop_prefix", p->desktop_prefix);
    bool have_size = get_uint(ctx, g, "size", where, 1, 100000, &p->size);
    if (!member(g, "size"))
        ERR(ctx, g, "%s needs 'size', the most desktops it may have", where);
    if (get_uint(ctx, g, "spares", where, 0, 100000, &p->spares) && have_size &&
        p->spares > p->size)
        ERR(ctx, member(g, "spares"), "%s: 'spares' (%u) is larger than 'size' (%u)", where,
            p->spares, p->size);
    if (!member(g, "spares") && p->spares > p->size)
        p->spares = p->size;
    get_uint(ctx, g, "max_chain_depth", where, 1, 16, &p->max_chain_depth);
    get_size(ctx, g, "expected_growth", where, 0, &p->expected_growth);

    const char *gold = NULL;
    if (get_string(ctx, g, "gold", where, true, &gold)) {
        const config_setting_t *gs = member(g, "gold");
        if (gold[0] == '/') {
            p->gold = gold;
            check_gold_path(ctx, gs, where, gold);
        } else {
            for (size_t i = 0; i < cfg->ngolds; i++)
                if (cfg->golds[i].name && !strcmp(cfg->golds[i].name, gold)) {
                    p->gold = cfg->golds[i].path;
                    p->gold_name = cfg->golds[i].name;
                }
            if (!p->gold_name) {
                const char *best = NULL;
                size_t bd = SIZE_MAX;
                for (size_t i = 0; i < cfg->ngolds; i++) {
                    size_t d = cfg->golds[i].name ? edit_distance(gold, cfg->golds[i].name)
                                                  : SIZE_MAX;
                    if (d < bd) {
                        bd = d;
                        best = cfg->golds[i].name;
                    }
                }
                if (best && bd <= 2)
                    ERR(ctx, gs, "%s: no gold named '%s' (did you mean '%s'?)", where, gold, best);
                else
                    ERR(ctx, gs, "%s: no gold named '%s'; define it under 'golds' or give an "
                                 "absolute path",
                        where, gold);
            }
        }
    }
    if (get_string(ctx, g, "datastore", where, true, &p->datastore) &&
        !vdi_config_find_datastore(cfg, p->datastore))
        ERR(ctx, member(g, "datastore"), "%s: no datastore named '%s'", where, p->datastore);

    /* domain */
    vdi_domain_config *d = &p->domain;
    d->memory_bytes = 2ULL << 30;
    d->vcpus = 2;
    d->network = "default";
    d->graphics = VDI_GRAPHICS_SPICE;
    d->kvm = true;
    const config_setting_t *dg = member(g, "domain");
    char dwhere[128];
    snprintf(dwhere, sizeof dwhere, "%s domain", where);
    if (dg && config_setting_type(dg) != CONFIG_TYPE_GROUP) {
        ERR(ctx, dg, "%s: 'domain' must be a group: domain = { memory = \"4G\"; ... };", where);
    } else if (dg) {
        static const char *const dkeys[] = { "memory", "vcpus", "network", "graphics",
                                             "template", "accel", NULL };
        check_keys(ctx, dg, dkeys, dwhere);
        get_size(ctx, dg, "memory", dwhere, 16ULL << 20, &d->memory_bytes);
        get_uint(ctx, dg, "vcpus", dwhere, 1, 512, &d->vcpus);
        if (get_string(ctx, dg, "network", dwhere, false, &d->network) &&
            !strcmp(d->network, "none"))
            d->network = NULL;
        static const char *const gfx[] = { "spice", "vnc", "none", NULL };
        int gi = get_choice(ctx, dg, "graphics", dwhere, gfx);
        if (gi >= 0)
            d->graphics = (vdi_graphics)gi;
        static const char *const accels[] = { "kvm", "tcg", NULL };
        int ai = get_choice(ctx, dg, "accel", dwhere, accels);
        if (ai >= 0)
            d->kvm = ai == 0;
        if (get_string(ctx, dg, "template", dwhere, false, &d->template_path)) {
            struct stat st;
            const config_setting_t *ts = member(dg, "template");
            if (!is_absolute(d->template_path))
                ERR(ctx, ts, "%s: 'template' must be an absolute path", dwhere);
            else if (!ctx->opts->skip_filesystem_checks &&
                     (stat(d->template_path, &st) < 0 || !S_ISREG(st.st_mode)))
                ERR(ctx, ts, "%s: template %s is not a readable file", dwhere, d->template_path);
        }
    }

    /* session */
    parse_readiness(ctx, g, where, p);

    vdi_session_config *s = &p->session;
    s->on_end = "destroy";
    s->paused_timeout = 600;
    s->logoff_grace = 30;
    s->agent_lost_timeout = 300;
    const config_setting_t *sg = member(g, "session");
    char swhere[128];
    snprintf(swhere, sizeof swhere, "%s session", where);
    if (sg && config_setting_type(sg) != CONFIG_TYPE_GROUP) {
        ERR(ctx, sg, "%s: 'session' must be a group: session = { max_duration = \"12h\"; };",
            where);
    } else if (sg) {
        static const char *const skeys[] = { "max_duration", "idle_spare_max_age", "on_end",
                                             "paused_timeout", "logoff_grace", "login_timeout",
                                             "agent_lost_timeout", "idle_logoff", "idle_command",
                                             NULL };
        check_keys(ctx, sg, skeys, swhere);
        get_duration(ctx, sg, "max_duration", swhere, 366ULL * 86400, &s->max_duration);
        get_duration(ctx, sg, "idle_spare_max_age", swhere, 366ULL * 86400,
                     &s->idle_spare_max_age);
        get_duration(ctx, sg, "paused_timeout", swhere, 366ULL * 86400, &s->paused_timeout);
        get_duration(ctx, sg, "logoff_grace", swhere, 86400, &s->logoff_grace);
        get_duration(ctx, sg, "login_timeout", swhere, 366ULL * 86400, &s->login_timeout);
        get_duration(ctx, sg, "agent_lost_timeout", swhere, 86400, &s->agent_lost_timeout);
        get_duration(ctx, sg, "idle_logoff", swhere, 366ULL * 86400, &s->idle_logoff);
        get_string(ctx, sg, "idle_command", swhere, false, &s->idle_command);
        if (s->idle_logoff && (!s->idle_command || !*s->idle_command))
            ERR(ctx, member(sg, "idle_logoff"),
                "%s: 'idle_logoff' needs 'idle_command', a program in the guest that prints "
                "how many seconds its user has been idle (the QEMU guest agent does not report "
                "it; see README, \"Ready means usable\")",
                swhere);
        if (p->ready_when != VDI_READY_AGENT)
            for (const char *const *k = (const char *const[]){"logoff_grace", "login_timeout",
                                                             "agent_lost_timeout", "idle_logoff",
                                                             "idle_command", NULL};
                 *k; k++)
                if (member(sg, *k))
                    ERR(ctx, member(sg, *k),
                        "%s: '%s' needs the guest agent: set ready_when = \"agent\" in the "
                        "pool",
                        swhere, *k);
        static const char *const ends[] = { "destroy", NULL };
        get_choice(ctx, sg, "on_end", swhere, ends);
    }
}

static void parse_pools(parse_ctx *ctx, const config_setting_t *list)
{
    vdi_config *cfg = ctx->cfg;
    entry *e = NULL;
    size_t n = collect_entries(ctx, list, "pool", &e);
    cfg->pools = calloc(n ? n : 1, sizeof *cfg->pools);
    if (!cfg->pools)
        abort();
    for (size_t i = 0; i < n; i++) {
        vdi_pool_config *p = &cfg->pools[cfg->npools++];
        parse_pool(ctx, &e[i], p);
        /* Desktops are PREFIX-NNN; equal prefixes would give two pools one domain name. */
        for (size_t j = 0; j + 1 < cfg->npools; j++) {
            const vdi_pool_config *q = &cfg->pools[j];
            if (p->desktop_prefix && q->desktop_prefix &&
                !strcmp(p->desktop_prefix, q->desktop_prefix))
                ERR(ctx, e[i].group,
                    "pool '%s' would name its desktops like pool '%s' (%s-%0*u): give one of "
                    "them another 'desktop_prefix'",
                    p->name ? p->name : "?", q->name ? q->name : "?", p->desktop_prefix,
                    (int)desktop_digits(p->size), 1u);
        }
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
    errors_append(sink->errors, file, line, message);
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
            add_error_at(&ctx, file ? file : name, 0,
                         "cannot read the config file (%s); check that it exists and is "
                         "readable, or pass --config PATH",
                         text ? text : "I/O error");
        else
            add_error_at(&ctx, file ? file : name, line, "%s; fix the syntax near this line",
                         text ? text : "syntax error");
        return finish(&ctx, out, errors);
    }
    const config_setting_t *root = config_root_setting(cf);
    static const char *const keys[] = { "service", "datastores", "golds", "pools", NULL };
    check_keys(&ctx, root, keys, "the top level");
    parse_service(&ctx, config_setting_get_member(root, "service"));
    parse_datastores(&ctx, config_setting_get_member(root, "datastores"));
    parse_golds(&ctx, config_setting_get_member(root, "golds"));
    parse_pools(&ctx, config_setting_get_member(root, "pools"));
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
    free(cfg->path);
    free(cfg);
}

const char *vdi_config_path(const vdi_config *c) { return c->path; }
const vdi_service_config *vdi_config_service(const vdi_config *c) { return &c->service; }
size_t vdi_config_datastore_count(const vdi_config *c) { return c->ndatastores; }
size_t vdi_config_gold_count(const vdi_config *c) { return c->ngolds; }
size_t vdi_config_pool_count(const vdi_config *c) { return c->npools; }

const vdi_datastore_config *vdi_config_datastore(const vdi_config *c, size_t i)
{
    return i < c->ndatastores ? &c->datastores[i] : NULL;
}

const vdi_gold_config *vdi_config_gold(const vdi_config *c, size_t i)
{
    return i < c->ngolds ? &c->golds[i] : NULL;
}

const vdi_pool_config *vdi_config_pool(const vdi_config *c, size_t i)
{
    return i < c->npools ? &c->pools[i] : NULL;
}

const vdi_datastore_config *vdi_config_find_datastore(const vdi_config *c, const char *name)
{
    for (size_t i = 0; i < c->ndatastores; i++)
        if (c->datastores[i].name && !strcmp(c->datastores[i].name, name))
            return &c->datastores[i];
    return NULL;
}

const vdi_pool_config *vdi_config_find_pool(const vdi_config *c, const char *name)
{
    for (size_t i = 0; i < c->npools; i++)
        if (c->pools[i].name && !strcmp(c->pools[i].name, name))
            return &c->pools[i];
    return NULL;
}

const char *vdi_graphics_name(vdi_graphics g)
{
    return g == VDI_GRAPHICS_SPICE ? "spice" : g == VDI_GRAPHICS_VNC ? "vnc" : "none";
}

const char *vdi_log_level_name(vdi_log_level l)
{
    static const char *const names[] = { "debug", "info", "warning", "error" };
    return l <= VDI_LOG_ERROR ? names[l] : "info";
}
