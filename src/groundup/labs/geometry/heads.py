"""Attention heads classified by what they measurably do (Olsson et al. 2022, "In-context Learning
and Induction Heads").

With A[t, s] a head's attention weight from query position t to key position s (each row sums to 1
over s ≤ t), three scores per head:

    previous-token  mean over t ≥ 1 of A[t, t−1]                      (on real text)
    sink            mean over t ≥ 1 of A[t, 0]                         (on real text)
    induction       mean over t ∈ [L, 2L) of A[t, t−L+1]               (on L random tokens repeated twice:
                    from each token of the second copy to the token that followed its earlier occurrence)

Uniform causal attention, A[t, s] = 1/(t+1), is the chance baseline, with known scores:

    previous-token = sink = mean_{t=1}^{T−1} 1/(t+1),     induction = mean_{t=L}^{2L−1} 1/(t+1)

The weights are recomputed from each attention module's own projection, softmax(Q Kᵀ/√d_k + causal
mask) with rotary positions where the model uses them — the same arithmetic as the module's
"math" path, on the input the module received (captured with a forward pre-hook).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from groundup.model.positional import apply_rope

THRESHOLDS = {"induction": 0.3, "previous-token": 0.4, "sink": 0.5}  # a head is a KIND head if its score ≥ this
KINDS = tuple(THRESHOLDS)


@torch.no_grad()
def attention_weights(module, x: torch.Tensor) -> torch.Tensor:
    """softmax(Q Kᵀ / √d_k + causal mask) of a CausalSelfAttention on input x (B, T, C), positions
    0 … T−1: (B, n_head, T, T)."""
    B, T, _ = x.shape
    qkv = module.qkv(x).view(B, T, 3, module.n_head, module.d_k)  # (B, T, 3, nh, d_k)
    if module.rope:
        queries, keys = apply_rope(qkv[:, :, :2], module.rope_cos[:T, None, None, :], module.rope_sin[:T, None, None, :]).unbind(2)
    else:
        queries, keys = qkv[:, :, 0], qkv[:, :, 1]
    queries, keys = queries.transpose(1, 2), keys.transpose(1, 2)  # (B, nh, T, d_k)
    scores = queries @ keys.transpose(-2, -1) / math.sqrt(module.d_k)  # Q Kᵀ / √d_k: (B, nh, T, T)
    scores = scores.masked_fill(~module.causal_mask[:T, :T], float("-inf"))
    return F.softmax(scores, dim=-1)


@torch.no_grad()
def capture_attention(model, idx: torch.Tensor) -> list[torch.Tensor]:
    """Run the model on idx (B, T); return each layer's attention weights (B, n_head, T, T)."""
    inputs: list[torch.Tensor] = []
    handles = [block.attention.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
               for block in model.blocks]
    was_training = model.training
    model.eval()
    try:
        model(idx)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [attention_weights(block.attention, x) for block, x in zip(model.blocks, inputs)]


# ---- the scores, on attention weights A: (B, n_head, T, T) → one number per head ------------------
def previous_token_score(A: torch.Tensor) -> np.ndarray:
    """mean over batch and t ≥ 1 of A[t, t−1]."""
    return A.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, -1)).double().numpy()


def sink_score(A: torch.Tensor) -> np.ndarray:
    """mean over batch and t ≥ 1 of A[t, 0]."""
    return A[..., 1:, 0].mean(dim=(0, -1)).double().numpy()


def induction_score(A: torch.Tensor, L: int) -> np.ndarray:
    """On L tokens repeated twice: mean over batch and t ∈ [L, 2L) of A[t, t−L+1]."""
    if A.shape[-1] < 2 * L:
        raise ValueError(f"the induction score needs 2L = {2 * L} positions, the attention has {A.shape[-1]}")
    # diagonal(offset=−(L−1))[i] = A[i + L − 1, i]; t ∈ [L, 2L) is i = t − L + 1 ∈ [1, L]
    return A.diagonal(offset=-(L - 1), dim1=-2, dim2=-1)[..., 1 : L + 1].mean(dim=(0, -1)).double().numpy()


def uniform_attention(T: int) -> torch.Tensor:
    """Chance: every position attends equally to itself and everything before, A[t, s] = 1/(t+1): (1, 1, T, T)."""
    return (torch.tril(torch.ones(T, T, dtype=torch.float64)) / torch.arange(1, T + 1, dtype=torch.float64)[:, None])[None, None]


def chance_scores(T: int, L: int) -> dict[str, float]:
    """The scores of uniform causal attention, from the formulas (not from uniform_attention)."""
    prev = sum(1 / (t + 1) for t in range(1, T)) / (T - 1)
    return {"previous-token": prev, "sink": prev, "induction": sum(1 / (t + 1) for t in range(L, 2 * L)) / L}


def repeated_random_tokens(vocab: list[int], L: int, n: int, seed: int) -> torch.Tensor:
    """n sequences of L tokens drawn uniformly from `vocab`, each repeated twice: (n, 2L)."""
    rng = np.random.default_rng([seed, 2 * L])
    first = rng.choice(np.asarray(vocab), size=(n, L))
    return torch.from_numpy(np.concatenate([first, first], axis=1)).long()


def head_scores(model, text: torch.Tensor, repeated: torch.Tensor) -> dict[str, list[list[float]]]:
    """Every head's three scores: {kind: [[score of head h of layer l for h] for l]}."""
    L = repeated.shape[1] // 2
    on_text, on_repeats = capture_attention(model, text), capture_attention(model, repeated)
    return {
        "previous-token": [previous_token_score(A).tolist() for A in on_text],
        "sink": [sink_score(A).tolist() for A in on_text],
        "induction": [induction_score(A, L).tolist() for A in on_repeats],
    }


def classify(scores: dict[str, list[list[float]]], thresholds: dict[str, float] = THRESHOLDS) -> list[list[list[str]]]:
    """Each head's kinds: those whose score reaches the threshold (empty: unclassified)."""
    n_layer, n_head = len(scores["induction"]), len(scores["induction"][0])
    return [[[k for k in KINDS if scores[k][l][h] >= thresholds[k]] for h in range(n_head)] for l in range(n_layer)]


def summarize_heads(scores: dict, kinds: list) -> dict:
    """Counts and best scores of one checkpoint: how many heads of each kind, where, how strong."""
    out = {}
    for kind in KINDS:
        flat = [s for layer in scores[kind] for s in layer]
        out[kind] = {"count": sum(kind in hk for layer in kinds for hk in layer), "max": max(flat), "mean": float(np.mean(flat)),
                     "count_by_layer": [sum(kind in hk for hk in layer) for layer in kinds]}
    return out
