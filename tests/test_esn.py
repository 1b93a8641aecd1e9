"""EchoStateReservoir: protocol, counts, noise keyed by the counter, causality and fading memory, exact VJP."""
import numpy as np
import pytest

from labpgt.reservoirs.esn import EchoStateReservoir
from labpgt.contracts import Reservoir

T, K, M = 6, 2, 7


def knobs(batch=4, seed=0):
    return np.random.default_rng(seed).uniform(-0.9, 0.9, (batch, T * K))


def test_implements_the_reservoir_protocol_with_tokens_as_virtual_nodes():
    res = EchoStateReservoir(T, K, M, seed=1)
    assert isinstance(res, Reservoir)
    assert (res.n_inputs, res.n_features, res.n_nodes) == (T * K, T * M, T)
    f = res.measure(knobs(5), current_a=1.8, kind="train", step=0, sample_index=np.arange(5))
    assert f.shape == (5, T * M)
    assert res.measurements == 5 * T  # one per sample per token


def test_noise_is_gaussian_with_the_given_std_and_keyed_by_the_counter():
    res = EchoStateReservoir(T, K, M, noise_std=0.1, seed=3)
    u = knobs(200)
    clean = res.noiseless(u, 1.8)
    first = res.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(200))
    assert np.std(first - clean) == pytest.approx(0.1, rel=0.05)
    assert res.measurements == 200 * T
    res.measurements = 0  # a resumed trainer restores the counter: the same noise again
    again = res.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(200))
    np.testing.assert_array_equal(first, again)
    third = res.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(200))
    assert not np.allclose(third, first)
    assert res.measurements == 400 * T


def test_noiseless_costs_nothing_and_the_device_is_fixed_by_the_seed():
    a, b, c = EchoStateReservoir(T, K, M, seed=5), EchoStateReservoir(T, K, M, seed=5), EchoStateReservoir(T, K, M, seed=6)
    u = knobs()
    np.testing.assert_array_equal(a.noiseless(u, 1.8), b.noiseless(u, 1.8))
    assert not np.allclose(a.noiseless(u, 1.8), c.noiseless(u, 1.8))
    assert a.measurements == 0
    assert np.max(np.abs(np.linalg.eigvals(a.w_rec))) == pytest.approx(0.9)


def test_state_is_causal_and_memory_fades_across_tokens():
    res = EchoStateReservoir(T, K, M, noise_std=0.0, seed=2, leak=0.5, spectral_radius=0.9)
    u = knobs(64, seed=4)
    base = res.noiseless(u, 1.8).reshape(64, T, M)
    kicked_u = u.copy()
    kicked_u[:, 0:K] = -kicked_u[:, 0:K]  # change only token 0
    kicked = res.noiseless(kicked_u, 1.8).reshape(64, T, M)
    effect = np.abs(kicked - base).mean(axis=(0, 2))
    assert effect[0] > 0.05  # token 0 is seen ...
    assert np.all(effect[1:] > 0)  # ... remembered by every later token ...
    assert np.all(np.diff(effect) < 0)  # ... less and less
    assert effect[-1] < 0.3 * effect[0]
    late_u = u.copy()
    late_u[:, -K:] = 0.0  # change only the last token: earlier tokens do not see the future
    late = res.noiseless(late_u, 1.8).reshape(64, T, M)
    np.testing.assert_array_equal(late[:, :-1], base[:, :-1])


def test_vjp_matches_central_differences_for_knobs_and_current():
    res = EchoStateReservoir(T, K, M, seed=7)
    u = knobs(3, seed=8)
    g = np.random.default_rng(9).normal(size=(3, T * M))
    grad_u, grad_i = res.vjp(u, 1.8, g)
    h = 1e-6
    numeric = np.zeros_like(u)
    for j in range(u.shape[1]):
        up, down = u.copy(), u.copy()
        up[:, j] += h
        down[:, j] -= h
        numeric[:, j] = np.sum(g * (res.noiseless(up, 1.8) - res.noiseless(down, 1.8)), axis=1) / (2 * h)
    np.testing.assert_allclose(grad_u, numeric, rtol=1e-6, atol=1e-8)
    hi = 1e-7
    numeric_i = np.sum(g * (res.noiseless(u, 1.8 + hi) - res.noiseless(u, 1.8 - hi))) / (2 * hi)
    assert grad_i == pytest.approx(numeric_i, rel=1e-5)
    assert res.measurements == 0


def test_rejects_knobs_outside_the_range_and_wrong_shapes():
    res = EchoStateReservoir(T, K, M)
    u = knobs()
    u[1, 3] = 1.2
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        res.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(4))
    with pytest.raises(ValueError, match="shape"):
        res.noiseless(np.zeros((2, T * K + 1)), 1.8)
    with pytest.raises(ValueError, match="leak"):
        EchoStateReservoir(T, K, M, leak=0.0)
    assert res.measurements == 0
