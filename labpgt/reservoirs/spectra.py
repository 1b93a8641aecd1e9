"""Reading a spectrum: the strongest peaks of a trace."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Peak:
    frequency_hz: float
    power_dbm: float


def strongest_peaks(frequencies_hz: np.ndarray, power_dbm: np.ndarray, count: int = 5,
                    min_prominence_db: float = 12.0) -> list[Peak]:
    """The ``count`` strongest local maxima that stand ``min_prominence_db`` above the trace median.

    The median is a robust estimate of the noise floor: a trace is mostly floor, lines are narrow.
    """
    power = np.asarray(power_dbm, dtype=np.float64)
    freqs = np.asarray(frequencies_hz, dtype=np.float64)
    if power.shape != freqs.shape or power.ndim != 1:
        raise ValueError(f"trace and frequency axis must be 1-D of equal length, got {power.shape} and {freqs.shape}")
    if power.size < 3:
        return []
    floor = float(np.median(power))
    inner = power[1:-1]
    is_max = (inner >= power[:-2]) & (inner > power[2:]) & (inner > floor + min_prominence_db)
    idx = np.nonzero(is_max)[0] + 1
    idx = idx[np.argsort(power[idx])[::-1][:count]]
    return [Peak(float(freqs[i]), float(power[i])) for i in idx]


# --------------------------------------------------------------------------- a plausible line
#: a line must stand this far above the trace median (the noise floor)
LINE_MIN_ABOVE_FLOOR_DB = 15.0
#: ... and this far above its surroundings (the trace within SURROUNDINGS_FRACTION of the span on
#: each side, its own few points left out): a skirt rising towards something else is not a line
LINE_MIN_PROMINENCE_DB = 10.0
SURROUNDINGS_FRACTION = 0.05
#: ... and not within this fraction of the span from either end (the skirt of a line outside)
EDGE_FRACTION = 0.02


@dataclass(frozen=True)
class LineVerdict:
    """The best line of a trace and whether it is plausible (``reasons`` empty) or why not."""

    peak: Peak | None
    above_floor_db: float
    prominence_db: float
    reasons: tuple[str, ...]

    @property
    def plausible(self) -> bool:
        return self.peak is not None and not self.reasons

    def describe(self) -> str:
        if self.peak is None:
            return "no local maximum at all"
        return (f"{self.peak.frequency_hz / 1e9:.6f} GHz at {self.peak.power_dbm:.1f} dBm "
                f"({self.above_floor_db:.1f} dB above the floor, {self.prominence_db:.1f} dB above its surroundings)"
                + (f": {'; '.join(self.reasons)}" if self.reasons else ""))


def _judge(freqs: np.ndarray, power: np.ndarray, i: int, floor: float) -> LineVerdict:
    n = power.size
    reach = max(2, int(round(SURROUNDINGS_FRACTION * n)))
    own = max(1, int(round(0.005 * n)))  # the line's own width, left out of its surroundings
    around = np.concatenate([power[max(0, i - reach):max(0, i - own)], power[i + own + 1:i + reach + 1]])
    prominence = float(power[i] - np.median(around)) if around.size else 0.0
    above = float(power[i] - floor)
    edge = max(1, int(round(EDGE_FRACTION * n)))
    reasons = []
    if above < LINE_MIN_ABOVE_FLOOR_DB:
        reasons.append(f"only {above:.1f} dB above the noise floor (at least {LINE_MIN_ABOVE_FLOOR_DB:g} dB)")
    if prominence < LINE_MIN_PROMINENCE_DB:
        reasons.append(f"only {prominence:.1f} dB above its surroundings (at least {LINE_MIN_PROMINENCE_DB:g} dB)")
    if i < edge or i >= n - edge:
        reasons.append("at the window's edge (the skirt of a line outside the window?)")
    return LineVerdict(Peak(float(freqs[i]), float(power[i])), above, prominence, tuple(reasons))


def find_line(frequencies_hz: np.ndarray, power_dbm: np.ndarray, candidates: int = 5) -> LineVerdict:
    """The strongest *plausible* line of a trace: a local maximum above the noise floor, prominent
    against its surroundings and not at the window's edge. None plausible: the verdict on the
    strongest candidate, with its reasons (the caller refuses, naming it)."""
    power = np.asarray(power_dbm, dtype=np.float64)
    freqs = np.asarray(frequencies_hz, dtype=np.float64)
    if power.shape != freqs.shape or power.ndim != 1:
        raise ValueError(f"trace and frequency axis must be 1-D of equal length, got {power.shape} and {freqs.shape}")
    floor = float(np.median(power))
    peaks = strongest_peaks(freqs, power, count=candidates, min_prominence_db=0.0)
    if not peaks:  # a monotonic trace: its highest point is the best there is
        return _judge(freqs, power, int(np.argmax(power)), floor)
    verdicts = [_judge(freqs, power, int(np.searchsorted(freqs, p.frequency_hz)), floor) for p in peaks]
    return next((v for v in verdicts if v.plausible), verdicts[0])
