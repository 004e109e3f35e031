/* tally-bench http: the HTTP load generator.
 *
 * One libevent loop drives --connections keep-alive connections (hclient.c:
 * raw non-blocking sockets and http_parser, one request in flight per
 * connection, each request formatted whole here). Closed loop: a
 * connection sends its next vote as soon as the last one is answered. Open
 * loop (--rate): request k is due at start + k/rate and its latency counts
 * from then, even when every connection was busy and it went out late
 * (one due within SEND_EARLY_NS goes at once and counts from its send).
 *
 * Votes come from gen.c, which never has two votes of one (poll, voter) in
 * flight, so the 202s can be replayed through expect.c in the order the
 * server saw them; --verify then waits for publisher.dir to show exactly
 * those totals. With --threads N each thread runs such a loop of its own
 * (voters with a per-thread prefix, so no voter is in flight on two threads)
 * and the counts, histograms and expectations are added up at the end. A probe (--fresh-poll) casts
 * one vote at a time on a poll the load leaves alone and times how long its 202 takes to show in
 * the JSON.
 * @locality a bh_t is touched only by its own thread until the threads are
 *           joined; stop_all is the one thing they share while running */
#include <errno.h>
#include <event2/event.h>
#include <event2/http.h> /* evhttp_uri_parse for --url only */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/expect.h"
#include "bench/gen.h"
#include "bench/hclient.h"
#include "bench/hist.h"
#include "bench/rate.h"
#include "bench/verify.h"
#include "common/jwt.h"
#include "common/util.h"

#define NSTATUS 600
#define BH_THREADS_MAX 64
#define HIST_HIGHEST (3600ull * 1000000000ull) /* 1 h in ns */
#define FRESH_TIMEOUT_NS (10ull * 1000000000ull)
/* Open loop: timers are libevent's coarse ones (epoll_wait's millisecond
 * timeout; the precise, timerfd ones cost a timerfd_settime on every loop
 * turn, 16% of the generator at 35k/s), so a vote due within this long is
 * sent at once, and its latency counts from when it went, not from its
 * later intended time. A vote sent late still counts from its intended
 * time. */
#define SEND_EARLY_NS 1000000ull
#define WATCH_US 1000 /* the probe re-checks the published file every ms */
/* stop_all: the first ^C stops sending, the second quits at once. Threads
 * other than 0 look every STOP_CHECK_MS, not only on their next answer,
 * which may be a timeout away. */
#define STOP_SENDING 1
#define STOP_NOW 2
#define STOP_CHECK_MS 20

static const char *help =
    "usage: tally-bench http [options]\n"
    "\n"
    "Sends votes to POST URL/v1/polls/ID/votes over keep-alive connections and\n"
    "reports throughput, latency percentiles and answers by status code.\n"
    "\n"
    "Load:\n"
    "  -u, --url URL            server base URL (default http://127.0.0.1:8080)\n"
    "  -c, --connections N      keep-alive connections (default 16)\n"
    "  -d, --duration SECONDS   stop sending after this long (default 10 unless --votes)\n"
    "  -n, --votes N            stop after N votes (2000, 10k, 1M)\n"
    "  -r, --rate PER_SECOND    open loop at this rate; latency counts from each\n"
    "                           vote's intended send time (default: closed loop)\n"
    "      --timeout SECONDS    per-request timeout (default 10)\n"
    "Votes:\n"
    "      --config FILE        tally's INI: its polls, options and modes\n"
    "      --poll ID[,ID..]     polls to vote in (default: every poll of --config);\n"
    "                           without --config each is defined by --options/--mode\n"
    "      --options A,B,..     options of --poll without --config (default a,b,c,d)\n"
    "      --mode MODE          one-per-voter|changeable|unlimited, idem\n"
    "      --voters N           distinct voters per poll (default 10000)\n"
    "      --dist uniform|zipf  who votes again (default uniform)\n"
    "      --zipf-s S           zipf exponent (default 1.0)\n"
    "      --repeat-ratio R     share of votes repeating the voter's last vote (0.1)\n"
    "      --change-ratio R     share of votes changing the voter's option (0.1)\n"
    "      --seed N             generator seed (default: from the clock)\n"
    "      --jwt-key-file F     sign an HS256 voter token per voter with the secret in F\n"
    "                           (auth.jwt_hs256_key_file) and send it as Authorization:\n"
    "                           Bearer; sub is the voter id the body names\n"
    "      --idempotency        send an Idempotency-Key with every vote (unique per vote)\n"
    "      --retry-ratio R      resend this share of votes once, the same request with\n"
    "                           the same key, on another connection, after its answer\n"
    "                           (implies --idempotency); --verify counts each once\n"
    "Checks:\n"
    "      --verify DIR         after the run, wait until DIR/polls/*.json (publisher.dir)\n"
    "                           show exactly the totals the 202s imply; exit 3 if not.\n"
    "                           The run starts once those files stood still for 300 ms\n"
    "      --verify-timeout S   how long to wait (default 30)\n"
    "      --fresh-poll ID      measure freshness with probe votes on this poll (left\n"
    "                           out of the load): 202 -> visible in the published JSON\n"
    "      --fresh-interval MS  one probe vote per MS (default 100)\n"
    "      --public DIR         publisher.dir for --fresh-poll (default: --verify DIR)\n"
    "Output:\n"
    "      --json FILE          the results as JSON too ('-' for stdout)\n"
    "  -q, --quiet              no progress line\n"
    "\n"
    "Voter ids carry a random per-run prefix, so runs against a server that already\n"
    "holds votes verify too, provided nothing else votes meanwhile.\n"
    "Exit status: 0 ok, 1 error, 2 usage, 3 verification failed.\n";

typedef struct bh_s bh_t;

typedef struct {
    bh_t *b;
    hclient_t *hc;
    hclient_t *retry_hc; /* --retry-ratio: the retries' own connection */
    int is_probe;
    gen_vote_t vote;
    uint64_t intended_ns;
    uint64_t key;   /* --idempotency: the vote's key number */
    int in_retry;   /* the retry of vote is in flight */
    int first_code; /* the first attempt's answer (0: none) */
} conn_t;

typedef struct {
    /* options */
    const char *url;
    int nconns;
    double duration_s;
    uint64_t max_votes;
    double rate;
    int timeout_s;
    const char *config_path, *polls_csv, *options_csv, *mode;
    uint64_t voters;
    gen_dist_t dist;
    double zipf_s, repeat, change;
    uint64_t seed;
    int seed_set;
    int idempotency;
    double retry_ratio;
    const char *verify_dir;
    double verify_timeout_s;
    const char *fresh_poll;
    int fresh_interval_ms;
    const char *public_dir;
    const char *json_path;
    int quiet;
    int nthreads;
    const char *jwt_key_file;
} bh_opts_t;

struct bh_s {
    bh_opts_t o;
    tally_config_t *conf;
    struct event_base *base;
    char host[256];
    int port;
    char hostport[300];
    struct sockaddr_storage addr; /* host:port resolved once */
    socklen_t addrlen;
    char runid[32];
    int thread;           /* 0 owns the probe, SIGINT and the report */
    atomic_int *stop_all; /* shared by the threads: ^C on thread 0 (STOP_*) */

    /* load */
    const poll_conf_t **polls; /* the load's polls */
    int npolls;
    char **paths; /* [npolls] request paths */
    gen_t gen;
    expect_poll_t *expect; /* [npolls] when verifying */
    conn_t *conns;         /* [nconns_alloc] */
    int nconns_alloc;
    conn_t **freel;
    int nfree;
    int open_loop;
    rate_t rate;
    uint64_t next_k;
    uint64_t max_backlog;
    uint64_t unsent_due; /* open loop: due by the end but never sent */
    uint64_t start_ns, last_done_ns, deadline_ns;
    int stop_sending;
    int finished;
    uint64_t sent, done, gen_blocked;
    uint64_t status[NSTATUS];
    uint64_t no_response;    /* errors and timeouts: outcome unknown */
    uint64_t unknown;        /* votes whose outcome is unknown (a retry may settle it) */
    uint64_t unsent;         /* votes that never left (no connection): they cannot count */
    uint64_t connect_failed; /* connects that failed (hclient's, added up at the end) */
    int connect_errno;       /* the errno of one of them, for the report */
    int abandoning;          /* the loop is over: the answers now are hclient_cancel's */
    uint64_t key_seq;        /* --idempotency keys handed out */
    uint64_t retries, retries_202, retries_settled;
    rng_t retry_rng;
    hist_t lat, lat_sec;
    struct event *send_ev, *progress_ev, *deadline_ev, *drain_ev, *sigint_ev, *stop_ev;
    uint64_t prev_done;

    /* freshness probe */
    const poll_conf_t *probe_poll;
    char *probe_path;
    char probe_json[4200];
    conn_t probe;
    int probe_busy; /* request in flight or waiting to become visible */
    int probe_watching;
    uint64_t probe_base_total, probe_accepted, probe_sent, probe_failed, probe_no_response;
    uint64_t probe_202_ns;
    struct stat probe_st;
    hist_t fresh;
    uint64_t fresh_timeouts;
    struct event *probe_ev, *watch_ev;

    /* voter tokens (--jwt-key-file): the key is thread 0's, shared read-only */
    uint8_t *jwt_key;
    size_t jwt_key_len;
    char **jwt_tokens; /* [njwt_tokens] by voter number, signed on first use */
    uint64_t njwt_tokens;
    uint64_t jwt_signed;
};

static uint64_t sec_ns(double s) {
    return (uint64_t)(s * 1e9);
}

/* ---- sending ---- */

static void on_response(void *arg, int code);
static void maybe_finish(bh_t *b);

static int inflight(const bh_t *b) {
    return b->o.nconns - b->nfree;
}

/* ---- voter tokens (--jwt-key-file) ---- */

/* Tokens are cached per voter up to this many voters per thread; past it
 * each vote signs its own (the run then measures the generator too). */
#define JWT_CACHE_MAX (1u << 20)
/* Valid for the longest run we would make, with the server's leeway aside. */
#define JWT_TTL_S (24 * 3600)

static int jwt_setup(bh_t *b, char *err, size_t esz) {
    if (!b->o.jwt_key_file)
        return 0;
    if (jwt_read_key_file("--jwt-key-file", b->o.jwt_key_file, 65536, &b->jwt_key, &b->jwt_key_len,
                          err, esz) != TALLY_OK)
        return -1;
    if (b->jwt_key_len < JWT_HS256_MIN_KEY) {
        snprintf(err, esz, "--jwt-key-file %s: %zu bytes, an HS256 secret has at least %d",
                 b->o.jwt_key_file, b->jwt_key_len, JWT_HS256_MIN_KEY);
        return -1;
    }
    return 0;
}

static void jwt_worker_init(bh_t *w, const bh_t *b) {
    if (!b->jwt_key)
        return;
    w->jwt_key = b->jwt_key;
    w->jwt_key_len = b->jwt_key_len;
    w->njwt_tokens = w->o.voters < JWT_CACHE_MAX ? w->o.voters : 0;
    w->jwt_tokens = w->njwt_tokens ? xcalloc(w->njwt_tokens, sizeof *w->jwt_tokens) : NULL;
}

static void jwt_worker_free(bh_t *w) {
    for (uint64_t i = 0; i < w->njwt_tokens; i++)
        free(w->jwt_tokens[i]);
    free(w->jwt_tokens);
    w->jwt_tokens = NULL;
}

/* The Authorization value for voter_id (voter number n of kind ""), or
 * NULL without --jwt-key-file. *own: the caller frees the result. */
static char *jwt_bearer(bh_t *b, const char *voter_id, const char *kind, uint64_t n, int *own) {
    *own = 0;
    if (!b->jwt_key)
        return NULL;
    int cached = !kind[0] && n < b->njwt_tokens;
    if (cached && b->jwt_tokens[n])
        return b->jwt_tokens[n];
    json_t *c = json_object();
    json_object_set_new(c, "sub", json_string(voter_id));
    json_object_set_new(c, "exp", json_integer((json_int_t)(now_ms() / 1000) + JWT_TTL_S));
    char *claims = json_dumps(c, JSON_COMPACT);
    json_decref(c);
    char *tok = NULL, err[256];
    tally_assert(jwt_sign_hs256(b->jwt_key, b->jwt_key_len, claims, &tok, err, sizeof err) ==
                 TALLY_OK);
    free(claims);
    b->jwt_signed++;
    size_t tl = strlen(tok);
    char *v = xmalloc(tl + 8);
    memcpy(v, "Bearer ", 7);
    memcpy(v + 7, tok, tl + 1);
    free(tok);
    if (cached)
        b->jwt_tokens[n] = v;
    else
        *own = 1;
    return v;
}

/* A whole request fits here unless the URL prefix or a token is unusual. */
#define REQ_BUF 4096

static int format_post(char *buf, size_t size, const char *path, const char *hostport,
                       const char *key_header, const char *bearer, const char *body, int blen) {
    return snprintf(buf, size,
                    "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                    "Content-Length: %d\r\n%s%s%s%s\r\n%s",
                    path, hostport, blen, key_header, bearer ? "Authorization: " : "",
                    bearer ? bearer : "", bearer ? "\r\n" : "", body);
}

/* POSTs {"option":option,"voter":"RUNID-<kind><voter>"} on hc, whose
 * answer comes to on_response. Voter ids carry the run id so runs never
 * share voters; so do idempotency keys (key: "RUNID-<key>", 0: none).
 * Returns hclient_send's: -1 when nothing was sent and no answer will come. */
static int send_post(bh_t *b, hclient_t *hc, const char *path, const char *option, const char *kind,
                     uint64_t voter, uint64_t key) {
    char body[512], id[128], key_header[96] = "";
    snprintf(id, sizeof id, "%s-%s%llu", b->runid, kind, (unsigned long long)voter);
    int blen = snprintf(body, sizeof body, "{\"option\":\"%s\",\"voter\":\"%s\"}", option, id);
    tally_assert(blen > 0 && (size_t)blen < sizeof body);
    if (key)
        snprintf(key_header, sizeof key_header, "Idempotency-Key: %s-%llu\r\n", b->runid,
                 (unsigned long long)key);
    int own;
    char *bearer = jwt_bearer(b, id, kind, voter, &own);
    char stack[REQ_BUF], *req = stack;
    int n = format_post(stack, sizeof stack, path, b->hostport, key_header, bearer, body, blen);
    if ((size_t)n >= sizeof stack) {
        req = xmalloc((size_t)n + 1);
        format_post(req, (size_t)n + 1, path, b->hostport, key_header, bearer, body, blen);
    }
    int rc = hclient_send(hc, req, (size_t)n);
    if (req != stack)
        free(req);
    if (own)
        free(bearer);
    return rc;
}

static struct timeval ns_tv(uint64_t ns) {
    struct timeval tv = {(time_t)(ns / 1000000000ull), (suseconds_t)(ns % 1000000000ull / 1000)};
    return tv;
}

static void schedule_send(bh_t *b, uint64_t wait_ns) {
    struct timeval tv = ns_tv(wait_ns);
    event_add(b->send_ev, &tv);
}

/* No more votes: the duration or the vote count is reached. */
static void stop_load(bh_t *b) {
    if (b->stop_sending)
        return;
    if (b->open_loop && b->deadline_ns) {
        uint64_t due = rate_due(&b->rate, b->deadline_ns);
        if (b->o.max_votes && due > b->o.max_votes)
            due = b->o.max_votes;
        b->unsent_due = due > b->next_k ? due - b->next_k : 0;
    }
    b->stop_sending = 1;
}

/* Sends whatever is due on the free connections. */
static void pump(bh_t *b) {
    while (b->nfree > 0 && !b->stop_sending) {
        if (atomic_load_explicit(b->stop_all, memory_order_relaxed)) {
            stop_load(b);
            break;
        }
        uint64_t now = mono_ns();
        if ((b->o.max_votes && b->sent >= b->o.max_votes) ||
            (b->deadline_ns && now >= b->deadline_ns)) {
            stop_load(b);
            break;
        }
        uint64_t intended = now;
        if (b->open_loop) {
            intended = rate_intended_ns(&b->rate, b->next_k);
            if (intended > now + SEND_EARLY_NS) {
                schedule_send(b, intended - now - SEND_EARLY_NS);
                break;
            }
            if (intended <= now) {
                uint64_t backlog = rate_due(&b->rate, now) - b->next_k;
                if (backlog > b->max_backlog)
                    b->max_backlog = backlog;
            } else {
                intended = now; /* sent early: its latency counts from now */
            }
        }
        gen_vote_t v;
        if (gen_next(&b->gen, &v) != 0) {
            b->gen_blocked++; /* every voter busy: a completion will call us */
            break;
        }
        conn_t *c = b->freel[--b->nfree];
        c->vote = v;
        c->intended_ns = intended;
        const poll_conf_t *p = b->polls[v.poll];
        b->sent++;
        if (b->open_loop)
            b->next_k++;
        c->key = b->o.idempotency ? ++b->key_seq : 0;
        if (send_post(b, c->hc, b->paths[v.poll], p->options[v.option].id, "", v.voter, c->key) !=
            0) {
            /* Never reached the wire: no outcome to account for. */
            int e = errno;
            b->unsent++;
            gen_done(&b->gen, &v);
            b->freel[b->nfree++] = c;
            log_error("cannot send a request to %s: %s", b->o.url, strerror(e));
            b->stop_sending = 1;
            break;
        }
    }
    if (b->stop_sending)
        maybe_finish(b);
}

static void on_send_timer(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    pump(arg);
}

/* ---- freshness probe ---- */

static uint64_t probe_published_total(bh_t *b, int *ok) {
    uint64_t counts[256], *cp = counts;
    int n = b->probe_poll->noptions;
    if (n > 256)
        cp = xmalloc(sizeof *cp * (size_t)n);
    char err[512];
    int rc = verify_read_poll(b->o.public_dir, b->probe_poll, cp, err, sizeof err);
    uint64_t total = 0;
    for (int k = 0; k < n; k++)
        total += cp[k];
    if (cp != counts)
        free(cp);
    *ok = rc >= 0;
    return total;
}

static void probe_stop_watching(bh_t *b) {
    event_del(b->watch_ev);
    b->probe_watching = 0;
    b->probe_busy = 0;
    if (b->stop_sending)
        maybe_finish(b);
}

static void on_watch(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    bh_t *b = arg;
    uint64_t now = mono_ns();
    struct stat st;
    /* The publisher renames a new file into place: a new inode (or mtime)
     * is the only time the content can have changed. */
    if (stat(b->probe_json, &st) == 0 &&
        (st.st_ino != b->probe_st.st_ino || st.st_mtim.tv_sec != b->probe_st.st_mtim.tv_sec ||
         st.st_mtim.tv_nsec != b->probe_st.st_mtim.tv_nsec || st.st_size != b->probe_st.st_size)) {
        int ok;
        uint64_t total = probe_published_total(b, &ok);
        if (ok) {
            b->probe_st = st;
            if (total >= b->probe_base_total + b->probe_accepted) {
                hist_record(&b->fresh, now - b->probe_202_ns);
                probe_stop_watching(b);
                return;
            }
        }
    }
    if (now - b->probe_202_ns > FRESH_TIMEOUT_NS) {
        b->fresh_timeouts++;
        probe_stop_watching(b);
    }
}

static void probe_send(bh_t *b) {
    if (b->probe_busy || b->stop_sending)
        return;
    b->probe_busy = 1;
    b->probe.intended_ns = mono_ns();
    b->probe_sent++;
    if (send_post(b, b->probe.hc, b->probe_path, b->probe_poll->options[0].id, "p", b->probe_sent,
                  0) != 0) {
        b->probe_failed++;
        b->probe_busy = 0;
    }
}

static void on_probe_timer(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    probe_send(arg);
}

static void probe_response(bh_t *b, int code) {
    if (code == 202) {
        b->probe_accepted++;
        b->probe_202_ns = mono_ns();
        b->probe_watching = 1;
        struct timeval tv = {0, WATCH_US};
        event_add(b->watch_ev, &tv);
        on_watch(-1, 0, b); /* maybe visible already */
        return;
    }
    if (code == 0)
        b->probe_no_response++;
    else
        b->probe_failed++; /* refused, or never sent (< 0) */
    b->probe_busy = 0;
    if (b->stop_sending)
        maybe_finish(b);
}

/* ---- answers ---- */

/* A vote that never left: its connection never connected, so the server
 * cannot have counted it; it is neither answered nor unknown. */
static void vote_unsent(bh_t *b, conn_t *c, int code) {
    b->unsent++;
    /* Refused before anything was ever answered: nobody listens there. */
    if (code == -ECONNREFUSED && b->done == 0 && !b->stop_sending) {
        log_error("cannot connect to %s: %s", b->o.url, strerror(-code));
        stop_load(b);
    }
    gen_done(&b->gen, &c->vote);
    b->freel[b->nfree++] = c;
    pump(b);
}

/* hclient's answer on c's connection or its retry connection (code 0:
 * none although the request left; < 0: it never left). */
static void on_response(void *arg, int code) {
    conn_t *c = arg;
    bh_t *b = c->b;
    uint64_t now = mono_ns();
    if (code >= NSTATUS)
        code = NSTATUS - 1;
    if (c->is_probe) {
        probe_response(b, code);
        return;
    }
    if (c->in_retry) {
        /* The vote is settled by its two answers: counted once if either
         * was a 202 (the engine drops the other as a retry), unknown if
         * neither was and one got no answer. */
        c->in_retry = 0;
        if (code < 0)
            b->retries--; /* it never left: the first answer decides (below) */
        if (code == 202)
            b->retries_202++;
        int first = c->first_code;
        if (first != 202 && code == 202 && first == 0)
            b->retries_settled++;
        if (first == 202 || code == 202) {
            if (b->expect)
                expect_poll_accept(&b->expect[c->vote.poll], c->vote.voter, c->vote.option);
            if (first == 0)
                b->unknown--; /* counted as unknown after the first answer */
        } else if (code == 0 && first != 0) {
            b->unknown++;
        }
        gen_done(&b->gen, &c->vote);
        b->freel[b->nfree++] = c;
        pump(b);
        return;
    }
    if (code < 0) {
        vote_unsent(b, c, code);
        return;
    }
    b->done++;
    if (!b->abandoning)
        b->last_done_ns = now;
    if (code == 0) {
        b->no_response++;
    } else {
        b->status[code]++;
        uint64_t lat = rate_latency_ns(c->intended_ns, now);
        hist_record(&b->lat, lat);
        hist_record(&b->lat_sec, lat);
    }
    if (code == 0)
        b->unknown++;
    if (b->o.retry_ratio > 0 && !b->stop_sending && rng_unit(&b->retry_rng) < b->o.retry_ratio) {
        /* The same request again, as a client that lost the answer would
         * send it: another connection, the same key. The voter stays busy,
         * so nothing of theirs comes between. */
        const poll_conf_t *p = b->polls[c->vote.poll];
        c->first_code = code;
        c->in_retry = 1;
        b->retries++;
        if (send_post(b, c->retry_hc, b->paths[c->vote.poll], p->options[c->vote.option].id, "",
                      c->vote.voter, c->key) == 0)
            return;
        c->in_retry = 0; /* never sent: the first answer decides */
        b->retries--;
    }
    if (code == 202 && b->expect)
        expect_poll_accept(&b->expect[c->vote.poll], c->vote.voter, c->vote.option);
    gen_done(&b->gen, &c->vote);
    b->freel[b->nfree++] = c;
    pump(b);
}

/* ---- progress and the end ---- */

static void on_progress(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    bh_t *b = arg;
    if (b->o.quiet)
        return;
    double el = (double)(mono_ns() - b->start_ns) / 1e9;
    uint64_t d = b->done - b->prev_done;
    b->prev_done = b->done;
    if (b->o.nthreads > 1)
        fprintf(stderr, "thread 0 of %d: ", b->o.nthreads);
    fprintf(stderr, "[%5.1fs] %llu done, %llu/s, %d in flight, 202: %llu, p99 %.3f ms%s\n", el,
            (unsigned long long)b->done, (unsigned long long)d, inflight(b),
            (unsigned long long)b->status[202], (double)hist_percentile(&b->lat_sec, 99) / 1e6,
            b->open_loop && rate_due(&b->rate, mono_ns()) > b->next_k + (uint64_t)b->o.nconns
                ? " (behind the rate)"
                : "");
    hist_reset(&b->lat_sec);
}

static void maybe_finish(bh_t *b) {
    if (b->finished || !b->stop_sending)
        return;
    if (!event_pending(b->drain_ev, EV_TIMEOUT, NULL)) {
        /* Give answers in flight the request timeout, then give up. */
        struct timeval tv = {b->o.timeout_s + 1, 0};
        event_add(b->drain_ev, &tv);
    }
    if (inflight(b) > 0 || b->probe_busy)
        return;
    b->finished = 1;
    event_base_loopexit(b->base, NULL);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    bh_t *b = arg;
    stop_load(b);
    maybe_finish(b);
}

static void on_drain_timeout(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    bh_t *b = arg;
    log_warn("%d requests still unanswered after the timeout; their outcome is unknown",
             inflight(b) + (b->probe_busy && !b->probe_watching));
    b->finished = 1;
    event_base_loopexit(b->base, NULL);
}

static void on_sigint(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    bh_t *b = arg;
    if (b->stop_sending) {
        atomic_store(b->stop_all, STOP_NOW);
        event_base_loopexit(b->base, NULL);
        return;
    }
    fprintf(stderr, "tally-bench: interrupted; waiting for answers in flight (^C again to quit)\n");
    atomic_store(b->stop_all, STOP_SENDING);
    b->stop_sending = 1;
    maybe_finish(b);
}

/* Threads other than 0: thread 0's ^C. */
static void on_stop_check(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    bh_t *b = arg;
    int stop = atomic_load_explicit(b->stop_all, memory_order_relaxed);
    if (stop == STOP_NOW) {
        event_base_loopexit(b->base, NULL);
    } else if (stop) {
        stop_load(b);
        maybe_finish(b);
    }
}

/* ---- setup ---- */

static int parse_opts(int argc, char **argv, bh_opts_t *o) {
    enum {
        O_TIMEOUT = 256,
        O_CONFIG,
        O_POLL,
        O_OPTIONS,
        O_MODE,
        O_VOTERS,
        O_DIST,
        O_ZIPF,
        O_REPEAT,
        O_CHANGE,
        O_SEED,
        O_IDEM,
        O_RETRY,
        O_VERIFY,
        O_VTIMEOUT,
        O_FPOLL,
        O_FINT,
        O_PUBLIC,
        O_JSON,
        O_JWT,
    };
    static const struct option longopts[] = {{"url", required_argument, 0, 'u'},
                                             {"connections", required_argument, 0, 'c'},
                                             {"duration", required_argument, 0, 'd'},
                                             {"votes", required_argument, 0, 'n'},
                                             {"rate", required_argument, 0, 'r'},
                                             {"timeout", required_argument, 0, O_TIMEOUT},
                                             {"config", required_argument, 0, O_CONFIG},
                                             {"poll", required_argument, 0, O_POLL},
                                             {"options", required_argument, 0, O_OPTIONS},
                                             {"mode", required_argument, 0, O_MODE},
                                             {"voters", required_argument, 0, O_VOTERS},
                                             {"dist", required_argument, 0, O_DIST},
                                             {"zipf-s", required_argument, 0, O_ZIPF},
                                             {"repeat-ratio", required_argument, 0, O_REPEAT},
                                             {"change-ratio", required_argument, 0, O_CHANGE},
                                             {"seed", required_argument, 0, O_SEED},
                                             {"idempotency", no_argument, 0, O_IDEM},
                                             {"retry-ratio", required_argument, 0, O_RETRY},
                                             {"verify", required_argument, 0, O_VERIFY},
                                             {"verify-timeout", required_argument, 0, O_VTIMEOUT},
                                             {"fresh-poll", required_argument, 0, O_FPOLL},
                                             {"fresh-interval", required_argument, 0, O_FINT},
                                             {"public", required_argument, 0, O_PUBLIC},
                                             {"json", required_argument, 0, O_JSON},
                                             {"jwt-key-file", required_argument, 0, O_JWT},
                                             {"threads", required_argument, 0, 't'},
                                             {"quiet", no_argument, 0, 'q'},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->url = "http://127.0.0.1:8080";
    o->nconns = 16;
    o->timeout_s = 10;
    o->voters = 10000;
    o->zipf_s = 1.0;
    o->repeat = 0.1;
    o->change = 0.1;
    o->verify_timeout_s = 30;
    o->fresh_interval_ms = 100;
    o->nthreads = 1;
    int ch;
    double d;
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":u:c:d:n:r:t:qh", longopts, NULL)) != -1) {
        const char *bad = NULL;
        switch (ch) {
        case 'u': o->url = optarg; break;
        case 'c':
            if (bench_parse_int(optarg, 1, 100000, &o->nconns))
                bad = "--connections: 1..100000";
            break;
        case 't':
            if (bench_parse_int(optarg, 1, BH_THREADS_MAX, &o->nthreads))
                bad = "--threads: 1..64";
            break;
        case 'd':
            if (bench_parse_double(optarg, &o->duration_s) || o->duration_s <= 0)
                bad = "--duration: seconds > 0";
            break;
        case 'n':
            if (bench_parse_count(optarg, &o->max_votes) || o->max_votes < 1)
                bad = "--votes: a count >= 1";
            break;
        case 'r':
            if (bench_parse_double(optarg, &o->rate) || o->rate <= 0)
                bad = "--rate: votes per second > 0";
            break;
        case O_TIMEOUT:
            if (bench_parse_double(optarg, &d) || d < 1 || d > 3600)
                bad = "--timeout: 1..3600 seconds";
            o->timeout_s = (int)d;
            break;
        case O_CONFIG: o->config_path = optarg; break;
        case O_POLL: o->polls_csv = optarg; break;
        case O_OPTIONS: o->options_csv = optarg; break;
        case O_MODE: {
            poll_mode_t m;
            if (bench_parse_mode(optarg, &m))
                bad = "--mode: one-per-voter, changeable or unlimited";
            o->mode = optarg;
            break;
        }
        case O_VOTERS:
            if (bench_parse_count(optarg, &o->voters) || o->voters < 1 ||
                o->voters > UINT32_MAX - 1)
                bad = "--voters: 1..4294967294";
            break;
        case O_DIST:
            if (!strcmp(optarg, "uniform"))
                o->dist = DIST_UNIFORM;
            else if (!strcmp(optarg, "zipf"))
                o->dist = DIST_ZIPF;
            else
                bad = "--dist: uniform or zipf";
            break;
        case O_ZIPF:
            if (bench_parse_double(optarg, &o->zipf_s) || o->zipf_s <= 0 || o->zipf_s > 10)
                bad = "--zipf-s: (0, 10]";
            break;
        case O_REPEAT:
            if (bench_parse_double(optarg, &o->repeat) || o->repeat < 0 || o->repeat > 1)
                bad = "--repeat-ratio: 0..1";
            break;
        case O_CHANGE:
            if (bench_parse_double(optarg, &o->change) || o->change < 0 || o->change > 1)
                bad = "--change-ratio: 0..1";
            break;
        case O_IDEM: o->idempotency = 1; break;
        case O_RETRY:
            if (bench_parse_double(optarg, &o->retry_ratio) || o->retry_ratio < 0 ||
                o->retry_ratio > 1)
                bad = "--retry-ratio: 0..1";
            o->idempotency = 1;
            break;
        case O_SEED:
            if (bench_parse_count(optarg, &o->seed))
                bad = "--seed: a non-negative integer";
            o->seed_set = 1;
            break;
        case O_VERIFY: o->verify_dir = optarg; break;
        case O_VTIMEOUT:
            if (bench_parse_double(optarg, &o->verify_timeout_s) || o->verify_timeout_s < 0)
                bad = "--verify-timeout: seconds >= 0";
            break;
        case O_FPOLL: o->fresh_poll = optarg; break;
        case O_FINT:
            if (bench_parse_int(optarg, 1, 60000, &o->fresh_interval_ms))
                bad = "--fresh-interval: 1..60000 ms";
            break;
        case O_PUBLIC: o->public_dir = optarg; break;
        case O_JSON: o->json_path = optarg; break;
        case O_JWT: o->jwt_key_file = optarg; break;
        case 'q': o->quiet = 1; break;
        case 'h': fputs(help, stdout); exit(0);
        default: return bench_opt_fail("http", ch, argv);
        }
        if (bad)
            return bench_opt_bad("http", bad, optarg);
    }
    if (bench_opt_rest("http", argc, argv) != 0)
        return -1;
    if (o->repeat + o->change > 1.0) {
        fprintf(stderr, "tally-bench http: --repeat-ratio + --change-ratio must be <= 1\n");
        return -1;
    }
    if (!o->duration_s && !o->max_votes)
        o->duration_s = 10;
    if (o->nconns < o->nthreads || (o->max_votes && o->max_votes < (uint64_t)o->nthreads) ||
        o->voters < (uint64_t)o->nthreads) {
        fprintf(stderr, "tally-bench http: --threads: at most --connections, --votes and "
                        "--voters\n");
        return -1;
    }
    if (!o->public_dir)
        o->public_dir = o->verify_dir;
    if (o->fresh_poll && !o->public_dir) {
        fprintf(stderr, "tally-bench http: --fresh-poll needs --public DIR or --verify DIR\n");
        return -1;
    }
    if (!o->config_path && !o->polls_csv) {
        fprintf(stderr, "tally-bench http: say which polls: --config FILE or --poll ID\n");
        return -1;
    }
    if (o->config_path && (o->options_csv || o->mode)) {
        fprintf(stderr, "tally-bench http: --options/--mode define polls without --config; "
                        "with --config the file says\n");
        return -1;
    }
    return 0;
}

static int parse_url(bh_t *b, char *err, size_t esz) {
    struct evhttp_uri *u = evhttp_uri_parse(b->o.url);
    int rc = -1;
    if (!u || !evhttp_uri_get_host(u) ||
        (evhttp_uri_get_scheme(u) && strcmp(evhttp_uri_get_scheme(u), "http") != 0)) {
        snprintf(err, esz, "--url: '%s' is not an http://host[:port][/prefix] URL", b->o.url);
        goto out;
    }
    snprintf(b->host, sizeof b->host, "%s", evhttp_uri_get_host(u));
    b->port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 80;
    snprintf(b->hostport, sizeof b->hostport, "%s:%d", b->host, b->port);
    const char *prefix = evhttp_uri_get_path(u) ? evhttp_uri_get_path(u) : "";
    size_t plen = strlen(prefix);
    while (plen > 0 && prefix[plen - 1] == '/')
        plen--;
    b->paths = xcalloc((size_t)b->npolls, sizeof *b->paths);
    for (int i = 0; i < b->npolls; i++) {
        buf_t p = {0};
        buf_printf(&p, "%.*s/v1/polls/%s/votes", (int)plen, prefix, b->polls[i]->id);
        b->paths[i] = p.data;
    }
    if (b->probe_poll) {
        buf_t p = {0};
        buf_printf(&p, "%.*s/v1/polls/%s/votes", (int)plen, prefix, b->probe_poll->id);
        b->probe_path = p.data;
    }
    rc = 0;
out:
    if (u)
        evhttp_uri_free(u);
    return rc;
}

/* Picks the load's polls and the probe poll from the config. */
static int choose_polls(bh_t *b, char *err, size_t esz) {
    tally_config_t *c = b->conf;
    if (b->o.fresh_poll) {
        b->probe_poll = config_poll(c, b->o.fresh_poll, strlen(b->o.fresh_poll));
        if (!b->probe_poll) {
            snprintf(err, esz, "--fresh-poll: no poll '%s' in %s", b->o.fresh_poll,
                     b->o.config_path ? b->o.config_path : "--poll");
            return -1;
        }
    }
    b->polls = xcalloc((size_t)c->npolls + 1, sizeof *b->polls);
    if (b->o.config_path && b->o.polls_csv) {
        char *list = xstrdup(b->o.polls_csv);
        for (char *save = NULL, *id = strtok_r(list, ",", &save); id;
             id = strtok_r(NULL, ",", &save)) {
            const poll_conf_t *p = config_poll(c, id, strlen(id));
            if (!p) {
                snprintf(err, esz, "--poll: no poll '%s' in %s", id, b->o.config_path);
                free(list);
                return -1;
            }
            if (p != b->probe_poll)
                b->polls[b->npolls++] = p;
        }
        free(list);
    } else {
        for (int i = 0; i < c->npolls; i++)
            if (&c->polls[i] != b->probe_poll)
                b->polls[b->npolls++] = &c->polls[i];
    }
    if (b->npolls == 0) {
        snprintf(err, esz, "no poll left to load (the probe poll is not loaded)");
        return -1;
    }
    return 0;
}

/* ---- report ---- */

static uint64_t answered(const bh_t *b) {
    return b->done - b->no_response;
}

static double per_sec(uint64_t n, double secs) {
    return secs > 0 ? (double)n / secs : 0;
}

static void print_report(bh_t *b, double secs) {
    FILE *out = stdout;
    fprintf(out, "tally-bench http: %s, %d connections, %s", b->o.url, b->o.nconns,
            b->open_loop ? "open loop" : "closed loop");
    if (b->open_loop)
        fprintf(out, " at %.0f/s", b->o.rate);
    fprintf(out, ", %.2f s\n", secs);
    fprintf(out, "  %-13s %llu (%.1f/s); 202: %llu (%.1f/s)\n", "requests",
            (unsigned long long)b->done, per_sec(b->done, secs), (unsigned long long)b->status[202],
            per_sec(b->status[202], secs));
    fprintf(out, "  %-13s", "status");
    for (int s = 1; s < NSTATUS; s++)
        if (b->status[s])
            fprintf(out, " %d: %llu", s, (unsigned long long)b->status[s]);
    fprintf(out, "%s\n", answered(b) ? "" : " none");
    if (b->no_response)
        fprintf(out, "  %-13s %llu without an answer (error or timeout)\n", "errors",
                (unsigned long long)b->no_response);
    if (b->unsent || b->connect_failed) {
        fprintf(out, "  %-13s %llu votes never sent (they cannot count); %llu connects failed",
                "not sent", (unsigned long long)b->unsent, (unsigned long long)b->connect_failed);
        if (b->connect_errno)
            fprintf(out, " (%s)", strerror(b->connect_errno));
        fputc('\n', out);
    }
    uint64_t nk = b->gen.kinds[0] + b->gen.kinds[1] + b->gen.kinds[2];
    fprintf(out, "  %-13s", "votes");
    for (int k = 0; k < VOTE_KINDS; k++)
        fprintf(out, " %s %.1f%%", vote_kind_name((vote_kind_t)k),
                nk ? 100.0 * (double)b->gen.kinds[k] / (double)nk : 0.0);
    fprintf(out, " of %llu, %d poll%s, up to %llu voters each (%s)\n", (unsigned long long)nk,
            b->npolls, b->npolls == 1 ? "" : "s", (unsigned long long)b->o.voters,
            b->o.dist == DIST_ZIPF ? "zipf" : "uniform");
    if (b->retries)
        fprintf(out,
                "  %-13s %llu votes sent twice (same Idempotency-Key, another connection), "
                "%llu retries got 202, %llu settled a vote left without an answer\n",
                "retries", (unsigned long long)b->retries, (unsigned long long)b->retries_202,
                (unsigned long long)b->retries_settled);
    bench_print_latency(out, "latency ms", &b->lat);
    if (b->open_loop && b->max_backlog > (uint64_t)b->o.nconns)
        fprintf(out,
                "  %-13s up to %llu votes were overdue: %d connections could not keep up "
                "with the rate (their wait is in the latency); %llu due by the end were "
                "never sent\n",
                "note", (unsigned long long)b->max_backlog, b->o.nconns,
                (unsigned long long)b->unsent_due);
    if (b->probe_poll) {
        bench_print_latency(out, "freshness ms", &b->fresh);
        fprintf(out,
                "  %-13s %llu probe votes on poll %s, %llu visible, %llu not within %llu s, "
                "%llu not accepted\n",
                "", (unsigned long long)b->probe_sent, b->probe_poll->id,
                (unsigned long long)hist_count(&b->fresh), (unsigned long long)b->fresh_timeouts,
                FRESH_TIMEOUT_NS / 1000000000ull,
                (unsigned long long)(b->probe_failed + b->probe_no_response));
    }
    fflush(out);
}

static json_t *json_report(bh_t *b, double secs) {
    json_t *r = json_object();
    bench_json_set_str(r, "url", b->o.url);
    bench_json_set_num(r, "connections", b->o.nconns);
    bench_json_set_num(r, "threads", b->o.nthreads);
    bench_json_set_str(r, "loop", b->open_loop ? "open" : "closed");
    if (b->open_loop)
        bench_json_set_num(r, "target_rate", b->o.rate);
    bench_json_set_num(r, "seconds", secs);
    bench_json_set_num(r, "requests", (double)b->done);
    bench_json_set_num(r, "throughput", per_sec(b->done, secs));
    bench_json_set_num(r, "accepted", (double)b->status[202]);
    bench_json_set_num(r, "accepted_per_sec", per_sec(b->status[202], secs));
    bench_json_set_num(r, "no_response", (double)b->no_response);
    bench_json_set_num(r, "not_sent", (double)b->unsent);
    bench_json_set_num(r, "connects_failed", (double)b->connect_failed);
    json_t *st = bench_json_set(r, "status", json_object());
    for (int s = 1; s < NSTATUS; s++)
        if (b->status[s]) {
            char k[8];
            snprintf(k, sizeof k, "%d", s);
            bench_json_set_num(st, k, (double)b->status[s]);
        }
    json_t *mix = bench_json_set(r, "votes", json_object());
    for (int k = 0; k < VOTE_KINDS; k++)
        bench_json_set_num(mix, vote_kind_name((vote_kind_t)k), (double)b->gen.kinds[k]);
    bench_json_set(r, "latency_ms", bench_json_latency(&b->lat));
    if (b->o.idempotency) {
        json_t *rt = bench_json_set(r, "retries", json_object());
        bench_json_set_num(rt, "sent", (double)b->retries);
        bench_json_set_num(rt, "accepted", (double)b->retries_202);
        bench_json_set_num(rt, "settled", (double)b->retries_settled);
    }
    if (b->open_loop) {
        bench_json_set_num(r, "max_overdue", (double)b->max_backlog);
        bench_json_set_num(r, "unsent_due", (double)b->unsent_due);
    }
    if (b->probe_poll) {
        json_t *f = bench_json_latency(&b->fresh);
        bench_json_set_num(f, "probes", (double)b->probe_sent);
        bench_json_set_num(f, "timeouts", (double)b->fresh_timeouts);
        bench_json_set(r, "freshness_ms", f);
    }
    return r;
}

/* ---- verify ---- */

/* The totals before the run. Votes sent just before it (a previous run that
 * did not wait for them) may still be on their way to the published files,
 * so the baseline is taken only once the files have stood still for
 * BASELINE_QUIET_MS: the engine and the publisher (min_interval_ms) are then
 * done with them. */
#define BASELINE_QUIET_MS 300
#define BASELINE_WAIT_MS 10000
static int read_still(const char *dir, const poll_conf_t *const *polls, int n, uint64_t **base,
                      char *err, size_t esz) {
    uint64_t **prev = xcalloc((size_t)(n ? n : 1), sizeof *prev);
    for (int i = 0; i < n; i++)
        prev[i] = xcalloc((size_t)polls[i]->noptions, sizeof **prev);
    int rc = -1;
    uint64_t t0 = mono_ms(), still_since = t0;
    for (int round = 0;; round++) {
        int same = 1;
        for (int i = 0; i < n; i++) {
            const poll_conf_t *p = polls[i];
            if (verify_read_poll(dir, p, base[i], err, esz) < 0)
                goto out;
            if (round > 0 && memcmp(base[i], prev[i], sizeof **base * (size_t)p->noptions))
                same = 0;
            memcpy(prev[i], base[i], sizeof **base * (size_t)p->noptions);
        }
        uint64_t now = mono_ms();
        if (!same)
            still_since = now;
        if (now - still_since >= BASELINE_QUIET_MS)
            break;
        if (now - t0 >= BASELINE_WAIT_MS) {
            log_warn("the published totals in %s keep changing: something else is voting, and "
                     "--verify or freshness will be wrong",
                     dir);
            break;
        }
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
    }
    rc = 0;
out:
    for (int i = 0; i < n; i++)
        free(prev[i]);
    free(prev);
    return rc;
}

static int read_baselines(bh_t *b, uint64_t ***base_out, char *err, size_t esz) {
    int n = b->conf->npolls;
    uint64_t **base = xcalloc((size_t)n, sizeof *base);
    const poll_conf_t **polls = xcalloc((size_t)n, sizeof *polls);
    *base_out = base;
    for (int i = 0; i < n; i++) {
        polls[i] = &b->conf->polls[i];
        base[i] = xcalloc((size_t)polls[i]->noptions, sizeof **base);
    }
    int rc = read_still(b->o.verify_dir, polls, n, base, err, esz);
    free(polls);
    return rc;
}

static int do_verify(bh_t *b, uint64_t **base, json_t *json) {
    int n = b->conf->npolls;
    /* A vote without an answer whose retry got a 202 is known. */
    uint64_t unknown = b->unknown + b->probe_no_response;
    json_t *v = json ? bench_json_set(json, "verify", json_object()) : NULL;
    if (unknown) {
        fprintf(stderr,
                "verify: %llu votes got no answer, so whether they were counted is unknown: the "
                "totals cannot be checked exactly\n",
                (unsigned long long)unknown);
        if (v)
            json_object_set_new(v, "ok", json_boolean(0));
        return BENCH_EXIT_VERIFY;
    }
    verify_item_t *items = xcalloc((size_t)n, sizeof *items);
    uint64_t **exp = xcalloc((size_t)n, sizeof *exp);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        const poll_conf_t *p = &b->conf->polls[i];
        exp[i] = xcalloc((size_t)p->noptions, sizeof **exp);
        items[i].poll = p;
        items[i].expected = exp[i];
        memcpy(exp[i], base[i], sizeof **exp * (size_t)p->noptions);
        for (int j = 0; j < b->npolls; j++)
            if (b->polls[j] == p && expect_poll_totals(&b->expect[j], base[i], exp[i]) != 0)
                rc = -1;
        if (p == b->probe_poll)
            exp[i][0] += b->probe_accepted; /* a new voter each: +1 in any mode */
    }
    uint64_t waited = 0, accepted = b->status[202] + b->probe_accepted;
    if (rc == 0)
        rc = verify_wait(b->o.verify_dir, items, n, (int)(b->o.verify_timeout_s * 1000), stderr,
                         &waited);
    else
        fprintf(stderr, "verify: the published totals before the run were inconsistent\n");
    if (rc == 0)
        printf("verify: OK: %s/polls/*.json show exactly the totals of the %llu accepted votes "
               "(%d polls, matched %llu ms after the last answer)\n",
               b->o.verify_dir, (unsigned long long)accepted, n, (unsigned long long)waited);
    else
        printf("verify: FAILED (see the difference above)\n");
    if (v) {
        json_object_set_new(v, "ok", json_boolean(rc == 0));
        bench_json_set_num(v, "accepted", (double)accepted);
        bench_json_set_num(v, "waited_ms", (double)waited);
    }
    for (int i = 0; i < n; i++)
        free(exp[i]);
    free(exp);
    free(items);
    return rc == 0 ? 0 : BENCH_EXIT_VERIFY;
}

/* ---- one loop per thread ---- */

/* Thread t's share of n: the first n % nthreads threads take one more. */
static uint64_t share(uint64_t n, int nthreads, int t) {
    return n / (uint64_t)nthreads + ((uint64_t)t < n % (uint64_t)nthreads);
}

/* Builds w's own loop, generator, expectations and connections. w->o is
 * already w's share of the run. */
static int worker_init(bh_t *w, const struct event_config *ecfg, char *err, size_t esz) {
    gen_init(&w->gen, w->polls, w->npolls, (uint32_t)w->o.voters, w->o.dist, w->o.zipf_s,
             w->o.repeat, w->o.change, w->o.seed);
    rng_seed(&w->retry_rng, w->o.seed ^ 0x7e7241ull);
    if (w->o.verify_dir) {
        w->expect = xcalloc((size_t)w->npolls, sizeof *w->expect);
        for (int i = 0; i < w->npolls; i++)
            expect_poll_init(&w->expect[i], w->polls[i]->mode, w->polls[i]->noptions,
                             (uint32_t)w->o.voters);
    }
    hist_init(&w->lat, HIST_SUB_BITS_DEFAULT, HIST_HIGHEST);
    hist_init(&w->lat_sec, HIST_SUB_BITS_DEFAULT, HIST_HIGHEST);
    hist_init(&w->fresh, HIST_SUB_BITS_DEFAULT, HIST_HIGHEST);
    w->base = event_base_new_with_config(ecfg);
    if (!w->base) {
        snprintf(err, esz, "cannot create an event loop");
        return -1;
    }
    w->nconns_alloc = w->o.nconns;
    w->conns = xcalloc((size_t)w->o.nconns, sizeof *w->conns);
    w->freel = xcalloc((size_t)w->o.nconns, sizeof *w->freel);
    for (int i = 0; i < w->o.nconns; i++) {
        conn_t *c = &w->conns[i];
        c->b = w;
        /* hclient never resends on its own: a resent POST could count twice. */
        c->hc = hclient_new(w->base, (const struct sockaddr *)&w->addr, w->addrlen, w->o.timeout_s,
                            on_response, c);
        if (w->o.retry_ratio > 0)
            c->retry_hc = hclient_new(w->base, (const struct sockaddr *)&w->addr, w->addrlen,
                                      w->o.timeout_s, on_response, c);
        w->freel[w->nfree++] = c;
    }
    /* Free list as a stack, first connection on top. */
    for (int i = 0; i < w->o.nconns / 2; i++) {
        conn_t *t = w->freel[i];
        w->freel[i] = w->freel[w->o.nconns - 1 - i];
        w->freel[w->o.nconns - 1 - i] = t;
    }
    w->send_ev = evtimer_new(w->base, on_send_timer, w);
    w->progress_ev = event_new(w->base, -1, EV_PERSIST, on_progress, w);
    w->deadline_ev = evtimer_new(w->base, on_deadline, w);
    w->drain_ev = evtimer_new(w->base, on_drain_timeout, w);
    struct timeval one_s = {1, 0};
    event_add(w->progress_ev, &one_s);
    if (w->thread == 0) {
        /* libevent delivers a signal to one base only. */
        w->sigint_ev = evsignal_new(w->base, SIGINT, on_sigint, w);
        event_add(w->sigint_ev, NULL);
    } else {
        w->stop_ev = event_new(w->base, -1, EV_PERSIST, on_stop_check, w);
        struct timeval iv = {0, STOP_CHECK_MS * 1000};
        event_add(w->stop_ev, &iv);
    }
    if (w->probe_poll) {
        w->probe.b = w;
        w->probe.is_probe = 1;
        w->probe.hc = hclient_new(w->base, (const struct sockaddr *)&w->addr, w->addrlen,
                                  w->o.timeout_s, on_response, &w->probe);
        w->probe_ev = event_new(w->base, -1, EV_PERSIST, on_probe_timer, w);
        w->watch_ev = event_new(w->base, -1, EV_PERSIST, on_watch, w);
        struct timeval iv = {w->o.fresh_interval_ms / 1000, (w->o.fresh_interval_ms % 1000) * 1000};
        event_add(w->probe_ev, &iv);
    }
    return 0;
}

/* Adds up w's clients' failed connects. */
static void count_connect_failures(bh_t *w, const hclient_t *h) {
    int e = 0;
    if (!h)
        return;
    w->connect_failed += hclient_connect_failures(h, &e);
    if (e)
        w->connect_errno = e;
}

/* After the loop: requests still in flight (drain timeout, second ^C) are
 * answered now by hclient_cancel, through on_response like any other, so
 * each vote is counted once, as its attempts so far allow: unknown if one
 * of them left without an answer, accepted if an earlier attempt was, never
 * sent if nothing left. */
static void worker_abandon(bh_t *w) {
    w->abandoning = 1;
    w->stop_sending = 1; /* no retry or next vote from these answers */
    w->finished = 1;
    for (int i = 0; i < w->nconns_alloc; i++) {
        hclient_cancel(w->conns[i].hc);
        hclient_cancel(w->conns[i].retry_hc);
        count_connect_failures(w, w->conns[i].hc);
        count_connect_failures(w, w->conns[i].retry_hc);
    }
    hclient_cancel(w->probe.hc);
    count_connect_failures(w, w->probe.hc);
}

/* Runs w's loop to the end of its share. @locality w's own thread */
static void *worker_run(void *arg) {
    bh_t *w = arg;
    w->start_ns = mono_ns();
    w->last_done_ns = w->start_ns;
    if (w->o.duration_s > 0) {
        w->deadline_ns = w->start_ns + sec_ns(w->o.duration_s);
        struct timeval tv = ns_tv(sec_ns(w->o.duration_s));
        event_add(w->deadline_ev, &tv);
    }
    if (w->o.rate > 0) {
        w->open_loop = 1;
        rate_init(&w->rate, w->o.rate, w->start_ns);
    }
    if (w->probe_poll)
        probe_send(w);
    pump(w);
    event_base_dispatch(w->base);
    worker_abandon(w);
    return NULL;
}

/* Adds w's counts, latencies and expectations to b's. @locality after join */
static void worker_merge(bh_t *b, const bh_t *w) {
    b->sent += w->sent;
    b->done += w->done;
    b->gen_blocked += w->gen_blocked;
    b->no_response += w->no_response;
    b->unknown += w->unknown;
    b->unsent += w->unsent;
    b->connect_failed += w->connect_failed;
    if (w->connect_errno)
        b->connect_errno = w->connect_errno;
    b->retries += w->retries;
    b->retries_202 += w->retries_202;
    b->retries_settled += w->retries_settled;
    for (int s = 0; s < NSTATUS; s++)
        b->status[s] += w->status[s];
    for (int k = 0; k < VOTE_KINDS; k++)
        b->gen.kinds[k] += w->gen.kinds[k];
    hist_merge(&b->lat, &w->lat);
    if (w->max_backlog > b->max_backlog)
        b->max_backlog = w->max_backlog;
    b->unsent_due += w->unsent_due;
    if (w->start_ns < b->start_ns)
        b->start_ns = w->start_ns;
    if (w->last_done_ns > b->last_done_ns)
        b->last_done_ns = w->last_done_ns;
    for (int i = 0; b->expect && i < b->npolls; i++)
        expect_poll_add_delta(&b->expect[i], &w->expect[i]);
}

/* Frees what worker_init made (not what the threads share). */
static void worker_free(bh_t *w) {
    for (int i = 0; w->conns && i < w->nconns_alloc; i++) {
        hclient_free(w->conns[i].hc);
        hclient_free(w->conns[i].retry_hc);
    }
    hclient_free(w->probe.hc);
    struct event *evs[] = {w->send_ev,   w->progress_ev, w->deadline_ev, w->drain_ev,
                           w->sigint_ev, w->stop_ev,     w->probe_ev,    w->watch_ev};
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        if (evs[i])
            event_free(evs[i]);
    if (w->base)
        event_base_free(w->base);
    if (w->expect) {
        for (int i = 0; i < w->npolls; i++)
            expect_poll_free(&w->expect[i]);
        free(w->expect);
    }
    if (w->gen.polls)
        gen_free(&w->gen);
    hist_free(&w->lat);
    hist_free(&w->lat_sec);
    hist_free(&w->fresh);
    jwt_worker_free(w);
    free(w->conns);
    free(w->freel);
}

/* ---- main ---- */

int bench_http_main(int argc, char **argv) {
    bh_t *b = xcalloc(1, sizeof *b);
    char err[1024] = "";
    int rc = BENCH_EXIT_USAGE;
    uint64_t **base = NULL;
    json_t *json = NULL;
    struct event_config *ecfg = NULL;
    bh_t **ws = NULL; /* [nthreads]: ws[0] is b; the others own their loops */
    pthread_t *tids = NULL;
    int nstarted = 0;
    atomic_int stop_all = 0;
    b->stop_all = &stop_all;
    if (parse_opts(argc, argv, &b->o) != 0)
        goto out_nofree;
    b->conf = bench_load_polls(b->o.config_path, b->o.polls_csv, b->o.options_csv, b->o.mode, err,
                               sizeof err);
    if (!b->conf)
        goto out;
    if (!b->o.config_path && b->o.fresh_poll &&
        !config_poll(b->conf, b->o.fresh_poll, strlen(b->o.fresh_poll))) {
        /* A probe poll named on the command line only: define it like --poll. */
        char section[128];
        snprintf(section, sizeof section, "poll.%s", b->o.fresh_poll);
        if (config_set(b->conf, section, "options", b->o.options_csv ? b->o.options_csv : "a,b,c,d",
                       err, sizeof err) != 0 ||
            config_set(b->conf, section, "mode", b->o.mode ? b->o.mode : "one-per-voter", err,
                       sizeof err) != 0 ||
            config_validate(b->conf, err, sizeof err) != 0)
            goto out;
    }
    if (choose_polls(b, err, sizeof err) != 0 || parse_url(b, err, sizeof err) != 0 ||
        jwt_setup(b, err, sizeof err) != 0)
        goto out;
    rc = BENCH_EXIT_FAIL;
    if (!b->o.seed_set)
        b->o.seed = bench_seed();
    rng_t idr;
    rng_seed(&idr, b->o.seed ^ 0x5eedULL);
    snprintf(b->runid, sizeof b->runid, "b%08llx", (unsigned long long)(rng_next(&idr) >> 32));

    if (b->o.verify_dir && read_baselines(b, &base, err, sizeof err) != 0)
        goto out;
    if (b->probe_poll) {
        snprintf(b->probe_json, sizeof b->probe_json, "%s/polls/%s.json", b->o.public_dir,
                 b->probe_poll->id);
        uint64_t *counts = xcalloc((size_t)b->probe_poll->noptions, sizeof *counts);
        if (read_still(b->o.public_dir, &b->probe_poll, 1, &counts, err, sizeof err) != 0) {
            free(counts);
            goto out;
        }
        for (int k = 0; k < b->probe_poll->noptions; k++)
            b->probe_base_total += counts[k];
        free(counts);
        stat(b->probe_json, &b->probe_st);
    }

    if (hclient_resolve(b->host, b->port, &b->addr, &b->addrlen, err, sizeof err) != 0)
        goto out;
    ecfg = event_config_new();
    signal(SIGPIPE, SIG_IGN);

    /* Each thread's share of the run. Thread t > 0 votes as RUNID "t<t>", so
     * its voters are not thread 0's; only thread 0 probes. */
    int nt = b->o.nthreads;
    bh_opts_t all = b->o;
    ws = xcalloc((size_t)nt, sizeof *ws);
    ws[0] = b;
    for (int t = 0; t < nt; t++) {
        bh_t *w = t == 0 ? b : xcalloc(1, sizeof *w);
        if (t > 0) {
            ws[t] = w;
            w->conf = b->conf;
            w->polls = b->polls;
            w->npolls = b->npolls;
            w->paths = b->paths;
            w->port = b->port;
            w->addr = b->addr;
            w->addrlen = b->addrlen;
            w->stop_all = b->stop_all;
            memcpy(w->host, b->host, sizeof w->host);
            memcpy(w->hostport, b->hostport, sizeof w->hostport);
            snprintf(w->runid, sizeof w->runid, "%.12st%d", b->runid, t);
            w->o = all;
            w->o.quiet = 1;
            w->o.seed = all.seed + 0x9e3779b97f4a7c15ull * (uint64_t)t;
        }
        w->thread = t;
        w->o.nconns = (int)share((uint64_t)all.nconns, nt, t);
        w->o.voters = share(all.voters, nt, t);
        if (all.max_votes)
            w->o.max_votes = share(all.max_votes, nt, t);
        w->o.rate = all.rate / nt;
        jwt_worker_init(w, b);
        if (worker_init(w, ecfg, err, sizeof err) != 0)
            goto out;
    }
    tids = xcalloc((size_t)nt, sizeof *tids);
    for (int t = 1; t < nt; t++) {
        if (pthread_create(&tids[t], NULL, worker_run, ws[t]) != 0) {
            snprintf(err, sizeof err, "cannot start thread %d", t);
            atomic_store(&stop_all, STOP_SENDING);
            break;
        }
        nstarted = t;
    }
    worker_run(b);
    for (int t = 1; t <= nstarted; t++)
        pthread_join(tids[t], NULL);
    if (nstarted < nt - 1)
        goto out;
    for (int t = 1; t < nt; t++)
        worker_merge(b, ws[t]);
    b->o = all; /* the report is the whole run's */

    double secs = (double)(b->last_done_ns - b->start_ns) / 1e9;
    print_report(b, secs);
    if (b->o.json_path)
        json = json_report(b, secs);
    rc = 0;
    if (answered(b) == 0 && b->sent > 0) {
        fprintf(stderr, "tally-bench http: no request was answered: is %s up?\n", b->o.url);
        rc = BENCH_EXIT_FAIL;
    }
    if (b->o.verify_dir && rc == 0)
        rc = do_verify(b, base, json);
    if (json && bench_json_write(b->o.json_path, json) != 0) {
        fprintf(stderr, "tally-bench http: cannot write %s\n", b->o.json_path);
        rc = rc ? rc : BENCH_EXIT_FAIL;
    }
out:
    if (err[0])
        fprintf(stderr, "tally-bench http: %s\n", err);
    json_decref(json);
    if (base) {
        for (int i = 0; i < b->conf->npolls; i++)
            free(base[i]);
        free(base);
    }
    for (int t = 1; ws && t < b->o.nthreads; t++)
        if (ws[t]) {
            worker_free(ws[t]);
            free(ws[t]);
        }
    free(ws);
    free(tids);
    worker_free(b);
    if (ecfg)
        event_config_free(ecfg);
    for (int i = 0; b->paths && i < b->npolls; i++)
        free(b->paths[i]);
    free(b->paths);
    free(b->probe_path);
    free(b->polls);
    config_free(b->conf);
    free(b->jwt_key);
out_nofree:
    free(b);
    return rc;
}
