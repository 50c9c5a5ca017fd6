"""`groundup align rl`: KL-regularised policy optimisation, sampling then updating (Ziegler et al.
2019). Starting from π_θ = π_ref, each step:

    x_1..x_G ~ the prompt pool;  y_{g,1..k} ~ π_θ(·|x_g)          (no gradient, temperature 1)
    r = reward(x, y)                                                (gold judge, or a reward-model run)
    R = r − β · Σ_t log(π_θ(y_t|·) / π_ref(y_t|·))                  (per-token KL penalty, folded in)
    A_{g,i} = R_{g,i} − mean_{j≠i} R_{g,j}                          (leave-one-out baseline)
    ONE train_step with L = −mean A · log π_θ(y|x)                  (groundup.train.policy)

and logs, on these same samples of the current policy: the mean reward, KL(π_θ ‖ π_ref) by k1 and
by k3 (groundup.align.kl; sequence sums), and J = mean R = mean r − β·k1. π_ref is a frozen copy;
its weights' hash is checked unchanged at the end. The policy stays in eval mode (no dropout), so
the samples and the log-probabilities come from the same π_θ.

A reward is a function (ids (B, P + L), prompt_len) → (B,) rewards: `gold_reward` (the VADER judge
of the decoded continuation, groundup.align.gold) or `model_reward` (a reward model r_φ: ids → (B,)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from groundup.align.gold import DEFAULT_LENGTH, GoldJudge
from groundup.align.kl import kl_k1, kl_k3
from groundup.align.preferences import DEFAULT_PROMPT_LEN
from groundup.align.reward import load_reward_model
from groundup.align.runs import (build_engine, check_reference_unchanged, creating, load_policy, new_run_dir,
                                 prompts_from_corpus, reference_record, sample_continuations, save_run, weights_sha256)
from groundup.config import RunConfig
from groundup.errors import ConfigError, GroundupError
from groundup.model import GPT
from groundup.train.align import check_beta, token_logprobs
from groundup.train.distill import freeze
from groundup.train.engine import TorchEngine
from groundup.train.loop import Hooks, fit
from groundup.train.policy import kl_penalised_return, leave_one_out_advantages, reinforce_loss
from groundup.train.step import StepResult
from groundup.util.metrics import MetricsLogger
from groundup.util.progress import Progress

Reward = Callable[[torch.Tensor, int], torch.Tensor]  # (ids (B, P + L), prompt_len) → rewards (B,)
METHOD = "rl"
PROMPT_POOL = 4096  # prompts drawn (seeded) from the corpus's train split; each step picks G of them


def gold_reward(tokenizer, judge: GoldJudge | None = None) -> Reward:
    """r(x, y) = the gold judge's score of the decoded continuation y = ids[:, prompt_len:]."""
    judge = judge or GoldJudge()

    def reward(ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
        return torch.tensor(judge.score_ids(tokenizer, ids[:, prompt_len:]), dtype=torch.float32)

    return reward


def model_reward(reward_model: torch.nn.Module) -> Reward:
    """r(x, y) = reward_model(prompt + continuation) (frozen, no gradient)."""
    freeze(reward_model)

    def reward(ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
        with torch.no_grad():
            return reward_model(ids.to(next(reward_model.parameters()).device)).float().cpu()

    return reward


@dataclass
class RLSettings:
    beta: float = 0.05  # weight of KL(π ‖ π_ref) in J
    steps: int = 100
    prompts_per_step: int = 8  # G
    samples_per_prompt: int = 4  # k ≥ 2 (the leave-one-out baseline)
    prompt_len: int = DEFAULT_PROMPT_LEN
    length: int = DEFAULT_LENGTH  # continuation tokens
    lr: float = 1e-4  # AdamW, no weight decay (the KL term is the regulariser, toward π_ref, not 0)
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self):
        check_beta(self.beta)
        for name in ("steps", "prompts_per_step", "prompt_len", "length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if isinstance(self.samples_per_prompt, bool) or not isinstance(self.samples_per_prompt, int) \
                or self.samples_per_prompt < 2:
            raise ConfigError(f"--samples-per-prompt must be at least 2 (the baseline of each sample is the mean "
                              f"of the other samples of its prompt), got {self.samples_per_prompt!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
            raise ConfigError(f"--lr must be a positive number, got {self.lr!r}")
        if isinstance(self.grad_clip, bool) or not isinstance(self.grad_clip, (int, float)) or not self.grad_clip >= 0:
            raise ConfigError(f"--grad-clip must be ≥ 0 (0 = no clipping), got {self.grad_clip!r}")


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def rl_config(config: RunConfig, settings: RLSettings) -> RunConfig:
    """The reference run's config with the RL run's training settings: constant lr, no warm-up, and
    no weight decay (the KL term is the regulariser, pulling toward π_ref; decay would pull toward 0)."""
    return config.replace(max_steps=settings.steps, learning_rate=settings.lr, min_lr=min(config.train.min_lr, settings.lr),
                          warmup_steps=0, weight_decay=0.0, batch_size=settings.prompts_per_step * settings.samples_per_prompt,
                          seed=settings.seed, grad_clip=float(settings.grad_clip))


def rl_optimize(policy: GPT, reference: GPT, reward: Reward, prompts: torch.Tensor, settings: RLSettings, *,
                config: RunConfig | None = None, on_step: Callable[[dict], None] | None = None,
                progress: bool = False) -> tuple[list[dict], TorchEngine]:
    """Tune `policy` in place for settings.steps steps (loop.fit → one train_step each); `reference`
    is π_ref (frozen here). prompts: (N, P) pool; config: the run config whose [train] gives AdamW's
    betas and the kernels switch (default: the defaults). Returns (one record per step, the engine).

    Each record: step, reward (mean r), kl_k1, kl_k3 (mean per-sequence KL estimates), J (mean R),
    loss, grad_norm — all on the samples that step drew from π_θ before its update."""
    s = settings
    prompts = torch.as_tensor(prompts, dtype=torch.long)
    if prompts.ndim != 2 or prompts.shape[1] != s.prompt_len:
        raise ConfigError(f"the prompt pool has shape {tuple(prompts.shape)}, expected (N, {s.prompt_len})")
    if s.prompt_len + s.length > policy.config.block_size:
        raise ConfigError(f"--prompt-len {s.prompt_len} + --length {s.length} tokens exceed the policy's context of "
                          f"{policy.config.block_size}; shorten one")
    freeze(reference)
    device = next(policy.parameters()).device
    engine = build_engine(policy, rl_config(config or RunConfig(model=policy.config), s), device)
    pick = np.random.default_rng(np.random.SeedSequence([s.seed, 2 ** 31]))
    G, k, P = s.prompts_per_step, s.samples_per_prompt, s.prompt_len
    records: list[dict] = []
    measured: dict = {}

    def next_batch():
        x = prompts[torch.from_numpy(pick.integers(0, len(prompts), size=G))].repeat_interleave(k, dim=0)
        ids = sample_continuations(policy, x, s.length, _step_seed(s.seed, len(records)))
        ids = ids.clone().to(device)  # out of inference mode: the loss differentiates through it
        with torch.no_grad():
            logp = token_logprobs(policy, ids, P)
            logp_ref = token_logprobs(reference, ids, P)
        r = reward(ids, P).to(device=device, dtype=logp.dtype)
        R = kl_penalised_return(r, logp, logp_ref, s.beta)
        advantages = leave_one_out_advantages(R.view(G, k)).flatten()
        measured.update(reward=float(r.mean()), kl_k1=float(kl_k1(logp, logp_ref).sum(-1).mean()),
                        kl_k3=float(kl_k3(logp, logp_ref).sum(-1).mean()), J=float(R.mean()))
        return ids, advantages

    bar = Progress(s.steps, desc=f"rl β={s.beta:g}", enabled=progress)

    class Log(Hooks):
        def after_step(self, step: int, result: StepResult) -> int:
            record = {"step": step, **measured, "loss": result.loss, "grad_norm": result.grad_norm}
            records.append(record)
            bar.update(1, reward=record["reward"], kl=record["kl_k1"], J=record["J"])
            if on_step is not None:
                on_step(record)
            return step

    try:
        fit(engine, next_batch, s.steps, lr=s.lr, grad_clip=s.grad_clip, loss=reinforce_loss(P), hooks=Log())
    finally:
        bar.close()
    return records, engine


def load_reward(source: str, tokenizer, device: str = "cpu") -> tuple[Reward, dict]:
    """(reward function, its description for align.json) of --reward: 'gold' (the judge itself) or a
    reward-model run directory."""
    if source == "gold":
        return gold_reward(tokenizer), {"source": "gold", "judge": GoldJudge.name}
    path = Path(source)
    if not path.is_dir():
        raise GroundupError(f"unknown reward source {source!r}: give 'gold' (the sentiment judge itself) or a "
                            f"reward-model run directory made by `groundup align reward`")
    model, rm_tokenizer, record = load_reward_model(path, device)
    if tokenizer is not None and rm_tokenizer.fingerprint != tokenizer.fingerprint:
        raise GroundupError(f"the reward model {source} reads another tokenizer ({rm_tokenizer.kind}, vocab "
                            f"{rm_tokenizer.vocab_size}) than the policy ({tokenizer.kind}, vocab {tokenizer.vocab_size}): "
                            f"its scores would be of other text; train the reward model on this policy's preferences")
    return model_reward(model), {"source": "reward-model", "run": str(path.resolve()),
                                 "weights_sha256": weights_sha256(model), "reference": record.get("reference")}


def rl_run(policy_run, reward_source: str, out, settings: RLSettings, *, device: str = "cpu",
           progress: bool = True, say=print) -> dict:
    """Tune the run `policy_run` (π_ref) toward `reward_source` into the new run directory `out`;
    returns the recipe written to out/align.json (with the last step's measurements)."""
    policy_run, out = Path(policy_run), new_run_dir(out)
    policy, tokenizer, config = load_policy(policy_run, device)
    reference, _, _ = load_policy(policy_run, device)
    reward, reward_info = load_reward(reward_source, tokenizer, device)
    ref = reference_record(policy_run, reference)
    prompts = prompts_from_corpus(tokenizer, config.data.corpus, PROMPT_POOL, settings.prompt_len, settings.seed,
                                  split="train")
    cfg = rl_config(config, settings)
    with creating(out):
        metrics = MetricsLogger(out / "metrics.jsonl")
        records, engine = rl_optimize(policy, reference, reward, prompts, settings, config=cfg,
                                      on_step=lambda record: metrics.log(**record), progress=progress)
        check_reference_unchanged(policy_run, reference, ref)
        recipe = {
            "method": METHOD,
            "algorithm": "REINFORCE with a leave-one-out baseline; per-token KL penalty folded into the return "
                         "(Ziegler et al. 2019): R = r - beta * sum_t log(pi/pi_ref)",
            "beta": settings.beta,
            **ref,
            "reference_unchanged": True,
            "reward": reward_info,
            "settings": asdict(settings),
            "prompts": {"corpus": config.data.corpus, "split": "train", "pool": PROMPT_POOL},
            "final": records[-1],
        }
        save_run(out, engine, cfg, tokenizer, settings.steps, recipe)
    first, last = records[0], records[-1]
    say(f"rl β={settings.beta:g}, {settings.steps} steps → {out}")
    say(f"reward {first['reward']:+.4f} → {last['reward']:+.4f};  KL(π‖π_ref) k1 {last['kl_k1']:.4f}, "
        f"k3 {last['kl_k3']:.4f} nats;  J {first['J']:+.4f} → {last['J']:+.4f}  (on each step's own samples)")
    say(f"π_ref unchanged (weights sha256 {ref['reference_weights_sha256'][:12]}…)")
    return recipe
