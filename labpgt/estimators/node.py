"""``node``: node perturbation at the ring's inputs, exact digital backprop elsewhere.

Per sample u_i +/- eps delta_i (Rademacher), g_i = [L_i(+) - L_i(-)] / (2 eps) delta_i,
backpropagated digitally into the layers before the ring; the readout gets exact gradients at
the mean of the +/- features; the current gets a shared +/- eps_I delta_I in the same two
half-steps. Cost exactly 2 B V per step and direction.
"""
from __future__ import annotations

import numpy as np

from labpgt.contracts import Perturbation
from labpgt.estimators.base import Estimate, EstimatorBase, check_kick_fits, rademacher


class NodePerturbation(EstimatorBase):
    """Antithetic node perturbation at the ring's inputs, exact digital backprop elsewhere.

    epsilon: perturbation of each knob (normalised units; must be <= 1 - model.u_scale so
    u +/- eps stays in [-1, 1]); current_epsilon_a: the shared +/- kick on the bias current
    (A; None = model.current_scale_a); n_directions: antithetic pairs per sample per step.
    """

    name = "node"

    def __init__(self, epsilon: float = 0.05, current_epsilon_a: float | None = None, n_directions: int = 1):
        if epsilon <= 0 or n_directions < 1:
            raise ValueError("epsilon must be > 0 and n_directions >= 1")
        self.epsilon, self.current_epsilon_a, self.n_directions = float(epsilon), current_epsilon_a, int(n_directions)

    def options(self):
        return dict(epsilon=self.epsilon, current_epsilon_a=self.current_epsilon_a, n_directions=self.n_directions)

    def check_model(self, model) -> None:
        check_kick_fits("node", "epsilon", self.epsilon, model)

    def estimate(self, model, reservoir, x, y, sample_index, step, rng) -> Estimate:
        self.check_model(model)
        start = reservoir.measurements
        batch = len(y)
        u, cache = model.encode(x)
        current = model.current_a()
        eps_i = self.current_epsilon_a if self.current_epsilon_a is not None else model.current_scale_a
        kw = dict(kind="train", step=step, sample_index=sample_index)
        grad_u = np.zeros_like(u)
        grad_current = 0.0
        clean = np.zeros((batch, reservoir.n_features))
        for j in range(self.n_directions):
            delta = rademacher(rng, u.shape)
            delta_i = float(rademacher(rng, ())) if model.train_current else 0.0
            f_plus = reservoir.measure(u + self.epsilon * delta, current_a=current + eps_i * delta_i,
                                       perturbation=Perturbation(j, +1), **kw)
            f_minus = reservoir.measure(u - self.epsilon * delta, current_a=current - eps_i * delta_i,
                                        perturbation=Perturbation(j, -1), **kw)
            half_diff = 0.5 * (model.per_sample_loss(f_plus, y) - model.per_sample_loss(f_minus, y))
            # d(mean loss)/du_i = (1/B) dL_i/du_i
            grad_u += (half_diff / self.epsilon)[:, None] * delta / batch
            grad_current += half_diff.mean() / eps_i * delta_i
            clean += 0.5 * (f_plus + f_minus)
        grad_u /= self.n_directions
        clean /= self.n_directions
        grad = model.backward_encode(cache, grad_u)
        if model.train_current:
            grad[model.slots["physical.current_a"].slice] = grad_current / self.n_directions
        g_read, _, per_sample, accuracy = model.readout_gradient(clean, y)
        grad += g_read
        return Estimate(grad, float(per_sample.mean()), accuracy, reservoir.measurements - start)
