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
The reservoir is never differentiated in training, except by the ``backprop`` baseline
(labpgt/estimators/backprop.py). The experiment builder wires task, reservoir, this model,
estimator and optimizer with the registry's tuned defaults (labpgt/experiment/registry.py).
"""
from __future__ import annotations

import numpy as np

from labpgt.models.dense import GROUPS, FlatParameters, lay_out, softmax_cross_entropy

#: pooling "concat": the head sees each token's projection in place (mean pooling lost which row is which;
#: ring, 200k: backprop 0.47 and node 0.28 (3-seed medians) -> 0.83 and 0.58 (seed 0)). train_current False:
#: the bias current stays at current_a for every method; node's +/-current kick moved every token's line at
#: once and drowned the knobs' signal (ring, seed 1, 3M: node 0.77 with the current trained, 0.82 without).
#: Measured: docs/benchmarks.md, "Transformer with a reservoir layer".
DEFAULTS = {"d_model": 16, "n_heads": 2, "d_mlp": 32, "d_after": 32, "pooling": "concat", "u_scale": 0.8,
            "current_scale_a": 1e-3, "train_current": False}


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
        self.slots, self.size = lay_out((name, group, shape) for name, group, shape, _ in layout)
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
