# tsan: the whole pipeline over HTTP; also run under the thread sanitizer.
"""tally run end to end: exact totals in every mode, every error code, the
results pages, restart and replay."""
import json
import random
import threading
import time
import unittest

from harness import DEFAULT_SHAPE, TallyTestCase, expected_totals, wait_until


def cast(t, votes, accepted, lock):
    """Casts votes in order over one keep-alive connection."""
    conn = t.connect()
    mine = []
    for poll, option, voter in votes:
        st, body = t.vote(poll, option, voter, conn=conn)
        assert st == 202, (st, body)
        assert body["status"] == "accepted" and body["poll"] == poll, body
        mine.append((poll, option, voter))
    conn.close()
    with lock:
        accepted.extend(mine)


def random_votes(rng, voters, n, shape=DEFAULT_SHAPE):
    out = []
    for _ in range(n):
        poll = rng.choice(sorted(shape))
        option = rng.choice(shape[poll][1])
        voter = rng.choice(voters)
        out.append((poll, option, None if (poll == "free" and rng.random() < 0.5) else voter))
    return out


def run_clients(t, rng, nclients=4, per_client=150):
    """Each client owns its voters, so a voter's votes have one order."""
    accepted, lock, threads = [], threading.Lock(), []
    for c in range(nclients):
        voters = [f"c{c}-v{i}" for i in range(25)]
        th = threading.Thread(target=cast, args=(t, random_votes(rng, voters, per_client), accepted, lock))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    # Order across clients does not matter: voters are disjoint.
    return accepted


class Pipeline(TallyTestCase):
    def test_exact_totals_all_modes(self):
        t = self.make().start()
        accepted = run_clients(t, random.Random(1))
        self.assertEqual(len(accepted), 600)
        t.wait_counts(expected_totals(DEFAULT_SHAPE, accepted))
        j = t.published("chg")
        self.assertEqual(j["mode"], "changeable")
        self.assertEqual(j["total"], sum(o["votes"] for o in j["options"]))
        self.assertEqual([o["id"] for o in j["options"]], ["x", "y", "z"])
        self.assertEqual(j["options"][0]["label"], "<script>alert(1)</script>")
        self.assertRegex(j["updated_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
        t.stop()

    def test_mode_semantics(self):
        t = self.make().start()
        for poll, opt, voter in [("one", "a", "v1"), ("one", "b", "v1"), ("one", "b", "v2"),
                                 ("chg", "x", "v1"), ("chg", "y", "v1"), ("chg", "y", "v1"),
                                 ("chg", "z", "v2"), ("free", "p", None), ("free", "p", "v1"),
                                 ("free", "q", None)]:
            self.assertEqual(t.vote(poll, opt, voter)[0], 202)
        t.wait_counts({"one": {"a": 1, "b": 1, "c": 0},
                       "chg": {"x": 0, "y": 1, "z": 1},
                       "free": {"p": 2, "q": 1}})
        t.stop()

    def test_error_codes(self):
        t = self.make().start()
        cases = [
            ("POST", "/v1/polls/one/votes", "{not json", 400, "malformed_json"),
            ("POST", "/v1/polls/one/votes", "[1,2]", 400, "invalid_body"),
            ("POST", "/v1/polls/one/votes", '{"voter":"v"}', 400, "missing_field"),
            ("POST", "/v1/polls/one/votes", '{"option":"a"}', 400, "missing_field"),
            ("POST", "/v1/polls/one/votes", '{"option":1,"voter":"v"}', 400, "invalid_field"),
            ("POST", "/v1/polls/one/votes", '{"option":"a","voter":7}', 400, "invalid_field"),
            ("POST", "/v1/polls/one/votes", '{"option":"a","voter":""}', 400, "invalid_field"),
            ("POST", "/v1/polls/one/votes", json.dumps({"option": "a", "voter": "v" * 257}), 400, "invalid_field"),
            ("POST", "/v1/polls/one/votes", '{"option":"a","voter":"a\\u0001b"}', 400, "invalid_field"),
            ("POST", "/v1/polls/nope/votes", '{"option":"a","voter":"v"}', 404, "unknown_poll"),
            ("POST", "/v1/polls/one/votes", '{"option":"zz","voter":"v"}', 422, "unknown_option"),
            ("GET", "/v1/polls/one/votes", None, 405, "method_not_allowed"),
            ("DELETE", "/v1/polls/one/votes", None, 405, "method_not_allowed"),
            ("POST", "/v1/polls/one/votes", json.dumps({"option": "a", "voter": "v", "pad": "x" * 5000}), 413, "body_too_large"),
            ("POST", "/healthz", "", 405, "method_not_allowed"),
            ("GET", "/no/such/thing", None, 404, "not_found"),
        ]
        for method, path, body, status, code in cases:
            with self.subTest(path=path, body=(body or "")[:40]):
                st, data = t.request(method, path, body, {"Content-Type": "application/json"})
                self.assertEqual(st, status, data)
                j = json.loads(data)
                self.assertEqual(j["error"], code)
                self.assertTrue(j["message"])
        # A voter of exactly 256 bytes is fine; nothing bad reached the log.
        self.assertEqual(t.vote("one", "a", "v" * 256)[0], 202)
        t.wait_counts({"one": {"a": 1, "b": 0, "c": 0}})
        t.stop()
        r = t.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("replayed 1 records", r.stdout)
        self.assertNotIn("skipped", r.stdout)

    def test_publisher_coalesces_and_rests(self):
        """A burst costs a few rewrites, not one per vote; no change, no write."""
        t = self.make(extra="[publisher]\nmin_interval_ms = 300\n").start()

        def writes():
            st, data = t.request("GET", "/v1/stats")
            return json.loads(data)["publisher"]["writes"]

        # Start-up renders each poll again once its definition is in the log:
        # measure the burst from a publisher at rest.
        def at_rest():
            a = writes()
            time.sleep(0.5)
            return writes() == a
        wait_until(at_rest, 15, "the publisher to rest after start-up")
        w0 = writes()
        conn = t.connect()
        start = time.monotonic()
        for i in range(300):
            self.assertEqual(t.vote("free", "p", conn=conn)[0], 202)
        conn.close()
        took = time.monotonic() - start
        t.wait_counts({"free": {"p": 300, "q": 0}})
        # The file is renamed into place before the write is counted (and the
        # event streams are fed in between): read the count once it rests.
        wait_until(at_rest, 15, "the publisher to rest after the burst")
        w1 = writes()
        # At most one rewrite per 300 ms of the burst, plus the first and last.
        self.assertLessEqual(w1 - w0, int(took / 0.3) + 3, f"{w1 - w0} rewrites in {took:.2f} s")
        time.sleep(1.0)  # a quiet second: nothing may be rewritten
        self.assertEqual(writes(), w1)
        t.stop()

    def test_results_pages_and_traversal(self):
        t = self.make().start()
        self.assertEqual(t.vote("chg", "x", "v1")[0], 202)
        t.wait_counts({"chg": {"x": 1, "y": 0, "z": 0}})
        st, page = t.request("GET", "/polls/chg.html")
        self.assertEqual(st, 200)
        self.assertEqual(t.last_headers["Content-Type"], "text/html; charset=utf-8")
        page = page.decode()
        # The page's own script is its only one: the label's is escaped.
        self.assertEqual(page.count("<script"), 1)
        self.assertGreater(page.index("<script>"), page.index("all polls"))
        self.assertIn("&lt;script&gt;", page)
        self.assertIn("&lt;b&gt;&amp;&lt;/b&gt;", page)
        self.assertIn("100.0%", page)
        self.assertNotIn("http://", page.replace('content="2"', ""))  # no external resources
        st, idx = t.request("GET", "/")
        self.assertEqual(st, 200)
        for p in ("one", "chg", "free"):
            self.assertIn(f'href="polls/{p}.html"', idx.decode())
        st, js = t.request("GET", "/polls/chg.json")
        self.assertEqual((st, json.loads(js)["total"]), (200, 1))
        for path in ("/../tally.ini", "/polls/../../tally.ini", "/%2e%2e/tally.ini",
                     "/polls/%2e%2e%2f%2e%2e%2ftally.ini", "/.hidden", "//etc/passwd"):
            with self.subTest(path=path):
                st, data = t.request("GET", path)
                self.assertIn(st, (400, 403, 404))
                self.assertNotIn(b"listen", data)
        t.stop()

    def test_restart_resumes_and_replay_equals_live(self):
        t = self.make().start()
        rng = random.Random(7)
        accepted = run_clients(t, rng, nclients=3, per_client=100)
        exp = expected_totals(DEFAULT_SHAPE, accepted)
        t.wait_counts(exp)
        t.stop()
        t.start()
        # Same voters again: one-per-voter ignores them, changeable moves.
        more = []
        conn = t.connect()
        for poll, opt, voter in random_votes(rng, [f"c0-v{i}" for i in range(25)], 100):
            self.assertEqual(t.vote(poll, opt, voter, conn=conn)[0], 202)
            more.append((poll, opt, voter))
        conn.close()
        exp = expected_totals(DEFAULT_SHAPE, accepted + more)
        t.wait_counts(exp)
        t.stop()
        live = {p: t.published_counts(p) for p in DEFAULT_SHAPE}
        r = t.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("replayed 400 records", r.stdout)
        replayed = {p: t.published_counts(p) for p in DEFAULT_SHAPE}
        self.assertEqual(replayed, live)
        self.assertEqual(replayed, exp)
        # And tally run resumes from replay's snapshots with the same totals.
        t.start()
        t.wait_counts(exp)
        t.stop()


if __name__ == "__main__":
    unittest.main()
