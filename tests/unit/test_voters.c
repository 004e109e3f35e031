/* engine/voters.h: the per-partition voter table. */
#include <criterion/criterion.h>
#include <string.h>

#include "common/endian.h"
#include "engine/voters.h"
#include "unit_helpers.h"

static voter_key_t key_of(uint64_t i) {
    uint64_t s = i * 2 + 1;
    voter_key_t k = {rng_next(&s), rng_next(&s)};
    return k;
}

Test(voters, empty_table) {
    voters_t v;
    voters_init(&v);
    cr_assert_eq(v.count, 0);
    cr_assert_eq(voters_bytes(&v), 0);
    voters_free(&v);
    voters_free(&v); /* twice is harmless */
}

Test(voters, insert_then_lookup) {
    voters_t v;
    voters_init(&v);
    voter_key_t a = record_voter_key("demo", 4, "alice", 5);
    voter_key_t b = record_voter_key("demo", 4, "bob", 3);
    voter_slot_t *sa = NULL, *sb = NULL, *s = NULL;
    cr_assert_eq(voters_get_or_insert(&v, a, 2, &sa), -1, "new voter");
    cr_assert_not_null(sa);
    cr_assert_eq(voters_slot_option(sa), 2);
    cr_assert_eq(v.count, 1);
    cr_assert_eq(voters_get_or_insert(&v, b, 0, &sb), -1);
    cr_assert_eq(v.count, 2);
    /* Known voters return their option; the option argument is ignored. */
    cr_assert_eq(voters_get_or_insert(&v, a, 7, &s), 2);
    cr_assert_eq(s, sa);
    cr_assert_eq(voters_get_or_insert(&v, b, 7, NULL), 0);
    cr_assert_eq(v.count, 2);
    cr_assert_gt(voters_bytes(&v), 0);
    cr_assert_eq(voters_bytes(&v) % sizeof(voter_slot_t), 0);
    voters_free(&v);
    cr_assert_eq(v.count, 0);
    cr_assert_null(v.slots);
}

Test(voters, set_option) {
    voters_t v;
    voters_init(&v);
    voter_key_t k = key_of(1);
    voter_slot_t *s;
    cr_assert_eq(voters_get_or_insert(&v, k, 3, &s), -1);
    voters_set_option(s, 9);
    cr_assert_eq(voters_slot_option(s), 9);
    cr_assert_eq(voters_get_or_insert(&v, k, 0, NULL), 9);
    /* The option lives in 16 bits and must not disturb the key. */
    voters_set_option(s, 65535);
    cr_assert_eq(voters_get_or_insert(&v, k, 0, &s), 65535);
    voters_set_option(s, 0);
    cr_assert_eq(voters_get_or_insert(&v, k, 5, NULL), 0);
    cr_assert_eq(v.count, 1);
    voters_free(&v);
}

Test(voters, option_index_bounds_round_trip) {
    voters_t v;
    voters_init(&v);
    for (int o = 0; o < 65536; o += 257) {
        cr_assert_eq(voters_get_or_insert(&v, key_of((uint64_t)o + 100), o, NULL), -1);
    }
    cr_assert_eq(voters_get_or_insert(&v, key_of(1), 65535, NULL), -1);
    for (int o = 0; o < 65536; o += 257)
        cr_assert_eq(voters_get_or_insert(&v, key_of((uint64_t)o + 100), 0, NULL), o);
    cr_assert_eq(voters_get_or_insert(&v, key_of(1), 0, NULL), 65535);
    voters_free(&v);
}

Test(voters, keys_differing_in_high_bits_are_distinct) {
    voters_t v;
    voters_init(&v);
    /* Same lo, different hi (above the 16 option bits). */
    voter_key_t a = {42, 1ull << 20}, b = {42, 1ull << 40}, c = {42, 0};
    cr_assert_eq(voters_get_or_insert(&v, a, 1, NULL), -1);
    cr_assert_eq(voters_get_or_insert(&v, b, 2, NULL), -1);
    cr_assert_eq(voters_get_or_insert(&v, c, 3, NULL), -1);
    cr_assert_eq(voters_get_or_insert(&v, a, 0, NULL), 1);
    cr_assert_eq(voters_get_or_insert(&v, b, 0, NULL), 2);
    cr_assert_eq(voters_get_or_insert(&v, c, 0, NULL), 3);
    /* Same hi, different lo. */
    voter_key_t d = {1000, 7ull << 32}, e = {2000, 7ull << 32};
    cr_assert_eq(voters_get_or_insert(&v, d, 4, NULL), -1);
    cr_assert_eq(voters_get_or_insert(&v, e, 5, NULL), -1);
    cr_assert_eq(voters_get_or_insert(&v, d, 0, NULL), 4);
    cr_assert_eq(voters_get_or_insert(&v, e, 0, NULL), 5);
    /* A key of all zeros is a voter like any other (lo|1 keeps it off the
     * empty marker). */
    voter_key_t z = {0, 0};
    cr_assert_eq(voters_get_or_insert(&v, z, 6, NULL), -1);
    cr_assert_eq(voters_get_or_insert(&v, z, 0, NULL), 6);
    cr_assert_eq(v.count, 6);
    voters_free(&v);
}

Test(voters, colliding_slot_indexes_probe) {
    /* Keys with equal lo land on the same home slot: linear probing must
     * keep them all. */
    voters_t v;
    voters_init(&v);
    for (uint64_t i = 0; i < 200; i++) {
        voter_key_t k = {0xabcdef, (i + 1) << 16};
        cr_assert_eq(voters_get_or_insert(&v, k, (int)i, NULL), -1);
    }
    for (uint64_t i = 0; i < 200; i++) {
        voter_key_t k = {0xabcdef, (i + 1) << 16};
        cr_assert_eq(voters_get_or_insert(&v, k, 0, NULL), (int)i);
    }
    cr_assert_eq(v.count, 200);
    voters_free(&v);
}

Test(voters, grows_past_a_million) {
    voters_t v;
    voters_init(&v);
    const uint64_t n = 1000000;
    size_t last_bytes = 0;
    int resizes = 0;
    for (uint64_t i = 0; i < n; i++) {
        cr_assert_eq(voters_get_or_insert(&v, key_of(i), (int)(i % 65536), NULL), -1,
                     "key %llu reported as known", (unsigned long long)i);
        if (voters_bytes(&v) != last_bytes) {
            resizes++;
            last_bytes = voters_bytes(&v);
        }
    }
    cr_assert_eq(v.count, n);
    cr_assert_geq(resizes, 17, "only %d sizes", resizes);
    /* Load stays at or under 3/4. */
    cr_assert_leq(v.count * 4, (v.mask + 1) * 3);
    /* Every key survived every resize with its option. */
    for (uint64_t i = 0; i < n; i++)
        cr_assert_eq(voters_get_or_insert(&v, key_of(i), 0, NULL), (int)(i % 65536));
    /* Unknown keys are still unknown. */
    for (uint64_t i = n; i < n + 1000; i++)
        cr_assert_eq(voters_get_or_insert(&v, key_of(i), 1, NULL), -1);
    cr_assert_eq(v.count, n + 1000);
    voters_free(&v);
}

Test(voters, slot_pointer_valid_until_next_insert) {
    voters_t v;
    voters_init(&v);
    voter_slot_t *s;
    for (uint64_t i = 0; i < 5000; i++) {
        voters_get_or_insert(&v, key_of(i), 1, &s);
        voters_set_option(s, (int)(i & 0xff));
    }
    for (uint64_t i = 0; i < 5000; i++)
        cr_assert_eq(voters_get_or_insert(&v, key_of(i), 0, NULL), (int)(i & 0xff));
    voters_free(&v);
}

Test(voters, insert_slot_adds_and_replaces) {
    voters_t src, dst;
    voters_init(&src);
    voters_init(&dst);
    for (uint64_t i = 0; i < 3000; i++)
        voters_get_or_insert(&src, key_of(i), (int)(i % 7), NULL);
    for (size_t s = 0; s <= src.mask; s++)
        if (src.slots[s].a)
            voters_insert_slot(&dst, src.slots[s]);
    cr_assert_eq(dst.count, 3000);
    for (uint64_t i = 0; i < 3000; i++)
        cr_assert_eq(voters_get_or_insert(&dst, key_of(i), 0, NULL), (int)(i % 7));
    /* Inserting a known voter's slot again replaces its option. */
    voter_slot_t *s;
    voters_get_or_insert(&src, key_of(5), 0, &s);
    voter_slot_t copy = *s;
    voters_set_option(&copy, 6000);
    voters_insert_slot(&dst, copy);
    cr_assert_eq(dst.count, 3000);
    cr_assert_eq(voters_get_or_insert(&dst, key_of(5), 0, NULL), 6000);
    voters_free(&src);
    voters_free(&dst);
}

Test(voters, reserve_sizes_once_for_n) {
    voters_t v;
    voters_init(&v);
    voters_reserve(&v, 3000);
    size_t bytes = voters_bytes(&v);
    /* The smallest table that holds 3000 at 3/4 load: 4096 slots. */
    cr_assert_eq(bytes, 4096 * sizeof(voter_slot_t));
    for (uint64_t i = 0; i < 3000; i++)
        cr_assert_eq(voters_get_or_insert(&v, key_of(i), 1, NULL), -1);
    cr_assert_eq(voters_bytes(&v), bytes, "grew although reserved");
    /* Reserving less than held changes nothing; more keeps every voter. */
    voters_reserve(&v, 10);
    cr_assert_eq(voters_bytes(&v), bytes);
    voters_reserve(&v, 3073);
    cr_assert_eq(voters_bytes(&v), 8192 * sizeof(voter_slot_t));
    for (uint64_t i = 0; i < 3000; i++)
        cr_assert_eq(voters_get_or_insert(&v, key_of(i), 0, NULL), 1);
    cr_assert_eq(v.count, 3000);
    voters_free(&v);
}

Test(voters, probe_stats_of_known_layouts) {
    voters_t v;
    voters_init(&v);
    voters_probe_stats_t st = voters_probe_stats(&v);
    cr_assert_eq(st.count, 0);
    cr_assert_eq(st.max_probe, 0);
    /* Keys of one lo share a home: the i-th probes i slots. */
    for (uint64_t i = 0; i < 10; i++) {
        voter_key_t k = {0xabcdef, (i + 1) << 16};
        voters_get_or_insert(&v, k, 0, NULL);
    }
    st = voters_probe_stats(&v);
    cr_assert_eq(st.count, 10);
    cr_assert_eq(st.capacity, 16);
    cr_assert_eq(st.max_probe, 10);
    cr_assert_float_eq(st.mean_probe, 5.5, 1e-9);
    voters_free(&v);
}

/* The old snapshot load: a table's slots, in table order, into an empty
 * table. Reserved first it probes exactly as the source (linear probing's
 * total displacement does not depend on the order of inserts). */
Test(voters, table_order_into_reserved_table_does_not_cluster) {
    voters_t src, dst;
    voters_init(&src);
    voters_init(&dst);
    const uint64_t n = 200000;
    for (uint64_t i = 0; i < n; i++)
        voters_get_or_insert(&src, key_of(i), (int)(i % 5), NULL);
    voters_reserve(&dst, src.count);
    for (size_t s = 0; s <= src.mask; s++)
        if (src.slots[s].a)
            voters_insert_slot(&dst, src.slots[s]);
    voters_probe_stats_t a = voters_probe_stats(&src), b = voters_probe_stats(&dst);
    cr_assert_eq(b.count, n);
    cr_assert_eq(b.capacity, a.capacity);
    cr_assert_float_eq(b.mean_probe, a.mean_probe, 1e-9);
    cr_assert_lt(b.max_probe, 200, "longest probe %zu", b.max_probe);
    for (uint64_t i = 0; i < n; i += 97)
        cr_assert_eq(voters_get_or_insert(&dst, key_of(i), 0, NULL), (int)(i % 5));
    voters_free(&src);
    voters_free(&dst);
}

Test(voters, insert_slots_from_bytes_stops_at_a_malformed_slot) {
    uint8_t buf[4 * 16];
    for (int i = 0; i < 4; i++) {
        voter_key_t k = key_of((uint64_t)i);
        le_put64(buf + i * 16, k.lo | 1);
        le_put64(buf + i * 16 + 8, (k.hi & ~VOTERS_OPT_MASK) | (uint64_t)i);
    }
    voters_t v;
    voters_init(&v);
    cr_assert_eq(voters_insert_slots(&v, buf, 4, 4), 4);
    cr_assert_eq(v.count, 4);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(voters_get_or_insert(&v, key_of((uint64_t)i), 0, NULL), i);
    /* Again: the same voters, replaced, not added. */
    cr_assert_eq(voters_insert_slots(&v, buf, 4, 4), 4);
    cr_assert_eq(v.count, 4);
    voters_free(&v);

    /* Option 3 of a poll of 3 options; then an even first word. */
    voters_init(&v);
    cr_assert_eq(voters_insert_slots(&v, buf, 4, 3), 3);
    cr_assert_eq(v.count, 3);
    voters_free(&v);
    le_put64(buf + 16, le_get64(buf + 16) & ~(uint64_t)1);
    voters_init(&v);
    cr_assert_eq(voters_insert_slots(&v, buf, 4, 4), 1);
    cr_assert_eq(v.count, 1);
    voters_free(&v);
}
