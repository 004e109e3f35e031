"""The pages in a real headless Chromium (Debian's chromium + chromedriver,
driven by python3-selenium): vote by clicking on the vote page and read the
answer; watch the results page change without a reload while votes arrive
through the API; an older version never replaces a newer one. Screenshots
go to $TALLY_BUILD_DIR/test-output/browser/. Chromium missing is a failure,
not a skip: these pages are what a newcomer sees."""
import json
import os
import shutil
import sys
import time
import unittest

from harness import TIMEOUT_MULT, TallyTestCase, wait_until

try:
    import selenium  # noqa: F401
except ImportError:
    # Debian's python3-selenium, when another python3 runs the tests.
    sys.path.append("/usr/lib/python3/dist-packages")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
except ImportError as e:  # a failure, not a skip
    webdriver = None
    IMPORT_ERROR = e

OUT = os.path.join(os.environ.get("TALLY_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build")),
                   "test-output", "browser")

POLLS = """
[poll.demo]
title = Which act should win <tonight>?
options = red, green, blue
label.red = The Red Singers
label.green = Green & Machine
mode = one-per-voter

[poll.free]
title = Applause
options = clap, cheer
mode = unlimited
"""


def find_binary(*names):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


def make_driver():
    if webdriver is None:
        raise AssertionError(f"python3-selenium is missing ({IMPORT_ERROR}): scripts/install-deps")
    chrome = find_binary("chromium", "chromium-browser")
    driver = find_binary("chromedriver")
    if not chrome or not driver:
        raise AssertionError("chromium or chromedriver is missing: scripts/install-deps installs them")
    o = Options()
    o.binary_location = chrome
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=390,1100", "--no-first-run", "--disable-extensions"):
        o.add_argument(a)
    d = webdriver.Chrome(service=Service(driver), options=o)
    d.set_page_load_timeout(30 * TIMEOUT_MULT)
    return d


class BrowserTest(TallyTestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(OUT, exist_ok=True)
        cls.driver = make_driver()

    @classmethod
    def tearDownClass(cls):
        cls.driver.quit()

    def setUp(self):
        self.t = self.make(polls=POLLS)
        self.t.start("-s", "server.sse_heartbeat_ms=1000")
        self.base = f"http://127.0.0.1:{self.t.port}"

    def tearDown(self):
        self.t.stop()

    def shot(self, name):
        time.sleep(0.4)  # the bars' width transition
        self.driver.save_screenshot(os.path.join(OUT, name + ".png"))

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def row_text(self, opt):
        return self.js("var r=document.querySelector('[data-opt=\"'+arguments[0]+'\"] .lbl span:last-child');"
                       "return r?r.textContent:null;", opt)

    def test_vote_by_clicking_and_see_it_accepted(self):
        d = self.driver
        # A newcomer starts at /: a poll's title leads to its vote page.
        d.get(self.base + "/")
        d.find_element(By.LINK_TEXT, "Which act should win <tonight>?").click()
        wait_until(lambda: d.current_url.endswith("/vote/demo.html"), 10, "the vote page: " + d.current_url)
        self.assertIn("Which act should win <tonight>?", d.find_element(By.TAG_NAME, "h1").text)
        voter = d.find_element(By.ID, "voter").get_attribute("value")
        self.assertTrue(voter.startswith("web-"), voter)
        d.find_element(By.CSS_SELECTOR, 'button[value="green"]').click()
        ans = d.find_element(By.ID, "answer")
        wait_until(lambda: "is in" in ans.text, 10, "the accepted message: " + ans.text)
        self.assertIn("Green & Machine", ans.text)
        self.assertIn("ok", ans.get_attribute("class"))
        self.shot("vote-accepted")
        # The vote is in the log and counted: the published totals say so.
        self.t.wait_counts({"demo": {"red": 0, "green": 1, "blue": 0}}, timeout=10)
        # The same voter again: one-per-voter still answers 202 (the first
        # vote counts) and the count does not move.
        d.find_element(By.CSS_SELECTOR, 'button[value="red"]').click()
        wait_until(lambda: "The Red Singers" in ans.text, 10, "the second answer")
        # The voter id survives a reload (localStorage).
        d.refresh()
        self.assertEqual(d.find_element(By.ID, "voter").get_attribute("value"), voter)
        # An error answer shows the server's message: an unknown option,
        # forged into a button.
        ans = d.find_element(By.ID, "answer")
        self.js("document.querySelector('button[value=\"blue\"]').value='nope'")
        d.find_element(By.CSS_SELECTOR, 'button[value="nope"]').click()
        wait_until(lambda: "no option" in ans.text, 10, "the server's message: " + ans.text)
        self.assertIn("err", ans.get_attribute("class"))
        self.t.wait_counts({"demo": {"red": 0, "green": 1, "blue": 0}}, timeout=10)

    def test_too_many_requests_and_retry_later_are_told_apart(self):
        d = self.driver
        d.get(self.base + "/vote/free.html")
        ans = d.find_element(By.ID, "answer")
        d.find_element(By.CSS_SELECTOR, 'button[value="clap"]').click()
        wait_until(lambda: "is in" in ans.text, 10, "the first vote: " + ans.text)
        # A second tally on the same dirs is impossible; restart this one
        # with a rate limit of one vote per second and a burst of one.
        self.t.stop()
        self.t.start("-s", "limits.ip_rate=1", "-s", "limits.ip_burst=1")
        d.find_element(By.CSS_SELECTOR, 'button[value="clap"]').click()
        wait_until(lambda: "is in" in ans.text, 10, "the vote within the burst")
        self.js("arguments[0].textContent = ''", ans)
        d.find_element(By.CSS_SELECTOR, 'button[value="cheer"]').click()
        wait_until(lambda: "Too many votes" in ans.text, 10, "the 429 message: " + ans.text)
        self.assertIn("in 1 s", ans.text, "Retry-After is shown")
        # The log vanishes: votes get 503, the page says to retry later.
        os.unlink(os.path.join(self.t.dir, "log", "votes.log"))
        wait_until(lambda: self.t.request("GET", "/healthz")[0] == 503, 10, "the log to fail")
        time.sleep(1.1)  # a token again
        d.find_element(By.CSS_SELECTOR, 'button[value="cheer"]').click()
        wait_until(lambda: "retry in a moment" in ans.text, 10, "the 503 message: " + ans.text)
        self.shot("vote-retry-later")

    def test_token_from_the_fragment_goes_in_the_authorization_header(self):
        d = self.driver
        d.get(self.base + "/vote/free.html#token=abc.def.ghi")
        # The fragment is taken out of the address bar.
        wait_until(lambda: "token" not in d.current_url, 5, "the token to leave the URL")
        # Capture the request the page makes.
        self.js("window.__h=null;var f=window.fetch;window.fetch=function(u,o){window.__h=o&&o.headers;return f(u,o);};")
        d.find_element(By.CSS_SELECTOR, 'button[value="clap"]').click()
        wait_until(lambda: self.js("return window.__h"), 5, "the vote request")
        self.assertEqual(self.js("return window.__h.Authorization"), "Bearer abc.def.ghi")

    def test_results_update_live_without_reload_and_never_go_back(self):
        d = self.driver
        d.get(self.base + "/polls/demo.html")
        self.js("window.__marker = 'same page';")
        wait_until(lambda: self.js("return document.getElementById('live').textContent") == "live", 10,
                   "the event stream to deliver")
        v0 = int(self.js("return document.body.getAttribute('data-version')"))
        for i in range(3):
            st, _ = self.t.vote("demo", "red", f"voter-{i}")
            self.assertEqual(st, 202)
        st, _ = self.t.vote("demo", "blue", "voter-9")
        self.assertEqual(st, 202)
        wait_until(lambda: self.row_text("red") == "3 (75.0%)", 10,
                   "the red bar to show 3 votes: " + str(self.row_text("red")))
        wait_until(lambda: self.row_text("blue") == "1 (25.0%)", 10, "the blue bar")
        self.assertEqual(self.js("return document.getElementById('total').textContent"), "4")
        width = self.js("return document.querySelector('[data-opt=\"red\"] .fill').style.width")
        self.assertEqual(width, "75%")
        # No navigation happened: the page's own state is still there.
        self.assertEqual(self.js("return window.__marker"), "same page")
        v1 = int(self.js("return document.body.getAttribute('data-version')"))
        self.assertGreater(v1, v0)
        self.shot("results-live")

        # An older version (a late fetch, a replayed event) never replaces
        # the one shown: hand the page's own handler the JSON of a version
        # before the current one, with other counts.
        old = json.loads(json.dumps(self.t.published("demo")))
        self.assertEqual(old["version"], v1)
        old["version"] = v1 - 1
        for o, n in zip(old["options"], (130, 70, 100)):
            o["votes"] = n
        old["total"] = 300
        self.assertFalse(self.js("return window.tallyApply(arguments[0])", old))
        old["version"] = v1  # the same version again: nothing to do either
        self.assertFalse(self.js("return window.tallyApply(arguments[0])", old))
        self.assertEqual(self.row_text("red"), "3 (75.0%)")
        self.assertEqual(int(self.js("return document.body.getAttribute('data-version')")), v1)
        # A newer one is taken, and its per-minute series (as the engine's
        # results carry it: sparse buckets, counts in the options' order)
        # drawn as one line per option.
        old["version"] = v1 + 1
        t0 = (int(time.time() * 1000) // 60000 - 5) * 60000
        old["series"] = {"bucket_ms": 60000, "buckets": [
            {"t": t0, "counts": [20, 5, 0]}, {"t": t0 + 60000, "counts": [50, 30, 40]},
            {"t": t0 + 3 * 60000, "counts": [60, 35, 60]}]}
        self.assertTrue(self.js("return window.tallyApply(arguments[0])", old))
        self.assertEqual(self.row_text("red"), "130 (43.3%)")
        lines = self.js("return Array.prototype.map.call(document.querySelectorAll('#chart polyline'),"
                        "function(p){return p.getAttribute('points').split(' ').length})")
        self.assertEqual(lines, [4, 4, 4], "one line per option over 4 minutes (one without votes)")
        self.shot("results-chart")
        # ...and then the server's real next version is older than that
        # forged one: the page keeps what it shows (never goes back).
        st, _ = self.t.vote("demo", "green", "voter-10")
        self.assertEqual(st, 202)
        wait_until(lambda: self.t.published_counts("demo")["green"] == 1, 10, "the green vote")
        time.sleep(0.3)  # give a (wrongly taken) event time to land
        if self.t.published("demo")["version"] <= v1 + 1:
            self.assertEqual(self.row_text("red"), "130 (43.3%)")

    def test_results_fall_back_to_the_json_when_streams_fail(self):
        d = self.driver
        # A browser without EventSource (or a host that cannot stream)
        # still follows the results: by fetching the JSON.
        added = d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                  {"source": "delete window.EventSource; window.EventSource = undefined;"})
        try:
            d.get(self.base + "/polls/free.html")
            wait_until(lambda: "polling" in self.js("return document.getElementById('live').textContent"), 10,
                       "the fallback")
            for _ in range(5):
                self.assertEqual(self.t.vote("free", "cheer")[0], 202)
            wait_until(lambda: self.row_text("cheer") == "5 (100.0%)", 15 * TIMEOUT_MULT,
                       "the fetched JSON to show 5 votes: " + str(self.row_text("cheer")))
            # The chart drew one line per option from the per-minute series
            # when the results carry one, or says there is none.
            n = self.js("return document.querySelectorAll('#chart polyline, #chart text').length")
            self.assertGreater(n, 0)
            self.shot("results-fallback")
        finally:
            d.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": added["identifier"]})


if __name__ == "__main__":
    unittest.main()
