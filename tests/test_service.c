/* test_service.c — vdipoold's controllers and API against libvirt's
 * test:///default driver (no QEMU): spares, acquire and release, refusals,
 * reloads by diff, a gold roll-out, and a clean stop. */
#include "helpers.h"
#include "service_helpers.h"
#include "vdi_client.h"
#include "vdi_engine.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static th_daemon D;

static void setup(void)
{
    th_daemon_prepare(&D, "service", "test:///default");
}
static void teardown(void)
{
    th_daemon_stop(&D);
}

/* POST /v1/desktops/NAME/release with body (NULL: none), expecting a status;
 * returns the answer. */
static json_t *release(const char *name, const char *body, int expect)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/desktops/%s/release", name);
    json_t *j = NULL;
    int status = th_http(&D, "POST", path, body, &j);
    char *dump = j ? json_dumps(j, 0) : NULL;
    ck_assert_msg(status == expect, "release of %s: HTTP %d %s", name, status, dump);
    free(dump);
    return j;
}

static int64_t state_count(json_t *pool, const char *state)
{
    return json_integer_value(json_object_get(json_object_get(pool, "desktops_by_state"), state));
}

static json_t *wait_for(const char *state, int64_t n, int timeout_s)
{
    time_t end = time(NULL) + timeout_s;
    json_t *j = NULL;
    while (time(NULL) <= end) {
        json_decref(j);
        if (th_http(&D, "GET", "/v1/pools/demo", NULL, &j) == 200 && state_count(j, state) == n)
            return j;
        usleep(100000);
    }
    ck_abort_msg("pool never had %lld %s desktops", (long long)n, state);
    return NULL;
}

START_TEST(spares_acquire_release_refill)
{
    th_daemon_write_config(&D, 3, 2, NULL);
    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 2, 20));

    json_t *a = th_acquire(&D, "alice", 200);
    const char *name = json_string_value(json_object_get(a, "desktop"));
    ck_assert_ptr_nonnull(name);
    json_t *again = th_acquire(&D, "alice", 200);
    ck_assert_str_eq(json_string_value(json_object_get(again, "desktop")), name);
    json_decref(again);
    json_t *dj = th_get_desktop(&D, name);
    ck_assert_str_eq(json_string_value(json_object_get(dj, "state")), "assigned");
    ck_assert_str_eq(json_string_value(json_object_get(dj, "user")), "alice");
    char child[4096];
    snprintf(child, sizeof child, "%s", json_string_value(json_object_get(dj, "child")));
    json_decref(dj);
    struct stat before;
    ck_assert_int_eq(stat(child, &before), 0);

    /* The pool refills to 2 spares within its size of 3, then runs out. */
    json_decref(wait_for("ready", 2, 20));
    json_decref(th_acquire(&D, "bob", 200));
    json_decref(th_acquire(&D, "carol", 200));
    json_t *full = th_acquire(&D, "dave", 503);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(full, "error")), "is full"));
    json_decref(full);

    /* Release: the desktop and its child go, a fresh one replaces them. */
    json_decref(release(name, NULL, 200));
    json_decref(release(name, NULL, 400)); /* not assigned any more */
    json_decref(wait_for("ready", 1, 20));
    struct stat after;
    ck_assert_int_eq(stat(child, &after), 0);
    ck_assert_msg(after.st_ino != before.st_ino || after.st_ctim.tv_nsec != before.st_ctim.tv_nsec,
                  "the child was not replaced");
    dj = th_get_desktop(&D, name);
    ck_assert_str_eq(json_string_value(json_object_get(dj, "state")), "ready");
    json_decref(dj);
    json_decref(a);

    /* Views. */
    json_t *j = NULL;
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools", NULL, &j), 200);
    ck_assert_uint_eq(json_array_size(json_object_get(j, "pools")), 1);
    json_decref(j);
    ck_assert_int_eq(th_http(&D, "GET", "/v1/space", NULL, &j), 200);
    json_t *ds = json_array_get(json_object_get(j, "datastores"), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(ds, "children")), 3);
    /* Large pools: a summary without desktops, or a page of them. */
    json_t *page = NULL;
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo?summary=1", NULL, &page), 200);
    ck_assert_ptr_null(json_object_get(page, "desktops"));
    ck_assert_ptr_nonnull(json_object_get(page, "desktops_by_state"));
    json_decref(page);
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo?offset=1&limit=1", NULL, &page), 200);
    ck_assert_uint_eq(json_array_size(json_object_get(page, "desktops")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(page, "desktops_total")), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(
                         json_array_get(json_object_get(page, "desktops"), 0), "slot")),
                     2);
    json_decref(page);
    /* Only the desktops in some states (a broker's "who has a session"). */
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo?state=assigned", NULL, &page), 200);
    json_t *listed = json_object_get(page, "desktops");
    json_int_t assigned =
        json_integer_value(json_object_get(json_object_get(page, "desktops_by_state"), "assigned"));
    ck_assert_int_ge(assigned, 1);
    ck_assert_uint_eq(json_array_size(listed), (size_t)assigned);
    ck_assert_int_eq(json_integer_value(json_object_get(page, "desktops_total")), assigned);
    size_t k;
    json_t *one;
    json_array_foreach(listed, k, one)
        ck_assert_str_eq(json_string_value(json_object_get(one, "state")), "assigned");
    json_decref(page);
    ck_assert_int_eq(
        th_http(&D, "GET", "/v1/pools/demo?state=ready%2Cassigned&limit=1", NULL, &page), 200);
    ck_assert_uint_eq(json_array_size(json_object_get(page, "desktops")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(page, "desktops_total")), 3);
    json_decref(page);
    /* Served from the state lists, still in slot order (stable pages). */
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo?state=assigned,ready", NULL, &page), 200);
    ck_assert_uint_eq(json_array_size(json_object_get(page, "desktops")), 3);
    json_int_t last_slot = 0;
    json_array_foreach(json_object_get(page, "desktops"), k, one)
    {
        json_int_t slot = json_integer_value(json_object_get(one, "slot"));
        ck_assert_int_gt(slot, last_slot);
        last_slot = slot;
    }
    json_decref(page);
    /* Values it does not understand are refused, naming them. */
    static const struct {
        const char *query, *says;
    } refused[] = {
        {"state=ready,asigned", "'asigned' is not a desktop state; use one or more of empty,"},
        {"state=", "'' is not a desktop state"},
        {"offset=abc", "?offset=abc is not a whole number"},
        {"limit=-1", "?limit=-1 is not a whole number"},
        {"limit=99999999999", "?limit=99999999999 is not a whole number"},
        {"summary=maybe", "?summary=maybe: use 1 or 0"},
        /* Escapes are decoded for every value, but a NUL is not let in. */
        {"limit=%31%30x", "?limit=10x is not a whole number"},
        {"state=ready%00", "'ready%00' is not a desktop state"}};
    for (size_t q = 0; q < sizeof refused / sizeof refused[0]; q++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/pools/demo?%s", refused[q].query);
        ck_assert_int_eq(th_http(&D, "GET", path, NULL, &page), 400);
        const char *msg = json_string_value(json_object_get(page, "error"));
        ck_assert_msg(msg && strstr(msg, refused[q].says), "%s: %s", path, msg ? msg : "(none)");
        json_decref(page);
    }
    /* The service counts without walking the datastore; a fresh walk after
     * the churn above agrees with it. */
    vdi_space_report walk;
    vdi_error werr = {0};
    char dspath[1200];
    snprintf(dspath, sizeof dspath, "%s/ds", D.dir);
    ck_assert_int_eq(vdi_space_measure(dspath, 0, 0, &walk, &werr), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(ds, "children")),
                     (json_int_t)walk.children);
    ck_assert_int_eq(json_integer_value(json_object_get(ds, "children_allocated")),
                     (json_int_t)walk.children_allocated);
    ck_assert_int_eq(json_integer_value(json_object_get(ds, "worst_case")),
                     (json_int_t)walk.worst_case);
    json_decref(j);
    ck_assert_int_eq(th_http(&D, "GET", "/v1/images", NULL, &j), 200);
    ck_assert_uint_eq(json_array_size(json_object_get(
                          json_array_get(json_object_get(j, "golds"), 0), "children")),
                      3);
    json_decref(j);
    ck_assert_int_eq(th_http(&D, "GET", "/v1/status", NULL, &j), 200);
    ck_assert(json_is_true(json_object_get(j, "libvirt_connected")));
    json_decref(j);
    char *metrics = th_must("curl -s --unix-socket %s http://vdipool/metrics", D.sock);
    ck_assert_ptr_nonnull(strstr(metrics, "vdipool_desktops{pool=\"demo\",state=\"assigned\"} 2"));
    ck_assert_ptr_nonnull(
        strstr(metrics, "vdipool_sessions_ended_total{pool=\"demo\",reason=\"released\"} 1"));
    /* The release ended its desktop at the first try (a failed end is
     * retried and would still pass the counts above). */
    ck_assert_int_eq(th_daemon_log_count(&D, "event=end-failed"), 0);
    ck_assert_ptr_nonnull(strstr(metrics, "vdipool_clone_seconds_count"));
    ck_assert_ptr_nonnull(strstr(metrics, "vdipool_datastore_bytes{datastore=\"local\""));
    /* Acquires are answered once their session is on disk: in this quiet
     * pool nothing else flushed the catalog between a session's start and
     * its answer, so the answers waited for the flusher. */
    const char *waits = strstr(metrics, "\nvdipool_acquire_flush_waits_total ");
    const char *flushes = strstr(metrics, "\nvdipool_catalog_flushes_total ");
    ck_assert_msg(waits && flushes, "%s", metrics);
    ck_assert_int_ge(atoll(waits + strlen("\nvdipool_acquire_flush_waits_total ")), 1);
    ck_assert_int_ge(atoll(flushes + strlen("\nvdipool_catalog_flushes_total ")), 1);
    /* Every commit wrote at least one row. */
    const char *commits = strstr(metrics, "\nvdipool_catalog_commits_total ");
    const char *statements = strstr(metrics, "\nvdipool_catalog_statements_total ");
    ck_assert_msg(commits && statements, "%s", metrics);
    ck_assert_int_ge(atoll(statements + strlen("\nvdipool_catalog_statements_total ")),
                     atoll(commits + strlen("\nvdipool_catalog_commits_total ")));
    free(metrics);

    /* Refusals name what is wrong. */
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/nope", NULL, &j), 404);
    json_decref(j);
    ck_assert_int_eq(th_http(&D, "POST", "/v1/pools/nope/acquire", "{\"user\":\"x\"}", &j), 404);
    json_decref(j);
    ck_assert_int_eq(th_http(&D, "POST", "/v1/pools/demo/acquire", "{not json", &j), 400);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(j, "error")), "\"user\""));
    json_decref(j);
    ck_assert_int_eq(th_http(&D, "GET", "/v2/whatever", NULL, &j), 404);
    json_decref(j);

    /* No user name can forge a log line or reach a terminal raw. */
    ck_assert_int_eq(th_http(&D, "POST", "/v1/pools/demo/acquire",
                             "{\"user\": \"evil\\nevent=assigned user=root\"}", &j),
                     400);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(j, "error")), "0x0a"));
    json_decref(j);
    ck_assert_int_eq(
        th_http(&D, "POST", "/v1/pools/demo/acquire", "{\"user\": \"\\u001b[2Jx\"}", &j), 400);
    json_decref(j);
    ck_assert_int_eq(th_http(&D, "POST", "/v1/desktops/zzz/release", NULL, &j), 404);
    json_decref(j);
    /* Spaces and quotes are allowed, and logged in quotes. */
    ck_assert_int_eq(th_http(&D, "POST", "/v1/pools/demo/acquire",
                             "{\"user\": \"mallory event=assigned \\\"x\"}", &j),
                     200);
    json_decref(j);
    char log[1200];
    snprintf(log, sizeof log, "%s/vdipoold.log", D.dir);
    ck_assert_int_eq(th_run(NULL, "grep -qF 'user=\"mallory event=assigned \\\"x\"' %s", log), 0);
    ck_assert_int_ne(th_run(NULL, "grep -q '^event=assigned' %s", log), 0);
    ck_assert_int_ne(th_run(NULL, "grep -qP '\\x1b' %s", log), 0);

    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

/* A catalog that cannot flush: the acquire is still answered (the desktop
 * is the user's), the failure is logged with its pool and desktop, and the
 * next acquire tries the disk again instead of the flusher spinning. */
START_TEST(acquire_answered_when_the_flush_fails)
{
    th_daemon_write_config(&D, 3, 2, NULL);
    setenv("VDIPOOL_FAIL_AT", "acquire-flush", 1);
    th_daemon_start(&D);
    unsetenv("VDIPOOL_FAIL_AT");
    json_decref(th_wait_ready(&D, 2, 20));
    json_t *a = th_acquire(&D, "ann", 200);
    const char *name = json_string_value(json_object_get(a, "desktop"));
    ck_assert_ptr_nonnull(name);
    char log[1200];
    snprintf(log, sizeof log, "%s/vdipoold.log", D.dir);
    ck_assert_int_eq(th_run(NULL,
                            "grep -q 'pool=demo desktop=%s event=session-not-on-disk "
                            "reason=\"cannot flush (failpoint acquire-flush)\"' %s",
                            name, log),
                     0);
    json_decref(th_acquire(&D, "bob", 200)); /* answered: the flusher is not stuck */
    /* Nothing spins: the daemon is idle between requests. */
    char *before = th_must("awk '{print $14 + $15}' /proc/%d/stat", (int)D.pid);
    sleep(1);
    char *after = th_must("awk '{print $14 + $15}' /proc/%d/stat", (int)D.pid);
    ck_assert_int_lt(atol(after) - atol(before), 20); /* < 0.2 s of CPU in 1 s */
    free(before);
    free(after);
    json_decref(a);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

START_TEST(reload_applies_diff_or_keeps_running_config)
{
    th_daemon_write_config(&D, 2, 1, NULL);
    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 1, 20));

    /* A broken config is refused with its errors; nothing changes. */
    const char *bad = "pools = ( { name = \"demo\"; size = 0; } )\n datastores = 7;\n";
    th_write_file(D.conf, bad, strlen(bad));
    json_t *j = NULL;
    ck_assert_int_eq(th_http(&D, "POST", "/v1/reload", NULL, &j), 400);
    json_t *e0 = json_array_get(json_object_get(j, "errors"), 0);
    ck_assert_ptr_nonnull(e0);
    ck_assert_int_gt(json_integer_value(json_object_get(e0, "line")), 0);
    json_decref(j);
    kill(D.pid, SIGHUP); /* the same through the signal */
    usleep(300000);
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &j), 200);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "size")), 2);
    json_decref(j);

    /* Resized: more spares are prepared. */
    th_daemon_write_config(&D, 5, 3, NULL);
    ck_assert_int_eq(th_http(&D, "POST", "/v1/reload", NULL, &j), 200);
    json_decref(j);
    j = th_wait_ready(&D, 3, 20);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "size")), 5);
    json_decref(j);

    /* Shrunk: spares above the new size go. */
    th_daemon_write_config(&D, 1, 1, NULL);
    ck_assert_int_eq(th_http(&D, "POST", "/v1/reload", NULL, &j), 200);
    json_decref(j);
    json_decref(wait_for("ready", 1, 20));
    json_decref(wait_for("empty", 4, 20));
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

START_TEST(gold_rollout)
{
    th_daemon_write_config(&D, 3, 2, NULL);
    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 2, 20));
    json_t *a = th_acquire(&D, "alice", 200);
    const char *name = json_string_value(json_object_get(a, "desktop"));
    json_decref(wait_for("ready", 2, 20));

    /* A second sealed gold, and the config points the pool's gold at it. */
    char gold2[1200];
    th_daemon_seal_new_gold(&D, "gold2.qcow2", gold2, sizeof gold2);
    char extra[1400];
    th_daemon_write_config(&D, 3, 2, NULL);
    char *text = th_must("sed -i 's#path = \"%s\"#path = \"%s\"#' %s && cat %s", D.gold, gold2,
                         D.conf, D.conf);
    ck_assert_ptr_nonnull(strstr(text, gold2));
    free(text);
    (void)extra;
    json_t *j = NULL;
    ck_assert_int_eq(th_http(&D, "POST", "/v1/reload", NULL, &j), 200);
    json_decref(j);

    /* Ready desktops are replaced by children of the new gold; the assigned
     * one keeps its session on the old gold. */
    time_t end = time(NULL) + 20;
    bool done = false;
    while (!done && time(NULL) < end) {
        ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &j), 200);
        size_t i;
        json_t *dsk;
        int ready_new = 0;
        json_array_foreach(json_object_get(j, "desktops"), i, dsk)
        {
            const char *st = json_string_value(json_object_get(dsk, "state"));
            const char *g = json_string_value(json_object_get(dsk, "gold"));
            if (!strcmp(st, "ready") && g && !strcmp(g, gold2))
                ready_new++;
            if (!strcmp(json_string_value(json_object_get(dsk, "name")), name)) {
                ck_assert_str_eq(st, "assigned");
                ck_assert_str_eq(g, D.gold);
            }
        }
        done = ready_new == 2 && json_object_get(j, "retiring_gold");
        json_decref(j);
        if (!done)
            usleep(100000);
    }
    ck_assert_msg(done, "the ready desktops were not replaced by children of the new gold");

    /* The old gold is released when its last desktop ends. */
    char path[256];
    snprintf(path, sizeof path, "/v1/desktops/%s/release", name);
    ck_assert_int_eq(th_http(&D, "POST", path, NULL, &j), 200);
    json_decref(j);
    end = time(NULL) + 20;
    bool released = false;
    while (!released && time(NULL) < end) {
        ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &j), 200);
        released = json_object_get(j, "retiring_gold") == NULL;
        json_decref(j);
        usleep(100000);
    }
    ck_assert(released);
    json_decref(a);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
    vdi_catalog *cat = NULL;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_catalog_open(D.state, &cat, &err), 0);
    vdi_gold_info g;
    ck_assert_int_eq(vdi_catalog_gold(cat, D.gold, &g, &err), 0);
    ck_assert_str_eq(vdi_gold_state_name(g.state), "retired");
    vdi_catalog_close(cat);
}
END_TEST

START_TEST(unsealed_gold_blocks_with_reason)
{
    vdi_catalog *cat = NULL;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_catalog_open(D.state, &cat, &err), 0);
    size_t orphaned;
    ck_assert_int_eq(vdi_unseal(cat, D.gold, false, NULL, 0, &orphaned, &err), 0);
    vdi_catalog_close(cat);
    th_daemon_write_config(&D, 2, 1, NULL);
    th_daemon_start(&D);
    time_t end = time(NULL) + 10;
    json_t *j = NULL;
    while (time(NULL) < end) {
        json_decref(j);
        ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &j), 200);
        if (json_object_get(j, "blocked"))
            break;
        usleep(100000);
    }
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(j, "blocked")), "not sealed"));
    json_decref(j);
    j = th_acquire(&D, "alice", 503);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(j, "error")), "seal it first"));
    json_decref(j);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

START_TEST(acquire_waits_for_a_desktop_being_prepared)
{
    /* No spares: the first acquire waits while a desktop is cloned and started. */
    th_daemon_write_config(&D, 1, 0, NULL);
    th_daemon_start(&D);
    json_t *j = th_acquire(&D, "erin", 200);
    ck_assert_ptr_nonnull(json_object_get(j, "desktop"));
    json_decref(j);
    j = th_acquire(&D, "frank", 503);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(j, "error")), "is full"));
    json_decref(j);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

START_TEST(tcp_needs_token_and_socket_checks_peer)
{
    char token[1200];
    snprintf(token, sizeof token, "%s/token", D.dir);
    th_write_file(token, "s3cret\n", 7);
    int port = 20000 + (int)(getpid() % 20000);
    char extra[64];
    snprintf(extra, sizeof extra, "%d", port);
    th_daemon_write_config(&D, 1, 1, NULL);
    char listen[4300];
    snprintf(listen, sizeof listen, "listen = \"127.0.0.1:%d\"; token_file = \"%s\";", port, token);
    th_daemon_add_service_setting(&D, listen);
    th_daemon_start(&D);
    char *out = NULL;
    th_run(&out, "curl -s -o /dev/null -w '%%{http_code}' http://127.0.0.1:%d/v1/pools", port);
    ck_assert_str_eq(out, "401");
    free(out);
    out = th_must("curl -s -H 'Authorization: Bearer s3cret' http://127.0.0.1:%d/v1/pools", port);
    ck_assert_ptr_nonnull(strstr(out, "\"demo\""));
    free(out);
    /* A browser's request from another site (forgery) or to a name that is
     * not loopback (DNS rebinding) is refused on either listener, token or
     * not; its own page's requests and non-browser clients are not. */
    const char *refused[] = {
        "-X POST -H 'Origin: http://evil.example' http://127.0.0.1:%d/v1/pools/demo/drain",
        "-H 'Host: evil.example' -H 'Sec-Fetch-Site: same-origin' http://127.0.0.1:%d/v1/pools",
        "-X POST -H 'Origin: null' http://127.0.0.1:%d/v1/pools/demo/drain"};
    for (size_t i = 0; i < 3; i++) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, refused[i], port);
        out = NULL;
        th_run(&out,
               "curl -s -o /dev/null -w '%%{http_code}' -H 'Authorization: Bearer s3cret' %s",
               cmd);
        ck_assert_msg(out && !strcmp(out, "403"), "%s: %s", cmd, out);
        free(out);
        out = NULL;
        th_run(&out, "curl -s -o /dev/null -w '%%{http_code}' --unix-socket %s %s", D.sock, cmd);
        ck_assert_msg(out && !strcmp(out, "403"), "unix socket, %s: %s", cmd, out);
        free(out);
    }
    out = th_must("curl -s -o /dev/null -w '%%{http_code}' -H 'Authorization: Bearer s3cret' -H "
                  "'Origin: http://127.0.0.1:%d' -H 'Sec-Fetch-Site: same-origin' "
                  "http://127.0.0.1:%d/v1/pools",
                  port, port);
    ck_assert_str_eq(out, "200");
    free(out);
    out = th_must("curl -s -o /dev/null -w '%%{http_code}' --unix-socket %s -H 'Host: "
                  "localhost:8470' -H 'Sec-Fetch-Mode: cors' http://x/v1/pools",
                  D.sock);
    ck_assert_str_eq(out, "200");
    free(out);
    /* On the Unix socket, a peer that is not root nor in group vdipool is refused
     * (the socket is 0660 as well; opened up here to reach the check). */
    if (th_have("setpriv")) {
        chmod(D.sock, 0666);
        out = NULL;
        th_run(&out,
               "setpriv --reuid=65534 --regid=65534 --clear-groups curl -sS --unix-socket %s "
               "http://x/v1/pools",
               D.sock);
        ck_assert_msg(out && strstr(out, "not allowed"), "peer check: %s", out);
        free(out);
    }
    ck_assert_int_eq(th_daemon_stop(&D), 0);
    (void)extra;
}
END_TEST

START_TEST(time_limits_and_pool_removal)
{
    th_daemon_write_config(&D, 2, 1,
                           "session = { max_duration = \"2s\"; idle_spare_max_age = \"2s\"; };");
    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 1, 20));
    json_t *a = th_acquire(&D, "gina", 200);
    json_decref(a);
    /* The session is ended at its time limit; an idle spare is recycled
     * (both about 3 s in, in either order: the spare became ready after
     * the session began). */
    char log[1200];
    snprintf(log, sizeof log, "%s/vdipoold.log", D.dir);
    time_t end = time(NULL) + 15;
    char *metrics = NULL;
    bool limited = false, recycled = false;
    while (!(limited && recycled) && time(NULL) < end) {
        free(metrics);
        metrics = th_must("curl -s --unix-socket %s http://vdipool/metrics", D.sock);
        limited = strstr(metrics, "reason=\"max-duration\"} 1") != NULL;
        recycled = th_run(NULL, "grep -q 'event=ending reason=other user=-' %s", log) == 0;
        if (!(limited && recycled))
            usleep(200000);
    }
    ck_assert_msg(limited, "no session ended at max_duration: %s", metrics);
    free(metrics);
    ck_assert_msg(recycled, "no idle spare was recycled at idle_spare_max_age");

    /* The pool leaves the config: it drains and disappears; a new pool
     * taking over its names waits for them. */
    char *out = th_must("sed -i 's/name = \"demo\"; desktop_prefix/name = \"lab\"; "
                        "desktop_prefix/' %s",
                        D.conf);
    free(out);
    json_t *j = NULL;
    ck_assert_int_eq(th_http(&D, "POST", "/v1/reload", NULL, &j), 200);
    json_decref(j);
    end = time(NULL) + 20;
    bool swapped = false;
    while (!swapped && time(NULL) < end) {
        ck_assert_int_eq(th_http(&D, "GET", "/v1/pools", NULL, &j), 200);
        json_t *pools = json_object_get(j, "pools");
        swapped =
            json_array_size(pools) == 1 &&
            !strcmp(json_string_value(json_object_get(json_array_get(pools, 0), "name")), "lab");
        json_decref(j);
        if (!swapped)
            usleep(200000);
    }
    ck_assert_msg(swapped, "pool demo did not drain away");
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/lab", NULL, &j), 200);
    json_decref(j);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

START_TEST(domain_template)
{
    /* First a broken template: the desktop fails with libvirt's complaint,
     * which proves the template is what is used. Then a good one. */
    char tpl[1200];
    snprintf(tpl, sizeof tpl, "%s/desktop.xml", D.dir);
    th_write_file(tpl, "<domain type='{{type}}'><name>{{name}}", 38);
    char extra[1400];
    snprintf(extra, sizeof extra,
             "domain = { memory = \"48M\"; accel = \"tcg\"; template = \"%s\"; };", tpl);
    th_daemon_write_config(&D, 1, 1, NULL);
    char *out = th_must("sed -i -e '/^ *accel = \"tcg\"; };$/d' -e 's#^  domain = {.*#  %s#' %s",
                        extra, D.conf);
    free(out);
    th_daemon_start(&D);
    time_t end = time(NULL) + 20;
    json_t *j = NULL;
    bool failed = false;
    while (!failed && time(NULL) < end) {
        json_decref(j);
        ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &j), 200);
        json_t *d0 = json_array_get(json_object_get(j, "desktops"), 0);
        failed = json_object_get(d0, "last_failure") != NULL;
        if (!failed)
            usleep(100000);
    }
    ck_assert_msg(failed, "the broken template did not fail the desktop");
    ck_assert_str_eq(json_string_value(json_object_get(j, "domain_template")), tpl);
    json_decref(j);
    const char *xml = "<domain type='{{type}}'>\n  <name>{{name}}</name>\n{{metadata}}"
                      "  <memory unit='KiB'>{{memory_kib}}</memory>\n  <vcpu>{{vcpus}}</vcpu>\n"
                      "  <os><type arch='x86_64'>hvm</type></os>\n"
                      "  <devices>\n{{disk}}  </devices>\n</domain>\n";
    th_write_file(tpl, xml, strlen(xml));
    json_decref(th_wait_ready(&D, 1, 30)); /* after the failure's 5 s back-off */
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

START_TEST(second_instance_is_refused)
{
    th_daemon_write_config(&D, 2, 1, NULL);
    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 1, 20));
    const char *bin = getenv("VDIPOOLD");
    /* Same state directory: refused, naming the running one. */
    char *out = NULL;
    int rc = th_run(&out, "ASAN_OPTIONS=detect_leaks=0 %s --config %s", bin, D.conf);
    ck_assert_msg(rc != 0, "a second vdipoold started: %s", out);
    char pid[32];
    snprintf(pid, sizeof pid, "pid %ld", (long)D.pid);
    ck_assert_msg(strstr(out, pid) && strstr(out, D.state), "no pid or state dir named: %s", out);
    free(out);
    /* Another state directory but the same socket: the socket is not taken over. */
    char other[1300];
    snprintf(other, sizeof other, "%s/other.conf", D.dir);
    free(th_must("sed 's|state_dir = \"[^\"]*\"|state_dir = \"%s/state2\"|' %s > %s", D.dir, D.conf,
                 other));
    rc = th_run(&out, "ASAN_OPTIONS=detect_leaks=0 %s --config %s", bin, other);
    ck_assert_msg(rc != 0, "a second vdipoold took the socket: %s", out);
    ck_assert_msg(strstr(out, "socket of a running vdipoold"), "%s", out);
    free(out);
    /* The first one keeps serving. */
    json_t *j = NULL;
    ck_assert_int_eq(th_http(&D, "GET", "/v1/status", NULL, &j), 200);
    json_decref(j);
    json_decref(th_acquire(&D, "erin", 200));
    ck_assert_int_eq(th_daemon_stop(&D), 0);
    /* After a clean stop the lock and the socket are free again. */
    th_daemon_start(&D);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

/* CPU seconds (user + system) the process has used, from /proc/PID/stat. */
static double cpu_seconds(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long utime = 0, stime = 0;
    ck_assert_int_eq(
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime), 2);
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

START_TEST(blocked_pool_waits_without_spinning)
{
    /* A datastore that admits nothing: each desktop is expected to grow by more
     * than any disk here holds. */
    th_daemon_write_config(&D, 3, 2, "expected_growth = \"1000T\";");
    th_daemon_start(&D);
    json_t *j = NULL;
    time_t end = time(NULL) + 20;
    bool blocked = false;
    while (!blocked && time(NULL) < end) {
        ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &j), 200);
        blocked = json_object_get(j, "blocked") != NULL;
        json_decref(j);
        usleep(100000);
    }
    ck_assert_msg(blocked, "the pool never said it was blocked");
    double before = cpu_seconds(D.pid);
    sleep(15);
    double used = cpu_seconds(D.pid) - before;
    ck_assert_msg(used < 0.15, "a blocked pool used %.2f s of CPU in 15 s (over 1 %%)", used);
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &j), 200);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(j, "blocked")), "is full"));
    /* Every slot empty, but for the one probe that may be in flight (the
     * back-off, 1 s doubling to 30 s, probed a few times in the wait above). */
    json_t *st = json_object_get(j, "desktops_by_state");
    json_int_t cloning = json_integer_value(json_object_get(st, "cloning"));
    ck_assert_int_le(cloning, 1);
    ck_assert_int_eq(json_integer_value(json_object_get(st, "empty")) + cloning, 3);
    json_decref(j);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

/* A connection to the daemon's socket whose reads give up after timeout_s. */
static int connect_control(int timeout_s)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    ck_assert_uint_lt(strlen(D.sock), sizeof a.sun_path);
    memcpy(a.sun_path, D.sock, strlen(D.sock) + 1);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {.tv_sec = timeout_s};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Sends raw bytes on the control socket (optionally pausing first) and reads
 * everything until the daemon closes; returns the text (caller frees). */
static char *raw_exchange(const char *bytes, size_t len, int wait_s)
{
    int fd = connect_control(15);
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(fd, bytes + off, len - off, MSG_NOSIGNAL);
        if (w <= 0)
            break; /* the daemon may refuse before everything is sent */
        off += (size_t)w;
    }
    if (wait_s)
        sleep((unsigned)wait_s);
    else
        shutdown(fd, SHUT_WR); /* nothing more: the daemon answers, then closes */
    size_t cap = 65536, got = 0;
    char *out = malloc(cap);
    ssize_t n;
    while ((n = read(fd, out + got, cap - got - 1)) > 0)
        got += (size_t)n;
    close(fd);
    out[got] = '\0';
    return out;
}

static int status_of(const char *response)
{
    int status = 0;
    sscanf(response, "HTTP/1.1 %d", &status);
    return status;
}

START_TEST(http_limits_versions_and_timeouts)
{
    th_daemon_write_config(&D, 1, 0, NULL);
    th_daemon_start(&D);
    /* A request target over 2048 bytes. */
    char *big = malloc(40000);
    int n = snprintf(big, 40000, "GET /v1/");
    memset(big + n, 'a', 3000);
    n += 3000;
    n += snprintf(big + n, 40000 - (size_t)n, " HTTP/1.1\r\n\r\n");
    char *out = raw_exchange(big, (size_t)n, 0);
    ck_assert_int_eq(status_of(out), 414);
    free(out);
    /* Headers over 16 KiB. */
    n = snprintf(big, 40000, "GET /v1/status HTTP/1.1\r\n");
    for (int i = 0; i < 300; i++)
        n += snprintf(big + n, 40000 - (size_t)n, "X-Filler-%03d: %080d\r\n", i, 0);
    n += snprintf(big + n, 40000 - (size_t)n, "\r\n");
    out = raw_exchange(big, (size_t)n, 0);
    ck_assert_int_eq(status_of(out), 431);
    free(out);
    free(big);
    /* A body over 64 KiB, announced and sent: answered, not cut off. */
    size_t blen = 200000;
    char *body = malloc(blen + 200);
    n = snprintf(body, 200, "POST /v1/pools/demo/acquire HTTP/1.1\r\nContent-Length: %zu\r\n\r\n",
                 blen);
    memset(body + n, 'x', blen);
    out = raw_exchange(body, (size_t)n + blen, 0);
    ck_assert_int_eq(status_of(out), 413);
    free(out);
    free(body);
    /* Only HTTP/1.0 and 1.1. */
    out = raw_exchange("GET /v1/status HTTP/9.9\r\n\r\n", 27, 0);
    ck_assert_int_eq(status_of(out), 505);
    free(out);
    out = raw_exchange("GET /v1/status\r\n\r\n", 18, 0);
    ck_assert_int_eq(status_of(out), 505);
    free(out);
    out = raw_exchange("GET /v1/status HTTP/1.0\r\n\r\n", 27, 0);
    ck_assert_int_eq(status_of(out), 200);
    free(out);
    /* An HTTP/1.0 request closes its connection. */
    out = raw_exchange("GET /v1/status HTTP/1.0\r\n\r\n", 27, 0);
    ck_assert_ptr_nonnull(strstr(out, "Connection: close"));
    free(out);
    /* A refusal closes the connection: what was pipelined after it is not
     * answered. */
    const char *bad = "GET /v1/status HTTP/9.9\r\n\r\nGET /v1/status HTTP/1.1\r\n\r\n";
    out = raw_exchange(bad, strlen(bad), 0);
    ck_assert_int_eq(status_of(out), 505);
    ck_assert_ptr_null(strstr(out, "200 OK"));
    free(out);
    /* A request that trickles in too slowly is cut at 10 s with 408. */
    out = raw_exchange("GET /v1/st", 10, 11);
    ck_assert_int_eq(status_of(out), 408);
    free(out);
    /* And the daemon still serves. */
    json_t *j = NULL;
    ck_assert_int_eq(th_http(&D, "GET", "/v1/status", NULL, &j), 200);
    json_decref(j);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

/* Reads one answer from a kept connection, by its Content-Length. */
static int read_answer(int fd, char *body, size_t cap, bool *closes)
{
    char head[4096];
    size_t got = 0;
    while (got < sizeof head - 1) {
        ssize_t n = read(fd, head + got, 1);
        ck_assert_int_eq(n, 1);
        got++;
        head[got] = '\0';
        if (got >= 4 && !memcmp(head + got - 4, "\r\n\r\n", 4))
            break;
    }
    const char *cl = strstr(head, "Content-Length: ");
    ck_assert_ptr_nonnull(cl);
    size_t len = (size_t)atol(cl + 16);
    ck_assert_uint_lt(len, cap);
    size_t have = 0;
    while (have < len) {
        ssize_t n = read(fd, body + have, len - have);
        ck_assert_int_gt(n, 0);
        have += (size_t)n;
    }
    body[len] = '\0';
    *closes = strstr(head, "Connection: close") != NULL;
    return status_of(head);
}

START_TEST(keep_alive_and_ordered_pipelining)
{
    th_daemon_write_config(&D, 2, 0, NULL); /* no spares: an acquire waits for a clone */
    th_daemon_start(&D);
    int fd = connect_control(30);
    char body[65536];
    bool closes = true;
    /* Several requests, one after the other, on one connection. */
    for (int i = 0; i < 3; i++) {
        const char *req = "GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n";
        ck_assert_int_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
        ck_assert_int_eq(read_answer(fd, body, sizeof body, &closes), 200);
        ck_assert(!closes);
        ck_assert_ptr_nonnull(strstr(body, "\"pools\""));
    }
    /* Pipelined in one write: an acquire that must wait for a desktop, then
     * a status request, then the release of a desktop that does not exist.
     * Answers come in the order asked, the status only after the acquire. */
    const char *three = "POST /v1/pools/demo/acquire HTTP/1.1\r\nContent-Length: 16\r\n\r\n"
                        "{\"user\": \"ka-1\"}"
                        "GET /v1/pools/demo?summary=1 HTTP/1.1\r\n\r\n"
                        "POST /v1/desktops/none/release HTTP/1.1\r\nConnection: close\r\n\r\n";
    ck_assert_int_eq(write(fd, three, strlen(three)), (ssize_t)strlen(three));
    ck_assert_int_eq(read_answer(fd, body, sizeof body, &closes), 200);
    ck_assert_ptr_nonnull(strstr(body, "\"user\":\"ka-1\""));
    ck_assert_int_eq(read_answer(fd, body, sizeof body, &closes), 200);
    json_t *j = json_loads(body, 0, NULL);
    ck_assert_ptr_nonnull(j);
    /* The acquire was answered first: its desktop is assigned already. */
    ck_assert_int_eq(json_integer_value(json_object_get(
                         json_object_get(j, "desktops_by_state"), "assigned")),
                     1);
    json_decref(j);
    ck_assert_int_eq(read_answer(fd, body, sizeof body, &closes), 404);
    ck_assert(closes); /* asked for: the daemon closes after it */
    ck_assert_int_eq(read(fd, body, 1), 0);
    close(fd);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

/* Sends one keep-alive status request on fd and returns the answer's
 * status (body and whether it closes through the arguments). */
static int status_on(int fd, char *body, size_t cap, bool *closes)
{
    const char *req = "GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n";
    ck_assert_int_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    return read_answer(fd, body, cap, closes);
}

START_TEST(connections_beyond_the_limit_are_answered_503)
{
    th_daemon_write_config(&D, 1, 0, NULL);
    th_daemon_add_service_setting(&D, "max_connections = 3;");
    th_daemon_start(&D);
    char body[65536];
    bool closes = false;
    /* Three kept connections: the limit. */
    int kept[3];
    for (int i = 0; i < 3; i++) {
        kept[i] = connect_control(15);
        ck_assert_int_eq(status_on(kept[i], body, sizeof body, &closes), 200);
        ck_assert(!closes);
    }
    /* A fourth gets its request read, a 503 that says what to do, and is
     * closed; the kept ones still serve. */
    int extra = connect_control(15);
    ck_assert_int_eq(status_on(extra, body, sizeof body, &closes), 503);
    ck_assert(closes);
    ck_assert_ptr_nonnull(strstr(body, "at most 3 are served"));
    ck_assert_int_eq(read(extra, body, 1), 0);
    close(extra);
    ck_assert_int_eq(status_on(kept[1], body, sizeof body, &closes), 200);
    /* Once one closes, a new connection is served again (the daemon sees
     * the close a moment later). */
    close(kept[0]);
    char *metrics = NULL;
    for (int i = 0; i < 50 && !metrics; i++) {
        char *m = th_must("curl -s --unix-socket %s http://vdipool/metrics", D.sock);
        if (strstr(m, "vdipool_api_connections_max 3"))
            metrics = m;
        else {
            free(m);
            usleep(100 * 1000);
        }
    }
    ck_assert_ptr_nonnull(metrics);
    ck_assert_ptr_nonnull(strstr(metrics, "vdipool_api_connections_refused_total 1\n"));
    ck_assert_ptr_nonnull(strstr(metrics, "vdipool_api_connections 3\n")); /* two kept + curl */
    free(metrics);
    char log[1200];
    snprintf(log, sizeof log, "%s/vdipoold.log", D.dir);
    ck_assert_int_eq(
        th_run(NULL, "grep -q 'event=connections-refused refused=1 open=4 max_connections=3' %s",
               log),
        0);
    /* A reload applies a new limit; the open connections stay. */
    free(th_must("sed -i 's#max_connections = 3;#max_connections = 5;#' %s", D.conf));
    json_t *j = NULL;
    ck_assert_int_eq(th_http(&D, "POST", "/v1/reload", NULL, &j), 200);
    json_decref(j);
    int more[2];
    for (int i = 0; i < 2; i++) {
        more[i] = connect_control(15);
        ck_assert_int_eq(status_on(more[i], body, sizeof body, &closes), 200);
    }
    ck_assert_int_eq(status_on(kept[2], body, sizeof body, &closes), 200);
    for (int i = 0; i < 2; i++)
        close(more[i]);
    close(kept[1]);
    close(kept[2]);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

START_TEST(acquire_withdrawn_when_the_client_goes)
{
    th_daemon_write_config(&D, 2, 0, NULL); /* no spares: an acquire waits */
    th_daemon_start(&D);
    const char *req = "POST /v1/pools/demo/acquire HTTP/1.1\r\nContent-Length: 18\r\n\r\n"
                      "{\"user\": \"gone-1\"}";
    int fd = connect_control(5);
    ck_assert_int_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    close(fd); /* the broker gives up before a desktop is ready */
    /* Nobody is assigned a desktop for it (one already being prepared stays
     * ready for the next user). */
    sleep(2);
    json_t *j = NULL;
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &j), 200);
    ck_assert_int_eq(state_count(j, "assigned"), 0);
    json_decref(j);
    char log[1200];
    snprintf(log, sizeof log, "%s/vdipoold.log", D.dir);
    ck_assert_int_eq(th_run(NULL, "grep -q 'event=acquire-withdrawn user=gone-1' %s", log), 0);
    json_decref(th_acquire(&D, "here-2", 200));
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

/* A pool "demo" that follows gold family "fam" in D.dir/fam. */
static void write_family_config(unsigned size, unsigned spares, const char *extra)
{
    char golds[2048], body[2048];
    snprintf(golds, sizeof golds, "golds = ( { name = \"fam\"; dir = \"%s/fam\"; } );", D.dir);
    snprintf(body, sizeof body,
             "gold = \"fam\"; size = %u; spares = %u;\n"
             "  domain = { memory = \"32M\"; vcpus = 1; network = \"none\"; graphics = \"vnc\";\n"
             "             accel = \"tcg\"; }; %s",
             size, spares, extra ? extra : "");
    th_daemon_write_pool(&D, "20s", golds, body);
}

/* Runs vdipoolctl gold ... against this test's catalog and daemon. */
static char *gold_ctl(const char *args)
{
    return th_must("VDIPOOL_STATE_DIR=%s %s gold %s --socket %s --config %s 2>&1",
                   D.state, getenv("VDIPOOLCTL"), args, D.sock, D.conf);
}

/* The same for a command that must fail (crash: a $VDIPOOL_CRASH_AT
 * point, or NULL); its output, never NULL. */
static char *gold_ctl_failing(const char *crash, const char *args)
{
    char *out = NULL;
    ck_assert_int_ne(th_run(&out,
                            "VDIPOOL_CRASH_AT=%s VDIPOOL_STATE_DIR=%s %s gold %s --socket %s "
                            "--config %s 2>&1",
                            crash ? crash : "", D.state, getenv("VDIPOOLCTL"), args, D.sock,
                            D.conf),
                     0);
    return out ? out : strdup("");
}

/* Acquires a desktop of pool demo for user; its name into name. */
static void acquire_name(const char *user, char *name, size_t len)
{
    json_t *a = th_acquire(&D, user, 200);
    snprintf(name, len, "%s", json_string_value(json_object_get(a, "desktop")));
    json_decref(a);
}

/* Waits until every ready desktop is on version `version` of fam and
 * `ready` are ready. */
static void wait_spares_on(unsigned version, int64_t ready)
{
    char want[64];
    snprintf(want, sizeof want, "/fam/v%04u.qcow2", version);
    time_t end = time(NULL) + 30;
    json_t *j = NULL;
    while (time(NULL) <= end) {
        json_decref(j);
        j = NULL;
        bool all = th_http(&D, "GET", "/v1/pools/demo", NULL, &j) == 200 &&
                   state_count(j, "ready") == ready;
        size_t i;
        json_t *d;
        json_array_foreach(json_object_get(j, "desktops"), i, d)
        {
            const char *g = json_string_value(json_object_get(d, "gold"));
            if (!strcmp(json_string_value(json_object_get(d, "state")), "ready"))
                all &= g && strstr(g, want) != NULL;
        }
        if (all) {
            json_decref(j);
            return;
        }
        usleep(100000);
    }
    char *dump = j ? json_dumps(j, 0) : NULL;
    ck_abort_msg("the spares did not move to version %u: %s", version, dump ? dump : "-");
}

START_TEST(gold_family_versions_roll_over)
{
    char src2[1200], out_path[1200];
    snprintf(src2, sizeof src2, "%s/second.qcow2", D.dir);
    free(th_must("%s %s", getenv("MAKE_DEMO_GOLD"), src2));
    /* Version 1 from the test's gold (a file, not sealed by the import: it
     * writes a new one), then the daemon on the family. */
    write_family_config(3, 2, NULL);
    char args[2600];
    snprintf(args, sizeof args, "import fam %s --note first", D.gold);
    char *out = gold_ctl(args);
    ck_assert_msg(strstr(out, "version 1 is current") && strstr(out, "not running"), "%s", out);
    free(out);
    th_daemon_start(&D);
    wait_spares_on(1, 2);
    char name[96];
    acquire_name("alice", name, sizeof name);

    /* Version 2: the running daemon is told, the spares move, alice stays. */
    snprintf(args, sizeof args, "import fam %s --note second", src2);
    out = gold_ctl(args);
    ck_assert_msg(strstr(out, "version 2 is current") && strstr(out, "vdipoold reloaded"), "%s",
                  out);
    free(out);
    wait_spares_on(2, 2);
    json_t *d = th_get_desktop(&D, name);
    ck_assert_str_eq(json_string_value(json_object_get(d, "state")), "assigned");
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(d, "gold")), "/v0001.qcow2"));
    json_decref(d);
    /* Version 1 has alice's child: pruning keeps it. */
    out = gold_ctl("prune fam --keep 1");
    ck_assert_msg(strstr(out, "kept version 1: 1 child") &&
                      strstr(out, "0 versions deleted; 1 older one kept"),
                  "%s", out);
    free(out);

    /* Roll back to 1 and forward to 2 again. */
    out = gold_ctl("rollback fam");
    ck_assert_msg(strstr(out, "version 1 is current again (was 2)"), "%s", out);
    free(out);
    wait_spares_on(1, 2);
    /* The same on the API: forward to 2 again, and what it shows. */
    json_t *g = NULL;
    ck_assert_int_eq(th_http(&D, "POST", "/v1/golds/fam/rollback", "{\"to\": 2, \"note\": \"again\"}",
                             &g),
                     200);
    ck_assert_int_eq(json_integer_value(json_object_get(g, "current")), 2);
    json_decref(g);
    wait_spares_on(2, 2);
    ck_assert_int_eq(th_http(&D, "GET", "/v1/golds", NULL, &g), 200);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(json_object_get(g, "golds"), 0),
                                                        "current_version")),
                     2);
    json_decref(g);
    ck_assert_int_eq(th_http(&D, "GET", "/v1/golds/fam", NULL, &g), 200);
    ck_assert_uint_eq(json_array_size(json_object_get(g, "versions")), 2);
    json_decref(g);
    ck_assert_int_eq(th_http(&D, "POST", "/v1/golds/fam/publish", NULL, &g), 404); /* no edit */
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(g, "error")), "no edit"));
    json_decref(g);
    ck_assert_int_eq(th_http(&D, "GET", "/v1/golds/nosuch", NULL, &g), 404);
    json_decref(g);

    /* A gold import killed at each step (the CLI itself, by SIGKILL) leaves
     * the family as it was. */
    const char *points[] = {"version:converted", "version:placed", "version:sealed"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(args, sizeof args, "import fam %s", src2);
        free(gold_ctl_failing(points[i], args));
        out = gold_ctl("versions fam --json");
        json_t *vj = json_loads(out, 0, NULL);
        free(out);
        ck_assert_uint_eq(json_array_size(json_object_get(vj, "versions")), 2);
        json_decref(vj);
        char v3[1300];
        snprintf(v3, sizeof v3, "%s/fam/v0003.qcow2", D.dir);
        ck_assert_msg(access(v3, F_OK) != 0, "v3 left after a crash at %s", points[i]);
    }

    /* alice logs off: version 1 has no child left and goes. */
    json_t *r = NULL;
    char path[256];
    snprintf(path, sizeof path, "/v1/desktops/%s/release", name);
    ck_assert_int_eq(th_http(&D, "POST", path, NULL, &r), 200);
    json_decref(r);
    wait_spares_on(2, 2);
    snprintf(out_path, sizeof out_path, "%s/fam/v0001.qcow2", D.dir);
    time_t end = time(NULL) + 20;
    for (bool retired = false; !retired;) {
        out = gold_ctl("versions fam --json");
        json_t *vj = json_loads(out, 0, NULL);
        free(out);
        const char *st = json_string_value(
            json_object_get(json_array_get(json_object_get(vj, "versions"), 0), "state"));
        retired = st && !strcmp(st, "retired");
        json_decref(vj);
        ck_assert_msg(retired || time(NULL) < end, "version 1 never retired");
        if (!retired)
            usleep(200000);
    }
    for (;;) {
        out = gold_ctl("prune fam --keep 1");
        bool done = strstr(out, "deleted version 1") != NULL;
        ck_assert_msg(done || time(NULL) < end, "%s", out);
        free(out);
        if (done)
            break;
        sleep(1); /* its last child is being deleted */
    }
    ck_assert_int_ne(access(out_path, F_OK), 0);
    out = gold_ctl("versions fam --json");
    json_t *j = json_loads(out, 0, NULL);
    free(out);
    json_t *vs = json_object_get(j, "versions");
    ck_assert_uint_eq(json_array_size(vs), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(vs, 0), "version")), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(vs, 0), "state")),
                     "current");
    json_t *hist = json_object_get(j, "history");
    const char *actions[] = {"import", "import", "rollback", "rollback", "prune"};
    ck_assert_uint_eq(json_array_size(hist), 5);
    for (size_t i = 0; i < 5; i++)
        ck_assert_str_eq(json_string_value(json_object_get(json_array_get(hist, i), "action")),
                         actions[i]);
    json_decref(j);
    /* The current version was never written: it still verifies. */
    out = th_must("VDIPOOL_STATE_DIR=%s %s image verify %s/fam/v0002.qcow2 2>&1", D.state,
                  getenv("VDIPOOLCTL"), D.dir);
    free(out);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

/* Edit and publish on libvirt's test driver (the maintenance domain is a
 * test domain): the API refuses a second edit, publish refuses a base that
 * changed since it was sealed, and a good edit becomes the next version. */
START_TEST(gold_edit_and_publish)
{
    write_family_config(2, 1, NULL);
    char args[2600];
    snprintf(args, sizeof args, "import fam %s", D.gold);
    free(gold_ctl(args));
    th_daemon_start(&D);
    wait_spares_on(1, 1);
    char *out = gold_ctl("edit fam");
    ck_assert_msg(strstr(out, "fam-maint runs on a child of version 1"), "%s", out);
    free(out);
    json_t *j = NULL;
    ck_assert_int_eq(th_http(&D, "POST", "/v1/golds/fam/edit", NULL, &j), 409);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(j, "error")), "being edited"));
    json_decref(j);
    /* Discard, and edit again. */
    out = gold_ctl("edit --discard fam");
    ck_assert_msg(strstr(out, "thrown away"), "%s", out);
    free(out);
    free(gold_ctl("edit fam"));
    /* A publish killed at each step leaves version 1 current and the edit
     * open; the next publish goes ahead (the test driver's domain holds no
     * file). */
    const char *points[] = {"version:converted", "version:placed", "version:sealed"};
    for (size_t i = 0; i < 3; i++) {
        free(gold_ctl_failing(points[i], "publish fam"));
        ck_assert_int_eq(th_http(&D, "GET", "/v1/golds/fam/versions", NULL, &j), 200);
        ck_assert_uint_eq(json_array_size(json_object_get(j, "versions")), 1);
        json_decref(j);
        char child[1300];
        snprintf(child, sizeof child, "%s/fam/maintenance.qcow2", D.dir);
        ck_assert_int_eq(access(child, F_OK), 0);
    }
    out = gold_ctl("publish fam --note edited");
    ck_assert_msg(strstr(out, "version 2 is published and current") &&
                      strstr(out, "vdipoold reloaded"),
                  "%s", out);
    free(out);
    wait_spares_on(2, 1);
    /* The test driver's maintenance domain still runs (a real one has shut
     * down to be published): a new edit says so; discard takes it. */
    out = gold_ctl_failing(NULL, "edit fam");
    ck_assert_msg(strstr(out, "still runs from an earlier edit"), "%s", out);
    free(out);
    free(gold_ctl("edit --discard fam"));
    /* An edit whose base changes behind the guard is not published. */
    free(gold_ctl("edit fam"));
    char v2[1300];
    snprintf(v2, sizeof v2, "%s/fam/v0002.qcow2", D.dir);
    free(th_must("chattr -i %s && chmod 0644 %s && touch %s", v2, v2, v2));
    out = gold_ctl_failing(NULL, "publish fam");
    ck_assert_msg(strstr(out, "changed"), "%s", out);
    free(out);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

START_TEST(rollout_manual_then_immediate)
{
    char src2[1200], args[2600];
    snprintf(src2, sizeof src2, "%s/second.qcow2", D.dir);
    free(th_must("%s %s", getenv("MAKE_DEMO_GOLD"), src2));
    write_family_config(3, 2, "rollout = \"manual\";");
    snprintf(args, sizeof args, "import fam %s", D.gold);
    free(gold_ctl(args));
    th_daemon_start(&D);
    wait_spares_on(1, 2);
    char name[96];
    acquire_name("ann", name, sizeof name);
    wait_spares_on(1, 2);

    /* Manual: a new version does not move the pool until an operator says. */
    snprintf(args, sizeof args, "import fam %s", src2);
    free(gold_ctl(args));
    sleep(2);
    wait_spares_on(1, 2);
    json_t *p = NULL;
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo?summary=1", NULL, &p), 200);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(p, "held_for_rollout_to")),
                                 "/fam/v0002.qcow2"));
    ck_assert_int_eq(json_object_size(json_object_get(p, "desktops_by_gold")), 1);
    json_decref(p);
    char *out = th_must("%s pool rollout demo --socket %s 2>&1", getenv("VDIPOOLCTL"), D.sock);
    ck_assert_msg(strstr(out, "rolls out to"), "%s", out);
    free(out);
    wait_spares_on(2, 2);
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo?summary=1", NULL, &p), 200);
    ck_assert_ptr_null(json_object_get(p, "held_for_rollout_to"));
    ck_assert_int_eq(json_object_size(json_object_get(p, "desktops_by_gold")), 2); /* ann on v1 */
    json_decref(p);
    ck_assert_int_ne(th_run(NULL, "%s pool rollout demo --socket %s", getenv("VDIPOOLCTL"),
                            D.sock),
                     0); /* nothing held back any more: 409 */

    /* Back to v1 (held: the pool stays on v2), then rollout = "immediate"
     * with a 2 s notice: the pool moves to v1, where ann is; she stays. */
    free(gold_ctl("rollback fam"));
    wait_spares_on(2, 2);
    write_family_config(3, 2, "rollout = \"immediate\"; rollout_notice = \"2s\";");
    json_t *r = NULL;
    ck_assert_int_eq(th_http(&D, "POST", "/v1/reload", NULL, &r), 200);
    json_decref(r);
    wait_spares_on(1, 2);
    json_t *d = th_get_desktop(&D, name);
    ck_assert_str_eq(json_string_value(json_object_get(d, "state")), "assigned");
    json_decref(d);
    /* v2 again: ann's session on v1 ends after the notice (reason rollout). */
    free(gold_ctl("rollback fam --to 2"));
    time_t end = time(NULL) + 20;
    bool ended = false;
    while (!ended && time(NULL) < end) {
        char *m = th_must("curl -s --unix-socket %s http://x/metrics", D.sock);
        ended = strstr(m, "vdipool_sessions_ended_total{pool=\"demo\",reason=\"rollout\"} 1");
        free(m);
        if (!ended)
            usleep(200000);
    }
    ck_assert_msg(ended, "ann's session did not end with reason rollout");
    wait_spares_on(2, 2);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

/* Reads from fd until `want` appears in what was read (kept in buf), or
 * fails after 20 s. */
static void read_until(int fd, char *buf, size_t cap, size_t *len, const char *want)
{
    time_t end = time(NULL) + 20;
    while (!strstr(buf, want)) {
        ck_assert_msg(time(NULL) < end && *len + 1 < cap, "no '%s' in the stream; got:\n%s", want,
                      buf);
        ssize_t n = read(fd, buf + *len, cap - *len - 1);
        ck_assert_msg(n > 0, "the stream closed before '%s'; got:\n%s", want, buf);
        *len += (size_t)n;
        buf[*len] = '\0';
    }
}

/* An operator's drain: no new sessions, spares end, sessions run on; kept
 * across a restart; undrain brings the spares back. A desktop's history
 * and the pool's last-hour counts on the way; ending an empty desktop is
 * refused with why. */
START_TEST(drain_history_and_last_hour)
{
    th_daemon_write_config(&D, 3, 2, NULL);
    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 2, 20));
    json_t *a = th_acquire(&D, "alice", 200);
    char name[96];
    snprintf(name, sizeof name, "%s", json_string_value(json_object_get(a, "desktop")));
    json_decref(a);

    json_t *p = NULL;
    ck_assert_int_eq(th_http(&D, "POST", "/v1/pools/demo/drain", NULL, &p), 200);
    ck_assert(json_is_true(json_object_get(p, "drained")));
    ck_assert_int_gt(json_integer_value(json_object_get(p, "drained_since")), 0);
    json_decref(p);
    json_decref(wait_for("ready", 0, 20));
    json_t *refused = th_acquire(&D, "bob", 503);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(refused, "error")), "drained"));
    json_decref(refused);
    json_t *still = th_get_desktop(&D, name); /* the session runs on */
    ck_assert_str_eq(json_string_value(json_object_get(still, "state")), "assigned");
    json_decref(still);

    /* The session ends; the history shows its life. */
    json_decref(release(name, NULL, 200));
    json_decref(wait_for("assigned", 0, 20));
    json_t *d = th_get_desktop(&D, name);
    json_t *history = json_object_get(d, "history");
    ck_assert_int_ge(json_array_size(history), 2);
    bool ended_released = false;
    size_t i;
    json_t *c;
    json_array_foreach(history, i, c)
    {
        const char *why = json_string_value(json_object_get(c, "reason"));
        if (!strcmp(json_string_value(json_object_get(c, "from")), "assigned") &&
            !strcmp(json_string_value(json_object_get(c, "to")), "ending") && why &&
            !strcmp(why, "released"))
            ended_released = true;
    }
    char *dump = json_dumps(history, 0);
    ck_assert_msg(ended_released, "no assigned -> ending (released) in %s", dump);
    free(dump);
    json_decref(d);
    /* Counted once its end is done. */
    json_t *hour = NULL;
    for (time_t end = time(NULL) + 20; time(NULL) <= end; usleep(100000)) {
        p = NULL;
        ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &p), 200);
        hour = json_object_get(p, "sessions_last_hour");
        if (json_integer_value(json_object_get(hour, "ended")) == 1)
            break;
        json_decref(p);
        hour = NULL;
    }
    ck_assert_msg(hour, "the ended session was not counted in the last hour");
    /* Its end is done and the drained pool makes no new one: an empty
     * desktop has nothing to end. */
    json_t *r = release(name, "{\"reason\": \"operator\"}", 409);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(r, "error")), "empty"));
    json_decref(r);
    ck_assert_int_eq(
        json_integer_value(json_object_get(json_object_get(hour, "ended_by_reason"), "released")),
        1);
    json_decref(p);

    /* Kept across a restart (test:///default keeps no domains across it, so
     * after the session): no spares come back. */
    ck_assert_int_eq(th_daemon_stop(&D), 0);
    th_daemon_start(&D);
    sleep(2);
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &p), 200);
    ck_assert(json_is_true(json_object_get(p, "drained")));
    ck_assert_int_eq(state_count(p, "ready"), 0);
    json_decref(p);

    /* Open again: the spares come back. */
    ck_assert_int_eq(th_http(&D, "POST", "/v1/pools/demo/undrain", NULL, &p), 200);
    ck_assert(json_is_false(json_object_get(p, "drained")));
    json_decref(p);
    json_decref(wait_for("ready", 2, 20));
    json_decref(th_acquire(&D, "bob", 200));
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &p), 200);
    /* alice's (from the catalog, across the restart) and bob's. */
    json_t *hour2 = json_object_get(p, "sessions_last_hour");
    ck_assert_int_eq(json_integer_value(json_object_get(hour2, "started")), 2);
    ck_assert_int_eq(
        json_integer_value(json_object_get(json_object_get(hour2, "ended_by_reason"), "released")),
        1);
    json_decref(p);
    ck_assert_int_eq(th_http(&D, "POST", "/v1/pools/nosuch/drain", NULL, &p), 404);
    json_decref(p);
}
END_TEST

/* service.session_history = "1d": finished sessions' records older than
 * a day are forgotten (the daemon says how many); newer ones and open ones
 * stay, and the pool's last hour still counts the recent one. */
START_TEST(old_sessions_are_forgotten)
{
    th_daemon_write_config(&D, 1, 1, NULL);
    th_daemon_add_service_setting(&D, "session_history = \"1d\";");
    vdi_catalog *cat = NULL;
    vdi_error err = {0};
    ck_assert_msg(vdi_catalog_open(D.state, &cat, &err) == 0, "%s", err.message);
    int64_t now = (int64_t)time(NULL);
    for (int i = 0; i < 3; i++) {
        vdi_session_record old = {.pool = "demo",
                                  .desktop = "x",
                                  .user = "u",
                                  .started_at = now - 3 * 86400,
                                  .ended_at = now - 2 * 86400 + i,
                                  .end_reason = "released",
                                  .final_bytes = 1};
        ck_assert_int_eq(vdi_catalog_record_session(cat, &old, &err), 0);
    }
    vdi_session_record recent = {.pool = "demo",
                                 .desktop = "x",
                                 .user = "u",
                                 .started_at = now - 900,
                                 .ended_at = now - 600,
                                 .end_reason = "released",
                                 .final_bytes = 1};
    ck_assert_int_eq(vdi_catalog_record_session(cat, &recent, &err), 0);
    vdi_catalog_close(cat);

    th_daemon_start(&D);
    ck_assert_msg(th_daemon_log_wait(&D, "event=sessions-pruned removed=3 ", 20),
                  "the three sessions older than a day were not forgotten");
    json_t *p = NULL;
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &p), 200);
    ck_assert_int_eq(
        json_integer_value(json_object_get(json_object_get(p, "sessions_last_hour"), "ended")), 1);
    json_decref(p);
    json_decref(th_acquire(&D, "carol", 200)); /* an open session, kept */
    ck_assert_int_eq(th_daemon_stop(&D), 0);

    ck_assert_msg(vdi_catalog_open(D.state, &cat, &err) == 0, "%s", err.message);
    uint64_t p95 = 0;
    size_t samples = 0;
    ck_assert_int_eq(vdi_catalog_growth_p95(cat, "demo", 1, &p95, &samples, &err), 0);
    ck_assert_uint_eq(samples, 1); /* the recent finished one */
    char name[96];
    snprintf(name, sizeof name, "%s-001", D.prefix);
    int64_t id = 0;
    ck_assert_int_eq(vdi_catalog_open_session(cat, name, &id, NULL, 0, NULL, &err), 0);
    vdi_catalog_close(cat);
}
END_TEST

START_TEST(events_stream_desktop_changes)
{
    th_daemon_write_config(&D, 2, 1, NULL);
    th_daemon_start(&D);
    json_decref(wait_for("ready", 1, 20));
    json_t *j = NULL;
    ck_assert_int_eq(th_http(&D, "GET", "/v1/events?pool=nosuch", NULL, &j), 404);
    json_decref(j);
    int fd = connect_control(20);
    const char *req = "GET /v1/events?pool=demo HTTP/1.1\r\nHost: x\r\n\r\n";
    ck_assert_int_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    static char buf[262144];
    size_t len = 0;
    buf[0] = '\0';
    read_until(fd, buf, sizeof buf, &len, "event: hello\ndata: {");
    ck_assert_ptr_nonnull(strstr(buf, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream"));
    read_until(fd, buf, sizeof buf, &len, "\n\n"); /* the hello's end */
    /* A user takes the spare: its change arrives as it happens, and the
     * pool makes a new spare (cloning, starting, ready). */
    json_t *got = th_acquire(&D, "ev-user", 200);
    char want[256];
    snprintf(want, sizeof want, "\"name\":\"%s\"",
             json_string_value(json_object_get(got, "desktop")));
    json_decref(got);
    read_until(fd, buf, sizeof buf, &len, "\"user\":\"ev-user\"");
    const char *ev = strstr(buf, "\"user\":\"ev-user\"");
    const char *line = ev;
    while (line > buf && line[-1] != '\n')
        line--;
    ck_assert_msg(!strncmp(line, "data: {", 7), "the event is one data line: %s", line);
    ck_assert_ptr_nonnull(strstr(line, want));
    ck_assert_ptr_nonnull(strstr(line, "\"state\":\"assigned\""));
    ck_assert_ptr_nonnull(strstr(line, "\"previous_state\":\"ready\""));
    read_until(fd, buf, sizeof buf, &len, "\"previous_state\":\"cloning\"");
    /* Several streams at once, and one going away, leave the daemon well. */
    char *other = raw_exchange("GET /v1/events HTTP/1.1\r\n\r\n", 27, 0);
    ck_assert_ptr_nonnull(strstr(other, "event: hello"));
    free(other);
    close(fd);
    ck_assert_int_eq(th_http(&D, "GET", "/v1/status", NULL, &j), 200);
    json_decref(j);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

/* The stray check after adoption: children recorded for two pools on one
 * datastore that no desktop holds are removed, a record whose file is gone
 * is dropped, and the datastore is reconciled once, not once per pool. */
START_TEST(strays_of_pools_sharing_a_datastore)
{
    char text[16384];
    snprintf(text, sizeof text,
             "service = { socket = \"%s\"; state_dir = \"%s\"; libvirt_uri = \"%s\";\n"
             "  log_level = \"debug\"; };\n"
             "datastores = ( { name = \"local\"; path = \"%s/ds\"; reserve = \"0\";\n"
             "  max_overcommit = 1000.0; } );\n"
             "golds = ( { name = \"demo\"; path = \"%s\"; } );\n"
             "pools = ( { name = \"demo\"; desktop_prefix = \"%s\"; datastore = \"local\";\n"
             "  gold = \"demo\"; size = 1; spares = 1; },\n"
             "  { name = \"other\"; desktop_prefix = \"%s-o\"; datastore = \"local\";\n"
             "  gold = \"demo\"; size = 1; spares = 1; } );\n",
             D.sock, D.state, D.uri, D.dir, D.gold, D.prefix, D.prefix);
    th_write_file(D.conf, text, strlen(text));
    /* What a crash leaves: children made and recorded, never started. */
    vdi_catalog *cat = NULL;
    vdi_cloner *cloner = NULL;
    vdi_error err = {0};
    vdi_clone_options opts;
    vdi_clone_options_init(&opts);
    ck_assert_msg(vdi_catalog_open(D.state, &cat, &err) == 0, "%s", err.message);
    ck_assert_msg(vdi_cloner_new(D.gold, &opts, &cloner, &err) == 0, "%s", err.message);
    const char *pools[] = {"demo", "other", "other"};
    char *kids[3];
    for (int i = 0; i < 3; i++) {
        ck_assert_int_ge(asprintf(&kids[i], "%s/ds/stray-%d.qcow2", D.dir, i), 0);
        vdi_child_meta meta = {.datastore = "local", .pool = pools[i], .slot = -1};
        size_t made = 0;
        ck_assert_msg(vdi_clone_batch_recorded(cat, cloner, &kids[i], 1, &meta, &made, &err) == 0,
                      "%s", err.message);
    }
    vdi_cloner_free(cloner);
    vdi_catalog_close(cat);
    ck_assert_int_eq(unlink(kids[2]), 0); /* its record outlived its file */
    sleep(1); /* children made in the second the check begins are not its business */
    th_daemon_start(&D);
    ck_assert(th_daemon_log_wait(&D, "event=stray-child-removed child=.*/stray-1.qcow2", 20));
    ck_assert(th_daemon_log_wait(&D, "event=stray-child-removed child=.*/stray-0.qcow2", 20));
    ck_assert_int_ne(access(kids[0], F_OK), 0);
    ck_assert_int_ne(access(kids[1], F_OK), 0);
    ck_assert_uint_eq(th_daemon_log_count(&D, "event=datastore-reconciled"), 1);
    ck_assert_uint_eq(th_daemon_log_count(&D, "event=datastore-reconciled.* records_dropped=1 "),
                      1);
    ck_assert_uint_eq(th_daemon_log_count(&D, "event=stray-child-removed"), 2);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
    for (int i = 0; i < 3; i++)
        free(kids[i]);
}
END_TEST

/* How many desktop lines `vdipoolctl status ARGS` prints whose rest (after
 * the desktop's name) matches the grep pattern `rest`. */
static int status_lines(const char *args, const char *rest)
{
    char *out = th_must("%s status %s --socket %s | grep -c '^  %s-[^ ]*%s' || true",
                        getenv("VDIPOOLCTL"), args, D.sock, D.prefix, rest);
    int n = atoi(out);
    free(out);
    return n;
}

/* `vdipoolctl status` counts a pool of more than 50 desktops instead of
 * listing them, lists them when the pool is named (page by page), and
 * lists only some states with --state; a pool or a state that does not
 * exist is an error that names it. */
START_TEST(status_counts_large_pools_and_lists_on_request)
{
    th_daemon_write_config(&D, 80, 60, "expected_growth = \"1M\";");
    th_daemon_start(&D);
    json_decref(wait_for("ready", 60, 60));
    json_decref(th_acquire(&D, "ann", 200));
    json_decref(th_acquire(&D, "ben", 200));
    json_decref(wait_for("ready", 60, 60));
    const char *ctl = getenv("VDIPOOLCTL");

    char *out = th_must("%s status --socket %s", ctl, D.sock);
    ck_assert_msg(strstr(out, "62 desktops: vdipoolctl status demo lists them"), "%s", out);
    ck_assert_ptr_null(strstr(out, D.prefix)); /* no desktop listed */
    free(out);

    /* The pool's desktops in use, and none of its 18 empty slots. */
    ck_assert_int_eq(status_lines("demo", " \\+ready"), 60);
    ck_assert_int_eq(status_lines("demo", ""), 62);
    ck_assert_int_eq(status_lines("demo", " \\+empty"), 0);

    out = th_must("%s status demo --state assigned --socket %s", ctl, D.sock);
    ck_assert_msg(strstr(out, "user ann") && strstr(out, "user ben"), "%s", out);
    free(out);
    ck_assert_int_eq(status_lines("demo --state assigned", ""), 2);
    ck_assert_int_eq(status_lines("--state assigned,paused", ""), 2);
    ck_assert_int_eq(status_lines("demo --state empty", " \\+empty"), 18);

    ck_assert_int_ne(th_run(&out, "%s status nope --socket %s 2>&1", ctl, D.sock), 0);
    ck_assert_msg(strstr(out, "no pool nope"), "%s", out);
    free(out);
    ck_assert_int_ne(th_run(&out, "%s status demo --state asigned --socket %s 2>&1", ctl, D.sock),
                     0);
    ck_assert_msg(strstr(out, "'asigned' is not a desktop state") && !strstr(out, "pool demo"),
                  "%s", out);
    free(out);
    ck_assert_int_ne(th_run(&out, "%s status --state 'a b' --socket %s 2>&1", ctl, D.sock), 0);
    ck_assert_msg(strstr(out, "--state takes desktop states separated by commas"), "%s", out);
    free(out);
}
END_TEST

/* The client library reads an answer bigger than its first buffer whose
 * head came on its own (a page of a large pool, `vdipoolctl images` of a
 * busy site) and returns as soon as Content-Length bytes are in, on a
 * connection the server keeps open. A fake server answers here: its head,
 * then 200 000 bytes of body in pieces, then it waits 3 s before closing. */
START_TEST(client_reads_answers_larger_than_its_first_buffer)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/fake.sock", D.dir);
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    ck_assert_uint_lt(strlen(path), sizeof addr.sun_path);
    memcpy(addr.sun_path, path, strlen(path) + 1);
    ck_assert_int_eq(bind(lfd, (struct sockaddr *)&addr, sizeof addr), 0);
    ck_assert_int_eq(listen(lfd, 1), 0);
    enum { BODY = 200000 };
    pid_t server = fork();
    ck_assert_int_ge(server, 0);
    if (server == 0) {
        int fd = accept(lfd, NULL, NULL);
        char req[4096];
        size_t got = 0;
        ssize_t n;
        while (got < sizeof req - 1 && (n = read(fd, req + got, sizeof req - 1 - got)) > 0) {
            got += (size_t)n;
            req[got] = '\0';
            if (strstr(req, "\r\n\r\n"))
                break;
        }
        char head[160];
        int hlen = snprintf(head, sizeof head,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                            "Content-Length: %d\r\n\r\n",
                            BODY);
        if (write(fd, head, (size_t)hlen) != hlen)
            _exit(1);
        usleep(100000); /* the head is read alone */
        static char body[BODY];
        for (int i = 0; i < BODY; i++)
            body[i] = (char)('a' + i % 26);
        for (int at = 0; at < BODY; at += 7000) {
            int len = BODY - at < 7000 ? BODY - at : 7000;
            if (write(fd, body + at, (size_t)len) != len)
                _exit(1);
            usleep(1000);
        }
        sleep(3);
        _exit(0);
    }
    close(lfd);
    char *text = NULL;
    vdi_error err = {0};
    time_t began = time(NULL);
    int status = vdi_client_call(path, "GET", "/big", NULL, &text, &err);
    bool quick = time(NULL) - began < 3;
    kill(server, SIGKILL);
    waitpid(server, NULL, 0);
    ck_assert_msg(status == 200, "status %d: %s", status, err.message);
    ck_assert_uint_eq(strlen(text), BODY);
    for (int i = 0; i < BODY; i += 997)
        ck_assert_int_eq(text[i], 'a' + i % 26);
    ck_assert_msg(quick, "the client waited for the server to close");
    free(text);
}
END_TEST

TH_MAIN("service", {"service",
                    setup,
                    teardown,
                    120,
                    {spares_acquire_release_refill,
                     acquire_answered_when_the_flush_fails,
                     reload_applies_diff_or_keeps_running_config,
                     gold_rollout,
                     unsealed_gold_blocks_with_reason,
                     acquire_waits_for_a_desktop_being_prepared,
                     tcp_needs_token_and_socket_checks_peer,
                     time_limits_and_pool_removal,
                     domain_template,
                     second_instance_is_refused,
                     blocked_pool_waits_without_spinning,
                     http_limits_versions_and_timeouts,
                     keep_alive_and_ordered_pipelining,
                     connections_beyond_the_limit_are_answered_503,
                     acquire_withdrawn_when_the_client_goes,
                     events_stream_desktop_changes,
                     old_sessions_are_forgotten,
                     gold_family_versions_roll_over,
                     rollout_manual_then_immediate,
                     gold_edit_and_publish,
                     drain_history_and_last_hour,
                     client_reads_answers_larger_than_its_first_buffer,
                     status_counts_large_pools_and_lists_on_request,
                     strays_of_pools_sharing_a_datastore,
                     NULL}})
