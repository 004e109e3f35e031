/* Engine internals shared by engine.c and snapshot.c. */
#ifndef TALLY_ENGINE_INT_H
#define TALLY_ENGINE_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "engine/engine.h"
#include "engine/idem.h"
#include "engine/series.h"
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

typedef struct {
    _Atomic uint64_t *counts; /* [noptions], written by the partition's worker */
    voters_t voters;          /* empty in unlimited mode */
    series_t series;          /* per-minute changes of counts */
} ppoll_t;

typedef struct {
    uint64_t position;          /* next record to read; writer only */
    _Atomic uint64_t pos_pub;   /* position, for readers */
    _Atomic uint64_t seq;       /* odd while a batch is being applied */
    ppoll_t *polls;             /* [npolls] */
    uint8_t *touched;           /* [npolls]: changed in the current batch */
    uint64_t snap_position;     /* position of the last snapshot written */
    _Atomic uint64_t applied, skipped, after_cutoff, retried;
    _Atomic uint64_t voters_pub, bytes_pub; /* voter tables, as of the last batch */
    idem_t idem;                            /* idempotency keys held */
    _Atomic uint64_t idem_pub, idem_bytes_pub, series_bytes_pub; /* as of the last batch */
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
    int npolls;
    int npartitions;
    idmap_t poll_map;
    idmap_t *opt_maps;          /* [npolls] */
    uint64_t *poll_seeds;       /* [npolls] */
    _Atomic uint64_t *gens;     /* [npolls] */
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

#endif
