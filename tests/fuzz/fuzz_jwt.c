/* common/jwt.c: jwt_verify() of arbitrary bytes, and the base64url codec.
 *
 * Two fixed verifiers, built once: HS256 only (with issuer and audience
 * rules) and HS256 + ES256 (no iss/aud rules), at a fixed clock. Properties:
 * - jwt_verify() returns a known jwt_err_t; a refusal's description is a
 *   non-empty printable-ASCII sentence without '"' or '\\' (it is put into
 *   a WWW-Authenticate header as a quoted string);
 * - an acceptance has a sub that is a valid voter id, NUL-terminated, an
 *   alg the verifier has, and came from at most JWT_MAX_LEN bytes with
 *   exactly two dots; a poll claim that fits is a string of poll_len bytes;
 * - the HS256-only verifier accepts nothing the dual one refuses when the
 *   token's claims pass both rule sets (the extra key adds an algorithm, it
 *   loosens nothing else): checked as "accepted by HS-only implies alg HS256";
 * - base64url: a successful decode re-encodes to exactly the input
 *   (one encoding per value), and every decode writes at most len*3/4.
 * Signature first means random bytes rarely reach the claims: so an input
 * with exactly one '.' is also taken as "header.payload" and signed here
 * (OpenSSL's HMAC(), not the module), and the signed token must obey the
 * same properties, and fail its signature only when its header says ES256.
 * The seeds (corpus/jwt/) hold tokens signed with the harness's HS256 key:
 * valid, expired, alg none, bad signature, padded, ES256-headed. */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>

#include "common/jwt.h"
#include "common/util.h"
#include "fuzz.h"

#define NOW 1800000000LL

/* 32 bytes: "fuzz-hs256-key-0123456789abcdefg" */
static const uint8_t hs_key[] = "fuzz-hs256-key-0123456789abcdefg";
static const char es_pub[] = "-----BEGIN PUBLIC KEY-----\n"
                             "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZ4tyUFFD89wwxM6K0HryGMUYqM8i\n"
                             "9hpCoKRX1WXi07qVVVa0JwDpiktV46aDXc75+IhJPwHwMaJc6yOjfiGv5A==\n"
                             "-----END PUBLIC KEY-----\n";

static jwt_keys_t *hs_only, *dual;

static void setup(void) {
    char err[256];
    FUZZ_CHECK(jwt_keys_new(hs_key, 32, NULL, 0, "fuzz-iss", "fuzz-aud", 30, &hs_only, err,
                            sizeof err) == TALLY_OK);
    FUZZ_CHECK(jwt_keys_new(hs_key, 32, es_pub, sizeof es_pub - 1, NULL, NULL, 30, &dual, err,
                            sizeof err) == TALLY_OK);
}

static void check(const jwt_keys_t *k, const uint8_t *data, size_t size, jwt_err_t e,
                  const jwt_claims_t *cl, const char *why) {
    FUZZ_CHECK(e >= JWT_OK && e <= JWT_ERR_AUDIENCE);
    FUZZ_CHECK(strcmp(jwt_err2str(e), "?") != 0);
    if (e != JWT_OK) {
        size_t n = strlen(why);
        FUZZ_CHECK(n > 0);
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK(why[i] >= 0x20 && why[i] < 0x7f && why[i] != '"' && why[i] != '\\');
        return;
    }
    FUZZ_CHECK(size <= JWT_MAX_LEN);
    int dots = 0;
    for (size_t i = 0; i < size; i++)
        dots += data[i] == '.';
    FUZZ_CHECK(dots == 2);
    FUZZ_CHECK(cl->sub_len == strlen(cl->sub) && voter_valid(cl->sub, cl->sub_len));
    FUZZ_CHECK(cl->alg & jwt_keys_algs(k));
    FUZZ_CHECK(!cl->poll_set || cl->poll_long || cl->poll_len == strlen(cl->poll));
}

static void check_b64(const uint8_t *data, size_t size) {
    if (size > 3000)
        size = 3000;
    uint8_t out[3000];
    long n = jwt_b64url_decode((const char *)data, size, out);
    FUZZ_CHECK(n >= -1 && n <= (long)(size * 3 / 4));
    if (n < 0)
        return;
    char *enc = NULL;
    jwt_b64url_encode(out, (size_t)n, &enc);
    FUZZ_CHECK(strlen(enc) == size && !memcmp(enc, data, size));
    free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!hs_only)
        setup();
    jwt_claims_t cl;
    char why[128];
    why[0] = '\0';
    jwt_err_t e = jwt_verify(hs_only, (const char *)data, size, NOW, &cl, why, sizeof why);
    check(hs_only, data, size, e, &cl, why);
    if (e == JWT_OK)
        FUZZ_CHECK(cl.alg == JWT_ALG_HS256);
    why[0] = '\0';
    e = jwt_verify(dual, (const char *)data, size, NOW, &cl, why, sizeof why);
    check(dual, data, size, e, &cl, why);
    check_b64(data, size);
    /* "H.P" signed with the right key: the claims path. */
    int dots = 0;
    for (size_t i = 0; i < size; i++)
        dots += data[i] == '.';
    if (dots == 1 && size < 3000 && !memchr(data, 0, size)) { /* the token is a C string here */
        unsigned char mac[32];
        unsigned int mlen = 0;
        FUZZ_CHECK(HMAC(EVP_sha256(), hs_key, 32, data, size, mac, &mlen) && mlen == 32);
        char *tok = malloc(size + 2);
        FUZZ_CHECK(tok);
        memcpy(tok, data, size);
        tok[size] = '.';
        tok[size + 1] = '\0';
        jwt_b64url_encode(mac, 32, &tok);
        size_t tl = strlen(tok);
        why[0] = '\0';
        e = jwt_verify(dual, tok, tl, NOW, &cl, why, sizeof why);
        check(dual, (const uint8_t *)tok, tl, e, &cl, why);
        FUZZ_CHECK(e != JWT_ERR_SIGNATURE || cl.alg == JWT_ALG_ES256); /* an HMAC is no ECDSA */
        free(tok);
    }
    return 0;
}
