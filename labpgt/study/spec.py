"""A study file: a base experiment, the variants to run (grid, list, or a search), the seeds.

```toml
[study]
out = "studies/iris"          # the study folder (default: studies/<file stem>, beside the cwd)
seeds = [0, 1, 2]             # every variant runs once per seed (default: the base's seed)
workers = 2                   # local worker processes (default: the CPUs; --workers wins)
kind = "train"                # train (labpgt train runs) | bench-training (labpgt/study/kinds.py)

[base]                        # an experiment: the keys of `labpgt train --config`
dataset = "iris"
budget = 3000

[grid]                        # every combination of these values ...
estimator = ["node", "twin"]

[[variants]]                  # ... and/or a list of variants (crossed with the grid)
lr = 0.05

[search]                      # or instead of grid/variants: an Optuna search
trials = 12                   # the trial budget: points tried (each runs every seed)
objective = "final_test_accuracy"
sampler = "tpe"               # tpe | random
seed = 0
[search.space]
lr = { low = 0.005, high = 0.2, log = true }
batch_size = { choices = [8, 16, 32] }
```

Every error names the file, the table and key, the value and what is allowed, in one line.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from labpgt.study.kinds import KINDS, TrialKind, TrialKindError


class StudyError(ValueError):
    """A study file that cannot be run as written."""


TABLES = ("study", "base", "grid", "variants", "search")
STUDY_KEYS = ("out", "seeds", "workers", "kind")
SEARCH_KEYS = ("trials", "objective", "sampler", "seed", "space")
#: what a search may optimise, and in which direction
OBJECTIVES = {"final_test_accuracy": "maximize", "final_test_loss": "minimize"}
SAMPLERS = ("tpe", "random")


@dataclass(frozen=True)
class Dimension:
    """One searched option: a numeric range (``low``..``high``, optionally log or stepped) or choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None


@dataclass(frozen=True)
class Search:
    trials: int
    objective: str
    sampler: str
    seed: int
    space: tuple[Dimension, ...]

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective]


@dataclass(frozen=True)
class Trial:
    """One run: the options that differ from the base (with the seed), and its full experiment."""

    name: str
    overrides: dict
    experiment: dict
    kind: str = "train"
    search_point: int | None = None

    @property
    def station(self) -> str | None:
        """The station file this trial measures through (None: the embedded simulator)."""
        return self.experiment.get("station")


@dataclass
class Study:
    path: Path
    text: str
    out: Path
    seeds: tuple[int, ...]
    workers: int | None
    base: dict
    kind: TrialKind
    variants: list[dict] = field(default_factory=list)
    search: Search | None = None

    def trials(self) -> list[Trial]:
        """Every grid/list trial (variant x seed), in the file's order; none for a search."""
        if self.search is not None:
            return []
        return [self.trial(variant, seed) for variant in self.variants for seed in self.seeds]

    def trial(self, variant: dict, seed: int, search_point: int | None = None) -> Trial:
        overrides = {**variant, "seed": seed}
        source = f"{self.path} (trial {_describe(overrides)})"
        try:
            experiment = self.kind.resolve({**self.base, **overrides}, source)
        except TrialKindError as exc:
            raise StudyError(str(exc)) from None
        return Trial(name=trial_name(overrides, search_point), overrides=overrides, experiment=experiment,
                     kind=self.kind.name, search_point=search_point)

    def stations(self) -> set[str]:
        """The station files the study's trials use (besides the embedded simulator)."""
        names = {self.base.get("station")} | {v.get("station") for v in self.variants}
        return {name for name in names if name is not None}


def _describe(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items())


def trial_name(overrides: dict, search_point: int | None = None) -> str:
    """A folder name that says what the trial is and stays the same when the study is rerun:
    readable options, then a hash of all of them (so long or similar values never collide)."""
    canonical = json.dumps(overrides, sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    if search_point is not None:
        readable = f"search{search_point:04d}-seed{overrides['seed']}"
    else:
        # sorted (seed last): reordering keys in the study file must not rename the trials
        keys = sorted(k for k in overrides if k != "seed") + ["seed"]
        readable = "-".join(f"{k}{overrides[k]}" for k in keys)
    readable = re.sub(r"[^A-Za-z0-9.=_-]+", "_", readable)[:80]
    return f"{readable}-{digest}"


# --------------------------------------------------------------------------- loading
def load_study(path, out: str | None = None) -> Study:
    """Read and check a study file; ``out`` (the CLI's --out) wins over ``[study] out``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise StudyError(f"cannot read study file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path}: not valid TOML: {exc}") from None
    _only(path, "", data, TABLES, "tables")

    settings = _table(path, data, "study")
    _only(path, "[study]", settings, STUDY_KEYS, "keys")
    kind_name = settings.get("kind", "train")
    if kind_name not in KINDS:
        raise StudyError(f"{path}: [study] kind = {kind_name!r} is not allowed; allowed: {', '.join(KINDS)}")
    kind = KINDS[kind_name]
    base = _table(path, data, "base")
    _check_options(path, kind, "[base]", base)

    seeds = settings.get("seeds", [base.get("seed", 0)])
    if (not isinstance(seeds, list) or not seeds or len(set(map(repr, seeds))) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise StudyError(f"{path}: [study] seeds = {seeds!r} is not allowed; allowed: a non-empty list of "
                         f"distinct whole numbers")
    workers = settings.get("workers")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise StudyError(f"{path}: [study] workers = {workers!r} is not allowed; allowed: a whole number, 1 or more")
    folder = out if out is not None else settings.get("out", str(Path("studies") / path.stem))
    if not isinstance(folder, str) or not folder:
        raise StudyError(f"{path}: [study] out = {folder!r} is not allowed; allowed: a folder path (text)")

    variants = _variants(path, kind, data)
    search = None
    if "search" in data:
        if "grid" in data or "variants" in data:
            raise StudyError(f"{path}: [search] cannot be combined with [grid] or [[variants]]; allowed: either a "
                             f"search or a grid/list of variants")
        search = _search(path, kind, data["search"])
    if "seed" in base and "seeds" in settings:
        raise StudyError(f"{path}: [base] seed and [study] seeds both given; allowed: one of them")
    study = Study(path=path, text=text, out=Path(folder), seeds=tuple(seeds), workers=workers, base=base,
                  kind=kind, variants=variants, search=search)
    # every trial's experiment checked now, before anything runs (a search: the base and each bound)
    if search is None:
        study.trials()
    else:
        for dim in search.space:
            for value in (dim.choices or (dim.low, dim.high)):
                study.trial({dim.name: _typed(kind, dim.name, value)}, seeds[0])
    return study


def _only(path, where: str, data: dict, allowed, what: str) -> None:
    unknown = [key for key in data if key not in allowed]
    if unknown:
        place = f"{where} " if where else ""
        raise StudyError(f"{path}: {place}unknown {what} {', '.join(map(repr, unknown))}; allowed: "
                         f"{', '.join(allowed)}")


def _table(path, data: dict, name: str) -> dict:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise StudyError(f"{path}: {name!r} must be a table [{name}], got {table!r}")
    return table


def _check_options(path, kind: TrialKind, where: str, options: dict) -> None:
    """Option names only (values are checked per trial, with the trial kind's own rules)."""
    names = kind.option_names()
    unknown = [key for key in options if key not in names]
    if unknown:
        raise StudyError(f"{path}: {where} unknown option(s) {', '.join(map(repr, unknown))}; allowed: "
                         f"{', '.join(k for k in names if k not in kind.owned)}")
    owned = [key for key in options if key in kind.owned]
    if owned:
        raise StudyError(f"{path}: {where} {owned[0]} is set by the study (each trial's run file goes to the study "
                         f"folder, without a progress bar); allowed: the other experiment options")
    if "seed" in options and where != "[base]":
        raise StudyError(f"{path}: {where} seed is not allowed here; allowed: [study] seeds = [...]")


def _variants(path, kind: TrialKind, data: dict) -> list[dict]:
    grid = _table(path, data, "grid")
    _check_options(path, kind, "[grid]", grid)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise StudyError(f"{path}: [grid] {key} = {values!r} is not allowed; allowed: a non-empty list of values")
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    listed = data.get("variants", [{}])
    if not isinstance(listed, list) or not all(isinstance(v, dict) for v in listed) or not listed:
        raise StudyError(f"{path}: variants must be a list of tables [[variants]], got {listed!r}")
    variants = []
    for i, variant in enumerate(listed):
        _check_options(path, kind, f"[[variants]] #{i + 1}", variant)
        both = sorted(set(variant) & set(grid))
        if both:
            raise StudyError(f"{path}: [[variants]] #{i + 1} sets {both[0]!r}, which [grid] varies too; allowed: "
                             f"each option in one of them")
        variants += [{**variant, **point} for point in points]
    return variants


def _typed(kind: TrialKind, name: str, value):
    return float(value) if kind.option_type(name) is float and isinstance(value, int) else value


def _search(path, kind: TrialKind, table) -> Search:
    if not isinstance(table, dict):
        raise StudyError(f"{path}: 'search' must be a table [search], got {table!r}")
    _only(path, "[search]", table, SEARCH_KEYS, "keys")
    trials = table.get("trials")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise StudyError(f"{path}: [search] trials = {trials!r} is not allowed; allowed: a whole number, 1 or more "
                         f"(the points the search may try)")
    objective = table.get("objective", "final_test_accuracy")
    if objective not in OBJECTIVES:
        raise StudyError(f"{path}: [search] objective = {objective!r} is not allowed; allowed: {', '.join(OBJECTIVES)}")
    sampler = table.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise StudyError(f"{path}: [search] sampler = {sampler!r} is not allowed; allowed: {', '.join(SAMPLERS)}")
    seed = table.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise StudyError(f"{path}: [search] seed = {seed!r} is not allowed; allowed: a whole number")
    space = table.get("space")
    if not isinstance(space, dict) or not space:
        raise StudyError(f"{path}: [search.space] is missing or empty; allowed: option = {{ low = ..., high = ... }} "
                         f"or option = {{ choices = [...] }}")
    _check_options(path, kind, "[search.space]", space)
    return Search(trials=trials, objective=objective, sampler=sampler, seed=seed,
                  space=tuple(_dimension(path, kind, name, spec) for name, spec in space.items()))


def _dimension(path, kind: TrialKind, name: str, spec) -> Dimension:
    where = f"{path}: [search.space] {name}"
    allowed = "{ low = ..., high = ..., log = true|false, step = ... } or { choices = [...] }"
    if not isinstance(spec, dict):
        raise StudyError(f"{where} = {spec!r} is not allowed; allowed: {allowed}")
    _only(path, f"[search.space] {name}", spec, ("low", "high", "log", "step", "choices"), "keys")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise StudyError(f"{where}: choices must be a non-empty list and alone; allowed: {allowed}")
        return Dimension(name, choices=tuple(_typed(kind, name, c) for c in choices))
    number = kind.option_type(name)
    if number not in (int, float):
        raise StudyError(f"{where}: a range needs a numeric option ({name} is {number.__name__}); allowed: "
                         f"{{ choices = [...] }}")
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise StudyError(f"{where}.{key} = {value!r} is not allowed; allowed: a finite number")
        if number is int and not isinstance(value, int):
            raise StudyError(f"{where}.{key} = {value!r} is not allowed; allowed: a whole number ({name} is int)")
    if not low < high:
        raise StudyError(f"{where}: low = {low!r}, high = {high!r} is not allowed; allowed: low < high")
    if not isinstance(log, bool):
        raise StudyError(f"{where}.log = {log!r} is not allowed; allowed: true or false")
    if log and low <= 0:
        raise StudyError(f"{where}: log = true with low = {low!r} is not allowed; allowed: low > 0")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 or log):
        raise StudyError(f"{where}.step = {step!r} is not allowed; allowed: a positive number, without log")
    return Dimension(name, low=_typed(kind, name, low), high=_typed(kind, name, high), log=log, step=step)


def default_workers() -> int:
    return os.cpu_count() or 1
