/* api_routes.h — the control API's endpoints, handed to the transport as
 * its route callback (ctx is the service). */
#ifndef VDI_API_ROUTES_H
#define VDI_API_ROUTES_H

#include "api.h"

void api_route(void *service, request *r);

#endif
