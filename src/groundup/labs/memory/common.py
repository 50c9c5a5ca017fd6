"""What every memory experiment shares: the settings, weight hashes, one vocabulary over both
domains, the pretrained base model, and fine-tuning through the project's training loop.

Tokens: both domains must be written with one vocabulary. Shakespeare has 76 distinct characters,
the Python docs 103, and 28 of those (`#`, `{`, `}`, `_`, `“`, …) never occur in Shakespeare. The
lab's own base model uses a character vocabulary built over *both* corpora, so nothing is dropped or
replaced: pretraining on A simply never sees B's extra characters. A plugged-in character-level run
is extended the same way (new embedding rows for the new characters, initialised like the rest); a
byte-level BPE run already covers every text.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from groundup.config import RunConfig, load_config
from groundup.data import BatchSampler, TokenData, load_corpus
from groundup.data.tokens import prepare_in_cache
from groundup.model import GPT
from groundup.sample import load_run
from groundup.tokenizer import CharTokenizer, Tokenizer
from groundup.train.engine import TorchEngine, evaluate
from groundup.train.loop import fit
from groundup.train.optim import configure_adamw
from groundup.train.schedule import lr_at
from groundup.train.trainer import fixed_batches, train
from groundup.util.device import pick_device
from groundup.util.progress import Progress

EXPERIMENTS = ("frozen", "in-context", "forgetting", "lora", "edit")


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
    grown = GPT(config).to(model.token_embedding.weight.device)
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
    """Train `model`'s trainable parameters on `train_tokens` through the project's training loop
    (AdamW with decay on matrices, warmup + cosine schedule, clipping) and evaluate every watched
    validation set every `eval_every` steps. Returns [{step, <name>: loss, ...}, ...] from step 0."""
    config = base.config
    t = replace(config.train, learning_rate=lr, min_lr=lr / 10, max_steps=steps, warmup_steps=min(20, steps // 10),
                lr_decay_steps=0)
    device = model.token_embedding.weight.device
    engine = TorchEngine(model, configure_adamw(model, t, device))
    sampler = BatchSampler(train_tokens, config.model.block_size, t.batch_size, seed=seed)

    def next_batch():
        return tuple(torch.from_numpy(a).to(device) for a in sampler.next_batch())

    def measure(step: int) -> dict:
        return {"step": step, **{name: evaluate(model, batches, None, device) for name, batches in watch.items()}}

    curve = [measure(0)]
    bar = Progress(steps, desc=desc, enabled=progress)

    def on_every(step: int) -> None:
        curve.append(measure(step))
        bar.update(step - bar.n, **{k: v for k, v in curve[-1].items() if k != "step"})

    model.train()
    fit(engine, next_batch, steps, lr=lambda step: lr_at(step, t), grad_clip=t.grad_clip, every=eval_every,
        on_every=on_every)
    if curve[-1]["step"] != steps:
        on_every(steps)
    bar.close()
    model.eval()
    return curve
