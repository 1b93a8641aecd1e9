"""What other tools read in a run file: HDF5 dimension scales, CF attributes, NeXus NXdata.

Applied once by :meth:`labpgt.runfile.RunFile.create`, after every object exists and before
SWMR starts (SWMR forbids new objects and attribute changes). Nothing here changes a column
or what format_version 1 readers read; it adds:

- dimension scales, so ``xarray.open_dataset(path, engine="h5netcdf", group=...)`` and other
  netCDF-4 readers see named dimensions instead of ``phony_dim_*``. Each table's rows are one
  unlimited dimension (``measurement``, ``step``, ``evaluation``, ``checkpoint``,
  ``status_change``, ``resume``, ``fault``); in ``/steps`` the ``step`` column itself is the
  coordinate. Inner axes: ``trace_point``, ``feature``, ``param``, ``<text>_byte`` (the bytes
  of a text column), ``table`` (``/committed``). A dimension that is not also a variable is the
  netCDF-4 kind: an empty dataset whose scale NAME says so.
- ``trace_frequency_hz`` [trace_point] in ``/measurements`` (when the run's analyzer window is
  known at creation: every station run), named in ``trace_dbm``'s ``coordinates`` (CF): the
  traces' frequency axis. Rows also keep their own ``trace_start_hz`` / ``trace_stop_hz``.
  Likewise ``feature_low_hz`` / ``feature_high_hz`` [feature]: the band each feature covers.
- CF ``long_name`` (from ``description``) on every dataset, ``flag_values`` /
  ``flag_meanings`` on the enumerations (measurement kind, status code, fault role and kind)
  and ``flag_masks`` / ``flag_values`` / ``flag_meanings`` on the ``flags`` bitmask.
- ``NX_class = "NXdata"`` with ``signal`` / ``axes`` on ``/probe`` (a swept probe): silx and
  NeXpy plot its trace against its frequency axis.

Fixed-length coordinates live inside the table groups (xarray opens one group's variables);
they are not row columns: their first axis is not unlimited, which is how the writer's resume
truncation tells them apart.
"""
from __future__ import annotations

import h5py
import numpy as np

from labpgt.runfile.format import (FAULT_KINDS, FAULT_ROLES, FLAG_BITS, KINDS, STATUSES, _CKPT_SCALARS, _EVAL_COLUMNS,
                                   _FAULT_COLUMNS, _MEAS_SCALARS, _RESUME_COLUMNS, _STATUS_COLUMNS, _STEP_COLUMNS)

#: the row dimension of each table group
ROW_DIMENSIONS = {"measurements": "measurement", "steps": "step", "evaluations": "evaluation",
                  "checkpoints": "checkpoint", "status": "status_change", "resumes": "resume", "faults": "fault"}
#: (group, column) -> its enumeration, in code order
_ENUMERATIONS = {("measurements", "kind"): KINDS, ("status", "code"): STATUSES,
                 ("faults", "role"): FAULT_ROLES, ("faults", "kind"): FAULT_KINDS}
_NOT_A_VARIABLE = b"This is a netCDF dimension but not a netCDF variable."
_COLUMNS = {"measurements": _MEAS_SCALARS, "steps": _STEP_COLUMNS, "evaluations": _EVAL_COLUMNS,
            "checkpoints": _CKPT_SCALARS, "status": _STATUS_COLUMNS, "resumes": _RESUME_COLUMNS,
            "faults": _FAULT_COLUMNS}


def column_attributes(table: str, column: str) -> dict:
    """CF attributes of a table's scalar column: units, long_name and, for enumerations and the
    flags bitmask, flag_values / flag_masks / flag_meanings (also for views of old files)."""
    for name, _, units, description in _COLUMNS[table]:
        if name == column:
            attrs = {"units": units, "long_name": description}
            break
    else:
        return {}
    names = _ENUMERATIONS.get((table, column))
    if names is not None:
        attrs["flag_values"] = np.arange(len(names), dtype=np.int8)
        attrs["flag_meanings"] = " ".join(names)
    if (table, column) == ("measurements", "flags"):
        bits = np.array(sorted(FLAG_BITS), dtype=np.uint16)
        # CF: a pure bit field; a meaning holds where (flags & mask) == value
        attrs.update(flag_masks=bits, flag_values=bits, flag_meanings=" ".join(FLAG_BITS[int(b)] for b in bits))
    return attrs


def annotate(f: h5py.File, *, tables, trace_frequency_hz=None, feature_bands_hz=None, param_names=None) -> None:
    """Add dimension scales and CF / NeXus attributes to a new run file (before SWMR).

    tables: the table groups in /committed order. trace_frequency_hz: the analyzer's frequency
    axis [trace_points] when it is fixed for the run (None: rows carry only their start/stop).
    feature_bands_hz: (first, last) trace frequency each feature covers, or None.
    param_names: names of the checkpointed parameters (a coordinate of ``param``).
    """
    _long_names(f)
    _flags(f)
    _committed_dimension(f, tables)
    for table in tables:
        g = f[table]
        row_dim = _row_dimension(g, ROW_DIMENSIONS[table])
        for name, ds in list(g.items()):
            if isinstance(ds, h5py.Dataset) and name != ROW_DIMENSIONS[table] and ds.maxshape[0] is None:
                _attach_row(g, name, ds, row_dim)
    _measurement_axes(f["measurements"], trace_frequency_hz, feature_bands_hz)
    _checkpoint_axes(f["checkpoints"], param_names)
    if "probe" in f and "frequency_hz" in f["probe"]:
        _probe_nxdata(f["probe"])
    if "dataset" in f:
        _dataset_axes(f["dataset"])


# -- attributes ---------------------------------------------------------------------------

def _long_names(f: h5py.File) -> None:
    def visit(_, obj):
        if isinstance(obj, h5py.Dataset) and "long_name" not in obj.attrs and "description" in obj.attrs:
            obj.attrs["long_name"] = obj.attrs["description"]
    f.visititems(visit)


def _flags(f: h5py.File) -> None:
    for table, column in [*_ENUMERATIONS, ("measurements", "flags")]:
        if table in f and column in f[table]:
            attrs = column_attributes(table, column)
            for key in ("flag_masks", "flag_values", "flag_meanings"):
                if key in attrs:
                    f[table][column].attrs[key] = attrs[key]


# -- dimensions ---------------------------------------------------------------------------

def _dimension(group: h5py.Group, name: str, size: int | None, description: str) -> h5py.Dataset:
    """A netCDF-4 dimension that is not a variable: ``size`` fixed, or None for unlimited
    (its length is then that of the variables attached to it)."""
    if size is None:
        ds = group.create_dataset(name, shape=(0,), maxshape=(None,), dtype="f4", chunks=(1024,))
        length = 0
    else:
        ds = group.create_dataset(name, shape=(size,), dtype="f4")
        length = size
    ds.make_scale(_NOT_A_VARIABLE + f"{length:10d}".encode("ascii"))
    ds.attrs["units"] = "1"
    ds.attrs["description"] = ds.attrs["long_name"] = description
    return ds


def _coordinate(group: h5py.Group, name: str, values, units: str, description: str, dimension) -> h5py.Dataset:
    """A fixed coordinate variable along ``dimension`` (written once, before SWMR)."""
    ds = group.create_dataset(name, data=values)
    ds.attrs["units"] = units
    ds.attrs["description"] = ds.attrs["long_name"] = description
    ds.dims[0].attach_scale(dimension)
    return ds


def _row_dimension(g: h5py.Group, name: str) -> h5py.Dataset:
    if name in g:  # /steps: the step column is the rows' coordinate
        ds = g[name]
        ds.make_scale(name)
        return ds
    return _dimension(g, name, None, f"rows of /{g.name.strip('/')} (see /committed for how many are complete)")


def _attach_row(g: h5py.Group, name: str, ds: h5py.Dataset, row_dim: h5py.Dataset) -> None:
    if name.endswith("_utf8"):  # all rows' bytes of a text column, concatenated
        text = name[: -len("_utf8")]
        ds.dims[0].attach_scale(_dimension(g, f"{text}_byte", None, f"bytes of the {text} text column"))
        return
    ds.dims[0].attach_scale(row_dim)


def _measurement_axes(m: h5py.Group, trace_frequency_hz, feature_bands_hz) -> None:
    trace, features = m["trace_dbm"], m["features"]
    point = _dimension(m, "trace_point", trace.shape[1], "point of the analyzer trace")
    trace.dims[1].attach_scale(point)
    feature = _dimension(m, "feature", features.shape[1], "readout feature (band) of a trace")
    features.dims[1].attach_scale(feature)
    if feature_bands_hz is not None:
        low, high = (checked_trace_axis(edge, features.shape[1]) for edge in feature_bands_hz)
        _coordinate(m, "feature_low_hz", low, "Hz", "frequency of the first trace point of each feature's band", feature)
        _coordinate(m, "feature_high_hz", high, "Hz", "frequency of the last trace point of each feature's band",
                    feature)
        features.attrs["coordinates"] = "feature_low_hz feature_high_hz"
    if trace_frequency_hz is not None:
        freqs = checked_trace_axis(trace_frequency_hz, trace.shape[1])
        _coordinate(m, "trace_frequency_hz", freqs, "Hz",
                    "frequency of each trace point (the run's analyzer window)", point)
        trace.attrs["coordinates"] = "trace_frequency_hz"


def checked_trace_axis(trace_frequency_hz, trace_points: int) -> np.ndarray:
    """The traces' frequency axis as stored (float64 [trace_points], finite), or ValueError."""
    freqs = np.asarray(trace_frequency_hz, dtype=np.float64)
    if freqs.shape != (trace_points,) or not np.all(np.isfinite(freqs)):
        raise ValueError(f"trace_frequency_hz must be {trace_points} finite frequencies (one per trace point), "
                         f"got shape {freqs.shape}")
    return freqs


def _checkpoint_axes(ck: h5py.Group, param_names) -> None:
    params = ck["params"]
    param = _dimension(ck, "param", params.shape[1], "trainable parameter (see param_name)")
    params.dims[1].attach_scale(param)
    if param_names is not None:
        _coordinate(ck, "param_name", list(param_names), "1", "name of each trainable parameter", param)
        params.attrs["coordinates"] = "param_name"
    row_dim = ck["checkpoint"]
    for name, ds in ck["optimizer"].items():
        ds.dims[0].attach_scale(row_dim)
        for axis, size in enumerate(ds.shape[1:], start=1):
            if ds.shape[1:] == (params.shape[1],):
                ds.dims[axis].attach_scale(param)  # per-parameter state (momentum, Adam's moments)
            else:
                # beside the optimizer states, not among them: every dataset in optimizer/ is a state
                ds.dims[axis].attach_scale(_dimension(ck, f"optimizer_{name}_axis{axis}", size,
                                                      f"axis {axis} of optimizer state {name!r}"))


def _committed_dimension(f: h5py.File, tables) -> None:
    table = f.create_dataset("table", data=list(tables), dtype=h5py.string_dtype("utf-8"))
    table.make_scale("table")
    table.attrs["units"] = "1"
    table.attrs["description"] = table.attrs["long_name"] = "the tables counted in /committed, in its order"
    f["committed"].dims[0].attach_scale(table)


def _probe_nxdata(probe: h5py.Group) -> None:
    freqs, trace = probe["frequency_hz"], probe["trace_dbm"]
    freqs.make_scale("frequency_hz")
    trace.dims[0].attach_scale(freqs)
    probe.attrs["NX_class"] = "NXdata"
    probe.attrs["signal"] = "trace_dbm"
    probe.attrs["axes"] = "frequency_hz"  # one axis: NeXus takes the name itself
    probe.attrs["frequency_hz_indices"] = np.int32(0)


def _dataset_axes(d: h5py.Group) -> None:
    """The recorded data set: samples, features, classes and the two splits as dimensions."""
    sizes = {}

    def dim(name, size, description):
        if name not in sizes:
            sizes[name] = _dimension(d, name, size, description)
        return sizes[name]

    for name, axes in (("train_index", ("train_sample",)), ("test_index", ("test_sample",)),
                       ("mean", ("data_feature",)), ("std", ("data_feature",)),
                       ("feature_names", ("data_feature",)), ("class_names", ("class",)),
                       ("features", ("sample", "data_feature")), ("labels", ("sample",))):
        if name not in d:
            continue
        ds = d[name]
        for axis, dim_name in enumerate(axes):
            ds.dims[axis].attach_scale(dim(dim_name, ds.shape[axis], dim_name.replace("_", " ")))
