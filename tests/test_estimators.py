"""Estimators: exact measurement counts, unbiasedness on a noiseless toy, clear errors."""
import numpy as np
import pytest

from labpgt.estimators import Oracle
from labpgt.experiment.registry import make_estimator
from labpgt.models.dense import HybridModel
from labpgt.reservoirs.direct import ToyReservoir

N_NODES, BATCH = 2, 8


def setup(noise_std=0.0, seed=0):
    res = ToyReservoir(n_nodes=N_NODES, features_per_node=6, noise_std=noise_std, seed=seed)
    model = HybridModel(4, res.n_inputs, res.n_features, 3, hidden_before=(5,), seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, 4))
    y = rng.integers(0, 3, BATCH)
    return model, res, x, y


def true_gradient(model, res, x, y, h=1e-6):
    """d(mean loss)/d(params) of the noiseless toy by central differences over every parameter."""
    def loss(p):
        u, _ = model.encode(x, p)
        return model.loss_and_accuracy(res.noiseless(u, model.current_a(p)), y, p)[0]

    p0 = model.params()
    g = np.zeros_like(p0)
    for i in range(len(p0)):
        step = h * model.param_scale()[i]
        up, down = p0.copy(), p0.copy()
        up[i] += step
        down[i] -= step
        g[i] = (loss(up) - loss(down)) / (2 * step)
    return g


def corr(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def mean_estimate(est, model, res, x, y, n, seed=1, scale=None):
    rng = np.random.default_rng(seed)
    total = np.zeros(model.size)
    for k in range(n):
        e = est.estimate(model, res, x, y, np.arange(len(y)), k, rng)
        total += e.grad if scale is None else e.grad / scale(est, k)
    return total / n


def test_oracle_is_the_exact_gradient_on_the_toy():
    model, res, x, y = setup()
    truth = true_gradient(model, res, x, y)
    e = Oracle(fd_step=1e-5, current_fd_step_a=1e-7, reservoir_model=res).estimate(model, res, x, y, np.arange(BATCH), 0, None)
    np.testing.assert_allclose(e.grad, truth, rtol=1e-4, atol=1e-6)
    assert e.measurements_spent == BATCH * N_NODES


@pytest.mark.parametrize("name,options,n", [
    ("node", {"epsilon": 0.02}, 400),
    ("pgt", {"epsilon": 1e-3}, 3000),
    ("pgt", {"epsilon": 1e-3, "distribution": "gaussian", "two_sided": False}, 3000),
])
def test_mean_of_estimates_points_along_the_true_gradient(name, options, n):
    model, res, x, y = setup()
    truth = true_gradient(model, res, x, y)
    mean = mean_estimate(make_estimator(name, **options), model, res, x, y, n)
    # compare in the optimizer's scaled coordinates (the current's gradient is per A, the weights' per unit)
    scale = model.param_scale()
    assert corr(mean * scale, truth * scale) > 0.9
    # and it is not just the readout's exact part that agrees
    before = model.group_mask("before")
    assert corr(mean[before], truth[before]) > 0.9


def test_node_upstream_estimate_is_unbiased_per_component():
    model, res, x, y = setup()
    truth = true_gradient(model, res, x, y)
    mean = mean_estimate(make_estimator("node", epsilon=0.01, current_epsilon_a=1e-5), model, res, x, y, 2000, seed=5)
    before = model.group_mask("before")
    # relative error of the mean shrinks like 1/sqrt(n): 2000 samples -> a few percent
    assert np.linalg.norm(mean[before] - truth[before]) < 0.15 * np.linalg.norm(truth[before])
    # the readout part is exact at the mean of the +/- features (O(eps^2) off)
    readout = model.group_mask("readout")
    np.testing.assert_allclose(mean[readout], truth[readout], rtol=0.02, atol=1e-4)


def test_spsa_step_is_gain_times_unbiased_gradient():
    model, res, x, y = setup()
    truth = true_gradient(model, res, x, y)
    spsa = make_estimator("spsa", a=0.5, c=1e-3, stability_constant=0.0, gamma=0.0)
    upstream = model.group_mask("before", "physical")
    mean = mean_estimate(spsa, model, res, x, y, 3000, scale=lambda est, k: est.gains(k)[0])
    scale = model.param_scale()[upstream]
    assert corr(mean[upstream] * scale, truth[upstream] * scale) > 0.9


@pytest.mark.parametrize("name,options,expected", [
    ("node", {}, 2 * BATCH * N_NODES),
    ("node", {"n_directions": 3}, 6 * BATCH * N_NODES),
    ("oracle", {}, BATCH * N_NODES),
    ("pgt", {"n_directions": 4}, 2 * 4 * BATCH * N_NODES),
    ("pgt", {"n_directions": 4, "two_sided": False}, 5 * BATCH * N_NODES),
    ("spsa", {"a": 0.1, "c": 0.05}, 2 * BATCH * N_NODES),
])
def test_measurement_counts_are_exact(name, options, expected):
    model, res, x, y = setup(noise_std=0.05)
    est = make_estimator(name, reservoir_model=res, **options)
    rng = np.random.default_rng(0)
    for step in range(3):
        before = res.measurements
        e = est.estimate(model, res, x, y, np.arange(BATCH), step, rng)
        assert e.measurements_spent == expected == res.measurements - before
        assert e.grad.shape == (model.size,) and np.all(np.isfinite(e.grad))


def test_spsa_calibration_is_counted_and_kept():
    model, res, x, y = setup(noise_std=0.05)
    spsa = make_estimator("spsa", calibration_repeats=4, calibration_pairs=3)
    rng = np.random.default_rng(0)
    first = spsa.estimate(model, res, x, y, np.arange(BATCH), 0, rng)
    assert first.measurements_spent == (4 + 2 * 3 + 2) * BATCH * N_NODES
    assert first.extra["c"] >= spsa.c_min and first.extra["a"] > 0
    second = spsa.estimate(model, res, x, y, np.arange(BATCH), 1, rng)
    assert second.measurements_spent == 2 * BATCH * N_NODES
    # the calibration survives a state round trip, so a resumed run does not recalibrate
    fresh = make_estimator("spsa")
    fresh.load_state_dict(spsa.state_dict())
    assert (fresh.a, fresh.c) == (spsa.a, spsa.c)


def test_errors_are_clear():
    model, res, x, y = setup()
    with pytest.raises(ValueError, match="allowed: node, pgt, spsa, oracle, twin"):
        make_estimator("adjoint")
    with pytest.raises(ValueError, match="1 - u_scale"):
        make_estimator("node", epsilon=0.2).estimate(model, res, x, y, np.arange(BATCH), 0, np.random.default_rng())
    with pytest.raises(ValueError, match="1 - u_scale"):  # the builder asks before anything is measured
        make_estimator("node", epsilon=0.2).check_model(model)
    # a reservoir without a noiseless model (a station): the oracle is refused when it is built
    with pytest.raises(ValueError, match="noiseless model of the reservoir.*a real station cannot be an oracle"):
        make_estimator("oracle")
    with pytest.raises(TypeError, match="noiseless"):
        Oracle().estimate(model, res, x, y, np.arange(BATCH), 0, None)


def test_same_rng_same_estimate():
    model, res, x, y = setup(noise_std=0.05)
    est = make_estimator("node")
    a = est.estimate(model, res, x, y, np.arange(BATCH), 0, np.random.default_rng(7))
    res.measurements = 0
    b = est.estimate(model, res, x, y, np.arange(BATCH), 0, np.random.default_rng(7))
    np.testing.assert_array_equal(a.grad, b.grad)


def test_smoothed_oracle_averages_the_jacobian_and_costs_only_the_clean_pass():
    model, res, x, y = setup()
    truth = true_gradient(model, res, x, y)
    est = Oracle(fd_step=1e-4, smoothing=16, smoothing_scale=1e-3, reservoir_model=res)
    e = est.estimate(model, res, x, y, np.arange(BATCH), 0, np.random.default_rng(0))
    assert e.measurements_spent == BATCH * N_NODES  # the jitter uses the noiseless model only
    # the toy is smooth: averaging over a tiny box changes the gradient very little
    np.testing.assert_allclose(e.grad, truth, rtol=0.05, atol=1e-3)
    # over a large box the average differs from the pointwise gradient (it is a different, smoothed target)
    wide = Oracle(fd_step=0.05, smoothing=16, smoothing_scale=0.05, reservoir_model=res).estimate(
        model, res, x, y, np.arange(BATCH), 0, np.random.default_rng(0))
    assert corr(wide.grad, truth) > 0.9
    assert not np.allclose(wide.grad, truth, rtol=1e-3, atol=1e-6)


def test_smoothed_oracle_rejects_a_box_that_leaves_the_knob_range():
    model, res, x, y = setup()
    with pytest.raises(ValueError, match="smoothing_scale"):
        Oracle(fd_step=0.05, smoothing=4, smoothing_scale=0.08, reservoir_model=res).estimate(
            model, res, x, y, np.arange(BATCH), 0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        Oracle(smoothing=-1)


# --------------------------------------------------------------------------- the digital twin (PAT)
def _feed_twin(est, model, res, steps, seed=3):
    """Run the twin on fresh random batches (it learns the ring from what it measures)."""
    rng = np.random.default_rng(seed)
    data = np.random.default_rng(seed + 100)
    spent = []
    for step in range(steps):
        xb = data.normal(size=(BATCH, 4))
        yb = data.integers(0, 3, BATCH)
        spent.append(est.estimate(model, res, xb, yb, np.arange(BATCH), step, rng).measurements_spent)
    return spent, rng


def test_twin_measurement_counts_are_exact():
    model, res, x, y = setup(noise_std=0.05)
    est = make_estimator("twin", warmup_steps=2, first_fit_iters=5, fit_iters=2)
    rng = np.random.default_rng(0)
    for step in range(5):
        before = res.measurements
        e = est.estimate(model, res, x, y, np.arange(BATCH), step, rng)
        # node perturbation (+/- pairs) while warming up, then one clean pass per sample x node
        expected = (2 if step < 2 else 1) * BATCH * N_NODES
        assert e.measurements_spent == expected == res.measurements - before
        assert np.all(np.isfinite(e.grad))
    # every measured row (warm-up +/- passes and clean passes) went into the buffer
    assert len(est.buffer) == (2 * 2 + 3) * BATCH * N_NODES


def test_twin_vjp_matches_finite_differences_of_the_twin():
    model, res, x, y = setup(noise_std=0.05)
    est = make_estimator("twin", warmup_steps=0, first_fit_iters=20)
    _feed_twin(est, model, res, 2)
    rng = np.random.default_rng(1)
    rows = rng.uniform(-1, 1, (5, est.net["W1"].shape[0]))
    g_out = rng.normal(size=(5, est.net["W2"].shape[1]))
    h = 1e-6
    fd = np.zeros_like(rows)
    for j in range(rows.shape[1]):
        up, down = rows.copy(), rows.copy()
        up[:, j] += h
        down[:, j] -= h
        fd[:, j] = np.sum(g_out * (est.forward(up)[0] - est.forward(down)[0]), axis=1) / (2 * h)
    np.testing.assert_allclose(est.vjp(rows, g_out), fd, rtol=1e-6, atol=1e-8)


def test_twin_gradient_follows_the_true_gradient_once_fitted():
    model, res, x, y = setup(noise_std=0.01)
    truth = true_gradient(model, res, x, y)
    est = make_estimator("twin", buffer_size=1500)
    _feed_twin(est, model, res, 60)
    e = est.estimate(model, res, x, y, np.arange(BATCH), 60, np.random.default_rng(9))
    assert e.measurements_spent == BATCH * N_NODES and e.extra["warmup"] == 0
    scale = model.param_scale()
    assert corr(e.grad * scale, truth * scale) > 0.9
    before = model.group_mask("before")  # the part that goes through the twin's Jacobian
    assert corr(e.grad[before], truth[before]) > 0.9
    # an unfitted twin (fresh random weights) does not: the agreement comes from the fit
    raw = make_estimator("twin", warmup_steps=0, first_fit_iters=0, fit_iters=0)
    e_raw = raw.estimate(model, res, x, y, np.arange(BATCH), 0, np.random.default_rng(9))
    assert corr(e_raw.grad[before], truth[before]) < 0.9


def test_twin_state_round_trip_continues_bit_for_bit():
    import json

    model, res, x, y = setup(noise_std=0.05)
    est = make_estimator("twin", warmup_steps=1, first_fit_iters=10, fit_iters=5, buffer_size=40)
    _, rng = _feed_twin(est, model, res, 4)
    state = json.loads(json.dumps(est.state_dict()))  # as the trainer's checkpoint carries it
    rng_state, counter = rng.bit_generator.state, res.measurements
    twin = make_estimator("twin", warmup_steps=1, first_fit_iters=10, fit_iters=5, buffer_size=40)
    twin.load_state_dict(state)
    for step in range(4, 7):
        a = est.estimate(model, res, x, y, np.arange(BATCH), step, rng)
        res_b = ToyReservoir(n_nodes=N_NODES, features_per_node=6, noise_std=0.05, seed=0)
        res_b.measurements = counter
        rng_b = np.random.default_rng()
        rng_b.bit_generator.state = rng_state
        b = twin.estimate(model, res_b, x, y, np.arange(BATCH), step, rng_b)
        np.testing.assert_array_equal(a.grad, b.grad)
        rng_state, counter = rng.bit_generator.state, res.measurements
    for k in est.net:
        np.testing.assert_array_equal(est.net[k], twin.net[k])
    np.testing.assert_array_equal(est.buffer, twin.buffer)
    assert len(est.buffer) == 40  # bounded
