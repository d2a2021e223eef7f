/* api_routes.c — what each endpoint of the control API does. */
#include "api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void not_found(request *r, const char *what)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", what);
    request_respond_json(r, 404, json_pack("{s:s}", "error", msg));
}

static json_t *status_json(service *svc)
{
    json_t *pools = json_array();
    for (size_t i = 0; i < svc->npools; i++)
        json_array_append_new(pools, pool_json(svc->pools[i], false));
    return json_pack("{s:s,s:b,s:s,s:s,s:o}", "version", "0.1.0", "libvirt_connected",
                     svc->conn != NULL, "config", svc->config_path, "state_dir", svc->state_dir,
                     "pools", pools);
}

static json_t *space_json(service *svc)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < vdi_config_datastore_count(svc->config); i++) {
        const vdi_datastore_config *ds = vdi_config_datastore(svc->config, i);
        vdi_space_report s;
        vdi_error err = { 0 };
        if (vdi_space_measure(ds->path, ds->reserve_bytes, ds->reserve_percent, &s, &err) < 0) {
            json_array_append_new(arr, json_pack("{s:s,s:s}", "name", ds->name, "error",
                                                 err.message));
            continue;
        }
        json_array_append_new(
            arr, json_pack("{s:s,s:s,s:I,s:I,s:I,s:i,s:I,s:I,s:f,s:f}", "name", ds->name, "path",
                           ds->path, "capacity", (json_int_t)s.capacity, "free",
                           (json_int_t)s.free, "reserve", (json_int_t)s.reserve, "children",
                           (int)s.children, "children_allocated",
                           (json_int_t)s.children_allocated, "worst_case",
                           (json_int_t)s.worst_case, "overcommit", s.overcommit,
                           "max_overcommit", ds->max_overcommit));
    }
    return json_pack("{s:o}", "datastores", arr);
}

static json_t *images_json(service *svc)
{
    pthread_mutex_lock(&svc->catalog_lock);
    vdi_gold_info *golds = NULL;
    size_t ng = 0;
    vdi_catalog_golds(svc->catalog, &golds, &ng, NULL);
    json_t *arr = json_array();
    for (size_t i = 0; i < ng; i++) {
        vdi_child_info *kids = NULL;
        size_t nk = 0;
        vdi_catalog_children(svc->catalog, golds[i].path, &kids, &nk, NULL);
        json_t *children = json_array();
        for (size_t k = 0; k < nk; k++) {
            vdi_image *img = NULL;
            uint64_t alloc = 0, vsize = golds[i].virtual_size;
            if (vdi_image_open(kids[k].path, &img, NULL) == 0) {
                alloc = vdi_image_allocated_bytes(img);
                vsize = vdi_image_virtual_size(img);
                vdi_image_close(img);
            }
            json_array_append_new(
                children, json_pack("{s:s,s:s,s:i,s:I,s:I}", "path", kids[k].path, "pool",
                                    kids[k].pool, "slot", kids[k].slot, "allocated_bytes",
                                    (json_int_t)alloc, "worst_case_bytes",
                                    (json_int_t)(vsize > alloc ? vsize - alloc : 0)));
        }
        free(kids);
        json_array_append_new(arr, json_pack("{s:s,s:s,s:I,s:o}", "gold", golds[i].path, "state",
                                             vdi_gold_state_name(golds[i].state), "virtual_size",
                                             (json_int_t)golds[i].virtual_size, "children",
                                             children));
    }
    free(golds);
    pthread_mutex_unlock(&svc->catalog_lock);
    return json_pack("{s:o}", "golds", arr);
}

static void acquired(void *ctx, int status, json_t *body)
{
    request_respond_json(ctx, status, body);
}

/* Splits "/v1/pools/NAME/acquire" into parts; returns how many. */
static int split(const char *path, char parts[6][128])
{
    int n = 0;
    const char *p = path;
    while (*p && n < 6) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        size_t len = strcspn(p, "/");
        snprintf(parts[n++], 128, "%.*s", (int)(len < 127 ? len : 127), p);
        p += len;
    }
    return n;
}

void api_route(service *svc, request *r)
{
    const char *m = request_method(r);
    char parts[6][128];
    int n = split(request_path(r), parts);
    bool get = !strcmp(m, "GET"), post = !strcmp(m, "POST");

    if (n == 1 && !strcmp(parts[0], "metrics") && get) {
        char *text = NULL;
        service_write_metrics(svc, &text);
        request_respond_text(r, 200, "text/plain; version=0.0.4", text ? text : "");
        free(text);
        return;
    }
    if (n < 2 || strcmp(parts[0], "v1")) {
        not_found(r, "unknown path; see the README's API reference");
        return;
    }
    if (svc->stopping && post) {
        request_respond_json(r, 503, json_pack("{s:s}", "error", "vdipoold is shutting down"));
        return;
    }
    if (n == 2 && !strcmp(parts[1], "status") && get) {
        request_respond_json(r, 200, status_json(svc));
    } else if (n == 2 && !strcmp(parts[1], "pools") && get) {
        json_t *arr = json_array();
        for (size_t i = 0; i < svc->npools; i++)
            json_array_append_new(arr, pool_json(svc->pools[i], false));
        request_respond_json(r, 200, json_pack("{s:o}", "pools", arr));
    } else if (n == 3 && !strcmp(parts[1], "pools") && get) {
        pool *p = service_find_pool(svc, parts[2]);
        if (p)
            request_respond_json(r, 200, pool_json(p, true));
        else
            not_found(r, "no such pool");
    } else if (n == 4 && !strcmp(parts[1], "pools") && !strcmp(parts[3], "acquire") && post) {
        json_error_t jerr;
        json_t *body = json_loads(request_body(r), 0, &jerr);
        const char *user = json_string_value(json_object_get(body, "user"));
        if (!user || !*user || strlen(user) > 120) {
            char msg[256];
            snprintf(msg, sizeof msg, "the body must be JSON like {\"user\": \"alice\"}%s%s",
                     body ? "" : ": ", body ? "" : jerr.text);
            request_respond_json(r, 400, json_pack("{s:s}", "error", msg));
        } else {
            request_hold(r);
            service_acquire(svc, parts[2], user, acquired, r);
        }
        json_decref(body);
    } else if (n == 3 && !strcmp(parts[1], "desktops") && get) {
        desktop *d = service_find_desktop(svc, parts[2]);
        if (d)
            request_respond_json(r, 200, desktop_json(d));
        else
            not_found(r, "no such desktop");
    } else if (n == 4 && !strcmp(parts[1], "desktops") && !strcmp(parts[3], "release") && post) {
        desktop *d = service_find_desktop(svc, parts[2]);
        json_t *body = json_loads(request_body(r), 0, NULL);
        const char *reason = json_string_value(json_object_get(body, "reason"));
        if (!d) {
            not_found(r, "no such desktop");
        } else if (d->state != DESKTOP_ASSIGNED && !(reason && !strcmp(reason, "operator"))) {
            char msg[256];
            snprintf(msg, sizeof msg, "desktop %s is %s, not assigned", d->name,
                     desktop_state_name(d->state));
            request_respond_json(r, 400, json_pack("{s:s}", "error", msg));
        } else {
            pool_end_session(d, reason && !strcmp(reason, "operator") ? "operator" : "released");
            request_respond_json(r, 200, desktop_json(d));
        }
        json_decref(body);
    } else if (n == 2 && !strcmp(parts[1], "space") && get) {
        request_respond_json(r, 200, space_json(svc));
    } else if (n == 2 && !strcmp(parts[1], "images") && get) {
        request_respond_json(r, 200, images_json(svc));
    } else if (n == 2 && !strcmp(parts[1], "reload") && post) {
        json_t *errors = NULL;
        if (service_reload(svc, &errors) == 0)
            request_respond_json(r, 200, json_pack("{s:b}", "reloaded", 1));
        else
            request_respond_json(r, 400, json_pack("{s:b,s:o}", "reloaded", 0, "errors", errors));
    } else {
        not_found(r, "unknown path or method; see the README's API reference");
    }
}
