"""Optimisers from their formulas, and gradient clipping.

Each acts on a list of Parameters (data and grad). The learning rate is an argument of `step`, so
the schedule stays outside (groundup.train.schedule.lr_at, shared with the PyTorch engine). Weight
decay is a number, or one value per parameter — a number, or an array shaped like the parameter
(the GPT's flat buffer uses an array that is λ on the weight matrices and 0 elsewhere).
"""

from __future__ import annotations

import math

import numpy as np

from groundup.engines.numpy.layers import Parameter


def grad_norm(params: list[Parameter]) -> float:
    """‖g‖₂ = √(Σ g²) over every gradient together."""
    return math.sqrt(sum(float(np.vdot(p.grad, p.grad)) for p in params))


def clip_grads_with_norm(params: list[Parameter], max_norm: float, norm: float) -> None:
    """If ‖g‖ > max_norm: g ← g · max_norm / (‖g‖ + 1e-6) (torch.nn.utils.clip_grads_with_norm_)."""
    coefficient = max_norm / (norm + 1e-6)
    if coefficient < 1.0:
        for p in params:
            p.grad *= coefficient


def clip_grad_norm(params: list[Parameter], max_norm: float) -> float:
    """Both at once (as torch.nn.utils.clip_grad_norm_). Returns ‖g‖ before clipping."""
    norm = grad_norm(params)
    clip_grads_with_norm(params, max_norm, norm)
    return norm


def _per_parameter(value, params: list[Parameter]) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * len(params)


class SGD:
    """Stochastic gradient descent with momentum μ and L2 weight decay λ (as torch.optim.SGD):

        g ← g + λ p;   v ← μ v + g;   p ← p − lr · v          (μ = 0: p ← p − lr · g)
    """

    def __init__(self, params: list[Parameter], momentum: float = 0.0, weight_decay=0.0):
        self.params = list(params)
        self.momentum = momentum
        self.weight_decay = _per_parameter(weight_decay, self.params)
        self.velocity = [np.zeros_like(p.data) for p in self.params]

    def step(self, lr: float) -> None:
        for p, v, wd in zip(self.params, self.velocity, self.weight_decay):
            g = p.grad + wd * p.data if np.any(wd) else p.grad  # g ← g + λ p
            if self.momentum:
                v *= self.momentum
                v += g
                g = v
            p.data -= lr * g


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction; `decoupled=True` is AdamW (Loshchilov & Hutter 2019).

        AdamW:  p ← p − lr·λ·p               decay the weights themselves
        Adam:   g ← g + λ·p                  decay through the gradient (L2)
        m ← β₁ m + (1 − β₁) g                running mean of the gradient
        v ← β₂ v + (1 − β₂) g²               running mean of its square
        m̂ = m / (1 − β₁ᵗ),  v̂ = v / (1 − β₂ᵗ)  bias correction: m and v start at 0
        p ← p − lr · m̂ / (√v̂ + ε)            a step of about lr per coordinate, whatever the gradient's scale
    """

    def __init__(self, params: list[Parameter], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay=0.0, decoupled: bool = False):
        self.params = list(params)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = _per_parameter(weight_decay, self.params)
        self.decays = [bool(np.any(wd)) for wd in self.weight_decay]
        self.decoupled = decoupled
        self.exp_avg = [np.zeros_like(p.data) for p in self.params]  # m
        self.exp_avg_sq = [np.zeros_like(p.data) for p in self.params]  # v
        self.step_count = 0  # t

    def step(self, lr: float) -> None:
        self.step_count += 1
        t, beta1, beta2 = self.step_count, self.beta1, self.beta2
        bias_correction1, bias_correction2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
        for p, m, v, wd, decays in zip(self.params, self.exp_avg, self.exp_avg_sq, self.weight_decay, self.decays):
            g = p.grad
            if decays:
                if self.decoupled:
                    p.data *= 1.0 - lr * wd  # p ← p − lr·λ·p
                else:
                    g = g + wd * p.data  # g ← g + λ·p
            m *= beta1
            m += (1.0 - beta1) * g  # m ← β₁ m + (1 − β₁) g
            v *= beta2
            v += (1.0 - beta2) * (g * g)  # v ← β₂ v + (1 − β₂) g²
            # p ← p − lr · m̂ / (√v̂ + ε), written as torch does: p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)
            denominator = np.sqrt(v)
            denominator /= math.sqrt(bias_correction2)
            denominator += self.eps
            p.data -= (lr / bias_correction1) * (m / denominator)


class AdamW(Adam):
    """Adam with decoupled weight decay (what the PyTorch engine trains with)."""

    def __init__(self, params: list[Parameter], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay=0.01):
        super().__init__(params, betas, eps, weight_decay, decoupled=True)
