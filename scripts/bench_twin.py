"""The twin under the simulated drift and a step change, against the oracle and node perturbation.

Every run trains the dense model (labpgt/models/dense.py) through the simulated ring in-process
(DirectRingReservoir, default noise, the simulator's default drift walk on, 50 ms of virtual time
per measurement), evaluated through a second reservoir on the same RingParams (its own noise
stream, as in scripts/bench_phyll.py), on Iris, wine (scikit-learn's bundled copy) and digits.

Methods (the registry's tuned defaults, labpgt/experiment/registry.py, plus estimator options):

- ``oracle``       exact gradients of the noiseless simulated ring (the upper bound);
- ``node``         node perturbation (the dense model's default estimator);
- ``twin``         the digital twin with the registry's tuned options (bench_twin_before.json ran
                   before issue 16 item 4 tuned it: its ``twin`` rows are the twin as it was);
- ``twin-f8``      the twin as it was (its buffer in float64, no mismatch detection);
- ``estimator:{json}``  any estimator with constructor options over the tuned ones, e.g.
                   ``'twin:{"mismatch_factor": 2.0}'`` (labpgt/estimators/twin.py: mismatch detection).

Conditions:

- ``drift``: the whole budget under the default drift walk. Reported: the median final test
  accuracy (mean of 3 evaluations) and its gap to the oracle's, and the median training
  measurements to reach 95 % of the oracle's median final accuracy (geometric evaluation
  schedule, ``--evals-per-decade``; "> budget" when the median run never gets there).
- ``step``: the same, plus a +``--step-kelvin`` K step of the ring's temperature after STEP[d][0]
  training measurements (RingParams.step_at_s set to 0 then: both reservoirs see it from that
  moment); the test split is evaluated (mean of 2) every STEP[d][1] measurements and right after
  the step; recovered = the first evaluation within 2 points of the accuracy before the step (mean
  of the last 4 evaluations before it) that the next evaluation confirms (scripts/bench_phyll.py
  ``recovery``). Reported in measurements and in % of the run's budget (before + after).

    nice python scripts/bench_twin.py --seeds 5 --workers 2 --methods oracle node twin \
        --out scripts/results/bench_twin_before.json
    python scripts/bench_twin.py --from-json scripts/results/bench_twin_before.json   # the tables again
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _machine import cpu_model  # noqa: E402
from bench_phyll import (_evaluate_through, eval_schedule, evaluate, first_reaching, load_dataset,  # noqa: E402
                         recovery)

#: method -> (registry estimator, estimator options over the tuned ones)
METHODS = {
    "oracle": ("oracle", {}),
    "node": ("node", {}),
    "twin": ("twin", {}),
    "twin-f8": ("twin", {"buffer_dtype": "f8"}),
}
DATASETS = ("iris", "wine", "digits")
BUDGETS = {"iris": 4_000, "wine": 4_000, "digits": 10_000}
#: step condition: (measurements before the step, evaluation spacing, measurements after it)
STEP = {"iris": (4_000, 250, 4_000), "wine": (4_000, 250, 4_000), "digits": (10_000, 500, 10_000)}
REPEATS = 2


def make_trainer_for(method: str, ds, seed: int, budget: int, options: dict):
    from labpgt.experiment.builder import make_trainer
    from labpgt.reservoirs.direct import DirectRingReservoir, simulated_ring_params

    params = simulated_ring_params(1.0, None)  # the simulator's default: drift on
    reservoir = DirectRingReservoir(params, seed=seed)
    test_reservoir = DirectRingReservoir(params, seed=seed + 7919)
    estimator, base = METHODS[method] if method in METHODS else (method.split(":")[0], {})
    trainer = make_trainer(ds, estimator, reservoir, seed=seed, budget=budget, eval_every=0, checkpoint_every=0,
                           estimator_options={**base, **options})
    trainer.evaluate = functools.partial(_evaluate_through, trainer, test_reservoir)
    return trainer, params


def run_drift(job: dict) -> dict:
    t0 = time.perf_counter()
    ds = load_dataset(job["dataset"])
    trainer, _ = make_trainer_for(job["method"], ds, job["seed"], job["budget"], job["options"])
    marks = eval_schedule(job["budget"], job["evals_per_decade"])

    def progress(record):
        if record["kind"] == "step" and marks and record["measurements"] >= marks[0]:
            while marks and record["measurements"] >= marks[0]:
                marks.pop(0)
            evaluate(trainer)

    trainer.progress = progress
    evaluate(trainer)
    status = trainer.run()
    trainer.progress = None
    final = evaluate(trainer, repeats=3)
    del trainer.evaluations[-3:]
    return {**job, "status": status, "curve": [(e["measurements"], e["accuracy"]) for e in trainer.evaluations],
            "final_accuracy": final, "wall_s": time.perf_counter() - t0}


def run_step(job: dict) -> dict:
    t0 = time.perf_counter()
    ds = load_dataset(job["dataset"])
    before, every, after = STEP[job["dataset"]]
    trainer, ring_params = make_trainer_for(job["method"], ds, job["seed"], before + after, job["options"])
    state = {"next": every, "stepped": False, "step_at": None, "first_after": None}
    curve = []

    def progress(record):
        if record["kind"] != "step":
            return
        if record["measurements"] >= state["next"]:
            state["next"] += every * (1 + (record["measurements"] - state["next"]) // every)
            curve.append((record["measurements"], evaluate(trainer, REPEATS)))
        if not state["stepped"] and record["measurements"] >= before:
            state.update(stepped=True, step_at=record["measurements"], first_after=len(curve))
            ring_params.step_at_s = 0.0
            ring_params.step_temperature_k = job["step_kelvin"]
            curve.append((record["measurements"], evaluate(trainer, REPEATS)))

    trainer.progress = progress
    trainer.run()
    trainer.progress = None
    final = evaluate(trainer, repeats=3)
    return {**job, "curve": curve, "step_at": state["step_at"], "first_after": state["first_after"],
            "budget": before + after, "final_accuracy": final, "wall_s": time.perf_counter() - t0}


def _run(job: dict) -> dict:
    return run_drift(job) if job["condition"] == "drift" else run_step(job)


def _med(values):
    m = float(np.median(values))
    return None if math.isinf(m) else m


def summarise(runs: list[dict]) -> dict:
    out = {}
    for d in DATASETS:
        drift = [r for r in runs if r["dataset"] == d and r["condition"] == "drift"]
        step = [r for r in runs if r["dataset"] == d and r["condition"] == "step"]
        if not drift and not step:
            continue
        block = {}
        oracle = [r["final_accuracy"] for r in drift if r["method"] == "oracle"]
        oracle_final = float(np.median(oracle)) if oracle else None
        target = None if oracle_final is None else 0.95 * oracle_final
        for method in dict.fromkeys(r["method"] for r in drift + step):
            row = {}
            rs = [r for r in drift if r["method"] == method]
            if rs:
                final = float(np.median([r["final_accuracy"] for r in rs]))
                reach = [first_reaching(r["curve"], target) for r in rs] if target is not None else []
                row["drift"] = {"runs": len(rs), "budget": rs[0]["budget"], "final_median": final,
                                "finals": [r["final_accuracy"] for r in rs],
                                "gap_to_oracle": None if oracle_final is None else oracle_final - final,
                                "to_target_median": _med(reach) if reach else None,
                                "reached": int(np.sum(np.isfinite(reach))) if reach else 0,
                                "to_target": [None if math.isinf(v) else v for v in reach],
                                "wall_s_median": float(np.median([r["wall_s"] for r in rs]))}
            rs = [r for r in step if r["method"] == method]
            if rs:
                rec = [recovery(r) for r in rs]
                need = [x["to_recover"] for x in rec]
                budget = rs[0]["budget"]
                med = _med(need)
                row["step"] = {"runs": len(rs), "budget": budget,
                               "before_median": float(np.median([x["before"] for x in rec])),
                               "right_after_median": float(np.median([x["right_after"] for x in rec])),
                               "final_median": float(np.median([r["final_accuracy"] for r in rs])),
                               "to_recover_median": med,
                               "to_recover_pct_budget": None if med is None else 100.0 * med / budget,
                               "recovered": int(np.sum(np.isfinite(need))),
                               "to_recover": [None if math.isinf(v) else v for v in need]}
            block[method] = row
        out[d] = {"oracle_final_median": oracle_final, "target": target, "methods": block}
    return out


def markdown(summary: dict) -> str:
    lines = []
    for d, block in summary.items():
        tgt = block["target"]
        lines += [f"**{d}** (drift on; oracle median final {block['oracle_final_median'] or float('nan'):.3f}, "
                  f"target 95 % = {tgt or float('nan'):.3f})", "",
                  "| method | final acc, drift | gap to oracle | to target | reached | acc before step | right after | "
                  "to recover | % of budget | recovered | per seed |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for method, row in block["methods"].items():
            dr, st = row.get("drift"), row.get("step")
            cells = [method]
            if dr:
                to = dr["to_target_median"]
                gap = dr["gap_to_oracle"]
                cells += [f"{dr['final_median']:.3f}", "-" if gap is None else f"{100 * gap:+.1f} pts",
                          f"{to:.0f}" if to is not None else f"> {dr['budget']}", f"{dr['reached']}/{dr['runs']}"]
            else:
                cells += ["-"] * 4
            if st:
                to = st["to_recover_median"]
                cells += [f"{st['before_median']:.3f}", f"{st['right_after_median']:.3f}",
                          f"{to:.0f}" if to is not None else "never",
                          f"{st['to_recover_pct_budget']:.1f}" if to is not None else "-",
                          f"{st['recovered']}/{st['runs']}",
                          ", ".join("never" if v is None else f"{v:.0f}" for v in st["to_recover"])]
            else:
                cells += ["-"] * 6
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS),
                    help="names of METHODS, or estimator:json-options (e.g. 'twin:{\"mismatch_factor\": 4}')")
    ap.add_argument("--conditions", nargs="+", default=["drift", "step"], choices=("drift", "step"))
    ap.add_argument("--step-kelvin", type=float, default=2.0)
    ap.add_argument("--evals-per-decade", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "scripts" / "results" / "bench_twin.json")
    ap.add_argument("--from-json", nargs="+", type=Path, metavar="RESULTS",
                    help="no runs: the tables of these result files' runs together (e.g. the oracle of one file, "
                         "a twin variant of another)")
    args = ap.parse_args(argv)
    if args.from_json:
        print(markdown(summarise([r for path in args.from_json for r in json.loads(path.read_text())["runs"]])))
        return 0
    jobs = []
    for d in args.datasets:
        for method in args.methods:
            options = json.loads(method.split(":", 1)[1]) if ":" in method else {}
            for c in args.conditions:
                if c == "step" and method.startswith("oracle"):
                    continue
                for s in range(args.seeds):
                    jobs.append({"condition": c, "dataset": d, "method": method, "options": options, "seed": s,
                                 "budget": BUDGETS[d], "evals_per_decade": args.evals_per_decade,
                                 "step_kelvin": args.step_kelvin})
    jobs.sort(key=lambda j: (j["dataset"] != "digits", not j["method"].startswith("twin")))  # the long ones first
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(_run, jobs))
    wall = time.perf_counter() - t0
    summary = summarise(results)
    meta = {"command": " ".join(["python", "scripts/bench_twin.py", *(argv if argv is not None else sys.argv[1:])]),
            "budgets": BUDGETS, "step_protocol": STEP, "methods": {m: METHODS.get(m) for m in args.methods},
            "wall_s": wall, "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(platform.processor() or "?"),
                                        "python": platform.python_version()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "summary": summary, "runs": results}, indent=1, default=float))
    print(markdown(summary))
    print(f"wall {wall:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
