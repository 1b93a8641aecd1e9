"""Node perturbation with a fixed size against the noise-aware adapted size (issue 16, item 4).

Runs scripts/bench_training.py's protocol (same model, data, ring, evaluation schedule and
counting) for ``node`` (fixed epsilon 0.05, the shipped default) and ``node-adaptive``
(labpgt/estimators/noise_aware.py: size from the measured signal and noise, bounded), and
reports measurements to 95 % of the oracle's final accuracy from the training tables in
docs/benchmarks.md (Iris: 0.967 at default noise and at 3x noise), held for 3 evaluations too.

    python scripts/bench_epsilon.py --out scripts/results/bench_epsilon.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_training as bt  # noqa: E402

#: the oracle's final accuracy (median of 5 seeds) per dataset and condition, docs/benchmarks.md
ORACLE_FINAL = {("iris", "default"): 0.967, ("iris", "noise3"): 0.967, ("digits", "default"): 0.665}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["iris"])
    ap.add_argument("--conditions", nargs="+", default=["default", "noise3"])
    ap.add_argument("--methods", nargs="+", default=["node", "node-adaptive"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=10_000)
    ap.add_argument("--option", nargs=3, action="append", default=[], metavar=("METHOD", "KEY", "JSON"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="scripts/results/bench_epsilon.json")
    args = ap.parse_args(argv)
    options = {}
    for m, key, value in args.option:
        options.setdefault(m, {})[key] = json.loads(value)
    jobs = [dict(dataset=d, condition=c, method=m, seed=s, budget=args.budget, reservoir="ring", n_nodes=1,
                 n_bands=10, noise_multiplier=1.0, batch_size=None, sigma0=None, options=options.get(m), lr=None,
                 evals_per_decade=16, final_repeats=3)
            for d in args.datasets for c in args.conditions for m in args.methods for s in range(args.seeds)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(bt.run_one, jobs))
    lines = ["| data / condition | method | to 95 % of oracle | reached | held 3 evals | reached | final |",
             "|---|---|---|---|---|---|---|"]
    for d in args.datasets:
        for c in args.conditions:
            target = 0.95 * ORACLE_FINAL[(d, c)]
            for m in args.methods:
                mine = [r for r in runs if (r["dataset"], r["condition"], r["method"]) == (d, c, m)]
                first = [bt.first_reaching(r["curve"], target) for r in mine]
                held = [bt.first_sustained(r["curve"], target) for r in mine]

                def med(v):
                    x = float(np.median(v))
                    return "never" if math.isinf(x) else f"{x:.0f}"
                lines.append(f"| {d} / {c} | {m} | {med(first)} | {int(np.isfinite(first).sum())}/{len(mine)} | "
                             f"{med(held)} | {int(np.isfinite(held).sum())}/{len(mine)} | "
                             f"{np.median([r['final_accuracy'] for r in mine]):.3f} |")
    table = "\n".join(lines)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"argv": sys.argv, "wall_s": time.perf_counter() - t0,
                                          "load_average": os.getloadavg(), "runs": runs, "table": table},
                                         indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
