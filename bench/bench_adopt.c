/* bench_adopt — how long vdipoold takes to start with N desktops already
 * running: it lists libvirt's domains, adopts each into its slot and serves
 * them, then checks the datastore for strays.
 *
 * The desktops are real children recorded in the catalog (as a daemon that
 * was stopped would have left them) and domains of libvirt's test driver,
 * loaded from a node file written here (test:///path/node.xml), carrying
 * the metadata vdipoold writes. No QEMU: this measures the service.
 *
 * Prints: the test driver's own time to open the node file (libvirt's cost,
 * paid by any client), the time from exec to every desktop served as ready,
 * and the daemon's RSS then. */
#include "vdi_client.h"
#include "vdi_engine.h"

#include <jansson.h>
#include <libvirt/libvirt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* As vdipoold writes it (provisioner/daemon/daemon.h). */
#define VDI_XML_NS "urn:vdipool:desktop:1"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long rss_kib(pid_t pid)
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

static int count_in_state(const char *sock, const char *state)
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

/* The children the daemon would have left: recorded, named after their slots. */
static int make_children(const char *work, const char *gold, unsigned n, unsigned width)
{
    char state[600];
    snprintf(state, sizeof state, "%s/state", work);
    vdi_catalog *cat = NULL;
    vdi_cloner *cloner = NULL;
    vdi_error err = {0};
    vdi_clone_options opts;
    vdi_clone_options_init(&opts);
    char **names = calloc(n, sizeof *names);
    int rc = -1;
    if (!names || vdi_catalog_open(state, &cat, &err) < 0 ||
        vdi_cloner_new(gold, &opts, &cloner, &err) < 0)
        goto out;
    for (unsigned i = 0; i < n; i++)
        if (asprintf(&names[i], "%s/ds/bench-%0*u.qcow2", work, (int)width, i + 1) < 0)
            goto out;
    vdi_child_meta meta = {.datastore = "local", .pool = "bench", .slot = -1};
    size_t made = 0;
    if (vdi_clone_batch_recorded(cat, cloner, names, n, &meta, &made, &err) < 0)
        goto out;
    rc = 0;
out:
    if (rc < 0)
        fprintf(stderr, "bench_adopt: cannot make children: %s\n", err.message);
    for (unsigned i = 0; names && i < n; i++)
        free(names[i]);
    free(names);
    vdi_cloner_free(cloner);
    vdi_catalog_close(cat);
    return rc;
}

/* Running test-driver domains with vdipoold's metadata. */
static int write_node(const char *path, const char *work, const char *gold, unsigned n,
                      unsigned width)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs("<node>\n", f);
    for (unsigned i = 1; i <= n; i++)
        fprintf(f,
                "<domain type='test'><name>bench-%0*u</name><memory>32768</memory>"
                "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
                "<source file='%s/ds/bench-%0*u.qcow2'/><target dev='vda' bus='virtio'/>"
                "</disk></devices><metadata><vdipool:desktop "
                "xmlns:vdipool='" VDI_XML_NS "'><vdipool:pool>bench</vdipool:pool>"
                "<vdipool:slot>%u</vdipool:slot><vdipool:child>%s/ds/bench-%0*u.qcow2"
                "</vdipool:child><vdipool:gold>%s</vdipool:gold></vdipool:desktop>"
                "</metadata></domain>\n",
                (int)width, i, work, (int)width, i, i, work, (int)width, i, gold);
    fputs("</node>\n", f);
    return fclose(f);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: bench_adopt VDIPOOLD MAKE_DEMO_GOLD WORKDIR N\n");
        return 2;
    }
    const char *daemon = argv[1], *make_gold = argv[2], *work = argv[3];
    unsigned n = (unsigned)atoi(argv[4]);
    if (n == 0 || work[0] != '/') {
        fprintf(stderr, "bench_adopt: N must be positive and WORKDIR absolute\n");
        return 2;
    }
    unsigned width = 3;
    for (unsigned v = n; v >= 1000; v /= 10)
        width++; /* as vdipoold names a pool's desktops */
    char ctl_dir[512], cmd[4096], gold[600], node[600], conf[600], sock[600], text[4096];
    snprintf(ctl_dir, sizeof ctl_dir, "%s", daemon);
    char *slash = strrchr(ctl_dir, '/');
    if (slash)
        *slash = '\0';
    snprintf(gold, sizeof gold, "%s/gold.qcow2", work);
    snprintf(cmd, sizeof cmd,
             "chattr -i %s 2>/dev/null; rm -rf %s && mkdir -p %s/ds && %s %s >/dev/null && "
             "VDIPOOL_STATE_DIR=%s/state %s/vdipoolctl image seal %s >/dev/null",
             gold, work, work, make_gold, gold, work, ctl_dir, gold);
    if (system(cmd) != 0) {
        fprintf(stderr, "bench_adopt: cannot prepare %s\n", work);
        return 1;
    }
    snprintf(node, sizeof node, "%s/node.xml", work);
    if (make_children(work, gold, n, width) < 0 || write_node(node, work, gold, n, width) < 0)
        return 1;

    /* libvirt's own cost: the test driver parses the node file on open. */
    char uri[700];
    snprintf(uri, sizeof uri, "test://%s", node);
    double t0 = now();
    virConnectPtr conn = virConnectOpen(uri);
    if (!conn) {
        fprintf(stderr, "bench_adopt: cannot open %s\n", uri);
        return 1;
    }
    int ndom = virConnectNumOfDomains(conn);
    double t_open = now() - t0;
    virConnectClose(conn);

    snprintf(sock, sizeof sock, "%s/sock", work);
    snprintf(conf, sizeof conf, "%s/vdipool.conf", work);
    snprintf(text, sizeof text,
             "service = { socket = \"%s\"; state_dir = \"%s/state\"; libvirt_uri = \"%s\";\n"
             "  log_level = \"warning\"; };\n"
             "datastores = ( { name = \"local\"; path = \"%s/ds\"; reserve = \"0\";\n"
             "  max_overcommit = 1000.0; } );\n"
             "pools = ( { name = \"bench\"; gold = \"%s\"; datastore = \"local\";\n"
             "  size = %u; spares = %u; expected_growth = \"1M\";\n"
             "  domain = { memory = \"32M\"; vcpus = 1; network = \"none\"; graphics = "
             "\"none\"; accel = \"tcg\"; }; } );\n",
             sock, work, uri, work, gold, n, n);
    FILE *f = fopen(conf, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0)
        return 1;
    t0 = now();
    pid_t pid = fork();
    if (pid == 0) {
        char log[600];
        snprintf(log, sizeof log, "%s/vdipoold.log", work);
        if (!freopen(log, "w", stderr))
            _exit(127);
        execl(daemon, daemon, "--config", conf, (char *)NULL);
        _exit(127);
    }
    double deadline = now() + 300;
    int ready = -1;
    while ((ready = count_in_state(sock, "ready")) < (int)n && now() < deadline) {
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            fprintf(stderr, "bench_adopt: vdipoold exited; see %s/vdipoold.log\n", work);
            return 1;
        }
        usleep(50000);
    }
    double t_ready = now() - t0;
    long rss = rss_kib(pid);
    /* Nothing adopted may have been cloned anew or removed as a stray. */
    int cloning = count_in_state(sock, "cloning");
    printf("adopt %u desktops (%d test-driver domains): libvirt opens the node file in %.2f s; "
           "vdipoold start to %d ready in %.2f s (%.2f s beyond libvirt's open), %d cloning, "
           "RSS %ld KiB\n",
           n, ndom, t_open, ready, t_ready, t_ready - t_open, cloning, rss);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    snprintf(cmd, sizeof cmd, "chattr -i %s 2>/dev/null; rm -rf %s", gold, work);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_adopt: %s left behind\n", work);
    return ready == (int)n ? 0 : 1;
}
