"""Side-by-side benchmark of the gradient estimators and black-box peers (reference/estimators.md).

Every method trains the same hybrid model (same initial parameters per seed) on the same data
through the same simulated ring (DirectRingReservoir, in-process: the simulated instruments'
physics and noise), under one or more conditions, over several seeds:

- ``oracle``  exact gradients of the noiseless simulated ring (locally averaged, see
  labpgt/estimators/oracle.py Oracle), measuring only the clean forward pass;
- ``node``    node perturbation at the ring's inputs (labpgt's method);
- ``twin``    Physics-Aware Training: measured forward pass, backward through a fitted digital twin;
- ``pgt``     parameter-space perturbation (PGT as published), ``spsa`` Spall's SPSA;
- ``cmaes``   CMA-ES through pycma (``cma``) on the same trainable parameters (scaled units);
- ``ng-tbpsa``  Nevergrad's TBPSA (its documented choice for noisy continuous problems) and
  ``ng-ngopt``  Nevergrad's NGOpt told the function is noisy (``function.deterministic = False``).

The peers minimise the measured mean cross-entropy of a random training batch; each loss
evaluation costs exactly batch-size x virtual-node measurements (counted from the reservoir's
own counter). The peers need the optional extra ``labpgt[bench]`` (``pip install cma
nevergrad``); without it the script says so and skips them (or fails if they were asked for
explicitly).

Conditions: ``default`` (RingParams(noise_scale=1, drift off)), ``noise3`` (noise_scale=3),
``drift`` (noise_scale=1, the ring's default drift walk on, 50 ms of virtual time per
measurement).

Reported per dataset x condition x method (>= 5 seeds):

- median training measurements to reach 95% and 99% of the oracle's final test accuracy in that
  dataset and condition (runs that never reach it count as infinity in the median; "never" if
  the median is infinite), and how many seeds reached it;
- test accuracy at fixed budgets (the last evaluation at or below 10^4, 10^5, 10^6 measurements;
  only budgets a run actually spent are reported, the rest are "not run");
- final test accuracy = mean of ``--final-repeats`` evaluations of the final parameters;
- divergent runs: non-finite loss/gradient, or a final test loss above 2 ln(classes).

Evaluations (the whole test split, measured) happen on a fixed geometric schedule in training
measurements (``--evals-per-decade`` per decade from 100), the same for every method, so
"measurements to 95%" is quantised to the schedule (about 15% steps by default). Evaluation
measurements are counted separately and never in the budgets.

Default invocation (a quick look: 199 s on 2 cores; Iris and digits, all three conditions,
5 seeds, every method; budgets in DEFAULT_BUDGETS below):
    python scripts/bench_training.py
The grid reported in docs/benchmarks.md (FULL_BUDGETS, 5 seeds):
    python scripts/bench_training.py --full
"""
from __future__ import annotations

import argparse
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
sys.path.insert(0, str(ROOT / "scripts"))  # _machine, when loaded by path

from _machine import cpu_model  # noqa: E402

from labpgt.data.datasets import load  # noqa: E402
from labpgt.experiment.builder import make_trainer  # noqa: E402
from labpgt.experiment import registry  # noqa: E402

ESTIMATORS = ("oracle", "node", "twin", "spsa", "pgt")
PEERS = ("cmaes", "ng-tbpsa", "ng-ngopt")
METHODS = ESTIMATORS + PEERS
CONDITIONS = {
    "default": {"noise_scale": 1.0, "drift": False},
    "noise3": {"noise_scale": 3.0, "drift": False},
    "drift": {"noise_scale": 1.0, "drift": True},
}
# training measurements per run. Default invocation (a quick look, 199 s on 2 cores):
DEFAULT_BUDGETS = {
    "iris": {"oracle": 10_000, "node": 10_000, "twin": 10_000, "spsa": 30_000, "pgt": 30_000, "peer": 30_000},
    "digits": {"oracle": 10_000, "node": 20_000, "twin": 20_000, "spsa": 20_000, "pgt": 20_000, "peer": 20_000},
}
# --full (the grid reported in docs/benchmarks.md; ~16 + 9 min on 2 cores). Larger budgets (10^6) via
# --budget-for METHOD N.
FULL_BUDGETS = {
    "iris": {"oracle": 30_000, "node": 30_000, "twin": 30_000, "spsa": 300_000, "pgt": 300_000, "peer": 50_000},
    "digits": {"oracle": 100_000, "node": 200_000, "twin": 100_000, "spsa": 100_000, "pgt": 100_000, "peer": 100_000},
}
# peer settings (tuned on Iris at the default noise: CMA-ES sigma0 0.05 / 0.1 / 0.3 / 0.5 / 1.0 and
# batch 16 / 64; TBPSA sigma0 0.1 / 0.3 / 1.0; NGOpt 0.1 / 0.3; 0.5 and batch 16 were best for CMA-ES)
PEER_DEFAULTS = {"batch_size": 16, "sigma0": 0.5}


def peers_available() -> tuple[bool, str]:
    missing = []
    for mod in ("cma", "nevergrad"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        return False, (f"peers unavailable: {', '.join(missing)} not installed. Install the optional extra: "
                       f"pip install 'labpgt[bench]'  (or: pip install cma nevergrad)")
    return True, ""


def make_reservoir(kind: str, seed: int, n_nodes: int, n_bands: int, noise_scale: float, drift: bool = False):
    from labpgt.reservoirs.direct import DirectRingReservoir, ToyReservoir

    if kind == "toy":
        return ToyReservoir(n_nodes=n_nodes, features_per_node=n_bands, noise_std=0.05 * noise_scale, seed=seed)
    from labpgt.reservoirs.direct import simulated_ring_params

    return DirectRingReservoir(simulated_ring_params(noise_scale, drift), seed=seed, n_nodes=n_nodes,
                               readout={"n_bands": n_bands})


def eval_schedule(budget: int, per_decade: int) -> list[int]:
    """Training-measurement marks at which the test split is evaluated (geometric from 100)."""
    marks, k = [], 0
    while True:
        m = int(round(100 * 10 ** (k / per_decade)))
        if m >= budget:
            break
        if not marks or m > marks[-1]:
            marks.append(m)
        k += 1
    return marks


class _Scheduler:
    """Calls ``evaluate()`` once each time the training measurements pass the next mark."""

    def __init__(self, marks):
        self.marks, self.i = list(marks), 0

    def due(self, measurements: int) -> bool:
        hit = False
        while self.i < len(self.marks) and measurements >= self.marks[self.i]:
            self.i += 1
            hit = True
        return hit


def final_eval(trainer, repeats: int) -> tuple[float, float]:
    accs, losses = [], []
    for _ in range(repeats):
        rec = trainer.evaluate()
        accs.append(rec["accuracy"])
        losses.append(rec["loss"])
    # the repeats are extra evaluation records at the same step; drop them from the curve
    del trainer.evaluations[-repeats:]
    return float(np.mean(accs)), float(np.mean(losses))


def run_estimator(job, ds, reservoir, sched):
    extra = {k: job[k] for k in ("lr", "decay_steps", "model_options") if job.get(k) is not None}
    trainer = make_trainer(ds, job["method"], reservoir, seed=job["seed"], budget=job["budget"],
                           batch_size=job["batch_size"], eval_every=0, checkpoint_every=0,
                           estimator_options=job.get("options"), **extra)

    def progress(record):
        if record["kind"] == "step" and sched.due(record["measurements"]):
            trainer.evaluate()

    trainer.progress = progress
    trainer.evaluate()  # the untrained model, at 0 measurements
    status = trainer.run()
    trainer.progress = None
    return trainer, status


def run_peer(job, ds, reservoir, sched):
    """CMA-ES / Nevergrad on the trainable parameters (scaled), loss = measured batch cross-entropy."""
    # make_trainer builds the identical model (same seed) and the evaluation routine; its estimator is unused
    trainer = make_trainer(ds, "node", reservoir, seed=job["seed"], budget=job["budget"], eval_every=0,
                           checkpoint_every=0)
    model = trainer.model
    rng = np.random.default_rng([job["seed"], 0xBE7C])
    mask = model.trainable_mask()
    scale = model.param_scale()
    theta0 = model.params().copy()
    z0 = theta0[mask] / scale[mask]
    batch = job["batch_size"] or PEER_DEFAULTS["batch_size"]
    sigma0 = job.get("sigma0") or PEER_DEFAULTS["sigma0"]
    n_evals = max(1, job["budget"] // (batch * reservoir.n_nodes))
    state = {"train": 0, "evals": 0, "diverged": False}

    def theta_of(z):
        theta = theta0.copy()
        theta[mask] = np.asarray(z, dtype=np.float64) * scale[mask]
        return theta

    def evaluate_at(z):
        model.set_params(theta_of(z))
        trainer.train_measurements = state["train"]
        trainer.step = state["evals"]
        trainer.evaluate()

    def loss(z) -> float:
        theta = theta_of(z)
        if not np.all(np.isfinite(theta)):
            state["diverged"] = True
            return 1e3
        index = rng.choice(len(ds.y_train), size=batch, replace=False)
        x, y = ds.x_train[index], ds.y_train[index]
        u, _ = model.encode(x, theta)
        start = reservoir.measurements
        try:
            features = reservoir.measure(u, current_a=model.current_a(theta), kind="train", step=state["evals"],
                                         sample_index=index)
        except ValueError:  # the current left the allowed range: rejected by the encoder, nothing measured
            return 10.0 * math.log(ds.n_classes)
        state["train"] += reservoir.measurements - start
        state["evals"] += 1
        value = float(model.per_sample_loss(features, y, theta).mean())
        return value if math.isfinite(value) else 1e3

    evaluate_at(z0)
    if job["method"] == "cmaes":
        import cma

        opts = {"seed": job["seed"] + 1, "verbose": -9, "maxfevals": n_evals, "tolfun": 0, "tolx": 0,
                "tolfunhist": 0, "tolstagnation": 10**9, "tolflatfitness": 10**9}
        if len(z0) > 200:
            opts["CMA_diagonal"] = True  # sep-CMA: the usual choice in hundreds of dimensions
        es = cma.CMAEvolutionStrategy(z0, sigma0, opts)
        while state["train"] < job["budget"]:
            xs = es.ask()
            es.tell(xs, [loss(x) for x in xs])
            if sched.due(state["train"]):
                evaluate_at(es.mean)
        z_final = es.mean
    else:
        import nevergrad as ng

        param = ng.p.Array(init=z0).set_mutation(sigma=sigma0)
        param.random_state = np.random.RandomState(job["seed"])
        param.function.deterministic = False  # tell Nevergrad the loss is noisy
        name = {"ng-tbpsa": "TBPSA", "ng-ngopt": "NGOpt"}[job["method"]]
        opt = ng.optimizers.registry[name](parametrization=param, budget=n_evals)
        while state["train"] < job["budget"]:
            cand = opt.ask()
            opt.tell(cand, loss(cand.value))
            if sched.due(state["train"]):
                evaluate_at(opt.provide_recommendation().value)
        z_final = opt.provide_recommendation().value
        job["ng_choice"] = str(getattr(getattr(opt, "optim", None), "name", name))  # what NGOpt delegated to
    model.set_params(theta_of(z_final))
    trainer.train_measurements, trainer.step = state["train"], state["evals"]
    trainer.evaluate()
    return trainer, "diverged" if state["diverged"] else "completed"


def run_one(job: dict) -> dict:
    import warnings

    warnings.filterwarnings("ignore", module="cma")  # pycma's (and Nevergrad's CMA's) chatty warnings
    t0 = time.perf_counter()
    ds = load(job["dataset"])
    cond = CONDITIONS[job["condition"]]
    reservoir = make_reservoir(job["reservoir"], job["seed"], job["n_nodes"], job["n_bands"],
                               cond["noise_scale"] * job["noise_multiplier"], cond["drift"])
    sched = _Scheduler(eval_schedule(job["budget"], job["evals_per_decade"]))
    runner = run_peer if job["method"] in PEERS else run_estimator
    trainer, status = runner(job, ds, reservoir, sched)
    final_acc, final_loss = final_eval(trainer, job["final_repeats"])
    curve = [(e["measurements"], e["accuracy"], e["loss"]) for e in trainer.evaluations]
    divergent = status == "diverged" or not math.isfinite(final_loss) or final_loss > 2 * math.log(ds.n_classes)
    return {**job, "status": status, "divergent": bool(divergent), "curve": curve,
            "train_measurements": int(trainer.train_measurements), "eval_measurements": int(trainer.eval_measurements),
            "final_accuracy": final_acc, "final_loss": final_loss, "wall_s": time.perf_counter() - t0}


def first_reaching(curve, target):
    for measurements, accuracy, _ in curve:
        if accuracy >= target - 1e-12:
            return measurements
    return math.inf


def first_sustained(curve, target, k=3):
    """First evaluation from which this and the next k - 1 evaluations (or all that remain) reach target."""
    accs = [a for _, a, _ in curve]
    for i, (measurements, _, _) in enumerate(curve):
        window = accs[i:i + k]
        if all(a >= target - 1e-12 for a in window):
            return measurements
    return math.inf


def accuracy_at(curve, budget):
    below = [acc for m, acc, _ in curve if m <= budget]
    return below[-1] if below else math.nan


def summarise(runs: list[dict], budgets: list[int]) -> dict:
    oracle = [r["final_accuracy"] for r in runs if r["method"] == "oracle"]
    oracle_final = float(np.median(oracle)) if oracle else math.nan
    out = {"oracle_final_accuracy": oracle_final, "methods": {}}
    for name in METHODS:
        mine = [r for r in runs if r["method"] == name]
        if not mine:
            continue
        spent = min(r["train_measurements"] for r in mine)
        row = {"runs": len(mine), "divergent": sum(r["divergent"] for r in mine), "budget": mine[0]["budget"],
               "final_accuracy_median": float(np.median([r["final_accuracy"] for r in mine])),
               "final_accuracy_mean": float(np.mean([r["final_accuracy"] for r in mine])),
               "wall_s_median": float(np.median([r["wall_s"] for r in mine]))}
        if any("ng_choice" in r for r in mine):
            row["ng_choice"] = mine[0].get("ng_choice")
        for frac in (0.95, 0.99):
            reached = [first_reaching(r["curve"], frac * oracle_final) for r in mine]
            med = float(np.median(reached))
            row[f"measurements_to_{int(frac * 100)}pct"] = None if math.isinf(med) else med
            row[f"reached_{int(frac * 100)}pct"] = int(sum(np.isfinite(reached)))
        sustained = [first_sustained(r["curve"], 0.95 * oracle_final) for r in mine]
        med = float(np.median(sustained))
        row["measurements_to_95pct_sustained"] = None if math.isinf(med) else med
        row["reached_95pct_sustained"] = int(sum(np.isfinite(sustained)))
        row["accuracy_at_budget"] = {
            str(b): (float(np.nanmedian([accuracy_at(r["curve"], b) for r in mine])) if spent >= b else None)
            for b in budgets
        }
        out["methods"][name] = row
    return out


def ratio(a, b):
    return None if (a is None or b is None) else b / a


def print_table(title: str, summary: dict, budgets: list[int]) -> None:
    print(f"\n{title}: oracle final test accuracy (median of seeds) {summary['oracle_final_accuracy']:.3f}")
    head = (f"{'method':<9} {'budget':>8} {'to 95%':>9} {'n':>3} {'95% x3':>9} {'n':>3} {'to 99%':>9} {'n':>3} {'final':>6} "
            + " ".join(f"{'@' + format(b, '.0e'):>7}" for b in budgets))
    print(head + f" {'diverged':>8} {'wall s':>7}")

    def fmt(v, budget):
        return f"{v:9.0f}" if v is not None else f"{'>' + format(budget, '.0e'):>9}"

    for name, row in summary["methods"].items():
        accs = " ".join(f"{row['accuracy_at_budget'][str(b)]:7.3f}" if row["accuracy_at_budget"][str(b)] is not None
                        else f"{'-':>7}" for b in budgets)
        print(f"{name:<9} {row['budget']:>8} {fmt(row['measurements_to_95pct'], row['budget'])} "
              f"{row['reached_95pct']:>3} {fmt(row['measurements_to_95pct_sustained'], row['budget'])} "
              f"{row['reached_95pct_sustained']:>3} {fmt(row['measurements_to_99pct'], row['budget'])} {row['reached_99pct']:>3} "
              f"{row['final_accuracy_median']:6.3f} {accs} {row['divergent']:>4}/{row['runs']:<3} "
              f"{row['wall_s_median']:7.1f}")
    m = summary["methods"]
    node95 = m.get("node", {}).get("measurements_to_95pct")
    notes = []
    for other in ("oracle", "pgt", "spsa", *PEERS):
        if other not in m or "node" not in m or other == "node":
            continue
        o95 = m[other]["measurements_to_95pct"]
        if node95 and o95:
            notes.append(f"{other}/node {o95 / node95:.1f}x")
        elif node95:
            notes.append(f"{other}/node > {m[other]['budget'] / node95:.1f}x (never within {m[other]['budget']})")
    if notes:
        print("measurements to 95%: " + "; ".join(notes))


def markdown(results: dict, budgets: list[int]) -> str:
    """The results as markdown tables (docs/benchmarks.md), one per dataset x condition."""
    lines = []
    for key, block in results["results"].items():
        summary = block["summary"]
        lines += [f"**{key}** (oracle final test accuracy, median of seeds: {summary['oracle_final_accuracy']:.3f})", "",
                  "| method | budget | to 95% | reached | to 95% held 3 evals | reached | to 99% | reached | final acc | "
                  + " | ".join(f"acc @ {b:.0e}" for b in budgets) + " | divergent |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(budgets) + "---:|"]
        for name, row in summary["methods"].items():
            def cell(v):
                return f"{v:.0f}" if v is not None else f"> {row['budget']}"
            accs = " | ".join(f"{row['accuracy_at_budget'][str(b)]:.3f}" if row["accuracy_at_budget"].get(str(b))
                              is not None else "not run" for b in budgets)
            lines.append(f"| {name} | {row['budget']} | {cell(row['measurements_to_95pct'])} | "
                         f"{row['reached_95pct']}/{row['runs']} | {cell(row['measurements_to_95pct_sustained'])} | "
                         f"{row['reached_95pct_sustained']}/{row['runs']} | {cell(row['measurements_to_99pct'])} | "
                         f"{row['reached_99pct']}/{row['runs']} | {row['final_accuracy_median']:.3f} | {accs} | "
                         f"{row['divergent']}/{row['runs']} |")
        lines.append("")
    return "\n".join(lines)


def machine() -> dict:
    return {"nproc": os.cpu_count(), "cpu": cpu_model(platform.processor() or "?"), "python": platform.python_version()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="the reported grid: FULL_BUDGETS")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per configuration")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--datasets", nargs="+", default=["iris", "digits"], choices=["iris", "digits"])
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--budget", type=int, default=None, help="override every method's training budget")
    ap.add_argument("--budget-for", nargs=2, action="append", default=[], metavar=("METHOD", "N"),
                    help="override one method's budget (method name, or 'peer' for cmaes/ng-*)")
    ap.add_argument("--report-budgets", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--evals-per-decade", type=int, default=16)
    ap.add_argument("--final-repeats", type=int, default=3, help="evaluations of the final parameters, averaged")
    ap.add_argument("--reservoir", choices=["ring", "toy"], default="ring")
    ap.add_argument("--nodes", type=int, default=1, help="virtual nodes per sample")
    ap.add_argument("--bands", type=int, default=10, help="readout bands per node")
    ap.add_argument("--noise-multiplier", type=float, default=1.0, help="multiplies every condition's noise_scale")
    ap.add_argument("--batch-size", type=int, default=None, help="override every method's batch size")
    ap.add_argument("--lr-for", nargs=2, action="append", default=[], metavar=("METHOD", "LR"),
                    help="override one estimator's learning rate (the registry's tuned value otherwise: labpgt/experiment/registry.py)")
    ap.add_argument("--sigma0", type=float, default=None, help="peers' initial step (scaled units)")
    ap.add_argument("--option", nargs=3, action="append", default=[], metavar=("METHOD", "KEY", "JSON"),
                    help="estimator option override, e.g. --option node epsilon 0.05")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--from-json", type=Path, default=None,
                    help="print the tables (and markdown) of an earlier results file instead of running")
    ap.add_argument("--out", type=Path, default=ROOT / "scripts" / "results" / "bench_training.json")
    args = ap.parse_args(argv)
    seeds = args.seeds
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        for key, block in results["results"].items():  # re-summarised from the stored curves
            block["summary"] = summarise(block["runs"], args.report_budgets)
            print_table(key, block["summary"], args.report_budgets)
        args.from_json.write_text(json.dumps(results, indent=1, default=float))
        print("\n" + markdown(results, args.report_budgets))
        return 0
    budgets = FULL_BUDGETS if args.full else DEFAULT_BUDGETS

    methods = list(args.methods)
    ok, message = peers_available()
    if not ok:
        asked = [m for m in methods if m in PEERS]
        print(f"WARNING: {message}; skipping {', '.join(asked)}", file=sys.stderr)
        methods = [m for m in methods if m not in PEERS]
    overrides = {m: int(n) for m, n in args.budget_for}
    options = {}
    for m, key, value in args.option:
        options.setdefault(m, {})[key] = json.loads(value)

    jobs = []
    for dataset in args.datasets:
        for condition in args.conditions:
            for name in methods:
                key = "peer" if name in PEERS else name
                budget = args.budget or overrides.get(name) or overrides.get(key) or budgets[dataset][key]
                for seed in range(args.first_seed, args.first_seed + seeds):
                    jobs.append(dict(dataset=dataset, condition=condition, method=name, seed=seed, budget=budget,
                                     reservoir=args.reservoir, n_nodes=args.nodes, n_bands=args.bands,
                                     noise_multiplier=args.noise_multiplier, batch_size=args.batch_size,
                                     sigma0=args.sigma0, options=options.get(name),
                                     lr={m: float(v) for m, v in args.lr_for}.get(name),
                                     evals_per_decade=args.evals_per_decade, final_repeats=args.final_repeats))
    jobs.sort(key=lambda j: -j["budget"])  # longest first, for the pool's load balance
    t0 = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            runs = list(pool.map(run_one, jobs))
    else:
        runs = [run_one(j) for j in jobs]
    results = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
               "machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
               "defaults": {name: vars(registry.ESTIMATORS[name].tuning["dense"]) for name in registry.estimators_for("dense")},
               "peer_defaults": PEER_DEFAULTS, "conditions": CONDITIONS,
               "peers_available": ok, "wall_s": time.perf_counter() - t0, "results": {}}
    for dataset in args.datasets:
        for condition in args.conditions:
            mine = [r for r in runs if r["dataset"] == dataset and r["condition"] == condition]
            summary = summarise(mine, args.report_budgets)
            results["results"][f"{dataset}/{condition}"] = {"summary": summary, "runs": mine}
            print_table(f"{dataset} / {condition}", summary, args.report_budgets)
    if not ok:
        print(f"\nNOTE: {message}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=float))
    print(f"\nwrote {args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
