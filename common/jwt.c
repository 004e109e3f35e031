#include "common/jwt.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/json.h"
#include "common/util.h"

#define HS256_LEN 32
#define ES256_LEN 64
/* A PEM public key is a few hundred bytes; a private one under 1 KiB. */
#define KEY_FILE_MAX 65536

struct jwt_keys_s {
    EVP_MAC_CTX *hs; /* keyed once; each verification works on a dup */
    EVP_PKEY *es;
    char *issuer, *audience; /* NULL: unchecked */
    int leeway_s;
};

const char *jwt_err2str(jwt_err_t e) {
    switch (e) {
    case JWT_OK: return "ok";
    case JWT_ERR_TOO_LARGE: return "too_large";
    case JWT_ERR_MALFORMED: return "malformed";
    case JWT_ERR_ALG: return "bad_alg";
    case JWT_ERR_SIGNATURE: return "bad_signature";
    case JWT_ERR_CLAIMS: return "bad_claims";
    case JWT_ERR_EXPIRED: return "expired";
    case JWT_ERR_NOT_YET_VALID: return "not_yet_valid";
    case JWT_ERR_ISSUER: return "bad_issuer";
    case JWT_ERR_AUDIENCE: return "bad_audience";
    }
    return "?";
}

static void seterr(char *errstr, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *errstr, size_t size, const char *fmt, ...) {
    if (!errstr || !size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errstr, size, fmt, ap);
    va_end(ap);
}

/* ---- base64url (RFC 4648 sec. 5), no padding ---- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* 0-63 for the alphabet, X (0xff) for every other byte ('=' included). */
#define X 0xff
static const uint8_t b64_value[256] = {
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  62, X,  X,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, X,  X,  X,  X,  X,  X,  X,  0,  1,  2,  3,  4,  5,  6,
    7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, X,  X,  X,  X,  63,
    X,  26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48,
    49, 50, 51, X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
    X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,  X,
};
#undef X

long jwt_b64url_decode(const char *in, size_t len, uint8_t *out) {
    const uint8_t *t = b64_value;
    if (len % 4 == 1)
        return -1;
    size_t o = 0, i = 0;
    for (; i + 4 <= len; i += 4) {
        uint8_t a = t[(unsigned char)in[i]], b = t[(unsigned char)in[i + 1]],
                c = t[(unsigned char)in[i + 2]], d = t[(unsigned char)in[i + 3]];
        if ((a | b | c | d) & 0xc0)
            return -1;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | d;
        out[o++] = (uint8_t)(v >> 16);
        out[o++] = (uint8_t)(v >> 8);
        out[o++] = (uint8_t)v;
    }
    size_t rest = len - i;
    if (rest) {
        uint8_t a = t[(unsigned char)in[i]], b = t[(unsigned char)in[i + 1]];
        uint8_t c = rest == 3 ? t[(unsigned char)in[i + 2]] : 0;
        if ((a | b | c) & 0xc0)
            return -1;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6;
        /* The bits past the last whole byte must be zero: one encoding per
         * value, so a token cannot be altered without changing its bytes. */
        if (rest == 2 ? (v & 0xffff) : (v & 0xff))
            return -1;
        out[o++] = (uint8_t)(v >> 16);
        if (rest == 3)
            out[o++] = (uint8_t)(v >> 8);
    }
    return (long)o;
}

void jwt_b64url_encode(const uint8_t *in, size_t len, char **out) {
    size_t have = *out ? strlen(*out) : 0;
    *out = xrealloc(*out, have + (len + 2) / 3 * 4 + 1);
    char *p = *out + have;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *p++ = b64_alphabet[v >> 18];
        *p++ = b64_alphabet[(v >> 12) & 63];
        *p++ = b64_alphabet[(v >> 6) & 63];
        *p++ = b64_alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *p++ = b64_alphabet[v >> 18];
        *p++ = b64_alphabet[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        *p++ = b64_alphabet[v >> 18];
        *p++ = b64_alphabet[(v >> 12) & 63];
        *p++ = b64_alphabet[(v >> 6) & 63];
    }
    *p = '\0';
}

/* ---- keys ---- */

tally_err_t jwt_read_key_file(const char *key, const char *path, size_t max, uint8_t **data,
                              size_t *len, char *errstr, size_t esz) {
    *data = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        seterr(errstr, esz, "%s %s: %s", key, path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return TALLY_ERR_CONFIG;
    }
    if (!S_ISREG(st.st_mode) || (size_t)st.st_size > max) {
        seterr(errstr, esz, "%s %s: not a regular file of at most %zu bytes", key, path, max);
        close(fd);
        return TALLY_ERR_CONFIG;
    }
    uint8_t *b = xmalloc((size_t)st.st_size + 1);
    size_t n = 0;
    while (n < (size_t)st.st_size) {
        ssize_t r = read(fd, b + n, (size_t)st.st_size - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            seterr(errstr, esz, "%s %s: cannot read: %s", key, path,
                   r < 0 ? strerror(errno) : "short read");
            free(b);
            close(fd);
            return TALLY_ERR_CONFIG;
        }
        n += (size_t)r;
    }
    close(fd);
    b[n] = '\0';
    *data = b;
    *len = n;
    return TALLY_OK;
}

static EVP_MAC_CTX *hmac_ctx_new(const uint8_t *key, size_t len) {
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!mac)
        return NULL;
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(mac);
    EVP_MAC_free(mac); /* the ctx holds its own reference */
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
                           OSSL_PARAM_construct_end()};
    if (!ctx || !EVP_MAC_init(ctx, key, len, params)) {
        EVP_MAC_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* HMAC-SHA256 of data under the keyed template (not modified: a dup does the
 * work, so threads share the template). 0 or -1. */
static int hmac_with(const EVP_MAC_CTX *tmpl, const void *data, size_t len,
                     uint8_t out[HS256_LEN]) {
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_dup(tmpl);
    size_t olen = 0;
    int ok = ctx && EVP_MAC_update(ctx, data, len) && EVP_MAC_final(ctx, out, &olen, HS256_LEN) &&
             olen == HS256_LEN;
    EVP_MAC_CTX_free(ctx);
    return ok ? 0 : -1;
}

static int is_p256(EVP_PKEY *pk) {
    char group[64];
    size_t glen = 0;
    return EVP_PKEY_is_a(pk, "EC") &&
           EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                          &glen) &&
           !strcmp(group, "prime256v1");
}

tally_err_t jwt_keys_new(const uint8_t *hs_key, size_t hs_len, const char *es_pem, size_t pem_len,
                         const char *issuer, const char *audience, int leeway_s, jwt_keys_t **out,
                         char *errstr, size_t esz) {
    *out = NULL;
    jwt_keys_t *k = xcalloc(1, sizeof *k);
    tally_err_t rc = TALLY_ERR_CONFIG;
    if (hs_key) {
        if (hs_len < JWT_HS256_MIN_KEY) {
            seterr(errstr, esz, "auth.jwt_hs256_key_file: the key is %zu bytes, at least %d needed",
                   hs_len, JWT_HS256_MIN_KEY);
            goto out;
        }
        if (!(k->hs = hmac_ctx_new(hs_key, hs_len))) {
            seterr(errstr, esz, "auth.jwt_hs256_key_file: OpenSSL refused the HMAC key");
            goto out;
        }
    }
    if (es_pem) {
        BIO *bio = BIO_new_mem_buf(es_pem, (int)pem_len);
        k->es = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        if (!k->es || !is_p256(k->es)) {
            seterr(errstr, esz,
                   "auth.jwt_es256_public_key_file: not a PEM public key of curve P-256 "
                   "(openssl ec -pubout)");
            goto out;
        }
    }
    if (issuer && *issuer)
        k->issuer = xstrdup(issuer);
    if (audience && *audience)
        k->audience = xstrdup(audience);
    k->leeway_s = leeway_s;
    rc = TALLY_OK;
out:
    if (rc != TALLY_OK)
        jwt_keys_free(k);
    else
        *out = k;
    return rc;
}

tally_err_t jwt_keys_load(const tally_config_t *c, jwt_keys_t **out, char *errstr, size_t esz) {
    *out = NULL;
    const char *hs = c->auth_jwt_hs256_key_file, *es = c->auth_jwt_es256_public_key_file;
    if ((!hs || !*hs) && (!es || !*es))
        return TALLY_OK;
    uint8_t *hk = NULL, *pem = NULL;
    size_t hlen = 0, plen = 0;
    tally_err_t rc = TALLY_OK;
    if (hs && *hs)
        rc =
            jwt_read_key_file("auth.jwt_hs256_key_file", hs, KEY_FILE_MAX, &hk, &hlen, errstr, esz);
    if (rc == TALLY_OK && es && *es)
        rc = jwt_read_key_file("auth.jwt_es256_public_key_file", es, KEY_FILE_MAX, &pem, &plen,
                               errstr, esz);
    if (rc == TALLY_OK) {
        char why[256];
        rc = jwt_keys_new(hk, hlen, (const char *)pem, plen, c->auth_jwt_issuer,
                          c->auth_jwt_audience, c->auth_jwt_leeway_s, out, why, sizeof why);
        if (rc != TALLY_OK)
            seterr(errstr, esz, "%s (%s)", why, hk && strstr(why, "hs256") ? hs : es);
    }
    if (hk)
        OPENSSL_cleanse(hk, hlen);
    free(hk);
    free(pem);
    return rc;
}

void jwt_keys_free(jwt_keys_t *k) {
    if (!k)
        return;
    EVP_MAC_CTX_free(k->hs);
    EVP_PKEY_free(k->es);
    free(k->issuer);
    free(k->audience);
    free(k);
}

unsigned jwt_keys_algs(const jwt_keys_t *k) {
    return (k && k->hs ? JWT_ALG_HS256 : 0) | (k && k->es ? JWT_ALG_ES256 : 0);
}

/* ---- signatures ---- */

/* ECDSA's raw r||s (JOSE) into the DER ECDSA-Sig-Value OpenSSL verifies.
 * Returns the DER length (der malloc'd by OpenSSL) or -1. */
static int es256_raw_to_der(const uint8_t raw[ES256_LEN], unsigned char **der) {
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(raw, 32, NULL), *s = BN_bin2bn(raw + 32, 32, NULL);
    int n = -1;
    if (sig && r && s && ECDSA_SIG_set0(sig, r, s)) {
        r = s = NULL; /* owned by sig */
        *der = NULL;
        n = i2d_ECDSA_SIG(sig, der);
    }
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    return n > 0 ? n : -1;
}

static int es256_verify(EVP_PKEY *pk, const char *msg, size_t len, const uint8_t raw[ES256_LEN]) {
    unsigned char *der = NULL;
    int dlen = es256_raw_to_der(raw, &der);
    if (dlen < 0)
        return 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pk) == 1 &&
             EVP_DigestVerify(md, der, (size_t)dlen, (const unsigned char *)msg, len) == 1;
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    return ok;
}

/* ---- verification ---- */

/* Decodes one part and parses it as a strict JSON object, or NULL. */
static json_t *part_json(const char *p, size_t n) {
    uint8_t buf[JWT_MAX_LEN];
    long dl = jwt_b64url_decode(p, n, buf);
    if (dl <= 0)
        return NULL;
    json_error_t je;
    json_t *j = json_loadb((const char *)buf, (size_t)dl, JSON_REJECT_DUPLICATES, &je);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* A NumericDate claim: 0 absent, 1 present (*v), -1 not a number. */
static int num_claim(const json_t *o, const char *name, double *v) {
    const json_t *j = json_object_get(o, name);
    if (!j)
        return 0;
    if (!json_is_number(j))
        return -1;
    *v = json_number_value(j);
    return 1;
}

static int str_eq(const json_t *j, const char *s) {
    return json_is_string(j) && json_string_length(j) == strlen(s) &&
           !memcmp(json_string_value(j), s, json_string_length(j));
}

static jwt_err_t fail(jwt_err_t e, char *why, size_t wsz, const char *msg) {
    seterr(why, wsz, "%s", msg);
    return e;
}

jwt_err_t jwt_verify(const jwt_keys_t *k, const char *tok, size_t len, int64_t now_s,
                     jwt_claims_t *cl, char *why, size_t wsz) {
    json_t *hdr = NULL, *pl = NULL;
    jwt_err_t rc;
    memset(cl, 0, sizeof *cl);
    if (len > JWT_MAX_LEN)
        return fail(JWT_ERR_TOO_LARGE, why, wsz, "the token is larger than 4096 bytes");
    const char *d1 = memchr(tok, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - tok)) : NULL;
    if (!d1 || !d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - tok)))
        return fail(JWT_ERR_MALFORMED, why, wsz, "not a compact JWS (three dot-separated parts)");
    size_t hlen = (size_t)(d1 - tok), plen = (size_t)(d2 - d1 - 1),
           slen = len - (size_t)(d2 + 1 - tok);
    json_scope_begin(); /* both trees live within this call; the claims are copied */
    if (!(hdr = part_json(tok, hlen))) {
        rc = fail(JWT_ERR_MALFORMED, why, wsz, "the header is not base64url of a JSON object");
        goto out;
    }
    const json_t *alg = json_object_get(hdr, "alg"), *typ = json_object_get(hdr, "typ");
    unsigned have = jwt_keys_algs(k);
    if (str_eq(alg, "HS256") && (have & JWT_ALG_HS256))
        cl->alg = JWT_ALG_HS256;
    else if (str_eq(alg, "ES256") && (have & JWT_ALG_ES256))
        cl->alg = JWT_ALG_ES256;
    else {
        rc = fail(JWT_ERR_ALG, why, wsz,
                  have == (JWT_ALG_HS256 | JWT_ALG_ES256) ? "alg must be HS256 or ES256"
                  : have == JWT_ALG_ES256                 ? "alg must be ES256"
                                                          : "alg must be HS256");
        goto out;
    }
    if ((typ && !str_eq(typ, "JWT")) || json_object_get(hdr, "crit")) {
        rc = fail(JWT_ERR_MALFORMED, why, wsz, "typ must be JWT and crit is not supported");
        goto out;
    }
    /* The signature before the claims: nothing of an unsigned payload is
     * believed, not even enough to phrase an error. */
    uint8_t sig[JWT_MAX_LEN];
    long sl = jwt_b64url_decode(d2 + 1, slen, sig);
    if (sl < 0) {
        rc = fail(JWT_ERR_MALFORMED, why, wsz, "the signature is not base64url");
        goto out;
    }
    size_t signed_len = (size_t)(d2 - tok);
    int good = 0;
    if (cl->alg == JWT_ALG_HS256) {
        uint8_t mac[HS256_LEN];
        good = sl == HS256_LEN && hmac_with(k->hs, tok, signed_len, mac) == 0 &&
               CRYPTO_memcmp(mac, sig, HS256_LEN) == 0;
    } else {
        good = sl == ES256_LEN && es256_verify(k->es, tok, signed_len, sig);
    }
    if (!good) {
        rc = fail(JWT_ERR_SIGNATURE, why, wsz, "the signature does not verify");
        goto out;
    }
    if (!(pl = part_json(d1 + 1, plen))) {
        rc = fail(JWT_ERR_MALFORMED, why, wsz, "the payload is not base64url of a JSON object");
        goto out;
    }
    const json_t *sub = json_object_get(pl, "sub");
    if (!json_is_string(sub) || !voter_valid(json_string_value(sub), json_string_length(sub))) {
        rc = fail(JWT_ERR_CLAIMS, why, wsz,
                  "sub is required: a string of 1-256 bytes without control characters");
        goto out;
    }
    double exp = 0, nbf = 0, iat = 0;
    int has_exp = num_claim(pl, "exp", &exp), has_nbf = num_claim(pl, "nbf", &nbf),
        has_iat = num_claim(pl, "iat", &iat);
    if (has_exp != 1 || has_nbf < 0 || has_iat < 0) {
        rc = fail(JWT_ERR_CLAIMS, why, wsz, "exp is required; exp, nbf and iat are numbers");
        goto out;
    }
    double now = (double)now_s, lee = (double)k->leeway_s;
    if (now >= exp + lee) {
        rc = fail(JWT_ERR_EXPIRED, why, wsz, "the token has expired");
        goto out;
    }
    if ((has_nbf && now + lee < nbf) || (has_iat && now + lee < iat)) {
        rc = fail(JWT_ERR_NOT_YET_VALID, why, wsz, "the token is not valid yet");
        goto out;
    }
    if (k->issuer && !str_eq(json_object_get(pl, "iss"), k->issuer)) {
        rc = fail(JWT_ERR_ISSUER, why, wsz, "iss is not the configured issuer");
        goto out;
    }
    if (k->audience) {
        const json_t *aud = json_object_get(pl, "aud");
        int found = str_eq(aud, k->audience);
        for (size_t i = 0; !found && json_is_array(aud) && i < json_array_size(aud); i++)
            found = str_eq(json_array_get(aud, i), k->audience);
        if (!found) {
            rc = fail(JWT_ERR_AUDIENCE, why, wsz, "aud does not name the configured audience");
            goto out;
        }
    }
    const json_t *poll = json_object_get(pl, "poll");
    if (poll) {
        if (!json_is_string(poll)) {
            rc = fail(JWT_ERR_CLAIMS, why, wsz, "poll must be a string");
            goto out;
        }
        cl->poll_set = 1;
        size_t n = json_string_length(poll);
        if (n > ID_MAX_LEN) {
            cl->poll_long = 1;
        } else {
            memcpy(cl->poll, json_string_value(poll), n);
            cl->poll[n] = '\0';
            cl->poll_len = n;
        }
    }
    cl->sub_len = json_string_length(sub);
    memcpy(cl->sub, json_string_value(sub), cl->sub_len);
    cl->sub[cl->sub_len] = '\0';
    cl->exp = exp;
    rc = JWT_OK;
out:
    json_decref(hdr);
    json_decref(pl);
    json_scope_end();
    return rc;
}

/* ---- signing ---- */

/* "b64(header).b64(claims)" into *out. */
static void signing_input(const char *alg, const char *claims, char **out) {
    char hdr[64];
    snprintf(hdr, sizeof hdr, "{\"alg\":\"%s\",\"typ\":\"JWT\"}", alg);
    *out = NULL;
    jwt_b64url_encode((const uint8_t *)hdr, strlen(hdr), out);
    size_t n = strlen(*out);
    *out = xrealloc(*out, n + 2);
    (*out)[n] = '.';
    (*out)[n + 1] = '\0';
    jwt_b64url_encode((const uint8_t *)claims, strlen(claims), out);
}

static void append_sig(char **out, const uint8_t *sig, size_t n) {
    size_t len = strlen(*out);
    *out = xrealloc(*out, len + 2);
    (*out)[len] = '.';
    (*out)[len + 1] = '\0';
    jwt_b64url_encode(sig, n, out);
}

tally_err_t jwt_sign_hs256(const uint8_t *key, size_t key_len, const char *claims, char **out,
                           char *errstr, size_t esz) {
    *out = NULL;
    EVP_MAC_CTX *ctx = key_len ? hmac_ctx_new(key, key_len) : NULL;
    uint8_t mac[HS256_LEN];
    char *tok = NULL;
    signing_input("HS256", claims, &tok);
    int ok = ctx && hmac_with(ctx, tok, strlen(tok), mac) == 0;
    EVP_MAC_CTX_free(ctx);
    if (!ok) {
        free(tok);
        seterr(errstr, esz, "HMAC-SHA256 failed (an empty key?)");
        return TALLY_ERR_CONFIG;
    }
    append_sig(&tok, mac, HS256_LEN);
    *out = tok;
    return TALLY_OK;
}

tally_err_t jwt_sign_es256(const char *pem, size_t pem_len, const char *claims, char **out,
                           char *errstr, size_t esz) {
    *out = NULL;
    BIO *bio = BIO_new_mem_buf(pem, (int)pem_len);
    EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    tally_err_t rc = TALLY_ERR_CONFIG;
    char *tok = NULL;
    EVP_MD_CTX *md = NULL;
    unsigned char der[128];
    size_t dlen = sizeof der;
    ECDSA_SIG *sig = NULL;
    if (!pk || !is_p256(pk)) {
        seterr(errstr, esz,
               "not a PEM private key of curve P-256 (openssl ecparam -genkey "
               "-name prime256v1 -noout)");
        goto out;
    }
    signing_input("ES256", claims, &tok);
    md = EVP_MD_CTX_new();
    const unsigned char *p = der;
    if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk) != 1 ||
        EVP_DigestSign(md, der, &dlen, (const unsigned char *)tok, strlen(tok)) != 1 ||
        !(sig = d2i_ECDSA_SIG(NULL, &p, (long)dlen))) {
        seterr(errstr, esz, "ECDSA signing failed");
        goto out;
    }
    uint8_t raw[ES256_LEN];
    if (BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32) != 32 ||
        BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32) != 32) {
        seterr(errstr, esz, "ECDSA signature out of range");
        goto out;
    }
    append_sig(&tok, raw, ES256_LEN);
    *out = tok;
    tok = NULL;
    rc = TALLY_OK;
out:
    free(tok);
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pk);
    return rc;
}
