"""Digits through the ring: configurations of the dense hybrid model, and what the ring contributes.

Every run trains the dense hybrid model (64 pixels -> hidden tanh layer -> 2 knobs per virtual node
-> ring -> readout bands -> 10 classes) on the bundled digits split (1437 train / 360 test)
through the simulated ring evaluated in-process (DirectRingReservoir: the simulated instruments'
physics and noise, no wire), with the analyzer window of the embedded station
(instruments/stations/sim.toml: span 20 MHz, 401 points, RBW 50 kHz) and its encoder defaults
(detuning +-10 MHz around the free-running line, power -40..-5 dBm). Drift is off (the embedded
station has it on; see docs/benchmarks.md). Cost = training measurements, one per sample per
virtual node; the test split is evaluated separately and not counted.

Configurations (CONFIGS below) are named; each lists the `labpgt train` command that runs the same
experiment on the embedded station (`--nodes`, `--hidden`, `--estimator`, `--batch-size`, `--lr`
are existing experiment options, recorded in the run file like every option).

Arms (``--arms``): the same network and estimator with the ring replaced by
- ``ring``: the simulated ring (noise included);
- ``noiseless``: the ring's noiseless digital model (same physics, noise_scale 0);
- ``random``: a fixed random tanh map with the same number of features per node (ToyReservoir,
  noiseless);
- ``none``: nothing, the knobs read out directly (2 features per node).
(labpgt/reservoirs/stand_ins.py.)

Reported per configuration and arm: median (min-max) over seeds of the final test accuracy (mean
of ``--final-repeats`` evaluations of the final parameters), accuracy at fixed budgets, and the
median measurements to the first evaluation >= 0.90.

Winning configuration, 5 seeds (docs/benchmarks.md, "Digits through the ring"), and its ablation:
    python scripts/bench_digits.py --configs twin-v4-h32-b32-lr0.03 --arms ring \
        --out scripts/results/bench_digits_ring_lr003.json
    python scripts/bench_digits.py --configs twin-v4-h32-b32-lr0.03 --arms none random noiseless --seeds 0 1 2 \
        --out scripts/results/bench_digits_ablation_lr003.json
The same at the twin's default lr 0.05, and variants that lost (hidden 64; lr 0.1):
    python scripts/bench_digits.py --configs twin-v4-h32-b32 --arms ring --out scripts/results/bench_digits_ring.json
    python scripts/bench_digits.py --configs twin-v4-h32-b32 --arms none random noiseless --seeds 0 1 2 \
        --out scripts/results/bench_digits_ablation.json
    python scripts/bench_digits.py --configs twin-v4-h64-b32 twin-v4-h32-b32-lr0.1 --arms ring \
        --out scripts/results/bench_digits_ring_variants.json
Quick look (1 seed, 50k):
    python scripts/bench_digits.py --seeds 0 --budget 50000
The ring's map from knobs to features (noise against spread, flat and steep regions):
    python scripts/bench_digits.py --ring-map
Tables again from a JSON file:
    python scripts/bench_digits.py --from-json scripts/results/bench_digits.json
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

#: the embedded station's analyzer window (instruments/stations/sim.toml), so the in-process runs
#: see the traces `labpgt train` sees
STATION_READOUT = {"span_hz": 20e6, "points": 401, "rbw_hz": 50e3}

#: name -> (make_trainer settings, the equivalent `labpgt train` flags). Seeds and budget are added.
CONFIGS = {
    # the shipped defaults on digits (one node, 8 hidden units): the 0.57-0.64 of the training tables
    "node-v1-h8": ({"estimator": "node", "nodes": 1, "hidden": 8, "bands": 10},
                   "--estimator node"),
    "twin-v1-h8": ({"estimator": "twin", "nodes": 1, "hidden": 8, "bands": 10},
                   "--estimator twin"),
    "twin-v4-h8": ({"estimator": "twin", "nodes": 4, "hidden": 8, "bands": 10},
                   "--estimator twin --nodes 4"),
    "twin-v4-h32": ({"estimator": "twin", "nodes": 4, "hidden": 32, "bands": 10},
                    "--estimator twin --nodes 4 --hidden 32"),
    "twin-v4-h32-b32": ({"estimator": "twin", "nodes": 4, "hidden": 32, "bands": 10, "batch_size": 32},
                        "--estimator twin --nodes 4 --hidden 32 --batch-size 32"),
    "twin-v4-h64-b32": ({"estimator": "twin", "nodes": 4, "hidden": 64, "bands": 10, "batch_size": 32},
                        "--estimator twin --nodes 4 --hidden 64 --batch-size 32"),
    "twin-v4-h32-b32-lr0.1": ({"estimator": "twin", "nodes": 4, "hidden": 32, "bands": 10, "batch_size": 32,
                               "lr": 0.1},
                              "--estimator twin --nodes 4 --hidden 32 --batch-size 32 --lr 0.1"),
    "twin-v4-h32-b32-lr0.03": ({"estimator": "twin", "nodes": 4, "hidden": 32, "bands": 10, "batch_size": 32,
                                "lr": 0.03},
                               "--estimator twin --nodes 4 --hidden 32 --batch-size 32 --lr 0.03"),
    "twin-v4-h64": ({"estimator": "twin", "nodes": 4, "hidden": 64, "bands": 10},
                    "--estimator twin --nodes 4 --hidden 64"),
    "twin-v8-h32": ({"estimator": "twin", "nodes": 8, "hidden": 32, "bands": 10},
                    "--estimator twin --nodes 8 --hidden 32"),
    "node-v4-h32": ({"estimator": "node", "nodes": 4, "hidden": 32, "bands": 10, "lr": 0.02},
                    "--estimator node --nodes 4 --hidden 32 --lr 0.02"),
    "oracle-v4-h32": ({"estimator": "oracle", "nodes": 4, "hidden": 32, "bands": 10},
                      "--estimator oracle --nodes 4 --hidden 32"),
}
ARMS = ("ring", "noiseless", "random", "none")
BUDGET_MARKS = (25_000, 50_000, 100_000, 200_000)
TARGET = 0.90


def command_for(config: str, seed: int, budget: int) -> str:
    return f"labpgt train --dataset digits {CONFIGS[config][1]} --budget {budget} --seed {seed}"


def run_one(job: dict) -> dict:
    from labpgt.data.datasets import load
    from labpgt.experiment.builder import make_trainer
    from labpgt.reservoirs.stand_ins import make_stand_in

    t0 = time.perf_counter()
    settings = CONFIGS[job["config"]][0]
    dataset = load("digits")
    reservoir = make_stand_in(job["arm"], seed=job["seed"], n_nodes=settings["nodes"],
                              readout={**STATION_READOUT, "n_bands": settings["bands"]})
    trainer = make_trainer(dataset, settings["estimator"], reservoir, seed=job["seed"], budget=job["budget"],
                           batch_size=settings.get("batch_size"), lr=settings.get("lr"),
                           model_options={"hidden_before": (settings["hidden"],)}, eval_every=0, checkpoint_every=0)
    marks = list(np.linspace(job["budget"] / job["n_evals"], job["budget"], job["n_evals"])[:-1])

    def progress(record):
        if record["kind"] == "step" and marks and record["measurements"] >= marks[0]:
            while marks and record["measurements"] >= marks[0]:
                marks.pop(0)
            trainer.evaluate()

    trainer.progress = progress
    trainer.evaluate()  # the untrained model, at 0 measurements
    status = trainer.run()
    trainer.progress = None
    repeats = [trainer.evaluate()["accuracy"] for _ in range(job["final_repeats"])]
    del trainer.evaluations[-job["final_repeats"]:]
    curve = [(e["measurements"], e["accuracy"]) for e in trainer.evaluations]
    return {**job, "status": status, "steps": trainer.step, "curve": curve,
            "final_accuracy": float(np.mean(repeats)), "final_repeats_accuracy": repeats,
            "train_measurements": int(trainer.train_measurements), "wall_s": time.perf_counter() - t0,
            "command": command_for(job["config"], job["seed"], job["budget"]) if job["arm"] == "ring" else None}


def accuracy_at(curve, budget):
    # the last step may overshoot the budget by less than one step's cost (the final evaluation)
    below = [a for m, a in curve if 0 < m <= budget * 1.01]
    return below[-1] if below and curve[-1][0] >= budget * 0.98 else None


def first_at_or_above(curve, target):
    return next((m for m, a in curve if a >= target - 1e-12), math.inf)


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for config in dict.fromkeys(r["config"] for r in runs):
        for arm in ARMS:
            mine = [r for r in runs if r["config"] == config and r["arm"] == arm]
            if not mine:
                continue
            finals = [r["final_accuracy"] for r in mine]
            reach = [first_at_or_above(r["curve"], TARGET) for r in mine]
            at = {}
            for b in BUDGET_MARKS:
                vals = [accuracy_at(r["curve"], b) for r in mine]
                at[b] = float(np.median(vals)) if all(v is not None for v in vals) else None
            rows.append({
                "config": config, "arm": arm, "seeds": [r["seed"] for r in mine], "budget": mine[0]["budget"],
                "final_median": float(np.median(finals)), "final_min": min(finals), "final_max": max(finals),
                "at": at, "to_target_median": float(np.median(reach)), "reached": int(np.sum(np.isfinite(reach))),
                "wall_s_median": float(np.median([r["wall_s"] for r in mine])),
            })
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| configuration | ring replaced by | seeds | budget | "
            + " | ".join(f"acc @ {b // 1000}k" for b in BUDGET_MARKS)
            + f" | final (min–max) | to ≥ {TARGET:.2f} | reached | wall/run |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    arm_name = {"ring": "— (the ring)", "noiseless": "noiseless ring model", "random": "random tanh map",
                "none": "nothing (knobs)"}
    for row in rows:
        accs = " | ".join("—" if row["at"][b] is None else f"{row['at'][b]:.3f}" for b in BUDGET_MARKS)
        to = "never" if math.isinf(row["to_target_median"]) else f"{row['to_target_median'] / 1000:.0f}k"
        lines.append(f"| {row['config']} | {arm_name[row['arm']]} | {len(row['seeds'])} | {row['budget'] // 1000}k | "
                     f"{accs} | {row['final_median']:.3f} ({row['final_min']:.3f}–{row['final_max']:.3f}) | {to} | "
                     f"{row['reached']}/{len(row['seeds'])} | {row['wall_s_median']:.0f} s |")
    return "\n".join(lines)


def ring_map_stats(n_points: int = 200, repeats: int = 10, seed: int = 0) -> dict:
    """How the ring's features depend on one node's knobs: noise against spread, and how flat or steep.

    Random knob points in [-0.9, 0.9]^2 (1 node, the station's window, 10 bands): the measurement
    noise per band (std over ``repeats`` measurements), the spread of the noiseless features over
    the points, and the norm of the noiseless Jacobian per knob (central differences, step 0.01).
    """
    from labpgt.reservoirs.stand_ins import make_stand_in

    readout = {**STATION_READOUT, "n_bands": 10}
    ring = make_stand_in("ring", seed=seed, n_nodes=1, readout=readout)
    clean = make_stand_in("noiseless", seed=seed, n_nodes=1, readout=readout)
    u = np.random.default_rng(seed).uniform(-0.9, 0.9, (n_points, 2))

    def features(res, knobs):
        return res.measure(knobs, current_a=1.8, kind="train", step=0, sample_index=np.arange(len(knobs)))

    spread = features(clean, u).std(axis=0)
    noise = np.median(np.stack([features(ring, u) for _ in range(repeats)]).std(axis=0, ddof=1), axis=0)
    out = {"feature_spread_per_band": spread.tolist(), "noise_std_per_band": noise.tolist(),
           "signal_to_noise_per_band": (spread / noise).tolist()}
    step = 0.01
    for k, name in enumerate(("detuning", "power")):
        up, down = u.copy(), u.copy()
        up[:, k] += step
        down[:, k] -= step
        norms = np.linalg.norm((features(clean, up) - features(clean, down)) / (2 * step), axis=1)
        out[f"jacobian_norm_{name}_percentiles_10_50_90_99"] = np.percentile(norms, [10, 50, 90, 99]).tolist()
        out[f"jacobian_flat_share_{name}"] = float(np.mean(norms < 0.05))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["twin-v4-h32-b32-lr0.03"], choices=list(CONFIGS))
    parser.add_argument("--arms", nargs="+", default=["ring"], choices=ARMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--budget", type=int, default=200_000, help="training measurements per run")
    parser.add_argument("--evals", type=int, default=16, help="evaluations of the test split per run")
    parser.add_argument("--final-repeats", type=int, default=3, help="evaluations of the final parameters")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", default="scripts/results/bench_digits.json")
    parser.add_argument("--from-json", nargs="+", help="print the tables of earlier runs (.json, or .jsonl as "
                        "written while running) and exit")
    parser.add_argument("--ring-map", action="store_true",
                        help="print how the ring's features depend on the knobs (noise, flatness) and exit")
    args = parser.parse_args(argv)

    if args.ring_map:
        print(json.dumps(ring_map_stats(), indent=1))
        return 0

    if args.from_json:
        runs = []
        for name in args.from_json:
            text = Path(name).read_text()
            # a finished benchmark's JSON, or the runs it appended one per line while it ran
            runs += json.loads(text)["runs"] if name.endswith(".json") else [json.loads(x) for x in text.splitlines()]
        print(markdown(summarise(runs)))
        return 0
    jobs = [{"config": c, "arm": a, "seed": s, "budget": args.budget, "n_evals": args.evals,
             "final_repeats": args.final_repeats}
            for c in args.configs for a in args.arms for s in args.seeds]
    t0 = time.perf_counter()
    runs = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for run in pool.map(run_one, jobs):
            runs.append(run)
            with open(args.out + "l", "a") as partial:  # each run as it finishes: a killed benchmark keeps them
                partial.write(json.dumps(run, default=float) + "\n")
            print(f"{run['config']:>14} {run['arm']:>9} seed {run['seed']}: final {run['final_accuracy']:.3f} "
                  f"({run['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    rows = summarise(runs)
    table = markdown(rows)
    print(table)
    out = {"argv": sys.argv, "wall_s": time.perf_counter() - t0, "readout": STATION_READOUT,
           "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
                       "numpy": np.__version__, "load_average": os.getloadavg()},
           "runs": runs, "summary": rows, "table": table}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
