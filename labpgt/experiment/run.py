"""Running an experiment: ``labpgt train`` (new or ``--resume``) and ``labpgt replay``.

One path for every model, read top to bottom in :func:`run_training`:

1. the experiment: options resolved (labpgt/experiment/options.py), or read back from the run
   file being resumed;
2. the rig: where the reservoir lives -- a station (the embedded simulated ring or a station
   file) for the dense model, found by a probe sweep; in-process (the simulated ring in direct
   mode, or an echo-state network) for the transformer (:func:`_station_rig`, :func:`_in_process_rig`);
3. the trainer, from the registry (labpgt/experiment/builder.py);
4. the run file (created, or reopened to append), fed by one :class:`Recording` on a writer thread;
5. the loop, under :class:`~instruments.interrupts.StopAfterStep`; the run file marked at the end.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from instruments.interrupts import StopAfterStep
from labpgt import __version__
from labpgt.contracts import FLAG_SIMULATED, NoiselessModel, Reservoir
from labpgt.experiment import registry
from labpgt.experiment.builder import build_trainer, dataset_of_config, in_process_reservoir
from labpgt.experiment.options import ConfigError, config_to_toml, given_options, resolve
from labpgt.experiment.resumed import Resumed, dataset_of_run, read_resumed, recorded_config
from labpgt.runfile import RunFile, RunFileError, RunReader
from labpgt.runfile.recording import Recording
from labpgt.runfile.thread import RecorderThread

log = logging.getLogger(__name__)


@dataclass
class Rig:
    """Where the experiment's reservoir lives, and what the run file records about it."""

    reservoir: Reservoir
    reservoir_model: NoiselessModel | None  # for the estimators that need one (simulated reservoirs only)
    layout: dict  # the physical layer (encoder, readout, current bounds), recorded as JSON
    features_per_measurement: int
    trace_points: int
    flags: int = 0  # OR-ed into every measurement row
    probe: object | None = None  # the start-up probe sweep (labpgt.runfile.Probe), kept as /probe
    metadata: dict = field(default_factory=dict)  # station, identities, ... for the run file
    checkpoint_extra: dict = field(default_factory=dict)  # name -> callable, stored in every checkpoint
    restore: Callable[[object, dict], None] = lambda trainer, state: None  # after loading a checkpoint
    start_up_faults: list = field(default_factory=list)  # recovered before the run file existed (recovery.py)


@dataclass
class TrainingOutcome:
    """How a run of :func:`run_experiment` ended (``labpgt train`` prints it; the API returns it)."""

    status: str  # completed, aborted (stopped by a signal, resumable) or what failed
    run_path: Path
    steps: int
    train_measurements: int
    final_evaluation: dict | None  # the last evaluation on the test split (None: none yet)

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "completed" else (130 if self.status == "aborted" else 1)


def run_training(args, argv=None) -> int:
    """``labpgt train``: the experiment from the flags (or, with ``--resume``, from the run file), run,
    its end printed."""
    watch = bool(vars(args).get("watch"))
    if vars(args).get("dry_run"):  # the plan and the instrument time; nothing moves
        resumed = read_resumed(args.resume, given_options(args)) if args.resume else None
        config = resumed.config if resumed else resolve(args)
        if not resumed and config["model"] != "transformer" and config["reference_from"] is not None:
            config = operating_point_from_map(config)
        return dry_run(config, resumed)
    if args.resume:
        outcome = run_experiment(resume=args.resume, resume_given=given_options(args), argv=argv, watch=watch)
    else:
        outcome = run_experiment(resolve(args), argv=argv, watch=watch)
    return report_end(outcome)


def run_experiment(config: dict | None = None, *, resume=None, resume_given: dict | None = None, argv=None,
                   progress: Callable[[dict], None] | None = None, watch: bool = False) -> TrainingOutcome:
    """The one pipeline of ``labpgt train`` and of ``labpgt.train`` / ``labpgt.resume``.

    config: a checked experiment (options.resolve / options.experiment_config); or resume: a run
    file to continue as recorded, with ``resume_given`` the options given with it (only budget and
    progress may differ from the recorded ones). progress: called with every step and evaluation
    record (``record["kind"]`` "step" or "eval"), besides the progress bar when ``config["progress"]``.
    watch: serve a live page of the run from its own process (``labpgt train --watch``).
    """
    resumed = read_resumed(resume, resume_given or {}) if resume is not None else None
    config = resumed.config if resumed else config
    if not resumed and config["model"] != "transformer" and config["reference_from"] is not None:
        config = operating_point_from_map(config)  # before anything moves: the map must be one
    # the data of the models on a station, read and checked before any instrument moves (a resumed
    # run's from its file)
    dataset = resumed.dataset if resumed else dataset_of_config(config) if config["model"] != "transformer" else None
    run_path = Path(resume) if resumed else new_run_path(config["out"], config)
    if not resumed:
        refuse_existing(run_path)  # before anything moves
    if watch:
        from labpgt.watch.cli import watch_beside  # a page of the run, served by its own process

        watch_beside(run_path)
    open_rig = _in_process_rig if config["model"] == "transformer" else _station_rig
    with open_rig(config, resumed) as rig:
        trainer = build_trainer(config, rig.reservoir, reservoir_model=rig.reservoir_model,
                                current_bounds_a=rig.layout.get("current_bounds_a"), dataset=dataset,
                                estimator_options=resumed.estimator_options if resumed else None)
        if resumed and resumed.state is not None:
            trainer.load_state_dict(resumed.state)
            rig.restore(trainer, resumed.state)
        # (resumed with no checkpoint yet: the run starts over in the same file, its rows so far abandoned)
        run = (RunFile.open_append(run_path, message=f"resumed; budget {config['budget']}{resumed.note}",
                                   budget=config["budget"], checkpoint=resumed.checkpoint)
               if resumed else _create_run_file(run_path, config, rig, trainer, argv, dataset))
        # run-file writes on a writer thread, off the measurement loop; synchronous at every step,
        # evaluation and checkpoint (flushed there), errors raised here (labpgt/runfile/thread.py)
        with run, RecorderThread(run) as writer:
            recording = Recording(writer, flags=rig.flags, checkpoint_extra=rig.checkpoint_extra,
                                  rows_before=run.n_measurements)
            rig.reservoir.recorder = trainer.recorder = recording
            for record in rig.start_up_faults:  # met before the file existed: at the first row of this session
                recording.fault({**record, "measurement_row": recording.n_measurements})
            if not (resumed and resumed.state is not None):
                trainer.checkpoint()  # step 0: a run killed from here on can be resumed
            status = _train(trainer, config, run_path, progress)
            writer.set_status(status if status in ("completed", "aborted") else "failed", message=status)
    return TrainingOutcome(status=status, run_path=run_path, steps=trainer.step,
                           train_measurements=trainer.train_measurements,
                           final_evaluation=trainer.evaluations[-1] if trainer.evaluations else None)


def _train(trainer, config: dict, run_path: Path, progress: Callable[[dict], None] | None = None) -> str:
    from labpgt.reservoirs.recovery import MeasurementFailed

    bar, bar_progress = progress_bar(config, trainer.train_measurements)
    trainer.progress = _both(bar_progress, progress)
    with StopAfterStep(trainer):
        try:
            return trainer.run()
        except MeasurementFailed:
            log.error("run file %s is marked failed, with a checkpoint at the start of the failed step; continue "
                      "with: labpgt train --resume %s", run_path, run_path)
            raise
        finally:
            if bar is not None:
                bar.close()


def _both(first, second):
    """One progress callback out of two (either may be None)."""
    if first is None or second is None:
        return first or second

    def both(record):
        first(record)
        second(record)
    return both


def _create_run_file(run_path: Path, config: dict, rig: Rig, trainer, argv, dataset) -> RunFile:
    return RunFile.create(
        run_path, n_params=trainer.model.params().size, features_per_measurement=rig.features_per_measurement,
        trace_points=rig.trace_points, optimizer_state_shapes={k: np.shape(v) for k, v in trainer.opt_state.items()},
        probe=rig.probe, dataset=dataset.to_record() if dataset is not None else None,
        trace_frequency_hz=trace_axis_of_layout(rig.layout, rig.trace_points),
        feature_bands_hz=feature_bands_of_layout(rig.layout, rig.features_per_measurement),
        metadata={
            "station_toml": "", "identities": {}, **rig.metadata,
            "experiment_toml": config_to_toml(config),
            "estimator_options": json.dumps(trainer.estimator.options()),  # what the estimator actually uses
            "package_version": __version__,
            "command_line": shlex.join(argv or sys.argv),
            "seed": config["seed"],
            "physical_layer": json.dumps(rig.layout),
        })


# --------------------------------------------------------------------------- the rigs
@contextlib.contextmanager
def _station_rig(config: dict, resumed: Resumed | None) -> Iterator[Rig]:
    """The dense model's rig: a connected station (leaves the rig safe on exit), its probe and layout."""
    from labpgt.experiment.embedded import open_station
    from labpgt.experiment.probe import probe_sweep, reference_probe, station_physical_layer
    from labpgt.reservoirs.encoding import BandReadout, KnobEncoder
    from labpgt.reservoirs.recovery import RecoveryPolicy
    from labpgt.reservoirs.station import StationReservoir

    embedded = resumed.embedded if resumed else config["station"] is None
    station_arg = None if embedded else config["station"]
    recorded_station = resumed.station_text if (resumed and not embedded) else None
    # start-up faults (connect, the first ramp, the probe, the set-up) under the measurements' policy
    policy = RecoveryPolicy()
    with open_station(station_arg, seed=config["seed"], noise_scale=config["noise_scale"] if embedded else None,
                      ring_step=ring_step(config) if embedded else None,
                      station_text=recorded_station, recovery=policy) as (station, sim):
        probe = None
        if resumed is None:
            # kept in the run file as /probe (a bad setting or no plausible line is refused, not retried)
            probe = policy.start_up(station, "the first ramp and the probe sweep",
                                    lambda: reference_probe(station, config), not_faults=(ConfigError,))
            layout = policy.start_up(station, "the physical layer",
                                     lambda: station_physical_layer(station, config, probe), not_faults=(ConfigError,))
        else:
            layout = resumed.layout
            recorded = resumed.probe
            if resumed.state is None and sim is not None and recorded is not None and recorded.swept:
                # killed before its first checkpoint: the run starts over, and the fresh simulated
                # world must first see the probe the original run made (it moved its clock and noise).
                # Not recorded: it replays the sweep already in /probe (the one that set the run's
                # reference), it is not a new measurement of the ring
                policy.start_up(station, "the recorded probe sweep", lambda: probe_sweep(
                    station, recorded.current_a, span_hz=recorded.span_hz, center_hz=recorded.center_hz))
        encoder, readout = KnobEncoder(**layout["encoder"]), BandReadout(**layout["readout"])
        reservoir = StationReservoir(station, encoder, readout, simulated=embedded, recovery=policy)

        def restore(trainer, state):
            if sim is not None:
                # bring the fresh simulator's magnet to the checkpointed current, then rewind its
                # world to the checkpoint (clock, noise stream, coil history)
                policy.start_up(station, "the ramp to the checkpoint's current",
                                lambda: reservoir.set_current(trainer.model.current_a()))
                restore_world(sim, state)

        yield Rig(
            reservoir=reservoir, reservoir_model=noiseless_twin(config, encoder, readout) if embedded else None,
            layout=layout, features_per_measurement=readout.n_bands, trace_points=readout.points, probe=probe,
            metadata={"station_toml": station.config_text, "identities": dict(station.identities),
                      "embedded_simulator": embedded},
            checkpoint_extra={"sim_world": sim.world_state} if sim is not None else {}, restore=restore,
            start_up_faults=policy.start_up_faults)


@contextlib.contextmanager
def _in_process_rig(config: dict, resumed: Resumed | None) -> Iterator[Rig]:
    """The transformer's rig: its reservoir evaluated in-process, every evaluation recorded, flagged simulated."""
    from labpgt.data.tasks import load_task

    reservoir = in_process_reservoir(config["reservoir"], load_task(config["task"]).n_tokens, seed=config["seed"],
                                     noise_scale=config["noise_scale"], current_a=config["current_a"])
    yield Rig(reservoir=reservoir, reservoir_model=reservoir, layout=in_process_layout(reservoir),
              features_per_measurement=reservoir.n_features // reservoir.n_nodes,
              trace_points=reservoir.readout.points if config["reservoir"] == "ring" else 1,
              flags=FLAG_SIMULATED,
              metadata={"embedded_simulator": True, "in_process_reservoir": config["reservoir"]})


def in_process_layout(reservoir) -> dict:
    """What replay needs to rebuild the request checks of an in-process reservoir."""
    from labpgt.reservoirs.esn import EchoStateReservoir

    if isinstance(reservoir, EchoStateReservoir):
        return {"knobs_only": reservoir.knobs_only.to_dict()}
    return {"encoder": reservoir.encoder.to_dict(), "readout": reservoir.readout.to_dict()}


def trace_axis_of_layout(layout: dict, trace_points: int):
    """The analyzer's frequency axis [points] of a run whose window is fixed (a ring readout), else None."""
    if "readout" not in layout:
        return None
    from labpgt.reservoirs.encoding import BandReadout

    freqs = BandReadout(**layout["readout"]).freqs_hz
    return freqs if freqs.size == trace_points else None


def feature_bands_of_layout(layout: dict, features: int):
    """(first, last) frequency of the trace each readout feature covers, or None (no ring readout)."""
    if "readout" not in layout:
        return None
    from labpgt.reservoirs.encoding import BandReadout

    readout = BandReadout(**layout["readout"])
    return readout.band_edges_hz() if readout.n_bands == features else None


def encoder_from_layout(layout: dict):
    """The recorded layout's encoder: KnobEncoder (ring, station) or KnobsOnly (echo-state network)."""
    if "knobs_only" in layout:
        from labpgt.reservoirs.esn import KnobsOnly

        return KnobsOnly(**layout["knobs_only"])
    from labpgt.reservoirs.encoding import KnobEncoder

    return KnobEncoder(**layout["encoder"])


def noiseless_twin(config: dict, encoder, readout):
    """The embedded ring's physics, noise off: the oracle's model (simulated stations only)."""
    from labpgt.reservoirs.direct import DirectRingReservoir, simulated_ring_params

    params = simulated_ring_params(config["noise_scale"], step=ring_step(config))
    return DirectRingReservoir(params, seed=config["seed"],
                               n_nodes=encoder.n_nodes, encoding=encoder, readout=readout,
                               current_a=config["current_a"])


def ring_step(config: dict) -> dict | None:
    """The embedded simulated ring's scheduled step change (--ring-step-at-s ...), or None."""
    if config["ring_step_at_s"] is None:
        return None
    return {"at_s": config["ring_step_at_s"], "kelvin": config["ring_step_kelvin"],
            "gain_db": config["ring_step_gain_db"]}


def restore_world(sim, state) -> None:
    world = json.loads(state["extra"]).get("sim_world")
    if world is None:
        raise ConfigError("the checkpoint holds no simulator state; cannot resume an embedded run bit for bit")
    sim.load_world_state(world)


# --------------------------------------------------------------------------- operating point, dry run
def operating_point_from_map(config: dict) -> dict:
    """The bias current from a sweep map (``reference_from``; the line is taken at the start of the
    run, labpgt.experiment.probe.reference_probe): a current map's point nearest ``current_a``, or
    the current of a map taken at one current (refused if ``current_a`` was set to another)."""
    from labpgt.experiment.options import OPTIONS
    from labpgt.sweep.file import read_operating_point

    path = config["reference_from"]
    point = read_operating_point(path, config["current_a"])
    if point.kind != "current" and config["current_a"] not in (OPTIONS["current_a"].default, point.current_a):
        raise ConfigError(f"current_a = {config['current_a']} A, but the {point.kind} map {path} was taken at "
                          f"{point.current_a} A; allowed: {point.current_a} A (or a current map)")
    log.info("operating point from %s: %g A, line %.6f GHz", path, point.current_a, point.line_hz / 1e9)
    return {**config, "current_a": point.current_a}


def dry_run(config: dict, resumed: Resumed | None) -> int:
    """``labpgt train --dry-run``: the plan and the instrument-time estimate; nothing is connected."""
    from labpgt.experiment.embedded import loaded_station
    from labpgt.experiment.probe import probe_window
    from labpgt.sweep.timing import StationTiming, describe_seconds

    left = config["budget"] - (int(resumed.state["measurements"]) if resumed and resumed.state else 0)
    data = config["task"] if config["model"] == "transformer" else config["dataset"]
    print(f"plan: {config['model']} model on {data}, estimator {config['estimator']}, {left} training measurements "
          f"(budget {config['budget']}), seed {config['seed']}")
    if config["model"] == "transformer":
        print(f"reservoir: {config['reservoir']}, evaluated in-process: no instruments")
        print("dry run: nothing was moved")
        return 0
    embedded = resumed.embedded if resumed else config["station"] is None
    station_text = resumed.station_text if (resumed and not embedded) else None
    with loaded_station(None if embedded else config["station"], seed=config["seed"],
                        station_text=station_text) as station:
        timing = StationTiming.from_station(station)
        sa = station.roles["spectrum_analyzer"]
        sa_limits = sa.driver.limits_for_station(sa.limits).get("frequency_hz")
        print(f"station: {station.name} ({station.source}), pacing {station.pacing}")
        for line in station.describe_roles():
            print(f"  {line}")
        print(f"bias current: {config['current_a']} A, trained within ± {config['current_window_a']} A")
        if resumed:
            print("reference: as recorded in the run file")
        elif config["reference_hz"] is not None:
            print(f"reference: {config['reference_hz']:g} Hz (given; no probe sweep)")
        elif config["reference_from"] is not None:
            from labpgt.sweep.file import read_operating_point

            point = read_operating_point(config["reference_from"], config["current_a"])
            print(f"reference: the line at {point.line_hz / 1e9:.6f} GHz of the {point.kind} map "
                  f"{config['reference_from']} at {point.current_a} A (no probe sweep)")
        else:
            center, span = probe_window(sa_limits, config["current_a"], config["probe_center_hz"],
                                        config["probe_span_hz"])
            print(f"reference: a probe sweep (RF off) for the ring's line within {center / 1e9:.4f} GHz ± "
                  f"{span / 2e6:g} MHz")
        per = timing.measurement_s()
        total = left * per + timing.ramp_s(0.0, config["current_a"])
        print(f"instrument time (estimate): {left} measurements x {per * 1e3:.1f} ms (the station's analyzer window "
              f"{timing.analyzer_span_hz / 1e6:g} MHz at RBW {timing.analyzer_rbw_hz / 1e3:g} kHz, the generator's "
              f"settling, {3} round trips) + the magnet's ramp = {describe_seconds(total)}, plus the evaluations "
              f"every {config['eval_every']} steps")
    print("dry run: nothing was moved")
    return 0


# --------------------------------------------------------------------------- run files
def refuse_existing(path: Path) -> None:
    """A new run never writes over a file; say what the file there is and what to do instead."""
    if not path.exists():
        return
    try:
        with RunReader(path) as reader:
            status = reader.status
    except (RunFileError, OSError) as exc:
        raise ConfigError(f"{path} exists and is no run file that can be continued ({exc}); allowed: another --out "
                          f"(or remove that file)") from None
    if status == "completed":
        raise ConfigError(f"run file {path} exists already and holds a completed run; allowed: another --out (a "
                          f"folder gives each run a new name)")
    raise ConfigError(f"run file {path} exists already (status {status}); continue it with: labpgt train --resume "
                      f"{path}, or choose another --out")


def new_run_path(out: str, config: dict) -> Path:
    path = Path(out)
    if path.suffix in (".h5", ".hdf5"):
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    path.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    what = (f"transformer-{config['task']}-{config['reservoir']}" if config["model"] == "transformer"
            else Path(config["dataset"]).stem  # a data file's name, without its folders
            + (f"-deep{config['blocks']}" if config["model"] == "deep" else ""))
    return path / f"{stamp}-{what}-{config['estimator']}-s{config['seed']}.h5"


def progress_bar(config: dict, start: int):
    if not config["progress"]:
        return None, None
    from tqdm import tqdm

    data = config["task"] if config["model"] == "transformer" else config["dataset"]
    bar = tqdm(total=config["budget"], initial=start, unit="meas", dynamic_ncols=True,
               desc=f"{config['estimator']} on {data}")
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


def report_end(outcome: TrainingOutcome) -> int:
    final = outcome.final_evaluation
    print(f"run {outcome.status}: {outcome.train_measurements} training measurements, {outcome.steps} steps"
          + (f", test accuracy {final['test_accuracy']:.3f}" if final else ""))
    print(f"run file: {outcome.run_path}")
    if outcome.status == "aborted":
        print(f"continue with: labpgt train --resume {outcome.run_path}")
    return outcome.exit_code


# --------------------------------------------------------------------------- replay
def run_replay(path) -> int:
    """``labpgt replay RUN.h5``: rerun against the recorded measurements; 0 when bit for bit."""
    from labpgt.experiment.replay import replay

    with RunReader(path) as reader:
        metadata = dict(reader.metadata)
        config = recorded_config(reader, path)
        dataset = dataset_of_run(reader, config) if config["model"] != "transformer" else None
        estimator_options = registry.recorded_options(config, metadata.get("estimator_options"))
    layout = json.loads(metadata["physical_layer"])
    spec = registry.spec_for(config["estimator"], config["model"])
    reservoir_model = None
    if "reservoir_model" in spec.needs:
        if not metadata.get("embedded_simulator", False):
            raise ConfigError(f"estimator {config['estimator']!r} needs the simulated ring's noiseless model; this "
                              f"run used a real station")
        if config["model"] == "transformer":
            from labpgt.data.tasks import load_task

            reservoir_model = in_process_reservoir(config["reservoir"], load_task(config["task"]).n_tokens,
                                                   seed=config["seed"], noise_scale=config["noise_scale"],
                                                   current_a=config["current_a"])
        else:
            from labpgt.reservoirs.encoding import BandReadout

            reservoir_model = noiseless_twin(config, encoder_from_layout(layout), BandReadout(**layout["readout"]))

    def build(reservoir, recorder):
        return build_trainer(config, reservoir, reservoir_model=reservoir_model, recorder=recorder,
                             current_bounds_a=layout.get("current_bounds_a"), dataset=dataset,
                             estimator_options=estimator_options)

    result = replay(path, build, encoder=encoder_from_layout(layout), independent_nodes="knobs_only" not in layout)
    print(result.message)
    return 0 if result.ok else 1
