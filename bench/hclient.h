/* hclient: a small HTTP/1.1 client connection for the load generator.
 *
 * One TCP connection (opened lazily, reopened on the next send after a
 * close) with at most one request in flight, on a libevent loop: raw events
 * on a non-blocking socket, responses parsed by http_parser. The caller
 * formats the whole request; the client moves bytes and reports the status.
 * It exists because the evhttp client cost ~23 CPU-us per request and so set
 * the latency the bench measured.
 *
 * @locality every call and every callback on the thread running the
 *           hclient's event_base */
#ifndef TALLY_BENCH_HCLIENT_H
#define TALLY_BENCH_HCLIENT_H

#include <stddef.h>
#include <sys/socket.h>

struct event_base;

typedef struct hclient_s hclient_t;

/* The answer to the request in flight. status > 0 is the response's status
 * code. 0 is no answer to a request of which some bytes left (reset, close
 * before the whole answer, unparseable response, timeout): the server may
 * have acted on it. < 0 is -errno of why no byte of it ever left (the
 * connect failed or did not finish in time, the socket took none of it):
 * the server cannot have seen it. Runs exactly once per accepted
 * hclient_send, from the event loop (never from inside hclient_send) or
 * from hclient_cancel. It may call hclient_send (the client is idle again)
 * but not hclient_free. */
typedef void (*hclient_answer_fn)(void *arg, int status);

/* Resolves host:port (numeric or by name) into *addr for hclient_new.
 * Returns 0, or -1 with the reason in err. */
int hclient_resolve(const char *host, int port, struct sockaddr_storage *addr, socklen_t *addrlen,
                    char *err, size_t esz);

/* A client for the server at addr (copied). timeout_s bounds each request
 * from hclient_send to its answer. No connection is made until the first
 * send. */
hclient_t *hclient_new(struct event_base *base, const struct sockaddr *addr, socklen_t addrlen,
                       int timeout_s, hclient_answer_fn on_answer, void *arg);

/* Sends one complete request (req[0..len), copied if it cannot go out at
 * once). Returns 0 when on_answer will follow, or -1 with errno when nothing
 * was sent and no callback will come: EBUSY with a request in flight, or the
 * error of socket(). A connect that fails is an answer of -errno, held back
 * for a backoff that doubles with each failure in a row (1 ms to 1 s), so
 * the next connect cannot follow at once. */
int hclient_send(hclient_t *h, const char *req, size_t len);

/* Connections opened so far (a kept-alive connection counts once). */
unsigned long hclient_connects(const hclient_t *h);

/* Connects that failed so far (refused, no local port, not done by the
 * deadline); *last_errno (if not NULL): the errno of the latest, 0 if none. */
unsigned long hclient_connect_failures(const hclient_t *h, int *last_errno);

/* Answers the request in flight, if any, from inside this call, as the
 * loop would at its deadline (0, or -ECANCELED if none of it left), and
 * closes the connection. For a caller that stops waiting: every request
 * still gets its one answer. NULL is a no-op. */
void hclient_cancel(hclient_t *h);

/* Closes the connection; a request in flight gets no callback. */
void hclient_free(hclient_t *h);

#endif
