"""Polls as live objects, engine side, over the real binary: the poll
history in the log (control records), a poll defined at run time, its close
cut by the votes' stamps, FINAL written by the scheduler, frozen results,
restart from TLYSNAP4 snapshots without a recount, replay with no config
polls, a broadcast a crash cut short, a config that disagrees with the
history, and TLYSNAP3 snapshots of the tally before the lifecycle.

Until the admin API lands, run-time changes are written into the stopped
log by this test's own encoder (chaos_lib/logreader.encode_control)."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import unittest

from harness import TALLY_BIN, TIMEOUT_MULT, TallyTestCase, wait_until

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from chaos_lib import logreader  # noqa: E402

POLLS = """
[poll.free]
options = p, q
mode = unlimited
"""
NPART = 4
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "snap3")


def slurp(path, mode="rb"):
    with open(path, mode) as f:
        return f.read()


def controls(path):
    """[(partition, kind, seq, at_ms, poll, body)] of the control records."""
    data = slurp(path)
    out = []
    for part, _, rec in logreader.scan_bytes(data, NPART).controls:
        _, kind, _, seq, at, poll, body = rec
        out.append((part, kind, seq, at, poll, body))
    return out


@unittest.skipUnless(logreader.HAVE_XXHASH, "python3-xxhash is needed to write frames")
class LifecycleEngine(TallyTestCase):
    def votes(self, t):
        return os.path.join(t.dir, "log", "votes.log")

    def resumed(self, t):
        m = re.findall(r"(\d+) partitions resumed from snapshots", t.stderr()[t.started_at:])
        self.assertTrue(m, t.stderr())
        return int(m[-1])

    def wait_json(self, t, poll, pred, what, timeout=30):
        wait_until(lambda: (t.published(poll) is not None and pred(t.published(poll))),
                   timeout * TIMEOUT_MULT, what)
        return t.published(poll)

    def define(self, t, seq, body, partitions=range(NPART)):
        logreader.append_frames(self.votes(t), logreader.encode_control(
            logreader.CONTROL_DEFINE, seq, body["id"], json.dumps(body)), partitions)

    def test_a_poll_defined_in_the_history_lives_closes_is_final_and_replays(self):
        t = self.make(polls=POLLS, extra="[admin]\nfinal_grace_ms = 2000\n")
        t.start()
        for _ in range(3):
            self.assertEqual(t.vote("free", "p")[0], 202)
        t.wait_counts({"free": {"p": 3, "q": 0}})
        t.stop()
        # Start-up put the config poll in the history: a DEFINE in every partition.
        c = controls(self.votes(t))
        self.assertEqual(sorted(x[0] for x in c), list(range(NPART)))
        self.assertTrue(all(x[1] == 1 and x[2] == 1 and x[4] == "free" for x in c))
        self.assertEqual(json.loads(c[0][5])["source"], "config")
        # A run-time poll, as the admin API will write it: closes a few
        # seconds after the restart.
        closes = int(time.time() * 1000) + int(4000 * TIMEOUT_MULT)
        self.define(t, 2, {"id": "duel", "title": "Duel", "mode": "changeable",
                           "options": [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}],
                           "closes_at": closes, "created_ms": 5, "source": "admin"})
        t.start()
        self.assertEqual(self.resumed(t), NPART, "a new poll keeps the snapshots valid")
        j = self.wait_json(t, "duel", lambda j: j["state"] == "open", "duel published")
        self.assertEqual(j["title"], "Duel")
        self.assertEqual([o["label"] for o in j["options"]], ["A", "B"])
        for voter, opt in (("x", "a"), ("y", "b"), ("x", "b")):
            self.assertEqual(t.vote("duel", opt, voter)[0], 202)
        t.wait_counts({"duel": {"a": 0, "b": 2}, "free": {"p": 3, "q": 0}})
        v1 = t.published("duel")["version"]
        wait_until(lambda: time.time() * 1000 > closes + 50, 30 * TIMEOUT_MULT, "the close")
        # After the close ingest refuses the vote before anything is
        # appended (409 poll_closed): nothing late reaches the log (the
        # engine's own late rule is tested in tests/unit/test_engine.c).
        st, body = t.vote("duel", "a", "late-voter")
        self.assertEqual((st, body["error"]), (409, "poll_closed"))
        j = self.wait_json(t, "duel", lambda j: j["state"] in ("closed", "final"), "closed")
        self.assertEqual(j["late"], 0)
        self.assertEqual({o["id"]: o["votes"] for o in j["options"]}, {"a": 0, "b": 2})
        self.assertGreaterEqual(j["version"], v1)
        j = self.wait_json(t, "duel", lambda j: j["state"] == "final", "FINAL by the scheduler")
        self.assertEqual(len(j["final_positions"]), NPART)
        self.assertTrue(all(p > 0 for p in j["final_positions"]))
        final_bytes = slurp(os.path.join(t.dir, "public", "polls", "duel.json"))
        # Votes after the FINAL: refused, and the final file never changes.
        self.assertEqual(t.vote("duel", "a", "later")[0], 409)
        self.assertEqual(t.vote("free", "q")[0], 202)
        t.wait_counts({"free": {"p": 3, "q": 1}})
        time.sleep(0.3)
        t.stop()
        self.assertEqual(slurp(os.path.join(t.dir, "public", "polls", "duel.json")),
                         final_bytes, "a final poll's file was rewritten")
        fins = [x for x in controls(self.votes(t)) if x[1] == 2]
        self.assertEqual(sorted(x[0] for x in fins), list(range(NPART)))
        self.assertTrue(all(x[2] == 3 and x[3] == closes and x[4] == "duel" for x in fins))
        index = slurp(os.path.join(t.dir, "public", "index.html"), "r")
        self.assertIn("final", index)
        # Restart: resumed from snapshots, not recounted; still final.
        t.start()
        self.assertEqual(self.resumed(t), NPART)
        t.wait_counts({"free": {"p": 3, "q": 1}})
        self.assertEqual(t.published("duel")["state"], "final")
        t.stop()
        self.assertEqual(slurp(os.path.join(t.dir, "public", "polls", "duel.json")),
                         final_bytes)
        # Replay with no poll in the config: the history defines them all.
        bare = os.path.join(t.dir, "bare.ini")
        with open(t.config) as f, open(bare, "w") as g:
            g.write(f.read().split("[poll.free]")[0].replace(
                f"{t.dir}/public", f"{t.dir}/public2").replace(f"{t.dir}/snap", f"{t.dir}/snap2"))
        r = subprocess.run([TALLY_BIN, "replay", "-c", bare, "-q"], capture_output=True, text=True,
                           timeout=60 * TIMEOUT_MULT)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("poll duel (changeable): total 2, final", r.stdout)
        self.assertIn("poll free (unlimited): total 4, open", r.stdout)
        replayed = json.loads(slurp(os.path.join(t.dir, "public2", "polls", "duel.json")))
        live = json.loads(final_bytes)
        # ("late" goes on growing after the final; the frozen file keeps its count then)
        for k in ("options", "state", "final_positions", "closes_at", "total"):
            self.assertEqual(replayed[k], live[k], k)

    def test_a_scheduled_embargoed_config_poll_opens_closes_and_is_final_on_time(self):
        def rfc(ms):
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + "Z"
        now = int(time.time()) * 1000
        opens = now + int(3000 * TIMEOUT_MULT)
        closes = opens + int(3000 * TIMEOUT_MULT)
        t = self.make(polls=f"""
[poll.secret]
options = a, b
mode = unlimited
visibility = on_close
opens_at = {rfc(opens)}
closes_at = {rfc(closes)}
""", extra="[admin]\nfinal_grace_ms = 2000\n")
        t.start()
        j = self.wait_json(t, "secret", lambda j: True, "published")
        early = 0
        if time.time() * 1000 < opens - 200:
            self.assertEqual(j["state"], "scheduled")
            st, body = t.vote("secret", "a")  # before the opening: refused by ingest
            self.assertEqual((st, body["error"]), (409, "poll_not_open"))
        self.assertEqual(j["opens_at"], rfc(opens).replace("Z", ".000Z"))
        self.wait_json(t, "secret", lambda j: j["state"] == "open", "opened on time")
        for opt in ("a", "a", "b"):
            self.assertEqual(t.vote("secret", opt)[0], 202)
        time.sleep(0.3)
        j = t.published("secret")
        self.assertNotIn("total", j, "embargoed until final")
        self.assertTrue(all("votes" not in o for o in j["options"]))
        j = self.wait_json(t, "secret", lambda j: j["state"] == "final", "final on time",
                           timeout=30)
        self.assertEqual({o["id"]: o["votes"] for o in j["options"]}, {"a": 2, "b": 1})
        self.assertEqual(j["total"], 3)
        t.stop()
        r = subprocess.run([TALLY_BIN, "replay", "-c", t.config, "-q", "-s",
                            f"publisher.dir={t.dir}/public2", "-s", f"engine.snapshot_dir={t.dir}/s2"],
                           capture_output=True, text=True, timeout=60 * TIMEOUT_MULT)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"poll secret (unlimited): total 3, final, late 0, early {early}"
                      if early else "poll secret (unlimited): total 3, final", r.stdout)

    def test_a_broadcast_cut_short_is_completed_at_start(self):
        t = self.make(polls=POLLS)
        t.start()
        t.stop()
        # seq 2 reached partitions 0 and 1 only (a crash between appends).
        self.define(t, 2, {"id": "half", "mode": "unlimited", "options": ["a"]}, partitions=[0, 1])
        t.start()
        self.assertIn("partition 2 lacks the poll history after seq 1", t.stderr())
        self.assertIn("partition 3 lacks the poll history after seq 1", t.stderr())
        for i in range(40):  # unlimited votes spread over every partition
            self.assertEqual(t.vote("half", "a")[0], 202)
        t.wait_counts({"half": {"a": 40}})
        t.stop()
        seq2 = sorted(x[0] for x in controls(self.votes(t)) if x[2] == 2)
        self.assertEqual(seq2, [0, 1, 2, 3])
        t.start()
        self.assertNotIn("lacks the poll history", t.stderr()[t.started_at:])
        t.stop()

    def test_a_config_that_disagrees_with_the_history_is_refused(self):
        t = self.make(polls=POLLS)
        t.start()
        self.assertEqual(t.vote("free", "p")[0], 202)
        t.wait_counts({"free": {"p": 1, "q": 0}})
        t.stop()
        for override, field in (("poll.free.mode=one-per-voter", "mode"),
                                ("poll.free.options=q,p", "options")):
            r = subprocess.run([TALLY_BIN, "run", "-c", t.config, "-s", override],
                               capture_output=True, text=True, timeout=60 * TIMEOUT_MULT)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(f"config poll free disagrees with the log's history: {field}", r.stderr)
        # A title change is only a warning: the history wins.
        t.start("-s", "poll.free.title=Renamed")
        self.assertIn("differ from the log's history", t.stderr()[t.started_at:])
        self.assertEqual(self.resumed(t), NPART)
        t.wait_counts({"free": {"p": 1, "q": 0}})
        self.assertEqual(t.published("free")["title"], "free")
        t.stop()

    def test_snapshots_of_the_tally_before_the_lifecycle_still_load(self):
        polls = slurp(os.path.join(FIXTURE, "t.ini"), "r").split("[poll.free]", 1)[1]
        t = self.make(polls="[poll.free]" + polls)
        for d in ("log", "snap"):
            shutil.copytree(os.path.join(FIXTURE, d), os.path.join(t.dir, d))
        for name in os.listdir(os.path.join(t.dir, "snap")):
            self.assertEqual(slurp(os.path.join(t.dir, "snap", name))[:8], b"TLYSNAP3")
        t.start()
        self.assertEqual(self.resumed(t), NPART)
        t.wait_counts({"free": {"p": 7, "q": 3}, "one": {"a": 3, "b": 0}})
        self.assertEqual(t.vote("one", "b", "newcomer")[0], 202)
        t.wait_counts({"one": {"a": 3, "b": 1}})
        time.sleep(0.5)  # a snapshot interval
        t.stop()
        newest = {}
        for name in os.listdir(os.path.join(t.dir, "snap")):
            newest.setdefault(name[:4], []).append(name)
        for names in newest.values():
            with open(os.path.join(t.dir, "snap", max(names)), "rb") as f:
                self.assertEqual(f.read(8), b"TLYSNAP4")
        t.start()
        self.assertEqual(self.resumed(t), NPART)
        t.wait_counts({"free": {"p": 7, "q": 3}, "one": {"a": 3, "b": 1}})
        t.stop()


if __name__ == "__main__":
    unittest.main()
