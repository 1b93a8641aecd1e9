"""A small numpy transformer with one reservoir layer inside, trained through a black box.

The architecture of the PGT paper's second demonstration (arXiv 2506.04523), built small::

    x [B, T*F] -> tokens [B, T, F]
    E  = tokens @ W_embed + b_embed + P                     token + learned positional embedding, [B, T, D]
    h1 = E + MultiHeadSelfAttention(E)                       residual
    h2 = h1 + MLP(h1)                                        residual, MLP D -> d_mlp -> D
    u  = u_scale * tanh(h2 @ W_knob + b_knob)                per token, [B, T, k] -> [B, T*k]   ("before")
    features = reservoir(u, current_a)                       measured, [B, T*M]                ("physical")
    p  = tanh(features_t @ W_proj + b_proj)                  per token, [B, T, d_after]         ("readout")
    logits = concat_t(p) @ W_head + b_head                   classes (softmax CE) or 1 (squared error)

The head sees every token's projection in its place (``pooling="concat"``, W_head is
[T*d_after, outputs]), so which row of a digit looked like what survives the readout;
``pooling="mean"`` averages the tokens' projections instead (W_head [d_after, outputs]),
the earlier layout, which keeps only what the transformer wrote into the knobs about position.

The tokens are the reservoir's virtual nodes: a sample with T tokens and k knobs per token is
one u row of T*k knobs and T measurements. Parameter groups follow :mod:`labpgt.models.dense`
(``before``, ``physical`` = the bias current, ``readout``), and :class:`TransformerModel`
exposes exactly the interface :class:`~labpgt.models.dense.HybridModel` exposes, so the estimators
``pgt``, ``spsa``, ``node``, ``oracle`` and the :class:`~labpgt.training.trainer.Trainer` run unchanged.

Every layer has an exact manual backward pass (tests check each against finite differences).
The reservoir is never differentiated in training, except by the ``backprop`` estimator
defined here, the baseline: it backpropagates through the reservoir using the reservoir's own
analytic ``vjp`` (the echo-state reservoir) or, for the simulated ring, central differences of
its noiseless model (like ``oracle``).

``make_transformer_trainer(task, estimator, reservoir, ...)`` wires task, reservoir, model,
estimator and optimizer with tuned defaults (``TRANSFORMER_DEFAULTS``).
"""
from __future__ import annotations

import numpy as np

from labpgt.contracts import Perturbation
from labpgt.models.dense import GROUPS, FlatParameters, ParamSlot, softmax_cross_entropy

TASKS = ("digits-seq", "narma10")
RESERVOIRS = ("ring", "esn")
ESTIMATORS = ("backprop", "node", "node-token", "pgt", "spsa", "oracle")

FLAG_SIMULATED = 16  # the run file's flags bit for a simulated measurement (labpgt.reservoirs.station)


def _act(name: str):
    """(forward, derivative from (pre-activation, output)) of a pointwise activation."""
    if name == "tanh":
        return np.tanh, lambda pre, out: 1.0 - out**2
    if name == "relu":
        return (lambda z: np.maximum(z, 0.0)), (lambda pre, out: (pre > 0).astype(np.float64))
    raise ValueError(f"unknown activation {name!r}; allowed: tanh, relu")


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


class TransformerModel(FlatParameters):
    """Transformer encoder block -> reservoir knobs -> measured features -> per-token readout -> head.

    n_tokens T, token_features F: the input layout (x is [B, T*F], token-major);
    knobs_per_token k, features_per_token M: the reservoir's per-token inputs and outputs
    (reservoir.n_inputs = T*k, reservoir.n_features = T*M); n_outputs: classes, or 1 for
    regression; task: "classification" (softmax cross-entropy, accuracy) or "regression"
    (squared error, "accuracy" = 1 - MSE / target_variance); d_model, n_heads, d_mlp: the
    transformer block; d_after: width of the per-token projection after the reservoir;
    pooling: how the head combines the tokens' projections ("concat" or "mean");
    u_scale, current_a, current_scale_a, train_current: as in HybridModel.
    """

    def __init__(
        self,
        n_tokens: int,
        token_features: int,
        knobs_per_token: int,
        features_per_token: int,
        n_outputs: int,
        *,
        task: str = "classification",
        d_model: int = 16,
        n_heads: int = 2,
        d_mlp: int = 32,
        d_after: int = 32,
        pooling: str = "concat",
        activation: str = "tanh",
        u_scale: float = 0.9,
        current_a: float = 1.8,
        current_scale_a: float = 1e-3,
        train_current: bool = True,
        target_variance: float = 1.0,
        seed: int = 0,
    ):
        if task not in ("classification", "regression"):
            raise ValueError(f"unknown task kind {task!r}; allowed: classification, regression")
        if task == "regression" and n_outputs != 1:
            raise ValueError(f"regression has one output, got n_outputs={n_outputs}")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if not 0.0 < u_scale <= 1.0:
            raise ValueError(f"u_scale must be in (0, 1], got {u_scale}")
        if pooling not in ("concat", "mean"):
            raise ValueError(f"unknown pooling {pooling!r}; allowed: concat, mean")
        self.n_tokens, self.token_features = int(n_tokens), int(token_features)
        self.knobs_per_token, self.features_per_token = int(knobs_per_token), int(features_per_token)
        self.n_inputs = self.n_tokens * self.token_features
        self.n_knobs = self.n_tokens * self.knobs_per_token
        self.n_features = self.n_tokens * self.features_per_token
        self.n_outputs = int(n_outputs)
        self.n_classes = self.n_outputs if task == "classification" else 0
        self.task = task
        self.d_model, self.n_heads, self.d_mlp, self.d_after = int(d_model), int(n_heads), int(d_mlp), int(d_after)
        self.d_head = self.d_model // self.n_heads
        self.pooling = pooling
        head_in = self.n_tokens * self.d_after if pooling == "concat" else self.d_after
        self.activation = activation
        self._act, self._act_grad = _act(activation)
        self.u_scale = float(u_scale)
        self.current_scale_a = float(current_scale_a)
        self.train_current = bool(train_current)
        self.target_variance = float(target_variance)
        self.config = dict(
            model="transformer", n_tokens=n_tokens, token_features=token_features, knobs_per_token=knobs_per_token,
            features_per_token=features_per_token, n_outputs=n_outputs, task=task, d_model=d_model,
            n_heads=n_heads, d_mlp=d_mlp, d_after=d_after, pooling=pooling, activation=activation,
            u_scale=u_scale, current_a=current_a, current_scale_a=current_scale_a, train_current=train_current,
            target_variance=target_variance, seed=seed,
        )

        T, F, D, k, M = self.n_tokens, self.token_features, self.d_model, self.knobs_per_token, self.features_per_token
        # (name, group, shape, init std; None = zeros)
        layout = [
            ("before.embed.weight", "before", (F, D), 1.0 / np.sqrt(F)),
            ("before.embed.bias", "before", (D,), None),
            ("before.position", "before", (T, D), 0.5),
            ("before.attn.query.weight", "before", (D, D), 1.0 / np.sqrt(D)),
            ("before.attn.query.bias", "before", (D,), None),
            ("before.attn.key.weight", "before", (D, D), 1.0 / np.sqrt(D)),
            ("before.attn.key.bias", "before", (D,), None),
            ("before.attn.value.weight", "before", (D, D), 1.0 / np.sqrt(D)),
            ("before.attn.value.bias", "before", (D,), None),
            ("before.attn.out.weight", "before", (D, D), 1.0 / np.sqrt(D)),
            ("before.attn.out.bias", "before", (D,), None),
            ("before.mlp.in.weight", "before", (D, self.d_mlp), 1.0 / np.sqrt(D)),
            ("before.mlp.in.bias", "before", (self.d_mlp,), None),
            ("before.mlp.out.weight", "before", (self.d_mlp, D), 0.5 / np.sqrt(self.d_mlp)),
            ("before.mlp.out.bias", "before", (D,), None),
            ("before.knob.weight", "before", (D, k), 1.0 / np.sqrt(D)),
            ("before.knob.bias", "before", (k,), None),
            ("physical.current_a", "physical", (1,), None),
            ("readout.proj.weight", "readout", (M, self.d_after), 1.0 / np.sqrt(M)),
            ("readout.proj.bias", "readout", (self.d_after,), None),
            ("readout.head.weight", "readout", (head_in, self.n_outputs), 1.0 / np.sqrt(head_in)),
            ("readout.head.bias", "readout", (self.n_outputs,), None),
        ]
        self.slots: dict[str, ParamSlot] = {}
        offset = 0
        for name, group, shape, _ in layout:
            size = int(np.prod(shape))
            self.slots[name] = ParamSlot(name, group, tuple(shape), slice(offset, offset + size))
            offset += size
        self.size = offset
        rng = np.random.default_rng(seed)
        self._params = np.zeros(self.size)
        for name, _, shape, std in layout:
            if std is not None:
                self._params[self.slots[name].slice] = rng.normal(0.0, std, shape).ravel()
        self._params[self.slots["physical.current_a"].slice] = current_a

    def _w(self, p: np.ndarray, name: str) -> np.ndarray:
        slot = self.slots[name]
        return p[slot.slice].reshape(slot.shape)

    def _add(self, grad: np.ndarray, name: str, value: np.ndarray) -> None:
        grad[self.slots[name].slice] += value.ravel()

    # ---------------------------------------------------------------- attention helpers
    def _split_heads(self, a: np.ndarray) -> np.ndarray:  # [B, T, D] -> [B, H, T, d_head]
        b, t, _ = a.shape
        return a.reshape(b, t, self.n_heads, self.d_head).transpose(0, 2, 1, 3)

    def _merge_heads(self, a: np.ndarray) -> np.ndarray:  # [B, H, T, d_head] -> [B, T, D]
        b, _, t, _ = a.shape
        return a.transpose(0, 2, 1, 3).reshape(b, t, self.d_model)

    # ---------------------------------------------------------------- before the reservoir
    def encode(self, x: np.ndarray, params: np.ndarray | None = None):
        """Transformer block and knob projection: x [B, T*F] -> (u [B, T*k] in [-u_scale, u_scale], cache)."""
        p = self._params if params is None else params
        w = lambda name: self._w(p, name)  # noqa: E731
        x = np.asarray(x, dtype=np.float64)
        tokens = x.reshape(len(x), self.n_tokens, self.token_features)
        embedded = tokens @ w("before.embed.weight") + w("before.embed.bias") + w("before.position")
        q = self._split_heads(embedded @ w("before.attn.query.weight") + w("before.attn.query.bias"))
        k = self._split_heads(embedded @ w("before.attn.key.weight") + w("before.attn.key.bias"))
        v = self._split_heads(embedded @ w("before.attn.value.weight") + w("before.attn.value.bias"))
        attention = _softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(self.d_head))  # [B, H, T, T]
        mixed = self._merge_heads(attention @ v)
        h1 = embedded + mixed @ w("before.attn.out.weight") + w("before.attn.out.bias")
        mlp_pre = h1 @ w("before.mlp.in.weight") + w("before.mlp.in.bias")
        mlp_act = self._act(mlp_pre)
        h2 = h1 + mlp_act @ w("before.mlp.out.weight") + w("before.mlp.out.bias")
        t = np.tanh(h2 @ w("before.knob.weight") + w("before.knob.bias"))
        u = (self.u_scale * t).reshape(len(x), self.n_knobs)
        cache = dict(tokens=tokens, embedded=embedded, q=q, k=k, v=v, attention=attention, mixed=mixed, h1=h1,
                     mlp_pre=mlp_pre, mlp_act=mlp_act, h2=h2, t=t)
        return u, cache

    def backward_encode(self, cache, grad_u: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        """Backprop dL/du [B, T*k] through the transformer block; returns a flat gradient (zeros elsewhere)."""
        p = self._params if params is None else params
        w = lambda name: self._w(p, name)  # noqa: E731
        c = cache
        grad = np.zeros(self.size)
        batch = len(c["tokens"])
        # knob projection: u = u_scale * tanh(h2 W + b)
        g_z = np.asarray(grad_u).reshape(batch, self.n_tokens, self.knobs_per_token) * self.u_scale * (1.0 - c["t"] ** 2)
        self._add(grad, "before.knob.weight", np.einsum("btd,btk->dk", c["h2"], g_z))
        self._add(grad, "before.knob.bias", g_z.sum(axis=(0, 1)))
        g_h2 = g_z @ w("before.knob.weight").T
        # MLP with residual: h2 = h1 + act(h1 W_in + b_in) W_out + b_out
        self._add(grad, "before.mlp.out.weight", np.einsum("btm,btd->md", c["mlp_act"], g_h2))
        self._add(grad, "before.mlp.out.bias", g_h2.sum(axis=(0, 1)))
        g_pre = (g_h2 @ w("before.mlp.out.weight").T) * self._act_grad(c["mlp_pre"], c["mlp_act"])
        self._add(grad, "before.mlp.in.weight", np.einsum("btd,btm->dm", c["h1"], g_pre))
        self._add(grad, "before.mlp.in.bias", g_pre.sum(axis=(0, 1)))
        g_h1 = g_h2 + g_pre @ w("before.mlp.in.weight").T
        # attention output projection with residual: h1 = E + mixed W_out + b_out
        self._add(grad, "before.attn.out.weight", np.einsum("bti,btj->ij", c["mixed"], g_h1))
        self._add(grad, "before.attn.out.bias", g_h1.sum(axis=(0, 1)))
        g_mixed = self._split_heads(g_h1 @ w("before.attn.out.weight").T)  # [B, H, T, d_head]
        # mixed = A V, A = softmax(Q K^T / sqrt(d_head)) along the key axis
        a = c["attention"]
        g_a = g_mixed @ c["v"].transpose(0, 1, 3, 2)
        g_v = a.transpose(0, 1, 3, 2) @ g_mixed
        g_scores = a * (g_a - np.sum(g_a * a, axis=-1, keepdims=True)) / np.sqrt(self.d_head)
        g_q = g_scores @ c["k"]
        g_k = g_scores.transpose(0, 1, 3, 2) @ c["q"]
        g_embedded = g_h1.copy()  # the residual path
        for name, g_heads in (("query", g_q), ("key", g_k), ("value", g_v)):
            g_proj = self._merge_heads(g_heads)
            self._add(grad, f"before.attn.{name}.weight", np.einsum("bti,btj->ij", c["embedded"], g_proj))
            self._add(grad, f"before.attn.{name}.bias", g_proj.sum(axis=(0, 1)))
            g_embedded += g_proj @ w(f"before.attn.{name}.weight").T
        # embedding: E = tokens W + b + P
        self._add(grad, "before.embed.weight", np.einsum("btf,btd->fd", c["tokens"], g_embedded))
        self._add(grad, "before.embed.bias", g_embedded.sum(axis=(0, 1)))
        self._add(grad, "before.position", g_embedded.sum(axis=0))
        return grad

    # ---------------------------------------------------------------- after the reservoir
    def _readout_forward(self, p, features):
        w = lambda name: self._w(p, name)  # noqa: E731
        f = np.asarray(features, dtype=np.float64).reshape(len(features), self.n_tokens, self.features_per_token)
        projected = np.tanh(f @ w("readout.proj.weight") + w("readout.proj.bias"))
        if self.pooling == "concat":
            pooled = projected.reshape(len(f), self.n_tokens * self.d_after)
        else:
            pooled = projected.mean(axis=1)
        return pooled @ w("readout.head.weight") + w("readout.head.bias"), (f, projected, pooled)

    def logits(self, features: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        """Outputs of the head [B, n_outputs] (class logits, or the prediction for regression)."""
        p = self._params if params is None else params
        return self._readout_forward(p, features)[0]

    def _loss(self, outputs: np.ndarray, labels: np.ndarray):
        """Per-sample loss and its gradient w.r.t. the outputs (per sample, not averaged)."""
        if self.task == "classification":
            return softmax_cross_entropy(outputs, np.asarray(labels))
        residual = outputs[:, 0] - np.asarray(labels, dtype=np.float64)
        return residual**2, 2.0 * residual[:, None]

    def _accuracy(self, outputs: np.ndarray, labels: np.ndarray, per_sample: np.ndarray) -> float:
        if self.task == "classification":
            return float(np.mean(outputs.argmax(axis=1) == labels))
        return float(1.0 - per_sample.mean() / self.target_variance)  # 1 - NMSE

    def per_sample_loss(self, features: np.ndarray, labels: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        """Cross-entropy (nats) or squared error of each sample, from measured features."""
        return self._loss(self.logits(features, params), labels)[0]

    def loss_and_accuracy(self, features: np.ndarray, labels: np.ndarray, params: np.ndarray | None = None):
        """Mean loss and accuracy (fraction correct; 1 - NMSE for regression) from measured features."""
        outputs = self.logits(features, params)
        per_sample, _ = self._loss(outputs, labels)
        return float(per_sample.mean()), self._accuracy(outputs, labels, per_sample)

    def readout_gradient(self, features: np.ndarray, labels: np.ndarray, params: np.ndarray | None = None):
        """Exact gradient of the mean loss w.r.t. the readout (flat, zeros elsewhere) and w.r.t. the features.

        Returns (grad_flat, grad_features [B, T*M], per_sample_loss, accuracy).
        """
        p = self._params if params is None else params
        outputs, (f, projected, pooled) = self._readout_forward(p, features)
        per_sample, g_out = self._loss(outputs, labels)
        g_out = g_out / len(per_sample)
        grad = np.zeros(self.size)
        self._add(grad, "readout.head.weight", pooled.T @ g_out)
        self._add(grad, "readout.head.bias", g_out.sum(axis=0))
        g_pooled = g_out @ self._w(p, "readout.head.weight").T
        if self.pooling == "concat":
            g_projected = g_pooled.reshape(projected.shape)
        else:
            g_projected = np.broadcast_to(g_pooled[:, None, :] / self.n_tokens, projected.shape)
        g_pre = g_projected * (1.0 - projected**2)  # tanh
        self._add(grad, "readout.proj.weight", np.einsum("btm,bta->ma", f, g_pre))
        self._add(grad, "readout.proj.bias", g_pre.sum(axis=(0, 1)))
        g_features = (g_pre @ self._w(p, "readout.proj.weight").T).reshape(len(f), self.n_features)
        return grad, g_features, per_sample, self._accuracy(outputs, labels, per_sample)

    def describe(self) -> str:
        groups = {g: int(self.group_mask(g).sum()) for g in GROUPS}
        return (f"TransformerModel({self.size} parameters: {groups}; {self.n_tokens} tokens x {self.token_features} "
                f"features, d_model {self.d_model}, {self.n_heads} heads, {self.knobs_per_token} knobs and "
                f"{self.features_per_token} reservoir features per token, {self.task})")


# --------------------------------------------------------------------------- backprop baseline
def reservoir_vjp(reservoir, u: np.ndarray, current_a: float, grad_features: np.ndarray, *,
                  fd_step: float = 0.05, current_fd_step_a: float = 1e-4):
    """(dL/du [B, n_inputs], dL/dcurrent_a) for dL/dfeatures = grad_features, through the NOISELESS reservoir.

    Uses ``reservoir.vjp`` when the reservoir has one (exact); otherwise central differences of
    ``reservoir.noiseless`` (costs no measurement). Reservoirs whose virtual nodes are
    independent measurements (the ring, the toy) are differenced one knob index at a time across
    all nodes at once: 2k noiseless batches instead of 2Tk.
    """
    if hasattr(reservoir, "vjp"):
        return reservoir.vjp(u, current_a, grad_features)
    noiseless = getattr(reservoir, "noiseless", None)
    if noiseless is None:
        raise TypeError(
            f"backprop needs a differentiable model of the reservoir (vjp or noiseless); {type(reservoir).__name__} "
            f"has neither (a real station cannot be backpropagated through)"
        )
    from labpgt.reservoirs.direct import DirectRingReservoir, ToyReservoir

    batch = len(u)
    grad_u = np.empty_like(u)
    if isinstance(reservoir, (DirectRingReservoir, ToyReservoir)):
        nodes = reservoir.n_nodes
        k, m = reservoir.n_inputs // nodes, reservoir.n_features // nodes
        g = grad_features.reshape(batch, nodes, m)
        for j in range(k):
            up, down = u.copy(), u.copy()
            up[:, j::k] += fd_step
            down[:, j::k] -= fd_step
            # node t's features depend on node t's knobs only, so one difference gives every node's column j
            jac = ((noiseless(up, current_a) - noiseless(down, current_a)) / (2 * fd_step)).reshape(batch, nodes, m)
            grad_u[:, j::k] = np.sum(g * jac, axis=2)
    else:
        for j in range(u.shape[1]):
            up, down = u.copy(), u.copy()
            up[:, j] += fd_step
            down[:, j] -= fd_step
            grad_u[:, j] = np.sum(grad_features * (noiseless(up, current_a) - noiseless(down, current_a)), axis=1) / (
                2 * fd_step)
    jac_i = (noiseless(u, current_a + current_fd_step_a) - noiseless(u, current_a - current_fd_step_a)) / (
        2 * current_fd_step_a)
    return grad_u, float(np.sum(grad_features * jac_i))


class Backprop:
    """Full backpropagation, the baseline: the reservoir made differentiable for this estimator ONLY.

    One clean measured forward pass (B*T measurements per step); the readout's gradient at the
    measured features is exact; the gradient crosses the reservoir through its analytic VJP
    (echo-state) or central differences of its noiseless model (ring; fd_step in knob units,
    current_fd_step_a in A, None = 0.1 * model.current_scale_a), then backpropagates through
    the transformer. Works for any model with the HybridModel interface.
    """

    name = "backprop"
    supplies_step = False

    def __init__(self, fd_step: float = 0.05, current_fd_step_a: float | None = None):
        if fd_step <= 0:
            raise ValueError("fd_step must be > 0")
        self.fd_step, self.current_fd_step_a = float(fd_step), current_fd_step_a

    def options(self) -> dict:
        return dict(fd_step=self.fd_step, current_fd_step_a=self.current_fd_step_a)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def estimate(self, model, reservoir, x, y, sample_index, step, rng):
        from labpgt.estimators.library import Estimate

        if not hasattr(reservoir, "vjp") and self.fd_step > 1.0 - model.u_scale + 1e-12:
            raise ValueError(f"backprop fd_step {self.fd_step} must be <= 1 - u_scale = {1.0 - model.u_scale:.3g}")
        start = reservoir.measurements
        u, cache = model.encode(x)
        current = model.current_a()
        features = reservoir.measure(u, current_a=current, kind="train", step=step, sample_index=sample_index,
                                     perturbation=Perturbation())
        g_read, g_features, per_sample, accuracy = model.readout_gradient(features, y)
        current_step = self.current_fd_step_a if self.current_fd_step_a is not None else 0.1 * model.current_scale_a
        grad_u, grad_current = reservoir_vjp(reservoir, u, current, g_features, fd_step=self.fd_step,
                                             current_fd_step_a=current_step)
        grad = model.backward_encode(cache, grad_u) + g_read
        if model.train_current:
            grad[model.slots["physical.current_a"].slice] = grad_current
        return Estimate(grad, float(per_sample.mean()), accuracy, reservoir.measurements - start)


class TokenNodePerturbation:
    """Node perturbation with the credit given per token, through the measured change of the features.

    The same antithetic +/-epsilon Rademacher kicks of the knobs as ``node`` (2 evaluations per
    sample and token), but the digital readout is backpropagated exactly down to the reservoir's
    outputs: with g_t = dL/dfeatures of token t at the mean of the two passes and
    df_t = f_t(u + eps d) - f_t(u - eps d) measured, token t's knobs get (g_t . df_t / 2 eps) d_t.
    ``node`` instead weights every knob of a sample by the change of the sample's loss, so each
    knob's estimate carries the other tokens' kicks as noise. Tokens are credited separately
    only on reservoirs whose virtual nodes are independent measurements (the ring, the toy);
    elsewhere (echo-state) the whole sample's g . df weights the whole sample's kick. The bias
    current is not perturbed; the model must not train it (train_current False).
    """

    name = "node-token"
    supplies_step = False

    def __init__(self, epsilon: float = 0.1, n_directions: int = 1):
        if epsilon <= 0 or n_directions < 1:
            raise ValueError("epsilon must be > 0 and n_directions >= 1")
        self.epsilon, self.n_directions = float(epsilon), int(n_directions)

    def options(self) -> dict:
        return dict(epsilon=self.epsilon, n_directions=self.n_directions)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def estimate(self, model, reservoir, x, y, sample_index, step, rng):
        from labpgt.estimators.library import Estimate, _rademacher

        if self.epsilon > 1.0 - model.u_scale + 1e-12:
            raise ValueError(f"node-token epsilon {self.epsilon} must be <= 1 - u_scale = {1.0 - model.u_scale:.3g}")
        if model.train_current:
            raise ValueError("node-token does not perturb the bias current: use a model with train_current=False")
        start = reservoir.measurements
        batch = len(y)
        u, cache = model.encode(x)
        current = model.current_a()
        # per-token credit only where a token's kick moves only its own features
        nodes = reservoir.n_nodes if getattr(reservoir, "independent_nodes", False) else 1
        kw = dict(current_a=current, kind="train", step=step, sample_index=sample_index)
        kicks, changes, clean = [], [], np.zeros((batch, reservoir.n_features))
        for j in range(self.n_directions):
            delta = _rademacher(rng, u.shape)
            f_plus = reservoir.measure(u + self.epsilon * delta, perturbation=Perturbation(j, +1), **kw)
            f_minus = reservoir.measure(u - self.epsilon * delta, perturbation=Perturbation(j, -1), **kw)
            kicks.append(delta)
            changes.append(f_plus - f_minus)
            clean += 0.5 * (f_plus + f_minus)
        clean /= self.n_directions
        g_read, g_features, per_sample, accuracy = model.readout_gradient(clean, y)  # dL(mean)/dfeatures
        grad_u = np.zeros_like(u)
        for delta, change in zip(kicks, changes):
            # per node: the directional derivative of the loss along that node's kick, from its measured change
            slope = np.sum((g_features * change).reshape(batch, nodes, -1), axis=2) / (2 * self.epsilon)
            grad_u += (slope[:, :, None] * delta.reshape(batch, nodes, -1)).reshape(u.shape)
        grad_u /= self.n_directions
        grad = model.backward_encode(cache, grad_u) + g_read
        return Estimate(grad, float(per_sample.mean()), accuracy, reservoir.measurements - start)


def make_estimator(name: str, **options):
    """Any estimator of labpgt.estimators.library (pgt, spsa, node, oracle), ``backprop`` or ``node-token``."""
    if name == "backprop":
        return Backprop(**options)
    if name == "node-token":
        return TokenNodePerturbation(**options)
    from labpgt.estimators.library import make_estimator as make_library_estimator

    return make_library_estimator(name, **options)


# --------------------------------------------------------------------------- recording
class SimulatedFlagRecorder:
    """Passes everything to ``recorder``, marking each measurement simulated (flags bit 16)."""

    def __init__(self, recorder):
        self.recorder = recorder
        if hasattr(recorder, "measurements_batch"):  # keep the run file's fast path visible
            self.measurements_batch = self._measurements_batch

    def measurement(self, record: dict) -> None:
        self.recorder.measurement({**record, "flags": int(record.get("flags", 0)) | FLAG_SIMULATED})

    def _measurements_batch(self, batch: dict) -> None:
        flags = np.asarray(batch.get("flags", 0)) | FLAG_SIMULATED
        self.recorder.measurements_batch({**batch, "flags": flags})

    def step(self, record: dict) -> None:
        self.recorder.step(record)

    def evaluation(self, record: dict) -> None:
        self.recorder.evaluation(record)

    def checkpoint(self, state: dict) -> None:
        self.recorder.checkpoint(state)


# --------------------------------------------------------------------------- optimizer piece
class ScaleGroups:
    """Multiply the update of each parameter by a fixed factor (a per-group learning rate).

    Node perturbation's gradient for the layers before the reservoir is far noisier than the
    readout's exact gradient; a smaller step there (``before_lr_ratio``) keeps the noise from
    random-walking the transformer while the readout learns at full speed. Stateless.
    """

    def __init__(self, factors: np.ndarray):
        self.factors = np.asarray(factors, dtype=np.float64)

    def init_state(self, params):
        return {}

    def transform(self, grad, state, params):
        return grad * self.factors, {}

    def update(self, grad, state, params):
        step, state = self.transform(grad, state, params)
        return params + step, state

    def config(self):
        return {"name": "scale_groups", "distinct_factors": sorted(set(self.factors.tolist()))}


# --------------------------------------------------------------------------- tuned defaults
#: per estimator: options, optimizer, learning rate, decay, batch size. Tuned on digits-seq
#: through both reservoirs (scripts/bench_transformer.py measures them).
TRANSFORMER_DEFAULTS = {
    "backprop": {"options": {"fd_step": 0.05}, "optimizer": "adam", "lr": 0.01, "decay_steps": 500, "batch_size": 64},
    "oracle": {"options": {"fd_step": 0.05}, "optimizer": "adam", "lr": 0.01, "decay_steps": 500, "batch_size": 64},
    # node: knob kick eps = 0.1 (on the ring 0.2 and 0.15 plateau lower, 0.05 learns slower: the ring's
    # response is too nonlinear over +/-0.2); the transformer's noisy gradient gets a tenth of the
    # readout's step (0.03 and 0.3 are worse on the ring), so it drifts less while the readout learns
    "node": {"options": {"epsilon": 0.1}, "optimizer": "adam", "lr": 0.01, "decay_steps": 2000, "batch_size": 64,
             "before_lr_ratio": 0.1},
    # node-token: node's kicks and optimizer; its less noisy transformer gradient takes 0.3 of the
    # readout's step (ring, 1M: 0.1 learns slower, 1.0 diverges); two kick directions per step (4
    # evaluations per sample and token) plateau higher on the ring than one at the same budget
    # (4M, 3 seeds: 0.897 vs 0.886 median)
    "node-token": {"options": {"epsilon": 0.1, "n_directions": 2}, "optimizer": "adam", "lr": 0.01, "decay_steps": 2000, "batch_size": 64,
                   "before_lr_ratio": 0.3},
    "pgt": {"options": {"epsilon": 0.02, "n_directions": 1}, "optimizer": "adam", "lr": 0.003,
            "decay_steps": 2000, "batch_size": 64},
    # SPSA brings its own gain sequence: SGD(lr=1), no decay
    "spsa": {"options": {}, "optimizer": "sgd", "lr": 1.0, "decay_steps": None, "batch_size": 64},
}
#: pooling "concat": the head sees each token's projection in place (mean pooling lost which row is which;
#: ring, 200k: backprop 0.47 and node 0.28 (3-seed medians) -> 0.83 and 0.58 (seed 0)). train_current False:
#: the bias current stays at current_a for every method; node's +/-current kick moved every token's line at
#: once and drowned the knobs' signal (ring, seed 1, 3M: node 0.77 with the current trained, 0.82 without).
#: Measured: docs/benchmarks.md, "Transformer with a reservoir layer".
MODEL_DEFAULTS = {"d_model": 16, "n_heads": 2, "d_mlp": 32, "d_after": 32, "pooling": "concat", "u_scale": 0.8,
                  "current_scale_a": 1e-3, "train_current": False}
#: the reservoirs' per-token layout: ring = 2 knobs (detuning, power) -> 10 band features
RING_DEFAULTS = {"n_bands": 10, "drift": False}
ESN_DEFAULTS = {"n_units": 10, "leak": 0.5, "spectral_radius": 0.9, "noise_std": 0.05}


def make_reservoir(kind: str, n_tokens: int, *, seed: int = 0, noise_scale: float = 1.0, recorder=None,
                   current_a: float = 1.8, **options):
    """``ring``: DirectRingReservoir with n_nodes = n_tokens (measurements recorded, flagged simulated);
    ``esn``: EchoStateReservoir over the tokens (noise_std scaled by noise_scale; not recorded)."""
    if kind == "ring":
        from sim.ring import RingParams

        from labpgt.reservoirs.direct import DirectRingReservoir

        o = {**RING_DEFAULTS, **options}
        unknown = set(o) - {"n_bands", "drift", "encoding", "readout"}
        if unknown:
            raise ValueError(f"unknown ring option(s) {sorted(unknown)}; allowed: n_bands, drift, encoding, readout")
        readout = {"n_bands": o["n_bands"], **(o.get("readout") or {})}
        return DirectRingReservoir(
            RingParams(noise_scale=noise_scale, drift_enabled=o["drift"]), seed=seed, n_nodes=n_tokens,
            encoding=o.get("encoding"), readout=readout, current_a=current_a,
            recorder=SimulatedFlagRecorder(recorder) if recorder is not None else None,
        )
    if kind == "esn":
        from labpgt.reservoirs.esn import EchoStateReservoir

        o = {**ESN_DEFAULTS, **options}
        o["noise_std"] = o["noise_std"] * noise_scale
        return EchoStateReservoir(n_tokens, seed=seed, current_ref_a=current_a, **o)
    raise ValueError(f"unknown reservoir {kind!r}; allowed: {', '.join(RESERVOIRS)}")


def make_transformer_trainer(task: str, estimator: str, reservoir: str, *, seed: int = 0, budget: int = 200_000,
                             recorder=None, progress=None, noise_scale: float = 1.0, batch_size: int | None = None,
                             lr: float | None = None, estimator_options: dict | None = None,
                             model_options: dict | None = None, reservoir_options: dict | None = None,
                             current_a: float = 1.8, **trainer_options):
    """A Trainer for the transformer with a reservoir layer, wired with the tuned defaults above.

    task: one of TASKS; estimator: one of ESTIMATORS; reservoir: one of RESERVOIRS. budget in
    training measurements (one per sample per token). The ring's measurements go to
    ``recorder.measurement`` (or its ``measurements_batch``) flagged simulated; steps,
    evaluations and checkpoints go to the recorder through the Trainer. Remaining keyword
    options go to the Trainer (eval_every, checkpoint_every, eval_batch_size, decay_steps).
    """
    from labpgt.training.optim import Chain, InverseTimeDecay, make_optimizer
    from labpgt.data.tasks import load_task
    from labpgt.training.trainer import Trainer

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
    if estimator not in TRANSFORMER_DEFAULTS:
        raise ValueError(f"unknown estimator {estimator!r}; allowed: {', '.join(TRANSFORMER_DEFAULTS)}")
    if reservoir not in RESERVOIRS:
        raise ValueError(f"unknown reservoir {reservoir!r}; allowed: {', '.join(RESERVOIRS)}")
    dataset = load_task(task)
    res = make_reservoir(reservoir, dataset.n_tokens, seed=seed, noise_scale=noise_scale, recorder=recorder,
                         current_a=current_a, **(reservoir_options or {}))
    d = TRANSFORMER_DEFAULTS[estimator]
    est = make_estimator(estimator, **{**d["options"], **(estimator_options or {})})
    model = TransformerModel(
        dataset.n_tokens, dataset.token_features, res.n_inputs // dataset.n_tokens,
        res.n_features // dataset.n_tokens, dataset.n_outputs, task=dataset.kind,
        target_variance=dataset.target_variance, current_a=current_a, seed=seed,
        **{**MODEL_DEFAULTS, **(model_options or {})},
    )
    optimizer = make_optimizer(d["optimizer"], lr=d["lr"] if lr is None else lr)
    decay_steps = trainer_options.pop("decay_steps", d["decay_steps"])
    before_lr_ratio = trainer_options.pop("before_lr_ratio", d.get("before_lr_ratio", 1.0))
    parts = [optimizer]
    if decay_steps:
        parts.append(InverseTimeDecay(decay_steps))
    if before_lr_ratio != 1.0:
        if est.supplies_step:
            raise ValueError(f"{estimator} supplies its own step; before_lr_ratio does not apply")
        parts.append(ScaleGroups(np.where(model.group_mask("before"), before_lr_ratio, 1.0)))
    if len(parts) > 1:
        optimizer = Chain(*parts)
    return Trainer(model, res, est, dataset, optimizer, seed=seed, budget=budget,
                   batch_size=batch_size or d["batch_size"], recorder=recorder, progress=progress,
                   **trainer_options)
