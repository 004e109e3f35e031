/* common/jwt: voter token verification. Every token here is built by the
 * test itself with OpenSSL (base64 by EVP_EncodeBlock, HMAC by HMAC(),
 * ECDSA by EVP_DigestSign), never by the module under test, so a bug shared
 * by the module's signer and verifier cannot hide. */
#include <criterion/criterion.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/jwt.h"
#include "common/util.h"

#define NOW 1800000000LL

static const uint8_t hs_key[32] = "0123456789abcdef0123456789abcdef";
static const uint8_t other_key[32] = "fedcba9876543210fedcba9876543210";

/* ---- the test's own JWS ---- */

static void b64url(const void *in, size_t len, char *out) {
    char tmp[8192];
    int n = EVP_EncodeBlock((unsigned char *)tmp, in, (int)len);
    int o = 0;
    for (int i = 0; i < n; i++) {
        char ch = tmp[i];
        if (ch == '=')
            break;
        out[o++] = ch == '+' ? '-' : ch == '/' ? '_' : ch;
    }
    out[o] = '\0';
}

/* "b64(header).b64(payload)" */
static void signing_input(const char *header, const char *payload, char *out) {
    char h[4096], p[8192];
    b64url(header, strlen(header), h);
    b64url(payload, strlen(payload), p);
    sprintf(out, "%s.%s", h, p);
}

static char *hs_token(const char *header, const char *payload, const uint8_t *key, size_t klen) {
    static char tok[16384];
    signing_input(header, payload, tok);
    unsigned char mac[32];
    unsigned int mlen = 0;
    cr_assert(HMAC(EVP_sha256(), key, (int)klen, (unsigned char *)tok, strlen(tok), mac, &mlen));
    char s[64];
    b64url(mac, mlen, s);
    strcat(tok, ".");
    strcat(tok, s);
    return tok;
}

static char *hs(const char *payload) {
    return hs_token("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload, hs_key, sizeof hs_key);
}

static EVP_PKEY *ec_key(void) {
    static EVP_PKEY *k;
    if (!k)
        k = EVP_EC_gen("P-256");
    cr_assert(k);
    return k;
}

static char *ec_public_pem(EVP_PKEY *k) {
    BIO *b = BIO_new(BIO_s_mem());
    cr_assert(PEM_write_bio_PUBKEY(b, k));
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *pem = xstrndup(data, (size_t)n);
    BIO_free(b);
    return pem;
}

static char *es_token(const char *header, const char *payload, EVP_PKEY *k) {
    static char tok[16384];
    signing_input(header, payload, tok);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char der[128];
    size_t dlen = sizeof der;
    cr_assert(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k) == 1);
    cr_assert(EVP_DigestSign(md, der, &dlen, (unsigned char *)tok, strlen(tok)) == 1);
    EVP_MD_CTX_free(md);
    const unsigned char *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)dlen);
    uint8_t raw[64];
    BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32);
    ECDSA_SIG_free(sig);
    char s[128];
    b64url(raw, 64, s);
    strcat(tok, ".");
    strcat(tok, s);
    return tok;
}

/* ---- verifiers ---- */

static jwt_keys_t *keys_hs(const char *iss, const char *aud) {
    jwt_keys_t *k;
    char err[256];
    cr_assert_eq(jwt_keys_new(hs_key, sizeof hs_key, NULL, 0, iss, aud, 30, &k, err, sizeof err),
                 TALLY_OK, "%s", err);
    return k;
}

static jwt_keys_t *keys_es(int with_hs) {
    jwt_keys_t *k;
    char err[256];
    char *pem = ec_public_pem(ec_key());
    cr_assert_eq(jwt_keys_new(with_hs ? hs_key : NULL, with_hs ? sizeof hs_key : 0, pem,
                              strlen(pem), NULL, NULL, 30, &k, err, sizeof err),
                 TALLY_OK, "%s", err);
    free(pem);
    return k;
}

static jwt_err_t verify(const jwt_keys_t *k, const char *tok, jwt_claims_t *cl) {
    char why[128] = "";
    jwt_err_t e = jwt_verify(k, tok, strlen(tok), NOW, cl, why, sizeof why);
    if (e != JWT_OK) {
        /* The description goes into a header: printable ASCII, no quote. */
        cr_assert(why[0]);
        for (const char *p = why; *p; p++)
            cr_assert(*p >= 0x20 && *p < 0x7f && *p != '"', "why: %s", why);
    }
    return e;
}

static char payload[1024];
static const char *claims(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *claims(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(payload, sizeof payload, fmt, ap);
    va_end(ap);
    return payload;
}

/* ---- tests ---- */

Test(jwt, valid_hs256_token_yields_its_claims) {
    jwt_keys_t *k = keys_hs(NULL, NULL);
    jwt_claims_t cl;
    cr_assert_eq(
        verify(k, hs(claims("{\"sub\":\"alice\",\"exp\":%lld,\"poll\":\"final\"}", NOW + 60)), &cl),
        JWT_OK);
    cr_assert_str_eq(cl.sub, "alice");
    cr_assert_eq(cl.sub_len, 5);
    cr_assert(cl.poll_set);
    cr_assert_str_eq(cl.poll, "final");
    cr_assert_eq(cl.alg, JWT_ALG_HS256);
    jwt_keys_free(k);
}

Test(jwt, valid_es256_token_verifies_with_the_public_key) {
    jwt_keys_t *k = keys_es(0);
    jwt_claims_t cl;
    const char *t =
        es_token("{\"alg\":\"ES256\"}",
                 claims("{\"sub\":\"bob\",\"exp\":%lld,\"iat\":%lld}", NOW + 60, NOW), ec_key());
    cr_assert_eq(verify(k, t, &cl), JWT_OK);
    cr_assert_str_eq(cl.sub, "bob");
    cr_assert(!cl.poll_set);
    /* One flipped bit of the signature (inside, so base64 stays canonical). */
    char bad[16384];
    strcpy(bad, t);
    char *last = bad + strlen(bad) - 10;
    *last = *last == 'A' ? 'B' : 'A';
    cr_assert_eq(verify(k, bad, &cl), JWT_ERR_SIGNATURE);
    jwt_keys_free(k);
}

Test(jwt, es256_token_of_another_key_pair_fails) {
    jwt_keys_t *k = keys_es(0);
    EVP_PKEY *other = EVP_EC_gen("P-256");
    jwt_claims_t cl;
    cr_assert_eq(verify(k,
                        es_token("{\"alg\":\"ES256\"}",
                                 claims("{\"sub\":\"bob\",\"exp\":%lld}", NOW + 60), other),
                        &cl),
                 JWT_ERR_SIGNATURE);
    EVP_PKEY_free(other);
    jwt_keys_free(k);
}

Test(jwt, expiry_honours_the_leeway_to_the_second) {
    jwt_keys_t *k = keys_hs(NULL, NULL); /* leeway 30 */
    jwt_claims_t cl;
    /* valid while now < exp + leeway */
    cr_assert_eq(verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld}", NOW - 29)), &cl), JWT_OK);
    cr_assert_eq(verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld}", NOW - 30)), &cl),
                 JWT_ERR_EXPIRED);
    cr_assert_eq(verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld}", NOW - 3600)), &cl),
                 JWT_ERR_EXPIRED);
    jwt_keys_free(k);
}

Test(jwt, nbf_and_iat_in_the_future_beyond_the_leeway_fail) {
    jwt_keys_t *k = keys_hs(NULL, NULL);
    jwt_claims_t cl;
    long long exp = NOW + 3600;
    cr_assert_eq(
        verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld,\"nbf\":%lld}", exp, NOW + 30)), &cl),
        JWT_OK);
    cr_assert_eq(
        verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld,\"nbf\":%lld}", exp, NOW + 31)), &cl),
        JWT_ERR_NOT_YET_VALID);
    cr_assert_eq(
        verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld,\"iat\":%lld}", exp, NOW + 31)), &cl),
        JWT_ERR_NOT_YET_VALID);
    cr_assert_eq(verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld,\"nbf\":\"soon\"}", exp)), &cl),
                 JWT_ERR_CLAIMS);
    jwt_keys_free(k);
}

Test(jwt, a_token_signed_with_another_secret_fails) {
    jwt_keys_t *k = keys_hs(NULL, NULL);
    jwt_claims_t cl;
    const char *t =
        hs_token("{\"alg\":\"HS256\"}", claims("{\"sub\":\"a\",\"exp\":%lld}", NOW + 60), other_key,
                 sizeof other_key);
    cr_assert_eq(verify(k, t, &cl), JWT_ERR_SIGNATURE);
    jwt_keys_free(k);
}

Test(jwt, only_configured_algorithms_are_accepted) {
    jwt_keys_t *k = keys_hs(NULL, NULL);
    jwt_claims_t cl;
    const char *p = claims("{\"sub\":\"a\",\"exp\":%lld}", NOW + 60);
    static const char *const headers[] = {"{\"alg\":\"HS384\"}", "{\"alg\":\"hs256\"}",
                                          "{\"alg\":\"RS256\"}", "{\"alg\":\"ES256\"}",
                                          "{\"typ\":\"JWT\"}",   "{\"alg\":[\"HS256\"]}",
                                          "{\"alg\":\"HS256 \"}"};
    for (size_t i = 0; i < sizeof headers / sizeof *headers; i++)
        cr_assert_eq(verify(k, hs_token(headers[i], p, hs_key, sizeof hs_key), &cl), JWT_ERR_ALG,
                     "%s", headers[i]);
    jwt_keys_free(k);
}

Test(jwt, alg_none_is_refused_with_or_without_a_signature) {
    jwt_keys_t *k = keys_es(1); /* both algorithms configured */
    jwt_claims_t cl;
    char t[4096];
    signing_input("{\"alg\":\"none\"}", claims("{\"sub\":\"a\",\"exp\":%lld}", NOW + 60), t);
    strcat(t, ".");
    cr_assert_eq(verify(k, t, &cl), JWT_ERR_ALG);
    cr_assert_eq(verify(k, hs_token("{\"alg\":\"none\"}", payload, hs_key, sizeof hs_key), &cl),
                 JWT_ERR_ALG);
    cr_assert_eq(verify(k, hs_token("{\"alg\":\"None\"}", payload, hs_key, sizeof hs_key), &cl),
                 JWT_ERR_ALG);
    jwt_keys_free(k);
}

Test(jwt, hs256_signed_with_the_es256_public_key_is_not_accepted) {
    char *pem = ec_public_pem(ec_key());
    const char *p = claims("{\"sub\":\"mallory\",\"exp\":%lld}", NOW + 60);
    jwt_claims_t cl;
    /* Only ES256 configured: HS256 is not an algorithm of this server. */
    jwt_keys_t *es_only = keys_es(0);
    cr_assert_eq(
        verify(es_only, hs_token("{\"alg\":\"HS256\"}", p, (const uint8_t *)pem, strlen(pem)), &cl),
        JWT_ERR_ALG);
    /* Both configured: HS256 is checked with the shared secret only. */
    jwt_keys_t *both = keys_es(1);
    cr_assert_eq(
        verify(both, hs_token("{\"alg\":\"HS256\"}", p, (const uint8_t *)pem, strlen(pem)), &cl),
        JWT_ERR_SIGNATURE);
    /* And an ES256 header over an HMAC is a bad signature, not a pass. */
    cr_assert_eq(verify(both, hs_token("{\"alg\":\"ES256\"}", p, hs_key, sizeof hs_key), &cl),
                 JWT_ERR_SIGNATURE);
    jwt_keys_free(es_only);
    jwt_keys_free(both);
    free(pem);
}

Test(jwt, truncated_tokens_fail) {
    jwt_keys_t *k = keys_hs(NULL, NULL);
    jwt_claims_t cl;
    char t[4096];
    strcpy(t, hs(claims("{\"sub\":\"a\",\"exp\":%lld}", NOW + 60)));
    size_t n = strlen(t);
    cr_assert_eq(verify(k, t, &cl), JWT_OK);
    for (size_t cut = 0; cut < n; cut++) {
        char c = t[cut];
        t[cut] = '\0';
        jwt_err_t e = verify(k, t, &cl);
        cr_assert(e == JWT_ERR_MALFORMED || e == JWT_ERR_SIGNATURE || e == JWT_ERR_ALG,
                  "cut at %zu: %s", cut, jwt_err2str(e));
        t[cut] = c;
    }
    /* Four parts, two parts. */
    char four[4200];
    snprintf(four, sizeof four, "%s.xx", t);
    cr_assert_eq(verify(k, four, &cl), JWT_ERR_MALFORMED);
    *strrchr(t, '.') = '\0';
    cr_assert_eq(verify(k, t, &cl), JWT_ERR_MALFORMED);
    jwt_keys_free(k);
}

Test(jwt, oversized_tokens_fail_before_parsing) {
    jwt_keys_t *k = keys_hs(NULL, NULL);
    jwt_claims_t cl;
    /* A valid token whose payload carries padding past 4096 bytes. */
    char pad[3200];
    memset(pad, 'x', sizeof pad - 1);
    pad[sizeof pad - 1] = '\0';
    const char *t = hs(claims("{\"sub\":\"a\",\"exp\":%lld,\"x\":\"%.*s\"}", NOW + 60, 900, pad));
    cr_assert_lt(strlen(t), JWT_MAX_LEN);
    cr_assert_eq(verify(k, t, &cl), JWT_OK);
    char big[4096];
    snprintf(big, sizeof big, "{\"sub\":\"a\",\"exp\":%lld,\"x\":\"%.*s\"}", NOW + 60, 3100, pad);
    t = hs(big);
    cr_assert_gt(strlen(t), JWT_MAX_LEN);
    cr_assert_eq(verify(k, t, &cl), JWT_ERR_TOO_LARGE);
    jwt_keys_free(k);
}

Test(jwt, base64url_is_strict) {
    uint8_t out[64];
    cr_assert_eq(jwt_b64url_decode("YWJj", 4, out), 3);
    cr_assert_eq(memcmp(out, "abc", 3), 0);
    cr_assert_eq(jwt_b64url_decode("YQ", 2, out), 1);
    cr_assert_eq(jwt_b64url_decode("", 0, out), 0);
    cr_assert_eq(jwt_b64url_decode("YQ==", 4, out), -1, "padding");
    cr_assert_eq(jwt_b64url_decode("Y", 1, out), -1, "1 mod 4");
    cr_assert_eq(jwt_b64url_decode("YR", 2, out), -1, "non-zero trailing bits");
    cr_assert_eq(jwt_b64url_decode("YWI", 3, out), 2);
    cr_assert_eq(jwt_b64url_decode("YWJ", 3, out), -1, "non-zero trailing bits");
    cr_assert_eq(jwt_b64url_decode("a+b/", 4, out), -1, "standard alphabet");
    cr_assert_eq(jwt_b64url_decode("a-b_", 4, out), 3);
    cr_assert_eq(jwt_b64url_decode("ab c", 4, out), -1);
    cr_assert_eq(jwt_b64url_decode("ab\0c", 4, out), -1);
    /* Round trip against OpenSSL's encoder for every length to 48. */
    uint8_t in[48], back[48];
    for (int i = 0; i < 48; i++)
        in[i] = (uint8_t)(i * 37 + 11);
    for (size_t n = 0; n <= sizeof in; n++) {
        char enc[128];
        b64url(in, n, enc);
        char *mine = NULL;
        jwt_b64url_encode(in, n, &mine);
        cr_assert_str_eq(mine, enc);
        free(mine);
        cr_assert_eq(jwt_b64url_decode(enc, strlen(enc), back), (long)n);
        cr_assert_eq(memcmp(in, back, n), 0);
    }
}

Test(jwt, bad_base64_in_any_part_fails) {
    jwt_keys_t *k = keys_hs(NULL, NULL);
    jwt_claims_t cl;
    char t[4096];
    strcpy(t, hs(claims("{\"sub\":\"a\",\"exp\":%lld}", NOW + 60)));
    char *d1 = strchr(t, '.'), *d2 = strrchr(t, '.');
    char m[4200];
    /* '=' padding on the signature */
    snprintf(m, sizeof m, "%s=", t);
    cr_assert_eq(verify(k, m, &cl), JWT_ERR_MALFORMED);
    /* a '+' in the header, payload, signature */
    const char *where[] = {t + 1, d1 + 2, d2 + 2};
    for (int i = 0; i < 3; i++) {
        strcpy(m, t);
        m[where[i] - t] = '+';
        jwt_err_t e = verify(k, m, &cl);
        cr_assert(e == JWT_ERR_MALFORMED || (i == 1 && e == JWT_ERR_SIGNATURE), "part %d: %s", i,
                  jwt_err2str(e));
    }
    jwt_keys_free(k);
}

Test(jwt, claims_rules) {
    jwt_keys_t *k = keys_hs(NULL, NULL);
    jwt_claims_t cl;
    long long e = NOW + 60;
    cr_assert_eq(verify(k, hs(claims("{\"exp\":%lld}", e)), &cl), JWT_ERR_CLAIMS, "no sub");
    cr_assert_eq(verify(k, hs("{\"sub\":\"a\"}"), &cl), JWT_ERR_CLAIMS, "no exp");
    cr_assert_eq(verify(k, hs(claims("{\"sub\":7,\"exp\":%lld}", e)), &cl), JWT_ERR_CLAIMS);
    cr_assert_eq(verify(k, hs(claims("{\"sub\":\"\",\"exp\":%lld}", e)), &cl), JWT_ERR_CLAIMS);
    cr_assert_eq(verify(k, hs(claims("{\"sub\":\"a\\nb\",\"exp\":%lld}", e)), &cl), JWT_ERR_CLAIMS);
    cr_assert_eq(verify(k, hs(claims("{\"sub\":\"a\",\"exp\":\"%lld\"}", e)), &cl), JWT_ERR_CLAIMS);
    cr_assert_eq(verify(k, hs(claims("{\"sub\":\"a\",\"sub\":\"b\",\"exp\":%lld}", e)), &cl),
                 JWT_ERR_MALFORMED, "duplicate claim");
    cr_assert_eq(verify(k, hs(claims("{\"sub\":\"a\\u0000b\",\"exp\":%lld}", e)), &cl),
                 JWT_ERR_MALFORMED, "NUL");
    cr_assert_eq(verify(k, hs(claims("[\"sub\",%lld]", e)), &cl), JWT_ERR_MALFORMED);
    cr_assert_eq(verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld,\"poll\":3}", e)), &cl),
                 JWT_ERR_CLAIMS);
    cr_assert_eq(verify(k,
                        hs_token("{\"alg\":\"HS256\",\"alg\":\"none\"}",
                                 claims("{\"sub\":\"a\",\"exp\":%lld}", e), hs_key, sizeof hs_key),
                        &cl),
                 JWT_ERR_MALFORMED, "duplicate header key");
    cr_assert_eq(verify(k,
                        hs_token("{\"alg\":\"HS256\",\"crit\":[\"b64\"]}",
                                 claims("{\"sub\":\"a\",\"exp\":%lld}", e), hs_key, sizeof hs_key),
                        &cl),
                 JWT_ERR_MALFORMED, "crit");
    /* A poll claim too long to be an id names no poll of ours. */
    cr_assert_eq(
        verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld,\"poll\":\"%0100d\"}", e, 0)), &cl),
        JWT_OK);
    cr_assert(cl.poll_set && cl.poll_long);
    jwt_keys_free(k);
}

Test(jwt, issuer_and_audience_are_checked_when_configured) {
    jwt_keys_t *k = keys_hs("https://login.example", "tally");
    jwt_claims_t cl;
    long long e = NOW + 60;
    const char *iss = "\"iss\":\"https://login.example\"";
    cr_assert_eq(
        verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld,%s,\"aud\":\"tally\"}", e, iss)), &cl),
        JWT_OK);
    cr_assert_eq(
        verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld,%s,\"aud\":[\"x\",\"tally\"]}", e, iss)),
               &cl),
        JWT_OK, "aud array");
    cr_assert_eq(
        verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld,%s,\"aud\":[\"x\",\"y\"]}", e, iss)), &cl),
        JWT_ERR_AUDIENCE);
    cr_assert_eq(
        verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld,%s,\"aud\":\"tally2\"}", e, iss)), &cl),
        JWT_ERR_AUDIENCE);
    cr_assert_eq(verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld,%s}", e, iss)), &cl),
                 JWT_ERR_AUDIENCE, "aud missing");
    cr_assert_eq(verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld,\"aud\":\"tally\"}", e)), &cl),
                 JWT_ERR_ISSUER, "iss missing");
    cr_assert_eq(
        verify(k,
               hs(claims("{\"sub\":\"a\",\"exp\":%lld,\"iss\":\"https://evil\",\"aud\":\"tally\"}",
                         e)),
               &cl),
        JWT_ERR_ISSUER);
    jwt_keys_free(k);
    /* Unset: neither is looked at. */
    k = keys_hs(NULL, "");
    cr_assert_eq(verify(k, hs(claims("{\"sub\":\"a\",\"exp\":%lld,\"aud\":3}", e)), &cl), JWT_OK);
    jwt_keys_free(k);
}

Test(jwt, keys_are_checked_when_loaded) {
    jwt_keys_t *k;
    char err[256];
    cr_assert_eq(jwt_keys_new(hs_key, 31, NULL, 0, NULL, NULL, 30, &k, err, sizeof err),
                 TALLY_ERR_CONFIG);
    cr_assert(strstr(err, "32"), "%s", err);
    cr_assert_eq(jwt_keys_new(NULL, 0, "-----BEGIN PUBLIC KEY-----\nxx\n", 30, NULL, NULL, 30, &k,
                              err, sizeof err),
                 TALLY_ERR_CONFIG);
    /* A P-384 key is not ES256's curve. */
    EVP_PKEY *p384 = EVP_EC_gen("P-384");
    char *pem = ec_public_pem(p384);
    cr_assert_eq(jwt_keys_new(NULL, 0, pem, strlen(pem), NULL, NULL, 30, &k, err, sizeof err),
                 TALLY_ERR_CONFIG);
    free(pem);
    EVP_PKEY_free(p384);
}

Test(jwt, the_modules_signer_agrees_with_openssl) {
    char err[256];
    char *tok = NULL;
    const char *p = claims("{\"sub\":\"carol\",\"exp\":%lld}", NOW + 60);
    cr_assert_eq(jwt_sign_hs256(hs_key, sizeof hs_key, p, &tok, err, sizeof err), TALLY_OK);
    /* Same header as the module's, so the bytes must match exactly. */
    cr_assert_str_eq(tok, hs(p));
    free(tok);
    /* ES256: signatures are randomized; the test's verifier (the module
     * with an OpenSSL-made key) is what can check it. */
    BIO *b = BIO_new(BIO_s_mem());
    cr_assert(PEM_write_bio_PrivateKey(b, ec_key(), NULL, NULL, 0, NULL, NULL));
    char *data;
    long n = BIO_get_mem_data(b, &data);
    cr_assert_eq(jwt_sign_es256(data, (size_t)n, p, &tok, err, sizeof err), TALLY_OK, "%s", err);
    BIO_free(b);
    jwt_keys_t *k = keys_es(0);
    jwt_claims_t cl;
    cr_assert_eq(verify(k, tok, &cl), JWT_OK);
    cr_assert_str_eq(cl.sub, "carol");
    free(tok);
    jwt_keys_free(k);
}

/* The vote path's budget: an HS256 verification is a few microseconds. */
Test(jwt, hs256_verification_is_cheap) {
    jwt_keys_t *k = keys_hs(NULL, NULL);
    jwt_claims_t cl;
    char t[4096];
    strcpy(t, hs(claims("{\"sub\":\"voter-123456\",\"exp\":%lld,\"poll\":\"final\"}", NOW + 60)));
    int n = 20000;
    uint64_t t0 = mono_ns();
    for (int i = 0; i < n; i++)
        cr_assert_eq(jwt_verify(k, t, strlen(t), NOW, &cl, NULL, 0), JWT_OK);
    double us = (double)(mono_ns() - t0) / n / 1000.0;
    cr_log_info("HS256 verify: %.2f us", us);
    printf("jwt: HS256 verify %.2f us per token\n", us);
    jwt_keys_free(k);
}
