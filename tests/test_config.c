/* test_config.c — config files: every error class with the exact line
 * reported, @include, units, defaults, and the diff. */
#include "helpers.h"
#include "vdi_config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *dir;

static void setup(void)
{
    dir = th_tempdir("config");
    char p[4096];
    snprintf(p, sizeof p, "%s/desktops", dir);
    ck_assert_int_eq(mkdir(p, 0755), 0);
    snprintf(p, sizeof p, "%s/desktops2", dir);
    ck_assert_int_eq(mkdir(p, 0755), 0);
    snprintf(p, sizeof p, "%s/pools.d", dir);
    ck_assert_int_eq(mkdir(p, 0755), 0);
    /* Golds only need to be regular files for the default check. */
    snprintf(p, sizeof p, "%s/gold-a.qcow2", dir);
    th_write_file(p, "gold", 4);
    snprintf(p, sizeof p, "%s/gold-b.qcow2", dir);
    th_write_file(p, "gold", 4);
}

static void teardown(void)
{
    th_tempdir_remove(dir);
    dir = NULL;
}

/* Writes `text` to DIR/name with every "@DIR@" replaced; returns the path. */
static const char *write_conf(const char *name, const char *text)
{
    static char paths[4][4096];
    static int next;
    char *path = paths[next++ % 4];
    snprintf(path, 4096, "%s/%s", dir, name);
    size_t cap = strlen(text) * 2 + strlen(dir) * 32 + 1;
    char *out = malloc(cap), *o = out;
    for (const char *t = text; *t;) {
        if (!strncmp(t, "@DIR@", 5)) {
            o += sprintf(o, "%s", dir);
            t += 5;
        } else
            *o++ = *t++;
    }
    *o = '\0';
    th_write_file(path, out, strlen(out));
    free(out);
    return path;
}

static const char *BASE = "datastores = ( { name = \"local\"; path = \"@DIR@/desktops\"; } );\n"
                          "golds = ( { name = \"a\"; path = \"@DIR@/gold-a.qcow2\"; } );\n";

/* Loads text that must fail; returns the errors (caller frees). */
static vdi_config_errors *must_fail(const char *text)
{
    const char *path = write_conf("bad.conf", text);
    vdi_config *cfg = NULL;
    vdi_config_errors *errors = NULL;
    ck_assert_int_eq(vdi_config_load(path, NULL, &cfg, &errors), -EINVAL);
    ck_assert_ptr_null(cfg);
    ck_assert_uint_gt(vdi_config_errors_count(errors), 0);
    return errors;
}

static vdi_config *must_load(const char *text)
{
    const char *path = write_conf("good.conf", text);
    vdi_config *cfg = NULL;
    vdi_config_errors *errors = NULL;
    int rc = vdi_config_load(path, NULL, &cfg, &errors);
    if (rc < 0) {
        const vdi_config_error *e = vdi_config_errors_get(errors, 0);
        ck_abort_msg("config failed: %s:%d: %s", e->file, e->line, e->message);
    }
    return cfg;
}

/* Asserts that some error is on `line` of file `name` and contains `words`. */
static void expect_error(const vdi_config_errors *errors, const char *name, int line,
                         const char *words)
{
    char want[4096];
    snprintf(want, sizeof want, "%s/%s", dir, name);
    for (size_t i = 0; i < vdi_config_errors_count(errors); i++) {
        const vdi_config_error *e = vdi_config_errors_get(errors, i);
        if (e->line == line && strstr(e->message, words) &&
            (!strcmp(e->file, want) || !strcmp(e->file, name)))
            return;
    }
    char all[8192] = "";
    size_t len = 0;
    for (size_t i = 0; i < vdi_config_errors_count(errors) && len < sizeof all - 512; i++) {
        const vdi_config_error *e = vdi_config_errors_get(errors, i);
        len += (size_t)snprintf(all + len, sizeof all - len, "\n  %s:%d: %s", e->file, e->line,
                                e->message);
    }
    ck_abort_msg("no error at %s:%d with '%s'; got:%s", name, line, words, all);
}

START_TEST(full_config_with_units_and_defaults)
{
    char text[4096];
    snprintf(
        text, sizeof text,
        "%s"
        "service = { socket = \"/run/x.sock\"; listen = \"127.0.0.1:8470\";\n"
        "  token_file = \"/etc/vdipool/token\"; max_parallel_clones = 8;\n"
        "  acquire_timeout = \"2m\"; log_level = \"debug\"; };\n"
        "pools = ( { name = \"office\"; gold = \"a\"; datastore = \"local\"; size = 20;\n"
        "  spares = 3; expected_growth = \"1.5G\";\n"
        "  domain = { memory = \"4G\"; vcpus = 4; graphics = \"vnc\"; network = \"none\";\n"
        "             accel = \"tcg\"; };\n"
        "  session = { max_duration = \"1h30m\"; idle_spare_max_age = 3600; }; },\n"
        "  { name = \"lab\"; gold = \"@DIR@/gold-b.qcow2\"; datastore = \"local\"; size = 2; } "
        ");\n",
        BASE);
    vdi_config *cfg = must_load(text);
    const vdi_service_config *s = vdi_config_service(cfg);
    ck_assert_str_eq(s->socket_path, "/run/x.sock");
    ck_assert_str_eq(s->listen, "127.0.0.1:8470");
    ck_assert_uint_eq(s->max_parallel_clones, 8);
    ck_assert_uint_eq(s->max_parallel_starts, 2); /* default */
    ck_assert_uint_eq(s->acquire_timeout, 120);
    ck_assert_uint_eq(s->adopt_wait, 120); /* default */
    ck_assert_uint_eq(s->session_history, 0); /* default: kept for ever */
    ck_assert_int_eq(s->log_level, VDI_LOG_DEBUG);
    ck_assert_str_eq(s->state_dir, "/var/lib/vdipool");
    ck_assert_str_eq(s->libvirt_uri, "qemu:///system");

    const vdi_datastore_config *d = vdi_config_find_datastore(cfg, "local");
    ck_assert_ptr_nonnull(d);
    ck_assert(d->reserve_percent == 5.0);
    ck_assert(d->max_overcommit == 3.0);

    ck_assert_uint_eq(vdi_config_pool_count(cfg), 2);
    const vdi_pool_config *p = vdi_config_find_pool(cfg, "office");
    ck_assert_str_eq(p->gold_name, "a");
    ck_assert_str_eq(p->desktop_prefix, "office");
    ck_assert_uint_eq(p->size, 20);
    ck_assert_uint_eq(p->spares, 3);
    ck_assert_uint_eq(p->expected_growth, 3ULL << 29);
    ck_assert_uint_eq(p->domain.memory_bytes, 4ULL << 30);
    ck_assert_uint_eq(p->domain.vcpus, 4);
    ck_assert_int_eq(p->domain.graphics, VDI_GRAPHICS_VNC);
    ck_assert_ptr_null(p->domain.network);
    ck_assert(!p->domain.kvm);
    ck_assert_uint_eq(p->session.max_duration, 5400);
    ck_assert_uint_eq(p->session.idle_spare_max_age, 3600);
    ck_assert_str_eq(p->session.on_end, "destroy");
    ck_assert_uint_eq(p->max_chain_depth, 3);
    ck_assert_int_eq(p->line, 6);

    p = vdi_config_find_pool(cfg, "lab");
    ck_assert_ptr_null(p->gold_name);
    ck_assert_uint_eq(p->spares, 1); /* default */
    ck_assert_uint_eq(p->domain.memory_bytes, 2ULL << 30);
    ck_assert_int_eq(p->domain.graphics, VDI_GRAPHICS_SPICE);
    ck_assert_str_eq(p->domain.network, "default");
    ck_assert(p->domain.kvm);
    ck_assert_uint_eq(p->session.max_duration, 0);
    vdi_config_free(cfg);
}
END_TEST

START_TEST(syntax_error_line)
{
    vdi_config_errors *e = must_fail("datastores = (\n  { name = \"x\"; path = ; }\n);\n");
    ck_assert_uint_eq(vdi_config_errors_count(e), 1);
    expect_error(e, "bad.conf", 2, "syntax error");
    vdi_config_errors_free(e);
}
END_TEST

START_TEST(missing_file)
{
    vdi_config *cfg = NULL;
    vdi_config_errors *e = NULL;
    ck_assert_int_eq(vdi_config_load("/nonexistent/vdipool.conf", NULL, &cfg, &e), -EINVAL);
    ck_assert_str_eq(vdi_config_errors_get(e, 0)->file, "/nonexistent/vdipool.conf");
    ck_assert_ptr_nonnull(strstr(vdi_config_errors_get(e, 0)->message, "cannot read"));
    vdi_config_errors_free(e);
}
END_TEST

/* The base config with `setting` in its service group. */
static const char *text_with(char *text, size_t len, const char *setting)
{
    snprintf(text, len, "%sservice = { %s };\n", BASE, setting);
    return text;
}

/* service.adopt_wait: how long a desktop libvirt is still starting or
 * restoring at adoption is held; a duration from 1s to 1h.
 * service.session_history: how long finished sessions' records are kept;
 * 0 (the default: for ever), or at least a day. */
START_TEST(service_durations_are_bounded)
{
    char text[1024];
    vdi_config *cfg = must_load(text_with(text, sizeof text, "adopt_wait = \"10m\";"));
    ck_assert_uint_eq(vdi_config_service(cfg)->adopt_wait, 600);
    vdi_config_unref(cfg);
    static const char *const bad[][2] = {
        {"adopt_wait = \"0s\";", "service: 'adopt_wait' must be at least 1s"},
        {"adopt_wait = \"2h\";", "service: 'adopt_wait' is 2h; it must be at most 1h"},
        {"session_history = \"12h\";",
         "service: 'session_history' must be at least 1d, or \"0\" to keep every"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        vdi_config_errors *e = must_fail(text_with(text, sizeof text, bad[i][0]));
        expect_error(e, "bad.conf", 3, bad[i][1]);
        vdi_config_errors_free(e);
    }

    cfg = must_load(text_with(text, sizeof text, "session_history = \"90d\";"));
    ck_assert_uint_eq(vdi_config_service(cfg)->session_history, 90 * 86400);
    vdi_config_unref(cfg);
}
END_TEST

START_TEST(every_error_at_once_with_lines)
{
    char text[8192];
    snprintf(
        text, sizeof text,
        "%s"                                                                            /* 1-2 */
        "servise = { };\n"                                                              /* 3 */
        "pools = (\n"                                                                   /* 4 */
        "  { name = \"office\"; gold = \"a\"; datastore = \"local\";\n"                 /* 5 */
        "    size = 5;\n"                                                               /* 6 */
        "    spars = 2;\n"                                                              /* 7 */
        "    spares = 9;\n"                                                             /* 8 */
        "    domain = { memory = 4096; vcpus = \"2\"; graphics = \"rdp\"; };\n"         /* 9 */
        "    session = { max_duration = \"12 hours\"; on_end = \"keep\"; }; },\n"       /* 10 */
        "  { name = \"office\"; gold = \"b\"; datastore = \"remote\"; size = 0; },\n"   /* 11 */
        "  { name = \"lab\"; gold = \"@DIR@/missing.qcow2\"; datastore = \"local\";\n"  /* 12 */
        "    size = \"20\"; desktop_prefix = \"office\"; max_chain_depth = 40; },\n"    /* 13 */
        "  { name = \"bad name!\"; gold = \"a\"; datastore = \"local\"; size = 1; },\n" /* 14 */
        "  { gold = \"a\"; datastore = \"local\"; size = 1; }\n"                        /* 15 */
        ");\n",
        BASE);
    vdi_config_errors *e = must_fail(text);
    expect_error(e, "bad.conf", 3,
                 "unknown setting 'servise' in the top level (did you mean "
                 "'service'?)");
    expect_error(e, "bad.conf", 7,
                 "unknown setting 'spars' in pool 'office' (did you mean "
                 "'spares'?)");
    expect_error(e, "bad.conf", 8, "'spares' (9) is larger than 'size' (5)");
    expect_error(e, "bad.conf", 9, "'memory' is 4096 bytes");
    expect_error(e, "bad.conf", 9, "'vcpus' must be a whole number");
    expect_error(e, "bad.conf", 9, "'graphics' is \"rdp\"; it must be one of \"spice\"");
    expect_error(e, "bad.conf", 10, "\"12 hours\", which is not a duration");
    expect_error(e, "bad.conf", 10, "'on_end' is \"keep\"");
    expect_error(e, "bad.conf", 11, "pool 'office' is defined twice (first at");
    expect_error(e, "bad.conf", 11, "'size' is 0; it must be from 1 to 100000");
    expect_error(e, "bad.conf", 11, "no gold named 'b'");
    expect_error(e, "bad.conf", 11, "no datastore named 'remote'");
    expect_error(e, "bad.conf", 12, "missing.qcow2 is not usable: it does not exist");
    expect_error(e, "bad.conf", 13, "'size' must be a whole number");
    expect_error(e, "bad.conf", 13, "'max_chain_depth' is 40");
    expect_error(e, "bad.conf", 12, "would name its desktops like pool 'office'");
    expect_error(e, "bad.conf", 14, "pool name 'bad name!' is invalid");
    expect_error(e, "bad.conf", 15, "a pool needs 'name'");
    vdi_config_errors_free(e);
}
END_TEST

/* A catalog stand-in: family "fam" has versions 1 and 2 (current), family
 * "empty" none. */
static int fake_resolver(const char *family, const char *family_dir, unsigned version, char *path,
                         size_t len, unsigned *resolved, char *why, size_t why_len, void *ctx)
{
    (void)ctx;
    if (strcmp(family, "fam")) {
        snprintf(why, why_len, "gold '%s' has no version yet", family);
        return -ENOENT;
    }
    if (version > 2) {
        snprintf(why, why_len, "gold 'fam' has no version %u (it has 1 to 2)", version);
        return -ENOENT;
    }
    *resolved = version ? version : 2;
    snprintf(path, len, "%s/v%04u.qcow2", family_dir, *resolved);
    return 0;
}

static int load_with_resolver(const char *text, vdi_config **cfg, vdi_config_errors **errors)
{
    const char *path = write_conf("fam.conf", text);
    vdi_config_options o = {.skip_filesystem_checks = true, .resolve_version = fake_resolver};
    return vdi_config_load(path, &o, cfg, errors);
}

START_TEST(gold_families_and_pins)
{
    const char *good = "datastores = ( { name = \"local\"; path = \"/srv/ds\"; } );\n"
                       "golds = ( { name = \"fam\"; dir = \"/srv/golds/fam\"; } );\n"
                       "pools = ( { name = \"a\"; gold = \"fam\"; datastore = \"local\"; size = 1; },\n"
                       "  { name = \"b\"; gold = \"fam@1\"; datastore = \"local\"; size = 1; } );\n";
    vdi_config *cfg = NULL;
    vdi_config_errors *e = NULL;
    ck_assert_int_eq(load_with_resolver(good, &cfg, &e), 0);
    const vdi_pool_config *a = vdi_config_find_pool(cfg, "a"), *b = vdi_config_find_pool(cfg, "b");
    ck_assert_str_eq(a->gold, "/srv/golds/fam/v0002.qcow2");
    ck_assert_uint_eq(a->gold_version, 2);
    ck_assert(!a->gold_pinned);
    ck_assert_str_eq(b->gold, "/srv/golds/fam/v0001.qcow2");
    ck_assert(b->gold_pinned);
    ck_assert_str_eq(vdi_config_gold(cfg, 0)->dir, "/srv/golds/fam");
    ck_assert_uint_eq(vdi_config_gold(cfg, 0)->version, 2);
    vdi_config_free(cfg);

    const char *bad =
        "datastores = ( { name = \"local\"; path = \"/srv/ds\"; } );\n"                /* 1 */
        "golds = ( { name = \"fam\"; dir = \"/srv/golds/fam\"; },\n"                      /* 2 */
        "  { name = \"empty\"; dir = \"/srv/golds/empty\"; },\n"                          /* 3 */
        "  { name = \"both\"; dir = \"/srv/x\"; path = \"/srv/x.qcow2\"; },\n"            /* 4 */
        "  { name = \"rel\"; dir = \"golds/rel\"; },\n"                                    /* 5 */
        "  { name = \"one\"; path = \"/srv/one.qcow2\"; } );\n"                            /* 6 */
        "pools = ( { name = \"a\"; gold = \"fam@9\"; datastore = \"local\"; size = 1; },\n" /* 7 */
        "  { name = \"b\"; gold = \"fam@x\"; datastore = \"local\"; size = 1; },\n"         /* 8 */
        "  { name = \"c\"; gold = \"one@2\"; datastore = \"local\"; size = 1; },\n"          /* 9 */
        "  { name = \"d\"; gold = \"fam\"; datastore = \"local\"; size = 1; rollout = \"soon\"; },\n" /* 10 */
        "  { name = \"e\"; gold = \"fam\"; datastore = \"local\"; size = 1; rollout_notice = \"1m\"; } );\n"; /* 11 */
    ck_assert_int_lt(load_with_resolver(bad, &cfg, &e), 0);
    expect_error(e, "fam.conf", 3, "gold 'empty': gold 'empty' has no version yet");
    expect_error(e, "fam.conf", 4, "has both 'path' (one image) and 'dir'");
    expect_error(e, "fam.conf", 5, "'dir' must be an absolute path");
    expect_error(e, "fam.conf", 7, "gold 'fam' has no version 9 (it has 1 to 2)");
    expect_error(e, "fam.conf", 8, "'fam@x' pins no version");
    expect_error(e, "fam.conf", 9, "gold 'one' is one image ('path'), it has no versions to pin");
    expect_error(e, "fam.conf", 10, "'rollout' is \"soon\"; it must be one of \"on-logoff\", "
                                    "\"immediate\", \"manual\"");
    expect_error(e, "fam.conf", 11, "'rollout_notice' is for rollout = \"immediate\"");
    vdi_config_errors_free(e);
}
END_TEST

START_TEST(agent_settings)
{
    char text[4096];
    write_conf("no-agent.xml", "<domain type='{{type}}'><name>{{name}}</name></domain>\n");
    snprintf(text, sizeof text,
             "%s"
             "pools = (\n"
             "  { name = \"lab\"; gold = \"a\"; datastore = \"local\"; size = 2;\n" /* 4 */
             "    ready_when = \"agent\"; boot_timeout = \"90s\"; hostname = \"pc-{{slot}}\";\n"
             "    session = { logoff_grace = \"1m\"; login_timeout = \"10m\"; } },\n"
             "  { name = \"kiosk\"; gold = \"a\"; datastore = \"local\"; size = 1; }\n"
             ");\n",
             BASE);
    vdi_config *cfg = must_load(text);
    const vdi_pool_config *lab = vdi_config_find_pool(cfg, "lab");
    ck_assert_int_eq(lab->ready_when, VDI_READY_AGENT);
    ck_assert_uint_eq(lab->boot_timeout, 90);
    ck_assert_uint_eq(lab->session.logoff_grace, 60);
    ck_assert_uint_eq(lab->session.login_timeout, 600);
    ck_assert_uint_eq(lab->session.agent_lost_timeout, 300);
    ck_assert_str_eq(lab->hostname_command, "hostname");
    char host[64];
    ck_assert_int_eq(vdi_config_hostname(lab, "lab-007", 7, host, sizeof host), 0);
    ck_assert_str_eq(host, "pc-7");
    const vdi_pool_config *kiosk = vdi_config_find_pool(cfg, "kiosk");
    ck_assert_int_eq(kiosk->ready_when, VDI_READY_STARTED);
    ck_assert_uint_eq(kiosk->boot_timeout, 600);
    vdi_config_free(cfg);

    snprintf(text, sizeof text,
             "%s"
             "pools = (\n"
             "  { name = \"a1\"; gold = \"a\"; datastore = \"local\"; size = 1;\n" /* 4 */
             "    ready_when = \"booted\"; },\n"                                        /* 5 */
             "  { name = \"a2\"; gold = \"a\"; datastore = \"local\"; size = 1;\n"
             "    boot_timeout = \"1m\"; session = { logoff_grace = \"1m\"; }; },\n"    /* 7 */
             "  { name = \"a3\"; desktop_prefix = \"win_pc\"; gold = \"a\"; datastore = \"local\";\n"
             "    size = 1; ready_when = \"agent\"; },\n"                               /* 9 */
             "  { name = \"a4\"; gold = \"a\"; datastore = \"local\"; size = 1;\n"
             "    ready_when = \"agent\"; boot_timeout = \"0\"; session = { idle_logoff = \"1h\"; };\n" /* 11 */
             "    domain = { template = \"@DIR@/no-agent.xml\"; }; }\n"                   /* 12 */
             ");\n",
             BASE);
    vdi_config_errors *e = must_fail(text);
    expect_error(e, "bad.conf", 5, "'ready_when' is \"booted\"; it must be one of \"started\", "
                                   "\"agent\"");
    expect_error(e, "bad.conf", 7, "'boot_timeout' needs the guest agent");
    expect_error(e, "bad.conf", 7, "'logoff_grace' needs the guest agent");
    expect_error(e, "bad.conf", 8, "gives \"win_pc-001\" for desktop win_pc-001, which is not a "
                                   "valid hostname");
    expect_error(e, "bad.conf", 11, "'boot_timeout' must be at least 1s");
    expect_error(e, "bad.conf", 11, "has no guest agent channel; add <channel");
    expect_error(e, "bad.conf", 11, "'idle_logoff' needs 'idle_command'");
    vdi_config_errors_free(e);
}
END_TEST

START_TEST(datastore_errors)
{
    const char *text =
        "datastores = (\n"
        "  { name = \"a\"; path = \"@DIR@/gold-a.qcow2\"; reserve = -5; },\n"   /* 2 */
        "  { name = \"b\"; path = \"@DIR@/desktops\"; reserve = \"95%\"; },\n"  /* 3 */
        "  { name = \"c\"; path = \"@DIR@/desktops\"; max_overcommit = 0; },\n" /* 4 */
        "  { name = \"a\"; path = \"relative/dir\"; reserve = \"lots\"; }\n"    /* 5 */
        ");\n"
        "service = { listen = \"0.0.0.0:80\"; };\n"; /* 7 */
    vdi_config_errors *e = must_fail(text);
    expect_error(e, "bad.conf", 2, "is not a directory");
    expect_error(e, "bad.conf", 2, "'reserve' must not be negative");
    expect_error(e, "bad.conf", 3, "\"95%\"; a percentage must be from");
    expect_error(e, "bad.conf", 4, "is also datastore 'b'");
    expect_error(e, "bad.conf", 4, "'max_overcommit' is 0");
    expect_error(e, "bad.conf", 5, "datastore 'a' is defined twice");
    expect_error(e, "bad.conf", 7, "it must be a loopback address");
    expect_error(e, "bad.conf", 7, "'listen' needs 'token_file'");
    vdi_config_errors_free(e);

    e = must_fail("golds = ( { name = \"g\"; path = \"@DIR@/desktops\"; } );\n");
    expect_error(e, "bad.conf", 0, "no 'datastores'");
    expect_error(e, "bad.conf", 1, "it is not a regular file");
    vdi_config_errors_free(e);
}
END_TEST

START_TEST(hosts_and_where_pools_run)
{
    /* Without `hosts`: one host, "local", on the service's libvirt_uri. */
    vdi_config *cfg = must_load("service = { libvirt_uri = \"qemu+ssh://kvm1/system\"; };\n"
                                "datastores = ( { name = \"local\"; path = \"@DIR@/desktops\"; } );\n"
                                "golds = ( { name = \"a\"; path = \"@DIR@/gold-a.qcow2\"; } );\n"
                                "pools = ( { name = \"p\"; gold = \"a\"; datastore = \"local\"; "
                                "size = 2; } );\n");
    ck_assert_uint_eq(vdi_config_host_count(cfg), 1);
    const vdi_host_config *h = vdi_config_host(cfg, 0);
    ck_assert_str_eq(h->name, "local");
    ck_assert_str_eq(h->uri, "qemu+ssh://kvm1/system");
    ck_assert(h->implicit);
    ck_assert(vdi_config_pool_may_use(cfg, vdi_config_pool(cfg, 0), h));
    vdi_config_free(cfg);

    cfg = must_load(
        "hosts = ( { name = \"h1\"; uri = \"qemu+ssh://root@h1.example/system\";\n"
        "            datastores = [ \"shared\" ]; max_desktops = 40; reserve_memory = \"4G\"; },\n"
        "          { name = \"h2\"; uri = \"qemu+tls://h2.example/system\"; state = \"maintenance\"; } );\n"
        "datastores = ( { name = \"shared\"; path = \"@DIR@/desktops\"; },\n"
        "               { name = \"other\"; path = \"@DIR@/desktops2\"; kind = \"shared\"; } );\n"
        "golds = ( { name = \"a\"; path = \"@DIR@/gold-a.qcow2\"; } );\n"
        "pools = ( { name = \"p\"; gold = \"a\"; datastore = \"shared\"; size = 2; },\n"
        "          { name = \"q\"; gold = \"a\"; datastore = \"other\"; size = 2;\n"
        "            hosts = [ \"h2\" ]; } );\n");
    ck_assert_uint_eq(vdi_config_host_count(cfg), 2);
    const vdi_host_config *h1 = vdi_config_find_host(cfg, "h1"),
                          *h2 = vdi_config_find_host(cfg, "h2");
    ck_assert_uint_eq(h1->max_desktops, 40);
    ck_assert_uint_eq(h1->reserve_memory, 4ULL << 30);
    ck_assert_int_eq(h1->state, VDI_HOST_ACTIVE);
    ck_assert_int_eq(h2->state, VDI_HOST_MAINTENANCE);
    ck_assert_ptr_null(h2->datastores); /* every shared datastore */
    const vdi_pool_config *p = vdi_config_find_pool(cfg, "p"), *q = vdi_config_find_pool(cfg, "q");
    ck_assert(vdi_config_pool_may_use(cfg, p, h1));
    ck_assert(vdi_config_pool_may_use(cfg, p, h2));
    ck_assert(!vdi_config_pool_may_use(cfg, q, h1)); /* neither named nor seeing "other" */
    ck_assert(vdi_config_pool_may_use(cfg, q, h2));
    ck_assert_uint_eq(q->nhosts, 1);
    vdi_config_free(cfg);

    vdi_config_errors *e = must_fail(
        "hosts = ( { name = \"h1\"; uri = \"qemu:///system\"; datastores = [ \"nope\" ]; },\n" /* 1 */
        "          { name = \"h2\"; uri = \"qemu:///system\"; state = \"asleep\"; },\n"       /* 2 */
        "          { name = \"h3\"; uri = \"h3.example\"; datastores = [ \"local\" ]; } );\n" /* 3 */
        "datastores = ( { name = \"local\"; path = \"@DIR@/desktops\"; },\n"                  /* 4 */
        "  { name = \"far\"; path = \"/srv/vdi\"; kind = \"local\"; host = \"h9\"; } );\n"  /* 5 */
        "golds = ( { name = \"a\"; path = \"@DIR@/gold-a.qcow2\"; } );\n"                      /* 6 */
        "pools = ( { name = \"p\"; gold = \"a\"; datastore = \"local\"; size = 2;\n"        /* 7 */
        "            hosts = [ \"h1\", \"h7\" ]; } );\n");                                 /* 8 */
    expect_error(e, "bad.conf", 1, "host 'h1': no datastore named 'nope'");
    expect_error(e, "bad.conf", 2, "has the uri of host 'h1'");
    expect_error(e, "bad.conf", 2, "'state' is \"asleep\"");
    expect_error(e, "bad.conf", 3, "is not a libvirt URI");
    expect_error(e, "bad.conf", 5, "host 'h9' is not in 'hosts'");
    expect_error(e, "bad.conf", 8, "no host named 'h7'");
    vdi_config_errors_free(e);

    /* start = "resume": its settings, and not on a host-local datastore. */
    e = must_fail(
        "hosts = ( { name = \"h1\"; uri = \"qemu:///system\"; } );\n"
        "datastores = ( { name = \"a\"; path = \"@DIR@/desktops\"; },\n"
        "  { name = \"l\"; kind = \"local\"; host = \"h1\"; path = \"/srv/x\"; } );\n"
        "golds = ( { name = \"a\"; path = \"@DIR@/gold-a.qcow2\"; } );\n"
        "pools = ( { name = \"p\"; gold = \"a\"; datastore = \"a\"; size = 2;\n"
        "            template_settle = \"5s\"; },\n"
        "          { name = \"q\"; gold = \"a\"; datastore = \"l\"; size = 2;\n"
        "            start = \"resume\"; },\n"
        "          { name = \"r\"; gold = \"a\"; datastore = \"a\"; size = 2;\n"
        "            start = \"instant\"; } );\n");
    expect_error(e, "bad.conf", 6, "'template_settle' is for start = \"resume\"");
    expect_error(e, "bad.conf", 8, "needs a shared datastore");
    expect_error(e, "bad.conf", 10, "'start' is \"instant\"");
    vdi_config_errors_free(e);

    /* A pool whose hosts do not see its datastore. */
    e = must_fail(
        "hosts = ( { name = \"h1\"; uri = \"qemu:///system\"; datastores = [ \"b\" ]; } );\n"
        "datastores = ( { name = \"a\"; path = \"@DIR@/desktops\"; },\n"
        "               { name = \"b\"; path = \"@DIR@/desktops2\"; } );\n"
        "golds = ( { name = \"a\"; path = \"@DIR@/gold-a.qcow2\"; } );\n"
        "pools = ( { name = \"p\"; gold = \"a\";\n"
        "            datastore = \"a\"; size = 2; } );\n");
    expect_error(e, "bad.conf", 6, "none of the hosts sees datastore 'a'");
    vdi_config_errors_free(e);
}
END_TEST

static int fake_check(const char *path, char *why, size_t len, void *ctx)
{
    (*(int *)ctx)++;
    if (strstr(path, "gold-b")) {
        snprintf(why, len, "it looks like a text file");
        return -EINVAL;
    }
    return 0;
}

START_TEST(gold_check_is_delegated)
{
    char text[2048];
    snprintf(text, sizeof text,
             "%s golds = ( { name = \"a\"; path = \"@DIR@/gold-a.qcow2\"; },\n"
             "  { name = \"b\"; path = \"@DIR@/gold-b.qcow2\"; } );\n",
             "datastores = ( { name = \"local\"; path = \"@DIR@/desktops\"; } );\n");
    const char *path = write_conf("golds.conf", text);
    int calls = 0;
    vdi_config_options opts = {.check_image = fake_check, .check_ctx = &calls};
    vdi_config *cfg = NULL;
    vdi_config_errors *e = NULL;
    ck_assert_int_eq(vdi_config_load(path, &opts, &cfg, &e), -EINVAL);
    ck_assert_int_eq(calls, 2);
    expect_error(e, "golds.conf", 3, "gold-b.qcow2 is not usable: it looks like a text file");
    ck_assert_uint_eq(vdi_config_errors_count(e), 1);
    vdi_config_errors_free(e);
}
END_TEST

START_TEST(includes_name_their_file)
{
    write_conf("pools.d/office.conf", "office = {\n"
                                      "  gold = \"a\";\n"
                                      "  datastore = \"local\";\n"
                                      "  size = 4; spares = 1;\n"
                                      "};\n");
    write_conf("pools.d/lab.conf", "lab = {\n"
                                   "  gold = \"a\"; datastore = \"local\";\n"
                                   "  size = 2;\n"
                                   "  sparez = 1;\n"
                                   "};\n");
    char text[2048];
    snprintf(
        text, sizeof text,
        "%spools = {\n  @include \"pools.d/office.conf\"\n  @include \"pools.d/lab.conf\"\n};\n",
        BASE);
    vdi_config_errors *e = must_fail(text);
    ck_assert_uint_eq(vdi_config_errors_count(e), 1);
    expect_error(e, "pools.d/lab.conf", 4, "unknown setting 'sparez' in pool 'lab'");
    vdi_config_errors_free(e);

    write_conf("pools.d/lab.conf", "lab = { gold = \"a\"; datastore = \"local\"; size = 2; };\n");
    vdi_config *cfg = must_load(text);
    ck_assert_uint_eq(vdi_config_pool_count(cfg), 2);
    ck_assert_uint_eq(vdi_config_find_pool(cfg, "office")->size, 4);
    ck_assert_int_eq(vdi_config_find_pool(cfg, "office")->line, 1);
    ck_assert_ptr_nonnull(strstr(vdi_config_find_pool(cfg, "lab")->file, "pools.d/lab.conf"));
    vdi_config_free(cfg);

    /* A syntax error inside an included file names that file and line. */
    write_conf("pools.d/lab.conf", "lab = {\n  gold = \"a\";\n  size = = 2; };\n");
    e = must_fail(text);
    const vdi_config_error *err = vdi_config_errors_get(e, 0);
    ck_assert_ptr_nonnull(strstr(err->file, "pools.d/lab.conf"));
    ck_assert_int_eq(err->line, 3);
    vdi_config_errors_free(e);
}
END_TEST

static vdi_config *load_named(const char *name, const char *text)
{
    const char *path = write_conf(name, text);
    vdi_config *cfg = NULL;
    vdi_config_errors *e = NULL;
    ck_assert_int_eq(vdi_config_load(path, NULL, &cfg, &e), 0);
    return cfg;
}

static const vdi_config_change *find_change(const vdi_config_diff *d, vdi_change_kind kind,
                                            const char *name, const char *field)
{
    for (size_t i = 0; i < vdi_config_diff_count(d); i++) {
        const vdi_config_change *c = vdi_config_diff_get(d, i);
        if (c->kind == kind && !strcmp(c->name, name) &&
            (!field ? !c->field : c->field && !strcmp(c->field, field)))
            return c;
    }
    ck_abort_msg("no %s change for %s %s", vdi_change_kind_name(kind), name, field ? field : "");
    return NULL;
}

START_TEST(diff_lists_every_change)
{
    vdi_config *a = load_named(
        "old.conf",
        "datastores = ( { name = \"local\"; path = \"@DIR@/desktops\"; reserve = \"10G\"; },\n"
        "  { name = \"gone\"; path = \"@DIR@/desktops2\"; } );\n"
        "golds = ( { name = \"win\"; path = \"@DIR@/gold-a.qcow2\"; } );\n"
        "pools = ( { name = \"office\"; gold = \"win\"; datastore = \"local\"; size = 10; spares = "
        "2;\n"
        "    domain = { memory = \"4G\"; }; session = { max_duration = \"8h\"; }; },\n"
        "  { name = \"old\"; gold = \"win\"; datastore = \"local\"; size = 1; } );\n");
    vdi_config *b = load_named(
        "new.conf",
        "service = { log_level = \"debug\"; adopt_wait = \"5m\"; session_history = \"30d\"; "
        "};\n"
        "datastores = ( { name = \"local\"; path = \"@DIR@/desktops\"; reserve = \"5%\"; } );\n"
        "golds = ( { name = \"win\"; path = \"@DIR@/gold-b.qcow2\"; } );\n"
        "pools = ( { name = \"office\"; gold = \"win\"; datastore = \"local\"; size = 20; spares = "
        "3;\n"
        "    domain = { memory = \"8G\"; }; session = { max_duration = \"12h\"; }; },\n"
        "  { name = \"new\"; gold = \"win\"; datastore = \"local\"; size = 1; } );\n");
    vdi_config_diff *d = NULL;
    ck_assert_int_eq(vdi_config_diff_new(a, b, &d), 0);
    const vdi_config_change *c;
    c = find_change(d, VDI_CHANGE_SERVICE, "service", "log_level");
    ck_assert_str_eq(c->old_value, "info");
    ck_assert_str_eq(c->new_value, "debug");
    c = find_change(d, VDI_CHANGE_SERVICE, "service", "adopt_wait");
    ck_assert_str_eq(c->old_value, "2m");
    ck_assert_str_eq(c->new_value, "5m");
    c = find_change(d, VDI_CHANGE_SERVICE, "service", "session_history");
    ck_assert_str_eq(c->old_value, "unlimited");
    ck_assert_str_eq(c->new_value, "30d");
    c = find_change(d, VDI_CHANGE_DATASTORE_CHANGED, "local", "reserve");
    ck_assert_str_eq(c->old_value, "10 GiB");
    ck_assert_str_eq(c->new_value, "5%");
    find_change(d, VDI_CHANGE_DATASTORE_REMOVED, "gone", NULL);
    find_change(d, VDI_CHANGE_GOLD_CHANGED, "win", "path");
    c = find_change(d, VDI_CHANGE_POOL_RESIZED, "office", "size");
    ck_assert_str_eq(c->old_value, "10");
    ck_assert_str_eq(c->new_value, "20");
    find_change(d, VDI_CHANGE_POOL_RESIZED, "office", "spares");
    /* Repointing a named gold is a roll-out for every pool using it. */
    c = find_change(d, VDI_CHANGE_POOL_GOLD, "office", "gold");
    ck_assert_ptr_nonnull(strstr(c->new_value, "gold-b.qcow2"));
    c = find_change(d, VDI_CHANGE_POOL_DOMAIN, "office", "domain.memory");
    ck_assert_str_eq(c->new_value, "8 GiB");
    c = find_change(d, VDI_CHANGE_POOL_SESSION, "office", "session.max_duration");
    ck_assert_str_eq(c->old_value, "8h");
    find_change(d, VDI_CHANGE_POOL_REMOVED, "old", NULL);
    find_change(d, VDI_CHANGE_POOL_ADDED, "new", NULL);
    vdi_config_diff_free(d);

    ck_assert_int_eq(vdi_config_diff_new(a, a, &d), 0);
    ck_assert_uint_eq(vdi_config_diff_count(d), 0);
    vdi_config_diff_free(d);
    vdi_config_free(a);
    vdi_config_free(b);
}
END_TEST

START_TEST(parse_string_for_fuzzing)
{
    vdi_config_options opts = {.skip_filesystem_checks = true};
    vdi_config *cfg = NULL;
    vdi_config_errors *e = NULL;
    ck_assert_int_eq(
        vdi_config_parse_string("datastores = ( { name = \"x\"; path = \"/nope\"; } );", "<mem>",
                                &opts, &cfg, &e),
        0);
    vdi_config_free(cfg);
    ck_assert_int_eq(vdi_config_parse_string("pools = 5;", "<mem>", &opts, &cfg, &e), -EINVAL);
    ck_assert_str_eq(vdi_config_errors_get(e, 0)->file, "<mem>");
    vdi_config_errors_free(e);
}
END_TEST

START_TEST(shipped_examples_are_valid)
{
    const char *src = getenv("VDI_SOURCE_DIR");
    ck_assert_ptr_nonnull(src);
    /* The examples name paths of a real host; their syntax and values must hold. */
    vdi_config_options opts = {.skip_filesystem_checks = true};
    const char *files[] = {"deploy/vdipool.conf.example", "deploy/vdipool.conf.minimal"};
    for (size_t i = 0; i < 2; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", src, files[i]);
        vdi_config *cfg = NULL;
        vdi_config_errors *e = NULL;
        int rc = vdi_config_load(path, &opts, &cfg, &e);
        ck_assert_msg(rc == 0, "%s: %s", files[i], rc ? vdi_config_errors_get(e, 0)->message : "");
        ck_assert_uint_eq(vdi_config_pool_count(cfg), 1);
        vdi_config_free(cfg);
    }
}
END_TEST

START_TEST(cli_check_and_diff)
{
    const char *ctl = getenv("VDIPOOLCTL");
    ck_assert_ptr_nonnull(ctl);
    char gold[4096];
    snprintf(gold, sizeof gold, "%s/real.raw", dir);
    free(th_must("truncate -s 1M %s", gold));
    const char *good =
        write_conf("a.conf", "datastores = ( { name = \"local\"; path = \"@DIR@/desktops\"; } );\n"
                             "pools = ( { name = \"office\"; gold = \"@DIR@/real.raw\";\n"
                             "  datastore = \"local\"; size = 4; spares = 2; } );\n");
    char *out = th_must("%s config check --config %s", ctl, good);
    ck_assert_ptr_nonnull(strstr(out, "is valid: 1 datastore, 0 golds, 1 pool"));
    ck_assert_ptr_nonnull(strstr(out, "pool office: 4 desktops (2 spares)"));
    free(out);

    /* The CLI checks golds with the engine: a text file is refused by name. */
    const char *bad =
        write_conf("b.conf", "datastores = ( { name = \"local\"; path = \"@DIR@/desktops\"; } );\n"
                             "pools = ( { name = \"office\"; gold = \"@DIR@/b.conf\";\n"
                             "  datastore = \"local\"; size = 6; spares = 2; } );\n");
    int rc = th_run(&out, "%s config check --config %s", ctl, bad);
    ck_assert_int_eq(rc, 1);
    ck_assert_msg(strstr(out, "b.conf:2: pool 'office': gold") && strstr(out, "text file") &&
                      strstr(out, "1 error; nothing was applied"),
                  "%s", out);
    free(out);

    const char *newer = write_conf(
        "c.conf",
        "datastores = ( { name = \"local\"; path = \"@DIR@/desktops\"; } );\n"
        "pools = ( { name = \"office\"; gold = \"@DIR@/real.raw\";\n"
        "  datastore = \"local\"; size = 8; spares = 2; },\n"
        "  { name = \"lab\"; gold = \"@DIR@/real.raw\"; datastore = \"local\"; size = 1; } );\n");
    out = th_must("%s config diff %s %s", ctl, good, newer);
    ck_assert_msg(strstr(out, "pool office: size 4 -> 8") && strstr(out, "pool lab: added"), "%s",
                  out);
    free(out);
    out = th_must("%s config diff --json %s %s", ctl, good, newer);
    ck_assert_ptr_nonnull(strstr(out, "\"kind\": \"pool_resized\""));
    free(out);
    out = th_must("%s config diff %s %s", ctl, good, good);
    ck_assert_ptr_nonnull(strstr(out, "no changes"));
    free(out);
}
END_TEST

/* libconfig 1.5 wraps integers; the prescan refuses any that do not fit. */
START_TEST(integers_that_do_not_fit_are_refused)
{
    char text[2048];
    snprintf(text, sizeof text,
             "%s\npools = ( { name = \"p\"; desktop_prefix = \"p\"; gold = \"a\";\n"
             "  datastore = \"local\";\n  size = 4294967298;\n  spares = 2147483648; } );\n",
             BASE);
    vdi_config_errors *errors = must_fail(text);
    expect_error(errors, "bad.conf", 6, "4294967298 is too large");
    expect_error(errors, "bad.conf", 7, "2147483648 is too large");
    vdi_config_errors_free(errors);
    /* Names with digits, floats and int64 literals are not numbers to refuse. */
    snprintf(text, sizeof text,
             "%s\npools = ( { name = \"p2\"; desktop_prefix = \"p2x9\"; gold = \"a\";\n"
             "  datastore = \"local\"; size = 2; spares = 1; expected_growth = 5000000000L; } "
             ");\n",
             BASE);
    vdi_config_free(must_load(text));
}
END_TEST

START_TEST(only_plain_files_of_bounded_size)
{
    char fifo[4200];
    snprintf(fifo, sizeof fifo, "%s/fifo.conf", dir);
    ck_assert_int_eq(mkfifo(fifo, 0644), 0);
    char text[2048];
    snprintf(text, sizeof text, "%s\n@include \"fifo.conf\"\n", BASE);
    vdi_config_errors *errors = must_fail(text);
    expect_error(errors, "bad.conf", 4, "is not a regular file (a FIFO)");
    vdi_config_errors_free(errors);
    snprintf(text, sizeof text, "%s\n@include \"desktops\"\n", BASE);
    errors = must_fail(text);
    expect_error(errors, "bad.conf", 4, "(a directory)");
    vdi_config_errors_free(errors);
    /* A string over the limit, and a file over the limit, are refused at once. */
    size_t n = 100000;
    char *big = malloc(n + 256);
    int len = snprintf(big, n + 256, "datastores = ( { name = \"");
    memset(big + len, 'x', n);
    snprintf(big + len + n, 200, "\"; path = \"/tmp\"; } );\n");
    errors = must_fail(big);
    expect_error(errors, "bad.conf", 1, "a string of 100000 bytes");
    vdi_config_errors_free(errors);
    free(big);
    big = malloc(2 * 1024 * 1024 + 1);
    memset(big, '#', 2 * 1024 * 1024);
    big[2 * 1024 * 1024] = '\0';
    errors = must_fail(big);
    expect_error(errors, "bad.conf", 0, "at most 1048576");
    vdi_config_errors_free(errors);
    free(big);
}
END_TEST

TH_MAIN("config",
        {"config",
         setup,
         teardown,
         0,
         {full_config_with_units_and_defaults, service_durations_are_bounded, syntax_error_line,
          missing_file, every_error_at_once_with_lines, datastore_errors, hosts_and_where_pools_run,
          gold_check_is_delegated, includes_name_their_file, diff_lists_every_change,
          parse_string_for_fuzzing, shipped_examples_are_valid, cli_check_and_diff,
          integers_that_do_not_fit_are_refused, only_plain_files_of_bounded_size, agent_settings,
          gold_families_and_pins, NULL}})
