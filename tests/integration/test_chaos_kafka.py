# kafka: tests/chaos --kafka against a real broker (scripts/kafka-local), started and stopped by it.
"""A short chaos run on Kafka: tally creates a fresh topic and 16 clients
vote at once, kill -9 and SIGSTOP strike, and the checker reads the topic
with kcat (not tally's code): every 202 must be in the topic exactly once
and the totals must equal live and replayed ones.

CHAOS_KAFKA_FAULTS picks the fault classes (kill, stop, broker). The
default list is empty, which skips the run: on a tally whose producer can
report a vote delivered that never reached the topic (issue 7 item 4) it
fails in about two of three fresh starts, so it joins make check with that
fix: set FAULTS below to "kill,stop"."""
import os
import random
import shutil
import subprocess
import sys
import time
import unittest

SRC = os.environ.get("TALLY_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "../.."))
FAULTS = os.environ.get("CHAOS_KAFKA_FAULTS", "kill,stop")


class KafkaChaos(unittest.TestCase):
    @unittest.skipUnless(FAULTS, "no Kafka fault classes enabled (CHAOS_KAFKA_FAULTS)")
    @unittest.skipIf(os.environ.get("TALLY_SANITIZE"), "the plain build covers it: broker time is scarce")
    @unittest.skipUnless(shutil.which("kcat"), "kcat missing (apt-get install kcat)")
    def test_chaos_rounds_on_kafka(self):
        seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1000000))
        cmd = [sys.executable, os.path.join(SRC, "tests", "chaos"), "--kafka", "--rounds",
               os.environ.get("CHAOS_ROUNDS", "3"), "--seed", str(seed), "--faults", FAULTS,
               "--clients", "16", "--time", "90"]
        print("running", " ".join(cmd), flush=True)
        t0 = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        print(r.stdout[-6000:], r.stderr[-3000:], f"({time.monotonic() - t0:.0f} s)", flush=True)
        self.assertEqual(r.returncode, 0, f"tests/chaos --kafka failed with seed {seed}")
        self.assertIn("PASS:", r.stdout)
        self.assertRegex(r.stdout, r"round 1/")


if __name__ == "__main__":
    unittest.main()
