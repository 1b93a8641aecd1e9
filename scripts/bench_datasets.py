"""Accuracy on public tabular data sets given as CSV files, against a logistic-regression baseline.

Each run is exactly what a user types, on the embedded simulated ring:

    labpgt train --dataset examples/data/wine.csv --estimator node --seed S --budget B

(the data file's fixed, seeded, stratified split, test fraction 0.2; standardised on the
training split). The final test accuracy is the run's last evaluation (the whole test split,
measured). The baseline is scikit-learn's ``LogisticRegression`` (L2, C=1, lbfgs) fitted on the
same standardised training split, scored on the same test split; the majority class is shown for
scale. Run files are read and deleted (they hold every trace: 40-80 MB each).

    python scripts/bench_datasets.py                      # wine, breast_cancer; node, twin; 5 seeds; 20000
    python scripts/bench_datasets.py --seeds 0 1 --budget 5000 --jobs 1

Needs the bench extra (scikit-learn). Runs nice'd (niceness 10), ``--jobs`` processes at a time.
Results: a markdown table on stdout and JSON (``--json``, default scripts/results/bench_datasets.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # _machine, when loaded by path

from _machine import cpu_model  # noqa: E402

from labpgt.data.datasets import open_dataset  # noqa: E402
from labpgt.runfile import RunReader  # noqa: E402

DATASETS = ("wine", "breast_cancer")
ESTIMATORS = ("node", "twin")


def baselines(name: str) -> dict:
    """Logistic regression and the majority class on the run's own split and standardisation."""
    from sklearn.linear_model import LogisticRegression

    ds = open_dataset(str(ROOT / "examples" / "data" / f"{name}.csv"))
    model = LogisticRegression(C=1.0, max_iter=10_000).fit(ds.x_train, ds.y_train)
    majority = np.bincount(ds.y_train).argmax()
    return {"n_train": int(len(ds.y_train)), "n_test": int(len(ds.y_test)), "n_features": ds.n_features,
            "n_classes": ds.n_classes, "logistic_regression": float(model.score(ds.x_test, ds.y_test)),
            "majority_class": float(np.mean(ds.y_test == majority))}


def run_one(job: dict, workdir: Path) -> dict:
    out = workdir / f"{job['dataset']}-{job['estimator']}-s{job['seed']}.h5"
    cmd = [sys.executable, "-m", "labpgt.cli", "train", "--dataset", str(ROOT / "examples" / "data" /
           f"{job['dataset']}.csv"), "--estimator", job["estimator"], "--seed", str(job["seed"]), "--budget",
           str(job["budget"]), "--out", str(out), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-1000:]}")
    with RunReader(out) as r:
        ev = r.evaluations()
        curve = [(int(m), float(a)) for m, a in zip(ev["measurements"], ev["test_accuracy"])]
        spent = int(r.last_checkpoint()["measurements"])
    out.unlink()
    return {**job, "final_accuracy": curve[-1][1], "train_measurements": spent, "curve": curve, "wall_s": wall}


def table(results: dict) -> str:
    lines = ["| data set | samples (train/test) | features | classes | method | budget | test accuracy: median "
             "(min–max) over seeds | seeds | wall/run |", "|---|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        b = res["baselines"]
        shape = f"{b['n_train']}/{b['n_test']}"
        head = f"| {name} | {shape} | {b['n_features']} | {b['n_classes']} "
        lines.append(head + f"| logistic regression | — | {b['logistic_regression']:.3f} | — | — |")
        for est, runs in res["runs"].items():
            acc = [r["final_accuracy"] for r in runs]
            wall = float(np.median([r["wall_s"] for r in runs]))
            lines.append(head + f"| {est} | {runs[0]['budget']} | {np.median(acc):.3f} ({min(acc):.3f}–{max(acc):.3f}) "
                                f"| {len(runs)} | {wall:.0f} s |")
        lines.append(head + f"| majority class | — | {b['majority_class']:.3f} | — | — |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=("node", "twin", "pgt", "spsa",
                                                                                    "oracle"))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--budget", type=int, default=20_000, help="training measurements per run (labpgt's default)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--json", default=str(ROOT / "scripts" / "results" / "bench_datasets.json"))
    args = ap.parse_args(argv)
    os.nice(10)  # a shared machine: the runs (child processes) inherit it
    t0 = time.perf_counter()
    jobs = [{"dataset": d, "estimator": e, "seed": s, "budget": args.budget}
            for d in args.datasets for e in args.estimators for s in args.seeds]
    with tempfile.TemporaryDirectory(prefix="labpgt-bench-datasets-") as tmp, \
            ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(lambda job: run_one(job, Path(tmp)), jobs))
    results = {}
    for name in args.datasets:
        results[name] = {"baselines": baselines(name),
                         "runs": {e: [r for r in done if r["dataset"] == name and r["estimator"] == e]
                                  for e in args.estimators}}
    report = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "wall_s": round(time.perf_counter() - t0, 1),
              "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
                          "numpy": np.__version__},
              "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(table(results))
    print(f"\n{report['wall_s']:.0f} s wall; JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
