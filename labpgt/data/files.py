"""Reading a user's data file: CSV with a header, ``.npz`` (``x``, ``y``) or HDF5 (``x``, ``y``).

:func:`read_table` returns a :class:`Table`: float64 features, int64 class indices, the class
names in the order that defines those indices, and the SHA-256 of the file's bytes. Every
problem is a :class:`DatasetError` with one line naming the file, the row and column where
possible, the value, and what is allowed. Nothing read is ever executed (``np.load`` with
``allow_pickle=False``; HDF5 is read as plain arrays).

Classes: labels that are all whole numbers are ordered by value (``"2"`` before ``"10"``),
any other labels by their text (Unicode code points); the class index is the position in
that order, and the order is recorded with the run.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUFFIXES = {".csv": "csv", ".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5"}
_WHOLE_NUMBER = re.compile(r"[+-]?\d+")


class DatasetError(ValueError):
    """A data file that cannot be used as it is; the message says where and what is allowed."""


@dataclass(frozen=True)
class Table:
    """A data set as read from one file, before any split."""

    features: np.ndarray  # [n_samples, n_features] float64, finite
    labels: np.ndarray  # [n_samples] int64 class indices into class_names
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    file_format: str  # "csv", "npz" or "hdf5"
    file_sha256: str  # of the file's bytes, hex
    file_size_bytes: int
    label_column: str | None  # CSV only: the header name the labels came from


def file_format(path: Path) -> str:
    """The format a file's suffix names, or DatasetError listing the allowed suffixes."""
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DatasetError(f"{path}: unknown data file type {path.suffix or '(no suffix)'!r}; allowed: "
                           f"{', '.join(SUFFIXES)} (or a bundled data set: iris, digits)")
    return fmt


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the data file: {exc.strerror or exc}") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_table(path, *, label: str | None = None) -> Table:
    """Read, check and convert one data file (see the module docstring)."""
    path = Path(path)
    fmt = file_format(path)
    if label is not None and fmt != "csv":
        raise DatasetError(f"{path}: a label column ({label!r}) applies to CSV files only; .npz and HDF5 files "
                           f"hold the labels in 'y'")
    data = read_bytes(path)
    if fmt == "csv":
        features, raw_labels, feature_names, label_column, rows = _read_csv(path, data, label)
    elif fmt == "npz":
        features, raw_labels, feature_names = _read_npz(path, data)
        label_column, rows = None, None
    else:
        features, raw_labels, feature_names = _read_hdf5(path, data)
        label_column, rows = None, None
    labels, class_names = classes_of(raw_labels)
    check_classes(path, labels, class_names, label_column, rows)
    return Table(features=features, labels=labels, class_names=class_names, feature_names=feature_names,
                 file_format=fmt, file_sha256=sha256_hex(data), file_size_bytes=len(data), label_column=label_column)


# ----------------------------------------------------------------------------- CSV
def _read_csv(path: Path, data: bytes, label: str | None):
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not part of the header
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}); allowed: a UTF-8 CSV file with a header "
                           f"row") from None
    # (line number, cells) of every non-blank row; csv tracks lines itself (quoted cells may span lines)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    try:
        for cells in reader:
            if cells and any(c.strip() for c in cells):
                rows.append((reader.line_num, cells))
    except csv.Error as exc:
        raise DatasetError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None
    if not rows:
        raise DatasetError(f"{path}: the file is empty; allowed: a header row, then one row per sample")
    header_line, header = rows[0]
    header = [name.strip() for name in header]
    for col, name in enumerate(header, 1):
        if not name:
            raise DatasetError(f"{path}: line {header_line} (the header), column {col} has no name; every column "
                               f"needs one")
        if header.index(name) != col - 1:
            raise DatasetError(f"{path}: line {header_line} (the header), column {col}: the name {name!r} is used "
                               f"twice; column names must be unique")
    if len(header) < 2:
        raise DatasetError(f"{path}: the header names {len(header)} column; allowed: 2 or more (features and "
                           f"a label)")
    label_column = header[-1] if label is None else label
    if label_column not in header:
        raise DatasetError(f"{path}: no column {label_column!r} for the labels; the header has: "
                           f"{', '.join(header)}")
    label_at = header.index(label_column)
    feature_at = [i for i in range(len(header)) if i != label_at]
    body = rows[1:]
    if not body:
        raise DatasetError(f"{path}: the header is the only row; allowed: one row per sample after it")
    features = np.empty((len(body), len(feature_at)), dtype=np.float64)
    labels = []
    for r, (line, cells) in enumerate(body, 1):
        where = f"{path}: row {r} (line {line})"
        if len(cells) != len(header):
            raise DatasetError(f"{where} has {len(cells)} cells; the header has {len(header)} columns")
        for j, i in enumerate(feature_at):
            cell = cells[i].strip()
            try:
                value = float(cell)
            except ValueError:
                value = None
            if value is None or not np.isfinite(value):
                what = "is empty" if not cell else (f"{cell!r} is not a number" if value is None else
                                                    f"{cell!r} is not finite")
                raise DatasetError(f"{where}, column {i + 1} {header[i]!r}: {what}; allowed: finite decimal "
                                   f"numbers (NaN and infinity are not)") from None
            features[r - 1, j] = value
        cell = cells[label_at].strip()
        if not cell:
            raise DatasetError(f"{where}, column {label_at + 1} {label_column!r} (the label) is empty; every "
                               f"sample needs a label")
        labels.append(cell)
    # where each data row came from, for messages about classes
    lines = [line for line, _ in body]
    return features, labels, tuple(header[i] for i in feature_at), label_column, lines


# ----------------------------------------------------------------------------- npz and HDF5
def _read_npz(path: Path, data: bytes):
    if not data.startswith(b"PK"):  # an .npz is a zip archive; anything else is refused unread
        raise DatasetError(f"{path}: not a .npz file (no zip archive); allowed: numpy.savez with arrays x and y")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            keys = list(npz.keys())
            missing = [k for k in ("x", "y") if k not in keys]
            if missing:
                raise DatasetError(f"{path}: no array {missing[0]!r}; the file holds: {', '.join(keys) or 'nothing'}; "
                                   f"allowed: x (features [samples, features]) and y (labels [samples])")
            x, y = npz["x"], npz["y"]
            names = npz["feature_names"] if "feature_names" in keys else None
    except DatasetError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        # object arrays need pickle and are refused by allow_pickle=False: they land here too
        raise DatasetError(f"{path}: not a readable .npz of plain arrays ({exc}); allowed: numpy.savez with "
                           f"numeric x and numeric or text y") from None
    return _checked_arrays(path, x, y, names)


def _read_hdf5(path: Path, data: bytes):
    import h5py

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            missing = [k for k in ("x", "y") if not isinstance(f.get(k), h5py.Dataset)]
            if missing:
                raise DatasetError(f"{path}: no dataset {'/' + missing[0]!r}; the file's root holds: "
                                   f"{', '.join(f.keys()) or 'nothing'}; allowed: /x (features [samples, features]) "
                                   f"and /y (labels [samples])")
            x, y = f["x"][()], f["y"][()]
            names = f["feature_names"][()] if isinstance(f.get("feature_names"), h5py.Dataset) else None
    except DatasetError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise DatasetError(f"{path}: not a readable HDF5 file ({exc}); allowed: HDF5 with datasets /x and /y") from None
    return _checked_arrays(path, x, y, names)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _checked_arrays(path: Path, x, y, names):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2:
        raise DatasetError(f"{path}: x has shape {x.shape}; allowed: 2 dimensions [samples, features]")
    if x.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: x holds {x.dtype} values; allowed: numbers (bool, integer or float)")
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetError(f"{path}: y has shape {y.shape}; allowed: [{len(x)}] (one label per row of x)")
    features = x.astype(np.float64)
    bad = np.argwhere(~np.isfinite(features))
    if len(bad):
        r, c = (int(v) for v in bad[0])
        raise DatasetError(f"{path}: x row {r}, column {c}: {float(features[r, c])} is not finite; allowed: finite "
                           f"numbers (NaN and infinity are not)")
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if len(bad):
            raise DatasetError(f"{path}: y row {int(bad[0])}: {y[bad[0]].item()!r} is not a class; allowed: whole numbers "
                               f"or text")
        y = y.astype(np.int64)
    if y.dtype.kind in "biu":
        labels = [str(int(v)) for v in y]
    elif y.dtype.kind in "USO":
        labels = [_text(v).strip() for v in y]
        empty = [i for i, v in enumerate(labels) if not v]
        if empty:
            raise DatasetError(f"{path}: y row {empty[0]} is empty; every sample needs a label")
    else:
        raise DatasetError(f"{path}: y holds {y.dtype} values; allowed: whole numbers or text")
    if names is not None and len(names) == x.shape[1]:
        feature_names = tuple(_text(v) for v in np.asarray(names).ravel())
    else:
        feature_names = tuple(f"x{i}" for i in range(x.shape[1]))
    return features, labels, feature_names


# ----------------------------------------------------------------------------- classes
def classes_of(raw_labels) -> tuple[np.ndarray, tuple[str, ...]]:
    """(class indices int64 [n], class names): whole numbers by value, other labels by text."""
    texts = [str(v) for v in raw_labels]
    if texts and all(_WHOLE_NUMBER.fullmatch(t) for t in texts):
        values = [int(t) for t in texts]
        order = sorted(set(values))
        names = tuple(str(v) for v in order)
        index = {v: i for i, v in enumerate(order)}
        return np.array([index[v] for v in values], dtype=np.int64), names
    names = tuple(sorted(set(texts)))
    index = {t: i for i, t in enumerate(names)}
    return np.array([index[t] for t in texts], dtype=np.int64), names


def check_classes(path, labels: np.ndarray, class_names, label_column=None, lines=None) -> None:
    """Enough classes and samples for a stratified train/test split; DatasetError otherwise."""
    where = f"label column {label_column!r}" if label_column else "y"
    n, k = len(labels), len(class_names)
    if k < 2:
        raise DatasetError(f"{path}: {where} holds a single class ({class_names[0]!r}) in all {n} rows; a "
                           f"classifier needs 2 or more classes")
    if n < 2 * k:
        raise DatasetError(f"{path}: {n} samples for {k} classes; allowed: at least {2 * k} (classes x 2, one to "
                           f"train and one to test per class)")
    counts = np.bincount(labels, minlength=k)
    if counts.min() < 2:
        c = int(np.argmin(counts))
        row = int(np.flatnonzero(labels == c)[0])
        at = f"row {row + 1} (line {lines[row]})" if lines else f"row {row}"
        raise DatasetError(f"{path}: class {class_names[c]!r} has a single sample ({where}, {at}); allowed: 2 or "
                           f"more per class (one to train, one to test)")
