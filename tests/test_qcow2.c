/* test_qcow2.c — the qcow2 header parser against hostile bytes, and the
 * overlay layout. In memory only; the on-disk checks by QEMU are in
 * test_clone.c. */
#include "helpers.h"
#include "qcow2.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CS 65536
static uint8_t buf[CS];
static int hlen;

/* A valid 64 GiB child header of "/golds/base.qcow2" with 64 KiB clusters. */
static void make_valid(void)
{
    qcow2_layout L;
    vdi_error err = {0};
    ck_assert_int_eq(qcow2_plan_layout(64ULL << 30, 16, false, &L, &err), 0);
    memset(buf, 0, sizeof buf);
    hlen = qcow2_build_header(&L, "/golds/base.qcow2", "qcow2", buf, sizeof buf, &err);
    ck_assert_int_gt(hlen, 0);
}

static int parse(size_t len, uint64_t file_size, qcow2_header *h, vdi_error *err)
{
    return qcow2_parse_header(buf, len, file_size, h, err);
}

START_TEST(built_header_parses_back)
{
    make_valid();
    qcow2_header h;
    vdi_error err = {0};
    ck_assert_int_eq(parse(CS, 10 * CS, &h, &err), 0);
    ck_assert_uint_eq(h.version, 3);
    ck_assert_uint_eq(h.cluster_bits, 16);
    ck_assert_uint_eq(h.virtual_size, 64ULL << 30);
    ck_assert(h.has_backing);
    ck_assert_str_eq(h.backing_name, "/golds/base.qcow2");
    ck_assert(h.has_backing_format);
    ck_assert_str_eq(h.backing_format, "qcow2");
    ck_assert_uint_eq(h.l1_size, 128); /* 64 GiB / 512 MiB per L2 table */
    ck_assert_uint_eq(h.refcount_order, 4);
}
END_TEST

START_TEST(truncated_header)
{
    make_valid();
    qcow2_header h;
    vdi_error err = {0};
    ck_assert_int_eq(parse(40, 40, &h, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "truncated"));
    ck_assert_int_eq(parse(80, 80, &h, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "truncated"));
}
END_TEST

START_TEST(huge_l1_size)
{
    make_valid();
    th_put32(buf + 36, 0xffffffffu);
    qcow2_header h;
    vdi_error err = {0};
    ck_assert_int_eq(parse(CS, 10 * CS, &h, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "L1 table"));
}
END_TEST

START_TEST(l1_too_small_for_size)
{
    make_valid();
    th_put64(buf + 24, 1ULL << 50);
    qcow2_header h;
    vdi_error err = {0};
    ck_assert_int_eq(parse(CS, 10 * CS, &h, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "needs"));
}
END_TEST

START_TEST(backing_name_past_eof)
{
    make_valid();
    qcow2_header h;
    vdi_error err = {0};
    /* The file ends before the name does. */
    ck_assert_int_eq(parse((size_t)hlen - 4, (uint64_t)hlen - 4, &h, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "past the end"));
    make_valid();
    th_put64(buf + 8, 1ULL << 40);
    ck_assert_int_eq(parse(CS, 10 * CS, &h, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "outside"));
    make_valid();
    th_put64(buf + 8, UINT64_MAX - 3);
    ck_assert_int_eq(parse(CS, 10 * CS, &h, &err), -EINVAL);
    make_valid();
    th_put32(buf + 16, 5000);
    ck_assert_int_eq(parse(CS, 10 * CS, &h, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "length"));
}
END_TEST

START_TEST(bad_fields_named)
{
    struct {
        size_t off;
        int width;
        uint64_t value;
        const char *expect;
    } cases[] = {
        {4, 32, 7, "version 7"},
        {20, 32, 30, "cluster_bits 30"},
        {20, 32, 8, "cluster_bits 8"},
        {32, 32, 1, "encrypted"},
        {48, 64, 0, "refcount table offset"},
        {48, 64, 12345, "refcount table offset"},
        {56, 32, 0, "refcount table of 0"},
        {60, 32, 1000000, "snapshots"},
        {72, 64, 1ULL << 40, "unknown incompatible"},
        {72, 64, 2, "corrupt"},
        {72, 64, 4, "external data file"},
        {96, 32, 9, "refcount_order"},
        {100, 32, 20, "header_length"},
        {100, 32, 1u << 20, "header_length"},
        {40, 64, 100, "L1 table offset"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        make_valid();
        if (cases[i].width == 32)
            th_put32(buf + cases[i].off, (uint32_t)cases[i].value);
        else
            th_put64(buf + cases[i].off, cases[i].value);
        qcow2_header h;
        vdi_error err = {0};
        ck_assert_msg(parse(CS, 10 * CS, &h, &err) < 0, "case %zu accepted", i);
        ck_assert_msg(strstr(err.message, cases[i].expect), "case %zu: '%s' lacks '%s'", i,
                      err.message, cases[i].expect);
    }
}
END_TEST

START_TEST(extension_overrun)
{
    make_valid();
    /* The backing-format extension starts right after the 112-byte header. */
    th_put32(buf + 112 + 4, 100000);
    qcow2_header h;
    vdi_error err = {0};
    ck_assert_int_eq(parse(CS, 10 * CS, &h, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "extension"));
    make_valid();
    th_put32(buf + 112 + 4, 16); /* longer than QEMU's 15-byte format names */
    ck_assert_int_eq(parse(CS, 10 * CS, &h, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "backing-format"));
}
END_TEST

START_TEST(v2_header)
{
    memset(buf, 0, sizeof buf);
    th_put32(buf, QCOW2_MAGIC);
    th_put32(buf + 4, 2);
    th_put32(buf + 20, 16);
    th_put64(buf + 24, 1ULL << 30);
    th_put32(buf + 36, 2);
    th_put64(buf + 40, 3 * CS);
    th_put64(buf + 48, CS);
    th_put32(buf + 56, 1);
    qcow2_header h;
    vdi_error err = {0};
    ck_assert_int_eq(parse(CS, 4 * CS, &h, &err), 0);
    ck_assert_uint_eq(h.version, 2);
    ck_assert(!h.has_backing);
}
END_TEST

START_TEST(layouts)
{
    qcow2_layout L;
    vdi_error err = {0};
    /* 2 TiB, 128 KiB clusters, extended L2: an L2 table maps 1 GiB. */
    ck_assert_int_eq(qcow2_plan_layout(2ULL << 40, 17, true, &L, &err), 0);
    ck_assert_uint_eq(L.l1_entries, 2048);
    ck_assert_uint_eq(L.l1_clusters, 1);
    ck_assert_uint_eq(L.total_clusters, 4);
    /* 2 TiB, 4 KiB clusters: an 8 MiB L1 needs two refcount blocks. */
    ck_assert_int_eq(qcow2_plan_layout(2ULL << 40, 12, false, &L, &err), 0);
    ck_assert_uint_eq(L.l1_entries, 1u << 20);
    ck_assert_uint_eq(L.l1_clusters, 2048);
    ck_assert_uint_eq(L.refblock_clusters, 2);
    ck_assert_uint_eq(L.total_clusters, 1 + 1 + 2 + 2048);
    ck_assert_int_eq(qcow2_plan_layout(1ULL << 30, 13, true, &L, &err), -EINVAL);
    ck_assert_int_eq(qcow2_plan_layout(1000, 16, false, &L, &err), -EINVAL);
    ck_assert_int_eq(qcow2_plan_layout(1ULL << 60, 9, false, &L, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "larger cluster size"));
}
END_TEST

START_TEST(random_mutations_never_crash)
{
    /* A cheap, always-on cousin of the fuzz target: flip bytes of a valid
     * header and make sure parsing stays within the buffer (ASan watches). */
    srandom(12345);
    for (int round = 0; round < 20000; round++) {
        make_valid();
        int flips = 1 + (int)(random() % 8);
        for (int f = 0; f < flips; f++)
            buf[random() % (hlen + 16)] = (uint8_t)random();
        size_t len = (size_t)(random() % CS) + 1;
        qcow2_header h;
        vdi_error err = {0};
        int rc = parse(len, len + (uint64_t)(random() % CS), &h, &err);
        if (rc < 0)
            ck_assert(err.message[0] != '\0');
    }
}
END_TEST

TH_MAIN("qcow2", {"header",
                  NULL,
                  NULL,
                  0,
                  {built_header_parses_back, truncated_header, huge_l1_size, l1_too_small_for_size,
                   backing_name_past_eof, bad_fields_named, extension_overrun, v2_header, layouts,
                   random_mutations_never_crash, NULL}})
