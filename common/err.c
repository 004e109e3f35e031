/* See err.h. */
#include "common/err.h"

const char *tally_err2str(tally_err_t err) {
    switch (err) {
    case TALLY_OK: return "ok";
    case TALLY_ERR_CONFIG: return "config";
    case TALLY_ERR_IO: return "io";
    case TALLY_ERR_CORRUPT: return "corrupt";
    case TALLY_ERR_STATE: return "state";
    case TALLY_ERR_UNAVAIL: return "unavailable";
    case TALLY_ERR_FULL: return "full";
    case TALLY_ERR_INTERNAL: return "internal";
    }
    return "unknown";
}

int tally_err_exit(tally_err_t err) {
    switch (err) {
    case TALLY_OK: return TALLY_EXIT_OK;
    case TALLY_ERR_CONFIG: return TALLY_EXIT_USAGE;
    default: return TALLY_EXIT_RUNTIME;
    }
}
