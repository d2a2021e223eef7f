/* test_paused.c — a guest that fills its datastore, against a real libvirtd
 * and QEMU. The writer gold's guest writes 32 MiB when a key is pressed; the
 * datastore is a 64 MiB ext4 (loop-mounted by the test) with a 40 MiB
 * ballast file, so the guest's child runs out of room half-way. QEMU stops
 * the guest (error_policy='stop'); vdipoold must show the desktop paused,
 * never hand it out, reclaim the ready spare, and either resume the guest
 * once there is room (the guest then finishes every write and powers off by
 * itself) or end the session after paused_timeout (reason no-space). The
 * desktop's write budget (a block threshold of 2 MiB) fires first. */
#include "helpers.h"
#include "service_helpers.h"
#include "vdi_engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static th_daemon D;
static char mnt[1200], writer[1200], ballast[1300];

static void unmount(void)
{
    if (mnt[0])
        th_run(NULL, "mountpoint -q %s && umount %s", mnt, mnt);
}

static void setup(void)
{
    ck_assert_msg(getuid() == 0, "the paused tests mount a filesystem: run them as root");
    ck_assert_msg(th_run(NULL, "virsh -c qemu:///system list") == 0,
                  "libvirtd is not answering on qemu:///system (deploy/setup.sh starts it)");
    th_daemon_prepare(&D, "paused", "qemu:///system");
    snprintf(writer, sizeof writer, "%s/writer.qcow2", D.dir);
    free(th_must("%s --writer 32 %s 64", getenv("MAKE_DEMO_GOLD"), writer));
    vdi_catalog *cat = NULL;
    vdi_error err = {0};
    ck_assert_msg(vdi_catalog_open(D.state, &cat, &err) == 0, "%s", err.message);
    vdi_seal_result r;
    ck_assert_msg(vdi_seal(cat, writer, &r, &err) == 0, "%s", err.message);
    vdi_catalog_close(cat);
    snprintf(mnt, sizeof mnt, "%s/small", D.dir);
    snprintf(ballast, sizeof ballast, "%s/ballast", mnt);
    free(th_must("mkdir -p %s && truncate -s 64M %s/small.img && mkfs.ext4 -q -F -m 0 -b 4096 "
                 "%s/small.img && mount -o loop %s/small.img %s && chmod 0755 %s && "
                 "fallocate -l 40M %s",
                 mnt, D.dir, D.dir, D.dir, mnt, mnt, ballast));
}

static void teardown(void)
{
    th_daemon_stop(&D);
    th_daemon_cleanup_domains(&D);
    unmount();
}

static void write_config(const char *paused_timeout)
{
    char text[8192];
    snprintf(text, sizeof text,
             "service = { socket = \"%s\"; state_dir = \"%s\"; libvirt_uri = \"%s\";\n"
             "  log_level = \"debug\"; acquire_timeout = \"2s\"; };\n"
             "datastores = ( { name = \"small\"; path = \"%s\"; reserve = \"0\";\n"
             "  max_overcommit = 1000.0; } );\n"
             "golds = ( { name = \"writer\"; path = \"%s\"; } );\n"
             "pools = ( { name = \"demo\"; desktop_prefix = \"%s\"; gold = \"writer\";\n"
             "  datastore = \"small\"; size = 2; spares = 1; expected_growth = \"2M\";\n"
             "  domain = { memory = \"32M\"; vcpus = 1; network = \"none\"; graphics = \"vnc\";\n"
             "             accel = \"tcg\"; };\n"
             "  session = { paused_timeout = \"%s\"; }; } );\n",
             D.sock, D.state, D.uri, mnt, writer, D.prefix, paused_timeout);
    th_write_file(D.conf, text, strlen(text));
}

static char *desktop_state(const char *name)
{
    json_t *j = th_get_desktop(&D, name);
    char *s = strdup(json_string_value(json_object_get(j, "state")));
    json_decref(j);
    return s;
}

/* Waits until the desktop is in `state`; fails with the daemon's log. */
static void wait_state(const char *name, const char *state, int timeout_s)
{
    time_t end = time(NULL) + timeout_s;
    while (time(NULL) <= end) {
        char *s = desktop_state(name);
        bool ok = !strcmp(s, state);
        free(s);
        if (ok)
            return;
        usleep(200000);
    }
    char *log = NULL;
    th_run(&log, "tail -40 %s/vdipoold.log", D.dir);
    fprintf(stderr, "%s", log ? log : "");
    free(log);
    ck_abort_msg("desktop %s did not become %s in %ds (log above)", name, state, timeout_s);
}

/* A user gets a desktop, a spare is ready beside it, and the user's guest
 * starts writing more than the datastore holds. */
static void fill_the_datastore(char *name, size_t len)
{
    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 1, 90));
    json_t *a = NULL;
    ck_assert_int_eq(th_http(&D, "POST", "/v1/pools/demo/acquire", "{\"user\": \"wendy\"}", &a),
                     200);
    snprintf(name, len, "%s", json_string_value(json_object_get(a, "desktop")));
    json_decref(a);
    json_decref(th_wait_ready(&D, 1, 90)); /* the spare beside it */
    free(th_must("virsh -c qemu:///system send-key %s KEY_ENTER", name));
    wait_state(name, "paused", 120);
    json_t *d = th_get_desktop(&D, name);
    ck_assert_str_eq(json_string_value(json_object_get(d, "paused_reason")), "no space");
    ck_assert_str_eq(json_string_value(json_object_get(d, "user")), "wendy");
    json_decref(d);
    /* The write budget fired before the datastore was full, and the pause
     * was logged once. */
    char log[1200];
    snprintf(log, sizeof log, "%s/vdipoold.log", D.dir);
    ck_assert_int_eq(th_run(NULL,
                            "awk '/event=write-budget-exceeded/ && !b {b=NR} /event=paused/ && "
                            "!p {p=NR} END {exit !(b && p && b < p)}' %s",
                            log),
                     0);
    ck_assert_int_eq(th_run(NULL, "test $(grep -c 'desktop=%s event=paused' %s) -eq 1", name, log),
                     0);
    char *metrics = th_must("curl -s --unix-socket %s http://vdipool/metrics", D.sock);
    ck_assert_ptr_nonnull(strstr(metrics, "vdipool_desktops{pool=\"demo\",state=\"paused\"} 1"));
    free(metrics);
}

START_TEST(paused_guest_is_resumed_when_there_is_room)
{
    write_config("0");
    char name[96];
    fill_the_datastore(name, sizeof name);
    /* The ready spare is reclaimed and none comes back while the guest waits. */
    json_t *p = NULL;
    time_t end = time(NULL) + 30;
    int64_t ready = 1;
    while (ready && time(NULL) <= end) {
        usleep(300000);
        json_decref(p);
        ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &p), 200);
        ready =
            json_integer_value(json_object_get(json_object_get(p, "desktops_by_state"), "ready"));
    }
    json_decref(p);
    ck_assert_msg(ready == 0, "the spare was not reclaimed");
    /* Nobody else gets the paused desktop. */
    json_t *a = NULL;
    int status = th_http(&D, "POST", "/v1/pools/demo/acquire", "{\"user\": \"zed\"}", &a);
    ck_assert_msg(status != 200 || strcmp(json_string_value(json_object_get(a, "desktop")), name),
                  "the paused desktop was handed out");
    json_decref(a);
    sleep(3);
    char *s = desktop_state(name);
    ck_assert_str_eq(s, "paused");
    free(s);
    /* A restart of vdipoold adopts it as paused, not as ready. */
    ck_assert_int_eq(th_daemon_stop(&D), 0);
    th_daemon_start(&D);
    wait_state(name, "paused", 30);
    json_t *again = th_get_desktop(&D, name);
    ck_assert_str_eq(json_string_value(json_object_get(again, "paused_reason")), "no space");
    json_decref(again);
    /* Room again: the guest is resumed, finishes every write and powers off. */
    ck_assert_int_eq(unlink(ballast), 0);
    end = time(NULL) + 120;
    bool ended = false;
    while (!ended && time(NULL) <= end) {
        char *metrics = th_must("curl -s --unix-socket %s http://vdipool/metrics", D.sock);
        ended = strstr(metrics, "reason=\"guest-shutdown\"} 1") != NULL;
        free(metrics);
        usleep(300000);
    }
    char *events = NULL;
    th_run(&events,
           "grep -E 'event=(write-budget|paused|spare-reclaimed|resumed|ended)' %s/vdipoold.log",
           D.dir);
    fprintf(stderr, "%s", events ? events : "");
    free(events);
    ck_assert_msg(ended, "the resumed guest did not finish its writes and power off");
    ck_assert_int_eq(th_run(NULL,
                            "grep -q 'desktop=%s event=resumed paused_seconds=' %s/vdipoold.log",
                            name, D.dir),
                     0);
}
END_TEST

START_TEST(paused_session_ends_after_paused_timeout)
{
    write_config("5s");
    char name[96];
    fill_the_datastore(name, sizeof name);
    time_t end = time(NULL) + 60;
    bool ended = false;
    while (!ended && time(NULL) <= end) {
        char *metrics = th_must("curl -s --unix-socket %s http://vdipool/metrics", D.sock);
        ended = strstr(metrics, "reason=\"no-space\"} 1") != NULL;
        free(metrics);
        usleep(300000);
    }
    ck_assert_msg(ended, "the paused session did not end with reason no-space");
    ck_assert_int_eq(
        th_run(NULL, "grep -q 'desktop=%s event=paused-too-long' %s/vdipoold.log", name, D.dir), 0);
}
END_TEST

TH_MAIN("paused", {"qemu",
                   setup,
                   teardown,
                   300,
                   {paused_guest_is_resumed_when_there_is_room,
                    paused_session_ends_after_paused_timeout, NULL}})
