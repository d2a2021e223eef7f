/* engine_fixture.c — what the engine suites (guard, merge, scan, recovery)
 * share: a temp directory with a 1 GiB qcow2 gold holding a known pattern,
 * a datastore directory and an open catalog, and small helpers. */
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

char *dir;
char state[4200], gold[4200];
vdi_catalog *cat;

char *path_in(const char *name)
{
    return th_path(dir, name);
}

void open_cat(void)
{
    vdi_error err = {0};
    ck_assert_msg(vdi_catalog_open(state, &cat, &err) == 0, "%s", err.message);
}

void engine_setup(void)
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

void engine_teardown(void)
{
    vdi_catalog_close(cat);
    cat = NULL;
    th_tempdir_remove(dir);
    dir = NULL;
}

void seal_gold(void)
{
    vdi_seal_result r;
    vdi_error err = {0};
    ck_assert_msg(vdi_seal(cat, gold, &r, &err) == 0, "%s", err.message);
}

void clone_to(const char *parent, const char *child)
{
    vdi_cloner *cl = NULL;
    vdi_error err = {0};
    ck_assert_msg(vdi_cloner_new(parent, NULL, &cl, &err) == 0, "%s", err.message);
    ck_assert_msg(vdi_clone_recorded(cat, cl, child, NULL, &err) == 0, "%s", err.message);
    vdi_cloner_free(cl);
}

int clone_rc(const char *parent, const char *child, vdi_error *err)
{
    vdi_cloner *cl = NULL;
    int rc = vdi_cloner_new(parent, NULL, &cl, err);
    if (rc == 0)
        rc = vdi_clone_recorded(cat, cl, child, NULL, err);
    vdi_cloner_free(cl);
    return rc;
}

bool immutable(const char *path)
{
    int fd = open(path, O_RDONLY);
    int flags = 0;
    ioctl(fd, FS_IOC_GETFLAGS, &flags);
    close(fd);
    return flags & FS_IMMUTABLE_FL;
}

void set_immutable(const char *path, bool on)
{
    int fd = open(path, O_RDONLY);
    int flags = 0;
    ck_assert_int_eq(ioctl(fd, FS_IOC_GETFLAGS, &flags), 0);
    flags = on ? flags | FS_IMMUTABLE_FL : flags & ~FS_IMMUTABLE_FL;
    ck_assert_int_eq(ioctl(fd, FS_IOC_SETFLAGS, &flags), 0);
    close(fd);
}

void io(const char *path, const char *cmds)
{
    char *out = th_must("qemu-io %s %s", cmds, path);
    ck_assert_msg(!strstr(out, "failed"), "%s", out);
    free(out);
}

int merge(const char *child, vdi_merge_mode mode, const char *target, vdi_error *err)
{
    vdi_merge_plan *plan = NULL;
    int rc = vdi_merge_plan_new(cat, child, mode, target, NULL, 0, &plan, err);
    if (rc == 0)
        rc = vdi_merge_execute(cat, plan, NULL, NULL, err);
    vdi_merge_plan_free(plan);
    return rc;
}
