/* log.h — vdipoold's log: one line per event, key=value pairs with pool,
 * desktop and session ids, to stderr (journald reads the <N> priority
 * prefix when running under systemd). Thread-safe: one fprintf per line. */
#ifndef VDI_DAEMON_LOG_H
#define VDI_DAEMON_LOG_H

#include "vdi_config.h"

#include <stdbool.h>

void log_configure(vdi_log_level level, bool under_journal);
void log_set_level(vdi_log_level level);
void svc_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
