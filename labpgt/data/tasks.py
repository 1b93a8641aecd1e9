"""Sequence tasks for the transformer with a reservoir layer. Shipped or generated; no downloads.

``load_task(name)`` returns a :class:`SequenceDataset`: a :class:`labpgt.data.datasets.Dataset`
(same fields, so the Trainer uses it unchanged) with the sequence layout added. ``x`` stays
flat, [n, n_tokens * token_features], token-major (token t is ``x[:, t*F:(t+1)*F]``); the model
reshapes it.

- ``digits-seq``: the bundled 8x8 digits (``datasets.load("digits")``, standardised per
  pixel on the train split, its fixed split) read as a sequence of 8 rows: 8 tokens x 8
  features, 10 classes.
- ``narma10``: one-step prediction of the NARMA10 system (Atiya & Parlos 2000)::

      y(t+1) = 0.3 y(t) + 0.05 y(t) sum_{i=0..9} y(t-i) + 1.5 u(t-9) u(t) + 0.1,   u(t) ~ U[0, 0.5]

  driven by a seeded uniform input. A sample is the window of the last 10 steps, one token per
  step with features (u(s), y(s)), s = t-9..t; the target is y(t+1), which is an exact function
  of the window (the 1.5 u(t-9) u(t) product needs the first and last token together).
  Regression: ``kind = "regression"``, ``n_classes = 0``, float targets. Features and targets
  are standardised with the train split's statistics. Fixed split: the first 1500 windows
  train, the next 500 (after a gap, so no window overlaps the train windows) test.
  The model reports ``accuracy`` as 1 - NMSE (NMSE = MSE / variance of the standardised train
  targets = MSE, since that variance is 1): 0 = predicting the mean, 1 = perfect.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labpgt.data.datasets import Dataset, load

TASKS = ("digits-seq", "narma10")


@dataclass(frozen=True)
class SequenceDataset(Dataset):
    n_tokens: int = 1
    token_features: int = 1
    kind: str = "classification"  # or "regression" (then n_classes = 0, y float64)
    target_variance: float = 1.0  # of the (standardised) train targets; NMSE's denominator

    @property
    def n_outputs(self) -> int:
        return self.n_classes if self.kind == "classification" else 1


def digits_seq() -> SequenceDataset:
    """The 8x8 digits as 8 tokens (rows) of 8 features (pixels), with the bundled fixed split."""
    d = load("digits")
    # the bundled features are the images flattened row by row: row t = pixels 8t..8t+7
    return SequenceDataset(
        x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test,
        n_classes=d.n_classes, name="digits-seq", n_tokens=8, token_features=8,
    )


def narma10_series(length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Input u ~ U[0, 0.5] and NARMA10 output y, both [length] (y(t) for t < 10 is 0)."""
    u = np.random.default_rng([seed, 0x4A]).uniform(0.0, 0.5, length)
    y = np.zeros(length)
    for t in range(9, length - 1):
        y[t + 1] = 0.3 * y[t] + 0.05 * y[t] * y[t - 9 : t + 1].sum() + 1.5 * u[t - 9] * u[t] + 0.1
    if not np.all(np.isfinite(y)):
        raise RuntimeError("NARMA10 diverged for this seed")  # never for u in [0, 0.5] in practice
    return u, y


def narma10(n_train: int = 1500, n_test: int = 500, window: int = 10, seed: int = 0,
            washout: int = 200) -> SequenceDataset:
    """NARMA10 one-step prediction as a windowed sequence regression (see the module docstring)."""
    gap = window  # windows of the test split start after the last train target
    length = washout + window + n_train + gap + n_test + 1
    u, y = narma10_series(length, seed)
    ends = np.arange(washout + window - 1, length - 1)  # t = last step of the window; target y(t+1)
    tokens = np.stack([np.stack([u[t - window + 1 : t + 1], y[t - window + 1 : t + 1]], axis=1) for t in ends])
    targets = y[ends + 1]
    train, test = slice(0, n_train), slice(n_train + gap, n_train + gap + n_test)
    x_train, x_test = tokens[train], tokens[test]
    mean, std = x_train.mean(axis=(0, 1)), x_train.std(axis=(0, 1))  # per channel (u, y)
    t_mean, t_std = targets[train].mean(), targets[train].std()
    flat = lambda a: ((a - mean) / std).reshape(len(a), -1)  # noqa: E731
    return SequenceDataset(
        x_train=flat(x_train), y_train=(targets[train] - t_mean) / t_std,
        x_test=flat(x_test), y_test=(targets[test] - t_mean) / t_std,
        n_classes=0, name="narma10", n_tokens=window, token_features=2, kind="regression",
        target_variance=1.0,
    )


def load_task(name: str, **options) -> SequenceDataset:
    """A task by name: ``digits-seq`` or ``narma10`` (options go to the generator)."""
    if name == "digits-seq":
        if options:
            raise ValueError(f"digits-seq takes no options, got {sorted(options)}")
        return digits_seq()
    if name == "narma10":
        return narma10(**options)
    raise ValueError(f"unknown task {name!r}; allowed: {', '.join(TASKS)}")
