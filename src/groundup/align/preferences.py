"""Preference pairs: two continuations of the same prompt from π_ref, labelled by a noisy judge.

    x ~ windows of the policy corpus's val split (prompt_len tokens)
    y_a, y_b ~ π_ref(·|x)  (length tokens each, temperature T)
    g_a, g_b = gold(y_a), gold(y_b)                                   (groundup.align.gold)
    P(y_a ≻ y_b) = σ((g_a − g_b) / bt_scale)     (Bradley & Terry 1952): the label is DRAWN, not
                                                  argmax'd, so labels are noisy as human ones are

bt_scale = 0.25 by default (gold scores lie in [−1, 1]): a gold gap of 0.25 is labelled the right
way 73 % of the time, 0.5 → 88 %, 1.0 → 98 %; equal scores (both continuations without sentiment
words, common for a char model) give a coin flip. The winner becomes `chosen`.

The file (JSON lines): line 1 is {"meta": {...}} — the policy run and its weights' SHA-256, the
tokenizer's fingerprint, every setting — then one PreferencePair per line. Reading checks it all and
says which line is wrong; a file made with another tokenizer is refused (token ids would mean other
text).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from groundup.align.gold import DEFAULT_LENGTH, GoldJudge
from groundup.align.runs import load_policy, prompts_from_corpus, sample_continuations, weights_sha256
from groundup.errors import GroundupError
from groundup.util.files import atomic_write_text
from groundup.util.progress import Progress

FORMAT = "groundup-preferences"
VERSION = 1
DEFAULT_BT_SCALE = 0.25
DEFAULT_PROMPT_LEN = 16
CHUNK = 128  # prompts sampled together (2 continuations each): one batched generation


@dataclass
class PreferencePair:
    prompt: list[int]
    chosen: list[int]  # continuation token ids (without the prompt)
    rejected: list[int]
    gold_chosen: float
    gold_rejected: float


def bradley_terry_probability(g_a, g_b, bt_scale: float) -> np.ndarray:
    """P(a ≻ b) = σ((g_a − g_b) / bt_scale), elementwise."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(g_a, dtype=np.float64) - np.asarray(g_b, dtype=np.float64)) / bt_scale))


def draw_labels(g_a, g_b, bt_scale: float, rng: np.random.Generator) -> np.ndarray:
    """True where a is preferred: one Bernoulli(σ((g_a − g_b)/bt_scale)) draw per pair."""
    p = bradley_terry_probability(g_a, g_b, bt_scale)
    return rng.random(p.shape) < p


def check_settings(n, prompt_len, length, bt_scale, temperature) -> None:
    for name, value in (("--n", n), ("--prompt-len", prompt_len), ("--length", length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GroundupError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(bt_scale, bool) or not isinstance(bt_scale, (int, float)) or not 0 < bt_scale < math.inf:
        raise GroundupError(f"--bt-scale must be a positive number (the Bradley–Terry temperature of the labels, "
                            f"default {DEFAULT_BT_SCALE}), got {bt_scale!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise GroundupError(f"--temperature must be a positive number (1 = π_ref's own distribution), got {temperature!r}")


def pairs_from_model(model, tokenizer, prompts: torch.Tensor, length: int, seed: int, *, temperature: float = 1.0,
                     bt_scale: float = DEFAULT_BT_SCALE, judge: GoldJudge | None = None,
                     progress: bool = False) -> list[PreferencePair]:
    """One pair per row of `prompts` (n, P): two continuations from `model`, judged and labelled.
    Chunk k of CHUNK prompts is sampled with seed SeedSequence([seed, k]); the labels with
    SeedSequence([seed, −1]): same seed, same pairs."""
    judge = judge or GoldJudge()
    n, P = prompts.shape
    label_rng = np.random.default_rng(np.random.SeedSequence([seed, 2 ** 31]))
    bar = Progress(n, desc="preference pairs", unit="pair", enabled=progress)
    pairs: list[PreferencePair] = []
    try:
        for k, start in enumerate(range(0, n, CHUNK)):
            chunk = prompts[start:start + CHUNK]
            chunk_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
            ids = sample_continuations(model, chunk.repeat_interleave(2, dim=0), length, chunk_seed, temperature)
            cont = ids[:, P:]
            gold = np.asarray(judge.score_ids(tokenizer, cont)).reshape(-1, 2)
            a_wins = draw_labels(gold[:, 0], gold[:, 1], bt_scale, label_rng)
            for i in range(len(chunk)):
                w, l = (0, 1) if a_wins[i] else (1, 0)
                pairs.append(PreferencePair(chunk[i].tolist(), cont[2 * i + w].tolist(), cont[2 * i + l].tolist(),
                                            float(gold[i, w]), float(gold[i, l])))
            bar.update(len(chunk), gold_agree=gold_agreement(pairs)[0])
    finally:
        bar.close()
    return pairs


def make_preferences(policy_run, n: int, *, prompt_len: int = DEFAULT_PROMPT_LEN, length: int = DEFAULT_LENGTH,
                     seed: int = 0, temperature: float = 1.0, bt_scale: float = DEFAULT_BT_SCALE,
                     device: str = "cpu", progress: bool = False) -> tuple[list[PreferencePair], dict]:
    """n pairs from the run `policy_run` (π_ref), prompts from its corpus's val split; returns
    (pairs, meta) for write_preferences."""
    check_settings(n, prompt_len, length, bt_scale, temperature)
    model, tokenizer, config = load_policy(policy_run, device)
    if prompt_len + length > model.config.block_size:
        raise GroundupError(f"--prompt-len {prompt_len} + --length {length} tokens exceed the policy's context of "
                            f"{model.config.block_size} (a reward model or DPO reads prompt and continuation in one "
                            f"pass); shorten one")
    prompts = prompts_from_corpus(tokenizer, config.data.corpus, n, prompt_len, seed)
    pairs = pairs_from_model(model, tokenizer, prompts, length, seed, temperature=temperature, bt_scale=bt_scale,
                             progress=progress)
    meta = {
        "format": FORMAT, "version": VERSION,
        "policy_run": str(Path(policy_run).resolve()),
        "policy_weights_sha256": weights_sha256(model),
        "tokenizer_fingerprint": tokenizer.fingerprint, "tokenizer_kind": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size, "corpus": config.data.corpus,
        "n": n, "prompt_len": prompt_len, "length": length, "seed": seed, "temperature": temperature,
        "gold": GoldJudge.name, "bt_scale": bt_scale,
        "label": "chosen drawn with P(a > b) = sigmoid((gold_a - gold_b) / bt_scale)",
    }
    return pairs, meta


def write_preferences(pairs: list[PreferencePair], path, meta: dict) -> Path:
    """The header line {"meta": …} then one pair per line, written atomically; an existing file is
    not overwritten (it may be what a reward model was trained on)."""
    path = Path(path)
    if path.exists():
        raise GroundupError(f"{path} already exists; choose a new --out (preference files are not overwritten)")
    if not pairs:
        raise GroundupError("no preference pairs to write")
    lines = [json.dumps({"meta": meta})] + [json.dumps(asdict(p)) for p in pairs]
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


_INT_LISTS = ("prompt", "chosen", "rejected")
_FLOATS = ("gold_chosen", "gold_rejected")


def _pair(record, where: str, meta: dict) -> PreferencePair:
    if not isinstance(record, dict):
        raise GroundupError(f"{where}: expected a JSON object with {', '.join(f.name for f in fields(PreferencePair))}")
    for name in _INT_LISTS:
        v = record.get(name)
        if not isinstance(v, list) or not v or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
            raise GroundupError(f"{where}: {name!r} must be a non-empty list of token ids, got {v!r:.60}")
        bad = [i for i in v if not 0 <= i < meta["vocab_size"]]
        if bad:
            raise GroundupError(f"{where}: {name!r} has token id {bad[0]} outside the vocabulary of "
                                f"{meta['vocab_size']} named in the header")
    for name in _FLOATS:
        v = record.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise GroundupError(f"{where}: {name!r} must be a finite number, got {v!r}")
    lengths = {name: len(record[name]) for name in _INT_LISTS}
    want = {"prompt": meta["prompt_len"], "chosen": meta["length"], "rejected": meta["length"]}
    for name, n in lengths.items():
        if n != want[name]:
            raise GroundupError(f"{where}: {name!r} has {n} tokens, the header says {want[name]}")
    return PreferencePair(*(record[f.name] for f in fields(PreferencePair)))


def read_preferences(path, tokenizer=None) -> tuple[list[PreferencePair], dict]:
    """(pairs, meta) of a file from write_preferences. Refuses, with one line naming the file and the
    line: a missing or empty file, a bad header, a malformed pair, no pairs, and (with `tokenizer`) a
    file made with another tokenizer."""
    path = Path(path)
    make = "make one with `groundup align preferences --run RUN --n N --out FILE`"
    if not path.is_file():
        raise GroundupError(f"preference file {path} does not exist; {make}")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    if not text.strip():
        raise GroundupError(f"preference file {path} is empty; {make}")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise GroundupError(f"{path} line 1: not valid JSON ({e.msg}); expected the header {{\"meta\": …}}") from None
    meta = header.get("meta") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise GroundupError(f"{path} line 1: expected the header {{\"meta\": {{\"format\": \"{FORMAT}\", …}}}} written "
                            f"by `groundup align preferences`; this is not a preference file")
    for key, kind in (("tokenizer_fingerprint", str), ("vocab_size", int), ("prompt_len", int), ("length", int)):
        if not isinstance(meta.get(key), kind):
            raise GroundupError(f"{path} line 1: the header has no valid {key!r}")
    if tokenizer is not None and tokenizer.fingerprint != meta["tokenizer_fingerprint"]:
        raise GroundupError(f"{path} was made with another tokenizer ({meta.get('tokenizer_kind')}, vocab "
                            f"{meta['vocab_size']}, fingerprint {meta['tokenizer_fingerprint'][:12]}) than this policy's "
                            f"({tokenizer.kind}, vocab {tokenizer.vocab_size}, {tokenizer.fingerprint[:12]}): its token "
                            f"ids would mean other text; make preferences from this policy's run")
    pairs = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise GroundupError(f"{path} line {number}: not valid JSON ({e.msg}); the file is damaged, make it again") from None
        pairs.append(_pair(record, f"{path} line {number}", meta))
    if not pairs:
        raise GroundupError(f"preference file {path} has a header but no pairs; {make}")
    return pairs, meta


def as_tensors(pairs: list[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(chosen_ids, rejected_ids, prompt_len): (N, P + L) prompt + continuation, for the losses of
    groundup.train.align (every pair of a file has the same P and L)."""
    chosen = torch.tensor([p.prompt + p.chosen for p in pairs], dtype=torch.long)
    rejected = torch.tensor([p.prompt + p.rejected for p in pairs], dtype=torch.long)
    return chosen, rejected, len(pairs[0].prompt)


def gold_agreement(pairs: list[PreferencePair]) -> tuple[float, float]:
    """(fraction of the pairs with different gold scores whose label agrees with the gold order
    (nan when every pair ties), fraction of pairs whose gold scores tie)."""
    untied = [p for p in pairs if p.gold_chosen != p.gold_rejected]
    agree = float(np.mean([p.gold_chosen > p.gold_rejected for p in untied])) if untied else float("nan")
    return agree, 1 - len(untied) / len(pairs) if pairs else float("nan")

