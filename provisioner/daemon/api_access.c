/* api_access.c — who may ask the control API: the peer check on the Unix
 * socket (SO_PEERCRED: root, the daemon's own user, or members of group
 * vdipool), the TCP listener's bearer token, and the browser check that
 * keeps other origins out. Pure checks, no state. */
#include "api_access.h"

#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* Compares in time independent of where the strings differ. */
static bool same_secret(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < lb; i++)
        diff |= (unsigned char)(b[i] ^ (i < la ? a[i] : 0));
    return diff == 0;
}

bool api_token_ok(const char *token, const char *authorization)
{
    char want[300];
    snprintf(want, sizeof want, "Bearer %s", token);
    return token[0] && same_secret(authorization, want);
}

/* Is NAME[:PORT] (a Host header) a loopback address? */
static bool loopback_host(const char *host)
{
    size_t len = strlen(host);
    const char *colon = host[0] == '[' ? strstr(host, "]:") : strrchr(host, ':');
    if (colon)
        len = (size_t)(colon - host) + (host[0] == '[');
    return (len == 9 && !strncasecmp(host, "localhost", 9)) ||
           (len == 5 && !strncmp(host, "[::1]", 5)) || (len > 4 && !strncmp(host, "127.", 4));
}

/* The API's answer to cross-site request forgery and DNS rebinding, which
 * its peer check and token cannot stop when a browser reaches it through a
 * forwarded port (ssh -L to the Unix socket needs no token): a request a
 * browser sent (it carries Origin or Sec-Fetch-* headers; vdipoolctl,
 * curl and brokers send neither) must be addressed to a loopback host
 * name, and come from that same origin. */
bool api_browser_request_allowed(const http_request *h)
{
    if (!h->origin[0] && !h->fetch_metadata)
        return true; /* not a browser */
    if (!loopback_host(h->host))
        return false;
    if (!h->origin[0])
        return true; /* a same-origin GET: browsers send no Origin with it */
    return !strncmp(h->origin, "http://", 7) && !strcasecmp(h->origin + 7, h->host);
}

bool api_peer_allowed(uv_pipe_t *p)
{
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)p, &fd) < 0)
        return false;
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return false;
    if (cred.uid == 0 || cred.uid == getuid())
        return true;
    struct group *g = getgrnam("vdipool");
    if (!g)
        return false;
    if (cred.gid == g->gr_gid)
        return true;
    struct passwd *pw = getpwuid(cred.uid);
    for (char **m = g->gr_mem; pw && *m; m++)
        if (!strcmp(*m, pw->pw_name))
            return true;
    return false;
}
