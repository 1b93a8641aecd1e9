"""A station: the rig described by a TOML file (which driver, where, and the limits of this rig).

Everything in the file is validated before any instrument is touched; errors name the file,
the key and what is allowed. ``connect()`` opens each role, reads its identity, drains its old
errors, applies the vendor set-up and the station settings. Leaving the ``with`` block always
puts the rig in its safe state, step by step, even when a step fails::

    with Station.load("instruments/stations/lab-example.toml") as station:
        station.current_source.ramp_to(1.8)
        station.signal_generator.configure_cw(2.05e9, -10.0)
        freqs_hz, dbm = station.spectrum_analyzer.measure()

Drivers are named as ``"module:Class"`` strings and looked up in :mod:`instruments.registry` at
load time (never imported from an arbitrary path), so this package never imports ``drivers`` itself.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from . import registry
from .errors import (InstrumentError, LimitError, LinkError, NoAnswerError, StationFileError, TransportTimeout,
                     WrongInstrumentError)
from .interrupts import held_while_safe
from .roles import CurrentSource, Instrument, SignalGenerator, SpectrumAnalyzer, unit_of
from .safe_state import SafeStateReport, UnsafeStateError, record

#: roles in the order they are connected (and, reversed where it matters, made safe)
ROLES = ("signal_generator", "current_source", "spectrum_analyzer")
ROLE_CLASSES: dict[str, type] = {
    "signal_generator": SignalGenerator,
    "current_source": CurrentSource,
    "spectrum_analyzer": SpectrumAnalyzer,
}
#: the drivers shipped with labpgt, per role (installed ``labpgt.drivers`` entry points work too)
KNOWN_DRIVERS = {role: tuple(n for n, (r, _, _) in registry.PROJECT_DRIVERS.items() if r == role)
                 for role in ("signal_generator", "current_source", "spectrum_analyzer")}
STATION_KEYS = ("name", "pacing")
PACINGS = ("virtual", "real")
ROLE_KEYS = ("driver", "resource", "options", "limits")
SA_ROLE_KEYS = ROLE_KEYS + ("settings",)

RESOURCE_FORMS = (
    "TCPIP[n]::host::port::SOCKET",
    "TCPIP[n]::host[::device]::INSTR",
    "GPIB[n]::address[::secondary]::INSTR",
    "USB[n]::vendor::product::serial[::interface]::INSTR",
    "ASRL<port>::INSTR",
)
_RESOURCE_PATTERNS = (
    re.compile(r"^TCPIP\d*::[A-Za-z0-9_.\-]+::(?P<port>\d{1,5})::SOCKET$", re.IGNORECASE),
    re.compile(r"^TCPIP\d*::[A-Za-z0-9_.\-]+(::[A-Za-z0-9_,.\-]+)?::INSTR$", re.IGNORECASE),
    re.compile(r"^GPIB\d*::\d{1,2}(::\d{1,3})?::INSTR$", re.IGNORECASE),
    re.compile(r"^USB\d*::[^:\s]+::[^:\s]+::[^:\s]+(::\d+)?::INSTR$", re.IGNORECASE),
    re.compile(r"^ASRL[^:\s]+::INSTR$", re.IGNORECASE),
)

#: option name -> (check, what is allowed)
_OPTION_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "timeout_s": (lambda v: _number(v) and 0 < float(v) <= 3600, "a number of seconds in (0, 3600]"),
    "visa_library": (lambda v: isinstance(v, str) and bool(v.strip()), 'a VISA library name such as "@py"'),
    "baud_rate": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def resource_is_valid(resource: str) -> bool:
    for pattern in _RESOURCE_PATTERNS:
        match = pattern.match(resource)
        if match:
            port = match.groupdict().get("port")
            return port is None or 0 < int(port) < 65536
    return False


def _found_state(instrument) -> dict:
    """What an instrument was left in, read before anything is changed (queries only)."""
    if isinstance(instrument, SignalGenerator):
        return {"rf_output": bool(instrument.output_enabled), "frequency_hz": float(instrument.frequency_hz),
                "power_dbm": float(instrument.power_dbm)}
    return {"output": bool(instrument.output_enabled), "current_setpoint_a": float(instrument.current_setpoint_a),
            "measured_current_a": float(instrument.measured_current_a)}


def _worth_another_try(exc: BaseException) -> bool:
    """Link faults are; an instrument's own refusal, a limit or an interrupt are not."""
    if isinstance(exc, (NoAnswerError, LinkError)):
        return True
    return isinstance(exc, ValueError) and not isinstance(exc, (LimitError, StationFileError))


def resolve_driver(name: str, role: str, source: str) -> type:
    """A station's ``driver`` name -> the class, through the registry only (``instruments.registry``:
    the shipped drivers and installed ``labpgt.drivers`` entry points), checked to implement ``role``.
    Nothing named in a file is ever imported as a module path."""
    key = f"{role}.driver"
    known = ", ".join(f'"{d}"' for d in registry.available(role))
    try:
        cls = registry.resolve(name)
    except registry.UnknownDriver as exc:
        raise StationFileError(source, key, str(exc), known) from exc
    except ImportError as exc:
        raise StationFileError(source, key, f"driver {name!r} could not be loaded ({exc})", known) from exc
    role_class = ROLE_CLASSES[role]
    if not isinstance(cls, type) or not issubclass(cls, role_class):
        raise StationFileError(source, key, f"{name} is not a {role_class.__name__} driver", known)
    missing = [m for m in role_class.required_members if not hasattr(cls, m)]
    if missing:
        raise StationFileError(source, key, f"{name} does not implement {', '.join(missing)}", known)
    return cls


@dataclass
class RoleConfig:
    role: str
    driver_name: str
    driver: type
    resource: str
    options: dict
    limits: dict
    settings: dict = field(default_factory=dict)


# ====================================================================== the station
class Station:
    """A validated station file; ``connect()`` (or ``with``) opens the instruments."""

    def __init__(self, config: Mapping, config_text: str, source: str, path: Optional[Path] = None, *,
                 resources: Optional[Mapping[str, str]] = None, transports: Optional[Mapping[str, object]] = None,
                 wait: Optional[Callable[[float], None]] = None):
        self.config_text = config_text
        self.source = source
        self.path = path
        self._transports = dict(transports or {})
        self._wait = wait
        self.instruments: dict[str, Instrument] = {}
        self.identities: dict[str, str] = {}
        self.connect_errors: dict[str, list[tuple[int, str]]] = {}
        self.found_states: dict[str, dict] = {}
        self.name, self.pacing, self.roles = self._validate(config, dict(resources or {}))

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path, **kwargs) -> "Station":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise StationFileError(str(path), "(file)", f"cannot be read: {exc}") from exc
        return cls.from_text(text, str(path), _path=path, **kwargs)

    @classmethod
    def from_text(cls, text: str, source_name: str = "<station text>", *, _path: Optional[Path] = None,
                  **kwargs) -> "Station":
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise StationFileError(source_name, "(file)", f"is not valid TOML: {exc}") from exc
        return cls(config, text, source_name, _path, **kwargs)

    def _validate(self, config: Mapping, resources: dict):
        source = self.source
        allowed_top = ("station",) + ROLES
        for key in config:
            if key not in allowed_top:
                raise StationFileError(source, key, "is not a known section", ", ".join(allowed_top))
        for key in resources:
            if key not in ROLES:
                raise StationFileError(source, f"resources override {key!r}", "is not a role", ", ".join(ROLES))
        station = config.get("station", {})
        if not isinstance(station, dict):
            raise StationFileError(source, "station", "must be a table", "[station] with name, pacing")
        for key in station:
            if key not in STATION_KEYS:
                raise StationFileError(source, f"station.{key}", "is not a known key", ", ".join(STATION_KEYS))
        name = station.get("name", Path(source).stem)
        if not isinstance(name, str):
            raise StationFileError(source, "station.name", f"must be a string, got {name!r}", "a string")
        pacing = station.get("pacing", "virtual")
        if pacing not in PACINGS:
            raise StationFileError(source, "station.pacing", f"is {pacing!r}", " or ".join(f'"{p}"' for p in PACINGS))
        roles = {}
        for role in ROLES:
            roles[role] = self._validate_role(role, config.get(role), resources.get(role))
        return name, pacing, roles

    def _validate_role(self, role: str, table, resource_override: Optional[str]) -> RoleConfig:
        source = self.source
        allowed = SA_ROLE_KEYS if role == "spectrum_analyzer" else ROLE_KEYS
        if table is None:
            raise StationFileError(source, role, "is missing: every station needs all three roles",
                                   f"[{role}] with {', '.join(allowed)}")
        if not isinstance(table, dict):
            raise StationFileError(source, role, "must be a table", f"[{role}] with {', '.join(allowed)}")
        for key in table:
            if key not in allowed:
                raise StationFileError(source, f"{role}.{key}", "is not a known key", ", ".join(allowed))
        for key in ("driver", "resource"):
            if key not in table and not (key == "resource" and resource_override):
                raise StationFileError(source, f"{role}.{key}", "is missing", "driver and resource are required")
        driver_cls = resolve_driver(table["driver"], role, source)
        resource = resource_override or table["resource"]
        key = f"{role}.resource" if not resource_override else f"{role}.resource (override)"
        if not isinstance(resource, str) or not resource_is_valid(resource):
            raise StationFileError(source, key, f"{resource!r} is not a VISA resource string",
                                   "; ".join(RESOURCE_FORMS))
        options = self._sub_table(table, role, "options")
        for option, value in options.items():
            if option not in driver_cls.transport_options:
                raise StationFileError(source, f"{role}.options.{option}",
                                       f"is not an option of {table['driver']}", ", ".join(driver_cls.transport_options))
            check, what = _OPTION_RULES.get(option, (lambda v: True, "any value"))
            if not check(value):
                raise StationFileError(source, f"{role}.options.{option}", f"is {value!r}", what)
        limits = self._sub_table(table, role, "limits")
        for key_, problem, allowed_ in driver_cls.station_limit_problems(limits):
            raise StationFileError(source, f"{role}.limits.{key_}", problem, allowed_)
        settings = self._sub_table(table, role, "settings") if role == "spectrum_analyzer" else {}
        self._validate_settings(role, driver_cls, limits, settings)
        return RoleConfig(role, table["driver"], driver_cls, resource, options, limits, settings)

    def _sub_table(self, table: dict, role: str, name: str) -> dict:
        value = table.get(name, {})
        if not isinstance(value, dict):
            raise StationFileError(self.source, f"{role}.{name}", "must be a table", f"[{role}.{name}]")
        return dict(value)

    def _validate_settings(self, role: str, driver_cls: type, limits: dict, settings: dict) -> None:
        keys = SpectrumAnalyzer.settings_keys
        allowed_limits = driver_cls.limits_for_station(limits)
        for key, value in settings.items():
            if key not in keys:
                raise StationFileError(self.source, f"{role}.settings.{key}", "is not a known setting", ", ".join(keys))
            if not _number(value) or (key == "points" and not float(value).is_integer()):
                raise StationFileError(self.source, f"{role}.settings.{key}", f"is {value!r}",
                                       "a whole number" if key == "points" else f"a number in {unit_of(key)}")
            quantity = getattr(driver_cls, key).limit
            bounds = allowed_limits.get(quantity) if quantity else None
            if bounds and not bounds[0] <= float(value) <= bounds[1]:
                raise StationFileError(self.source, f"{role}.settings.{key}", f"{value!r} is outside the limits",
                                       f"[{bounds[0]:g}, {bounds[1]:g}] {unit_of(quantity)}")

    @property
    def limits(self) -> dict[str, dict]:
        """The ``[<role>.limits]`` tables as written in the file."""
        return {role: dict(cfg.limits) for role, cfg in self.roles.items()}

    # ------------------------------------------------------------------ connecting
    def connect(self) -> "Station":
        if self.instruments:
            return self
        try:
            for role in ROLES:
                self._connect_role(self.roles[role])
        except BaseException as failure:
            # an instrument that does not answer is not asked again (each try would time out)
            report = self._shutdown(skip_failed=isinstance(failure, NoAnswerError))
            if report is not None and not report.safe:
                failure.add_note("while leaving the connected roles safe: " + str(report))
                failure.safe_state_report = report  # type: ignore[attr-defined]
            raise
        return self

    def _connect_role(self, cfg: RoleConfig) -> None:
        role = cfg.role
        transport = self._transports.get(role)
        if transport is None:
            try:
                transport = cfg.driver.open_transport(cfg.resource, cfg.options)
            except TransportTimeout as exc:
                raise NoAnswerError(role, cfg.resource, exc.seconds, getattr(exc, "detail", "")) from exc
        kwargs = {"wait": self._wait} if self._wait is not None else {}
        instrument = cfg.driver(transport, role=role, limits=cfg.limits, station_file=self.source,
                                pacing=self.pacing, **kwargs)
        self.instruments[role] = instrument
        self._failed_role = role
        identity = instrument.identify()
        self.identities[role] = identity
        self._check_identity(cfg, identity)
        model_ranges = cfg.driver.ranges_for_identity(identity)
        if model_ranges != cfg.driver.instrument_ranges:
            for key, problem, allowed in cfg.driver.station_limit_problems(cfg.limits, model_ranges):
                raise StationFileError(self.source, f"{role}.limits.{key}", f"{problem} (model {identity!r})", allowed)
            instrument._set_instrument_ranges(model_ranges, model=identity.split(",")[1].strip()
                                              if "," in identity else identity)
            instrument._apply_station_limits(cfg.limits)
        self.connect_errors[role] = instrument.errors()  # left over from before we connected
        if isinstance(instrument, SignalGenerator):
            if self.record_found_state:
                self.found_states[role] = _found_state(instrument)
            instrument.safe_state()  # RF off first, whatever state it was left in
        instrument.initialize()
        if isinstance(instrument, SignalGenerator):
            instrument.park(rf_already_off=True)  # a setting inside the limits, read back
        if isinstance(instrument, CurrentSource):
            if self.record_found_state:
                self.found_states[role] = _found_state(instrument)
            instrument.apply_compliance()
        if isinstance(instrument, SpectrumAnalyzer) and cfg.settings:
            instrument.configure(**{k: (int(v) if k == "points" else float(v)) for k, v in cfg.settings.items()})
        self._failed_role = None

    _failed_role: Optional[str] = None
    #: labpgt check sets it: ``found_states`` then holds, per role, what the instrument was left in
    record_found_state = False


    def _check_identity(self, cfg: RoleConfig, identity: str) -> None:
        """Refuse an instrument that answers as another model than its driver expects (nothing but the
        identity query was sent to it, and nothing more will be: it is dropped from the station)."""
        if cfg.driver.identity_matches(identity):
            return
        others = [other for other in self.roles.values()
                  if other.role != cfg.role and other.driver.identity_matches(identity)]
        instrument = self.instruments.pop(cfg.role, None)
        self._failed_role = None
        if instrument is not None:
            try:
                instrument.close()
            except Exception:  # noqa: BLE001 - the refusal below is the news
                pass
        message = (f"{cfg.role} at {cfg.resource} answers *IDN? as {identity!r}, but its driver {cfg.driver_name} "
                   f"expects {cfg.driver.model_family or cfg.driver.__name__}")
        if others:
            other = others[0]
            message += (f"; that is the model of this station's {other.role} ({other.driver_name}, at "
                        f"{other.resource}): the addresses of {cfg.role} and {other.role} look swapped in "
                        f"{self.source}")
        raise WrongInstrumentError(message + "; nothing was sent to it but the identity query")

    def _get(self, role: str):
        try:
            return self.instruments[role]
        except KeyError:
            raise InstrumentError(f"station {self.name!r}: {role} is not connected (use connect() or 'with')") from None

    @property
    def signal_generator(self) -> SignalGenerator:
        return self._get("signal_generator")

    @property
    def current_source(self) -> CurrentSource:
        return self._get("current_source")

    @property
    def spectrum_analyzer(self) -> SpectrumAnalyzer:
        return self._get("spectrum_analyzer")

    # ------------------------------------------------------------------ safety
    def make_safe(self, *, skip: tuple[str, ...] = ()) -> list[str]:
        """RF off -> current ramped to zero -> current output off -> analyzer continuous.

        Every step is attempted even if an earlier one failed; returns what failed.
        """
        steps = (
            ("signal_generator", "RF off", lambda sg: sg.safe_state()),
            ("current_source", "ramp to 0 A", lambda cs: cs.ramp_to_zero()),
            ("current_source", "output off", lambda cs: cs.switch_output_off()),
            ("spectrum_analyzer", "continuous sweep", lambda sa: sa.safe_state()),
        )
        problems = []
        with held_while_safe():
            self._run_safe_steps(steps, skip, problems)
        return problems

    def _run_safe_steps(self, steps, skip, problems) -> None:
        for role, what, step in steps:
            instrument = self.instruments.get(role)
            if instrument is None or role in skip:
                continue
            for attempt in range(1, self.safe_attempts + 1):
                try:
                    step(instrument)
                    break
                except (Exception, KeyboardInterrupt) as exc:  # a second Ctrl-C must not skip the other steps
                    if attempt == self.safe_attempts or not _worth_another_try(exc):
                        problems.append(f"{role}: {what} failed: {type(exc).__name__}: {exc}")
                        break
                    try:  # a link fault: clear (or reconnect) and try the step again
                        instrument.recover()
                    except Exception:  # noqa: BLE001 - the next attempt reports what is wrong
                        pass

    #: tries per safe step when the link fails (a timeout, a garbled reply, a dropped connection)
    safe_attempts = 3

    def read_back_safe_state(self, problems: Optional[list] = None, *, skip: tuple[str, ...] = ()) -> SafeStateReport:
        """Read the rig's state back (RF output, current output, set-point and measured current,
        analyzer sweep mode) into a :class:`SafeStateReport`; a value that cannot be read stays None
        (not safe). Sends queries only -- but after a link fault (a timeout, a garbled reply) the
        instrument is cleared, or reconnected with its vendor set-up, and asked again
        (``safe_attempts`` times in all)."""
        threshold = CurrentSource.zero_tolerance_a
        cs = self.instruments.get("current_source")
        if cs is not None:
            threshold = cs.zero_tolerance_a
        unreached = tuple(role for role in self.roles if role not in self.instruments or role in skip)
        report = SafeStateReport(station=f"station {self.name!r}", threshold_a=threshold,
                                 resources={role: cfg.resource for role, cfg in self.roles.items()},
                                 roles=tuple(self.roles), unreached=unreached, problems=list(problems or []))
        readings = (
            ("signal_generator", "rf_output", lambda sg: bool(sg.output_enabled)),
            ("current_source", "current_output", lambda cs: bool(cs.output_enabled)),
            ("current_source", "current_setpoint_a", lambda cs: float(cs.current_setpoint_a)),
            ("current_source", "measured_current_a", lambda cs: float(cs.measured_current_a)),
            ("spectrum_analyzer", "analyzer_continuous", lambda sa: bool(sa.continuous)),
        )
        for role, name, read in readings:
            instrument = self.instruments.get(role)
            if instrument is None or role in skip:  # skipped: it did not answer; its state stays unknown
                continue
            for attempt in range(1, self.safe_attempts + 1):
                try:
                    setattr(report, name, read(instrument))
                    break
                except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - unknown is reported as not safe
                    if attempt == self.safe_attempts or not _worth_another_try(exc):
                        report.problems.append(f"{role}: reading back {name} failed: {type(exc).__name__}: {exc}")
                        break
                    try:  # a link fault (a timeout, a garbled reply): clear or reconnect, and ask again
                        instrument.recover()
                    except Exception:  # noqa: BLE001 - the next attempt reports what is wrong
                        pass
        return report

    def leave_safe(self, *, skip: tuple[str, ...] = ()) -> SafeStateReport:
        """The safe steps (:meth:`make_safe`), then the read-back that says whether they worked.

        The report is also kept in ``instruments.safe_state.REPORTS`` (the command line prints it).
        Ctrl-C and SIGTERM are held until the read-back is recorded: one that arrives while the
        current ramps down must not cut the read-back off (the command would have nothing to say)."""
        with held_while_safe():
            problems = self.make_safe(skip=skip)
            report = self.read_back_safe_state(problems, skip=skip)
            self.safe_report = record(report)
        return report

    #: the last :class:`SafeStateReport` of this station (None until it was made safe)
    safe_report: Optional[SafeStateReport] = None

    def _shutdown(self, skip_failed: bool = False) -> SafeStateReport:
        skip = (self._failed_role,) if skip_failed and self._failed_role else ()
        report = self.leave_safe(skip=skip) if self.instruments else None
        for role, instrument in list(self.instruments.items()):
            try:
                instrument.close()
            except Exception as exc:
                if report is not None:
                    report.problems.append(f"{role}: close failed: {exc}")
        self.instruments.clear()
        return report

    def close(self) -> None:
        """Leave the rig safe and close every transport; raises UnsafeStateError unless the read-back
        is safe (InstrumentError when it is safe but a step failed, e.g. the analyzer's sweep mode)."""
        self._raise_for(self._shutdown())

    def _raise_for(self, report: Optional[SafeStateReport]) -> None:
        if report is None:
            return
        if not report.safe:
            raise UnsafeStateError(report)
        if report.problems:
            raise InstrumentError(f"station {self.name!r}: leaving the rig safe had problems: "
                                  + "; ".join(report.problems) + f" ({report})")

    def __enter__(self) -> "Station":
        return self.connect()

    def __exit__(self, exc_type, exc, tb) -> bool:
        report = self._shutdown()
        if exc is None:
            self._raise_for(report)
        elif report is not None and (report.problems or not report.safe):
            exc.add_note(f"station {self.name!r}: leaving the rig safe: {report}")
            exc.safe_state_report = report  # type: ignore[attr-defined]
        return False

    def describe_roles(self) -> list[str]:
        """One line per role: what it will connect to (``signal_generator: keysight-mxg at TCPIP::...``)."""
        return [f"{role}: {cfg.driver_name} at {cfg.resource}" for role, cfg in self.roles.items()]

    def moved_resources(self, other: "Station") -> dict[str, tuple[str, str]]:
        """``other`` as this same rig moved to new addresses: ``{role: (old, new)}`` for each role whose
        resource differs. Anything else that differs (drivers, limits, settings, options, pacing) is
        refused with a StationFileError naming it: a recorded experiment continues only on its own rig."""
        allowed = "only instrument addresses (resource) may change on --resume"
        if self.pacing != other.pacing:
            raise StationFileError(other.source, "station.pacing", f"is {other.pacing!r}, recorded {self.pacing!r}",
                                   allowed)
        moved = {}
        for role, mine in self.roles.items():
            theirs = other.roles[role]
            compared = {"driver": (mine.driver_name, theirs.driver_name), "options": (mine.options, theirs.options),
                        "limits": (mine.limits, theirs.limits), "settings": (mine.settings, theirs.settings)}
            for key, (recorded, given) in compared.items():
                if recorded != given:
                    raise StationFileError(other.source, f"{role}.{key}", "differs from the recorded station's",
                                           allowed)
            if mine.resource != theirs.resource:
                moved[role] = (mine.resource, theirs.resource)
        return moved

    def __repr__(self) -> str:
        state = "connected" if self.instruments else "not connected"
        return f"<Station {self.name!r} from {self.source}, {state}>"
