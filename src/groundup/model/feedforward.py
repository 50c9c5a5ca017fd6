"""Position-wise feed-forward network: FFN(x) = W₂ · act(W₁ x + b₁) + b₂, hidden width ffn_mult · C.

With activation = "swiglu" (Shazeer 2020, "GLU Variants Improve Transformer"; Llama, Mixtral) a
third matrix gates the hidden units: FFN(x) = W₂ · (silu(W_g x + b_g) ⊙ (W₁ x + b₁)) + b₂,
silu(z) = z·σ(z). (The same hidden width H as the other activations, so 3·C·H weights instead of 2·C·H.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from groundup.config import ModelConfig


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh form (as GPT-2): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"relu": F.relu, "gelu": gelu, "swiglu": F.silu}  # swiglu: silu of the gate, times up


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.hidden_size
        self.up = nn.Linear(config.n_embd, hidden, bias=config.bias)  # W₁: C → 4C
        self.activation = ACTIVATIONS[config.activation]
        self.down = nn.Linear(hidden, config.n_embd, bias=config.bias)  # W₂: 4C → C
        self.gate = None  # W_g: C → 4C, swiglu only
        if config.activation == "swiglu":
            self.gate = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.dropout(self.down(self.activation(self.gate(x)) * self.up(x)))
        return self.dropout(self.down(self.activation(self.up(x))))
