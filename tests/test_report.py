"""report(): PNGs with content and a summary with the run's numbers."""
from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np

from labpgt.report.summary import report
from labpgt.runfile import RunFile

P = 101


def make_run(path):
    rf = RunFile.create(path, n_params=2, features_per_measurement=3, trace_points=P, optimizer_state_shapes={},
                        metadata={"identities": {"spectrum_analyzer": "SIM,SA,0,1", "signal_generator": "SIM,SG,0,1"},
                                  "package_version": "0.1.0", "seed": 7, "command_line": "labpgt train"})
    freqs = np.linspace(2.05e9, 2.08e9, P)
    n = 0
    for s in range(10):
        for sign in (0, 1, -1):
            for i in range(4):
                line = 2.065e9 + 1e6 * sign + 1e5 * i
                trace = (-90 + 60 * np.exp(-((freqs - line) / 2e5) ** 2)).astype(np.float32)
                rf.measurement({"time_s": 1000.0 + n, "step": s, "kind": "train", "sample_index": i, "node": 0,
                                "perturbation_direction": 0 if sign else -1, "perturbation_sign": sign,
                                "settings": {"frequency_hz": line, "power_dbm": -20.0 + s, "current_a": 1.8 + 1e-4 * s},
                                "trace_dbm": trace, "frequency_axis": (2.05e9, 2.08e9, P),
                                "features": np.zeros(3), "flags": 16})
                n += 1
        rf.step({"step": s + 1, "loss": 1.0 / (s + 1), "accuracy": 0.05 * s, "grad_norm": 1.0,
                 "measurements": 12 * (s + 1), "time_s": 1000.0 + n, "current_a": 1.8 + 1e-4 * s})
        if s % 5 == 4:
            for i in range(5):
                rf.measurement({"time_s": 1000.0 + n, "step": s + 1, "kind": "eval", "sample_index": i, "node": 0,
                                "settings": {"frequency_hz": 2.06e9, "power_dbm": -10.0, "current_a": 1.8},
                                "trace_dbm": np.full(P, -80, np.float32), "features": np.zeros(3)})
                n += 1
            rf.evaluation({"step": s + 1, "measurements": 12 * (s + 1), "test_loss": 0.5 / (s + 1),
                           "test_accuracy": 0.5 + 0.03 * s, "time_s": 1000.0 + n})
    rf.set_status("completed", "completed")
    rf.close()


def test_report_writes_pngs_and_summary(tmp_path):
    path = tmp_path / "run.h5"
    make_run(path)
    files = report(path, tmp_path / "rep")
    names = sorted(f.name for f in files)
    assert names == ["loss_accuracy.png", "settings.png", "spectra.png", "summary.txt"]
    for f in files:
        assert f.exists() and f.parent == tmp_path / "rep"
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 10_000
            img = mpimg.imread(f)
            assert img.shape[0] > 300 and img.shape[1] > 600 and img[..., :3].std() > 0.05  # not blank
    summary = (tmp_path / "rep" / "summary.txt").read_text().splitlines()
    assert "status: completed (completed)" in summary
    assert "steps: 10" in summary
    assert "training measurements: 120" in summary
    assert "measurements recorded: 130 (train 120, probe 0, eval 10)" in summary
    assert "final test accuracy: 0.7700 (step 10)" in summary
    assert "final test loss: 0.0500" in summary
    assert "  signal_generator: SIM,SG,0,1" in summary and "  spectrum_analyzer: SIM,SA,0,1" in summary
    assert "seed: 7" in summary
    duration = [line for line in summary if line.startswith("duration: ")][0]
    from labpgt.runfile import RunReader

    with RunReader(path) as reader:  # from the first status row to the last step or status row
        history, steps = reader.status_history(), reader.steps()
        expected = max(history[-1]["time_s"], float(steps["time_s"][-1])) - history[0]["time_s"]
    assert duration == f"duration: {expected:.1f} s"
