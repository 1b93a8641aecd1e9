"""A fixed random echo-state reservoir: the comparison reservoir for the transformer.

It implements :class:`labpgt.contracts.Reservoir`. A sample is a sequence of ``n_tokens``
tokens with ``knobs_per_token`` knobs each (u [B, T*k], token-major). The state of
``n_units`` leaky tanh units runs across the tokens of one sample and starts from zero for
every sample, so a token's features carry a fading memory of the tokens before it::

    pre_t = u_t @ W_in + s_{t-1} @ W_rec + bias + current_coupling * (current_a - current_ref_a) / 1 mA
    s_t   = (1 - leak) * s_{t-1} + leak * tanh(pre_t),         s_{-1} = 0
    features of token t = s_t + noise_std * N(0, 1)           (features [B, T * n_units])

W_in, W_rec (rescaled to the given spectral radius), bias and the coupling are drawn once
from the seed and never change. ``measurements`` counts one per sample per token (the tokens
are the virtual nodes), as for the ring. Noise is a pure function of (seed, measurement
counter), so restoring ``measurements`` on resume reproduces it bit for bit.

``noiseless`` is the noise-free map (costs no measurement) and ``vjp`` its exact
vector-Jacobian product (backpropagation through time): it declares
:class:`~labpgt.contracts.DifferentiableModel`, used ONLY by the ``backprop`` baseline and the
oracle; the perturbative estimators treat this reservoir as a black box like the ring.
Every evaluation goes to the recorder as one row per sample and token, with NaN instrument
settings and a one-point NaN trace (there is no spectrum); :class:`KnobsOnly` is the
"encoder" replay checks those rows with.
"""
from __future__ import annotations

import numpy as np

from labpgt.contracts import DifferentiableModel, NullRecorder, Perturbation, Recorder, Reservoir
from labpgt.reservoirs.encoding import check_knobs


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
        return {"drive_frequency_hz": nan, "drive_power_dbm": nan, "current_a": float(current_a)}

    def to_dict(self) -> dict:
        return {"n_nodes": self.n_nodes, "knobs_per_node": self.knobs_per_node}


class EchoStateReservoir(Reservoir, DifferentiableModel):
    """Leaky tanh echo-state network across the tokens of a sample (see the module docstring).

    n_tokens: tokens (virtual nodes) per sample; knobs_per_token: inputs per token;
    n_units: state size = features per token; leak: leak rate in (0, 1] (1 = no leak);
    spectral_radius: of W_rec (< 1 for the echo-state property); input_scale: std of W_in's
    entries; bias_scale: std of the fixed bias; noise_std: Gaussian readout noise per feature;
    current_ref_a / current_coupling_per_ma: how the bias current shifts every unit's input,
    so the trainable current means something here too.
    """

    #: the state carries from token to token: a kick of one token's knobs moves every later token
    independent_nodes = False

    def __init__(
        self,
        n_tokens: int,
        knobs_per_token: int = 2,
        n_units: int = 10,
        *,
        leak: float = 0.5,
        spectral_radius: float = 0.9,
        input_scale: float = 1.0,
        bias_scale: float = 0.2,
        noise_std: float = 0.05,
        seed: int = 0,
        current_ref_a: float = 1.8,
        current_coupling_per_ma: float = 0.1,
        recorder: Recorder | None = None,
    ):
        self.recorder = recorder if recorder is not None else NullRecorder()
        if not 0.0 < leak <= 1.0:
            raise ValueError(f"leak must be in (0, 1], got {leak}")
        if n_tokens < 1 or knobs_per_token < 1 or n_units < 1:
            raise ValueError("n_tokens, knobs_per_token and n_units must be >= 1")
        self.n_tokens, self.knobs_per_token, self.n_units = int(n_tokens), int(knobs_per_token), int(n_units)
        self.n_nodes = self.n_tokens  # the name the other reservoirs use for virtual nodes
        self.n_inputs = self.n_tokens * self.knobs_per_token
        self.n_features = self.n_tokens * self.n_units
        self.leak, self.noise_std, self.seed = float(leak), float(noise_std), int(seed)
        self.current_ref_a = float(current_ref_a)
        self.measurements = 0
        # the "device": fixed by the seed, separate stream from the noise
        device = np.random.default_rng([self.seed, 0xE5])
        self.w_in = device.normal(0.0, input_scale, (self.knobs_per_token, self.n_units))
        w_rec = device.normal(0.0, 1.0, (self.n_units, self.n_units))
        radius = float(np.max(np.abs(np.linalg.eigvals(w_rec))))
        self.w_rec = w_rec * (spectral_radius / radius)
        self.bias = device.normal(0.0, bias_scale, self.n_units)
        self.coupling = device.normal(0.0, current_coupling_per_ma, self.n_units)

    def _check(self, u: np.ndarray) -> np.ndarray:
        return check_knobs(u, self.n_inputs)

    def _run(self, u: np.ndarray, current_a: float):
        """States [B, T, n_units] and the tanh activations (kept for the VJP)."""
        u = self._check(u).reshape(len(u), self.n_tokens, self.knobs_per_token)
        drive = self.bias + self.coupling * (float(current_a) - self.current_ref_a) / 1e-3
        state = np.zeros((len(u), self.n_units))
        states = np.empty((len(u), self.n_tokens, self.n_units))
        acts = np.empty_like(states)
        for t in range(self.n_tokens):
            acts[:, t] = np.tanh(u[:, t] @ self.w_in + state @ self.w_rec + drive)
            state = (1.0 - self.leak) * state + self.leak * acts[:, t]
            states[:, t] = state
        return states, acts

    def noiseless(self, u: np.ndarray, current_a: float) -> np.ndarray:
        """Noise-free features [B, T * n_units]; costs no measurement."""
        states, _ = self._run(u, current_a)
        return states.reshape(len(states), self.n_features)

    @property
    def knobs_only(self) -> KnobsOnly:
        return KnobsOnly(self.n_nodes, self.knobs_per_token)

    def measure(self, u, *, current_a, kind, step, sample_index, perturbation=Perturbation()) -> np.ndarray:
        clean = self.noiseless(u, current_a)
        rng = np.random.default_rng([self.seed, self.measurements])
        start = self.measurements
        self.measurements += clean.shape[0] * self.n_tokens
        features = clean + self.noise_std * rng.standard_normal(clean.shape)
        self._record(features, start, current_a, kind, step, sample_index, perturbation)
        return features

    def _record(self, features, start, current_a, kind, step, sample_index, perturbation) -> None:
        """One row per sample x token, sample-major; the time column holds the evaluation index (no clock)."""
        b, nodes = len(features), self.n_nodes
        self.recorder.measurements_batch({
            "kind": kind, "step": int(step),
            "sample_index": np.repeat(np.asarray(sample_index), nodes),
            "node": np.tile(np.arange(nodes), b),
            "perturbation_direction": perturbation.direction, "perturbation_sign": perturbation.sign,
            "frequency_hz": np.full(b * nodes, np.nan), "power_dbm": np.full(b * nodes, np.nan),
            "current_a": float(current_a),
            "frequency_axis": (np.nan, np.nan, 1),
            "time_s": np.arange(start, start + b * nodes, dtype=np.float64),
            "trace_dbm": np.full((b * nodes, 1), np.nan, dtype=np.float32),
            "features": features.reshape(b * nodes, -1),
        })

    def vjp(self, u: np.ndarray, current_a: float, grad_features: np.ndarray):
        """Exact (grad_u [B, n_inputs], grad_current_a) of sum(grad_features * noiseless(u, current_a)).

        Backpropagation through time over the tokens; costs no measurement.
        """
        states, acts = self._run(u, current_a)
        batch = len(states)
        grad_features = np.asarray(grad_features, dtype=np.float64).reshape(batch, self.n_tokens, self.n_units)
        grad_u = np.empty((batch, self.n_tokens, self.knobs_per_token))
        grad_drive = np.zeros(self.n_units)
        carry = np.zeros((batch, self.n_units))  # dL/ds_t arriving from later tokens
        for t in reversed(range(self.n_tokens)):
            grad_state = grad_features[:, t] + carry
            grad_pre = grad_state * self.leak * (1.0 - acts[:, t] ** 2)
            grad_u[:, t] = grad_pre @ self.w_in.T
            grad_drive += grad_pre.sum(axis=0)
            carry = grad_state * (1.0 - self.leak) + grad_pre @ self.w_rec.T
        grad_current = float(grad_drive @ self.coupling) / 1e-3
        return grad_u.reshape(batch, self.n_inputs), grad_current
