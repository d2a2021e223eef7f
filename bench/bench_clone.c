/* bench_clone — clone throughput. Makes N children of one gold three ways in
 * one run and reports microseconds and allocated bytes per child:
 *   native : vdi_cloner_create, one process (the engine's path)
 *   floor  : the same number of files of the same shape (temporary name, the
 *            same small writes at the same offsets, ftruncate, rename) with no
 *            qcow2 work at all: what the syscalls alone cost
 *   qemu   : `qemu-img create -f qcow2 -b GOLD -F FMT` run once per child
 * and, for the durable batch path, native stage+commit with one syncfs.
 *
 * usage: bench_clone GOLD DIR [N] [ROUNDS] */
#include "vdi_engine.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_clone: %s\n", what);
    exit(1);
}

/* Empties the bench directory and flushes the filesystem, so one method's
 * deletes (and the discards they cause) do not land in the next one's timing. */
static void clean_dir(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "find '%s' -mindepth 1 -maxdepth 1 -name 'b-*' -delete", dir);
    if (system(cmd) != 0)
        die("cleaning the bench directory failed");
    sync();
}

static uint64_t allocated_per_file(const char *dir, int n)
{
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/b-%05d.qcow2", dir, i);
        struct stat st;
        if (stat(p, &st) == 0)
            total += (uint64_t)st.st_blocks * 512;
    }
    return total / (uint64_t)n;
}

static double run_native(const char *gold, const char *dir, int n)
{
    vdi_clone_options o;
    vdi_clone_options_init(&o);
    o.sync = false;
    vdi_cloner *c = NULL;
    vdi_error err = { 0 };
    double t0 = now();
    if (vdi_cloner_new(gold, &o, &c, &err) < 0)
        die(err.message);
    for (int i = 0; i < n; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/b-%05d.qcow2", dir, i);
        if (vdi_cloner_create(c, p, &err) < 0)
            die(err.message);
    }
    double t = now() - t0;
    vdi_cloner_free(c);
    return t;
}

static double run_batch_durable(const char *gold, const char *dir, int n)
{
    vdi_cloner *c = NULL;
    vdi_error err = { 0 };
    double t0 = now();
    if (vdi_cloner_new(gold, NULL, &c, &err) < 0)
        die(err.message);
    for (int i = 0; i < n; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/b-%05d.qcow2", dir, i);
        if (vdi_cloner_stage(c, p, &err) < 0)
            die(err.message);
    }
    if (vdi_cloner_commit(c, NULL, &err) < 0)
        die(err.message);
    double t = now() - t0;
    vdi_cloner_free(c);
    return t;
}

/* The same syscalls as a native child, with data of the same sizes prepared
 * once: what any writer of such a file would pay. */
static double run_floor(const char *dir, int n, const size_t lens[3], const off_t offs[3],
                        off_t size)
{
    static uint8_t blob[65536];
    memset(blob, 1, sizeof blob);
    double t0 = now();
    for (int i = 0; i < n; i++) {
        char tmp[4200], p[4200];
        snprintf(tmp, sizeof tmp, "%s/.floor-tmp-%d", dir, i);
        snprintf(p, sizeof p, "%s/b-%05d.qcow2", dir, i);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
        if (fd < 0)
            die("floor: open failed");
        for (int w = 0; w < 3; w++)
            if (pwrite(fd, blob, lens[w], offs[w]) != (ssize_t)lens[w])
                die("floor: write failed");
        if (ftruncate(fd, size) < 0 || close(fd) < 0)
            die("floor: ftruncate failed");
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, p, RENAME_NOREPLACE) < 0)
            die("floor: rename failed");
    }
    return now() - t0;
}

static double run_qemu_img(const char *gold, const char *fmt, const char *dir, int n)
{
    double t0 = now();
    for (int i = 0; i < n; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/b-%05d.qcow2", dir, i);
        pid_t pid = fork();
        if (pid == 0) {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 1);
            execlp("qemu-img", "qemu-img", "create", "-q", "-f", "qcow2", "-b", gold, "-F", fmt,
                   p, (char *)NULL);
            _exit(127);
        }
        int st;
        if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
            die("qemu-img create failed");
    }
    return now() - t0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_clone GOLD DIR [N=1000] [ROUNDS=5]\n");
        return 2;
    }
    const char *gold = argv[1], *dir = argv[2];
    int n = argc > 3 ? atoi(argv[3]) : 1000;
    int rounds = argc > 4 ? atoi(argv[4]) : 5;
    if (n < 1 || n > 99999 || rounds < 1 || rounds > 50)
        die("N must be 1..99999 and ROUNDS 1..50");

    /* Learn the shape of a native child (the three writes and the size) from
     * the header we write, so the floor does exactly as much I/O. */
    vdi_image *g = NULL;
    vdi_error err = { 0 };
    if (vdi_image_open(gold, &g, &err) < 0)
        die(err.message);
    const char *fmt = vdi_format_name(vdi_image_format(g));
    vdi_image_close(g);
    clean_dir(dir);
    run_native(gold, dir, 1);
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/b-00000.qcow2", dir);
    vdi_image *child = NULL;
    if (vdi_image_open(probe, &child, &err) < 0)
        die(err.message);
    uint32_t cs = vdi_image_cluster_size(child);
    off_t size = (off_t)vdi_image_file_size(child);
    size_t hdr = 112 + 16 + 8 + strlen(vdi_image_backing_name(child));
    vdi_image_close(child);
    size_t lens[3] = { hdr, 8, (size_t)(size / cs) * 2 };
    off_t offs[3] = { 0, cs, 2 * (off_t)cs };

    double tn[50], tf[50], tb[50];
    uint64_t alloc_native = 0, alloc_floor = 0;
    for (int r = 0; r < rounds; r++) {
        clean_dir(dir);
        tn[r] = run_native(gold, dir, n);
        alloc_native = allocated_per_file(dir, n);
        clean_dir(dir);
        tf[r] = run_floor(dir, n, lens, offs, size);
        alloc_floor = allocated_per_file(dir, n);
        clean_dir(dir);
        tb[r] = run_batch_durable(gold, dir, n);
    }
    clean_dir(dir);
    double tq = run_qemu_img(gold, fmt, dir, n);
    uint64_t alloc_qemu = allocated_per_file(dir, n);
    clean_dir(dir);

    double native = median(tn, rounds), floor_ = median(tf, rounds), batch = median(tb, rounds);
    printf("children: %d of %s (%s), median of %d rounds (qemu-img: 1 round)\n", n, gold, fmt,
           rounds);
    printf("%-34s %12s %16s\n", "method", "us/child", "allocated/child");
    printf("%-34s %12.1f %16llu\n", "native (vdi_cloner_create)", native * 1e6 / n,
           (unsigned long long)alloc_native);
    printf("%-34s %12.1f %16llu\n", "floor (same files, no qcow2 work)", floor_ * 1e6 / n,
           (unsigned long long)alloc_floor);
    printf("%-34s %12.1f %16s\n", "native batch + one syncfs", batch * 1e6 / n, "-");
    printf("%-34s %12.1f %16llu\n", "qemu-img create per child", tq * 1e6 / n,
           (unsigned long long)alloc_qemu);
    printf("native vs qemu-img: %.0fx faster (target >= 100x)\n", tq / native);
    printf("native vs floor:    %.2fx the floor's time (target <= 1.5x)\n", native / floor_);
    return 0;
}
