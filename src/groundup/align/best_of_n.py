"""Best-of-n: draw n continuations from π_ref, keep the one the reward likes best. The baseline
every tuned policy must beat at the same KL (Stiennon et al. 2020; Nakano et al. 2021; Gao et al.
2022), with no training at all.

Its KL from π_ref, as usually quoted (Stiennon et al. 2020, App. G.3; Gao et al. 2022, §2):

    KL(π_bon ‖ π_ref) = log n − (n − 1) / n                                 (analytic_kl)

That formula assumes every continuation has its own reward and a vanishing share of π_ref's mass
(a continuous reward distribution). Exactly, on a finite set of outcomes with π_ref masses p_i and
rewards r_i (the sample kept is the first of the n with the highest reward, so among outcomes that
tie on reward each wins in proportion to p_i): with F(v) = P_ref(r ≤ v) and F(v⁻) = P_ref(r < v),

    P(the kept reward = v) = F(v)^n − F(v⁻)^n,     π_bon(i) = p_i / P_ref(r = r_i) · that   (exact_best_of_n)

and KL(π_bon ‖ π_ref) ≤ log n − (n − 1)/n always (Beirami et al. 2024): the formula is an upper
bound, reached as the largest p_i → 0 with distinct rewards; ties in the reward (e.g. many
continuations with no sentiment word, all scoring 0) lower the true KL well below it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from groundup.align.gold import DEFAULT_LENGTH
from groundup.align.kl import categorical_kl
from groundup.align.preferences import DEFAULT_PROMPT_LEN
from groundup.align.rl import load_reward
from groundup.align.runs import load_policy, prompts_from_corpus, sample_continuations, weights_sha256
from groundup.errors import GroundupError
from groundup.util.files import atomic_write_json
from groundup.util.progress import Progress

Reward = Callable[[torch.Tensor, int], torch.Tensor]


def check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise GroundupError(f"best-of-n needs n ≥ 1 samples per prompt, got {n!r}")
    return n


def analytic_kl(n: int) -> float:
    """log n − (n − 1)/n nats: best-of-n's KL from π_ref for a continuous reward (an upper bound)."""
    check_n(n)
    return math.log(n) - (n - 1) / n


def exact_best_of_n(probs, rewards, n: int) -> np.ndarray:
    """π_bon over a finite set of outcomes with π_ref masses `probs` and rewards `rewards` (ties:
    each tied outcome wins in proportion to its mass, as keeping the first best of n iid draws does)."""
    check_n(n)
    p = np.asarray(probs, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    if p.shape != r.shape or p.ndim != 1 or (p < 0).any() or not math.isclose(p.sum(), 1.0, rel_tol=0, abs_tol=1e-9):
        raise GroundupError("exact_best_of_n takes a probability vector and one reward per outcome")
    values, inverse = np.unique(r, return_inverse=True)  # ascending reward levels
    mass = np.bincount(inverse, weights=p, minlength=len(values))  # P_ref(r = v)
    below = np.concatenate([[0.0], np.cumsum(mass)[:-1]])  # F(v⁻)
    upto = np.minimum(below + mass, 1.0)  # F(v)
    kept = upto ** n - below ** n  # P(the kept reward = v)
    share = np.divide(p, mass[inverse], out=np.zeros_like(p), where=mass[inverse] > 0)
    return kept[inverse] * share


def exact_kl(probs, rewards, n: int) -> float:
    """KL(π_bon ‖ π_ref) exactly, from exact_best_of_n."""
    return categorical_kl(exact_best_of_n(probs, rewards, n), probs)


def select_best(rewards: torch.Tensor) -> torch.Tensor:
    """(B, n) rewards → (B,) index of the first sample with the highest reward in each row."""
    return torch.as_tensor(rewards).argmax(dim=1)


def tied_fraction(rewards: torch.Tensor) -> float:
    """Fraction of the draws (B, n) whose reward equals another draw's of the same prompt: when it is
    large, log n − (n − 1)/n overstates best-of-n's KL (see exact_best_of_n)."""
    r = torch.as_tensor(rewards)
    same = (r.unsqueeze(2) == r.unsqueeze(1)).sum(dim=2) > 1  # (B, n): another draw has this reward
    return float(same.float().mean())


def best_of_n(model, reward: Reward, prompts: torch.Tensor, n: int, length: int, seed: int,
              temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """For each prompt (B, P): n continuations from `model`, scored. Returns (the kept ids (B, P + L),
    every reward (B, n), in the order drawn)."""
    check_n(n)
    prompts = torch.as_tensor(prompts, dtype=torch.long)
    B, P = prompts.shape
    ids = sample_continuations(model, prompts.repeat_interleave(n, dim=0), length, seed, temperature)
    rewards = reward(ids, P).float().reshape(B, n)
    best = select_best(rewards)
    return ids.reshape(B, n, -1)[torch.arange(B), best], rewards


def best_of_n_run(policy_run, reward_source: str, n: int, *, prompts: int = 64, prompt_len: int = DEFAULT_PROMPT_LEN,
                  length: int = DEFAULT_LENGTH, seed: int = 0, out=None, device: str = "cpu", progress: bool = True,
                  say=print) -> dict:
    """Best-of-n from the run `policy_run` under --reward on `prompts` val prompts: the mean reward
    of one sample (n = 1) and of the best of n, with the gold score of each when the reward is a
    model, and the analytic KL. Writes the summary (and the kept samples) to `out` (JSON) if given."""
    check_n(n)
    if out is not None and Path(out).exists():
        raise GroundupError(f"--out {out} already exists; choose a new file (nothing was overwritten)")
    model, tokenizer, config = load_policy(policy_run, device)
    if prompt_len + length > model.config.block_size:
        raise GroundupError(f"--prompt-len {prompt_len} + --length {length} tokens exceed the policy's context of "
                            f"{model.config.block_size}; shorten one")
    reward, reward_info = load_reward(reward_source, tokenizer, device)
    gold, _ = load_reward("gold", tokenizer, device)
    x = prompts_from_corpus(tokenizer, config.data.corpus, prompts, prompt_len, seed)
    kept, all_rewards, gold_kept, gold_first = [], [], [], []
    bar = Progress(len(x), desc=f"best-of-{n}", unit="prompt", enabled=progress)
    chunk = max(1, 256 // n)
    try:
        for k, start in enumerate(range(0, len(x), chunk)):
            ids, r = best_of_n(model, reward, x[start:start + chunk], n, length,
                               int(np.random.SeedSequence([seed, k]).generate_state(1)[0]))
            kept.append(ids)
            all_rewards.append(r)
            gold_kept.append(gold(ids, prompt_len))
            bar.update(len(ids))
    finally:
        bar.close()
    kept_ids, rewards = torch.cat(kept), torch.cat(all_rewards)
    summary = {
        "method": "best-of-n", "n": n, "reward": reward_info, "reference_run": str(Path(policy_run).resolve()),
        "reference_weights_sha256": weights_sha256(model), "prompts": len(x), "prompt_len": prompt_len,
        "length": length, "seed": seed,
        "reward_one_sample": float(rewards[:, 0].mean()),  # the first draw: a plain sample of π_ref
        "reward_best_of_n": float(rewards.max(dim=1).values.mean()),
        "gold_best_of_n": float(torch.cat(gold_kept).mean()),
        "kl_analytic": analytic_kl(n),
        "kl_note": "log n - (n-1)/n: an upper bound, exact only for a continuous reward (ties lower it)",
        "tied_draws": tied_fraction(rewards),
        "samples": [tokenizer.decode(row[prompt_len:].tolist()) for row in kept_ids[:16]],
    }
    if out is not None:
        atomic_write_json(out, summary)
    say(f"best-of-{n} from {policy_run} on {len(x)} prompts, reward {reward_info['source']}: "
        f"{summary['reward_one_sample']:+.4f} (one sample) → {summary['reward_best_of_n']:+.4f} (best of {n}); "
        f"gold of the kept samples {summary['gold_best_of_n']:+.4f}; KL ≤ log n − (n−1)/n = {analytic_kl(n):.4f} nats "
        f"({100 * summary['tied_draws']:.0f}% of the draws tie with another of their prompt: the more, the lower the "
        f"true KL)")
    return summary

