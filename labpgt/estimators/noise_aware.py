"""Node perturbation with a noise-aware, bounded, adapted perturbation size (issue 16, item 4).

The idea is the one BOND (arXiv 2510.25074) applies to black-box inputs: choose the
finite-difference step from the measured noise and signal instead of by hand, and keep it
inside bounds. Written here from the idea and the algebra below, not from any code.

For one sample, an antithetic pair at size e gives the half-difference

    h = [L(u + e d) - L(u - e d)] / 2 = e s + O(e^3) + n,      s = d . dL/du,  var(n) = N

so over samples E[h^2] = e^2 S + N with S = E[s^2] (signal) and N (measurement noise of the
half-difference). The node estimate h / e * d has a noise share N / (e^2 S): a fixed e is too
small when gradients are large against the noise early on... and, as training converges and S
falls, the noise share grows unless e grows. Each step the batch is split at random into two
halves measured at e / r and e * r (r = ``spread``); running means (EMA, ``decay``) of h^2 in the
two halves give S and N by the two-point line above, and the size for the next step is

    e = sqrt(snr * N / S),  bounded to [epsilon_min, epsilon_max] and to a factor max_change per step,

i.e. the step at which the signal power in the half-difference is ``snr`` times the noise power.
The upper bound keeps the truncation error (the O(e^3) term) and the knob range in check: e * r
must stay <= 1 - u_scale, so epsilon_max defaults to (1 - u_scale) / r. Until both halves have
statistics the size is ``epsilon`` (the starting value). No measurement is spent on any of this:
the statistics come from the pairs the estimate needs anyway. Cost exactly 2 B V per step, like
node. State (current size and the running means) is in state_dict() for resume.
"""
from __future__ import annotations

import numpy as np

from labpgt.contracts import Perturbation
from labpgt.estimators.library import Estimate, NodePerturbation, _rademacher


class NoiseAwareNodePerturbation(NodePerturbation):
    """Antithetic node perturbation whose size follows the measured signal-to-noise ratio."""

    name = "node-adaptive"

    def __init__(self, epsilon: float = 0.05, current_epsilon_a: float | None = None, snr: float = 4.0,
                 spread: float = 1.5, decay: float = 0.98, epsilon_min: float = 0.01,
                 epsilon_max: float | None = None, max_change: float = 1.25):
        super().__init__(epsilon=epsilon, current_epsilon_a=current_epsilon_a, n_directions=1)
        if snr <= 0 or spread <= 1.0 or not 0.0 <= decay < 1.0 or epsilon_min <= 0 or max_change <= 1.0:
            raise ValueError("snr > 0, spread > 1, 0 <= decay < 1, epsilon_min > 0 and max_change > 1 are required")
        if epsilon_max is not None and epsilon_max < epsilon_min:
            raise ValueError(f"epsilon_max {epsilon_max} is below epsilon_min {epsilon_min}")
        self.snr, self.spread, self.decay = float(snr), float(spread), float(decay)
        self.epsilon_min, self.epsilon_max, self.max_change = float(epsilon_min), epsilon_max, float(max_change)
        self._reset()

    def _reset(self):
        self.size = self.epsilon  # the size of the next step (normalised knob units)
        self.mean_sq = [None, None]  # running mean of h^2 in the small and the large half
        self.mean_e2 = [None, None]  # running mean of e^2 there

    def options(self):
        return dict(super().options(), snr=self.snr, spread=self.spread, decay=self.decay,
                    epsilon_min=self.epsilon_min, epsilon_max=self.epsilon_max, max_change=self.max_change)

    def state_dict(self):
        return {"size": self.size, "mean_sq": list(self.mean_sq), "mean_e2": list(self.mean_e2)}

    def load_state_dict(self, state):
        self._reset()
        if "size" in state:
            self.size = float(state["size"])
            self.mean_sq = [None if v is None else float(v) for v in state["mean_sq"]]
            self.mean_e2 = [None if v is None else float(v) for v in state["mean_e2"]]

    def _bounds(self, model) -> tuple[float, float]:
        hi = (1.0 - model.u_scale) / self.spread if self.epsilon_max is None else self.epsilon_max
        if hi * self.spread > 1.0 - model.u_scale + 1e-12:
            raise ValueError(f"epsilon_max {hi} x spread {self.spread} would push knobs outside [-1, 1]: "
                             f"it must be <= (1 - u_scale) / spread = {(1.0 - model.u_scale) / self.spread:.3g}")
        return min(self.epsilon_min, hi), hi

    def _update_size(self, half_diff, sizes, is_large, lo, hi):
        for side in (0, 1):
            pick = is_large == bool(side)
            if not pick.any():
                continue
            sq, e2 = float(np.mean(half_diff[pick] ** 2)), float(np.mean(sizes[pick] ** 2))
            old_sq, old_e2 = self.mean_sq[side], self.mean_e2[side]
            self.mean_sq[side] = sq if old_sq is None else self.decay * old_sq + (1 - self.decay) * sq
            self.mean_e2[side] = e2 if old_e2 is None else self.decay * old_e2 + (1 - self.decay) * e2
        if None in self.mean_sq:
            return
        (h_small, h_large), (e2_small, e2_large) = self.mean_sq, self.mean_e2
        signal = max((h_large - h_small) / (e2_large - e2_small), 1e-300)
        noise = max(h_small - e2_small * signal, 0.0)
        wanted = np.sqrt(self.snr * noise / signal)
        # bounded in range and in rate: one step's noisy statistics move the size by at most max_change
        wanted = np.clip(wanted, self.size / self.max_change, self.size * self.max_change)
        self.size = float(np.clip(wanted, lo, hi))

    def estimate(self, model, reservoir, x, y, sample_index, step, rng) -> Estimate:
        lo, hi = self._bounds(model)
        start = reservoir.measurements
        batch = len(y)
        u, cache = model.encode(x)
        current = model.current_a()
        eps_i = self.current_epsilon_a if self.current_epsilon_a is not None else model.current_scale_a
        kw = dict(kind="train", step=step, sample_index=sample_index)
        delta = _rademacher(rng, u.shape)
        delta_i = float(_rademacher(rng, ())) if model.train_current else 0.0
        # half the batch (at random) at size / spread, the other half at size * spread
        is_large = rng.permutation(batch) < batch // 2
        size = min(max(self.size, lo), hi)
        sizes = np.where(is_large, size * self.spread, size / self.spread)
        kick = sizes[:, None] * delta
        f_plus = reservoir.measure(u + kick, current_a=current + eps_i * delta_i, perturbation=Perturbation(0, +1), **kw)
        f_minus = reservoir.measure(u - kick, current_a=current - eps_i * delta_i, perturbation=Perturbation(0, -1), **kw)
        half_diff = 0.5 * (model.per_sample_loss(f_plus, y) - model.per_sample_loss(f_minus, y))
        grad_u = (half_diff / sizes)[:, None] * delta / batch
        grad = model.backward_encode(cache, grad_u)
        if model.train_current:
            grad[model.slots["physical.current_a"].slice] = half_diff.mean() / eps_i * delta_i
        g_read, _, per_sample, accuracy = model.readout_gradient(0.5 * (f_plus + f_minus), y)
        grad += g_read
        used = size
        self._update_size(half_diff, sizes, is_large, lo, hi)
        return Estimate(grad, float(per_sample.mean()), accuracy, reservoir.measurements - start,
                        {"epsilon": used})
