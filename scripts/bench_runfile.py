"""Run file write cost: bytes per measurement and sustained write rate.

Traces of 401 and 1001 points; per-row ``measurement()`` (buffered in 64-row blocks) vs
``measurements_batch()``; trace compression none vs lzf. Traces are realistic-ish: a noise floor
near -90 dBm with single-sweep (exponential) noise and one line. A step() (flush) every
``--step-rows`` rows, as the trainer does. Writes scripts/results/bench_runfile.json.

    python scripts/bench_runfile.py [--rows 20000] [--step-rows 64] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from labpgt.runfile import RunFile  # noqa: E402

FEATURES = 10


def traces(rng, n, points):
    floor_mw = 10 ** (-9.0) * rng.exponential(1.0, (n, points))  # -90 dBm floor, single-sweep noise
    line = np.zeros(points)
    line[points // 2 - 2: points // 2 + 3] = 10 ** (-1.0)
    return (10 * np.log10(floor_mw + line)).astype(np.float32)


def run(points, mode, compression, rows, step_rows, tmp):
    rng = np.random.default_rng(0)
    tr = traces(rng, rows, points)
    feats = rng.normal(size=(rows, FEATURES))
    path = Path(tmp) / f"bench_{points}_{mode}_{compression}.h5"
    rf = RunFile.create(path, n_params=100, features_per_measurement=FEATURES, trace_points=points,
                        optimizer_state_shapes={"m": (100,)}, metadata={"seed": 0},
                        trace_compression=compression, overwrite=True)
    axis = (2.05e9, 2.08e9, points)
    t0 = time.perf_counter()
    step = 0
    for start in range(0, rows, step_rows):
        stop = min(rows, start + step_rows)
        if mode == "row":
            for i in range(start, stop):
                rf.measurement({
                    "time_s": time.time(), "step": step, "kind": "train", "sample_index": i, "node": 0,
                    "perturbation_direction": 1, "perturbation_sign": 1,
                    "settings": {"frequency_hz": 2.06e9 + i, "power_dbm": -20.0, "current_a": 1.8},
                    "trace_dbm": tr[i], "frequency_axis": axis, "features": feats[i], "flags": 16,
                })
        else:
            n = stop - start
            rf.measurements_batch({
                "time_s": np.full(n, time.time()), "step": step, "kind": "train",
                "sample_index": np.arange(start, stop), "node": np.zeros(n, int),
                "perturbation_direction": 1, "perturbation_sign": 1,
                "settings": {"frequency_hz": 2.06e9 + np.arange(start, stop), "power_dbm": np.full(n, -20.0),
                             "current_a": 1.8},
                "trace_dbm": tr[start:stop], "frequency_axis": axis, "features": feats[start:stop], "flags": 16,
            })
        rf.step({"step": step, "loss": 1.0, "accuracy": 0.5, "grad_norm": 1.0, "measurements": stop,
                 "time_s": time.time(), "current_a": 1.8})
        step += 1
    rf.set_status("completed")
    rf.close()
    dt = time.perf_counter() - t0
    size = os.path.getsize(path)
    os.remove(path)
    return {"trace_points": points, "mode": mode, "compression": compression or "none", "rows": rows,
            "step_rows": step_rows, "seconds": dt, "us_per_measurement": 1e6 * dt / rows,
            "measurements_per_s": rows / dt, "bytes_per_measurement": size / rows,
            "raw_trace_bytes": 4 * points}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--step-rows", type=int, default=64, help="rows between step() flushes")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration; the fastest is kept")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_runfile.json"))
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for points in (401, 1001):
            for mode in ("row", "batch"):
                for comp in (None, "lzf"):
                    runs = [run(points, mode, comp, args.rows, args.step_rows, tmp) for _ in range(args.repeat)]
                    results.append(min(runs, key=lambda r: r["seconds"]))  # least disturbed by other load
    print(f"{'points':>6} {'mode':>6} {'compr':>6} {'us/meas':>8} {'meas/s':>8} {'bytes/meas':>10} {'raw trace B':>11}")
    for r in results:
        print(f"{r['trace_points']:>6} {r['mode']:>6} {r['compression']:>6} {r['us_per_measurement']:>8.1f} "
              f"{r['measurements_per_s']:>8.0f} {r['bytes_per_measurement']:>10.0f} {r['raw_trace_bytes']:>11}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": args.rows, "step_rows": args.step_rows, "repeat": args.repeat,
                                          "results": results},
                                         indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
