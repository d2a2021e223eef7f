/* test_desktops.c — the whole product against a real libvirtd and QEMU
 * (TCG) with the demo gold: a user logs off by pressing a key (the guest
 * powers itself off through ACPI), the desktop and its child are destroyed
 * and replaced, the gold is untouched, a restart of vdipoold during a
 * session leaves the session alone, and a domain that takes a desktop's
 * name behind vdipool's back is never handed out. */
#include "helpers.h"
#include "service_helpers.h"
#include "vdi_engine.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static th_daemon D;

static void setup(void)
{
    ck_assert_msg(th_run(NULL, "virsh -c qemu:///system list") == 0,
                  "libvirtd is not answering on qemu:///system (deploy/setup.sh starts it)");
    th_daemon_prepare(&D, "desktops", "qemu:///system");
}

static void thaw_qemu(void);

static void stop_continuer(void);

static void teardown(void)
{
    thaw_qemu();
    stop_continuer();
    th_daemon_stop(&D);
    th_daemon_cleanup_domains(&D);
}

static char *domain_id(const char *name)
{
    char *out = NULL;
    th_run(&out, "virsh -c qemu:///system domid %s", name);
    return out;
}

/* The domain's state (virsh domstate) contains `want`. */
static void assert_domain_state(const char *name, const char *want)
{
    char *state = th_must("virsh -c qemu:///system domstate %s", name);
    ck_assert_msg(strstr(state, want), "%s is %s, not %s", name, state, want);
    free(state);
}

/* An acquire for `user` answers 200 with desktop `name`. */
static void assert_acquire_gets(const char *user, const char *name)
{
    json_t *a = th_acquire(&D, user, 200);
    ck_assert_str_eq(json_string_value(json_object_get(a, "desktop")), name);
    json_decref(a);
}

START_TEST(logoff_replaces_desktop_and_spares_the_gold)
{
    th_daemon_write_config(&D, 3, 3, NULL);
    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 3, 90));

    json_t *a = th_acquire(&D, "alice", 200);
    char name[96];
    snprintf(name, sizeof name, "%s", json_string_value(json_object_get(a, "desktop")));
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(a, "display")), "vnc://"));
    json_decref(a);
    json_t *d = th_get_desktop(&D, name);
    char child[4096];
    snprintf(child, sizeof child, "%s", json_string_value(json_object_get(d, "child")));
    json_decref(d);
    struct stat before;
    ck_assert_int_eq(stat(child, &before), 0);
    char *id_before = domain_id(name);
    /* Its metadata names the gold's fingerprint as sealed (compared below,
     * once the catalog is free to open). */
    char *sealed_hash = th_must(
        "virsh -c qemu:///system dumpxml %s | grep -o '<vdipool:gold-sha256>[0-9a-f]*<'", name);
    /* Started paused, budgeted, then run: the domain runs with a write
     * budget above what its child holds. */
    assert_domain_state(name, "running");
    char *stats = th_must("virsh -c qemu:///system domstats --block %s", name);
    const char *threshold = strstr(stats, "block.0.threshold=");
    ck_assert_msg(threshold, "no write budget on %s:\n%s", name, stats);
    ck_assert_uint_gt(strtoull(threshold + strlen("block.0.threshold="), NULL, 10),
                      (uint64_t)before.st_blocks * 512);
    free(stats);

    /* The user logs off: a key press makes the guest power itself off. */
    sleep(2); /* let the boot sector reach its wait loop */
    free(th_must("virsh -c qemu:///system send-key %s KEY_Q", name));

    time_t end = time(NULL) + 60;
    bool replaced = false;
    while (!replaced && time(NULL) < end) {
        d = th_get_desktop(&D, name);
        const char *st = json_string_value(json_object_get(d, "state"));
        struct stat now;
        /* A new file at the same path: the inode may be reused, its ctime is later. */
        replaced = !strcmp(st, "ready") && stat(child, &now) == 0 &&
                   (now.st_ino != before.st_ino || now.st_ctim.tv_sec != before.st_ctim.tv_sec ||
                    now.st_ctim.tv_nsec != before.st_ctim.tv_nsec);
        json_decref(d);
        if (!replaced)
            usleep(200000);
    }
    if (!replaced) {
        char *log = th_must("tail -30 %s/vdipoold.log", D.dir);
        ck_abort_msg("desktop %s was not replaced after the guest powered off:\n%s", name, log);
    }
    char *id_after = domain_id(name);
    ck_assert_str_ne(id_before, id_after); /* a new domain */
    free(id_before);
    free(id_after);

    char *metrics = th_must("curl -s --unix-socket %s http://vdipool/metrics", D.sock);
    ck_assert_ptr_nonnull(
        strstr(metrics, "vdipool_sessions_ended_total{pool=\"demo\",reason=\"guest-shutdown\"} 1"));
    free(metrics);

    /* The session is recorded with its end reason and final size, and the
     * gold matches its fingerprint: content, size, mtime. */
    ck_assert_int_eq(th_daemon_stop(&D), 0);
    vdi_catalog *cat = NULL;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_catalog_open(D.state, &cat, &err), 0);
    ck_assert_msg(vdi_guard_check(cat, D.gold, true, &err) == 0, "%s", err.message);
    vdi_gold_info g;
    ck_assert_int_eq(vdi_catalog_gold(cat, D.gold, &g, &err), 0);
    char hex[2 * VDI_HASH_SIZE + 1], want[sizeof hex + 32];
    vdi_hash_hex(g.fp.hash, hex, sizeof hex);
    snprintf(want, sizeof want, "<vdipool:gold-sha256>%s<", hex);
    ck_assert_msg(strstr(sealed_hash, want), "metadata %s, sealed %s", sealed_hash, hex);
    free(sealed_hash);
    uint64_t p95 = 0;
    size_t samples = 0;
    ck_assert_int_eq(vdi_catalog_growth_p95(cat, "demo", 1, &p95, &samples, &err), 0);
    ck_assert_uint_eq(samples, 1);
    ck_assert_uint_gt(p95, 0);
    vdi_catalog_close(cat);
}
END_TEST

START_TEST(restart_keeps_sessions)
{
    th_daemon_write_config(&D, 2, 1, NULL);
    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 1, 90));
    json_t *a = th_acquire(&D, "carol", 200);
    char name[96], display[128];
    snprintf(name, sizeof name, "%s", json_string_value(json_object_get(a, "desktop")));
    snprintf(display, sizeof display, "%s", json_string_value(json_object_get(a, "display")));
    json_decref(a);
    char *id_before = domain_id(name);

    ck_assert_int_eq(th_daemon_stop(&D), 0);
    assert_domain_state(name, "running");

    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 1, 60));
    json_t *d = th_get_desktop(&D, name);
    ck_assert_str_eq(json_string_value(json_object_get(d, "state")), "assigned");
    ck_assert_str_eq(json_string_value(json_object_get(d, "user")), "carol");
    ck_assert_str_eq(json_string_value(json_object_get(d, "display")), display);
    json_decref(d);
    char *id_after = domain_id(name);
    ck_assert_str_eq(id_before, id_after); /* the very same domain */
    free(id_before);
    free(id_after);
    /* And asking again still gives carol the same desktop. */
    assert_acquire_gets("carol", name);

    /* A bad config on reload leaves the running one in place. */
    th_write_file(D.conf, "pools = 1;\n", 11);
    ck_assert_int_eq(th_http(&D, "POST", "/v1/reload", NULL, &a), 400);
    json_decref(a);
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &a), 200);
    ck_assert_int_eq(json_integer_value(json_object_get(a, "size")), 2);
    json_decref(a);
}
END_TEST

START_TEST(libvirtd_restart_is_survived)
{
    /* libvirt goes away on purpose: an end tried meanwhile fails and is
     * retried once it is back. */
    D.end_failures_expected = true;
    const char *src = getenv("VDI_SOURCE_DIR");
    ck_assert_ptr_nonnull(src);
    th_daemon_write_config(&D, 3, 2, NULL);
    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 2, 90));
    json_t *a = th_acquire(&D, "dan", 200);
    char name[96];
    snprintf(name, sizeof name, "%s", json_string_value(json_object_get(a, "desktop")));
    json_decref(a);
    json_decref(th_wait_ready(&D, 2, 60));

    /* libvirtd goes away (QEMU keeps running), then comes back. */
    th_run(NULL, "pkill -x libvirtd");
    time_t end = time(NULL) + 30;
    bool disconnected = false;
    while (!disconnected && time(NULL) < end) {
        ck_assert_int_eq(th_http(&D, "GET", "/v1/status", NULL, &a), 200);
        disconnected = json_is_false(json_object_get(a, "libvirt_connected"));
        json_decref(a);
        usleep(200000);
    }
    ck_assert_msg(disconnected, "vdipoold did not notice libvirtd going away");
    free(th_must("bash %s/deploy/setup.sh", src));
    end = time(NULL) + 60;
    bool connected = false;
    while (!connected && time(NULL) < end) {
        ck_assert_int_eq(th_http(&D, "GET", "/v1/status", NULL, &a), 200);
        connected = json_is_true(json_object_get(a, "libvirt_connected"));
        json_decref(a);
        usleep(200000);
    }
    ck_assert_msg(connected, "vdipoold did not reconnect");
    /* Nothing was touched: the session and the spares are still there. */
    json_t *d = th_get_desktop(&D, name);
    ck_assert_str_eq(json_string_value(json_object_get(d, "state")), "assigned");
    json_decref(d);
    json_decref(th_wait_ready(&D, 2, 30));
    assert_domain_state(name, "running");
}
END_TEST

/* vdipoold dies after starting a desktop paused and before running it:
 * the next start finds a paused spare that was never handed out, ends it
 * and makes a new one. */
START_TEST(crash_between_paused_start_and_run_is_recovered)
{
    th_daemon_write_config(&D, 1, 1, NULL);
    th_daemon_start_until_crash(&D, "start:paused", 60);
    char name[96];
    snprintf(name, sizeof name, "%s-001", D.prefix);
    assert_domain_state(name, "paused");
    char *id_before = domain_id(name);

    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 1, 90));
    assert_domain_state(name, "running");
    char *id_after = domain_id(name);
    ck_assert_str_ne(id_before, id_after); /* the paused one was ended, a new one runs */
    free(id_before);
    free(id_after);
    assert_acquire_gets("dave", name);
}
END_TEST

/* The QEMU a test froze, so that teardown thaws it whatever failed. */
static pid_t frozen_qemu;

static void thaw_qemu(void)
{
    if (frozen_qemu > 0)
        kill(frozen_qemu, SIGCONT);
    frozen_qemu = 0;
}

/* Suspends domain `name`, freezes its QEMU (SIGSTOP) and starts `virsh
 * resume` on it, which now waits on QEMU's monitor: a libvirt job on the
 * domain ("occupied" in domcontrol) until the QEMU is thawed. */
static void freeze_under_resume(const char *name)
{
    free(th_must("virsh -c qemu:///system suspend %s", name));
    char *pid = th_must("pgrep -f 'guest=%s,'", name);
    frozen_qemu = (pid_t)atol(pid);
    free(pid);
    ck_assert_int_gt(frozen_qemu, 1);
    ck_assert_int_eq(kill(frozen_qemu, SIGSTOP), 0);
    free(th_must("(timeout 120 virsh -c qemu:///system resume %s > %s/resume.out 2>&1 &)", name,
                 D.dir));
    time_t end = time(NULL) + 30;
    bool occupied = false;
    while (!occupied && time(NULL) < end) {
        char *control = NULL;
        th_run(&control, "virsh -c qemu:///system domcontrol %s", name);
        occupied = control && strstr(control, "occupied");
        free(control);
        if (!occupied)
            usleep(100000);
    }
    ck_assert_msg(occupied, "libvirt's resume of %s did not wait on the frozen QEMU", name);
}

/* The view shows `state`, and user hank's session `session`. */
static void assert_desktop_held_for(const char *name, const char *state, json_int_t session)
{
    json_t *d = th_get_desktop(&D, name);
    ck_assert_str_eq(json_string_value(json_object_get(d, "state")), state);
    ck_assert_str_eq(json_string_value(json_object_get(d, "user")), "hank");
    ck_assert_int_eq(json_integer_value(json_object_get(d, "session_id")), session);
    json_decref(d);
}

/* vdipoold starts while libvirt still works on one of its domains (here a
 * resume that waits on a frozen QEMU; after a crash, a start or restore
 * libvirt runs on for the dead daemon). Adoption would end the paused
 * domain — destroying it in the middle of libvirt's job, which crashed
 * libvirtd 9.0 — so that desktop is held (state adopting: not handed out,
 * not ended, its slot not cloned into, its user's session kept) while the
 * host's other desktop is adopted and handed out at once; once the job is
 * done the held one is adopted as it is: the same domain, running, still
 * its user's, in the same session. */
START_TEST(adoption_waits_for_libvirt_jobs)
{
    th_daemon_write_config(&D, 2, 2, NULL);
    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 2, 120));
    json_t *a = th_acquire(&D, "hank", 200);
    char held[96], other[96];
    snprintf(held, sizeof held, "%s", json_string_value(json_object_get(a, "desktop")));
    json_decref(a);
    snprintf(other, sizeof other, "%s-%s", D.prefix, strstr(held, "-001") ? "002" : "001");
    json_t *view = th_get_desktop(&D, held);
    json_int_t session = json_integer_value(json_object_get(view, "session_id"));
    json_decref(view);
    ck_assert_int_gt(session, 0);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
    unsigned clones = th_daemon_log_count(&D, "event=cloned"); /* the log goes on across starts */
    char *id_before = domain_id(held);

    freeze_under_resume(held);

    th_daemon_start(&D);
    char waiting[160];
    snprintf(waiting, sizeof waiting, "desktop=%s event=adopt-waiting", held);
    ck_assert_msg(th_daemon_log_wait(&D, waiting, 30),
                  "vdipoold did not wait for libvirt's job on %s", held);
    /* The host is adopted and its other desktop handed out meanwhile. */
    json_decref(th_wait_ready(&D, 1, 30));
    assert_acquire_gets("frank", other);
    sleep(2); /* two more checks of the held one: still waiting, nothing ended */
    assert_desktop_held_for(held, "adopting", session);
    json_t *hosts = NULL;
    ck_assert_int_eq(th_http(&D, "GET", "/v1/hosts", NULL, &hosts), 200);
    json_t *host = json_array_get(json_object_get(hosts, "hosts"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(host, "connection")), "connected");
    ck_assert_int_eq(
        json_integer_value(json_object_get(json_object_get(host, "desktops_by_state"), "adopting")),
        1);
    json_decref(hosts);
    char path[160];
    snprintf(path, sizeof path, "/v1/desktops/%s/release", held);
    json_t *refused = NULL;
    ck_assert_int_eq(th_http(&D, "POST", path, "{\"reason\":\"operator\"}", &refused), 409);
    json_decref(refused);
    char *id_waiting = domain_id(held);
    ck_assert_str_eq(id_before, id_waiting);
    free(id_waiting);
    ck_assert_msg(!th_daemon_log_count(&D, "event=ending"),
                  "a desktop was ended while libvirt worked on it");
    ck_assert_msg(th_daemon_log_count(&D, "event=cloned") == clones, "a slot was cloned into");

    thaw_qemu();
    snprintf(waiting, sizeof waiting, "desktop=%s event=adopt-wait-over", held);
    ck_assert(th_daemon_log_wait(&D, waiting, 30));
    assert_desktop_held_for(held, "assigned", session);
    assert_domain_state(held, "running");
    char *id_after = domain_id(held);
    ck_assert_str_eq(id_before, id_after); /* adopted as it is, not replaced */
    free(id_before);
    free(id_after);
    assert_acquire_gets("hank", held); /* the same user, the same desktop */
}
END_TEST

/* libvirt's job does not end within service.adopt_wait (here 4 s): the
 * held desktop is adopted as it is then — paused, so of no use — and
 * ended, and its slot gets a new desktop. libvirtd stays up. */
START_TEST(adoption_gives_up_after_adopt_wait)
{
    th_daemon_write_config(&D, 1, 1, NULL);
    th_daemon_add_service_setting(&D, "adopt_wait = \"4s\";");
    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 1, 90));
    ck_assert_int_eq(th_daemon_stop(&D), 0);
    char name[96];
    snprintf(name, sizeof name, "%s-001", D.prefix);
    char *id_before = domain_id(name);
    freeze_under_resume(name);

    th_daemon_start(&D);
    ck_assert(th_daemon_log_wait(&D, "event=adopt-waiting", 30));
    ck_assert_msg(th_daemon_log_wait(&D, "event=adopt-wait-given-up", 30),
                  "the held desktop was not adopted after adopt_wait");
    /* Not much past adopt_wait: the checks' back-off stops at it. */
    ck_assert(th_daemon_log_count(&D, "event=adopt-wait-given-up waited=[45]s"));
    ck_assert(th_daemon_log_wait(&D, "event=paused reason=\"paused outside vdipool\"", 10));
    char ending[160];
    snprintf(ending, sizeof ending, "desktop=%s event=ending", name);
    ck_assert(th_daemon_log_wait(&D, ending, 10));
    /* Decided: thawed now, so that libvirt's destroy need not wait out the
     * grace it gives a QEMU that ignores SIGTERM (10 s) before SIGKILL. */
    thaw_qemu();
    json_decref(th_wait_ready(&D, 1, 90)); /* a new desktop in the slot */
    char *id_after = domain_id(name);
    ck_assert_str_ne(id_before, id_after);
    free(id_before);
    free(id_after);
    assert_domain_state(name, "running");
    assert_acquire_gets("gina", name);
}
END_TEST

/* The process a test forked to keep a stopped daemon going; teardown
 * ends it whatever failed. */
static pid_t continuer;

static void stop_continuer(void)
{
    if (continuer > 0) {
        kill(continuer, SIGKILL);
        waitpid(continuer, NULL, 0);
    }
    continuer = 0;
}

/* Continues the daemon (SIGCONT) every 50 ms while it lives, so that every
 * later pass of its stop point costs only a moment. */
static void keep_daemon_going(void)
{
    pid_t daemon = D.pid;
    continuer = fork();
    ck_assert_int_ge(continuer, 0);
    if (continuer == 0) {
        while (kill(daemon, SIGCONT) == 0)
            usleep(50000);
        _exit(0);
    }
}

/* A domain under a desktop's name that appears after adoption listed the
 * host and before the desktop's start — a restore that libvirtd registered
 * only after the listing, begun for a vdipoold that crashed a moment
 * earlier — is never taken for the desktop or handed out: the start finds
 * the name taken and fails, the desktop's end destroys that domain, and
 * the slot is cloned and started again. Here the daemon is stopped after
 * its first clone of the slot, and the late domain (the demo guest on a
 * child of its own) is made by hand meanwhile. */
START_TEST(domain_appearing_before_start_is_replaced)
{
    th_daemon_write_config(&D, 1, 1, NULL);
    th_daemon_start_until_stop(&D, "clone:renamed", 60);
    char name[96], late[1200], xml_path[1200], xml[4096];
    snprintf(name, sizeof name, "%s-001", D.prefix);
    snprintf(late, sizeof late, "%s/late.qcow2", D.dir);
    snprintf(xml_path, sizeof xml_path, "%s/late.xml", D.dir);
    free(th_must("qemu-img create -q -f qcow2 -b %s -F qcow2 %s && chmod 0666 %s", D.gold, late,
                 late));
    snprintf(xml, sizeof xml,
             "<domain type='qemu'><name>%s</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
             "<os><type arch='x86_64'>hvm</type></os><features><acpi/></features><devices>"
             "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
             "<source file='%s'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
             name, late);
    th_write_file(xml_path, xml, strlen(xml));
    free(th_must("virsh -c qemu:///system create %s", xml_path));
    char *late_id = domain_id(name);

    keep_daemon_going();
    json_decref(th_wait_ready(&D, 1, 120));
    char failed[160];
    snprintf(failed, sizeof failed, "desktop=%s event=failed .*already exists", name);
    ck_assert_msg(th_daemon_log_count(&D, failed) >= 1, "the start did not find the name taken");
    /* The desktop that is ready is vdipool's own: a new domain on the
     * slot's child, never the late one. */
    char *id_now = domain_id(name);
    ck_assert_str_ne(late_id, id_now);
    free(late_id);
    free(id_now);
    json_t *d = th_get_desktop(&D, name);
    const char *child = json_string_value(json_object_get(d, "child"));
    ck_assert_ptr_nonnull(child);
    char *disks = th_must("virsh -c qemu:///system domblklist %s", name);
    ck_assert_msg(strstr(disks, child) && !strstr(disks, late), "%s runs on %s", name, disks);
    free(disks);
    free(th_must("qemu-img check -U -q %s", child)); /* it runs: share its lock */
    json_decref(d);
    assert_acquire_gets("ida", name);
    /* The late domain's own disk is not vdipool's: it is left where it is. */
    struct stat st;
    ck_assert_int_eq(stat(late, &st), 0);
}
END_TEST

/* An operator defined a running desktop's domain (virsh define): its end
 * destroys and undefines it, and the slot's next domain is vdipool's own,
 * transient again. */
START_TEST(defined_domain_is_undefined_at_its_end)
{
    th_daemon_write_config(&D, 1, 1, NULL);
    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 1, 90));
    char name[96], xml_path[1200];
    snprintf(name, sizeof name, "%s-001", D.prefix);
    snprintf(xml_path, sizeof xml_path, "%s/defined.xml", D.dir);
    free(th_must("virsh -c qemu:///system dumpxml --inactive %s > %s && "
                 "virsh -c qemu:///system define %s",
                 name, xml_path, xml_path));
    char *info = th_must("virsh -c qemu:///system dominfo %s", name);
    ck_assert_msg(strstr(info, "Persistent:     yes"), "not defined:\n%s", info);
    free(info);
    char *id_before = domain_id(name);
    assert_acquire_gets("ola", name);
    char path[160];
    snprintf(path, sizeof path, "/v1/desktops/%s/release", name);
    json_t *j = NULL;
    ck_assert_int_eq(th_http(&D, "POST", path, NULL, &j), 200);
    json_decref(j);
    /* Ready again on a new domain, which vdipool made: transient. */
    char *id_now = NULL;
    for (int i = 0; i < 600; i++) {
        json_t *d = th_get_desktop(&D, name);
        bool ready = !strcmp(json_string_value(json_object_get(d, "state")), "ready");
        json_decref(d);
        free(id_now);
        id_now = ready ? domain_id(name) : NULL;
        if (id_now && strcmp(id_now, id_before))
            break;
        usleep(100 * 1000);
    }
    ck_assert_ptr_nonnull(id_now);
    ck_assert_str_ne(id_now, id_before);
    info = th_must("virsh -c qemu:///system dominfo %s", name);
    ck_assert_msg(strstr(info, "Persistent:     no"), "still defined:\n%s", info);
    free(info);
    free(id_before);
    free(id_now);
    ck_assert_int_eq(th_daemon_log_count(&D, "event=end-failed"), 0);
}
END_TEST

TH_MAIN("desktops",
        {"qemu",
         setup,
         teardown,
         240,
         {logoff_replaces_desktop_and_spares_the_gold, restart_keeps_sessions,
          libvirtd_restart_is_survived, crash_between_paused_start_and_run_is_recovered,
          adoption_waits_for_libvirt_jobs, adoption_gives_up_after_adopt_wait,
          domain_appearing_before_start_is_replaced, defined_domain_is_undefined_at_its_end, NULL}})
