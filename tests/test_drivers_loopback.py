"""Every driver against its simulated instrument over loopback: raw sockets (spoken directly, and
through pyvisa-py when the station names a VISA library) and a pty via pyserial.

This exercises what scripted tests cannot: real terminations, binary blocks read by length,
timeouts and error queues on the wire. Both flavours: keysight (MXG, Kepco BOP, X-Series) and
alt (Windfreak SynthHD, Keithley 2400, R&S FSV).
"""
from __future__ import annotations

from instruments.check import check_station  # noqa: E402

import math

import numpy as np
import pytest

from instruments.errors import InstrumentError, LimitError, NoAnswerError
from instruments.station import Station
from sim.server import SimServer

FLAVOURS = ("keysight", "alt")


def through_pyvisa(station_text: str) -> str:
    """The station with every raw-socket role on pyvisa-py (a named VISA library) instead of the direct socket."""
    sections = station_text.split("\n[")
    for i, section in enumerate(sections):
        if "::SOCKET" in section:
            role = section.split("]", 1)[0]
            sections[i + 1] = sections[i + 1].replace(f"{role}.options]", f'{role}.options]\nvisa_library = "@py"', 1)
    return "\n[".join(sections)


@pytest.fixture(params=[(f, t) for f in FLAVOURS for t in ("socket", "pyvisa")], ids=lambda p: "-".join(p))
def station(request):
    flavour, transport = request.param
    with SimServer(seed=0, flavour=flavour) as server:
        text = server.station_toml()
        station = Station.from_text(through_pyvisa(text) if transport == "pyvisa" else text, f"<sim {flavour}>")
        with station:
            kinds = {type(inst.transport).__name__ for inst in station.instruments.values()}
            assert ("VisaTransport" in kinds) == (transport == "pyvisa")
            yield station


def test_connect_identifies_every_role(station):
    assert set(station.identities) == {"signal_generator", "current_source", "spectrum_analyzer"}
    for role, identity in station.identities.items():
        assert identity.count(",") >= 3, (role, identity)
    assert all(errors == [] for errors in station.connect_errors.values())


def test_signal_generator_round_trip(station):
    sg = station.signal_generator
    sg.configure_cw(2.0512345e9, -12.5)
    assert sg.frequency_hz == pytest.approx(2.0512345e9, abs=1.0)
    assert sg.power_dbm == pytest.approx(-12.5, abs=0.01)
    sg.frequency_hz = 2.1e9
    sg.power_dbm = -20.0
    assert (sg.frequency_hz, sg.power_dbm) == (pytest.approx(2.1e9, abs=1.0), pytest.approx(-20.0, abs=0.01))
    with pytest.raises(InstrumentError, match="enable_rf"):
        sg.output_enabled = True  # RF goes on only through enable_rf, never directly
    sg.configure_cw(2.1e9, -20.0)
    sg.enable_rf()  # reads the setting back, then switches RF on
    assert sg.output_enabled is True
    sg.safe_state()
    assert sg.output_enabled is False
    with pytest.raises(LimitError):
        sg.configure_cw(2.5e9, -10.0)


def test_current_source_ramp_and_safe_state(station):
    cs = station.current_source
    assert cs.compliance_voltage_v == pytest.approx(station.limits["current_source"]["compliance_v"])
    target = 0.5
    cs.ramp_to(target)
    assert cs.output_enabled is True
    assert cs.current_setpoint_a == pytest.approx(target, abs=1e-6)
    cs.safe_state()
    assert cs.output_enabled is False
    assert abs(cs.measured_current_a) <= cs.zero_tolerance_a


def test_spectrum_analyzer_configure_measure_peak(station):
    sa = station.spectrum_analyzer
    # the station settings were applied at connect
    assert sa.points == 401
    assert sa.span_hz == pytest.approx(20e6)
    assert sa.rbw_hz == pytest.approx(50e3)
    sa.configure(center_hz=2.05e9, span_hz=20e6, rbw_hz=50e3, points=401, reference_level_dbm=0.0)
    freqs, dbm = sa.measure()
    assert dbm.dtype == np.float32 and dbm.shape == (401,)
    assert freqs[0] == pytest.approx(2.04e9) and freqs[-1] == pytest.approx(2.06e9)
    assert np.all(np.isfinite(dbm)) and -200 < float(np.median(dbm)) < 30
    hz, power = sa.peak()
    assert math.isnan(hz) or 2.04e9 <= hz <= 2.06e9
    sa.safe_state()
    assert sa.continuous is True


def test_ring_measurement_end_to_end(station):
    """Drive the ring, sweep, and see the drive tone near the generator frequency."""
    sg, cs, sa = station.signal_generator, station.current_source, station.spectrum_analyzer
    cs.ramp_to(min(1.8, station.limits["current_source"]["current_a"][1]))
    sa.configure(center_hz=2.05e9, span_hz=20e6)
    sg.configure_cw(2.05e9, -10.0)
    sg.enable_rf()
    freqs, dbm = sa.measure()
    assert float(dbm.max()) > float(np.median(dbm)) + 10  # something stands out of the floor


def test_safe_exit_after_an_exception():
    with SimServer(seed=0, flavour="keysight") as server:
        station = Station.from_text(server.station_toml(), "<sim>")
        with pytest.raises(RuntimeError, match="boom"):
            with station:
                station.current_source.ramp_to(0.3)
                station.signal_generator.enable_rf_at(2.07e9, -20.0)
                raise RuntimeError("boom")
        # reconnect and read the state back
        with Station.from_text(server.station_toml(), "<sim>") as again:
            assert again.signal_generator.output_enabled is False
            assert again.current_source.output_enabled is False
            assert again.spectrum_analyzer.continuous is True


def test_check_reports_safe(station):
    report = check_station(station)
    assert report.ok, str(report)


def test_no_answer_from_a_closed_port():
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with SimServer(seed=0, flavour="keysight") as server:
        text = server.station_toml()
        station = Station.from_text(text, "<sim>", resources={
            "spectrum_analyzer": f"TCPIP::127.0.0.1::{port}::SOCKET"})
        # a refusal is reported with the time it took, not the 5 s timeout
        with pytest.raises(NoAnswerError, match=rf"no answer from spectrum_analyzer at "
                                                rf"TCPIP::127.0.0.1::{port}::SOCKET after 0(\.\d+)? s "
                                                rf"\(.*Connection refused"):
            station.connect()
        with Station.from_text(text, "<sim>") as again:
            assert again.signal_generator.output_enabled is False
            assert again.current_source.output_enabled is False
