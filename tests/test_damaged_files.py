"""Damaged run files never hang the tools; readers never block a resume; a live writer's races are
not called damage (issue 17 item 6). The fuzz campaign is scripts/fuzz_runfile.py; a short run of it
is the last test here."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from labpgt.runfile import RunFile, RunFileError, RunReader
from labpgt.runfile.opening import read_attempts_bounded
from labpgt.runfile.precheck import check_not_locked
from tests.test_runfile import create, killed_run, row, step_rec

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def damage_root_header(path: Path) -> None:
    """Flip a byte inside the root group's object header (its address is in the v2/v3 superblock):
    its checksum fails for good, the kind of damage a SWMR reader used to retry for ever."""
    with open(path, "r+b") as fh:
        head = fh.read(48)
        (root,) = struct.unpack_from("<Q", head, 12 + 3 * 8)
        fh.seek(root + 20)
        byte = fh.read(1)[0]
        fh.seek(root + 20)
        fh.write(bytes([byte ^ 0x5A]))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def labpgt(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "labpgt.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**ENV, **(env or {})}, timeout=timeout)


@pytest.fixture
def damaged_killed(tmp_path):
    path = killed_run(tmp_path)  # marked open for SWMR writing: readers use SWMR
    damage_root_header(path)
    return path


def test_a_swmr_read_of_damaged_metadata_is_an_error_not_a_hang(damaged_killed):
    assert read_attempts_bounded()  # Linux, h5py's own libhdf5: the bound is in force
    # in a child: before the bound this read slept in libhdf5 for ever (the timeout is the hang guard)
    code = textwrap.dedent("""
        import sys
        from labpgt.runfile import RunReader, RunFileError
        try:
            RunReader(sys.argv[1])
        except RunFileError as exc:
            print("RunFileError:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code, str(damaged_killed)], capture_output=True, text=True,
                         cwd=ROOT, env=ENV, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("RunFileError:") and "checksum" in out.stdout, out.stdout


def test_inspect_and_resume_end_in_time_even_where_libhdf5_would_hang(damaged_killed):
    """LABPGT_SWMR_READ_ATTEMPTS=100 is libhdf5's default: the read hangs in C (GIL held, signals
    not handled); the check in a child process with its time limit still ends both commands."""
    before = sha(damaged_killed)
    hang = {"LABPGT_SWMR_READ_ATTEMPTS": "100"}
    out = labpgt("inspect", str(damaged_killed), env=hang)
    assert out.returncode == 1
    problems = [line for line in out.stdout.splitlines() if "PROBLEM:" in line]
    assert problems and "did not finish (libhdf5 stuck for 5 s)" in problems[0], out.stdout
    out = labpgt("train", "--resume", str(damaged_killed), "--no-progress", env=hang)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: {damaged_killed} is damaged: reading its HDF5 structure did not finish"), \
        out.stderr
    assert "nothing was changed" in out.stderr
    assert sha(damaged_killed) == before
    # and with the bound (the default): errors at once, the same way
    out = labpgt("train", "--resume", str(damaged_killed), "--no-progress")
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "nothing was changed" in out.stderr, out.stderr
    assert sha(damaged_killed) == before


def test_a_check_stuck_in_one_call_without_the_gil_is_stopped(tmp_path):
    """The check's child is "stuck" when its reading thread makes no call for the limit, also inside a
    call that lets go of the GIL (as libhdf5's dataset reads do through h5py): here opening a FIFO
    no one writes to. Only the cap (never reached here) would end it if the child merely had to be alive."""
    from labpgt.runfile.precheck import run_in_child

    fifo = tmp_path / "run.h5"
    os.mkfifo(fifo)
    with pytest.raises(RunFileError, match=r"did not finish \(libhdf5 stuck for 2 s\); nothing was changed"):
        run_in_child("check", fifo, limit_s=2.0, cap_s=60.0)


def _children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _check_children_of(proc: subprocess.Popen) -> list[int]:
    """The check's child processes once they appear, given half a second to settle in their read."""
    children = []
    for _ in range(600):
        children = _children(proc.pid)
        if children or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert children, "no check child"
    time.sleep(0.5)
    return children


@pytest.mark.parametrize("command, signum, code", [
    (["inspect"], signal.SIGINT, 130), (["train", "--no-progress", "--resume"], signal.SIGINT, 130),
    (["train", "--no-progress", "--resume"], signal.SIGTERM, 143)])
def test_a_signal_while_the_check_hangs_ends_the_command_and_its_child(damaged_killed, command, signum, code):
    proc = subprocess.Popen([sys.executable, "-m", "labpgt.cli", *command, str(damaged_killed)], cwd=ROOT,
                            env={**ENV, "LABPGT_SWMR_READ_ATTEMPTS": "100"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        children = _check_children_of(proc)  # the check's child (then hangs in libhdf5)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)  # the hang guard: without the fix, the child would hold it
    finally:
        proc.kill()
    assert proc.returncode == code and "Traceback" not in err, err
    if signum == signal.SIGINT:
        assert err.strip().splitlines()[-1] == "interrupted", err
    for child in children:
        assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


HOLDER = textwrap.dedent("""
    import sys, time, h5py
    from labpgt.runfile import RunReader
    from labpgt.runfile.opening import readers_take_no_locks
    if sys.argv[2] == "labpgt":
        readers_take_no_locks()   # as every labpgt command does (watch, report, replay, ...)
        r = RunReader(sys.argv[1])
    else:
        f = h5py.File(sys.argv[1], "r", swmr=True)   # a notebook: plain h5py, default locking
    print("open", flush=True)
    time.sleep(60)
""")


def hold_open(path, how):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), how], stdout=subprocess.PIPE, text=True,
                              env=ENV)
    assert holder.stdout.readline().strip() == "open"
    return holder


def test_a_reader_never_blocks_a_resume_and_another_programs_lock_is_named(tmp_path):
    path = killed_run(tmp_path)
    copy = tmp_path / "copy.h5"
    shutil.copyfile(path, copy)
    holder = hold_open(path, "labpgt")
    try:  # labpgt's commands take no lock: libhdf5 used to refuse this with "[Errno 11] unable to lock file"
        check_not_locked(path)
        with RunFile.open_append(path) as rf:
            rf.set_status("aborted", "test")
    finally:
        holder.kill()
        holder.wait()
    with RunReader(path) as r:
        assert r.status == "aborted" and r.n_measurements == 300
    check_not_locked(copy)
    holder = hold_open(copy, "h5py")
    try:
        with pytest.raises(RunFileError, match=rf"is open in another program \(process {holder.pid} .*close it "
                                                 r"there and retry \(nothing was changed\)"):
            check_not_locked(copy)
        from labpgt.experiment.run import read_resumed

        before = sha(copy)
        with pytest.raises(RunFileError, match="is open in another program"):
            read_resumed(copy, {})
        assert sha(copy) == before
    finally:
        holder.kill()
        holder.wait()
    check_not_locked(copy)


LIVE_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from tests.test_runfile import create, row, step_rec
    rf = create(sys.argv[1])
    n = 0
    print("created", flush=True)
    for s in range(int(sys.argv[3])):
        for _ in range(40):
            rf.measurement(row(n, step=s)); n += 1
        rf.step(step_rec(s, n))
        rf.checkpoint({"step": s + 1, "measurements": n, "params": [0.5] * 5,
                       "optimizer": {"m": [0.0] * 5, "v": [0.0] * 5, "t": 3.0}, "rng_state": "{}", "extra": "{}"})
    rf.set_status("completed")
    rf.close()
""")


def test_a_reader_without_locks_and_h5py_with_them_share_a_file_in_one_process(tmp_path):
    """A command's reader takes no lock; libhdf5 refuses a second open of the file in the same
    process that differs in locking: the reader then opens as the first open did."""
    import h5py

    from labpgt.runfile import opening

    path = killed_run(tmp_path)
    saved = opening._NO_LOCKS[0]  # (a test before may have run a command in this process)
    try:
        with h5py.File(path, "r", swmr=True) as f:  # e.g. xarray in a notebook, locks by default
            assert f["committed"][0] == 300
            opening.readers_take_no_locks()
            with RunReader(path) as r:
                assert r.n_measurements == 300
        opening._NO_LOCKS[0] = False  # a user's process: locks, like h5py
        with RunReader(path) as r, h5py.File(path, "r", swmr=True) as f:
            assert r.n_measurements == f["committed"][0] == 300
    finally:
        opening._NO_LOCKS[0] = saved


def test_readers_of_a_live_run_see_no_damage(tmp_path):
    """Fresh readers and a refreshing one read a file while a writer appends and checkpoints: the
    races of SWMR reading ("Index (n) out of range", "can't insert duplicate key", ...) are
    repeated, never reported as damage."""
    path = tmp_path / "live.h5"
    writer = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(path), str(ROOT), "400"],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    reads, failures, steady = 0, [], None
    try:
        assert writer.stdout.readline().strip() == "created"
        while writer.poll() is None or reads < 20:
            try:
                if steady is None:
                    steady = RunReader(path)
                else:
                    steady.refresh()
                steady.steps()
                steady.last_checkpoint()
                n = steady.n_measurements
                if n:
                    steady.measurements.column("trace_dbm", slice(max(0, n - 50), n))
                with RunReader(path) as fresh:
                    fresh.last_checkpoint()
                    fresh.status_history()
                    fresh.evaluations()
            except (RunFileError, OSError, KeyError, ValueError, IndexError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            reads += 1
            if reads > 3000:
                break
        writer.wait(timeout=120)
    finally:
        writer.kill()
        if steady is not None:
            steady.close()
    assert writer.returncode == 0
    assert reads >= 20
    assert failures == [], f"{len(failures)} of {reads} reads failed: {failures[:3]}"
    with RunReader(path) as r:
        assert r.status == "completed" and r.n_checkpoints == 400


def test_short_fuzz_campaign(tmp_path):
    """scripts/fuzz_runfile.py, short: a killed `labpgt train` file damaged at seeded offsets (one in
    each of a sample of its metadata regions, one or two in raw data); inspect each, resume two."""
    spec = importlib.util.spec_from_file_location("fuzz_runfile", ROOT / "scripts" / "fuzz_runfile.py")
    fuzz_runfile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz_runfile)
    # no timed assertion: the limits are generous guards, a hang is what the guard kills
    result = fuzz_runfile.fuzz(offsets=10, seed=3, resumes=2, budget=400, limit_s=90.0, guard_s=90.0,
                               sigint_limit_s=60.0, unbounded_n=0, sigint_cases=1, sigint_delays=(0.8,),
                               workdir=tmp_path, log=lambda *a: None)
    assert result["problems"] == []
    assert result["offsets"] == 10
    for tool, n in (("inspect", 10), ("resume", 2)):
        counts = result["outcomes"][tool]
        assert sum(counts.values()) == n
        assert counts["success"] + counts["error"] == n, counts
    assert result["outcomes"]["inspect"]["error"] >= 1  # the damage was met, and said
    assert set(result["resumed_files"]) <= {"completed", "untouched"}
    assert all(s["ok"] for s in result["sigint"]) and len(result["sigint"]) == 2
    assert result["ok"]


def test_the_check_child_does_not_outlive_a_killed_command(tmp_path):
    """A SIGKILLed `labpgt inspect` cannot stop its check child itself: the kernel does
    (PR_SET_PDEATHSIG), so no child stuck in libhdf5 is left behind for ever."""
    fifo = tmp_path / "run.h5"
    os.mkfifo(fifo)  # opening it blocks: the child is stuck, as in libhdf5
    parent = subprocess.Popen([sys.executable, "-c", "from labpgt.runfile.precheck import run_in_child; "
                               f"run_in_child('check', {str(fifo)!r}, limit_s=60.0, cap_s=120.0)"], cwd=ROOT, env=ENV)
    try:
        children = _check_children_of(parent)
    finally:
        parent.kill()
        parent.wait()
    for _ in range(100):  # the kernel's signal is delivered at once; allow for a busy machine
        if all(not Path(f"/proc/{c}").exists() or "Z" in Path(f"/proc/{c}/stat").read_text().split()[2]
               for c in children):
            break
        time.sleep(0.05)
    else:
        for c in children:
            os.kill(c, signal.SIGKILL)
        raise AssertionError(f"the check child {children} outlived its killed command")
