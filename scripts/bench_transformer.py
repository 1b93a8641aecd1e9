"""Transformer with a reservoir layer: test accuracy against reservoir evaluations spent, per method.

Every method trains the same TransformerModel (labpgt/models/transformer.py, tuned defaults) on
digits-seq (8x8 digits as 8 row tokens) through the same reservoir, over several seeds:

- backprop: full backpropagation, the reservoir made differentiable for this baseline only
  (echo-state: its analytic VJP; ring: central differences of the noiseless simulated ring);
  one clean measured pass per step (B*T evaluations);
- node: node perturbation at the reservoir's knobs, exact backprop through the digital rest
  (2*B*T evaluations per step);
- node-token: node's kicks, but each token's knobs credited through that token's measured change of
  the features and the readout's exact gradient (2*B*T evaluations per step; not the default set);
- token-twin: physics-aware training, one clean measured pass per step (B*T evaluations), the backward
  pass through a spline twin of the ring's per-token map fitted to every row measured (ring only);
- pgt: PGT as published, parameter-space perturbation of all parameters (2*B*T per step);
- spsa: Spall's SPSA on the parameters before the reservoir, exact readout (2*B*T per step).

One evaluation = one sample x one token through the reservoir (a ring measurement). Test-split
evaluations are not counted. Reported per reservoir and method: median (min-max over seeds)
test accuracy at fixed budgets and at the end, and the median evaluations needed to come within
2 points of backprop's final median accuracy (inf = never within the budget).

Default (a few minutes on 2 cores):
    python scripts/bench_transformer.py
The twin against backprop and node-token, taking their saved runs instead of training them again:
    python scripts/bench_transformer.py --reservoirs ring --methods backprop node-token token-twin --seeds 5 \
        --budget-ring 4000000 --budget-backprop-ring 1500000 --budget-method token-twin=1500000 --evals 24 \
        --reuse scripts/results/bench_transformer_ring_nodetoken2.json \
        scripts/results/bench_transformer_ring_nodetoken2_seeds34.json --out scripts/results/bench_transformer_ring_twin.json
Long enough for backprop to flatten and node to plateau (~15 min on 2 cores; docs/benchmarks.md):
    python scripts/bench_transformer.py --reservoirs ring esn --methods backprop node node-token \
        --budget-ring 4000000 --budget-backprop-ring 1500000 --budget-esn 6000000 --evals 24 \
        --out scripts/results/bench_transformer_concat.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # _machine, when loaded by path

from _machine import cpu_model  # noqa: E402

from labpgt.experiment.builder import make_transformer_trainer  # noqa: E402
from labpgt.experiment.registry import ESTIMATORS, estimators_for  # noqa: E402

METHODS = ("backprop", "node", "pgt", "spsa")
EVALS_PER_SAMPLE_TOKEN = {"backprop": 1, "oracle": 1, "token-twin": 1, "node": 2, "pgt": 2, "spsa": 2,
                          "node-token": 2 * ESTIMATORS["node-token"].tuning["transformer"].options.get("n_directions", 1)}
CHECKPOINTS = (200_000, 500_000, 1_000_000, 2_000_000, 4_000_000)
SECTION = "## Transformer with a reservoir layer"


def run_one(job: dict) -> dict:
    t0 = time.perf_counter()
    batch = ESTIMATORS[job["method"]].tuning["transformer"].batch_size
    step_cost = EVALS_PER_SAMPLE_TOKEN[job["method"]] * batch * 8  # digits-seq: 8 tokens
    eval_every = max(1, round(job["budget"] / job["n_evals"] / step_cost))
    trainer = make_transformer_trainer(job["task"], job["method"], job["reservoir"], seed=job["seed"],
                                       budget=job["budget"], eval_every=eval_every, checkpoint_every=0)
    trainer.evaluate()  # the untrained model, at 0 evaluations
    status = trainer.run()
    curve = [(e["measurements"], e["accuracy"]) for e in trainer.evaluations]
    return {**job, "status": status, "steps": trainer.step, "curve": curve, "final_accuracy": curve[-1][1],
            "wall_s": time.perf_counter() - t0}


def accuracy_at(curve, budget):
    """Last evaluation at or below the budget (None if the run never got that far, or never evaluated
    between 0 and the budget: the untrained model's accuracy would be shown as if it were learned)."""
    if curve[-1][0] < budget * 0.999:
        return None
    trained = [a for m, a in curve if 0 < m <= budget * 1.001]
    return trained[-1] if trained else None


def first_within(curve, target):
    for measurements, accuracy in curve:
        if accuracy >= target - 1e-12:
            return measurements
    return math.inf


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for reservoir in dict.fromkeys(r["reservoir"] for r in runs):
        group = [r for r in runs if r["reservoir"] == reservoir]
        baseline = [r["final_accuracy"] for r in group if r["method"] == "backprop"]
        target = float(np.median(baseline)) - 0.02 if baseline else None
        for method in dict.fromkeys(r["method"] for r in group):
            mine = [r for r in group if r["method"] == method]
            finals = [r["final_accuracy"] for r in mine]
            at = {}
            for b in CHECKPOINTS:
                values = [accuracy_at(r["curve"], b) for r in mine]
                at[b] = None if any(v is None for v in values) else float(np.median(values))
            reach = [first_within(r["curve"], target) for r in mine] if target is not None else []
            rows.append({
                "reservoir": reservoir, "method": method, "seeds": len(mine), "budget": mine[0]["budget"],
                "final_median": float(np.median(finals)), "final_min": float(min(finals)),
                "final_max": float(max(finals)), "at": {str(b): v for b, v in at.items()},
                "target_within_2pt_of_backprop": target,
                "evals_to_target_median": float(np.median(reach)) if reach else None,
                "reached": int(sum(math.isfinite(x) for x in reach)),
                "diverged": int(sum(r["status"] == "diverged" for r in mine)),
                "wall_s_median": float(np.median([r["wall_s"] for r in mine])),
            })
    return rows


def fmt_evals(n):
    if n is None:
        return "—"
    if not math.isfinite(n):
        return "never"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def table(rows: list[dict]) -> str:
    head = ("| reservoir | method | budget | " + " | ".join(f"acc @ {fmt_evals(b)}" for b in CHECKPOINTS)
            + " | final (min–max) | evals to ≥ backprop − 2 pt | reached | wall/run |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [f"{r['at'][str(b)]:.3f}" if r["at"][str(b)] is not None else "—" for b in CHECKPOINTS]
        lines.append(
            f"| {r['reservoir']} | {r['method']} | {fmt_evals(r['budget'])} | " + " | ".join(cells)
            + f" | {r['final_median']:.3f} ({r['final_min']:.3f}–{r['final_max']:.3f}) | "
            f"{fmt_evals(r['evals_to_target_median'])} | {r['reached']}/{r['seeds']} | {r['wall_s_median']:.0f} s |"
        )
    return "\n".join(lines)


def machine() -> str:
    return f"nproc {os.cpu_count()}, {cpu_model('unknown CPU')}, Python {platform.python_version()}, numpy {np.__version__}"


def write_docs(path: Path, intro: str, subsection: str, body: str) -> None:
    """Update our section of docs/benchmarks.md: the intro, and the subsection of this configuration.

    Other sections of the file, and our subsections of other configurations, are left alone.
    """
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(SECTION)
    if start < 0:
        before, mine, after = old.rstrip("\n") + "\n\n", "", ""
    else:
        end = old.find("\n## ", start + len(SECTION))
        before, mine, after = old[:start], old[start:end + 1 if end >= 0 else len(old)], old[end + 1:] if end >= 0 else ""
    parts = mine.split("\n### ")[1:]  # our existing subsections, by heading
    subsections = {p.split("\n", 1)[0]: "### " + p.rstrip("\n") for p in parts}
    subsections[subsection] = f"### {subsection}\n\n{body}"
    text = SECTION + "\n\n" + intro + "\n\n" + "\n\n".join(subsections.values()) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((before + text + ("\n" + after if after else "")).rstrip("\n") + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=estimators_for("transformer"))
    ap.add_argument("--reservoirs", nargs="+", default=["esn", "ring"], choices=["esn", "ring"])
    ap.add_argument("--task", default="digits-seq")
    ap.add_argument("--budget-esn", type=int, default=2_000_000, help="training evaluations per run, echo-state")
    ap.add_argument("--budget-ring", type=int, default=200_000, help="training evaluations per run, ring")
    ap.add_argument("--budget-backprop-ring", type=int, default=None,
                    help="training evaluations of the ring's backprop runs (default: --budget-ring); the ring's "
                         "backprop differences the noiseless ring every step, ~4x the wall time per evaluation")
    ap.add_argument("--evals", type=int, default=12, help="test evaluations per run")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_transformer.json"))
    ap.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"), help="'' to leave the docs alone")
    ap.add_argument("--budget-method", action="append", default=[], metavar="METHOD=N",
                    help="training evaluations of one method's runs on every reservoir (repeatable; over "
                         "--budget-ring / --budget-esn / --budget-backprop-ring)")
    ap.add_argument("--reuse", nargs="+", default=[], metavar="JSON",
                    help="take every run these saved results hold with the same task, reservoir, method, seed, "
                         "budget and number of evaluations instead of training it again (the code of those "
                         "methods must be unchanged since: the runs are deterministic)")
    ap.add_argument("--from-json", help="re-summarise the runs saved in this JSON (no training)")
    args = ap.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        for key in ("seeds", "methods", "reservoirs", "task", "budget_esn", "budget_ring", "budget_backprop_ring",
                    "budget_method"):
            setattr(args, key, saved["args"].get(key) or ([] if key == "budget_method" else None))
        args.out = args.from_json

    budgets = {"esn": args.budget_esn, "ring": args.budget_ring}
    per_method = {m: int(n) for m, n in (item.split("=", 1) for item in args.budget_method)}

    def budget_of(res, method):
        if method in per_method:
            return per_method[method]
        if res == "ring" and method == "backprop" and args.budget_backprop_ring:
            return args.budget_backprop_ring
        return budgets[res]

    def key(run):
        return run["task"], run["reservoir"], run["method"], run["seed"], run["budget"], run["n_evals"]

    jobs = [{"task": args.task, "reservoir": res, "method": m, "seed": s, "budget": budget_of(res, m),
             "n_evals": args.evals} for res in args.reservoirs for m in args.methods for s in range(args.seeds)]
    reused = {}
    for path in args.reuse:
        for run in json.loads(Path(path).read_text())["runs"]:
            reused.setdefault(key(run), {**run, "reused_from": path})
    reused = {k: r for k, r in reused.items() if k in {key(j) for j in jobs}}
    jobs = [j for j in jobs if key(j) not in reused]
    # slowest first (the ring's backprop differences the noiseless ring every step), for load balance
    jobs.sort(key=lambda j: -(j["budget"] * (5 if j["reservoir"] == "ring" else 1) * (3 if j["method"] == "backprop" else 1)))
    t0 = time.perf_counter()
    runs = saved["runs"] if args.from_json else list(reused.values())
    for r in runs if not args.from_json else []:
        print(f"  {r['reservoir']:4s} {r['method']:8s} seed {r['seed']}: final {r['final_accuracy']:.3f} (from "
              f"{r['reused_from']})", flush=True)
    with ProcessPoolExecutor(args.workers) as pool:
        if args.from_json:
            jobs = []
        for r in pool.map(run_one, jobs):
            print(f"  {r['reservoir']:4s} {r['method']:8s} seed {r['seed']}: final {r['final_accuracy']:.3f} after "
                  f"{r['curve'][-1][0]} evaluations ({r['status']}, {r['wall_s']:.0f} s)", flush=True)
            runs.append(r)
    order = {m: i for i, m in enumerate(args.methods)}
    runs.sort(key=lambda r: (args.reservoirs.index(r["reservoir"]), order[r["method"]], r["seed"]))
    rows = summarise(runs)
    text = table(rows)
    wall = saved["wall_s"] if args.from_json else time.perf_counter() - t0
    if args.from_json:
        command = saved["command"]
    else:
        command = "python scripts/bench_transformer.py" + ("" if argv is None and len(sys.argv) == 1
                                                          else " " + shlex.join(argv if argv is not None else sys.argv[1:]))
    print()
    print(text)
    print(f"\n{machine()}; {wall:.0f} s wall")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "machine": machine(), "wall_s": wall, "args": vars(args),
                               "summary": rows, "runs": runs}, indent=1, default=float))
    if args.docs:
        intro = (
            "Test accuracy of the transformer with a reservoir layer (labpgt/models/transformer.py) against training "
            "evaluations of the reservoir (one evaluation = one sample × one token = one ring measurement; "
            "test-split evaluations not counted); median over seeds, tuned defaults (the registry, `labpgt/experiment/registry.py`). "
            "`backprop` is the baseline that differentiates the reservoir (echo-state: analytic VJP; ring: central "
            "differences of the noiseless simulated ring); `node`, `pgt` (as published, all parameters perturbed) "
            "and `spsa` only measure; `node-token` (not in the benchmark's default set; `labpgt train --model transformer --estimator node-token`) is node perturbation with the same "
            "kicks whose credit reaches each token's knobs through that token's measured change of the features "
            "and the readout's exact gradient; `token-twin` (`--estimator token-twin`, ring only) is physics-aware "
            "training: one clean measured pass per step, the backward pass through a spline twin of the ring's "
            "per-token map fitted to every row the run has measured. Every method trains the same model (`labpgt.models.transformer.DEFAULTS`: since "
            "the concat head, per-token projections concatenated before the head, bias current fixed). "
            "“evals to ≥ backprop − 2 pt”: median evaluations until the test accuracy "
            "first comes within 2 points of backprop's final median on the same reservoir (never = not within "
            "the budget; — = backprop not in that run). Accuracies are on the 360-sample test split: one "
            "evaluation's sampling error is about ±1.5 points.")
        described = []
        for r in args.reservoirs:
            text_r = f"{'echo-state' if r == 'esn' else 'ring'} {fmt_evals(budgets[r])}"
            own = [f"{m} {fmt_evals(budget_of(r, m))}" for m in args.methods if budget_of(r, m) != budgets[r]]
            text_r += f" ({', '.join(own)})" if own else ""
            described.append(text_r)
        heading = (f"{args.task}, {args.seeds} seeds, budgets: " + ", ".join(described)
                   + f"; methods: {', '.join(args.methods)}")
        body = (text + "\n\n" + f"Reproduce: `{command}` ({wall / 60:.0f} min wall). Machine: {machine()}. "
                f"Raw curves: `{Path(args.out).relative_to(ROOT) if Path(args.out).is_relative_to(ROOT) else args.out}`.")
        write_docs(Path(args.docs), intro, heading, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
