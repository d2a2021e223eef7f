/* test_guard.c — a sealed gold cannot change: every tamper path is blocked
 * or detected before the next clone, QEMU's lock keeps writers out, and a
 * gold is unsealed only without children. */
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

/* ---- seal --------------------------------------------------------------- */

START_TEST(seal_records_and_protects)
{
    seal_gold();
    vdi_gold_info g;
    vdi_error err = {0};
    char real[4200];
    ck_assert_ptr_nonnull(realpath(gold, real));
    ck_assert_int_eq(vdi_catalog_gold(cat, real, &g, &err), 0);
    ck_assert_int_eq(g.state, VDI_GOLD_SEALED);
    ck_assert_str_eq(th_hash(gold), vdi_hash_hex(g.fp.hash, (char[80]){0}, 80));
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
    vdi_error err = {0};
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
    vdi_error err = {0};
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
        vdi_error err = {0};
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
    vdi_error err = {0};
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
    vdi_scan_free(v, n);
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
    vdi_error err = {0};
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
    vdi_error err = {0};
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
    vdi_error err = {0};
    ck_assert_msg(vdi_guard_check(cat, gold, false, &err) == 0, "%s", err.message);
    clone_to(gold, path_in("ds/fine.qcow2"));
}
END_TEST

START_TEST(unseal_only_without_children)
{
    seal_gold();
    clone_to(gold, path_in("ds/a.qcow2"));
    /* A child the catalog does not know, beside the gold. */
    vdi_error err = {0};
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

/* A fingerprint read through a stream (a host's copy of a gold, downloaded
 * through libvirt) equals the file's, whatever the sizes of the pieces, and
 * one changed byte changes it. */
START_TEST(streamed_hash_equals_file_hash)
{
    uint8_t want[VDI_HASH_SIZE], got[VDI_HASH_SIZE];
    vdi_error err = {0};
    ck_assert_int_eq(vdi_content_hash(gold, want, &err), 0);
    FILE *f = fopen(gold, "rb");
    ck_assert_ptr_nonnull(f);
    static const size_t pieces[] = {1, 4096, 65536, 100000, 7};
    for (size_t k = 0; k < 5; k++) {
        rewind(f);
        vdi_hasher *h = vdi_hasher_new();
        ck_assert_ptr_nonnull(h);
        char *buf = malloc(pieces[k]);
        size_t n;
        while ((n = fread(buf, 1, pieces[k], f)) > 0)
            vdi_hasher_update(h, buf, n);
        free(buf);
        ck_assert_int_eq(vdi_hasher_finish(h, got), 0);
        ck_assert_msg(!memcmp(want, got, VDI_HASH_SIZE), "pieces of %zu hash differently",
                      pieces[k]);
    }
    fclose(f);
    vdi_hasher *h = vdi_hasher_new();
    uint8_t byte = 1;
    vdi_hasher_update(h, &byte, 1);
    ck_assert_int_eq(vdi_hasher_finish(h, got), 0);
    ck_assert(memcmp(want, got, VDI_HASH_SIZE));
}
END_TEST

TH_MAIN("guard",
        {"guard",
         engine_setup,
         engine_teardown,
         120,
         {seal_records_and_protects, seal_refuses_open_writer, lock_blocks_qemu_writers_not_readers,
          tamper_paths_blocked, detect_write_after_protection_removed,
          detect_write_with_mtime_restored, detect_replaced_and_deleted, detect_deleted,
          owner_change_is_not_tampering, unseal_only_without_children,
          streamed_hash_equals_file_hash, NULL}})
