"""Classification data sets: the bundled ones by name, or a user's data file by path.

``load("iris")`` or ``load("digits")`` returns standardised float64 features (mean 0, std 1
per feature, fitted on the training split only, so the test split leaks nothing) and integer
labels. The split is stored in the npz file (see ``labpgt/data/README.md``), never redrawn.

``open_dataset(PATH, label=..., test_fraction=...)`` does the same for a CSV, ``.npz`` or HDF5
file (``labpgt/data/files.py``) with a fixed, seeded, stratified split. Every data set carries
its :class:`labpgt.data.record.DatasetRecord`: what a run file keeps so that replay and resume
rebuild the same arrays without the original file (``Dataset.to_record``/``Dataset.from_record``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from labpgt.data.record import BUNDLED, DatasetRecord

NAMES = BUNDLED


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # [n_train, n_features] float64, standardised
    y_train: np.ndarray  # [n_train] int64 class indices
    x_test: np.ndarray  # [n_test, n_features] float64, standardised with the train statistics
    y_test: np.ndarray  # [n_test] int64
    n_classes: int
    name: str
    class_names: tuple[str, ...] = ()  # class index -> name
    record: DatasetRecord | None = field(default=None, repr=False, compare=False)

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    def to_record(self) -> DatasetRecord:
        """What a run file keeps of this data set (:class:`labpgt.data.record.DatasetRecord`)."""
        if self.record is None:
            raise ValueError(f"data set {self.name!r} was made in memory and has no record to keep in a run file")
        return self.record

    @classmethod
    def from_record(cls, record: DatasetRecord, where: str = "") -> "Dataset":
        """The arrays a record stands for, bit for bit (``where`` prefixes error messages)."""
        x_train, y_train, x_test, y_test = record.arrays(where)
        return cls(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, n_classes=record.n_classes,
                   name=record.name, class_names=record.class_names, record=record)


def load(name: str) -> Dataset:
    """Load a bundled data set by name (``"iris"`` or ``"digits"``)."""
    if name not in NAMES:
        raise ValueError(f"unknown data set {name!r}; allowed: {', '.join(NAMES)}")
    return Dataset.from_record(DatasetRecord.bundled(name))


def open_dataset(name_or_path: str, *, label: str | None = None, test_fraction: float | None = None) -> Dataset:
    """A bundled data set by name, or a data file by path (CSV: ``label`` names the label column,
    default the last; ``test_fraction`` default 0.2). Bad data: :class:`labpgt.data.files.DatasetError`."""
    if name_or_path in NAMES:
        if label is not None or test_fraction is not None:
            raise ValueError(f"data set {name_or_path!r} is bundled with a fixed split and no label column; "
                             f"label and test_fraction apply to data files only")
        return load(name_or_path)
    return Dataset.from_record(DatasetRecord.from_file(name_or_path, label=label, test_fraction=test_fraction))
