"""The two layers every block is made of, as nn.Linear and nn.LayerNorm (same parameters, same names,
same math), computed by the fused CPU kernels (groundup.kernels) where those run; PyTorch's own op
elsewhere."""

from __future__ import annotations

import torch
from torch import nn

from groundup.kernels import layer_norm, linear


class Linear(nn.Linear):
    """y = x·Wᵀ + b: W (out × in), b (out) or none."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class LayerNorm(nn.LayerNorm):
    """(x − mean)/√(var + eps)·γ + β over the last dimension."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)
