"""A run file's life: born whole or not at all, stopped cleanly when out of room, checkpoints checksummed."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from labpgt.cli import main
from labpgt.runfile import RunFile, RunReader, checkpoints, inspect
from labpgt.runfile.superblock import _superblock

ROOT = Path(__file__).resolve().parents[1]
OLD_FILE = ROOT / "tests" / "data" / "v010-dense-node.h5"


def _argv(path, budget=128, *extra):
    return ["train", "--budget", str(budget), "--seed", "5", "--out", str(path), "--no-progress", *extra]


def _final_params(path) -> bytes:
    with RunReader(path) as r:
        assert r.status == "completed"
        return np.asarray(r.last_checkpoint()["params"]).tobytes()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Final parameters of uninterrupted runs, by budget (the same seed as every run here)."""
    cache = {}

    def of(budget, *extra):
        key = (budget, *extra)
        if key not in cache:
            path = tmp_path_factory.mktemp("straight") / "run.h5"
            assert main(_argv(path, budget, *extra)) == 0
            cache[key] = _final_params(path)
        return cache[key]
    return of


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".creating-" in p.name)


# --------------------------------------------------------------------------- creation
# a `labpgt train` child that dies (os._exit: as SIGKILL, no clean-up) at the N-th Python call made
# inside RunFile.create, between the link that publishes the file and the removal of its temporary
# name ("linked"), or right after create returned ("after": before the step-0 checkpoint)
_KILLED_CHILD = r"""
import os, sys
from labpgt.runfile import writer
from labpgt.cli import main

at, argv = sys.argv[1], sys.argv[2:]
real = writer.RunFile.create.__func__
calls = [0]

def profile(frame, event, arg):
    if event in ("call", "c_call"):
        calls[0] += 1
        if at.isdigit() and calls[0] == int(at):
            os._exit(9)

def create(cls, *args, **kwargs):
    if at == "linked":
        os.unlink = lambda *a, **k: os._exit(9)
    sys.setprofile(profile)
    try:
        run = real(cls, *args, **kwargs)
    finally:
        sys.setprofile(None)
    if at == "after":
        os._exit(9)
    return run

writer.RunFile.create = classmethod(create)
sys.exit(main(argv))
"""


def _child(at, argv):
    return subprocess.run([sys.executable, "-c", _KILLED_CHILD, str(at), *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _calls_in_creation(monkeypatch, argv) -> int:
    """Python calls made inside RunFile.create by an uninterrupted run (this process)."""
    import labpgt.runfile.writer as writer

    real = writer.RunFile.create.__func__
    calls = [0]

    def profile(frame, event, arg):
        if event in ("call", "c_call"):
            calls[0] += 1

    def create(cls, *args, **kwargs):
        sys.setprofile(profile)
        try:
            return real(cls, *args, **kwargs)
        finally:
            sys.setprofile(None)

    with monkeypatch.context() as m:
        m.setattr(writer.RunFile, "create", classmethod(create))
        assert main(argv) == 0
    return calls[0]


def test_a_kill_at_any_moment_of_creation_leaves_no_file_or_a_resumable_one(tmp_path, monkeypatch, capsys,
                                                                              straight):
    total = _calls_in_creation(monkeypatch, _argv(tmp_path / "count.h5"))
    assert total > 1000  # long enough for the points below to be distinct moments
    outcomes = {}
    for at in [1, total // 2, "linked", "after"]:
        folder = tmp_path / f"at-{at}"
        folder.mkdir()
        path = folder / "run.h5"
        killed = _child(at, _argv(path))
        assert killed.returncode == 9, (at, killed.stderr)
        if not path.exists():  # killed while the file was being built: nothing under the run's name
            outcomes[at] = "no file"
            assert main(_argv(path)) == 0  # the same command again just works (no advice loop)
        else:  # a whole file, no checkpoint yet: --resume starts it over
            outcomes[at] = "resumable"
            with RunReader(path) as r:
                assert r.status == "running" and r.n_checkpoints == 0
            capsys.readouterr()
            assert main(_argv(path)) == 2  # a new run does not write over it; it names --resume
            assert f"continue it with: labpgt train --resume {path}" in capsys.readouterr().err
            assert main(["train", "--resume", str(path), "--no-progress"]) == 0
        assert _partials(folder) == []  # what a killed creation left behind is gone
        assert _final_params(path) == straight(128), at
    assert outcomes == {1: "no file", total // 2: "no file", "linked": "resumable", "after": "resumable"}


@pytest.mark.parametrize("stage", ["lay_out", "annotate", "status", "publish"])
def test_ctrl_c_during_creation_leaves_nothing_and_the_command_runs_again(tmp_path, monkeypatch, stage, straight):
    import labpgt.runfile.creation as creation
    import labpgt.runfile.writer as writer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    real_status = writer.RunFile.set_status

    def status(self, status, message=""):
        if message == "created":
            raise KeyboardInterrupt
        return real_status(self, status, message)

    path = tmp_path / "run.h5"
    with monkeypatch.context() as m:
        if stage == "status":
            m.setattr(writer.RunFile, "set_status", status)
        else:
            m.setattr(creation if stage == "annotate" else writer, stage, interrupted)
        assert main(_argv(path)) == 130
    assert not path.exists() and _partials(tmp_path) == []
    assert main(_argv(path)) == 0
    assert _final_params(path) == straight(128)


def test_what_is_already_at_out_is_named_and_never_advised_in_a_loop(tmp_path, capsys):
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # what a killed creation used to leave
    assert main(_argv(damaged)) == 2
    err = capsys.readouterr().err
    assert "is no run file that can be continued" in err and "--resume" not in err
    assert damaged.read_bytes() == b"\x89HDF\r\n\x1a\n" + b"\0" * 100  # untouched
    done = tmp_path / "done.h5"
    assert main(_argv(done, 64)) == 0
    capsys.readouterr()
    assert main(_argv(done, 64)) == 2
    err = capsys.readouterr().err
    assert "holds a completed run" in err and "--resume" not in err


# --------------------------------------------------------------------------- out of room
def _limited(limit):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


_NO_FORESIGHT = r"""
import sys
from labpgt.runfile import storage
storage.Room.check = lambda self, *args, **kwargs: None  # the write itself meets the limit
from labpgt.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("foresight", [True, False], ids=["refused-before-writing", "write-failed"])
def test_a_file_size_limit_stops_the_run_cleanly_and_it_resumes_bit_for_bit(tmp_path, foresight, straight):
    path = tmp_path / "run.h5"
    limit = 2_500_000  # a new file is ~1.5 MB; 1536 measurements need ~2.6 MB more
    code = ["-m", "labpgt.cli"] if foresight else ["-c", _NO_FORESIGHT]
    proc = subprocess.run([sys.executable, *code, *_argv(path, 1536)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=_limited(limit))
    assert proc.returncode == 2, proc.stderr  # an error, not a crash (SIGSEGV/SIGBUS: negative or 139)
    assert f"the file size limit was reached (ulimit -f)" in proc.stderr
    assert f"continue with: labpgt train --resume {path}" in proc.stderr
    assert "the rig was left safe (read back:" in proc.stderr
    assert "Traceback" not in proc.stderr
    size = path.stat().st_size
    assert size <= limit
    sb = _superblock(path)
    assert sb["eof"] == size  # HDF5's end of file is the file's: no command calls it truncated
    with RunReader(path) as r:
        assert r.status == "failed" and "file size limit" in r.status_message
        assert 0 < r.n_measurements < 1536
    assert "PROBLEM" not in inspect(path)
    assert main(["train", "--resume", str(path), "--no-progress"]) == 0  # the limit is gone: it continues
    assert _final_params(path) == straight(1536)
    assert main(["replay", str(path)]) == 0


def test_the_room_a_write_needs_counts_every_chunk_it_begins(tmp_path):
    with RunFile.create(tmp_path / "r.h5", n_params=3, features_per_measurement=2, trace_points=5) as run:
        room = run._room
        trace_chunk = 64 * 5 * 4
        # rows 0..63 begin one chunk of every measurement column; rows 64..127 begin only a trace chunk
        first = room.need("measurements", 0, 64)
        assert room.need("measurements", 64, 64) == trace_chunk
        assert room.need("measurements", 1, 63) == 0
        assert first > trace_chunk
        assert room.need("measurements", 0, 65) == first + trace_chunk


# --------------------------------------------------------------------------- checkpoint checksums

def _flip(path, column, row, index=0, bit=0):
    """Flip one bit of a stored checkpoint value, as a bad disk or a bad copy would."""
    with h5py.File(path, "r+") as f:
        ds = f["checkpoints"][column]
        values = ds[row]
        raw = bytearray(np.ascontiguousarray(values).tobytes())
        raw[index] ^= 1 << bit
        ds[row] = np.frombuffer(bytes(raw), dtype=ds.dtype).reshape(np.shape(values))


def test_a_corrupt_last_checkpoint_is_reported_and_the_previous_one_used(tmp_path, monkeypatch, capsys, straight,
                                                                         ctrl_c_at_checkpoint):
    path = tmp_path / "run.h5"
    argv = _argv(path, 256, "--checkpoint-every", "1")
    with monkeypatch.context() as m:
        ctrl_c_at_checkpoint(m, at_call=4)  # checkpoints at steps 0, 1, 2, then interrupted
        assert main(argv) == 130
    with RunReader(path) as r:
        assert r.n_checkpoints == 3
        assert [v for v, _ in checkpoints.verdicts(r)] == ["ok", "ok", "ok"]
        step_of = [r.checkpoint(i)["step"] for i in range(3)]
    _flip(path, "params", 2, index=5, bit=3)
    text = inspect(path)
    assert "PROBLEM: checkpoint 2 is corrupt (its contents do not match its checksum)" in text
    assert main(["inspect", str(path)]) == 1
    capsys.readouterr()
    assert main(["train", "--resume", str(path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint 2 is corrupt" in err
    assert f"continuing from checkpoint 1 (step {step_of[1]})" in err
    with RunReader(path) as r:
        resumes = r.resumes()
        assert resumes["checkpoint"].tolist() == [1]
        assert int(resumes["measurements_start"][0]) == int(r._f["checkpoints/measurement_rows"][1])
    assert _final_params(path) == straight(256, "--checkpoint-every", "1")
    assert main(["replay", str(path)]) == 0
    # the corrupt row stays in the file, among the rows the resume abandoned: said, no longer a problem
    text = inspect(path)
    assert "checkpoint 2 is corrupt (its contents do not match its checksum); resume 0 passed it over" in text
    assert "PROBLEM" not in text


@pytest.mark.parametrize("column", ["optimizer/0.m", "rng_state_utf8", "step", "measurement_rows"])
def test_any_changed_byte_of_a_checkpoint_makes_it_corrupt(tmp_path, monkeypatch, column, ctrl_c_at_checkpoint):
    path = tmp_path / "run.h5"
    with monkeypatch.context() as m:
        ctrl_c_at_checkpoint(m, at_call=3)
        assert main(_argv(path, 256, "--checkpoint-every", "1")) == 130
    if column == "rng_state_utf8":  # text: a byte inside the last row's JSON
        with h5py.File(path, "r") as f:
            offset = int(f["checkpoints/rng_state_offset"][1])
        with h5py.File(path, "r+") as f:
            ds = f["checkpoints/rng_state_utf8"]
            ds[offset + 10] = ds[offset + 10] ^ 1
    else:
        _flip(path, column, 1, bit=1)
    with RunReader(path) as r:
        assert [v for v, _ in checkpoints.verdicts(r)] == ["ok", "corrupt"]
        assert checkpoints.verdicts(r, block_bytes=1) == checkpoints.verdicts(r)  # row blocks: the same
        assert [checkpoints.verdict(r, i)[0] for i in range(2)] == ["ok", "corrupt"]
        index, state, passed = checkpoints.last_valid(r)
        assert index == 0 and state["step"] == 0 and [i for i, _ in passed] == [1]


def test_checkpoints_written_before_checksums_are_accepted_as_unverified(tmp_path):
    with RunReader(OLD_FILE) as r:
        verdicts = checkpoints.verdicts(r)
        assert verdicts and {v for v, _ in verdicts} == {"unverified"}
        index, state, passed = checkpoints.last_valid(r)
        assert index == r.n_checkpoints - 1 and passed == []
        assert state["params"].tobytes() == r.last_checkpoint()["params"].tobytes()
    assert "unverified (written before checksums)" in inspect(OLD_FILE)
