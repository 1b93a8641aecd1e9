"""The watch page in a real browser: Debian's headless Chromium, driven by Selenium through the
system chromedriver (no browser download). Skipped, with the reason, where either is missing."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
APPEARS_WITHIN_S = 2.0

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="no Chromium here: apt-get install chromium chromium-driver (.ci/run does)"),
]

# the page's status badge and step, found through Bokeh's shadow DOM
_PAGE_STATE_JS = """
function find(root, selector) {
  const hit = root.querySelector(selector);
  if (hit) return hit;
  for (const el of root.querySelectorAll('*')) {
    if (el.shadowRoot) { const inner = find(el.shadowRoot, selector); if (inner) return inner; }
  }
  return null;
}
const status = find(document, 'span.status'), step = find(document, '#step');
return [status ? status.textContent : null, step ? step.textContent : null, Date.now() / 1000];
"""


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test extra: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1300"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _page_state(driver) -> tuple[str | None, int | None, float]:
    """Status and step as the page shows them, and the browser's clock (unix s) when it looked:
    the WebDriver round trip after that is not the page's delay."""
    status, step, seen_at_s = driver.execute_script(_PAGE_STATE_JS)
    return status, int(step) if step else None, float(seen_at_s)


def _wait(condition, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout_s} s")


def test_page_of_a_running_training_shows_new_steps(tmp_path, browser):
    pytest.importorskip("bokeh")
    from labpgt.runfile import RunReader

    run_path = tmp_path / "run.h5"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    train = subprocess.Popen([sys.executable, "-m", "labpgt.cli", "train", "--watch", "--budget", "5000000",
                              "--out", str(run_path), "--no-progress"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    watcher_pid = None
    try:
        for _ in range(20):  # the watcher's line comes first, unless something is said before it
            line = train.stdout.readline()
            found = re.match(r"watch: (http://127\.0\.0\.1:\d+/) .* process (\d+);", line)
            if found or not line:
                break
        assert found, f"train --watch printed {line!r}; stderr: {train.stderr.read() if train.poll() else ''}"
        url, watcher_pid = found.group(1), int(found.group(2))
        browser.get(url)
        _wait(lambda: _page_state(browser)[0] == "running", 60, "status 'running' on the page")
        assert browser.title.startswith("running · step ")

        # a newly committed step appears within APPEARS_WITHIN_S; on a loaded machine one poll can
        # stall, so up to three consecutive new steps are timed and the best must make it
        delays = []
        with RunReader(run_path) as reader:  # the test's own SWMR reader: what is committed now
            for _ in range(3):
                seen = len(reader.steps()["step"])

                def new_step():
                    reader.refresh()
                    steps = reader.steps()["step"]
                    return int(steps[-1]) if len(steps) > seen else None
                committed = _wait(new_step, 30, "a newly committed step in the run file")
                committed_at_s = time.time()

                def shown():
                    _, step, seen_at_s = _page_state(browser)
                    return seen_at_s if (step or 0) >= committed else None
                delays.append(_wait(shown, APPEARS_WITHIN_S + 5, f"step {committed} on the page") - committed_at_s)
                if delays[-1] <= APPEARS_WITHIN_S:
                    break
        assert min(delays) <= APPEARS_WITHIN_S, f"new steps appeared after {[round(d, 2) for d in delays]} s"
        browser.save_screenshot(str(tmp_path / "watch-running.png"))
        assert (tmp_path / "watch-running.png").stat().st_size > 10_000

        train.send_signal(signal.SIGINT)  # finishes the step, checkpoints, marks the run aborted
        train.communicate(timeout=60)
        _wait(lambda: _page_state(browser)[0] == "aborted", 10, "status 'aborted' on the page")
    finally:
        if train.poll() is None:
            train.kill()
            train.communicate()
        if watcher_pid is not None:
            os.kill(watcher_pid, signal.SIGTERM)
