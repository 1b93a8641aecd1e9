"""The contracts between the trainer, the estimators, the reservoirs and the run file.

Everything that trains talks to a :class:`Reservoir` (the black box in the middle of the
model) and reports what happened to a :class:`Recorder` (the run file, or nothing). An
:class:`Estimator` turns measurements into a gradient estimate; a :class:`Transformation`
(training/optim.py) turns that estimate into a parameter update.

Optional capabilities are small separate protocols that a class *declares* by inheriting
from them, and that the experiment builder checks once, when it wires an experiment:

- :class:`NoiselessModel`: a noise-free model of the reservoir (the oracle's and the backprop
  baseline's view of it; costs no measurement). The simulated ring and the echo-state network
  are one; a real station is not.
- :class:`DifferentiableModel`: a noiseless model with an exact vector-Jacobian product.

Whether a reservoir's virtual nodes are independent measurements is part of the reservoir
contract (``independent_nodes``), not an optional attribute.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

#: kinds of measurement, as written to the run file
KINDS = ("train", "probe", "eval")

#: flags written with every measurement row (a bitmask; the run file names them in flag_meanings)
FLAG_OVERLOAD = 1  # the analyzer reported an overloaded sweep
FLAG_UNLOCKED = 2  # a source reported it was not locked
FLAG_REPEATED = 4  # the measurement was taken again after a fault
FLAG_FAULT = 8  # a fault touched this row (recovered or not)
FLAG_SIMULATED = 16  # measured on a simulated ring (embedded station or in-process reservoir)


@dataclass(frozen=True)
class Perturbation:
    """Which perturbation a measurement belongs to: direction id within the step and sign (+1/-1, 0 = clean).

    block: which pass through the ring within one forward pass of a deep physical network
    (labpgt/models/deep.py; 0 for the single-pass models). The run file keeps it in the ``node``
    column as ``block * nodes_per_pass + virtual node`` (labpgt/models/deep.py: ``block_of_node``).
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
    n_nodes: int  # virtual nodes per sample (one measurement each)
    #: True when each virtual node is its own measurement: a kick of one node's knobs changes
    #: only that node's features (the ring, the toy); False for a state carried across the
    #: nodes (the echo-state network)
    independent_nodes: bool
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


@runtime_checkable
class NoiselessModel(Protocol):
    """Declared by a model of the reservoir without noise (simulated reservoirs only)."""

    def noiseless(self, u: np.ndarray, current_a: float) -> np.ndarray:
        """The noise-free features [B, n_features]; costs no measurement."""
        ...


@runtime_checkable
class DifferentiableModel(NoiselessModel, Protocol):
    """Declared by a noiseless model with an exact vector-Jacobian product."""

    def vjp(self, u: np.ndarray, current_a: float, grad_features: np.ndarray) -> tuple[np.ndarray, float]:
        """(dL/du [B, n_inputs], dL/dcurrent_a) for dL/dfeatures = ``grad_features``."""
        ...


class Recorder(Protocol):
    """Receives everything a run produces. The HDF5 run file implements it; NullRecorder drops it.

    ``measurements_batch`` takes a batch of rows (arrays of one row per sample x node, scalars
    shared by the batch: see ``labpgt.runfile.writer.RunFile.measurements_batch``).
    ``n_measurements`` is the number of measurement rows recorded so far (a fault names its row).
    """

    def measurements_batch(self, batch: dict) -> None: ...

    def step(self, record: dict) -> None: ...

    def evaluation(self, record: dict) -> None: ...

    def checkpoint(self, state: dict) -> None: ...

    def fault(self, record: dict) -> None: ...

    @property
    def n_measurements(self) -> int: ...


class NullRecorder:
    """A recorder that keeps nothing (benchmarks, tests); it counts the rows it was given."""

    def __init__(self) -> None:
        self._rows = 0

    def measurements_batch(self, batch: dict) -> None:
        self._rows += len(batch["features"])

    def step(self, record: dict) -> None:
        pass

    def evaluation(self, record: dict) -> None:
        pass

    def checkpoint(self, state: dict) -> None:
        pass

    def fault(self, record: dict) -> None:
        pass

    @property
    def n_measurements(self) -> int:
        return self._rows


@dataclass
class Estimate:
    """What an estimator returns for one step."""

    grad: np.ndarray  # flat, like model.params(): d(mean loss)/d(params), in the model's units
    loss: float  # mean loss of the batch, from measured features
    accuracy: float  # fraction of the batch classified correctly (or 1 - normalised error)
    measurements_spent: int  # exactly what reservoir.measurements advanced by
    extra: dict = field(default_factory=dict)  # scalars worth recording with the step


class Estimator(Protocol):
    """A gradient estimator: one job, given the model, a batch and the reservoir.

    All randomness comes from ``rng``; state that must survive a resume goes through
    ``state_dict`` / ``load_state_dict`` (JSON-friendly). ``options()`` are the options it
    actually uses (recorded in the run file). ``check_model`` refuses a model it cannot train
    (e.g. a perturbation that would leave [-1, 1]) before any instrument moves.
    """

    name: str

    def estimate(self, model, reservoir: Reservoir, x: np.ndarray, y: np.ndarray, sample_index: np.ndarray,
                 step: int, rng: np.random.Generator) -> Estimate: ...

    def options(self) -> dict: ...

    def check_model(self, model) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Transformation(Protocol):
    """An optimizer piece (optax style): ``init_state(params)``, ``transform(grad, state, params)``."""

    def init_state(self, params: np.ndarray) -> dict: ...

    def transform(self, grad: np.ndarray, state: dict, params: np.ndarray) -> tuple[np.ndarray, dict]: ...

    def config(self) -> dict: ...
