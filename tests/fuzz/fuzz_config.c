/* libFuzzer harness: config_load_string() over arbitrary bytes, and
 * config_parse_listen() over the first line. Touches no file. Besides "no
 * crash, no leak" it checks what a loaded config promises: an error leaves
 * no config and a message; a config has valid, distinct poll ids and option
 * ids, titles and labels filled in. And it checks config.c's reader, which
 * recognises section lines on inih's behalf, against inih itself: where
 * inih alone sees only short section names, both must find the same polls. */
#include <ini.h>
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

/* The poll ids inih itself reports, parsing the bytes raw. */
typedef struct {
    char ids[512][80];
    int n, overflow;
} raw_polls_t;

static int raw_on_ini(void *user, const char *section, const char *name, const char *value) {
    raw_polls_t *r = user;
    (void)name;
    (void)value;
    if (strlen(section) >= 49) /* inih may have cut it */
        r->overflow = 1;
    if (strncmp(section, "poll.", 5))
        return 1;
    for (int i = 0; i < r->n; i++)
        if (!strcmp(r->ids[i], section + 5))
            return 1;
    if (r->n == (int)(sizeof r->ids / sizeof r->ids[0])) {
        r->overflow = 1;
        return 1;
    }
    snprintf(r->ids[r->n++], sizeof r->ids[0], "%s", section + 5);
    return 1;
}

/* A loaded config's polls are exactly the [poll.ID] sections inih saw. */
static void check_against_inih(const tally_config_t *c, const uint8_t *data, size_t size) {
    if (memchr(data, '\0', size))
        return;
    char *text = xstrndup((const char *)data, size);
    static raw_polls_t raw;
    raw.n = raw.overflow = 0;
    ini_parse_string(text, raw_on_ini, &raw);
    free(text);
    if (raw.overflow)
        return;
    tally_assert(raw.n == c->npolls);
    for (int i = 0; i < raw.n; i++)
        tally_assert(config_poll(c, raw.ids[i], strlen(raw.ids[i])) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[1024] = "";
    tally_config_t *c = (tally_config_t *)&err; /* must be overwritten */
    tally_err_t rc =
        config_load_string("fuzz.ini", (const char *)data, size, NULL, 0, &c, err, sizeof err);
    if (rc == TALLY_OK) {
        tally_assert(c != NULL);
        check_config(c);
        check_against_inih(c, data, size);
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
