"""tally-bench http --verify against a real `tally run`.

Starts tally on a free port with its log, snapshots and results in a temp
dir, waits for /healthz, runs the load generator with --verify (and the
freshness probe), then stops tally with SIGTERM (KILL only if it hangs) and
fails on a non-zero exit, a signal or a sanitizer report.

Env (set by bench/CMakeLists.txt): TALLY_BIN, TALLY_BENCH_BIN,
TALLY_SOURCE_DIR, TALLY_SANITIZE.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

TALLY = os.environ.get("TALLY_BIN", "build/tally")
BENCH = os.environ.get("TALLY_BENCH_BIN", "build/tally-bench")
SRC = os.environ.get("TALLY_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIG = os.path.join(SRC, "config", "tally.ini")
# Sanitized binaries are several times slower: stretch every timeout.
TMOUT = 4.0 if os.environ.get("TALLY_SANITIZE") else 1.0
SANITIZER_MARKS = ("AddressSanitizer", "UndefinedBehaviorSanitizer", "runtime error:",
                   "LeakSanitizer", "ThreadSanitizer")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TallyServer:
    """`tally run` on a free port with everything under a temp dir."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.pub = os.path.join(tmp, "public")
        self.port = None
        self.proc = None
        self.log_path = os.path.join(tmp, "tally.log")

    def start(self):
        for _ in range(3):  # another process may take the port between pick and bind
            self.port = free_port()
            self.log = open(self.log_path, "wb")
            self.proc = subprocess.Popen(
                [TALLY, "run", "-c", CONFIG,
                 "-s", f"server.listen=127.0.0.1:{self.port}",
                 "-s", "log.dir=" + os.path.join(self.tmp, "log"),
                 "-s", "engine.snapshot_dir=" + os.path.join(self.tmp, "snapshots"),
                 "-s", "publisher.dir=" + self.pub,
                 "-s", "admin.token_file="],  # the demo's admin API: off here
                stdout=self.log, stderr=subprocess.STDOUT)
            if self.wait_healthy(10 * TMOUT):
                return
            self.stop(check=False)
        raise AssertionError("tally run never answered /healthz:\n" + self.output())

    def wait_healthy(self, timeout):
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/healthz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.02)  # polling interval, not a wait for readiness
        return False

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, check=True):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20 * TMOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                if check:
                    raise AssertionError("tally run ignored SIGTERM:\n" + self.output())
        self.log.close()
        rc, out = self.proc.returncode, self.output()
        self.proc = None
        if check:
            if rc != 0:
                raise AssertionError(f"tally run exited {rc}:\n{out}")
            for mark in SANITIZER_MARKS:
                if mark in out:
                    raise AssertionError("sanitizer report from tally run:\n" + out)


def run_bench(*args, timeout=120, env=None):
    p = subprocess.run([BENCH, "http", *args], capture_output=True, text=True,
                       timeout=timeout * TMOUT, env=env)
    for mark in SANITIZER_MARKS:
        if mark in p.stderr:
            raise AssertionError("sanitizer report from tally-bench:\n" + p.stderr)
    return p


class HttpVerify(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tally-bench-test.")
        cls.server = TallyServer(cls.tmp)
        cls.server.start()
        cls.url = f"http://127.0.0.1:{cls.server.port}"

    @classmethod
    def tearDownClass(cls):
        try:
            cls.server.stop()
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def bench(self, *args, env=None):
        out = os.path.join(self.tmp, "result.json")
        p = run_bench("--url", self.url, "--config", CONFIG, "--json", out, "-q", *args, env=env)
        msg = f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
        return p, msg, out

    def test_1_votes_2000_verify(self):
        """The issue's check: 2000 votes, every 202 accounted for."""
        p, msg, out = self.bench("--votes", "2000", "--connections", "8",
                                 "--verify", self.server.pub,
                                 "--verify-timeout", str(30 * TMOUT))
        self.assertEqual(p.returncode, 0, msg)
        self.assertIn("verify: OK", p.stdout, msg)
        with open(out) as f:
            r = json.load(f)
        self.assertEqual(r["requests"], 2000)
        self.assertEqual(r["status"].get("202"), 2000, msg)
        self.assertTrue(r["verify"]["ok"])
        self.assertGreater(r["votes"]["repeat"] + r["votes"]["change"], 0,
                           "the mix has re-votes")
        lat = r["latency_ms"]
        self.assertEqual(lat["count"], 2000)
        self.assertLessEqual(lat["p50"], lat["p99"])
        self.assertLessEqual(lat["p99"], lat["max"])

    def test_2_open_loop_zipf_fresh_on_a_server_with_votes(self):
        """Open loop, zipf voters, freshness probe; the server already holds
        the first test's votes, so this verifies on top of a baseline."""
        p, msg, out = self.bench("--votes", "1500", "--rate", "1500", "--connections", "16",
                                 "--dist", "zipf", "--voters", "300",
                                 "--repeat-ratio", "0.3", "--change-ratio", "0.3",
                                 "--poll", "demo,mood", "--fresh-poll", "applause",
                                 "--fresh-interval", "20",
                                 "--verify", self.server.pub,
                                 "--verify-timeout", str(30 * TMOUT))
        self.assertEqual(p.returncode, 0, msg)
        with open(out) as f:
            r = json.load(f)
        self.assertEqual(r["loop"], "open")
        self.assertEqual(r["status"].get("202"), 1500, msg)
        # Paced, not flooded: vote k goes out no more than 1 ms before
        # k/1500 s, so the last one is not sent before ~0.999 s.
        self.assertGreaterEqual(r["seconds"], 0.99, msg)
        self.assertLessEqual(r["throughput"], 1500 * 1.02, msg)
        self.assertTrue(r["verify"]["ok"])
        self.assertGreater(r["freshness_ms"]["count"], 0, msg)
        self.assertEqual(r["freshness_ms"]["timeouts"], 0, msg)

    def test_3_two_threads_verify_exactly(self):
        """--threads 2: two loops with their own connections and voters, the
        counts and expectations merged; the totals must still match exactly,
        and the mix must have re-votes on both threads' voters."""
        p, msg, out = self.bench("--votes", "3001", "--connections", "9", "--threads", "2",
                                 "--voters", "500", "--repeat-ratio", "0.2",
                                 "--change-ratio", "0.3",
                                 "--verify", self.server.pub,
                                 "--verify-timeout", str(30 * TMOUT))
        self.assertEqual(p.returncode, 0, msg)
        self.assertIn("verify: OK", p.stdout, msg)
        with open(out) as f:
            r = json.load(f)
        self.assertEqual(r["threads"], 2)
        self.assertEqual(r["connections"], 9)
        self.assertEqual(r["requests"], 3001, msg)
        self.assertEqual(r["status"].get("202"), 3001, msg)
        self.assertEqual(r["latency_ms"]["count"], 3001, "histograms summed")
        self.assertEqual(sum(r["votes"].values()), 3001, "vote mix summed")
        self.assertTrue(r["verify"]["ok"])
        self.assertEqual(r["verify"]["accepted"], 3001)

    def test_4_two_threads_verify_fails_on_frozen_totals(self):
        """The merged check is not vacuous: frozen totals fail it."""
        frozen = os.path.join(self.tmp, "frozen2")
        shutil.copytree(self.server.pub, frozen)
        p, msg, _ = self.bench("--votes", "200", "--threads", "2", "--connections", "4",
                               "--verify", frozen, "--verify-timeout", "0.3")
        self.assertEqual(p.returncode, 3, msg)
        self.assertIn("<--", p.stderr, msg)

    def test_5_verify_fails_on_totals_that_do_not_move(self):
        """A frozen copy of the results never shows the new votes: exit 3
        with a diff, so a pass above means something."""
        frozen = os.path.join(self.tmp, "frozen")
        shutil.copytree(self.server.pub, frozen)
        p, msg, _ = self.bench("--votes", "200", "--verify", frozen, "--verify-timeout", "0.3")
        self.assertEqual(p.returncode, 3, msg)
        self.assertIn("expected", p.stderr, msg)
        self.assertIn("<--", p.stderr, msg)

    def stats(self):
        with urllib.request.urlopen(self.url + "/v1/stats", timeout=5) as r:
            return json.load(r)

    def test_6_retries_with_the_same_key_count_once(self):
        """--retry-ratio: a share of votes sent twice with one Idempotency-Key
        on another connection; --verify expects each once, and the server's
        engine found exactly that many retries."""
        before = self.stats()["engine"]["retried"]
        p, msg, out = self.bench("--votes", "1500", "--connections", "8", "--threads", "2",
                                 "--retry-ratio", "0.3", "--repeat-ratio", "0.2",
                                 "--change-ratio", "0.3", "--voters", "400",
                                 "--verify", self.server.pub,
                                 "--verify-timeout", str(30 * TMOUT))
        self.assertEqual(p.returncode, 0, msg)
        self.assertIn("verify: OK", p.stdout, msg)
        with open(out) as f:
            r = json.load(f)
        sent = r["retries"]["sent"]
        self.assertGreater(sent, 300, msg)
        self.assertEqual(r["retries"]["accepted"], sent, msg)
        deadline = time.monotonic() + 20 * TMOUT
        while self.stats()["engine"]["retried"] - before != sent and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.stats()["engine"]["retried"] - before, sent)

    def test_7_failed_connects_send_nothing_and_verify_exactly(self):
        """Connects that fail inside connect() (EADDRNOTAVAIL: no local port
        left, staged by the fault shim) send nothing: their votes are 'never
        sent', not unknown, so --verify stays exact; the failures are
        counted, and named once in the summary."""
        if os.environ.get("TALLY_SANITIZE"):
            self.skipTest("a preloaded library and the sanitizer runtime do not mix")
        shim = os.path.join(os.path.dirname(BENCH), "tests", "faultshim", "libfaultshim.so")
        if not os.path.exists(shim):
            self.skipTest(f"{shim} is not built")
        ctl = os.path.join(self.tmp, "faultshim.ctl")
        with open(ctl, "w") as f:
            f.write("gen=1 ops=connect errno=EADDRNOTAVAIL count=5\n")
        env = dict(os.environ, LD_PRELOAD=shim, FAULTSHIM_CTL=ctl)
        p, msg, out = self.bench("--votes", "400", "--connections", "8",
                                 "--verify", self.server.pub,
                                 "--verify-timeout", str(30 * TMOUT), env=env)
        self.assertEqual(p.returncode, 0, msg)
        self.assertIn("verify: OK", p.stdout, msg)
        self.assertEqual(p.stderr.count("faultshim: inject connect"), 5, msg)
        with open(out) as f:
            r = json.load(f)
        self.assertEqual(r["connects_failed"], 5, msg)
        self.assertEqual(r["not_sent"], 5, msg)
        self.assertEqual(r["no_response"], 0, msg)
        self.assertEqual(r["requests"], 395, msg)
        self.assertEqual(r["status"].get("202"), 395, msg)
        self.assertEqual(p.stdout.count("Cannot assign requested address"), 1, msg)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]] + [a for a in sys.argv[1:] if a == "-v"], verbosity=2)
