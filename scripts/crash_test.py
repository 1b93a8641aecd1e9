"""Crash safety: kill `labpgt train` with SIGKILL at random moments, check every file, resume.

    python scripts/crash_test.py                 # 20 kills (default), budget 3000, seed 7
    python scripts/crash_test.py --kills 40 --budget 4000 --seed 1
    python scripts/crash_test.py --kills 60 --seed 3 --json scripts/results/crash_test_life.json

One uninterrupted run (same seed, embedded simulated ring) is the reference. Then chains of
killed runs: `labpgt train` (or `labpgt train --resume` of the chain's file) is started in a
subprocess and killed with SIGKILL after a random delay. After every kill the file must

* open with plain h5py (a SWMR read: the killed writer's mark stays until a resume clears it; a
  kill while a resume had reopened the file, before its switch to SWMR, leaves a non-SWMR mark
  that only ``h5clear -s`` removes: counted as ``needed_h5clear``, checked on a cleared copy,
  and `labpgt train --resume` / RunReader cope with it);
* hold consistent committed tables: every measurement column at least as long as the committed
  count, finite features, finite plausible traces (dBm), kinds and steps in range;
* hold every measurement up to its last flush: all rows of every committed step, and each
  effective row (rows abandoned by resumes left out) bit-identical in settings, trace and
  features to the same row of the reference run (the simulated ring is deterministic);

and when a chain's run completes (`--resume` after the last kill) its final parameters must equal
the reference's, bit for bit. Kill moments are spread over the whole life of a process: two in
three uniform in [0, life] s from the process's start, where life is the uninterrupted reference
run's own duration (start-up, the file's creation, training, the end); one in three (new runs
only) in the creation window, uniform in [0, 0.2] s from the moment the run file appears. A kill
before the file exists leaves nothing (the chain starts over). A file left by a kill that no
reader can open or `--resume` cannot continue is *unusable*: counted apart when the kill fell
in a new run (``unusable_creation``: its creation was cut short -- a new run's file is resumable
once created, even before its first checkpoint; creation under a temporary name is being done on
another branch), as a problem when a resumed file no longer opens; the chain starts over.

Results: printed, and JSON to scripts/results/crash_test.json (``--json``). Exit status 0 only if
every check passed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("step", "kind", "sample_index", "node", "frequency_hz", "power_dbm", "current_a", "trace_dbm",
            "features")


def train_command(out: Path, budget: int, seed: int, resume: bool) -> list[str]:
    if resume:
        return [sys.executable, "-m", "labpgt.cli", "train", "--resume", str(out), "--no-progress"]
    return [sys.executable, "-m", "labpgt.cli", "train", "--estimator", "node", "--budget", str(budget), "--seed", str(seed),
            "--out", str(out), "--no-progress", "--eval-every", "5", "--checkpoint-every", "2"]


def run_to_completion(out: Path, budget: int, seed: int, resume: bool) -> float:
    """Run ``labpgt train`` to its end; returns its wall time (s)."""
    t0 = time.monotonic()
    proc = subprocess.run(train_command(out, budget, seed, resume), capture_output=True, text=True, cwd=ROOT,
                          timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"labpgt train {'--resume ' if resume else ''}failed ({proc.returncode}): "
                           f"{proc.stderr[-2000:]}")
    return time.monotonic() - t0


def resumable(path: Path) -> str | None:
    """None if ``labpgt train --resume`` can continue ``path`` (checked with --dry-run: the file read,
    its experiment and checkpoint taken), else why not."""
    proc = subprocess.run(train_command(path, 0, 0, resume=True) + ["--dry-run"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    if proc.returncode == 0 or "already completed" in proc.stderr + proc.stdout:
        return None
    return (proc.stderr or proc.stdout)[-500:]


def _abandoned(f, table: str, n: int) -> np.ndarray:
    keep = np.ones(n, dtype=bool)
    committed = f["committed"][:]
    n_resumes = int(committed[5])
    for a, b in zip(f[f"resumes/{table}_start"][:n_resumes], f[f"resumes/{table}_stop"][:n_resumes]):
        keep[int(a):int(b)] = False
    return keep


def _row_column(ds) -> bool:
    """A table's row column, not one of the dimensions or fixed coordinates that other tools read
    (labpgt/runfile/conventions.py: a fixed first axis, or a netCDF dimension's NAME)."""
    name = ds.attrs.get("NAME", b"")
    name = name.encode() if isinstance(name, str) else bytes(name)
    return ds.maxshape[0] is None and b"not a netCDF variable" not in name


def check_file(path: Path, reference: dict) -> dict:
    """Plain-h5py checks of a killed run file against the reference rows; returns a summary."""
    problems = []
    try:
        f = h5py.File(path, "r", swmr=True)  # plain h5py: no labpgt code reads it here
        cleared = False
    except OSError as exc:
        if "not already open for SWMR writing" not in str(exc):
            raise
        # killed while a resume had the file open before its switch to SWMR: only after
        # `h5clear -s` (clear_write_flags, on a scratch copy here) does HDF5 open it
        from labpgt.runfile import clear_write_flags
        scratch = Path(tempfile.mkdtemp()) / "scratch.h5"
        shutil.copyfile(path, scratch)
        clear_write_flags(scratch)
        f = h5py.File(scratch, "r")
        cleared = True
    with f:
        committed = [int(x) for x in f["committed"][:]]
        n, n_steps = committed[0], committed[1]
        m = f["measurements"]
        for name in m:
            # the row columns; the dimensions and coordinates other tools read are not rows
            if _row_column(m[name]) and m[name].shape[0] < n:
                problems.append(f"measurements/{name} has {m[name].shape[0]} rows < committed {n}")
        rows = {name: m[name][:n] for name in COMPARED}
        rows["kind"] = m["kind"].astype("i1")[:n]
        if not np.all(np.isfinite(rows["features"])):
            problems.append("non-finite features in committed rows")
        trace = rows["trace_dbm"]
        if not (np.all(np.isfinite(trace)) and np.all(np.abs(trace) < 1000)):
            problems.append("implausible trace values in committed rows")
        if trace.shape[1:] != reference["trace_dbm"].shape[1:]:
            problems.append(f"trace width {trace.shape[1:]} differs from the reference")
        if not np.all((rows["kind"] >= 0) & (rows["kind"] <= 2)):
            problems.append("kind out of range")
        keep = _abandoned(f, "measurements", n)
        steps = f["steps/step"][:n_steps]
        step_keep = _abandoned(f, "steps", n_steps)
        last_step = int(steps[step_keep][-1]) if step_keep.any() else 0
        n_ckpt = committed[3]
    effective = {k: v[keep] for k, v in rows.items()}
    n_eff = len(effective["step"])
    if n_eff > len(reference["step"]):
        problems.append(f"{n_eff} effective rows, more than the reference run's {len(reference['step'])}")
        n_eff = len(reference["step"])
    for name in COMPARED:
        a, b = effective[name][:n_eff], reference[name][:n_eff]
        if a.tobytes() != b.tobytes():
            bad = np.flatnonzero(np.any(np.asarray(a != b).reshape(n_eff, -1), axis=1))
            problems.append(f"measurements/{name} differs from the reference run at effective row {int(bad[0])}")
            break
    # every row measured before the last committed step's flush is there
    needed = int(np.count_nonzero(reference["step"] < last_step))
    if n_eff < needed:
        problems.append(f"only {n_eff} effective rows; the committed step {last_step} needs {needed}")
    return {"rows": n, "effective_rows": n_eff, "steps": n_steps, "last_step": last_step, "checkpoints": n_ckpt,
            "needed_h5clear": cleared, "problems": problems}


def _completed(path: Path) -> bool:
    from labpgt.runfile import RunReader
    with RunReader(path) as r:
        return r.status == "completed"


def read_reference(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        n = int(f["committed"][0])
        ref = {name: f["measurements"][name][:n] for name in COMPARED}
        ref["kind"] = f["measurements/kind"].astype("i1")[:n]
        ref["final_params"] = f["checkpoints/params"][-1]
    return ref


def final_params(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["checkpoints/params"][-1]


def _kill_moment(rng, resume: bool, life_s: float, creation_share: float) -> tuple[str, float]:
    """(where the kill is counted from, delay): the whole life from the start, or the creation window."""
    if not resume and rng.uniform() < creation_share:
        return "file appeared", float(rng.uniform(0.0, 0.2))
    return "process start", float(rng.uniform(0.0, life_s))


def crash_test(kills: int = 20, budget: int = 3000, seed: int = 7, workdir: Path | None = None,
               max_delay_s: float | None = None, log=print, creation_share: float = 1 / 3) -> dict:
    """max_delay_s: the end of the kill window from a process's start (default: the reference run's
    duration, its whole life)."""
    rng = np.random.default_rng(seed)
    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="labpgt-crash-")
        workdir = Path(own_tmp.name)
    workdir = Path(workdir)
    t0 = time.monotonic()
    reference_path = workdir / "reference.h5"
    life_s = run_to_completion(reference_path, budget, seed, resume=False)
    if max_delay_s is not None:
        life_s = float(max_delay_s)
    reference = read_reference(reference_path)
    log(f"reference run: {len(reference['step'])} measurement rows; kills within {life_s:.2f} s of a start")
    result = {"kills": 0, "kills_before_file": 0, "kills_during_creation": 0, "unusable_creation": 0,
              "unusable_other": 0, "kills_in_creation_window": 0, "chains_completed": 0, "life_s": round(life_s, 2),
              "files_checked": 0, "problems": [], "kill_log": [], "budget": budget, "seed": seed}
    chain = 0
    path = workdir / f"chain{chain}.h5"
    while result["kills"] < kills:
        resume = path.exists()
        if resume and _completed(path):  # the last kill came after the run had completed
            ok = final_params(path).tobytes() == reference["final_params"].tobytes()
            log(f"chain {chain}: completed before the kill; final parameters "
                f"{'identical to' if ok else 'DIFFER from'} the reference")
            if not ok:
                result["problems"].append(f"chain {chain}: final parameters differ from the uninterrupted run")
            result["chains_completed"] += 1
            chain += 1
            path = workdir / f"chain{chain}.h5"
            continue
        proc = subprocess.Popen(train_command(path, budget, seed, resume), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, cwd=ROOT)
        origin, delay = _kill_moment(rng, resume, life_s, creation_share)
        if origin == "file appeared":  # the creation window: counted from the file's appearance
            while not path.exists() and proc.poll() is None:
                try:
                    proc.wait(timeout=0.002)  # watching for the file from outside, not synchronising
                except subprocess.TimeoutExpired:
                    pass
            result["kills_in_creation_window"] += 1
        try:
            proc.wait(timeout=delay)  # a random moment (the run may end first)
            finished = True
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            finished = False
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if finished:
            if proc.returncode != 0:
                result["problems"].append(f"chain {chain}: train exited {proc.returncode}: {stderr[-500:]}")
                break
            ok = final_params(path).tobytes() == reference["final_params"].tobytes()
            log(f"chain {chain}: completed; final parameters {'identical to' if ok else 'DIFFER from'} the reference")
            if not ok:
                result["problems"].append(f"chain {chain}: final parameters differ from the uninterrupted run")
            result["chains_completed"] += 1
            chain += 1
            path = workdir / f"chain{chain}.h5"
            continue
        result["kills"] += 1
        entry = {"kill": result["kills"], "chain": chain, "after_s": round(delay, 3), "from": origin,
                 "resumed": resume}
        if not path.exists():
            result["kills_before_file"] += 1
            entry["file"] = "not created yet"
        else:
            try:
                summary = check_file(path, reference)
                why = resumable(path)
                if why is not None:
                    raise KeyError(f"--resume refuses it: {why}")
            except (OSError, KeyError, IndexError, ValueError) as exc:
                if resume:
                    result["problems"].append(f"kill {result['kills']}: the resumed file no longer opens: {exc}")
                    result["unusable_other"] += 1
                    summary = {"problems": [str(exc)]}
                else:  # killed while the file's layout was still being created: nothing to resume
                    # (a new run's file is resumable from its creation's end on, even before its
                    # first checkpoint: the run starts over in it; so unusable = its creation was cut)
                    result["kills_during_creation"] += 1
                    result["unusable_creation"] += 1
                    entry["file"] = f"unusable, killed during creation ({type(exc).__name__}: {str(exc)[:120]}); " \
                                    f"starting over"
                    path.unlink()
                    result["kill_log"].append(entry)
                    log(f"kill {result['kills']:2d} after {delay:.2f} s from the {origin}: {entry['file']}")
                    continue
            result["files_checked"] += 1
            entry.update({k: summary.get(k) for k in ("rows", "effective_rows", "steps", "checkpoints",
                                                       "needed_h5clear")})
            result["needed_h5clear"] = result.get("needed_h5clear", 0) + bool(summary.get("needed_h5clear"))
            for p in summary["problems"]:
                result["problems"].append(f"kill {result['kills']}: {p}")
            entry["ok"] = not summary["problems"]
        result["kill_log"].append(entry)
        what = entry.get("file") or f"{entry['effective_rows']} effective rows, {entry['steps']} steps"
        log(f"kill {result['kills']:2d} after {delay:.2f} s from the {origin} ({'resume' if resume else 'new run'}): "
            f"{what}"
            f"{'' if entry.get('ok', True) else '  PROBLEMS'}")
    # the last chain: resume it to the end
    if not result["problems"]:
        if not path.exists():  # the last kill left no file: the chain runs from the start
            run_to_completion(path, budget, seed, resume=False)
        elif not _completed(path):
            run_to_completion(path, budget, seed, resume=True)
        ok = final_params(path).tobytes() == reference["final_params"].tobytes()
        log(f"chain {chain}: resumed to completion; final parameters "
            f"{'identical to' if ok else 'DIFFER from'} the reference")
        if not ok:
            result["problems"].append(f"chain {chain}: final parameters differ from the uninterrupted run")
        result["chains_completed"] += 1
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["ok"] = not result["problems"] and result["chains_completed"] > 0
    if own_tmp is not None:
        own_tmp.cleanup()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in all (default 20)")
    parser.add_argument("--budget", type=int, default=3000, help="training measurements per run")
    parser.add_argument("--seed", type=int, default=7, help="seed of the runs and of the kill moments")
    parser.add_argument("--max-delay", type=float, default=None,
                        help="kill at most this many seconds after a start (default: the reference run's duration)")
    parser.add_argument("--creation-share", type=float, default=1 / 3,
                        help="share of a new run's kills aimed at [0, 0.2] s after its file appears")
    parser.add_argument("--json", default=str(ROOT / "scripts" / "results" / "crash_test.json"))
    args = parser.parse_args(argv)
    result = crash_test(args.kills, args.budget, args.seed, max_delay_s=args.max_delay,
                        creation_share=args.creation_share)
    result["command"] = "python scripts/crash_test.py " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{result['kills']} kills over {result['life_s']} s of life ({result['kills_in_creation_window']} aimed at "
          f"the creation window; {result['kills_before_file']} before the file existed, "
          f"{result['kills_during_creation']} during its creation), {result['files_checked']} files checked, "
          f"{result['chains_completed']} runs resumed to completion, {result['seconds']} s")
    print(f"unusable files: {result['unusable_creation']} from the creation window (counted apart), "
          f"{result['unusable_other']} otherwise")
    print("all checks passed" if result["ok"] else "PROBLEMS:\n  " + "\n  ".join(result["problems"]))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
