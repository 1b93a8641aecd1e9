"""The command line end to end, on the embedded simulated ring and on `labpgt sim serve`."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from labpgt.cli import main


def run_cli(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "labpgt.cli", *args], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_measure_prints_the_ring_line_locked_to_the_drive(capsys, tmp_path):
    png = tmp_path / "trace.png"
    assert main(["measure", "--frequency", "2.07e9", "--power", "-10", "--current", "1.8", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    peaks = re.findall(r"peak (\d): (\d\.\d+) GHz\s+(-?\d+\.\d+) dBm", out)
    assert peaks, out
    rank, freq_ghz, power_dbm = peaks[0]
    # at -10 dBm the drive sits well inside the ring's locking range: one strong line at the drive
    assert abs(float(freq_ghz) - 2.07) < 1e-4
    assert -30.0 < float(power_dbm) < 0.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_measure_rejects_a_current_beyond_the_station_limit(capsys):
    assert main(["measure", "--current", "7.5"]) == 2
    err = capsys.readouterr().err
    assert "current" in err and "7.5" in err and "2.5" in err


def test_check_on_the_embedded_station_reports_identities_and_safe_state(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "N5183B" in out and "BOP" in out and "N9020A" in out
    assert "safe" in out.lower()


def test_bad_station_file_names_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[station]\nname = "x"\n[signal_generator]\ndriver = "drivers.nowhere:Nothing"\n'
                   'resource = "TCPIP::127.0.0.1::5025::SOCKET"\n')
    assert main(["check", "--station", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "driver" in err


def test_sim_serve_then_check_from_another_process(tmp_path):
    station = tmp_path / "station.toml"
    serve = subprocess.Popen([sys.executable, "-m", "labpgt.cli", "sim", "serve", "--seed", "3",
                              "--station-out", str(station)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in serve.stdout:  # the server announces the station file once its ports are open
            lines.append(line)
            if "station file written to" in line:
                break
        assert station.exists(), "".join(lines)
        code, out, err = run_cli("check", "--station", str(station))
        assert code == 0, err
        assert "N5183B" in out and "safe" in out.lower()
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=30)
    assert serve.returncode == 0


def _final_params(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["checkpoints/params"][-1]


def test_train_then_inspect_and_resume_of_a_completed_run_changes_nothing(tmp_path):
    run = tmp_path / "run.h5"
    code, out, err = run_cli("train", "--budget", "320", "--out", str(run), "--no-progress", "--eval-every", "5")
    assert code == 0, err
    assert "test accuracy" in out and run.exists()
    code, out, err = run_cli("inspect", str(run))
    assert code == 0, err
    assert "completed" in out
    before = run.read_bytes()
    code, out, err = run_cli("train", "--resume", str(run))
    assert code == 2 and "completed" in err
    assert run.read_bytes() == before


# the twin's checkpoints carry its whole state (~300 kB: net, Adam moments, row buffer), so it checkpoints
# and evaluates less often: its ~400 steps still wrap its 1500-row buffer, the SIGTERM checkpoint it resumes
# from still holds a warmed-up twin, and evaluations and periodic checkpoints still come after the resume
@pytest.mark.parametrize("estimator", [["--estimator", "node", "--eval-every", "4", "--checkpoint-every", "3"],
                                       ["--estimator", "twin", "--eval-every", "20", "--checkpoint-every", "50"]],
                         ids=["node", "twin"])
def test_interrupted_run_resumes_to_the_same_final_parameters(tmp_path, estimator):
    budget = "3200"  # ~50 steps (node; ~400 for the twin): the interrupt below lands long before the end
    straight = tmp_path / "straight.h5"
    code, _, err = run_cli("train", *estimator, "--budget", budget, "--seed", "5", "--out", str(straight),
                           "--no-progress")
    assert code == 0, err

    broken = tmp_path / "broken.h5"
    proc = subprocess.Popen([sys.executable, "-m", "labpgt.cli", "train", *estimator, "--budget", budget, "--seed", "5",
                             "--out", str(broken), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # stop it somewhere in the middle: wherever it stops, the resumed run must end identically
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with h5py.File(broken, "r", swmr=True, libver="latest") as f:
                if len(f["steps/step"]) >= 4:
                    break
        except (OSError, KeyError):
            pass
        time.sleep(0.05)  # polling a file from outside, not synchronising instruments
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err  # aborted, not completed
    from labpgt.runfile import RunReader

    with RunReader(broken) as reader:
        assert reader.status == "aborted"

    code, out, err = run_cli("train", "--resume", str(broken), "--no-progress")
    assert code == 0, err
    assert np.array_equal(_final_params(straight), _final_params(broken))
    assert _final_params(straight).tobytes() == _final_params(broken).tobytes()


def test_replay_reproduces_a_run_and_reports_the_first_divergence(tmp_path):
    run = tmp_path / "run.h5"
    code, _, err = run_cli("train", "--budget", "320", "--seed", "2", "--out", str(run), "--no-progress")
    assert code == 0, err
    code, out, err = run_cli("replay", str(run))
    assert code == 0, err + out
    assert "bit for bit" in out

    # change one recorded setting: the replay must stop there and say where
    with h5py.File(run, "r+") as f:
        row = 40
        step = int(f["measurements/step"][row])
        sample = int(f["measurements/sample_index"][row])
        f["measurements/frequency_hz"][row] += 1.0
    code, out, err = run_cli("replay", str(run))
    assert code == 1
    assert "diverged" in out and f"step {step}" in out and f"sample {sample}" in out


def test_report_writes_plots_and_summary(tmp_path):
    run = tmp_path / "run.h5"
    code, _, err = run_cli("train", "--budget", "200", "--out", str(run), "--no-progress")
    assert code == 0, err
    code, out, err = run_cli("report", str(run), "--out", str(tmp_path / "rep"))
    assert code == 0, err
    pngs = sorted((tmp_path / "rep").glob("*.png"))
    assert len(pngs) >= 3 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    summary = (tmp_path / "rep" / "summary.txt").read_text()
    assert "status: completed" in summary


def test_train_on_the_alt_station_with_the_current_at_its_limit(tmp_path):
    """Windfreak over a pty, Keithley 2400 (1 A max), R&S FSV: the trained current stays inside."""
    from sim.server import SimServer

    from labpgt.runfile import RunReader

    with SimServer(seed=1, flavour="alt") as server:
        station = tmp_path / "alt.toml"
        station.write_text(server.station_toml())
        run = tmp_path / "alt.h5"
        assert main(["train", "--station", str(station), "--current-a", "1.0", "--budget", "96",
                     "--out", str(run), "--no-progress"]) == 0
    with RunReader(run) as reader:
        currents = reader.measurements.column("current_a")
        kinds = reader.measurements.column("kind")
        assert reader.status == "completed"
    # every request inside the station's limit; the trained value itself keeps room for the kicks
    assert currents.max() <= 1.0 and currents.min() >= 0.98
    evaluated = currents[kinds == 2]  # eval rows use the unperturbed current
    assert evaluated.size and evaluated.max() <= 1.0 - 3e-3 + 1e-12


@pytest.mark.parametrize("reservoir, estimator", [("esn", "node"), ("ring", "node"), ("esn", "node-token"),
                                                  ("ring", "node-token")])
def test_transformer_trains_records_every_evaluation_and_replays(tmp_path, reservoir, estimator):
    # node-token credits each ring token separately (independent measurements) and an echo-state
    # sample as a whole: a replayed reservoir that forgot which it is would diverge at step 1
    from labpgt.runfile import RunReader

    run = tmp_path / f"{reservoir}-{estimator}.h5"
    code, out, err = run_cli("train", "--model", "transformer", "--task", "digits-seq", "--reservoir", reservoir,
                             "--estimator", estimator,
                             "--budget", "4096", "--eval-every", "4", "--out", str(run), "--no-progress")
    assert code == 0, err
    with RunReader(run) as reader:
        flags = reader.measurements.column("flags")
        nodes = reader.measurements.column("node")
        steps = reader.steps()
        assert reader.status == "completed"
    assert len(flags) and np.all(flags & 16)  # every evaluation recorded, marked simulated
    assert set(np.unique(nodes)) == set(range(8))  # digits-seq: 8 row tokens = 8 virtual nodes
    assert int(steps["measurements"][-1]) >= 4096
    code, out, err = run_cli("replay", str(run))
    assert code == 0 and "bit for bit" in out, err + out


def test_transformer_options_that_do_not_fit_are_refused(capsys):
    assert main(["train", "--model", "transformer", "--station", "lab.toml"]) == 2
    assert "takes no station" in capsys.readouterr().err
    assert main(["train", "--estimator", "backprop"]) == 2
    assert "transformer baseline" in capsys.readouterr().err
    assert main(["train", "--estimator", "node-token"]) == 2
    assert "only for the transformer" in capsys.readouterr().err
    assert main(["train", "--model", "transformer", "--estimator", "twin"]) == 2
    assert "allowed for the transformer model: node, pgt, spsa, oracle, backprop, node-token" in capsys.readouterr().err


def test_a_usage_mistake_is_one_line_naming_what_is_allowed(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--estimator", "nod"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'nod'" in err and "'node'" in err and "labpgt train --help" in err
