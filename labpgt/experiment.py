"""An experiment: its options (CLI flags or a TOML file, the same names), and running it.

Precedence: built-in defaults < the ``--config`` file < flags given on the command line.
The effective configuration is written to the run file verbatim as TOML, so ``--resume`` and
``labpgt replay`` rebuild exactly the same trainer.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from labpgt import __version__


class ConfigError(ValueError):
    """An experiment option that is unknown or has a value that is not allowed."""


@dataclass(frozen=True)
class Option:
    type: type
    default: object
    help: str
    choices: tuple | None = None


#: every experiment option; each is a CLI flag (--name with - for _) and a TOML key
OPTIONS: dict[str, Option] = {
    "station": Option(str, None, "station TOML (default: the embedded simulated ring)"),
    "dataset": Option(str, "iris", "data set", ("iris", "digits")),
    "model": Option(str, "dense", "dense: digital -> ring -> readout on a station; transformer: a transformer "
                    "with a reservoir layer evaluated in-process", ("dense", "transformer")),
    "task": Option(str, "digits-seq", "transformer task", ("digits-seq", "narma10")),
    "reservoir": Option(str, "ring", "transformer reservoir: the simulated ring (direct mode) or an echo-state "
                        "network", ("ring", "esn")),
    "estimator": Option(str, "node", "gradient estimator (backprop: transformer baseline only)",
                        ("node", "pgt", "spsa", "oracle", "twin", "backprop", "node-token", "phyll")),
    "budget": Option(int, 20000, "training measurements to spend"),
    "seed": Option(int, 0, "seed of batches, perturbations and the embedded simulated ring"),
    "out": Option(str, "runs", "run file, or a directory for a new timestamped run file"),
    "batch_size": Option(int, None, "samples per step (default: the estimator's tuned value)"),
    "lr": Option(float, None, "learning rate (default: the estimator's tuned value)"),
    "epsilon": Option(float, None, "perturbation size (node: knobs, pgt: parameters; default: the estimator's tuned value)"),
    "directions": Option(int, None, "pgt: perturbation directions per step (default: 1)"),
    "one_sided": Option(bool, None, "pgt: one-sided differences (default: two-sided)"),
    "distribution": Option(str, None, "pgt: perturbation distribution (default: rademacher)", ("gaussian", "rademacher")),
    "scope": Option(str, None, "pgt: parameters perturbed (default: all)", ("all", "upstream")),
    "nodes": Option(int, 1, "virtual nodes (measurements) per sample"),
    "bands": Option(int, 10, "readout bands across the analyzer span"),
    "hidden": Option(int, 8, "width of the digital layer before the ring"),
    "current_a": Option(float, 1.8, "initial bias current, A"),
    "current_window_a": Option(float, 0.02, "the trained bias current stays within ± this of current_a, A"),
    "reference_hz": Option(float, None, "drive reference frequency, Hz (default: found by a probe sweep)"),
    "eval_every": Option(int, 25, "steps between evaluations on the test split"),
    "checkpoint_every": Option(int, 25, "steps between checkpoints"),
    "noise_scale": Option(float, 1.0, "embedded simulated ring: noise multiplier"),
    "progress": Option(bool, True, "show a progress bar"),
    # deep physical networks and PhyLL (labpgt/deep.py, labpgt/phyll.py)
    "blocks": Option(int, 1, "passes through the ring per forward pass: a deep physical network of this many "
                     "blocks (dense model; node, pgt, phyll); 1 = the single-pass network"),
    "width": Option(int, None, "deep network: outputs of each block's digital linear layer (default: 32)"),
    # a scheduled step change of the embedded simulated ring (sim/ring.py RingParams.step_*)
    "ring_step_at_s": Option(float, None, "embedded simulated ring: virtual time (s) of a step change of its "
                             "temperature and loop gain (default: none)"),
    "ring_step_kelvin": Option(float, 2.0, "embedded simulated ring: the step's temperature change, K"),
    "ring_step_gain_db": Option(float, 0.0, "embedded simulated ring: the step's amplifier gain change, dB"),
}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment TOML; every option below can be set there")
    parser.add_argument("--resume", metavar="RUN.h5", help="continue an interrupted run")
    for name, opt in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if opt.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=opt.help)
        else:
            # options without a fixed default say in their help what they default to
            suffix = f" (default: {opt.default})" if opt.default is not None else ""
            parser.add_argument(flag, type=opt.type, default=None, choices=opt.choices, help=opt.help + suffix)


def _check_value(name: str, value, source: str):
    opt = OPTIONS[name]
    if value is None:
        return None
    if opt.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if opt.type is bool and not isinstance(value, bool) or (
            opt.type is not bool and (isinstance(value, bool) or not isinstance(value, opt.type))):
        raise ConfigError(f"{source}: option {name!r} must be {opt.type.__name__}, got {value!r}")
    if opt.choices and value not in opt.choices:
        raise ConfigError(f"{source}: option {name!r} = {value!r} is not allowed; allowed: {', '.join(opt.choices)}")
    if opt.type is float and not math.isfinite(value):
        raise ConfigError(f"{source}: option {name!r} must be a finite number, got {value!r}")
    if opt.type in (int, float) and name not in ("seed", "current_a", "ring_step_kelvin", "ring_step_gain_db") \
            and value <= 0:
        raise ConfigError(f"{source}: option {name!r} must be positive, got {value!r}")
    return value


def parse_config_text(text: str, source: str) -> dict:
    """Options from an experiment TOML (flat keys, the CLI's names with _)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    if "experiment" in data and set(data) != {"experiment"}:
        raise ConfigError(f"{source}: give the options either as flat keys or inside one [experiment] table, "
                          f"not both and no other tables (found: {', '.join(sorted(data))})")
    data = data.get("experiment", data) if set(data) == {"experiment"} else data
    unknown = sorted(set(data) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(OPTIONS)}")
    return {k: _check_value(k, v, source) for k, v in data.items()}


def resolve(args: argparse.Namespace) -> dict:
    """Defaults < config file < flags given."""
    config = {name: opt.default for name, opt in OPTIONS.items()}
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read experiment file {path}: {exc.strerror}") from None
        config.update(parse_config_text(text, str(path)))
    for name in OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            config[name] = _check_value(name, value, "command line")
    return check_combination(config)


def check_combination(config: dict, source: str = "experiment") -> dict:
    """Options that are fine alone but not together."""
    if config["model"] == "transformer" and config["station"] is not None:
        raise ConfigError(f"{source}: the transformer's reservoir is evaluated in-process (the simulated ring in "
                          f"direct mode, or an echo-state network); it takes no station")
    if config["model"] == "dense" and config["estimator"] == "backprop":
        raise ConfigError(f"{source}: estimator 'backprop' differentiates the reservoir and exists only for the "
                          f"transformer baseline; allowed for the dense model: node, pgt, spsa, oracle, twin")
    if config["model"] == "dense" and config["estimator"] == "node-token":
        raise ConfigError(f"{source}: estimator 'node-token' credits each token of a sequence separately and exists "
                          f"only for the transformer; allowed for the dense model: node, pgt, spsa, oracle, twin")
    _check_deep_combination(config, source)
    if config["model"] == "transformer" and config["estimator"] == "twin":
        raise ConfigError(f"{source}: estimator 'twin' is for the dense model; allowed for the transformer: "
                          f"node, node-token, pgt, spsa, oracle, backprop")
    return config


def _check_deep_combination(config: dict, source: str) -> None:
    """Deep physical networks (--blocks > 1) and phyll: what they take."""
    from labpgt.deep import DEEP_ESTIMATORS

    deep = config["blocks"] > 1 or config["estimator"] == "phyll"
    if config["model"] == "transformer" and deep:
        raise ConfigError(f"{source}: blocks > 1 and estimator 'phyll' are for the dense model (deep physical "
                          f"networks through the ring); the transformer takes blocks = 1")
    if deep and config["estimator"] not in DEEP_ESTIMATORS:
        raise ConfigError(f"{source}: estimator {config['estimator']!r} does not train a deep physical network "
                          f"(blocks = {config['blocks']}); allowed: {', '.join(DEEP_ESTIMATORS)}")
    if deep and (config["one_sided"] or config["scope"] not in (None, "all")):
        raise ConfigError(f"{source}: the deep network's pgt is two-sided over all trainable parameters; "
                          f"one_sided and scope are not allowed with blocks = {config['blocks']}")
    given = [name for name in ("epsilon", "directions", "one_sided", "distribution", "scope")
             if config[name] is not None]
    if config["estimator"] == "phyll" and given:
        raise ConfigError(f"{source}: estimator 'phyll' perturbs nothing; {', '.join(given)} not allowed with it")
    if not deep and config["width"] is not None:
        raise ConfigError(f"{source}: width sets the blocks of a deep physical network; allowed only with "
                          f"blocks > 1 or estimator 'phyll'")
    if config["ring_step_at_s"] is not None and config["station"] is not None:
        raise ConfigError(f"{source}: ring_step_at_s schedules a step change of the embedded simulated ring; "
                          f"a station's ring cannot be told to jump")


def config_to_toml(config: dict) -> str:
    lines = ["# labpgt experiment (effective configuration)"]
    for name, value in config.items():
        if value is None:
            continue
        lines.append(f"{name} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- building
def estimator_options(config: dict) -> dict:
    name = config["estimator"]
    opts = {}
    if config["epsilon"] is not None and name in ("node", "pgt", "node-token"):
        opts["epsilon"] = config["epsilon"]
    if name == "pgt":
        if config["directions"] is not None:
            opts["n_directions"] = config["directions"]
        if config["one_sided"] is not None:
            opts["two_sided"] = not config["one_sided"]
        if config["distribution"] is not None:
            opts["distribution"] = config["distribution"]
        if config["scope"] is not None:
            opts["scope"] = config["scope"]
    return opts


def current_bounds(config: dict, station_limits_a: tuple[float, float]) -> tuple[float, float]:
    """Where the trained bias current may go (A): the window around current_a, inside the
    station's limits, with room for the estimators' perturbations (a few current scales)."""
    margin = 3 * 1e-3  # three current scales (model.current_scale_a = 1 mA)
    lo = max(station_limits_a[0], config["current_a"] - config["current_window_a"]) + margin
    hi = min(station_limits_a[1], config["current_a"] + config["current_window_a"]) - margin
    if (config["current_a"] - config["current_window_a"] < station_limits_a[0]
            or config["current_a"] + config["current_window_a"] > station_limits_a[1]):
        print(f"note: the bias current is trained within [{lo:.4f}, {hi:.4f}] A: current_a ± current_window_a "
              f"reaches past the station's limits [{station_limits_a[0]}, {station_limits_a[1]}] A, less "
              f"{margin * 1e3:.0f} mA of room for the perturbations", file=sys.stderr)
    if lo > hi:
        raise ConfigError(
            f"current_a = {config['current_a']} A with current_window_a = {config['current_window_a']} A leaves no "
            f"room inside the station's current limits [{station_limits_a[0]}, {station_limits_a[1]}] A")
    return (lo, hi)


def build_trainer(config: dict, reservoir, recorder=None, progress=None, current_bounds_a=None):
    from labpgt.datasets import load
    from labpgt.trainer import make_trainer

    dataset = load(config["dataset"])
    common = dict(seed=config["seed"], budget=config["budget"], batch_size=config["batch_size"], lr=config["lr"],
                  estimator_options=estimator_options(config), current_a=config["current_a"],
                  eval_every=config["eval_every"], checkpoint_every=config["checkpoint_every"],
                  recorder=recorder, progress=progress)
    if config["blocks"] > 1 or config["estimator"] == "phyll":
        from labpgt.deep import make_deep_trainer

        trainer = make_deep_trainer(dataset, config["estimator"], reservoir, n_blocks=config["blocks"],
                                    width=config["width"] or 32, **common)
    else:
        trainer = make_trainer(dataset, config["estimator"], reservoir,
                               model_options={"hidden_before": (config["hidden"],)}, **common)
    one_batch = trainer.batch_size * config["nodes"]  # the least any estimator's step measures
    if config["budget"] < one_batch:
        raise ConfigError(f"budget {config['budget']} is smaller than one batch through the ring "
                          f"({trainer.batch_size} samples x {config['nodes']} nodes = {one_batch} measurements); "
                          f"allowed: {one_batch} or more")
    if current_bounds_a is not None:
        # the initial current too: the first perturbation must already stay inside the limits
        trainer.model.current_bounds_a = tuple(current_bounds_a)
        trainer.model.set_params(trainer.project(trainer.model.params()))
    return trainer


# --------------------------------------------------------------------------- running
PROBE_SPAN_HZ = 200e6
PROBE_CENTER_HZ = 2.07e9
PROBE_POINTS = 1001
PROBE_MIN_PROMINENCE_DB = 15.0


def probe_sweep(station, current_a: float, span_hz: float = PROBE_SPAN_HZ, center_hz: float = PROBE_CENTER_HZ):
    """Probe sweep with RF off: the free-running line of the ring at ``current_a``.

    Returns a :class:`labpgt.runfile.Probe` with the sweep (axis, trace as read) and its settings,
    for the run file's /probe. The analyzer is left on the station's measurement window, centred
    on the found line.
    """
    from labpgt.runfile import Probe
    from labpgt.spectra import strongest_peaks

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

    Takes the reference frequency from ``probe`` (a :class:`labpgt.runfile.Probe`; by default
    :func:`reference_probe`: a sweep for the ring's free-running line unless ``reference_hz`` is
    set), then builds the encoder (detuning and power around that line, current within the
    station's limits), the readout (the station's analyzer window, ``bands`` bands) and the
    trained current's bounds.
    """
    from labpgt.encoding import BandReadout, KnobEncoder

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


class _StopOnSignal:
    """First Ctrl-C / SIGTERM: finish the step in flight, checkpoint, mark aborted.
    A second one: stop at once (the station still leaves the rig safe on the way out)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.previous = {}

    def _handle(self, signum, frame):
        if self.trainer.stop_requested:
            raise KeyboardInterrupt
        self.trainer.stop_requested = True
        print(f"\nsignal {signum}: finishing the step in flight, then checkpoint and stop "
              f"(again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _progress_bar(config: dict, start: int):
    if not config["progress"]:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=config["budget"], initial=start, unit="meas", dynamic_ncols=True,
               desc=f"{config['estimator']} on {config['dataset']}")
    state = {"last": start}

    def progress(record):
        if record["kind"] == "step":
            bar.update(record["measurements"] - state["last"])
            state["last"] = record["measurements"]
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}", refresh=False)
        else:
            bar.write(f"step {record['step']:5d}  measurements {record['measurements']:7d}  "
                      f"test loss {record['test_loss']:.3f}  test accuracy {record['test_accuracy']:.3f}")
    return bar, progress


def _new_run_path(out: str, config: dict) -> Path:
    path = Path(out)
    if path.suffix in (".h5", ".hdf5"):
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    path.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    what = f"transformer-{config['task']}-{config['reservoir']}" if config["model"] == "transformer" else config["dataset"]
    return path / f"{stamp}-{what}-{config['estimator']}-s{config['seed']}.h5"


def _ring_params(config: dict):
    from sim.ring import RingParams

    if config["ring_step_at_s"] is None:
        return RingParams(noise_scale=config["noise_scale"])
    return RingParams(noise_scale=config["noise_scale"], step_at_s=config["ring_step_at_s"],
                      step_temperature_k=config["ring_step_kelvin"], step_gain_db=config["ring_step_gain_db"])


def run_training(args, argv=None) -> int:
    from labpgt.embedded import open_station
    from labpgt.encoding import BandReadout, KnobEncoder
    from labpgt.physical import StationReservoir
    from labpgt.recovery import MeasurementFailed
    from labpgt.runfile import RunFile, RunReader
    from labpgt.writer import RecorderThread

    resume_state = None
    if args.resume:
        with RunReader(args.resume) as reader:
            if reader.status == "completed":
                raise ConfigError(f"{args.resume}: this run is already completed; nothing was changed "
                                  f"(start a new run instead of --resume)")
            config = {name: opt.default for name, opt in OPTIONS.items()}
            config.update(parse_config_text(reader.metadata["experiment_toml"], f"{args.resume} (experiment)"))
            resume_state = reader.last_checkpoint()
            layout = json.loads(reader.metadata["physical_layer"])
            station_text = reader.metadata["station_toml"]
            embedded = reader.metadata.get("embedded_simulator", False)
        run_path = Path(args.resume)
    else:
        config = resolve(args)
        layout = None
        run_path = _new_run_path(config["out"], config)
        embedded = config["station"] is None

    if config["model"] == "transformer":
        from labpgt.inprocess import run_in_process

        status, trainer = run_in_process(config, run_path, resume_state, argv, make_progress=_progress_bar,
                                         stop_on_signal=_StopOnSignal, config_text=config_to_toml(config))
        return _report_end(status, trainer, run_path)

    station_arg = None if embedded else config["station"]
    recorded_station = station_text if (args.resume and not embedded) else None
    ring_params = _ring_params(config) if embedded else None
    with open_station(station_arg, seed=config["seed"], ring_params=ring_params,
                      station_text=recorded_station) as (station, sim):
        probe = None
        if layout is None:
            probe = reference_probe(station, config)  # kept in the run file as /probe
            layout = station_physical_layer(station, config, probe)
            encoder, readout = KnobEncoder(**layout["encoder"]), BandReadout(**layout["readout"])
        else:
            encoder = KnobEncoder(**layout["encoder"])
            readout = BandReadout(**layout["readout"])
            if resume_state is None and sim is not None and config["reference_hz"] is None:
                # killed before its first checkpoint: the run starts over, and the fresh simulated
                # world must first see the probe the original run made (it moved its clock and noise).
                # Not recorded: it replays the sweep already in /probe (the one that set the run's
                # reference), it is not a new measurement of the ring
                probe_sweep(station, config["current_a"])
        reservoir = StationReservoir(station, encoder, readout, simulated=embedded)
        if embedded:
            reservoir.noiseless = _noiseless_twin(config, encoder, readout)
        trainer = build_trainer(config, reservoir, current_bounds_a=layout["current_bounds_a"])
        if args.resume:
            if resume_state is not None:
                trainer.load_state_dict(resume_state)
                if sim is not None:
                    # bring the fresh simulator's magnet to the checkpointed current, then rewind
                    # its world to the checkpoint (clock, noise stream, coil history)
                    reservoir.set_current(trainer.model.current_a())
                    _restore_world(sim, resume_state)
            # (no checkpoint yet: the run starts over in the same file, its rows so far abandoned)
            run = RunFile.open_append(run_path)
        else:
            run = RunFile.create(
                run_path, n_params=trainer.model.params().size,
                param_names=None, features_per_measurement=readout.n_bands, trace_points=readout.points,
                optimizer_state_shapes={k: np.shape(v) for k, v in trainer.opt_state.items()},
                probe=probe,
                metadata={
                    "station_toml": station.config_text,
                    "experiment_toml": config_to_toml(config),
                    "identities": dict(station.identities),
                    "package_version": __version__,
                    "command_line": shlex.join(argv or sys.argv),
                    "seed": config["seed"],
                    "physical_layer": json.dumps(layout),
                    "embedded_simulator": embedded,
                })
        # run-file writes on a writer thread, off the measurement loop; synchronous at every step,
        # evaluation and checkpoint (flushed there), errors raised here (labpgt/writer.py)
        with run, RecorderThread(run) as writer:
            reservoir.recorder = writer
            trainer.recorder = _WorldRecorder(writer, sim) if sim is not None else writer
            if resume_state is None:
                trainer.checkpoint()  # step 0: a run killed from here on can be resumed
            bar, trainer.progress = _progress_bar(config, trainer.train_measurements)
            with _StopOnSignal(trainer):
                try:
                    status = trainer.run()
                except MeasurementFailed:
                    print(f"run file {run_path} is marked failed, with a checkpoint at the start of the failed "
                          f"step; continue with: labpgt train --resume {run_path}", file=sys.stderr)
                    raise
                finally:
                    if bar is not None:
                        bar.close()
            writer.set_status("completed" if status == "completed" else ("aborted" if status == "aborted" else "failed"),
                              message=status)
    return _report_end(status, trainer, run_path)


def _report_end(status: str, trainer, run_path) -> int:
    final = trainer.evaluations[-1] if trainer.evaluations else None
    print(f"run {status}: {trainer.train_measurements} training measurements, {trainer.step} steps"
          + (f", test accuracy {final['test_accuracy']:.3f}" if final else ""))
    print(f"run file: {run_path}")
    if status == "aborted":
        print(f"continue with: labpgt train --resume {run_path}")
    return 0 if status == "completed" else (130 if status == "aborted" else 1)


def _noiseless_twin(config: dict, encoder, readout):
    """The oracle's model: the embedded ring's physics, noise off (simulated stations only)."""
    from labpgt.reservoirs import DirectRingReservoir

    twin = DirectRingReservoir(_ring_params(config), seed=config["seed"], n_nodes=encoder.n_nodes,
                               encoding=encoder, readout=readout, current_a=config["current_a"])
    return twin.noiseless


class _WorldRecorder:
    """Adds the embedded simulator's state (clock, noise stream, coil) to every checkpoint.

    A real rig cannot be rewound, but the simulated world can: with it, ``--resume`` of an
    embedded run continues with exactly the noise an uninterrupted run would have seen.
    """

    def __init__(self, run, sim):
        self.run, self.sim = run, sim

    def measurement(self, record):
        self.run.measurement(record)

    def step(self, record):
        self.run.step(record)

    def evaluation(self, record):
        self.run.evaluation(record)

    def checkpoint(self, state):
        extra = json.loads(state["extra"])
        extra["sim_world"] = self.sim.world_state()
        self.run.checkpoint({**state, "extra": json.dumps(extra)})


def _restore_world(sim, state) -> None:
    world = json.loads(state["extra"]).get("sim_world")
    if world is None:
        raise ConfigError("the checkpoint holds no simulator state; cannot resume an embedded run bit for bit")
    sim.load_world_state(world)


def run_replay(path) -> int:
    """``labpgt replay RUN.h5``: rerun against the recorded measurements; 0 when bit for bit."""
    from labpgt.encoding import BandReadout, KnobEncoder
    from labpgt.replay import replay
    from labpgt.runfile import RunReader

    with RunReader(path) as reader:
        metadata = dict(reader.metadata)
    layout = json.loads(metadata["physical_layer"])
    config = {name: opt.default for name, opt in OPTIONS.items()}
    config.update(parse_config_text(metadata["experiment_toml"], f"{path} (experiment)"))
    if config["model"] == "transformer":
        from labpgt.inprocess import build_transformer, encoder_from_layout

        def build_in_process(experiment_toml, reservoir, recorder):
            trainer = build_transformer(config, reservoir_override=reservoir)
            trainer.recorder = recorder
            return trainer

        result = replay(path, build_in_process, encoder=encoder_from_layout(layout))
        print(result.message)
        return 0 if result.ok else 1
    encoder, readout = KnobEncoder(**layout["encoder"]), BandReadout(**layout["readout"])

    def build(experiment_toml, reservoir, recorder):
        if config["estimator"] == "oracle":
            if not metadata.get("embedded_simulator", False):
                raise ConfigError("the oracle needs the simulated ring's noiseless model; this run used a real station")
            reservoir.noiseless = _noiseless_twin(config, encoder, readout)
        return build_trainer(config, reservoir, recorder, current_bounds_a=layout.get("current_bounds_a"))

    result = replay(path, build, encoder=encoder)
    print(result.message)
    return 0 if result.ok else 1
