/* test_common.c — sizes, durations, error messages and the string map. */
#include "helpers.h"
#include "vdi_common.h"
#include "vdi_strmap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

START_TEST(sizes_with_units)
{
    uint64_t v;
    ck_assert_int_eq(vdi_parse_size("512", &v), 0);
    ck_assert_uint_eq(v, 512);
    ck_assert_int_eq(vdi_parse_size("512M", &v), 0);
    ck_assert_uint_eq(v, 512ULL << 20);
    ck_assert_int_eq(vdi_parse_size("20G", &v), 0);
    ck_assert_uint_eq(v, 20ULL << 30);
    ck_assert_int_eq(vdi_parse_size("1T", &v), 0);
    ck_assert_uint_eq(v, 1ULL << 40);
    ck_assert_int_eq(vdi_parse_size("1.5G", &v), 0);
    ck_assert_uint_eq(v, 3ULL << 29);
    ck_assert_int_eq(vdi_parse_size("64KiB", &v), 0);
    ck_assert_uint_eq(v, 65536);
    ck_assert_int_eq(vdi_parse_size("2 TB", &v), 0);
    ck_assert_uint_eq(v, 2ULL << 40);
    ck_assert_int_eq(vdi_parse_size("100b", &v), 0);
    ck_assert_uint_eq(v, 100);
}
END_TEST

START_TEST(sizes_refused)
{
    uint64_t v = 7;
    ck_assert_int_eq(vdi_parse_size("", &v), -EINVAL);
    ck_assert_int_eq(vdi_parse_size("-1G", &v), -EINVAL);
    ck_assert_int_eq(vdi_parse_size("12X", &v), -EINVAL);
    ck_assert_int_eq(vdi_parse_size("G", &v), -EINVAL);
    ck_assert_int_eq(vdi_parse_size("1.5", &v), -EINVAL);
    ck_assert_int_eq(vdi_parse_size("20G extra", &v), -EINVAL);
    ck_assert_int_eq(vdi_parse_size("99999999999999999999", &v), -ERANGE);
    ck_assert_int_eq(vdi_parse_size("16E", &v), -ERANGE);
    ck_assert_uint_eq(v, 7);
}
END_TEST

START_TEST(durations)
{
    uint64_t v;
    ck_assert_int_eq(vdi_parse_duration("90", &v), 0);
    ck_assert_uint_eq(v, 90);
    ck_assert_int_eq(vdi_parse_duration("90s", &v), 0);
    ck_assert_uint_eq(v, 90);
    ck_assert_int_eq(vdi_parse_duration("15m", &v), 0);
    ck_assert_uint_eq(v, 900);
    ck_assert_int_eq(vdi_parse_duration("12h", &v), 0);
    ck_assert_uint_eq(v, 43200);
    ck_assert_int_eq(vdi_parse_duration("1h30m", &v), 0);
    ck_assert_uint_eq(v, 5400);
    ck_assert_int_eq(vdi_parse_duration("2d", &v), 0);
    ck_assert_uint_eq(v, 172800);
    ck_assert_int_eq(vdi_parse_duration("1.5h", &v), 0);
    ck_assert_uint_eq(v, 5400);
    ck_assert_int_eq(vdi_parse_duration("", &v), -EINVAL);
    ck_assert_int_eq(vdi_parse_duration("10y", &v), -EINVAL);
    ck_assert_int_eq(vdi_parse_duration("h", &v), -EINVAL);
    ck_assert_int_eq(vdi_parse_duration("-5s", &v), -EINVAL);
}
END_TEST

START_TEST(formatting)
{
    char buf[64];
    ck_assert_str_eq(vdi_format_size(512, buf, sizeof buf), "512 B");
    ck_assert_str_eq(vdi_format_size(64ULL << 30, buf, sizeof buf), "64 GiB");
    ck_assert_str_eq(vdi_format_size(3ULL << 29, buf, sizeof buf), "1.5 GiB");
    ck_assert_str_eq(vdi_format_duration(5400, buf, sizeof buf), "1h30m");
    ck_assert_str_eq(vdi_format_duration(0, buf, sizeof buf), "0s");
    ck_assert_str_eq(vdi_format_duration(90061, buf, sizeof buf), "1d1h1m1s");
}
END_TEST

START_TEST(error_prefix_keeps_message)
{
    vdi_error err = {0};
    ck_assert_int_eq(vdi_error_set(&err, -ENOENT, "%s does not exist", "/x"), -ENOENT);
    vdi_error_prefix(&err, "clone of %s: ", "/y");
    ck_assert_str_eq(err.message, "clone of /y: /x does not exist");
    ck_assert_int_eq(err.code, -ENOENT);
    char big[2000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    vdi_error_prefix(&err, "%s", big);
    ck_assert_uint_eq(strlen(err.message), sizeof err.message - 1);
}
END_TEST

/* Removals in any order leave every other key reachable (the keys after a
 * removed one are shifted back across the table's wrap), and a removed key
 * can be put again. */
START_TEST(strmap_removals_keep_keys_reachable)
{
    enum { N = 3000 };
    static char keys[N][16];
    bool present[N];
    vdi_strmap *m = vdi_strmap_new();
    ck_assert_ptr_nonnull(m);
    for (size_t i = 0; i < N; i++) {
        snprintf(keys[i], sizeof keys[i], "user-%zu", i);
        ck_assert_int_eq(vdi_strmap_put(m, keys[i], i), 0);
        present[i] = true;
    }
    srand(11);
    size_t count = N;
    for (int round = 0; round < 4; round++) {
        for (size_t k = 0; k < N / 3; k++) {
            size_t i = (size_t)rand() % N;
            ck_assert(vdi_strmap_remove(m, keys[i]) == present[i]);
            count -= present[i];
            present[i] = false;
        }
        ck_assert_uint_eq(vdi_strmap_count(m), count);
        for (size_t i = 0; i < N; i++) {
            size_t v = SIZE_MAX;
            ck_assert_msg(vdi_strmap_get(m, keys[i], &v) == present[i], "key %s", keys[i]);
            if (present[i])
                ck_assert_uint_eq(v, i);
        }
        for (size_t i = round; i < N; i += 7) /* some come back */
            if (!present[i]) {
                ck_assert_int_eq(vdi_strmap_put(m, keys[i], i), 0);
                present[i] = true;
                count++;
            }
    }
    vdi_strmap_free(m);
}
END_TEST

TH_MAIN("common", {"units",
                   NULL,
                   NULL,
                   0,
                   {sizes_with_units, sizes_refused, durations, formatting,
                    error_prefix_keeps_message, strmap_removals_keep_keys_reachable, NULL}})
