/* daemon.h — vdipoold's rooms: what each .c file of the daemon offers the
 * others, on the objects of objects.h (the service, its hosts, pools and
 * desktops, and who owns their fields). */
#ifndef VDI_DAEMON_H
#define VDI_DAEMON_H

#include "log.h"
#include "objects.h"
#include "text.h"
#include "vdi_config.h"
#include "vdi_engine.h"

#include <jansson.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

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

/* ---- startslots.c: a start's slot freed once its domain exists -------------------- */
/* vdipoold starts it after service_init, stops it at a stop (before the
 * loop's handles close) and frees it after the loop has ended. */
int start_slots_start(service *svc);
void start_slots_stop(service *svc);
void start_slots_free(service *svc);
/* Any thread (a start job): its domain exists, its slot is free. */
void start_slot_release(start_slots *s);
/* The loop: starts holding a slot; a start waits for one (the next release
 * wakes the loop); a start job whose slot was released has its result. */
unsigned start_slots_busy(service *svc);
void start_slots_wanted(service *svc);
void start_slot_returned(service *svc);

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

/* ---- pool.c: the controller, and a pool's life ---------------------------------------- */
pool *pool_new(service *svc, vdi_config *config, const vdi_pool_config *pc);
int pool_configure(pool *p, vdi_config *config, const vdi_pool_config *pc);
void pool_free(pool *p);
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
/* How long a due scrub waits for a moment with no clone and no start in
 * flight before it runs anyway (seconds). */
#define SCRUB_MAX_WAIT_S 900
/* On the tick: hashes the next gold in use when its turn has come. */
void scrub_step(service *svc);

/* ---- views.c: JSON and metrics -------------------------------------------------------- */
json_t *pool_json(const pool *p, bool with_desktops);
/* A page of the pool's desktops: from `offset` on, at most `limit` (0: all),
 * only those whose state's bit (1u << state) is in `state_mask` (0: any). */
json_t *pool_json_page(const pool *p, bool with_desktops, unsigned offset, unsigned limit,
                       unsigned state_mask);
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
