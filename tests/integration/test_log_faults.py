"""The embedded log under faults, through the real binary: a restored log
with a flipped bit is refused (by tally run and tally replay) and never
cut; tally replay never writes into log.dir and publishes nothing on
damage; tally log verify/salvage and the recovery procedure; a log deleted
while running (503, /healthz) or shorter than the snapshots; a full disk
(a 1 MiB tmpfs) degrades to 503 and recovers. The frames are decoded here
on their own (u32 len | u32 sum | u16 partition | u16 0 | payload)."""
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import unittest

from harness import SANITIZE, SHIM, TALLY_BIN, TIMEOUT_MULT, TallyTestCase, wait_until

POLLS = """
[poll.free]
title = Unlimited
options = p, q
mode = unlimited
"""


def frames(path):
    """(start, end, partition) of every vote frame of an intact log file
    (the control records of the poll history left out)."""
    with open(path, "rb") as f:
        data = f.read()
    return [f for f in all_frames(path) if data[f[0] + 12 + 1] != 2 or data[f[0] + 12] != 2]


def control_frames(path):
    """How many frames hold control records (DEFINE/FINAL, one per
    partition per change)."""
    return len(all_frames(path)) - len(frames(path))


def all_frames(path, commits=None):
    """(start, end, partition) of every record frame of an intact log file;
    the commit frames (kind 1, one ends each write) go to commits when
    given, as (start, end)."""
    out = []
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at + 12 <= len(data):
        n, _, part, kind = struct.unpack_from("<IIHH", data, at)
        assert 0 < n <= 65536 and kind in (0, 1) and at + 12 + n <= len(data), f"not a frame at {at}"
        if kind == 1:
            assert part == 0 and n == 8, f"a bad commit frame at {at}"
            if commits is not None:
                commits.append((at, at + 12 + n))
        else:
            out.append((at, at + 12 + n, part))
        at += 12 + n
    assert at == len(data), "trailing bytes"
    return out


def tree(d):
    """{relative path: sha256} of every file under d (missing: {})."""
    out = {}
    for root, _, files in os.walk(d):
        for name in files:
            p = os.path.join(root, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, d)] = hashlib.sha256(f.read()).hexdigest()
    return out


def ckpt_end(logdir):
    """The durable end CHECKPOINT names ("tally-ckpt FMT INODE END ..."),
    or None while there is none."""
    try:
        with open(os.path.join(logdir, "CHECKPOINT")) as f:
            return int(f.read().split()[3])
    except (OSError, IndexError, ValueError):
        return None


def flip(path, off):
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x10]))


class LogFaults(TallyTestCase):
    def tally(self, *args, timeout=120):
        return subprocess.run([TALLY_BIN, *args], capture_output=True, text=True,
                              timeout=timeout * TIMEOUT_MULT)

    def voted(self, t, n):
        """n votes for free/p, all 202; then a clean stop."""
        t.start()
        conn = t.connect()
        for _ in range(n):
            st, body = t.vote("free", "p", conn=conn)
            self.assertEqual(st, 202, body)
        conn.close()
        t.wait_counts({"free": {"p": n, "q": 0}})
        t.stop()

    def logdir(self, t):
        return os.path.join(t.dir, "log")

    def votes(self, t):
        return os.path.join(t.dir, "log", "votes.log")

    def restored_and_flipped(self, t, n=40):
        """A log of n votes, copied away and back (a restore: new inode, so
        CHECKPOINT does not apply), with one bit of frame 1's payload
        flipped. Returns the frames of the intact copy."""
        self.voted(t, n)
        ld = self.logdir(t)
        shutil.copytree(ld, ld + ".restored")  # new inodes while the old ones exist
        shutil.rmtree(ld)
        os.rename(ld + ".restored", ld)
        fr = frames(self.votes(t))
        self.ctl = control_frames(self.votes(t))
        self.assertEqual(len(fr), n)
        flip(self.votes(t), fr[1][0] + 12 + 3)
        return fr

    # ---- damage: refused, never cut ----

    def test_restored_log_with_a_flipped_bit_is_refused_by_run_and_replay(self):
        t = self.make(polls=POLLS)
        fr = self.restored_and_flipped(t)
        before_log, before_pub = tree(self.logdir(t)), tree(os.path.join(t.dir, "public"))
        r = t.replay()
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("corruption", r.stderr)
        self.assertIn(f"at offset {fr[1][0]} ", r.stderr)
        self.assertIn(f"with {len(fr) - 2} intact frames after it", r.stderr)
        self.assertEqual(tree(self.logdir(t)), before_log, "replay changed log.dir")
        self.assertEqual(tree(os.path.join(t.dir, "public")), before_pub, "replay published")
        r = self.tally("run", "-c", t.config, timeout=60)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("corruption", r.stderr)
        self.assertEqual(tree(self.logdir(t)), before_log, "tally run cut the log")
        self.assertEqual(tree(os.path.join(t.dir, "public")), before_pub)

    def test_a_bit_flip_at_the_end_of_an_acknowledged_write_is_refused_not_cut(self):
        """Votes in a burst, the writer idle, kill -9, then one bit of the
        LAST frame of the file flipped (the commit frame of the last write):
        bad bytes with nothing intact after them look like a torn tail.
        Before, CHECKPOINT lagged the burst (written at most once a second,
        never when idle), so the frame was cut as "never acknowledged" (5 of
        6 votes counted, before commit frames). Now an idle writer brings
        CHECKPOINT up to date and a tail below it is damage: tally run and
        tally replay refuse, nothing is cut."""
        t = self.make(polls=POLLS)
        nosnap = ("-s", "engine.snapshot_interval_ms=600000")  # the engine reads the frame again
        t.start(*nosnap)
        for _ in range(6):
            st, body = t.vote("free", "p")
            self.assertEqual(st, 202, body)
            time.sleep(0.3)
        t.wait_counts({"free": {"p": 6, "q": 0}})
        size = os.path.getsize(self.votes(t))
        wait_until(lambda: ckpt_end(self.logdir(t)) == size, 5, "the idle writer's CHECKPOINT at the end")
        t.kill9()
        commits = []
        all_frames(self.votes(t), commits)
        self.assertEqual(commits[-1][1], size, "the file ends with a commit frame")
        fr = [commits[-1]]
        flip(self.votes(t), fr[-1][1] - 3)
        before_log, before_pub = tree(self.logdir(t)), tree(os.path.join(t.dir, "public"))
        r = t.replay()
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(f"checksum mismatch at offset {fr[-1][0]}, below the end", r.stderr)
        self.assertEqual(tree(os.path.join(t.dir, "public")), before_pub, "replay published")
        r = self.tally("log", "verify", "-c", t.config)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("damage (below the end CHECKPOINT says was durable)", r.stdout)
        self.assertIn("status: damaged", r.stdout)
        r = self.tally("run", "-c", t.config, "-q", *nosnap, timeout=60)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"checksum mismatch at offset {fr[-1][0]}", r.stderr)
        self.assertNotIn("dropping torn tail", r.stderr)
        self.assertEqual(tree(self.logdir(t)), before_log, "tally run cut the log")
        self.assertEqual(t.published_counts("free"), {"p": 6, "q": 0})

    def test_a_bit_flip_in_the_last_vote_before_a_kill_is_refused_without_a_checkpoint(self):
        """The window CHECKPOINT cannot close: votes keep arriving, kill -9,
        and CHECKPOINT is older than the last write (here: gone). One bit of
        the last vote's frame flipped. Before commit frames nothing intact
        followed it, so it was cut as a torn tail: a vote answered 202 gone
        without a word. Now the commit frame of its write follows it intact:
        damage, refused by tally run and replay, nothing cut."""
        t = self.make(polls=POLLS)
        t.start("-s", "engine.snapshot_interval_ms=600000")
        for _ in range(6):
            st, body = t.vote("free", "p")
            self.assertEqual(st, 202, body)
        t.kill9()
        ckpt = os.path.join(self.logdir(t), "CHECKPOINT")
        if os.path.exists(ckpt):  # often not written yet
            os.remove(ckpt)
        fr = frames(self.votes(t))
        flip(self.votes(t), fr[-1][1] - 3)
        before = tree(self.logdir(t))
        r = t.replay()
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(f"checksum mismatch at offset {fr[-1][0]}", r.stderr)
        self.assertIn("with only commit frames after it", r.stderr)
        r = self.tally("run", "-c", t.config, "-q", timeout=60)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"checksum mismatch at offset {fr[-1][0]}", r.stderr)
        self.assertNotIn("dropping torn tail", r.stderr)
        self.assertEqual(tree(self.logdir(t)), before, "tally run cut the log")
        r = self.tally("log", "verify", "-c", t.config)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("only commit frames after it (its write was acknowledged)", r.stdout)

    def test_a_torn_tail_below_the_checkpoint_is_never_cut(self):
        """CHECKPOINT covers the whole file; the last frame (a commit frame)
        is damaged and bytes follow it (as a torn write would leave). Before, the scan from
        CHECKPOINT called it "not a frame boundary", rescanned, and cut the
        file below the end CHECKPOINT says was durable (5 of 6 counted)."""
        t = self.make(polls=POLLS)
        self.voted(t, 6)  # a clean stop writes CHECKPOINT at the end
        commits = []
        all_frames(self.votes(t), commits)  # the last frame: the last write's commit frame
        flip(self.votes(t), commits[-1][1] - 3)
        with open(self.votes(t), "ab") as f:
            f.write(b"\x17torn")
        before = tree(self.logdir(t))
        r = self.tally("run", "-c", t.config, "-q", timeout=60)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("below the end", r.stderr)
        self.assertEqual(tree(self.logdir(t)), before, "tally run cut the log")

    def test_an_older_copy_restored_as_a_new_file_is_refused(self):
        """A backup of votes.log holding 20 of 101 acknowledged votes put
        back as a new file (cp to a temporary name, then mv: another
        inode). Before, CHECKPOINT was skipped (not this inode) and the
        restart counted 20 without a word; now its end past the file's
        refuses the start, as for a restore in place."""
        t = self.make(polls=POLLS)
        nosnap = ("-s", "engine.snapshot_interval_ms=600000")  # no snapshot to catch it
        t.start(*nosnap)
        conn = t.connect()
        for _ in range(20):
            self.assertEqual(t.vote("free", "p", conn=conn)[0], 202)
        t.wait_counts({"free": {"p": 20, "q": 0}})
        backup = os.path.join(t.dir, "backup.log")
        shutil.copyfile(self.votes(t), backup)
        for _ in range(80):
            self.assertEqual(t.vote("free", "p", conn=conn)[0], 202)
        time.sleep(1.1)  # a round a second after the last CHECKPOINT writes one
        self.assertEqual(t.vote("free", "p", conn=conn)[0], 202)
        conn.close()
        t.wait_counts({"free": {"p": 101, "q": 0}})
        small = os.path.getsize(backup)
        wait_until(lambda: (ckpt_end(self.logdir(t)) or 0) > small, 5, "CHECKPOINT past the copy")
        t.kill9()
        shutil.copyfile(backup, self.votes(t) + ".restore")
        os.rename(self.votes(t) + ".restore", self.votes(t))
        r = self.tally("run", "-c", t.config, "-q", *nosnap, timeout=20)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("lost acknowledged votes", r.stderr)
        self.assertEqual(t.published_counts("free"), {"p": 101, "q": 0})

    def test_votes_log_cut_under_the_writer_stops_the_log(self):
        """votes.log truncated to half while tally runs. Before, the writer
        checked only the inode: votes went on getting 202 (written after a
        hole of zeros) and /healthz said ok. Now the log fails: 503, and
        /healthz names the cut."""
        t = self.make(polls=POLLS)
        t.start()
        conn = t.connect()
        for _ in range(50):
            self.assertEqual(t.vote("free", "p", conn=conn)[0], 202)
        size = os.path.getsize(self.votes(t))
        os.truncate(self.votes(t), size // 2)
        st, body = t.vote("free", "p", conn=conn)
        self.assertEqual((st, body["error"]), (503, "log_unavailable"), body)
        st, body = t.request("GET", "/healthz")
        self.assertEqual(st, 503, body)
        self.assertIn("shrank", json.loads(body)["message"])
        conn.close()
        t.kill9()

    @unittest.skipIf(SANITIZE or not os.path.exists(SHIM), "needs the fault shim (not under sanitizers)")
    def test_a_restart_publishes_nothing_before_it_has_caught_up(self):
        """kill -9 with no snapshot, then a restart on a slow disk (every
        read of votes.log 300 ms late). Before, the start published the
        snapshot's totals (0) as a newer version before the engine had read
        the log, then 50 again: the results went backwards. Now nothing is
        written until the engine has caught up."""
        t = self.make(polls=POLLS)
        t.start("-s", "engine.snapshot_interval_ms=600000")
        conn = t.connect()
        for _ in range(50):
            self.assertEqual(t.vote("free", "p", conn=conn)[0], 202)
        conn.close()
        t.wait_counts({"free": {"p": 50, "q": 0}})
        t.kill9()
        ctl = os.path.join(t.dir, "shim.ctl")
        with open(ctl, "w") as f:
            f.write(f"gen=1 ops=pread prefix={self.votes(t)} delay_ms=300 count=-1\n")
        t.start("-s", "engine.snapshot_interval_ms=600000", wait=False,
                env={"LD_PRELOAD": SHIM, "FAULTSHIM_CTL": ctl})
        seen, deadline = set(), time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                seen.add(t.published_counts("free")["p"])
            except (OSError, ValueError):
                pass  # between the rename and the read
            time.sleep(0.01)
        with open(ctl, "w") as f:
            f.write("off\n")
        self.assertEqual(seen, {50}, "published totals other than the log's")
        t.wait_counts({"free": {"p": 50, "q": 0}})
        t.stop()

    def test_replay_never_writes_into_log_dir(self):
        t = self.make(polls=POLLS)
        self.voted(t, 10)
        with open(self.votes(t), "ab") as f:
            f.write(b"\x17torn tail")  # never acknowledged
        ld = self.logdir(t)
        before = tree(ld)
        os.chmod(ld, 0o555)  # even a write attempt would show (as root too: see tree())
        try:
            r = t.replay()
        finally:
            os.chmod(ld, 0o755)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(t.published_counts("free"), {"p": 10, "q": 0})
        self.assertEqual(tree(ld), before, "replay changed log.dir")
        self.assertEqual(sorted(os.listdir(ld)), sorted(before), "replay left files in log.dir")

    # ---- verify, salvage, the recovery procedure ----

    def test_verify_salvage_and_recover(self):
        t = self.make(polls=POLLS)
        n = 40
        fr = self.restored_and_flipped(t, n)
        r = self.tally("log", "verify", "-c", t.config, "--json")
        self.assertEqual(r.returncode, 1, r.stderr)
        rep = json.loads(r.stdout)
        self.assertEqual(rep["status"], "damaged")
        ctl = self.ctl
        self.assertEqual(ctl, 4, "the config poll's DEFINE in each of 4 partitions")
        self.assertEqual(rep["frames"], n - 1 + ctl)
        self.assertEqual(sum(rep["frames_per_partition"]), n - 1 + ctl)
        self.assertEqual(len(rep["damage"]), 1)
        d = rep["damage"][0]
        self.assertEqual((d["start"], d["end"], d["frames_after"]), (fr[1][0], fr[1][1], n - 2))
        self.assertIsNone(rep["tail"])
        r = self.tally("log", "verify", "-c", t.config)
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"damage: bytes [{fr[1][0]}, {fr[1][1]})", r.stdout)

        out = os.path.join(t.dir, "salvaged")
        log_before = tree(self.logdir(t))
        r = self.tally("log", "salvage", "-c", t.config, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"lost: bytes [{fr[1][0]}, {fr[1][1]})", r.stdout)
        self.assertIn(f"{fr[1][1] - fr[1][0]} bytes lost in 1 ranges", r.stdout)
        self.assertEqual(tree(self.logdir(t)), log_before, "salvage changed the original")
        with open(self.votes(t), "rb") as f:
            orig = f.read()
        with open(os.path.join(out, "votes.log"), "rb") as f:
            self.assertEqual(f.read(), orig[:fr[1][0]] + orig[fr[1][1]:])
        with open(os.path.join(out, "META")) as f:
            self.assertRegex(f.read(), r"^tally-log 3 partitions=4 id=file:[0-9a-f]{32}\n$")
        # Refusals: an existing non-empty DIR, log.dir itself, usage.
        r = self.tally("log", "salvage", "-c", t.config, "--out", out)
        self.assertEqual(r.returncode, 2)
        self.assertIn("not empty", r.stderr)
        r = self.tally("log", "salvage", "-c", t.config, "--out", self.logdir(t))
        self.assertEqual(r.returncode, 2)
        for args in (("log", "salvage", "-c", t.config), ("log", "verify"),
                     ("log", "verify", "-c", t.config, "--out", "x"), ("log", "frob"), ("log",)):
            self.assertEqual(self.tally(*args).returncode, 2, args)
        for sub in ("verify", "salvage"):
            r = self.tally("log", sub, "--help")
            self.assertEqual(r.returncode, 0)
            self.assertIn(f"usage: tally log {sub}", r.stdout)

        # The procedure: salvaged log in, snapshots away, replay, run.
        shutil.move(self.logdir(t), os.path.join(t.dir, "log.damaged"))
        shutil.move(out, self.logdir(t))
        shutil.move(os.path.join(t.dir, "snap"), os.path.join(t.dir, "snap.old"))
        r = self.tally("log", "verify", "-c", t.config)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("status: clean", r.stdout)
        r = t.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(t.published_counts("free"), {"p": n - 1, "q": 0})
        t.start()
        st, _ = t.vote("free", "q")
        self.assertEqual(st, 202)
        t.wait_counts({"free": {"p": n - 1, "q": 1}})
        # verify works while tally run holds the log; salvage refuses.
        r = self.tally("log", "verify", "-c", t.config)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("in use by a running tally", r.stdout)
        r = self.tally("log", "salvage", "-c", t.config, "--out", os.path.join(t.dir, "s2"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("in use", r.stderr)
        t.stop()

    def test_verify_reports_a_torn_tail(self):
        t = self.make(polls=POLLS)
        self.voted(t, 5)
        ctl = control_frames(self.votes(t))
        end = os.path.getsize(self.votes(t))
        with open(self.votes(t), "ab") as f:
            f.write(b"\x05\x00\x00")
        r = self.tally("log", "verify", "-c", t.config, "--json")
        self.assertEqual(r.returncode, 1, r.stderr)
        rep = json.loads(r.stdout)
        self.assertEqual(rep["status"], "torn")
        self.assertEqual(rep["frames"], 5 + ctl)
        self.assertEqual((rep["tail"]["start"], rep["tail"]["bytes"], rep["tail"]["torn"]),
                         (end, 3, True))
        self.assertEqual(rep["damage"], [])

    # ---- a log that vanishes, or is shorter than the snapshots ----

    def test_deleted_log_gets_503_and_healthz_says_so(self):
        t = self.make(polls=POLLS).start()
        st, _ = t.vote("free", "p")
        self.assertEqual(st, 202)
        t.wait_counts({"free": {"p": 1, "q": 0}})
        os.unlink(self.votes(t))
        t0 = time.monotonic()

        def healthz_503():
            st, body = t.request("GET", "/healthz")
            return (st, body) if st == 503 else None
        st, body = wait_until(healthz_503, 5, "/healthz to report the deleted log")
        self.assertLess(time.monotonic() - t0, 1.5 * TIMEOUT_MULT, "noticed too late")
        err = json.loads(body)
        self.assertEqual(err["error"], "log_unavailable")
        self.assertIn("votes.log", err["message"])
        for _ in range(3):
            st, _ = t.vote("free", "p")
            self.assertEqual(st, 503)
        st, _ = t.request("GET", "/v1/stats")
        self.assertEqual(st, 200)
        self.assertIn("deleted", t.stderr())
        t.stop()
        pub = tree(os.path.join(t.dir, "public"))
        # META without votes.log: both commands refuse, nothing is made up.
        for cmd in ("run", "replay"):
            r = self.tally(cmd, "-c", t.config, timeout=60)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("votes.log is missing", r.stderr)
            self.assertFalse(os.path.exists(self.votes(t)))
            self.assertEqual(tree(os.path.join(t.dir, "public")), pub, cmd + " published")

    def test_log_shorter_than_snapshots_is_refused(self):
        t = self.make(polls=POLLS)
        self.voted(t, 20)
        fr = frames(self.votes(t))
        os.truncate(self.votes(t), fr[9][1])  # a frame boundary: no torn tail
        os.unlink(os.path.join(self.logdir(t), "CHECKPOINT"))  # the snapshots must catch it
        pub, log = tree(os.path.join(t.dir, "public")), tree(self.logdir(t))
        for cmd in ("run", "replay"):
            r = self.tally(cmd, "-c", t.config, timeout=60)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("past the end of the log", r.stderr)
            self.assertEqual(tree(os.path.join(t.dir, "public")), pub, cmd + " published")
            self.assertEqual(tree(self.logdir(t)), log, cmd + " changed the log")

    def test_partition_count_mismatch_is_a_config_error(self):
        t = self.make(polls=POLLS)
        self.voted(t, 2)
        for cmd in ("run", "replay"):
            r = self.tally(cmd, "-c", t.config, "-s", "log.partitions=3", timeout=60)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("log.partitions", r.stderr)

    # ---- a full disk ----

    def test_full_disk_degrades_to_503_and_recovers(self):
        mnt = tempfile.mkdtemp(prefix="tally-tmpfs-")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt],
                           capture_output=True, text=True)
        if r.returncode != 0:
            os.rmdir(mnt)
            self.skipTest("cannot mount a tmpfs here (needs root): " + r.stderr.strip())
        t = self.make(polls=POLLS)
        try:
            self.full_disk(t, mnt)
        finally:
            if t.proc:
                t.kill9()  # before unmounting: it holds files there
            subprocess.run(["umount", mnt])
            os.rmdir(mnt)

    def full_disk(self, t, mnt):
        with open(t.config) as f:
            text = f.read()
        with open(t.config, "w") as f:
            f.write(text.replace(f"dir = {t.dir}/log\n", f"dir = {mnt}/log\n"))
        # Leave ~150 KiB free: the log fills it within a few thousand votes.
        filler = os.path.join(mnt, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * (1024 * 1024 - 150 * 1024))
        t.start()
        conn = t.connect()
        ok = unavailable = 0
        deadline = time.monotonic() + 60 * TIMEOUT_MULT
        while unavailable < 20:
            self.assertLess(time.monotonic(), deadline, "the disk never filled")
            st, _ = t.vote("free", "p", conn=conn)
            self.assertIn(st, (202, 503))
            ok += st == 202
            unavailable += st == 503
        self.assertTrue(t.alive())
        st, _ = t.request("GET", "/v1/stats")
        self.assertEqual(st, 200, "stats not served on a full disk")
        self.assertIn("write failed", t.stderr())
        # Room again: votes are taken again within a few retries.
        os.unlink(filler)

        def accepted():
            st, _ = t.vote("free", "p", conn=conn)
            return st == 202
        wait_until(accepted, 10, "votes to be accepted once the disk has room")
        ok += 1
        for _ in range(20):
            st, _ = t.vote("free", "p", conn=conn)
            self.assertEqual(st, 202)
            ok += 1
        conn.close()
        t.wait_counts({"free": {"p": ok, "q": 0}})
        t.stop()
        # Exactly the 202s are in the log: every round that failed was cut.
        self.assertEqual(len(frames(os.path.join(mnt, "log", "votes.log"))), ok)
        r = t.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(t.published_counts("free"), {"p": ok, "q": 0})




sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from chaos_lib import logreader  # noqa: E402  (an independent reader of votes.log)


def decoded_counts(path, npartitions=4):
    """{option: count} of poll free in the log at path, decoded on its own."""
    data, scan = logreader.read_log(path, npartitions)
    assert scan.bad is None, f"{path}: not intact at {scan.bad}"
    out = {"p": 0, "q": 0}
    for r in scan.records:
        if r.poll == "free":
            out[r.option] += 1
    return out


class LogIdentity(TallyTestCase):
    """Snapshots record the id of the log they were taken from (META's
    log id); a snapshot of another log is never resumed from."""
    tally, voted, logdir, votes = LogFaults.tally, LogFaults.voted, LogFaults.logdir, LogFaults.votes

    def votes_for(self, t, opt, n, stop=True):
        conn = t.connect()
        for _ in range(n):
            st, body = t.vote("free", opt, conn=conn)
            self.assertEqual(st, 202, body)
        conn.close()

    def test_salvaged_log_with_the_old_snapshots_is_recounted(self):
        t = self.make(polls=POLLS)
        self.voted(t, 10)  # snapshots at the end of 10 frames
        snap = os.path.join(t.dir, "snap")
        shutil.copytree(snap, snap + ".keep")
        t.start()
        self.votes_for(t, "q", 30)
        t.wait_counts({"free": {"p": 10, "q": 30}})
        t.stop()
        # The snapshots of run 1 (positions inside the first 10 frames'
        # log), frame 1 damaged: salvage drops it, later frames move.
        shutil.rmtree(snap)
        os.rename(snap + ".keep", snap)
        fr = frames(self.votes(t))
        flip(self.votes(t), fr[1][0] + 12 + 3)
        out = os.path.join(t.dir, "salvaged")
        r = self.tally("log", "salvage", "-c", t.config, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("log id: file:", r.stdout)
        shutil.move(self.logdir(t), os.path.join(t.dir, "log.damaged"))
        shutil.move(out, self.logdir(t))
        want = decoded_counts(self.votes(t))
        self.assertEqual(want, {"p": 9, "q": 30})
        t.start()
        t.wait_counts({"free": want})
        t.stop()
        self.assertIn("taken from another log", t.stderr())
        # And tally replay into a fresh directory agrees.
        r = t.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(t.published_counts("free"), want)

    def test_swapped_log_dir_longer_than_the_snapshots_is_recounted(self):
        a = self.make(polls=POLLS)
        self.voted(a, 10)  # A's snapshots
        b = self.make(polls=POLLS)
        b.start()
        self.votes_for(b, "q", 40)
        b.wait_counts({"free": {"p": 0, "q": 40}})
        b.stop()
        self.assertGreater(os.path.getsize(self.votes(b)), os.path.getsize(self.votes(a)))
        shutil.move(self.logdir(a), os.path.join(a.dir, "log.a"))
        shutil.copytree(self.logdir(b), self.logdir(a))
        os.unlink(os.path.join(self.logdir(a), "CHECKPOINT"))
        want = decoded_counts(self.votes(a))
        self.assertEqual(want, {"p": 0, "q": 40})
        a.start()
        a.wait_counts({"free": want})
        a.stop()
        self.assertIn("taken from another log", a.stderr())
        r = a.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(a.published_counts("free"), want)

    # ---- the formats before log ids ----

    FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "oldformat")

    def resumed(self, t):
        m = re.findall(r"(\d+) partitions resumed from snapshots", t.stderr()[t.started_at:])
        self.assertTrue(m, t.stderr())
        return int(m[-1])

    def test_old_meta_and_old_snapshots_still_load(self):
        """tests/fixtures/oldformat: a log.dir and snapshots written by tally
        a7eea67 (before log ids: META "tally-log 2 partitions=4", TLYSNAP2)
        after 7 votes for p and 3 for q."""
        t = self.make(polls=POLLS)
        for d in ("log", "snap"):
            shutil.copytree(os.path.join(self.FIXTURE, d), os.path.join(t.dir, d))
        meta = os.path.join(self.logdir(t), "META")
        with open(meta) as f:
            self.assertEqual(f.read(), "tally-log 2 partitions=4\n")
        self.assertEqual(decoded_counts(self.votes(t)), {"p": 7, "q": 3})
        for name in os.listdir(os.path.join(t.dir, "snap")):
            with open(os.path.join(t.dir, "snap", name), "rb") as f:
                self.assertEqual(f.read(8), b"TLYSNAP2")
        t.start()
        self.assertEqual(self.resumed(t), 4)  # every old snapshot used
        t.wait_counts({"free": {"p": 7, "q": 3}})
        st, _ = t.vote("free", "q")
        self.assertEqual(st, 202)
        t.wait_counts({"free": {"p": 7, "q": 4}})
        t.stop()
        with open(meta) as f:  # format 3 now (commit frames follow), still no id made up
            self.assertEqual(f.read(), "tally-log 3 partitions=4\n", "META of an old log given an id")
        data, scan = logreader.read_log(self.votes(t), 4)
        self.assertIsNone(scan.bad)
        self.assertGreaterEqual(scan.commits, 1, "the new write has no commit frame")
        self.assertEqual(scan.commit_mismatch, [])
        self.assertEqual(decoded_counts(self.votes(t)), {"p": 7, "q": 4})
        # The new snapshots name the log's legacy id and are used in turn.
        newer = [n for n in os.listdir(os.path.join(t.dir, "snap")) if int(n[5:21], 16) > 0x136]
        self.assertTrue(newer)
        for name in newer:
            with open(os.path.join(t.dir, "snap", name), "rb") as f:
                head = f.read(8 + 4 + 4 + 8 + 8 + 1 + 7)
            self.assertEqual(head[:8], b"TLYSNAP4")
            self.assertEqual(head[33:], b"legacy:")
        t.start()
        self.assertEqual(self.resumed(t), 4)
        t.wait_counts({"free": {"p": 7, "q": 4}})
        t.stop()

    def test_old_snapshots_are_refused_for_a_log_with_an_id(self):
        t = self.make(polls=POLLS)
        for d in ("log", "snap"):
            shutil.copytree(os.path.join(self.FIXTURE, d), os.path.join(t.dir, d))
        # The same bytes under a META with an id: not the log those
        # snapshots could be trusted for. Recounted, exact.
        with open(os.path.join(self.logdir(t), "META"), "w") as f:
            f.write("tally-log 2 partitions=4 id=file:00112233445566778899aabbccddeeff\n")
        t.start()
        self.assertEqual(self.resumed(t), 0)
        self.assertIn("written before log ids", t.stderr())
        t.wait_counts({"free": {"p": 7, "q": 3}})
        t.stop()


if __name__ == "__main__":
    unittest.main()
