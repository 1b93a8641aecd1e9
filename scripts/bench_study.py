"""Speed-up of `labpgt study` with 2 local workers against 1, on the same study, interleaved.

Each repeat runs the same study (fresh folder each time) once per worker count, alternating
the order (1, 2, then 2, 1, ...) so that a change in the machine's load hits both alike. The
wall time is the whole command (`python -m labpgt.cli study ... --workers N`), cluster start
included, as a user sees it. Reported: median and spread (min-max) per worker count, the ratio
of the medians, the per-repeat ratios, and the 1-minute load average before each run (the
machine is shared with other jobs).

    python scripts/bench_study.py                    # 3 repeats of the default study
    python scripts/bench_study.py --repeats 5 --trials 8 --budget 8000
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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


def study_text(out: Path, trials: int, budget: int) -> str:
    seeds = ", ".join(str(s) for s in range(trials))
    return (f"[study]\nout = \"{out}\"\nseeds = [{seeds}]\n\n[base]\ndataset = \"iris\"\nestimator = \"node\"\n"
            f"budget = {budget}\neval_every = 25\ncheckpoint_every = 25\n")


def run_once(workers: int, trials: int, budget: int, scratch: Path, tag: str) -> dict:
    out = scratch / f"study-{tag}"
    path = scratch / f"study-{tag}.toml"
    path.write_text(study_text(out, trials, budget))
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "labpgt.cli", "study", str(path), "--workers", str(workers)],
                          capture_output=True, text=True)
    wall_s = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"study with {workers} worker(s) exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    index = json.loads((out / "index.json").read_text())
    trial_walls = [entry["wall_s"] for entry in index["trials"].values()]
    # the trials' span (first run file created to last one completed): the engine's parallel part,
    # without the cluster's start and stop
    from labpgt.runfile import RunReader

    spans = []
    for entry in index["trials"].values():
        with RunReader(out / entry["run_file"]) as reader:
            history = reader.status_history()
            spans.append((history[0]["time_s"], history[-1]["time_s"]))
    accuracies = sorted(round(entry["final_test_accuracy"], 6) for entry in index["trials"].values())
    return {"workers": workers, "wall_s": wall_s, "load_1min_before": load_before,
            "load_1min_after": os.getloadavg()[0], "trial_wall_s_sum": sum(trial_walls),
            "trials_span_s": max(end for _, end in spans) - min(start for start, _ in spans),
            "final_accuracies": accuracies}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trials", type=int, default=8, help="trials in the study (seeds of node on Iris)")
    ap.add_argument("--budget", type=int, default=8000, help="training measurements per trial")
    ap.add_argument("--out", type=Path, default=ROOT / "scripts" / "results" / "bench_study.json")
    args = ap.parse_args(argv)

    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-study-") as scratch:
        for repeat in range(args.repeats):
            order = (1, 2) if repeat % 2 == 0 else (2, 1)
            for workers in order:
                run = run_once(workers, args.trials, args.budget, Path(scratch), f"r{repeat}-w{workers}")
                run["repeat"] = repeat
                runs.append(run)
                print(f"repeat {repeat}: {workers} worker(s) {run['wall_s']:6.1f} s  "
                      f"(load {run['load_1min_before']:.1f} -> {run['load_1min_after']:.1f})", flush=True)
    walls = {w: [r["wall_s"] for r in runs if r["workers"] == w] for w in (1, 2)}
    per_repeat = [next(r["wall_s"] for r in runs if r["repeat"] == k and r["workers"] == 1)
                  / next(r["wall_s"] for r in runs if r["repeat"] == k and r["workers"] == 2)
                  for k in range(args.repeats)]
    spans = {w: [r["trials_span_s"] for r in runs if r["workers"] == w] for w in (1, 2)}
    same_results = len({tuple(r["final_accuracies"]) for r in runs}) == 1
    summary = {
        "median_wall_s": {str(w): statistics.median(v) for w, v in walls.items()},
        "min_wall_s": {str(w): min(v) for w, v in walls.items()},
        "max_wall_s": {str(w): max(v) for w, v in walls.items()},
        "speedup_of_medians": statistics.median(walls[1]) / statistics.median(walls[2]),
        "speedup_per_repeat": per_repeat,
        "median_trials_span_s": {str(w): statistics.median(v) for w, v in spans.items()},
        "trials_span_speedup_of_medians": statistics.median(spans[1]) / statistics.median(spans[2]),
        "load_1min": [r["load_1min_before"] for r in runs],
        "same_final_accuracies_in_every_run": same_results,
    }
    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(platform.processor() or "?"),
                          "python": platform.python_version()},
              "study": {"trials": args.trials, "budget": args.budget, "dataset": "iris", "estimator": "node"},
              "runs": runs, "summary": summary, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))

    print(f"\n{args.trials} trials (node on Iris, {args.budget} measurements each), {args.repeats} repeats, interleaved")
    print(f"{'workers':>7} {'median s':>9} {'min s':>7} {'max s':>7}")
    for w in (1, 2):
        print(f"{w:>7} {summary['median_wall_s'][str(w)]:9.1f} {summary['min_wall_s'][str(w)]:7.1f} "
              f"{summary['max_wall_s'][str(w)]:7.1f}")
    print(f"speed-up (ratio of medians) {summary['speedup_of_medians']:.2f}x; per repeat "
          + ", ".join(f"{x:.2f}x" for x in per_repeat))
    print(f"trials' span (cluster start and stop left out), median: 1 worker "
          f"{summary['median_trials_span_s']['1']:.1f} s, 2 workers {summary['median_trials_span_s']['2']:.1f} s: "
          f"{summary['trials_span_speedup_of_medians']:.2f}x")
    print("1-min load average before each run: " + ", ".join(f"{x:.1f}" for x in summary["load_1min"]))
    print(f"same final accuracies in every run (seeded): {same_results}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
