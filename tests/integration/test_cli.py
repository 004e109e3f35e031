"""The command line: help, exit codes, config errors that name the key and
line, replay's lock and cut-off, and 503 with Retry-After under overload."""
import datetime
import os
import subprocess
import threading
import socket
import time
import unittest

from harness import TALLY_BIN, TallyTestCase, wait_until


def tally(*args, **kw):
    return subprocess.run([TALLY_BIN, *args], capture_output=True, text=True, timeout=60, **kw)


class Cli(TallyTestCase):
    def test_help(self):
        r = tally("--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("run", r.stdout)
        self.assertIn("replay", r.stdout)
        for cmd in ("run", "replay"):
            r = tally(cmd, "--help")
            self.assertEqual(r.returncode, 0)
            self.assertIn(f"usage: tally {cmd}", r.stdout)
        r = tally("--help-config")
        self.assertEqual(r.returncode, 0)
        for key in ("listen", "snapshot_interval_ms", "min_interval_ms", "brokers", "label.OPTION"):
            self.assertIn(key, r.stdout)

    def test_usage_errors_exit_2(self):
        for args, needle in [((), "usage"), (("frobnicate",), "unknown command"),
                             (("run",), "-c FILE is required"), (("run", "-c"), "needs a value"),
                             (("run", "--bogus", "-c", "x"), "unknown option"),
                             (("run", "-c", "/nonexistent.ini"), "/nonexistent.ini"),
                             (("replay", "-c", "x", "extra"), "unexpected argument")]:
            with self.subTest(args=args):
                r = tally(*args)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(needle, r.stderr)

    def test_config_errors_name_key_and_line(self):
        t = self.make()
        cases = [
            ("[server]\nlisten = nope\n", ":2:", "server.listen"),
            ("[engine]\nthreads = many\n", ":2:", "engine.threads"),
            ("[engine]\nthreads = 0\n", ":2:", "out of range"),
            ("[log]\nfsync = maybe\n", ":2:", "log.fsync"),
            ("[server]\nlisen = 1\n", ":2:", "server.lisen"),
            ("[sever]\nlisten = 1\n", ":2:", "[sever]"),
            ("[poll.p]\noptions = a, b\nmode = sometimes\n", ":3:", "poll.p.mode"),
            ("[poll.p]\noptions = a, b c\n", ":2:", "option id 'b c'"),
            ("[poll.p]\noptions = a, a\n", ":2:", "listed twice"),
            ("[poll.p]\noptions = a\nlabel.z = Z\n", ":3:", "label.z"),
            ("[poll.bad id]\noptions = a\n", ":1:", "poll id"),
            ("[poll.p]\ntitle = no options\n", "", "poll.p: 'options' is required"),
            ("[poll.p]\noptions = a\ncolour = red\n", ":3:", "colour"),
            ("just garbage\n", ":1:", "syntax error"),
        ]
        for i, (text, line, needle) in enumerate(cases):
            with self.subTest(text=text):
                path = os.path.join(t.dir, f"bad{i}.ini")
                with open(path, "w") as f:
                    f.write(text)
                for cmd in ("run", "replay"):
                    r = tally(cmd, "-c", path)
                    self.assertEqual(r.returncode, 2, r.stderr)
                    self.assertIn(needle, r.stderr)
                    self.assertIn(f"{path}{line}", r.stderr)
        for bad, needle in [("engine.threads=x", "engine.threads"), ("nodot", "section.key=value"),
                            ("poll.one.mode=x", "poll.one.mode"), ("server.nope=1", "server.nope")]:
            with self.subTest(override=bad):
                r = tally("run", "-c", t.config, "-s", bad)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(needle, r.stderr)
                self.assertIn(f"-s {bad}", r.stderr)

    def test_replay_refuses_while_running(self):
        t = self.make().start()
        r = t.replay()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("in use by another tally process", r.stderr)
        t.stop()

    def test_partition_count_is_pinned(self):
        t = self.make().start()
        t.stop()
        r = tally("run", "-c", t.config, "-s", "log.partitions=8")
        self.assertEqual(r.returncode, 2)  # a configuration error (issue 7, item 8)
        self.assertIn("log.partitions", r.stderr)

    def test_replay_until(self):
        t = self.make().start()
        for i in range(5):
            self.assertEqual(t.vote("free", "p")[0], 202)
        # Timestamps have ms resolution: make the cut-off unambiguous.
        time.sleep(0.01)
        cut = datetime.datetime.now(datetime.timezone.utc)
        time.sleep(0.01)
        for i in range(3):
            self.assertEqual(t.vote("free", "q")[0], 202)
        t.wait_counts({"free": {"p": 5, "q": 3}})
        t.stop()
        r = t.replay("--until", cut.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("3 after it not counted", r.stdout)
        self.assertEqual(t.published_counts("free"), {"p": 5, "q": 0})
        r = t.replay("--until", "yesterday")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--until", r.stderr)
        r = t.replay()
        self.assertEqual(t.published_counts("free"), {"p": 5, "q": 3})

    def test_overload_answers_503_with_retry_after(self):
        # One vote in flight at a time and a slow group commit: concurrent
        # clients must see 503 + Retry-After, never a hang, and every 202 counts.
        t = self.make(extra="[server]\nmax_pending = 1\n[log]\ngroup_commit_us = 20000\n").start()
        results, lock = [], threading.Lock()

        def client(i):
            c = t.connect()
            for k in range(20):
                st, body = t.vote("free", "p", conn=c)
                with lock:
                    results.append((st, t.last_headers.get("Retry-After"), body))
            c.close()
        ths = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        codes = [r[0] for r in results]
        self.assertTrue(set(codes) <= {202, 503}, codes)
        self.assertIn(503, codes)
        for st, retry, body in results:
            if st == 503:
                self.assertEqual(retry, "1")
                self.assertEqual(body["error"], "log_unavailable")
        t.wait_counts({"free": {"p": codes.count(202), "q": 0}})
        t.stop()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    return path


class ConfigSafety(TallyTestCase):
    """Issue 7 item 7: path keys, overlapping directories, long ids, duplicate
    declarations, NUL bytes, unreadable files and malformed listen values are
    refused at start with exit 2 (1 when the system refuses a directory)."""

    def refused(self, t, *sets, code=2, needles=(), cmds=("replay", "run")):
        for cmd in cmds:
            args = [cmd, "-c", t.config]
            for s in sets:
                args += ["-s", s]
            r = tally(*args, cwd=t.dir)
            self.assertEqual(r.returncode, code, f"{args}: {r.stderr}")
            for n in needles:
                self.assertIn(n, r.stderr, args)
        return r

    def test_path_keys_must_not_be_empty_or_files(self):
        t = self.make()
        for key in ("log.dir", "engine.snapshot_dir", "publisher.dir"):
            if key == "publisher.dir" and os.geteuid() == 0:
                continue  # a regression would publish into / (the unit test covers it)
            with self.subTest(key=key):
                self.refused(t, f"{key}=", needles=(key, "empty"))
        afile = write(os.path.join(t.dir, "afile"), "x")
        for key in ("log.dir", "engine.snapshot_dir", "publisher.dir"):
            with self.subTest(key=key, file=True):
                self.refused(t, f"{key}={afile}", needles=(key, afile, "not a directory"))
                self.refused(t, f"{key}={afile}/sub", needles=(key, "not a directory"))
        # Refused before anything was created.
        self.assertEqual(sorted(os.listdir(t.dir)), ["afile", "tally.ini"])

    def test_written_dirs_must_be_writable(self):
        # /sys/kernel refuses new files even to root, where access() says yes.
        if not os.path.isdir("/sys/kernel"):
            self.skipTest("no /sys/kernel")
        t = self.make()
        for value in ("/sys/kernel", "/sys/kernel/tally-test"):
            with self.subTest(value=value):
                r = self.refused(t, f"engine.snapshot_dir={value}", code=1,
                                 needles=("engine.snapshot_dir", value), cmds=("run",))
                r = self.refused(t, f"log.dir={value}", code=1, needles=("log.dir", value),
                                 cmds=("run",))

    def test_publisher_dir_must_not_overlap_private_data(self):
        t = self.make()
        log, snap = os.path.join(t.dir, "log"), os.path.join(t.dir, "snap")
        os.makedirs(log)
        os.symlink(log, os.path.join(t.dir, "loglink"))
        os.symlink(t.dir, os.path.join(t.dir, "toplink"))
        cases = [
            (log, "publisher.dir"),                             # equal
            (log + "/", "publisher.dir"),                       # equal, spelt differently
            (os.path.join(t.dir, "log", "..", "log"), "log.dir"),
            (t.dir, "log.dir"),                                 # contains the log
            (os.path.join(log, "public"), "log.dir"),           # inside the log, not yet there
            (os.path.join(t.dir, "loglink"), "log.dir"),        # a symlink to the log
            (os.path.join(t.dir, "loglink", "new", "deeper"), "log.dir"),
            (os.path.join(t.dir, "toplink"), "log.dir"),        # a symlink containing it
            (snap, "engine.snapshot_dir"),                      # equal to the snapshots
            (os.path.join(snap, "www"), "engine.snapshot_dir"),
        ]
        for pub, needle in cases:
            with self.subTest(pub=pub):
                self.refused(t, f"publisher.dir={pub}", needles=("publisher.dir", needle))
        # Snapshots and the log in one directory: each store cleans up its own
        # temporary files and would remove the other's.
        self.refused(t, f"engine.snapshot_dir={log}", needles=("engine.snapshot_dir", "log.dir"))
        # Siblings whose names share a prefix are fine.
        t.args += ["-s", f"publisher.dir={log}public", "-s", f"engine.snapshot_dir={log}snap"]
        t.start().stop()
        self.assertTrue(os.path.isfile(os.path.join(log + "public", "index.html")))

    def test_publisher_dir_bind_mounted_on_the_log_is_refused(self):
        # Names differ, the directory is the same: found by inode.
        import shutil as sh
        if not sh.which("unshare") or subprocess.run(["unshare", "-m", "true"],
                                                      capture_output=True).returncode != 0:
            self.skipTest("no mount namespaces here")
        t = self.make()
        log, pub = os.path.join(t.dir, "log"), os.path.join(t.dir, "www")
        os.makedirs(log)
        os.makedirs(pub)
        for cmd in ("replay", "run"):
            r = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind "$1" "$2" && exec "$3" "$4" -c "$5" '
                                '-s publisher.dir="$2"', "sh", log, pub, os.path.abspath(TALLY_BIN), cmd, t.config],
                               capture_output=True, text=True, timeout=60, cwd=t.dir)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("publisher.dir", r.stderr)
            self.assertIn("must not be, contain or lie inside log.dir", r.stderr)

    def test_config_file_must_be_a_readable_file(self):
        t = self.make()
        for cmd in ("replay", "run"):
            r = tally(cmd, "-c", t.dir, cwd=t.dir)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(t.dir, r.stderr)
            self.assertIn("directory", r.stderr)
        if os.path.exists("/proc/self/mem"):  # opens, then every read fails with EIO
            r = tally("replay", "-c", "/proc/self/mem", cwd=t.dir)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("/proc/self/mem", r.stderr)
            self.assertIn("Input/output error", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(t.dir, "run")), "ran with the defaults")

    def test_nul_bytes_are_refused_with_their_line(self):
        t = self.make()
        for i, text in enumerate([b"[poll.p]\ntitle = ab\0cd\noptions = a\n",
                                  b"[poll.p]\noptions = a\n\0\n",
                                  b"; c\n[ser\0ver]\nthreads = 1\n",
                                  b"[server]\nthreads = 1\0\n"]):
            path = write(os.path.join(t.dir, f"nul{i}.ini"), text)
            line = text[:text.index(b"\0")].count(b"\n") + 1
            for cmd in ("replay", "run"):
                with self.subTest(text=text, cmd=cmd):
                    r = tally(cmd, "-c", path, cwd=t.dir)
                    self.assertEqual(r.returncode, 2, r.stderr)
                    self.assertIn(f"{path}:{line}:", r.stderr)
                    self.assertIn("NUL", r.stderr)

    def test_duplicate_declarations_are_refused_with_their_line(self):
        t = self.make()
        cases = [
            ("[poll.p]\noptions = a\n[poll.q]\noptions = b\n[poll.p]\ntitle = again\n", 5,
             ("poll.p", "line 1")),
            ("[poll.p]\noptions = a\n[poll.p]\n", 3, ("poll.p", "line 1")),
            ("[poll.p]\noptions = a\ntitle = A\ntitle = B\n", 4, ("poll.p.title", "line 3")),
            ("[poll.p]\noptions = a\nmode = changeable\nmode = unlimited\n", 4, ("poll.p.mode",)),
            ("[poll.p]\noptions = a\noptions = a, b\n", 3, ("poll.p.options",)),
            ("[poll.p]\noptions = a\nlabel.a = A\nlabel.a = B\n", 4, ("poll.p.label.a",)),
            ("[poll.p]\noptions = a, b, a\n", 2, ("listed twice",)),
        ]
        for i, (text, line, needles) in enumerate(cases):
            path = write(os.path.join(t.dir, f"dup{i}.ini"), text)
            for cmd in ("replay", "run"):
                with self.subTest(text=text, cmd=cmd):
                    r = tally(cmd, "-c", path, cwd=t.dir)
                    self.assertEqual(r.returncode, 2, r.stderr)
                    self.assertIn(f"{path}:{line}:", r.stderr)
                    for n in needles:
                        self.assertIn(n, r.stderr)

    def test_ids_of_64_characters_work_end_to_end(self):
        # inih keeps 49 bytes of a section name: these two ids share 50.
        common = "p" * 50
        p1, p2 = common + "a" * 14, common + "b" * 10
        o1, o2 = "o" * 63 + "1", "o" * 63 + "2"
        self.assertEqual(len(p1), 64)
        polls = (f"[poll.{p1}]\ntitle = First\noptions = {o1},\n  {o2}\nlabel.{o2} = Second option\n"
                 f"mode = unlimited\n[poll.{p2}]\noptions = x, {o1}\n")
        t = self.make(polls=polls).start()
        voter = "v" * 64
        for poll, opt in ((p1, o1), (p1, o2), (p1, o2), (p2, o1)):
            self.assertEqual(t.vote(poll, opt, voter=voter)[0], 202, (poll, opt))
        t.wait_counts({p1: {o1: 1, o2: 2}, p2: {"x": 0, o1: 1}})
        j = t.published(p1)
        self.assertEqual(j["title"], "First")
        self.assertEqual([o["label"] for o in j["options"]], [o1, "Second option"])
        st, _ = t.request("GET", f"/polls/{p2}.json")
        self.assertEqual(st, 200)
        t.stop()
        r = t.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"poll {p1} (unlimited): total 3", r.stdout)
        self.assertIn(f"poll {p2} (one-per-voter): total 1", r.stdout)
        # 65 characters: refused, naming the limit.
        for text in (f"[poll.{p1}x]\noptions = a\n", f"[poll.p]\noptions = {o1}x\n"):
            path = write(os.path.join(t.dir, "long.ini"), text)
            r = tally("replay", "-c", path, cwd=t.dir)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(f"{path}:", r.stderr)
            self.assertIn("1-64", r.stderr)

    def test_malformed_listen_values_are_refused_at_config_time(self):
        t = self.make()
        for value in ("[:80", "[::1", "[::1]", "[::1]:", "[::1]80", "[]:80", "[::1]x:80", "::1:80",
                      "host:", "host:65536", "host:99999999999", "host:-1", "host:+80", "host:8o",
                      "ho st:80", ":80", "localhost", "", "[" * 300 + ":80", "h" * 300 + ":80"):
            with self.subTest(value=value):
                self.refused(t, f"server.listen={value}", needles=("server.listen",), cmds=("run",))

    def test_help_config_documents_the_declarations(self):
        r = tally("--help-config")
        self.assertEqual(r.returncode, 0)
        for needle in ("[poll.ID]", "1-64", "declared once", "one-per-voter", "changeable",
                       "unlimited", "must not be, contain or lie inside"):
            self.assertIn(needle, r.stdout)


if __name__ == "__main__":
    unittest.main()
