"""Crash safety of the embedded log: kill -9 under load, torn tails, damaged
snapshots. After every crash, each vote answered 202 is counted exactly once
and the live totals equal a from-scratch replay of the log."""
import glob
import json
import os
import subprocess
import unittest

from harness import SHAPE, TALLY_BIN, Load, TallyTestCase, wait_until

def stats(t):
    st, data = t.request("GET", "/v1/stats")
    assert st == 200
    return json.loads(data)


class Crash(TallyTestCase):
    def check_exact(self, t, load):
        """Restart, let the engine catch up, stop; then the published totals
        must hold every acknowledged vote, nothing beyond what was in flight,
        and equal a replay from scratch."""
        t.start()
        wait_until(lambda: stats(t)["engine"]["lag"] == 0, 60, "engine to catch up")
        t.stop()
        live = {p: t.published_counts(p) for p in SHAPE}
        self.assert_within(live, load)
        r = t.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual({p: t.published_counts(p) for p in SHAPE}, live, "replay differs from live")
        return live

    def test_kill9_under_load(self):
        t = self.make().start()
        load = Load(t)
        # Kill in the middle of the load, after snapshots have been taken.
        wait_until(lambda: load.total_acked >= 1500, 60, "load to get going")
        t.kill9()
        load.finish()
        self.assertGreater(load.total_acked, 0)
        self.check_exact(t, load)
        # A second round on the recovered state.
        t.start()
        load2 = Load(t)
        wait_until(lambda: load2.total_acked >= 500, 60, "load to get going")
        t.kill9()
        load2.finish()
        load2.merge(load)
        self.check_exact(t, load2)

    def test_torn_tail_dropped(self):
        t = self.make().start()
        for i in range(40):
            self.assertEqual(t.vote("one", "a", f"v{i}")[0], 202)
        t.kill9()
        # A crash mid-write: a whole frame with a bad checksum, then half a frame.
        with open(os.path.join(t.dir, "log", "votes.log"), "ab") as f:
            f.write(b"\x04\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00abcd")
            f.write(b"\x20\x00\x00\x00\xde\xad")
        t.start()
        t.wait_counts({"one": {"a": 40, "b": 0, "c": 0}})
        self.assertIn("dropping torn tail", t.stderr())
        self.assertEqual(t.vote("one", "b", "after")[0], 202)
        t.wait_counts({"one": {"a": 40, "b": 1, "c": 0}})
        t.stop()
        r = t.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(t.published_counts("one"), {"a": 40, "b": 1, "c": 0})

    def test_recovery_from_checkpoint(self):
        """Recovery scans from the log's CHECKPOINT; a torn tail after it is
        still dropped, and a damaged or lying checkpoint only costs a scan."""
        t = self.make().start()
        ckpt = os.path.join(t.dir, "log", "CHECKPOINT")
        n = 0

        def vote_until_checkpoint():
            nonlocal n
            self.assertEqual(t.vote("one", "a", f"v{n}")[0], 202)
            n += 1
            return os.path.exists(ckpt)
        wait_until(vote_until_checkpoint, 30, "a checkpoint")
        for _ in range(20):
            self.assertEqual(t.vote("one", "b", f"v{n}")[0], 202)
            n += 1
        t.kill9()
        with open(os.path.join(t.dir, "log", "votes.log"), "ab") as f:
            f.write(b"\x30\x00\x00\x00\x01\x02")
        t.start()
        t.wait_counts({"one": {"a": n - 20, "b": 20, "c": 0}})
        t.stop()
        for c, text in enumerate((b"garbage\n", b"tally-ckpt 2 1 999999 0000000000000000\n")):
            with open(ckpt, "wb") as f:
                f.write(text)
            t.start()
            t.wait_counts({"one": {"a": n - 20, "b": 20, "c": c}})
            self.assertEqual(t.vote("one", "c", f"after-{c}")[0], 202)
            t.stop()
        r = t.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(t.published_counts("one"), {"a": n - 20, "b": 20, "c": 2})

    def test_damaged_snapshots_fall_back(self):
        t = self.make().start()
        for i in range(30):
            self.assertEqual(t.vote("one", "c", f"v{i}")[0], 202)
        t.wait_counts({"one": {"a": 0, "b": 0, "c": 30}})
        t.stop()
        snaps = glob.glob(os.path.join(t.dir, "snap", "*.snap"))
        self.assertTrue(snaps)
        for s in snaps:  # flip one byte in each
            with open(s, "r+b") as f:
                f.seek(os.path.getsize(s) // 2)
                b = f.read(1)
                f.seek(-1, 1)
                f.write(bytes([b[0] ^ 0xFF]))
        t.start()
        t.wait_counts({"one": {"a": 0, "b": 0, "c": 30}})
        self.assertIn("checksum mismatch", t.stderr())
        # The voters are still known: repeats do not count.
        self.assertEqual(t.vote("one", "a", "v1")[0], 202)
        self.assertEqual(t.vote("one", "a", "new")[0], 202)
        t.wait_counts({"one": {"a": 1, "b": 0, "c": 30}})
        t.stop()

    def test_config_option_added_extends_the_history_without_recount(self):
        t = self.make().start()
        for i in range(10):
            self.assertEqual(t.vote("one", "b", f"v{i}")[0], 202)
        t.wait_counts({"one": {"a": 0, "b": 10, "c": 0}})
        t.stop()
        # Another option appended: a compatible change of the poll's
        # history (a DEFINE with it), so the snapshots stay valid.
        t.start("-s", "poll.one.options=a,b,c,d")
        wait_until(lambda: t.published_counts("one") == {"a": 0, "b": 10, "c": 0, "d": 0}, 30, "d")
        self.assertNotIn("config changed", t.stderr())
        self.assertIn("1 option appended", t.stderr())
        self.assertEqual(t.vote("one", "d", "w")[0], 202)
        wait_until(lambda: t.published_counts("one") == {"a": 0, "b": 10, "c": 0, "d": 1}, 30, "d")
        t.stop()
        # Options reordered: they no longer match the history: refused.
        r = subprocess.run([TALLY_BIN, "run", "-c", t.config, "-s", "poll.one.options=b,a,c,d"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("config poll one disagrees with the log's history: options", r.stderr)


if __name__ == "__main__":
    unittest.main()
