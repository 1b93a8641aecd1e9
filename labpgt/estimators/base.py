"""What every estimator shares: Rademacher draws, a measured forward pass, a tap on a reservoir.

Coordinates. The bias current (A) lives in the same flat vector as the weights but moves on a
scale of ~1 mA, so every perturbation of parameters is ``eps * model.param_scale() * Delta``
(the trainer likewise optimises params / param_scale). Gradients are always returned in the
model's own units (d loss / d param). All randomness comes from the ``rng`` passed to
``estimate`` (a numpy Generator), so a run is reproducible and resumable.
"""
from __future__ import annotations

import base64

import numpy as np

from labpgt.contracts import Estimate, Perturbation, Reservoir

__all__ = ["Estimate", "EstimatorBase", "Tap", "measured_loss", "pack", "rademacher", "unpack"]


def rademacher(rng: np.random.Generator, shape) -> np.ndarray:
    """+/-1 with equal probability (float64)."""
    return rng.integers(0, 2, size=shape) * 2.0 - 1.0


class EstimatorBase:
    """Defaults of the :class:`labpgt.contracts.Estimator` contract for stateless estimators."""

    name = "?"

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def options(self) -> dict:
        return {}

    def check_model(self, model) -> None:
        pass


def check_kick_fits(name: str, what: str, size: float, model) -> None:
    """A kick of ``size`` on knobs inside [-u_scale, u_scale] must stay inside [-1, 1]."""
    if size > 1.0 - model.u_scale + 1e-12:
        raise ValueError(f"{name} {what} {size} would push knobs outside [-1, 1]: it must be <= 1 - u_scale = "
                         f"{1.0 - model.u_scale:.3g}")


def measured_loss(model, reservoir, params, x, y, *, step, sample_index, perturbation, kind="train"):
    """Full forward pass at the given parameter vector: (per-sample losses, features)."""
    u, _ = model.encode(x, params)
    features = reservoir.measure(
        u, current_a=model.current_a(params), kind=kind, step=step, sample_index=sample_index,
        perturbation=perturbation,
    )
    return model.per_sample_loss(features, y, params), features


def pack(a: np.ndarray) -> dict:
    """An array as JSON: shape plus base64 of its little-endian float64 bytes (exact)."""
    a = np.ascontiguousarray(a, dtype="<f8")
    return {"shape": list(a.shape), "f8": base64.b64encode(a.tobytes()).decode("ascii")}


def unpack(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["f8"]), dtype="<f8").reshape(d["shape"]).astype(np.float64)


class Tap(Reservoir):
    """A reservoir seen through a tap: every measure() call's (u, current, features) is kept."""

    def __init__(self, reservoir: Reservoir):
        self.inner = reservoir
        self.calls: list[tuple[np.ndarray, float, np.ndarray]] = []
        self.n_inputs, self.n_features = reservoir.n_inputs, reservoir.n_features
        self.n_nodes, self.independent_nodes = reservoir.n_nodes, reservoir.independent_nodes

    @property
    def measurements(self) -> int:
        return self.inner.measurements

    def measure(self, u, *, current_a, kind, step, sample_index, perturbation=Perturbation()):
        features = self.inner.measure(u, current_a=current_a, kind=kind, step=step, sample_index=sample_index,
                                      perturbation=perturbation)
        self.calls.append((np.array(u, dtype=np.float64), float(current_a), features))
        return features
