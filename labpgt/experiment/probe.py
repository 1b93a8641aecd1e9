"""Where a run on a station starts: the ring's line (a probe sweep, RF off) and the physical layer around it.

:func:`probe_sweep` finds the free-running line; :func:`station_physical_layer` builds the
encoder (detuning and power around that line, current within the station's limits), the
readout (the station's analyzer window) and the trained current's bounds, as recorded in a run.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from labpgt.experiment.options import ConfigError

log = logging.getLogger(__name__)


def current_bounds(config: dict, station_limits_a: tuple[float, float]) -> tuple[float, float]:
    """Where the trained bias current may go (A): the window around current_a, inside the
    station's limits, with room for the estimators' perturbations (a few current scales)."""
    margin = 3 * 1e-3  # three current scales (model.current_scale_a = 1 mA)
    lo = max(station_limits_a[0], config["current_a"] - config["current_window_a"]) + margin
    hi = min(station_limits_a[1], config["current_a"] + config["current_window_a"]) - margin
    if (config["current_a"] - config["current_window_a"] < station_limits_a[0]
            or config["current_a"] + config["current_window_a"] > station_limits_a[1]):
        log.warning("the bias current is trained within [%.4f, %.4f] A: current_a ± current_window_a reaches past "
                    "the station's limits [%s, %s] A, less %.0f mA of room for the perturbations",
                    lo, hi, station_limits_a[0], station_limits_a[1], margin * 1e3)
    if lo > hi:
        raise ConfigError(
            f"current_a = {config['current_a']} A with current_window_a = {config['current_window_a']} A leaves no "
            f"room inside the station's current limits [{station_limits_a[0]}, {station_limits_a[1]}] A")
    return (lo, hi)


PROBE_SPAN_HZ = 200e6
PROBE_CENTER_HZ = 2.07e9
PROBE_POINTS = 1001
PROBE_MIN_PROMINENCE_DB = 15.0


def probe_sweep(station, current_a: float, span_hz: float = PROBE_SPAN_HZ, center_hz: float = PROBE_CENTER_HZ):
    """Probe sweep with RF off: the free-running line of the ring at ``current_a``.

    Returns a :class:`labpgt.runfile.probe.Probe` with the sweep (axis, trace as read) and its settings,
    for the run file's /probe. The analyzer is left on the station's measurement window, centred
    on the found line.
    """
    from labpgt.runfile import Probe
    from labpgt.reservoirs.spectra import strongest_peaks

    sa = station.spectrum_analyzer
    station.signal_generator.output_enabled = False
    station.current_source.ramp_to(current_a)
    # the station's measurement window, restored around the found line after the wide probe
    points, rbw, window_hz, ref_level = sa.points, sa.rbw_hz, sa.span_hz, sa.reference_level_dbm
    sa.configure(center_hz=center_hz, span_hz=span_hz, rbw_hz=max(rbw, span_hz / 2000), points=PROBE_POINTS,
                 reference_level_dbm=ref_level)
    freqs, trace = sa.measure()
    time_s = time.time()
    overloaded = bool(sa.overloaded)
    probe_rbw = float(sa.rbw_hz)  # as the analyzer has it (a real one may round the request)
    peaks = strongest_peaks(freqs, trace, count=1, min_prominence_db=PROBE_MIN_PROMINENCE_DB)
    if not peaks:
        raise RuntimeError(
            f"no free-running line found within {center_hz / 1e9:.3f} GHz ± {span_hz / 2e6:.0f} MHz at "
            f"{current_a} A: the ring is below threshold or elsewhere; set reference_hz explicitly")
    sa.configure(center_hz=peaks[0].frequency_hz, span_hz=window_hz, rbw_hz=rbw, points=points,
                 reference_level_dbm=ref_level)
    return Probe(
        reference_source="probe", reference_hz=peaks[0].frequency_hz, time_s=time_s, current_a=float(current_a),
        center_hz=float(center_hz), span_hz=float(span_hz), rbw_hz=probe_rbw, points=PROBE_POINTS,
        reference_level_dbm=float(ref_level), line_hz=peaks[0].frequency_hz, line_dbm=peaks[0].power_dbm,
        rf_output_enabled=0, overloaded=int(overloaded), min_prominence_db=PROBE_MIN_PROMINENCE_DB,
        frequency_hz=freqs, trace_dbm=trace)


def find_reference_hz(station, current_a: float, span_hz: float = PROBE_SPAN_HZ,
                      center_hz: float = PROBE_CENTER_HZ) -> tuple[float, np.ndarray, np.ndarray]:
    """:func:`probe_sweep` as (line frequency Hz, frequency axis, trace)."""
    probe = probe_sweep(station, current_a, span_hz=span_hz, center_hz=center_hz)
    return probe.reference_hz, probe.frequency_hz, probe.trace_dbm


def reference_probe(station, config: dict):
    """Where this run's reference frequency comes from: the configuration's ``reference_hz``
    (no sweep), or else a :func:`probe_sweep` at ``current_a``."""
    from labpgt.runfile import Probe

    if config["reference_hz"] is not None:
        return Probe.from_config(config["reference_hz"])
    return probe_sweep(station, config["current_a"])


def station_physical_layer(station, config: dict, probe=None) -> dict:
    """How knobs map onto this station and how its traces become features, as recorded in a run.

    Takes the reference frequency from ``probe`` (a :class:`labpgt.runfile.probe.Probe`; by default
    :func:`reference_probe`: a sweep for the ring's free-running line unless ``reference_hz`` is
    set), then builds the encoder (detuning and power around that line, current within the
    station's limits), the readout (the station's analyzer window, ``bands`` bands) and the
    trained current's bounds.
    """
    from labpgt.reservoirs.encoding import BandReadout, KnobEncoder

    if probe is None:
        probe = reference_probe(station, config)
    reference_hz = probe.reference_hz
    sa = station.spectrum_analyzer
    cmin, cmax = (float(v) for v in station.current_source.limits["current_a"])  # the loader requires it
    encoder = KnobEncoder(n_nodes=config["nodes"], reference_hz=reference_hz, current_min_a=cmin, current_max_a=cmax)
    readout = BandReadout(center_hz=reference_hz, span_hz=sa.span_hz, points=sa.points, rbw_hz=sa.rbw_hz,
                          n_bands=config["bands"])
    return {"encoder": encoder.to_dict(), "readout": readout.to_dict(),
            "current_bounds_a": current_bounds(config, (cmin, cmax))}
