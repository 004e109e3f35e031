/* What the vote route leans on: poll lookup by hash (config_poll) must find
 * every poll, miss every near miss, and stay right when polls are added after
 * the index was built. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "unit_helpers.h"

Test(http_routes, poll_lookup_by_hash_finds_all_of_10k_and_no_near_miss) {
    tally_config_t *c = config_new_defaults();
    char id[64];
    for (int i = 0; i < 10000; i++) {
        snprintf(id, sizeof id, "p%d", i);
        conf_add_poll(c, id, "unlimited", "a, b");
    }
    conf_finish(c);
    cr_assert_not_null(c->poll_index, "no index after validate");
    for (int i = 0; i < 10000; i++) {
        snprintf(id, sizeof id, "p%d", i);
        const poll_conf_t *p = config_poll(c, id, strlen(id));
        cr_assert_not_null(p, "%s not found", id);
        cr_assert_str_eq(p->id, id);
        /* A prefix of the id and the id with one more byte are other polls
         * (or none), never this one. */
        const poll_conf_t *q = config_poll(c, id, strlen(id) - 1);
        cr_assert(q != p);
        char longer[80];
        snprintf(longer, sizeof longer, "%sx", id);
        cr_assert_null(config_poll(c, longer, strlen(longer)));
    }
    cr_assert_null(config_poll(c, "", 0));
    cr_assert_null(config_poll(c, "p10000", 6));
    /* The id is matched by length, not by NUL: "p1\0..." is not p1. */
    cr_assert_null(config_poll(c, "p1\0zz", 5));
    /* A poll added after the index was built is still found. */
    conf_add_poll(c, "late", "unlimited", "a");
    cr_assert_not_null(config_poll(c, "late", 4));
    cr_assert_not_null(config_poll(c, "p9999", 5));
    conf_finish(c);
    cr_assert_not_null(config_poll(c, "late", 4));
    config_free(c);
}
