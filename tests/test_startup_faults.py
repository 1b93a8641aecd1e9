"""Start-up faults (connect, the first ramp, the probe, the set-up) recovered with the measurements' policy."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from instruments.station import Station
from labpgt.experiment.options import defaults
from labpgt.experiment.run import run_experiment
from labpgt.reservoirs.recovery import RecoveryPolicy, StartUpFailed
from labpgt.runfile import RunReader
from sim.control import ask, is_safe, true_state
from sim.server import SimServer

ROOT = Path(__file__).resolve().parents[1]


def _train(server, tmp_path, budget=64):
    station = tmp_path / "station.toml"
    station.write_text(server.station_toml())
    config = defaults()
    config.update(budget=budget, seed=1, progress=False, station=str(station), out=str(tmp_path / "run.h5"))
    return run_experiment(config)


@pytest.mark.parametrize("spec, role, phase", [
    ("current_source:timeout@1", "current_source", "connecting the station"),  # its *IDN?
    ("signal_generator:disconnect@4", "signal_generator", "connecting the station"),
    ("spectrum_analyzer:garbled@2", "station", "connecting the station"),  # whose reply it was is not known
    ("current_source:truncated@11", "current_source", "the first ramp and the probe sweep"),
    ("spectrum_analyzer:disconnect@11", "spectrum_analyzer", "the first ramp and the probe sweep"),
    ("spectrum_analyzer:error@11", "spectrum_analyzer", "the first ramp and the probe sweep"),
])
def test_a_start_up_fault_is_recovered_and_the_run_starts_and_records_it(tmp_path, spec, role, phase):
    with SimServer(seed=0, timeout_s=0.3, faults=spec) as server:
        outcome = _train(server, tmp_path)
        injected = [kind for insts in server.instruments.values() for _, kind, _ in insts.faults.injected]
        state = true_state(server)
    assert outcome.status == "completed" and len(injected) == 1
    assert is_safe(state)
    with RunReader(outcome.run_path) as r:
        faults = r.faults()
    assert list(faults["role"]) == [role] and all(faults["recovered"])
    assert faults["step"][0] == 0 and faults["measurement_row"][0] == 0
    assert str(faults["message"][0]).startswith(f"start-up, {phase}")


def test_a_start_up_fault_that_stays_gives_up_after_the_attempts_with_the_rig_safe(tmp_path):
    with SimServer(seed=0, timeout_s=0.2, faults="current_source:garbled=1.0") as server:
        with pytest.raises(StartUpFailed, match="failed 4 times at start-up"):
            _train(server, tmp_path)
        for inst in server.instruments.values():
            inst.faults.clear()
        state = true_state(server)
    assert not (tmp_path / "run.h5").exists()
    assert not state["rf_output"] and not state["current_output"]


def test_a_wrong_instrument_or_a_bad_setting_is_refused_at_once_not_retried(tmp_path):
    with SimServer(seed=0, timeout_s=0.3) as server:
        policy = RecoveryPolicy()
        station = Station.from_text(server.station_toml())
        calls = []

        def bad_setting():
            calls.append(1)
            raise ValueError("current_a = 9 A is outside the station's limits")  # a config error

        policy.start_up(station, "connecting the station", station.connect)
        with station:
            with pytest.raises(ValueError, match="outside"):
                policy.start_up(station, "the probe", bad_setting, not_faults=(ValueError,))
    assert calls == [1] and policy.start_up_faults == []


def test_the_soak_injects_from_the_first_message_and_still_starts(tmp_path):
    spec = importlib.util.spec_from_file_location("soak", ROOT / "scripts" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    # the generator's first message (its *IDN?) times out: before, faults began after the set-up
    faults = "seed=2;signal_generator:timeout@1;current_source:disconnect@3;spectrum_analyzer:error=0.002"
    out = soak.run_once(128, 2, faults, tmp_path, timeout_s=0.3)
    assert out["started"] and out["status"] == "completed"
    assert out["start_up_faults"] >= 2 and out["start_up_faults_unrecovered"] == 0
    assert out["safe_exit"] and out["measurements_lost"] == 0


def test_the_control_port_reports_the_true_state_and_hangs_an_instrument():
    with SimServer(seed=0, timeout_s=0.2, control_port=0) as server:
        port = server.control.port
        assert f"# simulator control: 127.0.0.1:{port}" in server.station_toml()
        station = Station.from_text(server.station_toml())
        with station:
            station.current_source.ramp_to(0.2)
            state = ask(port, "state")
            assert state["current_output"] and abs(state["coil_current_a"] - 0.2) < 1e-9
            assert abs(state["largest_current_step_a"] - 0.05) < 1e-9
            assert ask(port, "hang current_source")["hung"] == ["current_source"]
            report = station.leave_safe()
            assert not report.safe and "UNKNOWN" in str(report)
            assert ask(port, "state")["coil_current_a"] == pytest.approx(0.2)  # as it was left
            ask(port, "revive current_source")
            station.instruments["current_source"].recover()
        assert station.safe_report.safe and is_safe(ask(port, "state"))
        assert "error" in ask(port, "bogus")


def test_a_reply_that_comes_after_an_interrupted_query_is_not_taken_as_the_next_ones():
    with SimServer(seed=0, timeout_s=2.0, control_port=0) as server:
        station = Station.from_text(server.station_toml())
        station.connect()
        try:
            station.current_source.ramp_to(0.1)
            cs = station.current_source
            faults = server.instruments["current_source"].faults
            faults.slow_s = 0.3  # its reply comes late: after any clear's quiet window
            faults.trigger("slow")
            transport = cs.transport
            real_query = transport.query

            def interrupted(command):  # Ctrl-C while waiting for the reply
                transport.query = real_query
                transport.write(command)
                raise KeyboardInterrupt
            transport.query = interrupted
            with pytest.raises(KeyboardInterrupt):
                cs.synchronise()
            report = station.leave_safe()
        finally:
            station._shutdown()
        assert report.safe and not report.problems, str(report)
        assert is_safe(true_state(server))


def test_a_fault_on_the_read_back_is_asked_again_not_reported_as_unknown():
    with SimServer(seed=0, timeout_s=0.2) as server:
        station = Station.from_text(server.station_toml())
        station.connect()
        try:
            station.current_source.ramp_to(0.1)
            station.make_safe()
            server.instruments["signal_generator"].faults.trigger("timeout")  # its OUTP:STAT? read-back
            report = station.read_back_safe_state()
        finally:
            station._shutdown()
        injected = [k for _, k, _ in server.instruments["signal_generator"].faults.injected]
    assert injected == ["timeout"]
    assert report.rf_output is False and report.safe and not report.problems, str(report)
