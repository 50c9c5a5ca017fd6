"""`groundup align reward`: a reward model r_φ trained on preference pairs.

    r_φ = RewardModel(π_ref)                       GPT trunk copied from π_ref + a scalar head
    L   = −E_{(x, y_w, y_l)} log σ(r_φ(x, y_w) − r_φ(x, y_l))      (Bradley–Terry; train/align.py)

trained through loop.fit / train_step on a seeded split of the pairs; the rest is held out:

    held-out accuracy  = P[r_φ(x, y_w) > r_φ(x, y_l)]                 against the (noisy) labels
    gold agreement     = P[sign(r_w − r_l) = sign(g_w − g_l)]         against the gold judge itself
                         (over pairs whose gold scores differ)
    label agreement    = P[sign(g_w − g_l) > 0]                       how often the noisy label follows gold

The run directory is a training run's (config.json: π_ref's model; model.safetensors: the trunk's
weights prefixed trunk. and the head's, head.) plus align.json: method, the reference run and its
hashes (verified unchanged at the end), the preference file and its SHA-256, the settings and the
numbers above. load_reward_model reads it back.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from groundup.align.preferences import read_preferences
from groundup.align.runs import (ALIGN, AlignSettings, PairBatches, build_engine, check_reference_unchanged, creating,
                                 fit_pairs, load_policy, new_run_dir, pair_tensors, reference_record, run_config,
                                 save_run, split_pairs)
from groundup.config import RunConfig
from groundup.errors import CheckpointError, GroundupError
from groundup.model import GPT
from groundup.model.reward import RewardModel
from groundup.tokenizer import load_tokenizer
from groundup.train import checkpoint as ckpt
from groundup.train.align import reward_model_loss
from groundup.util.device import pick_device
from groundup.util.metrics import MetricsLogger

METHOD = "reward-model"
EVAL_BATCH = 256


@dataclass
class RewardStats:
    """How well a reward model ranks pairs (fractions in [0, 1]; None when there are no pairs)."""

    accuracy: float | None  # r_w > r_l, against the labels
    gold_agreement: float | None  # sign(r_w − r_l) = sign(g_w − g_l), where gold differs
    label_agreement: float | None  # the labels' own agreement with gold (the noise in them)
    n: int


@torch.no_grad()
def rewards(model: torch.nn.Module, ids: torch.Tensor, batch: int = EVAL_BATCH) -> torch.Tensor:
    """r(ids) for every row (B,), in eval mode, batch by batch, on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.cat([model(ids[i:i + batch].to(device)).float().cpu() for i in range(0, len(ids), batch)]) \
        if len(ids) else torch.zeros(0)
    model.train(was_training)
    return out


def pair_stats(model: torch.nn.Module, chosen: torch.Tensor, rejected: torch.Tensor, gold_chosen: torch.Tensor,
               gold_rejected: torch.Tensor) -> RewardStats:
    """Accuracy against the labels and agreement with gold of r on the pairs (chosen, rejected)."""
    if len(chosen) == 0:
        return RewardStats(None, None, None, 0)
    margin = rewards(model, chosen) - rewards(model, rejected)
    gold = (gold_chosen - gold_rejected).float()
    differs = gold != 0
    agree = ((torch.sign(margin) == torch.sign(gold)) & differs).sum().item() / differs.sum().item() \
        if differs.any() else None
    label = (gold[differs] > 0).float().mean().item() if differs.any() else None
    return RewardStats((margin > 0).float().mean().item(), agree, label, len(chosen))


def gold_tensors(pairs) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor([float(p.gold_chosen) for p in pairs]), torch.tensor([float(p.gold_rejected) for p in pairs]))


@dataclass
class RewardTraining:
    model: RewardModel
    losses: list[float]
    before: RewardStats  # held-out, at initialisation
    held_out: RewardStats  # held-out, after training
    train: RewardStats  # the training pairs, after training
    engine: object


def train_reward_model(policy: GPT, pairs, settings: AlignSettings, *, config: RunConfig | None = None,
                       metrics: MetricsLogger | None = None, progress: bool = False, pool: str = "last") -> RewardTraining:
    """A RewardModel initialised from `policy` (copied: the policy is not changed), trained with the
    Bradley–Terry loss on the pairs not held out (settings.held_out, split by settings.seed).
    `config`: the policy's run config (its AdamW betas, weight decay, dtype; default: the defaults).
    `pool`: the head on the last token or on the mean over positions (groundup.model.reward).
    In memory; reward_run wraps it into a run directory."""
    device = pick_device(settings.device)
    chosen, rejected, _ = pair_tensors(pairs, policy.config.vocab_size, policy.config.block_size)
    g_w, g_l = gold_tensors(pairs)
    train_idx, held_idx = split_pairs(len(pairs), settings.held_out, settings.seed)
    torch.manual_seed(settings.seed)  # the head's initialisation
    model = RewardModel(policy, pool=pool).to(device)
    model.eval()  # dropout off
    held = lambda: pair_stats(model, chosen[held_idx], rejected[held_idx], g_w[held_idx], g_l[held_idx])  # noqa: E731
    before = held()
    engine = build_engine(model, run_config(config or RunConfig(model=policy.config), settings), device)
    batches = PairBatches((chosen[train_idx], rejected[train_idx]), settings.batch_size, settings.seed, device)
    losses = fit_pairs(engine, reward_model_loss(), batches, settings, metrics or MetricsLogger(os.devnull, False), progress)
    return RewardTraining(model, losses, before, held(),
                          pair_stats(model, chosen[train_idx], rejected[train_idx], g_w[train_idx], g_l[train_idx]), engine)


def reward_run(run_dir: str | os.PathLike, prefs: str | os.PathLike, out: str | os.PathLike,
               settings: AlignSettings | None = None, progress: bool = True, pool: str = "last") -> dict:
    """Train a reward model from the policy run `run_dir` on the pairs in `prefs` into the new run
    directory `out`; returns what align.json records (held-out accuracy, gold agreement, …)."""
    settings = settings or AlignSettings()
    out = new_run_dir(out)
    policy, tokenizer, config = load_policy(run_dir, settings.device)
    pairs, meta = read_preferences(prefs, tokenizer)
    reference = reference_record(run_dir, policy)
    with creating(out):
        result = train_reward_model(policy, pairs, settings, config=config, metrics=MetricsLogger(out / "metrics.jsonl"),
                                    progress=progress, pool=pool)
        check_reference_unchanged(run_dir, policy, reference)
        record = {"method": METHOD, "loss": "-log sigmoid(r(x, y_w) - r(x, y_l))  (Bradley-Terry)", "beta": None,
                  "pool": pool, **reference, "reward_source": "preferences", "preferences": str(Path(prefs).resolve()),
                  "preferences_sha256": ckpt.sha256_bytes(Path(prefs).read_bytes()), "preferences_meta": meta, "pairs": len(pairs),
                  "settings": asdict(settings), "reference_unchanged": True,
                  "held_out_before": asdict(result.before), "held_out": asdict(result.held_out), "train": asdict(result.train),
                  "final_loss": result.losses[-1] if result.losses else None}
        save_run(out, result.engine, run_config(config, settings), tokenizer, settings.steps, record)
        if progress:
            h = result.held_out
            print(f"held-out pairs: {h.n}; accuracy {_pct(h.accuracy)} (before training {_pct(result.before.accuracy)}); "
                  f"agreement with gold {_pct(h.gold_agreement)} (the labels' own: {_pct(h.label_agreement)})", flush=True)
            print(f"wrote {out}/ ({ALIGN}: reference {reference['reference_weights_sha256'][:12]}… unchanged)", flush=True)
    return record


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def load_reward_model(run_dir: str | os.PathLike, device: str = "cpu") -> tuple[RewardModel, object, dict]:
    """(RewardModel, tokenizer, align.json record) of a run written by reward_run, in eval mode."""
    run_dir = ckpt.check_run_dir(run_dir)
    path = run_dir / ALIGN
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: {run_dir} is not a reward-model run "
                              "(train one with `groundup align reward`)") from None
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is corrupt (not JSON)") from None
    if not isinstance(record, dict) or record.get("method") != METHOD:
        raise GroundupError(f"{run_dir} is not a reward-model run (align.json method "
                            f"{record.get('method') if isinstance(record, dict) else None!r})")
    directory, _ = ckpt.find_checkpoint(run_dir)
    config = ckpt.read_run_config(run_dir)
    model = RewardModel(GPT(config.model), pool=record.get("pool", "last"))
    model.load_weights(ckpt.read_tensors(directory / ckpt.WEIGHTS), str(directory / ckpt.WEIGHTS))
    tokenizer = load_tokenizer(run_dir / ckpt.TOKENIZER)
    return model.to(pick_device(device)).eval(), tokenizer, record
