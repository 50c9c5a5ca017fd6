"""AdamW, set up for a transformer, and its state as named tensors (the checkpoint format).

Weight decay (decoupled, Loshchilov & Hutter 2019) applies to the weight *matrices* of the linear
layers only — attention Q/K/V and W^O, feed-forward W₁ and W₂, an untied LM head. Biases,
layer-norm gains and the token/position embeddings get none: shrinking a norm's gain or a bias
towards zero is not a useful prior, and an embedding row is only updated when its token occurs, so
decaying it on every step would erase rare tokens. (With tied embeddings the token matrix is also
the LM head; we side with the embedding.)
"""

from __future__ import annotations

import torch
from torch import nn


def decays(name: str, ndim: int) -> bool:
    """True for the weight matrices (ndim 2, not embeddings) that get weight decay."""
    return ndim == 2 and "embedding" not in name


def named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters by name, a tied matrix once (under its first name)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def configure_adamw(model: nn.Module, train_config, device: torch.device) -> torch.optim.AdamW:
    t = train_config
    params = named_parameters(model)
    groups = [
        {"params": [p for n, p in params if decays(n, p.dim())], "weight_decay": t.weight_decay},
        {"params": [p for n, p in params if not decays(n, p.dim())], "weight_decay": 0.0},
    ]
    kwargs = dict(lr=t.learning_rate, betas=(t.beta1, t.beta2), eps=t.eps)
    # Fused AdamW (one kernel for every parameter) where the device has it: CUDA, and CPU since torch 2.4.
    if device.type in ("cuda", "cpu") and all(p.dtype in (torch.float32, torch.float64) for _, p in params):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(groups, **kwargs)


def optimizer_state_tensors(optimizer: torch.optim.Optimizer, model: nn.Module) -> tuple[dict[str, torch.Tensor], int]:
    """Adam's moments by parameter name ('exp_avg.NAME', 'exp_avg_sq.NAME') and the step count."""
    tensors, step = {}, 0
    for name, p in named_parameters(model):
        state = optimizer.state.get(p)
        if not state:
            continue
        tensors[f"exp_avg.{name}"] = state["exp_avg"]
        tensors[f"exp_avg_sq.{name}"] = state["exp_avg_sq"]
        step = int(state["step"])
    return tensors, step


def load_optimizer_state_tensors(optimizer: torch.optim.Optimizer, model: nn.Module,
                                 tensors: dict[str, torch.Tensor], step: int) -> None:
    from groundup.errors import CheckpointError
    from groundup.train.distributed import shard_like

    for name, p in named_parameters(model):
        if f"exp_avg.{name}" not in tensors:
            if step:
                raise CheckpointError(f"optimizer state for parameter {name!r} is missing from the checkpoint")
            continue
        m, v = tensors[f"exp_avg.{name}"], tensors[f"exp_avg_sq.{name}"]
        if m.shape != p.shape or v.shape != p.shape:
            raise CheckpointError(f"optimizer state for {name!r} has shape {tuple(m.shape)}, expected {tuple(p.shape)}")
        step_tensor = torch.tensor(float(step), dtype=torch.float32)
        if getattr(optimizer, "defaults", {}).get("fused") or getattr(optimizer, "defaults", {}).get("capturable"):
            step_tensor = step_tensor.to(p.device)
        optimizer.state[p] = {  # (under FSDP each rank keeps its shard of the moments, as of the weights)
            "step": step_tensor,
            "exp_avg": shard_like(p, m.to(device=p.device, dtype=p.dtype).clone()),
            "exp_avg_sq": shard_like(p, v.to(device=p.device, dtype=p.dtype).clone()),
        }
