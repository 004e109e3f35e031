/* Engine snapshots: one file per partition, `pNNN-<position>.snap` in
 * engine.snapshot_dir, written by the partition's own worker between batches
 * (so the state and the position agree), atomically (temp file, fsync,
 * rename, fsync of the directory) and checksummed.
 *
 * Layout, little-endian:
 *   "TLYSNAP2" u32 partition u32 npartitions u64 position u64 created_ms
 *   u32 npolls, then per poll:
 *     u8 idlen id u8 mode u32 noptions, per option: u8 idlen id u64 count
 *     u64 nvoters, then nvoters 16-byte voter slots
 *   u64 XXH3-64 of everything before it
 *
 * A snapshot is used only if it matches the config exactly (same polls,
 * modes and options): otherwise the partition is recounted from the log,
 * which is always exact. The two newest snapshots of a partition are kept so
 * that a damaged newest one falls back to its predecessor. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/util.h"
#include "engine/engine_int.h"

/* 2: voter keys are record_poll_voter_key(). A TLYSNAP1 file holds keys of
 * another hash: mixing them with new ones would count a voter twice, so such
 * a snapshot is not used and its partition is recounted from the log. */
#define SNAP_MAGIC "TLYSNAP2"
#define SNAP_KEEP 2

typedef struct {
    FILE *f;
    XXH3_state_t *h;
    int err;
} swriter_t;

static void sw(swriter_t *w, const void *p, size_t n) {
    if (w->err)
        return;
    XXH3_64bits_update(w->h, p, n);
    if (fwrite(p, 1, n, w->f) != n)
        w->err = errno ? errno : EIO;
}
static void sw_u8(swriter_t *w, uint8_t v) {
    sw(w, &v, 1);
}
static void sw_u32(swriter_t *w, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    sw(w, b, 4);
}
static void sw_u64(swriter_t *w, uint64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    sw(w, b, 8);
}
static void sw_str(swriter_t *w, const char *s) {
    size_t n = strlen(s);
    sw_u8(w, (uint8_t)n);
    sw(w, s, n);
}

/* Positions of partition p's snapshots in dir, newest first. */
static int list_snapshots(const char *dir, int p, unsigned long long *positions, int max) {
    char prefix[16];
    snprintf(prefix, sizeof prefix, "p%03d-", p);
    size_t plen = strlen(prefix);
    int n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < max) {
        unsigned long long pos;
        size_t L = strlen(de->d_name);
        if (!strncmp(de->d_name, prefix, plen) && L > 5 && !strcmp(de->d_name + L - 5, ".snap") &&
            sscanf(de->d_name + plen, "%16llx", &pos) == 1)
            positions[n++] = pos;
    }
    closedir(d);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && positions[j] > positions[j - 1]; j--) {
            unsigned long long t = positions[j];
            positions[j] = positions[j - 1];
            positions[j - 1] = t;
        }
    return n;
}

int engine_snapshot_save(engine_t *e, int p, const char *dir, char *errstr, size_t esz) {
    partition_t *pt = &e->parts[p];
    char path[4200], tmp[4300];
    if (mkdir_p(dir) != 0) {
        snprintf(errstr, esz, "%s: %s", dir, strerror(errno));
        return -1;
    }
    snprintf(path, sizeof path, "%s/p%03d-%016llx.snap", dir, p, (unsigned long long)pt->position);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    swriter_t w = {fopen(tmp, "wb"), XXH3_createState(), 0};
    if (!w.f) {
        snprintf(errstr, esz, "%s: %s", tmp, strerror(errno));
        XXH3_freeState(w.h);
        return -1;
    }
    XXH3_64bits_reset(w.h);
    sw(&w, SNAP_MAGIC, 8);
    sw_u32(&w, (uint32_t)p);
    sw_u32(&w, (uint32_t)e->npartitions);
    sw_u64(&w, pt->position);
    sw_u64(&w, now_ms());
    sw_u32(&w, (uint32_t)e->npolls);
    for (int i = 0; i < e->npolls; i++) {
        const poll_conf_t *pc = &e->conf->polls[i];
        ppoll_t *pp = &pt->polls[i];
        sw_str(&w, pc->id);
        sw_u8(&w, (uint8_t)pc->mode);
        sw_u32(&w, (uint32_t)pc->noptions);
        for (int o = 0; o < pc->noptions; o++) {
            sw_str(&w, pc->options[o].id);
            sw_u64(&w, atomic_load_explicit(&pp->counts[o], memory_order_relaxed));
        }
        sw_u64(&w, pp->voters.count);
        if (pp->voters.slots)
            for (size_t s = 0; s <= pp->voters.mask; s++)
                if (pp->voters.slots[s].a) {
                    sw_u64(&w, pp->voters.slots[s].a);
                    sw_u64(&w, pp->voters.slots[s].b);
                }
    }
    uint64_t sum = XXH3_64bits_digest(w.h);
    XXH3_freeState(w.h);
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(sum >> (8 * i));
    if (!w.err && fwrite(b, 1, 8, w.f) != 8)
        w.err = errno ? errno : EIO;
    if (!w.err && fflush(w.f) != 0)
        w.err = errno;
    if (!w.err && fsync(fileno(w.f)) != 0)
        w.err = errno;
    if (fclose(w.f) != 0 && !w.err)
        w.err = errno;
    if (!w.err && rename(tmp, path) != 0)
        w.err = errno;
    if (!w.err && fsync_dir(dir) != 0)
        w.err = errno;
    if (w.err) {
        snprintf(errstr, esz, "%s: %s", path, strerror(w.err));
        unlink(tmp);
        return -1;
    }
    pt->snap_position = pt->position;

    /* Keep the newest SNAP_KEEP of this partition. */
    unsigned long long positions[64];
    int n = list_snapshots(dir, p, positions, 64);
    for (int i = SNAP_KEEP; i < n; i++) {
        snprintf(tmp, sizeof tmp, "%s/p%03d-%016llx.snap", dir, p, positions[i]);
        unlink(tmp);
    }
    return 0;
}

/* ---- loading ---- */

typedef struct {
    const uint8_t *p, *end;
    int bad;
} sreader_t;

static const uint8_t *sr(sreader_t *r, size_t n) {
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *q = r->p;
    r->p += n;
    return q;
}
static uint8_t sr_u8(sreader_t *r) {
    const uint8_t *q = sr(r, 1);
    return q ? q[0] : 0;
}
static uint32_t sr_u32(sreader_t *r) {
    const uint8_t *q = sr(r, 4);
    return q ? (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24
             : 0;
}
static uint64_t sr_u64(sreader_t *r) {
    const uint8_t *q = sr(r, 8);
    uint64_t v = 0;
    if (q)
        for (int i = 7; i >= 0; i--)
            v = (v << 8) | q[i];
    return v;
}

static void partition_reset(engine_t *e, int p) {
    partition_t *pt = &e->parts[p];
    for (int i = 0; i < e->npolls; i++) {
        for (int o = 0; o < e->conf->polls[i].noptions; o++)
            atomic_store(&pt->polls[i].counts[o], 0);
        voters_free(&pt->polls[i].voters);
        voters_init(&pt->polls[i].voters);
    }
    pt->position = 0;
}

/* Loads one file into partition p. Returns 0, or -1 with why set. */
static int load_file(engine_t *e, int p, const char *path, const char **why) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        *why = "unreadable";
        if (fd >= 0)
            close(fd);
        return -1;
    }
    size_t size = (size_t)st.st_size;
    uint8_t *data = xmalloc(size ? size : 1);
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, data + got, size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    int rc = -1;
    sreader_t r = {data, data + (size >= 8 ? size - 8 : 0), 0};
    if (got != size || size < 8 + 8) {
        *why = "truncated";
        goto out;
    }
    sreader_t t = {data + size - 8, data + size, 0};
    if (XXH3_64bits(data, size - 8) != sr_u64(&t)) {
        *why = "checksum mismatch";
        goto out;
    }
    const uint8_t *m = sr(&r, 8);
    if (!m || memcmp(m, SNAP_MAGIC, 8) != 0) {
        *why = "not a tally snapshot";
        goto out;
    }
    if (sr_u32(&r) != (uint32_t)p || sr_u32(&r) != (uint32_t)e->npartitions) {
        *why = "partition layout differs";
        goto out;
    }
    uint64_t position = sr_u64(&r);
    (void)sr_u64(&r); /* created_ms */
    if (sr_u32(&r) != (uint32_t)e->npolls) {
        *why = "config changed (number of polls)";
        goto out;
    }
    partition_reset(e, p);
    partition_t *pt = &e->parts[p];
    for (int k = 0; k < e->npolls && !r.bad; k++) {
        uint8_t idlen = sr_u8(&r);
        const char *id = (const char *)sr(&r, idlen);
        int i = id ? engine_poll_index(e, id, idlen) : -1;
        if (i < 0) {
            *why = "config changed (a poll was added or removed)";
            goto out;
        }
        const poll_conf_t *pc = &e->conf->polls[i];
        if (sr_u8(&r) != (uint8_t)pc->mode) {
            *why = "config changed (a poll's mode)";
            goto out;
        }
        if (sr_u32(&r) != (uint32_t)pc->noptions) {
            *why = "config changed (a poll's options)";
            goto out;
        }
        for (int o = 0; o < pc->noptions && !r.bad; o++) {
            uint8_t olen = sr_u8(&r);
            const char *oid = (const char *)sr(&r, olen);
            /* Voter slots hold option indexes: the order must match too. */
            int oi = oid ? poll_option_index(pc, oid, olen) : -1;
            if (oi != o) {
                *why = "config changed (a poll's options)";
                goto out;
            }
            atomic_store(&pt->polls[i].counts[oi], sr_u64(&r));
        }
        uint64_t nv = sr_u64(&r);
        if (nv > (uint64_t)(r.end - r.p) / 16) {
            *why = "truncated voter table";
            goto out;
        }
        /* Sized for all of them first: see voters_reserve. */
        voters_reserve(&pt->polls[i].voters, (size_t)nv);
        for (uint64_t v = 0; v < nv; v++) {
            voter_slot_t s;
            s.a = sr_u64(&r);
            s.b = sr_u64(&r);
            voters_insert_slot(&pt->polls[i].voters, s);
        }
    }
    if (r.bad || r.p != r.end) {
        *why = "malformed";
        goto out;
    }
    pt->position = position;
    pt->snap_position = position;
    atomic_store(&pt->pos_pub, position);
    rc = 0;
out:
    if (rc != 0)
        partition_reset(e, p);
    free(data);
    return rc;
}

int engine_snapshot_load(engine_t *e, const char *dir, char *errstr, size_t esz) {
    (void)errstr;
    (void)esz;
    int resumed = 0;
    for (int p = 0; p < e->npartitions; p++) {
        unsigned long long positions[64];
        int n = list_snapshots(dir, p, positions, 64);
        int ok = 0;
        for (int i = 0; i < n && !ok; i++) {
            char path[4200];
            const char *why = "";
            snprintf(path, sizeof path, "%s/p%03d-%016llx.snap", dir, p, positions[i]);
            if (load_file(e, p, path, &why) == 0)
                ok = 1;
            else
                log_warn("snapshot %s not used: %s", path, why);
        }
        if (ok)
            resumed++;
        else if (n > 0)
            log_warn("partition %d: no usable snapshot; recounting it from the start of the log",
                     p);
    }
    return resumed;
}
