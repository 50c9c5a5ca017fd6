"""Position-wise feed-forward network: FFN(x) = W₂ · act(W₁ x + b₁) + b₂, hidden width ffn_mult · C."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from groundup.config import ModelConfig


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh form (as GPT-2): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"relu": F.relu, "gelu": gelu}


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.ffn_mult * config.n_embd
        self.up = nn.Linear(config.n_embd, hidden, bias=config.bias)  # W₁: C → 4C
        self.activation = ACTIVATIONS[config.activation]
        self.down = nn.Linear(hidden, config.n_embd, bias=config.bias)  # W₂: 4C → C
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.activation(self.up(x))))
