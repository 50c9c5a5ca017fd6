"""The exact optimum of the KL-regularised objective, on a setting small enough to enumerate.

For one prompt x the objective of a policy π is

    J(π) = E_{y~π}[r(x, y)] − β·KL(π(·|x) ‖ π_ref(·|x))

and its maximiser over all distributions on continuations y is (Rafailov et al. 2023, eq. 4;
the Gibbs variational principle)

    π*(y|x) = π_ref(y|x)·exp(r(x, y)/β) / Z(x),      Z(x) = Σ_y π_ref(y|x)·exp(r(x, y)/β)
    J(π*)   = β·log Z(x)
    J(π*) − J(π) = β·KL(π ‖ π*) ≥ 0                   for every π (the gap of a method to the optimum)

With a vocabulary of V tokens and continuations of L tokens there are V^L continuations (a char
model, L = 2: 65² = 4,225), so every term above is a finite sum: π_ref(y|x) exactly as the product of
the model's conditionals, r(x, y) for every y, then π*, Z, E_π*[r] and KL(π*‖π_ref) without sampling.
Sweeping β gives the exact reward–KL frontier no sampled method can beat; `exact_objective` places
any policy model on it (J, E[r] and KL by enumeration).

Best-of-n from π_ref has an exact distribution too (groundup.align.best_of_n.exact_best_of_n, applied
to each prompt's table): its KL to π_ref is at most log n − (n − 1)/n, tight only when π_ref has no
large atoms; `best_of_n` puts the two side by side on the enumerable set.

Tables are (n_prompts, V^L) tensors in float64, continuation index k = Σ_i y_i·V^(L−1−i) (the first
token varies slowest), the order of `all_continuations`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from groundup.align.best_of_n import analytic_kl, exact_best_of_n
from groundup.align.kl import categorical_kl
from groundup.errors import GroundupError
from groundup.train.align import check_beta

MAX_CONTINUATIONS = 2_000_000  # V^L above this is not "enumerable" on a CPU in seconds


def all_continuations(vocab_size: int, length: int) -> torch.Tensor:
    """Every continuation of `length` tokens over `vocab_size` ids: (V^L, L), first token slowest."""
    if vocab_size < 1 or length < 1:
        raise GroundupError(f"an enumerable setting needs a vocabulary ≥ 1 and a length ≥ 1, got V={vocab_size}, L={length}")
    if vocab_size**length > MAX_CONTINUATIONS:
        raise GroundupError(f"V^L = {vocab_size}^{length} = {vocab_size**length:,} continuations is too many to "
                            f"enumerate (at most {MAX_CONTINUATIONS:,}); use a shorter continuation length")
    grids = torch.meshgrid(*[torch.arange(vocab_size)] * length, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def _as_prompts(prompts) -> torch.Tensor:
    prompts = torch.as_tensor(prompts, dtype=torch.long)
    if prompts.ndim == 1:
        prompts = prompts[None]
    if prompts.ndim != 2 or prompts.shape[1] < 1 or prompts.shape[0] < 1:
        raise GroundupError(f"prompts must be (n, P) token ids with n, P ≥ 1, got shape {tuple(prompts.shape)}")
    return prompts


@torch.no_grad()
def continuation_logprobs(model, prompts, length: int, chunk: int = 4096) -> torch.Tensor:
    """log π(y|x) = Σ_t log π(y_t | x, y_<t) for every prompt x (rows of `prompts`, (n, P)) and every
    continuation y of `length` tokens: (n, V^L) float64, each row's exp summing to 1.

    One forward pass per prefix: the V^(L−1) prefixes x·y_<L (length P + L − 1) give, at positions
    P − 1 … P + L − 2, every conditional the product needs."""
    prompts = _as_prompts(prompts)
    V = model.config.vocab_size
    P = prompts.shape[1]
    if P + length - 1 > model.config.block_size:
        raise GroundupError(f"prompt ({P}) + continuation ({length}) − 1 tokens exceed the model's context "
                            f"window {model.config.block_size}; use shorter prompts")
    ys = all_continuations(V, length)  # (V^L, L)
    prefixes = all_continuations(V, length - 1) if length > 1 else torch.zeros(1, 0, dtype=torch.long)
    prefix_of = torch.div(torch.arange(ys.shape[0]), V, rounding_mode="floor")  # index of y_<L among prefixes
    was = model.training
    model.eval()
    device = model.lm_head.weight.device
    out = torch.empty(prompts.shape[0], ys.shape[0], dtype=torch.float64)
    for i, x in enumerate(prompts):
        cond = []  # (n_prefixes, L, V): log π(· | x, prefix_<t) at step t
        for start in range(0, prefixes.shape[0], chunk):
            p = prefixes[start:start + chunk]
            ids = torch.cat([x.expand(p.shape[0], P), p], dim=1).to(device)
            logits = model(ids)[0][:, P - 1:].double()
            cond.append(torch.log_softmax(logits, dim=-1).cpu())
        cond = torch.cat(cond)  # (n_prefixes, L, V)
        rows = cond[prefix_of]  # (V^L, L, V)
        out[i] = rows.gather(2, ys[:, :, None]).squeeze(2).sum(1)
    model.train(was)
    return out


def reward_table(reward: Callable[[torch.Tensor], torch.Tensor | Sequence[float]], prompts, vocab_size: int,
                 length: int, chunk: int = 4096) -> torch.Tensor:
    """r(x, y) for every prompt and every continuation: (n, V^L) float64. `reward(ids)` takes (B, P + L)
    token ids (prompt + continuation) and returns B rewards: a RewardModel, the gold judge behind a
    decoder (`lambda ids: judge.score([decode(row[P:]) for row in ids])`), or a planted toy reward."""
    prompts = _as_prompts(prompts)
    ys = all_continuations(vocab_size, length)
    out = torch.empty(prompts.shape[0], ys.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for i, x in enumerate(prompts):
            for start in range(0, ys.shape[0], chunk):
                y = ys[start:start + chunk]
                ids = torch.cat([x.expand(y.shape[0], x.shape[0]), y], dim=1)
                values = torch.as_tensor(reward(ids), dtype=torch.float64).reshape(-1).cpu()
                if values.shape[0] != y.shape[0]:
                    raise GroundupError(f"the reward returned {values.shape[0]} values for {y.shape[0]} sequences")
                out[i, start:start + y.shape[0]] = values
    if not torch.isfinite(out).all():
        raise GroundupError("the reward returned a non-finite value on some continuation")
    return out


def log_partition(logp_ref: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """log Z(x) = log Σ_y π_ref(y|x)·exp(r(x, y)/β), per prompt (n,)."""
    check_beta(beta)
    return torch.logsumexp(logp_ref + rewards / beta, dim=-1)


def optimal_logprobs(logp_ref: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """log π*(y|x) = log π_ref(y|x) + r(x, y)/β − log Z(x): (n, V^L)."""
    return logp_ref + rewards / beta - log_partition(logp_ref, rewards, beta)[:, None]


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) per row (align.kl.categorical_kl, 0·log 0 = 0): (n,)."""
    return torch.tensor([categorical_kl(a.exp(), b.exp()) for a, b in zip(logp, logq)], dtype=torch.float64)


def objective(logp: torch.Tensor, logp_ref: torch.Tensor, rewards: torch.Tensor, beta: float) -> dict:
    """J = E_π[r] − β·KL(π‖π_ref), exactly, for the policy whose table is `logp` (n, V^L); the per-prompt
    values and their means over prompts. Also KL(π‖π*) (= (J(π*) − J(π))/β, the gap)."""
    check_beta(beta)
    p = logp.exp()
    reward = (p * rewards).sum(-1)
    kl = _kl(logp, logp_ref)
    J = reward - beta * kl
    J_star = beta * log_partition(logp_ref, rewards, beta)
    kl_to_star = _kl(logp, optimal_logprobs(logp_ref, rewards, beta))
    return {"J": J.mean().item(), "reward": reward.mean().item(), "kl": kl.mean().item(),
            "J_star": J_star.mean().item(), "gap": (J_star - J).mean().item(),
            "kl_to_optimum": kl_to_star.mean().item(),
            "per_prompt": {"J": J.tolist(), "reward": reward.tolist(), "kl": kl.tolist(), "J_star": J_star.tolist()}}


def optimum(logp_ref: torch.Tensor, rewards: torch.Tensor, beta: float) -> dict:
    """π* at β: J(π*) = β·log Z (mean over prompts), E_π*[r], KL(π*‖π_ref), and the table itself."""
    logp = optimal_logprobs(logp_ref, rewards, beta)
    result = objective(logp, logp_ref, rewards, beta)
    result["beta_log_z"] = (beta * log_partition(logp_ref, rewards, beta)).mean().item()
    result["logp"] = logp
    return result


def frontier(logp_ref: torch.Tensor, rewards: torch.Tensor, betas: Sequence[float]) -> dict:
    """The exact reward–KL frontier: for each β, E_π*[r], KL(π*‖π_ref) and J(π*) (means over prompts).
    As β falls the optimum trades KL for reward: both rise (Gibbs: d E_π*[r]/d(1/β) = Var_π*[r] ≥ 0)."""
    out = {"beta": [], "reward": [], "kl": [], "J": []}
    for beta in betas:
        o = optimum(logp_ref, rewards, beta)
        out["beta"].append(float(beta))
        out["reward"].append(o["reward"])
        out["kl"].append(o["kl"])
        out["J"].append(o["J"])
    out["reward_ref"] = (logp_ref.exp() * rewards).sum(-1).mean().item()
    out["reward_max"] = rewards.max(-1).values.mean().item()
    return out


def exact_objective(policy_model, prompts, length: int, logp_ref: torch.Tensor, rewards: torch.Tensor,
                    beta: float) -> dict:
    """J, E[r], KL(π‖π_ref) and the gap to J(π*) of any policy model, by enumerating its continuations."""
    return objective(continuation_logprobs(policy_model, prompts, length), logp_ref, rewards, beta)


def best_of_n_distribution(logp_ref: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """log P(best-of-n = y | x) for every prompt row: draw n continuations from π_ref, keep the highest
    reward (ties: the first drawn), by align.best_of_n.exact_best_of_n. (n_prompts, V^L); −inf where
    the probability is 0."""
    rows = [torch.from_numpy(exact_best_of_n(p, r, n)) for p, r in zip(logp_ref.exp().numpy(), rewards.numpy())]
    return torch.stack(rows).log()


def best_of_n(logp_ref: torch.Tensor, rewards: torch.Tensor, n: int) -> dict:
    """Exact E[r] and KL(best-of-n ‖ π_ref) of best-of-n (means over prompts), with the analytic bound."""
    logp = best_of_n_distribution(logp_ref, rewards, n)
    p = logp.exp()
    return {"n": n, "reward": (p * rewards).sum(-1).mean().item(), "kl": _kl(logp, logp_ref).mean().item(),
            "kl_bound": analytic_kl(n)}
