/* vdi_common.c — error values, size and duration units. */
#include "vdi_common.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

int vdi_error_set(vdi_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int vdi_error_prefix(vdi_error *err, const char *fmt, ...)
{
    if (!err)
        return 0;
    char prefix[sizeof err->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* Shift the message right and put the prefix in front; truncate at the end. */
    size_t plen = strnlen(prefix, sizeof prefix);
    size_t cap = sizeof err->message - 1;
    if (plen > cap)
        plen = cap;
    size_t mlen = strnlen(err->message, cap);
    if (mlen > cap - plen)
        mlen = cap - plen;
    memmove(err->message + plen, err->message, mlen);
    memcpy(err->message, prefix, plen);
    err->message[plen + mlen] = '\0';
    return err->code;
}

void vdi_error_clear(vdi_error *err)
{
    if (err) {
        err->code = 0;
        err->message[0] = '\0';
    }
}

/* Parses a non-negative decimal with an optional fraction into whole units
 * times `scale`, rejecting overflow. *end is set past the number. */
static int parse_scaled(const char *p, const char **end, uint64_t *whole, uint64_t *frac_num,
                        uint64_t *frac_den)
{
    if (!isdigit((unsigned char)*p))
        return -EINVAL;
    uint64_t v = 0;
    while (isdigit((unsigned char)*p)) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
        p++;
    }
    uint64_t num = 0, den = 1;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return -EINVAL;
        while (isdigit((unsigned char)*p)) {
            if (den < 1000000000ULL) {
                num = num * 10 + (unsigned)(*p - '0');
                den *= 10;
            }
            p++;
        }
    }
    *whole = v;
    *frac_num = num;
    *frac_den = den;
    *end = p;
    return 0;
}

static int scale_checked(uint64_t whole, uint64_t num, uint64_t den, uint64_t mult, uint64_t *out)
{
    if (mult && whole > UINT64_MAX / mult)
        return -ERANGE;
    uint64_t r = whole * mult;
    /* mult <= 2^60 and num < den <= 1e9, so compute the fraction in 128 bits. */
    unsigned __int128 f = (unsigned __int128)num * mult / den;
    if (r > UINT64_MAX - (uint64_t)f)
        return -ERANGE;
    *out = r + (uint64_t)f;
    return 0;
}

int vdi_parse_size(const char *text, uint64_t *bytes)
{
    if (!text)
        return -EINVAL;
    const char *p = text;
    while (isspace((unsigned char)*p))
        p++;
    uint64_t whole, num, den;
    int rc = parse_scaled(p, &p, &whole, &num, &den);
    if (rc < 0)
        return rc;
    while (isspace((unsigned char)*p))
        p++;
    uint64_t mult = 1;
    switch (toupper((unsigned char)*p)) {
    case '\0': break;
    case 'B': mult = 1; p++; goto tail_done;
    case 'K': mult = 1ULL << 10; p++; break;
    case 'M': mult = 1ULL << 20; p++; break;
    case 'G': mult = 1ULL << 30; p++; break;
    case 'T': mult = 1ULL << 40; p++; break;
    case 'P': mult = 1ULL << 50; p++; break;
    case 'E': mult = 1ULL << 60; p++; break;
    default: return -EINVAL;
    }
    if (mult > 1) {
        if (*p == 'i' || *p == 'I')
            p++;
        if (*p == 'b' || *p == 'B')
            p++;
    }
tail_done:
    while (isspace((unsigned char)*p))
        p++;
    if (*p != '\0')
        return -EINVAL;
    if (mult == 1 && num != 0)
        return -EINVAL; /* fractional bytes */
    return scale_checked(whole, num, den, mult, bytes);
}

int vdi_parse_duration(const char *text, uint64_t *seconds)
{
    if (!text)
        return -EINVAL;
    const char *p = text;
    while (isspace((unsigned char)*p))
        p++;
    if (*p == '\0')
        return -EINVAL;
    uint64_t total = 0;
    bool any = false;
    while (*p) {
        uint64_t whole, num, den, part;
        int rc = parse_scaled(p, &p, &whole, &num, &den);
        if (rc < 0)
            return rc;
        uint64_t mult;
        switch (*p) {
        case '\0': mult = 1; break;
        case 's': mult = 1; p++; break;
        case 'm': mult = 60; p++; break;
        case 'h': mult = 3600; p++; break;
        case 'd': mult = 86400; p++; break;
        case 'w': mult = 7 * 86400; p++; break;
        default: return -EINVAL;
        }
        rc = scale_checked(whole, num, den, mult, &part);
        if (rc < 0)
            return rc;
        if (total > UINT64_MAX - part)
            return -ERANGE;
        total += part;
        any = true;
        while (isspace((unsigned char)*p))
            p++;
    }
    if (!any)
        return -EINVAL;
    *seconds = total;
    return 0;
}

const char *vdi_format_size(uint64_t bytes, char *buf, size_t len)
{
    static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
    int u = 0;
    double v = (double)bytes;
    while (v >= 1024.0 && u < 6) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%llu B", (unsigned long long)bytes);
    else if (v == (double)(uint64_t)v)
        snprintf(buf, len, "%llu %s", (unsigned long long)v, units[u]);
    else
        snprintf(buf, len, "%.1f %s", v, units[u]);
    return buf;
}

const char *vdi_format_duration(uint64_t seconds, char *buf, size_t len)
{
    uint64_t d = seconds / 86400, h = seconds % 86400 / 3600, m = seconds % 3600 / 60,
             s = seconds % 60;
    size_t n = 0;
    buf[0] = '\0';
    if (d && n < len)
        n += (size_t)snprintf(buf + n, len - n, "%llud", (unsigned long long)d);
    if (h && n < len)
        n += (size_t)snprintf(buf + n, len - n, "%lluh", (unsigned long long)h);
    if (m && n < len)
        n += (size_t)snprintf(buf + n, len - n, "%llum", (unsigned long long)m);
    if ((s || seconds == 0) && n < len)
        snprintf(buf + n, len - n, "%llus", (unsigned long long)s);
    return buf;
}
