"""The hybrid model's manual backprop against finite differences; the encoder and the readout."""
import numpy as np
import pytest

from labpgt.reservoirs.encoding import BandReadout, KnobEncoder
from labpgt.models.dense import HybridModel


def make_model(**kw):
    opts = dict(hidden_before=(5, 4), hidden_after=(6,), seed=3)
    opts.update(kw)
    return HybridModel(3, 4, 7, 3, **opts)


def numeric_grad(f, vec, h=1e-6):
    g = np.zeros_like(vec)
    for i in range(len(vec)):
        up, down = vec.copy(), vec.copy()
        up[i] += h
        down[i] -= h
        g[i] = (f(up) - f(down)) / (2 * h)
    return g


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_backward_encode_matches_finite_differences(activation):
    model = make_model(activation=activation)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3))
    weights = rng.normal(size=(6, 4))  # L = sum(weights * u): dL/du = weights
    u, cache = model.encode(x)
    analytic = model.backward_encode(cache, weights)
    numeric = numeric_grad(lambda p: np.sum(weights * model.encode(x, p)[0]), model.params())
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)
    # nothing outside the "before" group
    assert np.all(analytic[~model.group_mask("before")] == 0)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_readout_gradient_matches_finite_differences(activation):
    model = make_model(activation=activation)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(5, 7))
    labels = rng.integers(0, 3, 5)
    grad, grad_features, per_sample, _ = model.readout_gradient(features, labels)
    numeric = numeric_grad(lambda p: model.loss_and_accuracy(features, labels, p)[0], model.params())
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)
    numeric_f = numeric_grad(lambda f: model.loss_and_accuracy(f.reshape(5, 7), labels)[0], features.ravel())
    np.testing.assert_allclose(grad_features.ravel(), numeric_f, rtol=1e-5, atol=1e-7)
    assert np.all(grad[~model.group_mask("readout")] == 0)
    assert per_sample.mean() == pytest.approx(model.loss_and_accuracy(features, labels)[0])


def test_param_layout_and_set_params():
    model = make_model(current_a=1.75)
    masks = [model.group_mask(g) for g in ("before", "physical", "readout")]
    assert np.array_equal(sum(m.astype(int) for m in masks), np.ones(model.size, dtype=int))
    assert masks[1].sum() == 1 and model.current_a() == 1.75
    vec = model.params()
    vec[model.slots["physical.current_a"].slice] = 1.7
    model.set_params(vec)
    assert model.current_a() == 1.7
    vec[0] = 123.0
    assert model.params()[0] != 123.0  # params() is a copy
    with pytest.raises(ValueError, match="shape"):
        model.set_params(vec[:-1])
    vec[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.set_params(vec)
    assert model.param_scale()[model.slots["physical.current_a"].slice][0] == model.current_scale_a
    frozen = make_model(train_current=False)
    assert not frozen.trainable_mask()[frozen.slots["physical.current_a"].slice].any()


def test_knobs_stay_inside_u_scale_even_for_huge_weights():
    model = make_model(u_scale=0.9)
    model.set_params(model.params() * 1e3)
    u, _ = model.encode(np.random.default_rng(2).normal(size=(50, 3)) * 10)
    assert np.abs(u).max() <= 0.9


def test_encoder_maps_linearly_and_rejects_out_of_range():
    enc = KnobEncoder(n_nodes=2, reference_hz=2.0e9, detuning_span_hz=10e6, power_min_dbm=-40, power_max_dbm=-5)
    s = enc.encode(np.array([[-1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.2]]), current_a=1.8)
    np.testing.assert_allclose(s["drive_frequency_hz"], [[1.99e9, 2.01e9], [2.0e9, 2.005e9]])
    np.testing.assert_allclose(s["drive_power_dbm"], [[-40.0, -5.0], [-22.5, -22.5 + 0.2 * 17.5]])
    assert s["current_a"] == 1.8
    with pytest.raises(ValueError, match=r"1\.0001.*\[-1, 1\]"):
        enc.encode(np.array([[0.0, 1.0001, 0.0, 0.0]]), 1.8)
    with pytest.raises(ValueError, match=r"nan"):
        enc.encode(np.array([[np.nan, 0.0, 0.0, 0.0]]), 1.8)
    with pytest.raises(ValueError, match=r"3\.5 A.*\[0\.0, 3\.0\] A"):
        enc.encode(np.zeros((1, 4)), 3.5)
    with pytest.raises(ValueError, match="shape"):
        enc.encode(np.zeros((1, 3)), 1.8)


def test_band_readout_max_and_mean():
    ro = BandReadout(center_hz=2e9, span_hz=10e6, points=6, n_bands=3, statistic="max")
    trace = np.array([[-60.0, -40.0, -50.0, -50.0, -80.0, -20.0]])
    np.testing.assert_allclose(ro.features(trace), [[1.0, 0.5, 2.0]])
    ro_mean = BandReadout(center_hz=2e9, span_hz=10e6, points=6, n_bands=3, statistic="mean")
    np.testing.assert_allclose(ro_mean.features(trace), [[0.5, 0.5, 0.5]])
    assert ro.freqs_hz[0] == 1.995e9 and ro.freqs_hz[-1] == 2.005e9
    with pytest.raises(ValueError, match="statistic"):
        BandReadout(center_hz=2e9, statistic="median")
