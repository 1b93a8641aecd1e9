"""Writing a run file: :class:`RunFile` creates it, appends rows in blocks under SWMR, checkpoints and keeps the status log.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
from pathlib import Path

import h5py
import numpy as np

from labpgt.runfile.format import (BLOCK_ROWS, CHUNK_CACHE_BYTES, FAULT_KINDS, FAULT_ROLES, KINDS, RunFileError, STATUSES,
                                   _CKPT_CHECKSUM, _CKPT_SCALARS, _EVAL_COLUMNS, _FAULT_COLUMNS,
                                   _MEAS_SCALARS, _RESUME_BUDGET, _RESUME_COLUMNS, _STATUS_COLUMNS, _STEP_COLUMNS)
from labpgt.runfile.checkpoints import digest
from labpgt.runfile.conventions import checked_trace_axis
from labpgt.runfile.columns import append, first_column, new_column, tables_of, truncate_group
from labpgt.runfile.creation import lay_out, partial_path, publish, remove_stale_partials
from labpgt.runfile.probe import Probe, _checked_probe
from labpgt.runfile.storage import Room, StorageExhausted, abandon, describe, exhausted, storage_errno
from labpgt.runfile.superblock import _superblock, clear_write_flags
from labpgt.runfile.reader import RunReader, _close_h5
from labpgt.runfile.format import pid_alive as _pid_alive

log = logging.getLogger(__name__)


# writer

def _out_of_room_stops_the_writer(method):
    """A write that finds the disk full or the file size limit reached stops the writer cleanly
    (labpgt/runfile/storage.py) and raises StorageExhausted; any other error passes unchanged."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StorageExhausted:  # refused before writing (Room.check): the rows in flight are dropped
            self._nbuf = 0
            raise
        except Exception as exc:
            code = storage_errno(exc)
            if code is None:
                raise
            self._out_of_room(code, exc)
            raise exhausted(self.path, code, "while writing it").with_traceback(None) from None
    return guarded


def _kind_code(kind) -> int:
    try:
        return KINDS.index(kind)
    except ValueError:
        raise ValueError(f"measurement kind {kind!r} is not one of {KINDS}") from None


class RunFile:
    """The run file writer; implements :class:`labpgt.contracts.Recorder`.

    Use :meth:`create` for a new run and :meth:`open_append` to resume one. Measurement rows
    are buffered in blocks of BLOCK_ROWS; :meth:`step`, :meth:`evaluation`, :meth:`checkpoint`,
    :meth:`set_status` and :meth:`close` write everything and flush, so a killed process loses
    at most the measurements of the step in progress.
    """

    def __init__(self, f: h5py.File, path: Path):
        # use create() or open_append()
        self._f = f
        self.path = path
        self._closed = False
        self.trace_points = int(f.attrs["trace_points"])
        self.features_per_measurement = int(f.attrs["features_per_measurement"])
        self.n_params = int(f.attrs["n_params"])
        m = f["measurements"]
        self._meas = {name: m[name] for name, *_ in _MEAS_SCALARS}
        self._meas["trace_dbm"] = m["trace_dbm"]
        self._meas["features"] = m["features"]
        self._committed_ds = f["committed"]
        self._committed = [int(x) for x in self._committed_ds[:]]
        self._tables = tables_of(f)
        self._n_rows = {t: int(f[t][first_column(t)].shape[0]) for t in self._tables}
        self._optimizer_names = list(f["checkpoints/optimizer"].keys())
        self._alloc_buffer()
        self._room = Room(f, path)  # how far the file may still grow (labpgt/runfile/storage.py)
        self._status = None
        if self._committed[4]:
            self._status = STATUSES[int(f["status/code"][self._committed[4] - 1])]

    # -- construction --------------------------------------------------------------------

    @classmethod
    def create(cls, path, *, n_params: int, param_names=None, features_per_measurement: int,
               trace_points: int, optimizer_state_shapes: dict | None = None, metadata: dict | None = None,
               features_units: str = "1", trace_compression: str | None = None,
               probe: Probe | None = None, overwrite: bool = False, dataset=None,
               trace_frequency_hz=None, feature_bands_hz=None) -> "RunFile":
        """Create a new run file with every dataset, then switch to SWMR writing.

        metadata: station_toml, experiment_toml (verbatim text), identities (role -> IDN),
        package_version, command_line, seed, plus anything JSON-able.
        trace_compression: None (default, fastest; noisy dBm traces barely compress) or "lzf".
        probe: where the drive's reference frequency came from (:class:`Probe`), kept as /probe;
        None: no /probe group (a run with no station probe).
        dataset: a :class:`labpgt.data.record.DatasetRecord`, kept as /dataset (None: no group).
        trace_frequency_hz: the analyzer's frequency axis [trace_points] when it is fixed for the
        run, kept as the traces' coordinate (labpgt/runfile/conventions.py); None: not known.
        feature_bands_hz: (first, last) trace frequency each feature covers, [features] each, kept
        as the features' coordinates; None: not known.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"run file {path} exists already; a run file is never overwritten: choose a new path")
        metadata = dict(metadata or {})
        try:
            metadata_json = json.dumps(metadata, sort_keys=True)
        except TypeError as e:
            raise ValueError(f"run metadata must be JSON-able: {e}") from None
        param_names = list(param_names) if param_names is not None else [f"p{i}" for i in range(n_params)]
        if len(param_names) != n_params:
            raise ValueError(f"{len(param_names)} param_names for n_params={n_params}")
        optimizer_state_shapes = {k: tuple(int(d) for d in v) for k, v in (optimizer_state_shapes or {}).items()}
        probe = _checked_probe(probe) if probe is not None else None
        if trace_frequency_hz is not None:
            trace_frequency_hz = checked_trace_axis(trace_frequency_hz, trace_points)
        if feature_bands_hz is not None:
            feature_bands_hz = tuple(checked_trace_axis(edge, features_per_measurement) for edge in feature_bands_hz)

        # built under a temporary name, published once complete (labpgt/runfile/creation.py)
        remove_stale_partials(path.parent)
        partial = partial_path(path)
        f = h5py.File(partial, "w", libver="latest", rdcc_nbytes=CHUNK_CACHE_BYTES)
        rf = None
        try:
            lay_out(f, n_params=n_params, param_names=param_names, features_per_measurement=features_per_measurement,
                    trace_points=trace_points, optimizer_state_shapes=optimizer_state_shapes, metadata=metadata,
                    metadata_json=metadata_json, features_units=features_units, trace_compression=trace_compression,
                    probe=probe, dataset=dataset, trace_frequency_hz=trace_frequency_hz,
                    feature_bands_hz=feature_bands_hz)
            f.swmr_mode = True  # from here on: no new objects, no attribute changes
            rf = cls(f, path)
            rf._failure_status = False  # a file that never got its name has no status to keep
            rf.set_status("running", "created")
            publish(partial, path, overwrite=overwrite)
            rf._failure_status = True
        except BaseException as exc:
            code = storage_errno(exc)
            if rf is not None and rf._f is None:
                pass  # already left after a failed write (RunFile._out_of_room)
            elif code is not None and not isinstance(exc, StorageExhausted):
                abandon(f, partial, error=exc, drop_handles=rf._drop_handles if rf is not None else None)
            else:
                _close_h5(f)
            partial.unlink(missing_ok=True)
            if code is not None:
                raise exhausted(path, code, "while creating it", resumable=False) from None
            raise
        return rf

    @classmethod
    def open_append(cls, path, *, message: str = "resumed", budget: int = -1,
                    checkpoint: int | None = None) -> "RunFile":
        """Reopen a run to continue it (``--resume``); ``budget``: the training budget in force
        from now on, kept in the resume's row (-1: not stated); ``checkpoint``: the checkpoint row
        the caller continues from (None: the last; -1: none, the run starts over), the rows recorded
        after it are abandoned.

        Status running, aborted or failed: appends (rows that were in flight when the previous
        writer died are dropped). Status completed: RunFileError, and the file is not touched.
        """
        path = Path(path)
        with RunReader(path) as r:
            status = r.status
            last = r.status_history()[-1] if r.status_history() else None
        if status == "completed":
            raise RunFileError(f"{path}: the run is complete (status 'completed'); nothing to resume. "
                               "Start a new run file to train further.")
        if last is not None and last["host"] == socket.gethostname() and last["pid"] != os.getpid() \
                and status == "running" and _pid_alive(last["pid"]):
            raise RunFileError(f"{path}: the run is still being written by process {last['pid']} on this "
                               "host; stop it before resuming")
        remove_stale_partials(path.parent)  # a creation killed after publishing left its temporary name
        rf = cls._reopen(path)
        # the caller continues from a checkpoint: rows recorded after it are abandoned
        # (kept, but skipped by replay and by RunReader.effective_rows)
        committed = rf._committed
        k = committed[3] - 1 if checkpoint is None else int(checkpoint)
        if not -1 <= k < committed[3]:
            rf.close()
            raise ValueError(f"checkpoint {k} out of range (-1 .. {committed[3] - 1})")
        ck = rf._f["checkpoints"]
        start = [int(ck[c][k]) if k >= 0 else 0 for c in ("measurement_rows", "step_rows", "evaluation_rows")]
        stop = committed[:3]
        try:
            rf._append_row("resumes", _RESUME_COLUMNS + (_RESUME_BUDGET,), {
                "time_s": time.time(), "checkpoint": k, "budget": int(budget),
                "measurements_start": start[0], "measurements_stop": stop[0], "steps_start": start[1],
                "steps_stop": stop[1], "evaluations_start": start[2], "evaluations_stop": stop[2]})
            rf.set_status("running", message)
        except StorageExhausted:  # still no room: the file stays as it was, closed
            rf.close()
            raise
        return rf

    @classmethod
    def _reopen(cls, path: Path) -> "RunFile":
        """The file as of its last commit, open for SWMR appending: a killed writer's mark cleared,
        its half-written rows dropped, the columns of newer versions added."""
        sb = _superblock(path)
        if sb is not None and sb["flags"]:
            clear_write_flags(path)  # the previous writer was killed; its mark would refuse r+
        f = h5py.File(path, "r+", libver="latest", rdcc_nbytes=CHUNK_CACHE_BYTES)
        try:
            committed = [int(x) for x in f["committed"][:]]
            for table, n in zip(tables_of(f), committed):
                truncate_group(f[table], n)  # discard half-written rows of the dead writer
            # columns of newer versions, added to an older file: its earlier rows read as not recorded
            for group, column, rows, fill in (("resumes", _RESUME_BUDGET, committed[5], -1),
                                              ("checkpoints", _CKPT_CHECKSUM, committed[3], 0)):
                if column[0] not in f[group]:
                    ds = new_column(f[group], *column, chunk_rows=16 if group == "resumes" else 64)
                    ds.resize((rows,))
                    ds[:] = fill
            f.swmr_mode = True
        except BaseException as exc:
            code = storage_errno(exc)
            if code is None:
                f.close()
                raise
            abandon(f, path, error=exc)
            raise exhausted(path, code, "reopening it") from None
        return cls(f, path)

    # -- Recorder ------------------------------------------------------------------------

    def _alloc_buffer(self):
        self._buf = {name: np.zeros(BLOCK_ROWS, dtype=dtype)
                     for name, dtype, *_ in _MEAS_SCALARS}
        self._buf["trace_dbm"] = np.zeros((BLOCK_ROWS, self.trace_points), np.float32)
        self._buf["features"] = np.zeros((BLOCK_ROWS, self.features_per_measurement), np.float64)
        self._nbuf = 0

    @_out_of_room_stops_the_writer
    def measurement(self, record: dict) -> None:
        """Buffer one measurement row; written in blocks, made durable at the next step()."""
        self._check_open()
        i = self._nbuf
        b = self._buf
        trace = record["trace_dbm"]
        feats = record["features"]
        if np.shape(trace) != (self.trace_points,):
            raise ValueError(f"trace_dbm has shape {np.shape(trace)}, this run file expects ({self.trace_points},)")
        if np.shape(feats) != (self.features_per_measurement,):
            raise ValueError(f"features have shape {np.shape(feats)}, this run file expects "
                             f"({self.features_per_measurement},)")
        settings = record.get("settings")
        if settings is None:  # tolerate flat keys (drive_frequency_hz, ...)
            settings = {"frequency_hz": record.get("frequency_hz", record.get("drive_frequency_hz")),
                        "power_dbm": record.get("power_dbm", record.get("drive_power_dbm")),
                        "current_a": record.get("current_a")}
        axis = record.get("frequency_axis")
        b["time_s"][i] = record.get("time_s", time.time())
        b["step"][i] = record["step"]
        b["kind"][i] = _kind_code(record["kind"])
        b["sample_index"][i] = record["sample_index"]
        b["node"][i] = record.get("node", 0)
        b["perturbation_direction"][i] = record.get("perturbation_direction", record.get("direction", -1))
        b["perturbation_sign"][i] = record.get("perturbation_sign", record.get("sign", 0))
        b["frequency_hz"][i] = settings["frequency_hz"]
        b["power_dbm"][i] = settings["power_dbm"]
        b["current_a"][i] = settings["current_a"]
        if axis is not None:
            if int(axis[2]) != self.trace_points:
                raise ValueError(f"frequency_axis has {axis[2]} points, traces have {self.trace_points}")
            b["trace_start_hz"][i], b["trace_stop_hz"][i] = axis[0], axis[1]
        else:
            b["trace_start_hz"][i] = b["trace_stop_hz"][i] = np.nan
        b["flags"][i] = record.get("flags", 0)
        b["trace_dbm"][i] = trace
        b["features"][i] = feats
        self._nbuf = i + 1
        if self._nbuf == BLOCK_ROWS:
            self._write_buffer()

    @_out_of_room_stops_the_writer
    def measurements_batch(self, batch: dict) -> None:
        """Append many measurements at once (the fast path): columns as arrays of length B.

        Keys as in measurement(); settings may be a dict of arrays or flat frequency_hz,
        power_dbm, current_a; scalars (step, kind, current_a, frequency_axis, ...) broadcast;
        per-row axes as trace_start_hz / trace_stop_hz arrays.
        """
        self._check_open()
        trace = np.asarray(batch["trace_dbm"], dtype=np.float32)
        if trace.ndim != 2 or trace.shape[1] != self.trace_points:
            raise ValueError(f"trace_dbm has shape {trace.shape}, this run file expects [B, {self.trace_points}]")
        n = trace.shape[0]
        feats = np.asarray(batch["features"], dtype=np.float64)
        if feats.shape != (n, self.features_per_measurement):
            raise ValueError(f"features have shape {feats.shape}, expected ({n}, {self.features_per_measurement})")
        settings = batch.get("settings") or batch
        axis = batch.get("frequency_axis")
        if axis is not None and int(axis[2]) != self.trace_points:
            raise ValueError(f"frequency_axis has {axis[2]} points, traces have {self.trace_points}")
        kind = batch["kind"]
        kind = np.full(n, _kind_code(kind), np.int8) if isinstance(kind, str) else \
            np.array([_kind_code(k) if isinstance(k, str) else int(k) for k in kind], np.int8)
        cols = {
            "time_s": batch.get("time_s", time.time()),
            "step": batch["step"],
            "kind": kind,
            "sample_index": batch["sample_index"],
            "node": batch.get("node", 0),
            "perturbation_direction": batch.get("perturbation_direction", -1),
            "perturbation_sign": batch.get("perturbation_sign", 0),
            "frequency_hz": settings["frequency_hz"],
            "power_dbm": settings["power_dbm"],
            "current_a": settings["current_a"],
            # per-row axes may come as trace_start_hz / trace_stop_hz arrays
            "trace_start_hz": batch.get("trace_start_hz", axis[0] if axis is not None else np.nan),
            "trace_stop_hz": batch.get("trace_stop_hz", axis[1] if axis is not None else np.nan),
            "flags": batch.get("flags", 0),
        }
        self._write_buffer()  # keep rows in order
        self._room.check("measurements", self._n_rows["measurements"], n)
        for name, dtype, *_ in _MEAS_SCALARS:
            v = np.broadcast_to(np.asarray(cols[name], dtype=dtype), (n,))
            append(self._meas[name], v, dtype)
        append(self._meas["trace_dbm"], trace, np.float32)
        append(self._meas["features"], feats, np.float64)
        self._n_rows["measurements"] += n

    def _write_buffer(self) -> None:
        k = self._nbuf
        if not k:
            return
        self._room.check("measurements", self._n_rows["measurements"], k)
        for name, ds in self._meas.items():
            append(ds, self._buf[name][:k])
        self._n_rows["measurements"] += k
        self._nbuf = 0

    @_out_of_room_stops_the_writer
    def step(self, record: dict) -> None:
        """One optimisation step; writes all buffered measurements and flushes."""
        self._check_open()
        self._append_row("steps", _STEP_COLUMNS, record)
        self.flush()

    @_out_of_room_stops_the_writer
    def evaluation(self, record: dict) -> None:
        self._check_open()
        self._append_row("evaluations", _EVAL_COLUMNS, record)
        self.flush()

    @_out_of_room_stops_the_writer
    def checkpoint(self, state: dict) -> None:
        """params float64 [n_params], optimizer {name: array}, rng_state and extra as JSON strings."""
        self._check_open()
        params = np.asarray(state["params"], dtype=np.float64)
        if params.shape != (self.n_params,):
            raise ValueError(f"checkpoint params have shape {params.shape}, this run file expects ({self.n_params},)")
        opt = dict(state.get("optimizer") or {})
        unknown = set(opt) - set(self._optimizer_names)
        missing = set(self._optimizer_names) - set(opt)
        if unknown or missing:
            raise ValueError(f"checkpoint optimizer state keys {sorted(opt)} do not match the declared "
                             f"{sorted(self._optimizer_names)}")
        g = self._f["checkpoints"]
        arrays = {}
        for name, value in opt.items():
            ds = g["optimizer"][name]
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != ds.shape[1:]:
                raise ValueError(f"optimizer state {name!r} has shape {arr.shape}, declared {ds.shape[1:]}")
            arrays[name] = arr
        self._write_buffer()
        text_bytes = len(state.get("rng_state") or "") + len(state.get("extra") or "")
        self._room.check("checkpoints", self._n_rows["checkpoints"], 1, text_bytes)
        # a checkpoint taken after a failed step names the rows at that step's start
        # (state["measurement_rows"]): a resume then abandons the failed step's partial rows
        for name in ("rng_state", "extra"):
            if not isinstance(state.get(name) or "", str):
                raise ValueError(f"{name} must be a str (JSON text), got {type(state[name]).__name__}")
        row = {"time_s": time.time(), "measurement_rows": self._n_rows["measurements"], **state,
               "step_rows": self._n_rows["steps"], "evaluation_rows": self._n_rows["evaluations"],
               "params": params, "optimizer": arrays, "rng_state": state.get("rng_state") or "",
               "extra": state.get("extra") or ""}
        columns = _CKPT_SCALARS
        if _CKPT_CHECKSUM[0] in g:  # labpgt/runfile/checkpoints.py
            row[_CKPT_CHECKSUM[0]] = digest(row)
            columns = _CKPT_SCALARS + (_CKPT_CHECKSUM,)
        for name, arr in arrays.items():
            append(g["optimizer"][name], arr[None])
        append(g["params"], params[None])
        self._append_text(g, "rng_state", row["rng_state"])
        self._append_text(g, "extra", row["extra"])
        self._append_row("checkpoints", columns, row)
        self.flush()

    @_out_of_room_stops_the_writer
    def fault(self, record: dict) -> bool:
        """One instrument fault (time_s, step, measurement_row, role, kind, recovered, attempt,
        message); made durable with the next flush. A file from before the faults table keeps
        none: returns False (the measurement rows still carry the repeated/fault flags)."""
        self._check_open()
        if "faults" not in self._tables:
            return False
        role = record["role"] if record["role"] in FAULT_ROLES else "station"
        kind = record["kind"] if record["kind"] in FAULT_KINDS else "other"
        g = self._f["faults"]
        self._room.check("faults", self._n_rows["faults"], 1, len(str(record.get("message", ""))))
        self._append_text(g, "message", str(record.get("message", "")))
        self._append_row("faults", _FAULT_COLUMNS, {
            "time_s": record.get("time_s", time.time()), "step": record["step"],
            "measurement_row": record["measurement_row"], "role": FAULT_ROLES.index(role),
            "kind": FAULT_KINDS.index(kind), "recovered": int(bool(record["recovered"])),
            "attempt": record.get("attempt", 1)})
        return True

    @_out_of_room_stops_the_writer
    def set_status(self, status: str, message: str = "") -> None:
        """Append to the status log and flush (running, completed, failed, aborted)."""
        self._check_open()
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        g = self._f["status"]
        # the reserve left by every other write is for this row
        self._room.check("status", self._n_rows["status"], 1, len(message) + 256, final=True)
        self._append_text(g, "message", message)
        self._append_text(g, "host", socket.gethostname())
        self._append_row("status", _STATUS_COLUMNS,
                         {"time_s": time.time(), "code": STATUSES.index(status), "pid": os.getpid()})
        self._status = status
        self.flush()

    @property
    def status(self) -> str | None:
        return self._status

    @property
    def n_measurements(self) -> int:
        return self._n_rows["measurements"] + self._nbuf

    @_out_of_room_stops_the_writer
    def flush(self) -> None:
        """Write buffered rows, flush, then advance /committed and flush again (data before the count)."""
        if self._closed:
            return
        self._write_buffer()
        self._f.flush()
        self._committed = [self._n_rows[t] for t in self._tables]
        # low-level write of the whole dataset (the high-level setitem costs ~0.3 ms per step)
        self._committed_ds.id.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(self._committed, dtype=np.int64))
        self._f.flush()
        self._room.pending = 0  # every chunk begun so far is allocated now

    @_out_of_room_stops_the_writer
    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            if self._f is not None:  # None: already left after a storage error
                _close_h5(self._f)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self._closed and self._status == "running" and exc_type is not None:
            # Ctrl-C, SIGTERM (the CLI raises a KeyboardInterrupt subclass) or SystemExit is an
            # abort, anything else a failure
            status = "failed" if issubclass(exc_type, Exception) else "aborted"
            try:
                self.set_status(status, f"{exc_type.__name__}: {exc}")
            except Exception as status_exc:  # the original exception goes on; say why the status is stale
                if exc is not None and hasattr(exc, "add_note"):
                    exc.add_note(f"the run file's status could not be set to {status!r}: {status_exc}")
        self.close()
        return False

    # -- helpers -------------------------------------------------------------------------

    def _drop_handles(self) -> None:
        """Forget every handle into the HDF5 file (before a close that cannot flush)."""
        self._meas = {}
        self._committed_ds = self._room = None
        self.__dict__.pop("_column_handles", None)

    def _out_of_room(self, code: int, exc: BaseException) -> None:
        """Stop writing a file that cannot grow: leave it as its last commit, then record the status
        "failed" if the file takes it (labpgt/runfile/storage.py)."""
        if self._closed:
            return
        log.info("%s: %s; the writer stops", self.path, describe(code))
        log.debug("%s: the write that failed: %s", self.path, exc)
        self._closed = True
        f, self._f = self._f, None
        abandon(f, self.path, error=exc, drop_handles=self._drop_handles)
        del f
        if not self.__dict__.get("_failure_status", True):
            return
        message = (f"{describe(code)}: free space (or raise the limit) and continue with: labpgt train --resume "
                   f"{self.path}")
        try:
            rf = RunFile._reopen(self.path)
            rf._failure_status = False  # no second attempt from inside this one
            rf.set_status("failed", message)
            rf.close()
        except Exception as status_exc:  # noqa: BLE001 - the file keeps its last commit; said, not raised
            log.warning("%s: the status 'failed' could not be recorded: %s", self.path, status_exc)
        else:
            self._status = "failed"


    def _check_open(self):
        if self._closed:
            raise RunFileError(f"{self.path}: run file is closed")

    def _append_row(self, table, columns, record):
        if table not in ("status", "checkpoints"):  # those check their text and arrays too, first
            self._room.check(table, self._n_rows[table], 1)
        missing = [name for name, *_ in columns if name not in record]
        if missing:
            raise ValueError(f"{table} record lacks {missing}; expected keys {[c[0] for c in columns]}")
        # the datasets are looked up once per table (a group lookup costs ~50 us; a step writes 7)
        handles = self.__dict__.setdefault("_column_handles", {}).setdefault(table, {})
        for name, dtype, *_ in columns:
            ds = handles.get(name)
            if ds is None:
                ds = handles[name] = self._f[table][name]
            append(ds, np.asarray([record[name]], dtype=dtype), dtype)
        self._n_rows[table] += 1

    @staticmethod
    def _append_text(g, name, text):
        if not isinstance(text, str):
            raise ValueError(f"{name} must be a str (JSON text), got {type(text).__name__}")
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        blob = g[f"{name}_utf8"]
        append(g[f"{name}_offset"], [blob.shape[0]])
        append(g[f"{name}_length"], [data.size])
        append(blob, data)

