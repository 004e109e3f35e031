# kafka: against a real Apache Kafka broker (scripts/kafka-local), started and stopped here.
"""The poll lifecycle with Kafka (issue 9): one `tally engine` runs the admin
API and writes the poll history; two `tally ingest` processes learn it from
the catalog topic. A poll created through the engine is taken by both
ingests within 1 s; a close is honoured by both: every vote answered 202 is
in the votes topic stamped before the cut, every 409 is not in it at all
(read back with the test's own reader, tests/chaos_lib/logreader.py)."""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from harness import TIMEOUT_MULT, Tally, TallyTestCase, free_port, wait_until

SRC = os.environ.get("TALLY_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "../.."))
sys.path.insert(0, os.path.join(SRC, "tests"))
from chaos_lib import logreader  # noqa: E402
from test_admin import TOKEN, Admin, engine_counts_runtime_polls  # noqa: E402
from test_kafka import kafka_local  # noqa: E402

CLOSE_DELAY_MS = 3000


def topic_values(bootstrap, topic):
    """[(partition, offset, key, value bytes)] of a whole topic, via kcat
    ("%K"/"%S": key and value lengths, then the bytes)."""
    r = subprocess.run(["kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q",
                        "-f", "%p %o %K %S %k%s"], capture_output=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"kcat failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    out, pos, recs = r.stdout, 0, []
    while pos < len(out):
        fields = []
        for _ in range(4):
            sp = out.index(b" ", pos)
            fields.append(int(out[pos:sp]))
            pos = sp + 1
        part, off, klen, vlen = fields
        klen = max(klen, 0)
        key = out[pos:pos + klen]
        pos += klen
        recs.append((part, off, key, out[pos:pos + vlen]))
        pos += vlen
    return recs


class AdminKafka(TallyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.kdir = tempfile.mkdtemp(prefix="tally-admin-kafka-")
        cls.bootstrap = kafka_local("start", "--dir", cls.kdir)

    @classmethod
    def tearDownClass(cls):
        kafka_local("stop", "--dir", cls.kdir, "--purge")

    def install(self):
        self.topic = f"tally-admin-{self.id().split('.')[-1]}-{int(time.time() * 1000)}"
        a = Admin(self, extra=f"""[kafka]
brokers = {self.bootstrap}
topic = {self.topic}
partitions = 4
linger.ms = 1
message.timeout.ms = 5000
""")
        # The close delay the learn bound needs with Kafka, not the file-log
        # test's shorter one.
        with open(a.t.config) as f:
            text = f.read().replace("close_delay_ms = 1000", f"close_delay_ms = {CLOSE_DELAY_MS}")
        with open(a.t.config, "w") as f:
            f.write(text)
        a.t.start(cmd="engine")
        wait_until(lambda: a.request("GET", "/healthz")[0] == 200, 30, "the engine's admin API")
        ing = [Tally(workdir=a.t.dir, config=a.t.config) for _ in range(2)]
        for i in ing:
            self.addCleanup(lambda i=i: i.proc and i.kill9())
            i.start(cmd="ingest")
        # Ready once each has read the catalog: a config poll takes votes.
        for i in ing:
            wait_until(lambda i=i: i.vote("free", "p", None)[0] == 202, 60, "ingest to load the catalog")
        return a, ing

    def test_created_poll_reaches_both_ingests_within_1s_and_close_cut_holds(self):
        a, ing = self.install()
        st, p = a.create(id="live1", options=["x", "y"], mode="unlimited")
        self.assertEqual(st, 201, p)
        created = time.monotonic()
        learned = []
        for i in ing:
            wait_until(lambda i=i: i.vote("live1", "x", f"probe-{i.port}")[0] == 202, 5,
                       "an ingest to learn the new poll")
            learned.append(time.monotonic() - created)
        self.assertLess(max(learned), 1.0 * TIMEOUT_MULT + 0.2,
                        f"an ingest took {max(learned):.3f} s to learn a new poll")
        probes = {f"probe-{i.port}" for i in ing}

        # Votes through both ingests while the poll closes under them.
        answers, lock, stop = [], threading.Lock(), threading.Event()

        def client(n, t):
            conn, k = t.connect(timeout=30), 0
            while not stop.is_set():
                voter = f"c{n}-{k}"
                k += 1
                sent = int(time.time() * 1000)
                st, body = t.vote("live1", "xy"[k % 2], voter, conn=conn)
                with lock:
                    answers.append((voter, "xy"[k % 2], st, body and body.get("error"), sent))
            conn.close()
        threads = [threading.Thread(target=client, args=(n, ing[n % 2])) for n in range(4)]
        for th in threads:
            th.start()
        time.sleep(0.3)
        st, p = a.request("POST", "/v1/admin/polls/live1/close")
        self.assertEqual(st, 200, p)
        cut = p["closes_at_ms"]
        wait_until(lambda: time.time() * 1000 > cut + 1500, 15, "past the cut")
        stop.set()
        for th in threads:
            th.join()
        ok = {v: o for v, o, st, err, _ in answers if st == 202}
        refused = {v for v, o, st, err, _ in answers if st == 409}
        self.assertTrue(ok and refused, f"{len(ok)} accepted, {len(refused)} refused")
        for v, o, st, err, sent in answers:
            self.assertIn(st, (202, 409, 503), (v, st, err))
            if st == 409:
                self.assertEqual(err, "poll_closed")
            if st == 202:
                self.assertLess(sent, cut, f"{v} sent after the cut was accepted")
        # Both ingests refuse after the cut.
        # (503 catalog_stale is a correct refusal too, under load: retried.)
        for i in ing:
            st, body = wait_until(lambda i=i: (lambda r: r if r[0] != 503 else None)(
                i.vote("live1", "x", f"late-{i.port}")), 10, "an answer other than 503")
            self.assertEqual((st, body["error"]), (409, "poll_closed"))

        # The topic: every 202 once, stamped before the cut; no 409 at all.
        in_topic, controls = {}, 0
        for part, off, key, val in topic_values(self.bootstrap, self.topic):
            r = logreader.decode_any(val)
            if r[0] == "control":
                controls += r[5] == "live1"
                continue
            _, ts, flags, poll, option, voter, _k = r
            if poll != "live1" or voter in probes:
                continue
            self.assertNotIn(voter, in_topic, f"{voter} twice in the topic")
            in_topic[voter] = (option, ts)
        for v, o in ok.items():
            self.assertIn(v, in_topic, f"{v} was answered 202 but is not in the topic")
            self.assertEqual(in_topic[v][0], o)
            self.assertLess(in_topic[v][1], cut)
        for v in refused:
            self.assertNotIn(v, in_topic, f"{v} was answered 409 but is in the topic")
        # DEFINE at create and at close, on each of the 4 partitions.
        self.assertGreaterEqual(controls, 2 * 4)
        # The catalog topic: compacted, holding the poll's closing time.
        ctopic = topic_values(self.bootstrap, self.topic + "-polls")
        cat = [json.loads(v) for _, _, k, v in ctopic if k == b"live1"]
        self.assertTrue(cat, ctopic)
        self.assertEqual(cat[-1]["def"]["closes_at"], cut)
        r = subprocess.run(["kcat", "-L", "-b", self.bootstrap, "-t", self.topic + "-polls", "-J"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(len(json.loads(r.stdout)["topics"][0]["partitions"]), 1)

        if engine_counts_runtime_polls():
            # What the engine must count: every vote of the topic stamped
            # before the cut (the 202s, and any 503 poll_closing that
            # landed), as the test's own reader sees them, plus the probes.
            want = {"x": len(probes), "y": 0}
            for v, (o, ts) in in_topic.items():
                if ts < cut:
                    want[o] += 1
            a.t.wait_counts({"live1": want}, timeout=30)

    def test_ingest_started_later_reads_the_catalog_first(self):
        a, ing = self.install()
        st, _ = a.create(id="early", options=["a"], mode="unlimited")
        self.assertEqual(st, 201)
        late = Tally(workdir=a.t.dir, config=a.t.config)
        self.addCleanup(lambda: late.proc and late.kill9())
        late.start(cmd="ingest")
        # Its first vote for the run-time poll is judged with the catalog
        # loaded: 503 starting, never 404.
        deadline = time.monotonic() + 30 * TIMEOUT_MULT
        while True:
            st, body = late.vote("early", "a", None)
            if st == 202:
                break
            self.assertEqual((st, body["error"]), (503, "starting"), body)
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.02)


if __name__ == "__main__":
    unittest.main()
