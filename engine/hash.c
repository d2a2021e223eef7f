/* hash.c — the content hash of an image file (see vdi_content_hash). */
#include "vdi_engine.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HASH_BLOCK (64 * 1024)

static bool all_zero(const uint8_t *p, size_t n)
{
    const uint64_t *w = (const uint64_t *)p;
    size_t words = n / 8;
    for (size_t i = 0; i < words; i++)
        if (w[i])
            return false;
    for (size_t i = words * 8; i < n; i++)
        if (p[i])
            return false;
    return true;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

int vdi_content_hash(const char *path, uint8_t out[VDI_HASH_SIZE], vdi_error *err)
{
    int rc = 0;
    uint8_t *buf = NULL;
    EVP_MD_CTX *ctx = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return vdi_error_set(err, -errno, "cannot open %s to hash it: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        rc = vdi_error_set(err, -EINVAL, "%s is not a regular file", path);
        goto cleanup;
    }
    buf = aligned_alloc(64, HASH_BLOCK);
    ctx = EVP_MD_CTX_new();
    if (!buf || !ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        rc = vdi_error_set(err, -ENOMEM, "cannot set up SHA-256");
        goto cleanup;
    }
    uint64_t size = (uint64_t)st.st_size;
    uint64_t pos = 0;
    while (pos < size) {
        off_t data = lseek(fd, (off_t)pos, SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO)
                break; /* only a hole remains */
            data = (off_t)pos; /* no SEEK_DATA support: read everything */
        }
        /* Work in whole blocks so the hash does not depend on where holes begin. */
        uint64_t block = (uint64_t)data / HASH_BLOCK * HASH_BLOCK;
        off_t hole = lseek(fd, (off_t)block, SEEK_HOLE);
        uint64_t end = hole < 0 ? size : (uint64_t)hole;
        if (end <= block)
            end = block + HASH_BLOCK;
        if (end > size)
            end = size;
        uint64_t off = block;
        for (; off < end; off += HASH_BLOCK) {
            size_t len = size - off < HASH_BLOCK ? (size_t)(size - off) : HASH_BLOCK;
            size_t got = 0;
            while (got < len) {
                ssize_t n = pread(fd, buf + got, len - got, (off_t)(off + got));
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0) {
                    rc = vdi_error_set(err, n < 0 ? -errno : -EIO, "cannot read %s at %llu: %s",
                                       path, (unsigned long long)(off + got),
                                       n < 0 ? strerror(errno) : "file shrank while hashing");
                    goto cleanup;
                }
                got += (size_t)n;
            }
            if (all_zero(buf, len))
                continue;
            uint8_t rec[8];
            put_be64(rec, off);
            EVP_DigestUpdate(ctx, rec, sizeof rec);
            EVP_DigestUpdate(ctx, buf, len);
        }
        pos = off; /* block-aligned, so no block is hashed twice */
    }
    uint8_t tail[8];
    put_be64(tail, size);
    EVP_DigestUpdate(ctx, tail, sizeof tail);
    unsigned int outlen = 0;
    if (EVP_DigestFinal_ex(ctx, out, &outlen) != 1 || outlen != VDI_HASH_SIZE)
        rc = vdi_error_set(err, -EIO, "SHA-256 failed");

cleanup:
    EVP_MD_CTX_free(ctx);
    free(buf);
    close(fd);
    return rc;
}

const char *vdi_hash_hex(const uint8_t hash[VDI_HASH_SIZE], char *buf, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    if (len < 2 * VDI_HASH_SIZE + 1) {
        if (len)
            buf[0] = '\0';
        return buf;
    }
    for (int i = 0; i < VDI_HASH_SIZE; i++) {
        buf[2 * i] = hex[hash[i] >> 4];
        buf[2 * i + 1] = hex[hash[i] & 15];
    }
    buf[2 * VDI_HASH_SIZE] = '\0';
    return buf;
}

/* ---- streaming --------------------------------------------------------------------- */

struct vdi_hasher {
    EVP_MD_CTX *ctx;
    uint8_t *block; /* HASH_BLOCK bytes being filled */
    size_t fill;
    uint64_t offset; /* where block starts */
    bool failed;
};

vdi_hasher *vdi_hasher_new(void)
{
    vdi_hasher *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->block = aligned_alloc(64, HASH_BLOCK);
    h->ctx = EVP_MD_CTX_new();
    if (!h->block || !h->ctx || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) {
        vdi_hasher_free(h);
        return NULL;
    }
    return h;
}

/* A whole block (or the last, short one) as vdi_content_hash takes it:
 * zero blocks are skipped, so holes and written zeros hash alike. */
static void hasher_flush(vdi_hasher *h)
{
    if (h->fill && !all_zero(h->block, h->fill)) {
        uint8_t rec[8];
        put_be64(rec, h->offset);
        if (EVP_DigestUpdate(h->ctx, rec, sizeof rec) != 1 ||
            EVP_DigestUpdate(h->ctx, h->block, h->fill) != 1)
            h->failed = true;
    }
    h->offset += h->fill;
    h->fill = 0;
}

void vdi_hasher_update(vdi_hasher *h, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len) {
        size_t n = HASH_BLOCK - h->fill < len ? HASH_BLOCK - h->fill : len;
        memcpy(h->block + h->fill, p, n);
        h->fill += n;
        p += n;
        len -= n;
        if (h->fill == HASH_BLOCK)
            hasher_flush(h);
    }
}

int vdi_hasher_finish(vdi_hasher *h, uint8_t out[VDI_HASH_SIZE])
{
    hasher_flush(h);
    uint8_t tail[8];
    put_be64(tail, h->offset);
    unsigned int outlen = 0;
    int rc = !h->failed && EVP_DigestUpdate(h->ctx, tail, sizeof tail) == 1 &&
                     EVP_DigestFinal_ex(h->ctx, out, &outlen) == 1 && outlen == VDI_HASH_SIZE
                 ? 0
                 : -EIO;
    vdi_hasher_free(h);
    return rc;
}

void vdi_hasher_free(vdi_hasher *h)
{
    if (!h)
        return;
    EVP_MD_CTX_free(h->ctx);
    free(h->block);
    free(h);
}
