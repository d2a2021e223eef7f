/* test_image.c — probing files and resolving chains, with files made here
 * (no QEMU needed): what is refused, with which words, and what is followed. */
#include "helpers.h"
#include "qcow2.h"
#include "vdi_engine.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *dir;

static void setup(void)
{
    dir = th_tempdir("image");
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

/* Writes a qcow2 overlay header naming any backing file and format. */
static void write_child(const char *path, uint64_t size, const char *backing, const char *format)
{
    qcow2_layout L;
    vdi_error err = {0};
    ck_assert_int_eq(qcow2_plan_layout(size, 16, false, &L, &err), 0);
    static uint8_t hdr[65536];
    memset(hdr, 0, sizeof hdr);
    int n = qcow2_build_header(&L, backing, format, hdr, sizeof hdr, &err);
    ck_assert_int_gt(n, 0);
    th_write_file(path, hdr, 65536);
    ck_assert_int_eq(truncate(path, (off_t)(L.total_clusters * 65536)), 0);
}

static void write_raw(const char *path, uint64_t size)
{
    th_write_file(path, "\xeb\x3c\x90", 3);
    ck_assert_int_eq(truncate(path, (off_t)size), 0);
}

static void expect_refused(const char *path, int code, const char *words)
{
    vdi_image *img = NULL;
    vdi_error err = {0};
    int rc = vdi_image_open(path, &img, &err);
    ck_assert_msg(rc == code, "%s: expected %d, got %d (%s)", path, code, rc, err.message);
    ck_assert_ptr_null(img);
    ck_assert_msg(strstr(err.message, words), "message '%s' lacks '%s'", err.message, words);
    ck_assert_msg(strstr(err.message, path), "message '%s' does not name the file", err.message);
}

START_TEST(not_files)
{
    expect_refused(path_in("missing.qcow2"), -ENOENT, "does not exist");
    expect_refused(dir, -EINVAL, "is a directory, not a disk image file");
    ck_assert_int_eq(mkfifo(path_in("fifo"), 0600), 0);
    expect_refused(path_in("fifo"), -EINVAL, "a FIFO");
    vdi_image *img = NULL;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_image_open("/dev/null", &img, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "character device"));
    th_write_file(path_in("empty"), "", 0);
    expect_refused(path_in("empty"), -EINVAL, "empty file");
}
END_TEST

START_TEST(not_images)
{
    th_write_file(path_in("notes.txt"), "hello operator\nthis is text\n", 28);
    expect_refused(path_in("notes.txt"), -EINVAL, "a text file");
    /* Text-like bytes at the start of a disk-sized file are a raw disk. */
    char zs[1024];
    memset(zs, 'Z', sizeof zs);
    zs[100] = '\n';
    th_write_file(path_in("zzz.raw"), zs, sizeof zs);
    vdi_image *raw = NULL;
    vdi_error rerr = {0};
    ck_assert_int_eq(vdi_image_open(path_in("zzz.raw"), &raw, &rerr), 0);
    vdi_image_close(raw);
    expect_refused(path_in("notes.txt"), -EINVAL, "a text file");
    uint8_t gz[1024] = {0x1f, 0x8b, 8};
    th_write_file(path_in("disk.gz"), gz, sizeof gz);
    expect_refused(path_in("disk.gz"), -EINVAL, "gzip");
    uint8_t elf[1024] = {0x7f, 'E', 'L', 'F'};
    th_write_file(path_in("prog"), elf, sizeof elf);
    expect_refused(path_in("prog"), -EINVAL, "ELF");
    uint8_t vmdk[1024] = {'K', 'D', 'M', 'V'};
    th_write_file(path_in("disk.vmdk"), vmdk, sizeof vmdk);
    expect_refused(path_in("disk.vmdk"), -EINVAL, "VMDK");
    uint8_t odd[1000] = {1, 2, 3};
    th_write_file(path_in("odd.img"), odd, sizeof odd);
    expect_refused(path_in("odd.img"), -EINVAL, "not a multiple of 512");
    uint8_t v1[1024] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 1};
    th_write_file(path_in("old.qcow"), v1, sizeof v1);
    expect_refused(path_in("old.qcow"), -EINVAL, "qcow (version 1)");
}
END_TEST

static void vhd_footer(uint8_t *f, uint32_t type)
{
    memset(f, 0, 512);
    memcpy(f, "conectix", 8);
    th_put32(f + 60, type);
}

START_TEST(vhd_refused_differencing_by_name)
{
    /* Dynamic and differencing VHDs carry a footer copy at offset 0. */
    uint8_t file[4096] = {0};
    vhd_footer(file, 4);
    vhd_footer(file + 4096 - 512, 4);
    th_write_file(path_in("diff.vhd"), file, sizeof file);
    expect_refused(path_in("diff.vhd"), -ENOTSUP, "differencing VHD (footer disk type 4)");
    expect_refused(path_in("diff.vhd"), -ENOTSUP, "parent blocks read as zeros");

    vhd_footer(file, 3);
    vhd_footer(file + 4096 - 512, 3);
    th_write_file(path_in("dyn.vhd"), file, sizeof file);
    expect_refused(path_in("dyn.vhd"), -ENOTSUP, "dynamic VHD");

    /* A fixed VHD is raw data with the footer only at the end. */
    memset(file, 0, sizeof file);
    vhd_footer(file + 4096 - 512, 2);
    th_write_file(path_in("fixed.vhd"), file, sizeof file);
    expect_refused(path_in("fixed.vhd"), -ENOTSUP, "fixed VHD");
}
END_TEST

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* A minimal VHDX: file identifier, region table with a metadata region,
 * metadata table with File Parameters (flags chosen by the test). */
static void write_vhdx(const char *path, uint32_t fp_flags)
{
    static const uint8_t metadata_region[16] = {0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b,
                                                0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e};
    static const uint8_t file_parameters[16] = {0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d,
                                                0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b};
    size_t size = 2 * 1024 * 1024;
    uint8_t *f = calloc(1, size);
    memcpy(f, "vhdxfile", 8);
    uint8_t *rt = f + 192 * 1024;
    memcpy(rt, "regi", 4);
    put_le32(rt + 8, 1);
    memcpy(rt + 16, metadata_region, 16);
    uint64_t moff = 1024 * 1024;
    put_le32(rt + 16 + 16, (uint32_t)moff);
    put_le32(rt + 16 + 24, 1024 * 1024);
    uint8_t *mt = f + moff;
    memcpy(mt, "metadata", 8);
    mt[10] = 1; /* one entry */
    memcpy(mt + 32, file_parameters, 16);
    put_le32(mt + 32 + 16, 65536);
    put_le32(mt + 32 + 20, 8);
    put_le32(mt + 65536 + 4, fp_flags);
    th_write_file(path, f, size);
    free(f);
}

START_TEST(vhdx_refused_differencing_by_name)
{
    write_vhdx(path_in("diff.vhdx"), 2);
    expect_refused(path_in("diff.vhdx"), -ENOTSUP, "differencing VHDX (HasParent)");
    write_vhdx(path_in("plain.vhdx"), 0);
    expect_refused(path_in("plain.vhdx"), -ENOTSUP, "is a VHDX image");
}
END_TEST

START_TEST(raw_and_qcow2_probed)
{
    write_raw(path_in("gold.raw"), 1 << 20);
    vdi_image *img = NULL;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_image_open(path_in("gold.raw"), &img, &err), 0);
    ck_assert_int_eq(vdi_image_format(img), VDI_FORMAT_RAW);
    ck_assert_uint_eq(vdi_image_virtual_size(img), 1 << 20);
    ck_assert_ptr_null(vdi_image_backing_name(img));
    vdi_image_close(img);

    write_child(path_in("child.qcow2"), 1 << 20, "gold.raw", "raw");
    ck_assert_int_eq(vdi_image_open(path_in("child.qcow2"), &img, &err), 0);
    ck_assert_int_eq(vdi_image_format(img), VDI_FORMAT_QCOW2);
    ck_assert_int_eq(vdi_image_qcow2_version(img), 3);
    ck_assert_str_eq(vdi_image_backing_name(img), "gold.raw");
    ck_assert_str_eq(vdi_image_backing_format(img), "raw");
    vdi_image_close(img);
}
END_TEST

START_TEST(truncated_qcow2_on_disk)
{
    uint8_t hdr[50] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3};
    th_write_file(path_in("cut.qcow2"), hdr, sizeof hdr);
    expect_refused(path_in("cut.qcow2"), -EINVAL, "truncated");
}
END_TEST

START_TEST(chain_relative_names_follow_child_dir)
{
    ck_assert_int_eq(mkdir(path_in("golds"), 0755), 0);
    write_raw(path_in("golds/base.raw"), 1 << 20);
    write_child(path_in("golds/mid.qcow2"), 1 << 20, "base.raw", "raw");
    write_child(path_in("top.qcow2"), 2 << 20, "golds/mid.qcow2", "qcow2");
    vdi_chain *c = NULL;
    vdi_error err = {0};
    ck_assert_msg(vdi_chain_resolve(path_in("top.qcow2"), 0, &c, &err) == 0, "%s", err.message);
    ck_assert_uint_eq(vdi_chain_length(c), 3);
    ck_assert_uint_eq(vdi_chain_depth(c), 2);
    ck_assert_str_eq(vdi_image_path(vdi_chain_root(c)), path_in("golds/base.raw"));
    ck_assert_int_eq(vdi_image_format(vdi_chain_root(c)), VDI_FORMAT_RAW);
    ck_assert_uint_eq(vdi_chain_warning_count(c), 0);
    vdi_chain_free(c);

    ck_assert_int_eq(vdi_chain_resolve(path_in("top.qcow2"), 1, &c, &err), -ELOOP);
    ck_assert_ptr_nonnull(strstr(err.message, "limit of 1"));
}
END_TEST

START_TEST(chain_missing_parent)
{
    write_child(path_in("orphan.qcow2"), 1 << 20, "/nonexistent/gold.qcow2", "qcow2");
    vdi_chain *c = NULL;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_chain_resolve(path_in("orphan.qcow2"), 0, &c, &err), -ENOENT);
    ck_assert_ptr_null(c);
    ck_assert_ptr_nonnull(strstr(err.message, "/nonexistent/gold.qcow2"));
    ck_assert_ptr_nonnull(strstr(err.message, "reparent"));
}
END_TEST

START_TEST(chain_loop)
{
    write_child(path_in("a.qcow2"), 1 << 20, "b.qcow2", "qcow2");
    write_child(path_in("b.qcow2"), 1 << 20, "a.qcow2", "qcow2");
    write_child(path_in("self.qcow2"), 1 << 20, "self.qcow2", "qcow2");
    vdi_chain *c = NULL;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_chain_resolve(path_in("a.qcow2"), 0, &c, &err), -ELOOP);
    ck_assert_ptr_nonnull(strstr(err.message, "loop"));
    ck_assert_int_eq(vdi_chain_resolve(path_in("self.qcow2"), 0, &c, &err), -ELOOP);
    ck_assert_ptr_nonnull(strstr(err.message, "loop"));
}
END_TEST

START_TEST(chain_format_mismatch)
{
    write_raw(path_in("base.raw"), 1 << 20);
    write_child(path_in("mid.qcow2"), 1 << 20, "base.raw", "raw");
    write_child(path_in("liar.qcow2"), 1 << 20, "mid.qcow2", "raw");
    vdi_chain *c = NULL;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_chain_resolve(path_in("liar.qcow2"), 0, &c, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "as raw, but that file is qcow2"));
    write_child(path_in("vmdk.qcow2"), 1 << 20, "base.raw", "vmdk");
    ck_assert_int_eq(vdi_chain_resolve(path_in("vmdk.qcow2"), 0, &c, &err), -ENOTSUP);
}
END_TEST

START_TEST(chain_protocols_refused)
{
    write_child(path_in("nbd.qcow2"), 1 << 20, "nbd:localhost:10809", "raw");
    vdi_chain *c = NULL;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_chain_resolve(path_in("nbd.qcow2"), 0, &c, &err), -ENOTSUP);
    ck_assert_ptr_nonnull(strstr(err.message, "protocol"));
    char *p = NULL;
    ck_assert_int_eq(vdi_backing_path("/a/b/c.qcow2", "json:{}", &p, &err), -ENOTSUP);
    ck_assert_int_eq(vdi_backing_path("/a/b/c.qcow2", "../g.qcow2", &p, &err), 0);
    ck_assert_str_eq(p, "/a/b/../g.qcow2");
    free(p);
    ck_assert_int_eq(vdi_backing_path("c.qcow2", "dir/g:1.qcow2", &p, &err), 0);
    ck_assert_str_eq(p, "dir/g:1.qcow2");
    free(p);
}
END_TEST

START_TEST(chain_warns_without_backing_format)
{
    write_raw(path_in("base.raw"), 4 << 20);
    /* Build a header without the format extension by blanking it. */
    write_child(path_in("nofmt.qcow2"), 1 << 20, "base.raw", "raw");
    int fd = open(path_in("nofmt.qcow2"), O_RDWR);
    uint8_t zero8[8] = {0};
    uint8_t ext[8];
    th_put32(ext, 0x12345678); /* an unknown extension QEMU would ignore */
    th_put32(ext + 4, 0);
    ck_assert_int_eq(pwrite(fd, ext, 8, 112), 8);
    ck_assert_int_eq(pwrite(fd, zero8, 8, 120), 8);
    close(fd);
    vdi_chain *c = NULL;
    vdi_error err = {0};
    ck_assert_msg(vdi_chain_resolve(path_in("nofmt.qcow2"), 0, &c, &err) == 0, "%s", err.message);
    ck_assert_uint_eq(vdi_chain_warning_count(c), 2);
    ck_assert_ptr_nonnull(strstr(vdi_chain_warning(c, 0), "does not record its backing format"));
    ck_assert_ptr_nonnull(strstr(vdi_chain_warning(c, 1), "smaller than its parent"));
    vdi_chain_free(c);
}
END_TEST

START_TEST(content_hash_ignores_holes_and_zero_fill)
{
    /* The same content, once sparse and once written out, hashes the same;
     * one changed byte changes the hash. */
    write_raw(path_in("sparse.raw"), 8 << 20);
    char *out =
        th_must("dd if=/dev/zero of=%s bs=1M count=8 status=none && printf '\\353\\074\\220' "
                "| dd of=%s conv=notrunc status=none",
                path_in("dense.raw"), path_in("dense.raw"));
    free(out);
    char a[80];
    snprintf(a, sizeof a, "%s", th_hash(path_in("sparse.raw")));
    ck_assert_str_eq(a, th_hash(path_in("dense.raw")));
    int fd = open(path_in("dense.raw"), O_WRONLY);
    ck_assert_int_eq(pwrite(fd, "x", 1, 5 << 20), 1);
    close(fd);
    ck_assert_str_ne(a, th_hash(path_in("dense.raw")));
}
END_TEST

/* ---- memory images (libvirt's save format) --------------------------------------- */

/* A save image as libvirt lays it out: header, XML, cookie, zero padding to
 * data_len, then a "stream" of stream_len patterned bytes. */
static void write_save_image(const char *path, const char *magic, uint32_t version,
                             uint32_t format, const char *xml, const char *cookie,
                             uint32_t data_len, size_t stream_len)
{
    size_t total = 92 + data_len + stream_len;
    uint8_t *b = calloc(1, total);
    memcpy(b, magic, 16);
    uint32_t v[5] = {version, data_len, 1, format, cookie ? (uint32_t)strlen(xml) + 1 : 0};
    memcpy(b + 16, v, sizeof v);
    memcpy(b + 92, xml, strlen(xml) + 1);
    if (cookie)
        memcpy(b + 92 + strlen(xml) + 1, cookie, strlen(cookie) + 1);
    for (size_t i = 0; i < stream_len; i++)
        b[92 + data_len + i] = (uint8_t)(i * 7 + 3);
    th_write_file(path, b, total);
    free(b);
}

static void expect_save_refused(const char *path, const char *words)
{
    vdi_save_image img;
    vdi_error err = {0};
    ck_assert_int_lt(vdi_save_image_read(path, &img, &err), 0);
    ck_assert_msg(strstr(err.message, words), "message '%s' lacks '%s'", err.message, words);
    ck_assert_msg(strstr(err.message, path), "message '%s' does not name the file", err.message);
}

START_TEST(save_image_read_and_rewritten)
{
    const char *xml = "<domain type='qemu'><name>tmpl</name><uuid>1</uuid></domain>";
    write_save_image(path_in("t.save"), "LibvirtQemudSave", 2, 0, xml, "<cookie/>", 4096,
                     300000);
    vdi_save_image img;
    vdi_error err = {0};
    ck_assert_int_eq(vdi_save_image_read(path_in("t.save"), &img, &err), 0);
    ck_assert_str_eq(img.xml, xml);
    ck_assert_str_eq(img.cookie, "<cookie/>");
    ck_assert_uint_eq(img.stream_offset, 92 + 4096);
    vdi_save_image_clear(&img);

    /* A shorter XML keeps the stream where it was; a longer one moves it. */
    const char *mine = "<domain type='qemu'><name>pc-007</name><uuid>2</uuid></domain>";
    ck_assert_int_eq(vdi_save_image_copy(path_in("t.save"), path_in("d.save"), mine, &err), 0);
    ck_assert_int_eq(vdi_save_image_read(path_in("d.save"), &img, &err), 0);
    ck_assert_str_eq(img.xml, mine);
    ck_assert_str_eq(img.cookie, "<cookie/>");
    ck_assert_uint_eq(img.stream_offset, 92 + 4096);
    vdi_save_image_clear(&img);
    char *same = th_must("cmp %s %s 4188 4188 && echo same", path_in("t.save"), path_in("d.save"));
    ck_assert_ptr_nonnull(strstr(same, "same"));
    free(same);

    char *big = malloc(10000);
    memset(big, 'x', 9999);
    big[9999] = '\0';
    memcpy(big, "<domain>", 8);
    ck_assert_int_eq(vdi_save_image_copy(path_in("t.save"), path_in("b.save"), big, &err), 0);
    ck_assert_int_eq(vdi_save_image_read(path_in("b.save"), &img, &err), 0);
    ck_assert_str_eq(img.xml, big);
    ck_assert_uint_eq(img.stream_offset, 92 + 12288);
    ck_assert_uint_eq(img.size - img.stream_offset, 300000);
    vdi_save_image_clear(&img);
    free(big);
    char *moved = th_must("cmp %s %s 4188 12380 && echo same", path_in("t.save"),
                          path_in("b.save"));
    ck_assert_ptr_nonnull(strstr(moved, "same"));
    free(moved);
    ck_assert_int_ne(access(path_in("b.save.tmp"), F_OK), 0);
}
END_TEST

START_TEST(save_image_refusals)
{
    const char *xml = "<domain/>";
    write_save_image(path_in("p.save"), "LibvirtQemudPart", 2, 0, xml, NULL, 4096, 10);
    expect_save_refused(path_in("p.save"), "unfinished");
    write_save_image(path_in("z.save"), "LibvirtQemudSave", 2, 1, xml, NULL, 4096, 10);
    expect_save_refused(path_in("z.save"), "compressed");
    write_save_image(path_in("v.save"), "LibvirtQemudSave", 0x02000000, 0, xml, NULL, 4096, 10);
    expect_save_refused(path_in("v.save"), "version");
    write_save_image(path_in("x.save"), "NotLibvirtSave!!", 2, 0, xml, NULL, 4096, 10);
    expect_save_refused(path_in("x.save"), "not a libvirt QEMU save image");
    write_save_image(path_in("l.save"), "LibvirtQemudSave", 2, 0, xml, NULL, 4096, 10);
    ck_assert_int_eq(truncate(path_in("l.save"), 2000), 0);
    expect_save_refused(path_in("l.save"), "past the end of the file");
    /* An XML without its NUL inside the data. */
    uint8_t b[92 + 16];
    memset(b, 'A', sizeof b);
    memcpy(b, "LibvirtQemudSave", 16);
    uint32_t v[5] = {2, 16, 1, 0, 0};
    memcpy(b + 16, v, sizeof v);
    memset(b + 36, 0, 56);
    th_write_file(path_in("n.save"), b, sizeof b);
    expect_save_refused(path_in("n.save"), "NUL-ended");
    th_write_file(path_in("s.save"), "LibvirtQemudSave", 16);
    expect_save_refused(path_in("s.save"), "too short");
}
END_TEST

TH_MAIN("image",
        {"probe",
         setup,
         teardown,
         0,
         {not_files, not_images, vhd_refused_differencing_by_name,
          vhdx_refused_differencing_by_name, raw_and_qcow2_probed, truncated_qcow2_on_disk, NULL}},
        {"chain",
         setup,
         teardown,
         0,
         {chain_relative_names_follow_child_dir, chain_missing_parent, chain_loop,
          chain_format_mismatch, chain_protocols_refused, chain_warns_without_backing_format,
          content_hash_ignores_holes_and_zero_fill, NULL}},
        {"save-image",
         setup,
         teardown,
         0,
         {save_image_read_and_rewritten, save_image_refusals, NULL}})
