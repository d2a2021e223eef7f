/* vdi_client.c — see vdi_client.h. */
#include "vdi_client.h"

#include <errno.h>
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

int vdi_client_call(const char *sock, const char *method, const char *path, const char *body,
                    char **out, vdi_error *err)
{
    *out = NULL;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return vdi_error_set(err, -errno, "socket: %s", strerror(errno));
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int e = errno;
        close(fd);
        return vdi_error_set(err, -e,
                             "cannot reach vdipoold at %s: %s (is it running? start it with "
                             "`vdipoold --config /etc/vdipool/vdipool.conf`, or give --socket)",
                             sock, strerror(e));
    }
    char *req = NULL;
    int n = asprintf(&req,
                     "%s %s HTTP/1.1\r\nHost: vdipoold\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     method, path, body ? strlen(body) : 0, body ? body : "");
    if (n < 0 || write_all(fd, req, (size_t)n) < 0) {
        free(req);
        close(fd);
        return vdi_error_set(err, -EIO, "cannot send the request to vdipoold");
    }
    free(req);
    size_t cap = 8192, len = 0;
    char *buf = malloc(cap);
    ssize_t r;
    while (buf && (r = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)r;
        if (cap - len < 1024) {
            char *nb = realloc(buf, cap * 2);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
    }
    close(fd);
    if (!buf)
        return vdi_error_set(err, -ENOMEM, "out of memory");
    buf[len] = '\0';
    int status = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) {
        free(buf);
        return vdi_error_set(err, -EPROTO, "vdipoold sent no HTTP answer");
    }
    char *b = strstr(buf, "\r\n\r\n");
    *out = strdup(b ? b + 4 : "");
    free(buf);
    return status;
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
