"""Run-directory helpers shared by every alignment method.

    load_policy(run)            (model, tokenizer, config) of a trained run: π_ref, or a policy to tune
    weights_sha256(model)       a fingerprint of the weights in memory: π_ref is checked unchanged
    sample_continuations(...)   prompt + `length` sampled tokens per row (sample.generate_batch)
    prompts_from_corpus(...)    n prompts of prompt_len tokens, windows of a corpus split
    pair_tensors, split_pairs   preference pairs → (chosen, rejected, prompt_len) tensors; held-out split
    AlignSettings, fit_pairs    how a pairwise method trains: loop.fit with the method's loss
    new_run_dir, creating,      a run directory like a training run's, plus align.json
    save_run
    reference_record            π_ref's run, step and hashes, and the check that they did not change
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from groundup.config import RunConfig
from groundup.data.corpora import Corpus, load_corpus
from groundup.data.tokens import prepare_in_cache
from groundup.errors import ConfigError, GroundupError
from groundup.model import GPT
from groundup.sample import generate_batch, load_run
from groundup.train import checkpoint as ckpt
from groundup.train.engine import TorchEngine
from groundup.train.loop import Hooks, fit
from groundup.train.optim import configure_adamw
from groundup.train.step import StepResult
from groundup.util.device import autocast_dtype
from groundup.util.files import atomic_write_json
from groundup.util.metrics import MetricsLogger


def load_policy(run_dir: str | os.PathLike, device: str = "cpu"):
    """(GPT, tokenizer, config) of a trained run directory, in eval mode (sample.load_run). A missing
    or incomplete run raises a GroundupError naming it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GroundupError(f"run directory {run_dir} does not exist; train a base policy first "
                            f"(`groundup train --out {run_dir}`)")
    return load_run(run_dir, device)


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over every weight tensor in name order (its name, dtype, shape and bytes): equal
    hashes ⇔ the same weights. Used to show that training a policy leaves π_ref untouched."""
    h = hashlib.sha256()
    tensors = model.weights() if hasattr(model, "weights") else model.state_dict()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def sample_continuations(model: GPT, prompts: torch.Tensor, length: int, seed: int,
                         temperature: float = 1.0) -> torch.Tensor:
    """Continue every row of `prompts` (B, P) by `length` tokens drawn from softmax(logits / T)
    (one seeded CPU generator: same seed, same tokens). Returns (B, P + length): prompt then
    continuation, on the CPU. groundup.sample.generate_batch does the work (P + length ≤ block_size + 1);
    it leaves the model in eval mode."""
    prompts = torch.as_tensor(prompts, dtype=torch.long)
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise GroundupError(f"the continuation length must be a positive number of tokens, got {length!r}")
    ids = generate_batch(model, prompts, prompts.shape[-1] + length, seed, temperature)
    return ids.clone()  # a normal tensor (generate_batch's is an inference tensor, unusable under autograd)


def prompts_from_corpus(tokenizer, corpus: str | Corpus, n: int, prompt_len: int, seed: int,
                        split: str = "val") -> torch.Tensor:
    """n prompts of prompt_len token ids: windows of the corpus's `split` (the project's cached
    token files for this tokenizer), starting at positions drawn with `seed`. Returns (n, P) long."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise GroundupError(f"the number of prompts must be a positive integer, got {n!r}")
    if isinstance(prompt_len, bool) or not isinstance(prompt_len, int) or prompt_len < 1:
        raise GroundupError(f"the prompt length must be a positive number of tokens, got {prompt_len!r}")
    if split not in ("train", "val"):
        raise GroundupError(f"split must be 'train' or 'val', got {split!r}")
    text = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    tokens = prepare_in_cache(text, tokenizer).split(split)
    if len(tokens) <= prompt_len:
        raise GroundupError(f"the {split} split of {text.name!r} has {len(tokens)} tokens, too few for prompts of "
                            f"{prompt_len}; use a shorter --prompt-len")
    starts = np.random.default_rng(seed).integers(0, len(tokens) - prompt_len, size=n)
    return torch.from_numpy(np.stack([np.asarray(tokens[s:s + prompt_len], dtype=np.int64) for s in starts]))


# ---- preference pairs as tensors ---------------------------------------------------------------
def pair_tensors(pairs, vocab_size: int | None = None,
                 block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Preference pairs (each with .prompt, .chosen, .rejected: lists of token ids) → (chosen_ids,
    rejected_ids, prompt_len): (N, P + L), (N, P + L), (N,), every row prompt then continuation.
    Every prompt must have one length and every continuation another (as make_preferences writes
    them); a token id outside the model's vocabulary, or P + L beyond its context, is an error."""
    if not pairs:
        raise GroundupError("there are no preference pairs; make some with `groundup align preferences`")
    shapes = {(len(p.prompt), len(p.chosen), len(p.rejected)) for p in pairs}
    P, L, L_rejected = min(shapes)
    if len(shapes) != 1 or L != L_rejected:
        raise GroundupError(f"the preference pairs differ in length (prompt, chosen, rejected lengths: "
                            f"{sorted(shapes)[:3]}); every prompt and every continuation must have one length")
    if P < 1 or L < 1:
        raise GroundupError(f"a preference pair needs a prompt and a continuation of at least one token, got {P} and {L}")
    if block_size is not None and P + L > block_size:
        raise GroundupError(f"the preference pairs are {P} + {L} tokens long, more than the policy's context of "
                            f"{block_size}; make pairs with a shorter --prompt-len or --length")
    chosen = torch.tensor([p.prompt + p.chosen for p in pairs], dtype=torch.long)
    rejected = torch.tensor([p.prompt + p.rejected for p in pairs], dtype=torch.long)
    if vocab_size is not None:
        top = int(max(chosen.max(), rejected.max()))
        if top >= vocab_size or int(min(chosen.min(), rejected.min())) < 0:
            raise GroundupError(f"the preference pairs hold token id {top}, outside the policy's vocabulary of "
                                f"{vocab_size}: they were made with another tokenizer; make them from this run")
    return chosen, rejected, torch.full((len(pairs),), P, dtype=torch.long)


def split_pairs(n: int, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held_out) of n pairs: a seeded permutation, the last round(held_out·n) held out
    (at least one when held_out > 0, and at least one left to train on)."""
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)) or not 0 <= held_out < 1:
        raise GroundupError(f"the held-out fraction must be in [0, 1), got {held_out!r}")
    k = min(max(round(held_out * n), 1 if held_out > 0 else 0), n - 1)
    if n < 2 and held_out > 0:
        raise GroundupError(f"{n} preference pair is too few to hold any out; make more pairs or use --held-out 0")
    order = np.random.default_rng(seed).permutation(n)
    return order[:n - k], order[n - k:]


class PairBatches:
    """next_batch() for loop.fit: `batch_size` rows drawn at random (seeded) from the given tensors,
    all indexed alike: (chosen, rejected) or (chosen, rejected, prompt_len)."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int, device=None):
        self.tensors = tuple(t.to(device) if device is not None else t for t in tensors)
        self.batch_size = min(batch_size, len(tensors[0]))
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> tuple[torch.Tensor, ...]:
        idx = torch.from_numpy(self.rng.choice(len(self.tensors[0]), self.batch_size, replace=False))
        return tuple(t[idx.to(t.device)] for t in self.tensors)


# ---- alignment run directories --------------------------------------------------------------------
ALIGN = ckpt.ALIGN  # in every alignment run directory: the method, β, the reference and its hash


@dataclass
class AlignSettings:
    """How an alignment run trains: constant learning rate, AdamW (the run config's betas) without
    weight decay (it would pull the weights toward 0, not toward π_ref; trl's default is 0 too),
    random mini-batches of pairs, dropout off (as trl's DPOTrainer, disable_dropout=True)."""

    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 16
    seed: int = 0
    grad_clip: float = 1.0
    held_out: float = 0.1  # fraction of the pairs kept out of training to evaluate on
    device: str = "cpu"

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < float("inf"):
            raise ConfigError(f"the learning rate must be a positive number, got {self.lr!r}")
        if isinstance(self.held_out, bool) or not isinstance(self.held_out, (int, float)) or not 0 <= self.held_out < 1:
            raise ConfigError(f"the held-out fraction must be in [0, 1), got {self.held_out!r}")
        if isinstance(self.grad_clip, bool) or not isinstance(self.grad_clip, (int, float)) or not self.grad_clip >= 0:
            raise ConfigError(f"grad-clip must be ≥ 0 (0 = off), got {self.grad_clip!r}")


def new_run_dir(out: str | os.PathLike) -> Path:
    """The run directory to create; one that exists already is an error (as for `groundup train`)."""
    out = Path(out)
    if out.exists():
        raise GroundupError(f"{out} already exists; write the run into a new directory (--out)")
    return out


@contextlib.contextmanager
def creating(out: Path):
    """Create the run directory `out` for the block; if the block fails, remove it again (a run that
    did not finish leaves nothing behind to be mistaken for one, and --out can be used again)."""
    out.mkdir(parents=True)
    try:
        yield out
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def run_config(config: RunConfig, settings: AlignSettings) -> RunConfig:
    """The reference run's config with the alignment run's training settings in [train] (no weight
    decay, no warmup: see AlignSettings)."""
    return config.replace(max_steps=settings.steps, learning_rate=settings.lr, min_lr=min(config.train.min_lr, settings.lr),
                          warmup_steps=0, weight_decay=0.0, batch_size=settings.batch_size, seed=settings.seed,
                          grad_clip=float(settings.grad_clip), device=settings.device)


def build_engine(model: torch.nn.Module, config: RunConfig, device: torch.device) -> TorchEngine:
    """A TorchEngine for any module (a policy GPT, a RewardModel) with the run config's AdamW."""
    return TorchEngine(model, configure_adamw(model, config.train, device), device=device,
                       amp=autocast_dtype(device, config.train.dtype), kernels=config.train.kernels)


class LogSteps(Hooks):
    """loop.fit hooks: every step's loss into metrics.jsonl, a line now and then on stdout."""

    def __init__(self, metrics: MetricsLogger, steps: int, progress: bool, lr: float):
        self.metrics, self.steps, self.progress, self.lr = metrics, steps, progress, lr

    def after_step(self, step: int, result: StepResult) -> int | None:
        self.metrics.log(step=step, loss=result.loss, grad_norm=result.grad_norm, lr=self.lr)
        if self.progress and (step % max(1, self.steps // 10) == 0 or step == self.steps):
            print(f"step {step:>5}/{self.steps}: loss {result.loss:.4f}", flush=True)
        return step


def fit_pairs(engine: TorchEngine, loss, batches: PairBatches, settings: AlignSettings, metrics: MetricsLogger,
              progress: bool = True) -> list[float]:
    """settings.steps steps of loop.fit (each one train_step) with `loss` on `batches`."""
    torch.manual_seed(settings.seed)
    return fit(engine, batches, settings.steps, lr=settings.lr, grad_clip=settings.grad_clip, loss=loss,
               hooks=LogSteps(metrics, settings.steps, progress, settings.lr))


def save_run(out: Path, engine: TorchEngine, config: RunConfig, tokenizer, step: int, record: dict) -> None:
    """Write the run directory as a training run writes one (config.json, tokenizer.json, a verified
    checkpoint: model.safetensors, optimizer.safetensors, state.json) plus align.json (`record`)."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt.write_run_config(out, config)
    tokenizer.save(out / ckpt.TOKENIZER)
    weights, moments, opt_step = engine.checkpoint_tensors()
    state = {"engine": engine.name, "optimizer_step": opt_step, "sampler": {}, "rng": engine.rng_state(),
             "align": record.get("method")}
    ckpt.save_checkpoint(out, step, weights, moments, state, keep=1)
    atomic_write_json(out / ALIGN, record)


def reference_record(run_dir: str | os.PathLike, model: torch.nn.Module) -> dict:
    """What align.json says about π_ref: its run, step, weights file SHA-256 and in-memory weights hash."""
    _, state = ckpt.find_checkpoint(run_dir)
    return {"reference": str(Path(run_dir).resolve()), "reference_step": state["step"],
            "reference_file_sha256": state["files"][ckpt.WEIGHTS], "reference_weights_sha256": weights_sha256(model)}


def check_reference_unchanged(run_dir: str | os.PathLike, model: torch.nn.Module, record: dict) -> None:
    """π_ref's weights — in memory and its run's file — must still have the hashes recorded at the start."""
    now = reference_record(run_dir, model)
    for key in ("reference_file_sha256", "reference_weights_sha256"):
        if now[key] != record[key]:
            raise GroundupError(f"the reference {run_dir} changed during the run ({key} {now[key][:12]}…, was "
                                f"{record[key][:12]}…); nothing should write to it while it is being aligned")
