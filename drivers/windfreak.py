"""Windfreak SynthHD (v2 / PRO) over its USB serial port -- not SCPI (reference/scpi.md §1.4).

Quirks kept here: frequencies travel in MHz; commands are single letters sent with no
terminator (replies end in ``\\n``); two channels share one parser, selected with ``C0``/``C1``;
there is no error queue and no ``*IDN?``, so settings are validated by reading them back and the
PLL lock is checked with ``p`` after a frequency change; identity comes from ``+``, ``-``, ``v1``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from instruments.controls import control, parse_bool
from instruments.errors import InstrumentError
from instruments.roles import Setting, SignalGenerator

from .transport import SerialTransport


def _mhz_to_hz(reply: str) -> float:
    return float(reply) * 1e6


def _hz_to_mhz(frequency_hz: float) -> float:
    return frequency_hz / 1e6


class _RFSwitch(control):
    """RF output = PLL power (E), power amplifier (r) and RF mute (h).

    On: PLL, amplifier, then the mute released; off: muted and amplifier off, the PLL left
    powered so the synthesizer stays locked on its frequency (settings stay verifiable).
    """

    def __init__(self):
        super().__init__("h?", "h{:d}", parse=parse_bool, doc="RF output on/off (E, r and h together)")

    def __get__(self, instrument, owner=None):
        if instrument is None:
            return self
        return all(parse_bool(instrument.query(q)) for q in ("E?", "r?", "h?"))

    def command(self, instrument, value, *, guarded: bool = True, check_limit: bool = True) -> str:
        return "E1r1h1" if value else "h0r0"


class SynthHD(SignalGenerator):
    """Windfreak SynthHD v2 (10 MHz - 15 GHz, -70 ... +20 dBm), channel A."""

    read_termination = "\n"
    write_termination = ""
    transport_options = ("timeout_s", "baud_rate")
    default_timeout_s = 2.0
    instrument_ranges = {"frequency_hz": (10e6, 15e9), "power_dbm": (-70.0, 20.0)}
    identity_pattern = r"^Windfreak Technologies,\s*SynthHD"
    model_family = "a Windfreak SynthHD (v2 / PRO)"
    channel = 0
    #: read-back agreement required after a setting
    frequency_tolerance_hz = 100.0
    power_tolerance_db = 0.05

    frequency_hz = control("f?", "f{:.8f}", limit="frequency_hz", parse=_mhz_to_hz, to_wire=_hz_to_mhz,
                           doc="CW frequency in Hz (MHz on the wire)")
    power_dbm = control("W?", "W{:.3f}", limit="power_dbm", doc="output power in dBm")
    output_enabled = _RFSwitch()

    @classmethod
    def open_transport(cls, resource: str, options: Mapping[str, object]):
        return SerialTransport(resource, timeout_s=float(options.get("timeout_s", cls.default_timeout_s)),
                               baud_rate=int(options.get("baud_rate", 115200)),
                               read_termination=cls.read_termination, write_termination=cls.write_termination)

    def identify(self) -> str:
        model = self.query("+").strip()
        serial_number = self.query("-").strip()
        firmware = self.query("v1").strip()
        return f"Windfreak Technologies,{model},{serial_number},{firmware}"

    #: lock-bit polls allowed after a frequency change (the PLL locks in a few ms)
    lock_polls = 100

    def initialize(self) -> None:
        self.write(f"C{self.channel}")
        if not parse_bool(self.query("E?")):
            self.write("h0E1")  # power the PLL with the RF muted, so frequencies can lock

    def is_locked(self) -> bool:
        return parse_bool(self.query("p"))

    def wait_for_lock(self) -> bool:
        """Poll the lock bit (the device's own status, like ``*OPC?`` elsewhere)."""
        return any(self.is_locked() for _ in range(self.lock_polls))

    def _transmit_settings(self, settings: Sequence[Setting]) -> None:
        """Channel select, the settings, then read-back (there is no error queue to ask)."""
        self.write(f"C{self.channel}")
        for setting in settings:
            self.write(setting.command)
        for setting in settings:
            if setting.name == "frequency_hz":
                read_hz = self.frequency_hz
                if abs(read_hz - float(setting.value)) > self.frequency_tolerance_hz:
                    raise InstrumentError(f"{self.role}: frequency reads back {read_hz:.1f} Hz after setting "
                                          f"{float(setting.value):.1f} Hz")
                if not self.wait_for_lock():
                    raise InstrumentError(f"{self.role}: PLL not locked at {float(setting.value):.1f} Hz")
            elif setting.name == "power_dbm":
                read_dbm = self.power_dbm
                if abs(read_dbm - float(setting.value)) > self.power_tolerance_db:
                    raise InstrumentError(f"{self.role}: power reads back {read_dbm:.3f} dBm after setting "
                                          f"{float(setting.value):.3f} dBm")
