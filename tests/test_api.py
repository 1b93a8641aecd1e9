"""The Python API (labpgt.open_run, open_station, train, resume, export_run) and run files that
other tools read: named dimensions for xarray, effective rows only, the notebook example."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

import labpgt
from labpgt.cli import main
from labpgt.experiment.options import ConfigError
from labpgt.runfile import RunFile, RunReader, inspect

xr = pytest.importorskip("xarray")
pd = pytest.importorskip("pandas")
pytest.importorskip("h5netcdf")

ROOT = Path(__file__).resolve().parents[1]
#: a small run: 10 steps of the node estimator on Iris (64 measurements a step), evaluated (30
#: measurements) and checkpointed every 3 steps and at the end
SMALL = {"budget": 640, "seed": 2, "eval_every": 3, "checkpoint_every": 3, "estimator": "node"}
SCALARS = ("step", "kind", "sample_index", "node", "perturbation_direction", "perturbation_sign", "frequency_hz",
           "power_dbm", "current_a", "trace_start_hz", "trace_stop_hz", "flags")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "run.h5"
    records = []
    outcome = labpgt.train(SMALL, out=str(out), progress=records.append)
    assert outcome.status == "completed" and outcome.run_path == out
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, outcome.steps + 1))
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6, 9, 10]
    return out


# --------------------------------------------------------------------------- named dimensions
def test_xarray_opens_every_group_with_named_dimensions_and_coordinates(small_run):
    m = xr.open_dataset(small_run, engine="h5netcdf", group="measurements")
    assert dict(m.sizes) == {"measurement": 760, "trace_point": 401, "feature": 10}
    assert m.trace_dbm.dims == ("measurement", "trace_point") and m.features.dims == ("measurement", "feature")
    # the analyzer's window is the traces' coordinate, and agrees with every row's start and stop
    freqs = m.trace_frequency_hz.values
    assert "trace_frequency_hz" in m.coords and m.trace_frequency_hz.attrs["units"] == "Hz"
    assert freqs[0] == m.trace_start_hz.values[0] and freqs[-1] == m.trace_stop_hz.values[0]
    # and each feature's band: ten bands tiling the window
    low, high = m.feature_low_hz.values, m.feature_high_hz.values
    assert low[0] == freqs[0] and high[-1] == freqs[-1] and np.all(low[1:] > high[:-1])
    assert m.frequency_hz.attrs["units"] == "Hz" and m.frequency_hz.attrs["long_name"]
    assert m.kind.attrs["flag_meanings"] == "train probe eval" and list(m.kind.attrs["flag_values"]) == [0, 1, 2]
    assert m.flags.attrs["flag_meanings"].split() == ["overload", "unlocked", "repeated", "fault", "simulated"]
    assert list(m.flags.attrs["flag_masks"]) == [1, 2, 4, 8, 16]
    steps = xr.open_dataset(small_run, engine="h5netcdf", group="steps")
    assert list(steps.coords) == ["step"] and list(steps.step.values) == list(range(1, 11))
    groups = ("measurements", "steps", "evaluations", "checkpoints", "checkpoints/optimizer", "status", "resumes",
              "faults", "probe", "dataset", None)
    for group in groups:
        ds = xr.open_dataset(small_run, engine="h5netcdf", group=group)
        assert not [d for d in ds.sizes if str(d).startswith("phony_dim")], (group, dict(ds.sizes))
    probe = xr.open_dataset(small_run, engine="h5netcdf", group="probe")
    assert list(probe.coords) == ["frequency_hz"] and probe.trace_dbm.dims == ("frequency_hz",)
    assert probe.attrs["NX_class"] == "NXdata" and probe.attrs["signal"] == "trace_dbm"
    assert probe.attrs["axes"] == "frequency_hz"
    with RunReader(small_run) as r:
        assert r.format_version == 1


# --------------------------------------------------------------------------- the views
def test_views_hold_the_run_with_units(small_run):
    with labpgt.open_run(small_run) as run:
        assert run.status == "completed" and run.experiment["budget"] == 640 and run.probe.swept
        assert run.abandoned() == {"measurements": 0, "steps": 0, "evaluations": 0}
        m = run.to_xarray()
        assert list(m.measurement.values) == list(range(760))
        assert set(np.unique(m.kind.values)) == {"train", "eval"}
        assert m.trace_dbm.sel(measurement=5).values.tobytes() == run.measurements["trace_dbm"][5].tobytes()
        evals = run.to_xarray("evaluations")
        assert list(evals.step.values) == [3, 6, 9, 10] and evals.test_accuracy.attrs["units"] == "1"
        ck = run.to_xarray("checkpoints")
        assert ck.params.dims == ("checkpoint", "param") and len(ck.param_name) == ck.sizes["param"]
        df = run.to_dataframe("measurements")
        assert len(df) == 760 and df.attrs["units"]["frequency_hz"] == "Hz"
        assert list(df["kind"].cat.categories) == ["train", "probe", "eval"]
        assert run.to_dataframe("steps")["loss"].tolist() == list(run.steps["loss"])


def test_experiment_config_from_a_dict_toml_text_or_file(tmp_path):
    toml = tmp_path / "exp.toml"
    toml.write_text('budget = 320\nestimator = "twin"\n')
    assert labpgt.experiment_config(toml)["estimator"] == "twin"
    assert labpgt.experiment_config('budget = 320\nseed = 4\n')["seed"] == 4
    assert labpgt.experiment_config({"budget": 320}, seed=5)["seed"] == 5
    with pytest.raises(ConfigError, match="unknown option.*'epochs'"):
        labpgt.experiment_config({"epochs": 3})
    with pytest.raises(ConfigError, match="'budget' must be int"):
        labpgt.experiment_config(budget="many")


# --------------------------------------------------------------------------- export
def test_export_round_trips_the_effective_rows(small_run, tmp_path):
    nc, csv = tmp_path / "run.nc", tmp_path / "csv"
    assert main(["export", str(small_run), "--out", str(nc)]) == 0
    assert main(["export", str(small_run), "--format", "csv", "--out", str(csv)]) == 0
    with labpgt.open_run(small_run) as run:
        for table in ("measurements", "steps", "evaluations", "checkpoints", "probe"):
            exported = xr.open_dataset(nc, engine="h5netcdf", group=table)
            xr.testing.assert_equal(exported.load(), run.to_xarray(table))
        m = run.measurements
        frame = pd.read_csv(csv / "measurements.csv", index_col="row")
        assert list(frame.index) == list(m["row"])
        for name in SCALARS:
            assert np.array_equal(frame[name].to_numpy(), m[name]), name
        assert frame[[f"feature_{j}" for j in range(10)]].to_numpy().tobytes() == m["features"].tobytes()
        traces = pd.read_csv(csv / "traces.csv", index_col="row")
        assert traces.to_numpy().astype(np.float32).tobytes() == m["trace_dbm"].tobytes()
        assert np.array_equal(traces.columns.astype(float), run.trace_frequency_hz())
        assert pd.read_csv(csv / "steps.csv")["loss"].tolist() == list(run.steps["loss"])
    assert main(["export", str(small_run), "--out", str(nc)]) == 2  # never overwrites


# --------------------------------------------------------------------------- abandoned rows
KILLED_AT_STEP_5 = textwrap.dedent("""
    import os, signal, sys
    import labpgt

    def progress(record):  # step 5 is committed (a flush point), the last checkpoint is step 3's
        if record["kind"] == "step" and record["step"] == 5:
            os.kill(os.getpid(), signal.SIGKILL)

    labpgt.train({budget!r}, out=sys.argv[1], progress=progress)
""")


def test_views_and_export_leave_out_the_rows_a_resume_abandoned(tmp_path):
    straight, killed = tmp_path / "straight.h5", tmp_path / "killed.h5"
    labpgt.train(SMALL, out=str(straight))
    proc = subprocess.run([sys.executable, "-c", KILLED_AT_STEP_5.format(budget=SMALL), str(killed)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -9, proc.stderr

    # the killed run's file opens with the API (committed rows), and inspect says how to open it
    with pytest.raises(OSError):
        h5py.File(killed, "r")
    text = inspect(killed)
    assert "labpgt.open_run(" in text and "swmr=True" in text and "--resume" in text
    with labpgt.open_run(killed) as run:
        assert run.status == "running" and list(run.steps["step"]) == [1, 2, 3, 4, 5]

    outcome = labpgt.resume(killed)
    assert outcome.status == "completed"
    with labpgt.open_run(killed) as resumed, labpgt.open_run(straight) as reference:
        abandoned = resumed.abandoned()
        assert abandoned["steps"] == 2 and abandoned["measurements"] == 2 * 64 and abandoned["evaluations"] == 0
        with RunReader(killed) as r:  # the file keeps them: steps 4 and 5 twice
            assert list(r.steps()["step"]) == [1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10]
        # the views: the uninterrupted run's rows, bit for bit
        assert list(resumed.steps["step"]) == list(range(1, 11))
        got, want = resumed.measurements, reference.measurements
        for name in (*SCALARS, "trace_dbm", "features"):
            assert got[name].tobytes() == want[name].tobytes(), name
        r = resumed.resumes
        gone = np.arange(r["measurements_start"][0], r["measurements_stop"][0])
        assert not np.isin(gone, resumed.rows()).any()
        xr.testing.assert_equal(resumed.to_xarray("steps").drop_vars("time_s"),
                                reference.to_xarray("steps").drop_vars("time_s"))
        # export: the same effective rows, for tools that cannot apply the rules
        labpgt.export_run(killed, tmp_path / "resumed.nc")
        exported = xr.open_dataset(tmp_path / "resumed.nc", engine="h5netcdf", group="measurements").load()
        assert not np.isin(gone, exported.measurement.values).any()
        assert exported.trace_dbm.values.tobytes() == want["trace_dbm"].tobytes()
        labpgt.export_run(killed, tmp_path / "csv", "csv")
        assert pd.read_csv(tmp_path / "csv" / "steps.csv")["step"].tolist() == list(range(1, 11))


def test_rows_beyond_committed_are_left_out(tmp_path):
    """A writer killed mid-step: its flushed but uncommitted rows are not in the views."""
    path = tmp_path / "inflight.h5"
    script = textwrap.dedent(f"""
        import os, numpy as np
        from labpgt.runfile import RunFile
        rf = RunFile.create({str(path)!r}, n_params=2, features_per_measurement=3, trace_points=5,
                            trace_frequency_hz=np.linspace(1e9, 2e9, 5))
        def batch(n, step):
            rf.measurements_batch({{"trace_dbm": np.zeros((n, 5)), "features": np.ones((n, 3)), "step": step,
                                   "kind": "train", "sample_index": np.arange(n), "frequency_hz": 2e9,
                                   "power_dbm": -10.0, "current_a": 1.8, "frequency_axis": (1e9, 2e9, 5)}})
        batch(10, 0)
        rf.step({{"step": 1, "loss": 1.0, "accuracy": 0.5, "grad_norm": 1.0, "measurements": 10, "time_s": 0.0,
                  "current_a": 1.8}})
        batch(7, 1)
        rf._f.flush()  # the rows reach the file, /committed does not move: in flight
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    with h5py.File(path, "r", swmr=True) as f:
        assert f["measurements/step"].shape == (17,)
    with labpgt.open_run(path) as run:
        assert len(run.measurements["step"]) == 10 and run.to_xarray().sizes["measurement"] == 10
        assert len(run.to_dataframe()) == 10 and list(run.steps["step"]) == [1]
        assert run.to_xarray().trace_frequency_hz.values.tolist() == np.linspace(1e9, 2e9, 5).tolist()


# --------------------------------------------------------------------------- the station
def test_station_session_measures_and_leaves_the_simulated_rig_safe():
    with labpgt.open_station(seed=3) as rig:
        spectrum = rig.measure(2.07e9, -10.0, 1.8)
        server = rig.sim
        assert server.instruments["signal_generator"].output is True  # RF was on for the sweep
    peaks = spectrum.peaks(1)
    assert peaks and abs(peaks[0].frequency_hz - 2.07e9) < 1e6  # locked to the drive
    assert rig.safe_report.safe
    sg, cs = server.instruments["signal_generator"], server.instruments["current_source"]
    assert sg.output is False and cs.output is False and abs(cs.i_set) < 1e-9


def test_station_session_leaves_the_rig_safe_after_an_error():
    with pytest.raises(ZeroDivisionError):
        with labpgt.open_station(seed=3) as rig:
            rig.measure(2.07e9, -10.0, 1.8)
            1 / 0
    sg, cs = rig.sim.instruments["signal_generator"], rig.sim.instruments["current_source"]
    assert sg.output is False and cs.output is False and abs(cs.i_set) < 1e-9 and rig.safe_report.safe
    with labpgt.open_station(seed=3) as rig, pytest.raises(ValueError, match="frequency_hz"):
        rig.measure(50e9, -10.0, 1.8)  # outside the station's limits: refused before anything moves


# --------------------------------------------------------------------------- the notebook
def test_the_example_notebook_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "LABPGT_NOTEBOOK_OUT": str(tmp_path / "out")}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "notebook.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stdout
    for figure in ("spectrum.png", "learning-curve.png", "traces.png", "drive.png"):
        assert (tmp_path / "out" / figure).stat().st_size > 0, figure


# --------------------------------------------------------------------------- files from before
@pytest.mark.parametrize("name", ["v010-dense-node.h5", "v010-dense-spsa.h5", "v010-transformer-pgt.h5"])
def test_run_files_from_before_the_conventions_open_with_the_api(name):
    path = ROOT / "tests" / "data" / name
    before = path.read_bytes()
    with labpgt.open_run(path) as run:
        assert run.status == "completed"
        m = run.to_xarray()
        assert m.sizes["measurement"] == len(run.rows()) == run.reader.n_measurements
        # no stored axis: the rows' common start and stop give it (a station run), or there is none
        assert ("trace_frequency_hz" in m.coords) == name.startswith("v010-dense")
        for table in ("steps", "evaluations", "checkpoints"):
            assert run.to_xarray(table).sizes and len(run.to_dataframe(table))
    assert path.read_bytes() == before  # read, never touched


def test_a_file_being_written_opens_and_refreshes(tmp_path):
    """A live writer's file (SWMR): open_run sees its committed rows, refresh() the ones committed since."""
    path = tmp_path / "live.h5"
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from labpgt.runfile import RunFile
        rf = RunFile.create({str(path)!r}, n_params=2, features_per_measurement=3, trace_points=5)
        def step(s):
            rf.measurements_batch({{"trace_dbm": np.zeros((4, 5)), "features": np.ones((4, 3)), "step": s,
                                   "kind": "train", "sample_index": np.arange(4), "frequency_hz": 2e9,
                                   "power_dbm": -10.0, "current_a": 1.8}})
            rf.step({{"step": s + 1, "loss": 1.0, "accuracy": 0.5, "grad_norm": 1.0, "measurements": 4 * (s + 1),
                      "time_s": 0.0, "current_a": 1.8}})
            print("committed", flush=True)
        step(0)
        sys.stdin.readline()
        step(1)
        sys.stdin.readline()
        rf.set_status("completed")
        rf.close()
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert writer.stdout.readline().strip() == "committed"
        with labpgt.open_run(path) as run:
            assert run.status == "running" and len(run.measurements["step"]) == 4
            assert "being written by process" in inspect(path)
            writer.stdin.write("go\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "committed"
            run.refresh()
            assert list(run.steps["step"]) == [1, 2] and run.to_xarray().sizes["measurement"] == 8
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.wait(timeout=60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    with labpgt.open_run(path) as run:
        assert run.status == "completed"


def test_a_wrong_trace_axis_is_refused_before_the_file_exists(tmp_path):
    with pytest.raises(ValueError, match="trace_frequency_hz must be 5 finite frequencies"):
        RunFile.create(tmp_path / "r.h5", n_params=1, features_per_measurement=1, trace_points=5,
                       trace_frequency_hz=np.arange(4.0))
    assert not (tmp_path / "r.h5").exists()
