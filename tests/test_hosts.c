/* test_hosts.c — one vdipoold over two KVM hosts, on real libvirtd + QEMU
 * (TCG, the boot-sector demo gold): the system libvirtd ("h1") and a second
 * libvirtd in its own mount and network namespace ("h2",
 * tests/hosts/second-libvirtd.sh), sharing the datastore directory like a
 * cluster filesystem.
 *  - a pool spread over both keeps spares on both, hands out desktops from
 *    both, and a release destroys the domain through the right host and
 *    deletes its child;
 *  - h2's libvirtd killed mid-session: its desktops become unreachable (the
 *    session stays open), the pool makes up its spares on h1; when h2's
 *    libvirtd returns, the desktops whose QEMU still runs come back (same
 *    user and session) and the one whose QEMU died meanwhile is ended and its
 *    child deleted: no domain, child or session is leaked;
 *  - h2 put into maintenance drains: its spares go, its session finishes,
 *    new desktops go to h1 only;
 *  - a host-local datastore on h2 (a directory only h2's namespace sees):
 *    the gold is copied to h2 once and proved against its fingerprint,
 *    children are made and deleted through libvirt's storage API, and a
 *    copy changed on the host is refused. */
#include "helpers.h"
#include "service_helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static th_daemon D;
static char h2_dir[1200], h2_uri[1300], script[1200];

static void setup(void)
{
    ck_assert_msg(th_run(NULL, "virsh -c qemu:///system list") == 0,
                  "libvirtd is not answering on qemu:///system (deploy/setup.sh starts it)");
    th_daemon_prepare(&D, "hosts", "qemu:///system");
    const char *src = getenv("VDI_SOURCE_DIR");
    ck_assert_ptr_nonnull(src);
    snprintf(script, sizeof script, "%s/tests/hosts/second-libvirtd.sh", src);
    /* A short path: a Unix socket's path has at most 107 bytes. */
    snprintf(h2_dir, sizeof h2_dir, "/run/vdipool-test-h2-%d", (int)getpid());
    char *uri = th_must("%s start %s", script, h2_dir);
    uri[strcspn(uri, "\n")] = '\0';
    snprintf(h2_uri, sizeof h2_uri, "%s", uri);
    free(uri);
}

static void teardown(void)
{
    th_daemon_stop(&D);
    th_daemon_cleanup_domains(&D);
    th_run(NULL, "%s stop %s", script, h2_dir); /* destroys h2's domains, ends its processes */
}

static void write_config(const char *h2_state)
{
    char hosts[4096], body[1024];
    snprintf(hosts, sizeof hosts,
             "hosts = ( { name = \"h1\"; uri = \"qemu:///system\"; max_desktops = 8; },\n"
             "          { name = \"h2\"; uri = \"%s\"; datastores = [ \"local\" ];\n"
             "            state = \"%s\"; } );\n"
             "golds = ( { name = \"demo\"; path = \"%s\"; } );",
             h2_uri, h2_state, D.gold);
    snprintf(body, sizeof body,
             "gold = \"demo\"; size = 6; spares = 4;\n"
             "  domain = { memory = \"32M\"; vcpus = 1; network = \"none\"; graphics = \"vnc\";\n"
             "             accel = \"tcg\"; };");
    th_daemon_write_pool(&D, "60s", hosts, body);
}

/* The names of the running domains of this test on a host. */
static char *domains_on(const char *uri)
{
    char *out = th_must("virsh -q -c '%s' list --name | grep '^%s-' | sort | tr '\\n' ' '; true",
                        uri, D.prefix);
    return out;
}

static unsigned count_words(const char *s)
{
    unsigned n = 0;
    for (const char *p = s; *p;) {
        while (*p == ' ' || *p == '\n')
            p++;
        if (!*p)
            break;
        n++;
        while (*p && *p != ' ' && *p != '\n')
            p++;
    }
    return n;
}

static json_int_t by(json_t *pool, const char *group, const char *key)
{
    return json_integer_value(json_object_get(json_object_get(pool, group), key));
}

static bool spread_ready(json_t *p)
{
    return by(p, "desktops_by_state", "ready") == 4 && by(p, "desktops_by_host", "h1") == 2 &&
           by(p, "desktops_by_host", "h2") == 2;
}

static char acquired_host[4][16], acquired_name[4][64];

static void acquire(int i)
{
    char body[64];
    snprintf(body, sizeof body, "{\"user\": \"user-%d\"}", i);
    json_t *j = NULL;
    ck_assert_int_eq(th_http(&D, "POST", "/v1/pools/demo/acquire", body, &j), 200);
    snprintf(acquired_name[i], sizeof acquired_name[i], "%s",
             json_string_value(json_object_get(j, "desktop")));
    json_decref(j);
    json_t *d = th_get_desktop(&D, acquired_name[i]);
    const char *h = json_string_value(json_object_get(d, "host"));
    ck_assert_ptr_nonnull(h);
    snprintf(acquired_host[i], sizeof acquired_host[i], "%s", h);
    json_decref(d);
}

static bool desktop_in(const char *name, const char *state)
{
    json_t *d = th_get_desktop(&D, name);
    bool yes = !strcmp(json_string_value(json_object_get(d, "state")), state);
    json_decref(d);
    return yes;
}

static const char *lost_assigned; /* the h2 desktop with a session, while h2 is away */
static bool h2_lost(json_t *p)
{
    /* Every desktop of h2 is unreachable (so the 4 ready ones are h1's). */
    return desktop_in(lost_assigned, "unreachable") && by(p, "desktops_by_state", "ready") == 4 &&
           by(p, "desktops_by_state", "unreachable") == by(p, "desktops_by_host", "h2");
}

static bool settled_back(json_t *p)
{
    return by(p, "desktops_by_state", "unreachable") == 0 &&
           by(p, "desktops_by_state", "ending") == 0 && by(p, "desktops_by_state", "ready") == 4 &&
           by(p, "desktops_by_state", "cloning") == 0 && by(p, "desktops_by_state", "starting") == 0;
}

static bool h2_drained(json_t *p)
{
    return by(p, "desktops_by_host", "h2") == 1 && by(p, "desktops_by_state", "ready") == 4;
}

/* Every child in the datastore belongs to a desktop that is not empty, and
 * every domain on each host is a desktop of that host: nothing leaked. */
static void assert_no_leak(void)
{
    json_t *p = th_pool(&D);
    size_t i;
    json_t *d;
    unsigned live = 0;
    char *h1 = domains_on("qemu:///system"), *h2 = domains_on(h2_uri);
    json_array_foreach(json_object_get(p, "desktops"), i, d)
    {
        const char *state = json_string_value(json_object_get(d, "state"));
        if (!strcmp(state, "empty") || !strcmp(state, "failed"))
            continue;
        live++;
        const char *name = json_string_value(json_object_get(d, "name"));
        const char *host = json_string_value(json_object_get(d, "host"));
        char word[80];
        snprintf(word, sizeof word, "%s ", name);
        ck_assert_msg(strstr(!strcmp(host, "h1") ? h1 : h2, word) != NULL,
                      "%s (%s) runs on %s: h1 has [%s], h2 has [%s]", name, state, host, h1, h2);
        char *ok = th_must("qemu-img check -U -q %s && echo ok",
                           json_string_value(json_object_get(d, "child")));
        ck_assert_msg(strstr(ok, "ok") != NULL, "child of %s is not valid", name);
        free(ok);
    }
    ck_assert_uint_eq(count_words(h1) + count_words(h2), live);
    char *files = th_must("ls %s/ds | grep -c qcow2; true", D.dir);
    ck_assert_uint_eq((unsigned)atoi(files), live);
    free(files);
    free(h1);
    free(h2);
    json_decref(p);
}

START_TEST(pool_over_two_hosts_survives_losing_one)
{
    /* libvirt goes away on purpose: an end tried meanwhile fails and is
     * retried once it is back. */
    D.end_failures_expected = true;
    write_config("active");
    th_daemon_start(&D);
    json_t *p = th_wait_pool(&D, spread_ready, 90, "4 spares, 2 on each host");
    json_decref(p);
    char *h1 = domains_on("qemu:///system"), *h2 = domains_on(h2_uri);
    ck_assert_msg(count_words(h1) == 2 && count_words(h2) == 2, "h1 [%s] h2 [%s]", h1, h2);
    free(h1);
    free(h2);
    json_t *hosts = NULL;
    ck_assert_int_eq(th_http(&D, "GET", "/v1/hosts", NULL, &hosts), 200);
    ck_assert_int_eq(json_array_size(json_object_get(hosts, "hosts")), 2);
    ck_assert(json_is_true(json_object_get(json_array_get(json_object_get(hosts, "hosts"), 1),
                                           "connected")));
    json_decref(hosts);

    /* Acquire every spare: desktops come from both hosts. */
    bool from[2] = {false, false};
    for (int i = 0; i < 4; i++) {
        acquire(i);
        from[!strcmp(acquired_host[i], "h2")] = true;
    }
    ck_assert_msg(from[0] && from[1], "acquired only from one host");

    /* A release on each host destroys the domain there and deletes the child. */
    int rel[2] = {-1, -1}, keep2 = -1;
    for (int i = 0; i < 4; i++) {
        int k = !strcmp(acquired_host[i], "h2");
        if (rel[k] < 0)
            rel[k] = i;
        else if (k == 1)
            keep2 = i;
    }
    if (keep2 < 0) { /* 3 on h1, 1 on h2: keep h2's for the loss, release h1's */
        keep2 = rel[1];
        rel[1] = -1;
    }
    for (int k = 0; k < 2; k++) {
        if (rel[k] < 0)
            continue;
        char path[128];
        snprintf(path, sizeof path, "/v1/desktops/%s/release", acquired_name[rel[k]]);
        json_t *j = NULL;
        ck_assert_int_eq(th_http(&D, "POST", path, "{}", &j), 200);
        json_decref(j);
    }
    p = th_wait_pool(&D, settled_back, 90, "spares made up after the releases");
    json_decref(p);
    for (int k = 0; k < 2; k++) {
        if (rel[k] < 0)
            continue;
        const char *name = acquired_name[rel[k]];
        /* The slot may hold a new spare by now; its old domain is gone or
         * it is the new desktop of that name (on whichever host). */
        json_t *d = th_get_desktop(&D, name);
        const char *state = json_string_value(json_object_get(d, "state"));
        ck_assert_msg(strcmp(state, "assigned"), "%s still assigned after its release", name);
        json_decref(d);
    }
    assert_no_leak();

    /* h2's libvirtd dies mid-session; one of its spares' QEMU dies too while
     * nobody can see it. */
    lost_assigned = acquired_name[keep2];
    p = th_pool(&D);
    const char *dead_spare = NULL;
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(p, "desktops"), i, d)
    {
        const char *host = json_string_value(json_object_get(d, "host"));
        if (host && !strcmp(host, "h2") &&
            !strcmp(json_string_value(json_object_get(d, "state")), "ready"))
            dead_spare = json_string_value(json_object_get(d, "name"));
    }
    char dead[64] = "";
    if (dead_spare)
        snprintf(dead, sizeof dead, "%s", dead_spare);
    json_decref(p);
    free(th_must("%s kill %s", script, h2_dir));
    if (dead[0])
        th_run(NULL, "pkill -9 -f 'guest=%s,'", dead);
    p = th_wait_pool(&D, h2_lost, 90, "h2's desktops unreachable and spares made up on h1");
    json_decref(p);
    json_t *lost = th_get_desktop(&D, lost_assigned);
    const char *lost_user = json_string_value(json_object_get(lost, "user"));
    ck_assert_msg(lost_user && !strncmp(lost_user, "user-", 5), "unreachable without its user");
    json_int_t session = json_integer_value(json_object_get(lost, "session_id"));
    ck_assert_int_gt(session, 0);
    json_decref(lost);
    ck_assert_int_eq(th_http(&D, "GET", "/v1/hosts/h2", NULL, &hosts), 200);
    ck_assert_str_eq(json_string_value(json_object_get(hosts, "connection")), "unreachable");
    json_decref(hosts);

    /* h2 answers again: its running desktops come back, the dead one ends. */
    free(th_must("%s revive %s", script, h2_dir));
    p = th_wait_pool(&D, settled_back, 120, "h2 reconciled and the pool back to its spares");
    json_decref(p);
    json_t *back = th_get_desktop(&D, lost_assigned);
    ck_assert_str_eq(json_string_value(json_object_get(back, "state")), "assigned");
    ck_assert_int_eq(json_integer_value(json_object_get(back, "session_id")), session);
    ck_assert_str_eq(json_string_value(json_object_get(back, "host")), "h2");
    json_decref(back);
    ck_assert_msg(th_run(NULL, "grep -q 'desktop=%s event=reachable host=h2 state=assigned' "
                               "%s/vdipoold.log",
                         lost_assigned, D.dir) == 0,
                  "no reachable event for %s", lost_assigned);
    ck_assert_msg(dead[0], "h2 had no spare to lose");
    ck_assert_msg(th_run(NULL, "grep -q 'desktop=%s event=domain-gone-while-unreachable' "
                               "%s/vdipoold.log",
                         dead, D.dir) == 0,
                  "%s, whose QEMU died while h2 was away, was not ended", dead);
    assert_no_leak();

    /* Maintenance on h2: its spares go, its session stays until released. */
    write_config("maintenance");
    json_t *j = NULL;
    ck_assert_int_eq(th_http(&D, "POST", "/v1/reload", "{}", &j), 200);
    json_decref(j);
    p = th_wait_pool(&D, h2_drained, 90, "h2 drained to its one session, spares on h1");
    json_decref(p);
    char path[128];
    snprintf(path, sizeof path, "/v1/desktops/%s/release", lost_assigned);
    ck_assert_int_eq(th_http(&D, "POST", path, "{}", &j), 200);
    json_decref(j);
    time_t end = time(NULL) + 60;
    char *left = NULL;
    do {
        free(left);
        left = domains_on(h2_uri);
        if (!count_words(left))
            break;
        usleep(200000);
    } while (time(NULL) < end);
    ck_assert_msg(count_words(left) == 0, "h2 still runs [%s] in maintenance", left);
    free(left);
    p = th_wait_pool(&D, settled_back, 90, "the pool back to its spares on h1");
    ck_assert_int_eq(by(p, "desktops_by_host", "h2"), 0);
    json_decref(p);
    assert_no_leak();
}
END_TEST

/* vdipoold restarted while h2 cannot be reached: what the catalog records on
 * h2 is shown unreachable (slots and the session kept) and spares are made
 * on h1; when h2 answers, its desktops come back and nothing leaks. */
/* Settled with as many spares as the pool's size leaves beside the
 * sessions (acquires may have taken up to 3 desktops before one on h2). */
static bool settled_full(json_t *p)
{
    json_int_t assigned = by(p, "desktops_by_state", "assigned");
    json_int_t want = 6 - assigned < 4 ? 6 - assigned : 4;
    return by(p, "desktops_by_state", "unreachable") == 0 &&
           by(p, "desktops_by_state", "ending") == 0 && by(p, "desktops_by_state", "cloning") == 0 &&
           by(p, "desktops_by_state", "starting") == 0 &&
           by(p, "desktops_by_state", "ready") == want;
}

START_TEST(a_host_unreachable_at_start)
{
    /* libvirt goes away on purpose: an end tried meanwhile fails and is
     * retried once it is back. */
    D.end_failures_expected = true;
    write_config("active");
    th_daemon_start(&D);
    json_decref(th_wait_pool(&D, spread_ready, 90, "4 spares, 2 on each host"));
    /* A session on h2. */
    int on_h2 = -1;
    for (int i = 0; i < 4 && on_h2 < 0; i++) {
        acquire(i);
        if (!strcmp(acquired_host[i], "h2"))
            on_h2 = i;
    }
    ck_assert_int_ge(on_h2, 0);
    lost_assigned = acquired_name[on_h2];
    json_int_t session = 0;
    json_t *d = th_get_desktop(&D, lost_assigned);
    session = json_integer_value(json_object_get(d, "session_id"));
    json_decref(d);
    json_decref(th_wait_pool(&D, settled_full, 90, "the pool settled"));
    json_t *p = th_pool(&D);
    unsigned on2 = (unsigned)by(p, "desktops_by_host", "h2");
    json_decref(p);

    ck_assert_int_eq(th_daemon_stop(&D), 0);
    free(th_must("%s kill %s", script, h2_dir));
    th_daemon_start(&D);
    p = th_wait_pool(&D, h2_lost, 90, "h2's desktops unreachable from the start");
    ck_assert_int_eq(by(p, "desktops_by_state", "unreachable"), on2);
    json_decref(p);
    d = th_get_desktop(&D, lost_assigned);
    ck_assert_int_eq(json_integer_value(json_object_get(d, "session_id")), session);
    ck_assert_str_eq(json_string_value(json_object_get(d, "state_before")), "assigned");
    json_decref(d);
    ck_assert_msg(th_run(NULL, "grep -q 'host=h2 event=unreachable-at-start' %s/vdipoold.log",
                         D.dir) == 0,
                  "no unreachable-at-start event for h2");

    free(th_must("%s revive %s", script, h2_dir));
    json_decref(th_wait_pool(&D, settled_full, 120, "h2 reconciled"));
    d = th_get_desktop(&D, lost_assigned);
    ck_assert_str_eq(json_string_value(json_object_get(d, "state")), "assigned");
    ck_assert_int_eq(json_integer_value(json_object_get(d, "session_id")), session);
    json_decref(d);
    assert_no_leak();
}
END_TEST

static char *in_h2(const char *fmt, const char *arg)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, fmt, arg);
    return th_must("%s run %s sh -c \"%s\"", script, h2_dir, cmd);
}

static bool two_ready_on_h2(json_t *p)
{
    return by(p, "desktops_by_state", "ready") == 2 && by(p, "desktops_by_host", "h2") == 2;
}

static bool blocked_by_copy(json_t *p)
{
    const char *b = json_string_value(json_object_get(p, "blocked"));
    return b && strstr(b, "does not match its sealed fingerprint");
}

START_TEST(host_local_datastore_through_the_storage_api)
{
    char conf[8192], vols[1400];
    snprintf(conf, sizeof conf,
             "service = { socket = \"%s\"; state_dir = \"%s\"; log_level = \"debug\";\n"
             "  acquire_timeout = \"60s\"; };\n"
             "hosts = ( { name = \"h1\"; uri = \"qemu:///system\"; datastores = [ \"shared\" ]; },\n"
             "          { name = \"h2\"; uri = \"%s\"; } );\n"
             "datastores = ( { name = \"shared\"; path = \"%s/ds\"; },\n"
             "  { name = \"h2-local\"; kind = \"local\"; host = \"h2\"; path = \"%s/local/ds\";\n"
             "    reserve = \"0\"; max_overcommit = 1000.0; } );\n"
             "golds = ( { name = \"demo\"; path = \"%s\"; } );\n"
             "pools = ( { name = \"demo\"; desktop_prefix = \"%s\"; datastore = \"h2-local\";\n"
             "  gold = \"demo\"; size = 3; spares = 2;\n"
             "  domain = { memory = \"32M\"; vcpus = 1; network = \"none\"; graphics = \"vnc\";\n"
             "             accel = \"tcg\"; }; } );\n",
             D.sock, D.state, h2_uri, D.dir, h2_dir, D.gold, D.prefix);
    th_write_file(D.conf, conf, strlen(conf));
    th_daemon_start(&D);
    json_t *p = th_wait_pool(&D, two_ready_on_h2, 90, "2 spares on h2's local datastore");
    json_decref(p);
    /* Copied once, proved once, for two clones. */
    ck_assert_uint_eq(th_daemon_log_count(&D, "host=h2 event=gold-copied "), 1);
    ck_assert_uint_eq(th_daemon_log_count(&D, "host=h2 event=gold-copy-verified "), 1);
    /* The children and the copy exist only on h2, made by its libvirtd. */
    snprintf(vols, sizeof vols, "%s/local/ds", h2_dir);
    char *here = th_must("ls -A %s 2>/dev/null | wc -l", vols);
    ck_assert_int_eq(atoi(here), 0);
    free(here);
    char *list = th_must("virsh -q -c '%s' vol-list vdipool-h2-local | awk '{print $1}' | sort | "
                         "tr '\\n' ' '",
                         h2_uri);
    ck_assert_msg(strstr(list, "gold-") && count_words(list) == 3, "h2's volumes: %s", list);
    free(list);
    char *mode = in_h2("stat -c %%a %s/local/ds/gold-*", h2_dir);
    ck_assert_msg(!strncmp(mode, "444", 3), "the copy's mode is %s", mode);
    free(mode);
    char *check = in_h2("for f in %s/local/ds/[!g]*.qcow2; do qemu-img check -U -q \\$f || exit 1; "
                        "done; echo valid",
                        h2_dir);
    ck_assert_ptr_nonnull(strstr(check, "valid"));
    free(check);

    /* A session's end deletes its child through the storage API. */
    acquire(0);
    ck_assert_str_eq(acquired_host[0], "h2");
    char path[128];
    snprintf(path, sizeof path, "/v1/desktops/%s/release", acquired_name[0]);
    json_t *j = NULL;
    ck_assert_int_eq(th_http(&D, "POST", path, "{}", &j), 200);
    json_decref(j);
    time_t end = time(NULL) + 60;
    bool gone = false;
    while (!gone && time(NULL) < end) {
        char *v = th_must("virsh -q -c '%s' vol-list vdipool-h2-local | awk '{print $1}'; true",
                          h2_uri);
        char want[96];
        snprintf(want, sizeof want, "%s.qcow2", acquired_name[0]);
        json_t *d = th_get_desktop(&D, acquired_name[0]);
        /* Gone, or already a new spare of that name (a new volume). */
        gone = !strstr(v, want) || strcmp(json_string_value(json_object_get(d, "state")), "ending");
        json_decref(d);
        free(v);
        usleep(200000);
    }
    ck_assert(gone);
    ck_assert_uint_ge(th_daemon_log_count(&D, "event=ended reason=released"), 1);
    p = th_wait_pool(&D, two_ready_on_h2, 90, "the spares made up on h2");
    json_decref(p);
    ck_assert_uint_eq(th_daemon_log_count(&D, "host=h2 event=gold-copied "), 1);

    /* The copy changed on the host while vdipoold was down: refused. */
    ck_assert_int_eq(th_daemon_stop(&D), 0);
    free(in_h2("printf XXXX | dd of=\\$(ls %s/local/ds/gold-*) bs=1 seek=70000 conv=notrunc "
               "2>/dev/null",
               h2_dir));
    th_daemon_start(&D);
    p = th_wait_pool(&D, two_ready_on_h2, 60, "the running spares adopted");
    json_decref(p);
    acquire(1); /* a new spare is wanted: its clone proves the copy */
    p = th_wait_pool(&D, blocked_by_copy, 60, "the changed copy refused");
    json_decref(p);
    ck_assert_uint_ge(th_daemon_log_count(&D, "event=gold-copy-refused"), 1);
}
END_TEST

TH_MAIN("hosts", {"two-hosts",
                  setup,
                  teardown,
                  600,
                  {pool_over_two_hosts_survives_losing_one,
                   host_local_datastore_through_the_storage_api, a_host_unreachable_at_start,
                   NULL}})
