/* tsan: threads share a voter's bucket. Token-bucket arithmetic (ingest/limits.c, shared by the client and voter
 * tables), the fixed-size per-voter table, and keyed voter hashing
 * (common/voter_hmac.c, checked against OpenSSL's one-shot HMAC()). */
#include <criterion/criterion.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <string.h>

#include "common/voter_hmac.h"
#include "ingest/limits.h"
#include "unit_helpers.h" /* Criterion under TSan */

Test(voter_limits, a_bucket_gives_its_burst_then_refills_at_the_rate) {
    limits_bucket_t b;
    limits_bucket_init(&b, 3);
    int retry = -1;
    uint64_t t = 1000;
    for (int i = 0; i < 3; i++)
        cr_assert(limits_bucket_take(&b, 2 /*per s*/, 3, t, &retry), "burst %d", i);
    cr_assert_not(limits_bucket_take(&b, 2, 3, t, &retry));
    /* one token per 500 ms at 2/s */
    cr_assert_eq(retry, 1);
    cr_assert_not(limits_bucket_take(&b, 2, 3, t + 499, &retry));
    cr_assert(limits_bucket_take(&b, 2, 3, t + 500, &retry));
    cr_assert_not(limits_bucket_take(&b, 2, 3, t + 500, &retry));
    /* a long pause refills to the burst, not past it */
    t += 100000;
    for (int i = 0; i < 3; i++)
        cr_assert(limits_bucket_take(&b, 2, 3, t, &retry));
    cr_assert_not(limits_bucket_take(&b, 2, 3, t, &retry));
}

Test(voter_limits, retry_after_is_whole_seconds_rounded_up) {
    limits_bucket_t b;
    int retry = 0;
    /* 1 per second: empty right after the take, 1000 ms to wait -> 1 s */
    limits_bucket_init(&b, 1);
    cr_assert(limits_bucket_take(&b, 1, 1, 5000, &retry));
    cr_assert_not(limits_bucket_take(&b, 1, 1, 5000, &retry));
    cr_assert_eq(retry, 1);
    /* 400 ms later 600 ms remain: still 1 s */
    cr_assert_not(limits_bucket_take(&b, 1, 1, 5400, &retry));
    cr_assert_eq(retry, 1);
    /* a fast rate never says 0 */
    limits_bucket_init(&b, 1);
    cr_assert(limits_bucket_take(&b, 1000, 1, 7000, &retry));
    cr_assert_not(limits_bucket_take(&b, 1000, 1, 7000, &retry));
    cr_assert_eq(retry, 1);
}

Test(voter_limits, full_means_nothing_worth_keeping) {
    limits_bucket_t b;
    limits_bucket_init(&b, 2);
    cr_assert(limits_bucket_full(&b, 1, 2, 10));
    int retry;
    cr_assert(limits_bucket_take(&b, 1, 2, 1000, &retry));
    cr_assert_not(limits_bucket_full(&b, 1, 2, 1000));
    cr_assert_not(limits_bucket_full(&b, 1, 2, 1999));
    cr_assert(limits_bucket_full(&b, 1, 2, 2000));
}

Test(voter_limits, voters_and_polls_have_separate_buckets) {
    limits_voters_t *t = limits_voters_new(1, 2, 0);
    int retry = 0;
    uint64_t now = 50000;
    cr_assert(limits_voter_take(t, "p", 1, "alice", 5, now, &retry));
    cr_assert(limits_voter_take(t, "p", 1, "alice", 5, now, &retry));
    cr_assert_not(limits_voter_take(t, "p", 1, "alice", 5, now, &retry));
    cr_assert_eq(retry, 1);
    cr_assert(limits_voter_take(t, "p", 1, "bob", 3, now, &retry), "another voter");
    cr_assert(limits_voter_take(t, "q", 1, "alice", 5, now, &retry), "another poll");
    /* "p"+"alice" and "pa"+"lice" are different pairs */
    cr_assert(limits_voter_take(t, "pa", 2, "lice", 4, now, &retry));
    cr_assert(limits_voter_take(t, "p", 1, "alice", 5, now + 1000, &retry), "refilled");
    limits_voters_free(t);
}

Test(voter_limits, the_table_never_grows_and_evicts_idle_buckets_first) {
    /* 16 entries, 4 sets of 4: far more voters than ways. */
    limits_voters_t *t = limits_voters_new(1, 1, 16);
    int retry;
    char v[32];
    uint64_t now = 1000;
    for (int i = 0; i < 1000; i++) {
        snprintf(v, sizeof v, "voter-%d", i);
        /* each a fresh voter: always let through */
        cr_assert(limits_voter_take(t, "p", 1, v, strlen(v), now, &retry));
    }
    /* All of them were busy (just took their one token), so most were
     * evicted busy: the limit failed open for them, memory stayed put. */
    cr_assert_gt(limits_voters_evicted(t), 900);
    uint64_t ev = limits_voters_evicted(t);
    /* Once everyone has refilled, newcomers take idle ways: no busy
     * eviction is counted. */
    now += 5000;
    for (int i = 0; i < 16; i++) {
        snprintf(v, sizeof v, "late-%d", i);
        limits_voter_take(t, "p", 1, v, strlen(v), now, &retry);
    }
    /* at most the ways of sets that hashed more than 4 of the 16 */
    cr_assert_lt(limits_voters_evicted(t) - ev, 16);
    limits_voters_free(t);
}

Test(voter_limits, a_busy_voter_keeps_its_bucket_while_others_come_and_go) {
    limits_voters_t *t = limits_voters_new(1, 1, 1024);
    int retry;
    char v[32];
    uint64_t now = 1000;
    cr_assert(limits_voter_take(t, "p", 1, "hot", 3, now, &retry));
    for (int i = 0; i < 50; i++) {
        snprintf(v, sizeof v, "cold-%d", i);
        limits_voter_take(t, "p", 1, v, strlen(v), now, &retry);
    }
    cr_assert_not(limits_voter_take(t, "p", 1, "hot", 3, now + 10, &retry));
    limits_voters_free(t);
}

typedef struct {
    limits_voters_t *t;
    int allowed;
} hammer_t;

static void *hammer(void *arg) {
    hammer_t *h = arg;
    int retry;
    for (int i = 0; i < 20000; i++)
        h->allowed += limits_voter_take(h->t, "p", 1, "shared", 6, 1000, &retry);
    return NULL;
}

Test(voter_limits, threads_share_one_bucket_exactly) {
    limits_voters_t *t = limits_voters_new(1, 100, 0);
    hammer_t h[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        h[i] = (hammer_t){t, 0};
        pthread_create(&th[i], NULL, hammer, &h[i]);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        total += h[i].allowed;
    }
    /* the same instant: exactly the burst gets through */
    cr_assert_eq(total, 100);
    limits_voters_free(t);
}

Test(voter_limits, voter_hmac_is_hmac_sha256_truncated_to_16_bytes) {
    static const uint8_t key[20] = "a-key-of-20-bytes!!!";
    voter_hmac_t *h = voter_hmac_new(key, sizeof key);
    cr_assert(h);
    static const char *const voters[] = {"alice", "bob@example.org", "x", "ünïcødé"};
    for (size_t i = 0; i < sizeof voters / sizeof *voters; i++) {
        uint8_t tag[RECORD_VOTER_HMAC_LEN], want[32];
        unsigned int n;
        voter_hmac(h, voters[i], strlen(voters[i]), tag);
        HMAC(EVP_sha256(), key, sizeof key, (const unsigned char *)voters[i], strlen(voters[i]),
             want, &n);
        cr_assert_eq(memcmp(tag, want, RECORD_VOTER_HMAC_LEN), 0, "%s", voters[i]);
    }
    voter_hmac_free(h);
    cr_assert_null(voter_hmac_new(key, VOTER_HMAC_MIN_KEY - 1), "short key refused");
}
