/* test_controller.c — the pool controller and the desktop state machine in
 * process, with fake desktop_ops and a fake clock: no daemon, no HTTP, no
 * libvirt, no threads. Each transition of desktop.c's table, failure and
 * back-off included, is driven and checked here. */
#include "daemon.h"
#include "helpers.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- fakes ------------------------------------------------------------------ */

typedef enum {
    CALL_CLONE,
    CALL_START,
    CALL_END,
    CALL_RESUME,
    CALL_AGENT,
    CALL_USERS,
    CALL_ADOPT_CHECK
} call_kind;
typedef struct call {
    call_kind kind;
    desktop *d;
} call;

static call calls[256];
static size_t ncalls;
static int64_t fake_now = 1000000;

static void record(call_kind k, desktop *d)
{
    ck_assert_uint_lt(ncalls, 256);
    ck_assert_msg(!d->busy, "a job was asked for a busy desktop %s", d->name);
    d->busy = true; /* as the real jobs do while they run */
    calls[ncalls++] = (call){k, d};
}

static void fake_clone(desktop *d)
{
    record(CALL_CLONE, d);
}
static void fake_start(desktop *d)
{
    record(CALL_START, d);
}
static void fake_end(desktop *d)
{
    record(CALL_END, d);
}
static void fake_resume(desktop *d)
{
    record(CALL_RESUME, d);
}
static uint64_t budget_checked;
static void fake_budget(desktop *d, uint64_t threshold)
{
    (void)d;
    budget_checked = threshold;
}
static int64_t fake_clock(void)
{
    return fake_now;
}
static void fake_agent_check(desktop *d)
{
    record(CALL_AGENT, d);
}
/* Not busy, as the real users read. */
static void fake_read_users(desktop *d)
{
    ck_assert_uint_lt(ncalls, 256);
    calls[ncalls++] = (call){CALL_USERS, d};
}

static void fake_adopt_check(desktop *d)
{
    record(CALL_ADOPT_CHECK, d);
}

static const desktop_ops fake_ops = {fake_clone,       fake_start,      fake_end,
                                     fake_resume,      fake_budget,     fake_clock,
                                     fake_agent_check, fake_read_users, fake_adopt_check};

static size_t count(call_kind k)
{
    size_t n = 0;
    for (size_t i = 0; i < ncalls; i++)
        n += calls[i].kind == k;
    return n;
}

/* Takes the oldest pending call of kind k (its desktop is no longer busy). */
static desktop *take(call_kind k)
{
    for (size_t i = 0; i < ncalls; i++)
        if (calls[i].kind == k) {
            desktop *d = calls[i].d;
            memmove(&calls[i], &calls[i + 1], (ncalls - i - 1) * sizeof *calls);
            ncalls--;
            d->busy = false;
            return d;
        }
    ck_abort_msg("no pending call of kind %d", (int)k);
    return NULL;
}

/* ---- a service with one pool --------------------------------------------------- */

static service S;
static char *dir;

static vdi_config *config_text(const char *pool_extra, unsigned size, unsigned spares,
                               const char *gold)
{
    char text[4096];
    snprintf(text, sizeof text,
             "service = { socket = \"%s/sock\"; state_dir = \"%s/state\"; "
             "libvirt_uri = \"test:///default\"; max_parallel_clones = 2; "
             "max_parallel_starts = 2; };\n"
             "datastores = ( { name = \"local\"; path = \"%s\"; } );\n"
             "golds = ( { name = \"g\"; path = \"%s\"; } );\n"
             "pools = ( { name = \"demo\"; desktop_prefix = \"t\"; gold = \"g\"; "
             "datastore = \"local\"; size = %u; spares = %u; %s } );\n",
             dir, dir, dir, gold, size, spares, pool_extra ? pool_extra : "");
    vdi_config_options o = {.skip_filesystem_checks = true};
    vdi_config *c = NULL;
    vdi_config_errors *errs = NULL;
    int rc = vdi_config_parse_string(text, "test.conf", &o, &c, &errs);
    ck_assert_msg(rc == 0, "config: %s", errs ? vdi_config_errors_get(errs, 0)->message : "?");
    return c;
}

static pool *P;

static void start_service(const char *extra, unsigned size, unsigned spares)
{
    dir = th_tempdir("controller");
    memset(&S, 0, sizeof S);
    ncalls = 0;
    vdi_catalog *cat = NULL;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_catalog_open(th_path(dir, "state"), &cat, &err), 0);
    ck_assert_int_eq(service_init(&S, uv_default_loop(), "test.conf",
                                  config_text(extra, size, spares, "/nonexistent/gold-a.qcow2"),
                                  cat, &fake_ops),
                     0);
    hosts_set_online(&S, true);
    P = service_find_pool(&S, "demo");
    ck_assert_ptr_nonnull(P);
}

static void stop_service(void)
{
    vdi_catalog *cat = S.catalog;
    service_shutdown(&S);
    vdi_catalog_close(cat);
    th_tempdir_remove(dir);
}

static unsigned in_state(desktop_state s)
{
    unsigned n = 0;
    for (unsigned i = 0; i < P->nslots; i++)
        n += P->desktops[i]->state == s;
    return n;
}

/* Drives every pending clone and start to success. */
static void make_ready(void)
{
    for (int round = 0; round < 10; round++) {
        service_converge(&S);
        if (!ncalls)
            return;
        while (count(CALL_CLONE))
            desktop_cloned(take(CALL_CLONE), 0, false, NULL, 0.01);
        service_converge(&S);
        while (count(CALL_START))
            desktop_started(take(CALL_START), 0, NULL, "vnc://127.0.0.1:5900", 0.1);
    }
}

static void on_acquired_status(void *ctx, int status, json_t *body)
{
    *(int *)ctx = status;
    json_decref(body);
}

/* ---- tests --------------------------------------------------------------------- */

START_TEST(spares_are_cloned_started_and_ready)
{
    start_service(NULL, 4, 2);
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_CLONE), 2); /* spares, within max_parallel_clones */
    ck_assert_uint_eq(in_state(DESKTOP_CLONING), 2);
    desktop *d = take(CALL_CLONE);
    desktop_cloned(d, 0, false, NULL, 0.01);
    ck_assert_int_eq(d->state, DESKTOP_STARTING);
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_START), 1);
    desktop_started(take(CALL_START), 0, NULL, "vnc://127.0.0.1:5901", 0.2);
    ck_assert_int_eq(d->state, DESKTOP_READY);
    ck_assert_str_eq(d->display, "vnc://127.0.0.1:5901");
    make_ready();
    ck_assert_uint_eq(in_state(DESKTOP_READY), 2);
    /* Steady: nothing more is asked. */
    service_converge(&S);
    ck_assert_uint_eq(ncalls, 0);
    ck_assert_uint_eq(S.clone_latency.count, 2);
    stop_service();
}
END_TEST

START_TEST(clone_failure_backs_off_and_retries)
{
    start_service(NULL, 1, 1);
    service_converge(&S);
    desktop *d = take(CALL_CLONE);
    desktop_cloned(d, -EIO, false, "disk on fire", 0);
    ck_assert_int_eq(d->state, DESKTOP_FAILED);
    ck_assert_str_eq(d->failure, "disk on fire");
    fake_now += 4;
    service_converge(&S);
    ck_assert_int_eq(d->state, DESKTOP_FAILED); /* 5 s back-off */
    ck_assert_uint_eq(ncalls, 0);
    fake_now += 1;
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_CLONE), 1); /* failed -> empty -> cloning */
    desktop_cloned(take(CALL_CLONE), -EIO, false, "again", 0);
    fake_now += 9;
    service_converge(&S);
    ck_assert_int_eq(d->state, DESKTOP_FAILED); /* the second back-off is 10 s */
    fake_now += 1;
    make_ready();
    ck_assert_int_eq(d->state, DESKTOP_READY);
    ck_assert_uint_eq(d->failures, 0);
    stop_service();
}
END_TEST

START_TEST(blocked_pool_probes_one_at_a_time)
{
    start_service(NULL, 4, 3);
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_CLONE), 2);
    desktop_cloned(take(CALL_CLONE), -ENOSPC, true, "datastore full", 0);
    desktop_cloned(take(CALL_CLONE), -ENOSPC, true, "datastore full", 0);
    ck_assert_str_eq(P->blocked, "datastore full");
    ck_assert_uint_eq(in_state(DESKTOP_EMPTY), 4); /* the slot reads empty, not cloning */
    /* No busy loop: steps while the back-off runs ask for nothing. */
    for (int i = 0; i < 1000; i++)
        service_converge(&S);
    ck_assert_uint_eq(ncalls, 0);
    fake_now += 2; /* 1 s, then 2 s after the second refusal */
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_CLONE), 1); /* one probe while blocked */
    desktop_cloned(take(CALL_CLONE), -ENOSPC, true, "datastore full", 0);
    fake_now += 3;
    service_converge(&S);
    ck_assert_uint_eq(ncalls, 0); /* now 4 s */
    fake_now += 1;
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_CLONE), 1);
    desktop_cloned(take(CALL_CLONE), 0, false, NULL, 0.01);
    ck_assert_ptr_null(P->blocked); /* a success unblocks */
    make_ready();
    ck_assert_uint_eq(in_state(DESKTOP_READY), 3);
    stop_service();
}
END_TEST

START_TEST(freed_space_ends_the_wait)
{
    start_service(NULL, 3, 2);
    make_ready();
    int status = 0;
    service_acquire(&S, "demo", "ann", on_acquired_status, &status);
    ck_assert_int_eq(status, 200);
    service_converge(&S);
    desktop_cloned(take(CALL_CLONE), -ENOSPC, true, "datastore full", 0);
    service_converge(&S);
    ck_assert_uint_eq(ncalls, 0);
    /* A session ends: its child is deleted, so the pool looks again at once. */
    for (unsigned i = 0; i < P->nslots; i++)
        if (P->desktops[i]->state == DESKTOP_ASSIGNED)
            session_end(P->desktops[i], END_RELEASED);
    desktop_ended(take(CALL_END), 0, NULL);
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_CLONE), 1);
    stop_service();
}
END_TEST

START_TEST(failed_start_ends_then_fails)
{
    start_service(NULL, 1, 1);
    service_converge(&S);
    desktop *d = take(CALL_CLONE);
    desktop_cloned(d, 0, false, NULL, 0.01);
    service_converge(&S);
    desktop_started(take(CALL_START), -EIO, "cannot start the domain: no", NULL, 0);
    ck_assert_int_eq(d->state, DESKTOP_ENDING); /* its child and domain go first */
    ck_assert_uint_eq(count(CALL_END), 1);
    desktop_ended(take(CALL_END), 0, NULL);
    ck_assert_int_eq(d->state, DESKTOP_FAILED);
    ck_assert_str_eq(d->failure, "cannot start the domain: no");
    stop_service();
}
END_TEST

/* A worker frees its start's slot once the domain exists, from its own
 * thread (startslots.c). */
static void *release_slot(void *arg)
{
    start_slot_release(arg);
    return NULL;
}

START_TEST(start_slot_is_freed_once_the_domain_exists)
{
    start_service(NULL, 4, 4); /* max_parallel_starts = 2 */
    ck_assert_int_eq(start_slots_start(&S), 0);
    for (int i = 0; i < 2; i++) {
        service_converge(&S);
        while (count(CALL_CLONE))
            desktop_cloned(take(CALL_CLONE), 0, false, NULL, 0.01);
    }
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_START), 2);
    ck_assert_uint_eq(in_state(DESKTOP_STARTING), 4); /* two wait for a slot */
    ck_assert_uint_eq(start_slots_busy(&S), 2);
    /* The first start's domain exists: its worker frees the slot and wakes
     * the loop, whose step starts a waiting desktop. */
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, release_slot, S.start_slots), 0);
    pthread_join(t, NULL);
    uv_run(S.loop, UV_RUN_NOWAIT);
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_START), 3);
    ck_assert_uint_eq(S.starts_running, 3);
    ck_assert_uint_eq(start_slots_busy(&S), 2);
    /* Its result: the slot is not freed twice. */
    desktop *first = take(CALL_START);
    start_slot_returned(&S); /* job_done, before the result is delivered */
    desktop_started(first, 0, NULL, NULL, 0.1);
    ck_assert_int_eq(first->state, DESKTOP_READY);
    ck_assert_uint_eq(start_slots_busy(&S), 2);
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_START), 2); /* the fourth still waits */
    /* A start that ends without freeing its slot early frees it with its
     * result. */
    desktop_started(take(CALL_START), 0, NULL, NULL, 0.1);
    ck_assert_uint_eq(start_slots_busy(&S), 1);
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_START), 2);
    make_ready();
    ck_assert_uint_eq(in_state(DESKTOP_READY), 4);
    ck_assert_uint_eq(S.starts_running, 0);
    ck_assert_uint_eq(S.starts_freed, 0);
    start_slots_stop(&S);
    uv_run(S.loop, UV_RUN_NOWAIT); /* the handle closes */
    start_slots_free(&S);
    stop_service();
}
END_TEST

/* A gold's scrub reads all of it: it waits while the pools fill, and not
 * past SCRUB_MAX_WAIT_S. */
START_TEST(scrub_waits_while_pools_fill)
{
    start_service(NULL, 4, 2);
    service_converge(&S);
    ck_assert_uint_eq(S.clones_running, 2);
    scrub_step(&S); /* due at once after start-up, but two clones run */
    ck_assert(!S.scrubbing);
    fake_now += SCRUB_MAX_WAIT_S - 1;
    scrub_step(&S);
    ck_assert(!S.scrubbing);
    fake_now += 1; /* a pool that never stops refilling is still scrubbed */
    scrub_step(&S);
    ck_assert(S.scrubbing);
    ck_assert_int_eq(S.scrub_waiting_since, 0);
    while (S.scrubbing)
        uv_run(S.loop, UV_RUN_ONCE);
    /* Its next turn comes with the pools full and nothing in flight: at once. */
    make_ready();
    ck_assert_uint_eq(S.clones_running + S.starts_running, 0);
    fake_now += 6 * 3600;
    scrub_step(&S);
    ck_assert(S.scrubbing);
    while (S.scrubbing)
        uv_run(S.loop, UV_RUN_ONCE);
    stop_service();
}
END_TEST

START_TEST(failed_end_is_retried)
{
    start_service(NULL, 1, 1);
    make_ready();
    desktop *d = P->desktops[0];
    session_end(d, END_OPERATOR);
    ck_assert_int_eq(d->state, DESKTOP_ENDING);
    desktop_ended(take(CALL_END), -ENOTCONN, "not connected to libvirt");
    ck_assert_int_eq(d->state, DESKTOP_ENDING); /* never empty while the domain may run */
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_END), 0);
    fake_now += 5;
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_END), 1);
    desktop_ended(take(CALL_END), 0, NULL);
    ck_assert_int_eq(d->state, DESKTOP_EMPTY);
    stop_service();
}
END_TEST

static void on_acquired(void *ctx, int status, json_t *body)
{
    *(int *)ctx = status;
    json_decref(body);
}

START_TEST(session_time_limit_and_idle_spares)
{
    start_service("session = { max_duration = \"1h\"; idle_spare_max_age = \"10m\"; };", 2, 1);
    make_ready();
    int status = 0;
    service_acquire(&S, "demo", "alice", on_acquired, &status);
    ck_assert_int_eq(status, 200);
    desktop *a = NULL;
    for (unsigned i = 0; i < P->nslots; i++)
        if (P->desktops[i]->state == DESKTOP_ASSIGNED)
            a = P->desktops[i];
    ck_assert_ptr_nonnull(a);
    ck_assert_str_eq(a->user, "alice");
    ck_assert_int_gt(a->session_id, 0);
    make_ready(); /* the spare is refilled */
    ck_assert_uint_eq(in_state(DESKTOP_READY), 1);
    /* The spare is recycled after 10 minutes, the session after an hour. */
    fake_now += 601;
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_END), 1);
    desktop *spare = take(CALL_END);
    ck_assert_int_eq(spare->end_reason, END_OTHER);
    desktop_ended(spare, 0, NULL);
    make_ready();
    fake_now += 3000;
    service_converge(&S);
    desktop *ended = NULL;
    for (size_t i = 0; i < ncalls; i++)
        if (calls[i].kind == CALL_END && calls[i].d == a)
            ended = a;
    ck_assert_ptr_nonnull(ended);
    ck_assert_int_eq(a->end_reason, END_MAX_DURATION);
    stop_service();
}
END_TEST

START_TEST(reload_rolls_out_shrinks_and_drains)
{
    start_service(NULL, 3, 3);
    make_ready();
    ck_assert_uint_eq(in_state(DESKTOP_READY), 3);
    desktop *first = P->desktops[0];
    int status = 0;
    service_acquire(&S, "demo", "bob", on_acquired, &status);
    ck_assert_int_eq(status, 200);
    /* A new gold and a smaller pool: ready desktops are replaced or ended,
     * the assigned one keeps its session. */
    ck_assert_int_eq(service_apply_config(&S, config_text(NULL, 2, 1, "/nonexistent/b.qcow2")), 0);
    ck_assert_ptr_eq(P->desktops[0], first); /* desktops stay where they were */
    service_converge(&S);
    ck_assert_uint_eq(in_state(DESKTOP_ASSIGNED), 1);
    ck_assert_uint_eq(in_state(DESKTOP_READY), 0);
    while (count(CALL_END))
        desktop_ended(take(CALL_END), 0, NULL);
    make_ready();
    for (unsigned i = 0; i < P->nslots; i++)
        if (P->desktops[i]->state == DESKTOP_READY)
            ck_assert_str_eq(P->desktops[i]->gold, "/nonexistent/b.qcow2");
    ck_assert_uint_eq(in_state(DESKTOP_ASSIGNED) + in_state(DESKTOP_READY), 2);
    /* Growing again while a job runs leaves the running job's desktop in place. */
    desktop *ending = NULL;
    for (unsigned i = 0; i < P->nslots && !ending; i++)
        if (P->desktops[i]->state == DESKTOP_READY)
            ending = P->desktops[i];
    ck_assert_ptr_nonnull(ending);
    session_end(ending, END_OPERATOR);
    ck_assert_uint_eq(count(CALL_END), 1);
    ck_assert_int_eq(service_apply_config(&S, config_text(NULL, 40, 1, "/nonexistent/b.qcow2")), 0);
    ck_assert_uint_eq(P->nslots, 40);
    desktop_ended(take(CALL_END), 0, NULL);
    ck_assert_int_eq(ending->state, DESKTOP_EMPTY);
    /* A config without the pool: it drains, then goes. */
    char text[1024];
    snprintf(text, sizeof text,
             "service = { socket = \"%s/sock\"; state_dir = \"%s/state\"; "
             "libvirt_uri = \"test:///default\"; };\ndatastores = ( { name = \"local\"; "
             "path = \"%s\"; } );\n",
             dir, dir, dir);
    vdi_config_options o = {.skip_filesystem_checks = true};
    vdi_config *empty = NULL;
    vdi_config_errors *errs = NULL;
    ck_assert_int_eq(vdi_config_parse_string(text, "t.conf", &o, &empty, &errs), 0);
    ck_assert_int_eq(service_apply_config(&S, empty), 0);
    ck_assert(P->draining);
    service_converge(&S);
    while (count(CALL_END) || count(CALL_CLONE) || count(CALL_START)) {
        while (count(CALL_CLONE))
            desktop_cloned(take(CALL_CLONE), 0, false, NULL, 0);
        while (count(CALL_START))
            desktop_started(take(CALL_START), 0, NULL, NULL, 0);
        while (count(CALL_END))
            desktop_ended(take(CALL_END), 0, NULL);
        service_converge(&S);
    }
    ck_assert_uint_eq(S.npools, 1); /* bob's session still runs */
    for (unsigned i = 0; i < P->nslots; i++)
        if (P->desktops[i]->state == DESKTOP_ASSIGNED)
            session_end(P->desktops[i], END_RELEASED);
    desktop_ended(take(CALL_END), 0, NULL);
    service_converge(&S);
    ck_assert_uint_eq(S.npools, 0);
    ck_assert_uint_eq(ncalls, 0);
    stop_service();
}
END_TEST

START_TEST(offline_pool_starts_nothing)
{
    start_service(NULL, 2, 2);
    hosts_set_online(&S, false);
    service_converge(&S);
    ck_assert_uint_eq(ncalls, 0);
    hosts_set_online(&S, true);
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_CLONE), 2);
    stop_service();
}
END_TEST

static desktop *in(desktop_state st)
{
    for (unsigned i = 0; i < P->nslots; i++)
        if (P->desktops[i]->state == st)
            return P->desktops[i];
    return NULL;
}

/* Slot `slot` as adoption leaves a desktop whose domain libvirt still
 * works on (adopt.c hold_for_libvirt): adopting, on the host, its check due. */
static desktop *held(unsigned slot)
{
    desktop *d = P->desktops[slot - 1];
    desktop_name_slot(d);
    set_str(&d->child, "/nonexistent/held.qcow2");
    set_str(&d->gold, "/nonexistent/gold-a.qcow2");
    desktop_set_host(d, S.hosts[0]);
    d->retry_at = 0;
    desktop_set_state(d, DESKTOP_ADOPTING);
    return d;
}

/* The stray check an adoption starts (a walk of the catalog on a worker)
 * is done before the catalog is closed. */
static void wait_for_stray_check(void)
{
    while (S.checking_strays)
        uv_run(uv_default_loop(), UV_RUN_ONCE);
}

/* A domain as adoption describes it. */
static json_t *described(bool active, bool in_job, const char *paused)
{
    return json_pack("{s:b,s:b,s:s,s:s,s:s,s:i,s:s?}", "active", active, "in_job", in_job, "child",
                     "/nonexistent/held.qcow2", "gold", "/nonexistent/gold-a.qcow2", "display",
                     "vnc://127.0.0.1:5900", "agent", (int)AGENT_UNKNOWN, "paused", paused);
}

/* Host h answers again and its listing has d's domain, libvirt still at
 * work on it (paused, starting up) or done (running); the listing is
 * matched and the stray check it starts has finished. */
static void host_relists(host *h, const desktop *d, bool in_job)
{
    h->online = true;
    json_t *dom = described(true, in_job, in_job ? "paused outside vdipool" : NULL);
    json_object_set_new(dom, "name", json_string(d->name));
    adopt_listing(h, json_pack("[o]", dom));
    wait_for_stray_check();
}

/* A desktop held while libvirt works on its domain takes its slot and
 * counts as a coming spare (so only one more is cloned), is asked about
 * again on its own schedule, and is adopted as its domain is once libvirt
 * is done: running -> ready; a stop seen while its check ran -> ended;
 * still at work past service.adopt_wait -> adopted as it is (paused). */
START_TEST(held_desktops_wait_for_libvirt)
{
    start_service(NULL, 3, 2);
    desktop *d = held(1);
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_CLONE), 1); /* 2 spares wanted, the held one coming */
    ck_assert_uint_eq(count(CALL_ADOPT_CHECK), 1);
    ck_assert_ptr_eq(take(CALL_ADOPT_CHECK), d);

    /* Still at work: held, asked again a second later, not before. */
    json_t *dom = described(true, true, "paused outside vdipool");
    adopt_checked(d, 0, NULL, dom);
    ck_assert_int_eq(d->state, DESKTOP_ADOPTING);
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_ADOPT_CHECK), 0);
    /* A failed check holds it too. */
    fake_now += 1;
    service_converge(&S);
    ck_assert_ptr_eq(take(CALL_ADOPT_CHECK), d);
    adopt_checked(d, -EIO, "libvirt said no", NULL);
    ck_assert_int_eq(d->state, DESKTOP_ADOPTING);
    /* Done: the domain runs, the desktop is a ready spare as it is. */
    fake_now += 1;
    service_converge(&S);
    ck_assert_ptr_eq(take(CALL_ADOPT_CHECK), d);
    json_decref(dom);
    dom = described(true, false, NULL);
    adopt_checked(d, 0, NULL, dom);
    ck_assert_int_eq(d->state, DESKTOP_READY);
    ck_assert_str_eq(d->display, "vnc://127.0.0.1:5900");
    json_decref(dom);
    make_ready();
    ck_assert_uint_eq(in_state(DESKTOP_READY), 2);
    ck_assert_uint_eq(count(CALL_END), 0);
    stop_service();

    /* Stopped while its check ran (the check saw it run): ended. */
    start_service(NULL, 3, 2);
    d = held(1);
    service_converge(&S);
    ck_assert_ptr_eq(take(CALL_ADOPT_CHECK), d);
    d->busy = true; /* its check still runs when the event comes */
    service_on_domain_event(S.hosts[0], d->name, VIR_DOMAIN_EVENT_STOPPED, 0);
    d->busy = false;
    dom = described(true, false, NULL);
    adopt_checked(d, 0, NULL, dom);
    json_decref(dom);
    ck_assert_int_eq(d->state, DESKTOP_ENDING);
    ck_assert_ptr_eq(take(CALL_END), d);
    stop_service();

    /* Still at work after service.adopt_wait (2m): adopted as it is. */
    start_service(NULL, 3, 2);
    d = held(1);
    service_converge(&S);
    ck_assert_ptr_eq(take(CALL_ADOPT_CHECK), d);
    fake_now += 121;
    dom = described(true, true, "paused outside vdipool");
    adopt_checked(d, 0, NULL, dom);
    json_decref(dom);
    ck_assert_int_eq(d->state, DESKTOP_PAUSED);
    stop_service();

    /* Its host's connection lost for longer than adopt_wait: not asked
     * meanwhile; when the host is listed again and libvirt still works on
     * the domain, the wait starts again (nothing was learnt while the host
     * did not answer); once libvirt is done, the listing adopts it. */
    start_service(NULL, 3, 2);
    d = held(1);
    host *h = S.hosts[0];
    host_on_disconnected(h);
    ck_assert_int_eq(d->state, DESKTOP_ADOPTING);
    fake_now += 600;
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_ADOPT_CHECK), 0);
    host_relists(h, d, true);
    ck_assert(host_usable(h));
    ck_assert_int_eq(d->state, DESKTOP_ADOPTING);
    ck_assert_int_eq(d->state_since, fake_now);
    fake_now += 1;
    service_converge(&S);
    ck_assert_ptr_eq(take(CALL_ADOPT_CHECK), d);
    dom = described(true, true, "paused outside vdipool");
    adopt_checked(d, 0, NULL, dom); /* 1 s into its new wait: held on */
    json_decref(dom);
    ck_assert_int_eq(d->state, DESKTOP_ADOPTING);
    /* Lost while its check was out; listed again long after: the check's
     * answer (a failure: the connection went) holds it, and the next check
     * finds libvirt still at work within the new wait. */
    host_on_disconnected(h);
    fake_now += 600;
    d->busy = true;
    host_relists(h, d, true);
    ck_assert_int_eq(d->state_since, fake_now);
    d->busy = false;
    adopt_checked(d, -ENOTCONN, "not connected", NULL);
    ck_assert_int_eq(d->state, DESKTOP_ADOPTING);
    fake_now += 2;
    service_converge(&S);
    ck_assert_ptr_eq(take(CALL_ADOPT_CHECK), d);
    dom = described(true, true, "paused outside vdipool");
    adopt_checked(d, 0, NULL, dom);
    json_decref(dom);
    ck_assert_int_eq(d->state, DESKTOP_ADOPTING);
    /* Lost again; listed again with libvirt done: adopted as it runs. */
    host_on_disconnected(h);
    host_relists(h, d, false);
    ck_assert_int_eq(d->state, DESKTOP_READY);
    ck_assert_str_eq(d->display, "vnc://127.0.0.1:5900");
    stop_service();
}
END_TEST

START_TEST(paused_desktops)
{
    start_service("session = { paused_timeout = \"10m\"; };", 3, 2);
    make_ready();
    int status = 0;
    service_acquire(&S, "demo", "pam", on_acquired_status, &status);
    ck_assert_int_eq(status, 200);
    make_ready();
    desktop *user = in(DESKTOP_ASSIGNED);
    ck_assert_uint_eq(in_state(DESKTOP_READY), 2);
    /* The user's guest fills the datastore: paused, never handed out. */
    desktop_paused(user, "no space");
    ck_assert_int_eq(user->state, DESKTOP_PAUSED);
    ck_assert(desktop_paused_for_space(user));
    status = 0;
    service_acquire(&S, "demo", "pam", on_acquired_status, &status);
    ck_assert_int_eq(status, 200); /* another desktop; the paused one stays hers */
    desktop *other = in(DESKTOP_ASSIGNED);
    ck_assert_ptr_ne(other, user);
    ck_assert_str_eq(user->user, "pam");
    /* Space is reclaimed from ready spares first, newest first; no new spares. */
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_END), 1);
    ck_assert_uint_eq(count(CALL_CLONE), 0);
    ck_assert_uint_eq(count(CALL_RESUME), 0);
    desktop_ended(take(CALL_END), 0, NULL);
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_CLONE), 0);
    ck_assert_uint_eq(count(CALL_RESUME), 1); /* then the guest is resumed */
    desktop_resume_tried(take(CALL_RESUME), -ENOSPC, "1 MiB free, 2 GiB needed");
    ck_assert_int_eq(user->state, DESKTOP_PAUSED);
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_RESUME), 0); /* not before 2 s */
    fake_now += 2;
    service_converge(&S);
    desktop_resume_tried(take(CALL_RESUME), 0, NULL);
    ck_assert_int_eq(user->state, DESKTOP_ASSIGNED);
    ck_assert_ptr_null(user->pause_reason);
    make_ready(); /* spares come back */
    ck_assert_uint_eq(in_state(DESKTOP_READY), 1);
    /* Paused past paused_timeout: the session ends with reason no-space. */
    desktop_paused(user, "no space");
    fake_now += 599;
    service_converge(&S);
    while (count(CALL_END))
        desktop_ended(take(CALL_END), 0, NULL);
    while (count(CALL_RESUME))
        desktop_resume_tried(take(CALL_RESUME), -ENOSPC, "full");
    ck_assert_int_eq(user->state, DESKTOP_PAUSED);
    fake_now += 2;
    service_converge(&S);
    ck_assert_int_eq(user->state, DESKTOP_ENDING);
    ck_assert_int_eq(user->end_reason, END_NO_SPACE);
    desktop_ended(take(CALL_END), 0, NULL);
    ck_assert_uint_eq(P->sessions_ended[END_NO_SPACE], 1);
    /* A spare that paused on its own is ended, not resumed. */
    make_ready();
    desktop *spare = in(DESKTOP_READY);
    desktop_paused(spare, "no space");
    service_converge(&S);
    ck_assert_int_eq(spare->state, DESKTOP_ENDING);
    stop_service();
}
END_TEST

START_TEST(desktops_found_by_name)
{
    start_service(NULL, 12, 0);
    ck_assert_ptr_eq(service_find_desktop(&S, "t-007"), P->desktops[6]);
    ck_assert_ptr_eq(service_find_desktop(&S, "t-012"), P->desktops[11]);
    const char *absent[] = {"t-7", "t-000", "t-013", "t-", "t-007x", "x-001", "t007", ""};
    for (size_t i = 0; i < sizeof absent / sizeof *absent; i++)
        ck_assert_msg(!service_find_desktop(&S, absent[i]), "%s found", absent[i]);
    /* Named before a reload changed the prefix: still found. */
    desktop *d = P->desktops[2];
    free(d->name);
    d->name = strdup("old-003");
    ck_assert_ptr_eq(service_find_desktop(&S, "old-003"), d);
    ck_assert_ptr_null(service_find_desktop(&S, "t-003"));
    stop_service();
}
END_TEST

/* An acquire finds the user's desktop through the pool's index of assigned
 * desktops by user, also when a restart found one user with two sessions,
 * as the sessions come and go. */
START_TEST(assigned_desktops_found_by_user)
{
    start_service(NULL, 4, 0);
    desktop **d = P->desktops;
    desktop_adopt(d[0], "/c/1", "/g", NULL, AGENT_UNKNOWN, 11, "ann", 1);
    desktop_adopt(d[1], "/c/2", "/g", NULL, AGENT_UNKNOWN, 12, "bob", 1);
    desktop_adopt(d[2], "/c/3", "/g", NULL, AGENT_UNKNOWN, 13, "ann", 1); /* two sessions */
    desktop_adopt(d[3], "/c/4", "/g", NULL, AGENT_UNKNOWN, 0, NULL, 0);   /* a spare */
    ck_assert_ptr_eq(pool_assigned_to(P, "bob"), d[1]);
    ck_assert_ptr_eq(pool_assigned_to(P, "ann"), d[0]);
    ck_assert_ptr_null(pool_assigned_to(P, "cy"));
    ck_assert_uint_eq(P->user_clashes, 1);
    /* ann's indexed desktop ends: her other one takes its place. */
    session_end(d[0], END_RELEASED);
    ck_assert_ptr_eq(pool_assigned_to(P, "ann"), d[2]);
    ck_assert_uint_eq(P->user_clashes, 0);
    session_end(d[2], END_RELEASED);
    ck_assert_ptr_null(pool_assigned_to(P, "ann"));
    /* Served from the index: the same user asking again gets the same desktop. */
    int status = 0;
    service_acquire(&S, "demo", "bob", on_acquired_status, &status);
    ck_assert_int_eq(status, 200);
    ck_assert_ptr_eq(pool_assigned_to(P, "bob"), d[1]);
    ck_assert_uint_eq(in_state(DESKTOP_ASSIGNED), 1);
    /* A new user gets the spare, indexed under the new name. */
    service_acquire(&S, "demo", "cy", on_acquired_status, &status);
    ck_assert_int_eq(status, 200);
    ck_assert_ptr_eq(pool_assigned_to(P, "cy"), d[3]);
    stop_service();
}
END_TEST

/* Slots of a page of the pool's desktops, as "1,2,3". */
static void page_slots(unsigned offset, unsigned limit, unsigned mask, char *out, size_t len,
                       json_int_t *total)
{
    json_t *j = pool_json_page(P, true, offset, limit, mask);
    size_t k;
    json_t *one;
    out[0] = '\0';
    json_array_foreach(json_object_get(j, "desktops"), k, one)
        snprintf(out + strlen(out), len - strlen(out), "%s%lld", k ? "," : "",
                 (long long)json_integer_value(json_object_get(one, "slot")));
    *total = json_integer_value(json_object_get(j, "desktops_total"));
    json_decref(j);
}

/* A page filtered by state is read from the state lists (which keep the
 * order desktops changed state in) and still lists in slot order, so that
 * a broker paging through it sees each desktop once. */
START_TEST(filtered_pages_list_desktops_in_slot_order)
{
    start_service(NULL, 6, 0);
    desktop **d = P->desktops;
    desktop_adopt(d[3], "/c/4", "/g", NULL, AGENT_UNKNOWN, 14, "dan", 1);
    desktop_adopt(d[2], "/c/3", "/g", NULL, AGENT_UNKNOWN, 13, "cy", 1);
    desktop_adopt(d[1], "/c/2", "/g", NULL, AGENT_UNKNOWN, 0, NULL, 0);
    desktop_adopt(d[0], "/c/1", "/g", NULL, AGENT_UNKNOWN, 0, NULL, 0);
    unsigned busy = 1u << DESKTOP_ASSIGNED | 1u << DESKTOP_READY;
    char slots[64];
    json_int_t total = 0;
    page_slots(0, 0, busy, slots, sizeof slots, &total);
    ck_assert_str_eq(slots, "1,2,3,4");
    ck_assert_int_eq(total, 4);
    page_slots(1, 2, busy, slots, sizeof slots, &total);
    ck_assert_str_eq(slots, "2,3");
    ck_assert_int_eq(total, 4);
    page_slots(0, 0, 1u << DESKTOP_ASSIGNED, slots, sizeof slots, &total);
    ck_assert_str_eq(slots, "3,4");
    /* With empty slots asked for, every slot within size, in order. */
    page_slots(0, 0, busy | 1u << DESKTOP_EMPTY, slots, sizeof slots, &total);
    ck_assert_str_eq(slots, "1,2,3,4,5,6");
    page_slots(4, 0, 0, slots, sizeof slots, &total);
    ck_assert_str_eq(slots, "5,6");
    ck_assert_int_eq(total, 6);
    stop_service();
}
END_TEST

/* ---- the guest agent (agent.c) ------------------------------------------------- */

#define AGENT_POOL                                                                                 \
    "ready_when = \"agent\"; boot_timeout = \"60s\"; session = { logoff_grace = \"30s\"; "       \
    "login_timeout = \"5m\"; agent_lost_timeout = \"2m\"; };"

/* Cloned and started: the desktop boots, it is not ready. */
static desktop *start_one_booting(void)
{
    service_converge(&S);
    desktop *d = take(CALL_CLONE);
    desktop_cloned(d, 0, false, NULL, 0.01);
    service_converge(&S);
    desktop_started(take(CALL_START), 0, NULL, "vnc://127.0.0.1:5900", 0.1);
    ck_assert_int_eq(d->state, DESKTOP_BOOTING);
    return d;
}

static void users_idle_answer(desktop *d, const char *user, int64_t idle)
{
    json_t *users = user ? json_pack("[s]", user) : json_array();
    desktop_users_read(take(CALL_USERS), d->session_id, 0, users, idle);
}

static void users_answer(desktop *d, const char *user)
{
    users_idle_answer(d, user, -1);
}

START_TEST(agent_makes_ready_and_logoff_ends_the_session)
{
    start_service(AGENT_POOL, 2, 1);
    desktop *d = start_one_booting();
    ck_assert_uint_eq(count(CALL_AGENT), 0); /* nothing to ask before the agent connects */
    int status = 0;
    service_acquire(&S, "demo", "bob", on_acquired_status, &status);
    ck_assert_int_eq(status, 0); /* waits: a booting desktop is not handed out */
    /* The agent connects but does not answer yet: asked again after 2 s. */
    desktop_agent_changed(d, true);
    desktop_agent_checked(take(CALL_AGENT), -EAGAIN, "no answer yet", NULL);
    ck_assert_int_eq(d->state, DESKTOP_BOOTING);
    service_converge(&S);
    ck_assert_uint_eq(count(CALL_AGENT), 0);
    fake_now += 2;
    service_converge(&S);
    ck_assert_ptr_eq(take(CALL_AGENT), d);
    ck_assert_str_eq(d->hostname, "t-001"); /* the identity the job sets */
    d->start_mono -= 3.0;                   /* it took 3 s from start */
    desktop_agent_checked(d, 0, NULL, d->hostname);
    ck_assert_uint_eq(S.boot_latency.count, 1);
    ck_assert(d->boot_seconds >= 3.0);
    /* Ready: the waiting user gets it. */
    service_step(&S);
    ck_assert_int_eq(status, 200);
    ck_assert_int_eq(d->state, DESKTOP_ASSIGNED);
    /* The guest's users are read on a timer while assigned (every desktop
     * is looked at once per second). */
    fake_now += 1;
    service_converge(&S);
    users_answer(d, "bob");
    ck_assert(d->user_seen);
    json_t *j = desktop_json(d);
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(j, "logged_in_users"), 0)),
                     "bob");
    ck_assert_str_eq(json_string_value(json_object_get(j, "agent")), "connected");
    json_decref(j);
    fake_now += 5;
    service_converge(&S);
    users_answer(d, NULL); /* bob logged off */
    ck_assert_int_eq(d->logged_off_at, fake_now);
    fake_now += 29;
    service_converge(&S);
    ck_assert_int_eq(d->state, DESKTOP_ASSIGNED); /* within logoff_grace */
    while (count(CALL_USERS))
        users_answer(d, NULL);
    fake_now += 1;
    service_converge(&S);
    ck_assert_int_eq(d->state, DESKTOP_ENDING);
    ck_assert_int_eq(d->end_reason, END_LOGGED_OFF);
    while (count(CALL_USERS))
        users_answer(d, NULL); /* a late answer changes nothing */
    desktop_ended(take(CALL_END), 0, NULL);
    ck_assert_uint_eq(P->sessions_ended[END_LOGGED_OFF], 1);
    stop_service();
}
END_TEST

START_TEST(no_login_and_agent_lost_end_sessions)
{
    start_service(AGENT_POOL, 2, 2);
    desktop *a = start_one_booting();
    desktop *b = start_one_booting();
    desktop_agent_changed(a, true);
    desktop_agent_changed(b, true);
    desktop_agent_checked(take(CALL_AGENT), 0, NULL, NULL);
    desktop_agent_checked(take(CALL_AGENT), 0, NULL, NULL);
    int s1 = 0, s2 = 0;
    service_acquire(&S, "demo", "ann", on_acquired_status, &s1);
    service_acquire(&S, "demo", "cy", on_acquired_status, &s2);
    ck_assert_int_eq(s1 + s2, 400);
    /* Nobody logs in on a; b's agent goes away. */
    desktop_agent_changed(b, false);
    for (int t = 0; t < 300; t += 5) {
        fake_now += 5;
        service_converge(&S);
        while (count(CALL_USERS))
            users_answer(a, NULL);
    }
    ck_assert_int_eq(a->state, DESKTOP_ENDING);
    ck_assert_int_eq(a->end_reason, END_NO_LOGIN);
    ck_assert_int_eq(b->state, DESKTOP_ENDING);
    ck_assert_int_eq(b->end_reason, END_AGENT_LOST);
    stop_service();
}
END_TEST

START_TEST(idle_user_is_logged_off)
{
    start_service("ready_when = \"agent\"; session = { idle_logoff = \"10m\"; "
                  "idle_command = \"/usr/bin/idle-seconds\"; };",
                  1, 1);
    desktop *d = start_one_booting();
    desktop_agent_changed(d, true);
    desktop_agent_checked(take(CALL_AGENT), 0, NULL, NULL);
    int status = 0;
    service_acquire(&S, "demo", "dee", on_acquired_status, &status);
    ck_assert_int_eq(status, 200);
    fake_now += 1;
    service_converge(&S);
    users_idle_answer(d, "dee", 599);
    json_t *j = desktop_json(d);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "idle_seconds")), 599);
    json_decref(j);
    fake_now += 5;
    service_converge(&S);
    ck_assert_int_eq(d->state, DESKTOP_ASSIGNED);
    users_idle_answer(d, "dee", -1); /* unknown: nothing happens */
    fake_now += 5;
    service_converge(&S);
    ck_assert_int_eq(d->state, DESKTOP_ASSIGNED);
    users_idle_answer(d, "dee", 600);
    fake_now += 1;
    service_converge(&S);
    ck_assert_int_eq(d->state, DESKTOP_ENDING);
    ck_assert_int_eq(d->end_reason, END_IDLE);
    stop_service();
}
END_TEST

START_TEST(desktops_that_do_not_boot_are_recycled_and_reported)
{
    start_service(AGENT_POOL, 1, 1);
    for (unsigned round = 1; round <= 3; round++) {
        desktop *d = start_one_booting();
        fake_now += 59;
        service_converge(&S);
        ck_assert_int_eq(d->state, DESKTOP_BOOTING);
        fake_now += 1;
        service_converge(&S);
        ck_assert_int_eq(d->state, DESKTOP_ENDING);
        ck_assert_int_eq(d->end_reason, END_BOOT_TIMEOUT);
        ck_assert_ptr_nonnull(strstr(d->failure, "never connected"));
        desktop_ended(take(CALL_END), 0, NULL);
        ck_assert_int_eq(d->state, DESKTOP_FAILED); /* with back-off */
        ck_assert_uint_eq(P->boot_failures, round);
        json_t *j = pool_json(P, false);
        ck_assert(!json_object_get(j, "boot_problem") == (round < 3));
        json_decref(j);
        fake_now = d->retry_at;
        service_converge(&S); /* failed -> empty */
    }
    ck_assert_ptr_nonnull(strstr(P->boot_problem, "3 desktops in a row did not become ready"));
    /* One that boots clears the report. */
    desktop *d = start_one_booting();
    desktop_agent_changed(d, true);
    desktop_agent_checked(take(CALL_AGENT), 0, NULL, NULL);
    ck_assert_int_eq(d->state, DESKTOP_READY);
    ck_assert_ptr_null(P->boot_problem);
    stop_service();
}
END_TEST

START_TEST(names_come_from_one_list)
{
    ck_assert_str_eq(desktop_state_name(DESKTOP_EMPTY), "empty");
    ck_assert_str_eq(desktop_state_name(DESKTOP_FAILED), "failed");
    ck_assert_str_eq(desktop_state_name(DESKTOP_STATE_COUNT), "unknown");
    ck_assert_str_eq(end_reason_name(END_GUEST_SHUTDOWN), "guest-shutdown");
    ck_assert_str_eq(end_reason_name(END_OTHER), "other");
    ck_assert_int_eq(END_REASON_COUNT, 13);
    ck_assert_str_eq(end_reason_name(END_ROLLOUT), "rollout");
    ck_assert_str_eq(end_reason_name(END_IDLE), "idle");
    ck_assert_str_eq(end_reason_name(END_LOGGED_OFF), "logged-off");
    ck_assert_str_eq(end_reason_name(END_AGENT_LOST), "agent-lost");
    ck_assert_str_eq(end_reason_name(END_NO_LOGIN), "no-login");
    ck_assert_str_eq(end_reason_name(END_BOOT_TIMEOUT), "boot-timeout");
    ck_assert_str_eq(desktop_state_name(DESKTOP_BOOTING), "booting");
    ck_assert_str_eq(end_reason_name(END_NO_SPACE), "no-space");
    ck_assert_str_eq(desktop_state_name(DESKTOP_PAUSED), "paused");
}
END_TEST

TH_MAIN("controller", {"controller",
                       NULL,
                       NULL,
                       60,
                       {spares_are_cloned_started_and_ready,
                        clone_failure_backs_off_and_retries,
                        blocked_pool_probes_one_at_a_time,
                        freed_space_ends_the_wait,
                        failed_start_ends_then_fails,
                        start_slot_is_freed_once_the_domain_exists,
                        scrub_waits_while_pools_fill,
                        failed_end_is_retried,
                        session_time_limit_and_idle_spares,
                        reload_rolls_out_shrinks_and_drains,
                        offline_pool_starts_nothing,
                        held_desktops_wait_for_libvirt,
                        paused_desktops,
                        desktops_found_by_name,
                        assigned_desktops_found_by_user,
                        filtered_pages_list_desktops_in_slot_order,
                        agent_makes_ready_and_logoff_ends_the_session,
                        no_login_and_agent_lost_end_sessions,
                        idle_user_is_logged_off,
                        desktops_that_do_not_boot_are_recycled_and_reported,
                        names_come_from_one_list,
                        NULL}})
