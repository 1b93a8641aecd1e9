"""The sweep file: one HDF5 map per sweep, in the conventions of the tools users already have.

Layout (root group): each axis of the plan and ``frequency_hz`` (the trace's axis) are HDF5
dimension scales named after their dimension; every variable is attached to them, carries CF
``units`` and ``long_name`` (flags: ``flag_values`` / ``flag_meanings``), and the root is an NXdata
group (``signal = trace_dbm``, ``axes``), so ``xarray.open_dataset(path, engine="h5netcdf")`` gives
named dimensions with the physical axes as coordinates. Datasets have their full size from the
start (NaN until measured); ``measured`` says which points are written, so ``--resume`` skips
them. Written under SWMR (everything created first): a reader sees committed points only, and a
killed sweep leaves a readable file. ``state`` says how the sweep ended.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from labpgt.sweep.analysis import TraceReading
from labpgt.sweep.plan import SweepPlan, plan_from_json

FORMAT = "labpgt-sweep"
FORMAT_VERSION = 1
STATES = ("running", "completed", "aborted", "failed")

#: per-point variables: name -> (dtype, units, long_name, flags or None)
_VARIABLES = {
    "line_hz": ("f8", "Hz", "frequency of the ring's strongest plausible line", None),
    "line_dbm": ("f8", "dBm", "level of that line", None),
    "line_prominence_db": ("f8", "dB", "the strongest candidate's height above its surroundings", None),
    "line_found": ("u1", "1", "a plausible line was found", ((0, 1), "no yes")),
    "locked": ("u1", "1", "the ring locked to the drive", ((0, 1, 2), "unlocked locked no_drive")),
    "spurs": ("i4", "1", "other lines above the floor (sidebands, the unlocked line, the tone)", None),
    "strongest_spur_dbc": ("f8", "dB", "the strongest other line relative to the line", None),
    "time_s": ("f8", "s", "unix time when the trace was read", None),
    "measured": ("u1", "1", "the point is written", ((0, 1), "pending measured")),
}


class SweepFileError(ValueError):
    """A file that is not a sweep map, or not the one expected."""


def _fill(dtype: str):
    return np.nan if dtype.startswith("f") else 0


class SweepFile:
    """A sweep map being written (create, or reopen to resume)."""

    def __init__(self, f: h5py.File, path: Path, plan: SweepPlan):
        self.f, self.path, self.plan = f, path, plan

    @classmethod
    def create(cls, path, plan: SweepPlan, *, station_toml: str, identities: dict, command_line: str,
               simulated: bool) -> "SweepFile":
        path = Path(path)
        if path.exists():
            raise SweepFileError(f"{path} exists; continue it with --resume {path} or choose another --out")
        path.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(path, "w", libver="latest")
        try:
            a = f.attrs
            a["format"], a["format_version"] = FORMAT, FORMAT_VERSION
            a["kind"], a["plan"] = plan.kind, plan.to_json()
            a["station_toml"], a["identities"] = station_toml, json.dumps(identities)
            a["command_line"], a["created_s"], a["simulated"] = command_line, time.time(), int(simulated)
            a["NX_class"], a["signal"] = "NXdata", "trace_dbm"
            dims = [ax.name for ax in plan.axes] + ["frequency_hz"]
            a["axes"] = np.array(dims, dtype=h5py.string_dtype())
            for k, name in enumerate(dims):
                a[f"{name}_indices"] = k
            a["title"] = f"labpgt sweep {plan.kind}"
            scales = []
            for ax in plan.axes:
                ds = f.create_dataset(ax.name, data=np.asarray(ax.values, dtype=np.float64))
                ds.attrs["units"], ds.attrs["long_name"] = ax.units, ax.long_name
                ds.make_scale(ax.name)
                scales.append(ds)
            freq = f.create_dataset("frequency_hz", data=plan.window.frequencies_hz())
            freq.attrs["units"], freq.attrs["long_name"] = "Hz", "analyzer frequency"
            freq.make_scale("frequency_hz")
            shape = plan.shape
            trace = f.create_dataset("trace_dbm", shape=shape + (plan.window.points,), dtype="f4",
                                     fillvalue=np.nan, chunks=(1,) * len(shape) + (plan.window.points,))
            trace.attrs["units"], trace.attrs["long_name"] = "dBm", "spectrum analyzer trace"
            for k, scale in enumerate(scales + [freq]):
                trace.dims[k].attach_scale(scale)
            for name, (dtype, units, long_name, flags) in _VARIABLES.items():
                ds = f.create_dataset(name, shape=shape, dtype=dtype, fillvalue=_fill(dtype))
                ds.attrs["units"], ds.attrs["long_name"] = units, long_name
                if flags is not None:
                    ds.attrs["flag_values"] = np.array(flags[0], dtype=dtype)
                    ds.attrs["flag_meanings"] = flags[1]
                for k, scale in enumerate(scales):
                    ds.dims[k].attach_scale(scale)
            if plan.kind == "lock":  # the drive's absolute frequency along the detuning axis
                drive = f.create_dataset("drive_frequency_hz", data=plan.parameters["line_hz"]
                                         + np.asarray(plan.axes[0].values))
                drive.attrs["units"], drive.attrs["long_name"] = "Hz", "drive frequency"
                drive.dims[0].attach_scale(scales[0])
                trace.attrs["coordinates"] = "drive_frequency_hz"
            state = f.create_dataset("state", data=np.uint8(0))
            state.attrs["flag_values"] = np.arange(len(STATES), dtype="u1")
            state.attrs["flag_meanings"] = " ".join(STATES)
            state.attrs["long_name"] = "how the sweep ended"
            f.swmr_mode = True
        except BaseException:
            f.close()
            path.unlink(missing_ok=True)
            raise
        return cls(f, path, plan)

    @classmethod
    def open_resume(cls, path) -> "SweepFile":
        path = Path(path)
        check_is_sweep_file(path)
        f = h5py.File(path, "r+", libver="latest")
        plan = plan_from_json(f.attrs["plan"])
        f.swmr_mode = True
        return cls(f, path, plan)

    def measured_mask(self) -> np.ndarray:
        return self.f["measured"][()].astype(bool)

    def write(self, index: tuple[int, ...], trace_dbm: np.ndarray, reading: TraceReading, time_s: float) -> None:
        self.f["trace_dbm"][index] = trace_dbm
        for name, value in asdict(reading).items():
            self.f[name][index] = value
        self.f["time_s"][index] = time_s
        self.f["measured"][index] = 1  # last: a point counts once everything of it is written
        self.f.flush()

    def set_state(self, state: str) -> None:
        self.f["state"][()] = STATES.index(state)
        self.f.flush()

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "SweepFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_is_sweep_file(path) -> None:
    """A one-line SweepFileError unless ``path`` is a sweep map this version reads."""
    path = Path(path)
    if not path.is_file():
        raise SweepFileError(f"{path}: no such file; expected a sweep map written by labpgt sweep")
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
            version = f.attrs.get("format_version")
    except OSError:
        raise SweepFileError(f"{path}: not an HDF5 file; expected a sweep map written by labpgt sweep") from None
    if fmt != FORMAT:
        raise SweepFileError(f"{path}: not a sweep map (format {fmt!r}); expected one written by labpgt sweep "
                             f"(format {FORMAT!r})")
    if version != FORMAT_VERSION:
        raise SweepFileError(f"{path}: sweep map format version {version}; this labpgt reads {FORMAT_VERSION}")


@dataclass(frozen=True)
class OperatingPoint:
    current_a: float
    line_hz: float
    line_dbm: float
    kind: str


def read_operating_point(path, current_a: float | None = None) -> OperatingPoint:
    """Where to train, from a sweep map: a ``current`` map's measured point nearest ``current_a``
    (within half a step of the range; its line must be plausible); a map at one current (lock,
    drift, spectrum): that current and its line (the lock map's line found at its start, the
    median line of a drift). One-line SweepFileError otherwise."""
    check_is_sweep_file(path)
    with h5py.File(path, "r", swmr=True) as f:
        plan = plan_from_json(f.attrs["plan"])
        measured = f["measured"][()].astype(bool)
        found = f["line_found"][()].astype(bool) & measured
        line_hz, line_dbm = f["line_hz"][()], f["line_dbm"][()]
    if plan.kind == "current":
        currents = np.asarray(plan.axes[0].values)
        if not found.any():
            raise SweepFileError(f"{path}: no plausible line was measured in this current map")
        want = float(currents[found][np.argmax(line_dbm[found])]) if current_a is None else float(current_a)
        step = float(np.min(np.diff(currents))) if currents.size > 1 else 0.0
        lo, hi = currents.min() - abs(step) / 2, currents.max() + abs(step) / 2
        if not lo <= want <= hi:
            raise SweepFileError(f"{path}: current {want:g} A is outside the map's range [{currents.min():g}, "
                                 f"{currents.max():g}] A; choose a current inside it (--current-a)")
        i = int(np.argmin(np.abs(currents - want)))
        if not found[i]:
            raise SweepFileError(f"{path}: no plausible line was measured at {currents[i]:g} A (the map point nearest "
                                 f"{want:g} A); choose a current with a line (--current-a)")
        return OperatingPoint(float(currents[i]), float(line_hz[i]), float(line_dbm[i]), plan.kind)
    current = float(plan.parameters["current_a"])
    if plan.kind == "lock":
        return OperatingPoint(current, float(plan.parameters["line_hz"]), float("nan"), plan.kind)
    if not found.any():
        raise SweepFileError(f"{path}: no plausible line was measured in this {plan.kind} map")
    if plan.kind == "spectrum" and plan.parameters.get("drive_frequency_hz") is not None:
        raise SweepFileError(f"{path}: this spectrum was taken with RF on (the line may be the drive's); "
                             f"use a map taken with RF off")
    return OperatingPoint(current, float(np.median(line_hz[found])), float(np.median(line_dbm[found])), plan.kind)
