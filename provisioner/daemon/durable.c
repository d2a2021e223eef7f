/* durable.c — answers sent once the catalog has what they promise on disk.
 *
 * A session's start is committed on the loop without waiting for the disk
 * (vdi_catalog_session_begin). Its answer waits until that commit is on
 * disk: a broker is never told of a desktop whose session a power loss
 * could forget (the desktop would then be adopted as a spare on a host the
 * loss did not reach and handed to a second user).
 *
 * Usually a flush by a worker's job already covers the commit and the
 * answer goes at once. Else the flusher, one thread of its own, flushes the
 * catalog for every answer waiting and tells the loop (uv_async): a burst of
 * acquires costs one fdatasync, and the answers never queue behind clones
 * and domain starts in libuv's thread pool, which a refill storm fills.
 *
 * Threads: `answers` belongs to the loop; `want`, `tried`, `flushed_upto`,
 * `failure` and `stop` are shared with the flusher under `lock`. */
#include "daemon.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct durable_answer {
    struct durable_answer *next; /* oldest first */
    uint64_t commit;             /* on disk before the answer goes */
    acquire_cb cb;
    void *ctx;
    json_t *body;
    char *pool, *desktop; /* for the log if the flush fails */
} durable_answer;

struct durable {
    vdi_catalog *catalog;
    uv_async_t flushed; /* the flusher tells the loop; freed with it */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    uint64_t want;                   /* under lock: flush up to this commit */
    uint64_t tried;                  /* under lock: flushes were tried up to this commit */
    uint64_t flushed_upto;           /* under lock: ... and succeeded up to this one */
    char failure[1024];              /* under lock: the last failed flush's error */
    bool stop;                       /* under lock */
    durable_answer *answers, **tail; /* the loop's */
};

/* A failed flush is not retried for the same commits (their answers go
 * with the failure logged); the next answer's commit tries again. */
static void *flusher(void *arg)
{
    durable *du = arg;
    pthread_mutex_lock(&du->lock);
    for (;;) {
        while (!du->stop && du->want <= du->tried)
            pthread_cond_wait(&du->wake, &du->lock);
        if (du->stop)
            break;
        uint64_t target = du->want;
        pthread_mutex_unlock(&du->lock);
        vdi_error err = {0};
        int rc = vdi_failpoint("acquire-flush")
                     ? vdi_error_set(&err, -EIO, "cannot flush (failpoint acquire-flush)")
                     : vdi_catalog_flush(du->catalog, target, &err);
        pthread_mutex_lock(&du->lock);
        du->tried = target;
        if (rc < 0)
            snprintf(du->failure, sizeof du->failure, "%s", err.message);
        else
            du->flushed_upto = target;
        uv_async_send(&du->flushed);
    }
    pthread_mutex_unlock(&du->lock);
    return NULL;
}

/* An answer goes without its session on disk: said with pool and desktop
 * (the desktop is the user's either way). */
static void log_not_on_disk(const char *pool_name, const char *desktop_name, const char *why)
{
    svc_log("error",
            "pool=%s desktop=%s event=session-not-on-disk reason=\"%s\"; a power loss now could "
            "forget this session",
            pool_name, desktop_name, why);
}

/* Sends the oldest waiting answer; `failure` is logged with it. */
static void answer_oldest(durable *du, const char *failure)
{
    durable_answer *a = du->answers;
    du->answers = a->next;
    if (!du->answers)
        du->tail = &du->answers;
    if (failure)
        log_not_on_disk(a->pool, a->desktop, failure);
    a->cb(a->ctx, 200, a->body);
    free(a->pool);
    free(a->desktop);
    free(a);
}

/* On the loop: answers what the flushes tried covered (those a failed one
 * covered with the failure logged), then asks for the flush the rest need. */
static void on_flushed(uv_async_t *h)
{
    durable *du = h->data;
    pthread_mutex_lock(&du->lock);
    uint64_t tried = du->tried, flushed = du->flushed_upto;
    char failure[sizeof du->failure];
    snprintf(failure, sizeof failure, "%s", du->failure);
    pthread_mutex_unlock(&du->lock);
    while (du->answers && du->answers->commit <= tried)
        answer_oldest(du, du->answers->commit > flushed ? failure : NULL);
    uint64_t last = vdi_catalog_last_commit(du->catalog);
    pthread_mutex_lock(&du->lock);
    if (du->answers && du->want < last) {
        du->want = last;
        pthread_cond_signal(&du->wake);
    }
    pthread_mutex_unlock(&du->lock);
}

static void durable_closed(uv_handle_t *h)
{
    free(h->data);
}

int durable_start(service *svc)
{
    durable *du = calloc(1, sizeof *du);
    if (!du)
        return -ENOMEM;
    du->catalog = svc->catalog;
    du->tail = &du->answers;
    int rc = uv_async_init(svc->loop, &du->flushed, on_flushed);
    if (rc < 0) {
        free(du);
        return rc;
    }
    du->flushed.data = du;
    pthread_mutex_init(&du->lock, NULL);
    pthread_cond_init(&du->wake, NULL);
    if ((rc = pthread_create(&du->thread, NULL, flusher, du)) != 0) {
        pthread_mutex_destroy(&du->lock);
        pthread_cond_destroy(&du->wake);
        uv_close((uv_handle_t *)&du->flushed, durable_closed);
        return -rc;
    }
    pthread_setname_np(du->thread, "vdi-flusher");
    svc->durable = du;
    return 0;
}

/* At stop: the flusher ends, the answers still waiting are flushed here
 * (the loop may wait for the disk once, at the very end) and sent. */
void durable_stop(service *svc)
{
    durable *du = svc->durable;
    if (!du)
        return;
    svc->durable = NULL;
    pthread_mutex_lock(&du->lock);
    du->stop = true;
    pthread_cond_signal(&du->wake);
    pthread_mutex_unlock(&du->lock);
    pthread_join(du->thread, NULL);
    vdi_error err = {0};
    int rc = du->answers
                 ? vdi_catalog_flush(du->catalog, vdi_catalog_last_commit(du->catalog), &err)
                 : 0;
    while (du->answers)
        answer_oldest(du, rc < 0 ? err.message : NULL);
    pthread_mutex_destroy(&du->lock);
    pthread_cond_destroy(&du->wake);
    uv_close((uv_handle_t *)&du->flushed, durable_closed);
}

void durable_answer_send(service *svc, const char *pool_name, const char *desktop_name,
                         acquire_cb cb, void *ctx, json_t *body)
{
    durable *du = svc->durable;
    /* Without a flusher (unit tests drive the service without one; vdipoold
     * logs at start if it could not make one), answers go at once. */
    uint64_t commit = du ? vdi_catalog_last_commit(du->catalog) : 0;
    if (!du || vdi_catalog_commit_on_disk(du->catalog, commit)) {
        cb(ctx, 200, body);
        return;
    }
    durable_answer *a = calloc(1, sizeof *a);
    char *pool_copy = strdup(pool_name), *desktop_copy = strdup(desktop_name);
    if (!a || !pool_copy || !desktop_copy) {
        free(a);
        free(pool_copy);
        free(desktop_copy);
        log_not_on_disk(pool_name, desktop_name, "out of memory");
        cb(ctx, 200, body);
        return;
    }
    *a = (durable_answer){.commit = commit,
                          .cb = cb,
                          .ctx = ctx,
                          .body = body,
                          .pool = pool_copy,
                          .desktop = desktop_copy};
    *du->tail = a;
    du->tail = &a->next;
    svc->answers_waited++;
    pthread_mutex_lock(&du->lock);
    if (du->want < commit) {
        du->want = commit;
        pthread_cond_signal(&du->wake);
    }
    pthread_mutex_unlock(&du->lock);
}
