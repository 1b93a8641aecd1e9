"""Kepco BOP bipolar power supplies (BIT 4886 interface) as a magnet current source.

Commands from the BOP / BIT 4886 manuals (reference/scpi.md §2.4). Quirks kept here: in current
mode ``VOLT`` is the voltage compliance; ``FUNC:MODE?`` answers 0 (voltage) or 1 (current); the
output range is the model's, read from ``*IDN?`` (e.g. "BIT 4886 36-12" -> ±36 V, ±12 A).
"""
from __future__ import annotations

import re

from instruments.errors import InstrumentError
from instruments.roles import CurrentSource

from .scpi import SCPIInstrument, control, parse_bool, parse_overflow

_MODEL = re.compile(r"(?<![\d.])(\d{1,4})-(\d{1,4}(?:\.\d+)?)(?![\d.-])")


def model_ranges(identity: str) -> dict[str, tuple[float, float]]:
    """Ranges of the BOP named in ``*IDN?``; the 36-12 when the model cannot be read."""
    fields = identity.split(",")
    match = _MODEL.search(fields[1] if len(fields) > 1 else identity)
    volts, amps = (float(match.group(1)), float(match.group(2))) if match else (36.0, 12.0)
    return {"current_a": (-amps, amps), "compliance_v": (0.0, volts)}


class BOP(SCPIInstrument, CurrentSource):
    """Kepco BOP (default model 36-12: ±12 A, ±36 V) sourcing current."""

    instrument_ranges = model_ranges("KEPCO,BOP 36-12,,")
    identity_pattern = r"^KEPCO,\s*(BOP|BIT\s*48\d\d)"
    model_family = "a Kepco BOP power supply (BIT 4886/4882 interface)"

    current_setpoint_a = control("CURR?", "CURR {:.6f}", limit="current_a", guard="_guard_setpoint_jump",
                                 doc="current setpoint in A")
    compliance_voltage_v = control("VOLT?", "VOLT {:.6f}", limit="compliance_v",
                                   doc="voltage compliance in V (VOLT in current mode)")
    measured_current_a = control("MEAS:CURR?", parse=parse_overflow, doc="measured current in A")
    measured_voltage_v = control("MEAS:VOLT?", parse=parse_overflow, doc="measured voltage in V")
    output_enabled = control("OUTP?", "OUTP {:d}", parse=parse_bool, guard="_guard_output_change",
                             doc="output on/off")

    @classmethod
    def ranges_for_identity(cls, identity: str):
        return model_ranges(identity)

    def initialize(self) -> None:
        mode = self.query("FUNC:MODE?").strip()
        if mode not in ("1", "CURR"):
            if self.output_enabled:
                raise InstrumentError(f"{self.role}: in voltage mode with the output on; refusing to switch "
                                      "to current mode under load (switch the output off by hand)")
            self.write("FUNC:MODE CURR")
            self.synchronise()
            self.check_errors("selecting current mode")
