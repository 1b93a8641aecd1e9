"""Run file: round trip, SWMR reading from another process, kill -9, damaged files, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from labpgt.runfile import BLOCK_ROWS, FORMAT_VERSION, RunFile, RunFileError, RunReader, clear_write_flags, inspect
from labpgt.runfile.superblock import _lookup3

ROOT = Path(__file__).resolve().parents[1]
P, F, NP = 21, 3, 5  # trace points, features per measurement, parameters

METADATA = {
    "station_toml": '# lab\n[signal_generator]\ndriver = "drivers.keysight:MXG"\nresource = "TCPIP::1::INSTR"\n',
    "experiment_toml": "[train]\nsteps = 3\nlr = 0.01 # é\n",
    "identities": {"signal_generator": "Keysight,N5183B,MY123,1.0", "spectrum_analyzer": "R&S,FSV,1,2"},
    "package_version": "0.1.0",
    "command_line": "labpgt train exp.toml --out run.h5",
    "seed": 1234,
    "operator": "ada",
}


def row(i, step=0, kind="train"):
    """A deterministic measurement record whose every field depends on i."""
    return {
        "time_s": 1.7e9 + 0.25 * i, "step": step, "kind": kind, "sample_index": 1000 + i, "node": i % 3,
        "perturbation_direction": (i % 4) - 1, "perturbation_sign": (i % 3) - 1,
        "settings": {"frequency_hz": 2.06e9 + 1234.5 * i, "power_dbm": -20.0 + 0.01 * i, "current_a": 1.8 + 1e-4 * i},
        "trace_dbm": (np.arange(P, dtype=np.float32) - 90.0 + np.float32(0.5) * i),
        "frequency_axis": (2.05e9 + i, 2.08e9 + i, P),
        "features": np.array([i, -i, np.pi * i], dtype=np.float64),
        "flags": [0, 1, 16, 1 | 4 | 16][i % 4],
    }


def step_rec(s, n):
    return {"step": s, "loss": 1.0 / (s + 1), "accuracy": 0.1 * s, "grad_norm": 2.0 + s, "measurements": n,
            "time_s": 1.7e9 + s, "current_a": 1.8 + 0.001 * s}


def create(path, **kw):
    return RunFile.create(path, n_params=NP, param_names=[f"w{i}" for i in range(NP)], features_per_measurement=F,
                          trace_points=P, optimizer_state_shapes={"m": (NP,), "v": (NP,), "t": ()},
                          metadata=METADATA, **kw)


def assert_rows(m, idx):
    """The measurement rows m (dict of arrays) are exactly row(i) for i in idx."""
    for j, i in enumerate(idx):
        r = row(i)
        assert m["time_s"][j] == r["time_s"]
        assert m["sample_index"][j] == r["sample_index"] and m["node"][j] == r["node"]
        assert m["perturbation_direction"][j] == r["perturbation_direction"]
        assert m["perturbation_sign"][j] == r["perturbation_sign"]
        for k in ("frequency_hz", "power_dbm", "current_a"):
            assert m[k][j] == r["settings"][k], k
        assert m["trace_start_hz"][j] == r["frequency_axis"][0] and m["trace_stop_hz"][j] == r["frequency_axis"][1]
        assert m["trace_dbm"][j].tobytes() == r["trace_dbm"].tobytes()
        assert m["features"][j].tobytes() == r["features"].tobytes()
        assert m["flags"][j] == r["flags"]


def test_round_trip_every_field_with_units(tmp_path):
    path = tmp_path / "run.h5"
    n = 2 * BLOCK_ROWS + 7  # full blocks and a partial one
    with create(path) as rf:
        for i in range(n):
            rf.measurement(row(i, step=0))
        rf.step(step_rec(0, n))
        kinds = np.array(["train", "probe", "eval", "train", "eval"])
        batch = [row(n + j) for j in range(5)]
        rf.measurements_batch({
            "time_s": np.array([b["time_s"] for b in batch]), "step": 1, "kind": kinds,
            "sample_index": np.array([b["sample_index"] for b in batch]),
            "node": np.array([b["node"] for b in batch]),
            "perturbation_direction": np.array([b["perturbation_direction"] for b in batch]),
            "perturbation_sign": np.array([b["perturbation_sign"] for b in batch]),
            "settings": {k: np.array([b["settings"][k] for b in batch]) for k in ("frequency_hz", "power_dbm", "current_a")},
            "trace_dbm": np.stack([b["trace_dbm"] for b in batch]),
            "frequency_axis": batch[0]["frequency_axis"],
            "trace_start_hz": np.array([b["frequency_axis"][0] for b in batch]),
            "trace_stop_hz": np.array([b["frequency_axis"][1] for b in batch]),
            "features": np.stack([b["features"] for b in batch]),
            "flags": np.array([b["flags"] for b in batch]),
        })
        rf.step(step_rec(1, n + 5))
        rf.evaluation({"step": 1, "measurements": n + 5, "test_loss": 0.25, "test_accuracy": 0.875, "time_s": 1.8e9})
        rng = np.random.default_rng(7)
        state = json.dumps(rng.bit_generator.state)
        params = np.array([0.1, -2.5, 1e-300, np.nextafter(1.0, 2.0), 3.0])
        rf.checkpoint({"step": 2, "measurements": n + 5, "params": params,
                       "optimizer": {"m": params * 2, "v": params ** 2, "t": np.float64(2.0)},
                       "rng_state": state, "extra": json.dumps({"lr": 0.01, "note": "ünï"})})
        rf.set_status("completed", "done in 2 steps")

    with RunReader(path) as r:
        assert r.format_version == FORMAT_VERSION
        assert r.metadata == METADATA
        assert r.param_names == [f"w{i}" for i in range(NP)]
        assert r.status == "completed" and r.status_message == "done in 2 steps"
        assert [h["status"] for h in r.status_history()] == ["running", "completed"]
        assert r.n_measurements == n + 5 == len(r.measurements)
        m = r.measurements[:n]
        assert list(m["kind"]) == ["train"] * n
        assert (m["step"] == 0).all()
        assert_rows(m, range(n))
        tail = r.measurements[n:]
        assert list(tail["kind"]) == list(kinds) and (tail["step"] == 1).all()
        assert_rows(tail, range(n, n + 5))
        one = r.measurements[-1]
        assert one["sample_index"] == 1000 + n + 4 and one["kind"] == "eval"
        assert r.measurements.column("features", slice(3, 4))[0].tobytes() == row(3)["features"].tobytes()

        st = r.steps()
        assert list(st["step"]) == [0, 1] and list(st["measurements"]) == [n, n + 5]
        assert st["loss"][1] == 0.5 and st["accuracy"][1] == 0.1 and st["grad_norm"][1] == 3.0
        assert st["current_a"][1] == 1.801 and st["time_s"][1] == 1.7e9 + 1
        ev = r.evaluations()
        assert list(ev["test_accuracy"]) == [0.875] and list(ev["test_loss"]) == [0.25]
        ck = r.last_checkpoint()
        assert ck["step"] == 2 and ck["measurements"] == n + 5
        assert ck["params"].dtype == np.float64 and ck["params"].tobytes() == params.tobytes()
        assert ck["optimizer"]["v"].tobytes() == (params ** 2).tobytes() and ck["optimizer"]["t"] == 2.0
        restored = np.random.default_rng()
        restored.bit_generator.state = json.loads(ck["rng_state"])
        assert restored.random() == np.random.default_rng(7).random()
        assert json.loads(ck["extra"]) == {"lr": 0.01, "note": "ünï"}

        units = r.units()
        assert units["measurements/frequency_hz"] == "Hz"
        assert units["measurements/power_dbm"] == "dBm"
        assert units["measurements/trace_dbm"] == "dBm"
        assert units["measurements/current_a"] == "A" and units["steps/current_a"] == "A"
        assert units["measurements/time_s"] == "s" and units["checkpoints/time_s"] == "s"
        assert units["measurements/trace_start_hz"] == "Hz"

    # plain h5py sees the same layout: every dataset has units; kind is an HDF5 enum
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "labpgt-run" and f.attrs["format_version"] == 1
        missing = []
        f.visititems(lambda name, o: missing.append(name) if isinstance(o, h5py.Dataset)
                     and not name.startswith("meta/") and "units" not in o.attrs else None)
        assert missing == []
        assert h5py.check_enum_dtype(f["measurements/kind"].dtype) == {"train": 0, "probe": 1, "eval": 2}
        assert f["meta/station_toml"][()].decode() == METADATA["station_toml"]
        assert f["measurements/trace_dbm"].chunks == (BLOCK_ROWS, P)


def test_rejects_wrong_shapes_and_kinds(tmp_path):
    with create(tmp_path / "r.h5") as rf:
        bad = row(0)
        bad["trace_dbm"] = np.zeros(P + 1, np.float32)
        with pytest.raises(ValueError, match=r"trace_dbm has shape \(22,\).*\(21,\)"):
            rf.measurement(bad)
        with pytest.raises(ValueError, match="kind 'test'"):
            rf.measurement(row(0, kind="test"))
        with pytest.raises(ValueError, match="params have shape"):
            rf.checkpoint({"step": 0, "measurements": 0, "params": np.zeros(NP + 1), "optimizer": {}})
        with pytest.raises(ValueError, match="status 'done'"):
            rf.set_status("done")


def test_context_manager_marks_failed_and_close_is_idempotent(tmp_path):
    path = tmp_path / "r.h5"
    with pytest.raises(RuntimeError):
        with create(path) as rf:
            rf.measurement(row(0))
            raise RuntimeError("instrument on fire")
    rf.close()
    with RunReader(path) as r:
        assert r.status == "failed"
        assert "RuntimeError: instrument on fire" in r.status_message
        assert r.n_measurements == 1  # close() flushed the buffered row
    with pytest.raises(KeyboardInterrupt):
        with create(tmp_path / "k.h5"):
            raise KeyboardInterrupt
    with RunReader(tmp_path / "k.h5") as r:
        assert r.status == "aborted"


READER_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from labpgt.runfile import RunReader
    r = RunReader(sys.argv[1])
    print("ready", r.n_measurements, flush=True)
    seen = [r.n_measurements]
    deadline = time.time() + 20
    while time.time() < deadline:
        r.refresh()
        if r.n_measurements != seen[-1]:
            seen.append(r.n_measurements)
            idx = r.measurements.column("sample_index")  # every committed row is complete
            assert (idx == 1000 + __import__("numpy").arange(len(idx))).all(), idx
            print("seen", r.n_measurements, flush=True)  # the writer waits for this before going on
        if r.status == "completed":
            break
        time.sleep(0.005)
    print(json.dumps({"seen": seen, "status": r.status, "steps": len(r.steps()["step"])}), flush=True)
""")


def test_swmr_reader_in_another_process_sees_the_file_grow(tmp_path):
    path = tmp_path / "live.h5"
    rf = create(path)
    for i in range(10):
        rf.measurement(row(i))
    rf.step(step_rec(0, 10))
    reader = subprocess.Popen([sys.executable, "-c", READER_SCRIPT, str(path)], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert reader.stdout.readline().split() == ["ready", "10"]
        n = 10
        for s in range(1, 6):
            for _ in range(30):
                rf.measurement(row(n))
                n += 1
            rf.step(step_rec(s, n))
            # handshake, not a sleep: the writer goes on once the reader has seen this step's rows
            assert reader.stdout.readline().split() == ["seen", str(n)]
        rf.set_status("completed")
        rf.close()
        out, _ = reader.communicate(timeout=25)
    finally:
        reader.kill()
    assert reader.returncode == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "completed" and result["steps"] == 6
    assert result["seen"][0] == 10 and result["seen"][-1] == 160
    assert result["seen"] == [10, 40, 70, 100, 130, 160]  # every intermediate size, each step's rows whole
    assert result["seen"] == sorted(result["seen"])


WRITER_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from tests.test_runfile import create, row, step_rec
    rf = create(sys.argv[1])
    n = 0
    for s in range(6):
        for _ in range(50):
            rf.measurement(row(n, step=s)); n += 1
        rf.step(step_rec(s, n))
        if s == 2:
            rf.checkpoint({"step": 3, "measurements": n, "params": [0.5] * 5,
                           "optimizer": {"m": [0.0] * 5, "v": [0.0] * 5, "t": 3.0}, "rng_state": "{}", "extra": "{}"})
        print("step", s, n, flush=True)
    for _ in range(150):  # the step in progress: two blocks written, not flushed, 22 buffered
        rf.measurement(row(n, step=6)); n += 1
    print("inflight", flush=True)
    time.sleep(60)
""")


def killed_run(tmp_path):
    path = tmp_path / "killed.h5"
    w = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(path), str(ROOT)], stdout=subprocess.PIPE,
                         text=True, cwd=ROOT)
    try:
        lines = []
        for line in w.stdout:
            lines.append(line.split())
            if line.startswith("inflight"):
                break
        os.kill(w.pid, signal.SIGKILL)
        w.wait(timeout=10)
    finally:
        if w.poll() is None:
            w.kill()
    assert lines[-2] == ["step", "5", "300"], lines
    return path


def test_kill_9_keeps_every_measurement_up_to_the_last_step(tmp_path):
    path = killed_run(tmp_path)
    # plain h5py, no labpgt code: SWMR read opens a file whose writer died
    with h5py.File(path, "r", swmr=True) as f:
        committed = f["committed"][:]
        assert list(committed[:2]) == [300, 6]
        m = {k: f["measurements"][k][:300] for k in f["measurements"]}
        assert f["measurements/trace_dbm"].shape[0] >= 300
    assert_rows(m, range(300))
    assert list(m["step"]) == [i // 50 for i in range(300)]
    # the writer's "open for writing" mark refuses a plain open until cleared (h5clear -s)
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")
    assert clear_write_flags(path) is True
    with h5py.File(path, "r") as f:
        assert f["steps/measurements"][:6].tolist() == [50, 100, 150, 200, 250, 300]
    with RunReader(path) as r:
        assert r.status == "running" and r.n_measurements == 300
        assert_rows(r.measurements[:], range(300))


def test_resume_after_kill_drops_in_flight_rows_and_appends(tmp_path):
    path = killed_run(tmp_path)
    with RunFile.open_append(path, message="resumed by test") as rf:
        assert rf.n_measurements == 300
        for i in range(300, 320):
            rf.measurement(row(i, step=6))
        rf.step(step_rec(6, 320))
        rf.set_status("completed")
    with h5py.File(path, "r") as f:  # cleanly closed again: plain open works
        assert f["measurements/time_s"].shape == (320,)
    with RunReader(path) as r:
        assert r.n_measurements == 320 and r.status == "completed"
        assert_rows(r.measurements[:], range(320))
        assert [h["status"] for h in r.status_history()] == ["running", "running", "completed"]
        assert r.status_history()[1]["message"] == "resumed by test"
        assert list(r.steps()["step"]) == list(range(7))
        # the resumed trainer continued from the checkpoint after step 2 (150 measurements):
        # what was recorded after it and before the resume is abandoned
        res = r.resumes()
        assert list(res["checkpoint"]) == [0]
        assert (res["measurements_start"][0], res["measurements_stop"][0]) == (150, 300)
        assert (res["steps_start"][0], res["steps_stop"][0]) == (3, 6)
        assert list(r.effective_rows("measurements")) == list(range(150)) + list(range(300, 320))
        assert list(r.effective_rows("steps")) == [0, 1, 2, 6]


def test_open_append_on_completed_run_refuses_and_changes_nothing(tmp_path):
    path = tmp_path / "done.h5"
    with create(path) as rf:
        rf.measurement(row(0))
        rf.step(step_rec(0, 1))
        rf.set_status("completed")
    before = path.read_bytes()
    with pytest.raises(RunFileError, match="the run is complete"):
        RunFile.open_append(path)
    assert path.read_bytes() == before


def test_open_append_on_aborted_run_continues(tmp_path):
    path = tmp_path / "a.h5"
    with create(path) as rf:
        rf.measurement(row(0))
        rf.set_status("aborted", "Ctrl-C")
    with RunFile.open_append(path) as rf:
        rf.measurement(row(1))
        rf.set_status("completed")
    with RunReader(path) as r:
        assert r.n_measurements == 2 and r.status == "completed"


def test_create_refuses_to_overwrite(tmp_path):
    path = tmp_path / "x.h5"
    create(path).close()
    with pytest.raises(FileExistsError):
        create(path)


def test_not_hdf5_not_ours_truncated_newer(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("just some text\n")
    with pytest.raises(RunFileError, match="not an HDF5 file"):
        RunReader(text)

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(RunFileError, match="not a labpgt run file"):
        RunReader(other)

    good = tmp_path / "good.h5"
    with create(good) as rf:
        for i in range(200):
            rf.measurement(row(i))
        rf.step(step_rec(0, 200))
        rf.set_status("completed")
    trunc = tmp_path / "trunc.h5"
    data = good.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunFileError, match="truncated"):
        RunReader(trunc)
    report = inspect(trunc)
    assert "truncated" in report and "missing" in report
    assert "format_version" in report  # root attributes are still readable

    newer = tmp_path / "newer.h5"
    with create(newer) as rf:
        rf.set_status("completed")
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(RunFileError, match=r"format_version 2; this labpgt reads versions up to 1"):
        RunReader(newer)

    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(data[:8] + b"\xff" * 4000)
    with pytest.raises(RunFileError):
        RunReader(garbage)
    assert "PROBLEM" in inspect(garbage)


def test_inspect_of_a_good_file(tmp_path):
    path = tmp_path / "r.h5"
    with create(path) as rf:
        for i in range(5):
            rf.measurement(row(i))
        rf.step(step_rec(0, 5))
        rf.evaluation({"step": 0, "measurements": 5, "test_loss": 1.0, "test_accuracy": 0.75, "time_s": 1.0})
        rf.set_status("completed")
    out = inspect(path)
    assert "status: completed" in out
    assert "measurements: 5   steps: 1   evaluations: 1   checkpoints: 0" in out
    assert "/measurements/trace_dbm (5, 21) float32 [dBm]" in out
    assert "Keysight,N5183B,MY123,1.0" in out
    assert "last test accuracy: 0.7500" in out


def test_lookup3_matches_hdf5_superblock_checksum(tmp_path):
    path = tmp_path / "r.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f["x"] = 1
    head = path.read_bytes()[:48]
    assert int.from_bytes(head[44:48], "little") == _lookup3(head[:44])
    assert _lookup3(b"") == 0xDEADBEEF
