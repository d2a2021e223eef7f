/* log.c — see log.h. */
#include "log.h"

#include <ctype.h>
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
    char raw[2048], msg[2048 * 4];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)raw; *p && o < sizeof msg - 5; p++) {
        if (*p < 0x20 || *p == 0x7f)
            o += (size_t)snprintf(msg + o, sizeof msg - o, "\\x%02x", *p);
        else
            msg[o++] = (char)*p;
    }
    msg[o] = '\0';
    if (atomic_load(&under_journal)) {
        int prio = l == VDI_LOG_DEBUG ? 7 : l == VDI_LOG_INFO ? 6 : l == VDI_LOG_WARNING ? 4 : 3;
        fprintf(stderr, "<%d>%s\n", prio, msg);
    } else {
        /* Milliseconds: the steps of one desktop (end, clone, start) take
         * tens of them, and an operator reading the log wants their order. */
        char ts[32];
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        struct tm tm;
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", gmtime_r(&now.tv_sec, &tm));
        fprintf(stderr, "%s.%03ldZ %s %s\n", ts, now.tv_nsec / 1000000, level, msg);
    }
}

const char *log_value(const char *value, char *buf, size_t len)
{
    if (!value)
        value = "-";
    bool plain = *value != '\0';
    for (const char *p = value; *p && plain; p++)
        plain = isalnum((unsigned char)*p) || strchr("._@:/+-", *p);
    if (plain) {
        snprintf(buf, len, "%s", value);
        return buf;
    }
    size_t o = 0;
    buf[o++] = '"';
    for (const char *p = value; *p && o + 3 < len; p++) {
        if (*p == '"' || *p == '\\')
            buf[o++] = '\\';
        buf[o++] = *p;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

bool log_throttle_due(log_throttle *t, uint64_t now_ms, uint64_t interval_ms, uint64_t *count)
{
    t->unlogged++;
    if (t->logged_at_ms && now_ms - t->logged_at_ms < interval_ms)
        return false;
    *count = t->unlogged;
    t->unlogged = 0;
    t->logged_at_ms = now_ms ? now_ms : 1; /* 0 means "none yet" */
    return true;
}
