"""What a trial is: its options (names, types, allowed values), and how a worker runs it.

- ``train`` (the default): an ordinary ``labpgt train`` run in a child process, with a run file
  (replayable, resumable from its checkpoints). Options: the experiment's.
- ``bench-training``: one run of ``scripts/bench_training.py`` (``run_one``: in-process
  simulated ring, its own evaluation schedule, and the CMA-ES/Nevergrad peers that ``labpgt
  train`` does not have), called on the worker; its result is a JSON file. It has no checkpoints:
  an interrupted one starts over. It needs a source checkout (the script is not installed).

The kinds are fixed here: a study file names one, it never names code to run.
"""
from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from labpgt.study.options import OPTIONS, ConfigError, validated_experiment


class TrialKindError(ValueError):
    """Options a trial kind does not allow (the message names the source, key and what is allowed)."""


class TrialKind(Protocol):
    name: str
    #: options the study sets itself, refused in a study file
    owned: tuple[str, ...]

    def option_names(self) -> tuple[str, ...]: ...

    def option_type(self, name: str) -> type: ...

    def resolve(self, options: dict, source: str) -> dict:
        """Every option of one trial (defaults < ``options``), checked; TrialKindError if not allowed."""
        ...


@dataclass(frozen=True)
class TrainKind:
    name: str = "train"
    owned: tuple[str, ...] = ("out", "progress")

    def option_names(self) -> tuple[str, ...]:
        return tuple(OPTIONS)

    def option_type(self, name: str) -> type:
        return OPTIONS[name].type

    def resolve(self, options: dict, source: str) -> dict:
        try:
            return validated_experiment({**options, "progress": False}, source)
        except ConfigError as exc:
            raise TrialKindError(str(exc)) from None


# bench_training.py's job: every key its run_one reads, with the defaults of its command line
_BENCH_DEFAULTS = {
    "dataset": "iris", "condition": "default", "method": "node", "seed": 0, "budget": 10_000,
    "reservoir": "ring", "n_nodes": 1, "n_bands": 10, "noise_multiplier": 1.0, "batch_size": None,
    "sigma0": None, "lr": None, "options": None, "evals_per_decade": 16, "final_repeats": 3,
}
_BENCH_TYPES = {"batch_size": int, "sigma0": float, "lr": float, "options": dict}
_BENCH_CHOICES = {
    "dataset": ("iris", "digits"), "condition": ("default", "noise3", "drift"), "reservoir": ("ring", "toy"),
    "method": ("oracle", "node", "twin", "spsa", "pgt", "cmaes", "ng-tbpsa", "ng-ngopt"),
}
BENCH_SCRIPT = Path("scripts") / "bench_training.py"


@dataclass(frozen=True)
class BenchTrainingKind:
    name: str = "bench-training"
    owned: tuple[str, ...] = ()

    def option_names(self) -> tuple[str, ...]:
        return tuple(_BENCH_DEFAULTS)

    def option_type(self, name: str) -> type:
        return _BENCH_TYPES.get(name) or type(_BENCH_DEFAULTS[name])

    def resolve(self, options: dict, source: str) -> dict:
        job = dict(_BENCH_DEFAULTS)
        for key, value in options.items():
            if key not in job:
                raise TrialKindError(f"{source}: unknown option {key!r}; allowed: {', '.join(_BENCH_DEFAULTS)}")
            kind = self.option_type(key)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kind)
                                      or (kind is float and not math.isfinite(value))):
                raise TrialKindError(f"{source}: option {key!r} must be {kind.__name__}, got {value!r}")
            if key in _BENCH_CHOICES and value not in _BENCH_CHOICES[key]:
                raise TrialKindError(f"{source}: option {key!r} = {value!r} is not allowed; allowed: "
                                     f"{', '.join(_BENCH_CHOICES[key])}")
            if kind in (int, float) and key != "seed" and value is not None and value <= 0:
                raise TrialKindError(f"{source}: option {key!r} must be positive, got {value!r}")
            job[key] = value
        return job


KINDS: dict[str, TrialKind] = {kind.name: kind for kind in (TrainKind(), BenchTrainingKind())}


def source_root() -> Path:
    """The source checkout this labpgt was imported from (scripts/ lives beside labpgt/)."""
    return Path(__file__).resolve().parents[2]


def run_bench_training(job: dict) -> dict:
    """One bench_training run on this worker: its ``run_one(job)``, the script loaded once per process."""
    module = sys.modules.get("labpgt_bench_training")
    if module is None:
        path = source_root() / BENCH_SCRIPT
        if not path.is_file():
            raise RuntimeError(f"trial kind 'bench-training' needs a source checkout: {path} is missing")
        spec = importlib.util.spec_from_file_location("labpgt_bench_training", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module.run_one(dict(job))
