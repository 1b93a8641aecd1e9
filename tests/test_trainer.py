"""The trainer: budgets, resume bit for bit, abort, optimizers; a short run on the simulated ring."""
import json

import numpy as np
import pytest

from labpgt.data.datasets import load
from labpgt.experiment.registry import make_estimator
from labpgt.models.dense import HybridModel
from labpgt.training.optim import SGD, Adam, Chain, ClipByNorm
from labpgt.reservoirs.direct import ToyReservoir
from labpgt.contracts import NullRecorder
from labpgt.training.trainer import Trainer


class ListRecorder(NullRecorder):
    def __init__(self):
        super().__init__()
        self.steps, self.evals, self.checkpoints, self.measurements = [], [], [], []

    def measurements_batch(self, batch):
        super().measurements_batch(batch)
        self.measurements.append(batch)

    def step(self, record):
        self.steps.append(record)

    def evaluation(self, record):
        self.evals.append(record)

    def checkpoint(self, state):
        self.checkpoints.append(state)


def toy_trainer(estimator="node", budget=2000, seed=0, recorder=None, optimizer=None, **kw):
    ds = load("iris")
    res = ToyReservoir(n_nodes=2, features_per_node=8, noise_std=0.05, seed=seed)
    model = HybridModel(4, res.n_inputs, res.n_features, 3, hidden_before=(6,), seed=seed)
    est = make_estimator(estimator, reservoir_model=res)
    if optimizer is None:  # SPSA's step carries its own gains: plain SGD at lr 1 (as the registry pairs it)
        optimizer = SGD(lr=1.0) if estimator == "spsa" else Adam(lr=0.03)
    return Trainer(model, res, est, ds, optimizer, batch_size=10, budget=budget, eval_every=5,
                   checkpoint_every=7, seed=seed, recorder=recorder, **kw)


@pytest.mark.parametrize("estimator", ["node", "spsa", "pgt", "oracle"])
def test_resume_is_bit_identical(estimator):
    rec = ListRecorder()
    full = toy_trainer(estimator, budget=1600, recorder=rec)
    assert full.run() == "completed"

    # as after a killed process: continue from the periodic checkpoint at step 14
    state = next(c for c in rec.checkpoints if c["step"] == 14)
    resumed = toy_trainer(estimator, budget=1600)
    resumed.load_state_dict(state)
    assert resumed.run() == "completed"
    np.testing.assert_array_equal(resumed.model.params(), full.model.params())
    assert (resumed.step, resumed.train_measurements, resumed.eval_measurements) == (
        full.step, full.train_measurements, full.eval_measurements)

    # as after Ctrl-C: stop at step N, checkpoint, new trainer, load, finish
    first = toy_trainer(estimator, budget=1600)
    first.progress = lambda r: setattr(first, "stop_requested", r["kind"] == "step" and r["step"] == 9)
    assert first.run() == "aborted"
    second = toy_trainer(estimator, budget=1600)
    second.load_state_dict(first.state_dict())
    assert second.run() == "completed"
    np.testing.assert_array_equal(second.model.params(), full.model.params())


def test_budget_counts_and_records():
    rec = ListRecorder()
    tr = toy_trainer("node", budget=1000, recorder=rec)
    tr.run()
    per_step = 2 * 10 * 2  # two half-steps x batch x nodes
    assert tr.train_measurements == 1000 // per_step * per_step + (per_step if 1000 % per_step else 0)
    assert [r["measurements_spent"] for r in rec.steps] == [per_step] * tr.step
    assert rec.steps[-1]["measurements"] == tr.train_measurements
    # evaluations every 5 steps plus the final one, each measuring the 30 test samples x 2 nodes
    assert [e["step"] for e in rec.evals] == list(range(5, tr.step + 1, 5)) + ([tr.step] if tr.step % 5 else [])
    assert tr.eval_measurements == len(rec.evals) * 30 * 2
    assert tr.reservoir.measurements == tr.train_measurements + tr.eval_measurements
    assert json.loads(rec.checkpoints[-1]["extra"])["status"] == "completed"
    assert rec.checkpoints[-1]["step"] == tr.step and rec.checkpoints[-1]["measurements"] == tr.train_measurements


def test_stop_requested_aborts_with_a_checkpoint():
    rec = ListRecorder()
    tr = toy_trainer("node", budget=100_000, recorder=rec)

    def progress(record):
        if record["kind"] == "step" and record["step"] == 12:
            tr.stop_requested = True  # what a SIGINT handler would do

    tr.progress = progress
    assert tr.run() == "aborted"
    assert tr.step == 12
    assert json.loads(rec.checkpoints[-1]["extra"])["status"] == "aborted" and rec.checkpoints[-1]["step"] == 12
    np.testing.assert_array_equal(rec.checkpoints[-1]["params"], tr.model.params())


def test_spsa_is_paired_with_plain_sgd_and_refuses_a_learning_rate():
    from labpgt.experiment.builder import make_trainer

    res = ToyReservoir(n_nodes=1, features_per_node=8, noise_std=0.05, seed=0)
    tr = make_trainer(load("iris"), "spsa", res, budget=1000)
    assert isinstance(tr.optimizer, SGD) and tr.optimizer.lr == 1.0 and tr.optimizer.momentum == 0.0
    with pytest.raises(ValueError, match="'lr' does not apply to estimator 'spsa'"):
        make_trainer(load("iris"), "spsa", res, budget=1000, lr=0.01)


def test_frozen_current_never_moves():
    tr = toy_trainer("node", budget=600)
    tr.model.train_current = False
    tr.trainable = tr.model.trainable_mask()
    before = tr.model.current_a()
    tr.run()
    assert tr.model.current_a() == before


def test_optimizers_follow_their_formulas():
    params = np.array([1.0, -2.0])
    grad = np.array([0.5, 1.0])
    sgd = SGD(lr=0.1, momentum=0.9)
    state = sgd.init_state(params)
    p1, state = sgd.update(grad, state, params)
    p2, state = sgd.update(grad, state, p1)
    np.testing.assert_allclose(p1, params - 0.1 * grad)
    np.testing.assert_allclose(p2, p1 - 0.1 * (0.9 * grad + grad))
    adam = Adam(lr=0.01)
    state = adam.init_state(params)
    p1, state = adam.update(grad, state, params)
    np.testing.assert_allclose(p1, params - 0.01 * np.sign(grad), rtol=1e-6)  # first Adam step is lr * sign
    assert int(state["count"]) == 1
    chain = Chain(ClipByNorm(0.1), SGD(lr=1.0))
    p, _ = chain.update(np.array([3.0, 4.0]), chain.init_state(params), params)
    np.testing.assert_allclose(p, params - [0.06, 0.08])


def test_resume_from_a_run_file_checkpoint(tmp_path):
    from labpgt import runfile
    full = toy_trainer("node", budget=1200)
    full.run()

    first = toy_trainer("node", budget=1200)
    shapes = {k: np.shape(v) for k, v in first.opt_state.items()}
    path = tmp_path / "run.h5"
    with runfile.RunFile.create(path, n_params=first.model.size, features_per_measurement=8,
                                trace_points=4, optimizer_state_shapes=shapes) as rf:
        first.recorder = rf
        first.progress = lambda r: setattr(first, "stop_requested", r["kind"] == "step" and r["step"] == 11)
        assert first.run() == "aborted"
    state = runfile.RunReader(path).last_checkpoint()
    second = toy_trainer("node", budget=1200)
    second.load_state_dict(state)
    second.run()
    np.testing.assert_array_equal(second.model.params(), full.model.params())


def test_node_on_the_simulated_ring_learns_iris():
    """A short node run through the simulated ring (DirectRingReservoir, default noise, no drift)."""
    from sim import ring
    from labpgt.reservoirs.direct import DirectRingReservoir
    from labpgt.experiment.builder import make_trainer

    res = DirectRingReservoir(ring.RingParams(drift_enabled=False), seed=0)
    tr = make_trainer(load("iris"), "node", res, seed=0, budget=8000, eval_every=0, checkpoint_every=0)
    assert tr.run() == "completed"
    per_step = 2 * tr.batch_size  # exactly 2 x batch x 1 node per step (the default batch is 32)
    assert tr.train_measurements == 8000 and tr.step == 8000 // per_step
    assert tr.evaluations[-1]["accuracy"] > 0.8


def test_direct_ring_reservoir_counts_replays_and_rejects():
    from sim import ring
    from labpgt.reservoirs.direct import DirectRingReservoir

    res = DirectRingReservoir(ring.RingParams(drift_enabled=False), seed=3, n_nodes=2)
    u = np.random.default_rng(0).uniform(-0.9, 0.9, (5, res.n_inputs))
    a = res.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(5))
    assert a.shape == (5, res.n_features) and res.measurements == 10
    res.measurements = 0  # same counter, same noise: a replay is bit-identical
    np.testing.assert_array_equal(res.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(5)), a)
    b = res.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(5))
    assert not np.array_equal(a, b)  # the next measurement has fresh noise
    clean = res.noiseless(u, 1.8)
    assert np.abs(clean - a).mean() < 0.2 and res.measurements == 20  # noiseless costs nothing
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        res.measure(u * 1.2, current_a=1.8, kind="train", step=0, sample_index=np.arange(5))
    with pytest.raises(ValueError, match="current"):
        res.measure(u, current_a=5.0, kind="train", step=0, sample_index=np.arange(5))


def test_defaults_build_every_estimator_and_fit_the_data():
    from labpgt.experiment.builder import make_trainer
    from labpgt.experiment.registry import ESTIMATORS, estimators_for

    ds = load("iris")
    for name in estimators_for("dense"):
        d = ESTIMATORS[name].tuning["dense"]
        res = ToyReservoir(n_nodes=1, features_per_node=8, noise_std=0.05, seed=0)
        t = make_trainer(ds, name, res, seed=0, budget=10 * d.batch_size * 4, eval_every=0, checkpoint_every=0)
        assert t.batch_size == d.batch_size <= len(ds.y_train)
        assert t.estimator.options() == {**t.estimator.options(), **d.options}
        assert t.run() == "completed"
        assert t.train_measurements >= t.budget


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_training.py"
    spec = importlib.util.spec_from_file_location("bench_training", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_eval_schedule_is_geometric_and_below_the_budget():
    bench = _bench()
    marks = bench.eval_schedule(10_000, 10)
    assert marks[0] == 100 and marks[-1] < 10_000 and marks == sorted(set(marks))
    assert len(marks) == 20  # two decades, 10 per decade
    ratios = np.diff(np.log10(marks))
    np.testing.assert_allclose(ratios, 0.1, atol=0.01)


@pytest.mark.parametrize("method", ["cmaes", "ng-tbpsa"])
def test_bench_peer_counts_batch_size_measurements_per_loss_evaluation(method):
    pytest.importorskip("cma" if method == "cmaes" else "nevergrad")
    bench = _bench()
    job = dict(dataset="iris", condition="default", method=method, seed=0, budget=800, reservoir="toy", n_nodes=2,
               n_bands=4, noise_multiplier=1.0, batch_size=10, sigma0=0.3, options=None, evals_per_decade=4,
               final_repeats=2)
    run = bench.run_one(job)
    # every loss evaluation costs batch x nodes = 20 measurements; the run stops at the first multiple >= budget
    assert run["train_measurements"] % 20 == 0
    assert 800 <= run["train_measurements"] < 800 + 20 * 30  # at most one CMA/TBPSA generation past the budget
    n_test = len(load("iris").y_test)
    # evaluations: untrained + the schedule marks crossed + the final one + the repeats, each the whole test split
    assert run["eval_measurements"] % (n_test * 2) == 0
    assert run["curve"][0][0] == 0 and run["curve"][-1][0] == run["train_measurements"]
    assert 0.0 <= run["final_accuracy"] <= 1.0
