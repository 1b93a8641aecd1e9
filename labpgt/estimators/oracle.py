"""``oracle``: exact gradients of the noiseless ring, the upper bound (simulated reservoirs only).

Its Jacobian by central differences of the reservoir's noiseless model (costs no measurement)
times the loss gradient at the measured clean features. Cost B V per step. The builder gives it
the :class:`labpgt.contracts.NoiselessModel` of the experiment's reservoir.
"""
from __future__ import annotations

import numpy as np

from labpgt.contracts import NoiselessModel
from labpgt.estimators.base import Estimate, EstimatorBase


class Oracle(EstimatorBase):
    """Exact gradients of the noiseless model; measures only the clean forward pass.

    fd_step: central-difference step in u (normalised units) for the noiseless Jacobian;
    current_fd_step_a: the same for the current (A; None = 0.1 * model.current_scale_a).
    smoothing: number of jittered base points the Jacobian is averaged over (0 = the plain
    central difference at u). The noiseless ring has sharp injection-locking edges, so its
    pointwise Jacobian is spiky; with smoothing = M the oracle returns the Jacobian of the
    noiseless ring averaged uniformly over the box u +/- smoothing_scale (each knob jittered
    independently, M draws per sample from the step's rng). Still exact gradients of the
    noiseless simulated ring, only of its locally averaged (the same eps scale node sees)
    version. fd_step + smoothing_scale must be <= 1 - model.u_scale. No measurement is spent on
    any of this.
    """

    name = "oracle"

    def __init__(self, fd_step: float = 0.01, current_fd_step_a: float | None = None, smoothing: int = 0,
                 smoothing_scale: float = 0.05, *, reservoir_model: NoiselessModel | None = None):
        self.reservoir_model = reservoir_model  # given by the builder: not an option, not recorded
        if fd_step <= 0 or smoothing < 0 or smoothing_scale < 0:
            raise ValueError("fd_step must be > 0, smoothing >= 0 and smoothing_scale >= 0")
        self.fd_step, self.current_fd_step_a = float(fd_step), current_fd_step_a
        self.smoothing, self.smoothing_scale = int(smoothing), float(smoothing_scale)

    def options(self):
        return dict(fd_step=self.fd_step, current_fd_step_a=self.current_fd_step_a, smoothing=self.smoothing,
                    smoothing_scale=self.smoothing_scale)

    def check_model(self, model) -> None:
        reach = self.fd_step + (self.smoothing_scale if self.smoothing else 0.0)
        if reach > 1.0 - model.u_scale + 1e-12:
            raise ValueError(
                f"oracle fd_step {self.fd_step} (+ smoothing_scale {self.smoothing_scale} when smoothing) must be "
                f"<= 1 - u_scale = {1.0 - model.u_scale:.3g}"
            )

    def estimate(self, model, reservoir, x, y, sample_index, step, rng) -> Estimate:
        if self.reservoir_model is None:
            raise TypeError("the oracle needs a noiseless model of the reservoir (simulated reservoirs only); "
                            "none was given (a real station cannot be an oracle)")
        noiseless = self.reservoir_model.noiseless
        self.check_model(model)
        start = reservoir.measurements
        u, cache = model.encode(x)
        current = model.current_a()
        features = reservoir.measure(u, current_a=current, kind="train", step=step, sample_index=sample_index)
        g_read, g_features, per_sample, accuracy = model.readout_gradient(features, y)
        if self.smoothing:
            bases = [u + self.smoothing_scale * rng.uniform(-1.0, 1.0, u.shape) for _ in range(self.smoothing)]
        else:
            bases = [u]
        # vector-Jacobian product through the noiseless ring, one knob at a time
        h = self.fd_step
        grad_u = np.zeros_like(u)
        for base in bases:
            for k in range(u.shape[1]):
                up, down = base.copy(), base.copy()
                up[:, k] += h
                down[:, k] -= h
                jac_col = (noiseless(up, current) - noiseless(down, current)) / (2 * h)
                grad_u[:, k] += np.sum(g_features * jac_col, axis=1)
        grad_u /= len(bases)
        grad = model.backward_encode(cache, grad_u) + g_read
        if model.train_current:
            hi = self.current_fd_step_a if self.current_fd_step_a is not None else 0.1 * model.current_scale_a
            jac_i = np.mean([(noiseless(b, current + hi) - noiseless(b, current - hi)) / (2 * hi) for b in bases],
                            axis=0)
            grad[model.slots["physical.current_a"].slice] = np.sum(g_features * jac_i)
        return Estimate(grad, float(per_sample.mean()), accuracy, reservoir.measurements - start)
