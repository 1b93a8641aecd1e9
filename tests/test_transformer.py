"""TransformerModel: manual backprop vs finite differences, the HybridModel interface, estimator
costs in reservoir evaluations, the backprop baseline, recording, and learning on digits-seq."""
import inspect

import numpy as np
import pytest

from labpgt.reservoirs.esn import EchoStateReservoir
from labpgt.models.dense import HybridModel
from labpgt.reservoirs.direct import ToyReservoir
from labpgt.contracts import FLAG_SIMULATED, NullRecorder
from labpgt.data.tasks import TASKS
from labpgt.estimators import Backprop, NodePerturbation, TokenNodePerturbation
from labpgt.estimators.backprop import reservoir_vjp
from labpgt.experiment.builder import IN_PROCESS_RESERVOIRS, make_transformer_trainer
from labpgt.experiment.registry import estimators_for, make_estimator
from labpgt.models.transformer import TransformerModel

T, F, K, M = 4, 3, 2, 5


def small(task="classification", activation="tanh", n_heads=2, seed=1, pooling="concat"):
    model = TransformerModel(T, F, K, M, 3 if task == "classification" else 1, task=task, d_model=6,
                             n_heads=n_heads, d_mlp=7, d_after=4, activation=activation, pooling=pooling, seed=seed)
    reservoir = EchoStateReservoir(T, K, M, noise_std=0.0, seed=2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, T * F))
    y = rng.integers(0, 3, 5) if task == "classification" else rng.normal(size=5)
    return model, reservoir, x, y


def numeric_gradient(fn, p0, scale, h=1e-6):
    g = np.zeros_like(p0)
    for i in range(len(p0)):
        step = h * scale[i]
        up, down = p0.copy(), p0.copy()
        up[i] += step
        down[i] -= step
        g[i] = (fn(up) - fn(down)) / (2 * step)
    return g


@pytest.mark.parametrize("task,activation,n_heads,pooling", [
    ("classification", "tanh", 2, "concat"), ("regression", "tanh", 1, "concat"), ("classification", "relu", 3, "concat"),
    ("classification", "tanh", 2, "mean"), ("regression", "relu", 1, "mean")])
def test_every_parameter_gradient_matches_finite_differences(task, activation, n_heads, pooling):
    model, res, x, y = small(task, activation, n_heads, pooling=pooling)

    def loss(p):
        u, _ = model.encode(x, p)
        return model.loss_and_accuracy(res.noiseless(u, model.current_a(p)), y, p)[0]

    u, cache = model.encode(x)
    g_read, g_features, _, _ = model.readout_gradient(res.noiseless(u, model.current_a()), y)
    g_u, g_current = res.vjp(u, model.current_a(), g_features)
    grad = model.backward_encode(cache, g_u) + g_read
    grad[model.slots["physical.current_a"].slice] = g_current
    numeric = numeric_gradient(loss, model.params(), model.param_scale())
    for name, slot in model.slots.items():  # slot by slot, so a failure names the layer
        np.testing.assert_allclose(grad[slot.slice], numeric[slot.slice], rtol=1e-4, atol=1e-7, err_msg=name)
    assert np.abs(numeric).max() > 1e-3  # the check is not vacuous


def test_readout_feature_gradient_and_encoder_backward_match_finite_differences():
    model, _, x, y = small()
    features = np.random.default_rng(3).normal(size=(5, T * M))
    _, g_features, per_sample, _ = model.readout_gradient(features, y)
    h = 1e-6
    for j in range(T * M):
        up, down = features.copy(), features.copy()
        up[:, j] += h
        down[:, j] -= h
        numeric = (model.loss_and_accuracy(up, y)[0] - model.loss_and_accuracy(down, y)[0]) / (2 * h)
        assert g_features[:, j].sum() == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    np.testing.assert_allclose(per_sample, model.per_sample_loss(features, y))
    # backward_encode is the VJP of encode: d/dparams of sum(w * u)
    weights = np.random.default_rng(4).normal(size=(5, T * K))
    u, cache = model.encode(x)
    assert u.shape == (5, T * K) and np.abs(u).max() <= model.u_scale
    grad = model.backward_encode(cache, weights)
    numeric = numeric_gradient(lambda p: np.sum(weights * model.encode(x, p)[0]), model.params(), model.param_scale())
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)
    assert np.all(grad[~model.group_mask("before")] == 0)


def test_exposes_exactly_the_hybrid_model_interface():
    model, _, _, _ = small()
    hybrid = HybridModel(4, 4, 6, 3)
    public = [n for n in dir(HybridModel) if not n.startswith("_") and callable(getattr(HybridModel, n))]
    assert set(public) >= {"params", "set_params", "group_mask", "trainable_mask", "param_scale", "current_a",
                           "encode", "backward_encode", "logits", "per_sample_loss", "loss_and_accuracy",
                           "readout_gradient", "describe"}
    for name in public:
        assert inspect.signature(getattr(TransformerModel, name)).parameters.keys() == \
            inspect.signature(getattr(HybridModel, name)).parameters.keys(), name
    for attr in ("size", "slots", "u_scale", "train_current", "current_scale_a", "n_knobs", "n_features",
                 "n_classes", "config"):
        assert hasattr(model, attr) and hasattr(hybrid, attr), attr
    assert model.n_knobs == T * K and model.n_features == T * M
    assert model.group_mask("before", "physical", "readout").all()
    assert model.group_mask("physical").sum() == 1 and model.current_a() == 1.8
    with pytest.raises(ValueError, match="allowed: before, physical, readout"):
        model.group_mask("attention")
    with pytest.raises(ValueError, match="NaN"):
        model.set_params(np.full(model.size, np.nan))


def test_concat_pooling_keeps_which_token_is_which_and_mean_pooling_does_not():
    features = np.random.default_rng(8).normal(size=(3, T * M))
    swapped = features.reshape(3, T, M)[:, ::-1].reshape(3, T * M)  # the same tokens, in reverse order
    concat, _, _, _ = small(pooling="concat")
    mean, _, _, _ = small(pooling="mean")
    assert concat.slots["readout.head.weight"].shape == (T * 4, 3)  # d_after 4 per token, in place
    assert mean.slots["readout.head.weight"].shape == (4, 3)
    assert np.abs(concat.logits(features) - concat.logits(swapped)).max() > 1e-3
    np.testing.assert_allclose(mean.logits(features), mean.logits(swapped), rtol=1e-12, atol=1e-12)
    assert concat.config["pooling"] == "concat" and mean.config["pooling"] == "mean"
    with pytest.raises(ValueError, match="allowed: concat, mean"):
        small(pooling="max")


def test_regression_reports_one_minus_nmse():
    model, _, _, _ = small("regression")
    features = np.random.default_rng(5).normal(size=(6, T * M))
    prediction = model.logits(features)[:, 0]
    targets = prediction + np.array([1.0, -1.0, 1.0, -1.0, 0.0, 0.0])  # MSE = 4/6
    loss, accuracy = model.loss_and_accuracy(features, targets)
    assert loss == pytest.approx(4 / 6)
    assert accuracy == pytest.approx(1 - 4 / 6)  # target_variance = 1


def trainer(estimator, reservoir="esn", budget=1, **kw):
    kw.setdefault("checkpoint_every", 0)
    kw.setdefault("eval_every", 0)
    return make_transformer_trainer("digits-seq", estimator, reservoir, seed=0, budget=budget, **kw)


@pytest.mark.parametrize("estimator,cost_per_sample_token", [("node", 2), ("node-token", 4), ("backprop", 1),
                                                             ("oracle", 1), ("pgt", 2)])
def test_exact_reservoir_evaluations_per_step(estimator, cost_per_sample_token):
    tr = trainer(estimator, batch_size=16)
    x, y, index = tr.next_batch()
    before = tr.reservoir.measurements
    est = tr.estimator.estimate(tr.model, tr.reservoir, x, y, index, 0, tr.rng)
    assert est.measurements_spent == tr.reservoir.measurements - before == cost_per_sample_token * 16 * 8
    assert np.all(np.isfinite(est.grad)) and est.grad.shape == (tr.model.size,)


def test_node_spends_two_evaluations_per_sample_and_token_per_step_in_the_trainer():
    tr = trainer("node", batch_size=16, budget=3 * 2 * 16 * 8)
    assert tr.run() == "completed"
    assert tr.step == 3 and tr.train_measurements == 3 * 2 * 16 * 8


def test_spsa_and_pgt_run_unchanged_through_the_trainer():
    for name in ("spsa", "pgt"):
        tr = trainer(name, batch_size=8, budget=4000)
        assert tr.run() == "completed", name
        assert np.all(np.isfinite(tr.model.params()))


def test_backprop_gradient_through_the_ring_equals_the_oracle_construction():
    """The node-parallel differences (2k noiseless calls) give the same VJP as knob-by-knob differences."""
    res = ToyReservoir(n_nodes=T, knobs_per_node=K, features_per_node=M, noise_std=0.0, seed=1)
    u = np.random.default_rng(6).uniform(-0.7, 0.7, (3, T * K))
    g = np.random.default_rng(7).normal(size=(3, T * M))
    fast, fast_i = reservoir_vjp(res, u, 1.8, g, fd_step=1e-5, current_fd_step_a=1e-7, n_nodes=T,
                                 independent_nodes=True)
    exact = np.zeros_like(u)
    for j in range(T * K):  # knob by knob, the general path
        up, down = u.copy(), u.copy()
        up[:, j] += 1e-5
        down[:, j] -= 1e-5
        exact[:, j] = np.sum(g * (res.noiseless(up, 1.8) - res.noiseless(down, 1.8)), axis=1) / 2e-5
    np.testing.assert_allclose(fast, exact, rtol=1e-6, atol=1e-9)
    assert res.measurements == 0
    model, _, x, y = small()
    with pytest.raises(TypeError, match="cannot be backpropagated"):
        Backprop().estimate(model, res, x, y, np.arange(5), 0, None)  # no model of the reservoir given


def test_backprop_uses_the_echo_state_vjp_and_measures_once():
    model, res, x, y = small()
    est = Backprop(reservoir_model=res).estimate(model, res, x, y, np.arange(5), 0, np.random.default_rng(0))
    assert est.measurements_spent == 5 * T
    numeric = numeric_gradient(
        lambda p: model.loss_and_accuracy(res.noiseless(model.encode(x, p)[0], model.current_a(p)), y, p)[0],
        model.params(), model.param_scale())
    np.testing.assert_allclose(est.grad, numeric, rtol=1e-4, atol=1e-7)


def test_node_token_credit_is_unbiased_and_less_noisy_than_node_on_independent_nodes():
    """Noiseless toy reservoir (independent virtual nodes): averaged over many kicks, both estimate the
    exact gradient; crediting each token through its own measured change leaves less noise."""
    model = TransformerModel(T, F, K, M, 3, d_model=6, n_heads=2, d_mlp=7, d_after=4, train_current=False, seed=1)
    res = ToyReservoir(n_nodes=T, knobs_per_node=K, features_per_node=M, noise_std=0.0, seed=1)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, T * F)), rng.integers(0, 3, 5)
    exact = Backprop(fd_step=1e-5, reservoir_model=res).estimate(model, res, x, y, np.arange(5), 0, rng).grad
    errors = {}
    for est in (TokenNodePerturbation(epsilon=1e-4, n_directions=400), NodePerturbation(epsilon=1e-4, n_directions=400)):
        grad = est.estimate(model, res, x, y, np.arange(5), 0, np.random.default_rng(1)).grad
        before = model.group_mask("before")
        errors[est.name] = np.linalg.norm(grad[before] - exact[before]) / np.linalg.norm(exact[before])
        np.testing.assert_allclose(grad[~before], exact[~before], rtol=1e-3, atol=1e-6)  # the readout is exact
    assert errors["node-token"] < 0.1
    assert errors["node-token"] < 0.6 * errors["node"], errors
    with pytest.raises(ValueError, match="train_current=False"):
        TokenNodePerturbation().estimate(small()[0], res, x, y, np.arange(5), 0, rng)


class ListRecorder(NullRecorder):
    def __init__(self):
        super().__init__()
        self.measurements, self.steps, self.evaluations = [], [], []

    def measurements_batch(self, batch):
        super().measurements_batch(batch)
        n = len(batch["features"])
        for i in range(n):  # one dict per row: arrays of n rows split, scalars shared
            self.measurements.append({k: (v[i] if np.ndim(v) and len(v) == n else v) for k, v in batch.items()})

    def step(self, record):
        self.steps.append(record)

    def evaluation(self, record):
        self.evaluations.append(record)

    def checkpoint(self, state):
        pass


def test_ring_measurements_go_to_the_recorder_flagged_simulated():
    rec = ListRecorder()
    tr = make_transformer_trainer("digits-seq", "node", "ring", seed=0, budget=1, recorder=rec, batch_size=4,
                                  checkpoint_every=0, eval_every=0)
    x, y, index = tr.next_batch()
    tr.estimator.estimate(tr.model, tr.reservoir, x, y, index, 0, tr.rng)
    assert len(rec.measurements) == 2 * 4 * 8 == tr.reservoir.measurements
    assert all(r["flags"] & FLAG_SIMULATED for r in rec.measurements)
    assert [r["node"] for r in rec.measurements[:8]] == list(range(8))  # tokens are the ring's virtual nodes
    assert {r["perturbation_sign"] for r in rec.measurements} == {1, -1}


def test_names_are_validated():
    assert tuple(TASKS) == ("digits-seq", "narma10") and IN_PROCESS_RESERVOIRS == ("ring", "esn")
    assert set(estimators_for("transformer")) == {"backprop", "node", "node-token", "pgt", "spsa", "oracle",
                                                  "token-twin"}
    with pytest.raises(ValueError, match="allowed: ring, esn"):
        make_transformer_trainer("digits-seq", "node", "photonic", seed=0, budget=1)
    with pytest.raises(ValueError, match="allowed: digits-seq, narma10"):
        make_transformer_trainer("mnist", "node", "esn", seed=0, budget=1)
    with pytest.raises(ValueError, match="unknown estimator"):
        make_estimator("adjoint")


def test_node_and_backprop_improve_test_accuracy_on_digits_seq():
    results = {}
    for name, budget in (("backprop", 120_000), ("node", 400_000)):
        tr = trainer(name, budget=budget)
        start = tr.evaluate()["accuracy"]
        assert tr.run() == "completed"
        results[name] = (start, tr.evaluations[-1]["accuracy"])
    for name, (start, end) in results.items():
        assert start < 0.3, name  # ten classes: an untrained model is near chance
        assert end > start + 0.25, (name, start, end)


def test_narma10_regression_learns_beyond_the_mean_predictor():
    tr = make_transformer_trainer("narma10", "backprop", "esn", seed=0, budget=100_000, eval_every=0,
                                  checkpoint_every=0)
    assert tr.run() == "completed"
    assert tr.evaluations[-1]["accuracy"] > 0.5  # 1 - NMSE; predicting the mean gives 0


@pytest.mark.parametrize("estimator", ["node", "backprop"])
def test_resume_from_a_checkpoint_continues_bit_for_bit(estimator):
    """The echo-state noise is keyed by the evaluation counter, which the checkpoint restores."""
    rec = ListRecorder()
    checkpoints = []
    rec.checkpoint = checkpoints.append
    straight = trainer(estimator, batch_size=8, budget=8 * 8 * 2 * 6, recorder=rec, checkpoint_every=3)
    straight.run()
    halfway = checkpoints[0]
    assert halfway["step"] == 3
    resumed = trainer(estimator, batch_size=8, budget=8 * 8 * 2 * 6)
    resumed.load_state_dict(halfway)
    resumed.run()
    assert resumed.step == straight.step
    np.testing.assert_array_equal(resumed.model.params(), straight.model.params())


def test_which_reservoirs_have_independent_tokens_is_declared_and_replayed_from_the_layout():
    # node-token's per-token credit depends on it: every reservoir declares it, and replay takes it
    # from the recorded layout (an echo-state run records its knobs only)
    from labpgt.experiment.builder import in_process_reservoir
    from labpgt.experiment.run import in_process_layout
    from labpgt.reservoirs.direct import DirectRingReservoir, ToyReservoir
    from labpgt.reservoirs.replay import ReplayReservoir
    from labpgt.reservoirs.station import StationReservoir

    assert DirectRingReservoir.independent_nodes and ToyReservoir.independent_nodes
    assert StationReservoir.independent_nodes is True
    assert EchoStateReservoir.independent_nodes is False
    assert "knobs_only" in in_process_layout(in_process_reservoir("esn", 3))
    assert "encoder" in in_process_layout(in_process_reservoir("ring", 3))
    assert "independent_nodes" in ReplayReservoir.__init__.__code__.co_varnames
