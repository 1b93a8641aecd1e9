"""What a sweep reads off each trace: the ring's line, and under a drive whether the ring is locked."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labpgt.reservoirs.spectra import find_line, strongest_peaks

#: locked: the strongest line sits on the drive (within this many RBW or two trace bins) ...
LOCK_TOLERANCE_RBW = 2.0
#: ... and nothing else (the free-running line, beat sidebands) stands within this of it
LOCK_SPUR_DBC = -30.0
#: a spur counts if it stands this far above the noise floor
SPUR_MIN_ABOVE_FLOOR_DB = 12.0


@dataclass(frozen=True)
class TraceReading:
    line_hz: float  # the strongest plausible line (NaN: none)
    line_dbm: float
    line_prominence_db: float
    line_found: int  # 1 plausible, 0 not
    locked: int  # 1 locked to the drive, 0 not, 2 no drive (RF off)
    spurs: int  # other lines above the floor (sidebands, the unlocked line, the tone)
    strongest_spur_dbc: float  # relative to the line (NaN: none)


def read_trace(freqs_hz: np.ndarray, trace_dbm: np.ndarray, rbw_hz: float,
               drive_frequency_hz: float | None = None) -> TraceReading:
    verdict = find_line(freqs_hz, trace_dbm)
    peak = verdict.peak
    line_hz = peak.frequency_hz if verdict.plausible else float("nan")
    line_dbm = peak.power_dbm if verdict.plausible else float("nan")
    peaks = strongest_peaks(freqs_hz, trace_dbm, count=20, min_prominence_db=SPUR_MIN_ABOVE_FLOOR_DB)
    others = [p for p in peaks if peak is None or abs(p.frequency_hz - peak.frequency_hz) > 2 * rbw_hz]
    spur_dbc = max((p.power_dbm for p in others), default=float("nan")) - (peak.power_dbm if peak else np.nan)
    locked = 2
    if drive_frequency_hz is not None:
        bin_hz = float(freqs_hz[1] - freqs_hz[0]) if len(freqs_hz) > 1 else rbw_hz
        on_drive = verdict.plausible and abs(line_hz - drive_frequency_hz) <= max(LOCK_TOLERANCE_RBW * rbw_hz,
                                                                                   2 * bin_hz)
        locked = int(on_drive and not (spur_dbc > LOCK_SPUR_DBC))
    return TraceReading(line_hz, line_dbm, verdict.prominence_db, int(verdict.plausible), locked, len(others),
                        float(spur_dbc))
