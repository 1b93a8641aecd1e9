"""Station files, limits, ramps and the safe state, against scripted instruments (no sockets)."""
from __future__ import annotations

from instruments.check import check_station  # noqa: E402

import re
from pathlib import Path

import pytest

from drivers.transport import TIMEOUT, ScriptedTransport
from instruments.errors import InstrumentError, LimitError, NoAnswerError, StationFileError
from instruments.station import Station

STATION = """\
[station]
name = "test rig"
pacing = "real"
[signal_generator]
driver = "drivers.keysight:MXG"
resource = "TCPIP::127.0.0.1::40123::SOCKET"
[signal_generator.options]
timeout_s = 5.0
[signal_generator.limits]
frequency_hz = [1.9e9, 2.3e9]
power_dbm = [-60.0, 0.0]
[current_source]
driver = "drivers.kepco:BOP"
resource = "TCPIP::127.0.0.1::40124::SOCKET"
[current_source.limits]
current_a = [-2.5, 2.5]
compliance_v = 20.0
ramp_rate_a_per_s = 2.0
ramp_step_a = 0.05
[spectrum_analyzer]
driver = "drivers.keysight:XSeries"
resource = "TCPIP::127.0.0.1::40125::SOCKET"
[spectrum_analyzer.limits]
max_input_dbm = 20.0
frequency_hz = [1.0e9, 3.0e9]
[spectrum_analyzer.settings]
span_hz = 20e6
rbw_hz = 50e3
points = 401
reference_level_dbm = 0.0
"""

OPC = (b"*OPC?\n", b"1\n")
NO_ERR_K = (b"SYST:ERR?\n", b'+0,"No error"\n')
NO_ERR_RS = (b"SYST:ERR?\n", b'0,"No error"\n')

SG_CONNECT = [
    (b"*IDN?\n", b"Agilent Technologies, N5181A, MY50140000, A.01.20\n"), NO_ERR_K,
    # RF off first thing, whatever state it was left in; then the vendor set-up; then parked: the
    # middle of the band at the lowest power, read back
    (b"OUTP:STAT 0\n", None), OPC, NO_ERR_K,
    (b"OUTP:MOD OFF\n", None), OPC, NO_ERR_K,
    (b"SOUR:FREQ 2100000000.00;:SOUR:POW -60.00;*OPC?;:SYST:ERR?\n", b'1;+0,"No error"\n'),
    (b"SOUR:FREQ?\n", b"+2.10000000000000E+09\n"), (b"SOUR:POW?\n", b"-6.00000000E+001\n"),
]
CS_CONNECT = [
    (b"*IDN?\n", b"KEPCO,BIT 4886 36-12  08-04-2023,H249977,4.04-1.82\n"), NO_ERR_RS,
    (b"FUNC:MODE?\n", b"1\n"),
    (b"VOLT 20.000000\n", None), OPC, NO_ERR_RS,
]
SA_CONNECT = [
    (b"*IDN?\n", b"Keysight Technologies,N9020A,MY12345678,A.14.16\n"), NO_ERR_K,
    (b"INST:SEL SA;:CONF:SAN;:FORM:DATA REAL,32;:FORM:BORD SWAP;:CALC:MARK1:MODE POS\n", None), OPC, NO_ERR_K,
    (b"SENS:FREQ:SPAN 20000000.000;:SENS:BAND:RES 50000.000;:SENS:SWE:POIN 401;:DISP:WIND:TRAC:Y:RLEV 0.00\n",
     None), OPC, NO_ERR_K,
]
# the safe steps, then the read-back that says they worked
SG_READBACK = [(b"OUTP:STAT?\n", b"0\n")]
CS_READBACK = [(b"OUTP?\n", b"0\n"), (b"CURR?\n", b"0.00000E+00\n"), (b"MEAS:CURR?\n", b"0.00000E+00\n")]
SA_READBACK = [(b"INIT:CONT?\n", b"1\n")]
SG_SAFE = [(b"OUTP:STAT 0\n", None), OPC, NO_ERR_K] + SG_READBACK
SA_SAFE = [(b"INIT:CONT 1\n", None), OPC, NO_ERR_K] + SA_READBACK


def scripted(sg=(), cs=(), sa=()):
    return {
        "signal_generator": ScriptedTransport(list(sg), resource="TCPIP::127.0.0.1::40123::SOCKET"),
        "current_source": ScriptedTransport(list(cs), resource="TCPIP::127.0.0.1::40124::SOCKET"),
        "spectrum_analyzer": ScriptedTransport(list(sa), resource="TCPIP::127.0.0.1::40125::SOCKET"),
    }


def edited(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


# ====================================================================== station files
@pytest.mark.parametrize("old, new, key, allowed", [
    ('driver = "drivers.kepco:BOP"', 'driver = "drivers.kepco:BOB"', "current_source.driver",
     '"drivers.kepco:BOP", "drivers.keithley:Keithley2400"'),
    ('driver = "drivers.kepco:BOP"', 'driver = "drivers.tektronix:PS"', "current_source.driver",
     '"drivers.kepco:BOP", "drivers.keithley:Keithley2400"'),
    ('driver = "drivers.kepco:BOP"', 'driver = "drivers.keysight:MXG"', "current_source.driver",
     '"drivers.kepco:BOP"'),
    ('resource = "TCPIP::127.0.0.1::40123::SOCKET"', 'resource = "TCPIP::127.0.0.1:40123::SOCKET"',
     "signal_generator.resource", "TCPIP[n]::host::port::SOCKET"),
    ('resource = "TCPIP::127.0.0.1::40125::SOCKET"', 'resource = "192.168.1.60"',
     "spectrum_analyzer.resource", "GPIB[n]::address"),
    ("power_dbm = [-60.0, 0.0]", "power_dbm = [-60.0, 25.0]", "signal_generator.limits.power_dbm",
     "[-144, 19] dBm (MXG)"),
    ("current_a = [-2.5, 2.5]", "current_a = [-20.0, 20.0]", "current_source.limits.current_a",
     "[-12, 12] A (BOP)"),
    ("current_a = [-2.5, 2.5]", "current_a = [2.5, -2.5]", "current_source.limits.current_a", "min <= max"),
    ("current_a = [-2.5, 2.5]", "current_a = [0.5, 2.5]", "current_source.limits.current_a", "min <= 0 <= max"),
    ("compliance_v = 20.0", "compliance_v = 50.0", "current_source.limits.compliance_v", "[0, 36] V (BOP)"),
    ("ramp_step_a = 0.05", "ramp_step_a = -0.05", "current_source.limits.ramp_step_a", "a positive number"),
    ("ramp_step_a = 0.05\n", "", "current_source.limits.ramp_step_a", "largest single step"),
    ("max_input_dbm = 20.0", "max_input_dbm = 40.0", "spectrum_analyzer.limits.max_input_dbm", "(XSeries)"),
    ("max_input_dbm = 20.0", "max_inputs_dbm = 20.0", "spectrum_analyzer.limits.max_inputs_dbm",
     "frequency_hz, max_input_dbm"),
    ("timeout_s = 5.0", "timeout = 5.0", "signal_generator.options.timeout", "timeout_s, visa_library"),
    ("timeout_s = 5.0", "timeout_s = -1", "signal_generator.options.timeout_s", "a number of seconds"),
    ('pacing = "real"', 'pacing = "fast"', "station.pacing", '"virtual" or "real"'),
    ('name = "test rig"', 'name = "test rig"\nowner = "me"', "station.owner", "name, pacing"),
    ("[spectrum_analyzer.settings]", "[spectrum_analyzer.setting]", "spectrum_analyzer.setting",
     "driver, resource, options, limits, settings"),
    ("points = 401", "points = 401.5", "spectrum_analyzer.settings.points", "a whole number"),
    ("span_hz = 20e6", "span_hz = 90e9", "spectrum_analyzer.settings.span_hz", "[0, 2.65e+10] Hz"),
    ('[signal_generator]\ndriver', '[signal_generators]\ndriver', "signal_generators",
     "station, signal_generator, current_source, spectrum_analyzer"),
])
def test_station_file_errors_name_file_key_and_allowed(old, new, key, allowed):
    with pytest.raises(StationFileError) as info:
        Station.from_text(edited(STATION, old, new), "rigs/bench.toml")
    message = str(info.value)
    assert message.startswith("rigs/bench.toml: ")
    assert key in message
    assert allowed in message


def test_missing_role_is_named():
    text = STATION.split("[spectrum_analyzer]")[0]
    with pytest.raises(StationFileError, match=r"bench.toml: spectrum_analyzer: is missing.*allowed"):
        Station.from_text(text, "bench.toml")


def test_load_keeps_the_text_verbatim_and_the_path(tmp_path: Path):
    path = tmp_path / "rig.toml"
    path.write_text(STATION)
    station = Station.load(path)
    assert station.config_text == STATION
    assert station.path == path
    assert station.pacing == "real" and station.name == "test rig"
    assert station.limits["current_source"]["ramp_step_a"] == 0.05
    with pytest.raises(StationFileError, match="not valid TOML"):
        Station.from_text("[station\n", "broken.toml")


def test_resources_can_be_overridden_and_are_validated():
    station = Station.from_text(STATION, "x.toml", resources={"current_source": "GPIB0::6::INSTR"})
    assert station.roles["current_source"].resource == "GPIB0::6::INSTR"
    with pytest.raises(StationFileError, match="current_source.resource"):
        Station.from_text(STATION, "x.toml", resources={"current_source": "GPIB0::six::INSTR"})


@pytest.mark.parametrize("resource", [
    "TCPIP0::192.168.1.50::5025::SOCKET", "TCPIP::localhost::inst0::INSTR", "TCPIP0::192.168.1.60::hislip0::INSTR",
    "TCPIP0::10.0.0.2::INSTR", "GPIB0::6::INSTR", "GPIB::19::INSTR", "USB0::0x2A8D::0x900E::MY55490134::INSTR",
    "ASRL/dev/ttyACM0::INSTR", "ASRL3::INSTR",
])
def test_shipped_resource_forms_are_accepted(resource):
    Station.from_text(STATION, "x.toml", resources={"signal_generator": resource})


def test_shipped_station_files_load():
    root = Path(__file__).resolve().parents[1] / "instruments" / "stations"
    lab = Station.load(root / "lab-example.toml")
    assert lab.pacing == "real"
    assert lab.roles["signal_generator"].resource == "TCPIP0::192.168.1.50::5025::SOCKET"
    assert lab.roles["current_source"].resource == "GPIB0::6::INSTR"
    assert lab.roles["spectrum_analyzer"].resource == "TCPIP0::192.168.1.60::hislip0::INSTR"
    assert "ASRL/dev/ttyACM0::INSTR" in lab.config_text
    Station.load(root / "sim.toml")


# ====================================================================== connecting
def test_connect_reads_identity_drains_errors_and_applies_settings():
    transports = scripted(SG_CONNECT + SG_SAFE, CS_CONNECT + [(b"OUTP?\n", b"0\n"), (b"CURR 0.000000\n", None), OPC,
                                                              NO_ERR_RS, (b"OUTP?\n", b"0\n")] + CS_READBACK,
                          SA_CONNECT + SA_SAFE)
    with Station.from_text(STATION, "x.toml", transports=transports) as station:
        assert station.identities["current_source"].startswith("KEPCO,BIT 4886")
        assert station.connect_errors == {"signal_generator": [], "current_source": [], "spectrum_analyzer": []}
    for t in transports.values():
        assert t.closed


def test_limits_are_enforced_before_sending():
    transports = scripted(SG_CONNECT, CS_CONNECT, SA_CONNECT)
    station = Station.from_text(STATION, "lab.toml", transports=transports).connect()
    before = {role: len(t.sent) for role, t in transports.items()}
    with pytest.raises(LimitError) as info:
        station.signal_generator.configure_cw(2.4e9, -10.0)
    assert re.search(r"signal_generator: frequency_hz = 2400000000.0 is outside the allowed range "
                     r"\[1.9e\+09, 2.3e\+09\] Hz .*lab.toml, \[signal_generator.limits\] frequency_hz",
                     str(info.value))
    with pytest.raises(LimitError, match="current_a.*lab.toml"):
        station.current_source.ramp_to(3.0)
    with pytest.raises(LimitError, match="power_dbm"):
        station.signal_generator.power_dbm = 1.0
    with pytest.raises(LimitError, match="center_hz"):
        station.spectrum_analyzer.center_hz = 3.5e9
    assert {role: len(t.sent) for role, t in transports.items()} == before


def test_model_read_from_idn_narrows_the_range():
    transports = scripted(SG_CONNECT + SG_SAFE,
                          [(b"*IDN?\n", b"KEPCO,BOP 20-2,E1,1.0\n")], [])
    station = Station.from_text(STATION, "lab.toml", transports=transports)
    with pytest.raises(StationFileError, match=r"current_source.limits.current_a.*BOP 20-2.*\[-2, 2\] A"):
        station.connect()


class Recorder:
    def __init__(self, fail_after=None):
        self.waits = []
        self.fail_after = fail_after

    def __call__(self, seconds):
        self.waits.append(seconds)
        if self.fail_after is not None and len(self.waits) == self.fail_after:
            raise KeyboardInterrupt("operator pressed Ctrl-C mid-ramp")


def test_ramp_steps_from_the_read_back_never_exceeding_the_step():
    recorder = Recorder()
    ramp = [(b"OUTP?\n", b"1\n"), (b"MEAS:CURR?\n", b"0.512\n"), (b"CURR?\n", b"0.512\n")]
    targets = [0.52 + 0.05 * k for k in range(1, 10)] + [1.0]
    transports = scripted(SG_CONNECT, CS_CONNECT + ramp, SA_CONNECT)
    station = Station.from_text(STATION, "lab.toml", transports=transports, wait=recorder).connect()
    cs_transport = transports["current_source"]
    cs_transport.extend([(f"CURR {v:.6f}\n".encode(), None) for v in
                         [0.512 + (1.0 - 0.512) * k / 10 for k in range(1, 11)]] + [OPC, NO_ERR_RS])
    station.current_source.ramp_to(1.0)
    cs_transport.assert_done()
    setpoints = [float(m[5:]) for m in cs_transport.sent if m.startswith(b"CURR ")]
    assert setpoints[-1] == 1.0
    steps = [b - a for a, b in zip([0.512] + setpoints, setpoints)]
    assert len(setpoints) == 10 and max(abs(s) for s in steps) <= 0.05 + 1e-12
    assert recorder.waits == pytest.approx([abs(s) / 2.0 for s in steps])  # step / rate, in wall time
    assert targets  # keeps the intent readable: ten steps of 48.8 mA


def test_virtual_pacing_does_not_wait():
    recorder = Recorder()
    text = edited(STATION, 'pacing = "real"', 'pacing = "virtual"')
    transports = scripted(SG_CONNECT, CS_CONNECT + [
        (b"OUTP?\n", b"1\n"), (b"MEAS:CURR?\n", b"0.0\n"), (b"CURR?\n", b"0.0\n"),
        (b"CURR 0.050000\n", None), (b"CURR 0.100000\n", None), OPC, NO_ERR_RS], SA_CONNECT)
    station = Station.from_text(text, "lab.toml", transports=transports, wait=recorder).connect()
    station.current_source.ramp_to(0.1)
    transports["current_source"].assert_done()
    assert recorder.waits == []


def test_ramp_with_output_off_starts_at_zero_and_switches_on():
    transports = scripted(SG_CONNECT, CS_CONNECT + [
        (b"OUTP?\n", b"0\n"), (b"CURR 0.000000\n", None), (b"OUTP 1\n", None), OPC, NO_ERR_RS,
        (b"CURR 0.050000\n", None), OPC, NO_ERR_RS], SA_CONNECT)
    station = Station.from_text(STATION, "lab.toml", transports=transports, wait=Recorder()).connect()
    station.current_source.ramp_to(0.05)
    transports["current_source"].assert_done()


def test_an_exception_mid_ramp_still_leaves_the_rig_safe():
    recorder = Recorder(fail_after=3)
    cs_script = CS_CONNECT + [
        (b"OUTP?\n", b"1\n"), (b"MEAS:CURR?\n", b"0.0\n"), (b"CURR?\n", b"0.0\n"),
        (b"CURR 0.050000\n", None), (b"CURR 0.100000\n", None), (b"CURR 0.150000\n", None),  # Ctrl-C here
        # the safe state: ramp to zero from the larger of the set-point and the (lagging) read-back,
        # wait for the coil, output off, then read the state back
        (b"OUTP?\n", b"1\n"), (b"MEAS:CURR?\n", b"0.04\n"), (b"CURR?\n", b"0.15\n"),
        (b"CURR 0.100000\n", None), (b"CURR 0.050000\n", None), (b"CURR 0.000000\n", None), OPC, NO_ERR_RS,
        (b"OUTP?\n", b"1\n"), (b"MEAS:CURR?\n", b"0.02\n"), OPC, (b"MEAS:CURR?\n", b"0.001\n"),
        (b"OUTP 0\n", None), OPC, NO_ERR_RS,
    ] + CS_READBACK
    transports = scripted(SG_CONNECT + SG_SAFE, cs_script, SA_CONNECT + SA_SAFE)
    with pytest.raises(KeyboardInterrupt):
        with Station.from_text(STATION, "lab.toml", transports=transports, wait=recorder) as station:
            station.current_source.ramp_to(1.0)
    for t in transports.values():
        assert t.closed and not t.remaining
    # the order across instruments: RF off first, the analyzer last
    assert transports["signal_generator"].sent[-4] == b"OUTP:STAT 0\n"
    assert transports["spectrum_analyzer"].sent[-4] == b"INIT:CONT 1\n"
    cs_sent = transports["current_source"].sent
    assert cs_sent.index(b"OUTP 0\n") > cs_sent.index(b"CURR 0.000000\n")


def test_every_safe_step_is_attempted_and_failures_are_reported():
    # the generator fails to switch off; the current is still ramped down and the analyzer still released
    sg = SG_CONNECT + [(b"OUTP:STAT 0\n", None), OPC, (b"SYST:ERR?\n", b'-221,"Settings conflict"\n'), NO_ERR_K,
                       (b"OUTP:STAT?\n", b"1\n")]  # read back: RF still on
    cs = CS_CONNECT + [(b"OUTP?\n", b"1\n"), (b"MEAS:CURR?\n", b"0.05\n"), (b"CURR?\n", b"0.05\n"),
                       (b"CURR 0.000000\n", None), OPC,
                       NO_ERR_RS, (b"OUTP?\n", b"1\n"), (b"MEAS:CURR?\n", b"0.0\n"), (b"OUTP 0\n", None), OPC,
                       NO_ERR_RS] + CS_READBACK
    transports = scripted(sg, cs, SA_CONNECT + SA_SAFE)
    with pytest.raises(InstrumentError, match=r"(?s)MAY NOT BE SAFE.*RF output on.*signal_generator: RF off "
                                              r"failed.*-221.*switch the RF output .* off") as info:
        with Station.from_text(STATION, "lab.toml", transports=transports, wait=Recorder()):
            pass
    report = info.value.report
    assert (report.rf_output, report.current_output, report.measured_current_a) == (True, False, 0.0)
    assert not report.safe
    for t in transports.values():
        assert t.closed and not t.remaining


def test_no_answer_names_role_resource_seconds_and_leaves_the_others_safe():
    transports = scripted(SG_CONNECT + SG_SAFE,
                          CS_CONNECT + [(b"OUTP?\n", b"0\n"), (b"CURR 0.000000\n", None), OPC, NO_ERR_RS,
                                        (b"OUTP?\n", b"0\n")] + CS_READBACK,
                          [(b"*IDN?\n", TIMEOUT)])
    transports["spectrum_analyzer"].timeout_s = 5.0
    station = Station.from_text(STATION, "lab.toml", transports=transports)
    with pytest.raises(NoAnswerError) as info:
        station.connect()
    assert str(info.value).startswith("no answer from spectrum_analyzer at TCPIP::127.0.0.1::40125::SOCKET after 5 s")
    assert "*IDN?" in str(info.value)  # what went unanswered
    assert transports["signal_generator"].sent[-4:] == [b"OUTP:STAT 0\n", b"*OPC?\n", b"SYST:ERR?\n", b"OUTP:STAT?\n"]
    assert transports["spectrum_analyzer"].sent == [b"*IDN?\n"]  # not asked again
    assert transports["spectrum_analyzer"].clears == 1  # device clear after the timeout
    for t in transports.values():
        assert t.closed and not t.remaining
    assert station.instruments == {}


def test_check_reports_identities_errors_and_the_safe_state():
    # a connected station: identities known, the queue read again, settings read back, made safe
    transports = scripted(
        SG_CONNECT + [NO_ERR_K, *SG_SAFE,
                      (b"SOUR:FREQ?\n", b"+2.10000000000000E+09\n"), (b"SOUR:POW?\n", b"-6.0E+001\n"), *SG_SAFE],
        CS_CONNECT + [NO_ERR_RS,
                      (b"OUTP?\n", b"0\n"), (b"CURR 0.000000\n", None), OPC, NO_ERR_RS, (b"OUTP?\n", b"0\n"),
                      *CS_READBACK, (b"CURR?\n", b"0.0\n"), (b"VOLT?\n", b"2.00000E+01\n"),
                      (b"OUTP?\n", b"0\n"), (b"CURR 0.000000\n", None), OPC, NO_ERR_RS, (b"OUTP?\n", b"0\n"),
                      *CS_READBACK],
        SA_CONNECT + [NO_ERR_K, *SA_SAFE, (b"SENS:FREQ:STAR?\n", b"+1.99000000E+09\n"),
                      (b"SENS:FREQ:STOP?\n", b"+2.01000000E+09\n"), (b"DISP:WIND:TRAC:Y:RLEV?\n", b"+0.0E+00\n"),
                      *SA_SAFE])
    transports["current_source"].pairs[1] = (b"SYST:ERR?\n", b'-222,"Data out of range"\n')
    transports["current_source"].pairs.insert(2, NO_ERR_RS)
    with Station.from_text(STATION, "lab.toml", transports=transports, wait=Recorder()) as station:
        report = check_station(station)
    assert not report.ok  # the current source's queue held an entry at connect
    sg, cs, sa = report.rows
    assert sg.ok and sa.ok and sg.identity_ok and sg.output == "RF off"
    assert cs.errors == [(-222, "Data out of range")] and not cs.ok
    assert cs.output == "output off, 0 A" and report.safe_report.safe
    text = str(report)
    assert "N9020A" in text and "FAILED (1 of 3 instruments)" in text and "-222 Data out of range" in text
    for t in transports.values():
        assert t.closed and not t.remaining


# ====================================================================== ramps, property-based
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(start=st.floats(-2.5, 2.5), target=st.floats(-2.5, 2.5), step=st.floats(0.001, 0.5))
def test_ramp_steps_are_small_inside_and_end_on_target(start, target, step):
    from drivers.kepco import BOP

    cs = BOP(ScriptedTransport([]), limits={"current_a": [-2.5, 2.5], "compliance_v": 20.0,
                                            "ramp_rate_a_per_s": 2.0, "ramp_step_a": step})
    steps = cs.ramp_steps(start, target)
    if start == target:
        assert steps == []
        return
    assert steps[-1] == pytest.approx(target, abs=1e-12)
    previous = start
    for value in steps:
        assert abs(value - previous) <= step * (1 + 1e-9)
        assert -2.5 - 1e-12 <= value <= 2.5 + 1e-12
        previous = value


def test_a_misspelt_limit_is_reported_as_unknown_before_the_missing_one(tmp_path):
    from sim.server import SimServer

    with SimServer(seed=0) as server:
        text = server.station_toml().replace("ramp_rate_a_per_s =", "ramp_rate_a_per_sec =")
    path = tmp_path / "typo.toml"
    path.write_text(text)
    with pytest.raises(StationFileError) as err:
        Station.load(path)
    # the misspelt key is what the error is about, not the "missing" key it was meant to be
    assert str(err.value).startswith(f"{path}: current_source.limits.ramp_rate_a_per_sec: is not a known limit")
