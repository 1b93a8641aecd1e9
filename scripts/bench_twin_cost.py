"""What the twin costs in the run file: bytes per training measurement and per checkpoint, twin vs node.

Each arm is one ``labpgt train`` (the API, the embedded simulated station, Iris, seed 0, the same
budget and the CLI's default checkpoint and evaluation spacing) written to a temporary run file:

- ``node``        node perturbation, the dense model's default estimator;
- ``twin-before`` the twin with the options every run recorded before issue 16 item 4 (buffer of
                  1500 float64 rows, no mismatch detection);
- ``twin``        the twin with the registry's tuned options today.

Reported: the run file's size and its bytes per training measurement, the checkpoint group's
storage (HDF5 allocated bytes) and its mean per checkpoint, the estimator state's mean length in the
checkpoints' ``extra`` text, and the test accuracy the run ended with.

    nice python scripts/bench_twin_cost.py --budget 4000 --out scripts/results/bench_twin_cost.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import h5py  # noqa: E402

import labpgt  # noqa: E402
from labpgt.experiment import registry  # noqa: E402

#: the twin's tuning before issue 16 item 4 (what every twin run file recorded until then)
BEFORE = registry.Tuning({}, "adam", 0.05, 300, 8)


def storage(group) -> int:
    total = 0

    def visit(_, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            total += obj.id.get_storage_size()

    group.visititems(visit)
    return total


def measure(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        committed = f["committed"][:]
        ck = f["checkpoints"]
        n_ckpt = int(committed[3])
        offsets, lengths = ck["extra_offset"][:n_ckpt], ck["extra_length"][:n_ckpt]
        text = ck["extra_utf8"][:]
        states = [len(json.dumps(json.loads(bytes(text[o:o + n]).decode())["estimator"]))
                  for o, n in zip(offsets, lengths)]
        train = int(f["steps/measurements"][int(committed[1]) - 1])
        ckpt_bytes = storage(ck)
    size = path.stat().st_size
    return {"file_bytes": size, "train_measurements": train, "file_bytes_per_measurement": size / train,
            "checkpoints": n_ckpt, "checkpoint_bytes": ckpt_bytes, "checkpoint_bytes_each": ckpt_bytes / n_ckpt,
            "checkpoint_bytes_per_measurement": ckpt_bytes / train,
            "estimator_state_chars_each": sum(states) / len(states)}


def run_arm(arm: str, budget: int, tmp: Path) -> dict:
    spec = registry.ESTIMATORS["twin"]
    if arm == "twin-before":
        registry.ESTIMATORS["twin"] = dataclasses.replace(spec, tuning={**spec.tuning, "dense": BEFORE})
    try:
        path = tmp / f"{arm}.h5"
        outcome = labpgt.train(estimator="node" if arm == "node" else "twin", budget=budget, seed=0, out=str(path))
    finally:
        registry.ESTIMATORS["twin"] = spec
    with labpgt.open_run(path) as run:
        options = json.loads(run.metadata["estimator_options"])
    return {"arm": arm, "estimator_options": options, "test_accuracy": outcome.final_evaluation["accuracy"],
            **measure(path)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=int, default=4000)
    ap.add_argument("--arms", nargs="+", default=["node", "twin-before", "twin"])
    ap.add_argument("--out", type=Path, default=ROOT / "scripts" / "results" / "bench_twin_cost.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_arm(arm, args.budget, Path(tmp)) for arm in args.arms]
    print("| arm | file bytes | bytes / measurement | checkpoints | checkpoint bytes each | checkpoint bytes / "
          "measurement | estimator state chars each | test accuracy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['arm']} | {r['file_bytes']:,} | {r['file_bytes_per_measurement']:.0f} | {r['checkpoints']} | "
              f"{r['checkpoint_bytes_each']:,.0f} | {r['checkpoint_bytes_per_measurement']:.0f} | "
              f"{r['estimator_state_chars_each']:,.0f} | {r['test_accuracy']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(["python", "scripts/bench_twin_cost.py",
                                                         *(argv if argv is not None else sys.argv[1:])]),
                                    "budget": args.budget, "arms": rows}, indent=1))
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
