/* test_recovery.c — the intent journal: a process killed at every step of
 * clone, delete, seal, merge, reparent and a gold version is recovered at
 * the next catalog open, and the work of a live process is left alone;
 * gold versions refuse what does not fit and what changed. */
#include "engine_fixture.h"

#include "helpers.h"
#include "vdi_engine.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- crash recovery ---------------------------------------------------------- */

/* Runs fn in a child process with $VDIPOOL_CRASH_AT=point; returns true if
 * the child died by SIGKILL there. */
static bool crash_at(const char *point, void (*fn)(void))
{
    vdi_catalog_close(cat);
    cat = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        setenv("VDIPOOL_CRASH_AT", point, 1);
        open_cat();
        fn();
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    open_cat(); /* recovery happens here */
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

static void do_clone(void)
{
    clone_to(gold, path_in("ds/crash.qcow2"));
}
static void do_batch(void)
{
    vdi_cloner *cl = NULL;
    ck_assert_int_eq(vdi_cloner_new(gold, NULL, &cl, NULL), 0);
    char *paths[3] = {path_in("ds/b1.qcow2"), path_in("ds/b2.qcow2"), path_in("ds/b3.qcow2")};
    /* A pool's clone: a recovered child keeps its datastore, pool and slot. */
    vdi_child_meta meta = {.datastore = "local", .pool = "office", .slot = 7};
    vdi_clone_batch_recorded(cat, cl, paths, 3, &meta, NULL, NULL);
    vdi_cloner_free(cl);
}
static void do_delete(void)
{
    vdi_child_delete(cat, path_in("ds/crash.qcow2"), NULL, NULL);
}
static void do_seal(void)
{
    vdi_seal_result r;
    vdi_seal(cat, gold, &r, NULL);
}

static size_t temporaries_in(const char *d)
{
    char *out = th_must("ls -A %s | grep -c '^.vdi-tmp' || true", d);
    size_t n = (size_t)atoi(out);
    free(out);
    return n;
}

START_TEST(crash_during_clone)
{
    seal_gold();
    vdi_child_info ci;
    ck_assert(crash_at("clone:begun", do_clone));
    ck_assert_int_eq(access(path_in("ds/crash.qcow2"), F_OK), -1);
    ck_assert_uint_eq(vdi_catalog_rolled_back(cat), 1);
    ck_assert(crash_at("clone:written", do_clone));
    ck_assert_int_eq(access(path_in("ds/crash.qcow2"), F_OK), -1);
    ck_assert_uint_eq(temporaries_in(path_in("ds")), 0);
    ck_assert_uint_eq(vdi_catalog_rolled_back(cat), 1);
    ck_assert(crash_at("clone:renamed", do_clone));
    ck_assert_uint_eq(vdi_catalog_rolled_forward(cat), 1);
    ck_assert_int_eq(vdi_catalog_child(cat, path_in("ds/crash.qcow2"), &ci, NULL), 0);
    free(th_must("qemu-img check -q %s", path_in("ds/crash.qcow2")));

    ck_assert(crash_at("clone:written", do_batch));
    ck_assert_uint_eq(temporaries_in(path_in("ds")), 0);
    ck_assert_int_eq(access(path_in("ds/b1.qcow2"), F_OK), -1);
    ck_assert(crash_at("clone:renamed", do_batch));
    for (int i = 1; i <= 3; i++) {
        char p[64];
        snprintf(p, sizeof p, "ds/b%d.qcow2", i);
        ck_assert_int_eq(vdi_catalog_child(cat, path_in(p), &ci, NULL), 0);
        ck_assert_str_eq(ci.datastore, "local");
        ck_assert_str_eq(ci.pool, "office");
        ck_assert_int_eq(ci.slot, 7);
    }
    vdi_datastore_usage usage;
    ck_assert_int_eq(vdi_catalog_datastore_usage(cat, "local", &usage, NULL), 0);
    ck_assert_uint_eq(usage.children, 3);

    ck_assert(crash_at("delete:unlinked", do_delete));
    ck_assert_uint_eq(vdi_catalog_rolled_forward(cat), 1);
    ck_assert_int_eq(access(path_in("ds/crash.qcow2"), F_OK), -1);
    ck_assert_int_eq(vdi_catalog_child(cat, path_in("ds/crash.qcow2"), &ci, NULL), -ENOENT);
}
END_TEST

START_TEST(live_operation_is_not_recovered)
{
    seal_gold();
    vdi_catalog_close(cat);
    cat = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        setenv("VDIPOOL_STOP_AT", "clone:written", 1);
        open_cat();
        do_clone();
        vdi_catalog_close(cat);
        _exit(0);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, WUNTRACED), pid);
    ck_assert(WIFSTOPPED(status));
    /* Someone opens the catalog meanwhile (an operator's vdipoolctl). */
    open_cat();
    ck_assert_uint_eq(vdi_catalog_rolled_back(cat) + vdi_catalog_rolled_forward(cat), 0);
    ck_assert_uint_eq(temporaries_in(path_in("ds")), 1);
    kill(pid, SIGCONT);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    vdi_child_info ci;
    ck_assert_int_eq(vdi_catalog_child(cat, path_in("ds/crash.qcow2"), &ci, NULL), 0);
    ck_assert_uint_eq(temporaries_in(path_in("ds")), 0);
}
END_TEST

START_TEST(crash_during_seal)
{
    struct stat before;
    ck_assert_int_eq(stat(gold, &before), 0);
    ck_assert(crash_at("seal:protected", do_seal));
    ck_assert_uint_eq(vdi_catalog_rolled_back(cat), 1);
    struct stat after;
    ck_assert_int_eq(stat(gold, &after), 0);
    ck_assert_int_eq(after.st_mode & 07777, before.st_mode & 07777);
    ck_assert_int_eq(after.st_uid, before.st_uid);
    ck_assert(!immutable(gold));
    vdi_gold_info g;
    ck_assert_int_eq(vdi_catalog_gold(cat, gold, &g, NULL), -ENOENT);
    seal_gold(); /* and it can be sealed afterwards */
}
END_TEST

static char merge_child[4200];
static void do_merge(void)
{
    merge(merge_child, VDI_MERGE_INTO_PARENT, NULL, NULL);
}
static char reparent_child[4200], reparent_target[4200];
static void do_reparent(void)
{
    vdi_reparent(cat, reparent_child, reparent_target, NULL);
}

START_TEST(crash_during_merge_and_reparent)
{
    char mid[4200];
    snprintf(mid, sizeof mid, "%s/ds/mid.qcow2", dir);
    free(th_must("qemu-img create -q -f qcow2 %s 1G", mid));
    snprintf(merge_child, sizeof merge_child, "%s/ds/top.qcow2", dir);
    clone_to(mid, merge_child);
    io(merge_child, "-c 'write -q -P 0x44 0 1M'");
    ck_assert(crash_at("merge:committed", do_merge));
    ck_assert_uint_eq(vdi_catalog_rolled_forward(cat), 1);
    ck_assert_int_eq(access(merge_child, F_OK), -1);
    io(mid, "-r -c 'read -q -P 0x44 0 1M'");

    seal_gold();
    snprintf(reparent_child, sizeof reparent_child, "%s/ds/rk.qcow2", dir);
    clone_to(gold, reparent_child);
    mkdir(path_in("moved"), 0755);
    snprintf(reparent_target, sizeof reparent_target, "%s/moved/gold.qcow2", dir);
    free(th_must("cp --sparse=always %s %s", gold, reparent_target));
    ck_assert(crash_at("reparent:rebased", do_reparent));
    ck_assert_uint_eq(vdi_catalog_rolled_forward(cat), 1);
    vdi_child_info ci;
    ck_assert_int_eq(vdi_catalog_child(cat, reparent_child, &ci, NULL), 0);
    ck_assert_str_eq(ci.parent, reparent_target);
}
END_TEST

static char family_dir[4200];
static void do_version(void)
{
    vdi_version_request req = {.family = "fam", .dir = family_dir, .source = gold,
                               .who = "test", .action = "import"};
    vdi_version_create(cat, &req, NULL, NULL, NULL, NULL);
}

/* A gold version killed at each step: afterwards the family is as it was
 * (version 1 current, nothing under version 2's name, no temporary), and
 * the next attempt makes version 2. */
START_TEST(crash_during_version_create)
{
    snprintf(family_dir, sizeof family_dir, "%s/fam", dir);
    do_version(); /* version 1 */
    vdi_gold_version v1;
    ck_assert_int_eq(vdi_version_find(cat, "fam", 0, &v1, NULL), 0);
    ck_assert_uint_eq(v1.version, 1);
    char v2[4300];
    snprintf(v2, sizeof v2, "%s/v0002.qcow2", family_dir);
    const char *points[] = {"version:converted", "version:placed", "version:sealed"};
    for (size_t i = 0; i < 3; i++) {
        ck_assert_msg(crash_at(points[i], do_version), "no crash at %s", points[i]);
        ck_assert_uint_eq(vdi_catalog_rolled_back(cat), 1);
        vdi_gold_version cur;
        ck_assert_int_eq(vdi_version_find(cat, "fam", 0, &cur, NULL), 0);
        ck_assert_uint_eq(cur.version, 1);
        ck_assert_msg(access(v2, F_OK) != 0, "%s left after a crash at %s", v2, points[i]);
        char *left = th_must("ls -A %s", family_dir);
        ck_assert_msg(!strcmp(left, "v0001.qcow2\n"), "after %s: %s", points[i], left);
        free(left);
        vdi_gold_info g;
        ck_assert_int_eq(vdi_catalog_gold(cat, v2, &g, NULL), -ENOENT);
    }
    do_version();
    vdi_gold_version cur;
    ck_assert_int_eq(vdi_version_find(cat, "fam", 0, &cur, NULL), 0);
    ck_assert_uint_eq(cur.version, 2);
    ck_assert_str_eq(cur.path, v2);
    /* The versions stay whole: qemu-img agrees, and v1 kept its hash. */
    free(th_must("qemu-img check -q %s", v2));
    ck_assert_int_eq(vdi_guard_check(cat, v1.path, true, NULL), 0);
    th_run(NULL, "chattr -i %s/*.qcow2", family_dir);
}
END_TEST

/* Import takes a standalone VHD (converted, same content), refuses what
 * does not fit above the reserve with the numbers, and a rollback refuses
 * a version whose bytes changed since it was sealed. */
START_TEST(versions_import_space_and_taint)
{
    snprintf(family_dir, sizeof family_dir, "%s/vfam", dir);
    io(gold, "-c 'write -q -P 0x5a 1M 64k'");
    char vhd[4300];
    snprintf(vhd, sizeof vhd, "%s/disk.vhd", dir);
    free(th_must("qemu-img convert -O vpc %s %s", gold, vhd));
    vdi_version_request req = {.family = "vfam", .dir = family_dir, .source = vhd,
                               .who = "test", .action = "import"};
    vdi_gold_version v1;
    vdi_error err = {0};
    ck_assert_msg(vdi_version_create(cat, &req, NULL, NULL, &v1, &err) == 0, "%s", err.message);
    free(th_must("qemu-img compare -q %s %s", gold, v1.path));
    char *info = th_must("qemu-img info %s", v1.path);
    ck_assert_ptr_nonnull(strstr(info, "file format: qcow2"));
    ck_assert_ptr_null(strstr(info, "backing file"));
    free(info);

    req.source = gold;
    req.reserve_bytes = UINT64_MAX / 4;
    ck_assert_int_eq(vdi_version_create(cat, &req, NULL, NULL, NULL, &err), -ENOSPC);
    ck_assert_ptr_nonnull(strstr(err.message, "would need up to"));
    ck_assert_ptr_nonnull(strstr(err.message, "in reserve"));
    req.reserve_bytes = 0;
    vdi_gold_version v2;
    ck_assert_msg(vdi_version_create(cat, &req, NULL, NULL, &v2, &err) == 0, "%s", err.message);
    ck_assert_uint_eq(v2.version, 2);

    /* Someone writes version 1 behind the guard's back: it cannot come back. */
    free(th_must("chattr -i %s && chmod 0644 %s", v1.path, v1.path));
    io(v1.path, "-c 'write -q -P 0x01 0 4k'");
    ck_assert_int_eq(vdi_version_make_current(cat, "vfam", 1, "test", NULL, &err), -ESTALE);
    vdi_gold_version cur;
    ck_assert_int_eq(vdi_version_find(cat, "vfam", 0, &cur, NULL), 0);
    ck_assert_uint_eq(cur.version, 2);
    th_run(NULL, "chattr -i %s/*.qcow2", family_dir);
}
END_TEST

TH_MAIN("recovery", {"recovery",
                     engine_setup,
                     engine_teardown,
                     120,
                     {crash_during_clone, crash_during_seal, live_operation_is_not_recovered,
                      crash_during_merge_and_reparent, crash_during_version_create,
                      versions_import_space_and_taint, NULL}})
