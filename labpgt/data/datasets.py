"""The bundled classification data sets with fixed train/test splits.

``load("iris")`` or ``load("digits")`` returns standardised float64 features (mean 0, std 1
per feature, fitted on the training split only, so the test split leaks nothing) and integer
labels. The split is stored in the npz file (see ``labpgt/data/README.md``), never redrawn.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

NAMES = ("iris", "digits")


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # [n_train, n_features] float64, standardised
    y_train: np.ndarray  # [n_train] int64 class indices
    x_test: np.ndarray  # [n_test, n_features] float64, standardised with the train statistics
    y_test: np.ndarray  # [n_test] int64
    n_classes: int
    name: str

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def load(name: str) -> Dataset:
    """Load a bundled data set by name (``"iris"`` or ``"digits"``)."""
    if name not in NAMES:
        raise ValueError(f"unknown data set {name!r}; allowed: {', '.join(NAMES)}")
    with resources.files("labpgt.data").joinpath(f"{name}.npz").open("rb") as fh:
        with np.load(fh, allow_pickle=False) as npz:
            features = npz["features"].astype(np.float64)
            labels = npz["labels"].astype(np.int64)
            train_index = npz["train_index"].astype(np.int64)
            test_index = npz["test_index"].astype(np.int64)
    x_train, x_test = features[train_index], features[test_index]
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    # constant pixels (digits' corners) would divide by zero: leave them centred, unscaled
    std = np.where(std > 0, std, 1.0)
    return Dataset(
        x_train=(x_train - mean) / std,
        y_train=labels[train_index],
        x_test=(x_test - mean) / std,
        y_test=labels[test_index],
        n_classes=int(labels.max()) + 1,
        name=name,
    )
