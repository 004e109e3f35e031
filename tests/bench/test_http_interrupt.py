"""tally-bench http against a scripted server: how each vote is counted when
the server closes after its answers, and when ^C comes twice while a retry
is in flight.

The server (http.server on a thread) accepts every vote with 202, counts it
once per Idempotency-Key and publishes the totals as publisher.dir would
(polls/p.json, renamed into place), so --verify checks the generator's
bookkeeping against what the server really counted.

Env (set by bench/CMakeLists.txt): TALLY_BENCH_BIN, TALLY_SANITIZE.
"""
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

BENCH = os.environ.get("TALLY_BENCH_BIN", "build/tally-bench")
TMOUT = 4.0 if os.environ.get("TALLY_SANITIZE") else 1.0
SANITIZER_MARKS = ("AddressSanitizer", "UndefinedBehaviorSanitizer", "runtime error:",
                   "LeakSanitizer", "ThreadSanitizer")
OPTIONS = ("a", "b")


class VoteServer(http.server.ThreadingHTTPServer):
    """Counts votes once per key; close_after: end each connection after its
    answer (the FIN in the answer's segment, no Connection: close); hold_retries:
    never answer a key's second request."""
    daemon_threads = True

    def __init__(self, pub, close_after=False, hold_retries=False):
        super().__init__(("127.0.0.1", 0), VoteHandler)
        self.pub = pub
        self.close_after = close_after
        self.hold_retries = hold_retries
        self.lock = threading.Lock()
        self.keys = set()
        self.totals = dict.fromkeys(OPTIONS, 0)
        self.held = 0  # retries held so far
        self.held_cv = threading.Condition(self.lock)
        self.release = threading.Event()
        os.makedirs(os.path.join(pub, "polls"), exist_ok=True)
        self.publish()

    def publish(self):
        doc = {"poll": "p", "options": [{"id": o, "votes": self.totals[o]} for o in OPTIONS]}
        tmp = os.path.join(self.pub, "polls", ".p.json.tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.rename(tmp, os.path.join(self.pub, "polls", "p.json"))


class VoteHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = self.headers.get("Idempotency-Key")
        with srv.lock:
            retry = key is not None and key in srv.keys
            if not retry:
                if key is not None:
                    srv.keys.add(key)
                srv.totals[body["option"]] += 1
                srv.publish()
        if retry and srv.hold_retries:
            with srv.lock:
                srv.held += 1
                srv.held_cv.notify_all()
            srv.release.wait(60)
            self.close_connection = True
            return
        answer = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}"
        if srv.close_after:
            # MSG_MORE holds the bytes until the close adds the FIN to them.
            self.connection.send(answer, socket.MSG_MORE)
            self.close_connection = True
        else:
            self.wfile.write(answer)


class HttpInterrupt(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tally-bench-interrupt.")
        self.pub = os.path.join(self.tmp, "public")
        self.out = os.path.join(self.tmp, "result.json")
        self.server = None

    def tearDown(self):
        if self.server:
            self.server.release.set()
            self.server.shutdown()
            self.server.server_close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self, **kw):
        self.server = VoteServer(self.pub, **kw)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def args(self, *extra):
        return [BENCH, "http", "--url", f"http://127.0.0.1:{self.server.server_port}",
                "--poll", "p", "--options", ",".join(OPTIONS), "--mode", "unlimited",
                "--verify", self.pub, "--verify-timeout", str(10 * TMOUT),
                "--json", self.out, "-q", *extra]

    def check(self, rc, stdout, stderr):
        msg = f"exit {rc}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        for mark in SANITIZER_MARKS:
            self.assertNotIn(mark, stderr, msg)
        with open(self.out) as f:
            return json.load(f), msg

    def test_answers_that_close_the_connection_are_never_unknown(self):
        """Each answer comes with the server's FIN: the next vote must go on
        a new connection, not to the dead socket, so none is unknown."""
        self.start(close_after=True)
        p = subprocess.run(self.args("--votes", "300", "--connections", "4"),
                           capture_output=True, text=True, timeout=60 * TMOUT)
        r, msg = self.check(p.returncode, p.stdout, p.stderr)
        self.assertEqual(p.returncode, 0, msg)
        self.assertIn("verify: OK", p.stdout, msg)
        self.assertEqual(r["no_response"], 0, msg)
        self.assertEqual(r["status"].get("202"), 300, msg)

    def interrupt_twice_during_retries(self, threads):
        """Each thread's one connection has its vote answered 202 and the
        retry held at the server; then ^C, and ^C again. Returns the result,
        the message and how long the second ^C took to end the run."""
        self.start(hold_retries=True)
        p = subprocess.Popen(self.args("--votes", "10", "--connections", str(threads),
                                       "--threads", str(threads), "--retry-ratio", "1",
                                       "--timeout", "60"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            with self.server.lock:
                self.assertTrue(self.server.held_cv.wait_for(
                    lambda: self.server.held == threads, 30 * TMOUT), "the retries did not come")
            p.send_signal(signal.SIGINT)
            seen = []
            for line in p.stderr:
                seen.append(line)
                if "interrupted" in line:
                    break
            t0 = time.monotonic()
            p.send_signal(signal.SIGINT)
            stdout, stderr = p.communicate(timeout=90 * TMOUT)
            took = time.monotonic() - t0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        r, msg = self.check(p.returncode, stdout, "".join(seen) + stderr)
        self.assertEqual(p.returncode, 0, msg)
        self.assertIn("verify: OK", stdout, msg)
        return r, msg, took

    def test_a_second_interrupt_during_a_retry_counts_the_vote_once(self):
        """A vote answered 202 whose retry is in flight at the second ^C: one
        request, one 202, nothing unknown, and --verify matches the server."""
        r, msg, _ = self.interrupt_twice_during_retries(1)
        self.assertEqual(r["requests"], 1, msg)
        self.assertEqual(r["status"].get("202"), 1, msg)
        self.assertEqual(r["no_response"], 0, msg)

    def test_a_second_interrupt_stops_every_thread_at_once(self):
        """--threads 2: the second ^C ends thread 1 too, without waiting for
        its retry's --timeout (60 s), and each vote still counts once."""
        r, msg, took = self.interrupt_twice_during_retries(2)
        self.assertLess(took, 20 * TMOUT, msg)
        self.assertEqual(r["requests"], 2, msg)
        self.assertEqual(r["status"].get("202"), 2, msg)
        self.assertEqual(r["no_response"], 0, msg)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]] + [a for a in sys.argv[1:] if a == "-v"], verbosity=2)
