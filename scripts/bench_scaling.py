"""Benchmark: how `labpgt train` on the embedded ring scales with the run's length.

For each budget N (training measurements), one ``labpgt train --budget N`` in a child process,
then one ``labpgt replay`` of its file, each measured from outside:

* wall time and peak RSS of the child (``os.wait4``'s ``ru_maxrss``);
* the child's CPU time per measurement at the start and at the end (its CPU seconds from /proc
  against the rows its run file has committed, sampled once a second; the first and the last
  tenth of the rows): unlike the rates, not moved by other load on the machine;
* measurements per second at the start and at the end (rows of /measurements over their
  ``time_s``, the first and the last tenth of the rows after the set-up probe; evaluations
  included, as they are measurements too);
* file bytes per measurement (file size / rows);
* checkpoint size: the bytes of the first and the last checkpoint's text (trainer extras with
  the simulator's world state, and the random state), and all checkpoint text's share of the file;
* replay wall time and peak RSS.

    python scripts/bench_scaling.py                          # N = 2k, 20k, 200k
    python scripts/bench_scaling.py --budgets 2000 20000 200000 2000000
    python scripts/bench_scaling.py --tree /tmp/base --label before   # another source tree

Results: scripts/results/bench_scaling.json (``--out``), and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_floor import machine  # noqa: E402


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a running process (all its threads), from /proc; None once gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def committed_rows(path: Path) -> int | None:
    """Measurement rows a run file being written has committed (read as an SWMR reader), or None."""
    try:
        with h5py.File(path, "r", swmr=True, libver="latest") as f:
            return int(f["committed"][0])
    except (OSError, KeyError):
        return None


def run_child(command: list[str], *, tree: Path, log_path: Path, watch: Path | None = None) -> dict:
    """Run a child to its end: wall time, exit code, peak RSS (MB); with ``watch`` (its run file),
    samples of (committed rows, child CPU seconds) once a second while it runs."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    samples = []
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
        while watch is not None:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            cpu, rows = process_cpu_s(proc.pid), committed_rows(watch)
            if cpu is not None and rows:
                samples.append((rows, cpu))
            time.sleep(1.0)  # sampling an independent process, not synchronising with it
        else:
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}; see {log_path}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024.0, "samples": samples}  # ru_maxrss: KB


def cpu_per_row_us(samples: list, first: bool) -> float:
    """Child CPU µs per committed row over the first (or last) tenth of the rows sampled."""
    if len(samples) < 3:
        return float("nan")
    rows = np.array([r for r, _ in samples], dtype=float)
    cpu = np.array([c for _, c in samples])
    span = (rows[-1] - rows[0]) / 10
    pick = rows <= rows[0] + span if first else rows >= rows[-1] - span
    idx = np.flatnonzero(pick)
    if first:
        idx = np.arange(0, max(idx[-1], 1) + 1)
    else:
        idx = np.arange(min(idx[0], len(rows) - 2), len(rows))
    d_rows = rows[idx[-1]] - rows[idx[0]]
    return (cpu[idx[-1]] - cpu[idx[0]]) / d_rows * 1e6 if d_rows > 0 else float("nan")


def rate(times: np.ndarray) -> float:
    """Rows per second over a stretch of rows (first to last row's time)."""
    span = float(times[-1] - times[0])
    return (len(times) - 1) / span if span > 0 else float("nan")


def file_figures(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        times = f["measurements/time_s"][:]
        kinds = f["measurements/kind"][:]
        probe = h5py.check_enum_dtype(f["measurements/kind"].dtype)["probe"]
        ck = f["checkpoints"]
        text_lengths = {name: ck[f"{name}_length"][:] for name in ("extra", "rng_state")}
    n = len(times)
    times = times[kinds != probe]  # the rates are the training's (with its evaluations), not the set-up probe's
    tenth = max(len(times) // 10, 2)
    per_checkpoint = text_lengths["extra"] + text_lengths["rng_state"]
    size = path.stat().st_size
    return {"rows": n, "file_bytes": size, "bytes_per_measurement": size / n,
            "rate_start_per_s": rate(times[:tenth]), "rate_end_per_s": rate(times[-tenth:]),
            "checkpoints": int(len(per_checkpoint)),
            "checkpoint_text_bytes_first": int(per_checkpoint[0]) if len(per_checkpoint) else 0,
            "checkpoint_text_bytes_last": int(per_checkpoint[-1]) if len(per_checkpoint) else 0,
            "checkpoint_text_share_of_file": float(per_checkpoint.sum()) / size}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=int, nargs="+", default=[2000, 20000, 200000])
    p.add_argument("--tree", default=str(ROOT), help="source tree whose labpgt runs (default: this one)")
    p.add_argument("--label", default="", help="name of this tree in the results (default: its path)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", default="", help="directory to keep the run files in (default: a scratch one)")
    p.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_scaling.json"))
    args = p.parse_args(argv)
    tree = Path(args.tree).resolve()
    result = {"machine": machine(), "tree": str(tree), "label": args.label or str(tree), "rows": [],
              "command": "python scripts/bench_scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for budget in args.budgets:
            path = folder / f"scaling-{budget}.h5"
            path.unlink(missing_ok=True)
            train = run_child([sys.executable, "-m", "labpgt.cli", "train", "--estimator", "node", "--budget", str(budget), "--seed",
                               str(args.seed), "--out", str(path), "--no-progress"],
                              tree=tree, log_path=folder / f"scaling-{budget}-train.log", watch=path)
            figures = file_figures(path)
            replay = run_child([sys.executable, "-m", "labpgt.cli", "replay", str(path)], tree=tree,
                               log_path=folder / f"scaling-{budget}-replay.log")
            row = {"budget": budget, "train_wall_s": train["wall_s"], "train_peak_rss_mb": train["peak_rss_mb"],
                   "cpu_us_per_row_start": cpu_per_row_us(train["samples"], first=True),
                   "cpu_us_per_row_end": cpu_per_row_us(train["samples"], first=False),
                   "cpu_samples": len(train["samples"]), "cpu_samples_rows_s": train["samples"], **figures, "replay_wall_s": replay["wall_s"], "replay_peak_rss_mb": replay["peak_rss_mb"],
                   "loadavg": os.getloadavg()}
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")  # after every row: a long run keeps its rows
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = [f"`{result['label']}`", "",
             "| N (training measurements) | rows | wall s | meas/s at start | at end | CPU µs/meas at start | at end | "
             "peak RSS MB | bytes/measurement | checkpoint text B, first → last | checkpoints' share of file | "
             "replay s | replay RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['budget']:,} | {r['rows']:,} | {r['train_wall_s']:.0f} | {r['rate_start_per_s']:.0f} | "
            f"{r['rate_end_per_s']:.0f} | {r.get('cpu_us_per_row_start', float('nan')):.0f} | "
            f"{r.get('cpu_us_per_row_end', float('nan')):.0f} | "
            f"{r['train_peak_rss_mb']:.0f} | {r['bytes_per_measurement']:.0f} | "
            f"{r['checkpoint_text_bytes_first']:,} → {r['checkpoint_text_bytes_last']:,} | "
            f"{100 * r['checkpoint_text_share_of_file']:.1f} % | {r['replay_wall_s']:.0f} | "
            f"{r['replay_peak_rss_mb']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
