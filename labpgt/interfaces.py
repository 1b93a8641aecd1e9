"""The contracts between the trainer, the physical layer and the run file.

Everything that trains talks to a :class:`Reservoir` (the black box in the middle of the
hybrid model) and reports what happened to a :class:`Recorder` (the run file, or nothing).
Two reservoirs implement the protocol: the station reservoir (a real measurement through the
instruments, one per sample and virtual node) and the direct simulated ring (the same physics
evaluated in-process, used by benchmarks, the oracle and the transformer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

#: kinds of measurement, as written to the run file
KINDS = ("train", "probe", "eval")


@dataclass(frozen=True)
class Perturbation:
    """Which perturbation a measurement belongs to: direction id within the step and sign (+1/-1, 0 = clean).

    block: which pass through the ring within one forward pass of a deep physical network
    (labpgt/deep.py; 0 for the single-pass models). The run file keeps it in the ``node``
    column as ``block * nodes_per_pass + virtual node`` (labpgt/deep.py: ``block_of_node``).
    """

    direction: int = -1
    sign: int = 0
    block: int = 0


@runtime_checkable
class Reservoir(Protocol):
    """A black-box layer measured, never differentiated.

    ``u`` holds each sample's knobs in normalised units, every value inside [-1, 1]
    (the encoder maps them linearly onto instrument settings inside the station's limits and
    rejects anything outside, never clamps). ``current_a`` is the bias current, a trainable
    physical parameter in amperes, changed at most once per step.
    """

    n_inputs: int  # knobs per sample (virtual nodes x knobs per node)
    n_features: int  # features per sample
    measurements: int  # measurements spent so far (one per sample per virtual node)

    def measure(
        self,
        u: np.ndarray,
        *,
        current_a: float,
        kind: str,
        step: int,
        sample_index: np.ndarray,
        perturbation: Perturbation = Perturbation(),
    ) -> np.ndarray:
        """Measure a batch: ``u`` [B, n_inputs] -> features [B, n_features] (float64)."""
        ...


class Recorder(Protocol):
    """Receives everything a run produces. The HDF5 run file implements it; NullRecorder drops it."""

    def measurement(self, record: dict) -> None: ...

    def step(self, record: dict) -> None: ...

    def evaluation(self, record: dict) -> None: ...

    def checkpoint(self, state: dict) -> None: ...


class NullRecorder:
    """A recorder that keeps nothing (benchmarks, tests)."""

    def measurement(self, record: dict) -> None:
        pass

    def step(self, record: dict) -> None:
        pass

    def evaluation(self, record: dict) -> None:
        pass

    def checkpoint(self, state: dict) -> None:
        pass
