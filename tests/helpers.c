/* helpers.c — shared test support; see helpers.h. */
#include "helpers.h"
#include "vdi_engine.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

char *th_tempdir(const char *tag)
{
    const char *base = getenv("VDI_TEST_ROOT");
    if (!base || !*base)
        base = "/var/tmp";
    char *dir = NULL;
    ck_assert(asprintf(&dir, "%s/vdipool-test-%s-XXXXXX", base, tag) > 0);
    ck_assert_msg(mkdtemp(dir) != NULL, "mkdtemp %s: %s", dir, strerror(errno));
    return dir;
}

char *th_path(const char *dir, const char *name)
{
    static char paths[8][4200];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, sizeof paths[0], "%s/%s", dir, name);
    return p;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    /* Tests may leave read-only or immutable files; undo before removing. */
    if (remove(path) < 0 && errno == EPERM) {
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "chattr -i '%s' 2>/dev/null", path);
        if (system(cmd) == 0)
            remove(path);
    }
    return 0;
}

void th_tempdir_remove(char *dir)
{
    if (!dir)
        return;
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

static int run_va(char **out, const char *fmt, va_list ap)
{
    char *cmd = NULL;
    if (vasprintf(&cmd, fmt, ap) < 0)
        return -1;
    char *full = NULL;
    if (asprintf(&full, "(%s) 2>&1", cmd) < 0) {
        free(cmd);
        return -1;
    }
    free(cmd);
    FILE *p = popen(full, "r");
    free(full);
    if (!p)
        return -1;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 1024) {
            cap *= 2;
            char *b = realloc(buf, cap);
            if (!b) {
                free(buf);
                buf = NULL;
            }
            buf = b;
        }
    }
    if (buf)
        buf[len] = '\0';
    int status = pclose(p);
    if (out)
        *out = buf;
    else
        free(buf);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int th_run(char **out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = run_va(out, fmt, ap);
    va_end(ap);
    return rc;
}

char *th_must(const char *fmt, ...)
{
    char *out = NULL;
    va_list ap;
    va_start(ap, fmt);
    int rc = run_va(&out, fmt, ap);
    va_end(ap);
    ck_assert_msg(rc == 0, "command failed (exit %d): %s", rc, out ? out : "");
    return out;
}

bool th_have(const char *program)
{
    return th_run(NULL, "command -v %s", program) == 0;
}

void th_write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ck_assert_msg(fd >= 0, "open %s: %s", path, strerror(errno));
    ck_assert(write(fd, data, len) == (ssize_t)len);
    close(fd);
}

const char *th_hash(const char *path)
{
    static char hex[2 * VDI_HASH_SIZE + 1];
    uint8_t h[VDI_HASH_SIZE];
    vdi_error err = { 0 };
    ck_assert_msg(vdi_content_hash(path, h, &err) == 0, "%s", err.message);
    return vdi_hash_hex(h, hex, sizeof hex);
}

void th_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

void th_put64(uint8_t *p, uint64_t v)
{
    th_put32(p, (uint32_t)(v >> 32));
    th_put32(p + 4, (uint32_t)v);
}

/* Unmounts every mount below root, deepest first. */
static void unmount_below(const char *root)
{
    for (int round = 0; round < 8; round++) {
        FILE *m = fopen("/proc/self/mounts", "r");
        if (!m)
            return;
        char line[4096], best[4096] = "";
        size_t rlen = strlen(root);
        while (fgets(line, sizeof line, m)) {
            char dev[4096], point[4096];
            if (sscanf(line, "%4095s %4095s", dev, point) == 2 && !strncmp(point, root, rlen) &&
                strlen(point) > strlen(best))
                snprintf(best, sizeof best, "%s", point);
        }
        fclose(m);
        if (!best[0])
            return;
        th_run(NULL, "umount '%s' || umount -l '%s'", best, best);
    }
}

int th_run_suite(Suite *s)
{
    /* Every test's files and mounts live below one directory for this run,
     * removed at the end even when a failed check ended a test early (Check
     * leaves a failed test's process with _exit, so no teardown runs). */
    char root[] = "/var/tmp/vdipool-test-XXXXXX";
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    setenv("VDI_TEST_ROOT", root, 1);
    char run[32];
    snprintf(run, sizeof run, "v%ld", (long)getpid());
    setenv("VDI_TEST_RUN", run, 1);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    /* What a failed test may have left running: daemons started with a
     * config below root, and libvirt domains named after this run. */
    th_run(NULL, "pkill -KILL -f '%s/' ; true", root);
    th_run(NULL,
           "command -v virsh >/dev/null && for n in $(virsh -c qemu:///system list --all --name "
           "2>/dev/null | grep '^%s-'); do virsh -c qemu:///system destroy $n; virsh -c "
           "qemu:///system undefine $n; done; true",
           run);
    unmount_below(root);
    th_tempdir_remove(strdup(root));
    return failed;
}

int th_main(const char *suite, const th_case *cases, size_t ncases)
{
    Suite *s = suite_create(suite);
    for (size_t i = 0; i < ncases; i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_set_timeout(tc, cases[i].timeout_s ? cases[i].timeout_s : 60);
        if (cases[i].setup || cases[i].teardown)
            tcase_add_checked_fixture(tc, cases[i].setup, cases[i].teardown);
        for (size_t k = 0; k < sizeof cases[i].tests / sizeof cases[i].tests[0] && cases[i].tests[k];
             k++)
            tcase_add_test(tc, cases[i].tests[k]);
        if (cases[i].loop_test)
            tcase_add_loop_test(tc, cases[i].loop_test, 0, cases[i].loop_end);
        suite_add_tcase(s, tc);
    }
    return th_run_suite(s) ? 1 : 0;
}
