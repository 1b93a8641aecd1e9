"""Replay: recorded features come back in order; any changed request is a ReplayDivergence."""
from __future__ import annotations

import json

import numpy as np
import pytest

from labpgt.reservoirs.encoding import KnobEncoder
from labpgt.contracts import Perturbation
from labpgt.experiment.replay import replay
from labpgt.reservoirs.replay import RecordingExhausted, ReplayDivergence, ReplayReservoir
from labpgt.reservoirs.direct import ToyReservoir
from labpgt.runfile import RunFile, RunReader

NODES, FPN, P = 2, 4, 16
ENCODER = KnobEncoder(n_nodes=NODES, reference_hz=2.0671e9)


class RecordedToy:
    """ToyReservoir measured and recorded the way the station reservoir records (one row per sample x node)."""

    def __init__(self, recorder):
        self.toy = ToyReservoir(n_nodes=NODES, features_per_node=FPN, noise_std=0.05, seed=3)
        self.encoder, self.recorder = ENCODER, recorder
        self.n_inputs, self.n_features = ENCODER.n_inputs, NODES * FPN

    @property
    def measurements(self):
        return self.toy.measurements

    @measurements.setter
    def measurements(self, n):
        self.toy.measurements = n

    def measure(self, u, *, current_a, kind, step, sample_index, perturbation=Perturbation()):
        s = ENCODER.encode(u, current_a)
        feats = self.toy.measure(u, current_a=current_a, kind=kind, step=step, sample_index=sample_index,
                                 perturbation=perturbation)
        for i in range(len(u)):
            for node in range(NODES):
                f = feats[i, node * FPN:(node + 1) * FPN]
                self.recorder.measurement({
                    "time_s": 0.0, "step": step, "kind": kind, "sample_index": int(sample_index[i]), "node": node,
                    "perturbation_direction": perturbation.direction, "perturbation_sign": perturbation.sign,
                    "settings": {"frequency_hz": float(s["drive_frequency_hz"][i, node]),
                                 "power_dbm": float(s["drive_power_dbm"][i, node]), "current_a": float(current_a)},
                    "trace_dbm": np.resize(f.astype(np.float32), P), "frequency_axis": (2.05e9, 2.08e9, P),
                    "features": f, "flags": 16,
                })
        return feats


def new_run(path, n_params=1, shapes=None):
    return RunFile.create(path, n_params=n_params, features_per_measurement=FPN, trace_points=P,
                          optimizer_state_shapes=shapes or {},
                          metadata={"experiment_toml": "lr = 0.02\n",
                                    "physical_layer": json.dumps({"encoder": ENCODER.to_dict()})})


def test_replay_reservoir_returns_recorded_features_and_checks_every_field(tmp_path):
    path = tmp_path / "r.h5"
    rng = np.random.default_rng(0)
    us = [rng.uniform(-1, 1, (3, ENCODER.n_inputs)) for _ in range(3)]
    with new_run(path) as run:
        res = RecordedToy(run)
        out = [res.measure(us[0], current_a=1.8, kind="train", step=0, sample_index=np.array([5, 6, 7])),
               res.measure(us[1], current_a=1.8, kind="train", step=0, sample_index=np.array([1, 2, 3]),
                           perturbation=Perturbation(0, +1)),
               res.measure(us[2], current_a=1.801, kind="eval", step=1, sample_index=np.array([0, 1, 2]))]
        run.set_status("completed")

    def fresh():
        return ReplayReservoir(RunReader(path), ENCODER)

    rep = fresh()
    assert (rep.n_inputs, rep.n_features) == (ENCODER.n_inputs, NODES * FPN)
    got = rep.measure(us[0], current_a=1.8, kind="train", step=0, sample_index=np.array([5, 6, 7]))
    assert got.tobytes() == out[0].tobytes() and rep.measurements == 6
    got = rep.measure(us[1], current_a=1.8, kind="train", step=0, sample_index=np.array([1, 2, 3]),
                      perturbation=Perturbation(0, +1))
    assert got.tobytes() == out[1].tobytes()
    got = rep.measure(us[2], current_a=1.801, kind="eval", step=1, sample_index=np.array([0, 1, 2]))
    assert got.tobytes() == out[2].tobytes()
    with pytest.raises(RecordingExhausted, match="holds only 0 more"):
        rep.measure(us[2], current_a=1.801, kind="eval", step=1, sample_index=np.array([0, 1, 2]))

    # one knob of sample 6 (second sample), node 1's power, moved by 1e-12 (a few ulps of the dBm)
    u = us[0].copy()
    u[1, 3] = u[1, 3] - 1e-12
    with pytest.raises(ReplayDivergence) as e:
        fresh().measure(u, current_a=1.8, kind="train", step=0, sample_index=np.array([5, 6, 7]))
    assert (e.value.step, e.value.sample_index, e.value.node, e.value.row) == (0, 6, 1, 3)
    msg = str(e.value)
    assert "step 0" in msg and "sample 6" in msg and "node 1" in msg and "power_dbm recorded" in msg
    recorded_power = ENCODER.encode(us[0], 1.8)["drive_power_dbm"][1, 1]
    assert repr(float(recorded_power)) in msg

    cases = [
        (dict(current_a=np.nextafter(1.8, 2.0)), "current_a recorded 1.8"),
        (dict(step=1), "step recorded 0"),
        (dict(kind="probe"), "kind recorded 'train', requested 'probe'"),
        (dict(sample_index=np.array([5, 9, 7])), "sample_index recorded 6, requested 9"),
        (dict(perturbation=Perturbation(0, -1)), "perturbation_direction recorded -1, requested 0"),
    ]
    for change, text in cases:
        kw = {**dict(current_a=1.8, kind="train", step=0, sample_index=np.array([5, 6, 7])), **change}
        with pytest.raises(ReplayDivergence, match=text.replace("(", r"\(")):
            fresh().measure(us[0], **kw)
    # the second call's perturbation sign flipped
    rep = fresh()
    rep.measure(us[0], current_a=1.8, kind="train", step=0, sample_index=np.array([5, 6, 7]))
    with pytest.raises(ReplayDivergence, match="perturbation_sign recorded 1, requested -1") as e:
        rep.measure(us[1], current_a=1.8, kind="train", step=0, sample_index=np.array([1, 2, 3]),
                    perturbation=Perturbation(0, -1))
    assert e.value.sample_index == 1 and e.value.row == 6


def _trainer(reservoir, recorder, lr=0.02, budget=400):
    from labpgt.data.datasets import load
    from labpgt.experiment.builder import make_trainer

    return make_trainer(load("iris"), "node", reservoir, seed=1, budget=budget, batch_size=8, lr=lr,
                        eval_every=2, checkpoint_every=3, recorder=recorder)


def _record_training(path):
    from labpgt.data.datasets import load  # noqa: F401 - fail early if the trainer's pieces are missing

    probe = _trainer(ToyReservoir(n_nodes=NODES, features_per_node=FPN), None)
    shapes = {k: np.shape(v) for k, v in probe.opt_state.items()}
    run = new_run(path, n_params=probe.model.params().size, shapes=shapes)
    with run:
        trainer = _trainer(RecordedToy(run), run)
        status = trainer.run()
        run.set_status("completed", status)
    return trainer


def test_replay_of_a_training_run_is_bit_identical(tmp_path):
    path = tmp_path / "train.h5"
    trainer = _record_training(path)
    with RunReader(path) as r:
        assert r.last_checkpoint()["params"].tobytes() == trainer.model.params().tobytes()
        n = r.n_measurements

    def build(reservoir, recorder):
        return _trainer(reservoir, recorder)

    result = replay(path, build, encoder=ENCODER)
    assert result.ok, result.message
    assert result.params_equal and result.measurements_replayed == n == result.measurements_recorded
    assert result.steps == trainer.step and result.step_mismatches == []


def test_replay_reports_the_first_divergence(tmp_path):
    path = tmp_path / "train.h5"
    _record_training(path)
    # a different learning rate: step 0 matches, step 1's knobs differ
    result = replay(path, lambda res, rec: _trainer(res, rec, lr=0.03), encoder=ENCODER)
    assert not result.ok and result.divergence is not None
    assert result.divergence.step == 1 and result.steps == 1
    assert "replay diverges at step 1" in result.message and "sample" in result.message


def test_replay_skips_rows_abandoned_by_a_resume(tmp_path):
    path = tmp_path / "r.h5"
    rng = np.random.default_rng(1)
    us = [rng.uniform(-1, 1, (2, ENCODER.n_inputs)) for _ in range(3)]
    ckpt = {"step": 1, "measurements": 4, "params": [0.0], "optimizer": {}, "rng_state": "{}", "extra": "{}"}
    with new_run(path) as run:
        res = RecordedToy(run)
        a = res.measure(us[0], current_a=1.8, kind="train", step=0, sample_index=np.array([0, 1]))
        run.step({"step": 1, "loss": 1.0, "accuracy": 0.0, "grad_norm": 1.0, "measurements": 4, "time_s": 0.0,
                  "current_a": 1.8})
        run.checkpoint(ckpt)
        res.measure(us[1], current_a=1.8, kind="train", step=1, sample_index=np.array([2, 3]))  # then killed
        run.step({"step": 2, "loss": 1.0, "accuracy": 0.0, "grad_norm": 1.0, "measurements": 8, "time_s": 0.0,
                  "current_a": 1.8})
        run.set_status("aborted")
    with RunFile.open_append(path) as run:
        res = RecordedToy(run)
        res.measurements = 4
        c = res.measure(us[2], current_a=1.8, kind="train", step=1, sample_index=np.array([4, 5]))
        run.set_status("completed")
    rep = ReplayReservoir(RunReader(path), ENCODER)
    assert rep.measure(us[0], current_a=1.8, kind="train", step=0, sample_index=np.array([0, 1])).tobytes() \
        == a.tobytes()
    assert rep.measure(us[2], current_a=1.8, kind="train", step=1, sample_index=np.array([4, 5])).tobytes() \
        == c.tobytes()
    assert rep.remaining == 0
