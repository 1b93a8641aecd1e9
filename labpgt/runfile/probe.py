"""The start-up probe sweep kept as /probe: where the drive's reference frequency came from.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import h5py
import numpy as np

from labpgt.runfile.format import RunFileError


# the start-up probe (/probe)

PROBE_SOURCES = ("probe", "config", "map")
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
    map_file: str | None = None  # reference_source "map": the sweep file the operating point came from

    @classmethod
    def from_config(cls, reference_hz: float) -> "Probe":
        return cls("config", float(reference_hz))

    @property
    def swept(self) -> bool:
        return self.reference_source == "probe"

    def describe(self) -> str:
        """One line for ``labpgt inspect`` and the report's summary."""
        if self.reference_source == "map":
            return f"none: the line at {self.reference_hz / 1e9:.6f} GHz from the sweep map {self.map_file}"
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
        "_dbm, _db; see attribute_units), 'config' = reference_hz was given, no sweep, 'map' = the operating point of a sweep map (map_file)")
    g.attrs["reference_source"] = probe.reference_source
    g.attrs["reference_hz"] = float(probe.reference_hz)
    if probe.map_file is not None:
        g.attrs["map_file"] = str(probe.map_file)
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
    if source in ("config", "map"):
        map_file = a.get("map_file")
        return Probe(source, float(a["reference_hz"]),
                     map_file=(map_file.decode() if isinstance(map_file, bytes) else map_file))
    values = {name: (int(a[name]) if name in _PROBE_INT_ATTRS else float(a[name])) for name, *_ in _PROBE_ATTRS}
    freqs, trace = g["frequency_hz"][()], g["trace_dbm"][()]
    if freqs.ndim != 1 or trace.shape != freqs.shape or freqs.size != values["points"]:
        raise RunFileError(f"{path}: /probe is inconsistent: frequency_hz {freqs.shape}, trace_dbm {trace.shape}, "
                           f"points={values['points']}")
    return Probe(source, float(a["reference_hz"]), **values, frequency_hz=freqs, trace_dbm=trace)
