"""Stand-ins for the ring, to measure what the ring itself contributes to a trained network.

The same hybrid model (digital layers -> knobs -> "reservoir" -> readout) is trained with the
ring replaced by:

- the ring's noiseless digital model: ``DirectRingReservoir(RingParams(noise_scale=0))``
  (no class needed here; :func:`make_stand_in` builds it);
- a fixed random nonlinearity of the same width: :class:`labpgt.reservoirs.direct.ToyReservoir`
  (tanh of a fixed random projection of each node's knobs, ``n_bands`` features per node);
- nothing: :class:`PassThroughReservoir`, whose features are the knobs themselves.

Each stand-in counts one measurement per sample per virtual node, like the ring, so budgets
compare directly. They are for in-process benchmarks (scripts/bench_digits.py), not stations.
"""
from __future__ import annotations

import numpy as np

from labpgt.contracts import NoiselessModel, Perturbation, Reservoir
from labpgt.reservoirs.encoding import KNOBS_PER_NODE, check_knobs

STAND_INS = ("ring", "noiseless", "random", "none")


class PassThroughReservoir(Reservoir, NoiselessModel):
    """Features = the knobs (normalised units), ``n_nodes`` x 2 per sample; noiseless.

    ``current_a`` is accepted and ignored: nothing here depends on it, so a trained current
    simply gets a zero gradient.
    """

    independent_nodes = True

    def __init__(self, n_nodes: int = 1, knobs_per_node: int = KNOBS_PER_NODE):
        self.n_nodes, self.knobs_per_node = int(n_nodes), int(knobs_per_node)
        self.n_inputs = self.n_nodes * self.knobs_per_node
        self.n_features = self.n_inputs
        self.measurements = 0

    def noiseless(self, u: np.ndarray, current_a: float) -> np.ndarray:
        return check_knobs(u, self.n_inputs).copy()

    def measure(self, u, *, current_a, kind, step, sample_index, perturbation=Perturbation()) -> np.ndarray:
        features = self.noiseless(u, current_a)
        self.measurements += len(features) * self.n_nodes
        return features


def make_stand_in(kind: str, *, seed: int, n_nodes: int, readout: dict | None = None, ring_params=None):
    """The reservoir for one ablation arm.

    kind: ``ring`` (the simulated ring with ``ring_params``, noise included), ``noiseless`` (the
    same physics with noise_scale 0), ``random`` (a fixed random tanh map with as many features
    per node as the readout has bands, noiseless), ``none`` (the knobs as features).
    readout: BandReadout fields for the ring arms (n_bands is also the random map's width).
    """
    from dataclasses import replace

    from labpgt.reservoirs.direct import DirectRingReservoir, ToyReservoir, simulated_ring_params

    readout = dict(readout or {})
    params = ring_params if ring_params is not None else simulated_ring_params(drift=False)
    if kind == "ring":
        return DirectRingReservoir(params, seed=seed, n_nodes=n_nodes, readout=readout)
    if kind == "noiseless":
        return DirectRingReservoir(replace(params, noise_scale=0.0), seed=seed, n_nodes=n_nodes, readout=readout)
    if kind == "random":
        return ToyReservoir(n_nodes=n_nodes, knobs_per_node=KNOBS_PER_NODE,
                            features_per_node=int(readout.get("n_bands", 10)), noise_std=0.0, seed=seed)
    if kind == "none":
        return PassThroughReservoir(n_nodes=n_nodes)
    raise ValueError(f"unknown stand-in {kind!r}; allowed: {', '.join(STAND_INS)}")
