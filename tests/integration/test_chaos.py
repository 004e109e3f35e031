"""The chaos test in make check: first the checker itself, against planted
bugs (a checker that cannot fail proves nothing), then a short seeded run of
tests/chaos against the real binary. CHAOS_SEED, CHAOS_ROUNDS and
CHAOS_FAULTS override the run; a failure prints the seed to reproduce it
with `tests/chaos --seed S`."""
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import unittest

SRC = os.environ.get("TALLY_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "../.."))
sys.path.insert(0, os.path.join(SRC, "tests"))

from chaos_lib import logreader  # noqa: E402
from chaos_lib.ledger import Ledger, Violation, check_records, tally_log  # noqa: E402
from chaos_lib.runner import Chaos, first_diff  # noqa: E402

# Fault classes that hold on the current code. flip (recovery and replay
# must refuse a damaged log), delete (a vanished log must be noticed),
# trunc (a log that can be neither written nor truncated must not abort)
# and pubstart (an unwritable publisher.dir must not stop the start) join
# this list as issue 7's fixes land.
FAULTS = os.environ.get("CHAOS_FAULTS", "kill,stop,diskfull,shim,flip,delete,trunc,pubstart")
SANITIZE = os.environ.get("TALLY_SANITIZE", "")


def frame(poll, option, voter, part=0, ts=1):
    return logreader.frame_bytes(logreader.encode_record(ts, poll, option, voter), part)


@unittest.skipUnless(logreader.HAVE_XXHASH, "python3-xxhash missing (scripts/install-deps)")
class Reader(unittest.TestCase):
    def test_frames_decode_and_checksums_bind(self):
        img = frame("one", "a", "v1", 1) + frame("free", "p", None, 3)
        s = logreader.scan_bytes(img, 4)
        self.assertIsNone(s.bad)
        self.assertEqual([(r.partition, r.key()) for r in s.records],
                         [(1, ("one", "a", "v1")), (3, ("free", "p", None))])
        # the checksum is seeded with the partition: the same bytes tagged
        # with another partition do not check
        moved = bytearray(img)
        moved[8] = 2
        self.assertEqual(logreader.scan_bytes(bytes(moved), 4).bad, (0, "checksum mismatch"))

    def test_commit_frames_are_skipped_counted_and_bound_by_their_kind(self):
        a, b = frame("one", "a", "v1"), frame("free", "p", None, 3)
        img = a + logreader.commit_bytes(1) + a + b + logreader.commit_bytes(2)
        s = logreader.scan_bytes(img, 4)
        self.assertIsNone(s.bad)
        self.assertEqual((len(s.records), s.commits, s.commit_mismatch), (3, 2, []))
        self.assertEqual(s.valid_end, len(img))
        # A count that is not its write's is seen (the first commit frame may
        # follow an older log's frames: only later ones are judged).
        bad = a + logreader.commit_bytes(1) + a + b + logreader.commit_bytes(3)
        self.assertEqual(logreader.scan_bytes(bad, 4).commit_mismatch, [len(a) + 20 + len(a) + len(b)])
        # Records of a write a kill -9 tore (no commit frame) before the next
        # write's: fewer counted than lie there is no fault.
        orphans = a + logreader.commit_bytes(1) + a + b + a + logreader.commit_bytes(1)
        s = logreader.scan_bytes(orphans, 4)
        self.assertEqual((s.commit_mismatch, s.last_commit_end), ([], len(orphans)))
        # The checksum is seeded with the kind: a record cannot pass as a
        # commit frame, nor the other way round.
        c = bytearray(logreader.commit_bytes(1))
        c[10] = 0
        self.assertEqual(logreader.scan_bytes(a + bytes(c), 4).bad, (len(a), "checksum mismatch"))
        r = bytearray(a)
        r[10] = 1
        self.assertEqual(logreader.scan_bytes(bytes(r), 4).bad, (0, "bad header"))

    def test_every_single_bit_flip_is_caught(self):
        img = frame("one", "a", "v1") + frame("chg", "x", "v2", 2)
        first = len(frame("one", "a", "v1"))
        for at in range(first):
            for bit in range(8):
                d = bytearray(img)
                d[at] ^= 1 << bit
                s = logreader.scan_bytes(bytes(d), 4)
                self.assertEqual(s.bad and s.bad[0], 0, f"byte {at} bit {bit}")
                self.assertEqual(s.intact_after, 1, f"byte {at} bit {bit}: the frame after is intact")

    def test_torn_tail_has_nothing_after(self):
        good = frame("one", "a", "v1") + frame("one", "b", "v2")
        s = logreader.scan_bytes(good + frame("one", "c", "v3")[:-3], 4)
        self.assertEqual((s.valid_end, s.bad[1], s.intact_after), (len(good), "incomplete payload", 0))

    def test_record_layout(self):
        # v1: u8 version, u8 flags, u64 ts, u8 len + poll, u8 len + option, u16 len + voter
        rec = bytes([1, 0]) + struct.pack("<Q", 7) + b"\x03one" + b"\x01a" + struct.pack("<H", 2) + b"v9"
        self.assertEqual(logreader.decode_record(rec), (7, 0, "one", "a", "v9"))
        for bad in (rec[:-1], rec + b"x", bytes([2]) + rec[1:]):
            with self.assertRaises(ValueError):
                logreader.decode_record(bad)
        # v2: u8 version, u8 type (1 vote), u8 flags, then as v1, then the key when flags & 2
        rec2 = bytes([2, 1, 2]) + rec[2:] + b"\x02k1"
        self.assertEqual(logreader.decode_any(rec2), ("vote", 7, 2, "one", "a", "v9", "k1"))
        self.assertEqual(logreader.encode_record(7, "one", "a", "v9", key="k1"), rec2)
        for bad in (rec2[:-1], rec2 + b"x", bytes([2, 1, 4]) + rec2[3:], bytes([2, 3]) + rec2[2:]):
            with self.assertRaises(ValueError):
                logreader.decode_any(bad)
        # control: u8 2, u8 2, u8 kind, u64 ts, u64 seq, u64 at, u8 len + poll, u32 len + body
        ctl = bytes([2, 2, 1]) + struct.pack("<QQQ", 5, 1, 0) + b"\x03one" + struct.pack("<I", 2) + b"{}"
        self.assertEqual(logreader.decode_any(ctl), ("control", 1, 5, 1, 0, "one", b"{}"))
        self.assertIsNone(logreader.decode_record(ctl))


class Checker(unittest.TestCase):
    def ledger(self, sent):
        """sent: [(poll, option, voter, status)] in send order, one at a time."""
        led, t = Ledger(), 0.0
        for poll, option, voter, status in sent:
            r = led.new_req(poll, option, voter, 1)
            r.t_sent, r.t_done, r.status = t, t + 0.5, status
            r.refused = status == "refused"
            if r.refused:
                r.status = None
            t += 1.0
        return led

    def recs(self, keys):
        return [logreader.Record(0, i, i + 1, 0, 0, p, o, v) for i, (p, o, v) in enumerate(keys)]

    def test_exact_log_passes(self):
        led = self.ledger([("one", "a", "v1", 202), ("chg", "x", "v2", 202), ("chg", "y", "v2", 202),
                           ("free", "p", None, 202), ("free", "q", "u1", None), ("one", "nope", "b", 422)])
        recs = self.recs([("one", "a", "v1"), ("chg", "x", "v2"), ("chg", "y", "v2"), ("free", "p", None)])
        self.assertEqual(check_records(led, recs)["acked"], 4)

    def test_planted_bugs_are_caught(self):
        sent = [("one", "a", "v1", 202), ("chg", "x", "v2", 202), ("chg", "y", "v2", 202),
                ("free", "p", None, 202), ("one", "b", "v3", "refused"), ("one", "c", "v4", 503)]
        good = [("one", "a", "v1"), ("chg", "x", "v2"), ("chg", "y", "v2"), ("free", "p", None)]
        cases = {
            "lost ack": good[1:],
            "ack twice": good + [("one", "a", "v1")],
            "voter-less lost": good[:3],
            "voter-less twice": good + [("free", "p", None)],
            "never sent": good + [("one", "d", "v9")],
            "refused yet logged": good + [("one", "b", "v3")],
            "503 logged twice": good + [("one", "c", "v4")] * 2,
            "reordered": [good[0], good[2], good[1], good[3]],
        }
        for name, keys in cases.items():
            with self.assertRaises(Violation, msg=name):
                check_records(self.ledger(sent), self.recs(keys))
        # one 503'd vote may or may not have landed
        check_records(self.ledger(sent), self.recs(good + [("one", "c", "v4")]))

    def test_partition_change_is_caught(self):
        led = self.ledger([("one", "a", "v1", 202), ("one", "b", "v1", 202)])
        recs = self.recs([("one", "a", "v1"), ("one", "b", "v1")])
        recs[1].partition = 2
        with self.assertRaises(Violation):
            check_records(led, recs)

    def test_mode_rules(self):
        recs = self.recs([("one", "a", "v1"), ("one", "b", "v1"), ("chg", "x", "v2"), ("chg", "y", "v2"),
                          ("chg", "x", "v3"), ("free", "p", None), ("free", "p", "u")])
        t = tally_log(recs)
        self.assertEqual(t["one"], {"a": 1, "b": 0, "c": 0, "d": 0})
        self.assertEqual(t["chg"], {"v": 0, "w": 0, "x": 1, "y": 1, "z": 0})
        self.assertEqual(t["free"], {"p": 2, "q": 0, "r": 0})
        with self.assertRaises(Violation):
            tally_log(self.recs([("one", "zz", "v1")]))

    def test_prefix_rule(self):
        c = Chaos.__new__(Chaos)
        c.golden, c.must_keep = b"abcdef", [("kill", b"abcdefgh")]
        c.check_prefixes(b"abcdefghij", "t")
        for img in (b"abcdefg", b"abcXefghij", b"abcdefgXij"):
            with self.assertRaises(Violation):
                c.check_prefixes(img, "t")
        self.assertEqual(first_diff(b"abcXe", b"abcde"), 3)


BUILD = os.environ.get("TALLY_BUILD_DIR", os.path.join(SRC, "build"))
SHIM = os.path.join(BUILD, "tests", "faultshim", "libfaultshim.so")


@unittest.skipIf(SANITIZE or not os.path.exists(SHIM), "no fault shim (sanitizer build or not built)")
class Shim(unittest.TestCase):
    """The shim fails exactly what its control file says, on command."""

    def test_fails_on_command(self):
        with tempfile.TemporaryDirectory() as d:
            ctl, target = os.path.join(d, "ctl"), os.path.join(d, "data")
            prog = f"""
import os, time
def attempt(f):
    try:
        f(); return "ok"
    except OSError as e:
        return e.strerror
fd = os.open({target!r}, os.O_CREAT | os.O_WRONLY)
out = [attempt(lambda: os.write(fd, b"abcd")) for _ in range(3)]
out.append(attempt(lambda: os.fsync(fd)))
out.append(attempt(lambda: os.write(os.open(os.devnull, os.O_WRONLY), b"x")))  # not under prefix
with open({ctl!r}, "w") as c:
    c.write("gen=2 ops=fsync,ftruncate,rename prefix={d} errno=EIO count=-1")
time.sleep(0.05)
out.append(attempt(lambda: os.fsync(fd)))
out.append(attempt(lambda: os.ftruncate(fd, 0)))
out.append(attempt(lambda: os.rename({target!r}, {target!r} + "2")))
out.append(attempt(lambda: os.write(fd, b"abcd")))
with open({ctl!r}, "w") as c:
    c.write("off")
time.sleep(0.05)
out.append(attempt(lambda: os.fsync(fd)))
print(",".join(out))
"""
            with open(ctl, "w") as c:
                c.write(f"gen=1 ops=write,fsync prefix={d} errno=ENOSPC count=2")
            env = dict(os.environ, LD_PRELOAD=SHIM, FAULTSHIM_CTL=ctl)
            r = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            nospc, eio = os.strerror(28), os.strerror(5)
            self.assertEqual(r.stdout.strip().split(","),
                             [nospc, nospc, "ok", "ok", "ok", eio, eio, eio, "ok", "ok"])
            self.assertEqual(r.stderr.count("faultshim: inject"), 5, r.stderr)
            with open(target, "rb") as f:
                self.assertEqual(f.read(), b"abcdabcd")


class Run(unittest.TestCase):
    def test_chaos_rounds(self):
        seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1000000))
        if SANITIZE:  # slower binaries, and no preloaded shim: the cheap faults only
            rounds, faults, limit = os.environ.get("CHAOS_ROUNDS", "3"), "kill,stop", "60"
        else:
            rounds, faults, limit = os.environ.get("CHAOS_ROUNDS", "16"), FAULTS, "75"
        cmd = [sys.executable, os.path.join(SRC, "tests", "chaos"), "--rounds", rounds, "--seed", str(seed),
               "--faults", faults, "--time", limit]
        print("running", " ".join(cmd), flush=True)
        t0 = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        print(r.stdout[-6000:], r.stderr[-3000:], f"({time.monotonic() - t0:.0f} s)", flush=True)
        self.assertEqual(r.returncode, 0, f"tests/chaos failed with seed {seed}")
        self.assertIn("PASS:", r.stdout)
        self.assertRegex(r.stdout, r"round 2/")  # it really ran rounds
        # and the disk faults really bit
        if "shim(" in r.stdout:
            self.assertRegex(r.stdout, r"shim\([^)]*, [1-9][0-9]* hits")
        if "diskfull(" in r.stdout:
            self.assertRegex(r.stdout, r"diskfull\([^)]*, [1-9][0-9]*x503")


if __name__ == "__main__":
    unittest.main()
