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
 * Every domain and file made here is removed by name at the end. */
#include "bench_util.h"
#include "vdi_client.h"
#include "vdi_engine.h"

#include <jansson.h>
#include <libvirt/libvirt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
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

static double median(double *v, unsigned n)
{
    qsort(v, n, sizeof *v, bench_cmp_double);
    return n ? v[n / 2] : 0;
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

static int raw_start_one(unsigned i)
{
    char *child = child_path("raw", i);
    char *xml = raw_xml(i);
    vdi_error err = {0};
    int rc = -1;
    if (child && xml && vdi_clone(gold, child, NULL, &err) == 0) {
        virDomainPtr d = virDomainCreateXML(conn, xml, 0);
        if (d) {
            virDomainFree(d);
            rc = 0;
        }
    }
    if (rc < 0)
        fprintf(stderr, "bench_refill: raw start %u failed: %s\n", i,
                err.message[0] ? err.message : "libvirt refused the domain");
    free(child);
    free(xml);
    return rc;
}

static void *raw_starter(void *arg)
{
    (void)arg;
    unsigned i;
    while ((i = atomic_fetch_add(&next_raw, 1) + 1) <= ndesktops)
        if (raw_start_one(i) < 0)
            return (void *)1;
    return NULL;
}

static int raw_logoff(unsigned i)
{
    char name[64];
    snprintf(name, sizeof name, "raw-%0*u", (int)width, i);
    virDomainPtr d = virDomainLookupByName(conn, name);
    if (!d || virDomainDestroy(d) < 0) {
        if (d)
            virDomainFree(d);
        return -1;
    }
    virDomainFree(d);
    char *child = child_path("raw", i);
    int rc = child && unlink(child) == 0 ? raw_start_one(i) : -1;
    free(child);
    return rc;
}

/* ---- main ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: bench_refill VDIPOOLD MAKE_DEMO_GOLD WORKDIR DESKTOPS FILLER "
                        "ROUNDS\n");
        return 2;
    }
    const char *daemon = argv[1], *make_gold = argv[2];
    snprintf(work, sizeof work, "%s", argv[3]);
    ndesktops = (unsigned)atoi(argv[4]);
    unsigned filler = (unsigned)atoi(argv[5]), rounds = (unsigned)atoi(argv[6]);
    if (!ndesktops || !rounds || rounds > 100 || work[0] != '/') {
        fprintf(stderr, "bench_refill: DESKTOPS and ROUNDS (<= 100) must be positive and "
                        "WORKDIR absolute\n");
        return 2;
    }
    width = 3;
    for (unsigned v = ndesktops; v >= 1000; v /= 10)
        width++;
    char text[4096];
    snprintf(gold, sizeof gold, "%s/gold.qcow2", work);
    if (bench_prepare(work, daemon, make_gold, gold, 64) < 0)
        return 1;
    if (bench_record_children(work, gold, "filler", filler, 5, "filler") < 0)
        return 1;
    conn = virConnectOpen("qemu:///system");
    if (!conn) {
        fprintf(stderr, "bench_refill: cannot connect to qemu:///system\n");
        return 1;
    }

    /* vdipool: start to ready, then log-off to a fresh ready spare. */
    snprintf(sock, sizeof sock, "%s/sock", work);
    snprintf(text, sizeof text,
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
    int status = 1;
    double t0 = bench_now();
    pid_t pid = bench_start_daemon(daemon, work, text);
    if (pid < 0)
        return 1;
    double *vdi_logoff = calloc(rounds, sizeof(double));
    double *raw_logoff_s = calloc(rounds, sizeof(double));
    double vdi_start = 0, raw_start = 0;
    /* Ready desktops are counted from the daemon's events, as a broker
     * would follow them: polling would load the machine it measures. */
    bench_watch *watch = bench_watch_open(sock);
    if (!watch || bench_watch_until_ready(watch, ndesktops, 300) < 0) {
        fprintf(stderr, "bench_refill: vdipoold did not make %u desktops ready; see %s/vdipoold.log\n",
                ndesktops, work);
        goto stop_daemon;
    }
    vdi_start = bench_now() - t0;
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
        vdi_logoff[r] = bench_now() - t;
    }
    {
        char name[64];
        snprintf(name, sizeof name, "bench-%0*u", (int)width, 1u);
        virDomainPtr d = virDomainLookupByName(conn, name);
        char *xml = d ? virDomainGetXMLDesc(d, VIR_DOMAIN_XML_INACTIVE) : NULL;
        if (d)
            virDomainFree(d);
        if (!xml) {
            fprintf(stderr, "bench_refill: cannot read %s's XML\n", name);
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
    if (status != 0)
        goto cleanup;

    /* The raw work, the same parallelism. */
    pthread_t threads[PARALLEL_STARTS];
    atomic_store(&next_raw, 0);
    t0 = bench_now();
    for (int i = 0; i < PARALLEL_STARTS; i++)
        pthread_create(&threads[i], NULL, raw_starter, NULL);
    for (int i = 0; i < PARALLEL_STARTS; i++) {
        void *failed = NULL;
        pthread_join(threads[i], &failed);
        if (failed)
            status = 1;
    }
    raw_start = bench_now() - t0;
    for (unsigned r = 0; r < rounds && status == 0; r++) {
        double t = bench_now();
        if (raw_logoff(1 + r % ndesktops) < 0) {
            fprintf(stderr, "bench_refill: raw log-off failed\n");
            status = 1;
        }
        raw_logoff_s[r] = bench_now() - t;
    }
    if (status == 0) {
        double v = median(vdi_logoff, rounds), w = median(raw_logoff_s, rounds);
        printf("refill %u desktops, %u other children on the datastore: start to ready "
               "vdipool %.2f s, raw %.2f s (%.2fx); log-off to a ready spare (median of %u) "
               "vdipool %.3f s, raw %.3f s (%.2fx)\n",
               ndesktops, filler, vdi_start, raw_start, vdi_start / raw_start, rounds, v, w,
               v / w);
    }
cleanup:
    destroy_named("raw");
    virConnectClose(conn);
    free(template_xml);
    free(vdi_logoff);
    free(raw_logoff_s);
    if (getenv("BENCH_KEEP_LOG")) {
        char keep[700];
        snprintf(keep, sizeof keep, "cp %s/vdipoold.log %s", work, getenv("BENCH_KEEP_LOG"));
        if (system(keep) != 0)
            fprintf(stderr, "bench_refill: the log was not kept\n");
    }
    bench_cleanup(work, gold);
    return status;
}
