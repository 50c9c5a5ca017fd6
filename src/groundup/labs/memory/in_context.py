"""2. In-context learning, measured: answers that exist only in the context are used while they
are there and are gone when the context is. Two synthetic tasks, each with a small model trained for
it: a repeated random sequence (loss on the second copy vs the first) and a made-up key=value list
followed by queries (accuracy against the number of facts in context: 0, 1, 2, 4, 8, 16)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from groundup.config import ModelConfig, load_config
from groundup.data import TokenData
from groundup.labs.memory.common import Base, Settings, weight_hashes
from groundup.model import GPT
from groundup.train.engine import TorchEngine
from groundup.train.loop import fit
from groundup.train.optim import configure_adamw
from groundup.train.schedule import lr_at
from groundup.util.device import pick_device
from groundup.util.progress import Progress


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
    """A one-layer GPT trained on a synthetic task through the project's training loop (AdamW,
    warmup + cosine, clipping), `check_every` steps at a time, until `learned(model)` says so or
    for `max_steps`. Returns (model, steps trained)."""
    config = ModelConfig(vocab_size=task.vocab_size, block_size=task.length, n_layer=1, n_head=4, n_embd=width,
                         positional="learned")
    torch.manual_seed(seed)
    model = GPT(config).to(device)
    t = replace(load_config(None, []).train, learning_rate=lr, min_lr=lr / 10, max_steps=max_steps,
                warmup_steps=min(50, max_steps // 10), weight_decay=0.0)
    engine = TorchEngine(model, configure_adamw(model, t, device))
    rng = np.random.default_rng(seed)

    def next_batch():
        return tuple(torch.from_numpy(a).to(device) for a in task.train_batch(rng, batch_size))

    bar = Progress(max_steps, desc=desc, enabled=progress)
    step = 0
    while step < max_steps:
        chunk = min(check_every, max_steps - step)
        model.train()
        losses = fit(engine, next_batch, step + chunk, start=step, lr=lambda s: lr_at(s, t), grad_clip=t.grad_clip)
        step += chunk
        bar.update(chunk, loss=float(losses[-1]))
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
