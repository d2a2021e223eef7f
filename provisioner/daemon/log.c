/* log.c — see log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Written on the loop (start, reload), read by every thread. */
static atomic_int log_level = VDI_LOG_INFO;
static atomic_bool under_journal;

void log_configure(vdi_log_level level, bool journal)
{
    atomic_store(&log_level, (int)level);
    atomic_store(&under_journal, journal);
}

void log_set_level(vdi_log_level level)
{
    atomic_store(&log_level, (int)level);
}

void svc_log(const char *level, const char *fmt, ...)
{
    vdi_log_level l = !strcmp(level, "debug")     ? VDI_LOG_DEBUG
                      : !strcmp(level, "warning") ? VDI_LOG_WARNING
                      : !strcmp(level, "error")   ? VDI_LOG_ERROR
                                                  : VDI_LOG_INFO;
    if ((int)l < atomic_load(&log_level))
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (atomic_load(&under_journal)) {
        int prio = l == VDI_LOG_DEBUG ? 7 : l == VDI_LOG_INFO ? 6 : l == VDI_LOG_WARNING ? 4 : 3;
        fprintf(stderr, "<%d>%s\n", prio, msg);
    } else {
        char ts[32];
        time_t t = time(NULL);
        struct tm tm;
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
        fprintf(stderr, "%s %s %s\n", ts, level, msg);
    }
}
