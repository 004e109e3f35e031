"""tally run at start and restart: a publisher.dir it cannot write does not
stop it (results are derived: it counts on and publishes once it can), and
what a crash left behind (snapshot and results temp files) is cleaned up."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

from harness import Tally, wait_until

POLLS = """
[poll.chg]
options = x, y, z
mode = changeable
"""


class RestartTest(unittest.TestCase):
    def setUp(self):
        self.t = Tally(polls=POLLS)

    def tearDown(self):
        self.t.cleanup()

    def applied(self):
        st, data = self.t.request("GET", "/v1/stats")
        self.assertEqual(st, 200)
        return json.loads(data)["engine"]["applied"]

    def vote_some(self, n, prefix="v"):
        for i in range(n):
            st, _ = self.t.vote("chg", "xyz"[i % 3], f"{prefix}{i}")
            self.assertEqual(st, 202)

    def publisher_errors(self):
        return [l for l in self.t.stderr().splitlines() if "error publisher:" in l]

    def test_unwritable_publisher_dir_does_not_stop_counting(self):
        """publisher.dir/polls is a regular file: no poll file can be written
        (ENOTDIR, for root too). tally run must start, take and count votes,
        log the failure without flooding, and publish once polls/ can be made."""
        pub = os.path.join(self.t.dir, "public")
        os.makedirs(pub)
        blocker = os.path.join(pub, "polls")
        with open(blocker, "w") as f:
            f.write("not a directory\n")
        self.t.start()
        self.vote_some(30)
        wait_until(lambda: self.applied() == 30, 20, "the engine to count every vote")
        self.assertEqual(self.t.published("chg"), None)
        # Failing for a while: some retries, but the log says it once, not per try.
        wait_until(lambda: len(self.publisher_errors()) >= 1, 20, "the publish failure logged")
        first = self.publisher_errors()
        self.assertIn("Not a directory", first[0])
        self.assertTrue(self.t.healthy())
        # The disk comes back: the results appear, exact.
        os.unlink(blocker)
        self.t.wait_counts({"chg": {"x": 10, "y": 10, "z": 10}}, timeout=30)
        self.assertTrue(os.path.exists(os.path.join(pub, "index.html")))
        self.assertLessEqual(len(self.publisher_errors()), 2, "\n".join(self.publisher_errors()))
        # Logged once the whole rendering is written, a moment after the JSON.
        wait_until(lambda: "writing to" in self.t.stderr(), 10, "the publisher to say it writes again")
        # and keeps publishing as votes come.
        self.vote_some(3, prefix="w")
        self.t.wait_counts({"chg": {"x": 11, "y": 11, "z": 11}}, timeout=30)
        self.t.stop()

    def test_full_publisher_dir_does_not_stop_counting(self):
        """publisher.dir on a small tmpfs filled to the last byte (ENOSPC)."""
        mnt = tempfile.mkdtemp(prefix="tally-full-")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt],
                           capture_output=True)
        if r.returncode != 0:
            os.rmdir(mnt)
            self.skipTest("cannot mount a tmpfs here: " + r.stderr.decode(errors="replace"))
        try:
            filler = os.path.join(mnt, "filler")
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(fd)
            pub = os.path.join(mnt, "public")
            self.t.start("-s", f"publisher.dir={pub}")
            self.vote_some(12)
            wait_until(lambda: self.applied() == 12, 20, "the engine to count every vote")
            wait_until(lambda: len(self.publisher_errors()) >= 1, 20, "the publish failure logged")
            self.assertTrue(self.t.healthy())
            os.unlink(filler)
            want = {"x": 4, "y": 4, "z": 4}
            wait_until(lambda: self.read_counts(pub) == want, 30, "results on the freed disk")
            self.t.stop()
        finally:
            if self.t.proc:
                self.t.kill9()
            subprocess.run(["umount", mnt])
            os.rmdir(mnt)

    @staticmethod
    def read_counts(pub):
        try:
            with open(os.path.join(pub, "polls", "chg.json")) as f:
                return {o["id"]: o["votes"] for o in json.load(f)["options"]}
        except (OSError, ValueError):
            return None

    def test_crash_leftovers_are_removed_at_start(self):
        """Temp files of a save or publish that a crash interrupted are removed
        when tally starts; snapshots and everything else stay."""
        self.t.start()
        self.vote_some(9)
        self.t.wait_counts({"chg": {"x": 3, "y": 3, "z": 3}})
        self.t.stop()
        snap = os.path.join(self.t.dir, "snap")
        polls = os.path.join(self.t.dir, "public", "polls")
        snaps = {n: open(os.path.join(snap, n), "rb").read()
                 for n in os.listdir(snap) if n.endswith(".snap")}
        self.assertTrue(snaps)
        dead_pid = 4194305  # above any pid_max: no such process
        stale = [os.path.join(snap, "p000-00000000000000ff.snap.tmp"),
                 os.path.join(snap, "p003-0000000000001000.snap.tmp"),
                 os.path.join(polls, f"chg.json.tmp.{dead_pid}"),
                 os.path.join(self.t.dir, "public", f"index.html.tmp.{dead_pid}")]
        kept = [os.path.join(snap, "operator-notes.tmp"),
                os.path.join(polls, f"chg.json.tmp.{os.getpid()}")]  # a live writer's
        for p in stale + kept:
            with open(p, "w") as f:
                f.write("left behind")
        self.t.start()
        self.t.wait_counts({"chg": {"x": 3, "y": 3, "z": 3}})
        for p in stale:
            self.assertFalse(os.path.exists(p), p + " is still there")
        for p in kept:
            self.assertTrue(os.path.exists(p), p + " was removed")
        for n, data in snaps.items():
            with open(os.path.join(snap, n), "rb") as f:
                self.assertEqual(f.read(), data, n + " changed")
        self.t.stop()

    def test_snapshot_dir_that_is_a_file_exits_2(self):
        path = os.path.join(self.t.dir, "snapfile")
        with open(path, "w") as f:
            f.write("x")
        self.t.start("-s", f"engine.snapshot_dir={path}", wait=False)
        rc = self.t.proc.wait(30)
        self.t.proc = None
        self.t.errf.close()
        self.assertEqual(rc, 2, self.t.stderr())
        self.assertIn("engine.snapshot_dir", self.t.stderr())


if __name__ == "__main__":
    unittest.main()
