/* fuzz_http — libFuzzer target for the control API's request parser and
 * routes: each input is one request as a client would send it, parsed with
 * the transport's own limits and handed to the real routes of a service
 * with one pool (no libvirt: the desktop operations do nothing). Answers
 * that come from workers (metrics, space, reload) are waited for.
 * Seeds: tests/fuzz/corpus/http.
 * Run longer: build-fuzz/tests/fuzz/fuzz_http -max_total_time=3600 CORPUS_DIR */
#include "api.h"
#include "api_routes.h"
#include "daemon.h"
#include "dashboard.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static service svc;

static void no_op(desktop *d) { (void)d; }
static int64_t clock_now(void) { return 1000000; }
static void no_budget(desktop *d, uint64_t threshold)
{
    (void)d;
    (void)threshold;
}
static const desktop_ops ops = { no_op, no_op, no_op, no_op, no_budget, clock_now };

static void start_service(void)
{
    static char dir[] = "/tmp/vdipool-fuzz-http-XXXXXX";
    if (!mkdtemp(dir))
        abort();
    char conf[256], text[1024];
    snprintf(conf, sizeof conf, "%s/vdipool.conf", dir);
    snprintf(text, sizeof text,
             "service = { socket = \"%s/sock\"; state_dir = \"%s/state\"; log_level = \"error\";\n"
             "  acquire_timeout = \"0\"; };\n"
             "datastores = ( { name = \"local\"; path = \"%s\"; } );\n"
             "pools = ( { name = \"demo\"; desktop_prefix = \"fz\"; gold = \"/nonexistent.qcow2\";\n"
             "  datastore = \"local\"; size = 2; spares = 1; } );\n",
             dir, dir, dir);
    FILE *f = fopen(conf, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0)
        abort();
    vdi_config_options o = { .skip_filesystem_checks = true };
    vdi_config *cfg = NULL;
    vdi_config_errors *errs = NULL;
    if (vdi_config_parse_string(text, conf, &o, &cfg, &errs) < 0)
        abort();
    vdi_catalog *cat = NULL;
    char state[256];
    snprintf(state, sizeof state, "%s/state", dir);
    if (vdi_catalog_open(state, &cat, NULL) < 0)
        abort();
    log_configure(VDI_LOG_ERROR, false);
    if (service_init(&svc, uv_default_loop(), conf, cfg, cat, &ops) < 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!svc.loop)
        start_service();
    /* Reload would re-read the file above: the routes are still reached. */
    int status =
        api_request_fuzz((const char *)data, size, api_route, dashboard_serve, &svc, svc.loop);
    if (status != 0 && (status < 200 || status > 599))
        abort();
    return 0;
}
