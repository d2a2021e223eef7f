/* prescan.c — a first look at config text before libconfig parses it.
 *
 * libconfig 1.5 wraps integers silently (`size = 4294967298;` reads as 2),
 * scans long strings in superlinear time, and opens whatever an @include
 * names (a FIFO blocks it for ever). So every file is checked here first:
 * it must be a regular file of at most VDI_CONFIG_MAX_FILE bytes, each
 * string at most VDI_CONFIG_MAX_STRING bytes, each integer written without
 * the L suffix must fit in 32 bits (libconfig's int), and @include nests at
 * most VDI_CONFIG_MAX_INCLUDE_DEPTH deep. Errors name the file, the line
 * and the text as written. */
#include "reading.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct scan {
    const char *file;
    const char *include_dir;   /* where @include names are resolved, as libconfig does */
    int depth;
    prescan_error_fn error;
    void *ctx;
    int errors;
} scan;

static void fail(scan *s, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail(scan *s, const char *file, int line, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s->error(s->ctx, file, line, msg);
    s->errors++;
}

static int scan_text(scan *s, const char *text, size_t len, const char *file);

/* Reads an included or main file after checking what it is. */
static int scan_file(scan *s, const char *path, const char *from_file, int from_line)
{
    struct stat st;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0 || fstat(fd, &st) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        if (from_file)
            fail(s, from_file, from_line, "@include \"%s\": cannot read it: %s", path,
                 strerror(e));
        else
            fail(s, path, 0,
                 "cannot read the config file (%s); check that it exists and is readable, or "
                 "pass --config PATH",
                 strerror(e));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        fail(s, from_file ? from_file : path, from_line,
             "%s%s%s is not a regular file (a %s); a config file must be a plain file",
             from_file ? "@include \"" : "", path, from_file ? "\"" : "",
             S_ISDIR(st.st_mode)    ? "directory"
             : S_ISFIFO(st.st_mode) ? "FIFO"
             : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "device"
             : S_ISSOCK(st.st_mode)                       ? "socket"
                                                          : "special file");
        return -1;
    }
    if (st.st_size > VDI_CONFIG_MAX_FILE) {
        close(fd);
        fail(s, from_file ? from_file : path, from_line,
             "%s is %lld bytes; a config file may have at most %d", path, (long long)st.st_size,
             VDI_CONFIG_MAX_FILE);
        return -1;
    }
    char *text = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (text && got < (size_t)st.st_size) {
        ssize_t n = read(fd, text + got, (size_t)st.st_size - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (!text) {
        fail(s, path, 0, "out of memory reading it");
        return -1;
    }
    text[got] = '\0';
    int rc = scan_text(s, text, got, path);
    free(text);
    return rc;
}

static int handle_include(scan *s, const char *name, const char *file, int line)
{
    if (s->depth >= VDI_CONFIG_MAX_INCLUDE_DEPTH) {
        fail(s, file, line, "@include \"%s\": includes nest more than %d deep (a loop?)", name,
             VDI_CONFIG_MAX_INCLUDE_DEPTH);
        return -1;
    }
    char *path = NULL;
    if (asprintf(&path, "%s%s%s", name[0] == '/' || !s->include_dir ? "" : s->include_dir,
                 name[0] == '/' || !s->include_dir ? "" : "/", name) < 0) {
        fail(s, file, line, "out of memory");
        return -1;
    }
    s->depth++;
    int rc = scan_file(s, path, file, line);
    s->depth--;
    free(path);
    return rc;
}

/* An integer literal starting at p (after an optional sign): does it fit
 * libconfig's int, or does it carry the L suffix of its int64? */
static const char *check_number(scan *s, const char *p, const char *end, const char *file,
                                int line)
{
    const char *start = p;
    if (*p == '-' || *p == '+')
        p++;
    bool hex = p + 1 < end && p[0] == '0' && (p[1] == 'x' || p[1] == 'X');
    const char *digits = hex ? p + 2 : p;
    const char *q = digits;
    while (q < end && (hex ? isxdigit((unsigned char)*q) : isdigit((unsigned char)*q)))
        q++;
    if (q == digits)
        return p + 1;
    /* A float ("1.5", "1e9") is libconfig's double: checked by range later. */
    if (!hex && q < end && (*q == '.' || *q == 'e' || *q == 'E')) {
        while (q < end && (isalnum((unsigned char)*q) || *q == '.' || *q == '-' || *q == '+'))
            q++;
        return q;
    }
    bool is_long = q < end && (*q == 'L' || *q == 'l');
    if (!is_long) {
        char buf[64];
        size_t n = (size_t)(q - start) < sizeof buf - 1 ? (size_t)(q - start) : sizeof buf - 1;
        memcpy(buf, start, n);
        buf[n] = '\0';
        errno = 0;
        long long v = strtoll(buf, NULL, 0);
        bool too_big = errno == ERANGE || (size_t)(q - start) >= sizeof buf - 1;
        if (too_big || v > INT32_MAX || v < INT32_MIN)
            fail(s, file, line,
                 "the number %.*s is too large: a setting takes a whole number from %d to %d "
                 "(sizes and durations take units, as in \"64G\" or \"12h\")",
                 (int)(q - start) > 40 ? 40 : (int)(q - start), start, INT32_MIN, INT32_MAX);
    }
    while (q < end && (*q == 'L' || *q == 'l'))
        q++;
    return q;
}

static int scan_text(scan *s, const char *text, size_t len, const char *file)
{
    const char *p = text, *end = text + len;
    int line = 1;
    bool after_include = false;
    while (p < end) {
        char c = *p;
        if (c == '\n') {
            line++;
            p++;
        } else if (c == '#' || (c == '/' && p + 1 < end && p[1] == '/')) {
            while (p < end && *p != '\n')
                p++;
        } else if (c == '/' && p + 1 < end && p[1] == '*') {
            p += 2;
            while (p + 1 < end && !(p[0] == '*' && p[1] == '/')) {
                line += *p == '\n';
                p++;
            }
            p = p + 2 < end ? p + 2 : end;
        } else if (c == '"') {
            int start_line = line;
            const char *q = p + 1;
            size_t n = 0;
            while (q < end && *q != '"') {
                if (*q == '\\' && q + 1 < end)
                    q++;
                line += *q == '\n';
                q++;
                n++;
            }
            if (n > VDI_CONFIG_MAX_STRING)
                fail(s, file, start_line, "a string of %zu bytes; a setting may have at most %d",
                     n, VDI_CONFIG_MAX_STRING);
            if (after_include && n <= VDI_CONFIG_MAX_STRING) {
                char name[VDI_CONFIG_MAX_STRING + 1];
                memcpy(name, p + 1, (size_t)(q - p - 1));
                name[q - p - 1] = '\0';
                handle_include(s, name, file, start_line);
            }
            after_include = false;
            p = q < end ? q + 1 : end;
        } else if (c == '@' && (size_t)(end - p) >= 8 && !strncmp(p, "@include", 8)) {
            after_include = true;
            p += 8;
        } else if (isdigit((unsigned char)c) ||
                   ((c == '-' || c == '+') && p + 1 < end && isdigit((unsigned char)p[1]))) {
            p = check_number(s, p, end, file, line);
        } else if (isalpha((unsigned char)c) || c == '_' || c == '*') {
            while (p < end && (isalnum((unsigned char)*p) || *p == '_' || *p == '-' || *p == '*'))
                p++; /* a name: digits inside it are not numbers */
        } else {
            p++;
        }
    }
    return s->errors ? -1 : 0;
}

int vdi_config_prescan_file_(const char *path, const char *include_dir, prescan_error_fn error,
                             void *ctx)
{
    scan s = { .include_dir = include_dir, .error = error, .ctx = ctx };
    scan_file(&s, path, NULL, 0);
    return s.errors ? -EINVAL : 0;
}

int vdi_config_prescan_text_(const char *text, const char *name, prescan_error_fn error,
                             void *ctx)
{
    scan s = { .include_dir = ".", .error = error, .ctx = ctx };
    size_t len = strlen(text);
    if (len > VDI_CONFIG_MAX_FILE) {
        fail(&s, name, 0, "the text is %zu bytes; a config may have at most %d", len,
             VDI_CONFIG_MAX_FILE);
        return -EINVAL;
    }
    scan_text(&s, text, len, name);
    return s.errors ? -EINVAL : 0;
}
