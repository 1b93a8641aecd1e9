"""Deep physical networks: K blocks, each one more pass through the same ring.

Block k (k = 0 .. K-1) takes an input a_k [B, d_k] (a_0 is the data sample; with the goodness
head the label is overlaid on it first, :func:`overlay_label`) and computes::

    u_k = u_scale * tanh(a_k @ A_k + c_k)    the ring's knobs        (group "before")
    f_k = ring(u_k)                           measured, block k       [B, F]
    h_k = [f_k, a_k] @ W_k + b_k              digital linear layer on the physical output and
                                              the block's input (the skip)   (group "readout")
    a_{k+1} = h_k / rms(h_k)                  the next block's input (RMS-normalised, so the
                                              scale of one block never saturates the next)

Two heads:

- ``softmax``: logits = a_K @ W_out + b_out, cross-entropy. Trained by labpgt/estimators/deep.py:
  :class:`DeepNodePerturbation` (``node``) and :class:`DeepParameterPerturbation` (``pgt``).
- ``goodness``: no head; every block is trained on its own (physical local learning,
  labpgt/estimators/phyll.py). The knob maps A_k, c_k are then a fixed random part of the physical layer
  (not trained: nothing is differentiated through the ring) and the bias current is fixed.

Every block measures the same ring at the same bias current. A measurement says which block it
belongs to through ``Perturbation.block``; the run file keeps it in the ``node`` column as
``block * nodes_per_pass + virtual node`` (:func:`block_of_node` undoes it), so files stay
format 1 and every reader of format 1 reads them.

Costs (B samples, V virtual nodes, K blocks): one forward pass is K B V measurements. node
perturbation: 2 K B V per step (each block's antithetic pair measured back to back); pgt:
2 N K B V; evaluation with the softmax head: K V per test sample.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from labpgt.contracts import Perturbation
from labpgt.models.dense import Dense, FlatParameters, lay_out, softmax_cross_entropy
from labpgt.training.trainer import Trainer

log = logging.getLogger(__name__)

#: the deep model's defaults (the builder's; --width sets width, --blocks n_blocks)
DEFAULTS = {"n_blocks": 2, "width": 32, "u_scale": 0.9, "current_scale_a": 1e-3}

HEADS = ("softmax", "goodness")
_RMS_FLOOR = 1e-12  # keeps the normalisation finite for an all-zero block output


def block_of_node(node: np.ndarray, nodes_per_pass: int) -> tuple[np.ndarray, np.ndarray]:
    """Run-file ``node`` column -> (block, virtual node within the pass)."""
    node = np.asarray(node)
    return node // nodes_per_pass, node % nodes_per_pass


@dataclass
class BlockPass:
    """What one block did for one pass: its input, knobs (and their tanh), features, linear layer."""

    a_in: np.ndarray  # [B, d_k] the block's input
    tanh: np.ndarray  # [B, n_knobs] tanh of the knob map's output (u = u_scale * tanh)
    u: np.ndarray  # [B, n_knobs] the knobs before any perturbation
    features: np.ndarray  # [B, F] the ring's features as used
    z: np.ndarray  # [B, F + d_k] the linear layer's input [features, a_in]
    h: np.ndarray  # [B, width] the linear layer's output


class DeepPhysicalModel(FlatParameters):
    """K blocks through the ring (see the module docstring).

    n_inputs: features per data sample; n_knobs: ``reservoir.n_inputs``; n_features:
    ``reservoir.n_features``; n_blocks: K >= 1; width: outputs of each block's linear layer;
    head: ``softmax`` or ``goodness``; n_label_inputs: entries prepended to the data for the
    label overlay (goodness head; None: n_classes with the
    goodness head (the ``prepend`` overlay), 0 with the softmax head); u_scale, current_a, current_scale_a as in
    :class:`labpgt.model.HybridModel`; train_knob_maps / train_current: whether A_k, c_k and
    the bias current are trained (never with the goodness head).
    """

    def __init__(self, n_inputs: int, n_knobs: int, n_features: int, n_classes: int, *, n_blocks: int = 2,
                 width: int = 16, head: str = "softmax", n_label_inputs: int | None = None, u_scale: float = 0.9,
                 current_a: float = 1.8, current_scale_a: float = 1e-3, train_current: bool = True,
                 train_knob_maps: bool = True, seed: int = 0):
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; allowed: {', '.join(HEADS)}")
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if not 0.0 < u_scale <= 1.0:
            raise ValueError(f"u_scale must be in (0, 1], got {u_scale}")
        if head == "goodness" and (train_current or train_knob_maps):
            raise ValueError("the goodness head trains only the digital linear layers: "
                             "train_current and train_knob_maps must be False")
        self.n_inputs, self.n_knobs, self.n_features, self.n_classes = n_inputs, n_knobs, n_features, n_classes
        self.n_blocks, self.width, self.head = int(n_blocks), int(width), head
        if n_label_inputs is None:
            n_label_inputs = n_classes if head == "goodness" else 0
        self.n_label_inputs = int(n_label_inputs)
        self.u_scale, self.current_scale_a = float(u_scale), float(current_scale_a)
        self.train_current, self.train_knob_maps = bool(train_current), bool(train_knob_maps)
        self.config = dict(n_inputs=n_inputs, n_knobs=n_knobs, n_features=n_features, n_classes=n_classes,
                           n_blocks=n_blocks, width=width, head=head, n_label_inputs=n_label_inputs,
                           u_scale=u_scale, current_a=current_a, current_scale_a=current_scale_a,
                           train_current=train_current, train_knob_maps=train_knob_maps, seed=seed)
        self.knob_maps, self.linears = [], []
        d_in = n_inputs + self.n_label_inputs
        for _ in range(self.n_blocks):
            self.knob_maps.append(Dense(d_in, n_knobs))
            self.linears.append(Dense(n_features + d_in, self.width))
            d_in = self.width
        self.head_layer = Dense(self.width, n_classes) if head == "softmax" else None

        # the flat vector: knob maps (before), the current (physical), linear layers and head (readout)
        self.slots, self.size = lay_out([
            *((f"block{k}.knobs.{pname}", "before", shape)
              for k, layer in enumerate(self.knob_maps) for pname, shape in layer.shapes.items()),
            ("physical.current_a", "physical", (1,)),
            *((f"block{k}.linear.{pname}", "readout", shape)
              for k, layer in enumerate(self.linears) for pname, shape in layer.shapes.items()),
            *((f"head.{pname}", "readout", shape)
              for pname, shape in (self.head_layer.shapes.items() if self.head_layer is not None else ())),
        ])

        rng = np.random.default_rng(seed)
        self._params = np.zeros(self.size)
        for k in range(self.n_blocks):
            for prefix, layer in ((f"block{k}.knobs", self.knob_maps[k]), (f"block{k}.linear", self.linears[k])):
                for pname, value in layer.init(rng).items():
                    self._params[self.slots[f"{prefix}.{pname}"].slice] = value.ravel()
        if self.head_layer is not None:
            for pname, value in self.head_layer.init(rng).items():
                self._params[self.slots[f"head.{pname}"].slice] = value.ravel()
        self._params[self.slots["physical.current_a"].slice] = current_a
        # the goodness head's fixed random unit vectors, one per block (from the seed, not trained)
        directions = np.random.default_rng([seed, 0x600D]).standard_normal((self.n_blocks, self.width))
        self.goodness_directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)

    # ---------------------------------------------------------------- parameters
    def trainable_mask(self) -> np.ndarray:
        mask = super().trainable_mask()
        if not self.train_knob_maps:
            mask &= ~self.group_mask("before")
        return mask

    def _view(self, prefix: str, params: np.ndarray) -> dict:
        out = {}
        for pname in ("weight", "bias"):
            slot = self.slots[f"{prefix}.{pname}"]
            out[pname] = params[slot.slice].reshape(slot.shape)
        return out

    # ---------------------------------------------------------------- the pieces of a block
    def knobs(self, k: int, a: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Block k's knob map: a [B, d_k] -> (u [B, n_knobs] in [-u_scale, u_scale], tanh)."""
        z, _ = Dense.forward(self._view(f"block{k}.knobs", params), a)
        t = np.tanh(z)
        return self.u_scale * t, t

    def linear(self, k: int, features: np.ndarray, a: np.ndarray, params: np.ndarray):
        """Block k's digital linear layer on [features, a]: (h [B, width], z)."""
        z = np.hstack([features, a])
        h, _ = Dense.forward(self._view(f"block{k}.linear", params), z)
        return h, z

    @staticmethod
    def normalise(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """a = h / rms(h) per sample: (a, rms [B, 1])."""
        rms = np.sqrt(np.mean(h**2, axis=1, keepdims=True) + _RMS_FLOOR)
        return h / rms, rms

    @staticmethod
    def normalise_backward(a: np.ndarray, rms: np.ndarray, grad_a: np.ndarray) -> np.ndarray:
        """d/dh of a = h / rms(h) applied to grad_a (rms = sqrt(mean h^2))."""
        return (grad_a - a * np.mean(grad_a * a, axis=1, keepdims=True)) / rms

    # ---------------------------------------------------------------- measured forward passes
    def forward_passes(self, reservoir, inputs: list, perturbations: list, *, kind: str, step: int,
                       sample_index: np.ndarray, params: np.ndarray | None = None,
                       knob_offsets: list | None = None, current_offsets_a: list | None = None):
        """Several passes through all blocks in lockstep, measured.

        Block by block, the passes are measured one after the other (so an antithetic pair or a
        positive/negative pair is measured back to back, cancelling slow drift). inputs: per pass
        the block-0 input [B, d_0]; perturbations: per pass its Perturbation (its block is set
        here); knob_offsets: per pass, per block an offset added to the knobs (node
        perturbation); current_offsets_a: per pass an offset of the bias current (A).
        Returns (per pass the top output a_K, per pass the list of :class:`BlockPass`).
        """
        p = self._params if params is None else params
        current = self.current_a(p)
        activations = [np.asarray(x, dtype=np.float64) for x in inputs]
        traces: list[list[BlockPass]] = [[] for _ in inputs]
        for k in range(self.n_blocks):
            for i, a in enumerate(activations):
                u, t = self.knobs(k, a, p)
                sent = u if knob_offsets is None else u + knob_offsets[i][k]
                features = reservoir.measure(
                    sent, current_a=current + (current_offsets_a[i] if current_offsets_a else 0.0), kind=kind,
                    step=step, sample_index=sample_index, perturbation=dataclasses.replace(perturbations[i], block=k))
                h, z = self.linear(k, features, a, p)
                traces[i].append(BlockPass(a, t, u, features, z, h))
                activations[i] = self.normalise(h)[0]
        return activations, traces

    def digital_forward(self, x: np.ndarray, features: list, params: np.ndarray | None = None):
        """The digital part of one pass with the ring's features given per block (no measurement)."""
        p = self._params if params is None else params
        a = np.asarray(x, dtype=np.float64)
        passes = []
        for k in range(self.n_blocks):
            u, t = self.knobs(k, a, p)
            h, z = self.linear(k, features[k], a, p)
            passes.append(BlockPass(a, t, u, features[k], z, h))
            a = self.normalise(h)[0]
        return a, passes

    # ---------------------------------------------------------------- the softmax head
    def logits(self, top: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        p = self._params if params is None else params
        return Dense.forward(self._view("head", p), top)[0]

    def per_sample_loss(self, top: np.ndarray, labels: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        return softmax_cross_entropy(self.logits(top, params), labels)[0]

    def backward(self, passes: list, top: np.ndarray, grad_logits: np.ndarray, grad_u: list,
                 params: np.ndarray | None = None) -> np.ndarray:
        """Flat gradient from dL/dlogits and, per block, an estimate of dL/du_k (the total derivative).

        Everything digital is differentiated exactly; at each block the gradient that would flow
        into the ring's features is dropped and the estimate grad_u[k] enters at the knobs instead
        (it already carries every path through the ring and the blocks after it).
        """
        p = self._params if params is None else params
        grad = np.zeros(self.size)
        head = self._view("head", p)
        grad[self.slots["head.weight"].slice] = (top.T @ grad_logits).ravel()
        grad[self.slots["head.bias"].slice] = grad_logits.sum(axis=0)
        grad_a = grad_logits @ head["weight"].T
        n_f = self.n_features
        for k in reversed(range(self.n_blocks)):
            bp = passes[k]
            a_out, rms = self.normalise(bp.h)
            grad_h = self.normalise_backward(a_out, rms, grad_a)
            lin = self._view(f"block{k}.linear", p)
            grad[self.slots[f"block{k}.linear.weight"].slice] = (bp.z.T @ grad_h).ravel()
            grad[self.slots[f"block{k}.linear.bias"].slice] = grad_h.sum(axis=0)
            grad_a = (grad_h @ lin["weight"].T)[:, n_f:]  # the skip; the features' part would enter the ring
            grad_pre = grad_u[k] * self.u_scale * (1.0 - bp.tanh**2)
            knob = self._view(f"block{k}.knobs", p)
            grad[self.slots[f"block{k}.knobs.weight"].slice] = (bp.a_in.T @ grad_pre).ravel()
            grad[self.slots[f"block{k}.knobs.bias"].slice] = grad_pre.sum(axis=0)
            grad_a = grad_a + grad_pre @ knob["weight"].T
        return grad

    def describe(self) -> str:
        groups = {g: int(self.group_mask(g).sum()) for g in ("before", "physical", "readout")}
        return f"DeepPhysicalModel({self.n_blocks} blocks, head {self.head}, {self.size} parameters: {groups})"


# --------------------------------------------------------------------------- the goodness head
OVERLAYS = ("prepend", "replace")


def overlay_label(x: np.ndarray, labels: np.ndarray, n_classes: int, mode: str = "prepend") -> np.ndarray:
    """The input with its first entries set to the one-hot label scaled to the sample's max |x|."""
    if mode not in OVERLAYS:
        raise ValueError(f"unknown label overlay {mode!r}; allowed: {', '.join(OVERLAYS)}")
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.shape != (len(x),) or np.any(labels < 0) or np.any(labels >= n_classes):
        raise ValueError(f"labels must be {len(x)} integers in [0, {n_classes}), got {labels!r}")
    one_hot = np.zeros((len(x), n_classes))
    one_hot[np.arange(len(x)), labels] = np.max(np.abs(x), axis=1)
    if mode == "prepend":
        return np.hstack([one_hot, x])
    if x.shape[1] < n_classes:
        raise ValueError(f"overlay 'replace' needs at least {n_classes} input entries, got {x.shape[1]}")
    out = x.copy()
    out[:, :n_classes] = one_hot
    return out


def goodness(h: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample cos(|h|, r) for a unit vector r, and its gradient d g / d h [B, width]."""
    magnitude = np.abs(h)
    norm = np.sqrt(np.sum(magnitude**2, axis=1, keepdims=True)) + 1e-12  # an all-zero h has goodness 0
    g = (magnitude @ direction)[:, None] / norm
    grad = np.sign(h) * (direction[None, :] - g * magnitude / norm) / norm
    return g[:, 0], grad


def label_scores(model, reservoir, x: np.ndarray, *, overlay: str, kind: str, step: int,
                 sample_index: np.ndarray) -> np.ndarray:
    """Summed goodness G [B, C]: one pass through all blocks per candidate label (C K B V measurements)."""
    n_classes = model.n_classes
    inputs = [overlay_label(x, np.full(len(x), c), n_classes, overlay) for c in range(n_classes)]
    _, traces = model.forward_passes(reservoir, inputs, [Perturbation(c, 0) for c in range(n_classes)], kind=kind,
                                     step=step, sample_index=sample_index)
    scores = np.zeros((len(x), n_classes))
    for c in range(n_classes):
        for k, bp in enumerate(traces[c]):
            scores[:, c] += goodness(bp.h, model.goodness_directions[k])[0]
    return scores


# --------------------------------------------------------------------------- trainer
class DeepTrainer(Trainer):
    """The ordinary training loop; only the test split is measured differently (K passes, or the
    goodness head's one pass per candidate label, labpgt/estimators/phyll.py)."""

    def test_loss_and_accuracy(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        losses, hits = [], []
        for lo in range(0, len(y), self.eval_batch_size):
            xb, yb = x[lo:lo + self.eval_batch_size], y[lo:lo + self.eval_batch_size]
            index = np.arange(lo, lo + len(yb))
            if self.model.head == "goodness":
                # the estimator's sharpness and overlay (phyll: the one estimator of the goodness head)
                logits = self.estimator.theta * label_scores(self.model, self.reservoir, xb,
                                                             overlay=self.estimator.overlay, kind="eval",
                                                             step=self.step, sample_index=index)
            else:
                tops, _ = self.model.forward_passes(self.reservoir, [xb], [Perturbation()], kind="eval",
                                                    step=self.step, sample_index=index)
                logits = self.model.logits(tops[0])
            per_sample, _ = softmax_cross_entropy(logits, yb)
            losses.append(per_sample)
            hits.append(logits.argmax(axis=1) == yb)
        return float(np.concatenate(losses).mean()), float(np.concatenate(hits).mean())
