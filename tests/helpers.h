/* helpers.h — what every test suite needs: temporary directories that are
 * removed by id, running real tools (qemu-img, qemu-io) and reading their
 * output, and file helpers. */
#ifndef VDI_TEST_HELPERS_H
#define VDI_TEST_HELPERS_H

#include <check.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A fresh directory below this run's root (see th_run_suite); free with
 * th_tempdir_remove. */
char *th_tempdir(const char *tag);
void th_tempdir_remove(char *dir);

/* DIR/NAME in one of a few rotating static buffers: for building paths in
 * test bodies without managing memory. */
char *th_path(const char *dir, const char *name);

/* Runs a shell command; returns its exit status (or -1), and when out is not
 * NULL its stdout and stderr together, malloc'd. */
int th_run(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Like th_run, but fails the test with the output when the command fails. */
char *th_must(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

bool th_have(const char *program);

/* Writes len bytes to path (created or truncated). */
void th_write_file(const char *path, const void *data, size_t len);

/* Content hash in hex (engine's vdi_content_hash), into a static buffer. */
const char *th_hash(const char *path);

/* Big-endian stores, for crafting hostile headers. */
void th_put32(uint8_t *p, uint32_t v);
void th_put64(uint8_t *p, uint64_t v);

/* Runs a suite in a fresh root directory, then unmounts and removes
 * everything below it; returns the number of failures (for main). */
int th_run_suite(Suite *s);

/* The one registry of a suite file: its cases, each with a fixture, a
 * timeout and its tests (NULL-terminated). TH_MAIN writes main(). */
typedef struct th_case {
    const char *name;
    void (*setup)(void);    /* may be NULL */
    void (*teardown)(void); /* may be NULL */
    int timeout_s;
    const TTest *tests[40];
    const TTest *loop_test; /* also run for _i in [0, loop_end), or NULL */
    int loop_end;
} th_case;
int th_main(const char *suite, const th_case *cases, size_t ncases);
#define TH_MAIN(suite, ...)                                                                        \
    int main(void)                                                                                 \
    {                                                                                              \
        const th_case cases_[] = { __VA_ARGS__ };                                                  \
        return th_main(suite, cases_, sizeof cases_ / sizeof cases_[0]);                           \
    }

#endif
