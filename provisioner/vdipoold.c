/* vdipoold — the pool service: one libuv loop that keeps each pool's spare
 * desktops ready, hands them out through the control API, and destroys a
 * desktop with its child when its session ends.
 *
 *   vdipoold [--config PATH] [--state-dir DIR]
 *
 * SIGHUP reloads the config (an invalid one is refused, the running one
 * stays); SIGTERM stops taking work, leaves running sessions alone and exits 0. */
#include "glue.h"
#include "service.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

static vdi_log_level log_level = VDI_LOG_INFO;
static bool under_journal;

void svc_log(const char *level, const char *fmt, ...)
{
    vdi_log_level l = !strcmp(level, "debug")     ? VDI_LOG_DEBUG
                      : !strcmp(level, "warning") ? VDI_LOG_WARNING
                      : !strcmp(level, "error")   ? VDI_LOG_ERROR
                                                  : VDI_LOG_INFO;
    if (l < log_level)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (under_journal) {
        /* journald reads the priority from the <N> prefix. */
        int prio = l == VDI_LOG_DEBUG ? 7 : l == VDI_LOG_INFO ? 6 : l == VDI_LOG_WARNING ? 4 : 3;
        fprintf(stderr, "<%d>%s\n", prio, msg);
    } else {
        char ts[32];
        time_t t = time(NULL);
        struct tm tm;
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
        fprintf(stderr, "%s %s %s\n", ts, level, msg);
    }
}

/* libvirt prints every error to stderr by default; ours are logged with context. */
static void quiet_libvirt(void *opaque, virErrorPtr e)
{
    (void)opaque;
    (void)e;
}

static int load_config(service *svc, vdi_config **out, json_t **errors_json)
{
    vdi_config_options opts = { .check_image = glue_check_gold };
    vdi_config_errors *errors = NULL;
    int rc = vdi_config_load(svc->config_path, &opts, out, &errors);
    if (rc < 0) {
        json_t *arr = json_array();
        for (size_t i = 0; i < vdi_config_errors_count(errors); i++) {
            const vdi_config_error *e = vdi_config_errors_get(errors, i);
            svc_log("error", "event=config-error file=%s line=%d message=\"%s\"", e->file, e->line,
                    e->message);
            json_array_append_new(arr, json_pack("{s:s,s:i,s:s}", "file", e->file, "line",
                                                 e->line, "message", e->message));
        }
        vdi_config_errors_free(errors);
        if (errors_json)
            *errors_json = arr;
        else
            json_decref(arr);
    }
    return rc;
}

int service_reload(service *svc, json_t **errors)
{
    vdi_config *cfg = NULL;
    if (load_config(svc, &cfg, errors) < 0) {
        svc_log("error", "event=reload-refused config=%s; the running config stays",
                svc->config_path);
        return -EINVAL;
    }
    const vdi_service_config *a = vdi_config_service(svc->config), *b = vdi_config_service(cfg);
    if (strcmp(a->socket_path, b->socket_path) || strcmp(a->state_dir, b->state_dir) ||
        strcmp(a->libvirt_uri, b->libvirt_uri))
        svc_log("warning", "event=reload-partial: socket, state_dir and libvirt_uri take effect "
                           "at the next start");
    log_level = b->log_level;
    service_apply_config(svc, cfg, false);
    svc_log("info", "event=reloaded config=%s pools=%zu", svc->config_path,
            vdi_config_pool_count(cfg));
    sd_notify(0, "RELOADING=0\nREADY=1");
    service_converge(svc);
    return 0;
}

static void on_tick(uv_timer_t *t)
{
    service *svc = t->data;
    service_converge(svc); /* reconnecting is the back-off timer's job */
    if (svc->adopted)
        service_scrub_step(svc);
    /* Ready for systemd once the API listens and running desktops are
     * adopted; spares may take longer (or be blocked), STATUS says which. */
    static bool told;
    if (svc->adopted && !told) {
        told = true;
        sd_notify(0, "READY=1");
    }
    unsigned ready = 0, wanted = 0;
    for (size_t i = 0; i < svc->npools; i++) {
        wanted += svc->pools[i]->cfg->spares;
        for (unsigned j = 0; j < svc->pools[i]->nslots; j++)
            ready += svc->pools[i]->desktops[j].state == DESKTOP_READY;
    }
    sd_notifyf(0, "STATUS=%u of %u spare desktops ready, libvirt %s", ready, wanted,
               svc->conn ? "connected" : "disconnected");
}

static void on_sighup(uv_signal_t *s, int signum)
{
    (void)signum;
    svc_log("info", "event=sighup");
    service_reload(s->data, NULL);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void on_sigterm(uv_signal_t *s, int signum)
{
    service *svc = s->data;
    if (svc->stopping)
        return;
    svc_log("info", "event=stopping signal=%d; running desktops and sessions are left alone",
            signum);
    sd_notify(0, "STOPPING=1");
    svc->stopping = true;
    api_stop(svc);
    uv_timer_stop(&svc->tick);
    uv_close((uv_handle_t *)&svc->tick, NULL);
    uv_close((uv_handle_t *)&svc->sighup, NULL);
    uv_close((uv_handle_t *)&svc->sigterm, NULL);
    uv_close((uv_handle_t *)&svc->sigint, NULL);
    libvirt_events_stop();
    /* Pending acquires get an answer; work in flight finishes, then the loop ends. */
    uv_walk(svc->loop, close_walk, NULL);
}

static void usage(FILE *out)
{
    fprintf(out, "usage: vdipoold [--config PATH] [--state-dir DIR]\n"
                 "  --config PATH     default $VDIPOOL_CONFIG or " VDI_CONFIG_DEFAULT_PATH "\n"
                 "  --state-dir DIR   overrides service.state_dir (also $VDIPOOL_STATE_DIR)\n");
}

int main(int argc, char **argv)
{
    static service svc;
    const char *config = getenv("VDIPOOL_CONFIG");
    const char *state_dir = getenv("VDIPOOL_STATE_DIR");
    static const struct option longopts[] = { { "config", required_argument, NULL, 'c' },
                                              { "state-dir", required_argument, NULL, 's' },
                                              { "help", no_argument, NULL, 'h' },
                                              { NULL, 0, NULL, 0 } };
    int ch;
    while ((ch = getopt_long(argc, argv, "c:s:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 's': state_dir = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    under_journal = getenv("JOURNAL_STREAM") != NULL;
    virSetErrorFunc(NULL, quiet_libvirt);
    snprintf(svc.config_path, sizeof svc.config_path, "%s",
             config && *config ? config : VDI_CONFIG_DEFAULT_PATH);
    svc.loop = uv_default_loop();
    pthread_mutex_init(&svc.catalog_lock, NULL);

    vdi_config *cfg = NULL;
    if (load_config(&svc, &cfg, NULL) < 0) {
        fprintf(stderr, "vdipoold: %s is not valid (see above); run `vdipoolctl config check "
                        "--config %s`\n",
                svc.config_path, svc.config_path);
        return 1;
    }
    log_level = vdi_config_service(cfg)->log_level;
    snprintf(svc.state_dir, sizeof svc.state_dir, "%s",
             state_dir && *state_dir ? state_dir : vdi_config_service(cfg)->state_dir);
    vdi_error err = { 0 };
    if (vdi_catalog_open(svc.state_dir, &svc.catalog, &err) < 0) {
        fprintf(stderr, "vdipoold: %s\n", err.message);
        return 1;
    }
    if (vdi_catalog_rolled_forward(svc.catalog) || vdi_catalog_rolled_back(svc.catalog))
        svc_log("info", "event=recovered finished=%u undone=%u",
                vdi_catalog_rolled_forward(svc.catalog), vdi_catalog_rolled_back(svc.catalog));
    service_apply_config(&svc, cfg, true);
    if (api_start(&svc, &err) < 0) {
        fprintf(stderr, "vdipoold: %s\n", err.message);
        return 1;
    }
    if (libvirt_events_start(&svc) < 0) {
        fprintf(stderr, "vdipoold: cannot start libvirt's event loop\n");
        return 1;
    }
    uv_timer_init(svc.loop, &svc.tick);
    svc.tick.data = &svc;
    uv_timer_start(&svc.tick, on_tick, 0, 1000);
    uv_signal_init(svc.loop, &svc.sighup);
    svc.sighup.data = &svc;
    uv_signal_start(&svc.sighup, on_sighup, SIGHUP);
    uv_signal_init(svc.loop, &svc.sigterm);
    svc.sigterm.data = &svc;
    uv_signal_start(&svc.sigterm, on_sigterm, SIGTERM);
    uv_signal_init(svc.loop, &svc.sigint);
    svc.sigint.data = &svc;
    uv_signal_start(&svc.sigint, on_sigterm, SIGINT);
    signal(SIGPIPE, SIG_IGN);
    svc_log("info", "event=started config=%s state_dir=%s pools=%zu", svc.config_path,
            svc.state_dir, svc.npools);
    sd_notify(0, "STATUS=starting desktops");
    libvirt_connect(&svc);

    uv_run(svc.loop, UV_RUN_DEFAULT);

    if (svc.conn)
        virConnectClose(svc.conn);
    vdi_catalog_close(svc.catalog);
    svc_log("info", "event=stopped");
    return 0;
}
