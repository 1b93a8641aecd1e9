"""Gradient estimators for a hybrid model with a measured (non-differentiable) reservoir.

Every estimator is a small object with one job::

    est = make_estimator("node", epsilon=0.05)
    e = est.estimate(model, reservoir, x_batch, y_batch, sample_index, step, rng)
    e.grad                # flat, like model.params(): an estimate of d(mean loss)/d(params)
    e.measurements_spent  # exactly what reservoir.measurements advanced by

All randomness comes from the ``rng`` passed in (a numpy Generator), so a run is reproducible
and resumable. Estimators that keep state (SPSA's calibrated gains) expose it through
``state_dict()`` / ``load_state_dict()``; the trainer checkpoints it.

Coordinates. The bias current (A) lives in the same flat vector as the weights but moves on a
scale of ~1 mA, so every perturbation of parameters is ``eps * model.param_scale() * Delta``
(the trainer likewise optimises params / param_scale). Gradients are always returned in the
model's own units (d loss / d param).

Formulas and costs (B = batch size, V = virtual nodes; one measurement = one sample x node):

- ``pgt``  parameter-space perturbation (PGT as published): two-sided
  g = (1/N) sum_j [L(th + eps s Delta_j) - L(th - eps s Delta_j)] / (2 eps) * Delta_j / s,
  one-sided with L(th) instead of the minus side. Cost 2 N B V (two-sided) or (N + 1) B V.
- ``spsa`` Spall's SPSA on the parameters upstream of the ring (and the current), readout exact
  from the mean of the +/- features. Gains a_k = a / (A + k + 1)^0.602, c_k = c / (k + 1)^0.101,
  calibrated on the first call (those measurements are counted in that step). SPSA returns a
  *step*, not a gradient: ``supplies_step = True`` and the trainer pairs it with SGD(lr=1).
  Cost 2 B V per step (+ calibration once).
- ``node`` node perturbation at the ring's inputs: per sample u_i +/- eps delta_i (Rademacher),
  g_i = [L_i(+) - L_i(-)] / (2 eps) delta_i, backpropagated digitally into the layers before the
  ring; the readout gets exact gradients at the mean of the +/- features; the current gets
  a shared +/- eps_I delta_I in the same two half-steps. Cost exactly 2 B V per step.
- ``oracle`` exact gradients of the noiseless ring (its Jacobian by central differences of
  ``reservoir.noiseless``, which costs no measurement) times the loss gradient at the measured
  clean features. Cost B V per step. Needs a simulated reservoir.
- ``twin`` Physics-Aware Training: the clean forward pass is measured (B V), the backward pass
  through the ring uses the Jacobian of a small tanh MLP (the twin: one node's knobs and the
  bias current -> that node's features, shared by the virtual nodes) evaluated at the measured
  inputs; the twin is refit every step (warm-started Adam on the squared error) to a bounded
  buffer of the run's own measured (knobs, current, features) rows. The first warmup steps use
  node perturbation (its +/- measurements also fill the buffer). Cost B V per step (2 B V in
  warmup). The forward current is dithered by +/- current_dither (shared per step) so the twin
  sees the current vary.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np

from labpgt.contracts import Perturbation


@dataclass
class Estimate:
    grad: np.ndarray  # flat, like model.params(); for SPSA already multiplied by its gain (see supplies_step)
    loss: float  # mean cross-entropy (nats) of the batch, from measured features
    accuracy: float  # fraction of the batch classified correctly
    measurements_spent: int
    extra: dict = field(default_factory=dict)


def _rademacher(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(0, 2, size=shape) * 2.0 - 1.0


class _Estimator:
    name = "?"
    supplies_step = False  # True: grad already holds the step; pair with SGD(lr=1)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def options(self) -> dict:
        return {}


def _measured_loss(model, reservoir, params, x, y, *, step, sample_index, perturbation, kind="train"):
    """Full forward pass at the given parameter vector: (per-sample losses, features)."""
    u, _ = model.encode(x, params)
    features = reservoir.measure(
        u, current_a=model.current_a(params), kind=kind, step=step, sample_index=sample_index,
        perturbation=perturbation,
    )
    return model.per_sample_loss(features, y, params), features


class ParameterPerturbation(_Estimator):
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
            per_sample, features = _measured_loss(model, reservoir, theta, x, y, perturbation=Perturbation(), **kw)
            base_loss = per_sample.mean()
            _, accuracy = model.loss_and_accuracy(features, y, theta)
        grad = np.zeros(model.size)
        side_losses = []
        for j in range(self.n_directions):
            if self.distribution == "gaussian":
                delta = rng.standard_normal(model.size)
            else:
                delta = _rademacher(rng, model.size)
            delta *= mask
            kick = self.epsilon * scale * delta
            plus, f_plus = _measured_loss(model, reservoir, theta + kick, x, y, perturbation=Perturbation(j, +1), **kw)
            if self.two_sided:
                minus, _ = _measured_loss(model, reservoir, theta - kick, x, y, perturbation=Perturbation(j, -1), **kw)
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


class SPSA(_Estimator):
    """Spall's SPSA on the parameters upstream of the ring; exact readout gradient.

    Options: a, c (None = calibrate on the first call), stability_constant A (~10% of the
    planned steps), alpha 0.602, gamma 0.101, first_step (wanted size of the first update of a
    parameter, in scaled units), calibration_repeats (repeated clean loss measurements for
    c = their std, floored at c_min) and calibration_pairs (+/- pairs for a), readout_lr (the
    SGD learning rate for the readout's exact gradient, since SPSA supplies the whole step).
    """

    name = "spsa"
    supplies_step = True

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
                _measured_loss(model, reservoir, theta, x, y, perturbation=Perturbation(-2, 0), **kw)[0].mean()
                for _ in range(self.calibration_repeats)
            ]
            self.c = max(float(np.std(losses, ddof=1)), self.c_min)
        if self.a is None:
            magnitudes = []
            for j in range(self.calibration_pairs):
                delta = _rademacher(rng, model.size) * mask
                kick = self.c * scale * delta
                plus = _measured_loss(model, reservoir, theta + kick, x, y, perturbation=Perturbation(-3 - j, +1), **kw)[0]
                minus = _measured_loss(model, reservoir, theta - kick, x, y, perturbation=Perturbation(-3 - j, -1), **kw)[0]
                magnitudes.append(abs(plus.mean() - minus.mean()) / (2 * self.c))
            mean_magnitude = max(float(np.mean(magnitudes)), 1e-12)
            # each scaled component of the first step is a_0 * |slope| (|Delta| = 1)
            self.a = self.first_step * (self.stability_constant + 1) ** self.alpha / mean_magnitude

    def gains(self, k: int) -> tuple[float, float]:
        a_k = self.a / (self.stability_constant + k + 1) ** self.alpha
        c_k = self.c / (k + 1) ** self.gamma
        return a_k, c_k

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
        delta = _rademacher(rng, model.size) * mask
        kick = c_k * scale * delta
        plus, f_plus = _measured_loss(model, reservoir, theta + kick, x, y, perturbation=Perturbation(0, +1), **kw)
        minus, f_minus = _measured_loss(model, reservoir, theta - kick, x, y, perturbation=Perturbation(0, -1), **kw)
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


class NodePerturbation(_Estimator):
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

    def estimate(self, model, reservoir, x, y, sample_index, step, rng) -> Estimate:
        if self.epsilon > 1.0 - model.u_scale + 1e-12:
            raise ValueError(
                f"node epsilon {self.epsilon} would push knobs outside [-1, 1]: it must be <= 1 - u_scale = "
                f"{1.0 - model.u_scale:.3g}"
            )
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
            delta = _rademacher(rng, u.shape)
            delta_i = float(_rademacher(rng, ())) if model.train_current else 0.0
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


class Oracle(_Estimator):
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
                 smoothing_scale: float = 0.05):
        if fd_step <= 0 or smoothing < 0 or smoothing_scale < 0:
            raise ValueError("fd_step must be > 0, smoothing >= 0 and smoothing_scale >= 0")
        self.fd_step, self.current_fd_step_a = float(fd_step), current_fd_step_a
        self.smoothing, self.smoothing_scale = int(smoothing), float(smoothing_scale)

    def options(self):
        return dict(fd_step=self.fd_step, current_fd_step_a=self.current_fd_step_a, smoothing=self.smoothing,
                    smoothing_scale=self.smoothing_scale)

    def estimate(self, model, reservoir, x, y, sample_index, step, rng) -> Estimate:
        noiseless = getattr(reservoir, "noiseless", None)
        if noiseless is None:
            raise TypeError(
                f"the oracle needs a reservoir with a noiseless model (reservoir.noiseless); "
                f"{type(reservoir).__name__} has none (a real station cannot be an oracle)"
            )
        reach = self.fd_step + (self.smoothing_scale if self.smoothing else 0.0)
        if reach > 1.0 - model.u_scale + 1e-12:
            raise ValueError(
                f"oracle fd_step {self.fd_step} (+ smoothing_scale {self.smoothing_scale} when smoothing) must be "
                f"<= 1 - u_scale = {1.0 - model.u_scale:.3g}"
            )
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


def _pack(a: np.ndarray) -> dict:
    """An array as JSON: shape plus base64 of its little-endian float64 bytes (exact)."""
    a = np.ascontiguousarray(a, dtype="<f8")
    return {"shape": list(a.shape), "f8": base64.b64encode(a.tobytes()).decode("ascii")}


def _unpack(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["f8"]), dtype="<f8").reshape(d["shape"]).astype(np.float64)


class _Tap:
    """A reservoir seen through a tap: every measure() call's (u, current, features) is kept."""

    def __init__(self, reservoir):
        self._reservoir = reservoir
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._reservoir, name)

    @property
    def measurements(self):
        return self._reservoir.measurements

    def measure(self, u, *, current_a, **kw):
        features = self._reservoir.measure(u, current_a=current_a, **kw)
        self.calls.append((np.array(u, dtype=np.float64), float(current_a), features))
        return features


class DigitalTwin(_Estimator):
    """Physics-Aware Training: measured forward pass, backward pass through a fitted twin.

    The twin maps one virtual node's inputs x = [knobs (k), (I - I_ref) / current_scale_a] to
    that node's features with h = tanh(x W1 + b1), f = h W2 + b2 (shared by all nodes: one
    device, time-multiplexed). Its Jacobian at the measured inputs stands in for the ring's.

    hidden: twin width; buffer_size: rows (one per sample x node) kept, oldest dropped;
    fit_iters / fit_lr: Adam iterations on the whole buffer per step (moments kept: a warm
    start); first_fit_iters: iterations of the first fit; warmup_steps: steps of node
    perturbation (epsilon warmup_epsilon) before the twin is trusted (their +/- measurements
    fill the buffer); current_dither: the forward pass's shared +/- kick on the current, in
    units of model.current_scale_a (0 = none), so the twin can learn d features / d current.
    State (weights, Adam moments, buffer, I_ref, step count) is in state_dict(), JSON with
    arrays as base64 float64, so resume continues bit for bit.
    """

    name = "twin"

    def __init__(self, hidden: int = 32, buffer_size: int = 1500, fit_iters: int = 20, fit_lr: float = 0.01,
                 first_fit_iters: int = 300, warmup_steps: int = 2, warmup_epsilon: float = 0.05,
                 current_dither: float = 0.5):
        if hidden < 1 or buffer_size < 1 or fit_iters < 0 or first_fit_iters < 0 or warmup_steps < 0:
            raise ValueError("hidden, buffer_size >= 1; fit_iters, first_fit_iters, warmup_steps >= 0")
        if fit_lr <= 0 or warmup_epsilon <= 0 or current_dither < 0:
            raise ValueError("fit_lr and warmup_epsilon must be > 0, current_dither >= 0")
        self.hidden, self.buffer_size = int(hidden), int(buffer_size)
        self.fit_iters, self.fit_lr, self.first_fit_iters = int(fit_iters), float(fit_lr), int(first_fit_iters)
        self.warmup_steps, self.warmup_epsilon = int(warmup_steps), float(warmup_epsilon)
        self.current_dither = float(current_dither)
        self._reset()

    def _reset(self):
        self.net: dict | None = None  # W1, b1, W2, b2
        self.moments: dict | None = None  # Adam m_*, v_*
        self.adam_t = 0
        self.buffer: np.ndarray | None = None  # rows [x (k + 1) | features (F)]
        self.current_ref: float | None = None
        self.calls = 0

    def options(self):
        return dict(hidden=self.hidden, buffer_size=self.buffer_size, fit_iters=self.fit_iters, fit_lr=self.fit_lr,
                    first_fit_iters=self.first_fit_iters, warmup_steps=self.warmup_steps,
                    warmup_epsilon=self.warmup_epsilon, current_dither=self.current_dither)

    def state_dict(self):
        if self.net is None:
            return {"calls": self.calls, "current_ref": self.current_ref}
        return {
            "calls": self.calls, "current_ref": self.current_ref, "adam_t": self.adam_t,
            "net": {k: _pack(v) for k, v in self.net.items()},
            "moments": {k: _pack(v) for k, v in self.moments.items()},
            "buffer": _pack(self.buffer),
        }

    def load_state_dict(self, state):
        self._reset()
        self.calls = int(state.get("calls", 0))
        self.current_ref = None if state.get("current_ref") is None else float(state["current_ref"])
        if "net" in state:
            self.net = {k: _unpack(v) for k, v in state["net"].items()}
            self.moments = {k: _unpack(v) for k, v in state["moments"].items()}
            self.adam_t = int(state["adam_t"])
            self.buffer = _unpack(state["buffer"])

    # ------------------------------------------------------------ the twin itself
    def _init(self, n_in: int, n_out: int, rng: np.random.Generator):
        h = self.hidden
        # gain 2 on the first layer: the ring's response has sharp edges within the knob range
        self.net = {"W1": rng.normal(0.0, 2.0 / np.sqrt(n_in), (n_in, h)), "b1": rng.normal(0.0, 1.0, h),
                    "W2": rng.normal(0.0, 1.0 / np.sqrt(h), (h, n_out)), "b2": np.zeros(n_out)}
        self.moments = {f"{m}_{k}": np.zeros_like(v) for k, v in self.net.items() for m in ("m", "v")}
        self.adam_t = 0

    def forward(self, x: np.ndarray):
        hid = np.tanh(x @ self.net["W1"] + self.net["b1"])
        return hid @ self.net["W2"] + self.net["b2"], hid

    def vjp(self, x: np.ndarray, g_out: np.ndarray) -> np.ndarray:
        """g_out [n, F] -> g_out @ d twin / d x, [n, n_in] (the twin's Jacobian at the rows x)."""
        _, hid = self.forward(x)
        return ((g_out @ self.net["W2"].T) * (1.0 - hid**2)) @ self.net["W1"].T

    def _fit(self, iters: int) -> float:
        """Full-batch Adam on the mean squared error over the buffer; returns the final RMSE."""
        n_in = self.net["W1"].shape[0]
        x, target = self.buffer[:, :n_in], self.buffer[:, n_in:]
        b1, b2, tiny = 0.9, 0.999, 1e-8
        for _ in range(iters):
            out, hid = self.forward(x)
            err = 2.0 * (out - target) / target.size
            g_hid = (err @ self.net["W2"].T) * (1.0 - hid**2)
            grads = {"W2": hid.T @ err, "b2": err.sum(axis=0), "W1": x.T @ g_hid, "b1": g_hid.sum(axis=0)}
            self.adam_t += 1
            for k, g in grads.items():
                m = self.moments[f"m_{k}"] = b1 * self.moments[f"m_{k}"] + (1 - b1) * g
                v = self.moments[f"v_{k}"] = b2 * self.moments[f"v_{k}"] + (1 - b2) * g**2
                self.net[k] = self.net[k] - self.fit_lr * (m / (1 - b1**self.adam_t)) / (
                    np.sqrt(v / (1 - b2**self.adam_t)) + tiny)
        out, _ = self.forward(x)
        return float(np.sqrt(np.mean((out - target) ** 2)))

    def _rows(self, u, current_a, n_nodes, current_scale_a):
        k = u.shape[1] // n_nodes
        knobs = u.reshape(len(u) * n_nodes, k)
        cur = np.full((len(knobs), 1), (current_a - self.current_ref) / current_scale_a)
        return np.hstack([knobs, cur])

    def _remember(self, u, current_a, features, n_nodes, current_scale_a, rng):
        x = self._rows(u, current_a, n_nodes, current_scale_a)
        rows = np.hstack([x, features.reshape(len(x), -1)])
        if self.net is None:
            self._init(x.shape[1], rows.shape[1] - x.shape[1], rng)
            self.net["b2"] = rows[:, x.shape[1]:].mean(axis=0)  # start at the mean feature
        self.buffer = rows if self.buffer is None else np.vstack([self.buffer, rows])
        self.buffer = self.buffer[-self.buffer_size:]

    # ------------------------------------------------------------ the estimate
    def estimate(self, model, reservoir, x, y, sample_index, step, rng) -> Estimate:
        # virtual nodes per sample: the in-process reservoirs say so, a station through its encoder
        n_nodes = getattr(reservoir, "n_nodes", None) or getattr(getattr(reservoir, "encoder", None), "n_nodes", 1)
        scale_a = model.current_scale_a
        if self.current_ref is None:
            self.current_ref = model.current_a()
        first_fit = self.net is None
        if self.calls < self.warmup_steps:
            tap = _Tap(reservoir)
            est = NodePerturbation(epsilon=self.warmup_epsilon).estimate(model, tap, x, y, sample_index, step, rng)
            for u_m, current_m, f_m in tap.calls:
                self._remember(u_m, current_m, f_m, n_nodes, scale_a, rng)
            self.calls += 1
            rmse = self._fit(self.first_fit_iters if first_fit else self.fit_iters)
            est.extra = {"twin_rmse": rmse, "warmup": 1}
            return est
        start = reservoir.measurements
        u, cache = model.encode(x)
        current = model.current_a()
        if model.train_current and self.current_dither > 0:
            current = current + float(_rademacher(rng, ())) * self.current_dither * scale_a
        features = reservoir.measure(u, current_a=current, kind="train", step=step, sample_index=sample_index)
        self._remember(u, current, features, n_nodes, scale_a, rng)
        self.calls += 1
        # refit with this batch included, then differentiate the twin at the measured inputs
        rmse = self._fit(self.first_fit_iters if first_fit else self.fit_iters)
        g_read, g_features, per_sample, accuracy = model.readout_gradient(features, y)
        rows = self._rows(u, current, n_nodes, scale_a)
        g_rows = self.vjp(rows, g_features.reshape(len(rows), -1))
        k = u.shape[1] // n_nodes
        grad = model.backward_encode(cache, g_rows[:, :k].reshape(u.shape)) + g_read
        if model.train_current:
            grad[model.slots["physical.current_a"].slice] = g_rows[:, k].sum() / scale_a
        return Estimate(grad, float(per_sample.mean()), accuracy, reservoir.measurements - start,
                        {"twin_rmse": rmse, "warmup": 0})


ESTIMATORS = {cls.name: cls for cls in (ParameterPerturbation, SPSA, NodePerturbation, Oracle, DigitalTwin)}


def make_estimator(name: str, **options):
    """Build an estimator by name: pgt, spsa, node, oracle, twin."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; allowed: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name](**options)
