"""The physical layer on a station: knobs -> instrument settings -> spectrum -> features.

One measurement per sample per virtual node: the signal generator is set (frequency and power
joined in one write, one ``*OPC?``), the analyzer sweeps once and its trace is read as a
binary block, the readout turns the trace into features, and the run file appends the row.
The bias current is a physical *parameter*: it changes at most once per call and is ramped.
"""
from __future__ import annotations

import time

import numpy as np

from .encoding import BandReadout, KnobEncoder
from .interfaces import NullRecorder, Perturbation, Recorder

#: flags written with every measurement (bitmask)
FLAG_OVERLOAD = 1
FLAG_UNLOCKED = 2
FLAG_REPEATED = 4
FLAG_FAULT = 8
FLAG_SIMULATED = 16


class StationReservoir:
    """The ring measured through a connected :class:`instruments.station.Station`."""

    def __init__(self, station, encoder: KnobEncoder, readout: BandReadout,
                 recorder: Recorder | None = None, *, simulated: bool = False):
        self.station = station
        self.encoder = encoder
        self.readout = readout
        self.recorder = recorder or NullRecorder()
        self.n_inputs = encoder.n_inputs
        self.n_features = encoder.n_nodes * readout.n_bands
        self.measurements = 0
        self.flags_base = FLAG_SIMULATED if simulated else 0
        self._current_a: float | None = None
        self._configure_analyzer()

    def _configure_analyzer(self) -> None:
        sa = self.station.spectrum_analyzer
        sa.configure(center_hz=self.readout.center_hz, span_hz=self.readout.span_hz,
                     rbw_hz=self.readout.rbw_hz, points=self.readout.points,
                     reference_level_dbm=sa.reference_level_dbm)
        self.station.signal_generator.output_enabled = True

    def set_current(self, current_a: float) -> None:
        """Ramp the bias magnet to ``current_a`` unless it is there already (once per step at most)."""
        current_a = self.encoder.check_current(current_a)
        if self._current_a != current_a:
            self.station.current_source.ramp_to(current_a)
            self._current_a = current_a

    def measure(self, u, *, current_a, kind, step, sample_index, perturbation=Perturbation()) -> np.ndarray:
        settings = self.encoder.encode(u, current_a)  # rejects NaN/inf/out-of-range before any instrument moves
        self.set_current(current_a)
        freq_hz, power_dbm = settings["drive_frequency_hz"], settings["drive_power_dbm"]
        batch, nodes = freq_hz.shape
        sg, sa = self.station.signal_generator, self.station.spectrum_analyzer
        features = np.empty((batch, self.n_features))
        width = self.readout.n_bands
        axis = (self.readout.freqs_hz[0], self.readout.freqs_hz[-1], self.readout.points)
        for i in range(batch):
            for node in range(nodes):
                sg.configure_cw(float(freq_hz[i, node]), float(power_dbm[i, node]))
                _, trace = sa.measure()
                row = self.readout.features(trace[None, :])[0]
                features[i, node * width:(node + 1) * width] = row
                self.measurements += 1
                self.recorder.measurement({
                    "time_s": time.time(), "step": step, "kind": kind,
                    "sample_index": int(sample_index[i]), "node": node,
                    "perturbation_direction": perturbation.direction,
                    "perturbation_sign": perturbation.sign,
                    "settings": {"frequency_hz": float(freq_hz[i, node]),
                                 "power_dbm": float(power_dbm[i, node]),
                                 "current_a": float(current_a)},
                    "trace_dbm": np.asarray(trace, dtype=np.float32),
                    "frequency_axis": axis,
                    "features": row,
                    "flags": self.flags_base | (FLAG_OVERLOAD if getattr(sa, "overloaded", False) else 0),
                })
        return features
