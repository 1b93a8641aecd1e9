"""Optimizers as small composable transformations (in the spirit of optax).

Each transformation has ``init_state(params) -> dict`` and
``transform(grad, state, params) -> (update, state)`` where ``update`` is added to the
parameters. ``update(grad, state, params) -> (new_params, state)`` applies it. ``Chain``
composes transformations left to right. State is a flat dict of numpy arrays (and 0-d
arrays for counters), so a checkpoint can store it as is.
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


class SGD(Transformation):
    """params -= lr * v, with v = momentum * v + grad (heavy ball; momentum = 0 is plain SGD)."""

    def __init__(self, lr: float = 0.1, momentum: float = 0.0):
        self.lr, self.momentum = float(lr), float(momentum)

    def init_state(self, params):
        return {"velocity": np.zeros_like(params)} if self.momentum else {}

    def transform(self, grad, state, params):
        if not self.momentum:
            return -self.lr * grad, {}
        velocity = self.momentum * state["velocity"] + grad
        return -self.lr * velocity, {"velocity": velocity}

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


def make_optimizer(name: str, **options) -> Transformation:
    """Build an optimizer by name: sgd (lr, momentum) or adam (lr, betas, eps)."""
    table = {"sgd": SGD, "adam": Adam}
    if name not in table:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(table)}")
    return table[name](**options)
