/* Engine internals shared by engine.c and snapshot.c. */
#ifndef TALLY_ENGINE_INT_H
#define TALLY_ENGINE_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "engine/engine.h"
#include "common/catalog.h"
#include "engine/voters.h"

/* String id -> index, open addressing; built once from the config. Ids
 * point into the config. An id of up to 8 bytes is also kept packed into one
 * word (engine.c id_pack), which with its length identifies it: most
 * lookups hash and compare one word, with no call and no strlen. */
typedef struct {
    const char *id; /* NULL: empty */
    size_t len;
    uint64_t packed; /* len <= 8 */
    int index;
} idmap_slot_t;

typedef struct {
    idmap_slot_t *slots;
    size_t mask;
} idmap_t;

/* A poll's counts in one partition: a fixed array, replaced by a bigger copy
 * when options are appended (readers may hold the old one: it is kept until
 * the engine is freed; options are added rarely and the copies at most
 * double the array). */
typedef struct {
    uint32_t n;
    _Atomic uint64_t c[]; /* [n], written by the partition's worker */
} counts_t;

/* One poll in one partition: its counts, voters and the partition's view of
 * the poll's history. Fields marked "readers" are read by other threads. */
typedef struct {
    _Atomic(counts_t *) counts;  /* readers */
    voters_t voters;             /* empty in unlimited mode */
    catalog_entry_t *view;       /* the definition this partition applied, NULL: none yet */
    catalog_entry_t *conf;       /* the config's definition (v1 votes), NULL: not a config poll */
    const poll_def_t *eff;       /* view's def, else conf's: options and mode */
    uint64_t seed;               /* record_poll_seed of the id: voter keys */
    idmap_t opts;                /* eff's option ids -> index */
    _Atomic int final;           /* readers: this partition applied the FINAL */
    _Atomic uint64_t final_pos;  /* readers: position just after the FINAL record */
    uint64_t final_seq, final_at;
    _Atomic uint64_t late, early; /* readers */
    uint8_t touched;             /* changed in the current batch */
    uint8_t present;             /* in use (known to this partition) */
} ppoll_t;

/* Polls are found by a global index (engine-wide, assigned in the order the
 * polls are first seen) in chunks of POLL_CHUNK allocated on first use, so
 * that adding polls never moves what a reader holds. */
#define POLL_CHUNK 256
#define POLL_CHUNKS 256
#define ENGINE_MAX_POLLS (POLL_CHUNK * POLL_CHUNKS)

typedef struct {
    uint64_t position;          /* next record to read; writer only */
    _Atomic uint64_t pos_pub;   /* position, for readers */
    _Atomic uint64_t seq;       /* odd while a batch is being applied */
    _Atomic(ppoll_t *) chunks[POLL_CHUNKS];
    int *known;                 /* global indexes of present polls; writer only */
    int nknown, known_cap;
    idmap_t pmap;               /* poll id -> global index, for the polls present; writer only */
    size_t pmap_count;
    counts_t **retired;         /* replaced counts arrays */
    int nretired;
    _Atomic uint64_t applied_seq; /* highest control seq applied */
    uint64_t snap_position;     /* position of the last snapshot written */
    _Atomic uint64_t applied, skipped, after_cutoff, late, early;
    _Atomic uint64_t voters_pub, bytes_pub; /* voter tables, as of the last batch */
} partition_t;

typedef struct {
    engine_t *e;
    int id;
    pthread_t thread;
    int *parts;
    int nparts;
} worker_t;

struct engine_s {
    const tally_config_t *conf;
    _Atomic int npolls;         /* global indexes in use */
    int npartitions;
    /* Under cat_mu: the global index, and the engine's catalog (the view
     * with the highest seq, over the config's polls). */
    pthread_mutex_t cat_mu;
    idmap_t poll_map;           /* id -> global index (ids in gids) */
    size_t poll_map_count;
    char **gids;                /* [ENGINE_MAX_POLLS] */
    catalog_entry_t **conf_entries; /* [conf->npolls] */
    catalog_live_t *catalog;
    _Atomic uint64_t *gens;     /* [ENGINE_MAX_POLLS] */
    partition_t *parts;
    uint64_t until_ms;
    char log_id[VLOG_ID_MAX]; /* of the log snapshots must come from */
    int log_id_legacy;        /* snapshots without an id are used too */

    engine_run_opts_t run;
    worker_t *workers;
    int nworkers;
    _Atomic int stopping;
    _Atomic int failed;
    pthread_mutex_t err_mu;
    char err[512];
};

/* Empties partition p but for the config's polls. engine.c */
void engine_partition_reset_int(engine_t *e, int p);
/* Partition p's slot of global poll gi, made present (snapshot loading). */
ppoll_t *engine_ppoll_add_int(engine_t *e, int p, int gi);
ppoll_t *engine_ppoll_get_int(const partition_t *pt, int gi);
void engine_ppoll_set_view_int(engine_t *e, int p, ppoll_t *pp, catalog_entry_t *view);
int engine_global_index_int(engine_t *e, const char *id, size_t len);

#endif
