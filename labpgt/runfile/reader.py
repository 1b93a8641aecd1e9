"""Reading a run file: :class:`RunReader`, safe on a file being written (SWMR), killed, or damaged.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np

from labpgt.runfile.format import CHUNK_CACHE_BYTES, FAULT_KINDS, FAULT_ROLES, FORMAT, FORMAT_VERSION, KINDS, RunFileError, STATUSES, TABLES, _EVAL_COLUMNS, _FAULT_COLUMNS, _MEAS_SCALARS, _RESUME_BUDGET, _RESUME_COLUMNS, _STEP_COLUMNS
from labpgt.runfile.opening import TRANSIENT, copy_file, is_lock_conflict, open_for_reading, read_attempts, retry_transient
from labpgt.runfile.probe import Probe, _read_probe
from labpgt.runfile.superblock import _SIGNATURE, _superblock, clear_write_flags

log = logging.getLogger(__name__)


# reader

def _open_h5(path) -> h5py.File:
    """Open for reading with clear errors; SWMR read so a live or killed writer's file opens too."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run file {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head != _SIGNATURE and not h5py.is_hdf5(path):
        raise RunFileError(f"{path} is not an HDF5 file (no HDF5 signature); expected a labpgt run file "
                           "(.h5) written by `labpgt train`")
    sb = _superblock(path)
    size = path.stat().st_size
    if sb is not None and sb["checksum_ok"] and sb["eof"] > size:
        raise RunFileError(f"{path} is truncated: HDF5 says the file ends at byte {sb['eof']}, it has {size} "
                           "bytes (an interrupted copy?); `labpgt inspect` shows what is still readable")
    # SWMR read only when a writer has (or had) the file open (its metadata read attempts bounded:
    # labpgt/runfile/opening.py), no file lock either way (a reader never blocks a --resume)
    swmr = sb is not None and sb["flags"] != 0
    try:
        return open_for_reading(path, swmr=swmr, rdcc_nbytes=CHUNK_CACHE_BYTES)
    except Exception as e:  # noqa: BLE001 - h5py raises OSError, RuntimeError, ... for damage
        if is_lock_conflict(e):
            raise RunFileError(f"{path} is locked by another program (a writer that has it open); "
                               "close it and retry") from None
        if swmr and "not already open for SWMR writing" in str(e):
            # a writer was killed while it had the file open before switching to SWMR (creating
            # it, or reopening it for --resume): read a scratch copy without its mark, the file
            # itself is left for the writer that resumes it
            scratch = _scratch_copy_without_mark(path)
            try:
                f = open_for_reading(scratch, swmr=False, rdcc_nbytes=CHUNK_CACHE_BYTES)
            except Exception:  # noqa: BLE001
                os.unlink(scratch)
            else:
                _SCRATCH[id(f)] = scratch
                return f
        raise RunFileError(f"{path} is a damaged HDF5 file that cannot be opened ({e}); "
                           "`labpgt inspect` shows what is still readable") from None


_SCRATCH: dict[int, str] = {}  # id(open h5py.File) -> scratch copy to delete on close


def _scratch_copy_without_mark(path) -> str:
    fd, tmp = tempfile.mkstemp(suffix=".h5")
    os.close(fd)
    copy_file(path, tmp)
    clear_write_flags(tmp)
    return tmp


def _close_h5(f: h5py.File) -> None:
    scratch = _SCRATCH.pop(id(f), None)
    f.close()
    if scratch:
        os.unlink(scratch)


def _check_ours(f: h5py.File, path) -> int:
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT:
        raise RunFileError(f"{path} is an HDF5 file but not a labpgt run file (root attribute format="
                           f"{fmt!r}, expected {FORMAT!r})")
    version = int(f.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise RunFileError(f"{path} has run file format_version {version}; this labpgt reads versions up to "
                           f"{FORMAT_VERSION}: upgrade labpgt to read it")
    if version < 1:
        raise RunFileError(f"{path} has an invalid format_version {version}; expected 1..{FORMAT_VERSION}")
    return version


def _read_text(ds) -> str:
    v = ds[()]
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _damage_is_a_run_file_error(method):
    """h5py reports a damaged object as KeyError/OSError/ValueError/...; say it as a RunFileError,
    after a few repeats if a writer may be live (a read racing its update fails transiently)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return self._read(lambda: method(self, *args, **kwargs))
        except TRANSIENT as exc:
            if isinstance(exc, RunFileError):
                raise
            what = " ".join([method.__name__.strip("_")] + [str(a) for a in args if isinstance(a, (str, int))])
            raise RunFileError(f"{self.path}: {what} is unreadable ({exc}); the file is "
                               f"damaged: `labpgt inspect` shows what is still readable") from None
    return wrapper


class Measurements:
    """Lazy view of the committed measurement rows: ``len()``, ``[slice]`` -> dict of arrays, ``column()``."""

    COLUMNS = tuple(name for name, *_ in _MEAS_SCALARS) + ("trace_dbm", "features")

    def __init__(self, reader: "RunReader"):
        self._r = reader
        self._g = reader._f["measurements"]

    def __len__(self):
        return self._r._committed[0]

    def column(self, name, index=slice(None)):
        if name not in self.COLUMNS:
            raise KeyError(f"no measurement column {name!r}; columns: {self.COLUMNS}")
        sl = _clip(index, len(self))

        def read():
            ds = self._g[name]
            return ds.astype("i1")[sl] if name == "kind" else ds[sl]
        try:
            return self._r._read(read)
        except TRANSIENT as exc:  # h5py's words for a damaged object
            raise RunFileError(f"{self._r.path}: measurement column {name!r} is unreadable ({exc}); the file "
                               f"is damaged: `labpgt inspect` shows what is still readable") from None

    def __getitem__(self, index):
        single = isinstance(index, (int, np.integer))
        if single:
            n = len(self)
            i = int(index) + (n if index < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"measurement {index} out of range ({n} rows)")
            index = slice(i, i + 1)
        out = {name: self.column(name, index) for name in self.COLUMNS}
        out["kind"] = np.array([KINDS[k] for k in out["kind"]], dtype=object)
        if single:
            return {k: v[0] for k, v in out.items()}
        return out

    def units(self):
        return {name: self._g[name].attrs["units"] for name in self.COLUMNS}


def _clip(index, n):
    if isinstance(index, slice):
        return slice(*index.indices(n))
    idx = np.asarray(index)
    if idx.size and (idx.max() >= n or idx.min() < -n):
        raise IndexError(f"index out of range ({n} committed rows)")
    return np.where(idx < 0, idx + n, idx)


def rows_of(ranges) -> np.ndarray:
    """The row indices [start, stop) of every range, in order (int64)."""
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges] or [np.zeros(0, dtype=np.int64)])


#: rows a streaming reader reads at a time: the scalar columns' chunk (format.py), ~1 MB of a
#: row's columns with its features, a few MB with its trace
WINDOW_ROWS = 4096


class EffectiveRows:
    """A table's effective rows (:meth:`RunReader.effective_ranges`) as positions 0 .. n-1, read
    a window at a time, so that a reader of a long run holds a window, never a column."""

    def __init__(self, ranges):
        self.ranges = [(int(a), int(b)) for a, b in ranges]
        # position of each range's first row among the effective rows
        self._first = np.cumsum([0] + [b - a for a, b in self.ranges])

    def __len__(self) -> int:
        return int(self._first[-1])

    def file_row(self, position: int) -> int:
        """The row in the file of effective row ``position``."""
        i = int(np.searchsorted(self._first, position, side="right")) - 1
        return self.ranges[i][0] + int(position - self._first[i])

    def pieces(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The file row ranges holding effective positions [lo, hi), in order."""
        out = []
        for (a, b), first in zip(self.ranges, self._first[:-1]):
            start, stop = max(lo - first, 0), min(hi - first, b - a)
            if start < stop:
                out.append((a + int(start), a + int(stop)))
        return out

    def read(self, measurements: "Measurements", columns, lo: int, hi: int) -> dict:
        """Columns of effective positions [lo, hi): one h5py read per column and range crossed."""
        parts = self.pieces(lo, hi)
        out = {}
        for name in columns:
            chunks = [measurements.column(name, slice(a, b)) for a, b in parts]
            out[name] = chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else \
                measurements.column(name, slice(0, 0))
        return out

    def windows(self, measurements: "Measurements", columns, window_rows: int = WINDOW_ROWS):
        """(first position, columns) of consecutive windows of at most ``window_rows`` rows."""
        for lo in range(0, len(self), window_rows):
            yield lo, self.read(measurements, columns, lo, min(lo + window_rows, len(self)))


class RunReader:
    """Read-only view of a run file; works while a writer is appending (call :meth:`refresh`)."""

    def __init__(self, path):
        self.path = Path(path)
        self._reading = False  # inside a read that is repeated as a whole if it fails
        read_attempts()  # a bad LABPGT_SWMR_READ_ATTEMPTS is said as such, not as damage
        sb = _superblock(self.path) if self.path.is_file() else None
        # a file marked open for writing may have a live writer: a failed read may be a race, repeated
        retry_transient(self._open, live=sb is not None and sb["flags"] != 0)

    def _open(self) -> None:
        self._f = _open_h5(self.path)
        try:
            self.format_version = _check_ours(self._f, self.path)
            self._committed = [int(x) for x in self._f["committed"][:]]
            m = self._f["meta"]
            extra = json.loads(_read_text(m["metadata_json"]))
            extra.update({
                "station_toml": _read_text(m["station_toml"]),
                "experiment_toml": _read_text(m["experiment_toml"]),
                "identities": json.loads(_read_text(m["identities_json"])),
                "package_version": _read_text(m["package_version"]),
                "command_line": _read_text(m["command_line"]),
                "seed": json.loads(_read_text(m["seed_json"])),
            })
            self.metadata = extra
            self.param_names = json.loads(_read_text(m["param_names_json"]))
            self.n_params = int(self._f.attrs["n_params"])
            self.trace_points = int(self._f.attrs["trace_points"])
            self.features_per_measurement = int(self._f.attrs["features_per_measurement"])
            self.created_utc = str(self._f.attrs["created_utc"])
            self.measurements = Measurements(self)
        except RunFileError:
            _close_h5(self._f)
            raise
        except (KeyError, OSError, ValueError, RuntimeError, TypeError) as e:
            _close_h5(self._f)
            raise RunFileError(f"{self.path}: a labpgt run file with missing or unreadable parts ({e}); "
                               "`labpgt inspect` shows what is readable") from None

    @_damage_is_a_run_file_error
    def refresh(self) -> None:
        """See what a live writer has committed since (SWMR)."""
        self._refresh()

    def _read(self, read):
        """``read()``, repeated (refreshed) a few times if it fails while a writer may be live; a
        read inside another is not repeated on its own."""
        if self._reading:
            return read()
        self._reading = True
        try:
            return retry_transient(read, live=self._f.swmr_mode, before_retry=self._refresh_quietly)
        finally:
            self._reading = False

    def _refresh_quietly(self) -> None:
        try:
            self._refresh()
        except TRANSIENT as exc:  # the repeated read says what is wrong, if anything is
            log.debug("%s: refresh failed: %s", self.path, exc)

    def _refresh(self) -> None:
        def visit(_, obj):
            if isinstance(obj, h5py.Dataset):
                obj.refresh()
        if self._f.swmr_mode:
            # the counts first, then the data: rows below the counts were flushed before them
            committed = self._f["committed"]
            committed.refresh()
            self._committed = [int(x) for x in committed[:]]
            self._f.visititems(visit)
        else:
            self._committed = [int(x) for x in self._f["committed"][:]]

    # -- tables ---------------------------------------------------------------------------

    @property
    def n_measurements(self) -> int:
        return self._committed[0]

    @_damage_is_a_run_file_error
    def _table(self, table, columns):
        n = self._committed[TABLES.index(table)]
        g = self._f[table]
        return {name: g[name][:n] for name, *_ in columns}

    def n_rows(self, table: str) -> int:
        """Committed rows of ``table`` (one of TABLES), abandoned ones included."""
        return self._committed[TABLES.index(table)]

    def steps(self) -> dict:
        return self._table("steps", _STEP_COLUMNS)

    @_damage_is_a_run_file_error
    def last_evaluation(self) -> dict | None:
        """The last committed evaluation row (column -> value), or None."""
        n = self.n_rows("evaluations")
        if not n:
            return None
        g = self._f["evaluations"]
        return {name: g[name][n - 1] for name, *_ in _EVAL_COLUMNS}

    def evaluations(self) -> dict:
        return self._table("evaluations", _EVAL_COLUMNS)

    @_damage_is_a_run_file_error
    def _text(self, table, name, i):
        g = self._f[table]
        off, length = int(g[f"{name}_offset"][i]), int(g[f"{name}_length"][i])
        return g[f"{name}_utf8"][off:off + length].tobytes().decode("utf-8")

    def resumes(self) -> dict:
        table = self._table("resumes", _RESUME_COLUMNS)
        n = len(table["checkpoint"])
        has_budget = _RESUME_BUDGET[0] in self._f["resumes"]
        table["budget"] = self._f["resumes"]["budget"][:n] if has_budget else np.full(n, -1, dtype=np.int64)
        return table

    def budget_in_force(self) -> int | None:
        """The training budget set by the last ``--resume`` that recorded one, or None (the experiment's)."""
        stated = [int(b) for b in self.resumes()["budget"] if b >= 0]
        return stated[-1] if stated else None

    @property
    def n_faults(self) -> int:
        """Committed fault rows (0 for a file from before the faults table)."""
        return self._committed[len(TABLES)] if "faults" in self._f and len(self._committed) > len(TABLES) else 0

    @_damage_is_a_run_file_error
    def faults(self) -> dict:
        """The faults table as columns (role and kind as strings, message as a list); empty
        columns for a file from before the faults table."""
        n = self.n_faults
        out = {name: np.zeros(0) for name, *_ in _FAULT_COLUMNS}
        out["message"] = []
        if not n:
            out["role"] = out["kind"] = np.array([], dtype=object)
            return out
        g = self._f["faults"]
        for name, *_ in _FAULT_COLUMNS:
            ds = g[name]
            out[name] = ds.astype("i1")[:n] if name in ("role", "kind") else ds[:n]
        out["role"] = np.array([FAULT_ROLES[i] for i in out["role"]], dtype=object)
        out["kind"] = np.array([FAULT_KINDS[i] for i in out["kind"]], dtype=object)
        out["recovered"] = out["recovered"].astype(bool)
        out["message"] = [self._text("faults", "message", i) for i in range(n)]
        return out

    def probe(self) -> Probe | None:
        """The start-up probe (/probe), or None for a file without one (written before probes were
        recorded, or by a run that had no station probe). A damaged /probe raises RunFileError;
        the rest of the file reads as before."""
        try:
            return _read_probe(self._f, self.path)
        except RunFileError:
            raise
        except (KeyError, OSError, ValueError, RuntimeError, TypeError) as exc:
            raise RunFileError(f"{self.path}: /probe is unreadable ({exc}); the file is damaged there, the rest "
                               f"of it is not affected") from None

    def dataset(self):
        """The run's :class:`labpgt.data.record.DatasetRecord` (/dataset), or None for a file
        without one (written before data sets were recorded: its experiment names a bundled one)."""
        if "dataset" not in self._f:
            return None
        from labpgt.data.record import DatasetRecord

        try:
            return DatasetRecord.read(self._f["dataset"])
        except (KeyError, OSError, ValueError) as exc:
            raise RunFileError(f"{self.path}: /dataset is unreadable ({exc}); the file is damaged there") from None

    def effective_ranges(self, table: str = "measurements") -> list[tuple[int, int]]:
        """The rows of ``table`` (measurements, steps, evaluations) on the run's path, as
        ascending ``(start, stop)`` ranges: the committed rows minus those a resume abandoned
        (recorded after the checkpoint it continued from, and before it). A few ranges, however
        long the run: the readers that stream a table read these."""
        n = self._committed[TABLES.index(table)]
        r = self.resumes()
        abandoned = sorted((int(a), int(b)) for a, b in zip(r[f"{table}_start"], r[f"{table}_stop"]) if b > a)
        ranges, start = [], 0
        for a, b in abandoned:
            if a > start:
                ranges.append((start, min(a, n)))
            start = max(start, b)
        if start < n:
            ranges.append((start, n))
        return [(a, b) for a, b in ranges if b > a]

    def effective_rows(self, table: str = "measurements") -> np.ndarray:
        """Row indices of ``table`` on the run's path (:meth:`effective_ranges`, one int64 per
        row: for the small tables; stream the measurements with :class:`EffectiveRows`)."""
        return rows_of(self.effective_ranges(table))

    @property
    def n_checkpoints(self) -> int:
        return self._committed[3]

    def checkpoint(self, i: int) -> dict:
        n = self.n_checkpoints
        if not -n <= i < n:
            raise IndexError(f"checkpoint {i} out of range ({n} checkpoints)")
        return self._checkpoint(i % n)

    @_damage_is_a_run_file_error
    def _checkpoint(self, i: int) -> dict:
        g = self._f["checkpoints"]
        return {
            "step": int(g["step"][i]), "measurements": int(g["measurements"][i]), "time_s": float(g["time_s"][i]),
            "measurement_rows": int(g["measurement_rows"][i]),
            "params": g["params"][i],
            "optimizer": {name: ds[i] for name, ds in g["optimizer"].items()},
            "rng_state": self._text("checkpoints", "rng_state", i),
            "extra": self._text("checkpoints", "extra", i),
        }

    def last_checkpoint(self) -> dict | None:
        return self.checkpoint(-1) if self.n_checkpoints else None

    @_damage_is_a_run_file_error
    def status_history(self) -> list[dict]:
        n = self._committed[4]
        g = self._f["status"]
        codes, times, pids = g["code"].astype("i1")[:n], g["time_s"][:n], g["pid"][:n]
        return [{"time_s": float(times[i]), "status": STATUSES[codes[i]], "pid": int(pids[i]),
                 "message": self._text("status", "message", i), "host": self._text("status", "host", i)}
                for i in range(n)]

    @property
    def status(self) -> str:
        return self._status()

    @_damage_is_a_run_file_error
    def _status(self) -> str:
        n = self._committed[4]
        return STATUSES[int(self._f["status/code"].astype("i1")[n - 1])] if n else "unknown"

    @property
    def status_message(self) -> str:
        n = self._committed[4]
        return self._text("status", "message", n - 1) if n else ""

    def units(self) -> dict:
        """dataset path -> units attribute."""
        out = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and "units" in obj.attrs:
                out[name] = obj.attrs["units"]
        self._f.visititems(visit)
        return out

    def close(self):
        _close_h5(self._f)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
