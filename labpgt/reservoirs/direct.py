"""In-process reservoirs implementing :class:`labpgt.contracts.Reservoir`.

- :class:`ToyReservoir`: a fixed random tanh map with Gaussian noise; milliseconds per batch,
  for tests of estimators and the trainer.
- :class:`DirectRingReservoir`: the simulated magnonic ring (``sim.ring.Ring.spectra``)
  evaluated in-process and vectorised over the batch: the same physics and noise as the
  simulated instruments, without the wire. Uses the same :class:`~labpgt.reservoirs.encoding.KnobEncoder`
  and :class:`~labpgt.reservoirs.encoding.BandReadout` as the station reservoir.

Virtual nodes: a sample's knobs hold ``n_nodes`` groups of knobs; each group is one
measurement (one drive setting, one trace), and the sample's features are the concatenation
of the nodes' features. ``measurements`` counts one per sample per node.

Noise is a pure function of (seed, measurement counter): the generator for a batch is
``default_rng([seed, measurements_before_the_batch])``. So the only state is ``measurements``:
a trainer that restores it on resume gets bit-identical noise.
"""
from __future__ import annotations

import numpy as np

from labpgt.contracts import NoiselessModel, NullRecorder, Perturbation, Recorder, Reservoir
from labpgt.reservoirs.encoding import BandReadout, KnobEncoder, check_knobs


def simulated_ring_params(noise_scale: float = 1.0, drift: bool | None = None):
    """The simulated ring's parameters (``sim.ring.RingParams``) with a noise multiplier; ``drift`` on or off
    (None: the simulator's default, as the embedded station has it)."""
    from sim.ring import RingParams  # the simulator is only needed for the simulated reservoirs

    if drift is None:
        return RingParams(noise_scale=noise_scale)
    return RingParams(noise_scale=noise_scale, drift_enabled=drift)


class ToyReservoir(Reservoir, NoiselessModel):
    """features = tanh(u_node @ W + b + coupling * (current_a - current_ref_a) / 1 mA) + noise, per node.

    n_nodes virtual nodes with ``knobs_per_node`` knobs each and ``features_per_node`` outputs;
    noise_std is the Gaussian noise per feature (features are O(1)).
    """

    #: each virtual node is its own measurement: a kick of one node's knobs changes only that
    #: node's features (node-token credits each token separately only where this holds)
    independent_nodes = True

    def __init__(
        self,
        n_nodes: int = 1,
        knobs_per_node: int = 2,
        features_per_node: int = 16,
        noise_std: float = 0.02,
        seed: int = 0,
        current_ref_a: float = 1.8,
        current_coupling_per_ma: float = 0.1,
    ):
        self.n_nodes, self.knobs_per_node, self.features_per_node = n_nodes, knobs_per_node, features_per_node
        self.n_inputs = n_nodes * knobs_per_node
        self.n_features = n_nodes * features_per_node
        self.noise_std = float(noise_std)
        self.seed = int(seed)
        self.current_ref_a = float(current_ref_a)
        self.measurements = 0
        # the "physics": fixed by the seed, identical for every node (one device, time-multiplexed)
        physics = np.random.default_rng([self.seed, 0xD1CE])
        self.weight = physics.normal(0.0, 1.5, (knobs_per_node, features_per_node))
        self.bias = physics.normal(0.0, 0.5, features_per_node)
        self.coupling = physics.normal(0.0, current_coupling_per_ma, features_per_node)

    def _check(self, u: np.ndarray) -> np.ndarray:
        return check_knobs(u, self.n_inputs)

    def noiseless(self, u: np.ndarray, current_a: float) -> np.ndarray:
        """The noise-free features (the oracle's model); costs no measurement."""
        u = self._check(u)
        b = u.shape[0]
        per_node = u.reshape(b * self.n_nodes, self.knobs_per_node)
        drive = per_node @ self.weight + self.bias + self.coupling * (current_a - self.current_ref_a) / 1e-3
        return np.tanh(drive).reshape(b, self.n_features)

    def measure(self, u, *, current_a, kind, step, sample_index, perturbation=Perturbation()) -> np.ndarray:
        clean = self.noiseless(u, current_a)
        rng = np.random.default_rng([self.seed, self.measurements])
        self.measurements += u.shape[0] * self.n_nodes
        return clean + self.noise_std * rng.standard_normal(clean.shape)


class DirectRingReservoir(Reservoir, NoiselessModel):
    """The simulated ring, in-process and vectorised.

    ring_params: a ``sim.ring.RingParams`` (None = defaults); seed: noise seed; n_nodes: virtual
    nodes per sample; encoding: a KnobEncoder or a dict of its fields (reference_hz defaults to
    the free-running line at ``current_a``); readout: a BandReadout or a dict of its fields
    (center_hz defaults to the reference); current_a: the bias current the reference is taken at.
    recorder: a Recorder receiving the measured rows (settings, trace, features); none by default.
    """

    #: each virtual node is its own measurement: a kick of one node's knobs changes only that
    #: node's features (node-token credits each token separately only where this holds)
    independent_nodes = True

    def __init__(
        self,
        ring_params=None,
        seed: int = 0,
        n_nodes: int = 1,
        encoding: KnobEncoder | dict | None = None,
        readout: BandReadout | dict | None = None,
        current_a: float = 1.8,
        recorder: Recorder | None = None,
        seconds_per_measurement: float = 0.05,
    ):
        from sim.ring import Ring, RingParams  # the simulator is only needed for this reservoir

        self.seed = int(seed)
        self.params = ring_params if ring_params is not None else RingParams()
        self.ring = Ring(self.params, seed=self.seed)
        self.n_nodes = int(n_nodes)
        self.recorder = recorder if recorder is not None else NullRecorder()
        # a virtual clock from the counter, so drift (if the ring has any) replays identically
        self.seconds_per_measurement = float(seconds_per_measurement)
        if isinstance(encoding, KnobEncoder):
            self.encoder = encoding
        else:
            opts = dict(encoding or {})
            if "reference_hz" not in opts:
                opts["reference_hz"] = self._free_running_hz(current_a)
            self.encoder = KnobEncoder(n_nodes=self.n_nodes, **opts)
        if self.encoder.n_nodes != self.n_nodes:
            raise ValueError(f"encoder has {self.encoder.n_nodes} nodes, reservoir {self.n_nodes}")
        if isinstance(readout, BandReadout):
            self.readout = readout
        else:
            opts = dict(readout or {})
            opts.setdefault("center_hz", self.encoder.reference_hz)
            self.readout = BandReadout(**opts)
        self._freqs_hz = self.readout.freqs_hz
        self.n_inputs = self.encoder.n_inputs
        self.n_features = self.n_nodes * self.readout.n_bands
        self.measurements = 0

    def _free_running_hz(self, current_a: float) -> float:
        line = self.ring.free_running(self.field_oe(current_a))
        if line is None:
            raise ValueError(
                f"the ring does not oscillate at {current_a} A: give encoding={{'reference_hz': ...}} explicitly"
            )
        return float(line[0])

    def field_oe(self, current_a: float) -> float:
        """Bias field (Oe) once the magnet has settled at current_a (the coil lag is not simulated here)."""
        return self.params.coil_oe_per_a * current_a + self.params.remanence_oe

    def _traces(self, u: np.ndarray, current_a: float, rng) -> tuple[dict, np.ndarray]:
        settings = self.encoder.encode(u, current_a)
        drive_hz = settings["drive_frequency_hz"].ravel()  # [B * n_nodes], sample-major
        drive_dbm = settings["drive_power_dbm"].ravel()
        t_s = self.measurements * self.seconds_per_measurement
        traces = self.ring.spectra(
            self._freqs_hz, self.readout.rbw_hz, self.field_oe(current_a), drive_hz, drive_dbm, rng, t_s
        )
        return settings, np.asarray(traces)

    def noiseless(self, u: np.ndarray, current_a: float) -> np.ndarray:
        """Features of the noise-free ring (the oracle's model); costs no measurement."""
        _, traces = self._traces(u, current_a, None)
        return self.readout.features(traces).reshape(len(u), self.n_features)

    def measure(self, u, *, current_a, kind, step, sample_index, perturbation=Perturbation()) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.measurements])
        settings, traces = self._traces(u, current_a, rng)
        per_node = self.readout.features(traces)
        self._record(settings, traces, per_node, kind, step, sample_index, perturbation)
        self.measurements += len(u) * self.n_nodes
        return per_node.reshape(len(u), self.n_features)

    def _record(self, settings, traces, per_node, kind, step, sample_index, perturbation):
        """One row per sample x node, sample-major (the order they were 'measured')."""
        b = len(sample_index)
        batch = {
            "kind": kind,
            "step": int(step),
            "sample_index": np.repeat(np.asarray(sample_index), self.n_nodes),
            "node": np.tile(np.arange(self.n_nodes), b),
            "perturbation_direction": perturbation.direction,
            "perturbation_sign": perturbation.sign,
            "frequency_hz": settings["drive_frequency_hz"].ravel(),
            "power_dbm": settings["drive_power_dbm"].ravel(),
            "current_a": settings["current_a"],
            "frequency_axis": (self._freqs_hz[0], self._freqs_hz[-1], len(self._freqs_hz)),
            "time_s": (self.measurements + np.arange(b * self.n_nodes)) * self.seconds_per_measurement,
            "trace_dbm": traces,
            "features": per_node,
        }
        self.recorder.measurements_batch(batch)
