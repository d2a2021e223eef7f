/* bench_refill — vdipool on a real libvirtd + QEMU against the raw work it
 * does, in one run, with FILLER other children on the same datastore:
 *
 *  1. start to ready: vdipoold starts with a pool of N spares (demo gold,
 *     TCG) and the clock runs until N desktops are ready; the baseline makes
 *     N children with the engine and starts N domains of the same XML with
 *     virDomainCreateXML, as many at once as vdipoold's max_parallel_starts;
 *  2. log-off to a fresh ready spare, ROUNDS times: a desktop is acquired and
 *     released through the API and the clock runs until N are ready again
 *     (ready desktops are followed on GET /v1/events, not polled);
 *     the baseline destroys a domain, deletes its child, makes a new one and
 *     starts it again.
 *
 * The filler children are recorded in the catalog of another pool, as the
 * children of a busy site would be: a service that rescans the datastore for
 * every clone slows down with them, one that keeps accounts does not.
 *
 * With PAIRS > 1 both are measured PAIRS times, alternating which goes
 * first, each vdipool run from the same catalog and datastore; every pair's
 * ratios are printed with the share of CPU the hypervisor stole meanwhile,
 * then the median ratio of the pairs. One pair alone moves ±20 % with the
 * machine's speed, which drifts between its two halves. Last, every
 * log-off of every run is split into phases, vdipool's by the events of the
 * desktop that moves (end, clone, start) and the raw work's by its calls
 * (destroy, delete and clone, create), each the median of all.
 * Every domain and file made here is removed by name at the end. */
#include "bench_util.h"
#include "vdi_client.h"
#include "vdi_engine.h"

#include <jansson.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PARALLEL_STARTS 2

static char work[512], sock[600], gold[600];
static unsigned ndesktops, width;
static virConnectPtr conn;

/* Lookups of domains that may not exist are expected here; every failure
 * that matters is reported with libvirt's message by the caller. */
static void quiet_libvirt(void *opaque, virErrorPtr e)
{
    (void)opaque;
    (void)e;
}

static double median(double *v, unsigned n)
{
    if (!n)
        return 0;
    qsort(v, n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static char *child_path(const char *prefix, unsigned i)
{
    char *p = NULL;
    if (asprintf(&p, "%s/ds/%s-%0*u.qcow2", work, prefix, (int)width, i) < 0)
        return NULL;
    return p;
}

static void destroy_named(const char *prefix)
{
    for (unsigned i = 1; i <= ndesktops; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s-%0*u", prefix, (int)width, i);
        virDomainPtr d = virDomainLookupByName(conn, name);
        if (d) {
            virDomainDestroy(d);
            virDomainFree(d);
        }
    }
}

/* ---- the raw work ---------------------------------------------------------------- */

static char *template_xml; /* bench-001's XML without its uuid */

/* The phases of every log-off of every run, in seconds: vdipool's end,
 * clone and start as its events show them; the raw work's destroy, delete
 * and clone, and create. */
enum { PHASE_END, PHASE_CLONE, PHASE_START, PHASE_WHOLE, PHASES };
#define MAX_LOGOFFS (50 * 100) /* PAIRS * ROUNDS at most */
static double vdi_phase[PHASES][MAX_LOGOFFS], raw_phase[PHASES][MAX_LOGOFFS];
static unsigned vdi_phases, raw_phases;
static atomic_uint next_raw;

/* The template with bench-001 (its name and its child's name) replaced. */
static char *raw_xml(unsigned i)
{
    char from[64], to[64];
    snprintf(from, sizeof from, "bench-%0*u", (int)width, 1u);
    snprintf(to, sizeof to, "raw-%0*u", (int)width, i);
    size_t flen = strlen(from), tlen = strlen(to);
    size_t cap = strlen(template_xml) * 2 + 1;
    char *out = malloc(cap), *o = out;
    if (!out)
        return NULL;
    for (const char *p = template_xml; *p;) {
        if (!strncmp(p, from, flen)) {
            memcpy(o, to, tlen);
            o += tlen;
            p += flen;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

/* Makes raw-i's child and starts its domain; when `cloned_at` is not NULL
 * it gets the bench_now() at which the child was made. */
static int raw_start_one(unsigned i, double *cloned_at)
{
    char *child = child_path("raw", i);
    char *xml = raw_xml(i);
    vdi_error err = {0};
    int rc = -1;
    if (child && xml && vdi_clone(gold, child, NULL, &err) == 0) {
        if (cloned_at)
            *cloned_at = bench_now();
        virDomainPtr d = virDomainCreateXML(conn, xml, 0);
        if (d) {
            virDomainFree(d);
            rc = 0;
        }
    }
    if (rc < 0)
        fprintf(stderr, "bench_refill: raw start %u failed: %s\n", i,
                err.message[0] ? err.message : virGetLastErrorMessage());
    free(child);
    free(xml);
    return rc;
}

static void *raw_starter(void *arg)
{
    (void)arg;
    unsigned i;
    while ((i = atomic_fetch_add(&next_raw, 1) + 1) <= ndesktops)
        if (raw_start_one(i, NULL) < 0)
            return (void *)1;
    return NULL;
}

static int raw_logoff(unsigned i)
{
    char name[64];
    snprintf(name, sizeof name, "raw-%0*u", (int)width, i);
    double t0 = bench_now();
    virDomainPtr d = virDomainLookupByName(conn, name);
    if (!d || virDomainDestroy(d) < 0) {
        if (d)
            virDomainFree(d);
        return -1;
    }
    virDomainFree(d);
    double destroyed = bench_now(), cloned = 0;
    char *child = child_path("raw", i);
    int rc = child && unlink(child) == 0 ? raw_start_one(i, &cloned) : -1;
    free(child);
    if (rc == 0 && raw_phases < MAX_LOGOFFS) {
        raw_phase[PHASE_END][raw_phases] = destroyed - t0;
        raw_phase[PHASE_CLONE][raw_phases] = cloned - destroyed;
        raw_phase[PHASE_START][raw_phases] = bench_now() - cloned;
        raw_phase[PHASE_WHOLE][raw_phases++] = bench_now() - t0;
    }
    return rc;
}

/* ---- one run of each --------------------------------------------------------------- */

static unsigned rounds;
static char *daemon_path;
static char config_text[4096];
static unsigned vdipool_runs;

/* Each run of vdipool starts from the catalog and datastore as they were
 * before the first: the filler recorded, no desktop of pool `bench` yet. */
static int reset_vdipool(void)
{
    char cmd[4096];
    if (vdipool_runs++ == 0)
        snprintf(cmd, sizeof cmd, "cp -a '%s/state' '%s/state.base'", work, work);
    else
        snprintf(cmd, sizeof cmd,
                 "rm -rf '%s/state' '%s'/ds/bench-*.qcow2 && cp -a '%s/state.base' '%s/state'",
                 work, work, work, work);
    if (system(cmd) != 0) {
        fprintf(stderr, "bench_refill: cannot reset the catalog in %s/state\n", work);
        return -1;
    }
    return 0;
}

/* vdipool: start to ready, then log-off to a fresh ready spare ROUNDS times.
 * The first run also keeps bench-001's XML, without its uuid, for the raw
 * work. */
static int vdipool_run(double *start_s, double *logoff_s, double *cpu_to_ready)
{
    if (reset_vdipool() < 0)
        return -1;
    int status = -1;
    double *each = calloc(rounds, sizeof(double));
    double t0 = bench_now();
    pid_t pid = bench_start_daemon(daemon_path, work, config_text);
    if (pid < 0 || !each) {
        free(each);
        return -1;
    }
    /* Ready desktops are counted from the daemon's events, as a broker
     * would follow them: polling would load the machine it measures. */
    bench_watch *watch = bench_watch_open(sock);
    if (!watch || bench_watch_until_ready(watch, ndesktops, 300) < 0) {
        fprintf(stderr, "bench_refill: vdipoold did not make %u desktops ready; see %s/vdipoold.log\n",
                ndesktops, work);
        goto stop_daemon;
    }
    *start_s = bench_now() - t0;
    *cpu_to_ready = bench_cpu_seconds(pid);
    for (unsigned r = 0; r < rounds; r++) {
        char body[64];
        snprintf(body, sizeof body, "{\"user\": \"u%u\"}", r);
        json_t *a = NULL;
        vdi_error err = {0};
        if (vdi_client_call_json(sock, "POST", "/v1/pools/bench/acquire", body, &a, &err) != 200) {
            fprintf(stderr, "bench_refill: acquire refused: %s\n", err.message);
            json_decref(a);
            goto stop_daemon;
        }
        char path[256];
        const char *taken = json_string_value(json_object_get(a, "desktop"));
        snprintf(path, sizeof path, "/v1/desktops/%s/release", taken ? taken : "");
        int seen = taken ? bench_watch_until_not_ready(watch, taken, 30) : -1;
        json_decref(a);
        if (seen < 0) {
            fprintf(stderr, "bench_refill: the acquired desktop was not seen leaving ready\n");
            goto stop_daemon;
        }
        double t = bench_now();
        json_t *rel = NULL;
        int rs = vdi_client_call_json(sock, "POST", path, NULL, &rel, &err);
        json_decref(rel);
        if (rs != 200) {
            fprintf(stderr, "bench_refill: release refused: %s\n", err.message);
            goto stop_daemon;
        }
        /* The pool's size is its spares: the released desktop's slot is the
         * only one free, so N ready again means it ended, was cloned anew
         * and started. */
        if (bench_watch_until_ready(watch, ndesktops, 120) < 0) {
            fprintf(stderr, "bench_refill: no fresh spare in 120 s; see %s/vdipoold.log\n", work);
            goto stop_daemon;
        }
        each[r] = bench_now() - t;
        double cloning_at, starting_at;
        bench_watch_phases(watch, &cloning_at, &starting_at);
        if (cloning_at > t && starting_at > cloning_at && vdi_phases < MAX_LOGOFFS) {
            vdi_phase[PHASE_END][vdi_phases] = cloning_at - t;
            vdi_phase[PHASE_CLONE][vdi_phases] = starting_at - cloning_at;
            vdi_phase[PHASE_START][vdi_phases] = t + each[r] - starting_at;
            vdi_phase[PHASE_WHOLE][vdi_phases++] = each[r];
        }
    }
    *logoff_s = median(each, rounds);
    if (!template_xml) {
        char name[64];
        snprintf(name, sizeof name, "bench-%0*u", (int)width, 1u);
        virDomainPtr d = virDomainLookupByName(conn, name);
        char *xml = d ? virDomainGetXMLDesc(d, VIR_DOMAIN_XML_INACTIVE) : NULL;
        if (d)
            virDomainFree(d);
        if (!xml) {
            fprintf(stderr, "bench_refill: cannot read %s's XML: %s\n", name,
                    virGetLastErrorMessage());
            goto stop_daemon;
        }
        char *u = strstr(xml, "<uuid>"), *ue = u ? strstr(u, "</uuid>") : NULL;
        if (u && ue)
            memmove(u, ue + 7, strlen(ue + 7) + 1);
        template_xml = xml;
    }
    status = 0;
stop_daemon:
    bench_watch_close(watch);
    bench_stop_daemon(pid);
    /* vdipoold leaves running desktops to be adopted: remove them, by name. */
    destroy_named("bench");
    free(each);
    return status;
}

/* No raw domain and no raw child: neither is left for vdipool's runs to
 * find on the datastore. */
static void remove_raw(void)
{
    destroy_named("raw");
    for (unsigned i = 1; i <= ndesktops; i++) {
        char *child = child_path("raw", i);
        if (child)
            unlink(child);
        free(child);
    }
}

/* The raw work, the same parallelism, from no raw domain and no raw child. */
static int raw_run(double *start_s, double *logoff_s)
{
    remove_raw();
    double *each = calloc(rounds, sizeof(double));
    if (!each)
        return -1;
    int status = 0;
    pthread_t threads[PARALLEL_STARTS];
    atomic_store(&next_raw, 0);
    double t0 = bench_now();
    for (int i = 0; i < PARALLEL_STARTS; i++)
        pthread_create(&threads[i], NULL, raw_starter, NULL);
    for (int i = 0; i < PARALLEL_STARTS; i++) {
        void *failed = NULL;
        pthread_join(threads[i], &failed);
        if (failed)
            status = -1;
    }
    *start_s = bench_now() - t0;
    for (unsigned r = 0; r < rounds && status == 0; r++) {
        double t = bench_now();
        if (raw_logoff(1 + r % ndesktops) < 0) {
            fprintf(stderr, "bench_refill: raw log-off failed: %s\n", virGetLastErrorMessage());
            status = -1;
        }
        each[r] = bench_now() - t;
    }
    *logoff_s = median(each, rounds);
    remove_raw();
    free(each);
    return status;
}

static double stolen_share(double busy0, double idle0, double steal0)
{
    double busy, idle, iowait, steal;
    bench_machine_cpu(&busy, &idle, &iowait, &steal);
    double total = (busy - busy0) + (idle - idle0);
    return total > 0 ? 100.0 * (steal - steal0) / total : 0;
}

/* ---- main ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    if (argc != 7 && argc != 8) {
        fprintf(stderr, "usage: bench_refill VDIPOOLD MAKE_DEMO_GOLD WORKDIR DESKTOPS FILLER "
                        "ROUNDS [PAIRS]\n");
        return 2;
    }
    daemon_path = argv[1];
    const char *make_gold = argv[2];
    snprintf(work, sizeof work, "%s", argv[3]);
    ndesktops = (unsigned)atoi(argv[4]);
    unsigned filler = (unsigned)atoi(argv[5]);
    rounds = (unsigned)atoi(argv[6]);
    unsigned pairs = argc == 8 ? (unsigned)atoi(argv[7]) : 1;
    if (!ndesktops || !rounds || rounds > 100 || !pairs || pairs > 50 || work[0] != '/') {
        fprintf(stderr, "bench_refill: DESKTOPS, ROUNDS (<= 100) and PAIRS (<= 50) must be "
                        "positive and WORKDIR absolute\n");
        return 2;
    }
    width = 3;
    for (unsigned v = ndesktops; v >= 1000; v /= 10)
        width++;
    snprintf(gold, sizeof gold, "%s/gold.qcow2", work);
    if (bench_prepare(work, daemon_path, make_gold, gold, 64) < 0)
        return 1;
    if (bench_record_children(work, gold, "filler", filler, 5, "filler") < 0)
        return 1;
    virSetErrorFunc(NULL, quiet_libvirt);
    conn = virConnectOpen("qemu:///system");
    if (!conn) {
        fprintf(stderr, "bench_refill: cannot connect to qemu:///system: %s\n",
                virGetLastErrorMessage());
        return 1;
    }
    snprintf(sock, sizeof sock, "%s/sock", work);
    snprintf(config_text, sizeof config_text,
             "service = { socket = \"%s\"; state_dir = \"%s/state\"; libvirt_uri = "
             "\"qemu:///system\";\n  log_level = \"%s\"; max_parallel_clones = 4; "
             "max_parallel_starts = %d; };\n"
             "datastores = ( { name = \"local\"; path = \"%s/ds\"; reserve = \"0\";\n"
             "  max_overcommit = 1000.0; } );\n"
             "pools = ( { name = \"bench\"; gold = \"%s\"; datastore = \"local\";\n"
             "  size = %u; spares = %u; expected_growth = \"1M\";\n"
             "  domain = { memory = \"32M\"; vcpus = 1; network = \"none\"; graphics = "
             "\"vnc\"; accel = \"tcg\"; }; } );\n",
             sock, work, getenv("BENCH_LOG_LEVEL") ? getenv("BENCH_LOG_LEVEL") : "warning",
             PARALLEL_STARTS, work, gold, ndesktops, ndesktops);

    /* Pairs alternate which goes first (vdipool, raw; raw, vdipool; ...), so
     * that a drift in the machine's speed over the run, which moves a single
     * pair's ratio by up to ±20 %, falls on both sides alike. */
    int status = 0;
    double *start_ratio = calloc(pairs, sizeof(double));
    double *logoff_ratio = calloc(pairs, sizeof(double));
    if (!start_ratio || !logoff_ratio)
        status = 1;
    for (unsigned p = 0; p < pairs && status == 0; p++) {
        double vs = 0, vl = 0, rs = 0, rl = 0, cpu = 0, busy0, idle0, iowait0, steal0;
        bench_machine_cpu(&busy0, &idle0, &iowait0, &steal0);
        bool vdipool_first = p % 2 == 0;
        if (vdipool_first ? vdipool_run(&vs, &vl, &cpu) < 0 || raw_run(&rs, &rl) < 0
                          : raw_run(&rs, &rl) < 0 || vdipool_run(&vs, &vl, &cpu) < 0) {
            status = 1;
            break;
        }
        start_ratio[p] = vs / rs;
        logoff_ratio[p] = vl / rl;
        if (pairs == 1)
            printf("refill %u desktops, %u other children on the datastore: start to ready "
                   "vdipool %.2f s, raw %.2f s (%.2fx); log-off to a ready spare (median of %u) "
                   "vdipool %.3f s, raw %.3f s (%.2fx)\n",
                   ndesktops, filler, vs, rs, vs / rs, rounds, vl, rl, vl / rl);
        else
            printf("  pair %u (%s first, %.0f %% stolen): start to ready vdipool %.2f s (its "
                   "CPU %.2f s), raw %.2f s (%.2fx); log-off vdipool %.3f s, raw %.3f s "
                   "(%.2fx)\n",
                   p + 1, vdipool_first ? "vdipool" : "raw", stolen_share(busy0, idle0, steal0), vs,
                   cpu, rs, vs / rs, vl, rl, vl / rl);
        fflush(stdout);
    }
    if (status == 0 && pairs > 1) {
        double s_min = start_ratio[0], s_max = start_ratio[0];
        double l_min = logoff_ratio[0], l_max = logoff_ratio[0];
        for (unsigned p = 1; p < pairs; p++) {
            s_min = start_ratio[p] < s_min ? start_ratio[p] : s_min;
            s_max = start_ratio[p] > s_max ? start_ratio[p] : s_max;
            l_min = logoff_ratio[p] < l_min ? logoff_ratio[p] : l_min;
            l_max = logoff_ratio[p] > l_max ? logoff_ratio[p] : l_max;
        }
        printf("refill %u desktops, %u other children on the datastore, median of %u alternating "
               "pairs: start to ready %.2fx (%.2f-%.2fx); log-off to a ready spare (each pair "
               "the median of %u) %.2fx (%.2f-%.2fx)\n",
               ndesktops, filler, pairs, median(start_ratio, pairs), s_min, s_max, rounds,
               median(logoff_ratio, pairs), l_min, l_max);
    }
    if (status == 0 && vdi_phases && raw_phases) {
        double v[PHASES], w[PHASES];
        for (int k = 0; k < PHASES; k++) {
            v[k] = median(vdi_phase[k], vdi_phases) * 1000;
            w[k] = median(raw_phase[k], raw_phases) * 1000;
        }
        printf("log-off phases, median ms of all %u and %u log-offs: vdipool end %.1f, clone "
               "%.1f, start %.1f (as its events show them), whole %.1f; raw destroy %.1f, delete "
               "and clone %.1f, create %.1f, whole %.1f (%.2fx)\n",
               vdi_phases, raw_phases, v[0], v[1], v[2], v[3], w[0], w[1], w[2], w[3], v[3] / w[3]);
    }
    destroy_named("raw");
    destroy_named("bench");
    virConnectClose(conn);
    free(template_xml);
    free(start_ratio);
    free(logoff_ratio);
    if (getenv("BENCH_KEEP_LOG")) {
        char keep[700];
        snprintf(keep, sizeof keep, "cp %s/vdipoold.log %s", work, getenv("BENCH_KEEP_LOG"));
        if (system(keep) != 0)
            fprintf(stderr, "bench_refill: the log was not kept\n");
    }
    bench_cleanup(work, gold);
    return status;
}
