/* Voter tokens: JSON Web Tokens (RFC 7519) in the JWS compact form (RFC
 * 7515), signed by the operator's login service, verified by ingest. A pure
 * module: bytes and keys in, claims or a typed error out; no I/O but the key
 * files jwt_keys_load() reads. Crypto is OpenSSL's (HMAC, ECDSA); base64url
 * and the JSON (jansson) are parsed strictly here.
 *
 * What a token must be to pass jwt_verify():
 * - at most JWT_MAX_LEN bytes: three base64url parts "H.P.S" (RFC 4648 sec.
 *   5 alphabet, no padding, no other byte, canonical trailing bits);
 * - H: a JSON object (strict: UTF-8, no duplicate keys, no \u0000) whose
 *   "alg" is exactly one of the algorithms the keys configure: "HS256" when
 *   auth.jwt_hs256_key_file is set, "ES256" when
 *   auth.jwt_es256_public_key_file is set. "none" and anything else are
 *   refused, and each algorithm is checked with its own key only, so an
 *   HS256 token "signed" with the ES256 public key's bytes fails (the
 *   classic confusion). "typ", if present, is "JWT"; "crit" is refused (no
 *   extension is understood);
 * - S: HMAC-SHA256 (32 bytes, compared in constant time) or ECDSA P-256
 *   with SHA-256 as raw r||s (64 bytes, RFC 7518 sec. 3.4) over "H.P";
 * - P: a JSON object (same strictness) with
 *     "sub"  required, a string that is a valid voter id (common/ids.h);
 *     "exp"  required (a token without an end would be a password): a
 *            number; refused once now >= exp + leeway;
 *     "nbf"  optional number; refused while now + leeway < nbf;
 *     "iat"  optional number; refused when now + leeway < iat (issued in
 *            the future: a clock or a forger's mistake);
 *     "iss"  checked (equal) when auth.jwt_issuer is set;
 *     "aud"  a string or an array of strings, one of which equals
 *            auth.jwt_audience, when that is set;
 *     "poll" optional string: the poll the token is for (the route compares
 *            it with the vote's poll); other claims are ignored.
 *
 * @locality any thread: a jwt_keys_t is read-only once loaded. */
#ifndef TALLY_JWT_H
#define TALLY_JWT_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/err.h"
#include "common/ids.h"

#define JWT_MAX_LEN 4096
/* A shared secret shorter than this is refused: HS256's key must be at least
 * the hash's size (RFC 7518 sec. 3.2). */
#define JWT_HS256_MIN_KEY 32

typedef enum {
    JWT_OK = 0,
    JWT_ERR_TOO_LARGE,     /* over JWT_MAX_LEN */
    JWT_ERR_MALFORMED,     /* not three base64url parts of JSON objects */
    JWT_ERR_ALG,           /* alg missing, "none" or not configured */
    JWT_ERR_SIGNATURE,     /* the signature does not verify */
    JWT_ERR_CLAIMS,        /* sub or exp missing or ill-typed, bad typ/crit */
    JWT_ERR_EXPIRED,       /* now >= exp + leeway */
    JWT_ERR_NOT_YET_VALID, /* nbf or iat in the future beyond leeway */
    JWT_ERR_ISSUER,        /* iss differs from auth.jwt_issuer */
    JWT_ERR_AUDIENCE,      /* aud does not name auth.jwt_audience */
} jwt_err_t;

/* A stable short name ("expired", "bad_signature", ...). */
const char *jwt_err2str(jwt_err_t e);

typedef enum { JWT_ALG_HS256 = 1, JWT_ALG_ES256 = 2 } jwt_alg_t;

/* The verifier's keys and rules (auth.*). Opaque; free with jwt_keys_free. */
typedef struct jwt_keys_s jwt_keys_t;

/* Reads auth.jwt_hs256_key_file (raw bytes, >= JWT_HS256_MIN_KEY) and
 * auth.jwt_es256_public_key_file (PEM SubjectPublicKeyInfo of a P-256 key),
 * whichever are set, and copies issuer, audience and leeway. *out is NULL
 * when neither key is set (no poll can use jwt then). TALLY_OK, or
 * TALLY_ERR_CONFIG with errstr naming the key and the file. */
tally_err_t jwt_keys_load(const tally_config_t *c, jwt_keys_t **out, char *errstr, size_t esz);
/* The same from memory, for tests and the fuzzer: either key may be NULL;
 * issuer/audience NULL or "" for unchecked. */
tally_err_t jwt_keys_new(const uint8_t *hs_key, size_t hs_len, const char *es_pem, size_t pem_len,
                         const char *issuer, const char *audience, int leeway_s, jwt_keys_t **out,
                         char *errstr, size_t esz);
void jwt_keys_free(jwt_keys_t *k);
/* The algorithms k accepts (JWT_ALG_* bits). */
unsigned jwt_keys_algs(const jwt_keys_t *k);

typedef struct {
    char sub[VOTER_MAX_LEN + 1]; /* NUL-terminated; sub_len bytes */
    size_t sub_len;
    char poll[ID_MAX_LEN + 1]; /* "" when the token names no poll */
    size_t poll_len;
    int poll_set;  /* a "poll" claim was present (poll may still be any string) */
    int poll_long; /* the claim is not an id (over ID_MAX_LEN): names no poll of ours */
    double exp;
    jwt_alg_t alg;
} jwt_claims_t;

/* Verifies tok[0..len) at now_s (seconds since the epoch) and fills *cl.
 * JWT_OK, or the first rule broken, with why (a short printable-ASCII
 * sentence, never token bytes) for the WWW-Authenticate description. */
jwt_err_t jwt_verify(const jwt_keys_t *k, const char *tok, size_t len, int64_t now_s,
                     jwt_claims_t *cl, char *why, size_t why_size);

/* Signing, for `tally token issue` and tally-bench (never on the vote path).
 * claims_json is the payload object, compact JSON. Appends the token to out.
 * HS256 with key[0..key_len); ES256 with a PEM private key (P-256).
 * TALLY_OK or TALLY_ERR_CONFIG (a key that is not one) with errstr. */
tally_err_t jwt_sign_hs256(const uint8_t *key, size_t key_len, const char *claims_json, char **out,
                           char *errstr, size_t esz);
tally_err_t jwt_sign_es256(const char *pem, size_t pem_len, const char *claims_json, char **out,
                           char *errstr, size_t esz);

/* base64url without padding (exposed for tests and the fuzzer). decode:
 * the decoded length, or -1 for any byte outside the alphabet, a length of
 * 1 mod 4 or non-zero trailing bits; out holds >= len * 3 / 4 bytes. */
long jwt_b64url_decode(const char *in, size_t len, uint8_t *out);
/* Appends the encoding of in[0..len) to *out (a malloc'd string grown with
 * xrealloc; NULL to start). */
void jwt_b64url_encode(const uint8_t *in, size_t len, char **out);

/* Reads a whole small file (key files): *data malloc'd (NUL-terminated,
 * *len without it). TALLY_OK, or TALLY_ERR_CONFIG with errstr naming key
 * and path. */
tally_err_t jwt_read_key_file(const char *key, const char *path, size_t max, uint8_t **data,
                              size_t *len, char *errstr, size_t esz);

#endif
