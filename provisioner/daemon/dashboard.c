/* dashboard.c — serves the dashboard's static page, script, style and icon.
 * They hold no data: the page reads everything through the API, with the
 * same checks as vdipoolctl (peer credentials on the Unix socket, the
 * bearer token on TCP), so serving them before those checks adds no way
 * in. What must stay true:
 *   - the page runs only its own script: the Content-Security-Policy allows
 *     scripts, styles, images and connections from this origin alone, no
 *     inline code, no frames, no forms posting elsewhere;
 *   - no CORS header is ever sent, so no other origin reads an answer;
 *   - app.js renders every value as text (textContent, never HTML). */
#include "dashboard.h"

#include <string.h>

#define DASHBOARD_HEADERS                                                                          \
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "           \
    "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "                    \
    "frame-ancestors 'none'\r\n"                                                                   \
    "X-Frame-Options: DENY\r\n"                                                                    \
    "Referrer-Policy: no-referrer\r\n"                                                             \
    "Cache-Control: no-cache\r\n"

bool dashboard_serve(request *r)
{
    if (strcmp(request_method(r), "GET"))
        return false;
    const char *path = request_path(r);
    for (const dashboard_asset *a = dashboard_assets; a->url; a++)
        if (!strcmp(a->url, path)) {
            request_respond_bytes(r, 200, a->type, DASHBOARD_HEADERS, a->bytes, a->size);
            return true;
        }
    return false;
}
