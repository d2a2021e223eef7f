/* log.h — vdipoold's log: one line per event, key=value pairs with pool,
 * desktop and session ids, to stderr (journald reads the <N> priority
 * prefix when running under systemd). Thread-safe: one fprintf per line. */
#ifndef VDI_DAEMON_LOG_H
#define VDI_DAEMON_LOG_H

#include "vdi_config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void log_configure(vdi_log_level level, bool under_journal);
void log_set_level(vdi_log_level level);
/* Writes one line. Control bytes anywhere in it (newlines, terminal escapes)
 * are written as \xNN, so no value can start a line of its own. */
void svc_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A value for a key=value pair: as it is when it is plain (letters, digits
 * and ._@:/+-), else in double quotes with " and \ escaped, so that text from
 * outside (a user name) cannot pose as more pairs. Returns buf. */
const char *log_value(const char *value, char *buf, size_t len);
#define LOG_VALUE_MAX 300

/* A warning about an event that may repeat many times a second (refused
 * connections, failed accepts) is written at most every interval: each
 * event is counted with log_throttle_due, which returns true when a line is
 * due (the first event at once, then at most once per interval) and gives
 * how many events that line reports. Not locked: one thread's. */
typedef struct log_throttle {
    uint64_t logged_at_ms; /* the last line's time, 0: none yet */
    uint64_t unlogged;     /* events since that line */
} log_throttle;
bool log_throttle_due(log_throttle *t, uint64_t now_ms, uint64_t interval_ms, uint64_t *count);

#endif
