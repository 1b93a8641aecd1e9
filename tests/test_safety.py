"""The rig is left safe on every exit path, checked on the simulated instruments themselves:
RF off, the magnet current ramped (never stepped) to zero, its output off."""
from __future__ import annotations

import signal

import numpy as np
import pytest

from instruments.station import Station
from labpgt.reservoirs.encoding import BandReadout, KnobEncoder
from labpgt.reservoirs.station import StationReservoir
from labpgt.reservoirs.recovery import MeasurementFailed
from sim.server import SimServer

RAMP_STEP_A = 0.05  # the simulated station's ramp_step_a
U = np.array([[0.1, -0.2], [0.3, 0.4], [-0.5, 0.0]])


class Boom(RuntimeError):
    pass


def boom(*args, **kwargs):
    raise Boom("injected failure")


def assert_left_safe(server):
    sg, cs, sa = (server.instruments[r] for r in ("signal_generator", "current_source", "spectrum_analyzer"))
    assert sg.output is False, "RF left on"
    assert cs.output is False, "magnet output left on"
    assert abs(cs.i_set) < 1e-9, f"setpoint left at {cs.i_set} A"
    drive = np.array([i for _, i in cs.drive_log])
    assert drive.max() > 1.0, "the magnet was never energised: nothing was tested"
    steps = np.abs(np.diff(drive))
    assert steps.max() <= RAMP_STEP_A * (1 + 1e-9), f"the current jumped by {steps.max():.4f} A"
    assert drive[-1] == 0.0


def run_until(stage: str, server, tmp_path):
    station = Station.from_text(server.station_toml(), "<safety test>")
    with station:
        readout = BandReadout(center_hz=2.07e9, span_hz=20e6, points=401, rbw_hz=50e3, n_bands=4)
        encoder = KnobEncoder(n_nodes=1, reference_hz=2.07e9, current_min_a=-2.5, current_max_a=2.5)
        reservoir = StationReservoir(station, encoder, readout, simulated=True)
        reservoir.measure(U, current_a=1.8, kind="train", step=0, sample_index=np.arange(3))  # energised
        sg, sa = station.signal_generator, station.spectrum_analyzer
        if stage == "settings":
            sg.configure_cw = boom
        elif stage == "sweep":
            sa.single_sweep = boom
        elif stage == "trace read":
            sa.read_trace = boom
        elif stage == "features":
            class Broken:  # the readout is frozen: stand in for it
                def __getattr__(self, name):
                    return boom if name == "features" else getattr(readout, name)
            reservoir.readout = Broken()
        elif stage == "run-file write":
            from labpgt.runfile import RunFile
            run = RunFile.create(tmp_path / "r.h5", n_params=1, features_per_measurement=4, trace_points=401)
            run.measurements_batch = boom
            reservoir.recorder = run
        elif stage == "ctrl-c":
            def interrupt(*a, **k):
                raise KeyboardInterrupt
            sg.configure_cw = interrupt
        elif stage == "sigint":
            sa.single_sweep = lambda: signal.raise_signal(signal.SIGINT)
        elif stage == "sigterm":
            from instruments.interrupts import terminate_as_interrupt
            sigterm = terminate_as_interrupt()
            sigterm.__enter__()
            sa.single_sweep = lambda: signal.raise_signal(signal.SIGTERM)
        elif stage == "failed instrument":
            server.instruments["spectrum_analyzer"].faults.set_rate("timeout", 1.0)
            sa.sweep_timeout_margin_s = 0.2
        try:
            reservoir.measure(U, current_a=1.8, kind="train", step=1, sample_index=np.arange(3))
        finally:
            if stage == "sigterm":
                sigterm.__exit__(None, None, None)


@pytest.mark.parametrize("stage, error", [
    ("settings", Boom), ("sweep", Boom), ("trace read", Boom), ("features", Boom), ("run-file write", Boom),
    ("ctrl-c", KeyboardInterrupt), ("sigint", KeyboardInterrupt), ("sigterm", KeyboardInterrupt),
])
def test_an_exit_at_every_stage_leaves_the_rig_safe(stage, error, tmp_path):
    with SimServer(seed=3, timeout_s=0.3) as server:
        with pytest.raises(error) as info:
            run_until(stage, server, tmp_path)
        if stage == "sigterm":
            assert type(info.value).__name__ == "Terminated"
        assert_left_safe(server)
        assert server.instruments["spectrum_analyzer"].continuous is True


def test_a_failed_analyzer_still_leaves_rf_off_and_the_magnet_ramped_down(tmp_path):
    with SimServer(seed=3, timeout_s=0.3) as server:
        with pytest.raises((MeasurementFailed, Exception)) as info:
            run_until("failed instrument", server, tmp_path)
        text = str(info.value) + "".join(getattr(info.value, "__notes__", []))
        assert "spectrum_analyzer" in text
        assert_left_safe(server)  # the analyzer never answers, the other two are safe regardless
        server.instruments["spectrum_analyzer"].faults.clear()


def test_link_faults_during_the_safe_state_are_retried(tmp_path):
    with SimServer(seed=3, timeout_s=0.3) as server:
        station = Station.from_text(server.station_toml(), "<safety test>")
        with station:
            station.current_source.ramp_to(1.2)
            station.signal_generator.enable_rf_at(2.07e9, -20.0)  # the one RF switch
            for role in ("signal_generator", "current_source"):  # the next message to each fails
                server.instruments[role].faults.trigger("disconnect")
        injected = [k for r in ("signal_generator", "current_source")
                    for _, k, _ in server.instruments[r].faults.injected]
        assert injected == ["disconnect", "disconnect"]
        sg, cs = server.instruments["signal_generator"], server.instruments["current_source"]
        assert sg.output is False and cs.output is False and cs.i_set == 0.0
        steps = np.abs(np.diff([i for _, i in cs.drive_log]))
        assert steps.max() <= RAMP_STEP_A * (1 + 1e-9)


def test_a_second_ctrl_c_during_the_ramp_down_waits_for_zero_current():
    """Ctrl-C pressed again while the magnet ramps down: held until the rig is safe, then delivered."""
    with SimServer(seed=3, timeout_s=0.3) as server:
        station = Station.from_text(server.station_toml(), "<safety test>")
        with pytest.raises(KeyboardInterrupt):
            with station:
                cs = station.current_source
                cs.ramp_to(1.2)
                station.signal_generator.enable_rf_at(2.07e9, -20.0)  # the one RF switch
                ramp_to_zero = cs.ramp_to_zero

                def impatient_ramp():
                    signal.raise_signal(signal.SIGINT)  # the user presses Ctrl-C again mid-ramp
                    ramp_to_zero()

                cs.ramp_to_zero = impatient_ramp
        assert_left_safe(server)
