"""Side-by-side benchmark of the gradient estimators (reference/estimators.md, benchmark protocol).

Every estimator trains the same hybrid model on the same data through the same simulated ring
(DirectRingReservoir, default noise), over several seeds. Reported per estimator:

- median training measurements to reach 95% and 99% of the oracle's final test accuracy
  (the oracle's final accuracy = median over seeds of its last evaluation);
- test accuracy at fixed budgets (the last evaluation at or below each budget);
- divergent runs (non-finite loss/gradient, or a final test loss above 2 ln(classes));
- wall time.

Evaluation measurements (the test split) are counted separately and not in the budgets.

Quick run (a couple of minutes on 2 cores):
    python scripts/bench_training.py --seeds 5
Full:
    python scripts/bench_training.py --seeds 10 --budget 40000 --pgt-budget 400000 --datasets iris digits
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
sys.path.insert(0, str(ROOT))

from labpgt.datasets import load  # noqa: E402
from labpgt.trainer import DEFAULTS, make_trainer  # noqa: E402

ESTIMATORS = ("oracle", "node", "spsa", "pgt")
# measurements per sample per virtual node per step, to space evaluations evenly in measurements
COST_PER_SAMPLE = {"oracle": 1, "node": 2, "spsa": 2, "pgt": 2}


def make_reservoir(kind: str, seed: int, n_nodes: int, n_bands: int, noise_scale: float, drift: bool = False):
    from labpgt.reservoirs import DirectRingReservoir, ToyReservoir

    if kind == "toy":
        return ToyReservoir(n_nodes=n_nodes, features_per_node=n_bands, noise_std=0.05 * noise_scale, seed=seed)
    from sim.ring import RingParams

    # drift is its own benchmark condition (--drift); the default condition is noise only
    return DirectRingReservoir(RingParams(noise_scale=noise_scale, drift_enabled=drift), seed=seed, n_nodes=n_nodes,
                               readout={"n_bands": n_bands})


def run_one(job: dict) -> dict:
    t0 = time.perf_counter()
    ds = load(job["dataset"])
    reservoir = make_reservoir(job["reservoir"], job["seed"], job["n_nodes"], job["n_bands"], job["noise_scale"],
                               job["drift"])
    batch = job["batch_size"] or DEFAULTS[job["estimator"]]["batch_size"]
    step_cost = COST_PER_SAMPLE[job["estimator"]] * batch * job["n_nodes"]
    eval_every = max(1, round(job["eval_interval"] / step_cost))
    trainer = make_trainer(ds, job["estimator"], reservoir, seed=job["seed"], budget=job["budget"],
                           batch_size=batch, eval_every=eval_every, checkpoint_every=0)
    trainer.evaluate()  # the untrained model, at 0 measurements
    status = trainer.run()
    curve = [(e["measurements"], e["accuracy"], e["loss"]) for e in trainer.evaluations]
    final_loss = curve[-1][2]
    divergent = status == "diverged" or not math.isfinite(final_loss) or final_loss > 2 * math.log(ds.n_classes)
    return {**job, "status": status, "divergent": bool(divergent), "curve": curve, "steps": trainer.step,
            "final_accuracy": curve[-1][1], "current_a": trainer.model.current_a(),
            "wall_s": time.perf_counter() - t0}


def first_reaching(curve, target):
    for measurements, accuracy, _ in curve:
        if accuracy >= target - 1e-12:
            return measurements
    return math.inf


def accuracy_at(curve, budget):
    below = [acc for m, acc, _ in curve if m <= budget]
    return below[-1] if below else math.nan


def summarise(runs: list[dict], budgets: list[int]) -> dict:
    oracle_final = float(np.median([r["final_accuracy"] for r in runs if r["estimator"] == "oracle"]))
    out = {"oracle_final_accuracy": oracle_final, "estimators": {}}
    for name in ESTIMATORS:
        mine = [r for r in runs if r["estimator"] == name]
        if not mine:
            continue
        row = {"runs": len(mine), "divergent": sum(r["divergent"] for r in mine),
               "final_accuracy_median": float(np.median([r["final_accuracy"] for r in mine])),
               "final_accuracy_mean": float(np.mean([r["final_accuracy"] for r in mine])),
               "wall_s_median": float(np.median([r["wall_s"] for r in mine]))}
        for frac in (0.95, 0.99):
            reached = [first_reaching(r["curve"], frac * oracle_final) for r in mine]
            med = float(np.median(reached))
            row[f"measurements_to_{int(frac * 100)}pct"] = None if math.isinf(med) else med
            row[f"reached_{int(frac * 100)}pct"] = int(sum(np.isfinite(reached)))
        row["accuracy_at_budget"] = {str(b): float(np.nanmedian([accuracy_at(r["curve"], b) for r in mine]))
                                     for b in budgets}
        out["estimators"][name] = row
    return out


def print_table(dataset: str, summary: dict, budgets: list[int]) -> None:
    print(f"\n{dataset}: oracle final test accuracy (median) {summary['oracle_final_accuracy']:.3f}")
    head = f"{'estimator':<8} {'to 95%':>9} {'to 99%':>9} {'final':>6} " + " ".join(f"{'@' + str(b):>8}" for b in budgets)
    print(head + f" {'diverged':>8} {'wall s':>7}")

    def fmt(v, row, key):
        return f"{v:9.0f}" if v is not None else f"{'never':>9}"

    for name, row in summary["estimators"].items():
        line = (f"{name:<8} {fmt(row['measurements_to_95pct'], row, 95)} {fmt(row['measurements_to_99pct'], row, 99)} "
                f"{row['final_accuracy_median']:6.3f} "
                + " ".join(f"{row['accuracy_at_budget'][str(b)]:8.3f}" for b in budgets)
                + f" {row['divergent']:>4}/{row['runs']:<3} {row['wall_s_median']:7.1f}")
        print(line)
    est = summary["estimators"]
    if "node" in est and "oracle" in est and est["oracle"]["measurements_to_95pct"]:
        n95, o95 = est["node"]["measurements_to_95pct"], est["oracle"]["measurements_to_95pct"]
        p95 = est.get("pgt", {}).get("measurements_to_95pct")
        print(f"node/oracle measurements to 95%: {n95 / o95:.2f}x" if n95 else "node never reached 95%")
        if n95 and "pgt" in est:
            print(f"pgt/node measurements to 95%: {p95 / n95:.1f}x" if p95 else
                  f"pgt never reached 95% within its budget (> {est['pgt'].get('budget', '?')})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--datasets", nargs="+", default=["iris"], choices=["iris", "digits"])
    ap.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    ap.add_argument("--budget", type=int, default=30_000, help="training measurements per run")
    ap.add_argument("--pgt-budget", type=int, default=None,
                    help="budget for pgt and spsa (default: the same as --budget)")
    ap.add_argument("--report-budgets", type=int, nargs="+", default=[3_000, 10_000, 30_000])
    ap.add_argument("--eval-interval", type=int, default=500, help="training measurements between evaluations")
    ap.add_argument("--reservoir", choices=["ring", "toy"], default="ring")
    ap.add_argument("--nodes", type=int, default=1, help="virtual nodes per sample")
    ap.add_argument("--bands", type=int, default=10, help="readout bands per node")
    ap.add_argument("--noise-scale", type=float, default=1.0)
    ap.add_argument("--drift", action="store_true", help="let the ring drift on a 50 ms/measurement virtual clock")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=ROOT / "scripts" / "results" / "bench_training.json")
    args = ap.parse_args(argv)

    jobs = []
    for dataset in args.datasets:
        for name in args.estimators:
            budget = args.pgt_budget if (args.pgt_budget and name in ("pgt", "spsa")) else args.budget
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                jobs.append(dict(dataset=dataset, estimator=name, seed=seed, budget=budget,
                                 reservoir=args.reservoir, n_nodes=args.nodes, n_bands=args.bands,
                                 noise_scale=args.noise_scale, drift=args.drift, batch_size=args.batch_size,
                                 eval_interval=args.eval_interval))
    t0 = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            runs = list(pool.map(run_one, jobs))
    else:
        runs = [run_one(j) for j in jobs]
    results = {"command": " ".join(sys.argv), "args": {k: str(v) for k, v in vars(args).items()},
               "defaults": DEFAULTS, "wall_s": time.perf_counter() - t0, "datasets": {}}
    for dataset in args.datasets:
        mine = [r for r in runs if r["dataset"] == dataset]
        summary = summarise(mine, args.report_budgets)
        for name, row in summary["estimators"].items():
            row["budget"] = mine[[r["estimator"] for r in mine].index(name)]["budget"]
        results["datasets"][dataset] = {"summary": summary, "runs": mine}
        print_table(dataset, summary, args.report_budgets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=float))
    print(f"\nwrote {args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
