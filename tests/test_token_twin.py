"""token-twin: the spline twin's basis and fit, its gradient against the exact one, what it refuses, and a
ring run through the CLI that replays bit for bit and resumes into the uninterrupted run."""
from __future__ import annotations

import numpy as np
import pytest

from labpgt.cli import main
from labpgt.estimators import Backprop, TokenTwin
from labpgt.estimators.token_twin import SplineBasis
from labpgt.models.transformer import TransformerModel
from labpgt.reservoirs.direct import ToyReservoir
from labpgt.runfile import RunReader

T, F, K, M = 4, 3, 2, 5


@pytest.mark.parametrize("n_dims, cells", [(1, 5), (2, 7), (3, 3)])
def test_the_basis_is_a_partition_of_unity_with_the_derivatives_of_its_values(n_dims, cells):
    basis = SplineBasis(n_dims, cells)
    x = np.random.default_rng(0).uniform(-1, 1, (50, n_dims))
    x[0] = -1.0  # both ends of the range belong to it
    x[1] = 1.0
    index, values, derivs = basis.rows(x)
    assert index.shape == values.shape == (50, 4**n_dims) and derivs.shape == (n_dims, 50, 4**n_dims)
    assert index.min() >= 0 and index.max() < basis.size
    assert all(len(set(row)) == 4**n_dims for row in index)  # distinct functions per row
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-12)
    coef = np.random.default_rng(1).normal(size=basis.size)
    h = 1e-6
    for a in range(n_dims):
        up, down = x.copy(), x.copy()
        up[2:, a] += h
        down[2:, a] -= h
        f = lambda z: np.einsum("nj,nj->n", *(lambda i, v, _: (v, coef[i]))(*basis.rows(z)))  # noqa: E731
        numeric = (f(up) - f(down))[2:] / (2 * h)
        analytic = np.einsum("nj,nj->n", derivs[a], coef[index])[2:]
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6)


def test_the_penalty_leaves_linear_functions_alone_and_charges_curvature():
    basis = SplineBasis(2, 6)
    penalty = basis.roughness()
    grid = np.arange(basis.per_axis, dtype=float)
    a, b = np.meshgrid(grid, grid, indexing="ij")
    linear = (2.0 + 0.5 * a - 1.5 * b).ravel()  # B-spline coefficients of a linear function are linear
    assert abs(linear @ penalty @ linear) < 1e-9
    curved = (a**2).ravel()
    assert curved @ penalty @ curved > 1.0


def toy_model_and_ring(noise_std=0.0):
    model = TransformerModel(T, F, K, M, 3, d_model=6, n_heads=2, d_mlp=7, d_after=4, train_current=False, seed=1)
    res = ToyReservoir(n_nodes=T, knobs_per_node=K, features_per_node=M, noise_std=noise_std, seed=1)
    return model, res


def test_the_twin_learns_a_smooth_map_and_its_gradient_becomes_backprops():
    """On the toy reservoir (a smooth map, one per token, noisy measurements) the twin's fit and its
    transformer gradient approach the exact ones as rows accumulate; the readout's part is exact at once."""
    model, res = toy_model_and_ring(noise_std=0.02)
    rng = np.random.default_rng(0)
    twin = TokenTwin(cells=12, smoothing=1.0)
    before = model.group_mask("before")
    errors = []
    for step in range(30):
        x, y = rng.normal(size=(32, T * F)), rng.integers(0, 3, 32)
        start = res.measurements
        est = twin.estimate(model, res, x, y, np.arange(32), step, rng)
        assert est.measurements_spent == res.measurements - start == 32 * T  # one evaluation per sample and token
        exact = Backprop(fd_step=1e-5, reservoir_model=res).estimate(model, res, x, y, np.arange(32), step, rng).grad
        errors.append(np.linalg.norm(est.grad[before] - exact[before]) / np.linalg.norm(exact[before]))
        if step == 0:
            first_rmse = est.extra["twin_rmse"]
    assert np.isnan(first_rmse)  # nothing to predict with before the first rows
    assert errors[-1] < 0.1 and errors[-1] < 0.5 * errors[0], errors
    u, _ = model.encode(rng.normal(size=(50, T * F)))  # fresh knobs where the transformer puts them
    truth = res.noiseless(u, model.current_a()).reshape(-1, M)
    assert np.sqrt(np.mean((twin.predict(u.reshape(-1, K)) - truth) ** 2)) < 0.03


def test_state_round_trip_gives_the_same_twin():
    model, res = toy_model_and_ring(noise_std=0.02)
    rng = np.random.default_rng(3)
    twin = TokenTwin(cells=8, smoothing=2.0, memory=0.9)
    for step in range(3):
        twin.estimate(model, res, rng.normal(size=(8, T * F)), rng.integers(0, 3, 8), np.arange(8), step, rng)
    import json

    copy = TokenTwin(cells=8, smoothing=2.0, memory=0.9)
    copy.load_state_dict(json.loads(json.dumps(twin.state_dict())))
    knobs = rng.uniform(-1, 1, (40, K))
    np.testing.assert_array_equal(copy.predict(knobs), twin.predict(knobs))
    assert TokenTwin().state_dict() == {}  # before the first step: nothing to keep


def test_what_it_cannot_train_is_refused():
    model, res = toy_model_and_ring()
    x, y = np.zeros((2, T * F)), np.zeros(2, dtype=int)
    trained_current = TransformerModel(T, F, K, M, 3, d_model=6, n_heads=2, d_mlp=7, d_after=4, train_current=True)
    with pytest.raises(ValueError, match="train_current=False"):
        TokenTwin().check_model(trained_current)
    with pytest.raises(ValueError, match="at most 4096"):
        TokenTwin(cells=70).estimate(model, res, x, y, np.arange(2), 0, np.random.default_rng(0))
    assert res.measurements == 0  # refused before measuring
    with pytest.raises(ValueError, match="cells must be"):
        TokenTwin(cells=0)
    from labpgt.reservoirs.esn import EchoStateReservoir

    with pytest.raises(ValueError, match="independent"):
        TokenTwin().estimate(model, EchoStateReservoir(T, K, M), x, y, np.arange(2), 0, np.random.default_rng(0))


def test_an_echo_state_reservoir_is_refused_before_a_run_file_exists(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", "--model", "transformer", "--reservoir", "esn", "--estimator", "token-twin",
                 "--out", str(out), "--no-progress"]) == 2
    assert "virtual nodes are independent" in capsys.readouterr().err
    assert not out.exists()


ARGS = ["--model", "transformer", "--reservoir", "ring", "--estimator", "token-twin", "--batch-size", "4",
        "--seed", "3", "--checkpoint-every", "2", "--eval-every", "3", "--no-progress"]


def params(path) -> bytes:
    with RunReader(path) as r:
        return np.asarray(r.last_checkpoint()["params"]).tobytes()


def test_a_ring_run_replays_bit_for_bit_and_resumes_into_the_uninterrupted_run(tmp_path, capsys, monkeypatch,
                                                                               ctrl_c_at_checkpoint):

    straight = tmp_path / "straight.h5"
    assert main(["train", *ARGS, "--budget", "320", "--out", str(straight)]) == 0  # 10 steps of 4 x 8
    with RunReader(straight) as r:
        kinds, signs = r.measurements.column("kind"), r.measurements.column("perturbation_sign")
        assert r.status == "completed" and int(r.last_checkpoint()["measurements"]) == 320
    assert np.all(signs[kinds == 0] == 0)  # every training evaluation is the clean forward pass
    capsys.readouterr()
    assert main(["replay", str(straight)]) == 0
    assert "bit for bit" in capsys.readouterr().out

    # interrupted at its third checkpoint (step 4), then resumed: the twin comes back from the checkpoint
    path = tmp_path / "resumed.h5"
    with monkeypatch.context() as m:
        ctrl_c_at_checkpoint(m, at_call=3)
        assert main(["train", *ARGS, "--budget", "320", "--out", str(path)]) == 130
    with RunReader(path) as r:
        state = r.last_checkpoint()
        assert int(state["step"]) == 2 and "gram" in state["extra"]
    assert main(["train", "--resume", str(path), "--no-progress"]) == 0
    assert params(path) == params(straight)
    capsys.readouterr()
    assert main(["replay", str(path)]) == 0
    assert "bit for bit" in capsys.readouterr().out


SOLVE = """
import hashlib, sys
import numpy as np
from labpgt.estimators.token_twin import TokenTwin, banded_cholesky_solve
twin = TokenTwin(cells=14)
twin._start(2, 10)
rng = np.random.default_rng(0)
twin._add(rng.uniform(-0.8, 0.8, (3000, 2)), rng.normal(size=(3000, 10)))
twin._solve()
print(hashlib.sha1(twin.coef.tobytes()).hexdigest())
"""


def test_the_twin_is_solved_to_the_same_bits_whatever_the_blas_thread_count():
    """np.linalg.solve (OpenBLAS) gives other last bits with another thread count; the twin's own banded
    Cholesky does not, so a run replays bit for bit on any machine."""
    import os
    import subprocess
    import sys

    from labpgt.estimators.token_twin import banded_cholesky_solve

    rng = np.random.default_rng(1)
    n, band = 60, 7
    a = rng.normal(size=(n, n)) * (np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= band // 2)
    system = a @ a.T + np.eye(n)  # banded (half-width <= band) and positive definite
    rhs = rng.normal(size=(n, 3))
    np.testing.assert_allclose(banded_cholesky_solve(system, rhs, band), np.linalg.solve(system, rhs), rtol=1e-10)
    digests = {subprocess.run([sys.executable, "-c", SOLVE], capture_output=True, text=True, check=True,
                              env={**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
                              ).stdout for threads in ("1", "2")}
    assert len(digests) == 1, digests
