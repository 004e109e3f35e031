# s3: against a real S3-compatible server (S3Proxy through scripts/s3-local), started and stopped here.
"""S3 publishing end to end: tally run mirrors publisher.dir into a bucket of
a real S3Proxy (SigV4 checked by the server). Objects appear with the right
bytes, Content-Type and Cache-Control; only changed objects are uploaded;
while the server is down tally keeps counting and retrying, and catches up
once it is back; bad credentials are reported in /v1/stats and the log, and
counting is unaffected. Key-file and bucket mistakes are exit 2.

The jars come from Maven Central through scripts/s3-local: if they cannot be
fetched the test fails (it never skips)."""
import json
import os
import subprocess
import tempfile
import time
import unittest

from harness import TIMEOUT_MULT, TallyTestCase, TALLY_BIN, wait_until

SRC = os.environ.get("TALLY_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "../.."))
S3_LOCAL = os.path.join(SRC, "scripts", "s3-local")
BUCKET = "results"
PREFIX = "site/v1"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

POLLS = """
[poll.one]
title = One <b>vote</b>
options = a, b, c

[poll.free]
title = Free
options = p, q
mode = unlimited
"""


def s3_local(*args, timeout=600):
    r = subprocess.run([S3_LOCAL, *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"s3-local {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""


class S3Test(TallyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.s3dir = tempfile.mkdtemp(prefix="tally-s3-")
        # Fetches the jars on first use (Maven Central); a failure fails.
        cls.endpoint = s3_local("start", "--dir", cls.s3dir, "--bucket", BUCKET, "--timeout", "120")
        cls.store = os.path.join(cls.s3dir, "data", BUCKET, PREFIX)

    @classmethod
    def tearDownClass(cls):
        s3_local("stop", "--dir", cls.s3dir, "--purge")

    # ---- helpers ----
    def s3_extra(self, secret_file=None, prefix=PREFIX):
        return f"""s3_endpoint = {self.endpoint}
s3_bucket = {BUCKET}
s3_prefix = {prefix}
s3_access_key_file = {self.s3dir}/identity
s3_secret_key_file = {secret_file or self.s3dir + '/credential'}
"""

    def make_s3(self, secret_file=None, prefix=PREFIX):
        return self.make(polls=POLLS, extra=self.s3_extra(secret_file, prefix))

    def stats(self, t):
        st, body = t.request("GET", "/v1/stats")
        self.assertEqual(st, 200)
        return json.loads(body)

    def get_object(self, key):
        """GET through the S3 API, signed by curl (not by tally): (status,
        headers, body)."""
        with open(os.path.join(self.s3dir, "identity")) as f:
            ident = f.read().strip()
        with open(os.path.join(self.s3dir, "credential")) as f:
            cred = f.read().strip()
        r = subprocess.run(["curl", "-s", "-D", "-", "--max-time", "10",
                            "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"{ident}:{cred}",
                            "-H", f"x-amz-content-sha256: {EMPTY_SHA256}",
                            f"{self.endpoint}/{BUCKET}/{PREFIX}/{key}"],
                           capture_output=True, timeout=30)
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
        hdrs = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        return status, hdrs, body

    def local(self, t, key):
        with open(os.path.join(t.dir, "public", key), "rb") as f:
            return f.read()

    def stored(self, key):
        try:
            with open(os.path.join(self.store, key), "rb") as f:
                return f.read()
        except OSError:
            return None

    def wait_mirrored(self, t, keys, timeout=30):
        """Until every key's object holds exactly the bytes of publisher.dir."""
        last = {}

        def same():
            for k in keys:
                last[k] = (self.stored(k), self.local(t, k))
                if last[k][0] != last[k][1]:
                    return False
            return True
        try:
            wait_until(same, timeout, "S3 objects equal to publisher.dir", interval=0.05)
        except AssertionError:
            raise AssertionError("not mirrored: " + repr({k: (a and a[:80], b[:80]) for k, (a, b) in last.items()}))

    KEYS = ["index.html", "polls/one.json", "polls/one.html", "polls/free.json", "polls/free.html"]

    # ---- tests ----
    def test_objects_appear_with_content_type_and_cache_control(self):
        t = self.make_s3()
        t.start()
        for i, opt in enumerate("aab"):
            self.assertEqual(t.vote("one", opt, f"v{i}")[0], 202)
        t.wait_counts({"one": {"a": 2, "b": 1, "c": 0}})
        self.wait_mirrored(t, self.KEYS)
        want = {".json": "application/json", ".html": "text/html"}
        for k in self.KEYS:
            st, h, body = self.get_object(k)
            self.assertEqual(st, 200, f"GET {k}: {h}")
            self.assertEqual(body, self.local(t, k), k)
            self.assertTrue(h.get("content-type", "").startswith(want[os.path.splitext(k)[1]]), (k, h))
            self.assertEqual(h.get("cache-control"), "public, max-age=1, stale-while-revalidate=5", (k, h))
        self.assertEqual(json.loads(self.stored("polls/one.json"))["total"], 3)
        s3 = self.stats(t)["s3"]
        self.assertEqual(s3["failures"], 0, s3)
        self.assertEqual(s3["pending"], 0, s3)
        t.stop()

    def test_only_changed_objects_are_uploaded(self):
        t = self.make_s3()
        t.start()
        self.wait_mirrored(t, self.KEYS)
        wait_until(lambda: self.stats(t)["s3"]["pending"] == 0, 10, "uploads to settle")
        before = {k: os.stat(os.path.join(self.store, k)).st_mtime_ns for k in self.KEYS}
        s0 = self.stats(t)
        for i in range(5):  # one poll only: the other's objects stay as they are
            self.assertEqual(t.vote("free", "p")[0], 202)
        t.wait_counts({"free": {"p": 5, "q": 0}})
        self.wait_mirrored(t, ["polls/free.json", "polls/free.html"])
        wait_until(lambda: self.stats(t)["s3"]["pending"] == 0, 10, "uploads to settle")
        time.sleep(0.3)  # a stray upload would land meanwhile
        s1 = self.stats(t)
        after = {k: os.stat(os.path.join(self.store, k)).st_mtime_ns for k in self.KEYS}
        for k in ["index.html", "polls/one.json", "polls/one.html"]:
            self.assertEqual(before[k], after[k], f"{k} was uploaded again without a change")
        for k in ["polls/free.json", "polls/free.html"]:
            self.assertNotEqual(before[k], after[k], f"{k} changed but was not uploaded")
        # Every publish of poll free writes 2 files; each is one PUT, no more.
        writes = s1["publisher"]["writes"] - s0["publisher"]["writes"]
        puts = s1["s3"]["uploads_ok"] - s0["s3"]["uploads_ok"]
        self.assertGreaterEqual(writes, 1)
        self.assertLessEqual(puts, 2 * writes, (s0, s1))
        self.assertGreaterEqual(puts, 2)
        t.stop()

    def test_server_down_then_back_catches_up(self):
        t = self.make_s3()
        t.start()
        self.wait_mirrored(t, self.KEYS)
        s3_local("stop", "--dir", self.s3dir)
        try:
            sent = 0
            for i in range(20):  # counting goes on while S3 is gone
                st, _ = t.vote("one", "abc"[i % 3], f"down-{i}")
                self.assertEqual(st, 202)
                sent += 1
            t.wait_counts({"one": {"a": 7, "b": 7, "c": 6}})
            wait_until(lambda: self.stats(t)["s3"]["failures"] >= 2, 30, "failed uploads to be counted")
            s3 = self.stats(t)["s3"]
            self.assertGreater(s3["pending"], 0, s3)
            self.assertIn("polls/one", s3["last_error"])
            self.assertNotEqual(self.stored("polls/one.json"), self.local(t, "polls/one.json"))
        finally:
            # The same port (s3-local reuses the last one when free).
            self.assertEqual(s3_local("start", "--dir", self.s3dir, "--timeout", "120"), self.endpoint)
        self.wait_mirrored(t, self.KEYS, timeout=40)
        self.assertEqual(json.loads(self.stored("polls/one.json"))["total"], 20)
        wait_until(lambda: self.stats(t)["s3"]["pending"] == 0, 10, "nothing pending")
        err = t.stderr()
        self.assertIn("s3: uploading again", err)
        t.stop()

    def test_bad_credentials_are_reported_and_counting_goes_on(self):
        bad = os.path.join(tempfile.mkdtemp(prefix="tally-s3-key-"), "secret")
        with open(bad, "w") as f:
            f.write("not-the-secret\n")
        t = self.make_s3(secret_file=bad, prefix="bad")
        t.start()
        for i in range(10):
            self.assertEqual(t.vote("one", "b", f"bad-{i}")[0], 202)
        t.wait_counts({"one": {"a": 0, "b": 10, "c": 0}})
        wait_until(lambda: self.stats(t)["s3"]["failures"] >= 4, 30, "failures to be counted")
        s3 = self.stats(t)["s3"]
        self.assertEqual(s3["uploads_ok"], 0, s3)
        self.assertIn("HTTP 403", s3["last_error"])
        self.assertIn("SignatureDoesNotMatch", s3["last_error"])
        self.assertGreater(s3["last_error_ms"], 0)
        self.assertFalse(os.path.exists(os.path.join(self.s3dir, "data", BUCKET, "bad")))
        # The same count in the Prometheus exposition.
        st, body = t.request("GET", "/metrics")
        self.assertEqual(st, 200)
        text = body.decode() if isinstance(body, bytes) else body
        rows = [ln for ln in text.splitlines() if ln.startswith("tally_s3_upload_failures_total ")]
        self.assertEqual(len(rows), 1, text[-2000:])
        self.assertGreaterEqual(float(rows[0].split()[1]), 4)
        err = t.stderr()
        self.assertIn("s3: PUT", err)
        self.assertIn("403", err)
        # Rate-limited: one line for the first failure, not one per retry.
        lines = [ln for ln in err.splitlines() if " error s3:" in ln]
        self.assertLessEqual(len(lines), 2, lines)
        self.assertNotIn("not-the-secret", err)
        t.stop()

    def test_config_mistakes_are_exit_2_naming_the_key(self):
        d = tempfile.mkdtemp(prefix="tally-s3-cfg-")
        cfg = os.path.join(d, "t.ini")
        with open(cfg, "w") as f:
            f.write(f"[log]\ndir = {d}/log\n[engine]\nsnapshot_dir = {d}/snap\n[publisher]\ndir = {d}/pub\n"
                    "[poll.x]\noptions = a\n")
        base = ["-s", f"publisher.s3_endpoint={self.endpoint}"]
        good = ["-s", f"publisher.s3_access_key_file={self.s3dir}/identity",
                "-s", f"publisher.s3_secret_key_file={self.s3dir}/credential"]
        cases = [
            (base + good, "publisher.s3_bucket"),
            (base + good + ["-s", "publisher.s3_bucket=Bad_Bucket"], "publisher.s3_bucket"),
            (base + ["-s", "publisher.s3_bucket=results", "-s",
                     f"publisher.s3_access_key_file={self.s3dir}/identity"], "publisher.s3_secret_key_file"),
            (base + ["-s", "publisher.s3_bucket=results", "-s", f"publisher.s3_access_key_file={d}/nope",
                     "-s", f"publisher.s3_secret_key_file={self.s3dir}/credential"],
             "publisher.s3_access_key_file"),
            (base + ["-s", "publisher.s3_bucket=results", "-s", f"publisher.s3_access_key_file={d}",
                     "-s", f"publisher.s3_secret_key_file={self.s3dir}/credential"],
             "publisher.s3_access_key_file"),
            (["-s", "publisher.s3_endpoint=ftp://x", "-s", "publisher.s3_bucket=results"] + good,
             "publisher.s3_endpoint"),
            (base + good + ["-s", "publisher.s3_bucket=results", "-s", "publisher.s3_prefix=a/../b"],
             "publisher.s3_prefix"),
        ]
        empty = os.path.join(d, "empty")
        open(empty, "w").close()
        cases.append((base + ["-s", "publisher.s3_bucket=results", "-s", f"publisher.s3_access_key_file={empty}",
                              "-s", f"publisher.s3_secret_key_file={self.s3dir}/credential"],
                      "publisher.s3_access_key_file"))
        for args, key in cases:
            r = subprocess.run([TALLY_BIN, "run", "-c", cfg, "-s", "server.listen=127.0.0.1:0", *args],
                               capture_output=True, text=True, timeout=30 * TIMEOUT_MULT)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn(key, r.stderr, args)


if __name__ == "__main__":
    unittest.main()
