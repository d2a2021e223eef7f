/* vdi_client.c — see vdi_client.h. */
#include "vdi_client.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

const char *vdi_client_socket(const char *given)
{
    if (given && *given)
        return given;
    const char *env = getenv("VDIPOOL_SOCKET");
    return env && *env ? env : VDI_CLIENT_DEFAULT_SOCKET;
}

struct vdi_client_conn {
    char *socket_path;
    int fd; /* -1 between connections */
};

static int connect_socket(vdi_client_conn *c, vdi_error *err)
{
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return vdi_error_set(err, -errno, "socket: %s", strerror(errno));
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", c->socket_path);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int e = errno;
        close(c->fd);
        c->fd = -1;
        return vdi_error_set(err, -e,
                             "cannot reach vdipoold at %s: %s (is it running? start it with "
                             "`vdipoold --config /etc/vdipool/vdipool.conf`, or give --socket)",
                             c->socket_path, strerror(e));
    }
    return 0;
}

int vdi_client_connect(const char *socket_path, vdi_client_conn **out, vdi_error *err)
{
    vdi_client_conn *c = calloc(1, sizeof *c);
    if (!c || !(c->socket_path = strdup(socket_path))) {
        free(c);
        return vdi_error_set(err, -ENOMEM, "out of memory");
    }
    int rc = connect_socket(c, err);
    if (rc < 0) {
        vdi_client_disconnect(c);
        return rc;
    }
    *out = c;
    return 0;
}

void vdi_client_disconnect(vdi_client_conn *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c->socket_path);
    free(c);
}

static void drop_connection(vdi_client_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

/* Reads one answer: the head up to its blank line, then Content-Length
 * bytes of body (every answer of vdipoold has one). Returns the status and
 * *body, or -EPIPE when the connection ended before a byte of it arrived
 * (a kept connection the daemon closed while idle). */
static int read_answer(vdi_client_conn *c, char **body, bool *closes, vdi_error *err)
{
    size_t cap = 16384, got = 0;
    char *buf = malloc(cap);
    /* Where the head ends, as an offset: buf moves when it grows. */
    size_t head_len = 0;
    bool have_head = false;
    int status = 0;
    while (buf) {
        if (got == cap - 1) {
            char *nb = realloc(buf, cap * 2);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(c->fd, buf + got, cap - got - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            free(buf);
            return got == 0 ? -EPIPE
                            : vdi_error_set(err, -EPROTO,
                                            "vdipoold closed in the middle of an answer");
        }
        got += (size_t)r;
        buf[got] = '\0';
        char *end_of_head = have_head ? NULL : strstr(buf, "\r\n\r\n");
        if (end_of_head) {
            *end_of_head = '\0';
            head_len = (size_t)(end_of_head - buf);
            have_head = true;
            if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) {
                free(buf);
                return vdi_error_set(err, -EPROTO, "vdipoold sent no HTTP answer");
            }
        }
        if (have_head) {
            const char *cl = strcasestr(buf, "\r\nContent-Length:");
            size_t body_at = head_len + 4;
            size_t len = cl ? strtoul(cl + 17, NULL, 10) : 0;
            if (got >= body_at + len) {
                *closes = strcasestr(buf, "\r\nConnection: close") != NULL;
                *body = strndup(buf + body_at, len);
                free(buf);
                return *body ? status : vdi_error_set(err, -ENOMEM, "out of memory");
            }
        }
    }
    free(buf);
    return vdi_error_set(err, -ENOMEM, "out of memory");
}

static int request_once(vdi_client_conn *c, const char *req, size_t n, char **out,
                        vdi_error *err)
{
    if (c->fd < 0 && connect_socket(c, err) < 0)
        return err ? err->code : -ECONNREFUSED;
    if (write_all(c->fd, req, n) < 0) {
        drop_connection(c);
        return -EPIPE;
    }
    bool closes = false;
    int status = read_answer(c, out, &closes, err);
    if (status < 0 || closes)
        drop_connection(c);
    return status;
}

int vdi_client_request(vdi_client_conn *c, const char *method, const char *path, const char *body,
                       char **out, vdi_error *err)
{
    *out = NULL;
    char *req = NULL;
    int n = asprintf(&req,
                     "%s %s HTTP/1.1\r\nHost: vdipoold\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     method, path, body ? strlen(body) : 0, body ? body : "");
    if (n < 0)
        return vdi_error_set(err, -ENOMEM, "out of memory");
    bool reused = c->fd >= 0;
    int status = request_once(c, req, (size_t)n, out, err);
    /* A kept connection the daemon closed while it was idle: once more on a
     * new one (nothing of the request was read by the daemon). */
    if (status == -EPIPE && reused)
        status = request_once(c, req, (size_t)n, out, err);
    free(req);
    if (status == -EPIPE)
        return vdi_error_set(err, -EPIPE, "vdipoold at %s closed the connection without an answer",
                             c->socket_path);
    return status;
}

int vdi_client_request_json(vdi_client_conn *c, const char *method, const char *path,
                            const char *body, json_t **out, vdi_error *err)
{
    char *text = NULL;
    *out = NULL;
    int status = vdi_client_request(c, method, path, body, &text, err);
    if (status >= 0)
        *out = json_loads(text ? text : "", JSON_DECODE_ANY, NULL);
    free(text);
    return status;
}

int vdi_client_call(const char *sock, const char *method, const char *path, const char *body,
                    char **out, vdi_error *err)
{
    *out = NULL;
    vdi_client_conn *c = NULL;
    int rc = vdi_client_connect(sock, &c, err);
    if (rc < 0)
        return rc;
    rc = vdi_client_request(c, method, path, body, out, err);
    vdi_client_disconnect(c);
    return rc;
}

int vdi_client_call_json(const char *sock, const char *method, const char *path, const char *body,
                         json_t **out, vdi_error *err)
{
    char *text = NULL;
    *out = NULL;
    int status = vdi_client_call(sock, method, path, body, &text, err);
    if (status >= 0)
        *out = json_loads(text ? text : "", JSON_DECODE_ANY, NULL);
    free(text);
    return status;
}
