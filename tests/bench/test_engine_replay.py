"""tally-bench engine and replay on small inputs: both check their totals
before they report a speed, so exit 0 means the engine (in-process) and
`tally replay` (the real binary) counted exactly, in every mode.

Env (set by bench/CMakeLists.txt): TALLY_BIN, TALLY_BENCH_BIN, TALLY_SOURCE_DIR.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

TALLY = os.environ.get("TALLY_BIN", "build/tally")
BENCH = os.environ.get("TALLY_BENCH_BIN", "build/tally-bench")
SRC = os.environ.get("TALLY_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
TMOUT = 4.0 if os.environ.get("TALLY_SANITIZE") else 1.0


def bench(*args):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        p = subprocess.run([BENCH, *args, "-q", "--json", out.name], capture_output=True,
                           text=True, timeout=120 * TMOUT)
        msg = f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
        if "Sanitizer" in p.stderr or "runtime error:" in p.stderr:
            raise AssertionError("sanitizer report:\n" + msg)
        result = json.load(open(out.name)) if p.returncode == 0 else None
    return p, msg, result


class EngineReplay(unittest.TestCase):
    def test_engine_every_mode_two_threads(self):
        for mode in ("one-per-voter", "changeable", "unlimited"):
            p, msg, r = bench("engine", "--mode", mode, "--threads", "2", "--votes", "200k",
                              "--voters", "50k", "--runs", "2")
            self.assertEqual(p.returncode, 0, msg)
            self.assertIn("check         OK", p.stdout, msg)
            self.assertTrue(r["check_ok"])
            self.assertEqual(r["votes"], 200000)
            self.assertEqual(len(r["runs"]), 2)
            if mode == "unlimited":
                self.assertEqual(r["distinct_voters"], 0)
            else:
                self.assertEqual(r["distinct_voters"], 50000, msg)
                self.assertGreaterEqual(r["bytes_per_voter"], 16)

    def test_engine_polls_from_config(self):
        p, msg, r = bench("engine", "--config", os.path.join(SRC, "config", "tally.ini"),
                          "--votes", "90k", "--voters", "10k", "--dist", "zipf")
        self.assertEqual(p.returncode, 0, msg)
        self.assertEqual(r["mode"], "config")

    def test_replay_checks_tallys_totals(self):
        p, msg, r = bench("replay", "--tally", TALLY, "--votes", "50k", "--voters", "5k",
                          "--mode", "changeable", "--runs", "2", "--threads", "2")
        self.assertEqual(p.returncode, 0, msg)
        self.assertIn("check         OK", p.stdout, msg)
        self.assertEqual(r["log"], "file")
        self.assertEqual(len(r["runs"]), 2)
        self.assertGreater(r["records_per_sec"], 0)

    def test_bad_option_is_a_usage_error(self):
        p = subprocess.run([BENCH, "engine", "--mode", "bogus"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 2)
        p = subprocess.run([BENCH, "http"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 2, "no polls given")


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]] + [a for a in sys.argv[1:] if a == "-v"], verbosity=2)
