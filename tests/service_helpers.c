/* service_helpers.c — see service_helpers.h. */
#include "service_helpers.h"
#include "helpers.h"
#include "vdi_client.h"
#include "vdi_engine.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void th_daemon_prepare(th_daemon *d, const char *tag, const char *uri)
{
    memset(d, 0, sizeof *d);
    char *dir = th_tempdir(tag);
    snprintf(d->dir, sizeof d->dir, "%s", dir);
    free(dir);
    /* QEMU runs as libvirt-qemu: it must reach the gold and the children.
     * Only this run's own directories are opened up (/var/tmp itself is 1777). */
    const char *root = getenv("VDI_TEST_ROOT");
    if (root)
        chmod(root, 0755);
    chmod(d->dir, 0755);
    snprintf(d->conf, sizeof d->conf, "%s/vdipool.conf", d->dir);
    snprintf(d->sock, sizeof d->sock, "%s/vdipool.sock", d->dir);
    snprintf(d->state, sizeof d->state, "%s/state", d->dir);
    snprintf(d->gold, sizeof d->gold, "%s/gold.qcow2", d->dir);
    /* Domains carry the run's id and this test process's pid: cleanup finds them by name. */
    const char *run = getenv("VDI_TEST_RUN");
    snprintf(d->prefix, sizeof d->prefix, "%s-%ld", run ? run : "v0", (long)getpid());
    snprintf(d->uri, sizeof d->uri, "%s", uri);
    char ds[1200];
    snprintf(ds, sizeof ds, "%s/ds", d->dir);
    mkdir(ds, 0755);
    const char *make = getenv("MAKE_DEMO_GOLD");
    ck_assert_msg(make != NULL, "MAKE_DEMO_GOLD is set by ctest");
    free(th_must("%s %s", make, d->gold));
    vdi_catalog *cat = NULL;
    vdi_error err = {0};
    ck_assert_msg(vdi_catalog_open(d->state, &cat, &err) == 0, "%s", err.message);
    vdi_seal_result r;
    ck_assert_msg(vdi_seal(cat, d->gold, &r, &err) == 0, "%s", err.message);
    vdi_catalog_close(cat);
}

void th_daemon_write_pool(th_daemon *d, const char *acquire_timeout, const char *golds,
                          const char *pool_body)
{
    char text[16384];
    snprintf(text, sizeof text,
             "service = { socket = \"%s\"; state_dir = \"%s\"; libvirt_uri = \"%s\";\n"
             "  log_level = \"debug\"; acquire_timeout = \"%s\"; };\n"
             "datastores = ( { name = \"local\"; path = \"%s/ds\"; reserve = \"0\";\n"
             "  max_overcommit = 1000.0; } );\n"
             "%s\n"
             "pools = ( { name = \"demo\"; desktop_prefix = \"%s\"; datastore = \"local\";\n"
             "  %s } );\n",
             d->sock, d->state, d->uri, acquire_timeout, d->dir, golds ? golds : "", d->prefix,
             pool_body);
    th_write_file(d->conf, text, strlen(text));
}

void th_daemon_add_service_setting(th_daemon *d, const char *setting)
{
    ck_assert_msg(!strpbrk(setting, "#&'\\\n"), "a setting sed can carry: %s", setting);
    free(th_must("sed -i 's#^  log_level = #  %s log_level = #' %s", setting, d->conf));
}

void th_daemon_write_config(th_daemon *d, unsigned size, unsigned spares, const char *extra)
{
    char golds[2048], body[4096];
    snprintf(golds, sizeof golds, "golds = ( { name = \"demo\"; path = \"%s\"; } );", d->gold);
    snprintf(body, sizeof body,
             "gold = \"demo\"; size = %u; spares = %u;\n"
             "  domain = { memory = \"32M\"; vcpus = 1; network = \"none\"; graphics = \"vnc\";\n"
             "             accel = \"tcg\"; };\n"
             "  %s",
             size, spares, extra ? extra : "");
    th_daemon_write_pool(d, "20s", golds, body);
}

/* The daemon as a child process, its stderr appended to vdipoold.log. */
static void spawn(th_daemon *d)
{
    const char *bin = getenv("VDIPOOLD");
    ck_assert_msg(bin != NULL, "VDIPOOLD is set by ctest");
    char log[1200];
    snprintf(log, sizeof log, "%s/vdipoold.log", d->dir);
    pid_t pid = fork();
    if (pid == 0) {
        freopen(log, "a", stderr);
        /* libvirt and glib keep process-lifetime allocations. */
        setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
        execl(bin, bin, "--config", d->conf, (char *)NULL);
        _exit(127);
    }
    ck_assert_int_gt(pid, 0);
    d->pid = pid;
}

void th_daemon_start(th_daemon *d)
{
    spawn(d);
    /* Up when the API answers (the socket exists a moment before its mode is set). */
    for (int i = 0; i < 100; i++) {
        json_t *j = NULL;
        int status = access(d->sock, F_OK) == 0 ? th_http(d, "GET", "/v1/status", NULL, &j) : 0;
        json_decref(j);
        if (status == 200)
            return;
        usleep(50000);
    }
    char *out = th_must("tail -20 %s/vdipoold.log", d->dir);
    ck_abort_msg("vdipoold did not open its socket: %s", out);
}

void th_daemon_start_until_crash(th_daemon *d, const char *point, int timeout_s)
{
    setenv("VDIPOOL_CRASH_AT", point, 1);
    th_daemon_start(d);
    unsetenv("VDIPOOL_CRASH_AT");
    int status = 0;
    for (int i = 0; i < timeout_s * 10 && waitpid(d->pid, &status, WNOHANG) != d->pid; i++)
        usleep(100000);
    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                  "vdipoold did not stop at %s within %d s (status %d)", point, timeout_s, status);
    d->pid = 0;
}

unsigned th_daemon_log_count(th_daemon *d, const char *what)
{
    char *n = th_must("grep -c -- '%s' %s/vdipoold.log; true", what, d->dir);
    unsigned v = (unsigned)atoi(n);
    free(n);
    return v;
}

bool th_daemon_log_wait(th_daemon *d, const char *what, int timeout_s)
{
    time_t end = time(NULL) + timeout_s;
    while (!th_daemon_log_count(d, what)) {
        if (time(NULL) >= end)
            return false;
        usleep(100000);
    }
    return true;
}

bool th_daemon_stopped(th_daemon *d)
{
    char path[64], stat[512] = "";
    snprintf(path, sizeof path, "/proc/%d/stat", (int)d->pid);
    FILE *f = d->pid > 0 ? fopen(path, "r") : NULL;
    if (!f)
        return false;
    size_t n = fread(stat, 1, sizeof stat - 1, f);
    fclose(f);
    stat[n] = '\0';
    const char *after_name = strrchr(stat, ')'); /* "PID (comm) STATE ..." */
    return after_name && after_name[1] == ' ' && after_name[2] == 'T';
}

void th_daemon_start_until_stop(th_daemon *d, const char *point, int timeout_s)
{
    setenv("VDIPOOL_STOP_AT", point, 1);
    spawn(d);
    unsetenv("VDIPOOL_STOP_AT");
    for (int i = 0; i < timeout_s * 10 && !th_daemon_stopped(d); i++)
        usleep(100000);
    if (!th_daemon_stopped(d)) {
        char *out = th_must("tail -20 %s/vdipoold.log", d->dir);
        ck_abort_msg("vdipoold did not stop at %s within %d s: %s", point, timeout_s, out);
    }
}

static int stop_process(th_daemon *d)
{
    kill(d->pid, SIGTERM);
    kill(d->pid, SIGCONT); /* one a test stopped hears the SIGTERM now */
    int status = 0;
    for (int i = 0; i < 100; i++) {
        if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
            d->pid = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        }
        usleep(50000);
    }
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
    return -1;
}

int th_daemon_stop(th_daemon *d)
{
    if (d->pid <= 0)
        return 0;
    int rc = stop_process(d);
    unsigned failed_ends = th_daemon_log_count(d, "event=end-failed");
    if (failed_ends && !d->end_failures_expected) {
        char *log = th_must("grep 'event=end-failed' %s/vdipoold.log | head -5", d->dir);
        ck_abort_msg("%u end(s) of desktops failed:\n%s", failed_ends, log);
    }
    return rc;
}

void th_daemon_cleanup_domains(th_daemon *d)
{
    if (strncmp(d->uri, "test:", 5) == 0 || !d->prefix[0])
        return; /* the test driver's domains live in the daemon's process */
    th_run(NULL,
           "for n in $(virsh -c %s list --all --name | grep '^%s-'); do virsh -c %s destroy $n; "
           "virsh -c %s undefine $n; done",
           d->uri, d->prefix, d->uri, d->uri);
}

int th_http(th_daemon *d, const char *method, const char *path, const char *body, json_t **out)
{
    vdi_error err = {0};
    return vdi_client_call_json(d->sock, method, path, body, out, &err);
}

json_t *th_get_desktop(th_daemon *d, const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/desktops/%s", name);
    json_t *j = NULL;
    ck_assert_int_eq(th_http(d, "GET", path, NULL, &j), 200);
    return j;
}

json_t *th_acquire(th_daemon *d, const char *user, int expect)
{
    char body[128];
    snprintf(body, sizeof body, "{\"user\": \"%s\"}", user);
    json_t *j = NULL;
    int status = th_http(d, "POST", "/v1/pools/demo/acquire", body, &j);
    char *dump = j ? json_dumps(j, 0) : NULL;
    ck_assert_msg(status == expect, "acquire for %s: HTTP %d %s", user, status, dump);
    free(dump);
    return j;
}

json_t *th_wait_ready(th_daemon *d, unsigned ready, int timeout_s)
{
    time_t end = time(NULL) + timeout_s;
    json_t *j = NULL;
    while (time(NULL) <= end) {
        json_decref(j);
        if (th_http(d, "GET", "/v1/pools/demo", NULL, &j) == 200 &&
            json_integer_value(json_object_get(json_object_get(j, "desktops_by_state"), "ready")) >=
                (json_int_t)ready)
            return j;
        usleep(100000);
    }
    char *dump = j ? json_dumps(j, 0) : NULL;
    ck_abort_msg("pool did not reach %u ready desktops in %ds: %s", ready, timeout_s,
                 dump ? dump : "(no answer)");
    return NULL;
}

json_t *th_pool(th_daemon *d)
{
    json_t *j = NULL;
    ck_assert_int_eq(th_http(d, "GET", "/v1/pools/demo", NULL, &j), 200);
    return j;
}

json_t *th_wait_pool(th_daemon *d, bool (*cond)(json_t *pool), int timeout_s, const char *what)
{
    time_t end = time(NULL) + timeout_s;
    json_t *j = NULL;
    while (time(NULL) <= end) {
        json_decref(j);
        j = th_pool(d);
        if (cond(j))
            return j;
        usleep(200000);
    }
    char *dump = json_dumps(j, 0);
    ck_abort_msg("%s within %ds: %s", what, timeout_s, dump);
    return NULL;
}

void th_daemon_seal_new_gold(th_daemon *d, const char *name, char *out, size_t len)
{
    snprintf(out, len, "%s/%s", d->dir, name);
    free(th_must("%s %s", getenv("MAKE_DEMO_GOLD"), out));
    vdi_catalog *cat = NULL;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_catalog_open(d->state, &cat, &err), 0);
    vdi_seal_result sr;
    ck_assert_msg(vdi_seal(cat, out, &sr, &err) == 0, "%s", err.message);
    vdi_catalog_close(cat);
}
