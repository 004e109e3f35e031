/* tally_err_t: the one error type carried across module boundaries (log,
 * engine, config, publisher), modelled on librdkafka's rd_kafka_resp_err_t.
 *
 * A function that can fail returns a tally_err_t (TALLY_OK on success) and
 * fills an `errstr, errstr_size` buffer with the human message; the class of
 * the failure travels in the return value, never through errno. The command
 * line maps a class to an exit status in one place, tally_err_exit(). */
#ifndef TALLY_ERR_H
#define TALLY_ERR_H

typedef enum {
    TALLY_OK = 0,
    TALLY_ERR_CONFIG,  /* bad configuration or usage: the operator must fix it */
    TALLY_ERR_IO,      /* the disk or the system refused (EIO, ENOSPC, EMFILE...) */
    TALLY_ERR_CORRUPT, /* stored data failed its checks: refuse, never guess */
    TALLY_ERR_STATE,   /* the data is in a state this operation must not touch
                        * (locked, vanished, newer than the log) */
    TALLY_ERR_UNAVAIL, /* a dependency (broker, disk) cannot serve now: retry */
    TALLY_ERR_FULL,    /* too much in flight: back off and retry */
    TALLY_ERR_INTERNAL,
} tally_err_t;

/* A short, stable name: "config", "io", "corrupt", ... */
const char *tally_err2str(tally_err_t err);

/* Exit status for a command that failed with err: 0 ok, 2 usage or
 * configuration, 1 every runtime failure. */
int tally_err_exit(tally_err_t err);

#define TALLY_EXIT_OK 0
#define TALLY_EXIT_RUNTIME 1
#define TALLY_EXIT_USAGE 2

#endif
