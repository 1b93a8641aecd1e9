"""The one registry: estimator name -> class, its options (types, ranges) and its tuned defaults per model.

Every place that needs to know about estimators reads it: the experiment options (the allowed
names), the builder (which class, which options, which optimizer, which batch size), the
combination checks (which estimator applies to which model, which option to which estimator)
and the tests (every combination is built from here). To add an estimator: write its module
under labpgt/estimators/ and add one :class:`EstimatorSpec` below.

Tuned defaults, dense model (Iris through DirectRingReservoir at the default noise, 5 seeds;
scripts/bench_training.py measures them and docs/benchmarks.md lists the settings tried):

- node: batch 32 with Adam lr 0.05 reached 95% of the oracle in ~1.6k measurements on every
  seed (batch 16 / lr 0.02, the old default: ~2.4k; batch 8 or 4, lr 0.1, eps 0.1 or 0.03:
  faster medians on some seeds but 1-2 of 5 seeds stuck below 0.9);
- oracle: lr 0.05 (0.02: a little slower); batch 32 was slower per measurement;
- pgt: lr 0.01 (0.03 no better); spsa: first_step 0.05 (0.2 unstable).

Transformer (digits-seq through both reservoirs; scripts/bench_transformer.py):

- node: knob kick eps = 0.1 (on the ring 0.2 and 0.15 plateau lower, 0.05 learns slower: the
  ring's response is too nonlinear over +/-0.2); the transformer's noisy gradient gets a tenth
  of the readout's step (0.03 and 0.3 are worse on the ring), so it drifts less while the
  readout learns;
- node-token: node's kicks and optimizer; its less noisy transformer gradient takes 0.3 of the
  readout's step (ring, 1M: 0.1 learns slower, 1.0 diverges); two kick directions per step (4
  evaluations per sample and token) plateau higher on the ring than one at the same budget
  (4M, 3 seeds: 0.897 vs 0.886 median);
- token-twin (ring only): backprop's optimizer (Adam 0.01, decay over 500 steps, batch 64, the
  same step for every layer); the twin's knots every 1/7 knob unit (cells 14), smoothing 30. A
  smoother twin learns faster on this ring (its band features jump where a line crosses a band
  edge): seed 1 at 600k, cells 32 / smoothing 10 (decay over 2000 steps) 0.85, cells 20 /
  smoothing 30 0.914, cells 20 / smoothing 100 0.944, cells 14 / smoothing 30 0.942; seed 2, cells
  20, decay over 2000 steps instead of 500: 0.914 against 0.944 (single seeds; the benchmark with
  these defaults: docs/benchmarks.md).

Deep physical network (``deep``: K passes through the ring, labpgt/models/deep.py; Iris through
the ring, scripts/bench_phyll.py, docs/benchmarks.md "Deep physical networks and PhyLL"): node
and pgt keep the dense model's settings through their deep classes; phyll: lr 0.01 / 0.03 / 0.1 x
batch 8 / 16 / 32 on Iris (5k, 3 seeds), 0.02 / 0.05 / 0.1 x 8 / 32 on digits (40k, 2 seeds):
batch 8 with lr 0.05 (digits 0.935) to 0.1 (Iris 0.93) best.

SPSA brings its own gain sequence (its learning rate): plain SGD at lr 1, no decay, and ``lr``
is refused for it.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field, replace
from typing import Callable

from labpgt.estimators import (SPSA, Backprop, DeepNodePerturbation, DeepParameterPerturbation, DigitalTwin,
                               NodePerturbation, Oracle, ParameterPerturbation, PhysicalLocalLearning,
                               TokenNodePerturbation, TokenTwin)

#: deep: the dense experiment through K ring blocks (labpgt/models/deep.py), chosen by --blocks > 1 or --model deep
MODELS = ("dense", "transformer", "deep")


@dataclass(frozen=True)
class Tuning:
    """An estimator's tuned defaults on one model."""

    options: dict  # constructor options
    optimizer: str  # "adam" or "sgd"
    lr: float
    decay_steps: int | None  # InverseTimeDecay after the optimizer (None: no decay)
    batch_size: int
    before_lr_ratio: float = 1.0  # the step of the layers before the reservoir relative to the readout's
    #: the model as this estimator trains it (the builder's model options; e.g. phyll: the goodness head)
    model_options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Setting:
    """An experiment option (a CLI flag and TOML key) that sets an estimator option."""

    option: str  # experiment option name, e.g. "directions"
    keyword: str  # the estimator's constructor keyword, e.g. "n_directions"
    convert: Callable = staticmethod(lambda value: value)  # option value -> constructor value


@dataclass(frozen=True)
class Variant:
    """An estimator's class for one model where it differs from the spec's (and then the settings it takes)."""

    factory: Callable
    settings: tuple[Setting, ...]


@dataclass(frozen=True)
class EstimatorSpec:
    name: str
    factory: Callable  # the estimator class
    summary: str
    tuning: dict[str, Tuning]  # model -> tuned defaults; the models it applies to
    settings: tuple[Setting, ...] = ()
    #: what the builder must give it (checked when the experiment is built): "reservoir_model"
    #: (a NoiselessModel of the reservoir: simulated reservoirs only)
    needs: frozenset = field(default_factory=frozenset)
    lr_applies: bool = True  # False: the estimator's own gains are its learning rate
    #: model -> its own class and settings (e.g. node on the deep model); the others use factory and settings
    variants: dict[str, Variant] = field(default_factory=dict)
    #: True: it models one virtual node's map, so the reservoir's virtual nodes must be independent measurements
    #: (the ring; not the echo-state network, whose state runs from token to token)
    independent_nodes: bool = False

    def factory_for(self, model: str) -> Callable:
        return self.variants[model].factory if model in self.variants else self.factory

    def settings_for(self, model: str) -> tuple[Setting, ...]:
        return self.variants[model].settings if model in self.variants else self.settings


_EPSILON = Setting("epsilon", "epsilon")
_DIRECTIONS = Setting("directions", "n_directions")
_DISTRIBUTION = Setting("distribution", "distribution")

ESTIMATORS: dict[str, EstimatorSpec] = {spec.name: spec for spec in (
    EstimatorSpec(
        "node", NodePerturbation, "node perturbation at the reservoir's inputs, exact digital backprop elsewhere",
        tuning={
            "dense": Tuning({"epsilon": 0.05}, "adam", 0.05, 300, 32),
            "transformer": Tuning({"epsilon": 0.1}, "adam", 0.01, 2000, 64, before_lr_ratio=0.1),
            "deep": Tuning({"epsilon": 0.05}, "adam", 0.05, 300, 32),
        },
        settings=(_EPSILON, _DIRECTIONS),
        variants={"deep": Variant(DeepNodePerturbation, (_EPSILON, _DIRECTIONS))}),
    EstimatorSpec(
        "pgt", ParameterPerturbation, "parameter-space perturbation (PGT as published)",
        tuning={
            "dense": Tuning({"epsilon": 0.02, "n_directions": 1}, "adam", 0.01, 300, 16),
            "transformer": Tuning({"epsilon": 0.02, "n_directions": 1}, "adam", 0.003, 2000, 64),
            "deep": Tuning({"epsilon": 0.02, "n_directions": 1}, "adam", 0.01, 300, 16),
        },
        settings=(_EPSILON, _DIRECTIONS, Setting("one_sided", "two_sided", staticmethod(lambda one: not one)),
                  _DISTRIBUTION, Setting("scope", "scope")),
        # the deep network's pgt: two-sided over every trainable parameter
        variants={"deep": Variant(DeepParameterPerturbation, (_EPSILON, _DIRECTIONS, _DISTRIBUTION))}),
    EstimatorSpec(
        "spsa", SPSA, "Spall's SPSA with calibrated gains",
        tuning={
            "dense": Tuning({}, "sgd", 1.0, None, 16),
            "transformer": Tuning({}, "sgd", 1.0, None, 64),
        },
        lr_applies=False),
    EstimatorSpec(
        "oracle", Oracle, "exact gradients of the noiseless simulated ring (simulated reservoirs only)",
        tuning={
            "dense": Tuning({"fd_step": 0.05}, "adam", 0.05, 300, 16),
            "transformer": Tuning({"fd_step": 0.05}, "adam", 0.01, 500, 64),
        },
        needs=frozenset({"reservoir_model"})),
    EstimatorSpec(
        "twin", DigitalTwin, "physics-aware training: backward pass through a twin fitted to the run's measurements",
        # buffer_dtype f4: half the checkpoint bytes (docs/benchmarks.md, "The twin under drift and a step change")
        tuning={"dense": Tuning({"buffer_dtype": "f4"}, "adam", 0.05, 300, 8)}),
    EstimatorSpec(
        "backprop", Backprop, "the transformer baseline: backprop through the reservoir's noiseless model",
        tuning={"transformer": Tuning({"fd_step": 0.05}, "adam", 0.01, 500, 64)},
        needs=frozenset({"reservoir_model"})),
    EstimatorSpec(
        "node-token", TokenNodePerturbation, "node perturbation with each token credited through its own features",
        tuning={"transformer": Tuning({"epsilon": 0.1, "n_directions": 2}, "adam", 0.01, 2000, 64,
                                      before_lr_ratio=0.3)},
        settings=(_EPSILON, _DIRECTIONS)),
    EstimatorSpec(
        "token-twin", TokenTwin, "physics-aware training on the transformer: one measured pass, the backward pass "
        "through a spline twin of the ring's per-token map fitted to every row measured (ring, not echo-state)",
        tuning={"transformer": Tuning({"cells": 14, "smoothing": 30.0}, "adam", 0.01, 500, 64)},
        independent_nodes=True),
    EstimatorSpec(
        "phyll", PhysicalLocalLearning, "physical local learning: each ring block trained on its own contrastive "
        "goodness, no backward pass through the ring (deep model: --blocks > 1 or --model deep)",
        tuning={"deep": Tuning({}, "adam", 0.05, 300, 8, model_options={
            "head": "goodness", "train_current": False, "train_knob_maps": False})}),
)}

#: every experiment option that sets an estimator option, and the estimators that take it
ESTIMATOR_OPTIONS = sorted({s.option for spec in ESTIMATORS.values() for model in spec.tuning
                            for s in spec.settings_for(model)})


class RegistryError(ValueError):
    """An estimator or option that does not apply; the message says what is allowed."""


#: estimators rebuilt on --resume and replay with the options their run file records
#: (metadata estimator_options) rather than today's tuned defaults: their options() are exactly their
#: constructor's keywords, and their tuning has changed since runs were recorded (the twin's
#: mismatch detection and float32 buffer: a file recorded before them lacks the keys, so the
#: constructor's defaults, which are the old behaviour, apply)
REBUILT_FROM_RECORDED_OPTIONS = frozenset({"twin"})


def recorded_options(config: dict, recorded) -> dict | None:
    """The options to rebuild a recorded run's estimator with (``recorded``: its metadata's
    estimator_options, JSON text), for the estimators in REBUILT_FROM_RECORDED_OPTIONS (else None);
    an option it does not list gets the constructor's default (never today's tuned value): the
    estimator as it was when the run was recorded."""
    if config["estimator"] not in REBUILT_FROM_RECORDED_OPTIONS or not recorded:
        return None
    factory = spec_for(config["estimator"], config["model"]).factory_for(config["model"])
    defaults = {name: p.default for name, p in inspect.signature(factory).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **(json.loads(recorded) if isinstance(recorded, str) else dict(recorded))}


#: the estimator an experiment uses when it names none, per model (the twin exists for the dense model
#: only). The dense model's is the twin: it needs the fewest training measurements to the target on
#: Iris, wine and digits, with and without drift (docs/benchmarks.md, "The twin under drift and a step
#: change"); before issue 16 item 4, node (every run recorded before names its estimator)
DEFAULT_ESTIMATORS = {"dense": "twin", "transformer": "node", "deep": "node"}


def estimators_for(model: str) -> list[str]:
    return [name for name, spec in ESTIMATORS.items() if model in spec.tuning]


def spec_for(name: str, model: str) -> EstimatorSpec:
    if name not in ESTIMATORS:
        raise RegistryError(f"unknown estimator {name!r}; allowed: {', '.join(ESTIMATORS)}")
    spec = ESTIMATORS[name]
    if model not in spec.tuning:
        models = list(spec.tuning)
        only = " and ".join([", ".join(models[:-1]), models[-1]] if len(models) > 1 else models)
        raise RegistryError(f"estimator {name!r} ({spec.summary}) exists only for the {only} "
                            f"model; allowed for the {model} model: {', '.join(estimators_for(model))}")
    return spec


def estimator_options(spec: EstimatorSpec, model: str, config: dict) -> dict:
    """The constructor options: tuned defaults, then every estimator option the experiment sets.

    An option set (not None) that the estimator does not take is refused, naming what it takes.
    """
    settings = spec.settings_for(model)
    taken = {s.option: s for s in settings}
    options = dict(spec.tuning[model].options)
    for name in ESTIMATOR_OPTIONS:
        value = config.get(name)
        if value is None:
            continue
        if name not in taken:
            allowed = ", ".join(f"--{s.option.replace('_', '-')}" for s in settings) or "none"
            on = f" on the {model} model" if spec.variants else ""
            raise RegistryError(f"option {name!r} does not apply to estimator {spec.name!r}{on}; its options: {allowed}")
        options[taken[name].keyword] = taken[name].convert(value)
    return options


def build_estimator(spec: EstimatorSpec, options: dict, *, model: str = "dense", **provided):
    """The estimator of ``spec`` for ``model`` with constructor ``options``; ``provided``: what its ``needs``
    name (e.g. reservoir_model), checked here, once, when the experiment is built."""
    missing = [need for need in sorted(spec.needs) if provided.get(need) is None]
    if missing:
        raise RegistryError(f"estimator {spec.name!r} needs a noiseless model of the reservoir, which only a "
                            f"simulated reservoir has (the embedded station or an in-process reservoir); this "
                            f"experiment has none (a real station cannot be an oracle)")
    try:
        return spec.factory_for(model)(**options, **{need: provided[need] for need in spec.needs})
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"estimator {spec.name!r}: {exc}") from None


@dataclass(frozen=True)
class ModelLimits:
    """What an estimator's ``check_model`` looks at, known before any model is built."""

    u_scale: float
    train_current: bool


def check_experiment(name: str, model: str, config: dict, limits: ModelLimits) -> None:
    """Everything the registry can refuse before anything is built or measured: the estimator for the
    model, its options, ``lr``, and its options against the model (e.g. a kick leaving [-1, 1])."""
    spec = spec_for(name, model)
    tuning(name, model, config)
    options = estimator_options(spec, model, config)
    try:
        estimator = spec.factory_for(model)(**options, **{need: None for need in spec.needs})
        estimator.check_model(limits)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"estimator {name!r}: {exc}") from None


def check_reservoir(name: str, model: str, independent_nodes: bool) -> None:
    """Refuse an estimator that models one virtual node's map on a reservoir whose nodes are not independent."""
    if spec_for(name, model).independent_nodes and not independent_nodes:
        raise RegistryError(f"estimator {name!r} needs a reservoir whose virtual nodes are independent "
                            f"measurements (the ring); this one carries a state from node to node (the echo-state "
                            f"network)")


def tuning(name: str, model: str, config: dict) -> Tuning:
    """The tuned defaults with the experiment's ``lr`` and ``batch_size`` applied (``lr`` refused where its
    own gains are the estimator's learning rate)."""
    spec = spec_for(name, model)
    t = spec.tuning[model]
    lr = config.get("lr")
    if lr is not None and not spec.lr_applies:
        raise RegistryError(f"option 'lr' does not apply to estimator {name!r}: its gain sequence is its learning "
                            f"rate (set its gains instead)")
    return replace(t, lr=t.lr if lr is None else lr,
                   batch_size=t.batch_size if config.get("batch_size") is None else config["batch_size"])


def make_estimator(name: str, *, model: str = "dense", reservoir_model=None, **options):
    """The estimator ``name`` with constructor ``options`` (its class defaults otherwise, not the tuned ones);
    ``reservoir_model`` for the estimators that need one. For tests and benchmarks; experiments go
    through the builder."""
    return build_estimator(spec_for(name, model), options, model=model, reservoir_model=reservoir_model)
