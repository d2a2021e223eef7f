/* api_tally.c — see api_tally.h. */
#include "api_tally.h"
#include "log.h"

#include <stdlib.h>

struct api_tally {
    unsigned open;            /* accepted and not closed */
    unsigned max;             /* beyond it a new connection is answered 503 */
    uint64_t refused;         /* connections answered 503 since start */
    log_throttle refused_log; /* the warning about them, at most every 10 s */
    unsigned refs;            /* the maker, and each connection not closed */
};

api_tally *api_tally_new(unsigned max)
{
    api_tally *t = calloc(1, sizeof *t);
    if (t) {
        t->refs = 1;
        t->max = max;
    }
    return t;
}

void api_tally_set_max(api_tally *t, unsigned max)
{
    t->max = max;
}

bool api_tally_admit(api_tally *t, uint64_t now_ms)
{
    t->open++;
    t->refs++;
    if (t->open <= t->max)
        return true;
    t->refused++;
    uint64_t count;
    if (log_throttle_due(&t->refused_log, now_ms, 10000, &count))
        svc_log("warning",
                "event=connections-refused refused=%llu open=%u max_connections=%u "
                "reason=\"API clients hold more connections than service.max_connections; each "
                "new one is answered 503 until some close\"",
                (unsigned long long)count, t->open, t->max);
    return false;
}

void api_tally_release(api_tally *t)
{
    if (t && --t->refs == 0)
        free(t);
}

void api_tally_leave(api_tally *t)
{
    if (!t)
        return;
    t->open--;
    api_tally_release(t);
}

unsigned api_tally_open(const api_tally *t)
{
    return t->open;
}

unsigned api_tally_max(const api_tally *t)
{
    return t->max;
}

uint64_t api_tally_refused(const api_tally *t)
{
    return t->refused;
}
