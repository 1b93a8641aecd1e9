"""A run file for analysis (:func:`open_run`): only the rows on the run's path, as arrays,
xarray Datasets or pandas DataFrames.

A run file keeps everything it was sent: rows recorded after the checkpoint a ``--resume``
continued from are kept but *abandoned* (the resumed run measured those steps again), and rows
beyond ``/committed`` are in flight (a writer still appending, or killed mid-step). Every view
here holds the *effective* rows only: committed, not abandoned (:meth:`RunReader.effective_rows`),
so a plot of a resumed run shows each step once. ``row`` (the ``measurement`` coordinate) keeps
each measurement's row in the file.

xarray and pandas are imported only by :meth:`Run.to_xarray` and :meth:`Run.to_dataframe`
(``pip install 'labpgt[notebook]'``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from labpgt.runfile.conventions import ROW_DIMENSIONS, column_attributes
from labpgt.runfile.format import KINDS, RunFileError, _CKPT_SCALARS, _EVAL_COLUMNS, _MEAS_SCALARS, _STEP_COLUMNS
from labpgt.runfile.reader import RunReader

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

#: the tables the views cover, with their columns (name, dtype, units, description)
VIEW_TABLES = {"measurements": _MEAS_SCALARS, "steps": _STEP_COLUMNS, "evaluations": _EVAL_COLUMNS,
               "checkpoints": _CKPT_SCALARS}


def open_run(path) -> "Run":
    """Open a run file for reading: one being written, left by a killed run, or finished."""
    return Run(path)


class Run:
    """A run file's effective rows and what it records about the run (read-only).

    ``measurements``, ``steps``, ``evaluations``, ``checkpoints``: dicts of column arrays.
    ``to_xarray(table)`` / ``to_dataframe(table)``: the same rows with units and names attached.
    Use as a context manager, or :meth:`close`; :meth:`refresh` sees what a live writer added.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._reader = RunReader(self.path)

    # -- what the run is ----------------------------------------------------------------

    @property
    def reader(self) -> RunReader:
        """The underlying :class:`RunReader` (every row, abandoned ones included)."""
        return self._reader

    @property
    def status(self) -> str:
        """running, completed, failed or aborted (the last committed status row)."""
        return self._reader.status

    @property
    def status_message(self) -> str:
        return self._reader.status_message

    @property
    def status_history(self) -> list[dict]:
        return self._reader.status_history()

    @property
    def metadata(self) -> dict:
        """Station, instrument identities, experiment TOML, command line, seed, versions, ..."""
        return dict(self._reader.metadata)

    @property
    def experiment(self) -> dict:
        """The experiment's options as recorded (``budget``: the one in force after any resume)."""
        options = tomllib.loads(self._reader.metadata["experiment_toml"])
        budget = self._reader.budget_in_force()
        if budget is not None:
            options["budget"] = budget
        return options

    @property
    def probe(self):
        """The start-up probe sweep (:class:`labpgt.runfile.Probe`), or None."""
        return self._reader.probe()

    @property
    def dataset(self):
        """The data set record (:class:`labpgt.data.record.DatasetRecord`), or None."""
        return self._reader.dataset()

    @property
    def resumes(self) -> dict:
        """One row per ``--resume``: the checkpoint continued from, the row ranges it abandoned, the budget."""
        return self._reader.resumes()

    def abandoned(self) -> dict[str, int]:
        """How many committed rows each table holds that a resume abandoned (left out of every view)."""
        return {table: self._reader.n_rows(table) - sum(b - a for a, b in self._reader.effective_ranges(table))
                for table in ("measurements", "steps", "evaluations")}

    # -- the effective rows ----------------------------------------------------------------

    def rows(self, table: str = "measurements") -> np.ndarray:
        """The file rows of ``table`` that the views hold (committed, not abandoned)."""
        if table == "checkpoints":
            return np.arange(self._reader.n_checkpoints)
        if table not in VIEW_TABLES:
            raise ValueError(f"no table {table!r}; tables: {', '.join(VIEW_TABLES)}")
        return self._reader.effective_rows(table)

    @property
    def measurements(self) -> dict:
        """Effective measurement rows: every column (``kind`` as strings), ``trace_dbm``
        [n, trace_points], ``features`` [n, features] and ``row`` (the row in the file)."""
        return self._measurements(traces=True)

    def _measurements(self, traces: bool) -> dict:
        rows = self.rows("measurements")
        m = self._reader.measurements
        # read the committed prefix once, then pick: the effective rows are a few long runs
        n = len(m)
        names = [name for name, *_ in _MEAS_SCALARS] + ["features"] + (["trace_dbm"] if traces else [])
        out = {name: m.column(name, slice(0, n))[rows] for name in names}
        out["kind"] = np.array(KINDS, dtype=object)[out["kind"]]
        out["row"] = rows
        return out

    @property
    def steps(self) -> dict:
        rows = self.rows("steps")
        return {k: v[rows] for k, v in self._reader.steps().items()}

    @property
    def evaluations(self) -> dict:
        rows = self.rows("evaluations")
        return {k: v[rows] for k, v in self._reader.evaluations().items()}

    @property
    def checkpoints(self) -> dict:
        """step, measurements, time_s, measurement_rows, ... and ``params`` [n, n_params] of every
        committed checkpoint; :meth:`checkpoint` gives one with its optimizer and RNG state."""
        f, n = self._reader._f, self._reader.n_checkpoints
        g = f["checkpoints"]
        out = {name: g[name][:n] for name, *_ in _CKPT_SCALARS}
        out["params"] = g["params"][:n]
        return out

    def checkpoint(self, i: int = -1) -> dict:
        return self._reader.checkpoint(i)

    @property
    def param_names(self) -> list[str]:
        return list(self._reader.param_names)

    @property
    def faults(self) -> dict:
        """Instrument faults met by the effective measurements (those of abandoned rows left out)."""
        faults = self._reader.faults()
        r = self.resumes
        keep = np.ones(len(faults["message"]), dtype=bool)
        for a, b in zip(r["measurements_start"], r["measurements_stop"]):
            keep &= ~((faults["measurement_row"] >= a) & (faults["measurement_row"] < b))
        out = {k: v[keep] for k, v in faults.items() if k != "message"}
        out["message"] = [m for m, k in zip(faults["message"], keep) if k]
        return out

    def trace_frequency_hz(self) -> np.ndarray | None:
        """The traces' frequency axis [trace_points] when every effective row shares it (the
        recorded coordinate, or the rows' common start/stop), else None (see trace_start_hz)."""
        m = self._reader._f["measurements"]
        if "trace_frequency_hz" in m:
            return m["trace_frequency_hz"][()]
        rows = self.rows("measurements")
        if not rows.size:
            return None
        n = len(self._reader.measurements)
        start = self._reader.measurements.column("trace_start_hz", slice(0, n))[rows]
        stop = self._reader.measurements.column("trace_stop_hz", slice(0, n))[rows]
        if not (np.all(np.isfinite(start)) and np.all(start == start[0]) and np.all(stop == stop[0])):
            return None
        return np.linspace(start[0], stop[0], self._reader.trace_points)

    # -- views ------------------------------------------------------------------------------

    def to_xarray(self, table: str = "measurements", *, traces: bool = True):
        """An ``xarray.Dataset`` of the effective rows of ``table`` (measurements, steps,
        evaluations, checkpoints, probe), with units, long names and flag meanings as attributes.

        measurements: dimension ``measurement`` (coordinate: the row in the file), ``trace_point``
        (coordinate ``trace_frequency_hz`` when fixed), ``feature``; ``kind`` as strings.
        steps: dimension ``step`` (coordinate: the step number). evaluations: ``evaluation``, with
        ``step`` as a coordinate. checkpoints: ``checkpoint``, ``param`` (``param_name``).
        probe: ``trace_dbm`` over ``frequency_hz`` (None if the run has no probe sweep).
        """
        import xarray as xr

        attrs = {"source": str(self.path), "status": self.status, "table": table,
                 "experiment_toml": self._reader.metadata["experiment_toml"],
                 "rows": "effective rows only: committed, not abandoned by a resume"}
        if table == "probe":
            probe = self.probe
            if probe is None or not probe.swept:
                return None
            return xr.Dataset(
                {"trace_dbm": ("frequency_hz", probe.trace_dbm, {"units": "dBm", "long_name": "probe trace (RF off)"})},
                coords={"frequency_hz": ("frequency_hz", probe.frequency_hz, {"units": "Hz",
                                                                              "long_name": "frequency"})},
                attrs={**attrs, "line_hz": probe.line_hz, "line_dbm": probe.line_dbm, "current_a": probe.current_a})
        if table == "measurements":
            return self._measurements_xarray(xr, attrs, traces)
        columns = self._columns(table)
        dim = ROW_DIMENSIONS[table]
        data, coords = {}, {}
        for name, values in columns.items():
            if name == "params":
                data[name] = ((dim, "param"), values, {"units": "1", "long_name": "trainable parameters"})
                continue
            entry = (dim, values, column_attributes(table, name))
            if name == "step" and table != "checkpoints":
                coords[name] = entry  # steps: the dimension's coordinate; evaluations: a coordinate
            else:
                data[name] = entry
        if table == "checkpoints":
            coords["param_name"] = ("param", np.array(self.param_names, dtype=object), {"long_name": "parameter"})
        return xr.Dataset(data, coords=coords, attrs=attrs)

    def _measurements_xarray(self, xr, attrs, traces):
        m = self._measurements(traces)
        data = {}
        for name, *_ in _MEAS_SCALARS:
            column_attrs = column_attributes("measurements", name)
            if name == "kind":  # decoded: the names, not the codes
                column_attrs = {k: v for k, v in column_attrs.items() if not k.startswith("flag_")}
            data[name] = ("measurement", m[name], column_attrs)
        data["features"] = (("measurement", "feature"), m["features"],
                            {"units": self._units("features"), "long_name": "readout features of the trace"})
        coords = {"measurement": ("measurement", m["row"], {"units": "1", "long_name": "row in the run file"})}
        g = self._reader._f["measurements"]
        for name in ("feature_low_hz", "feature_high_hz"):  # the band each feature covers, when recorded
            if name in g:
                coords[name] = ("feature", g[name][()], {"units": "Hz", "long_name": g[name].attrs["long_name"]})
        if traces:
            data["trace_dbm"] = (("measurement", "trace_point"), m["trace_dbm"],
                                 {"units": "dBm", "long_name": "spectrum analyzer trace"})
            freqs = self.trace_frequency_hz()
            if freqs is not None:
                coords["trace_frequency_hz"] = ("trace_point", freqs, {"units": "Hz", "long_name":
                                                                      "frequency of each trace point"})
        return xr.Dataset(data, coords=coords, attrs=attrs)

    def _columns(self, table: str) -> dict:
        if table == "steps":
            return self.steps
        if table == "evaluations":
            return self.evaluations
        if table == "checkpoints":
            return self.checkpoints
        raise ValueError(f"no table {table!r}; tables: {', '.join([*VIEW_TABLES, 'probe'])}")

    def _units(self, column: str) -> str:
        units = self._reader._f["measurements"][column].attrs.get("units", "1")
        return units.decode() if isinstance(units, bytes) else str(units)

    def to_dataframe(self, table: str = "measurements", *, traces: bool = False):
        """A ``pandas.DataFrame`` of the effective rows of ``table`` (measurements, steps,
        evaluations, checkpoints). Measurements: one row each, indexed by its row in the file,
        ``kind`` categorical, features as ``feature_0`` ...; with ``traces=True`` also the trace
        as ``trace_dbm_0`` ... (wide). Units are in ``DataFrame.attrs["units"]``."""
        import pandas as pd

        if table == "measurements":
            m = self._measurements(traces)
            frame = {name: m[name] for name, *_ in _MEAS_SCALARS}
            frame["kind"] = pd.Categorical(m["kind"], categories=list(KINDS))
            frame.update({f"feature_{j}": m["features"][:, j] for j in range(m["features"].shape[1])})
            if traces:
                frame.update({f"trace_dbm_{j}": m["trace_dbm"][:, j] for j in range(m["trace_dbm"].shape[1])})
            df = pd.DataFrame(frame, index=pd.Index(m["row"], name="row"))
        else:
            columns = self._columns(table)
            frame = {k: v for k, v in columns.items() if k != "params"}
            if "params" in columns:
                frame.update({f"param_{name}": columns["params"][:, j] for j, name in enumerate(self.param_names)})
            df = pd.DataFrame(frame)
        df.attrs["units"] = {name: units for name, _, units, _ in VIEW_TABLES[table]}
        df.attrs["source"] = str(self.path)
        return df

    # -- life cycle -------------------------------------------------------------------------

    def refresh(self) -> None:
        """See the rows a live writer committed since the file was opened."""
        self._reader.refresh()

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __repr__(self) -> str:
        counts = {t: len(self.rows(t)) for t in ("measurements", "steps", "evaluations")}
        return (f"<labpgt Run {self.path.name}: {self.status}, " + ", ".join(f"{n} {t}" for t, n in counts.items())
                + ">")


def metadata_json(run: Run) -> str:
    """The run's metadata as one JSON text (for formats whose attributes hold no dicts)."""
    try:
        return json.dumps(run.metadata, sort_keys=True, default=str)
    except (TypeError, ValueError) as exc:
        raise RunFileError(f"{run.path}: metadata is not JSON-able ({exc})") from None
