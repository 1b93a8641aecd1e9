"""Benchmark: `labpgt inspect`, `labpgt report` and replay's reading of a long run, in memory and time.

A run of 10M measurements takes days to record, so the long files here are SYNTHETIC: a short real
run (``labpgt train --budget 20000`` on the embedded ring, or ``--source``) repeated until it holds
N measurement rows, its steps and evaluations repeated with it (step numbers, measurement counts and
times shifted per repeat so that they grow), and one resume row that abandons 1,000 rows in the
middle (so the effective rows are two ranges). Every column has the real layout (1,763 bytes a
measurement with its trace), so the file is as large as a real one, and every tool accepts it.

Per N, each in a child process: wall time (Python's start included) and the child's own peak RSS
(VmHWM, which it writes when it exits):

* ``labpgt inspect FILE``
* ``labpgt report FILE --out DIR``
* replay's reading: a ``ReplayReservoir`` on the file reading every effective row of the columns a
  replay checks (and the features) the way ``measure()`` does, a batch at a time (a synthetic file
  cannot be replayed through a trainer: its repeats are not one training). With ``--tree`` on a
  tree before streaming, the reservoir's construction, which read the whole columns.

A real ``labpgt replay`` of real runs: ``--replay-runs FILE...`` (e.g. files kept by
``scripts/bench_scaling.py --keep DIR``). The run file writer alone, its RSS at every tenth of
``--writer-rows N`` rows (the chunk caches: training's memory used to grow with the run).

    python scripts/bench_stream.py                               # N = 1M and 10M (~19 GB of disk)
    python scripts/bench_stream.py --sizes 100000 1000000 --dir /tmp/s
    python scripts/bench_stream.py --tree /tmp/base --label before --out scripts/results/bench_stream_before.json

The synthetic files are deleted after they are measured (``--keep`` keeps them). Results:
scripts/results/bench_stream.json (``--out``), and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_floor import machine  # noqa: E402

BLOCK_ROWS = 65536  # rows written at a time into the synthetic file
ABANDONED_ROWS = 1000  # rows the synthetic resume abandons, in the middle of the file

# replay's reading path, run in a child: a ReplayReservoir reading every effective row in
# batches of REQUEST rows, as its measure() does (without a trainer's requests to check)
READ_LIKE_REPLAY = r"""
import inspect, json, sys
from labpgt.experiment.run import encoder_from_layout
from labpgt.reservoirs.replay import ReplayReservoir
from labpgt.runfile import RunReader
REQUEST = 48  # a batch of the default experiment (16 samples x 3 nodes)
with RunReader(sys.argv[1]) as reader:
    encoder = encoder_from_layout(json.loads(reader.metadata["physical_layer"]))
    reservoir = ReplayReservoir(reader, encoder)
    rows = 0
    if "window_rows" in inspect.signature(ReplayReservoir).parameters:  # streaming: walk the windows
        for lo in range(0, reservoir.recorded, REQUEST):
            rows += len(reservoir._recorded(lo, min(REQUEST, reservoir.recorded - lo))["features"])
    else:  # before streaming: the constructor read every effective row of the columns
        rows = len(reservoir._rows)
print(rows)
"""


# the child's own peak RSS: VmHWM of its memory map, written when it exits. (ru_maxrss of a child
# is no good here: Linux carries the parent's resident size over fork and exec into it.)
PEAK_AT_EXIT = r"""
import atexit, runpy, sys
out, what, target = sys.argv[1:4]
def peak():
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    with open(out, "w") as f:
        f.write(str(kb))
atexit.register(peak)
sys.argv = [target] + sys.argv[4:]
if what == "module":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    exec(compile(open(target).read(), target, "exec"), {"__name__": "__main__"})
"""


def run_measured(what: str, target: str, args: list[str], *, tree: Path, log_path: Path) -> dict:
    """Run ``python -m target args`` (what="module") or a script file: wall time, own peak RSS (MB)."""
    peak_file = log_path.with_suffix(".peak")
    env = dict(os.environ, PYTHONPATH=str(tree))
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, "-c", PEAK_AT_EXIT, str(peak_file), what, target, *args],
                               cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"{target} {' '.join(args)} exited {code}; see {log_path}")
    return {"wall_s": wall, "peak_rss_mb": int(peak_file.read_text()) / 1024.0}


# the run file writer alone, in a child: N rows of the default experiment's layout (401 trace
# points, 10 features) in steps of 48 rows with a step flush each, an evaluation and a
# checkpoint every 25 steps; its RSS and time at every tenth of the rows, as JSON
WRITE_ROWS = r"""
import json, os, sys, time
import numpy as np
from labpgt.runfile import RunFile
path, total = sys.argv[1], int(sys.argv[2])
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
k, points, features, params = 48, 401, 10, 92
rng = np.random.default_rng(0)
batch = {name: np.zeros(k, dtype) for name, dtype in (
    ("time_s", "f8"), ("step", "i8"), ("kind", "i1"), ("sample_index", "i8"), ("node", "i8"),
    ("perturbation_direction", "i8"), ("perturbation_sign", "i1"), ("frequency_hz", "f8"), ("power_dbm", "f8"),
    ("current_a", "f8"), ("trace_start_hz", "f8"), ("trace_stop_hz", "f8"), ("flags", "i8"))}
batch["trace_dbm"] = rng.normal(size=(k, points)).astype(np.float32)
batch["features"] = rng.normal(size=(k, features))
run = RunFile.create(path, n_params=params, features_per_measurement=features, trace_points=points)
samples, t0, step = [], time.perf_counter(), 0
while (step + 1) * k <= total:
    run.measurements_batch(batch)
    step += 1
    run.step({"step": step, "loss": 1.0, "accuracy": 0.5, "grad_norm": 1.0, "measurements": step * k,
              "time_s": 0.0, "current_a": 0.0})
    if step % 25 == 0:
        run.evaluation({"step": step, "measurements": step * k, "test_loss": 1.0, "test_accuracy": 0.5, "time_s": 0.0})
        run.checkpoint({"step": step, "measurements": step * k, "params": np.zeros(params), "optimizer": {},
                        "rng_state": "{}", "extra": "{}"})
    if (step * k) // (total // 10) > len(samples) - 1 or not samples:
        samples.append([step * k, rss_mb(), time.perf_counter() - t0])
run.set_status("completed")
run.close()
os.unlink(path)
print(json.dumps(samples))
"""


def measure_writer(rows: int, tree: Path, folder: Path) -> dict:
    script = folder / "write_rows.py"
    script.write_text(WRITE_ROWS)
    log = folder / f"writer-{tree.name}.log"
    child = run_measured("script", str(script), [str(folder / "writer.h5"), str(rows)], tree=tree, log_path=log)
    samples = json.loads(log.read_text().strip().splitlines()[-1])
    print(f"  writer {tree}: {rows:,} rows in {child['wall_s']:.0f} s, RSS "
          + " ".join(f"{s[1]:.0f}" for s in samples) + " MB", flush=True)
    return {"rows": rows, "wall_s": child["wall_s"], "peak_rss_mb": child["peak_rss_mb"],
            "samples_rows_rss_mb_s": samples}


def record_source(folder: Path, tree: Path) -> Path:
    """A short real run to repeat: ``labpgt train --budget 20000`` on the embedded ring."""
    path = folder / "source-20000.h5"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "labpgt.cli", "train", "--estimator", "node", "--budget", "20000", "--seed", "0",
                        "--out", str(path), "--no-progress"], cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)),
                       check=True, stdout=subprocess.DEVNULL)
    return path


def _columns(group: h5py.Group) -> list[str]:
    """The row columns of a table (datasets whose first axis is the rows; not coordinates)."""
    n = group.file["committed"][["measurements", "steps", "evaluations"].index(group.name.strip("/"))]
    return [name for name, ds in group.items()
            if isinstance(ds, h5py.Dataset) and ds.maxshape and ds.maxshape[0] is None and ds.shape[0] >= n]


def synthesize(source: Path, path: Path, n_rows: int) -> dict:
    """Write ``path``: ``source``'s rows repeated to ``n_rows`` measurements (see the module docstring)."""
    shutil.copyfile(source, path)
    t0 = time.perf_counter()
    with h5py.File(path, "r+") as f:
        committed = f["committed"][:]
        n_src = {t: int(committed[i]) for i, t in enumerate(("measurements", "steps", "evaluations"))}
        src = {t: {c: f[t][c][:n_src[t]] for c in _columns(f[t])} for t in n_src}
        steps_per_repeat = int(src["steps"]["step"][-1]) + 1
        measurements_per_repeat = int(src["steps"]["measurements"][-1])
        seconds_per_repeat = float(src["measurements"]["time_s"][-1] - src["measurements"]["time_s"][0]) + 1.0
        repeats = -(-n_rows // n_src["measurements"])
        sizes = {"measurements": n_rows, "steps": repeats * n_src["steps"], "evaluations": repeats * n_src["evaluations"]}
        for table, size in sizes.items():
            for c in src[table]:
                f[table][c].resize(size, axis=0)
            n = n_src[table]
            for lo in range(0, size, BLOCK_ROWS):
                hi = min(size, lo + BLOCK_ROWS)
                index = np.arange(lo, hi)
                repeat, row = index // n, index % n
                for c, column in src[table].items():
                    block = column[row]
                    if c == "step":
                        block = block + repeat * steps_per_repeat
                    elif c == "measurements":
                        block = block + repeat * measurements_per_repeat
                    elif c == "time_s":
                        block = block + repeat * seconds_per_repeat
                    f[table][c][lo:hi] = block
        # one resume that abandoned ABANDONED_ROWS rows in the middle (no steps, no evaluations)
        resumes = f["resumes"]
        mid = n_rows // 2
        row = {"time_s": float(src["measurements"]["time_s"][-1]), "checkpoint": int(committed[3]) - 1,
               "budget": -1, "measurements_start": mid, "measurements_stop": mid + ABANDONED_ROWS,
               "steps_start": 0, "steps_stop": 0, "evaluations_start": 0, "evaluations_stop": 0}
        for name, value in row.items():
            resumes[name].resize(1, axis=0)
            resumes[name][0] = value
        committed[:3] = [sizes["measurements"], sizes["steps"], sizes["evaluations"]]
        committed[5] = 1
        f["committed"][:] = committed
    return {"rows": n_rows, "file_bytes": path.stat().st_size, "write_s": time.perf_counter() - t0}


def measure_tools(path: Path, tree: Path, folder: Path) -> dict:
    reader = folder / "read_like_replay.py"
    reader.write_text(READ_LIKE_REPLAY)
    tools = {
        "inspect": ("module", "labpgt.cli", ["inspect", str(path)]),
        "report": ("module", "labpgt.cli", ["report", str(path), "--out", str(folder / f"{path.stem}-report")]),
        "replay_read": ("script", str(reader), [str(path)]),
    }
    out = {}
    for name, (what, target, args) in tools.items():
        child = run_measured(what, target, args, tree=tree, log_path=folder / f"{path.stem}-{name}.log")
        out[name] = {"wall_s": child["wall_s"], "peak_rss_mb": child["peak_rss_mb"]}
        print(f"  {name}: {child['wall_s']:.1f} s, {child['peak_rss_mb']:.0f} MB", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000],
                   help="measurement rows of the synthetic files")
    p.add_argument("--replay-runs", nargs="*", default=[], help="real run files to `labpgt replay`")
    p.add_argument("--writer-rows", type=int, default=0,
                   help="also write this many rows with RunFile alone (this tree and --before): RSS by tenth")
    p.add_argument("--source", default="", help="a short real run to repeat (default: record one, budget 20000)")
    p.add_argument("--dir", default="", help="where to write the synthetic files (default: a scratch directory)")
    p.add_argument("--keep", action="store_true", help="keep the synthetic files (in --dir)")
    p.add_argument("--tree", default=str(ROOT), help="source tree whose labpgt runs (default: this one)")
    p.add_argument("--label", default="", help="name of this tree in the results (default: its path)")
    p.add_argument("--before", default="", help="another source tree (e.g. a checkout from before streaming) "
                                                 "to measure on the same synthetic files")
    p.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_stream.json"))
    args = p.parse_args(argv)
    tree = Path(args.tree).resolve()
    result = {"machine": machine(), "tree": str(tree), "label": args.label or str(tree), "before": args.before,
              "synthetic": [],
              "replay": [], "command": "python scripts/bench_stream.py " + " ".join(argv if argv is not None
                                                                                    else sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.keep and not args.dir:
        p.error("--keep needs --dir (the scratch directory is deleted at the end)")
    with tempfile.TemporaryDirectory(dir=args.dir or None) as scratch:
        folder = Path(args.dir) if args.keep else Path(scratch)
        if args.writer_rows:
            result["writer"] = [dict(measure_writer(args.writer_rows, tree, folder), label=result["label"])]
            if args.before:
                result["writer"].append(dict(measure_writer(args.writer_rows, Path(args.before).resolve(), folder),
                                             label="before"))
            out.write_text(json.dumps(result, indent=2) + "\n")
        for run in args.replay_runs:
            with h5py.File(run, "r") as f:
                rows = int(f["committed"][0])
            child = run_measured("module", "labpgt.cli", ["replay", str(run)], tree=tree,
                                 log_path=folder / "replay.log")
            verdict = (folder / "replay.log").read_text().strip().splitlines()[-1]
            result["replay"].append({"file": str(run), "rows": rows, "wall_s": child["wall_s"],
                                     "peak_rss_mb": child["peak_rss_mb"], "verdict": verdict})
            print(f"replay {run} ({rows:,} rows): {child['wall_s']:.1f} s, {child['peak_rss_mb']:.0f} MB: {verdict}",
                  flush=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
        if args.sizes:
            source = Path(args.source) if args.source else record_source(folder, tree)
            with h5py.File(source, "r") as f:
                bytes_per_row = source.stat().st_size / int(f["committed"][0])
            for n in args.sizes:
                need = 1.1 * n * bytes_per_row
                free = shutil.disk_usage(folder).free
                if need > free - 5e9:  # leave 5 GB to everyone else on the disk
                    print(f"N = {n:,}: skipped, needs ~{need / 1e9:.1f} GB, {free / 1e9:.1f} GB free in {folder}")
                    result["synthetic"].append({"rows": n, "skipped": f"needs {need / 1e9:.1f} GB, {free / 1e9:.1f} free"})
                    continue
                path = folder / f"synthetic-{n}.h5"
                print(f"N = {n:,}: writing {path} ...", flush=True)
                entry = synthesize(source, path, n)
                entry.update(measure_tools(path, tree, folder))
                if args.before:
                    print("  before:", flush=True)
                    entry["before"] = measure_tools(path, Path(args.before).resolve(), folder)
                entry["loadavg"] = os.getloadavg()
                result["synthetic"].append(entry)
                out.write_text(json.dumps(result, indent=2) + "\n")
                if not args.keep:
                    path.unlink()
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = [f"`{result['label']}`", ""]
    if result["synthetic"]:
        lines += ["| synthetic file: measurements | file GB | inspect s | inspect RSS MB | report s | report RSS MB | "
                  "replay's reading s | replay's reading RSS MB |", "|---|---|---|---|---|---|---|---|"]
        for e in result["synthetic"]:
            if "skipped" in e:
                lines.append(f"| {e['rows']:,} | skipped: {e['skipped']} | | | | | | |")
                continue
            for label, tools in (("", e), (" (before)", e.get("before"))):
                if tools:
                    lines.append(
                        f"| {e['rows']:,}{label} | {e['file_bytes'] / 1e9:.1f} | {tools['inspect']['wall_s']:.1f} | "
                        f"{tools['inspect']['peak_rss_mb']:.0f} | {tools['report']['wall_s']:.1f} | "
                        f"{tools['report']['peak_rss_mb']:.0f} | {tools['replay_read']['wall_s']:.1f} | "
                        f"{tools['replay_read']['peak_rss_mb']:.0f} |")
    for e in result.get("writer", []):
        lines += ["", f"RunFile writer alone ({e['label']}): {e['rows']:,} rows in {e['wall_s']:.0f} s; RSS MB at each "
                  "tenth: " + ", ".join(f"{s[1]:.0f}" for s in e["samples_rows_rss_mb_s"])]
    if result["replay"]:
        lines += ["", "| real run: measurement rows | `labpgt replay` s | peak RSS MB | verdict |", "|---|---|---|---|"]
        for e in result["replay"]:
            lines.append(f"| {e['rows']:,} | {e['wall_s']:.1f} | {e['peak_rss_mb']:.0f} | {e['verdict']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
