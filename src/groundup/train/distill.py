"""Knowledge distillation as a loss of the one training step (Hinton, Vinyals & Dean 2015).

A student learns from a frozen teacher's softened next-token distribution as well as from the
data's next token. For each position, with logits z_s (student) and z_t (teacher) over V tokens:

    p^T = softmax(z / T)                                     (temperature T > 0 softens both)
    L   = α · T² · KL(p_t^T ‖ p_s^T)  +  (1 − α) · CE(softmax(z_s), y)
    KL(p ‖ q) = Σ_v p_v (log p_v − log q_v)                  (forward: the teacher's mass covered)
    reverse:  KL(p_s^T ‖ p_t^T)                               (mode-seeking: the student's mass
                                                               kept where the teacher has it)

averaged over every position (B·T tokens). The T² keeps the soft term's gradient the same size as
T changes (∂KL/∂z_s = (p_s^T − p_t^T)/T, so T²·KL has gradient T·(p_s^T − p_t^T), O(1) in T),
and as T → ∞ the soft term becomes logit matching (Hinton §2.1):

    T²·KL → (1 / 2V) · Σ_v (d_v − mean(d))²,   d = z_s − z_t    (either direction)

CE uses the unsoftened student logits, exactly as the model's own loss (α = 0 is plain CE). The
teacher runs under no_grad in eval mode and never changes; `distill_loss` wraps it as the
`loss(model, batch)` the step takes (groundup.train.step), so distillation trains through the same
step, loop and trainer as everything else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from groundup.errors import ConfigError
from groundup.train.step import Loss


def check_recipe(temperature: float, alpha: float) -> None:
    """T > 0 and α ∈ [0, 1], else one clear ConfigError."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0 \
            or temperature == float("inf"):
        raise ConfigError(f"the distillation temperature must be a positive number (T > 0; 1 = the teacher's own "
                          f"distribution, 2–4 softer), got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"the distillation weight alpha must be in [0, 1] (1 = only the teacher's soft targets, "
                          f"0 = only the data's next token), got {alpha!r}")


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    """As the model's own loss: bf16/fp16 logits (autocast) are upcast; fp32 and fp64 stay."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float, alpha: float, reverse: bool = False) -> torch.Tensor:
    """α·T²·KL(p_t^T ‖ p_s^T) + (1 − α)·CE(z_s, y), per token (reverse: KL(p_s^T ‖ p_t^T)).

    student_logits, teacher_logits: (..., V); targets: (...) token ids. The teacher's logits are
    treated as constants (detached). A term whose weight is 0 is not computed, so α = 0 is exactly
    the model's cross-entropy and α = 1 never looks at the targets."""
    check_recipe(temperature, alpha)
    V = student_logits.size(-1)
    if teacher_logits.shape != student_logits.shape:
        raise ConfigError(f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                          f"{tuple(student_logits.shape)} differ: the two models need the same vocabulary "
                          f"(teacher {teacher_logits.size(-1)} tokens, student {V})")
    z_s = _at_least_fp32(student_logits).reshape(-1, V)
    if alpha > 0:
        z_t = _at_least_fp32(teacher_logits.detach()).reshape(-1, V).to(z_s.dtype)
        log_p_s = F.log_softmax(z_s / temperature, dim=-1)
        log_p_t = F.log_softmax(z_t / temperature, dim=-1)
        if reverse:  # KL(p_s ‖ p_t) = Σ p_s (log p_s − log p_t)
            kl = (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1)
        else:  # KL(p_t ‖ p_s) = Σ p_t (log p_t − log p_s)
            kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
        soft = alpha * temperature ** 2 * kl.mean()
        if alpha == 1:
            return soft
    ce = F.cross_entropy(z_s, targets.reshape(-1))  # the same call as groundup.model.GPT's own loss
    if alpha == 0:
        return ce
    return soft + (1 - alpha) * ce


def freeze(teacher: torch.nn.Module) -> torch.nn.Module:
    """Eval mode (no dropout) and no gradients for any of its parameters."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def teacher_forward(teacher: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The frozen teacher's logits for a batch of inputs (no_grad, eval mode, on x's device)."""
    if teacher.training:
        teacher.eval()
    device = next(teacher.parameters()).device
    if device != x.device:
        teacher.to(x.device)
    with torch.no_grad():
        return teacher(x)[0]


def distill_loss(teacher: torch.nn.Module, temperature: float, alpha: float, reverse: bool = False) -> Loss:
    """The training step's `loss(model, batch)` for distilling `teacher` into the model being trained:
    batch = (x, y); the student's logits model(x), the teacher's (frozen: no_grad, eval mode) on the
    same x, and distillation_loss of the two. α = 0 skips the teacher's forward pass."""
    check_recipe(temperature, alpha)
    freeze(teacher)

    def loss(model, batch):
        x, y = batch
        logits = model(x)[0]
        if alpha == 0:
            return distillation_loss(logits, logits, y, temperature, alpha, reverse)
        return distillation_loss(logits, teacher_forward(teacher, x), y, temperature, alpha, reverse)

    return loss
