"""The deep physical network's ``node`` and ``pgt`` (labpgt/models/deep.py): every block's knobs
kicked at once, or the whole parameter vector; the registry picks them for the deep model."""
from __future__ import annotations

import numpy as np

from labpgt.contracts import Perturbation
from labpgt.estimators.base import Estimate, EstimatorBase, check_kick_fits, rademacher
from labpgt.models.deep import DeepPhysicalModel
from labpgt.models.dense import softmax_cross_entropy


class DeepNodePerturbation(EstimatorBase):
    """Node perturbation at every block's knobs at once, exact digital backprop in between.

    Each pass (+ and -) goes through all K blocks with the knobs of every block kicked by
    +/- eps delta_k (delta Rademacher per sample, knob and block) and the bias current by
    +/- eps_I delta_I. Per sample, [L(+) - L(-)] / (2 eps) delta_k estimates the total derivative
    dL/du_k (through the ring and every block after it; the other blocks' kicks add variance,
    not bias). The digital layers are differentiated exactly at the clean point (the mean of
    the +/- features of each block). Cost 2 K B V per step and direction.
    """

    name = "node"

    def __init__(self, epsilon: float = 0.05, current_epsilon_a: float | None = None, n_directions: int = 1):
        if epsilon <= 0 or n_directions < 1:
            raise ValueError(f"epsilon must be > 0 (got {epsilon}) and n_directions >= 1 (got {n_directions})")
        self.epsilon, self.current_epsilon_a, self.n_directions = float(epsilon), current_epsilon_a, int(n_directions)

    def options(self) -> dict:
        return dict(epsilon=self.epsilon, current_epsilon_a=self.current_epsilon_a, n_directions=self.n_directions)

    def check_model(self, model) -> None:
        check_kick_fits("node", "epsilon", self.epsilon, model)

    def estimate(self, model: DeepPhysicalModel, reservoir, x, y, sample_index, step, rng) -> Estimate:
        self.check_model(model)
        start = reservoir.measurements
        batch, blocks = len(y), model.n_blocks
        eps_i = self.current_epsilon_a if self.current_epsilon_a is not None else model.current_scale_a
        grad_u = [np.zeros((batch, model.n_knobs)) for _ in range(blocks)]
        grad_current = 0.0
        clean = [np.zeros((batch, model.n_features)) for _ in range(blocks)]
        for j in range(self.n_directions):
            delta = [rademacher(rng, (batch, model.n_knobs)) for _ in range(blocks)]
            delta_i = float(rademacher(rng, ())) if model.train_current else 0.0
            kicks = [self.epsilon * d for d in delta]
            tops, traces = model.forward_passes(
                reservoir, [x, x], [Perturbation(j, +1), Perturbation(j, -1)], kind="train", step=step,
                sample_index=sample_index, knob_offsets=[kicks, [-kick for kick in kicks]],
                current_offsets_a=[eps_i * delta_i, -eps_i * delta_i])
            half_diff = 0.5 * (model.per_sample_loss(tops[0], y) - model.per_sample_loss(tops[1], y))
            for k in range(blocks):
                grad_u[k] += (half_diff / self.epsilon)[:, None] * delta[k] / batch
                clean[k] += 0.5 * (traces[0][k].features + traces[1][k].features)
            grad_current += half_diff.mean() / eps_i * delta_i
        grad_u = [g / self.n_directions for g in grad_u]
        clean = [f / self.n_directions for f in clean]
        top, passes = model.digital_forward(x, clean)
        per_sample, grad_logits = softmax_cross_entropy(model.logits(top), y)
        grad = model.backward(passes, top, grad_logits / batch, grad_u)
        if model.train_current:
            grad[model.slots["physical.current_a"].slice] = grad_current / self.n_directions
        accuracy = float(np.mean(model.logits(top).argmax(axis=1) == y))
        return Estimate(grad, float(per_sample.mean()), accuracy, reservoir.measurements - start)


class DeepParameterPerturbation(EstimatorBase):
    """PGT as published on the deep model: two-sided parameter perturbation, loss differences only.

    g = (1/N) sum_j [L(th + eps s Delta_j) - L(th - eps s Delta_j)] / (2 eps) Delta_j / s over the
    trainable parameters (s = model.param_scale()). Cost 2 N K B V per step.
    """

    name = "pgt"

    def __init__(self, epsilon: float = 0.02, n_directions: int = 1, distribution: str = "rademacher"):
        if distribution not in ("gaussian", "rademacher"):
            raise ValueError(f"unknown distribution {distribution!r}; allowed: gaussian, rademacher")
        if epsilon <= 0 or n_directions < 1:
            raise ValueError(f"epsilon must be > 0 (got {epsilon}) and n_directions >= 1 (got {n_directions})")
        self.epsilon, self.n_directions, self.distribution = float(epsilon), int(n_directions), distribution

    def options(self) -> dict:
        return dict(epsilon=self.epsilon, n_directions=self.n_directions, distribution=self.distribution)

    def estimate(self, model: DeepPhysicalModel, reservoir, x, y, sample_index, step, rng) -> Estimate:
        start = reservoir.measurements
        theta, scale, mask = model.params(), model.param_scale(), model.trainable_mask()
        grad = np.zeros(model.size)
        losses = []
        for j in range(self.n_directions):
            delta = rng.standard_normal(model.size) if self.distribution == "gaussian" else rademacher(rng, model.size)
            delta *= mask
            kick = self.epsilon * scale * delta
            sides = []
            for sign in (+1, -1):
                top, _ = model.forward_passes(reservoir, [x], [Perturbation(j, sign)], kind="train", step=step,
                                              sample_index=sample_index, params=theta + sign * kick)
                sides.append((model.per_sample_loss(top[0], y, theta + sign * kick).mean(), top[0], sign))
            slope = (sides[0][0] - sides[1][0]) / (2 * self.epsilon)
            grad += slope * delta / scale
            losses += [sides[0][0], sides[1][0]]
        grad /= self.n_directions
        accuracy = float(np.mean(model.logits(sides[0][1], theta + kick).argmax(axis=1) == y))
        return Estimate(grad, float(np.mean(losses)), accuracy, reservoir.measurements - start)
