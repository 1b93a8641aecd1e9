"""HDF5 run files: one file per run, written while the run goes, readable while it grows (SWMR).

Layout (format_version 1)::

    /                       attrs: format="labpgt-run", format_version, created_utc, n_params,
                            features_per_measurement, trace_points (never change after creation)
    /meta/                  scalar UTF-8 string datasets written once, before SWMR:
                            station_toml, experiment_toml, identities_json, package_version,
                            command_line, seed_json, metadata_json (the whole metadata dict)
    /committed              int64 [6]: rows of measurements, steps, evaluations, checkpoints,
                            status, resumes that are complete on disk. Written after the data and a
                            flush, so rows below these counts are never half written.
    /measurements/          one row per measurement (sample x virtual node):
                            time_s, step, kind (enum train/probe/eval), sample_index, node,
                            perturbation_direction, perturbation_sign, frequency_hz, power_dbm,
                            current_a, trace_start_hz, trace_stop_hz, flags,
                            trace_dbm [N, trace_points] float32, features [N, F] float64
    /steps/                 step, loss, accuracy, grad_norm, measurements, time_s, current_a
    /evaluations/           step, measurements, test_loss, test_accuracy, time_s
    /checkpoints/           step, measurements, time_s, measurement_rows, step_rows,
                            evaluation_rows, params [N, n_params],
                            optimizer/<name> [N, *shape], rng_state_* and extra_* (text columns)
    /resumes/               one row per --resume: the checkpoint continued from and the row ranges
                            of measurements/steps/evaluations recorded after it (abandoned)
    /faults/                (optional: files written before it have no such group and read as
                            "no faults") one row per instrument fault met while measuring:
                            time_s, step, measurement_row (the /measurements row it touched: the
                            row the repeated measurement got, or would have got), role, kind,
                            recovered, attempt, message_*; /committed then has a 7th count
    /status/                the status log (the current status is the last committed row):
                            time_s, code (enum running/completed/failed/aborted), pid, message_*,
                            host_*
    /probe/                 (optional: files written before it, and runs that had no station
                            probe, e.g. the in-process transformer, have no such group and read
                            as "no probe") where the drive's reference frequency came from,
                            written once at creation, before SWMR. Attributes: reference_source
                            ("probe" or "config"), reference_hz; for "probe" also time_s,
                            current_a, center_hz, span_hz, rbw_hz (read back), points,
                            reference_level_dbm, line_hz, line_dbm (the found line and its
                            level), rf_output_enabled (0: RF off), overloaded, min_prominence_db;
                            datasets frequency_hz [points] float64 and trace_dbm [points] (the
                            analyzer's trace as read, float32). "config": reference_hz was given,
                            no sweep was made, no datasets. A ``--resume`` that re-runs the probe
                            to replay a simulated world records nothing: /probe stays the sweep
                            that set the run's reference (the replayed sweep is the same one).

Text that changes (status messages, RNG state JSON) cannot live in attributes (read-only under
SWMR) nor in variable-length strings (unsafe under SWMR), so a text column ``x`` is stored as
``x_utf8`` (uint8, all rows' bytes concatenated) plus per-row ``x_offset`` and ``x_length``.

Every dataset carries ``units`` ("s", "Hz", "dBm", "A", or "1" for counts and indices) and a
``description`` attribute.

A writer killed with SIGKILL leaves the superblock marked "open for writing": HDF5 then refuses
a plain ``h5py.File(path, "r")`` (``swmr=True`` still works) until the mark is cleared, which is
what h5clear does; :func:`clear_write_flags` does the same in pure Python.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

FORMAT = "labpgt-run"
FORMAT_VERSION = 1
KINDS = ("train", "probe", "eval")
STATUSES = ("running", "completed", "failed", "aborted")
FLAG_BITS = {1: "overload", 2: "unlocked", 4: "repeated", 8: "fault", 16: "simulated"}
BLOCK_ROWS = 64  # rows buffered before a block write (performance.md: ~6x cheaper than single rows)
TABLES = ("measurements", "steps", "evaluations", "checkpoints", "status", "resumes")
#: tables newer than format_version 1's first files: present or not, counted after TABLES in /committed
OPTIONAL_TABLES = ("faults",)
FAULT_ROLES = ("signal_generator", "current_source", "spectrum_analyzer", "station")
FAULT_KINDS = ("no_answer", "connection_lost", "bad_reply", "instrument_error", "overload", "unlocked", "other")

KIND_DTYPE = h5py.enum_dtype({k: i for i, k in enumerate(KINDS)}, basetype="i1")
STATUS_DTYPE = h5py.enum_dtype({k: i for i, k in enumerate(STATUSES)}, basetype="i1")
FAULT_ROLE_DTYPE = h5py.enum_dtype({k: i for i, k in enumerate(FAULT_ROLES)}, basetype="i1")
FAULT_KIND_DTYPE = h5py.enum_dtype({k: i for i, k in enumerate(FAULT_KINDS)}, basetype="i1")

# (name, dtype, units, description) of the per-measurement scalar columns
_MEAS_SCALARS = (
    ("time_s", "f8", "s", "unix time when the measurement was recorded"),
    ("step", "i8", "1", "optimisation step the measurement belongs to"),
    ("kind", KIND_DTYPE, "1", "train, probe or eval"),
    ("sample_index", "i8", "1", "index of the sample in its dataset split"),
    ("node", "i4", "1", "virtual node (time-multiplexed measurement within a sample)"),
    ("perturbation_direction", "i4", "1", "perturbation direction id within the step, -1 = none"),
    ("perturbation_sign", "i1", "1", "+1, -1, or 0 for a clean measurement"),
    ("frequency_hz", "f8", "Hz", "signal generator frequency"),
    ("power_dbm", "f8", "dBm", "signal generator power"),
    ("current_a", "f8", "A", "bias magnet current"),
    ("trace_start_hz", "f8", "Hz", "frequency of the trace's first point"),
    ("trace_stop_hz", "f8", "Hz", "frequency of the trace's last point"),
    ("flags", "u2", "1", "bitmask: " + ", ".join(f"{b} {n}" for b, n in FLAG_BITS.items())),
)
_STEP_COLUMNS = (
    ("step", "i8", "1", "optimisation step"),
    ("loss", "f8", "1", "training loss of the step's batch"),
    ("accuracy", "f8", "1", "training accuracy of the step's batch (fraction)"),
    ("grad_norm", "f8", "1", "norm of the gradient estimate"),
    ("measurements", "i8", "1", "measurements spent so far (cumulative)"),
    ("time_s", "f8", "s", "unix time at the end of the step"),
    ("current_a", "f8", "A", "bias magnet current after the step"),
)
_EVAL_COLUMNS = (
    ("step", "i8", "1", "optimisation step at which the evaluation ran"),
    ("measurements", "i8", "1", "measurements spent so far (cumulative)"),
    ("test_loss", "f8", "1", "loss on the test split"),
    ("test_accuracy", "f8", "1", "accuracy on the test split (fraction)"),
    ("time_s", "f8", "s", "unix time at the end of the evaluation"),
)
_CKPT_SCALARS = (
    ("step", "i8", "1", "steps completed when the checkpoint was taken"),
    ("measurements", "i8", "1", "measurements spent so far (cumulative)"),
    ("time_s", "f8", "s", "unix time of the checkpoint"),
    ("measurement_rows", "i8", "1", "rows in /measurements when the checkpoint was written"),
    ("step_rows", "i8", "1", "rows in /steps when the checkpoint was written"),
    ("evaluation_rows", "i8", "1", "rows in /evaluations when the checkpoint was written"),
)
_RESUME_COLUMNS = (
    ("time_s", "f8", "s", "unix time of the resume"),
    ("checkpoint", "i8", "1", "checkpoint row the run continued from, -1 = from the start"),
    ("measurements_start", "i8", "1", "first /measurements row abandoned (recorded after that checkpoint)"),
    ("measurements_stop", "i8", "1", "end of the abandoned /measurements rows"),
    ("steps_start", "i8", "1", "first /steps row abandoned"),
    ("steps_stop", "i8", "1", "end of the abandoned /steps rows"),
    ("evaluations_start", "i8", "1", "first /evaluations row abandoned"),
    ("evaluations_stop", "i8", "1", "end of the abandoned /evaluations rows"),
)
_STATUS_COLUMNS = (
    ("time_s", "f8", "s", "unix time of the status change"),
    ("code", STATUS_DTYPE, "1", "running, completed, failed or aborted"),
    ("pid", "i8", "1", "process id of the writer"),
)
_FAULT_COLUMNS = (
    ("time_s", "f8", "s", "unix time when the fault was met"),
    ("step", "i8", "1", "optimisation step of the measurement it touched"),
    ("measurement_row", "i8", "1", "/measurements row it touched (the repeat's row, or the row it would have had)"),
    ("role", FAULT_ROLE_DTYPE, "1", "instrument role: " + ", ".join(FAULT_ROLES)),
    ("kind", FAULT_KIND_DTYPE, "1", "what the fault looked like: " + ", ".join(FAULT_KINDS)),
    ("recovered", "u1", "1", "1 if the measurement was repeated successfully, 0 if not"),
    ("attempt", "i4", "1", "attempt of the measurement that met the fault (1 = the first)"),
)
_TEXT_COLUMNS = {"checkpoints": ("rng_state", "extra"), "status": ("message", "host"), "faults": ("message",)}


class RunFileError(ValueError):
    """A file that is not a readable labpgt run file; the message says what is wrong and what is expected."""


# --------------------------------------------------------------------------------------------
# the start-up probe (/probe)

PROBE_SOURCES = ("probe", "config")
#: /probe attributes of a probe sweep (reference_source "probe"): (name, units, description)
_PROBE_ATTRS = (
    ("time_s", "s", "unix time when the probe's trace was read"),
    ("current_a", "A", "bias current set point, ramped to before the sweep"),
    ("center_hz", "Hz", "analyzer centre frequency requested"),
    ("span_hz", "Hz", "analyzer span requested"),
    ("rbw_hz", "Hz", "resolution bandwidth, read back from the analyzer after the sweep"),
    ("points", "1", "trace points"),
    ("reference_level_dbm", "dBm", "analyzer reference level"),
    ("line_hz", "Hz", "frequency of the strongest line: the run's reference_hz"),
    ("line_dbm", "dBm", "level of that line in the trace"),
    ("rf_output_enabled", "1", "signal generator RF output during the sweep, as commanded (0 = off)"),
    ("overloaded", "1", "1 if the analyzer reported the sweep overloaded"),
    ("min_prominence_db", "dB", "a line counts if it stands this far above the trace median"),
)
_PROBE_INT_ATTRS = ("points", "rf_output_enabled", "overloaded")


@dataclass(frozen=True, eq=False)
class Probe:
    """Where a run's drive reference frequency came from: the start-up probe sweep (RF off, the
    magnet at the operating current, a wide analyzer sweep for the ring's free-running line), or
    the configuration (``reference_source == "config"``: no sweep, only ``reference_hz``)."""

    reference_source: str
    reference_hz: float
    time_s: float | None = None
    current_a: float | None = None
    center_hz: float | None = None
    span_hz: float | None = None
    rbw_hz: float | None = None
    points: int | None = None
    reference_level_dbm: float | None = None
    line_hz: float | None = None
    line_dbm: float | None = None
    rf_output_enabled: int | None = None
    overloaded: int | None = None
    min_prominence_db: float | None = None
    frequency_hz: np.ndarray | None = None  # Hz, float64 [points]
    trace_dbm: np.ndarray | None = None  # dBm, as read (float32 from the analyzers' REAL,32 blocks)

    @classmethod
    def from_config(cls, reference_hz: float) -> "Probe":
        return cls("config", float(reference_hz))

    @property
    def swept(self) -> bool:
        return self.reference_source == "probe"

    def describe(self) -> str:
        """One line for ``labpgt inspect`` and the report's summary."""
        if not self.swept:
            return f"none: reference_hz {self.reference_hz:.6f} Hz given in the experiment configuration"
        return (f"line {self.line_hz / 1e9:.6f} GHz at {self.line_dbm:.1f} dBm (the reference); {self.points} points, "
                f"{self.center_hz / 1e9:.4f} GHz ± {self.span_hz / 2e6:.0f} MHz, RBW {self.rbw_hz / 1e3:.0f} kHz, "
                f"{self.current_a} A, RF {'on' if self.rf_output_enabled else 'off'}"
                + (", OVERLOADED" if self.overloaded else "")
                + f", at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.time_s))}")


def _checked_probe(probe: Probe) -> Probe:
    """Validate a probe before anything is written; arrays normalised to what is stored."""
    if not isinstance(probe, Probe):
        raise ValueError(f"probe must be a labpgt.runfile.Probe, got {type(probe).__name__}")
    if probe.reference_source not in PROBE_SOURCES:
        raise ValueError(f"probe reference_source {probe.reference_source!r} is not one of {PROBE_SOURCES}")
    if not np.isfinite(probe.reference_hz):
        raise ValueError(f"probe reference_hz must be finite, got {probe.reference_hz!r}")
    if not probe.swept:
        return probe
    missing = [name for name in [n for n, *_ in _PROBE_ATTRS] + ["frequency_hz", "trace_dbm"]
               if getattr(probe, name) is None]
    if missing:
        raise ValueError(f"a probe sweep (reference_source 'probe') lacks {', '.join(missing)}")
    freqs = np.asarray(probe.frequency_hz, dtype=np.float64)
    trace = np.asarray(probe.trace_dbm)
    if trace.dtype not in (np.float32, np.float64):
        trace = trace.astype(np.float64)
    if freqs.ndim != 1 or trace.shape != freqs.shape or freqs.size != int(probe.points):
        raise ValueError(f"probe frequency_hz {freqs.shape} and trace_dbm {trace.shape} must both have "
                         f"points={probe.points} values")
    return Probe(**{**probe.__dict__, "frequency_hz": freqs, "trace_dbm": trace})


def _write_probe(f: h5py.File, probe: Probe) -> None:
    """/probe: attributes and two fixed-size datasets, created before SWMR starts (never changed)."""
    g = f.create_group("probe")
    g.attrs["description"] = (
        "where the drive's reference frequency came from: 'probe' = a sweep with RF off at the operating "
        "current found the ring's free-running line (attributes name their units by suffix: _s, _a, _hz, "
        "_dbm, _db; see attribute_units), 'config' = reference_hz was given, no sweep")
    g.attrs["reference_source"] = probe.reference_source
    g.attrs["reference_hz"] = float(probe.reference_hz)
    if not probe.swept:
        g.attrs["attribute_units"] = json.dumps({"reference_hz": "Hz"})
        return
    for name, *_ in _PROBE_ATTRS:
        value = getattr(probe, name)
        g.attrs[name] = int(value) if name in _PROBE_INT_ATTRS else float(value)
    g.attrs["attribute_units"] = json.dumps({"reference_hz": "Hz", **{n: u for n, u, _ in _PROBE_ATTRS}})
    g.attrs["attribute_descriptions"] = json.dumps({n: d for n, _, d in _PROBE_ATTRS})
    ds = g.create_dataset("frequency_hz", data=probe.frequency_hz)
    ds.attrs["units"] = "Hz"
    ds.attrs["description"] = "frequency axis of the probe's trace, as the analyzer reported it"
    ds = g.create_dataset("trace_dbm", data=probe.trace_dbm)
    ds.attrs["units"] = "dBm"
    ds.attrs["description"] = "the probe sweep's trace as read from the analyzer (RF off)"


def _read_probe(f: h5py.File, path) -> Probe | None:
    if "probe" not in f:
        return None
    g = f["probe"]
    a = g.attrs
    source = a["reference_source"]
    source = source.decode() if isinstance(source, bytes) else str(source)
    if source not in PROBE_SOURCES:
        raise RunFileError(f"{path}: /probe has reference_source {source!r}; expected one of {PROBE_SOURCES}")
    if source == "config":
        return Probe.from_config(float(a["reference_hz"]))
    values = {name: (int(a[name]) if name in _PROBE_INT_ATTRS else float(a[name])) for name, *_ in _PROBE_ATTRS}
    freqs, trace = g["frequency_hz"][()], g["trace_dbm"][()]
    if freqs.ndim != 1 or trace.shape != freqs.shape or freqs.size != values["points"]:
        raise RunFileError(f"{path}: /probe is inconsistent: frequency_hz {freqs.shape}, trace_dbm {trace.shape}, "
                           f"points={values['points']}")
    return Probe(source, float(a["reference_hz"]), **values, frequency_hz=freqs, trace_dbm=trace)


# --------------------------------------------------------------------------------------------
# superblock handling (h5clear equivalent), needed after a writer was killed

def _lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 hashlittle: the checksum HDF5 puts on version 2/3 superblocks."""
    m = 0xFFFFFFFF

    def rot(x, k):
        return ((x << k) | (x >> (32 - k))) & m

    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & m
    i = 0
    while n > 12:
        x, y, z = struct.unpack_from("<III", data, i)
        a, b, c = (a + x) & m, (b + y) & m, (c + z) & m
        a = (a - c) & m; a ^= rot(c, 4); c = (c + b) & m  # noqa: E702 (the published mix)
        b = (b - a) & m; b ^= rot(a, 6); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= rot(b, 8); b = (b + a) & m  # noqa: E702
        a = (a - c) & m; a ^= rot(c, 16); c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= rot(a, 19); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= rot(b, 4); b = (b + a) & m  # noqa: E702
        i += 12
        n -= 12
    if n == 0:
        return c
    x, y, z = struct.unpack("<III", data[i:] + b"\0" * (12 - n))
    a, b, c = (a + x) & m, (b + y) & m, (c + z) & m
    c ^= b; c = (c - rot(b, 14)) & m  # noqa: E702 (the published final)
    a ^= c; a = (a - rot(c, 11)) & m  # noqa: E702
    b ^= a; b = (b - rot(a, 25)) & m  # noqa: E702
    c ^= b; c = (c - rot(b, 16)) & m  # noqa: E702
    a ^= c; a = (a - rot(c, 4)) & m  # noqa: E702
    b ^= a; b = (b - rot(a, 14)) & m  # noqa: E702
    c ^= b; c = (c - rot(b, 24)) & m  # noqa: E702
    return c


_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _superblock(path) -> dict | None:
    """Version, write flags and stored end-of-file address of a v2/v3 superblock at offset 0, or None."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if len(head) < 12 or head[:8] != _SIGNATURE or head[8] not in (2, 3):
        return None
    o = head[9]
    n = 12 + 4 * o
    if o != 8 or len(head) < n + 4:
        return None
    base, ext, eof, root = struct.unpack_from("<4Q", head, 12)
    (stored,) = struct.unpack_from("<I", head, n)
    return {"version": head[8], "flags": head[11], "eof": eof, "checksum_ok": stored == _lookup3(head[:n])}


def clear_write_flags(path) -> bool:
    """Clear the superblock's "open for (SWMR) writing" flags, as ``h5clear -s`` does.

    Only for a file whose writer is gone (killed): a live writer's file must be left alone.
    Returns True if flags were set and have been cleared.
    """
    sb = _superblock(path)
    if sb is None or not sb["checksum_ok"] or sb["flags"] == 0:
        return False
    n = 12 + 4 * 8
    with open(path, "r+b") as fh:
        head = bytearray(fh.read(n + 4))
        head[11] = 0
        struct.pack_into("<I", head, n, _lookup3(bytes(head[:n])))
        fh.seek(0)
        fh.write(head)
    return True


# --------------------------------------------------------------------------------------------
# writer

def _new_column(group, name, dtype, units, description, width=(), chunk_rows=4096, compression=None):
    ds = group.create_dataset(
        name, shape=(0, *width), maxshape=(None, *width), dtype=dtype,
        chunks=(chunk_rows, *width), compression=compression,
    )
    ds.attrs["units"] = units
    ds.attrs["description"] = description
    return ds


def _new_text_column(group, name, description):
    _new_column(group, f"{name}_utf8", "u1", "1", f"{description}: UTF-8 bytes of all rows, concatenated")
    _new_column(group, f"{name}_offset", "i8", "1", f"{description}: start of each row in {name}_utf8")
    _new_column(group, f"{name}_length", "i8", "1", f"{description}: byte length of each row in {name}_utf8")


def _append(ds, values, dtype=None) -> None:
    """Grow ``ds`` along axis 0 by len(values) rows and write them.

    Low-level h5py calls: about 3x cheaper than ``ds.resize`` + ``ds[a:b] = v`` (~27 vs ~88 us a
    call, measured), which dominates the per-measurement cost with 15 columns. ``dtype``: the
    dataset's own dtype when the caller knows it (``ds.dtype`` costs ~15 us a call).
    """
    values = np.ascontiguousarray(values, dtype=ds.dtype if dtype is None else dtype)
    k = values.shape[0]
    if k == 0:
        return
    dsid = ds.id
    # one dataspace read, grown to the new extent along with the dataset, and the memory space
    # of this block's shape made once: each h5py object costs a registry entry (~10 us)
    fspace = dsid.get_space()
    shape = fspace.shape
    n = shape[0]
    grown = (n + k, *shape[1:])
    dsid.set_extent(grown)
    fspace.set_extent_simple(grown)
    fspace.select_hyperslab((n, *(0 for _ in shape[1:])), values.shape)
    memory_space = _MEMORY_SPACES.get(values.shape)
    if memory_space is None:
        if len(_MEMORY_SPACES) > 64:
            _MEMORY_SPACES.clear()
        memory_space = _MEMORY_SPACES[values.shape] = h5py.h5s.create_simple(values.shape)
    dsid.write(memory_space, fspace, values)


#: block shape -> its memory dataspace (reused: a simple dataspace with everything selected)
_MEMORY_SPACES: dict = {}


def _kind_code(kind) -> int:
    try:
        return KINDS.index(kind)
    except ValueError:
        raise ValueError(f"measurement kind {kind!r} is not one of {KINDS}") from None


def _text_scalar(group, name, text):
    group.create_dataset(name, data=text if text is not None else "", dtype=h5py.string_dtype("utf-8"))


class RunFile:
    """The run file writer; implements :class:`labpgt.interfaces.Recorder`.

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
        self._tables = _tables_of(f)
        self._n_rows = {t: int(f[t][_first_column(t)].shape[0]) for t in self._tables}
        self._optimizer_names = list(f["checkpoints/optimizer"].keys())
        self._alloc_buffer()
        self._status = None
        if self._committed[4]:
            self._status = STATUSES[int(f["status/code"][self._committed[4] - 1])]

    # -- construction --------------------------------------------------------------------

    @classmethod
    def create(cls, path, *, n_params: int, param_names=None, features_per_measurement: int,
               trace_points: int, optimizer_state_shapes: dict | None = None, metadata: dict | None = None,
               features_units: str = "1", trace_compression: str | None = None,
               probe: Probe | None = None, overwrite: bool = False) -> "RunFile":
        """Create a new run file with every dataset, then switch to SWMR writing.

        metadata: station_toml, experiment_toml (verbatim text), identities (role -> IDN),
        package_version, command_line, seed, plus anything JSON-able.
        trace_compression: None (default, fastest; noisy dBm traces barely compress) or "lzf".
        probe: where the drive's reference frequency came from (:class:`Probe`), kept as /probe;
        None: no /probe group (a run with no station probe).
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"run file {path} exists already; choose a new path or resume it with --resume")
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

        f = h5py.File(path, "w", libver="latest")
        try:
            a = f.attrs
            a["format"] = FORMAT
            a["format_version"] = FORMAT_VERSION
            a["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            a["n_params"] = int(n_params)
            a["features_per_measurement"] = int(features_per_measurement)
            a["trace_points"] = int(trace_points)

            meta = f.create_group("meta")
            _text_scalar(meta, "station_toml", metadata.get("station_toml", ""))
            _text_scalar(meta, "experiment_toml", metadata.get("experiment_toml", ""))
            _text_scalar(meta, "identities_json", json.dumps(metadata.get("identities", {}), sort_keys=True))
            _text_scalar(meta, "package_version", str(metadata.get("package_version", "")))
            _text_scalar(meta, "command_line", str(metadata.get("command_line", "")))
            _text_scalar(meta, "seed_json", json.dumps(metadata.get("seed")))
            _text_scalar(meta, "metadata_json", metadata_json)
            _text_scalar(meta, "param_names_json", json.dumps(param_names))

            tables = TABLES + OPTIONAL_TABLES
            c = f.create_dataset("committed", data=np.zeros(len(tables), dtype="i8"))
            c.attrs["units"] = "1"
            c.attrs["description"] = "complete rows of " + ", ".join(tables) + " (rows beyond are in flight)"

            m = f.create_group("measurements")
            for name, dtype, units, desc in _MEAS_SCALARS:
                _new_column(m, name, dtype, units, desc)
            # 64 rows per trace chunk: one block write = one chunk, a chunk ~100-260 KB
            _new_column(m, "trace_dbm", "f4", "dBm", "spectrum analyzer trace", (trace_points,),
                        chunk_rows=BLOCK_ROWS, compression=trace_compression)
            _new_column(m, "features", "f8", features_units, "readout features of the trace",
                        (features_per_measurement,), chunk_rows=512)

            s = f.create_group("steps")
            for col in _STEP_COLUMNS:
                _new_column(s, *col, chunk_rows=1024)
            e = f.create_group("evaluations")
            for col in _EVAL_COLUMNS:
                _new_column(e, *col, chunk_rows=256)
            ck = f.create_group("checkpoints")
            for col in _CKPT_SCALARS:
                _new_column(ck, *col, chunk_rows=64)
            _new_column(ck, "params", "f8", "1", "trainable parameters (float64, see /meta/param_names_json)",
                        (n_params,), chunk_rows=max(1, min(64, (1 << 20) // (8 * max(1, n_params)))))
            opt = ck.create_group("optimizer")
            for name, shape in optimizer_state_shapes.items():
                size = int(np.prod(shape)) if shape else 1
                _new_column(opt, name, "f8", "1", f"optimizer state {name!r}", shape,
                            chunk_rows=max(1, min(64, (1 << 20) // (8 * size))))
            _new_text_column(ck, "rng_state", "numpy bit_generator.state as JSON")
            _new_text_column(ck, "extra", "trainer extras as JSON")
            st = f.create_group("status")
            for col in _STATUS_COLUMNS:
                _new_column(st, *col, chunk_rows=64)
            _new_text_column(st, "message", "status message")
            _new_text_column(st, "host", "host name of the writer")
            rs = f.create_group("resumes")
            for col in _RESUME_COLUMNS:
                _new_column(rs, *col, chunk_rows=16)
            fa = f.create_group("faults")
            for col in _FAULT_COLUMNS:
                _new_column(fa, *col, chunk_rows=256)
            _new_text_column(fa, "message", "what the driver reported")
            if probe is not None:
                _write_probe(f, probe)

            f.swmr_mode = True  # from here on: no new objects, no attribute changes
        except BaseException:
            f.close()
            raise
        rf = cls(f, path)
        rf.set_status("running", "created")
        return rf

    @classmethod
    def open_append(cls, path, *, message: str = "resumed") -> "RunFile":
        """Reopen a run to continue it (``--resume``).

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
        sb = _superblock(path)
        if sb is not None and sb["flags"]:
            clear_write_flags(path)  # the previous writer was killed; its mark would refuse r+
        f = h5py.File(path, "r+", libver="latest")
        try:
            committed = [int(x) for x in f["committed"][:]]
            for table, n in zip(_tables_of(f), committed):
                _truncate_group(f[table], n)  # discard half-written rows of the dead writer
            f.swmr_mode = True
        except BaseException:
            f.close()
            raise
        rf = cls(f, path)
        # the caller continues from the last checkpoint: rows recorded after it are abandoned
        # (kept, but skipped by replay and by RunReader.effective_rows)
        k = committed[3]
        ck = f["checkpoints"]
        start = [int(ck[c][k - 1]) if k else 0 for c in ("measurement_rows", "step_rows", "evaluation_rows")]
        stop = committed[:3]
        rf._append_row("resumes", _RESUME_COLUMNS, {
            "time_s": time.time(), "checkpoint": k - 1,
            "measurements_start": start[0], "measurements_stop": stop[0], "steps_start": start[1],
            "steps_stop": stop[1], "evaluations_start": start[2], "evaluations_stop": stop[2]})
        rf.set_status("running", message)
        return rf

    # -- Recorder ------------------------------------------------------------------------

    def _alloc_buffer(self):
        self._buf = {name: np.zeros(BLOCK_ROWS, dtype=dtype)
                     for name, dtype, *_ in _MEAS_SCALARS}
        self._buf["trace_dbm"] = np.zeros((BLOCK_ROWS, self.trace_points), np.float32)
        self._buf["features"] = np.zeros((BLOCK_ROWS, self.features_per_measurement), np.float64)
        self._nbuf = 0

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
        for name, dtype, *_ in _MEAS_SCALARS:
            v = np.broadcast_to(np.asarray(cols[name], dtype=dtype), (n,))
            _append(self._meas[name], v, dtype)
        _append(self._meas["trace_dbm"], trace, np.float32)
        _append(self._meas["features"], feats, np.float64)
        self._n_rows["measurements"] += n

    def _write_buffer(self) -> None:
        k = self._nbuf
        if not k:
            return
        for name, ds in self._meas.items():
            _append(ds, self._buf[name][:k])
        self._n_rows["measurements"] += k
        self._nbuf = 0

    def step(self, record: dict) -> None:
        """One optimisation step; writes all buffered measurements and flushes."""
        self._check_open()
        self._append_row("steps", _STEP_COLUMNS, record)
        self.flush()

    def evaluation(self, record: dict) -> None:
        self._check_open()
        self._append_row("evaluations", _EVAL_COLUMNS, record)
        self.flush()

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
        for name, arr in arrays.items():
            _append(g["optimizer"][name], arr[None])
        _append(g["params"], params[None])
        self._append_text(g, "rng_state", state.get("rng_state") or "")
        self._append_text(g, "extra", state.get("extra") or "")
        # a checkpoint taken after a failed step names the rows at that step's start
        # (state["measurement_rows"]): a resume then abandons the failed step's partial rows
        self._append_row("checkpoints", _CKPT_SCALARS, {
            "time_s": time.time(), "measurement_rows": self._n_rows["measurements"], **state,
            "step_rows": self._n_rows["steps"], "evaluation_rows": self._n_rows["evaluations"]})
        self.flush()

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
        self._append_text(g, "message", str(record.get("message", "")))
        self._append_row("faults", _FAULT_COLUMNS, {
            "time_s": record.get("time_s", time.time()), "step": record["step"],
            "measurement_row": record["measurement_row"], "role": FAULT_ROLES.index(role),
            "kind": FAULT_KINDS.index(kind), "recovered": int(bool(record["recovered"])),
            "attempt": record.get("attempt", 1)})
        return True

    def set_status(self, status: str, message: str = "") -> None:
        """Append to the status log and flush (running, completed, failed, aborted)."""
        self._check_open()
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        g = self._f["status"]
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

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
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

    def _check_open(self):
        if self._closed:
            raise RunFileError(f"{self.path}: run file is closed")

    def _append_row(self, table, columns, record):
        missing = [name for name, *_ in columns if name not in record]
        if missing:
            raise ValueError(f"{table} record lacks {missing}; expected keys {[c[0] for c in columns]}")
        # the datasets are looked up once per table (a group lookup costs ~50 us; a step writes 7)
        handles = self.__dict__.setdefault("_column_handles", {}).setdefault(table, {})
        for name, dtype, *_ in columns:
            ds = handles.get(name)
            if ds is None:
                ds = handles[name] = self._f[table][name]
            _append(ds, np.asarray([record[name]], dtype=dtype), dtype)
        self._n_rows[table] += 1

    @staticmethod
    def _append_text(g, name, text):
        if not isinstance(text, str):
            raise ValueError(f"{name} must be a str (JSON text), got {type(text).__name__}")
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        blob = g[f"{name}_utf8"]
        _append(g[f"{name}_offset"], [blob.shape[0]])
        _append(g[f"{name}_length"], [data.size])
        _append(blob, data)


def _first_column(table):
    return {"measurements": "time_s", "steps": "step", "evaluations": "step",
            "checkpoints": "step", "status": "code", "resumes": "checkpoint", "faults": "time_s"}[table]


def _tables_of(f) -> tuple:
    """The tables this file has, in /committed order (optional ones only where present)."""
    return TABLES + tuple(t for t in OPTIONAL_TABLES if t in f)


def _truncate_group(g, n):
    for name, obj in g.items():
        if isinstance(obj, h5py.Group):
            _truncate_group(obj, n)
        elif name.endswith("_utf8"):
            continue  # bytes beyond the last committed offset are unreferenced, harmless
        elif obj.shape[0] > n:
            obj.resize(n, axis=0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------
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
    # SWMR read only when a writer has (or had) the file open: a SWMR reader retries checksum
    # failures ~100 times, which makes a corrupt file look like a hang
    swmr = sb is not None and sb["flags"] != 0
    try:
        return h5py.File(path, "r", swmr=swmr)
    except Exception as e:  # noqa: BLE001 - h5py raises OSError, RuntimeError, ... for damage
        if swmr and "not already open for SWMR writing" in str(e):
            # a writer was killed while it had the file open before switching to SWMR (creating
            # it, or reopening it for --resume): read a scratch copy without its mark, the file
            # itself is left for the writer that resumes it
            scratch = _scratch_copy_without_mark(path)
            try:
                f = h5py.File(scratch, "r")
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
    shutil.copyfile(path, tmp)
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
    """h5py reports a damaged object as KeyError/OSError/ValueError; say it as a RunFileError."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (KeyError, OSError, ValueError, RuntimeError) as exc:
            if isinstance(exc, RunFileError):
                raise
            raise RunFileError(f"{self.path}: {method.__name__.strip('_')} is unreadable ({exc}); the file is "
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
        try:
            ds = self._g[name]
            if name == "kind":
                return ds.astype("i1")[sl]
            return ds[sl]
        except (KeyError, OSError, ValueError, RuntimeError) as exc:  # h5py's words for a damaged object
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


class RunReader:
    """Read-only view of a run file; works while a writer is appending (call :meth:`refresh`)."""

    def __init__(self, path):
        self.path = Path(path)
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
        except (KeyError, OSError, ValueError) as e:
            _close_h5(self._f)
            raise RunFileError(f"{self.path}: a labpgt run file with missing or unreadable parts ({e}); "
                               "`labpgt inspect` shows what is readable") from None

    def refresh(self) -> None:
        """See what a live writer has committed since (SWMR)."""
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

    def steps(self) -> dict:
        return self._table("steps", _STEP_COLUMNS)

    def evaluations(self) -> dict:
        return self._table("evaluations", _EVAL_COLUMNS)

    @_damage_is_a_run_file_error
    def _text(self, table, name, i):
        g = self._f[table]
        off, length = int(g[f"{name}_offset"][i]), int(g[f"{name}_length"][i])
        return g[f"{name}_utf8"][off:off + length].tobytes().decode("utf-8")

    def resumes(self) -> dict:
        return self._table("resumes", _RESUME_COLUMNS)

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

    def effective_rows(self, table: str = "measurements") -> np.ndarray:
        """Row indices of ``table`` (measurements, steps, evaluations) on the run's path: rows
        recorded after the checkpoint a resume continued from, and before that resume, are
        left out (the resumed run did those steps again)."""
        n = self._committed[TABLES.index(table)]
        keep = np.ones(n, dtype=bool)
        r = self.resumes()
        for a, b in zip(r[f"{table}_start"], r[f"{table}_stop"]):
            keep[a:b] = False
        return np.flatnonzero(keep)

    @property
    def n_checkpoints(self) -> int:
        return self._committed[3]

    @_damage_is_a_run_file_error
    def checkpoint(self, i: int) -> dict:
        n = self.n_checkpoints
        if not -n <= i < n:
            raise IndexError(f"checkpoint {i} out of range ({n} checkpoints)")
        i %= n
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


# --------------------------------------------------------------------------------------------
# inspect

def inspect(path) -> str:
    """Human-readable account of what a run file holds; for a damaged file, what is readable and what is not."""
    path = Path(path)
    lines = [f"run file: {path}"]
    if not path.exists():
        return lines[0] + "\n  does not exist"
    size = path.stat().st_size
    lines.append(f"  size: {size} bytes")
    try:
        with RunReader(path) as r:
            _describe(r, lines)
        return "\n".join(lines)
    except RunFileError as e:
        lines.append(f"  PROBLEM: {e}")
    sb = _superblock(path)
    if sb is None:
        return "\n".join(lines)
    tmp = None
    target = path
    truncated = sb["checksum_ok"] and sb["eof"] > size
    if truncated or sb["flags"]:
        # work on a scratch copy: padded with zeros to the stored length so HDF5 opens it (what
        # lived in the missing tail then reads as unreadable, the rest is intact), and with the
        # writer's mark cleared so no SWMR read (which retries corrupt metadata for ages) is needed
        fd, tmp = tempfile.mkstemp(suffix=".h5")
        os.close(fd)
        shutil.copyfile(path, tmp)
        if truncated:
            os.truncate(tmp, sb["eof"])
            lines.append(f"  the last {sb['eof'] - size} bytes are missing; reading what remains:")
        clear_write_flags(tmp)
        target = Path(tmp)
    try:
        try:
            f = h5py.File(target, "r")
        except Exception as e:  # noqa: BLE001
            lines.append(f"  HDF5 cannot open it at all: {e}")
            return "\n".join(lines)
        with f:
            try:
                for k, v in f.attrs.items():
                    lines.append(f"  attr {k} = {v!r}")
            except Exception as e:  # noqa: BLE001
                lines.append(f"  root attributes UNREADABLE ({e})")
            _walk_damaged(f, lines)
    finally:
        if tmp:
            os.unlink(tmp)
    return "\n".join(lines)


def _walk_damaged(group, lines, indent="  "):
    try:
        names = list(group.keys())
    except Exception as e:  # noqa: BLE001 - any HDF5 error here means "unreadable"
        lines.append(f"{indent}{group.name}: UNREADABLE group ({e})")
        return
    for name in names:
        try:
            obj = group[name]
        except Exception as e:  # noqa: BLE001
            lines.append(f"{indent}{group.name.rstrip('/')}/{name}: UNREADABLE ({e})")
            continue
        if isinstance(obj, h5py.Group):
            lines.append(f"{indent}{obj.name}/")
            _walk_damaged(obj, lines, indent + "  ")
        else:
            try:
                obj[-1:] if obj.shape and obj.shape[0] else obj[()]
                ok = "readable"
            except Exception as e:  # noqa: BLE001
                ok = f"UNREADABLE data ({str(e)[:80]})"
            lines.append(f"{indent}{obj.name} {obj.shape} {obj.dtype} units={obj.attrs.get('units', '?')}: {ok}")


def _describe(r: RunReader, lines: list) -> None:
    md = r.metadata
    lines.append(f"  format: {FORMAT} version {r.format_version}, created {r.created_utc}")
    lines.append(f"  status: {r.status}" + (f" ({r.status_message})" if r.status_message else ""))
    lines.append(f"  package_version: {md.get('package_version')}   seed: {md.get('seed')}")
    lines.append(f"  command_line: {md.get('command_line')}")
    for role, idn in sorted(md.get("identities", {}).items()):
        lines.append(f"  instrument {role}: {idn}")
    lines.append(f"  station_toml: {len(md.get('station_toml', ''))} chars; "
                 f"experiment_toml: {len(md.get('experiment_toml', ''))} chars")
    steps, evals = r.steps(), r.evaluations()
    lines.append(f"  measurements: {r.n_measurements}   steps: {len(steps['step'])}   "
                 f"evaluations: {len(evals['step'])}   checkpoints: {r.n_checkpoints}")
    if r.n_faults:
        fl = r.faults()
        kinds = ", ".join(f"{k} {int(np.sum(fl['kind'] == k))}" for k in FAULT_KINDS if np.any(fl["kind"] == k))
        lines.append(f"  instrument faults: {r.n_faults} ({int(fl['recovered'].sum())} recovered; {kinds})")
    try:
        probe = r.probe()
        lines.append("  probe: " + (probe.describe() if probe is not None else "not recorded (no /probe group)"))
    except RunFileError as e:  # the rest of the file is shown; the damage still makes inspect exit 1
        lines.append("  probe: UNREADABLE")
        lines.append(f"  PROBLEM: {e}")
    if len(evals["step"]):
        lines.append(f"  last test accuracy: {evals['test_accuracy'][-1]:.4f} at step {evals['step'][-1]}")
    lines.append(f"  parameters: {r.n_params}; trace points: {r.trace_points}; "
                 f"features per measurement: {r.features_per_measurement}")
    lines.append("  datasets:")

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            units = obj.attrs.get("units", "")
            lines.append(f"    /{name} {obj.shape} {obj.dtype}" + (f" [{units}]" if units else ""))
    r._f.visititems(visit)
    for h in r.status_history():
        lines.append(f"  status log: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(h['time_s']))} "
                     f"{h['status']} pid {h['pid']}@{h['host']} {h['message']}")
