"""Issue 16 items 3 and 4: the ring's stand-ins and the noise-aware node perturbation size."""
import json

import numpy as np
import pytest

from labpgt.estimators.library import make_estimator
from labpgt.models.dense import HybridModel
from labpgt.reservoirs.direct import ToyReservoir
from labpgt.reservoirs.stand_ins import PassThroughReservoir, make_stand_in


@pytest.mark.parametrize("kind,features", [("ring", 3 * 7), ("noiseless", 3 * 7), ("random", 3 * 7), ("none", 3 * 2)])
def test_stand_ins_count_one_measurement_per_sample_and_node(kind, features):
    res = make_stand_in(kind, seed=0, n_nodes=3, readout={"n_bands": 7})
    u = np.linspace(-0.8, 0.8, 4 * res.n_inputs).reshape(4, res.n_inputs)
    f = res.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(4))
    assert f.shape == (4, features) and np.all(np.isfinite(f))
    assert res.measurements == 4 * 3


def test_noiseless_ring_repeats_itself_and_the_pass_through_returns_the_knobs():
    res = make_stand_in("noiseless", seed=0, n_nodes=1, readout={"n_bands": 5})
    u = np.array([[0.3, -0.2]])
    first = res.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(1))
    again = res.measure(u, current_a=1.8, kind="train", step=1, sample_index=np.arange(1))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(PassThroughReservoir(1).measure(u, current_a=1.8, kind="train", step=0,
                                                                  sample_index=np.arange(1)), u)
    with pytest.raises(ValueError, match="outside the allowed range"):
        PassThroughReservoir(1).measure(np.array([[1.5, 0.0]]), current_a=1.8, kind="train", step=0,
                                        sample_index=np.arange(1))


def _setup(seed=0):
    res = ToyReservoir(n_nodes=2, features_per_node=6, noise_std=0.05, seed=seed)
    model = HybridModel(4, res.n_inputs, res.n_features, 3, hidden_before=(5,), seed=seed)
    rng = np.random.default_rng(seed)
    return model, res, rng.normal(size=(16, 4)), rng.integers(0, 3, 16)


def test_noise_aware_node_costs_what_node_costs_and_stays_inside_its_bounds():
    model, res, x, y = _setup()
    est = make_estimator("node-adaptive", epsilon=0.05)
    rng = np.random.default_rng(1)
    sizes = []
    for step in range(30):
        before = res.measurements
        e = est.estimate(model, res, x, y, np.arange(16), step, rng)
        assert e.measurements_spent == res.measurements - before == 2 * 16 * 2
        sizes.append(e.extra["epsilon"])
    hi = (1 - model.u_scale) / est.spread
    assert all(est.epsilon_min - 1e-12 <= s <= hi + 1e-12 for s in sizes)
    assert len(set(sizes)) > 1  # it adapted


def test_noise_aware_node_state_resumes_bit_for_bit():
    model, res, x, y = _setup()
    est = make_estimator("node-adaptive")
    rng = np.random.default_rng(2)
    for step in range(5):
        est.estimate(model, res, x, y, np.arange(16), step, rng)
    state = json.loads(json.dumps(est.state_dict()))
    rng_state = rng.bit_generator.state
    measurements = res.measurements
    a = est.estimate(model, res, x, y, np.arange(16), 5, rng)
    again = make_estimator("node-adaptive")
    again.load_state_dict(state)
    rng.bit_generator.state = rng_state
    res.measurements = measurements
    b = again.estimate(model, res, x, y, np.arange(16), 5, rng)
    np.testing.assert_array_equal(a.grad, b.grad)
    assert again.state_dict() == est.state_dict()


def test_noise_aware_node_refuses_a_bound_that_leaves_the_knob_range():
    model, res, x, y = _setup()
    est = make_estimator("node-adaptive", epsilon_max=0.09)  # x 1.5 > 1 - u_scale = 0.1
    with pytest.raises(ValueError, match="outside"):
        est.estimate(model, res, x, y, np.arange(16), 0, np.random.default_rng(0))
