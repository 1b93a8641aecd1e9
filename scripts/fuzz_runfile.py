"""Damaged run files never hang the tools: flip one byte at many offsets of a killed run file and
run `labpgt inspect` and `labpgt train --resume` on each copy.

    python scripts/fuzz_runfile.py                       # 200 offsets, seed 1, inspect + resume each
    python scripts/fuzz_runfile.py --offsets 30 --resumes 5 --seed 2 --json ''

A run (`labpgt train`, embedded simulated ring) is killed with SIGKILL once it has committed a few
checkpoints. Its layout is read (every dataset's raw-data extents; the rest of the file is HDF5
metadata: superblock, object headers, B-trees, heaps, chunk indexes, free space) and offsets are
drawn, seeded: every metadata region gets some (small regions at least one), the rest of the
metadata uniformly, and a share uniformly in raw data. At each offset one copy of the file gets
that byte XOR-ed with a random non-zero value, and

* `labpgt inspect COPY` and `labpgt train --resume COPY --budget B` (B: 64 training measurements past
  the checkpoint it continues from, so a resume that succeeds trains a step or so and completes)
  run in a subprocess each, with a limit of
  --limit s (a guard kills them at --guard s). Each outcome is classified: ``success`` (exit 0),
  ``error`` (exit != 0 with one clear line: ``error: ...`` for train, a ``PROBLEM:`` line for
  inspect), ``unclear`` (exit != 0 without that line), ``traceback``, ``slow`` (ended by itself,
  after the limit), ``hang`` (killed by the guard) or ``signal`` (died of one);
* after the resume the copy must be either ``completed`` (status completed) or ``untouched``
  (byte for byte as before the resume); anything else is ``changed``.

--unbounded of the offsets where damage was found are run again with libhdf5's default SWMR read
retries (LABPGT_SWMR_READ_ATTEMPTS=100, which sleep for ever on a damaged file: how every killed,
damaged file was read before): the child process's time limit alone must end them in time.

Then SIGINT is sent to `inspect` and to `train --resume` of damaged copies at a few moments after
their start, and while they wait on their check child hung in libhdf5 (100 read attempts); each
must end of the interrupt (exit status 130; or, already on its way out, with its own status within
0.5 s) within --sigint-limit s, leaving no child behind.

Results: a table, and JSON to scripts/results/fuzz_runfile.json (``--json``). Exit status 0 only if
there was no hang, no slow end, no traceback, no signal death, no changed file and every SIGINT was
honoured.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import h5py

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ("success", "error", "unclear", "traceback", "slow", "hang", "signal")
FAILURES = ("traceback", "slow", "hang", "signal")


def labpgt(*args: str) -> list[str]:
    return [sys.executable, "-m", "labpgt.cli", *args]


CODE = [ROOT]  # the labpgt under test (--code: e.g. an older checkout, for a "before" figure)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(CODE[0])] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("LABPGT_DEBUG", None)
    return env


def make_killed_file(out: Path, budget: int, seed: int, checkpoints: int, log) -> None:
    """`labpgt train` killed with SIGKILL once ``checkpoints`` checkpoints are committed."""
    sys.path.insert(0, str(ROOT))
    from labpgt.runfile import RunFileError, RunReader

    cmd = labpgt("train", "--budget", str(budget), "--seed", str(seed), "--out", str(out), "--no-progress",
                 "--eval-every", "5", "--checkpoint-every", "2")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the run ended before it could be killed: {proc.stderr.read().decode()[-800:]}")
            if out.exists():
                try:
                    with RunReader(out) as r:
                        if r.n_checkpoints >= checkpoints:
                            break
                except (RunFileError, OSError):
                    pass
            time.sleep(0.1)
        else:
            raise RuntimeError("the run did not reach its checkpoints in 300 s")
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    log(f"killed run file: {out} ({out.stat().st_size} bytes)")


#: what a resume trains: a step or so past the checkpoint it continues from (the tools' reading and
#: the resume's own work are measured, not the training of the rest of a budget)
RESUME_MEASUREMENTS = 64


def spent_at_last_checkpoint(path: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from labpgt.runfile import RunReader

    with RunReader(path) as r:
        return int(r.last_checkpoint()["measurements"])


def raw_data_ranges(path: Path) -> list[tuple[int, int]]:
    """[start, stop) byte ranges holding datasets' raw data (chunks, contiguous storage)."""
    ranges = []
    with h5py.File(path, "r", swmr=True) as f:
        def visit(_, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            dcpl = obj.id.get_create_plist()
            if dcpl.get_layout() == h5py.h5d.CHUNKED:
                for i in range(obj.id.get_num_chunks()):
                    info = obj.id.get_chunk_info(i)
                    ranges.append((info.byte_offset, info.byte_offset + info.size))
            elif dcpl.get_layout() == h5py.h5d.CONTIGUOUS and obj.id.get_offset() is not None:
                ranges.append((obj.id.get_offset(), obj.id.get_offset() + obj.id.get_storage_size()))
        f.visititems(visit)
    return sorted(ranges)


def metadata_regions(size: int, data: list[tuple[int, int]]) -> list[tuple[int, int]]:
    regions, pos = [], 0
    for a, b in data:
        if a > pos:
            regions.append((pos, a))
        pos = max(pos, b)
    if pos < size:
        regions.append((pos, size))
    return regions


def choose_offsets(size: int, data, n: int, rng: random.Random, data_share: float = 0.15) -> list[dict]:
    """Seeded offsets: one in the superblock, one in every other metadata region (in as many as
    there is room for), then the metadata uniformly, and ``data_share`` of them in raw data."""
    meta = metadata_regions(size, data)
    chosen: dict[int, str] = {rng.randrange(0, min(meta[0][1], 48)): "metadata"}  # the superblock
    n_data = max(1, round(n * data_share)) if data else 0
    later = meta[1:] if n - n_data - 1 >= len(meta) - 1 else rng.sample(meta[1:], max(0, n - n_data - 1))
    for a, b in later:
        chosen.setdefault(rng.randrange(a, b), "metadata")
    total_meta = sum(b - a for a, b in meta)
    while len(chosen) < n - n_data:
        k = rng.randrange(total_meta)
        for a, b in meta:
            if k < b - a:
                chosen.setdefault(a + k, "metadata")
                break
            k -= b - a
    total_data = sum(b - a for a, b in data)
    while len(chosen) < n and data:
        k = rng.randrange(total_data)
        for a, b in data:
            if k < b - a:
                chosen.setdefault(a + k, "data")
                break
            k -= b - a
    return [{"offset": o, "region": chosen[o], "xor": rng.randrange(1, 256)} for o in sorted(chosen)]


def run_tool(cmd: list[str], limit_s: float, guard_s: float, cwd: Path, env: dict | None = None) -> dict:
    """Run a command; classify how it ended."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**_env(), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    killed = False
    try:
        out, err = proc.communicate(timeout=guard_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        killed = True
    seconds = time.monotonic() - t0
    rc = proc.returncode
    text = out + err
    lines = [line for line in (out + "\n" + err).splitlines() if line.strip()]
    message = next((line.strip() for line in lines if line.strip().startswith(("error:", "PROBLEM:"))), "")
    if killed:
        outcome = "hang"
    elif rc < 0:
        outcome = "signal"
    elif "Traceback (most recent call last)" in text:
        outcome = "traceback"
    elif seconds > limit_s:
        outcome = "slow"
    elif rc == 0:
        outcome = "success"
    else:
        outcome = "error" if message else "unclear"
    return {"outcome": outcome, "rc": rc, "seconds": round(seconds, 2), "message": message[:300],
            "tail": "" if outcome in ("success", "error") else text[-600:]}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_after_resume(path: Path, before: str) -> str:
    if sha256(path) == before:
        return "untouched"
    sys.path.insert(0, str(ROOT))
    from labpgt.runfile import RunFileError, RunReader

    try:
        with RunReader(path) as r:
            return "completed" if r.status == "completed" else f"changed (status {r.status})"
    except (RunFileError, OSError) as exc:
        return f"changed (unreadable: {str(exc)[:120]})"


def damaged_copy(src: Path, dst: Path, offset: int, xor: int) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ xor]))


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


#: a tool that ends this soon after SIGINT with its own exit status was already finishing
FINISHING_S = 0.5


def sigint_checks(src: Path, cases: list[dict], delays: list, limit_s: float, workdir: Path,
                  resume_budget: int) -> list[dict]:
    """SIGINT to inspect / train --resume of damaged copies: ``delay`` s after their start, or
    (``delay`` "child") while they wait on their check child hung in libhdf5 (libhdf5's default
    100 SWMR read attempts: LABPGT_SWMR_READ_ATTEMPTS=100, how every damaged file was read before)."""
    results = []
    for case in cases:
        for tool in ("inspect", "resume"):
            for delay in delays:
                copy = workdir / f"sigint-{case['offset']}.h5"
                damaged_copy(src, copy, case["offset"], case["xor"])
                cmd = labpgt("inspect", str(copy)) if tool == "inspect" else labpgt("train", "--resume", str(copy),
                                                                                  "--no-progress", "--budget",
                                                                                  str(resume_budget))
                env = _env()
                if delay == "child":
                    env["LABPGT_SWMR_READ_ATTEMPTS"] = "100"
                proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True)
                children = []
                if delay == "child":
                    deadline = time.monotonic() + 30
                    while not children and proc.poll() is None and time.monotonic() < deadline:
                        time.sleep(0.05)
                        children = _children(proc.pid)
                    time.sleep(0.5)  # the child is reading (and hung, for a file whose damage it meets)
                else:
                    time.sleep(delay)
                sent = time.monotonic()
                ended_before = proc.poll() is not None
                if not ended_before:
                    proc.send_signal(signal.SIGINT)
                try:
                    _, err = proc.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    _, err = proc.communicate()
                seconds = time.monotonic() - sent
                orphans = [c for c in children if _alive(c)]
                for c in orphans:
                    os.kill(c, signal.SIGKILL)
                # Ctrl-C while Python itself starts (before labpgt's handlers) ends it with Python's
                # own KeyboardInterrupt traceback and -SIGINT: honoured, if not pretty
                startup = proc.returncode == -signal.SIGINT
                # a tool already on its way out when the signal came (its answer given) ends as it was
                # going to, at once: it is not one that went on working
                finishing = proc.returncode not in (130, -signal.SIGINT) and seconds <= FINISHING_S
                results.append({"offset": case["offset"], "tool": tool, "delay_s": delay,
                                "ended_before_signal": ended_before, "rc": proc.returncode,
                                "seconds_after_signal": round(seconds, 2), "child_left_running": bool(orphans),
                                "traceback": "Traceback" in err, "was_finishing": finishing,
                                "ok": ended_before or (seconds <= limit_s and not orphans
                                                       and (proc.returncode in (130, -signal.SIGINT) or finishing)
                                                       and ("Traceback" not in err or startup))})
                copy.unlink()
    return results


def fuzz(offsets: int = 200, seed: int = 1, resumes: int | None = None, budget: int = 800, limit_s: float = 10.0,
         guard_s: float = 60.0, sigint_limit_s: float = 5.0, unbounded_n: int = 10, sigint_cases: int = 2,
         sigint_delays=(0.3, 0.8, 1.5, "child"), workdir: Path | None = None, log=print) -> dict:
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # started in the background by a shell: SIGINT ignored, and so in every tool started here
        # (an ignored signal stays ignored across exec): the SIGINT check needs it handled
        signal.signal(signal.SIGINT, signal.default_int_handler)
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="fuzz_runfile_")) if own else Path(workdir)
    try:
        killed = workdir / "killed.h5"
        make_killed_file(killed, budget, seed, checkpoints=2, log=log)
        resume_budget = spent_at_last_checkpoint(killed) + RESUME_MEASUREMENTS
        size = killed.stat().st_size
        data = raw_data_ranges(killed)
        rng = random.Random(seed)
        cases = choose_offsets(size, data, offsets, rng)
        resume_at = set(range(len(cases))) if resumes is None else set(rng.sample(range(len(cases)),
                                                                                   min(resumes, len(cases))))
        log(f"{len(cases)} offsets ({sum(c['region'] == 'metadata' for c in cases)} in metadata, "
            f"{len(metadata_regions(size, data))} metadata regions, {sum(b - a for a, b in data)} of {size} bytes "
            f"raw data); --resume on {len(resume_at)}")
        for i, case in enumerate(cases):
            copy = workdir / f"copy-{case['offset']}.h5"
            damaged_copy(killed, copy, case["offset"], case["xor"])
            case["inspect"] = run_tool(labpgt("inspect", str(copy)), limit_s, guard_s, workdir)
            if i in resume_at:
                before = sha256(copy)
                case["resume"] = run_tool(labpgt("train", "--resume", str(copy), "--no-progress", "--budget",
                                                 str(resume_budget)), limit_s, guard_s, workdir)
                case["resume"]["file"] = file_after_resume(copy, before)
            copy.unlink()
            log(f"  {i + 1:3d}/{len(cases)} offset {case['offset']:8d} {case['region']:8s} "
                f"inspect {case['inspect']['outcome']:9s} {case['inspect']['seconds']:5.1f} s"
                + (f"   resume {case['resume']['outcome']:9s} {case['resume']['seconds']:5.1f} s "
                   f"{case['resume']['file']}" if "resume" in case else ""))
        met = [c for c in cases if c["inspect"]["outcome"] in ("hang", "slow")]  # damage met: hung ones first
        sig_cases = (met + [c for c in cases if c["inspect"]["outcome"] == "error"] or cases)[:sigint_cases]
        sigint = sigint_checks(killed, sig_cases, list(sigint_delays), sigint_limit_s, workdir, resume_budget)
        detected = [c for c in cases if c["inspect"]["outcome"] == "error"] or cases  # damage libhdf5 meets
        unbounded = [dict(c) for c in rng.sample(detected, min(unbounded_n, len(detected)))]
        for case in unbounded:
            copy = workdir / f"unbounded-{case['offset']}.h5"
            for tool, cmd in (("inspect", labpgt("inspect", str(copy))),
                              ("resume", labpgt("train", "--resume", str(copy), "--no-progress", "--budget",
                                                str(resume_budget)))):
                damaged_copy(killed, copy, case["offset"], case["xor"])
                before = sha256(copy)
                case[tool] = run_tool(cmd, limit_s, guard_s, workdir, {"LABPGT_SWMR_READ_ATTEMPTS": "100"})
                if tool == "resume":
                    case[tool]["file"] = file_after_resume(copy, before)
            copy.unlink()
            log(f"  unbounded retries: offset {case['offset']:8d} inspect {case['inspect']['outcome']:9s} "
                f"{case['inspect']['seconds']:5.1f} s   resume {case['resume']['outcome']:9s} "
                f"{case['resume']['seconds']:5.1f} s {case['resume']['file']}")
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    counts = {tool: Counter(c[tool]["outcome"] for c in cases if tool in c) for tool in ("inspect", "resume")}
    files = Counter(c["resume"]["file"].split(" (")[0] for c in cases if "resume" in c)
    unbounded_counts = {tool: Counter(c[tool]["outcome"] for c in unbounded) for tool in ("inspect", "resume")}
    bad = [c for c in cases + unbounded if any(tool in c and c[tool]["outcome"] in FAILURES
                                   for tool in ("inspect", "resume"))
           or ("resume" in c and c["resume"]["file"].startswith("changed"))]
    worst = {tool: max((c[tool]["seconds"] for c in cases if tool in c), default=0.0) for tool in ("inspect", "resume")}
    result = {
        "offsets": len(cases), "seed": seed, "budget": budget, "resume_budget": resume_budget, "limit_s": limit_s,
        "file_bytes": size,
        "outcomes": {tool: {k: counts[tool].get(k, 0) for k in OUTCOMES} for tool in counts},
        "resumed_files": dict(files), "slowest_s": worst, "sigint": sigint,
        "unbounded_retries": {"offsets": len(unbounded),
                              "outcomes": {tool: {k: unbounded_counts[tool].get(k, 0) for k in OUTCOMES}
                                           for tool in unbounded_counts},
                              "slowest_s": {tool: max((c[tool]["seconds"] for c in unbounded), default=0.0)
                                            for tool in ("inspect", "resume")},
                              "cases": unbounded},
        "problems": [{"offset": c["offset"], "region": c["region"],
                      **{tool: c[tool] for tool in ("inspect", "resume") if tool in c}} for c in bad],
        "cases": cases,
    }
    result["ok"] = not bad and all(s["ok"] for s in sigint)
    return result


def table(result: dict) -> str:
    rows = [f"{'tool':10s}" + "".join(f"{k:>11s}" for k in OUTCOMES) + f"{'slowest s':>11s}"]
    for tool, counts in result["outcomes"].items():
        rows.append(f"{tool:10s}" + "".join(f"{counts[k]:11d}" for k in OUTCOMES) + f"{result['slowest_s'][tool]:11.1f}")
    ub = result["unbounded_retries"]
    for tool, counts in ub["outcomes"].items():
        rows.append(f"{tool + '*':10s}" + "".join(f"{counts[k]:11d}" for k in OUTCOMES) + f"{ub['slowest_s'][tool]:11.1f}")
    rows.append(f"* {ub['offsets']} of the offsets again with libhdf5's default SWMR read retries "
                "(LABPGT_SWMR_READ_ATTEMPTS=100): the child-process time limit alone")
    rows.append("resumed files: " + ", ".join(f"{k} {v}" for k, v in sorted(result["resumed_files"].items())))
    sig = result["sigint"]
    honoured = [s for s in sig if not s["ended_before_signal"]]
    rows.append(f"SIGINT: {sum(s['ok'] for s in sig)}/{len(sig)} ok; slowest end after the signal "
                f"{max((s['seconds_after_signal'] for s in honoured), default=0.0):.1f} s "
                f"({len(sig) - len(honoured)} had ended before it)")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--offsets", type=int, default=200,
                   help="byte offsets to damage, at least (every metadata region gets one; default 200)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--resumes", type=int, default=None, help="run --resume on this many copies (default: all)")
    p.add_argument("--budget", type=int, default=800, help="training budget of the killed run (default 800)")
    p.add_argument("--limit", type=float, default=10.0, help="seconds a tool may take (default 10)")
    p.add_argument("--guard", type=float, default=60.0, help="seconds after which a tool is killed (default 60)")
    p.add_argument("--unbounded", type=int, default=10,
                   help="offsets run again with libhdf5's default SWMR read retries (default 10)")
    p.add_argument("--sigint-limit", type=float, default=5.0, help="seconds to end after SIGINT (default 5)")
    p.add_argument("--sigint-cases", type=int, default=2, help="damaged copies the SIGINT check uses (default 2)")
    p.add_argument("--sigint-delays", default="0.3,0.8,1.5,child",
                   help="when SIGINT is sent: seconds after start, or 'child' (default 0.3,0.8,1.5,child)")
    p.add_argument("--code", default=str(ROOT), help="the labpgt checkout to test (default: this one)")
    p.add_argument("--json", default=str(ROOT / "scripts" / "results" / "fuzz_runfile.json"),
                   help="where to write the results ('' for nowhere)")
    args = p.parse_args(argv)
    if args.offsets < 1 or args.limit <= 0 or args.guard < args.limit:
        p.error("--offsets must be >= 1, --limit > 0 and --guard >= --limit")
    try:
        delays = [d if d == "child" else float(d) for d in args.sigint_delays.split(",") if d]
    except ValueError:
        p.error(f"--sigint-delays {args.sigint_delays!r}: expected seconds or 'child', comma-separated")
    CODE[0] = Path(args.code).resolve()
    result = fuzz(args.offsets, args.seed, args.resumes, args.budget, args.limit, args.guard, args.sigint_limit,
                  args.unbounded, args.sigint_cases, delays, log=lambda *a: print(*a, flush=True))
    result["code"] = str(CODE[0])
    print(table(result))
    for problem in result["problems"]:
        print(f"PROBLEM at offset {problem['offset']} ({problem['region']}): "
              + "; ".join(f"{tool} {problem[tool]['outcome']} {problem[tool].get('file', '')} "
                          f"{problem[tool]['tail'][-300:]!r}" for tool in ("inspect", "resume") if tool in problem))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"results: {args.json}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
