"""labpgt: train neural networks through a magnonic ring (or its simulator), every measurement in an HDF5 run file."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from instruments.errors import InstrumentError
from instruments.interrupts import Terminated, terminate_as_interrupt
from labpgt import __version__, logs
from labpgt.argtypes import positive_int


# --------------------------------------------------------------------------- sim serve
def fault_settings(text: str | None):
    """``--faults``: a TOML file with a [faults] table (its table), or else a spec string (as given)."""
    try:
        is_file = bool(text) and Path(text).is_file()
    except OSError:  # e.g. a long spec is no valid file name: it is a spec
        is_file = False
    if not is_file:
        return text
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(Path(text).read_text()).get("faults", {})
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{text}: not valid TOML: {exc}") from None


def cmd_sim_serve(args) -> int:
    from sim.server import SimServer

    faults = fault_settings(args.faults)
    with SimServer(seed=args.seed, flavour=args.flavour, realtime=args.realtime, faults=faults,
                   start_state=args.start_state, control_port=args.control_port) as server:
        text = server.station_toml()
        path = Path(args.station_out)
        path.write_text(text)
        print(text)
        print(f"# station file written to {path.resolve()}")
        print(f"# use: labpgt check --station {path}    (Ctrl-C stops the simulated instruments)", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            print("stopping the simulated instruments")
    return 0


# --------------------------------------------------------------------------- check
def cmd_check(args) -> int:
    from instruments.check import check_station
    from instruments.station import Station

    # every instrument is attempted, so the station is connected role by role by the check itself
    if args.station is not None:
        report = check_station(Station.load(args.station))
    else:
        from sim.server import SimServer

        with SimServer(seed=args.seed) as server:
            report = check_station(Station.from_text(server.station_toml(), source_name="<embedded simulated station>"))
    print(report)
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- measure
def cmd_measure(args) -> int:
    import numpy as np

    from labpgt.experiment.bench import measure_spectrum
    from labpgt.experiment.embedded import open_station

    with open_station(args.station, seed=args.seed) as (station, _):
        spectrum = measure_spectrum(station, frequency_hz=args.frequency, power_dbm=args.power,
                                    current_a=args.current, center_hz=args.center, span_hz=args.span,
                                    names={"frequency_hz": "--frequency", "power_dbm": "--power",
                                           "current_a": "--current"})
    freqs, dbm = spectrum.frequency_hz, spectrum.trace_dbm
    peaks = spectrum.peaks(count=args.peaks)
    print(f"spectrum: {freqs[0] / 1e9:.6f}-{freqs[-1] / 1e9:.6f} GHz, {len(freqs)} points, "
          f"floor {np.median(dbm):.1f} dBm")
    if not peaks:
        print("no line stands out of the noise floor")
    for rank, peak in enumerate(peaks, 1):
        print(f"peak {rank}: {peak.frequency_hz / 1e9:.6f} GHz  {peak.power_dbm:7.2f} dBm")
    if args.plot:
        from labpgt.report.plots import plot_trace

        plot_trace(freqs, dbm, peaks, args.plot,
                   title=f"drive {args.frequency / 1e9:.4f} GHz, {args.power:g} dBm, {args.current:g} A")
        print(f"plot written to {args.plot}")
    return 0



# --------------------------------------------------------------------------- sweep
def _sweep_window(args, kind: str, station, current_a: float, line_hz: float | None) -> dict:
    """The analyzer window of a sweep: as given, or the kind's default from the station."""
    from labpgt.experiment.probe import PROBE_POINTS, probe_window

    sa = station.roles["spectrum_analyzer"]
    sa_limits = sa.driver.limits_for_station(sa.limits).get("frequency_hz")
    settings = sa.settings
    if kind == "current":  # the whole band the drive can reach (where a usable line must be)
        sg = station.roles["signal_generator"]
        g_lo, g_hi = sg.driver.limits_for_station(sg.limits).get("frequency_hz", sa_limits)
        lo, hi = max(g_lo, sa_limits[0]), min(g_hi, sa_limits[1])
        center, span, points = 0.5 * (lo + hi), hi - lo, 2001
    elif kind == "lock":
        center, points = line_hz, int(settings.get("points", 401))
        span = max(float(settings.get("span_hz", 20e6)), 4 * args.detuning_hz)
    else:  # drift, spectrum: the probe's window at this current
        center, span = probe_window(sa_limits, current_a)
        points = PROBE_POINTS
    center = args.center_hz if args.center_hz is not None else center
    span = args.span_hz if args.span_hz is not None else span
    points = args.trace_points if args.trace_points is not None else points
    rbw = args.rbw_hz if args.rbw_hz is not None else max(float(settings.get("rbw_hz", 50e3)), span / 2000)
    return {"center_hz": float(center), "span_hz": float(span), "rbw_hz": float(rbw), "points": int(points),
            "reference_level_dbm": float(settings.get("reference_level_dbm", 0.0))}


def _sweep_plan(args, station, line_hz: float | None):
    from labpgt.sweep import plan as plans

    current_a = args.current_a
    window = _sweep_window(args, args.kind, station, current_a if current_a is not None else 1.8, line_hz)
    if args.kind == "current":
        return plans.current_plan(args.from_a, args.to_a, args.points, window)
    if args.kind == "lock":
        return plans.lock_plan(current_a, line_hz, args.detuning_hz, args.detunings, args.power_from_dbm,
                               args.power_to_dbm, args.powers, window)
    if args.kind == "drift":
        return plans.drift_plan(current_a, args.samples, args.interval_s, window)
    return plans.spectrum_plan(current_a, args.repeats, window, args.drive_frequency_hz, args.drive_power_dbm)


def _describe_plan(plan, seconds: list[float], leave_s: float) -> list[str]:
    from labpgt.sweep.timing import describe_seconds

    w = plan.window
    lines = [f"sweep {plan.kind}: {len(plan.points)} points"]
    for axis in plan.axes:
        lines.append(f"  {axis.long_name}: {len(axis.values)} values, {axis.values[0]:g} to {axis.values[-1]:g} "
                     f"{axis.units}")
    lines.append(f"  analyzer: {w.center_hz / 1e9:.6f} GHz ± {w.span_hz / 2e6:g} MHz, RBW {w.rbw_hz / 1e3:g} kHz, "
                 f"{w.points} points")
    rf = sum(p.rf_on for p in plan.points)
    lines.append(f"  RF: {'off' if not rf else f'on at {rf} points'}; bias current "
                 f"{min(p.current_a for p in plan.points):g} to {max(p.current_a for p in plan.points):g} A")
    lines.append(f"  instrument time (estimate from the station's timing): {describe_seconds(sum(seconds) + leave_s)} "
                 f"({describe_seconds(sum(seconds) / max(1, len(seconds)))} a point on average, "
                 f"{describe_seconds(leave_s)} to ramp the magnet back to 0 A)")
    return lines


def _sweep_progress(total_s: float, initial_s: float, kind: str, enabled: bool):
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=round(total_s, 3), initial=round(initial_s, 3), unit="s", dynamic_ncols=True,
               desc=f"sweep {kind} (instrument s)", bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s "
               "[{elapsed}<{remaining}]")
    return bar, (lambda k, seconds: bar.update(round(seconds, 3)))


def cmd_sweep(args) -> int:
    import h5py
    import shlex
    import time as _time

    from labpgt.experiment.embedded import loaded_station, open_station
    from labpgt.experiment.probe import probe_window, reference_probe
    from labpgt.sweep.executor import SweepExecutor, station_limits
    from labpgt.sweep.file import SweepFile, check_is_sweep_file
    from labpgt.sweep.plan import plan_from_json
    from labpgt.sweep.plots import plot_sweep
    from labpgt.sweep.timing import StationTiming

    recorded_station, embedded = None, args.station is None
    if args.resume:
        check_is_sweep_file(args.resume)
        with h5py.File(args.resume, "r") as f:
            plan = plan_from_json(f.attrs["plan"])
            embedded = bool(f.attrs["simulated"]) and args.station is None
            recorded_station = None if (embedded or args.station) else str(f.attrs["station_toml"])
        if plan.kind != args.kind:
            raise ValueError(f"{args.resume} holds a {plan.kind} sweep, not {args.kind}; resume it with "
                             f"labpgt sweep {plan.kind} --resume {args.resume}")
    elif args.kind != "current" and args.current_a is None:
        raise ValueError(f"sweep {args.kind} needs --current-a (the bias current, A)")
    # the plan, checked against the station's limits, before anything is connected
    with loaded_station(args.station, seed=args.seed, station_text=recorded_station) as station:
        limits, timing = station_limits(station), StationTiming.from_station(station)
        line_hz = args.line_hz
        if not args.resume:
            if args.kind == "lock" and line_hz is None:  # found at start by a probe (RF off); nominal for now
                sa = station.roles["spectrum_analyzer"]
                line_hz = probe_window(sa.driver.limits_for_station(sa.limits).get("frequency_hz"), args.current_a)[0]
            plan = _sweep_plan(args, station, line_hz)
        plan.check(limits, line_known=args.resume is not None or args.kind != "lock" or args.line_hz is not None)
    seconds = timing.point_seconds(plan)
    if args.dry_run:
        for line in _describe_plan(plan, seconds, timing.ramp_s(plan.points[-1].current_a, 0.0)):
            print(line)
        if args.kind == "lock" and args.line_hz is None and not args.resume:
            print("  (the line is found by a probe sweep with RF off at start; the nominal line is shown)")
        print("dry run: nothing was sent to any instrument")
        return 0
    with open_station(None if embedded else args.station, seed=args.seed, station_text=recorded_station) \
            as (station, sim):
        if args.resume:
            sweep_file = SweepFile.open_resume(args.resume)
        else:
            if args.kind == "lock" and args.line_hz is None:
                line_hz = reference_probe(station, {"reference_hz": None, "reference_from": None,
                                                    "current_a": args.current_a, "probe_center_hz": None,
                                                    "probe_span_hz": None}).line_hz
                plan = _sweep_plan(args, station, line_hz)
                plan.check(limits)
            out = Path(args.out)
            path = out if out.suffix in (".h5", ".hdf5") else out / f"{_time.strftime('%Y%m%d-%H%M%S')}-{args.kind}.h5"
            sweep_file = SweepFile.create(path, plan, station_toml=station.config_text,
                                          identities=dict(station.identities), command_line=shlex.join(sys.argv),
                                          simulated=embedded)
        with sweep_file:
            done = sweep_file.measured_mask()
            initial = sum(s for p, s in zip(plan.points, seconds) if done[p.index])
            bar, progress = _sweep_progress(sum(seconds), initial, plan.kind, args.progress)
            # an embedded virtual-time simulator: the plan's intervals pass on its clock, not the wall's
            wait = (lambda s: sim.rig.clock.advance(s)) if sim is not None else None
            executor = SweepExecutor(station, plan, sweep_file, progress=progress, point_seconds=seconds, wait=wait)
            try:
                state = executor.run()
            except BaseException as exc:
                sweep_file.set_state("aborted" if isinstance(exc, KeyboardInterrupt) else "failed")
                print(f"sweep file: {sweep_file.path} (continue with: labpgt sweep {plan.kind} --resume "
                      f"{sweep_file.path})", file=sys.stderr)
                raise
            finally:
                if bar is not None:
                    bar.close()
            sweep_file.set_state(state)
            path = sweep_file.path
    print(f"sweep {state}: {path}")
    print(f"map: {plot_sweep(path)}")
    if state == "aborted":
        print(f"continue with: labpgt sweep {plan.kind} --resume {path}")
        return 130
    return 0


# --------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from labpgt.experiment.run import run_training

    return run_training(args, argv=sys.argv)


def cmd_replay(args) -> int:
    from labpgt.experiment.run import run_replay

    return run_replay(args.run)


def cmd_report(args) -> int:
    from labpgt.report.summary import report

    out = args.out or str(Path(args.run).with_suffix("")) + "-report"
    for path in report(args.run, out):
        print(path)
    return 0


def cmd_export(args) -> int:
    from labpgt.runfile.export import export_run

    run = Path(args.run)
    out = args.out or (run.with_suffix(".nc") if args.format == "netcdf" else run.with_name(run.stem + "-csv"))
    for path in export_run(run, out, args.format):
        print(path)
    return 0


def cmd_inspect(args) -> int:
    from labpgt.runfile.precheck import inspect_in_child

    if not Path(args.run).is_file():
        print(f"error: {args.run}: no such file", file=sys.stderr)
        return 1

    text = inspect_in_child(args.run)  # a damaged file may hang libhdf5: read in a child, with a time limit
    print(text)
    # inspect shows whatever is readable; a damaged or foreign file still exits non-zero
    return 1 if "PROBLEM:" in text else 0


# --------------------------------------------------------------------------- parser
class _OneLineErrors(argparse.ArgumentParser):
    """A usage mistake is one line (what was wrong, where to look), not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog="labpgt", description=__doc__)
    parser.add_argument("--version", action="version", version=f"labpgt {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more messages: -v progress notes, -vv every message on the wire (role, resource)")
    parser.add_argument("--log-file", metavar="PATH", help="also write every message, wire trace included, to PATH")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("sim", help="the simulated ring")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True)
    serve = sim_sub.add_parser("serve", help="serve the simulated instruments on loopback until Ctrl-C")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--flavour", choices=["keysight", "alt"], default="keysight",
                       help="keysight: MXG + Kepco BOP + X-series; alt: Windfreak SynthHD + Keithley 2400 + R&S FSV")
    serve.add_argument("--realtime", action="store_true", help="instruments really take their time")
    serve.add_argument("--faults", metavar="SPEC",
                       help='inject faults, e.g. "spectrum_analyzer:timeout=0.001;*:error=1e-4;seed=3" '
                            "(kinds: timeout garbled truncated truncated_block disconnect error overload "
                            "unlocked slow; KIND=P per message, KIND@N once on the Nth), or a TOML file "
                            "with a [faults] table (role = {kind = P or \"@N\"}, seed, slow_s, unlock_s)")
    serve.add_argument("--start-state", choices=["reset", "unsafe"], default="reset",
                       help="how the first client finds the instruments: reset (power-on state) or unsafe "
                            "(RF on at full power outside the station's band, current flowing in the magnet)")
    serve.add_argument("--station-out", default="sim-station.toml", help="where to write the station file")
    serve.add_argument("--control-port", type=int, metavar="PORT",
                       help="serve the simulator's own state (state) and instrument hangs (hang ROLE, revive "
                            "ROLE) on 127.0.0.1:PORT, one JSON line per command (0: any free port; written "
                            "into the station file as a comment); see sim/control.py")
    serve.set_defaults(func=cmd_sim_serve)

    check = sub.add_parser("check", help="connect each instrument, print identities, confirm the safe state")
    check.add_argument("--station", help="station TOML (default: the embedded simulated ring)")
    check.add_argument("--seed", type=int, default=0, help="seed of the embedded simulated ring")
    check.set_defaults(func=cmd_check)

    measure = sub.add_parser("measure", help="one spectrum at given settings; prints the strongest peaks")
    measure.add_argument("--frequency", type=float, default=2.07e9, help="drive frequency, Hz")
    measure.add_argument("--power", type=float, default=-10.0, help="drive power, dBm")
    measure.add_argument("--current", type=float, default=1.8, help="bias current, A")
    measure.add_argument("--center", type=float, help="analyzer centre, Hz (default: the drive frequency)")
    measure.add_argument("--span", type=float, help="analyzer span, Hz (default: the station's)")
    measure.add_argument("--peaks", type=positive_int, default=5, help="how many peaks to print")
    measure.add_argument("--plot", help="write a PNG of the trace here")
    measure.add_argument("--station", help="station TOML (default: the embedded simulated ring)")
    measure.add_argument("--seed", type=int, default=0, help="seed of the embedded simulated ring")
    measure.set_defaults(func=cmd_measure)

    sweep = sub.add_parser("sweep", help="characterize the ring: current (tuning curve), lock (detuning x power), "
                           "drift (the line over time), spectrum (traces with full settings)")
    sweep.add_argument("kind", choices=["current", "lock", "drift", "spectrum"])
    sweep.add_argument("--station", help="station TOML (default: the embedded simulated ring)")
    sweep.add_argument("--seed", type=int, default=0, help="seed of the embedded simulated ring")
    sweep.add_argument("--out", default="maps", help="sweep file (.h5), or a directory for a timestamped one")
    sweep.add_argument("--resume", metavar="FILE", help="continue an interrupted sweep: points already written are skipped")
    sweep.add_argument("--dry-run", action="store_true", help="print the points and the instrument-time estimate; "
                       "nothing is sent")
    sweep.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    sweep.add_argument("--from-a", type=float, default=1.5, help="current: first bias current, A")
    sweep.add_argument("--to-a", type=float, default=2.0, help="current: last bias current, A")
    sweep.add_argument("--points", type=positive_int, default=26, help="current: how many currents")
    sweep.add_argument("--current-a", type=float, help="lock, drift, spectrum: the bias current, A")
    sweep.add_argument("--line-hz", type=float, help="lock: the free-running line, Hz (default: a probe sweep at start)")
    sweep.add_argument("--detuning-hz", type=float, default=15e6, help="lock: detunings from -this to +this, Hz")
    sweep.add_argument("--detunings", type=positive_int, default=31, help="lock: how many detunings")
    sweep.add_argument("--power-from-dbm", type=float, default=-40.0, help="lock: lowest drive power, dBm")
    sweep.add_argument("--power-to-dbm", type=float, default=-5.0, help="lock: highest drive power, dBm")
    sweep.add_argument("--powers", type=positive_int, default=8, help="lock: how many powers")
    sweep.add_argument("--samples", type=positive_int, default=30, help="drift: how many traces")
    sweep.add_argument("--interval-s", type=float, default=10.0, help="drift: seconds between traces")
    sweep.add_argument("--repeats", type=positive_int, default=1, help="spectrum: how many traces")
    sweep.add_argument("--drive-frequency-hz", type=float, help="spectrum: drive frequency, Hz (default: RF off)")
    sweep.add_argument("--drive-power-dbm", type=float, help="spectrum: drive power, dBm (with --drive-frequency-hz)")
    sweep.add_argument("--center-hz", type=float, help="analyzer centre, Hz (default: per kind, from the station)")
    sweep.add_argument("--span-hz", type=float, help="analyzer span, Hz (default: per kind, from the station)")
    sweep.add_argument("--rbw-hz", type=float, help="analyzer resolution bandwidth, Hz")
    sweep.add_argument("--trace-points", type=positive_int, help="analyzer trace points")
    sweep.set_defaults(func=cmd_sweep)

    from labpgt.experiment.options import add_train_arguments

    train = sub.add_parser("train", help="train the hybrid network through the ring")
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    replay = sub.add_parser("replay", help="rerun a recorded run against its recorded measurements")
    replay.add_argument("run", help="run file (.h5)")
    replay.set_defaults(func=cmd_replay)

    rep = sub.add_parser("report", help="PNG plots and a text summary of a run")
    rep.add_argument("run", help="run file (.h5)")
    rep.add_argument("--out", help="output directory (default: next to the run file)")
    rep.set_defaults(func=cmd_report)

    export = sub.add_parser("export", help="a clean copy of a run's effective rows (no abandoned or in-flight "
                                           "rows) as netCDF or CSV")
    export.add_argument("run", help="run file (.h5)")
    export.add_argument("--format", choices=["netcdf", "csv"], default="netcdf",
                        help="netcdf: one file, a group per table; csv: a directory of CSV files and run.json")
    export.add_argument("--out", help="output file (netcdf) or directory (csv); default: next to the run file "
                                      "(RUN.nc or RUN-csv/)")
    export.set_defaults(func=cmd_export)

    insp = sub.add_parser("inspect", help="what a run file holds")
    insp.add_argument("run", help="run file (.h5)")
    insp.set_defaults(func=cmd_inspect)

    from labpgt.watch.cli import add_watch_arguments, cmd_watch

    watch = sub.add_parser("watch", help="a live read-only web page of a run (or of a directory of runs)")
    add_watch_arguments(watch)
    watch.set_defaults(func=cmd_watch)

    from labpgt.study.cli import add_study_parser

    add_study_parser(sub)
    return parser


def _rig_state_lines(first_report: int, exc: BaseException | None = None) -> list[str]:
    """What the rig was measured to be in when this command left it (instruments.safe_state): the
    last read-back of each station this command used; nothing is claimed without one."""
    from instruments.safe_state import REPORTS

    reports = REPORTS[first_report:]
    attached = getattr(exc, "safe_state_report", None) if exc is not None else None
    if attached is not None and attached not in reports:
        reports.append(attached)
    latest = {report.station: report for report in reports}  # a reconnected station: its last word
    return [str(report) for report in latest.values()]


def _exception_notes(exc: BaseException) -> list[str]:
    """The notes of an error and of the errors behind it (the safe state is reported separately)."""
    notes, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        notes += [n for n in getattr(exc, "__notes__", []) if "leaving the rig safe" not in n
                  and "THE RIG MAY NOT BE SAFE" not in n]
        exc = exc.__cause__ or exc.__context__
    return notes


def main(argv: list[str] | None = None) -> int:
    from instruments.safe_state import REPORTS

    parser = build_parser()
    args = parser.parse_args(argv)
    first_report = len(REPORTS)
    failure: BaseException | None = None
    from labpgt.runfile.opening import readers_take_no_locks

    readers_take_no_locks()  # this process opens run files only through labpgt: never block a writer
    try:
        logs.configure(args.verbose, args.log_file)
    except OSError as exc:
        print(f"error: cannot write the log file {args.log_file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        with terminate_as_interrupt():
            return args.func(args)
    except Terminated as exc:
        failure = exc
        print(f"{exc}", file=sys.stderr)
        return 143
    except KeyboardInterrupt as exc:
        failure = exc
        print("interrupted", file=sys.stderr)
        return 130
    except (InstrumentError, ValueError, OSError, RuntimeError) as exc:
        # our own errors (station files, limits, run files, experiment files, instruments) say
        # what was wrong and what is allowed; a traceback would bury that (LABPGT_DEBUG=1 shows it)
        failure = exc
        if os.environ.get("LABPGT_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        for note in _exception_notes(exc):
            print(f"  {note}", file=sys.stderr)
        return 2
    finally:
        # on every exit path: the rig as read back, never assumed (stderr when something failed)
        for line in _rig_state_lines(first_report, failure):
            print(line, file=sys.stderr if failure is not None or "NOT BE SAFE" in line else sys.stdout)


def _keep_working_directory_off_the_import_path() -> None:
    """``python -m labpgt.cli`` puts the working directory first on ``sys.path``; nothing there may be
    imported in its place (drivers come from the registry, instruments.registry, in any case)."""
    package_root = str(Path(__file__).resolve().parent.parent)
    cwd = os.getcwd()
    sys.path[:] = [entry for entry in sys.path
                   if not ((entry in ("", ".") or os.path.abspath(entry) == cwd) and cwd != package_root)]


if __name__ == "__main__":
    _keep_working_directory_off_the_import_path()
    sys.exit(main())
