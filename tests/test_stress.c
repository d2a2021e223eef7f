/* test_stress.c — vdipoold under an operator's churn, against a real
 * libvirtd and QEMU: reloads every ~100 ms that grow, shrink, remove and
 * re-add the pool and switch its gold, while clones, starts and ends are in
 * flight and users acquire and release desktops, with libvirtd killed and
 * restarted in the middle. Afterwards: the daemon is alive and stops
 * cleanly, no sanitizer report, every slot in a state the controller knows,
 * libvirt's domains and the datastore's children are exactly the desktops
 * the API shows, and both golds still match their sealed fingerprints. */
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
static char gold_b[1200];

static void setup(void)
{
    ck_assert_msg(th_run(NULL, "virsh -c qemu:///system list") == 0,
                  "libvirtd is not answering on qemu:///system (deploy/setup.sh starts it)");
    th_daemon_prepare(&D, "stress", "qemu:///system");
    /* A second sealed gold (a copy: same content, another file). */
    snprintf(gold_b, sizeof gold_b, "%s/gold-b.qcow2", D.dir);
    free(th_must("cp --sparse=always %s %s", D.gold, gold_b));
    vdi_catalog *cat = NULL;
    vdi_error err = {0};
    ck_assert_msg(vdi_catalog_open(D.state, &cat, &err) == 0, "%s", err.message);
    vdi_seal_result r;
    ck_assert_msg(vdi_seal(cat, gold_b, &r, &err) == 0, "%s", err.message);
    vdi_catalog_close(cat);
}

static void teardown(void)
{
    th_daemon_stop(&D);
    th_daemon_cleanup_domains(&D);
}

/* The config of one churn step: the pool may be absent. */
static void write_config(bool with_pool, unsigned size, unsigned spares, bool use_b)
{
    char text[8192];
    int n = snprintf(
        text, sizeof text,
        "service = { socket = \"%s\"; state_dir = \"%s\"; libvirt_uri = \"%s\";\n"
        "  log_level = \"debug\"; acquire_timeout = \"1s\"; };\n"
        "datastores = ( { name = \"local\"; path = \"%s/ds\"; reserve = \"0\";\n"
        "  max_overcommit = 1000.0; } );\n"
        "golds = ( { name = \"a\"; path = \"%s\"; }, { name = \"b\"; path = \"%s\"; } );\n",
        D.sock, D.state, D.uri, D.dir, D.gold, gold_b);
    if (with_pool)
        snprintf(
            text + n, sizeof text - (size_t)n,
            "pools = ( { name = \"demo\"; desktop_prefix = \"%s\"; gold = \"%s\";\n"
            "  datastore = \"local\"; size = %u; spares = %u;\n"
            "  domain = { memory = \"32M\"; vcpus = 1; network = \"none\"; graphics = \"vnc\";\n"
            "             accel = \"tcg\"; }; } );\n",
            D.prefix, use_b ? "b" : "a", size, spares);
    th_write_file(D.conf, text, strlen(text));
}

static bool daemon_alive(void)
{
    return D.pid > 0 && kill(D.pid, 0) == 0;
}

static void churn_users(unsigned step)
{
    if (step % 3)
        return; /* an acquire may wait up to acquire_timeout */
    char body[64];
    snprintf(body, sizeof body, "{\"user\": \"u%u\"}", step);
    json_t *a = NULL;
    int status = th_http(&D, "POST", "/v1/pools/demo/acquire", body, &a);
    ck_assert_msg(status == 200 || status == 404 || status == 503, "acquire: HTTP %d", status);
    const char *name = status == 200 ? json_string_value(json_object_get(a, "desktop")) : NULL;
    if (name && step % 2 == 0) {
        char path[256];
        snprintf(path, sizeof path, "/v1/desktops/%s/release", name);
        json_t *r = NULL;
        int rs = th_http(&D, "POST", path, NULL, &r);
        ck_assert_msg(rs == 200 || rs == 400 || rs == 404, "release: HTTP %d", rs);
        json_decref(r);
    }
    json_decref(a);
}

static bool libvirt_connected(void)
{
    json_t *a = NULL;
    bool up = th_http(&D, "GET", "/v1/status", NULL, &a) == 200 &&
              json_is_true(json_object_get(a, "libvirt_connected"));
    json_decref(a);
    return up;
}

/* Waits until nothing is in flight and the pool has the spares it can have. */
static json_t *wait_converged(int timeout_s)
{
    time_t end = time(NULL) + timeout_s;
    json_t *j = NULL;
    while (time(NULL) <= end) {
        json_decref(j);
        j = NULL;
        if (libvirt_connected() && th_http(&D, "GET", "/v1/pools/demo", NULL, &j) == 200) {
            json_t *st = json_object_get(j, "desktops_by_state");
            json_int_t size = json_integer_value(json_object_get(j, "size"));
            json_int_t spares = json_integer_value(json_object_get(j, "spares"));
            json_int_t used = json_integer_value(json_object_get(st, "assigned")) +
                              json_integer_value(json_object_get(st, "paused"));
            json_int_t want = spares < size - used ? spares : size - used;
            if (json_integer_value(json_object_get(st, "ready")) == want &&
                json_integer_value(json_object_get(st, "cloning")) == 0 &&
                json_integer_value(json_object_get(st, "starting")) == 0 &&
                json_integer_value(json_object_get(st, "ending")) == 0 &&
                json_integer_value(json_object_get(st, "failed")) == 0)
                return j;
        }
        usleep(200000);
    }
    char *log = NULL;
    th_run(&log, "tail -60 %s/vdipoold.log", D.dir);
    fprintf(stderr, "%s", log ? log : "");
    free(log);
    char *dump = j ? json_dumps(j, 0) : NULL;
    ck_abort_msg("the pool did not converge (log above): %.2000s", dump ? dump : "(no answer)");
    return NULL;
}

static bool in_lines(const char *lines, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = lines; (p = strstr(p, word)); p += n)
        if ((p == lines || p[-1] == '\n' || p[-1] == '/') && (p[n] == '\n' || p[n] == '\0'))
            return true;
    return false;
}

/* Releases every assigned desktop of the pool. */
static void release_all(json_t *pool)
{
    size_t i;
    json_t *dj;
    json_array_foreach(json_object_get(pool, "desktops"), i, dj)
    {
        if (!strcmp(json_string_value(json_object_get(dj, "state")), "assigned")) {
            char path[256];
            snprintf(path, sizeof path, "/v1/desktops/%s/release",
                     json_string_value(json_object_get(dj, "name")));
            json_t *r = NULL;
            th_http(&D, "POST", path, NULL, &r);
            json_decref(r);
        }
    }
}

/* Every slot is in a known state, and what the API shows is exactly what
 * exists: a domain and a child for each live desktop (ready, assigned,
 * paused), nothing else in libvirt or the datastore (no temporaries). */
static void check_consistent(json_t *pool)
{
    static const char *const known[] = {"empty",    "cloning", "starting", "ready",
                                        "assigned", "ending",  "failed",   "paused"};
    char *domains =
        th_must("virsh -c qemu:///system list --all --name | grep '^%s-' || true", D.prefix);
    char *children = th_must("cd %s/ds && ls -A", D.dir);
    unsigned live = 0;
    size_t i;
    json_t *dj;
    json_array_foreach(json_object_get(pool, "desktops"), i, dj)
    {
        const char *state = json_string_value(json_object_get(dj, "state"));
        const char *name = json_string_value(json_object_get(dj, "name"));
        bool ok = false;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
            ok |= !strcmp(state, known[k]);
        ck_assert_msg(ok, "desktop %s is in state %s", name, state);
        if (!strcmp(state, "ready") || !strcmp(state, "assigned") || !strcmp(state, "paused")) {
            live++;
            char file[128];
            snprintf(file, sizeof file, "%s.qcow2", name);
            ck_assert_msg(in_lines(domains, name), "desktop %s (%s) has no domain", name, state);
            ck_assert_msg(in_lines(children, file), "desktop %s (%s) has no child", name, state);
        }
    }
    unsigned ndomains = 0, nchildren = 0;
    for (const char *p = domains; *p; p++)
        ndomains += *p == '\n';
    for (const char *p = children; *p; p++)
        nchildren += *p == '\n';
    ck_assert_msg(ndomains == live, "libvirt has %u domains, the pool %u desktops:\n%s", ndomains,
                  live, domains);
    ck_assert_msg(nchildren == live, "the datastore has %u files, the pool %u desktops:\n%s",
                  nchildren, live, children);
    free(domains);
    free(children);
}

START_TEST(reload_churn_with_libvirtd_loss)
{
    /* libvirt goes away on purpose: an end tried meanwhile fails and is
     * retried once it is back. */
    D.end_failures_expected = true;
    const char *src = getenv("VDI_SOURCE_DIR");
    ck_assert_ptr_nonnull(src);
    char *hash_a = strdup(th_hash(D.gold)), *hash_b = strdup(th_hash(gold_b));
    write_config(true, 3, 2, false);
    th_daemon_start(&D);
    json_decref(th_wait_ready(&D, 1, 90));

    srand(42);
    const unsigned steps = 120;
    bool killed = false, restarted = false;
    for (unsigned step = 0; step < steps; step++) {
        bool with_pool = rand() % 8 != 0; /* now and then removed, then re-added */
        unsigned size = 1 + (unsigned)rand() % 6;
        unsigned spares = (unsigned)rand() % (size + 1);
        write_config(with_pool, size, spares, rand() % 3 == 0);
        ck_assert_int_eq(kill(D.pid, SIGHUP), 0);
        churn_users(step);
        if (step == steps / 3) {
            th_run(NULL, "pkill -x libvirtd"); /* QEMU keeps running */
            killed = true;
        }
        if (step == steps / 2 && killed) {
            free(th_must("bash %s/deploy/setup.sh", src));
            restarted = true;
        }
        usleep(100000);
        ck_assert_msg(daemon_alive(), "vdipoold died at step %u", step);
    }
    ck_assert(restarted);
    fprintf(stderr, "stress: %u reloads done\n", steps);
    time_t end = time(NULL) + 60;
    while (!libvirt_connected() && time(NULL) < end)
        usleep(200000);
    ck_assert_msg(libvirt_connected(), "vdipoold did not reconnect to libvirtd");

    /* Settle on a plain config: no sessions left, two spares. */
    write_config(true, 3, 2, false);
    ck_assert_int_eq(kill(D.pid, SIGHUP), 0);
    json_t *pool = NULL;
    ck_assert_int_eq(th_http(&D, "GET", "/v1/pools/demo", NULL, &pool), 200);
    release_all(pool);
    json_decref(pool);
    fprintf(stderr, "stress: reconnected, settling\n");
    pool = wait_converged(120);
    check_consistent(pool);
    json_decref(pool);

    /* The golds never changed. */
    ck_assert_str_eq(th_hash(D.gold), hash_a);
    ck_assert_str_eq(th_hash(gold_b), hash_b);
    free(hash_a);
    free(hash_b);

    ck_assert_int_eq(th_daemon_stop(&D), 0);
    ck_assert_msg(th_run(NULL,
                         "grep -Eq 'AddressSanitizer|runtime error|ThreadSanitizer|LeakSanitizer' "
                         "%s/vdipoold.log",
                         D.dir) != 0,
                  "a sanitizer reported in %s/vdipoold.log", D.dir);
}
END_TEST

static const char *state_of(json_t *pool, const char *name)
{
    size_t i;
    json_t *dj;
    json_array_foreach(json_object_get(pool, "desktops"), i, dj)
    {
        if (!strcmp(json_string_value(json_object_get(dj, "name")), name))
            return json_string_value(json_object_get(dj, "state"));
    }
    return "missing";
}

/* vdipoold is SIGKILLed at random moments while it clones, starts and ends
 * desktops, reloads and rolls out a gold, and libvirtd is killed once; after
 * every restart no session is lost, nothing leaks, the golds are unchanged. */
START_TEST(sigkill_chaos)
{
    /* libvirt goes away on purpose: an end tried meanwhile fails and is
     * retried once it is back. */
    D.end_failures_expected = true;
    const char *src = getenv("VDI_SOURCE_DIR");
    ck_assert_ptr_nonnull(src);
    char *hash_a = strdup(th_hash(D.gold)), *hash_b = strdup(th_hash(gold_b));
    unsigned size = 4;
    bool use_b = false;
    write_config(true, size, 2, use_b);
    th_daemon_start(&D);
    json_decref(wait_converged(90));
    struct {
        char name[96], user[32];
    } held[8];
    unsigned nheld = 0, users = 0;
    srand(7);
    const unsigned rounds = 10;
    for (unsigned round = 0; round < rounds; round++) {
        switch (round % 4) {
        case 0: /* a user arrives: clones and starts follow */
            if (nheld < 3) {
                char body[64];
                snprintf(held[nheld].user, sizeof held[nheld].user, "c%u", users++);
                snprintf(body, sizeof body, "{\"user\": \"%s\"}", held[nheld].user);
                json_t *a = NULL;
                if (th_http(&D, "POST", "/v1/pools/demo/acquire", body, &a) == 200)
                    snprintf(held[nheld++].name, sizeof held[0].name, "%s",
                             json_string_value(json_object_get(a, "desktop")));
                json_decref(a);
            }
            break;
        case 1: /* a user leaves: an end (destroy, delete) follows */
            if (nheld) {
                char path[256];
                snprintf(path, sizeof path, "/v1/desktops/%s/release", held[nheld - 1].name);
                json_t *r = NULL;
                ck_assert_int_eq(th_http(&D, "POST", path, NULL, &r), 200);
                json_decref(r);
                nheld--;
            }
            break;
        case 2: /* a reload that resizes */
            size = size == 4 ? 5 : 4;
            write_config(true, size, 2, use_b);
            ck_assert_int_eq(kill(D.pid, SIGHUP), 0);
            break;
        case 3: /* a roll-out to the other gold */
            use_b = !use_b;
            write_config(true, size, 2, use_b);
            ck_assert_int_eq(kill(D.pid, SIGHUP), 0);
            break;
        }
        usleep((useconds_t)(rand() % 1200) * 1000); /* mid-clone, mid-start, mid-end */
        ck_assert_int_eq(kill(D.pid, SIGKILL), 0);
        waitpid(D.pid, NULL, 0);
        D.pid = 0;
        if (round == rounds / 2) {
            th_run(NULL, "pkill -x libvirtd"); /* QEMU keeps running */
            free(th_must("bash %s/deploy/setup.sh", src));
        }
        th_daemon_start(&D);
        json_t *pool = wait_converged(120);
        /* Every session still held is assigned to its user: none was lost. */
        for (unsigned k = 0; k < nheld; k++) {
            const char *st = state_of(pool, held[k].name);
            ck_assert_msg(!strcmp(st, "assigned"), "round %u: %s's desktop %s is %s", round,
                          held[k].user, held[k].name, st);
            json_t *d = th_get_desktop(&D, held[k].name);
            ck_assert_str_eq(json_string_value(json_object_get(d, "user")), held[k].user);
            json_decref(d);
        }
        check_consistent(pool);
        json_decref(pool);
        ck_assert_str_eq(th_hash(D.gold), hash_a);
        ck_assert_str_eq(th_hash(gold_b), hash_b);
    }
    free(hash_a);
    free(hash_b);
    char *summary = NULL;
    th_run(&summary,
           "cd %s && echo \"chaos: $(grep -c event=recovered vdipoold.log) recoveries of "
           "interrupted clones/deletes, $(grep -c event=stray-child-removed vdipoold.log) "
           "stray children removed, $(grep -c event=adopted vdipoold.log) desktops adopted "
           "after $(grep -c event=started vdipoold.log) starts\"",
           D.dir);
    fprintf(stderr, "%s", summary ? summary : "");
    free(summary);
    ck_assert_int_eq(th_daemon_stop(&D), 0);
}
END_TEST

TH_MAIN("stress",
        {"qemu", setup, teardown, 400, {reload_churn_with_libvirtd_loss, sigkill_chaos, NULL}})
