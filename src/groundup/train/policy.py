"""Policy gradient with a KL penalty, as a loss of the one training step (groundup.train.step).

Objective (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022), per prompt x:

    J(θ) = E_{y~π_θ}[ r(x, y) ] − β · KL(π_θ(·|x) ‖ π_ref(·|x))
         = E_{y~π_θ}[ R(x, y) ],    R = r(x, y) − β · Σ_t log( π_θ(y_t|x, y_<t) / π_ref(y_t|x, y_<t) )

the per-token KL penalty folded into the return (kl_penalised_return). Its gradient, by the score
function (REINFORCE, Williams 1992), with R held constant:

    ∇J = E_{y~π_θ}[ (R − b) · ∇ Σ_t log π_θ(y_t|x, y_<t) ]

(the −β·∇log π_θ term that R's own dependence on θ adds has expectation E[∇ log π_θ] = 0, and any b
that does not depend on y leaves the expectation unchanged). The loss whose gradient is −∇J on a
batch of samples is

    L = −mean_i  A_i · Σ_t log π_θ(y_{i,t} | x_i, y_{i,<t}),    A_i = R_i − b_i      (reinforce_loss)

Baseline: leave-one-out (RLOO; Kool, van Hoof & Welling 2019; Ahmadian et al. 2024): k samples per
prompt, b_i = mean of the OTHER k − 1 returns of the same prompt, so b_i is independent of y_i and
the estimate stays unbiased (leave_one_out_advantages).

Why REINFORCE with RLOO and not PPO-clip with a value head: groundup.align.rl takes ONE train_step
per batch of fresh samples, so every update is exactly on-policy: PPO's importance ratio
π_θ/π_θ_old is 1 at the update and its clip never acts; clipping and a value head pay only when a
batch is reused for several epochs. RLOO needs no second network (no critic to train, no critic
bias), its baseline is unbiased, and Ahmadian et al. (2024) find it matches PPO for RLHF-style
fine-tuning. The cost is variance, which k samples per prompt keep in check.
"""

from __future__ import annotations

import torch

from groundup.errors import ConfigError
from groundup.train.align import check_beta, sequence_logprobs
from groundup.train.step import Loss


def kl_penalised_return(reward: torch.Tensor, logp_pi: torch.Tensor, logp_ref: torch.Tensor,
                        beta: float) -> torch.Tensor:
    """R = r − β·Σ_t (log π(y_t|·) − log π_ref(y_t|·)): reward (B,), per-token log-probs (B, T)
    (0 outside the continuation, as groundup.train.align.token_logprobs gives them), or already
    summed (B,). Constants to the loss: pass detached values."""
    beta = check_beta(beta)
    log_ratio = logp_pi - logp_ref
    if log_ratio.ndim == 2:
        log_ratio = log_ratio.sum(dim=-1)
    return reward - beta * log_ratio


def leave_one_out_advantages(returns: torch.Tensor) -> torch.Tensor:
    """A_{g,i} = R_{g,i} − (Σ_j R_{g,j} − R_{g,i}) / (k − 1) for returns (G, k): k ≥ 2 samples of
    each of G prompts; the baseline of each sample is the mean of its prompt's other samples."""
    if returns.ndim != 2 or returns.shape[1] < 2:
        raise ConfigError(f"a leave-one-out baseline needs at least 2 samples per prompt, got returns of shape "
                          f"{tuple(returns.shape)} (prompts, samples per prompt)")
    k = returns.shape[1]
    baseline = (returns.sum(dim=1, keepdim=True) - returns) / (k - 1)
    return returns - baseline


def reinforce_loss(prompt_len: int) -> Loss:
    """The step's loss(model, batch) for REINFORCE: batch = (ids (B, P + L), advantages (B,)) with
    the advantages constants (detached); L = −mean_i A_i · log π_θ(y_i | x_i) (sequence log-prob
    of the continuation after the first prompt_len tokens)."""

    def loss(model, batch):
        ids, advantages = batch
        logp = sequence_logprobs(model, ids, prompt_len)
        return -(advantages.detach().to(logp.dtype) * logp).mean()

    return loss
