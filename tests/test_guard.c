/* test_guard.c — the three promises: a sealed gold cannot change (every
 * tamper path is blocked or detected before the next clone), children are
 * always known (merge, reparent, scan), and crashes at any step recover. */
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

static char *dir;
static char state[4200], gold[4200];
static vdi_catalog *cat;

static char *path_in(const char *name) { return th_path(dir, name); }

static void open_cat(void)
{
    vdi_error err = { 0 };
    ck_assert_msg(vdi_catalog_open(state, &cat, &err) == 0, "%s", err.message);
}

static void setup(void)
{
    ck_assert(th_have("qemu-img") && th_have("qemu-io"));
    dir = th_tempdir("guard");
    snprintf(state, sizeof state, "%s/state", dir);
    snprintf(gold, sizeof gold, "%s/gold.qcow2", dir);
    mkdir(path_in("ds"), 0755);
    free(th_must("qemu-img create -q -f qcow2 %s 1G && qemu-io -c 'write -q -P 0x5a 0 1M' %s", gold,
                 gold));
    open_cat();
}

static void teardown(void)
{
    vdi_catalog_close(cat);
    cat = NULL;
    th_tempdir_remove(dir);
    dir = NULL;
}

static void seal_gold(void)
{
    vdi_seal_result r;
    vdi_error err = { 0 };
    ck_assert_msg(vdi_seal(cat, gold, &r, &err) == 0, "%s", err.message);
}

static void clone_to(const char *parent, const char *child)
{
    vdi_cloner *cl = NULL;
    vdi_error err = { 0 };
    ck_assert_msg(vdi_cloner_new(parent, NULL, &cl, &err) == 0, "%s", err.message);
    ck_assert_msg(vdi_clone_recorded(cat, cl, child, NULL, &err) == 0, "%s", err.message);
    vdi_cloner_free(cl);
}

static int clone_rc(const char *parent, const char *child, vdi_error *err)
{
    vdi_cloner *cl = NULL;
    int rc = vdi_cloner_new(parent, NULL, &cl, err);
    if (rc == 0)
        rc = vdi_clone_recorded(cat, cl, child, NULL, err);
    vdi_cloner_free(cl);
    return rc;
}

static bool immutable(const char *path)
{
    int fd = open(path, O_RDONLY);
    int flags = 0;
    ioctl(fd, FS_IOC_GETFLAGS, &flags);
    close(fd);
    return flags & FS_IMMUTABLE_FL;
}

static void set_immutable(const char *path, bool on)
{
    int fd = open(path, O_RDONLY);
    int flags = 0;
    ck_assert_int_eq(ioctl(fd, FS_IOC_GETFLAGS, &flags), 0);
    flags = on ? flags | FS_IMMUTABLE_FL : flags & ~FS_IMMUTABLE_FL;
    ck_assert_int_eq(ioctl(fd, FS_IOC_SETFLAGS, &flags), 0);
    close(fd);
}

/* ---- seal --------------------------------------------------------------- */

START_TEST(seal_records_and_protects)
{
    seal_gold();
    vdi_gold_info g;
    vdi_error err = { 0 };
    char real[4200];
    ck_assert_ptr_nonnull(realpath(gold, real));
    ck_assert_int_eq(vdi_catalog_gold(cat, real, &g, &err), 0);
    ck_assert_int_eq(g.state, VDI_GOLD_SEALED);
    ck_assert_str_eq(th_hash(gold), vdi_hash_hex(g.fp.hash, (char[80]){ 0 }, 80));
    struct stat st;
    ck_assert_int_eq(stat(gold, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0440);
    ck_assert(g.protections & VDI_PROTECT_READONLY);
    ck_assert(g.protections & VDI_PROTECT_IMMUTABLE);
    ck_assert(immutable(gold));
    /* Sealing again re-checks and succeeds; a non-image is refused. */
    seal_gold();
    th_write_file(path_in("notes.txt"), "not a disk\n", 11);
    vdi_seal_result r;
    ck_assert_int_eq(vdi_seal(cat, path_in("notes.txt"), &r, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "text file"));
    ck_assert_int_eq(vdi_seal(cat, path_in("nope.qcow2"), &r, &err), -ENOENT);
}
END_TEST

START_TEST(seal_refuses_open_writer)
{
    int ready[2];
    ck_assert_int_eq(pipe(ready), 0);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(gold, O_RDWR);
        (void)!write(ready[1], fd >= 0 ? "y" : "n", 1);
        pause();
        _exit(0);
    }
    char c;
    ck_assert_int_eq(read(ready[0], &c, 1), 1);
    ck_assert_int_eq(c, 'y');
    vdi_seal_result r;
    vdi_error err = { 0 };
    int rc = vdi_seal(cat, gold, &r, &err);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    ck_assert_int_eq(rc, -EBUSY);
    ck_assert_ptr_nonnull(strstr(err.message, "open for writing by process"));
    ck_assert(!immutable(gold));
}
END_TEST

/* ---- QEMU's lock, on an unprotected file so only the lock is tested ------- */

START_TEST(lock_blocks_qemu_writers_not_readers)
{
    char kid[4200];
    snprintf(kid, sizeof kid, "%s/ds/kid.qcow2", dir);
    vdi_error err = { 0 };
    ck_assert_int_eq(vdi_clone(gold, kid, NULL, &err), 0);
    int fd;
    ck_assert_msg(vdi_guard_lock(gold, &fd, &err) == 0, "%s", err.message);
    const char *writes[] = {
        "qemu-io -c 'write -P 1 0 4k' %s",
        "qemu-img resize %s 2G",
        "qemu-img snapshot -c snap %s",
        "qemu-img amend -o lazy_refcounts=on %s",
    };
    for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++) {
        char *out = NULL;
        char cmd[256];
        snprintf(cmd, sizeof cmd, writes[i], "%s");
        int rc = th_run(&out, cmd, gold);
        ck_assert_msg(rc != 0 && strstr(out, "Failed to get") && strstr(out, "lock"),
                      "'%s' was not stopped by the lock: %s", writes[i], out);
        free(out);
    }
    /* Committing a child writes its parent: stopped too. */
    char *out = NULL;
    ck_assert_int_ne(th_run(&out, "qemu-img commit %s", kid), 0);
    ck_assert_ptr_nonnull(strstr(out, "lock"));
    free(out);
    /* Readers and backing-file opens work. */
    free(th_must("qemu-io -r -c 'read -P 0x5a 0 4k' %s", gold));
    free(th_must("qemu-io -c 'read -P 0x5a 0 4k' -c 'write -P 7 0 4k' %s", kid));
    vdi_guard_unlock(fd);
    /* Released: a writer gets through again. */
    free(th_must("qemu-io -c 'write -P 0x5a 0 4k' %s", gold));
}
END_TEST

/* ---- every tamper path on a sealed gold ------------------------------------ */

START_TEST(tamper_paths_blocked)
{
    seal_gold();
    char kid[4200];
    snprintf(kid, sizeof kid, "%s/ds/kid.qcow2", dir);
    clone_to(gold, kid);
    free(th_must("qemu-io -c 'write -q -P 9 0 4k' %s", kid)); /* a child in use */
    const char *attempts[] = {
        "qemu-io -c 'write -P 1 0 4k' %s",
        "qemu-img resize %s 2G",
        "qemu-img snapshot -c snap %s",
        "qemu-img amend -o lazy_refcounts=on %s",
        "printf x | dd of=%s bs=1 seek=100 conv=notrunc status=none",
        "truncate -s 0 %s",
        "mv %s.other %s",
        "rm -f %s",
    };
    th_write_file(path_in("gold.qcow2.other"), "impostor", 8);
    for (size_t i = 0; i < sizeof attempts / sizeof attempts[0]; i++) {
        char cmd[512];
        if (strstr(attempts[i], ".other"))
            snprintf(cmd, sizeof cmd, attempts[i], gold, gold);
        else
            snprintf(cmd, sizeof cmd, attempts[i], gold);
        char *out = NULL;
        int rc = th_run(&out, "%s", cmd);
        ck_assert_msg(rc != 0, "'%s' succeeded against a sealed gold: %s", cmd, out);
        free(out);
        vdi_error err = { 0 };
        ck_assert_msg(vdi_guard_check(cat, gold, true, &err) == 0, "after '%s': %s", cmd,
                      err.message);
    }
    char *out = NULL;
    ck_assert_int_ne(th_run(&out, "qemu-img commit %s", kid), 0);
    free(out);
    ck_assert_msg(vdi_guard_check(cat, gold, true, NULL) == 0, "commit changed the gold");
    /* Still cloneable. */
    clone_to(gold, path_in("ds/kid2.qcow2"));
}
END_TEST

/* Protections taken away, then a change: detected before the next clone. */
static void expect_detected(const char *what_changed)
{
    vdi_error err = { 0 };
    ck_assert_int_eq(clone_rc(gold, path_in("ds/after.qcow2"), &err), -ESTALE);
    ck_assert_msg(strstr(err.message, what_changed), "'%s' lacks '%s'", err.message, what_changed);
    ck_assert_msg(strstr(err.message, "2 children orphaned"), "%s", err.message);
    ck_assert_int_eq(access(path_in("ds/after.qcow2"), F_OK), -1);
    char real[4200];
    ck_assert_ptr_nonnull(realpath(gold, real) ? real : (strcpy(real, gold), real));
    vdi_gold_info g;
    ck_assert_int_eq(vdi_catalog_gold(cat, real, &g, NULL), 0);
    ck_assert_int_eq(g.state, VDI_GOLD_TAINTED);
    /* Children are reported orphaned. */
    vdi_scan_entry *v = NULL;
    size_t n = 0;
    ck_assert_int_eq(vdi_scan_dir(cat, path_in("ds"), &v, &n, &err), 0);
    ck_assert_uint_eq(n, 2);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(v[i].parent_status == VDI_PARENT_CHANGED ||
                          v[i].parent_status == VDI_PARENT_MISSING,
                      "%s: %s", v[i].path, vdi_parent_status_name(v[i].parent_status));
    free(v);
}

static void seal_with_two_children(void)
{
    seal_gold();
    clone_to(gold, path_in("ds/a.qcow2"));
    clone_to(gold, path_in("ds/b.qcow2"));
}

START_TEST(detect_write_after_protection_removed)
{
    seal_with_two_children();
    set_immutable(gold, false);
    chmod(gold, 0640);
    free(th_must("qemu-io -c 'write -q -P 1 0 4k' %s", gold)); /* inside allocated data */
    /* The service's background scrub compares content without the catalog. */
    char real[4200];
    ck_assert_ptr_nonnull(realpath(gold, real));
    vdi_gold_info g;
    ck_assert_int_eq(vdi_catalog_gold(cat, real, &g, NULL), 0);
    vdi_error err = { 0 };
    ck_assert_int_eq(vdi_guard_verify_content(&g, &err), -ESTALE);
    expect_detected("mtime");
}
END_TEST

START_TEST(detect_write_with_mtime_restored)
{
    seal_with_two_children();
    set_immutable(gold, false);
    chmod(gold, 0640);
    /* Write, then put the old mtime back: ctime gives it away, the hash decides. */
    free(th_must("touch -r %s %s.ref && printf x | dd of=%s bs=1 seek=500000 conv=notrunc "
                 "status=none && touch -r %s.ref %s",
                 gold, gold, gold, gold, gold));
    expect_detected("content hash differs");
}
END_TEST

START_TEST(detect_replaced_and_deleted)
{
    seal_with_two_children();
    set_immutable(gold, false);
    free(th_must("cp --sparse=always %s %s.copy && mv -f %s.copy %s", gold, gold, gold, gold));
    expect_detected("inode changed");
}
END_TEST

START_TEST(detect_deleted)
{
    seal_with_two_children();
    set_immutable(gold, false);
    ck_assert_int_eq(unlink(gold), 0);
    vdi_error err = { 0 };
    ck_assert_int_eq(vdi_guard_check(cat, gold, false, &err), -ESTALE);
    ck_assert_ptr_nonnull(strstr(err.message, "the file is gone"));
}
END_TEST

START_TEST(owner_change_is_not_tampering)
{
    seal_gold();
    vdi_gold_info g;
    char real[4200];
    ck_assert_ptr_nonnull(realpath(gold, real));
    ck_assert_int_eq(vdi_catalog_gold(cat, real, &g, NULL), 0);
    ck_assert_int_eq(vdi_guard_verify_content(&g, NULL), 0);
    /* What libvirt's DAC driver does when a domain starts: chown. */
    set_immutable(gold, false);
    ck_assert_int_eq(chown(gold, 0, 0), 0);
    set_immutable(gold, true);
    vdi_error err = { 0 };
    ck_assert_msg(vdi_guard_check(cat, gold, false, &err) == 0, "%s", err.message);
    clone_to(gold, path_in("ds/fine.qcow2"));
}
END_TEST

START_TEST(unseal_only_without_children)
{
    seal_gold();
    clone_to(gold, path_in("ds/a.qcow2"));
    /* A child the catalog does not know, beside the gold. */
    vdi_error err = { 0 };
    ck_assert_int_eq(vdi_clone(gold, path_in("stray.qcow2"), NULL, &err), 0);
    size_t orphaned = 0;
    ck_assert_int_eq(vdi_unseal(cat, gold, false, NULL, 0, &orphaned, &err), -EBUSY);
    ck_assert_ptr_nonnull(strstr(err.message, "2 children"));
    ck_assert_int_eq(vdi_unseal(cat, gold, true, NULL, 0, &orphaned, &err), 0);
    ck_assert_uint_eq(orphaned, 2);
    ck_assert(!immutable(gold));
    ck_assert_int_eq(vdi_guard_check(cat, gold, false, &err), -ENOENT);
}
END_TEST

/* ---- merge --------------------------------------------------------------- */

static void io(const char *path, const char *cmds)
{
    char *out = th_must("qemu-io %s %s", cmds, path);
    ck_assert_msg(!strstr(out, "failed"), "%s", out);
    free(out);
}

static int merge(const char *child, vdi_merge_mode mode, const char *target, vdi_error *err)
{
    vdi_merge_plan *plan = NULL;
    int rc = vdi_merge_plan_new(cat, child, mode, target, NULL, 0, &plan, err);
    if (rc == 0)
        rc = vdi_merge_execute(cat, plan, NULL, NULL, err);
    vdi_merge_plan_free(plan);
    return rc;
}

START_TEST(merge_three_modes)
{
    /* gold (sealed) <- mid <- top, with data at each level. */
    seal_gold();
    char mid[4200], top[4200];
    snprintf(mid, sizeof mid, "%s/ds/mid.qcow2", dir);
    snprintf(top, sizeof top, "%s/ds/top.qcow2", dir);
    clone_to(gold, mid);
    io(mid, "-c 'write -q -P 0x11 1M 64k'");
    clone_to(mid, top);
    io(top, "-c 'write -q -P 0x22 2M 64k'");
    vdi_error err = { 0 };

    /* Into a new image: everything intact. */
    char flat[4200];
    snprintf(flat, sizeof flat, "%s/flat.qcow2", dir);
    ck_assert_msg(merge(top, VDI_MERGE_INTO_NEW, flat, &err) == 0, "%s", err.message);
    io(flat, "-r -c 'read -q -P 0x5a 0 64k' -c 'read -q -P 0x11 1M 64k' -c 'read -q -P 0x22 2M 64k'");
    free(th_must("qemu-img check -q %s", flat));
    vdi_image *img = NULL;
    ck_assert_int_eq(vdi_image_open(flat, &img, &err), 0);
    ck_assert_ptr_null(vdi_image_backing_name(img));
    vdi_image_close(img);
    ck_assert_int_eq(access(top, F_OK), 0);
    ck_assert_int_eq(merge(top, VDI_MERGE_INTO_NEW, flat, &err), -EEXIST);

    /* Into the sealed gold: refused. */
    ck_assert_int_eq(merge(mid, VDI_MERGE_INTO_PARENT, NULL, &err), -EPERM);
    ck_assert_ptr_nonnull(strstr(err.message, "sealed gold"));

    /* Into a parent with another child: refused, naming it. */
    char sib[4200];
    snprintf(sib, sizeof sib, "%s/ds/sibling.qcow2", dir);
    clone_to(mid, sib);
    ck_assert_int_eq(merge(top, VDI_MERGE_INTO_PARENT, NULL, &err), -EBUSY);
    ck_assert_ptr_nonnull(strstr(err.message, "sibling.qcow2"));
    uint64_t bytes;
    ck_assert_int_eq(vdi_child_delete(cat, sib, &bytes, &err), 0);

    /* Into its parent: the parent holds both levels, the child is gone. */
    ck_assert_msg(merge(top, VDI_MERGE_INTO_PARENT, NULL, &err) == 0, "%s", err.message);
    ck_assert_int_eq(access(top, F_OK), -1);
    io(mid, "-r -c 'read -q -P 0x11 1M 64k' -c 'read -q -P 0x22 2M 64k' -c 'read -q -P 0x5a 0 64k'");
    free(th_must("qemu-img check -q %s", mid));
    vdi_child_info ci;
    ck_assert_int_eq(vdi_catalog_child(cat, top, &ci, NULL), -ENOENT);
    ck_assert_msg(vdi_guard_check(cat, gold, true, &err) == 0, "%s", err.message);
}
END_TEST

START_TEST(merge_to_ancestor)
{
    /* base (unsealed qcow2) <- l1 <- l2 <- l3: merge l3 down to base. */
    char base[4200], l1[4200], l2[4200], l3[4200];
    snprintf(base, sizeof base, "%s/ds/base.qcow2", dir);
    snprintf(l1, sizeof l1, "%s/ds/l1.qcow2", dir);
    snprintf(l2, sizeof l2, "%s/ds/l2.qcow2", dir);
    snprintf(l3, sizeof l3, "%s/ds/l3.qcow2", dir);
    free(th_must("qemu-img create -q -f qcow2 %s 1G", base));
    clone_to(base, l1);
    io(l1, "-c 'write -q -P 1 0 64k'");
    clone_to(l1, l2);
    io(l2, "-c 'write -q -P 2 64k 64k'");
    clone_to(l2, l3);
    io(l3, "-c 'write -q -P 3 128k 64k'");
    vdi_error err = { 0 };
    /* Another child of l2 blocks it. */
    clone_to(l2, path_in("ds/other.qcow2"));
    ck_assert_int_eq(merge(l3, VDI_MERGE_TO_ANCESTOR, base, &err), -EBUSY);
    ck_assert_ptr_nonnull(strstr(err.message, "other.qcow2"));
    ck_assert_int_eq(vdi_child_delete(cat, path_in("ds/other.qcow2"), NULL, &err), 0);
    ck_assert_int_eq(merge(l3, VDI_MERGE_TO_ANCESTOR, path_in("nowhere.qcow2"), &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "is not an ancestor"));

    vdi_merge_plan *plan = NULL;
    ck_assert_int_eq(vdi_merge_plan_new(cat, l3, VDI_MERGE_TO_ANCESTOR, base, NULL, 0, &plan, &err),
                     0);
    ck_assert_ptr_nonnull(strstr(vdi_merge_plan_describe(plan), "l1.qcow2"));
    ck_assert_ptr_nonnull(strstr(vdi_merge_plan_describe(plan), "removes"));
    ck_assert_int_eq(vdi_merge_execute(cat, plan, NULL, NULL, &err), 0);
    vdi_merge_plan_free(plan);
    ck_assert_int_eq(access(l1, F_OK) + access(l2, F_OK) + access(l3, F_OK), -3);
    io(base, "-r -c 'read -q -P 1 0 64k' -c 'read -q -P 2 64k 64k' -c 'read -q -P 3 128k 64k'");
    free(th_must("qemu-img check -q %s", base));
}
END_TEST

START_TEST(cli_merge_searches_configured_datastores)
{
    /* A parent in one place, our child next to it, and a sibling the catalog
     * does not know in a datastore named only by the config. */
    const char *ctl = getenv("VDIPOOLCTL");
    ck_assert_ptr_nonnull(ctl);
    mkdir(path_in("elsewhere"), 0755);
    char parent[4200], conf[4200];
    snprintf(parent, sizeof parent, "%s/parent.qcow2", dir);
    snprintf(conf, sizeof conf, "%s/vdipool.conf", dir);
    free(th_must("qemu-img create -q -f qcow2 %s 1G", parent));
    clone_to(parent, path_in("mine.qcow2"));
    vdi_error err = { 0 };
    ck_assert_int_eq(vdi_clone(parent, path_in("elsewhere/sibling.qcow2"), NULL, &err), 0);
    char text[8400];
    snprintf(text, sizeof text, "datastores = ( { name = \"far\"; path = \"%s/elsewhere\"; } );\n",
             dir);
    th_write_file(conf, text, strlen(text));
    vdi_catalog_close(cat); /* the CLI opens it */
    cat = NULL;
    char *out = NULL;
    int rc = th_run(&out, "VDIPOOL_CONFIG=%s %s --state-dir %s image merge %s --into-parent", conf,
                    ctl, state, path_in("mine.qcow2"));
    ck_assert_int_eq(rc, 1);
    ck_assert_msg(strstr(out, "sibling.qcow2") && strstr(out, "orphan"), "%s", out);
    free(out);
    ck_assert_int_eq(access(path_in("mine.qcow2"), F_OK), 0);
    open_cat();
}
END_TEST

/* ---- reparent ------------------------------------------------------------ */

START_TEST(reparent_after_move)
{
    seal_gold();
    char kid[4200];
    snprintf(kid, sizeof kid, "%s/ds/kid.qcow2", dir);
    clone_to(gold, kid);
    io(kid, "-c 'write -q -P 0x33 4M 4k'");
    mkdir(path_in("moved"), 0755);
    mkdir(path_in("impostor"), 0755);
    /* A different file with the same name elsewhere is refused. */
    free(th_must("qemu-img create -q -f qcow2 %s/impostor/gold.qcow2 1G", dir));
    vdi_error err = { 0 };
    ck_assert_int_eq(vdi_reparent(cat, kid, path_in("impostor/gold.qcow2"), &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "not the parent"));
    /* The operator moves the gold (taking its protection off to do it). */
    set_immutable(gold, false);
    free(th_must("mv %s %s/moved/gold.qcow2", gold, dir));
    vdi_chain *chain = NULL;
    ck_assert_int_eq(vdi_chain_resolve(kid, 0, &chain, &err), -ENOENT);
    ck_assert_msg(vdi_reparent(cat, kid, path_in("moved/gold.qcow2"), &err) == 0, "%s",
                  err.message);
    ck_assert_int_eq(vdi_chain_resolve(kid, 0, &chain, &err), 0);
    vdi_chain_free(chain);
    io(kid, "-r -c 'read -q -P 0x5a 0 64k' -c 'read -q -P 0x33 4M 4k'");
    free(th_must("qemu-img check -q %s", kid));
    char real[4200];
    ck_assert_ptr_nonnull(realpath(path_in("moved/gold.qcow2"), real));
    vdi_gold_info g;
    ck_assert_int_eq(vdi_catalog_gold(cat, real, &g, &err), 0);
    ck_assert(immutable(real));
    vdi_child_info ci;
    ck_assert_int_eq(vdi_catalog_child(cat, kid, &ci, &err), 0);
    ck_assert_str_eq(ci.parent, real);
    /* A child of an unsealed parent has no fingerprint to prove a move with. */
    clone_to(path_in("impostor/gold.qcow2"), path_in("ds/k2.qcow2"));
    ck_assert_int_eq(vdi_reparent(cat, path_in("ds/k2.qcow2"), real, &err), -ENOENT);
    ck_assert_ptr_nonnull(strstr(err.message, "no fingerprint"));
}
END_TEST

/* ---- scan and reconcile ---------------------------------------------------- */

START_TEST(scan_and_reconcile)
{
    seal_gold();
    clone_to(gold, path_in("ds/known.qcow2"));
    vdi_error err = { 0 };
    ck_assert_int_eq(vdi_clone(gold, path_in("ds/unknown.qcow2"), NULL, &err), 0);
    free(th_must("qemu-img create -q -f qcow2 %s/lonely.qcow2 1G && qemu-img create -q -f qcow2 "
                 "-u -b /nonexistent/gone.qcow2 -F qcow2 %s/ds/orphan.qcow2 1G",
                 dir, dir));
    vdi_seal_result r;
    ck_assert_int_eq(vdi_seal(cat, path_in("lonely.qcow2"), &r, &err), 0);
    clone_to(gold, path_in("ds/deleted.qcow2"));
    unlink(path_in("ds/deleted.qcow2"));
    th_write_file(path_in("ds/.vdi-tmp-999999999-0"), "x", 1);

    vdi_scan_entry *v = NULL;
    size_t n = 0;
    ck_assert_int_eq(vdi_scan_dir(cat, dir, &v, &n, &err), 0);
    int seen = 0;
    for (size_t i = 0; i < n; i++) {
        const char *base = strrchr(v[i].path, '/') + 1;
        if (!strcmp(base, "known.qcow2")) {
            ck_assert(v[i].in_catalog && v[i].parent_status == VDI_PARENT_OK && v[i].parent_sealed);
            seen++;
        } else if (!strcmp(base, "unknown.qcow2")) {
            ck_assert(!v[i].in_catalog && v[i].parent_status == VDI_PARENT_OK);
            seen++;
        } else if (!strcmp(base, "orphan.qcow2")) {
            ck_assert_int_eq(v[i].parent_status, VDI_PARENT_MISSING);
            seen++;
        } else if (!strcmp(base, "lonely.qcow2")) {
            ck_assert(v[i].is_gold && v[i].children == 0);
            seen++;
        } else if (!strcmp(base, "gold.qcow2")) {
            ck_assert(v[i].is_gold);
            ck_assert_uint_eq(v[i].children, 2);
            seen++;
        }
    }
    free(v);
    ck_assert_int_eq(seen, 5);

    vdi_reconcile_report rep;
    ck_assert_int_eq(vdi_reconcile(cat, path_in("ds"), &rep, &err), 0);
    ck_assert_uint_eq(rep.dropped_records, 1);
    ck_assert_uint_eq(rep.unknown_children, 2); /* unknown.qcow2 and orphan.qcow2 */
    ck_assert_uint_eq(rep.orphans, 1);
    ck_assert_uint_eq(rep.temporaries_removed, 1);
    ck_assert_int_eq(access(path_in("ds/unknown.qcow2"), F_OK), 0); /* reported, not touched */
}
END_TEST

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

static void do_clone(void) { clone_to(gold, path_in("ds/crash.qcow2")); }
static void do_batch(void)
{
    vdi_cloner *cl = NULL;
    ck_assert_int_eq(vdi_cloner_new(gold, NULL, &cl, NULL), 0);
    char *paths[3] = { path_in("ds/b1.qcow2"), path_in("ds/b2.qcow2"), path_in("ds/b3.qcow2") };
    vdi_clone_batch_recorded(cat, cl, paths, 3, NULL, NULL, NULL);
    vdi_cloner_free(cl);
}
static void do_delete(void) { vdi_child_delete(cat, path_in("ds/crash.qcow2"), NULL, NULL); }
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
    }

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
static void do_merge(void) { merge(merge_child, VDI_MERGE_INTO_PARENT, NULL, NULL); }
static char reparent_child[4200], reparent_target[4200];
static void do_reparent(void) { vdi_reparent(cat, reparent_child, reparent_target, NULL); }

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

int main(void)
{
    Suite *s = suite_create("guard");
    TCase *tc = tcase_create("guard");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, seal_records_and_protects);
    tcase_add_test(tc, seal_refuses_open_writer);
    tcase_add_test(tc, lock_blocks_qemu_writers_not_readers);
    tcase_add_test(tc, tamper_paths_blocked);
    tcase_add_test(tc, detect_write_after_protection_removed);
    tcase_add_test(tc, detect_write_with_mtime_restored);
    tcase_add_test(tc, detect_replaced_and_deleted);
    tcase_add_test(tc, detect_deleted);
    tcase_add_test(tc, owner_change_is_not_tampering);
    tcase_add_test(tc, unseal_only_without_children);
    suite_add_tcase(s, tc);
    TCase *tm = tcase_create("merge");
    tcase_set_timeout(tm, 120);
    tcase_add_checked_fixture(tm, setup, teardown);
    tcase_add_test(tm, merge_three_modes);
    tcase_add_test(tm, merge_to_ancestor);
    tcase_add_test(tm, cli_merge_searches_configured_datastores);
    tcase_add_test(tm, reparent_after_move);
    tcase_add_test(tm, scan_and_reconcile);
    suite_add_tcase(s, tm);
    TCase *tr = tcase_create("recovery");
    tcase_set_timeout(tr, 120);
    tcase_add_checked_fixture(tr, setup, teardown);
    tcase_add_test(tr, crash_during_clone);
    tcase_add_test(tr, crash_during_seal);
    tcase_add_test(tr, live_operation_is_not_recovered);
    tcase_add_test(tr, crash_during_merge_and_reparent);
    suite_add_tcase(s, tr);
    return th_run_suite(s) ? 1 : 0;
}
