"""The Python API for notebooks and scripts (exported from ``labpgt``; docs/api.md).

- :func:`open_run` -- a run file's effective rows, as arrays, xarray or pandas;
- :func:`open_station` -- a station as a context manager that leaves the rig safe, with
  ``measure(...)`` for one spectrum;
- :func:`experiment_config`, :func:`train`, :func:`resume` -- an experiment from a dict or TOML,
  run through the same pipeline as ``labpgt train`` (labpgt/experiment/run.py), with a progress
  callback;
- :func:`export_run` -- what ``labpgt export`` writes.

Heavy modules (the simulator, the trainer, xarray) are imported when a function needs them, so
``import labpgt`` stays cheap.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable


def open_run(path):
    """Open a run file for reading (being written, left by a killed run, or finished):
    a :class:`labpgt.runfile.views.Run`; use it as a context manager or call ``close()``."""
    from labpgt.runfile.views import open_run as _open_run

    return _open_run(path)


def open_station(station: str | Path | None = None, *, seed: int = 0, flavour: str = "keysight",
                 noise_scale: float | None = None):
    """A station session (:class:`labpgt.experiment.bench.StationSession`): ``station`` a station
    TOML, or None for the embedded simulated ring. ``with labpgt.open_station() as rig:
    spectrum = rig.measure(2.07e9, -10.0, 1.8)``; the exit leaves the rig safe and reads it back."""
    from labpgt.experiment.bench import StationSession

    return StationSession(station, seed=seed, flavour=flavour, noise_scale=noise_scale)


def experiment_config(source=None, **options) -> dict:
    """A checked experiment: defaults < ``source`` (a dict of options, a TOML file's path, or TOML
    text) < keyword ``options`` -- the names of ``labpgt train``'s flags, with _ for -."""
    from labpgt.experiment.options import experiment_config as _experiment_config

    return _experiment_config(source, **options)


def train(source=None, *, progress: Callable[[dict], None] | None = None, progress_bar: bool = False, **options):
    """Run an experiment (see :func:`experiment_config`) and return its
    :class:`labpgt.experiment.run.TrainingOutcome` (status, run_path, steps, train_measurements,
    final_evaluation). The progress bar is off unless ``progress_bar=True``; ``progress`` (a
    callable) gets every step record (``record["kind"] == "step"``:
    step, loss, accuracy, measurements, ...) and evaluation record (``"eval"``: test_loss,
    test_accuracy). Ctrl-C finishes the step, checkpoints and returns status "aborted"."""
    from labpgt.experiment.run import run_experiment

    config = experiment_config(source, **options)
    config["progress"] = progress_bar  # a notebook shows its own progress; the bar is the CLI's
    return run_experiment(config, argv=["labpgt.train"], progress=progress)


def resume(path, *, budget: int | None = None, progress: Callable[[dict], None] | None = None,
           progress_bar: bool = False):
    """Continue an interrupted run as recorded (``labpgt train --resume``), to ``budget``
    training measurements if given; returns its TrainingOutcome."""
    from labpgt.experiment.run import run_experiment

    given = {"progress": progress_bar, **({"budget": budget} if budget is not None else {})}
    return run_experiment(resume=path, resume_given=given, argv=["labpgt.resume"], progress=progress)


def export_run(path, out, fmt: str = "netcdf", *, overwrite: bool = False) -> list[Path]:
    """Write a clean copy of a run's effective rows: ``fmt`` "netcdf" (one file) or "csv" (a directory)."""
    from labpgt.runfile.export import export_run as _export_run

    return _export_run(path, out, fmt, overwrite=overwrite)
