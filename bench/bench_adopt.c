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
 * the adoption itself by vdipoold's log (its connection to libvirt to every
 * desktop adopted: the test driver's opening, which moves by seconds here,
 * is not in it), and the daemon's RSS then. */
#include "bench_util.h"
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

/* Seconds into the day of the first line of vdipoold's log that holds
 * `needle` ("2026-11-26T10:59:48.733Z info ..."), or -1. */
static double log_time(const char *log, const char *needle)
{
    FILE *f = fopen(log, "r");
    char line[1024];
    double at = -1;
    while (f && at < 0 && fgets(line, sizeof line, f)) {
        unsigned h, m;
        double sec;
        if (strstr(line, needle) && sscanf(line, "%*10sT%u:%u:%lfZ", &h, &m, &sec) == 3)
            at = h * 3600.0 + m * 60.0 + sec;
    }
    if (f)
        fclose(f);
    return at;
}

int main(int argc, char **argv)
{
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: bench_adopt VDIPOOLD MAKE_DEMO_GOLD WORKDIR N [HISTORY]\n"
                        "  HISTORY: finished sessions already in the catalog (a year's use),\n"
                        "  and every other desktop has a user's session open\n");
        return 2;
    }
    const char *daemon = argv[1], *make_gold = argv[2], *work = argv[3];
    unsigned n = (unsigned)atoi(argv[4]);
    unsigned long history = argc == 6 ? strtoul(argv[5], NULL, 10) : 0;
    if (n == 0 || work[0] != '/') {
        fprintf(stderr, "bench_adopt: N must be positive and WORKDIR absolute\n");
        return 2;
    }
    unsigned width = 3;
    for (unsigned v = n; v >= 1000; v /= 10)
        width++; /* as vdipoold names a pool's desktops */
    char gold[600], node[600], sock[600], text[4096];
    snprintf(gold, sizeof gold, "%s/gold.qcow2", work);
    if (bench_prepare(work, daemon, make_gold, gold, 0) < 0)
        return 1;
    snprintf(node, sizeof node, "%s/node.xml", work);
    if (bench_record_children(work, gold, "bench", n, width, "bench") < 0 ||
        write_node(node, work, gold, n, width) < 0 ||
        (argc == 6 && bench_record_sessions(work, "bench", "bench", n, width, history, 2) < 0))
        return 1;

    /* libvirt's own cost: the test driver parses the node file on open. */
    char uri[700];
    snprintf(uri, sizeof uri, "test://%s", node);
    double t0 = bench_now();
    virConnectPtr conn = virConnectOpen(uri);
    if (!conn) {
        fprintf(stderr, "bench_adopt: cannot open %s\n", uri);
        return 1;
    }
    int ndom = virConnectNumOfDomains(conn);
    double t_open = bench_now() - t0;
    virConnectClose(conn);

    snprintf(sock, sizeof sock, "%s/sock", work);
    snprintf(text, sizeof text,
             "service = { socket = \"%s\"; state_dir = \"%s/state\"; libvirt_uri = \"%s\";\n"
             "  log_level = \"info\"; };\n"
             "datastores = ( { name = \"local\"; path = \"%s/ds\"; reserve = \"0\";\n"
             "  max_overcommit = 1000.0; } );\n"
             "pools = ( { name = \"bench\"; gold = \"%s\"; datastore = \"local\";\n"
             "  size = %u; spares = %u; expected_growth = \"1M\";\n"
             "  domain = { memory = \"32M\"; vcpus = 1; network = \"none\"; graphics = "
             "\"none\"; accel = \"tcg\"; }; } );\n",
             sock, work, uri, work, gold, n, n);
    t0 = bench_now();
    pid_t pid = bench_start_daemon(daemon, work, text);
    if (pid < 0)
        return 1;
    /* With a history, every other desktop is adopted with its user's open
     * session (assigned), the rest as spares (ready). */
    unsigned assigned = argc == 6 ? n / 2 : 0;
    int ready = -1;
    if (bench_wait_ready(sock, work, pid, n - assigned, 300, 50, &ready) == -1)
        return 1;
    int adopted_assigned = bench_count(sock, "assigned");
    if (ready + adopted_assigned < (int)n)
        fprintf(stderr, "bench_adopt: %d ready and %d assigned of %u\n", ready,
                adopted_assigned, n);
    ready += adopted_assigned;
    double t_ready = bench_now() - t0;
    long rss = bench_rss_kib(pid);
    /* Nothing adopted may have been cloned anew or removed as a stray. */
    int cloning = bench_count(sock, "cloning");
    /* The adoption itself, from vdipoold's own log (at the default level,
     * info: one line per desktop adopted, as an operator's daemon writes):
     * from its connection to libvirt (after the test driver's opening of the
     * node file, which any client pays) to every desktop adopted. */
    char log[700];
    snprintf(log, sizeof log, "%s/vdipoold.log", work);
    double connected = log_time(log, "host=local event=connected"),
           adopted = log_time(log, "host=local event=adopted");
    if (connected >= 0 && adopted >= 0 && adopted < connected)
        adopted += 86400; /* across midnight */
    printf("adopt %u desktops (%d test-driver domains, %lu past sessions, %d open): libvirt "
           "opens the node file in %.2f s; vdipoold start to %d adopted in %.2f s (%.2f s beyond "
           "libvirt's open); by its log, connected to all adopted in %.2f s; %d cloning, RSS %ld "
           "KiB\n",
           n, ndom, history, adopted_assigned, t_open, ready, t_ready, t_ready - t_open,
           connected >= 0 && adopted >= 0 ? adopted - connected : -1.0, cloning, rss);
    bench_stop_daemon(pid);
    bench_cleanup(work, gold);
    return ready == (int)n ? 0 : 1;
}
