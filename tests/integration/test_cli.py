"""The command line: help, exit codes, config errors that name the key and
line, replay's lock and cut-off, and 503 with Retry-After under overload."""
import datetime
import os
import subprocess
import threading
import time
import unittest

from harness import TALLY_BIN, TallyTestCase, wait_until


def tally(*args, **kw):
    return subprocess.run([TALLY_BIN, *args], capture_output=True, text=True, timeout=60, **kw)


class Cli(TallyTestCase):
    def test_help(self):
        r = tally("--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("run", r.stdout)
        self.assertIn("replay", r.stdout)
        for cmd in ("run", "replay"):
            r = tally(cmd, "--help")
            self.assertEqual(r.returncode, 0)
            self.assertIn(f"usage: tally {cmd}", r.stdout)
        r = tally("--help-config")
        self.assertEqual(r.returncode, 0)
        for key in ("listen", "snapshot_interval_ms", "min_interval_ms", "brokers", "label.OPTION"):
            self.assertIn(key, r.stdout)

    def test_usage_errors_exit_2(self):
        for args, needle in [((), "usage"), (("frobnicate",), "unknown command"),
                             (("run",), "-c FILE is required"), (("run", "-c"), "needs a value"),
                             (("run", "--bogus", "-c", "x"), "unknown option"),
                             (("run", "-c", "/nonexistent.ini"), "/nonexistent.ini"),
                             (("replay", "-c", "x", "extra"), "unexpected argument")]:
            with self.subTest(args=args):
                r = tally(*args)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(needle, r.stderr)

    def test_config_errors_name_key_and_line(self):
        t = self.make()
        cases = [
            ("[server]\nlisten = nope\n", ":2:", "server.listen"),
            ("[engine]\nthreads = many\n", ":2:", "engine.threads"),
            ("[engine]\nthreads = 0\n", ":2:", "out of range"),
            ("[log]\nfsync = maybe\n", ":2:", "log.fsync"),
            ("[server]\nlisen = 1\n", ":2:", "server.lisen"),
            ("[sever]\nlisten = 1\n", ":2:", "[sever]"),
            ("[poll.p]\noptions = a, b\nmode = sometimes\n", ":3:", "poll.p.mode"),
            ("[poll.p]\noptions = a, b c\n", ":2:", "option id 'b c'"),
            ("[poll.p]\noptions = a, a\n", ":2:", "listed twice"),
            ("[poll.p]\noptions = a\nlabel.z = Z\n", ":3:", "label.z"),
            ("[poll.bad id]\noptions = a\n", ":2:", "poll id"),
            ("[poll.p]\ntitle = no options\n", "", "poll.p: 'options' is required"),
            ("[poll.p]\noptions = a\ncolour = red\n", ":3:", "colour"),
            ("just garbage\n", ":1:", "syntax error"),
        ]
        for i, (text, line, needle) in enumerate(cases):
            with self.subTest(text=text):
                path = os.path.join(t.dir, f"bad{i}.ini")
                with open(path, "w") as f:
                    f.write(text)
                for cmd in ("run", "replay"):
                    r = tally(cmd, "-c", path)
                    self.assertEqual(r.returncode, 2, r.stderr)
                    self.assertIn(needle, r.stderr)
                    self.assertIn(f"{path}{line}", r.stderr)
        for bad, needle in [("engine.threads=x", "engine.threads"), ("nodot", "section.key=value"),
                            ("poll.one.mode=x", "poll.one.mode"), ("server.nope=1", "server.nope")]:
            with self.subTest(override=bad):
                r = tally("run", "-c", t.config, "-s", bad)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(needle, r.stderr)
                self.assertIn(f"-s {bad}", r.stderr)

    def test_replay_refuses_while_running(self):
        t = self.make().start()
        r = t.replay()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("in use by another tally process", r.stderr)
        t.stop()

    def test_partition_count_is_pinned(self):
        t = self.make().start()
        t.stop()
        r = tally("run", "-c", t.config, "-s", "log.partitions=8")
        self.assertEqual(r.returncode, 2)  # a configuration error (issue 7, item 8)
        self.assertIn("log.partitions", r.stderr)

    def test_replay_until(self):
        t = self.make().start()
        for i in range(5):
            self.assertEqual(t.vote("free", "p")[0], 202)
        # Timestamps have ms resolution: make the cut-off unambiguous.
        time.sleep(0.01)
        cut = datetime.datetime.now(datetime.timezone.utc)
        time.sleep(0.01)
        for i in range(3):
            self.assertEqual(t.vote("free", "q")[0], 202)
        t.wait_counts({"free": {"p": 5, "q": 3}})
        t.stop()
        r = t.replay("--until", cut.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("3 after it not counted", r.stdout)
        self.assertEqual(t.published_counts("free"), {"p": 5, "q": 0})
        r = t.replay("--until", "yesterday")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--until", r.stderr)
        r = t.replay()
        self.assertEqual(t.published_counts("free"), {"p": 5, "q": 3})

    def test_overload_answers_503_with_retry_after(self):
        # One vote in flight at a time and a slow group commit: concurrent
        # clients must see 503 + Retry-After, never a hang, and every 202 counts.
        t = self.make(extra="[server]\nmax_pending = 1\n[log]\ngroup_commit_us = 20000\n").start()
        results, lock = [], threading.Lock()

        def client(i):
            c = t.connect()
            for k in range(20):
                st, body = t.vote("free", "p", conn=c)
                with lock:
                    results.append((st, t.last_headers.get("Retry-After"), body))
            c.close()
        ths = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        codes = [r[0] for r in results]
        self.assertTrue(set(codes) <= {202, 503}, codes)
        self.assertIn(503, codes)
        for st, retry, body in results:
            if st == 503:
                self.assertEqual(retry, "1")
                self.assertEqual(body["error"], "log_unavailable")
        t.wait_counts({"free": {"p": codes.count(202), "q": 0}})
        t.stop()


if __name__ == "__main__":
    unittest.main()
