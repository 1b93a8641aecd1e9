"""Optimizers as small composable transformations (in the spirit of optax).

Each transformation has ``init_state(params) -> dict`` and
``transform(grad, state, params) -> (update, state)`` where ``update`` is added to the
parameters. ``update(grad, state, params) -> (new_params, state)`` applies it. ``Chain``
composes transformations left to right. State is a flat dict of numpy arrays (and 0-d
arrays for counters), so a checkpoint can store it as is.

The pieces: :class:`Trace` (heavy-ball momentum) and :class:`ScaleByLearningRate` (the
learning rate as its own piece: SGD is ``Chain(Trace(m), ScaleByLearningRate(lr))``);
:class:`Adam`; :class:`InverseTimeDecay`; :class:`ScaleGroups` (a fixed factor per parameter);
:class:`ClipByNorm`. Schedules (:class:`PowerDecay`) are plain callables k -> value; SPSA's gain
sequences are two of them.

Adam keeps its learning rate inside: its step is (-lr * m_hat) / (sqrt(v_hat) + eps), and
every run recorded so far replays bit for bit only with that order of operations; optax's
split (normalise, then scale) rounds differently in the last bit. The digital twin's fit uses
this same Adam.
"""
from __future__ import annotations

import numpy as np


class Transformation:
    def init_state(self, params: np.ndarray) -> dict:
        return {}

    def transform(self, grad: np.ndarray, state: dict, params: np.ndarray):
        raise NotImplementedError

    def update(self, grad: np.ndarray, state: dict, params: np.ndarray):
        """Return (new_params, new_state)."""
        step, state = self.transform(grad, state, params)
        return params + step, state

    def config(self) -> dict:
        return {"name": type(self).__name__}


class Trace(Transformation):
    """Heavy-ball momentum: v = momentum * v + grad; passes v on (momentum 0: the gradient itself, no state)."""

    def __init__(self, momentum: float = 0.0):
        self.momentum = float(momentum)

    def init_state(self, params):
        return {"velocity": np.zeros_like(params)} if self.momentum else {}

    def transform(self, grad, state, params):
        if not self.momentum:
            return grad, {}
        velocity = self.momentum * state["velocity"] + grad
        return velocity, {"velocity": velocity}

    def config(self):
        return {"name": "trace", "momentum": self.momentum}


class ScaleByLearningRate(Transformation):
    """The learning rate as its own piece: update = -lr * incoming (a descent step)."""

    def __init__(self, lr: float):
        self.lr = float(lr)

    def transform(self, grad, state, params):
        return -self.lr * grad, {}

    def config(self):
        return {"name": "scale_by_learning_rate", "lr": self.lr}


class SGD(Transformation):
    """params -= lr * v, with v = momentum * v + grad: ``Chain(Trace(momentum), ScaleByLearningRate(lr))``."""

    def __init__(self, lr: float = 0.1, momentum: float = 0.0):
        self.lr, self.momentum = float(lr), float(momentum)
        self._chain = Chain(Trace(momentum), ScaleByLearningRate(lr))

    def init_state(self, params):
        # the trace's state without the chain's index prefix (the run files' optimizer layout)
        return Trace(self.momentum).init_state(params)

    def transform(self, grad, state, params):
        update, new = self._chain.transform(grad, {f"0.{k}": v for k, v in state.items()}, params)
        return update, {k[2:]: v for k, v in new.items()}

    def config(self):
        return {"name": "sgd", "lr": self.lr, "momentum": self.momentum}


class Adam(Transformation):
    """Kingma & Ba: bias-corrected first and second moments, step lr * m_hat / (sqrt(v_hat) + eps)."""

    def __init__(self, lr: float = 0.01, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)

    def init_state(self, params):
        return {"m": np.zeros_like(params), "v": np.zeros_like(params), "count": np.array(0, dtype=np.int64)}

    def transform(self, grad, state, params):
        b1, b2 = self.betas
        count = int(state["count"]) + 1
        m = b1 * state["m"] + (1 - b1) * grad
        v = b2 * state["v"] + (1 - b2) * grad**2
        m_hat = m / (1 - b1**count)
        v_hat = v / (1 - b2**count)
        return -self.lr * m_hat / (np.sqrt(v_hat) + self.eps), {"m": m, "v": v, "count": np.array(count, dtype=np.int64)}

    def config(self):
        return {"name": "adam", "lr": self.lr, "betas": list(self.betas), "eps": self.eps}


class ClipByNorm(Transformation):
    """Rescale the incoming gradient so its norm is at most max_norm (guards against a wild estimate)."""

    def __init__(self, max_norm: float):
        self.max_norm = float(max_norm)

    def transform(self, grad, state, params):
        norm = float(np.linalg.norm(grad))
        return (grad * (self.max_norm / norm) if norm > self.max_norm else grad), {}

    def config(self):
        return {"name": "clip_by_norm", "max_norm": self.max_norm}


class InverseTimeDecay(Transformation):
    """Multiply the incoming update by 1 / (1 + k / decay_steps) at the k-th update (k from 0).

    Put it after SGD/Adam in a Chain: the step size falls to half after decay_steps updates,
    which settles the noisy late phase of a perturbative run.
    """

    def __init__(self, decay_steps: float):
        if decay_steps <= 0:
            raise ValueError(f"decay_steps must be > 0, got {decay_steps}")
        self.decay_steps = float(decay_steps)

    def init_state(self, params):
        return {"count": np.array(0, dtype=np.int64)}

    def transform(self, grad, state, params):
        k = int(state["count"])
        return grad / (1.0 + k / self.decay_steps), {"count": np.array(k + 1, dtype=np.int64)}

    def config(self):
        return {"name": "inverse_time_decay", "decay_steps": self.decay_steps}


class Chain(Transformation):
    """Apply transformations in order; each one's output is the next one's input."""

    def __init__(self, *parts: Transformation):
        self.parts = parts

    def init_state(self, params):
        state = {}
        for i, part in enumerate(self.parts):
            for key, value in part.init_state(params).items():
                state[f"{i}.{key}"] = value
        return state

    def transform(self, grad, state, params):
        new_state = {}
        for i, part in enumerate(self.parts):
            prefix = f"{i}."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            grad, sub = part.transform(grad, sub, params)
            new_state.update({prefix + k: v for k, v in sub.items()})
        return grad, new_state

    def config(self):
        return {"name": "chain", "parts": [p.config() for p in self.parts]}


class ScaleGroups(Transformation):
    """Multiply the update of each parameter by a fixed factor (a per-group learning rate).

    Node perturbation's gradient for the layers before the reservoir is far noisier than the
    readout's exact gradient; a smaller step there (``before_lr_ratio``) keeps the noise from
    random-walking those layers while the readout learns at full speed. Stateless.
    """

    def __init__(self, factors: np.ndarray):
        self.factors = np.asarray(factors, dtype=np.float64)

    def transform(self, grad, state, params):
        return grad * self.factors, {}

    def config(self):
        return {"name": "scale_groups", "distinct_factors": sorted(set(self.factors.tolist()))}


class PowerDecay:
    """A schedule k -> scale / (offset + k + 1) ** power (k from 0): Spall's SPSA gain sequences."""

    def __init__(self, scale: float, offset: float, power: float):
        self.scale, self.offset, self.power = scale, offset, power

    def __call__(self, k: int) -> float:
        return self.scale / (self.offset + k + 1) ** self.power


def make_optimizer(name: str, **options) -> Transformation:
    """Build an optimizer by name: sgd (lr, momentum) or adam (lr, betas, eps)."""
    table = {"sgd": SGD, "adam": Adam}
    if name not in table:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(table)}")
    return table[name](**options)
