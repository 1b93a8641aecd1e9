"""What the rig layer refuses and reports: station values that keep the physics sane, drivers only
from the registry, the wrong instrument at an address, the error queue after a timeout, the
safe state as a read-back, and ``labpgt check`` as a table."""
from __future__ import annotations

from instruments.check import check_station  # noqa: E402

import os
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.keysight import MXG
from drivers.transport import TIMEOUT, ScriptedTransport
from instruments import registry
from instruments.errors import NoAnswerError, StationFileError, WrongInstrumentError
from instruments.safe_state import SafeStateReport
from instruments.station import Station
from labpgt.cli import main
from sim.server import SimServer

ROOT = Path(__file__).resolve().parents[1]
SIM_STATION = (ROOT / "instruments" / "stations" / "sim.toml").read_text()


def edited(old: str, new: str) -> str:
    assert old in SIM_STATION
    return SIM_STATION.replace(old, new)


# ====================================================================== station values
@pytest.mark.parametrize("value", ["inf", "1000", "1e-7", "1e-300", "nan", "-inf"])
def test_ramp_step_outside_what_a_supply_honours_is_refused_at_load(value):
    with pytest.raises(StationFileError) as info:
        Station.from_text(edited("ramp_step_a = 0.05", f"ramp_step_a = {value}"), "rigs/bench.toml")
    message = str(info.value)
    assert message.startswith("rigs/bench.toml: current_source.limits.ramp_step_a: ")
    assert "allowed: a number in [0.0001, 0.5] A" in message or "a positive number" in message


@pytest.mark.parametrize("value", ["inf", "1000", "1e-7", "1e-300", "nan"])
def test_ramp_rate_outside_what_a_supply_honours_is_refused_at_load(value):
    with pytest.raises(StationFileError, match=r"current_source.limits.ramp_rate_a_per_s: .*"
                                               r"allowed: a number in \[0.001, 10\] A/s"):
        Station.from_text(edited("ramp_rate_a_per_s = 2.0", f"ramp_rate_a_per_s = {value}"), "bench.toml")


@pytest.mark.parametrize("old,new,key", [
    ("current_a = [-2.5, 2.5]", "current_a = [nan, 2.5]", "current_source.limits.current_a"),
    ("current_a = [-2.5, 2.5]", "current_a = [-inf, inf]", "current_source.limits.current_a"),
    ("power_dbm = [-60.0, 0.0]", "power_dbm = [-60.0, nan]", "signal_generator.limits.power_dbm"),
    ("compliance_v = 20.0", "compliance_v = nan", "current_source.limits.compliance_v"),
    ("max_input_dbm = 20.0", "max_input_dbm = inf", "spectrum_analyzer.limits.max_input_dbm"),
])
def test_limit_bounds_must_be_finite(old, new, key):
    with pytest.raises(StationFileError, match=rf"bench.toml: {key}: .*(not finite|must be finite)"):
        Station.from_text(edited(old, new), "bench.toml")


def test_the_stated_bounds_accept_the_shipped_stations():
    for path in (ROOT / "instruments" / "stations").glob("*.toml"):
        Station.load(path)


# ====================================================================== no code from data
def test_a_driver_outside_the_registry_is_refused_and_never_imported(tmp_path, monkeypatch):
    evil = tmp_path / "evilmod.py"
    evil.write_text("import pathlib\npathlib.Path('PWNED').write_text('ran')\nclass X: pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # even when the directory is importable
    text = edited('driver = "drivers.keysight:MXG"', 'driver = "evilmod:X"')
    with pytest.raises(StationFileError, match=r"signal_generator.driver: 'evilmod:X' is not a registered driver; "
                                               r'allowed: "drivers.keysight:MXG", "drivers.windfreak:SynthHD"'):
        Station.from_text(text, "bench.toml")
    assert not (tmp_path / "PWNED").exists() and "evilmod" not in sys.modules


def test_python_m_labpgt_does_not_import_from_the_working_directory(tmp_path):
    (tmp_path / "evilmod.py").write_text("import pathlib\npathlib.Path('PWNED').write_text('ran')\nclass X: pass\n")
    station = tmp_path / "bad.toml"
    station.write_text(edited('driver = "drivers.keysight:MXG"', 'driver = "evilmod:X"'))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "labpgt.cli", "check", "--station", str(station)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not a registered driver" in done.stderr
    assert not (tmp_path / "PWNED").exists()


def test_installed_entry_point_drivers_are_found_by_name(monkeypatch):
    from importlib import metadata

    plugin = metadata.EntryPoint(name="acme:SG7", value="drivers.keysight:MXG", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda: {plugin.name: plugin})
    assert registry.available("signal_generator")[-1] == "acme:SG7"
    station = Station.from_text(edited('driver = "drivers.keysight:MXG"', 'driver = "acme:SG7"'), "bench.toml")
    assert station.roles["signal_generator"].driver is MXG


def test_registry_lists_the_shipped_drivers_per_role():
    assert registry.available("current_source")[:2] == ["drivers.kepco:BOP", "drivers.keithley:Keithley2400"]
    assert registry.resolve("drivers.keysight:MXG") is MXG


# ====================================================================== the wrong instrument
def test_swapped_addresses_are_refused_and_named():
    with SimServer(seed=0) as server:
        resources = {"signal_generator": server.resources["spectrum_analyzer"],
                     "spectrum_analyzer": server.resources["signal_generator"]}
        station = Station.from_text(server.station_toml(), "bench.toml", resources=resources)
        with pytest.raises(WrongInstrumentError) as info:
            station.connect()
        message = str(info.value)
        assert message.startswith(f"signal_generator at {resources['signal_generator']} answers *IDN? as "
                                  f"'Keysight Technologies,N9020A")
        assert "drivers.keysight:MXG expects a Keysight/Agilent MXG" in message
        assert "the addresses of signal_generator and spectrum_analyzer look swapped in bench.toml" in message
        assert server.instruments["spectrum_analyzer"].continuous  # the analyzer was sent nothing but *IDN?


def test_check_with_swapped_addresses_reports_every_row_and_exits_1(tmp_path, capsys):
    with SimServer(seed=0) as server:
        text = server.station_toml()
        sg, sa = server.resources["signal_generator"], server.resources["spectrum_analyzer"]
        path = tmp_path / "swapped.toml"
        path.write_text(text.replace(sg, "@SG@").replace(sa, sg).replace("@SG@", sa))
        assert main(["check", "--station", str(path)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert "FAILED (2 of 3 instruments)" in lines[0]
    rows = {line.split()[0]: line for line in lines[2:5]}
    assert "N9020A" in rows["signal_generator"] and "WRONG" in rows["signal_generator"]
    assert "KEPCO" in rows["current_source"] and rows["current_source"].rstrip().endswith("ok")
    assert "N5183B" in rows["spectrum_analyzer"] and "FAIL" in rows["spectrum_analyzer"]
    assert "look swapped" in out
    assert "the rig was left safe" not in out + err  # the generator's state is unknown: not claimed
    assert "RF output UNKNOWN" in err and "Do by hand now: switch the RF output" in err


def test_check_on_the_alt_flavour_names_a_swapped_current_source_and_analyzer():
    with SimServer(seed=0, flavour="alt") as server:
        cs, sa = server.resources["current_source"], server.resources["spectrum_analyzer"]
        text = server.station_toml().replace(cs, "@CS@").replace(sa, cs).replace("@CS@", sa)
        table = check_station(Station.from_text(text, "alt.toml"))
    sg_row, cs_row, sa_row = table.rows
    assert sg_row.ok and sg_row.output == "RF off"
    assert cs_row.identity.startswith("Rohde&Schwarz,FSV") and cs_row.identity_ok is False
    assert "current_source and spectrum_analyzer look swapped in alt.toml" in cs_row.problems[0]
    assert sa_row.identity.startswith("KEITHLEY") and not sa_row.ok
    assert not table.ok and not table.safe_report.safe  # the current source was never reached
    assert "current UNKNOWN (the current source was not reached)" in str(table.safe_report)


def test_check_reports_what_the_rig_was_found_in_and_leaves_it_safe(capsys):
    with SimServer(seed=0, start_state="unsafe") as server:
        table = check_station(Station.from_text(server.station_toml(), "found.toml"))
        source = server.instruments["current_source"]
        assert source.output is False and source.i_set == 0.0
    sg, cs, _ = table.rows
    assert sg.found == "RF ON at 2.6e+09 Hz, 19 dBm (OUTSIDE the limits)" and sg.output == "RF off"
    assert cs.found == "output ON, 1.5 A flowing (set-point 1.5 A)" and cs.output == "output off, 0 A"
    assert table.ok and table.safe_report.safe


def test_check_times_a_refusal_as_it_happened(tmp_path, capsys):
    import socket

    with socket.socket() as probe:  # a port nobody listens on: refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with SimServer(seed=0) as server:
        text = server.station_toml().replace(server.resources["spectrum_analyzer"],
                                             f"TCPIP::127.0.0.1::{port}::SOCKET")
        table = check_station(Station.from_text(text, "refused.toml"))
    sa = table.rows[2]
    assert not sa.ok and sa.seconds < 2.0, sa  # not the 5 s timeout
    assert f"NoAnswerError after {sa.seconds:.2f} s" in sa.problems[0]
    assert "after 5 s" not in sa.problems[0]
    assert table.rows[0].ok and table.rows[1].ok and table.safe_report.safe


# ====================================================================== the error queue after a timeout
def test_the_error_queue_is_drained_after_a_timeout_before_the_next_setting(caplog):
    sg = MXG(ScriptedTransport.for_driver(MXG, [
        (b"SOUR:FREQ?\n", TIMEOUT),
        # before the next exchange: the queue read empty, its entry kept as the timeout's
        (b"SYST:ERR?\n", b'-410,"Query INTERRUPTED"\n'), (b"SYST:ERR?\n", b'+0,"No error"\n'),
        (b"SOUR:POW -20.00\n", None), (b"*OPC?\n", b"1\n"), (b"SYST:ERR?\n", b'+0,"No error"\n'),
    ]), limits={"frequency_hz": [1.9e9, 2.3e9], "power_dbm": [-60.0, 0.0]}, station_file="t.toml")
    with sg.transport:
        with pytest.raises(NoAnswerError):
            sg.frequency_hz
        sg.power_dbm = -20.0  # not blamed for the -410
    assert sg.stale_errors == [(-410, "Query INTERRUPTED")]
    assert "error queue entries left from before a timeout" in caplog.text


# ====================================================================== the safe state, read back
def test_a_lagging_read_back_does_not_skip_the_ramp_down():
    with SimServer(seed=0, realtime=False) as server:
        with Station.from_text(server.station_toml(), "<lag>") as station:
            cs = station.current_source
            cs.ramp_to(1.0)
            coil = server.instruments["current_source"]
            coil.coil.command(0.0, 0.0, 20.0)  # the read-back now lags far behind the 1 A set-point
            assert abs(cs.measured_current_a) < 0.5 and cs.current_setpoint_a == 1.0
            steps_before = len(coil.drive_log)
        drive = [i for _, i in list(coil.drive_log)[steps_before:]]
        assert len(drive) >= 20 and drive[-1] == 0.0  # ramped down from 1 A in 0.05 A steps
        assert max(abs(a - b) for a, b in zip([1.0] + drive, drive)) <= 0.05 + 1e-9
        assert station.safe_report.safe


def test_report_says_safe_only_from_the_read_back():
    report = SafeStateReport("station 'x'", 0.01, rf_output=False, current_output=False, current_setpoint_a=0.0,
                             measured_current_a=0.02, resources={"current_source": "GPIB0::6::INSTR"},
                             roles=("signal_generator", "current_source"))
    assert not report.safe
    assert str(report).startswith("WARNING: THE RIG MAY NOT BE SAFE")
    assert "ramp the current source at GPIB0::6::INSTR slowly to 0 A" in str(report)
    report.measured_current_a = 0.001
    assert report.safe and str(report).startswith("the rig was left safe (read back: RF output off; current 0.001 A")


def test_cli_prints_the_read_back_with_an_error(tmp_path, capsys):
    with SimServer(seed=0, start_state="unsafe") as server:
        path = tmp_path / "station.toml"
        path.write_text(server.station_toml())
        assert main(["measure", "--station", str(path), "--current", "1.0", "--frequency", "2.5e9"]) == 2
    err = capsys.readouterr().err
    assert "error: signal_generator: --frequency = 2500000000.0 is outside the allowed range" in err
    assert "the rig was left safe (read back: RF output off; current 0 A measured, set-point 0 A" in err


def test_sim_serve_offers_the_unsafe_start_state():
    from labpgt.cli import build_parser

    args = build_parser().parse_args(["sim", "serve", "--start-state", "unsafe"])
    assert args.start_state == "unsafe"
    with pytest.raises(ValueError, match="allowed: reset, unsafe"):
        SimServer(start_state="dangerous")


class _InterruptAfter:
    """Stands in for the ramp's wall-clock wait: the operator presses Ctrl-C at the n-th step."""

    def __init__(self, steps: int):
        self.steps, self.waits = steps, 0

    def __call__(self, seconds: float) -> None:
        self.waits += 1
        if self.waits == self.steps:
            raise KeyboardInterrupt


def test_ctrl_c_during_the_start_up_ramp_leaves_the_magnet_ramped_down():
    # real pacing against the virtual-clock simulator: the read-back lags the set-points just written
    with SimServer(seed=0) as server:
        text = server.station_toml().replace('pacing = "virtual"', 'pacing = "real"')
        station = Station.from_text(text, "<ctrl-c>", wait=_InterruptAfter(10))
        with pytest.raises(KeyboardInterrupt):
            with station:
                station.current_source.ramp_to(1.8)
        source = server.instruments["current_source"]
        drive = [i for _, i in source.drive_log]
        assert max(drive) >= 0.45  # the magnet was energised to ten steps
        assert source.output is False and source.i_set == 0.0
        assert max(abs(a - b) for a, b in zip(drive, drive[1:])) <= 0.05 + 1e-9  # ramped down, never jumped
        assert station.safe_report.safe
