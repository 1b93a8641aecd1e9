"""The start-up probe sweep (RF off, wide analyzer sweep for the ring's free-running line) in the run file."""
from __future__ import annotations

import json
import shutil
import time

import h5py
import numpy as np
import pytest

import labpgt.experiment.probe as experiment
from labpgt.cli import main
from labpgt.runfile import Probe, RunFile, RunFileError, RunReader, inspect

P = 11  # trace points of the measurement rows in the hand-made files


# --------------------------------------------------------------------------- a fake station
class FakeAnalyzer:
    """Records the calls; coerces RBW requests to the 1-3-10 sequence, as real analyzers round them."""

    def __init__(self, log, line_hz=2.081e9, line_dbm=-12.5, trace_dtype=np.float32):
        self.log, self.line_hz, self.line_dbm, self.trace_dtype = log, line_hz, line_dbm, trace_dtype
        self.center_hz, self.span_hz, self.rbw_hz, self.points, self.reference_level_dbm = 2.08e9, 20e6, 3e4, 401, 0.0
        self.overloaded = False
        self.returned = None

    def configure(self, center_hz, span_hz, rbw_hz, points, reference_level_dbm):
        steps = np.array([1.0, 3.0, 10.0]) * 10.0 ** np.floor(np.log10(rbw_hz))
        self.center_hz, self.span_hz, self.points = center_hz, span_hz, points
        self.rbw_hz = float(steps[steps >= rbw_hz - 1e-9][0])
        self.reference_level_dbm = reference_level_dbm
        self.log.append(("configure", center_hz, span_hz, rbw_hz, points, reference_level_dbm))

    def measure(self):
        self.log.append(("measure", self.center_hz, self.span_hz, self.points))
        freqs = np.linspace(self.center_hz - self.span_hz / 2, self.center_hz + self.span_hz / 2, self.points)
        rng = np.random.default_rng(3)
        trace = (-110 + 3 * rng.standard_normal(self.points)).astype(self.trace_dtype)
        if self.line_dbm is not None:
            trace[np.argmin(np.abs(freqs - self.line_hz))] = self.line_dbm
        self.returned = (freqs, trace)
        return freqs, trace


class FakeStation:
    def __init__(self, **analyzer):
        self.log = []
        log = self.log

        class Generator:
            @property
            def output_enabled(self):
                raise AssertionError("the probe commands RF off, it does not ask")

            @output_enabled.setter
            def output_enabled(self, value):
                log.append(("rf", value))

        class Source:
            def ramp_to(self, current_a):
                log.append(("ramp", current_a))

        self.signal_generator, self.current_source = Generator(), Source()
        self.spectrum_analyzer = FakeAnalyzer(log, **analyzer)


def test_probe_sweep_on_a_fake_station_returns_what_the_analyzer_returned():
    station = FakeStation()
    sa = station.spectrum_analyzer
    before = time.time()
    probe = experiment.probe_sweep(station, 1.75)
    after = time.time()
    freqs, trace = sa.returned
    assert probe.frequency_hz is freqs and probe.trace_dbm is trace  # as read: not copied, not converted
    assert probe.trace_dbm.dtype == np.float32
    names = [e[0] for e in station.log]
    assert names == ["rf", "ramp", "configure", "measure", "configure"]
    assert station.log[0] == ("rf", False) and station.log[1] == ("ramp", 1.75)
    assert station.log[3] == ("measure", 2.07e9, 200e6, 1001)
    # the station's window (20 MHz, 401 points, 30 kHz) is restored around the found line
    assert station.log[4] == ("configure", probe.line_hz, 20e6, 3e4, 401, 0.0)
    assert probe.reference_source == "probe" and probe.swept
    assert probe.reference_hz == probe.line_hz == freqs[np.argmin(np.abs(freqs - 2.081e9))]
    assert probe.line_dbm == -12.5
    assert probe.current_a == 1.75 and probe.rf_output_enabled == 0 and probe.overloaded == 0
    assert probe.center_hz == 2.07e9 and probe.span_hz == 200e6 and probe.points == 1001
    assert probe.rbw_hz == 1e5  # requested 200 MHz / 2000 = 100 kHz, read back
    assert probe.reference_level_dbm == 0.0 and probe.min_prominence_db == 15.0
    assert before <= probe.time_s <= after
    # the old interface gives the same three values
    ref, f2, t2 = experiment.find_reference_hz(FakeStation(), 1.75)
    assert ref == probe.reference_hz and f2.tobytes() == freqs.tobytes() and t2.tobytes() == trace.tobytes()


def test_the_rbw_recorded_is_the_analyzers_not_the_request():
    station = FakeStation()
    probe = experiment.probe_sweep(station, 1.8, span_hz=150e6)  # asks for 75 kHz, the analyzer makes it 100 kHz
    assert station.log[2][3] == 75e3
    assert probe.rbw_hz == 1e5 and probe.span_hz == 150e6


def test_no_line_no_probe():
    with pytest.raises(RuntimeError, match="no free-running line"):
        experiment.probe_sweep(FakeStation(line_dbm=None), 1.8)


# --------------------------------------------------------------------------- the run file
def make_file(path, probe):
    with RunFile.create(path, n_params=2, features_per_measurement=1, trace_points=P, probe=probe) as rf:
        rf.measurement({"step": 0, "kind": "train", "sample_index": 0, "trace_dbm": np.zeros(P, np.float32),
                        "features": np.zeros(1), "settings": {"frequency_hz": 2e9, "power_dbm": -10.0,
                                                                "current_a": 1.8}})
        rf.step({"step": 1, "loss": 1.0, "accuracy": 0.0, "grad_norm": 1.0, "measurements": 1, "time_s": 1.0,
                 "current_a": 1.8})
        rf.set_status("completed")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probe_round_trip_losslessly_with_units_and_descriptions(tmp_path, dtype):
    probe = experiment.probe_sweep(FakeStation(trace_dtype=dtype), 1.75)
    path = tmp_path / "run.h5"
    make_file(path, probe)
    with RunReader(path) as r:
        got = r.probe()
        assert r.n_measurements == 1 and len(r.steps()["step"]) == 1
    assert got.frequency_hz.dtype == np.float64 and got.trace_dbm.dtype == dtype  # as read, not converted
    assert got.frequency_hz.tobytes() == probe.frequency_hz.tobytes()
    assert got.trace_dbm.tobytes() == probe.trace_dbm.tobytes()
    for name in ("reference_source", "reference_hz", "time_s", "current_a", "center_hz", "span_hz", "rbw_hz",
                 "points", "reference_level_dbm", "line_hz", "line_dbm", "rf_output_enabled", "overloaded",
                 "min_prominence_db"):
        assert getattr(got, name) == getattr(probe, name), name
    with h5py.File(path, "r") as f:
        g = f["probe"]
        assert g.attrs["reference_source"] == "probe" and g.attrs["rf_output_enabled"] == 0
        assert g.attrs["points"] == 1001 and g.attrs["line_hz"] == probe.line_hz
        assert g.attrs["description"]
        units = json.loads(g.attrs["attribute_units"])
        assert units["time_s"] == "s" and units["current_a"] == "A" and units["line_dbm"] == "dBm"
        assert units["rbw_hz"] == units["center_hz"] == units["reference_hz"] == "Hz"
        assert set(json.loads(g.attrs["attribute_descriptions"])) == set(units) - {"reference_hz"}
        assert dict(g["frequency_hz"].attrs)["units"] == "Hz" and g["frequency_hz"].attrs["description"]
        assert dict(g["trace_dbm"].attrs)["units"] == "dBm" and g["trace_dbm"].attrs["description"]
    text = inspect(path)
    assert "probe: line 2.081000 GHz at -12.5 dBm (the reference); 1001 points" in text
    assert "RF off" in text and "/probe/trace_dbm (1001,)" in text


def test_a_config_reference_is_recorded_as_such_without_datasets(tmp_path):
    path = tmp_path / "run.h5"
    make_file(path, Probe.from_config(2.0805e9))
    with RunReader(path) as r:
        got = r.probe()
    assert got.reference_source == "config" and got.reference_hz == 2.0805e9 and not got.swept
    assert got.frequency_hz is None and got.trace_dbm is None and got.time_s is None
    with h5py.File(path, "r") as f:
        assert list(f["probe"].keys()) == []
    assert "probe: none: reference_hz 2080500000.000000 Hz given in the experiment configuration" in inspect(path)


def test_a_file_without_a_probe_reads_as_none(tmp_path):
    path = tmp_path / "run.h5"
    make_file(path, None)
    with RunReader(path) as r:
        assert r.probe() is None
    assert "probe: not recorded" in inspect(path)


def test_a_bad_probe_is_refused_before_the_file_is_created(tmp_path):
    good = experiment.probe_sweep(FakeStation(), 1.8)
    bad = [
        Probe("guess", 2e9),
        Probe(**{**good.__dict__, "trace_dbm": good.trace_dbm[:-1]}),
        Probe(**{**good.__dict__, "rbw_hz": None}),
        Probe.from_config(float("nan")),
    ]
    for i, probe in enumerate(bad):
        with pytest.raises(ValueError):
            make_file(tmp_path / f"bad{i}.h5", probe)
        assert not (tmp_path / f"bad{i}.h5").exists()


# --------------------------------------------------------------------------- labpgt train
@pytest.fixture
def spy(monkeypatch):
    """Every probe_sweep made by `labpgt train`, with what it returned."""
    made = []
    real = experiment.probe_sweep

    def recording(station, current_a, **kw):
        probe = real(station, current_a, **kw)
        made.append(probe)
        return probe

    monkeypatch.setattr(experiment, "probe_sweep", recording)
    return made


def snapshot(path):
    with h5py.File(path, "r") as f:
        g = f["probe"]
        return {k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in g.attrs.items()}, \
            {k: g[k][()].tobytes() for k in g}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small run (one step of node) on the embedded simulated ring (copied by the tests that change it)."""
    path = tmp_path_factory.mktemp("trained") / "run.h5"
    assert main(["train", "--estimator", "node", "--budget", "64", "--seed", "3", "--out", str(path),
                 "--no-progress"]) == 0
    return path


def test_train_records_the_probe_the_analyzer_returned(tmp_path, spy):
    path = tmp_path / "run.h5"
    before = time.time()
    assert main(["train", "--budget", "64", "--seed", "3", "--out", str(path), "--no-progress"]) == 0
    assert len(spy) == 1
    made = spy[0]
    with RunReader(path) as r:
        probe = r.probe()
        layout = json.loads(r.metadata["physical_layer"])
        created = r.status_history()[0]["time_s"]
    assert probe.frequency_hz.tobytes() == made.frequency_hz.tobytes()
    assert probe.trace_dbm.dtype == made.trace_dbm.dtype == np.float32  # the analyzer's REAL,32 trace
    assert probe.trace_dbm.tobytes() == made.trace_dbm.tobytes()
    assert probe.points == 1001 == probe.frequency_hz.size
    assert probe.center_hz == 2.07e9 and probe.span_hz == 200e6 and probe.rbw_hz == 1e5
    assert probe.current_a == 1.8 and probe.rf_output_enabled == 0 and probe.overloaded == 0
    assert before <= probe.time_s <= created
    # the line found is the encoder's reference, and it is the strongest point of the recorded trace
    assert probe.reference_source == "probe"
    assert probe.reference_hz == probe.line_hz == layout["encoder"]["reference_hz"]
    assert probe.line_dbm == float(probe.trace_dbm.max())
    assert probe.line_hz == probe.frequency_hz[int(np.argmax(probe.trace_dbm))]


def test_a_second_identical_probe_on_a_fresh_simulated_ring_matches_the_recorded_one(trained):
    from labpgt.experiment.embedded import open_station

    with open_station(None, seed=3, noise_scale=1.0) as (station, _):
        again = experiment.probe_sweep(station, 1.8)
    with RunReader(trained) as r:
        probe = r.probe()
    assert probe.frequency_hz.tobytes() == again.frequency_hz.tobytes()
    assert probe.trace_dbm.tobytes() == again.trace_dbm.tobytes()
    assert (probe.line_hz, probe.line_dbm, probe.rbw_hz) == (again.line_hz, again.line_dbm, again.rbw_hz)


def test_train_with_an_explicit_reference_records_that_no_probe_was_made(tmp_path, spy):
    path = tmp_path / "run.h5"
    assert main(["train", "--budget", "64", "--reference-hz", "2.0852e9", "--out", str(path), "--no-progress"]) == 0
    assert spy == []
    with RunReader(path) as r:
        probe = r.probe()
        layout = json.loads(r.metadata["physical_layer"])
    assert probe.reference_source == "config" and probe.reference_hz == 2.0852e9 == layout["encoder"]["reference_hz"]
    assert probe.trace_dbm is None


def test_a_file_without_probe_still_opens_inspects_reports_and_replays(trained, tmp_path, capsys):
    old = tmp_path / "old.h5"
    shutil.copyfile(trained, old)
    with h5py.File(old, "r+") as f:
        del f["probe"]  # as written before the probe was recorded
    with RunReader(old) as r:
        assert r.probe() is None and r.status == "completed"
    assert main(["inspect", str(old)]) == 0
    assert "probe: not recorded" in capsys.readouterr().out
    assert main(["replay", str(old)]) == 0
    assert "bit for bit" in capsys.readouterr().out
    from labpgt.report.summary import report

    names = sorted(p.name for p in report(old, tmp_path / "rep"))
    assert names == ["loss_accuracy.png", "settings.png", "spectra.png", "summary.txt"]
    assert "probe: not recorded" in (tmp_path / "rep" / "summary.txt").read_text()


def test_the_report_plots_a_recorded_probe(trained, tmp_path):
    from labpgt.report.summary import report

    files = report(trained, tmp_path / "rep")
    assert "probe.png" in [p.name for p in files]
    assert (tmp_path / "rep" / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "rep" / "summary.txt").read_text()
    with RunReader(trained) as r:
        line = r.probe().line_hz
    assert f"probe: line {line / 1e9:.6f} GHz" in summary


def _drop_trace(g):
    del g["trace_dbm"]


def _bad_source(g):
    g.attrs["reference_source"] = "bogus"


def _short_trace(g):
    data = g["trace_dbm"][:-5]
    del g["trace_dbm"]
    g["trace_dbm"] = data


def _no_attributes(g):
    del g.attrs["line_hz"]


@pytest.mark.parametrize("damage", [_drop_trace, _bad_source, _short_trace, _no_attributes])
def test_a_damaged_probe_does_not_break_reading_the_run(trained, tmp_path, capsys, damage):
    path = tmp_path / "damaged.h5"
    shutil.copyfile(trained, path)
    with h5py.File(path, "r+") as f:
        damage(f["probe"])
    with RunReader(path) as r:
        assert r.status == "completed" and r.n_measurements > 0 and len(r.steps()["step"]) == 1
        with pytest.raises(RunFileError, match="/probe"):
            r.probe()
    assert main(["inspect", str(path)]) == 1  # damaged: says so, and exits 1 ...
    out = capsys.readouterr().out
    assert "probe: UNREADABLE" in out and "measurements: " in out and "datasets:" in out  # ... showing the rest
    assert main(["replay", str(path)]) == 0
    assert "bit for bit" in capsys.readouterr().out
    from labpgt.report.summary import report

    names = sorted(p.name for p in report(path, tmp_path / "rep"))
    assert "probe.png" not in names and "summary.txt" in names
    assert "probe: UNREADABLE" in (tmp_path / "rep" / "summary.txt").read_text()


# --------------------------------------------------------------------------- --resume

def test_resume_before_the_first_checkpoint_replays_the_probe_without_recording_it(tmp_path, monkeypatch, spy,
                                                                                   ctrl_c_at_checkpoint):
    path = tmp_path / "run.h5"
    argv = ["train", "--budget", "64", "--seed", "4", "--out", str(path), "--no-progress"]
    with monkeypatch.context() as m:
        ctrl_c_at_checkpoint(m, at_call=1)  # killed before its step-0 checkpoint
        assert main(argv) == 130
    with RunReader(path) as r:
        assert r.status == "aborted" and r.n_checkpoints == 0
    assert len(spy) == 1
    before = snapshot(path)

    assert main(["train", "--resume", str(path), "--no-progress"]) == 0
    # the resumed run replayed the probe for the fresh simulated world: the very same sweep ...
    assert len(spy) == 2
    assert spy[1].trace_dbm.tobytes() == spy[0].trace_dbm.tobytes()
    assert spy[1].frequency_hz.tobytes() == spy[0].frequency_hz.tobytes()
    assert spy[1].time_s > spy[0].time_s
    # ... which is not recorded again: /probe is still the original sweep, its time included
    assert snapshot(path) == before
    with RunReader(path) as r:
        assert r.status == "completed" and len(r.resumes()["time_s"]) == 1
        assert r.probe().time_s == spy[0].time_s
        resumed = r.last_checkpoint()["params"]
    assert main(["replay", str(path)]) == 0
    # and the resumed run is the uninterrupted one, bit for bit (the replayed probe put the world there)
    straight = tmp_path / "straight.h5"
    assert main(["train", "--budget", "64", "--seed", "4", "--out", str(straight), "--no-progress"]) == 0
    with RunReader(straight) as r:
        assert r.last_checkpoint()["params"].tobytes() == resumed.tobytes()


def test_resume_from_a_checkpoint_makes_no_probe_and_keeps_the_recorded_one(tmp_path, monkeypatch, spy,
                                                                            ctrl_c_at_checkpoint):
    path = tmp_path / "run.h5"
    argv = ["train", "--budget", "256", "--seed", "4", "--out", str(path), "--no-progress", "--checkpoint-every", "1"]
    with monkeypatch.context() as m:
        ctrl_c_at_checkpoint(m, at_call=3)  # step 0 and step 1 checkpointed, then interrupted
        assert main(argv) == 130
    with RunReader(path) as r:
        assert r.status == "aborted" and r.n_checkpoints == 2
    before = snapshot(path)
    assert len(spy) == 1
    assert main(["train", "--resume", str(path), "--no-progress"]) == 0
    assert len(spy) == 1  # the world is restored from the checkpoint; no sweep
    assert snapshot(path) == before
    assert main(["replay", str(path)]) == 0
