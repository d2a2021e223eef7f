/* work.c — the one wrapper around uv_queue_work: blocking work (libvirt
 * RPCs, clones, deletes, hashing) runs on libuv's thread pool and its
 * result comes back to the loop. The service counts work in flight so that
 * a stop waits for it. */
#include "daemon.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

typedef struct work_req {
    uv_work_t req; /* stays put until after_work has run (libuv's rule) */
    service *svc;
    work_run_fn run;
    work_done_fn done;
    void *data; /* owned by the caller's done() */
} work_req;

static void run_work(uv_work_t *w)
{
    /* libuv's threads are unnamed: name each once, so that top -H and perf
     * tell jobs from the loop ("vdipoold") and the flusher. */
    static __thread bool named;
    if (!named) {
        pthread_setname_np(pthread_self(), "vdi-worker");
        named = true;
    }
    work_req *r = w->data;
    r->run(r->data);
}

static void after_work(uv_work_t *w, int status)
{
    (void)status; /* UV_ECANCELED: run() did not run; done() still owns and frees data */
    work_req *r = w->data;
    r->svc->jobs_running--;
    r->done(r->svc, r->data);
    free(r);
}

int work_submit(service *svc, work_run_fn run, work_done_fn done, void *data)
{
    work_req *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->req.data = r;
    r->svc = svc;
    r->run = run;
    r->done = done;
    r->data = data;
    int rc = uv_queue_work(svc->loop, &r->req, run_work, after_work);
    if (rc < 0) {
        free(r);
        return rc;
    }
    svc->jobs_running++;
    return 0;
}
