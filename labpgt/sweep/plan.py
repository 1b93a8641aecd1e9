"""Sweep plans: the points to measure, built per kind and checked against the station's limits.

A plan is data: named axes (the physical coordinates of the map), one :class:`Point` per grid
cell in the order it is measured, and the analyzer window. Nothing here talks to an instrument,
so ``--dry-run`` and the limit checks run before anything moves.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

KINDS = ("current", "lock", "drift", "spectrum")


class PlanError(ValueError):
    """A sweep the station cannot do (a value outside its limits, an empty range)."""


@dataclass(frozen=True)
class Axis:
    name: str  # the dimension's name, unit suffixed (current_a, detuning_hz, ...)
    values: tuple[float, ...]
    units: str
    long_name: str


@dataclass(frozen=True)
class Window:
    """The analyzer's sweep for every point of the plan."""

    center_hz: float
    span_hz: float
    rbw_hz: float
    points: int
    reference_level_dbm: float = 0.0

    def frequencies_hz(self) -> np.ndarray:
        return np.linspace(self.center_hz - self.span_hz / 2, self.center_hz + self.span_hz / 2, self.points)


@dataclass(frozen=True)
class Point:
    index: tuple[int, ...]  # the cell of the map
    current_a: float
    drive_frequency_hz: float | None = None  # None: RF off
    drive_power_dbm: float | None = None
    wait_s: float = 0.0  # before the measurement (drift: the interval)

    @property
    def rf_on(self) -> bool:
        return self.drive_frequency_hz is not None


@dataclass(frozen=True)
class SweepPlan:
    kind: str
    axes: tuple[Axis, ...]
    points: tuple[Point, ...]
    window: Window
    parameters: dict = field(default_factory=dict)  # what built it (recorded; --resume rebuilds from it)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a.values) for a in self.axes)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "parameters": self.parameters})

    def check(self, limits: dict[str, dict[str, tuple[float, float]]], *, line_known: bool = True) -> None:
        """Every setting inside the station's limits (``limits[role][quantity] = (min, max)``), or a
        PlanError naming the first value outside and what is allowed. Nothing is clamped.
        ``line_known=False``: the drive's frequencies and the window hang on a line not found yet
        (a lock plan before its probe): only the currents and powers are checked."""
        def inside(role, quantity, values, what):
            bounds = limits.get(role, {}).get(quantity)
            if bounds is None or not values:
                return
            low, high = min(values), max(values)
            for value in (low, high):
                if not bounds[0] <= value <= bounds[1]:
                    span = f" (the plan spans {low:g} to {high:g})" if low != high else ""
                    raise PlanError(f"{what} {value:g} is outside the {role}'s limits [{bounds[0]:g}, {bounds[1]:g}]"
                                    f"{span}; nothing was moved")

        w = self.window
        if line_known:
            inside("spectrum_analyzer", "frequency_hz", [w.center_hz - w.span_hz / 2], "analyzer start (Hz)")
            inside("spectrum_analyzer", "frequency_hz", [w.center_hz + w.span_hz / 2], "analyzer stop (Hz)")
        inside("spectrum_analyzer", "reference_level_dbm", [w.reference_level_dbm], "analyzer reference level (dBm)")
        inside("current_source", "current_a", [p.current_a for p in self.points], "bias current (A)")
        driven = [p for p in self.points if p.rf_on]
        if line_known:
            inside("signal_generator", "frequency_hz", [p.drive_frequency_hz for p in driven], "drive frequency (Hz)")
        inside("signal_generator", "power_dbm", [p.drive_power_dbm for p in driven], "drive power (dBm)")


def _grid(start: float, stop: float, count: int, name: str) -> tuple[float, ...]:
    if not (math.isfinite(start) and math.isfinite(stop)):
        raise PlanError(f"{name}: {start!r} to {stop!r} is not finite; allowed: finite numbers")
    if count < 1 or (count == 1 and start != stop):
        raise PlanError(f"{name}: {count} point(s) from {start:g} to {stop:g}; allowed: 2 or more (1 if start == stop)")
    return tuple(float(v) for v in np.linspace(start, stop, count))


def _window(center_hz, span_hz, rbw_hz, points, reference_level_dbm) -> Window:
    if not (span_hz > 0 and rbw_hz > 0 and points >= 3):
        raise PlanError(f"analyzer window span {span_hz:g} Hz, RBW {rbw_hz:g} Hz, {points} points; allowed: "
                        f"span > 0, RBW > 0, 3 points or more")
    return Window(float(center_hz), float(span_hz), float(rbw_hz), int(points), float(reference_level_dbm))


def current_plan(start_a: float, stop_a: float, count: int, window: dict) -> SweepPlan:
    """The tuning curve: RF off, the line (frequency, level) at each bias current."""
    currents = _grid(start_a, stop_a, count, "current")
    points = tuple(Point((i,), c) for i, c in enumerate(currents))
    return SweepPlan("current", (Axis("current_a", currents, "A", "bias current"),), points, _window(**window),
                     {"start_a": start_a, "stop_a": stop_a, "count": count, "window": window})


def lock_plan(current_a: float, line_hz: float, detuning_hz: float, detunings: int, power_from_dbm: float,
              power_to_dbm: float, powers: int, window: dict) -> SweepPlan:
    """The Arnold tongue: at one current, the drive at line + detuning (rows) and each power (columns)."""
    offsets = _grid(-detuning_hz, detuning_hz, detunings, "detuning")
    levels = _grid(power_from_dbm, power_to_dbm, powers, "power")
    points = tuple(Point((i, j), current_a, line_hz + d, p)
                   for i, d in enumerate(offsets) for j, p in enumerate(levels))
    axes = (Axis("detuning_hz", offsets, "Hz", "drive detuning from the free-running line"),
            Axis("drive_power_dbm", levels, "dBm", "drive power"))
    return SweepPlan("lock", axes, points, _window(**window),
                     {"current_a": current_a, "line_hz": line_hz, "detuning_hz": detuning_hz, "detunings": detunings,
                      "power_from_dbm": power_from_dbm, "power_to_dbm": power_to_dbm, "powers": powers,
                      "window": window})


def drift_plan(current_a: float, samples: int, interval_s: float, window: dict) -> SweepPlan:
    """The line over time at fixed settings (RF off): ``samples`` traces, ``interval_s`` apart."""
    if samples < 1 or not (math.isfinite(interval_s) and interval_s >= 0):
        raise PlanError(f"drift: {samples} samples every {interval_s!r} s; allowed: 1 or more samples, interval >= 0 s")
    elapsed = tuple(float(k * interval_s) for k in range(samples))
    points = tuple(Point((k,), current_a, wait_s=interval_s if k else 0.0) for k in range(samples))
    return SweepPlan("drift", (Axis("elapsed_s", elapsed, "s", "planned time since the first sample"),), points,
                     _window(**window), {"current_a": current_a, "samples": samples, "interval_s": interval_s,
                                         "window": window})


def spectrum_plan(current_a: float, repeats: int, window: dict, drive_frequency_hz: float | None = None,
                  drive_power_dbm: float | None = None) -> SweepPlan:
    """One trace or a few at one setting (RF off unless a drive is given), saved with every setting."""
    if repeats < 1:
        raise PlanError(f"spectrum: {repeats} repeats; allowed: 1 or more")
    if (drive_frequency_hz is None) != (drive_power_dbm is None):
        raise PlanError("spectrum: a drive needs both its frequency and its power (or neither: RF off)")
    points = tuple(Point((k,), current_a, drive_frequency_hz, drive_power_dbm) for k in range(repeats))
    return SweepPlan("spectrum", (Axis("repeat", tuple(float(k) for k in range(repeats)), "1", "repeat"),), points,
                     _window(**window), {"current_a": current_a, "repeats": repeats, "window": window,
                                         "drive_frequency_hz": drive_frequency_hz, "drive_power_dbm": drive_power_dbm})


BUILDERS = {"current": current_plan, "lock": lock_plan, "drift": drift_plan, "spectrum": spectrum_plan}


def plan_from_json(text: str) -> SweepPlan:
    """The plan a sweep file records (``--resume``)."""
    data = json.loads(text)
    return BUILDERS[data["kind"]](**data["parameters"])


def window_dict(window: Window) -> dict:
    return asdict(window)
