"""``spsa``: Spall's SPSA on the parameters upstream of the ring (and the current).

The readout gets its exact gradient from the mean of the +/- features. Gains follow Spall's
schedules a_k = a / (A + k + 1)^alpha, c_k = c / (k + 1)^gamma (training/optim.py
``PowerDecay``), calibrated on the first call (those measurements are counted in that step).
SPSA's estimate already carries its gain a_k (its gain sequence is its learning rate), so the
registry pairs it with plain SGD at lr 1 and refuses ``lr``. Cost 2 B V per step (+ calibration once).
"""
from __future__ import annotations

import numpy as np

from labpgt.contracts import Perturbation
from labpgt.estimators.base import Estimate, EstimatorBase, measured_loss, rademacher
from labpgt.training.optim import PowerDecay


class SPSA(EstimatorBase):
    """Spall's SPSA on the parameters upstream of the ring; exact readout gradient.

    Options: a, c (None = calibrate on the first call), stability_constant A (~10% of the
    planned steps), alpha 0.602, gamma 0.101, first_step (wanted size of the first update of a
    parameter, in scaled units), calibration_repeats (repeated clean loss measurements for
    c = their std, floored at c_min) and calibration_pairs (+/- pairs for a), readout_lr (the
    SGD learning rate for the readout's exact gradient, since SPSA supplies the whole step).
    """

    name = "spsa"

    def __init__(self, a: float | None = None, c: float | None = None, stability_constant: float = 20.0,
                 alpha: float = 0.602, gamma: float = 0.101, first_step: float = 0.05,
                 calibration_repeats: int = 5, calibration_pairs: int = 5, c_min: float = 0.02,
                 readout_lr: float = 0.5):
        self.a, self.c = a, c
        self.stability_constant, self.alpha, self.gamma = float(stability_constant), float(alpha), float(gamma)
        self.first_step, self.c_min, self.readout_lr = float(first_step), float(c_min), float(readout_lr)
        self.calibration_repeats, self.calibration_pairs = int(calibration_repeats), int(calibration_pairs)

    def options(self):
        return dict(a=self.a, c=self.c, stability_constant=self.stability_constant, alpha=self.alpha,
                    gamma=self.gamma, first_step=self.first_step, calibration_repeats=self.calibration_repeats,
                    calibration_pairs=self.calibration_pairs, c_min=self.c_min, readout_lr=self.readout_lr)

    def state_dict(self):
        return {"a": self.a, "c": self.c}  # JSON-friendly floats (None = not calibrated yet)

    def load_state_dict(self, state):
        self.a = None if state.get("a") is None else float(state["a"])
        self.c = None if state.get("c") is None else float(state["c"])

    def _calibrate(self, model, reservoir, theta, scale, mask, x, y, kw, rng):
        """Spall's practical rules: c ~ std of one loss measurement, a from the wanted first step."""
        if self.c is None:
            losses = [
                measured_loss(model, reservoir, theta, x, y, perturbation=Perturbation(-2, 0), **kw)[0].mean()
                for _ in range(self.calibration_repeats)
            ]
            self.c = max(float(np.std(losses, ddof=1)), self.c_min)
        if self.a is None:
            magnitudes = []
            for j in range(self.calibration_pairs):
                delta = rademacher(rng, model.size) * mask
                kick = self.c * scale * delta
                plus = measured_loss(model, reservoir, theta + kick, x, y, perturbation=Perturbation(-3 - j, +1), **kw)[0]
                minus = measured_loss(model, reservoir, theta - kick, x, y, perturbation=Perturbation(-3 - j, -1), **kw)[0]
                magnitudes.append(abs(plus.mean() - minus.mean()) / (2 * self.c))
            mean_magnitude = max(float(np.mean(magnitudes)), 1e-12)
            # each scaled component of the first step is a_0 * |slope| (|Delta| = 1)
            self.a = self.first_step * (self.stability_constant + 1) ** self.alpha / mean_magnitude

    def gains(self, k: int) -> tuple[float, float]:
        """(a_k, c_k) from Spall's schedules, once a and c are known (given or calibrated)."""
        step_gain = PowerDecay(self.a, self.stability_constant, self.alpha)
        perturbation_gain = PowerDecay(self.c, 0, self.gamma)
        return step_gain(k), perturbation_gain(k)

    def estimate(self, model, reservoir, x, y, sample_index, step, rng) -> Estimate:
        start = reservoir.measurements
        theta = model.params()
        scale = model.param_scale()
        mask = model.group_mask("before", "physical") & model.trainable_mask()
        kw = dict(step=step, sample_index=sample_index)
        calibrated_now = self.a is None or self.c is None
        if calibrated_now:
            self._calibrate(model, reservoir, theta, scale, mask, x, y, kw, rng)
        a_k, c_k = self.gains(step)
        delta = rademacher(rng, model.size) * mask
        kick = c_k * scale * delta
        plus, f_plus = measured_loss(model, reservoir, theta + kick, x, y, perturbation=Perturbation(0, +1), **kw)
        minus, f_minus = measured_loss(model, reservoir, theta - kick, x, y, perturbation=Perturbation(0, -1), **kw)
        slope = (plus.mean() - minus.mean()) / (2 * c_k)
        # the upstream step in the model's units: a_k * g_hat / scale (the trainer re-multiplies by scale)
        step_vec = a_k * slope * delta / scale
        # the readout never moved: exact gradient at the mean of the +/- features
        g_read, _, per_sample, accuracy = model.readout_gradient(0.5 * (f_plus + f_minus), y)
        step_vec += self.readout_lr * g_read * model.group_mask("readout")
        extra = {"a_k": a_k, "c_k": c_k}
        if calibrated_now:
            extra.update(a=self.a, c=self.c)
        return Estimate(step_vec, float(per_sample.mean()), accuracy, reservoir.measurements - start, extra)
