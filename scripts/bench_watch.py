"""Benchmark: does watching a run slow it? The training loop's rate with 0 and with N pages open.

One training run (``labpgt train`` on the embedded simulated ring, instruments at zero latency:
the loop is CPU-bound, the case most sensitive to anything else on the machine) and one
``labpgt watch`` of its file, each in its own process. One headless Chromium (Debian's, driven
by Selenium) stays up the whole time; the two conditions differ only in the pages it has open:

- ``0 pages``: one tab on about:blank (the watcher serves nothing);
- ``N browser pages``: N tabs on the run's page (each a Bokeh session updating live);
- ``N clients, no rendering``: N Bokeh sessions held by a Python client that receives every
  update and draws nothing: the watcher's side of N pages open on another computer.

Rounds rotate the order of the conditions (A B C, B C A, C A B, ...). In each window, after a settling time
(pages loaded), the rate is read from the run file itself: training measurements spent between
the last committed step before and after the window, divided by the steps' own time stamps.
The CPU time used by the watcher and by the browser in each window is recorded too.

    python scripts/bench_watch.py                       # 4 rounds x 3 windows of 10 s, N = 5
    python scripts/bench_watch.py --rounds 2 --window 5  # a quick look

Results: scripts/results/bench_watch.json (``--out``); a Markdown table is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _machine import cpu_model  # noqa: E402

from labpgt.runfile import RunReader  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError):
            pass
    return total / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """pid and every process below it (parents read from /proc/*/stat)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(child for child, ppid in parent.items() if ppid == p)
    return out


def last_step(reader: RunReader) -> tuple[int, float]:
    reader.refresh()
    steps = reader.steps()
    return int(steps["measurements"][-1]), float(steps["time_s"][-1])


def start_browser(chromium: str, chromedriver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1300"):
        options.add_argument(arg)
    service = Service(chromedriver)
    return webdriver.Chrome(service=service, options=options), service


def set_pages(driver, url: str | None, n: int) -> None:
    """Close every tab but one, then open the run's page in n tabs (n = 0: about:blank)."""
    handles = driver.window_handles
    for handle in handles[1:]:
        driver.switch_to.window(handle)
        driver.close()
    driver.switch_to.window(handles[0])
    driver.get("about:blank")
    for i in range(n):
        if i:
            driver.switch_to.new_window("tab")
        driver.get(url)


CLIENTS_SCRIPT = """
import sys
from bokeh.client import pull_session
sessions = [pull_session(url=sys.argv[1]) for _ in range(int(sys.argv[2]))]
print("connected", flush=True)
sessions[0]._loop_until_closed()  # Bokeh 3 keeps its client loop private; this receives every update
"""


def start_clients(url: str, n: int, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CLIENTS_SCRIPT, url, str(n)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    proc.stdout.readline()
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured per condition and round")
    parser.add_argument("--settle", type=float, default=7.0,
                        help="seconds after changing the pages, not measured (a closed page's session lingers ~7 s)")
    parser.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_watch.json"))
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        print("error: needs Chromium and chromedriver (apt-get install chromium chromium-driver)", file=sys.stderr)
        return 2

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    work = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    run_path = work / "run.h5"
    train = subprocess.Popen([sys.executable, "-m", "labpgt.cli", "train", "--estimator", "node", "--budget", "100000000", "--out",
                              str(run_path), "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    while not run_path.exists() and train.poll() is None:
        time.sleep(0.1)
    watch = subprocess.Popen([sys.executable, "-m", "labpgt.cli", "watch", str(run_path)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = re.search(r"(http://\S+)", watch.stdout.readline()).group(1)
    driver, service = start_browser(chromium, chromedriver)
    browser_pid = service.process.pid
    n = args.pages
    conditions = ("0 pages", f"{n} browser pages", f"{n} clients, no rendering")
    windows = []
    load_before = os.getloadavg()
    try:
        reader = RunReader(run_path)
        time.sleep(args.settle)
        for round_index in range(args.rounds):
            k = round_index % len(conditions)  # each round starts with another condition
            for condition in conditions[k:] + conditions[:k]:
                clients = None
                set_pages(driver, url, n if condition == conditions[1] else 0)
                if condition == conditions[2]:
                    clients = start_clients(url, n, env)
                time.sleep(args.settle)
                browser_pids = descendants(browser_pid)  # the same processes at both ends of the window
                ours = [watch.pid, train.pid] + ([clients.pid] if clients else [])
                cpu0 = [cpu_seconds([p]) for p in ours] + [cpu_seconds(browser_pids)]
                m0, t0 = last_step(reader)
                wall0 = time.monotonic()
                time.sleep(args.window)
                m1, t1 = last_step(reader)
                wall = time.monotonic() - wall0
                cpu1 = [cpu_seconds([p]) for p in ours] + [cpu_seconds(browser_pids)]
                share = [(b - a) / wall for a, b in zip(cpu0, cpu1)]
                rate = (m1 - m0) / (t1 - t0)
                windows.append({"round": round_index, "condition": condition, "measurements_per_s": rate,
                                "watcher_cpu_share": share[0], "train_cpu_share": share[1],
                                "clients_cpu_share": share[2] if clients else 0.0, "browser_cpu_share": share[-1],
                                "load_average_1min": os.getloadavg()[0]})
                if clients:
                    clients.terminate()
                    clients.wait(timeout=30)
                w = windows[-1]
                print(f"round {round_index} {condition:28s} {rate:8.1f} measurements/s  watcher "
                      f"{w['watcher_cpu_share']:.1%} browser {w['browser_cpu_share']:.1%} clients "
                      f"{w['clients_cpu_share']:.1%} train {w['train_cpu_share']:.1%} load {w['load_average_1min']:.1f}",
                      flush=True)
        reader.close()
    finally:
        driver.quit()
        train.send_signal(signal.SIGTERM)
        train.wait(timeout=60)
        watch.terminate()
        watch.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    def summary(condition):
        rows = [w for w in windows if w["condition"] == condition]
        rates = [w["measurements_per_s"] for w in rows]
        return {"condition": condition, "windows": len(rows), "median_measurements_per_s": statistics.median(rates),
                "min": min(rates), "max": max(rates),
                **{f"median_{who}_cpu_share": statistics.median(w[f"{who}_cpu_share"] for w in rows)
                   for who in ("watcher", "browser", "clients", "train")}}

    def ratios(condition):
        """Per round: the condition's rate over the 0-pages rate of the same round."""
        rate = {(w["round"], w["condition"]): w["measurements_per_s"] for w in windows}
        return [rate[(r, condition)] / rate[(r, conditions[0])] for r in range(args.rounds)]

    summaries = [summary(c) for c in conditions]
    result = {
        "what": "training loop rate (embedded simulated ring, zero-latency instruments) with 0 watch pages, N "
                "pages in headless Chromium on the same machine, and N Bokeh clients that receive every update "
                "but draw nothing (as pages on another computer)",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1min_before": load_before[0], "load_average_1min_after": os.getloadavg()[0]},
        "settings": vars(args), "windows": windows, "summary": summaries,
        "ratios": {c: {"ratio_of_medians": summary(c)["median_measurements_per_s"] / summaries[0]["median_measurements_per_s"],
                       "per_round": ratios(c), "median_per_round": statistics.median(ratios(c))}
                   for c in conditions[1:]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print()
    print("| condition | windows | median measurements/s (min–max) | rate / 0 pages (median per round) "
          "| watcher CPU | browser CPU | clients CPU | training CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for s in summaries:
        ratio = result["ratios"].get(s["condition"], {}).get("median_per_round", 1.0)
        print(f"| {s['condition']} | {s['windows']} | {s['median_measurements_per_s']:.0f} ({s['min']:.0f}–{s['max']:.0f}) "
              f"| {ratio:.2f} | {s['median_watcher_cpu_share']:.1%} | {s['median_browser_cpu_share']:.1%} "
              f"| {s['median_clients_cpu_share']:.1%} | {s['median_train_cpu_share']:.1%} |")
    print(f"\nload average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after (2 cores); results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
