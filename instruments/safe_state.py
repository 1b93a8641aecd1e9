"""The rig's safe state as a measured fact: what was read back after making it safe.

:meth:`instruments.station.Station.leave_safe` runs the safe steps (RF off, current ramped to
zero, current output off, analyzer continuous) and then *reads back* the instruments; the
:class:`SafeStateReport` it returns says "safe" only when the read-back shows RF off, the
current source's output off and both its measured current and its set-point below the
threshold. Anything unknown (an instrument that did not answer) counts as not safe.

Every report made in this process is also kept in :data:`REPORTS`, so the command line can
print, on every exit path, what the rig was measured to be in -- never an assumption.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Optional

from .errors import InstrumentError

logger = logging.getLogger(__name__)


@dataclass
class SafeStateReport:
    """What the rig read back after the safe steps (None: could not be read)."""

    station: str
    threshold_a: float
    rf_output: Optional[bool] = None
    current_output: Optional[bool] = None
    current_setpoint_a: Optional[float] = None
    measured_current_a: Optional[float] = None
    analyzer_continuous: Optional[bool] = None
    #: role -> resource, for the instructions
    resources: dict = field(default_factory=dict)
    #: the station's roles
    roles: tuple = ()
    #: roles that could not be asked (never connected, refused as the wrong model, or silent):
    #: their state is unknown, never assumed
    unreached: tuple = ()
    #: the safe steps that failed, as "<role>: <what> failed: <why>"
    problems: list = field(default_factory=list)

    def rf_safe(self) -> bool:
        return "signal_generator" not in self.roles or self.rf_output is False

    def current_safe(self) -> bool:
        if "current_source" not in self.roles:
            return True
        small = [value is not None and math.isfinite(value) and abs(value) <= self.threshold_a
                 for value in (self.current_setpoint_a, self.measured_current_a)]
        return self.current_output is False and all(small)

    @property
    def safe(self) -> bool:
        """RF off, current output off, measured current and set-point below the threshold."""
        return self.rf_safe() and self.current_safe()

    def measured(self) -> str:
        """The read-back, in words."""
        def show(value, unit="", yes="on", no="off"):
            if value is None:
                return "UNKNOWN (no read-back)"
            if isinstance(value, bool):
                return yes if value else no
            return f"{value:.4g} {unit}".strip()
        parts = []
        if "signal_generator" in self.unreached:
            parts.append("RF output UNKNOWN (the signal generator was not reached)")
        elif "signal_generator" in self.roles:
            parts.append(f"RF output {show(self.rf_output)}")
        if "current_source" in self.unreached:
            parts.append("current UNKNOWN (the current source was not reached)")
        elif "current_source" in self.roles:
            parts.append(f"current {show(self.measured_current_a, 'A')} measured, set-point "
                         f"{show(self.current_setpoint_a, 'A')}, output {show(self.current_output)}")
        if "spectrum_analyzer" in self.roles and self.analyzer_continuous is not None:
            parts.append(f"analyzer {'continuous' if self.analyzer_continuous else 'single'} sweep")
        return "; ".join(parts) or "no instrument was connected"

    def by_hand(self) -> list[str]:
        """What the user must do at the bench when the read-back is not safe."""
        steps = []
        if not self.rf_safe():
            steps.append(f"switch the RF output of the signal generator at "
                         f"{self.resources.get('signal_generator', '?')} off")
        if not self.current_safe():
            steps.append(f"find the current source (the station names {self.resources.get('current_source', '?')}): "
                         f"if current flows, ramp it slowly to 0 A, then switch its output off" if "current_source" in
                         self.unreached else
                         f"ramp the current source at {self.resources.get('current_source', '?')} slowly to "
                         f"0 A (the magnet is inductive: never switch it off with current flowing), then "
                         f"switch its output off")
        return steps

    def __str__(self) -> str:
        if self.safe:
            text = f"the rig was left safe (read back: {self.measured()})"
            if self.problems:
                text += "; steps that needed more than one try or failed: " + "; ".join(self.problems)
            return text
        lines = [f"WARNING: THE RIG MAY NOT BE SAFE ({self.station}). Read back: {self.measured()}."]
        if self.problems:
            lines.append("What failed: " + "; ".join(self.problems) + ".")
        lines.append("Do by hand now: " + "; then ".join(self.by_hand()) + ".")
        return "\n".join(lines)


class UnsafeStateError(InstrumentError):
    """Leaving the rig safe did not end in a safe read-back; ``report`` says what was measured."""

    def __init__(self, report: SafeStateReport):
        self.report = report
        super().__init__(str(report))


#: every report made in this process, oldest first (read by the command line)
REPORTS: list[SafeStateReport] = []


def record(report: SafeStateReport) -> SafeStateReport:
    REPORTS.append(report)
    if report.safe:
        logger.info("%s", report)
    else:
        logger.error("%s", report)
    return report
