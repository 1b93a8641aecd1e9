"""One builder: an experiment (options, a dataset or task, a reservoir) -> a Trainer, for every model.

:func:`make_trainer` is the one place a trainer is assembled: the model of the kind asked for,
the estimator from the registry (its tuned defaults, then the experiment's options; what it
needs from the reservoir checked here, once), the optimizer chain from the estimator's tuning
(optimizer, learning rate, decay, per-group step), and the Trainer. :func:`build_trainer` does
it from an experiment configuration (labpgt/experiment/options.py) -- for the dense model on a
station and for the transformer in-process alike -- and :func:`in_process_reservoir` makes the
transformer's reservoir (the simulated ring in direct mode, or an echo-state network).
Benchmarks and tests call the same functions.
"""
from __future__ import annotations

import numpy as np

from labpgt.contracts import FLAG_SIMULATED, NoiselessModel, Reservoir
from labpgt.data.datasets import open_dataset
from labpgt.data.tasks import load_task
from labpgt.experiment import registry
from labpgt.models import deep, dense, transformer
from labpgt.runfile.recording import Recording
from labpgt.training.optim import Chain, InverseTimeDecay, ScaleGroups, make_optimizer
from labpgt.training.trainer import Trainer

#: the transformer's reservoirs: ring = 2 knobs (detuning, power) -> 10 band features per token
IN_PROCESS_RESERVOIRS = ("ring", "esn")
RING_DEFAULTS = {"n_bands": 10, "drift": False}
ESN_DEFAULTS = {"n_units": 10, "leak": 0.5, "spectral_radius": 0.9, "noise_std": 0.05}

_TUNED = object()  # "use the estimator's tuned value"


def make_trainer(dataset, estimator: str, reservoir: Reservoir, *, model: str = "dense", seed: int = 0,
                 budget: int = 30_000, batch_size: int | None = None, lr: float | None = None,
                 estimator_options: dict | None = None, experiment: dict | None = None,
                 model_options: dict | None = None, current_a: float = 1.8,
                 reservoir_model: NoiselessModel | None = None, decay_steps=_TUNED, before_lr_ratio=_TUNED,
                 **trainer_options) -> Trainer:
    """A Trainer wired with the registry's tuned defaults; every default can be overridden.

    dataset: a :class:`~labpgt.data.datasets.Dataset` (dense) or a task (transformer);
    estimator: a registry name; estimator_options: constructor options over the tuned ones;
    experiment: experiment options the registry maps onto estimator options (epsilon,
    directions, ...; refused where they do not apply); reservoir_model: the noiseless model of
    the reservoir for the estimators that need one (default: the reservoir itself when it
    declares :class:`~labpgt.contracts.NoiselessModel`). Remaining keyword options go to the
    Trainer (eval_every, checkpoint_every, eval_batch_size, recorder, progress).
    """
    experiment = {**(experiment or {}), "lr": lr, "batch_size": batch_size}
    tuned = registry.tuning(estimator, model, experiment)
    if reservoir_model is None and isinstance(reservoir, NoiselessModel):
        reservoir_model = reservoir
    spec = registry.spec_for(estimator, model)
    if spec.independent_nodes:  # it models one virtual node's map
        registry.check_reservoir(estimator, model, reservoir.independent_nodes)
    options = {**registry.estimator_options(spec, model, experiment), **(estimator_options or {})}
    est = registry.build_estimator(spec, options, model=model, reservoir_model=reservoir_model)
    net = _model(model, dataset, reservoir, seed=seed, current_a=current_a,
                 options={**tuned.model_options, **(model_options or {})})
    est.check_model(net)  # e.g. a kick that would leave [-1, 1]: refused before anything is measured
    optimizer = _optimizer(tuned, net,
                           tuned.decay_steps if decay_steps is _TUNED else decay_steps,
                           tuned.before_lr_ratio if before_lr_ratio is _TUNED else before_lr_ratio)
    trainer = deep.DeepTrainer if model == "deep" else Trainer  # the deep model's evaluation takes K passes
    return trainer(net, reservoir, est, dataset, optimizer, seed=seed, budget=budget, batch_size=tuned.batch_size,
                   **trainer_options)


def _model(kind: str, dataset, reservoir: Reservoir, *, seed: int, current_a: float, options: dict | None):
    if kind == "dense":
        return dense.HybridModel(dataset.n_features, reservoir.n_inputs, reservoir.n_features, dataset.n_classes,
                                 current_a=current_a, seed=seed, **{**dense.DEFAULTS, **(options or {})})
    if kind == "deep":
        return deep.DeepPhysicalModel(dataset.n_features, reservoir.n_inputs, reservoir.n_features, dataset.n_classes,
                                      current_a=current_a, seed=seed, **{**deep.DEFAULTS, **(options or {})})
    tokens = dataset.n_tokens
    return transformer.TransformerModel(
        tokens, dataset.token_features, reservoir.n_inputs // tokens, reservoir.n_features // tokens,
        dataset.n_outputs, task=dataset.kind, target_variance=dataset.target_variance, current_a=current_a,
        seed=seed, **{**transformer.DEFAULTS, **(options or {})})


def _optimizer(tuned: registry.Tuning, net, decay_steps, before_lr_ratio):
    """optimizer [-> inverse-time decay] [-> a smaller step for the layers before the reservoir]."""
    parts = [make_optimizer(tuned.optimizer, lr=tuned.lr)]
    if decay_steps:
        parts.append(InverseTimeDecay(decay_steps))
    if before_lr_ratio != 1.0:
        parts.append(ScaleGroups(np.where(net.group_mask("before"), before_lr_ratio, 1.0)))
    return Chain(*parts) if len(parts) > 1 else parts[0]


def in_process_reservoir(kind: str, n_tokens: int, *, seed: int = 0, noise_scale: float = 1.0,
                         current_a: float = 1.8, **options):
    """``ring``: DirectRingReservoir with n_nodes = n_tokens; ``esn``: EchoStateReservoir over the tokens
    (noise_std scaled by noise_scale). Both record to their ``recorder`` (none until one is attached)."""
    if kind == "ring":
        from labpgt.reservoirs.direct import DirectRingReservoir, simulated_ring_params

        o = {**RING_DEFAULTS, **options}
        unknown = set(o) - {"n_bands", "drift", "encoding", "readout"}
        if unknown:
            raise ValueError(f"unknown ring option(s) {sorted(unknown)}; allowed: n_bands, drift, encoding, readout")
        readout = {"n_bands": o["n_bands"], **(o.get("readout") or {})}
        return DirectRingReservoir(simulated_ring_params(noise_scale, o["drift"]), seed=seed, n_nodes=n_tokens,
                                   encoding=o.get("encoding"), readout=readout, current_a=current_a)
    if kind == "esn":
        from labpgt.reservoirs.esn import EchoStateReservoir

        o = {**ESN_DEFAULTS, **options}
        o["noise_std"] = o["noise_std"] * noise_scale
        return EchoStateReservoir(n_tokens, seed=seed, current_ref_a=current_a, **o)
    raise ValueError(f"unknown reservoir {kind!r}; allowed: {', '.join(IN_PROCESS_RESERVOIRS)}")


def make_transformer_trainer(task: str, estimator: str, reservoir: str, *, seed: int = 0, budget: int = 200_000,
                             noise_scale: float = 1.0, reservoir_options: dict | None = None, current_a: float = 1.8,
                             **options) -> Trainer:
    """The transformer on ``task`` through an in-process ``reservoir`` ("ring" or "esn"); options as for
    :func:`make_trainer` (a ``recorder`` also receives every reservoir evaluation, flagged simulated)."""
    data = load_task(task)
    res = in_process_reservoir(reservoir, data.n_tokens, seed=seed, noise_scale=noise_scale, current_a=current_a,
                               **(reservoir_options or {}))
    if options.get("recorder") is not None:  # the reservoir records its evaluations, flagged simulated
        res.recorder = options["recorder"] = Recording(options["recorder"], flags=FLAG_SIMULATED)
    return make_trainer(data, estimator, res, model="transformer", seed=seed, budget=budget, current_a=current_a,
                        **options)


def dataset_of_config(config: dict):
    """The dense experiment's data set, read and checked (bad data fails here, before any instrument moves)."""
    return open_dataset(config["dataset"], label=config["label"], test_fraction=config["test_fraction"])


def build_trainer(config: dict, reservoir: Reservoir, *, reservoir_model: NoiselessModel | None = None,
                  recorder=None, progress=None, current_bounds_a=None, dataset=None,
                  estimator_options: dict | None = None) -> Trainer:
    """The trainer of an experiment configuration, on ``reservoir`` (a station's, an in-process one, or a
    replay of either). ``current_bounds_a``: where the dense model's trained bias current may go (A);
    ``dataset``: the dense model's data set (a run's recorded one; default: opened from the config);
    ``estimator_options``: constructor options over the tuned ones (a run's recorded ones on resume).
    An experiment that names no estimator (``options.defaults()`` not yet checked) gets its model's default."""
    if config["estimator"] is None:
        config = {**config, "estimator": registry.DEFAULT_ESTIMATORS[config["model"]]}
    common = dict(seed=config["seed"], budget=config["budget"], batch_size=config["batch_size"], lr=config["lr"],
                  experiment=config, current_a=config["current_a"], reservoir_model=reservoir_model,
                  eval_every=config["eval_every"], checkpoint_every=config["checkpoint_every"],
                  recorder=recorder, progress=progress, estimator_options=estimator_options)
    if config["model"] == "transformer":
        return make_trainer(load_task(config["task"]), config["estimator"], reservoir, model="transformer", **common)
    if config["model"] == "deep":
        model_options = {"n_blocks": config["blocks"], "width": config["width"] or deep.DEFAULTS["width"]}
    else:
        model_options = {"hidden_before": (config["hidden"],)}
    trainer = make_trainer(dataset if dataset is not None else dataset_of_config(config), config["estimator"],
                           reservoir, model=config["model"], model_options=model_options, **common)
    one_batch = trainer.batch_size * config["nodes"]  # the least any estimator's step measures
    if config["budget"] < one_batch:
        from labpgt.experiment.options import ConfigError

        raise ConfigError(f"budget {config['budget']} is smaller than one batch through the ring "
                          f"({trainer.batch_size} samples x {config['nodes']} nodes = {one_batch} measurements); "
                          f"allowed: {one_batch} or more")
    if current_bounds_a is not None:
        # the initial current too: the first perturbation must already stay inside the limits
        trainer.model.current_bounds_a = tuple(current_bounds_a)
        trainer.model.set_params(trainer.project(trainer.model.params()))
    return trainer
