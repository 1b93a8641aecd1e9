"""``twin``: Physics-Aware Training -- measured forward pass, backward pass through a fitted twin.

The clean forward pass is measured (B V), the backward pass through the ring uses the Jacobian of
a small tanh MLP (the twin: one node's knobs and the bias current -> that node's features, shared
by the virtual nodes) evaluated at the measured inputs; the twin is refit every step
(warm-started with the project's Adam on the squared error) to a bounded buffer of the run's
own measured (knobs, current, features) rows. The first warmup steps use node perturbation (its
+/- measurements also fill the buffer). Cost B V per step (2 B V in warmup). The forward
current is dithered by +/- current_dither (shared per step) so the twin sees the current vary.
"""
from __future__ import annotations

import base64

import numpy as np

from labpgt.estimators.base import Estimate, EstimatorBase, Tap, pack, rademacher, unpack
from labpgt.estimators.node import NodePerturbation
from labpgt.training.optim import Adam


def _pack_f4(a: np.ndarray) -> dict:
    """A float32 array as JSON: shape plus base64 of its little-endian float32 bytes (exact)."""
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "f4": base64.b64encode(a.tobytes()).decode("ascii")}


def _unpack_f4(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["f4"]), dtype="<f4").reshape(d["shape"]).astype(np.float32)


class DigitalTwin(EstimatorBase):
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

    Model mismatch (a drifting or stepped ring): before each refit the twin predicts the batch
    it has just measured (RMSE over the batch's rows); with mismatch_factor > 0 two running
    means of it are kept, a fast one (decay mismatch_fast: the last few batches; one batch of 8
    rows is too noisy) and a slow one (decay mismatch_decay), and when the fast one exceeds
    mismatch_factor times the slow one the twin drops its buffer but the fresh rows, refits them
    for first_fit_iters and spends the next warmup_steps steps on node perturbation again (fresh
    +/- rows and a gradient that needs no twin). 0 (the default, as every run recorded before
    it) = never.

    buffer_dtype: "f8" (as recorded runs have it) or "f4": the buffer's rows rounded to float32
    when they enter it (the fit itself runs in float64), which halves the buffer's share of every
    checkpoint; the features' noise is ~1e4 times float32's rounding.

    State (weights, Adam moments, buffer, I_ref, step count, the residual's running means) is in
    state_dict(), JSON with arrays as base64 of their bytes (float64; the buffer float32 when
    buffer_dtype is "f4"), so resume continues bit for bit.
    """

    name = "twin"

    def __init__(self, hidden: int = 32, buffer_size: int = 1500, fit_iters: int = 20, fit_lr: float = 0.01,
                 first_fit_iters: int = 300, warmup_steps: int = 2, warmup_epsilon: float = 0.05,
                 current_dither: float = 0.5, mismatch_factor: float = 0.0, mismatch_decay: float = 0.95,
                 mismatch_fast: float = 0.5, buffer_dtype: str = "f8"):
        if hidden < 1 or buffer_size < 1 or fit_iters < 0 or first_fit_iters < 0 or warmup_steps < 0:
            raise ValueError("hidden, buffer_size >= 1; fit_iters, first_fit_iters, warmup_steps >= 0")
        if fit_lr <= 0 or warmup_epsilon <= 0 or current_dither < 0:
            raise ValueError("fit_lr and warmup_epsilon must be > 0, current_dither >= 0")
        if (mismatch_factor < 0 or (mismatch_factor and mismatch_factor <= 1) or not 0 <= mismatch_decay < 1
                or not 0 <= mismatch_fast < 1):
            raise ValueError("mismatch_factor must be 0 (off) or > 1, mismatch_decay and mismatch_fast in [0, 1)")
        self.hidden, self.buffer_size = int(hidden), int(buffer_size)
        self.fit_iters, self.fit_lr, self.first_fit_iters = int(fit_iters), float(fit_lr), int(first_fit_iters)
        self.warmup_steps, self.warmup_epsilon = int(warmup_steps), float(warmup_epsilon)
        self.current_dither = float(current_dither)
        self.mismatch_factor, self.mismatch_decay = float(mismatch_factor), float(mismatch_decay)
        self.mismatch_fast = float(mismatch_fast)
        if buffer_dtype not in ("f8", "f4"):
            raise ValueError(f"buffer_dtype must be 'f8' or 'f4', not {buffer_dtype!r}")
        self.buffer_dtype = buffer_dtype
        self._reset()

    def _reset(self):
        self.net: dict | None = None  # W1, b1, W2, b2
        self.moments: dict | None = None  # Adam m_*, v_*
        self.adam_t = 0
        self.buffer: np.ndarray | None = None  # rows [x (k + 1) | features (F)]
        self.current_ref: float | None = None
        self.calls = 0
        self.residual: list | None = None  # [fast, slow] running means of the pre-fit residual
        self.rewarm = 0  # node-perturbation steps still to take after a detected mismatch
        self.mismatches = 0

    def options(self):
        return dict(hidden=self.hidden, buffer_size=self.buffer_size, fit_iters=self.fit_iters, fit_lr=self.fit_lr,
                    first_fit_iters=self.first_fit_iters, warmup_steps=self.warmup_steps,
                    warmup_epsilon=self.warmup_epsilon, current_dither=self.current_dither,
                    **({"mismatch_factor": self.mismatch_factor, "mismatch_decay": self.mismatch_decay,
                        "mismatch_fast": self.mismatch_fast}
                       if self.mismatch_factor else {}),
                    **({"buffer_dtype": self.buffer_dtype} if self.buffer_dtype != "f8" else {}))

    def state_dict(self):
        state = {"calls": self.calls, "current_ref": self.current_ref}
        if self.mismatch_factor:
            state.update(residual=self.residual, rewarm=self.rewarm, mismatches=self.mismatches)
        if self.net is None:
            return state
        return {
            **state, "adam_t": self.adam_t,
            "net": {k: pack(v) for k, v in self.net.items()},
            "moments": {k: pack(v) for k, v in self.moments.items()},
            "buffer": pack(self.buffer) if self.buffer_dtype == "f8" else _pack_f4(self.buffer),
        }

    def load_state_dict(self, state):
        self._reset()
        self.calls = int(state.get("calls", 0))
        self.current_ref = None if state.get("current_ref") is None else float(state["current_ref"])
        self.residual = None if state.get("residual") is None else [float(r) for r in state["residual"]]
        self.rewarm, self.mismatches = int(state.get("rewarm", 0)), int(state.get("mismatches", 0))
        if "net" in state:
            self.net = {k: unpack(v) for k, v in state["net"].items()}
            self.moments = {k: unpack(v) for k, v in state["moments"].items()}
            self.adam_t = int(state["adam_t"])
            self.buffer = unpack(state["buffer"]) if "f8" in state["buffer"] else _unpack_f4(state["buffer"])

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
        adam = Adam(lr=self.fit_lr)  # the project's Adam: moments kept per array, one shared count
        for _ in range(iters):
            out, hid = self.forward(x)
            err = 2.0 * (out - target) / target.size
            g_hid = (err @ self.net["W2"].T) * (1.0 - hid**2)
            grads = {"W2": hid.T @ err, "b2": err.sum(axis=0), "W1": x.T @ g_hid, "b1": g_hid.sum(axis=0)}
            count = np.array(self.adam_t, dtype=np.int64)
            self.adam_t += 1
            for k, g in grads.items():
                state = {"m": self.moments[f"m_{k}"], "v": self.moments[f"v_{k}"], "count": count}
                self.net[k], state = adam.update(g, state, self.net[k])
                self.moments[f"m_{k}"], self.moments[f"v_{k}"] = state["m"], state["v"]
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
        if self.buffer_dtype == "f4":
            rows = rows.astype(np.float32)
        self.buffer = rows if self.buffer is None else np.vstack([self.buffer, rows])
        self.buffer = self.buffer[-self.buffer_size:]

    # ------------------------------------------------------------ the estimate
    def estimate(self, model, reservoir, x, y, sample_index, step, rng) -> Estimate:
        n_nodes = reservoir.n_nodes
        scale_a = model.current_scale_a
        if self.current_ref is None:
            self.current_ref = model.current_a()
        first_fit = self.net is None
        if self.calls < self.warmup_steps or self.rewarm > 0:
            tap = Tap(reservoir)
            est = NodePerturbation(epsilon=self.warmup_epsilon).estimate(model, tap, x, y, sample_index, step, rng)
            for u_m, current_m, f_m in tap.calls:
                self._remember(u_m, current_m, f_m, n_nodes, scale_a, rng)
            self.calls += 1
            rewarm, self.rewarm = self.rewarm > 0, max(self.rewarm - 1, 0)
            rmse = self._fit(self.first_fit_iters if first_fit else self.fit_iters)
            est.extra = {"twin_rmse": rmse, "warmup": 1 + int(rewarm)}
            return est
        start = reservoir.measurements
        u, cache = model.encode(x)
        current = model.current_a()
        if model.train_current and self.current_dither > 0:
            current = current + float(rademacher(rng, ())) * self.current_dither * scale_a
        features = reservoir.measure(u, current_a=current, kind="train", step=step, sample_index=sample_index)
        rows = self._rows(u, current, n_nodes, scale_a)
        extra = {"warmup": 0}
        iters = self.first_fit_iters if first_fit else self.fit_iters
        if self.mismatch_factor and not first_fit:
            iters = self._check_mismatch(rows, features, iters, extra)
        self._remember(u, current, features, n_nodes, scale_a, rng)
        self.calls += 1
        # refit with this batch included, then differentiate the twin at the measured inputs
        rmse = self._fit(iters)
        g_read, g_features, per_sample, accuracy = model.readout_gradient(features, y)
        g_rows = self.vjp(rows, g_features.reshape(len(rows), -1))
        k = u.shape[1] // n_nodes
        grad = model.backward_encode(cache, g_rows[:, :k].reshape(u.shape)) + g_read
        if model.train_current:
            grad[model.slots["physical.current_a"].slice] = g_rows[:, k].sum() / scale_a
        return Estimate(grad, float(per_sample.mean()), accuracy, reservoir.measurements - start,
                        {"twin_rmse": rmse, **extra})

    def _check_mismatch(self, rows, features, iters: int, extra: dict) -> int:
        """The twin's residual on the rows just measured, before it has seen them; above
        mismatch_factor times its running mean: keep only fresh rows, refit longer, re-warm."""
        predicted, _ = self.forward(rows)
        residual = float(np.sqrt(np.mean((predicted - features.reshape(len(rows), -1)) ** 2)))
        extra["twin_residual"] = residual
        if self.residual is None:
            self.residual = [residual, residual]
            return iters
        fast, slow = self.residual
        fast = self.mismatch_fast * fast + (1.0 - self.mismatch_fast) * residual
        if fast > self.mismatch_factor * slow:
            self.buffer, self.residual = None, None
            self.rewarm = self.warmup_steps
            self.mismatches += 1
            extra["mismatch"] = 1
            return self.first_fit_iters
        self.residual = [fast, self.mismatch_decay * slow + (1.0 - self.mismatch_decay) * residual]
        return iters
