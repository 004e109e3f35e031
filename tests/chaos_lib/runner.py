"""The chaos loop: rounds of votes under random faults, each round ending in
a check by an independent reader of the log (see logreader.py, ledger.py).

A round: start `tally run`; clients vote in every mode; one or more faults
strike at random moments; the clients stop; tally is brought back if a
fault left it down; then the checker proves
  - every 202 is in the log exactly once, nothing refused or rejected is in
    it, nothing unanswered is in it twice, a voter's votes keep their order;
  - no byte of the log verified at the end of the last round, and no byte
    before a torn tail left by a kill -9, was removed or changed;
  - the published totals equal the checker's own count of the log (with
    its own mode rules), live, after a clean stop, and after a from-scratch
    `tally replay` into a fresh directory (which must not change the log).
"""
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import harness  # noqa: E402  (tests/integration/harness.py)
from harness import TIMEOUT_MULT, Tally  # noqa: E402

from . import logreader  # noqa: E402
from .ledger import (POLLS, Ledger, Load, Violation, check_records, count_statuses,  # noqa: E402
                     polls_ini, tally_log, totals_diff)

FILE_FAULTS = ["kill", "stop", "flip", "delete", "diskfull", "shim", "trunc", "pubstart"]
KAFKA_FAULTS = ["kill", "stop", "broker"]
ALL_FAULTS = FILE_FAULTS + ["broker"]
SHIM_FAULTS = ("shim", "trunc", "pubstart")
NPART = 4


def say(*a):
    print("chaos:", *a, flush=True)


def first_diff(a, b):
    n = min(len(a), len(b))
    for i in range(0, n, 4096):
        if a[i:i + 4096] != b[i:i + 4096]:
            for j in range(i, min(i + 4096, n)):
                if a[j] != b[j]:
                    return j
    return n


class Chaos:
    def __init__(self, args):
        self.args = args
        self.seed = args.seed
        self.bin = harness.TALLY_BIN
        self.build = os.environ.get("TALLY_BUILD_DIR") or os.path.join(HERE, "..", "..", "build")
        self.ledger = Ledger()
        self.faults = args.faults
        self.kafka = args.kafka
        self.base = tempfile.mkdtemp(prefix="tally-chaos-")
        self.tmpfs = None
        self.kdir = self.bootstrap = self.topic = None
        self.shim = None
        self.golden = b""       # file log verified at the end of the last round
        self.golden_records = []
        self.golden_kafka = {}  # (partition, offset) -> payload
        self.must_keep = []     # (what, bytes) prefixes that must survive
        self.notes = []
        self.have_log_cmd = self.tally_has("log")
        self.t = None

    # ------------------------------------------------------------ set-up --
    def tally_has(self, sub):
        try:
            r = subprocess.run([self.bin, sub, "--help"], capture_output=True, timeout=10)
        except OSError:
            return False
        return r.returncode == 0

    def setup(self):
        extra = ""
        if self.kafka:
            self.setup_kafka()
            extra = (f"[kafka]\nbrokers = {self.bootstrap}\ntopic = {self.topic}\npartitions = {NPART}\n"
                     "linger.ms = 1\nmessage.timeout.ms = 5000\n")
        self.t = Tally(polls=polls_ini(), extra=extra, workdir=self.base)
        self.logdir = os.path.join(self.base, "log")
        self.logpath = os.path.join(self.logdir, "votes.log")
        if "diskfull" in self.faults:
            os.makedirs(self.logdir, exist_ok=True)
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", self.logdir],
                               capture_output=True, text=True)
            if r.returncode == 0:
                self.tmpfs = self.logdir
            else:
                say(f"diskfull fault skipped: cannot mount a tmpfs ({r.stderr.strip() or r.returncode})")
                self.faults = [f for f in self.faults if f != "diskfull"]
        if any(f in SHIM_FAULTS for f in self.faults):
            lib = os.environ.get("FAULTSHIM_LIB") or os.path.join(self.build, "tests", "faultshim",
                                                                   "libfaultshim.so")
            why = ("a preloaded library and the sanitizer runtime do not mix" if harness.SANITIZE else
                   None if os.path.exists(lib) else f"{lib} is not built")
            if why:
                say(f"{','.join(f for f in self.faults if f in SHIM_FAULTS)} skipped: {why}")
                self.faults = [f for f in self.faults if f not in SHIM_FAULTS]
            else:
                self.shim = (lib, os.path.join(self.base, "faultshim.ctl"))
                self.shim_set("off")
        if not self.faults:
            raise SystemExit("chaos: no fault left to apply")

    def setup_kafka(self):
        if not shutil.which("kcat"):
            raise SystemExit("chaos: --kafka reads the topic with kcat: apt-get install kcat")
        src = os.environ.get("TALLY_SOURCE_DIR", os.path.join(HERE, "..", ".."))
        self.kafka_local = os.path.join(src, "scripts", "kafka-local")
        self.kdir = os.path.join(self.base, "kafka")
        self.bootstrap = self.kafka_cmd("start", "--dir", self.kdir)
        self.topic = f"chaos-{self.seed}-{int(time.time() * 1000)}"  # tally creates it

    def kafka_cmd(self, *args, timeout=300):
        r = subprocess.run([self.kafka_local, *args], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"kafka-local {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""

    def teardown(self, keep):
        if self.t and self.t.proc:
            with contextlib.suppress(Exception):
                self.t.kill9()
        if self.kdir:
            with contextlib.suppress(Exception):
                self.kafka_cmd("stop", "--dir", self.kdir, "--purge")
        if self.tmpfs:
            subprocess.run(["umount", self.tmpfs], capture_output=True)
        if keep:
            say(f"work directory kept: {self.base}")
        else:
            shutil.rmtree(self.base, ignore_errors=True)

    # ---------------------------------------------------------- processes --
    @contextlib.contextmanager
    def env(self):
        """tally runs with the fault shim preloaded (disarmed unless armed)."""
        if not self.shim:
            yield
            return
        old = {k: os.environ.get(k) for k in ("LD_PRELOAD", "FAULTSHIM_CTL")}
        os.environ["LD_PRELOAD"], os.environ["FAULTSHIM_CTL"] = self.shim
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def shim_set(self, line):
        tmp = self.shim[1] + ".tmp"
        with open(tmp, "w") as f:
            f.write(line + "\n")
        os.rename(tmp, self.shim[1])

    def start(self):
        with self.env():
            self.t.start()

    def start_refused(self, what):
        """Starts tally run and expects it to refuse: exit non-zero without
        ever answering /healthz. Returns its stderr."""
        with self.env():
            self.t.start(wait=False)
        deadline = time.monotonic() + 30 * TIMEOUT_MULT
        while True:
            rc = self.t.proc.poll()
            if rc is not None:
                self.t.proc = None
                self.t.errf.close()
                err = self.t.stderr()[self.t.started_at:]
                if rc == 0 or rc < 0:
                    raise Violation(f"tally run on {what}: exited {rc} instead of refusing:\n{err[-2000:]}")
                return err
            try:
                st, _ = self.t.request("GET", "/healthz", timeout=1)
            except OSError:
                st = None
            if st is not None:
                self.t.kill9()
                raise Violation(f"tally run opened {what} (answered /healthz {st}) instead of refusing")
            if time.monotonic() > deadline:
                self.t.kill9()
                raise Violation(f"tally run on {what}: neither refused nor served within 30 s")
            time.sleep(0.05)

    def alive_or_clean_exit(self, what):
        """After a disk fault tally must stay up, or exit cleanly with an
        error; never die by a signal (abort, crash)."""
        rc = self.t.proc.poll()
        if rc is None:
            return True
        self.t.proc = None
        self.t.errf.close()
        err = self.t.stderr()[self.t.started_at:]
        if rc < 0:
            raise Violation(f"tally died by signal {-rc} during {what}:\n{err[-2000:]}")
        if rc == 0:
            raise Violation(f"tally exited 0 on its own during {what}")
        self.notes.append(f"exited {rc}")
        return False

    def healthz(self):
        try:
            st, data = self.t.request("GET", "/healthz", timeout=2)
        except OSError:
            return None, None
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        return st, body

    def probe(self, rnd):
        """One unlimited-mode vote from a fresh voter, on its own connection,
        recorded in the ledger like every other."""
        voter = self.ledger.new_voter_name("free")
        r = self.ledger.new_req("free", "p", voter, rnd)
        r.t_sent = time.monotonic()
        try:
            c = self.t.connect(timeout=10)
            c.connect()
        except ConnectionRefusedError:
            r.refused, r.t_done = True, time.monotonic()
            return None
        except OSError:
            r.t_done = time.monotonic()
            return None
        try:
            st, _ = self.t.vote("free", "p", voter, conn=c)
            r.status = st
        except (OSError, Exception):
            st = None
        finally:
            r.t_done = time.monotonic()
            c.close()
        return st

    def expect_votes_again(self, rnd, what, timeout=15):
        """After a fault ends: a vote is answered 202 again (tally restarted
        if it exited cleanly)."""
        t0 = time.monotonic()
        deadline = t0 + timeout * TIMEOUT_MULT
        while time.monotonic() < deadline:
            if not self.alive_or_clean_exit(what):
                self.start()
            if self.probe(rnd) == 202:
                return time.monotonic() - t0
            time.sleep(0.1)
        raise Violation(f"no vote accepted within {timeout} s after {what} ended")

    def stats(self):
        try:
            st, data = self.t.request("GET", "/v1/stats")
        except OSError as e:
            try:
                rc = self.t.proc.wait(2)
            except subprocess.TimeoutExpired:
                rc = None
            if rc is not None:
                raise Violation(f"tally run exited {rc} on its own:\n{self.t.stderr()[self.t.started_at:][-2000:]}")
            raise AssertionError(f"/v1/stats: {e}")
        if st != 200:
            raise Violation(f"/v1/stats answered {st}")
        return json.loads(data)

    # ------------------------------------------------------------- reading --
    def read_image(self):
        with open(self.logpath, "rb") as f:
            return f.read()

    def read_kafka(self):
        r = subprocess.run(["kcat", "-C", "-b", self.bootstrap, "-t", self.topic, "-e", "-q",
                            "-o", "beginning", "-f", "%p %o %S\n%s\n"],
                           capture_output=True, timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"kcat failed: {r.stderr.decode(errors='replace')}")
        out, p, recs = r.stdout, 0, []
        while p < len(out):
            nl = out.index(b"\n", p)
            part, off, size = (int(x) for x in out[p:nl].split())
            payload = out[nl + 1:nl + 1 + size]
            p = nl + 1 + size + 1
            try:
                vote = logreader.decode_record(payload)
            except (ValueError, UnicodeDecodeError) as e:
                raise Violation(f"undecodable record at {part}/{off} in the topic: {e}")
            if vote is None:  # a control record: a change to a poll, not a vote
                continue
            ts, flags, poll, option, voter = vote
            recs.append((logreader.Record(part, off, off + 1, ts, flags, poll, option, voter), payload))
        recs.sort(key=lambda x: (x[0].partition, x[0].offset))
        return recs

    # -------------------------------------------------------------- faults --
    def fault_kill(self, rng, rnd):
        early = rng.random() < 0.3
        self.t.kill9()
        img = self.capture_after_kill("kill -9")
        if early:
            # and again in the middle of the restart's recovery
            with self.env():
                self.t.start(wait=False)
            time.sleep(rng.uniform(0, 0.05) * TIMEOUT_MULT)
            self.t.kill9()
            img = self.capture_after_kill("kill -9 during recovery")
        time.sleep(rng.uniform(0, 0.3))
        self.start()
        return f"kill{'(early)' if early else ''}@{img}"

    def capture_after_kill(self, what):
        if self.kafka:
            return "topic"
        data = self.read_image()
        s = logreader.scan_bytes(data, NPART)
        if s.bad and s.intact_after:
            raise Violation(f"after {what}: bad frame at {s.bad[0]} ({s.bad[1]}) followed by "
                            f"{s.intact_after} intact frames: a hole, not a torn tail")
        if s.commit_mismatch:
            raise Violation(f"after {what}: the commit frame at {s.commit_mismatch[0]} counts more "
                            f"records than its write holds")
        self.must_keep.append((what, data[:s.valid_end]))
        return f"{len(data)}B{'+torn' if s.bad else ''}"

    def fault_stop(self, rng, rnd):
        d = rng.uniform(0.2, 1.5)
        os.kill(self.t.proc.pid, signal.SIGSTOP)
        time.sleep(d)
        os.kill(self.t.proc.pid, signal.SIGCONT)
        self.alive_or_clean_exit("SIGSTOP/SIGCONT") or self.start()
        return f"stop{d:.1f}s"

    def fault_flip(self, rng, rnd):
        if rng.random() < 0.5:
            self.t.kill9()
            how = "kill"
        else:
            self.t.stop()
            how = "term"
        orig = self.read_image()
        s = logreader.scan_bytes(orig, NPART)
        if len(s.records) < 3:
            self.start()
            return "flip(skipped: log too short)"
        # Never the last intact frame of the file, which a torn write could
        # have left: the last record only when a commit frame follows it
        # (the write was acknowledged; its flip is damage, not a torn tail).
        last_committed = s.last_commit_end > s.records[-1].offset
        j = rng.randrange(len(s.records) if last_committed else len(s.records) - 1)
        rec = s.records[j]
        at = rng.randrange(rec.offset, rec.end)
        bit = rng.randrange(8)
        variant = rng.choice(["no-checkpoint", "restored-copy", "checkpoint"])
        data = bytearray(orig)
        data[at] ^= 1 << bit
        ckpt = os.path.join(self.logdir, "CHECKPOINT")
        if variant == "no-checkpoint":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ckpt)
        if variant == "restored-copy":  # a log copied back from a backup: a new inode
            with open(self.logpath + ".restore", "wb") as f:
                f.write(data)
            os.rename(self.logpath + ".restore", self.logpath)
        else:
            with open(self.logpath, "r+b") as f:
                f.seek(at)
                f.write(bytes([data[at]]))
        damaged = bytes(data)
        where = f"bit {bit} of byte {at} (frame {j} of {len(s.records)} at {rec.offset}), {variant}"

        def unchanged(after):
            now = self.read_image()
            if now[:len(damaged)] != damaged:
                raise Violation(f"{after} changed the damaged log ({where}): {len(damaged)} -> {len(now)} "
                                f"bytes, first difference at {first_diff(now, damaged)}")
        # replay: read-only, refuses damage, publishes nothing
        fresh = tempfile.mkdtemp(dir=self.base, prefix="replay-")
        r = self.t.replay("-s", f"publisher.dir={fresh}/public", "-s", f"engine.snapshot_dir={fresh}/snap")
        unchanged("tally replay")
        if r.returncode == 0:
            raise Violation(f"tally replay exited 0 on a damaged log ({where})")
        pub = os.path.join(fresh, "public", "polls")
        if os.path.isdir(pub) and os.listdir(pub):
            raise Violation(f"tally replay published {os.listdir(pub)} from a damaged log ({where})")
        verdict = "replay refused"
        if self.have_log_cmd:
            v = subprocess.run([self.bin, "log", "verify", "-c", self.t.config], capture_output=True, text=True,
                               timeout=60 * TIMEOUT_MULT)
            unchanged("tally log verify")
            if v.returncode == 0:
                raise Violation(f"tally log verify exited 0 on a damaged log ({where})")
            verdict += ", verify refused"
            out = os.path.join(fresh, "salvaged")
            v = subprocess.run([self.bin, "log", "salvage", "-c", self.t.config, "--out", out],
                               capture_output=True, text=True, timeout=60 * TIMEOUT_MULT)
            unchanged("tally log salvage")
            self.check_salvage(out, s, j, where, v)
            verdict += ", salvage exact"
        if variant == "checkpoint":
            # A trusted checkpoint may let the open skip the damaged spot;
            # it must still not remove anything.
            with self.env():
                self.t.start(wait=False)
            wait = time.monotonic() + 10 * TIMEOUT_MULT
            while time.monotonic() < wait and self.t.proc.poll() is None and self.healthz()[0] is None:
                time.sleep(0.05)
            if self.t.proc.poll() is None:
                self.t.kill9()
                verdict += ", run opened"
            else:
                self.t.proc = None
                self.t.errf.close()
                verdict += ", run refused"
        else:
            self.start_refused(f"a log damaged at {where}")
            verdict += ", run refused"
        unchanged("tally run")
        # Put the good bit back (the checker's copy of that byte), keeping
        # whatever a tally that opened the log appended since, and go on.
        with open(self.logpath, "r+b") as f:
            f.seek(at)
            f.write(orig[at:at + 1])
        self.start()
        return f"flip({how},{variant}: {verdict})"

    def check_salvage(self, out, s, j, where, proc):
        if proc.returncode == 127 or "unknown" in proc.stderr.lower() and proc.returncode == 2:
            raise Violation(f"tally log salvage is missing or failed: {proc.stderr}")
        logs = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f == "votes.log"]
        if len(logs) != 1:
            raise Violation(f"tally log salvage ({where}) wrote no votes.log under {out} "
                            f"(exit {proc.returncode}): {proc.stderr[-500:]}")
        _, got = logreader.read_log(logs[0], NPART)
        want = [(r.partition, r.key()) for i, r in enumerate(s.records) if i != j]
        have = [(r.partition, r.key()) for r in got.records]
        if got.bad or have != want:
            raise Violation(f"tally log salvage ({where}): {len(have)} frames (bad: {got.bad}), "
                            f"expected every intact frame but the damaged one: {len(want)}")

    def fault_delete(self, rng, rnd):
        keep = open(self.logpath, "rb")  # the inode stays readable through this
        os.unlink(self.logpath)
        t_del = time.monotonic()
        deadline = t_del + 3 * TIMEOUT_MULT
        t_det = None
        while time.monotonic() < deadline:
            st, body = self.healthz()
            unhealthy = st is not None and not (st == 200 and (body or {}).get("status") == "ok")
            if unhealthy and self.probe(rnd) == 503:
                t_det = time.monotonic()
                break
            time.sleep(0.1)
        if t_det is None:
            late = [r for r in self.ledger.since(t_del) if r.status == 202]
            keep.close()
            raise Violation(f"votes.log deleted while running: after 3 s /healthz still ok or votes not "
                            f"answered 503 ({len(late)} votes answered 202 since the deletion)")
        time.sleep(rng.uniform(0.2, 0.8))  # votes keep coming: 503 only
        late = [r for r in self.ledger.since(t_det) if r.status == 202]
        if late:
            raise Violation(f"{len(late)} votes answered 202 after the deletion of votes.log was detected")
        self.t.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.t.proc.wait(30 * TIMEOUT_MULT)
        except subprocess.TimeoutExpired:
            self.t.kill9()
            raise Violation("tally run did not stop on SIGTERM with its log deleted")
        self.t.proc = None
        self.t.errf.close()
        if rc < 0:
            raise Violation(f"tally run died by signal {-rc} with its log deleted")
        if os.path.exists(self.logpath):
            raise Violation("tally recreated votes.log after it was deleted")
        keep.seek(0)
        data = keep.read()
        keep.close()
        # META without votes.log: refused by run and replay alike
        self.start_refused("a log directory whose votes.log is missing")
        fresh = tempfile.mkdtemp(dir=self.base, prefix="replay-")
        r = self.t.replay("-s", f"publisher.dir={fresh}/public", "-s", f"engine.snapshot_dir={fresh}/snap")
        if r.returncode == 0:
            raise Violation("tally replay exited 0 with votes.log missing")
        if os.path.exists(self.logpath):
            raise Violation("tally run or replay created an empty votes.log in place of the deleted one")
        with open(self.logpath, "wb") as f:  # the operator restores it
            f.write(data)
        self.start()
        return f"delete(detected in {t_det - t_del:.1f}s, restored {len(data)}B)"

    def fault_diskfull(self, rng, rnd):
        filler = os.path.join(self.logdir, "filler")
        t0 = time.monotonic()
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for chunk in (1 << 20, 4096, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError:
                    pass
        finally:
            os.close(fd)
        hold = rng.uniform(0.3, 1.2)
        time.sleep(hold)
        during = [r for r in self.ledger.since(t0) if r.t_done is not None]
        os.unlink(filler)
        self.alive_or_clean_exit("disk full")
        took = self.expect_votes_again(rnd, "disk full")
        c = count_statuses(during)
        return f"diskfull({hold:.1f}s, {c.get('503', 0)}x503, back in {took:.1f}s)"

    # shim: writes and fsyncs fail while the log can still be cut back;
    # trunc: the log can be neither written nor truncated.
    SHIM_SCENARIOS = [
        ("log", "pwrite", "EIO"), ("log", "pwrite", "ENOSPC"), ("log", "fdatasync", "EIO"),
        ("snap", "write,rename,fsync", "ENOSPC"), ("public", "write,rename", "EIO"),
    ]
    TRUNC_SCENARIOS = [("log", "pwrite,ftruncate", "ENOSPC"), ("log", "fdatasync,ftruncate", "EIO")]

    def fault_trunc(self, rng, rnd):
        return self.fault_shim(rng, rnd, self.TRUNC_SCENARIOS)

    def fault_pubstart(self, rng, rnd):
        """publisher.dir unwritable while tally starts: it must start, take
        votes, and publish once the directory can be written again."""
        gen = rng.randrange(1 << 30)
        self.t.kill9()
        self.capture_after_kill("kill -9 before an unwritable publisher.dir")
        self.shim_set(f"gen={gen} ops=write,rename,fsync prefix={os.path.join(self.base, 'public')} "
                      "errno=EROFS count=-1")
        time.sleep(0.03)
        try:
            self.start()
            took = self.expect_votes_again(rnd, "an unwritable publisher.dir")
            time.sleep(rng.uniform(0.1, 0.5))
        except AssertionError as e:
            raise Violation(f"tally run with an unwritable publisher.dir: {e}")
        finally:
            self.shim_set("off")
        return f"pubstart(votes in {took:.1f}s)"

    def fault_shim(self, rng, rnd, scenarios=SHIM_SCENARIOS):
        where, ops, err = rng.choice(scenarios)
        prefix = os.path.join(self.base, where)
        prob = rng.choice([1.0, 0.5, 0.2])
        partial = rng.randrange(2)
        gen = rng.randrange(1 << 30)
        hold = rng.uniform(0.3, 1.0)
        before = self.t.stderr().count("faultshim: inject")
        self.shim_set(f"gen={gen} ops={ops} prefix={prefix} errno={err} count=-1 prob={prob} "
                      f"seed={gen} partial={partial}")
        time.sleep(hold)
        self.shim_set("off")
        time.sleep(0.03)  # the shim re-reads its control file every 10 ms
        hits = self.t.stderr().count("faultshim: inject") - before
        self.alive_or_clean_exit(f"{ops} failing with {err} on {where}")
        took = self.expect_votes_again(rnd, f"{ops} failing with {err} on {where}")
        return f"shim({where}:{ops}={err} p={prob}{' partial' if partial else ''}, {hits} hits, back in {took:.1f}s)"

    def fault_broker(self, rng, rnd):
        line = subprocess.run([self.kafka_local, "status", "--dir", self.kdir], capture_output=True,
                              text=True).stdout
        pid = int(line.split("pid=")[1].split()[0])
        os.kill(pid, signal.SIGKILL)
        while True:
            try:
                os.kill(pid, 0)
                time.sleep(0.05)
            except ProcessLookupError:
                break
        down = rng.uniform(0.2, 2.0)
        time.sleep(down)
        port = self.bootstrap.rsplit(":", 1)[1]
        self.kafka_cmd("start", "--dir", self.kdir, "--port", port)
        self.alive_or_clean_exit("the broker's restart") or self.start()
        took = self.expect_votes_again(rnd, "broker restart", timeout=60)
        return f"broker(down {down:.1f}s, back in {took:.1f}s)"

    # --------------------------------------------------------------- check --
    def check_round(self, rnd, load):
        if not self.t.proc or not self.alive_or_clean_exit("the round"):
            self.start()
        if self.kafka:
            # No lag figure with Kafka: wait until the engine's next offsets
            # are the topic's ends (a late retry may still land meanwhile).
            deadline = time.monotonic() + 60 * TIMEOUT_MULT
            while True:
                pos = self.stats()["engine"]["positions"]
                recs = self.read_kafka()
                ends = [0] * NPART
                for r, _ in recs:
                    ends[r.partition] = max(ends[r.partition], r.offset + 1)
                if ends == pos:
                    break
                if time.monotonic() > deadline:
                    raise Violation(f"the engine's positions {pos} never reached the topic's ends {ends}")
                time.sleep(0.5)
            now = {(r.partition, r.offset): pl for r, pl in recs}
            for (p, o), payload in self.golden_kafka.items():
                if now.get((p, o)) != payload:
                    raise Violation(f"topic record {p}/{o} verified last round is gone or changed")
            records = [r for r, _ in recs]
            size = f"{len(recs)} msgs"
        else:
            harness.wait_until(lambda: self.stats()["engine"]["lag"] == 0, 60, "the engine to catch up")
            img = self.read_image()
            self.check_prefixes(img, "live")
            # the verified prefix is byte-identical: read only what follows
            s = logreader.scan_bytes(img, NPART, start=len(self.golden))
            if s.bad:
                raise Violation(f"live log: bad frame at {s.bad[0]} ({s.bad[1]}) with tally up and idle")
            records = self.golden_records + s.records
            size = f"{len(img)}B"
        figures = check_records(self.ledger, records)
        want = tally_log(records)
        live = {}

        def live_ok():
            live.update({p: self.t.published_counts(p) for p in POLLS})
            return live == want
        try:
            harness.wait_until(live_ok, 20, "published totals")
        except AssertionError:
            raise Violation(f"published totals differ from the log's count: {totals_diff(want, live)}")
        self.t.stop()
        err = self.t.stderr()
        if "Sanitizer" in err or "runtime error" in err:
            raise Violation("sanitizer report in tally's stderr")
        after = {p: self.t.published_counts(p) for p in POLLS}
        if after != want:
            raise Violation(f"after a clean stop the published totals differ: {totals_diff(want, after)}")
        if not self.kafka:
            img2 = self.read_image()
            if img2 != img:
                raise Violation(f"a clean stop changed the log: {len(img)} -> {len(img2)} bytes")
        fresh = tempfile.mkdtemp(dir=self.base, prefix="replay-")
        r = self.t.replay("-s", f"publisher.dir={fresh}/public", "-s", f"engine.snapshot_dir={fresh}/snap")
        if r.returncode != 0:
            raise Violation(f"tally replay failed ({r.returncode}): {r.stderr[-1500:]}")
        rep = {}
        for p in POLLS:
            with open(os.path.join(fresh, "public", "polls", p + ".json")) as f:
                rep[p] = {o["id"]: o["votes"] for o in json.load(f)["options"]}
        if rep != want:
            raise Violation(f"a from-scratch replay differs from the log's count: {totals_diff(want, rep)}")
        shutil.rmtree(fresh, ignore_errors=True)
        if self.kafka:
            self.golden_kafka = {(r.partition, r.offset): pl for r, pl in recs}
        else:
            if self.read_image() != img:
                raise Violation("tally replay changed the log")
            self.golden, self.golden_records = img, records
        self.must_keep = []
        return figures, size

    def check_prefixes(self, img, when):
        for what, prefix in [("the log verified last round", self.golden)] + self.must_keep:
            if img[:len(prefix)] != prefix:
                at = first_diff(img, prefix)
                raise Violation(f"{when}: {what} ({len(prefix)} bytes) lost or changed bytes: the log is "
                                f"{len(img)} bytes, first difference at offset {at}")

    # ---------------------------------------------------------------- loop --
    def run(self):
        started = time.monotonic()
        say(f"seed {self.seed}, {self.args.rounds} rounds, faults {','.join(self.faults)}"
            f"{', kafka ' + self.bootstrap + ' topic ' + self.topic if self.kafka else ''}, "
            f"checksums {'verified' if logreader.HAVE_XXHASH else 'NOT verified (no python3-xxhash)'}")
        self.start()
        done = 0
        for rnd in range(1, self.args.rounds + 1):
            if self.args.time and time.monotonic() - started > self.args.time:
                say(f"time limit of {self.args.time} s reached after {done} rounds")
                break
            # The faults, their moments and parameters come from a stream of
            # their own, so --seed repeats them whatever the load did.
            rng = random.Random(f"{self.seed}:{rnd}:faults")
            t0 = time.monotonic()
            if not self.t.proc:
                self.start()
            nfaults = 1 if rng.random() < 0.6 else 2
            picks = [rng.choice(self.faults) for _ in range(nfaults)]
            self.notes = []
            self.round_desc = f"round {rnd} ({','.join(picks)})"
            n0 = len(self.ledger.reqs)
            load = Load(self.t, self.ledger, random.Random(f"{self.seed}:{rnd}:load"), rnd,
                        nthreads=self.args.clients)
            applied = []
            try:
                for f in picks:
                    time.sleep(rng.uniform(0.1, self.args.spread) * TIMEOUT_MULT)
                    applied.append(getattr(self, "fault_" + f)(rng, rnd))
                time.sleep(rng.uniform(0.05, 0.4))
            finally:
                load.finish()
            figures, size = self.check_round(rnd, load)
            c = count_statuses(self.ledger.reqs[n0:])
            say(f"round {rnd}/{self.args.rounds} seed {self.seed}: {' + '.join(applied)}; "
                f"sent {len(self.ledger.reqs) - n0} ({', '.join(f'{k}:{v}' for k, v in sorted(c.items()))}); "
                f"log {size}, {figures['records']} records, all {figures['acked']} acks once; "
                f"totals = live = replay ({time.monotonic() - t0:.1f}s)"
                f"{' [' + '; '.join(self.notes) + ']' if self.notes else ''}")
            done += 1
        return done


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(
        prog="tests/chaos",
        description="Seeded, bounded fault loop against the real tally binary, checked after every round "
                    "by an independent reader of the log (see tests/chaos_lib/). Exits 0 when every round "
                    "held, 1 on the first broken promise (printed with the seed to reproduce it).")
    ap.add_argument("--rounds", type=int, default=20, help="rounds to run (default 20)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    ap.add_argument("--faults", default=None,
                    help=f"comma-separated fault classes (default: all that apply): {','.join(ALL_FAULTS)}; "
                    "the shim ones use build/tests/faultshim/libfaultshim.so ($FAULTSHIM_LIB)")
    ap.add_argument("--kafka", action="store_true",
                    help="use a real Kafka broker (scripts/kafka-local) as the log; faults kill,stop,broker")
    ap.add_argument("--time", type=float, default=900, help="stop after this many seconds (default 900; 0: no limit)")
    ap.add_argument("--clients", type=int, default=4, help="client connections (default 4)")
    ap.add_argument("--spread", type=float, default=1.0, help="longest wait before a fault, seconds (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory even when all rounds pass")
    ap.add_argument("--bin", default=None, help="the tally binary (default $TALLY_BIN or build/tally)")
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = int(time.time() * 1000) % 1000000
    if args.bin:
        harness.TALLY_BIN = args.bin
    elif "TALLY_BIN" not in os.environ:
        harness.TALLY_BIN = os.path.join(HERE, "..", "..", "build", "tally")
    harness.TALLY_BIN = os.path.abspath(harness.TALLY_BIN)
    allowed = KAFKA_FAULTS if args.kafka else FILE_FAULTS
    if args.faults is None:
        args.faults = list(allowed)
    else:
        args.faults = [f for f in args.faults.split(",") if f]
        bad = [f for f in args.faults if f not in ALL_FAULTS]
        if bad:
            ap.error(f"unknown fault {','.join(bad)} (known: {','.join(ALL_FAULTS)})")
        skipped = [f for f in args.faults if f not in allowed]
        if skipped:
            say(f"{','.join(skipped)} do not apply to the {'Kafka' if args.kafka else 'file'} log: skipped")
        args.faults = [f for f in args.faults if f in allowed]
        if not args.faults:
            ap.error("no fault left to apply")
    if not os.access(harness.TALLY_BIN, os.X_OK):
        ap.error(f"{harness.TALLY_BIN} is not an executable (build first, or --bin)")
    c = Chaos(args)
    ok = False
    try:
        try:
            c.setup()
        except SystemExit:
            ok = True  # nothing ran: nothing to keep
            raise
        n = c.run()
        ok = True
        say(f"PASS: {n} rounds, seed {args.seed}, faults {','.join(c.faults)}")
        return 0
    except Violation as e:
        say(f"FAIL in {getattr(c, 'round_desc', 'set-up')}, seed {args.seed}: {e}")
        say(f"reproduce: tests/chaos --seed {args.seed} --rounds {args.rounds} --faults {','.join(c.faults)}"
            f"{' --kafka' if args.kafka else ''}")
        return 1
    except Exception as e:  # a test malfunction or a hang: still name the seed
        import traceback
        traceback.print_exc()
        say(f"ERROR in {getattr(c, 'round_desc', 'set-up')}, seed {args.seed}: {type(e).__name__}: {e}")
        say(f"reproduce: tests/chaos --seed {args.seed} --rounds {args.rounds} --faults {','.join(c.faults)}"
            f"{' --kafka' if args.kafka else ''}")
        return 1
    finally:
        c.teardown(keep=args.keep or not ok)
