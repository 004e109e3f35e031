"""tsan: Idempotency-Key over real sockets: a vote retried with the same key is
answered 202 every time and counted once, in one-per-voter, changeable and
unlimited (anonymous) polls; also when tally run is killed -9 between the
first send and the retry (state from snapshots + log), and in tally replay.
The published series sums to the totals. Expected totals are computed here
from what was sent, by the rule itself."""
import json
import os
import random
import re
import time
import unittest

from harness import DEFAULT_POLLS, DEFAULT_SHAPE, TallyTestCase, wait_until

SHAPE = DEFAULT_SHAPE  # one: one-per-voter a,b,c; chg: changeable x,y,z; free: unlimited p,q


def expected(sent):
    """sent: [(poll, option, voter or None, key or None)] in the order the
    server acknowledged them. A key already seen for (poll, voter) is a
    retry (everything here is within the window); the rest count by mode."""
    held, out, counted, retried = set(), {p: {o: 0 for o in opts} for p, (_, opts) in SHAPE.items()}, {}, 0
    for poll, option, voter, key in sent:
        if key is not None:
            if (poll, voter, key) in held:
                retried += 1
                continue
            held.add((poll, voter, key))
        mode = SHAPE[poll][0]
        if mode == "unlimited":
            out[poll][option] += 1
            continue
        prev = counted.get((poll, voter))
        if prev is None:
            counted[(poll, voter)] = option
            out[poll][option] += 1
        elif mode == "changeable" and prev != option:
            out[poll][prev] -= 1
            out[poll][option] += 1
            counted[(poll, voter)] = option
    return out, retried


class IdempotencyTest(TallyTestCase):
    def post(self, t, poll, option, voter=None, key=None, headers=None):
        """A vote on a connection of its own (a client retrying after a lost
        answer reconnects)."""
        body = {"option": option}
        if voter is not None:
            body["voter"] = voter
        h = {"Content-Type": "application/json"}
        if key is not None:
            h["Idempotency-Key"] = key
        h.update(headers or {})
        st, data = t.request("POST", f"/v1/polls/{poll}/votes", json.dumps(body), h)
        return st, (json.loads(data) if data else None)

    def send_all(self, t, votes):
        for v in votes:
            st, body = self.post(t, *v)
            self.assertEqual(st, 202, f"{v}: {body}")

    def stats(self, t):
        st, data = t.request("GET", "/v1/stats")
        self.assertEqual(st, 200)
        return json.loads(data)

    def workload(self, rng, n, tag):
        """n votes over the three polls, a third of them exact retries of an
        earlier request (same body, same key), some changes of mind."""
        votes = []
        for i in range(n):
            if votes and rng.random() < 0.33:
                votes.append(rng.choice(votes))
                continue
            poll = rng.choice(list(SHAPE))
            option = rng.choice(SHAPE[poll][1])
            voter = None if poll == "free" and rng.random() < 0.7 else f"{tag}-v{rng.randrange(20)}"
            votes.append((poll, option, voter, f"{tag}-k{i}"))
        return votes

    def assert_series_sums(self, t, want):
        for poll, counts in want.items():
            j = t.published(poll)
            ser = j["series"]
            self.assertEqual(ser["bucket_ms"], 60000)
            opts = [o["id"] for o in j["options"]]
            sums = [0] * len(opts)
            for b in ser["buckets"]:
                self.assertEqual(b["t"] % 60000, 0)
                for k, c in enumerate(b["counts"]):
                    sums[k] += c
            self.assertEqual(dict(zip(opts, sums)), counts, f"{poll}: series {ser}")

    def replay_totals(self, t):
        r = t.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        out, poll = {}, None
        for line in r.stdout.splitlines():
            m = re.match(r"poll (\S+) \(", line)
            if m:
                poll = m.group(1)
                out[poll] = {}
                continue
            m = re.match(r"  (\S+) +(\d+)$", line)
            if m and poll:
                out[poll][m.group(1)] = int(m.group(2))
        m = re.search(r"retried (\d+) votes", r.stdout)
        return out, int(m.group(1)) if m else 0

    # ---- the header ----

    def test_malformed_keys_are_400_naming_the_header_and_never_logged(self):
        t = self.make().start()
        bad = ["", " ", "a" * 65, "has space", "semi;colon", "slash/", "é", "a,b"]
        for k in bad:
            st, body = self.post(t, "one", "a", "alice", headers={"Idempotency-Key": k})
            self.assertEqual(st, 400, repr(k))
            self.assertEqual(body["error"], "invalid_header")
            self.assertIn("Idempotency-Key", body["message"])
        # Two headers are one joined value: refused too.
        c = t.connect()
        c.putrequest("POST", "/v1/polls/one/votes")
        body = b'{"option":"a","voter":"alice"}'
        for h, v in (("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                     ("Idempotency-Key", "k1"), ("Idempotency-Key", "k2")):
            c.putheader(h, v)
        c.endheaders(body)
        r = c.getresponse()
        self.assertEqual(r.status, 400)
        self.assertEqual(json.loads(r.read())["error"], "invalid_header")
        c.close()
        for k in ["a", "A.b_c-9", "x" * 64, " padded\t"]:
            st, body = self.post(t, "free", "p", key=k)
            self.assertEqual(st, 202, repr(k))
        t.wait_counts({"one": {"a": 0, "b": 0, "c": 0}, "free": {"p": 4, "q": 0}})
        self.assertEqual(self.stats(t)["ingest"]["accepted"], 4)
        t.stop()

    # ---- counting once ----

    def test_retries_count_once_in_every_mode_and_series_sum_to_totals(self):
        t = self.make().start()
        # The cases that matter, spelled out: a changeable voter's late
        # retry of an old vote does not move him back; anonymous unlimited
        # retries meet by key.
        sent = [("chg", "x", "bob", "b1"), ("chg", "y", "bob", "b2"), ("chg", "x", "bob", "b1"),
                ("one", "a", "al", "a1"), ("one", "a", "al", "a1"), ("one", "b", "al", "a2"),
                ("free", "p", None, "f1"), ("free", "p", None, "f1"), ("free", "p", None, "f1"),
                ("free", "q", None, None), ("free", "q", None, None),
                ("free", "q", "carol", "f1"), ("free", "q", "carol", "f1")]
        sent += self.workload(random.Random(7), 240, "w")
        self.send_all(t, sent)
        want, retried = expected(sent)
        t.wait_counts(want)
        wait_until(lambda: self.stats(t)["engine"]["retried"] == retried, 20,
                   f"{retried} retries in the stats")
        self.assert_series_sums(t, want)
        t.stop()
        # Replay: the same decisions from the log alone.
        totals, rretried = self.replay_totals(t)
        self.assertEqual(totals, want)
        self.assertEqual(rretried, retried)

    def test_a_retry_after_kill_9_is_still_recognised(self):
        t = self.make().start()
        rng = random.Random(11)
        first = self.workload(rng, 120, "a")
        self.send_all(t, first)
        want, _ = expected(first)
        t.wait_counts(want)
        # Let a snapshot hold part of it, then more votes only in the log.
        snap = os.path.join(t.dir, "snap")
        wait_until(lambda: os.path.isdir(snap) and len(os.listdir(snap)) >= 1, 20, "a snapshot")
        tail = self.workload(rng, 40, "b")
        self.send_all(t, tail)
        want, _ = expected(first + tail)
        t.wait_counts(want)
        t.kill9()
        t.start()
        t.wait_counts(want)
        # Every request again, as clients whose answers were lost would.
        retries = first + tail
        self.send_all(t, retries)
        new = [("chg", "z", "a-v1", "fresh1"), ("free", "q", None, "fresh2")]
        self.send_all(t, new)
        all_sent = first + tail + retries + new
        want, retried = expected(all_sent)
        t.wait_counts(want)
        self.assert_series_sums(t, want)
        t.stop()
        totals, rretried = self.replay_totals(t)
        self.assertEqual(totals, want)
        self.assertEqual(rretried, retried)

    def test_a_key_is_forgotten_after_the_window(self):
        t = self.make(extra="[ingest]\nidempotency_window_s = 1\n").start()
        st, _ = self.post(t, "free", "p", key="k")
        self.assertEqual(st, 202)
        st, _ = self.post(t, "free", "p", key="k")
        t.wait_counts({"free": {"p": 1, "q": 0}})
        # The window is about time passing (the votes' timestamps): wait it
        # out. Any vote in the key's partition moves its clock; the retry
        # itself does.
        time.sleep(1.2)
        st, _ = self.post(t, "free", "p", key="k")
        self.assertEqual(st, 202)
        t.wait_counts({"free": {"p": 2, "q": 0}})
        t.stop()


if __name__ == "__main__":
    unittest.main()
