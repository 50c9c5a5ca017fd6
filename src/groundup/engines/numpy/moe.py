"""A sparse mixture-of-experts feed-forward layer, forward and backward by hand (the NumPy twin of
groundup.model.moe; the contract both follow is in that module's docstring).

    logits = x W_rᵀ                     router: a linear map C → E, no bias          (N, E)
    p = softmax(logits)                 each token's distribution over the E experts
    (g, idx) = top-k of p per token     the k experts it is sent to, largest first (as torch.topk)
    g ← g / Σ_k g                       normalize_gates (Mixtral); off: the raw probabilities (Switch)
    y(t) = Σ_{j<k} g[t,j] · FFN_{idx[t,j]}(x_t)     each expert a dense FFN with its own weights

Capacity (dropless = false, Switch Transformer §2.2): expert e computes at most ⌈cf · k · N / E⌉ of
the assignments (t, j) sent to it, taking them in order of choice rank j first, then token t (every
token's first choice before any second choice); a dropped assignment adds nothing (the block's
residual still carries the token).

Auxiliary losses, on every token's router output before any drop, added to the training objective:

    balance = α · E · Σᵢ fᵢ · Pᵢ         fᵢ = (top-k assignments to expert i) / N (a count: no gradient),
                                          Pᵢ = mean_t p[t, i]   (Switch, Fedus et al. 2022, eq. 4)
    z = β · mean_t (logsumexp_e logits[t, e])²        (router z-loss, ST-MoE, Zoph et al. 2022, eq. 5)

Backward, in reverse (docs/backprop.md, "Mixture of experts"):

    ∂L/∂g[t,j] = ∂L/∂y(t) · FFN_e(x_t),  and FFN_e's backward gets g[t,j] · ∂L/∂y(t)   (e = idx[t,j])
    normalised gates g = r / s, s = Σ_k r:  ∂L/∂r_j = (∂L/∂g_j − Σᵢ gᵢ ∂L/∂gᵢ) / s
    ∂L/∂p[t, idx[t,j]] += ∂L/∂r[t,j]  (the top-k selection is piecewise constant: no gradient through idx)
    balance: ∂/∂p[t,i] = α·E·fᵢ / N;   z: ∂/∂logits[t,e] = 2β · lse_t · p[t,e] / N
    softmax backward to ∂L/∂logits, then the router's Linear backward to ∂L/∂x (added to the experts')

The router runs in the model's dtype, float32 or float64 (the PyTorch engine computes it in float32
even under bf16 autocast; the NumPy engine has no lower precision).
"""

from __future__ import annotations

import math

import numpy as np

from groundup.engines.numpy.layers import Linear, softmax, softmax_backward


class TopKGating:
    """p = softmax(logits); (g, idx) = the k largest p of each row, largest first; with `normalize`,
    g ← g / Σ_k g. The experts' indices are integers: the gradient flows through the gate values only."""

    def __init__(self, k: int, normalize: bool):
        self.k, self.normalize = k, normalize

    def forward(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (N, E) → (N, k), (N, k)
        self.probs = softmax(logits)
        # largest first; a stable sort of −p keeps the lower index first on an exact tie
        self.experts = np.argsort(-self.probs, axis=-1, kind="stable")[:, : self.k]
        chosen = np.take_along_axis(self.probs, self.experts, axis=-1)  # r = p[t, idx[t, j]]
        if self.normalize:
            self.total = chosen.sum(axis=-1, keepdims=True)  # s = Σ_k r
            chosen = chosen / self.total
        self.gates = chosen
        return self.gates, self.experts

    def backward(self, dgates: np.ndarray, dprobs: np.ndarray | None = None) -> np.ndarray:
        """∂L/∂g (N, k) and, optionally, a gradient reaching p directly (the balance loss's) → ∂L/∂logits."""
        dchosen = dgates
        if self.normalize:
            # g_j = r_j / s  ⇒  ∂g_i/∂r_j = (δ_ij − g_i) / s  ⇒  ∂L/∂r_j = (∂L/∂g_j − Σᵢ gᵢ ∂L/∂gᵢ) / s
            dchosen = (dgates - np.sum(dgates * self.gates, axis=-1, keepdims=True)) / self.total
        dp = np.zeros_like(self.probs) if dprobs is None else np.array(dprobs, dtype=self.probs.dtype)
        # r[t, j] = p[t, idx[t, j]], with k distinct experts per row: scatter ∂L/∂r back into p's row
        rows = np.arange(len(dp))[:, None]
        dp[rows, self.experts] += dchosen
        return softmax_backward(dp, self.probs)  # ∂L/∂logits = p ⊙ (∂L/∂p − Σ p ⊙ ∂L/∂p)


class BalanceLoss:
    """balance = α · E · Σᵢ fᵢ · Pᵢ,  fᵢ = (number of top-k assignments to expert i) / N,  Pᵢ = mean_t p[t, i]
    (Switch Transformer, Fedus et al. 2022, eq. 4 — with k choices per token Σ f = k; this is HF
    transformers' Mixtral load_balancing_loss_func on one layer, times α). Smallest when both the
    assignments and the probabilities are spread evenly; f is a count, so only P carries a gradient."""

    def __init__(self, alpha: float, n_experts: int):
        self.alpha, self.n_experts = alpha, n_experts

    def forward(self, probs: np.ndarray, experts: np.ndarray) -> float:  # (N, E), (N, k) → scalar
        self.N = probs.shape[0]
        self.fraction = np.bincount(experts.reshape(-1), minlength=self.n_experts).astype(probs.dtype) / self.N  # f
        self.dtype = probs.dtype
        return self.alpha * self.n_experts * float(self.fraction @ probs.mean(axis=0))

    def backward(self, dloss: float = 1.0) -> np.ndarray:
        # ∂/∂p[t, i] = α · E · fᵢ · ∂Pᵢ/∂p[t, i] = α · E · fᵢ / N, the same for every token t
        row = (dloss * self.alpha * self.n_experts / self.N) * self.fraction
        return np.broadcast_to(row, (self.N, self.n_experts)).astype(self.dtype)


class RouterZLoss:
    """z = β · mean_t (logsumexp_e logits[t, e])²: keeps the router's logits small, so its softmax stays
    in a range where rounding is harmless (ST-MoE, Zoph et al. 2022, eq. 5)."""

    def __init__(self, coefficient: float):
        self.coefficient = coefficient

    def forward(self, logits: np.ndarray) -> float:
        peak = logits.max(axis=-1, keepdims=True)
        exp = np.exp(logits - peak)
        total = exp.sum(axis=-1, keepdims=True)
        self.lse = peak + np.log(total)  # logsumexp per token, (N, 1)
        self.probs = exp / total  # ∂ lse_t / ∂ logits[t, e] = softmax(logits)[t, e]
        return self.coefficient * float(np.mean(self.lse * self.lse))

    def backward(self, dloss: float = 1.0) -> np.ndarray:
        # ∂z/∂logits[t, e] = β · 2 lse_t · p[t, e] / N
        return (dloss * 2.0 * self.coefficient / len(self.lse)) * self.lse * self.probs


class Router:
    """logits = x W_rᵀ → top-k gates and experts, plus the auxiliary losses on the same logits.
    After forward: `aux_loss` (balance + z), `balance_loss`, `z_loss`, `probs`."""

    def __init__(self, weight, k: int, normalize: bool, balance_loss: float = 0.0, z_loss: float = 0.0):
        self.linear = Linear(weight)  # W_r: (E, C), no bias
        self.gating = TopKGating(k, normalize)
        self.balance = BalanceLoss(balance_loss, weight.shape[0]) if balance_loss else None
        self.z = RouterZLoss(z_loss) if z_loss else None

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (N, C) → gates (N, k), experts (N, k)
        logits = self.linear.forward(x)
        gates, experts = self.gating.forward(logits)
        self.probs = self.gating.probs
        self.balance_loss = self.balance.forward(self.probs, experts) if self.balance else 0.0
        self.z_loss = self.z.forward(logits) if self.z else 0.0
        self.aux_loss = self.balance_loss + self.z_loss
        return gates, experts

    def backward(self, dgates: np.ndarray, daux: float = 1.0) -> np.ndarray:
        """∂L/∂gates and the weight daux of the auxiliary losses in L → ∂L/∂x; adds ∂L/∂W_r."""
        dprobs = self.balance.backward(daux) if self.balance and daux else None
        dlogits = self.gating.backward(dgates, dprobs)
        if self.z and daux:
            dlogits += self.z.backward(daux)
        return self.linear.backward(dlogits)


def capacity(capacity_factor: float, k: int, n_tokens: int, n_experts: int) -> int:
    """Assignments one expert may compute per forward: ⌈capacity_factor · k · N / E⌉."""
    return math.ceil(capacity_factor * k * n_tokens / n_experts)


class SparseFeedForward:
    """The MoE layer: a Router and E expert FFNs (FeedForward or SwiGLUFeedForward, each on its own
    slice of the stacked (E, …) weights). capacity_factor None = dropless.

    `daux` is the weight of this layer's auxiliary loss in the L whose gradient backward computes
    (the model sets it: the training objective is CE + Σ aux). After forward, the routing statistics
    of the batch, as the PyTorch engine keeps them: `tokens_per_expert` (E assignment counts, before
    drops), `dropped` (assignments over capacity), `router_entropy` (mean_t H(p_t), nats),
    `expert_indices` (N, k)."""

    def __init__(self, router: Router, experts: list, capacity_factor: float | None = None):
        self.router, self.experts = router, experts
        self.capacity_factor = capacity_factor
        self.daux = 1.0

    @property
    def aux_loss(self) -> float:
        return self.router.aux_loss

    def forward(self, x: np.ndarray) -> np.ndarray:  # (B, T, C) → (B, T, C)
        self.input_shape = x.shape
        x = x.reshape(-1, x.shape[-1])  # (N, C): routing is per token
        N, E = x.shape[0], len(self.experts)
        gates, experts = self.router.forward(x)
        k = experts.shape[1]
        # Assignment a = j·N + t is token t's j-th choice: numbered in the priority order of capacity.
        expert_of = experts.T.reshape(-1)  # (k·N,)
        by_expert = np.argsort(expert_of, kind="stable")  # grouped by expert, priority order kept inside each group
        counts = np.bincount(expert_of, minlength=E)
        starts = np.cumsum(counts) - counts
        kept = counts if self.capacity_factor is None else np.minimum(counts, capacity(self.capacity_factor, k, N, E))
        self.gates, self.routes = gates, []
        y = np.zeros_like(x)
        for e, expert in enumerate(self.experts):
            assignments = by_expert[starts[e]: starts[e] + kept[e]]  # the first `capacity` sent to e
            tokens, choices = assignments % N, assignments // N
            out = expert.forward(x[tokens])  # FFN_e on its tokens only (an expert that got none runs on 0 rows)
            self.routes.append((tokens, choices, out))
            y[tokens] += gates[tokens, choices, None] * out  # y(t) += g[t, j] · FFN_e(x_t); each t at most once per e
        probs = self.router.probs
        self.tokens_per_expert, self.dropped = counts, int(counts.sum() - kept.sum())
        self.router_entropy = float(-np.mean(np.sum(probs * np.log(np.maximum(probs, np.finfo(probs.dtype).tiny)), axis=-1)))
        self.expert_indices = experts
        return y.reshape(self.input_shape)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dy = dy.reshape(-1, dy.shape[-1])  # (N, C)
        dx = np.zeros_like(dy)
        dgates = np.zeros_like(self.gates)  # a dropped assignment has no effect on y: its gate gets 0
        for expert, (tokens, choices, out) in zip(self.experts, self.routes):
            d = dy[tokens]
            dgates[tokens, choices] = np.sum(d * out, axis=-1)  # y(t) = Σ g · FFN_e(x_t) ⇒ ∂L/∂g[t,j] = ∂L/∂y(t) · FFN_e(x_t)
            dx[tokens] += expert.backward(self.gates[tokens, choices, None] * d)  # ∂L/∂FFN_e(x_t) = g[t,j] · ∂L/∂y(t)
        dx += self.router.backward(dgates, self.daux)  # x also feeds the router
        return dx.reshape(self.input_shape)
