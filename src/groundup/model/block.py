"""A transformer block: attention then feed-forward, each wrapped in a residual connection and a
layer norm.

  pre-norm  (GPT-2):       x = x + Attention(LN₁(x));   x = x + FFN(LN₂(x))
  post-norm (2017 paper):  x = LN₁(x + Attention(x));   x = LN₂(x + FFN(x))
"""

from __future__ import annotations

import torch
from torch import nn

from groundup.config import ModelConfig
from groundup.model.attention import CausalSelfAttention, KVCache
from groundup.model.feedforward import FeedForward
from groundup.model.moe import MixtureOfExperts


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.norm_attention = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attention = CausalSelfAttention(config)
        self.norm_ffn = nn.LayerNorm(config.n_embd, bias=config.bias)
        # a mixture of experts in the sparse blocks (config.is_sparse), else the dense FFN
        self.ffn = MixtureOfExperts(config) if config.is_sparse(layer) else FeedForward(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, start=0) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attention(self.norm_attention(x), cache, layer, start)
            x = x + self.ffn(self.norm_ffn(x))
        else:
            x = self.norm_attention(x + self.attention(x, cache, layer, start))
            x = self.norm_ffn(x + self.ffn(x))
        return x
