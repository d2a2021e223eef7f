/* service.h — vdipoold's insides, shared by its modules: the service, its
 * pools and their desktops. Everything here is owned and changed by the
 * libuv loop thread only; work on other threads gets copies of what it needs
 * and hands results back through uv_queue_work's after-callback. */
#ifndef VDI_SERVICE_H
#define VDI_SERVICE_H

#include "vdi_config.h"
#include "vdi_engine.h"

#include <jansson.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef enum desktop_state {
    DESKTOP_EMPTY,
    DESKTOP_CLONING,
    DESKTOP_STARTING,
    DESKTOP_READY,
    DESKTOP_ASSIGNED,
    DESKTOP_ENDING,
    DESKTOP_FAILED,
} desktop_state;

#define DESKTOP_STATES 7
const char *desktop_state_name(desktop_state s);

typedef struct service service;
typedef struct pool pool;

typedef struct desktop {
    pool *pool;
    unsigned slot;            /* 1-based */
    char name[96];            /* libvirt domain name: PREFIX-NNN */
    desktop_state state;
    bool busy;                /* a worker is operating on it */
    char child[4096];         /* its differencing child */
    char gold[4096];          /* the gold it was cloned from */
    char user[128];           /* while assigned */
    int64_t session_id;       /* catalog row of the open session, 0 when none */
    int64_t state_since;      /* unix seconds */
    int64_t session_start;
    char end_reason[48];      /* why the session is ending */
    char failure[512];        /* why it failed */
    unsigned failures;        /* consecutive, for back-off */
    int64_t retry_at;
    char display[128];        /* "vnc://127.0.0.1:5900" */
} desktop;

struct pool {
    service *svc;
    char name[64];
    const vdi_pool_config *cfg;    /* points into svc->config */
    desktop *desktops;             /* cfg->size slots (capacity grows on reload) */
    unsigned nslots;
    bool draining;                 /* removed from config: no new sessions */
    char blocked[512];             /* why it cannot clone now ("" when it can) */
    int gold_lock;                 /* fd holding QEMU's write lock on the gold */
    char locked_gold[4096];
    char retiring_gold[4096];      /* previous gold during a roll-out */
    int retiring_lock;
    uint64_t sessions_started;
    uint64_t sessions_ended[6];    /* by end reason, see session_reason_index */
};

typedef struct latency_histogram {
    uint64_t buckets[12];          /* le 0.01 .. 60 s and +Inf */
    uint64_t count;
    double sum;
} latency_histogram;

typedef struct waiter waiter;
typedef struct api api;

struct service {
    uv_loop_t *loop;
    char config_path[4096];
    char state_dir[4096];
    vdi_config *config;
    vdi_catalog *catalog;
    pthread_mutex_t catalog_lock;  /* the catalog is used from worker threads */
    virConnectPtr conn;            /* NULL while disconnected */
    bool connecting;
    unsigned reconnect_delay_ms;
    pool **pools;
    size_t npools;
    unsigned clones_running, starts_running;
    uv_timer_t tick;
    uv_signal_t sighup, sigterm, sigint;
    bool stopping;
    struct api *api;
    waiter *waiters;
    latency_histogram clone_latency, start_latency;
    bool ready_notified;         /* every pool has its spares ready */
    bool adopted;                /* running desktops were adopted after connecting */
    bool scrubbing;
    int64_t last_scrub;
    size_t scrub_next;
};

/* pool.c */
int service_apply_config(service *svc, vdi_config *config, bool initial);
void service_converge(service *svc);
void service_scrub_step(service *svc);
pool *service_find_pool(service *svc, const char *name);
desktop *service_find_desktop(service *svc, const char *name);
void pool_end_session(desktop *d, const char *reason);
void service_on_domain_stopped(service *svc, const char *name, int detail);
void service_on_connected(service *svc);
void service_adopt_domains(service *svc, json_t *domains);
json_t *pool_json(const pool *p, bool with_desktops);
json_t *desktop_json(const desktop *d);
void service_write_metrics(service *svc, char **out);

/* acquire: answers through the callback, now or when a spare is ready. */
typedef void (*acquire_cb)(void *ctx, int http_status, json_t *body);
void service_acquire(service *svc, const char *pool_name, const char *user, acquire_cb cb,
                     void *ctx);

/* libvirt_events.c */
int libvirt_events_start(service *svc);
void libvirt_connect(service *svc);
void libvirt_events_stop(void);

/* domain_xml.c */
char *domain_xml_build(const vdi_pool_config *cfg, const desktop *d, const char *gold_hash_hex,
                       vdi_error *err);
#define VDI_XML_NS "urn:vdipool:desktop:1"

/* api_http.c */
int api_start(service *svc, vdi_error *err);
void api_stop(service *svc);

/* reload: returns 0, or fills errors (caller frees) */
int service_reload(service *svc, json_t **errors);

void svc_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int64_t now_seconds(void);

#endif
