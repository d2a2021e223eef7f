/* vdi_common.h — the few things every part of vdipool shares: the error
 * value every function fills, and parsing/printing of sizes and durations.
 * Part of libvdicommon; depends on nothing but libc. */
#ifndef VDI_COMMON_H
#define VDI_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Every fallible function returns 0 or a negative errno-style code and, when
 * given a vdi_error, fills it with a sentence a person can act on. */
typedef struct vdi_error {
    int code;              /* negative errno, 0 when no error */
    char message[1024];
} vdi_error;

/* Sets err (if not NULL) and returns code, so callers can write
 * `return vdi_error_set(err, -EINVAL, "…", …);`. */
int vdi_error_set(vdi_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes the existing message with more context ("clone of X: " + msg). */
int vdi_error_prefix(vdi_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void vdi_error_clear(vdi_error *err);

/* Parses "512", "512K", "20G", "1T", "1.5G", "20GiB" (binary units; B optional)
 * into bytes. Returns 0 or -EINVAL (garbage, negative) or -ERANGE (overflow). */
int vdi_parse_size(const char *text, uint64_t *bytes);

/* Parses "90", "90s", "15m", "12h", "2d", "1h30m" into seconds. */
int vdi_parse_duration(const char *text, uint64_t *seconds);

/* Human-readable binary size into buf ("1.5 GiB", "512 B"); returns buf. */
const char *vdi_format_size(uint64_t bytes, char *buf, size_t len);

/* Duration in seconds as "1h30m" into buf; returns buf. */
const char *vdi_format_duration(uint64_t seconds, char *buf, size_t len);

#endif
