"""Position-wise feed-forward network: FFN(x) = W₂ · act(W₁ x + b₁) + b₂, hidden width ffn_mult · C."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from groundup.config import ModelConfig
from groundup.kernels import gelu, linear, runs_on  # GELU, tanh form (as GPT-2); a fused kernel on the CPU
from groundup.model.layers import Linear

ACTIVATIONS = {"relu": F.relu, "gelu": gelu}


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.ffn_mult * config.n_embd
        self.up = Linear(config.n_embd, hidden, bias=config.bias)  # W₁: C → 4C
        self.activation = ACTIVATIONS[config.activation]
        self.down = Linear(hidden, config.n_embd, bias=config.bias)  # W₂: 4C → C
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation is gelu and type(self.up) is Linear and runs_on(x, self.up.weight):
            # W₁x, then + b₁ and GELU in one pass (a fused CPU kernel; elsewhere the usual way below)
            hidden = gelu(linear(x, self.up.weight), self.up.bias)
        else:
            hidden = self.activation(self.up(x))
        return self.dropout(self.down(hidden))
