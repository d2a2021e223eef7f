/* test_scan.c — finding every image of a directory with its parent's
 * status, and reconciling the catalog with what is on disk. */
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

/* ---- scan and reconcile ---------------------------------------------------- */

START_TEST(scan_and_reconcile)
{
    seal_gold();
    clone_to(gold, path_in("ds/known.qcow2"));
    vdi_error err = {0};
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
    vdi_scan_free(v, n);
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

TH_MAIN("scan", {"scan", engine_setup, engine_teardown, 120, {scan_and_reconcile, NULL}})
