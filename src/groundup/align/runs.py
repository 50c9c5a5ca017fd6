"""Run-directory helpers shared by every alignment method.

    load_policy(run)            (model, tokenizer, config) of a trained run: π_ref, or a policy to tune
    weights_sha256(model)       a fingerprint of the weights in memory: π_ref is checked unchanged
    sample_continuations(...)   prompt + `length` sampled tokens per row (sample.generate_batch)
    prompts_from_corpus(...)    n prompts of prompt_len tokens, windows of a corpus split
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from groundup.data.corpora import Corpus, load_corpus
from groundup.data.tokens import prepare_in_cache
from groundup.errors import GroundupError
from groundup.model import GPT
from groundup.sample import generate_batch, load_run


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
