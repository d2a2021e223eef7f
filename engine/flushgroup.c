/* flushgroup.c — group flushes: threads that each need "every change so far
 * is on disk" share one flush instead of queuing one each.
 *
 * A change is numbered after it is made (vdi_flush_group_change). One thread
 * at a time flushes (the leader); its flush covers every change numbered
 * before it began. A thread whose change a finished flush covered returns at
 * once; threads that numbered a change while a flush ran wait for the next
 * flush, which one of them leads for all. Each waiter sleeps once: those
 * the running flush covers wait on one condition, those it does not on the
 * other, and when it ends only the first are woken, and one of the second
 * to lead (a single condition woke them all, and all but the new leader
 * went back to sleep: a sleep more per waiter and per flush). Nothing is
 * held across the flush itself, so a caller that only asks
 * (vdi_flush_group_covers) never waits for the disk.
 *
 * Used for the catalog's WAL (catalog.c) and for directories whose entries
 * changed (vdi_sync_dir_of_: a clone's rename, a delete's unlink), where
 * many jobs of one datastore change the same directory at once. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void vdi_flush_group_init(vdi_flush_group *g)
{
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->done[0], NULL);
    pthread_cond_init(&g->done[1], NULL);
}

void vdi_flush_group_destroy(vdi_flush_group *g)
{
    pthread_mutex_destroy(&g->lock);
    pthread_cond_destroy(&g->done[0]);
    pthread_cond_destroy(&g->done[1]);
}

uint64_t vdi_flush_group_change(vdi_flush_group *g)
{
    return atomic_fetch_add(&g->changes, 1) + 1;
}

uint64_t vdi_flush_group_last(vdi_flush_group *g)
{
    return atomic_load(&g->changes);
}

bool vdi_flush_group_covers(vdi_flush_group *g, uint64_t change)
{
    pthread_mutex_lock(&g->lock);
    bool covered = g->flushed >= change;
    pthread_mutex_unlock(&g->lock);
    return covered;
}

/* A failed flush is returned to its leader; the waiters then flush again
 * themselves, so every caller hears of a failure that concerns it. Every
 * wait re-checks after waking, so a wake-up more (a spurious one, or a
 * signal that woke two) only costs a check. */
int vdi_flush_group_wait(vdi_flush_group *g, uint64_t change, int (*flush)(void *arg), void *arg)
{
    int rc = 0;
    pthread_mutex_lock(&g->lock);
    while (g->flushed < change) {
        if (g->running) {
            unsigned which = (unsigned)((g->generation + (change > g->running_covers)) & 1);
            g->waiting[which]++;
            pthread_cond_wait(&g->done[which], &g->lock);
            g->waiting[which]--;
            continue;
        }
        g->running = true;
        uint64_t covers = g->running_covers = atomic_load(&g->changes);
        pthread_mutex_unlock(&g->lock);
        int flushed = flush(arg);
        pthread_mutex_lock(&g->lock);
        g->running = false;
        g->flushes++;
        if (flushed == 0 && covers > g->flushed)
            g->flushed = covers;
        /* Those this flush was for (on failure they each try again), then
         * one of those waiting for the next flush, to lead it. */
        pthread_cond_broadcast(&g->done[g->generation & 1]);
        g->generation++;
        if (g->waiting[g->generation & 1])
            pthread_cond_signal(&g->done[g->generation & 1]);
        if (flushed < 0) {
            rc = flushed;
            break;
        }
    }
    pthread_mutex_unlock(&g->lock);
    return rc;
}

uint64_t vdi_flush_group_flushes(vdi_flush_group *g)
{
    pthread_mutex_lock(&g->lock);
    uint64_t n = g->flushes;
    pthread_mutex_unlock(&g->lock);
    return n;
}

/* ---- directories ------------------------------------------------------------------- */

/* One group per directory a process syncs (a daemon's datastores and its
 * state directory: a handful), kept for the life of the process. Past
 * DIR_GROUPS directories, a sync is a plain fsync of its own. */
#define DIR_GROUPS 64
static struct {
    char *dir;
    vdi_flush_group group;
} dir_groups[DIR_GROUPS];
static pthread_mutex_t dir_groups_lock = PTHREAD_MUTEX_INITIALIZER;

static vdi_flush_group *dir_group(const char *dir)
{
    vdi_flush_group *found = NULL;
    pthread_mutex_lock(&dir_groups_lock);
    for (size_t i = 0; i < DIR_GROUPS && !found; i++) {
        if (!dir_groups[i].dir) {
            if ((dir_groups[i].dir = strdup(dir))) {
                vdi_flush_group_init(&dir_groups[i].group);
                found = &dir_groups[i].group;
            }
            break;
        }
        if (!strcmp(dir_groups[i].dir, dir))
            found = &dir_groups[i].group;
    }
    pthread_mutex_unlock(&dir_groups_lock);
    return found;
}

void vdi_dir_of_(const char *path, char *buf, size_t len)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(buf, len, ".");
    else if (slash == path)
        snprintf(buf, len, "/");
    else
        snprintf(buf, len, "%.*s", (int)(slash - path), path);
}

static int fsync_dir(void *arg)
{
    int fd = open(arg, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

int vdi_sync_dir_of_(const char *path)
{
    char dir[PATH_MAX];
    vdi_dir_of_(path, dir, sizeof dir);
    vdi_flush_group *g = dir_group(dir);
    if (!g)
        return fsync_dir(dir);
    return vdi_flush_group_wait(g, vdi_flush_group_change(g), fsync_dir, dir);
}
