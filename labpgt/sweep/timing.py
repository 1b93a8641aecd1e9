"""How long a plan takes on a station: the instrument time of each point, before anything is sent.

From the station file alone (nothing is asked of an instrument, so ``--dry-run`` moves nothing):
the ramp rate of its current source, the analyzer's sweep time for the window (a swept analyzer
takes about 2.5 span / RBW^2, ring-physics.md "Timing"), the generator's settling, and a round-trip
overhead per message. The progress bar counts these seconds, so its ETA weighs a point that moves
the magnet more than one that does not.
"""
from __future__ import annotations

from dataclasses import dataclass

#: the generator settles this long after a frequency or power change (ring-physics.md: ~5 ms)
GENERATOR_SETTLE_S = 5e-3
#: a swept analyzer's sweep time: k * span / RBW^2, at least SWEEP_MIN_S
SWEEP_TIME_K = 2.5
SWEEP_MIN_S = 1e-3
#: a magnet's field settles about three coil time constants (0.3 s, an assumption) after a ramp
COIL_SETTLE_S = 0.9
#: messages on the wire per measurement (settings, sweep, trace read) and their round trip each
ROUND_TRIPS_PER_MEASUREMENT = 3
ROUND_TRIP_S = 1e-3


@dataclass(frozen=True)
class StationTiming:
    """Instrument time estimates for one station (seconds)."""

    ramp_rate_a_per_s: float
    analyzer_span_hz: float  # the station's measurement window (training)
    analyzer_rbw_hz: float

    @classmethod
    def from_station(cls, station) -> "StationTiming":
        """From a loaded (not necessarily connected) :class:`instruments.station.Station`."""
        cs = station.roles["current_source"].limits
        settings = station.roles["spectrum_analyzer"].settings
        return cls(float(cs["ramp_rate_a_per_s"]), float(settings.get("span_hz", 30e6)),
                   float(settings.get("rbw_hz", 100e3)))

    @staticmethod
    def sweep_s(span_hz: float, rbw_hz: float) -> float:
        return max(SWEEP_MIN_S, SWEEP_TIME_K * span_hz / (rbw_hz * rbw_hz))

    def measurement_s(self, span_hz: float | None = None, rbw_hz: float | None = None, rf: bool = True) -> float:
        """One measurement: the generator set (if RF is used), one sweep, the trace read."""
        span = self.analyzer_span_hz if span_hz is None else span_hz
        rbw = self.analyzer_rbw_hz if rbw_hz is None else rbw_hz
        return (GENERATOR_SETTLE_S if rf else 0.0) + self.sweep_s(span, rbw) + ROUND_TRIPS_PER_MEASUREMENT * ROUND_TRIP_S

    def ramp_s(self, from_a: float, to_a: float) -> float:
        """Moving the magnet: at the station's ramp rate, then its field settles (0 if it does not move)."""
        if from_a == to_a:
            return 0.0
        return abs(to_a - from_a) / self.ramp_rate_a_per_s + COIL_SETTLE_S

    def point_seconds(self, plan, start_current_a: float = 0.0) -> list[float]:
        """The instrument time of each point of a sweep plan, in order (the first ramps from ``start_current_a``)."""
        out, current = [], start_current_a
        for p in plan.points:
            out.append(self.ramp_s(current, p.current_a) + p.wait_s
                       + self.measurement_s(plan.window.span_hz, plan.window.rbw_hz, rf=p.rf_on))
            current = p.current_a
        return out


def describe_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
