"""HTTP caching of the results over raw sockets: a strong ETag, If-None-Match
-> 304 (exact, weak comparison, lists, "*", malformed), 304 framing on a
kept-alive and pipelined connection, Last-Modified and If-Modified-Since
(all three date formats, ignored beside If-None-Match), Cache-Control from
publisher.cache_control, and a new ETag once the totals change."""
import email.utils
import json
import os
import socket
import time
import unittest

from harness import TIMEOUT_MULT, TallyTestCase, wait_until


def read_response(f, head=False):
    """One response from a socket file: (status, headers, body). Framing by
    Content-Length only (tally sends no chunked answers); a 304 and any
    answer to HEAD have no body whatever their headers say (RFC 9112 6.3)."""
    line = f.readline()
    if not line:
        raise AssertionError("connection closed before a response")
    status = int(line.split()[1])
    hdrs = {}
    raw = []
    while True:
        ln = f.readline()
        if ln in (b"\r\n", b""):
            break
        raw.append(ln)
        k, _, v = ln.decode("latin-1").partition(":")
        hdrs[k.strip().lower()] = v.strip()
    body = b""
    if status != 304 and not head and "content-length" in hdrs:
        body = f.read(int(hdrs["content-length"]))
    return status, hdrs, body


class HttpCacheTest(TallyTestCase):
    def setUp(self):
        self.t = self.make(extra="cache_control = public, max-age=2, stale-while-revalidate=7")
        self.t.start()
        self.t.wait_counts({"one": {"a": 0, "b": 0, "c": 0}})
        # Start-up may render a poll more than once (its definition is
        # appended to the log at the first start, which moves its version):
        # wait until the file stays put, so an ETag read here is still
        # current when the test sends it back.
        def settled():
            a = os.stat(os.path.join(self.t.dir, "public", "polls", "one.json"))
            time.sleep(0.3)
            b = os.stat(os.path.join(self.t.dir, "public", "polls", "one.json"))
            return (a.st_ino, a.st_mtime_ns) == (b.st_ino, b.st_mtime_ns)
        wait_until(settled, 10, "the publisher to settle")

    def exchange(self, *requests, head=False):
        """Sends every request on one connection at once (pipelined), reads
        one response each."""
        with socket.create_connection(("127.0.0.1", self.t.port), timeout=10 * TIMEOUT_MULT) as s:
            s.sendall(b"".join(requests))
            f = s.makefile("rb")
            return [read_response(f, head=head) for _ in requests]

    @staticmethod
    def get(path="/polls/one.json", method="GET", **hdrs):
        lines = [f"{method} {path} HTTP/1.1", "Host: t"]
        lines += [f"{k.replace('_', '-')}: {v}" for k, v in hdrs.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def current(self):
        (st, h, body), = self.exchange(self.get())
        self.assertEqual(st, 200)
        return h, body

    def test_strong_etag_and_cache_control_on_every_result(self):
        for path in ["/polls/one.json", "/polls/one.html", "/index.html", "/"]:
            (st, h, body), = self.exchange(self.get(path))
            self.assertEqual(st, 200, path)
            self.assertRegex(h["etag"], r'^"[0-9a-f]+-[0-9a-f]+-[0-9a-f]+"$', path)
            self.assertEqual(h["cache-control"], "public, max-age=2, stale-while-revalidate=7")
            self.assertEqual(int(h["content-length"]), len(body))
            date = email.utils.parsedate_to_datetime(h["date"]).timestamp()
            self.assertLess(abs(date - time.time()), 5, h["date"])
            if "last-modified" in h:
                self.assertLessEqual(email.utils.parsedate_to_datetime(h["last-modified"]).timestamp(), date)
        self.assertEqual(json.loads(self.current()[1])["poll"], "one")

    def test_if_none_match_304_exact_weak_list_and_star(self):
        h, _ = self.current()
        tag = h["etag"]
        for inm in [tag, "W/" + tag, f'"nope", W/"x", {tag}', f'"a",{tag}', f"  {tag}  ", "*",
                    f', ,{tag}']:
            (st, h2, body), = self.exchange(self.get(If_None_Match=inm))
            self.assertEqual(st, 304, inm)
            self.assertEqual(body, b"")
            self.assertNotIn("content-length", h2)
            self.assertEqual(h2["etag"], tag)
            self.assertIn("date", h2)
            self.assertEqual(h2["cache-control"], "public, max-age=2, stale-while-revalidate=7")
        for inm in ['"nope"', tag[:-2] + '"', tag[1:-1], "W/" + tag[1:-1], '"a" junk, ' + tag,
                    f'"*", "x"', "", "W/", tag + tag]:
            (st, _, body), = self.exchange(self.get(If_None_Match=inm))
            self.assertEqual(st, 200, inm)
            self.assertGreater(len(body), 10)

    def test_304_framing_keeps_the_connection_in_step(self):
        h, body = self.current()
        tag = h["etag"]
        rs = self.exchange(self.get(If_None_Match=tag), self.get(), self.get(If_None_Match=tag),
                           self.get("/healthz"))
        self.assertEqual([r[0] for r in rs], [304, 200, 304, 200])
        self.assertEqual(rs[1][2], body)
        self.assertEqual(json.loads(rs[3][2]), {"status": "ok"})
        # HEAD: a 304 too, and no body either way.
        rs = self.exchange(self.get(method="HEAD", If_None_Match=tag), self.get(method="HEAD"),
                           self.get("/healthz", method="HEAD"), head=True)
        self.assertEqual([r[0] for r in rs], [304, 200, 200])
        self.assertEqual(int(rs[1][1]["content-length"]), len(body))

    def test_new_totals_new_etag(self):
        h, body = self.current()
        self.assertEqual(self.t.vote("one", "b", "v1")[0], 202)
        self.t.wait_counts({"one": {"a": 0, "b": 1, "c": 0}})
        (st, h2, body2), = self.exchange(self.get(If_None_Match=h["etag"]))
        self.assertEqual(st, 200)
        self.assertNotEqual(h2["etag"], h["etag"])
        self.assertEqual(json.loads(body2)["total"], 1)
        (st, _, _), = self.exchange(self.get(If_None_Match=h2["etag"]))
        self.assertEqual(st, 304)

    def test_last_modified_and_if_modified_since(self):
        # Last-Modified (seconds) comes once the file's second is over.
        h = wait_until(lambda: (lambda h: h if "last-modified" in h else None)(self.current()[0]),
                       5, "Last-Modified")
        lm = h["last-modified"]
        t = email.utils.parsedate_to_datetime(lm).timestamp()
        self.assertRegex(lm, r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT$")
        rfc850 = time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(t))
        asctime = time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(t))
        later = email.utils.formatdate(t + 60 if t + 60 < time.time() else t, usegmt=True)
        for ims in [lm, rfc850, asctime, later]:
            (st, h2, body), = self.exchange(self.get(If_Modified_Since=ims))
            self.assertEqual((st, body), (304, b""), ims)
            self.assertEqual(h2["last-modified"], lm)
        earlier = email.utils.formatdate(t - 1, usegmt=True)
        future = email.utils.formatdate(time.time() + 3600, usegmt=True)
        for ims in [earlier, future, "yesterday", lm + " x", lm.replace("GMT", "UTC")]:
            (st, _, _), = self.exchange(self.get(If_Modified_Since=ims))
            self.assertEqual(st, 200, ims)
        # If-None-Match wins: a mismatch is 200 even with a matching date.
        (st, _, _), = self.exchange(self.get(If_None_Match='"other"', If_Modified_Since=lm))
        self.assertEqual(st, 200)

    def test_symlinks_inside_are_served_outside_refused(self):
        """openat2 takes no symlink; the slow path then decides as before."""
        import os
        pub = os.path.join(self.t.dir, "public")
        secret = os.path.join(self.t.dir, "log", "secret.json")
        with open(secret, "w") as f:
            f.write('{"voter":"x"}')
        os.symlink(os.path.join(pub, "polls", "one.json"), os.path.join(pub, "inside.json"))
        os.symlink(secret, os.path.join(pub, "outside.json"))
        os.symlink(os.path.join(self.t.dir, "log"), os.path.join(pub, "logdir"))
        (st, h, body), = self.exchange(self.get("/inside.json"))
        self.assertEqual(st, 200)
        self.assertEqual(json.loads(body)["poll"], "one")
        self.assertEqual(h["content-type"], "application/json")
        for path in ["/outside.json", "/logdir/secret.json"]:
            (st, _, body), = self.exchange(self.get(path))
            self.assertEqual(st, 403, path)
            self.assertNotIn(b"voter", body)
        (st, _, _), = self.exchange(self.get("/polls/nope.json"))
        self.assertEqual(st, 404)
        (st, _, _), = self.exchange(self.get("/polls"))
        self.assertEqual(st, 404)


if __name__ == "__main__":
    unittest.main()
