/* vdi-guest-user — logs a user in or off inside the Linux test gold, the way
 * a display manager does: a USER_PROCESS entry in utmp while the user is
 * logged in, a DEAD_PROCESS entry when they log off. The QEMU guest agent's
 * guest-get-users reads exactly these entries, which is how vdipool sees
 * log-ins and log-offs. Built statically on the host (deploy/make-linux-gold.sh).
 *
 *   vdi-guest-user login USER      (also writes /run/vdi-user with USER)
 *   vdi-guest-user logout USER
 *   vdi-guest-user who             (the logged-in users, one per line) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>
#include <utmpx.h>

static int write_entry(const char *user, short type)
{
    struct utmpx ut;
    memset(&ut, 0, sizeof ut);
    ut.ut_type = type;
    ut.ut_pid = 1;
    /* One seat: the desktop's console, as a display manager's :0. */
    snprintf(ut.ut_line, sizeof ut.ut_line, "tty1");
    memcpy(ut.ut_id, "vdi1", 4); /* not NUL-terminated, like every ut_id */
    snprintf(ut.ut_user, sizeof ut.ut_user, "%s", type == USER_PROCESS ? user : "");
    snprintf(ut.ut_host, sizeof ut.ut_host, ":0");
    struct timeval tv;
    gettimeofday(&tv, NULL);
    ut.ut_tv.tv_sec = (int32_t)tv.tv_sec;
    ut.ut_tv.tv_usec = (int32_t)tv.tv_usec;
    /* glibc does not create the file: a fresh /run has none. */
    int fd = open(_PATH_UTMPX, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0)
        close(fd);
    setutxent();
    struct utmpx *done = pututxline(&ut);
    endutxent();
    if (!done) {
        perror("vdi-guest-user: cannot write utmp");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "who")) {
        setutxent();
        struct utmpx *u;
        while ((u = getutxent()))
            if (u->ut_type == USER_PROCESS)
                printf("%.*s\n", (int)sizeof u->ut_user, u->ut_user);
        endutxent();
        return 0;
    }
    if (argc != 3 || (strcmp(argv[1], "login") && strcmp(argv[1], "logout"))) {
        fprintf(stderr, "usage: vdi-guest-user login|logout USER | who\n");
        return 2;
    }
    int login = !strcmp(argv[1], "login");
    int rc = write_entry(argv[2], login ? USER_PROCESS : DEAD_PROCESS);
    if (rc == 0)
        fprintf(stderr, "vdi-guest-user: %s %s\n", argv[2], login ? "logged in" : "logged off");
    return rc;
}
