"""`groundup align dpo`: Direct Preference Optimisation (Rafailov et al. 2023) on preference pairs.

The KL-regularised objective J(π) = E[r(x, y)] − β·KL(π ‖ π_ref) has the maximiser
π*(y|x) = π_ref(y|x)·exp(r(x, y)/β)/Z(x); solved for r and put into Bradley–Terry, Z cancels:

    L_DPO(π) = −E log σ( β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))] )

so the policy is fitted to the pairs directly, no reward model and no sampling. Here π starts as a
copy of π_ref, π_ref is a second, frozen copy (eval mode, no gradients), and every update is one
train_step with groundup.train.align.dpo_step_loss (dropout off in both, as trl's
disable_dropout=True). β sets how far π may move: small β, far from π_ref; large β, close.

Reported, on the held-out pairs and on the training pairs, before and after:
    margin     = mean of (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))
                 (β·margin is the implicit reward margin; 0 at the start)
    accuracy   = P[margin > 0]
The run directory is a training run's (π is a GPT: `groundup sample --run OUT` works) plus
align.json: method, β, the reference run and its hashes (verified unchanged), the pairs, the numbers.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from groundup.align.preferences import read_preferences
from groundup.align.runs import (AlignSettings, PairBatches, build_engine, check_reference_unchanged, creating,
                                 fit_pairs, load_policy, new_run_dir, pair_tensors, reference_record, run_config,
                                 save_run, split_pairs, weights_sha256)
from groundup.config import RunConfig
from groundup.errors import GroundupError
from groundup.model import GPT
from groundup.train import checkpoint as ckpt
from groundup.train.align import check_beta, dpo_loss, dpo_step_loss, sequence_logprobs
from groundup.train.distill import freeze
from groundup.train.engine import TorchEngine
from groundup.util.device import pick_device
from groundup.util.metrics import MetricsLogger

METHOD = "dpo"
EVAL_BATCH = 256


@dataclass
class DPOStats:
    """The policy against the reference on a set of pairs (None when there are none)."""

    margin: float | None  # mean (π_w − ref_w) − (π_l − ref_l), sequence log-probs
    accuracy: float | None  # P[margin > 0]
    chosen_logratio: float | None  # mean log π(y_w) − log π_ref(y_w)
    rejected_logratio: float | None  # mean log π(y_l) − log π_ref(y_l)
    loss: float | None  # the DPO loss at β
    n: int


@torch.no_grad()
def _logprobs(model: torch.nn.Module, ids: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.cat([sequence_logprobs(model, ids[i:i + EVAL_BATCH].to(device), prompt_len[i:i + EVAL_BATCH].to(device))
                     .double().cpu() for i in range(0, len(ids), EVAL_BATCH)])
    model.train(was_training)
    return out


def dpo_stats(policy: torch.nn.Module, reference: torch.nn.Module, chosen: torch.Tensor, rejected: torch.Tensor,
              prompt_len: torch.Tensor, beta: float) -> DPOStats:
    """Margin, accuracy, log-ratios and loss of `policy` against `reference` on the pairs."""
    if len(chosen) == 0:
        return DPOStats(None, None, None, None, None, 0)
    pi_w, pi_l = _logprobs(policy, chosen, prompt_len), _logprobs(policy, rejected, prompt_len)
    ref_w, ref_l = _logprobs(reference, chosen, prompt_len), _logprobs(reference, rejected, prompt_len)
    margin = (pi_w - ref_w) - (pi_l - ref_l)
    return DPOStats(margin.mean().item(), (margin > 0).double().mean().item(), (pi_w - ref_w).mean().item(),
                    (pi_l - ref_l).mean().item(), dpo_loss(pi_w, pi_l, ref_w, ref_l, beta).item(), len(chosen))


@dataclass
class DPOTraining:
    policy: GPT  # the trained policy
    reference: GPT  # the frozen copy of π_ref it was trained against
    losses: list[float]
    before: DPOStats  # held-out, at the start (margin 0)
    held_out: DPOStats  # held-out, after training
    train: DPOStats  # the training pairs, after training
    engine: TorchEngine


def train_dpo(reference: GPT, pairs, beta: float, settings: AlignSettings, *, config: RunConfig | None = None,
              metrics: MetricsLogger | None = None, progress: bool = False) -> DPOTraining:
    """A policy initialised from `reference` trained with the DPO loss at β against a frozen copy of
    it, on the pairs not held out (settings.held_out, split by settings.seed). `reference` itself is
    not touched (both are copies). `config`: the reference's run config (AdamW settings; default:
    the defaults). In memory; dpo_run wraps it into a run directory."""
    beta = check_beta(beta)
    device = pick_device(settings.device)
    chosen, rejected, prompt_len = pair_tensors(pairs, reference.config.vocab_size, reference.config.block_size)
    train_idx, held_idx = split_pairs(len(pairs), settings.held_out, settings.seed)
    frozen = freeze(copy.deepcopy(reference).to(device))
    policy = copy.deepcopy(reference).to(device)
    for p in policy.parameters():
        p.requires_grad_(True)
    policy.eval()  # dropout off
    held = (chosen[held_idx], rejected[held_idx], prompt_len[held_idx])
    trained_on = (chosen[train_idx], rejected[train_idx], prompt_len[train_idx])
    before = dpo_stats(policy, frozen, *held, beta)
    engine = build_engine(policy, run_config(config or RunConfig(model=reference.config), settings), device)
    batches = PairBatches(trained_on, settings.batch_size, settings.seed, device)
    losses = fit_pairs(engine, dpo_step_loss(frozen, beta), batches, settings,
                       metrics or MetricsLogger(os.devnull, False), progress)
    return DPOTraining(policy, frozen, losses, before, dpo_stats(policy, frozen, *held, beta),
                       dpo_stats(policy, frozen, *trained_on, beta), engine)


def dpo_run(run_dir: str | os.PathLike, prefs: str | os.PathLike, out: str | os.PathLike, beta: float,
            settings: AlignSettings | None = None, progress: bool = True) -> dict:
    """DPO from the policy run `run_dir` (π_ref) on the pairs in `prefs` at β into the new run
    directory `out`; returns what align.json records."""
    beta = check_beta(beta)
    settings = settings or AlignSettings()
    out = new_run_dir(out)
    reference, tokenizer, config = load_policy(run_dir, settings.device)
    pairs, meta = read_preferences(prefs, tokenizer)
    record_ref = reference_record(run_dir, reference)
    with creating(out):
        result = train_dpo(reference, pairs, beta, settings, config=config, metrics=MetricsLogger(out / "metrics.jsonl"),
                           progress=progress)
        check_reference_unchanged(run_dir, reference, record_ref)
        if weights_sha256(result.reference) != record_ref["reference_weights_sha256"]:
            raise GroundupError("the frozen reference changed during DPO training; this is a bug in groundup")
        record = {"method": METHOD, "loss": "-log sigmoid(beta * ((log pi_w - log ref_w) - (log pi_l - log ref_l)))",
                  "beta": beta, **record_ref, "reward_source": "preferences (implicit reward beta * log pi/pi_ref)",
                  "preferences": str(Path(prefs).resolve()), "preferences_sha256": ckpt.sha256_bytes(Path(prefs).read_bytes()),
                  "preferences_meta": meta, "pairs": len(pairs), "settings": asdict(settings), "reference_unchanged": True,
                  "held_out_before": asdict(result.before), "held_out": asdict(result.held_out), "train": asdict(result.train),
                  "final_loss": result.losses[-1] if result.losses else None}
        save_run(out, result.engine, run_config(config, settings), tokenizer, settings.steps, record)
        if progress:
            h, t = result.held_out, result.train
            print(f"beta {beta:g}: margin (log-ratio chosen − rejected) on the training pairs {t.margin:+.3f}, "
                  + (f"held-out {h.margin:+.3f} (accuracy {100 * h.accuracy:.1f} %)" if h.n else "no held-out pairs"),
                  flush=True)
            print(f"wrote {out}/ (sample it with `groundup sample --run {out}`; reference "
                  f"{record_ref['reference_weights_sha256'][:12]}… unchanged)", flush=True)
    return record
