"""Physical local learning (PhyLL): layer-local contrastive training, no backward pass through the ring.

Written from Momeni et al., "Backpropagation-free training of deep physical neural networks"
(arXiv 2304.11042; Science 382, 1297 (2023)) and the formulas in issue 16. The network is a
:class:`labpgt.models.deep.DeepPhysicalModel` with the goodness head: block k = the physical layer (a
fixed random knob map, then the ring) followed by a trainable digital linear layer whose input
is the ring's features concatenated with the block's input (the skip).

- Label overlay: the one-hot label scaled to the sample's max |x| is put in the first entries
  of the input. ``overlay="prepend"`` (default) adds n_classes entries in front of the data;
  ``"replace"`` overwrites the data's first n_classes entries, as the paper does for images
  whose first pixels are blank border (on Iris it would erase 3 of the 4 features).
- Goodness of block k: g_k = cos(|h_k|, r_k) = (|h_k| . r_k) / || |h_k| ||, r_k a fixed random
  unit vector of that block (labpgt/models/deep.py: ``goodness_directions``, from the model's seed).
- Each step: a positive pass (the true label overlaid) and a negative pass (a wrong label drawn
  uniformly from the others), through every block; block k's local loss is
  mean_i log(1 + exp(-theta (g_k(pos_i) - g_k(neg_i)))), theta = 4. Its exact gradient is taken
  with respect to block k's linear layer only: each block's input and the ring's features are
  constants for it (nothing flows into the ring or into earlier blocks). The returned gradient
  is the sum of the blocks' local gradients (block-diagonal), the reported loss their sum.
- Inference: G_c = sum_k g_k for the sample with label c overlaid, for every candidate c; the
  prediction is argmax_c G_c. That is one full pass per candidate label: C K V measurements per
  test sample, counted as evaluation measurements. The test loss is the cross-entropy of
  softmax(theta G).

Costs (B samples, V virtual nodes, K blocks): 2 K B V measurements per step.

Run file: training passes are recorded with perturbation sign +1 (positive pass) and -1
(negative pass), direction 0; evaluation passes with direction = the candidate label, sign 0;
every one with its block (labpgt/models/deep.py). The step's "accuracy" is the fraction of the batch
whose positive pass had the larger summed goodness (a training batch is never classified: that
would cost C passes).
"""
from __future__ import annotations

import numpy as np

from labpgt.contracts import Perturbation
from labpgt.estimators.base import Estimate, EstimatorBase
from labpgt.models.deep import OVERLAYS, goodness, label_scores, overlay_label

__all__ = ["PhysicalLocalLearning", "contrastive_loss", "goodness", "label_scores", "overlay_label"]


def contrastive_loss(g_pos: np.ndarray, g_neg: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Per sample log(1 + exp(-theta (g_pos - g_neg))) and its derivative w.r.t. g_pos (= minus that w.r.t. g_neg)."""
    margin = -theta * (g_pos - g_neg)
    loss = np.logaddexp(0.0, margin)
    return loss, -theta / (1.0 + np.exp(-margin))  # -theta * sigmoid(margin)


class PhysicalLocalLearning(EstimatorBase):
    """``phyll``: physical local learning (module docstring). theta: the loss's sharpness (4 in
    the paper); overlay: how the label is put on the input (``prepend`` or ``replace``)."""

    name = "phyll"

    def __init__(self, theta: float = 4.0, overlay: str = "prepend"):
        if not theta > 0:
            raise ValueError(f"theta must be > 0, got {theta}")
        if overlay not in OVERLAYS:
            raise ValueError(f"unknown label overlay {overlay!r}; allowed: {', '.join(OVERLAYS)}")
        self.theta, self.overlay = float(theta), overlay

    def options(self) -> dict:
        return dict(theta=self.theta, overlay=self.overlay)

    def label_inputs(self, n_classes: int) -> int:
        """Entries the overlay adds in front of the data (the model's n_label_inputs)."""
        return n_classes if self.overlay == "prepend" else 0

    def local_gradient(self, model, pos: list, neg: list) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
        """From the two passes' per-block traces: (flat gradient, summed local loss, G_pos, G_neg)."""
        grad = np.zeros(model.size)
        total_loss = 0.0
        batch = len(pos[0].h)
        summed_pos, summed_neg = np.zeros(batch), np.zeros(batch)
        for k in range(model.n_blocks):
            direction = model.goodness_directions[k]
            g_pos, dg_pos = goodness(pos[k].h, direction)
            g_neg, dg_neg = goodness(neg[k].h, direction)
            loss, dloss = contrastive_loss(g_pos, g_neg, self.theta)
            total_loss += float(loss.mean())
            # d(mean loss)/dh for both passes; the linear layer's input z is a constant here
            grad_h_pos = (dloss / batch)[:, None] * dg_pos
            grad_h_neg = (-dloss / batch)[:, None] * dg_neg
            grad[model.slots[f"block{k}.linear.weight"].slice] = (pos[k].z.T @ grad_h_pos
                                                                 + neg[k].z.T @ grad_h_neg).ravel()
            grad[model.slots[f"block{k}.linear.bias"].slice] = grad_h_pos.sum(axis=0) + grad_h_neg.sum(axis=0)
            summed_pos += g_pos
            summed_neg += g_neg
        return grad, total_loss, summed_pos, summed_neg

    def estimate(self, model, reservoir, x, y, sample_index, step, rng) -> Estimate:
        if model.head != "goodness":
            raise ValueError(f"phyll trains a deep physical network with the goodness head, got head {model.head!r}")
        if model.n_label_inputs != self.label_inputs(model.n_classes):
            raise ValueError(f"overlay {self.overlay!r} needs a model with {self.label_inputs(model.n_classes)} label "
                             f"inputs, got {model.n_label_inputs}")
        start = reservoir.measurements
        n_classes = model.n_classes
        wrong = (y + rng.integers(1, n_classes, size=len(y))) % n_classes  # uniform over the other labels
        inputs = [overlay_label(x, y, n_classes, self.overlay), overlay_label(x, wrong, n_classes, self.overlay)]
        _, traces = model.forward_passes(reservoir, inputs, [Perturbation(0, +1), Perturbation(0, -1)], kind="train",
                                         step=step, sample_index=sample_index)
        grad, loss, summed_pos, summed_neg = self.local_gradient(model, traces[0], traces[1])
        pair_accuracy = float(np.mean(summed_pos > summed_neg))
        return Estimate(grad, loss, pair_accuracy, reservoir.measurements - start)
