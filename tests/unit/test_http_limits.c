/* The client table shared by every HTTP thread (hammered from 4 threads below); CIDRs,
 * X-Forwarded-For, buckets. Not in the TSan run: Criterion cannot map its arena
 * in this binary under TSan ("Could not initialize inheritable arena"); the
 * threaded HTTP layer runs under TSan in tests/integration/test_http_edge.py. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>

#include "ingest/limits.h"

static void addr(const char *s, uint8_t out[16]) {
    cr_assert_eq(limits_addr_parse(s, strlen(s), out), 0, "%s", s);
}

Test(http_limits, cidrs_match_v4_and_v6) {
    limits_cidr_t *v;
    int n;
    char err[128];
    cr_assert_eq(
        limits_cidrs_parse("10.0.0.0/8, 192.168.1.7 ,2001:db8::/32,::1", &v, &n, err, sizeof err),
        0, "%s", err);
    cr_assert_eq(n, 4);
    uint8_t a[16];
    struct {
        const char *ip;
        int in;
    } cases[] = {{"10.1.2.3", 1},      {"11.0.0.1", 0},    {"192.168.1.7", 1}, {"192.168.1.8", 0},
                 {"2001:db8:1::5", 1}, {"2001:db9::1", 0}, {"::1", 1},         {"::2", 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        addr(cases[i].ip, a);
        cr_expect_eq(limits_cidrs_match(v, n, a), cases[i].in, "%s", cases[i].ip);
    }
    free(v);
    const char *bad[] = {"10.0.0.0/33", "nothost", "10.0.0.0/", "::1/129", "1.2.3.4/8x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_expect_eq(limits_cidrs_parse(bad[i], &v, &n, err, sizeof err), -1, "%s", bad[i]);
        cr_expect(strstr(err, "trusted_proxies") != NULL);
    }
    cr_expect_eq(limits_cidrs_parse("", &v, &n, err, sizeof err), 0);
    cr_expect_eq(n, 0);
}

Test(http_limits, forwarded_for_only_from_trusted_peers) {
    limits_cidr_t *v;
    int n;
    char err[128], s[64];
    cr_assert_eq(limits_cidrs_parse("127.0.0.1, 10.9.0.0/16", &v, &n, err, sizeof err), 0);
    uint8_t peer[16], other[16], out[16];
    addr("127.0.0.1", peer);
    addr("8.8.8.8", other);
    struct {
        const char *xff, *want;
    } cases[] = {
        {"1.2.3.4", "1.2.3.4"},
        {"1.2.3.4, 10.9.1.1", "1.2.3.4"}, /* trusted hop skipped */
        {"6.6.6.6, 1.2.3.4", "1.2.3.4"},  /* the client's own claim ignored */
        {"garbage, 1.2.3.4", "1.2.3.4"},
        {"1.2.3.4, garbage", "127.0.0.1"},  /* nothing past junk */
        {"10.9.0.1, 10.9.0.2", "10.9.0.1"}, /* all trusted: leftmost */
        {" 2001:db8::7 ", "2001:db8::7"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        limits_client_addr(v, n, peer, cases[i].xff, strlen(cases[i].xff), out);
        limits_addr_str(out, s, sizeof s);
        cr_expect_str_eq(s, cases[i].want, "xff '%s'", cases[i].xff);
    }
    limits_client_addr(v, n, other, "1.2.3.4", 7, out);
    limits_addr_str(out, s, sizeof s);
    cr_expect_str_eq(s, "8.8.8.8", "an untrusted peer named someone else");
    free(v);
}

Test(http_limits, bucket_refills_at_the_rate) {
    limits_table_t *t = limits_table_new(0, 2 /* per s */, 3);
    uint8_t a[16], b[16];
    addr("1.1.1.1", a);
    addr("2.2.2.2", b);
    int retry = 0;
    uint64_t now = 1000000;
    for (int i = 0; i < 3; i++)
        cr_expect(limits_take(t, a, now, &retry), "burst %d", i);
    cr_expect(!limits_take(t, a, now, &retry));
    cr_expect_eq(retry, 1);
    cr_expect(limits_take(t, b, now, &retry), "buckets are per client");
    cr_expect(!limits_take(t, a, now + 400, &retry), "0.8 tokens after 400 ms");
    cr_expect(limits_take(t, a, now + 500, &retry), "a token after 500 ms at 2/s");
    cr_expect(limits_take(t, a, now + 100000, &retry));
    cr_expect_eq(limits_entries(t), 2);
    limits_sweep(t, now + 100000);
    cr_expect_eq(limits_entries(t), 1, "b refilled and was forgotten; a has not refilled yet");
    limits_sweep(t, now + 200000);
    cr_expect_eq(limits_entries(t), 0);
    limits_table_free(t);
}

typedef struct {
    limits_table_t *t;
    int ok;
} thr_t;

static void *hammer(void *arg) {
    thr_t *x = arg;
    uint8_t a[16];
    limits_addr_parse("9.9.9.9", 7, a);
    for (int i = 0; i < 10000; i++) {
        if (limits_conn_add(x->t, a) == 0) {
            x->ok++;
            limits_conn_del(x->t, a);
        }
    }
    return NULL;
}

Test(http_limits, connection_cap_is_exact_across_threads) {
    limits_table_t *t = limits_table_new(5, 0, 1);
    uint8_t a[16];
    addr("9.9.9.9", a);
    for (int i = 0; i < 5; i++)
        cr_expect_eq(limits_conn_add(t, a), 0);
    cr_expect_eq(limits_conn_add(t, a), -1, "a sixth connection");
    limits_conn_del(t, a);
    cr_expect_eq(limits_conn_add(t, a), 0, "a freed slot is usable");
    for (int i = 0; i < 5; i++)
        limits_conn_del(t, a);
    pthread_t th[4];
    thr_t x[4];
    for (int i = 0; i < 4; i++) {
        x[i] = (thr_t){t, 0};
        pthread_create(&th[i], NULL, hammer, &x[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(x[i].ok, 10000, "4 threads never hold more than 5");
    }
    for (int i = 0; i < 5; i++)
        cr_expect_eq(limits_conn_add(t, a), 0, "counts returned to zero");
    limits_table_free(t);
}
