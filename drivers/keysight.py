"""Keysight (Agilent) instruments: MXG N5181/N5183 signal generators and the X-Series swept SA.

Commands from the N5181A/82A MXG SCPI reference and the X-Series SA programmer's reference
(summarised in reference/scpi.md §1.1, §3.1). Keysight quirks kept here: ``FORM:BORD SWAP``
means little endian (LSB first); a marker that has nothing to read answers 9.91e37.
"""
from __future__ import annotations

from instruments.errors import InstrumentReportedError
from instruments.roles import SignalGenerator, SpectrumAnalyzer

from .scpi import SCPIInstrument, control, parse_bool, parse_error, parse_overflow


class MXG(SCPIInstrument, SignalGenerator):
    """Keysight/Agilent MXG N5181A/B, N5183A/B analog signal generator (CW use)."""

    instrument_ranges = {"frequency_hz": (9e3, 6e9), "power_dbm": (-144.0, 19.0)}
    identity_pattern = r"^(Keysight|Agilent) Technologies,\s*N51[78]\d[AB]\b"
    model_family = "a Keysight/Agilent MXG signal generator (N5171B-N5183B)"
    # stray modulation would corrupt the CW tone: switch the global modulation off once
    init_commands = ("OUTP:MOD OFF",)

    frequency_hz = control("SOUR:FREQ?", "SOUR:FREQ {:.2f}", limit="frequency_hz", doc="CW frequency in Hz")
    power_dbm = control("SOUR:POW?", "SOUR:POW {:.2f}", limit="power_dbm", doc="output power in dBm")
    output_enabled = control("OUTP:STAT?", "OUTP:STAT {:d}", parse=parse_bool, doc="RF output on/off")


class XSeries(SCPIInstrument, SpectrumAnalyzer):
    """Keysight X-Series signal analyzers (N9000A CXA, N9010A EXA, N9020A MXA, N9030A PXA), Swept SA."""

    identity_pattern = r"^(Keysight|Agilent) Technologies,\s*N90[0-4]0[AB]\b"
    model_family = "a Keysight/Agilent X-Series signal analyzer (N9000A-N9040B)"

    instrument_ranges = {
        "frequency_hz": (-80e6, 26.5e9),
        "span_hz": (0.0, 26.5e9),
        "rbw_hz": (1.0, 8e6),
        "points": (1, 20001),
        "reference_level_dbm": (-170.0, 30.0),
    }
    init_commands = (
        "INST:SEL SA",
        "CONF:SAN",
        "FORM:DATA REAL,32",
        "FORM:BORD SWAP",  # Keysight: SWAP = LSB first = little endian
        "CALC:MARK1:MODE POS",
    )
    trace_query = "TRAC:DATA? TRACE1"
    trace_big_endian = False
    sweep_and_wait_command = "INIT:IMM;*OPC?"
    # the X-Series reports an overloaded sweep as an error-queue entry ("Final IF Overload")
    sweep_status_query = ":SYST:ERR?"

    center_hz = control("SENS:FREQ:CENT?", "SENS:FREQ:CENT {:.3f}", limit="frequency_hz", doc="centre in Hz")
    span_hz = control("SENS:FREQ:SPAN?", "SENS:FREQ:SPAN {:.3f}", limit="span_hz", doc="span in Hz")
    start_hz = control("SENS:FREQ:STAR?", "SENS:FREQ:STAR {:.3f}", limit="frequency_hz", doc="start in Hz")
    stop_hz = control("SENS:FREQ:STOP?", "SENS:FREQ:STOP {:.3f}", limit="frequency_hz", doc="stop in Hz")
    rbw_hz = control("SENS:BAND:RES?", "SENS:BAND:RES {:.3f}", limit="rbw_hz", doc="resolution bandwidth in Hz")
    reference_level_dbm = control("DISP:WIND:TRAC:Y:RLEV?", "DISP:WIND:TRAC:Y:RLEV {:.2f}",
                                  limit="reference_level_dbm", doc="reference level in dBm")
    points = control("SENS:SWE:POIN?", "SENS:SWE:POIN {:d}", limit="points", parse=lambda r: int(float(r)),
                     doc="sweep points")
    sweep_time_s = control("SENS:SWE:TIME?", doc="sweep time in s (read-only here)")
    continuous = control("INIT:CONT?", "INIT:CONT {:d}", parse=parse_bool, doc="continuous sweep on/off")
    attenuation_db = control("SENS:POW:ATT?", "SENS:POW:ATT {:.0f}", doc="input attenuation in dB")

    def _parse_sweep_status(self, reply: str) -> bool:
        """First error-queue entry after the sweep: overload entries flag the sweep, others raise."""
        code, message = parse_error(reply)
        if code == 0:
            return False
        entries = [(code, message)] + self.errors()
        others = [e for e in entries if "overload" not in e[1].lower()]
        if others:
            raise InstrumentReportedError(self.role, entries, "sweep")
        return True

    def peak(self) -> tuple[float, float]:
        self.write("CALC:MARK1:MAX")
        return parse_overflow(self.query("CALC:MARK1:X?")), parse_overflow(self.query("CALC:MARK1:Y?"))
