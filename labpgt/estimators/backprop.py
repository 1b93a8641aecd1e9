"""``backprop``: the differentiable baseline -- full backpropagation, the reservoir made differentiable for this estimator only.

Not a physical training method: it needs a noiseless (and, where there is one, differentiable)
model of the reservoir, so it exists for the in-process reservoirs of the transformer.
"""
from __future__ import annotations

import numpy as np

from labpgt.contracts import DifferentiableModel, NoiselessModel, Perturbation
from labpgt.estimators.base import Estimate, EstimatorBase


def reservoir_vjp(model: NoiselessModel, u: np.ndarray, current_a: float, grad_features: np.ndarray, *,
                  n_nodes: int, independent_nodes: bool, fd_step: float = 0.05, current_fd_step_a: float = 1e-4):
    """(dL/du [B, n_inputs], dL/dcurrent_a) for dL/dfeatures = grad_features, through the NOISELESS reservoir model.

    Uses ``model.vjp`` when the model declares :class:`~labpgt.contracts.DifferentiableModel`
    (exact); otherwise central differences of ``model.noiseless`` (costs no measurement).
    Reservoirs whose virtual nodes are independent measurements (the ring, the toy) are
    differenced one knob index at a time across all ``n_nodes`` nodes at once: 2k noiseless
    batches instead of 2Tk.
    """
    if isinstance(model, DifferentiableModel):
        return model.vjp(u, current_a, grad_features)
    noiseless = model.noiseless
    batch = len(u)
    grad_u = np.empty_like(u)
    if independent_nodes:
        nodes = n_nodes
        k, m = u.shape[1] // nodes, grad_features.shape[1] // nodes
        g = grad_features.reshape(batch, nodes, m)
        for j in range(k):
            up, down = u.copy(), u.copy()
            up[:, j::k] += fd_step
            down[:, j::k] -= fd_step
            # node t's features depend on node t's knobs only, so one difference gives every node's column j
            jac = ((noiseless(up, current_a) - noiseless(down, current_a)) / (2 * fd_step)).reshape(batch, nodes, m)
            grad_u[:, j::k] = np.sum(g * jac, axis=2)
    else:
        for j in range(u.shape[1]):
            up, down = u.copy(), u.copy()
            up[:, j] += fd_step
            down[:, j] -= fd_step
            grad_u[:, j] = np.sum(grad_features * (noiseless(up, current_a) - noiseless(down, current_a)), axis=1) / (
                2 * fd_step)
    jac_i = (noiseless(u, current_a + current_fd_step_a) - noiseless(u, current_a - current_fd_step_a)) / (
        2 * current_fd_step_a)
    return grad_u, float(np.sum(grad_features * jac_i))


class Backprop(EstimatorBase):
    """Full backpropagation, the baseline: the reservoir made differentiable for this estimator ONLY.

    One clean measured forward pass (B*T measurements per step); the readout's gradient at the
    measured features is exact; the gradient crosses the reservoir through its analytic VJP
    (echo-state) or central differences of its noiseless model (ring; fd_step in knob units,
    current_fd_step_a in A, None = 0.1 * model.current_scale_a), then backpropagates through
    the transformer. Works for any model with the HybridModel interface.
    """

    name = "backprop"

    def __init__(self, fd_step: float = 0.05, current_fd_step_a: float | None = None, *,
                 reservoir_model: NoiselessModel | None = None):
        if fd_step <= 0:
            raise ValueError("fd_step must be > 0")
        self.fd_step, self.current_fd_step_a = float(fd_step), current_fd_step_a
        self.reservoir_model = reservoir_model  # given by the builder: not an option, not recorded

    def options(self) -> dict:
        return dict(fd_step=self.fd_step, current_fd_step_a=self.current_fd_step_a)

    def check_model(self, model) -> None:
        if not isinstance(self.reservoir_model, DifferentiableModel) and self.fd_step > 1.0 - model.u_scale + 1e-12:
            raise ValueError(f"backprop fd_step {self.fd_step} must be <= 1 - u_scale = {1.0 - model.u_scale:.3g}")

    def estimate(self, model, reservoir, x, y, sample_index, step, rng):
        if self.reservoir_model is None:
            raise TypeError("backprop needs a differentiable model of the reservoir (vjp or noiseless); none was "
                            "given (a real station cannot be backpropagated through)")
        self.check_model(model)
        start = reservoir.measurements
        u, cache = model.encode(x)
        current = model.current_a()
        features = reservoir.measure(u, current_a=current, kind="train", step=step, sample_index=sample_index,
                                     perturbation=Perturbation())
        g_read, g_features, per_sample, accuracy = model.readout_gradient(features, y)
        current_step = self.current_fd_step_a if self.current_fd_step_a is not None else 0.1 * model.current_scale_a
        grad_u, grad_current = reservoir_vjp(self.reservoir_model, u, current, g_features, fd_step=self.fd_step,
                                             current_fd_step_a=current_step, n_nodes=reservoir.n_nodes,
                                             independent_nodes=reservoir.independent_nodes)
        grad = model.backward_encode(cache, grad_u) + g_read
        if model.train_current:
            grad[model.slots["physical.current_a"].slice] = grad_current
        return Estimate(grad, float(per_sample.mean()), accuracy, reservoir.measurements - start)
