/* hoststore.c — host-local datastores through libvirt's storage API (see
 * hoststore.h). What holds on such a datastore, and what does not:
 *  - the gold's copy is made read-only (mode 0444) when it is created, and
 *    its content is proved against the sealed fingerprint before its first
 *    use in this process and by the scrub; before every clone its mode,
 *    size and times are compared with what they were when it was proved;
 *  - QEMU's write lock and the immutable flag that protect a gold on a
 *    shared datastore need local access to the file: a root process on the
 *    host can still write the copy, and such a write is found by the next
 *    cheap check (its times change) or by the scrub, then refused.
 * The copy is named after the fingerprint, so a changed gold never meets an
 * old copy by accident. */
#include "hoststore.h"
#include "log.h"
#include "text.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define UPLOAD_CHUNK (16u << 20) /* one virStorageVolUpload; progress is kept per chunk */
#define STREAM_BUF (1u << 20)

/* ---- what this process knows of each copy ------------------------------------------ */

/* Per host copy (its connection's URI and path): proved (and what its
 * mode, size and times were then), or how far an interrupted copy got. */
typedef struct copy_state {
    char *key;
    bool proved;
    char stamp[256]; /* "mode size mtime ctime" when proved */
    bool uploading;    /* made by this process and not filled yet */
    uint64_t uploaded; /* while uploading: bytes sent and confirmed */
    struct copy_state *next;
} copy_state;

static pthread_mutex_t copies_lock = PTHREAD_MUTEX_INITIALIZER;
static copy_state *copies;
/* One copy or proof at a time per process: two clones of a new pool wait
 * for one upload instead of making two. */
static pthread_mutex_t upload_lock = PTHREAD_MUTEX_INITIALIZER;

/* Under copies_lock. */
static copy_state *copy_find(const char *key, bool create)
{
    for (copy_state *c = copies; c; c = c->next)
        if (!strcmp(c->key, key))
            return c;
    if (!create)
        return NULL;
    copy_state *c = calloc(1, sizeof *c);
    if (!c || !(c->key = strdup(key))) {
        free(c);
        return NULL;
    }
    c->next = copies;
    copies = c;
    return c;
}

/* Was the copy at key proved, and does it still show the stamp it had then?
 * One that changed loses its proof (*changed, which may be NULL, says so). */
static bool copy_still_proved(const char *key, const char *stamp, bool *changed)
{
    pthread_mutex_lock(&copies_lock);
    copy_state *c = copy_find(key, false);
    bool fine = c && c->proved && !strcmp(c->stamp, stamp);
    bool lost = c && c->proved && !fine;
    if (lost)
        c->proved = false;
    pthread_mutex_unlock(&copies_lock);
    if (changed)
        *changed = lost;
    return fine;
}

/* What a proof found: the copy proved, with its stamp, or not. */
static void copy_set_proved(const char *key, bool proved, const char *stamp)
{
    pthread_mutex_lock(&copies_lock);
    copy_state *c = copy_find(key, proved);
    if (c) {
        c->proved = proved;
        if (proved)
            snprintf(c->stamp, sizeof c->stamp, "%s", stamp);
    }
    pthread_mutex_unlock(&copies_lock);
}

static char *copy_key(virConnectPtr conn, const char *path)
{
    char *uri = virConnectGetURI(conn);
    char *key = NULL;
    if (asprintf(&key, "%s|%s", uri ? uri : "?", path) < 0)
        key = NULL;
    free(uri);
    return key;
}

static const char *lv_error(void)
{
    virErrorPtr e = virGetLastError();
    return e && e->message ? e->message : "unknown libvirt error";
}

/* ---- the pool -------------------------------------------------------------------------- */

int hoststore_pool(virConnectPtr conn, const vdi_datastore_config *ds, virStoragePoolPtr *out,
                   char *why, size_t why_len)
{
    char name[128];
    snprintf(name, sizeof name, "vdipool-%s", ds->name);
    virStoragePoolPtr pool = virStoragePoolLookupByName(conn, name);
    if (pool) {
        char *xml = virStoragePoolGetXMLDesc(pool, 0);
        strbuf want = {0};
        text_append(&want, "<path>");
        text_append_xml(&want, ds->path);
        text_append(&want, "</path>");
        char *w = text_take(&want);
        bool same = xml && w && strstr(xml, w);
        free(xml);
        free(w);
        if (!same) {
            snprintf(why, why_len,
                     "storage pool %s on the host is not on %s (datastore %s): remove it "
                     "(virsh pool-destroy/pool-undefine %s) or rename the datastore",
                     name, ds->path, ds->name, name);
            virStoragePoolFree(pool);
            return -EEXIST;
        }
        if (virStoragePoolIsActive(pool) != 1 &&
            virStoragePoolCreate(pool, VIR_STORAGE_POOL_CREATE_WITH_BUILD) < 0) {
            snprintf(why, why_len, "cannot start storage pool %s on the host: %s", name,
                     lv_error());
            virStoragePoolFree(pool);
            return -EIO;
        }
        *out = pool;
        return 0;
    }
    /* Transient: the config is where the datastore is defined, not the host. */
    strbuf x = {0};
    text_append(&x, "<pool type='dir'><name>%s</name><target><path>", name);
    text_append_xml(&x, ds->path);
    text_append(&x, "</path><permissions><mode>0755</mode></permissions></target></pool>");
    char *xml = text_take(&x);
    pool = xml ? virStoragePoolCreateXML(conn, xml, VIR_STORAGE_POOL_CREATE_WITH_BUILD) : NULL;
    free(xml);
    if (!pool) {
        snprintf(why, why_len, "cannot make storage pool %s on %s on the host: %s", name,
                 ds->path, lv_error());
        return -EIO;
    }
    svc_log("info", "datastore=%s event=host-pool-started pool=%s path=%s", ds->name, name,
            ds->path);
    *out = pool;
    return 0;
}

int hoststore_space(virStoragePoolPtr pool, uint64_t *capacity, uint64_t *available, char *why,
                    size_t why_len)
{
    virStoragePoolInfo info;
    if (virStoragePoolGetInfo(pool, &info) < 0) {
        snprintf(why, why_len, "cannot read the storage pool's space: %s", lv_error());
        return -EIO;
    }
    *capacity = info.capacity;
    *available = info.available;
    return 0;
}

int hoststore_measure(virConnectPtr conn, const vdi_datastore_config *ds, vdi_catalog *catalog,
                      vdi_space_report *out, char *why, size_t why_len)
{
    virStoragePoolPtr sp = NULL;
    uint64_t capacity = 0, available = 0;
    int rc = hoststore_pool(conn, ds, &sp, why, why_len);
    if (rc == 0)
        rc = hoststore_space(sp, &capacity, &available, why, why_len);
    if (sp)
        virStoragePoolFree(sp);
    if (rc < 0)
        return rc;
    vdi_datastore_usage usage;
    vdi_error err = {0};
    if ((rc = vdi_catalog_datastore_usage(catalog, ds->name, &usage, &err)) < 0) {
        snprintf(why, why_len, "%s", err.message);
        return rc;
    }
    vdi_space_report_from(capacity, available, ds->reserve_bytes, ds->reserve_percent, &usage,
                          out);
    return 0;
}

/* ---- the gold's copy ------------------------------------------------------------------- */

void hoststore_gold_name(const vdi_gold_info *gold, char *out, size_t len)
{
    char hex[2 * VDI_HASH_SIZE + 1];
    vdi_hash_hex(gold->fp.hash, hex, sizeof hex);
    snprintf(out, len, "gold-%.16s.%s", hex, vdi_format_name(gold->format));
}

/* "MODE SIZE MTIME CTIME" of a volume, from its XML and info: what the
 * cheap check compares. */
static int volume_stamp(virStorageVolPtr vol, char *out, size_t len, char *why, size_t why_len)
{
    char *xml = virStorageVolGetXMLDesc(vol, 0);
    virStorageVolInfo info;
    if (!xml || virStorageVolGetInfo(vol, &info) < 0) {
        free(xml);
        snprintf(why, why_len, "cannot read the gold's copy on the host: %s", lv_error());
        return -EIO;
    }
    char mode[16] = "?", mtime[64] = "?", ctime_s[64] = "?";
    const char *t = strstr(xml, "<target>");
    const char *m = t ? strstr(t, "<mode>") : NULL;
    const char *mt = t ? strstr(t, "<mtime>") : NULL;
    const char *ct = t ? strstr(t, "<ctime>") : NULL;
    if (m)
        sscanf(m + 6, "%15[^<]", mode);
    if (mt)
        sscanf(mt + 7, "%63[^<]", mtime);
    if (ct)
        sscanf(ct + 7, "%63[^<]", ctime_s);
    free(xml);
    snprintf(out, len, "%s %llu %s %s", mode, info.capacity, mtime, ctime_s);
    return 0;
}

/* Downloads the copy and hashes it: 0 when it is the gold. */
static int prove(virConnectPtr conn, virStorageVolPtr vol, const vdi_gold_info *gold, char *why,
                 size_t why_len)
{
    virStreamPtr st = virStreamNew(conn, 0);
    vdi_hasher *h = vdi_hasher_new();
    char *buf = malloc(STREAM_BUF);
    int rc = 0;
    if (!st || !h || !buf) {
        snprintf(why, why_len, "out of memory proving the gold's copy");
        rc = -ENOMEM;
    } else if (virStorageVolDownload(vol, st, 0, 0, 0) < 0) {
        snprintf(why, why_len, "cannot read the gold's copy back from the host: %s", lv_error());
        rc = -EIO;
    } else {
        uint64_t total = 0;
        for (;;) {
            int n = virStreamRecv(st, buf, STREAM_BUF);
            if (n == 0)
                break;
            if (n < 0) {
                snprintf(why, why_len, "reading the gold's copy back failed at %llu: %s",
                         (unsigned long long)total, lv_error());
                rc = -EIO;
                break;
            }
            vdi_hasher_update(h, buf, (size_t)n);
            total += (uint64_t)n;
        }
        if (rc == 0 && virStreamFinish(st) < 0) {
            snprintf(why, why_len, "reading the gold's copy back failed: %s", lv_error());
            rc = -EIO;
        } else if (rc < 0) {
            virStreamAbort(st);
        }
        if (rc == 0) {
            uint8_t got[VDI_HASH_SIZE];
            int hr = vdi_hasher_finish(h, got);
            h = NULL;
            char want_hex[2 * VDI_HASH_SIZE + 1], got_hex[2 * VDI_HASH_SIZE + 1];
            if (hr < 0) {
                snprintf(why, why_len, "cannot hash the gold's copy");
                rc = -EIO;
            } else if (total != gold->fp.size || memcmp(got, gold->fp.hash, VDI_HASH_SIZE)) {
                snprintf(why, why_len,
                         "the host's copy of gold %s does not match its sealed fingerprint "
                         "(%llu bytes, sha256 %.16s…; sealed: %llu bytes, %.16s…)",
                         gold->path, (unsigned long long)total,
                         vdi_hash_hex(got, got_hex, sizeof got_hex),
                         (unsigned long long)gold->fp.size,
                         vdi_hash_hex(gold->fp.hash, want_hex, sizeof want_hex));
                rc = -ESTALE;
            }
        }
    }
    vdi_hasher_free(h);
    free(buf);
    if (st)
        virStreamFree(st);
    return rc;
}

/* Sends the gold's bytes from `from` on, chunk by chunk, recording progress
 * so that an interrupted copy resumes there. */
static int upload(virConnectPtr conn, virStorageVolPtr vol, const vdi_gold_info *gold,
                  const char *key, uint64_t from, char *why, size_t why_len)
{
    int fd = open(gold->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, why_len, "cannot read gold %s: %s", gold->path, strerror(errno));
        return -errno;
    }
    char *buf = malloc(STREAM_BUF);
    int rc = buf ? 0 : -ENOMEM;
    uint64_t size = gold->fp.size;
    for (uint64_t off = from; rc == 0 && off < size;) {
        uint64_t len = size - off < UPLOAD_CHUNK ? size - off : UPLOAD_CHUNK;
        virStreamPtr st = virStreamNew(conn, 0);
        if (!st || virStorageVolUpload(vol, st, off, len, 0) < 0) {
            snprintf(why, why_len, "cannot copy gold %s to the host at %llu: %s", gold->path,
                     (unsigned long long)off, lv_error());
            rc = -EIO;
            if (st)
                virStreamFree(st);
            break;
        }
        for (uint64_t done = 0; rc == 0 && done < len;) {
            size_t want = len - done < STREAM_BUF ? (size_t)(len - done) : STREAM_BUF;
            ssize_t got = pread(fd, buf, want, (off_t)(off + done));
            if (got <= 0) {
                snprintf(why, why_len, "cannot read gold %s at %llu: %s", gold->path,
                         (unsigned long long)(off + done), got < 0 ? strerror(errno) : "short");
                rc = -EIO;
                break;
            }
            for (ssize_t sent = 0; sent < got;) {
                int n = virStreamSend(st, buf + sent, (size_t)(got - sent));
                if (n < 0) {
                    snprintf(why, why_len, "copying gold %s to the host failed at %llu: %s",
                             gold->path, (unsigned long long)(off + done), lv_error());
                    rc = -EIO;
                    break;
                }
                sent += n;
            }
            done += (uint64_t)got;
        }
        if (rc == 0 && virStreamFinish(st) < 0) {
            snprintf(why, why_len, "copying gold %s to the host failed: %s", gold->path,
                     lv_error());
            rc = -EIO;
        } else if (rc < 0) {
            virStreamAbort(st);
        }
        virStreamFree(st);
        if (rc == 0) {
            off += len;
            pthread_mutex_lock(&copies_lock);
            copy_state *c = copy_find(key, true);
            if (c) {
                c->uploaded = off;
                c->uploading = off < size;
            }
            pthread_mutex_unlock(&copies_lock);
        }
    }
    free(buf);
    close(fd);
    return rc;
}

static virStorageVolPtr create_copy(virStoragePoolPtr pool, const char *name, uint64_t size,
                                    char *why, size_t why_len)
{
    /* raw: libvirt makes a sparse file of that size, the upload fills it. */
    char xml[1024];
    snprintf(xml, sizeof xml,
             "<volume><name>%s</name><capacity unit='bytes'>%llu</capacity>"
             "<allocation unit='bytes'>0</allocation><target><format type='raw'/>"
             "<permissions><mode>0444</mode><owner>0</owner><group>0</group></permissions>"
             "</target></volume>",
             name, (unsigned long long)size);
    virStorageVolPtr vol = virStorageVolCreateXML(pool, xml, 0);
    if (!vol)
        snprintf(why, why_len, "cannot make the gold's copy %s on the host: %s", name,
                 lv_error());
    return vol;
}

int hoststore_gold(virConnectPtr conn, virStoragePoolPtr pool, vdi_catalog *catalog,
                   const vdi_gold_info *gold, const char *host_name, char *path_out,
                   size_t path_len, bool *copied, char *why, size_t why_len)
{
    char name[96];
    hoststore_gold_name(gold, name, sizeof name);
    *copied = false;
    virStorageVolPtr vol = virStorageVolLookupByName(pool, name);
    char *path = vol ? virStorageVolGetPath(vol) : NULL;
    char *key = path ? copy_key(conn, path) : NULL;
    char stamp[256];
    if (vol && path && key && volume_stamp(vol, stamp, sizeof stamp, why, why_len) == 0) {
        /* The cheap check: proved before, and unchanged since. */
        bool changed = false;
        if (copy_still_proved(key, stamp, &changed)) {
            snprintf(path_out, path_len, "%s", path);
            free(path);
            free(key);
            virStorageVolFree(vol);
            return 0;
        }
        if (changed)
            svc_log("warning",
                    "host=%s event=gold-copy-changed copy=%s now=\"%s\"; proving it again",
                    host_name, path, stamp);
    }
    free(path);
    free(key);
    if (vol)
        virStorageVolFree(vol);

    /* The slow way, one at a time: copy what is missing, then prove it. */
    pthread_mutex_lock(&upload_lock);
    int rc = 0;
    vol = virStorageVolLookupByName(pool, name);
    path = NULL;
    key = NULL;
    for (int attempt = 0; attempt < 2 && rc == 0; attempt++) {
        bool made = !vol;
        if (made && !(vol = create_copy(pool, name, gold->fp.size, why, why_len))) {
            rc = -EIO;
            break;
        }
        free(path);
        free(key);
        path = virStorageVolGetPath(vol);
        key = path ? copy_key(conn, path) : NULL;
        pthread_mutex_lock(&copies_lock);
        copy_state *c = key ? copy_find(key, made) : NULL;
        if (c && made) {
            c->uploading = true;
            c->uploaded = 0;
            c->proved = false;
        }
        /* Only a copy this process made and has not filled is written to: a
         * copy found on the host is proved as it is, never overwritten
         * (children may depend on it). */
        uint64_t from = c && c->uploading ? c->uploaded : gold->fp.size;
        pthread_mutex_unlock(&copies_lock);
        /* Another clone proved it while this one waited. */
        if (!made && key && volume_stamp(vol, stamp, sizeof stamp, why, why_len) == 0 &&
            copy_still_proved(key, stamp, NULL))
            break;
        if (!path || !key) {
            snprintf(why, why_len, "cannot name the gold's copy %s on the host: %s", name,
                     lv_error());
            rc = -EIO;
            break;
        }
        if (from < gold->fp.size) {
            svc_log("info", "host=%s event=gold-copying gold=%s copy=%s from=%llu size=%llu",
                    host_name, gold->path, path, (unsigned long long)from,
                    (unsigned long long)gold->fp.size);
            rc = upload(conn, vol, gold, key, from, why, why_len);
            if (rc < 0)
                break;
            *copied = true;
            svc_log("info", "host=%s event=gold-copied gold=%s copy=%s", host_name, gold->path,
                    path);
        }
        rc = prove(conn, vol, gold, why, why_len);
        if (rc == 0) {
            if (volume_stamp(vol, stamp, sizeof stamp, why, why_len) < 0) {
                rc = -EIO;
                break;
            }
            copy_set_proved(key, true, stamp);
            svc_log("info", "host=%s event=gold-copy-verified gold=%s copy=%s", host_name,
                    gold->path, path);
            break;
        }
        if (rc != -ESTALE)
            break;
        /* Refused. Replaced only when no child depends on it (a copy cut
         * short by a crash, or one nothing was cloned from yet). */
        size_t dependents = 0;
        vdi_error err = {0};
        if (vdi_catalog_count_children(catalog, path, &dependents, &err) < 0 || dependents) {
            svc_log("error", "host=%s event=gold-copy-refused copy=%s children=%zu reason=\"%s\"",
                    host_name, path, dependents, why);
            size_t used = strlen(why);
            snprintf(why + used, why_len - used,
                     "; %zu children depend on it, so it is not replaced: end them, then "
                     "delete it (virsh vol-delete %s)",
                     dependents, path);
            break;
        }
        svc_log("warning", "host=%s event=gold-copy-refused copy=%s reason=\"%s\"; copying again",
                host_name, path, why);
        if (virStorageVolDelete(vol, 0) < 0) {
            snprintf(why, why_len, "cannot delete the refused copy %s: %s", path, lv_error());
            rc = -EIO;
            break;
        }
        virStorageVolFree(vol);
        vol = NULL;
        rc = 0; /* the second attempt copies from scratch */
        if (attempt == 1) {
            snprintf(why, why_len, "the copy of gold %s on the host did not match twice",
                     gold->path);
            rc = -ESTALE;
        }
    }
    pthread_mutex_unlock(&upload_lock);
    if (rc == 0 && path)
        snprintf(path_out, path_len, "%s", path);
    free(path);
    free(key);
    if (vol)
        virStorageVolFree(vol);
    return rc;
}

int hoststore_verify_gold(virConnectPtr conn, virStoragePoolPtr pool, const vdi_gold_info *gold,
                          char *why, size_t why_len)
{
    char name[96];
    hoststore_gold_name(gold, name, sizeof name);
    virStorageVolPtr vol = virStorageVolLookupByName(pool, name);
    if (!vol) {
        snprintf(why, why_len, "no copy %s on the host", name);
        return -ENOENT;
    }
    int rc = prove(conn, vol, gold, why, why_len);
    char *path = virStorageVolGetPath(vol);
    char *key = path ? copy_key(conn, path) : NULL;
    char stamp[256];
    if (key && (rc < 0 || volume_stamp(vol, stamp, sizeof stamp, why, why_len) == 0))
        copy_set_proved(key, rc == 0, stamp);
    free(path);
    free(key);
    virStorageVolFree(vol);
    return rc;
}

/* ---- children -------------------------------------------------------------------------- */

int hoststore_child_create(virConnectPtr conn, virStoragePoolPtr pool, const char *name,
                           const char *backing_path, vdi_format backing_format,
                           uint64_t virtual_size, char *why, size_t why_len)
{
    (void)conn;
    virStorageVolPtr old = virStorageVolLookupByName(pool, name);
    if (old) {
        svc_log("info", "event=leftover-child-removed child=%s", name);
        if (virStorageVolDelete(old, 0) < 0) {
            snprintf(why, why_len, "a leftover child %s is in the way and cannot be deleted: %s",
                     name, lv_error());
            virStorageVolFree(old);
            return -EEXIST;
        }
        virStorageVolFree(old);
    }
    strbuf x = {0};
    text_append(&x, "<volume><name>");
    text_append_xml(&x, name);
    text_append(&x,
                "</name><capacity unit='bytes'>%llu</capacity><target><format type='qcow2'/>"
                "<permissions><mode>0600</mode></permissions></target><backingStore><path>",
                (unsigned long long)virtual_size);
    text_append_xml(&x, backing_path);
    text_append(&x, "</path><format type='%s'/></backingStore></volume>",
                vdi_format_name(backing_format));
    char *xml = text_take(&x);
    virStorageVolPtr vol = xml ? virStorageVolCreateXML(pool, xml, 0) : NULL;
    free(xml);
    if (!vol) {
        snprintf(why, why_len, "cannot make child %s on the host: %s", name, lv_error());
        return -EIO;
    }
    virStorageVolFree(vol);
    return 0;
}

int hoststore_child_delete(virStoragePoolPtr pool, const char *name, uint64_t *allocated,
                           char *why, size_t why_len)
{
    if (allocated)
        *allocated = 0;
    virStorageVolPtr vol = virStorageVolLookupByName(pool, name);
    if (!vol) {
        virErrorPtr e = virGetLastError();
        if (e && e->code != VIR_ERR_NO_STORAGE_VOL) {
            snprintf(why, why_len, "cannot look up child %s on the host: %s", name, lv_error());
            return -EIO;
        }
        return 0; /* gone already */
    }
    virStorageVolInfo info;
    if (allocated && virStorageVolGetInfo(vol, &info) == 0)
        *allocated = info.allocation;
    int rc = 0;
    if (virStorageVolDelete(vol, 0) < 0) {
        snprintf(why, why_len, "cannot delete child %s on the host: %s", name, lv_error());
        rc = -EIO;
    }
    virStorageVolFree(vol);
    return rc;
}
