"""Training starts from what was measured: the probe window, the plausible line, a sweep map, the
drive's windows against the station's limits, and train --dry-run (issue 11, item 3)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from labpgt.cli import main
from labpgt.experiment.probe import probe_window
from labpgt.reservoirs.spectra import find_line
from labpgt.runfile import RunReader

BUDGET = "4000"  # the accuracy of a short run on the 30 test samples settles by then


def train(*argv):
    # node: the figures below were set with it, and it is 3x cheaper per measurement than the twin default
    return main(["train", "--estimator", "node", "--budget", BUDGET, "--no-progress", *argv])


def accuracy(path):
    with RunReader(path) as r:
        return r.evaluations()["test_accuracy"][-1], json.loads(r.metadata["physical_layer"]), r.probe()


def test_the_default_window_is_todays_and_follows_the_current_inside_the_analyzer():
    assert probe_window((1e9, 3e9), 1.8) == (2.07e9, 200e6)
    center, span = probe_window((1e9, 3e9), 1.57)
    assert center == pytest.approx(2.07e9 - 0.6e9 * 0.23) and span == 200e6
    assert probe_window((1.95e9, 3e9), 1.57)[0] == 2.05e9  # moved inside the analyzer's limits
    assert probe_window((1e9, 3e9), 1.8, 2.1e9, 50e6) == (2.1e9, 50e6)
    with pytest.raises(ValueError, match=r"reaches outside the analyzer's frequency limits"):
        probe_window((1e9, 3e9), 1.8, 2.95e9, 200e6)


def test_a_skirt_at_the_window_edge_is_not_a_line():
    freqs = np.linspace(1.97e9, 2.17e9, 1001)
    rng = np.random.default_rng(0)
    floor = -100 + 2 * rng.standard_normal(freqs.size)
    skirt = floor + 60 * np.exp(-(freqs - 1.955e9) / 8e6)  # a line 15 MHz below the window
    verdict = find_line(freqs, skirt)
    assert not verdict.plausible and "edge" in verdict.describe()
    line = floor.copy()
    line[500] = -9.0
    verdict = find_line(freqs, line)
    assert verdict.plausible and verdict.peak.frequency_hz == freqs[500]


@pytest.fixture(scope="module")
def at_the_default_line(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "default.h5"
    assert train("--out", str(path)) == 0
    return accuracy(path)


def test_a_line_120_mhz_away_trains_as_at_the_default_line(tmp_path, at_the_default_line, capsys):
    """At 1.57 A the simulated ring's line sits near 1.95 GHz, 120 MHz below 2.07 GHz."""
    default_accuracy, _, _ = at_the_default_line
    # today's fixed window (2.07 GHz ± 100 MHz) only holds the skirt of that line: refused, never trained
    fixed = tmp_path / "fixed.h5"
    assert train("--current-a", "1.57", "--probe-center-hz", "2.07e9", "--probe-span-hz", "200e6",
                 "--out", str(fixed)) == 2
    err = capsys.readouterr().err.splitlines()[0]
    assert "no free-running line within 2.0700 GHz ± 100 MHz at 1.57 A" in err and "best candidate" in err
    assert not fixed.exists()
    # the window derived from the current finds the line and trains as well as at the default line
    derived = tmp_path / "derived.h5"
    assert train("--current-a", "1.57", "--out", str(derived)) == 0
    acc, layout, probe = accuracy(derived)
    assert abs(probe.line_hz - 1.95e9) < 15e6 and layout["encoder"]["reference_hz"] == probe.line_hz
    assert acc >= default_accuracy - 0.1 and acc > 0.6


def test_train_from_a_current_map(tmp_path, capsys):
    current_map = tmp_path / "current.h5"
    assert main(["sweep", "current", "--from-a", "1.5", "--to-a", "1.7", "--points", "5", "--out", str(current_map),
                 "--no-progress"]) == 0
    run = tmp_path / "run.h5"
    assert train("--reference-from", str(current_map), "--current-a", "1.6", "--out", str(run)) == 0
    acc, layout, probe = accuracy(run)
    import h5py

    with h5py.File(current_map, "r") as f:
        line = float(f["line_hz"][2])
    assert probe.reference_source == "map" and probe.map_file == str(current_map)
    assert layout["encoder"]["reference_hz"] == probe.reference_hz == line
    with RunReader(run) as r:
        assert r.steps()["current_a"][0] == pytest.approx(1.6, abs=0.02)
    assert acc > 0.6  # well above chance (1/3); a short run on 30 test samples varies by ±0.1-0.2 with the current
    capsys.readouterr()
    # a current the map does not cover, a file that is not a map: one line each, nothing trained
    assert train("--reference-from", str(current_map), "--out", str(tmp_path / "x.h5")) == 2
    assert "current 1.8 A is outside the map's range [1.5, 1.7] A" in capsys.readouterr().err
    assert train("--reference-from", str(run), "--out", str(tmp_path / "y.h5")) == 2
    assert "not a sweep map" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()


def test_a_line_the_drive_cannot_reach_is_refused_before_training(tmp_path, capsys):
    """A current source limited to ±1 A: the line (about 1.57 GHz at 1 A) is outside the generator's
    limits [1.9, 2.3] GHz; the run refuses, naming the window and the limits."""
    from sim.server import SimServer

    with SimServer(seed=0) as server:
        station = tmp_path / "station.toml"
        station.write_text(server.station_toml().replace("current_a = [-2.5, 2.5]", "current_a = [-1.0, 1.0]"))
        out = tmp_path / "run.h5"
        assert train("--station", str(station), "--out", str(out)) == 2
        err = capsys.readouterr().err
        assert "current_a = 1.8 A is outside the station's current limits [-1.0, 1.0] A" in err.splitlines()[0], err
        assert train("--station", str(station), "--current-a", "0.98", "--out", str(out)) == 2
        err = capsys.readouterr().err.splitlines()[0]
        assert "reaches outside the signal generator's frequency limits [1.9e+09, 2.3e+09] Hz" in err, err
        # an operating point from a map that this station cannot reach: refused before anything moves
        current_map = tmp_path / "map.h5"
        assert main(["sweep", "current", "--from-a", "1.6", "--to-a", "1.7", "--points", "2", "--out",
                     str(current_map), "--no-progress"]) == 0
        capsys.readouterr()
        assert train("--station", str(station), "--reference-from", str(current_map), "--current-a", "1.6",
                     "--out", str(out)) == 2
        err = capsys.readouterr().err.splitlines()[0]
        assert "current_a = 1.6 A" in err and "station's current limits [-1.0, 1.0] A" in err, err
        assert not out.exists()
        source = server.instruments["current_source"]
        assert source.i_set == 0.0 and not server.instruments["signal_generator"].output  # nothing moved


def test_train_dry_run_prints_the_plan_and_moves_nothing(tmp_path, capsys, monkeypatch):
    from instruments.station import Station

    def refuse(self):
        raise AssertionError("a dry run must not connect")

    monkeypatch.setattr(Station, "connect", refuse)
    assert main(["train", "--dry-run", "--out", str(tmp_path / "run.h5")]) == 0
    out = capsys.readouterr().out
    assert "20000 training measurements" in out and "2.0700 GHz ± 100 MHz" in out
    assert re.search(r"20000 measurements x \d+\.\d ms", out) and "nothing was moved" in out
    assert not (tmp_path / "run.h5").exists()
