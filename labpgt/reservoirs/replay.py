"""A reservoir that answers with a run's recorded measurements, after checking each request.

:class:`ReplayReservoir` answers each ``measure()`` with the recorded features, in recorded
order, after checking that the request is the one recorded: same step, kind, sample indices,
virtual nodes, perturbation, and the settings the encoder makes of ``u`` and ``current_a``
equal to the recorded ones bit for bit. Any difference raises :class:`ReplayDivergence`
naming the step, sample, node and both values. Rows abandoned by a ``--resume`` (recorded
after the checkpoint the run continued from) are skipped, so a resumed run replays as the
uninterrupted run it stands for. The recorded rows are read a window at a time (the trainer asks
for them in order): a replay's memory does not grow with the run's length.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from labpgt.contracts import KINDS, Perturbation, Reservoir
from labpgt.runfile import RunReader
from labpgt.runfile.reader import WINDOW_ROWS, EffectiveRows

#: what a replay checks of each recorded row, and the features it answers with
RECORDED_COLUMNS = ("step", "kind", "sample_index", "node", "perturbation_direction", "perturbation_sign",
                    "frequency_hz", "power_dbm", "current_a", "features")


class ReplayDivergence(RuntimeError):
    """The replayed run asked for something other than what was recorded."""

    def __init__(self, message, *, step=None, sample_index=None, node=None, row=None):
        super().__init__(message)
        self.step, self.sample_index, self.node, self.row = step, sample_index, node, row


class RecordingExhausted(ReplayDivergence):
    """The replay asked for more measurements than the recording holds."""


def bits_of(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


class SettingsEncoder(Protocol):
    """What replay needs of a run's encoder: the settings it makes of knobs (KnobEncoder, KnobsOnly)."""

    n_nodes: int
    n_inputs: int

    def encode(self, u: np.ndarray, current_a: float) -> dict:
        """{"drive_frequency_hz": [B, V], "drive_power_dbm": [B, V], "current_a": float}"""
        ...


def encoder_settings(encoder: SettingsEncoder, u, current_a):
    """(frequency_hz [B, V], power_dbm [B, V], current_a float) the encoder makes of ``u``."""
    s = encoder.encode(u, current_a)
    freq = np.asarray(s["drive_frequency_hz"], dtype=np.float64)
    power = np.asarray(s["drive_power_dbm"], dtype=np.float64)
    return freq, power, float(s["current_a"])


class ReplayReservoir(Reservoir):
    """A Reservoir whose measurements are the recorded ones (see the module docstring).

    reader: a RunReader; encoder: the run's encoder (:class:`SettingsEncoder`);
    independent_nodes: whether the recorded reservoir's virtual nodes were independent
    measurements (as the recorded layout says: a ring or a station yes, an echo-state network no).
    """

    def __init__(self, reader: RunReader, encoder: SettingsEncoder, *, independent_nodes: bool = True,
                 window_rows: int = WINDOW_ROWS):
        self.encoder = encoder
        self.independent_nodes = bool(independent_nodes)
        self.n_nodes = int(encoder.n_nodes)
        self.n_inputs = int(encoder.n_inputs)
        self.features_per_node = reader.features_per_measurement
        self.n_features = self.n_nodes * self.features_per_node
        self.measurements = 0
        # the recorded rows are read a window at a time (the trainer asks for them in order), so
        # a replay holds ~window_rows rows whatever the run's length; the reader stays open
        self._reader = reader
        self._rows = EffectiveRows(reader.effective_ranges("measurements"))
        self.window_rows = max(1, int(window_rows))
        self._window_lo = 0  # effective position of the window's first row
        self._window = self._rows.read(reader.measurements, RECORDED_COLUMNS, 0, 0)
        self.position = 0  # next recorded row (index into the effective rows)

    @property
    def remaining(self) -> int:
        return len(self._rows) - self.position

    @property
    def recorded(self) -> int:
        """The effective rows the recording holds."""
        return len(self._rows)

    def _recorded(self, lo: int, need: int) -> dict:
        """The recorded columns of effective positions [lo, lo + need), from the window (read
        again from ``lo`` when it does not hold them: a window, or one request if larger)."""
        have = len(self._window["step"])
        if lo < self._window_lo or lo + need > self._window_lo + have:
            hi = min(len(self._rows), lo + max(need, self.window_rows))
            self._window = self._rows.read(self._reader.measurements, RECORDED_COLUMNS, lo, hi)
            self._window_lo = lo
        a = lo - self._window_lo
        return {c: v[a:a + need] for c, v in self._window.items()}

    def measure(self, u, *, current_a, kind, step, sample_index, perturbation=Perturbation()) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64)
        sample_index = np.asarray(sample_index)
        b, v = len(u), self.n_nodes
        need = b * v
        lo = self.position
        if lo + need > len(self._rows):
            raise RecordingExhausted(
                f"replay asks for {need} measurements at step {step} ({kind}), but the recording holds only "
                f"{self.remaining} more (of {len(self._rows)})", step=step)
        rec = self._recorded(lo, need)
        freq, power, cur = encoder_settings(self.encoder, u, current_a)
        req = {
            "step": np.full(need, step, dtype=np.int64),
            "kind": np.full(need, KINDS.index(kind), dtype=np.int8),
            "sample_index": np.repeat(sample_index.astype(np.int64), v),
            "node": np.tile(np.arange(v), b) + perturbation.block * v,  # models/deep.py: block_of_node
            "perturbation_direction": np.full(need, perturbation.direction),
            "perturbation_sign": np.full(need, perturbation.sign),
            "frequency_hz": freq.reshape(need),
            "power_dbm": power.reshape(need),
            "current_a": np.full(need, cur, dtype=np.float64),
        }
        for name, want in req.items():
            got = rec[name]
            bad = (bits_of(got) != bits_of(want)) if got.dtype.kind == "f" else (got != want)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                self._diverge(name, j, lo, rec, req, step, kind)
        self.position = lo + need
        self.measurements += need
        return rec["features"].reshape(b, v * self.features_per_node)

    def _diverge(self, name, j, lo, rec, req, step, kind):
        def show(col, x):
            if col == "kind":
                return repr(KINDS[int(x)])
            if isinstance(x, (float, np.floating)):
                return f"{float(x)!r} (0x{np.float64(x).view(np.uint64):016x})"
            return repr(int(x))
        row = self._rows.file_row(lo + j)
        raise ReplayDivergence(
            f"replay diverges at step {int(rec['step'][j])} (requested step {step}, {kind}), sample "
            f"{int(rec['sample_index'][j])}, node {int(rec['node'][j])} (recorded row {row}): {name} recorded "
            f"{show(name, rec[name][j])}, requested {show(name, req[name][j])}",
            step=int(rec["step"][j]), sample_index=int(rec["sample_index"][j]), node=int(rec["node"][j]), row=row)
