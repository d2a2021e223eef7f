/* values.c — reading one setting of a libconfig file: typed getters with
 * units, names, choices and unknown keys, each reporting its error with the
 * setting's file and line into the parse's error list. Shared by the
 * section parsers in config.c (reading.h). */
#include "reading.h"

#include <ctype.h>
#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- errors --------------------------------------------------------------- */

void cfg_errors_append(vdi_config_errors *e, const char *file, int line, const char *message)
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

void cfg_error_at(parse_ctx *ctx, const char *file, int line, const char *fmt, ...)
{
    char *msg = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    if (msg)
        cfg_errors_append(ctx->errors, file ? file : ctx->main_file, line, msg);
    free(msg);
}

const char *cfg_setting_file(parse_ctx *ctx, const config_setting_t *s)
{
    const char *f = s ? config_setting_source_file(s) : NULL;
    return f ? f : ctx->main_file;
}


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

void *cfg_keep_alloc(vdi_config *cfg, size_t size)
{
    if (cfg->nstrings == cfg->capstrings) {
        size_t cap = cfg->capstrings ? cfg->capstrings * 2 : 32;
        char **v = realloc(cfg->strings, cap * sizeof *v);
        if (!v)
            abort(); /* a config is tiny; running out here is not recoverable */
        cfg->strings = v;
        cfg->capstrings = cap;
    }
    char *block = calloc(1, size ? size : 1);
    if (!block)
        abort();
    cfg->strings[cfg->nstrings++] = block;
    return block;
}

const char *cfg_keep(vdi_config *cfg, const char *s)
{
    if (!s)
        return NULL;
    size_t len = strlen(s);
    char *copy = cfg_keep_alloc(cfg, len + 1);
    memcpy(copy, s, len + 1);
    return copy;
}

bool cfg_get_name_list(parse_ctx *ctx, const config_setting_t *group, const char *key,
                       const char *where, const char *const **out, size_t *count)
{
    const config_setting_t *s = cfg_member(group, key);
    if (!s)
        return false;
    int t = config_setting_type(s);
    if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST) {
        ERR(ctx, s, "%s: '%s' must be a list of names in brackets, e.g. %s = [ \"a\", \"b\" ]",
            where, key, key);
        return false;
    }
    int n = config_setting_length(s);
    const char **names = cfg_keep_alloc(ctx->cfg, (size_t)(n > 0 ? n : 1) * sizeof *names);
    size_t kept = 0;
    bool ok = true;
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            ERR(ctx, e, "%s: each of '%s' must be a name in double quotes", where, key);
            ok = false;
            continue;
        }
        const char *name = config_setting_get_string(e);
        for (size_t j = 0; j < kept; j++)
            if (!strcmp(names[j], name)) {
                ERR(ctx, e, "%s: '%s' names '%s' twice", where, key, name);
                ok = false;
            }
        names[kept++] = cfg_keep(ctx->cfg, name);
    }
    *out = names;
    *count = kept;
    return ok;
}

/* ---- keys ----------------------------------------------------------------- */

size_t cfg_edit_distance(const char *a, const char *b)
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
void cfg_check_keys(parse_ctx *ctx, const config_setting_t *group, const char *const *allowed,
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
            size_t d = cfg_edit_distance(name, *k);
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

const config_setting_t *cfg_member(const config_setting_t *group, const char *key)
{
    return group ? config_setting_get_member(group, key) : NULL;
}

bool cfg_get_string(parse_ctx *ctx, const config_setting_t *group, const char *key,
                       const char *where, bool required, const char **out)
{
    const config_setting_t *s = cfg_member(group, key);
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
    *out = cfg_keep(ctx->cfg, v);
    return true;
}

bool cfg_get_uint(parse_ctx *ctx, const config_setting_t *group, const char *key,
                     const char *where, long long min, long long max, unsigned *out)
{
    const config_setting_t *s = cfg_member(group, key);
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

bool cfg_get_double(parse_ctx *ctx, const config_setting_t *group, const char *key,
                       const char *where, double min, double max, double *out)
{
    const config_setting_t *s = cfg_member(group, key);
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
static bool cfg_get_with_units(parse_ctx *ctx, const config_setting_t *s, const char *key,
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
bool cfg_get_size(parse_ctx *ctx, const config_setting_t *group, const char *key,
                     const char *where, uint64_t min, uint64_t *out)
{
    const config_setting_t *s = cfg_member(group, key);
    uint64_t v;
    if (!s || !cfg_get_with_units(ctx, s, key, where, vdi_parse_size, "size",
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
bool cfg_get_duration(parse_ctx *ctx, const config_setting_t *group, const char *key,
                         const char *where, uint64_t max, uint64_t *out)
{
    const config_setting_t *s = cfg_member(group, key);
    uint64_t v;
    if (!s || !cfg_get_with_units(ctx, s, key, where, vdi_parse_duration, "duration",
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
int cfg_get_choice(parse_ctx *ctx, const config_setting_t *group, const char *key,
                      const char *where, const char *const *choices)
{
    const config_setting_t *s = cfg_member(group, key);
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
 * domain names and file names: cfg_keep them to a safe alphabet. */
static bool cfg_valid_name(const char *s)
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

bool cfg_check_name(parse_ctx *ctx, const config_setting_t *s, const char *what,
                       const char *name)
{
    if (cfg_valid_name(name))
        return true;
    ERR(ctx, s, "%s name '%s' is invalid: use 1-48 letters, digits, '-', '_' or '.', starting "
                "with a letter or digit",
        what, name);
    return false;
}

/* ---- entries: lists of groups with `name`, or a group of named groups ----- */


/* Collects the entries of `pools`/`datastores`/`golds` in either form:
 *   pools = ( { name = "office"; ... }, ... );
 *   pools = { office = { ... }; lab = { ... }; };   (one @include per pool) */
size_t cfg_collect_entries(parse_ctx *ctx, const config_setting_t *list, const char *what,
                              cfg_entry **out)
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
    cfg_entry *v = calloc((size_t)(n > 0 ? n : 1), sizeof *v);
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
        const config_setting_t *ns = cfg_member(g, "name");
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
        if (name && !cfg_check_name(ctx, ns ? ns : g, what, name))
            name = NULL;
        if (name) {
            for (size_t j = 0; j < count; j++) {
                if (v[j].name && !strcmp(v[j].name, name)) {
                    ERR(ctx, g, "%s '%s' is defined twice (first at %s:%d)", what, name,
                        cfg_setting_file(ctx, v[j].group), config_setting_source_line(v[j].group));
                    name = NULL;
                    break;
                }
            }
        }
        v[count++] = (cfg_entry){ g, name ? cfg_keep(ctx->cfg, name) : NULL };
    }
    *out = v;
    return count;
}

void *cfg_section_items(size_t n, size_t size)
{
    void *items = calloc(n ? n : 1, size);
    if (!items)
        abort();
    return items;
}

void cfg_entry_begin(parse_ctx *ctx, const cfg_entry *e, const char *what, const char *const *keys,
                     char *where, size_t where_len, const char **file, int *line)
{
    snprintf(where, where_len, "%s '%s'", what, e->name ? e->name : "?");
    cfg_check_keys(ctx, e->group, keys, where);
    *file = cfg_keep(ctx->cfg, cfg_setting_file(ctx, e->group));
    *line = config_setting_source_line(e->group);
}

bool cfg_is_absolute(const char *p) { return p && p[0] == '/'; }

