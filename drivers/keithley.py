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

    #: the 2400's current-source ranges (each sources up to 105 % of its value), A
    source_ranges_a = (1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0)
    #: the largest compliance on a range (the 2400's power envelope: 21 V on the 1 A range, 210 V below)
    @staticmethod
    def max_compliance_v(range_a: float) -> float:
        return 21.0 if range_a > 0.105 else 210.0

    @classmethod
    def source_range_for(cls, current_a: float) -> float:
        """The smallest source range that holds ``current_a`` (up to 105 % of the range)."""
        for range_a in cls.source_ranges_a:
            if abs(current_a) <= 1.05 * range_a * (1 + 1e-12):
                return range_a
        return cls.source_ranges_a[-1]

    @classmethod
    def station_limit_problems(cls, station, ranges=None):
        problems = super().station_limit_problems(station, ranges)
        if problems:
            return problems
        current = station.get("current_a")
        compliance = station.get("compliance_v")
        if current is not None and compliance is not None:
            range_a = cls.source_range_for(max(abs(float(current[0])), abs(float(current[1]))))
            most = cls.max_compliance_v(range_a)
            if float(compliance) > most:
                problems.append(("compliance_v", f"{float(compliance):g} V exceeds the {most:g} V the Keithley 2400 "
                                 f"gives on its {range_a:g} A source range (needed for current_a up to "
                                 f"{max(abs(float(current[0])), abs(float(current[1]))):g} A)",
                                 f"at most {most:g} V with this current_a"))
        return problems

    @property
    def measured_current_a(self) -> float:
        """Measured current in A (0 with the output off: measuring would switch the source on)."""
        return self._measured_current_a if self.output_enabled else 0.0

    def _measured_current_output_on(self) -> float:
        # the caller has just read :OUTP? (on): asking again would be a redundant round trip
        return float(self._measured_current_a)

    @property
    def measured_voltage_v(self) -> float:
        """Measured voltage in V (NaN with the output off)."""
        return self._measured_voltage_v if self.output_enabled else math.nan

    def initialize(self) -> None:
        """Current mode, the reading elements, and the source range set explicitly (autorange off: the
        2400 drops autorange when it goes to local, and a range change under load would glitch the
        magnet), the smallest range holding the station's largest current."""
        function = self.query(":SOUR:FUNC?").strip().strip('"').upper()
        output_on = self.output_enabled
        commands = [":FORM:ELEM VOLT,CURR"]
        if not function.startswith("CURR"):
            if output_on:
                raise InstrumentError(f"{self.role}: sourcing {function} with the output on; refusing to "
                                      "switch to current mode under load (switch the output off by hand)")
            commands.insert(0, ":SOUR:FUNC CURR")
        low, high = self.limits["current_a"]
        largest = max(abs(low), abs(high))
        if output_on and function.startswith("CURR"):  # the range must also hold what flows now
            largest = max(largest, abs(self._measured_current_output_on()))
        range_a = self.source_range_for(largest)
        commands += [":SOUR:CURR:RANG:AUTO 0", f":SOUR:CURR:RANG {range_a:g}"]
        self._transmit_settings([Setting("mode", None, command) for command in commands])
        # the compliance the range can give bounds what may be set
        most = self.max_compliance_v(range_a)
        compliance_low, compliance_high = self.limits["compliance_v"]
        if compliance_high > most:
            self.limits["compliance_v"] = (compliance_low, most)
            self._limit_sources["compliance_v"] = f"the Keithley 2400's {range_a:g} A source range"
