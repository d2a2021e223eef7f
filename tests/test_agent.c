/* test_agent.c — ready_when = "agent" against a real libvirtd and QEMU (TCG)
 * with the Linux demo gold (deploy/make-linux-gold.sh: Debian kernel,
 * busybox, qemu-guest-agent): no desktop is ready before its agent answers,
 * each gets its own hostname, a user's log-off ends the session (the domain
 * is not powered off) and the next user's desktop holds none of the last
 * user's files; a gold whose OS never starts its agent is recycled after
 * boot_timeout and the pool says why.
 *
 * The golds are built once into $VDI_LINUX_GOLD_DIR (default
 * /var/cache/vdipool/linux-gold), again when the builder changes; each test
 * seals its own copy. */
#include "helpers.h"
#include "service_helpers.h"
#include "vdi_engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static th_daemon D;
static char golds[1024]; /* the builder's output */

static void build_linux_golds(void)
{
    const char *src = getenv("VDI_SOURCE_DIR");
    ck_assert_ptr_nonnull(src);
    const char *dir = getenv("VDI_LINUX_GOLD_DIR");
    snprintf(golds, sizeof golds, "%s", dir ? dir : "/var/cache/vdipool/linux-gold");
    /* Rebuilt when the builder or the guest helper changed. */
    char *stamp = th_must("cat %s/deploy/make-linux-gold.sh %s/deploy/guest/vdi-guest-user.c | "
                          "sha256sum | cut -c1-16",
                          src, src);
    stamp[strcspn(stamp, "\n")] = '\0';
    if (th_run(NULL, "grep -qx %s %s/.built-from", stamp, golds) != 0) {
        free(th_must("%s/deploy/make-linux-gold.sh %s", src, golds));
        free(th_must("echo %s > %s/.built-from", stamp, golds));
    }
    free(stamp);
}

static void seal_copy(const char *name)
{
    free(th_must("cp %s/%s.qcow2 %s/%s.qcow2", golds, name, D.dir, name));
    char path[1200];
    snprintf(path, sizeof path, "%s/%s.qcow2", D.dir, name);
    vdi_catalog *cat = NULL;
    vdi_error err = {0};
    vdi_seal_result r;
    ck_assert_msg(vdi_catalog_open(D.state, &cat, &err) == 0, "%s", err.message);
    ck_assert_msg(vdi_seal(cat, path, &r, &err) == 0, "%s", err.message);
    vdi_catalog_close(cat);
}

static void setup(void)
{
    ck_assert_msg(th_run(NULL, "virsh -c qemu:///system list") == 0,
                  "libvirtd is not answering on qemu:///system (deploy/setup.sh starts it)");
    build_linux_golds();
    th_daemon_prepare(&D, "agent", "qemu:///system");
}

static void teardown(void)
{
    th_daemon_stop(&D);
    th_daemon_cleanup_domains(&D);
    th_run(NULL, "chattr -i %s/*.qcow2 2>/dev/null", D.dir);
}

/* The body of pool "demo" on gold (a path or a family), ready when its
 * agent answers, booted from the Linux gold's template. */
static void write_agent_pool(const char *golds_text, const char *gold, unsigned size,
                             unsigned spares, const char *extra)
{
    char body[4096];
    snprintf(body, sizeof body,
             "gold = \"%s\"; size = %u; spares = %u; ready_when = \"agent\";\n"
             "  domain = { memory = \"192M\"; vcpus = 1; accel = \"tcg\";\n"
             "             template = \"%s/domain.xml\"; };\n"
             "  %s",
             gold, size, spares, golds, extra ? extra : "");
    th_daemon_write_pool(&D, "60s", golds_text, body);
}

/* One pool "demo" of a sealed copy of the named gold. */
static void write_config(const char *gold, unsigned size, unsigned spares, const char *extra)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s.qcow2", D.dir, gold);
    write_agent_pool(NULL, path, size, spares, extra);
}

/* A command's "return" through the guest agent, or NULL when it failed. */
static json_t *agent(const char *domain, const char *command)
{
    char *out = NULL;
    if (th_run(&out, "virsh -c qemu:///system qemu-agent-command %s '%s'", domain, command) != 0) {
        free(out);
        return NULL;
    }
    json_t *doc = json_loads(out, 0, NULL);
    free(out);
    json_t *ret = json_incref(json_object_get(doc, "return"));
    json_decref(doc);
    return ret;
}

/* Runs /bin/sh -c SCRIPT in the guest; its exit code (and stdout into out). */
static int guest_sh(const char *domain, const char *script, char *out, size_t out_len)
{
    json_t *cmd = json_pack("{s:s,s:{s:s,s:[s,s],s:b}}", "execute", "guest-exec", "arguments",
                            "path", "/bin/sh", "arg", "-c", script, "capture-output", 1);
    char *text = json_dumps(cmd, JSON_COMPACT);
    json_decref(cmd);
    json_t *r = agent(domain, text);
    free(text);
    ck_assert_msg(r != NULL, "guest-exec failed on %s", domain);
    json_int_t pid = json_integer_value(json_object_get(r, "pid"));
    json_decref(r);
    for (int i = 0; i < 100; i++) {
        char status[128];
        snprintf(status, sizeof status,
                 "{\"execute\":\"guest-exec-status\",\"arguments\":{\"pid\":%lld}}",
                 (long long)pid);
        r = agent(domain, status);
        ck_assert_ptr_nonnull(r);
        if (json_is_true(json_object_get(r, "exited"))) {
            int code = (int)json_integer_value(json_object_get(r, "exitcode"));
            const char *b64 = json_string_value(json_object_get(r, "out-data"));
            if (out) {
                out[0] = '\0';
                if (b64) {
                    char *dec = NULL;
                    th_run(&dec, "echo %s | base64 -d", b64);
                    snprintf(out, out_len, "%s", dec ? dec : "");
                    free(dec);
                }
            }
            json_decref(r);
            return code;
        }
        json_decref(r);
        usleep(100000);
    }
    ck_abort_msg("guest-exec of '%s' did not finish on %s", script, domain);
    return -1;
}

static json_t *pool_state(void)
{
    json_t *j = NULL;
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &j), 200);
    return j;
}

/* Waits for `ready` ready desktops; checks on every look that a ready
 * desktop's agent is connected, and counts looks that saw one booting. */
static unsigned wait_agent_ready(unsigned ready, int timeout_s)
{
    unsigned booting_seen = 0;
    time_t end = time(NULL) + timeout_s;
    while (time(NULL) <= end) {
        json_t *p = pool_state();
        size_t i;
        json_t *d;
        unsigned n = 0;
        json_array_foreach(json_object_get(p, "desktops"), i, d)
        {
            const char *st = json_string_value(json_object_get(d, "state"));
            if (!strcmp(st, "booting"))
                booting_seen++;
            if (!strcmp(st, "ready")) {
                n++;
                ck_assert_str_eq(json_string_value(json_object_get(d, "agent")), "connected");
            }
        }
        json_decref(p);
        if (n >= ready)
            return booting_seen;
        usleep(200000);
    }
    char *log = th_must("tail -40 %s/vdipoold.log", D.dir);
    ck_abort_msg("%u desktops did not become ready in %d s:\n%s", ready, timeout_s, log);
    return 0;
}

/* Acquires a desktop of pool demo for user; its name into name. */
static void acquire_into(const char *user, char *name, size_t len)
{
    json_t *a = th_acquire(&D, user, 200);
    snprintf(name, len, "%s", json_string_value(json_object_get(a, "desktop")));
    json_decref(a);
}

/* The guest itself says its hostname is the desktop's name. */
static void assert_guest_hostname(const char *name)
{
    json_t *h = agent(name, "{\"execute\":\"guest-get-host-name\"}");
    ck_assert_ptr_nonnull(h);
    ck_assert_str_eq(json_string_value(json_object_get(h, "host-name")), name);
    json_decref(h);
}

static char *metrics(void)
{
    return th_must("curl -s --unix-socket %s http://x/metrics", D.sock);
}

START_TEST(agent_readiness_identity_and_logoff)
{
    seal_copy("linux-gold");
    write_config("linux-gold", 2, 1,
                 "session = { logoff_grace = \"2s\"; idle_logoff = \"1h\";\n"
                 "  idle_command = \"/sbin/vdi-guest-idle\"; };");
    th_daemon_start(&D);
    unsigned booting = wait_agent_ready(1, 180);
    ck_assert_msg(booting > 0, "no look saw the desktop booting before it was ready");

    char name[96];
    acquire_into("alice", name, sizeof name);
    json_t *d = th_get_desktop(&D, name);
    ck_assert(json_real_value(json_object_get(d, "boot_seconds")) > 0.5);
    ck_assert_str_eq(json_string_value(json_object_get(d, "hostname")), name);
    char child[4096];
    snprintf(child, sizeof child, "%s", json_string_value(json_object_get(d, "child")));
    json_decref(d);
    /* Its own identity, seen through the agent. */
    assert_guest_hostname(name);

    /* alice works: a file of hers on the desktop's disk. */
    ck_assert_int_eq(guest_sh(name, "echo alice-secret > /home/user/alice.txt && sync", NULL, 0),
                     0);
    /* The demo user is logged in (utmp): vdipool sees it within a few seconds. */
    time_t end = time(NULL) + 30;
    bool seen = false;
    while (!seen && time(NULL) < end) {
        d = th_get_desktop(&D, name);
        seen = json_array_size(json_object_get(d, "logged_in_users")) > 0;
        json_decref(d);
        if (!seen)
            sleep(1);
    }
    ck_assert_msg(seen, "vdipool never saw the guest's user log in");
    /* And how long the user has been idle, from idle_command in the guest. */
    end = time(NULL) + 20;
    json_int_t idle = -1;
    while (idle < 0 && time(NULL) < end) {
        d = th_get_desktop(&D, name);
        json_t *v = json_object_get(d, "idle_seconds");
        idle = v ? json_integer_value(v) : -1;
        json_decref(d);
        if (idle < 0)
            sleep(1);
    }
    ck_assert_msg(idle >= 0 && idle < 600, "no idle time read through the agent (%lld)",
                  (long long)idle);
    char *m = metrics();
    ck_assert_ptr_nonnull(strstr(m, "vdipool_desktops{pool=\"demo\",state=\"booting\"}"));
    ck_assert_ptr_null(strstr(m, "vdipool_boot_seconds_count 0\n"));
    free(m);

    /* The user logs off; the guest keeps running. */
    char out[256];
    ck_assert_int_eq(guest_sh(name, "/sbin/vdi-guest-user logout user", out, sizeof out), 0);
    end = time(NULL) + 60;
    bool ended = false;
    while (!ended && time(NULL) < end) {
        m = metrics();
        ended = strstr(m, "vdipool_sessions_ended_total{pool=\"demo\",reason=\"logged-off\"} 1") !=
                NULL;
        ck_assert_ptr_nonnull(
            strstr(m, "vdipool_sessions_ended_total{pool=\"demo\",reason=\"guest-shutdown\"} 0"));
        free(m);
        if (!ended)
            sleep(1);
    }
    ck_assert_msg(ended, "the session did not end with reason logged-off");

    /* The next user's desktop is a fresh child: none of alice's files. */
    wait_agent_ready(1, 180);
    char name_b[96];
    acquire_into("bob", name_b, sizeof name_b);
    ck_assert_int_eq(guest_sh(name_b, "test -e /home/user/alice.txt", NULL, 0), 1);
    ck_assert_int_eq(guest_sh(name_b, "cat /home/user/notes.txt", out, sizeof out), 0);
    ck_assert_ptr_nonnull(strstr(out, "written at log-in"));
    ck_assert_int_eq(th_daemon_stop(&D), 0);
    /* The gold was never written: qemu-img agrees it is whole. */
    free(th_must("qemu-img check -q %s/linux-gold.qcow2", D.dir));
}
END_TEST

/* start = "resume" with a real guest: desktops resumed from the memory image
 * of a booted template get their own hostname and clock through the agent,
 * and what a user writes lands in the desktop's own child, never in the
 * template child (its fingerprint holds). */
START_TEST(resumed_linux_desktops_are_their_own)
{
    seal_copy("linux-gold");
    write_config("linux-gold", 2, 2, "start = \"resume\";");
    th_daemon_start(&D);
    wait_agent_ready(2, 240);
    json_t *p = pool_state();
    json_t *mi = json_object_get(p, "memory_image");
    ck_assert_msg(!strcmp(json_string_value(json_object_get(mi, "state")), "ready"),
                  "memory image %s: %s", json_string_value(json_object_get(mi, "state")),
                  json_string_value(json_object_get(mi, "problem")));
    char tmpl[1200];
    snprintf(tmpl, sizeof tmpl, "%s", json_string_value(json_object_get(mi, "template_child")));
    json_decref(p);

    char name[96];
    acquire_into("carol", name, sizeof name);
    json_t *d = th_get_desktop(&D, name);
    ck_assert_ptr_nonnull(json_object_get(d, "resumed_from"));
    ck_assert_str_eq(json_string_value(json_object_get(d, "hostname")), name);
    char child[4096];
    snprintf(child, sizeof child, "%s", json_string_value(json_object_get(d, "child")));
    json_decref(d);
    assert_guest_hostname(name);
    /* The guest's clock was set from the host's after the resume. */
    char out[256];
    ck_assert_int_eq(guest_sh(name, "date +%s", out, sizeof out), 0);
    long long skew = atoll(out) - (long long)time(NULL);
    ck_assert_msg(skew > -30 && skew < 30, "guest clock off by %lld s", skew);
    /* carol writes 4 MiB; it lands in her desktop's child. */
    char *before = th_must("qemu-img info -U --output=json %s | grep actual-size", child);
    ck_assert_int_eq(guest_sh(name,
                              "dd if=/dev/urandom of=/home/user/carol.bin bs=1M count=4 "
                              "2>/dev/null && sync",
                              NULL, 0),
                     0);
    char *after = th_must("qemu-img info -U --output=json %s | grep actual-size", child);
    long long grew = atoll(strchr(after, ':') + 1) - atoll(strchr(before, ':') + 1);
    ck_assert_msg(grew >= 4 << 20, "the desktop's child grew by %lld bytes", grew);
    free(before);
    free(after);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
    /* The template child kept its fingerprint. */
    char *v = NULL;
    ck_assert_msg(th_run(&v, "VDIPOOL_STATE_DIR=%s %s image verify %s", D.state,
                         getenv("VDIPOOLCTL"), tmpl) == 0,
                  "template child %s: %s", tmpl, v ? v : "");
    free(v);
}
END_TEST

START_TEST(a_gold_that_never_boots_is_recycled_and_reported)
{
    seal_copy("linux-broken");
    write_config("linux-broken", 3, 3, "boot_timeout = \"10s\";");
    th_daemon_start(&D);
    time_t end = time(NULL) + 150;
    const char *problem = NULL;
    json_t *p = NULL;
    while (time(NULL) < end) {
        json_decref(p);
        p = pool_state();
        ck_assert_int_eq(json_integer_value(
                             json_object_get(json_object_get(p, "desktops_by_state"), "ready")),
                         0);
        problem = json_string_value(json_object_get(p, "boot_problem"));
        if (problem)
            break;
        sleep(1);
    }
    ck_assert_msg(problem != NULL, "the pool never reported that its desktops do not boot");
    ck_assert_ptr_nonnull(strstr(problem, "did not become ready within"));
    ck_assert_ptr_nonnull(strstr(problem, "guest agent never connected"));
    json_decref(p);
    char *m = metrics();
    ck_assert_ptr_nonnull(strstr(m, "vdipool_desktops{pool=\"demo\",state=\"failed\"}"));
    free(m);
}
END_TEST

static char fam[32];

static void teardown_family(void)
{
    th_run(NULL, "virsh -c qemu:///system destroy %s-maint", fam);
    teardown();
}

static char *gold_cmd(const char *args)
{
    char *out = NULL;
    th_run(&out, "VDIPOOL_STATE_DIR=%s %s gold %s --socket %s --config %s 2>&1", D.state,
           getenv("VDIPOOLCTL"), args, D.sock, D.conf);
    return out;
}

/* A ready desktop of the pool on version `version`, acquired for user. */
static void acquire_on_version(unsigned version, const char *user, char *name, size_t len)
{
    char want[32];
    snprintf(want, sizeof want, "/v%04u.qcow2", version);
    time_t end = time(NULL) + 180;
    for (;;) {
        json_t *p = pool_state();
        size_t i;
        json_t *d;
        bool there = false;
        json_array_foreach(json_object_get(p, "desktops"), i, d)
        {
            const char *g = json_string_value(json_object_get(d, "gold"));
            there |= !strcmp(json_string_value(json_object_get(d, "state")), "ready") && g &&
                     strstr(g, want);
        }
        json_decref(p);
        if (there)
            break;
        ck_assert_msg(time(NULL) < end, "no ready desktop on version %u", version);
        sleep(1);
    }
    acquire_into(user, name, len);
    json_t *d = th_get_desktop(&D, name);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(d, "gold")), want));
    json_decref(d);
}

START_TEST(gold_edit_publish_and_rollback)
{
    snprintf(fam, sizeof fam, "lin%ld", (long)getpid());
    char args[4096];
    /* Version 1 from the Linux demo gold; a pool that follows the family. */
    snprintf(args, sizeof args, "import %s %s/linux-gold.qcow2 --dir %s/%s", fam, golds, D.dir,
             fam);
    char golds_text[2048];
    snprintf(golds_text, sizeof golds_text, "golds = ( { name = \"%s\"; dir = \"%s/%s\"; } );",
             fam, D.dir, fam);
    write_agent_pool(golds_text, fam, 2, 1, NULL);
    char *out = gold_cmd(args);
    ck_assert_msg(out && strstr(out, "version 1 is current"), "%s", out);
    free(out);
    th_daemon_start(&D);
    wait_agent_ready(1, 180);

    /* Edit: a maintenance domain on a child of version 1. */
    snprintf(args, sizeof args, "edit %s", fam);
    out = gold_cmd(args);
    ck_assert_msg(out && strstr(out, "-maint runs on a child of version 1"), "%s", out);
    free(out);
    char maint[64];
    snprintf(maint, sizeof maint, "%s-maint", fam);
    time_t end = time(NULL) + 180;
    json_t *pong = NULL;
    while (!(pong = agent(maint, "{\"execute\":\"guest-ping\"}"))) {
        ck_assert_msg(time(NULL) < end, "%s never answered", maint);
        sleep(1);
    }
    json_decref(pong);
    ck_assert_int_eq(guest_sh(maint, "echo patched > /etc/gold-patch && sync", NULL, 0), 0);
    /* Publishing while it runs is refused. */
    snprintf(args, sizeof args, "publish %s --note patch", fam);
    out = gold_cmd(args);
    ck_assert_msg(out && strstr(out, "still runs"), "%s", out);
    free(out);
    json_decref(agent(maint, "{\"execute\":\"guest-shutdown\"}"));
    end = time(NULL) + 60;
    while (th_run(NULL, "virsh -c qemu:///system domstate %s 2>/dev/null | grep -q running",
                  maint) == 0) {
        ck_assert_msg(time(NULL) < end, "%s did not shut down", maint);
        sleep(1);
    }
    out = gold_cmd(args);
    ck_assert_msg(out && strstr(out, "version 2 is published and current") &&
                      strstr(out, "vdipoold reloaded"),
                  "%s", out);
    free(out);

    /* New desktops have the change; after a rollback they do not. */
    char name[96], out_text[256];
    acquire_on_version(2, "pat", name, sizeof name);
    ck_assert_int_eq(guest_sh(name, "cat /etc/gold-patch", out_text, sizeof out_text), 0);
    ck_assert_ptr_nonnull(strstr(out_text, "patched"));
    snprintf(args, sizeof args, "rollback %s", fam);
    out = gold_cmd(args);
    ck_assert_msg(out && strstr(out, "version 1 is current again"), "%s", out);
    free(out);
    acquire_on_version(1, "rob", name, sizeof name);
    ck_assert_int_eq(guest_sh(name, "test -e /etc/gold-patch", NULL, 0), 1);
    /* Version 1 was never written: it still has its fingerprint. */
    out = NULL;
    ck_assert_int_eq(th_run(&out, "VDIPOOL_STATE_DIR=%s %s image verify %s/%s/v0001.qcow2",
                            D.state, getenv("VDIPOOLCTL"), D.dir, fam),
                     0);
    free(out);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

TH_MAIN("agent", {"agent",
                  setup,
                  teardown,
                  900,
                  {agent_readiness_identity_and_logoff,
                   a_gold_that_never_boots_is_recycled_and_reported,
                   resumed_linux_desktops_are_their_own, NULL}},
        {"gold-edit", setup, teardown_family, 900, {gold_edit_publish_and_rollback, NULL}})
