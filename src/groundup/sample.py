"""Sampling new text: the model predicts a distribution over the next token; we draw one, append
it, and repeat.

    p = softmax(logits / temperature)          temperature 0 → always the most likely token
    top-k: keep the k most likely tokens; top-p: keep the smallest set whose probability ≥ p
    draw the next token from what is left, renormalised

A KV cache keeps every layer's keys and values, so each new token costs one query against the
cache (O(context)) instead of re-running the whole context. Once the context window is full, the
window slides: the last block_size − 1 tokens are re-encoded (positions are absolute), exactly as
an uncached model that crops its input would see them.
"""

from __future__ import annotations

import codecs
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from groundup.engines.torch.kernels import use_kernels
from groundup.errors import GroundupError
from groundup.model import GPT
from groundup.quantize import load_model
from groundup.tokenizer import load_tokenizer
from groundup.train import checkpoint as ckpt

MAX_NEW_TOKENS = 1_000_000


@dataclass
class SamplingSettings:
    max_new_tokens: int = 200
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise GroundupError(f"max-new-tokens must be an integer between 1 and {MAX_NEW_TOKENS:,}, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:  # also rejects NaN
            raise GroundupError(f"temperature must be ≥ 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise GroundupError(f"top-k must be ≥ 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise GroundupError(f"top-p must be in (0, 1], got {self.top_p}")


def next_token_distribution(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """logits (V,) → probabilities (V,) after temperature, top-k and top-p."""
    logits = logits.float() / settings.temperature
    if settings.top_k is not None and settings.top_k < logits.numel():
        kth = torch.topk(logits, settings.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if settings.top_p is not None and settings.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        drop = cumulative - sorted_probs >= settings.top_p  # tokens after the nucleus is complete
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        probs = probs / probs.sum()
    return probs


def draw_token(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator) -> int:
    """One next token from logits (V,): argmax at temperature 0, else a draw from
    next_token_distribution (on the CPU, so a seed gives the same tokens on every device)."""
    if settings.temperature == 0:
        return int(torch.argmax(logits))
    probs = next_token_distribution(logits, settings).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


def seeded_generator(seed: int | None) -> torch.Generator:
    """A CPU generator for one sequence's draws: the seed, or a fresh random one."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed if seed is not None else torch.seed())
    return generator


@torch.inference_mode()
def generate(model: GPT, prompt_ids: list[int], settings: SamplingSettings, use_cache: bool = True) -> Iterator[int]:
    """Yield new token ids one at a time (streaming). Same seed, same settings → same tokens."""
    if not prompt_ids:
        raise GroundupError("the prompt is empty after tokenization; give at least one token")
    model.eval()
    device = model.token_embedding.weight.device
    block = model.config.block_size
    generator = seeded_generator(settings.seed)
    context = list(prompt_ids[-block:])
    cache = model.new_cache(1) if use_cache else None
    logits = _prefill(model, context, cache, device)
    for k in range(settings.max_new_tokens):
        token = draw_token(logits, settings, generator)
        yield token
        if k == settings.max_new_tokens - 1:
            return  # the last token needs no forward pass of its own
        context.append(token)
        if cache is None:
            context = context[-block:]
            logits = model(torch.tensor([context], device=device))[0][0, -1]
        elif cache.length < block:  # room left: one query against the cache
            logits = model(torch.tensor([[token]], device=device), cache=cache, start=cache.length)[0][0, -1]
        else:  # window full: slide it and re-encode (absolute positions shift)
            context = context[-block:]
            logits = _prefill(model, context, cache, device)


@torch.inference_mode()
def generate_batch(model: GPT, prompts: torch.Tensor, length: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
    """Continue every row of `prompts` (n, P) to `length` tokens at once, each new token drawn from
    softmax(logits / temperature) (argmax at 0) by one seeded CPU generator: one batched forward per
    token through the KV cache. Every token but the last must fit the context window, length ≤
    block_size + 1 (the last token needs no forward pass; no sliding, unlike `generate`). Returns
    (n, length) token ids, prompts included. For bulk sampling (a teacher's samples for
    sequence-level distillation) where streaming one sequence at a time is too slow."""
    prompts = torch.as_tensor(prompts, dtype=torch.long)
    if prompts.ndim != 2 or prompts.shape[1] < 1:
        raise GroundupError(f"generate_batch takes prompts of shape (n, P) with P ≥ 1, got {tuple(prompts.shape)}")
    if not prompts.shape[1] <= length <= model.config.block_size + 1:
        raise GroundupError(f"generate_batch: length {length} must be between the prompt length {prompts.shape[1]} "
                            f"and the context window + 1 ({model.config.block_size} + 1)")
    if not temperature >= 0:
        raise GroundupError(f"temperature must be ≥ 0 (0 = greedy), got {temperature}")
    model.eval()
    device = model.token_embedding.weight.device
    generator = seeded_generator(seed)
    out = prompts.to(device)
    cache = model.new_cache(out.shape[0])
    logits = model(out, cache=cache, start=0)[0][:, -1]
    while out.shape[1] < length:
        if temperature == 0:
            token = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).to(device)
        out = torch.cat([out, token], dim=1)
        if out.shape[1] < length:
            logits = model(token, cache=cache, start=out.shape[1] - 1)[0][:, -1]
    return out.cpu()


def store_for_decoding(model: GPT) -> GPT:
    """Lay every matrix the model multiplies by out column by column in memory: same shape, same
    values, only the strides change (the (in, out) order of GPT-2's original Conv1D). A decoding
    step multiplies one row vector by each matrix, and CPU BLAS streams that layout faster:
    ~20 % per step on this project's x86 machine (MKL) for GPT-2 small. Meant for a model that
    only generates (`groundup sample`); the trainer keeps the usual layout. Off the CPU it changes
    nothing."""
    if model.token_embedding.weight.device.type != "cpu":
        return model
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):  # (a tied LM head is the token embedding: done once)
                w = module.weight
                if w.is_contiguous():
                    w.data = w.data.t().contiguous().t()
    return model


def _prefill(model: GPT, context: list[int], cache, device) -> torch.Tensor:
    if cache is not None:
        cache.length = 0
    return model(torch.tensor([context], device=device), cache=cache, start=0)[0][0, -1]


# ---- loading a trained run --------------------------------------------------------------------
def load_run(run_dir: str | os.PathLike, device: str = "auto"):
    """(model, tokenizer, config) from a run directory written by either engine, or by `groundup
    quantize` (its linears are then QuantizedLinears)."""
    run_dir = Path(run_dir)
    if ckpt.align_method(run_dir) == "reward-model":
        raise GroundupError(f"{run_dir} is a reward-model run (groundup align reward): it scores text with one number "
                            "and has no language-model head to sample from; sample the policy it was trained from, or "
                            "an `align rl` / `align dpo` run")
    model, config, _ = load_model(run_dir, device)
    tokenizer_path = run_dir / ckpt.TOKENIZER
    if not tokenizer_path.exists():
        raise GroundupError(f"{tokenizer_path} is missing; the run directory is incomplete")
    tokenizer = load_tokenizer(tokenizer_path)
    if config.train.kernels:  # as the run was trained: the fused CPU kernels where they apply
        use_kernels(model)
    model.eval()
    return model, tokenizer, config


def prompt_ids(tokenizer, prompt: str, allowed_special: str = "none") -> list[int]:
    """Prompt → ids; an empty prompt starts from <|endoftext|> (or a newline). The prompt is the
    user's text: "<|endoftext|>" written in it is encoded as characters, not as the special token,
    unless allowed_special says otherwise."""
    if prompt == "":
        if tokenizer.eot_id is not None:
            return [tokenizer.eot_id]
        return tokenizer.encode("\n")
    return tokenizer.encode(prompt, allowed_special=allowed_special)


def encode_prompt(tokenizer, prompt: str, block_size: int, warn=None) -> list[int]:
    """Prompt → ids (prompt_ids); a prompt longer than the context keeps its last block_size
    tokens, with a warning."""
    warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr))
    ids = prompt_ids(tokenizer, prompt)
    if len(ids) > block_size:
        warn(f"the prompt is {len(ids)} tokens but the model's context is {block_size}; "
             f"keeping the last {block_size} tokens")
        ids = ids[-block_size:]
    return ids


def sample_text(run_dir, prompt: str, settings: SamplingSettings, device: str = "auto", stream=None) -> str:
    """Generate from a run and return the new text; with `stream`, write it as it is produced."""
    model, tokenizer, _ = load_run(run_dir, device)
    store_for_decoding(model)
    ids = encode_prompt(tokenizer, prompt, model.config.block_size)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # tokens may split a character
    pieces = []
    for token in generate(model, ids, settings):
        piece = decoder.decode(tokenizer.token_bytes(token))
        pieces.append(piece)
        if stream is not None and piece:
            stream.write(piece)
            stream.flush()
    tail = decoder.decode(b"", final=True)
    pieces.append(tail)
    if stream is not None and tail:
        stream.write(tail)
    return "".join(pieces)
