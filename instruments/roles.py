"""Vendor-neutral instrument roles, in SI units: SignalGenerator, CurrentSource, SpectrumAnalyzer.

A role says *what* an instrument does and enforces the station's safety rules; a driver (in
``drivers/``) says *how*, by declaring each role property once with :class:`~instruments.controls.control`
and implementing the few wire-level hooks below (``identify``, ``errors``, ``synchronise``,
``_transmit_settings``, ``open_transport``).

Limits: every instrument holds ``limits`` (quantity -> (min, max)), made of the vendor's own
ranges (class attribute ``instrument_ranges``) narrowed by the station file. A value outside is
a :class:`LimitError` raised before anything is sent; nothing is ever clamped.
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from .errors import (
    InstrumentError,
    InstrumentReportedError,
    LimitError,
    NoAnswerError,
    TransportTimeout,
    WrongInstrumentError,
)

logger = logging.getLogger(__name__)
#: every message on the wire at DEBUG, with role and resource (``labpgt -vv`` or ``--log-file``)
WIRE_LOG = logging.getLogger("instruments.wire")

_UNIT_SUFFIXES = (("_a_per_s", "A/s"), ("_dbm", "dBm"), ("_db", "dB"), ("_hz", "Hz"), ("_a", "A"), ("_v", "V"), ("_s", "s"))


def unit_of(quantity: str) -> str:
    for suffix, unit in _UNIT_SUFFIXES:
        if quantity.endswith(suffix):
            return unit
    return ""


@dataclass(frozen=True)
class LimitSpec:
    """What a key of ``[<role>.limits]`` means.

    shape: "range" ([min, max] -> limits[quantity]); "max" (a number -> upper bound of
    limits[quantity], the lower bound stays the instrument's); "positive" (a number > 0 kept as
    a parameter of the role, e.g. a ramp rate).
    """

    shape: str
    quantity: Optional[str] = None
    required: bool = False
    doc: str = ""
    #: for "positive": the [min, max] a value must lie in (what the hardware can honour)
    bounds: Optional[tuple[float, float]] = None


class Setting(NamedTuple):
    """One validated setting on its way to the wire."""

    name: str
    value: object
    command: str


class Instrument:
    """Base of every role. Owns a transport, a role name, limits and the safe state."""

    #: station section name of the role ("signal_generator", ...)
    role_kind: str = ""
    #: the keys a station may put in ``[<role>.limits]``
    station_limits: Mapping[str, LimitSpec] = {}
    #: attributes a driver must provide to implement the role
    required_members: tuple[str, ...] = ()
    #: the instrument's own range per quantity (vendor class attribute)
    instrument_ranges: Mapping[str, tuple[float, float]] = {}
    #: keys allowed in ``[<role>.options]`` (the driver's transport options)
    transport_options: tuple[str, ...] = ("timeout_s",)
    default_timeout_s: float = 5.0
    #: what ``*IDN?`` (or the driver's identify()) must match for this driver, as a regular
    #: expression searched in the identity ("" accepts any), and the family in words
    identity_pattern: str = ""
    model_family: str = ""

    def __init__(
        self,
        transport,
        *,
        role: Optional[str] = None,
        limits: Optional[Mapping[str, object]] = None,
        station_file: str = "<no station file>",
        pacing: str = "virtual",
        wait: Optional[Callable[[float], None]] = None,
    ):
        self.transport = transport
        self.role = role or self.role_kind
        self.station_file = station_file
        self.pacing = pacing
        self.wait = wait if wait is not None else time.sleep
        self._needs_clear = False
        #: settings sent whose reply is still on its way (``_begin_settings_one_message``)
        self._awaiting: Optional[Sequence[Setting]] = None
        self.limits: dict[str, tuple[float, float]] = {}
        self._limit_sources: dict[str, str] = {}
        self.parameters: dict[str, float] = {}
        self._set_instrument_ranges(self.instrument_ranges)
        self._apply_station_limits(dict(limits or {}))

    # ------------------------------------------------------------------ limits
    def _set_instrument_ranges(self, ranges: Mapping[str, tuple[float, float]], model: str = "") -> None:
        label = f"the instrument range of {type(self).__name__}{' ' + model if model else ''}"
        for quantity, (low, high) in ranges.items():
            self.limits[quantity] = (float(low), float(high))
            self._limit_sources[quantity] = label

    def _apply_station_limits(self, station: Mapping[str, object]) -> None:
        for key, value in station.items():
            spec = self.station_limits.get(key)
            if spec is None:
                raise InstrumentError(
                    f"{self.role}: unknown limit {key!r}; allowed: {', '.join(self.station_limits)}"
                )
            source = f"station file {self.station_file}, [{self.role}.limits] {key}"
            if spec.shape == "range":
                low, high = value  # type: ignore[misc]
                self.limits[spec.quantity] = (float(low), float(high))
                self._limit_sources[spec.quantity] = source
            elif spec.shape == "max":
                low = self.limits.get(spec.quantity, (-math.inf, math.inf))[0]
                self.limits[spec.quantity] = (low, float(value))  # type: ignore[arg-type]
                self._limit_sources[spec.quantity] = source
            else:
                self.parameters[key] = float(value)  # type: ignore[arg-type]

    @classmethod
    def limits_for_station(cls, station: Mapping[str, object]) -> dict[str, tuple[float, float]]:
        """The limits an instrument of this class would enforce under ``station`` (sends nothing)."""
        limits = {q: (float(lo), float(hi)) for q, (lo, hi) in cls.instrument_ranges.items()}
        for key, value in station.items():
            spec = cls.station_limits.get(key)
            if spec is not None and spec.shape == "range":
                limits[spec.quantity] = (float(value[0]), float(value[1]))
            elif spec is not None and spec.shape == "max":
                limits[spec.quantity] = (limits.get(spec.quantity, (-math.inf, math.inf))[0], float(value))
        return limits

    @classmethod
    def station_limit_problems(
        cls, station: Mapping[str, object], ranges: Optional[Mapping[str, tuple[float, float]]] = None
    ) -> list[tuple[str, str, str]]:
        """Check a ``[<role>.limits]`` table against this role and the instrument's range.

        Returns (key, problem, allowed) triples; empty when the table is acceptable. ``ranges``
        overrides the class's instrument ranges (a model read from ``*IDN?``).
        """
        ranges = cls.instrument_ranges if ranges is None else ranges
        # a misspelt key first: it also explains the "missing" key it was meant to be
        problems: list[tuple[str, str, str]] = [
            (key, "is not a known limit", ", ".join(cls.station_limits))
            for key in station if key not in cls.station_limits]
        for key, spec in cls.station_limits.items():
            if spec.required and key not in station:
                problems.append((key, "is missing", f"{key}: {spec.doc or spec.shape}"))
        for key, value in station.items():
            spec = cls.station_limits.get(key)
            if spec is None:
                continue  # reported above
            unit = unit_of(spec.quantity or key)
            own = ranges.get(spec.quantity) if spec.quantity else None
            own_text = f"[{own[0]:g}, {own[1]:g}] {unit} ({cls.__name__})" if own else ""
            if spec.shape == "range":
                if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)):
                    problems.append((key, f"must be [min, max] in {unit}, got {value!r}", "[min, max]"))
                    continue
                low, high = float(value[0]), float(value[1])
                if not (math.isfinite(low) and math.isfinite(high)):
                    problems.append((key, f"[{low:g}, {high:g}] {unit} is not finite", "finite numbers"))
                elif low > high:
                    problems.append((key, f"min {low:g} > max {high:g}", "min <= max"))
                elif own and (low < own[0] or high > own[1]):
                    problems.append((key, f"[{low:g}, {high:g}] {unit} exceeds the instrument's range", own_text))
                elif cls._range_must_contain_zero(key) and not low <= 0.0 <= high:
                    problems.append((key, f"[{low:g}, {high:g}] {unit} does not contain 0 (the safe state)",
                                     "a range with min <= 0 <= max"))
            else:
                if not _is_number(value):
                    problems.append((key, f"must be a number in {unit or 'SI units'}, got {value!r}", "a number"))
                    continue
                number = float(value)
                if not math.isfinite(number):
                    problems.append((key, f"must be finite, got {number:g}",
                                     _bounds_text(spec.bounds, unit) if spec.bounds else "a finite number"))
                elif spec.shape == "positive" and not number > 0:
                    problems.append((key, f"must be > 0, got {number:g}", "a positive number"
                                     + (f" ({_bounds_text(spec.bounds, unit)})" if spec.bounds else "")))
                elif spec.shape == "positive" and spec.bounds and not spec.bounds[0] <= number <= spec.bounds[1]:
                    problems.append((key, f"{number:g} {unit} is outside what a magnet supply can honour",
                                     _bounds_text(spec.bounds, unit)))
                elif spec.shape == "max" and own and not (own[0] <= number <= own[1]):
                    problems.append((key, f"{number:g} {unit} exceeds the instrument's range", own_text))
        return problems

    @classmethod
    def _range_must_contain_zero(cls, key: str) -> bool:
        return False

    def check_limit(self, quantity: str, value, *, name: Optional[str] = None) -> None:
        """Raise LimitError unless ``value`` lies in ``limits[quantity]`` (no limit: accepted)."""
        label = name or quantity
        if isinstance(value, (bool, np.bool_)):
            return  # switches have no range
        if not _is_number(value) or not math.isfinite(float(value)):
            raise LimitError(self.role, label, value, "finite numbers", "the role's rules")
        bounds = self.limits.get(quantity)
        if bounds is None:
            return
        low, high = bounds
        if not low <= float(value) <= high:
            unit = unit_of(quantity)
            raise LimitError(self.role, label, value, f"[{low:g}, {high:g}] {unit}".rstrip(),
                             self._limit_sources.get(quantity, "?"))

    # ------------------------------------------------------------------ wire access
    @property
    def resource(self) -> str:
        return getattr(self.transport, "resource", "?")

    @property
    def link_down(self) -> bool:
        """Whether the transport knows its connection dropped (a reconnect is due)."""
        return bool(getattr(self.transport, "link_down", False))

    def _io(self, operation, *command: str):
        if self._reply_may_still_come:
            self._drop_late_reply()
        if self._needs_clear or self._awaiting is not None:
            # a reply left unread (an abandoned second half) is dropped, never taken as this one's
            self._clear_quietly()
        if self._drain_before_next:
            self._drain_stale_errors()
        started = time.monotonic()
        try:
            if not WIRE_LOG.isEnabledFor(logging.DEBUG):  # the hot path pays one check
                return operation(*command)
            WIRE_LOG.debug("%s %s %s %s", self.role, self.resource, operation.__name__, " ".join(map(repr, command)))
            reply = operation(*command)
            if reply is not None:
                shown = f"<{len(reply)} bytes>" if isinstance(reply, (bytes, bytearray)) else repr(reply)
                WIRE_LOG.debug("%s %s reply %s", self.role, self.resource, shown)
            return reply
        except TransportTimeout as timeout:
            seconds = timeout.seconds
            if getattr(self.transport, "link_down", False):  # refused or dropped: say how long it really took
                seconds = round(time.monotonic() - started, 2)
            self._clear_quietly()  # drop a half-delivered reply before the next exchange
            # whatever the instrument queued meanwhile belongs to this timeout, not to the next setting
            self._drain_before_next = True
            raise NoAnswerError(self.role, self.resource, seconds, timeout.detail) from timeout
        except BaseException as exc:
            # interrupted mid-exchange (Ctrl-C, a fault): a reply may still be on its way
            self._needs_clear = True
            if isinstance(exc, KeyboardInterrupt) and operation != self.transport.write:
                # a query cut short by Ctrl-C / SIGTERM: its reply can come after any clear (an
                # *OPC? waiting for the coil to settle), and must not be taken as the next one's
                self._reply_may_still_come = True
            raise

    #: a query was interrupted while its reply was still to come (see :meth:`_drop_late_reply`)
    _reply_may_still_come = False
    #: a query every instrument of the driver answers with its identity, in order with the others
    #: (SCPI: ``*IDN?``); None: a clear is all that can be done after an interrupted query
    resync_query: Optional[str] = None
    #: replies read at most while looking for the identity after an interrupted query
    late_replies_max = 8

    def _drop_late_reply(self) -> None:
        """After a query was interrupted: clear, then ask for the identity and read until it comes
        back. The instrument answers in order, so every late reply (the interrupted query's, however
        long it took) is read and dropped before it; the next exchange is in step again."""
        self._reply_may_still_come = False
        self._clear_quietly()
        if self.resync_query is None:
            return
        transport = self.transport
        try:
            transport.write(self.resync_query)
            for _ in range(self.late_replies_max):
                reply = transport.read().strip()
                if self.identity_matches(reply):
                    return
                logger.warning("%s at %s: dropped a late reply %r to a query that was interrupted", self.role,
                               self.resource, reply[:80])
        except TransportTimeout as timeout:
            self._needs_clear = True
            raise NoAnswerError(self.role, self.resource, timeout.seconds, timeout.detail) from timeout
        except BaseException:
            self._needs_clear = True
            self._reply_may_still_come = True
            raise
        self._needs_clear = True
        raise InstrumentError(f"{self.role}: no identity among {self.late_replies_max} replies after an interrupted "
                              f"query; the exchange is out of step")

    #: set by a timeout: the error queue is read empty before the next exchange
    _drain_before_next = False

    def _drain_stale_errors(self) -> None:
        """Read the error queue empty after a timeout, before anything new is sent: its entries are
        logged (and kept in ``stale_errors``) as the timeout's, never blamed on the next setting."""
        self._drain_before_next = False
        entries = self.errors()
        if entries:
            self.stale_errors = list(entries)
            logger.warning("%s at %s: error queue entries left from before a timeout (not caused by what is "
                           "sent next): %s", self.role, self.resource,
                           "; ".join(f"{code} {message!r}" for code, message in entries))

    #: the entries drained after the last timeout
    stale_errors: list = []

    def recover(self) -> bool:
        """Bring the instrument back after a fault; True if it had to reconnect.

        Device clear (drops a half-delivered reply), then the instrument must identify itself;
        if the link dropped or it does not answer, the transport reconnects and the vendor
        set-up runs again (the caller re-sends its own settings when this returns True). The
        error queue is drained either way: its entries belong to the fault being handled.
        Raises (NoAnswerError, TransportError, ...) when the instrument cannot be reached.
        """
        self._needs_clear = False
        self._drain_before_next = False  # drained below, after the identity check
        self._awaiting = None  # a reply on its way belongs to the fault: the clear drops it
        transport = self.transport
        if not getattr(transport, "link_down", False):
            try:
                transport.clear()
                self.identify()
                self.errors()
                return False
            except InstrumentError:
                pass  # it does not answer on this connection: open a new one
        reconnect = getattr(transport, "reconnect", None)
        if reconnect is None:
            raise InstrumentError(f"{self.role}: the transport {type(transport).__name__} cannot reconnect")
        try:
            reconnect()
        except TransportTimeout as timeout:
            raise NoAnswerError(self.role, self.resource, timeout.seconds, timeout.detail) from timeout
        self._needs_clear = False
        identity = self.identify()
        if not self.identity_matches(identity):  # another instrument answers at this address now
            raise WrongInstrumentError(f"{self.role} at {self.resource} answers *IDN? as {identity!r} after "
                                       f"reconnecting, but its driver expects {self.model_family or type(self).__name__}")
        self.errors()
        self._after_reconnect()
        return True

    def _after_reconnect(self) -> None:
        """Vendor set-up again on a new connection (roles add what they must re-apply)."""
        self.initialize()

    def _clear_quietly(self) -> None:
        self._needs_clear = False
        self._awaiting = None
        try:
            self.transport.clear()
        except Exception:  # a clear is a courtesy; the next exchange reports real trouble
            pass

    def write(self, command: str) -> None:
        self._io(self.transport.write, command)

    def query(self, command: str) -> str:
        return self._io(self.transport.query, command)

    def query_block(self, command: str) -> bytes:
        return self._io(self.transport.query_block, command)

    # ------------------------------------------------------------------ hooks for drivers
    @classmethod
    def open_transport(cls, resource: str, options: Mapping[str, object]):
        """Open the transport this driver speaks over (drivers implement it)."""
        raise NotImplementedError

    @classmethod
    def identity_matches(cls, identity: str) -> bool:
        """Whether ``identity`` names a model of this driver's family."""
        return not cls.identity_pattern or re.search(cls.identity_pattern, identity, re.IGNORECASE) is not None

    @classmethod
    def ranges_for_identity(cls, identity: str) -> Mapping[str, tuple[float, float]]:
        """The instrument's own ranges for the model named in ``identity`` (default: the class's)."""
        return cls.instrument_ranges

    def identify(self) -> str:
        raise NotImplementedError

    def errors(self) -> list[tuple[int, str]]:
        """Drain the error queue (until code 0). Instruments without a queue return []."""
        return []

    def check_errors(self, context: str = "") -> None:
        entries = self.errors()
        if entries:
            raise InstrumentReportedError(self.role, entries, context)

    def synchronise(self) -> None:
        """Wait until the instrument has executed everything sent so far (SCPI: ``*OPC?``)."""

    def initialize(self) -> None:
        """Vendor set-up after connecting (modes, data formats)."""

    def _transmit_settings(self, settings: Sequence[Setting]) -> None:
        raise NotImplementedError

    def _transmit_settings_one_message(self, settings: Sequence[Setting]) -> None:
        """The per-measurement hot path: settings, synchronisation and error check in as few
        round trips as the driver can (SCPI: one). By default the same as ``_transmit_settings``."""
        self._transmit_settings(settings)

    def _begin_settings_one_message(self, settings: Sequence[Setting]) -> None:
        """The first half of ``_transmit_settings_one_message``: send, do not wait for the reply.

        A driver that splits it sends the message and sets ``self._awaiting = settings``;
        :meth:`_finish_settings` then reads and checks the reply. Until then the instrument
        settles while other instruments are talked to; any other exchange with this instrument
        first drops the unread reply (a device clear). By default everything happens here."""
        self._transmit_settings_one_message(settings)

    def _finish_settings_one_message(self, settings: Sequence[Setting]) -> None:
        """The second half: read the reply to the settings sent by the first (drivers that split)."""
        raise NotImplementedError

    def _finish_settings(self) -> None:
        """Wait for the settings begun by ``_begin_settings_one_message`` (nothing if none are on their way)."""
        settings, self._awaiting = self._awaiting, None
        if settings is not None:
            self._finish_settings_one_message(settings)

    def _send_settings(self, settings: Sequence[Setting], *, one_message: bool = False) -> None:
        """Send validated settings as one batch (the driver decides how), then forget caches."""
        try:
            if one_message:
                self._transmit_settings_one_message(settings)
            else:
                self._transmit_settings(settings)
        finally:
            self._settings_changed(tuple(s.name for s in settings))

    def _settings_changed(self, names: tuple[str, ...]) -> None:
        """Called after settings were sent (roles with caches invalidate them)."""

    def _validated(self, values: Sequence[tuple[str, object]]) -> list[Setting]:
        """Every (property name, value) checked against the limits and formatted (nothing sent)."""
        cls = type(self)
        return [Setting(name, value, getattr(cls, name).command(self, value)) for name, value in values]

    def _apply(self, values: Sequence[tuple[str, object]], *, one_message: bool = False) -> None:
        """Validate every (property name, value) first, then send them as one batch."""
        self._send_settings(self._validated(values), one_message=one_message)

    # ------------------------------------------------------------------ lifetime
    def safe_state(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.safe_state()
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.role} at {self.resource}>"


def _bounds_text(bounds: tuple[float, float], unit: str) -> str:
    return f"a number in [{bounds[0]:g}, {bounds[1]:g}] {unit}".rstrip()


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# ====================================================================== signal generator
class SignalGenerator(Instrument):
    """A CW microwave source. Drivers declare ``frequency_hz``, ``power_dbm``, ``output_enabled``.

    RF safety is an invariant of this role: :meth:`park` (run at connect and after every
    reconnect) switches RF off and puts a frequency and power inside the limits, read back;
    the RF output goes on only through :meth:`enable_rf`, which requires the last setting
    requested through :meth:`configure_cw` to read back from the instrument, inside the
    limits. Setting ``output_enabled = True`` directly is refused.
    """

    role_kind = "signal_generator"
    station_limits = {
        "frequency_hz": LimitSpec("range", "frequency_hz", doc="[min, max] CW frequency in Hz"),
        "power_dbm": LimitSpec("range", "power_dbm", doc="[min, max] output power in dBm"),
    }
    required_members = ("frequency_hz", "power_dbm", "output_enabled")
    #: read-back agreement required before RF may go on (drivers with coarser wire formats widen it)
    frequency_tolerance_hz: float = 1.0
    power_tolerance_db: float = 0.01
    #: the parked power is the lowest inside the limits, but not below this (every generator
    #: accepts it; an instrument's extreme minimum may need an option it lacks)
    parking_power_floor_dbm: float = -100.0

    frequency_hz: float
    power_dbm: float
    output_enabled: bool

    def __init__(self, transport, **kwargs):
        super().__init__(transport, **kwargs)
        #: the last (frequency, power) validated and sent by configure_cw/begin_cw (None: none since
        #: connect, or something else changed the generator since)
        self._requested_cw: Optional[tuple[float, float]] = None
        self._enabling_rf = False

    def configure_cw(self, frequency_hz: float, power_dbm: float) -> None:
        """Set frequency and power as one batch (both validated before either is sent).

        Once per measurement: sent as one message with its synchronisation and error check
        where the driver can (``_transmit_settings_one_message``). The same as
        :meth:`begin_cw` then :meth:`finish_cw`."""
        self.begin_cw(frequency_hz, power_dbm)
        self.finish_cw()

    def begin_cw(self, frequency_hz: float, power_dbm: float) -> None:
        """First half of :meth:`configure_cw`: both validated, then sent without waiting.

        The generator settles while other instruments are talked to (the analyzer's trace of
        the previous sweep is read meanwhile). :meth:`finish_cw` must come next on this
        instrument: it waits for the settings (``*OPC?``) and checks the error queue. Anything
        else sent to this instrument first drops the unread reply (a device clear). A driver
        that cannot split (Windfreak) does everything here and nothing in :meth:`finish_cw`."""
        settings = self._validated([("frequency_hz", frequency_hz), ("power_dbm", power_dbm)])
        self._requested_cw = None
        try:
            self._begin_settings_one_message(settings)
        finally:
            self._settings_changed(("frequency_hz", "power_dbm"))
        self._requested_cw = (float(frequency_hz), float(power_dbm))

    def finish_cw(self) -> None:
        """Second half of :meth:`configure_cw`: the settings' completion and error check (see there)."""
        try:
            self._finish_settings()
        except BaseException:
            self._requested_cw = None
            raise

    def _settings_changed(self, names: tuple[str, ...]) -> None:
        super()._settings_changed(names)
        if "frequency_hz" in names or "power_dbm" in names:
            self._requested_cw = None  # set outside configure_cw: not a validated pair any more

    def _send_settings(self, settings: Sequence[Setting], *, one_message: bool = False) -> None:
        if not self._enabling_rf and any(s.name == "output_enabled" and s.value for s in settings):
            raise InstrumentError(f"{self.role}: RF is switched on only by enable_rf(), after a validated "
                                  f"frequency and power were applied and read back; nothing was sent")
        super()._send_settings(settings, one_message=one_message)

    def enable_rf(self) -> tuple[float, float]:
        """The one way RF goes on: the setting last requested by :meth:`configure_cw` is read back
        (frequency and power inside the limits and equal to the request), then the output is
        switched on. Returns the (frequency Hz, power dBm) read back. Raises, with RF untouched,
        when no setting was requested since connect or the read-back disagrees."""
        self._finish_settings()  # a setting still on its way completes first
        requested = self._requested_cw
        if requested is None:
            raise InstrumentError(f"{self.role}: refusing to switch RF on: no validated frequency and power "
                                  f"were applied since connecting (configure_cw first); nothing was sent")
        frequency_hz, power_dbm = float(self.frequency_hz), float(self.power_dbm)
        self.check_limit("frequency_hz", frequency_hz, name="frequency_hz read back before RF on")
        self.check_limit("power_dbm", power_dbm, name="power_dbm read back before RF on")
        if (abs(frequency_hz - requested[0]) > self.frequency_tolerance_hz
                or abs(power_dbm - requested[1]) > self.power_tolerance_db):
            raise InstrumentError(
                f"{self.role}: refusing to switch RF on: the generator reads back {frequency_hz:.3f} Hz, "
                f"{power_dbm:.3f} dBm, not the {requested[0]:.3f} Hz, {requested[1]:.3f} dBm requested")
        command = type(self).output_enabled.command(self, True)
        self._enabling_rf = True
        try:
            self._send_settings([Setting("output_enabled", True, command)])
        finally:
            self._enabling_rf = False
        return frequency_hz, power_dbm

    def enable_rf_at(self, frequency_hz: float, power_dbm: float) -> tuple[float, float]:
        """:meth:`configure_cw` then :meth:`enable_rf` (rejects out-of-limit values before sending)."""
        self.configure_cw(frequency_hz, power_dbm)
        return self.enable_rf()

    def parking_setting(self) -> tuple[float, float]:
        """(Hz, dBm) the generator waits at with RF off: the middle of the frequency limits, the
        lowest power inside the power limits (not below ``parking_power_floor_dbm``)."""
        f_low, f_high = self.limits.get("frequency_hz", (0.0, 0.0))
        p_low, p_high = self.limits.get("power_dbm", (self.parking_power_floor_dbm,) * 2)
        return 0.5 * (f_low + f_high), min(p_high, max(p_low, self.parking_power_floor_dbm))

    def park(self, *, rf_already_off: bool = False) -> tuple[float, float]:
        """The known state: RF off, then the parking setting applied and read back inside the limits.

        Run at connect (whatever state the generator was left in; the station switches RF off
        first thing, ``rf_already_off``) and after a reconnect. Returns the (Hz, dBm) read back."""
        if not rf_already_off:
            self.safe_state()
        frequency_hz, power_dbm = self.parking_setting()
        self.configure_cw(frequency_hz, power_dbm)
        read_hz, read_dbm = float(self.frequency_hz), float(self.power_dbm)
        self.check_limit("frequency_hz", read_hz, name="frequency_hz read back after parking")
        self.check_limit("power_dbm", read_dbm, name="power_dbm read back after parking")
        self._requested_cw = None  # RF goes on only at a setting its user chose
        return read_hz, read_dbm

    def _after_reconnect(self) -> None:
        super()._after_reconnect()
        self.park()

    def safe_state(self) -> None:
        self.output_enabled = False


# ====================================================================== current source
#: what ``[current_source.limits] ramp_step_a`` and ``ramp_rate_a_per_s`` may be
RAMP_STEP_BOUNDS_A = (1e-4, 0.5)
RAMP_RATE_BOUNDS_A_PER_S = (1e-3, 10.0)


class CurrentSource(Instrument):
    """A DC current source driving the bias electromagnet.

    Drivers declare ``current_setpoint_a``, ``compliance_voltage_v``, ``measured_current_a``,
    ``measured_voltage_v`` and ``output_enabled`` (the latter two setters guarded by the
    methods below). The magnet is only ever moved by :meth:`ramp_to`.
    """

    role_kind = "current_source"
    station_limits = {
        "current_a": LimitSpec("range", "current_a", required=True, doc="[min, max] current in A, containing 0"),
        "compliance_v": LimitSpec("max", "compliance_v", required=True,
                                  doc="compliance voltage in V, applied at connect and never exceeded"),
        # bounds a magnet supply can honour: a step above 0.5 A is a jump, not a ramp; below 0.1 mA a
        # ramp over the range takes tens of thousands of steps; a rate outside [1 mA/s, 10 A/s] is
        # either hours per ampere or faster than an inductive load follows
        "ramp_rate_a_per_s": LimitSpec("positive", required=True, doc="ramp rate in A/s",
                                       bounds=RAMP_RATE_BOUNDS_A_PER_S),
        "ramp_step_a": LimitSpec("positive", required=True, doc="largest single step in A",
                                 bounds=RAMP_STEP_BOUNDS_A),
    }
    required_members = ("current_setpoint_a", "compliance_voltage_v", "measured_current_a",
                        "measured_voltage_v", "output_enabled")
    #: |current| below which the magnet counts as de-energised
    zero_tolerance_a: float = 0.01
    #: read-backs allowed for the coil to decay after a ramp to zero before refusing output off
    settle_polls: int = 50

    current_setpoint_a: float
    compliance_voltage_v: float
    measured_current_a: float
    measured_voltage_v: float
    output_enabled: bool

    @classmethod
    def _range_must_contain_zero(cls, key: str) -> bool:
        return key == "current_a"

    @property
    def ramp_rate_a_per_s(self) -> float:
        return self.parameters.get("ramp_rate_a_per_s", 0.1)

    @property
    def ramp_step_a(self) -> float:
        return self.parameters.get("ramp_step_a", 0.01)

    def apply_compliance(self) -> None:
        """Apply the station's compliance voltage (its ``compliance_v``)."""
        self.compliance_voltage_v = self.limits["compliance_v"][1]

    # -- ramping
    def ramp_steps(self, start_a: float, target_a: float) -> list[float]:
        """Setpoints from ``start_a`` (exclusive) to ``target_a`` (inclusive), each step <= ramp_step_a."""
        distance = target_a - start_a
        count = max(1, math.ceil(abs(distance) / self.ramp_step_a - 1e-9)) if distance else 0
        return [start_a + distance * k / count for k in range(1, count + 1)]

    def ramp_to(self, target_a: float) -> None:
        """Ramp the current from its read-back value to ``target_a`` at the station's rate.

        Steps of at most ``ramp_step_a``; with ``pacing = "real"`` each step is followed by a
        wait of step/rate (the one legitimate wait: a real magnet's L dI/dt). If the output is
        off it is switched on at 0 A first (unless the target is 0). Interrupting a ramp leaves a
        valid setpoint behind, so ``safe_state()`` can always ramp back to zero afterwards.
        """
        self.check_limit("current_a", target_a, name="target current_a")
        target_a = float(target_a)
        cls = type(self)
        if not self.output_enabled:
            # no current flows, so programming 0 A cannot jump the magnet
            self.write(cls.current_setpoint_a.command(self, 0.0, guarded=False))
            if target_a == 0.0:
                self.synchronise()
                self.check_errors("setting 0 A with the output off")
                return
            self._send_settings([Setting("output_enabled", True,
                                         cls.output_enabled.command(self, True, guarded=False))])
            start = 0.0
        else:
            start = self._ramp_start(target_a)
        self._ramp(start, target_a)

    def _ramp_start(self, target_a: float) -> float:
        """Where a ramp starts (output on): of the set-point and the measured current, the one
        farther from the target -- a read-back lagging the set-points just written must not make
        the ramp skip them (nor a set-point the coil has not followed skip the real current)."""
        measured = self._measured_current_output_on()
        setpoint = float(self.current_setpoint_a)
        if math.isnan(measured):  # overflow / no reading: what was programmed
            return setpoint
        return setpoint if abs(setpoint - target_a) >= abs(measured - target_a) else float(measured)

    def _measured_current_output_on(self) -> float:
        """The measured current, the caller having just read that the output is on (drivers whose
        ``measured_current_a`` checks the output first skip that query here)."""
        return float(self.measured_current_a)

    def _ramp(self, start_a: float, target_a: float) -> None:
        setpoint = type(self).current_setpoint_a
        previous = start_a
        for value in self.ramp_steps(start_a, target_a):
            # a step closer to zero than the start only moves back inside the limits
            inwards = abs(value) <= abs(start_a)
            self.write(setpoint.command(self, value, guarded=False, check_limit=not inwards))
            if self.pacing == "real":
                self.wait(abs(value - previous) / self.ramp_rate_a_per_s)
            previous = value
        self.synchronise()
        self.check_errors(f"ramping to {target_a:g} A")

    def _read_back_current(self) -> float:
        measured = self.measured_current_a
        if math.isnan(measured):  # overflow / no reading: fall back to what was programmed
            measured = self.current_setpoint_a
        return float(measured)

    # -- guards used by the drivers' controls
    def _guard_setpoint_jump(self, value: float) -> None:
        """Direct setpoint changes may move at most one ramp step from the measured current."""
        present = self._read_back_current()
        if abs(float(value) - present) > self.ramp_step_a * (1 + 1e-9):
            raise LimitError(self.role, "current_setpoint_a", value,
                             f"within {self.ramp_step_a:g} A of the present {present:g} A (use ramp_to)",
                             f"station file {self.station_file}, [{self.role}.limits] ramp_step_a")

    def _guard_output_change(self, enable: bool) -> None:
        if enable:
            programmed = self.current_setpoint_a
            if abs(programmed) > self.zero_tolerance_a:
                raise InstrumentError(
                    f"{self.role}: refusing to switch the output on with a setpoint of {programmed:g} A "
                    f"(the magnet would jump); set 0 A first or use ramp_to()")
        else:
            measured = self.measured_current_a
            if not abs(measured) <= self.zero_tolerance_a:  # NaN refuses too
                self._refuse_output_off(measured)

    def _refuse_output_off(self, measured_a: float) -> None:
        raise InstrumentError(
            f"{self.role}: refusing to switch the output off while {measured_a:g} A flows through "
            f"the magnet (tolerance {self.zero_tolerance_a:g} A); ramp_to(0) first")

    def ramp_to_zero(self) -> None:
        """First half of the safe state: bring the magnet to 0 A (output left as it is)."""
        self.ramp_to(0.0)

    def switch_output_off(self) -> None:
        """Second half of the safe state: wait for the coil to decay, then output off (refused if it does not)."""
        if not self.output_enabled:
            return
        for _ in range(self.settle_polls):
            measured = self._measured_current_output_on()
            if abs(measured) <= self.zero_tolerance_a:
                break
            self.synchronise()  # lets an instrument with a modelled coil catch up
            if self.pacing == "real":
                self.wait(self.ramp_step_a / self.ramp_rate_a_per_s)
        else:
            self._refuse_output_off(measured)
        cls = type(self)
        self._send_settings([Setting("output_enabled", False, cls.output_enabled.command(self, False, guarded=False))])

    def _after_reconnect(self) -> None:
        super()._after_reconnect()
        self.apply_compliance()

    def safe_state(self) -> None:
        """Ramp to zero from the read-back, then switch the output off."""
        self.ramp_to_zero()
        self.switch_output_off()


# ====================================================================== spectrum analyzer
class SpectrumAnalyzer(Instrument):
    """A swept spectrum analyzer read as binary float32 traces.

    Drivers declare ``center_hz``, ``span_hz``, ``start_hz``, ``stop_hz``, ``rbw_hz``,
    ``reference_level_dbm``, ``points``, ``sweep_time_s`` (read), ``continuous``, plus
    ``trace_query``, ``trace_big_endian``, ``sweep_and_wait_command`` and ``peak()``.
    """

    role_kind = "spectrum_analyzer"
    station_limits = {
        "frequency_hz": LimitSpec("range", "frequency_hz", doc="[min, max] of centre/start/stop in Hz"),
        "max_input_dbm": LimitSpec("max", "reference_level_dbm",
                                   doc="largest input expected in dBm (bounds the reference level)"),
    }
    required_members = ("center_hz", "span_hz", "start_hz", "stop_hz", "rbw_hz", "reference_level_dbm",
                        "points", "sweep_time_s", "continuous")
    #: settings a station may apply in ``[spectrum_analyzer.settings]``
    settings_keys = ("center_hz", "span_hz", "rbw_hz", "points", "reference_level_dbm")
    #: extra seconds on top of the sweep time before a sweep counts as unanswered
    sweep_timeout_margin_s: float = 2.0
    #: sweeps per measurement (averaging is not switched on by these drivers)
    averages: int = 1
    trace_query: str = ""
    trace_big_endian: bool = False
    sweep_and_wait_command: str = "INIT:IMM;*OPC?"
    #: a query joined to the sweep message that tells, in the same round trip, whether the sweep
    #: was overloaded (driver-specific; "" = not asked); parsed by ``_parse_sweep_status``
    sweep_status_query: str = ""

    center_hz: float
    span_hz: float
    start_hz: float
    stop_hz: float
    rbw_hz: float
    reference_level_dbm: float
    points: int
    sweep_time_s: float
    continuous: bool

    def __init__(self, transport, **kwargs):
        super().__init__(transport, **kwargs)
        self._axis_hz: Optional[np.ndarray] = None
        self._sweep_time_s: Optional[float] = None
        self._continuous: Optional[bool] = None  # unknown until set
        #: whether the last single sweep was overloaded (from ``sweep_status_query``)
        self.overloaded = False

    _AXIS_SETTINGS = frozenset({"center_hz", "span_hz", "start_hz", "stop_hz", "points"})
    _TIMING_SETTINGS = frozenset({"center_hz", "span_hz", "start_hz", "stop_hz", "points", "rbw_hz"})

    def _settings_changed(self, names: tuple[str, ...]) -> None:
        if self._AXIS_SETTINGS.intersection(names):
            self._axis_hz = None
        if self._TIMING_SETTINGS.intersection(names):
            self._sweep_time_s = None
        if "continuous" in names:
            self._continuous = None  # re-learnt on the next single sweep

    def configure(self, center_hz: Optional[float] = None, span_hz: Optional[float] = None,
                  rbw_hz: Optional[float] = None, points: Optional[int] = None,
                  reference_level_dbm: Optional[float] = None) -> None:
        """Set the given settings as one batch (all validated first), then drain the error queue."""
        values = [(name, value) for name, value in (
            ("center_hz", center_hz), ("span_hz", span_hz), ("rbw_hz", rbw_hz), ("points", points),
            ("reference_level_dbm", reference_level_dbm)) if value is not None]
        if center_hz is not None and span_hz is not None:
            self.check_limit("frequency_hz", center_hz - span_hz / 2.0, name="start_hz (centre - span/2)")
            self.check_limit("frequency_hz", center_hz + span_hz / 2.0, name="stop_hz (centre + span/2)")
        if points is not None and (not _is_number(points) or int(points) != points):
            raise LimitError(self.role, "points", points, "whole numbers", "the role's rules")
        self._apply([(name, int(value) if name == "points" else value) for name, value in values])

    # -- sweeping and reading
    def frequencies_hz(self) -> np.ndarray:
        """The frequency axis of the trace (read from the instrument once per configuration)."""
        if self._axis_hz is None:
            start, stop, points = self.start_hz, self.stop_hz, int(self.points)
            self._axis_hz = np.linspace(start, stop, points)
        return self._axis_hz

    def _sweep_time_cached(self) -> float:
        if self._sweep_time_s is None:
            self._sweep_time_s = float(self.sweep_time_s)
        return self._sweep_time_s

    def _ensure_single_sweep_mode(self) -> None:
        if self._continuous is not False:
            self.continuous = False
            self._continuous = False

    def single_sweep(self) -> None:
        """Take one sweep and return when it is complete (``*OPC?`` with a sweep-sized timeout)."""
        self._ensure_single_sweep_mode()
        needed_s = self._sweep_time_cached() * self.averages + self.sweep_timeout_margin_s
        base_s = self.transport.timeout_s
        if needed_s > base_s:
            self.transport.timeout_s = needed_s
        command = self.sweep_and_wait_command
        if self.sweep_status_query:
            command += ";" + self.sweep_status_query
        try:
            reply = self.query(command)
        finally:
            if needed_s > base_s:
                self.transport.timeout_s = base_s
        done, _, status = reply.partition(";")
        if done.strip() not in ("1", "+1") or (self.sweep_status_query and not status):
            raise InstrumentError(f"{self.role}: unexpected reply {reply!r} to {command!r}")
        self.overloaded = self._parse_sweep_status(status) if self.sweep_status_query else False

    def _parse_sweep_status(self, reply: str) -> bool:
        """The reply to ``sweep_status_query`` -> overloaded (drivers that ask implement it)."""
        raise NotImplementedError

    def _settings_reapply(self) -> None:
        """Forget every cached setting (after a reconnect the instrument is asked again)."""
        self._settings_changed(tuple(self._AXIS_SETTINGS | self._TIMING_SETTINGS | {"continuous"}))

    def _after_reconnect(self) -> None:
        super()._after_reconnect()
        self._settings_reapply()

    def read_trace(self) -> tuple[np.ndarray, np.ndarray]:
        """(frequencies in Hz, power in dBm as float32) of the last sweep, via a REAL,32 block."""
        axis = self.frequencies_hz()
        payload = self.query_block(self.trace_query)
        trace = decode_real32(payload, self.trace_big_endian, len(axis), self.role)
        return axis, trace

    def measure(self) -> tuple[np.ndarray, np.ndarray]:
        """One sweep and its trace: two round trips once configured."""
        self.single_sweep()
        return self.read_trace()

    def peak(self) -> tuple[float, float]:
        """(frequency in Hz, power in dBm) of the highest point of the last sweep (NaN if none)."""
        raise NotImplementedError

    def safe_state(self) -> None:
        self.continuous = True
        self._continuous = True


def decode_real32(payload: bytes, big_endian: bool, points: int, role: str = "spectrum_analyzer") -> np.ndarray:
    """Decode a REAL,32 trace payload and check it is plausible for a dBm trace.

    A wrong byte order turns dBm values into denormals or huge numbers; refusing those catches
    a format/byte-order mismatch instead of handing garbage to the trainer.
    """
    if len(payload) != 4 * points:
        raise InstrumentError(f"{role}: trace block holds {len(payload)} bytes, expected {4 * points} "
                              f"({points} float32 points)")
    trace = np.frombuffer(payload, dtype=">f4" if big_endian else "<f4").astype(np.float32)
    magnitude = np.abs(trace)
    if magnitude.size and 1e-6 <= magnitude.min() and magnitude.max() <= 1000.0:
        return trace  # every value a plausible dBm value (NaN fails these comparisons): the usual case
    plausible = np.isfinite(trace) & (magnitude <= 1000.0) & ((trace == 0) | (magnitude >= 1e-6))
    if not plausible.all():
        bad = int(np.count_nonzero(~plausible))
        raise InstrumentError(
            f"{role}: {bad} of {points} trace values are not plausible dBm values "
            f"(e.g. {trace[~plausible][0]!r}); byte order or data format mismatch?")
    return trace
