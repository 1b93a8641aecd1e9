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
#: the nominal ring's tuning, where the default probe window is centred: the line at 2.07 GHz at
#: 1.8 A (the lab code's operating point) moving about 0.6 GHz per ampere (docs: ring-physics.md);
#: a ring elsewhere is found with --probe-center-hz / --probe-span-hz or a map (--reference-from)
NOMINAL_CURRENT_A = 1.8
NOMINAL_TUNING_HZ_PER_A = 0.6e9


def probe_window(station_analyzer_limits_hz: tuple[float, float] | None, current_a: float,
                 center_hz: float | None = None, span_hz: float | None = None) -> tuple[float, float]:
    """The probe's (centre, span) in Hz: given, or derived from the current through the nominal
    tuning (2.07 GHz ± 100 MHz at 1.8 A), shifted to lie inside the analyzer's frequency limits.
    A window given that the analyzer cannot sweep is refused (never narrowed)."""
    span = PROBE_SPAN_HZ if span_hz is None else float(span_hz)
    lo, hi = station_analyzer_limits_hz if station_analyzer_limits_hz is not None else (-np.inf, np.inf)
    if not (np.isfinite(span) and 0 < span <= hi - lo):
        raise ConfigError(f"probe_span_hz = {span:g} Hz is not allowed; allowed: (0, {hi - lo:g}] Hz "
                          f"(the analyzer's frequency limits [{lo:g}, {hi:g}] Hz)")
    if center_hz is None:
        center = PROBE_CENTER_HZ + NOMINAL_TUNING_HZ_PER_A * (float(current_a) - NOMINAL_CURRENT_A)
        center = min(max(center, lo + span / 2), hi - span / 2)  # a derived default, moved inside
    else:
        center = float(center_hz)
        if not (lo <= center - span / 2 and center + span / 2 <= hi):
            raise ConfigError(f"probe window {center:g} Hz ± {span / 2:g} Hz reaches outside the analyzer's "
                              f"frequency limits [{lo:g}, {hi:g}] Hz")
    return center, span


class NoPlausibleLine(RuntimeError):
    """A probe sweep found no line that passes the plausibility test (the message names the best candidate)."""


def reachable_window(station) -> tuple[float, float] | None:
    """(centre, span) Hz of the band the drive can reach and the analyzer can see: the signal
    generator's frequency limits inside the analyzer's (None if they do not overlap)."""
    lo_sa, hi_sa = station.spectrum_analyzer.limits.get("frequency_hz", (-np.inf, np.inf))
    lo_sg, hi_sg = station.signal_generator.limits.get("frequency_hz", (lo_sa, hi_sa))
    lo, hi = max(lo_sa, lo_sg), min(hi_sa, hi_sg)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        return None
    return 0.5 * (lo + hi), hi - lo


def probe_sweep(station, current_a: float, span_hz: float = PROBE_SPAN_HZ, center_hz: float = PROBE_CENTER_HZ):
    """Probe sweep with RF off: the free-running line of the ring at ``current_a``.

    Returns a :class:`labpgt.runfile.probe.Probe` with the sweep (axis, trace as read) and its settings,
    for the run file's /probe. The analyzer is left on the station's measurement window, centred
    on the found line. The line must be plausible (labpgt.reservoirs.spectra.find_line: above the
    noise floor, prominent against its surroundings, not at the window's edge), or this refuses
    (RuntimeError naming the window and the best candidate) before anything is trained.
    """
    from labpgt.runfile import Probe
    from labpgt.reservoirs.spectra import find_line

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
    verdict = find_line(freqs, trace)
    if not verdict.plausible:
        # the station's measurement window back (a wider probe may follow and reads it)
        sa.configure(center_hz=center_hz, span_hz=window_hz, rbw_hz=rbw, points=points,
                     reference_level_dbm=ref_level)
        raise NoPlausibleLine(
            f"no free-running line within {center_hz / 1e9:.4f} GHz ± {span_hz / 2e6:.0f} MHz at {current_a} A "
            f"(RF off) passes the plausibility test; best candidate: {verdict.describe()}; the ring is below threshold or "
            f"elsewhere: map it (labpgt sweep current) and train with --reference-from MAP.h5, or set "
            f"--probe-center-hz / --probe-span-hz")
    line = verdict.peak
    sa.configure(center_hz=line.frequency_hz, span_hz=window_hz, rbw_hz=rbw, points=points,
                 reference_level_dbm=ref_level)
    return Probe(
        reference_source="probe", reference_hz=line.frequency_hz, time_s=time_s, current_a=float(current_a),
        center_hz=float(center_hz), span_hz=float(span_hz), rbw_hz=probe_rbw, points=PROBE_POINTS,
        reference_level_dbm=float(ref_level), line_hz=line.frequency_hz, line_dbm=line.power_dbm,
        rf_output_enabled=0, overloaded=int(overloaded), min_prominence_db=PROBE_MIN_PROMINENCE_DB,
        frequency_hz=freqs, trace_dbm=trace)


def find_reference_hz(station, current_a: float, span_hz: float = PROBE_SPAN_HZ,
                      center_hz: float = PROBE_CENTER_HZ) -> tuple[float, np.ndarray, np.ndarray]:
    """:func:`probe_sweep` as (line frequency Hz, frequency axis, trace)."""
    probe = probe_sweep(station, current_a, span_hz=span_hz, center_hz=center_hz)
    return probe.reference_hz, probe.frequency_hz, probe.trace_dbm


def reference_probe(station, config: dict):
    """Where this run's reference frequency comes from: the configuration's ``reference_hz``
    (no sweep), a sweep map's operating point (``reference_from``: no sweep, the map's line), or
    else a :func:`probe_sweep` at ``current_a`` in the probe window (:func:`probe_window`)."""
    from labpgt.runfile import Probe

    lo, hi = (float(v) for v in station.current_source.limits["current_a"])
    if not lo <= config["current_a"] <= hi:  # before anything moves, whichever way the line is found
        where = f" (the operating point of the map {config['reference_from']})" if config.get("reference_from") else ""
        raise ConfigError(f"current_a = {config['current_a']} A{where} is outside the station's current limits "
                          f"[{lo}, {hi}] A")
    if config["reference_hz"] is not None:
        return Probe.from_config(config["reference_hz"])
    if config.get("reference_from") is not None:
        from labpgt.sweep.file import read_operating_point

        point = read_operating_point(config["reference_from"], config["current_a"])
        return Probe("map", point.line_hz, map_file=str(config["reference_from"]))
    center_hz, span_hz = probe_window(station.spectrum_analyzer.limits.get("frequency_hz"), config["current_a"],
                                      config.get("probe_center_hz"), config.get("probe_span_hz"))
    try:
        return probe_sweep(station, config["current_a"], span_hz=span_hz, center_hz=center_hz)
    except NoPlausibleLine as narrow:
        wide = reachable_window(station)
        given = config.get("probe_center_hz") is not None or config.get("probe_span_hz") is not None
        if given or wide is None or wide == (center_hz, span_hz):
            raise
        # a ring off the nominal tuning (another coil): look in the whole band the drive can reach
        log.warning("%s; probing the whole band the drive can reach instead", narrow)
        try:
            return probe_sweep(station, config["current_a"], span_hz=wide[1], center_hz=wide[0])
        except NoPlausibleLine as exc:
            raise NoPlausibleLine(f"{exc} (the nominal window first: {narrow})") from None


def check_encoder_windows(station, encoder) -> None:
    """The drive's detuning and power windows must lie inside the generator's limits (refused at
    start, before anything is trained, naming the window and the limits; never narrowed)."""
    sg = station.signal_generator
    f_lo, f_hi = sg.limits.get("frequency_hz", (-np.inf, np.inf))
    low, high = encoder.reference_hz - encoder.detuning_span_hz, encoder.reference_hz + encoder.detuning_span_hz
    if low < f_lo or high > f_hi:
        raise ConfigError(
            f"the drive's detuning window {low:g}-{high:g} Hz (reference {encoder.reference_hz:g} Hz ± "
            f"{encoder.detuning_span_hz:g} Hz) reaches outside the signal generator's frequency limits "
            f"[{f_lo:g}, {f_hi:g}] Hz: the ring's line is out of the drive's reach at this current")
    p_lo, p_hi = sg.limits.get("power_dbm", (-np.inf, np.inf))
    if encoder.power_min_dbm < p_lo or encoder.power_max_dbm > p_hi:
        raise ConfigError(
            f"the drive's power window [{encoder.power_min_dbm:g}, {encoder.power_max_dbm:g}] dBm reaches outside "
            f"the signal generator's power limits [{p_lo:g}, {p_hi:g}] dBm")


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
    check_encoder_windows(station, encoder)
    readout = BandReadout(center_hz=reference_hz, span_hz=sa.span_hz, points=sa.points, rbw_hz=sa.rbw_hz,
                          n_bands=config["bands"])
    return {"encoder": encoder.to_dict(), "readout": readout.to_dict(),
            "current_bounds_a": current_bounds(config, (cmin, cmax))}
