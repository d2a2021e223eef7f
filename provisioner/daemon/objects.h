/* objects.h — vdipoold's objects and who owns them: the names of desktop
 * states and end reasons, the service, its hosts, pools and desktops, and
 * the functions of objects.c that find, make and free them. The rooms that
 * work on them are declared in daemon.h.
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
#ifndef VDI_DAEMON_OBJECTS_H
#define VDI_DAEMON_OBJECTS_H

#include "vdi_config.h"
#include "vdi_engine.h"

#include <jansson.h>
#include <libvirt/libvirt.h>
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
/* The state of that name; false when there is none. */
bool desktop_state_from_name(const char *name, size_t len, desktop_state *out);
const char *end_reason_name(end_reason r);

/* ---- objects ------------------------------------------------------------------- */

typedef struct service service;
typedef struct pool pool;

typedef enum agent_state { AGENT_UNKNOWN, AGENT_CONNECTED, AGENT_DISCONNECTED } agent_state;
#define AGENT_RETRY_S 2 /* booting: the agent connected but did not answer yet */
const char *agent_state_name(agent_state a);
typedef struct waiter waiter;
typedef struct durable durable;
typedef struct start_slots start_slots;
typedef struct api_server api_server;
typedef struct subscriber subscriber;
struct gold_job;
typedef struct libvirt_bridge libvirt_bridge;

/* A KVM host: one libvirtd, one connection (hosts.c). Hosts are made from
 * the config and never freed before the service: a host removed from the
 * config keeps its object (cfg NULL) and drains, so desktops point at it
 * safely. */
typedef struct host {
    service *svc;               /* immutable */
    char *name;                 /* immutable */
    unsigned index;             /* immutable: its place in svc->hosts */
    const vdi_host_config *cfg; /* into svc->config; NULL once removed from it */
    char *uri;                  /* the uri its bridge connects to */
    libvirt_bridge *bridge;     /* NULL in tests with fake ops */
    virConnectPtr conn;         /* a reference, NULL while disconnected */
    bool online;                /* connected (tests set it alone) */
    bool adopted;               /* its domains were listed and adopted since it connected */
    bool adopting;
    /* Its desktops are known: adopted, or (it could not be reached at
     * start) those the catalog records on it are shown unreachable. The
     * controllers start once every host is settled, so that a slot of an
     * unreachable host is never taken for a new desktop. */
    bool settled;
    bool marking;                   /* the catalog is read for its desktops */
    json_t *stopped_while_adopting; /* see service.stopped_while_adopting */
    json_t *listing;                /* its domains at the last adoption, for the stray check */
    char *last_error;
    int64_t last_error_at, connected_since, lost_since;
    /* Memory, read on a worker every HOST_READ_S seconds. */
    bool memory_known, reading;
    uint64_t free_memory, total_memory;
    uint64_t memory_placed;           /* of desktops placed here since the reading */
    bool ksm_known, ksm_running;      /* a local host: the kernel's same-page merging */
    uint64_t ksm_shared, ksm_sharing; /* pages kept, and pages merged into them */
    int64_t read_at;
    unsigned desktops; /* desktops placed here (every state but empty) */
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
    pool *pool;                     /* immutable: the pool that owns the slot */
    unsigned slot;                  /* immutable, 1-based */
    host *host;                     /* where its domain runs (or will); NULL while empty */
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
    char *name;  /* libvirt domain name: PREFIX-NNN */
    char *child; /* its differencing child */
    char *gold;  /* the gold it was (or is being) cloned from */
    /* start = "resume": the template child its child was cloned from and
     * the memory image it resumes from; NULL when it boots. */
    char *template_child;
    char *memory_image;
    /* The gold's SHA-256 (hex) as its clone read it, for the domain's
     * metadata: its start need not read the catalog again. NULL: unknown. */
    char *gold_hash;
    /* Its child's allocated bytes as its clone recorded them, where its
     * start sets the write budget from; 0: unknown. */
    uint64_t child_bytes;
    char *user;                 /* while assigned, else NULL */
    char *failure;              /* the last failure, or NULL */
    char *display;              /* "vnc://127.0.0.1:5900", or NULL */
    char *pause_reason;         /* while paused: "no space" or what QEMU said */
    desktop_state resume_state; /* while paused: ready or assigned */
    int64_t paused_since;
    char *io_error; /* an I/O error QEMU reported before the desktop was ready */
    /* The guest agent (agent.c), for pools with ready_when = "agent". */
    agent_state agent;        /* from libvirt's agent lifecycle events */
    int64_t agent_since;      /* when agent last changed */
    bool agent_ready;         /* it answered and the identity was set: may be ready */
    int64_t agent_retry_at;   /* booting: when to ask the agent again */
    double start_mono;        /* when the start began (monotonic s), for boot time */
    double clone_mono;        /* when its clone began, for clone-to-ready time; 0 when not */
    double boot_seconds;      /* start to ready of the current run; 0 when unknown */
    char *hostname;           /* set through the agent */
    json_t *users;            /* the guest's logged-in users (array of names), or NULL */
    bool user_seen;           /* assigned: a user has logged in during this session */
    int64_t logged_off_at;    /* assigned: when the guest's user list became empty */
    int64_t idle_seconds;     /* assigned: from the pool's idle_command; -1 unknown */
    bool users_polling;       /* a users job runs (the desktop is not busy for it) */
    int64_t users_poll_at;    /* when to ask for the users next */
    uint64_t rss_bytes;       /* its QEMU's resident memory at the host's last reading */
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
    bool growth_read;    /* the fields below hold a recent reading */
    bool growth_learned; /* enough sessions: growth_p95 replaces expected_growth */
    uint64_t growth_p95;
    double growth_read_at; /* monotonic seconds */
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
    bool online;        /* some host is connected (hosts.c keeps it) */
    bool hosts_started; /* hosts' bridges run: a host added by a reload connects */
    api_server *api;
    pool **pools;
    size_t npools;
    unsigned clones_running, starts_running; /* desktop.c: between begin and result */
    /* Start jobs still running whose slot their worker freed once the
     * domain existed (startslots.c); a start holds a slot while it counts
     * in starts_running and not here. */
    unsigned starts_freed;
    start_slots *start_slots; /* startslots.c; NULL: a start keeps its slot to the end */
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
    unsigned users_reads_running;    /* agent user-list reads in flight (bounded) */
    uint64_t budget_events;          /* desktops that grew past their write budget */
    bool ready_notified;             /* every pool has its spares ready */
    bool adopted;                    /* every host is settled: the controllers may run */
    bool checking_strays;            /* strays.c: a stray check runs on a worker */
    bool scrubbing;
    bool pruning;        /* history.c: old sessions' records are being forgotten */
    int64_t prune_at;    /* history.c: when the next run may start */
    bool refreshing;     /* a refresh of children's sizes runs */
    size_t refresh_next; /* where the next refresh batch starts */
    int64_t last_scrub;
    int64_t scrub_waiting_since; /* a due scrub waits for the pools to fill; 0: not waiting */
    size_t scrub_next;
    /* Told of every change of a desktop's state (events.c's streams), or
     * NULL: the state machine knows no listener by name. */
    void (*desktop_changed)(desktop *d, desktop_state from);
    subscriber *subscribers;    /* GET /v1/events streams (events.c) */
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
/* The pool's desktops that are not empty, one state list after another
 * (a large pool's empty slots are never looked at): NULL starts the walk,
 * NULL ends it. No desktop may change state during a walk. */
const desktop *pool_next_occupied(const pool *p, const desktop *d);
/* Slots up to `size` (new ones empty); slots never go away while the pool lives. */
int pool_grow_slots(pool *p, unsigned size);
/* Frees the pool's desktops and what it owns, the pool too (pool_free
 * releases its golds' locks first). */
void pool_free_objects(pool *p);
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

#endif
