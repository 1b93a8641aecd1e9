"""``labpgt check``: every instrument of a station attempted, one row each, then the rig left safe.

A row says: the resource, the identity (and whether it is a model of the driver's family), the
error-queue entries found at connect, the output state read back after the safe steps, the
settings read back against the station's limits, how long the row took (a refusal that came in
0.35 s is reported as such, not as the configured timeout) and what failed. One failing
instrument does not stop the others from being checked.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

from .errors import NoAnswerError
from .roles import CurrentSource, Instrument, SignalGenerator, SpectrumAnalyzer
from .safe_state import SafeStateReport


@dataclass
class CheckRow:
    role: str
    driver: str
    resource: str
    identity: str = ""
    #: whether the identity names a model of the driver's family (None: no identity read)
    identity_ok: Optional[bool] = None
    errors: list = field(default_factory=list)
    #: output state read back after the safe steps, in words ("RF off", "output on", ...)
    output: str = "?"
    #: the settings read back, each with whether it lies in the limits
    settings: list = field(default_factory=list)
    #: what the instrument was found in before anything was changed, in words ("" unknown)
    found: str = ""
    seconds: float = 0.0
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.identity_ok is True

    def settings_text(self) -> str:
        return ", ".join(text for text, _ in self.settings) or "-"


@dataclass
class CheckTable:
    name: str
    source: str
    rows: list
    safe_report: Optional[SafeStateReport] = None

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows) and self.safe_report is not None and self.safe_report.safe

    def __str__(self) -> str:
        failed = [row for row in self.rows if not row.ok]
        verdict = "OK" if self.ok else f"FAILED ({len(failed)} of {len(self.rows)} instruments)"
        header = ("role", "driver", "resource", "identity", "model", "error queue", "found", "output",
                  "settings read back", "time", "result")
        table = [header]
        for row in self.rows:
            model = {True: "matches", False: "WRONG", None: "?"}[row.identity_ok]
            queue = "; ".join(f"{code} {message}" for code, message in row.errors) or "empty"
            table.append((row.role, row.driver, row.resource, row.identity or "-", model, queue, row.found or "-",
                          row.output,
                          row.settings_text(), f"{row.seconds:.2f} s", "ok" if row.ok else "FAIL"))
        widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
        lines = [f"station {self.name!r} ({self.source}): {verdict}"]
        lines += ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
                  for line in table]
        for row in failed:
            for problem in row.problems or ["identity not read"]:
                lines.append(f"{row.role}: {problem}")
        if self.safe_report is None:
            lines.append("the rig's safe state was not read back")
        elif not self.safe_report.safe:
            lines.append("the rig is NOT in its safe state (see below)")
        return "\n".join(lines)


def _within(instrument: Instrument, quantity: str, value: float, label: str, unit: str) -> tuple[str, bool]:
    low, high = instrument.limits.get(quantity, (-math.inf, math.inf))
    inside = math.isfinite(value) and low <= value <= high
    text = f"{label} {value:.6g} {unit}".rstrip()
    return (text if inside else f"{text} OUTSIDE [{low:g}, {high:g}]"), inside


def _settings(instrument: Instrument) -> list[tuple[str, bool]]:
    """The settings that matter for safety, read back and compared with the limits (queries only)."""
    if isinstance(instrument, SignalGenerator):
        return [_within(instrument, "frequency_hz", float(instrument.frequency_hz), "f", "Hz"),
                _within(instrument, "power_dbm", float(instrument.power_dbm), "P", "dBm")]
    if isinstance(instrument, CurrentSource):
        setpoint = _within(instrument, "current_a", float(instrument.current_setpoint_a), "set-point", "A")
        return [setpoint, _within(instrument, "compliance_v", float(instrument.compliance_voltage_v),
                                  "compliance", "V")]
    if isinstance(instrument, SpectrumAnalyzer):
        # the window is informative only: its centre is set by whoever measures, within the limits
        window = f"window {float(instrument.start_hz):.6g}-{float(instrument.stop_hz):.6g} Hz"
        return [(window, True),
                _within(instrument, "reference_level_dbm", float(instrument.reference_level_dbm), "ref", "dBm")]
    return []


def _found_text(instrument, found) -> str:
    """What the instrument was left in, with whether that was outside the limits (queries were made at connect)."""
    if not found or instrument is None:
        return ""
    if "rf_output" in found:
        if not found["rf_output"]:
            return "RF off"
        inside = all(_within(instrument, q, found[k], "", "")[1]
                     for q, k in (("frequency_hz", "frequency_hz"), ("power_dbm", "power_dbm")))
        return (f"RF ON at {found['frequency_hz']:.6g} Hz, {found['power_dbm']:.3g} dBm"
                + ("" if inside else " (OUTSIDE the limits)"))
    if not found["output"]:
        return "output off"
    return f"output ON, {found['measured_current_a']:.3g} A flowing (set-point {found['current_setpoint_a']:.3g} A)"


def _output_text(role: str, report: SafeStateReport) -> tuple[str, bool]:
    def word(value):
        return "?" if value is None else ("on" if value else "off")
    if role == "signal_generator":
        return f"RF {word(report.rf_output)}", report.rf_output is False
    if role == "current_source":
        measured = report.measured_current_a
        amps = "?" if measured is None else f"{measured:.3g} A"
        safe = report.current_output is False and report.current_safe()
        return f"output {word(report.current_output)}, {amps}", safe
    if role == "spectrum_analyzer":
        value = report.analyzer_continuous
        return ("continuous" if value else ("single" if value is not None else "?")), value is True
    return "?", False


def check_station(station) -> CheckTable:
    """Attempt every role of ``station`` (connecting those not connected), then leave the rig safe
    and read it back. Instruments it connected are closed again; a connected station stays open."""
    was_connected = bool(station.instruments)
    station.record_found_state = True  # what each instrument was left in, read before it is changed
    table = CheckTable(station.name, station.source, [])
    silent: list[str] = []
    for role, cfg in station.roles.items():  # in the station's connection order
        row = CheckRow(role, cfg.driver_name, cfg.resource)
        table.rows.append(row)
        started = time.monotonic()
        try:
            if role not in station.instruments:
                station._connect_role(cfg)  # identity checked, errors drained, parked / set up
                row.errors = list(station.connect_errors.get(role, []))
            else:
                row.errors = list(station.connect_errors.get(role, [])) + station.instruments[role].errors()
            row.identity = station.identities.get(role, "")
            row.identity_ok = cfg.driver.identity_matches(row.identity)
        except Exception as exc:  # noqa: BLE001 - each row reports its own failure; the others go on
            row.identity = station.identities.get(role, "")
            row.identity_ok = cfg.driver.identity_matches(row.identity) if row.identity else None
            if isinstance(exc, NoAnswerError):
                silent.append(role)
            took = time.monotonic() - started
            row.problems.append(f"{type(exc).__name__} after {took:.2f} s: {exc}")
        finally:
            station._failed_role = None
            row.seconds = time.monotonic() - started
            row.found = _found_text(station.instruments.get(role), station.found_states.get(role))
        if row.errors:
            row.problems.append("error queue held entries at connect: "
                                + "; ".join(f"{code} {message!r}" for code, message in row.errors))
    # the safe steps and their read-back, then the settings the rig is left at (queries only)
    report = station.leave_safe(skip=tuple(silent))
    table.safe_report = report
    for row in table.rows:
        instrument = station.instruments.get(row.role)
        if instrument is not None and row.role not in silent:
            row.output, safe = _output_text(row.role, report)
            if not safe:
                row.problems.append(f"not in its safe state after the safe steps ({row.output})")
            try:
                row.settings = _settings(instrument)
            except Exception as exc:  # noqa: BLE001
                row.problems.append(f"reading the settings back failed: {type(exc).__name__}: {exc}")
            outside = [text for text, inside in row.settings if not inside]
            if outside:
                row.problems.append("outside the station's limits: " + ", ".join(outside))
        row.problems += [p for p in report.problems if p.startswith(row.role + ":")]
    if not was_connected:
        for role, instrument in list(station.instruments.items()):
            try:
                instrument.close()
            except Exception as exc:  # noqa: BLE001 - scripted transports report leftovers here
                next(r for r in table.rows if r.role == role).problems.append(f"close failed: {exc}")
        station.instruments.clear()
    return table


__all__ = ["CheckRow", "CheckTable", "check_station"]
