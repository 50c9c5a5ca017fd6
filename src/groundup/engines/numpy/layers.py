"""Every layer of the GPT, forward and backward side by side (as in llm.c's train_gpt2.c).

The contract each layer keeps:

    y = layer.forward(x)       computes the output and keeps what the backward pass needs
    dx = layer.backward(dy)    dy = ∂L/∂y in, ∂L/∂x out; adds ∂L/∂θ into θ.grad for its parameters

Gradients are *added* (+=), never assigned, so a parameter used twice — the token embedding, tied to
the LM head — collects both contributions, and micro-batches accumulate. Call backward once per
forward, in reverse order. The derivation of each backward is in docs/backprop.md; each one carries
its equation as a comment.

Shapes: B batch, T positions, C model width, nh heads, d_k = C / nh, V vocabulary, N = B·T.
Everything is vectorised over batch, positions and heads; arrays keep the dtype of the weights
(float32 to train, float64 to check gradients).
"""

from __future__ import annotations

import math

import numpy as np


class Parameter:
    """A trainable array and ∂L/∂(array), the same shape. backward passes add into `.grad`."""

    def __init__(self, data: np.ndarray, grad: np.ndarray | None = None):
        self.data = data
        self.grad = np.zeros_like(data) if grad is None else grad

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape


# ---- linear layer --------------------------------------------------------------------------------
class Linear:
    """y = x Wᵀ + b.   W: (out, in), as torch.nn.Linear stores it; b: (out,) or None."""

    def __init__(self, weight: Parameter, bias: Parameter | None = None):
        self.weight, self.bias = weight, bias

    def forward(self, x: np.ndarray) -> np.ndarray:  # (..., in) → (..., out)
        self.input_shape = x.shape
        self.x = x.reshape(-1, x.shape[-1])  # (N, in): one big matmul, not a batch of small ones
        y = self.x @ self.weight.data.T
        if self.bias is not None:
            y += self.bias.data
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dy = dy.reshape(-1, dy.shape[-1])  # (N, out)
        # ∂L/∂W = dyᵀ x,  ∂L/∂b = Σₙ dy,  ∂L/∂x = dy W
        self.weight.grad += dy.T @ self.x
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=0)
        return (dy @ self.weight.data).reshape(self.input_shape)


# ---- token embedding -----------------------------------------------------------------------------
class Embedding:
    """y[b, t] = W[ids[b, t]]: a table lookup, the same as one_hot(ids) · W.   W: (V, C)."""

    def __init__(self, weight: Parameter):
        self.weight = weight

    def forward(self, ids: np.ndarray) -> np.ndarray:  # (B, T) integer ids → (B, T, C)
        self.ids = ids
        return self.weight.data[ids]

    def backward(self, dy: np.ndarray) -> None:
        # ∂L/∂W[v] = Σ over the positions (b, t) with ids[b, t] = v of dy[b, t]   (scatter-add)
        scatter_add_rows(self.weight.grad, self.ids.reshape(-1), dy.reshape(-1, dy.shape[-1]))
        return None  # token ids are integers: there is no gradient to pass further down


def scatter_add_rows(target: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> None:
    """target[ids[n]] += rows[n] for every n, repeated ids summed: what np.add.at(target, ids, rows)
    does, done by sorting instead (about 4× faster at a 76-token vocabulary). Sort so the rows of
    each id sit together, sum each group with one reduceat, add each sum to its row once."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])  # where each id's group begins
    target[sorted_ids[starts]] += np.add.reduceat(rows[order], starts, axis=0)


# ---- positional encodings ------------------------------------------------------------------------
def sinusoidal_table(block_size: int, n_embd: int, dtype=np.float32) -> np.ndarray:
    """(T, C): PE[pos, 2i] = sin(pos·ω_i), PE[pos, 2i+1] = cos(pos·ω_i), ω_i = 10000^(-2i/C).

    Rounded through float32, as the PyTorch engine's buffer is, so both engines add the same numbers."""
    position = np.arange(block_size, dtype=np.float64)[:, None]
    omega = np.exp(np.arange(0, n_embd, 2, dtype=np.float64) * (-math.log(10000.0) / n_embd))
    table = np.zeros((block_size, n_embd))
    table[:, 0::2] = np.sin(position * omega)
    table[:, 1::2] = np.cos(position * omega)
    return table.astype(np.float32).astype(dtype)


class SinusoidalPositions:
    """y = x + PE[:T]: fixed sinusoids, nothing to learn."""

    def __init__(self, block_size: int, n_embd: int, dtype=np.float32):
        self.table = sinusoidal_table(block_size, n_embd, dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:  # (B, T, C)
        return x + self.table[: x.shape[1]]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # ∂L/∂x = dy   (adding a constant passes the gradient through unchanged)
        return dy


class LearnedPositions:
    """y = x + P[:T]: one trainable C-vector per position (GPT-2).   P: (block_size, C)."""

    def __init__(self, weight: Parameter):
        self.weight = weight

    def forward(self, x: np.ndarray) -> np.ndarray:  # (B, T, C)
        self.T = x.shape[1]
        return x + self.weight.data[: self.T]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # ∂L/∂P[t] = Σ_b dy[b, t]   (P[t] was broadcast over the batch),   ∂L/∂x = dy
        self.weight.grad[: self.T] += dy.sum(axis=0)
        return dy


def rope_tables(block_size: int, head_size: int, dtype=np.float32, base: float = 10000.0):
    """cos and sin of pos·θ_i, θ_i = base^(-2i/d), each (T, d/2); rounded through float32 as in the
    PyTorch engine."""
    theta = base ** (-np.arange(0, head_size, 2, dtype=np.float64) / head_size)
    angles = np.arange(block_size, dtype=np.float64)[:, None] * theta
    return np.cos(angles).astype(np.float32).astype(dtype), np.sin(angles).astype(np.float32).astype(dtype)


class RotaryPositions:
    """RoPE: rotate each pair (x₁ᵢ, x₂ᵢ) = (x[i], x[i + d/2]) of a query or key by the angle pos·θᵢ:
    y = (x₁ cos − x₂ sin, x₁ sin + x₂ cos). A fixed linear map of x, so it keeps no state and one
    instance serves queries and keys alike.   x: (B, nh, T, d_k)."""

    def __init__(self, block_size: int, head_size: int, dtype=np.float32):
        self.cos, self.sin = rope_tables(block_size, head_size, dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._rotate(x, self.sin)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # ∂L/∂x = Rᵀ dy = R(−θ) dy:  dx₁ = dy₁ cos + dy₂ sin,  dx₂ = −dy₁ sin + dy₂ cos
        return self._rotate(dy, -self.sin)

    def _rotate(self, x: np.ndarray, sin: np.ndarray) -> np.ndarray:
        T, half = x.shape[-2], x.shape[-1] // 2
        cos, sin = self.cos[:T], sin[:T]
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


# ---- layer norm ----------------------------------------------------------------------------------
class LayerNorm:
    """y = γ ⊙ x̂ + β,  x̂ = (x − μ) / σ,  μ and σ² = mean and (biased) variance over the last axis,
    σ = √(σ² + ε).   γ, β: (C,); β is None without biases."""

    eps = 1e-5

    def __init__(self, weight: Parameter, bias: Parameter | None = None):
        self.weight, self.bias = weight, bias

    def forward(self, x: np.ndarray) -> np.ndarray:  # (..., C)
        centred = x - x.mean(axis=-1, keepdims=True)
        variance = np.mean(centred * centred, axis=-1, keepdims=True)
        self.rstd = 1.0 / np.sqrt(variance + self.eps)  # 1/σ, (..., 1)
        self.xhat = centred * self.rstd
        y = self.xhat * self.weight.data
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        C = dy.shape[-1]
        self.weight.grad += (dy * self.xhat).reshape(-1, C).sum(axis=0)  # ∂L/∂γ = Σ dy ⊙ x̂
        if self.bias is not None:
            self.bias.grad += dy.reshape(-1, C).sum(axis=0)  # ∂L/∂β = Σ dy
        g = dy * self.weight.data  # ∂L/∂x̂
        # ∂L/∂x = (1/σ) (g − mean(g) − x̂ · mean(g ⊙ x̂))
        return self.rstd * (g - g.mean(axis=-1, keepdims=True) - self.xhat * np.mean(g * self.xhat, axis=-1, keepdims=True))


# ---- activations ---------------------------------------------------------------------------------
class ReLU:
    """y = max(x, 0)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.positive = x > 0
        return np.maximum(x, 0)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # ∂L/∂x = dy · 1[x > 0]
        return dy * self.positive


GELU_K = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


class GELU:
    """y = ½ x (1 + tanh u),  u = √(2/π) (x + 0.044715 x³): the tanh form of GELU, as GPT-2 and the
    PyTorch engine use."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        self.tanh_u = np.tanh(GELU_K * (x + GELU_A * (x * x * x)))
        return 0.5 * x * (1.0 + self.tanh_u)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, t = self.x, self.tanh_u
        # ∂L/∂x = dy · (½ (1 + tanh u) + ½ x (1 − tanh² u) · √(2/π) (1 + 3·0.044715 x²))
        return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * (GELU_K * (1.0 + 3 * GELU_A * (x * x))))


class SiLU:
    """y = x σ(x) (the swish of SwiGLU),  σ(x) = 1 / (1 + e^(−x)) = ½ (1 + tanh(x/2)) (never overflows)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        self.sigmoid = 0.5 * (1.0 + np.tanh(0.5 * x))
        return x * self.sigmoid

    def backward(self, dy: np.ndarray) -> np.ndarray:
        s = self.sigmoid
        # ∂L/∂x = dy · (σ(x) + x σ(x)(1 − σ(x))) = dy · σ(x)(1 + x(1 − σ(x)))
        return dy * (s * (1.0 + self.x * (1.0 - s)))


ACTIVATIONS = {"relu": ReLU, "gelu": GELU}  # swiglu is its own feed-forward (SwiGLUFeedForward): it has a gate


# ---- attention -----------------------------------------------------------------------------------
def softmax(scores: np.ndarray) -> np.ndarray:
    """softmax over the last axis: exp(sᵢ − max s) / Σⱼ exp(sⱼ − max s) (the max only prevents overflow)."""
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


def softmax_backward(dp: np.ndarray, p: np.ndarray) -> np.ndarray:
    """p = softmax(s) ⇒ ∂L/∂sᵢ = pᵢ (∂L/∂pᵢ − Σⱼ pⱼ ∂L/∂pⱼ)   (the Jacobian diag(p) − p pᵀ applied to dp)."""
    return p * (dp - np.sum(dp * p, axis=-1, keepdims=True))


class CausalSelfAttention:
    """Causal multi-head self-attention:

        Q, K, V = x W_Qᵀ, x W_Kᵀ, x W_Vᵀ (one stacked matmul), split into nh heads of d_k
        A = softmax(Q Kᵀ / √d_k + M),  M = −∞ above the diagonal (no looking ahead)
        heads = A V;  y = concat(heads) W^Oᵀ + b^O
    """

    def __init__(self, qkv: Linear, output: Linear, n_head: int, block_size: int,
                 rope: RotaryPositions | None = None):
        self.qkv, self.output = qkv, output
        self.n_head = n_head
        self.rope = rope
        dtype = qkv.weight.data.dtype
        self.mask = np.triu(np.full((block_size, block_size), -np.inf, dtype=dtype), k=1)  # M: (T, T)

    def forward(self, x: np.ndarray) -> np.ndarray:  # (B, T, C) → (B, T, C)
        B, T, C = x.shape
        d_k = C // self.n_head
        qkv = self.qkv.forward(x).reshape(B, T, 3, self.n_head, d_k)
        queries, keys, values = qkv.transpose(2, 0, 3, 1, 4)  # each (B, nh, T, d_k)
        if self.rope is not None:
            queries, keys = self.rope.forward(queries), self.rope.forward(keys)
        self.scale = 1.0 / math.sqrt(d_k)
        scores = queries @ keys.swapaxes(-1, -2)  # Q Kᵀ: (B, nh, T, T)
        scores *= self.scale
        scores += self.mask[:T, :T]
        self.attention_weights = softmax(scores)  # A: each row sums to 1 over the positions it may see
        heads = self.attention_weights @ values  # A V: (B, nh, T, d_k)
        self.queries, self.keys, self.values = queries, keys, values
        return self.output.forward(heads.transpose(0, 2, 1, 3).reshape(B, T, C))  # concat heads, then W^O

    def backward(self, dy: np.ndarray) -> np.ndarray:
        B, T, C = dy.shape
        A, queries, keys, values = self.attention_weights, self.queries, self.keys, self.values
        dheads = self.output.backward(dy).reshape(B, T, self.n_head, -1).transpose(0, 2, 1, 3)  # (B, nh, T, d_k)
        # heads = A V  ⇒  ∂L/∂A = dheads Vᵀ,  ∂L/∂V = Aᵀ dheads
        dA = dheads @ values.swapaxes(-1, -2)
        dvalues = A.swapaxes(-1, -2) @ dheads
        # A = softmax(S)  ⇒  ∂L/∂S = A ⊙ (∂L/∂A − rowsum(A ⊙ ∂L/∂A))   (masked entries: A = 0, so no gradient)
        dscores = softmax_backward(dA, A)
        dscores *= self.scale
        # S = Q Kᵀ / √d_k  ⇒  ∂L/∂Q = ∂L/∂S K / √d_k,  ∂L/∂K = (∂L/∂S)ᵀ Q / √d_k
        dqueries = dscores @ keys
        dkeys = dscores.swapaxes(-1, -2) @ queries
        if self.rope is not None:
            dqueries, dkeys = self.rope.backward(dqueries), self.rope.backward(dkeys)
        # the heads of Q, K, V back into one (B, T, 3C) gradient, the layout of the stacked qkv matmul
        dqkv = np.stack([dqueries, dkeys, dvalues]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * C)
        return self.qkv.backward(dqkv)


# ---- feed-forward, block -------------------------------------------------------------------------
class FeedForward:
    """FFN(x) = W₂ act(W₁ x + b₁) + b₂, hidden width ffn_mult · C."""

    def __init__(self, up: Linear, activation, down: Linear):
        self.up, self.activation, self.down = up, activation, down

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.down.forward(self.activation.forward(self.up.forward(x)))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # the chain rule through the three steps, last one first
        return self.up.backward(self.activation.backward(self.down.backward(dy)))


class SwiGLUFeedForward:
    """FFN(x) = W_down (silu(W_gate x + b_g) ⊙ (W_up x + b_u)) + b_down   (Shazeer 2020, "GLU Variants
    Improve Transformer"; the FFN of Llama and of each Mixtral expert). One more matrix than FeedForward."""

    def __init__(self, gate: Linear, up: Linear, down: Linear):
        self.gate, self.up, self.down = gate, up, down
        self.silu = SiLU()

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.gated = self.silu.forward(self.gate.forward(x))  # silu(a),  a = W_gate x
        self.linear = self.up.forward(x)  # u = W_up x
        return self.down.forward(self.gated * self.linear)  # W_down (silu(a) ⊙ u)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dh = self.down.backward(dy)  # ∂L/∂h,  h = silu(a) ⊙ u
        # h = silu(a) ⊙ u  ⇒  ∂L/∂u = dh ⊙ silu(a),  ∂L/∂silu(a) = dh ⊙ u;  x feeds both a and u, so its
        # gradient is the sum of the two paths
        return self.up.backward(dh * self.gated) + self.gate.backward(self.silu.backward(dh * self.linear))


def feed_forward(activation: str, up: Linear, down: Linear, gate: Linear | None = None):
    """The dense FFN for model.activation: act(up x) through down, or SwiGLU with its gate."""
    if activation == "swiglu":
        return SwiGLUFeedForward(gate, up, down)
    return FeedForward(up, ACTIVATIONS[activation](), down)


class Block:
    """A transformer block, attention then feed-forward, each inside a residual connection:

        pre-norm  (GPT-2):  x = x + Attention(LN₁(x));   x = x + FFN(LN₂(x))
        post-norm (2017):   x = LN₁(x + Attention(x));   x = LN₂(x + FFN(x))
    """

    def __init__(self, norm_attention: LayerNorm, attention: CausalSelfAttention,
                 norm_ffn: LayerNorm, ffn: FeedForward, pre_norm: bool = True):
        self.norm_attention, self.attention = norm_attention, attention
        self.norm_ffn, self.ffn = norm_ffn, ffn
        self.pre_norm = pre_norm

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.pre_norm:
            x = x + self.attention.forward(self.norm_attention.forward(x))
            return x + self.ffn.forward(self.norm_ffn.forward(x))
        x = self.norm_attention.forward(x + self.attention.forward(x))
        return self.norm_ffn.forward(x + self.ffn.forward(x))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # a residual y = x + f(x) has ∂L/∂x = dy + (∂f/∂x)ᵀ dy: the gradient flows past f unchanged, plus through it
        if self.pre_norm:
            dx = dy + self.norm_ffn.backward(self.ffn.backward(dy))
            return dx + self.norm_attention.backward(self.attention.backward(dx))
        d_sum = self.norm_ffn.backward(dy)  # gradient at x + FFN(x)
        dx = d_sum + self.ffn.backward(d_sum)
        d_sum = self.norm_attention.backward(dx)  # gradient at x + Attention(x)
        return d_sum + self.attention.backward(d_sum)


# ---- the loss ------------------------------------------------------------------------------------
class SoftmaxCrossEntropy:
    """L = −(1/N) Σₙ log softmax(zₙ)[yₙ], the mean over N positions of the negative log-probability of
    the true next token. Fused with the softmax, because together their gradient is just p − onehot."""

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> float:  # (N, V), (N,) → scalar
        shifted = logits - logits.max(axis=-1, keepdims=True)  # log-softmax is shift-invariant; this avoids overflow
        exp = np.exp(shifted)
        total = exp.sum(axis=-1, keepdims=True)
        self.probs = exp / total  # p = softmax(z), (N, V)
        self.targets = targets
        rows = np.arange(len(targets))
        return float(np.mean(np.log(total[:, 0]) - shifted[rows, targets]))  # −log pₙ[yₙ] = log Σ exp z − z[y]

    def backward(self, dloss: float = 1.0) -> np.ndarray:
        # ∂L/∂zₙ = (pₙ − onehot(yₙ)) / N
        dlogits = self.probs.copy()
        dlogits[np.arange(len(self.targets)), self.targets] -= 1.0
        dlogits *= dloss / len(self.targets)
        return dlogits
