"""Small numpy layers with exact manual backprop, and the hybrid model around the ring.

The hybrid model is::

    x --[Dense, act]*--> Dense --> z --> u = u_scale * tanh(z)      (digital, "before")
    u --> reservoir (measured, bias current ``current_a`` in A)      ("physical")
    features --[Dense, act]*--> Dense --> logits --> softmax CE      (digital, "readout")

All trainable parameters live in one flat float64 vector; every layer reads its weights as a
view of a named slice, so an estimator can perturb "all parameters" or one group, and an
optimizer sees a single array. The groups are ``before`` (layers before the ring), ``physical``
(the bias current in A) and ``readout`` (layers after the ring).

``u_scale`` < 1 keeps a margin: the knobs stay inside [-u_scale, u_scale], so a node
perturbation of size eps <= 1 - u_scale never leaves [-1, 1] (the encoder rejects anything
outside, it never clamps).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROUPS = ("before", "physical", "readout")

#: the dense model's defaults (the experiment's ``hidden`` sets hidden_before)
DEFAULTS = {"hidden_before": (8,), "hidden_after": (), "u_scale": 0.9, "current_scale_a": 1e-3}


# --------------------------------------------------------------------------- layers
class Dense:
    """y = x @ W + b with W [n_in, n_out]; parameters are read from a flat vector."""

    def __init__(self, n_in: int, n_out: int):
        self.n_in, self.n_out = n_in, n_out

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"weight": (self.n_in, self.n_out), "bias": (self.n_out,)}

    def init(self, rng: np.random.Generator, gain: float = 1.0) -> dict[str, np.ndarray]:
        # variance 1/n_in keeps activations O(1) through tanh layers
        return {
            "weight": rng.normal(0.0, gain / np.sqrt(self.n_in), (self.n_in, self.n_out)),
            "bias": np.zeros(self.n_out),
        }

    @staticmethod
    def forward(p: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x @ p["weight"] + p["bias"], x

    @staticmethod
    def backward(p: dict, cache: np.ndarray, grad_y: np.ndarray):
        """Return (grad_x, {"weight": ..., "bias": ...}) for an upstream gradient grad_y."""
        x = cache
        return grad_y @ p["weight"].T, {"weight": x.T @ grad_y, "bias": grad_y.sum(axis=0)}


class Tanh:
    shapes: dict = {}

    @staticmethod
    def forward(p: dict, x: np.ndarray):
        y = np.tanh(x)
        return y, y

    @staticmethod
    def backward(p: dict, cache: np.ndarray, grad_y: np.ndarray):
        return grad_y * (1.0 - cache**2), {}


class Relu:
    shapes: dict = {}

    @staticmethod
    def forward(p: dict, x: np.ndarray):
        return np.maximum(x, 0.0), x

    @staticmethod
    def backward(p: dict, cache: np.ndarray, grad_y: np.ndarray):
        return grad_y * (cache > 0), {}


ACTIVATIONS = {"tanh": Tanh, "relu": Relu}


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray):
    """Per-sample cross-entropy (nats) and its gradient w.r.t. the logits (per sample, not averaged)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_prob = shifted - log_norm
    rows = np.arange(len(labels))
    per_sample = -log_prob[rows, labels]
    grad = np.exp(log_prob)
    grad[rows, labels] -= 1.0
    return per_sample, grad


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class ParamSlot:
    name: str  # e.g. "before.0.weight"
    group: str  # one of GROUPS
    shape: tuple[int, ...]
    slice: slice


def lay_out(entries) -> tuple[dict[str, ParamSlot], int]:
    """(name, group, shape) entries, in order, as consecutive named slices of one flat vector:
    (slots, total size). Every model lays out its parameters with it."""
    slots: dict[str, ParamSlot] = {}
    offset = 0
    for name, group, shape in entries:
        size = int(np.prod(shape))
        slots[name] = ParamSlot(name, group, tuple(shape), slice(offset, offset + size))
        offset += size
    return slots, offset


class _Stack:
    """A sequence of layers whose parameters sit in named slots of the flat vector."""

    def __init__(self, layers: list, prefix: str, slots: dict[str, ParamSlot]):
        self.layers = layers
        self.keys = []  # per layer: {param_name: slot name}
        for i, layer in enumerate(layers):
            names = {}
            for pname in layer.shapes:
                names[pname] = f"{prefix}.{i}.{pname}"
            self.keys.append(names)
        self._slots = slots

    def views(self, flat: np.ndarray) -> list[dict]:
        out = []
        for names in self.keys:
            out.append({p: flat[self._slots[s].slice].reshape(self._slots[s].shape) for p, s in names.items()})
        return out

    def forward(self, flat: np.ndarray, x: np.ndarray):
        caches = []
        for layer, p in zip(self.layers, self.views(flat)):
            x, cache = layer.forward(p, x)
            caches.append(cache)
        return x, caches

    def backward(self, flat: np.ndarray, caches: list, grad_y: np.ndarray, grad_flat: np.ndarray) -> np.ndarray:
        """Accumulate parameter gradients into grad_flat; return the gradient w.r.t. the stack's input."""
        views = self.views(flat)
        for layer, p, cache, names in reversed(list(zip(self.layers, views, caches, self.keys))):
            grad_y, grads = layer.backward(p, cache, grad_y)
            for pname, g in grads.items():
                grad_flat[self._slots[names[pname]].slice] += g.ravel()
        return grad_y


# --------------------------------------------------------------------------- hybrid model
class FlatParameters:
    """One flat float64 vector of parameters with named slices (``slots``) in groups.

    ``current_bounds_a``: where the trained bias current may go (A), or None (no bounds); the
    experiment sets it from the station's limits (projected gradient descent in the trainer).

    Needs ``self._params``, ``self.slots``, ``self.size``, ``self.train_current`` and
    ``self.current_scale_a``; shared by every model the estimators train.
    """

    current_bounds_a: tuple[float, float] | None = None

    def params(self) -> np.ndarray:
        """A copy of the flat parameter vector."""
        return self._params.copy()

    def set_params(self, vec: np.ndarray) -> None:
        vec = np.asarray(vec, dtype=np.float64)
        if vec.shape != (self.size,):
            raise ValueError(f"expected a parameter vector of shape ({self.size},), got {vec.shape}")
        if not np.all(np.isfinite(vec)):
            raise ValueError("parameter vector contains NaN or inf")
        self._params[:] = vec

    def group_mask(self, *groups: str) -> np.ndarray:
        """Boolean mask over the flat vector selecting the named groups."""
        for g in groups:
            if g not in GROUPS:
                raise ValueError(f"unknown parameter group {g!r}; allowed: {', '.join(GROUPS)}")
        mask = np.zeros(self.size, dtype=bool)
        for slot in self.slots.values():
            if slot.group in groups:
                mask[slot.slice] = True
        return mask

    def trainable_mask(self) -> np.ndarray:
        mask = np.ones(self.size, dtype=bool)
        if not self.train_current:
            mask[self.slots["physical.current_a"].slice] = False
        return mask

    def param_scale(self) -> np.ndarray:
        """Typical size of each parameter's useful change: 1 for weights, current_scale_a for the current (A).

        Estimators that perturb parameters perturb by eps * scale (a 0.05 A kick would move the
        ring's line by ~30 MHz); the trainer multiplies the optimizer's step by it.
        """
        scale = np.ones(self.size)
        scale[self.slots["physical.current_a"].slice] = self.current_scale_a
        return scale

    def current_a(self, params: np.ndarray | None = None) -> float:
        p = self._params if params is None else params
        return float(p[self.slots["physical.current_a"].slice][0])


class HybridModel(FlatParameters):
    """Digital layers -> ring knobs u -> measured features -> digital readout -> softmax CE.

    n_inputs: features per data sample; n_knobs: ``reservoir.n_inputs`` (virtual nodes x
    knobs per node); n_features: ``reservoir.n_features``; hidden_before / hidden_after:
    widths of the hidden digital layers before / after the ring (() = a single Dense);
    u_scale: knobs are ``u_scale * tanh(z)``; current_a: initial bias current (A);
    current_scale_a: typical size of a useful change of the current (A), used by estimators
    to size perturbations and by the trainer to scale its learning rate.
    """

    def __init__(
        self,
        n_inputs: int,
        n_knobs: int,
        n_features: int,
        n_classes: int,
        *,
        hidden_before: tuple[int, ...] = (8,),
        hidden_after: tuple[int, ...] = (),
        activation: str = "tanh",
        u_scale: float = 0.9,
        current_a: float = 1.8,
        current_scale_a: float = 1e-3,
        train_current: bool = True,
        seed: int = 0,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        if not 0.0 < u_scale <= 1.0:
            raise ValueError(f"u_scale must be in (0, 1], got {u_scale}")
        self.n_inputs, self.n_knobs, self.n_features, self.n_classes = n_inputs, n_knobs, n_features, n_classes
        self.u_scale = float(u_scale)
        self.current_scale_a = float(current_scale_a)
        self.train_current = bool(train_current)
        self.config = dict(
            n_inputs=n_inputs, n_knobs=n_knobs, n_features=n_features, n_classes=n_classes,
            hidden_before=tuple(hidden_before), hidden_after=tuple(hidden_after), activation=activation,
            u_scale=u_scale, current_a=current_a, current_scale_a=current_scale_a,
            train_current=train_current, seed=seed,
        )
        act = ACTIVATIONS[activation]

        def build(widths):
            layers = []
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
                layers.append(Dense(a, b))
                if i < len(widths) - 2:
                    layers.append(act)
            return layers

        before_layers = build([n_inputs, *hidden_before, n_knobs])
        after_layers = build([n_features, *hidden_after, n_classes])

        # lay out the flat vector: before, physical, readout
        self.slots, self.size = lay_out([
            *((f"before.{i}.{pname}", "before", shape)
              for i, layer in enumerate(before_layers) for pname, shape in layer.shapes.items()),
            ("physical.current_a", "physical", (1,)),
            *((f"readout.{i}.{pname}", "readout", shape)
              for i, layer in enumerate(after_layers) for pname, shape in layer.shapes.items()),
        ])
        self.before = _Stack(before_layers, "before", self.slots)
        self.readout = _Stack(after_layers, "readout", self.slots)

        # initialise
        rng = np.random.default_rng(seed)
        self._params = np.zeros(self.size)
        for stack, prefix in ((self.before, "before"), (self.readout, "readout")):
            for i, layer in enumerate(stack.layers):
                if isinstance(layer, Dense):
                    for pname, value in layer.init(rng).items():
                        self._params[self.slots[f"{prefix}.{i}.{pname}"].slice] = value.ravel()
        self._params[self.slots["physical.current_a"].slice] = current_a

    # ---------------------------------------------------------------- forward / backward
    def encode(self, x: np.ndarray, params: np.ndarray | None = None):
        """Digital layers before the ring: x [B, n_inputs] -> (u [B, n_knobs] in [-u_scale, u_scale], cache)."""
        p = self._params if params is None else params
        z, caches = self.before.forward(p, np.asarray(x, dtype=np.float64))
        t = np.tanh(z)
        return self.u_scale * t, (caches, t)

    def backward_encode(self, cache, grad_u: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        """Backprop dL/du [B, n_knobs] into the layers before the ring; returns a flat gradient (zeros elsewhere)."""
        p = self._params if params is None else params
        caches, t = cache
        grad_z = grad_u * self.u_scale * (1.0 - t**2)
        grad = np.zeros(self.size)
        self.before.backward(p, caches, grad_z, grad)
        return grad

    def logits(self, features: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        p = self._params if params is None else params
        return self.readout.forward(p, features)[0]

    def per_sample_loss(self, features: np.ndarray, labels: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        """Cross-entropy of each sample (nats) from measured features."""
        per_sample, _ = softmax_cross_entropy(self.logits(features, params), labels)
        return per_sample

    def loss_and_accuracy(self, features: np.ndarray, labels: np.ndarray, params: np.ndarray | None = None):
        """Mean cross-entropy (nats) and accuracy (fraction) from measured features."""
        logits = self.logits(features, params)
        per_sample, _ = softmax_cross_entropy(logits, labels)
        return float(per_sample.mean()), float(np.mean(logits.argmax(axis=1) == labels))

    def readout_gradient(self, features: np.ndarray, labels: np.ndarray, params: np.ndarray | None = None):
        """Exact gradient of the mean loss w.r.t. the readout (flat, zeros elsewhere) and w.r.t. the features.

        Returns (grad_flat, grad_features [B, n_features], per_sample_loss, accuracy).
        """
        p = self._params if params is None else params
        logits, caches = self.readout.forward(p, features)
        per_sample, grad_logits = softmax_cross_entropy(logits, labels)
        grad = np.zeros(self.size)
        grad_features = self.readout.backward(p, caches, grad_logits / len(labels), grad)
        accuracy = float(np.mean(logits.argmax(axis=1) == labels))
        return grad, grad_features, per_sample, accuracy

    def describe(self) -> str:
        groups = {g: int(self.group_mask(g).sum()) for g in GROUPS}
        return f"HybridModel({self.size} parameters: {groups})"
