"""Stations to run against: a station file, or the simulated ring started in-process."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from instruments.station import Station


@contextlib.contextmanager
def open_station(station_path: str | Path | None, *, seed: int = 0, flavour: str = "keysight",
                 noise_scale: float | None = None, ring_step: dict | None = None,
                 station_text: str | None = None, recovery=None) -> Iterator[tuple[Station, object | None]]:
    """Yield ``(station, sim_server)``; a connected station whose exit leaves the rig safe.

    With no station file the embedded simulated ring starts in-process: the same loopback
    servers as ``labpgt sim serve``, reached through the same drivers, so nothing but the
    station file differs from a bench run. ``sim_server`` is None for a station file.
    ``station_text`` (a station recorded in a run file) takes the place of the file.
    ``noise_scale``: the embedded simulated ring's noise multiplier (None: its default);
    ``ring_step``: a scheduled step change of it (labpgt/reservoirs/direct.py ``simulated_ring_params``).
    ``recovery``: a :class:`labpgt.reservoirs.recovery.RecoveryPolicy` under which the station is
    connected (a fault while connecting: the connected roles left safe, then connected again).
    """
    if station_text is not None:
        station = Station.from_text(station_text, source_name=f"{station_path or 'recorded station'}")
        with _connected(station, recovery):
            yield station, None
        return
    if station_path is not None:
        station = Station.load(station_path)
        with _connected(station, recovery):
            yield station, None
        return

    from sim.server import SimServer  # only the embedded station needs the simulator

    from labpgt.reservoirs.direct import simulated_ring_params

    ring_params = None
    if noise_scale is not None or ring_step is not None:
        ring_params = simulated_ring_params(1.0 if noise_scale is None else noise_scale, step=ring_step)
    with SimServer(seed=seed, flavour=flavour, ring_params=ring_params) as server:
        station = Station.from_text(server.station_toml(), source_name="<embedded simulated station>")
        with _connected(station, recovery):
            yield station, server


def _connected(station: Station, recovery) -> Station:
    """The station, connected (under ``recovery`` if given); its ``with`` leaves the rig safe."""
    if recovery is not None:
        recovery.start_up(station, "connecting the station", station.connect)
    return station


@contextlib.contextmanager
def loaded_station(station_path: str | Path | None, *, seed: int = 0, flavour: str = "keysight",
                   station_text: str | None = None) -> Iterator[Station]:
    """Yield a validated station that is *not* connected (its limits and settings, for a dry run):
    nothing is sent to any instrument. With no station file: the embedded simulated station's."""
    if station_text is not None:
        yield Station.from_text(station_text, source_name=f"{station_path or 'recorded station'}")
        return
    if station_path is not None:
        yield Station.load(station_path)
        return
    from sim.server import SimServer

    with SimServer(seed=seed, flavour=flavour) as server:
        yield Station.from_text(server.station_toml(), source_name="<embedded simulated station>")
