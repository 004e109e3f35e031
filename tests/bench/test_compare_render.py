"""bench/compare --render: the report's target cells follow the numbers.

Renders REPORT.md from hand-made results.json files (no measuring) and
checks each target's status against the goal computed here, independently
of compare's own arithmetic: a ratio of medians just under the goal is
"missed", just over is "met", a missing figure is "not measured", a skipped
one shows its reason.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

SRC = os.environ.get("TALLY_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
COMPARE = os.path.join(SRC, "bench", "compare")


def st(v):
    return {"median": v, "min": v, "max": v, "n": 1}


def render(metrics):
    with tempfile.TemporaryDirectory() as d:
        meta = {"date": "2026-01-01 00:00 UTC", "commit": "abc", "quick": True, "kafka": False,
                "runs": 1, "secs": 2, "ncpu": 2, "load_before": 1.0, "load_after": 1.0,
                "versions": "x"}
        with open(os.path.join(d, "results.json"), "w") as f:
            json.dump({"meta": meta, "metrics": metrics}, f)
        p = subprocess.run([sys.executable, COMPARE, "--render", "--out", d],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise AssertionError(p.stderr)
        with open(os.path.join(d, "REPORT.md")) as f:
            return f.read()


def row(report, name):
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} in:\n{report}")


class Render(unittest.TestCase):
    def test_ratio_status_follows_the_numbers(self):
        k = "http/wrk/64"
        # nginx 10 us/req; tally 12.6 us -> 0.794x (missed), rps 81/100 -> 0.81x (met)
        m = {f"{k}/nginx/cpu_us": st(10.0), f"{k}/tally/cpu_us": st(12.6),
             f"{k}/nginx/rps": st(100.0), f"{k}/tally/rps": st(81.0),
             "half/p99_ms": st(5.0)}
        r = render(m)
        cpu = row(r, "ingest per core, 64 conns, wrk")
        self.assertTrue(cpu[3].startswith(f"{10.0 / 12.6:.2f}x"), cpu)
        self.assertEqual(cpu[5], "**missed**")
        rps = row(r, "ingest requests/s, 64 conns, wrk")
        self.assertTrue(rps[3].startswith("0.81x"), rps)
        self.assertEqual(rps[5], "met")
        self.assertEqual(row(r, "ingest p99 at half of max load")[5], "met", "<= is inclusive")
        self.assertEqual(row(r, "ingest per core, 256 conns, wrk")[5], "not measured")

    def test_skipped_figure_shows_its_reason(self):
        r = render({"restart/1000000/seconds": {"skipped": "not built"},
                    "restart/10000000/seconds": st(2.5)})
        self.assertEqual(row(r, "restart, 1M voters")[5], "not built")
        self.assertEqual(row(r, "restart, 10M voters")[5], "**missed**")

    def test_sse_rows_name_the_subscriber_count(self):
        r = render({"sse/subscribers": st(2000), "sse/fanout/p50_ms": st(30.0),
                    "sse/fanout/p99_ms": st(45.0), "sse/fresh_sse_p99_ms": st(100.5)})
        p99 = row(r, "SSE fan-out p99, 202 -> event at the last of 2,000 subscribers")
        self.assertEqual(p99[3], "45.0 ms")
        self.assertEqual(p99[5], "reported")
        self.assertEqual(row(r, "freshness p99 over SSE at half of max load")[5], "**missed**")
        self.assertEqual(row(r, "vote p99 during SSE fan-out")[5], "not measured")
        fan = row(r, "fan-out")
        self.assertEqual(fan[1:3], ["2000", "-"])

    def test_sse_not_measured_without_figures(self):
        r = render({"half/p99_ms": st(1.0)})
        self.assertEqual(row(r, "SSE fan-out p50, 202 -> event at the last of 10,000 subscribers")[5],
                         "not measured")
        self.assertEqual(row(r, "freshness p99 over SSE at half of max load")[5], "not measured")
        self.assertNotIn("**7. SSE", r)

    def test_no_generated_prose(self):
        """Every line is a heading, a caption, a table row or the one
        method line: nothing that could argue with the numbers."""
        r = render({"half/p99_ms": st(1.0)})
        for line in r.splitlines():
            ok = (not line or line.startswith(("#", "|", "**", "`bench/compare")))
            self.assertTrue(ok, f"prose line: {line!r}")


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]] + [a for a in sys.argv[1:] if a == "-v"], verbosity=2)
