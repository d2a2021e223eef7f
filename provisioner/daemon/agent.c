/* agent.c — the QEMU guest agent: when a desktop of a pool with
 * ready_when = "agent" is really ready, who is logged in on it, and when its
 * session is over.
 *
 *   starting -> booting   desktop_started (desktop.c): the domain runs
 *   booting  -> ready     desktop_agent_checked: the agent connected (libvirt's
 *                         agent lifecycle event), answered guest-ping and the
 *                         desktop's hostname was set through it
 *   booting  -> ending    past boot_timeout (boot-timeout; then failed, with
 *                         the pool's boot_problem after 3 in a row), or the
 *                         identity could not be set, or the domain stopped
 *   ready|assigned -> ending  the agent stayed away past agent_lost_timeout
 *                         (agent-lost)
 *   assigned -> ending    the user logged off and logoff_grace passed
 *                         (logged-off); nobody logged in within login_timeout
 *                         (no-login); the user has been idle for idle_logoff,
 *                         as the pool's idle_command in the guest says (idle)
 *
 * The users of an assigned desktop are read on a bounded timer
 * (USERS_EVERY seconds, at most USERS_READS_MAX reads in flight for the
 * whole service): libvirt has no event for log-ins. Work that talks to the
 * agent runs on the thread pool as jobs (jobs.h) with copies of what it
 * reads; its answers come back here, on the loop. */
#include "daemon.h"
#include "jobs.h"

#include <errno.h>
#include <libvirt/libvirt-qemu.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define AGENT_TIMEOUT_S 10     /* one agent command */
#define HOSTNAME_COMMAND_S 30  /* the hostname command to finish */
#define USERS_EVERY 5          /* seconds between reads of an assigned desktop's users */
#define USERS_READS_MAX 16     /* reads in flight, service-wide */
#define BOOT_PROBLEM_AFTER 3   /* boot failures in a row before the pool reports them */

/* ---- on a worker ---------------------------------------------------------------- */

/* Sends one command; its "return" value (a new reference), or NULL with the
 * job failed. Takes cmd. */
static json_t *agent_call(job *j, virDomainPtr dom, json_t *cmd, int rc_on_failure)
{
    char *text = cmd ? json_dumps(cmd, JSON_COMPACT) : NULL;
    json_decref(cmd);
    if (!text) {
        job_fail(j, -ENOMEM, "out of memory");
        return NULL;
    }
    char *answer = virDomainQemuAgentCommand(dom, text, AGENT_TIMEOUT_S, 0);
    if (!answer) {
        job_fail(j, rc_on_failure, "the guest agent did not answer %s: %s", text,
                 libvirt_message());
        free(text);
        return NULL;
    }
    json_t *doc = json_loads(answer, 0, NULL);
    json_t *ret = json_incref(json_object_get(doc, "return"));
    if (!ret)
        job_fail(j, -EPROTO, "the guest agent answered %s with %.200s", text, answer);
    json_decref(doc);
    free(answer);
    free(text);
    return ret;
}

static size_t base64_decode(const char *in, char *out, size_t cap)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned bits = 0, nbits = 0;
    size_t n = 0;
    for (; in && *in && *in != '=' && n + 1 < cap; in++) {
        const char *p = strchr(alphabet, *in);
        if (!p)
            continue;
        bits = (bits << 6) | (unsigned)(p - alphabet);
        nbits += 6;
        if (nbits >= 8) {
            nbits -= 8;
            out[n++] = (char)((bits >> nbits) & 0xff);
        }
    }
    out[n] = '\0';
    return n;
}

/* Runs PATH [ARG] in the guest through the agent and waits up to limit_s
 * for it: 0 with its exit code and the start of its stdout and stderr, or
 * a negative code with the job failed. */
static int guest_exec(job *j, virDomainPtr dom, const char *path, const char *arg, int limit_s,
                      int *exitcode, char *out, size_t out_len, char *err, size_t err_len)
{
    json_t *cmd = json_pack("{s:s,s:{s:s,s:[],s:b}}", "execute", "guest-exec", "arguments",
                            "path", path, "arg", "capture-output", 1);
    if (cmd && arg)
        json_array_append_new(json_object_get(json_object_get(cmd, "arguments"), "arg"),
                              json_string(arg));
    json_t *ret = agent_call(j, dom, cmd, -EPROTO);
    if (!ret)
        return j->rc;
    json_int_t pid = json_integer_value(json_object_get(ret, "pid"));
    json_decref(ret);
    for (int waited = 0; waited < limit_s * 10; waited++) {
        ret = agent_call(j, dom,
                         json_pack("{s:s,s:{s:I}}", "execute", "guest-exec-status", "arguments",
                                   "pid", pid),
                         -EPROTO);
        if (!ret)
            return j->rc;
        if (json_is_true(json_object_get(ret, "exited"))) {
            *exitcode = (int)json_integer_value(json_object_get(ret, "exitcode"));
            base64_decode(json_string_value(json_object_get(ret, "out-data")), out, out_len);
            base64_decode(json_string_value(json_object_get(ret, "err-data")), err, err_len);
            json_decref(ret);
            return 0;
        }
        json_decref(ret);
        usleep(100 * 1000);
    }
    job_fail(j, -ETIMEDOUT, "'%s%s%s' did not finish within %d s", path, arg ? " " : "",
             arg ? arg : "", limit_s);
    return j->rc;
}

/* Runs `hostname_command HOSTNAME` in the guest and waits for it. */
static void set_hostname(job *j, virDomainPtr dom)
{
    int code = 0;
    char out[64], err[256];
    if (guest_exec(j, dom, j->pc->hostname_command, j->hostname, HOSTNAME_COMMAND_S, &code, out,
                   sizeof out, err, sizeof err) < 0) {
        char *why = j->error ? strdup(j->error) : NULL;
        job_fail(j, j->rc, "setting the hostname: %s", why ? why : "the agent failed");
        free(why);
    } else if (code != 0) {
        job_fail(j, -EPROTO, "setting the hostname: '%s %s' exited with %d%s%s",
                 j->pc->hostname_command, j->hostname, code, err[0] ? ": " : "", err);
    }
}

/* The user's idle time from the pool's idle_command (it prints seconds
 * without input), or -1 when it cannot be known (logged, not fatal). */
static void read_idle(job *j, virDomainPtr dom)
{
    int code = 0;
    char out[64], err[256];
    j->idle_seconds = -1;
    if (guest_exec(j, dom, j->pc->session.idle_command, NULL, 10, &code, out, sizeof out, err,
                   sizeof err) < 0) {
        svc_log("warning", "pool=%s desktop=%s event=idle-unknown reason=\"%s\"", j->pool,
                j->name, j->error ? j->error : "the agent failed");
        j->rc = 0; /* the users were read; only the idle time is missing */
        return;
    }
    char *end = NULL;
    long long v = strtoll(out, &end, 10);
    if (code != 0 || end == out || v < 0)
        svc_log("warning",
                "pool=%s desktop=%s event=idle-unknown reason=\"'%s' exited with %d and printed "
                "'%.40s' (want a number of seconds)%s%s\"",
                j->pool, j->name, j->pc->session.idle_command, code, out, err[0] ? ": " : "",
                err);
    else
        j->idle_seconds = v;
}

/* Booting: is the agent answering, and is the identity set? -EAGAIN: ask
 * again later; any other failure ends the desktop. */
static void agent_check_run(void *data)
{
    job *j = data;
    virDomainPtr dom = job_domain(j);
    if (!dom)
        return;
    if (virDomainIsActive(dom) != 1) {
        job_fail(j, -ESRCH, "the domain is not running");
    } else {
        json_t *pong = agent_call(j, dom, json_pack("{s:s}", "execute", "guest-ping"), -EAGAIN);
        if (pong && j->hostname)
            set_hostname(j, dom);
        json_decref(pong);
    }
    virDomainFree(dom);
}

static void users_run(void *data)
{
    job *j = data;
    virDomainPtr dom = job_domain(j);
    if (!dom)
        return;
    virTypedParameterPtr params = NULL;
    int n = 0;
    if (virDomainGetGuestInfo(dom, VIR_DOMAIN_GUEST_INFO_USERS, &params, &n, 0) < 0) {
        job_fail(j, -EIO, "cannot read the guest's users: %s", libvirt_message());
    } else {
        unsigned count = 0;
        j->users = json_array();
        if (virTypedParamsGetUInt(params, n, "user.count", &count) < 0)
            count = 0;
        for (unsigned i = 0; i < count; i++) {
            char key[64];
            const char *name = NULL;
            snprintf(key, sizeof key, "user.%u.name", i);
            if (virTypedParamsGetString(params, n, key, &name) == 1 && name)
                json_array_append_new(j->users, json_string(name));
        }
        virTypedParamsFree(params, n);
        if (j->pc->session.idle_logoff && j->pc->session.idle_command && count > 0)
            read_idle(j, dom);
    }
    virDomainFree(dom);
}

/* ---- back on the loop: the jobs' results ---------------------------------------- */

static void agent_check_done(service *svc, void *data)
{
    job *j = data;
    desktop *d = job_desktop(svc, j);
    if (d) {
        d->busy = false;
        desktop_agent_checked(d, j->rc, j->error ? j->error : "unknown error", j->hostname);
    } else {
        svc_log("warning", "pool=%s desktop=%s event=stale-result job=agent-check", j->pool,
                j->name);
    }
    job_free(j);
    service_kick(svc);
}

/* Not busy: the desktop is found by slot and checked by session. */
static void users_done(service *svc, void *data)
{
    job *j = data;
    pool *p = service_find_pool(svc, j->pool);
    svc->users_reads_running--;
    if (p && j->slot >= 1 && j->slot <= p->nslots) {
        desktop_users_read(p->desktops[j->slot - 1], j->session_id, j->rc, j->users,
                           j->idle_seconds);
        j->users = NULL; /* taken */
    }
    job_free(j);
    service_kick(svc);
}

void agent_op_check(desktop *d)
{
    job_submit_with(d, JOB_AGENT_CHECK, agent_check_run, agent_check_done);
}

/* Not a change of state: the desktop stays usable while its users are read. */
void agent_op_read_users(desktop *d)
{
    service *svc = d->pool->svc;
    job *j = desktop_job(d, JOB_USERS);
    if (!j || work_submit(svc, users_run, users_done, j) < 0) {
        svc_log("warning", "pool=%s desktop=%s event=users-not-read reason=\"cannot queue work\"",
                d->pool->name, d->name);
        if (j)
            job_free(j);
        d->users_polling = false;
        svc->users_reads_running--;
    }
}

/* ---- on the loop ------------------------------------------------------------------- */

static bool uses_agent(const desktop *d)
{
    return d->pool->cfg->ready_when == VDI_READY_AGENT;
}

void desktop_agent_changed(desktop *d, bool connected)
{
    agent_state now_state = connected ? AGENT_CONNECTED : AGENT_DISCONNECTED;
    if (d->agent == now_state)
        return;
    d->agent = now_state;
    d->agent_since = service_now(d->pool->svc);
    svc_log(d->state == DESKTOP_ASSIGNED && !connected ? "warning" : "info",
            "pool=%s desktop=%s event=agent-%s state=%s", d->pool->name, d->name,
            agent_state_name(d->agent), desktop_state_name(d->state));
    if (connected && d->state == DESKTOP_BOOTING) {
        d->agent_retry_at = 0;
        desktop_begin_agent_check(d);
    }
}

void service_on_agent_event(void *ctx, const char *name, bool connected)
{
    host *h = ctx; /* the host whose connection told it */
    service *svc = h->svc;
    desktop *d = host_find_desktop(h, name);
    if (!d)
        return;
    desktop_agent_changed(d, connected);
    service_kick(svc);
}

void desktop_agent_checked(desktop *d, int rc, const char *error, const char *hostname)
{
    pool *p = d->pool;
    if (d->state != DESKTOP_BOOTING)
        return;
    if (rc == -EAGAIN) {
        svc_log("debug", "pool=%s desktop=%s event=agent-not-answering-yet reason=\"%s\"",
                p->name, d->name, error);
        set_str(&d->failure, error); /* what boot_timeout will report */
        return;                      /* pool_tend_agent asks again */
    }
    if (rc < 0) {
        desktop_fail(d, error, END_OTHER);
        return;
    }
    d->agent_ready = true;
    d->failures = 0;
    set_str(&d->failure, NULL);
    p->boot_failures = 0;
    set_str(&p->boot_problem, NULL);
    if (d->start_mono > 0) {
        d->boot_seconds = jobs_mono() - d->start_mono;
        latency_observe(&p->svc->boot_latency, d->boot_seconds);
    }
    svc_log("info", "pool=%s desktop=%s event=ready hostname=%s boot_seconds=%.2f display=%s",
            p->name, d->name, hostname ? hostname : "unchanged", d->boot_seconds,
            d->display ? d->display : "none");
    desktop_set_state(d, DESKTOP_READY);
    if (d->io_error)
        desktop_paused(d, d->io_error); /* it paused while it booted */
}

void desktop_users_read(desktop *d, int64_t session_id, int rc, json_t *users,
                        int64_t idle_seconds)
{
    d->users_polling = false;
    if (rc < 0 || !users || d->state != DESKTOP_ASSIGNED || d->session_id != session_id) {
        json_decref(users);
        return;
    }
    json_decref(d->users);
    d->users = users;
    d->idle_seconds = idle_seconds;
    int64_t now = service_now(d->pool->svc);
    char list[256] = "";
    size_t i, len = 0;
    json_t *u;
    json_array_foreach(users, i, u) if (len < sizeof list) len +=
        (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? "," : "", json_string_value(u));
    if (json_array_size(users) > 0) {
        if (!d->user_seen || d->logged_off_at)
            svc_log("info", "pool=%s desktop=%s session=%lld event=user-logged-in users=%s",
                    d->pool->name, d->name, (long long)d->session_id, list);
        d->user_seen = true;
        d->logged_off_at = 0;
    } else if (d->user_seen && !d->logged_off_at) {
        d->logged_off_at = now;
        svc_log("info", "pool=%s desktop=%s session=%lld event=user-logged-off grace=%llus",
                d->pool->name, d->name, (long long)d->session_id,
                (unsigned long long)d->pool->cfg->session.logoff_grace);
    }
}

static void boot_timed_out(pool *p, desktop *d, int64_t now)
{
    char why[512];
    if (d->agent != AGENT_CONNECTED)
        snprintf(why, sizeof why,
                 "did not become ready within %llds: its guest agent never connected (is "
                 "qemu-guest-agent installed and started in the gold?)",
                 (long long)(now - d->state_since));
    else
        snprintf(why, sizeof why,
                 "did not become ready within %llds: its guest agent connected but %s",
                 (long long)(now - d->state_since), d->failure ? d->failure : "did not answer");
    p->boot_failures++;
    if (p->boot_failures >= BOOT_PROBLEM_AFTER) {
        char problem[700];
        snprintf(problem, sizeof problem, "%u desktops in a row %s", p->boot_failures, why);
        set_str(&p->boot_problem, problem);
        svc_log("error", "pool=%s event=desktops-do-not-boot count=%u reason=\"%s\"", p->name,
                p->boot_failures, why);
    }
    desktop_fail(d, why, END_BOOT_TIMEOUT);
}

void pool_tend_agent(pool *p, desktop *d, int64_t now)
{
    service *svc = p->svc;
    const vdi_session_config *sc = &p->cfg->session;
    if (!uses_agent(d))
        return;
    bool agent_gone = d->agent != AGENT_CONNECTED && sc->agent_lost_timeout &&
                      now - d->agent_since >= (int64_t)sc->agent_lost_timeout;
    switch (d->state) {
    case DESKTOP_BOOTING:
        if (now - d->state_since >= (int64_t)p->cfg->boot_timeout)
            boot_timed_out(p, d, now);
        else if (d->agent == AGENT_CONNECTED && now >= d->agent_retry_at)
            desktop_begin_agent_check(d);
        break;
    case DESKTOP_READY:
        if (!d->agent_ready) {
            /* Made ready under other rules (ready_when changed): replace it. */
            session_end(d, END_OTHER);
        } else if (agent_gone) {
            svc_log("warning", "pool=%s desktop=%s event=agent-lost seconds=%lld", p->name,
                    d->name, (long long)(now - d->agent_since));
            session_end(d, END_AGENT_LOST);
        }
        break;
    case DESKTOP_ASSIGNED:
        if (agent_gone) {
            svc_log("warning", "pool=%s desktop=%s event=agent-lost seconds=%lld", p->name,
                    d->name, (long long)(now - d->agent_since));
            session_end(d, END_AGENT_LOST);
        } else if (d->logged_off_at && now - d->logged_off_at >= (int64_t)sc->logoff_grace) {
            session_end(d, END_LOGGED_OFF);
        } else if (sc->idle_logoff && d->idle_seconds >= (int64_t)sc->idle_logoff) {
            svc_log("info", "pool=%s desktop=%s event=idle idle_seconds=%lld", p->name, d->name,
                    (long long)d->idle_seconds);
            session_end(d, END_IDLE);
        } else if (!d->user_seen && sc->login_timeout &&
                   now - d->session_start >= (int64_t)sc->login_timeout) {
            svc_log("info", "pool=%s desktop=%s event=no-login seconds=%lld", p->name, d->name,
                    (long long)(now - d->session_start));
            session_end(d, END_NO_LOGIN);
        } else if (d->agent == AGENT_CONNECTED && !d->users_polling && now >= d->users_poll_at &&
                   svc->users_reads_running < USERS_READS_MAX) {
            d->users_polling = true;
            d->users_poll_at = now + USERS_EVERY;
            svc->users_reads_running++;
            svc->ops->read_users(d);
        }
        break;
    default: break;
    }
}
