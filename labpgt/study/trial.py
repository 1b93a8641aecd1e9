"""One trial on a worker: an ordinary ``labpgt train`` in a child process, its run file in the
trial's folder.

The child is the stable command line, not the Python internals: a trial is exactly what a user
would run by hand, and its run file replays and resumes like any other. What happens to a trial
depends on what its folder already holds:

- no run file: ``labpgt train --config trial.toml``;
- a completed run file: nothing to do (its figures are read);
- a running / aborted / failed one: ``labpgt train --resume run.h5`` (from its last checkpoint);
  a run file still being written by a child of a lost worker is waited for first (that child got
  SIGTERM when its worker died and checkpoints on its way out).

The child runs in its own session (a Ctrl-C at the terminal reaches the study's driver, which
stops the children itself, one SIGTERM each) and is told by the kernel to stop when its worker
dies (Linux ``PR_SET_PDEATHSIG``), so no orphan keeps training.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from labpgt.runfile.format import pid_alive  # noqa: F401 (the runner takes it from here)
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RUN_FILE = "run.h5"
CONFIG_FILE = "trial.toml"
LOG_FILE = "train.log"
ATTEMPTS_FILE = "attempts"
RESULT_FILE = "result.json"  # in-process trials (no run file)
#: how long a retried trial waits for the previous attempt's child to checkpoint and exit
WRITER_EXIT_TIMEOUT_S = 120.0
#: how long a stopped child may take to finish its step, checkpoint and mark its file aborted
STOP_TIMEOUT_S = 60.0

# children of this worker process, so the driver can stop them on Ctrl-C (stop_children)
_children: dict[int, subprocess.Popen] = {}
_children_lock = threading.Lock()


@dataclass(frozen=True)
class TrialTask:
    """What a worker needs to run one trial (picklable; paths as the workers see them)."""

    name: str
    folder: str
    config_toml: str
    kind: str = "train"
    job: dict | None = None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the worker that started it dies (Linux only)."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)



def run_file_state(path: Path) -> dict:
    """Status and final figures of a trial's run file ({"status": "missing"} without one)."""
    from labpgt.runfile import RunFileError, RunReader

    if not path.exists():
        return {"status": "missing"}
    try:
        with RunReader(path) as reader:
            history = reader.status_history()
            last = history[-1] if history else None
            evaluations = reader.evaluations()
            keep = reader.effective_rows("evaluations")
            steps = reader.steps()
            step_rows = reader.effective_rows("steps")
            curve = [[int(evaluations["measurements"][i]), float(evaluations["test_accuracy"][i]),
                      float(evaluations["test_loss"][i])] for i in keep]
            state = {
                "status": reader.status,
                "message": reader.status_message,
                "writer_pid": int(last["pid"]) if last else None,
                "writer_host": str(last["host"]) if last else None,
                "train_measurements": int(steps["measurements"][step_rows[-1]]) if len(step_rows) else 0,
                "steps": int(len(step_rows)),
                "evaluations": curve,
                "resumes": int(len(reader.resumes()["checkpoint"])),
            }
    except (RunFileError, OSError) as exc:
        return {"status": "unreadable", "message": str(exc)}
    if curve:
        state["final_test_accuracy"], state["final_test_loss"] = curve[-1][1], curve[-1][2]
        state["final_measurements"] = curve[-1][0]
    return state


def _wait_for_writer_exit(path: Path, state: dict) -> dict:
    """A run file still marked running by a live process on this host: wait until it exits."""
    deadline = time.monotonic() + WRITER_EXIT_TIMEOUT_S
    while (state["status"] == "running" and state.get("writer_host") == socket.gethostname()
           and state.get("writer_pid") and pid_alive(state["writer_pid"])):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path}: still written by process {state['writer_pid']} after "
                               f"{WRITER_EXIT_TIMEOUT_S:.0f} s; stop it, then rerun the study")
        time.sleep(0.2)
        state = run_file_state(path)
    return state


def _child_environment() -> dict:
    """This worker's environment without what Dask's nanny set for its own worker processes
    (single-threaded BLAS, an eager malloc trim: measured 1.3-1.9x slower for a `labpgt train`
    child on the shared 2-core machine): a trial runs as the same command typed in a shell."""
    env = dict(os.environ)
    try:
        import dask
    except ImportError:  # run_trial called outside Dask
        return env
    added = {**dask.config.get("distributed.nanny.pre-spawn-environ", default={}),
             **dask.config.get("distributed.nanny.environ", default={})}
    for key, value in added.items():
        if key in env and env[key] == str(value):
            del env[key]
    return env


def _count_attempt(folder: Path) -> int:
    """Attempts at this trial so far, this one included (a worker lost mid-trial makes two)."""
    path = folder / ATTEMPTS_FILE
    attempts = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(f"{attempts}\n")
    return attempts


def run_trial(task: TrialTask) -> dict:
    """Run (or resume, or skip) one trial; returns its status and figures, never raises for a
    trial that fails (the error is in the result, the study goes on)."""
    if task.kind != "train":
        return run_direct_trial(task)
    folder = Path(task.folder)
    folder.mkdir(parents=True, exist_ok=True)
    run_path = folder / RUN_FILE
    config_path = folder / CONFIG_FILE
    config_path.write_text(task.config_toml)
    attempts = _count_attempt(folder)
    started = time.time()
    state = _wait_for_writer_exit(run_path, run_file_state(run_path))
    base = {"name": task.name, "attempts": attempts, "worker_host": socket.gethostname(), "worker_pid": os.getpid()}
    if state["status"] == "completed":
        return {**base, **state, "wall_s": 0.0, "action": "skipped"}
    if state["status"] == "unreadable":
        # killed while the file was being created: nothing in it to resume; kept aside, started anew
        aside = run_path.with_name(f"{RUN_FILE}.unreadable-{int(started)}")
        run_path.rename(aside)
        log.warning("%s: unreadable run file moved to %s; starting the trial anew", run_path, aside.name)
        state = {"status": "missing"}
    if state["status"] == "missing":
        action, args = "started", ["--config", str(config_path), "--out", str(run_path)]
    else:
        action, args = "resumed", ["--resume", str(run_path)]
    command = [sys.executable, "-m", "labpgt.cli", "train", *args, "--no-progress"]
    with open(folder / LOG_FILE, "a") as log_file:
        log_file.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} attempt {attempts}: "
                       f"{' '.join(command)}\n")
        log_file.flush()
        child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=_child_environment(), start_new_session=True, preexec_fn=_die_with_parent)
        with _children_lock:
            _children[child.pid] = child
        try:
            exit_code = child.wait()
        finally:
            with _children_lock:
                _children.pop(child.pid, None)
    state = run_file_state(run_path)
    result = {**base, **state, "action": action, "exit_code": exit_code, "wall_s": time.time() - started}
    if exit_code != 0 and state["status"] != "aborted":
        result["error"] = _last_error(folder / LOG_FILE, exit_code)
        if state["status"] in ("missing", "running"):
            result["status"] = "failed"
    return result


def direct_result_state(folder: Path) -> dict:
    """Status and figures of an in-process trial from its result file ({"status": "missing"} without one)."""
    path = folder / RESULT_FILE
    if not path.exists():
        return {"status": "missing"}
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return {"status": "unreadable", "message": str(exc)}
    curve = [[int(m), float(a), float(loss)] for m, a, loss in result["curve"]]
    return {"status": "completed", "evaluations": curve, "final_test_accuracy": float(result["final_accuracy"]),
            "final_test_loss": float(result["final_loss"]), "final_measurements": int(result["train_measurements"]),
            "train_measurements": int(result["train_measurements"]), "divergent": bool(result["divergent"])}


def run_direct_trial(task: TrialTask) -> dict:
    """An in-process trial (a kind of labpgt.study.kinds other than train), run on this worker;
    its whole result kept as JSON in the trial's folder (written atomically: present = complete)."""
    from labpgt.study.kinds import run_bench_training

    folder = Path(task.folder)
    folder.mkdir(parents=True, exist_ok=True)
    attempts = _count_attempt(folder)
    base = {"name": task.name, "attempts": attempts, "worker_host": socket.gethostname(), "worker_pid": os.getpid()}
    state = direct_result_state(folder)
    if state["status"] == "completed":
        return {**base, **state, "wall_s": 0.0, "action": "skipped"}
    started = time.time()
    try:
        result = run_bench_training(task.job)
    except Exception as exc:  # recorded with the trial, the study goes on
        log.exception("trial %s failed", task.name)
        return {**base, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "action": "started",
                "wall_s": time.time() - started}
    tmp = folder / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result, default=float))
    os.replace(tmp, folder / RESULT_FILE)
    return {**base, **direct_result_state(folder), "action": "started", "wall_s": time.time() - started}


def _last_error(log_path: Path, exit_code: int) -> str:
    """The child's own one-line error (``error: ...``), else its last line, with the exit code."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    last = errors[-1] if errors else (lines[-1] if lines else "no output")
    return f"exit code {exit_code}: {last}"


def stop_children(timeout_s: float = STOP_TIMEOUT_S) -> list[int]:
    """On this worker: SIGTERM every trial child (each checkpoints and marks its run aborted),
    wait for them, SIGKILL any still there after ``timeout_s``. Returns the pids stopped."""
    with _children_lock:
        children = list(_children.values())
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("trial child %d did not stop in %.0f s; killed (its run resumes from its last checkpoint)",
                        child.pid, timeout_s)
            child.kill()
            child.wait()
    return [child.pid for child in children]
