"""``node-token``: node perturbation with each token's kick credited through that token's own measured feature change."""
from __future__ import annotations

import numpy as np

from labpgt.contracts import Perturbation
from labpgt.estimators.base import Estimate, EstimatorBase, check_kick_fits, rademacher


class TokenNodePerturbation(EstimatorBase):
    """Node perturbation with the credit given per token, through the measured change of the features.

    The same antithetic +/-epsilon Rademacher kicks of the knobs as ``node`` (2 evaluations per
    sample and token), but the digital readout is backpropagated exactly down to the reservoir's
    outputs: with g_t = dL/dfeatures of token t at the mean of the two passes and
    df_t = f_t(u + eps d) - f_t(u - eps d) measured, token t's knobs get (g_t . df_t / 2 eps) d_t.
    ``node`` instead weights every knob of a sample by the change of the sample's loss, so each
    knob's estimate carries the other tokens' kicks as noise. Tokens are credited separately
    only on reservoirs whose virtual nodes are independent measurements (the ring, the toy);
    elsewhere (echo-state) the whole sample's g . df weights the whole sample's kick. The bias
    current is not perturbed; the model must not train it (train_current False).
    """

    name = "node-token"

    def __init__(self, epsilon: float = 0.1, n_directions: int = 1):
        if epsilon <= 0 or n_directions < 1:
            raise ValueError("epsilon must be > 0 and n_directions >= 1")
        self.epsilon, self.n_directions = float(epsilon), int(n_directions)

    def options(self) -> dict:
        return dict(epsilon=self.epsilon, n_directions=self.n_directions)

    def check_model(self, model) -> None:
        check_kick_fits("node-token", "epsilon", self.epsilon, model)
        if model.train_current:
            raise ValueError("node-token does not perturb the bias current: use a model with train_current=False")

    def estimate(self, model, reservoir, x, y, sample_index, step, rng):
        self.check_model(model)
        start = reservoir.measurements
        batch = len(y)
        u, cache = model.encode(x)
        current = model.current_a()
        # per-token credit only where a token's kick moves only its own features
        nodes = reservoir.n_nodes if reservoir.independent_nodes else 1
        kw = dict(current_a=current, kind="train", step=step, sample_index=sample_index)
        kicks, changes, clean = [], [], np.zeros((batch, reservoir.n_features))
        for j in range(self.n_directions):
            delta = rademacher(rng, u.shape)
            f_plus = reservoir.measure(u + self.epsilon * delta, perturbation=Perturbation(j, +1), **kw)
            f_minus = reservoir.measure(u - self.epsilon * delta, perturbation=Perturbation(j, -1), **kw)
            kicks.append(delta)
            changes.append(f_plus - f_minus)
            clean += 0.5 * (f_plus + f_minus)
        clean /= self.n_directions
        g_read, g_features, per_sample, accuracy = model.readout_gradient(clean, y)  # dL(mean)/dfeatures
        grad_u = np.zeros_like(u)
        for delta, change in zip(kicks, changes):
            # per node: the directional derivative of the loss along that node's kick, from its measured change
            slope = np.sum((g_features * change).reshape(batch, nodes, -1), axis=2) / (2 * self.epsilon)
            grad_u += (slope[:, :, None] * delta.reshape(batch, nodes, -1)).reshape(u.shape)
        grad_u /= self.n_directions
        grad = model.backward_encode(cache, grad_u) + g_read
        return Estimate(grad, float(per_sample.mean()), accuracy, reservoir.measurements - start)
