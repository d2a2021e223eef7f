/* vdipoold — the pool service: one libuv loop that keeps each pool's spare
 * desktops ready, hands them out through the control API, and destroys a
 * desktop with its child when its session ends.
 *
 *   vdipoold [--config PATH] [--state-dir DIR]
 *
 * SIGHUP reloads the config (an invalid one is refused, the running one
 * stays); SIGTERM stops taking work, leaves running sessions alone and exits 0.
 * This file is main and the signal and timer wiring; the rooms are named in
 * daemon.h. */
#include "api.h"
#include "api_routes.h"
#include "daemon.h"
#include "dashboard.h"
#include "libvirt_events.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

/* libvirt prints every error to stderr by default; ours are logged with context. */
static void quiet_libvirt(void *opaque, virErrorPtr e)
{
    (void)opaque;
    (void)e;
}

/* One vdipoold per state directory: an exclusive lock on STATE/vdipoold.lock,
 * held for the process's life, with the holder's pid inside. Returns the
 * lock's fd, or -1 after printing who holds it. */
static int lock_state_dir(const char *state_dir)
{
    if (mkdir(state_dir, 0750) < 0 && errno != EEXIST) {
        fprintf(stderr, "vdipoold: cannot create the state directory %s: %s\n", state_dir,
                strerror(errno));
        return -1;
    }
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/vdipoold.lock", state_dir) >= (int)sizeof path) {
        fprintf(stderr, "vdipoold: the state directory path %s is too long\n", state_dir);
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        fprintf(stderr, "vdipoold: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        fprintf(stderr,
                "vdipoold: another vdipoold (pid %s) is running with the state directory %s; "
                "stop it first, or give this one its own --state-dir\n",
                pid[0] ? pid : "unknown", state_dir);
        close(fd);
        return -1;
    }
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)len, 0) != len)
        fprintf(stderr, "vdipoold: cannot write the pid into %s: %s\n", path, strerror(errno));
    return fd;
}

static void on_tick(uv_timer_t *t)
{
    service *svc = t->data;
    hosts_tick(svc);
    service_converge(svc);
    if (svc->adopted) {
        scrub_step(svc);
        refresh_step(svc);
        history_step(svc);
    }
    events_tick(svc);
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
            ready += svc->pools[i]->desktops[j]->state == DESKTOP_READY;
    }
    unsigned connected = 0;
    for (size_t i = 0; i < svc->nhosts; i++)
        connected += svc->hosts[i]->online;
    sd_notifyf(0, "STATUS=%u of %u spare desktops ready, %u of %zu hosts connected", ready,
               wanted, connected, svc->nhosts);
}

static void reloaded(void *ctx, int rc, json_t *errors)
{
    (void)ctx;
    (void)rc;
    json_decref(errors);
    sd_notify(0, "READY=1");
}

static void on_sighup(uv_signal_t *s, int signum)
{
    (void)signum;
    svc_log("info", "event=sighup");
    sd_notify(0, "RELOADING=1");
    if (service_reload(s->data, reloaded, NULL) < 0)
        svc_log("error", "event=reload-not-queued; send SIGHUP again");
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
    durable_stop(svc); /* its answers go out while their connections are open */
    start_slots_stop(svc);
    api_server_stop(svc->api);
    svc->api = NULL;
    sessions_fail_waiters(svc);
    events_stop(svc);
    hosts_stop(svc);
    /* Work in flight finishes (its results are applied), then the loop ends. */
    uv_walk(svc->loop, close_walk, NULL);
}

/* Every job (clone, start, end, refresh, adoption, reload) runs on libuv's
 * thread pool, which has 4 threads unless told otherwise before its first
 * use. Jobs spend most of their time waiting for the disk or libvirt, so the
 * pool gets a thread for each clone and start the config allows at once and
 * four more for ends and housekeeping; an operator's UV_THREADPOOL_SIZE
 * wins. A reload that raises the limits takes effect at the next start. */
static void size_thread_pool(const vdi_service_config *sc)
{
    if (getenv("UV_THREADPOOL_SIZE"))
        return;
    unsigned threads = sc->max_parallel_clones + sc->max_parallel_starts + 4;
    char value[16];
    snprintf(value, sizeof value, "%u", threads > 128 ? 128 : threads);
    setenv("UV_THREADPOOL_SIZE", value, 1);
}

/* API connections, clones' files, the catalog and libvirt all take file
 * descriptors, and a soft limit of 1024 is common: it is raised to the hard
 * limit (libuv polls with epoll, so no select() ceiling applies). The API
 * keeps room for the rest (api_server.c). */
static void raise_open_files_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    rlim_t before = rl.rlim_cur;
    if (rl.rlim_cur != rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
            svc_log("warning", "event=open-files-not-raised limit=%llu reason=\"%s\"",
                    (unsigned long long)before, strerror(errno));
            return;
        }
    }
    svc_log("debug", "event=open-files limit=%llu was=%llu", (unsigned long long)rl.rlim_cur,
            (unsigned long long)before);
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
    static const struct option longopts[] = {{"config", required_argument, NULL, 'c'},
                                             {"state-dir", required_argument, NULL, 's'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "c:s:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 's': state_dir = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    log_configure(VDI_LOG_INFO, getenv("JOURNAL_STREAM") != NULL);
    virSetErrorFunc(NULL, quiet_libvirt);
    const char *config_path = config && *config ? config : VDI_CONFIG_DEFAULT_PATH;

    vdi_config *cfg = NULL;
    if (service_load_config(config_path, NULL, &cfg, NULL) < 0) {
        fprintf(stderr,
                "vdipoold: %s is not valid (see above); run `vdipoolctl config check "
                "--config %s`\n",
                config_path, config_path);
        return 1;
    }
    const vdi_service_config *sc = vdi_config_service(cfg);
    log_set_level(sc->log_level);
    size_thread_pool(sc);
    raise_open_files_limit();
    svc.state_dir = strdup(state_dir && *state_dir ? state_dir : sc->state_dir);
    vdi_error err = {0};
    vdi_catalog *catalog = NULL;
    if (!svc.state_dir) {
        fprintf(stderr, "vdipoold: out of memory\n");
        return 1;
    }
    int state_lock = lock_state_dir(svc.state_dir);
    if (state_lock < 0) {
        vdi_config_unref(cfg);
        return 1;
    }
    if (vdi_catalog_open(svc.state_dir, &catalog, &err) < 0) {
        fprintf(stderr, "vdipoold: %s\n", err.message);
        vdi_config_unref(cfg);
        return 1;
    }
    if (vdi_catalog_rolled_forward(catalog) || vdi_catalog_rolled_back(catalog))
        svc_log("info", "event=recovered finished=%u undone=%u",
                vdi_catalog_rolled_forward(catalog), vdi_catalog_rolled_back(catalog));
    /* Again with the catalog: gold families resolve to their versions. */
    vdi_config_unref(cfg);
    if (service_load_config(config_path, catalog, &cfg, NULL) < 0) {
        fprintf(stderr,
                "vdipoold: %s is not valid (see above); run `vdipoolctl config check "
                "--config %s`\n",
                config_path, config_path);
        vdi_catalog_close(catalog);
        return 1;
    }
    uv_loop_t *loop = uv_default_loop();
    if (service_init(&svc, loop, config_path, cfg, catalog, &real_desktop_ops) < 0) {
        fprintf(stderr, "vdipoold: out of memory setting up the pools\n");
        return 1;
    }
    svc.desktop_changed = events_desktop_changed; /* GET /v1/events */
    int durable_rc = durable_start(&svc);
    if (durable_rc < 0)
        svc_log("error",
                "event=no-catalog-flusher reason=\"%s\"; acquires are answered before their "
                "session is on disk",
                uv_strerror(durable_rc));
    int slots_rc = start_slots_start(&svc);
    if (slots_rc < 0)
        svc_log("warning",
                "event=start-slots-held reason=\"%s\"; each start holds its slot of "
                "max_parallel_starts until the desktop is ready",
                uv_strerror(slots_rc));
    sc = vdi_config_service(svc.config);
    if (api_server_start(loop, sc, api_route, dashboard_serve, &svc, &svc.api, &err) < 0) {
        fprintf(stderr, "vdipoold: %s\n", err.message);
        return 1;
    }
    int rc = uv_timer_init(loop, &svc.tick);
    svc.tick.data = &svc;
    if (rc == 0)
        rc = uv_timer_start(&svc.tick, on_tick, 0, 1000);
    uv_signal_t *sigs[3] = {&svc.sighup, &svc.sigterm, &svc.sigint};
    int signums[3] = {SIGHUP, SIGTERM, SIGINT};
    uv_signal_cb handlers[3] = {on_sighup, on_sigterm, on_sigterm};
    for (int i = 0; i < 3 && rc == 0; i++) {
        rc = uv_signal_init(loop, sigs[i]);
        sigs[i]->data = &svc;
        if (rc == 0)
            rc = uv_signal_start(sigs[i], handlers[i], signums[i]);
    }
    if (rc < 0) {
        fprintf(stderr, "vdipoold: cannot set up timers and signals: %s\n", uv_strerror(rc));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    svc_log("info", "event=started config=%s state_dir=%s pools=%zu", svc.config_path,
            svc.state_dir, svc.npools);
    sd_notify(0, "STATUS=starting desktops");
    hosts_start(&svc);

    uv_run(loop, UV_RUN_DEFAULT);

    hosts_close(&svc);
    service_shutdown(&svc);
    start_slots_free(&svc); /* every job has finished */
    if (uv_loop_close(loop) != 0)
        svc_log("debug", "event=loop-not-closed: handles still open at exit");
    vdi_catalog_close(catalog);
    close(state_lock);
    svc_log("info", "event=stopped");
    return 0;
}
