"""The one training step. Every trainer in groundup — both engines, every lab, the speed probe —
updates weights through `train_step`, so they all train the same way:

    for each micro-batch b of the step:   L_b = loss(model, b);   ∂(L_b / n_micro)/∂θ accumulated
    ‖g‖₂ over all gradients (and, under torchrun, the loss and ‖g‖ averaged over ranks)
    check(loss, ‖g‖) → ok | skip | rollback | stop       (the guard; default: always ok)
    if ok:  g ← g · min(1, clip / (‖g‖ + 1e-6));   θ ← AdamW(θ, g, lr)
    zero the gradients                                    (a vetoed step leaves θ and Adam untouched)

The loss is a parameter: cross-entropy of the next token by default (plus the auxiliary terms a
model reports for its last forward: a mixture of experts' balance and router-z losses, GPT.aux_loss());
a new training method (distillation, preference losses) is a new `loss(model, batch)`, not a new
step. The engine (groundup.train.engine) does the arithmetic: autograd for PyTorch, the hand-written
backward pass for NumPy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Batch = Any  # what a loss takes: (inputs, targets) for cross-entropy; any tuple for another loss
Loss = Callable[[Any, Batch], Any]  # loss(model, batch) → a scalar the engine can differentiate


@dataclass(frozen=True)
class Verdict:
    """What the guard decided about a step, from its loss and gradient norm."""

    action: str = "ok"  # "ok" (apply the update) | "skip" | "rollback" | "stop" (do not)
    reason: str = ""


OK = Verdict()


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean loss over the step's micro-batches (and ranks), before the update
    grad_norm: float  # ‖g‖₂ before clipping
    verdict: Verdict = OK

    @property
    def applied(self) -> bool:
        """True when the update was applied."""
        return self.verdict.action == "ok"


class Engine(Protocol):
    """What a training step needs from an engine (groundup.train.engine has the two)."""

    def set_lr(self, lr: float) -> None: ...
    def forward_backward(self, batch: Batch, loss: Loss | None, n_micro: int, last: bool) -> Any: ...
    def gradient_norm(self) -> Any: ...
    def loss_and_norm(self, loss_sum: Any, n_micro: int, norm: Any) -> tuple[float, float]: ...
    def clip_gradients(self, max_norm: float, norm: Any) -> None: ...
    def update(self) -> None: ...
    def zero_grad(self) -> None: ...


def train_step(engine: Engine, batches: Sequence[Batch], *, lr: float, grad_clip: float, loss: Loss | None = None,
               check: Callable[[float, float], Verdict] | None = None) -> StepResult:
    """One optimizer step over `batches` (its micro-batches: gradient accumulation when more than one).

    loss: loss(model, batch) → scalar; None = cross-entropy of model(x, y), plus the model's auxiliary
          losses where it has them (a mixture of experts' balance and z terms: GPT.aux_loss()).
    check: the guard, called with the step's loss and ‖g‖ before the update; None (or a None verdict) = apply.
    grad_clip: max global gradient norm (0 = no clipping)."""
    if not batches:
        raise ValueError("train_step needs at least one batch")
    engine.set_lr(lr)
    loss_sum = None
    for i, batch in enumerate(batches):
        micro_loss = engine.forward_backward(batch, loss, len(batches), last=i == len(batches) - 1)
        loss_sum = micro_loss if loss_sum is None else loss_sum + micro_loss
    norm = engine.gradient_norm()
    loss_value, norm_value = engine.loss_and_norm(loss_sum, len(batches), norm)
    verdict = (check(loss_value, norm_value) if check is not None else None) or OK
    if verdict.action == "ok":
        if grad_clip > 0:
            engine.clip_gradients(grad_clip, norm)
        engine.update()
    engine.zero_grad()
    return StepResult(loss_value, norm_value, verdict)
