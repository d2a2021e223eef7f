/* bench_util.h — what the service benchmarks share: a clock, a sealed demo
 * gold in a fresh work directory, vdipoold as a child process, its RSS,
 * and counts of a pool's desktops by state. */
#ifndef VDI_BENCH_UTIL_H
#define VDI_BENCH_UTIL_H

#include <stddef.h>
#include <sys/types.h>

double bench_now(void); /* monotonic seconds */
int bench_cmp_double(const void *a, const void *b);

/* Removes WORK, makes WORK/ds and a sealed demo gold GOLD (of gold_mib MiB
 * when not 0) with vdipoolctl from beside DAEMON, its catalog in
 * WORK/state. 0, or -1 with a message on stderr. */
int bench_prepare(const char *work, const char *daemon, const char *make_gold, const char *gold,
                  unsigned gold_mib);
/* Writes text to WORK/vdipool.conf and starts DAEMON on it, its log in
 * WORK/vdipoold.log; the child's pid, or -1. */
pid_t bench_start_daemon(const char *daemon, const char *work, const char *config_text);
void bench_stop_daemon(pid_t pid);
/* Removes WORK (sealed images are immutable: unlocked first). */
void bench_cleanup(const char *work, const char *gold);
long bench_rss_kib(pid_t pid);
/* CPU seconds (user + system) a process has used so far, -1 when unknown. */
double bench_cpu_seconds(pid_t pid);
/* vdipoold's threads by role, from their names: the loop ("vdipoold"), the
 * catalog's flusher, the job workers, libvirt's event thread, and any
 * other. CPU seconds and voluntary switches of each role's threads now. */
enum { BENCH_LOOP, BENCH_FLUSHER, BENCH_WORKERS, BENCH_LV_EVENTS, BENCH_OTHER, BENCH_ROLES };
typedef struct bench_role_use {
    double cpu_s, sleeps;
} bench_role_use;
extern const char *const bench_role_names[BENCH_ROLES];
int bench_threads_by_role(pid_t pid, bench_role_use out[BENCH_ROLES]);
/* The voluntary switches (sleeps) of all the roles' threads, summed. */
double bench_sleeps_of(const bench_role_use use[BENCH_ROLES]);
/* The machine's CPU seconds so far, all cores, from /proc/stat: busy (steal
 * included), idle, of the idle the part with I/O outstanding, and of the
 * busy the part the hypervisor gave to other guests (steal); 0 when
 * unknown. */
void bench_machine_cpu(double *busy, double *idle, double *iowait, double *steal);
/* Desktops of pool `bench` in `state`, from GET /v1/pools/bench?summary=1; -1 on failure. */
int bench_count(const char *sock, const char *state);

/* Polls pool `bench` every poll_ms until `want` desktops are ready: 0,
 * -1 when vdipoold exited (said on stderr, with its log), -2 after limit_s;
 * *ready (may be NULL) gets the last count. */
int bench_wait_ready(const char *sock, const char *work, pid_t pid, unsigned want,
                     double limit_s, unsigned poll_ms, int *ready);
/* Follows GET /v1/events?pool=bench and keeps the names of its ready
 * desktops (a snapshot of the pool, then every desktop event): a wait
 * without polling, whose requests would load the machine being measured.
 * Only for waits in which desktops move toward ready or are released by
 * the bench itself. */
typedef struct bench_watch bench_watch;
/* NULL with a message on stderr. */
bench_watch *bench_watch_open(const char *sock);
/* 0 once `want` desktops are ready, -1 when the stream ended, -2 after
 * limit_s. */
int bench_watch_until_ready(bench_watch *w, unsigned want, double limit_s);
/* The same, until desktop `name` is no longer ready (an acquire took it). */
int bench_watch_until_not_ready(bench_watch *w, const char *name, double limit_s);
/* When the watch last saw a desktop enter cloning and starting (bench_now()
 * seconds, 0: never): with one desktop moving, the boundaries of its end,
 * clone and start. */
void bench_watch_phases(const bench_watch *w, double *cloning_at, double *starting_at);
void bench_watch_close(bench_watch *w);
/* n children of gold, WORK/ds/PREFIX-NNN.qcow2 (width digits), recorded in
 * WORK/state's catalog for datastore "local" and the given pool, as a
 * daemon leaves them. 0, or -1 with a message. */
int bench_record_children(const char *work, const char *gold, const char *prefix, unsigned n,
                          unsigned width, const char *pool);
/* A catalog's history as months of use leave it: `ended` finished sessions
 * of pool POOL's desktops PREFIX-NNN (1..n, width digits) spread over the
 * last year, and an open session on every `open_every`-th desktop (0:
 * none), written straight into WORK/state's catalog in one transaction.
 * 0, or -1 with a message. */
int bench_record_sessions(const char *work, const char *pool, const char *prefix, unsigned n,
                          unsigned width, unsigned long ended, unsigned open_every);

#endif
