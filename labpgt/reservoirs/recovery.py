"""What a measurement does when an instrument misbehaves: recover, repeat if safe, record.

A measurement (bias current ramped to its value, generator set, one sweep, the trace read) is
idempotent given its settings, so after a fault it may be taken again: the instrument that
failed is recovered (device clear and an identity check; a reconnect and the vendor set-up when
the link dropped or it stays silent), every setting the measurement depends on is sent again
(the current re-ramped from its read-back, the generator's frequency and power, the analyzer's
window after a reconnect), and the measurement is repeated -- at most ``max_attempts`` times in
all. An overloaded sweep is repeated ``overload_repeats`` times; if it stays overloaded the
trace is kept with the overload flag (that is the ring, not a fault).

Every fault met goes to the recorder's ``fault`` (the run file's faults table) with the row of
the measurement it touched and whether that measurement was finally obtained; the row gets the
"repeated" and "fault" flags. When the attempts run out, :class:`MeasurementFailed` is raised:
the trainer checkpoints the step's start and the run ends "failed", with the rig left safe by
the station on the way out.

Never repeated: a :class:`~instruments.errors.LimitError` (a request outside the limits is a
bug or a bad setting, not a fault) and anything that is not an instrument's trouble.

Start-up goes through the same policy (:meth:`RecoveryPolicy.start_up`): connecting the
station, the first ramp and the probe sweep, the measurement set-up (the analyzer's window, RF
on). A fault there is recovered the same way (the instrument cleared, or reconnected with its
vendor set-up; a failed connect has already left the connected roles safe and connects again)
and the step is taken again from its start, at most ``max_attempts`` times in all; then
:class:`StartUpFailed`. The faults met are kept in ``start_up_faults`` until the run file exists
(labpgt/experiment/run.py writes them to its faults table, at the first row). Never retried: a
wrong instrument at an address, a station file's or a limit's refusal, a rig left unsafe, and
the errors the caller names (a bad experiment setting).
"""
from __future__ import annotations

import time

import logging
from typing import Callable

from instruments.errors import (InstrumentError, InstrumentReportedError, LimitError, NoAnswerError, StationFileError,
                                WrongInstrumentError)
from instruments.safe_state import UnsafeStateError

from labpgt.contracts import FLAG_FAULT, FLAG_OVERLOAD, FLAG_REPEATED

ROLES = ("signal_generator", "current_source", "spectrum_analyzer")
#: never taken for an instrument's passing trouble at start-up: retrying cannot help
NOT_FAULTS_AT_START = (WrongInstrumentError, StationFileError, UnsafeStateError)

log = logging.getLogger(__name__)


class MeasurementFailed(InstrumentError, RuntimeError):
    """A measurement could not be obtained within the recovery policy's attempts."""


class StartUpFailed(InstrumentError, RuntimeError):
    """A start-up step could not be completed within the recovery policy's attempts."""


class Overloaded(InstrumentError):
    """The analyzer reported an overloaded sweep."""

    role = "spectrum_analyzer"


def classify(exc: BaseException, station) -> tuple[str, str] | None:
    """(role, kind) of an instrument fault, or None when ``exc`` is not one to recover from."""
    if isinstance(exc, LimitError) or not isinstance(exc, (InstrumentError, ValueError)):
        return None
    role = exc.role if isinstance(exc, InstrumentError) else None
    text = str(exc)
    if role not in ROLES:
        role = "station"
        for name, inst in station.instruments.items():
            if text.startswith(name) or inst.resource in text:
                role = name
                break
    lower = text.lower()
    if isinstance(exc, Overloaded):
        kind = "overload"
    elif isinstance(exc, NoAnswerError):
        inst = station.instruments.get(role)
        kind = "connection_lost" if inst is not None and inst.link_down else "no_answer"
    elif "unlock" in lower or "not locked" in lower:
        kind = "unlocked"
    elif isinstance(exc, InstrumentReportedError):
        kind = "instrument_error"
    else:
        kind = "bad_reply"  # garbled, truncated, unparsable, implausible
    return role, kind


class RecoveryPolicy:
    """Bounded recovery of single measurements (see the module docstring)."""

    def __init__(self, max_attempts: int = 4, overload_repeats: int = 1):
        if max_attempts < 1 or overload_repeats < 0:
            raise ValueError(f"max_attempts must be >= 1 and overload_repeats >= 0, got {max_attempts}, "
                             f"{overload_repeats}")
        self.max_attempts = int(max_attempts)
        self.overload_repeats = int(overload_repeats)
        self.recovered = 0
        self.unrecovered = 0
        #: fault records met at start-up, before a run file exists (the faults table's fields)
        self.start_up_faults: list[dict] = []

    def start_up(self, station, what: str, action: Callable[[], object], *,
                 reconnected: Callable[[str], None] | None = None, not_faults: tuple = ()):
        """``action()`` (a start-up step: ``what`` names it) under the policy; returns its result.

        On an instrument fault: recorded in ``start_up_faults``, the instrument recovered (every
        connected one when the fault names none; nothing when the station is not connected: its
        connect starts over), ``reconnected(role)`` called for each one that had to reconnect,
        and ``action()`` taken again -- ``max_attempts`` times in all, then :class:`StartUpFailed`.
        Anything else (``not_faults``, :data:`NOT_FAULTS_AT_START`, not an instrument's trouble)
        is raised at once.
        """
        attempt = 1
        while True:
            try:
                result = action()
                self.recovered += attempt - 1  # the faults met before it worked
                return result
            except Exception as exc:  # noqa: BLE001 - classified below; anything else is raised
                what_failed = None if isinstance(exc, NOT_FAULTS_AT_START + tuple(not_faults)) else \
                    classify(exc, station)
                if what_failed is None:
                    raise
                role, kind = what_failed
                self.start_up_faults.append({"time_s": time.time(), "step": 0, "measurement_row": 0, "role": role,
                                             "kind": kind, "recovered": True, "attempt": attempt,
                                             "message": f"start-up, {what}: {type(exc).__name__}: {exc}"})
                if attempt >= self.max_attempts:
                    for record in self.start_up_faults[-attempt:]:
                        record["recovered"] = False
                    self.unrecovered += attempt
                    raise StartUpFailed(f"{role}: {what} failed {attempt} times at start-up; last fault ({kind}): "
                                        f"{exc}") from exc
                log.warning("start-up, %s: %s fault (%s): %s; recovering and trying again (attempt %d of %d)",
                            what, role, kind, exc, attempt + 1, self.max_attempts)
                attempt += 1
                try:
                    self._recover_at_start(station, role, reconnected)
                except Exception as again:  # noqa: BLE001 - the next attempt meets it again, or gives up
                    log.warning("start-up, %s: recovering %s failed: %s", what, role, again)

    @staticmethod
    def _recover_at_start(station, role: str, reconnected) -> None:
        roles = [role] if role in station.instruments else list(station.instruments)
        for name in roles:
            if station.instruments[name].recover() and reconnected is not None:
                reconnected(name)

    def repeat(self, reservoir, exc: BaseException, *, step: int, row_offset: int, current_a: float,
               frequency_hz: float | None = None, power_dbm: float | None = None,
               also: tuple[BaseException, ...] = ()):
        """After ``exc`` hit a measurement: recover and take it again.

        Returns (trace, flags to add). With ``frequency_hz`` None only the bias current is
        brought back (returns (None, FLAG_FAULT): the next row was not repeated, only touched). Raises ``exc`` itself if it is not an instrument
        fault, :class:`MeasurementFailed` when the attempts run out. ``also``: faults met at the
        same time on other instruments (the generator's reply to a setting in flight while the
        analyzer failed): recorded with this row and their instruments recovered before the
        first repeat.
        """
        station = reservoir.station
        met = []  # (time, role, kind, attempt, message)
        attempt, overloads = 1, 0
        trace = None
        also_roles = []
        for other in also:
            what = classify(other, station)
            if what is None:  # not an instrument's trouble: a bug, raised
                if met:
                    self._record(reservoir, met, step, row_offset, recovered=False)
                raise other from exc
            met.append((time.time(), what[0], what[1], attempt, f"{type(other).__name__}: {other}"))
            also_roles.append(what[0])
        while True:
            what = classify(exc, station)
            if what is None:
                if met:
                    self._record(reservoir, met, step, row_offset, recovered=False)
                raise exc
            role, kind = what
            met.append((time.time(), role, kind, attempt, f"{type(exc).__name__}: {exc}"))
            if kind == "overload":
                overloads += 1
                if overloads > self.overload_repeats:  # the ring itself overloads: keep it, flagged
                    self._record(reservoir, met[:-1], step, row_offset, recovered=True)
                    self._record(reservoir, met[-1:], step, row_offset, recovered=False)
                    return trace, FLAG_REPEATED | FLAG_FAULT | FLAG_OVERLOAD
            else:
                attempt += 1
                if attempt > self.max_attempts:
                    self._record(reservoir, met, step, row_offset, recovered=False)
                    raise MeasurementFailed(
                        f"{role}: measurement at step {step} failed {self.max_attempts} times; last fault "
                        f"({kind}): {exc}") from exc
            try:
                for other_role in also_roles:
                    self._recover(reservoir, other_role)
                also_roles = []
                if kind != "overload":
                    self._recover(reservoir, role)
                trace = self._measure(reservoir, current_a, frequency_hz, power_dbm, kind == "overload")
            except Exception as again:  # noqa: BLE001 - classified at the top of the loop
                exc = again
                continue
            self._record(reservoir, met, step, row_offset, recovered=True)
            return trace, (FLAG_REPEATED | FLAG_FAULT) if frequency_hz is not None else FLAG_FAULT

    def _recover(self, reservoir, role: str) -> None:
        station = reservoir.station
        roles = [role] if role in station.instruments else list(station.instruments)
        for name in roles:
            if station.instruments[name].recover():
                reservoir.reconnected(name)  # a new connection: the layer sends its set-up again
        reservoir.forget_current()  # re-ramped from the read-back (no step: ramp_to reads it first)

    @staticmethod
    def _measure(reservoir, current_a, frequency_hz, power_dbm, same_settings: bool):
        station = reservoir.station
        if not same_settings:
            reservoir.set_current(current_a)
            if frequency_hz is None:
                return None
            station.signal_generator.configure_cw(frequency_hz, power_dbm)
        sa = station.spectrum_analyzer
        _, trace = sa.measure()
        if sa.overloaded:
            raise Overloaded("spectrum_analyzer: the repeated sweep was overloaded too")
        return trace

    def _record(self, reservoir, met, step, row_offset, recovered: bool) -> None:
        if recovered:
            self.recovered += len(met)
        else:
            self.unrecovered += len(met)
        row = int(reservoir.recorder.n_measurements) + int(row_offset)
        for t, role, kind, attempt, message in met:
            reservoir.recorder.fault({"time_s": t, "step": int(step), "measurement_row": row, "role": role, "kind": kind,
                   "recovered": recovered, "attempt": attempt, "message": message})
