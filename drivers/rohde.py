"""Rohde & Schwarz FSV / FSV3000 / FSW spectrum analyzers.

Commands from the FSV/FSW user manuals (reference/scpi.md §3.2). The R&S quirk kept here:
``FORM:BORD`` means the opposite of Keysight's -- on R&S, NORMal is LSB first (little endian) and
SWAPped is MSB first (big endian) (R&S FAQ "Change the byte order in FORMAT REAL"). The driver
sets SWAP explicitly and decodes big endian, so a default-order instrument cannot go unnoticed.
An unsuccessful peak search leaves -200 in the error queue.
"""
from __future__ import annotations

import math

from instruments.errors import InstrumentError, InstrumentReportedError
from instruments.roles import SpectrumAnalyzer

from .scpi import SCPIInstrument, control, parse_bool, parse_overflow


class FSV(SCPIInstrument, SpectrumAnalyzer):
    """R&S FSV/FSVA/FSV3000/FSW in the Spectrum application."""

    identity_pattern = r"^Rohde\s*&\s*Schwarz,\s*FS(V|VA|V3\d{3}|W)\b"
    model_family = "a Rohde & Schwarz FSV/FSVA/FSV3000/FSW spectrum analyzer"

    instrument_ranges = {
        "frequency_hz": (0.0, 13.6e9),
        "span_hz": (0.0, 13.6e9),
        "rbw_hz": (1.0, 10e6),
        "points": (101, 10001),
        "reference_level_dbm": (-130.0, 30.0),
    }
    init_commands = (
        "FORM REAL,32",
        "FORM:BORD SWAP",  # R&S: SWAP = MSB first = big endian (Keysight's meaning is the opposite)
        "CALC:MARK1 ON",
    )
    trace_query = "TRAC:DATA? TRACE1"
    trace_big_endian = True
    sweep_and_wait_command = "INIT:IMM;*OPC?"
    # R&S: overload is bit 0 (OVLD) of the questionable power condition, not an error-queue entry
    sweep_status_query = ":STAT:QUES:POW:COND?"

    center_hz = control("FREQ:CENT?", "FREQ:CENT {:.3f}", limit="frequency_hz", doc="centre in Hz")
    span_hz = control("FREQ:SPAN?", "FREQ:SPAN {:.3f}", limit="span_hz", doc="span in Hz")
    start_hz = control("FREQ:STAR?", "FREQ:STAR {:.3f}", limit="frequency_hz", doc="start in Hz")
    stop_hz = control("FREQ:STOP?", "FREQ:STOP {:.3f}", limit="frequency_hz", doc="stop in Hz")
    rbw_hz = control("BAND:RES?", "BAND:RES {:.3f}", limit="rbw_hz", doc="resolution bandwidth in Hz")
    reference_level_dbm = control("DISP:WIND:TRAC:Y:SCAL:RLEV?", "DISP:WIND:TRAC:Y:SCAL:RLEV {:.2f}",
                                  limit="reference_level_dbm", doc="reference level in dBm")
    points = control("SWE:POIN?", "SWE:POIN {:d}", limit="points", parse=lambda r: int(float(r)),
                     doc="sweep points")
    sweep_time_s = control("SWE:TIME?", doc="sweep time in s (read-only here)")
    continuous = control("INIT:CONT?", "INIT:CONT {:d}", parse=parse_bool, doc="continuous sweep on/off")
    attenuation_db = control("INP:ATT?", "INP:ATT {:.0f}", doc="input attenuation in dB")

    def _parse_sweep_status(self, reply: str) -> bool:
        try:
            return bool(int(float(reply.strip())) & 1)
        except ValueError as exc:
            raise InstrumentError(f"{self.role}: not a status register value: {reply!r}") from exc

    def peak(self) -> tuple[float, float]:
        self.write("CALC:MARK1:MAX")
        frequency_hz = parse_overflow(self.query("CALC:MARK1:X?"))
        power_dbm = parse_overflow(self.query("CALC:MARK1:Y?"))
        entries = self.errors()
        if any(code == -200 for code, _ in entries):  # R&S: "no peak found" is an execution error
            return math.nan, math.nan
        if entries:
            raise InstrumentReportedError(self.role, entries, "peak search")
        return frequency_hz, power_dbm
