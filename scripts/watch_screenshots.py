"""The README's pictures of ``labpgt watch``: the page during a run, and the same run completed.

Runs ``labpgt train --watch`` on the embedded simulated ring, photographs the page with Debian's
headless Chromium (Selenium, the system chromedriver) while the run goes and again when it has
completed, and writes palette PNGs (small enough to commit):

    python scripts/watch_screenshots.py            # -> docs/watch-running.png, docs/watch-completed.png
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_watch import start_browser  # noqa: E402
from test_watch_browser import CHROMIUM, CHROMEDRIVER, _page_state  # noqa: E402


def shoot(driver, path: Path) -> None:
    driver.save_screenshot(str(path))
    # 256 colours: the page is flat colours and lines; a fraction of the full-colour size
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    print(f"{path}: {path.stat().st_size // 1024} kB")


def wait_for(condition, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout_s} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=30000)
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    out = Path(args.out)
    run_path = Path(tempfile.mkdtemp(prefix="watch-shots-")) / "iris-node-s0.h5"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    train = subprocess.Popen([sys.executable, "-m", "labpgt.cli", "train", "--estimator", "node", "--watch", "--budget", str(args.budget),
                              "--out", str(run_path), "--no-progress"], env=env, stdout=subprocess.PIPE, text=True)
    found = re.match(r"watch: (\S+) .* process (\d+);", train.stdout.readline())
    url, watcher = found.group(1), int(found.group(2))
    driver, _ = start_browser(CHROMIUM, CHROMEDRIVER)
    try:
        driver.get(url)
        wait_for(lambda: (_page_state(driver)[1] or 0) >= 120, 300)
        time.sleep(3.5)  # one more round of spectra and knob clouds
        shoot(driver, out / "watch-running.png")
        train.communicate(timeout=900)
        wait_for(lambda: _page_state(driver)[0] == "completed", 30)
        time.sleep(4)
        shoot(driver, out / "watch-completed.png")
    finally:
        driver.quit()
        if train.poll() is None:
            train.send_signal(signal.SIGTERM)
        os.kill(watcher, signal.SIGTERM)
    return 0


if __name__ == "__main__":
    sys.exit(main())
