"""Vendor-neutral instrument roles and the Station (a rig described by a TOML file).

    from instruments.station import Station
    with Station.load("instruments/stations/lab-example.toml") as station:
        ...

Roles: :class:`~instruments.roles.SignalGenerator`, :class:`~instruments.roles.CurrentSource`,
:class:`~instruments.roles.SpectrumAnalyzer` (SI units, limits, ramping, safe state). Drivers
live in the ``drivers`` package and are named by station files, never imported from here.
"""
