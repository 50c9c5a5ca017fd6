"""Positional information: attention by itself is blind to order, so each position is marked.

  sinusoidal  PE[pos, 2i] = sin(pos / 10000^(2i/C)),  PE[pos, 2i+1] = cos(pos / 10000^(2i/C))
              fixed, added to the token embeddings (Vaswani et al. 2017)
  learned     a trainable vector per position, added to the token embeddings (GPT-2)
  rope        queries and keys rotated by an angle proportional to their position, so that
              q·k depends only on the distance between them (Su et al. 2021, RoFormer)
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_table(block_size: int, n_embd: int) -> torch.Tensor:
    """(T, C): PE[pos, 2i] = sin(pos·ω_i), PE[pos, 2i+1] = cos(pos·ω_i), ω_i = 10000^(-2i/C)."""
    position = torch.arange(block_size, dtype=torch.float64)[:, None]
    omega = torch.exp(torch.arange(0, n_embd, 2, dtype=torch.float64) * (-math.log(10000.0) / n_embd))
    table = torch.zeros(block_size, n_embd, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * omega)
    table[:, 1::2] = torch.cos(position * omega)
    return table.float()


def positions_of(table: torch.Tensor, start, length: int) -> torch.Tensor:
    """Rows start..start+length-1 of a (block_size, ...) table: (T, ...). With `start` a (B,)
    tensor (batched decoding, one position per row, length 1): (B, 1, ...)."""
    if isinstance(start, torch.Tensor):
        return table[start].unsqueeze(1)
    return table[start : start + length]


class SinusoidalPositions(nn.Module):
    """Fixed sinusoids; nothing to learn (a buffer, not saved with the weights)."""

    def __init__(self, block_size: int, n_embd: int):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(block_size, n_embd), persistent=False)

    def forward(self, start, length: int) -> torch.Tensor:
        return positions_of(self.table, start, length)


class LearnedPositions(nn.Module):
    """One trainable C-vector per position (GPT-2's wpe)."""

    def __init__(self, block_size: int, n_embd: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(block_size, n_embd))

    def forward(self, start, length: int) -> torch.Tensor:
        return positions_of(self.weight, start, length)


def rope_tables(block_size: int, head_size: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of pos·θ_i, θ_i = base^(-2i/d), each (T, d/2)."""
    theta = base ** (-torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
    angles = torch.arange(block_size, dtype=torch.float64)[:, None] * theta
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) by its angle: (x1·cos − x2·sin, x1·sin + x2·cos).

    x: (..., d); cos, sin: the angles of x's positions, broadcastable to (..., d/2).
    """
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
