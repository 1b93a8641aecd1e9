"""labpgt sweep: plans on the embedded simulated ring, the HDF5 map (xarray), dry run, bad input, resume."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from labpgt.cli import main
from labpgt.sweep import plan as plans
from labpgt.sweep.file import SweepFile, read_operating_point


def sweep(*argv):
    return main(["sweep", *argv, "--no-progress"])


@pytest.fixture(scope="module")
def current_map(tmp_path_factory):
    path = tmp_path_factory.mktemp("maps") / "current.h5"
    assert sweep("current", "--from-a", "1.6", "--to-a", "1.9", "--points", "7", "--out", str(path)) == 0
    return path


def test_a_current_map_opens_in_xarray_with_the_physical_axes_as_coordinates(current_map):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    with xr.open_dataset(current_map, engine="h5netcdf") as ds:
        assert ds["trace_dbm"].dims == ("current_a", "frequency_hz")
        assert set(ds.coords) == {"current_a", "frequency_hz"}
        assert ds["current_a"].values.tolist() == pytest.approx([1.6, 1.65, 1.7, 1.75, 1.8, 1.85, 1.9])
        assert ds["current_a"].attrs["units"] == "A" and ds["frequency_hz"].attrs["units"] == "Hz"
        assert ds["trace_dbm"].attrs["units"] == "dBm" and ds["trace_dbm"].attrs["long_name"]
        assert ds["line_found"].attrs["flag_meanings"] == "no yes"
        line = ds["line_hz"].values
        assert (ds["measured"].values == 1).all() and int(ds["state"]) == 1  # completed
    # the tuning curve: the line rises with the current (about 0.6 GHz/A)
    assert np.all(np.diff(line) > 0)
    assert 0.4e9 < (line[-1] - line[0]) / 0.3 < 0.8e9
    with h5py.File(current_map, "r") as f:
        assert f.attrs["NX_class"] == "NXdata" and f.attrs["signal"] == "trace_dbm"
        assert list(f.attrs["axes"]) == ["current_a", "frequency_hz"]
        assert f["trace_dbm"].dims[0][0].name == "/current_a"
    assert current_map.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_operating_point_is_the_map_point_nearest_the_current(current_map):
    point = read_operating_point(current_map, 1.79)
    with h5py.File(current_map, "r") as f:
        assert point.current_a == 1.8 and point.line_hz == f["line_hz"][4]
    with pytest.raises(ValueError, match=r"current 2\.5 A is outside the map's range \[1\.6, 1\.9\] A"):
        read_operating_point(current_map, 2.5)


def test_lock_drift_and_spectrum_maps(tmp_path):
    xr = pytest.importorskip("xarray")
    lock = tmp_path / "lock.h5"
    assert sweep("lock", "--current-a", "1.8", "--line-hz", "2.0854e9", "--detunings", "3", "--detuning-hz", "4e6",
                 "--powers", "2", "--power-from-dbm", "-40", "--power-to-dbm", "-5", "--out", str(lock)) == 0
    with xr.open_dataset(lock, engine="h5netcdf") as ds:
        assert ds["trace_dbm"].dims == ("detuning_hz", "drive_power_dbm", "frequency_hz")
        assert "drive_frequency_hz" in ds.coords
        assert ds["drive_frequency_hz"].values.tolist() == pytest.approx([2.0814e9, 2.0854e9, 2.0894e9])
        locked = ds["locked"].values
    assert locked[1, 1] == 1  # on the line at -5 dBm: locked
    assert set(np.unique(locked)) <= {0, 1}
    drift = tmp_path / "drift.h5"
    assert sweep("drift", "--current-a", "1.8", "--samples", "3", "--interval-s", "30", "--out", str(drift)) == 0
    with xr.open_dataset(drift, engine="h5netcdf") as ds:
        assert ds["line_hz"].dims == ("elapsed_s",) and ds["elapsed_s"].values.tolist() == [0.0, 30.0, 60.0]
        assert (ds["line_found"].values == 1).all()
    spectrum = tmp_path / "spectrum.h5"
    assert sweep("spectrum", "--current-a", "1.8", "--out", str(spectrum)) == 0
    assert read_operating_point(spectrum).current_a == 1.8
    assert abs(read_operating_point(spectrum).line_hz - 2.0854e9) < 2e6


def test_dry_run_prints_the_plan_and_sends_nothing(tmp_path, capsys, monkeypatch):
    from instruments.station import Station

    def refuse(self):
        raise AssertionError("a dry run must not connect")

    monkeypatch.setattr(Station, "connect", refuse)
    out = tmp_path / "map.h5"
    assert sweep("current", "--points", "11", "--dry-run", "--out", str(out)) == 0
    text = capsys.readouterr().out
    assert "sweep current: 11 points" in text and "instrument time (estimate" in text
    assert "nothing was sent" in text and not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["current", "--to-a", "3.0"], "bias current (A) 3 is outside the current_source's limits [-2.5, 2.5]"),
    (["spectrum", "--current-a", "1.8", "--drive-frequency-hz", "2.5e9", "--drive-power-dbm", "-10"],
     "drive frequency (Hz) 2.5e+09 is outside the signal_generator's limits [1.9e+09, 2.3e+09]"),
    (["lock", "--current-a", "1.8", "--line-hz", "2.08e9", "--power-to-dbm", "5"],
     "drive power (dBm) 5 is outside the signal_generator's limits [-60, 0]"),
    (["current", "--center-hz", "3.2e9"], "analyzer stop (Hz) 3.4e+09 is outside the spectrum_analyzer's limits"),
])
def test_a_sweep_outside_the_limits_is_refused_before_anything_moves(tmp_path, capsys, monkeypatch, argv, message):
    from instruments.station import Station

    def refuse(self):
        raise AssertionError("a refused sweep must not connect")

    monkeypatch.setattr(Station, "connect", refuse)
    out = tmp_path / "map.h5"
    assert sweep(*argv, "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_an_interrupted_sweep_resumes_skipping_the_points_written(tmp_path, monkeypatch, capsys):
    path = tmp_path / "map.h5"
    real = SweepFile.write
    written = []

    def write(self, index, *rest):
        if len(written) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the fourth point is written
        written.append(index)
        return real(self, index, *rest)

    with monkeypatch.context() as m:
        m.setattr(SweepFile, "write", write)
        assert sweep("current", "--from-a", "1.7", "--to-a", "1.9", "--points", "5", "--out", str(path)) == 130
    assert "--resume" in capsys.readouterr().err
    with h5py.File(path, "r") as f:
        assert f["measured"][()].tolist() == [1, 1, 1, 0, 0] and f["state"][()] == 2  # aborted
        first = f["trace_dbm"][:3]
    resumed = []

    def record(self, index, *rest):
        resumed.append(index)
        return real(self, index, *rest)

    monkeypatch.setattr(SweepFile, "write", record)
    assert sweep("current", "--resume", str(path)) == 0
    assert resumed == [(3,), (4,)]  # only the points not yet written
    with h5py.File(path, "r") as f:
        assert f["measured"][()].tolist() == [1] * 5 and f["state"][()] == 1
        assert f["trace_dbm"][:3].tobytes() == first.tobytes()
    assert sweep("lock", "--resume", str(path)) == 2  # the file's kind, not another


def test_a_file_that_is_not_a_map_is_refused(tmp_path, capsys):
    bogus = tmp_path / "bogus.h5"
    with h5py.File(bogus, "w") as f:
        f["x"] = 1
    assert sweep("current", "--resume", str(bogus)) == 2
    assert "not a sweep map" in capsys.readouterr().err


def test_plans_are_data():
    window = {"center_hz": 2e9, "span_hz": 1e8, "rbw_hz": 1e5, "points": 101, "reference_level_dbm": 0.0}
    plan = plans.lock_plan(1.8, 2.08e9, 1e6, 3, -30.0, -10.0, 2, window)
    assert plan.shape == (3, 2) and len(plan.points) == 6
    assert plans.plan_from_json(plan.to_json()) == plan
    with pytest.raises(plans.PlanError, match="allowed: 2 or more"):
        plans.current_plan(1.0, 2.0, 1, window)


# --------------------------------------------------------------------------- the rig's safety, both flavours
@pytest.mark.parametrize("flavour, current", [("keysight", "1.8"), ("alt", "0.95")])
def test_sweeps_from_an_unsafe_rig_enable_rf_only_validated_and_leave_it_safe(tmp_path, capsys, flavour, current):
    """Served instruments started unsafe (RF on out of band at full power, current flowing): a current
    sweep never switches RF on; a lock sweep switches it on once, through the one RF switch, at a
    setting set and read back; the magnet never moves under an unchecked drive; the rig ends safe."""
    from sim.server import SimServer
    from tests.test_rf_safety import check_wire_log

    with SimServer(seed=2, flavour=flavour, start_state="unsafe", wire_log=True) as server:
        station = tmp_path / "station.toml"
        station.write_text(server.station_toml())
        lo, hi = (float(current) - 0.1, float(current)) if flavour == "alt" else (1.7, 1.8)
        assert sweep("current", "--station", str(station), "--from-a", str(lo), "--to-a", str(hi), "--points", "3",
                     "--out", str(tmp_path / "current.h5")) == 0
        facts = check_wire_log(list(server.wire_log.entries), flavour)
        assert facts["enables"] == []  # RF off for the whole tuning curve
        assert read_operating_point(tmp_path / "current.h5", float(current)).line_hz > 1.9e9
        server.wire_log.entries.clear()
        assert sweep("lock", "--station", str(station), "--current-a", current, "--detunings", "3", "--powers", "2",
                     "--out", str(tmp_path / "lock.h5")) == 0
        entries = list(server.wire_log.entries)
        sg = server.instruments["signal_generator"]
        assert not (sg.output if flavour == "keysight" else sg.channels[0].h)
        cs = server.instruments["current_source"]
        assert cs.output is False and cs.i_set == 0.0
    assert "the rig was left safe (read back: RF output off; current 0 A measured" in capsys.readouterr().out
    enables = [e for e in entries if e.role == "signal_generator" and e.rf_on]
    assert enables and all(1.9e9 <= e.frequency_hz <= 2.3e9 and -60 <= e.power_dbm <= 0 for e in enables)


def test_a_first_ctrl_c_finishes_the_point_in_flight_and_marks_the_map_aborted(tmp_path, monkeypatch, capsys):
    import os
    import signal

    path = tmp_path / "map.h5"
    real = SweepFile.write
    calls = []

    def write(self, index, *rest):
        calls.append(index)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the second point is being written
        return real(self, index, *rest)

    monkeypatch.setattr(SweepFile, "write", write)
    assert sweep("current", "--from-a", "1.7", "--to-a", "1.9", "--points", "5", "--out", str(path)) == 130
    out = capsys.readouterr().out
    assert "sweep aborted" in out and f"--resume {path}" in out and "the rig was left safe" in out
    with h5py.File(path, "r") as f:
        assert f["measured"][()].tolist() == [1, 1, 0, 0, 0] and f["state"][()] == 2
