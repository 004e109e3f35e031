#include "bench/verify.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <time.h>

#include "common/util.h"

int verify_parse_poll(const char *json, size_t len, const poll_conf_t *p, uint64_t *counts,
                      char *errstr, size_t esz) {
    int rc = -1;
    uint8_t *seen = xcalloc((size_t)p->noptions, 1);
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root)) {
        snprintf(errstr, esz, "poll %s: the published file is not a JSON object", p->id);
        goto out;
    }
    const json_t *id = json_object_get(root, "poll");
    if (!json_is_string(id) || strcmp(json_string_value(id), p->id) != 0) {
        snprintf(errstr, esz, "poll %s: the published file names another poll", p->id);
        goto out;
    }
    const json_t *opts = json_object_get(root, "options");
    if (!json_is_array(opts)) {
        snprintf(errstr, esz, "poll %s: no \"options\" array", p->id);
        goto out;
    }
    size_t i;
    const json_t *o;
    json_array_foreach(opts, i, o) {
        const json_t *oid = json_object_get(o, "id");
        const json_t *votes = json_object_get(o, "votes");
        if (!json_is_string(oid) || !json_is_integer(votes) || json_integer_value(votes) < 0) {
            snprintf(errstr, esz, "poll %s: an option without id or votes", p->id);
            goto out;
        }
        int k = poll_option_index(p, json_string_value(oid), json_string_length(oid));
        if (k < 0) {
            snprintf(errstr, esz, "poll %s: unknown option '%s' in the published file", p->id,
                     json_string_value(oid));
            goto out;
        }
        /* Exact up to 2^63 (jansson's integers), which no bench run nears. */
        counts[k] = (uint64_t)json_integer_value(votes);
        seen[k] = 1;
    }
    for (int k = 0; k < p->noptions; k++)
        if (!seen[k]) {
            snprintf(errstr, esz, "poll %s: option '%s' missing from the published file", p->id,
                     p->options[k].id);
            goto out;
        }
    rc = 0;
out:
    json_decref(root);
    free(seen);
    return rc;
}

int verify_read_poll(const char *dir, const poll_conf_t *p, uint64_t *counts, char *errstr,
                     size_t esz) {
    char path[4200];
    snprintf(path, sizeof path, "%s/polls/%s.json", dir, p->id);
    memset(counts, 0, sizeof *counts * (size_t)p->noptions);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT)
            return 1;
        snprintf(errstr, esz, "%s: %s", path, strerror(errno));
        return -1;
    }
    buf_t b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&b, chunk, n);
    int bad = ferror(f);
    fclose(f);
    int rc = -1;
    if (bad)
        snprintf(errstr, esz, "%s: read error", path);
    else
        rc = verify_parse_poll(b.data ? b.data : "", b.len, p, counts, errstr, esz);
    buf_free(&b);
    return rc;
}

static int all_match(const char *dir, const verify_item_t *items, int n, uint64_t **got, char *err,
                     size_t esz, int *hard_error) {
    int ok = 1;
    *hard_error = 0;
    for (int i = 0; i < n; i++) {
        const poll_conf_t *p = items[i].poll;
        int rc = verify_read_poll(dir, p, got[i], err, esz);
        if (rc < 0) {
            *hard_error = 1;
            return 0;
        }
        if (memcmp(got[i], items[i].expected, sizeof(uint64_t) * (size_t)p->noptions) != 0)
            ok = 0;
    }
    return ok;
}

int verify_wait(const char *dir, const verify_item_t *items, int n, int timeout_ms, FILE *diff_out,
                uint64_t *waited_ms) {
    uint64_t **got = xcalloc((size_t)(n ? n : 1), sizeof *got);
    for (int i = 0; i < n; i++)
        got[i] = xcalloc((size_t)items[i].poll->noptions, sizeof **got);
    uint64_t t0 = mono_ms();
    char err[512] = "";
    int hard = 0, ok = 0;
    for (;;) {
        ok = all_match(dir, items, n, got, err, sizeof err, &hard);
        /* A file caught mid-rename is impossible (atomic rename), but a hard
         * error may still be a passing state: keep trying until the end. */
        if (ok || mono_ms() - t0 >= (uint64_t)timeout_ms)
            break;
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
    }
    *waited_ms = mono_ms() - t0;
    if (!ok) {
        if (hard)
            fprintf(diff_out, "verify: %s\n", err);
        fprintf(diff_out,
                "verify: published totals differ from the accepted votes after %llu ms:\n",
                (unsigned long long)*waited_ms);
        fprintf(diff_out, "  %-16s %-16s %14s %14s %10s\n", "poll", "option", "expected",
                "published", "diff");
        for (int i = 0; i < n; i++) {
            const poll_conf_t *p = items[i].poll;
            for (int k = 0; k < p->noptions; k++) {
                long long d = (long long)got[i][k] - (long long)items[i].expected[k];
                fprintf(diff_out, "  %-16s %-16s %14llu %14llu %+10lld%s\n", p->id,
                        p->options[k].id, (unsigned long long)items[i].expected[k],
                        (unsigned long long)got[i][k], d, d ? "  <--" : "");
            }
        }
    }
    for (int i = 0; i < n; i++)
        free(got[i]);
    free(got);
    return ok ? 0 : -1;
}
