/* libFuzzer harness: config_load_string() over arbitrary bytes, and
 * config_parse_listen() over the first line. Touches no file. Besides "no
 * crash, no leak" it checks what a loaded config promises: an error leaves
 * no config and a message; a config has valid, distinct poll ids and option
 * ids, titles and labels filled in. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/ids.h"
#include "common/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_config(const tally_config_t *c) {
    for (int i = 0; i < c->npolls; i++) {
        const poll_conf_t *p = &c->polls[i];
        tally_assert(id_valid(p->id, strlen(p->id)));
        tally_assert(p->title && p->noptions > 0);
        tally_assert(config_poll(c, p->id, strlen(p->id)) == p); /* ids distinct */
        for (int j = 0; j < p->noptions; j++) {
            const poll_option_t *o = &p->options[j];
            tally_assert(id_valid(o->id, strlen(o->id)) && o->label);
            tally_assert(poll_option_index(p, o->id, strlen(o->id)) == j);
        }
    }
    char host[CONFIG_LISTEN_HOST_MAX], err[512];
    int port;
    tally_assert(config_parse_listen(c->listen, host, sizeof host, &port, err, sizeof err) ==
                 TALLY_OK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[1024] = "";
    tally_config_t *c = (tally_config_t *)&err; /* must be overwritten */
    tally_err_t rc =
        config_load_string("fuzz.ini", (const char *)data, size, NULL, 0, &c, err, sizeof err);
    if (rc == TALLY_OK) {
        tally_assert(c != NULL);
        check_config(c);
    } else {
        tally_assert(rc == TALLY_ERR_CONFIG && c == NULL && err[0] != '\0');
    }
    config_free(c);

    const uint8_t *nl = memchr(data, '\n', size);
    size_t n = nl ? (size_t)(nl - data) : size;
    char *line = xstrndup((const char *)data, n);
    char host[CONFIG_LISTEN_HOST_MAX] = "";
    int port = -1;
    if (config_parse_listen(line, host, sizeof host, &port, err, sizeof err) == TALLY_OK)
        tally_assert(port >= 0 && port <= 65535 && host[0] && strlen(host) < sizeof host);
    free(line);
    return 0;
}
