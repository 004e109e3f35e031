/* Engine snapshots: one file per partition, `pNNN-<position>.snap` in
 * engine.snapshot_dir, written by the partition's own worker between batches
 * (so the state and the position agree), atomically (temp file, fsync,
 * rename, fsync of the directory) and checksummed.
 *
 * Layout (TLYSNAP4, written since polls became live objects), little-endian:
 *   "TLYSNAP4" u32 partition u32 npartitions u64 position u64 created_ms
 *   u8 idlen log_id
 *   u64 applied_seq          the highest control seq the partition applied
 *   u32 npolls, then per poll the partition knows (config polls and polls
 *   its history defined):
 *     u8 idlen id  u8 flags (SNAP_F_VIEW: defined by the history,
 *       SNAP_F_FINAL: its FINAL applied)
 *     [VIEW]  u64 def_seq u32 body_len body: the DEFINE's canonical JSON
 *     [FINAL] u64 final_seq u64 final_at u64 final_pos
 *     u8 mode u32 noptions, per option: u8 idlen id u64 count
 *     u64 late u64 early
 *     u64 nvoters, then nvoters 16-byte voter slots
 *   sections, each: u32 tag u64 len, then len bytes; tag 0 (len 0) ends
 *     them. A tag this tally does not know refuses the snapshot (its state
 *     would be lost: the partition is recounted). Modules with per-partition
 *     state add a tag in snap_tag_t and a case in save_sections and
 *     load_section (e.g. idempotency tables, per-minute series).
 *   u64 XXH3-64 of everything before it
 *
 * The definitions travel in the snapshot, so adding polls or options at
 * run time never invalidates one; the config is compared only for the
 * polls the history has not defined (a v1 log's, or a config poll before
 * its DEFINE): same polls, modes and options, else the partition is
 * recounted from the log. A config that disagrees with the history is
 * refused at start (cmd_run.c), not here.
 *
 * TLYSNAP3 (up to the lifecycle: npolls then per poll id, mode, options
 * with counts, voters; no applied_seq, no sections) and TLYSNAP2 (the same
 * without log_id) are still read: they hold config polls only and must
 * match the config exactly.
 *
 * A snapshot is used only if it was taken from the very log being read
 * (its log id, see vlog_id: a position means nothing in another byte
 * layout, e.g. a salvaged log, another log.dir) and matches the config
 * exactly (same polls, modes and options): otherwise the partition is
 * recounted from the log, which is always exact. TLYSNAP2 (the same without
 * log_id, written by tally before log ids) is still read, and used only
 * where the log's id is legacy too (vlog_id_legacy): a log of that older
 * tally, or Kafka. The two newest snapshots of a partition are kept so
 * that a damaged newest one falls back to its predecessor.
 *
 * Loading is linear in the voters: each table is sized for its count before
 * the slots go in (see voters_reserve), the file is mapped rather than
 * copied, and partitions load side by side. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/endian.h"
#include "common/ids.h"
#include "common/util.h"
#include "engine/engine_int.h"

/* 2: voter keys are record_poll_voter_key(). A TLYSNAP1 file holds keys of
 * another hash: mixing them with new ones would count a voter twice, so such
 * a snapshot is not used and its partition is recounted from the log. */
#define SNAP_MAGIC_V2 "TLYSNAP2"
/* 3: the log id after the header. */
#define SNAP_MAGIC_V3 "TLYSNAP3"
/* 4: catalog views and sections. */
#define SNAP_MAGIC "TLYSNAP4"
enum { SNAP_F_VIEW = 1, SNAP_F_FINAL = 2 };
/* Section tags after the polls. */
typedef enum { SNAP_TAG_END = 0 } snap_tag_t;
#define SNAP_KEEP 2
/* magic, partition, npartitions, position, created_ms, idlen */
#define SNAP_HDR_FIXED (8 + 4 + 4 + 8 + 8)
#define SNAP_HDR_MAX (SNAP_HDR_FIXED + 1 + 255)

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
    uint8_t b[4];
    le_put32(b, v);
    sw(w, b, 4);
}
static void sw_u64(swriter_t *w, uint64_t v) {
    uint8_t b[8];
    le_put64(b, v);
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

/* The table's voters in table order, some thousands a write. */
static void sw_slots(swriter_t *w, const voters_t *v) {
    enum { CHUNK_SLOTS = 4096 };
    uint8_t buf[CHUNK_SLOTS * 16];
    size_t n = 0;
    for (size_t s = 0; v->slots && s <= v->mask; s++) {
        if (!v->slots[s].a)
            continue;
        le_put64(buf + n * 16, v->slots[s].a);
        le_put64(buf + n * 16 + 8, v->slots[s].b);
        if (++n == CHUNK_SLOTS) {
            sw(w, buf, n * 16);
            n = 0;
        }
    }
    sw(w, buf, n * 16);
}

/* The tagged sections after the polls; the last one is SNAP_TAG_END. */
static void save_sections(engine_t *e, int p, swriter_t *w) {
    (void)e;
    (void)p;
    sw_u32(w, SNAP_TAG_END);
    sw_u64(w, 0);
}

tally_err_t engine_snapshot_save(engine_t *e, int p, const char *dir, char *errstr, size_t esz) {
    partition_t *pt = &e->parts[p];
    char path[4200], tmp[4300];
    if (mkdir_p(dir) != 0) {
        snprintf(errstr, esz, "%s: %s", dir, strerror(errno));
        return TALLY_ERR_IO;
    }
    snprintf(path, sizeof path, "%s/p%03d-%016llx.snap", dir, p, (unsigned long long)pt->position);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    swriter_t w = {fopen(tmp, "wb"), XXH3_createState(), 0};
    if (!w.f) {
        snprintf(errstr, esz, "%s: %s", tmp, strerror(errno));
        XXH3_freeState(w.h);
        return TALLY_ERR_IO;
    }
    XXH3_64bits_reset(w.h);
    sw(&w, SNAP_MAGIC, 8);
    sw_u32(&w, (uint32_t)p);
    sw_u32(&w, (uint32_t)e->npartitions);
    sw_u64(&w, pt->position);
    sw_u64(&w, now_ms());
    sw_str(&w, e->log_id);
    sw_u64(&w, atomic_load(&pt->applied_seq));
    sw_u32(&w, (uint32_t)pt->nknown);
    for (int k = 0; k < pt->nknown; k++) {
        ppoll_t *pp = engine_ppoll_get_int(pt, pt->known[k]);
        const poll_def_t *d = pp->eff;
        int final = atomic_load_explicit(&pp->final, memory_order_relaxed);
        sw_str(&w, e->gids[pt->known[k]]);
        sw_u8(&w, (uint8_t)((pp->view ? SNAP_F_VIEW : 0) | (final ? SNAP_F_FINAL : 0)));
        if (pp->view) {
            char *body = poll_def_to_json(pp->view->def);
            sw_u64(&w, pp->view->def_seq);
            sw_u32(&w, (uint32_t)strlen(body));
            sw(&w, body, strlen(body));
            free(body);
        }
        if (final) {
            sw_u64(&w, pp->final_seq);
            sw_u64(&w, pp->final_at);
            sw_u64(&w, atomic_load_explicit(&pp->final_pos, memory_order_relaxed));
        }
        counts_t *cnt = atomic_load_explicit(&pp->counts, memory_order_relaxed);
        sw_u8(&w, (uint8_t)d->mode);
        sw_u32(&w, (uint32_t)d->noptions);
        for (int o = 0; o < d->noptions; o++) {
            sw_str(&w, d->options[o].id);
            sw_u64(&w, atomic_load_explicit(&cnt->c[o], memory_order_relaxed));
        }
        sw_u64(&w, atomic_load_explicit(&pp->late, memory_order_relaxed));
        sw_u64(&w, atomic_load_explicit(&pp->early, memory_order_relaxed));
        sw_u64(&w, pp->voters.count);
        sw_slots(&w, &pp->voters);
    }
    save_sections(e, p, &w);
    uint64_t sum = XXH3_64bits_digest(w.h);
    XXH3_freeState(w.h);
    uint8_t b[8];
    le_put64(b, sum);
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
        return TALLY_ERR_IO;
    }
    pt->snap_position = pt->position;

    /* Keep the newest SNAP_KEEP of this partition. */
    unsigned long long positions[64];
    int n = list_snapshots(dir, p, positions, 64);
    for (int i = SNAP_KEEP; i < n; i++) {
        snprintf(tmp, sizeof tmp, "%s/p%03d-%016llx.snap", dir, p, positions[i]);
        unlink(tmp);
    }
    return TALLY_OK;
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
    return q ? le_get32(q) : 0;
}
static uint64_t sr_u64(sreader_t *r) {
    const uint8_t *q = sr(r, 8);
    return q ? le_get64(q) : 0;
}

static void partition_reset(engine_t *e, int p) { engine_partition_reset_int(e, p); }

/* Maps path read-only, whole. A snapshot is never rewritten in place (a
 * save renames a new file over the old name), so the mapping cannot shrink
 * under the reader. Mapping instead of reading saves a copy and the
 * zeroing of a buffer as big as the file: at 10M voters, 160 MB. */
static tally_err_t map_file(const char *path, const uint8_t **data, size_t *size, char *errstr,
                            size_t esz) {
    tally_err_t err = TALLY_OK;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    *data = NULL;
    *size = 0;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(errstr, esz, "unreadable: %s", strerror(errno));
        err = TALLY_ERR_IO;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(errstr, esz, "not a regular file");
        err = TALLY_ERR_CORRUPT;
        goto out;
    }
    *size = (size_t)st.st_size;
    if (*size == 0)
        goto out;
    void *m = mmap(NULL, *size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    if (m == MAP_FAILED) {
        snprintf(errstr, esz, "cannot map: %s", strerror(errno));
        err = TALLY_ERR_IO;
        *size = 0;
        goto out;
    }
    (void)madvise(m, *size, MADV_SEQUENTIAL);
    *data = m;
out:
    if (fd >= 0)
        close(fd);
    return err;
}

/* Why a snapshot is not used: its class and a few words. */
static tally_err_t refuse(tally_err_t err, const char *why, char *errstr, size_t esz) {
    snprintf(errstr, esz, "%s", why);
    return err;
}

/* A TLYSNAP2/3 body after the header, into partition p: the config's polls,
 * exactly. */
static tally_err_t load_polls_v3(engine_t *e, int p, sreader_t *r, char *errstr, size_t esz) {
    partition_t *pt = &e->parts[p];
    if (sr_u32(r) != (uint32_t)e->conf->npolls)
        return refuse(TALLY_ERR_STATE, "config changed (number of polls)", errstr, esz);
    for (int k = 0; k < e->conf->npolls && !r->bad; k++) {
        uint8_t idlen = sr_u8(r);
        const char *id = (const char *)sr(r, idlen);
        if (!id)
            break;
        const poll_conf_t *pc = config_poll(e->conf, id, idlen);
        if (!pc)
            return refuse(TALLY_ERR_STATE, "config changed (a poll was added or removed)", errstr,
                          esz);
        int i = (int)(pc - e->conf->polls);
        ppoll_t *pp = engine_ppoll_get_int(pt, i);
        counts_t *cnt = atomic_load(&pp->counts);
        if (sr_u8(r) != (uint8_t)pc->mode)
            return refuse(TALLY_ERR_STATE, "config changed (a poll's mode)", errstr, esz);
        if (sr_u32(r) != (uint32_t)pc->noptions)
            return refuse(TALLY_ERR_STATE, "config changed (a poll's options)", errstr, esz);
        for (int o = 0; o < pc->noptions && !r->bad; o++) {
            uint8_t olen = sr_u8(r);
            const char *oid = (const char *)sr(r, olen);
            /* Voter slots hold option indexes: the order must match too. */
            int oi = oid ? poll_option_index(pc, oid, olen) : -1;
            if (!oid)
                break;
            if (oi != o)
                return refuse(TALLY_ERR_STATE, "config changed (a poll's options)", errstr, esz);
            atomic_store(&cnt->c[oi], sr_u64(r));
        }
        uint64_t nv = sr_u64(r);
        if (r->bad || nv > (uint64_t)(r->end - r->p) / 16)
            return refuse(TALLY_ERR_CORRUPT, "truncated voter table", errstr, esz);
        const uint8_t *q = sr(r, (size_t)nv * 16);
        /* Sized for all of them first: see voters_reserve. */
        if (voters_insert_slots(&pp->voters, q, (size_t)nv, pc->noptions) != nv)
            return refuse(TALLY_ERR_CORRUPT, "a voter slot is malformed", errstr, esz);
    }
    if (r->bad || r->p != r->end)
        return refuse(TALLY_ERR_CORRUPT, "malformed", errstr, esz);
    return TALLY_OK;
}

/* One tagged section of partition p's snapshot. */
static tally_err_t load_section(engine_t *e, int p, uint32_t tag, const uint8_t *data,
                                uint64_t len, char *errstr, size_t esz) {
    (void)e;
    (void)p;
    (void)data;
    (void)len;
    snprintf(errstr, esz, "section %u unknown to this tally (a newer one wrote it)", tag);
    return TALLY_ERR_STATE;
}

/* A TLYSNAP4 body after the header, into partition p. */
static tally_err_t load_polls_v4(engine_t *e, int p, sreader_t *r, char *errstr, size_t esz) {
    partition_t *pt = &e->parts[p];
    tally_err_t err = TALLY_OK;
    uint8_t *seen_conf = xcalloc((size_t)e->conf->npolls + 1, 1);
    atomic_store(&pt->applied_seq, sr_u64(r));
    uint32_t n = sr_u32(r);
    for (uint32_t k = 0; k < n && !r->bad; k++) {
        uint8_t idlen = sr_u8(r);
        const char *id = (const char *)sr(r, idlen);
        uint8_t flags = sr_u8(r);
        if (r->bad)
            break;
        if (!id_valid(id, idlen) || (flags & ~(SNAP_F_VIEW | SNAP_F_FINAL)) ||
            (flags & SNAP_F_FINAL && !(flags & SNAP_F_VIEW))) {
            err = refuse(TALLY_ERR_CORRUPT, "malformed poll", errstr, esz);
            goto out;
        }
        /* A poll the history did not define must be the config's: else no
         * index is made for it. */
        const poll_conf_t *pc = config_poll(e->conf, id, idlen);
        if (!(flags & SNAP_F_VIEW) && !pc) {
            err = refuse(TALLY_ERR_STATE, "config changed (a poll was removed)", errstr, esz);
            goto out;
        }
        int gi = pc ? (int)(pc - e->conf->polls) : engine_global_index_int(e, id, idlen);
        if (gi < 0) {
            err = refuse(TALLY_ERR_STATE, "too many polls", errstr, esz);
            goto out;
        }
        if (gi < e->conf->npolls) {
            if (seen_conf[gi]) {
                err = refuse(TALLY_ERR_CORRUPT, "a poll is listed twice", errstr, esz);
                goto out;
            }
            seen_conf[gi] = 1;
        } else if (!(flags & SNAP_F_VIEW)) {
            err = refuse(TALLY_ERR_STATE, "config changed (a poll was removed)", errstr, esz);
            goto out;
        }
        ppoll_t *pp = engine_ppoll_add_int(e, p, gi);
        if (flags & SNAP_F_VIEW) {
            uint64_t def_seq = sr_u64(r);
            uint32_t blen = sr_u32(r);
            const char *body = (const char *)sr(r, blen);
            poll_def_t *d = NULL;
            catalog_error_t cerr;
            if (!body || poll_def_from_json(body, blen, NULL, &d, &cerr) != TALLY_OK ||
                strlen(d->id) != idlen || memcmp(d->id, id, idlen)) {
                poll_def_free(d);
                err = refuse(TALLY_ERR_CORRUPT, "malformed poll definition", errstr, esz);
                goto out;
            }
            if (flags & SNAP_F_FINAL) {
                pp->final_seq = sr_u64(r);
                pp->final_at = sr_u64(r);
                atomic_store(&pp->final_pos, sr_u64(r));
                atomic_store(&pp->final, 1);
            }
            engine_ppoll_set_view_int(e, p, pp, catalog_entry_new(d, def_seq));
        }
        const poll_def_t *d = pp->eff;
        uint8_t mode = sr_u8(r);
        uint32_t nopt = sr_u32(r);
        int ours = (flags & SNAP_F_VIEW) != 0;
        if (r->bad)
            break;
        if (mode != (uint8_t)d->mode || nopt != (uint32_t)d->noptions) {
            err = ours ? refuse(TALLY_ERR_CORRUPT, "a poll's counts disagree with its definition",
                                errstr, esz)
                       : refuse(TALLY_ERR_STATE, "config changed (a poll's mode or options)",
                                errstr, esz);
            goto out;
        }
        counts_t *cnt = atomic_load(&pp->counts);
        for (uint32_t o = 0; o < nopt && !r->bad; o++) {
            uint8_t olen = sr_u8(r);
            const char *oid = (const char *)sr(r, olen);
            if (!oid)
                break;
            /* Voter slots hold option indexes: the order must match too. */
            if (strlen(d->options[o].id) != olen || memcmp(d->options[o].id, oid, olen)) {
                err = ours ? refuse(TALLY_ERR_CORRUPT, "a poll's options disagree", errstr, esz)
                           : refuse(TALLY_ERR_STATE, "config changed (a poll's options)", errstr,
                                    esz);
                goto out;
            }
            atomic_store(&cnt->c[o], sr_u64(r));
        }
        atomic_store(&pp->late, sr_u64(r));
        atomic_store(&pp->early, sr_u64(r));
        uint64_t nv = sr_u64(r);
        if (r->bad || nv > (uint64_t)(r->end - r->p) / 16) {
            err = refuse(TALLY_ERR_CORRUPT, "truncated voter table", errstr, esz);
            goto out;
        }
        const uint8_t *q = sr(r, (size_t)nv * 16);
        /* Capped mode keeps a count of votes, up to max_votes, in the slot. */
        int limit = d->mode == MODE_CAPPED ? (int)d->max_votes + 1 : d->noptions;
        if (voters_insert_slots(&pp->voters, q, (size_t)nv, limit) != nv) {
            err = refuse(TALLY_ERR_CORRUPT, "a voter slot is malformed", errstr, esz);
            goto out;
        }
    }
    for (int i = 0; i < e->conf->npolls && !r->bad; i++)
        if (!seen_conf[i]) {
            err = refuse(TALLY_ERR_STATE, "config changed (a poll was added)", errstr, esz);
            goto out;
        }
    for (;;) {
        uint32_t tag = sr_u32(r);
        uint64_t len = sr_u64(r);
        if (r->bad || len > (uint64_t)(r->end - r->p))
            break;
        const uint8_t *data = sr(r, (size_t)len);
        if (tag == SNAP_TAG_END)
            break;
        if ((err = load_section(e, p, tag, data, len, errstr, esz)) != TALLY_OK)
            goto out;
    }
    if (r->bad || r->p != r->end)
        err = refuse(TALLY_ERR_CORRUPT, "malformed", errstr, esz);
out:
    free(seen_conf);
    return err;
}

/* n bytes at off, retrying short reads: n, or less at EOF or an error. */
static ssize_t snap_pread(int fd, void *p, size_t n, off_t off) {
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, (uint8_t *)p + got, n - got, off + (off_t)got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    return (ssize_t)got;
}

/* The header at r (magic through log id) into h. */
static tally_err_t header_parse(sreader_t *r, snap_header_t *h, char *errstr, size_t esz) {
    memset(h, 0, sizeof *h);
    const uint8_t *m = sr(r, 8);
    if (m && !memcmp(m, SNAP_MAGIC, 8))
        h->version = 4;
    else if (m && !memcmp(m, SNAP_MAGIC_V3, 8))
        h->version = 3;
    else if (m && !memcmp(m, SNAP_MAGIC_V2, 8))
        h->version = 2;
    else
        return refuse(TALLY_ERR_CORRUPT, "not a tally snapshot", errstr, esz);
    h->partition = sr_u32(r);
    h->npartitions = sr_u32(r);
    h->position = sr_u64(r);
    h->created_ms = sr_u64(r);
    if (h->version >= 3) {
        uint8_t n = sr_u8(r);
        const uint8_t *id = sr(r, n);
        if (id && n >= sizeof h->log_id)
            return refuse(TALLY_ERR_CORRUPT, "log id too long", errstr, esz);
        if (id)
            memcpy(h->log_id, id, n);
        if (id && memchr(h->log_id, '\0', n))
            return refuse(TALLY_ERR_CORRUPT, "malformed log id", errstr, esz);
    }
    if (r->bad)
        return refuse(TALLY_ERR_CORRUPT, "truncated header", errstr, esz);
    return TALLY_OK;
}

void engine_set_log_id(engine_t *e, const char *log_id, int accept_unidentified) {
    snprintf(e->log_id, sizeof e->log_id, "%s", log_id ? log_id : "");
    e->log_id_legacy = accept_unidentified;
}

tally_err_t engine_snapshot_header_check(const engine_t *e, int p, const snap_header_t *h,
                                         char *errstr, size_t esz) {
    if (h->partition != (uint32_t)p || h->npartitions != (uint32_t)e->npartitions)
        return refuse(TALLY_ERR_STATE, "partition layout differs", errstr, esz);
    if (h->version < 3 && !e->log_id_legacy) {
        snprintf(errstr, esz,
                 "written before log ids, and this log (%s) is not one of that tally: its "
                 "positions may belong to another log",
                 e->log_id[0] ? e->log_id : "no id");
        return TALLY_ERR_STATE;
    }
    if (h->version >= 3 && strcmp(h->log_id, e->log_id) != 0) {
        snprintf(errstr, esz,
                 "taken from another log (log id %s, this log is %s: salvaged, swapped or "
                 "replaced); its positions do not apply here",
                 h->log_id, e->log_id[0] ? e->log_id : "without an id");
        return TALLY_ERR_STATE;
    }
    return TALLY_OK;
}

tally_err_t engine_snapshot_read_header(const char *path, int verify, snap_header_t *h,
                                        char *errstr, size_t esz) {
    enum { CHUNK = 1 << 16 };
    tally_err_t err = TALLY_OK;
    struct stat st;
    uint8_t *buf = NULL;
    XXH3_state_t *xs = NULL;
    memset(h, 0, sizeof *h);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(errstr, esz, "unreadable: %s", strerror(errno));
        err = TALLY_ERR_IO;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        err = refuse(TALLY_ERR_CORRUPT, "not a regular file", errstr, esz);
        goto out;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size < 8 + 8) {
        err = refuse(TALLY_ERR_CORRUPT, "truncated", errstr, esz);
        goto out;
    }
    buf = xmalloc(CHUNK);
    /* The header, from the bytes before the checksum. */
    size_t want = size - 8 < SNAP_HDR_MAX ? (size_t)(size - 8) : SNAP_HDR_MAX;
    if (snap_pread(fd, buf, want, 0) != (ssize_t)want) {
        snprintf(errstr, esz, "unreadable: %s", errno ? strerror(errno) : "short read");
        err = TALLY_ERR_IO;
        goto out;
    }
    sreader_t r = {buf, buf + want, 0};
    if ((err = header_parse(&r, h, errstr, esz)) != TALLY_OK || !verify)
        goto out;
    xs = XXH3_createState();
    XXH3_64bits_reset(xs);
    for (uint64_t at = 0; at < size - 8;) {
        size_t n = size - 8 - at < CHUNK ? (size_t)(size - 8 - at) : CHUNK;
        if (snap_pread(fd, buf, n, (off_t)at) != (ssize_t)n) {
            snprintf(errstr, esz, "unreadable: %s", errno ? strerror(errno) : "short read");
            err = TALLY_ERR_IO;
            goto out;
        }
        XXH3_64bits_update(xs, buf, n);
        at += n;
    }
    uint8_t sum[8];
    if (snap_pread(fd, sum, 8, (off_t)(size - 8)) != 8) {
        snprintf(errstr, esz, "unreadable: %s", errno ? strerror(errno) : "short read");
        err = TALLY_ERR_IO;
        goto out;
    }
    if (XXH3_64bits_digest(xs) != le_get64(sum))
        err = refuse(TALLY_ERR_CORRUPT, "checksum mismatch", errstr, esz);
out:
    if (err != TALLY_OK)
        memset(h, 0, sizeof *h);
    XXH3_freeState(xs);
    free(buf);
    if (fd >= 0)
        close(fd);
    return err;
}

void engine_snapshot_positions(const engine_t *e, const char *dir, uint64_t *positions) {
    for (int p = 0; p < e->npartitions; p++) {
        unsigned long long found[64];
        int n = list_snapshots(dir, p, found, 64);
        positions[p] = 0;
        for (int i = 0; i < n; i++) {
            char path[4200], why[256];
            snap_header_t h;
            snprintf(path, sizeof path, "%s/p%03d-%016llx.snap", dir, p, found[i]);
            if (engine_snapshot_read_header(path, 1, &h, why, sizeof why) == TALLY_OK &&
                engine_snapshot_header_check(e, p, &h, why, sizeof why) == TALLY_OK) {
                positions[p] = h.position;
                break;
            }
        }
    }
}

tally_err_t engine_snapshot_load_file(engine_t *e, int p, const char *path, char *errstr,
                                      size_t esz) {
    const uint8_t *data;
    size_t size;
    tally_err_t err = map_file(path, &data, &size, errstr, esz);
    if (err != TALLY_OK)
        return err;
    partition_reset(e, p);
    if (size < 8 + 8) { /* an empty file maps to no address at all */
        err = refuse(TALLY_ERR_CORRUPT, "truncated", errstr, esz);
        goto out;
    }
    sreader_t r = {data, data + size - 8, 0};
    if (XXH3_64bits(data, size - 8) != le_get64(data + size - 8)) {
        err = refuse(TALLY_ERR_CORRUPT, "checksum mismatch", errstr, esz);
        goto out;
    }
    snap_header_t h;
    if ((err = header_parse(&r, &h, errstr, esz)) != TALLY_OK ||
        (err = engine_snapshot_header_check(e, p, &h, errstr, esz)) != TALLY_OK)
        goto out;
    uint64_t position = h.position;
    err = h.version >= 4 ? load_polls_v4(e, p, &r, errstr, esz)
                         : load_polls_v3(e, p, &r, errstr, esz);
    if (err != TALLY_OK)
        goto out;
    partition_t *pt = &e->parts[p];
    pt->position = position;
    pt->snap_position = position;
    atomic_store(&pt->pos_pub, position);
    uint64_t voters = 0, bytes = 0;
    for (int k = 0; k < pt->nknown; k++) {
        ppoll_t *pp = engine_ppoll_get_int(pt, pt->known[k]);
        voters += pp->voters.count;
        bytes += voters_bytes(&pp->voters);
    }
    atomic_store(&pt->voters_pub, voters);
    atomic_store(&pt->bytes_pub, bytes);
out:
    if (err != TALLY_OK)
        partition_reset(e, p);
    if (data)
        munmap((void *)data, size);
    return err;
}

/* Whether name is a temp file of engine_snapshot_save: pNNN-<16 hex>.snap.tmp */
static int is_snapshot_tmp(const char *name) {
    int part, len = 0;
    unsigned long long pos;
    return strlen(name) == 1 + 3 + 1 + 16 + 9 &&
           sscanf(name, "p%3d-%16llx.snap.tmp%n", &part, &pos, &len) == 2 &&
           len == (int)strlen(name);
}

/* Temp files of saves that a crash interrupted: never renamed, never read,
 * but as big as the state. Removed before any worker (the only writer of
 * temp files) starts. */
static void remove_stale_tmps(DIR *d, const char *dir) {
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d))) {
        if (!is_snapshot_tmp(de->d_name))
            continue;
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (unlink(path) == 0)
            n++;
        else
            log_warn("snapshot: cannot remove stale %s: %s", path, strerror(errno));
    }
    if (n)
        log_info("snapshot: removed %d temp file%s left by an interrupted save in %s", n,
                 n == 1 ? "" : "s", dir);
}

/* One loader thread: partitions first, first + step, ... */
typedef struct {
    engine_t *e;
    const char *dir;
    int first, step;
    int resumed;
    pthread_t th;
} loader_t;

static void *load_partitions(void *arg) {
    loader_t *ld = arg;
    engine_t *e = ld->e;
    for (int p = ld->first; p < e->npartitions; p += ld->step) {
        unsigned long long positions[64];
        int n = list_snapshots(ld->dir, p, positions, 64);
        int ok = 0;
        for (int i = 0; i < n && !ok; i++) {
            char path[4200], why[256];
            snprintf(path, sizeof path, "%s/p%03d-%016llx.snap", ld->dir, p, positions[i]);
            tally_err_t err = engine_snapshot_load_file(e, p, path, why, sizeof why);
            if (err == TALLY_OK)
                ok = 1;
            else
                log_warn("snapshot %s not used (%s): %s", path, tally_err2str(err), why);
        }
        if (ok)
            ld->resumed++;
        else if (n > 0)
            log_warn("partition %d: no usable snapshot; recounting it from the start of the log",
                     p);
    }
    return NULL;
}

tally_err_t engine_snapshot_load(engine_t *e, const char *dir, int *resumed, char *errstr,
                                 size_t esz) {
    if (resumed)
        *resumed = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT)
            return TALLY_OK; /* a fresh start */
        snprintf(errstr, esz, "engine.snapshot_dir %s: %s", dir, strerror(errno));
        return errno == ENOTDIR ? TALLY_ERR_CONFIG : TALLY_ERR_IO;
    }
    remove_stale_tmps(d, dir);
    closedir(d);
    /* Partitions are independent: load them side by side, as many at once
     * as there will be engine threads. */
    int t = e->conf->engine_threads < 1 ? 1 : e->conf->engine_threads;
    if (t > e->npartitions)
        t = e->npartitions;
    loader_t *ld = xcalloc((size_t)t, sizeof *ld);
    int *started = xcalloc((size_t)t, sizeof *started);
    for (int i = 0; i < t; i++)
        ld[i] = (loader_t){.e = e, .dir = dir, .first = i, .step = t};
    for (int i = 1; i < t; i++)
        started[i] = pthread_create(&ld[i].th, NULL, load_partitions, &ld[i]) == 0;
    /* This thread takes loader 0, and any loader whose thread did not start. */
    load_partitions(&ld[0]);
    for (int i = 1; i < t; i++) {
        if (started[i])
            pthread_join(ld[i].th, NULL);
        else
            load_partitions(&ld[i]);
    }
    free(started);
    for (int i = 0; i < t && resumed; i++)
        *resumed += ld[i].resumed;
    free(ld);
    return TALLY_OK;
}
