/* service_helpers.h — running vdipoold in tests: a config in a temp dir, the
 * daemon as a child process, HTTP calls on its socket, and cleanup of every
 * domain whose name carries the test's prefix. */
#ifndef VDI_SERVICE_HELPERS_H
#define VDI_SERVICE_HELPERS_H

#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>

typedef struct th_daemon {
    char dir[1024]; /* the test's directory (traversable by QEMU) */
    char conf[1100];
    char sock[1100];
    char state[1100];
    char gold[1100];
    char prefix[32]; /* desktops are PREFIX-NNN: what cleanup destroys */
    char uri[64];
    pid_t pid;
    /* A test that makes ends fail on purpose sets this; otherwise stopping
     * the daemon fails the test when its log has an event=end-failed (a
     * failed end is retried, so counts and states alone would not show it). */
    bool end_failures_expected;
} th_daemon;

/* Makes the directory, a bootable demo gold (sealed) and remembers the URI. */
void th_daemon_prepare(th_daemon *d, const char *tag, const char *uri);
/* Writes the config: one datastore, one pool of `size` with `spares`, plus
 * any extra text appended inside the pool group. */
void th_daemon_write_config(th_daemon *d, unsigned size, unsigned spares, const char *pool_extra);
/* The same frame (service, one datastore) with the given golds setting and
 * the body of pool "demo" (after its name, prefix and datastore). */
void th_daemon_write_pool(th_daemon *d, const char *acquire_timeout, const char *golds,
                          const char *pool_body);
/* Adds `setting` ("key = value;") to the service group of the config
 * written above. */
void th_daemon_add_service_setting(th_daemon *d, const char *setting);
void th_daemon_start(th_daemon *d);
/* Starts the daemon with $VDIPOOL_CRASH_AT=point and waits up to timeout_s
 * for it to kill itself there (SIGKILL); fails the test otherwise. */
void th_daemon_start_until_crash(th_daemon *d, const char *point, int timeout_s);
/* Starts the daemon with $VDIPOOL_STOP_AT=point and waits up to timeout_s
 * for it to stop itself there (SIGSTOP); fails the test otherwise. It
 * stops again at each later pass of the point: the test continues it
 * (SIGCONT) as often as it needs. */
void th_daemon_start_until_stop(th_daemon *d, const char *point, int timeout_s);
/* Whether the daemon is stopped (SIGSTOP) now. */
bool th_daemon_stopped(th_daemon *d);
/* SIGTERM and wait; returns the exit status (or -1 when it had to be killed). */
int th_daemon_stop(th_daemon *d);
/* How many lines of the daemon's log hold `what` (a grep pattern). */
unsigned th_daemon_log_count(th_daemon *d, const char *what);
/* Waits up to timeout_s for a line of the daemon's log holding `what`;
 * whether one came. */
bool th_daemon_log_wait(th_daemon *d, const char *what, int timeout_s);
/* Destroys and undefines every domain named PREFIX-*. */
void th_daemon_cleanup_domains(th_daemon *d);

/* One HTTP request; returns the status and the parsed body (caller frees). */
int th_http(th_daemon *d, const char *method, const char *path, const char *body, json_t **out);
/* GET /v1/desktops/NAME, which must answer 200; the caller frees it. */
json_t *th_get_desktop(th_daemon *d, const char *name);
/* POST /v1/pools/demo/acquire for `user`, which must answer `expect` (the
 * failure shows the answer); the caller frees the answer. */
json_t *th_acquire(th_daemon *d, const char *user, int expect);
/* Polls GET /v1/pools/demo until `ready` desktops are ready (and cond holds); fails the test after
 * timeout_s. */
json_t *th_wait_ready(th_daemon *d, unsigned ready, int timeout_s);

/* GET /v1/pools/demo, which must answer 200; the caller frees it. */
json_t *th_pool(th_daemon *d);
/* Polls GET /v1/pools/demo until cond holds (returns that answer); fails the
 * test with the last answer and `what` after timeout_s. */
json_t *th_wait_pool(th_daemon *d, bool (*cond)(json_t *pool), int timeout_s, const char *what);
/* Another sealed demo gold, DIR/name, in the daemon's catalog; its path
 * into out. */
void th_daemon_seal_new_gold(th_daemon *d, const char *name, char *out, size_t len);

#endif
