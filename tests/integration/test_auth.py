# tsan: vote integrity over real sockets; two HTTP threads share voter buckets.
"""A voter_auth = jwt poll refuses missing and bad tokens with 401 and counts
by the token's sub; 403 for a body voter or poll claim that disagrees; 429
with Retry-After from the per-voter bucket; a log written with
auth.voter_id_key_file holds no voter id; `tally token issue` makes tokens
the server takes. Tokens are signed here with the standard library (hmac),
independently of tally's own signer."""
import base64
import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
import unittest

from harness import TALLY_BIN, TallyTestCase, expected_totals

HS_KEY = b"integration-test-secret-32-bytes!"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(claims, key=HS_KEY, header=None, sig=None):
    h = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    p = b64(json.dumps(claims).encode())
    si = f"{h}.{p}".encode()
    s = hmac.new(key, si, hashlib.sha256).digest() if sig is None else sig
    return f"{h}.{p}.{b64(s)}"


def claims(sub, ttl=600, **kw):
    now = int(time.time())
    return dict({"sub": sub, "iat": now, "exp": now + ttl}, **kw)


POLLS = """
[poll.sec]
options = a, b
mode = one-per-voter
voter_auth = jwt

[poll.secfree]
options = a, b
mode = unlimited
voter_auth = jwt

[poll.open]
options = a, b
mode = changeable

[poll.flood]
options = a
mode = unlimited
"""


class Auth(TallyTestCase):
    def make_auth(self, extra="", polls=POLLS):
        t = self.make(polls=polls, extra=extra)
        key = os.path.join(t.dir, "hs.key")
        with open(key, "wb") as f:
            f.write(HS_KEY)
        with open(t.config, "a") as f:
            f.write(f"\n[auth]\njwt_hs256_key_file = {key}\n")
        return t

    def post(self, t, poll, body, tok=None, auth=None):
        headers = {"Content-Type": "application/json"}
        if tok is not None:
            headers["Authorization"] = f"Bearer {tok}"
        if auth is not None:
            headers["Authorization"] = auth
        st, data = t.request("POST", f"/v1/polls/{poll}/votes", json.dumps(body), headers)
        return st, json.loads(data), t.last_headers

    def assert_401(self, t, poll, body, tok=None, auth=None, invalid=True):
        st, j, h = self.post(t, poll, body, tok, auth)
        self.assertEqual(st, 401, j)
        self.assertEqual(j["error"], "unauthorized")
        self.assertTrue(j["message"])
        www = h.get("WWW-Authenticate", "")
        self.assertTrue(www.startswith("Bearer "), www)
        if invalid:
            self.assertIn('error="invalid_token"', www)
            self.assertIn("error_description=", www)
        else:
            self.assertNotIn("error=", www)
        return j

    def records(self, t):
        r = t.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def test_jwt_poll_refuses_bad_tokens_and_counts_by_sub(self):
        t = self.make_auth().start()
        now = int(time.time())
        body = {"option": "a"}
        self.assert_401(t, "sec", body, invalid=False)
        self.assert_401(t, "sec", body, auth="Basic YWxpY2U6cHc=")
        self.assert_401(t, "sec", body, tok="not-a-token")
        j = self.assert_401(t, "sec", body, tok=token({"sub": "alice", "exp": now - 3600}))
        self.assertIn("expired", j["message"])
        self.assert_401(t, "sec", body, tok=token(claims("alice"), key=b"x" * 32))
        self.assert_401(t, "sec", body, tok=token(claims("alice"), header={"alg": "none"}, sig=b""))
        self.assert_401(t, "sec", body, tok=token(claims("alice"), header={"alg": "HS512"}))
        self.assert_401(t, "sec", body, tok=token({"sub": "alice", "exp": now + 600, "nbf": now + 3600}))
        self.assert_401(t, "sec", body, tok=token({"exp": now + 600}))
        self.assert_401(t, "sec", body, tok="a" * 5000)
        # 403: the body names someone else, or the token is for another poll.
        st, j, _ = self.post(t, "sec", {"option": "a", "voter": "bob"}, token(claims("alice")))
        self.assertEqual((st, j["error"]), (403, "forbidden"), j)
        st, j, _ = self.post(t, "sec", body, token(claims("alice", poll="open")))
        self.assertEqual((st, j["error"]), (403, "forbidden"), j)
        # Accepted: with the body voter equal to sub, or with none.
        st, j, _ = self.post(t, "sec", {"option": "a", "voter": "alice"}, token(claims("alice")))
        self.assertEqual(st, 202, j)
        # Another token of the same sub: one-per-voter ignores the second vote.
        st, j, _ = self.post(t, "sec", {"option": "b"}, token(claims("alice", ttl=900, poll="sec")))
        self.assertEqual(st, 202, j)
        st, j, _ = self.post(t, "sec", {"option": "b"}, token(claims("carol")))
        self.assertEqual(st, 202, j)
        # Unlimited with tokens: every vote counts, still only with a token.
        for _ in range(3):
            self.assertEqual(self.post(t, "secfree", {"option": "b"}, token(claims("dave")))[0], 202)
        self.assert_401(t, "secfree", {"option": "b"}, invalid=False)
        # A poll without voter_auth ignores tokens entirely.
        st, j, _ = self.post(t, "open", {"option": "a", "voter": "eve"}, tok="garbage")
        self.assertEqual(st, 202, j)
        exp = {"sec": {"a": 1, "b": 1}, "secfree": {"a": 0, "b": 3}, "open": {"a": 1, "b": 0}}
        t.wait_counts(exp)
        t.stop()
        # Only the 202s reached the log: 3 + 3 + 1 records, and replay agrees.
        self.assertIn("replayed 7 records", self.records(t))
        self.assertEqual({p: t.published_counts(p) for p in exp}, exp)

    def test_voter_rate_limit_answers_429_with_retry_after(self):
        t = self.make_auth(extra="[limits]\nvoter_rate = 1\nvoter_burst = 2\n").start()
        codes = [t.vote("open", "a", "rapid")[0] for _ in range(3)]
        self.assertEqual(codes, [202, 202, 429])
        st, data = t.request("POST", "/v1/polls/open/votes", json.dumps({"option": "b", "voter": "rapid"}),
                             {"Content-Type": "application/json"})
        self.assertEqual(st, 429)
        self.assertEqual(json.loads(data)["error"], "rate_limited")
        self.assertEqual(t.last_headers.get("Retry-After"), "1")
        # Buckets are per (poll, voter): another voter, or the same id in
        # another poll (by token), is unaffected.
        self.assertEqual(t.vote("open", "b", "calm")[0], 202)
        self.assertEqual(self.post(t, "sec", {"option": "a"}, token(claims("rapid")))[0], 202)
        # After Retry-After the voter may vote again.
        time.sleep(1.05)
        self.assertEqual(t.vote("open", "b", "rapid")[0], 202)
        exp = {"open": {"a": 0, "b": 2}, "sec": {"a": 1, "b": 0}}
        t.wait_counts(exp)
        t.stop()
        self.assertIn("replayed 5 records", self.records(t))

    def test_one_voters_bucket_is_shared_by_every_http_thread(self):
        t = self.make_auth(extra="[server]\nthreads = 2\n[limits]\nvoter_rate = 1\nvoter_burst = 3\n").start()
        codes, lock = [], threading.Lock()

        def hammer():
            conn = t.connect()
            mine = [t.vote("flood", "a", "one-voter", conn=conn)[0] for _ in range(5)]
            conn.close()
            with lock:
                codes.extend(mine)
        t0 = time.monotonic()
        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.monotonic() - t0
        ok = codes.count(202)
        self.assertEqual(ok + codes.count(429), 20, codes)
        # The burst, plus one per second the run took (refills), no more.
        self.assertGreaterEqual(ok, 3)
        self.assertLessEqual(ok, 3 + int(elapsed) + 1, (ok, elapsed))
        t.wait_counts({"flood": {"a": ok}})
        t.stop()
        self.assertIn(f"replayed {ok} records", self.records(t))

    def test_hashed_voter_ids_leave_no_id_in_the_log(self):
        t = self.make_auth()
        key = os.path.join(t.dir, "voter.key")
        with open(key, "wb") as f:
            f.write(os.urandom(32))
        with open(t.config, "a") as f:
            f.write(f"voter_id_key_file = {key}\n")
        t.start()
        accepted = []
        voters = [f"cpf-{i:011d}-x" for i in range(40)]
        shape = {"open": ("changeable", ["a", "b"]), "sec": ("one-per-voter", ["a", "b"])}
        conn = t.connect()
        for i, v in enumerate(voters * 2):
            opt = "ab"[(i * 7) % 3 % 2]
            st, body = t.vote("open", opt, v, conn=conn)
            self.assertEqual(st, 202, body)
            self.assertNotIn(v, json.dumps(body))
            accepted.append(("open", opt, v))
        conn.close()
        for i, v in enumerate(voters[:10]):
            opt = "ab"[i % 2]
            self.assertEqual(self.post(t, "sec", {"option": opt, "voter": v}, token(claims(v)))[0], 202)
            accepted.append(("sec", opt, v))
        exp = expected_totals(shape, accepted)
        t.wait_counts(exp)
        t.stop()
        live = {p: t.published_counts(p) for p in shape}
        blobs = []
        for root in ("log", "snap"):
            for dirpath, _, files in os.walk(os.path.join(t.dir, root)):
                for name in files:
                    with open(os.path.join(dirpath, name), "rb") as f:
                        blobs.append((os.path.join(dirpath, name), f.read()))
        self.assertTrue(any(b"open" in b for _, b in blobs), "the log holds the votes")
        for v in voters:
            for path, b in blobs:
                self.assertNotIn(v.encode(), b, f"{v} in {path}")
        self.assertIn(f"replayed {len(accepted)} records", self.records(t))
        replayed = {p: t.published_counts(p) for p in shape}
        self.assertEqual(replayed, live)
        self.assertEqual(replayed, exp)

    def test_bench_signs_tokens_and_verifies_exact_totals(self):
        bench = os.path.join(os.environ.get("TALLY_BUILD_DIR", os.path.dirname(TALLY_BIN)), "tally-bench")
        if not os.path.exists(bench):
            self.skipTest("no tally-bench next to tally")
        t = self.make_auth().start()
        key = os.path.join(t.dir, "hs.key")

        def run(*extra):
            return subprocess.run([bench, "http", "-q", "--url", f"http://127.0.0.1:{t.port}", "--config",
                                   t.config, "--poll", "sec,secfree", "--votes", "1500", "--connections", "8",
                                   "--voters", "300", "--verify", os.path.join(t.dir, "public"), *extra],
                                  capture_output=True, text=True, timeout=120)
        r = run("--jwt-key-file", key)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("202: 1500", r.stdout)
        self.assertIn("verify: OK", r.stdout + r.stderr)
        # Without tokens every vote is refused, and the totals stay put.
        r = run()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("401: 1500", r.stdout)
        self.assertIn("verify: OK", r.stdout + r.stderr)
        t.stop()

    def test_short_voter_id_key_is_a_usage_error(self):
        t = self.make_auth()
        key = os.path.join(t.dir, "voter.key")
        with open(key, "wb") as f:
            f.write(b"only-15-bytes!!")
        with open(t.config, "a") as f:
            f.write(f"voter_id_key_file = {key}\n")
        r = subprocess.run([TALLY_BIN, "run", "-c", t.config], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("voter_id_key_file", r.stderr)
        self.assertIn("16", r.stderr)

    def test_token_issue_output_is_accepted(self):
        t = self.make_auth()
        # An ES256 key pair as an operator would make it.
        priv, pub = os.path.join(t.dir, "es.pem"), os.path.join(t.dir, "es.pub")
        subprocess.run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", priv],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "ec", "-in", priv, "-pubout", "-out", pub], check=True, capture_output=True)
        with open(t.config, "a") as f:
            f.write(f"jwt_es256_public_key_file = {pub}\njwt_audience = tally-test\n")
        t.start()

        def issue(*args):
            r = subprocess.run([TALLY_BIN, "token", "issue", "-c", t.config, *args],
                               capture_output=True, text=True, timeout=30)
            return r.returncode, r.stdout.strip(), r.stderr

        rc, hs_tok, err = issue("--sub", "frank", "--poll", "sec", "--ttl", "5m")
        self.assertEqual(rc, 0, err)
        payload = json.loads(base64.urlsafe_b64decode(hs_tok.split(".")[1] + "=="))
        self.assertEqual(payload["sub"], "frank")
        self.assertEqual(payload["aud"], "tally-test")
        self.assertEqual(payload["exp"] - payload["iat"], 300)
        # Checked here with the standard library, not by tally.
        h, p, s = hs_tok.split(".")
        self.assertEqual(b64(hmac.new(HS_KEY, f"{h}.{p}".encode(), hashlib.sha256).digest()), s)
        self.assertEqual(self.post(t, "sec", {"option": "a"}, hs_tok)[0], 202)
        rc, es_tok, err = issue("--sub", "grace", "--alg", "ES256", "--key", priv)
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(base64.urlsafe_b64decode(es_tok.split(".")[0] + "=="))["alg"], "ES256")
        self.assertEqual(self.post(t, "sec", {"option": "b"}, es_tok)[0], 202)
        # The audience is enforced: a token without it is refused.
        self.assert_401(t, "sec", {"option": "b"}, tok=token(claims("henry")))
        # Usage errors exit 2; --help exits 0.
        self.assertEqual(issue("--sub", "x", "--ttl", "forever")[0], 2)
        self.assertEqual(issue("--bogus")[0], 2)
        self.assertEqual(issue("--sub", "x", "--alg", "ES256")[0], 2)
        self.assertEqual(issue("--sub", "x", "--alg", "RS256")[0], 2)
        self.assertEqual(issue("--help")[0], 0)
        t.wait_counts({"sec": {"a": 1, "b": 1}})
        t.stop()


if __name__ == "__main__":
    unittest.main()
