#include "common/voter_hmac.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "common/jwt.h"
#include "common/util.h"

struct voter_hmac_s {
    EVP_MAC_CTX *tmpl; /* keyed once; every tag is computed on a dup */
};

voter_hmac_t *voter_hmac_new(const uint8_t *key, size_t len) {
    if (len < VOTER_HMAC_MIN_KEY)
        return NULL;
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    tally_assert(mac);
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(mac);
    EVP_MAC_free(mac);
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
                           OSSL_PARAM_construct_end()};
    tally_assert(ctx && EVP_MAC_init(ctx, key, len, params));
    voter_hmac_t *h = xcalloc(1, sizeof *h);
    h->tmpl = ctx;
    return h;
}

tally_err_t voter_hmac_load(const char *path, voter_hmac_t **out, char *errstr, size_t esz) {
    *out = NULL;
    if (!path || !*path)
        return TALLY_OK;
    uint8_t *key;
    size_t len;
    tally_err_t rc =
        jwt_read_key_file("auth.voter_id_key_file", path, 65536, &key, &len, errstr, esz);
    if (rc != TALLY_OK)
        return rc;
    *out = voter_hmac_new(key, len);
    OPENSSL_cleanse(key, len);
    free(key);
    if (!*out) {
        snprintf(errstr, esz, "auth.voter_id_key_file %s: the key is %zu bytes, at least %d needed",
                 path, len, VOTER_HMAC_MIN_KEY);
        return TALLY_ERR_CONFIG;
    }
    return TALLY_OK;
}

void voter_hmac_free(voter_hmac_t *h) {
    if (!h)
        return;
    EVP_MAC_CTX_free(h->tmpl);
    free(h);
}

void voter_hmac(const voter_hmac_t *h, const char *voter, size_t len,
                uint8_t out[RECORD_VOTER_HMAC_LEN]) {
    uint8_t full[32];
    size_t olen = 0;
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_dup(h->tmpl);
    tally_assert(ctx && EVP_MAC_update(ctx, (const unsigned char *)voter, len) &&
                 EVP_MAC_final(ctx, full, &olen, sizeof full) && olen == sizeof full);
    EVP_MAC_CTX_free(ctx);
    memcpy(out, full, RECORD_VOTER_HMAC_LEN);
}
