/* qemu.c — running qemu-img as a child process: the data plane of merges and
 * reparents is QEMU's own code, never ours. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int vdi_qemu_img_(const char *const *argv, vdi_progress_fn progress, void *ctx, vdi_error *err)
{
    int out[2];
    if (pipe2(out, O_CLOEXEC) < 0)
        return vdi_error_set(err, -errno, "pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(out[0]);
        close(out[1]);
        return vdi_error_set(err, -e, "cannot start qemu-img: %s", strerror(e));
    }
    if (pid == 0) {
        dup2(out[1], 1);
        dup2(out[1], 2);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, 0);
        execvp("qemu-img", (char *const *)argv);
        fprintf(stderr, "cannot run qemu-img: %s (install qemu-utils)\n", strerror(errno));
        _exit(127);
    }
    close(out[1]);
    /* Keep the tail of the output for the error message; pass progress on. */
    char tail[2048] = "";
    size_t tlen = 0;
    char buf[4096];
    ssize_t n;
    while ((n = read(out[0], buf, sizeof buf)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (ssize_t i = 0; i < n; i++) {
            if (tlen == sizeof tail - 1) {
                memmove(tail, tail + 1024, tlen - 1024);
                tlen -= 1024;
            }
            tail[tlen++] = buf[i];
        }
        tail[tlen] = '\0';
        if (progress) {
            /* qemu-img -p prints "    (12.34/100%)\r". */
            char *last = NULL;
            for (char *p = strstr(tail, "/100%)"); p; p = strstr(p + 1, "/100%)"))
                last = p;
            if (last) {
                char *open = last;
                while (open > tail && *open != '(')
                    open--;
                double pct = strtod(open + 1, NULL);
                progress(pct, ctx);
            }
        }
    }
    close(out[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    /* The last non-progress line is qemu-img's error. */
    char *msg = tail;
    for (char *p = tail; *p; p++)
        if (*p == '\r')
            *p = '\n';
    char *end = tail + strlen(tail);
    while (end > tail && (end[-1] == '\n' || end[-1] == ' '))
        *--end = '\0';
    char *nl = strrchr(tail, '\n');
    if (nl)
        msg = nl + 1;
    return vdi_error_set(err, -EIO, "qemu-img %s failed (%s %d): %s", argv[1],
                         WIFEXITED(status) ? "exit" : "signal",
                         WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), msg);
}
