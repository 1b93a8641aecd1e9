"""Training with the reservoir evaluated in-process: the transformer with a reservoir layer.

The reservoir is either the simulated ring in its vectorised direct mode (the same physics and
noise as ``sim/``, no wire) or a fixed random echo-state network. Every reservoir evaluation is
recorded in the run file like a measurement and flagged simulated, so ``labpgt replay``,
``report`` and ``inspect`` work as for a station run; ``--resume`` continues bit for bit because
the in-process noise is keyed by (seed, evaluation counter).
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np

from labpgt import __version__
from labpgt.interfaces import Perturbation

#: flags bit for simulated measurements (as in labpgt.physical)
FLAG_SIMULATED = 16


class KnobsOnly:
    """The "encoder" of a reservoir without instrument settings (the echo-state network).

    It has nothing to map onto Hz or dBm, so its rows carry NaN settings; replay still checks
    step, kind, sample, node and perturbation of every evaluation.
    """

    def __init__(self, n_nodes: int, knobs_per_node: int):
        self.n_nodes, self.knobs_per_node = int(n_nodes), int(knobs_per_node)
        self.n_inputs = self.n_nodes * self.knobs_per_node

    def encode(self, u, current_a):
        u = np.asarray(u, dtype=np.float64)
        nan = np.full((len(u), self.n_nodes), np.nan)
        return {"frequency_hz": nan, "power_dbm": nan, "current_a": float(current_a)}

    def to_dict(self) -> dict:
        return {"n_nodes": self.n_nodes, "knobs_per_node": self.knobs_per_node}


class RecordingReservoir:
    """Records every evaluation of a reservoir that does not record itself (one row per token)."""

    def __init__(self, reservoir, recorder=None):
        self.inner, self.recorder = reservoir, recorder
        self.n_inputs, self.n_features = reservoir.n_inputs, reservoir.n_features
        self.n_nodes = reservoir.n_nodes
        self.independent_nodes = getattr(reservoir, "independent_nodes", False)
        if hasattr(reservoir, "noiseless"):
            self.noiseless = reservoir.noiseless
        if hasattr(reservoir, "vjp"):
            self.vjp = reservoir.vjp

    @property
    def measurements(self) -> int:
        return self.inner.measurements

    @measurements.setter
    def measurements(self, value: int) -> None:
        self.inner.measurements = value

    def measure(self, u, *, current_a, kind, step, sample_index, perturbation=Perturbation()):
        start = self.inner.measurements
        features = self.inner.measure(u, current_a=current_a, kind=kind, step=step,
                                      sample_index=sample_index, perturbation=perturbation)
        if self.recorder is not None:
            b, nodes = len(u), self.n_nodes
            self.recorder.measurements_batch({
                "kind": kind, "step": int(step),
                "sample_index": np.repeat(np.asarray(sample_index), nodes),
                "node": np.tile(np.arange(nodes), b),
                "perturbation_direction": perturbation.direction, "perturbation_sign": perturbation.sign,
                "frequency_hz": np.full(b * nodes, np.nan), "power_dbm": np.full(b * nodes, np.nan),
                "current_a": float(current_a),
                "frequency_axis": (np.nan, np.nan, 1),
                "time_s": np.arange(start, start + b * nodes, dtype=np.float64),  # evaluation index, no clock
                "trace_dbm": np.full((b * nodes, 1), np.nan, dtype=np.float32),
                "features": features.reshape(b * nodes, -1),
                "flags": np.full(b * nodes, FLAG_SIMULATED),
            })
        return features


def build_transformer(config: dict, progress=None, reservoir_override=None):
    """The transformer trainer of an experiment configuration (``model = "transformer"``).

    Nothing is recorded until :func:`attach_recorder`; replay passes its ReplayReservoir as
    ``reservoir_override``.
    """
    from labpgt.transformer import make_transformer_trainer

    opts = {}
    if config["epsilon"] is not None and config["estimator"] in ("node", "pgt"):
        opts["epsilon"] = config["epsilon"]
    trainer = make_transformer_trainer(
        config["task"], config["estimator"], config["reservoir"], seed=config["seed"], budget=config["budget"],
        progress=progress, noise_scale=config["noise_scale"], batch_size=config["batch_size"],
        lr=config["lr"], estimator_options=opts, current_a=config["current_a"],
        eval_every=config["eval_every"], checkpoint_every=config["checkpoint_every"])
    if reservoir_override is not None:
        # the replayed reservoir answers with recorded features; the noise-free model the
        # backprop and oracle estimators differentiate, and whether its tokens are separate
        # measurements (node-token), still come from the simulated one
        for name in ("noiseless", "vjp", "independent_nodes"):
            if hasattr(trainer.reservoir, name):
                setattr(reservoir_override, name, getattr(trainer.reservoir, name))
        trainer.reservoir = reservoir_override
    return trainer


def attach_recorder(trainer, run):
    """Send the trainer's steps and every reservoir evaluation (flagged simulated) to ``run``."""
    res = trainer.reservoir
    if hasattr(res, "encoder"):  # the direct ring records itself, traces included
        from labpgt.transformer import SimulatedFlagRecorder

        res.recorder = SimulatedFlagRecorder(run)
    else:
        trainer.reservoir = RecordingReservoir(res, run)
    trainer.recorder = run
    return trainer


def layout_of(reservoir) -> dict:
    """What replay needs to rebuild the reservoir's request checks."""
    if hasattr(reservoir, "encoder"):
        return {"encoder": reservoir.encoder.to_dict(), "readout": reservoir.readout.to_dict()}
    inner = getattr(reservoir, "inner", reservoir)
    return {"knobs_only": KnobsOnly(inner.n_nodes, inner.n_inputs // inner.n_nodes).to_dict()}


def encoder_from_layout(layout: dict):
    if "knobs_only" in layout:
        return KnobsOnly(**layout["knobs_only"])
    from labpgt.encoding import KnobEncoder

    return KnobEncoder(**layout["encoder"])


def run_in_process(config: dict, run_path: Path, resume_state, argv, *, make_progress, stop_on_signal,
                   config_text: str) -> tuple[str, object]:
    """Train the transformer, recording to ``run_path``; returns (status, trainer)."""
    from labpgt.runfile import RunFile

    trainer = build_transformer(config)
    if resume_state is not None:
        trainer.load_state_dict(resume_state)
        run = RunFile.open_append(run_path, message=f"resumed; budget {config['budget']}", budget=config["budget"])
    else:
        res = trainer.reservoir
        points = res.readout.points if hasattr(res, "readout") else 1
        per_node = res.n_features // res.n_nodes
        run = RunFile.create(
            run_path, n_params=trainer.model.params().size, features_per_measurement=per_node,
            trace_points=points, optimizer_state_shapes={k: np.shape(v) for k, v in trainer.opt_state.items()},
            metadata={"station_toml": "", "experiment_toml": config_text, "identities": {},
                      "package_version": __version__, "command_line": shlex.join(argv or sys.argv),
                      "seed": config["seed"], "physical_layer": json.dumps(layout_of(res)),
                      "embedded_simulator": True, "in_process_reservoir": config["reservoir"]})
    with run:
        attach_recorder(trainer, run)
        if resume_state is None:
            trainer.checkpoint()  # a step-0 checkpoint: a run killed at any moment can be resumed
        bar, trainer.progress = make_progress(config, trainer.train_measurements)
        with stop_on_signal(trainer):
            try:
                status = trainer.run()
            finally:
                if bar is not None:
                    bar.close()
        run.set_status({"completed": "completed", "aborted": "aborted"}.get(status, "failed"), message=status)
    return status, trainer
