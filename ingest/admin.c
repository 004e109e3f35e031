/* The admin listener: its own thread, loop and socket on tally's HTTP layer
 * (http_conn.c), the bearer-token check, then the admin route set
 * (admin_routes.c). See admin.h. */
#include "ingest/admin.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "ingest/admin_int.h"
#include "ingest/ingest_int.h"

/* An operator's API: a handful of clients, never a crowd. */
#define ADMIN_MAX_CONNS 64
#define ADMIN_SWEEP_MS 250
#define ADMIN_TOKEN_MAX 4096

/* ---- the token ---- */

tally_err_t admin_read_token(const tally_config_t *c, char **token, char *errstr, size_t esz) {
    *token = NULL;
    const char *path = c->admin_token_file;
    if (!path || !path[0])
        return TALLY_OK;
    char buf[ADMIN_TOKEN_MAX + 1];
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(errstr, esz, "admin.token_file %s: %s", path, strerror(errno));
        return TALLY_ERR_CONFIG;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(errstr, esz, "admin.token_file %s: not a regular file", path);
        close(fd);
        return TALLY_ERR_CONFIG;
    }
    /* The token is a password: like ssh with a private key, refuse one that
     * anybody on the machine may read or replace. */
    if (st.st_mode & (S_IROTH | S_IWOTH | S_IWGRP)) {
        snprintf(errstr, esz,
                 "admin.token_file %s: mode %03o lets other users read or change the admin "
                 "token (chmod 600 it)",
                 path, (unsigned)(st.st_mode & 0777));
        close(fd);
        return TALLY_ERR_CONFIG;
    }
    if (st.st_mode & S_IRGRP)
        log_warn("admin.token_file %s is readable by its group (mode %03o): chmod 600 it", path,
                 (unsigned)(st.st_mode & 0777));
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, sizeof buf - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(errstr, esz, "admin.token_file %s: %s", path, strerror(errno));
            close(fd);
            return TALLY_ERR_CONFIG;
        }
        if (r == 0 || (n += (size_t)r) == sizeof buf - 1)
            break;
    }
    close(fd);
    buf[n] = '\0';
    /* The first line, without surrounding blanks (editors add a newline). */
    char *s = buf;
    while (*s == ' ' || *s == '\t')
        s++;
    size_t len = strcspn(s, "\r\n");
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    if (len == 0) {
        snprintf(errstr, esz, "admin.token_file %s: the token is empty", path);
        return TALLY_ERR_CONFIG;
    }
    if (len >= ADMIN_TOKEN_MAX) {
        snprintf(errstr, esz, "admin.token_file %s: the token is over %d bytes", path,
                 ADMIN_TOKEN_MAX - 1);
        return TALLY_ERR_CONFIG;
    }
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e) {
            snprintf(errstr, esz,
                     "admin.token_file %s: the token holds a blank or a character that is not "
                     "printable ASCII (byte %zu)",
                     path, i + 1);
            return TALLY_ERR_CONFIG;
        }
    *token = xstrndup(s, len);
    OPENSSL_cleanse(buf, sizeof buf);
    return TALLY_OK;
}

/* Hashing both sides first makes the comparison independent of where the
 * bytes differ and of the presented length: CRYPTO_memcmp then compares 32
 * bytes without an early exit. */
int admin_authorized(const unsigned char want[32], const char *h, size_t len) {
    static const char scheme[] = "Bearer";
    const size_t sl = sizeof scheme - 1;
    if (!h || len <= sl || strncasecmp(h, scheme, sl) != 0 || (h[sl] != ' ' && h[sl] != '\t'))
        return 0;
    size_t i = sl;
    while (i < len && (h[i] == ' ' || h[i] == '\t'))
        i++;
    size_t e = len;
    while (e > i && (h[e - 1] == ' ' || h[e - 1] == '\t'))
        e--;
    unsigned char got[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)h + i, e - i, got);
    return CRYPTO_memcmp(got, want, SHA256_DIGEST_LENGTH) == 0;
}

/* ---- connections ---- */

static void admin_handle(void *arg, http_conn_t *c, const http_req_t *r) {
    admin_t *a = arg;
    if (!admin_authorized(a->token_hash, r->authz_over ? NULL : r->authz, r->authz_len)) {
        int present = r->authz != NULL;
        http_conn_reply_error(c, 401, "unauthorized",
                              present
                                  ? "the bearer token is wrong"
                                  : "send Authorization: Bearer <the token of admin.token_file>",
                              present ? "WWW-Authenticate: Bearer realm=\"tally-admin\", "
                                        "error=\"invalid_token\"\r\n"
                                      : "WWW-Authenticate: Bearer realm=\"tally-admin\"\r\n");
        return;
    }
    admin_routes_handle(a, c, r);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg) {
    (void)what;
    admin_t *a = arg;
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or a failure the next readiness retries */
        if (a->conns.n >= ADMIN_MAX_CONNS) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        http_conn_open(a->base, &a->conns, fd, (struct sockaddr *)&ss, sl, &a->conn_cfg);
    }
}

static void on_sweep(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    admin_t *a = arg;
    http_conns_sweep(&a->conns, mono_ms());
}

static void on_stop(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    admin_t *a = arg;
    event_base_loopexit(a->base, NULL);
}

/* ---- lifecycle ---- */

/* admin_stop() wakes the loop from another thread. */
static void admin_threads_init(void) {
    evthread_use_pthreads();
}

admin_t *admin_new(const tally_config_t *c, const char *token, const admin_ops_t *ops, char *errstr,
                   size_t esz) {
    if (!strcmp(c->admin_listen, c->listen)) {
        snprintf(errstr, esz,
                 "admin.listen %s is server.listen: the admin API needs a listener of its own",
                 c->admin_listen);
        return NULL;
    }
    static pthread_once_t threads_once = PTHREAD_ONCE_INIT;
    pthread_once(&threads_once, admin_threads_init);
    admin_t *a = xcalloc(1, sizeof *a);
    a->conf = c;
    a->ops = *ops;
    a->listen_fd = -1;
    SHA256((const unsigned char *)token, strlen(token), a->token_hash);
    a->conn_cfg = (http_conn_cfg_t){
        .max_header_bytes = c->server_max_header_bytes,
        .header_timeout_ms = c->server_header_timeout_ms,
        .body_timeout_ms = c->server_body_timeout_ms,
        .keepalive_timeout_ms = c->server_keepalive_timeout_ms,
        .handler = admin_handle,
        .on_close = NULL,
        .arg = a,
    };
    a->base = event_base_new();
    if (!a->base) {
        snprintf(errstr, esz, "admin: cannot set up its event loop");
        goto fail;
    }
    a->listen_fd = ingest_bind_listen("admin.listen", c->admin_listen, 0, &a->port, errstr, esz);
    if (a->listen_fd < 0)
        goto fail;
    a->accept_ev = event_new(a->base, a->listen_fd, EV_READ | EV_PERSIST, on_accept, a);
    a->stop_ev = event_new(a->base, -1, 0, on_stop, a);
    a->sweep_ev = event_new(a->base, -1, EV_PERSIST, on_sweep, a);
    struct timeval sweep = {0, ADMIN_SWEEP_MS * 1000};
    if (!a->accept_ev || !a->stop_ev || !a->sweep_ev || event_add(a->accept_ev, NULL) != 0 ||
        event_add(a->sweep_ev, &sweep) != 0) {
        snprintf(errstr, esz, "admin: cannot set up its event loop");
        goto fail;
    }
    return a;
fail:
    admin_free(a);
    return NULL;
}

static void *admin_main(void *arg) {
    admin_t *a = arg;
    thread_name("admin");
    event_base_dispatch(a->base);
    return NULL;
}

tally_err_t admin_start(admin_t *a, char *errstr, size_t esz) {
    if (pthread_create(&a->thread, NULL, admin_main, a) != 0) {
        snprintf(errstr, esz, "admin: cannot start its thread");
        return TALLY_ERR_IO;
    }
    a->started = 1;
    return TALLY_OK;
}

void admin_stop(admin_t *a) {
    if (!a || !a->started)
        return;
    event_active(a->stop_ev, EV_READ, 0);
    pthread_join(a->thread, NULL);
    a->started = 0;
}

void admin_free(admin_t *a) {
    if (!a)
        return;
    admin_stop(a);
    http_conns_free(&a->conns);
    struct event *evs[] = {a->accept_ev, a->stop_ev, a->sweep_ev};
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        if (evs[i])
            event_free(evs[i]);
    if (a->listen_fd >= 0)
        close(a->listen_fd);
    if (a->base)
        event_base_free(a->base);
    OPENSSL_cleanse(a->token_hash, sizeof a->token_hash);
    free(a);
}

void admin_set_catalog(admin_t *a, catalog_live_t *live, history_t *history,
                       void (*wait_learnable)(void *arg, uint64_t seq), void *wait_arg) {
    a->history = history;
    a->wait_learnable = wait_learnable;
    a->wait_arg = wait_arg;
    atomic_store_explicit(&a->live, live, memory_order_release);
}

int admin_port(const admin_t *a) {
    return a->port;
}
