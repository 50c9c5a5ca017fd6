"""Causal multi-head self-attention: softmax(Q Kᵀ / √d_k + causal mask) V, per head, then W^O."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from groundup.config import ModelConfig
from groundup.model.positional import apply_rope, positions_of, rope_tables


class KVCache:
    """Keys and values of every layer for the positions seen so far, so generating the next token
    costs one query against the cache instead of re-running the whole context."""

    def __init__(self, config: ModelConfig, batch_size: int, device, dtype=torch.float32):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.head_size)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled

    def rows(self, first: int, last: int) -> "KVCache":
        """The cache of sequences first..last-1, sharing this one's memory (writes go through)."""
        view = KVCache.__new__(KVCache)
        view.keys, view.values, view.length = self.keys[:, first:last], self.values[:, first:last], 0
        return view

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor, start):
        """Write this step's keys/values at [start, start+T); return everything up to there.
        With `start` a (B,) tensor, row b's one new key/value goes to position start[b]."""
        if isinstance(start, torch.Tensor):  # batched decoding: keys (B, nh, 1, d_k)
            rows = torch.arange(keys.shape[0], device=keys.device)
            self.keys[layer, rows, :, start] = keys[:, :, 0]
            self.values[layer, rows, :, start] = values[:, :, 0]
            end = int(start.max()) + 1
        else:
            end = start + keys.shape[2]
            self.keys[layer, :, :, start:end] = keys
            self.values[layer, :, :, start:end] = values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.d_k = config.head_size
        self.path = config.attention  # "math": every step written out; "sdpa": fused kernel
        self.dropout = config.dropout
        # W_Q, W_K, W_V stacked into one (3C × C) matrix: one matmul makes queries, keys and values.
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.output = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # W^O
        self.attention_dropout = nn.Dropout(config.dropout)
        self.residual_dropout = nn.Dropout(config.dropout)
        self.register_buffer(
            "causal_mask", torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool)), persistent=False
        )
        self.rope = config.positional == "rope"
        if self.rope:
            cos, sin = rope_tables(config.block_size, config.head_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, start=0) -> torch.Tensor:
        B, T, C = x.shape
        per_row = isinstance(start, torch.Tensor)  # (B,) positions: batched decoding, T = 1
        # One matmul makes queries, keys and values; split the width into n_head heads of d_k.
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.d_k)  # (B, T, 3, nh, d_k)
        if self.rope:  # rotate queries and keys together, by their positions start..start+T-1
            cos = positions_of(self.rope_cos, start, T)[..., None, None, :]  # (T | B×1, 1, 1, d_k/2)
            sin = positions_of(self.rope_sin, start, T)[..., None, None, :]
            queries, keys = apply_rope(qkv[:, :, :2], cos, sin).unbind(2)
        else:
            queries, keys = qkv[:, :, 0], qkv[:, :, 1]
        values = qkv[:, :, 2]
        # (B, T, nh, d_k) → (B, nh, T, d_k): each head attends over the positions on its own
        queries, keys, values = (t.transpose(1, 2) for t in (queries, keys, values))
        if cache is not None:
            keys, values = cache.store(layer, keys, values, start)  # (B, nh, start+T, d_k)
        S = keys.shape[2]  # number of positions attended to
        if per_row:  # row b's query at position start[b] sees keys 0..start[b]: (B, 1, 1, S)
            mask = self.causal_mask[start, :S][:, None, None, :]
        else:
            mask = self.causal_mask[start : start + T, :S]  # query at position start+t sees keys 0..start+t

        if self.path == "math":
            scores = queries @ keys.transpose(-2, -1) / math.sqrt(self.d_k)  # Q Kᵀ / √d_k: (B, nh, T, S)
            scores = scores.masked_fill(~mask, float("-inf"))  # no looking ahead
            attention_weights = F.softmax(scores, dim=-1)  # each row sums to 1
            attention_weights = self.attention_dropout(attention_weights)
            heads = attention_weights @ values  # weighted sum of values: (B, nh, T, d_k)
        else:
            dropout = self.dropout if self.training else 0.0
            if per_row:
                heads = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
            elif T == S:  # the usual training case: a square causal mask
                heads = F.scaled_dot_product_attention(queries, keys, values, is_causal=True, dropout_p=dropout)
            elif T == 1:  # one new token attends to everything before it
                heads = F.scaled_dot_product_attention(queries, keys, values, dropout_p=dropout)
            else:
                heads = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, dropout_p=dropout)
        # Concatenate the heads back into C dimensions, then mix them with W^O.
        heads = heads.transpose(1, 2).contiguous().view(B, T, C)
        return self.residual_dropout(self.output(heads))
