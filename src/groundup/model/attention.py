"""Causal multi-head self-attention: softmax(Q Kᵀ / √d_k + causal mask) V, per head, then W^O."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from groundup.config import ModelConfig
from groundup.model.positional import apply_rope, rope_tables


class KVCache:
    """Keys and values of every layer for the positions seen so far, so generating the next token
    costs one query against the cache instead of re-running the whole context."""

    def __init__(self, config: ModelConfig, batch_size: int, device, dtype=torch.float32):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.head_size)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor, start: int):
        """Write this step's keys/values at [start, start+T); return everything up to there."""
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

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, start: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        # One matmul makes queries, keys and values; split the width into n_head heads of d_k.
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.d_k)  # (B, T, 3, nh, d_k)
        if self.rope:  # rotate queries and keys together, by their positions start..start+T-1
            cos = self.rope_cos[start : start + T, None, None, :]  # (T, 1, 1, d_k/2)
            sin = self.rope_sin[start : start + T, None, None, :]
            queries, keys = apply_rope(qkv[:, :, :2], cos, sin).unbind(2)
        else:
            queries, keys = qkv[:, :, 0], qkv[:, :, 1]
        values = qkv[:, :, 2]
        # (B, T, nh, d_k) → (B, nh, T, d_k): each head attends over the positions on its own
        queries, keys, values = (t.transpose(1, 2) for t in (queries, keys, values))
        if cache is not None:
            keys, values = cache.store(layer, keys, values, start)  # (B, nh, start+T, d_k)
        S = keys.shape[2]  # number of positions attended to
        mask = self.causal_mask[start : start + T, :S]  # query at position start+t sees keys 0..start+t

        if self.path == "math":
            scores = queries @ keys.transpose(-2, -1) / math.sqrt(self.d_k)  # Q Kᵀ / √d_k: (B, nh, T, S)
            scores = scores.masked_fill(~mask, float("-inf"))  # no looking ahead
            attention_weights = F.softmax(scores, dim=-1)  # each row sums to 1
            attention_weights = self.attention_dropout(attention_weights)
            heads = attention_weights @ values  # weighted sum of values: (B, nh, T, d_k)
        else:
            dropout = self.dropout if self.training else 0.0
            if T == S:  # the usual training case: a square causal mask
                heads = F.scaled_dot_product_attention(queries, keys, values, is_causal=True, dropout_p=dropout)
            elif T == 1:  # one new token attends to everything before it
                heads = F.scaled_dot_product_attention(queries, keys, values, dropout_p=dropout)
            else:
                heads = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, dropout_p=dropout)
        # Concatenate the heads back into C dimensions, then mix them with W^O.
        heads = heads.transpose(1, 2).contiguous().view(B, T, C)
        return self.residual_dropout(self.output(heads))
