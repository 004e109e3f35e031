# kafka: against a real Apache Kafka broker (scripts/kafka-local), started and stopped here.
"""tally on Apache Kafka: ingest and engine as separate processes, exact in
every mode; kill -9 of the engine and of an ingest under load; the broker
stopped under load; replay and --until from Kafka."""
import datetime
import json
import os
import random
import subprocess
import tempfile
import threading
import time
import unittest

from harness import (DEFAULT_SHAPE, SHAPE, TIMEOUT_MULT, Load, Tally, TallyTestCase,
                     expected_totals, wait_until)

SRC = os.environ.get("TALLY_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "../.."))
KAFKA_LOCAL = os.path.join(SRC, "scripts", "kafka-local")


def kafka_local(*args, timeout=300):
    r = subprocess.run([KAFKA_LOCAL, *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"kafka-local {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""


class Kafka(TallyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.kdir = tempfile.mkdtemp(prefix="tally-kafka-")
        cls.bootstrap = kafka_local("start", "--dir", cls.kdir)

    @classmethod
    def tearDownClass(cls):
        kafka_local("stop", "--dir", cls.kdir, "--purge")

    def setUp(self):
        self.topic = f"tally-{self.id().split('.')[-1]}-{int(time.time() * 1000)}"

    def install(self):
        """An engine and two ingest processes sharing one config."""
        extra = f"""[kafka]
brokers = {self.bootstrap}
topic = {self.topic}
partitions = 4
linger.ms = 1
message.timeout.ms = 5000
"""
        eng = self.make(extra=extra)
        ing = [Tally(workdir=eng.dir, config=eng.config) for _ in range(2)]
        for i in ing:
            self.addCleanup(lambda i=i: i.proc and i.kill9())
        return eng, ing

    def replay_equals_live(self, eng, polls):
        live = {p: eng.published_counts(p) for p in polls}
        r = eng.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("from the kafka log", r.stdout)
        self.assertEqual({p: eng.published_counts(p) for p in polls}, live, "replay differs from live")
        return live

    def test_roles_exact_all_modes(self):
        eng, ing = self.install()
        eng.start(cmd="engine")
        for i in ing:
            i.start(cmd="ingest")
        rng = random.Random(3)
        accepted, lock, threads = [], threading.Lock(), []

        def client(c):
            t = ing[c % 2]
            conn, mine = t.connect(), []
            for _ in range(150):
                poll = rng.choice(sorted(DEFAULT_SHAPE))
                opt = rng.choice(DEFAULT_SHAPE[poll][1])
                voter = f"c{c}-v{rng.randrange(20)}"
                st, body = t.vote(poll, opt, voter, conn=conn)
                self.assertEqual(st, 202, body)
                mine.append((poll, opt, voter))
            conn.close()
            with lock:
                accepted.extend(mine)
        for c in range(4):
            threads.append(threading.Thread(target=client, args=(c,)))
            threads[-1].start()
        for th in threads:
            th.join()
        self.assertEqual(len(accepted), 600)
        exp = expected_totals(DEFAULT_SHAPE, accepted)
        eng.wait_counts(exp, timeout=60)
        for i in ing:
            i.stop()
        eng.stop()
        self.assertEqual(self.replay_equals_live(eng, DEFAULT_SHAPE), exp)

    def test_kill9_engine_mid_stream(self):
        eng, ing = self.install()
        eng.start(cmd="engine")
        ing[0].start(cmd="ingest")
        load = Load(ing[0], nthreads=3)
        wait_until(lambda: load.total_acked >= 1500, 60, "load")
        wait_until(lambda: sum((eng.published_counts("one") or {}).values()) > 200, 60, "engine counting")
        eng.kill9()
        wait_until(lambda: load.total_acked >= 3000, 60, "more load while the engine is down")
        eng.start(cmd="engine")
        wait_until(lambda: load.total_acked >= 4500, 60, "load after the restart")
        load.finish()
        self.assertEqual(load.codes.get(503, 0), 0)
        # The ingest answered everything: the expectation is exact.
        eng.wait_counts({p: load.acked[p] for p in SHAPE}, timeout=60)
        ing[0].stop()
        eng.stop()
        self.replay_equals_live(eng, SHAPE)

    def test_kill9_ingest_under_load(self):
        eng, ing = self.install()
        eng.start(cmd="engine")
        for i in ing:
            i.start(cmd="ingest")
        load = Load(ing, nthreads=4)
        wait_until(lambda: load.total_acked >= 2000, 60, "load")
        ing[0].kill9()
        wait_until(lambda: load.total_acked >= 3500, 60, "load on the surviving ingest")
        load.finish()
        ing[1].stop()
        eng.stop()
        # Which unanswered votes reached Kafka is unknown: replay decides, and
        # every acknowledged one must be in it, and the live engine must agree.
        r = eng.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        replayed = {p: eng.published_counts(p) for p in SHAPE}
        self.assert_within(replayed, load)
        eng.start(cmd="engine")
        eng.wait_counts(replayed, timeout=60)
        eng.stop()

    def test_broker_stopped_under_load(self):
        eng, ing = self.install()
        eng.start(cmd="engine")
        ing[0].start(cmd="ingest")
        load = Load(ing[0], nthreads=3)
        wait_until(lambda: load.total_acked >= 1000, 60, "load")
        kafka_local("stop", "--dir", self.kdir)
        before = load.codes.get(503, 0)
        wait_until(lambda: load.codes.get(503, 0) > before + 20, 60, "503 answers while the broker is down")
        st, body = ing[0].vote("one", "a", "probe-down")
        self.assertEqual(st, 503)
        self.assertEqual(ing[0].last_headers.get("Retry-After"), "1")
        self.assertEqual(body["error"], "log_unavailable")
        acked_during = load.total_acked
        kafka_local("start", "--dir", self.kdir)
        wait_until(lambda: load.total_acked >= acked_during + 1000, 120, "votes accepted again")
        load.finish()
        load.unanswered["one"]["a"] += 1  # the probe
        ing[0].stop()
        eng.stop()
        r = eng.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        replayed = {p: eng.published_counts(p) for p in SHAPE}
        self.assert_within(replayed, load)
        eng.start(cmd="engine")
        eng.wait_counts(replayed, timeout=60)
        eng.stop()

    def test_replay_until(self):
        eng, ing = self.install()
        ing[0].start(cmd="ingest")
        for _ in range(4):
            self.assertEqual(ing[0].vote("free", "p")[0], 202)
        time.sleep(0.01)  # ms timestamps: keep the cut-off unambiguous
        cut = datetime.datetime.now(datetime.timezone.utc)
        time.sleep(0.01)
        for _ in range(3):
            self.assertEqual(ing[0].vote("free", "q")[0], 202)
        ing[0].stop()
        r = eng.replay("--until", cut.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(eng.published_counts("free"), {"p": 4, "q": 0})
        r = eng.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(eng.published_counts("free"), {"p": 4, "q": 3})

    def test_config_errors(self):
        eng, ing = self.install()
        r = subprocess.run([os.environ.get("TALLY_BIN", "tally"), "ingest", "-c", eng.config,
                            "-s", "kafka.no.such.key=1"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("kafka.no.such.key", r.stderr)
        r = subprocess.run([os.environ.get("TALLY_BIN", "tally"), "engine", "-c", eng.config,
                            "-s", "kafka.brokers="], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("kafka.brokers is empty", r.stderr)


if __name__ == "__main__":
    unittest.main()
