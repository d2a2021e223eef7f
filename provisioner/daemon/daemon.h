/* daemon.h — vdipoold's insides, shared by its rooms: the service, its
 * pools and their desktops.
 *
 * Ownership (libuv's rule): every field below is owned and changed by the
 * libuv loop thread only, unless its comment names another owner. Work on
 * the thread pool gets copies of what it reads (strings, a reference on the
 * config and on the libvirt connection) and hands its result back to the
 * loop, which finds its desktop again by pool name and slot and alone
 * changes state.
 *
 * The catalog is safe to use from any thread (it serialises its own
 * statements and transactions, never across file work). The loop calls it
 * only for short single-statement writes; the accepted ones are recording a
 * session's start in session.c (committed without a flush; its answer waits
 * for the flusher, durable.c) and a gold's state change in service.c. */
#ifndef VDI_DAEMON_H
#define VDI_DAEMON_H

#include "log.h"
#include "text.h"
#include "vdi_config.h"
#include "vdi_engine.h"

#include <jansson.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* ---- names from one list each ------------------------------------------------ */

/* Desktop states: empty -> cloning -> starting [-> booting] -> ready ->
 * assigned -> ending -> empty, with failed (reason, back-off) and paused
 * (the guest stopped on an I/O error, such as a full datastore) beside
 * them. booting: the domain runs, its guest agent has not answered yet
 * (pools with ready_when = "agent"). resuming: instead of starting, for
 * start = "resume": restored from the pool's memory image (templates.c).
 * unreachable: its host's libvirtd cannot be
 * reached; the desktop (and its session) is kept, not ended, until the host
 * answers again and says whether its domain still runs (hosts.c).
 * adopting: found at adoption with libvirt still at work on its domain (a
 * start or restore begun for a vdipoold that stopped); kept, never handed
 * out or ended, until libvirt is done or service.adopt_wait passed (adopt.c). */
#define DESKTOP_STATE_MAP(XX)                                                                      \
    XX(EMPTY, "empty")                                                                             \
    XX(CLONING, "cloning")                                                                         \
    XX(STARTING, "starting")                                                                       \
    XX(RESUMING, "resuming")                                                                       \
    XX(BOOTING, "booting")                                                                         \
    XX(READY, "ready")                                                                             \
    XX(ASSIGNED, "assigned")                                                                       \
    XX(ENDING, "ending")                                                                           \
    XX(FAILED, "failed")                                                                           \
    XX(PAUSED, "paused")                                                                           \
    XX(UNREACHABLE, "unreachable")                                                                 \
    XX(ADOPTING, "adopting")

typedef enum desktop_state {
#define XX(id, name) DESKTOP_##id,
    DESKTOP_STATE_MAP(XX)
#undef XX
        DESKTOP_STATE_COUNT
} desktop_state;

/* Why a session (or a desktop without one) ended: recorded in the catalog,
 * counted in metrics, shown in the API. */
#define END_REASON_MAP(XX)                                                                         \
    XX(GUEST_SHUTDOWN, "guest-shutdown")                                                           \
    XX(RELEASED, "released")                                                                       \
    XX(MAX_DURATION, "max-duration")                                                               \
    XX(OPERATOR, "operator")                                                                       \
    XX(CRASHED, "crashed")                                                                         \
    XX(OTHER, "other")                                                                             \
    XX(NO_SPACE, "no-space")                                                                       \
    XX(LOGGED_OFF, "logged-off")                                                                   \
    XX(AGENT_LOST, "agent-lost")                                                                   \
    XX(NO_LOGIN, "no-login")                                                                       \
    XX(BOOT_TIMEOUT, "boot-timeout")                                                               \
    XX(IDLE, "idle")                                                                               \
    XX(ROLLOUT, "rollout")

typedef enum end_reason {
#define XX(id, name) END_##id,
    END_REASON_MAP(XX)
#undef XX
        END_REASON_COUNT
} end_reason;

const char *desktop_state_name(desktop_state s);
const char *end_reason_name(end_reason r);

/* ---- objects ------------------------------------------------------------------- */

typedef struct service service;
typedef struct pool pool;

typedef enum agent_state { AGENT_UNKNOWN, AGENT_CONNECTED, AGENT_DISCONNECTED } agent_state;
#define AGENT_RETRY_S 2 /* booting: the agent connected but did not answer yet */
const char *agent_state_name(agent_state a);
typedef struct waiter waiter;
typedef struct durable durable;
typedef struct api_server api_server;
typedef struct subscriber subscriber;
struct gold_job;
typedef struct libvirt_bridge libvirt_bridge;

/* A KVM host: one libvirtd, one connection (hosts.c). Hosts are made from
 * the config and never freed before the service: a host removed from the
 * config keeps its object (cfg NULL) and drains, so desktops point at it
 * safely. */
typedef struct host {
    service *svc;            /* immutable */
    char *name;              /* immutable */
    unsigned index;          /* immutable: its place in svc->hosts */
    const vdi_host_config *cfg; /* into svc->config; NULL once removed from it */
    char *uri;               /* the uri its bridge connects to */
    libvirt_bridge *bridge;  /* NULL in tests with fake ops */
    virConnectPtr conn;      /* a reference, NULL while disconnected */
    bool online;             /* connected (tests set it alone) */
    bool adopted;            /* its domains were listed and adopted since it connected */
    bool adopting;
    /* Its desktops are known: adopted, or (it could not be reached at
     * start) those the catalog records on it are shown unreachable. The
     * controllers start once every host is settled, so that a slot of an
     * unreachable host is never taken for a new desktop. */
    bool settled;
    bool marking;            /* the catalog is read for its desktops */
    json_t *stopped_while_adopting; /* see service.stopped_while_adopting */
    json_t *listing;                /* its domains at the last adoption, for the stray check */
    char *last_error;
    int64_t last_error_at, connected_since, lost_since;
    /* Memory, read on a worker every HOST_READ_S seconds. */
    bool memory_known, reading;
    uint64_t free_memory, total_memory;
    uint64_t memory_placed;  /* of desktops placed here since the reading */
    bool ksm_known, ksm_running; /* a local host: the kernel's same-page merging */
    uint64_t ksm_shared, ksm_sharing; /* pages kept, and pages merged into them */
    int64_t read_at;
    unsigned desktops;       /* desktops placed here (every state but empty) */
} host;

/* A slot's last state changes, for an operator looking at one desktop
 * (GET /v1/desktops/{name}); a ring allocated at its first change, so an
 * empty slot of a large pool costs one pointer. */
#define DESKTOP_HISTORY 16
typedef struct desktop_change {
    int64_t at;       /* unix seconds */
    uint8_t from, to; /* desktop_state */
    uint8_t reason;   /* to ending: the end_reason; else END_REASON_COUNT */
} desktop_change;
typedef struct desktop_history {
    unsigned next, count; /* next: where the next change goes */
    desktop_change changes[DESKTOP_HISTORY];
} desktop_history;

/* A desktop is one slot of a pool. Allocated one by one: its address is
 * stable for the pool's lifetime, and slots are never freed while the pool
 * lives (a pool that shrinks keeps its slots past `size`, empty). */
typedef struct desktop {
    pool *pool;    /* immutable: the pool that owns the slot */
    unsigned slot; /* immutable, 1-based */
    host *host;    /* where its domain runs (or will); NULL while empty */
    desktop_state unreachable_from; /* while unreachable: the state it had */
    desktop_state state;
    bool busy;             /* a job runs for it; only its result changes state */
    bool stopped_in_check; /* adopting: its domain stopped while a check ran */
    bool fail_after_end;   /* a start failed: after the end, go to failed */
    uint64_t job_seq;      /* the running job's number: a stale result is dropped */
    end_reason end_reason; /* why the desktop is ending */
    unsigned failures;     /* consecutive, for back-off */
    int64_t state_since;   /* unix seconds */
    int64_t retry_at;      /* failed/ending: when to try again */
    int64_t session_id;    /* catalog row of the open session, 0 when none */
    int64_t session_start;
    char *name;                 /* libvirt domain name: PREFIX-NNN */
    char *child;                /* its differencing child */
    char *gold;                 /* the gold it was (or is being) cloned from */
    /* start = "resume": the template child its child was cloned from and
     * the memory image it resumes from; NULL when it boots. */
    char *template_child;
    char *memory_image;
    char *user;                 /* while assigned, else NULL */
    char *failure;              /* the last failure, or NULL */
    char *display;              /* "vnc://127.0.0.1:5900", or NULL */
    char *pause_reason;         /* while paused: "no space" or what QEMU said */
    desktop_state resume_state; /* while paused: ready or assigned */
    int64_t paused_since;
    char *io_error; /* an I/O error QEMU reported before the desktop was ready */
    /* The guest agent (agent.c), for pools with ready_when = "agent". */
    agent_state agent;       /* from libvirt's agent lifecycle events */
    int64_t agent_since;     /* when agent last changed */
    bool agent_ready;        /* it answered and the identity was set: may be ready */
    int64_t agent_retry_at;  /* booting: when to ask the agent again */
    double start_mono;       /* when the start began (monotonic s), for boot time */
    double clone_mono;       /* when its clone began, for clone-to-ready time; 0 when not */
    double boot_seconds;     /* start to ready of the current run; 0 when unknown */
    char *hostname;          /* set through the agent */
    json_t *users;           /* the guest's logged-in users (array of names), or NULL */
    bool user_seen;          /* assigned: a user has logged in during this session */
    int64_t logged_off_at;   /* assigned: when the guest's user list became empty */
    int64_t idle_seconds;    /* assigned: from the pool's idle_command; -1 unknown */
    bool users_polling;      /* a users job runs (the desktop is not busy for it) */
    int64_t users_poll_at;   /* when to ask for the users next */
    uint64_t rss_bytes;      /* its QEMU's resident memory at the host's last reading */
    desktop_history *history; /* its last state changes, NULL before the first */
    /* The pool's list of desktops in this state, in the order they entered
     * it (desktop_set_state keeps it), so that a lookup by state costs what
     * that state holds, not the pool's size. */
    struct desktop *state_prev, *state_next;
} desktop;

typedef struct desktop_list {
    desktop *head, *tail; /* head: in this state the longest */
    unsigned count;
} desktop_list;

struct pool {
    service *svc;       /* immutable */
    char *name;         /* immutable */
    vdi_config *config; /* a reference: cfg points into it */
    const vdi_pool_config *cfg;
    desktop **desktops; /* nslots stable pointers, slot i+1 at [i] */
    unsigned nslots;
    bool draining;            /* removed from config: no new sessions */
    char *blocked;            /* why it cannot clone now, NULL when it can */
    int64_t blocked_retry_at; /* while blocked: the next probe (back-off); 0: at once */
    unsigned blocked_probes;  /* failed probes in a row, for the back-off */
    int gold_lock;            /* fd holding QEMU's write lock on the gold, -1 */
    char *locked_gold;
    int retiring_lock; /* the previous gold's lock during a roll-out, -1 */
    char *retiring_gold;
    /* rollout = "manual": the gold the pool stays on until an operator says
     * (pool_rollout), while its config names a newer one; NULL otherwise. */
    char *held_gold;
    int64_t gold_since; /* when the pool's gold last changed (rollout_notice) */
    uint64_t sessions_started;
    uint64_t sessions_ended[END_REASON_COUNT];
    /* Sessions started and ended in each of the last 60 minutes (a ring by
     * minute; a bucket is reused once its minute is an hour old), for the
     * pool's "last hour" figures. */
    struct {
        int64_t minute[60]; /* which minute (unix seconds / 60) the bucket counts */
        uint32_t started[60];
        uint32_t ended[60][END_REASON_COUNT];
    } recent;
    /* Drained by an operator (POST /v1/pools/{pool}/drain): no new
     * sessions, spares go, sessions finish; kept in the catalog across
     * restarts (drain.c). 0 when open. */
    int64_t drained_since;
    desktop_list by_state[DESKTOP_STATE_COUNT]; /* every slot is on one list */
    /* Acquires waiting for a desktop of this pool, oldest first (session.c). */
    waiter *waiting_head, *waiting_tail;
    unsigned nwaiting;
    /* user -> slot of the assigned desktops, kept with the assigned list
     * (desktop_list_add/remove), so that an acquire finds the user's
     * desktop without walking every session. Its keys are the desktops' own
     * `user` strings, which change only outside the assigned state.
     * user_clashes counts assigned desktops whose user another assigned
     * desktop also has (the map holds one); by_user_lost: out of memory
     * once, the assigned list is walked instead. */
    struct vdi_strmap *by_user;
    unsigned user_clashes;
    bool by_user_lost;
    /* The controller looks at every desktop once per second (time limits,
     * retries) or at once after a config change; in between only at those
     * waiting to start, paused or adopting (pool.c). */
    int64_t tended_at;
    bool tend_all;
    /* What a desktop is expected to grow by, learned from finished sessions
     * by a job on a worker and kept here for GROWTH_TTL seconds so that each
     * clone does not re-read the last sessions (jobs.c). */
    bool growth_read;         /* the fields below hold a recent reading */
    bool growth_learned;      /* enough sessions: growth_p95 replaces expected_growth */
    uint64_t growth_p95;
    double growth_read_at;    /* monotonic seconds */
    /* Desktops that did not become ready within boot_timeout, in a row;
     * boot_problem says why while it is 3 or more (shown in /v1/pools). */
    unsigned boot_failures;
    char *boot_problem;
    /* Desktops of this pool on each host (by host index, grown on demand),
     * so that placement spreads a pool's spares over its hosts. */
    unsigned *host_counts;
    unsigned nhost_counts;
    /* start = "resume": the memory image new desktops resume from
     * (templates.c). */
    struct {
        enum { TEMPLATE_NONE, TEMPLATE_BUILDING, TEMPLATE_READY, TEMPLATE_FAILED } state;
        char *gold;    /* the gold it was made for */
        char *child;   /* the sealed template child */
        char *image;   /* the memory image */
        char *problem; /* why desktops boot instead, or NULL */
        int64_t retry_at;
        double built_seconds;
        bool retiring;     /* a look for unused images of earlier golds runs */
        int64_t retire_at; /* the next such look */
    } tmpl;
    char *no_host; /* why no host can take a new desktop now, NULL when one can */
};

#define LATENCY_BUCKETS 11 /* le 0.01 .. 60 s, then +Inf */
typedef struct latency_histogram {
    uint64_t buckets[LATENCY_BUCKETS + 1];
    uint64_t count;
    double sum;
} latency_histogram;

/* What the controller does to a desktop, replaceable by tests (fakes with a
 * fake clock drive every transition without libvirt, threads or files).
 * clone/start/end run the work and report through desktop_cloned,
 * desktop_started and desktop_ended (desktop.c), later, on the loop. */
typedef struct desktop_ops {
    void (*clone)(desktop *d);
    void (*start)(desktop *d);
    void (*end)(desktop *d);
    /* Resumes a paused guest when its datastore has room again. */
    void (*resume)(desktop *d);
    /* A desktop went past its write budget: re-check the datastore. */
    void (*check_budget)(desktop *d, uint64_t threshold);
    int64_t (*now)(void);
    /* Booting: ping the guest agent and set the identity, then
     * desktop_agent_checked (the desktop is busy meanwhile). */
    void (*agent_check)(desktop *d);
    /* Assigned: read the guest's users, then desktop_users_read (not busy). */
    void (*read_users)(desktop *d);
    /* Adopting: describe its domain again as adoption reads it, then
     * adopt_checked (the desktop is busy meanwhile). */
    void (*adopt_check)(desktop *d);
} desktop_ops;

extern const desktop_ops real_desktop_ops; /* jobs.c */

struct service {
    uv_loop_t *loop;        /* immutable after start */
    const desktop_ops *ops; /* immutable after start */
    char *config_path;      /* immutable after start */
    char *state_dir;        /* immutable after start */
    int64_t started_at;     /* immutable after start: unix seconds */
    vdi_config *config;     /* a reference; replaced whole by a reload */
    vdi_catalog *catalog;   /* thread-safe itself; immutable pointer after start */
    host **hosts;           /* in config order; never shrinks (see host) */
    size_t nhosts;
    bool online;            /* some host is connected (hosts.c keeps it) */
    bool hosts_started;     /* hosts' bridges run: a host added by a reload connects */
    api_server *api;
    pool **pools;
    size_t npools;
    unsigned clones_running, starts_running; /* desktop.c: between begin and result */
    unsigned jobs_running;                   /* every job in flight (the loop ends after them) */
    uint64_t next_job_seq;
    uv_timer_t tick;
    uv_timer_t kick; /* service_kick: one step on the next loop turn */
    bool kick_pending, kick_ready;
    void (*step)(service *svc); /* what a kick runs (pool.c's service_step) */
    uv_signal_t sighup, sigterm, sigint;
    bool stopping;
    uint64_t reload_asked, reload_applied; /* reload sequence numbers */
    durable *durable;                      /* durable.c: answers sent once on disk; NULL: at once */
    uint64_t answers_waited;               /* answers that waited for a flush (metrics) */
    latency_histogram clone_latency, start_latency, boot_latency, resume_latency;
    latency_histogram ready_latency; /* a new desktop: clone begun to ready */
    unsigned users_reads_running; /* agent user-list reads in flight (bounded) */
    uint64_t budget_events; /* desktops that grew past their write budget */
    bool ready_notified;    /* every pool has its spares ready */
    bool adopted;           /* every host is settled: the controllers may run */
    bool checking_strays;   /* strays.c: a stray check runs on a worker */
    bool scrubbing;
    bool pruning;        /* history.c: old sessions' records are being forgotten */
    int64_t prune_at;    /* history.c: when the next run may start */
    bool refreshing;     /* a refresh of children's sizes runs */
    size_t refresh_next; /* where the next refresh batch starts */
    int64_t last_scrub;
    size_t scrub_next;
    /* Told of every change of a desktop's state (events.c's streams), or
     * NULL: the state machine knows no listener by name. */
    void (*desktop_changed)(desktop *d, desktop_state from);
    subscriber *subscribers; /* GET /v1/events streams (events.c) */
    struct gold_job *gold_jobs; /* gold_api.c: operations in flight (publish progress) */
    unsigned nsubscribers;
    uint64_t event_seq;
    int64_t events_ping_at;
};

/* ---- objects.c: finding, making and freeing the objects ------------------------------ */
int service_objects_init(service *svc, uv_loop_t *loop, void (*step)(service *svc));
pool *service_find_pool(service *svc, const char *name);
desktop *service_find_desktop(service *svc, const char *name);
const vdi_datastore_config *pool_datastore(const pool *p);
void desktop_name_slot(desktop *d);
pool *pool_new(service *svc, vdi_config *config, const vdi_pool_config *pc);
int pool_configure(pool *p, vdi_config *config, const vdi_pool_config *pc);
void pool_free(pool *p);
/* Slots up to `size` (new ones empty); slots never go away while the pool lives. */
int pool_grow_slots(pool *p, unsigned size);
void latency_observe(latency_histogram *h, double seconds);
void service_kick(service *svc);
/* A session started (ended false) or ended for `why`: the totals and the
 * last hour's ring (objects.c). */
void pool_count_session(pool *p, bool ended, end_reason why);
/* The bucket of `minute` (unix seconds / 60) in the pool's last-hour ring,
 * emptied first when it counted an older minute. */
unsigned pool_recent_bucket(pool *p, int64_t minute);
/* Fills the last hour's ring from the catalog's sessions, for a pool just
 * made (session.c). */
void pool_seed_recent(pool *p);

/* ---- drain.c: an operator's drain of a pool ---------------------------------------- */
struct request;
/* No new sessions: removed from the config (draining) or drained by an
 * operator (drained_since). */
static inline bool pool_closed(const pool *p)
{
    return p->draining || p->drained_since != 0;
}
/* A pool just made from the config: drained if the catalog says so. */
void pool_load_drain(pool *p);
/* POST /v1/pools/{pool}/drain and /undrain: recorded in the catalog first,
 * then applied; the answer is the pool, or the error. */
void pool_drain_request(service *svc, struct request *r, const char *pool_name, bool drain);

/* ---- golds.c: gold locks and gold states ------------------------------------------- */
/* The gold new desktops of the pool are cloned from: the config's, or the
 * one a manual roll-out holds the pool on. */
const char *pool_gold(const pool *p);
void pool_lock_gold(pool *p);
void pool_release_gold_locks(pool *p, bool current_too);
/* A config (re)applied: a manual pool holds on to the gold it had. */
void pool_hold_gold(pool *p, const char *previous);
/* `vdipoolctl pool rollout`: a held pool moves to its config's gold. 0, or
 * -EALREADY when it is on it. */
int pool_rollout(pool *p);

/* ---- service.c: the service object, config apply, reload ---------------------------- */
int service_init(service *svc, uv_loop_t *loop, const char *config_path, vdi_config *config,
                 vdi_catalog *catalog, const desktop_ops *ops);
void service_shutdown(service *svc);
int service_apply_config(service *svc, vdi_config *config);
/* Reads the config file again on a worker and applies it on the loop;
 * cb (may be NULL) gets 0, or -EINVAL and the errors as JSON (owned by cb).
 * Returns a negative code when nothing could be queued. */
typedef void (*reload_cb)(void *ctx, int rc, json_t *errors);
int service_reload(service *svc, reload_cb cb, void *ctx);
/* catalog NULL: gold families are not resolved (the first read at start,
 * which only learns where the state directory is). */
int service_load_config(const char *path, vdi_catalog *catalog, vdi_config **out,
                        json_t **errors_json);

/* ---- hosts.c: the KVM hosts, their connections and placement ---------------------- */
#define HOST_READ_S 10 /* how often a host's free memory is read */
/* Makes, updates and retires hosts to match the config (at start and reload). */
int hosts_apply_config(service *svc);
/* Connects every host's bridge (vdipoold, after service_init). */
int hosts_start(service *svc);
void hosts_tick(service *svc);
void hosts_stop(service *svc);  /* at shutdown, before the loop's handles close */
void hosts_close(service *svc); /* after the loop ended */
void hosts_free(service *svc);
host *service_find_host(service *svc, const char *name);
/* Recomputes svc->online (some host connected) and svc->adopted (every
 * host settled). */
void hosts_update(service *svc);
/* A host that can run work now (connected and adopted). */
bool host_usable(const host *h);
/* The first usable host, for work that is not a desktop's (a gold edit). */
host *service_any_host(service *svc);
/* Tests with fake ops: every host connected and adopted (or not). */
void hosts_set_online(service *svc, bool online);
/* Where a new desktop of the pool goes, or NULL (p->no_host says why). */
host *pool_place(pool *p);
/* Moves a desktop onto a host (NULL: off its host), keeping the counts
 * (objects.c). */
void desktop_set_host(desktop *d, host *h);
/* The pool's count of desktops on h (grown on demand; NULL when out of
 * memory) (objects.c). */
unsigned *pool_host_count(pool *p, const host *h);
/* The desktops on h by state, over every pool (objects.c; walks the slots,
 * for views). */
void host_count_states(service *svc, const host *h, unsigned counts[DESKTOP_STATE_COUNT]);
/* A host's connection came or went (hosts.c's bridge callbacks). */
void host_on_connected(host *h, virConnectPtr conn);
void host_on_disconnected(host *h);
json_t *hosts_json(service *svc);
/* The desktop `name` as seen from host h: NULL when it lives on another. */
desktop *host_find_desktop(host *h, const char *name);

/* ---- desktop.c: the state machine ------------------------------------------------- */
int64_t service_now(const service *svc);
void desktop_set_state(desktop *d, desktop_state s);
/* A desktop onto / off its pool's list for its current state (objects.c). */
void desktop_list_add(desktop *d);
void desktop_list_remove(desktop *d);
/* The pool's assigned desktop of `user`, or NULL. */
desktop *pool_assigned_to(pool *p, const char *user);
void desktop_begin_clone(desktop *d);
void desktop_begin_start(desktop *d);
void desktop_begin_end(desktop *d, end_reason why);
void desktop_retry_end(desktop *d);
void desktop_begin_resume(desktop *d);
/* Booting: ask the agent (ops->agent_check) now; if it does not answer,
 * pool_tend_agent asks again AGENT_RETRY_S later. */
void desktop_begin_agent_check(desktop *d);
/* starting -> booting, for a pool with ready_when = "agent". */
void desktop_booting(desktop *d);
void desktop_retry_failed(desktop *d);
/* This desktop's failure: recorded (with back-off), the desktop ends, then
 * waits in failed. */
void desktop_fail(desktop *d, const char *why, end_reason reason);
/* Results of the ops, on the loop. error: NULL on success. */
void desktop_cloned(desktop *d, int rc, bool pool_blocked, const char *error, double seconds);
void desktop_started(desktop *d, int rc, const char *error, const char *display, double seconds);
void desktop_ended(desktop *d, int rc, const char *error);
void desktop_adopt(desktop *d, const char *child, const char *gold, const char *display,
                   agent_state agent, int64_t session_id, const char *user,
                   int64_t session_start);
void desktop_paused(desktop *d, const char *reason);
/* Unreachable -> the state it had: its host answers and its domain runs. */
void desktop_reachable(desktop *d, agent_state agent, const char *display, const char *paused);
void desktop_resumed(desktop *d);
void desktop_resume_tried(desktop *d, int rc, const char *error);
/* agent.c: the guest agent's events and answers, on the loop. */
void desktop_agent_changed(desktop *d, bool connected);
void desktop_agent_checked(desktop *d, int rc, const char *error, const char *hostname);
void desktop_users_read(desktop *d, int64_t session_id, int rc, json_t *users,
                        int64_t idle_seconds);
/* The real ops' agent jobs (agent.c). */
void agent_op_check(desktop *d);
void agent_op_read_users(desktop *d);
void pool_tend_agent(pool *p, desktop *d, int64_t now);
void service_on_agent_event(void *svc, const char *name, bool connected);
bool desktop_paused_for_space(const desktop *d);

/* ---- jobs.c: clone, start and end on the thread pool ------------------------------- */
/* "vnc://ADDRESS:5900" for a running domain's graphics, or NULL (a libvirt
 * RPC); ADDRESS is the host's (host_display_address), 127.0.0.1 when NULL. */
char *domain_display(virDomainPtr dom, const char *address);
char *host_display_address(const char *uri);
/* The same from a domain's XML, and whether its agent channel is connected. */
char *domain_display_from_xml(const char *xml, const char *address);
agent_state domain_agent_from_xml(const char *xml);
/* A job for a slot that no longer exists: its leftovers (domain, child) go. */
void jobs_clean_leftovers(service *svc, host *h, const char *name, const char *child);

/* ---- session.c: acquire, waiters, assign, end -------------------------------------- */
typedef void (*acquire_cb)(void *ctx, int http_status, json_t *body);

/* ---- durable.c: answers sent once what they promise is on disk ------------------- */
/* The flusher thread; vdipoold starts it after service_init and stops it
 * first thing at a stop (it answers what still waits). */
int durable_start(service *svc);
void durable_stop(service *svc);
/* cb(ctx, 200, body) once the catalog's newest commit is on disk. */
void durable_answer_send(service *svc, const char *pool_name, const char *desktop_name,
                         acquire_cb cb, void *ctx, json_t *body);
void service_acquire(service *svc, const char *pool_name, const char *user, acquire_cb cb,
                     void *ctx);
/* The waiter answering to ctx is dropped without an answer (its client went
 * away); false when there is none (it was answered already). */
bool service_cancel_acquire(service *svc, void *ctx);
void session_end(desktop *d, end_reason why);
void sessions_serve_waiters(service *svc);
void sessions_fail_waiters(service *svc);
void sessions_fail_pool_waiters(pool *p);
void sessions_forget_waiters(service *svc);
void service_on_domain_event(void *svc, const char *name, int event, int detail);
void service_on_io_error(void *svc, const char *name, const char *reason);
void service_on_block_threshold(void *svc, const char *name, uint64_t threshold, uint64_t excess);

/* ---- pool.c: the controller ---------------------------------------------------------- */
void pool_step(pool *p);
void service_converge(service *svc);
/* A kick's work: waiters are served, then every pool takes a step. */
void service_step(service *svc);

/* ---- adopt.c: start-up and reconnect reconciliation ------------------------------ */
void adopt_start(host *h);
/* Host h's domains as its listing read them ([{name, active, in_job,
 * pool, slot, child, gold, display, agent, paused}], owned from here on)
 * matched with the desktops: adopted, held, ended; then the host is
 * adopted (usable) and the stray check may run. */
void adopt_listing(host *h, json_t *domains);
/* A host that could not be reached at start: the desktops the catalog
 * records on it are shown unreachable (their slots stay taken). */
void adopt_mark_unreachable(host *h);
/* A desktop held in state adopting: its domain is asked about again when
 * its retry_at is due (the controller calls this), and adopted as it is
 * once libvirt is done with it or service.adopt_wait passed. */
void adopt_recheck(desktop *d, int64_t now);
/* A held desktop's check came back: rc < 0 (error says why) when it is not
 * known whether libvirt is done; else `domain` is the domain as adoption
 * reads it ({active, in_job, child, gold, display, agent, paused}), NULL
 * when it is gone. The desktop is adopted, ended or held on. */
void adopt_checked(desktop *d, int rc, const char *error, json_t *domain);
/* real_desktop_ops.adopt_check: the check as a job on a worker. */
void adopt_op_check(desktop *d);

/* ---- strays.c: children and sessions nobody uses any more ----------------------- */
/* Once every host with a config has been adopted since it last connected
 * (so that every domain there is was seen), a worker removes the strays;
 * else it says which host it waits for. One check at a time. */
void strays_check(service *svc);

/* ---- templates.c: memory images for start = "resume" ---------------------------- */
/* The pool's memory image for its gold: found in the catalog, or built on a
 * worker (a template child, a template domain booted until it is ready and
 * saved); rebuilt on a roll-out, retried after a failure. */
void pool_tend_template(pool *p, int64_t now);
/* Whether a new desktop of p resumes (and from what): sets d's
 * template_child and memory_image, or clears them (it boots). */
void desktop_choose_start(desktop *d);
/* A resume failed because the image or its template changed: the pool
 * boots until a new image is made. */
void pool_template_refused(pool *p, const char *why);

/* ---- history.c: finished sessions' records kept for service.session_history ------- */
void history_step(service *svc);

/* ---- refresh.c: children's sizes recorded in the background ----------------------- */
void refresh_step(service *svc);

/* ---- events.c: GET /v1/events, desktop changes as server-sent events -------------- */
struct request;
void events_subscribe(service *svc, struct request *r, const char *pool_name);
void events_desktop_changed(desktop *d, desktop_state from);
void events_tick(service *svc);
/* Ends every stream (at shutdown, before the loop's handles are closed). */
void events_stop(service *svc);

/* ---- gold_api.c: gold families on the API ------------------------------------------- */
void golds_list(service *svc, struct request *r);
/* action NULL: show the family; "publish" or "rollback". */
void gold_request(service *svc, struct request *r, const char *name, const char *action);

/* ---- maintenance.c: editing a gold family's next version ------------------------- */
void gold_maintenance(service *svc, struct request *r, const char *family, bool discard);

/* ---- scrub.c ------------------------------------------------------------------------- */
void scrub_step(service *svc);

/* ---- views.c: JSON and metrics -------------------------------------------------------- */
json_t *pool_json(const pool *p, bool with_desktops);
json_t *pool_json_page(const pool *p, bool with_desktops, unsigned offset, unsigned limit);
json_t *desktop_json(const desktop *d);
/* desktop_json with its last state changes, for GET /v1/desktops/{name}. */
json_t *desktop_detail_json(const desktop *d);
json_t *status_json(service *svc);
char *service_metrics_text(service *svc);

/* ---- work.c: one way to run blocking work off the loop ----------------------------- */
/* run() executes on a worker and must touch only `data`; done() runs on the
 * loop afterwards. Returns 0, or a negative code when nothing was queued
 * (done is then not called). */
typedef void (*work_run_fn)(void *data);
typedef void (*work_done_fn)(service *svc, void *data);
int work_submit(service *svc, work_run_fn run, work_done_fn done, void *data);

/* ---- domain_xml.c ---------------------------------------------------------------------- */
#define VDI_XML_NS "urn:vdipool:desktop:1"
typedef struct domain_spec {
    const char *name, *child, *gold, *gold_hash_hex;
    unsigned slot;
    /* A host-local datastore: the child's one parent is this copy of the
     * gold on the host (NULL: the gold's chain as vdipoold sees it). */
    const char *backing_on_host;
    vdi_format backing_format;
    /* A template domain for a memory image: no network card (each resumed
     * desktop gets its own, with its own MAC, after the restore). */
    bool no_network;
} domain_spec;
char *domain_xml_build(const vdi_pool_config *cfg, const domain_spec *spec, vdi_error *err);
/* Whether the pool's domains can have a display to read back once running:
 * false only for graphics = "none" without a domain template (a template
 * may bring its own <graphics>). */
bool domain_has_display(const vdi_pool_config *cfg);
/* The <metadata> element by which vdipool knows its domains. */
void domain_metadata_xml(strbuf *b, const vdi_pool_config *cfg, const domain_spec *d);
/* templates.c: the domain XML of a resumed desktop: the saved XML with the
 * desktop's name, UUID, metadata and disk (its child over the template
 * child). NULL with err. */
char *resume_domain_xml(const char *saved, const vdi_pool_config *cfg, const domain_spec *spec,
                        const char *template_child, const char *uuid, vdi_error *err);

#endif
