/* test_clone.c — children made by the engine, judged by QEMU itself:
 * `qemu-img check`, `qemu-img info --backing-chain` and `qemu-io` reading and
 * writing through the chain, for raw and qcow2 parents of 1 GiB, 64 GiB and
 * 2 TiB. Also the batch path, refusals, and the CLI. */
#include "helpers.h"
#include "vdi_engine.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *dir;

static void setup(void)
{
    ck_assert_msg(th_have("qemu-img") && th_have("qemu-io"),
                  "qemu-img and qemu-io are required (apt-get install qemu-utils)");
    dir = th_tempdir("clone");
    /* vdipoolctl records children in the catalog: keep it in the test's directory. */
    char state[4200];
    snprintf(state, sizeof state, "%s/state", dir);
    setenv("VDIPOOL_STATE_DIR", state, 1);
}

static void teardown(void)
{
    th_tempdir_remove(dir);
    dir = NULL;
}

static char *path_in(const char *name)
{
    return th_path(dir, name);
}

static void qemu_img_check(const char *path)
{
    char *out = th_must("qemu-img check %s", path);
    ck_assert_msg(strstr(out, "No errors were found"), "qemu-img check %s: %s", path, out);
    free(out);
}

/* Runs qemu-io commands on an image and fails on any failed command or
 * pattern mismatch. */
static void qemu_io(const char *fmt, const char *path, const char *cmds)
{
    char *out = th_must("qemu-io -f %s %s %s", fmt, cmds, path);
    ck_assert_msg(!strstr(out, "failed") && !strstr(out, "error") && !strstr(out, "Error"),
                  "qemu-io on %s: %s", path, out);
    free(out);
}

static const struct {
    const char *format;
    uint64_t size;
} parents[] = {
    {"qcow2", 1ULL << 30}, {"qcow2", 64ULL << 30}, {"qcow2", 2ULL << 40},
    {"raw", 1ULL << 30},   {"raw", 64ULL << 30},   {"raw", 2ULL << 40},
};

START_TEST(child_is_valid_and_reads_through)
{
    const char *fmt = parents[_i].format;
    uint64_t size = parents[_i].size;
    char parent[4096], child[4096], grandchild[4096], cmds[512];
    snprintf(parent, sizeof parent, "%s/gold.%s", dir, fmt);
    snprintf(child, sizeof child, "%s/child.qcow2", dir);
    snprintf(grandchild, sizeof grandchild, "%s/grandchild.qcow2", dir);

    free(th_must("qemu-img create -q -f %s %s %llu", fmt, parent, (unsigned long long)size));
    /* Patterns at the start and the very end of the disk. */
    snprintf(cmds, sizeof cmds, "-c 'write -q -P 0x5a 0 64k' -c 'write -q -P 0xa5 %llu 64k'",
             (unsigned long long)(size - 65536));
    qemu_io(fmt, parent, cmds);
    char before[80];
    snprintf(before, sizeof before, "%s", th_hash(parent));
    struct stat st_before, st_after;
    ck_assert_int_eq(stat(parent, &st_before), 0);

    vdi_error err = {0};
    ck_assert_msg(vdi_clone(parent, child, NULL, &err) == 0, "%s", err.message);
    qemu_img_check(child);

    /* QEMU sees exactly the chain we meant. */
    char *out = th_must("qemu-img info --backing-chain --output=json %s", child);
    json_error_t jerr;
    json_t *info = json_loads(out, 0, &jerr);
    ck_assert_msg(json_is_array(info) && json_array_size(info) == 2, "info: %s", out);
    json_t *c0 = json_array_get(info, 0), *c1 = json_array_get(info, 1);
    ck_assert_str_eq(json_string_value(json_object_get(c0, "format")), "qcow2");
    ck_assert_str_eq(json_string_value(json_object_get(c0, "backing-filename")), parent);
    ck_assert_str_eq(json_string_value(json_object_get(c0, "backing-filename-format")), fmt);
    ck_assert_uint_eq(json_integer_value(json_object_get(c0, "virtual-size")), size);
    ck_assert_str_eq(json_string_value(json_object_get(c1, "filename")), parent);
    ck_assert_str_eq(json_string_value(json_object_get(c1, "format")), fmt);
    ck_assert_uint_eq(json_integer_value(json_object_get(c1, "virtual-size")), size);
    json_decref(info);
    free(out);

    /* Reads fall through; writes land in the child. */
    snprintf(
        cmds, sizeof cmds,
        "-c 'read -q -P 0x5a 0 64k' -c 'read -q -P 0xa5 %llu 64k' -c 'write -q -P 0x77 4096 4k' "
        "-c 'read -q -P 0x77 4096 4k' -c 'read -q -P 0x5a 8192 56k' -c 'read -q -P 0 %llu 4k'",
        (unsigned long long)(size - 65536), (unsigned long long)(size / 2));
    qemu_io("qcow2", child, cmds);
    qemu_img_check(child);
    ck_assert_str_eq(before, th_hash(parent));
    ck_assert_int_eq(stat(parent, &st_after), 0);
    ck_assert_int_eq(st_before.st_mtim.tv_sec, st_after.st_mtim.tv_sec);
    ck_assert_int_eq(st_before.st_mtim.tv_nsec, st_after.st_mtim.tv_nsec);
    qemu_io(fmt, parent, "-r -c 'read -q -P 0x5a 4096 4k'");

    /* A grandchild reads through two levels. */
    ck_assert_msg(vdi_clone(child, grandchild, NULL, &err) == 0, "%s", err.message);
    qemu_img_check(grandchild);
    snprintf(cmds, sizeof cmds,
             "-c 'read -q -P 0x5a 0 4k' -c 'read -q -P 0x77 4096 4k' -c 'read -q -P 0xa5 %llu 64k' "
             "-c 'write -q -P 0x11 0 4k' -c 'read -q -P 0x11 0 4k'",
             (unsigned long long)(size - 65536));
    qemu_io("qcow2", grandchild, cmds);
    qemu_io("qcow2", child, "-r -c 'read -q -P 0x5a 0 4k'");
    ck_assert_str_eq(before, th_hash(parent));

    vdi_chain *chain = NULL;
    ck_assert_msg(vdi_chain_resolve(grandchild, 0, &chain, &err) == 0, "%s", err.message);
    ck_assert_uint_eq(vdi_chain_depth(chain), 2);
    ck_assert_str_eq(vdi_image_path(vdi_chain_root(chain)), parent);
    vdi_chain_free(chain);
}
END_TEST

START_TEST(cluster_sizes_and_larger_children)
{
    char parent[4096];
    snprintf(parent, sizeof parent, "%s/gold.qcow2", dir);
    free(th_must("qemu-img create -q -f qcow2 %s 2T", parent));
    qemu_io("qcow2", parent, "-c 'write -q -P 0x42 1M 1M'");
    struct {
        uint32_t cluster;
        int extl2;
        uint64_t size;
    } cases[] = {
        {512, 0, 0},   {4096, 0, 0}, /* 8 MiB L1, two refcount blocks */
        {65536, 0, 0}, {65536, 1, 0}, {131072, 1, 0}, {2097152, 1, 0}, {131072, 1, 3ULL << 40},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        vdi_clone_options o;
        vdi_clone_options_init(&o);
        o.cluster_size = cases[i].cluster;
        o.extended_l2 = cases[i].extl2;
        o.virtual_size = cases[i].size;
        o.sync = false;
        char child[4096];
        snprintf(child, sizeof child, "%s/c%zu.qcow2", dir, i);
        vdi_error err = {0};
        if (cases[i].cluster == 512) {
            /* 2 TiB with 512-byte clusters needs a larger L1 than QEMU allows. */
            ck_assert_int_eq(vdi_clone(parent, child, &o, &err), -EINVAL);
            ck_assert_ptr_nonnull(strstr(err.message, "larger cluster size"));
            ck_assert_int_eq(access(child, F_OK), -1);
            continue;
        }
        ck_assert_msg(vdi_clone(parent, child, &o, &err) == 0, "case %zu: %s", i, err.message);
        qemu_img_check(child);
        qemu_io("qcow2", child,
                "-c 'read -q -P 0x42 1M 1M' -c 'write -q -P 9 1M 4k' -c 'read -q -P 9 1M 4k'");
        qemu_img_check(child);
        char *out = th_must("qemu-img info --output=json %s", child);
        json_t *info = json_loads(out, 0, NULL);
        ck_assert_uint_eq(json_integer_value(json_object_get(info, "cluster-size")),
                          cases[i].cluster);
        ck_assert_uint_eq(json_integer_value(json_object_get(info, "virtual-size")),
                          cases[i].size ? cases[i].size : 2ULL << 40);
        json_t *spec = json_object_get(json_object_get(info, "format-specific"), "data");
        ck_assert_int_eq(json_is_true(json_object_get(spec, "extended-l2")), cases[i].extl2);
        json_decref(info);
        free(out);
    }
}
END_TEST

START_TEST(refusals_leave_nothing_behind)
{
    char parent[4096], child[4096];
    snprintf(parent, sizeof parent, "%s/gold.raw", dir);
    snprintf(child, sizeof child, "%s/child.qcow2", dir);
    free(th_must("qemu-img create -q -f raw %s 1G", parent));
    vdi_error err = {0};
    vdi_clone_options o;
    vdi_clone_options_init(&o);

    /* Smaller than the parent. */
    o.virtual_size = 1ULL << 20;
    ck_assert_int_eq(vdi_clone(parent, child, &o, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "cannot be smaller"));

    /* Never overwrites, and the existing file is untouched. */
    th_write_file(child, "keep me", 7);
    vdi_clone_options_init(&o);
    ck_assert_int_eq(vdi_clone(parent, child, &o, &err), -EEXIST);
    ck_assert_ptr_nonnull(strstr(err.message, "already exists"));
    char *out = th_must("cat %s", child);
    ck_assert_str_eq(out, "keep me");
    free(out);

    /* Missing directory, missing parent, directory as parent. */
    ck_assert_int_eq(vdi_clone(parent, path_in("no/such/dir/c.qcow2"), &o, &err), -ENOENT);
    ck_assert_ptr_nonnull(strstr(err.message, "does not exist"));
    ck_assert_int_eq(vdi_clone(path_in("nope.qcow2"), path_in("c2.qcow2"), &o, &err), -ENOENT);
    ck_assert_int_eq(vdi_clone(dir, path_in("c3.qcow2"), &o, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "directory"));

    /* Too deep: a child of a child with max_depth 1. */
    char c1[4096];
    snprintf(c1, sizeof c1, "%s/level1.qcow2", dir);
    ck_assert_int_eq(vdi_clone(parent, c1, &o, &err), 0);
    o.max_depth = 1;
    ck_assert_int_eq(vdi_clone(c1, path_in("level2.qcow2"), &o, &err), -ELOOP);
    o.max_depth = 2;
    ck_assert_int_eq(vdi_clone(c1, path_in("level2.qcow2"), &o, &err), 0);
    ck_assert_int_eq(vdi_clone(path_in("level2.qcow2"), path_in("level3.qcow2"), &o, &err), -ELOOP);
    ck_assert_ptr_nonnull(strstr(err.message, "limit of 1"));

    /* No temporary file survives any of it. */
    out = th_must("ls -A %s", dir);
    ck_assert_msg(!strstr(out, VDI_TEMP_PREFIX), "leftovers: %s", out);
    free(out);
}
END_TEST

START_TEST(dirty_parent_refused)
{
    char parent[4096];
    snprintf(parent, sizeof parent, "%s/busy.qcow2", dir);
    free(th_must("qemu-img create -q -f qcow2 %s 1G", parent));
    /* Set the dirty bit as QEMU does while it holds the image with lazy refcounts. */
    int fd = open(parent, O_RDWR);
    uint8_t b = 1;
    ck_assert_int_eq(pwrite(fd, &b, 1, 79), 1);
    close(fd);
    vdi_error err = {0};
    ck_assert_int_eq(vdi_clone(parent, path_in("c.qcow2"), NULL, &err), -EBUSY);
    ck_assert_ptr_nonnull(strstr(err.message, "dirty"));
}
END_TEST

START_TEST(batch_stage_commit)
{
    char parent[4096];
    snprintf(parent, sizeof parent, "%s/gold.qcow2", dir);
    free(th_must("qemu-img create -q -f qcow2 %s 64G", parent));
    qemu_io("qcow2", parent, "-c 'write -q -P 0x33 0 1M'");
    vdi_cloner *cl = NULL;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_cloner_new(parent, NULL, &cl, &err), 0);
    for (int i = 0; i < 50; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/d%02d.qcow2", dir, i);
        ck_assert_msg(vdi_cloner_stage(cl, p, &err) == 0, "%s", err.message);
        ck_assert_int_eq(access(p, F_OK), -1); /* not under its real name before commit */
    }
    size_t made = 0;
    ck_assert_msg(vdi_cloner_commit(cl, &made, &err) == 0, "%s", err.message);
    ck_assert_uint_eq(made, 50);
    vdi_cloner_free(cl);
    qemu_img_check(path_in("d00.qcow2"));
    qemu_img_check(path_in("d49.qcow2"));
    qemu_io("qcow2", path_in("d17.qcow2"), "-c 'read -q -P 0x33 0 1M'");

    /* Freeing a cloner with staged children removes them. */
    ck_assert_int_eq(vdi_cloner_new(parent, NULL, &cl, &err), 0);
    ck_assert_int_eq(vdi_cloner_stage(cl, path_in("never.qcow2"), &err), 0);
    vdi_cloner_free(cl);
    char *out = th_must("ls -A %s", dir);
    ck_assert_msg(!strstr(out, VDI_TEMP_PREFIX) && !strstr(out, "never"), "leftovers: %s", out);
    free(out);
}
END_TEST

START_TEST(sweep_removes_only_dead_writers_files)
{
    char mine[64], dead[64];
    snprintf(mine, sizeof mine, "%s%ld-0", VDI_TEMP_PREFIX, (long)getpid());
    snprintf(dead, sizeof dead, "%s%d-0", VDI_TEMP_PREFIX, 999999999);
    th_write_file(path_in(mine), "x", 1);
    th_write_file(path_in(dead), "x", 1);
    th_write_file(path_in("keep.qcow2"), "x", 1);
    vdi_error err = {0};
    ck_assert_int_eq(vdi_clone_sweep_temporaries(dir, &err), 1);
    ck_assert_int_eq(access(path_in(mine), F_OK), 0);
    ck_assert_int_eq(access(path_in(dead), F_OK), -1);
    ck_assert_int_eq(access(path_in("keep.qcow2"), F_OK), 0);
}
END_TEST

START_TEST(cli_inspect_and_clone)
{
    const char *ctl = getenv("VDIPOOLCTL");
    ck_assert_msg(ctl != NULL, "VDIPOOLCTL is set by ctest");
    char parent[4096];
    snprintf(parent, sizeof parent, "%s/win11.raw", dir);
    free(th_must("qemu-img create -q -f raw %s 1G", parent));
    char *out = th_must("%s image clone %s %s/one.qcow2", ctl, parent, dir);
    ck_assert_ptr_nonnull(strstr(out, "made"));
    free(out);
    out = th_must("%s image clone %s %s --count 12", ctl, parent, dir);
    ck_assert_ptr_nonnull(strstr(out, "made 12 children"));
    free(out);
    qemu_img_check(path_in("win11-012.qcow2"));
    out = th_must("%s image clone %s/one.qcow2 %s --count 3 --prefix desk- --json", ctl, dir, dir);
    json_t *j = json_loads(out, 0, NULL);
    ck_assert_uint_eq(json_array_size(json_object_get(j, "children")), 3);
    json_decref(j);
    free(out);

    out = th_must("%s image inspect --json %s/desk-002.qcow2", ctl, dir);
    j = json_loads(out, 0, NULL);
    ck_assert_msg(j != NULL, "%s", out);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "depth")), 2);
    ck_assert_str_eq(json_string_value(json_object_get(j, "root")), parent);
    ck_assert_uint_eq(json_array_size(json_object_get(j, "chain")), 3);
    ck_assert_str_eq(json_string_value(json_object_get(j, "format")), "qcow2");
    ck_assert_uint_eq(json_integer_value(json_object_get(j, "virtual_size")), 1ULL << 30);
    json_decref(j);
    free(out);

    /* Clashing batch names are refused before anything is written. */
    char *msg = NULL;
    int rc = th_run(&msg, "%s image clone %s %s --count 20", ctl, parent, dir);
    ck_assert_int_eq(rc, 1);
    ck_assert_ptr_nonnull(strstr(msg, "win11-001.qcow2 already exists"));
    free(msg);
    ck_assert_int_eq(access(path_in("win11-013.qcow2"), F_OK), -1);

    /* Errors name the file; bad usage exits 2. */
    rc = th_run(&msg, "%s image inspect %s/missing.qcow2", ctl, dir);
    ck_assert_int_eq(rc, 1);
    ck_assert_ptr_nonnull(strstr(msg, "missing.qcow2 does not exist"));
    free(msg);
    rc = th_run(&msg, "%s image clone %s %s/x.qcow2 --size 12Q", ctl, parent, dir);
    ck_assert_int_eq(rc, 2);
    ck_assert_ptr_nonnull(strstr(msg, "--size '12Q'"));
    free(msg);
}
END_TEST

TH_MAIN("clone",
        {"qemu",
         setup,
         teardown,
         300,
         {cluster_sizes_and_larger_children, refusals_leave_nothing_behind, dirty_parent_refused,
          batch_stage_commit, sweep_removes_only_dead_writers_files, cli_inspect_and_clone, NULL},
         .loop_test = child_is_valid_and_reads_through,
         .loop_end = (int)(sizeof parents / sizeof parents[0])})
