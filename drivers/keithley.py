"""Keithley 2400 SourceMeter as a current source (reference/scpi.md §2.1).

Quirks kept here: a reading answers the elements selected by ``:FORM:ELEM`` (set to
``VOLT,CURR`` at connect, so a reply is "volts,amps"); 9.91e37 marks an overflow (NaN);
a measurement starts the source, so nothing is measured while the output is off.
"""
from __future__ import annotations

import math

from instruments.errors import InstrumentError
from instruments.roles import CurrentSource, Setting

from .scpi import SCPIInstrument, control, parse_bool, parse_overflow


def _element(index: int):
    """Pick one element of a ``:FORM:ELEM VOLT,CURR`` reading (a lone value is taken as it is)."""

    def parse(reply: str) -> float:
        fields = reply.split(",")
        return parse_overflow(fields[index] if len(fields) > 1 else fields[0])

    return parse


class Keithley2400(SCPIInstrument, CurrentSource):
    """Keithley 2400 SourceMeter sourcing current (±1.05 A, compliance up to 210 V)."""

    instrument_ranges = {"current_a": (-1.05, 1.05), "compliance_v": (0.0, 210.0)}
    identity_pattern = r"^KEITHLEY INSTRUMENTS( INC\.)?,\s*MODEL 2400\b"
    model_family = "a Keithley 2400 SourceMeter"

    current_setpoint_a = control(":SOUR:CURR?", ":SOUR:CURR {:.6f}", limit="current_a",
                                 guard="_guard_setpoint_jump", doc="source current setpoint in A")
    compliance_voltage_v = control(":SENS:VOLT:PROT?", ":SENS:VOLT:PROT {:.3f}", limit="compliance_v",
                                   doc="voltage compliance in V")
    _measured_current_a = control(":MEAS:CURR?", parse=_element(1))
    _measured_voltage_v = control(":MEAS:VOLT?", parse=_element(0))
    output_enabled = control(":OUTP?", ":OUTP {:d}", parse=parse_bool, guard="_guard_output_change",
                             doc="output on/off")

    @property
    def measured_current_a(self) -> float:
        """Measured current in A (0 with the output off: measuring would switch the source on)."""
        return self._measured_current_a if self.output_enabled else 0.0

    @property
    def measured_voltage_v(self) -> float:
        """Measured voltage in V (NaN with the output off)."""
        return self._measured_voltage_v if self.output_enabled else math.nan

    def initialize(self) -> None:
        function = self.query(":SOUR:FUNC?").strip().strip('"').upper()
        commands = [":FORM:ELEM VOLT,CURR"]
        if not function.startswith("CURR"):
            if self.output_enabled:
                raise InstrumentError(f"{self.role}: sourcing {function} with the output on; refusing to "
                                      "switch to current mode under load (switch the output off by hand)")
            commands.insert(0, ":SOUR:FUNC CURR")
        self._transmit_settings([Setting("mode", None, command) for command in commands])
