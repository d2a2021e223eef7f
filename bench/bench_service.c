/* bench_service — vdipoold under acquire/release load, on libvirt's test
 * driver (no QEMU: the service alone).
 *
 *   bench_service VDIPOOLD MAKE_DEMO_GOLD WORKDIR SIZE SPARES CLIENTS SECONDS [close]
 *
 * Starts vdipoold with one pool of SIZE desktops keeping SPARES spares,
 * waits until they are ready, then runs CLIENTS threads for SECONDS, each
 * looping acquire (a new user every time) -> release over the Unix socket,
 * each on its own kept connection (HTTP/1.1 keep-alive), or with `close`
 * one connection per request. Prints one
 * line: cycles/s, acquire p50/p99/max, release p50/p99, the transport floor
 * (GET /v1/status p50, measured in the same run) and the daemon's RSS after
 * the spares were ready, per slot beyond a base of the daemon with one
 * slot (measured by the caller: run it with SIZE 1 for the base); what a
 * broker's views of the pool cost (its summary, a page of ready desktops).
 * Then the catalog's commits, flushes and statements per cycle, and where
 * the CPUs went during the load: vdipoold's CPU time and its threads'
 * sleeps per cycle, the load client's share, and how
 * busy the machine was (what was idle while I/O was outstanding says the
 * disk's flushes, not the CPUs, held the rate back; what the hypervisor
 * stole says other guests on the same host did). */
#include "bench_util.h"
#include "vdi_client.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char sock[512];
static atomic_bool stop;
static atomic_ulong cycles;
static atomic_uint user_seq;
static bool keep_alive = true;

/* One request, on the client's kept connection or on a new one. */
static int call(vdi_client_conn *conn, const char *method, const char *path, const char *body,
                json_t **out)
{
    vdi_error err = {0};
    return keep_alive ? vdi_client_request_json(conn, method, path, body, out, &err)
                      : vdi_client_call_json(sock, method, path, body, out, &err);
}

typedef struct samples {
    double *v;
    size_t n, cap;
} samples;

static void add(samples *s, double x)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (!s->v)
            abort();
    }
    s->v[s->n++] = x;
}

static double pct(samples *s, double p)
{
    if (!s->n)
        return 0;
    qsort(s->v, s->n, sizeof *s->v, bench_cmp_double);
    size_t i = (size_t)(p / 100.0 * (double)(s->n - 1) + 0.5);
    return s->v[i];
}

typedef struct client {
    pthread_t t;
    samples acquire, release;
    unsigned refused;
} client;

static void *run_client(void *arg)
{
    client *c = arg;
    vdi_client_conn *conn = NULL;
    vdi_error cerr = {0};
    if (keep_alive && vdi_client_connect(sock, &conn, &cerr) < 0) {
        fprintf(stderr, "bench_service: %s\n", cerr.message);
        return NULL;
    }
    while (!atomic_load(&stop)) {
        char body[64];
        snprintf(body, sizeof body, "{\"user\": \"u%u\"}", atomic_fetch_add(&user_seq, 1));
        json_t *a = NULL;
        double t0 = bench_now();
        int status = call(conn, "POST", "/v1/pools/bench/acquire", body, &a);
        double t1 = bench_now();
        if (status != 200) {
            c->refused++;
            json_decref(a);
            usleep(1000);
            continue;
        }
        add(&c->acquire, t1 - t0);
        char path[256];
        snprintf(path, sizeof path, "/v1/desktops/%s/release",
                 json_string_value(json_object_get(a, "desktop")));
        json_decref(a);
        json_t *r = NULL;
        t0 = bench_now();
        status = call(conn, "POST", path, NULL, &r);
        add(&c->release, bench_now() - t0);
        json_decref(r);
        if (status == 200)
            atomic_fetch_add(&cycles, 1);
    }
    vdi_client_disconnect(conn);
    return NULL;
}

/* A counter from /metrics (0 when absent). */
static double metric(const char *name)
{
    char *text = NULL;
    vdi_error err = {0};
    double v = 0;
    if (vdi_client_call(sock, "GET", "/metrics", NULL, &text, &err) == 200 && text) {
        size_t len = strlen(name);
        for (const char *line = text; line && *line; line = strchr(line, '\n')) {
            line += *line == '\n';
            if (!strncmp(line, name, len) && line[len] == ' ') {
                v = strtod(line + len + 1, NULL);
                break;
            }
        }
    }
    free(text);
    return v;
}

/* n GETs of path, each one's time added to out. */
static void timed_gets(vdi_client_conn *conn, const char *path, int n, samples *out)
{
    for (int i = 0; i < n; i++) {
        json_t *j = NULL;
        double t0 = bench_now();
        call(conn, "GET", path, NULL, &j);
        add(out, bench_now() - t0);
        json_decref(j);
    }
}

int main(int argc, char **argv)
{
    if (argc < 8 || argc > 9 || (argc == 9 && strcmp(argv[8], "close"))) {
        fprintf(stderr, "usage: bench_service VDIPOOLD MAKE_DEMO_GOLD WORKDIR SIZE SPARES CLIENTS "
                        "SECONDS [close]\n");
        return 2;
    }
    keep_alive = argc == 8;
    const char *daemon = argv[1], *make_gold = argv[2], *work = argv[3];
    unsigned size = (unsigned)atoi(argv[4]), spares = (unsigned)atoi(argv[5]);
    unsigned nclients = (unsigned)atoi(argv[6]);
    int seconds = atoi(argv[7]);
    char gold[600], text[4096];
    snprintf(gold, sizeof gold, "%s/gold.qcow2", work);
    if (bench_prepare(work, daemon, make_gold, gold, 0) < 0)
        return 1;
    snprintf(sock, sizeof sock, "%s/sock", work);
    /* Clones and starts at once (the daemon's thread pool follows). */
    const char *parallel = getenv("VDI_BENCH_PARALLEL") ? getenv("VDI_BENCH_PARALLEL") : "16";
    snprintf(text, sizeof text,
             "service = { socket = \"%s\"; state_dir = \"%s/state\"; libvirt_uri = "
             "\"test:///default\";\n  log_level = \"warning\"; acquire_timeout = \"5s\";\n"
             "  max_parallel_clones = %s; max_parallel_starts = %s; };\n"
             "datastores = ( { name = \"local\"; path = \"%s/ds\"; reserve = \"0\";\n"
             "  max_overcommit = 1000.0; } );\n"
             "pools = ( { name = \"bench\"; gold = \"%s/gold.qcow2\"; datastore = \"local\";\n"
             "  size = %u; spares = %u; expected_growth = \"1M\";\n"
             "  domain = { memory = \"32M\"; vcpus = 1; network = \"none\"; graphics = "
             "\"none\"; accel = \"tcg\"; }; } );\n",
             sock, work, parallel, parallel, work, work, size, spares);
    double t_start = bench_now();
    pid_t pid = bench_start_daemon(daemon, work, text);
    if (pid < 0)
        return 1;
    if (bench_wait_ready(sock, work, pid, spares, 600, 20, NULL) == -1)
        return 1;
    double t_ready = bench_now() - t_start;
    long rss = bench_rss_kib(pid);
    /* The transport floor, in the same run. */
    samples floor = {0};
    vdi_client_conn *fconn = NULL;
    vdi_error ferr = {0};
    if (keep_alive && vdi_client_connect(sock, &fconn, &ferr) < 0) {
        fprintf(stderr, "bench_service: %s\n", ferr.message);
        return 1;
    }
    timed_gets(fconn, "/v1/status", 200, &floor);
    /* What a broker's views of a large pool cost: the summary, and a page
     * of ready desktops (a state filter over the pool's slots). */
    samples summary = {0}, page = {0};
    timed_gets(fconn, "/v1/pools/bench?summary=1", 100, &summary);
    timed_gets(fconn, "/v1/pools/bench?state=ready&limit=100", 100, &page);
    vdi_client_disconnect(fconn);
    double commits0 = metric("vdipool_catalog_commits_total"),
           flushes0 = metric("vdipool_catalog_flushes_total"),
           waits0 = metric("vdipool_acquire_flush_waits_total"),
           statements0 = metric("vdipool_catalog_statements_total");
    client *cl = calloc(nclients, sizeof *cl);
    double daemon_cpu0 = bench_cpu_seconds(pid), self_cpu0 = bench_cpu_seconds(getpid());
    bench_role_use roles0[BENCH_ROLES], roles1[BENCH_ROLES];
    int roles_rc = bench_threads_by_role(pid, roles0);
    double busy0, idle0, iowait0, steal0;
    bench_machine_cpu(&busy0, &idle0, &iowait0, &steal0);
    double t0 = bench_now();
    for (unsigned i = 0; i < nclients; i++)
        pthread_create(&cl[i].t, NULL, run_client, &cl[i]);
    sleep((unsigned)seconds);
    /* CPU over the load alone (before the clients are joined). */
    double daemon_cpu = bench_cpu_seconds(pid) - daemon_cpu0;
    double self_cpu = bench_cpu_seconds(getpid()) - self_cpu0;
    if (roles_rc == 0)
        roles_rc = bench_threads_by_role(pid, roles1);
    double sleeps = roles_rc == 0 ? bench_sleeps_of(roles1) - bench_sleeps_of(roles0) : -1;
    double busy1, idle1, iowait1, steal1;
    bench_machine_cpu(&busy1, &idle1, &iowait1, &steal1);
    double cpu_window = bench_now() - t0;
    unsigned cycles_in_window = atomic_load(&cycles);
    atomic_store(&stop, true);
    samples acq = {0}, rel = {0};
    unsigned refused = 0;
    for (unsigned i = 0; i < nclients; i++) {
        pthread_join(cl[i].t, NULL);
        for (size_t k = 0; k < cl[i].acquire.n; k++)
            add(&acq, cl[i].acquire.v[k]);
        for (size_t k = 0; k < cl[i].release.n; k++)
            add(&rel, cl[i].release.v[k]);
        refused += cl[i].refused;
    }
    double took = bench_now() - t0;
    double done = (double)atomic_load(&cycles);
    double per = done > 0 ? 1.0 / done : 0;
    printf("size %u spares %u clients %u %s: %.0f cycles/s, acquire p50 %.2f ms p99 %.2f ms max "
           "%.1f ms, release p50 %.2f ms p99 %.2f ms, floor p50 %.3f ms, refused %u, "
           "spares ready in %.1f s, RSS %ld KiB\n",
           size, spares, nclients, keep_alive ? "keep-alive" : "close", (double)atomic_load(&cycles) / took, pct(&acq, 50) * 1e3,
           pct(&acq, 99) * 1e3, pct(&acq, 100) * 1e3, pct(&rel, 50) * 1e3, pct(&rel, 99) * 1e3,
           pct(&floor, 50) * 1e3, refused, t_ready, rss);
    printf("  pool views: summary p50 %.2f ms, a page of 100 ready desktops "
           "(?state=ready&limit=100) p50 %.2f ms\n",
           pct(&summary, 50) * 1e3, pct(&page, 50) * 1e3);
    /* Where the disk time goes: the catalog's commits and flushes per cycle,
     * and how many acquire answers waited for their session to be flushed. */
    printf("  per cycle: %.2f catalog commits, %.2f catalog flushes, %.2f catalog statements; "
           "acquires that waited for a flush: %.0f %%\n",
           (metric("vdipool_catalog_commits_total") - commits0) * per,
           (metric("vdipool_catalog_flushes_total") - flushes0) * per,
           (metric("vdipool_catalog_statements_total") - statements0) * per,
           (metric("vdipool_acquire_flush_waits_total") - waits0) * per * 100);
    /* Whether the machine's CPUs set the rate: what vdipoold spends per
     * cycle, what the load client takes, and what stays idle. */
    double busy = busy1 - busy0, idle = idle1 - idle0, iowait = iowait1 - iowait0;
    double steal = steal1 - steal0;
    if (daemon_cpu >= 0 && self_cpu >= 0 && cycles_in_window && busy + idle > 0)
        printf("  CPU: vdipoold %.2f ms per cycle (%.2f cores, %.1f sleeps of its threads per "
               "cycle), load client %.2f cores; machine "
               "%.0f %% busy of %ld cores (%.0f %% stolen by the hypervisor), %.0f %% idle "
               "waiting on I/O\n",
               daemon_cpu / cycles_in_window * 1e3, daemon_cpu / cpu_window,
               sleeps >= 0 ? sleeps / cycles_in_window : -1, self_cpu / cpu_window,
               100 * busy / (busy + idle), sysconf(_SC_NPROCESSORS_ONLN),
               100 * steal / (busy + idle), 100 * iowait / (busy + idle));
    /* The same by thread (a worker that exited in the window is missed). */
    if (roles_rc == 0 && cycles_in_window) {
        printf("  by thread, per cycle:");
        for (int k = 0; k < BENCH_ROLES; k++)
            if (roles1[k].cpu_s > 0 || roles1[k].sleeps > 0)
                printf("%s %s %.2f ms CPU, %.1f sleeps", k ? ";" : "", bench_role_names[k],
                       (roles1[k].cpu_s - roles0[k].cpu_s) / cycles_in_window * 1e3,
                       (roles1[k].sleeps - roles0[k].sleeps) / cycles_in_window);
        printf("\n");
    }
    bench_stop_daemon(pid);
    bench_cleanup(work, gold);
    return 0;
}
