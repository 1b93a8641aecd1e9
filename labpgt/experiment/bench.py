"""One measurement at the bench: ``labpgt measure`` and the Python API's station session.

:func:`measure_spectrum` sets the magnet, the analyzer window and the drive (every value checked
against the station's limits before anything moves; RF on only through the generator's one
validated switch), sweeps once and returns the trace. :class:`StationSession` is a station
(the embedded simulated ring, or a station file) opened as a context manager: its exit leaves
the rig safe and reads it back, as every command does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labpgt.experiment.embedded import open_station
from labpgt.reservoirs.spectra import strongest_peaks


@dataclass(frozen=True)
class Spectrum:
    """One analyzer trace and the settings it was measured at."""

    frequency_hz: np.ndarray  # the analyzer's frequency axis, Hz
    trace_dbm: np.ndarray  # the trace as read, dBm
    drive_frequency_hz: float
    drive_power_dbm: float
    current_a: float

    def peaks(self, count: int = 5, min_prominence_db: float = 12.0) -> list:
        """The strongest lines standing out of the noise floor (labpgt.reservoirs.spectra.Peak)."""
        return strongest_peaks(self.frequency_hz, self.trace_dbm, count=count, min_prominence_db=min_prominence_db)

    @property
    def floor_dbm(self) -> float:
        """The median of the trace: the noise floor (a trace is mostly floor)."""
        return float(np.median(self.trace_dbm))


def measure_spectrum(station, *, frequency_hz: float, power_dbm: float, current_a: float,
                     center_hz: float | None = None, span_hz: float | None = None,
                     names: dict | None = None) -> Spectrum:
    """Drive the ring at (frequency_hz, power_dbm) with the magnet at current_a and sweep once.

    center_hz: the analyzer's centre (default: the drive frequency); span_hz: its span (default:
    the station's). names: what to call the three settings in a refusal (the CLI's flag names).
    """
    names = names or {}
    sg, cs, sa = station.signal_generator, station.current_source, station.spectrum_analyzer
    # every value checked against the station's limits before the magnet moves
    sg.check_limit("frequency_hz", frequency_hz, name=names.get("frequency_hz"))
    sg.check_limit("power_dbm", power_dbm, name=names.get("power_dbm"))
    cs.check_limit("current_a", current_a, name=names.get("current_a"))
    cs.ramp_to(current_a)
    sa.configure(center_hz=center_hz if center_hz is not None else frequency_hz,
                 span_hz=span_hz if span_hz is not None else sa.span_hz,
                 rbw_hz=sa.rbw_hz, points=sa.points, reference_level_dbm=sa.reference_level_dbm)
    sg.enable_rf_at(frequency_hz, power_dbm)  # the one RF switch: validated, read back, then on
    freqs, dbm = sa.measure()
    return Spectrum(np.asarray(freqs, dtype=np.float64), np.asarray(dbm), float(frequency_hz), float(power_dbm),
                    float(current_a))


class StationSession:
    """A connected station for a notebook: ``with labpgt.open_station() as rig: rig.measure(...)``.

    station: a station TOML file (None: the embedded simulated ring, seeded with ``seed``).
    On exit -- normal, an exception or Ctrl-C -- the rig is made safe (RF off, the current
    ramped to zero, its output off) and read back; :attr:`safe_report` holds that read-back, and
    an unsafe read-back raises (instruments.safe_state.UnsafeStateError).
    """

    def __init__(self, station: str | Path | None = None, *, seed: int = 0, flavour: str = "keysight",
                 noise_scale: float | None = None):
        self._opener = open_station(station, seed=seed, flavour=flavour, noise_scale=noise_scale)
        self.station = None  # instruments.station.Station, while open
        self.sim = None  # the embedded simulator's server (None for a station file)

    def __enter__(self) -> "StationSession":
        self.station, self.sim = self._opener.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return bool(self._opener.__exit__(exc_type, exc, tb))

    @property
    def simulated(self) -> bool:
        return self.sim is not None

    @property
    def identities(self) -> dict:
        """role -> the identity each instrument answered."""
        return dict(self.station.identities)

    @property
    def safe_report(self):
        """The rig's state as read back when the session ended (instruments.safe_state.SafeStateReport)."""
        return self.station.safe_report if self.station is not None else None

    def measure(self, frequency_hz: float = 2.07e9, power_dbm: float = -10.0, current_a: float = 1.8, *,
                center_hz: float | None = None, span_hz: float | None = None) -> Spectrum:
        """One spectrum at these settings (see :func:`measure_spectrum`)."""
        if self.station is None:
            raise RuntimeError("the station is not open: use `with labpgt.open_station() as rig: rig.measure(...)`")
        return measure_spectrum(self.station, frequency_hz=frequency_hz, power_dbm=power_dbm, current_a=current_a,
                                center_hz=center_hz, span_hz=span_hz)
