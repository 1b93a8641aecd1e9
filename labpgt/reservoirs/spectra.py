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
