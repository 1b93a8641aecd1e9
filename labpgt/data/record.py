"""What a run keeps of its data set, so that replay and resume never need the original file.

A :class:`DatasetRecord` holds the split's indices, the standardisation (mean and standard
deviation of the training split), the class and feature names, the data file's SHA-256 and,
when it is small (:data:`EMBED_LIMIT_BYTES`), the data itself; a larger data set is kept as
its absolute path and hash, and rebuilding it refuses a file whose hash differs.
:meth:`DatasetRecord.arrays` turns a record into the standardised train and test arrays; the
bundled data sets go through the same code, so their arrays are those of every earlier version.

In the run file (written once at creation, before SWMR) the record is the group ``/dataset``::

    attrs     name, source ("bundled" or "file"), file_format, path, file_sha256,
              file_size_bytes, data_sha256 (of features as <f8 and labels as <i8 bytes),
              label_column ("" for none), test_fraction (-1 for a fixed bundled split),
              split_seed, n_samples, n_features, n_classes, embedded (1: data below)
    datasets  train_index, test_index [int64], mean, std [n_features float64],
              class_names, feature_names [utf-8 strings],
              features [n_samples, n_features] float64 and labels [n_samples] int64 (if embedded)
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from labpgt.data.files import DatasetError, read_table

#: the data is kept inside the run file up to this many bytes (features float64 + labels int64)
EMBED_LIMIT_BYTES = 10_000_000
#: the split of a data file is drawn with this seed: the same file always splits the same way
SPLIT_SEED = 20240601
DEFAULT_TEST_FRACTION = 0.2
BUNDLED = ("iris", "digits")


def data_sha256(features: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(features, dtype="<f8").tobytes())
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train_index, test_index), each sorted: per class a seeded permutation, the test counts
    by largest remainder of class size x test_fraction, every class at least once in each split."""
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction = {test_fraction!r} is not allowed; allowed: between 0 and 1 (exclusive)")
    rng = np.random.default_rng(seed)
    n_classes = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=n_classes)
    quota = counts * test_fraction
    n_test = np.floor(quota).astype(np.int64)
    short = int(round(len(labels) * test_fraction)) - int(n_test.sum())
    # the largest fractional parts get the remaining test samples (ties: the lower class first)
    for c in np.argsort(-(quota - n_test), kind="stable")[:max(short, 0)]:
        n_test[c] += 1
    n_test = np.clip(n_test, 1, counts - 1)
    train, test = [], []
    for c in range(n_classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.append(members[:n_test[c]])
        train.append(members[n_test[c]:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def standardisation(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per feature of the training split; a constant feature keeps std 1 (centred, unscaled)."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


@dataclass(frozen=True)
class DatasetRecord:
    """Everything needed to rebuild a run's data set bit for bit (see the module docstring)."""

    name: str
    source: str  # "bundled" or "file"
    file_format: str
    path: str  # absolute path of the data file when the run was made ("" for bundled data)
    file_sha256: str
    file_size_bytes: int
    data_sha256: str
    label_column: str | None
    test_fraction: float | None  # None: the bundled fixed split
    split_seed: int
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    train_index: np.ndarray
    test_index: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    features: np.ndarray | None  # float64 [n, f]; None when not embedded (then read from path)
    labels: np.ndarray | None  # int64 [n]
    n_samples: int

    @property
    def embedded(self) -> bool:
        return self.features is not None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        where = "bundled" if self.source == "bundled" else f"{self.file_format} file {self.path}"
        kept = "kept in the run file" if self.embedded else "NOT kept in the run file (path and hash only)"
        split = ("fixed bundled split" if self.test_fraction is None else
                 f"test fraction {self.test_fraction:g}, split seed {self.split_seed}")
        label = f", label column {self.label_column!r}" if self.label_column else ""
        return (f"{self.name} ({where}{label}): {self.n_samples} samples, {len(self.feature_names)} features, "
                f"{self.n_classes} classes ({', '.join(self.class_names)}); {len(self.train_index)} train / "
                f"{len(self.test_index)} test, {split}; data {kept}; sha256 {self.file_sha256}")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_file(cls, path, *, label: str | None = None, test_fraction: float | None = None) -> "DatasetRecord":
        """Read a data file, split it (stratified, seeded) and fit the standardisation on the train split."""
        path = Path(path)
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else float(test_fraction)
        if not 0.0 < fraction < 1.0:
            raise DatasetError(f"{path}: test_fraction = {fraction!r} is not allowed; allowed: between 0 and 1 "
                               f"(exclusive)")
        table = read_table(path, label=label)
        train_index, test_index = stratified_split(table.labels, fraction)
        return cls._with_data(
            name=path.stem, source="file", file_format=table.file_format, path=str(path.resolve()),
            file_sha256=table.file_sha256, file_size_bytes=table.file_size_bytes, label_column=table.label_column,
            test_fraction=fraction, split_seed=SPLIT_SEED, class_names=table.class_names,
            feature_names=table.feature_names, features=table.features, labels=table.labels,
            train_index=train_index, test_index=test_index)

    @classmethod
    def bundled(cls, name: str) -> "DatasetRecord":
        """A bundled data set (``labpgt/data/<name>.npz``) with its stored split."""
        if name not in BUNDLED:
            raise DatasetError(f"unknown data set {name!r}; allowed: {', '.join(BUNDLED)}, or a path to a "
                               f".csv, .npz, .h5 or .hdf5 file")
        raw = resources.files("labpgt.data").joinpath(f"{name}.npz").read_bytes()
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            features = npz["features"].astype(np.float64)
            labels = npz["labels"].astype(np.int64)
            train_index = npz["train_index"].astype(np.int64)
            test_index = npz["test_index"].astype(np.int64)
            class_names = tuple(str(v) for v in npz["class_names"])
            feature_names = (tuple(str(v) for v in npz["feature_names"]) if "feature_names" in npz
                             else tuple(f"x{i}" for i in range(features.shape[1])))
        return cls._with_data(
            name=name, source="bundled", file_format="npz", path="", file_sha256=hashlib.sha256(raw).hexdigest(),
            file_size_bytes=len(raw), label_column=None, test_fraction=None, split_seed=-1,
            class_names=class_names, feature_names=feature_names, features=features, labels=labels,
            train_index=train_index, test_index=test_index)

    @classmethod
    def _with_data(cls, *, features, labels, train_index, test_index, **fields) -> "DatasetRecord":
        mean, std = standardisation(features[train_index])
        embedded = features.nbytes + labels.nbytes <= EMBED_LIMIT_BYTES
        return cls(**fields, data_sha256=data_sha256(features, labels), train_index=train_index,
                   test_index=test_index, mean=mean, std=std, features=features if embedded else None,
                   labels=labels if embedded else None, n_samples=len(labels))

    # ------------------------------------------------------------------ using
    def data(self, where: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(features, labels): the embedded arrays, or the file at ``path`` if its hash still matches."""
        prefix = f"{where}: " if where else ""
        if self.embedded:
            features, labels = self.features, self.labels
        elif self.source == "bundled":
            fresh = DatasetRecord.bundled(self.name)
            self._check_file_hash(fresh.file_sha256, prefix)
            features, labels = fresh.features, fresh.labels
        else:
            path = Path(self.path)
            if not path.is_file():
                raise DatasetError(f"{prefix}the run's data set is not kept in the run file ({self.file_size_bytes} "
                                   f"bytes of data > {EMBED_LIMIT_BYTES}) and its file {path} is missing; put the "
                                   f"file (sha256 {self.file_sha256}) back at that path")
            from labpgt.data.files import read_bytes, sha256_hex

            self._check_file_hash(sha256_hex(read_bytes(path)), prefix)
            table = read_table(path, label=self.label_column)
            features, labels = table.features, table.labels
            if table.class_names != self.class_names:
                raise DatasetError(f"{prefix}{path} now reads as classes {table.class_names}, the run recorded "
                                   f"{self.class_names}")
        if data_sha256(features, labels) != self.data_sha256:
            raise DatasetError(f"{prefix}the data set {self.name!r} does not match the SHA-256 the run recorded "
                               f"({self.data_sha256}); the run file is damaged or was edited")
        return features, labels

    def _check_file_hash(self, actual: str, prefix: str) -> None:
        if actual != self.file_sha256:
            raise DatasetError(f"{prefix}the data set file {self.path or self.name} has SHA-256 {actual}, but the "
                               f"run was made with {self.file_sha256}: the file changed; restore the original to "
                               f"replay or resume")

    def arrays(self, where: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x_train, y_train, x_test, y_test): standardised with the recorded train statistics."""
        features, labels = self.data(where)
        x_train, x_test = features[self.train_index], features[self.test_index]
        return ((x_train - self.mean) / self.std, labels[self.train_index],
                (x_test - self.mean) / self.std, labels[self.test_index])

    def without_data(self) -> "DatasetRecord":
        """The same record keeping only path and hash (what a data set above the limit records)."""
        return replace(self, features=None, labels=None)

    # ------------------------------------------------------------------ HDF5
    def write(self, group) -> None:
        """Into an empty h5py group (the run file's /dataset, before SWMR starts)."""
        import h5py

        a = group.attrs
        a["description"] = ("the data set this run trained on: split, standardisation (train split only), class "
                            "order, and the data itself when small; enough to replay and resume without the file")
        a.update({"name": self.name, "source": self.source, "file_format": self.file_format, "path": self.path,
                  "file_sha256": self.file_sha256, "data_sha256": self.data_sha256})
        a["file_size_bytes"] = int(self.file_size_bytes)
        a["label_column"] = self.label_column or ""
        a["test_fraction"] = -1.0 if self.test_fraction is None else float(self.test_fraction)
        a["split_seed"] = int(self.split_seed)
        a["n_samples"] = int(self.n_samples)
        a["n_features"] = len(self.feature_names)
        a["n_classes"] = self.n_classes
        a["embedded"] = int(self.embedded)
        text = h5py.string_dtype("utf-8")

        def put(name, data, units, description, dtype=None):
            ds = group.create_dataset(name, data=data, dtype=dtype)
            ds.attrs["units"] = units
            ds.attrs["description"] = description

        put("train_index", self.train_index.astype(np.int64), "1", "rows of the data in the training split")
        put("test_index", self.test_index.astype(np.int64), "1", "rows of the data in the test split")
        put("mean", self.mean, "1", "per-feature mean of the training split (subtracted)")
        put("std", self.std, "1", "per-feature standard deviation of the training split (divided by; 1 if constant)")
        put("class_names", list(self.class_names), "1", "class index -> name (the order of the labels)", text)
        put("feature_names", list(self.feature_names), "1", "the features' names (column order)", text)
        if self.embedded:
            put("features", self.features, "1", "the data's features as read, before standardisation")
            put("labels", self.labels, "1", "class index of every row (see class_names)")

    @classmethod
    def read(cls, group) -> "DatasetRecord":
        """From the run file's /dataset group (KeyError/ValueError if parts are missing)."""
        a = group.attrs

        def text(key):
            value = a[key]
            return value.decode("utf-8") if isinstance(value, bytes) else str(value)

        def names(key):
            return tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in group[key][()])

        embedded = bool(int(a["embedded"]))
        fraction = float(a["test_fraction"])
        return cls(
            name=text("name"), source=text("source"), file_format=text("file_format"), path=text("path"),
            file_sha256=text("file_sha256"), file_size_bytes=int(a["file_size_bytes"]),
            data_sha256=text("data_sha256"), label_column=text("label_column") or None,
            test_fraction=None if fraction < 0 else fraction, split_seed=int(a["split_seed"]),
            class_names=names("class_names"), feature_names=names("feature_names"),
            train_index=group["train_index"][()].astype(np.int64), test_index=group["test_index"][()].astype(np.int64),
            mean=group["mean"][()].astype(np.float64), std=group["std"][()].astype(np.float64),
            features=group["features"][()].astype(np.float64) if embedded else None,
            labels=group["labels"][()].astype(np.int64) if embedded else None, n_samples=int(a["n_samples"]))
