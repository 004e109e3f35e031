/* tally-bench sse: Server-Sent Events fan-out and freshness on a running
 * tally.
 *
 * Opens N subscribers to GET /v1/polls/ID/events (one epoll thread, raw
 * non-blocking sockets, connected in batches so the listen backlog never
 * overflows), then sends probe votes to that poll, one at a time. The poll
 * must be in unlimited mode and get no other votes: each probe raises its
 * total by exactly one, so a subscriber has seen probe k once an event's
 * "total" reaches the total before the run plus k. For each probe: the delay
 * from the 202 until the last subscriber (and the median one) had it, and,
 * with --json-probe, until GET /polls/ID.json served it. A subscriber that
 * never sees a probe fails the run (nothing is left out of the figures).
 *
 * The vote p99 under fan-out comes from a `tally-bench http` load run at
 * the same time on another poll (bench/NOTES.md shows the pair). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "common/util.h"

#define CONNECT_BATCH 500
#define SUB_BUF 262144 /* an event of the results JSON fits many times */
#define PROBE_TIMEOUT_MS 30000

static const char *help =
    "usage: tally-bench sse --port N --poll ID [options]\n"
    "\n"
    "Subscribes N clients to tally's event stream of poll ID (unlimited mode,\n"
    "no other votes), sends probe votes one at a time and reports the delay\n"
    "from each 202 to the event at the last (and the median) subscriber.\n"
    "\n"
    "      --host ADDR          tally's address (default 127.0.0.1)\n"
    "      --port N             tally's port (required)\n"
    "      --poll ID            the probed poll (required; unlimited mode)\n"
    "      --subscribers N      event streams to open (default 1000)\n"
    "      --probes N           probe votes (default 50)\n"
    "      --gap-ms N           pause between probes (default 100)\n"
    "      --json-probe         also time the 202 until /polls/ID.json shows it\n"
    "      --json FILE          the results as JSON too ('-' for stdout)\n"
    "\n"
    "Raises its own open-files limit to the hard limit (tally's must allow N\n"
    "connections too: ulimit -n, server.max_connections, server.sse_max_subscribers,\n"
    "server.max_connections_per_ip = 0).\n";

typedef struct {
    int fd;
    size_t len;
    int head_done;
    _Atomic int events;     /* events parsed */
    _Atomic uint64_t total; /* the highest total seen in an event */
    char *buf;
} sub_t;

typedef struct {
    sub_t *subs;
    int n;
    int ep;
    _Atomic uint64_t target; /* the total of the probe in flight */
    _Atomic int reached;     /* subscribers that have it */
    _Atomic int stop;
    _Atomic int failed;
    _Atomic uint64_t *reach_ns; /* [n]: per subscriber, for the current probe */
} fan_t;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int connect_to(const char *host, int port, int nonblock) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The events in s->buf: each "total" that rises is noted. */
static void sub_parse(fan_t *f, sub_t *s, int idx) {
    char *p = s->buf, *end = s->buf + s->len;
    if (!s->head_done) {
        char *h = memmem(p, s->len, "\r\n\r\n", 4);
        if (!h)
            return;
        if (strncmp(p, "HTTP/1.1 200", 12) != 0) {
            atomic_store(&f->failed, 1);
            return;
        }
        s->head_done = 1;
        p = h + 4;
    }
    for (;;) {
        char *e = memmem(p, (size_t)(end - p), "\n\n", 2);
        if (!e)
            break;
        *e = '\0';
        char *t = strstr(p, "\"total\":");
        if (t) {
            uint64_t v = strtoull(t + 8, NULL, 10);
            uint64_t target = atomic_load(&f->target);
            atomic_fetch_add(&s->events, 1);
            if (v > atomic_load_explicit(&s->total, memory_order_relaxed))
                atomic_store(&s->total, v);
            /* reach_ns is cleared by the main thread before it sets the
             * next target (seq_cst on target orders the two) */
            if (target && v >= target && atomic_load(&f->reach_ns[idx]) == 0) {
                atomic_store(&f->reach_ns[idx], now_ns());
                atomic_fetch_add(&f->reached, 1);
            }
        }
        p = e + 2;
    }
    size_t left = (size_t)(end - p);
    memmove(s->buf, p, left);
    s->len = left;
}

static void *fan_main(void *arg) {
    fan_t *f = arg;
    struct epoll_event evs[256];
    while (!atomic_load(&f->stop)) {
        int n = epoll_wait(f->ep, evs, 256, 50);
        for (int i = 0; i < n; i++) {
            int idx = (int)evs[i].data.u32;
            sub_t *s = &f->subs[idx];
            for (;;) {
                if (s->len == SUB_BUF) { /* an event longer than the buffer */
                    atomic_store(&f->failed, 1);
                    break;
                }
                ssize_t r = recv(s->fd, s->buf + s->len, SUB_BUF - s->len, 0);
                if (r > 0) {
                    s->len += (size_t)r;
                    sub_parse(f, s, idx);
                    continue;
                }
                if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                    atomic_store(&f->failed, 1); /* a stream ended */
                    epoll_ctl(f->ep, EPOLL_CTL_DEL, s->fd, NULL);
                }
                break;
            }
        }
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* A request on fd, its status and body (into body, NUL-terminated), or -1. */
static int request(int fd, const char *req, size_t rlen, char *body, size_t bsz) {
    if (send(fd, req, rlen, MSG_NOSIGNAL) != (ssize_t)rlen)
        return -1;
    char buf[65536];
    size_t len = 0;
    for (;;) {
        ssize_t r = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (r <= 0)
            return -1;
        len += (size_t)r;
        buf[len] = '\0';
        char *h = strstr(buf, "\r\n\r\n");
        if (!h)
            continue;
        char *cl = strcasestr(buf, "Content-Length:");
        size_t clen = cl && cl < h ? strtoul(cl + 15, NULL, 10) : 0;
        size_t have = len - (size_t)(h + 4 - buf);
        if (have < clen)
            continue;
        if (body) {
            size_t k = clen < bsz - 1 ? clen : bsz - 1;
            memcpy(body, h + 4, k);
            body[k] = '\0';
        }
        return atoi(buf + 9);
    }
}

static uint64_t json_total(const char *body) {
    const char *t = strstr(body, "\"total\":");
    return t ? strtoull(t + 8, NULL, 10) : 0;
}

int bench_sse_main(int argc, char **argv) {
    enum { O_HOST = 256, O_PORT, O_POLL, O_SUBS, O_PROBES, O_GAP, O_JPROBE, O_JSON };
    static const struct option longopts[] = {
        {"host", required_argument, 0, O_HOST},
        {"port", required_argument, 0, O_PORT},
        {"poll", required_argument, 0, O_POLL},
        {"subscribers", required_argument, 0, O_SUBS},
        {"probes", required_argument, 0, O_PROBES},
        {"gap-ms", required_argument, 0, O_GAP},
        {"json-probe", no_argument, 0, O_JPROBE},
        {"json", required_argument, 0, O_JSON},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *host = "127.0.0.1", *poll = NULL, *json_path = NULL;
    int port = 0, nsubs = 1000, probes = 50, gap_ms = 100, jprobe = 0, ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        const char *bad = NULL;
        switch (ch) {
        case 'h': fputs(help, stdout); return 0;
        case O_HOST: host = optarg; break;
        case O_PORT: bad = bench_parse_int(optarg, 1, 65535, &port) ? "a port" : NULL; break;
        case O_POLL: poll = optarg; break;
        case O_SUBS:
            bad = bench_parse_int(optarg, 1, 1000000, &nsubs) ? "1..1M subscribers" : NULL;
            break;
        case O_PROBES:
            bad = bench_parse_int(optarg, 1, 100000, &probes) ? "1..100000 probes" : NULL;
            break;
        case O_GAP: bad = bench_parse_int(optarg, 0, 60000, &gap_ms) ? "0..60000 ms" : NULL; break;
        case O_JPROBE: jprobe = 1; break;
        case O_JSON: json_path = optarg; break;
        default: return bench_opt_fail("sse", ch, argv);
        }
        if (bad)
            return bench_opt_bad("sse", bad, optarg);
    }
    if (bench_opt_rest("sse", argc, argv) != 0)
        return BENCH_EXIT_USAGE;
    if (!port || !poll) {
        fprintf(stderr, "tally-bench sse: --port and --poll are required\n");
        return BENCH_EXIT_USAGE;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)nsubs + 64) {
        fprintf(stderr, "tally-bench sse: the open-files limit %llu is below %d subscribers\n",
                (unsigned long long)rl.rlim_cur, nsubs);
        return BENCH_EXIT_FAIL;
    }

    fan_t f = {0};
    f.n = nsubs;
    f.subs = xcalloc((size_t)nsubs, sizeof *f.subs);
    f.reach_ns = xcalloc((size_t)nsubs, sizeof *f.reach_ns);
    f.ep = epoll_create1(EPOLL_CLOEXEC);
    char get[512];
    int glen = snprintf(get, sizeof get,
                        "GET /v1/polls/%s/events HTTP/1.1\r\nHost: b\r\nAccept: "
                        "text/event-stream\r\n\r\n",
                        poll);
    pthread_t th;
    pthread_create(&th, NULL, fan_main, &f);
    int rc = BENCH_EXIT_FAIL;
    uint64_t t_open = now_ns();
    /* Batches: each one's first events arrive before the next connects. */
    for (int b = 0; b < nsubs; b += CONNECT_BATCH) {
        int e = b + CONNECT_BATCH < nsubs ? b + CONNECT_BATCH : nsubs;
        for (int i = b; i < e; i++) {
            sub_t *s = &f.subs[i];
            s->buf = xmalloc(SUB_BUF);
            s->fd = connect_to(host, port, 0);
            if (s->fd < 0 || send(s->fd, get, (size_t)glen, MSG_NOSIGNAL) != glen) {
                fprintf(stderr, "tally-bench sse: subscriber %d: %s\n", i, strerror(errno));
                goto out;
            }
            fcntl(s->fd, F_SETFL, fcntl(s->fd, F_GETFL) | O_NONBLOCK);
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
            if (epoll_ctl(f.ep, EPOLL_CTL_ADD, s->fd, &ev) != 0)
                goto out;
        }
        uint64_t deadline = now_ns() + 10000000000ull;
        for (;;) {
            int got = 0;
            for (int i = b; i < e; i++)
                got += atomic_load(&f.subs[i].events) > 0;
            if (got == e - b)
                break;
            if (atomic_load(&f.failed) || now_ns() > deadline) {
                fprintf(stderr,
                        "tally-bench sse: subscribers %d..%d did not all get their first "
                        "event (%d did)\n",
                        b, e - 1, got);
                goto out;
            }
            usleep(1000);
        }
    }
    double open_s = (double)(now_ns() - t_open) / 1e9;
    fprintf(stderr, "tally-bench sse: %d subscribers open in %.1f s\n", nsubs, open_s);

    int vfd = connect_to(host, port, 0), jfd = jprobe ? connect_to(host, port, 0) : -1;
    if (vfd < 0 || (jprobe && jfd < 0))
        goto out;
    char vreq[512], jreq[256], body[65536];
    int vlen = snprintf(vreq, sizeof vreq,
                        "POST /v1/polls/%s/votes HTTP/1.1\r\nHost: b\r\nContent-Type: "
                        "application/json\r\nContent-Length: 14\r\n\r\n{\"option\":\"p\"}",
                        poll);
    int jlen = snprintf(jreq, sizeof jreq, "GET /polls/%s.json HTTP/1.1\r\nHost: b\r\n\r\n", poll);
    if (request(vfd, jreq, (size_t)jlen, body, sizeof body) != 200) {
        fprintf(stderr, "tally-bench sse: GET /polls/%s.json failed\n", poll);
        goto out;
    }
    uint64_t base = json_total(body);
    hist_t last, median, jh, vote_h;
    hist_init(&last, 7, 60000000000ull);
    hist_init(&median, 7, 60000000000ull);
    hist_init(&jh, 7, 60000000000ull);
    hist_init(&vote_h, 7, 60000000000ull);
    for (int k = 1; k <= probes; k++) {
        for (int i = 0; i < nsubs; i++)
            atomic_store(&f.reach_ns[i], 0);
        atomic_store(&f.reached, 0);
        atomic_store(&f.target, base + (uint64_t)k);
        uint64_t t0 = now_ns();
        int st = request(vfd, vreq, (size_t)vlen, NULL, 0);
        uint64_t t202 = now_ns();
        if (st != 202) {
            fprintf(stderr, "tally-bench sse: probe %d answered %d\n", k, st);
            goto out_h;
        }
        hist_record(&vote_h, t202 - t0);
        uint64_t jseen = 0;
        uint64_t deadline = t202 + (uint64_t)PROBE_TIMEOUT_MS * 1000000u;
        while (atomic_load(&f.reached) < nsubs || (jprobe && !jseen)) {
            if (jprobe && !jseen && request(jfd, jreq, (size_t)jlen, body, sizeof body) == 200 &&
                json_total(body) >= base + (uint64_t)k)
                jseen = now_ns();
            if (atomic_load(&f.failed) || now_ns() > deadline) {
                fprintf(stderr, "tally-bench sse: probe %d reached %d of %d subscribers\n", k,
                        atomic_load(&f.reached), nsubs);
                goto out_h;
            }
            if (!jprobe || jseen)
                usleep(200);
        }
        /* Per subscriber delays from the 202 (an event may beat the 202
         * to a subscriber: counted as 0). */
        uint64_t *d = xmalloc(sizeof *d * (size_t)nsubs);
        for (int i = 0; i < nsubs; i++)
            d[i] = atomic_load(&f.reach_ns[i]) > t202 ? atomic_load(&f.reach_ns[i]) - t202 : 0;
        uint64_t mx = 0;
        for (int i = 0; i < nsubs; i++)
            if (d[i] > mx)
                mx = d[i];
        qsort(d, (size_t)nsubs, sizeof *d, cmp_u64);
        hist_record(&last, mx);
        hist_record(&median, d[nsubs / 2]);
        free(d);
        if (jprobe)
            hist_record(&jh, jseen > t202 ? jseen - t202 : 0);
        if (gap_ms)
            usleep((useconds_t)gap_ms * 1000);
    }
    printf("sse fan-out: %d subscribers, %d probes (poll %s)\n", nsubs, probes, poll);
    bench_print_latency(stdout, "202 -> event at the last subscriber", &last);
    bench_print_latency(stdout, "202 -> event at the median subscriber", &median);
    if (jprobe)
        bench_print_latency(stdout, "202 -> visible in /polls/ID.json", &jh);
    bench_print_latency(stdout, "probe vote latency", &vote_h);
    if (json_path) {
        json_t *j = json_object();
        bench_json_set_num(j, "subscribers", nsubs);
        bench_json_set_num(j, "probes", probes);
        bench_json_set(j, "last_subscriber_ms", bench_json_latency(&last));
        bench_json_set(j, "median_subscriber_ms", bench_json_latency(&median));
        if (jprobe)
            bench_json_set(j, "json_visible_ms", bench_json_latency(&jh));
        bench_json_set(j, "probe_vote_ms", bench_json_latency(&vote_h));
        bench_json_write(json_path, j);
        json_decref(j);
    }
    rc = 0;
out_h:
    hist_free(&last);
    hist_free(&median);
    hist_free(&jh);
    hist_free(&vote_h);
out:
    atomic_store(&f.stop, 1);
    pthread_join(th, NULL);
    for (int i = 0; i < nsubs; i++) {
        if (f.subs[i].fd > 0)
            close(f.subs[i].fd);
        free(f.subs[i].buf);
    }
    free(f.subs);
    free(f.reach_ns);
    close(f.ep);
    return rc;
}
