"""``token-twin``: Physics-Aware Training for the transformer -- one measured pass, the backward pass through a twin.

The transformer's tokens are the ring's virtual nodes: one device, time-multiplexed, so every
token goes through the same map from its k knobs to its M band features (the bias current is
not trained). The twin is that one map, fitted to every (knobs, features) row the run measures
(B T rows per step), as a tensor-product cubic B-spline over [-1, 1]^k with a second-difference
penalty on its coefficients (a P-spline: Eilers & Marx, Stat. Sci. 11, 89 (1996)). The fit is
linear least squares, so the twin is kept as its normal equations (the Gram matrix of the basis
over all rows so far and the basis-weighted features) and re-solved every step: no iterations,
no buffer, the same twin whatever order the rows came in.

Each step measures the clean batch once (B T evaluations), adds its rows to the twin, re-solves,
and backpropagates the readout's exact gradient at the measured features through the twin's
Jacobian at the measured knobs (Wright et al., Nature 601, 549 (2022)). The ring's band features
jump where the drive tone or the line crosses a band edge; the spline's knot spacing (2 / cells
in knob units) smooths those steps the way a finite difference or a +/-epsilon kick does. The
normal equations are solved without BLAS (:func:`banded_cholesky_solve`), so a run's bits do not
depend on the BLAS library's thread count.
"""
from __future__ import annotations

import itertools

import numpy as np

from labpgt.contracts import Perturbation
from labpgt.estimators.base import Estimate, EstimatorBase, pack, unpack

#: most basis functions the twin may have ((cells + 3) ** knobs per token): the normal equations are dense
MAX_BASIS = 4096


def _cubic(t: np.ndarray):
    """Uniform cubic B-spline weights and their t-derivatives at t in [0, 1]: two arrays [..., 4]."""
    s = 1.0 - t
    w = np.stack([s**3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], axis=-1) / 6.0
    d = np.stack([-(s**2), 3 * t**2 - 4 * t, -3 * t**2 + 2 * t + 1, t**2], axis=-1) / 2.0
    return w, d


def banded_cholesky_solve(system: np.ndarray, rhs: np.ndarray, band: int) -> np.ndarray:
    """Solve system @ x = rhs for a symmetric positive definite ``system`` zero beyond ``band`` off the diagonal.

    Written with numpy's element-wise products and reductions only, never BLAS or LAPACK, so the bits
    of the answer do not depend on how many threads the BLAS library runs (a run replays bit for bit
    on another machine or thread count). O(n band^2).
    """
    n = len(system)
    low = np.zeros_like(system)  # the Cholesky factor, lower triangle
    for j in range(n):
        lo, hi = max(0, j - band), min(n, j + band + 1)
        row = low[j, lo:j]
        low[j, j] = np.sqrt(system[j, j] - np.sum(row * row))
        if j + 1 < hi:
            low[j + 1:hi, j] = (system[j + 1:hi, j] - np.sum(low[j + 1:hi, lo:j] * row, axis=1)) / low[j, j]
    y = np.zeros_like(rhs)
    for j in range(n):
        lo = max(0, j - band)
        y[j] = (rhs[j] - np.sum(low[j, lo:j, None] * y[lo:j], axis=0)) / low[j, j]
    x = np.zeros_like(rhs)
    for j in range(n - 1, -1, -1):
        hi = min(n, j + band + 1)
        x[j] = (y[j] - np.sum(low[j + 1:hi, j, None] * x[j + 1:hi], axis=0)) / low[j, j]
    return x


class SplineBasis:
    """Tensor-product uniform cubic B-splines on [-1, 1]^k, ``cells`` intervals per axis.

    ``rows(x)`` gives each row's 4^k non-zero basis functions: their indices [n, 4^k], values
    [n, 4^k] and derivatives along each axis [k, n, 4^k] (per knob unit).
    """

    def __init__(self, n_dims: int, cells: int):
        self.n_dims, self.cells = int(n_dims), int(cells)
        self.per_axis = self.cells + 3
        self.size = self.per_axis**self.n_dims
        self.h = 2.0 / self.cells
        # offsets of the 4^k non-zero functions around a row's first index, axis-major
        self._offsets = np.array(list(itertools.product(range(4), repeat=self.n_dims)), dtype=np.int64)  # [4^k, k]
        self._strides = self.per_axis ** np.arange(self.n_dims - 1, -1, -1, dtype=np.int64)

    def rows(self, x: np.ndarray):
        s = (np.asarray(x, dtype=np.float64) + 1.0) / self.h
        first = np.clip(np.floor(s), 0, self.cells - 1).astype(np.int64)  # [n, k]
        w, d = _cubic(s - first)  # [n, k, 4]
        index = (first[:, None, :] + self._offsets[None]) @ self._strides  # [n, 4^k]
        axes = np.arange(self.n_dims)
        per_axis = w[:, axes, self._offsets]  # [n, 4^k, k]: each axis's weight of each function
        values = np.prod(per_axis, axis=2)
        derivs = np.empty((self.n_dims, len(s), len(self._offsets)))
        for a in range(self.n_dims):
            factors = per_axis.copy()
            factors[:, :, a] = d[:, a, self._offsets[:, a]]
            derivs[a] = np.prod(factors, axis=2) / self.h
        return index, values, derivs

    def roughness(self) -> np.ndarray:
        """Sum over axes of the squared second differences of the coefficient grid, as a [size, size] matrix."""
        eye = np.eye(self.per_axis)
        second = np.diff(eye, n=2, axis=0)
        penalty = np.zeros((self.size, self.size))
        for a in range(self.n_dims):
            factors = [second.T @ second if b == a else eye for b in range(self.n_dims)]
            term = factors[0]
            for f in factors[1:]:
                term = np.kron(term, f)
            penalty += term
        return penalty


class TokenTwin(EstimatorBase):
    """Physics-Aware Training on the transformer: measured forward pass, backward pass through a spline twin.

    cells: spline intervals per knob axis over [-1, 1] (knot spacing 2 / cells knob units; the
    twin's resolution); smoothing: weight of the second-difference penalty, in units of rows
    (where the run has measured many rows the data decides, elsewhere the twin stays smooth);
    memory: factor the normal equations are multiplied by before each step's rows are added
    (1 = every row counts forever, for a ring that does not drift; < 1 forgets old rows).
    Cost B T evaluations per step. The state (normal equations and row count) is in
    state_dict(), JSON with arrays as base64 float64, so resume continues bit for bit; only the
    Gram matrix's possible non-zeros are kept.
    """

    name = "token-twin"

    def __init__(self, cells: int = 14, smoothing: float = 30.0, memory: float = 1.0):
        if cells < 1 or smoothing < 0 or not 0.0 < memory <= 1.0:
            raise ValueError("cells must be >= 1, smoothing >= 0 and memory in (0, 1]")
        self.cells, self.smoothing, self.memory = int(cells), float(smoothing), float(memory)
        self._reset()

    def _reset(self):
        self.basis: SplineBasis | None = None
        self.gram: np.ndarray | None = None  # [pairs]: the basis's Gram matrix at its possible non-zeros
        self.moment: np.ndarray | None = None  # [size, M]: basis-weighted features
        self.rows_seen = 0.0  # rows so far, with the memory's weights
        self.coef: np.ndarray | None = None  # [size, M], solved from the normal equations

    def options(self) -> dict:
        return dict(cells=self.cells, smoothing=self.smoothing, memory=self.memory)

    def check_model(self, model) -> None:
        if model.train_current:
            raise ValueError("token-twin models the knobs at a fixed bias current: use a model with "
                             "train_current=False")

    def state_dict(self) -> dict:
        if self.gram is None:
            return {}
        return {"knobs": self.basis.n_dims, "gram": pack(self.gram), "moment": pack(self.moment),
                "rows_seen": self.rows_seen}

    def load_state_dict(self, state: dict) -> None:
        self._reset()
        if "gram" in state:
            self.gram, self.moment = unpack(state["gram"]), unpack(state["moment"])
            self.rows_seen = float(state["rows_seen"])
            self._start(int(state["knobs"]), self.moment.shape[1])
            self._solve()  # the twin the run had at the checkpoint (the same normal equations, the same solve)

    # ------------------------------------------------------------ the twin
    def _start(self, n_dims: int, n_features: int):
        self.basis = SplineBasis(n_dims, self.cells)
        n = self.basis.size
        # the Gram matrix is non-zero only between functions whose supports overlap (|offset| <= 3 per axis)
        grid = np.array(list(itertools.product(range(self.basis.per_axis), repeat=n_dims)))
        near = np.all(np.abs(grid[:, None, :] - grid[None, :, :]) <= 3, axis=2)
        self._pairs = np.argwhere(np.triu(near))  # [pairs, 2], i <= j
        self._band = int(np.max(self._pairs[:, 1] - self._pairs[:, 0]))
        self._pair_of = np.full((n, n), -1, dtype=np.int64)
        self._pair_of[self._pairs[:, 0], self._pairs[:, 1]] = np.arange(len(self._pairs))
        self._penalty = self.basis.roughness()
        if self.gram is None:
            self.gram = np.zeros(len(self._pairs))
            self.moment = np.zeros((n, n_features))

    def _add(self, knobs: np.ndarray, features: np.ndarray) -> None:
        index, values, _ = self.basis.rows(knobs)
        i, j = np.minimum(index[:, :, None], index[:, None, :]), np.maximum(index[:, :, None], index[:, None, :])
        upper = (index[:, :, None] <= index[:, None, :])  # each unordered pair once (diagonal included)
        pair = self._pair_of[i[upper], j[upper]]
        products = (values[:, :, None] * values[:, None, :])[upper]
        self.gram *= self.memory
        self.moment *= self.memory
        self.rows_seen = self.rows_seen * self.memory + len(knobs)
        self.gram += np.bincount(pair, weights=products, minlength=len(self._pairs))
        n = self.basis.size
        for m in range(features.shape[1]):
            self.moment[:, m] += np.bincount(index.ravel(), weights=(values * features[:, m:m + 1]).ravel(),
                                             minlength=n)

    def _solve(self) -> None:
        n = self.basis.size
        system = np.zeros((n, n))
        system[self._pairs[:, 0], self._pairs[:, 1]] = self.gram
        system[self._pairs[:, 1], self._pairs[:, 0]] = self.gram
        # a whisker of ridge keeps the system regular before the rows span the penalty's null space
        system += self.smoothing * self._penalty + 1e-9 * np.eye(n)
        self.coef = banded_cholesky_solve(system, self.moment, self._band)

    def predict(self, knobs: np.ndarray) -> np.ndarray:
        """The twin's features of rows of one token's knobs [n, k] -> [n, M]."""
        index, values, _ = self.basis.rows(knobs)
        return np.einsum("nj,njm->nm", values, self.coef[index])

    def vjp(self, knobs: np.ndarray, g_features: np.ndarray) -> np.ndarray:
        """g_features [n, M] -> g_features @ d twin / d knobs at the rows [n, k]."""
        index, _, derivs = self.basis.rows(knobs)
        along = np.einsum("njm,nm->nj", self.coef[index], g_features)  # each function's coefficient . g
        return np.einsum("anj,nj->na", derivs, along)

    # ------------------------------------------------------------ the estimate
    def estimate(self, model, reservoir, x, y, sample_index, step, rng) -> Estimate:
        self.check_model(model)
        if not reservoir.independent_nodes:
            raise ValueError("token-twin needs a reservoir whose virtual nodes are independent measurements")
        size = (self.cells + 3) ** model.knobs_per_token
        if size > MAX_BASIS:
            raise ValueError(f"token-twin with cells {self.cells} and {model.knobs_per_token} knobs per token has "
                             f"{size} basis functions; at most {MAX_BASIS}: use fewer cells")
        start = reservoir.measurements
        u, cache = model.encode(x)
        features = reservoir.measure(u, current_a=model.current_a(), kind="train", step=step,
                                     sample_index=sample_index, perturbation=Perturbation())
        k = model.knobs_per_token
        knobs = u.reshape(-1, k)
        measured = features.reshape(len(knobs), -1)
        if self.basis is None:
            self._start(k, measured.shape[1])
        # how well the twin so far predicts rows it has not seen yet (before they are added)
        rmse = float(np.sqrt(np.mean((self.predict(knobs) - measured) ** 2))) if self.coef is not None else np.nan
        self._add(knobs, measured)
        self._solve()
        g_read, g_features, per_sample, accuracy = model.readout_gradient(features, y)
        grad_u = self.vjp(knobs, g_features.reshape(len(knobs), -1)).reshape(u.shape)
        grad = model.backward_encode(cache, grad_u) + g_read
        return Estimate(grad, float(per_sample.mean()), accuracy, reservoir.measurements - start,
                        {"twin_rmse": rmse})
