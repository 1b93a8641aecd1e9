"""RF safety as an invariant, proven from the simulated instruments' own wire log.

The simulated rig starts as a careless last user left it: RF on at the generator's full power,
at 2.6 GHz (outside the station's [1.9, 2.3] GHz), and current flowing in the magnet. Whatever
labpgt then does -- connect, train a step, measure, recover -- the log of every message the
instruments received must show that

* RF went off before the magnet was touched, and before anything else but the identity and
  error-queue queries reached the generator;
* RF was never switched on except at a setting inside the limits that the client had set and
  read back (a frequency and a power query after the last setting) before switching on;
* the magnet's set-point never changed while RF was on at a setting outside the limits.
"""
from __future__ import annotations

import numpy as np
import pytest

from instruments.errors import InstrumentError
from instruments.station import Station
from labpgt.cli import main
from labpgt.reservoirs.encoding import BandReadout, KnobEncoder
from labpgt.reservoirs.station import StationReservoir
from sim.server import SimServer

FREQUENCY_LIMITS_HZ = (1.9e9, 2.3e9)  # the simulated station's [signal_generator.limits]
POWER_LIMITS_DBM = (-60.0, 0.0)
#: per flavour: how the generator's frequency and power are set and read on the wire
SET_AND_QUERY = {
    "keysight": (("SOUR:FREQ ", "SOUR:POW "), ("SOUR:FREQ?", "SOUR:POW?")),
    "alt": (("f", "W"), ("f?", "W?")),
}
CURRENT_A = {"keysight": 1.8, "alt": 0.8}
#: the commands that switch RF on (the Windfreak's RF needs h1; E1 and r1 alone leave it muted)
ENABLES = {"keysight": ("OUTP:STAT 1", "OUTP:STAT ON", "OUTP 1", "OUTP ON"), "alt": ("h1",)}


def valid(entry) -> bool:
    return (FREQUENCY_LIMITS_HZ[0] <= entry.frequency_hz <= FREQUENCY_LIMITS_HZ[1]
            and POWER_LIMITS_DBM[0] <= entry.power_dbm <= POWER_LIMITS_DBM[1])


def generator_commands(message: str, flavour: str) -> list[str]:
    """A message split into the commands it holds (SCPI: ';'; Windfreak: letters, e.g. 'C0f2070W-20')."""
    if flavour == "keysight":
        return [part.lstrip(":") for part in message.split(";")]
    import re
    return re.findall(r"[A-Za-z+\-~][^A-Za-z+\-~]*", message)


def check_wire_log(entries, flavour: str) -> dict:
    """Assert the invariants over a wire log; returns a few facts for the caller's own checks."""
    assert entries, "nothing reached the instruments"
    sets, queries = SET_AND_QUERY[flavour]
    first = entries[0]
    assert first.rf_on and not valid(first), "the simulator did not start in the unsafe state"
    set_since_read_back = {"frequency": False, "power": False}
    read_back_since_set = {"frequency": False, "power": False}
    rf_off_at = None
    enables = []
    for before, entry in zip([first] + entries[:-1], entries):
        if entry.role == "signal_generator":
            # commands in their order (several may share a message, or a serial packet)
            for command in generator_commands(entry.message, flavour):
                if command in ENABLES[flavour]:
                    assert all(set_since_read_back.values()) and all(read_back_since_set.values()), (
                        f"{command!r} in {entry} switched RF on without a setting set and read back first")
                    enables.append(entry.index)
                for name, prefix, query in zip(("frequency", "power"), sets, queries):
                    if command == query:
                        read_back_since_set[name] = True
                    elif command.startswith(prefix) and not command.endswith("?"):
                        set_since_read_back[name], read_back_since_set[name] = True, False
        if entry.rf_on and rf_off_at is not None:
            assert valid(entry), f"RF on at an invalid setting after {entry}"
        if not entry.rf_on and rf_off_at is None:
            rf_off_at = entry.index
        if entry.current_setpoint_a != before.current_setpoint_a or entry.current_output != before.current_output:
            assert not entry.rf_on or valid(entry), f"the magnet moved with RF on at an unchecked setting: {entry}"
            assert rf_off_at is not None, f"the magnet moved before RF was switched off: {entry}"
    assert rf_off_at is not None, "RF was never switched off"
    touched = [e.index for e in entries if e.role == "current_source"]
    assert not touched or rf_off_at < touched[0], "the current source was talked to while RF was on, unchecked"
    before_off = [e.message for e in entries[:rf_off_at] if e.role == "signal_generator"]
    return {"enables": enables, "rf_off_at": rf_off_at, "before_off": before_off}


@pytest.mark.parametrize("flavour", ["keysight", "alt"])
def test_training_from_an_unsafe_rig_never_enables_rf_unchecked(flavour):
    with SimServer(seed=2, flavour=flavour, start_state="unsafe", wire_log=True) as server:
        cs = server.instruments["current_source"]
        assert cs.output and cs.measured_current() > 0.5  # current flowing at the start
        station = Station.from_text(server.station_toml(), "<rf safety>")
        with station:
            readout = BandReadout(center_hz=2.07e9, span_hz=20e6, points=401, rbw_hz=50e3, n_bands=4)
            encoder = KnobEncoder(n_nodes=1, reference_hz=2.07e9, current_min_a=-1.0, current_max_a=1.9)
            reservoir = StationReservoir(station, encoder, readout, simulated=True)
            u = np.array([[0.1, -0.2], [0.3, 0.4]])
            reservoir.measure(u, current_a=CURRENT_A[flavour], kind="train", step=0, sample_index=np.arange(2))
        facts = check_wire_log(list(server.wire_log.entries), flavour)
        assert len(facts["enables"]) == 1  # RF on once, through the one switch
        # before RF went off the generator heard only its identity queries and its error queue's
        assert len(facts["before_off"]) <= 3 and all(m in ("*IDN?", "SYST:ERR?", "+", "-", "v1", "+-v1")
                                                     for m in facts["before_off"]), facts["before_off"]
        sg = server.instruments["signal_generator"]
        assert not (sg.output if flavour == "keysight" else sg.channels[0].h)
        assert cs.output is False and cs.i_set == 0.0


def test_measure_from_an_unsafe_rig_ramps_with_rf_off_then_enables_at_the_request(tmp_path, capsys):
    with SimServer(seed=2, start_state="unsafe", wire_log=True) as server:
        path = tmp_path / "station.toml"
        path.write_text(server.station_toml())
        assert main(["measure", "--station", str(path), "--current", "1.2", "--frequency", "2.06e9",
                     "--power", "-15"]) == 0
        facts = check_wire_log(list(server.wire_log.entries), "keysight")
        assert len(facts["enables"]) == 1
        enabled = server.wire_log.entries[facts["enables"][0]]
        assert (enabled.frequency_hz, enabled.power_dbm) == (2.06e9, -15.0)
        ramps = [e for e in server.wire_log.entries if e.role == "current_source" and e.message.startswith("CURR ")]
        assert ramps and all(not server.wire_log.entries[e.index].rf_on for e in ramps)
    out = capsys.readouterr().out
    assert "the rig was left safe (read back: RF output off; current 0 A measured" in out


def test_a_generator_left_on_is_parked_at_connect_and_read_back():
    with SimServer(seed=0, start_state={"generator_power_dbm": 10.0, "current_a": 0.0}, wire_log=True) as server:
        with Station.from_text(server.station_toml(), "<rf safety>") as station:
            sg = server.instruments["signal_generator"]
            assert sg.output is False and (sg.frequency, sg.power) == (2.1e9, -60.0)  # mid-band, lowest power
            with pytest.raises(InstrumentError, match="no validated frequency and power"):
                station.signal_generator.enable_rf()  # the parking setting is not a request
            assert sg.output is False
        messages = [e.message for e in server.wire_log.entries if e.role == "signal_generator"]
        assert messages.index("OUTP:STAT 0") < messages.index("SOUR:FREQ?")


def test_a_reconnected_generator_is_parked_and_rf_comes_back_only_validated():
    with SimServer(seed=1, start_state="unsafe", wire_log=True) as server:
        with Station.from_text(server.station_toml(), "<rf safety>") as station:
            readout = BandReadout(center_hz=2.07e9, span_hz=20e6, points=401, rbw_hz=50e3, n_bands=4)
            encoder = KnobEncoder(n_nodes=1, reference_hz=2.07e9, current_min_a=0.0, current_max_a=1.9)
            reservoir = StationReservoir(station, encoder, readout, simulated=True)
            u = np.array([[0.0, 0.0]])
            reservoir.measure(u, current_a=1.0, kind="train", step=0, sample_index=np.arange(1))
            server.instruments["signal_generator"].faults.trigger("disconnect")
            reservoir.measure(u, current_a=1.0, kind="train", step=1, sample_index=np.arange(1))
            assert reservoir.recovery.recovered >= 1
        facts = check_wire_log(list(server.wire_log.entries), "keysight")
        assert len(facts["enables"]) == 2  # once at the start, once after the reconnect
