"""Interleaved A/B of the loop against its floor: two source trees, one machine, alternating rounds.

Each round runs ``scripts/bench_loop.py --skip a,b,c --rounds 1`` (the loop, the floor against an
instant server, the floor against the simulator: one run each) once per tree, in alternating
order, each in a fresh process with that tree first on the path. Medians and spreads per tree,
and the ratio loop / floor per run. The trees are source trees of this project (e.g. one made
with ``git archive <commit> | tar -x -C DIR``); each is given this tree's ``bench_loop.py``,
``bench_floor.py`` and ``_machine.py`` in a scratch copy, so both sides are measured by the same
script.

    python scripts/bench_ab.py --tree before=/tmp/base --tree after=. --rounds 8

Results: scripts/results/bench_ab.json (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_floor import machine, summary  # noqa: E402

SCRIPTS = ("bench_loop.py", "bench_floor.py", "_machine.py")
CONTENDERS = ("loop", "floor_instant", "floor_sim")


def scratch_tree(source: Path, into: Path) -> Path:
    """A copy of ``source``'s packages with this tree's benchmark scripts."""
    target = into / source.name
    for package in ("labpgt", "instruments", "drivers", "sim"):
        shutil.copytree(source / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "scripts").mkdir(parents=True)
    for name in SCRIPTS:
        shutil.copy(ROOT / "scripts" / name, target / "scripts" / name)
    return target


def one_round(tree: Path, args, out: Path) -> dict:
    command = [sys.executable, str(tree / "scripts" / "bench_loop.py"), "--skip", "a,b,c", "--rounds", "1",
               "--round-measurements", str(args.measurements), "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run(command, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    floor = json.loads(out.read_text())["floor"]
    return {name: floor["runs"][name][0] for name in CONTENDERS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", required=True, metavar="LABEL=DIR",
                   help="a source tree to measure (twice or more)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--measurements", type=int, default=1600, help="timed measurements per run")
    p.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_ab.json"))
    args = p.parse_args(argv)
    trees = dict(item.split("=", 1) for item in args.tree)
    result = {"machine": machine(), "trees": trees, "args": vars(args), "runs": {label: [] for label in trees},
              "command": "python scripts/bench_ab.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    with tempfile.TemporaryDirectory() as tmpdir:
        copies = {label: scratch_tree(Path(path).resolve(), Path(tmpdir) / label) for label, path in trees.items()}
        labels = list(trees)
        for r in range(args.rounds):
            for label in (labels if r % 2 == 0 else labels[::-1]):
                run = one_round(copies[label], args, Path(tmpdir) / f"{label}-{r}.json")
                result["runs"][label].append(run)
                print(f"round {r} {label:10s} " + "  ".join(
                    f"{name} {run[name]['measurements_per_s']:.0f}/s" for name in CONTENDERS), flush=True)
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    result["summary"] = {}
    for label, runs in result["runs"].items():
        result["summary"][label] = {
            **{f"{name}_per_s": summary([x[name]["measurements_per_s"] for x in runs]) for name in CONTENDERS},
            **{f"{name}_cpu_us": summary([x[name]["cpu_us_per_measurement"] for x in runs]) for name in CONTENDERS},
            "loop_over_floor_instant": summary([x["loop"]["measurements_per_s"] / x["floor_instant"]["measurements_per_s"]
                                                for x in runs]),
            "loop_over_floor_sim": summary([x["loop"]["measurements_per_s"] / x["floor_sim"]["measurements_per_s"]
                                            for x in runs]),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    def cell(s, fmt):
        return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"

    print(f"\n{args.rounds} interleaved rounds, {args.measurements} measurements per run; median (min–max)")
    print("| | " + " | ".join(trees) + " |\n|---|" + "---|" * len(trees))
    rows = [("loop, measurements/s", "loop_per_s", "{:.0f}"),
            ("floor (instant server), measurements/s", "floor_instant_per_s", "{:.0f}"),
            ("floor (simulated instruments), measurements/s", "floor_sim_per_s", "{:.0f}"),
            ("**ratio loop / floor (instant)**", "loop_over_floor_instant", "{:.2f}"),
            ("ratio loop / floor (simulated)", "loop_over_floor_sim", "{:.2f}"),
            ("loop, process CPU µs/measurement", "loop_cpu_us", "{:.0f}"),
            ("floor (simulated), process CPU µs/measurement", "floor_sim_cpu_us", "{:.0f}")]
    for label, key, fmt in rows:
        print(f"| {label} | " + " | ".join(cell(result["summary"][t][key], fmt) for t in trees) + " |")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
