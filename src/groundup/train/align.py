"""Preference losses as losses of the one training step (groundup.train.step).

A policy π scores a continuation y = ids[P:] of a prompt x = ids[:P] by its log-probability,
summed token by token (teacher forcing, one forward pass):

    log π(y | x) = Σ_{t ≥ P} log softmax(logits_{t−1})[ids_t]          (sequence_logprobs)

Reward model (Bradley & Terry 1952; Christiano et al. 2017; Ouyang et al. 2022): a scalar r(x, y)
trained on pairs where y_w was preferred to y_l, P(y_w ≻ y_l) = σ(r_w − r_l):

    L_BT = −E log σ(r(x, y_w) − r(x, y_l))                               (bradley_terry_loss)

DPO (Rafailov et al. 2023, eq. 7): the KL-regularised optimum π* ∝ π_ref·exp(r/β) turned round,
r = β·log(π/π_ref) + β·log Z(x), put into the same Bradley–Terry likelihood (Z cancels):

    L_DPO = −E log σ( β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))] )

(trl's DPOTrainer, loss_type="sigmoid", computes the same number: tests/test_align_losses.py).
`reward_model_loss` and `dpo_step_loss` wrap them as the `loss(model, batch)` the step takes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from groundup.errors import ConfigError
from groundup.train.distill import freeze
from groundup.train.step import Loss


def check_beta(beta: float) -> float:
    """β > 0 (a finite number), else one clear ConfigError."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta < float("inf"):
        raise ConfigError(f"beta (the KL weight β) must be a positive number, e.g. 0.1; got {beta!r}")
    return float(beta)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    logits = out[0] if isinstance(out, tuple) else out
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def continuation_mask(shape: tuple[int, int], prompt_len: int | torch.Tensor, device=None) -> torch.Tensor:
    """(B, T−1) bool: True where position t predicts a continuation token, t + 1 ≥ prompt_len."""
    B, T = shape
    target_pos = torch.arange(1, T, device=device).unsqueeze(0)  # index of the token predicted at t
    P = torch.as_tensor(prompt_len, device=device).reshape(-1, 1)
    if bool((P < 1).any()) or bool((P > T).any()):
        raise ConfigError(f"prompt_len must be between 1 and the sequence length {T}, got {prompt_len!r}")
    return (target_pos >= P).expand(B, T - 1)


def token_logprobs(model, ids: torch.Tensor, prompt_len: int | torch.Tensor) -> torch.Tensor:
    """(B, T−1): log π(ids[:, t+1] | ids[:, :t+1]) at every position t, 0 where ids[:, t+1] is part of
    the prompt (t + 1 < prompt_len; prompt_len an int or one per row)."""
    logits = _logits(model, ids)[:, :-1]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = continuation_mask(tuple(ids.shape), prompt_len, ids.device)
    return logp.masked_fill(~mask, 0.0)


def sequence_logprobs(model, ids: torch.Tensor, prompt_len: int | torch.Tensor) -> torch.Tensor:
    """(B,): log π(continuation | prompt) = Σ of token_logprobs over the continuation tokens."""
    return token_logprobs(model, ids, prompt_len).sum(dim=-1)


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """mean −log σ(r_w − r_l) over the pairs: the negative log-likelihood of the labels under
    Bradley–Terry, P(w ≻ l) = σ(r_w − r_l)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """mean −log σ(β·[(π_w − ref_w) − (π_l − ref_l)]) on sequence log-probabilities (Rafailov et al.
    2023, eq. 7); β > 0."""
    beta = check_beta(beta)
    margin = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def reward_model_loss() -> Loss:
    """The step's loss for a reward model r (ids (B, T) → (B,)): batch = (chosen_ids, rejected_ids),
    both (B, T) prompt + continuation; bradley_terry_loss(r(chosen), r(rejected)) from one forward
    pass over the 2B sequences."""

    def loss(model, batch):
        chosen, rejected = batch[0], batch[1]
        r = model(torch.cat([chosen, rejected]))
        r = r if r.dtype in (torch.float32, torch.float64) else r.float()  # bf16 under autocast → fp32; fp64 stays
        return bradley_terry_loss(r[:len(chosen)], r[len(chosen):])

    return loss


def dpo_step_loss(reference: torch.nn.Module, beta: float) -> Loss:
    """The step's loss for DPO against the frozen `reference`: batch = (chosen_ids, rejected_ids,
    prompt_len), ids (B, T); the policy's sequence log-probs with gradient, the reference's under
    no_grad, and dpo_loss of the four."""
    beta = check_beta(beta)
    freeze(reference)

    def loss(model, batch):
        chosen, rejected, prompt_len = batch
        ids = torch.cat([chosen, rejected])
        P = torch.cat([prompt_len, prompt_len]) if isinstance(prompt_len, torch.Tensor) else prompt_len
        pi = sequence_logprobs(model, ids, P)
        with torch.no_grad():
            ref = sequence_logprobs(reference, ids, P)
        n = len(chosen)
        return dpo_loss(pi[:n], pi[n:], ref[:n], ref[n:], beta)

    return loss
