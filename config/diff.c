/* diff.c — what changed between two configs, as the service applies it on
 * reload: one entry per changed setting, in a stable order. */
#include "vdi_config.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct vdi_config_diff {
    vdi_config_change *items;
    size_t count, cap;
};

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));

static char *fmt(const char *f, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, f);
    if (vasprintf(&s, f, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

static char *dup_or_none(const char *s) { return strdup(s ? s : "(none)"); }

static void add(vdi_config_diff *d, vdi_change_kind kind, const char *name, const char *field,
                char *old_value, char *new_value)
{
    if (d->count == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 16;
        vdi_config_change *v = realloc(d->items, cap * sizeof *v);
        if (!v)
            abort();
        d->items = v;
        d->cap = cap;
    }
    d->items[d->count++] = (vdi_config_change){ kind, name, field, old_value, new_value };
}

static bool str_differs(const char *a, const char *b)
{
    if (!a || !b)
        return a != b;
    return strcmp(a, b) != 0;
}

#define CMP_STR(kind, name, field, a, b)                                                           \
    do {                                                                                           \
        if (str_differs((a), (b)))                                                                 \
            add(d, (kind), (name), (field), dup_or_none(a), dup_or_none(b));                       \
    } while (0)

#define CMP_U(kind, name, field, a, b)                                                             \
    do {                                                                                           \
        if ((a) != (b))                                                                            \
            add(d, (kind), (name), (field), fmt("%llu", (unsigned long long)(a)),                  \
                fmt("%llu", (unsigned long long)(b)));                                             \
    } while (0)

static char *size_text(uint64_t v)
{
    char b[32];
    return strdup(vdi_format_size(v, b, sizeof b));
}

static char *duration_text(uint64_t v)
{
    char b[32];
    return v ? strdup(vdi_format_duration(v, b, sizeof b)) : strdup("unlimited");
}

static char *reserve_text(const vdi_datastore_config *s)
{
    if (s->reserve_percent > 0)
        return fmt("%g%%", s->reserve_percent);
    return size_text(s->reserve_bytes);
}

static void diff_service(vdi_config_diff *d, const vdi_service_config *a,
                         const vdi_service_config *b)
{
    const vdi_change_kind k = VDI_CHANGE_SERVICE;
    CMP_STR(k, "service", "socket", a->socket_path, b->socket_path);
    CMP_STR(k, "service", "listen", a->listen, b->listen);
    CMP_STR(k, "service", "token_file", a->token_file, b->token_file);
    CMP_STR(k, "service", "state_dir", a->state_dir, b->state_dir);
    CMP_STR(k, "service", "libvirt_uri", a->libvirt_uri, b->libvirt_uri);
    CMP_STR(k, "service", "log_level", vdi_log_level_name(a->log_level),
            vdi_log_level_name(b->log_level));
    CMP_U(k, "service", "max_parallel_clones", a->max_parallel_clones, b->max_parallel_clones);
    CMP_U(k, "service", "max_parallel_starts", a->max_parallel_starts, b->max_parallel_starts);
    CMP_U(k, "service", "max_connections", a->max_connections, b->max_connections);
    if (a->acquire_timeout != b->acquire_timeout)
        add(d, k, "service", "acquire_timeout", duration_text(a->acquire_timeout),
            duration_text(b->acquire_timeout));
    if (a->session_history != b->session_history)
        add(d, k, "service", "session_history", duration_text(a->session_history),
            duration_text(b->session_history));
    if (a->adopt_wait != b->adopt_wait)
        add(d, k, "service", "adopt_wait", duration_text(a->adopt_wait),
            duration_text(b->adopt_wait));
}

static void diff_datastores(vdi_config_diff *d, const vdi_config *old, const vdi_config *new)
{
    for (size_t i = 0; i < vdi_config_datastore_count(old); i++) {
        const vdi_datastore_config *a = vdi_config_datastore(old, i);
        const vdi_datastore_config *b = vdi_config_find_datastore(new, a->name);
        if (!b) {
            add(d, VDI_CHANGE_DATASTORE_REMOVED, a->name, NULL, strdup(a->path), NULL);
            continue;
        }
        const vdi_change_kind k = VDI_CHANGE_DATASTORE_CHANGED;
        CMP_STR(k, a->name, "path", a->path, b->path);
        CMP_STR(k, a->name, "kind", vdi_datastore_kind_name(a->kind),
                vdi_datastore_kind_name(b->kind));
        CMP_STR(k, a->name, "host", a->host, b->host);
        char *ra = reserve_text(a), *rb = reserve_text(b);
        if (strcmp(ra, rb))
            add(d, k, a->name, "reserve", ra, rb);
        else {
            free(ra);
            free(rb);
        }
        if (fabs(a->max_overcommit - b->max_overcommit) > 1e-9)
            add(d, k, a->name, "max_overcommit", fmt("%g", a->max_overcommit),
                fmt("%g", b->max_overcommit));
    }
    for (size_t i = 0; i < vdi_config_datastore_count(new); i++) {
        const vdi_datastore_config *b = vdi_config_datastore(new, i);
        if (!vdi_config_find_datastore(old, b->name))
            add(d, VDI_CHANGE_DATASTORE_ADDED, b->name, NULL, NULL, strdup(b->path));
    }
}

/* A list of names as text ("a, b"), or "(all)" for none given. */
static char *names_text(const char *const *names, size_t n)
{
    if (!names)
        return strdup("(all)");
    size_t len = 1;
    for (size_t i = 0; i < n; i++)
        len += strlen(names[i]) + 2;
    char *out = calloc(1, len);
    for (size_t i = 0; out && i < n; i++) {
        if (i)
            strcat(out, ", ");
        strcat(out, names[i]);
    }
    return out;
}

static void cmp_names(vdi_config_diff *d, vdi_change_kind k, const char *name, const char *field,
                      const char *const *a, size_t na, const char *const *b, size_t nb)
{
    char *ta = names_text(a, na), *tb = names_text(b, nb);
    if (ta && tb && strcmp(ta, tb)) {
        add(d, k, name, field, ta, tb);
        return;
    }
    free(ta);
    free(tb);
}

static void diff_hosts(vdi_config_diff *d, const vdi_config *old, const vdi_config *new)
{
    for (size_t i = 0; i < vdi_config_host_count(old); i++) {
        const vdi_host_config *a = vdi_config_host(old, i);
        const vdi_host_config *b = vdi_config_find_host(new, a->name);
        if (!b) {
            add(d, VDI_CHANGE_HOST_REMOVED, a->name, NULL, strdup(a->uri), NULL);
            continue;
        }
        const vdi_change_kind k = VDI_CHANGE_HOST_CHANGED;
        CMP_STR(k, a->name, "uri", a->uri, b->uri);
        CMP_STR(k, a->name, "state", vdi_host_state_name(a->state), vdi_host_state_name(b->state));
        CMP_U(k, a->name, "max_desktops", a->max_desktops, b->max_desktops);
        if (a->reserve_memory != b->reserve_memory)
            add(d, k, a->name, "reserve_memory", size_text(a->reserve_memory),
                size_text(b->reserve_memory));
        cmp_names(d, k, a->name, "datastores", a->datastores, a->ndatastores, b->datastores,
                  b->ndatastores);
    }
    for (size_t i = 0; i < vdi_config_host_count(new); i++) {
        const vdi_host_config *b = vdi_config_host(new, i);
        if (!vdi_config_find_host(old, b->name))
            add(d, VDI_CHANGE_HOST_ADDED, b->name, NULL, NULL, strdup(b->uri));
    }
}

static const vdi_gold_config *find_gold(const vdi_config *c, const char *name)
{
    for (size_t i = 0; i < vdi_config_gold_count(c); i++)
        if (!strcmp(vdi_config_gold(c, i)->name, name))
            return vdi_config_gold(c, i);
    return NULL;
}

static void diff_golds(vdi_config_diff *d, const vdi_config *old, const vdi_config *new)
{
    for (size_t i = 0; i < vdi_config_gold_count(old); i++) {
        const vdi_gold_config *a = vdi_config_gold(old, i);
        const vdi_gold_config *b = find_gold(new, a->name);
        if (!b)
            add(d, VDI_CHANGE_GOLD_REMOVED, a->name, NULL, strdup(a->path), NULL);
        else
            CMP_STR(VDI_CHANGE_GOLD_CHANGED, a->name, "path", a->path, b->path);
    }
    for (size_t i = 0; i < vdi_config_gold_count(new); i++) {
        const vdi_gold_config *b = vdi_config_gold(new, i);
        if (!find_gold(old, b->name))
            add(d, VDI_CHANGE_GOLD_ADDED, b->name, NULL, NULL, strdup(b->path));
    }
}

static void diff_pool(vdi_config_diff *d, const vdi_pool_config *a, const vdi_pool_config *b)
{
    const char *n = a->name;
    CMP_U(VDI_CHANGE_POOL_RESIZED, n, "size", a->size, b->size);
    CMP_U(VDI_CHANGE_POOL_RESIZED, n, "spares", a->spares, b->spares);
    /* Compare the resolved paths: renaming a gold entry without changing its
     * file is no roll-out, and repointing a named gold is one. */
    CMP_STR(VDI_CHANGE_POOL_GOLD, n, "gold", a->gold, b->gold);
    CMP_STR(VDI_CHANGE_POOL_DATASTORE, n, "datastore", a->datastore, b->datastore);
    cmp_names(d, VDI_CHANGE_POOL_HOSTS, n, "hosts", a->hosts, a->nhosts, b->hosts, b->nhosts);

    const vdi_change_kind dk = VDI_CHANGE_POOL_DOMAIN;
    if (a->domain.memory_bytes != b->domain.memory_bytes)
        add(d, dk, n, "domain.memory", size_text(a->domain.memory_bytes),
            size_text(b->domain.memory_bytes));
    CMP_U(dk, n, "domain.vcpus", a->domain.vcpus, b->domain.vcpus);
    CMP_STR(dk, n, "domain.network", a->domain.network, b->domain.network);
    CMP_STR(dk, n, "domain.graphics", vdi_graphics_name(a->domain.graphics),
            vdi_graphics_name(b->domain.graphics));
    CMP_STR(dk, n, "domain.template", a->domain.template_path, b->domain.template_path);
    CMP_STR(dk, n, "domain.accel", a->domain.kvm ? "kvm" : "tcg", b->domain.kvm ? "kvm" : "tcg");
    /* Readiness and identity: spares made under the old rules are replaced. */
    CMP_STR(dk, n, "ready_when", vdi_ready_when_name(a->ready_when),
            vdi_ready_when_name(b->ready_when));
    CMP_STR(dk, n, "start", vdi_start_name(a->start), vdi_start_name(b->start));
    if (a->template_settle != b->template_settle)
        add(d, dk, n, "template_settle", duration_text(a->template_settle),
            duration_text(b->template_settle));
    if (a->boot_timeout != b->boot_timeout)
        add(d, dk, n, "boot_timeout", duration_text(a->boot_timeout),
            duration_text(b->boot_timeout));
    CMP_STR(dk, n, "hostname", a->hostname, b->hostname);
    CMP_STR(dk, n, "hostname_command", a->hostname_command, b->hostname_command);

    const vdi_change_kind sk = VDI_CHANGE_POOL_SESSION;
    if (a->session.max_duration != b->session.max_duration)
        add(d, sk, n, "session.max_duration", duration_text(a->session.max_duration),
            duration_text(b->session.max_duration));
    if (a->session.idle_spare_max_age != b->session.idle_spare_max_age)
        add(d, sk, n, "session.idle_spare_max_age", duration_text(a->session.idle_spare_max_age),
            duration_text(b->session.idle_spare_max_age));
    if (a->session.paused_timeout != b->session.paused_timeout)
        add(d, sk, n, "session.paused_timeout", duration_text(a->session.paused_timeout),
            duration_text(b->session.paused_timeout));
    CMP_STR(sk, n, "session.on_end", a->session.on_end, b->session.on_end);
    if (a->session.logoff_grace != b->session.logoff_grace)
        add(d, sk, n, "session.logoff_grace", duration_text(a->session.logoff_grace),
            duration_text(b->session.logoff_grace));
    if (a->session.login_timeout != b->session.login_timeout)
        add(d, sk, n, "session.login_timeout", duration_text(a->session.login_timeout),
            duration_text(b->session.login_timeout));
    if (a->session.idle_logoff != b->session.idle_logoff)
        add(d, sk, n, "session.idle_logoff", duration_text(a->session.idle_logoff),
            duration_text(b->session.idle_logoff));
    CMP_STR(sk, n, "session.idle_command", a->session.idle_command, b->session.idle_command);
    if (a->session.agent_lost_timeout != b->session.agent_lost_timeout)
        add(d, sk, n, "session.agent_lost_timeout", duration_text(a->session.agent_lost_timeout),
            duration_text(b->session.agent_lost_timeout));

    const vdi_change_kind ok = VDI_CHANGE_POOL_OTHER;
    CMP_STR(ok, n, "rollout", vdi_rollout_name(a->rollout), vdi_rollout_name(b->rollout));
    if (a->rollout_notice != b->rollout_notice)
        add(d, ok, n, "rollout_notice", duration_text(a->rollout_notice),
            duration_text(b->rollout_notice));
    CMP_STR(ok, n, "desktop_prefix", a->desktop_prefix, b->desktop_prefix);
    CMP_U(ok, n, "max_chain_depth", a->max_chain_depth, b->max_chain_depth);
    if (a->expected_growth != b->expected_growth)
        add(d, ok, n, "expected_growth", size_text(a->expected_growth),
            size_text(b->expected_growth));
}

int vdi_config_diff_new(const vdi_config *old, const vdi_config *new, vdi_config_diff **out)
{
    vdi_config_diff *d = calloc(1, sizeof *d);
    if (!d)
        return -1;
    diff_service(d, vdi_config_service(old), vdi_config_service(new));
    diff_datastores(d, old, new);
    diff_hosts(d, old, new);
    diff_golds(d, old, new);
    for (size_t i = 0; i < vdi_config_pool_count(old); i++) {
        const vdi_pool_config *a = vdi_config_pool(old, i);
        const vdi_pool_config *b = vdi_config_find_pool(new, a->name);
        if (!b)
            add(d, VDI_CHANGE_POOL_REMOVED, a->name, NULL, NULL, NULL);
        else
            diff_pool(d, a, b);
    }
    for (size_t i = 0; i < vdi_config_pool_count(new); i++) {
        const vdi_pool_config *b = vdi_config_pool(new, i);
        if (!vdi_config_find_pool(old, b->name))
            add(d, VDI_CHANGE_POOL_ADDED, b->name, NULL, NULL, NULL);
    }
    *out = d;
    return 0;
}

size_t vdi_config_diff_count(const vdi_config_diff *d) { return d->count; }

const vdi_config_change *vdi_config_diff_get(const vdi_config_diff *d, size_t i)
{
    return i < d->count ? &d->items[i] : NULL;
}

void vdi_config_diff_free(vdi_config_diff *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->count; i++) {
        free(d->items[i].old_value);
        free(d->items[i].new_value);
    }
    free(d->items);
    free(d);
}

const char *vdi_change_kind_name(vdi_change_kind k)
{
    static const char *const names[] = {
        "service_changed",   "datastore_added",   "datastore_removed", "datastore_changed",
        "gold_added",        "gold_removed",      "gold_changed",      "pool_added",
        "pool_removed",      "pool_resized",      "pool_gold_changed", "pool_domain_changed",
        "pool_datastore_changed", "pool_session_changed", "pool_changed",
        "host_added",        "host_removed",      "host_changed",      "pool_hosts_changed",
    };
    return k <= VDI_CHANGE_POOL_HOSTS ? names[k] : "changed";
}
