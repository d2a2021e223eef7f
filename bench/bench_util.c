/* bench_util.c — see bench_util.h. */
#include "bench_util.h"

#include <dirent.h>

#include <sqlite3.h>
#include <stdbool.h>
#include <time.h>
#include "vdi_client.h"
#include "vdi_engine.h"

#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
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

/* utime + stime of a /proc stat file (a process's or one thread's), in
 * seconds; -1 when it cannot be read. */
static double stat_cpu_seconds(const char *path)
{
    char line[1024];
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    bool ok = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    /* Fields after the command name (in parentheses, which may hold spaces):
     * state is field 3, utime 14 and stime 15. */
    const char *p = ok ? strrchr(line, ')') : NULL;
    unsigned long long utime, stime;
    if (!p ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

double bench_cpu_seconds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    return stat_cpu_seconds(path);
}

const char *const bench_role_names[BENCH_ROLES] = {"loop", "flusher", "workers", "libvirt events",
                                                   "other"};

static int role_of(const char *comm)
{
    static const char *const comms[] = {"vdipoold", "vdi-flusher", "vdi-worker", "vdi-lv-events"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(comm, comms[i]))
            return i;
    return BENCH_OTHER;
}

int bench_threads_by_role(pid_t pid, bench_role_use out[BENCH_ROLES])
{
    memset(out, 0, sizeof(bench_role_use) * BENCH_ROLES);
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%ld/task", (long)pid);
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char path[600], line[256], comm[64] = "";
        snprintf(path, sizeof path, "%s/%s/comm", dir, e->d_name);
        FILE *f = fopen(path, "r");
        if (f && fgets(comm, sizeof comm, f))
            comm[strcspn(comm, "\n")] = '\0';
        if (f)
            fclose(f);
        bench_role_use *u = &out[role_of(comm)];
        snprintf(path, sizeof path, "%s/%s/stat", dir, e->d_name);
        double cpu = stat_cpu_seconds(path);
        if (cpu > 0)
            u->cpu_s += cpu;
        snprintf(path, sizeof path, "%s/%s/status", dir, e->d_name);
        unsigned long long n;
        f = fopen(path, "r");
        while (f && fgets(line, sizeof line, f))
            if (sscanf(line, "voluntary_ctxt_switches: %llu", &n) == 1)
                u->sleeps += (double)n;
        if (f)
            fclose(f);
    }
    closedir(d);
    return 0;
}

double bench_sleeps_of(const bench_role_use use[BENCH_ROLES])
{
    double total = 0;
    for (int k = 0; k < BENCH_ROLES; k++)
        total += use[k].sleeps;
    return total;
}

void bench_machine_cpu(double *busy, double *idle, double *iowait, double *steal)
{
    *busy = *idle = *iowait = *steal = 0;
    FILE *f = fopen("/proc/stat", "r");
    unsigned long long v[8] = {0};
    if (f && fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                    &v[4], &v[5], &v[6], &v[7]) == 8) {
        double tick = (double)sysconf(_SC_CLK_TCK);
        *idle = (double)(v[3] + v[4]) / tick;
        *iowait = (double)v[4] / tick;
        *busy = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tick;
        *steal = (double)v[7] / tick;
    }
    if (f)
        fclose(f);
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

/* ---- a wait that follows the daemon's events --------------------------------------- */

struct bench_watch {
    int fd;
    char buf[1 << 16];
    size_t len;   /* bytes in buf not yet taken as lines */
    char **ready; /* names of the ready desktops */
    size_t nready, cap;
    bool headers_done; /* the HTTP head is behind us */
    double cloning_at, starting_at; /* when a desktop was last seen entering the state */
};

static ssize_t ready_index(const bench_watch *w, const char *name)
{
    for (size_t i = 0; i < w->nready; i++)
        if (!strcmp(w->ready[i], name))
            return (ssize_t)i;
    return -1;
}

static void set_ready(bench_watch *w, const char *name, bool ready)
{
    ssize_t i = ready_index(w, name);
    if (!ready && i >= 0) {
        free(w->ready[i]);
        w->ready[i] = w->ready[--w->nready];
    } else if (ready && i < 0) {
        if (w->nready == w->cap) {
            size_t cap = w->cap ? 2 * w->cap : 64;
            char **grown = realloc(w->ready, cap * sizeof *grown);
            if (!grown)
                return;
            w->ready = grown;
            w->cap = cap;
        }
        char *copy = strdup(name);
        if (copy)
            w->ready[w->nready++] = copy;
    }
}

/* One desktop's JSON (an event's data or an entry of the pool's list). */
static void apply_desktop(bench_watch *w, json_t *d)
{
    const char *name = json_string_value(json_object_get(d, "name"));
    const char *state = json_string_value(json_object_get(d, "state"));
    if (name && state)
        set_ready(w, name, !strcmp(state, "ready"));
    if (state && !strcmp(state, "cloning"))
        w->cloning_at = bench_now();
    else if (state && !strcmp(state, "starting"))
        w->starting_at = bench_now();
}

/* Reads until one whole line is in w->buf or limit; returns its length
 * (the newline replaced by NUL), -1 at the stream's end, -2 at limit. */
static ssize_t watch_line(bench_watch *w, double deadline)
{
    for (;;) {
        char *nl = memchr(w->buf, '\n', w->len);
        if (nl) {
            *nl = '\0';
            if (nl > w->buf && nl[-1] == '\r')
                nl[-1] = '\0';
            return nl - w->buf;
        }
        double left = deadline - bench_now();
        if (left <= 0)
            return -2;
        struct pollfd p = {.fd = w->fd, .events = POLLIN};
        int n = poll(&p, 1, (int)(left * 1000) + 1);
        if (n == 0)
            continue;
        if (n < 0 || w->len == sizeof w->buf)
            return -1;
        ssize_t got = read(w->fd, w->buf + w->len, sizeof w->buf - w->len);
        if (got <= 0)
            return -1;
        w->len += (size_t)got;
    }
}

static void watch_consume(bench_watch *w, ssize_t line_len)
{
    size_t used = (size_t)line_len + 1;
    memmove(w->buf, w->buf + used, w->len - used);
    w->len -= used;
}

/* Reads the next event; returns 1 for a desktop event (applied), 0 for any
 * other, -1 at the stream's end, -2 at the deadline. */
static int watch_event(bench_watch *w, double deadline)
{
    bool desktop = false;
    for (;;) {
        ssize_t n = watch_line(w, deadline);
        if (n < 0)
            return (int)n;
        if (!w->headers_done) {
            w->headers_done = n == 0; /* the blank line ends the HTTP head */
        } else if (n == 0) {
            watch_consume(w, n);
            return desktop ? 1 : 0;
        } else if (!strcmp(w->buf, "event: desktop")) {
            desktop = true;
        } else if (desktop && !strncmp(w->buf, "data: ", 6)) {
            json_t *d = json_loads(w->buf + 6, 0, NULL);
            if (d)
                apply_desktop(w, d);
            json_decref(d);
        }
        watch_consume(w, n);
    }
}

bench_watch *bench_watch_open(const char *sock)
{
    bench_watch *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock);
    static const char request[] = "GET /v1/events?pool=bench HTTP/1.1\r\nHost: vdipool\r\n\r\n";
    /* A daemon just started opens its socket within moments. */
    int connected = -1;
    for (double until = bench_now() + 30; connected < 0 && bench_now() < until;) {
        if ((w->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
            break;
        if ((connected = connect(w->fd, (struct sockaddr *)&addr, sizeof addr)) < 0) {
            close(w->fd);
            w->fd = -1;
            usleep(2000);
        }
    }
    if (connected < 0 ||
        write(w->fd, request, sizeof request - 1) != (ssize_t)(sizeof request - 1)) {
        fprintf(stderr, "bench: cannot follow the events of %s\n", sock);
        bench_watch_close(w);
        return NULL;
    }
    /* The hello first: from then on every change is streamed, so a
     * snapshot taken now misses none. */
    int e;
    while ((e = watch_event(w, bench_now() + 30)) == 1)
        ;
    json_t *pool = NULL;
    vdi_error err = {0};
    if (e < 0 || vdi_client_call_json(sock, "GET", "/v1/pools/bench", NULL, &pool, &err) != 200) {
        fprintf(stderr, "bench: cannot read pool bench: %s\n", e < 0 ? "no hello" : err.message);
        json_decref(pool);
        bench_watch_close(w);
        return NULL;
    }
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(pool, "desktops"), i, d) apply_desktop(w, d);
    json_decref(pool);
    return w;
}

int bench_watch_until_ready(bench_watch *w, unsigned want, double limit_s)
{
    double deadline = bench_now() + limit_s;
    while (w->nready < want) {
        int e = watch_event(w, deadline);
        if (e < 0)
            return e;
    }
    return 0;
}

int bench_watch_until_not_ready(bench_watch *w, const char *name, double limit_s)
{
    double deadline = bench_now() + limit_s;
    while (ready_index(w, name) >= 0) {
        int e = watch_event(w, deadline);
        if (e < 0)
            return e;
    }
    return 0;
}

void bench_watch_phases(const bench_watch *w, double *cloning_at, double *starting_at)
{
    *cloning_at = w->cloning_at;
    *starting_at = w->starting_at;
}

void bench_watch_close(bench_watch *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    for (size_t i = 0; i < w->nready; i++)
        free(w->ready[i]);
    free(w->ready);
    free(w);
}
