/* bench_resume — start = "resume" against start = "boot", side by side in one
 * run on a real libvirtd + QEMU (TCG), for the demo gold and, when its
 * directory is given, the Linux gold (deploy/make-linux-gold.sh; agent
 * readiness, a real boot):
 *
 *  1. refill after a mass log-off: N desktops handed out and released at
 *     once; the clock runs until N spares are ready again; the bytes read
 *     from the datastore's device meanwhile (page cache dropped first);
 *  2. one desktop, log-off to a fresh ready spare (median of ROUNDS);
 *  3. memory: the resident memory of N ready desktops (the pool's
 *     memory.rss_bytes), and what KSM saves on them after KSM_SECONDS.
 *
 * The first fill of a resume pool includes making its memory image; it is
 * reported apart. Every domain and file made here is removed by name. */
#include "bench_util.h"
#include "vdi_client.h"
#include "vdi_engine.h"

#include <jansson.h>
#include <libvirt/libvirt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define KSM_SECONDS 30

static char work[512], sock[600];
static unsigned ndesktops;

typedef struct result {
    double first_fill, refill, logoff, image_seconds;
    double read_mib;
    double rss_mib, ksm_saved_mib;
} result;

static unsigned long long device_sectors_read(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return 0;
    char sys[128];
    snprintf(sys, sizeof sys, "/sys/dev/block/%u:%u/stat", major(st.st_dev), minor(st.st_dev));
    FILE *f = fopen(sys, "r");
    unsigned long long ios = 0, merges = 0, sectors = 0;
    if (f) {
        if (fscanf(f, "%llu %llu %llu", &ios, &merges, &sectors) != 3)
            sectors = 0;
        fclose(f);
    }
    return sectors;
}

static void write_sys(const char *path, const char *value)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(value, f);
        fclose(f);
    }
}

static long long read_sys(const char *path)
{
    long long v = 0;
    FILE *f = fopen(path, "r");
    if (f) {
        if (fscanf(f, "%lld", &v) != 1)
            v = 0;
        fclose(f);
    }
    return v;
}

static json_t *pool_json(void)
{
    json_t *j = NULL;
    vdi_error err = {0};
    if (vdi_client_call_json(sock, "GET", "/v1/pools/bench", NULL, &j, &err) != 200) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static void destroy_prefix(const char *prefix)
{
    virConnectPtr c = virConnectOpen("qemu:///system");
    virDomainPtr *doms = NULL;
    int n = c ? virConnectListAllDomains(c, &doms, 0) : 0;
    for (int i = 0; i < n; i++) {
        if (!strncmp(virDomainGetName(doms[i]), prefix, strlen(prefix)))
            virDomainDestroy(doms[i]);
        virDomainFree(doms[i]);
    }
    free(doms);
    if (c)
        virConnectClose(c);
}

static int release_all(unsigned n)
{
    json_t *p = pool_json();
    size_t i;
    json_t *d;
    unsigned done = 0;
    json_array_foreach(json_object_get(p, "desktops"), i, d)
    {
        if (strcmp(json_string_value(json_object_get(d, "state")), "assigned"))
            continue;
        char path[256];
        snprintf(path, sizeof path, "/v1/desktops/%s/release",
                 json_string_value(json_object_get(d, "name")));
        json_t *r = NULL;
        vdi_error err = {0};
        if (vdi_client_call_json(sock, "POST", path, NULL, &r, &err) == 200)
            done++;
        json_decref(r);
    }
    json_decref(p);
    return done == n ? 0 : -1;
}

static int acquire(const char *user, char *name, size_t len)
{
    char body[64];
    snprintf(body, sizeof body, "{\"user\": \"%s\"}", user);
    json_t *a = NULL;
    vdi_error err = {0};
    int st = vdi_client_call_json(sock, "POST", "/v1/pools/bench/acquire", body, &a, &err);
    if (st == 200 && name)
        snprintf(name, len, "%s", json_string_value(json_object_get(a, "desktop")));
    json_decref(a);
    return st == 200 ? 0 : -1;
}

/* One pool of N desktops in one mode; 0 with r filled. */
static int run_mode(const char *daemon, const char *make_gold, const char *linux_dir, bool resume,
                    unsigned rounds, result *r)
{
    memset(r, 0, sizeof *r);
    char gold[700], text[4096], pool_extra[1024];
    snprintf(gold, sizeof gold, "%s/gold.qcow2", work);
    if (bench_prepare(work, daemon, make_gold, gold, 0) < 0)
        return -1;
    if (linux_dir) {
        /* The Linux gold instead of the demo one, sealed the same way. */
        char cmd[2048];
        snprintf(cmd, sizeof cmd, "cp %s/linux-gold.qcow2 %s/linux.qcow2", linux_dir, work);
        if (system(cmd) != 0)
            return -1;
        snprintf(gold, sizeof gold, "%s/linux.qcow2", work);
        vdi_catalog *cat = NULL;
        vdi_error err = {0};
        vdi_seal_result sr;
        char state[600];
        snprintf(state, sizeof state, "%s/state", work);
        if (vdi_catalog_open(state, &cat, &err) < 0 || vdi_seal(cat, gold, &sr, &err) < 0) {
            fprintf(stderr, "bench_resume: cannot seal %s: %s\n", gold, err.message);
            vdi_catalog_close(cat);
            return -1;
        }
        vdi_catalog_close(cat);
        snprintf(pool_extra, sizeof pool_extra,
                 "ready_when = \"agent\"; boot_timeout = \"5m\";\n"
                 "  domain = { memory = \"192M\"; vcpus = 1; accel = \"tcg\"; template = "
                 "\"%s/domain.xml\"; };",
                 linux_dir);
    } else {
        snprintf(pool_extra, sizeof pool_extra,
                 "domain = { memory = \"32M\"; vcpus = 1; network = \"none\"; graphics = "
                 "\"vnc\"; accel = \"tcg\"; };");
    }
    snprintf(sock, sizeof sock, "%s/sock", work);
    snprintf(text, sizeof text,
             "service = { socket = \"%s\"; state_dir = \"%s/state\"; libvirt_uri = "
             "\"qemu:///system\";\n  log_level = \"info\"; max_parallel_clones = 4; "
             "max_parallel_starts = 4; acquire_timeout = \"5m\"; };\n"
             "datastores = ( { name = \"local\"; path = \"%s/ds\"; reserve = \"0\";\n"
             "  max_overcommit = 1000.0; } );\n"
             "pools = ( { name = \"bench\"; gold = \"%s\"; datastore = \"local\";\n"
             "  size = %u; spares = %u; expected_growth = \"1M\"; start = \"%s\";%s\n  %s } );\n",
             sock, work, work, gold, ndesktops, ndesktops, resume ? "resume" : "boot",
             resume && !linux_dir ? " template_settle = \"3s\";" : "", pool_extra);
    double t0 = bench_now();
    pid_t pid = bench_start_daemon(daemon, work, text);
    if (pid < 0)
        return -1;
    int status = -1;
    if (bench_wait_ready(sock, work, pid, ndesktops, 600, 20, NULL) < 0)
        goto out;
    r->first_fill = bench_now() - t0;
    json_t *p = pool_json();
    r->image_seconds = json_real_value(
        json_object_get(json_object_get(p, "memory_image"), "built_seconds"));
    json_decref(p);

    /* 3. memory, before the refills churn it: RSS, then KSM. */
    sleep(12); /* a host reading (every 10 s) */
    p = pool_json();
    r->rss_mib = (double)json_integer_value(json_object_get(json_object_get(p, "memory"),
                                                            "rss_bytes")) /
                 1048576.0;
    json_decref(p);
    long long before = read_sys("/sys/kernel/mm/ksm/pages_sharing");
    write_sys("/sys/kernel/mm/ksm/pages_to_scan", "20000");
    write_sys("/sys/kernel/mm/ksm/sleep_millisecs", "10");
    write_sys("/sys/kernel/mm/ksm/run", "1");
    sleep(KSM_SECONDS);
    r->ksm_saved_mib = (double)(read_sys("/sys/kernel/mm/ksm/pages_sharing") - before) *
                       (double)sysconf(_SC_PAGESIZE) / 1048576.0;
    write_sys("/sys/kernel/mm/ksm/run", "2"); /* unmerge: the next run starts equal */
    sleep(2);
    write_sys("/sys/kernel/mm/ksm/run", "0");

    /* 1. mass log-off: every desktop handed out, then all released. */
    for (unsigned i = 0; i < ndesktops; i++) {
        char user[32];
        snprintf(user, sizeof user, "u%u", i);
        if (acquire(user, NULL, 0) < 0)
            goto out;
    }
    if (system("sync; echo 3 > /proc/sys/vm/drop_caches") != 0)
        fprintf(stderr, "bench_resume: page cache not dropped\n");
    unsigned long long s0 = device_sectors_read(work);
    double t = bench_now();
    if (release_all(ndesktops) < 0 || bench_wait_ready(sock, work, pid, ndesktops, 600, 20, NULL) < 0)
        goto out;
    r->refill = bench_now() - t;
    r->read_mib = (double)(device_sectors_read(work) - s0) * 512.0 / 1048576.0;

    /* 2. one desktop: log-off to a fresh ready spare. */
    double *v = calloc(rounds, sizeof *v);
    for (unsigned i = 0; v && i < rounds; i++) {
        char user[32], name[64], path[256];
        snprintf(user, sizeof user, "one%u", i);
        if (acquire(user, name, sizeof name) < 0) {
            free(v);
            goto out;
        }
        snprintf(path, sizeof path, "/v1/desktops/%s/release", name);
        json_t *rel = NULL;
        vdi_error err = {0};
        double t1 = bench_now();
        vdi_client_call_json(sock, "POST", path, NULL, &rel, &err);
        json_decref(rel);
        if (bench_wait_ready(sock, work, pid, ndesktops, 300, 5, NULL) < 0) {
            free(v);
            goto out;
        }
        v[i] = bench_now() - t1;
    }
    if (v) {
        qsort(v, rounds, sizeof *v, bench_cmp_double);
        r->logoff = v[rounds / 2];
        free(v);
    }
    status = 0;
out:
    bench_stop_daemon(pid);
    destroy_prefix("bench-");
    bench_cleanup(work, gold);
    return status;
}

int main(int argc, char **argv)
{
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: bench_resume VDIPOOLD MAKE_DEMO_GOLD WORKDIR DESKTOPS ROUNDS "
                        "[LINUX_GOLD_DIR]\n");
        return 2;
    }
    snprintf(work, sizeof work, "%s", argv[3]);
    ndesktops = (unsigned)atoi(argv[4]);
    unsigned rounds = (unsigned)atoi(argv[5]);
    if (!ndesktops || !rounds || work[0] != '/') {
        fprintf(stderr, "bench_resume: DESKTOPS and ROUNDS must be positive, WORKDIR absolute\n");
        return 2;
    }
    const char *kinds[2] = {NULL, argc == 7 ? argv[6] : NULL};
    for (int k = 0; k < 2; k++) {
        if (k == 1 && !kinds[1])
            break;
        if (k == 0 && kinds[1] && getenv("BENCH_LINUX_ONLY"))
            continue; /* the demo gold's half was measured already */
        result boot, resume;
        if (run_mode(argv[1], argv[2], kinds[k], false, rounds, &boot) < 0 ||
            run_mode(argv[1], argv[2], kinds[k], true, rounds, &resume) < 0) {
            fprintf(stderr, "bench_resume: a run failed; see the log above\n");
            return 1;
        }
        const char *what = k ? "Linux gold (agent)" : "demo gold";
        printf("%s, %u desktops: refill after a mass log-off boot %.2f s, resume %.2f s "
               "(%.2fx), read %.1f / %.1f MiB; one log-off to a ready spare (median of %u) boot "
               "%.3f s, resume %.3f s (%.2fx); first fill boot %.2f s, resume %.2f s (image "
               "made in %.2f s); RSS of %u ready desktops boot %.0f MiB, resume %.0f MiB; KSM "
               "saved after %d s boot %.0f MiB, resume %.0f MiB\n",
               what, ndesktops, boot.refill, resume.refill, resume.refill / boot.refill,
               boot.read_mib, resume.read_mib, rounds, boot.logoff, resume.logoff,
               resume.logoff / boot.logoff, boot.first_fill, resume.first_fill,
               resume.image_seconds, ndesktops, boot.rss_mib, resume.rss_mib, KSM_SECONDS,
               boot.ksm_saved_mib, resume.ksm_saved_mib);
        fflush(stdout);
    }
    return 0;
}
