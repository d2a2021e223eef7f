/* bench_util.c — see bench_util.h. */
#include "bench_util.h"

#include <sqlite3.h>
#include <stdbool.h>
#include <time.h>
#include "vdi_client.h"
#include "vdi_engine.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int bench_prepare(const char *work, const char *daemon, const char *make_gold, const char *gold,
                  unsigned gold_mib)
{
    /* vdipoolctl sits beside vdipoold in the build tree. */
    char ctl_dir[512], size[16] = "", cmd[4096];
    snprintf(ctl_dir, sizeof ctl_dir, "%s", daemon);
    char *slash = strrchr(ctl_dir, '/');
    if (slash)
        *slash = '\0';
    if (gold_mib)
        snprintf(size, sizeof size, " %u", gold_mib);
    snprintf(cmd, sizeof cmd,
             "chattr -i %s 2>/dev/null; rm -rf %s && mkdir -p %s/ds && %s %s%s >/dev/null && "
             "VDIPOOL_STATE_DIR=%s/state %s/vdipoolctl image seal %s >/dev/null",
             gold, work, work, make_gold, gold, size, work, ctl_dir, gold);
    if (system(cmd) != 0) {
        fprintf(stderr, "bench: cannot prepare %s\n", work);
        return -1;
    }
    return 0;
}

pid_t bench_start_daemon(const char *daemon, const char *work, const char *config_text)
{
    char conf[600];
    snprintf(conf, sizeof conf, "%s/vdipool.conf", work);
    FILE *f = fopen(conf, "w");
    if (!f || fputs(config_text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "bench: cannot write %s\n", conf);
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        char log[600];
        snprintf(log, sizeof log, "%s/vdipoold.log", work);
        if (!freopen(log, "w", stderr))
            _exit(127);
        execl(daemon, daemon, "--config", conf, (char *)NULL);
        _exit(127);
    }
    return pid;
}

void bench_stop_daemon(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

void bench_cleanup(const char *work, const char *gold)
{
    char cmd[2048];
    /* Sealed images are immutable: the gold, and a resume pool's template child. */
    snprintf(cmd, sizeof cmd, "chattr -i %s %s/*.qcow2 %s/ds/*.qcow2 2>/dev/null; rm -rf %s", gold,
             work, work, work);
    if (system(cmd) != 0)
        fprintf(stderr, "bench: %s left behind\n", work);
}

long bench_rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

int bench_count(const char *sock, const char *state)
{
    json_t *j = NULL;
    vdi_error err = {0};
    int n = -1;
    if (vdi_client_call_json(sock, "GET", "/v1/pools/bench?summary=1", NULL, &j, &err) == 200)
        n = (int)json_integer_value(
            json_object_get(json_object_get(j, "desktops_by_state"), state));
    json_decref(j);
    return n;
}

int bench_record_children(const char *work, const char *gold, const char *prefix, unsigned n,
                          unsigned width, const char *pool)
{
    char state[600];
    snprintf(state, sizeof state, "%s/state", work);
    vdi_catalog *cat = NULL;
    vdi_cloner *cloner = NULL;
    vdi_error err = {0};
    vdi_clone_options opts;
    vdi_clone_options_init(&opts);
    char **names = calloc(n ? n : 1, sizeof *names);
    int rc = -1;
    if (!names || vdi_catalog_open(state, &cat, &err) < 0 ||
        vdi_cloner_new(gold, &opts, &cloner, &err) < 0)
        goto out;
    for (unsigned i = 0; i < n; i++)
        if (asprintf(&names[i], "%s/ds/%s-%0*u.qcow2", work, prefix, (int)width, i + 1) < 0)
            goto out;
    vdi_child_meta meta = {.datastore = "local", .pool = pool, .slot = -1};
    size_t made = 0;
    if (n && vdi_clone_batch_recorded(cat, cloner, names, n, &meta, &made, &err) < 0)
        goto out;
    rc = 0;
out:
    if (rc < 0)
        fprintf(stderr, "bench: cannot make %u children: %s\n", n, err.message);
    for (unsigned i = 0; names && i < n; i++)
        free(names[i]);
    free(names);
    vdi_cloner_free(cloner);
    vdi_catalog_close(cat);
    return rc;
}

int bench_wait_ready(const char *sock, const char *work, pid_t pid, unsigned want,
                     double limit_s, unsigned poll_ms, int *ready)
{
    double deadline = bench_now() + limit_s;
    int n;
    while ((n = bench_count(sock, "ready")) < (int)want) {
        if (ready)
            *ready = n;
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            fprintf(stderr, "bench: vdipoold exited; see %s/vdipoold.log\n", work);
            return -1;
        }
        if (bench_now() > deadline)
            return -2;
        usleep(poll_ms * 1000);
    }
    if (ready)
        *ready = n;
    return 0;
}

int bench_record_sessions(const char *work, const char *pool, const char *prefix, unsigned n,
                          unsigned width, unsigned long ended, unsigned open_every)
{
    char path[700];
    snprintf(path, sizeof path, "%s/state/catalog.db", work);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_open(path, &db) != SQLITE_OK ||
        sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "INSERT INTO sessions(pool, desktop, user, started_at, ended_at, "
                           "end_reason, final_bytes) VALUES(?,?,?,?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    long now = (long)time(NULL);
    char desktop[128], user[64];
    for (unsigned long i = 0; i < ended + (open_every ? n / open_every : 0); i++) {
        bool open = i >= ended;
        unsigned slot = open ? (unsigned)(i - ended) * open_every + 1 : (unsigned)(i % n) + 1;
        long started = open ? now - 600 : now - 365L * 86400 + (long)(i * (365UL * 86400 / (ended + 1)));
        snprintf(desktop, sizeof desktop, "%s-%0*u", prefix, (int)width, slot);
        snprintf(user, sizeof user, "user%lu", open ? (unsigned long)slot : i % 5000);
        sqlite3_bind_text(st, 1, pool, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, desktop, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 3, user, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 4, started);
        if (open) {
            sqlite3_bind_null(st, 5);
            sqlite3_bind_null(st, 6);
            sqlite3_bind_null(st, 7);
        } else {
            sqlite3_bind_int64(st, 5, started + 3600);
            sqlite3_bind_text(st, 6, "released", -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 7, 1 << 20);
        }
        if (sqlite3_step(st) != SQLITE_DONE)
            goto out;
        sqlite3_reset(st);
    }
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK)
        rc = 0;
    /* As a daemon that ran before left it: its indexes built over the
     * history (the first start of a new version builds them once). */
    char state[700];
    snprintf(state, sizeof state, "%s/state", work);
    vdi_catalog *cat = NULL;
    vdi_error err = {0};
    if (rc == 0 && vdi_catalog_open(state, &cat, &err) < 0) {
        fprintf(stderr, "bench: %s\n", err.message);
        rc = -2;
    }
    vdi_catalog_close(cat);
out:
    if (rc == -1)
        fprintf(stderr, "bench: cannot record sessions in %s: %s\n", path,
                db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc < 0 ? -1 : 0;
}
