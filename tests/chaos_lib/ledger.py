"""What the chaos test sent and what it was told, and the checker that holds
a log (file or topic) against it.

Every request with a voter is unique as (poll, option, voter): a voter never
sends the same option twice, so each request is identifiable in the log
without a marker in the record. Unlimited-mode votes without a voter are
counted per (poll, option) instead. A voter belongs to one client thread at
a time and its votes are sequential, so its log order can be checked too."""
import http.client
import json
import random
import threading
import time

# The chaos installation's polls: one per mode, enough options for a voter
# to vote several times without repeating itself.
POLLS = {
    "one": ("one-per-voter", ["a", "b", "c", "d"]),
    "chg": ("changeable", ["v", "w", "x", "y", "z"]),
    "free": ("unlimited", ["p", "q", "r"]),
}


def polls_ini():
    out = []
    for pid, (mode, opts) in POLLS.items():
        out.append(f"[poll.{pid}]\ntitle = chaos {mode}\noptions = {', '.join(opts)}\nmode = {mode}\n")
    return "\n".join(out)


class Violation(AssertionError):
    """A broken promise of tally (not a test malfunction)."""


class Req:
    __slots__ = ("rid", "poll", "option", "voter", "t_sent", "t_done", "status", "refused", "round")

    def __init__(self, rid, poll, option, voter, rnd):
        self.rid, self.poll, self.option, self.voter, self.round = rid, poll, option, voter, rnd
        self.t_sent = self.t_done = None
        self.status = None     # HTTP status, or None: no answer
        self.refused = False   # the connection was refused: never sent

    def key(self):
        return (self.poll, self.option, self.voter)


class Voter:
    """A voter of one poll and the options it has not sent yet."""
    __slots__ = ("poll", "name", "unused")

    def __init__(self, poll, name, rng):
        self.poll, self.name = poll, name
        self.unused = list(POLLS[poll][1])
        rng.shuffle(self.unused)


class Ledger:
    def __init__(self):
        self.lock = threading.Lock()
        self.reqs = []
        self.by_key = {}
        self.idle_voters = []  # voters with options left, owned by no thread
        self.nvoters = 0

    def new_req(self, poll, option, voter, rnd):
        with self.lock:
            r = Req(len(self.reqs), poll, option, voter, rnd)
            self.reqs.append(r)
            if voter is not None:
                assert r.key() not in self.by_key, "test bug: a request repeated"
                self.by_key[r.key()] = r
            return r

    def new_voter_name(self, poll):
        with self.lock:
            self.nvoters += 1
            return f"{poll}-{self.nvoters}"

    def since(self, t):
        with self.lock:
            return [r for r in self.reqs if r.t_sent is not None and r.t_sent >= t]


class Load:
    """Client threads on keep-alive connections sending votes in every mode
    until stopped; every request and its outcome goes to the ledger."""

    def __init__(self, tally, ledger, rng, rnd, nthreads=4, invalid=0.02):
        self.t, self.ledger, self.rnd = tally, ledger, rnd
        self.stop_ev = threading.Event()
        self.invalid = invalid
        # Hand previous rounds' voters to the threads: repeats across
        # restarts are what one-per-voter and changeable must get right.
        with ledger.lock:
            idle, ledger.idle_voters = ledger.idle_voters, []
        rng.shuffle(idle)
        self.seeds = [rng.randrange(1 << 30) for _ in range(nthreads)]
        self.owned = [idle[i::nthreads] for i in range(nthreads)]
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(nthreads)]
        for th in self.threads:
            th.start()

    def pick(self, rng, mine):
        x = rng.random()
        if x < self.invalid:
            return "one", "nope", f"bad-{rng.randrange(1 << 40)}", None
        poll = "one" if x < 0.4 else "chg" if x < 0.75 else "free"
        if poll == "free":
            # unlimited: a unique voter, or none at all
            voter = self.ledger.new_voter_name("free") if rng.random() < 0.8 else None
            return poll, rng.choice(POLLS[poll][1]), voter, None
        cands = [v for v in mine if v.poll == poll and v.unused]
        if cands and rng.random() < 0.7:
            v = rng.choice(cands)
        else:
            v = Voter(poll, self.ledger.new_voter_name(poll), rng)
            mine.append(v)
        return poll, v.unused.pop(), v.name, v

    def run(self, tid):
        rng = random.Random(self.seeds[tid])
        mine = self.owned[tid]
        conn = None
        while not self.stop_ev.is_set():
            poll, option, voter, _ = self.pick(rng, mine)
            # option "nope": expected 422, never in the log
            r = self.ledger.new_req(poll, option, voter, self.rnd)
            body = {"option": option}
            if voter is not None:
                body["voter"] = voter
            r.t_sent = time.monotonic()
            try:
                if conn is None:
                    conn = self.t.connect(timeout=15)
                    conn.connect()
            except ConnectionRefusedError:
                r.refused, r.t_done, conn = True, time.monotonic(), None
                time.sleep(0.02)
                continue
            except OSError:
                r.t_done, conn = time.monotonic(), None
                time.sleep(0.02)
                continue
            try:
                conn.request("POST", f"/v1/polls/{poll}/votes", json.dumps(body),
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                r.status = resp.status
                r.t_done = time.monotonic()
            except (OSError, http.client.HTTPException):
                r.t_done = time.monotonic()
                conn.close()
                conn = None
                time.sleep(0.02)
                continue
            if r.status == 503:
                time.sleep(0.02)  # Retry-After, shortened
        if conn:
            conn.close()
        with self.ledger.lock:
            self.ledger.idle_voters.extend(v for v in mine if v.unused)

    def finish(self):
        self.stop_ev.set()
        for th in self.threads:
            th.join()


def count_statuses(reqs):
    out = {}
    for r in reqs:
        k = "refused" if r.refused else str(r.status) if r.status is not None else "none"
        out[k] = out.get(k, 0) + 1
    return out


def tally_log(records):
    """Totals from log records in log order, with each poll's mode rules
    (records of one voter share a partition, so any interleaving of
    partitions gives the same result)."""
    totals = {p: {o: 0 for o in opts} for p, (_, opts) in POLLS.items()}
    choice = {}
    for rec in records:
        if rec.poll not in POLLS or rec.option not in totals[rec.poll]:
            raise Violation(f"record for unknown poll/option in the log: {rec}")
        mode = POLLS[rec.poll][0]
        if mode == "unlimited":
            totals[rec.poll][rec.option] += 1
            continue
        if rec.voter is None:
            raise Violation(f"{mode} record without a voter in the log: {rec}")
        k = (rec.poll, rec.voter)
        prev = choice.get(k)
        if prev is None:
            choice[k] = rec.option
            totals[rec.poll][rec.option] += 1
        elif mode == "changeable" and prev != rec.option:
            totals[rec.poll][prev] -= 1
            totals[rec.poll][rec.option] += 1
            choice[k] = rec.option
    return totals


def check_records(ledger, records):
    """Holds the log's records against the ledger. Raises Violation naming
    the first broken promise; returns a dict of figures."""
    counts, pos, anon = {}, {}, {}
    for i, rec in enumerate(records):
        if rec.voter is None:
            k = (rec.poll, rec.option)
            anon[k] = anon.get(k, 0) + 1
            continue
        k = rec.key()
        if k not in ledger.by_key:
            raise Violation(f"record in the log that the test never sent: {rec}")
        counts[k] = counts.get(k, 0) + 1
        pos.setdefault(k, (rec.partition, i))
    with ledger.lock:
        reqs = list(ledger.reqs)
    acked = maybe = 0
    anon_acked, anon_maybe = {}, {}
    voter_reqs = {}
    for r in reqs:
        if r.t_sent is None:
            continue
        if r.voter is None:
            k = (r.poll, r.option)
            if r.status == 202:
                anon_acked[k] = anon_acked.get(k, 0) + 1
            elif not r.refused and (r.status is None or r.status >= 500):
                anon_maybe[k] = anon_maybe.get(k, 0) + 1
            continue
        n = counts.get(r.key(), 0)
        if r.status == 202:
            acked += 1
            if n != 1:
                raise Violation(f"acknowledged vote {r.poll}/{r.option} voter={r.voter} (rid {r.rid}, "
                                f"round {r.round}) is in the log {n} times, not once")
        elif r.refused or (r.status is not None and r.status < 500):
            if n:
                raise Violation(f"vote answered {'connection refused' if r.refused else r.status} "
                                f"is in the log: {r.poll}/{r.option} voter={r.voter} (rid {r.rid})")
        else:
            maybe += n
            if n > 1:
                raise Violation(f"unacknowledged vote {r.poll}/{r.option} voter={r.voter} "
                                f"is in the log {n} times")
        if r.poll != "free" and r.option != "nope":
            voter_reqs.setdefault((r.poll, r.voter), []).append(r)
    for k in set(anon) | set(anon_acked) | set(anon_maybe):
        n, lo = anon.get(k, 0), anon_acked.get(k, 0)
        hi = lo + anon_maybe.get(k, 0)
        if not lo <= n <= hi:
            raise Violation(f"voter-less votes for {k[0]}/{k[1]}: {n} in the log, but {lo} acknowledged "
                            f"and {hi - lo} unanswered")
    # A voter's votes: one partition, and log order = the order it sent them
    # (for every acknowledged vote sent after the previous one was answered).
    for (poll, voter), rs in voter_reqs.items():
        parts = {pos[r.key()][0] for r in rs if r.key() in pos}
        if len(parts) > 1:
            raise Violation(f"voter {voter} of {poll} is in partitions {sorted(parts)}")
        rs.sort(key=lambda r: r.t_sent)
        prev = None
        for r in rs:
            if r.status != 202:
                continue
            if prev is not None and r.t_sent > prev.t_done and pos[r.key()] < pos[prev.key()]:
                raise Violation(f"voter {voter} of {poll}: vote {r.option} was sent after {prev.option} "
                                f"was acknowledged but is before it in the log")
            prev = r
    return {"acked": acked + sum(anon_acked.values()), "maybe_logged": maybe, "records": len(records)}


def totals_diff(want, got):
    out = []
    for p in want:
        g = (got or {}).get(p)
        if g != want[p]:
            out.append(f"{p}: expected {want[p]}, got {g}")
    return "; ".join(out)
