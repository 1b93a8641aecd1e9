"""The one loop that measures a sweep plan on a connected station.

For each point not yet written: the magnet ramped from its read-back when the point's current
differs (``CurrentSource.ramp_to``), RF switched on only through the generator's one RF switch
(``SignalGenerator.enable_rf_at``: validated and read back) or off when the point needs none,
one sweep, the trace read, analysed and written. The plan was checked against the station's
limits before the first point (rejected, never clamped). The first Ctrl-C / SIGTERM finishes the
point in flight and stops (the file says aborted; ``--resume`` continues); a second stops at
once. Leaving the rig safe is the station's (its ``with`` block), on every exit.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

from instruments.interrupts import StopAfterStep
from labpgt.sweep.analysis import read_trace
from labpgt.sweep.file import SweepFile
from labpgt.sweep.plan import SweepPlan

log = logging.getLogger(__name__)


def station_limits(station) -> dict:
    """role -> quantity -> (min, max) that the station enforces: a connected instrument's own (its
    model may narrow them), else what its file says (nothing is sent)."""
    return {role: dict(station.instruments[role].limits) if role in station.instruments
            else cfg.driver.limits_for_station(cfg.limits) for role, cfg in station.roles.items()}


class SweepExecutor:
    """Runs ``plan`` on ``station`` into ``sweep_file``; ``stop_requested`` ends it after the point in flight."""

    def __init__(self, station, plan: SweepPlan, sweep_file: SweepFile, *,
                 progress: Callable[[int, float], None] | None = None,
                 point_seconds: list[float] | None = None,
                 wait: Callable[[float], None] | None = None):
        self.station, self.plan, self.file = station, plan, sweep_file
        self.progress = progress  # called with (points done, estimated instrument seconds of the point)
        self.point_seconds = point_seconds or [0.0] * len(plan.points)
        self.wait = wait if wait is not None else time.sleep  # the plan's own intervals (drift)
        self.stop_requested = False

    def run(self) -> str:
        """Measure every pending point; returns "completed" or "aborted" (raises on a fault)."""
        plan, sg, cs, sa = self.plan, *self._roles()
        plan.check(station_limits(self.station))
        done = self.file.measured_mask()
        w = plan.window
        sa.configure(center_hz=w.center_hz, span_hz=w.span_hz, rbw_hz=w.rbw_hz, points=w.points,
                     reference_level_dbm=w.reference_level_dbm)
        rbw_hz = float(sa.rbw_hz)  # as the analyzer has it
        current_a, rf_on = None, False
        self.file.set_state("running")
        with StopAfterStep(self):
            for k, point in enumerate(plan.points):
                if done[point.index]:
                    continue
                if self.stop_requested:
                    return "aborted"
                if point.current_a != current_a:
                    if rf_on and not point.rf_on:
                        sg.safe_state()  # the magnet never moves under a drive this point does not want
                        rf_on = False
                    cs.ramp_to(point.current_a)
                    current_a = point.current_a
                if point.rf_on:
                    if rf_on:
                        sg.configure_cw(point.drive_frequency_hz, point.drive_power_dbm)
                    else:
                        sg.enable_rf_at(point.drive_frequency_hz, point.drive_power_dbm)
                        rf_on = True
                elif rf_on:
                    sg.safe_state()
                    rf_on = False
                if point.wait_s:
                    self.wait(point.wait_s)
                freqs, trace = sa.measure()
                self._check_axis(freqs)
                reading = read_trace(freqs, trace, rbw_hz, point.drive_frequency_hz)
                self.file.write(point.index, trace, reading, time.time())
                if self.progress is not None:
                    self.progress(k, self.point_seconds[k])
        return "aborted" if self.stop_requested and not self.file.measured_mask().all() else "completed"

    def _roles(self):
        st = self.station
        return st.signal_generator, st.current_source, st.spectrum_analyzer

    def _check_axis(self, freqs: np.ndarray) -> None:
        planned = self.plan.window.frequencies_hz()
        if freqs.shape != planned.shape or not np.allclose(freqs, planned, rtol=0, atol=self.plan.window.span_hz * 1e-6):
            raise RuntimeError(f"the analyzer's axis {freqs[0]:g}-{freqs[-1]:g} Hz ({freqs.size} points) is not the "
                               f"plan's {planned[0]:g}-{planned[-1]:g} Hz ({planned.size} points)")
