/* text.c — see text.h. */
#include "text.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void append_bytes(strbuf *t, const char *piece, size_t n)
{
    if (t->failed)
        return;
    if (t->len + n + 1 > t->cap) {
        size_t cap = (t->cap + n + 1) * 2;
        char *s = realloc(t->s, cap);
        if (!s) {
            t->failed = true;
            return;
        }
        t->s = s;
        t->cap = cap;
    }
    memcpy(t->s + t->len, piece, n);
    t->len += n;
    t->s[t->len] = '\0';
}

void text_append(strbuf *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *piece = NULL;
    int n = vasprintf(&piece, fmt, ap);
    va_end(ap);
    if (n < 0) {
        t->failed = true;
        return;
    }
    append_bytes(t, piece, (size_t)n);
    free(piece);
}

void text_append_xml(strbuf *t, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '&': append_bytes(t, "&amp;", 5); break;
        case '<': append_bytes(t, "&lt;", 4); break;
        case '>': append_bytes(t, "&gt;", 4); break;
        case '\'': append_bytes(t, "&apos;", 6); break;
        case '"': append_bytes(t, "&quot;", 6); break;
        default: append_bytes(t, s, 1); break;
        }
    }
}

char *text_take(strbuf *t)
{
    if (t->failed) {
        free(t->s);
        t->s = NULL;
        return NULL;
    }
    if (!t->s)
        append_bytes(t, "", 0);
    char *s = t->s;
    t->s = NULL;
    t->len = t->cap = 0;
    return s;
}

/* Replaces an owned string with a copy of src (NULL clears it). */
void set_str(char **dst, const char *src)
{
    if (*dst == src)
        return;
    char *copy = src ? strdup(src) : NULL;
    if (src && !copy)
        fprintf(stderr, "vdipoold: out of memory copying \"%.64s\"\n", src);
    free(*dst);
    *dst = copy;
}
