/* The admin API's token check (ingest/admin.c): only the exact token passes,
 * whatever the presented length, and the token file's rules. */
#include <criterion/criterion.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/config.h"
#include "ingest/admin.h"

static const char token[] = "abc-123-secret";

static int auth(const char *header) {
    unsigned char want[32];
    SHA256((const unsigned char *)token, strlen(token), want);
    return admin_authorized(want, header, header ? strlen(header) : 0);
}

Test(admin, only_the_exact_bearer_token_passes) {
    cr_assert(auth("Bearer abc-123-secret"));
    cr_assert(auth("bearer   abc-123-secret  "), "scheme is case-insensitive, blanks trimmed");
    const char *wrong[] = {NULL,
                           "",
                           "Bearer",
                           "Bearer ",
                           "Bearer abc",
                           "Bearer abc-123-secre",
                           "Bearer abc-123-secretX",
                           "Bearer abc-123-secret abc",
                           "Basic abc-123-secret",
                           "Bearerabc-123-secret",
                           "Bearer Abc-123-secret"};
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++)
        cr_assert_not(auth(wrong[i]), "accepted %s", wrong[i] ? wrong[i] : "(none)");
}

static tally_err_t read_with(const char *content, mode_t mode, char **out, char *err) {
    char path[] = "/tmp/tally-token-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    chmod(path, mode);
    tally_config_t *c = config_new_defaults();
    free(c->admin_token_file);
    c->admin_token_file = strdup(path);
    tally_err_t rc = admin_read_token(c, out, err, 512);
    config_free(c);
    unlink(path);
    return rc;
}

Test(admin, token_file_is_trimmed_private_and_non_empty) {
    char *tok = NULL, err[512];
    cr_assert_eq(read_with("  s3cret \n second line\n", 0600, &tok, err), TALLY_OK, "%s", err);
    cr_assert_str_eq(tok, "s3cret");
    free(tok);
    cr_assert_eq(read_with("s3cret\n", 0644, &tok, err), TALLY_ERR_CONFIG);
    cr_assert(strstr(err, "chmod 600"), "%s", err);
    cr_assert_eq(read_with("s3cret\n", 0620, &tok, err), TALLY_ERR_CONFIG);
    cr_assert_eq(read_with(" \n", 0600, &tok, err), TALLY_ERR_CONFIG);
    cr_assert(strstr(err, "empty"), "%s", err);
    cr_assert_eq(read_with("a b\n", 0600, &tok, err), TALLY_ERR_CONFIG);
    tally_config_t *c = config_new_defaults();
    cr_assert_eq(admin_read_token(c, &tok, err, sizeof err), TALLY_OK);
    cr_assert_null(tok, "no token_file: the admin API is off");
    config_free(c);
}
