/* test_space.c — datastores that never fill, on a small loop-mounted ext4
 * made, mounted and unmounted by each test: measurement, admission and its
 * refusals, ENOSPC during a clone, a merge refused for space, learned growth. */
#include "helpers.h"
#include "vdi_engine.h"

#include <errno.h>
#include <jansson.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *dir;
static char mnt[1024], img[1024], gold[1024];
static vdi_catalog *cat;

static char *in_mnt(const char *name)
{
    return th_path(mnt, name);
}

static void unmount(void)
{
    if (mnt[0])
        th_run(NULL, "mountpoint -q %s && umount %s", mnt, mnt);
}

static void setup(void)
{
    ck_assert_msg(getuid() == 0, "the space tests mount a filesystem: run them as root");
    dir = th_tempdir("space");
    snprintf(mnt, sizeof mnt, "%s/mnt", dir);
    snprintf(img, sizeof img, "%s/fs.img", dir);
    snprintf(gold, sizeof gold, "%s/gold.qcow2", dir);
    mkdir(mnt, 0755);
    free(th_must("truncate -s 64M %s && mkfs.ext4 -q -F -m 0 -b 4096 %s && mount -o loop %s %s",
                 img, img, img, mnt));
    free(th_must("qemu-img create -q -f qcow2 %s 1G && qemu-io -c 'write -q -P 0x5a 0 1M' %s", gold,
                 gold));
    char state[4200];
    snprintf(state, sizeof state, "%s/state", dir);
    vdi_error err = {0};
    ck_assert_msg(vdi_catalog_open(state, &cat, &err) == 0, "%s", err.message);
}

static void teardown(void)
{
    if (!dir)
        return;
    vdi_catalog_close(cat);
    cat = NULL;
    /* Unmount by the mount point this test made; the loop device goes with it. */
    unmount();
    th_tempdir_remove(dir);
    dir = NULL;
}

static void clone_to(const char *parent, const char *child)
{
    vdi_cloner *cl = NULL;
    vdi_error err = {0};
    ck_assert_msg(vdi_cloner_new(parent, NULL, &cl, &err) == 0, "%s", err.message);
    ck_assert_msg(vdi_clone_recorded(cat, cl, child, NULL, &err) == 0, "%s", err.message);
    vdi_cloner_free(cl);
}

/* Leaves about `leave` bytes free on the small filesystem. */
static void fill_leaving(uint64_t leave)
{
    vdi_space_report r;
    ck_assert_int_eq(vdi_space_measure(mnt, 0, 0, &r, NULL), 0);
    /* fallocate needs room for its own metadata: back off until it fits. */
    for (uint64_t slack = 0; r.free > leave + slack && slack < (4ULL << 20); slack += 64 << 10)
        if (th_run(NULL, "fallocate -l %llu %s/filler",
                   (unsigned long long)(r.free - leave - slack), mnt) == 0)
            break;
    if (leave == 0) /* the last blocks, one by one */
        th_run(NULL, "dd if=/dev/zero of=%s/filler2 bs=4k status=none", mnt);
}

START_TEST(measure_and_admit)
{
    for (int i = 0; i < 3; i++) {
        char p[64];
        snprintf(p, sizeof p, "desk-%d.qcow2", i);
        clone_to(gold, in_mnt(p));
    }
    vdi_space_report r;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_space_measure(mnt, 0, 10.0, &r, &err), 0);
    ck_assert_uint_gt(r.capacity, 50ULL << 20);
    ck_assert_uint_lt(r.capacity, 65ULL << 20);
    ck_assert_uint_eq(r.reserve, (uint64_t)((double)r.capacity * 0.10));
    ck_assert_uint_eq(r.children, 3);
    ck_assert_uint_eq(r.children_allocated, 3 * 12288);
    ck_assert_uint_eq(r.worst_case, 3 * ((1ULL << 30) - 12288));
    ck_assert(r.overcommit > 40 && r.overcommit < 70);

    ck_assert_int_eq(vdi_space_admit(&r, "small", 1 << 20, 0, 1ULL << 30, 100.0, &err), 0);
    /* Overcommit limit. */
    ck_assert_int_eq(vdi_space_admit(&r, "small", 1 << 20, 0, 1ULL << 30, 3.0, &err), -ENOSPC);
    ck_assert_ptr_nonnull(strstr(err.message, "datastore small would be overcommitted"));
    ck_assert_ptr_nonnull(strstr(err.message, "above max_overcommit 3.00 (over by"));
    /* Expected growth above free minus reserve. */
    ck_assert_int_eq(vdi_space_admit(&r, "small", 60ULL << 20, 0, 1ULL << 30, 100.0, &err), -ENOSPC);
    ck_assert_ptr_nonnull(strstr(err.message, "datastore small is full"));
    ck_assert_ptr_nonnull(strstr(err.message, "short by"));
    /* What the children already admitted may still grow by counts too. */
    ck_assert_int_eq(vdi_space_admit(&r, "small", 1 << 20, 60ULL << 20, 1ULL << 30, 100.0, &err),
                     -ENOSPC);
    ck_assert_ptr_nonnull(strstr(err.message, "those already on it by 60 MiB more"));
    vdi_space_report three = { .children = 3, .children_allocated = 5 << 20 };
    ck_assert_uint_eq(vdi_space_committed(&three, 2 << 20), 1 << 20);
    ck_assert_uint_eq(vdi_space_committed(&three, 1 << 20), 0);
    /* The reserve counts: fill to just above it and a 1 MiB child no longer fits. */
    fill_leaving(r.reserve + (512 << 10));
    ck_assert_int_eq(vdi_space_measure(mnt, 0, 10.0, &r, &err), 0);
    ck_assert_int_eq(vdi_space_admit(&r, "small", 1 << 20, 0, 1ULL << 30, 100.0, &err), -ENOSPC);
    ck_assert_ptr_nonnull(strstr(err.message, "reserve"));
}
END_TEST

START_TEST(enospc_leaves_no_child)
{
    fill_leaving(0);
    vdi_cloner *cl = NULL;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_cloner_new(gold, NULL, &cl, &err), 0);
    int rc = vdi_clone_recorded(cat, cl, in_mnt("full.qcow2"), NULL, &err);
    vdi_cloner_free(cl);
    ck_assert_int_eq(rc, -ENOSPC);
    ck_assert_ptr_nonnull(strstr(err.message, "datastore is full"));
    ck_assert_int_eq(access(in_mnt("full.qcow2"), F_OK), -1);
    char *out = th_must("ls -A %s", mnt);
    ck_assert_msg(!strstr(out, ".vdi-tmp") && !strstr(out, "full.qcow2"), "left: %s", out);
    free(out);
    vdi_child_info ci;
    ck_assert_int_eq(vdi_catalog_child(cat, in_mnt("full.qcow2"), &ci, NULL), -ENOENT);
}
END_TEST

START_TEST(merge_refused_for_space)
{
    /* A parent and a child with 8 MiB of data, both on the small filesystem. */
    free(th_must("qemu-img create -q -f qcow2 %s 1G", in_mnt("parent.qcow2")));
    clone_to(in_mnt("parent.qcow2"), in_mnt("child.qcow2"));
    free(th_must("qemu-io -c 'write -q -P 7 0 8M' %s", in_mnt("child.qcow2")));
    fill_leaving(4 << 20);
    vdi_merge_plan *plan = NULL;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_merge_plan_new(cat, in_mnt("child.qcow2"), VDI_MERGE_INTO_PARENT, NULL,
                                        NULL, 0, &plan, &err),
                     -ENOSPC);
    ck_assert_ptr_nonnull(strstr(err.message, "not enough space to merge"));
    ck_assert_ptr_nonnull(strstr(err.message, "short by"));
    ck_assert_int_eq(access(in_mnt("child.qcow2"), F_OK), 0);
    unlink(in_mnt("filler"));
    ck_assert_int_eq(vdi_merge_plan_new(cat, in_mnt("child.qcow2"), VDI_MERGE_INTO_PARENT, NULL,
                                        NULL, 0, &plan, &err),
                     0);
    ck_assert_int_eq(vdi_merge_execute(cat, plan, NULL, NULL, &err), 0);
    vdi_merge_plan_free(plan);
    free(th_must("qemu-io -r -c 'read -q -P 7 0 8M' %s", in_mnt("parent.qcow2")));
}
END_TEST

START_TEST(growth_learned_from_sessions)
{
    uint64_t p95 = 0;
    size_t samples = 0;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_catalog_growth_p95(cat, "office", 20, &p95, &samples, &err), -ENODATA);
    for (int i = 1; i <= 30; i++) {
        vdi_session_record s = {.pool = "office",
                                .desktop = "office-001",
                                .user = "u",
                                .started_at = 1000 + i,
                                .ended_at = 2000 + i,
                                .end_reason = "guest-shutdown",
                                .final_bytes = (uint64_t)i << 20};
        ck_assert_int_eq(vdi_catalog_record_session(cat, &s, &err), 0);
    }
    ck_assert_int_eq(vdi_catalog_growth_p95(cat, "office", 20, &p95, &samples, &err), 0);
    ck_assert_uint_eq(samples, 30);
    ck_assert_uint_eq(p95, 29ULL << 20);
    ck_assert_int_eq(vdi_catalog_growth_p95(cat, "lab", 20, &p95, &samples, &err), -ENODATA);
}
END_TEST

/* `vdipoolctl space` with `flags`: the answer (caller decrefs) and its
 * first datastore in *ds. */
static json_t *space_json(const char *conf, const char *flags, json_t **ds)
{
    char *out = th_must("%s --state-dir %s/state space --config %s --json %s", getenv("VDIPOOLCTL"),
                        dir, conf, flags);
    json_t *j = json_loads(out, 0, NULL);
    ck_assert_msg(j != NULL, "%s", out);
    free(out);
    *ds = json_array_get(json_object_get(j, "datastores"), 0);
    ck_assert_ptr_nonnull(*ds);
    return j;
}

static json_int_t field(json_t *o, const char *name)
{
    json_t *v = json_object_get(o, name);
    ck_assert_msg(json_is_integer(v), "no integer %s", name);
    return json_integer_value(v);
}

/* `space` reports the catalog's records, as admission sees them (no walk);
 * `space --rescan` walks the datastore, says what the records said, and
 * sets them right: a child made by hand (recorded without a datastore) is
 * taken in, a grown child's size corrected; a file the catalog does not
 * know and a record whose file is gone are counted. Afterwards the records
 * equal a fresh walk. */
START_TEST(cli_space_report)
{
    const char *ctl = getenv("VDIPOOLCTL");
    ck_assert_msg(ctl != NULL, "VDIPOOLCTL is set by ctest");
    clone_to(gold, in_mnt("office-001.qcow2"));
    char conf[4200];
    snprintf(conf, sizeof conf, "%s/vdipool.conf", dir);
    char text[16384];
    snprintf(text, sizeof text,
             "datastores = ( { name = \"small\"; path = \"%s\"; reserve = \"8M\"; "
             "max_overcommit = 2.0; } );\n"
             "pools = ( { name = \"office\"; gold = \"%s\"; datastore = \"small\"; size = 4; "
             "spares = 1; expected_growth = \"16M\"; } );\n",
             mnt, gold);
    th_write_file(conf, text, strlen(text));

    json_t *d, *j = space_json(conf, "", &d);
    ck_assert_str_eq(json_string_value(json_object_get(d, "name")), "small");
    ck_assert_str_eq(json_string_value(json_object_get(d, "source")), "catalog");
    ck_assert_int_eq(field(d, "children"), 0); /* made by hand: no datastore recorded */
    ck_assert_int_eq(field(d, "reserve"), 8 << 20);
    json_t *p = json_array_get(json_object_get(d, "pools"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(p, "growth_source")), "configured");
    json_decref(j);

    j = space_json(conf, "--rescan", &d);
    ck_assert_str_eq(json_string_value(json_object_get(d, "source")), "rescan");
    ck_assert_int_eq(field(d, "children"), 1);
    json_t *r = json_object_get(d, "rescan");
    ck_assert_int_eq(field(r, "recorded_children"), 0);
    ck_assert_int_eq(field(r, "corrected"), 1);
    ck_assert_int_eq(field(r, "unknown_files"), 0);
    ck_assert_int_eq(field(r, "missing_files"), 0);
    /* 1 GiB children on ~60 MiB with max_overcommit 2: refused, and says so. */
    p = json_array_get(json_object_get(d, "pools"), 0);
    ck_assert(json_is_false(json_object_get(p, "admits_another")));
    ck_assert_ptr_nonnull(
        strstr(json_string_value(json_object_get(p, "refusal")), "overcommitted"));
    json_decref(j);

    /* A record as a catalog from before virtual sizes were kept has it
     * (0): no worst case is counted until a rescan fills it in. */
    char db_path[4200];
    snprintf(db_path, sizeof db_path, "%s/state/catalog.db", dir);
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    ck_assert_int_eq(sqlite3_exec(db, "UPDATE children SET virtual_size = 0", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    j = space_json(conf, "", &d);
    ck_assert_int_eq(field(d, "worst_case"), 0);
    json_decref(j);
    j = space_json(conf, "--rescan", &d);
    ck_assert_int_eq(field(json_object_get(d, "rescan"), "corrected"), 1);
    json_decref(j);
    j = space_json(conf, "", &d);
    ck_assert_int_gt(field(d, "worst_case"), 512 << 20); /* 1 GiB less what it holds */
    json_decref(j);

    /* The child grows by 4 MiB behind the catalog's back; a file nobody
     * recorded appears; a recorded child's file is removed by hand. */
    clone_to(gold, in_mnt("office-002.qcow2"));
    j = space_json(conf, "--rescan", &d);
    json_decref(j);
    free(th_must("qemu-io -c 'write -q -P 0x11 0 4M' %s", in_mnt("office-001.qcow2")));
    free(th_must("qemu-img create -q -f qcow2 -b %s -F qcow2 %s", gold, in_mnt("stranger.qcow2")));
    free(th_must("rm %s", in_mnt("office-002.qcow2")));
    j = space_json(conf, "", &d);
    json_int_t recorded = field(d, "children_allocated");
    ck_assert_int_eq(field(d, "children"), 2);
    json_decref(j);
    j = space_json(conf, "--rescan", &d);
    r = json_object_get(d, "rescan");
    ck_assert_int_eq(field(r, "recorded_children"), 2);
    ck_assert_int_eq(field(r, "recorded_allocated"), recorded);
    ck_assert_int_eq(field(r, "corrected"), 1);
    ck_assert_int_eq(field(r, "unknown_files"), 1);
    ck_assert_int_eq(field(r, "missing_files"), 1);
    json_int_t walked = field(d, "children_allocated"); /* both files found */
    json_decref(j);
    vdi_space_report walk;
    ck_assert_int_eq(vdi_space_measure(mnt, 0, 0, &walk, NULL), 0);
    ck_assert_int_eq(walked, (json_int_t)walk.children_allocated);
    /* With the gone child's record dropped (reconcile), the records hold
     * what the walk found of every file they know: all but the stranger. */
    free(th_must("%s --state-dir %s/state image reconcile %s", ctl, dir, mnt));
    vdi_image *stranger = NULL;
    ck_assert_int_eq(vdi_image_open(in_mnt("stranger.qcow2"), &stranger, NULL), 0);
    json_int_t stranger_bytes = (json_int_t)vdi_image_allocated_bytes(stranger);
    vdi_image_close(stranger);
    j = space_json(conf, "", &d);
    ck_assert_int_eq(field(d, "children"), 1);
    ck_assert_int_eq(field(d, "children_allocated"), walked - stranger_bytes);
    ck_assert_int_gt(field(d, "children_allocated"), 4 << 20); /* the growth is counted */
    json_decref(j);

    char *out = th_must("%s --state-dir %s/state space --config %s --rescan", ctl, dir, conf);
    ck_assert_ptr_nonnull(strstr(out, "datastore small"));
    ck_assert_ptr_nonnull(strstr(out, "pool office"));
    ck_assert_ptr_nonnull(strstr(out, "1 files it does not know"));
    free(out);
}
END_TEST

/* A gold version that does not fit on the small filesystem is refused
 * before anything is written, with the numbers; nothing is left behind. */
START_TEST(gold_version_refused_for_space)
{
    char source[4200], family[4200];
    snprintf(source, sizeof source, "%s/big.qcow2", dir);
    free(th_must("qemu-img create -q -f qcow2 %s 1G && qemu-io -c 'write -q -P 3 0 16M' %s",
                 source, source));
    snprintf(family, sizeof family, "%s/win", mnt);
    fill_leaving(8 << 20);
    vdi_version_request req = {.family = "win", .dir = family, .source = source,
                               .who = "test", .action = "import"};
    vdi_error err = {0};
    ck_assert_int_eq(vdi_version_create(cat, &req, NULL, NULL, NULL, &err), -ENOSPC);
    ck_assert_msg(strstr(err.message, "would need up to 16"), "%s", err.message);
    ck_assert_ptr_nonnull(strstr(err.message, "free and keeps"));
    char *left = th_must("ls -A %s", family);
    ck_assert_str_eq(left, "");
    free(left);
    vdi_gold_version *v = NULL;
    size_t n = 9;
    ck_assert_int_eq(vdi_versions_list(cat, "win", &v, &n, NULL), 0);
    ck_assert_uint_eq(n, 0);
    free(v);
    unlink(in_mnt("filler"));
    vdi_gold_version made;
    ck_assert_msg(vdi_version_create(cat, &req, NULL, NULL, &made, &err) == 0, "%s", err.message);
    ck_assert_uint_eq(made.version, 1);
    th_run(NULL, "chattr -i %s/*.qcow2", family);
}
END_TEST

TH_MAIN("space", {"space",
                  setup,
                  teardown,
                  120,
                  {measure_and_admit, enospc_leaves_no_child, merge_refused_for_space,
                   growth_learned_from_sessions, cli_space_report, gold_version_refused_for_space,
                   NULL}})
