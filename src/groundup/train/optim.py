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

from groundup import kernels
from groundup.model.gpt import decays  # noqa: F401 (which weights get decay: the model's naming)


def named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters by name, a tied matrix once (under its first name)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


class AdamW(torch.optim.AdamW):
    """torch.optim.AdamW — same hyperparameters, same state (step, exp_avg, exp_avg_sq), same update
    rule — whose step runs as one fused pass over every parameter on the CPU (groundup.kernels);
    anywhere else, or for options the kernel lacks, torch's own implementation runs."""

    _plan = None  # what the fused step needs, kept while the optimizer's state stays the same objects

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None and self._kernel_step():
            return None
        self._plan = None  # torch's step may update only some parameters: re-read the state next time
        return super().step(closure)

    def _make_plan(self) -> list | None:
        """Per group: its parameters with gradients, their state dicts, and the step count they share."""
        plan = []
        for group in self.param_groups:
            if group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]:
                return None
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if not kernels.applies(params):
                return None  # not plain float32 CPU tensors (asked first: reading a CUDA step count syncs)
            states = [self.state.get(p) for p in params]
            steps = {int(s["step"]) if s else 0 for s in states}
            if len(steps) != 1:
                return None  # parameters at different step counts
            for p, s in zip(params, states):
                if not s:
                    self.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            states = [self.state[p] for p in params]
            moments = [t for s in states for t in (s["exp_avg"], s["exp_avg_sq"])]
            if not kernels.applies(moments):
                return None
            # Each state keeps its own 0-dim "step" tensor (torch's format), but as a view into one
            # tensor for the group, so a step moves them all with one add_ (not one op per parameter).
            step = steps.pop()
            counts = torch.full((len(params),), float(step))
            for i, s in enumerate(states):
                s["step"] = counts[i]
            plan.append({"group": group, "params": params, "states": states, "step": step, "counts": counts,
                         "pointers": kernels.tensor_pointers(params, moments[0::2], moments[1::2])})
        return plan

    def _kernel_step(self) -> bool:
        """The fused CPU update; False (nothing touched) where it does not apply."""
        plan = self._plan
        valid = plan is not None and all(
            len(entry["params"]) == sum(p.grad is not None for p in entry["group"]["params"])
            and all(self.state.get(p) is s for p, s in zip(entry["params"], entry["states"]))
            for entry in plan)
        if not valid:
            plan = self._plan = self._make_plan()
            if plan is None:
                return False
        grads = [[p.grad for p in entry["params"]] for entry in plan]
        if not all(kernels.applies(g) for g in grads) or any(isinstance(e["group"]["lr"], torch.Tensor) for e in plan):
            return False
        for entry, g in zip(plan, grads):
            group, entry["step"] = entry["group"], entry["step"] + 1
            beta1, beta2 = group["betas"]
            kernels.adamw_step(entry["pointers"], g, step=entry["step"], lr=group["lr"], beta1=beta1, beta2=beta2,
                               eps=group["eps"], weight_decay=group["weight_decay"])
            entry["counts"].add_(1.0)  # every state's "step" (views of it)
        return True


def gradient_norm(parameters: list[nn.Parameter]) -> torch.Tensor:
    """‖g‖₂ over all the gradients taken as one vector (one fused pass on the CPU; torch's
    get_total_norm elsewhere)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = kernels.total_norm(grads)
    return norm if norm is not None else torch.nn.utils.get_total_norm(grads)


def clip_gradients_(parameters: list[nn.Parameter], max_norm: float, norm: torch.Tensor) -> None:
    """Scale every gradient by min(1, max_norm / (‖g‖₂ + 1e-6)): torch.nn.utils.clip_grads_with_norm_,
    in one fused pass on the CPU."""
    if not kernels.clip_([p.grad for p in parameters if p.grad is not None], max_norm, norm):
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)


def configure_adamw(model: nn.Module, train_config, device: torch.device) -> AdamW:
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
            return AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError):
            pass
    return AdamW(groups, **kwargs)


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
