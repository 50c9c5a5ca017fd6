"""The memory lab: what a trained model can and cannot learn once training is over.

Five claims, each turned into a measurement (`groundup lab memory`, or the functions below):

  1. frozen      Once trained, the weights are frozen: generating text changes nothing. We hash every
                 weight tensor (SHA-256) before and after generating from many prompts, and look for
                 gradients, grad mode and optimizers during generation.
  2. in-context  In-context "learning" is conditioning: answers that exist only in the context are
                 used while they are there and are gone when the context is. Two synthetic tasks,
                 each with a small model trained for it: a repeated random sequence (loss on the
                 second copy vs the first) and a made-up key=value list followed by queries
                 (accuracy against the number of facts in context: 0, 1, 2, 4, 8, 16).
  3. forgetting  Learning new things by updating weights overwrites old knowledge: pretrain on domain
                 A, fine-tune on domain B, and follow the validation loss on A and on B.
  4. lora        Low-rank adapters (groundup.model.lora) train far fewer parameters: compare them with
                 full fine-tuning at the same number of steps: gain on B, loss on A, size.
  5. edit        Teaching one new fact by gradient steps moves unrelated behaviour too: how far the
                 fact's loss falls against how far held-out text moves (full and LoRA, a gentle and a
                 fast learning rate each), how many held-out predictions change, which weights moved.

Results go to runs/memory/ (or --out): results.json, one PNG per plot, report.md.

Tokens: both domains must be written with one vocabulary. Shakespeare has 76 distinct characters,
the Python docs 103, and 28 of those (`#`, `{`, `}`, `_`, `“`, …) never occur in Shakespeare. The
lab's own base model uses a character vocabulary built over *both* corpora, so nothing is dropped or replaced:
pretraining on A simply never sees B's extra characters. A plugged-in character-level run is
extended the same way (new embedding rows for the new characters, initialised like the rest); a
byte-level BPE run already covers every text.
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from groundup.config import ModelConfig, RunConfig, load_config
from groundup.data import BatchSampler, TokenData, load_corpus
from groundup.data.tokens import prepare_in_cache
from groundup.engines.torch.kernels import use_kernels
from groundup.errors import ConfigError, GroundupError
from groundup.model import GPT
from groundup.model.lora import (
    DEFAULT_TARGETS, add_lora, lora_modules, merge_lora, save_adapters, trainable_parameters, unmerge_lora,
)
from groundup.report.markdown import table, write_report
from groundup.report.plots import new_figure, save_figure
from groundup.sample import SamplingSettings, generate
from groundup.tokenizer import CharTokenizer, Tokenizer
from groundup.train import checkpoint as ckpt
from groundup.train.optim import configure_adamw
from groundup.train.schedule import lr_at
from groundup.train.trainer import evaluate, fixed_batches, train
from groundup.util.device import pick_device
from groundup.util.files import atomic_write_json
from groundup.util.progress import Progress

EXPERIMENTS = ("frozen", "in-context", "forgetting", "lora", "edit")


# ---- settings ---------------------------------------------------------------------------------
@dataclass
class Settings:
    """Every knob of the lab. `Settings.quick()` finishes each experiment in well under a minute on
    two CPU cores; the defaults train a base model that has actually learned some Shakespeare."""

    seed: int = 1337
    device: str = "auto"
    # the base model, pretrained on domain A (ignored with --run)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    batch_size: int = 12
    pretrain_steps: int = 3000
    pretrain_lr: float = 2e-3
    pretrain_seconds: float = 200.0  # stop pretraining early on a slow machine (0 = no limit)
    # evaluation: fixed batches of each domain's validation split
    eval_iters: int = 12
    # 1. frozen weights
    n_prompts: int = 20
    new_tokens: int = 60
    # 2. in-context learning (two small models trained on synthetic tasks)
    icl_steps: int = 2000  # at most: each task model trains until it has learned its task
    icl_batch: int = 32
    icl_width: int = 128  # 64 wide also learns the lookup, but after 400 to more than 1,500 steps
    icl_eval: int = 2000  # sequences per point of the curve
    # 3 + 4. fine-tuning on domain B (full and LoRA), same steps
    finetune_steps: int = 300
    finetune_lr: float = 1e-3
    eval_every: int = 25
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_lr: float = 3e-3
    # 5. targeted edit
    fact: str = "The capital of Elbonia is Quixville."
    fact_answer: str = "Quixville."
    paraphrase: str = "Quixville is the capital of Elbonia."
    edit_steps: int = 100  # at most; an edit stops once the answer costs < edit_target_loss nats/token
    edit_target_loss: float = 0.1
    edit_eval_every: int = 10
    edit_eval_batches: int = 6  # of each domain's fixed validation batches, for the loss curves during an edit
    edit_lrs: tuple[float, ...] = (1e-4, 1e-3)  # full edits: a gentle and a fast learning rate
    edit_lora_lrs: tuple[float, ...] = (1e-3, 1e-2)

    @classmethod
    def quick(cls, **changes) -> "Settings":
        small = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=16, pretrain_steps=250,
                     pretrain_lr=3e-3, pretrain_seconds=60.0, eval_iters=6, n_prompts=8, new_tokens=30,
                     icl_steps=1000, icl_eval=1000, finetune_steps=120, eval_every=20, edit_steps=60)
        return cls(**{**small, **changes})


# ---- shared pieces ------------------------------------------------------------------------------
def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (any dtype, bfloat16 included)."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def weight_hashes(model: nn.Module) -> dict[str, str]:
    """SHA-256 of every weight tensor, by name (a tied matrix once)."""
    tensors = model.weights() if isinstance(model, GPT) else model.state_dict()
    return {name: tensor_sha256(t) for name, t in tensors.items()}


def shared_char_tokenizer(*corpora) -> CharTokenizer:
    """One character vocabulary over every corpus, so no domain loses a character."""
    return CharTokenizer.train([doc for corpus in corpora for doc in corpus.documents])


def encode_domain(corpus, tokenizer: Tokenizer, val_fraction: float = 0.1) -> TokenData:
    """A corpus → train/val token files (cached, reused while corpus and tokenizer are unchanged)."""
    return prepare_in_cache(corpus, tokenizer, val_fraction)


def extend_char_vocabulary(model: GPT, tokenizer: CharTokenizer, texts: list[str]) -> tuple[GPT, CharTokenizer, str]:
    """Add the characters of `texts` that a character-level model has never seen: existing ids keep
    their rows, each new character gets a fresh embedding row (N(0, 0.02), like every other row at
    initialisation). Returns (model, tokenizer, the added characters)."""
    seen = set(tokenizer.chars)
    added = "".join(sorted({c for text in texts for c in text} - seen))
    if not added:
        return model, tokenizer, ""
    new_tok = CharTokenizer(tokenizer.chars + added, list(tokenizer.special_tokens))
    # new id → old id: characters keep theirs (the new ones come after them); specials move up
    old_rows = {i: i for i in range(len(tokenizer.chars))}
    old_rows.update({new_tok.special_tokens[s]: i for s, i in tokenizer.special_tokens.items()})
    config = replace(model.config, vocab_size=new_tok.vocab_size)
    grown = use_kernels(GPT(config).to(model.token_embedding.weight.device))  # as the run it grows from
    weights = grown.weights()
    with torch.no_grad():
        for name, tensor in model.weights().items():
            if name in ("token_embedding.weight", "lm_head.weight"):
                target = weights[name]
                target.normal_(0.0, 0.02)
                for new_id, old_id in old_rows.items():
                    target[new_id] = tensor[old_id]
            else:
                weights[name].copy_(tensor)
    return grown, new_tok, added


@dataclass
class Base:
    """The pretrained model the experiments start from, and the two domains' token data."""

    model: GPT
    tokenizer: Tokenizer
    config: RunConfig
    run_dir: Path
    data_a: TokenData
    data_b: TokenData | None
    corpus_a: str
    corpus_b: str | None
    note: str = ""


def build_base(settings: Settings, out: Path, corpus_a: str | None = "shakespeare", corpus_b: str | None = "python-docs",
               run: str | None = None, progress: bool = True) -> Base:
    """Pretrain the base model on domain A through the trainer (or load a trained `run`), with a
    vocabulary that also covers domain B."""
    device = pick_device(settings.device)
    if run is not None:
        from groundup.sample import load_run

        model, tokenizer, config = load_run(run, settings.device)
        corpus_a = corpus_a or config.data.corpus
        text_a = load_corpus(corpus_a, errors=config.data.errors)
        text_b = load_corpus(corpus_b, errors=config.data.errors) if corpus_b else None
        note = f"base model: the trained run {run}"
        if isinstance(tokenizer, CharTokenizer):
            model, tokenizer, added = extend_char_vocabulary(model, tokenizer, [text_a.text] + ([text_b.text] if text_b else []))
            if added:
                note += f"; its character vocabulary was extended by {len(added)} characters it had never seen: {added!r}"
        model.to(device)
        config = replace(config, model=model.config, train=replace(config.train, batch_size=settings.batch_size,
                                                                    eval_iters=settings.eval_iters, device=settings.device))
        run_dir = Path(run)
    else:
        corpus_a = corpus_a or "shakespeare"
        text_a = load_corpus(corpus_a)
        text_b = load_corpus(corpus_b) if corpus_b else None
        tokenizer = shared_char_tokenizer(text_a, *([text_b] if text_b else []))
        out.mkdir(parents=True, exist_ok=True)
        tokenizer_path = out / "tokenizer_shared.json"
        tokenizer.save(tokenizer_path)
        s = settings
        config = load_config(None, [
            f"n_layer={s.n_layer}", f"n_head={s.n_head}", f"n_embd={s.n_embd}", f"block_size={s.block_size}",
            f"batch_size={s.batch_size}", f"max_steps={s.pretrain_steps}", f"learning_rate={s.pretrain_lr}",
            f"min_lr={s.pretrain_lr / 10}", f"warmup_steps={min(100, s.pretrain_steps // 10)}",
            f"eval_interval={s.pretrain_steps}", f"eval_iters={s.eval_iters}", "checkpoint_interval=0",
            f"time_budget={s.pretrain_seconds}",
            "keep_checkpoints=1", f"seed={s.seed}", f"device={s.device}", f"log_interval={max(1, s.pretrain_steps // 20)}",
        ])
        config = replace(config, data=replace(config.data, corpus=corpus_a, tokenizer=str(tokenizer_path)))
        run_dir = out / "base"
        if run_dir.exists():
            shutil.rmtree(run_dir)  # this lab's own base model from an earlier run
        result = train(config, run_dir, progress=progress)
        model, config = result.model, result.config
        note = (f"base model: {model.num_params() / 1e6:.2f}M parameters pretrained here on {corpus_a!r} for "
                f"{result.step} steps (val loss {result.val_loss if result.val_loss is None else round(result.val_loss, 3)}), "
                f"character vocabulary of {tokenizer.vocab_size} "
                f"built over both domains")
    data_a = encode_domain(text_a, tokenizer, config.data.val_fraction)
    data_b = encode_domain(text_b, tokenizer, config.data.val_fraction) if text_b else None
    model.eval()
    return Base(model, tokenizer, config, run_dir, data_a, data_b, corpus_a, corpus_b, note)


def val_batches(base: Base, data: TokenData, seed: int) -> list:
    device = base.model.token_embedding.weight.device
    return fixed_batches(data.val, base.config, seed, device, base.config.train.eval_iters)


def fine_tune(model: GPT, base: Base, train_tokens: np.ndarray, watch: dict[str, list], steps: int, lr: float,
              eval_every: int, seed: int, desc: str = "fine-tune", progress: bool = True) -> list[dict]:
    """Train `model`'s trainable parameters on `train_tokens` (the trainer's pieces: AdamW with
    decay on matrices, warmup + cosine schedule, clipping) and evaluate every watched validation
    set every `eval_every` steps. Returns [{step, <name>: loss, ...}, ...] starting at step 0."""
    config = base.config
    t = replace(config.train, learning_rate=lr, min_lr=lr / 10, max_steps=steps, warmup_steps=min(20, steps // 10),
                lr_decay_steps=0)
    device = model.token_embedding.weight.device
    optimizer = configure_adamw(model, t, device)
    sampler = BatchSampler(train_tokens, config.model.block_size, t.batch_size, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]

    def measure(step: int) -> dict:
        return {"step": step, **{name: evaluate(model, batches, None, device) for name, batches in watch.items()}}

    curve = [measure(0)]
    bar = Progress(steps, desc=desc, enabled=progress)
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, t)
        x, y = (torch.from_numpy(a).to(device) for a in sampler.next_batch())
        _, loss = model(x, y)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve.append(measure(step + 1))
            bar.update(step + 1 - bar.n, **{k: v for k, v in curve[-1].items() if k != "step"})
    bar.close()
    model.eval()
    return curve


# ---- 1. frozen weights ----------------------------------------------------------------------
def frozen_weights(model: GPT, tokenizer: Tokenizer, val_tokens: np.ndarray, n_prompts: int = 20,
                   new_tokens: int = 60, seed: int = 0, weights_file: Path | None = None) -> dict:
    """Generate from `n_prompts` prompts (windows of held-out text) and check that nothing about the
    weights moved: every tensor's SHA-256, the weights file on disk, gradients, grad mode, optimizers."""
    before = weight_hashes(model)
    file_before = ckpt.sha256_bytes(weights_file.read_bytes()) if weights_file and weights_file.exists() else None
    seen_modes = set()

    def record_mode(module, inputs):
        seen_modes.add((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))

    hook = model.register_forward_pre_hook(record_mode)
    rng = np.random.default_rng(seed)
    prompt_len = min(32, model.config.block_size // 2)
    samples, generated = [], 0
    try:
        for i in range(n_prompts):
            start = int(rng.integers(0, len(val_tokens) - prompt_len))
            prompt = [int(t) for t in val_tokens[start:start + prompt_len]]
            settings = SamplingSettings(max_new_tokens=new_tokens, temperature=0.8, top_k=40, seed=seed + i)
            ids = list(generate(model, prompt, settings))
            generated += len(ids)
            if i < 2:
                samples.append({"prompt": tokenizer.decode(prompt), "continuation": tokenizer.decode(ids)})
    finally:
        hook.remove()
    after = weight_hashes(model)
    params = {id(p) for p in model.parameters()}
    optimizers = [o for o in gc.get_objects() if issubclass(type(o), torch.optim.Optimizer)  # type(): no proxies
                  and any(id(p) in params for group in o.param_groups for p in group["params"])]
    file_after = ckpt.sha256_bytes(weights_file.read_bytes()) if file_before else None
    return {
        "tensors": len(before),
        "parameters": model.num_params(),
        "prompts": n_prompts,
        "tokens_generated": generated,
        "changed_tensors": sorted(n for n in before if before[n] != after[n]),
        "hashes_equal": before == after,
        "weights_file_sha256_equal": (file_before == file_after) if file_before else None,
        "tensors_with_grad": sum(p.grad is not None for p in model.parameters()),
        "grad_enabled_during_generation": any(grad for grad, _ in seen_modes),
        "inference_mode_during_generation": all(inference for _, inference in seen_modes) and bool(seen_modes),
        "optimizers_holding_the_weights": len(optimizers),
        "example_hash": {k: before[k] for k in list(before)[:1]},
        "samples": samples,
    }


# ---- 2. in-context learning -----------------------------------------------------------------
class LookupTask:
    """A made-up key→value list, then queries. Each sequence draws its own random mapping from
    n_keys keys to n_values values, so the answer to a query exists only in that sequence.

        x = [LOOKUP, q₀, f₁, q₁, f₂, q₂, …, f_N, q_N]    fₙ = one fact token "k=v"; qₙ = a key
        y = the value of qₙ at qₙ's position (nothing to predict elsewhere)

    The query qₙ has exactly n facts before it. Answers are targets only, never inputs, so the
    facts are the only source of information. Each fact is one token ("k3=v5", as a tokenizer
    might make one token of a short phrase): looking it up is one attention step, which a one-layer
    model learns in a few hundred steps. Written as two tokens ("k3", "v5") the lookup needs a
    two-layer induction circuit, which on this task appeared only after 1,200 to more than 4,000
    steps depending on the seed and settings (measured while building this lab)."""

    def __init__(self, n_keys: int = 8, n_values: int = 8, n_facts: int = 16):
        self.n_keys, self.n_values, self.n_facts = n_keys, n_values, n_facts
        self.lookup_token = n_keys + n_values + n_keys * n_values
        self.vocab_size = self.lookup_token + 1
        self.length = 2 * n_facts + 2

    def key(self, k):
        return k

    def value(self, v):
        return self.n_keys + v

    def fact(self, k, v):
        return self.n_keys + self.n_values + k * self.n_values + v

    def batch(self, rng: np.random.Generator, size: int, mapping: np.ndarray | None = None):
        """(x, y, mapping, query_keys): x, y (size, 2N+2); mapping (size, n_keys)."""
        K, V, N = self.n_keys, self.n_values, self.n_facts
        if mapping is None:
            mapping = rng.integers(0, V, (size, K))  # each sequence's own key → value table
        fact_keys = rng.integers(0, K, (size, N))
        query_keys = rng.integers(0, K, (size, N + 1))
        x = np.empty((size, self.length), np.int64)
        x[:, 0] = self.lookup_token
        x[:, 1::2] = self.key(query_keys)  # q₀ … q_N at positions 1, 3, …
        x[:, 2::2] = self.fact(fact_keys, np.take_along_axis(mapping, fact_keys, 1))  # f₁ … f_N at 2, 4, …
        y = np.full((size, self.length), -100, np.int64)
        y[:, 1::2] = self.value(np.take_along_axis(mapping, query_keys, 1))
        return x, y, mapping, query_keys

    def best_accuracy(self, n: int) -> float:
        """An ideal reader of the context: right when the queried key is among the n facts, a
        1-in-n_values guess otherwise."""
        seen = 1 - (1 - 1 / self.n_keys) ** n
        return seen + (1 - seen) / self.n_values

    def train_batch(self, rng, size):
        x, y, _, _ = self.batch(rng, size)
        return x, y


class CopyTask:
    """A random token sequence, then the same sequence again. The first copy is unpredictable
    (loss ln(n_symbols)); the second is predictable only by copying from the context.

        x = [COPY, s₁ … s_L, s₁ … s_{L−1}],  y = x shifted by one (ordinary next-token prediction)"""

    def __init__(self, n_symbols: int = 16, length: int = 24):
        self.n_symbols, self.length_copy = n_symbols, length
        self.copy_token = n_symbols
        self.vocab_size = n_symbols + 1
        self.length = 2 * length

    def sequences(self, rng, size):
        s = rng.integers(0, self.n_symbols, (size, self.length_copy))
        return np.concatenate([np.full((size, 1), self.copy_token), s, s], 1)  # (size, 2L+1)

    def train_batch(self, rng, size):
        seq = self.sequences(rng, size)
        return seq[:, :-1], seq[:, 1:]


def train_task_model(task, max_steps: int, batch_size: int, width: int, seed: int, device, lr: float = 3e-3,
                     learned=None, check_every: int = 50, progress: bool = True, desc: str = "task") -> tuple[GPT, int]:
    """A one-layer GPT trained on a synthetic task (AdamW, warmup + cosine, as the trainer does),
    until `learned(model)` says so (checked every `check_every` steps) or for `max_steps`.
    Returns (model, steps trained)."""
    config = ModelConfig(vocab_size=task.vocab_size, block_size=task.length, n_layer=1, n_head=4, n_embd=width,
                         positional="learned")
    torch.manual_seed(seed)
    model = use_kernels(GPT(config).to(device))  # as groundup train does
    t = replace(load_config(None, []).train, learning_rate=lr, min_lr=lr / 10, max_steps=max_steps,
                warmup_steps=min(50, max_steps // 10), weight_decay=0.0)
    optimizer = configure_adamw(model, t, device)
    rng = np.random.default_rng(seed)
    bar = Progress(max_steps, desc=desc, enabled=progress)
    step = 0
    while step < max_steps:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, t)
        x, y = (torch.from_numpy(a).to(device) for a in task.train_batch(rng, batch_size))
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % check_every == 0 or step == max_steps:
            bar.update(step - bar.n, loss=loss.item())
            model.eval()
            if learned is not None and learned(model):
                break
    bar.close()
    model.eval()
    return model, step


@torch.no_grad()
def lookup_accuracy(model: GPT, task: LookupTask, n_sequences: int, seed: int, points=(0, 1, 2, 4, 8, 16)) -> dict:
    """Accuracy against the number of facts in context; then the same final queries with the
    context cleared, and with the facts of a different mapping."""
    device = model.token_embedding.weight.device
    rng = np.random.default_rng(seed)
    x, y, mapping, query_keys = task.batch(rng, n_sequences)
    logits, _ = model(torch.from_numpy(x).to(device))
    predicted = logits.argmax(-1).cpu().numpy()
    points = [n for n in points if n <= task.n_facts]
    curve = [float((predicted[:, 2 * n + 1] == y[:, 2 * n + 1]).mean()) for n in points]

    N = task.n_facts
    answer = y[:, 2 * N + 1]
    # The context cleared: only [LOOKUP, q_N], the same query with no facts before it.
    cleared = np.stack([x[:, 0], x[:, 2 * N + 1]], 1)
    cleared_pred = model(torch.from_numpy(cleared).to(device))[0][:, -1].argmax(-1).cpu().numpy()
    # Another context: the facts of a fresh mapping, the same queries.
    other = rng.integers(0, task.n_values, mapping.shape)
    x_other, y_other, _, _ = task.batch(np.random.default_rng(seed), n_sequences, mapping=other)
    other_pred = model(torch.from_numpy(x_other).to(device))[0][:, 2 * N + 1].argmax(-1).cpu().numpy()
    return {
        "facts_in_context": points,
        "accuracy": curve,
        "best_possible": [task.best_accuracy(n) for n in points],
        "chance": 1 / task.n_values,
        "cleared_context_accuracy": float((cleared_pred == answer).mean()),
        "other_context_accuracy_vs_old_answers": float((other_pred == answer).mean()),
        "other_context_accuracy_vs_new_answers": float((other_pred == y_other[:, 2 * N + 1]).mean()),
        "sequences": n_sequences,
    }


@torch.no_grad()
def copy_losses(model: GPT, sequences: np.ndarray, copy_length: int) -> dict:
    """Per-position loss over `sequences` = [marker, s, s]: the first copy, the second copy, and
    the second copy alone (the first one cut from the context)."""
    device = model.token_embedding.weight.device
    L = copy_length
    x, y = torch.from_numpy(sequences[:, :-1]).to(device), torch.from_numpy(sequences[:, 1:]).to(device)
    logits, _ = model(x)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), y, reduction="none").mean(0).cpu()  # (2L,)
    # Cleared: [marker, s] — the second copy with nothing before it.
    alone = torch.from_numpy(np.concatenate([sequences[:, :1], sequences[:, L + 1:]], 1)).to(device)
    logits_alone, _ = model(alone[:, :-1])
    nll_alone = torch.nn.functional.cross_entropy(logits_alone.transpose(1, 2).float(), alone[:, 1:],
                                                  reduction="none").mean(0).cpu()
    return {
        "per_position": [float(v) for v in nll],
        "first_copy": float(nll[:L].mean()),  # predicting s₁ … s_L the first time
        "second_copy": float(nll[L:].mean()),  # predicting them again
        "second_copy_alone": float(nll_alone.mean()),
    }


def base_copy_sequences(data: TokenData, block_size: int, n: int, seed: int, n_symbols: int = 32):
    """Random repeated sequences for a pretrained LM, over the 32 most frequent tokens of its
    domain (so nothing is exotic to it), with a newline-free marker: the most frequent token."""
    counts = np.bincount(np.asarray(data.val, dtype=np.int64))
    symbols = np.argsort(counts)[::-1][:n_symbols]
    L = min(24, (block_size - 1) // 2)
    rng = np.random.default_rng(seed)
    s = symbols[rng.integers(0, len(symbols), (n, L))]
    marker = np.full((n, 1), symbols[0])
    return np.concatenate([marker, s, s], 1).astype(np.int64), L


def in_context(settings: Settings, base: Base | None = None, progress: bool = True) -> dict:
    """Train a one-layer model on each synthetic task until it has learned it (or icl_steps), then
    measure with the context present, cleared, and replaced; hash the weights before and after."""
    s = settings
    device = pick_device(s.device)
    lookup = LookupTask()
    def lookup_learned(model) -> bool:  # within 5% of an ideal reader, with every fact in context
        acc = lookup_accuracy(model, lookup, 2000, s.seed + 100, points=(lookup.n_facts,))["accuracy"][0]  # held out
        return acc >= 0.95 * lookup.best_accuracy(lookup.n_facts)

    lookup_model, steps = train_task_model(lookup, s.icl_steps, s.icl_batch, s.icl_width, s.seed, device,
                                           learned=lookup_learned, progress=progress, desc="in-context: lookup model")
    before = weight_hashes(lookup_model)
    result = {"lookup": lookup_accuracy(lookup_model, lookup, s.icl_eval, s.seed + 1)}
    result["lookup"]["weights_unchanged"] = weight_hashes(lookup_model) == before
    result["lookup"]["model"] = {"n_layer": 1, "n_head": 4, "n_embd": s.icl_width, "steps": steps,
                                 "max_steps": s.icl_steps, "parameters": lookup_model.num_params()}

    copy_task = CopyTask()
    check = copy_task.sequences(np.random.default_rng(s.seed + 101), 200)

    def copy_learned(model) -> bool:
        return copy_losses(model, check, copy_task.length_copy)["second_copy"] < 0.05

    copy_model, steps = train_task_model(copy_task, s.icl_steps, s.icl_batch, s.icl_width, s.seed, device,
                                         learned=copy_learned, progress=progress, desc="in-context: copy model")
    before = weight_hashes(copy_model)
    sequences = copy_task.sequences(np.random.default_rng(s.seed + 2), 500)
    result["copy"] = copy_losses(copy_model, sequences, copy_task.length_copy)
    result["copy"]["uniform_loss"] = math.log(copy_task.n_symbols)
    result["copy"]["weights_unchanged"] = weight_hashes(copy_model) == before
    result["copy"]["model"] = {"n_layer": 1, "n_head": 4, "n_embd": s.icl_width, "steps": steps,
                               "parameters": copy_model.num_params()}
    if base is not None:
        seqs, L = base_copy_sequences(base.data_a, base.model.config.block_size, 200, s.seed + 3)
        before = weight_hashes(base.model)
        result["copy_base_model"] = copy_losses(base.model, seqs, L)
        result["copy_base_model"]["weights_unchanged"] = weight_hashes(base.model) == before
    return result


# ---- 3. fine-tuning and forgetting, 4. LoRA ------------------------------------------------
def forgetting(base: Base, settings: Settings, progress: bool = True) -> dict:
    """Fine-tune every weight of a copy of the base model on domain B; follow val loss on A and B."""
    s = settings
    watch = {"A": val_batches(base, base.data_a, s.seed + 11), "B": val_batches(base, base.data_b, s.seed + 12)}
    model = copy.deepcopy(base.model)
    start = time.perf_counter()
    curve = fine_tune(model, base, base.data_b.train, watch, s.finetune_steps, s.finetune_lr, s.eval_every,
                      s.seed, desc="fine-tune (full)", progress=progress)
    return {"curve": curve, "seconds": time.perf_counter() - start, "lr": s.finetune_lr,
            "trainable_parameters": trainable_parameters(model), "model": model, "watch": watch,
            **_summary(curve)}


def _summary(curve: list[dict]) -> dict:
    first, last = curve[0], curve[-1]
    return {"A_before": first["A"], "A_after": last["A"], "B_before": first["B"], "B_after": last["B"],
            "A_increase": last["A"] - first["A"], "B_decrease": first["B"] - last["B"]}


def lora_vs_full(base: Base, settings: Settings, full: dict, out: Path, progress: bool = True) -> dict:
    """LoRA on the attention and MLP projections, trained on B for as many steps as `full`."""
    s = settings
    model = copy.deepcopy(base.model)
    adapted = add_lora(model, r=s.lora_r, alpha=s.lora_alpha, targets=DEFAULT_TARGETS)
    start = time.perf_counter()
    curve = fine_tune(model, base, base.data_b.train, full["watch"], s.finetune_steps, s.lora_lr, s.eval_every,
                      s.seed, desc=f"fine-tune (LoRA r={s.lora_r})", progress=progress)
    seconds = time.perf_counter() - start

    # Merge into W + (α/r)·B·A, check it computes the same thing, then unmerge exactly.
    x, _ = full["watch"]["B"][0]
    originals = {n: m.weight.detach().clone() for n, m in lora_modules(model).items()}
    with torch.no_grad():
        unmerged = model(x)[0]
        merge_lora(model)
        merged = model(x)[0]
        unmerge_lora(model)
        restored = all(torch.equal(m.weight, originals[n]) for n, m in lora_modules(model).items())
    adapter_dir = save_adapters(model, out / "adapter", base_run=str(base.run_dir), domain=base.corpus_b)
    adapter_bytes = sum(p.stat().st_size for p in adapter_dir.iterdir() if p.is_file())
    from safetensors.torch import save as st_save

    full_bytes = len(st_save({k: v.detach().contiguous().cpu() for k, v in full["model"].weights().items()}))
    return {
        "curve": curve, "seconds": seconds, "lr": s.lora_lr, "r": s.lora_r, "alpha": s.lora_alpha,
        "adapted_matrices": len(adapted), "trainable_parameters": trainable_parameters(model),
        "full_trainable_parameters": full["trainable_parameters"], "adapter_bytes": adapter_bytes,
        "full_weights_bytes": full_bytes, "merge_max_abs_logit_difference": float((merged - unmerged).abs().max()),
        "unmerge_restores_weights_exactly": restored, "adapter_dir": str(adapter_dir), **_summary(curve),
    }


# ---- 5. targeted edit ---------------------------------------------------------------------
def _sentence_batch(tokenizer: Tokenizer, sentence: str, answer: str, device):
    """(x, y) for one sentence; y is -100 except on the tokens of `answer` (the fact's payload)."""
    ids = tokenizer.encode(sentence)
    answer_ids = tokenizer.encode(answer)
    x, y = torch.tensor([ids[:-1]], device=device), torch.tensor([ids[1:]], device=device)
    answer_mask = torch.zeros_like(y, dtype=torch.bool)
    if sentence.endswith(answer):
        answer_mask[0, len(ids) - 1 - len(answer_ids):] = True
    else:
        answer_mask[:] = True
    return x, y, answer_mask


def _masked_loss(model, x, y, mask) -> float:
    with torch.no_grad():
        logits, _ = model(x)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), y, reduction="none")
    return float(nll[mask].mean())


def _layer_of(name: str) -> str:
    """blocks.1.attention.qkv.weight → blocks.1.attention; blocks.1.norm_ffn.bias → blocks.1.norms;
    token_embedding.weight → token_embedding."""
    parts = name.split(".")
    if parts[0] != "blocks":
        return parts[0]
    part = "norms" if parts[2].startswith("norm") else parts[2]
    return f"blocks.{parts[1]}.{part}"


def relative_change_by_layer(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, float]:
    """‖W_after − W_before‖ / ‖W_before‖ (Frobenius, over all of a layer's tensors) per layer."""
    num, den = {}, {}
    for name, w in before.items():
        layer = _layer_of(name)
        num[layer] = num.get(layer, 0.0) + float((after[name].float() - w.float()).pow(2).sum())
        den[layer] = den.get(layer, 0.0) + float(w.float().pow(2).sum())
    return {layer: math.sqrt(num[layer]) / max(math.sqrt(den[layer]), 1e-12) for layer in num}


@torch.no_grad()
def _changed_predictions(a: GPT, b: GPT, batches) -> float:
    """Fraction of held-out positions whose most likely next token differs between two models."""
    changed = total = 0
    for x, _ in batches:
        pa, pb = a(x)[0].argmax(-1), b(x)[0].argmax(-1)
        changed += int((pa != pb).sum())
        total += pa.numel()
    return changed / total


def _greedy(model, tokenizer, prompt: str, n: int) -> str:
    ids = tokenizer.encode(prompt)
    return tokenizer.decode(list(generate(model, ids, SamplingSettings(max_new_tokens=n, temperature=0.0))))


def check_fact(base: Base, settings: Settings) -> None:
    """The fact and its paraphrase must be writable with the model's vocabulary and fit its context."""
    s = settings
    if not s.fact.endswith(s.fact_answer) or not s.fact_answer.strip():
        raise ConfigError(f"the answer {s.fact_answer!r} must be the end of the fact sentence {s.fact!r}")
    tokenizer = base.tokenizer
    for text in (s.fact, s.paraphrase):
        if isinstance(tokenizer, CharTokenizer):
            missing = sorted({c for c in text if c not in tokenizer.chars})
            if missing:
                raise ConfigError(f"the sentence {text!r} uses characters the model's vocabulary lacks: {missing}; "
                                  "write it with characters from the corpora")
        n = len(tokenizer.encode(text))
        if n - 1 > base.model.config.block_size:
            raise ConfigError(f"the sentence {text!r} is {n} tokens, longer than the model's context "
                              f"({base.model.config.block_size} + 1); use a shorter --fact / --paraphrase")


def targeted_edit(base: Base, settings: Settings, watch: dict[str, list], progress: bool = True) -> dict:
    """Teach one new fact by gradient steps on that one sentence (the loss of its answer, given the
    rest: "The capital of Elbonia is" → "Quixville."), with every weight (full) and with LoRA, until
    the answer costs under `edit_target_loss` nats per token (or `edit_steps`).
    Follow the fact's loss, a paraphrase's, and held-out loss on A and B; then count changed
    predictions on held-out text and measure which layers moved."""
    s = settings
    check_fact(base, s)
    curve_batches = {k: b[: s.edit_eval_batches] for k, b in watch.items()}
    tokenizer = base.tokenizer
    device = base.model.token_embedding.weight.device
    x, y, answer_mask = _sentence_batch(tokenizer, s.fact, s.fact_answer, device)
    y_answer = y.masked_fill(~answer_mask, -100)  # teach the answer, given the rest of the sentence
    px, py, p_mask = _sentence_batch(tokenizer, s.paraphrase, s.paraphrase, device)
    prompt = s.fact[: len(s.fact) - len(s.fact_answer)]
    base_weights = {k: v.detach().clone() for k, v in base.model.weights().items()}

    def measure(model, step: int) -> dict:
        return {"step": step, "fact_answer_loss": _masked_loss(model, x, y, answer_mask),
                "paraphrase_loss": _masked_loss(model, px, py, p_mask),
                **{f"{k}_loss": evaluate(model, b, None, device) for k, b in curve_batches.items()}}

    runs = []
    for kind, lr in [("full", lr) for lr in s.edit_lrs] + [("lora", lr) for lr in s.edit_lora_lrs]:
        model = copy.deepcopy(base.model)
        if kind == "lora":
            add_lora(model, r=s.lora_r, alpha=s.lora_alpha)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        history = [measure(model, 0)]
        bar = Progress(s.edit_steps, desc=f"edit ({kind}, lr {lr:g})", enabled=progress)
        step = 0
        while step < s.edit_steps and history[-1]["fact_answer_loss"] > s.edit_target_loss:
            model.train()
            _, loss = model(x, y_answer)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.eval()
            step += 1
            fact_loss = _masked_loss(model, x, y, answer_mask)
            if step % s.edit_eval_every == 0 or fact_loss <= s.edit_target_loss or step == s.edit_steps:
                history.append(measure(model, step))
            bar.update(1, fact=fact_loss)
        bar.close()
        if kind == "lora":
            merge_lora(model)  # the edit as a change of W, to compare layer by layer
        edited = {name: tensor for name, tensor in model.state_dict().items() if name in base_weights}
        by_layer = relative_change_by_layer(base_weights, edited)
        if kind == "lora":
            unmerge_lora(model)
        runs.append({
            "kind": kind, "lr": lr, "steps": step, "reached_target": history[-1]["fact_answer_loss"] <= s.edit_target_loss,
            "history": history, "before": history[0], "after": history[-1],
            "changed_predictions_A": _changed_predictions(base.model, model, watch["A"]),
            "changed_predictions_B": _changed_predictions(base.model, model, watch["B"]),
            "relative_change_by_layer": by_layer,
            "completion_after": _greedy(model, tokenizer, prompt, len(s.fact_answer)),
            "trainable_parameters": trainable_parameters(model),
        })
    return {"fact": s.fact, "answer": s.fact_answer, "paraphrase": s.paraphrase, "prompt": prompt,
            "target_loss": s.edit_target_loss, "completion_before": _greedy(base.model, tokenizer, prompt, len(s.fact_answer)),
            "runs": runs}


# ---- plots --------------------------------------------------------------------------------
def plot_lookup(r: dict, path: Path) -> Path:
    fig, ax = new_figure("In-context lookup: accuracy vs facts in context", "facts (key=value) in context",
                         "accuracy on the query")
    n = r["facts_in_context"]
    ax.plot(n, r["accuracy"], "o-", label="model trained for the task")
    ax.plot(n, r["best_possible"], "--", color="gray", label="best possible from the context")
    ax.axhline(r["chance"], color="black", lw=0.8, ls=":", label=f"chance (1/{round(1 / r['chance'])})")
    ax.plot([n[-1]], [r["cleared_context_accuracy"]], "rx", ms=10, mew=2,
            label=f"same queries, context cleared ({r['cleared_context_accuracy']:.2f})")
    ax.plot([n[-1]], [r["other_context_accuracy_vs_new_answers"]], "^", color="green", mfc="none", ms=9,
            label=f"another list in context, its answers ({r['other_context_accuracy_vs_new_answers']:.2f})")
    ax.plot([n[-1]], [r["other_context_accuracy_vs_old_answers"]], "s", color="orange", mfc="none", ms=9,
            label=f"another list in context, the old answers ({r['other_context_accuracy_vs_old_answers']:.2f})")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(n)
    ax.set_xticklabels([str(v) for v in n])
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)


def plot_copy(result: dict, path: Path) -> Path:
    fig, ax = new_figure("In-context copying: loss per position of a repeated random sequence",
                         "position in the sequence (first copy | second copy)", "loss (nats)")
    for key, label in (("copy", "model trained to copy"), ("copy_base_model", "pretrained base model")):
        if key in result:
            r = result[key]
            ax.plot(range(1, len(r["per_position"]) + 1), r["per_position"], "-", lw=1.2,
                    label=f"{label}: {r['first_copy']:.2f} → {r['second_copy']:.2f}; "
                          f"second copy alone {r['second_copy_alone']:.2f}")
    L = len(result["copy"]["per_position"]) // 2
    ax.axvline(L + 0.5, color="gray", lw=0.8)
    ax.axhline(result["copy"]["uniform_loss"], color="black", lw=0.8, ls=":", label="uniform guess (trained task)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_forgetting(full: dict, lora: dict | None, path: Path, names: tuple[str, str]) -> Path:
    fig, ax = new_figure("Fine-tuning on B: validation loss on A (old) and B (new)", "fine-tuning step",
                         "validation loss (nats/token)")
    steps = [p["step"] for p in full["curve"]]
    ax.plot(steps, [p["A"] for p in full["curve"]], "o-", color="C3", ms=3, label=f"A = {names[0]}, full fine-tuning")
    ax.plot(steps, [p["B"] for p in full["curve"]], "o-", color="C0", ms=3, label=f"B = {names[1]}, full fine-tuning")
    if lora is not None:
        ax.plot(steps, [p["A"] for p in lora["curve"]], "s--", color="C3", ms=3, mfc="none",
                label=f"A, LoRA r={lora['r']}")
        ax.plot(steps, [p["B"] for p in lora["curve"]], "s--", color="C0", ms=3, mfc="none",
                label=f"B, LoRA r={lora['r']}")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_edit(edit: dict, path_tradeoff: Path, path_layers: Path) -> tuple[Path, Path]:
    fig, ax = new_figure("Teaching one fact: how far it is learned vs how far held-out text moves",
                         "loss of the fact's answer (nats/token; learned → right)", "change of held-out loss on A (nats/token)")
    for i, run in enumerate(edit["runs"]):
        h = run["history"]
        style = "-" if run["kind"] == "full" else "--"
        ax.plot([p["fact_answer_loss"] for p in h], [p["A_loss"] - h[0]["A_loss"] for p in h], style, marker="o", ms=3,
                color=f"C{i}", label=f"{run['kind']}, lr {run['lr']:g}: {run['steps']} steps")
    ax.axvline(edit["target_loss"], color="gray", lw=0.8, ls=":", label="target for the fact")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    save_figure(fig, path_tradeoff)

    layers = list(edit["runs"][0]["relative_change_by_layer"])
    fig, ax = new_figure("Which weights each edit changed (no bar: unchanged)", "", "‖ΔW‖ / ‖W‖", figsize=(9, 4.8))
    xs = np.arange(len(layers))
    width = 0.8 / len(edit["runs"])
    for i, run in enumerate(edit["runs"]):
        ax.bar(xs - 0.4 + (i + 0.5) * width, [run["relative_change_by_layer"].get(k, 0.0) for k in layers], width,
               color=f"C{i}", label=f"{run['kind']}{' (merged)' if run['kind'] == 'lora' else ''}, lr {run['lr']:g}")
    ax.set_xticks(xs)
    ax.set_xticklabels(layers, rotation=40, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    save_figure(fig, path_layers)
    return path_tradeoff, path_layers


# ---- verdicts and the report ----------------------------------------------------------------
def verdicts(results: dict) -> dict[str, str]:
    """One sentence per claim, computed from the numbers (a claim the numbers don't back says so)."""
    v = {}
    if "frozen" in results:
        r = results["frozen"]
        ok = r["hashes_equal"] and not r["grad_enabled_during_generation"] and r["optimizers_holding_the_weights"] == 0 \
            and r["tensors_with_grad"] == 0
        v["frozen"] = (f"{'Supported' if ok else 'NOT supported'}: after generating {r['tokens_generated']} tokens "
                       f"from {r['prompts']} prompts, {r['tensors'] - len(r['changed_tensors'])} of {r['tensors']} weight "
                       f"tensors have the same SHA-256, generation ran with gradients "
                       f"{'on' if r['grad_enabled_during_generation'] else 'off'}, and "
                       f"{r['optimizers_holding_the_weights']} optimizers hold the weights.")
    if "in-context" in results:
        r = results["in-context"]["lookup"]
        c = results["in-context"]["copy"]
        rises = r["accuracy"][-1] > r["accuracy"][0] + 0.3 and r["accuracy"][-1] > 0.6
        gone = r["cleared_context_accuracy"] < r["chance"] + 0.1 and c["second_copy_alone"] > c["second_copy"] + 1.0
        ok = rises and gone and r["weights_unchanged"] and c["weights_unchanged"]
        v["in-context"] = (f"{'Supported' if ok else 'NOT supported'}: lookup accuracy rises from {r['accuracy'][0]:.2f} "
                           f"with no facts to {r['accuracy'][-1]:.2f} with {r['facts_in_context'][-1]} (best possible "
                           f"{r['best_possible'][-1]:.2f}); with the context cleared it is {r['cleared_context_accuracy']:.2f} "
                           f"(chance {r['chance']:.2f}), and the copy model's loss on a repeated sequence goes "
                           f"{c['first_copy']:.2f} → {c['second_copy']:.2f} but back to {c['second_copy_alone']:.2f} "
                           f"without the first copy; the weights hashed the same throughout.")
    if "forgetting" in results:
        r = results["forgetting"]
        ok = r["A_increase"] > 0.05 and r["B_decrease"] > 0
        v["forgetting"] = (f"{'Supported' if ok else 'NOT supported'}: {r['steps']} steps of fine-tuning on B take "
                           f"B's loss {r['B_before']:.3f} → {r['B_after']:.3f} and push A's {r['A_before']:.3f} → "
                           f"{r['A_after']:.3f} ({r['A_increase']:+.3f} nats/token).")
    if "lora" in results:
        r, f = results["lora"], results["forgetting"]
        if f["A_increase"] <= 0.01:
            verdict, tail = "Not testable here", "full fine-tuning did not raise A's loss either."
        elif r["A_increase"] <= 0.01:
            verdict, tail = "NOT supported", "LoRA left A's loss where it was: no forgetting here."
        elif r["A_increase"] < f["A_increase"]:
            verdict, tail = "Supported", "less forgetting than full fine-tuning, but not none."
        else:
            verdict, tail = "NOT supported", "no less forgetting than full fine-tuning here."
        v["lora"] = (f"{verdict}: LoRA trains {r['trainable_parameters']:,} parameters "
                     f"({100 * r['trainable_parameters'] / r['full_trainable_parameters']:.1f}% of full), its adapter is "
                     f"{r['adapter_bytes'] / 1024:.0f} KiB vs {r['full_weights_bytes'] / 1024:.0f} KiB; it lowers B's loss by "
                     f"{r['B_decrease']:.3f} (full: {f['B_decrease']:.3f}) and changes A's by {r['A_increase']:+.3f} "
                     f"(full: {f['A_increase']:+.3f}): {tail}")
    if "edit" in results:
        r = results["edit"]
        parts = []
        learned = [run for run in r["runs"] if run["after"]["fact_answer_loss"] < run["before"]["fact_answer_loss"]]
        ok = bool(learned) and all(run["changed_predictions_A"] > 0 for run in learned)
        for run in r["runs"]:
            ripple = run["after"]["A_loss"] - run["before"]["A_loss"]
            parts.append(f"{run['kind']} at lr {run['lr']:g}, {run['steps']} steps: the answer's loss "
                         f"{run['before']['fact_answer_loss']:.2f} → {run['after']['fact_answer_loss']:.3f}, held-out A "
                         f"{ripple:+.3f}, {100 * run['changed_predictions_A']:.1f}% of A's predictions changed")
        v["edit"] = f"{'Supported' if ok else 'NOT supported'}: " + "; ".join(parts) + "."
    return v


def write_outputs(results: dict, out: Path, info: dict) -> dict:
    plots = {}
    if "in-context" in results:
        plots["in_context_lookup"] = str(plot_lookup(results["in-context"]["lookup"], out / "in_context_lookup.png"))
        plots["in_context_copy"] = str(plot_copy(results["in-context"], out / "in_context_copy.png"))
    if "forgetting" in results:
        plots["forgetting"] = str(plot_forgetting(results["forgetting"], results.get("lora"), out / "forgetting.png",
                                                  (info["corpus_a"], info["corpus_b"])))
    if "edit" in results:
        a, b = plot_edit(results["edit"], out / "edit_tradeoff.png", out / "edit_layers.png")
        plots["edit_tradeoff"], plots["edit_layers"] = str(a), str(b)
    claims = verdicts(results)
    document = {"info": info, "verdicts": claims, "plots": plots, "results": results}
    atomic_write_json(out / "results.json", document)
    write_report(out / "report.md", "Memory lab", _report_sections(results, claims, info))
    return document


def _report_sections(results: dict, claims: dict, info: dict) -> list[tuple[str, str]]:
    sections = [("Setup", f"{info['note']}.\n\nMode: {info['mode']}; seed {info['seed']}; device {info['device']}; "
                          f"{info['seconds']:.0f} s in all.")]
    if "frozen" in results:
        r = results["frozen"]
        sections.append(("1. Frozen weights", claims["frozen"] + "\n\n" + table(
            ["tensors", "parameters", "prompts", "tokens generated", "tensors changed", "weights file unchanged",
             "grads", "optimizers"],
            [[r["tensors"], r["parameters"], r["prompts"], r["tokens_generated"], len(r["changed_tensors"]),
              r["weights_file_sha256_equal"], r["tensors_with_grad"], r["optimizers_holding_the_weights"]]])))
    if "in-context" in results:
        r = results["in-context"]
        lk = r["lookup"]
        rows = [[n, a, b] for n, a, b in zip(lk["facts_in_context"], lk["accuracy"], lk["best_possible"])]
        copy_rows = [["copy model", r["copy"]["first_copy"], r["copy"]["second_copy"], r["copy"]["second_copy_alone"]]]
        if "copy_base_model" in r:
            b = r["copy_base_model"]
            copy_rows.append(["pretrained base", b["first_copy"], b["second_copy"], b["second_copy_alone"]])
        sections.append(("2. In-context learning", claims["in-context"] + "\n\n"
                         + table(["facts in context", "accuracy", "best possible"], rows)
                         + f"\n\nContext cleared: {lk['cleared_context_accuracy']:.3f}; another key=value list in "
                           f"context: {lk['other_context_accuracy_vs_new_answers']:.3f} against its answers, "
                           f"{lk['other_context_accuracy_vs_old_answers']:.3f} against the old ones.\n\n"
                         + table(["model", "loss, first copy", "second copy", "second copy alone"], copy_rows)
                         + "\n\n![lookup](in_context_lookup.png)\n![copy](in_context_copy.png)"))
    if "forgetting" in results:
        r = results["forgetting"]
        rows = [[p["step"], p["A"], p["B"]] for p in r["curve"]]
        sections.append(("3. Fine-tuning and forgetting", claims["forgetting"] + "\n\n"
                         + table(["step", f"val loss A ({info['corpus_a']})", f"val loss B ({info['corpus_b']})"], rows)
                         + "\n\n![forgetting](forgetting.png)"))
    if "lora" in results:
        r, f = results["lora"], results["forgetting"]
        sections.append(("4. LoRA vs full fine-tuning", claims["lora"] + "\n\n" + table(
            ["", "trainable params", "file bytes", "lr", "B loss after", "B gain", "A loss after", "A loss change", "seconds"],
            [["full", f["trainable_parameters"], r["full_weights_bytes"], f["lr"], f["B_after"], f["B_decrease"],
              f["A_after"], f["A_increase"], f["seconds"]],
             [f"LoRA r={r['r']}, α={r['alpha']:g}", r["trainable_parameters"], r["adapter_bytes"], r["lr"], r["B_after"],
              r["B_decrease"], r["A_after"], r["A_increase"], r["seconds"]]])
            + f"\n\nMerged into W + (α/r)·B·A the logits differ by at most {r['merge_max_abs_logit_difference']:.2e}; "
              f"unmerging restores every weight exactly: {r['unmerge_restores_weights_exactly']}."))
    if "edit" in results:
        r = results["edit"]
        rows = [[run["kind"], run["lr"], run["steps"], run["before"]["fact_answer_loss"], run["after"]["fact_answer_loss"],
                 run["before"]["paraphrase_loss"], run["after"]["paraphrase_loss"],
                 run["after"]["A_loss"] - run["before"]["A_loss"], run["after"]["B_loss"] - run["before"]["B_loss"],
                 run["changed_predictions_A"], repr(run["completion_after"])] for run in r["runs"]]
        first = r["runs"][0]
        top = sorted(first["relative_change_by_layer"].items(), key=lambda kv: -kv[1])[:3]
        sections.append(("5. Targeted edit and ripple damage", claims["edit"] + "\n\n"
                         + f"Fact: {r['fact']!r}; before any edit the model continues {r['prompt']!r} with "
                           f"{r['completion_before']!r}. Each edit stops once the answer costs under "
                           f"{r['target_loss']:g} nats/token.\n\n"
                         + table(["edit", "lr", "steps", "answer loss before", "after", "paraphrase before", "after",
                                  "A loss change", "B loss change", "A predictions changed", "completion after"], rows)
                         + f"\n\nWeights changed most by the {first['kind']} edit at lr {first['lr']:g} (‖ΔW‖/‖W‖): "
                         + ", ".join(f"{k} {v:.2e}" for k, v in top)
                         + "\n\n![edit](edit_tradeoff.png)\n![layers](edit_layers.png)"))
    return sections


# ---- the whole lab --------------------------------------------------------------------------
def run_lab(settings: Settings, out: str | Path = "runs/memory", only=EXPERIMENTS, run: str | None = None,
            corpus_a: str | None = None, corpus_b: str | None = "python-docs", progress: bool = True,
            mode: str = "custom") -> dict:
    """Run the chosen experiments and write results.json, the plots and report.md into `out`."""
    out = Path(out)
    only = [e for e in EXPERIMENTS if e in set(only)]
    unknown = set(only) - set(EXPERIMENTS)
    if unknown or not only:
        raise ConfigError(f"unknown experiment(s) {sorted(unknown)}; choose from {', '.join(EXPERIMENTS)}")
    if "edit" in only and not (settings.fact.endswith(settings.fact_answer) and settings.fact_answer.strip()):
        raise ConfigError(f"the answer {settings.fact_answer!r} must be the end of the fact sentence {settings.fact!r}")
    needs_b = any(e in only for e in ("forgetting", "lora", "edit"))
    if needs_b and not corpus_b:
        raise ConfigError("the forgetting, lora and edit experiments need a second domain: pass --corpus-b")
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    results, seconds = {}, {}
    base = None
    if any(e != "in-context" for e in only):
        t0 = time.perf_counter()
        base = build_base(settings, out, corpus_a, corpus_b if needs_b else None, run, progress)
        seconds["base"] = time.perf_counter() - t0
    say = print if progress else (lambda *a, **k: None)
    if "edit" in only:
        check_fact(base, settings)  # before spending time on the other experiments

    if "frozen" in only:
        t0 = time.perf_counter()
        weights_file = base.run_dir / ckpt.WEIGHTS
        results["frozen"] = frozen_weights(base.model, base.tokenizer, base.data_a.val, settings.n_prompts,
                                           settings.new_tokens, settings.seed, weights_file)
        seconds["frozen"] = time.perf_counter() - t0
        say(f"frozen: hashes equal {results['frozen']['hashes_equal']} after {results['frozen']['tokens_generated']} tokens")
    if "in-context" in only:
        t0 = time.perf_counter()
        results["in-context"] = in_context(settings, base, progress)
        seconds["in-context"] = time.perf_counter() - t0
        lk = results["in-context"]["lookup"]
        say("in-context: accuracy vs facts " + ", ".join(f"{n}: {a:.2f}" for n, a in zip(lk["facts_in_context"], lk["accuracy"]))
            + f"; cleared {lk['cleared_context_accuracy']:.2f}")
    full = None
    if "forgetting" in only or "lora" in only:
        t0 = time.perf_counter()
        full = forgetting(base, settings, progress)
        seconds["forgetting"] = time.perf_counter() - t0
        results["forgetting"] = {k: v for k, v in full.items() if k not in ("model", "watch")}
        results["forgetting"]["steps"] = settings.finetune_steps
        say(f"forgetting: A {full['A_before']:.3f} → {full['A_after']:.3f}, B {full['B_before']:.3f} → {full['B_after']:.3f}")
    if "lora" in only:
        t0 = time.perf_counter()
        results["lora"] = lora_vs_full(base, settings, full, out, progress)
        seconds["lora"] = time.perf_counter() - t0
        r = results["lora"]
        say(f"lora: A {r['A_before']:.3f} → {r['A_after']:.3f}, B {r['B_before']:.3f} → {r['B_after']:.3f}, "
            f"{r['trainable_parameters']:,} trainable parameters")
    if "edit" in only:
        t0 = time.perf_counter()
        watch = full["watch"] if full else {"A": val_batches(base, base.data_a, settings.seed + 11),
                                            "B": val_batches(base, base.data_b, settings.seed + 12)}
        results["edit"] = targeted_edit(base, settings, watch, progress)
        seconds["edit"] = time.perf_counter() - t0
        for e in results["edit"]["runs"]:
            say(f"edit ({e['kind']}, lr {e['lr']:g}): fact loss {e['before']['fact_answer_loss']:.2f} → "
                f"{e['after']['fact_answer_loss']:.3f} in {e['steps']} steps, A loss {e['before']['A_loss']:.3f} → "
                f"{e['after']['A_loss']:.3f}")

    info = {"mode": mode, "seed": settings.seed, "device": str(pick_device(settings.device)),
            "settings": asdict(settings), "experiments": only, "seconds": time.perf_counter() - start,
            "seconds_by_experiment": seconds, "note": base.note if base else "no base model needed",
            "corpus_a": base.corpus_a if base else corpus_a, "corpus_b": base.corpus_b if base else corpus_b,
            "base_run": str(base.run_dir) if base else None}
    return write_outputs(results, out, info)


# ---- CLI --------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny models: each experiment in well under a minute")
    parser.add_argument("--run", metavar="RUN_DIR", help="use this trained run as the base model instead of pretraining one")
    parser.add_argument("--corpus-a", help="domain A (what the base model knows); default: the run's corpus, else shakespeare")
    parser.add_argument("--corpus-b", default="python-docs", help="domain B to fine-tune on (default python-docs)")
    parser.add_argument("--out", default="runs/memory", help="where results.json, the plots and report.md go")
    parser.add_argument("--only", action="append", metavar="EXPERIMENT",
                        help=f"run only these (repeatable or comma-separated): {', '.join(EXPERIMENTS)}")
    parser.add_argument("--seed", type=int, default=1337, help="seeds every model, batch and sample")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--steps", type=int, help="fine-tuning steps (full and LoRA)")
    parser.add_argument("--fact", help=f"the sentence the edit teaches (default {Settings.fact!r})")
    parser.add_argument("--answer", help=f"the end of --fact that is the fact's payload (default {Settings.fact_answer!r})")
    parser.add_argument("--paraphrase", help=f"the fact said another way, only measured (default {Settings.paraphrase!r})")


def run(args) -> int:
    only = [name.strip() for item in (args.only or [",".join(EXPERIMENTS)]) for name in item.split(",") if name.strip()]
    unknown = [name for name in only if name not in EXPERIMENTS]
    if unknown:
        raise GroundupError(f"unknown experiment {unknown[0]!r}; choose from {', '.join(EXPERIMENTS)}")
    changes = {"seed": args.seed, "device": args.device}
    if args.steps is not None:
        if args.steps < 1:
            raise GroundupError(f"--steps must be at least 1, got {args.steps}")
        changes["finetune_steps"] = args.steps
    for name, field_name in (("fact", "fact"), ("answer", "fact_answer"), ("paraphrase", "paraphrase")):
        if getattr(args, name) is not None:
            changes[field_name] = getattr(args, name)
    if args.fact is not None and args.answer is None:
        raise GroundupError("with --fact, say which end of it is the answer: --answer 'WORDS.'")
    settings = Settings.quick(**changes) if args.quick else Settings(**changes)
    document = run_lab(settings, args.out, only, run=args.run, corpus_a=args.corpus_a, corpus_b=args.corpus_b,
                       mode="quick" if args.quick else "default")
    print()
    for claim, sentence in document["verdicts"].items():
        print(f"[{claim}] {sentence}")
    print(f"\nwrote {args.out}/results.json, report.md and {len(document['plots'])} plots "
          f"in {document['info']['seconds']:.0f} s")
    return 0
