/* test_merge.c — merges in all three modes and reparenting after a move,
 * each refusal named, data read back through QEMU. */
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

/* ---- merge --------------------------------------------------------------- */

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
    vdi_error err = {0};

    /* Into a new image: everything intact. */
    char flat[4200];
    snprintf(flat, sizeof flat, "%s/flat.qcow2", dir);
    ck_assert_msg(merge(top, VDI_MERGE_INTO_NEW, flat, &err) == 0, "%s", err.message);
    io(flat,
       "-r -c 'read -q -P 0x5a 0 64k' -c 'read -q -P 0x11 1M 64k' -c 'read -q -P 0x22 2M 64k'");
    free(th_must("qemu-img check -q %s", flat));
    vdi_image *img = NULL;
    ck_assert_int_eq(vdi_image_open(flat, &img, &err), 0);
    ck_assert_ptr_null(vdi_image_backing_name(img));
    vdi_image_close(img);
    ck_assert_int_eq(access(top, F_OK), 0);
    ck_assert_int_eq(merge(top, VDI_MERGE_INTO_NEW, flat, &err), -EEXIST);
    /* A bare file name is a file in the current directory (its free space
     * is the current directory's, not "0 B"). */
    char cwd[4200];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    ck_assert_int_eq(chdir(dir), 0);
    int relative = merge(top, VDI_MERGE_INTO_NEW, "flat2.qcow2", &err);
    ck_assert_int_eq(chdir(cwd), 0);
    ck_assert_msg(relative == 0, "%s", err.message);
    io(th_path(dir, "flat2.qcow2"), "-r -c 'read -q -P 0x22 2M 64k'");

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
    io(mid,
       "-r -c 'read -q -P 0x11 1M 64k' -c 'read -q -P 0x22 2M 64k' -c 'read -q -P 0x5a 0 64k'");
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
    vdi_error err = {0};
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
    vdi_error err = {0};
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
    vdi_error err = {0};
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

TH_MAIN("merge", {"merge",
                  engine_setup,
                  engine_teardown,
                  120,
                  {merge_three_modes, merge_to_ancestor, cli_merge_searches_configured_datastores,
                   reparent_after_move, NULL}})
