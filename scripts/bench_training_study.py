"""The tables of scripts/bench_training.py, from a study of kind "bench-training".

    labpgt study scripts/studies/bench_training.toml          # the runs (resumable, any Dask cluster)
    python scripts/bench_training_study.py studies/bench_training [--out results.json]

Reads every completed trial's result (trials/*/result.json: what bench_training's run_one
returned) and prints the same per data set x condition tables, with bench_training's own
summarise / print_table / markdown, so the numbers are those the script prints for the same runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_training  # noqa: E402


def load_runs(folder: Path) -> tuple[list[dict], list[str]]:
    index = json.loads((folder / "index.json").read_text())
    runs, missing = [], []
    for name, entry in index["trials"].items():
        result = folder / "trials" / name / "result.json"
        if entry.get("kind") != "bench-training":
            raise SystemExit(f"error: {folder / 'index.json'}: trial {name} is of kind {entry.get('kind')!r}; "
                             f"allowed: bench-training")
        if entry["status"] == "completed" and result.exists():
            runs.append(json.loads(result.read_text()))
        else:
            missing.append(f"{name}: {entry['status']}" + (f" ({entry['error']})" if entry.get("error") else ""))
    return runs, missing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study_folder", type=Path)
    ap.add_argument("--report-budgets", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--out", type=Path, help="also write the runs and summaries as bench_training's JSON")
    args = ap.parse_args(argv)
    runs, missing = load_runs(args.study_folder)
    results = {"study_folder": str(args.study_folder), "results": {}}
    # bench_training's order: data sets, then conditions, as its default invocation prints them
    for dataset in ("iris", "digits"):
        for condition in bench_training.CONDITIONS:
            mine = [r for r in runs if r["dataset"] == dataset and r["condition"] == condition]
            if not mine:
                continue
            mine.sort(key=lambda r: (bench_training.METHODS.index(r["method"]), r["seed"]))
            summary = bench_training.summarise(mine, args.report_budgets)
            results["results"][f"{dataset}/{condition}"] = {"summary": summary, "runs": mine}
            bench_training.print_table(f"{dataset} / {condition}", summary, args.report_budgets)
    if missing:
        print(f"\n{len(missing)} trial(s) without a result, left out of the tables:")
        print("\n".join(f"  {line}" for line in missing))
    print("\n" + bench_training.markdown(results, args.report_budgets))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=float))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
