"""``pgt``: parameter-space perturbation, PGT as published (arXiv 2506.04523).

Two-sided
g = (1/N) sum_j [L(th + eps s Delta_j) - L(th - eps s Delta_j)] / (2 eps) * Delta_j / s,
one-sided with L(th) instead of the minus side. Cost 2 N B V (two-sided) or (N + 1) B V
(B = batch size, V = virtual nodes; one measurement = one sample x node).
"""
from __future__ import annotations

import numpy as np

from labpgt.contracts import Perturbation
from labpgt.estimators.base import Estimate, EstimatorBase, measured_loss, rademacher


class ParameterPerturbation(EstimatorBase):
    """PGT as published: random perturbations of the parameters, loss differences only."""

    name = "pgt"

    def __init__(self, epsilon: float = 0.02, n_directions: int = 1, two_sided: bool = True,
                 distribution: str = "rademacher", scope: str = "all"):
        if distribution not in ("gaussian", "rademacher"):
            raise ValueError(f"unknown distribution {distribution!r}; allowed: gaussian, rademacher")
        if scope not in ("all", "upstream"):
            raise ValueError(f"unknown scope {scope!r}; allowed: all, upstream")
        if epsilon <= 0 or n_directions < 1:
            raise ValueError("epsilon must be > 0 and n_directions >= 1")
        self.epsilon, self.n_directions, self.two_sided = float(epsilon), int(n_directions), bool(two_sided)
        self.distribution, self.scope = distribution, scope

    def options(self):
        return dict(epsilon=self.epsilon, n_directions=self.n_directions, two_sided=self.two_sided,
                    distribution=self.distribution, scope=self.scope)

    def estimate(self, model, reservoir, x, y, sample_index, step, rng) -> Estimate:
        start = reservoir.measurements
        theta = model.params()
        scale = model.param_scale()
        groups = ("before", "physical", "readout") if self.scope == "all" else ("before", "physical")
        mask = model.group_mask(*groups) & model.trainable_mask()
        kw = dict(step=step, sample_index=sample_index)
        base_loss = None
        if not self.two_sided:
            per_sample, features = measured_loss(model, reservoir, theta, x, y, perturbation=Perturbation(), **kw)
            base_loss = per_sample.mean()
            _, accuracy = model.loss_and_accuracy(features, y, theta)
        grad = np.zeros(model.size)
        side_losses = []
        for j in range(self.n_directions):
            if self.distribution == "gaussian":
                delta = rng.standard_normal(model.size)
            else:
                delta = rademacher(rng, model.size)
            delta *= mask
            kick = self.epsilon * scale * delta
            plus, f_plus = measured_loss(model, reservoir, theta + kick, x, y, perturbation=Perturbation(j, +1), **kw)
            if self.two_sided:
                minus, _ = measured_loss(model, reservoir, theta - kick, x, y, perturbation=Perturbation(j, -1), **kw)
                slope = (plus.mean() - minus.mean()) / (2 * self.epsilon)
                side_losses += [plus.mean(), minus.mean()]
            else:
                slope = (plus.mean() - base_loss) / self.epsilon
            grad += slope * delta / scale
        grad /= self.n_directions
        if self.two_sided:
            # no clean pass is measured: report the mean of the two sides (= L(theta) + O(eps^2))
            loss = float(np.mean(side_losses))
            _, accuracy = model.loss_and_accuracy(f_plus, y, theta + kick)
        else:
            loss = float(base_loss)
        return Estimate(grad, loss, float(accuracy), reservoir.measurements - start)
