/* api_tally.h — the API's open connections counted against a limit
 * (service.max_connections): the server (api_server.c) makes the tally and
 * sets its limit, each accepted connection (api_http.c) is admitted and
 * leaves when its handles are closed. Either may outlive the other: the
 * tally is freed when the last of them lets go. Loop thread only. */
#ifndef VDI_API_TALLY_H
#define VDI_API_TALLY_H

#include <stdbool.h>
#include <stdint.h>

typedef struct api_tally api_tally;

/* A tally held once (by its maker), with the given limit; NULL when out of
 * memory. */
api_tally *api_tally_new(unsigned max);
void api_tally_set_max(api_tally *t, unsigned max);
/* Counts an accepted connection (it holds the tally until api_tally_leave);
 * false when it is beyond the limit, and then a warning says so at most
 * every 10 s. */
bool api_tally_admit(api_tally *t, uint64_t now_ms);
/* The connection is closed (t may be NULL: it was never counted). */
void api_tally_leave(api_tally *t);
/* Lets go of the maker's hold; the last hold frees the tally. */
void api_tally_release(api_tally *t);
/* Connections open now, the limit, and those answered 503 since start. */
unsigned api_tally_open(const api_tally *t);
unsigned api_tally_max(const api_tally *t);
uint64_t api_tally_refused(const api_tally *t);

#endif
