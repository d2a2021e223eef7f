/* jobs.h — a job on the thread pool for one desktop (jobs.c, agent.c): what
 * it owns, how it is queued and how its result comes back to the loop.
 * Private to the daemon's job files. */
#ifndef VDI_JOBS_H
#define VDI_JOBS_H

#include "daemon.h"

typedef enum {
    JOB_CLONE,
    JOB_START,
    JOB_END,
    JOB_LEFTOVERS,
    JOB_RESUME,
    JOB_BUDGET,
    JOB_AGENT_CHECK, /* agent.c: ping, identity; the desktop is busy */
    JOB_USERS,       /* agent.c: the guest's users; not busy */
    JOB_ADOPT_CHECK, /* adopt.c: a held desktop's domain described again; busy */
} job_kind;

typedef struct job {
    job_kind kind;
    uint64_t seq; /* the desktop's job_seq when submitted */
    /* Inputs, owned by the job. */
    vdi_catalog *catalog; /* thread-safe; outlives every job */
    vdi_config *config;   /* a reference: pc and ds point into it */
    const vdi_pool_config *pc;
    const vdi_datastore_config *ds;
    virConnectPtr conn; /* the desktop's host's, a reference; NULL when disconnected */
    char *host;         /* that host's name, or NULL */
    char *address;      /* where its displays are reached (host_display_address) */
    char *template_child, *memory_image; /* start = "resume": what it resumes from, or NULL */
    char *pool, *name, *child, *gold;
    /* JOB_CLONE: the gold's hash it read (output); JOB_START: the
     * desktop's, or "" when unknown (input). */
    char gold_hash[2 * VDI_HASH_SIZE + 1];
    /* JOB_CLONE: the child's allocated bytes as its record has them
     * (output); JOB_START: the desktop's, 0 when unknown (input). */
    uint64_t child_bytes;
    unsigned slot;
    uint64_t threshold;        /* JOB_BUDGET: the write budget the desktop went past */
    unsigned clones_in_flight; /* JOB_CLONE: other clones admitted but not recorded yet */
    /* The pool's learned growth when still fresh (growth_read), else read
     * by the worker (growth_reread) and handed back to the pool. */
    bool growth_read, growth_learned;
    uint64_t growth_p95;
    int64_t session_id;
    end_reason reason;
    char *hostname; /* JOB_AGENT_CHECK: to set, or NULL */
    double started;
    start_slots *start_slots; /* JOB_START: where its slot is freed once its domain exists */
    /* Outputs, written by the worker, read on the loop after it. */
    int rc;
    bool slot_released; /* JOB_START: its slot was freed before its result */
    bool blocked; /* a pool-wide reason (space, gold), not this desktop's */
    bool template_bad; /* the memory image or its template changed: the pool boots */
    bool agent_connected; /* a resumed start: the guest agent's channel is connected */
    char *error;
    char *display;
    bool growth_reread;
    json_t *users; /* JOB_USERS: the names, owned until delivered */
    json_t *domain;       /* JOB_ADOPT_CHECK: the domain as adoption reads it, NULL: gone */
    int64_t idle_seconds; /* JOB_USERS: from idle_command, -1 when unknown */
} job;

double jobs_mono(void);
/* What a desktop of the job's pool is expected to grow by: the p95 of its
 * finished sessions once there are enough, else expected_growth (job.c). */
uint64_t job_growth(job *j);
/* How long a pool's learned growth is reused before a job reads the
 * sessions again: a p95 over the last 500 sessions moves slowly, and reading
 * them for every clone was a fifth of the daemon's work under load. */
#define GROWTH_TTL 10.0
void job_free(job *j);
void job_fail(job *j, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
const char *libvirt_message(void);
/* The job's domain, or NULL with the job failed (-ENOENT). */
virDomainPtr job_domain(job *j);
/* A job for d with copies of what any job for it reads, or NULL. */
job *desktop_job(desktop *d, job_kind kind);
/* The job's child's size as the clone before this start measured it
 * (child_bytes), else as its record has it; -1 when unknown. The same from
 * a record already read. */
int64_t job_child_bytes(job *j);
int64_t job_recorded_bytes(const vdi_child_info *rec);
/* The domain's write budget: child_bytes (-1: ask libvirt) + the pool's
 * expected growth; a failure is logged. */
void job_set_write_budget(job *j, virDomainPtr dom, int64_t child_bytes);
/* A start job's domain exists: its slot goes to the next start (startslots.c). */
void job_release_start_slot(job *j);
/* A domain of the job was started: its display and its write budget. */
void job_domain_running(job *j, virDomainPtr dom, int64_t child_bytes);
/* templates.c: a resumed start, and the removal of its image copy. */
void template_resume_start(job *j);
void template_resume_copy_remove(const char *child);
/* Queues a job that makes d busy until its result; on failure the desktop
 * gets the failure as its result at once. */
void job_submit(desktop *d, job_kind kind, work_run_fn run);
/* The same with the loop's side given (agent.c's jobs deliver their own). */
void job_submit_with(desktop *d, job_kind kind, work_run_fn run, work_done_fn done);
/* The loop's side of jobs.c's jobs: finds the desktop again and delivers. */
void job_done(service *svc, void *data);
/* The desktop a busy job was for, or NULL when its slot or pool is gone or
 * another job has taken it since. */
desktop *job_desktop(service *svc, const job *j);

/* What the jobs do on a worker (jobruns.c); data is the job. */
void jobs_clone_run(void *data);
void jobs_start_run(void *data);
void jobs_end_run(void *data);
void jobs_resume_run(void *data);
void jobs_budget_run(void *data);

/* The operations of real_desktop_ops (ops.c) that jobs.c runs. */
void jobs_op_clone(desktop *d);
void jobs_op_start(desktop *d);
void jobs_op_end(desktop *d);
void jobs_op_resume(desktop *d);
void jobs_op_check_budget(desktop *d, uint64_t threshold);
int64_t jobs_op_now(void);

#endif
