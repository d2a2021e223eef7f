/* text.h — a growing string buffer for building XML and metrics. On
 * allocation failure it stops growing and remembers that it failed, so a
 * caller checks once at the end. */
#ifndef VDI_TEXT_H
#define VDI_TEXT_H

#include <stdbool.h>
#include <stddef.h>

typedef struct strbuf {
    char *s; /* NUL-terminated once anything was appended */
    size_t len, cap;
    bool failed; /* an append did not fit in memory */
} strbuf;

void text_append(strbuf *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s with &, <, >, ' and " escaped for XML. */
void text_append_xml(strbuf *t, const char *s);
/* The string (the caller frees it), or NULL when an append failed. */
char *text_take(strbuf *t);

/* Replaces an owned string (*dst) with a copy of src; NULL clears it. On
 * allocation failure *dst becomes NULL and the failure is written to stderr. */
void set_str(char **dst, const char *src);

#endif
