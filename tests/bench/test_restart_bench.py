"""tally-bench restart on a small state: it builds the state, restarts the
real `tally run` on it and exits 0 only once tally served exactly the votes
written; --dir keeps the state, and a second call reuses it.

Env (set by bench/CMakeLists.txt): TALLY_BIN, TALLY_BENCH_BIN.
"""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

TALLY = os.environ.get("TALLY_BIN", "build/tally")
BENCH = os.environ.get("TALLY_BENCH_BIN", "build/tally-bench")
TMOUT = 4.0 if os.environ.get("TALLY_SANITIZE") else 1.0


class RestartBench(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tally-restart-bench-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def run_bench(self, *args):
        out = os.path.join(self.dir, "out.json")
        p = subprocess.run([BENCH, "restart", "--tally", TALLY, "--dir", os.path.join(self.dir, "s"),
                            "--json", out, *args], capture_output=True, text=True,
                           timeout=120 * TMOUT)
        msg = f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
        self.assertNotIn("Sanitizer", p.stderr, msg)
        self.assertEqual(p.returncode, 0, msg)
        with open(out) as f:
            return p, json.load(f)

    def test_restart_serves_exact_totals_and_reuses_the_state(self):
        p, r = self.run_bench("--voters", "20k", "--partitions", "3", "--runs", "2")
        self.assertIn("check         OK", p.stdout)
        self.assertIn("restart: writing 20000 voters", p.stderr)
        self.assertTrue(r["check_ok"])
        self.assertEqual(r["voters"], 20000)
        self.assertEqual(len(r["runs"]), 2)
        self.assertGreater(r["snapshot_bytes"], 20000 * 16)
        # The same state again: not rebuilt.
        p, r = self.run_bench("--voters", "20k", "--partitions", "3", "--runs", "1")
        self.assertNotIn("writing", p.stderr)
        self.assertTrue(r["check_ok"])
        # Another size: rebuilt.
        p, r = self.run_bench("--voters", "5k", "--partitions", "3", "--runs", "1")
        self.assertIn("restart: writing 5000 voters", p.stderr)

    def test_bad_option_is_a_usage_error(self):
        p = subprocess.run([BENCH, "restart", "--voters", "0"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("--voters", p.stderr)


if __name__ == "__main__":
    unittest.main()
