"""How the simulated rig is found when a client first connects, and a log of what reached it.

A real bench is rarely found in its power-on state: the last user (or a crashed run) may have
left RF on at a high power and a frequency outside this rig's band, with current flowing through
the magnet. ``start_state="unsafe"`` (``labpgt sim serve --start-state unsafe``) starts the
simulated instruments that way, so clients can be tested against it:

* the generator's RF output on, at its highest power and at ``UNSAFE_FREQUENCY_HZ`` (outside the
  simulated station's [1.9, 2.3] GHz band);
* the current source in current mode with its output on and ``current_a`` flowing (1.5 A for the
  Kepco BOP, 0.8 A for the Keithley 2400), the coil settled there.

A dict gives the values instead: ``{"rf_on": bool, "generator_frequency_hz": Hz,
"generator_power_dbm": dBm, "current_a": A}`` (missing keys: as for "unsafe").

:class:`WireLog` records every message each simulated instrument received with the state of the
generator and the current source right after it: the evidence for "RF never went on before a
valid setting" and "the magnet never moved under an unchecked drive".

Standard library only; imports nothing of the project outside ``sim``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

UNSAFE_FREQUENCY_HZ = 2.6e9
START_STATES = ("reset", "unsafe")
_KEYS = ("rf_on", "generator_frequency_hz", "generator_power_dbm", "current_a")


def parse_start_state(state) -> Optional[dict]:
    """None / "reset" -> None (the instruments' power-on state); "unsafe" or a dict -> the values."""
    if state is None or state == "reset":
        return None
    if state == "unsafe":
        return {"rf_on": True}
    if isinstance(state, dict):
        unknown = [key for key in state if key not in _KEYS]
        if unknown:
            raise ValueError(f"unknown start-state key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(_KEYS)}")
        return dict(state)
    raise ValueError(f"start state {state!r}: allowed: {', '.join(START_STATES)} or a dict of {', '.join(_KEYS)}")


def apply_start_state(state: dict, instruments: dict) -> None:
    """Put the served instruments (role -> simulated instrument) in ``state`` before anyone connects."""
    from sim.instruments import SimKeithley2400, SimKepcoBOP, SimKeysightMXG, SimWindfreakSynthHD

    generator = instruments.get("signal_generator")
    source = instruments.get("current_source")
    rig = (generator or source).rig
    with rig.lock:
        frequency_hz = float(state.get("generator_frequency_hz", UNSAFE_FREQUENCY_HZ))
        rf_on = bool(state.get("rf_on", True))
        if isinstance(generator, SimKeysightMXG):
            generator.frequency = frequency_hz
            generator.power = float(state.get("generator_power_dbm", generator.P_MAX))
            generator.output = rf_on
        elif isinstance(generator, SimWindfreakSynthHD):
            channel = generator.channels[0]
            channel.freq_mhz = frequency_hz / 1e6
            channel.power = float(state.get("generator_power_dbm", generator.P_MAX))
            channel.h = channel.E = channel.r = int(rf_on)
        if isinstance(source, (SimKepcoBOP, SimKeithley2400)):
            default_a = 1.5 if isinstance(source, SimKepcoBOP) else 0.8
            current_a = float(state.get("current_a", default_a))
            source.mode = "CURR"
            if isinstance(source, SimKepcoBOP):
                source.v_set = 20.0  # in current mode VOLT is the compliance
            else:
                source.v_prot, source.i_range, source.i_range_auto = 21.0, 1.0, False
            source.i_set = current_a
            source.output = current_a != 0.0
            source._apply()
            source.coil.settle_now(rig.clock.now())  # it has been flowing for a while


@dataclass(frozen=True)
class WireEntry:
    """One message received by a simulated instrument, and the rig right after it."""

    index: int
    role: str
    message: str
    rf_on: bool
    frequency_hz: float
    power_dbm: float
    current_output: bool
    current_setpoint_a: float
    measured_current_a: float


class WireLog:
    """Called by the servers after every message (``observer(role, device, message)``)."""

    def __init__(self, rig):
        self.rig = rig
        self.entries: list[WireEntry] = []

    def _generator(self):
        from sim.instruments import SimWindfreakSynthHD

        generator = self.rig.generator
        if generator is None:
            return False, float("nan"), float("nan")
        if isinstance(generator, SimWindfreakSynthHD):
            channel = generator.channels[0]
            return bool(channel.h and channel.E and channel.r), channel.freq_mhz * 1e6, float(channel.power)
        return bool(generator.output), float(generator.frequency), float(generator.power)

    def __call__(self, role: str, device, message) -> None:
        text = message.decode("latin-1") if isinstance(message, (bytes, bytearray)) else str(message)
        with self.rig.lock:  # the snapshot and its place in the log in one go: the log's order is the rig's
            rf_on, frequency_hz, power_dbm = self._generator()
            source = self.rig.current_source
            if source is not None:
                output, setpoint, measured = bool(source.output), float(source.i_set), source.measured_current()
            else:
                output, setpoint, measured = False, 0.0, 0.0
            self.entries.append(WireEntry(len(self.entries), role, text, rf_on, frequency_hz, power_dbm,
                                          output, setpoint, measured))
