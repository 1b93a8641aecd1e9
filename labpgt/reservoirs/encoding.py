"""How knobs become instrument settings, and how a trace becomes features.

Both the direct simulated reservoir and the station reservoir (real instruments) use exactly
these two classes, so a network trained on one sees the same encoding on the other.

- :class:`KnobEncoder`: normalised knobs u in [-1, 1] -> settings in SI units. Per virtual node
  two knobs: the drive's detuning from a reference frequency (Hz) and the drive's power (dBm),
  both linear in u. Anything non-finite or outside [-1, 1], or a current outside the allowed
  range, is rejected with a ValueError naming the value and the range (never clamped).
- :class:`BandReadout`: the analyzer window (centre, span, points, RBW) and the features: the
  trace (dBm) cut into M equal bands, each reduced to its maximum (or mean) in dBm, then
  normalised with fixed constants, (dBm + offset_db) / scale_db, so the same trace always gives
  the same features (a replay is bit-identical; no per-run statistics).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

KNOBS_PER_NODE = 2  # (detuning, power)


def check_knobs(u: np.ndarray, n_inputs: int) -> np.ndarray:
    """``u`` as float64 [batch, n_inputs] with every value finite and inside [-1, 1], or a
    ValueError naming the first bad value (every reservoir checks its knobs this way)."""
    u = np.asarray(u, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] != n_inputs:
        raise ValueError(f"knobs must have shape [batch, {n_inputs}], got {u.shape}")
    bad = ~np.isfinite(u) | (np.abs(u) > 1.0)
    if bad.any():
        sample, knob = np.argwhere(bad)[0]
        raise ValueError(
            f"knob value {u[sample, knob]!r} (sample {sample}, knob {knob}) is outside the "
            f"allowed range [-1, 1] or not finite; {int(bad.sum())} bad value(s) in total"
        )
    return u


@dataclass(frozen=True)
class KnobEncoder:
    """u [B, n_nodes * 2] in [-1, 1] -> drive frequency (Hz) and power (dBm) per sample and node.

    Knob 2j of a sample is node j's detuning: reference_hz + u * detuning_span_hz.
    Knob 2j+1 is node j's power: linear from power_min_dbm (u = -1) to power_max_dbm (u = +1).
    """

    n_nodes: int
    reference_hz: float
    detuning_span_hz: float = 10e6
    power_min_dbm: float = -40.0
    power_max_dbm: float = -5.0
    current_min_a: float = 0.0
    current_max_a: float = 3.0

    @property
    def n_inputs(self) -> int:
        return self.n_nodes * KNOBS_PER_NODE

    def check_current(self, current_a: float) -> float:
        current_a = float(current_a)
        if not np.isfinite(current_a) or not self.current_min_a <= current_a <= self.current_max_a:
            raise ValueError(
                f"bias current {current_a!r} A is outside the allowed range "
                f"[{self.current_min_a}, {self.current_max_a}] A"
            )
        return current_a

    def check_knobs(self, u: np.ndarray) -> np.ndarray:
        return check_knobs(u, self.n_inputs)

    def encode(self, u: np.ndarray, current_a: float) -> dict:
        """Settings in SI units: drive_frequency_hz and drive_power_dbm [B, n_nodes], current_a (A)."""
        current_a = self.check_current(current_a)
        u = self.check_knobs(u)
        detuning = u[:, 0::KNOBS_PER_NODE]
        power = u[:, 1::KNOBS_PER_NODE]
        mid = 0.5 * (self.power_max_dbm + self.power_min_dbm)
        half = 0.5 * (self.power_max_dbm - self.power_min_dbm)
        return {
            "drive_frequency_hz": self.reference_hz + detuning * self.detuning_span_hz,
            "drive_power_dbm": mid + power * half,
            "current_a": current_a,
        }

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BandReadout:
    """Analyzer window and trace -> features.

    center_hz, span_hz, points, rbw_hz: the analyzer's sweep. n_bands: M equal bands across the
    span (points must divide evenly). statistic: "max" or "mean" of the dBm values per band.
    Feature = (statistic_dBm + offset_db) / scale_db.
    """

    center_hz: float
    span_hz: float = 30e6
    points: int = 301
    rbw_hz: float = 100e3
    n_bands: int = 10
    statistic: str = "max"
    offset_db: float = 60.0
    scale_db: float = 20.0

    def __post_init__(self):
        if self.statistic not in ("max", "mean"):
            raise ValueError(f"unknown band statistic {self.statistic!r}; allowed: max, mean")
        if self.n_bands < 1 or self.n_bands > self.points:
            raise ValueError(f"n_bands must be in [1, points={self.points}], got {self.n_bands}")

    @property
    def freqs_hz(self) -> np.ndarray:
        return np.linspace(self.center_hz - self.span_hz / 2, self.center_hz + self.span_hz / 2, self.points)

    def _edges(self) -> np.ndarray:
        # band boundaries in points; the last band takes the remainder so every point counts
        return np.linspace(0, self.points, self.n_bands + 1).round().astype(int)

    def band_edges_hz(self) -> tuple[np.ndarray, np.ndarray]:
        """(first, last) trace-point frequency of each band [n_bands]: what each feature covers."""
        edges, freqs = self._edges(), self.freqs_hz
        return freqs[edges[:-1]], freqs[edges[1:] - 1]

    def features(self, trace_dbm: np.ndarray) -> np.ndarray:
        """trace_dbm [n, points] -> features [n, n_bands] (float64)."""
        trace_dbm = np.asarray(trace_dbm, dtype=np.float64)
        if trace_dbm.ndim != 2 or trace_dbm.shape[1] != self.points:
            raise ValueError(f"trace must have shape [n, {self.points}], got {trace_dbm.shape}")
        edges = self._edges()
        reduce = np.maximum.reduceat if self.statistic == "max" else np.add.reduceat
        out = reduce(trace_dbm, edges[:-1], axis=1)
        if self.statistic == "mean":
            out = out / np.diff(edges)
        return (out + self.offset_db) / self.scale_db

    def to_dict(self) -> dict:
        return asdict(self)
