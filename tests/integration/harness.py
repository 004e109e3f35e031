"""Test harness: runs the real `tally` binary on a free port and talks to it
over real sockets (stdlib only). No fixed sleeps: everything polls with a
deadline, stretched under sanitizers."""
import http.client
import threading
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

TALLY_BIN = os.environ.get("TALLY_BIN", os.path.join(os.path.dirname(__file__), "../../build/tally"))
SANITIZE = os.environ.get("TALLY_SANITIZE", "")
TIMEOUT_MULT = 4 if SANITIZE else 1
# The LD_PRELOAD fault shim (tests/faultshim): built beside the binaries.
BUILD = os.environ.get("TALLY_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))
SHIM = os.path.join(BUILD, "tests", "faultshim", "libfaultshim.so")
MODES = {"one-per-voter", "changeable", "unlimited"}


_HANDED_OUT = set()


def free_port():
    """A port nothing listens on, never the same one twice in this process.

    Taken below the kernel's ephemeral range (32768-60999 by default), so an
    outgoing connection (to Kafka, S3, or another test's tally) cannot take
    it as its source port between this check and tally's bind, and a second
    call cannot return the port an earlier call handed out (bind to port 0
    can: two tally listeners in one config then collide)."""
    import random
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 32000)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise AssertionError("no free port in 20000-32000")


def wait_until(pred, timeout, what, interval=0.02):
    deadline = time.monotonic() + timeout * TIMEOUT_MULT
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(interval)


DEFAULT_POLLS = """
[poll.one]
title = One vote per voter
options = a, b, c
mode = one-per-voter

[poll.chg]
title = Changeable <b>&</b> "quoted"
options = x, y, z
label.x = <script>alert(1)</script>
mode = changeable

[poll.free]
title = Unlimited
options = p, q
mode = unlimited
"""


class Tally:
    """One tally installation: a config file and data dirs in a temp dir."""

    def __init__(self, polls=DEFAULT_POLLS, extra="", workdir=None, config=None):
        self.dir = workdir or tempfile.mkdtemp(prefix="tally-it-")
        self.port = free_port()
        if config:
            # Another process of the same installation (e.g. a second ingest):
            # same config, its own port and stderr.
            self.config, self.proc = config, None
            self.stderr_path = os.path.join(self.dir, f"stderr-{self.port}.log")
            self.args = ["-s", f"server.listen=127.0.0.1:{self.port}"]
            return
        self.args = []
        self.proc = None
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self.config = os.path.join(self.dir, "tally.ini")
        with open(self.config, "w") as f:
            f.write(f"""[server]
listen = 127.0.0.1:{self.port}
[log]
dir = {self.dir}/log
partitions = 4
[engine]
snapshot_dir = {self.dir}/snap
snapshot_interval_ms = 200
threads = 2
[publisher]
dir = {self.dir}/public
min_interval_ms = 20
{extra}
{polls}
""")

    # ---- process control ----
    def start(self, *args, wait=True, cmd="run", env=None):
        """env: variables added to this process's environment for tally's
        alone (e.g. LD_PRELOAD of the fault shim)."""
        assert self.proc is None
        self.errf = open(self.stderr_path, "a")
        self.started_at = os.path.getsize(self.stderr_path)
        self.proc = subprocess.Popen([TALLY_BIN, cmd, "-c", self.config, *self.args, *args],
                                     stdout=self.errf, stderr=self.errf,
                                     env=dict(os.environ, **env) if env else None)
        if wait and cmd == "engine":
            # No HTTP in the engine role: ready once it logged its start.
            wait_until(lambda: self.alive() and "resumed from snapshots" in self.stderr()[self.started_at:],
                       60, "tally engine to start")
        elif wait:
            wait_until(self.healthy, 60, f"tally {cmd} to answer /healthz")
        return self

    def alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"tally exited with {self.proc.returncode}:\n{self.stderr()}")
        return True

    def healthy(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"tally run exited with {self.proc.returncode}:\n{self.stderr()}")
        try:
            st, _ = self.request("GET", "/healthz", timeout=1)
            return st == 200
        except OSError:
            return False

    def stop(self, expect=0):
        """SIGTERM, then SIGKILL after a grace period; checks the exit code and
        that no sanitizer reported anything."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(30 * TIMEOUT_MULT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("tally run did not stop on SIGTERM:\n" + self.stderr())
        self.proc = None
        self.errf.close()
        err = self.stderr()
        assert "Sanitizer" not in err and "runtime error" not in err, err
        assert rc == expect, f"tally run exited {rc}, expected {expect}:\n{err}"

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        self.errf.close()

    def stderr(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def cleanup(self):
        if self.proc:
            self.kill9()
        shutil.rmtree(self.dir, ignore_errors=True)

    def replay(self, *args):
        return subprocess.run([TALLY_BIN, "replay", "-c", self.config, "-q", *args],
                              capture_output=True, text=True, timeout=120 * TIMEOUT_MULT)

    # ---- HTTP ----
    def connect(self, timeout=10):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout * TIMEOUT_MULT)

    def request(self, method, path, body=None, headers=None, timeout=10, conn=None):
        own = conn is None
        c = conn or self.connect(timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            self.last_headers = dict(r.getheaders())
            return r.status, data
        finally:
            if own:
                c.close()

    def vote(self, poll, option, voter=None, conn=None):
        body = {"option": option}
        if voter is not None:
            body["voter"] = voter
        st, data = self.request("POST", f"/v1/polls/{poll}/votes", json.dumps(body),
                                {"Content-Type": "application/json"}, conn=conn)
        return st, (json.loads(data) if data else None)

    # ---- results ----
    def published(self, poll):
        path = os.path.join(self.dir, "public", "polls", poll + ".json")
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def published_counts(self, poll):
        j = self.published(poll)
        return None if j is None else {o["id"]: o["votes"] for o in j["options"]}

    def wait_counts(self, expected, timeout=30):
        """expected: {poll: {option: n}}; waits until every poll's JSON says so."""
        last = {}

        def ok():
            for poll, want in expected.items():
                got = self.published_counts(poll)
                last[poll] = got
                if got != want:
                    return False
            return True
        try:
            wait_until(ok, timeout, "published totals")
        except AssertionError:
            raise AssertionError(f"published totals {last} != expected {expected}")


def expected_totals(polls, accepted):
    """polls: {poll: (mode, [options])}; accepted: [(poll, option, voter)] in
    the order they were acknowledged per voter. Applies each poll's mode."""
    out = {p: {o: 0 for o in opts} for p, (mode, opts) in polls.items()}
    seen = {}
    for poll, option, voter in accepted:
        mode = polls[poll][0]
        if mode == "unlimited":
            out[poll][option] += 1
            continue
        key = (poll, voter)
        prev = seen.get(key)
        if prev is None:
            seen[key] = option
            out[poll][option] += 1
        elif mode == "changeable" and prev != option:
            out[poll][prev] -= 1
            out[poll][option] += 1
            seen[key] = option
    return out


DEFAULT_SHAPE = {"one": ("one-per-voter", ["a", "b", "c"]),
                 "chg": ("changeable", ["x", "y", "z"]),
                 "free": ("unlimited", ["p", "q"])}


SHAPE = {"one": ["a", "b", "c"], "free": ["p", "q"]}


class Load:
    """Client threads casting votes with never-repeated voters, to one or more
    tally processes, until stopped. Records what was acknowledged and what
    was not (no answer, or 503): those may or may not be in the log."""

    rounds = 0

    def __init__(self, t, nthreads=4):
        Load.rounds += 1
        self.round = Load.rounds
        self.targets = t if isinstance(t, list) else [t]
        self.t, self.stop, self.lock = t, threading.Event(), threading.Lock()
        self.acked = {p: {o: 0 for o in opts} for p, opts in SHAPE.items()}
        self.unanswered = {p: {o: 0 for o in opts} for p, opts in SHAPE.items()}
        self.total_acked = 0
        self.codes = {}
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(nthreads)]
        for th in self.threads:
            th.start()

    def run(self, tid):
        t = self.targets[tid % len(self.targets)]
        conn, n = None, 0
        while not self.stop.is_set():
            poll = "one" if n % 3 else "free"
            opt = SHAPE[poll][n % len(SHAPE[poll])]
            voter = f"r{self.round}-t{tid}-{n}"
            n += 1
            try:
                conn = conn or t.connect(timeout=20)
                st, _ = t.vote(poll, opt, voter, conn=conn)
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.unanswered[poll][opt] += 1
                conn = None
                if self.stop.is_set():
                    break
                time.sleep(0.01)
                continue
            with self.lock:
                self.codes[st] = self.codes.get(st, 0) + 1
                if st == 202:
                    self.acked[poll][opt] += 1
                    self.total_acked += 1
                else:
                    # 503: not written, or written by Kafka after a timeout.
                    self.unanswered[poll][opt] += 1
            if st == 503:
                time.sleep(0.05)  # Retry-After, shortened
        if conn:
            conn.close()

    def finish(self):
        self.stop.set()
        for th in self.threads:
            th.join()

    def merge(self, other):
        """Adds another round's counts (for checks over several rounds)."""
        for p in SHAPE:
            for o in SHAPE[p]:
                self.acked[p][o] += other.acked[p][o]
                self.unanswered[p][o] += other.unanswered[p][o]


class TallyTestCase(unittest.TestCase):
    def make(self, **kw):
        t = Tally(**kw)
        self.addCleanup(t.cleanup)
        return t

    def assert_within(self, live, load):
        """Every acknowledged vote counted; nothing beyond what was sent."""
        for p, opts in SHAPE.items():
            for o in opts:
                self.assertGreaterEqual(live[p][o], load.acked[p][o], f"lost acknowledged votes in {p}/{o}")
                self.assertLessEqual(live[p][o] - load.acked[p][o], load.unanswered[p][o],
                                     f"{p}/{o} counted more than was sent")
