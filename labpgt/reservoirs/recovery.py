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
"""
from __future__ import annotations

import time

from instruments.errors import InstrumentError, InstrumentReportedError, LimitError, NoAnswerError

from labpgt.contracts import FLAG_FAULT, FLAG_OVERLOAD, FLAG_REPEATED

ROLES = ("signal_generator", "current_source", "spectrum_analyzer")


class MeasurementFailed(InstrumentError, RuntimeError):
    """A measurement could not be obtained within the recovery policy's attempts."""


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
