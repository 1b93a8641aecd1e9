"""Fault campaign: interrupt `labpgt train` in every phase of its life, on simulated instruments
with real pacing, and check the simulator's own state and the run file afterwards.

    python scripts/fault_campaign.py                  # 4 trials per phase x kind: 7 x 4 x 4 = 112
    python scripts/fault_campaign.py --trials 1 --phases ramp,training --kinds sigint,death --jobs 2

Every trial starts its own simulator, ``labpgt sim serve --realtime --control-port 0``: real
pacing (a ramp takes its L dI/dt time, a sweep its sweep time, the coil lags the set-point with
its time constant), and a loopback control port that answers from inside the simulator
(sim/control.py: RF output, the current source's output, set-point and the coil's actual
current, the largest current step ever driven into the coil). Then ``labpgt train --station``
runs against it with ``--log-file`` (the wire trace: every message with its role), and the
campaign watches that log for the phase it aims at:

    connect     the first *IDN? .. the current source's output switched on
    ramp        the start-up ramp (output on) .. the probe's analyzer window
    probe       the probe sweep .. RF on
    training    RF on (run file created, step 0 checkpoint, the steps) .. RF off at the end
    checkpoint  a checkpoint being written (the run file's log lines "checkpoint ... writing/written")
    ramp-down   RF off at the end .. the process exits (current ramped to 0, output off)
    resume      ``labpgt train --resume`` of an interrupted run: start .. its first training sweep

The moment is the phase's first marker plus a random delay, uniform over the phase's duration
as measured in a calibration run (``--calibrate``; default: the durations measured on this
machine, below). Where the interrupt really landed is read back from the log afterwards and
reported beside the aim. Kinds of interrupt:

    sigint, sigterm   the rig must end safe (simulator: RF off, output off, coil current ~0), and
                      the command must say so only if it is ("the rig was left safe (read back" only
                      when safe; "MAY NOT BE SAFE" whenever not)
    sigkill           nothing can run: the magnet stays as it was (counted: "left as it was"); then
                      ``labpgt check --station`` must leave it safe
    death             one instrument (random role) stops answering (``hang ROLE`` on the control
                      port; its outputs stay as they are); the command must not claim "left safe"
                      unless the simulator is safe, and must warn when it is not; then the
                      instrument answers again and ``labpgt check`` must leave the rig safe

On every trial, no step of the coil's current may exceed the station's ramp step (plus the read-
back's resolution). Unsafe outcome = any of these failing. Every run file left behind must be
usable: ``labpgt inspect`` exits 0 and ``labpgt train --resume`` resumes it (run until its first
training sweep, then Ctrl-C; a completed run counts as usable) -- or there is no file. A file
left unusable by an interrupt while it was being created is counted apart ("creation window":
the run-file writer's creation is being made atomic on another branch).

JSON to scripts/results/fault_campaign.json and a table per phase x kind.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim.control import ask, is_safe  # noqa: E402 - the project root first

PHASES = ("connect", "ramp", "probe", "training", "checkpoint", "ramp-down", "resume")
KINDS = ("sigint", "sigterm", "sigkill", "death")
ROLES = ("signal_generator", "current_source", "spectrum_analyzer")
RAMP_STEP_A = 0.05  # the simulated station's ramp_step_a
READBACK_RESOLUTION_A = 2.5e-5  # the Kepco's read-back: 6 significant digits (scripts/soak.py)
ZERO_A = 1e-3
#: seconds from each phase's first marker to the next phase's, measured on this machine (budget 192,
#: --calibrate re-measures): the window the random moment is drawn from
WINDOWS_S = {"connect": 1.8, "ramp": 4.0, "probe": 0.09, "training": 13.0, "checkpoint": 0.007, "ramp-down": 4.0,
             "resume": 6.0}
#: per-role client timeouts written into the station file: short, so a dead instrument costs little
#: (the current source's *OPC? waits for the coil to settle: up to ~2.2 s after a full ramp)
TIMEOUTS_S = {"signal_generator": 1.0, "current_source": 3.0, "spectrum_analyzer": 1.0}

_MARKERS = {
    "idn": re.compile(r"instruments\.wire: signal_generator \S+ query '\*IDN\?'"),
    "output_on": re.compile(r"instruments\.wire: current_source \S+ write 'OUTP 1'"),
    "probe": re.compile(r"instruments\.wire: spectrum_analyzer \S+ write 'SENS:FREQ:CENT"),
    "rf_on": re.compile(r"instruments\.wire: signal_generator \S+ write 'OUTP:STAT 1'"),
    "rf_off": re.compile(r"instruments\.wire: signal_generator \S+ write 'OUTP:STAT 0'"),
    "sweep": re.compile(r"instruments\.wire: spectrum_analyzer \S+ query 'INIT:IMM"),
    "ckpt_writing": re.compile(r"checkpoint at step \d+: writing"),
    "ckpt_written": re.compile(r"checkpoint at step \d+: written"),
}


def python() -> list[str]:
    return [sys.executable, "-m", "labpgt.cli"]


def _default_signals() -> None:
    """In the child: Ctrl-C as at a terminal (a shell starts background jobs with SIGINT ignored, and
    Python then installs no KeyboardInterrupt handler: the interrupts aimed at start-up would be lost)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


# ----------------------------------------------------------------------------- the log
def _log_time(line: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(line[:23]).timestamp()
    except ValueError:
        return None


class LogWatch:
    """The markers of a CLI's --log-file as they appear (polled: the log is another process's file)."""

    def __init__(self, path: Path):
        self.path = path
        self._pos = 0
        self._rest = ""
        self.events: list[tuple[float, str]] = []  # (log time, marker)

    def poll(self) -> None:
        try:
            with open(self.path, "r", errors="replace") as f:
                f.seek(self._pos)
                chunk = f.read()
                self._pos = f.tell()
        except FileNotFoundError:
            return
        text = self._rest + chunk
        lines = text.split("\n")
        self._rest = lines.pop()
        for line in lines:
            for name, pattern in _MARKERS.items():
                if pattern.search(line):
                    t = _log_time(line)
                    if t is not None:
                        self.events.append((t, name))

    def first(self, name: str, after: float = -np.inf) -> float | None:
        for t, n in self.events:
            if n == name and t >= after:
                return t
        return None


def phase_times(events: list[tuple[float, str]], resume: bool) -> dict:
    """Phase -> (start, end) log times of one run (end None: until the process exited)."""
    w = LogWatch(Path("/nonexistent"))
    w.events = events
    out = {}
    idn, on, probe, rf_on = w.first("idn"), w.first("output_on"), w.first("probe"), w.first("rf_on")
    if resume:
        first_sweep = w.first("sweep", rf_on) if rf_on is not None else None
        out["resume"] = (-np.inf, first_sweep)
        rf_off = w.first("rf_off", first_sweep) if first_sweep is not None else None
        out["training"] = (first_sweep, rf_off)
    else:
        out["connect"] = (idn, on)
        out["ramp"] = (on, probe)
        out["probe"] = (probe, rf_on)
        rf_off = w.first("rf_off", rf_on) if rf_on is not None else None
        out["training"] = (rf_on, rf_off)
    out["ramp-down"] = (rf_off, None)
    writing = [t for t, n in events if n == "ckpt_writing"]
    written = [t for t, n in events if n == "ckpt_written"]
    out["checkpoints"] = list(zip(writing, written + [None] * (len(writing) - len(written))))
    return out


def landed_in(times: dict, t: float) -> str:
    """The phase a moment fell in (log times)."""
    for a, b in times["checkpoints"]:
        if a <= t and (b is None or t <= b):
            return "checkpoint"
    landed = "before start-up"
    for phase in ("resume", "connect", "ramp", "probe", "training", "ramp-down"):
        if phase in times and times[phase][0] is not None and t >= times[phase][0]:
            landed = phase
    return landed


# ----------------------------------------------------------------------------- processes
class Simulator:
    """``labpgt sim serve --realtime --control-port 0`` in its own process."""

    def __init__(self, workdir: Path, seed: int):
        self.raw = workdir / "sim-station.toml"
        self.station = workdir / "station.toml"
        self.out = open(workdir / "sim.out", "w")
        self.proc = subprocess.Popen(python() + ["sim", "serve", "--realtime", "--seed", str(seed), "--control-port",
                                                 "0", "--station-out", str(self.raw)],
                                     stdout=self.out, stderr=subprocess.STDOUT, cwd=workdir, env=env(), preexec_fn=_default_signals)
        deadline = time.monotonic() + 60
        while not (self.raw.exists() and "simulator control" in self.raw.read_text()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start: {(workdir / 'sim.out').read_text()[-500:]}")
            time.sleep(0.05)  # waiting for another process's file
        text = self.raw.read_text()
        self.port = int(re.search(r"simulator control: 127\.0\.0\.1:(\d+)", text).group(1))
        self.station.write_text(with_timeouts(text))

    def state(self) -> dict:
        return ask(self.port, "state")

    def ask(self, command: str) -> dict:
        return ask(self.port, command)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


def with_timeouts(text: str) -> str:
    """The station file with the campaign's client timeout per role."""
    out, role = [], None
    for line in text.splitlines():
        m = re.match(r"\[(\w+)\.options\]", line)
        role = m.group(1) if m else (None if line.startswith("[") else role)
        if role in TIMEOUTS_S and line.startswith("timeout_s"):
            line = f"timeout_s = {TIMEOUTS_S[role]!r}"
        out.append(line)
    return "\n".join(out) + "\n"


def train_args(run: Path, station: Path, budget: int, seed: int, resume: bool) -> list[str]:
    if resume:
        return ["train", "--resume", str(run), "--no-progress"]
    return ["train", "--estimator", "node", "--station", str(station), "--budget", str(budget), "--seed", str(seed), "--out", str(run),
            "--no-progress", "--eval-every", "2", "--checkpoint-every", "1"]


class Cli:
    """One ``labpgt`` command in its own process, its log watched."""

    def __init__(self, workdir: Path, name: str, args: list[str]):
        self.log = workdir / f"{name}.log"
        self.stdout_path = workdir / f"{name}.out"
        self._out = open(self.stdout_path, "w")
        self.started = time.time()
        self.proc = subprocess.Popen(python() + ["--log-file", str(self.log)] + args, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=workdir, env=env(), preexec_fn=_default_signals)
        self.watch = LogWatch(self.log)

    def wait_for(self, marker: str, after: float = -np.inf, timeout_s: float = 300) -> float | None:
        """The log time of ``marker`` (after ``after``), or None if the process ended first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.watch.poll()
            t = self.watch.first(marker, after)
            if t is not None:
                return t
            if self.proc.poll() is not None:
                self.watch.poll()
                return self.watch.first(marker, after)
            time.sleep(0.005)  # watching another process's log, not synchronising
        return None

    def finish(self, timeout_s: float = 300) -> tuple[int | None, str]:
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None  # the command did not end by itself
        self._out.close()
        self.watch.poll()
        return code, self.stdout_path.read_text(errors="replace")


def run_cli(workdir: Path, args: list[str], timeout_s: float = 300) -> tuple[int | None, str]:
    try:
        proc = subprocess.run(python() + args, capture_output=True, text=True, cwd=workdir, env=env(),
                              timeout=timeout_s, preexec_fn=_default_signals)
    except subprocess.TimeoutExpired:
        return None, "timed out"
    return proc.returncode, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- one trial
def _aim(cli: Cli, phase: str, windows: dict, rng) -> tuple[float | None, float]:
    """Wait for the phase's first marker; return (its log time, the delay drawn: uniform in the phase's
    window, [0, w] s or, given as a pair, [lo, hi] s after the marker)."""
    window = windows[phase]
    lo, hi = (float(window[0]), float(window[1])) if isinstance(window, (tuple, list)) else (0.0, float(window))
    delay = float(rng.uniform(lo, hi))
    if phase == "resume":
        return cli.started, delay
    if phase == "checkpoint":  # one of the checkpoints after step 0, at random
        marker_count = int(rng.integers(1, 5))
        t = -np.inf
        for _ in range(marker_count):
            found = cli.wait_for("ckpt_writing", after=t + 1e-3 if np.isfinite(t) else t)
            if found is None:
                return None, delay
            t = found
        return t, delay
    marker = {"connect": "idn", "ramp": "output_on", "probe": "probe", "training": "rf_on", "ramp-down": "rf_off"}[phase]
    after = -np.inf
    if phase == "ramp-down":
        rf_on = cli.wait_for("rf_on")
        if rf_on is None:
            return None, delay
        after = rf_on
    return cli.wait_for(marker, after=after), delay


def _interrupt(cli: Cli, sim: Simulator, kind: str, role: str) -> None:
    if kind == "death":
        sim.ask(f"hang {role}")
    elif cli.proc.poll() is None:
        cli.proc.send_signal({"sigint": signal.SIGINT, "sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL}[kind])


def _prepare_resume(workdir: Path, sim: Simulator, run: Path, budget: int, seed: int) -> bool:
    """An interrupted run to resume: trained a little, then Ctrl-C."""
    cli = Cli(workdir, "prepare", train_args(run, sim.station, budget, seed, resume=False))
    t = cli.wait_for("rf_on")
    if t is not None:
        cli.wait_for("sweep", after=t)
        time.sleep(1.0)  # a few steps into training
    if cli.proc.poll() is None:
        cli.proc.send_signal(signal.SIGINT)
    code, _ = cli.finish()
    return code == 130 and run.exists()


def file_usable(workdir: Path, sim: Simulator, run: Path) -> dict:
    """``labpgt inspect`` exits 0, and ``--resume`` resumes (until its first training sweep, then Ctrl-C)."""
    code, text = run_cli(workdir, ["inspect", str(run)], timeout_s=120)
    out = {"inspect_exit": code, "inspect_problem": None if code == 0 else text[-400:]}
    if "status: completed" in text:
        out["resume"] = "completed run (nothing to resume)"
        out["usable"] = code == 0
        return out
    cli = Cli(workdir, "resume-check", ["train", "--resume", str(run), "--no-progress"])
    rf_on = cli.wait_for("rf_on", timeout_s=180)
    sweep = cli.wait_for("sweep", after=rf_on) if rf_on is not None else None
    if cli.proc.poll() is None:
        cli.proc.send_signal(signal.SIGINT)
    rc, text = cli.finish()
    if "already completed" in text:
        out["resume"], resumed = "completed run (nothing to resume)", True
    else:
        resumed = sweep is not None and rc in (0, 130)
        out["resume"] = "resumed" if resumed else f"did not resume (exit {rc}): {text[-400:]}"
    state = sim.state()
    out["resume_left_safe"] = is_safe(state, ZERO_A)
    out["usable"] = code == 0 and resumed
    return out


def trial(phase: str, kind: str, index: int, seed: int, root: Path, budget: int, windows: dict,
          check_files: bool = True) -> dict:
    rng = np.random.default_rng([seed, PHASES.index(phase), KINDS.index(kind), index])
    workdir = root / f"{phase}-{kind}-{index}"
    workdir.mkdir(parents=True, exist_ok=True)
    run = workdir / "run.h5"
    role = ROLES[int(rng.integers(len(ROLES)))] if kind == "death" else None
    result = {"phase": phase, "kind": kind, "index": index, "role": role, "problems": []}
    sim = Simulator(workdir, seed=int(rng.integers(1000)))
    try:
        resume = phase == "resume"
        if resume and not _prepare_resume(workdir, sim, run, budget, seed):
            result["problems"].append("could not prepare an interrupted run to resume")
            return result
        cli = Cli(workdir, "train", train_args(run, sim.station, budget, seed, resume))
        marker_t, delay = _aim(cli, phase, windows, rng)
        if marker_t is None:
            result["aim"] = "the phase was never reached (the command ended first)"
            code, text = cli.finish()
        else:
            wait = marker_t + delay - time.time()
            if wait > 0:
                time.sleep(wait)  # the aimed moment
            sent = time.time()
            _interrupt(cli, sim, kind, role)
            result["signal_after_marker_s"] = round(sent - marker_t, 4)
            code, text = cli.finish(timeout_s=400)
            times = phase_times(cli.watch.events, resume)
            result["landed"] = landed_in(times, sent)
        result["exit"] = code
        if code is None:
            result["problems"].append("the command did not end within 400 s")
        state = sim.state()
        claims_safe = "the rig was left safe (read back" in text
        warns = "MAY NOT BE SAFE" in text
        safe = is_safe(state, ZERO_A)
        result.update(state_after=state, safe_after=safe, claims_safe=claims_safe, warns=warns)
        if claims_safe and not safe:
            result["problems"].append("the command said the rig was left safe; the simulator says it is not")
        if not safe and not warns and kind != "sigkill":  # a killed process says nothing
            result["problems"].append("the rig is not safe and the command did not warn")
        if kind in ("sigint", "sigterm") and not safe:
            result["problems"].append(f"{kind}: the rig was not left safe")
        touched = cli.watch.first("idn") is not None  # the command had talked to the instruments
        if kind in ("sigint", "sigterm") and touched and not (claims_safe or warns):
            result["problems"].append("the command did not report the rig's state (no read-back printed)")
        if kind in ("sigkill", "death"):
            result["left_as_it_was"] = not safe  # SIGKILL: nothing could run; death: the instrument was gone
            if kind == "death":
                sim.ask(f"revive {role}")
            check_code, check_text = run_cli(workdir, ["check", "--station", str(sim.station)], timeout_s=300)
            after = sim.state()
            result.update(check_exit=check_code, state_after_check=after, safe_after_check=is_safe(after, ZERO_A))
            if not is_safe(after, ZERO_A):
                result["problems"].append(f"labpgt check did not leave the rig safe: {check_text[-400:]}")
        final = sim.state()
        if final["largest_current_step_a"] > RAMP_STEP_A + READBACK_RESOLUTION_A:
            result["problems"].append(f"the coil's current jumped by {final['largest_current_step_a']:.6f} A")
        result["largest_current_step_a"] = final["largest_current_step_a"]
        if check_files and run.exists():
            result["file"] = file_usable(workdir, sim, run)
            if not result["file"]["usable"]:
                creation = result.get("landed") == "training" and not any(
                    n == "ckpt_written" for _, n in cli.watch.events)
                result["file"]["creation_window"] = bool(creation)
            if not result["file"].get("resume_left_safe", True):
                result["problems"].append("the resume check did not leave the rig safe")
        else:
            result["file"] = None if not run.exists() else {"usable": None}
    except Exception as exc:  # noqa: BLE001 - a campaign error is a finding, reported with its trial
        result["problems"].append(f"campaign error: {type(exc).__name__}: {exc}")
    finally:
        sim.stop()
    result["unsafe"] = any("safe" in p or "jumped" in p or "did not end" in p for p in result["problems"])
    return result


# ----------------------------------------------------------------------------- calibration, summary
def calibrate(root: Path, budget: int, seed: int) -> dict:
    """The phases' durations in one uninterrupted run and one resume."""
    workdir = root / "calibration"
    workdir.mkdir(parents=True, exist_ok=True)
    sim = Simulator(workdir, seed=seed)
    try:
        run = workdir / "run.h5"
        cli = Cli(workdir, "train", train_args(run, sim.station, budget, seed, resume=False))
        cli.finish()
        times = phase_times(cli.watch.events, resume=False)
        exited = cli.log.stat().st_mtime
        windows = {}
        for phase in ("connect", "ramp", "probe", "training", "ramp-down"):
            a, b = times[phase]
            windows[phase] = round((exited if b is None else b) - a, 3)
        ck = [b - a for a, b in times["checkpoints"] if b is not None]
        windows["checkpoint"] = round(float(np.median(ck)), 4) if ck else WINDOWS_S["checkpoint"]
        run.unlink()
        _prepare_resume(workdir, sim, run, budget, seed)
        cli = Cli(workdir, "resume", train_args(run, sim.station, budget, seed, resume=True))
        cli.finish()
        t = phase_times(cli.watch.events, resume=True)["resume"][1]
        windows["resume"] = round(t - cli.started, 3) if t is not None else WINDOWS_S["resume"]
    finally:
        sim.stop()
    return windows


def summarise(trials: list[dict]) -> dict:
    cells = {}
    for t in trials:
        c = cells.setdefault(f"{t['phase']}/{t['kind']}", {"trials": 0, "landed_in_phase": 0, "unsafe": 0,
                                                             "left_as_it_was": 0, "files": 0, "unusable": 0,
                                                             "creation_window": 0, "problems": 0})
        c["trials"] += 1
        c["landed_in_phase"] += t.get("landed") == t["phase"]
        c["unsafe"] += bool(t["unsafe"])
        c["left_as_it_was"] += bool(t.get("left_as_it_was"))
        c["problems"] += bool(t["problems"])
        f = t.get("file")
        if f:
            c["files"] += 1
            if f.get("usable") is False:
                c["creation_window" if f.get("creation_window") else "unusable"] += 1
    total = {k: sum(c[k] for c in cells.values()) for k in next(iter(cells.values()))} if cells else {}
    return {"cells": cells, "total": total}


def campaign(trials: int = 4, phases=PHASES, kinds=KINDS, seed: int = 0, budget: int = 192, jobs: int = 4,
             windows: dict | None = None, workdir: Path | None = None, check_files: bool = True, log=print,
             cases: list[tuple[str, str]] | None = None) -> dict:
    own = None
    if workdir is None:
        own = tempfile.TemporaryDirectory(prefix="labpgt-campaign-")
        workdir = Path(own.name)
    t0 = time.monotonic()
    windows = dict(windows or WINDOWS_S)
    plan = [(p, k, i) for i in range(trials) for p, k in (cases or [(p, k) for p in phases for k in kinds])]
    results = []
    lock = threading.Lock()

    def one(item):
        p, k, i = item
        r = trial(p, k, i, seed, Path(workdir), budget, windows, check_files)
        with lock:
            results.append(r)
            f = r.get("file")
            log(f"{len(results):3d}/{len(plan)} {p:10s} {k:8s} landed {r.get('landed', '-'):10s} "
                f"exit {r.get('exit')!s:4s} safe after {r.get('safe_after')!s:5s}"
                f"{' (check: ' + str(r.get('safe_after_check')) + ')' if 'safe_after_check' in r else ''} "
                f"file {'-' if not f else ('usable' if f.get('usable') else 'UNUSABLE')}"
                f"{'  PROBLEMS: ' + '; '.join(r['problems']) if r['problems'] else ''}")
        return r

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, plan))
    results.sort(key=lambda r: (PHASES.index(r["phase"]), KINDS.index(r["kind"]), r["index"]))
    out = {"trials_per_cell": trials, "budget": budget, "seed": seed, "jobs": jobs, "windows_s": windows,
           "seconds": round(time.monotonic() - t0, 1), "summary": summarise(results), "trials": results}
    if own is not None:
        own.cleanup()
    return out


def print_table(result: dict) -> None:
    cells, total = result["summary"]["cells"], result["summary"]["total"]
    head = ("phase/kind", "trials", "landed", "unsafe", "as-was", "files", "unusable", "creation")
    print("\n" + "  ".join(f"{h:>10s}" if i else f"{h:<20s}" for i, h in enumerate(head)))
    for name, c in cells.items():
        vals = (c["trials"], c["landed_in_phase"], c["unsafe"], c["left_as_it_was"], c["files"], c["unusable"],
                c["creation_window"])
        print(f"{name:<20s}  " + "  ".join(f"{v:>10d}" for v in vals))
    vals = (total["trials"], total["landed_in_phase"], total["unsafe"], total["left_as_it_was"], total["files"],
            total["unusable"], total["creation_window"])
    print(f"{'total':<20s}  " + "  ".join(f"{v:>10d}" for v in vals))
    print(f"({result['seconds']} s; landed: the interrupt fell in the phase aimed at; as-was: SIGKILL or a dead "
          f"instrument left RF or current on, made safe afterwards by labpgt check; creation: unusable files "
          f"interrupted while being created)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4, help="trials per phase x kind")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=192, help="training measurements per run")
    parser.add_argument("--jobs", type=int, default=4, help="trials at a time (each has its own simulator)")
    parser.add_argument("--calibrate", action="store_true", help="measure the phases' durations first")
    parser.add_argument("--no-file-checks", action="store_true", help="skip inspect and --resume of the files")
    parser.add_argument("--json", default=str(ROOT / "scripts" / "results" / "fault_campaign.json"))
    args = parser.parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    kinds = [k for k in args.kinds.split(",") if k]
    for p in phases:
        if p not in PHASES:
            parser.error(f"unknown phase {p!r}; allowed: {', '.join(PHASES)}")
    for k in kinds:
        if k not in KINDS:
            parser.error(f"unknown kind {k!r}; allowed: {', '.join(KINDS)}")
    windows = None
    if args.calibrate:
        with tempfile.TemporaryDirectory(prefix="labpgt-calibrate-") as tmp:
            windows = calibrate(Path(tmp), args.budget, args.seed)
        print(f"phase windows (s): {windows}", flush=True)
    result = campaign(args.trials, phases, kinds, args.seed, args.budget, args.jobs, windows,
                      check_files=not args.no_file_checks, log=lambda *a: print(*a, flush=True))
    result["command"] = "python scripts/fault_campaign.py " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print_table(result)
    total = result["summary"]["total"]
    return 0 if total["unsafe"] == 0 and total["unusable"] == 0 and total["problems"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
