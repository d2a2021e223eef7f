/* cli_service.c — `vdipoolctl status|acquire|release|reload|images`: the
 * daemon's control API over its Unix socket, one HTTP request each (status:
 * one more per page of a pool's desktops). */
#include "cli.h"
#include "vdi_client.h"
#include "vdi_config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *socket_path(const cli_opts *o)
{
    return vdi_client_socket(o->value[0]);
}

/* Runs a call and prints its JSON (--json) or a message; returns the exit status. */
static int call(const cli_opts *o, const char *method, const char *path, const char *body,
                json_t **result)
{
    char *text = NULL;
    vdi_error err = {0};
    int status = vdi_client_call(socket_path(o), method, path, body, &text, &err);
    if (status < 0)
        return cli_fail(o->json, &err);
    json_t *j = json_loads(text, 0, NULL);
    if (status != 200) {
        const char *msg = json_string_value(json_object_get(j, "error"));
        if (o->json) {
            cli_print_json(j ? j : json_pack("{s:s}", "error", text));
        } else {
            fprintf(stderr, "vdipoolctl: %s (HTTP %d)\n", msg ? msg : text, status);
            json_t *errors = json_object_get(j, "errors");
            size_t i;
            json_t *e;
            json_array_foreach(errors, i, e)
                fprintf(stderr, "%s:%d: %s\n", json_string_value(json_object_get(e, "file")),
                        (int)json_integer_value(json_object_get(e, "line")),
                        json_string_value(json_object_get(e, "message")));
            json_decref(j);
        }
        free(text);
        return CLI_FAILED;
    }
    free(text);
    if (o->json) {
        cli_print_json(j);
        *result = NULL;
    } else {
        *result = j;
    }
    return CLI_OK;
}

static void print_pool(json_t *p)
{
    json_t *st = json_object_get(p, "desktops_by_state");
    printf("pool %s: %d/%d desktops, %d spares wanted - ready %d, assigned %d, booting %d, "
           "starting %d, cloning %d, ending %d, failed %d, paused %d%s%s%s\n",
           json_string_value(json_object_get(p, "name")),
           (int)(json_integer_value(json_object_get(p, "size")) -
                 json_integer_value(json_object_get(st, "empty"))),
           (int)json_integer_value(json_object_get(p, "size")),
           (int)json_integer_value(json_object_get(p, "spares")),
           (int)json_integer_value(json_object_get(st, "ready")),
           (int)json_integer_value(json_object_get(st, "assigned")),
           (int)json_integer_value(json_object_get(st, "booting")),
           (int)json_integer_value(json_object_get(st, "starting")),
           (int)json_integer_value(json_object_get(st, "cloning")),
           (int)json_integer_value(json_object_get(st, "ending")),
           (int)json_integer_value(json_object_get(st, "failed")),
           (int)json_integer_value(json_object_get(st, "paused")),
           json_is_true(json_object_get(p, "draining")) ? " (draining)" : "",
           json_object_get(p, "blocked") ? "\n  blocked: " : "",
           json_object_get(p, "blocked") ? json_string_value(json_object_get(p, "blocked")) : "");
    if (json_object_get(p, "held_for_rollout_to"))
        printf("  held on its gold (rollout = manual); `vdipoolctl pool rollout %s` moves it to "
               "%s\n",
               json_string_value(json_object_get(p, "name")),
               json_string_value(json_object_get(p, "held_for_rollout_to")));
    json_t *by_gold = json_object_get(p, "desktops_by_gold");
    if (json_object_size(by_gold) > 1) {
        const char *g;
        json_t *n;
        printf("  desktops by gold:");
        json_object_foreach(by_gold, g, n) printf(" %s: %d;", g, (int)json_integer_value(n));
        printf("\n");
    }
    json_t *boot = json_object_get(p, "spares_boot_seconds");
    if (boot)
        printf("  spares took %.1f s from start to ready (fastest %.1f s, slowest %.1f s)\n",
               json_real_value(json_object_get(boot, "median")),
               json_real_value(json_object_get(boot, "min")),
               json_real_value(json_object_get(boot, "max")));
    if (json_object_get(p, "boot_problem"))
        printf("  does not boot: %s\n", json_string_value(json_object_get(p, "boot_problem")));
}

/* A pool with more desktops than this is counted, not listed, by a plain
 * `status`: a site's pools of thousands would scroll past the counts. */
#define STATUS_LISTS_AT_MOST 50
/* Desktops asked for per request when listing a pool. */
#define STATUS_PAGE 1000

static void print_desktop(json_t *d, bool many_hosts)
{
    const char *host = json_string_value(json_object_get(d, "host"));
    bool on = many_hosts && host;
    const char *display = json_string_value(json_object_get(d, "display"));
    const char *user = json_string_value(json_object_get(d, "user"));
    printf("  %-20s %-11s %s%s%s%s%s%s\n", json_string_value(json_object_get(d, "name")),
           json_string_value(json_object_get(d, "state")), on ? "on " : "", on ? host : "",
           on ? "  " : "", display ? display : "", user ? "  user " : "", user ? user : "");
}

/* Lists the pool's desktops in `states` (a comma list) page by page. */
static int list_desktops(const cli_opts *o, const char *pool, const char *states, bool many_hosts)
{
    for (unsigned offset = 0;; offset += STATUS_PAGE) {
        char path[512];
        snprintf(path, sizeof path, "/v1/pools/%s?offset=%u&limit=%u&state=%s", pool, offset,
                 STATUS_PAGE, states);
        json_t *page = NULL;
        int rc = call(o, "GET", path, NULL, &page);
        if (rc || !page)
            return rc;
        json_t *desktops = json_object_get(page, "desktops");
        size_t k;
        json_t *d;
        json_array_foreach(desktops, k, d) print_desktop(d, many_hosts);
        bool more =
            json_array_size(desktops) == STATUS_PAGE &&
            offset + STATUS_PAGE < json_integer_value(json_object_get(page, "desktops_total"));
        json_decref(page);
        if (!more)
            return CLI_OK;
    }
}

int cli_status(cli_call *c)
{
    const cli_opts *o = &c->o;
    const char *only_pool = c->nargs > 0 ? c->args[0] : NULL;
    const char *states = o->value[1];
    if (states && (!*states || states[strspn(states, "abcdefghijklmnopqrstuvwxyz,")]))
        return cli_usage_error("--state takes desktop states separated by commas, such as "
                               "--state ready,assigned; not '%s'",
                               states);
    if (only_pool && strchr(only_pool, '/'))
        return cli_usage_error("'%s' is not a pool name", only_pool);
    json_t *j = NULL;
    if (o->json && (only_pool || states)) {
        /* One pool's JSON, with its desktops (in those states). */
        if (!only_pool)
            return cli_usage_error("status --json --state needs a POOL");
        char path[512];
        snprintf(path, sizeof path, "/v1/pools/%s%s%s", only_pool, states ? "?state=" : "",
                 states ? states : "");
        return call(o, "GET", path, NULL, &j);
    }
    int rc = call(o, "GET", "/v1/status", NULL, &j);
    if (rc || !j)
        return rc;
    /* Nothing is printed for a pool that does not exist or states the
     * daemon does not know (it checks them on the first pool asked). */
    json_t *pools = json_object_get(j, "pools");
    const char *first = NULL;
    size_t i;
    json_t *p;
    json_array_foreach(pools, i, p)
    {
        const char *name = json_string_value(json_object_get(p, "name"));
        if (!first && (!only_pool || !strcmp(name, only_pool)))
            first = name;
    }
    if (only_pool && !first) {
        json_decref(j);
        fprintf(stderr, "vdipoolctl: no pool %s (vdipoolctl status lists the pools)\n", only_pool);
        return CLI_FAILED;
    }
    if (states && first) {
        char path[512];
        snprintf(path, sizeof path, "/v1/pools/%s?summary=1&state=%s", first, states);
        json_t *checked = NULL;
        if ((rc = call(o, "GET", path, NULL, &checked)) != CLI_OK) {
            json_decref(j);
            return rc;
        }
        json_decref(checked);
    }
    json_int_t hosts = json_integer_value(json_object_get(j, "hosts"));
    json_int_t up = json_integer_value(json_object_get(j, "hosts_connected"));
    if (hosts > 1)
        printf("vdipoold %s, %lld of %lld hosts connected%s, config %s\n",
               json_string_value(json_object_get(j, "version")), (long long)up, (long long)hosts,
               up < hosts ? " (see vdipoolctl hosts)" : "",
               json_string_value(json_object_get(j, "config")));
    else
        printf("vdipoold %s, libvirt %s, config %s\n",
               json_string_value(json_object_get(j, "version")),
               json_is_true(json_object_get(j, "libvirt_connected")) ? "connected" : "DISCONNECTED",
               json_string_value(json_object_get(j, "config")));
    json_array_foreach(pools, i, p)
    {
        const char *name = json_string_value(json_object_get(p, "name"));
        if (only_pool && strcmp(name, only_pool))
            continue;
        print_pool(p);
        json_t *st = json_object_get(p, "desktops_by_state");
        /* Without --state, every state the daemon counts but "empty": it
         * then sends no empty slots (most of a pool that is mostly empty). */
        json_int_t in_use = 0;
        char in_use_states[256] = "";
        const char *key;
        json_t *count;
        json_object_foreach(st, key, count)
        {
            if (!strcmp(key, "empty"))
                continue;
            in_use += json_integer_value(count);
            size_t len = strlen(in_use_states);
            snprintf(in_use_states + len, sizeof in_use_states - len, "%s%s", len ? "," : "", key);
        }
        if (!only_pool && !states && in_use > STATUS_LISTS_AT_MOST) {
            printf("  %lld desktops: vdipoolctl status %s lists them (--state assigned: the "
                   "sessions)\n",
                   (long long)in_use, name);
            continue;
        }
        if (!states && !in_use)
            continue;
        if ((rc = list_desktops(o, name, states ? states : in_use_states, hosts > 1)) != CLI_OK)
            break;
    }
    json_decref(j);
    return rc;
}

int cli_acquire(cli_call *c)
{
    const cli_opts *o = &c->o;
    if (!o->value[1])
        return cli_usage_error("acquire takes POOL and --user NAME");
    char path[256], *body = NULL;
    snprintf(path, sizeof path, "/v1/pools/%s/acquire", c->args[0]);
    json_t *b = json_pack("{s:s}", "user", o->value[1]);
    body = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    json_t *j = NULL;
    int rc = call(o, "POST", path, body, &j);
    free(body);
    if (rc || !j)
        return rc;
    printf("%s is yours, %s: domain %s, display %s\n",
           json_string_value(json_object_get(j, "desktop")), o->value[1],
           json_string_value(json_object_get(j, "domain")),
           json_string_value(json_object_get(j, "display"))[0]
               ? json_string_value(json_object_get(j, "display"))
               : "(none)");
    json_decref(j);
    return CLI_OK;
}

int cli_release(cli_call *c)
{
    const cli_opts *o = &c->o;
    char path[256];
    snprintf(path, sizeof path, "/v1/desktops/%s/release", c->args[0]);
    json_t *b = json_pack("{s:s?}", "reason", o->value[2]);
    char *body = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    json_t *j = NULL;
    int rc = call(o, "POST", path, body, &j);
    free(body);
    if (rc || !j)
        return rc;
    printf("%s is ending: its domain and child are destroyed, and the pool refills\n", c->args[0]);
    json_decref(j);
    return CLI_OK;
}

int cli_reload(cli_call *c)
{
    const cli_opts *o = &c->o;
    json_t *j = NULL;
    int rc = call(o, "POST", "/v1/reload", NULL, &j);
    if (rc || !j)
        return rc;
    printf("reloaded\n");
    json_decref(j);
    return CLI_OK;
}

int cli_images(cli_call *c)
{
    const cli_opts *o = &c->o;
    json_t *j = NULL;
    int rc = call(o, "GET", "/v1/images", NULL, &j);
    if (rc || !j)
        return rc;
    size_t i;
    json_t *g;
    json_array_foreach(json_object_get(j, "golds"), i, g)
    {
        printf("%s [%s]\n", json_string_value(json_object_get(g, "gold")),
               json_string_value(json_object_get(g, "state")));
        size_t k;
        json_t *kid;
        json_array_foreach(json_object_get(g, "children"), k, kid)
        {
            char a[32], b2[32];
            printf("  %s  pool %s  %s allocated, %s worst case\n",
                   json_string_value(json_object_get(kid, "path")),
                   json_string_value(json_object_get(kid, "pool")),
                   vdi_format_size(
                       (uint64_t)json_integer_value(json_object_get(kid, "allocated_bytes")), a,
                       sizeof a),
                   vdi_format_size(
                       (uint64_t)json_integer_value(json_object_get(kid, "worst_case_bytes")), b2,
                       sizeof b2));
        }
    }
    json_decref(j);
    return CLI_OK;
}

/* `vdipoolctl pool rollout POOL`: a pool with rollout = "manual" moves to
 * its config's gold. */
int cli_pool_rollout(cli_call *c)
{
    const cli_opts *o = &c->o;
    char path[256];
    snprintf(path, sizeof path, "/v1/pools/%s/rollout", c->args[0]);
    json_t *j = NULL;
    int rc = call(o, "POST", path, NULL, &j);
    if (rc || !j)
        return rc;
    printf("pool %s rolls out to %s: ready desktops are replaced, sessions finish (or end "
           "after the notice with rollout = \"immediate\")\n",
           c->args[0], json_string_value(json_object_get(j, "gold")));
    json_decref(j);
    return CLI_OK;
}

/* `vdipoolctl pool drain|undrain POOL`: an operator's drain (drain.c). */
static int pool_drain(cli_call *c, bool drain)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/pools/%s/%s", c->args[0], drain ? "drain" : "undrain");
    json_t *j = NULL;
    int rc = call(&c->o, "POST", path, NULL, &j);
    if (rc || !j)
        return rc;
    json_t *states = json_object_get(j, "desktops_by_state");
    if (drain)
        printf("pool %s is drained: no new sessions, its spares end; %lld sessions run until "
               "their users log off (open it again with `vdipoolctl pool undrain %s`)\n",
               c->args[0], (long long)json_integer_value(json_object_get(states, "assigned")),
               c->args[0]);
    else
        printf("pool %s is open: it makes its spares again\n", c->args[0]);
    json_decref(j);
    return CLI_OK;
}

int cli_pool_drain(cli_call *c)
{
    return pool_drain(c, true);
}

int cli_pool_undrain(cli_call *c)
{
    return pool_drain(c, false);
}

static void print_bytes(const char *label, json_t *v)
{
    char b[32];
    if (v)
        printf("  %s %s", label, vdi_format_size((uint64_t)json_integer_value(v), b, sizeof b));
}

/* `vdipoolctl hosts`: each host's connection, state, desktops, memory and
 * datastores. */
int cli_hosts(cli_call *c)
{
    const cli_opts *o = &c->o;
    json_t *j = NULL;
    int rc = call(o, "GET", "/v1/hosts", NULL, &j);
    if (rc || !j)
        return rc;
    size_t i;
    json_t *h;
    json_array_foreach(json_object_get(j, "hosts"), i, h)
    {
        json_int_t max = json_integer_value(json_object_get(h, "max_desktops"));
        printf("%-12s %-12s %-11s desktops %lld", json_string_value(json_object_get(h, "name")),
               json_string_value(json_object_get(h, "connection")),
               json_string_value(json_object_get(h, "state")),
               (long long)json_integer_value(json_object_get(h, "desktops")));
        if (max)
            printf("/%lld", (long long)max);
        print_bytes("free memory", json_object_get(h, "free_memory"));
        print_bytes("of", json_object_get(h, "total_memory"));
        printf("\n  uri %s\n  datastores", json_string_value(json_object_get(h, "uri")));
        size_t k;
        json_t *ds;
        json_array_foreach(json_object_get(h, "datastores"), k, ds)
            printf("%s %s", k ? "," : "", json_string_value(ds));
        printf("\n");
        const char *key;
        json_t *n;
        bool any = false;
        json_object_foreach(json_object_get(h, "desktops_by_state"), key, n)
        {
            printf("%s %s %lld", any ? "," : "  by state:", key, (long long)json_integer_value(n));
            any = true;
        }
        if (any)
            printf("\n");
        if (json_object_get(h, "last_error"))
            printf("  last error: %s\n", json_string_value(json_object_get(h, "last_error")));
    }
    json_decref(j);
    return CLI_OK;
}
