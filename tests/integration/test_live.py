"""Live results and watching (tsan): Server-Sent Events (first event, a vote's
event within a second, resume with Last-Event-ID, heartbeats, subscribers
on every thread, the subscriber cap, slow readers dropped, streams not
counted as vote connections by the group commit), GET /metrics
(promtool check metrics, counters equal to the votes sent), an embargoed
poll's file and stream without counts until final (also once PATCHed to
on_close), polls created at run time streaming like config polls (503
starting, not 404, while the catalog loads), and GET /readyz
flipping on a vanished log and on engine lag (a staged slow disk)."""
import json
import os
import re
import shutil
import socket
import subprocess
import time
import unittest

from harness import SANITIZE, SHIM, TIMEOUT_MULT, TallyTestCase, wait_until


class Events:
    """A raw-socket SSE client: the events as (id, data) pairs, comments
    counted."""

    def __init__(self, port, poll, last_id=None, timeout=10, rcvbuf=None):
        self.s = socket.socket()
        if rcvbuf:  # before connecting: the window is offered at the handshake
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(timeout * TIMEOUT_MULT)
        self.s.connect(("127.0.0.1", port))
        extra = f"Last-Event-ID: {last_id}\r\n" if last_id is not None else ""
        self.s.sendall(f"GET /v1/polls/{poll}/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
                       f"{extra}\r\n".encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise AssertionError("stream closed before its head: %r" % self.buf)
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        self.comments = 0
        self.retry = None

    def next(self, timeout=5):
        """The next event (id, parsed data); None on timeout."""
        deadline = time.monotonic() + timeout * TIMEOUT_MULT
        while True:
            while b"\n\n" in self.buf:
                block, self.buf = self.buf.split(b"\n\n", 1)
                ev_id, data = None, []
                for line in block.decode().split("\n"):
                    if line.startswith(":"):
                        self.comments += 1
                    elif line.startswith("id: "):
                        ev_id = int(line[4:])
                    elif line.startswith("data: "):
                        data.append(line[6:])
                    elif line.startswith("retry: "):
                        self.retry = int(line[7:])
                if data:
                    return ev_id, json.loads("\n".join(data))
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.s.settimeout(left)
            try:
                chunk = self.s.recv(65536)
            except socket.timeout:
                return None
            if not chunk:
                raise EOFError("stream closed")
            self.buf += chunk

    def close(self):
        self.s.close()


def scrape(t):
    st, body = t.request("GET", "/metrics")
    assert st == 200, st
    assert t.last_headers["Content-Type"].startswith("text/plain; version=0.0.4"), t.last_headers
    return body.decode()


def sample(text, name, labels=""):
    """The value of one series in an exposition, None when absent."""
    m = re.search(r"^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)$",
                  text, re.M)
    return None if m is None else float(m.group(1))


class SSE(TallyTestCase):
    def test_first_event_then_a_votes_event_within_a_second_then_resume(self):
        t = self.make().start("-s", "server.threads=2")
        ev = Events(t.port, "one")
        self.assertEqual(ev.status, 200)
        self.assertEqual(ev.headers["content-type"], "text/event-stream")
        first = ev.next()
        self.assertIsNotNone(first, "no first event")
        v0, d0 = first
        self.assertEqual(d0["poll"], "one")
        self.assertEqual(d0["version"], v0, "the event id is the results' version")
        self.assertEqual(d0["total"], 0)
        self.assertEqual(ev.retry, 2000)
        sent = time.monotonic()
        self.assertEqual(t.vote("one", "b", "v1")[0], 202)
        # An event with the vote within a second. Renderings without it may
        # come first (the engine applying the config polls' DEFINEs, written
        # at start, is a new version too), each newer than the last.
        prev = v0
        while True:
            left = 1.0 * TIMEOUT_MULT - (time.monotonic() - sent)
            got = ev.next(timeout=max(left, 0.01) / TIMEOUT_MULT)
            self.assertIsNotNone(got, "no event with the vote within a second of the 202")
            self.assertLess(time.monotonic() - sent, 1.0 * TIMEOUT_MULT)
            self.assertGreater(got[0], prev, "versions only grow")
            prev = got[0]
            if got[1]["total"] == 1:
                break
            self.assertEqual(got[1]["total"], 0, got[1])
        v1, d1 = got
        self.assertGreater(v1, v0)
        self.assertEqual({o["id"]: o["votes"] for o in d1["options"]}, {"a": 0, "b": 1, "c": 0})
        # The file says the same at that version.
        wait_until(lambda: (t.published("one") or {}).get("version", 0) >= v1, 5, "the file")
        ev.close()

        # Resume: the same id gets nothing but heartbeats; an older one the
        # current version at once.
        same = Events(t.port, "one", last_id=v1)
        self.assertIsNone(same.next(timeout=0.5), "an event although Last-Event-ID is current")
        older = Events(t.port, "one", last_id=v0)
        got = older.next(timeout=2)
        self.assertIsNotNone(got)
        self.assertEqual(got[0], v1)
        # A new vote reaches both.
        self.assertEqual(t.vote("one", "c", "v2")[0], 202)
        a, b = same.next(timeout=2), older.next(timeout=2)
        self.assertIsNotNone(a)
        self.assertIsNotNone(b)
        self.assertEqual(a[0], b[0])
        self.assertEqual(a[1]["total"], 2)
        same.close()
        older.close()
        # Unknown poll: 404 JSON.
        st, body = t.request("GET", "/v1/polls/nope/events")
        self.assertEqual(st, 404)
        self.assertEqual(json.loads(body)["error"], "unknown_poll")
        t.stop()

    def test_many_subscribers_on_every_thread_get_each_version_once(self):
        # 700 over 2 threads: each loop fans out in several slices of 256.
        t = self.make().start("-s", "server.threads=2", "-s", "server.sse_heartbeat_ms=200")
        subs = [Events(t.port, "free") for _ in range(700)]
        firsts = [s.next() for s in subs]
        self.assertTrue(all(firsts), "a subscriber got no first event")
        for n in range(1, 4):
            self.assertEqual(t.vote("free", "p")[0], 202)
            # Each subscriber sees totals rise to n, versions strictly
            # increasing (coalesced versions may be skipped, never repeated).
            for s, f in zip(subs, firsts):
                last = f[0]
                while True:
                    got = s.next(timeout=5)
                    self.assertIsNotNone(got, "a subscriber missed a version")
                    self.assertGreater(got[0], last)
                    last = got[0]
                    if got[1]["total"] == n:
                        break
                firsts[firsts.index(f)] = (last, None)
        # Heartbeats arrive while nothing changes.
        time.sleep(0.7)
        s = subs[0]
        self.assertIsNone(s.next(timeout=0.3))
        self.assertGreater(s.comments, 0, "no heartbeat comment")
        m = scrape(t)
        self.assertEqual(sample(m, "tally_sse_subscribers"), 700)
        for s in subs:
            s.close()
        wait_until(lambda: sample(scrape(t), "tally_sse_subscribers") == 0, 5, "subscribers to be counted off")
        t.stop()

    def test_subscriber_cap_and_a_reader_that_stops_reading_is_dropped(self):
        # Events of some 60 KiB, so that a reader that stops reading fills
        # its socket soon (a stream's SO_SNDBUF is 64 KiB). 480 options: the
        # poll's definition (a control record in the log, at most 60000
        # bytes of JSON) must fit too.
        opts = [f"o{i}" for i in range(480)]
        polls = ("[poll.big]\ntitle = big\noptions = p, q,\n  " + ",\n  ".join(opts) + "\nmode = unlimited\n" +
                 "".join(f"label.{o} = {'label of ' + o:<90}.\n" for o in opts))
        t = self.make(polls=polls).start("-s", "server.sse_max_subscribers=2", "-s", "server.body_timeout_ms=300")
        a, b = Events(t.port, "big"), Events(t.port, "big", rcvbuf=4096)
        st, body = t.request("GET", "/v1/polls/big/events")
        self.assertEqual(st, 503)
        self.assertEqual(json.loads(body)["error"], "too_many_subscribers")
        a.close()
        wait_until(lambda: sample(scrape(t), "tally_sse_subscribers") == 1, 5, "a slot to free up")
        # b never reads: its socket fills, and a write that stays blocked
        # past body_timeout_ms drops it (nothing is buffered for it beyond
        # the newest event: the server's memory does not grow).
        conn = t.connect()
        sent = 0
        deadline = time.monotonic() + 20 * TIMEOUT_MULT
        while sample(scrape(t), "tally_sse_dropped_total") < 1:
            self.assertLess(time.monotonic(), deadline, "the slow reader was never dropped")
            for _ in range(20):
                self.assertEqual(t.vote("big", "q", conn=conn)[0], 202)
                sent += 1
            time.sleep(0.02)
        wait_until(lambda: sample(scrape(t), "tally_sse_subscribers") == 0, 5, "it to be counted off")
        c = Events(t.port, "big")  # its slot is free again
        self.assertEqual(c.status, 200)
        t.wait_counts({"big": dict({"p": 0, "q": sent}, **{o: 0 for o in opts})})
        got = c.next()
        while got[1]["total"] < sent:
            got = c.next()
        self.assertEqual(got[1]["total"], sent)
        c.close()
        b.close()
        t.stop()

    def test_event_streams_are_not_counted_as_vote_connections_and_the_count_does_not_drift(self):
        # The group commit ends a round once every open vote connection has
        # a vote in it (vlog_set_clients). With a 100 ms gather, a lone
        # connection's vote goes at once; an idle second one makes it wait
        # the gather out. Streams (open, closed, reset while subscribing),
        # HEAD, 503 too_many_subscribers and 404 must leave that count as
        # it was: too high and every round waits, too low and rounds go
        # before the connections that could join them.
        t = self.make().start("-s", "log.group_commit_us=100000", "-s", "log.group_commit_max_us=100000",
                              "-s", "server.sse_max_subscribers=2", "-s", "server.threads=2")
        conn = t.connect()

        def vote_ms():
            took = []
            for _ in range(5):
                t0 = time.monotonic()
                self.assertEqual(t.vote("free", "p", conn=conn)[0], 202)
                took.append((time.monotonic() - t0) * 1000)
            return sorted(took)[2]
        self.assertLess(vote_ms(), 50, "a lone connection's vote waited out the gather")
        streams = [Events(t.port, "free") for _ in range(2)]
        self.assertLess(vote_ms(), 50, "event streams counted as vote connections")
        self.assertEqual(t.request("GET", "/v1/polls/free/events")[0], 503)
        self.assertEqual(t.request("GET", "/v1/polls/nope/events")[0], 404)
        for s in streams:
            s.close()
        # The server learns of a close when it reads the FIN: until then the
        # cap is still full and a HEAD is 503 (seen under TSan).
        wait_until(lambda: sample(scrape(t), "tally_sse_subscribers") == 0, 5, "closed streams to be counted off")
        conn = t.connect()
        self.assertEqual(t.request("HEAD", "/v1/polls/free/events", conn=conn)[0], 200)
        # A stream has no length to tell (it was "Content-Length: 0", which
        # says a GET's body is empty); the connection stays usable.
        self.assertNotIn("content-length", {k.lower() for k in t.last_headers})
        self.assertEqual(t.last_headers.get("Content-Type"), "text/event-stream")
        self.assertEqual(t.request("GET", "/healthz", conn=conn)[0], 200)
        conn.close()
        for _ in range(10):  # reset before or while subscribing
            s = socket.create_connection(("127.0.0.1", t.port))
            s.sendall(b"GET /v1/polls/free/events HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        wait_until(lambda: sample(scrape(t), "tally_sse_subscribers") == 0, 5, "streams to be counted off")
        self.assertLess(vote_ms(), 50, "the count drifted up")
        idle = t.connect()
        idle.connect()
        wait_until(lambda: vote_ms() > 80, 5, "an idle connection to be counted (the count drifted down)")
        idle.close()
        conn.close()
        t.stop()


class Embargo(TallyTestCase):
    def test_an_embargoed_poll_streams_and_publishes_its_state_only_until_final(self):
        # visibility = on_close: until the poll is final neither its file nor
        # its event stream may tell a count (no votes, total, late, series:
        # the series' buckets sum to the totals). Closes 3 s after start,
        # final admin.final_grace_ms (2 s) later.
        closes = time.time() + 3 * TIMEOUT_MULT
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(closes)) + ".%03dZ" % int(closes % 1 * 1000)
        polls = ("[poll.secret]\ntitle = Secret\noptions = a, b\nmode = unlimited\n"
                 f"visibility = on_close\ncloses_at = {stamp}\n")
        t = self.make(polls=polls).start("-s", "admin.final_grace_ms=2000")
        counts = ("votes", "total", "late", "series", "final_positions")

        def state_only(data, what):
            self.assertEqual(set(data), {"poll", "version", "state"}, f"{what}: {data}")
            self.assertEqual(data["poll"], "secret")

        ev = Events(t.port, "secret")
        self.assertEqual(ev.status, 200)
        first = ev.next()
        self.assertIsNotNone(first, "no first event")
        state_only(first[1], "first event")
        self.assertEqual(first[1]["state"], "open")
        self.assertEqual(first[1]["version"], first[0])
        sent = 0
        for opt in ("a", "b", "b"):
            self.assertEqual(t.vote("secret", opt)[0], 202)
            sent += 1
        # The engine counted them (stats), and the stream stays quiet: what
        # it shows did not change, and an event per burst would tell the
        # vote rate. The file keeps its version too.
        wait_until(lambda: json.loads(t.request("GET", "/v1/stats")[1])["engine"]["applied"] >= sent, 10,
                   "the engine to count the votes")
        got = ev.next(timeout=1)
        self.assertIsNone(got, "an event for votes the stream may not tell")
        pub = t.published("secret")
        self.assertEqual(pub["version"], first[0])
        self.assertEqual(pub["state"], "open")
        self.assertEqual(pub["visibility"], "on_close")
        for k in counts:
            self.assertNotIn(k, pub, f"the file tells {k}: {pub}")
        for o in pub["options"]:
            self.assertEqual(set(o), {"id", "label"}, o)
        with open(os.path.join(t.dir, "public", "polls", "secret.html")) as f:
            page = f.read()
        self.assertNotIn("id=\"total\"", page)
        self.assertNotIn("(66.7%)", page)
        # Closed, then final: the counts come out, in the file and the stream.
        seen = set()
        final = None
        deadline = time.monotonic() + 15 * TIMEOUT_MULT
        while final is None and time.monotonic() < deadline:
            got = ev.next(timeout=1)
            if got is None:
                continue
            d = got[1]
            seen.add(d.get("state"))
            if d.get("state") == "final":
                final = d
            else:
                state_only(d, "event before final")
        self.assertIsNotNone(final, "the poll never became final")
        self.assertIn("closed", seen, "the stream said closed before final")
        self.assertEqual(final["total"], sent)
        self.assertEqual({o["id"]: o["votes"] for o in final["options"]}, {"a": 1, "b": 2})
        self.assertEqual(sum(sum(b["counts"]) for b in final["series"]["buckets"]), sent)
        pub = t.published("secret")
        self.assertEqual(pub["state"], "final")
        self.assertEqual(pub["total"], sent)
        ev.close()
        t.stop()

    def test_a_poll_patched_to_on_close_streams_its_state_only_to_old_and_new_subscribers(self):
        # The stream's embargo follows the definition the publisher renders:
        # once the engine has the PATCH, the next event of every subscriber
        # and the first of a new one carry the state alone (counts from
        # before the PATCH were public then; none after it are shown).
        from test_admin import Admin
        a = Admin(self)
        t = a.t.start("-s", "server.threads=2")
        st, body = a.create(id="pv", title="PV", options=["x", "y"], mode="unlimited")
        self.assertEqual(st, 201, body)
        old = Events(t.port, "pv")
        self.assertIsNotNone(old.next(), "no first event")
        self.assertEqual(t.vote("pv", "x")[0], 202)
        st, body = a.request("PATCH", "/v1/admin/polls/pv", {"visibility": "on_close"})
        self.assertEqual((st, body["visibility"]), (200, "on_close"), body)
        deadline = time.monotonic() + 10 * TIMEOUT_MULT
        while True:
            got = old.next(timeout=1)
            self.assertLess(time.monotonic(), deadline, "no state-only event after the PATCH")
            if got and "total" not in got[1]:
                break
        self.assertEqual(set(got[1]), {"poll", "version", "state"}, got[1])
        new = Events(t.port, "pv")
        first = new.next()
        self.assertEqual(set(first[1]), {"poll", "version", "state"}, first[1])
        self.assertEqual(t.vote("pv", "y")[0], 202)
        wait_until(lambda: json.loads(t.request("GET", "/v1/stats")[1])["engine"]["applied"] >= 2, 10,
                   "the engine to count the votes")
        for ev in (old, new):
            self.assertIsNone(ev.next(timeout=1), "an event for a vote the stream may not tell")
            ev.close()
        self.assertNotIn("total", t.published("pv"))
        t.stop()


class RunTimePolls(TallyTestCase):
    """Polls created through the admin API stream like config polls (they
    used to get 404 on /events, and the page fell back to polling)."""

    def test_polls_created_at_run_time_stream_and_an_embargoed_one_streams_its_state_only(self):
        from test_admin import Admin
        a = Admin(self)
        t = a.t.start("-s", "server.threads=2")
        st, body = t.request("GET", "/v1/polls/later/events")
        self.assertEqual(st, 404, "a poll nobody created yet")
        self.assertEqual(json.loads(body)["error"], "unknown_poll")
        # More polls than the hub's and the loops' first allocation (16
        # slots, an index of 32), so both grow while subscribers are on.
        early = Events(t.port, "one")  # a config poll, subscribed before the growth
        self.assertIsNotNone(early.next(), "no first event for a config poll")
        for i in range(40):
            st, body = a.create(id=f"rt{i}", title=f"Round {i}", options=["x", "y"], mode="unlimited")
            self.assertEqual(st, 201, body)
        st, body = a.create(id="hidden", title="Hidden", options=["x", "y"], mode="unlimited",
                            visibility="on_close")
        self.assertEqual(st, 201, body)
        subs = {pid: Events(t.port, pid) for pid in ("rt0", "rt39", "hidden")}
        for pid, ev in subs.items():
            self.assertEqual(ev.status, 200, pid)
            first = ev.next()
            self.assertIsNotNone(first, f"no first event for {pid}")
            self.assertEqual(first[1]["poll"], pid)
            if pid == "hidden":
                self.assertEqual(set(first[1]), {"poll", "version", "state"}, first[1])
            else:
                self.assertEqual(first[1]["total"], 0)
        # A vote on each reaches its stream within a second.
        for pid, opt, n in (("rt39", "y", 2), ("rt0", "x", 1), ("hidden", "x", 3)):
            for k in range(n):
                self.assertEqual(t.vote(pid, opt, f"{pid}-{k}")[0], 202)
        for pid, want in (("rt39", {"x": 0, "y": 2}), ("rt0", {"x": 1, "y": 0})):
            sent = time.monotonic()
            while True:
                left = 1.0 * TIMEOUT_MULT - (time.monotonic() - sent)
                got = subs[pid].next(timeout=max(left, 0.01) / TIMEOUT_MULT)
                self.assertIsNotNone(got, f"{pid}: no event with the votes within a second")
                if got[1]["total"] == sum(want.values()):
                    break
            self.assertEqual({o["id"]: o["votes"] for o in got[1]["options"]}, want)
        # The embargoed one: a newer version, state only, until final.
        wait_until(lambda: json.loads(t.request("GET", "/v1/stats")[1])["engine"]["applied"] >= 6, 10,
                   "the engine to count the votes")
        st, body = a.request("POST", "/v1/admin/polls/hidden/close")
        self.assertEqual(st, 200, body)
        final = None
        deadline = time.monotonic() + 20 * TIMEOUT_MULT
        while final is None and time.monotonic() < deadline:
            got = subs["hidden"].next(timeout=1)
            if got is None:
                continue
            if got[1].get("state") == "final":
                final = got[1]
            else:
                self.assertEqual(set(got[1]), {"poll", "version", "state"}, got[1])
        self.assertIsNotNone(final, "the embargoed poll never became final")
        self.assertEqual({o["id"]: o["votes"] for o in final["options"]}, {"x": 3, "y": 0})
        # The config poll's stream, subscribed before the slots grew, still works.
        self.assertEqual(t.vote("one", "a", "late-sub")[0], 202)
        deadline = time.monotonic() + 5 * TIMEOUT_MULT
        got = None
        while time.monotonic() < deadline:
            got = early.next(timeout=1)
            if got and got[1]["total"] == 1:
                break
        self.assertTrue(got and got[1]["total"] == 1, got)
        for ev in list(subs.values()) + [early]:
            ev.close()
        t.stop()

    @unittest.skipIf(SANITIZE or not os.path.exists(SHIM), "needs the fault shim (not under sanitizers)")
    def test_a_run_time_polls_stream_is_503_starting_not_404_while_the_engine_catches_up(self):
        # After a restart the catalog is not loaded until the engine has read
        # the log's history: a run-time poll's votes get 503 "starting", and
        # so must its stream (a 404 says the poll does not exist).
        from test_admin import Admin
        a = Admin(self)
        t = a.t.start()
        st, body = a.create(id="later", title="Later", options=["x", "y"], mode="unlimited")
        self.assertEqual(st, 201, body)
        self.assertEqual(t.vote("later", "x")[0], 202)
        t.stop()
        # No snapshots: the engine must read the whole log at start-up (with
        # them at the log's end it may have nothing left to read, and be
        # ready before the first /healthz).
        shutil.rmtree(os.path.join(t.dir, "snap"))
        ctl = os.path.join(t.dir, "shim.ctl")
        # Every read of votes.log takes 5 s: the start-up's catch-up lingers.
        with open(ctl, "w") as f:
            f.write(f"gen=1 ops=pread prefix={t.dir}/log/votes.log delay_ms=5000 count=-1")
        t.start(wait=False, env={"LD_PRELOAD": SHIM, "FAULTSHIM_CTL": ctl})

        def answering():
            t.alive()
            try:
                return t.request("GET", "/healthz", timeout=1)
            except OSError:
                return None
        st, body = wait_until(answering, 30, "tally to answer /healthz")
        self.assertEqual((st, json.loads(body)["error"]), (503, "starting"), "not starting any more")
        self.assertEqual(t.vote("later", "y")[1]["error"], "starting")
        st, body = t.request("GET", "/v1/polls/later/events")
        self.assertEqual(st, 503, body)
        self.assertEqual(json.loads(body)["error"], "starting")
        self.assertIn("Retry-After", t.last_headers)
        with open(ctl, "w") as f:
            f.write("off")
        wait_until(lambda: t.request("GET", "/healthz")[0] == 200, 30, "the start-up to end")
        ev = Events(t.port, "later")
        self.assertEqual(ev.status, 200)
        first = ev.next()
        self.assertIsNotNone(first, "no first event once started")
        # /healthz turns 200 when the engine has caught up; the publisher's
        # rendering of that state may come one interval later, so the first
        # event can be the version before it (total 0). The vote from before
        # the restart must show in the next one at the latest.
        if first[1]["total"] == 0:
            first = ev.next()
            self.assertIsNotNone(first, "no event after the start-up's first")
        self.assertEqual(first[1]["total"], 1)
        ev.close()
        t.stop()


class Metrics(TallyTestCase):
    def test_promtool_accepts_it_and_counters_equal_the_votes_sent(self):
        t = self.make().start()
        accepted, rejected = 0, {}
        plan = [("one", {"option": "a", "voter": "x1"}, 202, None),
                ("one", {"option": "b", "voter": "x2"}, 202, None),
                ("free", {"option": "p"}, 202, None),
                ("nope", {"option": "a", "voter": "x"}, 404, "unknown_poll"),
                ("one", {"option": "zz", "voter": "x"}, 422, "unknown_option"),
                ("one", {"option": "a"}, 400, "missing_field"),
                ("one", {"option": "a", "voter": "x", "extra": 1}, 400, "unknown_field"),
                ("one", "{not json", 400, "malformed_json")]
        for _ in range(3):
            for poll, body, want, reason in plan:
                raw = body if isinstance(body, str) else json.dumps(body)
                st, data = t.request("POST", f"/v1/polls/{poll}/votes", raw, {"Content-Type": "application/json"})
                self.assertEqual(st, want, data)
                if reason:
                    self.assertEqual(json.loads(data)["error"], reason)
                    rejected[reason] = rejected.get(reason, 0) + 1
                else:
                    accepted += 1
        t.wait_counts({"free": {"p": 3, "q": 0}})
        # The engine reads every partition on its own schedule: wait until it
        # has applied every acknowledged vote (the "one" poll's too) and says
        # so itself, rather than scraping mid-batch.
        wait_until(lambda: sample(scrape(t), "tally_engine_records_applied_total") == accepted, 10,
                   "the engine to apply every acknowledged vote")
        text = scrape(t)
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(sample(text, "tally_votes_accepted_total"), accepted)
        for reason, n in rejected.items():
            self.assertEqual(sample(text, "tally_votes_rejected_total", f'reason="{reason}"'), n, reason)
        self.assertEqual(sample(text, "tally_votes_rejected_total", 'reason="rate_limited"'), 0)
        # Every acknowledged vote went through one ack and one group commit;
        # so did the poll history's records: at start each of the three
        # config polls is DEFINEd in each of the 4 partitions.
        self.assertEqual(sample(text, "tally_ingest_ack_latency_seconds_count"), accepted)
        self.assertEqual(sample(text, "tally_log_group_commit_votes_sum"), accepted + 3 * 4)
        self.assertGreaterEqual(sample(text, "tally_log_fsync_seconds_count"), 1)
        # In the one-per-voter poll x1 and x2 voted three times: 6 applied,
        # one of each counted; every record is applied (none skipped).
        self.assertEqual(sample(text, "tally_engine_records_applied_total"), accepted)
        self.assertEqual(sample(text, "tally_engine_records_skipped_total"), 0)
        self.assertGreaterEqual(sample(text, "tally_publish_total"), 3)
        for p in range(4):
            self.assertEqual(sample(text, "tally_engine_lag_positions", f'partition="{p}"'), 0)
            self.assertEqual(sample(text, "tally_engine_lag_seconds", f'partition="{p}"'), 0)
        # Families announced for later sources export no rows, not zeros.
        self.assertIn("# TYPE tally_s3_upload_failures_total counter", text)
        self.assertIsNone(sample(text, "tally_s3_upload_failures_total"))
        self.assertIn("# TYPE tally_polls gauge", text)
        # Polls per state, from the engine's catalog: the harness's three
        # config polls (one, chg, free) have no schedule: all open.
        self.assertEqual(sample(text, "tally_polls", 'state="open"'), 3)
        for state in ("scheduled", "closed", "final"):
            self.assertEqual(sample(text, "tally_polls", f'state="{state}"'), 0, state)
        # The dashboard in docs/ names only series that exist.
        src = os.environ.get("TALLY_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "../.."))
        with open(os.path.join(src, "docs", "grafana-tally.json")) as f:
            dash = json.load(f)
        exprs = [tg["expr"] for p in dash["panels"] for tg in p["targets"]]
        names = {re.sub(r"_(bucket|sum|count)$", "", n) for e in exprs for n in re.findall(r"tally_[a-z0-9_]+", e)}
        self.assertGreater(len(names), 10)
        for n in names:
            self.assertTrue(f"# TYPE {n} " in text, f"the dashboard uses {n}, which /metrics lacks")
        # Snapshots are written every 200 ms here: their age shows.
        wait_until(lambda: sample(scrape(t), "tally_snapshot_age_seconds", 'partition="0"') is not None, 10,
                   "a snapshot age")
        t.stop()


class Readiness(TallyTestCase):
    def test_readyz_turns_503_when_the_log_vanishes(self):
        t = self.make().start()
        st, body = t.request("GET", "/readyz")
        self.assertEqual((st, json.loads(body)), (200, {"status": "ready"}))
        os.unlink(os.path.join(t.dir, "log", "votes.log"))

        def not_ready():
            st, body = t.request("GET", "/readyz")
            return st == 503 and json.loads(body)
        j = wait_until(not_ready, 10, "/readyz to say 503")
        self.assertEqual(j["error"], "log_unavailable")
        self.assertIn("votes.log", j["message"])
        # /healthz agrees (liveness reports the log too); votes get 503.
        self.assertEqual(t.vote("free", "p")[0], 503)
        self.assertEqual(sample(scrape(t), "tally_votes_rejected_total", 'reason="log_unavailable"'), 1)
        t.stop()

    @unittest.skipIf(SANITIZE or not os.path.exists(SHIM), "needs the fault shim (not under sanitizers)")
    def test_readyz_turns_503_while_the_engine_lags_behind_a_slow_disk_and_back(self):
        t = self.make()
        ctl = os.path.join(t.dir, "shim.ctl")
        with open(ctl, "w") as f:
            f.write("off")
        t.start("-s", "engine.ready_lag_ms=600", env={"LD_PRELOAD": SHIM, "FAULTSHIM_CTL": ctl})
        self.assertEqual(t.request("GET", "/readyz")[0], 200)
        # The disk turns slow for the log's readers (the engine): every
        # read of votes.log takes 3 s. Votes are still taken (the writer
        # does not read), so the engine falls behind.
        with open(ctl, "w") as f:
            f.write(f"gen=1 ops=pread prefix={t.dir}/log/votes.log delay_ms=3000 count=-1")
        time.sleep(0.05)
        sent = 0
        deadline = time.monotonic() + 10 * TIMEOUT_MULT

        def lagging():
            nonlocal sent
            self.assertEqual(t.vote("free", "p")[0], 202)
            sent += 1
            st, body = t.request("GET", "/readyz")
            return st == 503 and json.loads(body)
        j = wait_until(lagging, 10, "/readyz to report the lag", interval=0.1)
        self.assertEqual(j["error"], "engine_lagging")
        self.assertIn("engine.ready_lag_ms", j["message"])
        text = scrape(t)
        self.assertGreater(max(sample(text, "tally_engine_lag_seconds", f'partition="{p}"') for p in range(4)), 0.5)
        self.assertGreater(sum(sample(text, "tally_engine_lag_positions", f'partition="{p}"') for p in range(4)), 0)
        # /healthz stays 200: the process is alive and takes votes.
        self.assertEqual(t.request("GET", "/healthz")[0], 200)
        self.assertLess(time.monotonic(), deadline)
        # The disk recovers: the engine catches up and readiness returns.
        with open(ctl, "w") as f:
            f.write("off")
        wait_until(lambda: t.request("GET", "/readyz")[0] == 200, 15, "/readyz to recover")
        t.wait_counts({"free": {"p": sent, "q": 0}})
        t.stop()


if __name__ == "__main__":
    unittest.main()
