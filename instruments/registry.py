"""Which driver classes a station file may name: a registry, never an arbitrary import.

A station file (or a station recorded in a run file) is data. Its ``driver = "..."`` is looked
up here, among

* the drivers shipped with labpgt (``drivers.keysight:MXG``, ...: the names station files have
  always used), imported from the installed ``drivers`` package only -- a ``drivers`` directory
  in the working directory is refused, not imported; and
* the entry points of the installed ``labpgt.drivers`` group (third-party drivers installed as
  packages: ``[project.entry-points."labpgt.drivers"] "acme:SG7" = "acme_labpgt.sg:SG7"``).

Any other name is an error that lists what is available. Nothing in a station file ever
decides which module is imported.
"""
from __future__ import annotations

import importlib
from importlib import metadata
from pathlib import Path
from typing import Mapping

#: station name -> (role, module, class) of the drivers shipped with labpgt
PROJECT_DRIVERS: Mapping[str, tuple[str, str, str]] = {
    "drivers.keysight:MXG": ("signal_generator", "drivers.keysight", "MXG"),
    "drivers.windfreak:SynthHD": ("signal_generator", "drivers.windfreak", "SynthHD"),
    "drivers.kepco:BOP": ("current_source", "drivers.kepco", "BOP"),
    "drivers.keithley:Keithley2400": ("current_source", "drivers.keithley", "Keithley2400"),
    "drivers.keysight:XSeries": ("spectrum_analyzer", "drivers.keysight", "XSeries"),
    "drivers.rohde:FSV": ("spectrum_analyzer", "drivers.rohde", "FSV"),
}
ENTRY_POINT_GROUP = "labpgt.drivers"

#: the directory holding the installed ``instruments`` and ``drivers`` packages
_INSTALL_ROOT = Path(__file__).resolve().parent.parent


class UnknownDriver(LookupError):
    """A driver name that is not in the registry (the message lists what is)."""


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available(role: str | None = None) -> list[str]:
    """The driver names a station may use (for ``role``, or all of them), shipped ones first."""
    names = [name for name, (r, _, _) in PROJECT_DRIVERS.items() if role is None or r == role]
    return names + sorted(name for name in _entry_points() if name not in PROJECT_DRIVERS)


def resolve(name: str) -> type:
    """The class registered as ``name``. Raises :class:`UnknownDriver` for anything else."""
    if not isinstance(name, str):
        raise UnknownDriver(f"{name!r} is not a driver name")
    shipped = PROJECT_DRIVERS.get(name)
    if shipped is not None:
        _, module_name, class_name = shipped
        module = importlib.import_module(module_name)
        location = Path(getattr(module, "__file__", "") or "").resolve()
        if _INSTALL_ROOT not in location.parents:
            raise UnknownDriver(f"{name}: module {module_name} was found at {location}, not in the installed "
                                f"labpgt ({_INSTALL_ROOT}); refusing to use it")
        return getattr(module, class_name)
    entry_point = _entry_points().get(name)
    if entry_point is None:
        raise UnknownDriver(f"{name!r} is not a registered driver")
    return entry_point.load()
